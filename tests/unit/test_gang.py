"""Pod groups in the service (gang.py), with the scripted fake Slurm and a fake clock: one
submission per group, timeouts, and submissions cut short, settled by the refresher's tick.
The same on real Slurm: tests/integration/test_pod_groups.py."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from interlink_slurm.errors import PodRejected, SchedulerUnavailable, StorageError
from interlink_slurm.gang import _write_group, member_nodes
from interlink_slurm.groups import KUEUE_GROUP, KUEUE_TOTAL
from interlink_slurm.service import Service
from interlink_slurm.slurm.scheduler import JobInfo
from interlink_slurm.slurm.ssh import SSHUnavailable
from interlink_slurm.slurm.transport import CommandResult, CommandUnavailable, LocalTransport
from interlink_slurm.translate.group import GROUP_COMMENT_PREFIX
from interlink_slurm.wire import RetrievedPodData
from tests import podgen
from tests.unit.test_service_parts import drive, make, new_pod


def member(group: str, name: str, size: int = 2, **meta: Any) -> RetrievedPodData:
    pod = podgen.pod(name, [podgen.container("main", "print(1)")])
    pod["metadata"]["labels"] = {KUEUE_GROUP: group}
    pod["metadata"]["annotations"][KUEUE_TOTAL] = str(size)
    pod["metadata"].update(meta)
    return RetrievedPodData.model_validate(podgen.retrieved(pod))


def reason(status: Any) -> tuple[str, str]:
    state = status.containers[0].state
    inner = state.waiting or state.terminated
    return inner.reason, inner.message


def test_the_last_member_submits_one_job_and_a_retried_create_gets_it(tmp_path: Path) -> None:
    service, fake, _, _ = make(tmp_path)
    a, b = member("g", "g-0"), member("g", "g-1")

    async def scenario() -> None:
        first = await service.create(a)
        assert first.PodJID == "" and fake.calls.count("submit") == 0
        (waiting,) = await service.status([a.pod])
        assert reason(waiting) == ("GroupPending", "1 of 2 pods of group g arrived")
        job = (await service.create(b)).PodJID
        assert fake.calls.count("submit") == 1
        assert (await service.create(a)).PodJID == job  # a retried create: the same job
        assert fake.calls.count("submit") == 1
        statuses = await service.status([a.pod, b.pod])
        assert [s.JID for s in statuses] == [job, job]
        assert fake.jobs[job].comment == f"{GROUP_COMMENT_PREFIX}default/g/{a.pod.uid}"

    drive(service, scenario)


def test_a_group_not_complete_in_time_fails_every_member_naming_the_missing(
    tmp_path: Path,
) -> None:
    service, fake, _, clock = make(tmp_path, group_timeout_seconds=60)
    a = member("late", "late-0")

    async def scenario() -> None:
        await service.create(a)
        clock.advance(59)
        await service.gang.tick()
        assert reason((await service.status([a.pod]))[0])[0] == "GroupPending"
        clock.advance(2)
        await service.gang.tick()
        why, message = reason((await service.status([a.pod]))[0])
        assert why == "GroupIncomplete"
        assert "1 of 2 pods arrived within 60 s" in message and "missing: late-1" in message
        with pytest.raises(PodRejected, match="has failed"):
            await service.create(member("late", "late-1"))
        assert "submit" not in fake.calls

    drive(service, scenario)


def test_a_submission_cut_short_is_made_by_the_next_tick(tmp_path: Path) -> None:
    service, fake, _, _ = make(tmp_path)
    a, b = member("cut", "cut-0"), member("cut", "cut-1")

    async def scenario() -> None:
        await service.create(a)
        fake.fail_next["submit"] = SchedulerUnavailable("sbatch: slurmctld does not answer")
        with pytest.raises(SchedulerUnavailable):
            await service.create(b)
        await service.gang.tick()
        assert fake.calls.count("submit") == 2
        (sa,) = await service.status([a.pod])
        assert sa.JID.isdigit()

    drive(service, scenario)


def test_a_job_that_landed_before_a_crash_is_found_by_its_comment_not_submitted_again(
    tmp_path: Path,
) -> None:
    service, fake, _, _ = make(tmp_path)
    a, b = member("crash", "crash-0"), member("crash", "crash-1")
    comment = f"{GROUP_COMMENT_PREFIX}default/crash/{a.pod.uid}"

    async def scenario() -> None:
        await service.create(a)
        fake.fail_next["find_by_comment"] = SchedulerUnavailable("squeue timed out")
        with pytest.raises(SchedulerUnavailable):
            await service.create(b)
        fake.jobs["77"] = JobInfo("77", "RUNNING", "", comment, nodes="n[1-2]")  # it landed
        await service.gang.tick()
        assert "submit" not in fake.calls
        statuses = await service.status([a.pod, b.pod])
        assert [s.JID for s in statuses] == ["77", "77"]

    drive(service, scenario)


def test_deleting_a_member_of_a_running_group_names_it_in_the_others(tmp_path: Path) -> None:
    service, fake, _, _ = make(tmp_path)
    a, b = member("del", "del-0"), member("del", "del-1")

    async def scenario() -> None:
        await service.create(a)
        job = (await service.create(b)).PodJID
        await service.gang.tick()  # loads the book into memory, as the refresher does
        await service.delete(b.pod)
        assert fake.jobs[job].state == "CANCELLED"  # the whole group's job
        fake.jobs[job] = JobInfo(job, "CANCELLED", "", fake.jobs[job].comment)
        await service.refresh()
        (sa,) = await service.status([a.pod])
        inner = sa.containers[0].state.terminated
        assert inner is not None and "[GroupEnded: pod del-1 was deleted]" in inner.message

    drive(service, scenario)


def test_a_members_node_is_read_from_its_groups_env_file() -> None:
    env = "ILS_GROUP_NODES=gan-master-0=n1,gan-worker-0=n2\nILS_GROUP_LEADER_ADDR=10.0.0.1\n"
    assert member_nodes(env) == {"gan-master-0": "n1", "gan-worker-0": "n2"}
    assert member_nodes("") == {}


def test_after_a_restart_an_ended_groups_members_say_their_own_nodes(tmp_path: Path) -> None:
    service, fake, transport, clock = make(tmp_path)
    a, b = member("rn", "rn-0"), member("rn", "rn-1")

    async def scenario() -> None:
        await service.create(a)
        job = (await service.create(b)).PodJID
        rec = service.store.get(a.pod.uid)
        assert rec is not None
        group = Path(rec.pod_dir) / "group"
        (group / "group.env").write_text("ILS_GROUP_NODES=rn-0=n1,rn-1=n2\n")
        (group / "group.ended").write_text("")
        fake.jobs[job] = JobInfo(job, "COMPLETED", "", fake.jobs[job].comment, nodes="n[1-2]")
        await service.refresh()
        await service.gang.tick()  # the group's end explained: no longer running
        assert [s.NodeName for s in await service.status([a.pod, b.pod])] == ["n1", "n2"]
        # A restart: the ended group's nodes are read again by the first tick.
        again = Service(service.settings, fake, transport, service.store, clock=clock)
        await again.refresh()
        await again.gang.tick()
        assert [s.NodeName for s in await again.status([a.pod, b.pod])] == ["n1", "n2"]

    drive(service, scenario)


TARGETS = {
    "booster": {"partition": "boost_usr_prod", "gpu_type": "a100", "gpus_per_node": 4},
    "dcgp": {"partition": "dcgp_usr_prod", "gpus_per_node": 0},
}


def test_a_placed_group_counts_each_member_waiting_until_its_job_starts(tmp_path: Path) -> None:
    service, fake, _, _ = make(tmp_path, targets=TARGETS)
    a, b = member("tw", "tw-0"), member("tw", "tw-1")
    sample = service.metrics.registry.get_sample_value

    async def scenario() -> None:
        await service.create(a)
        assert service.book.counts() == {}  # a group waiting for members is placed nowhere
        job = (await service.create(b)).PodJID
        waiting = {t: n for t, n in service.book.counts().items() if n}
        assert waiting == {"booster": 2}  # the two pods of the group, on its target
        placed = [
            sample("interlink_slurm_placements_total", {"target": "booster", "basis": basis})
            for basis in ("only", "estimate", "order")
        ]
        assert sorted(placed, key=str) == [2, None, None]  # one decision for two pods
        # The next decision sees them: a lone pod that fits both goes to the other target.
        lone = (await service.create(new_pod("lone"))).PodJID
        assert "--partition=dcgp_usr_prod" in Path(fake.scripts[lone]).read_text()
        fake.jobs[job] = JobInfo(job, "RUNNING", "", fake.jobs[job].comment, nodes="n[1-2]")
        await service.refresh()
        assert service.book.counts().get("booster", 0) == 0  # started: no longer waiting

    drive(service, scenario)


def test_a_groups_failed_submission_is_counted_and_leaves_no_member_waiting(
    tmp_path: Path,
) -> None:
    service, fake, _, _ = make(tmp_path, targets=TARGETS)
    a, b = member("tf", "tf-0"), member("tf", "tf-1")
    sample = service.metrics.registry.get_sample_value

    async def scenario() -> None:
        await service.create(a)
        fake.fail_next["submit"] = SchedulerUnavailable("sbatch: slurmctld does not answer")
        with pytest.raises(SchedulerUnavailable):
            await service.create(b)
        failed = {"reason": "SchedulerUnavailable"}
        assert sample("interlink_slurm_submit_failures_total", failed) == 2
        assert not any(service.book.counts().values())

    drive(service, scenario)


class _NoChown(LocalTransport):
    def __init__(self, failure: Exception) -> None:
        super().__init__()
        self.failure = failure

    def run(self, argv: Sequence[str], *, timeout: float) -> CommandResult:
        raise self.failure


def test_a_group_directory_that_cannot_be_handed_over_is_a_storage_error_or_an_outage(
    tmp_path: Path,
) -> None:
    """chown with no answer on this machine: the create fails with a storage error (507),
    not an unexpected one; over SSH the login node's outage stays an outage (503)."""
    cluster: Any = SimpleNamespace(transport=_NoChown(CommandUnavailable("chown did not answer")))
    with pytest.raises(StorageError, match="cannot hand"):
        _write_group(cluster, str(tmp_path / "g"), "#!/bin/bash\n", (1234, 1234))
    cluster.transport = _NoChown(SSHUnavailable("cannot reach the login node"))
    with pytest.raises(SchedulerUnavailable):
        _write_group(cluster, str(tmp_path / "h"), "#!/bin/bash\n", (1234, 1234))

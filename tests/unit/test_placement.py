"""Placement over several targets: which can run a pod (pure), which is chosen from Slurm's
estimates (a scripted scheduler here; the real Slurm is in tests/integration/test_placement.py),
and a service whose pods live on two clusters."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from interlink_slurm.config import ConfigError, Settings, load_settings
from interlink_slurm.errors import PodRejected, SchedulerUnavailable, SubmitRejected
from interlink_slurm.placement import ESTIMATE, ONLY, ORDER, place
from interlink_slurm.service import Service
from interlink_slurm.slurm.fake import FakeScheduler
from interlink_slurm.slurm.scheduler import ClusterResources, JobInfo
from interlink_slurm.slurm.transport import LocalTransport
from interlink_slurm.store import Store
from interlink_slurm.translate.targets import Candidate, candidates
from interlink_slurm.wire import Pod, RetrievedPodData
from tests import podgen

BOOSTER = {"partition": "boost_usr_prod", "gpu_type": "a100", "gpus_per_node": 4, "max_cpus": 32}
DCGP = {"partition": "dcgp_usr_prod", "gpus_per_node": 0, "max_cpus": 112, "max_time": "1-00"}


def settings(tmp_path: Path, targets: dict[str, Any], **more: Any) -> Settings:
    return load_settings(None, data_root=str(tmp_path / "pods"), targets=targets, **more)


def pod(
    gpus: int = 0, cpus: int = 1, annotations: dict[str, str] | None = None, **spec: Any
) -> RetrievedPodData:
    limits = {"cpu": str(cpus), "memory": "1Gi"}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    c = podgen.container("main", "print(1)", resources={"limits": limits})
    return RetrievedPodData.model_validate(
        podgen.retrieved(podgen.pod("p", [c], annotations=annotations, **spec))
    )


def where(s: Settings, data: RetrievedPodData) -> list[Candidate]:
    return candidates(data, s, lambda cluster: f"/pods/{cluster}/p")


def eligible(s: Settings, data: RetrievedPodData) -> list[str]:
    return [c.name for c in where(s, data) if c.plan is not None]


def reasons(s: Settings, data: RetrievedPodData) -> dict[str, str]:
    return {c.name: str(c.rejected) for c in where(s, data) if c.rejected is not None}


# --- eligibility -------------------------------------------------------------------------------


def test_a_gpu_pod_can_only_go_where_there_are_gpus(tmp_path: Path) -> None:
    s = settings(tmp_path, {"booster": BOOSTER, "dcgp": DCGP})
    assert eligible(s, pod(gpus=2)) == ["booster"]
    assert "the nodes here have none (target dcgp)" in reasons(s, pod(gpus=2))["dcgp"]
    assert eligible(s, pod()) == ["booster", "dcgp"]
    [plan] = [c.plan for c in where(s, pod(gpus=2)) if c.plan]
    assert "--partition=boost_usr_prod" in plan.directives
    assert "--gres=gpu:a100:2" in plan.directives


def test_match_keeps_cpu_pods_off_a_gpu_target(tmp_path: Path) -> None:
    s = settings(tmp_path, {"booster": {**BOOSTER, "match": "gpu"}, "dcgp": DCGP})
    assert eligible(s, pod()) == ["dcgp"]
    assert reasons(s, pod())["booster"].endswith("this target takes GPU pods only")


def test_the_pod_dir_is_on_the_targets_cluster(tmp_path: Path) -> None:
    s = settings(
        tmp_path,
        {"here": DCGP, "there": {**DCGP, "cluster": "other"}},
        clusters={"other": {"data_root": "/other"}},
    )
    dirs = {c.name: c.plan.pod_dir for c in where(s, pod()) if c.plan}
    assert dirs == {"here": "/pods/default/p", "there": "/pods/other/p"}
    assert {c.name: c.cluster for c in where(s, pod())} == {"here": "default", "there": "other"}


def test_an_impossible_pod_is_refused_with_each_targets_reason(tmp_path: Path) -> None:
    s = settings(tmp_path, {"booster": BOOSTER, "dcgp": DCGP})
    with pytest.raises(PodRejected) as err:
        asyncio.run(place(where(s, pod(gpus=8)), {}, 1.0))
    text = str(err.value)
    assert text.startswith("spec: no target here can run this pod")
    assert "target booster: spec.containers.resources.limits.nvidia.com/gpu: 8 GPUs" in text
    assert "a node here has 4 (target booster)" in text
    assert "target dcgp: spec.containers.resources.limits.nvidia.com/gpu" in text
    assert "the nodes here have none (target dcgp)" in text


def test_a_fault_of_the_pod_itself_is_said_once(tmp_path: Path) -> None:
    s = settings(tmp_path, {"booster": BOOSTER, "dcgp": DCGP})
    bad = pod(activeDeadlineSeconds=-5)
    with pytest.raises(PodRejected) as err:
        where(s, bad)
    assert err.value.field == "spec.activeDeadlineSeconds"


def test_time_cores_and_memory_limits_of_a_target(tmp_path: Path) -> None:
    s = settings(tmp_path, {"booster": BOOSTER, "dcgp": DCGP})
    assert eligible(s, pod(cpus=64)) == ["dcgp"]
    assert (
        "64 CPUs per node is more than the 32 allowed here (target booster)"
        in (reasons(s, pod(cpus=64))["booster"])
    )
    long = pod(activeDeadlineSeconds=3 * 86400)
    assert eligible(s, long) == ["booster"]
    assert "a job may run here (target dcgp)" in reasons(s, long)["dcgp"]


def test_namespaces_and_accounts_of_a_target(tmp_path: Path) -> None:
    s = settings(
        tmp_path,
        {
            "booster": {**BOOSTER, "namespaces": ["physics"]},
            "dcgp": {**DCGP, "accounts": ["proj_a"], "account": "proj_b"},
        },
        namespace_accounts={"physics": "proj_a"},
    )
    data = pod()
    assert eligible(s, data) == []
    why = reasons(s, data)
    assert why["booster"] == "metadata.namespace: pods of namespace 'default' may not go here"
    assert why["dcgp"] == (
        "metadata.namespace: the pod would be charged to account proj_b; here it may be proj_a"
    )
    data.pod.metadata.namespace = "physics"
    assert eligible(s, data) == ["booster", "dcgp"]


def test_labels_and_taints_of_a_target(tmp_path: Path) -> None:
    s = settings(
        tmp_path,
        {
            "booster": {**BOOSTER, "labels": {"site": "cineca"}},
            "other": {**BOOSTER, "labels": {"site": "juelich"}, "taints": [{"key": "remote"}]},
        },
    )
    # The virtual node's own selector (type) is no target's label: it does not count.
    plain = pod(nodeSelector={"type": "virtual-kubelet"})
    assert eligible(s, plain) == ["booster"]
    assert reasons(s, plain)["other"] == (
        "spec.tolerations: this target has taint remote:NoSchedule, "
        "which spec.tolerations does not tolerate"
    )
    tolerant = pod(nodeSelector={"site": "juelich"}, tolerations=[{"key": "remote"}])
    assert eligible(s, tolerant) == ["other"]
    assert reasons(s, tolerant)["booster"] == (
        "spec.nodeSelector[site]: the pod wants 'juelich', this target has 'cineca'"
    )


def test_preferred_node_affinity_breaks_ties(tmp_path: Path) -> None:
    s = settings(
        tmp_path,
        {"a": {**DCGP, "labels": {"zone": "a"}}, "b": {**DCGP, "labels": {"zone": "b"}}},
    )
    affinity = {
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 10,
                    "preference": {
                        "matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]
                    },
                }
            ]
        }
    }
    chosen = asyncio.run(place(where(s, pod(affinity=affinity)), {}, 1.0, estimate=False))
    assert chosen.chosen.name == "b"
    assert chosen.basis == ORDER


def test_the_targets_annotation_narrows_the_choice(tmp_path: Path) -> None:
    s = settings(tmp_path, {"booster": BOOSTER, "dcgp": DCGP})
    assert eligible(s, pod(annotations={"interlink-slurm/targets": "dcgp"})) == ["dcgp"]
    with pytest.raises(PodRejected) as err:
        where(s, pod(annotations={"interlink-slurm/targets": "dcgp, nope"}))
    assert err.value.field == "metadata.annotations[interlink-slurm/targets]"
    assert "no target 'nope' here (targets: booster, dcgp)" in err.value.reason


def test_a_partition_asked_in_the_flags_narrows_the_choice(tmp_path: Path) -> None:
    s = settings(tmp_path, {"booster": BOOSTER, "dcgp": DCGP})
    data = pod(annotations={"slurm-job.vk.io/flags": "--partition=dcgp_usr_prod"})
    assert eligible(s, data) == ["dcgp"]
    assert reasons(s, data)["booster"].endswith(
        "the pod asks for partition dcgp_usr_prod, this target is boost_usr_prod"
    )


def test_without_targets_nothing_changes(tmp_path: Path) -> None:
    s = load_settings(None, data_root=str(tmp_path), partition="dcgp_usr_prod")
    [only] = where(s, pod())
    assert (only.name, only.cluster) == ("", "default")
    chosen = asyncio.run(place([only], {}, 1.0))
    assert chosen.basis == ONLY


# --- the choice ------------------------------------------------------------------------------


def clusters(**fakes: FakeScheduler) -> dict[str, FakeScheduler]:
    return {"default": FakeScheduler(), **fakes}


def test_the_soonest_expected_start_wins(tmp_path: Path) -> None:
    s = settings(tmp_path, {"booster": BOOSTER, "dcgp": DCGP})
    fake = FakeScheduler(starts={"boost_usr_prod": 600.0})
    chosen = asyncio.run(place(where(s, pod()), {"default": fake}, 1.0))
    assert (chosen.chosen.name, chosen.basis) == ("dcgp", ESTIMATE)
    assert chosen.predicted_start == pytest.approx(time.time(), abs=5)
    fake.starts = {"dcgp_usr_prod": 600.0}
    assert asyncio.run(place(where(s, pod()), {"default": fake}, 1.0)).chosen.name == "booster"
    # Equal starts: the configured order.
    fake.starts = {}
    assert asyncio.run(place(where(s, pod()), {"default": fake}, 1.0)).chosen.name == "booster"


def test_weights_and_penalties_express_a_preference(tmp_path: Path) -> None:
    # booster is kept for GPU work: a CPU pod goes there only if dcgp would wait 30 min more.
    s = settings(tmp_path, {"booster": {**BOOSTER, "penalty_seconds": 1800}, "dcgp": DCGP})
    fake = FakeScheduler(starts={"dcgp_usr_prod": 1200.0})
    assert asyncio.run(place(where(s, pod()), {"default": fake}, 1.0)).chosen.name == "dcgp"
    fake.starts = {"dcgp_usr_prod": 2400.0}
    assert asyncio.run(place(where(s, pod()), {"default": fake}, 1.0)).chosen.name == "booster"
    # A weight of 3 makes each minute of waiting on dcgp count three times.
    s = settings(tmp_path, {"booster": BOOSTER, "dcgp": {**DCGP, "weight": 3}})
    fake.starts = {"boost_usr_prod": 900.0, "dcgp_usr_prod": 400.0}
    assert asyncio.run(place(where(s, pod()), {"default": fake}, 1.0)).chosen.name == "booster"


def test_failed_estimates_fall_back_to_the_configured_order(tmp_path: Path) -> None:
    s = settings(tmp_path, {"booster": BOOSTER, "dcgp": DCGP})
    fake = FakeScheduler(starts={"boost_usr_prod": 600.0}, down=SchedulerUnavailable("no"))
    chosen = asyncio.run(place(where(s, pod()), {"default": fake}, 1.0))
    assert (chosen.chosen.name, chosen.basis) == ("booster", ORDER)
    assert chosen.estimates == {"booster": "no", "dcgp": "no"}
    assert chosen.predicted_start is None


def test_a_target_without_estimate_comes_after_those_with_one(tmp_path: Path) -> None:
    s = settings(
        tmp_path,
        {"far": {**DCGP, "cluster": "far"}, "dcgp": DCGP},
        clusters={"far": {}},
    )
    far = FakeScheduler(down=SchedulerUnavailable("ssh: connection refused"))
    here = FakeScheduler(starts={"dcgp_usr_prod": 3600.0})
    chosen = asyncio.run(place(where(s, pod()), clusters(far=far) | {"default": here}, 1.0))
    assert (chosen.chosen.name, chosen.basis) == ("dcgp", ESTIMATE)
    assert chosen.estimates["far"] == "ssh: connection refused"


def test_estimates_are_capped_in_time(tmp_path: Path) -> None:
    s = settings(tmp_path, {"booster": BOOSTER, "dcgp": DCGP})
    slow = FakeScheduler(starts={"boost_usr_prod": 600.0}, estimate_delay=5.0)
    started = time.monotonic()
    chosen = asyncio.run(place(where(s, pod()), {"default": slow}, 0.2))
    assert time.monotonic() - started < 2.0
    assert (chosen.chosen.name, chosen.basis) == ("booster", ORDER)
    assert chosen.estimates["dcgp"] == "no answer within 0.2 s"


def test_a_target_whose_slurm_would_refuse_the_job_is_ruled_out(tmp_path: Path) -> None:
    s = settings(tmp_path, {"booster": BOOSTER, "dcgp": DCGP})

    class Refusing(FakeScheduler):
        async def estimate(self, directives: Any, timeout: float) -> Any:
            if "--partition=boost_usr_prod" in directives:
                raise SubmitRejected("Slurm refused the job: Invalid account")
            return await super().estimate(directives, timeout)

    fake = Refusing(starts={"dcgp_usr_prod": 3600.0})
    chosen = asyncio.run(place(where(s, pod()), {"default": fake}, 1.0))
    assert chosen.chosen.name == "dcgp"
    [booster] = [c for c in chosen.candidates if c.name == "booster"]
    assert str(booster.rejected) == "spec: Slurm refused the job: Invalid account"
    everywhere = FakeScheduler(down=SubmitRejected("Slurm refused the job: Invalid qos"))
    with pytest.raises(PodRejected) as err:
        asyncio.run(place(where(s, pod()), {"default": everywhere}, 1.0))
    # The same refusal everywhere is said once.
    assert err.value.reason == "Slurm refused the job: Invalid qos"


def test_the_record_and_the_render_lines(tmp_path: Path) -> None:
    s = settings(tmp_path, {"booster": BOOSTER, "dcgp": DCGP})
    fake = FakeScheduler(starts={"boost_usr_prod": 5400.0})
    chosen = asyncio.run(place(where(s, pod(gpus=1)), {"default": fake}, 1.0))
    record = json.loads(chosen.record())
    assert (record["target"], record["cluster"], record["basis"]) == ("booster", "default", ONLY)
    assert record["ruled_out"]["dcgp"].endswith("the nodes here have none (target dcgp)")
    assert fake.calls == []  # one target could take it: no estimate asked
    lines = asyncio.run(place(where(s, pod()), {"default": fake}, 1.0)).lines()
    assert lines[0].startswith("placed on target dcgp (partition dcgp_usr_prod), where Slurm")
    assert lines[1].startswith("- target booster (partition boost_usr_prod): expected start")
    assert "(after 1 h 30 min)" in lines[1]
    assert lines[2].startswith("* target dcgp (partition dcgp_usr_prod): expected start")
    assert "(right away)" in lines[2]


# --- a service over two clusters -------------------------------------------------------------


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[Service, FakeScheduler, FakeScheduler]]:
    s = settings(
        tmp_path,
        {"here": DCGP, "there": {**BOOSTER, "cluster": "far"}},
        clusters={"far": {"data_root": str(tmp_path / "far")}},
        ping_cache_seconds=0,
    )
    here, far = FakeScheduler(), FakeScheduler()
    here.resources_answer = ClusterResources(cpus=112, memory_mb=500_000)
    far.resources_answer = ClusterResources(cpus=32, memory_mb=480_000, gpus={"a100": 4})
    store = Store(tmp_path / "state.db")
    store.open()
    service = Service(s, here, LocalTransport(), store, clusters={"far": (LocalTransport(), far)})
    try:
        yield service, here, far
    finally:
        store.close()


def test_pods_on_two_clusters_are_followed_each_on_its_own(
    two: tuple[Service, FakeScheduler, FakeScheduler], tmp_path: Path
) -> None:
    service, here, far = two
    here.starts = {"dcgp_usr_prod": 7200.0}
    cpu_pod, gpu_pod = pod(), pod(gpus=4)
    pinned = pod(annotations={"interlink-slurm/targets": "here"})

    async def scenario() -> None:
        a = await service.create(cpu_pod)
        b = await service.create(gpu_pod)
        c = await service.create(pinned)
        assert (a.PodJID, b.PodJID) == ("1001", "1002")
        assert far.calls.count("submit") == 2
        # Both fakes number jobs from 1001: the same job id on two clusters.
        assert c.PodJID == "1001" and here.calls.count("submit") == 1
        assert (tmp_path / "far").is_dir() and (tmp_path / "pods").is_dir()

        far.jobs["1001"] = JobInfo("1001", "PENDING", "Priority", far.jobs["1001"].comment)
        far.jobs["1002"] = JobInfo("1002", "RUNNING", "", far.jobs["1002"].comment)
        here.jobs["1001"] = JobInfo("1001", "COMPLETED", "", here.jobs["1001"].comment)
        await service.refresh()
        assert service.store.get(pinned.pod.uid).final_state == "COMPLETED"  # type: ignore[union-attr]
        assert service.store.get(cpu_pod.pod.uid).final_state is None  # type: ignore[union-attr]
        statuses = await service.status([cpu_pod.pod, gpu_pod.pod])
        waiting = statuses[0].containers[0].state.waiting
        assert waiting is not None
        assert "placed on target there (partition boost_usr_prod), where Slurm" in (waiting.message)

        await service.delete(Pod.model_validate(cpu_pod.pod.model_dump(by_alias=True)))
        assert "cancel" in far.calls and "cancel" not in here.calls

    asyncio.run(scenario())
    rec = service.store.get(cpu_pod.pod.uid)
    assert rec is not None and rec.cluster == "far"
    assert json.loads(rec.placement or "{}")["target"] == "there"
    metrics = service.metrics.registry
    assert metrics.get_sample_value(
        "interlink_slurm_placements_total", {"target": "there", "basis": "estimate"}
    )
    assert metrics.get_sample_value(
        "interlink_slurm_placement_actual_wait_seconds_count", {"target": "there"}
    )


def test_the_ping_adds_up_the_clusters(two: tuple[Service, FakeScheduler, FakeScheduler]) -> None:
    service, here, far = two
    ping = asyncio.run(service.ping())
    assert ping.resources.cpu == "144"
    assert ping.resources.memory == "980000Mi"
    assert [a.available for a in ping.resources.accelerators] == ["4"]
    assert "resources" in here.calls and "resources" in far.calls
    # A cluster that does not answer is left out; all silent is an error.
    far.down = SchedulerUnavailable("ssh down")
    assert asyncio.run(service.ping()).resources.cpu == "112"
    here.down = SchedulerUnavailable("slurmctld down")
    with pytest.raises(SchedulerUnavailable):
        asyncio.run(service.ping())


def test_an_outage_of_one_cluster_leaves_the_other_fresh(
    two: tuple[Service, FakeScheduler, FakeScheduler],
) -> None:
    service, here, far = two
    far.starts = {"boost_usr_prod": 7200.0}
    cpu_pod = pod()

    async def scenario() -> None:
        await service.create(cpu_pod)
        assert here.calls.count("submit") == 1
        here.jobs["1001"] = JobInfo("1001", "RUNNING", "", here.jobs["1001"].comment)
        far.down = SchedulerUnavailable("ssh down")
        await service.refresh()
        assert {
            n: t.outage for n, t in service.trackers.items() if t.outage
        } == {}  # far: not asked
        [status] = await service.status([cpu_pod.pod])
        assert "Slurm does not answer" not in str(status.model_dump())

    asyncio.run(scenario())


def test_a_pod_on_a_cluster_no_longer_configured_still_gets_an_answer(
    two: tuple[Service, FakeScheduler, FakeScheduler], tmp_path: Path
) -> None:
    service, here, _ = two
    here.starts = {"dcgp_usr_prod": 7200.0}
    data = pod()
    asyncio.run(service.create(data))
    assert service.store.get(data.pod.uid).cluster == "far"  # type: ignore[union-attr]
    # The operator removes the far cluster and restarts.
    s = settings(tmp_path, {"here": DCGP})
    again = Service(s, here, LocalTransport(), service.store)

    async def scenario() -> None:
        await again.refresh()
        [status] = await again.status([data.pod])
        assert status.containers[0].state.waiting is not None
        with pytest.raises(SchedulerUnavailable, match="cluster 'far', which is no longer"):
            await again.delete(Pod.model_validate(data.pod.model_dump(by_alias=True)))

    asyncio.run(scenario())


def test_ties_go_to_the_target_with_fewer_of_our_pods_waiting(tmp_path: Path) -> None:
    s = settings(tmp_path, {"booster": BOOSTER, "dcgp": DCGP})
    fake = FakeScheduler()  # both start now
    chosen = asyncio.run(
        place(where(s, pod()), {"default": fake}, 1.0, waiting=lambda: {"booster": 1})
    )
    assert chosen.chosen.name == "dcgp"
    # Not a tie: the soonest start wins whatever waits there.
    fake.starts = {"dcgp_usr_prod": 60.0}
    chosen = asyncio.run(
        place(where(s, pod()), {"default": fake}, 1.0, waiting=lambda: {"booster": 5})
    )
    assert chosen.chosen.name == "booster"


def test_a_tie_is_within_five_seconds_of_the_best_wherever_the_scores_fall(
    tmp_path: Path,
) -> None:
    s = settings(tmp_path, {"booster": BOOSTER, "dcgp": DCGP})
    # 4 s and 6 s apart from now: 2 s from each other, so a tie (not two 5 s buckets).
    fake = FakeScheduler(starts={"boost_usr_prod": 6.0, "dcgp_usr_prod": 4.0})
    chosen = asyncio.run(
        place(where(s, pod()), {"default": fake}, 1.0, waiting=lambda: {"dcgp": 2})
    )
    assert chosen.chosen.name == "booster"
    # 9 s apart is no tie: the soonest wins.
    fake.starts = {"boost_usr_prod": 13.0, "dcgp_usr_prod": 4.0}
    chosen = asyncio.run(
        place(where(s, pod()), {"default": fake}, 1.0, waiting=lambda: {"dcgp": 2})
    )
    assert chosen.chosen.name == "dcgp"


def test_a_burst_of_equal_pods_is_spread_until_their_jobs_start(tmp_path: Path) -> None:
    s = settings(tmp_path, {"booster": BOOSTER, "dcgp": DCGP})
    fake = FakeScheduler()
    store = Store(tmp_path / "state.db")
    store.open()
    service = Service(s, fake, LocalTransport(), store)
    pods = [pod() for _ in range(5)]

    def partition_of(job_id: str) -> str:
        script = Path(fake.scripts[job_id]).read_text()
        return script.split("#SBATCH --partition=", 1)[1].split()[0]

    async def scenario() -> list[str]:
        # At once, as interLink sends a Job's pods: each decision sees the ones before it.
        answers = await asyncio.gather(*(service.create(p) for p in pods))
        where = [partition_of(a.PodJID) for a in answers]
        # The booster pods start: booster is free of our waiting pods again.
        for a, part in zip(answers, where, strict=True):
            if part == "boost_usr_prod":
                fake.jobs[a.PodJID] = JobInfo(a.PodJID, "RUNNING", "", fake.jobs[a.PodJID].comment)
        await service.refresh()
        late = await service.create(pod())
        return [*where, partition_of(late.PodJID)]

    try:
        where = asyncio.run(scenario())
    finally:
        store.close()
    # Spread as they were decided (which of the concurrent creates decides first is the event
    # loop's affair): three to the first target, two to the other.
    assert Counter(where[:5]) == {"boost_usr_prod": 3, "dcgp_usr_prod": 2}
    assert where[5] == "boost_usr_prod"  # 0 waiting on booster, 2 on dcgp


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"targets": {"a b": {}}}, "target name 'a b'"),
        (
            {"targets": {"x": {"sbatch_extra": ["--job-name=y"]}}},
            "targets.x.sbatch_extra: '--job-name=y': --job-name is set by interlink-slurm",
        ),
        ({"targets": {"x": {"cluster": "nope"}}}, "targets.x.cluster: no cluster 'nope'"),
        ({"clusters": {"default": {}}}, "clusters.default: that name is the top-level"),
        ({"clusters": {"b": {"transport": "ssh"}}}, "ssh: required with transport: ssh"),
        ({"clusters": {"b": {"data_root": "rel"}}}, "'rel' must be an absolute path"),
    ],
)
def test_targets_and_clusters_are_checked_at_start(
    tmp_path: Path, config: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, data_root=str(tmp_path), **config)
    assert message in str(err.value)


def test_a_cluster_is_seen_with_its_own_keys(tmp_path: Path) -> None:
    s = settings(
        tmp_path,
        {"x": {"cluster": "b"}},
        clusters={"b": {"slurm_conf": "/etc/b/slurm.conf"}},
        slurm_conf="/etc/a/slurm.conf",
    )
    b = s.for_cluster("b")
    assert (b.slurm_conf, b.data_root, b.transport) == (
        Path("/etc/b/slurm.conf"),
        s.data_root,
        "local",
    )
    assert s.for_cluster("default") is s
    assert s.cluster_names == ["b"]


class _DownAfterPlacing(LocalTransport):
    """The SSH link to the login node drops once the pod is placed: writing its files fails."""

    def write_file(self, path: str, data: bytes, mode: int) -> None:
        raise SchedulerUnavailable("ssh: connection to login node lost")


def test_a_create_cut_short_by_an_outage_leaves_no_pod_waiting(tmp_path: Path) -> None:
    s = settings(tmp_path, {"booster": BOOSTER, "dcgp": DCGP})
    fake = FakeScheduler()
    store = Store(tmp_path / "state.db")
    store.open()
    service = Service(s, fake, _DownAfterPlacing(), store)
    data = pod()

    async def scenario() -> None:
        with pytest.raises(SchedulerUnavailable, match="connection to login node lost"):
            await service.create(data)
        # sbatch itself fails the same way: the row stays in flight, the pod waits nowhere.
        service.transport = service.clusters["default"].transport = LocalTransport()
        fake.fail_next["submit"] = SchedulerUnavailable("ssh: connection reset")
        with pytest.raises(SchedulerUnavailable, match="connection reset"):
            await service.create(data)

    try:
        asyncio.run(scenario())
        assert {t: uids for t, uids in service.book.waiting.items() if uids} == {}
    finally:
        store.close()


def test_a_job_found_after_a_failed_submit_counts_as_waiting_again(tmp_path: Path) -> None:
    s = settings(tmp_path, {"booster": BOOSTER, "dcgp": DCGP})
    fake = FakeScheduler()
    store = Store(tmp_path / "state.db")
    store.open()
    service = Service(s, fake, LocalTransport(), store)
    data = pod()

    async def landed_then_lost(script_path: str, workdir: str, directives: Sequence[str]) -> str:
        await FakeScheduler.submit(fake, script_path, workdir, directives)
        raise SchedulerUnavailable("ssh: connection reset after sbatch ran")

    async def scenario() -> str:
        fake.submit = landed_then_lost  # type: ignore[method-assign]
        with pytest.raises(SchedulerUnavailable):
            await service.create(data)
        del fake.submit
        return (await service.create(data)).PodJID

    try:
        job_id = asyncio.run(scenario())
        assert job_id == "1001"  # found by its comment, not submitted twice
        assert [uids for uids in service.book.waiting.values() if uids] == [{data.pod.uid}]
    finally:
        store.close()

"""Pod groups on the real Slurm: members kept until the last arrives, then ONE job on several
nodes, each pod with its own statuses and logs, through the HTTP API as interLink calls it."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import podgen
from tests.integration.conftest import (
    Plugin,
    all_terminated,
    any_running,
    rest_plugin,
    slurm,
    states,
    user_dir,
)
from tests.standin import APPTAINER

pytestmark = pytest.mark.slurm

KUEUE_GROUP = "kueue.x-k8s.io/pod-group-name"
KUEUE_TOTAL = "kueue.x-k8s.io/pod-group-total-count"
TIMEOUT = 6  # group_timeout_seconds of these tests' plugin
PYTORCH = "nvcr.io/nvidia/pytorch:24.05-py3"  # the examples' image: here, the test image
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def gang(cluster: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plugin]:
    """A plugin of its own (local mode): a short group_timeout, and restarts of its own."""
    images = {"debian-python": cluster["ILS_IMAGE"], PYTORCH: cluster["ILS_IMAGE"]}
    p = Plugin(
        tmp_path_factory.mktemp("gang"),
        cluster,
        group_timeout_seconds=TIMEOUT,
        max_group_size=4,
        images=images,
    )
    p.start()
    try:
        yield p
    finally:
        p.stop()


def member(group: str, name: str, size: int, script: str, **kw: Any) -> dict[str, Any]:
    pod = podgen.pod(name, [podgen.container("main", script)], **kw)
    pod["metadata"]["labels"] = {KUEUE_GROUP: group}
    pod["metadata"]["annotations"][KUEUE_TOTAL] = str(size)
    return pod


def waiting(status: dict[str, Any]) -> dict[str, Any]:
    return dict(states(status)["main"].get("waiting") or {})


def job_of(plugin: Plugin, pod: dict[str, Any]) -> str:
    status = plugin.wait_for(pod, lambda s: bool(s.get("JID")), timeout=30)
    return str(status["JID"])


# What a member prints: its node and the address its sibling's name resolves to, in the
# container (the group's /etc/hosts), and its rank variables.
REPORT = (
    "import os, socket, sys\n"
    "other = sys.argv[1] if len(sys.argv) > 1 else ''\n"
    "print('node', os.environ.get('SLURMD_NODENAME'))\n"
    "print('rank', os.environ['RANK'], 'of', os.environ['WORLD_SIZE'],"
    " 'master', os.environ['MASTER_ADDR'])\n"
    "print('resolves', socket.gethostbyname(os.environ['ILS_GROUP_PODS'].split(',')[-1]))\n"
)


def test_a_two_pod_group_is_one_job_on_both_nodes_each_pod_with_its_own_log_and_exit_code(
    gang: Plugin,
) -> None:
    a = member("duo", "duo-0", 2, REPORT)
    b = member("duo", "duo-1", 2, REPORT + "import sys; sys.exit(0 if False else 3)\n")
    # ignore, so that the failing one does not end the other: each exit code its own
    assert gang.create_ok(podgen.retrieved(a)) == ""
    first = gang.pod_status(a)
    assert waiting(first)["reason"] == "GroupPending"
    assert waiting(first)["message"] == "1 of 2 pods of group duo arrived"
    job = gang.create_ok(podgen.retrieved(b))
    assert job.isdigit()
    assert job_of(gang, a) == job  # one job for both

    sa = gang.wait_for(a, all_terminated)
    sb = gang.wait_for(b, all_terminated)
    log_a, log_b = gang.logs(a, "main").text, gang.logs(b, "main").text
    assert "rank 0 of 2 master duo-0" in log_a, log_a
    assert "rank 1 of 2 master duo-0" in log_b, log_b
    nodes = {line for text in (log_a, log_b) for line in text.splitlines() if line[:5] == "node "}
    assert len(nodes) == 2, (log_a, log_b)  # each pod on its own node
    assert "resolves 127.0.0.1" in log_a  # the sibling's name, from inside the container
    assert states(sb)["main"]["terminated"]["exitCode"] == 3
    # The failing member ended the group; the other had already ended, or says so.
    assert states(sa)["main"]["terminated"]["exitCode"] in (0, 143)
    assert sa["JID"] == sb["JID"] == job
    # Each pod its own node, once the refresher has read where the group's job put it.
    own = [gang.wait_for(p, lambda s: s.get("NodeName") in ("n1", "n2")) for p in (a, b)]
    assert {s["NodeName"] for s in own} == {"n1", "n2"}


def test_a_group_whose_last_member_never_arrives_fails_naming_it(gang: Plugin) -> None:
    a = member("late", "late-0", 2, "print(1)")
    gang.create_ok(podgen.retrieved(a))

    status = gang.wait_for(a, lambda s: "terminated" in states(s)["main"], timeout=TIMEOUT + 30)

    term = states(status)["main"]["terminated"]
    assert term["reason"] == "GroupIncomplete"
    assert "missing: late-1" in term["message"]
    late = member("late", "late-1", 2, "print(1)")
    refused = gang.create(podgen.retrieved(late))
    assert refused.status_code == 422, refused.text
    assert "has failed" in refused.text


def delete_second_member(
    gang: Plugin, group: str, script: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A group of two members running ``script``, the second deleted as soon as both are seen
    running (which can be while the group's steps are still being launched: the group script
    once ended there, exit 1, and its steps with it, SIGKILL); the first member and how its
    container ended."""
    a = member(group, f"{group}-0", 2, script, terminationGracePeriodSeconds=600)
    b = member(group, f"{group}-1", 2, script, terminationGracePeriodSeconds=600)
    gang.create_ok(podgen.retrieved(a))
    gang.create_ok(podgen.retrieved(b))
    gang.wait_for(a, any_running)
    gang.wait_for(b, any_running)

    assert gang.delete(b).status_code == 200

    status = gang.wait_for(a, all_terminated, timeout=120)
    return a, states(status)["main"]["terminated"]


def test_deleting_one_member_ends_the_group_and_the_other_names_it(gang: Plugin) -> None:
    # Containers that end at SIGTERM: the group ends at once, not when the grace period's
    # cancel comes (the delete's signal reaches every member's step, not just the batch script).
    _, term = delete_second_member(
        gang, "del", "import time; print('up', flush=True); time.sleep(600)"
    )
    assert "pod del-1 was deleted" in term["message"], term
    assert term["exitCode"] == 143, term  # its own SIGTERM


def test_the_members_a_delete_ends_have_their_grace_period(gang: Plugin) -> None:
    """The group's job lasts while its members end: one that takes longer after SIGTERM than
    Slurm's KillWait (5 s here) still ends as it chooses."""
    slow_end = (
        "import signal, sys, time\n"
        "def bye(*_):\n"
        "    time.sleep(7)\n"
        "    print('bye', flush=True)\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "print('up', flush=True)\n"
        "time.sleep(600)\n"
    )
    a, term = delete_second_member(gang, "grace", slow_end)
    assert term["exitCode"] == 0, term
    assert gang.logs(a, "main").text == "up\nbye\n"


def test_a_restart_while_a_group_is_half_arrived_loses_no_member(gang: Plugin) -> None:
    a = member("rst", "rst-0", 2, "print('zero')")
    b = member("rst", "rst-1", 2, "print('one')")
    gang.create_ok(podgen.retrieved(a))
    gang.restart()
    first = gang.pod_status(a)
    assert waiting(first).get("message") == "1 of 2 pods of group rst arrived", first
    job = gang.create_ok(podgen.retrieved(b))
    assert job.isdigit()

    gang.wait_for(a, all_terminated)
    gang.wait_for(b, all_terminated)
    assert gang.logs(a, "main").text == "zero\n"
    assert gang.logs(b, "main").text == "one\n"


def test_a_members_reap_does_not_kill_its_sibling_on_the_same_machine(gang: Plugin) -> None:
    """Both nodes of the local cluster are this machine: the short member ends (and reaps
    what is left of its own) while the long one still runs, which must go on to its end."""
    a = member("reap", "reap-0", 2, "print('short')")
    b = member("reap", "reap-1", 2, "import time; time.sleep(8); print('long done')")
    gang.create_ok(podgen.retrieved(a))
    gang.create_ok(podgen.retrieved(b))

    sb = gang.wait_for(b, all_terminated)

    assert states(sb)["main"]["terminated"]["exitCode"] == 0
    assert gang.logs(b, "main").text == "long done\n"
    assert gang.logs(a, "main").text == "short\n"


def example_pods(name: str) -> list[dict[str, Any]]:
    """The pods of an example file, as the API server would pass them on (a uid each)."""
    pods = [p for p in yaml.safe_load_all((EXAMPLES / name).read_text()) if p]
    for pod in pods:
        pod["metadata"]["uid"] = str(uuid.uuid4())
        pod["metadata"]["creationTimestamp"] = "2026-11-25T07:00:00Z"
    return pods


def test_the_pytorchjob_shaped_gan_group_trains_on_two_nodes_with_four_gpus_each(
    gang: Plugin,
) -> None:
    master, worker = example_pods("gan-training-2x4xa100-group.yaml")
    assert gang.create_ok(podgen.retrieved(worker)) == ""  # the worker first: it waits
    job = gang.create_ok(podgen.retrieved(master))

    sm = gang.wait_for(master, all_terminated)
    sw = gang.wait_for(worker, all_terminated)

    assert sm["JID"] == sw["JID"] == job
    log_m, log_w = gang.logs(master, "pytorch").text, gang.logs(worker, "pytorch").text
    assert "rendezvous: ranks [0, 1] joined" in log_m, log_m
    assert "rendezvous: joined the master" in log_w, log_w
    # The controller's MASTER_ADDR, the master pod's name, resolves in both containers.
    assert "master gan-master-0 is 127.0.0.1" in log_m and "is 127.0.0.1" in log_w
    assert "rank 0 of 2 on node n1" in log_m or "rank 0 of 2 on node n2" in log_m
    nodes = {line.split(" on node ")[1].split()[0] for line in (log_m, log_w)}
    assert len(nodes) == 2, (log_m, log_w)
    for log in (log_m, log_w):
        assert "with GPUs 0,1,2,3" in log, log  # each node's own 4 GPUs
    for status in (sm, sw):
        assert states(status)["pytorch"]["terminated"]["exitCode"] == 0


MPI = {
    "interlink-slurm/mpi-launcher": "srun",
    "interlink-slurm/tasks-per-node": "2",
}
RANKS = "import os; print('task', os.environ['SLURM_PROCID'], 'on', os.environ['SLURMD_NODENAME'])"


def test_an_mpi_pod_over_two_nodes_runs_its_tasks_on_both(gang: Plugin) -> None:
    pod = podgen.pod(
        "mpi-2n",
        [podgen.container("solver", RANKS)],
        annotations={**MPI, "interlink-slurm/nodes": "2"},
    )
    gang.create_ok(podgen.retrieved(pod))

    status = gang.wait_for(pod, all_terminated)

    assert states(status)["solver"]["terminated"]["exitCode"] == 0
    lines = sorted(gang.logs(pod, "solver").text.splitlines())
    assert [line.split()[1] for line in lines] == ["0", "1", "2", "3"], lines
    assert {line.split()[-1] for line in lines} == {"n1", "n2"}


def test_members_launching_their_own_tasks_run_them_inside_their_own_step(gang: Plugin) -> None:
    """An MPI launcher (srun) inside a member's step: its tasks start on the member's node."""
    a = member("mpi", "mpi-0", 2, RANKS, annotations=dict(MPI))
    b = member("mpi", "mpi-1", 2, RANKS, annotations=dict(MPI))
    gang.create_ok(podgen.retrieved(a))
    gang.create_ok(podgen.retrieved(b))

    for pod in (a, b):
        status = gang.wait_for(pod, all_terminated)
        assert states(status)["main"]["terminated"]["exitCode"] == 0
    la = sorted(gang.logs(a, "main").text.splitlines())
    lb = sorted(gang.logs(b, "main").text.splitlines())
    assert [line.split()[1] for line in la] == ["0", "1"], la
    assert len({line.split()[-1] for line in la}) == 1  # both tasks on the member's node
    assert {line.split()[-1] for line in la} != {line.split()[-1] for line in lb}


def test_a_failing_member_ends_the_group_and_the_others_name_it(gang: Plugin) -> None:
    a = member("fail", "fail-0", 2, "import time; print('up', flush=True); time.sleep(600)")
    b = member("fail", "fail-1", 2, "import sys, time; time.sleep(2); sys.exit(3)")
    gang.create_ok(podgen.retrieved(a))
    gang.create_ok(podgen.retrieved(b))

    sa = gang.wait_for(a, all_terminated)
    sb = gang.wait_for(b, all_terminated)

    assert states(sb)["main"]["terminated"]["exitCode"] == 3
    term = states(sa)["main"]["terminated"]
    assert term["exitCode"] != 0
    assert "pod fail-1 failed (exit code 3)" in term["message"], term
    assert gang.logs(a, "main").text == "up\n"


def test_a_member_deleted_while_its_group_waits_leaves_it(gang: Plugin) -> None:
    a = member("gone", "gone-0", 2, "print(1)")
    gang.create_ok(podgen.retrieved(a))

    r = gang.delete(a)

    assert r.status_code == 200 and "left group gone" in r.text
    assert gang.status([a]).json() == []  # no longer known: not a member any more


@pytest.mark.parametrize("form", ["allocation", "hetjob"])
def test_a_group_runs_as_one_job_in_every_mode(
    plugin: Plugin, cluster: dict[str, str], form: str
) -> None:
    """local, ssh (login node) and rest (slurmrestd, which takes a heterogeneous job as a
    list of job descriptions): the group's script and its steps, in both forms."""
    group = f"{plugin.mode}-{form}"
    a = member(group, f"modes-{group}-0", 2, REPORT)
    b = member(group, f"modes-{group}-1", 2, REPORT)
    if form == "hetjob":
        b["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "2", "memory": "2Gi"}}
    assert plugin.create_ok(podgen.retrieved(a)) == ""
    job = plugin.create_ok(podgen.retrieved(b))

    # Slurm's own view: a heterogeneous job is components job+0, job+1 of the member's sizes.
    shown = slurm(cluster, "scontrol", "show", "job", job)
    if form == "hetjob":
        assert f"HetJobId={job} HetJobOffset=1" in shown, shown
        assert "CPUs/Task=2 " in shown and "MinMemoryNode=2G" in shown, shown
    else:
        assert "HetJobId=" not in shown and "NumNodes=2" in shown, shown
    for pod, rank in ((a, 0), (b, 1)):
        status = plugin.wait_for(pod, all_terminated)
        assert status["JID"] == job
        assert states(status)["main"]["terminated"]["exitCode"] == 0
        assert f"rank {rank} of 2" in plugin.logs(pod, "main").text


def test_members_asking_different_resources_become_one_heterogeneous_job(gang: Plugin) -> None:
    a = member("het", "het-0", 2, REPORT)
    b = member("het", "het-1", 2, REPORT)
    b["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "2", "memory": "2Gi"}}
    gang.create_ok(podgen.retrieved(a))
    job = gang.create_ok(podgen.retrieved(b))

    sa = gang.wait_for(a, all_terminated)
    sb = gang.wait_for(b, all_terminated)

    assert sa["JID"] == sb["JID"] == job
    script = (gang.pod_dir(a) / "group" / "group.sh").read_text()
    assert "#SBATCH hetjob" in script
    log_a, log_b = gang.logs(a, "main").text, gang.logs(b, "main").text
    assert "rank 0 of 2 master het-0" in log_a and "rank 1 of 2 master het-0" in log_b
    nodes = {line for text in (log_a, log_b) for line in text.splitlines() if line[:5] == "node "}
    assert len(nodes) == 2, (log_a, log_b)
    for status in (sa, sb):
        assert states(status)["main"]["terminated"]["exitCode"] == 0


@pytest.fixture(scope="module", params=["local", "rest"])
def pulling(
    request: pytest.FixtureRequest,
    cluster: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Plugin, Path]]:
    """A plugin pulling registry images on the submit host (the stand-in Apptainer of
    test_image_pulls.py), locally or through slurmrestd, and its image cache."""
    mode = request.param
    node = request.getfixturevalue("login_node") if mode == "rest" else None
    base = user_dir(node.user if node is not None else "root", "group-pulls")
    cache = base / "cache"
    stand_in = base / "apptainer"
    stand_in.write_text(APPTAINER)
    stand_in.chmod(0o755)
    config: dict[str, Any] = {
        "runtime": "apptainer",
        "runtime_path": str(stand_in),
        "images": {},
        "image_cache_dir": str(cache),
        "status_refresh_seconds": 0.5,
    }
    workdir = tmp_path_factory.mktemp(f"group-pulls-{mode}")
    if node is not None:
        cache.mkdir()
        shutil.chown(cache, node.user, node.user)
        server = request.getfixturevalue("rest_server")
        p = rest_plugin(workdir, cluster, server, node, **config)
    else:
        p = Plugin(workdir, cluster, **config)
    p.start()
    try:
        yield p, cache
    finally:
        p.stop()


@pytest.mark.parametrize("form", ["allocation", "hetjob"])
def test_a_groups_job_is_held_until_every_members_image_is_pulled(
    pulling: tuple[Plugin, Path], form: str
) -> None:
    plugin, cache = pulling
    images = (f"docker.io/library/busybox:{form}", f"docker.io/library/alpine:{form}")
    pods = []
    for i, image in enumerate(images):
        pod = member(f"pulled-{form}", f"pulled-{form}-{i}", 2, "")
        pod["spec"]["containers"][0].update(image=image, command=["sh", "-c", "echo hello"])
        pods.append(pod)
    if form == "hetjob":  # held and released as one job through slurmrestd's list form too
        pods[1]["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "2"}}
    assert plugin.create_ok(podgen.retrieved(pods[0])) == ""
    job = plugin.create_ok(podgen.retrieved(pods[1]))

    script = (plugin.pod_dir(pods[0]) / "group" / "group.sh").read_text()
    assert "#SBATCH --hold" in script
    assert ("#SBATCH hetjob" in script) == (form == "hetjob")
    for pod, image in zip(pods, images, strict=True):
        status = plugin.wait_for(pod, all_terminated, timeout=120)
        assert status["JID"] == job
        assert states(status)["main"]["terminated"]["exitCode"] == 0
        assert plugin.logs(pod, "main").text == f"image: SIF of docker://{image}\nhello\n"
    # Each pulled once, on the submit host: the job started only once both were in the cache
    # (released early, it would have pulled the missing one itself, on its node).
    pulled = (cache / "pulls.log").read_text().splitlines()
    assert sorted(p for p in pulled if form in p) == sorted(f"docker://{i}" for i in images)

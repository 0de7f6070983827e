"""What interLink 0.6.2+ deployments and its conformance suite (vk-test-set) need, on the real
Slurm: the suite's own sbatch flags, where a pod runs, logs without a container name, the ping,
and a delete that Slurm cannot hear at first."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from tests import podgen
from tests.integration.conftest import (
    GPUS_PER_NODE,
    Plugin,
    all_terminated,
    nodes,
    slurm,
    squeue,
)
from tests.integration.test_crash_outage import (  # noqa: F401 (a fixture)
    cancel,
    jobs_by_comment,
    slurmctld_stopper,
)

# The annotation vk-test-set puts on every pod it creates.
SUITE_FLAGS = {"slurm-job.vk.io/flags": "--job-name=test-pod-cfg -t 2800"}


def test_the_suites_flags_name_the_job_and_set_its_time(plugin: Plugin) -> None:
    pod = podgen.pod(
        "suite-flags", [podgen.container("main", "print('ok')")], annotations=SUITE_FLAGS
    )
    job_id = plugin.create_ok(podgen.retrieved(pod))
    name, limit, comment = (
        slurm(plugin.cluster, "squeue", "-h", "-a", "--states=all", "-j", job_id, "-o", "%j|%l|%k")
        .strip()
        .split("|")
    )
    assert name == "test-pod-cfg"
    assert limit == "1-22:40:00"  # 2800 minutes
    assert comment == f"interlink-slurm:{pod['metadata']['uid']}"
    status = plugin.wait_for(pod, all_terminated)
    assert status["containers"][0]["state"]["terminated"]["exitCode"] == 0


def test_pods_naming_their_jobs_alike_are_still_submitted_once_after_a_crash(
    cluster: dict[str, str], tmp_path: Path
) -> None:
    # Held, so the jobs stay in the queue to be counted.
    plugin = Plugin(tmp_path, cluster, sbatch_extra=["--hold"])
    plugin.start()
    pods = [
        podgen.pod(
            f"same-name-{i}", [podgen.container("main", "print(1)")], annotations=SUITE_FLAGS
        )
        for i in range(3)
    ]
    job_ids: list[str] = []
    try:
        job_ids = [plugin.create_ok(podgen.retrieved(p)) for p in pods]
        plugin.stop(signal.SIGKILL)
        # A crash between sbatch and recording its answer leaves the rows in flight.
        with sqlite3.connect(plugin.data_root / "state.db") as db:
            db.execute("UPDATE pods SET job_id = NULL")
        plugin.start()
        for p, job_id in zip(pods, job_ids, strict=True):
            assert plugin.create_ok(podgen.retrieved(p)) == job_id
        comments = jobs_by_comment(cluster)
        for p in pods:
            assert comments[f"interlink-slurm:{p['metadata']['uid']}"] == 1
        for job_id in job_ids:
            assert "test-pod-cfg" in slurm(cluster, "squeue", "-h", "-j", job_id, "-o", "%j")
    finally:
        plugin.stop()
        cancel(cluster, job_ids)


def test_status_names_the_node_and_logs_need_no_container_name(plugin: Plugin) -> None:
    pod = podgen.pod("where", [podgen.container("main", "print('here')")])
    plugin.create_ok(podgen.retrieved(pod))
    status = plugin.wait_for(pod, all_terminated)
    node = status["NodeName"]
    assert node in nodes(plugin.cluster)
    assert f"Slurm node {node}" in status["containers"][0]["state"]["terminated"]["message"]
    # interLink passes an empty ContainerName on; a one-container pod means its container.
    r = plugin.logs(pod, "")
    assert r.status_code == 200, r.text
    assert r.text == "here\n"


@pytest.mark.alone  # every node drained
def test_ping_leaves_taints_alone_and_never_reports_an_empty_node(
    cluster: dict[str, str], tmp_path: Path
) -> None:
    plugin = Plugin(tmp_path, cluster)
    plugin.start()
    # Every node: with one left, the plugin still has somewhere to run pods.
    node = ",".join(nodes(cluster))
    try:
        answer = plugin.status([]).json()
        assert "taints" not in answer
        capacity = answer["resources"]
        assert int(capacity["cpu"]) > 0
        slurm(cluster, "scontrol", "update", f"NodeName={node}", "State=DRAIN", "Reason=test")
        r = plugin.status([])
        assert r.status_code == 503
        assert "no Slurm node is usable" in r.text
        assert f"cpu {capacity['cpu']}, memory {capacity['memory']}" in r.text
    finally:
        slurm(cluster, "scontrol", "update", f"NodeName={node}", "State=RESUME")
        plugin.stop()


def test_a_delete_slurm_cannot_hear_is_carried_out_when_it_can(
    cluster: dict[str, str],
    tmp_path: Path,
    slurmctld_stopper: tuple[Any, Any],  # noqa: F811 (the fixture imported above)
) -> None:
    stop, start = slurmctld_stopper
    plugin = Plugin(tmp_path, cluster)
    plugin.start()
    pod = podgen.pod(
        "deleted-in-outage", [podgen.container("main", "import time; time.sleep(600)")]
    )
    try:
        job_id = plugin.create_ok(podgen.retrieved(pod))
        plugin.wait_for(pod, lambda s: "running" in s["containers"][0]["state"])
        stop()
        try:
            r = plugin.delete(pod)
            assert r.status_code == 200, r.text
            assert "will be cancelled as soon as Slurm answers" in r.text
            plugin.restart()  # the intent is on disk, not only in memory
        finally:
            start()
        deadline = time.monotonic() + 120
        while squeue(cluster, job_id) not in ("", "CANCELLED"):
            assert time.monotonic() < deadline, squeue(cluster, job_id)
            time.sleep(0.5)
    finally:
        plugin.stop()


def test_a_mapped_accelerator_gets_its_gres_on_slurm_and_in_the_ping(
    cluster: dict[str, str], tmp_path: Path
) -> None:
    # The local nodes' GPUs stand for AMD ones: what matters is the name → gres map.
    plugin = Plugin(tmp_path, cluster, accelerators={"amd.com/gpu": "gpu:a100"})
    plugin.start()
    try:
        ping = plugin.status([]).json()
        assert ping["resources"]["accelerators"] == [
            {"resourceType": "amd.com/gpu", "available": str(GPUS_PER_NODE * len(nodes(cluster)))}
        ]
        pod = podgen.pod(
            "amd",
            [
                podgen.container(
                    "main",
                    "import os; print(os.environ['SLURM_JOB_GPUS'])",
                    resources={"limits": {"amd.com/gpu": "2"}},
                )
            ],
        )
        job_id = plugin.create_ok(podgen.retrieved(pod))
        gres = slurm(cluster, "squeue", "-h", "-a", "--states=all", "-j", job_id, "-o", "%b")
        assert "gpu:a100:2" in gres
        status = plugin.wait_for(pod, all_terminated)
        assert status["containers"][0]["state"]["terminated"]["exitCode"] == 0
        assert len(plugin.logs(pod, "main").text.strip().split(",")) == 2
        r = plugin.create(
            podgen.retrieved(
                podgen.pod(
                    "nvidia",
                    [podgen.container("main", "", resources={"limits": {"nvidia.com/gpu": "1"}})],
                )
            )
        )
        assert r.status_code == 422
        assert "nvidia.com/gpu" in r.text
    finally:
        plugin.stop()

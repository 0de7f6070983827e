"""Placement on the real Slurm: two partitions of the local cluster, and a second local cluster
(its own slurmctld, slurmd, munged, ports and data root) for the two-cluster case.

Partitions are filled with real running jobs; where a pod went is read back from Slurm itself
(squeue's partition of the job), and the pods run to the end on Charliecloud.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import podgen
from tests.integration.conftest import (
    CLUSTER,
    CPUS_PER_NODE,
    EXE,
    GPUS_PER_NODE,
    LoginNode,
    Plugin,
    all_terminated,
    cluster_env,
    free_port,
    nodes,
    on_every_node,
    slurm,
    user_dir,
)

BOOSTER = {"partition": "boost_usr_prod", "gpu_type": "a100", "gpus_per_node": 4}
DCGP = {"partition": "dcgp_usr_prod", "gpus_per_node": 0}
FILL_MINUTES = 10
# Its tests fill nodes, change a partition's limits and start a second cluster.
pytestmark = pytest.mark.alone


def job_partition(cluster: dict[str, str], job_id: str) -> str:
    return slurm(cluster, "squeue", "-h", "-a", "--states=all", "-j", job_id, "-o", "%P").strip()


def cpu_pod(name: str, **more: Any) -> dict[str, Any]:
    c = podgen.container("main", "print('ran')", resources={"limits": {"cpu": "1"}})
    return podgen.retrieved(podgen.pod(name, [c], **more))


def gpu_pod(name: str, gpus: int = 1, **more: Any) -> dict[str, Any]:
    script = "import os; print('gpus', os.environ.get('CUDA_VISIBLE_DEVICES'))"
    limits = {"cpu": "1", "nvidia.com/gpu": str(gpus)}
    c = podgen.container("main", script, resources={"limits": limits})
    return podgen.retrieved(podgen.pod(name, [c], **more))


@contextlib.contextmanager
def filled(cluster: dict[str, str], *sbatch: str) -> Iterator[str]:
    """A running job holding what ``sbatch`` asks for on every node, for FILL_MINUTES (its time
    limit, which is what Slurm's estimates count on), cancelled on the way out."""
    job_id = slurm(
        cluster,
        "sbatch",
        "--parsable",
        *on_every_node(cluster),
        f"--time={FILL_MINUTES}",
        "--output=/dev/null",
        *sbatch,
        "--wrap=sleep 900",
    ).strip()
    try:
        deadline = time.monotonic() + 30
        while slurm(cluster, "squeue", "-h", "-j", job_id, "-o", "%T").strip() != "RUNNING":
            assert time.monotonic() < deadline, f"filler job {job_id} did not start"
            time.sleep(0.2)
        yield job_id
    finally:
        slurm(cluster, "scancel", job_id)


@contextlib.contextmanager
def boost_limited_to(cluster: dict[str, str], cpus: int) -> Iterator[None]:
    """The GPU partition may use only ``cpus`` CPUs of each (shared) node, so that it can be
    full while the CPU partition is not (see ``boost_full``)."""
    slurm(cluster, "scontrol", "update", "PartitionName=boost_usr_prod", f"MaxCPUsPerNode={cpus}")
    try:
        yield
    finally:
        slurm(
            cluster,
            "scontrol",
            "update",
            "PartitionName=boost_usr_prod",
            "MaxCPUsPerNode=UNLIMITED",
        )


def placed(tmp_path: Path, cluster: dict[str, str], **config: Any) -> Plugin:
    p = Plugin(tmp_path, cluster, **config)
    p.start()
    return p


def waiting_message(status: dict[str, Any]) -> str:
    return str(status["containers"][0]["state"].get("waiting", {}).get("message", ""))


def test_gpu_pods_go_to_the_gpu_partition_and_cpu_pods_to_the_cpu_one(
    tmp_path: Path, cluster: dict[str, str]
) -> None:
    p = placed(tmp_path, cluster, targets={"booster": {**BOOSTER, "match": "gpu"}, "dcgp": DCGP})
    try:
        gpu, cpu = gpu_pod("gpu-one", gpus=2), cpu_pod("cpu-one")
        gpu_job, cpu_job = p.create_ok(gpu), p.create_ok(cpu)
        assert job_partition(cluster, gpu_job) == "boost_usr_prod"
        assert job_partition(cluster, cpu_job) == "dcgp_usr_prod"
        for pod in (gpu, cpu):
            p.wait_for(pod["pod"], all_terminated)
        assert p.logs(gpu["pod"], "main").text == "gpus 0,1\n"
        assert p.logs(cpu["pod"], "main").text == "ran\n"
        metrics = p.client.get("/metrics").text
        assert 'interlink_slurm_placements_total{basis="only",target="booster"} 1.0' in metrics
        assert 'interlink_slurm_placements_total{basis="only",target="dcgp"} 1.0' in metrics
    finally:
        p.stop()


def test_a_pod_goes_where_slurm_expects_it_to_start_soonest(
    tmp_path: Path, cluster: dict[str, str]
) -> None:
    targets = {"booster": BOOSTER, "booster-b": {**BOOSTER, "penalty_seconds": 60}, "dcgp": DCGP}
    p = placed(tmp_path, cluster, targets=targets)
    try:
        # Nothing waits anywhere: equal estimates, the configured order.
        first = cpu_pod("soon-idle")
        assert job_partition(cluster, p.create_ok(first)) == "boost_usr_prod"
        p.wait_for(first["pod"], all_terminated)
        with boost_limited_to(cluster, 2), filled(cluster, "--partition=boost_usr_prod", "-c2"):
            moved = cpu_pod("soon-moved")
            # render shows what create then does, with Slurm's estimates.
            pod_file = tmp_path / "moved.json"
            pod_file.write_text(json.dumps(moved))
            rendered = subprocess.run(
                [EXE, "render", str(pod_file), "--config", str(p.config_path)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            lines = rendered.split("# Placement:\n", 1)[1]
            assert "* target dcgp (partition dcgp_usr_prod): expected start" in lines
            assert re.search(r"using 1 processors on nodes n\d+ in partition dcgp_usr_prod", lines)
            booster = next(line for line in lines.splitlines() if "- target booster " in line)
            assert f"(after {FILL_MINUTES - 1} min)" in booster or (
                f"(after {FILL_MINUTES} min)" in booster
            )
            assert job_partition(cluster, p.create_ok(moved)) == "dcgp_usr_prod"
            p.wait_for(moved["pod"], all_terminated)
            assert p.logs(moved["pod"], "main").text == "ran\n"

            # Kept to the two full targets, a pod waits: its status says where and until when.
            kept = cpu_pod(
                "soon-kept", annotations={"interlink-slurm/targets": "booster-b,booster"}
            )
            job = p.create_ok(kept)
            assert job_partition(cluster, job) == "boost_usr_prod"
            status = p.wait_for(kept["pod"], lambda s: "placed on" in waiting_message(s))
            message = waiting_message(status)
            assert "placed on target booster (partition boost_usr_prod), where Slurm " in message
            assert "expected it to start soonest" in message
            assert f"(after {FILL_MINUTES - 1} min)" in message or (
                f"(after {FILL_MINUTES} min)" in message
            )
            assert p.delete(kept["pod"]).status_code == 200
        metrics = p.client.get("/metrics").text
        assert 'interlink_slurm_placements_total{basis="estimate",target="dcgp"} 1.0' in metrics
        assert (
            'interlink_slurm_placement_predicted_wait_seconds_count{target="booster"} 2.0'
            in metrics
        )
        # The idle pod and the moved one started as predicted: right away.
        assert 'interlink_slurm_placement_actual_wait_seconds_count{target="dcgp"} 1.0' in metrics
    finally:
        p.stop()


def test_pods_that_start_equally_soon_are_spread_while_they_wait(
    tmp_path: Path, cluster: dict[str, str]
) -> None:
    # Held jobs wait without using anything: Slurm expects every new pod to start now on both
    # targets, so only the plugin's own waiting pods tell the targets apart.
    p = placed(
        tmp_path, cluster, targets={"booster": BOOSTER, "dcgp": DCGP}, sbatch_extra=["--hold"]
    )
    pods = [cpu_pod(f"spread-{i}") for i in range(4)]
    try:
        where = [job_partition(cluster, p.create_ok(pod)) for pod in pods]
        assert where == ["boost_usr_prod", "dcgp_usr_prod"] * 2
    finally:
        for pod in pods:
            p.delete(pod["pod"])
        p.stop()


def test_without_estimates_the_configured_order_decides(
    tmp_path: Path, cluster: dict[str, str]
) -> None:
    dead = tmp_path / "dead-slurm.conf"
    text = Path(cluster["SLURM_CONF"]).read_text()
    port = text.split("SlurmctldPort=", 1)[1].split()[0]
    dead.write_text(text.replace(f"SlurmctldPort={port}", f"SlurmctldPort={free_port()}"))
    p = placed(
        tmp_path,
        cluster,
        clusters={"dead": {"slurm_conf": str(dead)}},
        targets={
            "gone": {**DCGP, "cluster": "dead"},
            "booster": BOOSTER,
            "dcgp": DCGP,
        },
        placement_estimate_seconds=2,
    )
    try:
        with boost_limited_to(cluster, 2), filled(cluster, "--partition=boost_usr_prod", "-c2"):
            # The dead cluster, first in the order, gives no estimate: it comes after the
            # targets that gave one, of which dcgp starts the pod first (booster is full).
            one = cpu_pod("order-one")
            assert job_partition(cluster, p.create_ok(one)) == "dcgp_usr_prod"
            p.wait_for(one["pod"], all_terminated)
            # No estimate at all (a cap no Slurm answers within): the configured order.
            p.stop()
            p.settings["placement_estimate_seconds"] = 0.001
            p.settings["targets"] = {"booster": BOOSTER, "dcgp": DCGP}
            p.config_path.write_text(yaml.safe_dump(p.settings))
            p.start()
            two = cpu_pod("order-two")
            job = p.create_ok(two)
            assert job_partition(cluster, job) == "boost_usr_prod"  # full, but first
            status = p.wait_for(two["pod"], lambda s: "placed on" in waiting_message(s))
            assert "in the configured order (no start estimate)" in (waiting_message(status))
            assert p.delete(two["pod"]).status_code == 200
    finally:
        p.stop()


def test_a_pod_no_target_can_run_is_refused_with_each_reason(
    tmp_path: Path, cluster: dict[str, str]
) -> None:
    p = placed(tmp_path, cluster, targets={"booster": BOOSTER, "dcgp": DCGP})
    try:
        r = p.create(gpu_pod("too-big", gpus=8))
        assert r.status_code == 422, r.text
        text = r.text
        assert "no target here can run this pod" in text
        assert (
            "target booster: spec.containers.resources.limits.nvidia.com/gpu: 8 GPUs on one node"
            in text
        )
        assert "target dcgp: spec.containers.resources.limits.nvidia.com/gpu" in text
        assert slurm(cluster, "squeue", "-h", "-n", "too-big") == ""
    finally:
        p.stop()


# --- two clusters -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def second_cluster() -> Iterator[dict[str, str]]:
    """Another Slurm on this machine, of one node: own directory, munged, name, job ids and
    ports (the ones after the first cluster's nodes': a test machine's clusters each keep to a
    range of ports)."""
    first = cluster_env()  # the first one (and the shared image) exists
    port = int(first["ILS_SLURMD_PORT"]) + int(first["ILS_NODES"])
    env = {
        **os.environ,
        # munged wants every directory above its socket searchable by all.
        "ILS_CLUSTER_DIR": str(user_dir("root", "cluster-far")),
        "ILS_SLURMCTLD_PORT": str(port),
        "ILS_SLURMD_PORT": str(port + 1),
        "ILS_NODES": "1",
        "ILS_CLUSTER_NAME": "ilsfar",
        "ILS_FIRST_JOB_ID": "5000000",
    }
    subprocess.run([str(CLUSTER), "up"], check=True, stdout=sys.stderr, env=env)
    try:
        out = subprocess.run(
            [str(CLUSTER), "env"], check=True, capture_output=True, text=True, env=env
        ).stdout
        values = {}
        for line in out.splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            values[key] = value.strip("'\"")
        yield values
    finally:
        subprocess.run([str(CLUSTER), "down"], check=False, stdout=sys.stderr, env=env)


@pytest.mark.parametrize("far_transport", ["local", "ssh"])
def test_a_pod_goes_to_the_other_cluster_when_this_ones_gpus_are_busy(
    tmp_path: Path,
    cluster: dict[str, str],
    second_cluster: dict[str, str],
    far_transport: str,
    request: pytest.FixtureRequest,
) -> None:
    far: dict[str, Any] = {"slurm_conf": second_cluster["SLURM_CONF"]}
    user = "root"
    if far_transport == "ssh":
        # The other centre is reached over SSH, as its own user, with its own data root.
        node: LoginNode = request.getfixturevalue("login_node")
        user = node.user
        far |= {"transport": "ssh", "ssh": node.ssh_settings()}
    far_root = user_dir(user, "far-data")
    far["data_root"] = str(far_root)
    p = placed(
        tmp_path,
        cluster,
        clusters={"far": far},
        targets={"here": BOOSTER, "there": {**BOOSTER, "cluster": "far"}},
    )
    try:
        # doctor checks each cluster with its own transport, and each target where it is.
        doctor = p.doctor(timeout=60)
        assert doctor.returncode == 0, doctor.stdout
        assert f"doctor: cluster far: transport {far_transport}" in doctor.stdout
        assert "targets.there.partition boost_usr_prod: 1 node(s)" in doctor.stdout
        assert f"targets.here.partition boost_usr_prod: {len(nodes(cluster))} node(s)" in (
            doctor.stdout
        )
        assert f"targets.here.gpu_type gpu:a100 x{GPUS_PER_NODE * len(nodes(cluster))}" in (
            doctor.stdout
        )
        # The node's capacity is both clusters'.
        ping = p.status([]).json()
        all_nodes = len(nodes(cluster)) + 1
        assert ping["resources"]["cpu"] == str(CPUS_PER_NODE * all_nodes)
        assert ping["resources"]["accelerators"] == [
            {"resourceType": "nvidia.com/gpu", "available": str(GPUS_PER_NODE * all_nodes)}
        ]
        with filled(cluster, "--partition=boost_usr_prod", "--gres=gpu:a100:4"):
            pod = gpu_pod("far-away", gpus=2)
            job = p.create_ok(pod)
            assert int(job) >= 5000000  # the far cluster's ids: never one of this cluster's
            assert job_partition(second_cluster, job) == "boost_usr_prod"
            owner = slurm(second_cluster, "squeue", "-h", "-a", "-j", job, "-o", "%u").strip()
            assert owner in (user, "")  # "" once it has left the queue
            p.wait_for(pod["pod"], all_terminated)
            assert p.logs(pod["pod"], "main").text == "gpus 0,1\n"
            meta = pod["pod"]["metadata"]
            assert (far_root / meta["namespace"] / f"{meta['name']}-{meta['uid']}").is_dir()
            assert p.delete(pod["pod"]).status_code == 200
        # With this cluster's GPUs free again, the next pod stays here.
        near = gpu_pod("near-by", gpus=1)
        job = p.create_ok(near)
        assert job_partition(cluster, job) == "boost_usr_prod"
        p.wait_for(near["pod"], all_terminated)
        assert p.logs(near["pod"], "main").text == "gpus 0\n"
    finally:
        p.stop()

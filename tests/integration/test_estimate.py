"""Start estimates on the real local Slurm (nodes n1, n2...: 16 CPUs, 4 a100s each):
an idle partition starts now, a partition whose GPUs are taken starts when they come free, a job
Slurm could never run is refused in its words, and a dead controller is unavailable."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from interlink_slurm.errors import SchedulerUnavailable, SubmitRejected
from interlink_slurm.slurm.cli import CliScheduler
from interlink_slurm.slurm.remote_settings import RestSettings, SSHSettings
from interlink_slurm.slurm.rest import RestScheduler
from interlink_slurm.slurm.scheduler import Estimate, Scheduler
from interlink_slurm.slurm.ssh import SSHTransport
from interlink_slurm.slurm.transport import LocalTransport
from tests.integration.conftest import (
    REST_VERSION,
    LoginNode,
    RestServer,
    free_port,
    on_every_node,
    slurm,
    squeue,
)

# It fills every node to see Slurm's start estimates.
pytestmark = [pytest.mark.slurm, pytest.mark.alone]

GPU_JOB = ["--partition=boost_usr_prod", "--nodes=1", "--ntasks=1", "--gres=gpu:a100:1"]
CPU_JOB = ["--partition=dcgp_usr_prod", "--nodes=1", "--ntasks=1", "--cpus-per-task=2"]
# What a pod's job carries besides: the pod directory does not exist yet, and must not matter.
POD_OPTIONS = [
    "--job-name=estimate",
    "--comment=interlink-slurm:estimate",
    "--output=/nonexistent/pod/job.out",
    "--open-mode=append",
    "--chdir=/nonexistent/pod",
    "--mem=1024M",
    "--time=0-01:00:00",
    "--hold",
]


def estimate(scheduler: Scheduler, directives: list[str], timeout: float = 30) -> Estimate:
    return asyncio.run(scheduler.estimate(directives, timeout))


@pytest.fixture
def scheduler(cluster: dict[str, str]) -> CliScheduler:
    return CliScheduler(LocalTransport({**os.environ, "SLURM_CONF": cluster["SLURM_CONF"]}))


@pytest.fixture
def gpus_taken(cluster: dict[str, str]) -> Iterator[str]:
    """A running job holding all four GPUs of every node for 10 minutes."""
    job_id = slurm(
        cluster,
        "sbatch",
        "--parsable",
        "--partition=boost_usr_prod",
        "--gres=gpu:a100:4",
        *on_every_node(cluster),
        "--time=10",
        "--output=/dev/null",
        "--job-name=estimate-filler",
        "--wrap=sleep 300",
    ).strip()
    try:
        deadline = time.monotonic() + 60
        while squeue(cluster, job_id) != "RUNNING":
            assert time.monotonic() < deadline, f"the filler job {job_id} did not start"
            time.sleep(0.3)
        yield job_id
    finally:
        slurm(cluster, "scancel", job_id)


def test_an_idle_partition_starts_now_whatever_the_pod_directory(scheduler: CliScheduler) -> None:
    answer = estimate(scheduler, [*POD_OPTIONS, *GPU_JOB])
    assert abs(answer.start - time.time()) < 10
    assert re.fullmatch(
        r"using \d+ processors on nodes n\d+ in partition boost_usr_prod", answer.detail
    )


def test_taken_gpus_start_when_their_job_ends_while_cpus_start_now(
    scheduler: CliScheduler, gpus_taken: str
) -> None:
    gpu = estimate(scheduler, [*POD_OPTIONS, *GPU_JOB])
    cpu = estimate(scheduler, [*POD_OPTIONS, *CPU_JOB])
    now = time.time()
    assert 5 * 60 < gpu.start - now < 15 * 60, gpu
    assert abs(cpu.start - now) < 10, cpu
    assert cpu.detail.endswith("in partition dcgp_usr_prod")


@pytest.mark.parametrize(
    ("impossible", "said"),
    [
        (["--partition=boost_usr_prod", "--gres=gpu:a100:8"], "Requested node configuration"),
        (["--partition=nosuch"], "Invalid partition name specified"),
        (["--gres=tpu:1"], "Invalid generic resource"),
    ],
)
def test_a_job_slurm_could_never_run_is_rejected_in_its_words(
    scheduler: CliScheduler, impossible: list[str], said: str
) -> None:
    with pytest.raises(SubmitRejected, match=said):
        estimate(scheduler, [*POD_OPTIONS, *impossible])


@pytest.fixture
def dead_controller(cluster: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The cluster's slurm.conf, pointing at a port where no slurmctld listens."""
    conf = Path(cluster["SLURM_CONF"]).read_text()
    dead = tmp_path / "slurm.conf"
    dead.write_text(re.sub(r"(?m)^SlurmctldPort=.*$", f"SlurmctldPort={free_port()}", conf))
    return {**os.environ, "SLURM_CONF": str(dead)}


def test_a_controller_out_of_reach_is_unavailable(dead_controller: dict[str, str]) -> None:
    scheduler = CliScheduler(LocalTransport(dead_controller))
    with pytest.raises(SchedulerUnavailable, match="Unable to contact slurm controller"):
        estimate(scheduler, CPU_JOB)


def test_no_answer_within_the_timeout_is_unavailable_at_the_timeout(
    dead_controller: dict[str, str],
) -> None:
    scheduler = CliScheduler(LocalTransport(dead_controller))
    started = time.monotonic()
    with pytest.raises(SchedulerUnavailable, match=r"within 1 s"):
        estimate(scheduler, CPU_JOB, timeout=1)
    assert time.monotonic() - started < 3


def test_the_rest_scheduler_estimates_with_sbatch_on_the_login_node(
    cluster: dict[str, str], rest_server: RestServer, login_node: LoginNode
) -> None:
    transport = SSHTransport(
        SSHSettings.model_validate(login_node.ssh_settings()),
        env={"SLURM_CONF": cluster["SLURM_CONF"]},
    )
    rest = RestSettings(url=rest_server.url, api_version=REST_VERSION)
    try:
        answer = estimate(RestScheduler(rest, transport), [*POD_OPTIONS, *CPU_JOB])
        assert abs(answer.start - time.time()) < 10
        with pytest.raises(SchedulerUnavailable, match="estimates run Slurm's sbatch") as caught:
            estimate(RestScheduler(rest, transport, sbatch="/opt/nowhere/sbatch"), CPU_JOB)
        assert "/opt/nowhere/sbatch could not be run there" in str(caught.value)
    finally:
        transport.close()

"""What differs between the three ways of reaching Slurm (see conftest.py): who the jobs run as,
who submits them, and that `interlink-slurm doctor` finds each one in working order."""

from __future__ import annotations

import os
import pwd

import pytest

from tests import podgen
from tests.integration.conftest import Plugin, all_terminated, nodes, slurm

pytestmark = pytest.mark.slurm
JOB_USER = "ilsuser"


def test_jobs_run_as_the_account_of_the_mode_and_are_submitted_its_way(
    plugin: Plugin, cluster: dict[str, str]
) -> None:
    pod = podgen.pod("whoami", [podgen.container("main", "import os; print(os.getuid())")])
    job_id = plugin.create_ok(podgen.retrieved(pod))
    plugin.wait_for(pod, all_terminated)

    user = "root" if plugin.mode == "local" else JOB_USER
    uid = pwd.getpwnam(user).pw_uid
    assert plugin.logs(pod, "main").text.strip() == str(uid)
    assert os.stat(plugin.pod_dir(pod) / "job.sh").st_uid == uid  # written as that account
    job = slurm(cluster, "scontrol", "show", "job", job_id)
    assert f"UserId={user}(" in job
    # sbatch records the script's path; slurmrestd gets the script's content.
    command = "(null)" if plugin.mode == "rest" else str(plugin.pod_dir(pod) / "job.sh")
    assert f"Command={command}\n" in job


def test_doctor_finds_everything_in_place(plugin: Plugin) -> None:
    r = plugin.doctor(timeout=120)

    assert r.returncode == 0, r.stdout + r.stderr
    transport = "local" if plugin.mode == "local" else "ssh"
    scheduler = "rest" if plugin.mode == "rest" else "cli"
    assert f"transport {transport}" in r.stdout and f"scheduler {scheduler}" in r.stdout
    for check in ("transport", "scheduler", "data root", "runtime", "partition", "gpu_type"):
        assert f"ok    {check}" in r.stdout, r.stdout
    # Multi-node jobs are asked of Slurm the way each mode submits (sbatch --test-only).
    n = len(nodes(plugin.cluster))
    for partition in ("dcgp_usr_prod", "boost_usr_prod"):
        line = (
            f"ok    multi-node      {partition}: jobs of up to {n} nodes "
            f"(sbatch --test-only --nodes={n} accepted)"
            if n > 1
            else f"warn  multi-node      {partition}: 1 usable node"
        )
        assert line in r.stdout, r.stdout
    assert "all checks passed" in r.stdout

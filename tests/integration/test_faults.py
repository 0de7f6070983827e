"""The way to Slurm breaking: the login node going away (and coming back), the connection dropping
just after sbatch, a host key that does not match, slurmrestd refusing a job or not running.
Each gives a clear answer in bounded time, and nothing runs twice."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import podgen
from tests.integration.conftest import (
    LoginNode,
    Plugin,
    RestServer,
    all_terminated,
    any_running,
    rest_plugin,
    slurm,
    ssh_plugin,
    states,
    user_dir,
)

pytestmark = pytest.mark.slurm
SLURM_TOOLS = ("squeue", "scancel", "sinfo", "sacct", "scontrol")
# Submits, then kills the SSH session serving it before sbatch's answer can travel back: Slurm
# has the job, the plugin never hears of it. Once (while the flag file exists).
DROPPING_SBATCH = """#!/bin/bash
out=$(/usr/bin/sbatch "$@"); rc=$?
flag="$(dirname "$0")/drop-once"
if [ -e "$flag" ]; then
  rm -f "$flag"
  p=$PPID
  while [ "$p" -gt 1 ] && [ "$(cat /proc/$p/comm)" != sshd ]; do
    p=$(awk '{print $4}' /proc/$p/stat)
  done
  kill -9 "$p"
  exit 1  # nobody is listening any more
fi
echo "$out"
exit $rc
"""


def jobs_with_comment(cluster: dict[str, str], uid: str) -> list[str]:
    lines = slurm(cluster, "squeue", "-h", "-a", "--states=all", "-o", "%i|%k").splitlines()
    return [line.split("|")[0] for line in lines if line.endswith(f"|interlink-slurm:{uid}")]


def retry_create(plugin: Plugin, data: dict[str, Any], seconds: float = 15) -> str:
    """What interLink does after a 503: ask again."""
    deadline = time.monotonic() + seconds
    while True:
        r = plugin.create(data)
        if r.status_code == 200:
            return str(r.json()["PodJID"])
        assert r.status_code == 503 and time.monotonic() < deadline, r.text
        time.sleep(0.3)


def test_login_node_going_away_gives_503_then_recovers_without_a_duplicate_job(
    own_login_node: LoginNode, cluster: dict[str, str], tmp_path: Path
) -> None:
    plugin = ssh_plugin(tmp_path, cluster, own_login_node)
    plugin.start()
    try:
        across = podgen.pod(
            "across-outage",
            [
                podgen.container(
                    "main", "import time\nprint('up', flush=True)\ntime.sleep(4)\nprint('done')"
                )
            ],
        )
        plugin.create_ok(podgen.retrieved(across))
        plugin.wait_for(across, any_running)

        own_login_node.stop()
        pod = podgen.pod("during-outage", [podgen.container("main", "print('after the outage')")])
        data = podgen.retrieved(pod)
        started = time.monotonic()
        r = plugin.create(data)
        took = time.monotonic() - started

        assert r.status_code == 503, r.text
        assert r.text.startswith(
            f"cannot reach the login node ilsuser@127.0.0.1:{own_login_node.port}: "
        ), r.text
        assert "connection refused" in r.text
        assert r.headers["Retry-After"]
        assert took < 5
        assert plugin.client.get("/readyz").status_code == 503
        assert plugin.status([across]).status_code in (200, 503)  # an answer, not a hang

        own_login_node.start()
        job_id = retry_create(plugin, data)

        status = plugin.wait_for(pod, all_terminated)
        assert states(status)["main"]["terminated"]["exitCode"] == 0
        assert plugin.logs(pod, "main").text == "after the outage\n"
        assert jobs_with_comment(cluster, pod["metadata"]["uid"]) == [job_id]
        assert plugin.create_ok(data) == job_id
        # The pod that ran through the outage ended normally, its log whole.
        plugin.wait_for(across, all_terminated)
        assert plugin.logs(across, "main").text == "up\ndone\n"
    finally:
        plugin.stop()


def test_connection_lost_after_sbatch_is_settled_by_the_job_comment_not_a_second_job(
    login_node: LoginNode, cluster: dict[str, str], tmp_path: Path
) -> None:
    bin_dir = user_dir(login_node.user, "bin")
    for tool in SLURM_TOOLS:
        (bin_dir / tool).symlink_to(f"/usr/bin/{tool}")
    (bin_dir / "sbatch").write_text(DROPPING_SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    (bin_dir / "drop-once").touch()
    (bin_dir / "drop-once").chmod(0o666)
    subprocess.run(["chown", "-R", login_node.user, str(bin_dir)], check=True)
    plugin = ssh_plugin(tmp_path, cluster, login_node, slurm_bin_dir=str(bin_dir))
    plugin.start()
    try:
        pod = podgen.pod("lost-answer", [podgen.container("main", "print('ran once')")])
        data = podgen.retrieved(pod)

        r = plugin.create(data)

        assert r.status_code == 503, r.text
        assert "the connection closed before" in r.text and "sbatch" in r.text, r.text
        assert not (bin_dir / "drop-once").exists()  # the job did reach Slurm
        (submitted,) = jobs_with_comment(cluster, pod["metadata"]["uid"])

        job_id = retry_create(plugin, data)

        assert job_id == submitted
        plugin.wait_for(pod, all_terminated)
        assert plugin.logs(pod, "main").text == "ran once\n"
        assert jobs_with_comment(cluster, pod["metadata"]["uid"]) == [submitted]
    finally:
        plugin.stop()


def test_a_host_key_that_does_not_match_is_refused_naming_known_hosts(
    login_node: LoginNode, cluster: dict[str, str], tmp_path: Path
) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "impostor")],
        check=True,
    )
    key_type, key = (tmp_path / "impostor.pub").read_text().split()[:2]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{login_node.port} {key_type} {key}\n")
    plugin = ssh_plugin(
        tmp_path, cluster, login_node, ssh=login_node.ssh_settings(known_hosts=str(known_hosts))
    )
    plugin.start()
    try:
        pod = podgen.pod("mitm", [podgen.container("main", "print(1)")])
        r = plugin.create(podgen.retrieved(pod))

        assert r.status_code == 503
        assert "does not match the one in known_hosts" in r.text and str(known_hosts) in r.text
        assert jobs_with_comment(cluster, pod["metadata"]["uid"]) == []

        doctor = plugin.doctor(timeout=60)
        assert doctor.returncode == 1
        assert "FAIL  transport" in doctor.stdout and "known_hosts" in doctor.stdout
    finally:
        plugin.stop()


def test_slurm_refusing_a_job_through_slurmrestd_answers_422_with_its_reason(
    rest_server: RestServer, login_node: LoginNode, cluster: dict[str, str], tmp_path: Path
) -> None:
    plugin = rest_plugin(tmp_path, cluster, rest_server, login_node, partition="nosuchpartition")
    plugin.start()
    try:
        pod = podgen.pod("bad-partition", [podgen.container("main", "print(1)")])

        r = plugin.create(podgen.retrieved(pod))

        assert r.status_code == 422
        assert r.text == "Slurm refused the job: Invalid partition name specified"
        assert not plugin.pod_dir(pod).exists()  # nothing half-made left behind
    finally:
        plugin.stop()


def test_slurmrestd_not_running_answers_503_and_doctor_says_what_to_start(
    login_node: LoginNode, cluster: dict[str, str], tmp_path: Path
) -> None:
    gone = RestServer(cluster, login_node.user, user_dir(login_node.user, "no-slurmrestd"))
    plugin = rest_plugin(tmp_path, cluster, gone, login_node)
    plugin.start()
    try:
        pod = podgen.pod("no-rest", [podgen.container("main", "print(1)")])
        started = time.monotonic()
        r = plugin.create(podgen.retrieved(pod))

        assert r.status_code == 503
        assert f"slurmrestd at {gone.url} is not reachable" in r.text
        assert time.monotonic() - started < 5
        assert plugin.client.get("/readyz").status_code == 503

        doctor = plugin.doctor(timeout=60)
        assert doctor.returncode == 1
        assert "FAIL  scheduler" in doctor.stdout
        assert f"fix: start slurmrestd at {gone.url} with -s openapi/v0.0.38" in doctor.stdout
    finally:
        plugin.stop()


def test_doctor_names_each_wrong_setting_with_a_fix(
    login_node: LoginNode, cluster: dict[str, str], tmp_path: Path
) -> None:
    plugin = ssh_plugin(
        tmp_path,
        cluster,
        login_node,
        partition="nosuchpartition",
        gpu_type="h100",
        runtime_path="/opt/charliecloud/bin/ch-run",
        data_root="/root/not-for-ilsuser/data",
    )

    r = plugin.doctor(timeout=60)

    assert r.returncode == 1
    out = r.stdout
    assert "ok    transport" in out and "ok    scheduler" in out
    assert "FAIL  data root       /root/not-for-ilsuser/data: Permission denied" in out
    assert "FAIL  runtime         /opt/charliecloud/bin/ch-run (charliecloud) is not found" in out
    assert "FAIL  partition       nosuchpartition: no usable node" in out
    assert "FAIL  gpu_type        no GRES gpu:h100 in partition boost_usr_prod" in out
    assert "(GPU types there: a100)" in out
    assert out.count("fix: ") == 4
    assert "4 problem(s) found" in out


def test_plain_http_client_sees_the_same_503_body_as_interlink(
    own_login_node: LoginNode, cluster: dict[str, str], tmp_path: Path
) -> None:
    """interLink shows the body of a failed /create as the pod's message: it must stand alone."""
    plugin = ssh_plugin(tmp_path, cluster, own_login_node)
    plugin.start()
    own_login_node.stop()
    try:
        pod = podgen.pod("message", [podgen.container("main", "print(1)")])
        r = httpx.post(f"{plugin.url}/create", json=podgen.retrieved(pod), timeout=30)
        assert r.status_code == 503
        assert r.headers["content-type"].startswith("text/plain")
        assert "\n" not in r.text.strip() and "Traceback" not in r.text
    finally:
        plugin.stop()

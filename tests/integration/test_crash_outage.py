"""Faults on the real Slurm: the service killed mid-burst, slurmctld down, the data root full.
Nothing is lost, nothing is submitted twice, and everything recovers by itself."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import podgen
from tests.integration.conftest import CLUSTER, Plugin

# slurmctld stopped, a 60-pod burst: nothing else may run meanwhile.
pytestmark = [pytest.mark.slurm, pytest.mark.alone]


def jobs_by_comment(cluster: dict[str, str]) -> Counter[str]:
    out = subprocess.run(
        ["squeue", "-h", "-a", "--states=all", "-o", "%k"],
        capture_output=True,
        text=True,
        env={**os.environ, "SLURM_CONF": cluster["SLURM_CONF"]},
        check=True,
    ).stdout
    return Counter(line.strip() for line in out.splitlines() if line.strip())


def cancel(cluster: dict[str, str], job_ids: list[str]) -> None:
    if job_ids:
        subprocess.run(
            ["scancel", *job_ids],
            check=False,
            env={**os.environ, "SLURM_CONF": cluster["SLURM_CONF"]},
        )


def test_kill_9_mid_burst_loses_no_pod_and_duplicates_no_job(
    cluster: dict[str, str], tmp_path: Path
) -> None:
    # Held jobs stay in squeue, so every submission can be counted after the crash.
    plugin = Plugin(tmp_path, cluster, sbatch_extra=["--hold"])
    plugin.start()
    pods = [podgen.pod(f"burst-{i}", [podgen.container("main", "print(1)")]) for i in range(60)]
    answered: dict[str, str] = {}
    lock = threading.Lock()

    def client(share: list[dict[str, Any]]) -> None:
        http = httpx.Client(base_url=plugin.url, timeout=30)
        for p in share:
            try:
                r = http.post("/create", content=podgen_json(p), headers=plugin.headers)
            except httpx.HTTPError:
                continue  # the service died under this request: no answer
            if r.status_code == 200:
                with lock:
                    answered[p["metadata"]["uid"]] = r.json()["PodJID"]

    threads = [threading.Thread(target=client, args=(pods[i::6],)) for i in range(6)]
    for t in threads:
        t.start()
    while len(answered) < 15:
        time.sleep(0.01)
    assert plugin.proc is not None
    plugin.proc.send_signal(signal.SIGKILL)  # mid-burst, no cleanup of any kind
    plugin.proc.wait()
    for t in threads:
        t.join()
    assert 15 <= len(answered) < len(pods), "the kill did not land mid-burst"

    plugin.start()
    try:
        comments = jobs_by_comment(cluster)
        for uid, job_id in answered.items():
            # Every pod that got a 200 has exactly one job, the one it was told about.
            assert comments[f"interlink-slurm:{uid}"] == 1, uid
            assert plugin.create_ok(podgen.retrieved(pod_by_uid(pods, uid))) == job_id
        for p in pods:  # every pod, answered or not, can be created (again) ...
            plugin.create_ok(podgen.retrieved(p))
        comments = jobs_by_comment(cluster)
        for p in pods:  # ... and still has exactly one job
            assert comments[f"interlink-slurm:{p['metadata']['uid']}"] == 1
    finally:
        job_ids = [plugin.pod_status(p)["JID"] for p in pods]
        plugin.stop()
        cancel(cluster, job_ids)


def podgen_json(p: dict[str, Any]) -> str:
    import json

    return json.dumps(podgen.retrieved(p))


def pod_by_uid(pods: list[dict[str, Any]], uid: str) -> dict[str, Any]:
    return next(p for p in pods if p["metadata"]["uid"] == uid)


@pytest.fixture
def slurmctld_stopper(cluster: dict[str, str]) -> Iterator[tuple[Any, Any]]:
    """stop() kills this cluster's slurmctld (by its pid file); start() brings it back."""
    pid_file = Path(cluster["ILS_CLUSTER_DIR"]) / "slurmctld.pid"

    def stop() -> None:
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                return
            time.sleep(0.2)
        raise AssertionError("slurmctld did not stop")

    def start() -> None:
        subprocess.run([str(CLUSTER), "up"], check=True, capture_output=True)

    yield stop, start
    start()  # whatever happened, the next tests get their cluster back


def test_slurmctld_outage_is_503_last_known_states_and_recovers_without_restart(
    plugin: Plugin, slurmctld_stopper: tuple[Any, Any]
) -> None:
    stop, start = slurmctld_stopper
    # It runs through the outage and ends when the test says so (a file in its emptyDir).
    running = podgen.pod(
        "through-outage",
        [
            podgen.container(
                "main",
                "import os, time\nprint('up', flush=True)\n"
                "while not os.path.exists('/mnt/work/end'): time.sleep(0.1)\nprint('done')",
                volumeMounts=[{"name": "work", "mountPath": "/mnt/work"}],
            )
        ],
        volumes=[{"name": "work", "emptyDir": {}}],
    )
    plugin.create_ok(podgen.retrieved(running))
    plugin.wait_for(running, lambda s: "running" in s["containers"][0]["state"])

    stop()
    try:
        waiting = podgen.pod("during-outage", [podgen.container("main", "print('later')")])
        r = plugin.create(podgen.retrieved(waiting))
        assert r.status_code == 503, r.text
        assert int(r.headers["Retry-After"]) > 0
        assert "Slurm" in r.text and "reach" in r.text
        assert plugin.client.get("/readyz").status_code == 503
        time.sleep(3)  # a refresh or two fail
        status = plugin.pod_status(running)
        state = status["containers"][0]["state"]
        assert "running" in state or "Slurm does not answer" in str(state), state
        assert plugin.status([]).status_code == 503  # the ping says the node is not usable
    finally:
        start()

    deadline = time.monotonic() + 60
    while plugin.client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "did not recover"
        time.sleep(0.5)
    plugin.create_ok(podgen.retrieved(waiting))  # the retried create now lands, once
    status = plugin.wait_for(waiting, lambda s: "terminated" in s["containers"][0]["state"])
    assert status["containers"][0]["state"]["terminated"]["exitCode"] == 0
    assert "running" in plugin.pod_status(running)["containers"][0]["state"]
    (plugin.pod_dir(running) / "volumes" / "work" / "end").touch()
    status = plugin.wait_for(
        running, lambda s: "terminated" in s["containers"][0]["state"], timeout=90
    )
    assert status["containers"][0]["state"]["terminated"]["exitCode"] == 0
    assert plugin.logs(running, "main").text == "up\ndone\n"


@pytest.fixture
def small_data_root(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, f"cannot mount a small tmpfs: {r.stderr}"
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_data_root_is_a_clear_error_and_submits_nothing(
    cluster: dict[str, str], tmp_path: Path, small_data_root: Path
) -> None:
    plugin = Plugin(
        tmp_path,
        cluster,
        data_root=str(small_data_root / "pods"),
        state_db=str(tmp_path / "state.db"),
    )
    plugin.start()
    try:
        big = "x" * (3 << 20)  # more than the whole filesystem
        pod = podgen.pod(
            "too-big",
            [
                podgen.container(
                    "main", "print(1)", volumeMounts=[{"name": "cfg", "mountPath": "/mnt/config"}]
                )
            ],
            volumes=[{"name": "cfg", "configMap": {"name": "big"}}],
        )
        before = jobs_by_comment(cluster)

        r = plugin.create(
            podgen.retrieved(pod, config_maps=[podgen.config_map("big", {"blob": big})])
        )

        assert r.status_code == 507, r.text
        assert "No space left on device" in r.text
        assert big[:100] not in r.text
        assert not plugin.pod_dir(pod).exists()  # no half-written pod is left behind
        # Nothing was submitted. (Jobs of earlier tests may leave the queue meanwhile: only new
        # jobs count.)
        assert set(jobs_by_comment(cluster)) - set(before) == set()
        small = podgen.pod("fits", [podgen.container("main", "print('fits')")])
        plugin.create_ok(podgen.retrieved(small))  # the service itself is fine
    finally:
        plugin.stop()

"""The real thing: the plugin as a process, on the local Slurm cluster of deploy/local/cluster.sh.

The cluster is brought up once per session (idempotent). Nothing here is skipped when the cluster
cannot start: an integration suite that silently skips proves nothing.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "deploy" / "local" / "cluster.sh"


def cluster_env() -> dict[str, str]:
    """SLURM_CONF, ILS_IMAGE... of the local cluster, starting it if needed."""
    subprocess.run([str(CLUSTER), "up"], check=True, stdout=sys.stderr)
    out = subprocess.run([str(CLUSTER), "env"], check=True, capture_output=True, text=True).stdout
    env = {}
    for line in out.splitlines():
        line = line.removeprefix("export ").strip()
        if "=" in line:
            key, _, value = line.partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Plugin:
    """An interlink-slurm process and a client that speaks to it the way interLink does."""

    def __init__(self, workdir: Path, cluster: dict[str, str], **config: Any) -> None:
        self.workdir = workdir
        self.cluster = cluster
        self.port = free_port()
        self.data_root = workdir / "data"
        self.config_path = workdir / "config.yaml"
        self.settings: dict[str, Any] = {
            "listen": f"127.0.0.1:{self.port}",
            "data_root": str(self.data_root),
            "runtime": "charliecloud",
            "images": {"debian-python": cluster["ILS_IMAGE"]},
            "partition": "dcgp_usr_prod",
            "gpu_partition": "boost_usr_prod",
            "gpu_type": "a100",
            "slurm_conf": cluster["SLURM_CONF"],
            "log_level": "debug",
            "ping_cache_seconds": 0,
            **config,
        }
        self.config_path.write_text(yaml.safe_dump(self.settings))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "plugin.log"
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.url, timeout=60)
        self.headers: dict[str, str] = {"Content-Type": "application/json"}

    # --- process --------------------------------------------------------------------------------

    def start(self) -> None:
        env = {**os.environ, "USER": os.environ.get("USER", "root")}
        exe = Path(sys.executable).parent / "interlink-slurm"
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(exe), "serve", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.workdir,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"plugin exited at start:\n{self.log_path.read_text()}")
            try:
                if self.client.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"plugin did not start:\n{self.log_path.read_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    # --- interLink's calls ------------------------------------------------------------------------

    def create(self, data: dict[str, Any] | list[Any]) -> httpx.Response:
        return self.client.post("/create", content=json.dumps(data), headers=self.headers)

    def create_ok(self, data: dict[str, Any]) -> str:
        r = self.create(data)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["PodUID"] == data["pod"]["metadata"]["uid"]
        return str(answer["PodJID"])

    def status(self, pods: list[dict[str, Any]]) -> httpx.Response:
        return self.client.request("GET", "/status", content=json.dumps(pods), headers=self.headers)

    def pod_status(self, pod: dict[str, Any]) -> dict[str, Any]:
        r = self.status([pod])
        assert r.status_code == 200, r.text
        answer = r.json()
        assert len(answer) == 1, answer
        return dict(answer[0])

    def logs(self, pod: dict[str, Any], container: str, **opts: Any) -> httpx.Response:
        body = {
            "Namespace": pod["metadata"]["namespace"],
            "PodUID": pod["metadata"]["uid"],
            "PodName": pod["metadata"]["name"],
            "ContainerName": container,
            "Opts": {
                "Tail": 0,
                "Bytes": 0,
                "Timestamps": False,
                "Follow": False,
                "Previous": False,
                "SinceSeconds": 0,
                "SinceTime": "0001-01-01T00:00:00Z",
                **opts,
            },
        }
        return self.client.request(
            "GET", "/getLogs", content=json.dumps(body), headers=self.headers
        )

    def delete(self, pod: dict[str, Any]) -> httpx.Response:
        return self.client.post("/delete", content=json.dumps(pod), headers=self.headers)

    def wait_for(
        self,
        pod: dict[str, Any],
        done: Callable[[dict[str, Any]], bool],
        timeout: float = 90,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = self.pod_status(pod)
            if done(last):
                return last
            time.sleep(0.3)
        raise AssertionError(f"pod did not reach the expected state in {timeout}s: {last}")

    def pod_dir(self, pod: dict[str, Any]) -> Path:
        meta = pod["metadata"]
        return self.data_root / meta["namespace"] / f"{meta['name']}-{meta['uid']}"


def states(status: dict[str, Any], group: str = "containers") -> dict[str, dict[str, Any]]:
    return {c["name"]: c["state"] for c in status.get(group) or []}


def all_terminated(status: dict[str, Any]) -> bool:
    cs = status.get("containers") or []
    return bool(cs) and all("terminated" in c["state"] for c in cs)


def any_running(status: dict[str, Any]) -> bool:
    return any("running" in c["state"] for c in status.get("containers") or [])


def squeue(cluster: dict[str, str], job_id: str) -> str:
    """The job's state as squeue prints it, "" when Slurm no longer lists it."""
    out = subprocess.run(
        ["squeue", "-h", "-a", "--states=all", "-j", f"{job_id},0", "-o", "%T"],
        capture_output=True,
        text=True,
        env={**os.environ, "SLURM_CONF": cluster["SLURM_CONF"]},
    )
    return out.stdout.strip()


@pytest.fixture(scope="session")
def cluster() -> dict[str, str]:
    return cluster_env()


@pytest.fixture(scope="session")
def plugin(cluster: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plugin]:
    p = Plugin(tmp_path_factory.mktemp("plugin"), cluster)
    p.start()
    yield p
    p.stop()

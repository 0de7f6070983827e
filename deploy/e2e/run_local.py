#!/usr/bin/env python3
"""Run the end-to-end scenarios against the plugin's HTTP API on the local Slurm cluster.

    eval "$(deploy/local/cluster.sh env)"       # or just `make e2e-local`
    .venv/bin/python deploy/e2e/run_local.py [SCENARIO ...] [--keep]

It starts `interlink-slurm serve` with deploy/config/local.yaml (listen, data_root and images
adapted: every image a scenario names maps to $ILS_IMAGE), then does for every scenario, all at
once, what interLink does: POST /create with the RetrievedPodData, GET /status until the phase
the virtual kubelet would derive is final, GET /getLogs per container, POST /delete. It exits
non-zero when any scenario differs from its expectations, printing what differed, the last
status and the container logs. The kind workflow (.github/workflows/e2e-kind.yaml) runs the same
scenarios through a real cluster with run_kind.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scenarios as sc

BASE_CONFIG = sc.REPO / "deploy" / "config" / "local.yaml"
CLUSTER = sc.REPO / "deploy" / "local" / "cluster.sh"
POLL_SECONDS = 0.5
LOG_OPTS = {
    "Tail": 0,
    "Bytes": 0,
    "Timestamps": False,
    "Follow": False,
    "Previous": False,
    "SinceSeconds": 0,
    "SinceTime": "0001-01-01T00:00:00Z",
}


def cluster_env() -> dict[str, str]:
    """SLURM_CONF and ILS_IMAGE from the environment, else from `cluster.sh env`."""
    env = {k: os.environ[k] for k in ("SLURM_CONF", "ILS_IMAGE") if os.environ.get(k)}
    if len(env) < 2:
        out = subprocess.run(
            [str(CLUSTER), "env"], check=True, capture_output=True, text=True
        ).stdout
        for line in out.splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            if key in ("SLURM_CONF", "ILS_IMAGE") and key not in env:
                env[key] = shlex.split(value)[0]
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(workdir: Path, cluster: dict[str, str], images: set[str]) -> tuple[Path, str]:
    """deploy/config/local.yaml with this run's port, data_root, images and SLURM_CONF."""
    port = free_port()
    config = sc.plugin_config(
        BASE_CONFIG,
        listen=f"127.0.0.1:{port}",
        data_root=str(workdir / "pods"),
        image=cluster["ILS_IMAGE"],
        slurm_conf=cluster["SLURM_CONF"],
        images=images,
    )
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, f"http://127.0.0.1:{port}"


class Plugin:
    def __init__(self, config: Path, url: str, log_path: Path) -> None:
        exe = Path(sys.executable).parent / "interlink-slurm"
        self.log_path = log_path
        env = {**os.environ, "USER": os.environ.get("USER") or "root"}
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(exe), "serve", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self.client = httpx.Client(
            base_url=url, timeout=60, headers={"Content-Type": "application/json"}
        )

    def wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the plugin exited at start:\n{self.log_path.read_text()}")
            try:
                if self.client.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the plugin did not answer /healthz in {timeout}s")

    def call(self, method: str, path: str, body: Any) -> httpx.Response:
        return self.client.request(method, path, content=json.dumps(body))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.client.close()


@dataclass
class Result:
    scenario: sc.Scenario
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    job_id: str = ""
    status: dict[str, Any] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    pod_dir: str = ""


def run_scenario(plugin: Plugin, scenario: sc.Scenario, data_root: Path) -> Result:
    result = Result(scenario)
    start = time.monotonic()
    uid = str(uuid.uuid4())
    body = sc.retrieved_pod_data(scenario, sc.NAMESPACE, uid)
    pod = body["pod"]
    result.pod_dir = str(data_root / sc.NAMESPACE / f"{scenario.pod_name}-{uid}")
    created = False
    try:
        r = plugin.call("POST", "/create", body)
        if r.status_code != 200:
            # The virtual kubelet marks the pod Failed (ProviderFailed) with the body as message.
            result.problems = sc.judge(scenario, "Failed", [], [], {}, create_error=r.text)
            return result
        created = True
        answer = r.json()
        result.job_id = str(answer.get("PodJID", ""))
        if answer.get("PodUID") != uid:
            result.problems.append(f"/create answered PodUID {answer.get('PodUID')!r}")
        phase = "Pending"
        deadline = start + scenario.timeout
        while time.monotonic() < deadline:
            r = plugin.call("GET", "/status", [pod])
            if r.status_code != 200:
                result.problems.append(f"/status answered {r.status_code}: {r.text}")
                return result
            answer = r.json()
            if answer:
                result.status = answer[0]
                phase = sc.pod_phase(result.status)
                pod["status"]["phase"] = phase
            if sc.settled(scenario, phase, lambda: read_logs(plugin, pod, uid)):
                break
            time.sleep(POLL_SECONDS)
        else:
            result.problems.append(f"still {phase} after {scenario.timeout:g}s")
        result.logs = read_logs(plugin, pod, uid)
        result.problems += sc.judge(
            scenario,
            phase,
            result.status.get("containers") or [],
            result.status.get("initContainers") or [],
            result.logs,
        )
    except (httpx.HTTPError, ValueError) as err:
        result.problems.append(f"{type(err).__name__}: {err}")
    finally:
        if created:
            # As the virtual kubelet does when the pod is deleted; a job still running ends.
            try:
                r = plugin.call("POST", "/delete", pod)
                if r.status_code != 200:
                    result.problems.append(f"/delete answered {r.status_code}: {r.text}")
            except httpx.HTTPError as err:
                result.problems.append(f"/delete: {type(err).__name__}: {err}")
        result.seconds = time.monotonic() - start
    return result


def read_logs(plugin: Plugin, pod: dict[str, Any], uid: str) -> dict[str, str]:
    """Every container's log, as the virtual kubelet asks for it."""
    names = [c["name"] for c in (pod["spec"].get("initContainers") or [])]
    names += [c["name"] for c in pod["spec"]["containers"]]
    logs = {}
    for name in names:
        r = plugin.call(
            "GET",
            "/getLogs",
            {
                "Namespace": sc.NAMESPACE,
                "PodUID": uid,
                "PodName": pod["metadata"]["name"],
                "ContainerName": name,
                "Opts": LOG_OPTS,
            },
        )
        logs[name] = r.text if r.status_code == 200 else f"<{r.status_code}: {r.text}>"
    return logs


def ping(plugin: Plugin) -> list[str]:
    """interLink's ping: GET /status with [] answers the node's resources."""
    r = plugin.call("GET", "/status", [])
    if r.status_code != 200:
        return [f"ping: /status [] answered {r.status_code}: {r.text}"]
    answer = r.json()
    if not isinstance(answer, dict) or answer.get("status") != "ok":
        return [f"ping: unexpected answer {answer!r}"]
    return []


def report(result: Result, verbose: bool) -> None:
    ok = not result.problems
    word = "PASS" if ok else "FAIL"
    job = f" job {result.job_id}" if result.job_id else ""
    print(f"{word}  {result.scenario.name:<24} {result.seconds:5.1f}s{job}")
    if ok and not verbose:
        return
    for p in result.problems:
        print(f"      - {p}")
    if not ok:
        print(f"      {result.scenario.description}")
        print(f"      pod directory: {result.pod_dir}")
        if result.status:
            print("      last status: " + json.dumps(result.status, indent=None)[:2000])
        for name, text in result.logs.items():
            print(f"      --- log of {name} ---")
            for line in text.splitlines()[-20:]:
                print(f"      | {line}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="scenarios to run (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)

    scenarios = sc.load_all(args.names or None)
    cluster = cluster_env()
    images = set().union(*(s.images for s in scenarios))
    parent = os.environ.get("ILS_CLUSTER_DIR")
    if parent:
        Path(parent).mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="e2e-", dir=parent))
    config, url = write_config(workdir, cluster, images)
    t0 = time.monotonic()
    print(f"e2e-local: {len(scenarios)} scenarios, plugin at {url}, work directory {workdir}")
    plugin = Plugin(config, url, workdir / "plugin.log")
    failed = True
    results: list[Result] = []
    try:
        plugin.wait_healthy()
        problems = ping(plugin)
        for p in problems:
            print(f"FAIL  {p}")
        with ThreadPoolExecutor(max_workers=len(scenarios)) as pool:
            results = list(pool.map(lambda s: run_scenario(plugin, s, workdir / "pods"), scenarios))
        for result in results:
            report(result, args.verbose)
        failed = bool(problems) or any(r.problems for r in results)
    finally:
        plugin.stop()
    n_failed = sum(1 for r in results if r.problems)
    print(
        f"e2e-local: {len(results) - n_failed} passed, {n_failed} failed "
        f"in {time.monotonic() - t0:.1f}s"
    )
    if failed or args.keep:
        print(f"e2e-local: plugin log and pod directories kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

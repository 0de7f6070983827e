"""Speed and memory of interlink-slurm on the real local Slurm (run by hand, never in CI).

    .venv/bin/python -m benchmarks.bench status --pods 100 1000 10000
    .venv/bin/python -m benchmarks.bench status-running --real 24 --pods 1000 10000 \
        --transports local ssh
    .venv/bin/python -m benchmarks.bench create --pods 500 --clients 8 --runs 5
    .venv/bin/python -m benchmarks.bench create --scheduler rest --pods 500 --clients 8 --runs 5
    .venv/bin/python -m benchmarks.bench http --calls 2000
    .venv/bin/python -m benchmarks.bench startup --pods 20 --runs 5
    .venv/bin/python -m benchmarks.bench idle --pods 10000 --seconds 60
    .venv/bin/python -m benchmarks.bench logs --sizes-mib 1 64 1024
    .venv/bin/python -m benchmarks.bench placement --pods 200 --clients 8
    .venv/bin/python -m benchmarks.bench all

Each part starts its own plugin on the cluster of deploy/local/cluster.sh (which it brings up)
and prints a Markdown table; docs/benchmarks.md keeps the results with the command that made
them. Jobs are submitted held (`--hold`) where they only need to exist: the status benchmark
measures tracked pods, not running containers; status-running, startup and idle measure pods
that run (benchmarks/running.py says how pods beyond what the cluster holds are made to run).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks import running
from benchmarks.common import HOLD, cancel_all, metric, percentile
from interlink_slurm.config import Settings
from tests import podgen
from tests.integration.conftest import REST_VERSION, Plugin, RestServer, cluster_env, remote_env

SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start(cluster: dict[str, str], workdir: Path, **config: Any) -> Plugin:
    plugin = Plugin(workdir, cluster, log_level="warning", **config)
    plugin.start()
    return plugin


def create_many(plugin: Plugin, n: int, clients: int, prefix: str) -> list[dict[str, Any]]:
    pods = [podgen.pod(f"{prefix}-{i}", [podgen.container("main", "print(1)")]) for i in range(n)]
    failures: list[str] = []

    def one(p: dict[str, Any]) -> None:
        r = plugin.create(podgen.retrieved(p))
        if r.status_code != 200:
            failures.append(r.text)

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, pods))
    if failures:
        raise SystemExit(f"{len(failures)} creates failed, e.g. {failures[0]}")
    return pods


def bench_status(cluster: dict[str, str], sizes: list[int], calls: int) -> None:
    print(
        "| tracked pods | /status calls | p50 ms | p99 ms | scheduler queries/s "
        "(refresh 2 s) | queries per 1000 calls | service RSS MiB |"
    )
    print("|---|---|---|---|---|---|---|")
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="ils-bench-") as tmp:
            plugin = start(cluster, Path(tmp), sbatch_extra=HOLD, status_refresh_seconds=2)
            try:
                pods = create_many(plugin, n, 8, f"st{n}")
                time.sleep(3)  # one refresh has seen every job
                bodies = [json.dumps([p]) for p in pods]
                q0 = metric(
                    plugin,
                    "interlink_slurm_scheduler_calls_total",
                    'operation="query",outcome="ok"',
                )
                t0 = time.monotonic()
                latencies = []
                for i in range(calls):
                    body = bodies[(i * 7919) % n]  # spread over every pod
                    s = time.perf_counter()
                    r = plugin.client.request(
                        "GET", "/status", content=body, headers=plugin.headers
                    )
                    latencies.append((time.perf_counter() - s) * 1000)
                    assert r.status_code == 200 and len(r.json()) == 1, r.text
                elapsed = time.monotonic() - t0
                queries = (
                    metric(
                        plugin,
                        "interlink_slurm_scheduler_calls_total",
                        'operation="query",outcome="ok"',
                    )
                    - q0
                )
                assert plugin.proc is not None
                rss = rss_mib(plugin.proc.pid)
                print(
                    f"| {n} | {calls} | {percentile(latencies, 50):.2f} | "
                    f"{percentile(latencies, 99):.2f} | {queries / elapsed:.2f} | "
                    f"{queries / calls * 1000:.1f} | {rss:.0f} |",
                    flush=True,
                )
            finally:
                plugin.stop()
                cancel_all(cluster)


def sbatch_loop(cluster: dict[str, str], scripts: list[Path]) -> float:
    # The environment the plugin's sbatch gets (pass_environment's default): each sbatch packs
    # and sends to slurmctld the same variables on both sides.
    env = Settings(
        data_root=Path(tempfile.gettempdir()), slurm_conf=Path(cluster["SLURM_CONF"])
    ).local_command_env(os.environ)
    t0 = time.monotonic()
    for script in scripts:
        subprocess.run(
            ["sbatch", "--parsable", "--hold", f"--chdir={script.parent}", str(script)],
            env=env,
            check=True,
            capture_output=True,
        )
    return time.monotonic() - t0


def post_creates(plugin: Plugin, bodies: list[bytes], clients: int) -> None:
    """POST each body to /create, ``clients`` at once. The clients are threads of this
    process, on the cores the plugin runs on: each keeps one connection open (http.client)
    and sends bodies serialised before the clock started, so that the plugin's side of the
    comparison is charged as little as a client can cost."""
    todo = list(reversed(bodies))
    lock = threading.Lock()
    failures: list[str] = []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", plugin.port, timeout=60)
        try:
            while True:
                with lock:
                    if not todo:
                        return
                    body = todo.pop()
                conn.request("POST", "/create", body, plugin.headers)
                answer = conn.getresponse()
                text = answer.read()
                if answer.status != 200:
                    failures.append(text.decode(errors="replace"))
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise SystemExit(f"{len(failures)} creates failed, e.g. {failures[0]}")


def bench_create(
    cluster: dict[str, str],
    n: int,
    clients: int,
    runs: int,
    under: str | None = None,
    scheduler: str = "cli",
) -> None:
    """Each run: ``n`` creates by ``clients`` clients, then the same job scripts submitted
    again by one serial sbatch loop, back to back (ratios, not absolute rates, compare runs on a
    busy machine).

    Every run's directory is kept until the last run ends: on a filesystem that skips
    recently deleted inodes when it makes new ones (ext4 without a journal, as here), removing
    one run's thousands of files just before the next run's creates would charge that run for
    the benchmark's own cleanup. ``under``: where the runs' directories are made (default: the
    system's temporary directory, which other programs may fill and empty meanwhile).

    ``scheduler`` "rest": the plugin submits through slurmrestd (local auth, on a unix socket,
    run as the remote modes' job user: deploy/local/remote.sh setup), its files local and its
    own (the jobs are held, never run, so their owner does not matter here); the "its sbatch
    CPU" column is then slurmrestd's CPU, which is no child of the plugin."""
    rest = None
    if scheduler == "rest":
        user = remote_env()["ILS_REMOTE_USER"]
        rest = RestServer(cluster, user, _user_tmp(user, "slurmrestd", under))
        rest.start()
    try:
        _bench_create(cluster, n, clients, runs, under, rest)
    finally:
        if rest is not None:
            rest.stop()
            shutil.rmtree(rest.dir, ignore_errors=True)


def _user_tmp(user: str | None, prefix: str, under: str | None) -> Path:
    """A temporary directory owned by ``user`` (None: this process's), kept by the caller."""
    path = Path(tempfile.mkdtemp(prefix=f"ils-bench-{prefix}-", dir=under))
    if user is not None:
        path.chmod(0o755)
        shutil.chown(path, user, user)
    return path


def _bench_create(
    cluster: dict[str, str],
    n: int,
    clients: int,
    runs: int,
    under: str | None,
    rest: RestServer | None,
) -> None:
    print(
        "| run | pods | clients | /create pods/s | raw sbatch pods/s | ratio | failed "
        "| duplicated | plugin CPU ms/create | its sbatch CPU ms/create "
        "| client CPU ms/create |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    ratios = []
    with contextlib.ExitStack() as kept:
        for run in range(1, runs + 1):
            tmp = _user_tmp(None, "create", under)
            kept.callback(shutil.rmtree, tmp, ignore_errors=True)
            config: dict[str, Any] = {"sbatch_extra": HOLD}
            if rest is not None:
                config["scheduler"] = "rest"
                config["rest"] = {"url": rest.url, "api_version": REST_VERSION, "timeout": 20}
            plugin = Plugin(tmp, cluster, log_level="warning", **config)
            plugin.start()
            try:
                assert plugin.proc is not None
                server0 = _server_cpu(rest)
                pods = [
                    podgen.pod(f"cr{run}-{i}", [podgen.container("main", "print(1)")])
                    for i in range(n)
                ]
                bodies = [json.dumps(podgen.retrieved(p)).encode() for p in pods]
                own0, children0 = running.cpu_split(plugin.proc.pid)
                client0 = time.process_time()
                t0 = time.monotonic()
                post_creates(plugin, bodies, clients)
                plugin_s = time.monotonic() - t0
                client_s = time.process_time() - client0
                own1, children1 = running.cpu_split(plugin.proc.pid)
                if rest is not None:  # slurmrestd did the submissions sbatch would have done
                    children0, children1 = server0, _server_cpu(rest)
                jobs = {plugin.pod_status(p)["JID"] for p in pods[:50]}
                scripts = sorted(plugin.data_root.glob("default/*/job.sh"))
                assert len(scripts) == n, len(scripts)
                squeue = subprocess.run(
                    ["squeue", "-h", "-o", "%k"],
                    capture_output=True,
                    text=True,
                    env={**os.environ, "SLURM_CONF": cluster["SLURM_CONF"]},
                    check=True,
                ).stdout.split()
                duplicates = len(squeue) - len(set(squeue))
                submitted = len(set(squeue))
                cancel_all(cluster)
                # The same scripts, submitted again by hand in a loop: the ceiling for one
                # client.
                raw_s = sbatch_loop(cluster, scripts)
            finally:
                plugin.stop()
                cancel_all(cluster)
            assert len(jobs) == min(n, 50)  # one job each, all different
            ratios.append(raw_s / plugin_s)
            print(
                f"| {run} | {n} | {clients} | {n / plugin_s:.1f} | {n / raw_s:.1f} | "
                f"{raw_s / plugin_s:.2f} | {n - submitted} | {duplicates} | "
                f"{(own1 - own0) * 1000 / n:.2f} | {(children1 - children0) * 1000 / n:.2f} | "
                f"{client_s * 1000 / n:.2f} |",
                flush=True,
            )
    print(f"\nratio over {runs} runs: {min(ratios):.2f} to {max(ratios):.2f}")


def _server_cpu(rest: RestServer | None) -> float:
    """slurmrestd's CPU seconds so far (0 without it)."""
    if rest is None or rest.proc is None:
        return 0.0
    return sum(running.cpu_split(rest.proc.pid))


def bench_http(cluster: dict[str, str], calls: int) -> None:
    """The HTTP layer alone: the plugin's CPU per request (one client, no Slurm call) for
    /healthz and for a /create refused at validation (its body read, parsed and checked)."""
    print("| request | calls | plugin CPU ms/request |")
    print("|---|---|---|")
    refused = podgen.retrieved(podgen.pod("x", [podgen.container("main", "print(1)")]))
    refused["pod"]["metadata"]["name"] = "Not_A_DNS_Name"
    requests: dict[str, Callable[[Plugin], Any]] = {
        "GET /healthz": lambda p: p.client.get("/healthz"),
        "POST /create (refused: 400)": lambda p: p.create(refused),
    }
    with tempfile.TemporaryDirectory(prefix="ils-bench-") as tmp:
        plugin = start(cluster, Path(tmp))
        try:
            assert plugin.proc is not None
            for name, request in requests.items():
                own0, _ = running.cpu_split(plugin.proc.pid)
                for _ in range(calls):
                    request(plugin)
                own1, _ = running.cpu_split(plugin.proc.pid)
                print(f"| {name} | {calls} | {(own1 - own0) * 1000 / calls:.3f} |", flush=True)
        finally:
            plugin.stop()


PLACEMENT_SETUPS: dict[str, dict[str, Any]] = {
    "no targets": {},
    "1 eligible target": {"targets": {"dcgp": {"partition": "dcgp_usr_prod"}}},
    "2 eligible targets": {
        "targets": {
            "booster": {"partition": "boost_usr_prod"},
            "dcgp": {"partition": "dcgp_usr_prod"},
        }
    },
    "3 eligible targets": {
        "targets": {
            "booster": {"partition": "boost_usr_prod"},
            "booster-b": {"partition": "boost_usr_prod", "penalty_seconds": 60},
            "dcgp": {"partition": "dcgp_usr_prod"},
        }
    },
}


def timed_create(plugin: Plugin, pod: dict[str, Any]) -> float:
    """One /create, in milliseconds."""
    s = time.perf_counter()
    r = plugin.create(podgen.retrieved(pod))
    assert r.status_code == 200, r.text
    return (time.perf_counter() - s) * 1000


def bench_placement(cluster: dict[str, str], n: int, clients: int) -> None:
    """What placement costs a create: one sbatch --test-only per eligible target, at once."""
    print(
        "| setup | pods | clients | /create pods/s | p50 ms | p99 ms | placed by estimate "
        "| by order (no estimate in time) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, config in PLACEMENT_SETUPS.items():
        with tempfile.TemporaryDirectory(prefix="ils-bench-") as tmp:
            plugin = start(cluster, Path(tmp), sbatch_extra=HOLD, **config)
            try:
                pods = [
                    podgen.pod(f"pl-{i}", [podgen.container("main", "print(1)")]) for i in range(n)
                ]

                t0 = time.monotonic()
                with ThreadPoolExecutor(clients) as pool:
                    latencies = list(pool.map(timed_create, [plugin] * n, pods))
                elapsed = time.monotonic() - t0
                by = {
                    basis: sum(
                        metric(
                            plugin,
                            "interlink_slurm_placements_total",
                            f'basis="{basis}",target="{t}"',
                        )
                        for t in config.get("targets", {})
                    )
                    for basis in ("estimate", "order")
                }
            finally:
                plugin.stop()
                cancel_all(cluster)
        print(
            f"| {name} | {n} | {clients} | {n / elapsed:.1f} | {percentile(latencies, 50):.1f}"
            f" | {percentile(latencies, 99):.1f} | {by['estimate']:.0f} | {by['order']:.0f} |",
            flush=True,
        )


def fill_log(path: Path, size: int) -> None:
    line = b"x" * 99 + b"\n"
    block = line * 10_000  # ~1 MB
    with open(path, "wb") as f:
        written = 0
        while written < size:
            f.write(block)
            written += len(block)


def bench_logs(cluster: dict[str, str], sizes_mib: list[int], calls: int) -> None:
    with tempfile.TemporaryDirectory(prefix="ils-bench-") as tmp:
        plugin = start(cluster, Path(tmp))
        try:
            pod = podgen.pod("big-log", [podgen.container("main", "print(1)")])
            plugin.create_ok(podgen.retrieved(pod))
            plugin.wait_for(pod, lambda s: all("terminated" in c["state"] for c in s["containers"]))
            log = plugin.pod_dir(pod) / "containers" / "main.log"
            print("| log size | Tail=100 p50 ms | p99 ms | bytes returned |")
            print("|---|---|---|---|")
            for mib in sizes_mib:
                fill_log(log, mib << 20)
                latencies = []
                size = 0
                for _ in range(calls):
                    s = time.perf_counter()
                    r = plugin.logs(pod, "main", Tail=100)
                    latencies.append((time.perf_counter() - s) * 1000)
                    size = len(r.content)
                print(
                    f"| {mib} MiB | {percentile(latencies, 50):.2f} | "
                    f"{percentile(latencies, 99):.2f} | {size} |",
                    flush=True,
                )
        finally:
            plugin.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("status")
    s.add_argument("--pods", type=int, nargs="+", default=[100, 1000, 10000])
    s.add_argument("--calls", type=int, default=2000)
    c = sub.add_parser("create")
    c.add_argument("--pods", type=int, default=500)
    c.add_argument("--clients", type=int, default=8)
    c.add_argument("--runs", type=int, default=5)
    c.add_argument("--data-under", help="directory for the runs' data roots (default: $TMPDIR)")
    c.add_argument(
        "--scheduler",
        choices=["cli", "rest"],
        default="cli",
        help="how the plugin submits: sbatch (cli) or slurmrestd (rest, as the job user)",
    )
    sr = sub.add_parser("status-running")
    sr.add_argument("--real", type=int, default=24, help="real sleep pods (0: none)")
    sr.add_argument(
        "--pods",
        type=int,
        nargs="*",
        default=[1000, 10000],
        help="pods shown running, their state files written by the benchmark",
    )
    sr.add_argument("--transports", nargs="+", choices=["local", "ssh"], default=["local", "ssh"])
    sr.add_argument("--calls", type=int, default=2000)
    su = sub.add_parser("startup")
    su.add_argument("--pods", type=int, default=20)
    su.add_argument("--runs", type=int, default=5)
    su.add_argument("--transport", choices=["local", "ssh"], default="local")
    idle = sub.add_parser("idle")
    idle.add_argument("--pods", type=int, default=10000)
    idle.add_argument("--seconds", type=float, default=60)
    lg = sub.add_parser("logs")
    lg.add_argument("--sizes-mib", type=int, nargs="+", default=[1, 64, 1024])
    lg.add_argument("--calls", type=int, default=200)
    ht = sub.add_parser("http")
    ht.add_argument("--calls", type=int, default=2000)
    pl = sub.add_parser("placement")
    pl.add_argument("--pods", type=int, default=200)
    pl.add_argument("--clients", type=int, default=8)
    sub.add_parser("all")
    args = parser.parse_args()
    # The plugin, and through it its jobs, get the PATH of a systemd service (deploy/systemd),
    # not this shell's: a development shell's python3 may be a shim (pyenv: a bash script and
    # 4 processes, 0.12 s of CPU), and every pod's job starts python3 for its log copier.
    os.environ["PATH"] = SERVICE_PATH
    cluster = cluster_env()
    runs: dict[str, Callable[[], None]] = {
        "status": lambda: bench_status(
            cluster, getattr(args, "pods", [100, 1000, 10000]), getattr(args, "calls", 2000)
        ),
        "create": lambda: bench_create(
            cluster,
            getattr(args, "pods", 500),
            getattr(args, "clients", 8),
            getattr(args, "runs", 5),
            getattr(args, "data_under", None),
            getattr(args, "scheduler", "cli"),
        ),
        "status-running": lambda: running.bench_status_running(
            cluster,
            getattr(args, "real", 24),
            getattr(args, "pods", [1000, 10000]),
            getattr(args, "transports", ["local", "ssh"]),
            getattr(args, "calls", 2000),
        ),
        "startup": lambda: running.bench_startup(
            cluster,
            getattr(args, "pods", 20),
            getattr(args, "runs", 5),
            getattr(args, "transport", "local"),
        ),
        "idle": lambda: running.bench_idle(
            cluster, getattr(args, "pods", 10000), getattr(args, "seconds", 60)
        ),
        "logs": lambda: bench_logs(
            cluster, getattr(args, "sizes_mib", [1, 64, 1024]), getattr(args, "calls", 200)
        ),
        "http": lambda: bench_http(cluster, getattr(args, "calls", 2000)),
        "placement": lambda: bench_placement(
            cluster, getattr(args, "pods", 200), getattr(args, "clients", 8)
        ),
    }
    for name in runs if args.what == "all" else [args.what]:
        print(f"\n## {name}\n", flush=True)
        runs[name]()


if __name__ == "__main__":
    main()

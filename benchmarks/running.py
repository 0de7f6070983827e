"""Benchmarks of pods that run (not held): /status, create → running, idle CPU.

Real running pods go up to what the local cluster holds (one core each). Beyond that, pods are
made "running" as follows, and the doc says so: their jobs are submitted held, an `squeue`
wrapper (slurm_bin_dir) shows the held jobs RUNNING on node vm, and the benchmark writes each
pod's state files exactly as the job script does: the `ils_now` and `ils_put` functions are
taken from interlink_slurm/jobscript/ils.sh and run by bash (`job.runs` = 1, then
`containers/main.started` = the time), a temporary file renamed into place.

The plugin runs as `python -m benchmarks.counted`, which counts its transport calls (every
command, file read, stat...) for the "transport calls" columns.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from random import SystemRandom
from typing import Any

import yaml

from benchmarks.common import HOLD, cancel_all, metric, percentile, slurm_env
from interlink_slurm.slurm.factory import SLURM_COMMANDS
from tests import podgen
from tests.integration import conftest
from tests.integration.conftest import LoginNode, Plugin, remote_env, ssh_plugin, user_dir

REPO = Path(__file__).resolve().parent.parent
ILS_SH = REPO / "interlink_slurm" / "jobscript" / "ils.sh"
SSH_PORT = 18520  # the login node's sshd: within this checkout's port range (see brief)
POLL_SECONDS = 0.025  # how often a waiting client asks /status (the resolution of create → running)
BATCH = 500  # pods per /status call while waiting for them to run
# The random delay before each create: runs do not lock onto Slurm's 1 s scheduling tick.
JITTER = SystemRandom()


# --- the plugin, counted ----------------------------------------------------------------------


def counted_exe(workdir: Path) -> str:
    """A console script that runs the plugin under benchmarks.counted."""
    exe = workdir / "counted-serve"
    python = Path(conftest.EXE).parent / "python"
    exe.write_text(
        "#!/bin/sh\n"
        f"export PYTHONPATH={REPO} ILS_BENCH_COUNTS={workdir}/counts.json\n"
        f'exec {python} -m benchmarks.counted "$@"\n'
    )
    exe.chmod(0o755)
    return str(exe)


def start(plugin: Plugin) -> Plugin:
    saved = conftest.EXE
    conftest.EXE = counted_exe(plugin.workdir)
    try:
        plugin.start()
    finally:
        conftest.EXE = saved
    return plugin


def restart(plugin: Plugin, **config: Any) -> None:
    plugin.stop()
    plugin.settings.update(config)
    plugin.config_path.write_text(yaml.safe_dump(plugin.settings))
    start(plugin)


def transport_calls(plugin: Plugin) -> int:
    """Every transport call the plugin made so far (benchmarks.counted)."""
    assert plugin.proc is not None
    path = plugin.workdir / "counts.json"
    path.unlink(missing_ok=True)
    os.kill(plugin.proc.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the plugin did not write its transport counts")
        time.sleep(0.01)
    return sum(json.loads(path.read_text()).values())


def refreshes(plugin: Plugin) -> float:
    return metric(plugin, "interlink_slurm_scheduler_calls_total", 'operation="query",outcome="ok"')


# --- where the plugin runs: this machine, or the loopback login node --------------------------


class Setup:
    """The transport a benchmark's plugins use: local, or SSH to the loopback login node of
    deploy/local/remote.sh (an sshd on SSH_PORT, the job user's files)."""

    def __init__(self, cluster: dict[str, str], transport: str) -> None:
        self.cluster = cluster
        self.transport = transport
        self.node: LoginNode | None = None
        self.user = os.environ.get("USER", "root")
        self.made: list[Path] = []  # scratch directories, removed at the end

    def __enter__(self) -> Setup:
        if self.transport == "ssh":
            remote = remote_env()
            workdir = Path(tempfile.mkdtemp(prefix="ils-bench-sshd-"))
            self.made.append(workdir)
            self.node = LoginNode(remote, workdir, SSH_PORT)
            self.node.start()
            self.user = self.node.user
        return self

    def __exit__(self, *exc: object) -> None:
        if self.node is not None:
            self.node.stop()
        for path in self.made:
            shutil.rmtree(path, ignore_errors=True)

    def scratch(self, prefix: str) -> Path:
        """A directory the plugin's side (this user, or the job user over SSH) can use."""
        if self.node is not None:
            path = user_dir(self.node.user, prefix)
        else:
            path = Path(tempfile.mkdtemp(prefix=f"ils-{prefix}-"))
        self.made.append(path)
        return path

    def plugin(self, workdir: Path, **config: Any) -> Plugin:
        config = {"log_level": "warning", **config}
        if self.node is not None:
            return ssh_plugin(workdir, self.cluster, self.node, **config)
        return Plugin(workdir, self.cluster, **config)

    def cancel(self) -> None:
        cancel_all(self.cluster, self.user)


def shown_running_bin(setup: Setup) -> Path:
    """A slurm_bin_dir whose squeue shows held jobs RUNNING on node vm; the other commands are
    Slurm's own."""
    bindir = setup.scratch("bench-bin")
    for name in SLURM_COMMANDS:
        real = shutil.which(name)
        assert real is not None, f"{name} is not installed"
        if name != "squeue":
            (bindir / name).symlink_to(real)
    # Fields of the plugin's format %i|%T|%r|%N|%k: id, state, reason, nodes, comment.
    (bindir / "squeue").write_text(
        "#!/bin/bash\n"
        "set -o pipefail\n"
        f'{real_squeue()} "$@" | sed -e "s/^\\([0-9]*\\)|PENDING|JobHeld[A-Za-z]*|[^|]*|/'
        '\\1|RUNNING|None|vm|/"\n'
    )
    (bindir / "squeue").chmod(0o755)
    return bindir


def real_squeue() -> str:
    found = shutil.which("squeue")
    assert found is not None
    return found


def job_script_functions() -> str:
    """The job script library (ils.sh): its ils_now and ils_put write the state files as a
    job does (sourcing it defines functions only)."""
    return ILS_SH.read_text()


def write_running_states(pod_dirs: list[Path], user: str) -> None:
    """What the job script writes as its container starts, for every pod (see the module doc),
    as the pods' user: its state files, and the data root's mark (POD_DIR set as job.sh sets
    it)."""
    script = [job_script_functions(), "set -e", "now=$(ils_now)"]
    for d in pod_dirs:
        quoted = str(d).replace("'", "'\\''")
        script.append(
            f"POD_DIR='{quoted}' && cd \"$POD_DIR\" && ils_put job.runs 1"
            ' && ils_put containers/main.started "$now"'
        )
    # On standard input: at 10,000 pods the script is longer than a command line may be.
    argv = ["bash", "-s"]
    if user != os.environ.get("USER", "root"):
        argv = ["runuser", "-u", user, "--", *argv]
    subprocess.run(argv, input="\n".join(script) + "\n", text=True, check=True)


# --- pods -------------------------------------------------------------------------------------


def sleeper(name: str, seconds: int = 3600, memory_mib: int | None = None) -> dict[str, Any]:
    resources = (
        {"requests": {"cpu": "1", "memory": f"{memory_mib}Mi"}} if memory_mib is not None else {}
    )
    main = podgen.container("main", f"import time; time.sleep({seconds})")
    if resources:
        main["resources"] = resources
    return podgen.pod(name, [main])


def create_all(plugin: Plugin, pods: list[dict[str, Any]], clients: int = 8) -> None:
    def one(p: dict[str, Any]) -> None:
        r = plugin.create(podgen.retrieved(p))
        if r.status_code != 200:
            raise SystemExit(f"a create failed: {r.text}")

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, pods))


def running(status: dict[str, Any]) -> bool:
    return all("running" in c["state"] for c in status.get("containers") or [])


def wait_running(plugin: Plugin, pods: list[dict[str, Any]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    left = list(pods)
    while left:
        if time.monotonic() > deadline:
            raise SystemExit(f"{len(left)} pods not running after {timeout:g} s")
        still = []
        for start in range(0, len(left), BATCH):
            batch = left[start : start + BATCH]
            r = plugin.status(batch)
            assert r.status_code == 200, r.text
            up = {s["UID"] for s in r.json() if running(s)}
            still += [p for p in batch if p["metadata"]["uid"] not in up]
        left = still
        if left:
            time.sleep(0.5)


@contextlib.contextmanager
def running_pods(
    setup: Setup, n: int, real: bool, prefix: str, **config: Any
) -> Iterator[tuple[Plugin, list[dict[str, Any]]]]:
    """A plugin with ``n`` running pods (real sleep jobs, or shown running: see module doc)."""
    with tempfile.TemporaryDirectory(prefix="ils-bench-") as tmp:
        extra: dict[str, Any] = {"status_refresh_seconds": 2, **config}
        if not real:
            extra.update(sbatch_extra=HOLD, slurm_bin_dir=str(shown_running_bin(setup)))
        plugin = start(setup.plugin(Path(tmp), **extra))
        try:
            pods = [sleeper(f"{prefix}-{i}", memory_mib=SLEEPER_MEMORY_MIB) for i in range(n)]
            create_all(plugin, pods)
            if not real:
                write_running_states([plugin.pod_dir(p) for p in pods], setup.user)
            wait_running(plugin, pods, timeout=300 + n / 10)
            yield plugin, pods
        finally:
            plugin.stop()
            setup.cancel()


# --- /status with running pods ----------------------------------------------------------------


def bench_status_running(
    cluster: dict[str, str], real: int, synthetic: list[int], transports: list[str], calls: int
) -> None:
    print(
        "| transport | running pods | how | /status calls | p50 ms | p99 ms "
        "| transport calls per /status call | idle 20 s: transport calls | idle 20 s: queue "
        "queries |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for mode in transports:
        with Setup(cluster, mode) as setup:
            sizes = [(real, True)] if real else []
            sizes += [(n, False) for n in synthetic]
            for n, is_real in sizes:
                how = "real sleep jobs" if is_real else "held, shown running, files written"
                with running_pods(setup, n, is_real, f"sr{n}") as (plugin, pods):
                    # What the background refresh costs while nothing else happens: a state
                    # read every 2 s (over SSH one command; locally no transport call) and the
                    # queue, less often while nothing changes.
                    idle0, q0 = transport_calls(plugin), refreshes(plugin)
                    time.sleep(IDLE_WINDOW_SECONDS)
                    idle1, q1 = transport_calls(plugin), refreshes(plugin)
                    # The calls alone: no background refresh while they run (the one at start
                    # has read every pod).
                    restart(plugin, status_refresh_seconds=3600)
                    bodies = [json.dumps([p]) for p in pods]
                    c0 = transport_calls(plugin)
                    latencies = []
                    for i in range(calls):
                        body = bodies[(i * 7919) % n]
                        s = time.perf_counter()
                        r = plugin.client.request(
                            "GET", "/status", content=body, headers=plugin.headers
                        )
                        latencies.append((time.perf_counter() - s) * 1000)
                        assert r.status_code == 200 and running(r.json()[0]), r.text
                    per_call = (transport_calls(plugin) - c0) / calls
                print(
                    f"| {mode} | {n} | {how} | {calls} | {percentile(latencies, 50):.2f} | "
                    f"{percentile(latencies, 99):.2f} | {per_call:g} | {idle1 - idle0} "
                    f"| {q1 - q0:.0f} |",
                    flush=True,
                )


IDLE_WINDOW_SECONDS = 20


# --- create → running -------------------------------------------------------------------------


# What a sleep pod asks (one CPU, 256 MiB) and the startup floor job alike: 24 of them fit the local
# cluster at once, so neither waits for another to end.
SLEEPER_MEMORY_MIB = 256

FLOOR_SCRIPT = f"""#!/bin/bash
#SBATCH --partition=dcgp_usr_prod
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --mem={SLEEPER_MEMORY_MIB}M
#SBATCH --output=/dev/null
{{functions}}
ils_put job.runs 1
sleep 30
"""


def bench_startup(cluster: dict[str, str], n: int, runs: int, transport: str = "local") -> None:
    """Seconds from the create sent to the first /status that says running (p50, max), and the
    floor: sbatch of a plain script until its first state file exists, timed the same way.
    Also from each container's start (the time its job wrote in containers/main.started) to
    that first running answer: how long the plugin took to see it. ``transport``: the plugin's
    (ssh: to the loopback login node, as the job user); the floor is sbatch run here."""
    print(f"transport: {transport}")
    print(
        "| run | pods | plugin p50 s | plugin max s | floor p50 s | floor max s "
        "| started → seen p50 s | started → seen max s | create call p50 s | create call max s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run in range(1, runs + 1):
        plugin_times, seen_after, calls = startup_plugin(cluster, n, run, transport)
        floor_times = startup_floor(cluster, n)
        print(
            f"| {run} | {n} | {percentile(plugin_times, 50):.2f} | {max(plugin_times):.2f} | "
            f"{percentile(floor_times, 50):.2f} | {max(floor_times):.2f} | "
            f"{percentile(seen_after, 50):.2f} | {max(seen_after):.2f} | "
            f"{percentile(calls, 50):.2f} | {max(calls):.2f} |",
            flush=True,
        )


def startup_plugin(
    cluster: dict[str, str], n: int, run: int, transport: str
) -> tuple[list[float], list[float], list[float]]:
    """Each of ``n`` clients creates one pod after a random 0-1 s; one poller asks /status
    about every pod created and not yet seen running, in one call every POLL_SECONDS, as the
    virtual kubelet batches its status calls. (A client per pod polling every 25 ms made 800
    calls a second: that cost the plugin more CPU on 2 cores than its pods' start.)"""
    pods = [sleeper(f"cr{run}-{i}", 30, SLEEPER_MEMORY_MIB) for i in range(n)]
    sent: dict[str, float] = {}  # uid → when its create was sent
    call: dict[str, float] = {}  # uid → how long its create call took
    seen: dict[str, float] = {}  # uid → the first /status answer that said running
    seen_at: dict[str, float] = {}  # ... by the wall clock, which the job's files use
    lock = threading.Lock()
    with (
        Setup(cluster, transport) as setup,
        tempfile.TemporaryDirectory(prefix="ils-bench-") as tmp,
    ):
        plugin = start(setup.plugin(Path(tmp), status_refresh_seconds=2))
        try:

            def create(pod: dict[str, Any]) -> None:
                time.sleep(JITTER.uniform(0, 1))
                t0 = time.perf_counter()
                plugin.create_ok(podgen.retrieved(pod))
                took = time.perf_counter() - t0
                with lock:
                    sent[pod["metadata"]["uid"]] = t0
                    call[pod["metadata"]["uid"]] = took

            with ThreadPoolExecutor(n) as pool:
                created = [pool.submit(create, p) for p in pods]
                deadline = time.monotonic() + 120
                while len(seen) < n:
                    assert time.monotonic() < deadline, f"{n - len(seen)} pods never ran"
                    with lock:
                        asked = [
                            p
                            for p in pods
                            if p["metadata"]["uid"] in sent and p["metadata"]["uid"] not in seen
                        ]
                    if asked:
                        r = plugin.status(asked)
                        now, wall = time.perf_counter(), time.time()
                        assert r.status_code == 200, r.text
                        for status in r.json():
                            if running(status):
                                seen[status["UID"]] = now
                                seen_at[status["UID"]] = wall
                    time.sleep(POLL_SECONDS)
                for f in created:
                    f.result()
            after = [
                seen_at[p["metadata"]["uid"]] - started_at(plugin.pod_dir(p) / "containers")
                for p in pods
            ]
            return [seen[uid] - sent[uid] for uid in sent], after, list(call.values())
        finally:
            plugin.stop()
            setup.cancel()


def started_at(containers: Path) -> float:
    """When the job started the container main (its containers/main.started), epoch seconds."""
    text = (containers / "main.started").read_text().strip()
    whole, _, fraction = text.removesuffix("Z").partition(".")
    return datetime.fromisoformat(f"{whole}+00:00").timestamp() + float(f"0.{fraction or 0}")


def startup_floor(cluster: dict[str, str], n: int) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="ils-bench-floor-") as tmp:
        script = Path(tmp) / "job.sh"
        script.write_text(FLOOR_SCRIPT.format(functions=job_script_functions()))

        def one(i: int) -> float:
            workdir = Path(tmp) / str(i)
            workdir.mkdir()
            time.sleep(JITTER.uniform(0, 1))
            t0 = time.perf_counter()
            subprocess.run(
                ["sbatch", "--parsable", f"--chdir={workdir}", str(script)],
                env=slurm_env(cluster),
                check=True,
                capture_output=True,
            )
            while not (workdir / "job.runs").exists():
                time.sleep(POLL_SECONDS)
            return time.perf_counter() - t0

        try:
            with ThreadPoolExecutor(n) as pool:
                return list(pool.map(one, range(n)))
        finally:
            cancel_all(cluster)


# --- idle CPU ---------------------------------------------------------------------------------


def cpu_split(pid: int) -> tuple[float, float]:
    """The process's own CPU time (utime, stime of /proc/<pid>/stat) and that of its children
    it waited for (cutime, cstime: the sbatch, squeue... it ran)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the ")" the fields start at state (field 3): utime is field 14.
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def bench_idle(cluster: dict[str, str], n: int, seconds: float) -> None:
    print(
        "| tracked running pods | window s | queue queries | plugin CPU s | its children's CPU s "
        "| cores |"
    )
    print("|---|---|---|---|---|---|")
    with (
        Setup(cluster, "local") as setup,
        running_pods(setup, n, False, f"idle{n}") as (plugin, _),
    ):
        assert plugin.proc is not None
        time.sleep(5)  # past the creates' quick refreshes
        q0, t0 = refreshes(plugin), time.monotonic()
        own0, children0 = cpu_split(plugin.proc.pid)
        time.sleep(seconds)
        own1, children1 = cpu_split(plugin.proc.pid)
        q1, t1 = refreshes(plugin), time.monotonic()
    own, children = own1 - own0, children1 - children0
    print(
        f"| {n} | {t1 - t0:.0f} | {q1 - q0:.0f} | {own:.2f} | {children:.2f} "
        f"| {(own + children) / (t1 - t0):.3f} |",
        flush=True,
    )

"""The real thing: the plugin as a process, on the local Slurm cluster of deploy/local/cluster.sh.

The cluster is brought up once per session (idempotent). Nothing here is skipped when the cluster
cannot start: an integration suite that silently skips proves nothing.

The ``plugin`` fixture comes in three modes, and every test that uses it runs in each:
- ``local``: Slurm commands and files on this machine, as root;
- ``ssh``: the plugin (root) logs in to an sshd on 127.0.0.1 (own port, host key, config) as the
  job user ``ilsuser``: commands over exec, files over SFTP, jobs run as ilsuser;
- ``rest``: the plugin (root) submits through slurmrestd, which runs as ilsuser on a unix socket
  (local auth: jobs run as the socket's user); the pod files, which the jobs must be able to
  write, go through the SSH transport as ilsuser (a root plugin writing them locally would make
  them root's, out of the jobs' reach).
sshd and slurmrestd are started by session fixtures and stopped by pid, with what they spawned.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "deploy" / "local" / "cluster.sh"
REMOTE = REPO / "deploy" / "local" / "remote.sh"
EXE = str(Path(sys.executable).parent / "interlink-slurm")  # the console script
MODES = ("local", "ssh", "rest")
REST_VERSION = "v0.0.38"  # what Slurm 22.05's slurmrestd serves


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

    def __init__(
        self,
        workdir: Path,
        cluster: dict[str, str],
        *,
        user: str | None = None,
        mode: str = "local",
        environ: dict[str, str] | None = None,
        **config: Any,
    ) -> None:
        self.workdir = workdir
        self.environ = environ or {}  # the process's, over this one's
        self.cluster = cluster
        self.user = user  # the account the process runs as (None: this one)
        self.mode = mode
        self.port = free_port()
        self.data_root = Path(config.pop("data_root", workdir / "data"))
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
            "status_refresh_seconds": 0.5,
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
        env = {**os.environ, "USER": os.environ.get("USER", "root"), **self.environ}
        as_user: dict[str, Any] = {}
        if self.user is not None:
            home = pwd.getpwnam(self.user).pw_dir
            env.update(USER=self.user, LOGNAME=self.user, HOME=home)
            as_user = {"user": self.user, "group": self.user, "extra_groups": []}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [EXE, "serve", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.workdir,
            **as_user,
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

    def doctor(self, timeout: float) -> subprocess.CompletedProcess[str]:
        """``interlink-slurm doctor`` on this plugin's configuration."""
        return subprocess.run(
            [EXE, "doctor", "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

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
        return self.client.request(
            "GET", "/getLogs", content=self.log_body(pod, container, **opts), headers=self.headers
        )

    @staticmethod
    def log_body(pod: dict[str, Any], container: str, **opts: Any) -> str:
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
        return json.dumps(body)

    def wait_for_log(
        self, pod: dict[str, Any], container: str, expected: str, timeout: float = 60, **opts: Any
    ) -> str:
        """Wait until a running container's log is exactly `expected`.

        A container is reported running as soon as its process starts, a little before the
        process has written anything, so a log read right after a running status can be empty.
        """
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.logs(pod, container, **opts).text
            if text == expected:
                return text
            time.sleep(0.3)
        raise AssertionError(f"log of {container} is {text!r}, not {expected!r} after {timeout}s")

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
        ["squeue", "-h", "-a", "--states=all", "-j", job_id, "-o", "%T"],
        capture_output=True,
        text=True,
        env={**os.environ, "SLURM_CONF": cluster["SLURM_CONF"]},
    )
    return out.stdout.strip()  # a purged job: rc 1, "Invalid job id", nothing on stdout


def slurm(cluster: dict[str, str], *argv: str) -> str:
    """Run a Slurm command on the test cluster as an operator would; its stdout."""
    out = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "SLURM_CONF": cluster["SLURM_CONF"]},
    )
    return out.stdout


# What each node of deploy/local/cluster.sh declares (the cluster has ILS_NODES of them).
CPUS_PER_NODE = 16
GPUS_PER_NODE = 4


def nodes(cluster: dict[str, str]) -> list[str]:
    """The cluster's node names, n1, n2... (the partitions span them all)."""
    return sorted(set(slurm(cluster, "sinfo", "-h", "-N", "-o", "%N").split()))


def on_every_node(cluster: dict[str, str]) -> list[str]:
    """sbatch options for one task on each node: a job that fills the cluster, not one node."""
    return [f"--nodes={len(nodes(cluster))}", "--ntasks-per-node=1"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that stops slurmctld runs alone (make test): every other test's pods would see
    the outage."""
    for item in items:
        if "slurmctld_stopper" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.alone)


@pytest.fixture(scope="session")
def cluster() -> dict[str, str]:
    return cluster_env()


# --- processes we start, stopped by pid ---------------------------------------------------------


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    """Running (an exited process waiting to be reaped, a zombie, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return not stat.rsplit(")", 1)[1].split()[0].startswith("Z")


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (sshd's per-connection children, their sessions...)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _ppid(int(entry))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_tree(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Stop a process we started and everything it spawned: TERM, then KILL what is left."""
    pids = [proc.pid, *descendants(proc.pid)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)
    deadline = time.monotonic() + timeout
    for pid in pids[1:]:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def remote_env() -> dict[str, str]:
    """ILS_REMOTE_USER, ILS_SSH_KEY... after deploy/local/remote.sh setup (idempotent)."""
    subprocess.run([str(REMOTE), "setup"], check=True, stdout=sys.stderr)
    out = subprocess.run([str(REMOTE), "env"], check=True, capture_output=True, text=True).stdout
    env = {}
    for line in out.splitlines():
        key, _, value = line.removeprefix("export ").strip().partition("=")
        env[key] = shlex.split(value)[0]
    return env


_USER_DIRS: list[Path] = []


def user_dir(user: str, prefix: str) -> Path:
    """A fresh directory under /tmp owned by ``user`` (its parents are world-searchable), removed
    at the end of the session."""
    path = Path(tempfile.mkdtemp(prefix=f"ils-{prefix}-", dir="/tmp"))
    path.chmod(0o755)
    shutil.chown(path, user, user)
    _USER_DIRS.append(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def _remove_user_dirs() -> Iterator[None]:
    yield
    for path in _USER_DIRS:
        shutil.rmtree(path, ignore_errors=True)


class LoginNode:
    """An sshd on 127.0.0.1 playing a cluster's login node: its own port, host key, config."""

    def __init__(
        self,
        remote: dict[str, str],
        workdir: Path,
        port: int | None = None,
        extra_config: str = "",
    ) -> None:
        self.remote = remote
        self.user = remote["ILS_REMOTE_USER"]
        self.port = port or free_port()
        self.workdir = workdir
        self.config = workdir / f"sshd-{self.port}.conf"
        self.log = workdir / f"sshd-{self.port}.log"
        self.known_hosts = workdir / f"known_hosts-{self.port}"
        host_key = remote["ILS_SSH_HOST_KEY"]
        # sshd keeps the first value of a keyword: extra_config comes first to override.
        self.config.write_text(
            f"""{extra_config}Port {self.port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile none
AuthorizedKeysFile {remote["ILS_REMOTE_DIR"]}/authorized_keys
AllowUsers {self.user}
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM no
StrictModes no
PermitRootLogin no
MaxSessions 20
MaxStartups 50
Subsystem sftp internal-sftp
"""
        )
        key_type, key = Path(f"{host_key}.pub").read_text().split()[:2]
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {key_type} {key}\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                ["/usr/sbin/sshd", "-D", "-e", "-f", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited at start:\n{self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(4) == b"SSH-":
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"sshd did not start:\n{self.log.read_text()}")

    def logins(self) -> int:
        """How many logins sshd has accepted so far."""
        return self.log.read_text().count("Accepted publickey")

    def sessions(self) -> list[int]:
        """The processes serving the current connections (not the listener)."""
        return descendants(self.proc.pid) if self.proc is not None else []

    def stop(self) -> None:
        """The login node goes away: the listener and every connection it serves."""
        if self.proc is not None:
            kill_tree(self.proc)
            self.proc = None

    def ssh_settings(self, **overrides: Any) -> dict[str, Any]:
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "user": self.user,
            "key_file": self.remote["ILS_SSH_KEY"],
            "known_hosts": str(self.known_hosts),
            "connect_timeout": 5,
            "keepalive_seconds": 5,
            **overrides,
        }


class RestServer:
    """slurmrestd as the job user on a unix socket (local auth: that user submits the jobs)."""

    def __init__(self, cluster: dict[str, str], user: str, workdir: Path) -> None:
        self.user = user
        self.dir = workdir
        self.socket = workdir / "slurmrestd.sock"
        self.log = workdir / "slurmrestd.log"
        self.cluster = cluster
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        home = pwd.getpwnam(self.user).pw_dir
        env = {
            "SLURM_CONF": self.cluster["SLURM_CONF"],
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": home,
            "USER": self.user,
        }
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    "slurmrestd",
                    "-a",
                    "rest_auth/local",
                    "-s",
                    f"openapi/{REST_VERSION}",
                    f"unix:{self.socket}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.dir,
                user=self.user,
                group=self.user,
                extra_groups=[],
            )
        client = httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket)), timeout=5)
        deadline = time.monotonic() + 15
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"slurmrestd exited at start:\n{self.log.read_text()}")
                try:
                    r = client.get(f"http://slurmrestd/slurm/{REST_VERSION}/ping")
                    if r.status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError(f"slurmrestd did not start:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None:
            kill_tree(self.proc)
            self.proc = None


def ssh_plugin(workdir: Path, cluster: dict[str, str], node: LoginNode, **config: Any) -> Plugin:
    """A plugin (as root) whose Slurm and files are on ``node``, as its user."""
    data_root = user_dir(node.user, "ssh") / "data"
    mode = "rest" if config.get("scheduler") == "rest" else "ssh"
    return Plugin(
        workdir,
        cluster,
        mode=mode,
        **{
            "data_root": str(data_root),
            "state_db": str(workdir / "state.db"),
            "transport": "ssh",
            "ssh": node.ssh_settings(),
            "command_timeout": 20,
            **config,
        },
    )


def rest_plugin(
    workdir: Path, cluster: dict[str, str], server: RestServer, node: LoginNode, **config: Any
) -> Plugin:
    """A plugin (as root) that submits through ``server`` and writes the pod files on ``node``,
    both as the job user."""
    return ssh_plugin(
        workdir,
        cluster,
        node,
        **{
            "scheduler": "rest",
            "rest": {"url": server.url, "api_version": REST_VERSION, "timeout": 20},
            **config,
        },
    )


@pytest.fixture(scope="session")
def remote(cluster: dict[str, str]) -> dict[str, str]:
    return remote_env()


@pytest.fixture(scope="session")
def login_node(
    remote: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LoginNode]:
    node = LoginNode(remote, tmp_path_factory.mktemp("login-node"))
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def own_login_node(remote: dict[str, str], tmp_path: Path) -> Iterator[LoginNode]:
    """A login node of this test's own, which it may take down."""
    node = LoginNode(remote, tmp_path)
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def rest_server(cluster: dict[str, str], remote: dict[str, str]) -> Iterator[RestServer]:
    user = remote["ILS_REMOTE_USER"]
    server = RestServer(cluster, user, user_dir(user, "slurmrestd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session", params=MODES)
def plugin(
    request: pytest.FixtureRequest,
    cluster: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Plugin]:
    """The plugin, once per mode: local, ssh (login node over SSH), rest (slurmrestd)."""
    mode = request.param
    workdir = tmp_path_factory.mktemp(f"plugin-{mode}")
    if mode == "ssh":
        p = ssh_plugin(workdir, cluster, request.getfixturevalue("login_node"))
    elif mode == "rest":
        server = request.getfixturevalue("rest_server")
        p = rest_plugin(workdir, cluster, server, request.getfixturevalue("login_node"))
    else:
        p = Plugin(workdir, cluster)
    p.start()
    try:
        yield p
    finally:
        p.stop()

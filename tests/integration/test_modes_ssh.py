"""The SSH transport against a real sshd: one connection for everything, a bounded number of
channels, login with an OpenSSH certificate, and no hang when the login node freezes."""

from __future__ import annotations

import errno
import os
import signal
import socket
import stat
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from interlink_slurm.slurm.remote_settings import SSHSettings
from interlink_slurm.slurm.ssh import LIVENESS_SECONDS, SSHTransport, SSHUnavailable
from interlink_slurm.slurm.transport import TreeItem
from tests.integration.conftest import LoginNode, user_dir

pytestmark = pytest.mark.slurm


def transport(node: LoginNode, cluster: dict[str, str], **settings: Any) -> SSHTransport:
    config = SSHSettings.model_validate(node.ssh_settings(**settings))
    return SSHTransport(config, env={"SLURM_CONF": cluster["SLURM_CONF"]}, timeout=10)


def test_many_concurrent_calls_share_one_connection_and_a_few_channels(
    remote: dict[str, str], cluster: dict[str, str], tmp_path: Path
) -> None:
    # sshd refuses a channel beyond MaxSessions: any call past the bound would fail.
    node = LoginNode(remote, tmp_path, extra_config="MaxSessions 3\n")
    node.start()
    try:
        check_channels(node, cluster)
    finally:
        node.stop()


def check_channels(own_login_node: LoginNode, cluster: dict[str, str]) -> None:
    t = transport(own_login_node, cluster, max_channels=3)
    root = user_dir(own_login_node.user, "pool")
    t.write_file(f"{root}/f", b"shared\n", 0o600)

    def call(i: int) -> object:
        if i % 3 == 0:
            return t.run(["sinfo", "-h", "-o", "%P"], timeout=30).stdout
        if i % 3 == 1:
            return t.read_file(f"{root}/f", 100)
        return t.size(f"{root}/f")

    peak = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, len(channel_processes(own_login_node)))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(24) as pool:
            results = list(pool.map(call, range(120)))
    finally:
        done.set()
        watcher.join()
        t.close()

    assert results.count(b"shared\n") == 40 and results.count(7) == 40
    assert all("dcgp_usr_prod" in r for r in results if isinstance(r, str))
    assert own_login_node.logins() == 1  # every call went over the same connection
    # Seen from sshd's side, a channel's process may outlive the channel by a moment.
    assert 1 <= peak <= 3 + 1


def _stat(pid: int) -> tuple[str, int, int] | None:
    """comm, parent pid and owner of a live process (None for one gone or exiting)."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        state, ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:2]
        uid = os.stat(f"/proc/{pid}").st_uid
    except (OSError, ValueError):
        return None
    return None if state in ("Z", "X") else (comm, int(ppid), uid)


def channel_processes(node: LoginNode) -> list[int]:
    """One process per open channel: the children of the unprivileged sshd that serves the
    connection (itself a child of the root-owned monitor)."""
    info = {pid: _stat(pid) for pid in node.sessions()}
    servers = {
        pid
        for pid, st in info.items()
        if st is not None
        and st[0] == "sshd"
        and st[2] != 0
        and (parent := info.get(st[1])) is not None
        and parent[2] == 0
    }
    return [pid for pid, st in info.items() if st is not None and st[1] in servers]


def test_login_with_an_openssh_certificate(
    remote: dict[str, str], cluster: dict[str, str], tmp_path: Path
) -> None:
    def keygen(*argv: str) -> None:
        subprocess.run(["ssh-keygen", "-q", *argv], check=True)

    keygen("-t", "ed25519", "-N", "", "-C", "site CA", "-f", str(tmp_path / "ca"))
    keygen("-t", "ed25519", "-N", "", "-C", "plugin", "-f", str(tmp_path / "id_cert"))
    user = remote["ILS_REMOTE_USER"]
    keygen(
        "-s",
        str(tmp_path / "ca"),
        "-I",
        "interlink-slurm",
        "-n",
        user,
        "-V",
        "+1h",
        str(tmp_path / "id_cert.pub"),
    )
    ca = tmp_path / "ca.pub"
    ca.chmod(0o644)
    node = LoginNode(remote, tmp_path, extra_config=f"TrustedUserCAKeys {ca}\n")
    node.start()
    try:
        # The key alone is in no authorized_keys file: only its certificate lets it in.
        # (A copy: paramiko would pick up id_cert-cert.pub beside id_cert by itself.)
        (tmp_path / "id_bare").write_bytes((tmp_path / "id_cert").read_bytes())
        (tmp_path / "id_bare").chmod(0o600)
        bare = transport(node, cluster, key_file=str(tmp_path / "id_bare"))
        with pytest.raises(SSHUnavailable, match=f"login as {user} refused"):
            bare.run(["true"], timeout=10)
        certified = transport(
            node,
            cluster,
            key_file=str(tmp_path / "id_cert"),
            certificate_file=str(tmp_path / "id_cert-cert.pub"),
        )
        assert certified.run(["id", "-un"], timeout=10).stdout.strip() == user
        certified.close()
        assert "ID interlink-slurm" in node.log.read_text()
    finally:
        node.stop()


def test_a_slow_command_timing_out_leaves_the_others_on_the_connection_running(
    own_login_node: LoginNode, cluster: dict[str, str]
) -> None:
    # Seen with 10,000 pods over SSH: one command past its timeout dropped the connection that
    # every thread shares, and a file write in flight on it failed. A login node that still
    # answers keeps its connection: only the slow call fails.
    t = transport(own_login_node, cluster)
    root = user_dir(own_login_node.user, "slow")
    with ThreadPoolExecutor(2) as pool:
        longer = pool.submit(t.run, ["sh", "-c", "sleep 3; echo done"], timeout=20)
        time.sleep(0.3)  # the longer command is in flight before the slow one times out
        with pytest.raises(SSHUnavailable, match=r"sleep: no answer within 1 s"):
            t.run(["sleep", "10"], timeout=1)
        t.write_file(f"{root}/f", b"written after the timeout\n", 0o600)
        assert longer.result().stdout == "done\n"
    assert t.read_file(f"{root}/f", 100) == b"written after the timeout\n"
    assert own_login_node.logins() == 1
    t.close()


def test_a_frozen_login_node_times_out_and_the_next_call_reconnects(
    own_login_node: LoginNode, cluster: dict[str, str]
) -> None:
    t = transport(own_login_node, cluster)
    t._timeout = 1.5  # of file operations (command_timeout in the service)
    root = user_dir(own_login_node.user, "frozen")
    t.write_file(f"{root}/f", b"x", 0o600)
    frozen: list[int] = []

    def freeze() -> None:
        for pid in own_login_node.sessions():  # what serves our connection, not the listener
            if pid not in frozen:
                os.kill(pid, signal.SIGSTOP)
                frozen.append(pid)

    try:
        freeze()
        started = time.monotonic()
        with pytest.raises(SSHUnavailable, match=r"reading .*/f: no answer within 1\.5 s"):
            t.read_file(f"{root}/f", 10)
        assert time.monotonic() - started < 1.5 + LIVENESS_SECONDS + 1  # the keepalive unanswered
        # That connection was given up: the next call logs in again.
        assert t.run(["true"], timeout=10).returncode == 0
        assert own_login_node.logins() == 2
        freeze()
        started = time.monotonic()
        with pytest.raises(SSHUnavailable, match=r"no answer within 1\.5 s"):
            t.run(["sinfo"], timeout=1.5)
        assert time.monotonic() - started < 1.5 + LIVENESS_SECONDS + 1  # the keepalive unanswered
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    assert t.read_file(f"{root}/f", 10) == b"x"
    assert own_login_node.logins() == 3
    t.close()


def test_a_tree_is_written_in_one_exec_with_its_modes_names_and_bytes(
    login_node: LoginNode, cluster: dict[str, str]
) -> None:
    t = transport(login_node, cluster)
    base = user_dir(login_node.user, "tree") / "data" / "ns"
    long_name = "v" * 180  # past tar's 100-byte name field: kept whole by the pax header
    payload = bytes(range(256)) * 8192  # 2 MiB: more than one SSH window
    items = [
        TreeItem("pod", 0o700),
        TreeItem("pod/containers", 0o700),
        TreeItem("pod/containers/main.env", 0o600, b"A='x y'\n"),
        TreeItem(f"pod/volumes/{long_name}", 0o700),
        TreeItem(f"pod/volumes/{long_name}/é.bin", 0o644, payload),
        TreeItem("pod/job.sh", 0o700, b"#!/bin/bash\n"),
    ]
    before = time.time()

    t.write_tree(str(base), 0o711, items)

    pod = base / "pod"
    assert stat.S_IMODE(base.stat().st_mode) == 0o711
    assert stat.S_IMODE(base.parent.stat().st_mode) == 0o755  # made on the way
    for item in items:
        path = base / item.path
        assert stat.S_IMODE(path.stat().st_mode) == item.mode, item.path
        assert path.owner() == login_node.user
        assert path.stat().st_mtime >= before - 1  # stamped now, not 1970: the reader compares
    assert (pod / f"volumes/{long_name}/é.bin").read_bytes() == payload
    assert (pod / "containers/main.env").read_text() == "A='x y'\n"
    t.close()


def test_a_tree_the_login_node_cannot_write_is_an_os_error_naming_why(
    login_node: LoginNode, cluster: dict[str, str]
) -> None:
    t = transport(login_node, cluster)
    base = user_dir(login_node.user, "tree")

    with pytest.raises(OSError) as too_long:
        t.write_tree(
            str(base), 0o711, [TreeItem("pod", 0o700), TreeItem("pod/" + "x" * 300, 0o600, b"")]
        )
    assert too_long.value.errno == errno.ENAMETOOLONG
    assert "File name too long" in str(too_long.value)

    # Refused before tar reads its input: more input than the channel's window still ends
    # with the login node's answer, not a broken connection.
    big = TreeItem("pod/big", 0o600, b"x" * (8 << 20))
    with pytest.raises(OSError) as denied:
        t.write_tree("/root/ils-tree-test", 0o711, [TreeItem("pod", 0o700), big])
    assert denied.value.errno == errno.EACCES
    assert not Path("/root/ils-tree-test").exists()
    t.close()


def test_the_connection_sends_small_packets_at_once(
    login_node: LoginNode, cluster: dict[str, str]
) -> None:
    # With Nagle's algorithm on, opening each exec's channel waited for a delayed ACK: 40 ms
    # per command on loopback (4.8 ms without), for every sbatch, squeue and state read.
    t = transport(login_node, cluster)
    assert t.run(["true"], timeout=10).returncode == 0
    sock = t._connection().sock
    assert isinstance(sock, socket.socket)
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    t.close()

"""`interlink-slurm serve`: listening on a unix socket, refusing a bad configuration."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests import podgen
from tests.integration.conftest import all_terminated, states

pytestmark = pytest.mark.slurm
EXE = str(Path(sys.executable).parent / "interlink-slurm")


def test_unix_socket_with_file_mode_serves_the_api(cluster: dict[str, str], tmp_path: Path) -> None:
    sock = tmp_path / "plugin.sock"
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": f"unix://{sock}",
                "socket_mode": 0o600,
                "data_root": str(tmp_path / "data"),
                "runtime": "charliecloud",
                "images": {"debian-python": cluster["ILS_IMAGE"]},
                "slurm_conf": cluster["SLURM_CONF"],
            }
        )
    )
    proc = subprocess.Popen(
        [EXE, "serve", "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        client = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://plugin", timeout=30
        )
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        pod = podgen.pod("over-socket", [podgen.container("main", "print('via unix socket')")])
        r = client.post("/create", content=json.dumps(podgen.retrieved(pod)))
        assert r.status_code == 200, r.text
        for _ in range(300):
            status = client.request("GET", "/status", content=json.dumps([pod])).json()[0]
            if all_terminated(status):
                break
            time.sleep(0.2)
        assert states(status)["main"]["terminated"]["exitCode"] == 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_bad_configuration_stops_the_service_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("data_root: /tmp/x\nruntime: podman\nimagez: {}\n")
    r = subprocess.run(
        [EXE, "serve", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2
    assert "runtime" in r.stderr and "imagez: unknown key" in r.stderr

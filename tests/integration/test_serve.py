"""`interlink-slurm serve`: listening on a unix socket, refusing a bad configuration."""

from __future__ import annotations

import json
import ssl
import stat
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests import podgen
from tests.integration.conftest import EXE, all_terminated, free_port, states

pytestmark = pytest.mark.slurm


def test_unix_socket_with_file_mode_serves_the_api(
    cluster: dict[str, str], tmp_path: Path, socket_dir: Path
) -> None:
    sock = socket_dir / "plugin.sock"
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
    # Its log goes to a file: a pipe nobody reads would stop the service once it is full.
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [EXE, "serve", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
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
        assert states(status)["main"]["terminated"]["exitCode"] == 0, status
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_bad_configuration_stops_the_service_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("data_root: /tmp/x\nruntime: podman\nimagez: {}\n")
    r = subprocess.run(
        [EXE, "serve", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2
    assert "runtime" in r.stderr and "imagez: unknown key" in r.stderr


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def certificates(tmp_path: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all from that CA."""
    d = tmp_path / "pki"
    d.mkdir()
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=ils-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        cwd=d,
    )
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, cn in (("server", "127.0.0.1"), ("client", "interlink")):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={cn}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            cwd=d,
        )
        extra = ["-extfile", "server.ext"] if name == "server" else []
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            f"{name}.crt",
            *extra,
            cwd=d,
        )
    return d


def test_mutual_tls_admits_only_clients_with_a_certificate_from_the_ca(
    cluster: dict[str, str], tmp_path: Path, certificates: Path
) -> None:
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": f"127.0.0.1:{port}",
                "data_root": str(tmp_path / "data"),
                "runtime": "charliecloud",
                "slurm_conf": cluster["SLURM_CONF"],
                "tls_cert_file": str(certificates / "server.crt"),
                "tls_key_file": str(certificates / "server.key"),
                "tls_client_ca_file": str(certificates / "ca.crt"),
            }
        )
    )
    proc = subprocess.Popen(
        [EXE, "serve", "--config", str(config)],
        stdout=(tmp_path / "serve.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"https://127.0.0.1:{port}"
    context = ssl.create_default_context(cafile=str(certificates / "ca.crt"))
    context.load_cert_chain(str(certificates / "client.crt"), str(certificates / "client.key"))
    trusted = httpx.Client(verify=context, timeout=10)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = trusted.get(f"{url}/healthz")
                break
            except httpx.TransportError:  # not listening yet, or mid-start
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        assert r.status_code == 200
        assert trusted.request("GET", f"{url}/status", content="[]").status_code == 200
        anonymous = httpx.Client(verify=str(certificates / "ca.crt"), timeout=10)
        with pytest.raises(httpx.HTTPError):
            anonymous.get(f"{url}/healthz")
        anonymous.close()
    finally:
        trusted.close()
        proc.terminate()
        proc.wait(timeout=30)

"""Container health check: GET /healthz where the service listens; exit 0 when it answers 200.

The address comes from the service's own configuration (the file named by INTERLINK_SLURM_CONFIG
and the INTERLINK_SLURM_* overrides), read with the service's loader, so the check follows
`listen` whether it is HOST:PORT or unix:///path.
"""

from __future__ import annotations

import http.client
import os
import socket
import sys
from pathlib import Path

TIMEOUT = 3.0


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def connection(listen: str) -> http.client.HTTPConnection:
    if listen.startswith("unix://"):
        return UnixHTTPConnection(listen.removeprefix("unix://"), TIMEOUT)
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    # A wildcard bind address is reached on loopback.
    if host in ("0.0.0.0", ""):  # noqa: S104 (an address to connect to, not to bind)
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)


def main() -> int:
    from interlink_slurm.config import ConfigError, load_settings

    config = os.environ.get("INTERLINK_SLURM_CONFIG")
    try:
        settings = load_settings(Path(config) if config else None)
    except ConfigError as err:
        print(f"unhealthy: {err}", file=sys.stderr)
        return 1
    conn = connection(settings.listen)
    try:
        conn.request("GET", "/healthz")
        status = conn.getresponse().status
    except OSError as err:
        print(f"unhealthy: {settings.listen}: {err}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    if status != 200:
        print(f"unhealthy: /healthz answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

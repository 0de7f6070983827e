"""A real container registry for tests: Debian's docker-registry (the CNCF distribution
registry), on a free port of 127.0.0.1 over plain HTTP, storing under a test's directory.

Images are pushed through the registry's own HTTP API (blobs, then a manifest): a one-layer
image whose single file holds the given text, so each push of new text moves the tag to a
new digest.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import socket
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import bcrypt
import httpx

BINARY = "docker-registry"
MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def available() -> bool:
    return shutil.which(BINARY) is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _layer(text: str) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        data = text.encode()
        info = tarfile.TarInfo("content.txt")
        info.size = len(data)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Registry:
    """One registry process; ``host`` is its ``127.0.0.1:PORT``."""

    def __init__(self, root: Path, user: tuple[str, str] | None = None) -> None:
        """``user``: (name, password) the registry asks for (HTTP Basic, htpasswd)."""
        self.root = root
        self.port = _free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.user = user
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "warn"},
            "storage": {"filesystem": {"rootdirectory": str(self.root / "data")}},
            "http": {"addr": self.host},
        }
        if self.user is not None:
            name, password = self.user
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
            (self.root / "htpasswd").write_text(f"{name}:{hashed}\n")
            path = str(self.root / "htpasswd")
            config["auth"] = {"htpasswd": {"realm": "tests", "path": path}}
        (self.root / "config.yml").write_text(json.dumps(config))
        config_file = self.root / "config.yml"
        log = (self.root / "registry.log").open("ab")
        self._proc = subprocess.Popen(
            [BINARY, "serve", str(config_file)], stdout=log, stderr=log, start_new_session=True
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://{self.host}/v2/", timeout=1).status_code in (200, 401):
                    return
            except httpx.HTTPError:
                pass
            if self._proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"docker-registry did not start: {(self.root / 'registry.log')}")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def _blob(self, client: httpx.Client, repository: str, data: bytes) -> str:
        digest = _digest(data)
        started = client.post(f"/v2/{repository}/blobs/uploads/")
        started.raise_for_status()
        location = started.headers["Location"]
        sep = "&" if "?" in location else "?"
        client.put(
            f"{location}{sep}digest={digest}",
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        ).raise_for_status()
        return digest

    def push(self, repository: str, tag: str, text: str) -> str:
        """Push a one-file image as ``repository:tag``; its manifest's digest."""
        auth = httpx.BasicAuth(*self.user) if self.user else None
        with httpx.Client(base_url=f"http://{self.host}", timeout=10, auth=auth) as client:
            layer = _layer(text)
            config = json.dumps(
                {
                    "architecture": "amd64",
                    "os": "linux",
                    "config": {"Cmd": ["cat", "/content.txt"]},
                    "rootfs": {
                        "type": "layers",
                        "diff_ids": [_digest(gzip.decompress(layer))],
                    },
                }
            ).encode()
            manifest = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": MANIFEST,
                    "config": {
                        "mediaType": "application/vnd.docker.container.image.v1+json",
                        "size": len(config),
                        "digest": self._blob(client, repository, config),
                    },
                    "layers": [
                        {
                            "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                            "size": len(layer),
                            "digest": self._blob(client, repository, layer),
                        }
                    ],
                }
            ).encode()
            put = client.put(
                f"/v2/{repository}/manifests/{tag}",
                content=manifest,
                headers={"Content-Type": MANIFEST},
            )
            put.raise_for_status()
            digest: str = put.headers["Docker-Content-Digest"]
            assert digest == _digest(manifest)
            return digest

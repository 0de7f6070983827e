"""Images pulled into a shared cache (``image_cache_dir``): Apptainer/Singularity convert a
registry reference into a SIF file once, keyed by the reference, and later pods reuse it. Pure.

The job converts what is missing before its containers start, one conversion at a time per
image (``flock`` on ``<sif>.lock``), into ``<sif>.part`` then renamed, so a reader never sees a
half-written image. Registry credentials come from the pod's ``imagePullSecrets`` (when interLink
sent those secrets): written to a 0600 file in the pod directory, given to the pull only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from interlink_slurm.translate.plan import FileSpec
from interlink_slurm.wire import Secret

PULL_SCHEMES = ("docker://", "oras://", "library://")
DOCKER_HUB = "docker.io"
_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")
_CRED_PREFIX = {"apptainer": "APPTAINER_DOCKER_", "singularity": "SINGULARITY_DOCKER_"}


@dataclass(frozen=True)
class ImagePull:
    sif: str  # absolute path in the cache
    source: str  # docker://..., oras://...
    auth: str | None = None  # credentials file, relative to the pod directory


def cached_sif(cache_dir: str, source: str) -> str:
    """The cache file of a reference: readable name + hash of the exact reference."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    slug = _SLUG.sub("_", source.split("://", 1)[-1]).strip("_")[:80]
    return f"{cache_dir.rstrip('/')}/{slug}-{digest}.sif"


def registry_of(source: str) -> str:
    """The registry host of a docker:// reference (Docker Hub when it names none)."""
    path = source.split("://", 1)[-1]
    first, _, rest = path.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first
    return DOCKER_HUB


def _auths(secret: Secret) -> Mapping[str, object]:
    raw = secret.data.get(".dockerconfigjson")
    try:
        text = (
            base64.b64decode(raw, validate=True).decode()
            if raw is not None
            else secret.string_data.get(".dockerconfigjson", "")
        )
        config = json.loads(text) if text else {}
    except (binascii.Error, ValueError):
        return {}
    auths = config.get("auths") if isinstance(config, dict) else None
    return auths if isinstance(auths, dict) else {}


def _host(key: str) -> str:
    host = key.split("://", 1)[-1].split("/", 1)[0]
    return DOCKER_HUB if host in ("index.docker.io", "registry-1.docker.io") else host


def credentials(secrets: Sequence[Secret], registry: str) -> tuple[str, str] | None:
    """(username, password) for a registry from dockerconfigjson secrets, first match wins."""
    for secret in secrets:
        for key, entry in _auths(secret).items():
            if _host(key) != registry or not isinstance(entry, dict):
                continue
            user, password = entry.get("username"), entry.get("password")
            if not (isinstance(user, str) and isinstance(password, str)):
                try:
                    user, _, password = (
                        base64.b64decode(str(entry.get("auth", ""))).decode().partition(":")
                    )
                except (binascii.Error, ValueError):
                    continue
            if user and password and "\x00" not in user + password:
                return user, password
    return None


def plan_pulls(
    runtime: str,
    cache_dir: str,
    sources: Sequence[str],
    pull_secrets: Sequence[Secret],
) -> tuple[dict[str, str], list[ImagePull], list[FileSpec]]:
    """For each pullable source: its cache file (source → sif), the pulls, credential files."""
    mapping: dict[str, str] = {}
    pulls: list[ImagePull] = []
    files: list[FileSpec] = []
    for source in dict.fromkeys(sources):
        if not source.startswith(PULL_SCHEMES):
            continue
        sif = cached_sif(cache_dir, source)
        mapping[source] = sif
        auth = None
        creds = credentials(pull_secrets, registry_of(source)) if pull_secrets else None
        if creds is not None and source.startswith("docker://"):
            prefix = _CRED_PREFIX[runtime]
            auth = f"pull/{hashlib.sha256(source.encode()).hexdigest()[:16]}.auth"
            entries = [f"{prefix}USERNAME={creds[0]}", f"{prefix}PASSWORD={creds[1]}"]
            files.append(FileSpec(auth, b"".join(e.encode() + b"\0" for e in entries), 0o600))
        pulls.append(ImagePull(sif, source, auth))
    return mapping, pulls, files

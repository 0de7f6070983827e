"""Images pulled into a shared cache (``image_cache_dir``): a registry reference is converted
once into an image file, keyed by the reference, and later pods reuse it. Pure.

Apptainer/Singularity pull any of ``docker://``, ``oras://``, ``library://`` into a SIF file;
Enroot imports ``docker://`` images into a squashfs file (``.sqsh``) that ``enroot start`` runs.
The job converts what is missing before its containers start, one conversion at a time per
image (``flock`` on ``<target>.lock``), into ``<target>.part`` then renamed, so a reader never
sees a half-written image (see ``script.PULL``). Registry credentials come from the pod's
``imagePullSecrets`` (when interLink sent those secrets): written to 0600 files in the pod
directory, given to the pull only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from interlink_slurm.errors import PodRejected
from interlink_slurm.translate.plan import FileSpec, JobPlan, PlannedPull
from interlink_slurm.wire import Secret

if TYPE_CHECKING:  # the runtimes' modules use this one's helpers
    from interlink_slurm.translate.runtimes.base import Runtime

# Every registry scheme some runtime pulls (what each can: Runtime.pull_schemes).
PULL_SCHEMES = ("docker://", "oras://", "library://")
DOCKER_HUB = "docker.io"
# Docker Hub's registry API, as enroot must be told it, and its token service.
HUB_REGISTRY = "registry-1.docker.io"
HUB_AUTH = "auth.docker.io"
_HUB_ALIASES = frozenset({DOCKER_HUB, "index.docker.io", HUB_REGISTRY})
_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")


def _digest(source: str) -> str:
    """What names a reference's files: its cache file and its credentials in the pod dir."""
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def cached_image(cache_dir: str, source: str, extension: str = "sif") -> str:
    """The cache file of a reference: readable name + hash of the exact reference."""
    slug = _SLUG.sub("_", source.split("://", 1)[-1]).strip("_")[:80]
    return f"{cache_dir.rstrip('/')}/{slug}-{_digest(source)}.{extension}"


def _registry_host(path: str) -> tuple[str, str]:
    """(The registry host a reference's path names first, the rest of it); ("", path) when
    its first element is no host (no '.', no port, not localhost)."""
    first, _, rest = path.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return "", path


def registry_of(source: str) -> str:
    """The registry host of a docker:// reference (Docker Hub when it names none)."""
    host, _ = _registry_host(source.split("://", 1)[-1])
    return DOCKER_HUB if not host or host in _HUB_ALIASES else host


@dataclass(frozen=True)
class ManifestRef:
    """Where a registry serves the manifest a docker:// reference names."""

    registry: str  # host[:port] as the pod names it (Docker Hub: docker.io)
    endpoint: str  # the host the registry API is asked at (Docker Hub: registry-1.docker.io)
    repository: str  # library/python for Docker Hub's official images
    reference: str  # the tag (latest when none is given)


def manifest_ref(source: str) -> ManifestRef:
    """The registry, repository and tag of a docker:// reference without a digest."""
    host, path = _registry_host(source.removeprefix("docker://"))
    registry = registry_of(source)
    name, tag = _split_tag(path)
    if registry == DOCKER_HUB and "/" not in name:
        name = f"library/{name}"
    endpoint = HUB_REGISTRY if registry == DOCKER_HUB else host
    return ManifestRef(registry, endpoint, name, tag or "latest")


def _split_tag(path: str) -> tuple[str, str]:
    """(name, tag) of ``name[:tag]``: a tag follows the last ':' after the last '/'."""
    slash = path.rfind("/")
    colon = path.rfind(":")
    return (path[:colon], path[colon + 1 :]) if colon > slash else (path, "")


def pull_policy(image: str, policy: str) -> str:
    """A container's imagePullPolicy as the API server defaults it when it is not set: Always
    for an image tagged ``latest`` or not tagged, IfNotPresent otherwise."""
    if policy:
        return policy
    if "@" in image:
        return "IfNotPresent"
    tag = _split_tag(image.split("://", 1)[-1])[1]
    return "Always" if tag in ("", "latest") else "IfNotPresent"


def image_id(source: str) -> str:
    """The imageID the kubelet reports for a docker:// reference pinned to a digest
    (``docker.io/library/python@sha256:…``); empty for any other."""
    name, at, digest = source.removeprefix("docker://").partition("@")
    if not (source.startswith("docker://") and at and digest.startswith("sha256:")):
        return ""
    ref = manifest_ref(f"docker://{name}")
    return f"{ref.registry}/{ref.repository}@{digest}"


def image_ids(plan: JobPlan) -> dict[str, str]:
    """Container → the imageID of its image, for the images pulled or run by a digest (one the
    pod names, or its Always lookup pinned)."""
    sources = {p.target: p.source for p in plan.image_pulls}
    found = {}
    for c in (*plan.init_containers, *plan.containers):
        if found_id := image_id(sources.get(c.image, c.image)):
            found[c.name] = found_id
    return found


def pinned(ref: str, digest: str) -> str:
    """``ref`` pinned to ``digest``: its tag replaced by ``@<digest>``."""
    scheme, sep, path = ref.rpartition("://")
    return f"{scheme}{sep}{_split_tag(path)[0]}@{digest}"


def enroot_ref(source: str, *, hub_registry: bool = False) -> str:
    """A docker:// reference in enroot's own syntax, ``docker://[REGISTRY#]IMAGE[:TAG]``: the
    registry host is followed by '#', not '/'. Docker Hub images name no registry unless
    ``hub_registry`` (enroot reads credentials only for a registry it is given)."""
    path = source.removeprefix("docker://")
    first, _, rest = path.partition("/")
    registry = registry_of(source)
    if registry != DOCKER_HUB:
        return f"docker://{first}#{rest}"
    if rest and first in _HUB_ALIASES:
        path = rest  # docker.io/library/python → library/python
    return f"docker://{HUB_REGISTRY}#{path}" if hub_registry else f"docker://{path}"


def cannot_pull(runtime: Runtime, source: str) -> str | None:
    """Why a registry reference cannot be pulled into the cache by the runtime, or None."""
    schemes = runtime.pull_schemes
    if source.startswith(PULL_SCHEMES) and not source.startswith(schemes):
        return (
            f"{source!r} cannot be pulled into image_cache_dir by the {runtime.name} runtime, "
            f"which imports only {', '.join(s + '...' for s in schemes)} images"
        )
    return None


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
    return DOCKER_HUB if host in _HUB_ALIASES else host


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


def _netrc_token(word: str) -> bool:
    """Whether a word can be written as one token of a netrc file, read alike by curl (all
    versions: no quoting, '#' starts a comment in recent ones) and by enroot's own parsing."""
    return (
        bool(word)
        and word[0] not in '"#'
        and all(ch.isprintable() and not ch.isspace() for ch in word)
    )


def enroot_credentials(registry: str, user: str, password: str) -> bytes:
    """Enroot's ``$ENROOT_CONFIG_PATH/.credentials`` (netrc) for one registry.

    enroot takes the user from the ``machine <registry host, no port> login <user>`` line, then
    asks curl for a token from the registry's token service with this file: curl picks the
    service's own host there (``auth.docker.io`` for Docker Hub, but it differs by registry),
    hence the ``default`` entry. Each password is on a line of its own, as netrc allows: enroot
    evaluates in a shell a password written sixth on a ``machine`` line when it starts with '$'.
    """
    if not (_netrc_token(user) and _netrc_token(password)):
        raise PodRejected(
            "spec.imagePullSecrets",
            f"the credentials for {registry} cannot be given to enroot: its .credentials file "
            "(netrc) cannot hold a username or password that contains whitespace or control "
            "characters or starts with '\"' or '#'",
        )
    if registry == DOCKER_HUB:
        hosts = [HUB_REGISTRY, HUB_AUTH]
    else:
        hosts = [registry[: registry.rfind(":")] if ":" in registry else registry]
    lines = [
        f"{entry} login {user}\npassword {password}\n"
        for entry in [*(f"machine {h}" for h in hosts), "default"]
    ]
    return "".join(lines).encode()


def plan_pulls(
    runtime: Runtime,
    binary: str,
    cache_dir: str,
    pod_dir: str,
    sources: Sequence[str],
    pull_secrets: Sequence[Secret],
    never: frozenset[str] = frozenset(),
) -> tuple[dict[str, str], list[PlannedPull], list[FileSpec]]:
    """For each source the runtime can pull: its cache file (source → target), the pulls, and
    the credential files (relative to ``pod_dir``). A source in ``never`` (imagePullPolicy
    Never) is only looked for in the cache."""
    mapping: dict[str, str] = {}
    pulls: list[PlannedPull] = []
    files: list[FileSpec] = []
    for source in dict.fromkeys(sources):
        if not source.startswith(runtime.pull_schemes):
            continue
        target = cached_image(cache_dir, source, runtime.image_extension)
        mapping[source] = target
        if source in never:
            pulls.append(PlannedPull(target, source, (), never=True))
            continue
        digest = _digest(source)
        auth = None
        registry = registry_of(source)
        creds = credentials(pull_secrets, registry) if pull_secrets else None
        if creds is not None and source.startswith("docker://"):
            auth = f"pull/{digest}.auth"
            entries, more = runtime.pull_credentials(pod_dir, f"pull/{digest}", registry, *creds)
            files += more
            files.append(FileSpec(auth, b"".join(e.encode() + b"\0" for e in entries), 0o600))
        part = target + ".part"
        argv = runtime.pull_argv(binary, part, source, auth=auth is not None)
        pulls.append(PlannedPull(target, source, argv, auth))
    return mapping, pulls, files


# --- an image's own command (Charliecloud) --------------------------------------------------------

# Where ch-image keeps what it knows of an image, inside the image directory.
CH_METADATA = "ch/metadata.json"
# What Charliecloud's SquashFS images are named (ch-convert writes .sqfs).
SQUASHFS_SUFFIXES = (".sqfs", ".squashfs")
_INSTRUCTION = re.compile(r"(?:^|#\(nop\)\s+)(ENTRYPOINT|CMD)\s+(.*)$", re.DOTALL)
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


def _words(text: str) -> list[str] | None:
    """The argv of a Dockerfile instruction as the image history prints it: a JSON array
    (BuildKit: ``["a","b"]``) or Go's quoted list (classic builder: ``["a" "b"]``)."""
    text = text.strip()
    if not text.startswith("["):
        return ["/bin/sh", "-c", text] if text else None
    try:
        value = json.loads(text)
    except ValueError:
        try:
            return [json.loads(f'"{m}"') for m in _QUOTED.findall(text)]
        except ValueError:
            return None
    if isinstance(value, list) and all(isinstance(w, str) for w in value):
        return value
    return None


def image_command(metadata: bytes) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(ENTRYPOINT, CMD) of an image from ch-image's metadata: its own ``entrypoint``/``cmd``
    keys when present, else the image's build history (ch-image keeps the registry's config
    history, but not Cmd and Entrypoint themselves). None when the image says neither."""
    try:
        meta = json.loads(metadata)
    except ValueError:
        return None
    if not isinstance(meta, dict):
        return None
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    history = meta.get("history")
    for entry in history if isinstance(history, list) else []:
        created = entry.get("created_by") if isinstance(entry, dict) else None
        if not isinstance(created, str):
            continue
        m = _INSTRUCTION.search(created.strip())
        if m is None:
            continue
        words = _words(m.group(2))
        if m.group(1) == "ENTRYPOINT":
            # As in Docker: a new ENTRYPOINT resets a CMD inherited from the base image.
            entrypoint, cmd = words, None
        else:
            cmd = words
    for key, value in (("entrypoint", meta.get("entrypoint")), ("cmd", meta.get("cmd"))):
        if isinstance(value, list) and all(isinstance(w, str) for w in value):
            if key == "entrypoint":
                entrypoint = value
            else:
                cmd = value
    if not entrypoint and not cmd:
        return None
    return tuple(entrypoint or ()), tuple(cmd or ())

"""Pod volumes → files in the pod directory and binds into each container.

A volume's files live in ``volumes/<volume name>/`` of the pod directory; every path that comes
from the pod (keys, ``items[].path``, ``subPath``) has been checked to stay relative and free of
``..`` (wire.relative_path), so joining it there cannot leave the directory.
"""

from __future__ import annotations

import base64
import binascii
import json
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from interlink_slurm.errors import PodRejected
from interlink_slurm.translate.plan import Bind, FileSpec, SizeLimit
from interlink_slurm.translate.quantity import kibibytes, mebibytes
from interlink_slurm.wire import (
    SUPPORTED_VOLUME_TYPES,
    ConfigMap,
    Container,
    KeyToPath,
    PodSpec,
    RetrievedContainer,
    Secret,
    SecretVolumeSource,
    ValidPod,
    Volume,
    dns_subdomain,
    relative_path,
)

CONFIG_FILE_MODE = 0o644
SECRET_FILE_MODE = 0o600
# Kubernetes mounts these read-only whatever the volumeMount says.
READ_ONLY_KINDS = frozenset({"configMap", "secret", "projected", "downwardAPI"})
NOT_YET: dict[str, str] = {}
# Memory-backed emptyDirs live in the node's shared memory, one directory per pod.
SHM_ROOT = "/dev/shm"


@dataclass(frozen=True)
class VolumeLayout:
    """Where the pod's volumes live, and each container's binds of them."""

    files: tuple[FileSpec, ...]
    dirs: tuple[str, ...]
    binds: dict[str, tuple[Bind, ...]]  # container name → binds
    node_dirs: tuple[str, ...] = ()  # absolute: created by the job on the node
    scratch_dirs: tuple[str, ...] = ()  # absolute: removed by the job when it ends
    size_limits: tuple[SizeLimit, ...] = ()  # emptyDirs with a sizeLimit
    # (container, why one of its mounts was left out): said in its status, not refused.
    warnings: tuple[tuple[str, str], ...] = ()
    # Relative directories of volumes only ever mounted read-only (configMap, secret...): the
    # pod's own copies, which can be made read-only by their permissions.
    read_only_dirs: tuple[str, ...] = ()


def volume_dir(name: str) -> str:
    """A volume's directory, relative to the pod directory."""
    return f"volumes/{name}"


def _decode(secret: Secret, key: str, value: str, where: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as err:
        # Never echo the value: it is a secret.
        raise PodRejected(
            where, f"secret {secret.metadata.name!r} key {key!r} is not valid base64"
        ) from err


def _config_map_data(cm: ConfigMap, where: str) -> dict[str, bytes]:
    data = {k: v.encode() for k, v in cm.data.items()}
    for k, v in cm.binary_data.items():
        try:
            data[k] = base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError) as err:
            raise PodRejected(
                where, f"configMap {cm.metadata.name!r} binaryData {k!r} is not valid base64"
            ) from err
    return data


def _secret_data(secret: Secret, where: str) -> dict[str, bytes]:
    data = {k: _decode(secret, k, v, where) for k, v in secret.data.items()}
    data.update({k: v.encode() for k, v in secret.string_data.items()})
    return data


def _project(
    vol: Volume,
    where: str,
    data: dict[str, bytes],
    items: Sequence[KeyToPath],
    mode: int,
    optional: bool,
    what: str,
    fixed_mode: int | None = None,
) -> list[FileSpec]:
    """``data`` as the volume's files: those ``items`` name, or every key. ``mode``: the pod's
    defaultMode (or the default), an item's own mode winning; ``fixed_mode``: every file's,
    whatever the pod asks."""
    base = volume_dir(vol.name)

    def file_mode(asked: int | None) -> int:
        if fixed_mode is not None:
            return fixed_mode
        return _file_mode(asked if asked is not None else mode)

    files = []
    if items:
        for j, item in enumerate(items):
            if item.key not in data:
                if optional:
                    continue
                raise PodRejected(f"{where}.items[{j}].key", f"{what} has no key {item.key!r}")
            files.append(FileSpec(f"{base}/{item.path}", data[item.key], file_mode(item.mode)))
    else:
        for key, value in sorted(data.items()):
            try:
                relative_path(key)
            except ValueError as err:
                raise PodRejected(
                    where, f"{what} key {key!r} cannot be a file name: {err}"
                ) from err
            files.append(FileSpec(f"{base}/{key}", value, file_mode(None)))
    return files


def _file_mode(mode: int) -> int:
    # Files are read by the job's user only; group/other bits asked by the pod are kept for
    # config files but never more than read (no one else may change what a job reads).
    return (mode & 0o644) | 0o400


def _find(objects: Iterable[ConfigMap | Secret], name: str) -> ConfigMap | Secret | None:
    for obj in objects:
        if obj.metadata.name == name:
            return obj
    return None


def _mounted_volumes(containers: Sequence[Container]) -> set[str]:
    return {m.name for c in containers for m in c.volume_mounts}


def allowed_host_path(path: str, prefixes: Sequence[str]) -> bool:
    """Whether a host path lies under one of the prefixes pods may mount (whole path elements:
    "/data" does not allow "/data2")."""
    norm = posixpath.normpath(path)
    for prefix in prefixes:
        p = posixpath.normpath(prefix)
        if norm == p or norm.startswith(p.rstrip("/") + "/"):
            return True
    return False


def shm_dir(uid: str) -> str:
    """The pod's directory in the node's shared memory (memory-backed emptyDirs)."""
    return f"{SHM_ROOT}/interlink-slurm-{uid}"


def _label_lines(values: Mapping[str, str]) -> bytes:
    """Labels or annotations as the kubelet writes them in a downwardAPI file."""
    return "".join(f"{k}={json.dumps(v)}\n" for k, v in sorted(values.items())).encode()


_FIELD_KEY = re.compile(r"^metadata\.(labels|annotations)\['([^']*)'\]$")


def _field_value(pod: ValidPod, field_path: str, where: str) -> bytes:
    meta = pod.metadata
    simple = {
        "metadata.name": meta.name,
        "metadata.namespace": meta.namespace,
        "metadata.uid": meta.uid,
        "spec.restartPolicy": pod.spec.restart_policy,
    }
    if field_path in simple:
        return simple[field_path].encode()
    if field_path == "metadata.labels":
        return _label_lines(meta.labels)
    if field_path == "metadata.annotations":
        return _label_lines(meta.annotations)
    m = _FIELD_KEY.fullmatch(field_path)
    if m:
        values = meta.labels if m.group(1) == "labels" else meta.annotations
        return values.get(m.group(2), "").encode()
    raise PodRejected(
        where,
        f"fieldPath {field_path!r} is not known on the cluster (supported: metadata.name, "
        "metadata.namespace, metadata.uid, metadata.labels, metadata.annotations)",
    )


def _downward_files(pod: ValidPod, vol: Volume, where: str) -> list[FileSpec]:
    """A downwardAPI volume interLink sent no content for, from the pod's own metadata."""
    src = vol.downward_api or {}
    files = []
    default_mode = src.get("defaultMode")
    for j, item in enumerate(src.get("items") or []):
        iwhere = f"{where}.downwardAPI.items[{j}]"
        if not isinstance(item, dict) or "path" not in item:
            raise PodRejected(iwhere, "needs a path")
        try:
            path = relative_path(str(item["path"]))
        except ValueError as err:
            raise PodRejected(f"{iwhere}.path", str(err)) from err
        ref = item.get("fieldRef")
        if not isinstance(ref, dict) or "fieldPath" not in ref:
            raise PodRejected(
                iwhere, "only fieldRef items can be filled on the cluster (resourceFieldRef cannot)"
            )
        content = _field_value(pod, str(ref["fieldPath"]), f"{iwhere}.fieldRef.fieldPath")
        mode = item.get("mode", default_mode)
        m = _file_mode(mode) if isinstance(mode, int) else CONFIG_FILE_MODE
        files.append(FileSpec(f"{volume_dir(vol.name)}/{path}", content, m))
    return files


def lay_out_volumes(
    pod: ValidPod,
    retrieved: Sequence[RetrievedContainer],
    pod_dir: str,
    host_path_prefixes: Sequence[str],
    *,
    pvc_root: str | None = None,
    memory_mb: int | None = None,
) -> VolumeLayout:
    """Where each mounted volume of the pod lives on the cluster (its files written into the
    pod directory, or a host path, claim or node directory), and each container's binds."""
    spec = pod.spec
    mounted = _mounted_volumes((*spec.init_containers, *spec.containers))
    b = _Building(pod, retrieved, host_path_prefixes, pvc_root, memory_mb)
    dirs: list[str] = []
    sources: dict[str, tuple[str, str]] = {}  # volume → (host path, kind)
    for i, vol in enumerate(spec.volumes):
        if vol.name not in mounted:
            continue
        where = f"spec.volumes[{i}]"
        kind = vol.kind
        _check_supported(vol, where)
        in_pod_dir = f"{pod_dir}/{volume_dir(vol.name)}"
        place = _PLACES.get(kind)
        host = place(b, vol, where, in_pod_dir) if place is not None else in_pod_dir
        if host is None:
            continue  # left out (b.skipped says why)
        if kind not in ("hostPath", "persistentVolumeClaim") and not host.startswith(SHM_ROOT):
            dirs.append(volume_dir(vol.name))
        sources[vol.name] = (host, kind)
    binds, warnings = _container_binds(spec, sources, b.skipped, b.claims_read_only)
    uses_shm = any(d.startswith(SHM_ROOT) for d in b.node_dirs)
    return VolumeLayout(
        tuple(b.files),
        tuple(dirs),
        binds,
        tuple(b.node_dirs),
        (shm_dir(pod.metadata.uid),) if uses_shm else (),
        tuple(b.size_limits),
        tuple(warnings),
        tuple(volume_dir(v) for v, (_, kind) in sources.items() if kind in READ_ONLY_KINDS),
    )


class _Building:
    """What the volumes of one pod add up to, gathered volume by volume."""

    def __init__(
        self,
        pod: ValidPod,
        retrieved: Sequence[RetrievedContainer],
        host_path_prefixes: Sequence[str],
        pvc_root: str | None,
        memory_mb: int | None,
    ) -> None:
        self.pod = pod
        self.config_maps = [cm for rc in retrieved for cm in rc.config_maps]
        self.secrets = [s for rc in retrieved for s in rc.secrets]
        self.projected = [cm for rc in retrieved for cm in rc.projectedvolumemaps]
        self.host_path_prefixes = host_path_prefixes
        self.pvc_root = pvc_root
        self.memory_mb = memory_mb
        self.files: list[FileSpec] = []
        self.node_dirs: list[str] = []
        self.size_limits: list[SizeLimit] = []
        self.claims_read_only: set[str] = set()
        # Volumes left out, and why: the pod runs without them (as the kubelet would not, but
        # as interLink's own plugins do when interLink was told not to send their content).
        self.skipped: dict[str, str] = {}


def _check_supported(vol: Volume, where: str) -> None:
    kind = vol.kind
    if kind in NOT_YET:
        raise PodRejected(f"{where}.{kind}", NOT_YET[kind])
    if kind not in SUPPORTED_VOLUME_TYPES:
        raise PodRejected(
            where,
            f"volume {vol.name!r} has type {kind!r}, which this plugin does not support "
            f"(supported: {', '.join(t for t in SUPPORTED_VOLUME_TYPES if t not in NOT_YET)})",
        )


def _object_volume(b: _Building, vol: Volume, where: str, host: str) -> str:
    """A configMap or secret volume: the keys of the object interLink sent with the pod, as
    files (those of ``items``, or all). The two kinds differ only in data: the field naming the
    object, how its values are encoded, and a secret's files staying owner-only."""
    kind = vol.kind
    src = vol.secret if kind == "secret" else vol.config_map
    assert src is not None
    fixed_mode: int | None = None
    if isinstance(src, SecretVolumeSource):
        # Secret files stay owner-only whatever defaultMode and the items' modes say.
        name, name_field, fixed_mode = src.secret_name, "secretName", SECRET_FILE_MODE
        found = _find(b.secrets, name)
    else:
        name, name_field = src.name, "name"
        found = _find(b.config_maps, name)
    what = f"{kind} {name!r}"
    if found is None and not src.optional:
        raise PodRejected(
            f"{where}.{kind}.{name_field}", f"{what} was not sent by interLink with the pod"
        )
    data: dict[str, bytes] = {}
    if isinstance(found, Secret):
        data = _secret_data(found, where)
    elif isinstance(found, ConfigMap):
        data = _config_map_data(found, where)
    b.files += _project(
        vol,
        f"{where}.{kind}",
        data,
        src.items,
        src.default_mode if src.default_mode is not None else CONFIG_FILE_MODE,
        src.optional,
        what,
        fixed_mode,
    )
    return host


def _projected_volume(b: _Building, vol: Volume, where: str, host: str) -> str | None:
    """A projected or downwardAPI volume: the content interLink sent for it; a downwardAPI
    volume it sent none for is filled here, from the pod."""
    kind = vol.kind
    pm = _find(b.projected, vol.name)
    if pm is None and kind == "downwardAPI":
        b.files += _downward_files(b.pod, vol, where)
        return host
    if pm is None:
        # interLink's DisableProjectedVolumes: the service-account token and the like are not
        # sent. The pod runs without the volume, as with interLink's own plugins.
        b.skipped[vol.name] = (
            f"{kind} volume {vol.name!r} is not mounted: interLink sent no content for "
            "it (projectedvolumemaps; interLink's DisableProjectedVolumes?)"
        )
        return None
    assert isinstance(pm, ConfigMap)
    data = _config_map_data(pm, where)
    what = f"{kind} volume {vol.name!r}"
    b.files += _project(vol, where, data, (), SECRET_FILE_MODE, False, what, SECRET_FILE_MODE)
    return host


def _host_path_volume(b: _Building, vol: Volume, where: str, host: str) -> str:
    assert vol.host_path is not None
    path = vol.host_path.path
    if not path.startswith("/") or any(c in path for c in ":,\n\x00"):
        raise PodRejected(f"{where}.hostPath.path", f"{path!r} is not a usable absolute path")
    if not allowed_host_path(path, b.host_path_prefixes):
        allowed = ", ".join(b.host_path_prefixes) or "none configured"
        raise PodRejected(
            f"{where}.hostPath.path",
            f"{path!r} is outside the host paths pods may mount ({allowed})",
        )
    return posixpath.normpath(path)


def _claim_volume(b: _Building, vol: Volume, where: str, host: str) -> str:
    assert vol.persistent_volume_claim is not None
    claim = vol.persistent_volume_claim.claim_name
    if b.pvc_root is None:
        raise PodRejected(
            f"{where}.persistentVolumeClaim",
            f"volume {vol.name!r}: persistentVolumeClaim volumes need a directory on the "
            "cluster's shared filesystem, and this site configures none (pvc_root)",
        )
    try:
        dns_subdomain(claim)
    except ValueError as err:
        raise PodRejected(f"{where}.persistentVolumeClaim.claimName", str(err)) from err
    host = f"{b.pvc_root.rstrip('/')}/{b.pod.metadata.namespace}/{claim}"
    b.node_dirs.append(host)
    if vol.persistent_volume_claim.read_only:
        b.claims_read_only.add(vol.name)
    return host


def _empty_dir_volume(b: _Building, vol: Volume, where: str, host: str) -> str:
    if vol.empty_dir is None:
        return host
    limit = vol.empty_dir.size_limit
    limit_mb = None
    if limit is not None:
        try:
            limit_mb = mebibytes(str(limit))
        except ValueError as err:
            raise PodRejected(f"{where}.emptyDir.sizeLimit", str(err)) from err
    if vol.empty_dir.medium == "Memory":
        if limit_mb is not None and b.memory_mb is not None and limit_mb > b.memory_mb:
            raise PodRejected(
                f"{where}.emptyDir.sizeLimit",
                f"a memory-backed emptyDir of {limit} does not fit in the pod's "
                f"memory ({b.memory_mb}Mi): it counts against it",
            )
        host = f"{shm_dir(b.pod.metadata.uid)}/{vol.name}"
        b.node_dirs.append(host)
    elif vol.empty_dir.medium not in ("", None):
        raise PodRejected(
            f"{where}.emptyDir.medium",
            f'medium {vol.empty_dir.medium!r} is not supported ("" or Memory)',
        )
    if limit_mb is not None:
        b.size_limits.append(SizeLimit(vol.name, host, kibibytes(str(limit)), str(limit)))
    return host


# Where a volume of each kind lives (a kind without an entry: volumes/<name> of the pod
# directory, as it is); None: left out.
_PLACES: dict[str, Callable[[_Building, Volume, str, str], str | None]] = {
    "configMap": _object_volume,
    "secret": _object_volume,
    "projected": _projected_volume,
    "downwardAPI": _projected_volume,
    "hostPath": _host_path_volume,
    "persistentVolumeClaim": _claim_volume,
    "emptyDir": _empty_dir_volume,
}


def _container_binds(
    spec: PodSpec,
    sources: Mapping[str, tuple[str, str]],
    skipped: Mapping[str, str],
    claims_read_only: set[str],
) -> tuple[dict[str, tuple[Bind, ...]], list[tuple[str, str]]]:
    """Each container's volumeMounts as binds of the volumes' places; a mount of a volume left
    out is a warning of that container."""
    binds: dict[str, tuple[Bind, ...]] = {}
    warnings: list[tuple[str, str]] = []
    for group, containers in (
        ("initContainers", spec.init_containers),
        ("containers", spec.containers),
    ):
        for i, c in enumerate(containers):
            out = []
            for j, m in enumerate(c.volume_mounts):
                if m.name in skipped:
                    warnings.append((c.name, skipped[m.name]))
                    continue
                if m.name not in sources:
                    raise PodRejected(
                        f"spec.{group}[{i}].volumeMounts[{j}].name",
                        f"no volume named {m.name!r} in spec.volumes",
                    )
                host, kind = sources[m.name]
                source = f"{host}/{m.sub_path}" if m.sub_path else host
                read_only = m.read_only or kind in READ_ONLY_KINDS or m.name in claims_read_only
                out.append(Bind(source, m.mount_path, read_only))
            binds[c.name] = tuple(out)
    return binds, warnings

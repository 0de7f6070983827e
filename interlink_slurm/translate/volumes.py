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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from interlink_slurm.errors import PodRejected
from interlink_slurm.translate.plan import Bind, FileSpec, SizeLimit
from interlink_slurm.translate.quantity import kibibytes, mebibytes
from interlink_slurm.wire import (
    SUPPORTED_VOLUME_TYPES,
    ConfigMap,
    Container,
    KeyToPath,
    RetrievedContainer,
    Secret,
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
    default_mode: int | None,
    fallback_mode: int,
    optional: bool,
    what: str,
) -> list[FileSpec]:
    base = volume_dir(vol.name)
    mode = default_mode if default_mode is not None else fallback_mode
    files = []
    if items:
        for j, item in enumerate(items):
            if item.key not in data:
                if optional:
                    continue
                raise PodRejected(f"{where}.items[{j}].key", f"{what} has no key {item.key!r}")
            m = item.mode if item.mode is not None else mode
            files.append(FileSpec(f"{base}/{item.path}", data[item.key], _file_mode(m)))
    else:
        for key, value in sorted(data.items()):
            try:
                relative_path(key)
            except ValueError as err:
                raise PodRejected(
                    where, f"{what} key {key!r} cannot be a file name: {err}"
                ) from err
            files.append(FileSpec(f"{base}/{key}", value, _file_mode(mode)))
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
    spec = pod.spec
    all_containers = (*spec.init_containers, *spec.containers)
    mounted = _mounted_volumes(all_containers)
    config_maps = [cm for rc in retrieved for cm in rc.config_maps]
    secrets = [s for rc in retrieved for s in rc.secrets]
    projected = [cm for rc in retrieved for cm in rc.projectedvolumemaps]

    files: list[FileSpec] = []
    dirs: list[str] = []
    node_dirs: list[str] = []
    scratch_dirs: list[str] = []
    claims_read_only: set[str] = set()
    sources: dict[str, tuple[str, str]] = {}  # volume → (host path, kind)
    # Volumes left out, and why: the pod runs without them (as the kubelet would not, but as
    # interLink's own plugins do when interLink was told not to send their content).
    skipped: dict[str, str] = {}
    size_limits: list[SizeLimit] = []
    for i, vol in enumerate(spec.volumes):
        where = f"spec.volumes[{i}]"
        kind = vol.kind
        if vol.name not in mounted:
            continue
        if kind in NOT_YET:
            raise PodRejected(f"{where}.{kind}", NOT_YET[kind])
        if kind not in SUPPORTED_VOLUME_TYPES:
            raise PodRejected(
                where,
                f"volume {vol.name!r} has type {kind!r}, which this plugin does not support "
                f"(supported: {', '.join(t for t in SUPPORTED_VOLUME_TYPES if t not in NOT_YET)})",
            )
        host = f"{pod_dir}/{volume_dir(vol.name)}"
        if kind == "configMap":
            assert vol.config_map is not None
            src = vol.config_map
            cm = _find(config_maps, src.name)
            if cm is None and not src.optional:
                raise PodRejected(
                    f"{where}.configMap.name",
                    f"configMap {src.name!r} was not sent by interLink with the pod",
                )
            data = _config_map_data(cm, where) if isinstance(cm, ConfigMap) else {}
            files += _project(
                vol,
                f"{where}.configMap",
                data,
                src.items,
                src.default_mode,
                CONFIG_FILE_MODE,
                src.optional,
                f"configMap {src.name!r}",
            )
        elif kind == "secret":
            assert vol.secret is not None
            ssrc = vol.secret
            secret = _find(secrets, ssrc.secret_name)
            if secret is None and not ssrc.optional:
                raise PodRejected(
                    f"{where}.secret.secretName",
                    f"secret {ssrc.secret_name!r} was not sent by interLink with the pod",
                )
            sdata = _secret_data(secret, where) if isinstance(secret, Secret) else {}
            # Secret files stay owner-only whatever defaultMode says.
            files += [
                FileSpec(f.path, f.content, SECRET_FILE_MODE)
                for f in _project(
                    vol,
                    f"{where}.secret",
                    sdata,
                    ssrc.items,
                    None,
                    SECRET_FILE_MODE,
                    ssrc.optional,
                    f"secret {ssrc.secret_name!r}",
                )
            ]
        elif kind == "downwardAPI" and _find(projected, vol.name) is None:
            files += _downward_files(pod, vol, where)
        elif kind in ("projected", "downwardAPI"):
            pm = _find(projected, vol.name)
            if pm is None:
                # interLink's DisableProjectedVolumes: the service-account token and the like
                # are not sent. The pod runs without the volume, as with interLink's own plugins.
                skipped[vol.name] = (
                    f"{kind} volume {vol.name!r} is not mounted: interLink sent no content for "
                    "it (projectedvolumemaps; interLink's DisableProjectedVolumes?)"
                )
                continue
            assert isinstance(pm, ConfigMap)
            pdata = _config_map_data(pm, where)
            files += [
                FileSpec(f.path, f.content, SECRET_FILE_MODE)
                for f in _project(
                    vol,
                    where,
                    pdata,
                    (),
                    None,
                    SECRET_FILE_MODE,
                    False,
                    f"{kind} volume {vol.name!r}",
                )
            ]
        elif kind == "hostPath":
            assert vol.host_path is not None
            path = vol.host_path.path
            if not path.startswith("/") or any(c in path for c in ":,\n\x00"):
                raise PodRejected(
                    f"{where}.hostPath.path", f"{path!r} is not a usable absolute path"
                )
            if not allowed_host_path(path, host_path_prefixes):
                allowed = ", ".join(host_path_prefixes) or "none configured"
                raise PodRejected(
                    f"{where}.hostPath.path",
                    f"{path!r} is outside the host paths pods may mount ({allowed})",
                )
            host = posixpath.normpath(path)
        elif kind == "persistentVolumeClaim":
            assert vol.persistent_volume_claim is not None
            claim = vol.persistent_volume_claim.claim_name
            if pvc_root is None:
                raise PodRejected(
                    f"{where}.persistentVolumeClaim",
                    f"volume {vol.name!r}: persistentVolumeClaim volumes need a directory on the "
                    "cluster's shared filesystem, and this site configures none (pvc_root)",
                )
            try:
                dns_subdomain(claim)
            except ValueError as err:
                raise PodRejected(f"{where}.persistentVolumeClaim.claimName", str(err)) from err
            host = f"{pvc_root.rstrip('/')}/{pod.metadata.namespace}/{claim}"
            node_dirs.append(host)
            if vol.persistent_volume_claim.read_only:
                claims_read_only.add(vol.name)
        elif kind == "emptyDir" and vol.empty_dir is not None:
            limit = vol.empty_dir.size_limit
            limit_mb = None
            if limit is not None:
                try:
                    limit_mb = mebibytes(str(limit))
                except ValueError as err:
                    raise PodRejected(f"{where}.emptyDir.sizeLimit", str(err)) from err
            if vol.empty_dir.medium == "Memory":
                if limit_mb is not None and memory_mb is not None and limit_mb > memory_mb:
                    raise PodRejected(
                        f"{where}.emptyDir.sizeLimit",
                        f"a memory-backed emptyDir of {limit} does not fit in the pod's "
                        f"memory ({memory_mb}Mi): it counts against it",
                    )
                host = f"{shm_dir(pod.metadata.uid)}/{vol.name}"
                node_dirs.append(host)
            elif vol.empty_dir.medium not in ("", None):
                raise PodRejected(
                    f"{where}.emptyDir.medium",
                    f'medium {vol.empty_dir.medium!r} is not supported ("" or Memory)',
                )
            if limit_mb is not None:
                size_limits.append(SizeLimit(vol.name, host, kibibytes(str(limit)), str(limit)))
        if kind not in ("hostPath", "persistentVolumeClaim") and not host.startswith(SHM_ROOT):
            dirs.append(volume_dir(vol.name))
        sources[vol.name] = (host, kind)

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
    if any(d.startswith(SHM_ROOT) for d in node_dirs):
        scratch_dirs.append(shm_dir(pod.metadata.uid))
    return VolumeLayout(
        tuple(files),
        tuple(dirs),
        binds,
        tuple(node_dirs),
        tuple(scratch_dirs),
        tuple(size_limits),
        tuple(warnings),
        tuple(volume_dir(v) for v, (_, kind) in sources.items() if kind in READ_ONLY_KINDS),
    )

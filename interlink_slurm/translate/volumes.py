"""Pod volumes → files in the pod directory and binds into each container.

A volume's files live in ``volumes/<volume name>/`` of the pod directory; every path that comes
from the pod (keys, ``items[].path``, ``subPath``) has been checked to stay relative and free of
``..`` (wire.relative_path), so joining it there cannot leave the directory.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from interlink_slurm.errors import PodRejected
from interlink_slurm.translate.plan import Bind, FileSpec
from interlink_slurm.wire import (
    SUPPORTED_VOLUME_TYPES,
    ConfigMap,
    Container,
    KeyToPath,
    RetrievedContainer,
    Secret,
    ValidPod,
    Volume,
    relative_path,
)

CONFIG_FILE_MODE = 0o644
SECRET_FILE_MODE = 0o600
# Kubernetes mounts these read-only whatever the volumeMount says.
READ_ONLY_KINDS = frozenset({"configMap", "secret", "projected", "downwardAPI"})
NOT_YET = {"persistentVolumeClaim": "persistentVolumeClaim volumes are not supported yet"}


@dataclass(frozen=True)
class VolumeLayout:
    files: tuple[FileSpec, ...]
    dirs: tuple[str, ...]
    binds: dict[str, tuple[Bind, ...]]  # container name → binds


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
                raise PodRejected(where, f"{what} key {key!r} cannot be a file name") from err
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


def _allowed_host_path(path: str, prefixes: Sequence[str]) -> bool:
    norm = posixpath.normpath(path)
    for prefix in prefixes:
        p = posixpath.normpath(prefix)
        if norm == p or norm.startswith(p.rstrip("/") + "/"):
            return True
    return False


def lay_out_volumes(
    pod: ValidPod,
    retrieved: Sequence[RetrievedContainer],
    pod_dir: str,
    host_path_prefixes: Sequence[str],
) -> VolumeLayout:
    spec = pod.spec
    all_containers = (*spec.init_containers, *spec.containers)
    mounted = _mounted_volumes(all_containers)
    config_maps = [cm for rc in retrieved for cm in rc.config_maps]
    secrets = [s for rc in retrieved for s in rc.secrets]
    projected = [cm for rc in retrieved for cm in rc.projectedvolumemaps]

    files: list[FileSpec] = []
    dirs: list[str] = []
    sources: dict[str, tuple[str, str]] = {}  # volume → (host path, kind)
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
        elif kind in ("projected", "downwardAPI"):
            pm = _find(projected, vol.name)
            if pm is None:
                raise PodRejected(
                    where,
                    f"{kind} volume {vol.name!r} has no content: interLink sent no "
                    "projectedvolumemaps entry for it",
                )
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
            if not _allowed_host_path(path, host_path_prefixes):
                allowed = ", ".join(host_path_prefixes) or "none configured"
                raise PodRejected(
                    f"{where}.hostPath.path",
                    f"{path!r} is outside the host paths pods may mount ({allowed})",
                )
            host = posixpath.normpath(path)
        if kind != "hostPath":
            dirs.append(volume_dir(vol.name))
        sources[vol.name] = (host, kind)

    binds: dict[str, tuple[Bind, ...]] = {}
    for group, containers in (
        ("initContainers", spec.init_containers),
        ("containers", spec.containers),
    ):
        for i, c in enumerate(containers):
            out = []
            for j, m in enumerate(c.volume_mounts):
                if m.name not in sources:
                    raise PodRejected(
                        f"spec.{group}[{i}].volumeMounts[{j}].name",
                        f"no volume named {m.name!r} in spec.volumes",
                    )
                host, kind = sources[m.name]
                source = f"{host}/{m.sub_path}" if m.sub_path else host
                out.append(Bind(source, m.mount_path, m.read_only or kind in READ_ONLY_KINDS))
            binds[c.name] = tuple(out)
    return VolumeLayout(tuple(files), tuple(dirs), binds)

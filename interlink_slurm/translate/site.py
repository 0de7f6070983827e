"""Site profiles ("flavors"): named bundles of partition, GPU type, defaults, maxima and extra
sbatch options, chosen by annotation or by what the pod asks. Pure.

The top-level keys of the configuration (``partition``, ``gpu_partition``, ``gpu_type``,
``default_cpus``...) are the site's defaults; a profile overrides what it sets. A pod picks a
profile with ``slurm-job.vk.io/flavor``; without it the first profile whose ``match`` fits the
pod (``gpu`` for pods asking for ``nvidia.com/gpu``, ``cpu`` for the others, ``any``) is used,
and with none the top-level keys alone apply.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from interlink_slurm.errors import PodRejected
from interlink_slurm.translate.quantity import mebibytes

if TYPE_CHECKING:
    from interlink_slurm.config import Settings

T = TypeVar("T")
SLURM_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def slurm_seconds(value: str | int) -> int:
    """A Slurm time ("30", "1:30:00", "2-00:00:00", "1-12") or a number of seconds (int)."""
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"{value} must be a positive number of seconds")
        return value
    m = _TIME.fullmatch(value.strip())
    if not m:
        raise ValueError(f"{value!r} is not a Slurm time (MM, HH:MM:SS, D-HH:MM:SS...)")
    days, a, b, c = (int(g) if g else None for g in m.groups())
    if days is None:
        # MM, MM:SS, HH:MM:SS
        if b is None:
            seconds = (a or 0) * 60
        elif c is None:
            seconds = (a or 0) * 60 + b
        else:
            seconds = (a or 0) * 3600 + b * 60 + c
    else:
        # D-HH, D-HH:MM, D-HH:MM:SS
        seconds = days * 86400 + (a or 0) * 3600 + (b or 0) * 60 + (c or 0)
    if seconds <= 0:
        raise ValueError(f"{value!r} must be longer than zero")
    return seconds


def check_memory(v: str | None) -> str | None:
    """A memory quantity as a config key holds it (unset is fine)."""
    if v is not None:
        mebibytes(v)
    return v


def check_time(v: str | int | None) -> str | int | None:
    """A Slurm time limit as a config key holds it (unset is fine)."""
    if v is not None:
        slurm_seconds(v)
    return v


def slurm_name(v: str | None) -> str | None:
    """A partition, account, QOS or GRES type: letters, digits, '_', '.', '+', '-' only (such a
    name goes into an #SBATCH line; a newline must never get through)."""
    if v is not None and not SLURM_NAME.fullmatch(v):
        raise ValueError(f"{v!r} is not a valid Slurm name")
    return v


class Profile(BaseModel):
    """One flavor of job the site offers (every key optional: unset ones come from the top)."""

    model_config = ConfigDict(extra="forbid")

    match: Literal["gpu", "cpu", "any"] | None = Field(
        None, description="chosen automatically for GPU pods, CPU pods or any pod"
    )
    partition: str | None = None
    gpu_type: str | None = None
    gpus_per_node: int | None = Field(None, ge=1)
    default_cpus: int | None = Field(None, ge=1)
    default_memory: str | None = None
    max_cpus: int | None = Field(None, ge=1)
    max_memory: str | None = None
    default_time: str | int | None = None
    max_time: str | int | None = None
    account: str | None = None
    qos: str | None = None
    sbatch_extra: list[str] = []

    @field_validator("partition", "gpu_type", "account", "qos")
    @classmethod
    def _slurm_name(cls, v: str | None) -> str | None:
        return slurm_name(v)

    @field_validator("default_memory", "max_memory")
    @classmethod
    def _memory(cls, v: str | None) -> str | None:
        return check_memory(v)

    @field_validator("default_time", "max_time")
    @classmethod
    def _time(cls, v: str | int | None) -> str | int | None:
        return check_time(v)


@dataclass(frozen=True)
class Site:
    """What applies to one pod: the top-level configuration with its profile laid over it."""

    profile: str | None
    partition: str | None
    gpu_type: str | None
    gpus_per_node: int | None
    default_cpus: int
    default_memory_mb: int
    max_cpus: int | None
    max_memory_mb: int | None
    default_time: int | None
    max_time: int | None
    account: str | None
    qos: str | None
    sbatch_extra: tuple[str, ...]


def _matching(profiles: Mapping[str, Profile], wants_gpus: bool) -> str | None:
    for name, p in profiles.items():
        if p.match == "any" or p.match == ("gpu" if wants_gpus else "cpu"):
            return name
    return None


def _pick(own: T | None, top: T | None) -> T | None:
    return own if own is not None else top


def site_for(
    settings: Settings, annotations: Mapping[str, str], namespace: str, wants_gpus: bool
) -> Site:
    from interlink_slurm.translate.annotations import FLAVOR

    profiles = settings.profiles
    name = annotations.get(FLAVOR)
    if name is not None:
        if name not in profiles:
            raise PodRejected(
                f"metadata.annotations[{FLAVOR}]",
                f"no flavor {name!r} here (flavors: {', '.join(profiles) or 'none'})",
            )
    else:
        name = _matching(profiles, wants_gpus)
    p = profiles[name] if name is not None else Profile()

    top_partition = (settings.gpu_partition or settings.partition) if wants_gpus else None
    default_memory = _pick(p.default_memory, settings.default_memory)
    max_memory = _pick(p.max_memory, settings.max_memory)
    default_time = p.default_time if p.default_time is not None else settings.default_time
    max_time = p.max_time if p.max_time is not None else settings.max_time
    return Site(
        profile=name,
        partition=_pick(p.partition, top_partition or settings.partition),
        gpu_type=_pick(p.gpu_type, settings.gpu_type),
        gpus_per_node=_pick(p.gpus_per_node, settings.gpus_per_node),
        default_cpus=p.default_cpus or settings.default_cpus,
        default_memory_mb=mebibytes(default_memory or settings.default_memory),
        max_cpus=_pick(p.max_cpus, settings.max_cpus),
        max_memory_mb=mebibytes(max_memory) if max_memory is not None else None,
        default_time=slurm_seconds(default_time) if default_time is not None else None,
        max_time=slurm_seconds(max_time) if max_time is not None else None,
        account=settings.namespace_accounts.get(namespace) or _pick(p.account, settings.account),
        qos=_pick(p.qos, settings.qos),
        sbatch_extra=(*settings.sbatch_extra, *p.sbatch_extra),
    )


def partitions_of(settings: Settings) -> set[str]:
    """Every partition the configuration names (what pods may ask by default)."""
    parts = {settings.partition, settings.gpu_partition}
    parts |= {p.partition for p in settings.profiles.values()}
    return {p for p in parts if p}

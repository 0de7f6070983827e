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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from interlink_slurm.errors import PodRejected
from interlink_slurm.slurm_units import time_seconds
from interlink_slurm.translate.quantity import mebibytes
from interlink_slurm.wire import Taint

SLURM_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


def slurm_seconds(value: str | int) -> int:
    """A Slurm time ("30", "1:30:00", "2-00:00:00", "1-12") or a number of seconds (int)."""
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"{value} must be a positive number of seconds")
        return value
    seconds = time_seconds(value)
    if seconds is None:  # a pod's or the site's limit is a time, never "unlimited"
        raise ValueError(f"{value!r} is not a Slurm time (MM, HH:MM:SS, D-HH:MM:SS...)")
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


class Target(Profile):
    """One place pods can be sent to (placement): a partition of a cluster, with what it can
    serve. Every Profile key may be given (what the target sets wins over the profile's and the
    top level's); ``match`` says which pods it serves (gpu, cpu, any: the default)."""

    cluster: str | None = Field(
        None, description="a key of clusters; default: the top-level transport and scheduler"
    )
    gpus_per_node: int | None = Field(None, ge=0, description="GPUs of one node; 0: none")
    namespaces: list[str] | None = Field(
        None, description="Kubernetes namespaces whose pods may go here; default: all"
    )
    accounts: list[str] | None = Field(
        None, description="Slurm accounts a pod may be charged to here; default: any"
    )
    labels: dict[str, str] = Field(
        {}, description="labels the pods' nodeSelector and node affinity are matched against"
    )
    taints: list[Taint] = Field([], description="taints a pod must tolerate to go here")
    weight: float = Field(
        1.0, ge=0, description="multiplies the predicted wait when targets are compared"
    )
    penalty_seconds: float = Field(
        0.0, ge=0, description="added to the predicted wait when targets are compared"
    )

    @field_validator("accounts")
    @classmethod
    def _accounts(cls, v: list[str] | None) -> list[str] | None:
        for name in v or []:
            slurm_name(name)
        return v


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


class SiteSettings(Protocol):
    """The keys of the configuration a site is made of (config.Settings has them): what this
    module reads, so that it does not depend on the configuration's module."""

    @property
    def partition(self) -> str | None:
        """Partition of CPU pods; None: Slurm's default."""

    @property
    def gpu_partition(self) -> str | None:
        """Partition of pods asking for an accelerator; None: ``partition``."""

    @property
    def gpu_type(self) -> str | None:
        """GRES type of nvidia.com/gpu (``gpu:<type>:N``); None: any GPU."""

    @property
    def gpus_per_node(self) -> int | None:
        """GPUs of one node: a pod asking more per node is refused (it may span nodes)."""

    @property
    def default_cpus(self) -> int:
        """CPUs of a pod that asks for none."""

    @property
    def max_cpus(self) -> int | None:
        """Most CPUs a pod may ask for; None: no limit of ours."""

    @property
    def default_memory(self) -> str:
        """Memory of a pod that asks for none (Kubernetes quantity)."""

    @property
    def max_memory(self) -> str | None:
        """Most memory a pod may ask for (Kubernetes quantity); None: no limit of ours."""

    @property
    def default_time(self) -> str | int | None:
        """--time of a pod with no deadline; None: the partition's."""

    @property
    def max_time(self) -> str | int | None:
        """Longest --time a pod may ask for; None: no limit of ours."""

    @property
    def account(self) -> str | None:
        """Slurm account of the jobs, unless namespace_accounts names one."""

    @property
    def namespace_accounts(self) -> Mapping[str, str]:
        """Kubernetes namespace → Slurm account (wins over ``account``)."""

    @property
    def qos(self) -> str | None:
        """QOS of the jobs; None: Slurm's default."""

    @property
    def sbatch_extra(self) -> Sequence[str]:
        """The site's own sbatch options for every job; a pod's own flags come after them."""

    @property
    def profiles(self) -> Mapping[str, Profile]:
        """Site profiles (flavors) by name, in the order they are matched."""

    @property
    def targets(self) -> Mapping[str, Target]:
        """Where pods may go (partitions of this or other clusters), by name."""


def site_for(
    settings: SiteSettings,
    annotations: Mapping[str, str],
    namespace: str,
    wants_gpus: bool,
    target: Target | None = None,
) -> Site:
    """What applies to a pod: the top level, its profile over it, the target over both."""
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
    t = target or Target()

    def pick(key: str, top: Any) -> Any:
        # The target's value, else the profile's, else the top level's.
        for layer in (t, p):
            value = getattr(layer, key)
            if value is not None:
                return value
        return top

    top_partition = (settings.gpu_partition or settings.partition) if wants_gpus else None
    default_memory = pick("default_memory", settings.default_memory)
    max_memory = pick("max_memory", settings.max_memory)
    default_time = pick("default_time", settings.default_time)
    max_time = pick("max_time", settings.max_time)
    return Site(
        profile=name,
        partition=pick("partition", top_partition or settings.partition),
        gpu_type=pick("gpu_type", settings.gpu_type),
        gpus_per_node=pick("gpus_per_node", settings.gpus_per_node),
        default_cpus=pick("default_cpus", settings.default_cpus) or settings.default_cpus,
        default_memory_mb=mebibytes(default_memory or settings.default_memory),
        max_cpus=pick("max_cpus", settings.max_cpus),
        max_memory_mb=mebibytes(max_memory) if max_memory is not None else None,
        default_time=slurm_seconds(default_time) if default_time is not None else None,
        max_time=slurm_seconds(max_time) if max_time is not None else None,
        account=settings.namespace_accounts.get(namespace) or pick("account", settings.account),
        qos=pick("qos", settings.qos),
        sbatch_extra=(*settings.sbatch_extra, *p.sbatch_extra, *t.sbatch_extra),
    )


def partitions_of(settings: SiteSettings) -> set[str]:
    """Every partition the configuration names (what pods may ask by default)."""
    parts = {settings.partition, settings.gpu_partition}
    parts |= {p.partition for p in settings.profiles.values()}
    parts |= {t.partition for t in settings.targets.values()}
    return {p for p in parts if p}

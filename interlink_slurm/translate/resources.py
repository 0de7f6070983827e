"""CPU, memory, GPUs and time asked by a pod → sbatch options.

Kubernetes' rule for a pod's effective request: the larger of the sum over the regular
containers (they run together) and the largest init container (they run one at a time).
Slurm enforces what it allocates, so a container's limit counts when set, else its request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

from interlink_slurm.errors import PodRejected
from interlink_slurm.translate.quantity import parse_quantity
from interlink_slurm.wire import Container, PodSpec

GPU_RESOURCE = "nvidia.com/gpu"
# Accepted and not turned into a Slurm option (no per-job equivalent on an HPC node).
IGNORED_RESOURCES = frozenset({"ephemeral-storage"})
KNOWN_RESOURCES = frozenset({"cpu", "memory", GPU_RESOURCE}) | IGNORED_RESOURCES


@dataclass(frozen=True)
class Resources:
    cpus: int
    memory_mb: int
    gpus: int
    time_seconds: int | None


def _amount(c: Container, index: str, resource: str) -> Decimal | None:
    """The container's limit for a resource, else its request; None when it asks nothing."""
    for kind, values in (("limits", c.resources.limits), ("requests", c.resources.requests)):
        if resource in values:
            try:
                return parse_quantity(values[resource])
            except ValueError as err:
                raise PodRejected(f"{index}.resources.{kind}.{resource}", str(err)) from err
    return None


def container_gpus(c: Container, index: str) -> int:
    """The whole number of GPUs one container asks for."""
    amount = _amount(c, index, GPU_RESOURCE)
    if amount is None:
        return 0
    if amount != amount.to_integral_value():
        raise PodRejected(
            f"{index}.resources.limits.{GPU_RESOURCE}", f"{amount} is not a whole number of GPUs"
        )
    return int(amount)


def _check_names(c: Container, index: str) -> None:
    for kind, values in (("limits", c.resources.limits), ("requests", c.resources.requests)):
        for name in values:
            if name not in KNOWN_RESOURCES:
                raise PodRejected(
                    f"{index}.resources.{kind}.{name}",
                    f"resource {name!r} cannot be given by this Slurm plugin "
                    f"(supported: cpu, memory, {GPU_RESOURCE})",
                )


def _effective(spec: PodSpec, resource: str) -> Decimal | None:
    regular = [_amount(c, f"spec.containers[{i}]", resource) for i, c in enumerate(spec.containers)]
    init = [
        _amount(c, f"spec.initContainers[{i}]", resource)
        for i, c in enumerate(spec.init_containers)
    ]
    if all(a is None for a in (*regular, *init)):
        return None
    total = sum((a for a in regular if a is not None), Decimal(0))
    largest_init = max((a for a in init if a is not None), default=Decimal(0))
    return max(total, largest_init)


def pod_resources(spec: PodSpec, default_cpus: int, default_memory_mb: int) -> Resources:
    for i, c in enumerate(spec.containers):
        _check_names(c, f"spec.containers[{i}]")
    for i, c in enumerate(spec.init_containers):
        _check_names(c, f"spec.initContainers[{i}]")

    cpu = _effective(spec, "cpu")
    memory = _effective(spec, "memory")
    for i, c in enumerate(spec.containers):
        container_gpus(c, f"spec.containers[{i}]")
    for i, c in enumerate(spec.init_containers):
        container_gpus(c, f"spec.initContainers[{i}]")
    gpu = _effective(spec, GPU_RESOURCE)
    deadline = spec.active_deadline_seconds
    if deadline is not None and deadline <= 0:
        raise PodRejected("spec.activeDeadlineSeconds", "must be a positive number of seconds")
    return Resources(
        cpus=max(1, math.ceil(cpu)) if cpu else default_cpus,
        memory_mb=max(1, math.ceil(memory / (1 << 20))) if memory else default_memory_mb,
        gpus=int(gpu or 0),
        time_seconds=deadline,
    )


def slurm_time(seconds: int) -> str:
    """Seconds as Slurm's D-HH:MM:SS (Slurm rounds up to whole minutes itself)."""
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"


def resource_directives(
    res: Resources,
    *,
    partition: str | None,
    gpu_partition: str | None,
    gpu_type: str | None,
) -> list[str]:
    out = ["--nodes=1", "--ntasks=1", f"--cpus-per-task={res.cpus}", f"--mem={res.memory_mb}M"]
    chosen = (gpu_partition or partition) if res.gpus else partition
    if chosen:
        out.insert(0, f"--partition={chosen}")
    if res.gpus:
        gres = f"gpu:{gpu_type}:{res.gpus}" if gpu_type else f"gpu:{res.gpus}"
        out.append(f"--gres={gres}")
    if res.time_seconds is not None:
        out.append(f"--time={slurm_time(res.time_seconds)}")
    return out

"""CPU, memory, GPUs and time asked by a pod → sbatch options.

Kubernetes' rule for a pod's effective request: the larger of the sum over the regular
containers (they run together) and the largest init container (they run one at a time).
Slurm enforces what it allocates, so a container's limit counts when set, else its request.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from decimal import Decimal

from interlink_slurm.errors import PodRejected
from interlink_slurm.translate.quantity import parse_quantity
from interlink_slurm.wire import Container, PodSpec

GPU_RESOURCE = "nvidia.com/gpu"
# The accelerators a site has when its configuration maps none (``accelerators``).
DEFAULT_ACCELERATORS = (GPU_RESOURCE,)
# Accepted and not turned into a Slurm option (no per-job equivalent on an HPC node).
IGNORED_RESOURCES = frozenset({"ephemeral-storage"})
KNOWN_RESOURCES = frozenset({"cpu", "memory", GPU_RESOURCE}) | IGNORED_RESOURCES


@dataclass(frozen=True)
class Resources:
    """What the whole pod asks for: CPUs, memory, accelerators and its deadline."""

    cpus: int
    memory_mb: int
    gpus: int  # of the accelerator below (GPUs, whatever their vendor)
    time_seconds: int | None
    accelerator: str = GPU_RESOURCE  # the extended resource the pod asks its GPUs as


def _amount(c: Container, index: str, resource: str) -> Decimal | None:
    """The container's limit for a resource, else its request; None when it asks nothing."""
    for kind, values in (("limits", c.resources.limits), ("requests", c.resources.requests)):
        if resource in values:
            try:
                return parse_quantity(values[resource])
            except ValueError as err:
                raise PodRejected(f"{index}.resources.{kind}.{resource}", str(err)) from err
    return None


def container_gpus(
    c: Container, index: str, accelerators: Collection[str] = DEFAULT_ACCELERATORS
) -> int:
    """The whole number of accelerators (of the site's kinds) one container asks for."""
    total = 0
    for resource in accelerators:
        amount = _amount(c, index, resource)
        if amount is None:
            continue
        if amount != amount.to_integral_value():
            raise PodRejected(
                f"{index}.resources.limits.{resource}", f"{amount} is not a whole number of GPUs"
            )
        total += int(amount)
    return total


def _check_names(c: Container, index: str, accelerators: Collection[str]) -> None:
    for kind, values in (("limits", c.resources.limits), ("requests", c.resources.requests)):
        for name in values:
            if name in accelerators or (name in KNOWN_RESOURCES and name != GPU_RESOURCE):
                continue
            if "/" in name:  # an extended resource: a device plugin's, which Slurm knows as gres
                reason = (
                    f"extended resource {name!r} has no Slurm gres on this site (accelerators "
                    f"it maps: {', '.join(sorted(accelerators)) or 'none'}; an operator adds "
                    "one with the accelerators setting)"
                )
            else:
                reason = (
                    f"resource {name!r} cannot be given by this Slurm plugin (supported: cpu, "
                    f"memory, {', '.join(sorted(accelerators))})"
                )
            raise PodRejected(f"{index}.resources.{kind}.{name}", reason)


def _accelerator(spec: PodSpec, accelerators: Collection[str]) -> str:
    """The one accelerator kind the pod asks for (GPU_RESOURCE when none)."""
    asked = sorted(
        {
            name
            for c in (*spec.containers, *spec.init_containers)
            for name in (*c.resources.limits, *c.resources.requests)
            if name in accelerators
        }
    )
    if len(asked) > 1:
        raise PodRejected(
            "spec.containers.resources.limits",
            f"asks for {' and '.join(asked)}: a Slurm job gets one kind of accelerator",
        )
    return asked[0] if asked else GPU_RESOURCE


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


def pod_resources(
    spec: PodSpec,
    default_cpus: int,
    default_memory_mb: int,
    accelerators: Collection[str] = DEFAULT_ACCELERATORS,
) -> Resources:
    """``accelerators``: the extended resources the site maps to a gres."""
    for i, c in enumerate(spec.containers):
        _check_names(c, f"spec.containers[{i}]", accelerators)
    for i, c in enumerate(spec.init_containers):
        _check_names(c, f"spec.initContainers[{i}]", accelerators)

    cpu = _effective(spec, "cpu")
    memory = _effective(spec, "memory")
    accelerator = _accelerator(spec, accelerators)
    for i, c in enumerate(spec.containers):
        container_gpus(c, f"spec.containers[{i}]", accelerators)
    for i, c in enumerate(spec.init_containers):
        container_gpus(c, f"spec.initContainers[{i}]", accelerators)
    gpu = _effective(spec, accelerator)
    deadline = spec.active_deadline_seconds
    if deadline is not None and deadline <= 0:
        raise PodRejected("spec.activeDeadlineSeconds", "must be a positive number of seconds")
    return Resources(
        cpus=max(1, math.ceil(cpu)) if cpu else default_cpus,
        memory_mb=max(1, math.ceil(memory / (1 << 20))) if memory else default_memory_mb,
        gpus=int(gpu or 0),
        time_seconds=deadline,
        accelerator=accelerator,
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
    gpu_type: str | None,
    nodes: int = 1,
    tasks_per_node: int = 1,
    gpus_per_node: int | None = None,
    max_cpus: int | None = None,
    max_memory_mb: int | None = None,
    default_time: int | None = None,
    max_time: int | None = None,
    where: str = "",
    gres: str | None = None,
) -> list[str]:
    """The pod's resources as sbatch options. A pod's resources are the whole job's: over
    several nodes (``nodes``), memory and GPUs are split evenly per node and CPUs per task.
    ``gres``: the site's gres for the pod's accelerator (``gpu:mi250x``); else
    ``gpu[:gpu_type]``."""
    where = f" ({where})" if where else ""
    gpus_node = _gpus_per_node(res, nodes, gpus_per_node, where)
    cpus_node = math.ceil(res.cpus / nodes)
    memory_node = math.ceil(res.memory_mb / nodes)
    if max_cpus is not None and cpus_node > max_cpus:
        raise PodRejected(
            "spec.containers.resources.limits.cpu",
            f"{cpus_node} CPUs per node is more than the {max_cpus} allowed here{where}",
        )
    if max_memory_mb is not None and memory_node > max_memory_mb:
        raise PodRejected(
            "spec.containers.resources.limits.memory",
            f"{memory_node}Mi per node is more than the {max_memory_mb}Mi allowed here{where}",
        )
    seconds = res.time_seconds if res.time_seconds is not None else default_time
    if seconds is not None and max_time is not None and seconds > max_time:
        raise PodRejected(
            "spec.activeDeadlineSeconds",
            f"{seconds} s is longer than the {max_time} s ({slurm_time(max_time)}) "
            f"a job may run here{where}",
        )
    tasks = (
        ["--ntasks=1"]
        if nodes == 1 and tasks_per_node == 1
        else [f"--ntasks-per-node={tasks_per_node}"]
    )
    out = [
        f"--nodes={nodes}",
        *tasks,
        f"--cpus-per-task={max(1, math.ceil(cpus_node / tasks_per_node))}",
        f"--mem={memory_node}M",
    ]
    if partition:
        out.insert(0, f"--partition={partition}")
    if gpus_node:
        name = gres or (f"gpu:{gpu_type}" if gpu_type else "gpu")
        out.append(f"--gres={name}:{gpus_node}")
    if seconds is not None:
        out.append(f"--time={slurm_time(seconds)}")
    return out


def _gpus_per_node(res: Resources, nodes: int, gpus_per_node: int | None, where: str) -> int:
    """The pod's GPUs on each of its ``nodes``: an even split that a node here can give."""
    if res.gpus and res.gpus % nodes:
        raise PodRejected(
            f"spec.containers.resources.limits.{res.accelerator}",
            f"{res.gpus} GPUs cannot be split evenly over {nodes} nodes",
        )
    gpus_node = res.gpus // nodes
    if gpus_per_node == 0 and gpus_node:
        raise PodRejected(
            f"spec.containers.resources.limits.{res.accelerator}",
            f"{res.gpus} GPUs asked, but the nodes here have none{where}",
        )
    if gpus_per_node is not None and gpus_node > gpus_per_node:
        hint = (
            f"ask for at most {gpus_per_node}, or spread the pod over "
            f"{math.ceil(res.gpus / gpus_per_node)} nodes with the annotation "
            "interlink-slurm/nodes"
        )
        raise PodRejected(
            f"spec.containers.resources.limits.{res.accelerator}",
            f"{gpus_node} GPUs on one node, but a node here has {gpus_per_node}{where}: {hint}",
        )
    return gpus_node

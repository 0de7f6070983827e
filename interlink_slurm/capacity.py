"""The virtual node's capacity (/ping) and readiness: the sum over the clusters the targets
use, cached for ping_cache_seconds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

from interlink_slurm.config import DEFAULT_CLUSTER, Settings
from interlink_slurm.errors import SchedulerUnavailable
from interlink_slurm.slurm.scheduler import ClusterResources, Scheduler
from interlink_slurm.tracker import Clock
from interlink_slurm.translate.resources import GPU_RESOURCE
from interlink_slurm.wire import Accelerator, PingResources, PingResponse

log = logging.getLogger(__name__)


class NodeCapacity:
    """The virtual node's capacity (interLink's ping: what the partitions give, cached) and
    the service's readiness."""

    def __init__(
        self, settings: Settings, schedulers: Mapping[str, Scheduler], clock: Clock
    ) -> None:
        self.settings = settings
        self.schedulers = schedulers
        self.clock = clock
        self._ping: tuple[float, PingResponse] | None = None
        self._last_capacity: PingResources | None = None  # of the last healthy ping

    def _partitions(self, cluster: str) -> list[str]:
        """Where the plugin sends jobs on a cluster: its targets' partitions; without targets
        (or for a target that names none) the top-level partitions and the profiles'."""
        s = self.settings
        base = {s.partition, s.gpu_partition, *(p.partition for p in s.profiles.values())}
        if not s.targets:
            parts = base
        else:
            parts = set()
            for t in s.targets.values():
                if (t.cluster or DEFAULT_CLUSTER) == cluster:
                    parts |= {t.partition} if t.partition else base
        return sorted({p for p in parts if p})

    def _gpu_types(self) -> set[str]:
        s = self.settings
        types = [s.gpu_type, *(p.gpu_type for p in (*s.profiles.values(), *s.targets.values()))]
        return {t for t in types if t}

    def _accelerators(self, found: Sequence[ClusterResources]) -> list[Accelerator]:
        """The GPUs of the clusters, under the extended resource names pods ask them as."""
        mapped = self.settings.accelerators
        if not mapped:
            types = self._gpu_types()
            gpus = sum(n for res in found for t, n in res.gpus.items() if not types or t in types)
            return [Accelerator(resourceType=GPU_RESOURCE, available=str(gpus))] if gpus else []
        out = []
        for resource, gres in mapped.items():
            name, _, kind = gres.partition(":")
            if name != "gpu":
                continue  # Slurm's node listings are read for gpu gres only
            n = sum(c for res in found for t, c in res.gpus.items() if not kind or t == kind)
            if n:
                out.append(Accelerator(resourceType=resource, available=str(n)))
        return out

    async def ping(self) -> PingResponse:
        """The node's capacity: the sum over the clusters the targets use (one that does not
        answer is left out of the sum; all silent is an error). No usable node is an error too,
        never a zero capacity: the virtual kubelet would take a zero as the node's new size and
        drain it (interLink #558), where an error leaves the last size and marks the node."""
        now = self.clock.monotonic()
        if self._ping and now - self._ping[0] < self.settings.ping_cache_seconds:
            return self._ping[1]
        names = self.settings.cluster_names
        answers = await asyncio.gather(
            *(self.schedulers[n].resources(self._partitions(n)) for n in names),
            return_exceptions=True,
        )
        found = [a for a in answers if isinstance(a, ClusterResources)]
        failed = [(n, a) for n, a in zip(names, answers, strict=True) if isinstance(a, Exception)]
        if not found:
            raise failed[0][1]
        for name, err in failed:
            log.warning("cluster %s left out of the node's capacity: %s", name, err)
        cpus = sum(r.cpus for r in found)
        memory_mb = sum(r.memory_mb for r in found)
        if cpus <= 0 or memory_mb <= 0:
            last = self._last_capacity
            kept = f"cpu {last.cpu}, memory {last.memory}" if last else "none known yet"
            partitions = sorted({p for n in names for p in self._partitions(n)})
            raise SchedulerUnavailable(
                "no Slurm node is usable"
                + (f" in partitions {', '.join(partitions)}" if partitions else "")
                + " (all down, drained or not responding): the virtual node keeps its last "
                f"known capacity ({kept})"
            )
        resources = PingResources(
            cpu=str(cpus),
            memory=f"{memory_mb}Mi",
            pods=str(self.settings.max_pods),
            accelerators=self._accelerators(found),
        )
        answer = PingResponse(status="ok", resources=resources, taints=self.settings.taints)
        self._ping = (now, answer)
        self._last_capacity = resources
        return answer

    async def ready(self) -> None:
        """Ready when Slurm answers: one cluster of those the targets use is enough."""
        names = self.settings.cluster_names
        answers = await asyncio.gather(
            *(self.schedulers[n].ping() for n in names), return_exceptions=True
        )
        errors = [a for a in answers if isinstance(a, BaseException)]
        if len(errors) == len(answers):
            raise errors[0]

"""Prometheus metrics. One registry per app, so tests can build many apps."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from interlink_slurm.errors import SchedulerUnavailable
from interlink_slurm.slurm.scheduler import ClusterResources, Estimate, JobInfo, Scheduler

T = TypeVar("T")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Queue waits: seconds to days.
WAIT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400, 259200)
ERROR_BUCKETS = tuple(sorted({-b for b in WAIT_BUCKETS} | {0} | set(WAIT_BUCKETS)))


@dataclass
class Metrics:
    """The plugin's Prometheus metrics, in a registry of their own (one per service, so that
    tests and several services in one process do not share counters)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self._add_http(self.registry)
        self._add_slurm(self.registry)
        self._add_placement(self.registry)

    def _add_http(self, r: CollectorRegistry) -> None:
        """HTTP requests by endpoint and code, and their latency."""
        self.requests = Counter(
            "interlink_slurm_http_requests_total",
            "HTTP requests by endpoint and status code",
            ["endpoint", "code"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "interlink_slurm_http_request_seconds",
            "HTTP request latency by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def _add_slurm(self, r: CollectorRegistry) -> None:
        """Calls to Slurm, submissions, the pods tracked and how fresh their states are."""
        self.scheduler_calls = Counter(
            "interlink_slurm_scheduler_calls_total",
            "Calls to Slurm (one per command or REST request) by operation and outcome",
            ["operation", "outcome"],
            registry=r,
        )
        self.scheduler_seconds = Histogram(
            "interlink_slurm_scheduler_call_seconds",
            "Latency of calls to Slurm by operation",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.submit_failures = Counter(
            "interlink_slurm_submit_failures_total",
            "Pods whose job could not be submitted, by reason class",
            ["reason"],
            registry=r,
        )
        self.image_lookups = Counter(
            "interlink_slurm_image_lookups_total",
            "Registries asked which digest a tag names (imagePullPolicy Always), by outcome",
            ["outcome"],
            registry=r,
        )
        self.pods = Gauge(
            "interlink_slurm_pods",
            "Tracked pods by Slurm state of their job (ACTIVE = "
            "queued or running, SUBMITTING = in flight)",
            ["state"],
            registry=r,
        )
        self.refresh_age = Gauge(
            "interlink_slurm_status_snapshot_age_seconds",
            "Seconds since the job states were last read from Slurm",
            registry=r,
        )
        self.tracked_jobs = Gauge(
            "interlink_slurm_active_jobs",
            "Jobs asked about at each refresh",
            registry=r,
        )

    def _add_placement(self, r: CollectorRegistry) -> None:
        """Placement over several targets: how pods were placed, how good the estimates were."""
        self.placements = Counter(
            "interlink_slurm_placements_total",
            "Pods placed, by target and by what decided (only: the one target that could take "
            "it, estimate: the soonest expected start, order: no estimate, configured order)",
            ["target", "basis"],
            registry=r,
        )
        self.estimate_failures = Counter(
            "interlink_slurm_placement_estimate_failures_total",
            "Start-time estimates that failed or came too late, by target",
            ["target"],
            registry=r,
        )
        self.predicted_wait = Histogram(
            "interlink_slurm_placement_predicted_wait_seconds",
            "Wait from submission to start that Slurm predicted for placed pods, by target",
            ["target"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.actual_wait = Histogram(
            "interlink_slurm_placement_actual_wait_seconds",
            "Wait from placement until the job was seen running, by target",
            ["target"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.wait_error = Histogram(
            "interlink_slurm_placement_start_error_seconds",
            "Actual minus predicted start of placed pods (negative: earlier than predicted)",
            ["target"],
            buckets=ERROR_BUCKETS,
            registry=r,
        )


class MeteredScheduler:
    """Any Scheduler, with each call counted and timed."""

    def __init__(self, inner: Scheduler, metrics: Metrics) -> None:
        self._inner = inner
        self._m = metrics

    async def _call(self, operation: str, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await call
        except SchedulerUnavailable:
            outcome = "unavailable"
            raise
        except Exception:
            outcome = "error"
            raise
        finally:
            self._m.scheduler_calls.labels(operation, outcome).inc()
            self._m.scheduler_seconds.labels(operation).observe(time.perf_counter() - started)

    async def submit(self, script_path: str, workdir: str, directives: Sequence[str]) -> str:
        return await self._call("submit", self._inner.submit(script_path, workdir, directives))

    async def cancel(self, job_id: str) -> None:
        await self._call("cancel", self._inner.cancel(job_id))

    async def release(self, job_id: str) -> None:
        await self._call("release", self._inner.release(job_id))

    async def signal(self, job_id: str, signal: str) -> None:
        await self._call("signal", self._inner.signal(job_id, signal))

    async def query(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        return await self._call("query", self._inner.query(job_ids))

    async def final_states(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        return await self._call("final_states", self._inner.final_states(job_ids))

    async def find_by_comment(self, comment: str) -> JobInfo | None:
        return await self._call("find_by_comment", self._inner.find_by_comment(comment))

    async def resources(self, partitions: Sequence[str]) -> ClusterResources:
        return await self._call("resources", self._inner.resources(partitions))

    async def ping(self) -> None:
        await self._call("ping", self._inner.ping())

    async def estimate(self, directives: Sequence[str], timeout: float) -> Estimate:
        return await self._call("estimate", self._inner.estimate(directives, timeout))

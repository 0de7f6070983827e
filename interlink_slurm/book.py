"""The placement book: per target, the placed pods whose job has not been seen to start (the
placement's ties go to the target with fewer of them), and the predicted vs. actual start of
each placed pod once its job starts.

A pod's placement record (JSON in the store) is parsed once, when the pod is entered.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from interlink_slurm.metrics import Metrics
from interlink_slurm.placement import Placement
from interlink_slurm.slurm.scheduler import JobInfo
from interlink_slurm.slurm.states import WAITING, base_state
from interlink_slurm.store import PodRecord

# States of a job that has started (for the placement's predicted vs. actual start).
STARTED = frozenset({"RUNNING", "COMPLETING", "COMPLETED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY"})


@dataclass(frozen=True)
class Placed:
    """What the book keeps of one placed pod's record."""

    target: str
    decided_at: float | None
    predicted_start: float | None


def parse(record: str) -> Placed:
    """A placement record as the store keeps it (Placement.record) → Placed."""
    raw = json.loads(record)
    decided = raw.get("decided_at")
    predicted = raw.get("predicted_start")
    return Placed(
        str(raw.get("target")),
        float(decided) if isinstance(decided, int | float) else None,
        float(predicted) if isinstance(predicted, int | float) else None,
    )


class PlacementBook:
    """The placed pods still waiting to start, per target (placement's tie-breaker), and
    the predicted against the actual start once they run (metrics)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.waiting: dict[str, set[str]] = {}  # target → uids of its placed, unstarted pods
        self._placed: dict[str, Placed] = {}  # uid → its placement, parsed

    def _of(self, rec: PodRecord) -> Placed | None:
        if rec.placement is None:
            return None
        placed = self._placed.get(rec.uid)
        if placed is None:
            placed = self._placed[rec.uid] = parse(rec.placement)
        return placed

    def counts(self) -> dict[str, int]:
        """Per target, how many placed pods wait to start."""
        return {t: len(uids) for t, uids in self.waiting.items()}

    def add(self, target: str, uid: str) -> None:
        """Counted at once (no await since the decision): the next pod's tie sees it."""
        self.waiting.setdefault(target, set()).add(uid)

    def placed(self, placement: Placement, uids: Sequence[str]) -> None:
        """A decision for these pods (one pod, or a pod group's members, placed as one job):
        each counted waiting on its target at once (the next decision's tie sees them), and
        the decision in the metrics."""
        name = placement.chosen.name
        for uid in uids:
            self.add(name, uid)
        self.metrics.placements.labels(name, placement.basis).inc(len(uids))
        for target, est in placement.estimates.items():
            if isinstance(est, str):
                self.metrics.estimate_failures.labels(target).inc()
        if placement.predicted_start is not None:
            wait = max(0.0, placement.predicted_start - placement.decided_at)
            self.metrics.predicted_wait.labels(name).observe(wait)

    def enter(self, rec: PodRecord) -> None:
        """A placed pod whose job has not started (at startup, or found after a failed
        submit)."""
        placed = self._of(rec)
        if placed is not None:
            self.add(placed.target, rec.uid)

    def forget(self, uid: str) -> None:
        """A pod placed but not submitted after all, or gone."""
        for uids in self.waiting.values():
            uids.discard(uid)
        self._placed.pop(uid, None)

    def note_starts(
        self, recs: Sequence[PodRecord], jobs: Mapping[str, JobInfo], now: float
    ) -> list[str]:
        """Placed pods whose job is seen started for the first time (returned, for the store):
        predicted vs. actual start in the metrics. Pods whose job no longer waits leave the
        waiting count."""
        started = []
        for rec in recs:
            placed = self._of(rec)
            if placed is None or rec.started is not None:
                continue
            job = jobs.get(rec.job_id or "")
            if job is None or base_state(job) not in WAITING or rec.deleted is not None:
                self.waiting.get(placed.target, set()).discard(rec.uid)
            if job is None or base_state(job) not in STARTED:
                continue
            started.append(rec.uid)
            decided = placed.decided_at or rec.created
            self.metrics.actual_wait.labels(placed.target).observe(max(0.0, now - decided))
            if placed.predicted_start is not None:
                self.metrics.wait_error.labels(placed.target).observe(now - placed.predicted_start)
        return started

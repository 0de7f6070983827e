"""Where a pod goes (placement, second half): of the targets that can run it
(``translate.targets``), the one where Slurm expects it to start soonest.

Each eligible target's scheduler is asked, all at once and for at most
``placement_estimate_seconds`` in all, when the pod's job would start there (``sbatch
--test-only``). The score of a target is ``penalty_seconds + weight * wait``; the lowest wins.
Ties (scores within TIE_SECONDS of the best) go to the target with fewer of the plugin's own placed
pods still waiting to start (Slurm's estimate counts running jobs, not pending ones, so a burst
of pods would otherwise all go to the first of equally free targets), then to the pod's
preferred node affinity, then to the configured order. A target whose Slurm says it would
refuse the job is ruled out; targets with no estimate (Slurm unreachable, too slow) come after
those with one, and when no target has one the configured order decides.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from interlink_slurm.errors import PluginError, PodRejected, SubmitRejected
from interlink_slurm.slurm.scheduler import Estimate, Scheduler
from interlink_slurm.translate.targets import Candidate, rejection

# What a placement was based on.
ONLY = "only"  # one target could take the pod
ESTIMATE = "estimate"  # the soonest expected start (weighted)
ORDER = "order"  # no target had an estimate: the configured order
# Scores this close are a tie: Slurm's estimates are whole seconds, asked a moment apart.
TIE_SECONDS = 5.0


@dataclass(frozen=True)
class Placement:
    """Where a pod goes among several targets, on what basis, and what each target's
    estimate was (kept in the store for status messages and metrics)."""

    chosen: Candidate
    basis: str  # ONLY, ESTIMATE or ORDER
    estimates: Mapping[str, Estimate | str]  # target → Slurm's estimate, or why there is none
    candidates: tuple[Candidate, ...]
    decided_at: float

    @property
    def predicted_start(self) -> float | None:
        """When Slurm expected the chosen target to start the job; None without an estimate."""
        est = self.estimates.get(self.chosen.name)
        return est.start if isinstance(est, Estimate) else None

    def record(self) -> str:
        """What the store keeps of the decision (JSON), for status messages and metrics."""
        estimates: dict[str, Any] = {
            name: {"start": e.start} if isinstance(e, Estimate) else {"error": e}
            for name, e in self.estimates.items()
        }
        return json.dumps(
            {
                "target": self.chosen.name,
                "cluster": self.chosen.cluster,
                "partition": self.chosen.partition,
                "basis": self.basis,
                "predicted_start": self.predicted_start,
                "decided_at": self.decided_at,
                "estimates": estimates,
                "ruled_out": {c.name: str(c.rejected) for c in self.candidates if c.rejected},
            },
            sort_keys=True,
        )

    def lines(self) -> list[str]:
        """The decision and every target's part in it, for ``interlink-slurm render``."""
        out = [describe(json.loads(self.record()), self.decided_at)]
        for c in self.candidates:
            est = self.estimates.get(c.name)
            if c.rejected is not None:
                what = f"ruled out: {c.rejected}"
            elif isinstance(est, Estimate):
                what = f"expected start {_when(est.start, self.decided_at)}: {est.detail}"
            elif est is not None:
                what = f"no estimate: {est}"
            else:
                what = "can run it"
            mark = "*" if c is self.chosen else "-"
            out.append(f"{mark} target {c.name} (partition {c.partition or 'default'}): {what}")
        return out


def describe(record: Mapping[str, Any], now: float) -> str:
    """One sentence of a stored placement, for the status message of a waiting pod."""
    where = f"target {record.get('target')} (partition {record.get('partition') or 'default'})"
    basis = record.get("basis")
    start = record.get("predicted_start")
    if basis == ONLY:
        return f"placed on {where}, the only target that can run it"
    if basis == ORDER:
        return f"placed on {where} in the configured order (no start estimate)"
    decided = record.get("decided_at") or now
    when = _when(start, decided) if isinstance(start, int | float) else "unknown"
    return f"placed on {where}, where Slurm expected it to start soonest: {when}"


def _when(start: float, since: float) -> str:
    stamp = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    wait = max(0, round(start - since))
    if wait < 60:
        return f"{stamp} (right away)"
    hours, rest = divmod(wait, 3600)
    return f"{stamp} (after {f'{hours} h ' if hours else ''}{rest // 60} min)"


async def place(
    cands: Sequence[Candidate],
    schedulers: Mapping[str, Scheduler],
    cap_seconds: float,
    clock: Callable[[], float] = time.time,
    estimate: bool = True,
    waiting: Callable[[], Mapping[str, int]] = dict,
) -> Placement:
    """Choose among ``cands`` (from ``translate.targets.candidates``); raise PodRejected when
    none can take the pod, naming each one's reason. ``estimate=False``: no scheduler is
    asked, the configured order decides. ``waiting()``: per target, the placed pods still
    waiting to start there, read when the estimates are in (for ties)."""
    now = clock()
    eligible = [c for c in cands if c.plan is not None]
    if not eligible:
        raise rejection(cands)
    if len(eligible) == 1:
        return Placement(eligible[0], ONLY, {}, tuple(cands), now)

    estimates = await _estimates(eligible, schedulers, cap_seconds) if estimate else {}
    refused = {name: e for name, e in estimates.items() if isinstance(e, SubmitRejected)}
    if refused:
        cands = [
            replace(c, plan=None, rejected=_slurm_refused(refused[c.name]))
            if c.name in refused
            else c
            for c in cands
        ]
        eligible = [c for c in cands if c.plan is not None]
        if not eligible:
            raise rejection(cands)
    answers: dict[str, Estimate | str] = {
        name: e if isinstance(e, Estimate) else str(e)
        for name, e in estimates.items()
        if name not in refused
    }

    chosen = _soonest(eligible, answers, now, waiting())
    basis = ESTIMATE if any(isinstance(e, Estimate) for e in answers.values()) else ORDER
    return Placement(chosen, basis, answers, tuple(cands), now)


def _soonest(
    eligible: Sequence[Candidate],
    answers: Mapping[str, Estimate | str],
    now: float,
    backlog: Mapping[str, int],
) -> Candidate:
    """The candidate expected to start the pod soonest (its penalty and weight applied); the
    ones without an estimate come after, in the configured order."""
    scores = {
        c.name: c.target.penalty_seconds + c.target.weight * max(0.0, est.start - now)
        for c in eligible
        if isinstance(est := answers.get(c.name), Estimate)
    }
    best = min(scores.values(), default=0.0)

    def key(index_cand: tuple[int, Candidate]) -> tuple[int, float, int, int, int]:
        index, c = index_cand
        score = scores.get(c.name)
        if score is None:
            return (1, 0.0, 0, -c.preference, index)
        # Within TIE_SECONDS of the best is as good as the best (estimates are read a moment
        # apart): the waiting pods, then the preference, then the order decide among those.
        return (
            0,
            0.0 if score - best <= TIE_SECONDS else score,
            backlog.get(c.name, 0),
            -c.preference,
            index,
        )

    return min(enumerate(eligible), key=key)[1]


def _slurm_refused(err: SubmitRejected) -> PodRejected:
    return PodRejected("spec", str(err))  # "Slurm would not run the job: <Slurm's words>"


async def _estimates(
    eligible: Sequence[Candidate], schedulers: Mapping[str, Scheduler], cap_seconds: float
) -> dict[str, Estimate | PluginError | str]:
    """Every target's estimate at once, within ``cap_seconds`` in all."""
    tasks = {
        c.name: asyncio.create_task(
            schedulers[c.cluster].estimate(c.plan.directives if c.plan else (), cap_seconds)
        )
        for c in eligible
    }
    await asyncio.wait(tasks.values(), timeout=cap_seconds)
    out: dict[str, Estimate | PluginError | str] = {}
    for name, task in tasks.items():
        if not task.done():
            task.cancel()
            out[name] = f"no answer within {cap_seconds:g} s"
        elif (err := task.exception()) is not None:
            out[name] = err if isinstance(err, PluginError) else f"{type(err).__name__}: {err}"
        else:
            out[name] = task.result()
    return out

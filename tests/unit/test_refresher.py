"""The background refresher's pace, on a fake clock: how long it waits after a turn, when it
asks the queue, how a wake-up and a failed turn are handled (refresher.py). The trackers' own
reads are tested in test_service_parts.py and test_state_reader.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from interlink_slurm.book import PlacementBook
from interlink_slurm.config import load_settings
from interlink_slurm.metrics import Metrics
from interlink_slurm.refresher import (
    MIN_REFRESH_GAP_SECONDS,
    MIN_REFRESH_PAUSE_SECONDS,
    STARTING_REFRESH_SECONDS,
    Refresher,
)
from interlink_slurm.slurm.fake import FakeScheduler
from interlink_slurm.store import Store
from interlink_slurm.tracker import StatusTracker
from tests.counting import CountingTransport
from tests.fakeclock import FakeClock


def make(tmp_path: Path, **more: Any) -> tuple[Refresher, FakeScheduler, FakeClock]:
    settings = load_settings(
        None, data_root=str(tmp_path / "pods"), runtime="apptainer", partition="cpu", **more
    )
    store = Store(tmp_path / "state.db")
    store.open()
    clock = FakeClock()
    fake = FakeScheduler()
    metrics = Metrics()
    tracker = StatusTracker(
        "default", CountingTransport(), fake, str(settings.data_root), store, clock
    )
    refresher = Refresher(
        settings,
        store,
        {"default": tracker},
        PlacementBook(metrics),
        metrics,
        clock,
    )
    return refresher, fake, clock


def drive(refresher: Refresher, scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    try:
        asyncio.run(scenario())
    finally:
        refresher.store.close()


def test_a_slow_turn_waits_only_what_is_left_of_its_interval(tmp_path: Path) -> None:
    refresher, _, clock = make(tmp_path, status_refresh_seconds=2)
    started = clock.monotonic()
    clock.advance(0.5)
    assert refresher.pause(started) == 1.5
    clock.advance(2)  # the turn took longer than the interval: a breath all the same
    assert refresher.pause(started) == MIN_REFRESH_PAUSE_SECONDS
    refresher.store.close()


def test_a_wake_up_never_brings_two_turns_closer_than_the_gap(tmp_path: Path) -> None:
    refresher, _, clock = make(tmp_path, status_refresh_seconds=2)
    started = clock.monotonic()
    clock.advance(0.25)
    assert refresher.woken_pause(started) == MIN_REFRESH_GAP_SECONDS - 0.25
    clock.advance(1)
    assert refresher.woken_pause(started) == 0
    # While pods start, the interval itself is shorter than the gap.
    refresher.starting = True
    assert refresher.interval() == STARTING_REFRESH_SECONDS < MIN_REFRESH_GAP_SECONDS
    assert refresher.woken_pause(clock.monotonic()) == STARTING_REFRESH_SECONDS
    refresher.store.close()


def test_a_requested_query_still_waits_for_the_gap_and_an_idle_one_for_its_interval(
    tmp_path: Path,
) -> None:
    refresher, _, clock = make(tmp_path, status_refresh_seconds=2, status_idle_refresh_seconds=6)

    async def scenario() -> None:
        assert refresher.queue_due()  # never asked yet
        await refresher.refresh()
        assert not refresher.queue_due()
        refresher.request()
        assert not refresher.queue_due()  # a create right after a query: Slurm gets a breath
        clock.advance(MIN_REFRESH_GAP_SECONDS)
        assert refresher.queue_due()
        await refresher.refresh()
        # Nothing changed at either query: the interval doubled twice, 2 → 4 → 6 (the longest).
        clock.advance(5.5)
        assert not refresher.queue_due()
        clock.advance(0.5)
        assert refresher.queue_due()
        assert refresher.snapshot_age() == 6.0  # since the last query Slurm answered

    drive(refresher, scenario)


def test_the_loop_runs_the_janitors_after_every_turn_and_survives_a_failed_one(
    tmp_path: Path,
) -> None:
    refresher, _, _ = make(tmp_path, status_refresh_seconds=0.01)
    turns: list[int] = []

    async def after() -> None:
        turns.append(len(turns))
        if len(turns) == 2:
            raise RuntimeError("a janitor's turn failed")

    async def scenario() -> None:
        await refresher.start(after)
        assert not turns and refresher.snapshot_age() == 0  # the refresh before serving
        async with asyncio.timeout(10):
            while len(turns) < 4:
                await asyncio.sleep(0.01)
        await refresher.stop()
        stopped = len(turns)
        await asyncio.sleep(3 * MIN_REFRESH_PAUSE_SECONDS)
        assert len(turns) == stopped  # nothing runs after stop

    drive(refresher, scenario)


def test_a_request_wakes_the_loop_before_its_interval_runs_out(tmp_path: Path) -> None:
    refresher, _, clock = make(tmp_path, status_refresh_seconds=60)
    turns: list[float] = []

    async def after() -> None:
        turns.append(time.monotonic())

    async def scenario() -> None:
        await refresher.start(after)
        async with asyncio.timeout(10):
            while not turns:
                await asyncio.sleep(0.01)
        clock.advance(MIN_REFRESH_GAP_SECONDS)  # the query after the first: due on request
        refresher.request()
        async with asyncio.timeout(10):  # not 60 s
            while len(turns) < 2:
                await asyncio.sleep(0.01)
        assert refresher.snapshot_age() == 0  # that turn asked the queue
        await refresher.stop()

    drive(refresher, scenario)

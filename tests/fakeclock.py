"""A clock the tests move by hand (tracker.Clock): the parts read every interval from it."""

from __future__ import annotations

import time


class FakeClock:
    """Wall-clock time from now, monotonic time from 1,000 s; both move only by ``advance``."""

    def __init__(self) -> None:
        self.now = time.time()
        self.mono = 1000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds

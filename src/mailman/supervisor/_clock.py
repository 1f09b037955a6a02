"""Clocks: where a supervisor reads the time for its restart intensity window.

OTP reads ``erlang:monotonic_time(second)``. Passing the clock in, rather than calling
``time.monotonic()`` inside, lets a test move time by hand and check the window at its edges
without sleeping.

Example::

    clock = ManualClock()
    spec = SupervisorSpec(children, strategy=Strategy.ONE_FOR_ONE, clock=clock)
    clock.advance(6)   # older restarts fall out of a 5 second window
"""

from __future__ import annotations

import math
import time
from typing import Protocol

__all__ = ["INFINITY", "Clock", "ManualClock", "MonotonicClock"]


class Clock(Protocol):
    """Anything with a ``monotonic()`` returning seconds that never go backwards."""

    def monotonic(self) -> float: ...


class MonotonicClock:
    """The real clock: ``time.monotonic()``."""

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told to: for tests of time windows."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def monotonic(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (never backwards)."""
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go back: expected seconds >= 0, got {seconds}")
        self._now += seconds


INFINITY: float = math.inf
"""``infinity``: a timeout or shutdown that never runs out."""

"""Restart intensity: how many restarts a supervisor tolerates before it gives up.

If more than ``max_restarts`` restarts happen within ``max_seconds``, the supervisor terminates
all its children and then itself, with reason ``shutdown``; its own supervisor then decides what
to do (escalation). The history is kept per supervisor, shared by all its children, and one
restart *event* counts once however many siblings a ``one_for_all`` restart brings back.

The algorithm is OTP's ``add_restart``, exactly: time is whole seconds of a monotonic clock;
keep the restarts at or after ``now - max_seconds``, add ``now``, and give up if more than
``max_restarts`` remain. The restart being attempted counts *before* it is tried, so with
``max_restarts=0`` the first crash already ends the supervisor.

Example::

    intensity = RestartIntensity(max_restarts=3, max_seconds=5, clock=ManualClock())
    assert all(intensity.add_restart() for _ in range(3))
    assert not intensity.add_restart()        # the 4th within 5 s

See also: Erlang ``supervisor`` "Restart intensity and period"; Elixir ``:max_restarts``.
"""

from __future__ import annotations

import math
from collections import deque

from mailman.supervisor._clock import Clock

__all__ = ["RestartIntensity", "validate_intensity"]


def validate_intensity(max_restarts: int, max_seconds: int) -> None:
    """Raise ``ValueError`` / ``TypeError`` for flags OTP rejects (``invalid_intensity`` ...)."""
    if isinstance(max_restarts, bool) or not isinstance(max_restarts, int):
        raise TypeError(f"expected max_restarts to be an int >= 0, got {max_restarts!r}")
    if max_restarts < 0:
        raise ValueError(f"expected max_restarts >= 0, got {max_restarts}")
    if isinstance(max_seconds, bool) or not isinstance(max_seconds, int):
        raise TypeError(
            f"expected max_seconds to be a whole number of seconds > 0, got {max_seconds!r} "
            "(OTP counts the window in whole seconds)"
        )
    if max_seconds <= 0:
        raise ValueError(f"expected max_seconds > 0, got {max_seconds}")


class RestartIntensity:
    """The sliding window of one supervisor's restarts."""

    __slots__ = ("_clock", "_restarts", "max_restarts", "max_seconds")

    def __init__(self, max_restarts: int, max_seconds: int, clock: Clock) -> None:
        validate_intensity(max_restarts, max_seconds)
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self._clock = clock
        self._restarts: deque[int] = deque()  # newest first, as OTP's list

    def add_restart(self) -> bool:
        """Count one restart now; False when that makes too many (the supervisor must stop)."""
        now = math.floor(self._clock.monotonic())
        threshold = now - self.max_seconds
        restarts = self._restarts
        while restarts and restarts[-1] < threshold:
            restarts.pop()
        restarts.appendleft(now)
        return len(restarts) <= self.max_restarts

    def __len__(self) -> int:
        """How many restarts are in the window as last counted."""
        return len(self._restarts)

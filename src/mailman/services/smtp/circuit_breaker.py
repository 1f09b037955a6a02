"""A circuit breaker: stop using a failing transport, and try it again after growing waits.

Three states:

- ``CLOSED``: requests go through. ``failure_threshold`` consecutive failures open the breaker.
- ``OPEN``: requests are refused for a wait that grows with each trip, exponentially and capped:
  ``base_delay * multiplier ** (trips - 1)``, at most ``max_delay`` (10, 20, 40, 80, 160, 300 s by
  default, in the spirit of Mailtrain's per-transport back-off).
- ``HALF_OPEN``: the wait is over; exactly one request (the *probe*) may go through. Its success
  closes the breaker and forgets the trips; its failure opens it again for a longer wait.

The state machine is plain synchronous code reading an injected clock, so tests move time by hand::

    breaker = CircuitBreaker(clock=clock)
    if breaker.allow_request():            # in HALF_OPEN this caller becomes the probe
        result = await send(...)
        breaker.record_success() if ok else breaker.record_failure()

and :meth:`CircuitBreaker.wait_until_allowed` is the ``async`` helper that waits (with the injected
``sleep``) until a request may go: at once when closed, after the wait when open, after the probe's
verdict when another caller holds the probe.

A caller that took the probe and then sends nothing (it was cancelled) must call
:meth:`CircuitBreaker.release_probe`, or the breaker stays half-open with nobody probing.
"""

from __future__ import annotations

import asyncio
from enum import Enum

from mailman.services.smtp.rate_limit import Sleep
from mailman.supervisor import Clock, MonotonicClock

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(Enum):
    """Where a :class:`CircuitBreaker` is."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Closed / open / half-open with exponentially growing, capped waits; time injected."""

    def __init__(
        self,
        *,
        failure_threshold: int = 1,
        base_delay: float = 10.0,
        max_delay: float = 300.0,
        multiplier: float = 2.0,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
    ) -> None:
        if type(failure_threshold) is not int or failure_threshold < 1:
            raise ValueError(f"expected failure_threshold >= 1, got {failure_threshold!r}")
        if not 0 < base_delay <= max_delay:
            raise ValueError(f"expected 0 < base_delay <= max_delay, got {base_delay=!r}, {max_delay=!r}")
        if not multiplier >= 1:
            raise ValueError(f"expected multiplier >= 1, got {multiplier!r}")
        self.failure_threshold = failure_threshold
        self.base_delay = float(base_delay)
        self.max_delay = float(max_delay)
        self.multiplier = float(multiplier)
        self._clock = clock if clock is not None else MonotonicClock()
        self._sleep = sleep if sleep is not None else asyncio.sleep
        self._open = False
        self._failures = 0
        self._trips = 0
        self._reopen_at = 0.0
        self._probing = False
        self._changed: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"CircuitBreaker(state={self.state.name}, trips={self._trips}, failures={self._failures})"

    # ---------------------------------------------------------------- the state machine

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker becomes half-open when its wait is over)."""
        if not self._open:
            return BreakerState.CLOSED
        if self._clock.monotonic() < self._reopen_at:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    @property
    def trips(self) -> int:
        """How many times in a row the breaker opened without a success in between."""
        return self._trips

    @property
    def retry_in(self) -> float:
        """Seconds until an open breaker turns half-open (0 when it is not open)."""
        return max(0.0, self._reopen_at - self._clock.monotonic()) if self._open else 0.0

    def delay_for(self, trip: int) -> float:
        """How long the breaker stays open on its ``trip``-th consecutive opening (from 1)."""
        return min(self.max_delay, self.base_delay * self.multiplier ** (trip - 1))

    def allow_request(self) -> bool:
        """Whether a request may go now; in HALF_OPEN the first caller takes the single probe."""
        match self.state:
            case BreakerState.CLOSED:
                return True
            case BreakerState.OPEN:
                return False
            case BreakerState.HALF_OPEN:
                if self._probing:
                    return False
                self._probing = True
                return True

    def record_success(self) -> None:
        """A request succeeded: the transport works, close the breaker and forget the trips."""
        was = (self._open, self._failures, self._trips)
        self._open = False
        self._failures = 0
        self._trips = 0
        self._probing = False
        if was != (False, 0, 0):
            self._notify()

    def record_failure(self) -> None:
        """A request failed because of the transport."""
        match self.state:
            case BreakerState.CLOSED:
                self._failures += 1
                if self._failures >= self.failure_threshold:
                    self._trip()
            case BreakerState.OPEN:
                pass  # a request sent before the breaker opened: the breaker already knows
            case BreakerState.HALF_OPEN:
                self._trip()

    def release_probe(self) -> None:
        """The probe ended without a verdict (cancelled, or an outcome that proves nothing)."""
        if self._probing:
            self._probing = False
            self._notify()

    def _trip(self) -> None:
        self._trips += 1
        self._open = True
        self._failures = 0
        self._probing = False
        self._reopen_at = self._clock.monotonic() + self.delay_for(self._trips)
        self._notify()

    # ---------------------------------------------------------------- waiting

    async def wait_until_allowed(self) -> None:
        """Wait until :meth:`allow_request` lets this caller through, then return (it has been let in).

        In HALF_OPEN the caller returns holding the probe: it must record the outcome (or release the
        probe). Several callers may wait; the ones that do not get the probe wait for its verdict.
        """
        while not self.allow_request():
            await self._wait(self.retry_in if self.state is BreakerState.OPEN else None)

    def _notify(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
        self._changed = None

    async def _wait(self, seconds: float | None) -> None:
        """Wait until the state changes, or ``seconds`` pass (when given)."""
        if self._changed is None:
            self._changed = asyncio.get_running_loop().create_future()
        changed = asyncio.shield(self._changed)  # several waiters share the one future
        if seconds is None:
            await changed
            return
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        try:
            await asyncio.wait((sleeper, changed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
            if not sleeper.done():
                sleeper.cancel()
                await asyncio.wait((sleeper,))
            elif not sleeper.cancelled():
                sleeper.result()

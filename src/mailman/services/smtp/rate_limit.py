"""A token bucket: how many messages per second a transport may send, with bursts, changeable live.

The bucket holds up to ``burst`` tokens and gains ``rate`` tokens per second; each message takes
one. :meth:`TokenBucket.acquire` waits for a token, first come first served, so a letter that asks
late is not overtaken by one that keeps asking. It is applied at the moment of sending (the SMTP
pool calls it right before each transaction), not when work is queued, so queued work cannot burst
past the limit::

    bucket = TokenBucket(rate=10, burst=5)     # 10 messages/s on average, 5 at once at most
    await bucket.acquire()                     # then send one message
    bucket.set_rate(50)                        # live: waiters re-plan at once

Time is injected: ``clock`` has ``monotonic()`` (any :class:`mailman.supervisor.Clock`) and
``sleep`` is an ``async`` function of seconds. Tests pass a fake pair and never really sleep.

``rate=math.inf`` means no limit (``acquire`` never waits), which is the default of the SMTP pool.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable

from mailman.supervisor import Clock, MonotonicClock

__all__ = ["Sleep", "TokenBucket"]

Sleep = Callable[[float], Awaitable[None]]
"""An ``async`` function that returns after the given number of seconds (``asyncio.sleep``)."""

# Float arithmetic may leave 0.999999... tokens after waiting exactly the computed time.
_EPSILON = 1e-9


class TokenBucket:
    """A token bucket of ``burst`` tokens refilled at ``rate`` tokens per second; FIFO waiters."""

    def __init__(
        self,
        rate: float,
        burst: int = 1,
        *,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
    ) -> None:
        _check(rate, burst)
        self._rate = float(rate)
        self._burst = burst
        self._clock = clock if clock is not None else MonotonicClock()
        self._sleep = sleep if sleep is not None else asyncio.sleep
        self._tokens = float(burst)
        self._updated = self._clock.monotonic()
        self._lock = asyncio.Lock()
        self._changed: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self._rate}, burst={self._burst}, tokens={self.tokens:.3f})"

    @property
    def rate(self) -> float:
        """Tokens added per second (``math.inf``: no limit)."""
        return self._rate

    @property
    def burst(self) -> int:
        """The most tokens the bucket holds: how many messages may go at once after a quiet spell."""
        return self._burst

    @property
    def tokens(self) -> float:
        """The tokens available now."""
        self._refill()
        return self._tokens

    def set_rate(self, rate: float, burst: int | None = None) -> None:
        """Change the rate (and the burst) now; a waiting :meth:`acquire` re-plans with the new rate."""
        burst = self._burst if burst is None else burst
        _check(rate, burst)
        self._refill()  # what was earned at the old rate stays earned
        self._rate = float(rate)
        self._burst = burst
        self._tokens = min(self._tokens, float(burst))
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)

    def try_acquire(self) -> bool:
        """Take a token if one is available now and nobody is waiting for one, without waiting."""
        return not self._lock.locked() and self._take()

    def _take(self) -> bool:
        if math.isinf(self._rate):
            return True
        self._refill()
        if self._tokens >= 1.0 - _EPSILON:
            self._tokens = max(self._tokens - 1.0, 0.0)
            return True
        return False

    def time_until_available(self) -> float:
        """Seconds until a token is available (0 if one is now)."""
        if math.isinf(self._rate):
            return 0.0
        self._refill()
        return max(0.0, (1.0 - self._tokens) / self._rate)

    async def acquire(self) -> None:
        """Wait for a token and take it. Callers are served in the order they called."""
        # asyncio.Lock is FIFO and does not let a newcomer overtake a woken waiter.
        async with self._lock:
            while not self._take():
                await self._wait(self.time_until_available())

    def _refill(self) -> None:
        now = self._clock.monotonic()
        if not math.isinf(self._rate):
            self._tokens = min(float(self._burst), self._tokens + (now - self._updated) * self._rate)
        self._updated = now

    async def _wait(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if :meth:`set_rate` changes the plan."""
        loop = asyncio.get_running_loop()
        self._changed = changed = loop.create_future()
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        try:
            await asyncio.wait((sleeper, changed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._changed = None
            if not changed.done():
                changed.cancel()
            if not sleeper.done():
                sleeper.cancel()
                # The sleeper is ours: see it finish before going on (it only has to unwind).
                await asyncio.wait((sleeper,))
            elif not sleeper.cancelled():
                sleeper.result()


def _check(rate: float, burst: int) -> None:
    if not isinstance(rate, int | float) or isinstance(rate, bool) or not rate > 0:
        raise ValueError(f"expected a rate > 0 messages per second (math.inf: no limit), got {rate!r}")
    if type(burst) is not int or burst < 1:
        raise ValueError(f"expected a burst of at least 1 message, got {burst!r}")

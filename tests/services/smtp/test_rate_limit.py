"""The token bucket, on fake time: rates, bursts, FIFO waiters and live rate changes."""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING

import pytest

from mailman.services.smtp.rate_limit import TokenBucket

if TYPE_CHECKING:
    from tests.services.smtp_fixtures import FakeTime


def bucket(fake_time: FakeTime, rate: float = 10, burst: int = 1) -> TokenBucket:
    return TokenBucket(rate, burst, clock=fake_time, sleep=fake_time.sleep)


class TestConstruction:
    @pytest.mark.parametrize("rate", [0, -1, math.nan, "10", True])
    def test_rate_must_be_positive(self, rate: object) -> None:
        """A rate of zero, a negative or a non-number is refused at once."""
        with pytest.raises(ValueError, match="rate > 0"):
            TokenBucket(rate)  # type: ignore[arg-type]

    @pytest.mark.parametrize("burst", [0, -1, 1.5])
    def test_burst_must_be_a_positive_int(self, burst: object) -> None:
        """A burst below one message is refused."""
        with pytest.raises(ValueError, match="burst"):
            TokenBucket(1, burst)  # type: ignore[arg-type]

    def test_starts_full(self, fake_time: FakeTime) -> None:
        """A new bucket allows a full burst at once."""
        assert bucket(fake_time, burst=5).tokens == 5


class TestTryAcquire:
    def test_burst_then_empty(self, fake_time: FakeTime) -> None:
        """``burst`` tokens are available at once, then none."""
        limiter = bucket(fake_time, rate=10, burst=3)
        assert [limiter.try_acquire() for _ in range(4)] == [True, True, True, False]

    def test_refills_at_the_rate(self, fake_time: FakeTime) -> None:
        """After 1/rate seconds one more token is available."""
        limiter = bucket(fake_time, rate=10, burst=1)
        assert limiter.try_acquire()
        fake_time.advance(0.05)
        assert not limiter.try_acquire()
        fake_time.advance(0.05)
        assert limiter.try_acquire()

    def test_refill_is_capped_at_the_burst(self, fake_time: FakeTime) -> None:
        """A long quiet spell does not bank more than ``burst`` tokens."""
        limiter = bucket(fake_time, rate=10, burst=2)
        fake_time.advance(3600)
        assert limiter.tokens == 2

    def test_time_until_available(self, fake_time: FakeTime) -> None:
        """The wait for the next token is what is missing divided by the rate."""
        limiter = bucket(fake_time, rate=4, burst=1)
        limiter.try_acquire()
        assert limiter.time_until_available() == pytest.approx(0.25)

    async def test_never_overtakes_a_waiting_acquire(self, fake_time: FakeTime) -> None:
        """While an ``acquire`` waits for the next token, ``try_acquire`` takes none, even once the
        token is there: the waiter came first."""
        limiter = bucket(fake_time, rate=1, burst=1)
        assert limiter.try_acquire()
        waiter = asyncio.create_task(limiter.acquire())
        await fake_time.wait_for_sleepers()
        fake_time.advance(1)

        assert not limiter.try_acquire()
        await waiter
        assert limiter.tokens == pytest.approx(0)

    def test_infinite_rate_never_limits(self, fake_time: FakeTime) -> None:
        """``math.inf`` means no limit."""
        limiter = bucket(fake_time, rate=math.inf)
        assert all(limiter.try_acquire() for _ in range(10_000))
        assert limiter.time_until_available() == 0


class TestAcquire:
    async def test_returns_at_once_with_a_token(self, fake_time: FakeTime) -> None:
        """With a token available, acquire does not sleep."""
        await bucket(fake_time).acquire()
        assert fake_time.slept == []

    async def test_waits_for_the_next_token(self, fake_time: FakeTime) -> None:
        """An empty bucket makes acquire sleep exactly until the next token."""
        limiter = bucket(fake_time, rate=2)
        await limiter.acquire()
        waiter = asyncio.create_task(limiter.acquire())
        await fake_time.wait_for_sleepers()
        assert fake_time.slept == [pytest.approx(0.5)]
        assert not waiter.done()
        fake_time.advance(0.5)
        await waiter

    async def test_sustained_rate(self, fake_time: FakeTime) -> None:
        """Twenty acquisitions at 10/s with burst 1 take 1.9 s: one token every 0.1 s."""
        limiter = bucket(fake_time, rate=10)
        taken: asyncio.Queue[float] = asyncio.Queue()

        async def run() -> None:
            for _ in range(20):
                await limiter.acquire()
                taken.put_nowait(fake_time.now)

        task = asyncio.create_task(run())
        times = [await taken.get()]
        for _ in range(19):
            await fake_time.wait_for_sleepers()
            fake_time.advance(0.1)
            times.append(await taken.get())
        await task
        assert times[-1] - times[0] == pytest.approx(1.9)
        assert fake_time.slept == [pytest.approx(0.1)] * 19

    async def test_waiters_are_served_in_order(self, fake_time: FakeTime) -> None:
        """Callers get tokens first come, first served."""
        limiter = bucket(fake_time, rate=1)
        await limiter.acquire()
        served: asyncio.Queue[int] = asyncio.Queue()

        async def take(number: int) -> None:
            await limiter.acquire()
            served.put_nowait(number)

        tasks = [asyncio.create_task(take(n)) for n in range(3)]
        order = []
        for _ in tasks:
            await fake_time.wait_for_sleepers()
            fake_time.advance(1)
            order.append(await served.get())
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2]

    async def test_cancelled_waiter_gives_way(self, fake_time: FakeTime) -> None:
        """Cancelling a waiting acquire leaves no sleeper behind and lets the next caller in."""
        limiter = bucket(fake_time, rate=1)
        await limiter.acquire()
        first = asyncio.create_task(limiter.acquire())
        await fake_time.wait_for_sleepers()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert fake_time.sleepers == 0
        fake_time.advance(1)
        await limiter.acquire()


class TestSetRate:
    async def test_a_waiter_replans_with_a_higher_rate(self, fake_time: FakeTime) -> None:
        """Raising the rate wakes a waiter, which then sleeps for the new, shorter time."""
        limiter = bucket(fake_time, rate=0.1)  # one token per 10 s
        await limiter.acquire()
        waiter = asyncio.create_task(limiter.acquire())
        await fake_time.wait_for_sleepers()
        assert fake_time.slept[-1] == pytest.approx(10)
        limiter.set_rate(10)
        await fake_time.wait_for_sleep_calls(2)
        assert fake_time.slept[-1] == pytest.approx(0.1)
        fake_time.advance(0.1)
        await waiter

    async def test_unlimited_rate_releases_waiters_at_once(self, fake_time: FakeTime) -> None:
        """Switching to no limit lets every waiter through without time passing."""
        limiter = bucket(fake_time, rate=0.1)
        await limiter.acquire()
        waiters = [asyncio.create_task(limiter.acquire()) for _ in range(5)]
        await fake_time.wait_for_sleepers()
        limiter.set_rate(math.inf)
        await asyncio.gather(*waiters)
        assert fake_time.now == 1000.0

    def test_tokens_earned_stay_earned(self, fake_time: FakeTime) -> None:
        """Changing the rate keeps what accrued at the old rate (up to the new burst)."""
        limiter = bucket(fake_time, rate=1, burst=4)
        for _ in range(4):
            limiter.try_acquire()
        fake_time.advance(2)
        limiter.set_rate(100)
        assert limiter.tokens == pytest.approx(2)

    def test_a_smaller_burst_caps_the_tokens(self, fake_time: FakeTime) -> None:
        """Lowering the burst drops the tokens above it."""
        limiter = bucket(fake_time, rate=1, burst=10)
        limiter.set_rate(1, burst=2)
        assert (limiter.rate, limiter.burst, limiter.tokens) == (1, 2, 2)

    def test_invalid_rate_changes_nothing(self, fake_time: FakeTime) -> None:
        """A bad new rate raises and leaves the bucket as it was."""
        limiter = bucket(fake_time, rate=5, burst=2)
        with pytest.raises(ValueError, match="rate"):
            limiter.set_rate(0)
        assert (limiter.rate, limiter.burst) == (5, 2)

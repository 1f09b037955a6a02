"""The circuit breaker: its state machine on a fake clock, and waiting until a request may go."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from mailman.services.smtp.circuit_breaker import BreakerState, CircuitBreaker

if TYPE_CHECKING:
    from tests.services.smtp_fixtures import FakeTime

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def breaker(fake_time: FakeTime, **options: float) -> CircuitBreaker:
    return CircuitBreaker(clock=fake_time, sleep=fake_time.sleep, **options)  # type: ignore[arg-type]


class TestConstruction:
    @pytest.mark.parametrize(
        ("options", "match"),
        [
            ({"failure_threshold": 0}, "failure_threshold"),
            ({"base_delay": 0}, "base_delay"),
            ({"base_delay": 20, "max_delay": 10}, "max_delay"),
            ({"multiplier": 0.5}, "multiplier"),
        ],
    )
    def test_invalid_settings_are_refused(self, options: dict[str, float], match: str) -> None:
        """Settings that make no sense raise at once."""
        with pytest.raises(ValueError, match=match):
            CircuitBreaker(**options)  # type: ignore[arg-type]

    def test_starts_closed(self, fake_time: FakeTime) -> None:
        """A new breaker lets requests through."""
        assert breaker(fake_time).state is CLOSED


class TestDelays:
    def test_exponential_and_capped(self) -> None:
        """10, 20, 40, 80, 160, then 300 s for ever."""
        cb = CircuitBreaker()
        assert [cb.delay_for(trip) for trip in range(1, 9)] == [10, 20, 40, 80, 160, 300, 300, 300]

    def test_custom_growth(self) -> None:
        """Base, multiplier and cap are settings."""
        cb = CircuitBreaker(base_delay=1, multiplier=3, max_delay=20)
        assert [cb.delay_for(trip) for trip in range(1, 5)] == [1, 3, 9, 20]


class TestClosed:
    def test_allows_requests(self, fake_time: FakeTime) -> None:
        """Closed: every request may go."""
        cb = breaker(fake_time)
        assert all(cb.allow_request() for _ in range(5))

    def test_opens_on_the_threshold(self, fake_time: FakeTime) -> None:
        """``failure_threshold`` failures in a row open it."""
        cb = breaker(fake_time, failure_threshold=3)
        cb.record_failure()
        cb.record_failure()
        assert cb.state is CLOSED
        cb.record_failure()
        assert (cb.state, cb.trips, cb.retry_in) == (OPEN, 1, 10)

    def test_success_resets_the_count(self, fake_time: FakeTime) -> None:
        """Failures must be consecutive: a success in between starts the count again."""
        cb = breaker(fake_time, failure_threshold=2)
        cb.record_failure()
        cb.record_success()
        cb.record_failure()
        assert cb.state is CLOSED


class TestOpen:
    def test_refuses_requests(self, fake_time: FakeTime) -> None:
        """Open: no request goes."""
        cb = breaker(fake_time)
        cb.record_failure()
        assert not cb.allow_request()

    def test_turns_half_open_when_the_wait_is_over(self, fake_time: FakeTime) -> None:
        """After the delay the breaker is half-open."""
        cb = breaker(fake_time)
        cb.record_failure()
        fake_time.advance(9.9)
        assert cb.state is OPEN
        fake_time.advance(0.1)
        assert (cb.state, cb.retry_in) == (HALF_OPEN, 0)

    def test_late_failures_do_not_extend_the_wait(self, fake_time: FakeTime) -> None:
        """Failures of requests sent before it opened change nothing."""
        cb = breaker(fake_time)
        cb.record_failure()
        fake_time.advance(5)
        cb.record_failure()
        assert (cb.trips, cb.retry_in) == (1, 5)

    def test_a_success_closes_it(self, fake_time: FakeTime) -> None:
        """Any success proves the transport works again."""
        cb = breaker(fake_time)
        cb.record_failure()
        cb.record_success()
        assert (cb.state, cb.trips) == (CLOSED, 0)


class TestHalfOpen:
    def half_open(self, fake_time: FakeTime) -> CircuitBreaker:
        cb = breaker(fake_time)
        cb.record_failure()
        fake_time.advance(10)
        return cb

    def test_one_probe_only(self, fake_time: FakeTime) -> None:
        """Exactly one request goes through while half-open."""
        cb = self.half_open(fake_time)
        assert [cb.allow_request() for _ in range(3)] == [True, False, False]

    def test_probe_success_closes(self, fake_time: FakeTime) -> None:
        """The probe's success closes the breaker and forgets the trips."""
        cb = self.half_open(fake_time)
        cb.allow_request()
        cb.record_success()
        assert (cb.state, cb.trips) == (CLOSED, 0)
        assert cb.allow_request()

    def test_probe_failure_reopens_for_longer(self, fake_time: FakeTime) -> None:
        """The probe's failure opens the breaker again, for the next, longer delay."""
        cb = self.half_open(fake_time)
        cb.allow_request()
        cb.record_failure()
        assert (cb.state, cb.trips, cb.retry_in) == (OPEN, 2, 20)

    def test_released_probe_can_be_taken_again(self, fake_time: FakeTime) -> None:
        """A probe given back without a verdict lets the next caller probe."""
        cb = self.half_open(fake_time)
        assert cb.allow_request()
        cb.release_probe()
        assert cb.allow_request()


class TestWaitUntilAllowed:
    async def test_closed_returns_at_once(self, fake_time: FakeTime) -> None:
        """No waiting when the breaker is closed."""
        await breaker(fake_time).wait_until_allowed()
        assert fake_time.slept == []

    async def test_open_waits_for_the_delay_then_probes(self, fake_time: FakeTime) -> None:
        """An open breaker sleeps until half-open; the waiter comes back holding the probe."""
        cb = breaker(fake_time)
        cb.record_failure()
        waiter = asyncio.create_task(cb.wait_until_allowed())
        await fake_time.wait_for_sleepers()
        assert fake_time.slept == [10]
        fake_time.advance(10)
        await waiter
        assert not cb.allow_request()  # the probe is taken: by the waiter

    async def test_other_waiters_follow_the_probes_verdict(self, fake_time: FakeTime) -> None:
        """Waiters that did not get the probe go as soon as it succeeds."""
        cb = breaker(fake_time)
        cb.record_failure()
        waiters = [asyncio.create_task(cb.wait_until_allowed()) for _ in range(3)]
        await fake_time.wait_for_sleepers(3)
        fake_time.advance(10)
        done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1  # the probe
        cb.record_success()
        await asyncio.gather(*pending)
        assert cb.state is CLOSED

    async def test_a_failed_probe_sends_waiters_back_to_sleep(self, fake_time: FakeTime) -> None:
        """When the probe fails, the others wait for the next, longer delay."""
        cb = breaker(fake_time)
        cb.record_failure()
        waiters = [asyncio.create_task(cb.wait_until_allowed()) for _ in range(2)]
        await fake_time.wait_for_sleepers(2)
        fake_time.advance(10)
        _, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        cb.record_failure()
        await fake_time.wait_for_sleepers(1)
        assert fake_time.slept[-1] == 20
        fake_time.advance(20)
        await asyncio.gather(*pending)

    async def test_reopened_by_another_caller_wakes_the_waiter(self, fake_time: FakeTime) -> None:
        """A state change while sleeping (closed by a success) releases the waiter early."""
        cb = breaker(fake_time)
        cb.record_failure()
        waiter = asyncio.create_task(cb.wait_until_allowed())
        await fake_time.wait_for_sleepers()
        cb.record_success()
        await waiter
        assert fake_time.now == 1000.0

    async def test_cancelled_waiter_leaves_nothing_behind(self, fake_time: FakeTime) -> None:
        """Cancelling a waiter cancels its sleep."""
        cb = breaker(fake_time)
        cb.record_failure()
        waiter = asyncio.create_task(cb.wait_until_allowed())
        await fake_time.wait_for_sleepers()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert fake_time.sleepers == 0

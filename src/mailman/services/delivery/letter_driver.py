"""The letter's driver: the process that claims recipients, runs their tasks and reports verdicts.

A :class:`~mailman.services.delivery.letter_delivery_service.LetterDeliveryService` owns the letter's state
(the deliveries map in memory, flushes, the lease, the letter's status); it spawns one driver
(``spawn_link``) to do the sending, so that a wait on Postgres or on the relay never blocks the
service's mailbox (pause, cancel, progress, flushes). The driver

1. claims recipients in batches (``pending -> sending``, fenced by the letter's lease);
2. runs a :class:`~mailman.services.delivery.recipient_task.RecipientTask` for each under the
   ``MailmanSupervisor`` TaskSupervisor, through ``async_stream_nolink`` with bounded concurrency,
   a per-task timeout (killed tasks become verdicts too) and ``zip_input_on_exit``;
3. sends the verdicts to the service in :class:`RecipientsDone` batches;
4. holds the whole letter back while the relay is failing (a :class:`CircuitBreaker`), and waits
   for recipients backing off, between streams; it ends when nothing is pending, when the service
   drains it (pause, cancel, stop), or when a claim is refused (the lease is gone);
5. claims nobody while the service cannot write outcomes (``writable`` clear: Postgres failing),
   and rides out a claim that fails on Postgres by waiting and claiming again: the recipients in
   flight finish meanwhile, and nobody is claimed whose outcome could not be recorded.

Which rows a driver owns: exactly those it claimed (``sending`` under a claim token it holds) and
has not yet reported. When it drains, it reports the claimed-but-not-started ones *released*, and
its tasks still waiting for their SMTP turn withdraw theirs (see
:mod:`~mailman.services.delivery.recipient_task`): only the messages already handed to the relay keep it
running. Whatever it still owned when it died is recovered by the letter's next service, never by
this one (see :mod:`~mailman.services.delivery.letter_delivery_service`).

OTP counterpart: a worker linked to its GenServer, as Elixir's ``Task.async_stream`` run from a
process the server starts; here the link is all the supervision it needs (the service traps exits
and resumes from Postgres if the driver crashes).

Example::

    pid = spawn_link(drive, DriverArgs(service=self_pid(), context=context, letter_id=42, ...))
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import structlog

from mailman.services.delivery.context import DeliveryContext, DeliverySettings
from mailman.services.delivery.recipient_task import RecipientTask
from mailman.services.delivery.retry_policy import RecipientVerdict
from mailman.services.errors import ClaimRefusedError, DatabaseError
from mailman.services.smtp.circuit_breaker import CircuitBreaker
from mailman.services.store.models import ClaimedRecipient, DeliveryOutcome, LetterLease
from mailman.services.store.queries import deliveries
from mailman.supervisor import (
    Exit,
    Ok,
    OnTimeout,
    Pid,
    ProcessExit,
    Shutdown,
    TaskSupervisor,
    send,
)

__all__ = ["REPORT_BATCH", "REPORT_DELAY", "DriverArgs", "RecipientsDone", "drive"]

_log = structlog.get_logger("mailman.delivery")


@dataclass(slots=True)
class RecipientsDone:
    """Driver -> service: the verdicts of recipients that finished, in a batch."""

    verdicts: list[RecipientVerdict]


REPORT_BATCH = 32
"""The driver sends verdicts to the service in batches of at most this many..."""
REPORT_DELAY = 0.02
"""...and holds none longer than this many seconds (it also sends before every claim and when it ends)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DriverArgs:
    """What a letter's driver process is started with."""

    service: Pid
    context: DeliveryContext
    letter_id: int
    pool: asyncpg.Pool[asyncpg.Record]
    lease: LetterLease
    task: RecipientTask
    drain: asyncio.Event
    writable: asyncio.Event
    """Set while the service's writes of outcomes succeed: claims wait for it."""


async def drive(driver: DriverArgs) -> None:
    """The driver process: claim recipients, run their tasks, report every verdict to the service.

    Verdicts go to the service in batches (:data:`REPORT_BATCH`), each sent within
    :data:`REPORT_DELAY` seconds, before every claim, and when the driver ends, in a ``finally``
    (a crash or a cancellation included), so that none is held back long or lost with the driver.

    Every wait (the breaker open, or nothing due yet) happens *between* streams, never inside the
    stream's input: a stream that is starting tasks pulls its input before it hands out the
    results that finished meanwhile, so an input that waits would hold the verdicts of the tasks in
    flight back (unflushed, and lost by a kill) for as long as the breaker stays open. The waits
    also end at once when the service drains.

    Every claim presents the letter's lease. A refused claim (the lease lost or expired, the letter
    paused or cancelled elsewhere) drains the driver as a pause would: nobody more is claimed, the
    recipients in flight finish, and the driver ends with ``{shutdown, ClaimRefusedError}`` for the
    service to find out what to do.
    """
    context, task, drain, settings = driver.context, driver.task, driver.drain, driver.context.settings
    breaker = CircuitBreaker(base_delay=settings.breaker_base_delay, max_delay=settings.breaker_max_delay)
    reporter = _Reporter(driver.service)
    report, report_pending = reporter.report, reporter.send_pending
    claims = _Claims(driver, breaker, reporter)

    async def claimed(batch: list[ClaimedRecipient]) -> AsyncIterator[ClaimedRecipient]:
        while batch:
            for index, recipient in enumerate(batch):
                if drain.is_set():
                    # Claimed but never sent: give them back untouched (attempt returned).
                    for unsent in batch[index:]:
                        report(_released(unsent))
                    report_pending()
                    return
                yield recipient
            # Claim on without a pause while the relay is trusted; anything else ends this stream.
            if drain.is_set() or not breaker.allow_request():
                return
            batch = await claims.claim()

    try:
        while not drain.is_set():
            if not await _until_allowed(breaker, drain):
                break
            batch = await claims.claim()
            if not batch:
                if drain.is_set() or not await claims.wait_for_more():
                    break  # drained, refused, or nothing pending: the service decides what is next
                continue
            stream = TaskSupervisor.async_stream_nolink(
                context.tasks,
                claimed(batch),
                task,
                max_concurrency=settings.concurrency,
                ordered=False,
                timeout=settings.task_timeout,
                on_timeout=OnTimeout.KILL_TASK,
                zip_input_on_exit=True,
            )
            async for result in stream:
                verdict = _verdict(result, task, settings)
                if verdict.transport_fault:
                    breaker.record_failure()
                else:
                    breaker.record_success()
                report(verdict)
            report_pending()  # the stream has ended: a wait (or the driver's end) may follow
    finally:
        report_pending()  # sent even if the driver crashes or is killed: nothing is lost with it
    if claims.refused is not None:
        raise ProcessExit(Shutdown(claims.refused))


def _verdict(
    result: Ok[RecipientVerdict] | Exit, task: RecipientTask, settings: DeliverySettings
) -> RecipientVerdict:
    """The verdict on one recipient from its task's stream result: its own, or one for a task that
    exited without giving any (killed for its timeout, or crashed)."""
    match result:
        case Ok(value=verdict):
            return verdict
        case Exit(reason=(recipient, reason)):
            error = f"recipient task exited: {reason}"
            if task.hold_uncertain:  # it may have been mid-DATA: unknowable, so held
                return RecipientVerdict(outcome=DeliveryOutcome.uncertain(recipient.claim, error))
            return settings.retry.transient(recipient.claim, error, task.rng)
    raise AssertionError(f"unexpected stream result {result!r}")


class _Claims:
    """The driver's claims of recipients, and what it does when one comes back empty."""

    __slots__ = ("breaker", "database_failures", "driver", "refused", "reporter")

    def __init__(self, driver: DriverArgs, breaker: CircuitBreaker, reporter: _Reporter) -> None:
        self.driver = driver
        self.breaker = breaker
        self.reporter = reporter
        self.refused: ClaimRefusedError | None = None
        self.database_failures = 0

    async def claim(self) -> list[ClaimedRecipient]:
        """The next batch of due recipients; empty if none is due, the claim was refused (then
        :attr:`refused`, and the driver drains), Postgres failed, or outcomes cannot be written."""
        driver = self.driver
        self.reporter.send_pending()  # the claim waits on Postgres: the verdicts so far go first
        batch: list[ClaimedRecipient] = []
        if driver.writable.is_set():  # else outcomes cannot be written: claim nobody until they can
            try:
                batch = await deliveries.claim_recipients(
                    driver.pool,
                    driver.letter_id,
                    lease=driver.lease,
                    limit=driver.context.settings.claim_batch,
                )
                self.database_failures = 0
            except ClaimRefusedError as error:
                self.refused = error
                driver.drain.set()  # claim nobody more; the recipients in flight finish
            except DatabaseError as error:
                self._failed(error)
        if not batch:
            self.breaker.release_probe()  # nothing was sent: a probe taken for this claim proves nothing
        return batch

    async def wait_for_more(self) -> bool:
        """After an empty claim: wait until a claim may find someone (True), or False when nothing
        is pending in Postgres (the service then decides whether the letter is done)."""
        driver, settings = self.driver, self.driver.context.settings
        if not driver.writable.is_set():
            await _wait_for_either(driver.drain, driver.writable)
            return True
        if self.database_failures:
            backoff = min(0.1 * 2.0 ** (self.database_failures - 1), 5 * settings.idle_poll)
            await _wait(driver.drain, backoff)
            return True
        try:
            due_in = await deliveries.next_due_in(driver.pool, driver.letter_id)
        except DatabaseError as error:
            self._failed(error)
            return True
        if due_in is None:
            return False
        await _wait(driver.drain, min(max(due_in, 0.01), settings.idle_poll))
        return True

    def _failed(self, error: DatabaseError) -> None:
        self.database_failures += 1
        _log.warning(
            "claim failed: waiting for Postgres",
            letter_id=self.driver.letter_id,
            failures=self.database_failures,
            error=str(error),
        )


class _Reporter:
    """The driver's outbox: verdicts go to the service in batches, none held back for long."""

    __slots__ = ("loop", "pending", "service", "timer")

    def __init__(self, service: Pid) -> None:
        self.service = service
        self.loop = asyncio.get_running_loop()
        self.pending: list[RecipientVerdict] = []
        self.timer: asyncio.TimerHandle | None = None

    def report(self, verdict: RecipientVerdict) -> None:
        """Queue ``verdict``: sent with the batch it fills, or within :data:`REPORT_DELAY`."""
        self.pending.append(verdict)
        if len(self.pending) >= REPORT_BATCH:
            self.send_pending()
        elif self.timer is None:
            self.timer = self.loop.call_later(REPORT_DELAY, self.send_pending)

    def send_pending(self) -> None:
        """Send the verdicts queued so far, now."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.pending:
            send(self.service, RecipientsDone(self.pending))
            self.pending = []


async def _until_allowed(breaker: CircuitBreaker, drain: asyncio.Event) -> bool:
    """Wait until the breaker lets a claim through (True), or until told to drain (False).

    A pause or a stop must not wait for an open breaker (up to ``breaker_max_delay``), so the wait
    races the drain event. True means this caller may hold the half-open probe.
    """
    if breaker.allow_request():
        return True
    allowed = asyncio.ensure_future(breaker.wait_until_allowed())
    drained = asyncio.ensure_future(drain.wait())
    try:
        await asyncio.wait((allowed, drained), return_when=asyncio.FIRST_COMPLETED)
    finally:
        drained.cancel()
        if not allowed.done():
            allowed.cancel()
            await asyncio.wait((allowed,))
    if allowed.cancelled():
        return False
    allowed.result()
    if drain.is_set():
        breaker.release_probe()
        return False
    return True


def _released(recipient: ClaimedRecipient) -> RecipientVerdict:
    return RecipientVerdict(outcome=DeliveryOutcome.release(recipient.claim, "released unsent at stop"))


async def _wait_for_either(first: asyncio.Event, second: asyncio.Event) -> None:
    """Wait until either event is set."""
    waits = [asyncio.ensure_future(first.wait()), asyncio.ensure_future(second.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Wait ``seconds`` (a back-off), or less if ``event`` is set meanwhile."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        pass

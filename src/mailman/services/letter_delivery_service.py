"""LetterDeliveryService: the process that sends one letter, and resumes it after any crash.

One ``LetterDeliveryService`` runs per letter being sent, registered in the letters Registry under
the letter id, so that sending a letter that is already sending joins the running service instead
of starting a second one. It is the design from the Elixir forum question this project grew from,
with the deliveries map persisted in Postgres rather than held in memory:

- ``init`` is fast (it traps exits, so that ``terminate`` can flush on shutdown) and asks for a
  ``handle_continue``, which loads the letter: fixes its audience in one transaction (first start),
  or recovers it (a restart: rows left ``sending`` are ``uncertain``, then resent with the same
  Message-ID or held, by the letter's policy).
- A *driver* process, linked to the service, claims recipients in small batches
  (``pending -> sending``, one statement) and runs them through
  ``TaskSupervisor.async_stream_nolink`` with bounded concurrency. Each result comes back to the
  service as a message; the service folds it into its buffer of outcomes and writes them to
  Postgres in batches (every ``flush_size`` outcomes or ``flush_interval`` seconds), and once more
  in ``terminate``.
- When the driver runs out of due recipients it ends; the service flushes and counts. Only when no
  recipient is pending or sending is the letter ``sent`` (a "no more rows" read is never taken for
  completion); otherwise a new driver waits for the next recipient to come due.
- ``pause`` and ``cancel`` are deferred calls: the driver stops claiming, the tasks in flight
  finish, everything is flushed, then the caller gets its reply and the service stops ``normal``.

Crash accounting: ``mail_order.running`` is set while a service runs and cleared when it stops for
an expected reason. A service that finds it still set knows its predecessor crashed or was killed,
and counts a restart in ``mail_order.restarts``; past ``max_letter_restarts`` the letter ends
``failed`` with the reason. Each letter runs under its own :class:`LetterSupervisor`, so a letter
that crash-loops never trips the dispatcher's restart intensity for the others.

Example::

    pid = await LetterDeliveryDispatcher.deliver(context, letter_id=42)
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from mailman.services.circuit_breaker import CircuitBreaker
from mailman.services.database import transaction
from mailman.services.delivery_context import DeliveryContext
from mailman.services.mailer import SmtpPool
from mailman.services.mailer_server import Mailer
from mailman.services.message import LetterTemplate
from mailman.services.models import ClaimedRecipient, DeliveryOutcome, Letter, LetterStatus, UncertainPolicy
from mailman.services.queries import deliveries, letters, newsletter_emails, newsletters, subscriptions
from mailman.services.recipient_task import RecipientTask
from mailman.services.repo import Repo
from mailman.services.retry_policy import RecipientVerdict
from mailman.supervisor import (
    NORMAL,
    Exit,
    ExitMessage,
    ExitReason,
    From,
    GenServer,
    Init,
    NoReply,
    Ok,
    OnTimeout,
    Pid,
    Reply,
    Restart,
    Stop,
    TaskSupervisor,
    TimerRef,
    cancel_timer,
    is_expected,
    receive,
    self_pid,
    send,
    send_after,
    spawn_link,
    trap_exit,
)

__all__ = ["LetterDeliveryService", "ServiceArgs"]

_log = structlog.get_logger("mailman.delivery")


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceArgs:
    """What a letter's service is started with."""

    letter_id: int
    context: DeliveryContext
    recipients: tuple[int, ...] | None = None
    """Subscription ids to send to (a subset), or None for every active subscriber."""


# ---------------------------------------------------------------- messages


@dataclass(slots=True)
class RecipientsDone:
    """Driver -> service: the verdicts of recipients that finished, in a batch."""

    verdicts: list[RecipientVerdict]


_REPORT_BATCH = 32
"""The driver sends verdicts to the service in batches of at most this many..."""
_REPORT_DELAY = 0.02
"""...and holds none longer than this many seconds (it also sends before every claim and when it ends)."""


class _Flush:
    __slots__ = ()


class _Pause:
    __slots__ = ()


class _Cancel:
    __slots__ = ()


class _Progress:
    __slots__ = ()


_FLUSH = _Flush()


@dataclass(slots=True)
class _State:
    args: ServiceArgs
    pool: asyncpg.Pool[asyncpg.Record] | None = None
    smtp: SmtpPool | None = None
    letter: Letter | None = None
    template: LetterTemplate | None = None
    driver: Pid | None = None
    drain: asyncio.Event | None = None
    buffer: list[RecipientVerdict] = field(default_factory=list)
    flush_timer: TimerRef | None = None
    stopping: LetterStatus | None = None
    waiters: list[From] = field(default_factory=list)
    sent: int = 0

    @property
    def letter_id(self) -> int:
        return self.args.letter_id


class LetterDeliveryService(GenServer[_State]):
    """Sends one letter to its audience; resumable from Postgres at any point."""

    child_restart = Restart.TRANSIENT
    child_shutdown = 30.0

    # ---------------------------------------------------------------- client API

    @staticmethod
    async def pause(server: Pid) -> None:
        """Stop claiming, let the recipients in flight finish, flush, mark the letter paused."""
        await GenServer.call(server, _Pause(), timeout=60.0)

    @staticmethod
    async def cancel(server: Pid) -> None:
        """As :meth:`pause`, but the letter ends ``cancelled``."""
        await GenServer.call(server, _Cancel(), timeout=60.0)

    @staticmethod
    async def progress(server: Pid) -> dict[str, int]:
        """Outcomes buffered in memory and not yet written, and messages sent by this incarnation."""
        result: dict[str, int] = await GenServer.call(server, _Progress())
        return result

    # ---------------------------------------------------------------- callbacks

    async def init(self, arg: ServiceArgs) -> Init[_State]:
        trap_exit(True)
        return Init(_State(args=arg), continue_with="load")

    async def handle_continue(self, arg: Any, state: _State) -> NoReply[_State] | Stop[_State]:
        context = state.args.context
        state.pool = await Repo.pool(context.repo)
        pool = state.pool
        letter = await letters.get_letter(pool, state.letter_id)
        match letter.status:
            case LetterStatus.DRAFT | LetterStatus.SCHEDULED:
                audience = await deliveries.fix_audience(
                    pool, state.letter_id, subscription_ids=state.args.recipients
                )
                _log.info("audience fixed", letter_id=state.letter_id, audience=audience.size)
            case LetterStatus.SENDING:
                if not await self._count_restart(state, letter):
                    return Stop(NORMAL, state)
                # Only a predecessor that did not stop cleanly can have left rows 'sending' (a clean
                # stop drains and flushes): a fresh send or a resume skips the scan of the letter.
                if letter.mail_order.get("running"):
                    await self._recover(state, letter)
            case _:
                _log.info("letter needs no sending", letter_id=state.letter_id, status=str(letter.status))
                return Stop(NORMAL, state)
        # last_crash is cleared: if this incarnation is killed, its successor must not blame the
        # crash of an earlier one.
        letter = await letters.update_mail_order(pool, state.letter_id, {"running": True, "last_crash": None})
        newsletter = await newsletters.get_newsletter(pool, letter.newsletter_id)
        state.letter = letter
        state.template = LetterTemplate.render(
            subject=letter.subject,
            text_body=letter.text_body,
            html_body=letter.html_body,
            from_address=newsletter.from_address,
            from_name=newsletter.name,
            reply_to=newsletter.reply_to,
            message_domain=context.settings.message_domain,
            unsubscribe_url=newsletter.unsubscribe_url_template,
        )
        state.smtp = await Mailer.pool(context.mailer)
        self._start_driver(state)
        return NoReply(state)

    async def handle_call(
        self, request: Any, from_: From, state: _State
    ) -> Reply[_State] | NoReply[_State] | Stop[_State]:
        match request:
            case _Pause() | _Cancel():
                state.stopping = (
                    LetterStatus.PAUSED if isinstance(request, _Pause) else LetterStatus.CANCELLED
                )
                if state.driver is None:  # between drivers (or still loading): settle now
                    status = await self._stop_as(state, state.stopping)
                    return Stop(NORMAL, state, reply=status)
                state.waiters.append(from_)
                if state.drain is not None:
                    state.drain.set()
                return NoReply(state)
            case _Progress():
                return Reply({"buffered": len(state.buffer), "sent": state.sent}, state)
        raise ValueError(f"unexpected request {request!r}")

    async def handle_info(self, message: Any, state: _State) -> NoReply[_State] | Stop[_State]:
        match message:
            case RecipientsDone(verdicts):
                state.buffer += verdicts
                if len(state.buffer) >= state.args.context.settings.flush_size:
                    await self._flush(state)
                elif state.flush_timer is None:
                    interval = state.args.context.settings.flush_interval
                    state.flush_timer = send_after(self_pid(), _FLUSH, interval)
                return NoReply(state)
            case _Flush():
                state.flush_timer = None
                await self._flush(state)
                return NoReply(state)
            case ExitMessage(pid, reason) if pid == state.driver:
                state.driver = None
                if not is_expected(reason):
                    return Stop(reason, state)  # the driver crashed: so do we, and we resume from Postgres
                await self._flush(state)
                return await self._settle(state)
        return await super().handle_info(message, state)

    async def terminate(self, reason: ExitReason, state: _State) -> None:
        if state.driver is not None:
            # Graceful: stop claiming, let the recipients in flight finish, keep their verdicts.
            if state.drain is not None:
                state.drain.set()
            driver = state.driver
            while True:
                message = await receive(
                    lambda m: (
                        isinstance(m, RecipientsDone) or (isinstance(m, ExitMessage) and m.pid == driver)
                    )
                )
                if isinstance(message, RecipientsDone):
                    state.buffer += message.verdicts
                else:
                    break
        if state.pool is None:
            return
        await self._flush(state)
        changes: dict[str, Any] = {"running": False}
        if not is_expected(reason):
            changes = {"last_crash": str(reason)}  # still "running": the next start counts a restart
        await letters.update_mail_order(state.pool, state.letter_id, changes)

    # ---------------------------------------------------------------- internals

    async def _recover(self, state: _State, letter: Letter) -> None:
        """Rows left 'sending' become uncertain, then resent or held by the policy in force."""
        assert state.pool is not None
        policy = UncertainPolicy(state.args.context.settings.uncertain_policy or letter.uncertain_policy)
        recovery = await deliveries.recover_deliveries(state.pool, state.letter_id, policy)
        if recovery.uncertain:
            _log.warning(
                "recipients in flight at the last stop are uncertain",
                letter_id=state.letter_id,
                uncertain=recovery.uncertain,
                resent=recovery.requeued,
                policy=str(policy),
            )
            await letters.update_mail_order(
                state.pool, state.letter_id, {"uncertain_found": recovery.uncertain}
            )

    async def _count_restart(self, state: _State, letter: Letter) -> bool:
        """Count a restart if the last incarnation did not stop cleanly; False if too many."""
        assert state.pool is not None
        order = letter.mail_order
        restarts = int(order.get("restarts", 0)) + (1 if order.get("running") else 0)
        limit = state.args.context.settings.max_letter_restarts
        if restarts > limit:
            last = order.get("last_crash")
            # A kill leaves no trace (terminate does not run): say so rather than print "None".
            cause = f"last: {last}" if last else "the last one was killed without a trace"
            reason = f"the letter's sender crashed {restarts} times (limit {limit}); {cause}"
            async with transaction(state.pool) as connection:
                await letters.set_letter_status(
                    connection, state.letter_id, LetterStatus.FAILED, expected=LetterStatus.SENDING
                )
                # Nobody sends the rows the last incarnation left sending: report them uncertain
                # rather than leave a failed letter with recipients "sending" for ever.
                uncertain = await deliveries.mark_sending_uncertain(connection, state.letter_id)
                await letters.update_mail_order(
                    connection,
                    state.letter_id,
                    {
                        "running": False,
                        "restarts": restarts,
                        "failure_reason": reason,
                        "uncertain_found": uncertain,
                    },
                )
            _log.error("letter failed", letter_id=state.letter_id, reason=reason)
            return False
        if restarts != order.get("restarts", 0):
            await letters.update_mail_order(state.pool, state.letter_id, {"restarts": restarts})
        return True

    def _policy(self, state: _State) -> UncertainPolicy:
        """The uncertain policy in force: the settings' override, else the letter's own."""
        assert state.letter is not None
        return UncertainPolicy(state.args.context.settings.uncertain_policy or state.letter.uncertain_policy)

    def _start_driver(self, state: _State) -> None:
        assert state.pool is not None
        assert state.smtp is not None
        assert state.template is not None
        settings = state.args.context.settings
        task = RecipientTask(
            letter_id=state.letter_id,
            template=state.template,
            smtp=state.smtp,
            policy=settings.retry,
            rng=random.Random(),
            hold_uncertain=self._policy(state) is UncertainPolicy.HOLD,
        )
        state.drain = asyncio.Event()
        state.driver = spawn_link(
            _drive,
            _Driver(
                service=self_pid(),
                context=state.args.context,
                letter_id=state.letter_id,
                pool=state.pool,
                task=task,
                drain=state.drain,
            ),
        )

    async def _flush(self, state: _State) -> None:
        if state.flush_timer is not None:
            cancel_timer(state.flush_timer)
            state.flush_timer = None
        if not state.buffer or state.pool is None:
            return
        batch, state.buffer = state.buffer, []
        async with transaction(state.pool) as connection:
            applied = await deliveries.ack_deliveries(
                connection, state.letter_id, [verdict.outcome for verdict in batch]
            )
            emails = [
                v.sent_email
                for v in batch
                if v.sent_email is not None and v.outcome.subscription_id in applied
            ]
            if emails:
                await newsletter_emails.record_sent_emails(connection, state.letter_id, emails)
            for verdict in batch:
                if verdict.bounce_reason is not None and verdict.outcome.subscription_id in applied:
                    await subscriptions.mark_bounced(
                        connection, verdict.outcome.subscription_id, verdict.bounce_reason
                    )
        state.sent += len(emails)
        if len(applied) != len(batch):
            _log.warning("outcomes fenced out", letter_id=state.letter_id, dropped=len(batch) - len(applied))

    async def _stop_as(self, state: _State, status: LetterStatus) -> str:
        """Pause or cancel: flush, then move the letter to ``status``."""
        await self._flush(state)
        if state.pool is not None:
            await letters.set_letter_status(
                state.pool, state.letter_id, status, expected=[LetterStatus.SENDING, LetterStatus.PAUSED]
            )
        _log.info("letter stopped", letter_id=state.letter_id, status=str(status))
        return status.value

    async def _settle(self, state: _State) -> NoReply[_State] | Stop[_State]:
        """The driver has ended and everything is flushed: finish, stop, or go on."""
        assert state.pool is not None
        if state.stopping is not None:
            status = await self._stop_as(state, state.stopping)
            for waiter in state.waiters:
                GenServer.reply(waiter, status)
            state.waiters.clear()
            return Stop(NORMAL, state)
        counts = await deliveries.count_deliveries(state.pool, state.letter_id)
        if counts.unfinished:
            self._start_driver(state)  # some recipients are backing off: wait for them
            return NoReply(state)
        async with transaction(state.pool) as connection:
            await letters.set_letter_status(
                connection, state.letter_id, LetterStatus.SENT, expected=LetterStatus.SENDING
            )
            await letters.update_mail_order(
                connection,
                state.letter_id,
                {
                    "running": False,
                    "finished": True,
                    "delivered": counts.delivered,
                    "failed": counts.failed,
                    "skipped": counts.skipped,
                    "uncertain": counts.uncertain,
                },
            )
        _log.info(
            "letter sent",
            letter_id=state.letter_id,
            delivered=counts.delivered,
            failed=counts.failed,
            skipped=counts.skipped,
            uncertain=counts.uncertain,
        )
        return Stop(NORMAL, state)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Driver:
    """What the driver process is started with."""

    service: Pid
    context: DeliveryContext
    letter_id: int
    pool: asyncpg.Pool[asyncpg.Record]
    task: RecipientTask
    drain: asyncio.Event


async def _drive(driver: _Driver) -> None:
    """The driver process: claim recipients, run their tasks, report every verdict to the service.

    Verdicts go to the service in batches (:data:`_REPORT_BATCH`), each sent within
    :data:`_REPORT_DELAY` seconds, before every claim, and when the driver ends, in a ``finally``
    (a crash or a cancellation included), so that none is held back long or lost with the driver.

    Every wait (the breaker open, or nothing due yet) happens *between* streams, never inside the
    stream's input: a stream pulls its input before it hands out finished results, so an input
    that waits would hold the verdicts of the tasks in flight back (unflushed, and lost by a kill)
    for as long as the breaker stays open. The waits also end at once when the service drains.
    """
    service, context, letter_id, pool = driver.service, driver.context, driver.letter_id, driver.pool
    task, drain = driver.task, driver.drain
    settings = context.settings
    breaker = CircuitBreaker(base_delay=settings.breaker_base_delay, max_delay=settings.breaker_max_delay)
    reporter = _Reporter(service)
    report, report_pending = reporter.report, reporter.send_pending

    async def claim() -> list[ClaimedRecipient]:
        report_pending()  # the claim waits on Postgres: the verdicts so far go first
        batch = await deliveries.claim_recipients(pool, letter_id, limit=settings.claim_batch)
        if not batch:
            breaker.release_probe()  # nothing was sent: a probe taken for this claim proves nothing
        return batch

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
            batch = await claim()

    try:
        while not drain.is_set():
            if not await _until_allowed(breaker, drain):
                return
            batch = await claim()
            if not batch:
                due_in = await deliveries.next_due_in(pool, letter_id)
                if due_in is None:
                    return  # nothing pending in Postgres: the service decides if the letter is done
                await _wait(drain, min(max(due_in, 0.01), settings.idle_poll))
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
                match result:
                    case Ok(value=verdict):
                        pass
                    case Exit(reason=(recipient, reason)):
                        error = f"recipient task exited: {reason}"
                        if task.hold_uncertain:  # it may have been mid-DATA: unknowable, so held
                            verdict = RecipientVerdict(
                                outcome=DeliveryOutcome.uncertain(recipient.claim, error)
                            )
                        else:
                            verdict = settings.retry.transient(recipient.claim, error, task.rng)
                    case _:
                        raise AssertionError(f"unexpected stream result {result!r}")
                if verdict.transport_fault:
                    breaker.record_failure()
                else:
                    breaker.record_success()
                report(verdict)
            report_pending()  # the stream has ended: a wait (or the driver's end) may follow
    finally:
        report_pending()  # sent even if the driver crashes or is killed: nothing is lost with it


class _Reporter:
    """The driver's outbox: verdicts go to the service in batches, none held back for long."""

    __slots__ = ("loop", "pending", "service", "timer")

    def __init__(self, service: Pid) -> None:
        self.service = service
        self.loop = asyncio.get_running_loop()
        self.pending: list[RecipientVerdict] = []
        self.timer: asyncio.TimerHandle | None = None

    def report(self, verdict: RecipientVerdict) -> None:
        """Queue ``verdict``: sent with the batch it fills, or within :data:`_REPORT_DELAY`."""
        self.pending.append(verdict)
        if len(self.pending) >= _REPORT_BATCH:
            self.send_pending()
        elif self.timer is None:
            self.timer = self.loop.call_later(_REPORT_DELAY, self.send_pending)

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


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Wait ``seconds`` (a back-off), or less if ``event`` is set meanwhile."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        pass

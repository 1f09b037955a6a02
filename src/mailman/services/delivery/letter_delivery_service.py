"""LetterDeliveryService: the process that sends one letter, and resumes it after any crash.

One ``LetterDeliveryService`` runs per letter being sent, registered in the letters Registry under
the letter id, so that sending a letter that is already sending joins the running service instead
of starting a second one. It is the design from the Elixir forum question this project grew from,
with the deliveries map persisted in Postgres rather than held in memory:

- ``init`` is fast (it traps exits, so that ``terminate`` can flush on shutdown) and asks for a
  ``handle_continue``, which loads the letter: fixes its audience in one transaction (first start),
  or recovers it (rows left ``sending`` are ``uncertain``, then resent with the same Message-ID or
  held, by the letter's policy).
- A *driver* process, linked to the service, claims recipients in small batches
  (``pending -> sending``, one statement) and runs them through
  ``TaskSupervisor.async_stream_nolink`` with bounded concurrency. Each result comes back to the
  service as a message; the service folds it into its :class:`OutcomeBuffer` and writes them to
  Postgres in batches (every ``flush_size`` outcomes or ``flush_interval`` seconds, while sending
  and while stopping alike). A failed write keeps the batch and is tried again; meanwhile the
  driver claims nobody.
- When the driver runs out of due recipients it ends; the service flushes and settles. Only when no
  recipient is pending or sending is the letter ``sent`` (a "no more rows" read is never taken for
  completion); otherwise a new driver waits for the next recipient to come due.
- ``pause`` and ``cancel`` are deferred calls: the driver stops claiming, the recipients still
  waiting for their SMTP turn are given back at once, the messages already handed to the relay
  finish, everything is written, then the caller gets its reply and the service stops ``normal``.
  A shutdown does the same, within ``stop_budget`` (``task_timeout`` plus time to write).

The invariant: who owns a row ``sending``
------------------------------------------
A row is ``sending`` from its claim until its outcome is written. It is owned by the driver that
claimed it, under the claim token in its ``lease_token`` column, and by nobody else: that driver's
verdict is the only write that can move it on (acks are fenced by the token). A driver lives only
inside the service that started it, and that service only while it holds the letter's lease. So:

1. **Recovery is decided by the rows, not by a flag.** Every service that takes a letter that may
   have been sent before (sending, paused or cancelled: a restart, a takeover, a resume, a retry, a
   boot) recovers every row ``sending`` before it claims anything: it has no driver yet, so each of
   those rows belongs to a sender that died and will never acknowledge it. (Before, a
   ``mail_order.running`` flag decided, and three commands cleared it without recovering.)
2. **Nothing writes the letter's bookkeeping outside the lease.** The service writes its status,
   ``mail_order`` and recovery in transactions that first lock the lease
   (:func:`letters.lock_lease`). The commands that race it go through the same row lock:
   :func:`~mailman.services.delivery.letter_commands.retry_failed` takes it (:func:`letters.lock_letter`) and
   changes the letter's status and summary only when no node holds the lease (sent or failed); the
   service counts its rows and marks the letter ``sent`` in one transaction under that lock, so no
   retry lands between the count and the status change. A pause or cancel from another node is one
   compare-and-set of the status, which the next settling or renewal reads under the lock.
3. **A stop writes what it knows and gives back what it never started.** Outcomes are written as
   they come, never only in ``terminate``; a recipient given back is ``pending`` with its attempt
   refunded. Only a kill (or a stop past its budget) leaves rows ``sending``, and point 1 recovers
   them.

Crash accounting: ``mail_order.running`` holds the daemon run (``DeliverySettings.incarnation``)
while a service runs, and is cleared when it stops for an expected reason. It only counts crashes
now (recovery does not depend on it): a service that finds it set to this same daemon run knows the
letter's sender crashed here, and a restart is counted in ``mail_order.restarts`` (past
``max_letter_restarts`` the letter ends ``failed`` with the reason, its rows in flight
``uncertain``; a retry sends it on). A predecessor of an earlier run, or of another node, died with
its whole daemon: not the letter's fault, not counted. Each letter runs under its own
:class:`LetterSupervisor`, so a letter that crash-loops never trips the dispatcher's restart
intensity for the others.

The letter's Message-IDs use the domain fixed for the letter (``letters.message_domain``, at its
creation by the daemon or its first load), never the node's current setting: a resend after a
takeover by a node configured otherwise, or after a change of settings, carries the first copy's
Message-ID.

Several daemons on one database (guarantee 5): a letter is driven by the node that holds its
*lease* (:class:`~mailman.services.store.models.LetterLease`, in the letter's row):

- The service takes the lease first thing as it loads. If another node holds a live one, that node
  is sending the letter: the service stops ``normal`` having touched nothing.
- It renews the lease every third of ``lease_ttl`` (a :func:`send_after` timer, ``handle_info``).
  The renewal also reads the letter's status: paused or cancelled from another node, the service
  stops as if asked here.
- Every write to the letter (restarts, recovery, status, ``mail_order``) happens in a transaction
  that first locks the lease (:func:`letters.lock_lease`), and every claim presents it: a service
  whose lease was taken over writes nothing and claims nobody. If a renewal finds the lease lost,
  the service kills its driver (and so the recipient tasks in flight: stop sending at once),
  records the verdicts it has (acks are fenced row by row) and stops ``normal``; the letter is the
  new holder's. If a claim is refused, the driver lets the recipients in flight finish and ends;
  the service then renews (the lease may only have expired, with nobody taking it) or stops.
- A clean stop (sent, paused, cancelled, a shutdown) releases the lease in the statement that
  clears ``running``, so that another node may resume the letter at once. A crash keeps it: the
  LetterSupervisor restarts the service on this node, which takes its own lease again.
- The node that takes over a letter whose holder died recovers the rows left ``sending`` as after
  any crash (uncertain, then resent with the same Message-ID or held, by the policy), without
  counting a restart of the letter. A letter paused or cancelled from elsewhere whose holder died
  before it stopped is taken over too, only to recover its rows and let it go.

Example::

    pid = await LetterDeliveryDispatcher.deliver(context, letter_id=42)
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from mailman.services.delivery.context import DeliveryContext, DeliverySettings
from mailman.services.delivery.letter_driver import DriverArgs, RecipientsDone, drive
from mailman.services.delivery.outcome_buffer import OutcomeBuffer
from mailman.services.delivery.recipient_task import RecipientTask
from mailman.services.errors import ClaimRefusedError, DatabaseError, LeaseLostError, LetterLeasedError
from mailman.services.smtp.mailer import Mailer
from mailman.services.smtp.message import LetterTemplate
from mailman.services.smtp.pool import SmtpPool
from mailman.services.store.database import Connection, transaction
from mailman.services.store.models import (
    Letter,
    LetterLease,
    LetterStatus,
    UncertainPolicy,
)
from mailman.services.store.queries import deliveries, letters, newsletters
from mailman.services.store.repo import Repo
from mailman.supervisor import (
    KILL,
    NORMAL,
    Call,
    ExitMessage,
    ExitReason,
    From,
    GenServer,
    Init,
    NoReply,
    Pid,
    Reply,
    Restart,
    Shutdown,
    Stop,
    TimerRef,
    cancel_timer,
    exit,  # noqa: A004 - Erlang's exit/2
    is_expected,
    receive,
    self_pid,
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


class _Flush:
    __slots__ = ()


class _Pause(Call[LetterStatus | None]):
    __slots__ = ()


class _Cancel(Call[LetterStatus | None]):
    __slots__ = ()


class _Progress(Call[dict[str, int]]):
    __slots__ = ()


class _Join(Call[bool]):
    __slots__ = ()


class _Renew:
    __slots__ = ()


_FLUSH = _Flush()
_RENEW = _Renew()


@dataclass(slots=True)
class _State:
    args: ServiceArgs
    pool: asyncpg.Pool[asyncpg.Record] | None = None
    smtp: SmtpPool | None = None
    letter: Letter | None = None
    template: LetterTemplate | None = None
    driver: Pid | None = None
    drain: asyncio.Event | None = None
    buffer: OutcomeBuffer = field(init=False)
    flush_timer: TimerRef | None = None
    stopping: LetterStatus | None = None
    stopped_elsewhere: bool = False
    """``stopping`` was read from the letter (paused or cancelled from another node), not asked here."""
    waiters: list[From] = field(default_factory=list)
    lease: LetterLease | None = None
    """Held from the load until a clean stop; None before, after, and once lost to another node."""
    renew_timer: TimerRef | None = None

    def __post_init__(self) -> None:
        self.buffer = OutcomeBuffer(self.args.letter_id)

    @property
    def letter_id(self) -> int:
        return self.args.letter_id


class LetterDeliveryService(GenServer[_State]):
    """Sends one letter to its audience; resumable from Postgres at any point."""

    child_restart = Restart.TRANSIENT
    child_shutdown = DeliverySettings().stop_budget
    """The default; :class:`LetterSupervisor` gives the settings' ``stop_budget``."""

    # ---------------------------------------------------------------- client API

    @staticmethod
    async def pause(server: Pid) -> LetterStatus | None:
        """Stop claiming, let the recipients in flight finish, flush, mark the letter paused.

        The letter's status then, or None if the service lost the letter to another node meanwhile
        (it changed nothing: the letter is that node's).
        """
        return await GenServer.call(server, _Pause(), timeout=60.0)

    @staticmethod
    async def cancel(server: Pid) -> LetterStatus | None:
        """As :meth:`pause`, but the letter ends ``cancelled``."""
        return await GenServer.call(server, _Cancel(), timeout=60.0)

    @staticmethod
    async def join(server: Pid) -> bool:
        """Whether the service goes on sending its letter (so that a new send may join it): False
        when it is stopping (paused, cancelled, or being stopped) and a new service must take over
        once it has ended. A service that already settled the letter stops without answering:
        :class:`~mailman.supervisor.CallExitError` (or NoProcessError), which means the same."""
        return await GenServer.call(server, _Join(), timeout=60.0)

    @staticmethod
    async def progress(server: Pid) -> dict[str, int]:
        """Outcomes buffered in memory and not yet written, and messages sent by this incarnation."""
        return await GenServer.call(server, _Progress())

    # ---------------------------------------------------------------- callbacks

    async def init(self, arg: ServiceArgs) -> Init[_State]:
        trap_exit(True)
        return Init(_State(args=arg), continue_with="load")

    async def handle_continue(self, arg: Any, state: _State) -> NoReply[_State] | Stop[_State]:
        try:
            return await self._load(state)
        except LeaseLostError as error:  # the load took longer than the lease, and it was taken over
            return await self._lease_lost(state, error)

    async def _load(self, state: _State) -> NoReply[_State] | Stop[_State]:
        context = state.args.context
        settings = context.settings
        state.pool = await Repo.pool(context.repo)
        pool = state.pool
        try:
            state.lease = await letters.acquire_lease(
                pool, state.letter_id, node=settings.node_name, ttl=settings.lease_duration
            )
        except LetterLeasedError as error:
            _log.info("letter is sent by another node", letter_id=state.letter_id, node=error.node)
            return Stop(NORMAL, state)
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
                # Whatever the path that brought us here (a restart, a takeover, a resume, a retry, a
                # boot), no driver of ours runs yet: every row 'sending' is a dead sender's.
                await self._recover(state, letter)
            case LetterStatus.PAUSED | LetterStatus.CANCELLED:
                # Paused or cancelled while a sender that then died had rows in flight: they are
                # recovered now, so that the letter's accounting shows nobody sending.
                await self._recover(state, letter)
                _log.info("letter needs no sending", letter_id=state.letter_id, status=str(letter.status))
                await self._release(state)
                return Stop(NORMAL, state)
            case _:
                _log.info("letter needs no sending", letter_id=state.letter_id, status=str(letter.status))
                await self._release(state)
                return Stop(NORMAL, state)
        # last_crash is cleared: if this incarnation is killed, its successor must not blame the
        # crash of an earlier one.
        async with _fenced(state) as connection:
            letter = await letters.update_mail_order(
                connection,
                state.letter_id,
                {"running": state.args.context.settings.incarnation, "last_crash": None},
            )
        newsletter = await newsletters.get_newsletter(pool, letter.newsletter_id)
        message_domain = letter.message_domain or await letters.fix_message_domain(
            pool, state.letter_id, settings.message_domain
        )
        state.letter = letter
        state.template = LetterTemplate.render(
            subject=letter.subject,
            text_body=letter.text_body,
            html_body=letter.html_body,
            from_address=newsletter.from_address,
            from_name=newsletter.name,
            reply_to=newsletter.reply_to,
            message_domain=message_domain,
            unsubscribe_url=newsletter.unsubscribe_url_template,
        )
        state.smtp = await Mailer.pool(context.mailer)
        self._arm_renewal(state)
        self._start_driver(state)
        return NoReply(state)

    async def handle_call(
        self, request: Any, from_: From, state: _State
    ) -> Reply[_State] | NoReply[_State] | Stop[_State]:
        try:
            return await self._handle_call(request, from_, state)
        except LeaseLostError as error:
            state.waiters.append(from_)
            return await self._lease_lost(state, error)

    async def _handle_call(
        self, request: Any, from_: From, state: _State
    ) -> Reply[_State] | NoReply[_State] | Stop[_State]:
        match request:
            case _Pause() | _Cancel():
                state.stopping = (
                    LetterStatus.PAUSED if isinstance(request, _Pause) else LetterStatus.CANCELLED
                )
                state.stopped_elsewhere = False  # asked here: the status is ours to write
                if state.driver is None:  # between drivers (or still loading): settle now
                    status = await self._stop_as(state, state.stopping)
                    return Stop(NORMAL, state, reply=status)
                state.waiters.append(from_)
                if state.drain is not None:
                    state.drain.set()
                return NoReply(state)
            case _Join():
                return Reply(state.stopping is None and state.lease is not None, state)
            case _Progress():
                return Reply({"buffered": len(state.buffer), "sent": state.buffer.sent}, state)
        raise ValueError(f"unexpected request {request!r}")

    async def handle_info(self, message: Any, state: _State) -> NoReply[_State] | Stop[_State]:
        try:
            return await self._handle_info(message, state)
        except LeaseLostError as error:
            return await self._lease_lost(state, error)

    async def _handle_info(self, message: Any, state: _State) -> NoReply[_State] | Stop[_State]:
        match message:
            case RecipientsDone(verdicts):
                state.buffer.add(verdicts)
                if len(state.buffer) >= state.args.context.settings.flush_size and not state.buffer.failures:
                    await self._flush(state)
                elif state.flush_timer is None:
                    interval = state.args.context.settings.flush_interval
                    state.flush_timer = send_after(self_pid(), _FLUSH, interval)
                return NoReply(state)
            case _Flush():
                state.flush_timer = None
                if await self._flush(state) and state.driver is None and state.lease is not None:
                    # The driver ended while the outcomes could not be written: settle now.
                    return await self._renew(state)
                return NoReply(state)
            case _Renew():
                state.renew_timer = None
                return await self._renew(state)
            case ExitMessage(pid, reason) if pid == state.driver:
                state.driver = None
                if not is_expected(reason):
                    return Stop(reason, state)  # the driver crashed: so do we, and we resume from Postgres
                if not await self._flush(state):
                    return NoReply(state)  # settled once the outcomes are written (the _Flush retry)
                if isinstance(reason, Shutdown) and isinstance(reason.detail, ClaimRefusedError):
                    # The recipients in flight have finished. Renewing tells why the claim was refused:
                    # the lease lost (LeaseLostError), the letter paused or cancelled elsewhere, or a
                    # lease that had only expired, with nobody taking it over: then we go on.
                    _log.info("claim refused", letter_id=state.letter_id, reason=reason.detail.reason)
                    return await self._renew(state)
                return await self._settle(state)
        return await super().handle_info(message, state)

    async def terminate(self, reason: ExitReason, state: _State) -> None:
        if state.driver is not None:
            # Graceful: stop claiming, let the recipients in flight finish, keep their verdicts.
            if state.drain is not None:
                state.drain.set()
            await self._await_driver(state)
        if state.pool is None:
            return
        await self._write_all(state)  # acks are fenced row by row: safe even with the lease lost
        self._disarm_renewal(state)
        if state.lease is None:
            return  # never held, already released, or lost: the letter is not ours to write
        try:
            if is_expected(reason):
                # A clean stop (a shutdown): another node may resume the letter at once.
                await self._release(state)
            else:
                # Still "running", so the next start counts a restart; the lease is kept, for the
                # LetterSupervisor restarts the service here (others take over once it expires).
                async with _fenced(state) as connection:
                    await letters.update_mail_order(connection, state.letter_id, {"last_crash": str(reason)})
        except LeaseLostError as error:
            _log.warning("lease lost before the stop", letter_id=state.letter_id, holder=error.holder)

    # ---------------------------------------------------------------- internals

    async def _recover(self, state: _State, letter: Letter) -> None:
        """Rows left 'sending' become uncertain, then resent or held by the policy in force.

        Runs whenever a service takes a letter that may have been sent before, before it claims
        anything: no driver of this service runs yet, so every 'sending' row belongs to a sender that
        died (a crash, a kill, a node that lost the letter) and will never acknowledge it. Under
        ``resend`` every uncertain row is queued again, also those a letter failed by its crash
        limit had left, so that a retry of such a letter mails them.
        """
        assert state.pool is not None
        policy = _policy_in_force(state, letter)
        # Under the lease's lock: no other node can take the letter over while its rows change.
        async with _fenced(state) as connection:
            recovery = await deliveries.recover_deliveries(connection, state.letter_id, policy)
            if recovery.uncertain:
                await letters.update_mail_order(
                    connection, state.letter_id, {"uncertain_found": recovery.uncertain}
                )
        if recovery.uncertain:
            _log.warning(
                "recipients in flight at the last stop are uncertain",
                letter_id=state.letter_id,
                uncertain=recovery.uncertain,
                resent=recovery.requeued,
                policy=str(policy),
            )

    async def _count_restart(self, state: _State, letter: Letter) -> bool:
        """Count a restart if the letter's last sender crashed in this daemon run; False if too many."""
        assert state.pool is not None
        order = letter.mail_order
        crashed_here = order.get("running") == state.args.context.settings.incarnation
        restarts = int(order.get("restarts", 0)) + (1 if crashed_here else 0)
        limit = state.args.context.settings.max_letter_restarts
        if restarts > limit:
            last = order.get("last_crash")
            # A kill leaves no trace (terminate does not run): say so rather than print "None".
            cause = f"last: {last}" if last else "the last one was killed without a trace"
            reason = f"the letter's sender crashed {restarts} times (limit {limit}); {cause}"
            assert state.lease is not None
            async with _fenced(state) as connection:
                await letters.set_letter_status(
                    connection, state.letter_id, LetterStatus.FAILED, expected=LetterStatus.SENDING
                )
                # Nobody sends the rows the last incarnation left sending: report them uncertain
                # rather than leave a failed letter with recipients "sending" for ever.
                uncertain = await deliveries.mark_sending_uncertain(connection, state.letter_id)
                await letters.release_lease(
                    connection,
                    state.lease,
                    {
                        "running": False,
                        "restarts": restarts,
                        "failure_reason": reason,
                        "uncertain_found": uncertain,
                    },
                )
            state.lease = None
            _log.error("letter failed", letter_id=state.letter_id, reason=reason)
            return False
        if restarts != order.get("restarts", 0):
            async with _fenced(state) as connection:
                await letters.update_mail_order(connection, state.letter_id, {"restarts": restarts})
        return True

    def _start_driver(self, state: _State) -> None:
        assert state.pool is not None
        assert state.lease is not None
        assert state.smtp is not None
        assert state.template is not None
        assert state.letter is not None
        settings = state.args.context.settings
        state.drain = asyncio.Event()
        task = RecipientTask(
            letter_id=state.letter_id,
            template=state.template,
            smtp=state.smtp,
            policy=settings.retry,
            rng=random.Random(),
            hold_uncertain=_policy_in_force(state, state.letter) is UncertainPolicy.HOLD,
            withdrawn=state.drain,
            database=state.pool,
            recheck_after=settings.subscription_recheck,
        )
        state.driver = spawn_link(
            drive,
            DriverArgs(
                service=self_pid(),
                context=state.args.context,
                letter_id=state.letter_id,
                pool=state.pool,
                lease=state.lease,
                task=task,
                drain=state.drain,
                writable=state.buffer.writable,
            ),
        )

    async def _flush(self, state: _State) -> bool:
        """Write the buffered outcomes; True when none is left. A failed write keeps them all and
        arms a retry after the buffer's back-off (the driver claims nobody meanwhile)."""
        if state.flush_timer is not None:
            cancel_timer(state.flush_timer)
            state.flush_timer = None
        if state.pool is None:
            return True
        if await state.buffer.write(state.pool):
            return True
        state.flush_timer = send_after(self_pid(), _FLUSH, state.buffer.retry_in)
        return False

    async def _write_all(self, state: _State) -> None:
        """Write the buffered outcomes, waiting out failed writes: a stop must not lose them.

        Bounded by the caller: a pause or cancel's call timeout, or the stop budget in ``terminate``
        (past it the supervisor kills the service, and the rows stay 'sending' for recovery).
        """
        assert state.pool is not None
        # A back-off between tries, not a wait for an event: the service is stopping and has
        # nothing else to serve meanwhile.
        while not await state.buffer.write(state.pool):  # noqa: ASYNC110
            await asyncio.sleep(state.buffer.retry_in)

    async def _stop_as(self, state: _State, status: LetterStatus) -> LetterStatus | None:
        """Pause or cancel: flush, then move the letter to ``status`` and release its lease.

        Paused or cancelled from another node, the letter's status is left as it is now (it may even
        have been resumed since: then another node picks the letter up). None when the service
        never held the lease: it was still loading, and changed nothing.
        """
        await self._write_all(state)
        if state.lease is None:
            return None
        if not state.stopped_elsewhere:
            async with _fenced(state) as connection:
                await letters.set_letter_status(
                    connection, state.letter_id, status, expected=[LetterStatus.SENDING, LetterStatus.PAUSED]
                )
        await self._release(state)
        _log.info("letter stopped", letter_id=state.letter_id, status=str(status))
        return status

    async def _settle(self, state: _State) -> NoReply[_State] | Stop[_State]:
        """The driver has ended and everything is flushed: finish, stop, or go on.

        The count and the status change happen in one transaction under the letter's lock (the
        lease's, :func:`letters.lock_lease`), the lock a retry of failed recipients takes too
        (:func:`letters.lock_letter`): a retry either lands before the count, which then sees its
        rows pending and goes on, or after the letter is sent, and finds it sent (and starts it
        again). A pause or cancel written meanwhile from another node is seen here too.
        """
        assert state.pool is not None
        if state.stopping is not None:
            _reply_to_waiters(state, await self._stop_as(state, state.stopping))
            return Stop(NORMAL, state)
        assert state.lease is not None
        async with transaction(state.pool) as connection:
            status = await letters.lock_lease(connection, state.lease)
            counts = await deliveries.count_deliveries(connection, state.letter_id)
            finished = status is LetterStatus.SENDING and not counts.unfinished
            if finished:
                await letters.set_letter_status(
                    connection, state.letter_id, LetterStatus.SENT, expected=LetterStatus.SENDING
                )
                await letters.release_lease(
                    connection,
                    state.lease,
                    {
                        "running": False,
                        "finished": True,
                        "delivered": counts.delivered,
                        "failed": counts.failed,
                        "skipped": counts.skipped,
                        "uncertain": counts.uncertain,
                    },
                )
        if status is not LetterStatus.SENDING:
            # Paused or cancelled from another node since the last renewal: stop as asked there.
            _log.info("letter stopped from elsewhere", letter_id=state.letter_id, status=str(status))
            state.stopping, state.stopped_elsewhere = status, True
            _reply_to_waiters(state, await self._stop_as(state, status))
            return Stop(NORMAL, state)
        if not finished:
            self._start_driver(state)  # some recipients are backing off (or were retried): go on
            return NoReply(state)
        state.lease = None
        _log.info(
            "letter sent",
            letter_id=state.letter_id,
            delivered=counts.delivered,
            failed=counts.failed,
            skipped=counts.skipped,
            uncertain=counts.uncertain,
        )
        return Stop(NORMAL, state)

    # ---------------------------------------------------------------- the lease

    def _arm_renewal(self, state: _State) -> None:
        self._disarm_renewal(state)
        state.renew_timer = send_after(self_pid(), _RENEW, state.args.context.settings.lease_ttl / 3)

    def _disarm_renewal(self, state: _State) -> None:
        if state.renew_timer is not None:
            cancel_timer(state.renew_timer)
            state.renew_timer = None

    async def _renew(self, state: _State) -> NoReply[_State] | Stop[_State]:
        """Renew the lease (LeaseLostError if it was taken over), and act on the letter's status."""
        assert state.pool is not None
        if state.lease is None:  # a renewal timer that fired as the lease was given up
            return NoReply(state)
        settings = state.args.context.settings
        state.lease, status = await letters.renew_lease(state.pool, state.lease, settings.lease_duration)
        self._arm_renewal(state)
        if status is not LetterStatus.SENDING and state.stopping is None:
            # Paused or cancelled from another node: stop as if asked here (those in flight finish).
            _log.info("letter stopped from elsewhere", letter_id=state.letter_id, status=str(status))
            state.stopping, state.stopped_elsewhere = status, True
            if state.drain is not None:
                state.drain.set()
        if state.driver is None:  # after a refused claim: settle (go on, or stop as asked)
            return await self._settle(state)
        return NoReply(state)

    async def _await_driver(self, state: _State) -> None:
        """Take the driver's verdicts until it has ended (``terminate`` blocks the server loop).

        The verdicts are written as they come, every ``flush_size`` or ``flush_interval`` as while
        sending, never only at the end: a stop that runs out of its budget loses no outcome that
        was in for a while. The lease is renewed meanwhile, as the timer would: the recipients in
        flight may take a while to finish, and another node must not take the letter over from a
        node still sending it. A renewal that finds the lease lost kills the driver, and its tasks
        with it, at once.
        """
        assert state.driver is not None
        assert state.pool is not None
        driver = state.driver
        settings = state.args.context.settings
        loop = asyncio.get_running_loop()
        renew_at = loop.time() + settings.lease_ttl / 3
        flush_at = math.inf
        while True:
            wake_at = min(flush_at, renew_at if state.lease is not None else math.inf)
            try:
                message = await receive(
                    lambda m: (
                        isinstance(m, RecipientsDone) or (isinstance(m, ExitMessage) and m.pid == driver)
                    ),
                    timeout=None if math.isinf(wake_at) else max(0.0, wake_at - loop.time()),
                )
            except TimeoutError:
                if loop.time() >= flush_at:
                    flush_at = math.inf
                    if not await state.buffer.write(state.pool):
                        flush_at = loop.time() + state.buffer.retry_in
                if state.lease is not None and loop.time() >= renew_at:
                    renew_at = loop.time() + settings.lease_ttl / 3
                    await self._renew_while_stopping(state, driver)
                continue
            if not isinstance(message, RecipientsDone):
                break
            state.buffer.add(message.verdicts)
            if len(state.buffer) >= settings.flush_size and not state.buffer.failures:
                await state.buffer.write(state.pool)
            if state.buffer.verdicts and math.isinf(flush_at):
                flush_at = loop.time() + max(settings.flush_interval, state.buffer.retry_in)
        state.driver = None

    async def _renew_while_stopping(self, state: _State, driver: Pid) -> None:
        """Renew the lease of a stopping service; lost, kill the driver (and its tasks) at once."""
        assert state.pool is not None
        assert state.lease is not None
        try:
            state.lease, _ = await letters.renew_lease(
                state.pool, state.lease, state.args.context.settings.lease_duration
            )
        except LeaseLostError as error:
            _log.warning("lease lost while stopping", letter_id=state.letter_id, holder=error.holder)
            state.lease = None
            exit(driver, KILL)
        except DatabaseError as error:  # Postgres is failing: the lease holds for a while yet
            _log.warning("lease not renewed while stopping", letter_id=state.letter_id, error=str(error))

    async def _release(self, state: _State) -> None:
        """A clean stop: clear ``running`` and give the lease up, so another node may go on at once."""
        if state.pool is not None and state.lease is not None:
            await letters.release_lease(state.pool, state.lease, {"running": False})
        state.lease = None

    async def _lease_lost(self, state: _State, error: LeaseLostError) -> Stop[_State]:
        """Another node took the letter over: stop sending at once and stop, writing nothing to it.

        The driver is killed, and with it the recipient tasks in flight; their rows are the new
        holder's to recover. The verdicts already reported are still written by ``terminate``: an
        ack applies only to a row still claimed under its token, so none can undo the new holder's.
        """
        _log.warning(
            "lease lost: another node sends the letter now", letter_id=state.letter_id, holder=error.holder
        )
        state.lease = None
        self._disarm_renewal(state)
        if state.driver is not None:
            exit(state.driver, KILL)
            await self._await_driver(state)
        _reply_to_waiters(state, None)
        return Stop(NORMAL, state)


def _policy_in_force(state: _State, letter: Letter) -> UncertainPolicy:
    """The uncertain policy in force: the settings' override, else the letter's own."""
    return UncertainPolicy(state.args.context.settings.uncertain_policy or letter.uncertain_policy)


def _reply_to_waiters(state: _State, status: LetterStatus | None) -> None:
    """Answer every pause or cancel waiting for the service to stop."""
    for waiter in state.waiters:
        GenServer.reply(waiter, status)
    state.waiters.clear()


@asynccontextmanager
async def _fenced(state: _State) -> AsyncIterator[Connection]:
    """A transaction in which the service's lease still holds, and no other node can take it over.

    The letter's row stays locked until the transaction ends; :class:`LeaseLostError` if the lease
    is no longer the letter's (nothing in the block is then written).
    """
    assert state.pool is not None
    assert state.lease is not None
    async with transaction(state.pool) as connection:
        await letters.lock_lease(connection, state.lease)
        yield connection

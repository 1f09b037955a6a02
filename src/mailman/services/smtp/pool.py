"""The SMTP side of delivery: a pool of reusable connections that sends one message at a time each.

:class:`SmtpPool` is the only place where mailman speaks SMTP. It keeps up to ``size`` aiosmtplib
connections, opened lazily and reused across messages, and turns every way an attempt can end into a
:class:`~mailman.services.smtp.outcome.SendResult`: ``send`` never raises for an SMTP outcome, and
no aiosmtplib type appears in its signatures::

    pool = SmtpPool("smtp+starttls://user:secret@relay.example.com", size=8)
    match await pool.send("news@example.com", "ada@example.org", message_bytes, key=letter_id):
        case Delivered(reply):                     # reply: "2.0.0 Ok: queued as 4BXY..."
            ...
        case Transient(code, reply, phase) as t:   # retry later (t.uncertain: maybe delivered)
            ...
        case Permanent(code, reply) as p:          # p.is_user_unknown: mark the subscription bounced
            ...
        case TransportFault(code, reply, phase):   # the relay is at fault: hold the letter
            ...
    await pool.close()

Concurrency is parallel connections: aiosmtplib does not pipeline, and one connection carries one
transaction at a time, so ``size`` connections carry ``size`` messages at once.

Connections:

- Opened when a send finds no idle one (never more than ``size``), in phases CONNECT, EHLO,
  STARTTLS and AUTH as the URL asks (:func:`parse_smtp_url`).
- Reused for the next message; recycled (QUIT) after ``max_messages_per_connection`` messages
  (50 by default: relays throttle or cut long sessions), and closed after a 421, a disconnect, a
  timeout or a failed RSET. After a refused MAIL/RCPT/DATA the envelope is reset with RSET.
- A connection that sat idle longer than ``idle_timeout`` is closed rather than reused, since
  servers drop idle sessions. If a reused connection still fails at MAIL with no reply or a 421
  (the server dropped it while idle), the message is tried once more on a fresh connection: nothing
  of it had been sent.

Phases are observed one by one (``mail``, ``rcpt``, the ``DATA`` command, then the message and its
final dot), so a result tells where the attempt ended, and only a failure after the final dot is
:attr:`~mailman.services.smtp.outcome.Transient.uncertain`.

Rate: each send takes a token from ``rate_limiter`` once it holds a connection slot, right before
its transaction, so the limit holds at the moment of sending (and can be changed live with
``pool.rate_limiter.set_rate``).

Withdrawing a send: a caller may pass a :class:`SendGate`. Until the message's transaction starts
(while the send waits for a slot, a rate token or a new connection) setting ``gate.withdrawn`` ends
the wait at once, and the send returns :class:`~mailman.services.smtp.outcome.Withdrawn` having sent
nothing; right before the transaction the gate is asked to ``confirm`` the send (a letter's
recipient task checks there that the subscription is still active). Once ``MAIL FROM`` is written
the send goes to its end: what the relay was handed is never abandoned half-way. This is how a
letter that stops at a low rate gives its waiting recipients back at once instead of holding its
shutdown until each gets a token.

Fairness between letters: sends that wait for a connection slot queue per ``key`` (pass the letter
id), and a freed slot goes to the keys in turn (round robin), oldest waiter first within a key. A
letter with 10,000 queued sends and a letter with one therefore alternate: the small letter waits
for at most one slot per other letter, not for the big letter's queue. With a single key this is
plain FIFO.

Circuit breaker: when given one, ``send`` returns a :class:`TransportFault` at once while it is open,
reports transport faults to it, and reports a reply from a working relay (delivered, permanent, a
coded transient after MAIL) as a success. In half-open state the first send is the probe.

``close`` ends the pool: idle connections get a QUIT, connections in use close when their send
ends, sends waiting for a slot and any later send raise :class:`PoolClosedError`.
"""

from __future__ import annotations

import asyncio
import math
import re
import socket
import ssl
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar

import aiosmtplib
import structlog

from mailman.services.errors import MailmanError
from mailman.services.smtp.circuit_breaker import BreakerState, CircuitBreaker
from mailman.services.smtp.outcome import (
    AttemptResult,
    Delivered,
    Permanent,
    SendResult,
    SmtpPhase,
    Transient,
    TransportFault,
    Withdrawn,
    outcome,
)
from mailman.services.smtp.rate_limit import TokenBucket
from mailman.services.smtp.url import Security, SmtpUrl, parse_smtp_url
from mailman.supervisor import Clock, MonotonicClock

__all__ = [
    "PoolClosedError",
    "PoolStats",
    "SendGate",
    "SmtpPool",
]

log = structlog.get_logger("mailman.mailer")

_T = TypeVar("_T")

DEFAULT_POOL_SIZE: Final = 8
DEFAULT_MAX_MESSAGES_PER_CONNECTION: Final = 50

_ENVELOPE_ADDRESS = re.compile(r"[!-~]+@[!-~]+")
_FORBIDDEN_IN_ADDRESS = frozenset('<>()[],;:"\\')
_LEADING_DOT = re.compile(rb"(?m)^\.")
_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r")


class PoolClosedError(MailmanError, RuntimeError):
    """The SMTP pool was closed (its Mailer stopped): fetch the new pool from the Mailer."""


class SendGate(Protocol):
    """What lets a caller of :meth:`SmtpPool.send` take a message back until its transaction starts."""

    @property
    def withdrawn(self) -> asyncio.Event:
        """Set it to end the send's wait at once: nothing is sent, the result is ``Withdrawn``."""
        ...

    async def confirm(self) -> str | None:
        """Called once the send holds a slot and a token, right before ``MAIL FROM``: None to send,
        or the reason not to (the result is then ``Withdrawn`` with it)."""
        ...


# ---------------------------------------------------------------- the pool


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of an :class:`SmtpPool`, for monitoring and tests."""

    size: int
    """The most connections the pool opens."""
    open_connections: int
    idle_connections: int
    busy: int
    """Sends holding a connection slot."""
    waiting: int
    """Sends waiting for a slot."""
    connections_opened: int
    """Connections opened since the pool was created."""
    messages_sent: int
    """Messages that reached the end of DATA (accepted or not) since the pool was created."""


class _Connection:
    __slots__ = ("client", "idle_since", "messages", "reply_due", "timed_out")

    def __init__(self, client: aiosmtplib.SMTP, now: float) -> None:
        self.client = client
        self.messages = 0
        self.idle_since = now
        self.reply_due = math.inf  # event-loop time by which the awaited reply must have come
        self.timed_out = False


class _ConnectFailed(Exception):
    """Opening a connection failed with ``result`` (internal: ``send`` returns the result)."""

    def __init__(self, result: AttemptResult) -> None:
        super().__init__(result)
        self.result = result


class SmtpPool:
    """Up to ``size`` reusable SMTP connections to one relay; ``send`` returns a result, never raises."""

    def __init__(
        self,
        url: str | SmtpUrl,
        *,
        size: int = DEFAULT_POOL_SIZE,
        max_messages_per_connection: int = DEFAULT_MAX_MESSAGES_PER_CONNECTION,
        rate_limiter: TokenBucket | None = None,
        breaker: CircuitBreaker | None = None,
        timeout: float = 30.0,
        idle_timeout: float = 60.0,
        local_hostname: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.url = url if isinstance(url, SmtpUrl) else parse_smtp_url(url)
        _check_positive_int(size, "size")
        _check_positive_int(max_messages_per_connection, "max_messages_per_connection")
        if not timeout > 0 or not idle_timeout > 0:
            raise ValueError(f"expected timeouts > 0 seconds, got {timeout=!r}, {idle_timeout=!r}")
        self.rate_limiter = rate_limiter if rate_limiter is not None else TokenBucket(math.inf)
        self.breaker = breaker
        self._size = size
        self._max_messages = max_messages_per_connection
        self._timeout = timeout
        self._idle_timeout = idle_timeout
        self._local_hostname = local_hostname
        self._tls_context = tls_context
        self._clock = clock if clock is not None else MonotonicClock()
        self._idle: list[_Connection] = []
        self._open = 0
        self._busy = 0
        # Waiting sends, one FIFO per key; the dict's order is the round-robin order of the keys.
        self._waiters: dict[Hashable, deque[asyncio.Future[bool]]] = {}
        self._closed = False
        self._connections_opened = 0
        self._messages_sent = 0
        # Connections in a mail transaction, and the one timer that gives up their late replies.
        self._transacting: set[_Connection] = set()
        self._watchdog: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"SmtpPool({self.url}, size={self._size}, open={self._open}, closed={self._closed})"

    # ---------------------------------------------------------------- public API

    @property
    def size(self) -> int:
        """The most connections the pool opens (change it with :meth:`set_size`)."""
        return self._size

    @property
    def max_messages_per_connection(self) -> int:
        return self._max_messages

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> PoolStats:
        return PoolStats(
            size=self._size,
            open_connections=self._open,
            idle_connections=len(self._idle),
            busy=self._busy,
            waiting=sum(len(lane) for lane in self._waiters.values()),
            connections_opened=self._connections_opened,
            messages_sent=self._messages_sent,
        )

    def set_size(self, size: int) -> None:
        """Change how many connections the pool may open, now. Surplus connections close when free."""
        _check_positive_int(size, "size")
        self._size = size
        while self._idle and self._open > self._size:
            self._discard(self._idle.pop(0))
        self._grant()

    def set_max_messages_per_connection(self, count: int) -> None:
        """Change after how many messages a connection is recycled, from the next message on."""
        _check_positive_int(count, "max_messages_per_connection")
        self._max_messages = count

    async def send(
        self,
        envelope_from: str,
        recipient: str,
        message: bytes,
        *,
        key: Hashable = None,
        gate: SendGate | None = None,
    ) -> SendResult:
        """Send ``message`` (complete, with headers) to ``recipient`` with ``envelope_from`` as sender.

        ``envelope_from`` may be ``""`` (the null sender ``<>``). ``key`` groups the sends of one
        letter for fair turns between letters. ``gate`` lets the caller withdraw the send until its
        transaction starts (see the module documentation). Returns the outcome; raises only for
        misuse (``ValueError`` / ``TypeError``) and :class:`PoolClosedError`.
        """
        _check_envelope_address(envelope_from, "envelope_from", allow_empty=True)
        _check_envelope_address(recipient, "recipient", allow_empty=False)
        if not isinstance(message, bytes):
            raise TypeError(f"expected the message as bytes, got {type(message).__name__}")
        if self._closed:
            raise PoolClosedError(f"{self!r} is closed")
        data = _canonical(message)
        breaker = self.breaker
        probe = False
        if breaker is not None:
            probe = breaker.state is BreakerState.HALF_OPEN
            if not breaker.allow_request():
                if breaker.state is BreakerState.OPEN:
                    why = f"circuit open after transport faults: next attempt in {breaker.retry_in:.1f} s"
                else:
                    why = "circuit half-open after transport faults: waiting for the probe's verdict"
                return TransportFault(None, why, SmtpPhase.CONNECT)
        try:
            if gate is not None and gate.withdrawn.is_set():
                result: SendResult = Withdrawn("withdrawn before its turn")
            elif not await self._take_turn(key, gate):
                result = Withdrawn("withdrawn while waiting for a connection slot or a rate token")
            else:
                try:
                    result = await self._send(envelope_from, recipient, data, gate)
                finally:
                    self._release_slot()
        except BaseException:
            if probe and breaker is not None:
                breaker.release_probe()
            raise
        if breaker is not None:
            _report(breaker, result, probe=probe)
        return result

    async def close(self) -> None:
        """Close the pool: QUIT idle connections, fail waiting sends with :class:`PoolClosedError`."""
        if self._closed:
            return
        self._closed = True
        for lane in self._waiters.values():
            for waiter in lane:
                if not waiter.done():
                    waiter.set_result(False)
        self._waiters.clear()
        idle, self._idle = self._idle, []
        await asyncio.gather(*(self._quit(connection) for connection in idle))

    # ---------------------------------------------------------------- slots (fair queueing)

    async def _take_turn(self, key: Hashable, gate: SendGate | None) -> bool:
        """Wait for a connection slot, then a rate token: True with the slot held, or False (no slot
        held) if ``gate`` was withdrawn first. Nothing to wait for costs no extra task."""
        if gate is None or (
            self._busy < self._size and not self._waiters and self.rate_limiter.try_acquire()
        ):
            if gate is not None:  # the slot is free and the token taken: no wait at all
                self._busy += 1
                return True
            await self._acquire_slot(key)
            try:
                await self.rate_limiter.acquire()
            except BaseException:
                self._release_slot()
                raise
            return True
        turn = asyncio.ensure_future(self._take_turn(key, None))
        try:
            return await _unless_withdrawn(turn, gate)
        except BaseException:
            if turn.done() and not turn.cancelled() and turn.exception() is None:
                self._release_slot()  # our caller was cancelled just as the turn came
            raise

    async def _acquire_slot(self, key: Hashable) -> None:
        if self._busy < self._size and not self._waiters:
            self._busy += 1
            return
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        lane = self._waiters.get(key)
        if lane is None:
            lane = self._waiters[key] = deque()
        lane.append(waiter)
        try:
            granted = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self._release_slot()  # granted just before the cancellation reached us
            else:
                lane = self._waiters.get(key)
                if lane is not None and waiter in lane:
                    lane.remove(waiter)
                    if not lane:
                        del self._waiters[key]
            raise
        if not granted:
            raise PoolClosedError(f"{self!r} was closed while this send waited for a connection")

    def _release_slot(self) -> None:
        self._busy -= 1
        self._grant()

    def _grant(self) -> None:
        while self._busy < self._size and self._waiters:
            key = next(iter(self._waiters))
            lane = self._waiters.pop(key)
            waiter = lane.popleft()
            if lane:
                self._waiters[key] = lane  # to the back: the other keys go first
            if waiter.done():
                continue  # cancelled while waiting
            self._busy += 1
            waiter.set_result(True)

    # ---------------------------------------------------------------- connections

    async def _send(
        self, envelope_from: str, recipient: str, data: bytes, gate: SendGate | None
    ) -> SendResult:
        for attempt in (1, 2):
            try:
                connection = await self._checkout(gate)
            except _ConnectFailed as failure:
                return failure.result
            if connection is None:
                return Withdrawn("withdrawn while a connection was being opened")
            if gate is not None and attempt == 1:
                # Withdrawn as the turn came (an idle connection needs no wait): still nothing sent.
                reason = (
                    "withdrawn before its transaction" if gate.withdrawn.is_set() else await gate.confirm()
                )
                if reason is not None:
                    await self._checkin(connection, reusable=True)
                    return Withdrawn(reason)
            reused = connection.messages > 0
            try:
                result, reusable = await self._transact(connection, envelope_from, recipient, data)
            except BaseException:
                self._discard(connection)  # cancelled mid-transaction, or a bug: the session is unknown
                raise
            await self._checkin(connection, reusable=reusable)
            stale = (
                reused
                and attempt == 1
                and isinstance(result, Transient)
                and result.phase is SmtpPhase.MAIL
                and result.code in (None, 421)
            )
            if not stale:
                return result
            log.debug("smtp.stale_connection", url=str(self.url), code=result.code, reply=result.reply)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _checkout(self, gate: SendGate | None = None) -> _Connection | None:
        """An idle connection, or a new one; None if ``gate`` was withdrawn while it was opened."""
        now = self._clock.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if connection.client.is_connected and now - connection.idle_since < self._idle_timeout:
                return connection
            self._discard(connection)
        if gate is None:
            return await self._connect()
        connecting = asyncio.ensure_future(self._connect())
        try:
            if await _unless_withdrawn(connecting, gate):
                return connecting.result()
        except BaseException:
            if connecting.done() and not connecting.cancelled() and connecting.exception() is None:
                self._discard(connecting.result())  # our caller was cancelled as it connected
            raise
        return None

    async def _checkin(self, connection: _Connection, *, reusable: bool) -> None:
        if not reusable:
            self._discard(connection)
        elif self._closed or self._open > self._size or connection.messages >= self._max_messages:
            await self._quit(connection)
        else:
            connection.idle_since = self._clock.monotonic()
            self._idle.append(connection)

    async def _connect(self) -> _Connection:
        url = self.url
        if self._local_hostname is None:
            self._local_hostname = await asyncio.to_thread(socket.getfqdn)
        client = aiosmtplib.SMTP(
            hostname=url.host,
            port=url.port,
            use_tls=url.security is Security.TLS,
            start_tls=False,
            timeout=self._timeout,
            local_hostname=self._local_hostname,
            tls_context=self._tls_context,
        )
        phase = SmtpPhase.CONNECT
        try:
            await client.connect()
            phase = SmtpPhase.EHLO
            await client.ehlo()
            if url.security is Security.STARTTLS:
                phase = SmtpPhase.STARTTLS
                await client.starttls()
                phase = SmtpPhase.EHLO
                await client.ehlo()
            if url.username is not None:
                phase = SmtpPhase.AUTH
                await client.login(url.username, url.password or "")
        except Exception as exc:
            client.close()
            result = _failure(exc, phase)
            log.warning("smtp.connect_failed", url=str(url), phase=phase.value, reply=result.reply)
            raise _ConnectFailed(result) from exc
        except BaseException:
            client.close()
            raise
        self._open += 1
        self._connections_opened += 1
        return _Connection(client, self._clock.monotonic())

    async def _transact(
        self, connection: _Connection, envelope_from: str, recipient: str, data: bytes
    ) -> tuple[AttemptResult, bool]:
        """One mail transaction; the result, and whether the connection can carry another."""
        client = connection.client
        timeout = self._timeout
        loop = asyncio.get_running_loop()
        phase = SmtpPhase.MAIL
        # Each reply must come within ``timeout``, as aiosmtplib's own timeouts would have it. Rather
        # than a timer per command (asyncio.wait_for or a rescheduled asyncio.timeout: a timer
        # handle made and cancelled four times a message), each command writes down when its reply
        # is due, and one timer for the whole pool (see _on_watchdog) aborts a connection whose
        # reply is late, which fails the read at once; that failure is turned into aiosmtplib's
        # timeout below.
        self._transacting.add(connection)
        connection.reply_due = loop.time() + timeout
        if self._watchdog is None:
            self._watchdog = loop.call_at(connection.reply_due, self._on_watchdog)
        try:
            # MAIL and RCPT written directly rather than with aiosmtplib's mail() and rcpt(), which
            # parse each address with email.utils.parseaddr (tens of microseconds a message): the
            # addresses were checked in send() (bare ASCII, no <>, spaces or quotes), and EHLO was
            # done when the connection opened. The replies are checked as aiosmtplib checks them.
            mail = [b"MAIL", b"FROM:<" + envelope_from.encode("ascii") + b">"]
            if client.supports_extension("size"):
                mail.append(b"SIZE=%d" % len(data))
            reply = await client.execute_command(*mail, timeout=None)
            if reply.code != 250:
                raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, envelope_from)
            phase = SmtpPhase.RCPT
            connection.reply_due = loop.time() + timeout
            reply = await client.execute_command(
                b"RCPT", b"TO:<" + recipient.encode("ascii") + b">", timeout=None
            )
            if reply.code not in (250, 251):
                raise aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, recipient)
            phase = SmtpPhase.DATA
            connection.reply_due = loop.time() + timeout
            reply = await client.execute_command(b"DATA", timeout=None)
            if reply.code != 354:
                raise aiosmtplib.SMTPDataError(reply.code, reply.message)
            # aiosmtplib's data() sends DATA and the message in one call; done in two steps here so
            # that a failure before the final dot (safe to retry) is told apart from one after it.
            protocol = client.protocol
            if protocol is None:
                raise aiosmtplib.SMTPServerDisconnected("Connection lost")
            stuffed = _LEADING_DOT.sub(b"..", data) if data.startswith(b".") or b"\n." in data else data
            protocol.write(stuffed + b".\r\n")
            phase = SmtpPhase.END_OF_DATA
            connection.reply_due = loop.time() + timeout
            reply = await protocol.read_response(timeout=None)
        except Exception as exc:
            connection.reply_due = math.inf  # the RSET that may follow has its own timeout
            return await self._failed(connection, exc, phase)
        finally:
            self._transacting.discard(connection)
            connection.reply_due = math.inf
        return self._finished(connection, reply)

    def _finished(
        self, connection: _Connection, reply: aiosmtplib.SMTPResponse
    ) -> tuple[AttemptResult, bool]:
        """The outcome of a transaction that got its end-of-DATA reply."""
        client = connection.client
        self._messages_sent += 1
        connection.messages += 1
        if not 200 <= reply.code <= 599:
            client.close()
            malformed = f"malformed reply {reply.code} {reply.message}"
            return Transient(None, malformed, SmtpPhase.END_OF_DATA), False
        result = outcome(reply.code, reply.message, SmtpPhase.END_OF_DATA)
        if reply.code == 421:
            client.close()
        return result, client.is_connected

    async def _failed(
        self, connection: _Connection, error: Exception, phase: SmtpPhase
    ) -> tuple[AttemptResult, bool]:
        """The outcome of a transaction that failed in ``phase``, and whether the connection lives on."""
        client = connection.client
        if connection.timed_out:
            # As aiosmtplib does on a read timeout: the session is out of step, close it.
            client.close()
            error = aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response")
        result = _failure(error, phase)
        if phase is SmtpPhase.END_OF_DATA:
            self._messages_sent += 1
            connection.messages += 1
        return result, await self._after_failure(client, result, phase)

    async def _after_failure(self, client: aiosmtplib.SMTP, result: AttemptResult, phase: SmtpPhase) -> bool:
        code = result.code
        if code is None or code == 421 or not client.is_connected:
            client.close()
            return False
        if phase is SmtpPhase.END_OF_DATA:
            return True  # the transaction is over either way
        try:
            await client.rset(timeout=self._timeout)
        except (aiosmtplib.SMTPException, OSError):
            client.close()
            return False
        return client.is_connected

    def _on_watchdog(self) -> None:
        """The pool's reply timer: abort every connection whose reply is overdue, then re-arm.

        Armed for the earliest reply due when it was set; by the time it fires most of those replies
        have come and later commands have moved the dues on, so it re-arms for the earliest one left.
        """
        self._watchdog = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        earliest = math.inf
        for connection in self._transacting:
            due = connection.reply_due
            if due <= now:
                connection.timed_out = True
                connection.reply_due = math.inf
                transport = connection.client.transport
                if isinstance(transport, asyncio.WriteTransport):
                    transport.abort()  # the awaited read fails with "connection lost" at once
            elif due < earliest:
                earliest = due
        if earliest != math.inf:
            self._watchdog = loop.call_at(earliest, self._on_watchdog)

    async def _quit(self, connection: _Connection) -> None:
        try:
            await connection.client.quit(timeout=min(self._timeout, 5.0))
        except (aiosmtplib.SMTPException, OSError):
            pass  # we are leaving anyway
        finally:
            self._discard(connection)

    def _discard(self, connection: _Connection) -> None:
        connection.client.close()
        self._open -= 1


# ---------------------------------------------------------------- translation and helpers


def _failure(exc: Exception, phase: SmtpPhase) -> AttemptResult:
    """The result for an exception raised by aiosmtplib (or the socket under it) in ``phase``.

    Decided from the exception's type and SMTP code, never from its text.
    """
    if _is_tls_failure(exc):
        # A certificate that does not verify will not verify on the next attempt either.
        return TransportFault(None, f"TLS failure: {_describe(exc)}", phase)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        code: int | None = exc.code if 200 <= exc.code <= 599 else None
        return outcome(code, exc.message, phase)
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected | aiosmtplib.SMTPTimeoutError | OSError):
        return outcome(None, _describe(exc), phase)
    if isinstance(exc, aiosmtplib.SMTPException):
        # Not a reply but a refusal to go on: the server lacks what the URL asks for (STARTTLS,
        # AUTH) or speaks a dialect we do not. The relay's configuration, not the recipient's fault.
        return TransportFault(None, _describe(exc), phase)
    raise exc


def _is_tls_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _describe(exc: BaseException) -> str:
    text = str(exc)
    cause = exc.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text} ({cause})"
    return text or type(exc).__name__


async def _unless_withdrawn(work: asyncio.Future[_T], gate: SendGate) -> bool:
    """Wait for ``work`` unless ``gate`` is withdrawn first: True once ``work`` is done (its result
    is then there to take, its exception raised here), False once it was cancelled for the gate.

    ``work`` must undo what it half did when cancelled (release a slot, close a socket). If it
    finished in the same turn as the gate was withdrawn, it counts as done: the caller then holds
    what it got and may still decline to use it.
    """
    withdrawn = asyncio.ensure_future(gate.withdrawn.wait())
    try:
        await asyncio.wait((work, withdrawn), return_when=asyncio.FIRST_COMPLETED)
    finally:
        withdrawn.cancel()
        if not work.done():
            work.cancel()
            await asyncio.wait((work,))  # let it unwind: what it held is given back before we go on
    if work.cancelled():
        return False
    work.result()
    return True


def _report(breaker: CircuitBreaker, result: SendResult, *, probe: bool) -> None:
    """Tell the breaker what a send showed about the relay."""
    match result:
        case TransportFault():
            breaker.record_failure()
        case Delivered() | Permanent():
            breaker.record_success()
        case Transient(code=code, phase=phase) if code is not None and phase not in (
            None,
            SmtpPhase.CONNECT,
            SmtpPhase.EHLO,
            SmtpPhase.STARTTLS,
            SmtpPhase.AUTH,
        ):
            breaker.record_success()
        case _:
            if probe:
                breaker.release_probe()  # a lost connection or a busy greeting proves nothing


def _canonical(message: bytes) -> bytes:
    """The message with CRLF line endings and a final CRLF, as it travels in DATA (before dot-stuffing)."""
    crlf = message.count(b"\r\n")
    if message.count(b"\n") != crlf or message.count(b"\r") != crlf:
        message = _LINE_ENDINGS.sub(b"\r\n", message)
    return message if message.endswith(b"\r\n") else message + b"\r\n"


def _check_envelope_address(address: str, name: str, *, allow_empty: bool) -> None:
    if not isinstance(address, str):
        raise TypeError(f"expected {name} as a str, got {type(address).__name__}")
    if address == "" and allow_empty:
        return
    if not _ENVELOPE_ADDRESS.fullmatch(address) or _FORBIDDEN_IN_ADDRESS.intersection(address):
        raise ValueError(
            f"expected {name} to be a bare ASCII address like user@example.com (no name, no <>), "
            f"got {address!r}"
        )


def _check_positive_int(value: int, name: str) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f"expected {name} to be an int >= 1, got {value!r}")

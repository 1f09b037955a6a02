"""Mailer: the process that owns the SMTP pool's lifecycle and its live settings.

The Mailer is a :class:`~mailman.supervisor.GenServer` under the application supervisor. It creates
an :class:`~mailman.services.smtp.pool.SmtpPool` in ``init`` (no connection is opened until the first
send), closes its connections in ``terminate`` (it traps exits, so a supervisor's shutdown runs
``terminate``), and answers two calls::

    children = [Mailer.child_spec(MailerConfig(url="smtp://relay:25", pool_size=16), name="mailer")]
    ...
    pool = await Mailer.pool("mailer")           # once per recipient task (or per letter)
    result = await pool.send(sender, recipient, message, key=letter_id)
    await Mailer.configure("mailer", rate=50, burst=10, pool_size=8)    # live, no restart

Sends do not go through the Mailer's mailbox: a GenServer handles one message at a time, and
serialising every SMTP transaction through it would make the pool's parallel connections pointless.
The Mailer hands out the pool, and the pool is safe to use from many tasks of the same event loop.
This is the ``:persistent_term`` / ETS-handle pattern of Elixir pools (a process owns the resource,
clients use it directly), not the ``GenServer.call`` per request of a naive port.

If the Mailer restarts, the old pool is closed and its users get
:class:`~mailman.services.smtp.pool.PoolClosedError`: they ask the new Mailer for the new pool.

See also: Elixir ``GenServer``; ``NimblePool`` and ``Finch`` for the same ownership pattern.
"""

from __future__ import annotations

import math
import ssl
from dataclasses import dataclass
from typing import assert_never

from mailman.services.smtp.circuit_breaker import CircuitBreaker
from mailman.services.smtp.pool import DEFAULT_MAX_MESSAGES_PER_CONNECTION, DEFAULT_POOL_SIZE, SmtpPool
from mailman.services.smtp.rate_limit import Sleep, TokenBucket
from mailman.services.smtp.url import SmtpUrl, parse_smtp_url
from mailman.supervisor import Call, Clock, ExitReason, From, GenServer, Init, Reply, ServerRef, trap_exit

__all__ = ["MAX_POOL_SIZE", "Mailer", "MailerConfig", "MailerSettings", "pool_size_for"]

MAX_POOL_SIZE = 64
"""The most SMTP connections the daemon opens to its relay, whatever its concurrency."""


def pool_size_for(concurrency: int) -> int:
    """The SMTP pool the daemon opens for recipient tasks running ``concurrency`` at a time.

    One connection per task a letter has in flight, so that a letter sending alone never has a task
    waiting for a connection (several letters share the pool in fair turns), and at most
    :data:`MAX_POOL_SIZE`, which relays tolerate from one client.
    ``mailman serve`` sizes its pool with it, and ``bench/delivery.py`` measures the engine so.

    >>> pool_size_for(50), pool_size_for(500)
    (50, 64)
    """
    return min(concurrency, MAX_POOL_SIZE)


@dataclass(frozen=True, slots=True, kw_only=True)
class MailerConfig:
    """How the Mailer reaches the relay and how hard it may push it. Checked when created."""

    url: str | SmtpUrl
    """An ``smtp://``, ``smtp+starttls://`` or ``smtps://`` URL (see ``parse_smtp_url``), or one parsed
    already (a parsed one keeps its password, which its ``str`` hides)."""
    pool_size: int = DEFAULT_POOL_SIZE
    max_messages_per_connection: int = DEFAULT_MAX_MESSAGES_PER_CONNECTION
    rate: float = math.inf
    """Messages per second for the whole pool (``math.inf``: no limit)."""
    burst: int = 1
    timeout: float = 30.0
    """Seconds to wait for each SMTP reply."""
    idle_timeout: float = 60.0
    local_hostname: str | None = None
    """The EHLO name; the host's FQDN by default."""
    tls_context: ssl.SSLContext | None = None
    circuit_breaker: bool = False
    """A breaker for the whole pool: after a transport fault every send fails fast (10, 20, 40...
    up to 300 s) until a probe succeeds. Off by default, since each letter's sender keeps its own
    breaker; turn it on when sends are not otherwise guarded."""
    clock: Clock | None = None
    """Time for the rate limiter and the breaker (tests pass a fake one with ``sleep``)."""
    sleep: Sleep | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.url, SmtpUrl):
            parse_smtp_url(self.url)  # a bad URL fails here, where the configuration is written
        TokenBucket(self.rate, self.burst)
        for name in ("pool_size", "max_messages_per_connection"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"expected {name} to be an int >= 1, got {value!r}")


@dataclass(frozen=True, slots=True)
class MailerSettings:
    """The settings in force, as :meth:`Mailer.configure` returns them."""

    rate: float
    burst: int
    pool_size: int
    max_messages_per_connection: int


@dataclass(frozen=True, slots=True)
class GetPool(Call[SmtpPool]):
    """Call: the pool handle."""


@dataclass(frozen=True, slots=True)
class Configure(Call["MailerSettings | _Refused"]):
    """Call: change settings live (``None`` keeps a setting)."""

    rate: float | None = None
    burst: int | None = None
    pool_size: int | None = None
    max_messages_per_connection: int | None = None


MailerRequest = GetPool | Configure


class Mailer(GenServer[SmtpPool]):
    """Owns the SMTP pool: creates it, closes it, changes its settings; hands it to senders."""

    # ---------------------------------------------------------------- client API

    @staticmethod
    async def pool(server: ServerRef, timeout: float = 5.0) -> SmtpPool:
        """The pool to send with. Sends go straight to it, not through the Mailer."""
        return await GenServer.call(server, GetPool(), timeout)

    @staticmethod
    async def configure(
        server: ServerRef,
        *,
        rate: float | None = None,
        burst: int | None = None,
        pool_size: int | None = None,
        max_messages_per_connection: int | None = None,
        timeout: float = 5.0,
    ) -> MailerSettings:
        """Change the rate (messages per second), burst, pool size or recycling now; return the settings.

        Sends waiting for a token re-plan with the new rate at once; a larger pool lets waiting
        sends open connections at once, a smaller one closes surplus connections as they come free.
        Raises ``ValueError`` for an invalid value (the server is unaffected).
        """
        request = Configure(rate, burst, pool_size, max_messages_per_connection)
        reply = await GenServer.call(server, request, timeout)
        if isinstance(reply, _Refused):
            raise reply.error  # the caller's mistake is raised in the caller, not in the server
        return reply

    @staticmethod
    async def settings(server: ServerRef, timeout: float = 5.0) -> MailerSettings:
        """The settings in force."""
        return await Mailer.configure(server, timeout=timeout)

    # ---------------------------------------------------------------- callbacks

    async def init(self, arg: MailerConfig) -> Init[SmtpPool]:
        if not isinstance(arg, MailerConfig):
            raise TypeError(f"expected a MailerConfig, got {arg!r}")
        trap_exit()  # so that a supervisor's shutdown runs terminate, which closes the connections
        breaker = CircuitBreaker(clock=arg.clock, sleep=arg.sleep) if arg.circuit_breaker else None
        pool = SmtpPool(
            arg.url,
            size=arg.pool_size,
            max_messages_per_connection=arg.max_messages_per_connection,
            rate_limiter=TokenBucket(arg.rate, arg.burst, clock=arg.clock, sleep=arg.sleep),
            breaker=breaker,
            timeout=arg.timeout,
            idle_timeout=arg.idle_timeout,
            local_hostname=arg.local_hostname,
            tls_context=arg.tls_context,
            clock=arg.clock,
        )
        return Init(pool)

    async def handle_call(self, request: MailerRequest, from_: From, state: SmtpPool) -> Reply[SmtpPool]:
        match request:
            case GetPool():
                return Reply(state, state)
            case Configure(rate, burst, pool_size, max_messages):
                try:
                    _apply(state, rate, burst, pool_size, max_messages)
                except ValueError as exc:
                    return Reply(_Refused(exc), state)
                return Reply(_settings(state), state)
            case _:
                assert_never(request)

    async def terminate(self, reason: ExitReason, state: SmtpPool) -> None:
        await state.close()


@dataclass(frozen=True, slots=True)
class _Refused:
    error: ValueError


def _apply(
    pool: SmtpPool, rate: float | None, burst: int | None, pool_size: int | None, max_messages: int | None
) -> None:
    # Check everything before changing anything, so that a bad value changes nothing.
    limiter = pool.rate_limiter
    TokenBucket(limiter.rate if rate is None else rate, limiter.burst if burst is None else burst)
    for name, value in (("pool_size", pool_size), ("max_messages_per_connection", max_messages)):
        if value is not None and (type(value) is not int or value < 1):
            raise ValueError(f"expected {name} to be an int >= 1, got {value!r}")
    if rate is not None or burst is not None:
        limiter.set_rate(limiter.rate if rate is None else rate, burst)
    if pool_size is not None:
        pool.set_size(pool_size)
    if max_messages is not None:
        pool.set_max_messages_per_connection(max_messages)


def _settings(pool: SmtpPool) -> MailerSettings:
    return MailerSettings(
        rate=pool.rate_limiter.rate,
        burst=pool.rate_limiter.burst,
        pool_size=pool.size,
        max_messages_per_connection=pool.max_messages_per_connection,
    )

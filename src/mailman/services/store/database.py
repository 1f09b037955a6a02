"""The Postgres adapter's plumbing: connection types, error translation, transactions, the pool.

Every query function in :mod:`mailman.services.store.queries` takes an :data:`Executor` as its first
argument -- a connection, a connection acquired from a pool, or the pool itself -- and is wrapped in
:func:`translate_errors`, so that what escapes it is a :class:`~mailman.services.errors.MailmanError`,
never an ``asyncpg`` exception. Functions that need several statements to be atomic use
:func:`transaction`, which joins the caller's transaction if there is one (as a savepoint).

Queries never depend on per-connection type codecs: ``jsonb`` is read as ``::text`` and written as
``$n::text::jsonb`` and (de)serialised here in Python, so the functions behave the same on a bare
``asyncpg.connect()`` connection and on a pool whose ``init`` callback registered a JSON codec.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, ParamSpec, TypeAlias, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from mailman.services.errors import (
    ConflictError,
    DatabaseError,
    DatabaseUnavailableError,
    InvalidDataError,
    MailmanError,
    NotFoundError,
)

__all__ = [
    "Connection",
    "Executor",
    "create_pool",
    "decode_json",
    "encode_json",
    "transaction",
    "translate_error",
    "translate_errors",
]

Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
"""One Postgres session: needed where statements must share a transaction or a session."""

Executor: TypeAlias = "Connection | asyncpg.Pool[asyncpg.Record]"
"""Anything a single statement can run on; a pool lends one of its connections per statement."""

_P = ParamSpec("_P")
_T = TypeVar("_T")

# A foreign key names the table it points into, not the missing value; this maps each constraint of
# migrations/0001_initial.sql to the entity a caller would have passed an unknown id of.
_ENTITY_BY_FOREIGN_KEY = {
    "newsletters_user_id_fkey": "user",
    "subscriptions_newsletter_id_fkey": "newsletter",
    "letters_newsletter_id_fkey": "newsletter",
    "deliveries_letter_id_fkey": "letter",
    "deliveries_subscription_id_fkey": "subscription",
    "newsletter_emails_letter_id_fkey": "letter",
    "newsletter_emails_subscription_id_fkey": "subscription",
}

# Errors after which the session (or the whole server) is gone: the caller should reconnect and retry.
_UNAVAILABLE = (
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08, and "connection was closed mid-operation"
    asyncpg.CannotConnectNowError,  # 57P03: starting up or in recovery
    asyncpg.AdminShutdownError,  # 57P01
    asyncpg.CrashShutdownError,  # 57P02
    asyncpg.TooManyConnectionsError,  # 53300
    OSError,  # refused, reset, unreachable; includes TimeoutError (connect or command timeout)
)


def translate_error(error: Exception, executor: object = None) -> MailmanError:
    """The :class:`MailmanError` that stands for ``error``, raised by asyncpg while using ``executor``.

    ``executor`` lets the driver's own errors be told apart: on a closed connection or pool they mean
    the database went away; otherwise they are a misuse of the driver, reported as a DatabaseError.
    """
    if isinstance(error, MailmanError):
        return error
    sqlstate = getattr(error, "sqlstate", None)
    constraint = getattr(error, "constraint_name", None)
    match error:
        case asyncpg.UniqueViolationError():
            detail = getattr(error, "detail", None) or str(error)
            return ConflictError(detail, constraint=constraint, sqlstate=sqlstate)
        case asyncpg.ForeignKeyViolationError():
            entity = _ENTITY_BY_FOREIGN_KEY.get(constraint or "", constraint or "referenced row")
            return NotFoundError(entity, sqlstate=sqlstate)
        case (
            asyncpg.CheckViolationError()
            | asyncpg.NotNullViolationError()
            | asyncpg.DataError()  # SQLSTATE class 22: a value the column's type cannot hold
        ):
            return InvalidDataError(str(error), constraint=constraint, sqlstate=sqlstate)
        case asyncpg.InterfaceError() if isinstance(error, ValueError):
            # The driver's own DataError: an argument it cannot encode for the parameter's type.
            return InvalidDataError(str(error))
        case _ if isinstance(error, _UNAVAILABLE):
            return DatabaseUnavailableError(f"database unavailable: {error}", sqlstate=sqlstate)
        case asyncpg.InterfaceError() | asyncpg.InternalClientError() if _is_closed(executor):
            # The session died under the driver (server restart, terminated backend): depending on
            # when the news arrived, asyncpg reports "connection is closed" or a protocol-state error.
            return DatabaseUnavailableError(f"database unavailable: {error}")
        case _:
            return DatabaseError(f"{type(error).__name__}: {error}", sqlstate=sqlstate)


def _is_closed(executor: object) -> bool:
    if isinstance(executor, asyncpg.Pool):
        return executor.is_closing()
    if isinstance(executor, asyncpg.Connection | PoolConnectionProxy):
        try:
            return executor.is_closed()
        except asyncpg.InterfaceError:  # a pooled connection used after its release: a misuse
            return False
    return False


def translate_errors(function: Callable[_P, Awaitable[_T]]) -> Callable[_P, Awaitable[_T]]:
    """Decorate a query function so that asyncpg and socket errors leave it as MailmanErrors.

    The first positional argument is taken to be the executor (see :func:`translate_error`).
    ``CancelledError`` is a ``BaseException`` and passes through untouched.
    """

    @functools.wraps(function)
    async def translating(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await function(*args, **kwargs)
        except MailmanError:
            raise
        except (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError) as error:
            raise translate_error(error, args[0] if args else None) from error

    return translating


@asynccontextmanager
async def transaction(executor: Executor) -> AsyncIterator[Connection]:
    """A connection inside a transaction: a new one from a pool, or a savepoint on a connection.

    On a connection that is already in a transaction this nests (asyncpg uses a savepoint), so query
    functions that need atomicity still compose into a caller's larger transaction. Failures of the
    transaction itself (no connection to be had, a lost COMMIT) leave it as MailmanErrors, as a
    query function's do.
    """
    try:
        if isinstance(executor, asyncpg.Pool):
            async with executor.acquire() as connection, connection.transaction():
                yield connection
        else:
            async with executor.transaction():
                yield executor
    except MailmanError:
        raise
    except (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError) as error:
        raise translate_error(error, executor) from error


@translate_errors
async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, command_timeout: float | None = 60.0
) -> asyncpg.Pool[asyncpg.Record]:
    """Open a connection pool on ``dsn``; :class:`DatabaseUnavailableError` if Postgres cannot be reached.

    >>> pool = await create_pool("postgresql://mailman@/mailman?host=/run/postgresql")  # doctest: +SKIP
    """
    if min_size < 0 or max_size < 1 or min_size > max_size:
        raise ValueError(
            f"expected 0 <= min_size <= max_size and max_size >= 1, got {min_size=}, {max_size=}"
        )
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        command_timeout=command_timeout,
        server_settings={"application_name": "mailman"},
        reset=_keep_session,
    )


async def _keep_session(connection: asyncpg.Connection[asyncpg.Record]) -> None:
    """Return a connection to the pool without asyncpg's default reset query.

    The default runs ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` on every
    release: one more round trip, parsed anew each time (a simple query), for every claim and every
    flush of the delivery engine. mailman leaves no session state behind to undo: it takes advisory
    locks only per transaction (``pg_advisory_xact_lock``), opens cursors only inside transactions,
    never LISTENs and never SETs. asyncpg still rolls back a transaction left open before calling
    this (``Connection._reset``), and callbacks added with ``add_listener`` are dropped as usual.
    """


def encode_json(value: Mapping[str, Any]) -> str:
    """``value`` as JSON text for a ``$n::text::jsonb`` parameter."""
    return json.dumps(value, separators=(",", ":"), default=str)


def decode_json(text: str) -> dict[str, Any]:
    """A ``jsonb`` object column selected as ``::text``, parsed."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise InvalidDataError(f"expected a JSON object, got {type(value).__name__}")
    return value

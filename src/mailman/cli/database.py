"""The commands that work on the database itself: ``migrate`` and the connection they share.

``mailman migrate`` and ``mailman subscribers import`` connect straight to the daemon's database, with
the daemon's settings: ``MAILMAN_DATABASE_URL``, or else the embedded Postgres in
``<data_dir>/postgres``, which is started for the command if the daemon is not running it (and
stopped again afterwards; if the daemon runs it, the command shares the server and leaves it running).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from mailman.cli.invocation import Invocation
from mailman.cli.output import CliError, ExitCode
from mailman.config import Settings
from mailman.embedded.postgres import EmbeddedPostgres
from mailman.services.store.migrations import load_migrations, migrate

__all__ = ["Database", "connect_database", "run_migrate"]

CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Database:
    """A connection to the daemon's database, and which database it is, for people."""

    connection: asyncpg.Connection[asyncpg.Record]
    description: str


@asynccontextmanager
async def connect_database(settings: Settings) -> AsyncIterator[Database]:
    """A connection to the database the daemon with ``settings`` uses; closed (and an embedded server
    this opened, stopped) on exit. Raises :class:`CliError` if it cannot connect."""
    if settings.database_url is not None:
        async with _connection(settings.database_url) as connection:
            yield Database(connection, _describe_url(settings.database_url))
        return
    postgres = EmbeddedPostgres(settings.data_dir)
    async with postgres, _connection(postgres.uri) as connection:
        yield Database(connection, f"the embedded Postgres in {postgres.pgdata}")


@asynccontextmanager
async def _connection(url: str) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    try:
        connection: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise CliError(
            f"cannot connect to {_describe_url(url)}: {exc}; check MAILMAN_DATABASE_URL "
            "(or leave it unset for the embedded Postgres)"
        ) from None
    try:
        yield connection
    finally:
        await connection.close()


def _describe_url(url: str) -> str:
    """The database named by ``url``, without its credentials."""
    parts = urlsplit(url)
    host = parts.hostname or "the local socket"
    port = f":{parts.port}" if parts.port else ""
    return f"the database {parts.path.lstrip('/') or '(default)'} on {host}{port}"


async def run_migrate(invocation: Invocation) -> ExitCode:
    """``mailman migrate``: apply the pending migrations, say which."""
    settings = invocation.settings()
    async with connect_database(settings) as database:
        applied = await migrate(database.connection)
    known = load_migrations()
    document: dict[str, Any] = {
        "database": database.description,
        "applied": [{"version": m.version, "name": m.name} for m in applied],
        "latest": max((m.version for m in known), default=0),
    }
    if applied:
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied)
        text = f"applied {len(applied)} migration(s) to {database.description}: {names}"
    else:
        text = f"{database.description} is up to date ({len(known)} migration(s) applied)"
    invocation.output.result(document, text)
    return ExitCode.OK

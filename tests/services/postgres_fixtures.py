"""A real Postgres for the tests (services, CLI, daemon): one server per session, a fresh database per test.

Registered for the whole suite with ``pytest_plugins`` in the root ``tests/conftest.py``.

- The server: ``MAILMAN_TEST_DATABASE_URL`` if set (a role that may CREATE DATABASE; any database on
  the server as the maintenance one), else an embedded one started once per session with
  ``pgserver`` in a temporary directory, stopped and removed at the end.
- The schema: migrated once per session into a template database; each test gets its own copy
  (``CREATE DATABASE ... TEMPLATE``, tens of milliseconds), dropped after the test. Tests therefore
  never see each other's rows and need no cleanup.
- Fixtures: ``database_url`` (the test's database), ``pool`` (an asyncpg pool on it),
  ``empty_database_url`` (an unmigrated database, for the migration tests).

The session-level steps are synchronous pytest fixtures that run their few async calls on a private
event loop in a worker thread, so that no asyncpg object ever crosses from one loop to another and
the per-test loops that pytest-asyncio creates stay untouched.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import shutil
import tempfile
import warnings
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from mailman.services.store.database import create_pool
from mailman.services.store.migrations import migrate

_T = TypeVar("_T")


@dataclass
class PostgresServer:
    """The session's server: where to connect for maintenance, and the migrated template's name."""

    url: str
    template: str
    prefix: str
    _numbers: Iterator[int] = field(default_factory=itertools.count)

    def new_database_name(self) -> str:
        return f"{self.prefix}_{next(self._numbers)}"

    def url_of(self, database: str) -> str:
        parts = urlsplit(self.url)
        return urlunsplit(parts._replace(path=f"/{database}"))


def quote_identifier(name: str) -> str:
    """``name`` as a Postgres identifier: DDL takes no ``$n`` parameters for database names."""
    return '"' + name.replace('"', '""') + '"'


def _run_async(main: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="postgres-setup") as executor:
        return executor.submit(asyncio.run, main()).result()


def _start_embedded_server(pgdata: str) -> Any:
    with warnings.catch_warnings():
        # platformdirs warns once when XDG_RUNTIME_DIR is unset (as in containers); harmless here.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pgserver  # noqa: PLC0415 - only needed when no external server is configured

        return pgserver.get_server(pgdata, cleanup_mode="stop")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    url = os.environ.get("MAILMAN_TEST_DATABASE_URL")
    server = None
    pgdata = None
    if not url:
        pgdata = tempfile.mkdtemp(prefix="mailman-test-pg-")
        server = _start_embedded_server(pgdata)
        url = server.get_uri()
    # A per-session prefix, so that runs sharing one external server never collide.
    prefix = f"mailman_test_{secrets.token_hex(4)}"
    cluster = PostgresServer(url=url, template=f"{prefix}_template", prefix=prefix)

    async def create_template() -> None:
        admin = await asyncpg.connect(cluster.url)
        try:
            if server is not None:
                # A throwaway server: durability buys nothing, and without fsync a test database
                # is created and dropped in ~15 ms instead of ~150 ms. Never done to an external one.
                for setting in ("fsync", "synchronous_commit", "full_page_writes"):
                    await admin.execute(f"ALTER SYSTEM SET {setting} = off")
                await admin.execute("SELECT pg_reload_conf()")
            await admin.execute(f"CREATE DATABASE {quote_identifier(cluster.template)}")
        finally:
            await admin.close()
        connection = await asyncpg.connect(cluster.url_of(cluster.template))
        try:
            await migrate(connection)
        finally:
            await connection.close()

    async def drop_template() -> None:
        admin = await asyncpg.connect(cluster.url)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {quote_identifier(cluster.template)} WITH (FORCE)")
        finally:
            await admin.close()

    try:
        _run_async(create_template)
        yield cluster
        _run_async(drop_template)
    finally:
        if server is not None:
            server.cleanup()
        if pgdata is not None:
            shutil.rmtree(pgdata, ignore_errors=True)


async def _create_database(postgres: PostgresServer, template: str) -> AsyncIterator[str]:
    name = postgres.new_database_name()
    admin = await asyncpg.connect(postgres.url)
    try:
        await admin.execute(f"CREATE DATABASE {quote_identifier(name)} TEMPLATE {quote_identifier(template)}")
        yield postgres.url_of(name)
        await admin.execute(f"DROP DATABASE {quote_identifier(name)} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture
async def database_url(postgres: PostgresServer) -> AsyncIterator[str]:
    """A fresh, migrated database for this test only."""
    async for url in _create_database(postgres, postgres.template):
        yield url


@pytest.fixture
async def empty_database_url(postgres: PostgresServer) -> AsyncIterator[str]:
    """A fresh database without mailman's schema."""
    async for url in _create_database(postgres, "template0"):
        yield url


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool[asyncpg.Record]]:
    """A small connection pool on the test's database."""
    pool = await create_pool(database_url, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()

"""Repo: the process that owns the Postgres connection pool.

In Elixir an Ecto ``Repo`` is a supervised process owning a pool of connections that any process
may borrow from. Here ``Repo`` is a GenServer that opens an asyncpg pool in ``init`` (retrying with
back-off while Postgres comes up), hands the pool to whoever asks (:meth:`Repo.pool`), and closes it
in ``terminate``. Queries do not go through the Repo's mailbox: callers use the pool directly, so
the Repo is never a bottleneck, and a Repo restart gives everyone started after it a fresh pool
(which is why the application tree is ``rest_for_one``).

Example::

    repo = await Repo.start_link(RepoConfig(dsn="postgresql://mailman@/mailman?host=/run/pg"))
    pool = await Repo.pool(repo)
    letter = await letters.get_letter(pool, 42)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from mailman.services.errors import DatabaseUnavailableError
from mailman.services.store.database import create_pool
from mailman.supervisor import NORMAL, Call, ExitReason, From, GenServer, Init, Reply, ServerRef, trap_exit

__all__ = ["Repo", "RepoConfig"]

_log = structlog.get_logger("mailman.repo")


@dataclass(frozen=True, slots=True, kw_only=True)
class RepoConfig:
    """Where Postgres is and how patiently to wait for it at start."""

    dsn: str
    min_size: int = 2
    max_size: int = 10
    connect_attempts: int = 5
    connect_backoff: float = 0.5


@dataclass(slots=True)
class _State:
    pool: asyncpg.Pool[asyncpg.Record]


class _GetPool(Call["asyncpg.Pool[asyncpg.Record]"]):
    __slots__ = ()


class Repo(GenServer[_State]):
    """Owns the asyncpg pool; lends it out; closes it on the way down."""

    child_shutdown = 10.0

    @staticmethod
    async def pool(server: ServerRef) -> asyncpg.Pool[asyncpg.Record]:
        """The pool to run queries on."""
        return await GenServer.call(server, _GetPool())

    async def init(self, arg: RepoConfig) -> Init[_State]:
        trap_exit(True)  # so that terminate closes the pool when the supervisor stops us
        delay = arg.connect_backoff
        for attempt in range(1, arg.connect_attempts + 1):
            try:
                pool = await create_pool(arg.dsn, min_size=arg.min_size, max_size=arg.max_size)
            except DatabaseUnavailableError as error:
                if attempt == arg.connect_attempts:
                    raise DatabaseUnavailableError(
                        f"cannot reach Postgres after {attempt} attempts: {error}"
                    ) from error
                _log.warning("postgres unavailable, retrying", attempt=attempt, delay=delay, error=str(error))
                await asyncio.sleep(delay)
                delay *= 2
            else:
                return Init(_State(pool))
        raise AssertionError("unreachable")  # pragma: no cover

    async def handle_call(self, request: Any, from_: From, state: _State) -> Reply[_State]:
        if isinstance(request, _GetPool):
            return Reply(state.pool, state)
        raise ValueError(f"unexpected request {request!r}")

    async def terminate(self, reason: ExitReason, state: _State) -> None:
        await state.pool.close()
        if reason != NORMAL:
            _log.info("repo stopped", reason=str(reason))

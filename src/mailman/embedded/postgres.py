"""An embedded Postgres: a private server in ``<data_dir>/postgres``, for running without a database URL.

:class:`EmbeddedPostgres` starts the server with `pgserver <https://pypi.org/project/pgserver/>`_ (which
ships the Postgres binaries), creates the ``mailman`` database if it is missing and hands out its URI,
which asyncpg accepts as it is. The server listens on a Unix socket only, so the URI has no host name::

    postgresql://postgres:@/mailman?host=/path/to/data_dir/postgres

Example::

    async with EmbeddedPostgres(Path(".mailman")) as postgres:
        connection = await asyncpg.connect(postgres.uri)

:class:`EmbeddedPostgresServer` is the same under supervision: it starts the server in ``init``, traps
exits and stops it in ``terminate``; ``await EmbeddedPostgresServer.uri(server)`` answers the URI.

Concepts:

- *Restarts keep the data.* The data directory is initialised once; later starts reuse it, and a start
  that finds the server already running (left behind by a killed daemon) attaches to it.
- *Shared, then stopped by the last user.* pgserver counts the processes using a data directory and
  stops the server when the last one lets go. A process that was killed never lets go, so before
  starting and stopping, the handles of processes that no longer exist are forgotten.
- *Blocking work in a thread.* pgserver is synchronous (initdb, pg_ctl): about a second for a new
  directory, a tenth of that to restart. It runs in a worker thread so the event loop keeps going.

When run as root, pgserver runs Postgres as the system user ``pgserver`` (creating it if needed), gives
it the data directory and makes the directories above it traversable by others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, assert_never

import asyncpg
import structlog

from mailman.embedded.errors import EmbeddedPostgresError
from mailman.supervisor import ExitReason, From, GenServer, Init, Reply, ServerRef, trap_exit

with warnings.catch_warnings():
    # platformdirs warns once when XDG_RUNTIME_DIR is unset (as in containers): pgserver then keeps its
    # lock file under /tmp, which is what we want anyway.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    from pgserver.postgres_server import PostgresServer, get_server

__all__ = ["DATABASE", "EmbeddedPostgres", "EmbeddedPostgresServer"]

DATABASE = "mailman"
"""The database the daemon uses, created on first start."""

_logger = structlog.get_logger("mailman.embedded.postgres")
_LOG_LINES = 20  # of the server's log, quoted when it fails to start


class EmbeddedPostgres:
    """A Postgres server of its own in ``<data_dir>/postgres``, serving the database ``mailman``."""

    def __init__(self, data_dir: Path, *, database: str = DATABASE) -> None:
        self._pgdata = (Path(data_dir) / "postgres").expanduser().absolute()
        self._database = database
        self._server: PostgresServer | None = None
        self._uri: str | None = None

    @property
    def pgdata(self) -> Path:
        """The server's data directory, ``<data_dir>/postgres``."""
        return self._pgdata

    @property
    def running(self) -> bool:
        """True between a successful :meth:`start` and :meth:`stop`."""
        return self._uri is not None

    @property
    def uri(self) -> str:
        """The database's connection URI; raises :class:`EmbeddedPostgresError` before :meth:`start`."""
        if self._uri is None:
            raise EmbeddedPostgresError(f"the embedded Postgres in {self._pgdata} is not running; start() it")
        return self._uri

    async def start(self) -> str:
        """Start the server (or attach to the one running on this directory), create the database if
        missing and return its URI. Starting a running instance returns the same URI.

        Raises :class:`EmbeddedPostgresError` saying why the server did not start.
        """
        if self._uri is not None:
            return self._uri
        self._server = await _in_thread_or_stop(self._pgdata)
        try:
            await _ensure_database(self._server.get_uri(), self._database)
        except BaseException:  # including cancellation: re-raised once the server is stopped again
            await self.stop()
            raise
        self._uri = self._server.get_uri(self._database)
        return self._uri

    async def stop(self) -> None:
        """Let go of the server: it stops unless another process still uses it. Idempotent."""
        server, self._server, self._uri = self._server, None, None
        if server is not None:
            await asyncio.to_thread(_stop_blocking, server, self._pgdata)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<EmbeddedPostgres {self._pgdata} {state}>"


# ------------------------------------------------------------------------------------------- server


@dataclass(frozen=True, slots=True)
class _GetUri:
    pass


class EmbeddedPostgresServer(GenServer[EmbeddedPostgres]):
    """The embedded Postgres as a supervised process: started in ``init``, stopped in ``terminate``.

    ``child_spec(data_dir)`` starts it under a supervisor. The server is started in ``init`` rather than
    in a ``handle_continue`` because the children after it need the URI as soon as they start.
    """

    child_shutdown = 30.0  # pg_ctl stop waits for the server's own shutdown checkpoint

    # ---------------------------------------------------------------- client API

    @classmethod
    async def uri(cls, server: ServerRef) -> str:
        """The URI of the ``mailman`` database, for asyncpg."""
        uri: str = await GenServer.call(server, _GetUri())
        return uri

    # ---------------------------------------------------------------- callbacks

    async def init(self, arg: Path | str) -> Init[EmbeddedPostgres]:
        # Trap exits so that a supervisor's shutdown runs terminate, which stops Postgres.
        trap_exit()
        postgres = EmbeddedPostgres(Path(arg))
        await postgres.start()
        return Init(postgres)

    async def handle_call(
        self, request: _GetUri, from_: From, state: EmbeddedPostgres
    ) -> Reply[EmbeddedPostgres]:
        match request:
            case _GetUri():
                return Reply(state.uri, state)
            case _:
                assert_never(request)

    async def terminate(self, reason: ExitReason, state: EmbeddedPostgres) -> None:
        await state.stop()


# ------------------------------------------------------------------------------------------- helpers


async def _in_thread_or_stop(pgdata: Path) -> PostgresServer:
    """Start the server in a worker thread; if cancelled meanwhile, stop it once it is up.

    A thread cannot be interrupted, so a cancelled start would otherwise leave a Postgres running that
    nobody owns.
    """
    starting = asyncio.ensure_future(asyncio.to_thread(_start_blocking, pgdata))
    try:
        return await asyncio.shield(starting)
    except asyncio.CancelledError:
        starting.add_done_callback(lambda done: _stop_abandoned(done, pgdata))
        raise


def _stop_abandoned(done: asyncio.Future[PostgresServer], pgdata: Path) -> None:
    if done.cancelled() or done.exception() is not None:
        return
    # Called on the event loop: the blocking stop goes to a thread of its own. Not a daemon thread, so
    # that the interpreter waits for it at exit; on failure, pgserver's own exit hook tries again.
    threading.Thread(target=_stop_logging_errors, args=(done.result(), pgdata), name="postgres-stop").start()


def _stop_logging_errors(server: PostgresServer, pgdata: Path) -> None:
    try:
        _stop_blocking(server, pgdata)
    except EmbeddedPostgresError as exc:  # nobody is waiting for this thread: the log is the only reader
        _logger.error("embedded_postgres.stop_failed", pgdata=str(pgdata), error=str(exc))


def _start_blocking(pgdata: Path) -> PostgresServer:
    try:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EmbeddedPostgresError(
            f"cannot start the embedded Postgres: cannot create its directory {pgdata.parent}: "
            f"{exc.strerror or exc}; set MAILMAN_DATA_DIR to a writable directory"
        ) from exc
    try:
        _forget_dead_handles(pgdata)
        return get_server(pgdata, cleanup_mode="stop")
    except subprocess.CalledProcessError as exc:
        raise EmbeddedPostgresError(
            f"cannot start the embedded Postgres in {pgdata}: {exc}{_log_tail(pgdata)}"
        ) from exc
    except Exception as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        raise EmbeddedPostgresError(f"cannot start the embedded Postgres in {pgdata}: {detail}") from exc


def _stop_blocking(server: PostgresServer, pgdata: Path) -> None:
    try:
        _forget_dead_handles(pgdata)
        server.cleanup()
    except Exception as exc:
        raise EmbeddedPostgresError(f"cannot stop the embedded Postgres in {pgdata}: {exc}") from exc


def _forget_dead_handles(pgdata: Path) -> None:
    """Drop the pids of exited processes from pgserver's list of the processes using ``pgdata``.

    pgserver stops the server only when the last process in that list lets go; a killed process
    never does, and would keep the server running for ever.
    """
    handles = pgdata / ".handle_pids.json"
    lock: Any = getattr(PostgresServer, "_lock", None) or contextlib.nullcontext()
    with lock:
        try:
            pids = json.loads(handles.read_text())
        except (OSError, ValueError):
            return
        if not isinstance(pids, list):
            return
        alive = [pid for pid in pids if isinstance(pid, int) and _is_running(pid)]
        if alive != pids:
            handles.write_text(json.dumps(alive))


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def _log_tail(pgdata: Path) -> str:
    try:
        lines = (pgdata / "log").read_text(errors="replace").splitlines()[-_LOG_LINES:]
    except OSError:
        return ""
    if not lines:
        return ""
    return f"; the end of its log ({pgdata / 'log'}):\n" + "\n".join(lines)


async def _ensure_database(admin_uri: str, database: str) -> None:
    try:
        connection = await asyncpg.connect(admin_uri)
    except (OSError, asyncpg.PostgresError) as exc:
        raise EmbeddedPostgresError(f"the embedded Postgres started but refuses connections: {exc}") from exc
    try:
        if await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database) is None:
            # DDL takes no $n parameters: the name is quoted as an identifier instead.
            quoted = '"' + database.replace('"', '""') + '"'
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):  # another process was quicker
                await connection.execute(f"CREATE DATABASE {quoted}")
    except asyncpg.PostgresError as exc:
        raise EmbeddedPostgresError(f"cannot create the database {database!r}: {exc}") from exc
    finally:
        await connection.close()

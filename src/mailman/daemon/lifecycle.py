"""The daemon's lifecycle (what ``mailman serve`` runs): start it, run it until SIGTERM or SIGINT, stop it.

In order:

1. logging (readable lines on a terminal, JSON with ``MAILMAN_LOG_FORMAT=json``);
2. the embedded defaults, for what the configuration leaves out: with no ``MAILMAN_DATABASE_URL``
   an embedded Postgres in ``<data dir>/postgres``; with no ``MAILMAN_SMTP_URL`` a built-in SMTP
   sink writing every message into the Maildir ``<data dir>/maildir``. Startup says which;
3. migrations: applied (or, with ``--no-migrate``, the daemon refuses to run on an unmigrated
   database and says how to migrate);
4. the supervision tree (:class:`~mailman.services.delivery.application.Application` plus the Scheduler,
   which resumes letters left sending and sends scheduled ones, and the RpcServer);
5. on SIGTERM / SIGINT: the tree stops in reverse start order, each child within its shutdown
   time; every letter's service flushes its deliveries map; then the embedded services stop.
   Exit code 0. If the tree itself dies (its restart intensity ran out), exit code 1.

Before all of it, a daemon already answering on the socket makes the start refuse
(:class:`DaemonAlreadyRunningError`) before it touches the database. A SIGTERM or SIGINT during the
start stops the daemon gracefully as soon as the start is done; a second one ends it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import structlog

from mailman.config import Settings
from mailman.daemon.handlers import MailmanHandlers, map_error
from mailman.embedded.postgres import EmbeddedPostgres
from mailman.embedded.smtp_sink import MaildirSink
from mailman.log_setup import configure_logging
from mailman.rpc import RpcServer
from mailman.services.delivery.application import Application, ApplicationConfig
from mailman.services.delivery.context import DeliveryContext, DeliverySettings, default_node_name
from mailman.services.delivery.retry_policy import RetryPolicy
from mailman.services.delivery.scheduler import Scheduler, SchedulerArgs
from mailman.services.errors import MailmanError
from mailman.services.smtp.mailer import MailerConfig, pool_size_for
from mailman.services.smtp.url import SmtpUrl
from mailman.services.store.migrations import migrate, pending_migrations
from mailman.supervisor import Pid, Supervisor, await_exit, is_alive

__all__ = ["Daemon", "DaemonAlreadyRunningError", "NotMigratedError", "RunningDaemon", "serve"]

_log = structlog.get_logger("mailman.daemon")

APPLICATION = "mailman.application"

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_PROBE_TIMEOUT = 2.0
"""Seconds to wait for another daemon to accept a connection on the socket."""


class NotMigratedError(MailmanError):
    """The database lacks migrations and the daemon was told not to apply them."""


class DaemonAlreadyRunningError(MailmanError):
    """Another daemon answers on the socket this one was told to use."""

    def __init__(self, socket: Path) -> None:
        super().__init__(
            f"another mailman is already running on {socket}; stop it first, or give this one "
            "another MAILMAN_SOCKET"
        )
        self.socket = socket


@dataclass(frozen=True, slots=True)
class RunningDaemon:
    """What a started daemon tells whoever started it (the demo, tests)."""

    tree: Pid
    context: DeliveryContext
    socket: Path
    database_url: str
    smtp_url: str
    maildir: Path | None


class Daemon:
    """The daemon's lifecycle, usable in-process: ``start()``, then ``stop()``."""

    def __init__(self, settings: Settings, *, apply_migrations: bool = True) -> None:
        self.settings = settings
        self.apply_migrations = apply_migrations
        self._postgres: EmbeddedPostgres | None = None
        self._sink: MaildirSink | None = None
        self.running: RunningDaemon | None = None

    async def start(self) -> RunningDaemon:
        settings = self.settings
        data_dir = settings.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            return await self._start(data_dir)
        except BaseException:
            await self._stop_embedded()
            raise

    async def _start(self, data_dir: Path) -> RunningDaemon:
        settings = self.settings
        await _refuse_if_running(settings.socket)
        if settings.database_url is None:
            self._postgres = EmbeddedPostgres(data_dir)
            database_url = await self._postgres.start()
            _log.info("using the embedded Postgres", data=str(self._postgres.pgdata))
        else:
            database_url = settings.database_url
        maildir: Path | None = None
        smtp: str | SmtpUrl
        if settings.smtp_url is None:
            self._sink = MaildirSink(data_dir)
            await self._sink.start()
            smtp = self._sink.url
            maildir = self._sink.maildir_path
            _log.info("using the built-in SMTP sink", smtp=smtp, maildir=str(maildir))
        else:
            smtp = settings.smtp_url
        await self._migrate(database_url)

        context = DeliveryContext(
            settings=DeliverySettings(
                concurrency=settings.concurrency,
                retry=RetryPolicy(max_attempts=settings.max_attempts),
                message_domain=settings.message_domain,
                uncertain_policy=settings.uncertain_policy,
                max_letter_restarts=settings.max_letter_restarts,
                node_name=settings.node_name or default_node_name(),
                lease_ttl=settings.lease_ttl,
            )
        )
        handlers = MailmanHandlers(context=context, message_domain=settings.message_domain)
        settings.socket.parent.mkdir(parents=True, exist_ok=True)
        config = ApplicationConfig(
            database_url=database_url,
            mailer=MailerConfig(
                url=smtp, pool_size=pool_size_for(settings.concurrency), rate=settings.rate_limit
            ),
            context=context,
            extra_children=[
                Scheduler.child_spec(
                    SchedulerArgs(context=context), id="scheduler", name="mailman.scheduler"
                ),
                RpcServer.child_spec(
                    socket_path=settings.socket,
                    handlers=handlers,
                    allowed_uids=settings.allowed_uids,
                    error_mapper=map_error,
                    id="rpc_server",
                    name="mailman.rpc",
                ),
            ],
        )
        tree = await Application.start_link(config, name=APPLICATION)
        self.running = RunningDaemon(
            tree=tree,
            context=context,
            socket=settings.socket,
            database_url=database_url,
            smtp_url=str(smtp),
            maildir=maildir,
        )
        _log.info(
            "mailman is running",
            socket=str(settings.socket),
            pid=os.getpid(),
            node=context.settings.node_name,
        )
        return self.running

    async def _migrate(self, database_url: str) -> None:
        connection = await asyncpg.connect(database_url)
        try:
            if self.apply_migrations:
                applied = await migrate(connection)
                if applied:
                    _log.info("migrations applied", migrations=[m.name for m in applied])
            else:
                pending = await pending_migrations(connection)
                if pending:
                    names = ", ".join(m.name for m in pending)
                    raise NotMigratedError(
                        f"the database is not migrated ({len(pending)} pending: {names}); "
                        "run `mailman migrate`, or start without --no-migrate"
                    )
        finally:
            await connection.close()

    async def stop(self) -> None:
        """Stop the tree (reverse start order, each child within its shutdown), then the embedded
        services."""
        try:
            if self.running is not None and is_alive(self.running.tree):
                await Supervisor.stop(self.running.tree)
        finally:
            await self._stop_embedded()

    async def _stop_embedded(self) -> None:
        if self._sink is not None:
            await self._sink.stop()
            self._sink = None
        if self._postgres is not None:
            await self._postgres.stop()
            self._postgres = None


async def _refuse_if_running(socket: Path) -> None:
    """Raise :class:`DaemonAlreadyRunningError` if a daemon accepts connections on ``socket``.

    The RpcServer makes the same check when it starts, but it starts last: by then the Scheduler
    has begun resuming the letters left ``sending``, which the other daemon is sending. Asking first
    keeps a second daemon from touching anything. (Two daemons starting at the same instant can both
    pass; the RpcServer's bind then stops one of them.)
    """
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT):
            _reader, writer = await asyncio.open_unix_connection(socket)
    except (OSError, TimeoutError):
        return  # nobody accepts there (or a leftover file): the RpcServer claims or reports the path
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    raise DaemonAlreadyRunningError(socket)


async def serve(
    settings: Settings,
    *,
    apply_migrations: bool = True,
    on_ready: Callable[[RunningDaemon], Awaitable[None]] | None = None,
) -> int:
    """Run the daemon until SIGTERM/SIGINT (exit code 0) or until its tree dies (exit code 1)."""
    configure_logging(settings.log_format, settings.log_level)
    daemon = Daemon(settings, apply_migrations=apply_migrations)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def stop_after_start() -> None:
        stop.set()
        # A second signal before the start is done ends the process at once, as without a handler.
        for signum in _STOP_SIGNALS:
            loop.remove_signal_handler(signum)

    # Installed before the start: the tree may be sending before the start returns (the Scheduler
    # resumes letters as it starts), so a SIGTERM then must not be the default action, an exit with
    # letters unflushed, but a graceful stop as soon as the start is done.
    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, stop_after_start)
    try:
        running = await daemon.start()
        for signum in _STOP_SIGNALS:
            loop.add_signal_handler(signum, stop.set)
        if on_ready is not None:
            await on_ready(running)
        tree_down = asyncio.ensure_future(await_exit(running.tree))
        stopped = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({tree_down, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if tree_down in done:
            _log.error("the supervision tree stopped", reason=str(tree_down.result()))
            await daemon.stop()
            return 1
        tree_down.cancel()
        _log.info("stopping: letters in flight are finished and flushed")
        await daemon.stop()
        _log.info("mailman stopped")
        return 0
    finally:
        for signum in _STOP_SIGNALS:
            loop.remove_signal_handler(signum)

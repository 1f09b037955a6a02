"""A built-in SMTP server that files every message it receives into a Maildir, for demos and tests.

:class:`MaildirSink` listens on ``127.0.0.1`` (a free port unless one is given), accepts every message
and writes one copy per envelope recipient into the Maildir ``<data_dir>/maildir``, so that counting
recipients is counting files. Each copy starts with the headers a local delivery agent adds::

    Return-Path: <newsletter@example.com>
    Delivered-To: ada@example.com
    X-Mailman-Envelope-To: ada@example.com
    X-Mailman-Queue-Id: 4F2A9C0B1D3E5A77

and the reply to ``DATA`` carries the same queue id: ``250 2.0.0 Ok: queued as 4F2A9C0B1D3E5A77``.
A message that cannot be written (a full disk) gets ``451``, a transient failure, so the sender retries.

Example::

    async with MaildirSink(Path(".mailman")) as sink:
        await aiosmtplib.send(message, hostname=sink.host, port=sink.port)
        print(len(sink.maildir))

:class:`MaildirSinkServer` is the same under supervision; ``await MaildirSinkServer.url(server)``
answers ``smtp://127.0.0.1:PORT``.

The server runs on the caller's event loop (aiosmtpd's ``SMTP`` protocol on ``loop.create_server``)
rather than in aiosmtpd's threaded ``Controller``: it needs no thread, and it can bind port 0, which
the controller's start-up self-test cannot connect to.
"""

from __future__ import annotations

import asyncio
import itertools
import mailbox
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, assert_never

import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session

from mailman.embedded.errors import SmtpSinkError
from mailman.supervisor import (
    ChildSpec,
    ExitReason,
    From,
    GenServer,
    Init,
    Name,
    Reply,
    Restart,
    ServerRef,
    trap_exit,
)

__all__ = ["DEFAULT_HOST", "MaildirSink", "MaildirSinkOptions", "MaildirSinkServer"]

DEFAULT_HOST = "127.0.0.1"

_logger = structlog.get_logger("mailman.embedded.smtp_sink")


class MaildirSink:
    """An SMTP server on ``host:port`` that writes one file per recipient into ``<data_dir>/maildir``."""

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        server_name: str = "mailman-sink.localhost",
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"expected a port from 0 (any free port) to 65535, got {port!r}")
        self._maildir_path = Path(data_dir).expanduser() / "maildir"
        self._host = host
        self._port = port
        # Given to every connection: without it aiosmtpd asks DNS for the machine's name each time.
        self._server_name = server_name
        self._maildir: mailbox.Maildir | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[_SinkSMTP] = set()

    @property
    def host(self) -> str:
        """The address it listens on."""
        return self._host

    @property
    def port(self) -> int:
        """The port it listens on: once started, the actual one even if 0 was asked for."""
        return self._port

    @property
    def url(self) -> str:
        """``smtp://host:port``, the form ``MAILMAN_SMTP_URL`` takes."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"smtp://{host}:{self._port}"

    @property
    def maildir_path(self) -> Path:
        """``<data_dir>/maildir``."""
        return self._maildir_path

    @property
    def maildir(self) -> mailbox.Maildir:
        """The Maildir messages are written to (``len(sink.maildir)`` counts them)."""
        if self._maildir is None:
            self._maildir = _open_maildir(self._maildir_path)
        return self._maildir

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._server is not None

    async def start(self) -> None:
        """Create the Maildir if missing and start listening. Starting a running sink does nothing.

        Raises :class:`SmtpSinkError` if the Maildir cannot be created or the port cannot be bound.
        """
        if self._server is not None:
            return
        handler = _MaildirHandler(self.maildir, self._maildir_path)
        loop = asyncio.get_running_loop()

        def new_connection() -> _SinkSMTP:
            return _SinkSMTP(
                handler,
                connections=self._connections,
                hostname=self._server_name,
                enable_SMTPUTF8=True,
                loop=loop,
            )

        try:
            self._server = await loop.create_server(new_connection, host=self._host, port=self._port)
        except OSError as exc:
            raise SmtpSinkError(
                f"cannot listen on {self._host}:{self._port} for the SMTP sink: {exc.strerror or exc}"
            ) from exc
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and close open connections. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        connections = list(self._connections)
        for connection in connections:
            connection.hang_up()
        await asyncio.gather(*(connection.lost for connection in connections))
        await server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def __repr__(self) -> str:
        state = self.url if self.running else "stopped"
        return f"<MaildirSink {self._maildir_path} {state}>"


def _open_maildir(path: Path) -> mailbox.Maildir:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return mailbox.Maildir(path, create=True)
    except OSError as exc:
        raise SmtpSinkError(f"cannot create the sink's Maildir {path}: {exc.strerror or exc}") from exc


_delivery_counter = itertools.count()


def _deliver(root: Path, data: bytes) -> None:
    """File one message the Maildir way: write it under ``tmp/``, then rename it into ``new/``.

    Unlike ``mailbox.Maildir.add`` this does not fsync each message: the sink is for development
    and demos, where a few thousand messages a second matter more than surviving a power cut.
    """
    name = f"{time.time_ns()}.M{next(_delivery_counter)}P{os.getpid()}.mailman"
    temporary = root / "tmp" / name
    temporary.write_bytes(data)
    os.rename(temporary, root / "new" / name)


class _MaildirHandler:
    """aiosmtpd's handler: what to do with each message once its DATA is in."""

    def __init__(self, maildir: mailbox.Maildir, root: Path) -> None:
        self._maildir = maildir  # created (tmp/, new/, cur/) by opening it
        self._root = root

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        queue_id = secrets.token_hex(8).upper()
        # Maildir files end lines the Unix way, as mail readers expect; SMTP ends them with CRLF.
        content = (envelope.original_content or b"").replace(b"\r\n", b"\n")
        mail_from = envelope.mail_from or ""
        try:
            # Written on the loop: a few kilobytes into a local directory takes less time than a hop
            # to a worker thread would.
            for recipient in envelope.rcpt_tos:
                trace = (
                    f"Return-Path: <{mail_from}>\n"
                    f"Delivered-To: {recipient}\n"
                    f"X-Mailman-Envelope-To: {recipient}\n"
                    f"X-Mailman-Queue-Id: {queue_id}\n"
                )
                _deliver(self._root, trace.encode() + content)
        except OSError as exc:
            _logger.error("smtp_sink.write_failed", queue_id=queue_id, error=str(exc))
            return "451 4.3.0 Error: cannot write the message to the Maildir"
        return f"250 2.0.0 Ok: queued as {queue_id}"


class _SinkSMTP(SMTP):
    """aiosmtpd's SMTP session, keeping count of open connections so that stop() can close them."""

    def __init__(self, handler: _MaildirHandler, *, connections: set[_SinkSMTP], **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._open_connections = connections
        self.lost: asyncio.Future[None] = self.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._open_connections.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        try:
            super().connection_lost(error)
        finally:
            self._open_connections.discard(self)
            if not self.lost.done():
                self.lost.set_result(None)

    def hang_up(self) -> None:
        if self.transport is not None:
            self.transport.close()
        elif not self.lost.done():
            self.lost.set_result(None)


# ------------------------------------------------------------------------------------------- server


@dataclass(frozen=True, slots=True, kw_only=True)
class MaildirSinkOptions:
    """What :class:`MaildirSinkServer` starts: a sink on ``host:port`` writing under ``data_dir``."""

    data_dir: Path
    host: str = DEFAULT_HOST
    port: int = 0


@dataclass(frozen=True, slots=True)
class _GetUrl:
    pass


class MaildirSinkServer(GenServer[MaildirSink]):
    """The Maildir sink as a supervised process: listening from ``init``, stopped in ``terminate``.

    ``child_spec(data_dir)`` (optionally ``port=``, ``host=``) starts it under a supervisor. A restart
    asked for port 0 gets a new port: ask :meth:`url` again after one.
    """

    # ---------------------------------------------------------------- client API

    @classmethod
    def child_spec(
        cls,
        arg: Any = None,
        *,
        id: Any = None,  # noqa: A002 - the child spec field is called id
        name: Name | None = None,
        restart: Restart | None = None,
        shutdown: float | None = None,
        host: str = DEFAULT_HOST,
        port: int = 0,
    ) -> ChildSpec:
        """The spec that starts a sink writing under the data directory ``arg``, on ``host:port``."""
        if arg is None:
            raise TypeError("expected a data directory, as in MaildirSinkServer.child_spec(Path('.mailman'))")
        options = (
            arg
            if isinstance(arg, MaildirSinkOptions)
            else MaildirSinkOptions(data_dir=Path(arg), host=host, port=port)
        )
        return super().child_spec(options, id=id, name=name, restart=restart, shutdown=shutdown)

    @classmethod
    async def url(cls, server: ServerRef) -> str:
        """``smtp://host:port`` of the running sink."""
        url: str = await GenServer.call(server, _GetUrl())
        return url

    # ---------------------------------------------------------------- callbacks

    async def init(self, arg: MaildirSinkOptions | Path | str) -> Init[MaildirSink]:
        # Trap exits so that a supervisor's shutdown runs terminate, which closes the port.
        trap_exit()
        options = arg if isinstance(arg, MaildirSinkOptions) else MaildirSinkOptions(data_dir=Path(arg))
        sink = MaildirSink(options.data_dir, host=options.host, port=options.port)
        await sink.start()
        return Init(sink)

    async def handle_call(self, request: _GetUrl, from_: From, state: MaildirSink) -> Reply[MaildirSink]:
        match request:
            case _GetUrl():
                return Reply(state.url, state)
            case _:
                assert_never(request)

    async def terminate(self, reason: ExitReason, state: MaildirSink) -> None:
        await state.stop()

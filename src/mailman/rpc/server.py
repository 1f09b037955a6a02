"""RpcServer: the daemon's Unix-socket listener, a GenServer that owns the socket and its connections.

The host application and the ``mailman`` CLI reach the daemon through one Unix domain socket,
speaking newline-delimited JSON-RPC 2.0 (:mod:`mailman.rpc.protocol`). The server answers each
request through a :class:`~mailman.rpc.methods.MethodTable` built from the engine's handlers.

Example, under the application's supervisor::

    RpcServer.child_spec(socket_path="/run/mailman/mailman.sock", handlers=engine)

or from a plain script::

    pid = await RpcServer.start_link(RpcServerConfig(socket_path=path, handlers=engine))
    ...
    await GenServer.stop(pid)

Concepts:

- **Who may connect.** The socket file is created mode 0600 (under a ``0o177`` umask, so it is never
  wider, not even for an instant), and every connection's peer uid is read with ``SO_PEERCRED``: only
  the daemon's own uid and the ``allowed_uids`` are served. Anyone else gets one error line,
  ``-32004 permission denied: uid N``, and is disconnected. (Root passes the file mode but not the uid
  check, unless it is allowed.)
- **One daemon per socket.** ``init`` finds a leftover socket file from a daemon that died without
  cleaning up (nobody accepts on it) and replaces it; if something *is* listening, the start fails
  with :class:`AlreadyRunningError`. Anything at the path that is not a socket is left alone.
- **Connections.** Each connection is one asyncio task that reads requests and answers them in
  order; any number of connections are served at once. Connection tasks are not processes and run
  outside the server's process identity, so a handler can neither receive from the server's mailbox
  nor link to it by accident. A handler's exception becomes an error response, never a crash; a
  client that hangs up mid-request is simply forgotten once its handler returns. A line over 1 MiB
  is answered with an error and that connection is closed.
- **Shutdown.** ``terminate`` stops accepting, disconnects idle clients, lets requests in progress
  finish for up to ``drain_timeout`` seconds (then cancels them), and removes the socket file if it
  is still the one this server created. The server traps exits so that this runs at its
  supervisor's shutdown.

Deviation from OTP, and why: a BEAM port is closed when its owner process dies, however it dies;
an asyncio server is not. So the listener gets a linked *port owner* process, which closes it if
the RpcServer ends without running ``terminate`` (``kill``, ``brutal_kill``).

See also: Erlang ``gen_tcp:listen/2`` with an acceptor per connection (Ranch), Elixir ``GenServer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import os
import socket
import stat
import struct
from collections.abc import Collection, Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog

from mailman import supervisor as otp
from mailman.rpc.methods import ErrorMapper, Handlers, MethodTable
from mailman.rpc.protocol import (
    MAX_LINE_BYTES,
    ErrorCode,
    Response,
    RpcError,
    encode_response,
    line_too_long,
)

__all__ = [
    "AlreadyRunningError",
    "PeerCredentials",
    "RpcServer",
    "RpcServerConfig",
    "RpcServerError",
    "RpcServerInfo",
    "parse_peer_credentials",
    "peer_allowed",
]

_logger = structlog.get_logger("mailman.rpc")

_PEERCRED: Final = struct.Struct("3i")
_PROBE_TIMEOUT: Final = 2.0
_LINGER_SECONDS: Final = 2.0
_LINGER_BYTES: Final = 16 * 1024 * 1024


class RpcServerError(Exception):
    """The RPC server cannot listen on its socket path."""


class AlreadyRunningError(RpcServerError):
    """Another process (surely another mailman) is accepting connections on ``path``."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"another mailman is already running on {path}")
        self.path = path


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """Who is on the other end of a Unix socket, as the kernel reports it (``SO_PEERCRED``)."""

    pid: int
    uid: int
    gid: int


def parse_peer_credentials(raw: bytes) -> PeerCredentials:
    """Decode the ``struct ucred`` that ``getsockopt(SOL_SOCKET, SO_PEERCRED)`` returns."""
    pid, uid, gid = _PEERCRED.unpack(raw)
    return PeerCredentials(pid=pid, uid=uid, gid=gid)


def peer_allowed(peer_uid: int, *, own_uid: int, allowed_uids: Collection[int] = ()) -> bool:
    """True if a peer running as ``peer_uid`` may use a daemon running as ``own_uid``."""
    return peer_uid == own_uid or peer_uid in allowed_uids


@dataclass(frozen=True, slots=True, kw_only=True)
class RpcServerConfig:
    """What an :class:`RpcServer` serves, and where.

    ``allowed_uids`` are the users, besides the daemon's own, that may connect. ``error_mapper``
    translates the engine's exceptions into error responses (see :class:`~mailman.rpc.MethodTable`).
    ``drain_timeout`` bounds how long shutdown waits for requests in progress.
    """

    socket_path: Path
    handlers: Handlers
    allowed_uids: frozenset[int] = frozenset()
    error_mapper: ErrorMapper | None = None
    drain_timeout: float = 3.0

    def __post_init__(self) -> None:
        if not isinstance(self.socket_path, str | os.PathLike):
            raise TypeError(f"expected socket_path to be a path, got {self.socket_path!r}")
        object.__setattr__(self, "socket_path", Path(self.socket_path))
        uids = frozenset(self.allowed_uids)
        if any(isinstance(uid, bool) or not isinstance(uid, int) or uid < 0 for uid in uids):
            raise ValueError(f"expected allowed_uids to be user ids (ints >= 0), got {sorted(uids, key=str)}")
        object.__setattr__(self, "allowed_uids", uids)
        if not self.drain_timeout >= 0:
            raise ValueError(f"expected drain_timeout >= 0 seconds, got {self.drain_timeout!r}")


@dataclass(frozen=True, slots=True)
class RpcServerInfo:
    """What :meth:`RpcServer.info` reports: the socket path and the number of open connections."""

    socket_path: Path
    connections: int


@dataclass(frozen=True, slots=True)
class _GetInfo:
    pass


@dataclass(slots=True)
class _Connection:
    writer: asyncio.StreamWriter
    busy: bool = False


@dataclass(slots=True)
class _State:
    listener: _Listener
    port_owner: otp.Pid | None = None


class RpcServer(otp.GenServer[_State]):
    """The daemon's JSON-RPC listener on a Unix socket (see the module's documentation)."""

    child_shutdown = 5.0

    # ---------------------------------------------------------------- client API

    @classmethod
    def child_spec(
        cls,
        arg: Any = None,
        *,
        socket_path: str | os.PathLike[str] | None = None,
        handlers: Handlers | None = None,
        allowed_uids: Iterable[int] = (),
        error_mapper: ErrorMapper | None = None,
        id: Hashable | None = None,  # noqa: A002 - the child spec field is called id
        name: otp.Name | None = None,
        restart: otp.Restart | None = None,
        shutdown: float | None = None,
    ) -> otp.ChildSpec:
        """The spec to run the server under a supervisor: give an :class:`RpcServerConfig`, or its
        fields ``socket_path``, ``handlers`` (and ``allowed_uids``, ``error_mapper``)."""
        if arg is None:
            if socket_path is None or handlers is None:
                raise TypeError(
                    "RpcServer.child_spec needs socket_path= and handlers= (or an RpcServerConfig)"
                )
            arg = RpcServerConfig(
                socket_path=Path(socket_path),
                handlers=handlers,
                allowed_uids=frozenset(allowed_uids),
                error_mapper=error_mapper,
            )
        elif not isinstance(arg, RpcServerConfig):
            raise TypeError(f"expected an RpcServerConfig, got {type(arg).__name__}")
        return super().child_spec(arg, id=id, name=name, restart=restart, shutdown=shutdown)

    @staticmethod
    async def info(server: otp.ServerRef) -> RpcServerInfo:
        """The server's socket path and how many connections it has open."""
        info: RpcServerInfo = await otp.GenServer.call(server, _GetInfo())
        return info

    # ---------------------------------------------------------------- callbacks

    async def init(self, arg: Any) -> otp.Init[_State]:
        if not isinstance(arg, RpcServerConfig):
            raise TypeError(f"expected an RpcServerConfig, got {type(arg).__name__}")
        otp.trap_exit()  # so that terminate runs, and the socket file goes, at the supervisor's shutdown
        table = MethodTable(arg.handlers, error_mapper=arg.error_mapper)
        listener = _Listener(arg, table)
        await listener.open()
        port_owner = otp.spawn_link(_own_port, listener)
        _logger.info("rpc_listening", socket_path=str(arg.socket_path))
        return otp.Init(_State(listener, port_owner))

    async def handle_call(
        self, request: Any, from_: otp.From, state: _State
    ) -> otp.Reply[_State] | otp.NoReply[_State] | otp.Stop[_State]:
        match request:
            case _GetInfo():
                info = RpcServerInfo(state.listener.path, len(state.listener.connections))
                return otp.Reply(info, state)
        return await super().handle_call(request, from_, state)

    async def handle_info(self, message: Any, state: _State) -> otp.NoReply[_State] | otp.Stop[_State]:
        match message:
            case otp.ExitMessage(pid=pid, reason=reason) if pid == state.port_owner:
                # Someone killed the port owner, which closed the listener on its way out.
                state.port_owner = None
                return otp.Stop(reason, state)
        return await super().handle_info(message, state)

    async def terminate(self, reason: otp.ExitReason, state: _State) -> None:
        listener = state.listener
        listener.close()
        await listener.wait_closed()
        if state.port_owner is not None:
            otp.unlink(state.port_owner)
            otp.exit(state.port_owner, otp.KILL)
            await otp.await_exit(state.port_owner)
        _logger.info("rpc_stopped", socket_path=str(listener.path), reason=str(reason))


async def _own_port(listener: _Listener) -> None:
    """The port owner: waits, linked to its RpcServer, to close the listener when the server dies."""
    try:
        await otp.receive(lambda _message: False)
    finally:
        listener.abort()


class _Listener:
    """The listening socket and the live connections: the part of the server that does I/O."""

    def __init__(self, config: RpcServerConfig, table: MethodTable) -> None:
        self.config = config
        self.table = table
        self.connections: dict[asyncio.Task[None], _Connection] = {}
        self.closing = False
        self._server: asyncio.Server | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket file we created
        self._own_uid = os.geteuid()

    @property
    def path(self) -> Path:
        return self.config.socket_path

    async def open(self) -> None:
        """Claim the socket path and start accepting; raises :class:`RpcServerError` if it cannot."""
        await _remove_stale_socket(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            _bind_private(sock, self.path)
            created = os.stat(self.path)
            self._identity = (created.st_dev, created.st_ino)
            self._server = await asyncio.start_unix_server(self._accept, sock=sock, limit=MAX_LINE_BYTES)
        except BaseException:
            sock.close()
            self._remove_socket_file()
            raise

    def close(self) -> None:
        """Stop accepting, disconnect idle clients, remove the socket file; busy ones finish first."""
        if self.closing:
            return
        self.closing = True
        if self._server is not None:
            self._server.close()
        self._remove_socket_file()
        for task, connection in self.connections.items():
            if not connection.busy:
                task.cancel()

    async def wait_closed(self) -> None:
        """Wait for the requests in progress, up to the drain timeout; then cut them off."""
        if self.connections:
            _done, pending = await asyncio.wait(list(self.connections), timeout=self.config.drain_timeout)
            if pending:
                self.abort()
                await asyncio.wait(pending)
        if self._server is not None:
            await self._server.wait_closed()

    def abort(self) -> None:
        """Close everything now, requests in progress included (the server died without terminate)."""
        self.close()
        for task, connection in self.connections.items():
            connection.writer.transport.abort()
            task.cancel()

    def _remove_socket_file(self) -> None:
        # Only the file this server created: after a restart a new server may already own the path.
        if self._identity is None:
            return
        with contextlib.suppress(OSError):
            current = os.lstat(self.path)
            if (current.st_dev, current.st_ino) == self._identity:
                os.unlink(self.path)
        self._identity = None

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback that starts our own task: asyncio's task for a coroutine callback reports
        # its cancellation as an error (Python 3.11), and would run under this process's identity.
        if self.closing:
            writer.transport.abort()
            return
        connection = _Connection(writer)
        task = asyncio.get_running_loop().create_task(
            self._serve(reader, connection), name=f"rpc-connection-{self.path}", context=contextvars.Context()
        )
        self.connections[task] = connection
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self.connections.pop(task, None)

    async def _serve(self, reader: asyncio.StreamReader, connection: _Connection) -> None:
        writer = connection.writer
        try:
            refusal = self._refusal(writer)
            if refusal is not None:
                writer.write(encode_response(Response.failure(None, refusal)))
                await writer.drain()
                return
            await self._answer_requests(reader, writer, connection)
        except (ConnectionError, BrokenPipeError):
            pass  # the client hung up: there is nobody left to answer
        except Exception:
            _logger.exception("rpc_connection_failed", socket_path=str(self.path))
        finally:
            writer.close()
            with contextlib.suppress(OSError):  # the client may be gone already; that is its right
                await writer.wait_closed()

    def _refusal(self, writer: asyncio.StreamWriter) -> RpcError | None:
        sock = writer.get_extra_info("socket")
        try:
            credentials = parse_peer_credentials(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            )
        except (OSError, AttributeError, struct.error):
            _logger.warning("rpc_peer_unknown", socket_path=str(self.path))
            return RpcError(ErrorCode.PERMISSION_DENIED, "permission denied: peer credentials unavailable")
        if peer_allowed(credentials.uid, own_uid=self._own_uid, allowed_uids=self.config.allowed_uids):
            return None
        _logger.warning(
            "rpc_peer_refused", uid=credentials.uid, pid=credentials.pid, socket_path=str(self.path)
        )
        return RpcError(ErrorCode.PERMISSION_DENIED, f"permission denied: uid {credentials.uid}")

    async def _answer_requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: _Connection
    ) -> None:
        while not self.closing:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as eof:
                # The client shut down its side: answer a last request sent without a newline.
                if eof.partial.strip():
                    await self._answer(eof.partial, writer, connection)
                return
            except asyncio.LimitOverrunError:
                # Where the next request starts is unknowable: say why, and hang up.
                writer.write(encode_response(line_too_long()))
                await writer.drain()
                writer.write_eof()
                await _discard_input(reader)
                return
            await self._answer(line, writer, connection)

    async def _answer(self, line: bytes, writer: asyncio.StreamWriter, connection: _Connection) -> None:
        connection.busy = True
        try:
            reply = await self.table.handle_line(line)
            if reply is not None:
                writer.write(reply)
                await writer.drain()
        finally:
            connection.busy = False


async def _discard_input(reader: asyncio.StreamReader) -> None:
    """Read and drop what the client is still sending, for a while, before closing.

    Closing a socket with unread input resets the connection: a client still writing its oversized
    line would fail on that write instead of reading the error it was sent. As HTTP servers' lingering
    close does, give it a bounded chance to finish and hang up itself.
    """
    discarded = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_LINGER_SECONDS):
            while discarded < _LINGER_BYTES:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                discarded += len(chunk)


async def _remove_stale_socket(path: Path) -> None:
    """Remove a socket file nobody listens on; raise if someone does, or if it is not a socket."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise RpcServerError(f"cannot use {path} as the RPC socket: {exc}") from exc
    if not stat.S_ISSOCK(mode):
        raise RpcServerError(f"{path} exists and is not a socket; remove it or choose another socket path")
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT):
            _reader, writer = await asyncio.open_unix_connection(path)
    except ConnectionRefusedError:
        # A socket file that nobody accepts on: its daemon died without removing it.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        _logger.info("rpc_stale_socket_removed", socket_path=str(path))
        return
    except FileNotFoundError:
        return
    except (OSError, TimeoutError) as exc:
        raise RpcServerError(f"cannot tell whether another mailman is running on {path}: {exc!r}") from exc
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    raise AlreadyRunningError(path)


def _bind_private(sock: socket.socket, path: Path) -> None:
    """Bind ``sock`` to ``path`` with the file created mode 0600 from the start.

    The umask is process-wide: for the length of one ``bind`` call, a file another thread creates
    would get 0600 too, which can only be stricter than intended.
    """
    previous = os.umask(0o177)
    try:
        sock.bind(os.fspath(path))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:  # another daemon bound it since we looked
            raise AlreadyRunningError(path) from exc
        raise RpcServerError(f"cannot listen on {path}: {exc.strerror or exc}") from exc
    finally:
        os.umask(previous)
    os.chmod(path, 0o600)

"""A real SMTP server for tests (aiosmtpd, on 127.0.0.1 and a free port) with fault injection.

The sink runs in the test's own event loop (not in a thread as aiosmtpd's ``Controller`` does), so
a test controls it with ordinary ``asyncio.Event`` objects and sees its state without locks::

    async with SmtpSink() as sink:
        sink.reply("RCPT", 451, "4.7.1 Try later", times=2)   # the next two RCPTs get 451
        sink.user_unknown("gone@example.org")                  # 550 5.1.1 for this address
        hold = sink.hold("END")                                # the next end-of-DATA reply waits
        ...
        await hold.reached.wait()                              # a message is in, its reply held
        hold.release()
        await sink.wait_for_messages(3)
        assert sink.connections == 1

Faults, by command: ``"MAIL"``, ``"RCPT"``, ``"DATA"`` (the DATA command, before 354) and ``"END"``
(after the message's final dot, before the verdict).

- ``reply(command, code, text, times=1)``: answer the next ``times`` such commands with ``code``;
  a 421 also closes the connection, as servers do.
- ``fail_recipients(addresses, code)`` / ``fail_fraction(fraction, code)`` / ``user_unknown(...)``:
  answer RCPT for given addresses (or a deterministic fraction of all addresses, chosen by a hash
  of the address) with a code, every time, until ``clear_faults()``; with ``times=n``, only the
  first ``n`` RCPTs of each such address (greylisting), then accept it.
- ``drop(command, times=1)``: close the connection instead of answering. At ``"END"`` the message is
  stored first: the relay accepted it, and the client never hears so.
- ``hold(command)``: the next reply to ``command`` waits for ``hold.release()``; ``hold.reached`` is
  set when a command is being held.
- ``stop_listening()`` / ``resume_listening()``: refuse connections entirely (and drop the open
  ones), then listen again on the same port.

Authentication (``credentials=("user", "pass")``) and STARTTLS or implicit TLS (``tls_context``)
are aiosmtpd's own.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

Command = Literal["MAIL", "RCPT", "DATA", "END"]


@dataclass(frozen=True)
class ReceivedMessage:
    """A message the sink accepted."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    connection: int
    """Which connection carried it (1 for the first the sink accepted)."""
    tls: bool
    login: str | None


@dataclass
class _Reply:
    code: int
    text: str
    times: int
    close: bool


@dataclass
class Hold:
    """A held reply: ``reached`` is set when the command arrives; ``release()`` lets the reply go."""

    command: Command
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def release(self) -> None:
        self.released.set()


class _Server(SMTP):
    """aiosmtpd's protocol, with the DATA command and connection bookkeeping hooked for the sink."""

    def __init__(self, sink: SmtpSink, number: int, **kwargs: Any) -> None:
        super().__init__(sink, **kwargs)
        self.sink = sink
        self.number = number

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first:
            self.sink._open.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self.sink._open.discard(self)
        super().connection_lost(error)

    async def smtp_DATA(self, arg: str) -> None:
        status = await self.sink._fault(self, "DATA", None)
        if status is not None:
            await self.push(status)
            return
        await super().smtp_DATA(arg)


class SmtpSink:
    """An SMTP server on 127.0.0.1 that stores what it receives and fails on command."""

    def __init__(
        self,
        *,
        credentials: tuple[str, str] | None = None,
        tls_context: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        require_starttls: bool = False,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.messages: list[ReceivedMessage] = []
        self.connections = 0
        """Connections accepted so far."""
        self.commands: list[tuple[int, str]] = []
        """(connection, command) for RSET, QUIT and AUTH, in order."""
        self._credentials = credentials
        self._tls_context = tls_context
        self._implicit_tls = implicit_tls
        self._require_starttls = require_starttls
        self._server: asyncio.Server | None = None
        self._open: set[_Server] = set()
        self._changed = asyncio.Event()
        self._queued = 0
        self._replies: dict[Command, list[_Reply]] = {}
        self._drops: dict[Command, int] = {}
        self._holds: dict[Command, list[Hold]] = {}
        self._recipient_faults: dict[str, tuple[int, str, int | None]] = {}
        self._fraction: tuple[float, int, str, int | None] | None = None
        self._recipient_hits: dict[str, int] = {}
        """RCPTs refused so far per address, for faults limited with ``times``."""
        self._servers: list[_Server] = []

    # ---------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> SmtpSink:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def url(self, scheme: str = "smtp", user: str | None = None, password: str | None = None) -> str:
        """The URL of this sink, for :func:`mailman.services.smtp.pool.parse_smtp_url`."""
        credentials = "" if user is None else f"{user}:{password}@" if password is not None else f"{user}@"
        return f"{scheme}://{credentials}{self.host}:{self.port}"

    async def start(self) -> None:
        await self._listen()

    async def stop(self) -> None:
        await self.stop_listening()

    async def stop_listening(self, *, drop_connections: bool = True) -> None:
        """Refuse connections from now on; also drop the open ones unless told not to."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        if drop_connections:
            for protocol in list(self._open):
                if protocol.transport is not None:
                    protocol.transport.close()
        # Wait for every connection handler to finish unwinding, so that nothing outlives the test.
        tasks = [server._handler_coroutine for server in self._servers if server._handler_coroutine]
        if drop_connections and tasks:
            await asyncio.wait(tasks)
            for task in tasks:
                if not task.cancelled():
                    task.exception()  # retrieved: a reset connection is not the test's failure

    async def resume_listening(self) -> None:
        """Accept connections again, on the same port."""
        await self._listen()

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        kwargs: dict[str, Any] = {
            "hostname": "sink.test",
            "ident": "mailman test sink",
            "loop": loop,
            "auth_require_tls": self._tls_context is not None,
            "auth_required": self._credentials is not None,
            "authenticator": self._authenticate,
        }
        if self._tls_context is not None and not self._implicit_tls:
            kwargs["tls_context"] = self._tls_context
            kwargs["require_starttls"] = self._require_starttls

        def factory() -> _Server:
            self.connections += 1
            self._changed.set()
            with warnings.catch_warnings():
                # Plain-text AUTH is what the tests without TLS want; aiosmtpd rightly warns about it.
                warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS", UserWarning)
                server = _Server(self, self.connections, **kwargs)
            self._servers.append(server)
            return server

        self._server = await loop.create_server(
            factory,
            host=self.host,
            port=self.port,
            ssl=self._tls_context if self._implicit_tls else None,
            reuse_address=True,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    # ---------------------------------------------------------------- faults

    def reply(self, command: Command, code: int, text: str = "", *, times: int = 1) -> None:
        """Answer the next ``times`` ``command`` with ``code``; a 421 also closes the connection."""
        text = text or {421: "4.3.2 Service shutting down"}.get(code, f"{code // 100}.0.0 Injected fault")
        self._replies.setdefault(command, []).append(_Reply(code, text, times, close=code == 421))

    def drop(self, command: Command, *, times: int = 1) -> None:
        """Close the connection instead of answering the next ``times`` ``command``."""
        self._drops[command] = self._drops.get(command, 0) + times

    def hold(self, command: Command) -> Hold:
        """Hold the next reply to ``command`` until the returned hold is released."""
        hold = Hold(command)
        self._holds.setdefault(command, []).append(hold)
        return hold

    def fail_recipients(
        self, addresses: Iterable[str], code: int = 451, text: str = "", *, times: int | None = None
    ) -> None:
        """Answer RCPT for each of ``addresses`` with ``code``, every time until cleared, or only the
        first ``times`` RCPTs of each address."""
        text = text or f"{code // 100}.0.0 Injected fault"
        for address in addresses:
            self._recipient_faults[address.lower()] = (code, text, times)

    def fail_fraction(
        self, fraction: float, code: int = 451, text: str = "", *, times: int | None = None
    ) -> None:
        """Answer RCPT with ``code`` for about ``fraction`` of all addresses: those whose hash says so;
        with ``times``, only the first ``times`` RCPTs of each of them."""
        self._fraction = (fraction, code, text or f"{code // 100}.0.0 Injected fault", times)

    @staticmethod
    def selected(address: str, fraction: float) -> bool:
        """Whether ``fail_fraction(fraction)`` picks ``address`` (deterministic: a SHA-256 of it)."""
        digest = hashlib.sha256(address.lower().encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < fraction

    def user_unknown(self, *addresses: str) -> None:
        """Answer RCPT for these addresses with ``550 5.1.1 ... User unknown``."""
        for address in addresses:
            self._recipient_faults[address.lower()] = (550, f"5.1.1 <{address}>: User unknown", None)

    def clear_faults(self) -> None:
        self._replies.clear()
        self._drops.clear()
        self._recipient_faults.clear()
        self._fraction = None
        self._recipient_hits.clear()
        for holds in self._holds.values():
            for hold in holds:
                hold.release()
        self._holds.clear()

    async def wait_for_messages(self, count: int, timeout: float = 5.0) -> list[ReceivedMessage]:
        """Wait until the sink has accepted ``count`` messages in all."""
        async with asyncio.timeout(timeout):
            while len(self.messages) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.messages

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def _fault(self, server: _Server, command: Command, address: str | None) -> str | None:
        """Apply the faults planned for ``command``: return a status to send instead, or None."""
        holds = self._holds.get(command)
        if holds:
            hold = holds.pop(0)
            hold.reached.set()
            await hold.released.wait()
        if self._drops.get(command, 0) > 0:
            self._drops[command] -= 1
            await self._drop(server)
        replies = self._replies.get(command)
        if replies:
            planned = replies[0]
            planned.times -= 1
            if planned.times <= 0:
                replies.pop(0)
            if planned.close:
                asyncio.get_running_loop().call_soon(_close, server)
            return f"{planned.code} {planned.text}"
        if command == "RCPT" and address is not None:
            fault = self._recipient_faults.get(address.lower())
            if fault is None and self._fraction is not None and self.selected(address, self._fraction[0]):
                fault = self._fraction[1:]
            if fault is not None:
                code, text, times = fault
                hits = self._recipient_hits.get(address.lower(), 0)
                if times is None or hits < times:
                    self._recipient_hits[address.lower()] = hits + 1
                    return f"{code} {text}"
        return None

    @staticmethod
    async def _drop(server: _Server) -> None:
        _close(server)
        # connection_lost cancels this handler; it never returns.
        await asyncio.get_running_loop().create_future()

    # ---------------------------------------------------------------- aiosmtpd handler hooks

    async def handle_MAIL(
        self, server: _Server, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        status = await self._fault(server, "MAIL", address)
        if status is not None:
            return status
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: _Server, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        status = await self._fault(server, "RCPT", address)
        if status is not None:
            return status
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: _Server, session: Session, envelope: Envelope) -> str:
        if self._drops.get("END", 0) > 0:
            self._store(server, session, envelope)  # accepted, but the client never hears so
        status = await self._fault(server, "END", None)
        if status is not None:
            return status
        number = self._store(server, session, envelope)
        return f"250 2.0.0 Ok: queued as Q{number:04d}"

    async def handle_RSET(self, server: _Server, session: Session, envelope: Envelope) -> str:
        self.commands.append((server.number, "RSET"))
        return "250 OK"

    async def handle_QUIT(self, server: _Server, session: Session, envelope: Envelope) -> str:
        self.commands.append((server.number, "QUIT"))
        return "221 Bye"

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(server, _Server)
        self.commands.append((server.number, "AUTH"))
        ok = (
            isinstance(data, LoginPassword)
            and self._credentials is not None
            and (data.login.decode(), data.password.decode()) == self._credentials
        )
        # handled=False: aiosmtpd answers a failure with "535 5.7.8 Authentication credentials invalid".
        return AuthResult(success=ok, handled=False, auth_data=data)

    def _store(self, server: _Server, session: Session, envelope: Envelope) -> int:
        content = envelope.original_content
        assert isinstance(content, bytes)
        login = session.login_data
        self.messages.append(
            ReceivedMessage(
                mail_from=envelope.mail_from or "",
                rcpt_tos=tuple(envelope.rcpt_tos),
                data=content,
                connection=server.number,
                tls=session.ssl is not None or self._implicit_tls,
                login=login.decode() if isinstance(login, bytes) else login,
            )
        )
        self._changed.set()
        return len(self.messages)


def _close(server: SMTP) -> None:
    if server.transport is not None:
        server.transport.close()

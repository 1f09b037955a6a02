"""The client of a running mailman daemon: one typed coroutine per RPC method, over its Unix socket.

Example::

    from mailman.client import Client, RpcRemoteError

    async with Client("/run/mailman/mailman.sock") as client:
        letter = await client.letter_create(newsletter_id, "Issue 12", "Hello!")
        await client.letter_send(letter["letter_id"])
        print(await client.letter_status(letter["letter_id"]))

Each method returns the result mapping documented on :class:`mailman.rpc.Handlers`. Failures:

- :class:`DaemonNotRunningError`: no daemon listens on the socket path (the file is missing, or is
  a leftover nobody accepts on);
- :class:`RpcRemoteError`: the daemon answered with an error; ``code`` is a
  :class:`mailman.rpc.ErrorCode` value (``NOT_FOUND``, ``INVALID_PARAMS``...), ``data`` its details;
- :class:`RpcTimeoutError`: no answer within ``timeout`` seconds. The request may still complete;
  the connection stays usable, and the late answer is discarded when it arrives;
- :class:`ConnectionLostError`: the daemon closed the connection (it stopped, or refused a request
  line over 1 MiB); :class:`RpcProtocolError`: its answer was not a JSON-RPC response to this call.
  After either, the client is closed: open a new one.

Params are checked by the daemon, which is the single authority on what is valid; the client only
refuses at once what cannot be sent at all (a naive ``send_at``, a request over 1 MiB, NaN).

One client holds one connection, and its calls go one at a time (concurrent callers wait their
turn); open several clients to have several requests in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from mailman.rpc.protocol import JSONRPC_VERSION, MAX_LINE_BYTES

__all__ = [
    "Client",
    "ClientError",
    "ConnectionLostError",
    "DaemonConnectionError",
    "DaemonNotRunningError",
    "RpcProtocolError",
    "RpcRemoteError",
    "RpcTimeoutError",
]

DEFAULT_TIMEOUT: Final = 30.0
DEFAULT_CONNECT_TIMEOUT: Final = 5.0
MAX_RESPONSE_BYTES: Final = 64 * 1024 * 1024
"""The longest response line the client reads (a ``system.tree`` of a busy daemon is large)."""


class ClientError(Exception):
    """Root of the errors the client raises."""


class DaemonConnectionError(ClientError, ConnectionError):
    """The client cannot talk to the daemon at ``path``."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


class DaemonNotRunningError(DaemonConnectionError):
    """No daemon accepts connections on ``path``."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"mailman is not running on {path}; start it with `mailman serve`", path)


class ConnectionLostError(DaemonConnectionError):
    """The daemon closed the connection (before answering, if a call was waiting)."""


class RpcRemoteError(ClientError):
    """The daemon answered with a JSON-RPC error: ``code`` (see ``mailman.rpc.ErrorCode``), ``message``,
    and ``data`` (details, or None)."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message
        self.data = data


class RpcProtocolError(ClientError):
    """The daemon's answer is not a JSON-RPC 2.0 response to the request sent."""


class RpcTimeoutError(ClientError, TimeoutError):
    """The daemon did not answer ``method`` (or accept the connection) within ``timeout`` seconds."""

    def __init__(self, method: str, timeout: float) -> None:
        super().__init__(f"mailman did not answer {method} within {timeout}s")
        self.method = method
        self.timeout = timeout


class Client:
    """A connection to the mailman daemon, with a coroutine per RPC method.

    ``timeout`` bounds each call (seconds; ``None``: wait as long as it takes), ``connect_timeout``
    the connection itself. Use it as an async context manager, or call :meth:`connect` and
    :meth:`close` yourself.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ids = itertools.count(1)
        self._abandoned: set[int] = set()  # ids of calls that gave up waiting: drop their late answers
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        """True between :meth:`connect` and :meth:`close` (or the connection's loss)."""
        return self._writer is not None

    async def connect(self) -> None:
        """Open the connection. Raises :class:`DaemonNotRunningError` if no daemon listens."""
        if self._writer is not None:
            raise RuntimeError("the client is already connected")
        try:
            async with asyncio.timeout(self.connect_timeout):
                self._reader, self._writer = await asyncio.open_unix_connection(
                    self.socket_path, limit=MAX_RESPONSE_BYTES
                )
        except (FileNotFoundError, ConnectionRefusedError):
            raise DaemonNotRunningError(self.socket_path) from None
        except PermissionError:
            raise DaemonConnectionError(
                f"permission denied connecting to {self.socket_path}: the socket belongs to the user "
                "the daemon runs as",
                self.socket_path,
            ) from None
        except TimeoutError:
            raise RpcTimeoutError("connect", self.connect_timeout) from None

    async def close(self) -> None:
        """Close the connection; closing a closed client does nothing."""
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def call(
        self,
        method: str,
        params: Mapping[str, Any] | Sequence[Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        """Call ``method`` with ``params`` and return its result (``timeout`` overrides the client's)."""
        request_id = next(self._ids)
        line = _encode_request(method, params, request_id)
        wait = self.timeout if timeout is None else timeout
        async with self._lock:
            reader, writer = self._reader, self._writer
            if reader is None or writer is None:
                raise RuntimeError(
                    "the client is not connected: use `async with Client(path) as client`, or connect()"
                )
            answered = False
            try:
                async with asyncio.timeout(wait):
                    writer.write(line)
                    await writer.drain()
                    response = await self._read_response(reader, request_id)
                answered = True
            except TimeoutError:
                raise RpcTimeoutError(method, wait or 0.0) from None
            except ClientError:
                answered = True  # the connection cannot be trusted any more
                await self.close()
                raise
            except OSError as exc:
                answered = True
                await self.close()
                raise ConnectionLostError(
                    f"the connection to mailman on {self.socket_path} broke: {exc}", self.socket_path
                ) from exc
            finally:
                if not answered:
                    self._abandoned.add(request_id)
            if response["id"] is None:
                # An error about the connection itself (permission denied...): the daemon hangs up.
                await self.close()
        return _outcome(response)

    # ---------------------------------------------------------------- one method per RPC

    async def letter_send(self, letter_id: int, recipients: Sequence[int] | None = None) -> dict[str, Any]:
        """Start sending a letter, to every active subscriber or only to ``recipients`` (subscription
        ids). Returns ``{"letter_id", "state"}``."""
        return await self._call_for_dict(
            "letter.send", _drop_none(letter_id=letter_id, recipients=recipients)
        )

    async def letter_status(self, letter_id: int) -> dict[str, Any]:
        """Returns ``{"letter_id", "state", "counts": {"pending", "sending", "delivered", "failed",
        "skipped"}}``."""
        return await self._call_for_dict("letter.status", {"letter_id": letter_id})

    async def letter_pause(self, letter_id: int) -> dict[str, Any]:
        """Pause a letter being sent. Returns ``{"letter_id", "state"}``."""
        return await self._call_for_dict("letter.pause", {"letter_id": letter_id})

    async def letter_resume(self, letter_id: int) -> dict[str, Any]:
        """Resume a paused letter. Returns ``{"letter_id", "state"}``."""
        return await self._call_for_dict("letter.resume", {"letter_id": letter_id})

    async def letter_cancel(self, letter_id: int) -> dict[str, Any]:
        """Cancel a letter for good. Returns ``{"letter_id", "state"}``."""
        return await self._call_for_dict("letter.cancel", {"letter_id": letter_id})

    async def letter_retry_failed(self, letter_id: int) -> dict[str, Any]:
        """Send again to the recipients that failed. Returns ``{"letter_id", "state", "retried"}``."""
        return await self._call_for_dict("letter.retry_failed", {"letter_id": letter_id})

    async def letter_create(
        self,
        newsletter_id: int,
        subject: str,
        text_body: str,
        *,
        html_body: str | None = None,
        send_at: datetime | None = None,
        uncertain_policy: str | None = None,
    ) -> dict[str, Any]:
        """Write a letter: a draft, or scheduled for ``send_at`` (timezone-aware).

        ``uncertain_policy`` (``"resend"``, the default, or ``"hold"``) says what recovery does with
        its messages in flight at a crash. Returns ``{"letter_id", "state"}``."""
        if send_at is not None and (send_at.tzinfo is None or send_at.utcoffset() is None):
            raise ValueError(
                f"expected send_at with a timezone, got the naive {send_at.isoformat()}; "
                "use e.g. datetime.now(UTC) or .replace(tzinfo=...)"
            )
        params = _drop_none(
            newsletter_id=newsletter_id,
            subject=subject,
            text_body=text_body,
            html_body=html_body,
            send_at=None if send_at is None else send_at.isoformat(),
            uncertain_policy=uncertain_policy,
        )
        return await self._call_for_dict("letter.create", params)

    async def newsletter_create(
        self,
        owner_email: str,
        name: str,
        from_address: str,
        *,
        reply_to: str | None = None,
        unsubscribe_url_template: str | None = None,
    ) -> dict[str, Any]:
        """Create a newsletter (and its owner). ``unsubscribe_url_template`` must contain ``{token}``.
        Returns ``{"newsletter_id", "user_id"}``."""
        params = _drop_none(
            owner_email=owner_email,
            name=name,
            from_address=from_address,
            reply_to=reply_to,
            unsubscribe_url_template=unsubscribe_url_template,
        )
        return await self._call_for_dict("newsletter.create", params)

    async def subscribers_add(
        self, newsletter_id: int, subscribers: Iterable[str | Mapping[str, str]]
    ) -> dict[str, Any]:
        """Subscribe addresses, each an email string or ``{"email": ..., "name": ...}``.
        Returns ``{"newsletter_id", "added", "existing"}``. One request is at most 1 MiB (some
        15,000 addresses): call again for more."""
        entries = [{"email": entry} if isinstance(entry, str) else dict(entry) for entry in subscribers]
        return await self._call_for_dict(
            "subscribers.add", {"newsletter_id": newsletter_id, "subscribers": entries}
        )

    async def system_tree(self) -> dict[str, Any]:
        """The daemon's supervision tree. Returns ``{"tree": node}``."""
        return await self._call_for_dict("system.tree", {})

    async def system_health(self) -> dict[str, Any]:
        """Returns ``{"status": "ok" | "degraded", "checks": {...}}``."""
        return await self._call_for_dict("system.health", {})

    async def system_configure(
        self, *, rate_limit: float | None = None, concurrency: int | None = None
    ) -> dict[str, Any]:
        """Change the sending rate (messages per second) and/or concurrency.
        Returns ``{"rate_limit", "concurrency"}`` now in effect."""
        params = _drop_none(rate_limit=rate_limit, concurrency=concurrency)
        return await self._call_for_dict("system.configure", params)

    # ---------------------------------------------------------------- internals

    async def _call_for_dict(self, method: str, params: Mapping[str, Any]) -> dict[str, Any]:
        result = await self.call(method, params)
        if not isinstance(result, dict):
            raise RpcProtocolError(f"{method} returned {type(result).__name__}, expected an object")
        return result

    async def _read_response(self, reader: asyncio.StreamReader, request_id: int) -> dict[str, Any]:
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError:
                raise ConnectionLostError(
                    f"mailman on {self.socket_path} closed the connection without answering", self.socket_path
                ) from None
            except asyncio.LimitOverrunError:
                raise RpcProtocolError(f"the response exceeds {MAX_RESPONSE_BYTES} bytes") from None
            response = _decode_response(line)
            response_id = response["id"]
            if response_id is None and "error" in response:
                return response  # about the connection, not a request: permission denied, line too long
            if isinstance(response_id, int) and response_id in self._abandoned:
                self._abandoned.discard(response_id)
                continue  # the late answer to a call that timed out
            if response_id != request_id:
                raise RpcProtocolError(
                    f"expected the response to request {request_id}, got one for {response_id!r}"
                )
            return response


def _encode_request(method: str, params: Mapping[str, Any] | Sequence[Any] | None, request_id: int) -> bytes:
    if not isinstance(method, str):
        raise TypeError(f"expected the method name as a str, got {method!r}")
    request: dict[str, Any] = {"jsonrpc": JSONRPC_VERSION, "id": request_id, "method": method}
    if params is not None:
        request["params"] = dict(params) if isinstance(params, Mapping) else list(params)
    line = json.dumps(request, separators=(",", ":"), allow_nan=False).encode("ascii") + b"\n"
    if len(line) - 1 > MAX_LINE_BYTES:
        raise ValueError(
            f"the {method} request is {len(line) - 1} bytes and mailman accepts at most {MAX_LINE_BYTES} "
            "(1 MiB) per request: split it into smaller calls"
        )
    return line


def _decode_response(line: bytes) -> dict[str, Any]:
    try:
        response = json.loads(line)
    except ValueError as exc:
        raise RpcProtocolError(f"the daemon sent a line that is not JSON: {exc}") from None
    if (
        not isinstance(response, dict)
        or response.get("jsonrpc") != JSONRPC_VERSION
        or "id" not in response
        or ("result" in response) == ("error" in response)
    ):
        raise RpcProtocolError(
            f"the daemon sent something other than a JSON-RPC 2.0 response: {line[:200]!r}"
        )
    return response


def _outcome(response: Mapping[str, Any]) -> Any:
    if "result" in response:
        return response["result"]
    error = response["error"]
    if (
        not isinstance(error, dict)
        or isinstance(error.get("code"), bool)
        or not isinstance(error.get("code"), int)
        or not isinstance(error.get("message"), str)
    ):
        raise RpcProtocolError(f"the daemon sent a malformed error: {error!r}")
    raise RpcRemoteError(error["code"], error["message"], error.get("data"))


def _drop_none(**params: Any) -> dict[str, Any]:
    return {key: value for key, value in params.items() if value is not None}

"""mailman.client.Client against scripted daemons: connecting, ids, errors, timeouts, and what it sends.

A :class:`FakeDaemon` listens on a Unix socket in ``tmp_path`` and runs a script per connection, so
each test decides exactly what the "daemon" answers (or fails to). The round trip through the real
RpcServer is in ``tests/rpc/test_server.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from mailman.client import (
    Client,
    ClientError,
    ConnectionLostError,
    DaemonConnectionError,
    DaemonNotRunningError,
    RpcProtocolError,
    RpcRemoteError,
    RpcTimeoutError,
)
from mailman.rpc import MAX_LINE_BYTES

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class FakeDaemon:
    """Listens on ``path`` and runs ``script(reader, writer)`` for each connection; records requests."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.script: Script = self.echo
        self.requests: list[dict[str, Any]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(
            self._accept, path=os.fspath(self.path), limit=2 * MAX_LINE_BYTES
        )

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._run(reader, writer))
        self._tasks.add(task)

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self.script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> dict[str, Any] | None:
        line = await reader.readline()
        if not line:
            return None
        request: dict[str, Any] = json.loads(line)
        self.requests.append(request)
        return request

    async def echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer each request with ``{"method": ..., "params": ...}``, under its id."""
        while (request := await self.read_request(reader)) is not None:
            result = {"method": request["method"], "params": request.get("params")}
            await send(writer, {"jsonrpc": "2.0", "result": result, "id": request["id"]})


async def send(writer: asyncio.StreamWriter, message: object) -> None:
    writer.write(json.dumps(message).encode() + b"\n")
    await writer.drain()


@pytest.fixture
def socket_path(tmp_path: Path) -> Path:
    return tmp_path / "daemon.sock"


@pytest.fixture
async def daemon(socket_path: Path) -> AsyncIterator[FakeDaemon]:
    fake = FakeDaemon(socket_path)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def client(daemon: FakeDaemon, socket_path: Path) -> AsyncIterator[Client]:
    async with Client(socket_path, timeout=5.0) as connected:
        yield connected


class TestConnect:
    async def test_a_missing_socket_means_the_daemon_is_not_running(self, socket_path: Path) -> None:
        """The error says where it looked and how to start the daemon."""
        with pytest.raises(DaemonNotRunningError) as caught:
            await Client(socket_path).connect()
        assert str(caught.value) == f"mailman is not running on {socket_path}; start it with `mailman serve`"
        assert caught.value.path == socket_path

    async def test_a_socket_nobody_listens_on_means_the_daemon_is_not_running(
        self, socket_path: Path
    ) -> None:
        """A leftover socket file (connection refused) is reported the same way."""
        leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        leftover.bind(os.fspath(socket_path))
        leftover.close()
        with pytest.raises(DaemonNotRunningError):
            async with Client(socket_path):
                pass

    async def test_not_running_is_a_connection_error(self, socket_path: Path) -> None:
        """Generic handlers of ConnectionError catch it too."""
        with pytest.raises(ConnectionError):
            await Client(socket_path).connect()

    async def test_calling_before_connecting_is_misuse(self, daemon: FakeDaemon, socket_path: Path) -> None:
        """RuntimeError says how to connect."""
        with pytest.raises(RuntimeError, match="not connected"):
            await Client(socket_path).system_health()

    async def test_connecting_twice_is_misuse(self, client: Client) -> None:
        """A client holds one connection."""
        with pytest.raises(RuntimeError, match="already connected"):
            await client.connect()

    async def test_close_is_idempotent(self, client: Client) -> None:
        """Closing twice does nothing the second time."""
        await client.close()
        await client.close()
        assert not client.connected


class TestRequests:
    async def test_request_ids_increment(self, client: Client, daemon: FakeDaemon) -> None:
        """Each call gets the next id, starting at 1."""
        for _ in range(3):
            await client.system_health()
        assert [request["id"] for request in daemon.requests] == [1, 2, 3]

    async def test_requests_are_json_rpc_2(self, client: Client, daemon: FakeDaemon) -> None:
        """A request carries ``jsonrpc``, ``id``, ``method`` and ``params``."""
        await client.letter_status(5)
        assert daemon.requests == [
            {"jsonrpc": "2.0", "id": 1, "method": "letter.status", "params": {"letter_id": 5}}
        ]

    async def test_options_left_out_are_not_sent(self, client: Client, daemon: FakeDaemon) -> None:
        """None means "not given": the daemon applies its defaults."""
        await client.letter_send(3)
        await client.newsletter_create("o@example.org", "N", "f@example.org")
        await client.system_configure(concurrency=4)
        assert [request["params"] for request in daemon.requests] == [
            {"letter_id": 3},
            {"owner_email": "o@example.org", "name": "N", "from_address": "f@example.org"},
            {"concurrency": 4},
        ]

    async def test_send_at_is_sent_as_iso_8601_with_its_offset(
        self, client: Client, daemon: FakeDaemon
    ) -> None:
        """A timezone-aware datetime travels as an ISO 8601 string."""
        await client.letter_create(1, "S", "T", send_at=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC))
        assert daemon.requests[0]["params"]["send_at"] == "2030-01-02T03:04:05+00:00"

    async def test_a_naive_send_at_is_refused_before_sending(
        self, client: Client, daemon: FakeDaemon
    ) -> None:
        """The client cannot guess a timezone; ValueError says how to give one."""
        with pytest.raises(ValueError, match="expected send_at with a timezone"):
            await client.letter_create(1, "S", "T", send_at=datetime(2030, 1, 2))
        assert daemon.requests == []

    async def test_subscribers_may_be_addresses_or_mappings(self, client: Client, daemon: FakeDaemon) -> None:
        """A bare string is an address with no name."""
        await client.subscribers_add(2, ["a@example.org", {"email": "b@example.org", "name": "B"}])
        assert daemon.requests[0]["params"]["subscribers"] == [
            {"email": "a@example.org"},
            {"email": "b@example.org", "name": "B"},
        ]

    async def test_a_request_over_1_mib_is_refused_before_sending(
        self, client: Client, daemon: FakeDaemon
    ) -> None:
        """The daemon would refuse it and hang up; the client says so first, and stays usable."""
        many = [f"subscriber{n}@example.org" for n in range(60_000)]
        with pytest.raises(ValueError, match=r"at most 1048576 \(1 MiB\) per request"):
            await client.subscribers_add(1, many)
        assert daemon.requests == []
        assert (await client.system_health())["method"] == "system.health"

    async def test_a_request_of_exactly_1_mib_is_sent(self, client: Client, daemon: FakeDaemon) -> None:
        """The limit is on the bytes before the newline."""
        overhead = len(
            json.dumps({"jsonrpc": "2.0", "id": 1, "method": "m", "params": [""]}, separators=(",", ":"))
        )
        await client.call("m", ["x" * (MAX_LINE_BYTES - overhead)])
        assert len(daemon.requests) == 1

    async def test_nan_is_refused_before_sending(self, client: Client, daemon: FakeDaemon) -> None:
        """JSON has no NaN."""
        with pytest.raises(ValueError, match="JSON compliant"):
            await client.system_configure(rate_limit=float("nan"))
        assert daemon.requests == []

    async def test_the_generic_call_takes_positional_params(self, client: Client, daemon: FakeDaemon) -> None:
        """``call(method, [..])`` sends an array."""
        assert await client.call("letter.status", [4]) == {"method": "letter.status", "params": [4]}

    async def test_concurrent_calls_on_one_client_take_turns(self, client: Client) -> None:
        """Calls from several tasks share the connection and each gets its own answer."""
        results = await asyncio.gather(*(client.letter_status(n) for n in range(1, 21)))
        assert [result["params"]["letter_id"] for result in results] == list(range(1, 21))


class TestResponses:
    async def test_an_error_response_raises_rpc_remote_error(
        self, client: Client, daemon: FakeDaemon
    ) -> None:
        """``code``, ``message`` and ``data`` come from the response; the client stays usable."""

        async def refuse_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            request = await daemon.read_request(reader)
            assert request is not None
            error = {"code": -32001, "message": "letter 4 does not exist", "data": {"letter_id": 4}}
            await send(writer, {"jsonrpc": "2.0", "error": error, "id": request["id"]})
            await daemon.echo(reader, writer)

        daemon.script = refuse_first
        async with Client(daemon.path) as fresh:
            with pytest.raises(RpcRemoteError) as caught:
                await fresh.letter_status(4)
            assert (caught.value.code, caught.value.message, caught.value.data) == (
                -32001,
                "letter 4 does not exist",
                {"letter_id": 4},
            )
            assert str(caught.value) == "letter 4 does not exist (code -32001)"
            assert (await fresh.system_health())["method"] == "system.health"

    async def test_a_response_for_another_id_is_a_protocol_error(self, daemon: FakeDaemon) -> None:
        """A mismatched id means the stream is out of step: the client raises and closes."""

        async def wrong_id(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            request = await daemon.read_request(reader)
            assert request is not None
            await send(writer, {"jsonrpc": "2.0", "result": {}, "id": request["id"] + 100})
            await reader.read()

        daemon.script = wrong_id
        async with Client(daemon.path) as fresh:
            with pytest.raises(RpcProtocolError, match="expected the response to request 1, got one for 101"):
                await fresh.system_health()
            assert not fresh.connected

    @pytest.mark.parametrize(
        "line",
        [
            b"not json\n",
            b"[1, 2]\n",
            b'{"jsonrpc": "1.0", "result": {}, "id": 1}\n',
            b'{"jsonrpc": "2.0", "id": 1}\n',
            b'{"jsonrpc": "2.0", "result": {}, "error": {"code": 1, "message": "x"}, "id": 1}\n',
            b'{"jsonrpc": "2.0", "result": {}}\n',
            b'{"jsonrpc": "2.0", "error": {"code": "bad", "message": "x"}, "id": 1}\n',
            b'{"jsonrpc": "2.0", "error": "broken", "id": 1}\n',
        ],
    )
    async def test_a_malformed_response_is_a_protocol_error(self, daemon: FakeDaemon, line: bytes) -> None:
        """Anything but one JSON-RPC 2.0 response object is refused."""

        async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await daemon.read_request(reader)
            writer.write(line)
            await writer.drain()
            await reader.read()

        daemon.script = garbage
        async with Client(daemon.path) as fresh:
            with pytest.raises(RpcProtocolError):
                await fresh.call("system.health", {})

    async def test_a_typed_method_needs_an_object_result(self, daemon: FakeDaemon) -> None:
        """A typed method whose result is not an object raises RpcProtocolError."""

        async def list_result(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while (request := await daemon.read_request(reader)) is not None:
                await send(writer, {"jsonrpc": "2.0", "result": [1], "id": request["id"]})

        daemon.script = list_result
        async with Client(daemon.path) as fresh:
            with pytest.raises(RpcProtocolError, match="expected an object"):
                await fresh.system_tree()

    async def test_an_error_about_the_connection_raises_and_closes(self, daemon: FakeDaemon) -> None:
        """A null-id error (permission denied) is raised, and the client is closed."""

        async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            error = {"code": -32004, "message": "permission denied: uid 1000"}
            await send(writer, {"jsonrpc": "2.0", "error": error, "id": None})

        daemon.script = refuse
        async with Client(daemon.path) as fresh:
            with pytest.raises(RpcRemoteError, match="permission denied: uid 1000"):
                await fresh.system_health()
            assert not fresh.connected

    async def test_the_daemon_hanging_up_is_connection_lost(self, daemon: FakeDaemon) -> None:
        """No answer, only end of input: ConnectionLostError, and the client is closed."""

        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await daemon.read_request(reader)

        daemon.script = hang_up
        async with Client(daemon.path) as fresh:
            with pytest.raises(ConnectionLostError, match="closed the connection without answering"):
                await fresh.system_health()
            assert not fresh.connected
            with pytest.raises(RuntimeError, match="not connected"):
                await fresh.system_health()

    def test_every_client_error_shares_one_root(self) -> None:
        """One ``except ClientError`` catches all the client's own failures."""
        for error in (DaemonConnectionError, DaemonNotRunningError, ConnectionLostError, RpcRemoteError):
            assert issubclass(error, ClientError)
        assert issubclass(RpcProtocolError, ClientError)
        assert issubclass(RpcTimeoutError, ClientError)
        assert issubclass(RpcTimeoutError, TimeoutError)


class TestTimeouts:
    async def test_no_answer_in_time_raises_rpc_timeout_error(self, daemon: FakeDaemon) -> None:
        """The timeout is the client's; the error names the method and the seconds."""
        stalled = asyncio.Event()

        async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await daemon.read_request(reader)
            await stalled.wait()

        daemon.script = never_answer
        async with Client(daemon.path, timeout=0.05) as fresh:
            with pytest.raises(RpcTimeoutError) as caught:
                await fresh.system_health()
        assert (caught.value.method, caught.value.timeout) == ("system.health", 0.05)
        stalled.set()

    async def test_a_call_may_override_the_timeout(self, daemon: FakeDaemon) -> None:
        """``call(..., timeout=)`` applies to that call only."""
        stalled = asyncio.Event()

        async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await daemon.read_request(reader)
            await stalled.wait()

        daemon.script = never_answer
        async with Client(daemon.path, timeout=60) as fresh:
            with pytest.raises(RpcTimeoutError) as caught:
                await fresh.call("system.health", {}, timeout=0.05)
        assert caught.value.timeout == 0.05
        stalled.set()

    async def test_a_late_answer_to_a_timed_out_call_is_discarded(self, daemon: FakeDaemon) -> None:
        """After a timeout the connection stays usable: the next call skips the stale answer."""

        async def answer_late(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            first = await daemon.read_request(reader)
            second = await daemon.read_request(reader)
            assert first is not None
            assert second is not None
            await send(writer, {"jsonrpc": "2.0", "result": {"answer": "first"}, "id": first["id"]})
            await send(writer, {"jsonrpc": "2.0", "result": {"answer": "second"}, "id": second["id"]})
            await reader.read()

        daemon.script = answer_late
        async with Client(daemon.path) as fresh:
            with pytest.raises(RpcTimeoutError):
                await fresh.call("system.health", {}, timeout=0.05)
            assert await fresh.call("system.health", {}) == {"answer": "second"}

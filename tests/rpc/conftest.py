"""Fixtures for the RPC layer: a recording fake of the engine's Handlers, a real server on a Unix
socket in ``tmp_path``, and a raw line-level connection for sending what no client would send."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mailman import supervisor as otp
from mailman.rpc import (
    LetterCancelParams,
    LetterCreateParams,
    LetterPauseParams,
    LetterResumeParams,
    LetterRetryFailedParams,
    LetterSendParams,
    LetterStatusParams,
    NewsletterCreateParams,
    Params,
    RpcServer,
    RpcServerConfig,
    SubscribersAddParams,
    SystemConfigureParams,
    SystemHealthParams,
    SystemTreeParams,
)
from tests.supervisor.processes import WAIT


class FakeHandlers:
    """The engine, faked: records each call's validated params and answers with canned results.

    ``failures[method] = exc`` makes that handler raise ``exc``; ``gates[method]`` (an
    ``asyncio.Event``) makes it wait until the event is set, after setting ``entered[method]``.
    ``barrier`` (if set) makes ``letter.status`` wait until that many calls are in flight.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, Params]] = []
        self.finished: list[str] = []
        self.failures: dict[str, Exception] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.entered: dict[str, asyncio.Event] = {}
        self.barrier: asyncio.Barrier | None = None
        self.caller_pids: list[otp.Pid | None] = []

    async def _record(self, method: str, params: Params, result: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((method, params))
        self.caller_pids.append(otp.current_pid())
        if method in self.gates:
            self.entered.setdefault(method, asyncio.Event()).set()
            await self.gates[method].wait()
        if method in self.failures:
            raise self.failures[method]
        self.finished.append(method)
        return result

    async def letter_send(self, params: LetterSendParams) -> dict[str, Any]:
        return await self._record("letter.send", params, {"letter_id": params.letter_id, "state": "sending"})

    async def letter_status(self, params: LetterStatusParams) -> dict[str, Any]:
        if self.barrier is not None:
            await self.barrier.wait()
        counts = {"pending": 3, "sending": 1, "delivered": 5, "failed": 0, "skipped": 1}
        return await self._record(
            "letter.status", params, {"letter_id": params.letter_id, "state": "sending", "counts": counts}
        )

    async def letter_pause(self, params: LetterPauseParams) -> dict[str, Any]:
        return await self._record("letter.pause", params, {"letter_id": params.letter_id, "state": "paused"})

    async def letter_resume(self, params: LetterResumeParams) -> dict[str, Any]:
        return await self._record(
            "letter.resume", params, {"letter_id": params.letter_id, "state": "sending"}
        )

    async def letter_cancel(self, params: LetterCancelParams) -> dict[str, Any]:
        return await self._record(
            "letter.cancel", params, {"letter_id": params.letter_id, "state": "cancelled"}
        )

    async def letter_retry_failed(self, params: LetterRetryFailedParams) -> dict[str, Any]:
        return await self._record(
            "letter.retry_failed", params, {"letter_id": params.letter_id, "state": "sending", "retried": 2}
        )

    async def letter_create(self, params: LetterCreateParams) -> dict[str, Any]:
        state = "draft" if params.send_at is None else "scheduled"
        return await self._record("letter.create", params, {"letter_id": 41, "state": state})

    async def newsletter_create(self, params: NewsletterCreateParams) -> dict[str, Any]:
        return await self._record("newsletter.create", params, {"newsletter_id": 7, "user_id": 3})

    async def subscribers_add(self, params: SubscribersAddParams) -> dict[str, Any]:
        result = {"newsletter_id": params.newsletter_id, "added": len(params.subscribers), "existing": 0}
        return await self._record("subscribers.add", params, result)

    async def system_tree(self, params: SystemTreeParams) -> dict[str, Any]:
        tree = {"id": "Application", "pid": "<0.1.0>", "type": "supervisor", "children": []}
        return await self._record("system.tree", params, {"tree": tree})

    async def system_health(self, params: SystemHealthParams) -> dict[str, Any]:
        return await self._record("system.health", params, {"status": "ok", "checks": {"database": "ok"}})

    async def system_configure(self, params: SystemConfigureParams) -> dict[str, Any]:
        result = {"rate_limit": params.rate_limit, "concurrency": params.concurrency or 10}
        return await self._record("system.configure", params, result)

    def gate(self, method: str) -> asyncio.Event:
        """Make ``method`` wait for the returned event; ``entered[method]`` is set once it waits."""
        self.entered[method] = asyncio.Event()
        self.gates[method] = asyncio.Event()
        return self.gates[method]


class RawConnection:
    """A line-level connection to the server, for bytes no well-behaved client sends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, path: Path) -> RawConnection:
        reader, writer = await asyncio.open_unix_connection(path, limit=4 * 1024 * 1024)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_json(self, message: object) -> None:
        await self.send(json.dumps(message).encode() + b"\n")

    async def receive(self) -> dict[str, Any]:
        """The next response line, decoded; fails if the server closed the connection instead."""
        async with asyncio.timeout(WAIT):
            line = await self.reader.readline()
        assert line.endswith(b"\n"), f"expected a response line, got {line!r}"
        message = json.loads(line)
        assert isinstance(message, dict)
        return message

    async def request(self, message: object) -> dict[str, Any]:
        await self.send_json(message)
        return await self.receive()

    async def closed_by_server(self) -> bool:
        """Wait for the server to close the connection: True if it did with no more data."""
        try:
            async with asyncio.timeout(WAIT):
                rest = await self.reader.read()
        except ConnectionResetError:
            return True
        return rest == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def exists(path: Path) -> bool:
    """Whether ``path`` exists: a local stat, run synchronously on purpose (it cannot block for long)."""
    return path.exists()


@pytest.fixture
def socket_path(tmp_path: Path) -> Path:
    return tmp_path / "mailman.sock"


@pytest.fixture
def handlers() -> FakeHandlers:
    return FakeHandlers()


@pytest.fixture
async def server(socket_path: Path, handlers: FakeHandlers) -> AsyncIterator[otp.Pid]:
    """A running RpcServer on ``socket_path`` answering through ``handlers``; stopped afterwards."""
    pid = await RpcServer.start(RpcServerConfig(socket_path=socket_path, handlers=handlers))
    yield pid
    if otp.is_alive(pid):
        await otp.GenServer.stop(pid, timeout=WAIT)


@pytest.fixture
async def raw(server: otp.Pid, socket_path: Path) -> AsyncIterator[RawConnection]:
    connection = await RawConnection.open(socket_path)
    yield connection
    await connection.close()

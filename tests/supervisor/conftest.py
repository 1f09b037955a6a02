"""Fixtures for the supervision library's tests.

``events`` records every library event in order, so tests synchronise on "the supervisor has
restarted the child" instead of sleeping: ``await events.wait_for(("supervisor", "child",
"restarted"))``.

``cleanup`` is a list a test appends the pids it started to; whichever are still alive at the end of
the test are killed, last started first.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import pytest

from mailman import supervisor as otp
from mailman.supervisor import KILL, Pid
from tests.supervisor.processes import WAIT

ALL_EVENTS = [
    ("supervisor", "child", "started"),
    ("supervisor", "child", "start_failed"),
    ("supervisor", "child", "exited"),
    ("supervisor", "child", "restarted"),
    ("supervisor", "intensity", "exceeded"),
    ("supervisor", "shutdown_error"),
    ("gen_server", "terminated"),
    ("gen_server", "unexpected_message"),
]


class EventLog:
    """Every library event, in order, and a way to wait for the next one that matches."""

    def __init__(self) -> None:
        self.records: list[tuple[tuple[str, ...], dict[str, Any]]] = []
        self._changed = asyncio.Event()

    def __call__(self, event: tuple[str, ...], metadata: Mapping[str, Any]) -> None:
        self.records.append((event, dict(metadata)))
        self._changed.set()

    def named(self, *event: str) -> list[dict[str, Any]]:
        return [meta for name, meta in self.records if name == event]

    async def wait_for(self, event: tuple[str, ...], count: int = 1, **match: Any) -> dict[str, Any]:
        """Wait (up to 5 s) until ``count`` events named ``event`` with ``match`` fields happened."""

        def matching() -> list[dict[str, Any]]:
            return [
                meta
                for name, meta in self.records
                if name == event and all(meta.get(k) == v for k, v in match.items())
            ]

        async with asyncio.timeout(5):
            while len(matching()) < count:
                self._changed.clear()
                await self._changed.wait()
        return matching()[count - 1]


@pytest.fixture
async def cleanup() -> AsyncIterator[list[Pid]]:
    """Pids to kill at the end of the test (whatever is still alive), last started first."""
    pids: list[Pid] = []
    yield pids
    for pid in reversed(pids):
        if otp.is_alive(pid):
            otp.exit(pid, KILL)
            await otp.await_exit(pid, WAIT)


@pytest.fixture
def events() -> Iterator[EventLog]:
    log = EventLog()
    ids = []
    for index, name in enumerate(ALL_EVENTS):
        handler_id = f"test-events-{index}"
        otp.attach(handler_id, name, log)
        ids.append(handler_id)
    yield log
    for handler_id in ids:
        otp.detach(handler_id)

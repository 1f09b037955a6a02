"""Deadlines: many timeouts of the same few lengths, served by one timer per event loop.

Every ``GenServer.call`` has a timeout (5 s by default) and nearly every call is answered long
before it. Arming and cancelling an asyncio timer for each call costs more than the rest of the
call; instead, calls with the same timeout length join a FIFO queue (their deadlines are then in
order), answered calls are dropped from the front as new ones arrive, and a single timer, armed
for the earliest deadline, fails whatever is still waiting when it fires.

This is an implementation detail of the library (the BEAM has timer wheels for the same reason).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from mailman.supervisor._loop_local import LoopLocal

__all__ = ["expire_after"]

Expire = Callable[[asyncio.Future[Any]], None]


class _Deadlines:
    __slots__ = ("_loop", "_queues", "_timer", "_timer_at")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queues: dict[float, deque[tuple[float, asyncio.Future[Any], Expire]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def add(self, timeout: float, future: asyncio.Future[Any], expire: Expire) -> None:
        deadline = self._loop.time() + timeout
        queue = self._queues.get(timeout)
        if queue is None:
            queue = self._queues[timeout] = deque()
        while queue and queue[0][1].done():
            queue.popleft()
        queue.append((deadline, future, expire))
        if self._timer is None or deadline < self._timer_at:
            self._arm(deadline)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self._loop.time()
        earliest: float | None = None
        for timeout, queue in list(self._queues.items()):
            while queue:
                deadline, future, expire = queue[0]
                if future.done():
                    queue.popleft()
                elif deadline <= now:
                    queue.popleft()
                    expire(future)
                else:
                    break
            if queue:
                head = queue[0][0]
                earliest = head if earliest is None else min(earliest, head)
            else:
                del self._queues[timeout]
        if earliest is not None:
            self._arm(earliest)


_per_loop: LoopLocal[_Deadlines] = LoopLocal(_Deadlines)


def expire_after(timeout: float, future: asyncio.Future[Any], expire: Expire) -> None:
    """Call ``expire(future)`` after ``timeout`` seconds unless ``future`` is done by then."""
    _per_loop.get().add(timeout, future, expire)

"""LoopLocal: one value per running event loop, as ``threading.local`` gives one per thread.

The library keeps a few tables that belong to an event loop rather than to the process: the local
process names (the BEAM's name table is per node, and a loop plays the node here) and the shared
call deadlines. Each lives in a :class:`LoopLocal`, created on first use in a loop and dropped
with the loop (the loops are held weakly).

Looking a loop up in a ``WeakKeyDictionary`` makes a weak reference on every lookup; these tables
are read on every ``GenServer.call``, so the last loop's value is also kept at hand and returned
after one identity check; that value stays referenced until another loop asks for its own. (An
implementation detail; there is nothing like it to mirror in OTP.)

Example::

    _names: LoopLocal[dict[str, Process]] = LoopLocal(lambda loop: {})
    table = _names.get()   # this loop's dict, the same object on every call in this loop
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["LoopLocal"]

T = TypeVar("T")


def _no_loop() -> None:
    return None


class LoopLocal(Generic[T]):
    """A value per event loop, made by ``factory(loop)`` the first time :meth:`get` runs in it."""

    __slots__ = ("_factory", "_last_loop", "_last_value", "_values")

    def __init__(self, factory: Callable[[asyncio.AbstractEventLoop], T]) -> None:
        self._factory = factory
        self._values: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = weakref.WeakKeyDictionary()
        self._last_loop: Callable[[], asyncio.AbstractEventLoop | None] = _no_loop
        self._last_value: T | None = None

    def get(self) -> T:
        """The running loop's value (``RuntimeError`` outside a running loop)."""
        loop = asyncio.get_running_loop()
        if self._last_loop() is loop:
            return self._last_value  # type: ignore[return-value]
        value = self._values.get(loop)
        if value is None:
            value = self._values[loop] = self._factory(loop)
        self._last_loop = weakref.ref(loop)
        self._last_value = value
        return value

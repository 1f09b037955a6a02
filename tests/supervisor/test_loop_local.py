"""LoopLocal: one value per event loop, kept at hand for the loop that asked last."""

from __future__ import annotations

import asyncio
import gc

import pytest

from mailman.supervisor._loop_local import LoopLocal


def _value_in_new_loop(local: LoopLocal[list[int]]) -> list[int]:
    async def read() -> list[int]:
        return local.get()

    return asyncio.run(read())


class TestLoopLocal:
    async def test_same_loop_gets_the_same_value(self) -> None:
        """Every get() in one loop returns the one object the factory made, made once."""
        made: list[asyncio.AbstractEventLoop] = []
        local: LoopLocal[list[int]] = LoopLocal(lambda loop: made.append(loop) or [])

        first, second = local.get(), local.get()

        assert first is second
        assert made == [asyncio.get_running_loop()]

    def test_each_loop_gets_its_own_value(self) -> None:
        """Two loops, two values: a name registered in one loop is not seen in another."""
        local: LoopLocal[list[int]] = LoopLocal(lambda _loop: [])

        a, b = _value_in_new_loop(local), _value_in_new_loop(local)

        assert a is not b

    def test_a_loop_finds_its_value_again_after_another_loop_asked(self) -> None:
        """The shortcut for the last loop never hands one loop's value to another."""
        local: LoopLocal[list[int]] = LoopLocal(lambda _loop: [])
        loop = asyncio.new_event_loop()
        try:

            async def read() -> list[int]:
                return local.get()

            mine = loop.run_until_complete(read())
            other = _value_in_new_loop(local)
            again = loop.run_until_complete(read())
        finally:
            loop.close()

        assert again is mine
        assert other is not mine

    def test_values_of_dead_loops_are_dropped(self) -> None:
        """A loop that is gone leaves no entry in the table: loops are held weakly."""
        local: LoopLocal[list[int]] = LoopLocal(lambda _loop: [])
        for _ in range(3):
            _value_in_new_loop(local)
        gc.collect()

        assert len(local._values) == 0

    def test_outside_a_loop_is_an_error(self) -> None:
        """get() needs a running loop, as asyncio.get_running_loop() does."""
        local: LoopLocal[list[int]] = LoopLocal(lambda _loop: [])

        with pytest.raises(RuntimeError):
            local.get()

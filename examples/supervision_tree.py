"""A supervision tree driven from a plain asyncio script, as one would from ``iex``.

Run it: ``.venv/bin/python examples/supervision_tree.py``. It starts a one_for_one supervisor
with two counters, looks a child up, kills it with an exit signal, watches the supervisor
restart it, reads ``which_children`` and stops the tree, printing the tree's exit reason.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from mailman import supervisor as otp


@dataclass(frozen=True)
class Increment:
    by: int = 1


class Counter(otp.GenServer[int]):
    """A counter: ``call(Increment(n))`` adds n and replies with the new value."""

    async def init(self, arg: int) -> otp.Init[int]:
        return otp.Init(arg)

    async def handle_call(self, request: Any, from_: otp.From, state: int) -> otp.Reply[int]:
        match request:
            case Increment(by):
                return otp.Reply(state + by, state + by)
        raise ValueError(f"unexpected request {request!r}")


async def main() -> None:
    restarted = asyncio.Event()
    otp.attach("example", ("supervisor", "child", "restarted"), lambda _e, _m: restarted.set())

    tree = await otp.Supervisor.start_link(
        otp.SupervisorSpec(
            [
                Counter.child_spec(0, id="apples", name="apples"),
                Counter.child_spec(100, id="pears", name="pears"),
            ],
            strategy=otp.Strategy.ONE_FOR_ONE,
        ),
        name="fruit",
    )
    print("apples:", await otp.GenServer.call("apples", Increment(5)))

    apples = otp.whereis("apples")
    assert apples is not None
    otp.exit(apples, otp.KILL)  # an exit signal from outside any process
    await restarted.wait()
    print("apples restarted:", otp.whereis("apples") != apples)
    print("apples after restart:", await otp.GenServer.call("apples", Increment(1)))

    for child in await otp.Supervisor.which_children("fruit"):
        print("child:", child.id, child.pid, child.type.value)

    await otp.Supervisor.stop("fruit")
    print("tree exited with:", await otp.await_exit(tree))
    otp.detach("example")


if __name__ == "__main__":
    asyncio.run(main())

"""Processes for the supervision library's tests: the bound on waits, a calling process to run a test
body in, a process that waits forever, and the supervisors a test started.

- :data:`WAIT`: the timeout of every wait that should end at once.
- :func:`in_process`: run a test body in a fresh process (a parent, a trapping caller, an owner).
- :func:`wait_forever` / :func:`start_sleeper`: a process that lives until it is stopped.
- :class:`ExitWith`: the cast that makes a test child stop with a reason.
- :class:`StartedSupervisors`: supervisors started for a test, stopped at its end; a test module
  subclasses it with the ``start`` of its kind of supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from mailman import supervisor as otp
from mailman.supervisor import NORMAL, SHUTDOWN, Crash, DynamicSupervisor, ExitReason, Pid, Supervisor

T = TypeVar("T")

WAIT = 5.0
"""A safety bound on waits that should end at once: a bug fails the test instead of hanging it."""


async def in_process(body: Callable[[], Awaitable[T]]) -> T:
    """Run ``body`` in a fresh process and return its result; fail if the process did not end
    normally (the assertions made inside it, for instance)."""
    result: asyncio.Future[T] = asyncio.get_running_loop().create_future()

    async def run() -> None:
        result.set_result(await body())

    pid = otp.spawn(run)
    reason = await otp.await_exit(pid, timeout=WAIT)
    if isinstance(reason, Crash):
        raise reason.exception
    assert reason == NORMAL, f"the test's process ended with {reason}"
    assert result.done(), "the test's process ended before its body returned"
    return result.result()


async def wait_forever() -> None:
    await otp.receive(lambda _message: False)


async def start_sleeper() -> Pid:
    return otp.spawn_link(wait_forever)


@dataclass(frozen=True, slots=True)
class ExitWith:
    """Cast to a test child: stop with ``reason`` (as ``supervisor_1`` does on ``die`` / ``stop``)."""

    reason: ExitReason


class StartedSupervisors:
    """Starts supervisors for a test (ManualClock by default) and stops whatever is left.

    A subclass sets :attr:`kind` and defines ``start``, which appends each pid to :attr:`pids`.
    """

    kind: ClassVar[type[Supervisor] | type[DynamicSupervisor]]

    def __init__(self) -> None:
        self.pids: list[Pid] = []

    async def close(self) -> None:
        for pid in reversed(self.pids):
            if otp.is_alive(pid):
                with contextlib.suppress(otp.SupervisionError):
                    await self.kind.stop(pid, SHUTDOWN)

"""The questions every supervisor answers, whatever its kind, and how to stop one.

``which_children``, ``count_children`` and ``describe`` are the same request to a
:class:`~mailman.supervisor.Supervisor` and to a :class:`~mailman.supervisor.DynamicSupervisor`
(as ``supervisor:which_children/1`` serves both in OTP); both classes inherit them from here, so
that the client half of the protocol is written once. Each kind answers in its own way: a
Supervisor lists its children most recently started first (OTP's termination order), a
DynamicSupervisor with id None.

Example::

    for child in await Supervisor.which_children(tree):
        print(child.id, child.pid, child.modules)
"""

from __future__ import annotations

from mailman.supervisor._child_spec import (
    ChildCounts,
    ChildInfo,
    CountChildrenRequest,
    DescribeRequest,
    SupervisorInfo,
    WhichChildrenRequest,
)
from mailman.supervisor._clock import INFINITY
from mailman.supervisor._exit_reason import NORMAL, ExitReason
from mailman.supervisor._gen_server import GenServer
from mailman.supervisor._names import ServerRef

__all__ = ["SupervisorQueries"]


class SupervisorQueries:
    """The client calls that any supervisor answers: its children, their counts, its state, stop."""

    @staticmethod
    async def which_children(supervisor: ServerRef) -> list[ChildInfo]:
        """Every child: its id (None under a DynamicSupervisor), pid or ``RESTARTING``, type and
        modules; a Supervisor lists them most recently started first (OTP's termination order)."""
        return await GenServer.call(supervisor, WhichChildrenRequest(), INFINITY)

    @staticmethod
    async def count_children(supervisor: ServerRef) -> ChildCounts:
        """How many specs (restarting children included), how many running, supervisors, workers."""
        return await GenServer.call(supervisor, CountChildrenRequest(), INFINITY)

    @staticmethod
    async def describe(supervisor: ServerRef) -> SupervisorInfo:
        """Strategy, intensity, restarts in the current window, and children, of any supervisor."""
        return await GenServer.call(supervisor, DescribeRequest(), INFINITY)

    @staticmethod
    async def stop(supervisor: ServerRef, reason: ExitReason = NORMAL, timeout: float = INFINITY) -> None:
        """Stop the supervisor: its children are stopped first (a Supervisor's in reverse start
        order, a DynamicSupervisor's all at once)."""
        await GenServer.stop(supervisor, reason, timeout)

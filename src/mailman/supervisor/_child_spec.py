"""Child specifications: how a supervisor starts, restarts and stops one child, as plain data.

A child spec answers four questions: *how do I start it* (``start(*args)``, an async function that
starts a process linked to the caller and returns its pid), *when do I restart it* (``restart``),
*how do I stop it* (``shutdown``), and *what is it* (``type``). Specs are frozen data; to change one,
``dataclasses.replace(spec, restart=Restart.TRANSIENT)`` (Elixir's ``Supervisor.child_spec/2``).

Restart values:

- ``PERMANENT``: always restarted (the default).
- ``TRANSIENT``: restarted only after an abnormal exit (not ``normal``, ``shutdown``,
  ``{shutdown, _}``).
- ``TEMPORARY``: never restarted; its spec is forgotten once it ends.

Shutdown values: seconds to wait after sending ``shutdown`` before sending ``kill`` (default 5.0
for workers), ``INFINITY`` (the default for supervisors), or ``BRUTAL_KILL`` (``kill`` at once:
no ``terminate`` runs).

The start function may raise :class:`StartIgnored` (OTP's ``ignore``) or :class:`StartError`.

Example::

    ChildSpec(id="repo", start=Repo.start_link, args=(dsn,), shutdown=10.0)
    Counter.child_spec(0)        # what `use GenServer` generates

``modules`` names the callback module(s) the child runs, as OTP's does; left out, it is the class
whose ``start_link`` is ``start`` (OTP's ``[M]`` of the start ``{M, F, A}``). ``which_children``
reports it, which is how a tree viewer can say ``LetterSupervisor`` rather than ``child <0.7.0>``.

Deviation: OTP seconds are integer milliseconds; here durations are float seconds. ``modules`` is
informative only: there is no hot code upgrade to use it for.

See also: Elixir ``Supervisor`` "Child specification", Erlang ``supervisor:child_spec()``.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from mailman.supervisor._call import Call
from mailman.supervisor._process import Pid

__all__ = [
    "BRUTAL_KILL",
    "RESTARTING",
    "BrutalKill",
    "ChildCounts",
    "ChildInfo",
    "ChildSpec",
    "ChildType",
    "Restart",
    "Restarting",
    "StartFunction",
    "SupervisorInfo",
]

StartFunction = Callable[..., Awaitable[Pid]]


class Restart(enum.Enum):
    """When a child is restarted: ``permanent`` | ``transient`` | ``temporary``."""

    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


class ChildType(enum.Enum):
    """``worker`` or ``supervisor``: decides the default shutdown and what ``count_children`` says."""

    WORKER = "worker"
    SUPERVISOR = "supervisor"


class BrutalKill(enum.Enum):
    """The ``brutal_kill`` shutdown value: kill at once, no cleanup."""

    BRUTAL_KILL = "brutal_kill"


BRUTAL_KILL = BrutalKill.BRUTAL_KILL
DEFAULT_WORKER_SHUTDOWN = 5.0


class _DefaultShutdown:
    """The ``shutdown`` left out: 5 s for a worker, infinity for a supervisor. A sentinel object
    rather than a number, so that every number a caller passes (``-1`` included) is validated."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<default shutdown>"


_DEFAULT_SHUTDOWN: Any = _DefaultShutdown()


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildSpec:
    """How a supervisor starts, restarts and stops one child."""

    id: Hashable
    start: StartFunction
    args: tuple[Any, ...] = ()
    restart: Restart = Restart.PERMANENT
    shutdown: float | BrutalKill = field(default=_DEFAULT_SHUTDOWN)
    type: ChildType = ChildType.WORKER
    significant: bool = False
    modules: tuple[str, ...] = ()
    """The callback module(s) the child runs, by name; left empty, derived from ``start``."""

    def __post_init__(self) -> None:
        if not callable(self.start):
            raise TypeError(f"expected start to be an async function, got {self.start!r}")
        if not self.modules:
            object.__setattr__(self, "modules", (_module_of(self.start),))
        if not isinstance(self.args, tuple):
            raise TypeError(f"expected args to be a tuple, got {type(self.args).__name__}")
        if not isinstance(self.restart, Restart):
            raise TypeError(f"expected restart to be a Restart, got {self.restart!r}")
        if not isinstance(self.type, ChildType):
            raise TypeError(f"expected type to be a ChildType, got {self.type!r}")
        try:
            hash(self.id)
        except TypeError:
            raise TypeError(f"expected a hashable child id, got {self.id!r}") from None
        if self.shutdown is _DEFAULT_SHUTDOWN:
            default = math.inf if self.type is ChildType.SUPERVISOR else DEFAULT_WORKER_SHUTDOWN
            object.__setattr__(self, "shutdown", default)
        elif not isinstance(self.shutdown, BrutalKill):
            if isinstance(self.shutdown, bool) or not isinstance(self.shutdown, int | float):
                raise TypeError(
                    f"expected shutdown to be seconds, INFINITY or BRUTAL_KILL, got {self.shutdown!r}"
                )
            if self.shutdown < 0 or math.isnan(self.shutdown):
                raise ValueError(f"expected shutdown >= 0 seconds, got {self.shutdown}")
        if self.significant and self.restart is Restart.PERMANENT:
            raise ValueError(
                "a significant child cannot be permanent (bad_combination): "
                "use Restart.TRANSIENT or Restart.TEMPORARY"
            )


class Restarting(enum.Enum):
    """The ``restarting`` marker ``which_children`` shows for a child in a failing restart loop."""

    RESTARTING = "restarting"


RESTARTING = Restarting.RESTARTING


@dataclass(frozen=True, slots=True)
class ChildInfo:
    """One row of ``which_children``: ``{Id, Child, Type, Modules}``.

    ``pid`` is the running child's pid, ``RESTARTING``, or None (``undefined``: not running).
    ``id`` is None for a DynamicSupervisor's children, as in Elixir.
    """

    id: Hashable | None
    pid: Pid | Restarting | None
    type: ChildType
    modules: tuple[str, ...] = ()
    """The child spec's ``modules``: what the child runs (``("LetterSupervisor",)``)."""


@dataclass(frozen=True, slots=True)
class ChildCounts:
    """``count_children``: ``specs`` (all children), ``active`` (running), and by type."""

    specs: int
    active: int
    supervisors: int
    workers: int


@dataclass(frozen=True, slots=True)
class SupervisorInfo:
    """What :meth:`Supervisor.describe` tells of a supervisor (as ``sys:get_status`` would).

    ``restarts`` is the number of restarts in the current intensity window.
    """

    strategy: str
    max_restarts: int
    max_seconds: int
    restarts: int
    children: tuple[ChildInfo, ...]


# Requests every kind of supervisor answers, so that which_children / count_children / describe
# work on any of them, as supervisor:which_children/1 does in OTP.
class WhichChildrenRequest(Call[list[ChildInfo]]):
    __slots__ = ()


class CountChildrenRequest(Call[ChildCounts]):
    __slots__ = ()


class DescribeRequest(Call["SupervisorInfo"]):
    __slots__ = ()


def supervisor_child_spec(
    start_link: StartFunction, arg: Any, *, child_id: Hashable, name: object, restart: Restart
) -> ChildSpec:
    """The spec of a supervisor run under another: type supervisor, shutdown infinity.

    Shared by Supervisor, DynamicSupervisor and TaskSupervisor's ``child_spec`` (what
    ``use Supervisor`` generates).
    """
    start = start_link if name is None else functools.partial(start_link, name=name)
    return ChildSpec(
        id=child_id,
        start=start,
        args=(arg,),
        restart=restart,
        shutdown=math.inf,
        type=ChildType.SUPERVISOR,
    )


def _module_of(start: StartFunction) -> str:
    """The name of what ``start`` starts: the class of a bound ``start_link`` classmethod, else the
    start function's own name (OTP's module of the start ``{M, F, A}``)."""
    inner = getattr(start, "func", start)  # through a functools.partial
    owner = getattr(inner, "__self__", None)
    if isinstance(owner, type):
        return owner.__name__
    return str(getattr(inner, "__name__", type(inner).__name__))

"""Supervisor: a process that starts children, watches them, and restarts them when they fail.

A supervisor is given an ordered list of child specs. It starts them in that order (each start
returns only after the child's own ``init``), restarts them by its *strategy* when they exit, and
stops them in reverse order when it stops. If children fail too often (more than ``max_restarts``
in ``max_seconds``) it gives up: it stops every child and exits with ``shutdown``, and its own
supervisor takes it from there.

Example::

    children = [
        Database.child_spec(dsn),
        Registry.child_spec(keys=Keys.UNIQUE, name="sessions"),
        Cache.child_spec(size=1000),
    ]
    pid = await Supervisor.start_link(
        SupervisorSpec(children, strategy=Strategy.REST_FOR_ONE), name="app"
    )
    await Supervisor.which_children("app")
    await Supervisor.stop("app")

Module-based, as with ``use Supervisor``::

    class App(Supervisor):
        def init(self, arg: Config) -> SupervisorSpec:
            return SupervisorSpec([...], strategy=Strategy.ONE_FOR_ALL)

    await App.start_link(config, name="app")

Strategies:

- ``ONE_FOR_ONE``: only the failed child is restarted.
- ``ONE_FOR_ALL``: all other children are stopped (reverse order), then all are started again.
- ``REST_FOR_ONE``: the children started after the failed one are stopped (reverse order), then
  the failed one and those after it are started again. Use it when later children depend on
  earlier ones.

Restart types (``Restart.PERMANENT``/``TRANSIENT``/``TEMPORARY``) decide *whether* an exit is a
failure to act on; see :class:`ChildSpec`. A temporary child is never restarted, not even as a
bystander of a ``ONE_FOR_ALL`` restart; its spec is dropped.

Restart intensity: see :class:`RestartIntensity`. Defaults are Elixir's: 3 restarts in 5 s.

A child whose restart fails is marked ``RESTARTING`` and retried through the supervisor's own
mailbox, so calls keep being answered; every retry counts toward intensity, so a child that can
never start ends the supervisor instead of spinning.

Automatic shutdown (OTP 24): with ``auto_shutdown=ANY_SIGNIFICANT`` / ``ALL_SIGNIFICANT`` the
supervisor exits ``shutdown`` when a ``significant=True`` child ends by itself (a transient one
normally, a temporary one in any way). Stopping it with ``terminate_child``, or as a bystander,
does not count.

Deviations, and why:

- Durations are float seconds; the intensity window (``max_seconds``) is whole seconds, as OTP.
- ``start_child`` returns the pid (None for ``ignore``); errors are exceptions
  (:class:`AlreadyStartedError`, :class:`AlreadyPresentError`, :class:`StartError`...). There is
  no ``{ok, Pid, Info}``.
- Invalid specs and flags raise ``ValueError``/``TypeError`` when the spec is built, rather than
  becoming a ``{error, {start_spec, _}}`` at start.
- ``simple_one_for_one`` is not offered: use :class:`DynamicSupervisor`, as Elixir does.

See also: Elixir ``Supervisor``, Erlang ``supervisor(3)``.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Hashable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from mailman.supervisor import _events
from mailman.supervisor._call import Call
from mailman.supervisor._child_shutdown import is_clean_shutdown, shutdown_child
from mailman.supervisor._child_spec import (
    RESTARTING,
    ChildCounts,
    ChildInfo,
    ChildSpec,
    ChildType,
    CountChildrenRequest,
    DescribeRequest,
    Restart,
    SupervisorInfo,
    WhichChildrenRequest,
    supervisor_child_spec,
)
from mailman.supervisor._child_start import ChildStartFailure, FailedReply, start_spec, unwrap_reply
from mailman.supervisor._clock import INFINITY, Clock, MonotonicClock
from mailman.supervisor._exceptions import (
    AlreadyPresentError,
    AlreadyStartedError,
    ChildNotFoundError,
    ChildRestartingError,
    ChildRunningError,
)
from mailman.supervisor._exit_reason import SHUTDOWN, ExitReason, Shutdown, is_expected
from mailman.supervisor._gen_server import IGNORE, From, GenServer, Ignore, Init, NoReply, Reply, Stop
from mailman.supervisor._names import Name, ServerRef
from mailman.supervisor._process import ExitMessage, Pid, current_process, send, trap_exit
from mailman.supervisor._restart_intensity import RestartIntensity, validate_intensity
from mailman.supervisor._supervisor_queries import SupervisorQueries

__all__ = ["AutoShutdown", "FailedToStartChild", "Strategy", "Supervisor", "SupervisorSpec"]


class Strategy(enum.Enum):
    """How a supervisor reacts to one child's failure."""

    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"


class AutoShutdown(enum.Enum):
    """When significant children ending by themselves end the supervisor too (OTP 24)."""

    NEVER = "never"
    ANY_SIGNIFICANT = "any_significant"
    ALL_SIGNIFICANT = "all_significant"


@dataclass(frozen=True, slots=True)
class FailedToStartChild:
    """The detail of ``{shutdown, {failed_to_start_child, Id, Reason}}``: a child failed at boot."""

    id: Hashable
    reason: ExitReason

    def __str__(self) -> str:
        return f"{{failed_to_start_child, {self.id!r}, {self.reason}}}"


@dataclass(frozen=True, slots=True)
class SupervisorSpec:
    """What ``Supervisor.init/2`` returns: the children in start order and the flags."""

    children: Sequence[ChildSpec]
    _: KW_ONLY
    strategy: Strategy
    max_restarts: int = 3
    max_seconds: int = 5
    auto_shutdown: AutoShutdown = AutoShutdown.NEVER
    clock: Clock = field(default_factory=MonotonicClock)

    def __post_init__(self) -> None:
        if not isinstance(self.strategy, Strategy):
            raise TypeError(f"expected strategy to be a Strategy, got {self.strategy!r}")
        if not isinstance(self.auto_shutdown, AutoShutdown):
            raise TypeError(f"expected auto_shutdown to be an AutoShutdown, got {self.auto_shutdown!r}")
        validate_intensity(self.max_restarts, self.max_seconds)
        object.__setattr__(self, "children", tuple(self.children))
        seen: set[Hashable] = set()
        for spec in self.children:
            if not isinstance(spec, ChildSpec):
                raise TypeError(f"expected a ChildSpec, got {spec!r}")
            if spec.id in seen:
                raise ValueError(f"duplicate child id {spec.id!r} (duplicate_child_name)")
            seen.add(spec.id)
            _check_significant(spec, self.auto_shutdown)


def _check_significant(spec: ChildSpec, auto_shutdown: AutoShutdown) -> None:
    if spec.significant and auto_shutdown is AutoShutdown.NEVER:
        raise ValueError(f"child {spec.id!r} is significant but auto_shutdown is NEVER (bad_combination)")


class _Child:
    __slots__ = ("id", "pid", "restarting", "spec")

    def __init__(self, spec: ChildSpec) -> None:
        self.id = spec.id
        self.spec = spec
        self.pid: Pid | None = None
        self.restarting = False


# Requests to the supervisor process (its private protocol).
@dataclass(frozen=True, slots=True)
class _StartChild(Call["Pid | None | FailedReply"]):
    spec: ChildSpec


@dataclass(frozen=True, slots=True)
class _TerminateChild(Call["None | FailedReply"]):
    child: Hashable


@dataclass(frozen=True, slots=True)
class _RestartChild(Call["Pid | None | FailedReply"]):
    id: Hashable


@dataclass(frozen=True, slots=True)
class _DeleteChild(Call["None | FailedReply"]):
    id: Hashable


@dataclass(frozen=True, slots=True)
class _GetChildSpec(Call["ChildSpec | FailedReply"]):
    id: Hashable


@dataclass(frozen=True, slots=True)
class _TryAgainRestart:
    id: Hashable


class Supervisor(SupervisorQueries):
    """Starts children in order, restarts them by strategy, stops them in reverse order."""

    # ---------------------------------------------------------------- callback

    def init(self, arg: Any) -> SupervisorSpec | Ignore:
        """Return the children and flags. Default: ``arg`` is already a :class:`SupervisorSpec`."""
        if not isinstance(arg, SupervisorSpec):
            raise TypeError(
                f"expected a SupervisorSpec, got {type(arg).__name__}; "
                "pass SupervisorSpec(children, strategy=...) or override init()"
            )
        return arg

    # ---------------------------------------------------------------- starting

    @classmethod
    async def start_link(cls, arg: Any = None, *, name: Name | None = None) -> Pid:
        """Start the supervisor linked to the caller, and all its children, in order.

        Raises :class:`StartError`; a child that fails to start gives the reason
        ``Shutdown(FailedToStartChild(id, reason))``, after the children already started were
        stopped in reverse order.
        """
        return await _SupervisorServer.start_link((cls(), arg), name=name)

    @classmethod
    def child_spec(
        cls,
        arg: Any = None,
        *,
        id: Hashable | None = None,  # noqa: A002 - the child spec field is called id
        name: Name | None = None,
        restart: Restart = Restart.PERMANENT,
    ) -> ChildSpec:
        """The spec to run this supervisor under another (type supervisor, shutdown infinity)."""
        child_id: Hashable = cls if id is None else id  # type: ignore[assignment]
        return supervisor_child_spec(cls.start_link, arg, child_id=child_id, name=name, restart=restart)

    # ---------------------------------------------------------------- client API

    @staticmethod
    async def start_child(supervisor: ServerRef, spec: ChildSpec) -> Pid | None:
        """Add a child at the end of the start order and start it; None if it returned ignore.

        Raises :class:`AlreadyStartedError` (the id runs), :class:`AlreadyPresentError` (the id
        exists, stopped) or :class:`StartError` (the spec is then not kept).
        """
        if not isinstance(spec, ChildSpec):
            raise TypeError(f"expected a ChildSpec, got {spec!r}")
        return unwrap_reply(await GenServer.call(supervisor, _StartChild(spec), INFINITY))

    @staticmethod
    async def terminate_child(supervisor: ServerRef, child_id: Hashable) -> None:
        """Stop a child per its shutdown value; its spec stays (unless temporary)."""
        unwrap_reply(await GenServer.call(supervisor, _TerminateChild(child_id), INFINITY))

    @staticmethod
    async def restart_child(supervisor: ServerRef, child_id: Hashable) -> Pid | None:
        """Start a stopped child again from its spec."""
        return unwrap_reply(await GenServer.call(supervisor, _RestartChild(child_id), INFINITY))

    @staticmethod
    async def delete_child(supervisor: ServerRef, child_id: Hashable) -> None:
        """Forget a stopped child's spec."""
        unwrap_reply(await GenServer.call(supervisor, _DeleteChild(child_id), INFINITY))

    @staticmethod
    async def get_childspec(supervisor: ServerRef, child_id: Hashable) -> ChildSpec:
        """The spec of a child, by id."""
        return unwrap_reply(await GenServer.call(supervisor, _GetChildSpec(child_id), INFINITY))


class _State:
    __slots__ = ("by_id", "by_pid", "children", "intensity", "spec")

    def __init__(self, spec: SupervisorSpec) -> None:
        self.spec = spec
        self.children: list[_Child] = []  # in start order
        self.by_id: dict[Hashable, _Child] = {}
        self.by_pid: dict[Pid, _Child] = {}
        self.intensity = RestartIntensity(spec.max_restarts, spec.max_seconds, spec.clock)


class _SupervisorServer(GenServer[_State]):
    """The supervisor process: a GenServer trapping exits, as ``supervisor.erl`` is."""

    async def init(self, arg: Any) -> Init[_State] | Ignore | Stop[_State]:
        module, module_arg = arg
        trap_exit(True)
        spec = module.init(module_arg)
        if isinstance(spec, Ignore):
            return IGNORE
        if not isinstance(spec, SupervisorSpec):
            raise TypeError(f"{type(module).__name__}.init must return a SupervisorSpec or IGNORE")
        state = _State(spec)
        for child_spec in spec.children:
            child = _Child(child_spec)
            try:
                pid = await start_spec(child_spec)
            except ChildStartFailure as failure:
                self._report(("supervisor", "child", "start_failed"), child, reason=failure.reason)
                await self._terminate_children(state, list(reversed(state.children)))
                return Stop(Shutdown(FailedToStartChild(child.id, failure.reason)))
            if pid is None and child_spec.restart is Restart.TEMPORARY:
                continue
            self._add(state, child, pid)
        return Init(state)

    # ---------------------------------------------------------------- requests

    async def handle_call(self, request: Any, from_: From, state: _State) -> Reply[_State]:
        match request:
            case _StartChild(spec):
                return Reply(await self._start_new_child(state, spec), state)
            case _TerminateChild(child_id):
                return Reply(await self._terminate_child(state, child_id), state)
            case _RestartChild(child_id):
                return Reply(await self._restart_child(state, child_id), state)
            case _DeleteChild(child_id):
                return Reply(self._delete_child(state, child_id), state)
            case WhichChildrenRequest():
                return Reply(_rows(state), state)
            case CountChildrenRequest():
                return Reply(_count(state.children), state)
            case DescribeRequest():
                info = SupervisorInfo(
                    strategy=state.spec.strategy.value,
                    max_restarts=state.spec.max_restarts,
                    max_seconds=state.spec.max_seconds,
                    restarts=len(state.intensity),
                    children=tuple(_rows(state)),
                )
                return Reply(info, state)
            case _GetChildSpec(child_id):
                child = state.by_id.get(child_id)
                return Reply(child.spec if child else FailedReply(ChildNotFoundError(child_id)), state)
        raise ValueError(f"unexpected supervisor request {request!r}")

    async def handle_info(self, message: Any, state: _State) -> NoReply[_State] | Stop[_State]:
        match message:
            case ExitMessage(pid, reason):
                child = state.by_pid.get(pid)
                if child is None:
                    return NoReply(state)  # not (or no longer) ours: OTP ignores it
                return await self._on_child_exit(state, child, reason)
            case _TryAgainRestart(child_id):
                child = state.by_id.get(child_id)
                if child is None or not child.restarting:
                    return NoReply(state)
                # Let other processes run before retrying: a start function that fails without
                # awaiting would otherwise loop here and starve callers (OTP's scheduler preempts).
                await asyncio.sleep(0)
                return await self._restart(state, child)
        return await super().handle_info(message, state)

    async def terminate(self, reason: ExitReason, state: _State) -> None:
        await self._terminate_children(state, list(reversed(state.children)))

    # ---------------------------------------------------------------- API internals

    async def _start_new_child(self, state: _State, spec: ChildSpec) -> Any:
        existing = state.by_id.get(spec.id)
        if existing is not None:
            if existing.pid is not None:
                return FailedReply(AlreadyStartedError(existing.pid))
            return FailedReply(AlreadyPresentError(spec.id))
        try:
            _check_significant(spec, state.spec.auto_shutdown)
        except ValueError as exc:
            return FailedReply(exc)
        child = _Child(spec)
        try:
            pid = await start_spec(spec)
        except ChildStartFailure as failure:
            self._report(("supervisor", "child", "start_failed"), child, reason=failure.reason)
            return FailedReply(failure.error)
        if pid is not None or spec.restart is not Restart.TEMPORARY:
            self._add(state, child, pid)
        return pid

    async def _terminate_child(self, state: _State, child_id: Hashable) -> Any:
        child = None if isinstance(child_id, Pid) else state.by_id.get(child_id)
        if child is None:
            return FailedReply(ChildNotFoundError(child_id))
        if child.pid is not None:
            await self._shutdown(state, child)
        child.restarting = False
        if child.spec.restart is Restart.TEMPORARY:
            self._remove(state, child)
        return None

    async def _restart_child(self, state: _State, child_id: Hashable) -> Any:
        child = state.by_id.get(child_id)
        if child is None:
            return FailedReply(ChildNotFoundError(child_id))
        if child.restarting:
            return FailedReply(ChildRestartingError(child_id))
        if child.pid is not None:
            return FailedReply(ChildRunningError(child_id))
        try:
            pid = await start_spec(child.spec)
        except ChildStartFailure as failure:
            self._report(("supervisor", "child", "start_failed"), child, reason=failure.reason)
            return FailedReply(failure.error)
        self._set_pid(state, child, pid)
        return pid

    def _delete_child(self, state: _State, child_id: Hashable) -> Any:
        child = state.by_id.get(child_id)
        if child is None:
            return FailedReply(ChildNotFoundError(child_id))
        if child.restarting:
            return FailedReply(ChildRestartingError(child_id))
        if child.pid is not None:
            return FailedReply(ChildRunningError(child_id))
        self._remove(state, child)
        return None

    # ---------------------------------------------------------------- restarts (supervisor.erl)

    async def _on_child_exit(
        self, state: _State, child: _Child, reason: ExitReason
    ) -> NoReply[_State] | Stop[_State]:
        """``do_restart``: act on an exit by the child's restart type."""
        self._report(("supervisor", "child", "exited"), child, reason=reason)
        self._set_pid(state, child, None)
        restart = child.spec.restart
        if restart is Restart.PERMANENT or (restart is Restart.TRANSIENT and not is_expected(reason)):
            return await self._restart(state, child)
        if restart is Restart.TEMPORARY:
            self._remove(state, child)
        if child.spec.significant and self._auto_shutdown_due(state):
            return Stop(SHUTDOWN, state)
        return NoReply(state)

    def _auto_shutdown_due(self, state: _State) -> bool:
        match state.spec.auto_shutdown:
            case AutoShutdown.ANY_SIGNIFICANT:
                return True
            case AutoShutdown.ALL_SIGNIFICANT:
                return not any(c.spec.significant and c.pid is not None for c in state.children)
        return False

    async def _restart(self, state: _State, child: _Child) -> NoReply[_State] | Stop[_State]:
        """``restart/2``: count the restart, then restart by strategy; on failure, try again."""
        if not state.intensity.add_restart():
            _events.execute(
                ("supervisor", "intensity", "exceeded"),
                {
                    "supervisor": self._me(),
                    "id": child.id,
                    "max_restarts": state.spec.max_restarts,
                    "max_seconds": state.spec.max_seconds,
                    "reason": "reached_max_restart_intensity",
                },
            )
            self._remove(state, child)
            return Stop(SHUTDOWN, state)
        child.restarting = False
        match state.spec.strategy:
            case Strategy.ONE_FOR_ONE:
                group = [child]
            case Strategy.REST_FOR_ONE:
                group = state.children[state.children.index(child) :]
            case Strategy.ONE_FOR_ALL:
                group = list(state.children)
        others = [c for c in reversed(group) if c is not child]
        await self._terminate_children(state, others)
        for member in [c for c in group if c.id in state.by_id]:
            if member.pid is not None:
                continue
            try:
                pid = await start_spec(member.spec)
            except ChildStartFailure as failure:
                self._report(("supervisor", "child", "start_failed"), member, reason=failure.reason)
                member.restarting = True
                send(self._me(), _TryAgainRestart(member.id))
                return NoReply(state)
            self._set_pid(state, member, pid)
            if pid is not None:
                self._report(("supervisor", "child", "restarted"), member)
        return NoReply(state)

    # ---------------------------------------------------------------- stopping children

    async def _terminate_children(self, state: _State, children: list[_Child]) -> None:
        """Stop ``children`` one by one in the given order; temporary ones are forgotten."""
        for child in children:
            if child.pid is not None:
                await self._shutdown(state, child)
            child.restarting = False
            if child.spec.restart is Restart.TEMPORARY:
                self._remove(state, child)

    async def _shutdown(self, state: _State, child: _Child) -> None:
        pid = child.pid
        assert pid is not None
        me = current_process()
        assert me is not None
        reason = await shutdown_child(me, pid, child.spec.shutdown)
        self._set_pid(state, child, None)
        self._report(("supervisor", "child", "exited"), child, pid=pid, reason=reason)
        permanent = child.spec.restart is Restart.PERMANENT
        if not is_clean_shutdown(reason, child.spec.shutdown, permanent):
            self._report(("supervisor", "shutdown_error"), child, pid=pid, reason=reason)

    # ---------------------------------------------------------------- bookkeeping

    def _add(self, state: _State, child: _Child, pid: Pid | None) -> None:
        state.children.append(child)
        state.by_id[child.id] = child
        self._set_pid(state, child, pid)
        if pid is not None:
            self._report(("supervisor", "child", "started"), child)

    def _set_pid(self, state: _State, child: _Child, pid: Pid | None) -> None:
        if child.pid is not None:
            state.by_pid.pop(child.pid, None)
        child.pid = pid
        if pid is not None:
            state.by_pid[pid] = child

    def _remove(self, state: _State, child: _Child) -> None:
        self._set_pid(state, child, None)
        if state.by_id.pop(child.id, None) is not None:
            state.children.remove(child)

    def _me(self) -> Pid:
        me = current_process()
        assert me is not None
        return me.pid

    def _report(self, event: tuple[str, ...], child: _Child, **extra: Any) -> None:
        metadata: dict[str, Any] = {"supervisor": self._me(), "id": child.id, "pid": child.pid}
        metadata.update(extra)
        _events.execute(event, metadata)


def _rows(state: _State) -> list[ChildInfo]:
    return [
        ChildInfo(c.id, RESTARTING if c.restarting else c.pid, c.spec.type, c.spec.modules)
        for c in reversed(state.children)
    ]


def _count(children: list[_Child]) -> ChildCounts:
    supervisors = sum(1 for c in children if c.spec.type is ChildType.SUPERVISOR)
    return ChildCounts(
        specs=len(children),
        active=sum(1 for c in children if c.pid is not None),
        supervisors=supervisors,
        workers=len(children) - supervisors,
    )

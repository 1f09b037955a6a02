"""DynamicSupervisor: a supervisor that starts with no children and adds them on demand.

Where a :class:`Supervisor` is given a fixed list of children, a DynamicSupervisor starts empty
and gets children through :meth:`DynamicSupervisor.start_child`, typically one per job, session or
connection. Its children have no order and no meaningful id;
they are addressed by pid, restarted one for one, and stopped all together at shutdown.

Example::

    await DynamicSupervisor.start_link(DynamicSupervisorSpec(max_children=100), name="jobs")
    pid = await DynamicSupervisor.start_child("jobs", JobRunner.child_spec(job_id))
    await DynamicSupervisor.terminate_child("jobs", pid)

Options (:class:`DynamicSupervisorSpec`):

- ``max_children``: how many children at most (``INFINITY`` by default); children waiting to be
  restarted count too. Past it, ``start_child`` raises :class:`MaxChildrenError`.
- ``extra_arguments``: prepended to every child's ``args`` at start and at restart, so that a
  supervisor can hand its children a shared handle.
- ``max_restarts`` / ``max_seconds``: restart intensity, as for :class:`Supervisor` (3 in 5 s).

Restart types work as in :class:`Supervisor`: a temporary child is never restarted, a transient
one only after an abnormal exit. A child whose restart fails is kept as ``RESTARTING`` (and still
counted against ``max_children``) and retried through the mailbox; a restart that returns
``ignore`` drops the child.

At shutdown every child gets the signal at the same time, and each is killed when its own shutdown
time runs out, as OTP's ``terminate_dynamic_children`` does.

Deviations: ``start_child`` returns None where Elixir returns ``:ignore``; errors are exceptions.

See also: Elixir ``DynamicSupervisor``, Erlang ``supervisor`` with ``simple_one_for_one``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from mailman.supervisor import _events
from mailman.supervisor._call import Call
from mailman.supervisor._child_shutdown import is_clean_shutdown, shutdown_child, shutdown_children
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
from mailman.supervisor._exceptions import ChildNotFoundError, MaxChildrenError
from mailman.supervisor._exit_reason import SHUTDOWN, ExitReason, is_expected
from mailman.supervisor._gen_server import (
    IGNORE,
    From,
    GenServer,
    Ignore,
    Init,
    NoReply,
    Reply,
    RequestId,
    Stop,
)
from mailman.supervisor._names import Name, ServerRef
from mailman.supervisor._process import ExitMessage, Pid, current_process, send, trap_exit
from mailman.supervisor._restart_intensity import RestartIntensity, validate_intensity
from mailman.supervisor._supervisor_queries import SupervisorQueries

__all__ = ["DynamicSupervisor", "DynamicSupervisorSpec", "request_start_child", "started_child"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DynamicSupervisorSpec:
    """The options of a DynamicSupervisor (what ``DynamicSupervisor.init/1`` returns)."""

    max_children: float = INFINITY
    extra_arguments: tuple[Any, ...] = ()
    max_restarts: int = 3
    max_seconds: int = 5
    clock: Clock = field(default_factory=MonotonicClock)

    def __post_init__(self) -> None:
        validate_intensity(self.max_restarts, self.max_seconds)
        if self.max_children != INFINITY and (
            isinstance(self.max_children, bool)
            or not isinstance(self.max_children, int)
            or self.max_children < 0
        ):
            raise ValueError(
                f"expected max_children to be an int >= 0 or INFINITY, got {self.max_children!r}"
            )
        if not isinstance(self.extra_arguments, tuple):
            raise TypeError(f"expected extra_arguments to be a tuple, got {self.extra_arguments!r}")


class _DynamicChild:
    __slots__ = ("restarting", "spec")

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.restarting = False


@dataclass(slots=True)
class _StartChild(Call["Pid | None | FailedReply"]):
    spec: ChildSpec


@dataclass(slots=True)
class _TerminateChild(Call["None | FailedReply"]):
    pid: Pid


@dataclass(slots=True)
class _TryAgainRestart:
    pid: Pid


class DynamicSupervisor(SupervisorQueries):
    """Supervises children started on demand, one for one."""

    def init(self, arg: Any) -> DynamicSupervisorSpec | Ignore:
        """Return the options. Default: ``arg`` (None means all defaults)."""
        if arg is None:
            return DynamicSupervisorSpec()
        if not isinstance(arg, DynamicSupervisorSpec):
            raise TypeError(f"expected a DynamicSupervisorSpec, got {type(arg).__name__}")
        return arg

    @classmethod
    async def start_link(cls, arg: Any = None, *, name: Name | None = None) -> Pid:
        """Start the supervisor, with no children, linked to the caller."""
        return await _DynamicSupervisorServer.start_link((cls(), arg), name=name)

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

    @staticmethod
    async def start_child(supervisor: ServerRef, spec: ChildSpec) -> Pid | None:
        """Start a child from ``spec`` (``extra_arguments`` first); None if it returned ignore.

        Raises :class:`MaxChildrenError` when full, :class:`StartError` when the start fails.
        """
        _check_dynamic_spec(spec)
        return unwrap_reply(await GenServer.call(supervisor, _StartChild(spec), INFINITY))

    @staticmethod
    async def terminate_child(supervisor: ServerRef, pid: Pid) -> None:
        """Stop the child ``pid`` per its shutdown value. :class:`ChildNotFoundError` if not ours."""
        unwrap_reply(await GenServer.call(supervisor, _TerminateChild(pid), INFINITY))


def _check_dynamic_spec(spec: ChildSpec) -> None:
    if not isinstance(spec, ChildSpec):
        raise TypeError(f"expected a ChildSpec, got {spec!r}")
    if spec.significant:
        # Elixir's {:error, {:invalid_significant, true}}: there is no auto_shutdown here.
        raise ValueError(
            "a DynamicSupervisor child cannot be significant (invalid_significant): "
            "use a Supervisor with auto_shutdown for significant children"
        )


def request_start_child(supervisor: ServerRef, spec: ChildSpec) -> RequestId[Pid | FailedReply | None]:
    """Ask for a child to be started without waiting (for the library's streams).

    :meth:`DynamicSupervisor.start_child` in two halves, as ``gen_server:send_request/2``: several
    requests sent before their replies are received are served in one turn of the supervisor.
    Collect each reply with :func:`started_child`.
    """
    _check_dynamic_spec(spec)
    return GenServer.send_request(supervisor, _StartChild(spec))


async def started_child(request: RequestId[Pid | FailedReply | None]) -> Pid | None:
    """The reply to :func:`request_start_child`: the pid, None if ignored; raises as ``start_child``."""
    return unwrap_reply(await GenServer.receive_response(request, INFINITY))


class _State:
    __slots__ = ("children", "intensity", "spec")

    def __init__(self, spec: DynamicSupervisorSpec) -> None:
        self.spec = spec
        self.children: dict[Pid, _DynamicChild] = {}
        self.intensity = RestartIntensity(spec.max_restarts, spec.max_seconds, spec.clock)


class _DynamicSupervisorServer(GenServer[_State]):
    """The DynamicSupervisor process."""

    async def init(self, arg: Any) -> Init[_State] | Ignore:
        module, module_arg = arg
        trap_exit(True)
        spec = module.init(module_arg)
        if isinstance(spec, Ignore):
            return IGNORE
        if not isinstance(spec, DynamicSupervisorSpec):
            raise TypeError(f"{type(module).__name__}.init must return a DynamicSupervisorSpec")
        return Init(_State(spec))

    async def handle_call(self, request: Any, from_: From, state: _State) -> Reply[_State]:
        match request:
            case _StartChild(spec):
                return Reply(await self._start_child(state, spec), state)
            case _TerminateChild(pid):
                return Reply(await self._terminate_child(state, pid), state)
            case WhichChildrenRequest():
                return Reply(_rows(state), state)
            case CountChildrenRequest():
                return Reply(_count(state.children), state)
            case DescribeRequest():
                info = SupervisorInfo(
                    strategy="one_for_one",
                    max_restarts=state.spec.max_restarts,
                    max_seconds=state.spec.max_seconds,
                    restarts=len(state.intensity),
                    children=tuple(_rows(state)),
                )
                return Reply(info, state)
        raise ValueError(f"unexpected dynamic supervisor request {request!r}")

    async def handle_info(self, message: Any, state: _State) -> NoReply[_State] | Stop[_State]:
        match message:
            case ExitMessage(pid, reason):
                child = state.children.get(pid)
                if child is None or child.restarting:
                    return NoReply(state)
                return await self._on_child_exit(state, pid, child, reason)
            case _TryAgainRestart(pid):
                child = state.children.get(pid)
                if child is None or not child.restarting:
                    return NoReply(state)
                await asyncio.sleep(0)  # let callers in between retries (see Supervisor)
                return await self._restart(state, pid, child)
        return await super().handle_info(message, state)

    async def terminate(self, reason: ExitReason, state: _State) -> None:
        me = current_process()
        assert me is not None
        live = [(pid, c.spec.shutdown) for pid, c in state.children.items() if not c.restarting]
        reasons = await shutdown_children(me, live)
        for pid, child in state.children.items():
            if pid in reasons:
                self._report(("supervisor", "child", "exited"), pid, reason=reasons[pid])
                clean = is_clean_shutdown(
                    reasons[pid], child.spec.shutdown, child.spec.restart is Restart.PERMANENT
                )
                if not clean:
                    self._report(("supervisor", "shutdown_error"), pid, reason=reasons[pid])
        state.children.clear()

    async def _start_child(self, state: _State, spec: ChildSpec) -> Any:
        if len(state.children) >= state.spec.max_children:
            return FailedReply(MaxChildrenError(int(state.spec.max_children)))
        try:
            pid = await start_spec(spec, state.spec.extra_arguments)
        except ChildStartFailure as failure:
            self._report(("supervisor", "child", "start_failed"), None, reason=failure.reason)
            return FailedReply(failure.error)
        if pid is not None:
            state.children[pid] = _DynamicChild(spec)
            self._report(("supervisor", "child", "started"), pid)
        return pid

    async def _terminate_child(self, state: _State, pid: Pid) -> Any:
        child = state.children.get(pid)
        if child is None:
            return FailedReply(ChildNotFoundError(pid))
        if not child.restarting:
            me = current_process()
            assert me is not None
            reason = await shutdown_child(me, pid, child.spec.shutdown)
            self._report(("supervisor", "child", "exited"), pid, reason=reason)
        del state.children[pid]
        return None

    async def _on_child_exit(
        self, state: _State, pid: Pid, child: _DynamicChild, reason: ExitReason
    ) -> NoReply[_State] | Stop[_State]:
        self._report(("supervisor", "child", "exited"), pid, reason=reason)
        restart = child.spec.restart
        if restart is Restart.PERMANENT or (restart is Restart.TRANSIENT and not is_expected(reason)):
            return await self._restart(state, pid, child)
        del state.children[pid]
        return NoReply(state)

    async def _restart(
        self, state: _State, old_pid: Pid, child: _DynamicChild
    ) -> NoReply[_State] | Stop[_State]:
        if not state.intensity.add_restart():
            _events.execute(
                ("supervisor", "intensity", "exceeded"),
                {
                    "supervisor": self._me(),
                    "pid": old_pid,
                    "max_restarts": state.spec.max_restarts,
                    "max_seconds": state.spec.max_seconds,
                    "reason": "reached_max_restart_intensity",
                },
            )
            del state.children[old_pid]
            return Stop(SHUTDOWN, state)
        try:
            pid = await start_spec(child.spec, state.spec.extra_arguments)
        except ChildStartFailure as failure:
            self._report(("supervisor", "child", "start_failed"), old_pid, reason=failure.reason)
            child.restarting = True
            send(self._me(), _TryAgainRestart(old_pid))
            return NoReply(state)
        del state.children[old_pid]
        child.restarting = False
        if pid is not None:
            state.children[pid] = child
            self._report(("supervisor", "child", "restarted"), pid)
        return NoReply(state)

    def _me(self) -> Pid:
        me = current_process()
        assert me is not None
        return me.pid

    def _report(self, event: tuple[str, ...], pid: Pid | None, **extra: Any) -> None:
        metadata: dict[str, Any] = {"supervisor": self._me(), "id": None, "pid": pid}
        metadata.update(extra)
        _events.execute(event, metadata)


def _rows(state: _State) -> list[ChildInfo]:
    return [
        ChildInfo(None, RESTARTING if c.restarting else pid, c.spec.type, c.spec.modules)
        for pid, c in state.children.items()
    ]


def _count(children: dict[Pid, _DynamicChild]) -> ChildCounts:
    supervisors = sum(1 for c in children.values() if c.spec.type is ChildType.SUPERVISOR)
    return ChildCounts(
        specs=len(children),
        active=sum(1 for c in children.values() if not c.restarting),
        supervisors=supervisors,
        workers=len(children) - supervisors,
    )

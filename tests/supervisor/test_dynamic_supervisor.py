"""Conformance tests for DynamicSupervisor, ported from Elixir's dynamic_supervisor_test.exs and the
simple_one_for_one cases of OTP's supervisor_SUITE.erl.

Test names follow Elixir's where a test is a port of one. Start functions that behave differently
on their first and later calls stand in for Elixir's ``current_module_worker([:restart, value])``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from mailman import supervisor as otp
from mailman.supervisor import (
    BRUTAL_KILL,
    INFINITY,
    KILL,
    KILLED,
    NORMAL,
    RESTARTING,
    SHUTDOWN,
    Abnormal,
    ChildCounts,
    ChildInfo,
    ChildNotFoundError,
    ChildSpec,
    ChildType,
    Crash,
    DynamicSupervisor,
    DynamicSupervisorSpec,
    ExitReason,
    From,
    GenServer,
    Ignore,
    Init,
    ManualClock,
    MaxChildrenError,
    NoReply,
    Pid,
    ProcessExit,
    Reply,
    Restart,
    Shutdown,
    StartError,
    StartIgnored,
    Stop,
)
from tests.supervisor.conftest import EventLog
from tests.supervisor.processes import ExitWith, StartedSupervisors, start_sleeper
from tests.supervisor.processes import wait_forever as sleeper

# ---------------------------------------------------------------------------- test children


@dataclass(frozen=True, kw_only=True, eq=False)
class ChildArgs:
    trap: bool = False
    block_terminate: bool = False
    exit_in_terminate: ExitReason | None = None


class Child(GenServer[ChildArgs]):
    """A GenServer child: optionally traps exits, and exits with a given reason when told to."""

    async def init(self, arg: ChildArgs) -> Init[ChildArgs]:
        if arg.trap:
            otp.trap_exit(True)
        return Init(arg)

    async def handle_call(self, request: Any, from_: From, state: ChildArgs) -> Reply[ChildArgs]:
        return Reply(request, state)

    async def handle_cast(self, request: Any, state: ChildArgs) -> NoReply[ChildArgs] | Stop[ChildArgs]:
        match request:
            case ExitWith(reason):
                return Stop(reason, state)
        raise ValueError(f"unexpected cast {request!r}")

    async def terminate(self, reason: ExitReason, state: ChildArgs) -> None:
        if state.block_terminate:
            await asyncio.Event().wait()
        if state.exit_in_terminate is not None:
            raise ProcessExit(state.exit_in_terminate)


def child(
    *, restart: Restart = Restart.PERMANENT, shutdown: float | otp.BrutalKill = 1.0, **options: Any
) -> ChildSpec:
    return ChildSpec(
        id="child", start=Child.start_link, args=(ChildArgs(**options),), restart=restart, shutdown=shutdown
    )


def sleepy_worker(**options: Any) -> ChildSpec:
    return ChildSpec(id="task", start=start_sleeper, **options)


class Starter:
    """A start function whose first call starts a sleeper and whose later calls do ``then``:
    Elixir's ``current_module_worker([:restart, value])``."""

    def __init__(self, then: str) -> None:
        self.then = then
        self.calls = 0

    async def __call__(self) -> Any:
        self.calls += 1
        if self.calls == 1 or self.then == "ok":
            return otp.spawn_link(sleeper)
        match self.then:
            case "ignore":
                raise StartIgnored()
            case "error":
                raise StartError(Abnormal("found"))
            case _:
                return self.then


def restart_as(then: str, restart: Restart = Restart.PERMANENT) -> ChildSpec:
    return ChildSpec(id="child", start=Starter(then), restart=restart)


# ---------------------------------------------------------------------------- helpers


async def end_child(pid: Pid, reason: ExitReason) -> None:
    """Make a child end with ``reason``: an exit signal from a third party (``assert_kill``), or by
    itself for ``normal`` (which a non-trapping process ignores as a signal)."""
    if reason == NORMAL:
        GenServer.cast(pid, ExitWith(reason))
    else:
        otp.exit(pid, KILL if reason == KILLED else reason)
    assert await otp.await_exit(pid, timeout=5) == reason


async def counts(sup: Pid) -> ChildCounts:
    return await DynamicSupervisor.count_children(sup)


class Sups(StartedSupervisors):
    kind = DynamicSupervisor

    async def start(self, **options: Any) -> Pid:
        options.setdefault("clock", ManualClock())
        pid = await DynamicSupervisor.start_link(DynamicSupervisorSpec(**options))
        self.pids.append(pid)
        return pid


@pytest.fixture
async def sups() -> AsyncIterator[Sups]:
    s = Sups()
    yield s
    await s.close()


# ---------------------------------------------------------------------------- start_link


class TestStartLink:
    async def test_starts_with_no_children(self, sups: Sups) -> None:
        """A DynamicSupervisor starts empty."""
        sup = await sups.start()
        assert await DynamicSupervisor.which_children(sup) == []
        assert await counts(sup) == ChildCounts(specs=0, active=0, supervisors=0, workers=0)

    async def test_none_means_default_options(self, sups: Sups) -> None:
        """``start_link()`` with no argument uses the defaults (Elixir's ``init([])``)."""
        sup = await DynamicSupervisor.start_link()
        sups.pids.append(sup)
        assert await DynamicSupervisor.which_children(sup) == []

    async def test_init_returning_ignore_raises_start_ignored(self) -> None:
        """``init`` returning IGNORE: no supervisor, ``StartIgnored``."""

        class Nothing(DynamicSupervisor):
            def init(self, arg: Any) -> Ignore:
                return otp.IGNORE

        with pytest.raises(StartIgnored):
            await Nothing.start_link()

    async def test_bad_init_return_gives_start_error(self) -> None:
        """``init`` returning something else than options fails the start (``bad_return``)."""
        with pytest.raises(StartError) as raised:
            await DynamicSupervisor.start_link({"strategy": "one_for_one"})
        assert isinstance(raised.value.reason, Crash)

    async def test_with_registered_name(self, sups: Sups) -> None:
        """ "with registered process": a named supervisor answers by name and stops by name."""
        sup = await DynamicSupervisor.start_link(DynamicSupervisorSpec(), name="dyn")
        assert otp.whereis("dyn") == sup
        await DynamicSupervisor.stop("dyn")
        assert otp.exit_reason(sup) == NORMAL


class TestOptions:
    def test_defaults(self) -> None:
        """ "set default options": 3 restarts in 5 s, no max_children, no extra arguments."""
        spec = DynamicSupervisorSpec()
        assert (spec.max_restarts, spec.max_seconds, spec.max_children, spec.extra_arguments) == (
            3,
            5,
            INFINITY,
            (),
        )

    @pytest.mark.parametrize(
        ("options", "error"),
        [
            pytest.param({"max_children": -1}, ValueError, id="negative-max-children"),
            pytest.param({"max_children": 1.5}, ValueError, id="fractional-max-children"),
            pytest.param({"max_children": True}, ValueError, id="bool-max-children"),
            pytest.param({"extra_arguments": [1]}, TypeError, id="list-extra-arguments"),
            pytest.param({"max_restarts": -1}, ValueError, id="negative-intensity"),
            pytest.param({"max_seconds": 0}, ValueError, id="zero-period"),
        ],
    )
    def test_invalid_options_are_rejected(self, options: dict[str, Any], error: type) -> None:
        """ "with non-ok init": invalid intensity, period, max_children, extra_arguments raise."""
        with pytest.raises(error):
            DynamicSupervisorSpec(**options)


# ---------------------------------------------------------------------------- start_child


class TestStartChild:
    async def test_returns_the_pid_of_a_running_child(self, sups: Sups) -> None:
        """start_child returns the new child's pid; which_children lists it with id None."""
        sup = await sups.start()
        pid = await DynamicSupervisor.start_child(sup, sleepy_worker())
        assert isinstance(pid, Pid)
        assert otp.is_alive(pid)
        assert await DynamicSupervisor.which_children(sup) == [
            ChildInfo(None, pid, ChildType.WORKER, ("start_sleeper",))
        ]

    async def test_ids_may_repeat(self, sups: Sups) -> None:
        """The spec id is ignored: the same spec starts as many children as asked."""
        sup = await sups.start()
        spec = sleepy_worker()
        first = await DynamicSupervisor.start_child(sup, spec)
        second = await DynamicSupervisor.start_child(sup, spec)
        assert first != second
        assert await counts(sup) == ChildCounts(specs=2, active=2, supervisors=0, workers=2)

    async def test_with_max_children(self, sups: Sups) -> None:
        """ "with max_children": with max_children=0 start_child raises MaxChildrenError."""
        sup = await sups.start(max_children=0)
        with pytest.raises(MaxChildrenError) as raised:
            await DynamicSupervisor.start_child(sup, sleepy_worker())
        assert raised.value.max_children == 0

    async def test_max_children_counts_running_children(self, sups: Sups) -> None:
        """The limit is reached by running children: the third of max 2 is refused."""
        sup = await sups.start(max_children=2)
        await DynamicSupervisor.start_child(sup, sleepy_worker())
        await DynamicSupervisor.start_child(sup, sleepy_worker())
        with pytest.raises(MaxChildrenError):
            await DynamicSupervisor.start_child(sup, sleepy_worker())
        assert (await counts(sup)).active == 2

    async def test_ignore_returns_none_and_stores_nothing(self, sups: Sups) -> None:
        """sup_start_ignore_*_simple: a child returning ignore gives None and is not kept."""

        async def ignore() -> Pid:
            raise StartIgnored()

        sup = await sups.start()
        assert await DynamicSupervisor.start_child(sup, ChildSpec(id="x", start=ignore)) is None
        assert await DynamicSupervisor.which_children(sup) == []

    async def test_supports_extra_arguments(self, sups: Sups) -> None:
        """ "supports extra arguments": ``extra_arguments`` come before the spec's own args."""
        calls: list[tuple[Any, ...]] = []

        async def start(*args: Any) -> Pid:
            calls.append(args)
            return otp.spawn_link(sleeper)

        sup = await sups.start(extra_arguments=("extra1", "extra2"))
        await DynamicSupervisor.start_child(sup, ChildSpec(id="x", start=start, args=("own",)))
        assert calls == [("extra1", "extra2", "own")]

    @pytest.mark.parametrize(
        ("behaviour", "reason"),
        [
            pytest.param("error", Abnormal("found"), id="error"),
            pytest.param("exit", Abnormal("oops"), id="exit"),
            pytest.param("unknown", Abnormal(("bad_return_value", "unknown")), id="unknown"),
        ],
    )
    async def test_with_different_returns(self, sups: Sups, behaviour: str, reason: ExitReason) -> None:
        """ "with different returns" / "with throw/error/exit": the failure reason comes back in
        StartError unchanged (A47) and nothing is stored."""

        async def start() -> Any:
            match behaviour:
                case "error":
                    raise StartError(Abnormal("found"))
                case "exit":
                    raise ProcessExit(Abnormal("oops"))
            return "unknown"

        sup = await sups.start()
        with pytest.raises(StartError) as raised:
            await DynamicSupervisor.start_child(sup, ChildSpec(id="x", start=start))
        assert raised.value.reason == reason
        assert (await counts(sup)).specs == 0

    async def test_raising_start_function_gives_crash(self, sups: Sups) -> None:
        """ "with throw/error/exit": an exception in the start function is ``Crash(exception)``."""
        boom = RuntimeError("oops")

        async def start() -> Pid:
            raise boom

        sup = await sups.start()
        with pytest.raises(StartError) as raised:
            await DynamicSupervisor.start_child(sup, ChildSpec(id="x", start=start))
        assert raised.value.reason == Crash(boom)

    async def test_significant_child_is_rejected(self, sups: Sups) -> None:
        """A63: a DynamicSupervisor has no auto_shutdown, so a significant child is invalid."""
        sup = await sups.start()
        spec = ChildSpec(id="x", start=start_sleeper, restart=Restart.TEMPORARY, significant=True)
        with pytest.raises(ValueError, match="significant"):
            await DynamicSupervisor.start_child(sup, spec)
        assert (await counts(sup)).specs == 0

    async def test_non_spec_raises_type_error(self, sups: Sups) -> None:
        """start_child refuses anything but a ChildSpec."""
        sup = await sups.start()
        with pytest.raises(TypeError, match="ChildSpec"):
            await DynamicSupervisor.start_child(sup, ("x", start_sleeper))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- restarts


EXPECTED = [
    pytest.param(NORMAL, id="normal"),
    pytest.param(SHUTDOWN, id="shutdown"),
    pytest.param(Shutdown("signal"), id="shutdown-signal"),
]
ABNORMAL = [pytest.param(Abnormal("whatever"), id="whatever"), pytest.param(KILLED, id="killed")]


class TestRestart:
    @pytest.mark.parametrize("reason", EXPECTED + ABNORMAL)
    async def test_temporary_child_is_not_restarted_regardless_of_reason(
        self, sups: Sups, reason: ExitReason
    ) -> None:
        """ "temporary child is not restarted regardless of reason"."""
        sup = await sups.start()
        pid = await DynamicSupervisor.start_child(sup, child(restart=Restart.TEMPORARY))
        assert pid is not None
        await end_child(pid, reason)
        assert await counts(sup) == ChildCounts(specs=0, active=0, supervisors=0, workers=0)

    @pytest.mark.parametrize("reason", EXPECTED)
    async def test_transient_child_is_not_restarted_after_normal_or_shutdown(
        self, sups: Sups, reason: ExitReason
    ) -> None:
        """ "transient child is restarted unless normal/shutdown/{shutdown, _}": the unless part."""
        sup = await sups.start()
        pid = await DynamicSupervisor.start_child(sup, child(restart=Restart.TRANSIENT))
        assert pid is not None
        await end_child(pid, reason)
        assert await counts(sup) == ChildCounts(specs=0, active=0, supervisors=0, workers=0)

    @pytest.mark.parametrize("reason", ABNORMAL)
    async def test_transient_child_is_restarted_after_abnormal_exit(
        self, sups: Sups, reason: ExitReason
    ) -> None:
        """ "transient child is restarted unless normal/shutdown/{shutdown, _}": the restart part."""
        sup = await sups.start()
        pid = await DynamicSupervisor.start_child(sup, child(restart=Restart.TRANSIENT))
        assert pid is not None
        await end_child(pid, reason)
        (row,) = await DynamicSupervisor.which_children(sup)
        assert isinstance(row.pid, Pid)
        assert row.pid != pid
        assert await counts(sup) == ChildCounts(specs=1, active=1, supervisors=0, workers=1)

    async def test_permanent_child_is_restarted_regardless_of_reason(self, sups: Sups) -> None:
        """ "permanent child is restarted regardless of reason": shutdown, {shutdown,_}, whatever."""
        sup = await sups.start(max_restarts=100_000)
        for expected, reason in enumerate([SHUTDOWN, Shutdown("signal"), Abnormal("whatever")], start=1):
            pid = await DynamicSupervisor.start_child(sup, child())
            assert pid is not None
            await end_child(pid, reason)
            assert await counts(sup) == ChildCounts(
                specs=expected, active=expected, supervisors=0, workers=expected
            )

    async def test_only_the_crashed_child_is_restarted(self, sups: Sups) -> None:
        """simple_one_for_one: the sibling keeps its pid when one child crashes."""
        sup = await sups.start()
        first = await DynamicSupervisor.start_child(sup, sleepy_worker())
        second = await DynamicSupervisor.start_child(sup, sleepy_worker())
        assert first is not None
        await end_child(first, Abnormal("died"))
        pids = {row.pid for row in await DynamicSupervisor.which_children(sup)}
        assert second in pids
        assert first not in pids
        assert len(pids) == 2

    async def test_child_is_restarted_with_different_values(self, sups: Sups) -> None:
        """ "child is restarted with different values": a restart may start, ignore (dropped), fail
        (RESTARTING, counted in specs not active) or return garbage (RESTARTING too)."""
        sup = await sups.start(max_restarts=10**9)

        child1 = await DynamicSupervisor.start_child(sup, restart_as("ok"))
        assert await DynamicSupervisor.which_children(sup) == [
            ChildInfo(None, child1, ChildType.WORKER, restart_as("ok").modules)
        ]
        assert child1 is not None
        await end_child(child1, SHUTDOWN)
        assert await counts(sup) == ChildCounts(specs=1, active=1, supervisors=0, workers=1)

        child2 = await DynamicSupervisor.start_child(sup, restart_as("ok"))
        assert child2 is not None
        await end_child(child2, SHUTDOWN)
        assert await counts(sup) == ChildCounts(specs=2, active=2, supervisors=0, workers=2)

        child3 = await DynamicSupervisor.start_child(sup, restart_as("ignore"))
        assert len(await DynamicSupervisor.which_children(sup)) == 3
        assert child3 is not None
        await end_child(child3, SHUTDOWN)
        assert await counts(sup) == ChildCounts(specs=2, active=2, supervisors=0, workers=2)

        child4 = await DynamicSupervisor.start_child(sup, restart_as("error"))
        assert child4 is not None
        await end_child(child4, SHUTDOWN)
        assert await counts(sup) == ChildCounts(specs=3, active=2, supervisors=0, workers=3)

        child5 = await DynamicSupervisor.start_child(sup, restart_as("unknown"))
        assert child5 is not None
        await end_child(child5, SHUTDOWN)
        assert await counts(sup) == ChildCounts(specs=4, active=2, supervisors=0, workers=4)
        rows = await DynamicSupervisor.which_children(sup)
        assert [row.pid for row in rows].count(RESTARTING) == 2
        assert all(row.id is None and row.type is ChildType.WORKER for row in rows)

    async def test_restart_returning_ignore_drops_the_child(self, sups: Sups) -> None:
        """simple_one_for_one_restart_ignore: a restart that returns ignore removes the child."""
        sup = await sups.start()
        pid = await DynamicSupervisor.start_child(sup, restart_as("ignore", Restart.TRANSIENT))
        assert pid is not None
        await end_child(pid, Abnormal("died"))
        assert await DynamicSupervisor.which_children(sup) == []

    async def test_restarting_on_init_children_counted_in_max_children(self, sups: Sups) -> None:
        """ "restarting on init children counted in max_children": a RESTARTING child holds its slot."""
        sup = await sups.start(max_children=1, max_restarts=10**9)
        pid = await DynamicSupervisor.start_child(sup, restart_as("error"))
        assert pid is not None
        await end_child(pid, SHUTDOWN)
        assert await counts(sup) == ChildCounts(specs=1, active=0, supervisors=0, workers=1)
        with pytest.raises(MaxChildrenError):
            await DynamicSupervisor.start_child(sup, restart_as("ok"))

    async def test_restarting_on_exit_children_counted_in_max_children(self, sups: Sups) -> None:
        """ "restarting on exit children counted in max_children": the restarted child holds its slot."""
        sup = await sups.start(max_children=1, max_restarts=100_000)
        pid = await DynamicSupervisor.start_child(sup, restart_as("ok"))
        assert pid is not None
        await end_child(pid, SHUTDOWN)
        assert await counts(sup) == ChildCounts(specs=1, active=1, supervisors=0, workers=1)
        with pytest.raises(MaxChildrenError):
            await DynamicSupervisor.start_child(sup, restart_as("ok"))

    async def test_restarting_a_child_with_extra_arguments_successfully_restarts_child(
        self, sups: Sups, events: EventLog
    ) -> None:
        """ "restarting a child with extra_arguments successfully restarts child": extra arguments are
        prepended again at restart."""
        calls: list[tuple[Any, ...]] = []

        async def start(*args: Any) -> Pid:
            calls.append(args)
            return otp.spawn_link(sleeper)

        sup = await sups.start(extra_arguments=("fun",))
        spec = ChildSpec(id="task", start=start, args=("own",), restart=Restart.TRANSIENT)
        pid = await DynamicSupervisor.start_child(sup, spec)
        assert pid is not None
        assert await counts(sup) == ChildCounts(specs=1, active=1, supervisors=0, workers=1)
        await end_child(pid, Abnormal("oops"))
        await events.wait_for(("supervisor", "child", "restarted"))
        assert calls == [("fun", "own"), ("fun", "own")]
        assert await counts(sup) == ChildCounts(specs=1, active=1, supervisors=0, workers=1)

    async def test_child_is_restarted_when_trying_again(self, sups: Sups, events: EventLog) -> None:
        """ "child is restarted when trying again": a failed restart is retried through the mailbox."""
        attempts: list[bool] = []

        async def start() -> Pid:
            ok = len(attempts) != 1
            attempts.append(ok)
            if not ok:
                raise StartError(Abnormal("try_again"))
            return otp.spawn_link(sleeper)

        sup = await sups.start(max_restarts=2)
        pid = await DynamicSupervisor.start_child(sup, ChildSpec(id="x", start=start))
        assert attempts == [True]
        assert pid is not None
        await end_child(pid, SHUTDOWN)
        restarted = await events.wait_for(("supervisor", "child", "restarted"))
        assert attempts == [True, False, True]
        assert await DynamicSupervisor.which_children(sup) == [
            ChildInfo(None, restarted["pid"], ChildType.WORKER, ("start",))
        ]
        assert await counts(sup) == ChildCounts(specs=1, active=1, supervisors=0, workers=1)

    async def test_child_triggers_maximum_restarts(self, sups: Sups, events: EventLog) -> None:
        """ "child triggers maximum restarts": with max_restarts=1 a failing restart ends the
        supervisor with ``shutdown``."""
        sup = await sups.start(max_restarts=1)
        pid = await DynamicSupervisor.start_child(sup, restart_as("error"))
        assert pid is not None
        await end_child(pid, SHUTDOWN)
        assert await otp.await_exit(sup, timeout=5) == SHUTDOWN
        (exceeded,) = events.named("supervisor", "intensity", "exceeded")
        assert (exceeded["supervisor"], exceeded["pid"], exceeded["max_restarts"]) == (sup, pid, 1)

    async def test_child_triggers_maximum_intensity_when_trying_again(
        self, sups: Sups, events: EventLog
    ) -> None:
        """ "child triggers maximum intensity when trying again": every retry counts, so with 10
        restarts allowed there are exactly 10 failed attempts before the supervisor exits."""
        sup = await sups.start(max_restarts=10)
        pid = await DynamicSupervisor.start_child(sup, restart_as("error"))
        assert pid is not None
        await end_child(pid, SHUTDOWN)
        assert await otp.await_exit(sup, timeout=5) == SHUTDOWN
        assert len(events.named("supervisor", "child", "start_failed")) == 10

    async def test_giving_up_stops_the_other_children(self, sups: Sups) -> None:
        """simple_one_for_one_escalation: the siblings go down with the supervisor, ``shutdown``."""
        sup = await sups.start(max_restarts=0)
        sibling = await DynamicSupervisor.start_child(sup, sleepy_worker())
        pid = await DynamicSupervisor.start_child(sup, sleepy_worker())
        assert pid is not None
        assert sibling is not None
        await end_child(pid, Abnormal("died"))
        assert await otp.await_exit(sup, timeout=5) == SHUTDOWN
        assert otp.exit_reason(sibling) == SHUTDOWN

    async def test_restart_older_than_the_window_is_forgotten(self, sups: Sups) -> None:
        """The intensity window is OTP's: one second past ``max_seconds`` a restart no longer counts."""
        clock = ManualClock()
        sup = await sups.start(max_restarts=1, max_seconds=5, clock=clock)
        await DynamicSupervisor.start_child(sup, sleepy_worker())
        for _ in range(3):
            (row,) = await DynamicSupervisor.which_children(sup)
            assert isinstance(row.pid, Pid)
            await end_child(row.pid, Abnormal("died"))
            clock.advance(6)
        assert (await counts(sup)).active == 1

    async def test_restart_at_the_window_edge_still_counts(self, sups: Sups) -> None:
        """A restart exactly ``max_seconds`` old still counts: the second crash ends the supervisor."""
        clock = ManualClock()
        sup = await sups.start(max_restarts=1, max_seconds=5, clock=clock)
        pid = await DynamicSupervisor.start_child(sup, sleepy_worker())
        assert pid is not None
        await end_child(pid, Abnormal("died"))
        clock.advance(5)
        (row,) = await DynamicSupervisor.which_children(sup)
        assert isinstance(row.pid, Pid)
        await end_child(row.pid, Abnormal("died"))
        assert await otp.await_exit(sup, timeout=5) == SHUTDOWN


# ---------------------------------------------------------------------------- terminate_child


class TestTerminateChild:
    async def test_terminates_child_with_brutal_kill(self, sups: Sups) -> None:
        """ "terminates child with brutal kill": the child ends ``killed``; its pid is then unknown."""
        sup = await sups.start()
        pid = await DynamicSupervisor.start_child(sup, sleepy_worker(shutdown=BRUTAL_KILL))
        assert pid is not None
        await DynamicSupervisor.terminate_child(sup, pid)
        assert otp.exit_reason(pid) == KILLED
        with pytest.raises(ChildNotFoundError):
            await DynamicSupervisor.terminate_child(sup, pid)
        assert await counts(sup) == ChildCounts(specs=0, active=0, supervisors=0, workers=0)

    async def test_terminates_child_with_integer_shutdown(self, sups: Sups) -> None:
        """ "terminates child with integer shutdown": the child ends ``shutdown``."""
        sup = await sups.start()
        pid = await DynamicSupervisor.start_child(sup, sleepy_worker(shutdown=1.0))
        assert pid is not None
        await DynamicSupervisor.terminate_child(sup, pid)
        assert otp.exit_reason(pid) == SHUTDOWN
        assert await counts(sup) == ChildCounts(specs=0, active=0, supervisors=0, workers=0)

    async def test_terminated_child_is_not_restarted(self, sups: Sups) -> None:
        """A permanent child stopped with terminate_child is gone, not restarted."""
        sup = await sups.start()
        pid = await DynamicSupervisor.start_child(sup, child())
        assert pid is not None
        await DynamicSupervisor.terminate_child(sup, pid)
        assert await DynamicSupervisor.which_children(sup) == []

    async def test_unknown_pid_raises_not_found(self, sups: Sups) -> None:
        """child_adm_simple: a live process that is not a child -> ChildNotFoundError, left alone."""
        sup = await sups.start()
        stranger = otp.spawn(sleeper)
        try:
            with pytest.raises(ChildNotFoundError) as raised:
                await DynamicSupervisor.terminate_child(sup, stranger)
            assert raised.value.child == stranger
            assert otp.is_alive(stranger)
        finally:
            otp.exit(stranger, KILL)

    async def test_terminates_restarting_child(self, sups: Sups) -> None:
        """ "terminates restarting child": a RESTARTING child is removed by its old pid."""
        sup = await sups.start(max_restarts=10**9)
        pid = await DynamicSupervisor.start_child(sup, restart_as("error"))
        assert pid is not None
        await end_child(pid, SHUTDOWN)
        assert [row.pid for row in await DynamicSupervisor.which_children(sup)] == [RESTARTING]
        await DynamicSupervisor.terminate_child(sup, pid)
        with pytest.raises(ChildNotFoundError):
            await DynamicSupervisor.terminate_child(sup, pid)
        assert await counts(sup) == ChildCounts(specs=0, active=0, supervisors=0, workers=0)


# ---------------------------------------------------------------------------- shutdown


async def start_children(sup: Pid, *specs: ChildSpec) -> list[Pid]:
    pids = []
    for spec in specs:
        pid = await DynamicSupervisor.start_child(sup, spec)
        assert pid is not None
        pids.append(pid)
    return pids


class TestStop:
    async def test_terminates_children_with_brutal_kill(self, sups: Sups) -> None:
        """ "terminates children with brutal kill": every child ends ``killed``."""
        sup = await sups.start()
        pids = await start_children(sup, *[sleepy_worker(shutdown=BRUTAL_KILL)] * 3)
        await DynamicSupervisor.stop(sup, SHUTDOWN)
        assert [otp.exit_reason(p) for p in pids] == [KILLED] * 3
        assert otp.exit_reason(sup) == SHUTDOWN

    async def test_terminates_children_with_infinity_shutdown(self, sups: Sups) -> None:
        """ "terminates children with infinity shutdown": every child ends ``shutdown``."""
        sup = await sups.start()
        pids = await start_children(sup, *[sleepy_worker(shutdown=INFINITY)] * 3)
        await DynamicSupervisor.stop(sup, SHUTDOWN)
        assert [otp.exit_reason(p) for p in pids] == [SHUTDOWN] * 3

    async def test_terminates_children_with_infinity_shutdown_and_abnormal_reason(self, sups: Sups) -> None:
        """ "... infinity shutdown and abnormal reason": a trapping child's own reason is kept."""
        sup = await sups.start()
        spec = child(trap=True, shutdown=INFINITY, exit_in_terminate=Shutdown("oops"))
        pids = await start_children(sup, spec, spec, spec)
        await DynamicSupervisor.stop(sup, SHUTDOWN)
        assert [otp.exit_reason(p) for p in pids] == [Shutdown("oops")] * 3

    async def test_terminates_children_with_integer_shutdown(self, sups: Sups) -> None:
        """ "terminates children with integer shutdown": every child ends ``shutdown``."""
        sup = await sups.start()
        pids = await start_children(sup, *[sleepy_worker(shutdown=1.0)] * 3)
        await DynamicSupervisor.stop(sup, SHUTDOWN)
        assert [otp.exit_reason(p) for p in pids] == [SHUTDOWN] * 3

    async def test_terminates_children_with_integer_shutdown_and_abnormal_reason(self, sups: Sups) -> None:
        """ "... integer shutdown and abnormal reason": a trapping child's own reason is kept."""
        sup = await sups.start()
        spec = child(trap=True, shutdown=1.0, exit_in_terminate=Shutdown("oops"))
        pids = await start_children(sup, spec, spec, spec)
        await DynamicSupervisor.stop(sup, SHUTDOWN)
        assert [otp.exit_reason(p) for p in pids] == [Shutdown("oops")] * 3

    async def test_terminates_children_with_expired_integer_shutdown(self, sups: Sups) -> None:
        """ "terminates children with expired integer shutdown": only the child that does not stop in
        time is killed."""
        sup = await sups.start()
        pids = await start_children(
            sup,
            sleepy_worker(shutdown=0.01),
            child(trap=True, block_terminate=True, shutdown=0.01),
            sleepy_worker(shutdown=0.01),
        )
        await DynamicSupervisor.stop(sup, SHUTDOWN)
        assert [otp.exit_reason(p) for p in pids] == [SHUTDOWN, KILLED, SHUTDOWN]

    async def test_terminates_children_with_permanent_restart_and_normal_reason(self, sups: Sups) -> None:
        """ "... permanent restart and normal reason": children leaving ``normal`` at shutdown are not
        restarted and keep their reason."""
        sup = await sups.start()
        spec = child(trap=True, shutdown=INFINITY, exit_in_terminate=NORMAL)
        pids = await start_children(sup, spec, spec, spec)
        await DynamicSupervisor.stop(sup, SHUTDOWN)
        assert [otp.exit_reason(p) for p in pids] == [NORMAL] * 3
        assert otp.exit_reason(sup) == SHUTDOWN

    async def test_terminates_with_mixed_children(self, sups: Sups) -> None:
        """ "terminates with mixed children": infinity ends ``shutdown``, brutal_kill ``killed``."""
        sup = await sups.start()
        pids = await start_children(
            sup, sleepy_worker(shutdown=INFINITY), sleepy_worker(shutdown=BRUTAL_KILL)
        )
        await DynamicSupervisor.stop(sup, SHUTDOWN)
        assert [otp.exit_reason(p) for p in pids] == [SHUTDOWN, KILLED]

    async def test_children_are_stopped_concurrently(self, sups: Sups) -> None:
        """simple_one_for_one_shutdown: children are signalled together, so stopping three children
        that never stop takes the largest shutdown time (0.2 s), not the sum (0.4 s)."""
        sup = await sups.start()
        pids = await start_children(
            sup,
            child(trap=True, block_terminate=True, shutdown=0.1),
            child(trap=True, block_terminate=True, shutdown=0.1),
            child(trap=True, block_terminate=True, shutdown=0.2),
        )
        started = time.monotonic()
        await DynamicSupervisor.stop(sup, SHUTDOWN)
        elapsed = time.monotonic() - started
        assert [otp.exit_reason(p) for p in pids] == [KILLED] * 3
        assert 0.2 <= elapsed < 0.35

    async def test_restarting_child_is_not_waited_for(self, sups: Sups) -> None:
        """A RESTARTING child has no process: stopping the supervisor still completes."""
        sup = await sups.start(max_restarts=10**9)
        pid = await DynamicSupervisor.start_child(sup, restart_as("error"))
        running = await DynamicSupervisor.start_child(sup, sleepy_worker())
        assert pid is not None
        await end_child(pid, SHUTDOWN)
        await DynamicSupervisor.stop(sup, SHUTDOWN)
        assert otp.exit_reason(sup) == SHUTDOWN
        assert running is not None
        assert otp.exit_reason(running) == SHUTDOWN


# ---------------------------------------------------------------------------- introspection


class TestWhichChildren:
    async def test_rows_have_no_id_and_the_spec_type(self, sups: Sups) -> None:
        """which_children rows are ``(None, pid, type)``; a supervisor child counts as supervisor."""
        sup = await sups.start()
        worker = await DynamicSupervisor.start_child(sup, sleepy_worker())
        nested = await DynamicSupervisor.start_child(sup, DynamicSupervisor.child_spec(None, id="nested"))
        rows = await DynamicSupervisor.which_children(sup)
        assert sorted(rows, key=lambda r: r.type.value) == [
            ChildInfo(None, nested, ChildType.SUPERVISOR, ("DynamicSupervisor",)),
            ChildInfo(None, worker, ChildType.WORKER, ("start_sleeper",)),
        ]
        assert await counts(sup) == ChildCounts(specs=2, active=2, supervisors=1, workers=1)

    async def test_count_children_excludes_restarting_from_active(self, sups: Sups) -> None:
        """count_restarting_children: specs count a RESTARTING child, active does not."""
        sup = await sups.start(max_restarts=10**9)
        await start_children(sup, sleepy_worker(), sleepy_worker())
        pid = await DynamicSupervisor.start_child(sup, restart_as("error"))
        assert pid is not None
        await end_child(pid, SHUTDOWN)
        assert await counts(sup) == ChildCounts(specs=3, active=2, supervisors=0, workers=3)


class TestEvents:
    async def test_restart_is_reported_with_old_and_new_pid(self, sups: Sups, events: EventLog) -> None:
        """A restart reports ``exited`` (old pid, reason) then ``restarted`` (new pid), id None."""
        sup = await sups.start()
        pid = await DynamicSupervisor.start_child(sup, sleepy_worker())
        assert pid is not None
        await end_child(pid, Abnormal("died"))
        restarted = await events.wait_for(("supervisor", "child", "restarted"))
        (exited,) = events.named("supervisor", "child", "exited")
        assert (exited["supervisor"], exited["id"], exited["pid"], exited["reason"]) == (
            sup,
            None,
            pid,
            Abnormal("died"),
        )
        (row,) = await DynamicSupervisor.which_children(sup)
        assert restarted["pid"] == row.pid != pid

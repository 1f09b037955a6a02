"""Conformance tests for Supervisor, ported from OTP's supervisor_SUITE.erl and Elixir's tests.

Children are small GenServers (``Worker``) that record ``init`` and ``terminate`` in a shared list,
so that each test can assert the exact order in which a supervisor starts, stops and restarts
them. Tests synchronise on ``await_exit`` (after which the child's EXIT is already in the
supervisor's mailbox, ahead of any later call), on library events, and on a ManualClock for
intensity windows; never on sleeping.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pytest

from mailman import supervisor as otp
from mailman.supervisor import (
    BRUTAL_KILL,
    IGNORE,
    INFINITY,
    KILL,
    KILLED,
    NORMAL,
    RESTARTING,
    SHUTDOWN,
    Abnormal,
    AlreadyPresentError,
    AlreadyStartedError,
    AutoShutdown,
    ChildInfo,
    ChildNotFoundError,
    ChildRestartingError,
    ChildRunningError,
    ChildSpec,
    ChildType,
    Crash,
    ExitReason,
    FailedToStartChild,
    From,
    GenServer,
    Ignore,
    Init,
    ManualClock,
    NoProcessError,
    NoReply,
    Pid,
    ProcessExit,
    Reply,
    Restart,
    Shutdown,
    StartError,
    StartIgnored,
    Stop,
    Strategy,
    Supervisor,
    SupervisorSpec,
)
from tests.supervisor.conftest import EventLog
from tests.supervisor.processes import ExitWith, StartedSupervisors, start_sleeper
from tests.supervisor.processes import wait_forever as sleeper

# ---------------------------------------------------------------------------- test children

Log = list[tuple[str, str, Any]]


@dataclass(eq=False)
class StartGate:
    """While ``failures`` > 0, a Worker's ``init`` fails (``Stop(Abnormal("cannot_start"))``)."""

    failures: int = 0


CANNOT_START = Abnormal("cannot_start")


@dataclass(frozen=True, kw_only=True, eq=False)
class WorkerArgs:
    name: str
    log: Log
    trap: bool = False
    ignore: bool = False
    gate: StartGate | None = None
    on_terminate: Callable[[], Awaitable[None]] | None = None
    exit_in_terminate: ExitReason | None = None


class Worker(GenServer[WorkerArgs]):
    """A child that records its life in ``log`` and exits when told to."""

    async def init(self, arg: WorkerArgs) -> Init[WorkerArgs] | Ignore | Stop[WorkerArgs]:
        if arg.gate is not None and arg.gate.failures > 0:
            arg.gate.failures -= 1
            return Stop(CANNOT_START)
        if arg.ignore:
            return IGNORE
        if arg.trap:
            otp.trap_exit(True)
        arg.log.append(("init", arg.name, otp.self_pid()))
        return Init(arg)

    async def handle_call(self, request: Any, from_: From, state: WorkerArgs) -> Reply[WorkerArgs]:
        if request == "ping":
            return Reply("pong", state)
        raise ValueError(f"unexpected call {request!r}")

    async def handle_cast(self, request: Any, state: WorkerArgs) -> NoReply[WorkerArgs] | Stop[WorkerArgs]:
        match request:
            case ExitWith(reason):
                return Stop(reason, state)
        raise ValueError(f"unexpected cast {request!r}")

    async def terminate(self, reason: ExitReason, state: WorkerArgs) -> None:
        state.log.append(("terminate", state.name, reason))
        if state.on_terminate is not None:
            await state.on_terminate()
        if state.exit_in_terminate is not None:
            raise ProcessExit(state.exit_in_terminate)


def worker(
    name: str,
    log: Log,
    *,
    restart: Restart = Restart.PERMANENT,
    shutdown: float | otp.BrutalKill = 1.0,
    significant: bool = False,
    **options: Any,
) -> ChildSpec:
    return ChildSpec(
        id=name,
        start=Worker.start_link,
        args=(WorkerArgs(name=name, log=log, **options),),
        restart=restart,
        shutdown=shutdown,
        significant=significant,
    )


def block_forever() -> Callable[[], Awaitable[None]]:
    never = asyncio.Event()

    async def wait() -> None:
        await never.wait()

    return wait


# ---------------------------------------------------------------------------- helpers


def inits(log: Log, name: str | None = None) -> list[Pid]:
    return [pid for kind, who, pid in log if kind == "init" and (name is None or who == name)]


def lifecycle(log: Log) -> list[tuple[str, str]]:
    return [(kind, who) for kind, who, _ in log]


async def counts(sup: otp.ServerRef) -> list[int]:
    """``[specs, active, supervisors, workers]``, as supervisor_SUITE's ``get_child_counts``."""
    c = await Supervisor.count_children(sup)
    return [c.specs, c.active, c.supervisors, c.workers]


async def children(sup: otp.ServerRef) -> list[tuple[Hashable, Any]]:
    return [(row.id, row.pid) for row in await Supervisor.which_children(sup)]


async def child_pid(sup: otp.ServerRef, child_id: Hashable) -> Pid:
    for row in await Supervisor.which_children(sup):
        if row.id == child_id:
            assert isinstance(row.pid, Pid)
            return row.pid
    raise AssertionError(f"no child {child_id!r}")


async def end_child(pid: Pid, reason: ExitReason) -> None:
    """Make a child end with ``reason``: by itself, or killed by a third party for ``KILLED``."""
    if reason == KILLED:
        otp.exit(pid, KILL)
    else:
        GenServer.cast(pid, ExitWith(reason))
    assert await otp.await_exit(pid, timeout=5) == reason


DIED = Abnormal("died")


class Sups(StartedSupervisors):
    """Starts supervisors for a test (ManualClock by default) and stops whatever is left."""

    kind = Supervisor

    async def start(
        self, specs: Sequence[ChildSpec], strategy: Strategy = Strategy.ONE_FOR_ONE, **flags: Any
    ) -> Pid:
        flags.setdefault("clock", ManualClock())
        pid = await Supervisor.start_link(SupervisorSpec(specs, strategy=strategy, **flags))
        self.pids.append(pid)
        return pid


@pytest.fixture
async def sups() -> AsyncIterator[Sups]:
    s = Sups()
    yield s
    await s.close()


# ---------------------------------------------------------------------------- start_link


class TestStartLink:
    async def test_children_start_in_spec_order(self, sups: Sups) -> None:
        """Children start left to right, each after the previous one's ``init`` returned."""
        log: Log = []
        await sups.start([worker("a", log), worker("b", log), worker("c", log)])
        assert lifecycle(log) == [("init", "a"), ("init", "b"), ("init", "c")]

    async def test_start_link_returns_after_every_child_is_running(self, sups: Sups) -> None:
        """``start_link`` is synchronous: when it returns every child is alive."""
        log: Log = []
        await sups.start([worker("a", log), worker("b", log)])
        assert len(inits(log)) == 2
        assert all(otp.is_alive(pid) for pid in inits(log))

    async def test_which_children_lists_most_recently_started_first(self, sups: Sups) -> None:
        """``which_children`` is in termination order: ``[c, b, a]`` for children ``[a, b, c]``."""
        log: Log = []
        sup = await sups.start([worker("a", log), worker("b", log), worker("c", log)])
        a, b, c = inits(log)
        modules = worker("a", log).modules
        assert await Supervisor.which_children(sup) == [
            ChildInfo("c", c, ChildType.WORKER, modules),
            ChildInfo("b", b, ChildType.WORKER, modules),
            ChildInfo("a", a, ChildType.WORKER, modules),
        ]

    async def test_which_children_names_what_each_child_runs(self, sups: Sups) -> None:
        """Each row carries its spec's ``modules`` (OTP's ``Modules``): the class whose ``start_link``
        starts the child, else the start function's name, unless the spec names them itself."""
        nested = Supervisor.child_spec(SupervisorSpec([], strategy=Strategy.ONE_FOR_ONE), id="nested")
        named = dataclasses.replace(worker("w", []), modules=("Worker", "Helper"))
        sup = await sups.start([nested, named])
        rows = {row.id: row.modules for row in await Supervisor.which_children(sup)}
        assert rows == {"nested": ("Supervisor",), "w": ("Worker", "Helper")}

    async def test_start_with_no_children_and_stop_with_shutdown(self, sups: Sups) -> None:
        """sup_start_normal: an empty supervisor starts, and stops with reason ``shutdown``."""
        sup = await sups.start([])
        assert await counts(sup) == [0, 0, 0, 0]
        await Supervisor.stop(sup, SHUTDOWN)
        assert otp.exit_reason(sup) == SHUTDOWN

    async def test_start_link_registers_name(self, sups: Sups) -> None:
        """A supervisor started with ``name=`` answers calls by that name."""
        log: Log = []
        sup = await Supervisor.start_link(
            SupervisorSpec([worker("a", log)], strategy=Strategy.ONE_FOR_ONE), name="top"
        )
        sups.pids.append(sup)
        assert otp.whereis("top") == sup
        assert await children("top") == [("a", inits(log)[0])]

    async def test_module_based_supervisor_uses_its_init(self, sups: Sups) -> None:
        """A Supervisor subclass's ``init(arg)`` provides the spec, as ``use Supervisor`` does."""
        log: Log = []

        class App(Supervisor):
            def init(self, arg: Any) -> SupervisorSpec:
                return SupervisorSpec([worker(arg, log)], strategy=Strategy.ONE_FOR_ALL)

        sup = await App.start_link("only")
        sups.pids.append(sup)
        assert await children(sup) == [("only", inits(log)[0])]

    async def test_child_failing_at_boot_gives_failed_to_start_child(self, sups: Sups) -> None:
        """A boot failure makes ``start_link`` raise ``{shutdown, {failed_to_start_child, Id, R}}``."""
        log: Log = []
        specs = [worker("a", log), worker("b", log, gate=StartGate(1)), worker("c", log)]
        with pytest.raises(StartError) as raised:
            await sups.start(specs)
        assert raised.value.reason == Shutdown(FailedToStartChild("b", CANNOT_START))
        assert "c" not in [who for _, who, _ in log]

    async def test_boot_failure_stops_started_children_in_reverse_order(self, sups: Sups) -> None:
        """Children started before the failing one are shut down, last started first."""
        log: Log = []
        specs = [
            worker("a", log, trap=True),
            worker("b", log, trap=True),
            worker("c", log, gate=StartGate(1)),
        ]
        with pytest.raises(StartError):
            await sups.start(specs)
        a, b = inits(log)
        assert log[2:] == [("terminate", "b", SHUTDOWN), ("terminate", "a", SHUTDOWN)]
        assert (otp.exit_reason(a), otp.exit_reason(b)) == (SHUTDOWN, SHUTDOWN)

    async def test_child_ignoring_at_boot_is_kept_without_pid(self, sups: Sups) -> None:
        """A child whose init returns IGNORE keeps its spec with pid None (``undefined``)."""
        log: Log = []
        sup = await sups.start([worker("a", log, ignore=True), worker("b", log)])
        assert await children(sup) == [("b", inits(log)[0]), ("a", None)]
        assert await counts(sup) == [2, 1, 0, 2]

    async def test_temporary_child_ignoring_at_boot_is_not_kept(self, sups: Sups) -> None:
        """sup_start_ignore_temporary_child: a temporary child returning IGNORE leaves no spec."""
        log: Log = []
        specs = [
            worker("a", log, ignore=True, restart=Restart.TEMPORARY),
            worker("b", log, restart=Restart.TEMPORARY),
        ]
        sup = await sups.start(specs)
        assert await children(sup) == [("b", inits(log)[0])]
        assert await counts(sup) == [1, 1, 0, 1]

    async def test_init_returning_ignore_raises_start_ignored(self) -> None:
        """sup_start_ignore_init: the supervisor's own init returning IGNORE: no supervisor."""

        class Nothing(Supervisor):
            def init(self, arg: Any) -> Ignore:
                return IGNORE

        with pytest.raises(StartIgnored):
            await Nothing.start_link()

    async def test_init_raising_gives_start_error_with_the_crash(self) -> None:
        """sup_start_fail: init raising makes ``start_link`` raise StartError carrying the exception."""
        with pytest.raises(StartError) as raised:
            await Supervisor.start_link("not a spec")
        reason = raised.value.reason
        assert isinstance(reason, Crash)
        assert isinstance(reason.exception, TypeError)


# ---------------------------------------------------------------------------- stopping


class TestStop:
    async def test_children_are_stopped_in_reverse_start_order(self, sups: Sups) -> None:
        """order_of_children: stopping the supervisor stops ``c``, then ``b``, then ``a``."""
        log: Log = []
        sup = await sups.start([worker(n, log, trap=True) for n in "abc"])
        await Supervisor.stop(sup, SHUTDOWN)
        assert log[3:] == [
            ("terminate", "c", SHUTDOWN),
            ("terminate", "b", SHUTDOWN),
            ("terminate", "a", SHUTDOWN),
        ]
        assert otp.exit_reason(sup) == SHUTDOWN

    async def test_child_not_stopping_within_shutdown_timeout_is_killed(
        self, sups: Sups, events: EventLog
    ) -> None:
        """sup_stop_timeout: a child whose terminate blocks ends ``killed`` once its timeout runs out;
        a cooperative sibling ends ``shutdown``."""
        log: Log = []
        sup = await sups.start(
            [
                worker("polite", log, trap=True, shutdown=0.05),
                worker("stuck", log, trap=True, shutdown=0.05, on_terminate=block_forever()),
            ]
        )
        polite, stuck = inits(log)
        started = time.monotonic()
        await Supervisor.stop(sup, SHUTDOWN)
        assert time.monotonic() - started >= 0.05
        assert otp.exit_reason(stuck) == KILLED
        assert otp.exit_reason(polite) == SHUTDOWN
        assert [(m["id"], m["reason"]) for m in events.named("supervisor", "shutdown_error")] == [
            ("stuck", KILLED)
        ]

    async def test_brutal_kill_skips_terminate(self, sups: Sups) -> None:
        """sup_stop_brutal_kill: a brutal_kill child ends ``killed`` and its terminate never runs."""
        log: Log = []
        sup = await sups.start(
            [worker("gentle", log, trap=True), worker("brutal", log, trap=True, shutdown=BRUTAL_KILL)]
        )
        gentle, brutal = inits(log)
        await Supervisor.stop(sup, SHUTDOWN)
        assert otp.exit_reason(brutal) == KILLED
        assert otp.exit_reason(gentle) == SHUTDOWN
        assert [entry for entry in log if entry[0] == "terminate"] == [("terminate", "gentle", SHUTDOWN)]

    async def test_infinity_waits_for_the_child_to_finish(self, sups: Sups) -> None:
        """sup_stop_infinity: with INFINITY the supervisor waits as long as terminate takes; the child
        ends ``shutdown``, never ``killed``."""
        log: Log = []
        entered, release = asyncio.Event(), asyncio.Event()

        async def slow_cleanup() -> None:
            entered.set()
            await release.wait()

        sup = await sups.start([worker("slow", log, trap=True, shutdown=INFINITY, on_terminate=slow_cleanup)])
        (slow,) = inits(log)
        stopping = asyncio.ensure_future(Supervisor.stop(sup, SHUTDOWN))
        await entered.wait()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(stopping), 0.1)
        assert otp.is_alive(slow)
        release.set()
        await stopping
        assert otp.exit_reason(slow) == SHUTDOWN

    async def test_children_exiting_by_themselves_during_shutdown(self, sups: Sups, events: EventLog) -> None:
        """sup_stop_race: children leaving with their own reason while being stopped keep that
        reason; the supervisor still ends ``shutdown`` and reports the unclean ones."""
        log: Log = []
        sup = await sups.start(
            [
                worker("perm", log, trap=True, exit_in_terminate=NORMAL),
                worker(
                    "trans", log, trap=True, restart=Restart.TRANSIENT, exit_in_terminate=Shutdown("test")
                ),
                worker(
                    "temp", log, trap=True, restart=Restart.TEMPORARY, exit_in_terminate=Abnormal("other")
                ),
            ]
        )
        perm, trans, temp = inits(log)
        await Supervisor.stop(sup, SHUTDOWN)
        assert otp.exit_reason(sup) == SHUTDOWN
        assert (otp.exit_reason(perm), otp.exit_reason(trans), otp.exit_reason(temp)) == (
            NORMAL,
            Shutdown("test"),
            Abnormal("other"),
        )
        errors = [(m["id"], m["reason"]) for m in events.named("supervisor", "shutdown_error")]
        assert errors == [("temp", Abnormal("other")), ("perm", NORMAL)]

    async def test_child_already_dead_at_shutdown_reports_its_own_reason(
        self, sups: Sups, events: EventLog
    ) -> None:
        """A child that died while the supervisor stopped a later sibling is reported with the reason
        in its EXIT message, not waited for."""
        log: Log = []
        first: list[Pid] = []

        async def kill_first() -> None:
            otp.exit(first[0], Abnormal("gone"))
            await otp.await_exit(first[0])

        sup = await sups.start([worker("a", log), worker("b", log, trap=True, on_terminate=kill_first)])
        first.append(inits(log, "a")[0])
        await Supervisor.stop(sup, SHUTDOWN)
        exited = [(m["id"], m["reason"]) for m in events.named("supervisor", "child", "exited")]
        assert exited == [("b", SHUTDOWN), ("a", Abnormal("gone"))]
        assert otp.exit_reason(sup) == SHUTDOWN


# ---------------------------------------------------------------------------- strategies


class TestOneForOne:
    async def test_only_the_failed_child_is_restarted(self, sups: Sups) -> None:
        """one_for_one: the crashed child gets a new pid, its siblings keep theirs."""
        log: Log = []
        sup = await sups.start([worker(n, log) for n in "abc"])
        a, b, c = inits(log)
        await end_child(b, DIED)
        (b2,) = inits(log, "b")[1:]
        assert await children(sup) == [("c", c), ("b", b2), ("a", a)]
        assert b2 != b
        assert await counts(sup) == [3, 3, 0, 3]

    async def test_restart_emits_exited_then_restarted(self, sups: Sups, events: EventLog) -> None:
        """A restart is reported as ``exited`` (old pid, reason) then ``restarted`` (new pid)."""
        log: Log = []
        sup = await sups.start([worker("a", log)])
        (a,) = inits(log)
        await end_child(a, DIED)
        restarted = await events.wait_for(("supervisor", "child", "restarted"), id="a")
        exited = events.named("supervisor", "child", "exited")
        assert [(m["id"], m["pid"], m["reason"], m["supervisor"]) for m in exited] == [("a", a, DIED, sup)]
        assert restarted["pid"] == inits(log, "a")[1]


class TestOneForAll:
    async def test_others_stop_in_reverse_then_all_restart_in_order(self, sups: Sups) -> None:
        """one_for_all: after ``b`` crashes, ``c`` then ``a`` are stopped, then ``a, b, c`` start."""
        log: Log = []
        sup = await sups.start([worker(n, log, trap=True) for n in "abc"], Strategy.ONE_FOR_ALL)
        _, b, _ = inits(log)
        del log[:]
        await end_child(b, DIED)
        await counts(sup)
        assert log[:3] == [
            ("terminate", "b", DIED),
            ("terminate", "c", SHUTDOWN),
            ("terminate", "a", SHUTDOWN),
        ]
        assert lifecycle(log[3:]) == [("init", "a"), ("init", "b"), ("init", "c")]

    async def test_all_children_get_new_pids(self, sups: Sups) -> None:
        """one_for_all: no old child is still alive or listed after the restart."""
        log: Log = []
        sup = await sups.start([worker("a", log), worker("b", log)], Strategy.ONE_FOR_ALL)
        a, b = inits(log)
        await end_child(a, DIED)
        current = await children(sup)
        assert otp.exit_reason(b) == SHUTDOWN
        a2, b2 = inits(log)[2:]
        assert current == [("b", b2), ("a", a2)]
        assert {a2, b2}.isdisjoint({a, b})
        assert await counts(sup) == [2, 2, 0, 2]

    async def test_temporary_bystander_is_removed_not_restarted(self, sups: Sups) -> None:
        """temporary_bystander: a temporary sibling stopped by a one_for_all restart is dropped."""
        log: Log = []
        sup = await sups.start(
            [worker("a", log), worker("b", log, restart=Restart.TEMPORARY)],
            Strategy.ONE_FOR_ALL,
            max_restarts=2,
        )
        a, b = inits(log)
        await end_child(a, NORMAL)
        assert await children(sup) == [("a", inits(log, "a")[1])]
        assert otp.exit_reason(b) == SHUTDOWN
        assert inits(log, "b") == [b]

    async def test_child_stopped_by_terminate_child_is_started_again(self, sups: Sups) -> None:
        """tree / A9: a non-temporary child stopped with ``terminate_child`` comes back with the group."""
        log: Log = []
        sup = await sups.start([worker(n, log) for n in "abc"], Strategy.ONE_FOR_ALL)
        a, _, _ = inits(log)
        await Supervisor.terminate_child(sup, "c")
        await end_child(a, DIED)
        assert [who for who, pid in await children(sup) if isinstance(pid, Pid)] == ["c", "b", "a"]
        assert len(inits(log, "c")) == 2

    async def test_transient_child_exiting_normally_triggers_no_group_restart(self, sups: Sups) -> None:
        """A7: "failed" means "to be restarted": a transient child leaving ``normal`` touches no sibling."""
        log: Log = []
        sup = await sups.start(
            [worker("a", log), worker("b", log, restart=Restart.TRANSIENT), worker("c", log)],
            Strategy.ONE_FOR_ALL,
        )
        a, b, c = inits(log)
        await end_child(b, NORMAL)
        assert await children(sup) == [("c", c), ("b", None), ("a", a)]
        assert len(inits(log)) == 3

    async def test_group_restart_counts_once_toward_intensity(self, sups: Sups) -> None:
        """Restarting three children is one restart: with max_restarts=1 the first crash is tolerated,
        the second is not."""
        log: Log = []
        sup = await sups.start([worker(n, log) for n in "abc"], Strategy.ONE_FOR_ALL, max_restarts=1)
        await end_child(inits(log, "a")[0], DIED)
        assert await counts(sup) == [3, 3, 0, 3]
        await end_child(inits(log, "b")[1], DIED)
        assert await otp.await_exit(sup, timeout=5) == SHUTDOWN

    async def test_other_child_failing_restart_restarts_the_group_again(
        self, sups: Sups, events: EventLog
    ) -> None:
        """one_for_all_other_child_fails_restart: when ``b`` cannot start during the group restart, the
        already restarted ``a`` is shut down and the whole group is restarted again."""
        log: Log = []
        gate = StartGate()
        sup = await sups.start([worker("a", log), worker("b", log, gate=gate)], Strategy.ONE_FOR_ALL)
        a1, _ = inits(log)
        gate.failures = 1
        await end_child(a1, DIED)
        await events.wait_for(("supervisor", "child", "restarted"), id="b")
        a2, a3 = inits(log, "a")[1:]
        assert otp.exit_reason(a2) == SHUTDOWN
        assert await children(sup) == [("b", inits(log, "b")[1]), ("a", a3)]
        assert [m["id"] for m in events.named("supervisor", "child", "start_failed")] == ["b"]


class TestRestForOne:
    async def test_later_children_stop_in_reverse_then_restart_in_order(self, sups: Sups) -> None:
        """rest_for_one / order_of_children: ``b`` crashes: ``d`` then ``c`` stop; ``b, c, d`` start."""
        log: Log = []
        sup = await sups.start([worker(n, log, trap=True) for n in "abcd"], Strategy.REST_FOR_ONE)
        b = inits(log, "b")[0]
        del log[:]
        await end_child(b, DIED)
        await counts(sup)
        assert log[:3] == [
            ("terminate", "b", DIED),
            ("terminate", "d", SHUTDOWN),
            ("terminate", "c", SHUTDOWN),
        ]
        assert lifecycle(log[3:]) == [("init", "b"), ("init", "c"), ("init", "d")]

    async def test_earlier_children_are_untouched(self, sups: Sups) -> None:
        """rest_for_one: children started before the failed one keep their pids."""
        log: Log = []
        sup = await sups.start([worker(n, log) for n in "abc"], Strategy.REST_FOR_ONE)
        a, b, c = inits(log)
        await end_child(b, DIED)
        current = dict(await children(sup))
        assert current["a"] == a
        assert current["b"] not in {b, c}
        assert current["c"] not in {b, c}
        assert await counts(sup) == [3, 3, 0, 3]

    async def test_start_child_appends_to_the_start_order(self, sups: Sups) -> None:
        """Children added with ``start_child`` go last: crashing ``b`` restarts the later ``c`` only."""
        log: Log = []
        sup = await sups.start([worker("a", log)], Strategy.REST_FOR_ONE)
        await Supervisor.start_child(sup, worker("b", log))
        await Supervisor.start_child(sup, worker("c", log))
        a, b, c = inits(log)
        assert [who for who, _ in await children(sup)] == ["c", "b", "a"]
        await end_child(b, DIED)
        assert otp.exit_reason(c) == SHUTDOWN
        assert dict(await children(sup))["a"] == a
        assert len(inits(log, "c")) == 2

    async def test_temporary_bystander_is_removed_not_restarted(self, sups: Sups) -> None:
        """temporary_bystander: a later temporary child stopped by rest_for_one is dropped."""
        log: Log = []
        sup = await sups.start(
            [worker("a", log), worker("b", log, restart=Restart.TEMPORARY)],
            Strategy.REST_FOR_ONE,
            max_restarts=2,
        )
        a, b = inits(log)
        await end_child(a, NORMAL)
        assert await children(sup) == [("a", inits(log, "a")[1])]
        assert otp.exit_reason(b) == SHUTDOWN

    async def test_other_child_failing_restart_retries_only_that_child(
        self, sups: Sups, events: EventLog
    ) -> None:
        """rest_for_one_other_child_fails_restart: when ``b`` cannot start after ``a`` crashed, only
        ``b`` is retried; the restarted ``a`` is not restarted again."""
        log: Log = []
        gate = StartGate()
        sup = await sups.start([worker("a", log), worker("b", log, gate=gate)], Strategy.REST_FOR_ONE)
        a1, _ = inits(log)
        gate.failures = 1
        await end_child(a1, DIED)
        await events.wait_for(("supervisor", "child", "restarted"), id="b")
        a_pids = inits(log, "a")
        assert len(a_pids) == 2
        assert otp.is_alive(a_pids[1])
        assert await children(sup) == [("b", inits(log, "b")[1]), ("a", a_pids[1])]


# ---------------------------------------------------------------------------- restart x reason

SELF_EXITS = [
    pytest.param(NORMAL, id="normal"),
    pytest.param(SHUTDOWN, id="shutdown"),
    pytest.param(Shutdown("some_info"), id="shutdown-detail"),
    pytest.param(DIED, id="abnormal"),
    pytest.param(KILLED, id="killed-by-third-party"),
]
EXPECTED_EXITS = SELF_EXITS[:3]
ABNORMAL_EXITS = SELF_EXITS[3:]


class TestRestartTypes:
    @pytest.mark.parametrize("reason", SELF_EXITS)
    async def test_permanent_child_is_restarted_after_any_exit(self, sups: Sups, reason: ExitReason) -> None:
        """permanent_{normal,shutdown,abnormal}: a permanent child is always restarted."""
        log: Log = []
        sup = await sups.start([worker("a", log)])
        (a,) = inits(log)
        await end_child(a, reason)
        assert await children(sup) == [("a", inits(log)[1])]
        assert await counts(sup) == [1, 1, 0, 1]

    @pytest.mark.parametrize("reason", EXPECTED_EXITS)
    async def test_transient_child_stays_stopped_after_expected_exit(
        self, sups: Sups, reason: ExitReason
    ) -> None:
        """transient_{normal,shutdown}: no restart after normal/shutdown/{shutdown,_}; spec kept."""
        log: Log = []
        sup = await sups.start([worker("a", log, restart=Restart.TRANSIENT)])
        await end_child(inits(log)[0], reason)
        assert await children(sup) == [("a", None)]
        assert await counts(sup) == [1, 0, 0, 1]

    @pytest.mark.parametrize("reason", ABNORMAL_EXITS)
    async def test_transient_child_is_restarted_after_abnormal_exit(
        self, sups: Sups, reason: ExitReason
    ) -> None:
        """transient_abnormal: a crash (or a kill by someone else) restarts a transient child."""
        log: Log = []
        sup = await sups.start([worker("a", log, restart=Restart.TRANSIENT)])
        await end_child(inits(log)[0], reason)
        assert await children(sup) == [("a", inits(log)[1])]
        assert await counts(sup) == [1, 1, 0, 1]

    @pytest.mark.parametrize("reason", SELF_EXITS)
    async def test_temporary_child_is_removed_after_any_exit(self, sups: Sups, reason: ExitReason) -> None:
        """temporary_{normal,shutdown,abnormal}: a temporary child is never restarted and forgotten."""
        log: Log = []
        sup = await sups.start([worker("a", log, restart=Restart.TEMPORARY)])
        await end_child(inits(log)[0], reason)
        assert await children(sup) == []
        assert await counts(sup) == [0, 0, 0, 0]
        assert len(inits(log)) == 1

    async def test_transient_child_stopped_by_shutdown_can_be_restarted(self, sups: Sups) -> None:
        """transient_shutdown: the kept spec of a transient child restarts with ``restart_child``."""
        log: Log = []
        sup = await sups.start([worker("a", log, restart=Restart.TRANSIENT)])
        await end_child(inits(log)[0], SHUTDOWN)
        pid = await Supervisor.restart_child(sup, "a")
        assert pid == inits(log)[1]
        assert await children(sup) == [("a", pid)]

    async def test_temporary_child_can_be_started_again_after_exit(self, sups: Sups) -> None:
        """temporary_shutdown: once a temporary child is gone, the same spec can be added again."""
        log: Log = []
        sup = await sups.start([])
        spec = worker("a", log, restart=Restart.TEMPORARY)
        first = await Supervisor.start_child(sup, spec)
        assert first is not None
        await end_child(first, SHUTDOWN)
        second = await Supervisor.start_child(sup, spec)
        assert second == inits(log)[1]
        assert await children(sup) == [("a", second)]

    async def test_permanent_child_exiting_normally_counts_toward_intensity(self, sups: Sups) -> None:
        """A37: every restart counts, even of a permanent child that finished normally."""
        log: Log = []
        sup = await sups.start([worker("a", log)], max_restarts=0)
        await end_child(inits(log)[0], NORMAL)
        assert await otp.await_exit(sup, timeout=5) == SHUTDOWN
        assert len(inits(log)) == 1


# ---------------------------------------------------------------------------- intensity


class TestRestartIntensity:
    async def test_supervisor_exits_shutdown_after_max_restarts_plus_one(
        self, sups: Sups, events: EventLog
    ) -> None:
        """one_for_one: with 2 restarts in 5 s, the third crash ends the supervisor with ``shutdown``."""
        log: Log = []
        sup = await sups.start([worker("a", log)], max_restarts=2, max_seconds=5)
        for _ in range(2):
            await end_child(inits(log)[-1], DIED)
            assert await counts(sup) == [1, 1, 0, 1]
        await end_child(inits(log)[-1], DIED)
        assert await otp.await_exit(sup, timeout=5) == SHUTDOWN
        assert len(inits(log)) == 3
        (exceeded,) = events.named("supervisor", "intensity", "exceeded")
        assert (
            exceeded["supervisor"],
            exceeded["id"],
            exceeded["max_restarts"],
            exceeded["max_seconds"],
        ) == (
            sup,
            "a",
            2,
            5,
        )
        assert exceeded["reason"] == "reached_max_restart_intensity"

    async def test_restart_exactly_max_seconds_old_still_counts(self, sups: Sups) -> None:
        """A restart at second ``s`` still counts at ``s + max_seconds``: the second crash trips."""
        log: Log = []
        clock = ManualClock()
        sup = await sups.start([worker("a", log)], max_restarts=1, max_seconds=5, clock=clock)
        await end_child(inits(log)[-1], DIED)
        assert await counts(sup) == [1, 1, 0, 1]
        clock.advance(5)
        await end_child(inits(log)[-1], DIED)
        assert await otp.await_exit(sup, timeout=5) == SHUTDOWN

    async def test_restart_older_than_the_window_is_forgotten(self, sups: Sups) -> None:
        """multiple_restarts: at ``s + max_seconds + 1`` the earlier restart no longer counts."""
        log: Log = []
        clock = ManualClock()
        sup = await sups.start([worker("a", log)], max_restarts=1, max_seconds=5, clock=clock)
        for _ in range(4):
            await end_child(inits(log)[-1], DIED)
            clock.advance(6)
        assert otp.is_alive(sup)
        assert await children(sup) == [("a", inits(log)[4])]

    async def test_zero_max_restarts_gives_up_on_first_failure(self, sups: Sups, events: EventLog) -> None:
        """max_restarts=0: the first crash ends the supervisor; the child is not restarted."""
        log: Log = []
        sup = await sups.start([worker("a", log)], max_restarts=0)
        await end_child(inits(log)[0], DIED)
        assert await otp.await_exit(sup, timeout=5) == SHUTDOWN
        assert len(inits(log)) == 1
        assert len(events.named("supervisor", "intensity", "exceeded")) == 1
        assert events.named("supervisor", "child", "restarted") == []

    async def test_remaining_children_are_stopped_in_reverse_order_on_giving_up(self, sups: Sups) -> None:
        """Exceeding the intensity stops every other child, last started first, with ``shutdown``."""
        log: Log = []
        sup = await sups.start([worker(n, log, trap=True) for n in "abc"], max_restarts=0)
        await end_child(inits(log, "a")[0], DIED)
        assert await otp.await_exit(sup, timeout=5) == SHUTDOWN
        assert log[3:] == [
            ("terminate", "a", DIED),
            ("terminate", "c", SHUTDOWN),
            ("terminate", "b", SHUTDOWN),
        ]

    async def test_intensity_is_shared_by_all_children(self, sups: Sups) -> None:
        """The window is per supervisor: crashes of ``a``, ``b``, ``a`` make three restarts."""
        log: Log = []
        sup = await sups.start([worker("a", log), worker("b", log)], max_restarts=2)
        await end_child(inits(log, "a")[-1], DIED)
        await end_child(inits(log, "b")[-1], DIED)
        assert await counts(sup) == [2, 2, 0, 2]
        await end_child(inits(log, "a")[-1], DIED)
        assert await otp.await_exit(sup, timeout=5) == SHUTDOWN

    async def test_failing_restarts_are_retried_until_intensity_is_exceeded(
        self, sups: Sups, events: EventLog
    ) -> None:
        """one_for_one_escalation: each retry of a child that cannot start counts; with 4 restarts
        allowed there are exactly 4 failed attempts, then supervisor and sibling go down."""
        log: Log = []
        gate = StartGate()
        sup = await sups.start([worker("a", log, gate=gate), worker("b", log)], max_restarts=4)
        a, b = inits(log)
        gate.failures = 1000
        await end_child(a, DIED)
        assert await otp.await_exit(sup, timeout=5) == SHUTDOWN
        assert otp.exit_reason(b) == SHUTDOWN
        assert len(events.named("supervisor", "child", "start_failed")) == 4
        assert gate.failures == 996

    @pytest.mark.parametrize("strategy", [Strategy.ONE_FOR_ALL, Strategy.REST_FOR_ONE])
    async def test_sibling_that_cannot_restart_ends_the_supervisor(
        self, sups: Sups, events: EventLog, strategy: Strategy
    ) -> None:
        """one_for_all_escalation / rest_for_one_escalation: ``a`` crashes, ``b`` can never start
        again; the retries exhaust the intensity and the supervisor exits ``shutdown``."""
        log: Log = []
        gate = StartGate()
        sup = await sups.start([worker("a", log), worker("b", log, gate=gate)], strategy, max_restarts=4)
        a, b = inits(log)
        gate.failures = 1000
        await end_child(a, DIED)
        assert await otp.await_exit(sup, timeout=5) == SHUTDOWN
        assert otp.exit_reason(b) == SHUTDOWN
        assert all(not otp.is_alive(pid) for pid in inits(log))
        assert [m["id"] for m in events.named("supervisor", "child", "start_failed")] == ["b"] * 4


# ---------------------------------------------------------------------------- restart failures


class TestRestartLoop:
    """hanging_restart_loop: a child that cannot be restarted is ``RESTARTING`` while the supervisor
    keeps answering calls."""

    async def start_looping(self, sups: Sups, events: EventLog, log: Log) -> tuple[Pid, Pid, StartGate]:
        gate = StartGate()
        sup = await sups.start([worker("a", log, gate=gate)], max_restarts=1_000_000)
        (a,) = inits(log)
        gate.failures = 10**9
        await end_child(a, DIED)
        await events.wait_for(("supervisor", "child", "start_failed"), id="a")
        return sup, a, gate

    async def test_child_in_restart_loop_is_listed_as_restarting(self, sups: Sups, events: EventLog) -> None:
        """which_children shows RESTARTING; count_children counts it as a spec, not as active."""
        log: Log = []
        sup, _, _ = await self.start_looping(sups, events, log)
        assert await children(sup) == [("a", RESTARTING)]
        assert await counts(sup) == [1, 0, 0, 1]

    async def test_api_refuses_a_restarting_child(self, sups: Sups, events: EventLog) -> None:
        """During the loop: start_child -> already_present; restart_child / delete_child -> restarting."""
        log: Log = []
        sup, _, _ = await self.start_looping(sups, events, log)
        with pytest.raises(AlreadyPresentError):
            await Supervisor.start_child(sup, worker("a", log))
        with pytest.raises(ChildRestartingError):
            await Supervisor.restart_child(sup, "a")
        with pytest.raises(ChildRestartingError):
            await Supervisor.delete_child(sup, "a")

    async def test_terminate_child_ends_the_restart_loop(self, sups: Sups, events: EventLog) -> None:
        """terminate_child stops the retries and leaves the child stopped; restart_child works later."""
        log: Log = []
        sup, _, gate = await self.start_looping(sups, events, log)
        await Supervisor.terminate_child(sup, "a")
        assert await children(sup) == [("a", None)]
        attempts = len(events.named("supervisor", "child", "start_failed"))
        assert await children(sup) == [("a", None)]
        assert len(events.named("supervisor", "child", "start_failed")) == attempts
        gate.failures = 0
        pid = await Supervisor.restart_child(sup, "a")
        assert await children(sup) == [("a", pid)]

    async def test_supervisor_can_be_stopped_during_the_restart_loop(
        self, sups: Sups, events: EventLog
    ) -> None:
        """OTP-9549: a supervisor hanging in a restart loop still stops on request."""
        log: Log = []
        sup, _, _ = await self.start_looping(sups, events, log)
        await Supervisor.stop(sup, SHUTDOWN)
        assert otp.exit_reason(sup) == SHUTDOWN

    async def test_later_children_stay_stopped_during_a_rest_for_one_loop(
        self, sups: Sups, events: EventLog
    ) -> None:
        """hanging_restart_loop_rest_for_one: while ``b`` loops, the later ``c`` is stopped ``[3,1,0,3]``."""
        log: Log = []
        gate = StartGate()
        sup = await sups.start(
            [worker("a", log), worker("b", log, gate=gate), worker("c", log)],
            Strategy.REST_FOR_ONE,
            max_restarts=1_000_000,
        )
        a, b, c = inits(log)
        gate.failures = 10**9
        await end_child(b, DIED)
        await events.wait_for(("supervisor", "child", "start_failed"), id="b")
        assert await children(sup) == [("c", None), ("b", RESTARTING), ("a", a)]
        assert await counts(sup) == [3, 1, 0, 3]
        assert otp.exit_reason(c) == SHUTDOWN

    async def test_restart_loop_of_a_raising_start_function_does_not_starve_callers(
        self, sups: Sups, events: EventLog
    ) -> None:
        """A start function that fails without ever awaiting still lets calls in between retries."""
        attempts: list[int] = []

        async def start() -> Pid:
            attempts.append(len(attempts))
            if len(attempts) > 1:
                raise StartError(CANNOT_START)
            return otp.spawn_link(sleeper)

        sup = await sups.start([ChildSpec(id="a", start=start)], max_restarts=1_000_000)
        pid = await child_pid(sup, "a")
        otp.exit(pid, DIED)
        await events.wait_for(("supervisor", "child", "start_failed"), id="a")
        assert await children(sup) == [("a", RESTARTING)]
        await Supervisor.terminate_child(sup, "a")
        assert otp.is_alive(sup)


# ---------------------------------------------------------------------------- escalation


class TestEscalation:
    async def test_parent_restarts_a_child_supervisor_that_gave_up(
        self, sups: Sups, events: EventLog
    ) -> None:
        """A nested supervisor exceeding its intensity exits ``shutdown``; its permanent spec in the
        parent makes the parent start it again, with fresh children."""
        log: Log = []
        inner = SupervisorSpec([worker("w", log)], strategy=Strategy.ONE_FOR_ONE, max_restarts=0)
        top = await sups.start([Supervisor.child_spec(inner, id="inner")])
        inner1 = await child_pid(top, "inner")
        await end_child(inits(log)[0], DIED)
        assert await otp.await_exit(inner1, timeout=5) == SHUTDOWN
        restarted = await events.wait_for(("supervisor", "child", "restarted"), id="inner")
        inner2 = restarted["pid"]
        assert inner2 != inner1
        assert await children(top) == [("inner", inner2)]
        assert await children(inner2) == [("w", inits(log)[1])]

    async def test_transient_child_supervisor_that_gave_up_is_not_restarted(self, sups: Sups) -> None:
        """A21: the ``shutdown`` exit of a supervisor that gave up does not restart a transient spec."""
        log: Log = []
        inner = SupervisorSpec([worker("w", log)], strategy=Strategy.ONE_FOR_ONE, max_restarts=0)
        top = await sups.start([Supervisor.child_spec(inner, id="inner", restart=Restart.TRANSIENT)])
        inner1 = await child_pid(top, "inner")
        await end_child(inits(log)[0], DIED)
        assert await otp.await_exit(inner1, timeout=5) == SHUTDOWN
        assert await children(top) == [("inner", None)]
        assert await counts(top) == [1, 0, 1, 0]

    async def tree(self, sups: Sups, log: Log) -> tuple[Pid, Pid, Pid]:
        sup1 = SupervisorSpec(
            [worker("c1", log), worker("c2", log)], strategy=Strategy.ONE_FOR_ONE, max_restarts=4
        )
        sup2 = SupervisorSpec([], strategy=Strategy.ONE_FOR_ONE, max_restarts=1, clock=ManualClock())
        top = await sups.start(
            [Supervisor.child_spec(sup1, id="sup1"), Supervisor.child_spec(sup2, id="sup2")],
            Strategy.ONE_FOR_ALL,
            max_restarts=4,
        )
        s1, s2 = await child_pid(top, "sup1"), await child_pid(top, "sup2")
        await Supervisor.start_child(s2, worker("c3", log))
        await Supervisor.start_child(s2, worker("c4", log))
        return top, s1, s2

    async def test_tree_worker_crash_stays_local(self, sups: Sups) -> None:
        """tree: a grandchild crash restarts only that grandchild."""
        log: Log = []
        top, s1, s2 = await self.tree(sups, log)
        assert await counts(top) == [2, 2, 2, 0]
        assert await counts(s1) == [2, 2, 0, 2]
        assert await counts(s2) == [2, 2, 0, 2]
        c1, c2, c3, c4 = inits(log)
        await end_child(c4, DIED)
        assert await children(s1) == [("c2", c2), ("c1", c1)]
        new_c4 = inits(log, "c4")[1]
        assert await children(s2) == [("c4", new_c4), ("c3", c3)]
        assert await children(top) == [("sup2", s2), ("sup1", s1)]

    async def test_tree_restarts_everything_when_a_subtree_gives_up(
        self, sups: Sups, events: EventLog
    ) -> None:
        """tree: ``sup2`` exceeding its intensity makes the one_for_all top restart both subtrees;
        children added to ``sup2`` with start_child are gone."""
        log: Log = []
        top, s1, s2 = await self.tree(sups, log)
        await end_child(inits(log, "c4")[0], DIED)
        await end_child(inits(log, "c3")[0], DIED)
        assert await otp.await_exit(s2, timeout=5) == SHUTDOWN
        await events.wait_for(("supervisor", "child", "restarted"), id="sup2")
        new_s1, new_s2 = await child_pid(top, "sup1"), await child_pid(top, "sup2")
        assert {new_s1, new_s2}.isdisjoint({s1, s2})
        assert otp.exit_reason(s1) == SHUTDOWN
        assert await counts(top) == [2, 2, 2, 0]
        assert await children(new_s1) == [("c2", inits(log, "c2")[1]), ("c1", inits(log, "c1")[1])]
        assert await counts(new_s2) == [0, 0, 0, 0]


# ---------------------------------------------------------------------------- child administration


class TestStartChild:
    async def test_returns_the_pid_and_appends_the_child(self, sups: Sups) -> None:
        """start_child starts the child at once and lists it first (most recent)."""
        log: Log = []
        sup = await sups.start([worker("a", log)])
        pid = await Supervisor.start_child(sup, worker("b", log))
        assert pid == inits(log, "b")[0]
        assert [who for who, _ in await children(sup)] == ["b", "a"]

    async def test_running_id_raises_already_started(self, sups: Sups) -> None:
        """child_adm: the same id while it runs -> AlreadyStartedError carrying the running pid."""
        log: Log = []
        sup = await sups.start([worker("a", log)])
        with pytest.raises(AlreadyStartedError) as raised:
            await Supervisor.start_child(sup, worker("a", log))
        assert raised.value.pid == inits(log)[0]
        assert len(inits(log)) == 1

    async def test_stopped_id_raises_already_present(self, sups: Sups) -> None:
        """child_adm: the same id after terminate_child -> AlreadyPresentError."""
        log: Log = []
        sup = await sups.start([worker("a", log)])
        await Supervisor.terminate_child(sup, "a")
        with pytest.raises(AlreadyPresentError) as raised:
            await Supervisor.start_child(sup, worker("a", log))
        assert raised.value.child_id == "a"

    async def test_ignoring_child_is_kept_without_pid(self, sups: Sups) -> None:
        """sup_start_ignore_child: start_child of a child returning IGNORE gives None, spec kept."""
        log: Log = []
        sup = await sups.start([])
        assert await Supervisor.start_child(sup, worker("child1", log, ignore=True)) is None
        pid2 = await Supervisor.start_child(sup, worker("child2", log))
        assert await children(sup) == [("child2", pid2), ("child1", None)]
        assert await counts(sup) == [2, 1, 0, 2]

    async def test_ignoring_temporary_child_is_not_kept(self, sups: Sups) -> None:
        """sup_start_ignore_temporary_child_start_child: nothing is kept for a temporary IGNORE."""
        log: Log = []
        sup = await sups.start([])
        spec = worker("child1", log, ignore=True, restart=Restart.TEMPORARY)
        assert await Supervisor.start_child(sup, spec) is None
        pid2 = await Supervisor.start_child(sup, worker("child2", log, restart=Restart.TEMPORARY))
        assert await children(sup) == [("child2", pid2)]
        assert await counts(sup) == [1, 1, 0, 1]

    async def test_failed_start_raises_start_error_and_keeps_nothing(
        self, sups: Sups, events: EventLog
    ) -> None:
        """sup_start_child_returns_error: the reason comes back in StartError; no spec is stored."""
        log: Log = []
        sup = await sups.start([])
        with pytest.raises(StartError) as raised:
            await Supervisor.start_child(sup, worker("a", log, gate=StartGate(1)))
        assert raised.value.reason == CANNOT_START
        assert await counts(sup) == [0, 0, 0, 0]
        assert [(m["id"], m["reason"]) for m in events.named("supervisor", "child", "start_failed")] == [
            ("a", CANNOT_START)
        ]

    async def test_start_function_raising_gives_crash_reason(self, sups: Sups) -> None:
        """A start function that raises fails with ``Crash(exception)``."""
        boom = RuntimeError("boom")

        async def start() -> Pid:
            raise boom

        sup = await sups.start([])
        with pytest.raises(StartError) as raised:
            await Supervisor.start_child(sup, ChildSpec(id="x", start=start))
        assert raised.value.reason == Crash(boom)

    async def test_start_function_exiting_gives_its_reason(self, sups: Sups) -> None:
        """A start function that exits (``ProcessExit``) fails with that very reason (``exit(oops)``)."""

        async def start() -> Pid:
            raise ProcessExit(Abnormal("oops"))

        sup = await sups.start([])
        with pytest.raises(StartError) as raised:
            await Supervisor.start_child(sup, ChildSpec(id="x", start=start))
        assert raised.value.reason == Abnormal("oops")

    async def test_start_function_returning_a_non_pid_is_an_error(self, sups: Sups) -> None:
        """A start function returning anything but a pid fails with ``bad_return_value``."""

        async def start() -> Any:
            return "unknown"

        sup = await sups.start([])
        with pytest.raises(StartError) as raised:
            await Supervisor.start_child(sup, ChildSpec(id="x", start=start))
        assert raised.value.reason == Abnormal(("bad_return_value", "unknown"))

    async def test_non_spec_raises_type_error(self, sups: Sups) -> None:
        """start_child refuses anything but a ChildSpec, before calling the supervisor."""
        sup = await sups.start([])
        with pytest.raises(TypeError, match="ChildSpec"):
            await Supervisor.start_child(sup, {"id": "a"})  # type: ignore[arg-type]


class TestTerminateChild:
    async def test_stops_the_child_and_keeps_its_spec(self, sups: Sups) -> None:
        """child_adm: terminate_child stops with ``shutdown`` and keeps the spec ``[1,0,0,1]``."""
        log: Log = []
        sup = await sups.start([worker("a", log, trap=True)])
        (a,) = inits(log)
        await Supervisor.terminate_child(sup, "a")
        assert otp.exit_reason(a) == SHUTDOWN
        assert log[-1] == ("terminate", "a", SHUTDOWN)
        assert await children(sup) == [("a", None)]
        assert await counts(sup) == [1, 0, 0, 1]

    async def test_terminating_a_stopped_child_is_ok(self, sups: Sups) -> None:
        """child_adm: a second terminate_child of the same id succeeds and changes nothing."""
        log: Log = []
        sup = await sups.start([worker("a", log)])
        await Supervisor.terminate_child(sup, "a")
        await Supervisor.terminate_child(sup, "a")
        assert await children(sup) == [("a", None)]

    async def test_unknown_id_raises_not_found(self, sups: Sups) -> None:
        """child_adm: terminate_child of an unknown id -> ChildNotFoundError."""
        sup = await sups.start([])
        with pytest.raises(ChildNotFoundError) as raised:
            await Supervisor.terminate_child(sup, "nope")
        assert raised.value.child == "nope"

    async def test_pid_on_a_static_supervisor_raises_not_found(self, sups: Sups) -> None:
        """child_adm: a static supervisor addresses children by id; a pid is not found."""
        log: Log = []
        sup = await sups.start([worker("a", log)])
        (a,) = inits(log)
        with pytest.raises(ChildNotFoundError):
            await Supervisor.terminate_child(sup, a)
        assert otp.is_alive(a)

    async def test_temporary_child_is_removed(self, sups: Sups) -> None:
        """do_not_save_child_specs_for_temporary_children: terminate_child forgets a temporary child."""
        log: Log = []
        sup = await sups.start([worker("a", log, restart=Restart.TEMPORARY)])
        await Supervisor.terminate_child(sup, "a")
        assert await counts(sup) == [0, 0, 0, 0]

    async def test_child_that_unlinked_itself_does_not_hang_the_supervisor(self, sups: Sups) -> None:
        """child_unlink: shutdown goes through a monitor, so an unlinked child is still waited for."""
        ready = asyncio.Event()

        async def naughty(sup: Pid) -> None:
            otp.unlink(sup)
            ready.set()
            await otp.receive(lambda _message: False)

        async def start() -> Pid:
            return otp.spawn_link(naughty, otp.self_pid())

        sup = await sups.start([ChildSpec(id="naughty", start=start, shutdown=1.0)])
        pid = await child_pid(sup, "naughty")
        await ready.wait()
        async with asyncio.timeout(5):
            await Supervisor.terminate_child(sup, "naughty")
        assert otp.exit_reason(pid) == SHUTDOWN
        assert await children(sup) == [("naughty", None)]


class TestRestartChild:
    async def test_starts_a_stopped_child_with_a_new_pid(self, sups: Sups) -> None:
        """child_adm: restart_child of a terminated child starts it again."""
        log: Log = []
        sup = await sups.start([worker("a", log)])
        await Supervisor.terminate_child(sup, "a")
        pid = await Supervisor.restart_child(sup, "a")
        assert pid == inits(log)[1]
        assert await children(sup) == [("a", pid)]

    async def test_running_child_raises_running(self, sups: Sups) -> None:
        """child_adm: restart_child of a running child -> ChildRunningError."""
        log: Log = []
        sup = await sups.start([worker("a", log)])
        with pytest.raises(ChildRunningError):
            await Supervisor.restart_child(sup, "a")

    async def test_unknown_id_raises_not_found(self, sups: Sups) -> None:
        """child_adm: restart_child of an unknown id -> ChildNotFoundError."""
        sup = await sups.start([])
        with pytest.raises(ChildNotFoundError):
            await Supervisor.restart_child(sup, "nope")

    async def test_failing_start_raises_and_child_stays_stopped(self, sups: Sups) -> None:
        """sup_start_restart_child_returns_error: the error is returned, the child stays ``undefined``."""
        log: Log = []
        gate = StartGate()
        sup = await sups.start([worker("a", log, gate=gate)])
        await Supervisor.terminate_child(sup, "a")
        gate.failures = 1
        with pytest.raises(StartError) as raised:
            await Supervisor.restart_child(sup, "a")
        assert raised.value.reason == CANNOT_START
        assert await children(sup) == [("a", None)]


class TestDeleteChild:
    async def test_removes_a_stopped_child(self, sups: Sups) -> None:
        """child_adm: delete_child after terminate_child forgets the spec ``[0,0,0,0]``."""
        log: Log = []
        sup = await sups.start([worker("a", log)])
        await Supervisor.terminate_child(sup, "a")
        await Supervisor.delete_child(sup, "a")
        assert await counts(sup) == [0, 0, 0, 0]
        with pytest.raises(ChildNotFoundError):
            await Supervisor.get_childspec(sup, "a")

    async def test_running_child_raises_running(self, sups: Sups) -> None:
        """child_adm: delete_child of a running child -> ChildRunningError."""
        log: Log = []
        sup = await sups.start([worker("a", log)])
        with pytest.raises(ChildRunningError):
            await Supervisor.delete_child(sup, "a")

    async def test_unknown_id_raises_not_found(self, sups: Sups) -> None:
        """child_adm: delete_child of an unknown id -> ChildNotFoundError."""
        sup = await sups.start([])
        with pytest.raises(ChildNotFoundError):
            await Supervisor.delete_child(sup, "nope")

    async def test_deleted_id_can_be_started_again(self, sups: Sups) -> None:
        """After delete_child the id is free: start_child succeeds."""
        log: Log = []
        sup = await sups.start([worker("a", log)])
        await Supervisor.terminate_child(sup, "a")
        await Supervisor.delete_child(sup, "a")
        pid = await Supervisor.start_child(sup, worker("a", log))
        assert await children(sup) == [("a", pid)]


class TestIntrospection:
    async def test_get_childspec_returns_the_spec_with_defaults(self, sups: Sups) -> None:
        """sup_start_map: defaults are permanent, 5 s (worker) / infinity (supervisor), not significant."""
        w = ChildSpec(id="w", start=start_sleeper)
        s = ChildSpec(id="s", start=start_sleeper, type=ChildType.SUPERVISOR)
        sup = await sups.start([w, s])
        got_w, got_s = await Supervisor.get_childspec(sup, "w"), await Supervisor.get_childspec(sup, "s")
        assert got_w == w
        assert (got_w.restart, got_w.shutdown, got_w.type, got_w.significant) == (
            Restart.PERMANENT,
            5.0,
            ChildType.WORKER,
            False,
        )
        assert got_s.shutdown == INFINITY

    async def test_get_childspec_of_unknown_id_raises_not_found(self, sups: Sups) -> None:
        """sup_start_map: get_childspec of a missing id -> ChildNotFoundError."""
        sup = await sups.start([])
        with pytest.raises(ChildNotFoundError):
            await Supervisor.get_childspec(sup, "child4")

    async def test_count_children_counts_by_type(self, sups: Sups) -> None:
        """count_children_supervisor: a nested supervisor counts in ``supervisors``, alive or not."""
        log: Log = []
        inner = SupervisorSpec([], strategy=Strategy.ONE_FOR_ONE)
        sup = await sups.start([worker("w", log), Supervisor.child_spec(inner, id="inner")])
        assert await counts(sup) == [2, 2, 1, 1]
        await Supervisor.terminate_child(sup, "inner")
        assert await counts(sup) == [2, 1, 1, 1]

    async def test_calls_to_a_dead_supervisor_raise_no_process(self, sups: Sups) -> None:
        """A26: the API on a supervisor that no longer runs -> NoProcessError (``noproc``)."""
        sup = await sups.start([])
        await Supervisor.stop(sup)
        with pytest.raises(NoProcessError):
            await Supervisor.which_children(sup)

    async def test_unexpected_message_is_reported_and_ignored(self, sups: Sups, events: EventLog) -> None:
        """A27: a stray message (or an EXIT from a process that is not a child) does not disturb it."""
        log: Log = []
        sup = await sups.start([worker("a", log)])
        otp.send(sup, "foo")
        otp.exit(sup, Abnormal("from a stranger"))
        assert await children(sup) == [("a", inits(log)[0])]
        # supervisor.erl reports a stray message; an EXIT from a non-child is silently dropped.
        assert [m["message"] for m in events.named("gen_server", "unexpected_message")] == ["foo"]
        assert otp.is_alive(sup)


# ---------------------------------------------------------------------------- auto_shutdown


class TestAutoShutdown:
    async def test_significant_transient_child_exiting_normally_ends_the_supervisor(self, sups: Sups) -> None:
        """significant_transient: a normal exit of a significant transient child shuts everything down."""
        log: Log = []
        sup = await sups.start(
            [worker("a", log, trap=True), worker("b", log, restart=Restart.TRANSIENT, significant=True)],
            auto_shutdown=AutoShutdown.ANY_SIGNIFICANT,
        )
        a, b = inits(log)
        await end_child(b, NORMAL)
        assert await otp.await_exit(sup, timeout=5) == SHUTDOWN
        assert otp.exit_reason(a) == SHUTDOWN

    async def test_significant_transient_child_crashing_is_restarted(self, sups: Sups) -> None:
        """significant_transient: an abnormal exit is an ordinary restart, no auto shutdown."""
        log: Log = []
        sup = await sups.start(
            [worker("b", log, restart=Restart.TRANSIENT, significant=True)],
            auto_shutdown=AutoShutdown.ANY_SIGNIFICANT,
        )
        await end_child(inits(log)[0], DIED)
        assert await children(sup) == [("b", inits(log)[1])]

    async def test_significant_temporary_child_exiting_in_any_way_ends_the_supervisor(
        self, sups: Sups
    ) -> None:
        """significant_temporary: even a crash of a significant temporary child triggers the shutdown."""
        log: Log = []
        sup = await sups.start(
            [worker("t", log, restart=Restart.TEMPORARY, significant=True)],
            auto_shutdown=AutoShutdown.ANY_SIGNIFICANT,
        )
        await end_child(inits(log)[0], DIED)
        assert await otp.await_exit(sup, timeout=5) == SHUTDOWN

    async def test_all_significant_waits_for_the_last_significant_child(self, sups: Sups) -> None:
        """significant_temporary with all_significant: the first exit is tolerated, the last is not."""
        log: Log = []
        sup = await sups.start(
            [
                worker("t1", log, restart=Restart.TEMPORARY, significant=True),
                worker("t2", log, restart=Restart.TEMPORARY, significant=True),
                worker("other", log),
            ],
            auto_shutdown=AutoShutdown.ALL_SIGNIFICANT,
        )
        t1, t2, _ = inits(log)
        await end_child(t1, NORMAL)
        assert await counts(sup) == [2, 2, 0, 2]
        await end_child(t2, NORMAL)
        assert await otp.await_exit(sup, timeout=5) == SHUTDOWN

    async def test_terminate_child_of_a_significant_child_does_not_trigger(self, sups: Sups) -> None:
        """significant_temporary: stopping a significant child through the API is not an auto shutdown."""
        log: Log = []
        sup = await sups.start(
            [worker("b", log, restart=Restart.TRANSIENT, significant=True)],
            auto_shutdown=AutoShutdown.ANY_SIGNIFICANT,
        )
        await Supervisor.terminate_child(sup, "b")
        assert await children(sup) == [("b", None)]
        assert otp.is_alive(sup)

    async def test_significant_bystander_does_not_trigger(self, sups: Sups) -> None:
        """significant_bystander: a significant child stopped by a one_for_all restart is no trigger."""
        log: Log = []
        sup = await sups.start(
            [worker("a", log), worker("t", log, restart=Restart.TEMPORARY, significant=True)],
            Strategy.ONE_FOR_ALL,
            auto_shutdown=AutoShutdown.ANY_SIGNIFICANT,
        )
        a, t = inits(log)
        await end_child(a, DIED)
        assert otp.exit_reason(t) == SHUTDOWN
        assert await children(sup) == [("a", inits(log, "a")[1])]
        assert otp.is_alive(sup)

    async def test_significant_child_supervisor_escalates_its_auto_shutdown(self, sups: Sups) -> None:
        """significant_escalation: a child supervisor that auto-shuts down is itself a significant
        child ending ``shutdown``, so its parent shuts down too."""
        log: Log = []
        inner = SupervisorSpec(
            [worker("w", log, restart=Restart.TRANSIENT, significant=True)],
            strategy=Strategy.ONE_FOR_ONE,
            auto_shutdown=AutoShutdown.ANY_SIGNIFICANT,
        )
        spec = Supervisor.child_spec(inner, id="inner", restart=Restart.TRANSIENT)
        top = await sups.start([replace(spec, significant=True)], auto_shutdown=AutoShutdown.ANY_SIGNIFICANT)
        await end_child(inits(log)[0], NORMAL)
        assert await otp.await_exit(top, timeout=5) == SHUTDOWN

    async def test_non_significant_child_supervisor_does_not_escalate(self, sups: Sups) -> None:
        """significant_escalation: without ``significant`` at the parent, only the child supervisor ends."""
        log: Log = []
        inner = SupervisorSpec(
            [worker("w", log, restart=Restart.TRANSIENT, significant=True)],
            strategy=Strategy.ONE_FOR_ONE,
            auto_shutdown=AutoShutdown.ANY_SIGNIFICANT,
        )
        top = await sups.start(
            [Supervisor.child_spec(inner, id="inner", restart=Restart.TRANSIENT)],
            auto_shutdown=AutoShutdown.ANY_SIGNIFICANT,
        )
        inner_pid = await child_pid(top, "inner")
        await end_child(inits(log)[0], NORMAL)
        assert await otp.await_exit(inner_pid, timeout=5) == SHUTDOWN
        assert await children(top) == [("inner", None)]
        assert otp.is_alive(top)

    async def test_significant_child_under_never_is_rejected(self) -> None:
        """child_specs_map: significant with auto_shutdown NEVER is a bad_combination (ValueError)."""
        with pytest.raises(ValueError, match="bad_combination"):
            SupervisorSpec(
                [ChildSpec(id="t", start=start_sleeper, restart=Restart.TEMPORARY, significant=True)],
                strategy=Strategy.ONE_FOR_ONE,
            )

    async def test_start_child_of_significant_child_under_never_is_rejected(self, sups: Sups) -> None:
        """significant_upgrade: start_child of a significant child under NEVER raises ValueError."""
        sup = await sups.start([])
        spec = ChildSpec(id="t", start=start_sleeper, restart=Restart.TEMPORARY, significant=True)
        with pytest.raises(ValueError, match="bad_combination"):
            await Supervisor.start_child(sup, spec)
        assert await counts(sup) == [0, 0, 0, 0]


# ---------------------------------------------------------------------------- validation


class TestValidation:
    @pytest.mark.parametrize(
        ("options", "error"),
        [
            pytest.param({"shutdown": -1}, ValueError, id="negative-shutdown"),
            pytest.param({"shutdown": -0.5}, ValueError, id="negative-fractional-shutdown"),
            pytest.param({"shutdown": float("nan")}, ValueError, id="nan-shutdown"),
            pytest.param({"shutdown": "5000"}, TypeError, id="str-shutdown"),
            pytest.param({"shutdown": True}, TypeError, id="bool-shutdown"),
            pytest.param({"restart": "permanent"}, TypeError, id="str-restart"),
            pytest.param({"type": "worker"}, TypeError, id="str-type"),
            pytest.param({"args": [1]}, TypeError, id="list-args"),
            pytest.param({"start": "not callable"}, TypeError, id="uncallable-start"),
            pytest.param({"id": ["unhashable"]}, TypeError, id="unhashable-id"),
            pytest.param({"significant": True}, ValueError, id="significant-permanent"),
        ],
    )
    def test_invalid_child_spec_is_rejected(self, options: dict[str, Any], error: type) -> None:
        """child_specs: an invalid field raises when the spec is built (ValueError / TypeError)."""
        fields: dict[str, Any] = {"id": "c", "start": start_sleeper, **options}
        with pytest.raises(error):
            ChildSpec(**fields)

    @pytest.mark.parametrize("shutdown", [0, 0.0, 1000, INFINITY, BRUTAL_KILL])
    def test_valid_shutdown_values_are_accepted(self, shutdown: float | otp.BrutalKill) -> None:
        """child_specs: shutdown 0, a positive time, infinity and brutal_kill are all valid."""
        assert ChildSpec(id="c", start=start_sleeper, shutdown=shutdown).shutdown == shutdown

    @pytest.mark.parametrize(
        ("flags", "error"),
        [
            pytest.param({"strategy": "one_for_one"}, TypeError, id="str-strategy"),
            pytest.param({"max_restarts": -1}, ValueError, id="negative-intensity"),
            pytest.param({"max_restarts": INFINITY}, TypeError, id="infinite-intensity"),
            pytest.param({"max_seconds": 0}, ValueError, id="zero-period"),
            pytest.param({"max_seconds": INFINITY}, TypeError, id="infinite-period"),
            pytest.param({"auto_shutdown": "never"}, TypeError, id="str-auto-shutdown"),
        ],
    )
    def test_invalid_supervisor_flags_are_rejected(self, flags: dict[str, Any], error: type) -> None:
        """sup_flags: invalid strategy / intensity / period / auto_shutdown raise when built."""
        options: dict[str, Any] = {"strategy": Strategy.ONE_FOR_ONE, **flags}
        with pytest.raises(error):
            SupervisorSpec([], **options)

    def test_duplicate_child_ids_are_rejected(self) -> None:
        """child_specs: two children with one id -> ValueError (duplicate_child_name)."""
        spec = ChildSpec(id="c", start=start_sleeper)
        with pytest.raises(ValueError, match="duplicate"):
            SupervisorSpec([spec, spec], strategy=Strategy.ONE_FOR_ONE)

    def test_non_spec_child_is_rejected(self) -> None:
        """sup_start_map_faulty_specs: a child that is not a ChildSpec -> TypeError."""
        with pytest.raises(TypeError, match="ChildSpec"):
            SupervisorSpec(["child4"], strategy=Strategy.ONE_FOR_ONE)  # type: ignore[list-item]

    def test_defaults_are_elixirs(self) -> None:
        """A2: Elixir's defaults, 3 restarts in 5 seconds, auto_shutdown never."""
        spec = SupervisorSpec([], strategy=Strategy.ONE_FOR_ONE)
        assert (spec.max_restarts, spec.max_seconds, spec.auto_shutdown) == (3, 5, AutoShutdown.NEVER)


# ---------------------------------------------------------------------------- events


class TestEvents:
    async def test_boot_emits_started_for_each_child_in_order(self, sups: Sups, events: EventLog) -> None:
        """Each child start is reported with the supervisor, the id and the pid, in start order."""
        log: Log = []
        sup = await sups.start([worker(n, log) for n in "abc"])
        started = [
            (m["supervisor"], m["id"], m["pid"]) for m in events.named("supervisor", "child", "started")
        ]
        assert started == [(sup, n, pid) for n, pid in zip("abc", inits(log), strict=True)]

    async def test_one_for_all_restart_reports_each_child(self, sups: Sups, events: EventLog) -> None:
        """A group restart reports the crashed child and each stopped sibling as exited, then each
        restarted child in start order."""
        log: Log = []
        await sups.start([worker(n, log) for n in "abc"], Strategy.ONE_FOR_ALL)
        await end_child(inits(log, "b")[0], DIED)
        await events.wait_for(("supervisor", "child", "restarted"), id="c")
        exited = [(m["id"], m["reason"]) for m in events.named("supervisor", "child", "exited")]
        assert exited == [("b", DIED), ("c", SHUTDOWN), ("a", SHUTDOWN)]
        restarted = [(m["id"], m["pid"]) for m in events.named("supervisor", "child", "restarted")]
        assert restarted == [(n, inits(log, n)[1]) for n in "abc"]

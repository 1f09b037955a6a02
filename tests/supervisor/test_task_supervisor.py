"""TaskSupervisor and Task: start_child, async_, async_nolink, await/yield/shutdown, async streams.

Behaviours come from Elixir's ``task/supervisor_test.exs`` (names kept where a test is a port) and
rules 71-80 of ``otp-semantics.md``. Tasks never sleep: each waits on an ``asyncio.Event`` the test
controls, or blocks forever until it is stopped. Real timeouts appear only where the timeout is the
behaviour under test. Tests that need an owner process (messages, links) run in one through
:func:`in_process`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import typing
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from mailman import supervisor as otp
from mailman.supervisor import (
    BRUTAL_KILL,
    KILLED,
    NORMAL,
    SHUTDOWN,
    TIMEOUT,
    Abnormal,
    ChildCounts,
    ChildNotFoundError,
    Crash,
    DownMessage,
    DynamicSupervisor,
    DynamicSupervisorSpec,
    Exit,
    GenServer,
    MaxChildrenError,
    NoReply,
    Ok,
    OnTimeout,
    Pid,
    ProcessExit,
    Restart,
    Strategy,
    StreamTimeoutError,
    Supervisor,
    SupervisorSpec,
    Task,
    TaskExitError,
    TaskReply,
    TaskSupervisor,
    TaskTimeoutError,
)
from tests.supervisor.processes import WAIT, in_process

T = TypeVar("T")


async def mailbox_left() -> list[object]:
    """Everything left in the calling process's mailbox (Elixir's ``refute_received _``)."""
    left = []
    while True:
        try:
            left.append(await otp.receive(timeout=0))
        except TimeoutError:
            return left


async def double(x: int) -> int:
    return 2 * x


async def identity(x: Any) -> Any:
    return x


async def fail(x: Any) -> None:
    raise ValueError(f"bad input {x!r}")


async def exit_with(x: Any) -> None:
    raise ProcessExit(Abnormal(x))


async def block(_x: Any = None) -> None:
    await asyncio.Event().wait()


@pytest.fixture
async def sup() -> AsyncIterator[Pid]:
    pid = await TaskSupervisor.start_link()
    yield pid
    if otp.is_alive(pid):
        await TaskSupervisor.stop(pid)


# ------------------------------------------------------------------ start_link / child_spec


class TestStartLink:
    async def test_can_be_supervised_directly(self) -> None:
        """``TaskSupervisor.child_spec`` runs a named task supervisor under a Supervisor."""
        top = await Supervisor.start_link(
            SupervisorSpec([TaskSupervisor.child_spec(name="task-sup")], strategy=Strategy.ONE_FOR_ONE)
        )
        assert otp.whereis("task-sup") is not None
        assert await TaskSupervisor.children("task-sup") == []
        await Supervisor.stop(top)

    async def test_counts_and_returns_children(self, sup: Pid) -> None:
        """A new task supervisor has no children, by ``children`` and by ``count_children``."""
        assert await TaskSupervisor.children(sup) == []
        assert await DynamicSupervisor.count_children(sup) == ChildCounts(0, 0, 0, 0)

    async def test_rejects_extra_arguments(self) -> None:
        """Task start functions take no extra arguments: asking for them fails at once."""
        with pytest.raises(ValueError, match="extra_arguments"):
            await TaskSupervisor.start_link(DynamicSupervisorSpec(extra_arguments=(1,)))


# ------------------------------------------------------------------ start_child / terminate_child


class TestStartChild:
    async def test_runs_the_function_with_its_arguments(self, sup: Pid) -> None:
        """``start_child`` runs ``fn(*args)`` in a child of the supervisor ("start_child/1")."""
        gate = asyncio.Event()
        got: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()

        async def work(a: int, b: int) -> None:
            await gate.wait()
            got.set_result((a, b))

        pid = await TaskSupervisor.start_child(sup, work, 1, 2)
        assert await TaskSupervisor.children(sup) == [pid]
        gate.set()
        assert await asyncio.wait_for(got, WAIT) == (1, 2)
        assert await otp.await_exit(pid, WAIT) == NORMAL

    async def test_is_not_linked_to_the_caller(self, sup: Pid) -> None:
        """A fire-and-forget task that crashes does not take its caller down."""

        async def body() -> Any:
            pid = await TaskSupervisor.start_child(sup, fail, 1)
            return await otp.await_exit(pid, WAIT)

        reason = await in_process(body)
        assert isinstance(reason, Crash)
        assert isinstance(reason.exception, ValueError)

    async def test_with_custom_restart(self, sup: Pid) -> None:
        """A ``PERMANENT`` task is started again after it exits ("start_child/1 with custom restart")."""
        started: asyncio.Queue[Pid | None] = asyncio.Queue()

        async def work() -> None:
            started.put_nowait(otp.current_pid())
            await block()

        await TaskSupervisor.start_child(sup, work, restart=Restart.PERMANENT)
        first = await asyncio.wait_for(started.get(), WAIT)
        assert first is not None
        otp.exit(first, SHUTDOWN)
        second = await asyncio.wait_for(started.get(), WAIT)
        assert second not in (None, first)

    async def test_with_custom_shutdown(self, sup: Pid) -> None:
        """A ``BRUTAL_KILL`` task is killed when its supervisor stops ("with custom shutdown")."""
        pid = await TaskSupervisor.start_child(sup, block, shutdown=BRUTAL_KILL)
        await TaskSupervisor.stop(sup)
        assert otp.exit_reason(pid) == KILLED

    async def test_terminate_child(self, sup: Pid) -> None:
        """``terminate_child`` stops a task; a second time it is not found ("terminate_child/2")."""
        pid = await TaskSupervisor.start_child(sup, block)
        await TaskSupervisor.terminate_child(sup, pid)
        assert await TaskSupervisor.children(sup) == []
        with pytest.raises(ChildNotFoundError):
            await TaskSupervisor.terminate_child(sup, pid)


# ------------------------------------------------------------------ async_


class TestAsync:
    async def test_links_the_task_to_the_caller(self, sup: Pid) -> None:
        """A task started with ``async_`` takes its (non-trapping) caller down when it crashes."""
        gate = asyncio.Event()
        handed: asyncio.Future[Task[None]] = asyncio.get_running_loop().create_future()

        async def crash_when_released() -> None:
            await gate.wait()
            raise ValueError("oops")

        async def caller() -> None:
            handed.set_result(await TaskSupervisor.async_(sup, crash_when_released))
            await block()

        caller_pid = otp.spawn(caller)
        task = await asyncio.wait_for(handed, WAIT)
        assert task.owner == caller_pid
        gate.set()
        reason = await otp.await_exit(caller_pid, WAIT)
        assert isinstance(reason, Crash)
        assert isinstance(reason.exception, ValueError)

    async def test_await_returns_the_value(self, sup: Pid) -> None:
        """``await_result`` returns what the task's function returned."""
        task = await TaskSupervisor.async_(sup, double, 21)
        assert await task.await_result() == 42

    async def test_await_raises_on_task_error(self, sup: Pid) -> None:
        """A task that raised makes ``await_result`` raise with ``Crash`` ("exits on task error")."""
        task = await TaskSupervisor.async_(sup, fail, 1)
        with pytest.raises(TaskExitError) as info:
            await task.await_result()
        assert isinstance(info.value.reason, Crash)
        assert isinstance(info.value.reason.exception, ValueError)

    async def test_await_raises_on_task_exit(self, sup: Pid) -> None:
        """A task that exited carries its exit reason ("exits on task exit")."""
        task = await TaskSupervisor.async_(sup, exit_with, "unknown")
        with pytest.raises(TaskExitError) as info:
            await task.await_result()
        assert info.value.reason == Abnormal("unknown")

    async def test_await_raises_on_timeout(self, sup: Pid) -> None:
        """A task with no reply in time makes ``await_result`` raise a ``TimeoutError``."""
        task = await TaskSupervisor.async_(sup, block)
        with pytest.raises(TaskTimeoutError) as info:
            await task.await_result(timeout=0)
        assert isinstance(info.value, TimeoutError)
        assert otp.is_alive(task.pid)

    async def test_only_the_owner_may_await(self, sup: Pid) -> None:
        """Awaiting someone else's task is refused, as Elixir's owner check does."""
        task = await TaskSupervisor.async_(sup, double, 1)

        async def body() -> None:
            with pytest.raises(ValueError, match="owner"):
                await task.await_result()

        await in_process(body)

    async def test_raises_when_max_children_is_reached(self) -> None:
        """``async_`` on a full supervisor raises ``MaxChildrenError``."""
        full = await TaskSupervisor.start_link(DynamicSupervisorSpec(max_children=1))
        await TaskSupervisor.async_(full, block)
        with pytest.raises(MaxChildrenError):
            await TaskSupervisor.async_(full, double, 1)
        await TaskSupervisor.stop(full)


# ------------------------------------------------------------------ async_nolink


@dataclass
class OwnerState:
    supervisor: Pid
    done: asyncio.Future[tuple[Task[int], list[object]]]
    task: Task[int] | None = None
    messages: list[object] = field(default_factory=list)


class TaskOwner(GenServer[OwnerState]):
    """Starts a task per cast, as a GenServer should, and records what ``handle_info`` receives."""

    async def handle_cast(self, request: Any, state: OwnerState) -> NoReply[OwnerState]:
        state.task = await TaskSupervisor.async_nolink(state.supervisor, double, request)
        return NoReply(state)

    async def handle_info(self, message: Any, state: OwnerState) -> NoReply[OwnerState]:
        state.messages.append(message)
        if isinstance(message, DownMessage):
            assert state.task is not None
            state.done.set_result((state.task, state.messages))
        return NoReply(state)


class TestAsyncNolink:
    async def test_spawns_a_task_without_linking_to_the_caller(self, sup: Pid) -> None:
        """A crashing ``async_nolink`` task leaves its caller alive; the DOWN carries the crash."""

        async def body() -> Any:
            task = await TaskSupervisor.async_nolink(sup, fail, 1)
            down = await otp.receive(lambda m: isinstance(m, DownMessage) and m.ref is task.ref, WAIT)
            return down.reason

        reason = await in_process(body)
        assert isinstance(reason, Crash)
        assert isinstance(reason.exception, ValueError)

    async def test_delivers_reply_then_down(self, sup: Pid) -> None:
        """The owner gets ``TaskReply(ref, value)`` and then ``DownMessage(ref, pid, NORMAL)``."""

        async def body() -> tuple[Task[int], list[object]]:
            task = await TaskSupervisor.async_nolink(sup, double, 21)
            first = await otp.receive(timeout=WAIT)
            second = await otp.receive(timeout=WAIT)
            return task, [first, second, *await mailbox_left()]

        task, messages = await in_process(body)
        assert messages == [TaskReply(task.ref, 42), DownMessage(task.ref, task.pid, NORMAL)]

    async def test_gen_server_owner_handles_reply_and_down(self, sup: Pid) -> None:
        """A GenServer owner receives the reply and the DOWN in ``handle_info``."""
        done: asyncio.Future[tuple[Task[int], list[object]]] = asyncio.get_running_loop().create_future()
        owner = await TaskOwner.start_link(OwnerState(sup, done))
        GenServer.cast(owner, 21)
        task, messages = await asyncio.wait_for(done, WAIT)
        assert task.owner == owner
        assert messages == [TaskReply(task.ref, 42), DownMessage(task.ref, task.pid, NORMAL)]
        await GenServer.stop(owner)

    async def test_with_custom_shutdown(self, sup: Pid) -> None:
        """A ``BRUTAL_KILL`` task is killed at supervisor shutdown; the owner's DOWN says ``killed``."""

        async def body() -> Any:
            task = await TaskSupervisor.async_nolink(sup, block, shutdown=BRUTAL_KILL)
            await TaskSupervisor.stop(sup)
            down = await otp.receive(lambda m: isinstance(m, DownMessage) and m.ref is task.ref, WAIT)
            return down.reason

        assert await in_process(body) == KILLED

    async def test_raises_when_max_children_is_reached(self) -> None:
        """``async_nolink`` on a full supervisor raises ``MaxChildrenError``."""
        full = await TaskSupervisor.start_link(DynamicSupervisorSpec(max_children=1))
        await TaskSupervisor.async_nolink(full, block)
        with pytest.raises(MaxChildrenError):
            await TaskSupervisor.async_nolink(full, double, 1)
        await TaskSupervisor.stop(full)


# ------------------------------------------------------------------ await_result / yield_result


class TestAwaitResult:
    async def test_takes_both_messages_out_of_the_mailbox(self, sup: Pid) -> None:
        """In a process, ``await_result`` consumes the reply and flushes the DOWN."""

        async def body() -> tuple[int, list[object]]:
            task = await TaskSupervisor.async_nolink(sup, double, 21)
            await otp.await_exit(task.pid, WAIT)  # reply and DOWN are both in the mailbox now
            return await task.await_result(), await mailbox_left()

        assert await in_process(body) == (42, [])

    async def test_a_late_reply_after_a_timeout_is_dropped(self, sup: Pid) -> None:
        """After ``await_result`` timed out, the task's reply and DOWN never reach the owner."""
        gate = asyncio.Event()

        async def late() -> int:
            await gate.wait()
            return 1

        async def body() -> list[object]:
            task = await TaskSupervisor.async_nolink(sup, late)
            with pytest.raises(TaskTimeoutError):
                await task.await_result(timeout=0)
            gate.set()
            await otp.await_exit(task.pid, WAIT)
            return await mailbox_left()

        assert await in_process(body) == []


class TestYieldResult:
    async def test_returns_none_while_running_then_ok(self, sup: Pid) -> None:
        """``yield_result`` gives None while the task runs, then ``Ok(value)``; nothing is left over."""
        gate = asyncio.Event()

        async def when_released() -> str:
            await gate.wait()
            return "done"

        async def body() -> list[object]:
            task = await TaskSupervisor.async_nolink(sup, when_released)
            early = await task.yield_result(timeout=0)
            gate.set()
            return [early, await task.yield_result(), *await mailbox_left()]

        assert await in_process(body) == [None, Ok("done")]

    async def test_returns_exit_for_a_crashed_task(self, sup: Pid) -> None:
        """``yield_result`` gives ``Exit(Crash(exc))`` for a task that raised."""
        task = await TaskSupervisor.async_nolink(sup, fail, 1)
        result = await task.yield_result()
        assert isinstance(result, Exit)
        assert isinstance(result.reason, Crash)
        assert isinstance(result.reason.exception, ValueError)


# ------------------------------------------------------------------ shutdown


class TestShutdown:
    async def test_stops_a_running_task(self, sup: Pid) -> None:
        """``shutdown`` of a running task returns None; the task ended with ``shutdown``."""

        async def body() -> tuple[object, Pid, list[object]]:
            task = await TaskSupervisor.async_nolink(sup, block)
            return await task.shutdown(), task.pid, await mailbox_left()

        result, pid, left = await in_process(body)
        assert (result, left) == (None, [])
        assert otp.exit_reason(pid) == SHUTDOWN

    async def test_returns_the_reply_of_a_finished_task(self, sup: Pid) -> None:
        """``shutdown`` of a task that already replied returns ``Ok(value)`` and flushes the DOWN."""

        async def body() -> tuple[object, list[object]]:
            task = await TaskSupervisor.async_nolink(sup, double, 21)
            await otp.await_exit(task.pid, WAIT)
            return await task.shutdown(), await mailbox_left()

        assert await in_process(body) == (Ok(42), [])

    async def test_returns_exit_for_a_task_that_crashed(self, sup: Pid) -> None:
        """``shutdown`` of a task that had crashed returns ``Exit(reason)``."""

        async def body() -> object:
            task = await TaskSupervisor.async_nolink(sup, exit_with, "boom")
            await otp.await_exit(task.pid, WAIT)
            return await task.shutdown()

        assert await in_process(body) == Exit(Abnormal("boom"))

    async def test_with_brutal_kill(self, sup: Pid) -> None:
        """``shutdown(BRUTAL_KILL)`` kills the task at once and returns None."""
        task = await TaskSupervisor.async_nolink(sup, block)
        assert await task.shutdown(BRUTAL_KILL) is None
        assert otp.exit_reason(task.pid) == KILLED

    async def test_kills_a_task_that_does_not_stop_in_time(self, sup: Pid) -> None:
        """A task still cleaning up after ``timeout`` seconds is killed: ``Exit(KILLED)``."""
        started = asyncio.Event()

        async def slow_to_stop() -> None:
            try:
                started.set()
                await block()
            finally:
                await block()  # cleanup that never ends: only kill stops it

        task = await TaskSupervisor.async_nolink(sup, slow_to_stop)
        await asyncio.wait_for(started.wait(), WAIT)
        assert await task.shutdown(0.05) == Exit(KILLED)
        assert otp.exit_reason(task.pid) == KILLED

    async def test_unlinks_a_linked_task_first(self, sup: Pid) -> None:
        """Shutting down an ``async_`` task does not take its linked owner down with it."""

        async def body() -> object:
            task = await TaskSupervisor.async_(sup, block)
            return await task.shutdown(BRUTAL_KILL)

        assert await in_process(body) is None


# ------------------------------------------------------------------ async_stream_nolink


async def collect(stream: AsyncIterator[T]) -> list[T]:
    return [item async for item in stream]


class TestAsyncStreamNolink:
    async def test_streams_an_enumerable_with_fun(self, sup: Pid) -> None:
        """Each item gives ``Ok(fn(item))``, in input order ("streams an enumerable with fun")."""
        stream = TaskSupervisor.async_stream_nolink(sup, range(1, 5), double, max_concurrency=4)
        assert await collect(stream) == [Ok(2), Ok(4), Ok(6), Ok(8)]

    async def test_streams_an_enumerable_without_leaking_tasks(self, sup: Pid) -> None:
        """After the stream, no task is left and no message waits in the consumer's mailbox."""

        async def body() -> tuple[list[Ok[Any] | Exit], list[Pid], list[object]]:
            results = await collect(TaskSupervisor.async_stream_nolink(sup, [1, 2, 3, 4], identity))
            return results, await TaskSupervisor.children(sup), await mailbox_left()

        assert await in_process(body) == ([Ok(1), Ok(2), Ok(3), Ok(4)], [], [])

    async def test_streams_an_enumerable_with_slowest_first(self, sup: Pid) -> None:
        """``ordered=True`` yields in input order though the tasks finish in reverse."""
        turns = {n: asyncio.Event() for n in range(1, 6)}
        finished: list[int] = []

        async def finish_in_turn(n: int) -> int:
            await turns[n].wait()
            finished.append(n)
            turns[n + 1].set()
            return n

        turns[1].set()
        stream = TaskSupervisor.async_stream_nolink(sup, [4, 3, 2, 1], finish_in_turn, max_concurrency=4)
        assert await collect(stream) == [Ok(4), Ok(3), Ok(2), Ok(1)]
        assert finished == [1, 2, 3, 4]

    async def test_unordered_yields_in_completion_order(self, sup: Pid) -> None:
        """``ordered=False`` yields each result as its task finishes."""
        turns = {n: asyncio.Event() for n in range(1, 6)}

        async def finish_in_turn(n: int) -> int:
            await turns[n].wait()
            turns[n + 1].set()
            return n

        turns[1].set()
        stream = TaskSupervisor.async_stream_nolink(
            sup, [4, 3, 2, 1], finish_in_turn, max_concurrency=4, ordered=False
        )
        assert await collect(stream) == [Ok(1), Ok(2), Ok(3), Ok(4)]

    async def test_streams_an_enumerable_with_exits(self, sup: Pid) -> None:
        """A task that exits gives ``Exit(reason)`` for its item ("streams an enumerable with exits")."""
        stream = TaskSupervisor.async_stream_nolink(sup, [1, 2, 3, 4], exit_with, max_concurrency=4)
        assert await collect(stream) == [Exit(Abnormal(n)) for n in (1, 2, 3, 4)]

    async def test_a_raising_task_gives_exit_with_crash(self, sup: Pid) -> None:
        """A task that raises gives ``Exit(Crash(exc))``; the other items are unaffected."""
        results = await collect(TaskSupervisor.async_stream_nolink(sup, ["x"], fail))
        assert len(results) == 1
        result = results[0]
        assert isinstance(result, Exit)
        assert isinstance(result.reason, Crash)
        assert str(result.reason.exception) == "bad input 'x'"

    async def test_shuts_down_unused_tasks(self, sup: Pid) -> None:
        """``aclose`` after the first result kills the tasks still running and waits for them."""

        async def first_or_block(x: int) -> int:
            if x != 0:
                await block()
            return x

        stream = TaskSupervisor.async_stream_nolink(sup, [0, 1, 2, 3], first_or_block, max_concurrency=4)
        assert await anext(stream) == Ok(0)
        unused = await TaskSupervisor.children(sup)
        await stream.aclose()
        assert await TaskSupervisor.children(sup) == []
        assert len(unused) == 3
        assert [otp.exit_reason(pid) for pid in unused] == [KILLED] * 3

    async def test_shuts_down_unused_tasks_without_leaking_messages(self, sup: Pid) -> None:
        """Leaving the stream with ``break`` kills the remaining tasks and leaves no message."""

        async def first_or_block(x: int) -> int:
            if x != 0:
                await block()
            return x

        async def body() -> tuple[object, list[Any], list[object]]:
            running: list[Pid] = []
            async for result in TaskSupervisor.async_stream_nolink(
                sup, [0, 1, 2, 3], first_or_block, max_concurrency=4
            ):
                first = result
                running = await TaskSupervisor.children(sup)
                break
            reasons = [await otp.await_exit(pid, WAIT) for pid in running]
            return first, reasons, await mailbox_left()

        assert await in_process(body) == (Ok(0), [KILLED] * 3, [])

    async def test_raises_an_error_if_max_children_is_reached_with_clean_stream_shutdown(self) -> None:
        """A full supervisor mid-stream: the stream closes, killing its tasks, then raises."""
        full = await TaskSupervisor.start_link(DynamicSupervisorSpec(max_children=1))

        async def body() -> tuple[list[Pid], list[object]]:
            with pytest.raises(MaxChildrenError):
                await collect(TaskSupervisor.async_stream_nolink(full, [1, 2, 3], block, max_concurrency=2))
            return await TaskSupervisor.children(full), await mailbox_left()

        assert await in_process(body) == ([], [])
        await TaskSupervisor.stop(full)

    async def test_with_timeout_and_zip_input_on_exit_set_to_true(self, sup: Pid) -> None:
        """Under ``KILL_TASK`` and ``zip_input_on_exit`` a timed-out task gives ``Exit((input, TIMEOUT))``."""

        async def one_is_quick(x: int) -> int:
            if x != 1:
                await block()
            return x

        stream = TaskSupervisor.async_stream_nolink(
            sup, [1, 100], one_is_quick, timeout=0.05, on_timeout=OnTimeout.KILL_TASK, zip_input_on_exit=True
        )
        assert await collect(stream) == [Ok(1), Exit((100, TIMEOUT))]

    async def test_kill_task_kills_the_timed_out_task(self, sup: Pid) -> None:
        """Under ``KILL_TASK`` a task past its timeout is killed and its item gives ``Exit(TIMEOUT)``."""
        pids: list[Pid | None] = []

        async def record_and_block(_x: int) -> None:
            pids.append(otp.current_pid())
            await block()

        stream = TaskSupervisor.async_stream_nolink(
            sup, [1], record_and_block, timeout=0.05, on_timeout=OnTimeout.KILL_TASK
        )
        assert await collect(stream) == [Exit(TIMEOUT)]
        assert len(pids) == 1
        assert pids[0] is not None
        assert otp.exit_reason(pids[0]) == KILLED

    async def test_on_timeout_exit_raises_and_kills_the_other_tasks(self, sup: Pid) -> None:
        """Under ``EXIT`` a timed-out task makes the iteration raise; no task is left behind."""
        stream = TaskSupervisor.async_stream_nolink(sup, [1, 2, 3], block, timeout=0.05, max_concurrency=3)
        with pytest.raises(StreamTimeoutError) as info:
            await collect(stream)
        assert info.value.timeout == 0.05
        assert await TaskSupervisor.children(sup) == []

    async def test_zip_input_on_exit_carries_the_input_of_a_crash(self, sup: Pid) -> None:
        """With ``zip_input_on_exit`` an exit gives ``Exit((input, reason))``, successes stay ``Ok``."""

        async def odd_exits(x: int) -> int:
            if x % 2:
                raise ProcessExit(Abnormal("odd"))
            return x

        stream = TaskSupervisor.async_stream_nolink(sup, [1, 2], odd_exits, zip_input_on_exit=True)
        assert await collect(stream) == [Exit((1, Abnormal("odd"))), Ok(2)]

    async def test_consumes_an_async_iterable(self, sup: Pid) -> None:
        """The input may be an async iterable."""

        async def numbers() -> AsyncIterator[int]:
            for n in range(1, 4):
                yield n

        assert await collect(TaskSupervisor.async_stream_nolink(sup, numbers(), double)) == [
            Ok(2),
            Ok(4),
            Ok(6),
        ]

    async def test_is_lazy_and_bounded(self, sup: Pid) -> None:
        """At most ``max_concurrency`` tasks run, and the input is pulled at most that far ahead."""
        limit = 5
        pulled = consumed = worst_gap = alive = peak = 0
        all_started = asyncio.Event()

        def source() -> Any:
            nonlocal pulled, worst_gap
            for n in range(200):
                pulled += 1
                worst_gap = max(worst_gap, pulled - consumed)
                yield n

        async def work(n: int) -> int:
            nonlocal alive, peak
            alive += 1
            peak = max(peak, alive)
            if alive == limit:
                all_started.set()
            await all_started.wait()
            alive -= 1
            return n

        async for _result in TaskSupervisor.async_stream_nolink(sup, source(), work, max_concurrency=limit):
            consumed += 1
        assert (consumed, peak) == (200, limit)
        assert worst_gap <= limit

    async def test_rejects_bad_options_at_once(self, sup: Pid) -> None:
        """Bad options raise when the stream is made, before anything runs."""
        with pytest.raises(ValueError, match="max_concurrency"):
            TaskSupervisor.async_stream_nolink(sup, [1], double, max_concurrency=0)
        with pytest.raises(TypeError, match="on_timeout"):
            TaskSupervisor.async_stream_nolink(sup, [1], double, on_timeout="kill_task")  # type: ignore[arg-type]


# ------------------------------------------------------------------ async_stream (linked)


class TestStreamOptions:
    def test_the_keywords_are_the_options(self) -> None:
        """The keyword options the stream functions take are exactly :class:`StreamOptions`' fields,
        with the same types: one list of options, checked here so that the two cannot drift."""
        options = typing.get_type_hints(otp.StreamOptions)
        assert set(options) == {field.name for field in dataclasses.fields(otp.StreamOptions)}
        assert typing.get_type_hints(otp.StreamKeywords) == options

    def test_defaults_are_elixirs(self) -> None:
        """Ordered, a 5 s timeout that ends the stream, the CPU count of tasks at once."""
        options = otp.StreamOptions()
        assert (options.ordered, options.timeout, options.on_timeout) == (True, 5.0, OnTimeout.EXIT)
        assert options.concurrency == (os.cpu_count() or 1)

    def test_a_bad_option_is_named(self) -> None:
        """A wrong value raises at once, naming the option."""
        with pytest.raises(ValueError, match="max_concurrency"):
            otp.StreamOptions(max_concurrency=0)


class TestAsyncStream:
    async def test_a_crash_takes_the_consumer_down(self, sup: Pid) -> None:
        """A linked stream task that crashes takes down a consumer that does not trap exits."""

        async def consumer() -> None:
            await collect(TaskSupervisor.async_stream(sup, [1], fail))

        reason = await otp.await_exit(otp.spawn(consumer), WAIT)
        assert isinstance(reason, Crash)
        assert isinstance(reason.exception, ValueError)

    async def test_a_trapping_consumer_gets_exit_and_no_exit_message(self, sup: Pid) -> None:
        """A consumer that traps exits gets ``Exit(reason)`` per crash and no ``ExitMessage``."""

        async def body() -> tuple[list[Ok[None] | Exit], list[object]]:
            otp.trap_exit(True)
            results = await collect(TaskSupervisor.async_stream(sup, [1, 2], exit_with))
            return results, await mailbox_left()

        assert await in_process(body) == ([Exit(Abnormal(1)), Exit(Abnormal(2))], [])

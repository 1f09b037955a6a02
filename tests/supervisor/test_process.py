"""Processes: exit signals over links, monitors, mailboxes, timers, names.

Each behaviour is OTP's (``erlang:link/1``, ``monitor/2``, ``exit/2``, ``receive``), ported from
Elixir's ``process_test.exs`` and the BEAM's documented signal rules. Tests run in a plain script;
what needs a calling process runs in one through :func:`in_process`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from mailman import supervisor as otp
from mailman.supervisor import (
    KILL,
    KILLED,
    NOPROC,
    NORMAL,
    SHUTDOWN,
    Abnormal,
    Crash,
    DownMessage,
    ExitMessage,
    ExitReason,
    NotAProcessError,
    Pid,
    ProcessExit,
    Shutdown,
)
from tests.supervisor.processes import WAIT, in_process, wait_forever

BOOM = RuntimeError("boom")

# Every reason that ends a non-trapping linked process, as ``erlang:exit/2`` lists them.
DEADLY_REASONS = [
    pytest.param(SHUTDOWN, id="shutdown"),
    pytest.param(Shutdown("rebalanced"), id="shutdown-detail"),
    pytest.param(Crash(BOOM), id="crash"),
    pytest.param(Abnormal("died"), id="abnormal"),
]
ALL_REASONS = [pytest.param(NORMAL, id="normal"), *DEADLY_REASONS]


async def end_with(reason: ExitReason) -> None:
    """Wait for any message, then end with ``reason`` (raising the exception of a Crash)."""
    await otp.receive()
    if isinstance(reason, Crash):
        raise reason.exception
    raise ProcessExit(reason)


def down_of(ref: otp.Ref) -> Callable[[Any], bool]:
    return lambda message: isinstance(message, DownMessage) and message.ref is ref


async def dead_pid(reason: ExitReason = NORMAL) -> Pid:
    """A pid whose process has already ended with ``reason``."""
    pid = otp.spawn(end_with, reason)
    otp.send(pid, "go")
    assert await otp.await_exit(pid, timeout=WAIT) == reason
    return pid


async def trapping_process() -> Pid:
    """A process that traps exits (already set when this returns) and waits forever."""
    trapping: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def body() -> None:
        otp.trap_exit()
        trapping.set_result(None)
        await wait_forever()

    pid = otp.spawn(body)
    await trapping
    return pid


class TestLink:
    async def test_normal_exit_is_ignored_by_a_non_trapping_linked_process(self) -> None:
        """A linked process ending ``normal`` does not take a non-trapping process with it."""

        async def body() -> ExitReason:
            child = otp.spawn_link(end_with, NORMAL)
            ref = otp.monitor(child)
            otp.send(child, "go")
            down = await otp.receive(down_of(ref), timeout=WAIT)
            return down.reason  # type: ignore[no-any-return]

        assert await in_process(body) == NORMAL

    async def test_normal_exit_arrives_as_exit_message_when_trapping(self) -> None:
        """A trapping process gets ``ExitMessage(pid, NORMAL)`` when a linked process ends normally."""

        async def body() -> tuple[Pid, Any]:
            otp.trap_exit()
            child = otp.spawn_link(end_with, NORMAL)
            otp.send(child, "go")
            return child, await otp.receive(timeout=WAIT)

        child, message = await in_process(body)
        assert message == ExitMessage(child, NORMAL)

    @pytest.mark.parametrize("reason", DEADLY_REASONS)
    async def test_other_reasons_kill_a_non_trapping_linked_process_with_the_same_reason(
        self, reason: ExitReason
    ) -> None:
        """shutdown, {shutdown, T}, a crash or any other term ends a non-trapping linked process with
        that same reason."""

        async def parent() -> None:
            child = otp.spawn_link(end_with, reason)
            otp.send(child, "go")
            await wait_forever()

        assert await otp.await_exit(otp.spawn(parent), timeout=WAIT) == reason

    @pytest.mark.parametrize("reason", DEADLY_REASONS)
    async def test_other_reasons_arrive_as_exit_message_when_trapping(self, reason: ExitReason) -> None:
        """A trapping process survives a linked process's abnormal end and gets its reason as a message."""

        async def body() -> tuple[Pid, Any]:
            otp.trap_exit()
            child = otp.spawn_link(end_with, reason)
            otp.send(child, "go")
            return child, await otp.receive(timeout=WAIT)

        child, message = await in_process(body)
        assert message == ExitMessage(child, reason)

    async def test_a_crash_reaches_the_linked_process_with_the_original_exception(self) -> None:
        """The Crash a linked process dies of carries the very exception the other process raised."""
        error = ValueError("bad input")

        async def crasher() -> None:
            await otp.receive()
            raise error

        async def parent() -> None:
            otp.send(otp.spawn_link(crasher), "go")
            await wait_forever()

        reason = await otp.await_exit(otp.spawn(parent), timeout=WAIT)
        assert isinstance(reason, Crash)
        assert reason.exception is error

    async def test_link_is_two_way(self) -> None:
        """``link/1`` from either side: the process that linked dies when the other one does, too."""
        target = otp.spawn(end_with, Abnormal("target died"))

        async def linker() -> None:
            otp.link(target)
            otp.send(target, "go")
            await wait_forever()

        assert await otp.await_exit(otp.spawn(linker), timeout=WAIT) == Abnormal("target died")

    async def test_link_carries_the_linkers_exit_to_the_target(self) -> None:
        """The link also carries the exit of the process that linked to the one it linked to."""
        target = otp.spawn(wait_forever)

        async def linker() -> None:
            otp.link(target)
            raise ProcessExit(Abnormal("linker died"))

        assert await otp.await_exit(otp.spawn(linker), timeout=WAIT) == Abnormal("linker died")
        assert await otp.await_exit(target, timeout=WAIT) == Abnormal("linker died")

    async def test_link_to_a_dead_pid_sends_noproc_to_a_trapping_caller(self) -> None:
        """Linking to a process that already ended delivers ``ExitMessage(pid, NOPROC)``."""
        dead = await dead_pid()

        async def body() -> Any:
            otp.trap_exit()
            otp.link(dead)
            return await otp.receive(timeout=0)

        assert await in_process(body) == ExitMessage(dead, NOPROC)

    async def test_link_to_a_dead_pid_ends_a_non_trapping_caller_with_noproc(self) -> None:
        """Without trapping, linking to a process that already ended kills the caller with ``noproc``."""
        dead = await dead_pid()
        reached: list[str] = []

        async def body() -> None:
            otp.link(dead)
            reached.append("after link")

        assert await otp.await_exit(otp.spawn(body), timeout=WAIT) == NOPROC
        assert reached == []

    async def test_unlink_stops_propagation(self) -> None:
        """After ``unlink`` a crash of the other process no longer reaches the caller."""

        async def body() -> ExitReason:
            child = otp.spawn_link(end_with, Abnormal("died"))
            otp.unlink(child)
            ref = otp.monitor(child)
            otp.send(child, "go")
            down = await otp.receive(down_of(ref), timeout=WAIT)
            return down.reason  # type: ignore[no-any-return]

        assert await in_process(body) == Abnormal("died")

    async def test_spawn_link_from_a_plain_script_links_nothing(self) -> None:
        """Outside a process ``spawn_link`` is ``spawn``: the crash has nobody to reach."""
        pid = otp.spawn_link(end_with, Abnormal("alone"))
        otp.send(pid, "go")
        assert await otp.await_exit(pid, timeout=WAIT) == Abnormal("alone")

    async def test_link_outside_a_process_raises(self) -> None:
        """``link`` needs a calling process."""
        pid = await trapping_process()
        with pytest.raises(NotAProcessError):
            otp.link(pid)
        otp.exit(pid, KILL)


class TestKill:
    async def test_kill_cannot_be_trapped(self) -> None:
        """``exit(pid, KILL)`` ends even a trapping process, with reason ``killed``."""
        pid = await trapping_process()
        otp.exit(pid, KILL)
        assert await otp.await_exit(pid, timeout=WAIT) == KILLED

    async def test_links_of_a_killed_process_see_killed_as_a_trappable_message(self) -> None:
        """The links of a killed process get ``killed`` (not ``kill``), which a trapping process traps."""

        async def body() -> tuple[Pid, Any]:
            otp.trap_exit()
            child = otp.spawn_link(wait_forever)
            otp.exit(child, KILL)
            return child, await otp.receive(timeout=WAIT)

        child, message = await in_process(body)
        assert message == ExitMessage(child, KILLED)

    async def test_links_of_a_killed_process_die_with_killed_when_not_trapping(self) -> None:
        """A non-trapping process linked to a killed one ends with ``killed`` too."""

        async def parent() -> None:
            otp.exit(otp.spawn_link(wait_forever), KILL)
            await wait_forever()

        assert await otp.await_exit(otp.spawn(parent), timeout=WAIT) == KILLED

    async def test_a_process_ending_with_reason_kill_sends_a_trappable_signal(self) -> None:
        """Only ``exit/2`` makes ``kill`` untrappable: a link that *ended* with ``kill`` is trapped."""

        async def ends_with_kill() -> None:
            raise otp.ProcessExit(KILL)

        async def body() -> tuple[Pid, Any]:
            otp.trap_exit()
            child = otp.spawn_link(ends_with_kill)
            return child, await otp.receive(timeout=WAIT)

        child, message = await in_process(body)
        assert message == ExitMessage(child, KILL)


class TestExit:
    async def test_normal_signal_to_a_non_trapping_process_is_ignored(self) -> None:
        """``exit(pid, NORMAL)`` from another process leaves a non-trapping process running."""
        pid = otp.spawn(end_with, Abnormal("still here"))
        otp.exit(pid, NORMAL)
        otp.send(pid, "go")
        assert await otp.await_exit(pid, timeout=WAIT) == Abnormal("still here")

    async def test_normal_signal_to_self_ends_the_caller(self) -> None:
        """A process that sends itself ``exit(self, NORMAL)`` ends with ``normal``, as on the BEAM."""
        reached: list[str] = []

        async def body() -> None:
            otp.exit(otp.self_pid(), NORMAL)
            reached.append("after exit")
            await wait_forever()

        assert await otp.await_exit(otp.spawn(body), timeout=WAIT) == NORMAL
        assert reached == []

    async def test_signal_ends_a_non_trapping_process_with_its_reason(self) -> None:
        """``exit(pid, SHUTDOWN)`` ends a non-trapping process blocked in ``receive`` with ``shutdown``."""
        pid = otp.spawn(wait_forever)
        otp.exit(pid, SHUTDOWN)
        assert await otp.await_exit(pid, timeout=WAIT) == SHUTDOWN

    async def test_signal_to_a_trapping_process_arrives_with_the_sender(self) -> None:
        """A trapping process gets ``ExitMessage(sender, reason)`` for an ``exit/2`` signal."""

        async def body() -> tuple[Pid, Any]:
            otp.trap_exit()
            me = otp.self_pid()

            async def sender() -> None:
                otp.exit(me, Abnormal("go away"))

            sender_pid = otp.spawn(sender)
            return sender_pid, await otp.receive(timeout=WAIT)

        sender_pid, message = await in_process(body)
        assert message == ExitMessage(sender_pid, Abnormal("go away"))

    async def test_normal_signal_to_a_trapping_process_arrives_as_a_message(self) -> None:
        """Even ``normal`` becomes an ``ExitMessage`` for a trapping process."""

        async def body() -> Any:
            otp.trap_exit()
            me = otp.self_pid()

            async def sender() -> None:
                otp.exit(me, NORMAL)

            otp.spawn(sender)
            return await otp.receive(timeout=WAIT)

        message = await in_process(body)
        assert isinstance(message, ExitMessage)
        assert message.reason == NORMAL

    async def test_trap_exit_returns_the_previous_flag(self) -> None:
        """``trap_exit(flag)`` returns the old value, as ``process_flag/2`` does."""

        async def body() -> list[bool]:
            return [otp.trap_exit(True), otp.trap_exit(False), otp.trap_exit(False)]

        assert await in_process(body) == [False, True, False]


class TestProcessEnd:
    async def test_returning_ends_with_normal(self) -> None:
        """A process whose function returns ends with ``normal``."""

        async def body() -> str:
            return "done"

        assert await otp.await_exit(otp.spawn(body), timeout=WAIT) == NORMAL

    async def test_raising_ends_with_crash_carrying_the_exception(self) -> None:
        """An unhandled exception ends the process with ``Crash(exc)`` holding that exception and its
        traceback."""
        error = KeyError("missing")

        async def body() -> None:
            raise error

        reason = await otp.await_exit(otp.spawn(body), timeout=WAIT)
        assert reason == Crash(error)
        assert isinstance(reason, Crash)
        assert reason.exception is error
        assert error.__traceback__ is not None

    async def test_process_exit_ends_with_its_reason(self) -> None:
        """``raise ProcessExit(reason)`` ends the process with exactly that reason."""

        async def body() -> None:
            raise ProcessExit(Shutdown("rebalanced"))

        assert await otp.await_exit(otp.spawn(body), timeout=WAIT) == Shutdown("rebalanced")

    async def test_process_exit_is_not_caught_by_except_exception(self) -> None:
        """``ProcessExit`` is a BaseException: ``except Exception`` in user code cannot swallow it."""

        async def body() -> None:
            try:
                raise ProcessExit(SHUTDOWN)
            except Exception:  # the point of the test: this must not catch the exit
                return

        assert await otp.await_exit(otp.spawn(body), timeout=WAIT) == SHUTDOWN

    async def test_is_alive_and_exit_reason_follow_the_process(self) -> None:
        """``is_alive`` is True and ``exit_reason`` None while it runs; then False and the reason."""
        pid = otp.spawn(end_with, Abnormal("done"))
        assert (otp.is_alive(pid), otp.exit_reason(pid)) == (True, None)
        otp.send(pid, "go")
        await otp.await_exit(pid, timeout=WAIT)
        assert (otp.is_alive(pid), otp.exit_reason(pid)) == (False, Abnormal("done"))

    async def test_self_pid_is_the_spawned_pid(self) -> None:
        """Inside a process ``self_pid()`` and ``current_pid()`` return the pid ``spawn`` returned."""
        seen: asyncio.Future[tuple[Pid, Pid | None]] = asyncio.get_running_loop().create_future()

        async def body() -> None:
            seen.set_result((otp.self_pid(), otp.current_pid()))

        pid = otp.spawn(body)
        assert await seen == (pid, pid)

    async def test_self_pid_outside_a_process_raises(self) -> None:
        """In a plain script there is no ``self()``: ``self_pid`` raises and ``current_pid`` is None."""
        with pytest.raises(NotAProcessError):
            otp.self_pid()
        assert otp.current_pid() is None

    async def test_pids_are_printed_as_erlang_prints_them(self) -> None:
        """A pid reads ``<0.N.0>``, compares by identity of the process and is hashable."""
        pid = otp.spawn(wait_forever)
        other = otp.spawn(wait_forever)
        assert repr(pid) == f"<0.{pid.id}.0>"
        assert pid != other
        assert len({pid, pid, other}) == 2
        otp.exit(pid, KILL)
        otp.exit(other, KILL)


class TestMonitor:
    @pytest.mark.parametrize("reason", ALL_REASONS)
    async def test_down_message_carries_the_exit_reason(self, reason: ExitReason) -> None:
        """A monitor delivers ``DownMessage(ref, pid, reason)`` for every exit reason, normal included,
        and never kills the watcher."""

        async def body() -> tuple[otp.Ref, Pid, Any]:
            child = otp.spawn(end_with, reason)
            ref = otp.monitor(child)
            otp.send(child, "go")
            return ref, child, await otp.receive(timeout=WAIT)

        ref, child, message = await in_process(body)
        assert message == DownMessage(ref, child, reason)

    async def test_down_message_for_a_killed_process_says_killed(self) -> None:
        """A monitor of a killed process sees ``killed``."""

        async def body() -> tuple[Pid, Any]:
            child = otp.spawn(wait_forever)
            otp.monitor(child)
            otp.exit(child, KILL)
            return child, await otp.receive(timeout=WAIT)

        child, message = await in_process(body)
        assert (message.pid, message.reason) == (child, KILLED)

    async def test_monitor_of_a_dead_pid_delivers_noproc_at_once(self) -> None:
        """Monitoring a process that already ended puts ``DownMessage(ref, pid, NOPROC)`` in the mailbox
        before ``monitor`` returns."""
        dead = await dead_pid(Abnormal("gone"))

        async def body() -> tuple[otp.Ref, Any]:
            ref = otp.monitor(dead)
            return ref, await otp.receive(timeout=0)

        ref, message = await in_process(body)
        assert message == DownMessage(ref, dead, NOPROC)

    async def test_each_monitor_gets_its_own_down_message(self) -> None:
        """Two monitors of one process give two DOWN messages, one per reference."""

        async def body() -> tuple[list[otp.Ref], list[otp.Ref]]:
            child = otp.spawn(end_with, NORMAL)
            refs = [otp.monitor(child), otp.monitor(child)]
            otp.send(child, "go")
            downs = [await otp.receive(timeout=WAIT), await otp.receive(timeout=WAIT)]
            return refs, [down.ref for down in downs]

        refs, down_refs = await in_process(body)
        assert set(down_refs) == set(refs)
        assert len(set(refs)) == 2

    async def test_demonitor_before_the_exit_means_no_down_message(self) -> None:
        """After ``demonitor`` the process's end sends nothing for that reference."""

        async def body() -> None:
            child = otp.spawn(end_with, Abnormal("died"))
            dropped = otp.monitor(child)
            otp.demonitor(dropped)
            kept = otp.monitor(child)
            otp.send(child, "go")
            await otp.receive(down_of(kept), timeout=WAIT)
            with pytest.raises(TimeoutError):
                await otp.receive(down_of(dropped), timeout=0)

        await in_process(body)

    async def test_demonitor_with_flush_removes_a_down_message_already_arrived(self) -> None:
        """``demonitor(ref, flush=True)`` also drops that reference's DOWN if it is in the mailbox."""

        async def body() -> None:
            child = otp.spawn(end_with, Abnormal("died"))
            flushed = otp.monitor(child)
            witness = otp.monitor(child)
            otp.send(child, "go")
            await otp.receive(down_of(witness), timeout=WAIT)  # so the other DOWN has arrived too
            otp.demonitor(flushed, flush=True)
            with pytest.raises(TimeoutError):
                await otp.receive(down_of(flushed), timeout=0)

        await in_process(body)

    async def test_demonitor_without_flush_leaves_an_arrived_down_message(self) -> None:
        """Without ``flush`` a DOWN that already arrived stays in the mailbox."""

        async def body() -> Any:
            child = otp.spawn(end_with, Abnormal("died"))
            ref = otp.monitor(child)
            witness = otp.monitor(child)
            otp.send(child, "go")
            await otp.receive(down_of(witness), timeout=WAIT)
            otp.demonitor(ref)
            return await otp.receive(down_of(ref), timeout=0)

        message = await in_process(body)
        assert message.reason == Abnormal("died")


class TestReceive:
    async def test_selective_receive_leaves_other_messages_in_order(self) -> None:
        """``receive(match)`` takes the first matching message; the others stay, in arrival order."""

        async def body() -> list[Any]:
            me = otp.self_pid()
            for message in ["a", 1, "b", 2, "c"]:
                otp.send(me, message)
            first_int = await otp.receive(lambda m: isinstance(m, int))
            rest = [await otp.receive(timeout=0) for _ in range(4)]
            return [first_int, *rest]

        assert await in_process(body) == [1, "a", "b", 2, "c"]

    async def test_selective_receive_waits_for_a_matching_message(self) -> None:
        """A message that does not match wakes nobody; the matching one that follows is taken."""
        waiting: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        got: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()

        async def body() -> None:
            waiting.set_result(None)
            wanted = await otp.receive(lambda m: m == "wanted")
            got.set_result([wanted, await otp.receive(timeout=0)])

        pid = otp.spawn(body)
        await waiting
        otp.send(pid, "unwanted")
        otp.send(pid, "wanted")
        assert await asyncio.wait_for(got, WAIT) == ["wanted", "unwanted"]

    async def test_receive_timeout_raises_timeout_error(self) -> None:
        """With nothing matching in time, ``receive(timeout=...)`` raises ``TimeoutError``, and the
        non-matching messages are still there."""

        async def body() -> Any:
            otp.send(otp.self_pid(), "other")
            with pytest.raises(TimeoutError):
                await otp.receive(lambda m: m == "never", timeout=0.01)
            return await otp.receive(timeout=0)

        assert await in_process(body) == "other"

    async def test_receive_outside_a_process_raises(self) -> None:
        """A plain script has no mailbox: ``receive`` raises ``NotAProcessError``."""
        with pytest.raises(NotAProcessError):
            await otp.receive(timeout=0)


class TestSend:
    async def test_send_to_a_dead_pid_does_nothing(self) -> None:
        """Sending to a process that ended neither raises nor revives it."""
        dead = await dead_pid(Abnormal("gone"))
        otp.send(dead, "hello")
        assert otp.is_alive(dead) is False
        assert otp.exit_reason(dead) == Abnormal("gone")

    async def test_messages_from_one_sender_arrive_in_order(self) -> None:
        """Messages from one sender are received in the order they were sent."""
        got: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()

        async def body() -> None:
            got.set_result([await otp.receive() for _ in range(5)])

        pid = otp.spawn(body)
        for number in range(5):
            otp.send(pid, number)
        assert await asyncio.wait_for(got, WAIT) == [0, 1, 2, 3, 4]


class TestSendAfter:
    async def test_send_after_delivers_the_message_later(self) -> None:
        """``send_after`` delivers nothing at once, and the message after the delay."""

        async def body() -> Any:
            otp.send_after(otp.self_pid(), "tick", 0.02)
            with pytest.raises(TimeoutError):
                await otp.receive(timeout=0)
            return await otp.receive(timeout=WAIT)

        assert await in_process(body) == "tick"

    async def test_cancel_timer_prevents_delivery(self) -> None:
        """A cancelled timer never delivers; a later timer still does."""

        async def body() -> list[Any]:
            me = otp.self_pid()
            otp.cancel_timer(otp.send_after(me, "cancelled", 0.01))
            otp.send_after(me, "kept", 0.03)
            kept = await otp.receive(timeout=WAIT)
            with pytest.raises(TimeoutError):
                await otp.receive(timeout=0)
            return [kept]

        assert await in_process(body) == ["kept"]

    async def test_cancel_timer_after_it_fired_is_harmless(self) -> None:
        """Cancelling a timer that already delivered leaves the message in place."""

        async def body() -> Any:
            me = otp.self_pid()
            timer = otp.send_after(me, "tick", 0)
            await otp.receive(lambda m: m == "tick", timeout=WAIT)
            otp.send(me, "after")
            otp.cancel_timer(timer)
            return await otp.receive(timeout=0)

        assert await in_process(body) == "after"


class TestAwaitExit:
    async def test_await_exit_from_a_plain_script(self) -> None:
        """A plain script learns how a process ended with ``await_exit``."""

        async def worker() -> None:
            message = await otp.receive()
            raise ProcessExit(Shutdown(message))

        pid = otp.spawn(worker)
        otp.send(pid, "hello")
        assert await otp.await_exit(pid) == Shutdown("hello")

    async def test_await_exit_of_an_ended_process_returns_at_once(self) -> None:
        """For a process that already ended, ``await_exit`` returns its reason without waiting."""
        dead = await dead_pid(Abnormal("gone"))
        assert await otp.await_exit(dead, timeout=0) == Abnormal("gone")

    async def test_await_exit_timeout_raises_and_leaves_the_process_running(self) -> None:
        """``await_exit(timeout=...)`` raises ``TimeoutError``; the process is not affected."""
        pid = otp.spawn(wait_forever)
        with pytest.raises(TimeoutError):
            await otp.await_exit(pid, timeout=0.01)
        assert otp.is_alive(pid)
        otp.exit(pid, KILL)
        assert await otp.await_exit(pid, timeout=WAIT) == KILLED


class TestNames:
    async def test_register_and_whereis(self) -> None:
        """``register(name, pid)`` makes ``whereis(name)`` return the pid."""
        pid = otp.spawn(wait_forever)
        otp.register("worker", pid)
        assert otp.whereis("worker") == pid
        otp.exit(pid, KILL)

    async def test_unregister_frees_the_name(self) -> None:
        """After ``unregister`` the name resolves to nothing, and unregistering it again raises."""
        pid = otp.spawn(wait_forever)
        otp.register("worker", pid)
        otp.unregister("worker")
        assert otp.whereis("worker") is None
        with pytest.raises(ValueError, match="not registered"):
            otp.unregister("worker")
        otp.exit(pid, KILL)

    async def test_name_is_freed_when_the_process_ends(self) -> None:
        """A process's name goes with it, and another process can take it."""
        first = otp.spawn(wait_forever)
        otp.register("worker", first)
        otp.exit(first, KILL)
        await otp.await_exit(first, timeout=WAIT)
        assert otp.whereis("worker") is None
        second = otp.spawn(wait_forever)
        otp.register("worker", second)
        assert otp.whereis("worker") == second
        otp.exit(second, KILL)

    async def test_register_a_taken_name_raises(self) -> None:
        """A name held by a live process cannot be registered again (Erlang's ``badarg``)."""
        first = otp.spawn(wait_forever)
        second = otp.spawn(wait_forever)
        otp.register("worker", first)
        with pytest.raises(ValueError, match="already registered"):
            otp.register("worker", second)
        assert otp.whereis("worker") == first
        otp.exit(first, KILL)
        otp.exit(second, KILL)

    async def test_register_a_dead_pid_raises(self) -> None:
        """Only a live process can be registered."""
        dead = await dead_pid()
        with pytest.raises(ValueError, match="not alive"):
            otp.register("ghost", dead)
        assert otp.whereis("ghost") is None

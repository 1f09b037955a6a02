"""GenServer: start, call, cast, continue, timeouts, stop and terminate, as OTP defines them.

Behaviours come from Erlang's ``gen_server_SUITE`` and Elixir's ``gen_server_test.exs`` and the
``GenServer`` docs (rules 81-92 of ``otp-semantics.md``). The servers under test are small classes at
module level; tests that need a calling process (a parent, a trapping caller) run in one through
:func:`in_process`.
"""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass, field
from typing import Any

import pytest

from mailman import supervisor as otp
from mailman.supervisor import (
    IGNORE,
    KILL,
    KILLED,
    NO_REPLY,
    NORMAL,
    SHUTDOWN,
    TIMEOUT,
    Abnormal,
    AlreadyStartedError,
    CallExitError,
    CallingSelfError,
    CallTimeoutError,
    Crash,
    ExitMessage,
    ExitReason,
    From,
    GenServer,
    Ignore,
    Init,
    NoProcessError,
    NoReply,
    Pid,
    ProcessExit,
    Reply,
    Shutdown,
    StartError,
    StartIgnored,
    Stop,
)
from tests.supervisor.conftest import EventLog
from tests.supervisor.processes import WAIT, in_process, wait_forever

# ------------------------------------------------------------------ servers under test


@dataclass(frozen=True, slots=True)
class Peek(otp.Call[Any]):
    """A typed request: the top of the stack, left on it."""


@dataclass(frozen=True, slots=True)
class Depth(otp.Call[int]):
    """A typed request: how many items the stack holds."""


class Stack(GenServer[list[Any]]):
    """Elixir's test stack: push with a cast, pop with a call; no handle_info of its own."""

    async def handle_call(self, request: Any, from_: From, state: list[Any]) -> Reply[list[Any]]:
        match request:
            case Peek():
                return Reply(state[0], state)
            case Depth():
                return Reply(len(state), state)
            case "pop":
                return Reply(state[0], state[1:])
            case "ping":
                return Reply("pong", state)
            case "caller":
                return Reply(from_.pid, state)
        return await super().handle_call(request, from_, state)  # type: ignore[return-value]

    async def handle_cast(self, request: Any, state: list[Any]) -> NoReply[list[Any]]:
        match request:
            case ("push", item):
                return NoReply([item, *state])
        return await super().handle_cast(request, state)  # type: ignore[return-value]


@dataclass
class Setup:
    """How a :class:`Recorder` starts, and where it writes down what happened to it."""

    log: list[Any] = field(default_factory=list)
    trap: bool = False
    terminate_exit: ExitReason | None = None
    terminate_gate: asyncio.Event | None = None


@dataclass(frozen=True)
class StopWith:
    reason: ExitReason
    reply: Any = NO_REPLY


@dataclass(frozen=True)
class Raise:
    exception: Exception


@dataclass(frozen=True)
class SignalSelf:
    reason: ExitReason


@dataclass(frozen=True)
class ReturnValue:
    value: Any


@dataclass(frozen=True)
class Block:
    started: asyncio.Event
    gate: asyncio.Event


@dataclass(frozen=True)
class LinkTo:
    pid: Pid


class Recorder(GenServer[Setup]):
    """Does what each request says (stop, raise, return junk, block) and logs terminate and info."""

    async def init(self, arg: Setup) -> Init[Setup]:
        if arg.trap:
            otp.trap_exit()
        return Init(arg)

    async def handle_call(self, request: Any, from_: From, state: Setup) -> Any:
        match request:
            case "ping":
                return Reply("pong", state)
            case "call_self":
                try:
                    await GenServer.call(otp.self_pid(), "ping")
                except CallingSelfError as error:
                    return Reply(error, state)
                return Reply("no error", state)
            case Block(started, gate):
                started.set()
                await gate.wait()
                return Reply("unblocked", state)
            case LinkTo(pid):
                otp.link(pid)
                return Reply("linked", state)
        return await self._act(request, state)

    async def handle_cast(self, request: Any, state: Setup) -> Any:
        match request:
            case ("note", item):
                state.log.append(("cast", item))
                return NoReply(state)
        return await self._act(request, state)

    async def _act(self, request: Any, state: Setup) -> Any:
        match request:
            case StopWith(reason, reply):
                return Stop(reason, state, reply=reply)
            case Raise(exception):
                raise exception
            case ReturnValue(value):
                return value
            case SignalSelf(reason):
                otp.exit(otp.self_pid(), reason)
                return NoReply(state)
        raise AssertionError(f"unexpected request {request!r}")

    async def handle_info(self, message: Any, state: Setup) -> NoReply[Setup]:
        state.log.append(("info", message))
        return NoReply(state)

    async def terminate(self, reason: ExitReason, state: Setup) -> None:
        # One yield first: a reply or an exit that did not wait for terminate would show up
        # before the log entry.
        await asyncio.sleep(0)
        if state.terminate_gate is not None:
            await state.terminate_gate.wait()
        state.log.append(("terminate", reason))
        if state.terminate_exit is not None:
            raise ProcessExit(state.terminate_exit)


class Deferred(GenServer[list[From]]):
    """Parks calls and answers them later, from another process or another message."""

    async def init(self, arg: asyncio.Event | None) -> Init[list[From]]:
        self.parked = arg
        return Init([])

    async def handle_call(self, request: Any, from_: From, state: list[From]) -> Any:
        match request:
            case "park":
                if self.parked is not None:
                    self.parked.set()
                return NoReply([*state, from_])
            case ("reply_from_process", value):
                otp.spawn(reply_from_elsewhere, from_, value)
                return NoReply(state)
            case "ping":
                return Reply("pong", state)
        raise AssertionError(f"unexpected call {request!r}")

    async def handle_cast(self, request: Any, state: list[From]) -> NoReply[list[From]]:
        match request:
            case ("release", value):
                for parked in state:
                    GenServer.reply(parked, value)
                return NoReply([])
        raise AssertionError(f"unexpected cast {request!r}")


async def reply_from_elsewhere(from_: From, value: Any) -> None:
    GenServer.reply(from_, value)


class Continuing(GenServer[list[Any]]):
    """Logs continues and messages, to show which ran first."""

    async def init(self, log: list[Any]) -> Init[list[Any]]:
        otp.send(otp.self_pid(), "queued by init")
        return Init(log, continue_with="from init")

    async def handle_continue(self, arg: Any, log: list[Any]) -> NoReply[list[Any]]:
        log.append(("continue", arg))
        if arg == "first":
            return NoReply(log, continue_with="second")
        return NoReply(log)

    async def handle_cast(self, request: Any, log: list[Any]) -> NoReply[list[Any]]:
        continue_with = "first" if request == "chain" else f"from {request}"
        return NoReply(log, continue_with=continue_with)

    async def handle_info(self, message: Any, log: list[Any]) -> NoReply[list[Any]]:
        log.append(("info", message))
        return NoReply(log)

    async def handle_call(self, request: Any, from_: From, log: list[Any]) -> Reply[list[Any]]:
        return Reply(list(log), log)


class InitReturns(GenServer[Any]):
    """``init`` returns (or raises) whatever the argument says."""

    async def init(self, arg: Any) -> Any:
        if isinstance(arg, Exception):
            raise arg
        return arg

    async def terminate(self, reason: ExitReason, state: Any) -> None:
        raise AssertionError("terminate must not run after a failed init")


class SlowInit(GenServer[list[Any]]):
    """``init`` takes several loop iterations (or waits for a gate that may never open)."""

    async def init(self, arg: tuple[list[Any], asyncio.Event | None]) -> Init[list[Any]]:
        log, gate = arg
        log.append(otp.self_pid())
        for _ in range(5):
            await asyncio.sleep(0)
        if gate is not None:
            await gate.wait()
        log.append("init returned")
        return Init(log)


class Idle(GenServer[asyncio.Future[Any]]):
    """Reports the first message ``handle_info`` gets; times out as its argument says."""

    async def init(self, arg: tuple[asyncio.Future[Any], float | None]) -> Init[asyncio.Future[Any]]:
        reported, timeout = arg
        return Init(reported, timeout=timeout)

    async def handle_cast(self, request: Any, state: asyncio.Future[Any]) -> NoReply[asyncio.Future[Any]]:
        return NoReply(state, timeout=request)

    async def handle_info(self, message: Any, state: asyncio.Future[Any]) -> NoReply[asyncio.Future[Any]]:
        if not state.done():
            state.set_result(message)
        return NoReply(state)


# ------------------------------------------------------------------ tests


class TestInit:
    async def test_init_state_becomes_the_server_state(self) -> None:
        """``Init(state)`` starts the server with that state."""
        pid = await Stack.start(["a", "b"])
        assert GenServer.get_state(pid) == ["a", "b"]
        assert await GenServer.call(pid, "pop") == "a"

    async def test_ignore_raises_start_ignored_and_leaves_no_process(self) -> None:
        """``IGNORE`` from init makes start raise ``StartIgnored``; the name is not left registered."""
        with pytest.raises(StartIgnored):
            await InitReturns.start(IGNORE, name="ignored")
        assert otp.whereis("ignored") is None

    async def test_stop_raises_start_error_with_the_reason_and_skips_terminate(self) -> None:
        """``Stop(reason)`` from init makes start raise ``StartError(reason)``; terminate does not run."""
        with pytest.raises(StartError) as info:
            await InitReturns.start(Stop(Shutdown("not today")))
        assert info.value.reason == Shutdown("not today")

    async def test_raising_init_raises_start_error_with_the_crash(self) -> None:
        """An exception in init becomes ``StartError(Crash(exc))`` with that very exception."""
        error = RuntimeError("no database")
        with pytest.raises(StartError) as info:
            await InitReturns.start(error)
        assert info.value.reason == Crash(error)
        assert isinstance(info.value.reason, Crash)
        assert info.value.reason.exception is error

    async def test_bad_return_from_init_raises_start_error(self) -> None:
        """An init that returns something else fails the start with ``bad_return_value``."""
        with pytest.raises(StartError) as info:
            await InitReturns.start("oops")
        assert info.value.reason == Abnormal(("bad_return_value", "oops"))

    async def test_start_link_returns_only_after_init_returned(self) -> None:
        """``start_link`` blocks until init has returned, however many awaits init takes."""
        log: list[Any] = []
        pid = await SlowInit.start_link((log, None))
        assert log == [pid, "init returned"]

    async def test_init_overrunning_the_start_timeout_fails_and_kills_the_server(self) -> None:
        """``start(timeout=...)`` raises ``StartError(timeout)`` and ends the server whose init hangs."""
        log: list[Any] = []
        with pytest.raises(StartError) as info:
            await SlowInit.start((log, asyncio.Event()), timeout=0.02)
        assert info.value.reason == Abnormal("timeout")
        assert await otp.await_exit(log[0], timeout=WAIT) == Abnormal("timeout")

    async def test_start_link_links_the_server_to_the_caller(self) -> None:
        """A server started with ``start_link`` takes a trapping caller's link: its crash arrives as
        ``ExitMessage``."""
        error = RuntimeError("boom")

        async def body() -> tuple[Pid, Any]:
            otp.trap_exit()
            pid = await Recorder.start_link(Setup())
            GenServer.cast(pid, Raise(error))
            return pid, await otp.receive(timeout=WAIT)

        pid, message = await in_process(body)
        assert message == ExitMessage(pid, Crash(error))

    async def test_start_does_not_link(self) -> None:
        """A server started with ``start`` can crash without taking its non-trapping starter with it."""

        async def body() -> ExitReason:
            pid = await Recorder.start(Setup())
            ref = otp.monitor(pid)
            GenServer.cast(pid, StopWith(Abnormal("bye")))
            down = await otp.receive(lambda m: isinstance(m, otp.DownMessage) and m.ref is ref, timeout=WAIT)
            return down.reason  # type: ignore[no-any-return]

        assert await in_process(body) == Abnormal("bye")

    async def test_failed_start_link_does_not_kill_the_caller(self) -> None:
        """As with OTP 26's proc_lib, a failed start is reported only as the exception: the linked
        caller is not also sent the exit signal."""

        async def body() -> ExitReason:
            with pytest.raises(StartError) as info:
                await InitReturns.start_link(Stop(Abnormal("refused")))
            return info.value.reason

        assert await in_process(body) == Abnormal("refused")


class TestName:
    async def test_started_server_is_registered_under_its_name(self) -> None:
        """``name=`` registers the server: ``whereis`` finds it and calls reach it by name."""
        pid = await Stack.start_link(["top"], name="stack")
        assert otp.whereis("stack") == pid
        assert await GenServer.call("stack", "pop") == "top"

    async def test_taken_name_raises_already_started_with_the_holder(self) -> None:
        """Starting a second server under a taken name raises ``AlreadyStartedError(pid)``."""
        first = await Stack.start([], name="stack")
        with pytest.raises(AlreadyStartedError) as info:
            await Stack.start([], name="stack")
        assert info.value.pid == first
        assert otp.whereis("stack") == first

    async def test_name_is_freed_when_the_server_stops(self) -> None:
        """After the server stopped, its name is free for a new server."""
        first = await Stack.start([], name="stack")
        await GenServer.stop(first)
        assert otp.whereis("stack") is None
        second = await Stack.start([], name="stack")
        assert otp.whereis("stack") == second != first


class TestContinue:
    async def test_continue_from_init_runs_before_queued_messages(self) -> None:
        """``Init(continue_with=...)`` runs handle_continue before a message already in the mailbox."""
        log: list[Any] = []
        pid = await Continuing.start(log)
        assert await GenServer.call(pid, "log") == [("continue", "from init"), ("info", "queued by init")]

    async def test_continue_from_a_callback_runs_before_queued_messages(self) -> None:
        """A callback's ``continue_with`` runs before the messages queued while that callback ran."""
        log: list[Any] = []
        pid = await Continuing.start(log)
        GenServer.cast(pid, "cast")
        otp.send(pid, "queued by the test")
        assert await GenServer.call(pid, "log") == [
            ("continue", "from init"),
            ("info", "queued by init"),
            ("continue", "from cast"),
            ("info", "queued by the test"),
        ]

    async def test_continue_can_chain_another_continue(self) -> None:
        """handle_continue may return another continue, which also runs before any queued message."""
        log: list[Any] = []
        pid = await Continuing.start(log)
        GenServer.cast(pid, "chain")
        otp.send(pid, "queued by the test")
        log_now = await GenServer.call(pid, "log")
        assert log_now[2:] == [("continue", "first"), ("continue", "second"), ("info", "queued by the test")]


class TestCall:
    async def test_default_timeout_is_five_seconds(self) -> None:
        """``call`` waits 5 s by default, as ``gen_server:call/2`` does."""
        assert inspect.signature(GenServer.call).parameters["timeout"].default == 5.0

    async def test_reply_comes_back_to_the_caller(self) -> None:
        """``Reply(value, state)`` answers the call with ``value`` and keeps ``state``."""
        pid = await Stack.start(["a", "b"])
        assert await GenServer.call(pid, "pop") == "a"
        assert GenServer.get_state(pid) == ["b"]

    async def test_a_typed_request_gets_its_reply(self) -> None:
        """A request of a ``Call[R]`` class is sent and answered like any other; its reply (typed ``R``
        for mypy) comes back as the server gave it."""
        pid = await Stack.start(["a", "b"])
        depth: int = await GenServer.call(pid, Depth())
        assert depth == 2
        assert await GenServer.call(pid, Peek()) == "a"
        request = GenServer.send_request(pid, Depth())
        assert await GenServer.receive_response(request) == 2

    async def test_calls_see_the_casts_sent_before_them(self) -> None:
        """Messages from one caller are handled in order: a call sees the casts that preceded it."""
        pid = await Stack.start([])
        for item in ["x", "y", "z"]:
            GenServer.cast(pid, ("push", item))
        assert [await GenServer.call(pid, "pop") for _ in range(3)] == ["z", "y", "x"]

    async def test_from_carries_the_calling_pid(self) -> None:
        """Inside handle_call, ``from_.pid`` is the caller's pid."""
        pid = await Stack.start([])

        async def body() -> tuple[Pid, Any]:
            return otp.self_pid(), await GenServer.call(pid, "caller")

        caller, seen = await in_process(body)
        assert seen == caller

    async def test_timeout_raises_call_timeout_error(self) -> None:
        """No reply in time raises ``CallTimeoutError`` (a ``TimeoutError``) with the call's data."""
        pid = await Deferred.start(None)
        with pytest.raises(CallTimeoutError) as info:
            await GenServer.call(pid, "park", timeout=0.02)
        assert isinstance(info.value, TimeoutError)
        assert (info.value.server, info.value.request, info.value.timeout) == (pid, "park", 0.02)

    async def test_after_a_timeout_the_server_runs_on_and_the_late_reply_is_dropped(self) -> None:
        """The server is unaffected by the caller's timeout; its late reply never reaches the caller,
        whose next call gets its own reply."""
        pid = await Deferred.start(None)

        async def body() -> list[Any]:
            with pytest.raises(CallTimeoutError):
                await GenServer.call(pid, "park", timeout=0.02)
            GenServer.cast(pid, ("release", "stale reply"))
            answer = await GenServer.call(pid, "ping")
            with pytest.raises(TimeoutError):
                await otp.receive(timeout=0)  # nothing leaked into the mailbox either
            return [answer, otp.is_alive(pid)]

        assert await in_process(body) == ["pong", True]

    async def test_deferred_reply_from_another_process(self) -> None:
        """handle_call may return ``NoReply`` and have another process answer with ``GenServer.reply``."""
        pid = await Deferred.start(None)
        assert await GenServer.call(pid, ("reply_from_process", 42)) == 42

    async def test_deferred_reply_from_a_later_message(self) -> None:
        """A parked call is answered when a later message makes the server reply."""
        parked = asyncio.Event()
        pid = await Deferred.start(parked)
        call = asyncio.create_task(GenServer.call(pid, "park"))
        await parked.wait()
        GenServer.cast(pid, ("release", "released"))
        assert await asyncio.wait_for(call, WAIT) == "released"

    async def test_unknown_name_raises_no_process_error(self) -> None:
        """Calling a name nobody holds raises ``NoProcessError`` with that name (``noproc``)."""
        with pytest.raises(NoProcessError) as info:
            await GenServer.call("nobody", "ping")
        assert info.value.name == "nobody"

    async def test_dead_server_raises_no_process_error(self) -> None:
        """Calling a server that has ended raises ``NoProcessError``."""
        pid = await Stack.start([])
        await GenServer.stop(pid)
        with pytest.raises(NoProcessError):
            await GenServer.call(pid, "ping")

    async def test_server_crashing_during_the_call_raises_call_exit_error(self) -> None:
        """A server that dies handling the call makes the caller raise ``CallExitError`` with its reason."""
        error = RuntimeError("boom")
        pid = await Recorder.start(Setup())
        with pytest.raises(CallExitError) as info:
            await GenServer.call(pid, Raise(error))
        assert info.value.reason == Crash(error)
        assert info.value.server == pid

    async def test_server_stopping_without_reply_raises_call_exit_error(self) -> None:
        """``Stop(reason)`` without a reply makes the caller raise ``CallExitError(reason)``."""
        pid = await Recorder.start(Setup())
        with pytest.raises(CallExitError) as info:
            await GenServer.call(pid, StopWith(Shutdown("closing")))
        assert info.value.reason == Shutdown("closing")

    async def test_server_killed_during_the_call_raises_call_exit_error(self) -> None:
        """A server killed while a call waits makes the caller raise ``CallExitError(killed)``."""
        parked = asyncio.Event()
        pid = await Deferred.start(parked)
        call = asyncio.create_task(GenServer.call(pid, "park"))
        await parked.wait()
        otp.exit(pid, KILL)
        with pytest.raises(CallExitError) as info:
            await asyncio.wait_for(call, WAIT)
        assert info.value.reason == KILLED

    async def test_missing_handle_call_crashes_the_server(self) -> None:
        """The default handle_call fails the server, as Elixir's default does."""
        pid = await Stack.start([])
        with pytest.raises(CallExitError) as info:
            await GenServer.call(pid, "unknown request")
        assert isinstance(info.value.reason, Crash)
        assert isinstance(info.value.reason.exception, NotImplementedError)

    async def test_calling_self_raises_calling_self_error(self) -> None:
        """A server that calls itself gets ``CallingSelfError`` instead of waiting forever."""
        pid = await Recorder.start(Setup())
        assert isinstance(await GenServer.call(pid, "call_self"), CallingSelfError)


class TestSendRequest:
    """``gen_server:send_request/2`` and ``receive_response/2``: a call in two halves."""

    async def test_replies_to_requests_sent_before_any_is_received(self) -> None:
        """Several requests in flight at once are answered in the order they were sent."""
        pid = await Stack.start(["a", "b", "c"])
        requests = [GenServer.send_request(pid, "pop") for _ in range(3)]
        assert [await GenServer.receive_response(request) for request in requests] == ["a", "b", "c"]

    async def test_a_request_is_served_after_the_casts_sent_before_it(self) -> None:
        """Like a call, a request keeps its place among the caller's messages."""
        pid = await Stack.start([])
        GenServer.cast(pid, ("push", "x"))
        request = GenServer.send_request(pid, "pop")
        GenServer.cast(pid, ("push", "y"))
        assert await GenServer.receive_response(request) == "x"
        assert GenServer.get_state(pid) == ["y"]

    async def test_server_dying_first_raises_call_exit_error(self) -> None:
        """A server that dies before replying makes ``receive_response`` raise its reason."""
        error = RuntimeError("boom")
        pid = await Recorder.start(Setup())
        request = GenServer.send_request(pid, Raise(error))
        with pytest.raises(CallExitError) as info:
            await GenServer.receive_response(request)
        assert info.value.reason == Crash(error)

    async def test_timeout_abandons_the_request(self) -> None:
        """No reply in time raises ``CallTimeoutError``; the late reply is dropped, nothing leaks."""
        pid = await Deferred.start(None)

        async def body() -> list[Any]:
            request = GenServer.send_request(pid, "park")
            with pytest.raises(CallTimeoutError) as info:
                await GenServer.receive_response(request, timeout=0.02)
            GenServer.cast(pid, ("release", "stale reply"))
            answer = await GenServer.call(pid, "ping")
            with pytest.raises(TimeoutError):
                await otp.receive(timeout=0)
            return [info.value.request, answer]

        assert await in_process(body) == ["park", "pong"]

    async def test_abandoned_request_drops_its_reply(self) -> None:
        """``abandon_request`` forgets a request: the server's reply goes nowhere, the server runs on."""
        pid = await Deferred.start(None)
        request = GenServer.send_request(pid, "park")
        GenServer.abandon_request(request)
        GenServer.cast(pid, ("release", "nobody waits"))
        assert await GenServer.call(pid, "ping") == "pong"
        assert GenServer.get_state(pid) == []
        with pytest.raises(asyncio.CancelledError):
            await GenServer.receive_response(request)

    async def test_unknown_server_raises_no_process_error_at_once(self) -> None:
        """Sending to a name nobody holds raises ``NoProcessError`` (a documented deviation)."""
        with pytest.raises(NoProcessError):
            GenServer.send_request("nobody", "ping")


class TestCast:
    async def test_cast_returns_at_once_while_the_server_is_busy(self) -> None:
        """``cast`` is a plain function that returns None without waiting for a busy server; the
        request is handled afterwards."""
        setup = Setup()
        pid = await Recorder.start(setup)
        started, gate = asyncio.Event(), asyncio.Event()
        busy = asyncio.create_task(GenServer.call(pid, Block(started, gate)))
        await started.wait()
        assert not inspect.iscoroutinefunction(GenServer.cast)
        assert GenServer.cast(pid, ("note", "while busy")) is None
        assert setup.log == []
        gate.set()
        assert await asyncio.wait_for(busy, WAIT) == "unblocked"
        assert await GenServer.call(pid, "ping") == "pong"
        assert setup.log == [("cast", "while busy")]

    async def test_cast_to_a_missing_server_does_nothing(self) -> None:
        """A cast to an unknown name or a dead pid returns None without raising, like OTP's ``cast``."""
        pid = await Stack.start([])
        await GenServer.stop(pid)
        assert GenServer.cast("nobody", ("push", 1)) is None
        assert GenServer.cast(pid, ("push", 1)) is None


class TestStopReply:
    async def test_terminate_runs_before_the_reply_is_sent(self) -> None:
        """``Stop(reason, state, reply=...)``: terminate runs first, then the caller gets the reply."""
        setup = Setup()
        pid = await Recorder.start(setup)
        reply = await GenServer.call(pid, StopWith(NORMAL, reply="bye"))
        setup.log.append(("reply", reply))
        assert setup.log == [("terminate", NORMAL), ("reply", "bye")]
        assert await otp.await_exit(pid, timeout=WAIT) == NORMAL


class TestTerminate:
    async def test_terminate_runs_when_a_callback_returns_stop(self) -> None:
        """A callback returning ``Stop(reason, state)`` runs terminate with that reason; the server ends
        with it."""
        setup = Setup()
        pid = await Recorder.start(setup)
        GenServer.cast(pid, StopWith(Shutdown("done")))
        assert await otp.await_exit(pid, timeout=WAIT) == Shutdown("done")
        assert setup.log == [("terminate", Shutdown("done"))]

    async def test_terminate_runs_when_a_callback_raises(self) -> None:
        """A raising callback runs terminate with ``Crash(exc)``; the server ends with that crash."""
        error = ValueError("bad cast")
        setup = Setup()
        pid = await Recorder.start(setup)
        GenServer.cast(pid, Raise(error))
        assert await otp.await_exit(pid, timeout=WAIT) == Crash(error)
        assert setup.log == [("terminate", Crash(error))]

    async def test_terminate_does_not_run_on_an_exit_signal_the_server_sends_itself(self) -> None:
        """``exit(self_pid(), R)`` in a callback of a non-trapping server is a signal, not ``exit(R)``:
        the server ends with R at once and terminate does not run."""
        setup = Setup()
        pid = await Recorder.start(setup)
        GenServer.cast(pid, SignalSelf(Shutdown("self")))
        assert await otp.await_exit(pid, timeout=WAIT) == Shutdown("self")
        assert setup.log == []

    async def test_terminate_runs_on_stop(self) -> None:
        """``GenServer.stop(pid, reason)`` runs terminate with that reason."""
        setup = Setup()
        pid = await Recorder.start(setup)
        await GenServer.stop(pid, Shutdown("maintenance"))
        assert setup.log == [("terminate", Shutdown("maintenance"))]

    async def test_terminate_runs_on_a_parent_exit_signal_when_trapping(self) -> None:
        """A trapping server runs terminate when its parent sends it ``shutdown``, as a supervisor does."""
        setup = Setup(trap=True)

        async def parent() -> ExitReason:
            otp.trap_exit()
            pid = await Recorder.start_link(setup)
            otp.exit(pid, SHUTDOWN)
            return await otp.await_exit(pid, timeout=WAIT)

        assert await in_process(parent) == SHUTDOWN
        assert setup.log == [("terminate", SHUTDOWN)]

    async def test_messages_queued_before_the_parent_signal_are_handled_first(self) -> None:
        """The parent's exit signal waits its turn: messages already queued are handled before terminate."""
        setup = Setup(trap=True)

        async def parent() -> ExitReason:
            otp.trap_exit()
            pid = await Recorder.start_link(setup)
            GenServer.cast(pid, ("note", 1))
            GenServer.cast(pid, ("note", 2))
            otp.exit(pid, SHUTDOWN)
            return await otp.await_exit(pid, timeout=WAIT)

        assert await in_process(parent) == SHUTDOWN
        assert setup.log == [("cast", 1), ("cast", 2), ("terminate", SHUTDOWN)]

    async def test_terminate_runs_when_the_parent_dies_and_the_server_traps(self) -> None:
        """A trapping server whose parent dies runs terminate with the parent's reason and ends with it."""
        setup = Setup(trap=True)
        started: asyncio.Future[Pid] = asyncio.get_running_loop().create_future()

        async def parent() -> None:
            started.set_result(await Recorder.start_link(setup))
            raise ProcessExit(Abnormal("parent died"))

        otp.spawn(parent)
        pid = await started
        assert await otp.await_exit(pid, timeout=WAIT) == Abnormal("parent died")
        assert setup.log == [("terminate", Abnormal("parent died"))]

    async def test_terminate_does_not_run_on_kill(self) -> None:
        """``kill`` ends even a trapping server at once, without terminate."""
        setup = Setup(trap=True)
        pid = await Recorder.start(setup)
        otp.exit(pid, KILL)
        assert await otp.await_exit(pid, timeout=WAIT) == KILLED
        assert setup.log == []

    async def test_terminate_does_not_run_on_parent_shutdown_when_not_trapping(self) -> None:
        """A server that does not trap exits dies of its parent's ``shutdown`` without terminate."""
        setup = Setup(trap=False)

        async def parent() -> ExitReason:
            otp.trap_exit()
            pid = await Recorder.start_link(setup)
            otp.exit(pid, SHUTDOWN)
            return await otp.await_exit(pid, timeout=WAIT)

        assert await in_process(parent) == SHUTDOWN
        assert setup.log == []

    async def test_exit_from_a_non_parent_goes_to_handle_info(self) -> None:
        """A trapping server gets an exit signal from a process other than its parent in handle_info,
        and keeps running."""
        setup = Setup(trap=True)
        other = otp.spawn(wait_forever)

        async def parent() -> Any:
            otp.trap_exit()
            pid = await Recorder.start_link(setup)
            assert await GenServer.call(pid, LinkTo(other)) == "linked"
            otp.exit(other, Abnormal("other died"))
            await otp.await_exit(other, timeout=WAIT)
            return await GenServer.call(pid, "ping"), list(setup.log)

        answer, log = await in_process(parent)
        assert answer == "pong"
        assert log == [("info", ExitMessage(other, Abnormal("other died")))]

    async def test_exit_from_the_starter_of_an_unlinked_server_goes_to_handle_info(self) -> None:
        """A server started with ``start`` is its own parent, as in OTP: an exit signal from the process
        that started it reaches a trapping server's handle_info and does not stop it."""
        setup = Setup(trap=True)

        async def starter() -> tuple[Pid, Any]:
            pid = await Recorder.start(setup)
            otp.exit(pid, SHUTDOWN)
            return otp.self_pid(), await GenServer.call(pid, "ping")

        starter_pid, answer = await in_process(starter)
        assert answer == "pong"
        assert setup.log == [("info", ExitMessage(starter_pid, SHUTDOWN))]

    async def test_terminate_runs_on_a_bad_return_value(self) -> None:
        """An invalid callback return runs terminate with the ``bad_return_value`` reason."""
        setup = Setup()
        pid = await Recorder.start(setup)
        GenServer.cast(pid, ReturnValue("oops"))
        reason = await otp.await_exit(pid, timeout=WAIT)
        assert setup.log == [("terminate", reason)]


class TestStop:
    async def test_stop_returns_only_after_the_server_exited(self) -> None:
        """``stop`` returns once the server has run terminate and ended with the given reason."""
        setup = Setup()
        pid = await Recorder.start(setup)
        await GenServer.stop(pid, Shutdown("bye"))
        assert otp.is_alive(pid) is False
        assert otp.exit_reason(pid) == Shutdown("bye")
        assert setup.log == [("terminate", Shutdown("bye"))]

    async def test_stop_defaults_to_normal(self) -> None:
        """``stop(pid)`` stops with reason ``normal``."""
        pid = await Stack.start([])
        await GenServer.stop(pid)
        assert otp.exit_reason(pid) == NORMAL

    async def test_stop_raises_if_the_server_exits_with_another_reason(self) -> None:
        """If terminate ends the server with another reason, ``stop`` raises ``CallExitError`` with it."""
        pid = await Recorder.start(Setup(terminate_exit=Abnormal("refused")))
        with pytest.raises(CallExitError) as info:
            await GenServer.stop(pid)
        assert info.value.reason == Abnormal("refused")
        assert otp.exit_reason(pid) == Abnormal("refused")

    async def test_stop_of_an_unknown_server_raises_no_process_error(self) -> None:
        """``stop`` of a name nobody holds raises ``NoProcessError``."""
        with pytest.raises(NoProcessError):
            await GenServer.stop("nobody")

    async def test_stop_timeout_raises_call_timeout_error(self) -> None:
        """A server that has not exited within ``stop``'s timeout raises ``CallTimeoutError``; it still
        finishes stopping afterwards."""
        gate = asyncio.Event()
        pid = await Recorder.start(Setup(terminate_gate=gate))
        with pytest.raises(CallTimeoutError):
            await GenServer.stop(pid, timeout=0.02)
        assert otp.is_alive(pid)
        gate.set()
        assert await otp.await_exit(pid, timeout=WAIT) == NORMAL


class TestTimeout:
    async def test_init_timeout_delivers_timeout_to_handle_info(self) -> None:
        """``Init(state, timeout=t)`` delivers ``TIMEOUT`` to handle_info when no message comes in t."""
        reported: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await Idle.start((reported, 0.01))
        assert await asyncio.wait_for(reported, WAIT) is TIMEOUT

    async def test_callback_timeout_delivers_timeout_to_handle_info(self) -> None:
        """A callback's ``NoReply(state, timeout=t)`` also ends in ``TIMEOUT`` when the server stays idle."""
        reported: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        pid = await Idle.start((reported, None))
        GenServer.cast(pid, 0.01)
        assert await asyncio.wait_for(reported, WAIT) is TIMEOUT

    async def test_a_message_before_the_timeout_is_handled_instead(self) -> None:
        """A message arriving in time is handled; no ``TIMEOUT`` comes first."""
        reported: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        pid = await Idle.start((reported, WAIT))
        otp.send(pid, "in time")
        assert await asyncio.wait_for(reported, WAIT) == "in time"


class TestHandleInfo:
    async def test_default_handle_info_reports_and_keeps_running(self, events: EventLog) -> None:
        """Without a handle_info of its own, a server reports the unexpected message and carries on."""
        pid = await Stack.start([])
        otp.send(pid, "stray")
        meta = await events.wait_for(("gen_server", "unexpected_message"))
        assert (meta["server"], meta["message"]) == ("Stack", "stray")
        assert await GenServer.call(pid, "ping") == "pong"

    async def test_plain_messages_go_to_handle_info(self) -> None:
        """Anything sent with ``send`` reaches handle_info."""
        setup = Setup()
        pid = await Recorder.start(setup)
        otp.send(pid, {"any": "term"})
        assert await GenServer.call(pid, "ping") == "pong"
        assert setup.log == [("info", {"any": "term"})]


class TestGetState:
    async def test_get_state_reflects_the_last_callback(self) -> None:
        """``get_state`` returns the state as the last completed callback left it."""
        pid = await Stack.start([])
        GenServer.cast(pid, ("push", 1))
        GenServer.cast(pid, ("push", 2))
        await GenServer.call(pid, "ping")
        assert GenServer.get_state(pid) == [2, 1]

    async def test_get_state_of_a_process_that_is_no_server_raises(self) -> None:
        """``get_state`` of a plain process raises ``TypeError``."""
        pid = otp.spawn(wait_forever)
        with pytest.raises(TypeError, match="expected a GenServer"):
            GenServer.get_state(pid)
        otp.exit(pid, KILL)

    async def test_get_state_of_a_dead_server_raises(self) -> None:
        """``get_state`` of a server that ended raises ``NoProcessError``."""
        pid = await Stack.start([])
        await GenServer.stop(pid)
        with pytest.raises(NoProcessError):
            GenServer.get_state(pid)


class TestBadReturn:
    async def test_bad_return_from_a_cast_crashes_the_server(self) -> None:
        """A callback returning something that is not NoReply/Stop ends the server with
        ``Abnormal(("bad_return_value", value))``."""
        pid = await Recorder.start(Setup())
        GenServer.cast(pid, ReturnValue("oops"))
        assert await otp.await_exit(pid, timeout=WAIT) == Abnormal(("bad_return_value", "oops"))

    async def test_bad_return_from_a_call_fails_the_caller(self) -> None:
        """A handle_call returning junk ends the server, and the caller raises ``CallExitError`` with the
        ``bad_return_value`` reason."""
        pid = await Recorder.start(Setup())
        with pytest.raises(CallExitError) as info:
            await GenServer.call(pid, ReturnValue(Ignore()))
        assert info.value.reason == Abnormal(("bad_return_value", Ignore()))


class TestEvents:
    async def test_abnormal_termination_emits_terminated(self, events: EventLog) -> None:
        """An abnormal exit emits ``("gen_server", "terminated")`` with the server, pid and reason."""
        error = RuntimeError("boom")
        pid = await Recorder.start(Setup())
        GenServer.cast(pid, Raise(error))
        meta = await events.wait_for(("gen_server", "terminated"))
        assert meta == {"server": "Recorder", "pid": pid, "reason": Crash(error)}

    async def test_expected_termination_emits_nothing(self, events: EventLog) -> None:
        """Exits with ``normal``, ``shutdown`` or ``{shutdown, T}`` are not reported."""
        for reason in [NORMAL, SHUTDOWN, Shutdown("rebalanced")]:
            pid = await Recorder.start(Setup())
            await GenServer.stop(pid, reason)
        assert events.named("gen_server", "terminated") == []

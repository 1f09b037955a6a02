"""GenServer: a process that holds state and answers requests, one message at a time.

A GenServer is a *behaviour*: the library owns the loop (receive a message, call your callback,
keep the new state, reply), you write the callbacks. Because one process handles one message at a
time, the state needs no locks.

Client and server halves::

    @dataclass(frozen=True)
    class Add:
        amount: int

    class Counter(GenServer[int]):
        # client API
        @classmethod
        async def add(cls, server: ServerRef, amount: int) -> int:
            return await GenServer.call(server, Add(amount))

        # callbacks
        async def init(self, arg: int) -> Init[int]:
            return Init(arg)

        async def handle_call(self, request: object, from_: From, state: int) -> Reply[int]:
            match request:
                case Add(amount):
                    return Reply(state + amount, state + amount)
            raise ValueError(f"unexpected call {request!r}")

    pid = await Counter.start_link(0, name="counter")
    assert await Counter.add("counter", 2) == 2

Callbacks and what they return (Elixir's tuples as dataclasses):

- ``init(arg)`` -> ``Init(state)`` (``{:ok, state}``; with ``continue_with=`` or ``timeout=``),
  ``IGNORE`` (start raises :class:`StartIgnored`), ``Stop(reason)`` (start raises
  :class:`StartError`). ``start_link`` returns only after ``init`` returned.
- ``handle_call(request, from_, state)`` -> ``Reply(reply, state)``, ``NoReply(state)`` (reply
  later with :meth:`GenServer.reply`), ``Stop(reason, state, reply=...)``.
- ``handle_cast(request, state)`` / ``handle_info(message, state)`` /
  ``handle_continue(arg, state)`` -> ``NoReply(state)`` or ``Stop(reason, state)``.
- ``terminate(reason, state)``: runs when a callback returns ``Stop`` or raises, on
  :meth:`GenServer.stop`, and when the server *traps exits* and its parent (its supervisor) sends
  an exit signal. It does not run on ``kill`` / ``brutal_kill``, or when the server does not trap
  exits and is told to stop: call ``trap_exit()`` in ``init`` to get a ``terminate`` at shutdown.

``continue_with=arg`` makes ``handle_continue(arg, state)`` run before any message already in the
mailbox; ``timeout=seconds`` delivers ``TIMEOUT`` to ``handle_info`` if no message comes in time.

Deviations, and why:

- A call that times out raises :class:`CallTimeoutError` in the caller instead of exiting it; an
  uncaught one still ends a calling process, with that exception as its reason. As since OTP 24,
  a late reply is dropped, never delivered to the caller.
- A server dying mid-call raises :class:`CallExitError` (with the server's reason) in the caller.
- Failed starts are reported to the caller only as an exception; like OTP 26's ``proc_lib``, the
  caller is not also sent an exit signal.
- ``get_state`` reads the state directly instead of sending a system message: it is synchronous
  and sees the state as of the last completed callback.
- No hibernation, no ``code_change``, no ``format_status``.

See also: Elixir ``GenServer``, Erlang ``gen_server(3)``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar, overload

from mailman.supervisor import _events
from mailman.supervisor._call import Call, R_co
from mailman.supervisor._child_spec import ChildSpec, ChildType, Restart
from mailman.supervisor._clock import INFINITY
from mailman.supervisor._deadlines import expire_after
from mailman.supervisor._exceptions import (
    AlreadyStartedError,
    CallExitError,
    CallingSelfError,
    CallTimeoutError,
    NoProcessError,
    ProcessExit,
    StartError,
    StartIgnored,
)
from mailman.supervisor._exit_reason import (
    NORMAL,
    TIMEOUT,
    Abnormal,
    Crash,
    ExitReason,
    is_expected,
)
from mailman.supervisor._names import Name, ServerRef, register_name, resolve
from mailman.supervisor._process import (
    ExitMessage,
    Pid,
    Process,
    _current,
    current_process,
)

__all__ = [
    "IGNORE",
    "NO_REPLY",
    "Call",
    "From",
    "GenServer",
    "Ignore",
    "Init",
    "NoReply",
    "Reply",
    "RequestId",
    "Stop",
]

S = TypeVar("S")
R = TypeVar("R")

DEFAULT_CALL_TIMEOUT = 5.0


class _Nothing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<nothing>"


NO_CONTINUE: Any = _Nothing()
NO_REPLY: Any = _Nothing()
NO_STATE: Any = _Nothing()


@dataclass(frozen=True, slots=True)
class Init(Generic[S]):
    """``{:ok, state}`` from ``init``: the server starts with ``state``."""

    state: S
    continue_with: Any = NO_CONTINUE
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class Ignore:
    """``:ignore`` from ``init``: no server, and no error."""


IGNORE = Ignore()


# Reply, NoReply and Stop are made once per message: plain (not frozen) slotted dataclasses,
# since a frozen dataclass costs four times as much to build.
@dataclass(slots=True)
class Reply(Generic[S]):
    """``{:reply, reply, state}`` from ``handle_call``."""

    reply: Any
    state: S
    continue_with: Any = NO_CONTINUE
    timeout: float | None = None


@dataclass(slots=True)
class NoReply(Generic[S]):
    """``{:noreply, state}``: keep going with ``state`` (from ``handle_call``: reply later)."""

    state: S
    continue_with: Any = NO_CONTINUE
    timeout: float | None = None


@dataclass(slots=True)
class Stop(Generic[S]):
    """``{:stop, reason, state}`` (or ``{:stop, reason, reply, state}`` with ``reply=``).

    Leave ``state`` out to hand ``terminate`` the state as it was.
    """

    reason: ExitReason
    state: Any = NO_STATE
    reply: Any = NO_REPLY


class From:
    """Who sent a call: pass it to :meth:`GenServer.reply` to answer later (a deferred reply)."""

    __slots__ = ("_future", "pid")

    def __init__(self, future: asyncio.Future[Any], pid: Pid | None) -> None:
        self._future = future
        self.pid = pid

    def __repr__(self) -> str:
        return f"From({self.pid!r})"


class _Call:
    __slots__ = ("from_", "request")

    def __init__(self, request: Any, from_: From) -> None:
        self.request = request
        self.from_ = from_


class _Cast:
    __slots__ = ("request",)

    def __init__(self, request: Any) -> None:
        self.request = request


class _CallTimedOut(Exception):
    """Set on a call's future when its timer fires first."""


def _time_out(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(_CallTimedOut())


class RequestId(Generic[R_co]):
    """A call sent with :meth:`GenServer.send_request` whose reply is still to be received.

    Erlang's ``gen_server:request_id()``. Pass it to :meth:`GenServer.receive_response` once.
    """

    __slots__ = ("_future", "_process", "_request", "_server")

    def __init__(self, server: object, request: Any, process: Process, future: asyncio.Future[Any]) -> None:
        self._server = server
        self._request = request
        self._process = process
        self._future = future

    def __repr__(self) -> str:
        return f"<RequestId {self._request!r} to {self._server!r}>"


@dataclass(frozen=True, slots=True)
class _SystemStop:
    reason: ExitReason


def _fail_call(future: asyncio.Future[Any], server: object, _p: Process, reason: ExitReason) -> None:
    if not future.done():
        future.set_exception(CallExitError(server, reason))


def _send_call(server: ServerRef, request: Any) -> tuple[Process, asyncio.Future[Any]]:
    """Put a call in the server's mailbox: its process, and the future its reply will land in."""
    process = resolve(server)
    caller = _current.get()
    if process is caller:
        raise CallingSelfError(f"{server!r} called itself with {request!r}")
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    process.add_exit_hook(future, functools.partial(_fail_call, future, server))
    process.mailbox.put(_Call(request, From(future, None if caller is None else caller.pid)))
    return process, future


async def _await_reply(
    server: object, request: Any, process: Process, future: asyncio.Future[Any], timeout: float
) -> Any:
    """Wait for the reply to a call put in ``process``'s mailbox, up to ``timeout`` seconds."""
    try:
        if timeout == INFINITY or future.done():
            return await future
        expire_after(timeout, future, _time_out)
        return await future
    except _CallTimedOut:
        raise CallTimeoutError(server, request, timeout) from None
    finally:
        process.remove_exit_hook(future)


def _fail_start(future: asyncio.Future[Pid], _p: Process, reason: ExitReason) -> None:
    if not future.done():
        future.set_exception(StartError(reason))


class GenServer(Generic[S]):
    """A process holding state ``S`` and answering calls, casts and messages one at a time."""

    child_restart: ClassVar[Restart] = Restart.PERMANENT
    """The ``restart`` of :meth:`child_spec` (``use GenServer, restart: :transient``)."""
    child_shutdown: ClassVar[float] = 5.0
    """The ``shutdown`` of :meth:`child_spec`."""

    _state: Any = None

    # ---------------------------------------------------------------- client API

    @classmethod
    async def start_link(cls, arg: Any = None, *, name: Name | None = None, timeout: float = INFINITY) -> Pid:
        """Start a server linked to the caller; return its pid once ``init`` has returned.

        Raises :class:`StartError` (init stopped, raised or timed out), :class:`StartIgnored`
        (init returned ``IGNORE``) or :class:`AlreadyStartedError` (the name is taken).
        """
        return await cls._start(arg, name, timeout, link=True)

    @classmethod
    async def start(cls, arg: Any = None, *, name: Name | None = None, timeout: float = INFINITY) -> Pid:
        """Like :meth:`start_link`, without a link to the caller."""
        return await cls._start(arg, name, timeout, link=False)

    @classmethod
    async def _start(cls, arg: Any, name: Name | None, timeout: float, *, link: bool) -> Pid:
        loop = asyncio.get_running_loop()
        ack: asyncio.Future[Pid] = loop.create_future()
        parent = current_process()
        server = cls()
        # Only a linked starter is the parent whose exit signal means "terminate"; gen.erl makes a
        # server started without a link its own parent, so the starter's EXIT goes to handle_info.
        process = Process(parent if link else None)
        process.behaviour = server
        if link and parent is not None:
            process.links.add(parent)
            parent.links.add(process)
        process.add_exit_hook(ack, functools.partial(_fail_start, ack))
        process.start(server._enter(arg, name, ack))
        try:
            if timeout == INFINITY:
                return await ack
            try:
                async with asyncio.timeout(timeout):
                    return await asyncio.shield(ack)
            except TimeoutError:
                # OTP kills a server whose init overran start's timeout: {error, timeout}.
                if parent is not None:
                    parent.links.discard(process)
                    process.links.discard(parent)
                process.die(Abnormal("timeout"))
                raise StartError(Abnormal("timeout")) from None
        finally:
            process.remove_exit_hook(ack)

    @classmethod
    def child_spec(
        cls,
        arg: Any = None,
        *,
        id: Hashable | None = None,  # noqa: A002 - the child spec field is called id
        name: Name | None = None,
        restart: Restart | None = None,
        shutdown: float | None = None,
    ) -> ChildSpec:
        """The spec that starts this server under a supervisor (what ``use GenServer`` defines)."""
        start = cls.start_link if name is None else functools.partial(cls.start_link, name=name)
        return ChildSpec(
            id=cls if id is None else id,  # type: ignore[arg-type]
            start=start,
            args=(arg,),
            restart=cls.child_restart if restart is None else restart,
            shutdown=cls.child_shutdown if shutdown is None else shutdown,
            type=ChildType.WORKER,
        )

    @staticmethod
    @overload
    async def call(server: ServerRef, request: Call[R], timeout: float = DEFAULT_CALL_TIMEOUT) -> R: ...

    @staticmethod
    @overload
    async def call(server: ServerRef, request: object, timeout: float = DEFAULT_CALL_TIMEOUT) -> Any: ...

    @staticmethod
    async def call(server: ServerRef, request: object, timeout: float = DEFAULT_CALL_TIMEOUT) -> Any:
        """Send ``request`` and wait up to ``timeout`` seconds for the reply.

        Raises :class:`NoProcessError` (no such server), :class:`CallTimeoutError`,
        :class:`CallExitError` (the server died first), :class:`CallingSelfError`.
        """
        process, future = _send_call(server, request)
        return await _await_reply(server, request, process, future, timeout)

    @staticmethod
    @overload
    def send_request(server: ServerRef, request: Call[R]) -> RequestId[R]: ...

    @staticmethod
    @overload
    def send_request(server: ServerRef, request: object) -> RequestId[Any]: ...

    @staticmethod
    def send_request(server: ServerRef, request: object) -> RequestId[Any]:
        """Send ``request`` as a call, without waiting: ``gen_server:send_request/2``.

        The reply is collected with :meth:`receive_response`. Sending several requests before
        receiving any lets servers answer them in one turn each, where a ``call`` per request would
        wait for a round trip every time::

            ids = [GenServer.send_request(server, Fetch(key)) for key in keys]
            values = [await GenServer.receive_response(request_id) for request_id in ids]

        Deviation: a server that does not exist raises :class:`NoProcessError` here at once (OTP
        reports ``noproc`` from ``receive_response``), as :meth:`call` does.
        """
        process, future = _send_call(server, request)
        return RequestId(server, request, process, future)

    @staticmethod
    async def receive_response(request_id: RequestId[R], timeout: float = DEFAULT_CALL_TIMEOUT) -> R:
        """The reply to a :meth:`send_request`: ``gen_server:receive_response/2``.

        Raises as :meth:`call` does: :class:`CallExitError` if the server died before replying,
        :class:`CallTimeoutError` after ``timeout`` seconds, after which the request is abandoned
        (a late reply is dropped), as OTP's ``receive_response`` abandons it.
        """
        reply: R = await _await_reply(
            request_id._server, request_id._request, request_id._process, request_id._future, timeout
        )
        return reply

    @staticmethod
    def abandon_request(request_id: RequestId[Any]) -> None:
        """Forget a request whose reply is no longer wanted; a late reply is dropped.

        What a ``receive_response`` that times out at once does in OTP; here without waiting.
        """
        future = request_id._future
        request_id._process.remove_exit_hook(future)
        if not future.done():
            future.cancel()

    @staticmethod
    def cast(server: ServerRef, request: Any) -> None:
        """Send ``request`` without waiting; like OTP, silently nothing if there is no server."""
        try:
            process = resolve(server)
        except NoProcessError:
            return
        process.mailbox.put(_Cast(request))

    @staticmethod
    def reply(from_: From, reply: Any) -> None:
        """Answer a call whose ``handle_call`` returned ``NoReply``. Late replies are dropped."""
        future = from_._future
        if not future.done():
            future.set_result(reply)

    @staticmethod
    async def stop(server: ServerRef, reason: ExitReason = NORMAL, timeout: float = INFINITY) -> None:
        """Stop the server with ``reason`` (``terminate`` runs) and wait until it has exited.

        Raises :class:`CallExitError` if it exited with another reason, :class:`CallTimeoutError`
        if it did not exit within ``timeout``.
        """
        process = resolve(server)
        if process is current_process():
            raise CallingSelfError("a server cannot stop itself with stop(); return Stop(...)")
        exited = asyncio.shield(process.exited())
        process.mailbox.put(_SystemStop(reason))
        try:
            if timeout == INFINITY:
                actual = await exited
            else:
                async with asyncio.timeout(timeout):
                    actual = await exited
        except TimeoutError:
            raise CallTimeoutError(server, _SystemStop(reason), timeout) from None
        if actual != reason:
            raise CallExitError(server, actual)

    @staticmethod
    def get_state(server: ServerRef) -> Any:
        """The server's current state, for debugging (``:sys.get_state/1``)."""
        behaviour = resolve(server).behaviour
        if not isinstance(behaviour, GenServer):
            raise TypeError(f"expected a GenServer, {server!r} runs {type(behaviour).__name__}")
        return behaviour._state

    # ---------------------------------------------------------------- callbacks

    async def init(self, arg: Any) -> Init[S] | Ignore | Stop[S]:
        """Set up the state. Default: the argument is the state."""
        return Init(arg)

    async def handle_call(self, request: Any, from_: From, state: S) -> Reply[S] | NoReply[S] | Stop[S]:
        """Answer a call. Default: crash, as Elixir's default does."""
        raise NotImplementedError(f"{type(self).__name__} has no handle_call for {request!r}")

    async def handle_cast(self, request: Any, state: S) -> NoReply[S] | Stop[S]:
        """Handle a cast. Default: crash."""
        raise NotImplementedError(f"{type(self).__name__} has no handle_cast for {request!r}")

    async def handle_info(self, message: Any, state: S) -> NoReply[S] | Stop[S]:
        """Handle any other message. Default: log it and carry on."""
        _events.execute(
            ("gen_server", "unexpected_message"),
            {"server": type(self).__name__, "message": message},
        )
        return NoReply(state)

    async def handle_continue(self, arg: Any, state: S) -> NoReply[S] | Stop[S]:
        """Continue work asked for with ``continue_with=``. Default: crash."""
        raise NotImplementedError(f"{type(self).__name__} has no handle_continue for {arg!r}")

    async def terminate(self, reason: ExitReason, state: S) -> None:
        """Clean up before exiting. Default: nothing."""

    # ---------------------------------------------------------------- the loop

    async def _enter(self, arg: Any, name: Name | None, ack: asyncio.Future[Pid]) -> None:
        me = current_process()
        assert me is not None
        if name is not None:
            try:
                holder = register_name(name, me)
            except Exception as exc:  # a via module refusing the name: a failed start, not a crash
                self._fail_init(me, ack, StartError(Crash(exc)))
                raise ProcessExit(Crash(exc)) from exc
            if holder is not None:
                self._fail_init(me, ack, AlreadyStartedError(holder))
                raise ProcessExit(NORMAL)
        try:
            result = await self.init(arg)
        except ProcessExit as exit_:
            self._fail_init(me, ack, StartError(exit_.reason))
            raise
        except Exception as exc:
            self._fail_init(me, ack, StartError(Crash(exc)))
            raise ProcessExit(Crash(exc)) from exc
        match result:
            case Init(state, continue_with, timeout):
                self._state = state
                if not ack.done():
                    ack.set_result(me.pid)
                await self._loop(me, state, continue_with, timeout)
            case Ignore():
                self._fail_init(me, ack, StartIgnored())
                raise ProcessExit(NORMAL)
            case Stop(reason):
                self._fail_init(me, ack, StartError(reason))
                raise ProcessExit(reason)
            case _:
                reason = Abnormal(("bad_return_value", result))
                self._fail_init(me, ack, StartError(reason))
                raise ProcessExit(reason)

    @staticmethod
    def _fail_init(me: Process, ack: asyncio.Future[Pid], error: Exception) -> None:
        # The starter learns of the failure from the exception alone (OTP 26 proc_lib).
        parent = me.parent
        if parent is not None:
            me.links.discard(parent)
            parent.links.discard(me)
        if not ack.done():
            ack.set_exception(error)

    async def _loop(self, me: Process, state: Any, continue_with: Any, timeout: float | None) -> None:
        parent = me.parent
        mailbox = me.mailbox
        result: Any  # whatever a callback returned: checked by type below, as gen_server does
        while True:
            from_: From | None = None
            try:
                if continue_with is not NO_CONTINUE:
                    arg, continue_with = continue_with, NO_CONTINUE
                    result = await self.handle_continue(arg, state)
                else:
                    if timeout is None:
                        message = await mailbox.receive()
                    else:
                        try:
                            message = await mailbox.receive(timeout=timeout)
                        except TimeoutError:
                            message = TIMEOUT
                    kind = type(message)
                    if kind is _Call:
                        from_ = message.from_
                        result = await self.handle_call(message.request, from_, state)
                    elif kind is _Cast:
                        result = await self.handle_cast(message.request, state)
                    elif kind is _SystemStop:
                        result = Stop(message.reason)
                    elif kind is ExitMessage and parent is not None and message.pid is parent.pid:
                        # The parent (our supervisor) tells us to go: terminate, then exit.
                        result = Stop(message.reason)
                    else:
                        result = await self.handle_info(message, state)
            except ProcessExit as exit_:
                result = Stop(exit_.reason)
            except Exception as exc:
                result = Stop(Crash(exc))
            kind = type(result)
            if kind is Reply and from_ is not None:
                GenServer.reply(from_, result.reply)
            elif kind is Stop:
                new_state = state if result.state is NO_STATE else result.state
                if result.reply is not NO_REPLY and from_ is not None:
                    await self._exit(result.reason, new_state, from_, result.reply)
                await self._exit(result.reason, new_state)
            elif kind is not NoReply:
                await self._exit(Abnormal(("bad_return_value", result)), state)
            state = result.state
            self._state = state
            continue_with = result.continue_with
            timeout = result.timeout

    async def _exit(
        self, reason: ExitReason, state: Any, from_: From | None = None, reply: Any = NO_REPLY
    ) -> None:
        try:
            await self.terminate(reason, state)
        except ProcessExit as exit_:
            reason = exit_.reason
        except Exception as exc:
            reason = Crash(exc)
        if from_ is not None:
            GenServer.reply(from_, reply)
        if not is_expected(reason):
            me = current_process()
            _events.execute(
                ("gen_server", "terminated"),
                {"server": type(self).__name__, "pid": me.pid if me else None, "reason": reason},
            )
        raise ProcessExit(reason)

"""Task: the handle of one computation running in its own process, and the results it gives.

A task is a process that runs one function and reports one result to its *owner*, the process that
started it. :meth:`TaskSupervisor.async_` and :meth:`TaskSupervisor.async_nolink` return a
:class:`Task`; the owner then collects the result with one of:

- ``await task.await_result(timeout)``: the value, or :class:`TaskExitError` (the task ended
  without replying, ``reason`` says why) or :class:`TaskTimeoutError`;
- ``await task.yield_result(timeout)``: ``Ok(value)``, ``Exit(reason)``, or None if the task is
  still running (ask again later);
- ``await task.shutdown(timeout)``: stop the task (``shutdown``, then ``kill`` after ``timeout``
  seconds, or ``BRUTAL_KILL`` at once) and return ``Ok(value)`` if it had replied, ``Exit(reason)``
  if it had died another way, or None.

Example::

    task = await TaskSupervisor.async_nolink("tasks", fetch, url)
    match await task.yield_result(2.0) or await task.shutdown():
        case Ok(page):
            ...
        case Exit(reason):
            ...
        case None:
            ...               # still running after 2 s: shut down

Messages. When the owner is a process, the task delivers its result as Elixir's does: the owner
gets ``TaskReply(task.ref, value)`` and then, because it monitors the task, a
``DownMessage(task.ref, task.pid, reason)`` (``NORMAL`` after a reply). A GenServer that starts
tasks with ``async_nolink`` can therefore handle both in ``handle_info`` instead of awaiting;
``await_result``, ``yield_result`` and ``shutdown`` take those two messages out of the mailbox, so
none is left behind (``Process.demonitor(ref, [:flush])``).

Results are :class:`Ok` and :class:`Exit`, Elixir's ``{:ok, value}`` and ``{:exit, reason}``.

Deviations, and why:

- ``await_result`` raises in the caller where ``Task.await`` exits it; as in Elixir, after a timeout
  the task is no longer watched (its messages are flushed and will not arrive), but it keeps
  running, linked or not: call ``shutdown`` first if it must stop.
- From a plain script (no calling process) there is no mailbox and no link: the task reports to a
  future instead of messages, ``async_`` cannot link, and a second ``shutdown`` returns the same
  outcome again where Elixir exits with ``noproc``.
- ``owner`` is None for a task started from a plain script.

See also: Elixir ``Task`` (``await/2``, ``yield/2``, ``shutdown/2``), ``Task.Supervisor``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from mailman.supervisor._child_spec import BrutalKill
from mailman.supervisor._exceptions import TaskExitError, TaskTimeoutError
from mailman.supervisor._exit_reason import KILL, KILLED, NOPROC, SHUTDOWN, ExitReason, Normal
from mailman.supervisor._process import (
    DownMessage,
    Pid,
    Process,
    Ref,
    current_process,
    demonitor,
    exit,  # noqa: A004 - Erlang's exit/2
    link,
    monitor,
    send,
    spawn_link,
    unlink,
)

__all__ = ["Exit", "Ok", "Task", "TaskReply"]

T = TypeVar("T")

DEFAULT_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Ok(Generic[T]):
    """``{:ok, value}``: the task returned ``value``."""

    value: T


@dataclass(frozen=True, slots=True)
class Exit:
    """``{:exit, reason}``: the task ended without a result.

    ``reason`` is the task's :class:`ExitReason` (``Crash(exc)`` if it raised, the reason it gave to
    ``ProcessExit``, ``TIMEOUT`` for a stream task killed by ``on_timeout=KILL_TASK``). A stream
    with ``zip_input_on_exit=True`` gives Elixir's ``{:exit, {input, reason}}``: ``reason`` is then
    the tuple ``(input, exit_reason)``, so ``case Exit((item, Timeout()))`` matches as in Elixir.
    """

    reason: ExitReason | tuple[Any, ExitReason]


@dataclass(frozen=True, slots=True)
class TaskReply(Generic[T]):
    """``{ref, value}``: the message a task sends its owner process when it returns ``value``."""

    ref: Ref
    value: T


_NO_VALUE: Any = object()


class _Handoff:
    """What the owner and its task share, set up before the task can run its function.

    With an owner process the task waits on ``go`` until the owner has linked to and monitored it
    (Elixir's task waits for ``{owner, ref, reply_to}`` for the same reason), then replies with a
    message. From a plain script the task's exit hook settles ``outcome`` instead.
    """

    __slots__ = ("go", "outcome", "owner", "ref", "value")

    def __init__(self, owner: Process | None, loop: asyncio.AbstractEventLoop) -> None:
        self.owner = owner
        self.ref: Ref | None = None
        self.value: Any = _NO_VALUE
        self.go: asyncio.Future[None] | None = None
        self.outcome: asyncio.Future[Ok[Any] | Exit] | None = None
        if owner is None:
            self.outcome = loop.create_future()
        else:
            self.go = loop.create_future()

    def abandon(self) -> None:
        """The owner gave up (cancelled) before taking the task: it must not run."""
        if self.go is not None:
            self.go.cancel()

    def task_exited(self, _process: Process, reason: ExitReason) -> None:
        outcome = self.outcome
        if outcome is not None and not outcome.done():
            if isinstance(reason, Normal) and self.value is not _NO_VALUE:
                outcome.set_result(Ok(self.value))
            else:
                outcome.set_result(Exit(reason))


async def start_task(handoff: _Handoff, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> Pid:
    """The start function of an ``async_`` task's ChildSpec: runs in the supervisor, links to it."""
    pid = spawn_link(_run_task, handoff, fn, args)
    if handoff.outcome is not None:
        pid._process.add_exit_hook(handoff, handoff.task_exited)
    return pid


async def _run_task(handoff: _Handoff, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
    if handoff.go is not None:
        await handoff.go
    value = await fn(*args)
    owner = handoff.owner
    if owner is None:
        handoff.value = value
    elif handoff.ref in owner.monitoring:
        # Elixir replies to a monitor alias: once the owner demonitored (an await that timed out),
        # the late reply is dropped instead of landing in its mailbox.
        send(owner.pid, TaskReply(handoff.ref, value))


async def start_child_task(fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> Pid:
    """The start function of a fire-and-forget task (``TaskSupervisor.start_child``)."""
    return spawn_link(_run_child_task, fn, args)


async def _run_child_task(fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
    await fn(*args)


def take_task(owner: Process | None, handoff: _Handoff, pid: Pid, *, link_owner: bool) -> Task[Any]:
    """Hand a freshly started task to its owner: link and monitor it, then let it run."""
    if owner is None:
        return Task(pid, Ref(), None, handoff, linked=False)
    if link_owner:
        link(pid)
    ref = monitor(pid)
    handoff.ref = ref
    assert handoff.go is not None
    handoff.go.set_result(None)
    return Task(pid, ref, owner.pid, handoff, linked=link_owner)


class Task(Generic[T]):
    """A running task: its ``pid``, the ``ref`` its reply and DOWN carry, and its ``owner``.

    Only the owner may collect the result (Elixir raises ``ArgumentError`` otherwise; here
    ``ValueError``).
    """

    __slots__ = ("_handoff", "_linked", "owner", "pid", "ref")

    def __init__(self, pid: Pid, ref: Ref, owner: Pid | None, handoff: _Handoff, *, linked: bool) -> None:
        self.pid = pid
        self.ref = ref
        self.owner = owner
        self._handoff = handoff
        self._linked = linked

    def __repr__(self) -> str:
        return f"Task(pid={self.pid!r}, ref={self.ref!r}, owner={self.owner!r})"

    async def await_result(self, timeout: float = DEFAULT_TIMEOUT) -> T:
        """Wait up to ``timeout`` seconds (or ``INFINITY``) for the task's value: ``Task.await/2``.

        Raises :class:`TaskExitError` if the task ended without replying, :class:`TaskTimeoutError`
        if it did not reply in time (the task is then no longer watched, and keeps running).
        """
        me = self._check_owner("await_result")
        if me is None:
            outcome = await self._wait_outcome(timeout)
            if outcome is None:
                raise TaskTimeoutError(self, timeout)
        else:
            message = await self._receive(me, timeout)
            if message is None:
                demonitor(self.ref, flush=True)
                raise TaskTimeoutError(self, timeout)
            outcome = self._outcome_of(message)
        if isinstance(outcome, Ok):
            return outcome.value
        reason = outcome.reason
        assert isinstance(reason, ExitReason)  # only stream results carry an input
        raise TaskExitError(self, reason)

    async def yield_result(self, timeout: float = DEFAULT_TIMEOUT) -> Ok[T] | Exit | None:
        """``Ok(value)`` or ``Exit(reason)`` if the task ends within ``timeout`` seconds, else None.

        On None the task is still watched: yield again, or ``shutdown``. ``Task.yield/2``.
        """
        me = self._check_owner("yield_result")
        if me is None:
            return await self._wait_outcome(timeout)
        message = await self._receive(me, timeout)
        return None if message is None else self._outcome_of(message)

    async def shutdown(self, timeout: float | BrutalKill = DEFAULT_TIMEOUT) -> Ok[T] | Exit | None:
        """Unlink and stop the task, then say how it ended: ``Task.shutdown/2``.

        Sends ``shutdown`` and waits ``timeout`` seconds before sending ``kill`` (``BRUTAL_KILL``:
        ``kill`` at once). Returns ``Ok(value)`` if the task had replied, None if it stopped as
        asked, ``Exit(reason)`` if it ended another way (``Exit(KILLED)`` after the timeout).
        """
        brutal = isinstance(timeout, BrutalKill)
        me = self._check_owner("shutdown")
        if me is None:
            exit(self.pid, KILL if brutal else SHUTDOWN)
            outcome = await self._wait_outcome(math.inf if isinstance(timeout, BrutalKill) else timeout)
            if outcome is None:
                exit(self.pid, KILL)
                outcome = await self._wait_outcome(math.inf)
            assert outcome is not None
            if isinstance(outcome, Exit) and _stopped_as_asked(outcome.reason, brutal):
                return None
            return outcome
        if self._linked:
            unlink(self.pid)
        mon = monitor(self.pid)
        exit(self.pid, KILL if brutal else SHUTDOWN)
        is_down = _is_down(mon)
        try:
            down = await me.mailbox.receive(
                is_down, None if isinstance(timeout, BrutalKill) else _seconds(timeout)
            )
        except TimeoutError:
            exit(self.pid, KILL)
            down = await me.mailbox.receive(is_down)
        if down.reason == NOPROC:
            # It had already ended: its reply, or its own DOWN, is what the mailbox holds.
            found, message = me.mailbox.take(self._is_mine)
            if not found:
                raise TaskExitError(self, NOPROC)
            if isinstance(message, TaskReply):
                demonitor(self.ref, flush=True)
                return Ok(message.value)
            reason = message.reason
        else:
            demonitor(self.ref, flush=True)
            found, message = me.mailbox.take(self._is_reply)
            if found:
                return Ok(message.value)
            reason = down.reason
        if _stopped_as_asked(reason, brutal):
            return None
        return Exit(reason)

    # ---------------------------------------------------------------- internals

    def _check_owner(self, operation: str) -> Process | None:
        me = current_process()
        caller = None if me is None else me.pid
        if caller != self.owner:
            raise ValueError(
                f"{operation}: {self!r} must be queried from its owner {self.owner}, not from {caller}"
            )
        return me

    def _is_mine(self, message: object) -> bool:
        return type(message) in _REPLY_OR_DOWN and message.ref is self.ref  # type: ignore[attr-defined]

    def _is_reply(self, message: object) -> bool:
        return type(message) is TaskReply and message.ref is self.ref

    async def _receive(self, me: Process, timeout: float) -> TaskReply[T] | DownMessage | None:
        try:
            # _is_mine admits only this task's reply or DOWN message.
            message: TaskReply[T] | DownMessage = await me.mailbox.receive(self._is_mine, _seconds(timeout))
            return message
        except TimeoutError:
            return None

    def _outcome_of(self, message: TaskReply[T] | DownMessage) -> Ok[T] | Exit:
        if isinstance(message, TaskReply):
            demonitor(self.ref, flush=True)
            return Ok(message.value)
        return Exit(message.reason)

    async def _wait_outcome(self, timeout: float) -> Ok[T] | Exit | None:
        outcome = self._handoff.outcome
        assert outcome is not None
        if outcome.done():
            return outcome.result()
        seconds = _seconds(timeout)
        try:
            async with asyncio.timeout(seconds):
                return await asyncio.shield(outcome)
        except TimeoutError:
            return None


_REPLY_OR_DOWN = (TaskReply, DownMessage)


def _seconds(timeout: float) -> float | None:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
        raise ValueError(f"expected timeout to be seconds >= 0 or INFINITY, got {timeout!r}")
    return None if timeout == math.inf else timeout


def _is_down(ref: Ref) -> Callable[[Any], bool]:
    return lambda m: type(m) is DownMessage and m.ref is ref


def _stopped_as_asked(reason: object, brutal: bool) -> bool:
    """Did the task end the way shutdown asked? (Elixir's ``shutdown_receive``: ``shutdown`` for a
    timed shutdown, even one that had to ``kill``, which then reports ``killed``; ``killed`` for
    ``brutal_kill``.)"""
    return reason == (KILLED if brutal else SHUTDOWN)

"""Processes: an asyncio task with a pid, a mailbox, links, monitors and a trap-exit flag.

An Erlang *process* is the unit of isolation: it has its own mailbox, fails alone, and tells
other processes that it failed through *links* (two-way, deadly unless trapped) and *monitors*
(one-way, a ``DOWN`` message). Everything else in this library (GenServer, Supervisor, Task)
is a process running a particular loop.

The rules, as OTP has them:

- When a process ends with ``reason``, every linked process gets an exit signal with that
  reason, and every monitoring process gets ``DownMessage(ref, pid, reason)``.
- A process that does not trap exits ignores a ``normal`` signal and dies on any other, with the
  same reason. A process that traps exits gets ``ExitMessage(from_pid, reason)`` in its mailbox.
- ``kill`` cannot be trapped: the process ends with ``killed``, and its links see ``killed``
  (which, unlike ``kill``, *can* be trapped).

Example (a plain script, outside any process)::

    async def worker() -> None:
        msg = await receive()
        print("got", msg)

    pid = spawn(worker)
    send(pid, "hello")
    reason = await await_exit(pid)      # Normal()

Deviations from the BEAM, and why:

- asyncio cannot pre-empt a coroutine. Dying means the task is *cancelled*: it dies at its next
  ``await``. A process that blocks the event loop, or catches ``CancelledError`` and carries on,
  delays its own death (it still ends with the reason it was given). Never swallow cancellation.
- Signals from one process to another are delivered in order but take effect at the target's
  next ``await``, as the BEAM's signals are asynchronous too.
- A task cancelled from outside the library (for example by ``asyncio.run`` shutting down) ends
  with ``killed``.
- ``spawn_link`` from outside any process (a plain script) cannot link: there is nobody to link
  to. Use :func:`await_exit` to learn how such a process ended.
- Tasks a process creates with ``asyncio.create_task`` inherit its identity (a ``ContextVar``);
  they are not processes, and the process does not wait for them.

See also: Erlang ``erlang:spawn_link/1``, ``link/1``, ``monitor/2``, ``exit/2``,
``process_flag(trap_exit, true)``; Elixir ``Process``.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from mailman.supervisor._exceptions import NotAProcessError, ProcessExit
from mailman.supervisor._exit_reason import (
    KILLED,
    NOPROC,
    NORMAL,
    Crash,
    ExitReason,
    Kill,
    Normal,
)

__all__ = [
    "DownMessage",
    "ExitMessage",
    "Pid",
    "Ref",
    "TimerRef",
    "await_exit",
    "cancel_timer",
    "current_pid",
    "demonitor",
    "exit",
    "exit_reason",
    "is_alive",
    "link",
    "monitor",
    "receive",
    "self_pid",
    "send",
    "send_after",
    "spawn",
    "spawn_link",
    "trap_exit",
    "unlink",
]

_pid_counter = itertools.count(1)
_ref_counter = itertools.count(1)
_current: contextvars.ContextVar[Process | None] = contextvars.ContextVar(
    "mailman_supervisor_process", default=None
)


class Pid:
    """A process identifier: the handle every API takes. Printed as Erlang prints one, ``<0.42.0>``.

    Pids are cheap, hashable and safe to keep after the process ended (``is_alive`` says so).
    """

    __slots__ = ("_process", "id")

    def __init__(self, process: Process, pid_id: int) -> None:
        self._process = process
        self.id = pid_id

    def __repr__(self) -> str:
        return f"<0.{self.id}.0>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pid) and other.id == self.id

    def __hash__(self) -> int:
        return self.id


class Ref:
    """A unique reference, as ``make_ref()`` returns: names a monitor, a task or a call."""

    __slots__ = ("id",)

    def __init__(self) -> None:
        self.id = next(_ref_counter)

    def __repr__(self) -> str:
        return f"#Ref<{self.id}>"


# Exit and DOWN messages are built for every process that ends: plain slotted dataclasses, since a
# frozen one costs four times as much to build. Treat them as read-only.
@dataclass(slots=True)
class ExitMessage:
    """``{'EXIT', Pid, Reason}``: an exit signal, turned into a message because the receiver traps
    exits."""

    pid: Pid
    reason: ExitReason


@dataclass(slots=True)
class DownMessage:
    """``{'DOWN', Ref, process, Pid, Reason}``: a monitored process ended (or never existed)."""

    ref: Ref
    pid: Pid
    reason: ExitReason


class Mailbox:
    """A process's message queue, with selective receive.

    ``receive(match)`` takes the *first* message that ``match`` accepts and leaves the others in
    order, as Erlang's ``receive`` with patterns does.
    """

    __slots__ = ("_messages", "_waiter")

    def __init__(self) -> None:
        self._messages: deque[Any] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._messages)

    def put(self, message: object) -> None:
        self._messages.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take(self, match: Callable[[Any], bool] | None = None) -> tuple[bool, Any]:
        """Take the first matching message without waiting: ``(found, message)``."""
        messages = self._messages
        if match is None:
            if messages:
                return True, messages.popleft()
            return False, None
        for index, message in enumerate(messages):
            if match(message):
                del messages[index]
                return True, message
        return False, None

    async def receive(self, match: Callable[[Any], bool] | None = None, timeout: float | None = None) -> Any:
        messages = self._messages
        if match is None and messages:
            return messages.popleft()
        scanned = 0
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            while scanned < len(messages):
                message = messages[scanned]
                if match is None or match(message):
                    del messages[scanned]
                    return message
                scanned += 1
            waiter = loop.create_future()
            self._waiter = waiter
            try:
                if deadline is None:
                    await waiter
                else:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        raise TimeoutError("receive timed out")
                    handle = loop.call_at(deadline, _wake_on_timeout, waiter)
                    try:
                        await waiter
                    finally:
                        handle.cancel()
            finally:
                self._waiter = None

    def clear(self) -> None:
        self._messages.clear()


def _wake_on_timeout(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


ExitHook = Callable[["Process", ExitReason], None]


class Process:
    """The runtime record behind a :class:`Pid`. Internal: the public API takes pids."""

    __slots__ = (
        "__weakref__",
        "_exit_hooks",
        "_exited",
        "_pending_exit",
        "_running",
        "_task",
        "behaviour",
        "links",
        "mailbox",
        "monitored_by",
        "monitoring",
        "parent",
        "pid",
        "reason",
        "trap_exit",
    )

    def __init__(self, parent: Process | None) -> None:
        self.pid = Pid(self, next(_pid_counter))
        self.mailbox = Mailbox()
        self.links: set[Process] = set()
        self.monitored_by: dict[Ref, Process] = {}
        self.monitoring: dict[Ref, Process] = {}
        self.trap_exit = False
        self.parent = parent
        self.reason: ExitReason | None = None
        self._pending_exit: ExitReason | None = None
        self._running = False
        self._task: asyncio.Task[None] | None = None
        self._exit_hooks: dict[object, ExitHook] | None = None
        self._exited: asyncio.Future[ExitReason] | None = None
        self.behaviour: object = None  # the GenServer instance running in it, for get_state

    def __repr__(self) -> str:
        return f"Process({self.pid!r})"

    @property
    def alive(self) -> bool:
        return self.reason is None

    def start(self, body: Awaitable[object]) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(body))

    async def _run(self, body: Awaitable[object]) -> None:
        _current.set(self)
        self._running = True
        reason: ExitReason = NORMAL
        try:
            if self._pending_exit is not None:
                close = getattr(body, "close", None)
                if close is not None:
                    close()
                raise asyncio.CancelledError
            await body
        except ProcessExit as exit_:
            reason = exit_.reason
        except asyncio.CancelledError:
            reason = KILLED
        except Exception as exc:
            reason = Crash(exc)
        except BaseException as exc:  # KeyboardInterrupt, SystemExit: record, then let them through
            reason = Crash(exc)
            raise
        finally:
            if self._pending_exit is not None:
                # It was told to die; whatever it did while dying, that is its reason.
                reason = self._pending_exit
            self.terminate(reason)

    def add_exit_hook(self, key: object, hook: ExitHook) -> None:
        """Run ``hook(process, reason)`` when this process ends (synchronously, in order)."""
        if self._exit_hooks is None:
            self._exit_hooks = {}
        self._exit_hooks[key] = hook

    def remove_exit_hook(self, key: object) -> None:
        if self._exit_hooks is not None:
            self._exit_hooks.pop(key, None)

    def exited(self) -> asyncio.Future[ExitReason]:
        if self._exited is None:
            self._exited = asyncio.get_running_loop().create_future()
            if self.reason is not None:
                self._exited.set_result(self.reason)
        return self._exited

    def die(self, reason: ExitReason) -> None:
        """End this process with ``reason`` at its next await (first reason wins).

        Except ``killed``: a process still running cleanup after an earlier exit (a ``finally`` that
        awaits) is cancelled again and ends ``killed``, as ``kill`` after a shutdown timeout must.
        """
        if self.reason is not None:
            return
        pending = self._pending_exit
        if pending is not None and (reason != KILLED or pending == KILLED):
            return
        self._pending_exit = reason
        if self._running and self._task is not None:
            if _current.get() is self and asyncio.current_task() is self._task:
                # A signal a process sends itself (exit(self_pid(), R)) ends it at once, as the
                # BEAM's exit/2 never returns. It is raised as a cancellation, not as ProcessExit,
                # so that a GenServer does not mistake it for exit(R) and run terminate.
                raise asyncio.CancelledError
            self._task.cancel()

    def terminate(self, reason: ExitReason) -> None:
        """Record the exit and tell everyone who asked: hooks, links, monitors."""
        if self.reason is not None:
            return
        self.reason = reason
        self.mailbox.clear()
        hooks = self._exit_hooks
        if hooks:
            self._exit_hooks = None
            for hook in hooks.values():
                hook(self, reason)
        links = self.links
        if links:
            self.links = set()
            pid = self.pid
            for other in links:
                other.links.discard(self)
                deliver_exit_signal(other, pid, reason, via_link=True)
        if self.monitoring:
            for ref, watched in self.monitoring.items():
                watched.monitored_by.pop(ref, None)
            self.monitoring = {}
        monitors = self.monitored_by
        if monitors:
            self.monitored_by = {}
            pid = self.pid
            for ref, watcher in monitors.items():
                watcher.monitoring.pop(ref, None)
                if watcher.reason is None:
                    watcher.mailbox.put(DownMessage(ref, pid, reason))
        if self._exited is not None and not self._exited.done():
            self._exited.set_result(reason)


def deliver_exit_signal(target: Process, sender: Pid, reason: ExitReason, *, via_link: bool = False) -> None:
    """Apply OTP's exit-signal rules to ``target``.

    ``kill`` is untrappable only when sent with ``exit/2``; a linked process that *ended* with
    reason ``kill`` sends an ordinary, trappable signal (``via_link=True``), as on the BEAM.
    """
    if target.reason is not None:
        return
    if isinstance(reason, Kill) and not via_link:
        target.die(KILLED)
    elif target.trap_exit:
        target.mailbox.put(ExitMessage(sender, reason))
    elif isinstance(reason, Normal):
        if sender == target.pid:
            target.die(reason)
    else:
        target.die(reason)


_outside: list[Pid] = []


def _outside_pid() -> Pid:
    """The sender of signals sent from a plain script: a pid that never runs, like a shell's."""
    if not _outside:
        process = Process(None)
        _outside.append(process.pid)
    return _outside[0]


def current_process() -> Process | None:
    """The process the caller runs in, or None in a plain script."""
    return _current.get()


def require_process(operation: str) -> Process:
    process = _current.get()
    if process is None:
        raise NotAProcessError(
            f"{operation} needs a calling process; call it from inside a process "
            "(a GenServer callback, a spawned function) rather than a plain script"
        )
    return process


def _spawn(fn: Callable[..., Awaitable[object]], args: tuple[object, ...], link: bool) -> Process:
    parent = _current.get()
    process = Process(parent)
    if link and parent is not None:
        process.links.add(parent)
        parent.links.add(process)
    process.start(fn(*args))
    return process


def spawn(fn: Callable[..., Awaitable[object]], *args: object) -> Pid:
    """Start ``fn(*args)`` as a new process and return its pid. Erlang's ``spawn/1``."""
    return _spawn(fn, args, link=False).pid


def spawn_link(fn: Callable[..., Awaitable[object]], *args: object) -> Pid:
    """Start ``fn(*args)`` as a new process linked to the caller. Erlang's ``spawn_link/1``.

    Outside any process there is nobody to link to, and this is :func:`spawn`.
    """
    return _spawn(fn, args, link=True).pid


def self_pid() -> Pid:
    """The calling process's pid: Erlang's ``self()``. Raises outside a process."""
    return require_process("self_pid()").pid


def current_pid() -> Pid | None:
    """The calling process's pid, or None when called from a plain script."""
    process = _current.get()
    return None if process is None else process.pid


def send(dest: Pid, message: object) -> None:
    """Put ``message`` in ``dest``'s mailbox: Erlang's ``Pid ! Message``.

    Like Erlang's send to a pid, sending to a dead process silently does nothing.
    """
    process = dest._process
    if process.reason is None:
        process.mailbox.put(message)


async def receive(match: Callable[[Any], bool] | None = None, timeout: float | None = None) -> Any:
    """Take the first message ``match`` accepts (any message if None), waiting up to ``timeout``
    seconds. Raises ``TimeoutError`` when the time runs out: Erlang's ``receive ... after``.

    Example::

        down = await receive(lambda m: isinstance(m, DownMessage) and m.ref == ref, timeout=1.0)
    """
    return await require_process("receive()").mailbox.receive(match, timeout)


def link(pid: Pid) -> None:
    """Link the caller and ``pid``: if either ends abnormally, the other gets the exit signal.

    Linking to a process that already ended sends the caller an exit signal with ``noproc``,
    as Erlang does.
    """
    me = require_process("link()")
    other = pid._process
    if other is me:
        return
    if other.reason is not None:
        deliver_exit_signal(me, pid, NOPROC)
        return
    me.links.add(other)
    other.links.add(me)


def unlink(pid: Pid) -> None:
    """Remove the link between the caller and ``pid`` (if any)."""
    me = require_process("unlink()")
    other = pid._process
    me.links.discard(other)
    other.links.discard(me)


def monitor(pid: Pid) -> Ref:
    """Watch ``pid``: when it ends the caller gets ``DownMessage(ref, pid, reason)``.

    Monitoring a process that already ended delivers the DOWN at once with reason ``noproc``.
    """
    me = require_process("monitor()")
    ref = Ref()
    other = pid._process
    if other.reason is not None:
        me.mailbox.put(DownMessage(ref, pid, NOPROC))
        return ref
    other.monitored_by[ref] = me
    me.monitoring[ref] = other
    return ref


def demonitor(ref: Ref, *, flush: bool = False) -> None:
    """Stop a monitor. With ``flush=True`` also drop its DOWN message if it already arrived."""
    me = require_process("demonitor()")
    other = me.monitoring.pop(ref, None)
    if other is not None:
        other.monitored_by.pop(ref, None)
    if flush:
        me.mailbox.take(lambda m: isinstance(m, DownMessage) and m.ref is ref)


def exit(pid: Pid, reason: ExitReason) -> None:  # noqa: A001 - Erlang's exit/2, used as otp.exit
    """Send an exit signal to ``pid``, as if the caller had died with ``reason``: ``exit/2``.

    ``KILL`` always ends the target (with ``killed``); ``NORMAL`` is ignored by a target that does
    not trap exits (unless it is the caller itself); a target that traps exits gets an
    :class:`ExitMessage`. Works from a plain script too.
    """
    sender = current_process()
    sender_pid = _outside_pid() if sender is None else sender.pid
    deliver_exit_signal(pid._process, sender_pid, reason)


def trap_exit(flag: bool = True) -> bool:
    """Set the caller's trap-exit flag and return the old one: ``process_flag(trap_exit, Flag)``."""
    me = require_process("trap_exit()")
    old = me.trap_exit
    me.trap_exit = flag
    return old


def is_alive(pid: Pid) -> bool:
    """True while the process has not ended: ``is_process_alive/1``."""
    return pid._process.reason is None


def exit_reason(pid: Pid) -> ExitReason | None:
    """The reason the process ended with, or None while it runs."""
    return pid._process.reason


async def await_exit(pid: Pid, timeout: float | None = None) -> ExitReason:
    """Wait until ``pid`` ends and return its exit reason. Works from a plain script.

    This is what a shell does with a monitor and a ``receive`` of the DOWN message; a plain
    ``asyncio`` program has no mailbox, so it gets a coroutine instead.
    """
    future = pid._process.exited()
    if timeout is None:
        return await asyncio.shield(future)
    async with asyncio.timeout(timeout):
        return await asyncio.shield(future)


class TimerRef:
    """A timer started by :func:`send_after`; cancel it with :func:`cancel_timer`."""

    __slots__ = ("_handle",)

    def __init__(self, handle: asyncio.TimerHandle) -> None:
        self._handle = handle


def send_after(dest: Pid, message: object, seconds: float) -> TimerRef:
    """Send ``message`` to ``dest`` after ``seconds``: ``erlang:send_after/3``."""
    loop = asyncio.get_running_loop()
    return TimerRef(loop.call_later(seconds, send, dest, message))


def cancel_timer(timer: TimerRef) -> None:
    """Cancel a :func:`send_after` timer; a timer that already fired is left alone."""
    timer._handle.cancel()

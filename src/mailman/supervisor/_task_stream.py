"""TaskStream: run a function over an iterable, each item in its own supervised task, lazily.

:meth:`TaskSupervisor.async_stream_nolink` returns a :class:`TaskStream`, an async iterator of one
result per input: ``Ok(value)`` when the task returned, ``Exit(reason)`` when it did not. The input
(sync or async iterable) is pulled only as results are taken: at most ``max_concurrency`` tasks run
at once and at most that many results wait to be taken, so memory stays bounded however long the
input is.

Example::

    async with TaskSupervisor.async_stream_nolink("tasks", urls, fetch, max_concurrency=10) as pages:
        async for result in pages:
            match result:
                case Ok(page):
                    ...
                case Exit(reason):
                    ...

Options, as Elixir's:

- ``ordered`` (True): results in input order, finished ones buffered until their turn; False gives
  them in completion order.
- ``timeout`` (5.0 seconds, or ``INFINITY``): how long *each* task may run, from its own start. A
  task past it is always killed. Then ``on_timeout``: ``OnTimeout.EXIT`` (the default) makes the
  iteration raise :class:`StreamTimeoutError` and kills the remaining tasks;
  ``OnTimeout.KILL_TASK`` gives that item ``Exit(TIMEOUT)`` and goes on.
- ``zip_input_on_exit`` (False): ``Exit((input, reason))`` instead of ``Exit(reason)``.
- ``shutdown`` (5.0 or ``BRUTAL_KILL``): the tasks' shutdown when their supervisor stops.

Leaving early (``break``, ``aclose()``, leaving ``async with``, an exception or a cancellation in
the consumer) kills the remaining tasks with ``kill``; ``aclose`` and ``async with`` also wait until
they are gone. If the supervisor is full (``max_children``), the stream closes cleanly and raises
:class:`MaxChildrenError`.

Deviations, and why:

- No monitor process: Elixir's stream spawns one to watch the tasks and time them out; here each
  task's exit hook and a single event-loop timer (armed for the earliest deadline) do that work, so a
  stream costs no process and no asyncio task beyond its task processes. The results never pass
  through a mailbox, so none can leak into the consumer's.
- ``on_timeout=EXIT`` raises :class:`StreamTimeoutError` in the consumer instead of exiting it, after
  the results that were due before the timeout have been taken.
- A ``break`` cleans up when the iterator is garbage collected (at once in CPython, where it is
  reference counted); ``async with`` or ``aclose()`` make that explicit and wait for the tasks.
- A consumer that is cancelled or dies kills its stream's tasks, ``nolink`` ones too (Elixir lets
  unlinked stream tasks finish): their results would have no reader.
- The linked variant (:meth:`TaskSupervisor.async_stream`) links each task straight to the consumer
  process: a task crash takes a consumer that does not trap exits down with it, and a consumer that
  traps exits gets ``Exit(reason)`` and no ``ExitMessage``, as Elixir's monitor process arranges.

See also: Elixir ``Task.Supervisor.async_stream_nolink/4``, ``Task.async_stream/3``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import os
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, TypedDict, TypeVar

from mailman.supervisor._child_spec import BrutalKill, ChildSpec, Restart
from mailman.supervisor._child_start import FailedReply
from mailman.supervisor._dynamic_supervisor import request_start_child, started_child
from mailman.supervisor._exceptions import StartIgnored, StreamTimeoutError
from mailman.supervisor._exit_reason import KILL, TIMEOUT, ExitReason
from mailman.supervisor._gen_server import GenServer, RequestId
from mailman.supervisor._names import ServerRef
from mailman.supervisor._process import (
    Pid,
    Process,
    current_process,
    exit,  # noqa: A004 - Erlang's exit/2
    link,
    spawn_link,
)
from mailman.supervisor._task import Exit, Ok

__all__ = ["OnTimeout", "StreamKeywords", "StreamOptions", "TaskStream"]

T = TypeVar("T")

_NO_VALUE: Any = object()
_CLOCK_RESOLUTION = time.get_clock_info("monotonic").resolution


class OnTimeout(enum.Enum):
    """What a stream does when a task runs past ``timeout``: ``:exit`` | ``:kill_task``."""

    EXIT = "exit"
    """Raise :class:`StreamTimeoutError` in the consumer and kill every remaining task."""
    KILL_TASK = "kill_task"
    """Kill that task only; its item gives ``Exit(TIMEOUT)``."""


DEFAULT_SHUTDOWN = 5.0
"""Seconds a task is given to stop when its supervisor stops (a worker's default shutdown)."""
DEFAULT_STREAM_TIMEOUT = 5.0
"""Seconds each task of a stream may run (Elixir's default ``:timeout``)."""


class StreamKeywords(TypedDict, total=False):
    """The keyword options of ``async_stream`` / ``async_stream_nolink`` (see :class:`StreamOptions`)."""

    max_concurrency: int | None
    ordered: bool
    timeout: float
    on_timeout: OnTimeout
    zip_input_on_exit: bool
    shutdown: float | BrutalKill


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamOptions:
    """How an async stream runs its tasks: Elixir's ``async_stream`` options, as one frozen object.

    - ``max_concurrency``: tasks running at once (None: ``os.cpu_count()``);
    - ``ordered``: results in input order (True) or as they finish;
    - ``timeout``: seconds each task may run (``INFINITY`` for none); past it, ``on_timeout``:
      ``EXIT`` ends the stream with :class:`StreamTimeoutError`, ``KILL_TASK`` gives that item
      ``Exit(TIMEOUT)`` and goes on;
    - ``zip_input_on_exit``: ``Exit((input, reason))`` instead of ``Exit(reason)``;
    - ``shutdown``: the tasks' shutdown when their supervisor stops (seconds or ``BRUTAL_KILL``).

    Checked when made: a wrong value raises ``ValueError`` / ``TypeError`` naming the option.
    """

    max_concurrency: int | None = None
    ordered: bool = True
    timeout: float = DEFAULT_STREAM_TIMEOUT
    on_timeout: OnTimeout = OnTimeout.EXIT
    zip_input_on_exit: bool = False
    shutdown: float | BrutalKill = DEFAULT_SHUTDOWN

    def __post_init__(self) -> None:
        limit = self.max_concurrency
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"expected max_concurrency to be an int > 0, got {limit!r}")
        timeout = self.timeout
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0:
            raise ValueError(f"expected timeout to be seconds >= 0 or INFINITY, got {timeout!r}")
        if not isinstance(self.on_timeout, OnTimeout):
            raise TypeError(
                f"expected on_timeout to be an OnTimeout (EXIT or KILL_TASK), got {self.on_timeout!r}"
            )
        if not isinstance(self.ordered, bool) or not isinstance(self.zip_input_on_exit, bool):
            raise TypeError("expected ordered and zip_input_on_exit to be bools")
        shutdown = self.shutdown
        if not isinstance(shutdown, BrutalKill) and (
            isinstance(shutdown, bool)
            or not isinstance(shutdown, int | float)
            or not shutdown >= 0
            or shutdown == math.inf
        ):
            raise ValueError(f"expected shutdown to be seconds >= 0 or BRUTAL_KILL, got {shutdown!r}")

    @property
    def concurrency(self) -> int:
        """``max_concurrency``, or the machine's CPU count when it is None."""
        return self.max_concurrency or os.cpu_count() or 1


class _StreamTask:
    """One item's task: where its value lands, and what the stream needs to kill it."""

    __slots__ = ("core", "deadline", "index", "input", "process", "timed_out", "value")

    def __init__(self, core: _StreamCore, index: int, input_: Any) -> None:
        self.core = core
        self.index = index
        self.input = input_
        self.process: Process | None = None
        self.deadline = math.inf
        self.timed_out = False
        self.value: Any = _NO_VALUE

    def exited(self, _process: Process, reason: ExitReason) -> None:
        self.core.task_exited(self, reason)


async def _start_stream_task(core: _StreamCore) -> Pid:
    """The start function of the stream's one ChildSpec: starts the next item the consumer sent.

    It runs in the supervisor, so the task is linked to it. One spec serves the whole stream: the
    consumer queues each item in ``pending`` as it sends the start request, and the supervisor,
    serving requests in order, takes them in the same order.
    """
    pending = core.pending.popleft() if core.pending else None
    if pending is None or core.closing:
        raise StartIgnored  # the consumer left while this start was queued: start nothing
    task, item = pending
    pid = spawn_link(_run_stream_task, task, core.fn, item)
    process = pid._process
    task.process = process
    process.add_exit_hook(task, task.exited)
    if core.timeout != math.inf:
        loop = asyncio.get_running_loop()
        task.deadline = loop.time() + core.timeout
        if core.timer is None:
            core.timer = loop.call_at(task.deadline, core.on_timer)
    return pid


async def _run_stream_task(task: _StreamTask, fn: Callable[[Any], Awaitable[Any]], item: Any) -> None:
    owner = task.core.link_owner
    if owner is not None:
        link(owner.pid)
    task.value = await fn(item)


def _unlink(a: Process, b: Process) -> None:
    a.links.discard(b)
    b.links.discard(a)


class _StreamCore:
    """The stream's state. The tasks' exit hooks refer to it, never to the :class:`TaskStream`, so
    that dropping the TaskStream (``break``) lets it be collected and kill the tasks."""

    __slots__ = (
        "all_gone",
        "async_source",
        "closed",
        "closing",
        "delivered",
        "done",
        "exhausted",
        "fail_after",
        "failure",
        "fn",
        "link",
        "link_owner",
        "max_concurrency",
        "on_timeout",
        "ordered",
        "pending",
        "ready",
        "running",
        "shutdown",
        "source",
        "spawned",
        "spec",
        "started",
        "supervisor",
        "timeout",
        "timer",
        "waiter",
        "zip_input",
    )

    def __init__(
        self,
        supervisor: ServerRef,
        source: Iterator[Any] | AsyncIterator[Any],
        fn: Callable[[Any], Awaitable[Any]],
        options: StreamOptions,
        *,
        link: bool,
    ) -> None:
        self.supervisor = supervisor
        self.async_source = isinstance(source, AsyncIterator)
        self.source = source
        self.fn = fn
        # Read on every step of the stream: kept as attributes of their own rather than looked up.
        self.max_concurrency = options.concurrency
        self.ordered = options.ordered
        self.timeout = float(options.timeout)
        self.on_timeout = options.on_timeout
        self.zip_input = options.zip_input_on_exit
        self.shutdown = options.shutdown
        self.link = link
        self.link_owner: Process | None = None
        self.started = False
        self.spawned = 0
        self.delivered = 0
        self.exhausted = False
        self.running: dict[int, _StreamTask] = {}
        self.done: dict[int, Ok[Any] | Exit] = {}  # ordered: finished, waiting for their turn
        self.ready: deque[Ok[Any] | Exit] = deque()  # unordered: finished, in completion order
        self.waiter: asyncio.Future[None] | None = None
        self.failure: StreamTimeoutError | None = None
        self.fail_after = 0
        self.closing = False  # tasks killed, no more results accepted
        self.closed = False  # iteration over
        self.all_gone: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None  # armed for the earliest running deadline
        self.pending: deque[tuple[_StreamTask, Any]] = deque()  # tasks asked for, not started yet
        self.spec = ChildSpec(
            id=None, start=_start_stream_task, args=(self,), restart=Restart.TEMPORARY, shutdown=self.shutdown
        )

    # ------------------------------------------------------------ the consumer's side

    async def next(self) -> Ok[Any] | Exit:
        if self.closed:
            raise StopAsyncIteration
        if not self.started:
            self.started = True
            if self.link:
                self.link_owner = current_process()
        try:
            while True:
                if self.failure is not None and self.delivered >= self.fail_after:
                    raise self.failure
                if self.closed:  # closed by someone else while this call waited
                    raise StopAsyncIteration
                if self.ordered:
                    result = self.done.pop(self.delivered, None)
                else:
                    result = self.ready.popleft() if self.ready else None
                if result is not None:
                    self.delivered += 1
                    return result
                # Nothing to give: fill every free slot, in one batch (see _spawn_batch).
                room = self.max_concurrency - (self.spawned - self.delivered)
                if room > 0 and not self.exhausted and not self.closing:
                    await self._spawn_batch(room)
                    continue
                if self.spawned == self.delivered and (self.exhausted or self.closing):
                    self.closed = True
                    if self.timer is not None:
                        self.timer.cancel()
                        self.timer = None
                    raise StopAsyncIteration
                waiter = self.waiter = asyncio.get_running_loop().create_future()
                try:
                    await waiter
                finally:
                    self.waiter = None
        except StopAsyncIteration:
            raise
        except Exception:
            await self.close()
            raise
        except BaseException:
            self.closed = True
            self.kill_all()
            raise

    async def _spawn_batch(self, room: int) -> None:
        """Start a task for each of up to ``room`` more items.

        Each item's start request goes to the supervisor as soon as the item is pulled, and the
        replies are collected after the last one (``gen_server:send_request/2``): the supervisor
        starts the whole batch in one turn instead of one call's round trip per item. Results are
        handed out before a batch is started, so a batch holds every slot freed since the last.
        """
        requests: list[RequestId[Pid | FailedReply | None]] = []
        try:
            for _ in range(room):
                try:
                    if self.async_source:
                        item = await anext(self.source)  # type: ignore[arg-type]
                    else:
                        item = next(self.source)  # type: ignore[arg-type]
                except (StopIteration, StopAsyncIteration):
                    self.exhausted = True
                    break
                if self.closing:  # closed while the source was awaited: that item is dropped
                    break
                index = self.spawned
                task = _StreamTask(self, index, item if self.zip_input else None)
                self.running[index] = task  # before the start: the task may end before the reply
                self.spawned = index + 1
                self.pending.append((task, item))
                try:
                    requests.append(request_start_child(self.supervisor, self.spec))
                except BaseException:
                    self.pending.pop()
                    del self.running[index]
                    self.spawned = index
                    raise
        finally:
            await self._collect_starts(requests)

    async def _collect_starts(self, requests: list[RequestId[Pid | FailedReply | None]]) -> None:
        """Receive every start reply of a batch; raise the first failure once all are in."""
        failure: BaseException | None = None
        for position, request in enumerate(requests):
            try:
                await started_child(request)
            except BaseException as error:
                if not isinstance(error, Exception):  # cancelled: stop waiting, forget the rest
                    for unanswered in requests[position + 1 :]:
                        GenServer.abandon_request(unanswered)
                    self.pending.clear()
                    raise
                failure = failure or error
        if failure is not None:
            # Starts that did not happen leave their tasks without a process; the stream closes
            # (the consumer sees this error), and closing drops those tasks.
            self.pending.clear()
            raise failure

    async def close(self) -> None:
        """Kill every task still running and wait until all are gone."""
        self.closed = True
        self.kill_all()
        self.done.clear()
        self.ready.clear()
        if self.running:
            if self.all_gone is None:
                self.all_gone = asyncio.get_running_loop().create_future()
            await asyncio.shield(self.all_gone)

    def kill_all(self) -> None:
        self.closing = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        owner = self.link_owner
        for index, task in list(self.running.items()):
            process = task.process
            if process is None:  # its start is still queued; it will be ignored
                del self.running[index]
                continue
            if owner is not None:
                _unlink(owner, process)  # the consumer must not die of the kill
            exit(process.pid, KILL)
        self._wake()

    # ------------------------------------------------------------ the tasks' side (sync callbacks)

    def task_exited(self, task: _StreamTask, reason: ExitReason) -> None:
        """Exit hook of every task: turn its end into a result (it runs before links fire)."""
        del self.running[task.index]
        owner = self.link_owner
        if owner is not None and owner.trap_exit and task.process is not None:
            _unlink(owner, task.process)  # the result tells the consumer; no ExitMessage
        if self.closing:
            all_gone = self.all_gone
            if not self.running and all_gone is not None and not all_gone.done():
                all_gone.set_result(None)
            return
        if task.value is not _NO_VALUE:
            result: Ok[Any] | Exit = Ok(task.value)
        elif task.timed_out:
            if self.on_timeout is OnTimeout.EXIT:
                self._fail(StreamTimeoutError(self.timeout))
                return
            result = Exit((task.input, TIMEOUT) if self.zip_input else TIMEOUT)
        else:
            result = Exit((task.input, reason) if self.zip_input else reason)
        if self.ordered:
            self.done[task.index] = result
        else:
            self.ready.append(result)
        self._wake()

    def on_timer(self) -> None:
        """Timer callback: kill every task past its deadline, whatever ``on_timeout`` says, and
        re-arm for the next deadline.

        One timer serves the whole stream: every task gets the same ``timeout`` from its own start
        and tasks start in order, so ``running`` (in start order) is also in deadline order and the
        earliest deadline is the first running task's. A task that ends early leaves the timer armed
        for its deadline; when it fires, it just re-arms for the next one.
        """
        self.timer = None
        if self.closing:
            return
        loop = asyncio.get_running_loop()
        now = loop.time() + _CLOCK_RESOLUTION  # asyncio runs timers due within its resolution
        owner = self.link_owner
        for task in list(self.running.values()):
            process = task.process
            if process is None or task.timed_out:
                continue
            if task.deadline > now:
                self.timer = loop.call_at(task.deadline, self.on_timer)
                return
            task.timed_out = True
            if owner is not None:
                _unlink(owner, process)
            exit(process.pid, KILL)

    def _fail(self, error: StreamTimeoutError) -> None:
        # The results due before the timeout are still given; then the error.
        due = self.delivered
        if self.ordered:
            while due in self.done:
                due += 1
        else:
            due += len(self.ready)
        self.failure = error
        self.fail_after = due
        self.kill_all()
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class TaskStream(AsyncIterator[Ok[T] | Exit], Generic[T]):
    """The async iterator :meth:`TaskSupervisor.async_stream_nolink` returns: one result per input.

    Use it in ``async for``; ``aclose()`` (or ``async with``) stops it early, killing the tasks still
    running and waiting until they are gone.
    """

    __slots__ = ("_core",)

    def __init__(
        self,
        supervisor: ServerRef,
        source: Iterable[Any] | AsyncIterable[Any],
        fn: Callable[[Any], Awaitable[T]],
        options: StreamOptions,
        *,
        link: bool,
    ) -> None:
        iterator: Iterator[Any] | AsyncIterator[Any]
        if isinstance(source, AsyncIterable):
            iterator = aiter(source)
        elif isinstance(source, Iterable):
            iterator = iter(source)
        else:
            raise TypeError(f"expected an iterable or an async iterable, got {type(source).__name__}")
        self._core = _StreamCore(
            supervisor,
            iterator,
            fn,
            options,
            link=link,
        )

    def __aiter__(self) -> TaskStream[T]:
        return self

    def __anext__(self) -> Awaitable[Ok[T] | Exit]:
        return self._core.next()

    async def aclose(self) -> None:
        """Stop early: kill the tasks still running and wait until they are gone."""
        core = self._core
        if not core.closed or core.running:
            await core.close()

    async def __aenter__(self) -> TaskStream[T]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        core = self._core
        if core.running and not core.closing:
            core.closed = True
            with contextlib.suppress(RuntimeError):  # "Event loop is closed": its tasks went with it
                core.kill_all()

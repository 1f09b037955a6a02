"""TaskSupervisor: a DynamicSupervisor whose children are tasks, one-off functions in processes.

A task runs one async function in its own process. Started under a TaskSupervisor it is
supervised like any child (stopped with the supervisor, counted against ``max_children``) while
its result goes back to whoever asked for it. There are three ways to start one:

- :meth:`TaskSupervisor.start_child`: fire and forget; nobody gets the result. ``restart=`` may
  make it ``PERMANENT`` or ``TRANSIENT`` (the default, ``TEMPORARY``, never restarts it).
- :meth:`TaskSupervisor.async_` / :meth:`TaskSupervisor.async_nolink`: returns a :class:`Task` to
  collect the result from (``await_result``, ``yield_result``, ``shutdown``). ``async_`` links the
  task to the caller, so either one's crash takes the other down; ``async_nolink`` does not, so
  the caller survives the task and learns how it ended. From a GenServer, ``async_nolink`` plus
  ``handle_info`` for ``TaskReply`` and ``DownMessage`` is Elixir's way to run work without
  blocking the server.
- :meth:`TaskSupervisor.async_stream_nolink` / :meth:`TaskSupervisor.async_stream`: run a function
  over an iterable, lazily, at most ``max_concurrency`` tasks at once (see :class:`TaskStream`).

Example::

    sup = await TaskSupervisor.start_link(DynamicSupervisorSpec(max_children=100), name="tasks")

    task = await TaskSupervisor.async_nolink("tasks", fetch, "https://example.org")
    page = await task.await_result(10.0)

    async for result in TaskSupervisor.async_stream_nolink("tasks", urls, fetch, max_concurrency=8):
        ...                                  # Ok(page) or Exit(reason), in input order

Options: ``start_link`` takes an optional :class:`DynamicSupervisorSpec` (``max_children``,
``max_restarts``, ``max_seconds``); its ``extra_arguments`` must stay empty, the tasks' start
functions take none. Every task's ``shutdown`` is 5.0 seconds unless given (or ``BRUTAL_KILL``).

Deviations, and why:

- Elixir's ``async/3`` and ``async/5`` (a function or module-function-args) are one method here,
  ``async_(sup, fn, *args)``: Python has no MFA tuples, and ``async`` is a keyword, hence the
  trailing underscore.
- Reaching ``max_children`` raises :class:`MaxChildrenError` where Elixir raises a RuntimeError.
- ``$callers`` / ``$ancestors`` process dictionary entries do not exist.

See also: Elixir ``Task.Supervisor``, ``Task``; Erlang has no counterpart (``proc_lib`` tasks).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Awaitable, Callable, Hashable, Iterable
from typing import Any, TypeVar, Unpack

from mailman.supervisor._child_spec import BrutalKill, ChildSpec, Restart, supervisor_child_spec
from mailman.supervisor._clock import INFINITY
from mailman.supervisor._dynamic_supervisor import DynamicSupervisor, DynamicSupervisorSpec
from mailman.supervisor._exit_reason import NORMAL, ExitReason
from mailman.supervisor._names import Name, ServerRef
from mailman.supervisor._process import Pid, current_process
from mailman.supervisor._task import Task, _Handoff, start_child_task, start_task, take_task
from mailman.supervisor._task_stream import DEFAULT_SHUTDOWN, StreamKeywords, StreamOptions, TaskStream

__all__ = ["TaskSupervisor"]

T = TypeVar("T")


class TaskSupervisor:
    """Starts and supervises tasks; a :class:`DynamicSupervisor` underneath."""

    @staticmethod
    async def start_link(arg: DynamicSupervisorSpec | None = None, *, name: Name | None = None) -> Pid:
        """Start a task supervisor, with no tasks, linked to the caller."""
        if arg is not None:
            if not isinstance(arg, DynamicSupervisorSpec):
                raise TypeError(f"expected a DynamicSupervisorSpec or None, got {type(arg).__name__}")
            if arg.extra_arguments:
                raise ValueError(
                    "a TaskSupervisor takes no extra_arguments: pass arguments to each task instead"
                )
        return await DynamicSupervisor.start_link(arg, name=name)

    @classmethod
    def child_spec(
        cls,
        arg: DynamicSupervisorSpec | None = None,
        *,
        id: Hashable | None = None,  # noqa: A002 - the child spec field is called id
        name: Name | None = None,
        restart: Restart = Restart.PERMANENT,
    ) -> ChildSpec:
        """The spec to run a task supervisor under another supervisor (``{Task.Supervisor, opts}``)."""
        child_id: Hashable = TaskSupervisor if id is None else id
        return supervisor_child_spec(cls.start_link, arg, child_id=child_id, name=name, restart=restart)

    @staticmethod
    async def start_child(
        supervisor: ServerRef,
        fn: Callable[..., Awaitable[Any]],
        *args: Any,
        restart: Restart = Restart.TEMPORARY,
        shutdown: float | BrutalKill = DEFAULT_SHUTDOWN,
    ) -> Pid:
        """Run ``fn(*args)`` in a new task and forget it: its value is dropped.

        The task is linked to the supervisor only. Raises :class:`MaxChildrenError` when full.
        """
        _check_fn(fn)
        spec = ChildSpec(id=None, start=start_child_task, args=(fn, args), restart=restart, shutdown=shutdown)
        pid = await DynamicSupervisor.start_child(supervisor, spec)
        assert pid is not None  # its start function never ignores
        return pid

    @staticmethod
    async def async_(
        supervisor: ServerRef,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        shutdown: float | BrutalKill = DEFAULT_SHUTDOWN,
    ) -> Task[T]:
        """Run ``fn(*args)`` in a task linked to the caller (and the supervisor): ``async/3``.

        Collect the result with the returned task's ``await_result``. If the task crashes, a
        calling process that does not trap exits crashes too. Raises :class:`MaxChildrenError`.
        """
        return await _async(supervisor, fn, args, shutdown, link_owner=True)

    @staticmethod
    async def async_nolink(
        supervisor: ServerRef,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        shutdown: float | BrutalKill = DEFAULT_SHUTDOWN,
    ) -> Task[T]:
        """Run ``fn(*args)`` in a task linked to the supervisor only: ``async_nolink/3``.

        A calling process gets ``TaskReply(task.ref, value)`` and then ``DownMessage(task.ref,
        task.pid, reason)``, or just the DOWN if the task failed; or collect them with the task's
        ``await_result`` / ``yield_result``. Raises :class:`MaxChildrenError` when full.
        """
        return await _async(supervisor, fn, args, shutdown, link_owner=False)

    @staticmethod
    def async_stream_nolink(
        supervisor: ServerRef,
        iterable: Iterable[Any] | AsyncIterable[Any],
        fn: Callable[[Any], Awaitable[T]],
        **options: Unpack[StreamKeywords],
    ) -> TaskStream[T]:
        """``fn(item)`` for each item, each in a task not linked to the caller: one result per item.

        Returns a lazy :class:`TaskStream` of ``Ok(value)`` / ``Exit(reason)``; nothing starts until
        it is iterated. The options (``max_concurrency``, ``ordered``, ``timeout``, ``on_timeout``,
        ``zip_input_on_exit``, ``shutdown``) and their defaults are :class:`StreamOptions`'.
        """
        return _stream(supervisor, iterable, fn, StreamOptions(**options), link=False)

    @staticmethod
    def async_stream(
        supervisor: ServerRef,
        iterable: Iterable[Any] | AsyncIterable[Any],
        fn: Callable[[Any], Awaitable[T]],
        **options: Unpack[StreamKeywords],
    ) -> TaskStream[T]:
        """Like :meth:`async_stream_nolink`, each task also linked to the consuming process.

        A task crash takes down a consumer that does not trap exits; one that traps exits gets
        ``Exit(reason)`` for that item. From a plain script it is :meth:`async_stream_nolink`.
        """
        return _stream(supervisor, iterable, fn, StreamOptions(**options), link=True)

    @staticmethod
    async def children(supervisor: ServerRef) -> list[Pid]:
        """The pids of the running tasks (not those waiting to be restarted)."""
        rows = await DynamicSupervisor.which_children(supervisor)
        return [row.pid for row in rows if isinstance(row.pid, Pid)]

    @staticmethod
    async def terminate_child(supervisor: ServerRef, pid: Pid) -> None:
        """Stop the task ``pid`` per its shutdown. :class:`ChildNotFoundError` if it is not ours."""
        await DynamicSupervisor.terminate_child(supervisor, pid)

    @staticmethod
    async def stop(supervisor: ServerRef, reason: ExitReason = NORMAL, timeout: float = INFINITY) -> None:
        """Stop the supervisor and, all at once, its tasks."""
        await DynamicSupervisor.stop(supervisor, reason, timeout)


async def _async(
    supervisor: ServerRef,
    fn: Callable[..., Awaitable[T]],
    args: tuple[Any, ...],
    shutdown: float | BrutalKill,
    *,
    link_owner: bool,
) -> Task[T]:
    _check_fn(fn)
    owner = current_process()
    handoff = _Handoff(owner, asyncio.get_running_loop())
    spec = ChildSpec(
        id=None,
        start=start_task,
        args=(handoff, fn, args),
        restart=Restart.TEMPORARY,
        shutdown=shutdown,
    )
    try:
        pid = await DynamicSupervisor.start_child(supervisor, spec)
    except BaseException:
        handoff.abandon()  # if the start happened anyway, the task must not run unowned
        raise
    assert pid is not None  # its start function never ignores
    return take_task(owner, handoff, pid, link_owner=link_owner)


def _stream(
    supervisor: ServerRef,
    iterable: Iterable[Any] | AsyncIterable[Any],
    fn: Callable[[Any], Awaitable[T]],
    options: StreamOptions,
    *,
    link: bool,
) -> TaskStream[T]:
    _check_fn(fn)
    return TaskStream(supervisor, iterable, fn, options, link=link)


def _check_fn(fn: object) -> None:
    if not callable(fn):
        raise TypeError(f"expected an async function, got {fn!r}")

"""The exceptions of the supervision library: one root, data in attributes.

Erlang reports most outcomes as ``{error, Reason}`` tuples or by exiting the caller; Python raises.
Each exception here stands for one such outcome and carries its data as attributes, so that
callers ``except`` on the type and read the fields rather than parse messages.

See also: Erlang ``supervisor(3)`` return values, Elixir ``GenServer.call/3`` exits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailman.supervisor._exit_reason import ExitReason

if TYPE_CHECKING:
    from mailman.supervisor._process import Pid

__all__ = [
    "AlreadyPresentError",
    "AlreadyRegisteredError",
    "AlreadyStartedError",
    "CallExitError",
    "CallTimeoutError",
    "CallingSelfError",
    "ChildNotFoundError",
    "ChildRestartingError",
    "ChildRunningError",
    "MaxChildrenError",
    "NoProcessError",
    "NotAProcessError",
    "ProcessExit",
    "StartError",
    "StartIgnored",
    "StreamTimeoutError",
    "SupervisionError",
    "TaskExitError",
    "TaskTimeoutError",
]


class ProcessExit(BaseException):
    """Raise inside a process to end it with ``reason``: Elixir's ``exit(reason)``.

    A ``BaseException`` like ``SystemExit``: an ``except Exception`` in user code does not
    swallow an exit, just as Erlang's ``catch`` of errors does not stop an exit.

    Example::

        raise ProcessExit(Shutdown("rebalanced"))
    """

    def __init__(self, reason: ExitReason) -> None:
        super().__init__(reason)
        self.reason = reason


class SupervisionError(Exception):
    """Root of every error the supervision library raises."""


class NotAProcessError(SupervisionError, RuntimeError):
    """An operation that needs the calling process (``receive``, ``link``...) ran outside one."""


class NoProcessError(SupervisionError, LookupError):
    """No live process is registered under ``name`` (Erlang's ``noproc``)."""

    def __init__(self, name: object) -> None:
        super().__init__(f"no process is alive under {name!r}")
        self.name = name


class CallTimeoutError(SupervisionError, TimeoutError):
    """A ``GenServer.call`` got no reply within ``timeout`` seconds.

    As in OTP the server is unaffected and may still handle the request; its late reply is dropped.
    """

    def __init__(self, server: object, request: object, timeout: float) -> None:
        super().__init__(f"call to {server!r} timed out after {timeout}s: {request!r}")
        self.server = server
        self.request = request
        self.timeout = timeout


class CallExitError(SupervisionError):
    """The server exited with ``reason`` before replying to a call."""

    def __init__(self, server: object, reason: ExitReason) -> None:
        super().__init__(f"{server!r} exited with {reason} during the call")
        self.server = server
        self.reason = reason


class CallingSelfError(SupervisionError):
    """A process called itself: it would wait forever for its own reply (``calling_self``)."""


class StartError(SupervisionError):
    """Starting a process failed with ``reason``: OTP's ``{error, Reason}`` from ``start_link``."""

    def __init__(self, reason: ExitReason) -> None:
        super().__init__(f"failed to start: {reason}")
        self.reason = reason


class StartIgnored(SupervisionError):
    """``init`` returned ``ignore``: no process was started, and that is fine.

    A supervisor keeps such a child's spec with no pid (OTP's ``{ok, undefined}``).
    """

    def __init__(self) -> None:
        super().__init__("init returned ignore")


class AlreadyStartedError(SupervisionError):
    """A process with that name (or child id) is already running: ``{already_started, Pid}``."""

    def __init__(self, pid: Pid) -> None:
        super().__init__(f"already started as {pid}")
        self.pid = pid


class AlreadyRegisteredError(SupervisionError):
    """A unique Registry key is already held by ``pid``: ``{already_registered, Pid}``."""

    def __init__(self, key: object, pid: Pid) -> None:
        super().__init__(f"{key!r} is already registered by {pid}")
        self.key = key
        self.pid = pid


class AlreadyPresentError(SupervisionError):
    """A child spec with that id exists but is not running: ``already_present``."""

    def __init__(self, child_id: object) -> None:
        super().__init__(f"child {child_id!r} is already present (not running); restart_child it")
        self.child_id = child_id


class ChildNotFoundError(SupervisionError, LookupError):
    """The supervisor has no child with that id or pid: ``not_found``."""

    def __init__(self, child: object) -> None:
        super().__init__(f"no child {child!r}")
        self.child = child


class ChildRunningError(SupervisionError):
    """``restart_child`` / ``delete_child`` of a child that is running: ``running``."""

    def __init__(self, child_id: object) -> None:
        super().__init__(f"child {child_id!r} is running; terminate_child it first")
        self.child_id = child_id


class ChildRestartingError(SupervisionError):
    """The child is in a failing restart loop: ``restarting``."""

    def __init__(self, child_id: object) -> None:
        super().__init__(f"child {child_id!r} is being restarted")
        self.child_id = child_id


class MaxChildrenError(SupervisionError):
    """A DynamicSupervisor already holds ``max_children`` children: ``max_children``."""

    def __init__(self, max_children: int) -> None:
        super().__init__(f"the supervisor already has max_children={max_children} children")
        self.max_children = max_children


class StreamTimeoutError(SupervisionError, TimeoutError):
    """An ``async_stream`` task ran past ``timeout`` with ``on_timeout="exit"``.

    Elixir exits the caller with ``{timeout, {Task.Supervised, :stream, [Timeout]}}``.
    """

    def __init__(self, timeout: float) -> None:
        super().__init__(f"a stream task did not finish within {timeout}s")
        self.timeout = timeout


class TaskExitError(SupervisionError):
    """A task ended with ``reason`` instead of replying: what ``Task.await/2`` exits the caller with.

    ``reason`` is the task's exit reason: :class:`Crash` if it raised, the reason it gave to
    :class:`ProcessExit`, ``NOPROC`` if it was already gone and its outcome already taken.
    """

    def __init__(self, task: object, reason: ExitReason) -> None:
        super().__init__(f"task {task!r} exited with {reason}")
        self.task = task
        self.reason = reason


class TaskTimeoutError(SupervisionError, TimeoutError):
    """A task did not reply within ``timeout`` seconds of ``await_result``.

    Elixir exits the caller with ``{timeout, {Task, :await, [Task, Timeout]}}``; here the caller gets
    this exception and the task, like an OTP task whose awaiting caller died, is left running.
    """

    def __init__(self, task: object, timeout: float) -> None:
        super().__init__(f"task {task!r} did not reply within {timeout}s")
        self.task = task
        self.timeout = timeout

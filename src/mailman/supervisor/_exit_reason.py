"""Exit reasons: why a process ended, as OTP names them.

In Erlang every process ends with a *reason*, any term. A handful of them carry meaning to
the runtime and to supervisors:

- ``normal``: the process finished its work. Links ignore it (unless trapping exits).
- ``shutdown`` and ``{shutdown, Term}``: the process was asked to stop. "Expected": not logged
  as an error, and a ``transient`` child is not restarted.
- ``kill``: a *signal*, never a reason a process ends with. It cannot be trapped; the process
  ends with ``killed``, and that is what its links and monitors see.
- anything else is abnormal: a crash.

Here each is a small frozen dataclass, so that ``match`` reads like Erlang's ``case``::

    match reason:
        case Normal() | Shutdown():
            ...                       # expected
        case Crash(exception=exc):
            ...                       # the process raised exc

Python deviations: a raised exception becomes :class:`Crash` (Erlang's ``{Reason, Stack}``:
the traceback is on ``exception.__traceback__``); any other term is wrapped in
:class:`Abnormal`.

See also: Erlang ``erlang:exit/2``, Elixir "Exit reasons and restarts" in ``Supervisor``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "KILL",
    "KILLED",
    "NOPROC",
    "NORMAL",
    "SHUTDOWN",
    "TIMEOUT",
    "Abnormal",
    "Crash",
    "ExitReason",
    "Kill",
    "Killed",
    "NoProc",
    "Normal",
    "Shutdown",
    "Timeout",
    "is_expected",
]


@dataclass(frozen=True, slots=True)
class ExitReason:
    """Base of every exit reason. Use the subclasses; compare with ``==`` or ``match``."""


@dataclass(frozen=True, slots=True)
class Normal(ExitReason):
    """``normal``: the process finished. Ignored by linked processes that do not trap exits."""

    def __str__(self) -> str:
        return "normal"


@dataclass(frozen=True, slots=True)
class Shutdown(ExitReason):
    """``shutdown`` (``detail`` is None) or ``{shutdown, detail}``: the process was told to stop."""

    detail: object = None

    def __str__(self) -> str:
        return "shutdown" if self.detail is None else f"{{shutdown, {self.detail!r}}}"


@dataclass(frozen=True, slots=True)
class Kill(ExitReason):
    """``kill``: the untrappable signal. A process it reaches ends with :class:`Killed`."""

    def __str__(self) -> str:
        return "kill"


@dataclass(frozen=True, slots=True)
class Killed(ExitReason):
    """``killed``: the reason of a process ended by ``kill`` (or cancelled from outside)."""

    def __str__(self) -> str:
        return "killed"


@dataclass(frozen=True, slots=True)
class NoProc(ExitReason):
    """``noproc``: the reason a monitor reports for a process that was already gone."""

    def __str__(self) -> str:
        return "noproc"


@dataclass(frozen=True, slots=True)
class Timeout(ExitReason):
    """``timeout``: the reason of a task killed for running past its deadline."""

    def __str__(self) -> str:
        return "timeout"


@dataclass(frozen=True, slots=True)
class Crash(ExitReason):
    """An abnormal exit caused by an exception the process did not handle."""

    exception: BaseException

    def __str__(self) -> str:
        return f"{{{self.exception!r}, stacktrace}}"


@dataclass(frozen=True, slots=True)
class Abnormal(ExitReason):
    """An abnormal exit with an arbitrary term, like Erlang's ``exit(Pid, died)``."""

    term: object

    def __str__(self) -> str:
        return repr(self.term)


NORMAL = Normal()
SHUTDOWN = Shutdown()
KILL = Kill()
KILLED = Killed()
NOPROC = NoProc()
TIMEOUT = Timeout()


def is_expected(reason: ExitReason) -> bool:
    """True for ``normal``, ``shutdown`` and ``{shutdown, _}``: the reasons OTP does not log as errors
    and after which a ``transient`` child is not restarted."""
    return isinstance(reason, Normal | Shutdown)

"""Starting one child from its spec, and turning every way that can fail into an exit reason.

OTP's ``do_start_child_i``: the start function returns ``{ok, Pid}``, ``ignore`` or
``{error, Reason}``; anything else, or an exception, is an error too. Here it returns a pid,
raises :class:`StartIgnored`, or raises; :func:`start_spec` folds all of that into a pid,
None (ignored) or a :class:`ChildStartFailure` carrying the reason.
"""

from __future__ import annotations

from typing import Any, TypeVar

from mailman.supervisor._child_spec import ChildSpec
from mailman.supervisor._exceptions import (
    AlreadyStartedError,
    ProcessExit,
    StartError,
    StartIgnored,
)
from mailman.supervisor._exit_reason import Abnormal, Crash, ExitReason
from mailman.supervisor._process import Pid

T = TypeVar("T")

__all__ = ["ChildStartFailure", "start_spec"]


class ChildStartFailure(Exception):
    """A child's start failed with ``reason``; ``error`` is what to raise to an API caller."""

    def __init__(self, reason: ExitReason, error: Exception) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


async def start_spec(spec: ChildSpec, extra_args: tuple[Any, ...] = ()) -> Pid | None:
    """Run ``spec.start(*extra_args, *spec.args)``: the pid, None if ignored, or raise."""
    try:
        pid = await spec.start(*extra_args, *spec.args)
    except StartIgnored:
        return None
    except StartError as exc:
        raise ChildStartFailure(exc.reason, exc) from exc
    except AlreadyStartedError as exc:
        raise ChildStartFailure(Abnormal(("already_started", exc.pid)), exc) from exc
    except ProcessExit as exc:
        raise ChildStartFailure(exc.reason, StartError(exc.reason)) from exc
    except Exception as exc:
        reason = Crash(exc)
        raise ChildStartFailure(reason, StartError(reason)) from exc
    if not isinstance(pid, Pid):
        reason = Abnormal(("bad_return_value", pid))
        raise ChildStartFailure(reason, StartError(reason))
    return pid


class FailedReply:
    """A supervisor's answer to a request that failed: the client raises ``error``.

    Errors travel back as data (as OTP's ``{error, Reason}`` replies do) so that the supervisor
    itself never raises out of ``handle_call``; :func:`unwrap_reply` raises them in the caller.
    """

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def unwrap_reply(result: T | FailedReply) -> T:
    """``result``, or raise the error a :class:`FailedReply` carries."""
    if isinstance(result, FailedReply):
        raise result.error
    return result

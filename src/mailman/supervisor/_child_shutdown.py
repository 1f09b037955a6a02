"""Stopping children the way OTP's ``supervisor:shutdown/2`` does.

A child is stopped through a *monitor*, not its link (a child that unlinked itself cannot hang
its supervisor): monitor, unlink, then

- ``BRUTAL_KILL``: send ``kill``; the child ends ``killed``, no cleanup runs;
- a timeout: send ``shutdown`` and wait that long for the DOWN; then send ``kill``;
- ``INFINITY``: send ``shutdown`` and wait as long as it takes (the default for supervisors).

If the child had already died, its EXIT message is in the supervisor's mailbox: that is the
reason reported. Many children at once (dynamic supervisors) are signalled together, with one
timer per distinct shutdown value, as ``terminate_dynamic_children`` does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from mailman.supervisor._child_spec import BrutalKill
from mailman.supervisor._exit_reason import KILL, KILLED, SHUTDOWN, ExitReason, Normal, Shutdown
from mailman.supervisor._process import (
    DownMessage,
    ExitMessage,
    Pid,
    Process,
    Ref,
    deliver_exit_signal,
    monitor,
    unlink,
)

__all__ = ["is_clean_shutdown", "shutdown_child", "shutdown_children"]


def _start_shutdown(me: Process, pid: Pid) -> tuple[Ref, ExitReason | None]:
    ref = monitor(pid)
    unlink(pid)
    found, message = me.mailbox.take(lambda m: isinstance(m, ExitMessage) and m.pid == pid)
    return ref, (message.reason if found else None)


def _is_down(ref: Ref) -> Callable[[Any], bool]:
    return lambda m: isinstance(m, DownMessage) and m.ref is ref


async def shutdown_child(me: Process, pid: Pid, shutdown: float | BrutalKill) -> ExitReason:
    """Stop one child per its shutdown value and return the reason it ended with."""
    ref, already = _start_shutdown(me, pid)
    if already is not None:
        await me.mailbox.receive(_is_down(ref))
        return already
    if isinstance(shutdown, BrutalKill):
        deliver_exit_signal(pid._process, me.pid, KILL)
        down: DownMessage = await me.mailbox.receive(_is_down(ref))
        return down.reason
    deliver_exit_signal(pid._process, me.pid, SHUTDOWN)
    try:
        down = await me.mailbox.receive(
            _is_down(ref),
            None if shutdown == float("inf") else shutdown,
        )
    except TimeoutError:
        deliver_exit_signal(pid._process, me.pid, KILL)
        down = await me.mailbox.receive(_is_down(ref))
    return down.reason


async def shutdown_children(
    me: Process, children: Sequence[tuple[Pid, float | BrutalKill]]
) -> dict[Pid, ExitReason]:
    """Stop many children at once: all signalled together, stragglers killed per their timeout."""
    reasons: dict[Pid, ExitReason] = {}
    waiting: dict[Ref, Pid] = {}
    deadlines: dict[float, list[Pid]] = {}
    for pid, shutdown in children:
        ref, already = _start_shutdown(me, pid)
        if already is not None:
            reasons[pid] = already
            waiting[ref] = pid  # its NOPROC DOWN is in the mailbox: drain it below
            continue
        waiting[ref] = pid
        if isinstance(shutdown, BrutalKill):
            deliver_exit_signal(pid._process, me.pid, KILL)
        else:
            deliver_exit_signal(pid._process, me.pid, SHUTDOWN)
            if shutdown != float("inf"):
                deadlines.setdefault(shutdown, []).append(pid)
    loop = asyncio.get_running_loop()
    start = loop.time()
    timers = sorted(deadlines)
    while waiting:
        timeout = None
        while timers and timeout is None:
            remaining = start + timers[0] - loop.time()
            if remaining > 0:
                timeout = remaining
            else:
                for pid in deadlines.pop(timers.pop(0)):
                    deliver_exit_signal(pid._process, me.pid, KILL)  # no-op if already gone
        try:
            down: DownMessage = await me.mailbox.receive(
                lambda m: isinstance(m, DownMessage) and m.ref in waiting, timeout
            )
        except TimeoutError:
            continue
        pid = waiting.pop(down.ref)
        reasons.setdefault(pid, down.reason)
    return reasons


def is_clean_shutdown(reason: ExitReason, shutdown: float | BrutalKill, permanent: bool) -> bool:
    """Did the child end the way its shutdown asked? (Otherwise OTP reports ``shutdown_error``.)"""
    if isinstance(shutdown, BrutalKill):
        return reason == KILLED
    if reason == SHUTDOWN:
        return True
    return not permanent and isinstance(reason, Normal | Shutdown)

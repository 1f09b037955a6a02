"""Scheduler: boot recovery ("start lost children"), takeovers, and letters due later.

A GenServer started after the dispatcher. At start (in ``handle_continue``, so that the tree's
start is not held up) it resumes every letter a previous run left ``sending``: their services were
lost with that run, and their deliveries map in Postgres says where each one stopped. Then, every
``poll_interval`` seconds (and at once when :meth:`Scheduler.wake` is cast), it starts the letters
whose ``send_at`` has come; a letter due while the daemon was down is sent at the first tick after
it starts again (catching up).

With several daemons (nodes) on one database, "left sending" means: sending, and no other node
holds a live lease on it (see :func:`letters.letters_to_take_over`). Boot recovery skips the
letters other nodes are sending, and every tick also looks for letters whose holder has died (its
lease expired unrenewed) or stopped cleanly without finishing (it released the lease, as a daemon
shutting down does), and starts them here: the takeover. The letter's service then recovers what
the dead node left in flight. Several nodes may tick at once; the lease lets one of them win, and
the others are told :class:`~mailman.services.errors.LetterLeasedError` and leave it.

Example::

    await Scheduler.start_link(SchedulerArgs(context=context), name="mailman.scheduler")
    Scheduler.wake("mailman.scheduler")     # a letter was just scheduled
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog

from mailman.services.delivery import letter_commands
from mailman.services.delivery.context import DeliveryContext
from mailman.services.delivery.letter_delivery_dispatcher import LetterDeliveryDispatcher
from mailman.services.store.models import Letter
from mailman.services.store.queries import letters
from mailman.services.store.repo import Repo
from mailman.supervisor import (
    GenServer,
    Init,
    NoReply,
    ServerRef,
    TimerRef,
    cancel_timer,
    self_pid,
    send_after,
)

__all__ = ["Scheduler", "SchedulerArgs"]

_log = structlog.get_logger("mailman.scheduler")


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerArgs:
    context: DeliveryContext
    poll_interval: float = 1.0


class _Tick:
    __slots__ = ()


class _Wake:
    __slots__ = ()


@dataclass(slots=True)
class _State:
    args: SchedulerArgs
    timer: TimerRef | None = None


class Scheduler(GenServer[_State]):
    """Resumes lost letters at boot; sends scheduled letters when due."""

    @staticmethod
    def wake(server: ServerRef) -> None:
        """Look for due letters now rather than at the next tick."""
        GenServer.cast(server, _Wake())

    async def init(self, arg: SchedulerArgs) -> Init[_State]:
        return Init(_State(args=arg), continue_with="boot")

    async def handle_continue(self, arg: Any, state: _State) -> NoReply[_State]:
        taken = await self._take_over(state)
        if taken:
            _log.info("resumed letters left sending", letters=[letter.id for letter in taken])
        await self._send_due(state)
        return NoReply(state)

    async def handle_info(self, message: Any, state: _State) -> NoReply[_State]:
        if isinstance(message, _Tick):
            state.timer = None
            taken = await self._take_over(state)
            if taken:
                _log.info(
                    "took over letters",
                    letters=[letter.id for letter in taken],
                    from_nodes=sorted({letter.owner_node or "nobody" for letter in taken}),
                )
            await self._send_due(state)
            return NoReply(state)
        return await super().handle_info(message, state)  # type: ignore[return-value]

    async def handle_cast(self, request: Any, state: _State) -> NoReply[_State]:
        if isinstance(request, _Wake):
            if state.timer is not None:
                cancel_timer(state.timer)
                state.timer = None
            await self._send_due(state)
            return NoReply(state)
        raise ValueError(f"unexpected cast {request!r}")

    async def _take_over(self, state: _State) -> list[Letter]:
        """Start here every letter sending that nobody else drives; those started (as they were)."""
        context = state.args.context
        pool = await Repo.pool(context.repo)
        taken = []
        for letter in await letters.letters_to_take_over(pool, context.settings.node_name):
            if LetterDeliveryDispatcher.running(context, letter.id) is not None:
                continue  # this node is sending it
            if await letter_commands.deliver_here(context, letter.id) is None:
                taken.append(letter)  # else another node took it first
        return taken

    async def _send_due(self, state: _State) -> None:
        context = state.args.context
        pool = await Repo.pool(context.repo)
        for letter in await letters.letters_due(pool):
            await letter_commands.send_letter(context, letter.id)
            _log.info("scheduled letter due", letter_id=letter.id, send_at=str(letter.send_at))
        state.timer = send_after(self_pid(), _Tick(), state.args.poll_interval)

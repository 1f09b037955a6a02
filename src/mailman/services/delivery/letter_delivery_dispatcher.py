"""LetterDeliveryDispatcher: starts (or joins) the service that sends a letter.

A :class:`DynamicSupervisor` with one child per letter being sent. Each child is a small
:class:`LetterSupervisor` (one_for_one) around the letter's :class:`LetterDeliveryService`:

- the letter's restarts are counted by its own supervisor, not by the dispatcher, so a letter that
  crash-loops never trips the dispatcher's restart intensity and never disturbs other letters;
- the service is a *significant* transient child and the LetterSupervisor shuts itself down
  (``auto_shutdown=ANY_SIGNIFICANT``) when the service ends normally: sent, paused, cancelled or
  failed. The LetterSupervisor itself is a temporary child of the dispatcher.

Sending a letter that is already sending *joins* it: the service is found in the letters Registry
by letter id, and no second service starts (a race between two starts ends the same way, since
the Registry holds one name per letter).

The Registry is one daemon's; across daemons sharing the database, the letter's lease decides.
:meth:`LetterDeliveryDispatcher.deliver` takes it before it starts anything, so that a letter
another node is sending gets a clear answer (:class:`~mailman.services.errors.LetterLeasedError`,
naming that node) and no service here. The service takes the same lease again as it loads: the
lease is this node's, so that changes nothing but its expiry (and a restarted service takes it
back without waiting). Two nodes racing for a letter are settled in Postgres: one gets the lease.

Deviation from the forum design this grew from (a DynamicSupervisor of services directly): the
per-letter supervisor layer is what keeps one letter's crashes from counting against all of them.

Example::

    pid = await LetterDeliveryDispatcher.deliver(context, 42)   # the service, or None if done
"""

from __future__ import annotations

import dataclasses

from mailman.services.delivery.context import DeliveryContext
from mailman.services.delivery.letter_delivery_service import LetterDeliveryService, ServiceArgs
from mailman.services.store.queries import letters
from mailman.services.store.repo import Repo
from mailman.supervisor import (
    AlreadyStartedError,
    AutoShutdown,
    CallExitError,
    CallTimeoutError,
    DynamicSupervisor,
    Name,
    NoProcessError,
    Pid,
    Registry,
    Restart,
    StartError,
    Strategy,
    Supervisor,
    SupervisorSpec,
    await_exit,
    whereis,
)

__all__ = ["LetterDeliveryDispatcher", "LetterSupervisor"]


class LetterSupervisor(Supervisor):
    """One letter's own supervisor: restarts its service, and counts only its restarts."""

    def init(self, arg: ServiceArgs) -> SupervisorSpec:
        context = arg.context
        service = dataclasses.replace(
            LetterDeliveryService.child_spec(
                arg, id="service", name=Registry.via(context.letters, arg.letter_id)
            ),
            significant=True,
            # Long enough for the messages already handed to the relay to finish and be recorded:
            # killed earlier, their rows would be resent (or held uncertain) after a clean stop.
            shutdown=context.settings.stop_budget,
        )
        return SupervisorSpec(
            [service],
            strategy=Strategy.ONE_FOR_ONE,
            # The service itself fails the letter once it has crashed max_letter_restarts times
            # (it counts in Postgres, across daemon restarts too); this bound is only a backstop.
            max_restarts=context.settings.max_letter_restarts + 1,
            max_seconds=3600,
            auto_shutdown=AutoShutdown.ANY_SIGNIFICANT,
        )


class LetterDeliveryDispatcher(DynamicSupervisor):
    """Supervises one LetterSupervisor per letter being sent."""

    @staticmethod
    async def deliver(
        context: DeliveryContext, letter_id: int, recipients: tuple[int, ...] | None = None
    ) -> Pid | None:
        """Start sending ``letter_id`` (or join the running send); the service's pid.

        None when the service had nothing to do and already ended (the letter was sent, paused,
        cancelled or failed). Raises :class:`~mailman.services.errors.LetterLeasedError` when another
        node holds the letter's lease: that node is sending it, and nothing was started here.
        """
        via = Registry.via(context.letters, letter_id)
        running = whereis(via) or await _restarting_service(context, letter_id)
        if running is not None:
            if await _joins(running):
                return running
            # It is ending (it settled the letter, or stops as asked): a send or retry that came
            # meanwhile needs a service of its own, which starts once the name is free.
            await await_exit(running)
        settings = context.settings
        pool = await Repo.pool(context.repo)
        await letters.acquire_lease(pool, letter_id, node=settings.node_name, ttl=settings.lease_duration)
        args = ServiceArgs(letter_id=letter_id, context=context, recipients=recipients)
        spec = LetterSupervisor.child_spec(
            args,
            id=("letter", letter_id),
            name=_supervisor_name(context, letter_id),
            restart=Restart.TEMPORARY,
        )
        try:
            await DynamicSupervisor.start_child(context.dispatcher, spec)
        except (StartError, AlreadyStartedError):
            # Lost a race with another start (its LetterSupervisor, or its service, has the name).
            running = whereis(via) or await _restarting_service(context, letter_id)
            if running is None:
                raise
            return running
        return whereis(via)

    @staticmethod
    def running(context: DeliveryContext, letter_id: int) -> Pid | None:
        """The service sending ``letter_id``, if one is running."""
        return whereis(Registry.via(context.letters, letter_id))


async def _joins(service: Pid) -> bool:
    """Whether ``service`` goes on sending (see :meth:`LetterDeliveryService.join`)."""
    try:
        return await LetterDeliveryService.join(service)
    except (NoProcessError, CallExitError):
        return False
    except CallTimeoutError:
        return True  # busy for a minute (a long load): it is sending, not stopping


def _supervisor_name(context: DeliveryContext, letter_id: int) -> Name:
    """The letter's LetterSupervisor in the letters Registry: one per letter on a node, like its service."""
    return Registry.via(context.letters, ("supervisor", letter_id))


async def _restarting_service(context: DeliveryContext, letter_id: int) -> Pid | None:
    """The service of a LetterSupervisor that is restarting it, once restarted; None if there is none.

    Between a crash of the service and its restart the service's name is free, but its supervisor
    runs: a send then must wait for the restart instead of starting a second LetterSupervisor. The
    supervisor answers ``which_children`` only once it has handled the exit, restart included.
    """
    supervisor = whereis(_supervisor_name(context, letter_id))
    if supervisor is None:
        return None
    try:
        children = await Supervisor.which_children(supervisor)
    except (NoProcessError, CallExitError):
        return None  # it shut down meanwhile (the letter was settled, or failed)
    return next((child.pid for child in children if isinstance(child.pid, Pid)), None)

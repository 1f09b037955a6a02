"""The letter commands: send, status, pause, resume, cancel, retry failed.

Plain async functions over the running tree (the RPC layer and the tests call them). Each reads
the letter's status first and does what that status allows; anything else is answered, not
raised: sending a letter that was already sent changes nothing and says so.

With several daemons (nodes) on one database, a letter is sent by the node holding its lease
(``"node"`` in its status). Sending, resuming or retrying a letter another node is sending starts
nothing here and says which node sends it. Pausing or cancelling one works from any node: here
the status changes at once, and the node sending the letter sees it at its next claim or lease
renewal (within a third of ``lease_ttl``), lets its recipients in flight finish and stops.

Example::

    await send_letter(context, 42)                 # {"letter_id": 42, "state": "sending", ...}
    await letter_status(context, 42)               # counts per state
"""

from __future__ import annotations

from typing import Any

from mailman.services.delivery.context import DeliveryContext
from mailman.services.delivery.letter_delivery_dispatcher import LetterDeliveryDispatcher
from mailman.services.delivery.letter_delivery_service import LetterDeliveryService
from mailman.services.errors import LetterLeasedError
from mailman.services.store.database import transaction
from mailman.services.store.models import LetterStatus, UncertainPolicy
from mailman.services.store.queries import deliveries, letters
from mailman.services.store.repo import Repo
from mailman.supervisor import CallExitError, NoProcessError, await_exit

__all__ = [
    "cancel_letter",
    "deliver_here",
    "letter_status",
    "pause_letter",
    "resume_letter",
    "retry_failed",
    "send_letter",
]

_DONE = (LetterStatus.SENT, LetterStatus.CANCELLED, LetterStatus.FAILED)


async def send_letter(
    context: DeliveryContext, letter_id: int, recipients: tuple[int, ...] | None = None
) -> dict[str, Any]:
    """Start sending the letter to every active subscriber (or to ``recipients``), or join its send.

    The audience is fixed when the send starts; a letter that is sending, sent, cancelled, failed or
    paused is not sent again, and the answer says why.
    """
    pool = await Repo.pool(context.repo)
    letter = await letters.get_letter(pool, letter_id)
    match letter.status:
        case LetterStatus.DRAFT | LetterStatus.SCHEDULED:
            # Fix the audience here, in one transaction, so that the answer is definite: the letter
            # is sending, to this many recipients (the service would do it too, if started alone).
            audience = await deliveries.fix_audience(pool, letter_id, subscription_ids=recipients)
            elsewhere = await deliver_here(context, letter_id)
            if audience.fixed_now:
                message = f"sending started to {audience.size} recipients"
                if elsewhere is not None:  # another node started it at the same time, and won
                    message += f", by node {elsewhere}"
            elif elsewhere is not None:
                message = f"already sending: the letter is being sent by node {elsewhere}"
            else:
                message = f"already {audience.status}: joined"
        case LetterStatus.SENDING:
            joined = LetterDeliveryDispatcher.running(context, letter_id) is not None
            elsewhere = await deliver_here(context, letter_id)
            if elsewhere is not None:
                message = f"already sending: the letter is being sent by node {elsewhere}"
            else:
                message = "already sending: joined the running send" if joined else "resumed the send"
        case LetterStatus.PAUSED:
            message = "the letter is paused: resume it to go on"
        case _:
            message = f"the letter is already {letter.status}: nothing was sent"
    return {**await letter_status(context, letter_id), "message": message}


async def letter_status(context: DeliveryContext, letter_id: int) -> dict[str, Any]:
    """The letter's state and its deliveries counted by state.

    ``{"letter_id", "state", "counts": {"pending", "sending", "delivered", "failed", "skipped"},
    "uncertain", "audience", "restarts", "failure_reason", "running", "node", "lease_expires_at"}``.

    ``running`` says whether this daemon is sending the letter. ``node`` is the node holding the
    letter's lease (the one sending it), and ``lease_expires_at`` (ISO 8601) when that lease ends
    unless renewed: past it, the node has stopped renewing (it died, or lost the database) and
    another node takes the letter over. Both are null when no node holds it.
    """
    pool = await Repo.pool(context.repo)
    letter = await letters.get_letter(pool, letter_id)
    counts = await deliveries.count_deliveries(pool, letter_id)
    return {
        "letter_id": letter_id,
        "state": letter.status.value,
        "counts": {
            "pending": counts.pending,
            "sending": counts.sending,
            "delivered": counts.delivered,
            "failed": counts.failed,
            "skipped": counts.skipped,
        },
        "uncertain": counts.uncertain,
        "audience": counts.total,
        "restarts": int(letter.mail_order.get("restarts", 0)),
        "failure_reason": letter.mail_order.get("failure_reason"),
        "running": LetterDeliveryDispatcher.running(context, letter_id) is not None,
        "node": letter.owner_node,
        "lease_expires_at": None if letter.lease_expires_at is None else letter.lease_expires_at.isoformat(),
    }


async def pause_letter(context: DeliveryContext, letter_id: int) -> dict[str, Any]:
    """Stop claiming recipients; those in flight finish; the letter becomes ``paused``."""
    await _stop_as(context, letter_id, LetterStatus.PAUSED)
    return await letter_status(context, letter_id)


async def cancel_letter(context: DeliveryContext, letter_id: int) -> dict[str, Any]:
    """As pause, but for good: the letter becomes ``cancelled``; pending recipients stay unsent."""
    await _stop_as(context, letter_id, LetterStatus.CANCELLED)
    return await letter_status(context, letter_id)


async def resume_letter(context: DeliveryContext, letter_id: int) -> dict[str, Any]:
    """Go on with a paused letter, from where it stopped."""
    pool = await Repo.pool(context.repo)
    if await letters.set_letter_status(pool, letter_id, LetterStatus.SENDING, expected=LetterStatus.PAUSED):
        elsewhere = await deliver_here(context, letter_id)
        # Another node may have been quicker: its Scheduler takes over a letter sending that nobody holds.
        message = "resumed" if elsewhere is None else f"resumed: the letter is being sent by node {elsewhere}"
    else:
        message = f"the letter is {(await letters.get_letter(pool, letter_id)).status}, not paused"
    return {**await letter_status(context, letter_id), "message": message}


async def retry_failed(context: DeliveryContext, letter_id: int) -> dict[str, Any]:
    """Send again to the recipients that failed (dead letters), with fresh attempts.

    One transaction under the letter's lock (the lock its sender settles under, see
    :meth:`LetterDeliveryService._settle`), so a retry never lands between the sender's count and
    its marking the letter sent: either the sender sees the retried rows pending and goes on, or
    the retry finds the letter sent and starts it again. What each status allows:

    - ``sending``: the failed rows are pending again; the node sending the letter picks them up.
    - ``paused``: the same; they are sent once the letter is resumed.
    - ``sent`` or ``failed``: the failed rows are pending again and the letter sending (a letter
      failed by its crash limit goes on with its unfinished rows too, even if none failed; its
      restart count starts again), started here or on the node that takes it.
    - ``cancelled``, ``draft``, ``scheduled``: refused, nothing changes (the answer says why).

    The letter's bookkeeping (``mail_order``) is written only where no node holds its lease.
    """
    pool = await Repo.pool(context.repo)
    restarted = False
    async with transaction(pool) as connection:
        letter, leased = await letters.lock_letter(connection, letter_id)
        retried = 0
        match letter.status:
            case LetterStatus.SENDING | LetterStatus.PAUSED:
                retried = await deliveries.retry_failed(connection, letter_id)
                message = f"{retried} failed recipients queued again"
                if letter.status is LetterStatus.PAUSED:
                    message += ": they are sent when the letter is resumed"
            case LetterStatus.SENT | LetterStatus.FAILED if not leased:
                retried = await deliveries.retry_failed(connection, letter_id)
                counts = await deliveries.count_deliveries(connection, letter_id)
                policy = context.settings.uncertain_policy or letter.uncertain_policy
                # Under resend, the rows a crash left uncertain are sent again by the next sender.
                resent = counts.uncertain if policy == UncertainPolicy.RESEND else 0
                if retried or (letter.status is LetterStatus.FAILED and counts.unfinished + resent):
                    await letters.set_letter_status(
                        connection, letter_id, LetterStatus.SENDING, expected=letter.status
                    )
                    await letters.update_mail_order(
                        connection, letter_id, {"restarts": 0, "failure_reason": None}
                    )
                    restarted = True
                    message = f"{retried} failed recipients queued again: the letter is sending"
                else:
                    message = f"the letter is {letter.status} and no recipient failed: nothing to retry"
            case LetterStatus.CANCELLED:
                message = "the letter is cancelled: its recipients are not sent to again"
            case _:
                message = f"the letter is {letter.status}: nothing was sent yet, so nothing to retry"
    if restarted or (retried and letter.status is LetterStatus.SENDING):
        elsewhere = await deliver_here(context, letter_id)  # this node, or the one sending it
        if elsewhere is not None:
            message += f" (by node {elsewhere})"
    return {**await letter_status(context, letter_id), "retried": retried, "message": message}


async def deliver_here(context: DeliveryContext, letter_id: int) -> str | None:
    """Start or join the letter's send on this node: None, or the node sending it if another one is."""
    try:
        await LetterDeliveryDispatcher.deliver(context, letter_id)
    except LetterLeasedError as error:
        return error.node
    return None


async def _stop_as(context: DeliveryContext, letter_id: int, status: LetterStatus) -> None:
    service = LetterDeliveryDispatcher.running(context, letter_id)
    if service is not None:
        try:
            if status is LetterStatus.PAUSED:
                stopped = await LetterDeliveryService.pause(service)
            else:
                stopped = await LetterDeliveryService.cancel(service)
        except (NoProcessError, CallExitError):
            pass  # it ended meanwhile: settle it in Postgres below
        else:
            # The reply comes before the service has stopped (it still runs terminate and holds
            # its name in the Registry): wait for its end, so that the answer says it is not
            # running and a resume right after starts a new service instead of joining this one.
            await await_exit(service)
            if stopped is not None:
                return
            # It had just lost the letter to another node: settle it in Postgres below, and
            # that node stops as asked.
    # Not sent here (or no longer): if another node is sending it, that node sees the new status
    # at its next claim or lease renewal and stops; its recipients in flight finish there.
    pool = await Repo.pool(context.repo)
    allowed = [LetterStatus.SENDING, LetterStatus.PAUSED]
    if status is LetterStatus.CANCELLED:
        allowed += [LetterStatus.DRAFT, LetterStatus.SCHEDULED]
    await letters.set_letter_status(pool, letter_id, status, expected=allowed)

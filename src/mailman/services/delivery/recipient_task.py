"""The recipient task: everything that happens to one recipient of one letter, once.

Each claimed recipient runs as a task process under the ``MailmanSupervisor`` TaskSupervisor
(through ``async_stream_nolink``), so a crash in one recipient's send is that recipient's
``Exit`` result, never the letter's. The task

1. applies the rules: a subscription that is no longer active (unsubscribed, bounced,
   complained) is skipped, with the reason;
2. personalises the letter's pre-rendered message (one substitution, not a MIME build);
3. sends it through the shared SMTP pool (connections reused, rate-limited), through a
   :class:`~mailman.services.smtp.pool.SendGate` that lets the letter take the message back until its
   SMTP transaction starts;
4. decides, with :class:`RetryPolicy`, what the outcome means: delivered, retry later, failed
   (dead-lettered), or a fault of the relay that the circuit breaker must hear about.

The gate, and what it promises:

- The letter stops (pause, cancel, shutdown): ``withdrawn`` (the driver's drain event) is set, and a
  task still waiting for its turn (a connection slot, a rate token, a connection being opened) ends
  at once with its recipient *released*: pending again, the attempt given back. Only the tasks whose
  transaction has started keep the stop waiting, so a graceful stop at 1 message a second takes as
  long as one SMTP exchange, not as long as the queue of tokens.
- The subscription is checked at send time (DESIGN section 4): its status comes with the claim, and
  when the recipient's turn comes more than ``recheck_after`` seconds after the claim (a low rate, a
  slow relay), the gate reads it again right before ``MAIL FROM``. An unsubscribe, bounce or
  complaint therefore stops a message that had not started within ``recheck_after`` seconds.

It returns a :class:`RecipientVerdict`; the letter's service writes verdicts to Postgres in batches
(the delivery row and the NewsletterEmail row in one statement).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

from mailman.services.delivery.retry_policy import RecipientVerdict, RetryPolicy
from mailman.services.errors import DatabaseError
from mailman.services.smtp.message import LetterTemplate, RecipientError
from mailman.services.smtp.outcome import Withdrawn
from mailman.services.smtp.pool import SmtpPool
from mailman.services.store.database import Executor
from mailman.services.store.models import ClaimedRecipient, DeliveryOutcome, SubscriptionStatus
from mailman.services.store.queries import subscriptions

__all__ = ["RecipientTask"]

_NEVER = asyncio.Event()
"""The ``withdrawn`` of a task nobody can stop early (never set)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RecipientTask:
    """Sends one letter to one recipient at a time; one instance serves a whole letter."""

    letter_id: int
    template: LetterTemplate
    smtp: SmtpPool
    policy: RetryPolicy
    rng: random.Random
    hold_uncertain: bool = False
    """The letter's ``hold`` policy: an unknowable outcome is held as uncertain, never resent."""
    withdrawn: asyncio.Event = _NEVER
    """Set when the letter stops: recipients still waiting for their turn are given back unsent."""
    database: Executor | None = None
    """Where the subscription is read again when a recipient's turn comes late; None: never read."""
    recheck_after: float = 2.0
    """Seconds after its claim from which a recipient's subscription is read again before sending."""

    async def __call__(self, recipient: ClaimedRecipient) -> RecipientVerdict:
        claim = recipient.claim
        if recipient.status is not SubscriptionStatus.ACTIVE:
            return RecipientVerdict(
                outcome=DeliveryOutcome.skipped(claim, f"subscription {recipient.status}")
            )
        try:
            message = self.template.personalize(
                email=recipient.email,
                name=recipient.name,
                subscription_id=claim.subscription_id,
                letter_id=self.letter_id,
                unsubscribe_token=recipient.unsubscribe_token,
            )
        except RecipientError as error:
            return RecipientVerdict(outcome=DeliveryOutcome.failed(claim, f"cannot address: {error}"))
        gate = _RecipientGate(self, recipient)
        result = await self.smtp.send(
            self.template.from_address, recipient.email, message, key=self.letter_id, gate=gate
        )
        if isinstance(result, Withdrawn) and gate.inactive is not None:
            return RecipientVerdict(outcome=DeliveryOutcome.skipped(claim, f"subscription {gate.inactive}"))
        message_id = self.template.message_id(letter_id=self.letter_id, subscription_id=claim.subscription_id)
        return self.policy.decide(claim, result, message_id, self.rng, hold_uncertain=self.hold_uncertain)


class _RecipientGate:
    """One send's :class:`~mailman.services.smtp.pool.SendGate`: the letter's stop, and a late recheck."""

    __slots__ = ("inactive", "recipient", "task")

    def __init__(self, task: RecipientTask, recipient: ClaimedRecipient) -> None:
        self.task = task
        self.recipient = recipient
        self.inactive: SubscriptionStatus | None = None

    @property
    def withdrawn(self) -> asyncio.Event:
        return self.task.withdrawn

    async def confirm(self) -> str | None:
        task = self.task
        if task.database is None:
            return None
        if asyncio.get_running_loop().time() - self.recipient.claimed_at < task.recheck_after:
            return None  # claimed moments ago, with the subscription's status of then
        try:
            subscription = await subscriptions.get_subscription(
                task.database, self.recipient.claim.subscription_id
            )
        except DatabaseError:
            # Postgres is failing: go by the status read at the claim (an unsubscribe cannot be
            # recorded meanwhile either) rather than fail a send that has its turn.
            return None
        if subscription.status is SubscriptionStatus.ACTIVE:
            return None
        self.inactive = subscription.status
        return f"subscription {subscription.status}"

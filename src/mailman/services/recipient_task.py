"""The recipient task: everything that happens to one recipient of one letter, once.

Each claimed recipient runs as a task process under the ``MailmanSupervisor`` TaskSupervisor
(through ``async_stream_nolink``), so a crash in one recipient's send is that recipient's
``Exit`` result, never the letter's. The task

1. applies the rules: a subscription that is no longer active (unsubscribed, bounced,
   complained) is skipped, with the reason;
2. personalises the letter's pre-rendered message (one substitution, not a MIME build);
3. sends it through the shared SMTP pool (connections reused, rate-limited);
4. decides, with :class:`RetryPolicy`, what the outcome means: delivered, retry later, failed
   (dead-lettered), or a fault of the relay that the circuit breaker must hear about.

It returns a :class:`RecipientVerdict`; the letter's service writes verdicts to Postgres in batches
(the delivery row and the NewsletterEmail row in one transaction).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mailman.services.mailer import SmtpPool
from mailman.services.message import LetterTemplate, RecipientError
from mailman.services.models import ClaimedRecipient, DeliveryOutcome, SubscriptionStatus
from mailman.services.retry_policy import RecipientVerdict, RetryPolicy

__all__ = ["RecipientTask"]


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
        result = await self.smtp.send(
            self.template.from_address, recipient.email, message, key=self.letter_id
        )
        message_id = self.template.message_id(letter_id=self.letter_id, subscription_id=claim.subscription_id)
        return self.policy.decide(claim, result, message_id, self.rng, hold_uncertain=self.hold_uncertain)

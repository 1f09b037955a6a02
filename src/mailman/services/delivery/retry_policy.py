"""What to do with one recipient after one attempt: deliver, retry later, give up, or hold.

A pure function of the SMTP result, the attempt count and the policy: no process, no I/O
("if you don't need a process, then you don't need a process"). The recipient task calls
:meth:`RetryPolicy.decide`; the result is written to Postgres in a batch.

- ``Delivered``: delivered, and a NewsletterEmail row with the relay's reply.
- ``Permanent`` (a 5xx on RCPT or DATA): failed with the reply, never retried; a "user unknown"
  also marks the subscription bounced.
- ``Transient`` (4xx, connection lost, timeout) and a crashed or timed-out task: pending again
  after an exponential back-off with full jitter, until ``max_attempts`` attempts were made; then
  failed (dead-lettered) with the last reply, retryable by command.
- ``TransportFault`` (authentication, 5xx on MAIL FROM, connection refused): the relay is at fault,
  not the recipient; the attempt is given back and the letter's circuit breaker holds it.
- ``Withdrawn`` (the letter stopped while the send waited for its turn): nothing was sent; the
  recipient is released, pending again with its attempt given back.
- Under the ``hold`` policy, an attempt whose fate is unknowable (no reply after the final dot, a
  recipient task killed mid-send) is ``uncertain``: held for an operator, never resent.

Back-off with full jitter (AWS architecture blog): ``uniform(0, min(max_delay, base * 2**(n-1)))``
for the n-th attempt, so that many recipients failing together do not retry together.

Where the wait happens: the back-off is written as the row's ``next_attempt_at`` instead of being
slept inside the task, so a waiting recipient does not hold one of the letter's concurrency slots,
and the wait survives a restart. The decision (and the attempt count) still lives with the task.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta

from mailman.services.smtp.outcome import (
    Delivered,
    Permanent,
    SendResult,
    Transient,
    TransportFault,
    Withdrawn,
)
from mailman.services.store.models import ClaimedDelivery, DeliveryOutcome, SentEmail

__all__ = ["RecipientVerdict", "RetryPolicy"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RecipientVerdict:
    """The decision for one recipient: the deliveries-map outcome, plus its side effects."""

    outcome: DeliveryOutcome
    sent_email: SentEmail | None = None
    bounce_reason: str | None = None
    transport_fault: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How many attempts a recipient gets and how long to wait between them."""

    max_attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 300.0

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_attempts, bool)
            or not isinstance(self.max_attempts, int)
            or self.max_attempts < 1
        ):
            raise ValueError(f"expected max_attempts to be an int >= 1, got {self.max_attempts!r}")
        if not 0 <= self.base_delay <= self.max_delay:
            raise ValueError(
                f"expected 0 <= base_delay <= max_delay, got {self.base_delay!r} and {self.max_delay!r}"
            )

    def backoff(self, attempt: int, rng: random.Random) -> timedelta:
        """The wait before the attempt after ``attempt`` (1-based): full jitter, capped."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** max(0, attempt - 1))
        return timedelta(seconds=rng.uniform(0, ceiling))

    def decide(
        self,
        claim: ClaimedDelivery,
        result: SendResult,
        message_id: str,
        rng: random.Random,
        *,
        hold_uncertain: bool = False,
    ) -> RecipientVerdict:
        """The verdict for a claimed recipient whose attempt ended with ``result``.

        With ``hold_uncertain`` (the letter's ``hold`` policy), an attempt whose message went out
        but got no verdict (no reply after the final dot) is held as uncertain instead of retried,
        so that nobody is mailed twice.
        """
        match result:
            case Delivered(reply=reply):
                return RecipientVerdict(
                    outcome=DeliveryOutcome.delivered(claim),
                    sent_email=SentEmail(
                        subscription_id=claim.subscription_id, message_id=message_id, smtp_reply=reply
                    ),
                )
            case Permanent(code=code, reply=reply):
                error = _describe(code, reply)
                return RecipientVerdict(
                    outcome=DeliveryOutcome.failed(claim, error),
                    bounce_reason=error if result.is_user_unknown else None,
                )
            case Transient(code=code, reply=reply):
                if hold_uncertain and result.uncertain:
                    return RecipientVerdict(outcome=DeliveryOutcome.uncertain(claim, _describe(code, reply)))
                return self.transient(claim, _describe(code, reply), rng)
            case TransportFault(code=code, reply=reply):
                return RecipientVerdict(
                    outcome=DeliveryOutcome.release(claim, _describe(code, reply)), transport_fault=True
                )
            case Withdrawn(reason=reason):
                # Nothing reached the relay: the recipient waits for the letter's next sender.
                return RecipientVerdict(outcome=DeliveryOutcome.release(claim, f"released unsent: {reason}"))

    def transient(self, claim: ClaimedDelivery, error: str, rng: random.Random) -> RecipientVerdict:
        """A failure worth another try, unless this was the last attempt allowed."""
        if claim.attempts >= self.max_attempts:
            return RecipientVerdict(
                outcome=DeliveryOutcome.failed(claim, f"gave up after {claim.attempts} attempts: {error}")
            )
        return RecipientVerdict(
            outcome=DeliveryOutcome.retry(claim, error, self.backoff(claim.attempts, rng))
        )


def _describe(code: int | None, reply: str) -> str:
    reply = reply.strip()
    if code is None:
        return reply or "no reply from the SMTP server"
    return f"{code} {reply}" if reply else str(code)

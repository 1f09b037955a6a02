"""RetryPolicy: what one attempt's SMTP result means for the recipient (pure, no I/O)."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from mailman.services.delivery.retry_policy import RetryPolicy
from mailman.services.smtp.outcome import (
    Delivered,
    Permanent,
    SmtpPhase,
    Transient,
    TransportFault,
    Withdrawn,
)
from mailman.services.store.models import ClaimedDelivery, DeliveryState

MESSAGE_ID = "<letter-1.sub-7@example.com>"


def claim(attempts: int = 1) -> ClaimedDelivery:
    return ClaimedDelivery(subscription_id=7, attempts=attempts, lease_token=11)


class TestDecide:
    def test_a_withdrawn_send_releases_the_recipient(self) -> None:
        """Nothing reached the relay: pending again at once, the attempt given back, no email."""
        verdict = RetryPolicy().decide(
            claim(3), Withdrawn("withdrawn while waiting"), MESSAGE_ID, random.Random(1), hold_uncertain=True
        )
        assert verdict.outcome.state is DeliveryState.PENDING
        assert verdict.outcome.refund_attempt
        assert verdict.outcome.retry_after == timedelta(0)
        assert verdict.sent_email is None
        assert verdict.outcome.last_error == "released unsent: withdrawn while waiting"

    def test_delivered_records_the_email_with_the_relays_reply(self) -> None:
        """A 250 after the final dot: delivered, and a NewsletterEmail with the Message-ID and reply."""
        verdict = RetryPolicy().decide(
            claim(), Delivered("2.0.0 Ok: queued as ABC"), MESSAGE_ID, random.Random(1)
        )
        assert verdict.outcome.state is DeliveryState.DELIVERED
        assert verdict.sent_email is not None
        assert (verdict.sent_email.message_id, verdict.sent_email.smtp_reply) == (
            MESSAGE_ID,
            "2.0.0 Ok: queued as ABC",
        )

    def test_user_unknown_fails_and_bounces(self) -> None:
        """A 550 5.1.1 on RCPT: failed with the reply, and the subscription is to be bounced."""
        result = Permanent(550, "5.1.1 No such user", SmtpPhase.RCPT)
        verdict = RetryPolicy().decide(claim(), result, MESSAGE_ID, random.Random(1))
        assert (verdict.outcome.state, verdict.outcome.last_error) == (
            DeliveryState.FAILED,
            "550 5.1.1 No such user",
        )
        assert verdict.bounce_reason == "550 5.1.1 No such user"

    def test_policy_refusal_fails_without_bouncing(self) -> None:
        """A 550 5.7.1 (policy) fails the message but does not mark the address bounced."""
        result = Permanent(550, "5.7.1 Message refused", SmtpPhase.RCPT)
        verdict = RetryPolicy().decide(claim(), result, MESSAGE_ID, random.Random(1))
        assert verdict.outcome.state is DeliveryState.FAILED
        assert verdict.bounce_reason is None

    def test_transient_is_retried_with_attempts_kept(self) -> None:
        """A 451 before the last attempt: pending again after a back-off, attempts kept."""
        result = Transient(451, "4.7.1 Greylisted", SmtpPhase.RCPT)
        verdict = RetryPolicy(max_attempts=3, base_delay=2.0).decide(
            claim(2), result, MESSAGE_ID, random.Random(1)
        )
        assert verdict.outcome.state is DeliveryState.PENDING
        assert verdict.outcome.retry_after is not None
        assert timedelta(0) <= verdict.outcome.retry_after <= timedelta(seconds=4)
        assert not verdict.outcome.refund_attempt

    def test_transient_on_the_last_attempt_is_dead_lettered(self) -> None:
        """The same 451 on attempt max_attempts: failed, saying it gave up, with the last reply."""
        result = Transient(451, "4.7.1 Greylisted", SmtpPhase.RCPT)
        verdict = RetryPolicy(max_attempts=3).decide(claim(3), result, MESSAGE_ID, random.Random(1))
        assert verdict.outcome.state is DeliveryState.FAILED
        assert verdict.outcome.last_error == "gave up after 3 attempts: 451 4.7.1 Greylisted"

    def test_transport_fault_gives_the_attempt_back(self) -> None:
        """A refused connection is the relay's fault: pending, attempt refunded, breaker told."""
        verdict = RetryPolicy().decide(
            claim(),
            TransportFault(None, "connection refused", SmtpPhase.CONNECT),
            MESSAGE_ID,
            random.Random(1),
        )
        assert verdict.outcome.state is DeliveryState.PENDING
        assert verdict.outcome.refund_attempt
        assert verdict.transport_fault

    def test_lost_final_reply_is_retried_under_resend(self) -> None:
        """No reply after the final dot, policy resend: retried like any transient failure."""
        result = Transient(None, "connection lost", SmtpPhase.END_OF_DATA)
        verdict = RetryPolicy().decide(claim(), result, MESSAGE_ID, random.Random(1))
        assert verdict.outcome.state is DeliveryState.PENDING

    def test_lost_final_reply_is_held_under_hold(self) -> None:
        """The same under the hold policy: uncertain, never resent."""
        result = Transient(None, "connection lost", SmtpPhase.END_OF_DATA)
        verdict = RetryPolicy().decide(claim(), result, MESSAGE_ID, random.Random(1), hold_uncertain=True)
        assert verdict.outcome.state is DeliveryState.UNCERTAIN

    def test_a_transient_reply_before_the_dot_is_retried_even_under_hold(self) -> None:
        """A 451 on RCPT is certain (nothing was delivered): retried even under hold."""
        result = Transient(451, "try later", SmtpPhase.RCPT)
        verdict = RetryPolicy().decide(claim(), result, MESSAGE_ID, random.Random(1), hold_uncertain=True)
        assert verdict.outcome.state is DeliveryState.PENDING


class TestBackoff:
    @pytest.mark.parametrize("attempt", [1, 2, 3, 8, 20])
    def test_full_jitter_stays_under_the_capped_exponential(self, attempt: int) -> None:
        """The wait after attempt n lies in [0, min(max_delay, base * 2**(n-1))]."""
        policy = RetryPolicy(base_delay=1.0, max_delay=60.0)
        ceiling = min(60.0, 2 ** (attempt - 1))
        rng = random.Random(attempt)
        waits = [policy.backoff(attempt, rng).total_seconds() for _ in range(200)]
        assert all(0 <= wait <= ceiling for wait in waits)
        assert max(waits) > ceiling / 2  # jitter spreads over the whole range, not a fixed delay

    def test_rejects_a_bad_policy(self) -> None:
        """max_attempts below 1, or base delay above the cap, are refused with the values."""
        with pytest.raises(ValueError, match="max_attempts"):
            RetryPolicy(max_attempts=0)
        with pytest.raises(ValueError, match="base_delay"):
            RetryPolicy(base_delay=10.0, max_delay=1.0)

"""Domain objects: validation, derived values, and agreement with the schema's CHECK constraints."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import asyncpg
import pytest

from mailman.services.store.models import (
    ClaimedDelivery,
    DeliveryCounts,
    DeliveryOutcome,
    DeliveryState,
    Letter,
    LetterStatus,
    Newsletter,
    SubscriptionStatus,
    UncertainPolicy,
)

CLAIM = ClaimedDelivery(subscription_id=7, attempts=1, lease_token=42)
NOW = datetime(2030, 1, 1, tzinfo=UTC)


class TestDeliveryOutcome:
    def test_constructors_carry_the_claim(self) -> None:
        """Each constructor keeps the claim's subscription and lease token."""
        outcomes = [
            DeliveryOutcome.delivered(CLAIM),
            DeliveryOutcome.failed(CLAIM, "550"),
            DeliveryOutcome.skipped(CLAIM, "unsubscribed"),
            DeliveryOutcome.retry(CLAIM, "451", timedelta(seconds=30)),
        ]

        assert {(o.subscription_id, o.lease_token) for o in outcomes} == {(7, 42)}
        assert [o.state for o in outcomes] == [
            DeliveryState.DELIVERED,
            DeliveryState.FAILED,
            DeliveryState.SKIPPED,
            DeliveryState.PENDING,
        ]

    def test_release_gives_the_attempt_back(self) -> None:
        """A release is a retry due now that refunds the claim's attempt."""
        outcome = DeliveryOutcome.release(CLAIM, "530 auth")

        assert (outcome.state, outcome.retry_after, outcome.refund_attempt) == (
            DeliveryState.PENDING,
            timedelta(0),
            True,
        )

    def test_final_outcome_cannot_refund(self) -> None:
        """Only a recipient put back to pending can have its attempt refunded."""
        with pytest.raises(ValueError, match="refund_attempt"):
            DeliveryOutcome(subscription_id=1, lease_token=1, state=DeliveryState.FAILED, refund_attempt=True)

    def test_retry_needs_a_delay(self) -> None:
        """A pending outcome without retry_after is refused."""
        with pytest.raises(ValueError, match="retry_after"):
            DeliveryOutcome(subscription_id=1, lease_token=1, state=DeliveryState.PENDING)

    def test_retry_delay_cannot_be_negative(self) -> None:
        """A negative delay is refused."""
        with pytest.raises(ValueError, match="retry_after"):
            DeliveryOutcome.retry(CLAIM, "451", timedelta(seconds=-1))

    def test_final_outcome_takes_no_delay(self) -> None:
        """retry_after only makes sense for a retry."""
        with pytest.raises(ValueError, match="only with state PENDING"):
            DeliveryOutcome(
                subscription_id=1, lease_token=1, state=DeliveryState.DELIVERED, retry_after=timedelta(0)
            )

    def test_rejects_sending_which_is_not_an_outcome(self) -> None:
        """Sending is set by a claim, never by an ack."""
        with pytest.raises(ValueError, match="expected an outcome state"):
            DeliveryOutcome(subscription_id=1, lease_token=1, state=DeliveryState.SENDING)

    def test_uncertain_is_an_outcome_under_the_hold_policy(self) -> None:
        """An attempt whose fate is unknowable can be acked as uncertain (the hold policy)."""
        claim = ClaimedDelivery(subscription_id=7, attempts=1, lease_token=3)
        outcome = DeliveryOutcome.uncertain(claim, "no reply after the final dot")
        assert (outcome.state, outcome.last_error) == (
            DeliveryState.UNCERTAIN,
            "no reply after the final dot",
        )


class TestDeliveryCounts:
    def test_total_and_unfinished(self) -> None:
        """total counts every row; unfinished those pending or in flight."""
        counts = DeliveryCounts(pending=1, sending=2, delivered=3, failed=4, skipped=5, uncertain=6)

        assert (counts.total, counts.unfinished) == (21, 3)


class TestNewsletter:
    def test_unsubscribe_url_substitutes_the_token(self) -> None:
        """The subscription's token replaces {token} in the template."""
        newsletter = Newsletter(
            id=1,
            user_id=1,
            name="n",
            from_address="f",
            reply_to=None,
            unsubscribe_url_template="https://example.com/u/{token}?list=1",
            created_at=NOW,
        )

        assert newsletter.unsubscribe_url("abc") == "https://example.com/u/abc?list=1"


class TestLetter:
    def test_is_frozen_and_hashable_despite_its_summary(self) -> None:
        """A letter cannot be changed in place, and can still be a set member or dict key."""
        letter = Letter(
            id=1,
            newsletter_id=1,
            subject="s",
            text_body="t",
            html_body=None,
            status=LetterStatus.DRAFT,
            send_at=None,
            uncertain_policy=UncertainPolicy.RESEND,
            mail_order={"restarts": 0},
            created_at=NOW,
            updated_at=NOW,
        )

        with pytest.raises(dataclasses.FrozenInstanceError):
            letter.subject = "changed"  # type: ignore[misc]
        assert letter in {letter}


class TestStatusesMatchTheSchema:
    @pytest.mark.parametrize(
        ("enum", "constraint"),
        [
            (SubscriptionStatus, "subscriptions_status_check"),
            (LetterStatus, "letters_status_check"),
            (UncertainPolicy, "letters_uncertain_policy_check"),
            (DeliveryState, "deliveries_state_check"),
        ],
    )
    async def test_enum_values_are_the_allowed_values(
        self, pool: asyncpg.Pool[asyncpg.Record], enum: type[StrEnum], constraint: str
    ) -> None:
        """Each enum lists exactly the values its column's CHECK constraint allows."""
        definition = await pool.fetchval(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = $1", constraint
        )

        assert set(re.findall(r"'(\w+)'::text", definition)) == {member.value for member in enum}

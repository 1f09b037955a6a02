"""The delivery engine end to end: real Postgres, real SMTP (aiosmtpd), the real supervision tree."""

from __future__ import annotations

from email import message_from_bytes

from mailman.services.models import DeliveryState, LetterStatus, SubscriptionStatus
from mailman.services.queries import deliveries, subscriptions
from tests.services.engine_fixtures import Engine


class TestCleanRun:
    async def test_every_active_recipient_gets_exactly_one_message(self, engine: Engine) -> None:
        """2,000 recipients, two inactive: the sink gets one message per active recipient, each has one
        newsletter_emails row, the inactive are skipped with a reason, and the letter is sent."""
        ids = await engine.newsletter(2000)
        await subscriptions.set_subscription_status(engine.pool, ids[0], SubscriptionStatus.UNSUBSCRIBED)
        await subscriptions.mark_bounced(engine.pool, ids[1], "550 user unknown")
        letter = await engine.letter()

        await engine.send(letter.id)
        done = await engine.wait_until_done(letter.id)

        assert done.status is LetterStatus.SENT
        received = [m.rcpt_tos[0] for m in engine.sink.messages]
        assert len(received) == 1998
        assert len(set(received)) == 1998
        counts = await deliveries.count_deliveries(engine.pool, letter.id)
        assert (counts.delivered, counts.skipped, counts.failed, counts.pending, counts.sending) == (
            1998,
            2,
            0,
            0,
            0,
        )
        rows = await engine.pool.fetch(
            "SELECT subscription_id, message_id FROM newsletter_emails WHERE letter_id = $1", letter.id
        )
        assert len(rows) == 1998
        assert {row["subscription_id"] for row in rows} == set(ids[2:])
        skipped = await deliveries.list_deliveries(engine.pool, letter.id, DeliveryState.SKIPPED)
        assert {d.last_error for d in skipped} == {"subscription unsubscribed", "subscription bounced"}
        first = message_from_bytes(engine.sink.messages[0].data)
        assert first["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

"""Messages accepted by SMTP."""

from __future__ import annotations

from typing import TypeAlias

import asyncpg
import pytest

from mailman.services.errors import NotFoundError
from mailman.services.store.models import Letter, SentEmail
from mailman.services.store.queries.newsletter_emails import (
    get_sent_email,
    list_sent_emails,
    record_sent_emails,
)

from .conftest import Subscribe

Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"


class TestRecordSentEmails:
    async def test_records_a_batch(self, pool: Pool, letter: Letter, subscribe: Subscribe) -> None:
        """Each accepted message is stored with its Message-ID and the server's reply."""
        a, b = await subscribe(2)

        inserted = await record_sent_emails(
            pool,
            letter.id,
            [
                SentEmail(
                    subscription_id=a, message_id="<1.a@example.com>", smtp_reply="250 2.0.0 queued as A"
                ),
                SentEmail(subscription_id=b, message_id="<1.b@example.com>"),
            ],
        )

        assert inserted == 2
        email = await get_sent_email(pool, letter.id, a)
        assert (email.message_id, email.smtp_reply) == ("<1.a@example.com>", "250 2.0.0 queued as A")
        assert (await get_sent_email(pool, letter.id, b)).smtp_reply is None

    async def test_keeps_the_first_row_for_a_recipient(
        self, pool: Pool, letter: Letter, subscribe: Subscribe
    ) -> None:
        """Recording a recipient of a letter again (a resend) inserts nothing and keeps the first reply."""
        [a] = await subscribe(1)
        await record_sent_emails(
            pool, letter.id, [SentEmail(subscription_id=a, message_id="<m>", smtp_reply="250 A")]
        )

        inserted = await record_sent_emails(
            pool, letter.id, [SentEmail(subscription_id=a, message_id="<m>", smtp_reply="250 B")]
        )

        assert inserted == 0
        assert (await get_sent_email(pool, letter.id, a)).smtp_reply == "250 A"

    async def test_repeats_within_a_batch_count_once(
        self, pool: Pool, letter: Letter, subscribe: Subscribe
    ) -> None:
        """Two rows for one recipient in a single batch store one."""
        [a] = await subscribe(1)

        inserted = await record_sent_emails(
            pool,
            letter.id,
            [SentEmail(subscription_id=a, message_id="<m>"), SentEmail(subscription_id=a, message_id="<m>")],
        )

        assert inserted == 1

    async def test_empty_batch_records_nothing(self, pool: Pool, letter: Letter) -> None:
        """An empty batch is a no-op."""
        assert await record_sent_emails(pool, letter.id, []) == 0

    async def test_unknown_subscription_is_not_found(self, pool: Pool, letter: Letter) -> None:
        """A batch naming an unknown subscription raises NotFoundError and records nothing."""
        with pytest.raises(NotFoundError) as raised:
            await record_sent_emails(pool, letter.id, [SentEmail(subscription_id=999, message_id="<m>")])

        assert raised.value.entity == "subscription"


class TestGetSentEmail:
    async def test_recipient_without_message_is_not_found(self, pool: Pool, letter: Letter) -> None:
        """No accepted message for the recipient raises NotFoundError."""
        with pytest.raises(NotFoundError, match="newsletter email"):
            await get_sent_email(pool, letter.id, 1)


class TestListSentEmails:
    async def test_pages_by_subscription_id(self, pool: Pool, letter: Letter, subscribe: Subscribe) -> None:
        """Keyset pages of a letter's messages, by subscription id."""
        ids = await subscribe(3)
        await record_sent_emails(
            pool, letter.id, [SentEmail(subscription_id=i, message_id=f"<{i}>") for i in reversed(ids)]
        )

        first = await list_sent_emails(pool, letter.id, limit=2)
        rest = await list_sent_emails(pool, letter.id, after_subscription_id=first[-1].subscription_id)

        assert [email.subscription_id for email in first + rest] == ids

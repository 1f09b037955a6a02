"""Messages accepted by SMTP: at most one row per (letter, subscription), with its Message-ID."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from mailman.services.errors import NotFoundError
from mailman.services.store.database import Executor, translate_errors
from mailman.services.store.models import NewsletterEmail, SentEmail

__all__ = ["get_sent_email", "insert_sent_emails_from", "list_sent_emails", "record_sent_emails"]


def insert_sent_emails_from(source: str) -> str:
    """The INSERT of sent emails of letter ``$1`` from ``source``, a FROM item named ``sent``.

    ``sent`` has the columns ``subscription_id``, ``message_id`` and ``smtp_reply``. A resend after
    a crash reuses the Message-ID; recording it again keeps the first row. The statement returns one
    row per email inserted. Written once here, and used by :func:`record_sent_emails` and by the
    deliveries' acknowledgement, which records the emails of the outcomes it applies in the same
    statement (:func:`mailman.services.store.queries.deliveries.ack_deliveries`).
    """
    return f"""
    INSERT INTO newsletter_emails (letter_id, subscription_id, message_id, smtp_reply)
    SELECT $1::bigint, sent.subscription_id, sent.message_id, sent.smtp_reply
    FROM {source}
    ON CONFLICT (letter_id, subscription_id) DO NOTHING
    RETURNING 1
    """


INSERT_SENT_EMAILS = f"""
WITH inserted AS ({
    insert_sent_emails_from(
        "unnest($2::bigint[], $3::text[], $4::text[]) AS sent(subscription_id, message_id, smtp_reply)"
    )
})
SELECT count(*) FROM inserted
"""

SELECT_SENT_EMAIL = """
SELECT id, letter_id, subscription_id, message_id, smtp_reply, sent_at
FROM newsletter_emails
WHERE letter_id = $1 AND subscription_id = $2
"""

SELECT_SENT_EMAILS = """
SELECT id, letter_id, subscription_id, message_id, smtp_reply, sent_at
FROM newsletter_emails
WHERE letter_id = $1 AND subscription_id > $2
ORDER BY subscription_id
LIMIT $3
"""


@translate_errors
async def record_sent_emails(executor: Executor, letter_id: int, emails: Sequence[SentEmail]) -> int:
    """Record a batch of accepted messages in one statement; return how many rows were new.

    A (letter, subscription) already recorded keeps its first row. Raises NotFoundError if the
    letter or a subscription does not exist (and then records none of the batch).
    """
    if not emails:
        return 0
    inserted: int = await executor.fetchval(
        INSERT_SENT_EMAILS,
        letter_id,
        [email.subscription_id for email in emails],
        [email.message_id for email in emails],
        [email.smtp_reply for email in emails],
    )
    return inserted


@translate_errors
async def get_sent_email(executor: Executor, letter_id: int, subscription_id: int) -> NewsletterEmail:
    """The message recorded for a recipient of a letter; NotFoundError if none was accepted."""
    row = await executor.fetchrow(SELECT_SENT_EMAIL, letter_id, subscription_id)
    if row is None:
        raise NotFoundError("newsletter email", (letter_id, subscription_id))
    return _email_from_row(row)


@translate_errors
async def list_sent_emails(
    executor: Executor, letter_id: int, *, after_subscription_id: int = 0, limit: int = 1000
) -> list[NewsletterEmail]:
    """A keyset page of the messages recorded for a letter, by subscription id."""
    if limit < 1:
        raise ValueError(f"expected a limit >= 1, got {limit}")
    rows = await executor.fetch(SELECT_SENT_EMAILS, letter_id, after_subscription_id, limit)
    return [_email_from_row(row) for row in rows]


def _email_from_row(row: asyncpg.Record) -> NewsletterEmail:
    return NewsletterEmail(
        id=row["id"],
        letter_id=row["letter_id"],
        subscription_id=row["subscription_id"],
        message_id=row["message_id"],
        smtp_reply=row["smtp_reply"],
        sent_at=row["sent_at"],
    )

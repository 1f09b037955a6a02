"""Subscriptions: batch import of subscribers, look-ups by id, status changes (bounces)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import asyncpg

from mailman.services.errors import NotFoundError
from mailman.services.store.database import Executor, transaction, translate_errors
from mailman.services.store.models import NewSubscriber, Subscription, SubscriptionStatus

__all__ = [
    "add_subscribers",
    "get_subscription",
    "get_subscriptions",
    "mark_bounced",
    "set_subscription_status",
]

# Subscribers are streamed with COPY into a temporary table, then inserted with one statement that
# drops duplicates: within the batch (first occurrence of an address wins, case-insensitively) and
# against existing subscriptions (ON CONFLICT on the unique (newsletter_id, lower(email)) index).
# COPY is ~50x faster than row-by-row INSERTs and streams, so the batch is never built as one message.
CREATE_STAGING_TABLE = """
CREATE TEMPORARY TABLE mailman_new_subscribers (
    position bigint NOT NULL,
    email    text NOT NULL,
    name     text NOT NULL
) ON COMMIT DROP
"""

STAGING_TABLE = "mailman_new_subscribers"
STAGING_COLUMNS = ("position", "email", "name")

INSERT_FROM_STAGING = """
WITH inserted AS (
    INSERT INTO subscriptions (newsletter_id, email, name)
    SELECT $1::bigint, first.email, first.name
    FROM (
        SELECT DISTINCT ON (lower(email)) position, email, name
        FROM mailman_new_subscribers
        ORDER BY lower(email), position
    ) AS first
    ORDER BY first.position
    ON CONFLICT (newsletter_id, lower(email)) DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM inserted
"""

# Dropped explicitly as well as ON COMMIT: inside a caller's transaction (a savepoint here) the
# table would otherwise outlive this call and the next call's CREATE would fail.
DROP_STAGING_TABLE = "DROP TABLE mailman_new_subscribers"

NEWSLETTER_EXISTS = "SELECT EXISTS (SELECT FROM newsletters WHERE id = $1)"

SELECT_SUBSCRIPTION = """
SELECT id, newsletter_id, email, name, status, status_reason, unsubscribe_token, created_at, updated_at
FROM subscriptions
WHERE id = $1
"""

SELECT_SUBSCRIPTIONS = """
SELECT id, newsletter_id, email, name, status, status_reason, unsubscribe_token, created_at, updated_at
FROM subscriptions
WHERE id = ANY($1::bigint[])
ORDER BY id
"""

UPDATE_STATUS = """
UPDATE subscriptions
SET status = $2, status_reason = $3, updated_at = now()
WHERE id = $1
RETURNING id, newsletter_id, email, name, status, status_reason, unsubscribe_token, created_at, updated_at
"""


@translate_errors
async def add_subscribers(
    executor: Executor, newsletter_id: int, subscribers: Iterable[NewSubscriber]
) -> int:
    """Subscribe ``subscribers`` to the newsletter in one transaction; return how many were new.

    Addresses already subscribed (in any letter case, whatever their status) and repeats within
    ``subscribers`` are skipped, the first occurrence winning. ``subscribers`` is consumed lazily, so
    a generator over a large file is fine. Raises NotFoundError if the newsletter does not exist.
    """
    async with transaction(executor) as connection:
        if not await connection.fetchval(NEWSLETTER_EXISTS, newsletter_id):
            raise NotFoundError("newsletter", newsletter_id)
        await connection.execute(CREATE_STAGING_TABLE)
        await connection.copy_records_to_table(
            STAGING_TABLE, records=_staging_records(subscribers), columns=STAGING_COLUMNS
        )
        inserted: int = await connection.fetchval(INSERT_FROM_STAGING, newsletter_id)
        await connection.execute(DROP_STAGING_TABLE)
    return inserted


def _staging_records(subscribers: Iterable[NewSubscriber]) -> Iterator[tuple[int, str, str]]:
    for position, subscriber in enumerate(subscribers):
        if not isinstance(subscriber, NewSubscriber):
            raise TypeError(f"expected NewSubscriber items, got {type(subscriber).__name__} at {position}")
        if not subscriber.email or subscriber.email.isspace():
            raise ValueError(f"expected an email address, got {subscriber.email!r} at {position}")
        yield position, subscriber.email, subscriber.name


@translate_errors
async def get_subscription(executor: Executor, subscription_id: int) -> Subscription:
    """The subscription ``subscription_id``; NotFoundError if there is none."""
    row = await executor.fetchrow(SELECT_SUBSCRIPTION, subscription_id)
    if row is None:
        raise NotFoundError("subscription", subscription_id)
    return _subscription_from_row(row)


@translate_errors
async def get_subscriptions(executor: Executor, subscription_ids: Sequence[int]) -> list[Subscription]:
    """The subscriptions among ``subscription_ids`` that exist, by id (unknown ids are left out)."""
    rows = await executor.fetch(SELECT_SUBSCRIPTIONS, list(subscription_ids))
    return [_subscription_from_row(row) for row in rows]


@translate_errors
async def set_subscription_status(
    executor: Executor, subscription_id: int, status: SubscriptionStatus, *, reason: str | None = None
) -> Subscription:
    """Set a subscription's status and the reason for it; return it updated."""
    row = await executor.fetchrow(UPDATE_STATUS, subscription_id, SubscriptionStatus(status).value, reason)
    if row is None:
        raise NotFoundError("subscription", subscription_id)
    return _subscription_from_row(row)


async def mark_bounced(executor: Executor, subscription_id: int, reason: str) -> Subscription:
    """Mark a subscription bounced (a permanent delivery failure), keeping the server's ``reason``."""
    return await set_subscription_status(executor, subscription_id, SubscriptionStatus.BOUNCED, reason=reason)


def _subscription_from_row(row: asyncpg.Record) -> Subscription:
    return Subscription(
        id=row["id"],
        newsletter_id=row["newsletter_id"],
        email=row["email"],
        name=row["name"],
        status=SubscriptionStatus(row["status"]),
        status_reason=row["status_reason"],
        unsubscribe_token=row["unsubscribe_token"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )

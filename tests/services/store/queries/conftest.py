"""Rows most query tests start from: a newsletter, a draft letter, and a way to add subscribers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeAlias

import asyncpg
import pytest

from mailman.services.store.models import Letter, Newsletter, NewSubscriber, SubscriptionStatus
from mailman.services.store.queries.letters import create_letter
from mailman.services.store.queries.newsletters import create_user_with_newsletter
from mailman.services.store.queries.subscriptions import add_subscribers, set_subscription_status

Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"
Subscribe = Callable[..., Awaitable[list[int]]]


async def make_newsletter(pool: Pool, owner: str) -> Newsletter:
    _, newsletter = await create_user_with_newsletter(
        pool,
        email=owner,
        name=f"News of {owner}",
        from_address=f"news+{owner}",
        unsubscribe_url_template="https://example.com/unsubscribe/{token}",
    )
    return newsletter


@pytest.fixture
async def newsletter(pool: Pool) -> Newsletter:
    return await make_newsletter(pool, "owner@example.com")


@pytest.fixture
async def letter(pool: Pool, newsletter: Newsletter) -> Letter:
    return await create_letter(pool, newsletter_id=newsletter.id, subject="Issue 1", text_body="Hello")


@pytest.fixture
def subscribe(pool: Pool, newsletter: Newsletter) -> Subscribe:
    """``await subscribe(3)``: subscribe 3 new addresses and return their ids, in order.

    ``status=`` gives them another status; ``newsletter_id=`` another newsletter.
    """
    issued = 0

    async def subscribe(
        count: int,
        *,
        status: SubscriptionStatus = SubscriptionStatus.ACTIVE,
        newsletter_id: int = newsletter.id,
    ) -> list[int]:
        nonlocal issued
        emails = [f"reader{issued + n}@example.com" for n in range(count)]
        issued += count
        await add_subscribers(pool, newsletter_id, [NewSubscriber(email=email) for email in emails])
        rows = await pool.fetch(
            "SELECT id FROM subscriptions WHERE newsletter_id = $1 AND email = ANY($2::text[]) ORDER BY id",
            newsletter_id,
            emails,
        )
        ids = [row["id"] for row in rows]
        if status is not SubscriptionStatus.ACTIVE:
            for subscription_id in ids:
                await set_subscription_status(pool, subscription_id, status)
        return ids

    return subscribe

"""Users and their newsletters (one newsletter per user)."""

from __future__ import annotations

import asyncpg

from mailman.services.errors import NotFoundError
from mailman.services.store.database import Executor, translate_errors
from mailman.services.store.models import Newsletter, User

__all__ = ["create_user_with_newsletter", "get_newsletter", "get_newsletter_of_user", "get_user"]

# One statement, so the user and the newsletter exist together or not at all, on any executor.
INSERT_USER_WITH_NEWSLETTER = """
WITH new_user AS (
    INSERT INTO users (email) VALUES ($1)
    RETURNING id, email, created_at
), new_newsletter AS (
    INSERT INTO newsletters (user_id, name, from_address, reply_to, unsubscribe_url_template)
    SELECT new_user.id, $2, $3, $4, $5 FROM new_user
    RETURNING id, user_id, name, from_address, reply_to, unsubscribe_url_template, created_at
)
SELECT new_user.id AS user_id, new_user.email AS user_email, new_user.created_at AS user_created_at,
       new_newsletter.id, new_newsletter.name, new_newsletter.from_address, new_newsletter.reply_to,
       new_newsletter.unsubscribe_url_template, new_newsletter.created_at
FROM new_user JOIN new_newsletter ON new_newsletter.user_id = new_user.id
"""

SELECT_USER = """
SELECT id, email, created_at
FROM users
WHERE id = $1
"""

SELECT_NEWSLETTER = """
SELECT id, user_id, name, from_address, reply_to, unsubscribe_url_template, created_at
FROM newsletters
WHERE id = $1
"""

SELECT_NEWSLETTER_OF_USER = """
SELECT id, user_id, name, from_address, reply_to, unsubscribe_url_template, created_at
FROM newsletters
WHERE user_id = $1
"""


@translate_errors
async def create_user_with_newsletter(
    executor: Executor,
    *,
    email: str,
    name: str,
    from_address: str,
    unsubscribe_url_template: str,
    reply_to: str | None = None,
) -> tuple[User, Newsletter]:
    """Create a user and its newsletter atomically.

    ``unsubscribe_url_template`` must contain ``{token}``. Raises ConflictError if a user has ``email``.
    """
    if "{token}" not in unsubscribe_url_template:
        raise ValueError(
            f"expected an unsubscribe URL template containing {{token}}, got {unsubscribe_url_template!r}"
        )
    row = await executor.fetchrow(
        INSERT_USER_WITH_NEWSLETTER, email, name, from_address, reply_to, unsubscribe_url_template
    )
    assert row is not None
    user = User(id=row["user_id"], email=row["user_email"], created_at=row["user_created_at"])
    return user, _newsletter_from_row(row)


@translate_errors
async def get_user(executor: Executor, user_id: int) -> User:
    """The user ``user_id``; NotFoundError if there is none."""
    row = await executor.fetchrow(SELECT_USER, user_id)
    if row is None:
        raise NotFoundError("user", user_id)
    return User(id=row["id"], email=row["email"], created_at=row["created_at"])


@translate_errors
async def get_newsletter(executor: Executor, newsletter_id: int) -> Newsletter:
    """The newsletter ``newsletter_id``; NotFoundError if there is none."""
    row = await executor.fetchrow(SELECT_NEWSLETTER, newsletter_id)
    if row is None:
        raise NotFoundError("newsletter", newsletter_id)
    return _newsletter_from_row(row)


@translate_errors
async def get_newsletter_of_user(executor: Executor, user_id: int) -> Newsletter:
    """The newsletter of user ``user_id``; NotFoundError if the user has none."""
    row = await executor.fetchrow(SELECT_NEWSLETTER_OF_USER, user_id)
    if row is None:
        raise NotFoundError("newsletter of user", user_id)
    return _newsletter_from_row(row)


def _newsletter_from_row(row: asyncpg.Record) -> Newsletter:
    return Newsletter(
        id=row["id"],
        user_id=row["user_id"],
        name=row["name"],
        from_address=row["from_address"],
        reply_to=row["reply_to"],
        unsubscribe_url_template=row["unsubscribe_url_template"],
        created_at=row["created_at"],
    )

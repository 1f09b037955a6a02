"""Users and newsletters."""

from __future__ import annotations

from typing import TypeAlias

import asyncpg
import pytest

from mailman.services.errors import ConflictError, NotFoundError
from mailman.services.store.models import Newsletter
from mailman.services.store.queries.newsletters import (
    create_user_with_newsletter,
    get_newsletter,
    get_newsletter_of_user,
    get_user,
)

Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"


class TestCreateUserWithNewsletter:
    async def test_creates_both_rows(self, pool: Pool) -> None:
        """The user and its newsletter are created and returned as domain objects."""
        user, newsletter = await create_user_with_newsletter(
            pool,
            email="ada@example.com",
            name="Ada's notes",
            from_address="Ada <notes@example.com>",
            reply_to="ada@example.com",
            unsubscribe_url_template="https://example.com/u/{token}",
        )

        assert user.email == "ada@example.com"
        assert newsletter.user_id == user.id
        assert (newsletter.name, newsletter.from_address, newsletter.reply_to) == (
            "Ada's notes",
            "Ada <notes@example.com>",
            "ada@example.com",
        )
        assert await get_user(pool, user.id) == user
        assert await get_newsletter(pool, newsletter.id) == newsletter

    async def test_duplicate_email_is_a_conflict_and_creates_nothing(self, pool: Pool) -> None:
        """A second user with the same email raises ConflictError; no newsletter is left behind."""
        await create_user_with_newsletter(
            pool, email="ada@example.com", name="A", from_address="a@x", unsubscribe_url_template="{token}"
        )

        with pytest.raises(ConflictError) as raised:
            await create_user_with_newsletter(
                pool,
                email="ada@example.com",
                name="B",
                from_address="b@x",
                unsubscribe_url_template="{token}",
            )

        assert raised.value.constraint == "users_email_key"
        assert await pool.fetchval("SELECT count(*) FROM newsletters") == 1

    async def test_rejects_a_template_without_token(self, pool: Pool) -> None:
        """The unsubscribe URL template must say where the token goes."""
        with pytest.raises(ValueError, match=r"\{token\}"):
            await create_user_with_newsletter(
                pool,
                email="ada@example.com",
                name="A",
                from_address="a@x",
                unsubscribe_url_template="https://example.com/unsubscribe",
            )


class TestGetNewsletter:
    async def test_unknown_id_is_not_found(self, pool: Pool) -> None:
        """An unknown newsletter id raises NotFoundError naming the entity and the key."""
        with pytest.raises(NotFoundError) as raised:
            await get_newsletter(pool, 404)

        assert (raised.value.entity, raised.value.key) == ("newsletter", 404)


class TestGetNewsletterOfUser:
    async def test_finds_the_users_newsletter(self, pool: Pool, newsletter: Newsletter) -> None:
        """A user's one newsletter is found by the user's id."""
        assert await get_newsletter_of_user(pool, newsletter.user_id) == newsletter


class TestGetUser:
    async def test_unknown_id_is_not_found(self, pool: Pool) -> None:
        """An unknown user id raises NotFoundError."""
        with pytest.raises(NotFoundError, match="user 7"):
            await get_user(pool, 7)

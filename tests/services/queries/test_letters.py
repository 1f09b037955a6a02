"""Letters: creation, guarded status changes, the mail_order summary, due and left-sending letters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TypeAlias

import asyncpg
import pytest

from mailman.services.errors import InvalidDataError, NotFoundError
from mailman.services.models import Letter, LetterStatus, Newsletter, UncertainPolicy
from mailman.services.queries.letters import (
    create_letter,
    get_letter,
    letters_due,
    letters_left_sending,
    schedule_letter,
    set_letter_status,
    update_mail_order,
)

Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"


async def db_now(pool: Pool) -> datetime:
    now: datetime = await pool.fetchval("SELECT now()")
    return now


class TestCreateLetter:
    async def test_creates_a_draft(self, pool: Pool, newsletter: Newsletter) -> None:
        """A new letter is a draft with an empty summary and the resend policy by default."""
        letter = await create_letter(
            pool, newsletter_id=newsletter.id, subject="Hi", text_body="Plain", html_body="<p>Rich</p>"
        )

        assert letter.status is LetterStatus.DRAFT
        assert (letter.subject, letter.text_body, letter.html_body) == ("Hi", "Plain", "<p>Rich</p>")
        assert letter.uncertain_policy is UncertainPolicy.RESEND
        assert letter.mail_order == {}
        assert letter.send_at is None

    async def test_keeps_the_hold_policy(self, pool: Pool, newsletter: Newsletter) -> None:
        """A letter can be created with the hold (at-most-once) policy."""
        letter = await create_letter(
            pool,
            newsletter_id=newsletter.id,
            subject="Hi",
            text_body="x",
            uncertain_policy=UncertainPolicy.HOLD,
        )

        assert (await get_letter(pool, letter.id)).uncertain_policy is UncertainPolicy.HOLD

    async def test_unknown_newsletter_is_not_found(self, pool: Pool) -> None:
        """A letter for a newsletter that does not exist raises NotFoundError (from the foreign key)."""
        with pytest.raises(NotFoundError) as raised:
            await create_letter(pool, newsletter_id=77, subject="Hi", text_body="x")

        assert raised.value.entity == "newsletter"


class TestGetLetter:
    async def test_returns_the_letter(self, pool: Pool, letter: Letter) -> None:
        """A letter read back equals the one created."""
        assert await get_letter(pool, letter.id) == letter

    async def test_unknown_id_is_not_found(self, pool: Pool) -> None:
        """An unknown letter id raises NotFoundError."""
        with pytest.raises(NotFoundError, match="letter 3"):
            await get_letter(pool, 3)


class TestSetLetterStatus:
    async def test_changes_the_status(self, pool: Pool, letter: Letter) -> None:
        """Without a guard the status is set, and True says it changed."""
        assert await set_letter_status(pool, letter.id, LetterStatus.CANCELLED) is True
        assert (await get_letter(pool, letter.id)).status is LetterStatus.CANCELLED

    async def test_guard_allows_the_expected_status(self, pool: Pool, letter: Letter) -> None:
        """With the expected current status, the change happens."""
        assert await set_letter_status(pool, letter.id, LetterStatus.SENDING, expected=LetterStatus.DRAFT)
        assert (await get_letter(pool, letter.id)).status is LetterStatus.SENDING

    async def test_guard_blocks_another_status(self, pool: Pool, letter: Letter) -> None:
        """From a status other than the expected one, nothing changes and False is returned."""
        changed = await set_letter_status(
            pool, letter.id, LetterStatus.SENT, expected={LetterStatus.SENDING, LetterStatus.PAUSED}
        )

        assert changed is False
        assert (await get_letter(pool, letter.id)).status is LetterStatus.DRAFT

    async def test_guard_accepts_a_status_given_as_text(self, pool: Pool, letter: Letter) -> None:
        """A single expected status may be given as its string value."""
        assert await set_letter_status(pool, letter.id, LetterStatus.SENDING, expected="draft")  # type: ignore[arg-type]

    async def test_same_status_is_not_a_change(self, pool: Pool, letter: Letter) -> None:
        """Setting the status a letter already has returns False."""
        assert await set_letter_status(pool, letter.id, LetterStatus.DRAFT) is False

    async def test_unknown_letter_is_not_found(self, pool: Pool) -> None:
        """A status change on an unknown letter raises NotFoundError rather than returning False."""
        with pytest.raises(NotFoundError):
            await set_letter_status(pool, 3, LetterStatus.SENT, expected=LetterStatus.SENDING)


class TestScheduleLetter:
    async def test_schedules_a_draft(self, pool: Pool, letter: Letter) -> None:
        """A draft becomes scheduled with its send_at."""
        send_at = datetime(2031, 1, 1, 9, 0, tzinfo=UTC)

        assert await schedule_letter(pool, letter.id, send_at) is True

        scheduled = await get_letter(pool, letter.id)
        assert (scheduled.status, scheduled.send_at) == (LetterStatus.SCHEDULED, send_at)

    async def test_does_not_schedule_a_letter_being_sent(self, pool: Pool, letter: Letter) -> None:
        """Only drafts and scheduled letters can be (re)scheduled."""
        await set_letter_status(pool, letter.id, LetterStatus.SENDING)

        assert await schedule_letter(pool, letter.id, datetime(2031, 1, 1, tzinfo=UTC)) is False

    async def test_rejects_a_naive_datetime(self, pool: Pool, letter: Letter) -> None:
        """A send_at without a time zone is ambiguous and refused."""
        with pytest.raises(ValueError, match="timezone-aware"):
            await schedule_letter(pool, letter.id, datetime(2031, 1, 1))

    async def test_scheduled_requires_send_at(self, pool: Pool, letter: Letter) -> None:
        """The schema refuses a scheduled letter without send_at (InvalidDataError from the check)."""
        with pytest.raises(InvalidDataError) as raised:
            await set_letter_status(pool, letter.id, LetterStatus.SCHEDULED)

        assert raised.value.constraint == "letters_scheduled_has_send_at"


class TestUpdateMailOrder:
    async def test_merges_top_level_keys(self, pool: Pool, letter: Letter) -> None:
        """New keys are added, existing keys replaced, others kept."""
        await update_mail_order(pool, letter.id, {"audience_size": 10, "restarts": 0})

        updated = await update_mail_order(pool, letter.id, {"restarts": 1, "failure_reason": None})

        assert updated.mail_order == {"audience_size": 10, "restarts": 1, "failure_reason": None}
        assert (await get_letter(pool, letter.id)).mail_order == updated.mail_order

    async def test_stores_datetimes_as_iso_text(self, pool: Pool, letter: Letter) -> None:
        """A datetime value is stored as its ISO 8601 text."""
        finished = datetime(2030, 5, 1, 12, 30, tzinfo=UTC)

        updated = await update_mail_order(pool, letter.id, {"finished_at": finished})

        assert datetime.fromisoformat(updated.mail_order["finished_at"]) == finished

    async def test_unknown_letter_is_not_found(self, pool: Pool) -> None:
        """Updating the summary of an unknown letter raises NotFoundError."""
        with pytest.raises(NotFoundError):
            await update_mail_order(pool, 3, {"restarts": 1})


class TestLettersDue:
    async def test_returns_scheduled_letters_whose_time_has_come(
        self, pool: Pool, newsletter: Newsletter
    ) -> None:
        """Scheduled letters with send_at in the past are due, earliest first; future ones are not."""
        now = await db_now(pool)
        later, earlier, future, _draft = [
            await create_letter(pool, newsletter_id=newsletter.id, subject=s, text_body="x")
            for s in ("later", "earlier", "future", "draft")
        ]
        await schedule_letter(pool, later.id, now - timedelta(minutes=1))
        await schedule_letter(pool, earlier.id, now - timedelta(hours=1))
        await schedule_letter(pool, future.id, now + timedelta(hours=1))

        due = await letters_due(pool)

        assert [letter.subject for letter in due] == ["earlier", "later"]

    async def test_limit_bounds_the_batch(self, pool: Pool, newsletter: Newsletter) -> None:
        """At most ``limit`` letters are returned."""
        now = await db_now(pool)
        for n in range(3):
            letter = await create_letter(pool, newsletter_id=newsletter.id, subject=str(n), text_body="x")
            await schedule_letter(pool, letter.id, now - timedelta(minutes=n))

        assert len(await letters_due(pool, limit=2)) == 2


class TestLettersLeftSending:
    async def test_returns_letters_in_status_sending(self, pool: Pool, newsletter: Newsletter) -> None:
        """Only letters a previous run left sending are returned; paused and sent ones are not."""
        letters = [
            await create_letter(pool, newsletter_id=newsletter.id, subject=str(n), text_body="x")
            for n in range(4)
        ]
        await set_letter_status(pool, letters[0].id, LetterStatus.SENDING)
        await set_letter_status(pool, letters[1].id, LetterStatus.PAUSED)
        await set_letter_status(pool, letters[2].id, LetterStatus.SENT)
        await set_letter_status(pool, letters[3].id, LetterStatus.SENDING)

        left = await letters_left_sending(pool)

        assert [letter.id for letter in left] == [letters[0].id, letters[3].id]

"""Letters: creation, guarded status changes, the mail_order summary, due letters, and the lease that
lets one node at a time drive a letter (take, renew, lock, release, and the letters to take over)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TypeAlias

import asyncpg
import pytest

from mailman.services.errors import InvalidDataError, LeaseLostError, LetterLeasedError, NotFoundError
from mailman.services.store.database import transaction
from mailman.services.store.models import Letter, LetterLease, LetterStatus, Newsletter, UncertainPolicy
from mailman.services.store.queries.letters import (
    acquire_lease,
    create_letter,
    get_letter,
    letters_due,
    letters_to_take_over,
    lock_lease,
    release_lease,
    renew_lease,
    schedule_letter,
    set_letter_status,
    update_mail_order,
)
from tests.services.engine_fixtures import eventually

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


TTL = timedelta(minutes=5)


async def expire(pool: Pool, letter_id: int) -> None:
    """Make the letter's lease expire now, as if its holder had stopped renewing it a while ago."""
    await pool.execute(
        "UPDATE letters SET lease_expires_at = now() - interval '1 second' WHERE id = $1", letter_id
    )


class TestAcquireLease:
    async def test_a_free_letter_is_leased_to_the_node(self, pool: Pool, letter: Letter) -> None:
        """Nobody holds the lease: the node gets it until ttl from now (the database's clock), and the
        letter shows who holds it."""
        before = await db_now(pool)

        lease = await acquire_lease(pool, letter.id, node="a", ttl=TTL)

        assert (lease.letter_id, lease.node) == (letter.id, "a")
        assert before + TTL <= lease.expires_at <= await db_now(pool) + TTL
        again = await get_letter(pool, letter.id)
        assert (again.owner_node, again.lease_expires_at) == ("a", lease.expires_at)

    async def test_the_holder_takes_its_live_lease_again_with_the_same_token(
        self, pool: Pool, letter: Letter
    ) -> None:
        """The node holding a live lease gets it again, extended, with the same token: its running
        sender's claims stay valid."""
        first = await acquire_lease(pool, letter.id, node="a", ttl=timedelta(seconds=30))

        second = await acquire_lease(pool, letter.id, node="a", ttl=TTL)

        assert second.token == first.token
        assert second.expires_at > first.expires_at

    async def test_another_node_is_refused_while_the_lease_is_live(self, pool: Pool, letter: Letter) -> None:
        """A live lease of another node is not taken: the error names the node sending the letter."""
        held = await acquire_lease(pool, letter.id, node="a", ttl=TTL)

        with pytest.raises(LetterLeasedError, match=f"letter {letter.id} is being sent by node a") as raised:
            await acquire_lease(pool, letter.id, node="b", ttl=TTL)

        assert (raised.value.letter_id, raised.value.node) == (letter.id, "a")
        assert raised.value.expires_at == held.expires_at
        assert (await get_letter(pool, letter.id)).owner_node == "a"

    async def test_an_expired_lease_is_taken_over_with_a_new_token(self, pool: Pool, letter: Letter) -> None:
        """Once its lease has expired, another node takes the letter over with a new token."""
        old = await acquire_lease(pool, letter.id, node="a", ttl=TTL)
        await expire(pool, letter.id)

        new = await acquire_lease(pool, letter.id, node="b", ttl=TTL)

        assert new.node == "b"
        assert new.token != old.token

    async def test_the_holder_taking_its_expired_lease_draws_a_new_token(
        self, pool: Pool, letter: Letter
    ) -> None:
        """Expired, the lease is anybody's, its former holder's included: taken again, it gets a new
        token, which fences out whatever still ran under the old one."""
        old = await acquire_lease(pool, letter.id, node="a", ttl=TTL)
        await expire(pool, letter.id)

        new = await acquire_lease(pool, letter.id, node="a", ttl=TTL)

        assert new.token != old.token

    async def test_two_nodes_racing_get_one_lease(self, pool: Pool, letter: Letter) -> None:
        """Two nodes asking at once: exactly one gets the lease, the other is told who has it."""
        results = await asyncio.gather(
            acquire_lease(pool, letter.id, node="a", ttl=TTL),
            acquire_lease(pool, letter.id, node="b", ttl=TTL),
            return_exceptions=True,
        )

        [lease] = [result for result in results if isinstance(result, LetterLease)]
        [refused] = [result for result in results if isinstance(result, LetterLeasedError)]
        assert refused.node == lease.node

    async def test_unknown_letter_is_not_found(self, pool: Pool) -> None:
        """No letter, no lease."""
        with pytest.raises(NotFoundError, match="letter"):
            await acquire_lease(pool, 999_999, node="a", ttl=TTL)

    async def test_rejects_a_ttl_that_is_not_positive(self, pool: Pool, letter: Letter) -> None:
        """A lease that is over before it starts is a mistake."""
        with pytest.raises(ValueError, match="positive ttl"):
            await acquire_lease(pool, letter.id, node="a", ttl=timedelta(0))


class TestRenewLease:
    async def test_extends_the_lease_and_reads_the_status(self, pool: Pool, letter: Letter) -> None:
        """Renewing moves the expiry on, keeps the token, and tells the holder the letter's status
        (a pause from elsewhere shows up there)."""
        lease = await acquire_lease(pool, letter.id, node="a", ttl=timedelta(seconds=30))
        await set_letter_status(pool, letter.id, LetterStatus.PAUSED)

        renewed, status = await renew_lease(pool, lease, TTL)

        assert renewed.token == lease.token
        assert renewed.expires_at > lease.expires_at
        assert status is LetterStatus.PAUSED

    async def test_an_expired_lease_nobody_took_is_renewed(self, pool: Pool, letter: Letter) -> None:
        """A holder that renews late keeps its lease if no other node took it meanwhile."""
        lease = await acquire_lease(pool, letter.id, node="a", ttl=TTL)
        await expire(pool, letter.id)

        renewed, _ = await renew_lease(pool, lease, TTL)

        assert renewed.expires_at > await db_now(pool)
        assert (await get_letter(pool, letter.id)).owner_node == "a"

    async def test_a_lease_taken_over_is_lost(self, pool: Pool, letter: Letter) -> None:
        """Once another node has taken the letter over, renewing fails, naming the new holder, and
        changes nothing."""
        lease = await acquire_lease(pool, letter.id, node="a", ttl=TTL)
        await expire(pool, letter.id)
        theirs = await acquire_lease(pool, letter.id, node="b", ttl=TTL)

        with pytest.raises(LeaseLostError, match="node a lost its lease") as raised:
            await renew_lease(pool, lease, TTL)

        assert raised.value.holder == "b"
        assert (await get_letter(pool, letter.id)).lease_expires_at == theirs.expires_at


class TestLockLease:
    async def test_holds_the_lease_for_the_transaction(self, pool: Pool, letter: Letter) -> None:
        """Inside a transaction, the lease is checked and kept: a takeover waits for the transaction
        to end (the letter's row is locked), then finds the lease renewed by the holder's writes."""
        lease = await acquire_lease(pool, letter.id, node="a", ttl=TTL)
        await expire(pool, letter.id)
        async with pool.acquire() as connection, transaction(connection) as held:
            status = await lock_lease(held, lease)
            takeover = asyncio.ensure_future(acquire_lease(pool, letter.id, node="b", ttl=TTL))
            await wait_for_lock_waiter(pool)
            await renew_lease(held, lease, TTL)

        assert status is LetterStatus.DRAFT
        with pytest.raises(LetterLeasedError, match="node a"):
            await takeover

    async def test_a_lost_lease_raises(self, pool: Pool, letter: Letter) -> None:
        """A lease taken over cannot fence writes any more."""
        lease = await acquire_lease(pool, letter.id, node="a", ttl=TTL)
        await expire(pool, letter.id)
        await acquire_lease(pool, letter.id, node="b", ttl=TTL)

        async with pool.acquire() as connection, transaction(connection) as held:
            with pytest.raises(LeaseLostError, match="node b holds it now"):
                await lock_lease(held, lease)


class TestReleaseLease:
    async def test_clears_the_lease_and_merges_the_summary(self, pool: Pool, letter: Letter) -> None:
        """Released, the letter has no holder, and the summary changes in the same statement; another
        node may take it at once."""
        lease = await acquire_lease(pool, letter.id, node="a", ttl=TTL)

        await release_lease(pool, lease, {"running": False})

        released = await get_letter(pool, letter.id)
        assert (released.owner_node, released.lease_expires_at) == (None, None)
        assert released.mail_order == {"running": False}
        assert (await acquire_lease(pool, letter.id, node="b", ttl=TTL)).node == "b"

    async def test_a_lost_lease_writes_nothing(self, pool: Pool, letter: Letter) -> None:
        """A node whose lease was taken over cannot release it, nor write the summary."""
        lease = await acquire_lease(pool, letter.id, node="a", ttl=TTL)
        await expire(pool, letter.id)
        await acquire_lease(pool, letter.id, node="b", ttl=TTL)

        with pytest.raises(LeaseLostError):
            await release_lease(pool, lease, {"running": False})

        after = await get_letter(pool, letter.id)
        assert after.owner_node == "b"
        assert after.mail_order == {}


class TestLettersToTakeOver:
    async def test_returns_sending_letters_nobody_else_drives(
        self, pool: Pool, newsletter: Newsletter
    ) -> None:
        """Letters sending held by nobody, by this node, or under an expired lease are returned; one
        whose live lease another node holds is not, nor letters that are not sending."""
        letters = [
            await create_letter(pool, newsletter_id=newsletter.id, subject=str(n), text_body="x")
            for n in range(6)
        ]
        for letter in letters[:4]:
            await set_letter_status(pool, letter.id, LetterStatus.SENDING)
        await set_letter_status(pool, letters[4].id, LetterStatus.PAUSED)
        await set_letter_status(pool, letters[5].id, LetterStatus.SENT)
        # letters[0]: nobody holds it.
        await acquire_lease(pool, letters[1].id, node="me", ttl=TTL)
        await acquire_lease(pool, letters[2].id, node="other", ttl=TTL)
        await expire(pool, letters[2].id)
        await acquire_lease(pool, letters[3].id, node="other", ttl=TTL)  # live: the other sends it

        found = await letters_to_take_over(pool, "me")

        assert [letter.id for letter in found] == [letters[0].id, letters[1].id, letters[2].id]
        assert [letter.owner_node for letter in found] == [None, "me", "other"]


async def wait_for_lock_waiter(pool: Pool) -> None:
    """Wait until some session of this database is blocked on a lock (a row lock here)."""

    async def waiting() -> bool:
        found: bool = await pool.fetchval(
            "SELECT EXISTS (SELECT FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock')"
        )
        return found

    await eventually(waiting)

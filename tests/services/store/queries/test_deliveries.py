"""The deliveries map: audience, keyset pages, claim, fenced ack, recovery, counts, retries."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import TypeAlias

import asyncpg
import pytest

from mailman.services.errors import ClaimRefusedError, NotFoundError
from mailman.services.store.database import transaction
from mailman.services.store.models import (
    Audience,
    ClaimedDelivery,
    DeliveryCounts,
    DeliveryOutcome,
    DeliveryState,
    Letter,
    LetterLease,
    LetterStatus,
    Newsletter,
    Recovery,
    SentEmail,
    SubscriptionStatus,
    UncertainPolicy,
)
from mailman.services.store.queries.deliveries import (
    ack_deliveries,
    claim_deliveries,
    claim_recipients,
    count_deliveries,
    dead_letters,
    fix_audience,
    get_delivery,
    list_deliveries,
    mark_sending_uncertain,
    next_due_in,
    pending_deliveries,
    recover_deliveries,
    requeue_uncertain,
    retry_failed,
)
from mailman.services.store.queries.letters import (
    acquire_lease,
    create_letter,
    get_letter,
    release_lease,
    renew_lease,
    schedule_letter,
    set_letter_status,
)
from mailman.services.store.queries.newsletter_emails import get_sent_email, list_sent_emails
from mailman.services.store.queries.subscriptions import get_subscription, set_subscription_status
from tests.services.engine_fixtures import eventually

from .conftest import Subscribe, make_newsletter
from .test_letters import expire as expire_lease
from .test_letters import wait_for_lock_waiter

Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"


NODE = "node-a"
"""The node holding the lease of the letters these tests claim from."""


@pytest.fixture
async def lease(pool: Pool, letter: Letter) -> LetterLease:
    """The letter's lease, held by :data:`NODE` for an hour: what every claim presents."""
    return await acquire_lease(pool, letter.id, node=NODE, ttl=timedelta(hours=1))


@pytest.fixture
async def audience(pool: Pool, letter: Letter, subscribe: Subscribe) -> list[int]:
    """Five active subscribers, fixed as the letter's audience: their subscription ids."""
    ids = await subscribe(5)
    await fix_audience(pool, letter.id)
    return ids


async def states(pool: Pool, letter_id: int) -> dict[int, DeliveryState]:
    rows = await pool.fetch("SELECT subscription_id, state FROM deliveries WHERE letter_id = $1", letter_id)
    return {row["subscription_id"]: DeliveryState(row["state"]) for row in rows}


class TestFixAudience:
    async def test_one_pending_delivery_per_active_subscription(
        self, pool: Pool, letter: Letter, subscribe: Subscribe
    ) -> None:
        """Each active subscriber gets a pending delivery with no attempts; inactive ones are skipped
        at once, with the reason."""
        active = await subscribe(3)
        [unsubscribed] = await subscribe(1, status=SubscriptionStatus.UNSUBSCRIBED)
        [bounced] = await subscribe(1, status=SubscriptionStatus.BOUNCED)

        audience = await fix_audience(pool, letter.id)

        assert audience == Audience(size=5, fixed_now=True, status=LetterStatus.SENDING)
        assert await states(pool, letter.id) == {
            **dict.fromkeys(active, DeliveryState.PENDING),
            unsubscribed: DeliveryState.SKIPPED,
            bounced: DeliveryState.SKIPPED,
        }
        assert {d.attempts for d in await pending_deliveries(pool, letter.id)} == {0}
        skipped = {
            d.subscription_id: d.last_error
            for d in await list_deliveries(pool, letter.id, DeliveryState.SKIPPED)
        }
        assert skipped[unsubscribed] == "subscription unsubscribed"
        assert skipped[bounced] == "subscription bounced"

    async def test_moves_the_letter_to_sending_and_records_the_audience(
        self, pool: Pool, letter: Letter, subscribe: Subscribe
    ) -> None:
        """The letter is sending, and its summary holds the audience size and the start time."""
        await subscribe(2)

        await fix_audience(pool, letter.id)

        sending = await get_letter(pool, letter.id)
        assert sending.status is LetterStatus.SENDING
        assert sending.mail_order["audience_size"] == 2
        assert datetime.fromisoformat(sending.mail_order["started_at"]) >= letter.created_at

    async def test_starts_a_scheduled_letter(self, pool: Pool, letter: Letter, subscribe: Subscribe) -> None:
        """A scheduled letter's audience is fixed as a draft's is."""
        await subscribe(1)
        await schedule_letter(pool, letter.id, letter.created_at)

        assert (await fix_audience(pool, letter.id)).fixed_now is True

    async def test_later_subscribers_are_not_added(
        self, pool: Pool, letter: Letter, subscribe: Subscribe
    ) -> None:
        """Subscribers who join after the audience was fixed do not receive the letter."""
        await subscribe(3)
        await fix_audience(pool, letter.id)
        await subscribe(2)

        await fix_audience(pool, letter.id)

        assert (await count_deliveries(pool, letter.id)).total == 3

    async def test_second_call_inserts_nothing_and_says_so(
        self, pool: Pool, letter: Letter, subscribe: Subscribe
    ) -> None:
        """Fixing the audience of a letter already sending reports the existing size, not fixed now."""
        await subscribe(3)
        await fix_audience(pool, letter.id)

        again = await fix_audience(pool, letter.id)

        assert again == Audience(size=3, fixed_now=False, status=LetterStatus.SENDING)

    @pytest.mark.parametrize("status", [LetterStatus.SENT, LetterStatus.CANCELLED, LetterStatus.FAILED])
    async def test_finished_letter_is_left_alone(
        self, pool: Pool, letter: Letter, subscribe: Subscribe, status: LetterStatus
    ) -> None:
        """A sent, cancelled or failed letter gets no deliveries and keeps its status."""
        await subscribe(2)
        await set_letter_status(pool, letter.id, status)

        audience = await fix_audience(pool, letter.id)

        assert audience == Audience(size=0, fixed_now=False, status=status)
        assert (await get_letter(pool, letter.id)).status is status

    async def test_subset_includes_only_given_ids_of_the_newsletter(
        self, pool: Pool, letter: Letter, subscribe: Subscribe
    ) -> None:
        """With subscription ids, only those that belong to the letter's newsletter are included."""
        ours = await subscribe(4)
        other_newsletter = await make_newsletter(pool, "other@example.com")
        theirs = await subscribe(1, newsletter_id=other_newsletter.id)

        audience = await fix_audience(pool, letter.id, subscription_ids=[ours[1], ours[3], *theirs, 999_999])

        assert audience.size == 2
        assert set(await states(pool, letter.id)) == {ours[1], ours[3]}

    async def test_subset_skips_inactive_subscriptions(
        self, pool: Pool, letter: Letter, subscribe: Subscribe
    ) -> None:
        """A given id whose subscription is no longer active is in the audience, skipped."""
        [active] = await subscribe(1)
        [unsubscribed] = await subscribe(1, status=SubscriptionStatus.UNSUBSCRIBED)

        audience = await fix_audience(pool, letter.id, subscription_ids=[active, unsubscribed])

        assert audience.size == 2
        assert await states(pool, letter.id) == {
            active: DeliveryState.PENDING,
            unsubscribed: DeliveryState.SKIPPED,
        }

    async def test_concurrent_callers_fix_it_once(
        self, pool: Pool, letter: Letter, subscribe: Subscribe
    ) -> None:
        """Of two concurrent calls on two connections, exactly one fixes the audience."""
        await subscribe(50)

        results = await asyncio.gather(fix_audience(pool, letter.id), fix_audience(pool, letter.id))

        assert sorted(result.fixed_now for result in results) == [False, True]
        assert {result.size for result in results} == {50}
        assert (await count_deliveries(pool, letter.id)).total == 50

    async def test_rolls_back_with_the_callers_transaction(
        self, pool: Pool, letter: Letter, subscribe: Subscribe
    ) -> None:
        """Inside a caller's transaction that rolls back, neither the rows nor the status remain."""
        await subscribe(2)
        async with pool.acquire() as connection:
            transaction = connection.transaction()
            await transaction.start()
            await fix_audience(connection, letter.id)
            await transaction.rollback()

        assert (await get_letter(pool, letter.id)).status is LetterStatus.DRAFT
        assert (await count_deliveries(pool, letter.id)).total == 0

    async def test_unknown_letter_is_not_found(self, pool: Pool) -> None:
        """Fixing the audience of a letter that does not exist raises NotFoundError."""
        with pytest.raises(NotFoundError, match="letter 42"):
            await fix_audience(pool, 42)


class TestGetDelivery:
    async def test_returns_the_row(self, pool: Pool, letter: Letter, audience: list[int]) -> None:
        """A delivery of the audience comes back as a domain object."""
        delivery = await get_delivery(pool, letter.id, audience[0])

        assert (delivery.letter_id, delivery.subscription_id) == (letter.id, audience[0])
        assert (delivery.state, delivery.attempts, delivery.lease_token) == (DeliveryState.PENDING, 0, None)

    async def test_subscriber_outside_the_audience_is_not_found(self, pool: Pool, letter: Letter) -> None:
        """A subscription that is not in the letter's audience raises NotFoundError."""
        with pytest.raises(NotFoundError, match="delivery"):
            await get_delivery(pool, letter.id, 1)


class TestPendingDeliveries:
    async def test_pages_by_subscription_id(self, pool: Pool, letter: Letter, audience: list[int]) -> None:
        """Keyset pages: each starts after the last subscription id of the previous one."""
        pages = []
        after = 0
        while page := await pending_deliveries(pool, letter.id, after_subscription_id=after, limit=2):
            pages.append([delivery.subscription_id for delivery in page])
            after = page[-1].subscription_id

        assert pages == [audience[0:2], audience[2:4], audience[4:5]]

    async def test_leaves_out_claimed_rows(
        self, pool: Pool, lease: LetterLease, letter: Letter, audience: list[int]
    ) -> None:
        """Rows claimed for sending are no longer pending."""
        await claim_deliveries(pool, letter.id, lease=lease, limit=2)

        page = await pending_deliveries(pool, letter.id)

        assert [delivery.subscription_id for delivery in page] == audience[2:]


class TestListDeliveries:
    async def test_lists_only_the_given_state(
        self, pool: Pool, lease: LetterLease, letter: Letter, audience: list[int]
    ) -> None:
        """Listing by state returns the rows in that state only."""
        claims = await claim_deliveries(pool, letter.id, lease=lease, limit=2)

        sending = await list_deliveries(pool, letter.id, DeliveryState.SENDING)

        assert [delivery.subscription_id for delivery in sending] == [
            claim.subscription_id for claim in claims
        ]

    async def test_rejects_a_limit_below_one(self, pool: Pool, letter: Letter) -> None:
        """A page of zero rows is a mistake."""
        with pytest.raises(ValueError, match="limit"):
            await list_deliveries(pool, letter.id, DeliveryState.PENDING, limit=0)


class TestDeadLetters:
    async def test_lists_failed_rows_with_their_error(
        self, pool: Pool, lease: LetterLease, letter: Letter, audience: list[int]
    ) -> None:
        """Dead letters are the failed rows, each with the error that ended it."""
        claims = await claim_deliveries(pool, letter.id, lease=lease, limit=2)
        await ack_deliveries(
            pool,
            letter.id,
            [
                DeliveryOutcome.failed(claims[0], "550 mailbox unavailable"),
                DeliveryOutcome.delivered(claims[1]),
            ],
        )

        dead = await dead_letters(pool, letter.id)

        assert [(d.subscription_id, d.last_error) for d in dead] == [
            (claims[0].subscription_id, "550 mailbox unavailable")
        ]


class TestClaimDeliveries:
    async def test_claims_pending_rows_in_subscription_order(
        self, pool: Pool, lease: LetterLease, letter: Letter, audience: list[int]
    ) -> None:
        """Up to ``limit`` pending rows become sending, first by subscription id."""
        claims = await claim_deliveries(pool, letter.id, lease=lease, limit=3)

        assert [claim.subscription_id for claim in claims] == audience[:3]
        assert [state for sid, state in sorted((await states(pool, letter.id)).items())] == [
            DeliveryState.SENDING,
            DeliveryState.SENDING,
            DeliveryState.SENDING,
            DeliveryState.PENDING,
            DeliveryState.PENDING,
        ]

    async def test_increments_attempts_and_issues_distinct_tokens(
        self, pool: Pool, lease: LetterLease, letter: Letter, audience: list[int]
    ) -> None:
        """Each claim counts an attempt and gets its own lease token, stored on the row."""
        claims = await claim_deliveries(pool, letter.id, lease=lease, limit=5)

        assert {claim.attempts for claim in claims} == {1}
        assert len({claim.lease_token for claim in claims}) == 5
        delivery = await get_delivery(pool, letter.id, claims[0].subscription_id)
        assert (delivery.attempts, delivery.lease_token) == (1, claims[0].lease_token)

    async def test_claims_only_pending_rows(
        self, pool: Pool, lease: LetterLease, letter: Letter, audience: list[int]
    ) -> None:
        """Rows already sending or final are never claimed again."""
        first = await claim_deliveries(pool, letter.id, lease=lease, limit=3)
        await ack_deliveries(pool, letter.id, [DeliveryOutcome.delivered(first[0])])

        second = await claim_deliveries(pool, letter.id, lease=lease, limit=10)

        assert [claim.subscription_id for claim in second] == audience[3:]
        assert await claim_deliveries(pool, letter.id, lease=lease, limit=10) == []

    async def test_skips_rows_not_yet_due(
        self, pool: Pool, lease: LetterLease, letter: Letter, audience: list[int]
    ) -> None:
        """A retry due later is not claimed before its next_attempt_at."""
        [claim] = await claim_deliveries(pool, letter.id, lease=lease, limit=1)
        await ack_deliveries(
            pool, letter.id, [DeliveryOutcome.retry(claim, "451 try later", timedelta(hours=1))]
        )

        claimed = await claim_deliveries(pool, letter.id, lease=lease, limit=10)

        assert claim.subscription_id not in {c.subscription_id for c in claimed}
        assert len(claimed) == 4

    async def test_claims_a_due_retry_with_another_attempt(
        self, pool: Pool, lease: LetterLease, letter: Letter, audience: list[int]
    ) -> None:
        """A retry due now is claimed again, its attempts counting on from the first claim."""
        [claim] = await claim_deliveries(pool, letter.id, lease=lease, limit=1)
        await ack_deliveries(pool, letter.id, [DeliveryOutcome.retry(claim, "451 try later", timedelta(0))])

        claimed = await claim_deliveries(pool, letter.id, lease=lease, limit=10)

        again = next(c for c in claimed if c.subscription_id == claim.subscription_id)
        assert again.attempts == 2
        assert again.lease_token != claim.lease_token

    async def test_leaves_other_letters_alone(
        self, pool: Pool, lease: LetterLease, newsletter: Newsletter, letter: Letter, audience: list[int]
    ) -> None:
        """A claim for one letter never takes another letter's rows."""
        other = await create_letter(pool, newsletter_id=newsletter.id, subject="Other", text_body="x")
        await fix_audience(pool, other.id)

        await claim_deliveries(pool, letter.id, lease=lease, limit=10)

        assert (await count_deliveries(pool, other.id)).pending == 5

    async def test_skips_rows_locked_by_an_uncommitted_claim(
        self, pool: Pool, lease: LetterLease, letter: Letter, audience: list[int]
    ) -> None:
        """While one claim's transaction is open, a second claimer gets the other rows, without waiting."""
        async with pool.acquire() as first, pool.acquire() as second:
            transaction = first.transaction()
            await transaction.start()
            held = await claim_deliveries(first, letter.id, lease=lease, limit=3)

            others = await claim_deliveries(second, letter.id, lease=lease, limit=10)

            await transaction.commit()

        assert [c.subscription_id for c in held] == audience[:3]
        assert [c.subscription_id for c in others] == audience[3:]

    async def test_concurrent_claimers_never_share_a_row(
        self, pool: Pool, lease: LetterLease, letter: Letter, subscribe: Subscribe
    ) -> None:
        """Four connections claiming in a loop together claim every row exactly once."""
        ids = await subscribe(200)
        await fix_audience(pool, letter.id)

        async def claimer() -> list[ClaimedDelivery]:
            mine: list[ClaimedDelivery] = []
            async with pool.acquire() as connection:
                while batch := await claim_deliveries(connection, letter.id, lease=lease, limit=7):
                    mine.extend(batch)
            return mine

        results = await asyncio.gather(*(claimer() for _ in range(4)))

        claimed = [claim.subscription_id for result in results for claim in result]
        assert sorted(claimed) == ids

    async def test_rejects_a_limit_below_one(self, pool: Pool, lease: LetterLease, letter: Letter) -> None:
        """Claiming zero rows is a mistake."""
        with pytest.raises(ValueError, match="limit"):
            await claim_deliveries(pool, letter.id, lease=lease, limit=0)


class TestNextDueIn:
    async def test_due_now_is_not_positive(self, pool: Pool, letter: Letter, audience: list[int]) -> None:
        """With a pending row already due, the wait is zero or less."""
        due_in = await next_due_in(pool, letter.id)

        assert due_in is not None
        assert due_in <= 0

    async def test_measures_the_wait_for_the_earliest_retry(
        self, pool: Pool, lease: LetterLease, letter: Letter, subscribe: Subscribe
    ) -> None:
        """With only retries pending, the wait is until the earliest one is due."""
        await subscribe(2)
        await fix_audience(pool, letter.id)
        a, b = await claim_deliveries(pool, letter.id, lease=lease, limit=2)
        await ack_deliveries(
            pool,
            letter.id,
            [
                DeliveryOutcome.retry(a, "451", timedelta(minutes=10)),
                DeliveryOutcome.retry(b, "451", timedelta(minutes=2)),
            ],
        )

        due_in = await next_due_in(pool, letter.id)

        assert due_in is not None
        assert 60 < due_in <= 120

    async def test_nothing_pending_is_none(
        self, pool: Pool, lease: LetterLease, letter: Letter, audience: list[int]
    ) -> None:
        """When no row is pending (all claimed or final), there is nothing to wait for."""
        await claim_deliveries(pool, letter.id, lease=lease, limit=10)

        assert await next_due_in(pool, letter.id) is None


class TestClaimFence:
    """A claim is fenced by the letter's lease: only its live holder claims, only while it is sending."""

    async def test_a_lease_taken_over_claims_nothing(
        self, pool: Pool, lease: LetterLease, letter: Letter, audience: list[int]
    ) -> None:
        """Once another node has taken the letter over, the old holder's claim is refused, naming
        the new holder, and leaves every row pending."""
        await expire_lease(pool, letter.id)
        await acquire_lease(pool, letter.id, node="node-b", ttl=timedelta(hours=1))

        with pytest.raises(ClaimRefusedError, match="node node-b holds its lease"):
            await claim_deliveries(pool, letter.id, lease=lease, limit=10)
        with pytest.raises(ClaimRefusedError):
            await claim_recipients(pool, letter.id, lease=lease, limit=10)

        assert set((await states(pool, letter.id)).values()) == {DeliveryState.PENDING}

    async def test_an_expired_lease_claims_nothing(
        self, pool: Pool, lease: LetterLease, letter: Letter, audience: list[int]
    ) -> None:
        """A holder whose lease expired claims nothing until it renews it, even if nobody took it."""
        await expire_lease(pool, letter.id)

        with pytest.raises(ClaimRefusedError, match="expired"):
            await claim_deliveries(pool, letter.id, lease=lease, limit=10)

        await renew_lease(pool, lease, timedelta(hours=1))
        assert len(await claim_deliveries(pool, letter.id, lease=lease, limit=10)) == 5

    async def test_a_released_lease_claims_nothing(
        self, pool: Pool, lease: LetterLease, letter: Letter, audience: list[int]
    ) -> None:
        """After the holder released the lease, its token is worth nothing."""
        await release_lease(pool, lease)

        with pytest.raises(ClaimRefusedError, match="nobody holds its lease"):
            await claim_deliveries(pool, letter.id, lease=lease, limit=10)

    async def test_a_paused_letter_is_not_claimed_from(
        self, pool: Pool, lease: LetterLease, letter: Letter, audience: list[int]
    ) -> None:
        """Paused (from any node), the letter's holder claims nobody more."""
        await set_letter_status(pool, letter.id, LetterStatus.PAUSED)

        with pytest.raises(ClaimRefusedError, match="the letter is paused"):
            await claim_deliveries(pool, letter.id, lease=lease, limit=10)

    async def test_nothing_due_is_not_a_refusal(
        self, pool: Pool, lease: LetterLease, letter: Letter, audience: list[int]
    ) -> None:
        """Under a good lease, an empty claim just means nothing is due."""
        await claim_deliveries(pool, letter.id, lease=lease, limit=10)

        assert await claim_deliveries(pool, letter.id, lease=lease, limit=10) == []

    async def test_a_claim_racing_a_takeover_sees_it(
        self, pool: Pool, lease: LetterLease, letter: Letter, audience: list[int]
    ) -> None:
        """The race the claim's row lock is for: a claim whose transaction began while the lease was
        live, run while another node is taking the letter over (its transaction holds the letter's
        row), waits for the takeover to commit, then re-reads the lease and is refused, although
        its snapshot predates the takeover. So the new holder's recovery, which comes after its
        takeover, can never miss a row the old holder claimed."""
        async with pool.acquire() as claimer, transaction(claimer):
            began: datetime = await claimer.fetchval("SELECT now()")  # the claim's now(), from here on
            expiry = began + timedelta(milliseconds=1)
            await pool.execute("UPDATE letters SET lease_expires_at = $2 WHERE id = $1", letter.id, expiry)

            async def expired() -> bool:
                later: bool = await pool.fetchval("SELECT now() > $1", expiry)
                return later

            await eventually(expired)
            async with pool.acquire() as connection, transaction(connection) as takeover:
                await acquire_lease(takeover, letter.id, node="node-b", ttl=timedelta(hours=1))
                claim = asyncio.ensure_future(claim_deliveries(claimer, letter.id, lease=lease, limit=10))
                await wait_for_lock_waiter(pool)
                assert not claim.done()

            with pytest.raises(ClaimRefusedError, match="node node-b holds its lease"):
                await claim
        assert set((await states(pool, letter.id)).values()) == {DeliveryState.PENDING}

    async def test_rejects_a_lease_on_another_letter(
        self, pool: Pool, lease: LetterLease, letter: Letter, newsletter: Newsletter
    ) -> None:
        """A lease is for one letter: presenting it for another is a mistake."""
        other = await create_letter(pool, newsletter_id=newsletter.id, subject="Other", text_body="x")

        with pytest.raises(ValueError, match=f"expected a lease on letter {other.id}"):
            await claim_deliveries(pool, other.id, lease=lease, limit=10)


class TestClaimRecipients:
    async def test_returns_claims_with_subscription_details(
        self, pool: Pool, lease: LetterLease, letter: Letter, audience: list[int]
    ) -> None:
        """Each claim comes with the subscriber's email, name, status and unsubscribe token."""
        recipients = await claim_recipients(pool, letter.id, lease=lease, limit=2)

        assert [r.claim.subscription_id for r in recipients] == audience[:2]
        subscription = await get_subscription(pool, audience[0])
        first = recipients[0]
        assert (first.email, first.name, first.status, first.unsubscribe_token) == (
            subscription.email,
            subscription.name,
            SubscriptionStatus.ACTIVE,
            subscription.unsubscribe_token,
        )
        assert (await get_delivery(pool, letter.id, audience[0])).lease_token == first.claim.lease_token

    async def test_reports_the_current_subscription_status(
        self, pool: Pool, lease: LetterLease, letter: Letter, audience: list[int]
    ) -> None:
        """A subscriber who left after the audience was fixed is claimed with the new status."""
        await set_subscription_status(pool, audience[0], SubscriptionStatus.UNSUBSCRIBED)

        [recipient] = await claim_recipients(pool, letter.id, lease=lease, limit=1)

        assert recipient.status is SubscriptionStatus.UNSUBSCRIBED


class TestAckDeliveries:
    async def test_applies_final_outcomes(
        self, pool: Pool, lease: LetterLease, letter: Letter, audience: list[int]
    ) -> None:
        """Delivered, failed and skipped are stored with their error, and the lease is cleared."""
        a, b, c = await claim_deliveries(pool, letter.id, lease=lease, limit=3)

        applied = await ack_deliveries(
            pool,
            letter.id,
            [
                DeliveryOutcome.delivered(a),
                DeliveryOutcome.failed(b, "550 no such user"),
                DeliveryOutcome.skipped(c, "unsubscribed"),
            ],
        )

        assert applied == {a.subscription_id, b.subscription_id, c.subscription_id}
        rows = [await get_delivery(pool, letter.id, claim.subscription_id) for claim in (a, b, c)]
        assert [(d.state, d.last_error, d.lease_token) for d in rows] == [
            (DeliveryState.DELIVERED, None, None),
            (DeliveryState.FAILED, "550 no such user", None),
            (DeliveryState.SKIPPED, "unsubscribed", None),
        ]

    async def test_retry_is_pending_later_with_attempts_kept(
        self, pool: Pool, lease: LetterLease, letter: Letter, audience: list[int]
    ) -> None:
        """A retry returns the row to pending, due after the delay, with its attempt still counted."""
        [claim] = await claim_deliveries(pool, letter.id, lease=lease, limit=1)
        before: datetime = await pool.fetchval("SELECT now()")

        await ack_deliveries(
            pool, letter.id, [DeliveryOutcome.retry(claim, "421 busy", timedelta(minutes=5))]
        )

        delivery = await get_delivery(pool, letter.id, claim.subscription_id)
        assert (delivery.state, delivery.attempts, delivery.last_error) == (
            DeliveryState.PENDING,
            1,
            "421 busy",
        )
        assert delivery.next_attempt_at >= before + timedelta(minutes=5)

    async def test_release_gives_the_attempt_back(
        self, pool: Pool, lease: LetterLease, letter: Letter, audience: list[int]
    ) -> None:
        """A released recipient is pending and due at once, its attempt not counted."""
        [claim] = await claim_deliveries(pool, letter.id, lease=lease, limit=1)

        await ack_deliveries(pool, letter.id, [DeliveryOutcome.release(claim, "530 authentication required")])

        delivery = await get_delivery(pool, letter.id, claim.subscription_id)
        assert (delivery.state, delivery.attempts) == (DeliveryState.PENDING, 0)
        assert delivery.last_error == "530 authentication required"
        reclaimed = await claim_deliveries(pool, letter.id, lease=lease, limit=5)
        assert (claim.subscription_id, 1) in {(c.subscription_id, c.attempts) for c in reclaimed}

    async def test_ignores_a_stale_lease_token(
        self, pool: Pool, lease: LetterLease, letter: Letter, audience: list[int]
    ) -> None:
        """After a row was recovered and claimed again, the old claim's ack changes nothing."""
        [stale] = await claim_deliveries(pool, letter.id, lease=lease, limit=1)
        await recover_deliveries(pool, letter.id, UncertainPolicy.RESEND)
        [fresh, *_] = await claim_deliveries(pool, letter.id, lease=lease, limit=5)
        assert fresh.subscription_id == stale.subscription_id

        applied = await ack_deliveries(pool, letter.id, [DeliveryOutcome.failed(stale, "zombie")])

        assert applied == set()
        delivery = await get_delivery(pool, letter.id, stale.subscription_id)
        assert (delivery.state, delivery.lease_token) == (DeliveryState.SENDING, fresh.lease_token)

    async def test_applies_the_valid_part_of_a_mixed_batch(
        self, pool: Pool, lease: LetterLease, letter: Letter, audience: list[int]
    ) -> None:
        """In one batch, acks with the current token apply and the fenced-out ones are reported missing."""
        a, b = await claim_deliveries(pool, letter.id, lease=lease, limit=2)
        forged = ClaimedDelivery(
            subscription_id=b.subscription_id, attempts=1, lease_token=b.lease_token + 1000
        )

        applied = await ack_deliveries(
            pool, letter.id, [DeliveryOutcome.delivered(a), DeliveryOutcome.delivered(forged)]
        )

        assert applied == {a.subscription_id}
        assert (await get_delivery(pool, letter.id, b.subscription_id)).state is DeliveryState.SENDING

    async def test_ignores_rows_that_are_not_sending(
        self, pool: Pool, lease: LetterLease, letter: Letter, audience: list[int]
    ) -> None:
        """An ack for a row that was never claimed (or already acknowledged) is ignored."""
        [claim] = await claim_deliveries(pool, letter.id, lease=lease, limit=1)
        await ack_deliveries(pool, letter.id, [DeliveryOutcome.delivered(claim)])

        applied = await ack_deliveries(pool, letter.id, [DeliveryOutcome.failed(claim, "late duplicate")])

        assert applied == set()
        assert (await get_delivery(pool, letter.id, claim.subscription_id)).state is DeliveryState.DELIVERED

    async def test_empty_batch_does_nothing(self, pool: Pool, letter: Letter) -> None:
        """Acknowledging no outcomes returns an empty set without a round trip's side effects."""
        assert await ack_deliveries(pool, letter.id, []) == set()

    async def test_rejects_two_outcomes_for_one_recipient(
        self, pool: Pool, lease: LetterLease, letter: Letter, audience: list[int]
    ) -> None:
        """One batch may hold one outcome per recipient: two would race inside one statement."""
        [claim] = await claim_deliveries(pool, letter.id, lease=lease, limit=1)

        with pytest.raises(ValueError, match="at most one outcome"):
            await ack_deliveries(
                pool, letter.id, [DeliveryOutcome.delivered(claim), DeliveryOutcome.failed(claim, "x")]
            )


class TestAckDeliveriesWithSentEmails:
    """The messages the relay accepted are recorded by the acknowledgement, in the same statement."""

    async def test_records_an_email_for_each_applied_outcome_that_has_one(
        self, pool: Pool, lease: LetterLease, letter: Letter, audience: list[int]
    ) -> None:
        """Delivered recipients get their NewsletterEmail row; a failed one, sent nothing, gets none."""
        a, b, c = await claim_deliveries(pool, letter.id, lease=lease, limit=3)

        applied = await ack_deliveries(
            pool,
            letter.id,
            [DeliveryOutcome.delivered(a), DeliveryOutcome.failed(b, "550 no"), DeliveryOutcome.delivered(c)],
            [
                SentEmail(subscription_id=c.subscription_id, message_id="<c@x>", smtp_reply="250 queued C"),
                SentEmail(subscription_id=a.subscription_id, message_id="<a@x>", smtp_reply="250 queued A"),
            ],
        )

        assert applied == {a.subscription_id, b.subscription_id, c.subscription_id}
        emails = await list_sent_emails(pool, letter.id)
        assert [(e.subscription_id, e.message_id, e.smtp_reply) for e in emails] == [
            (a.subscription_id, "<a@x>", "250 queued A"),
            (c.subscription_id, "<c@x>", "250 queued C"),
        ]

    async def test_a_fenced_out_outcome_records_no_email(
        self, pool: Pool, lease: LetterLease, letter: Letter, audience: list[int]
    ) -> None:
        """An outcome whose claim is stale changes nothing, its email included."""
        a, b = await claim_deliveries(pool, letter.id, lease=lease, limit=2)
        forged = ClaimedDelivery(subscription_id=b.subscription_id, attempts=1, lease_token=b.lease_token + 1)

        applied = await ack_deliveries(
            pool,
            letter.id,
            [DeliveryOutcome.delivered(a), DeliveryOutcome.delivered(forged)],
            [
                SentEmail(subscription_id=a.subscription_id, message_id="<a@x>"),
                SentEmail(subscription_id=b.subscription_id, message_id="<b@x>"),
            ],
        )

        assert applied == {a.subscription_id}
        assert [e.subscription_id for e in await list_sent_emails(pool, letter.id)] == [a.subscription_id]
        with pytest.raises(NotFoundError):
            await get_sent_email(pool, letter.id, b.subscription_id)

    async def test_a_resend_keeps_the_first_row(
        self, pool: Pool, lease: LetterLease, letter: Letter, audience: list[int]
    ) -> None:
        """A recipient mailed again after a crash keeps the row of the first message accepted."""
        [first] = await claim_deliveries(pool, letter.id, lease=lease, limit=1)
        await ack_deliveries(
            pool,
            letter.id,
            [DeliveryOutcome.retry(first, "lost reply", timedelta(0))],
            [SentEmail(subscription_id=first.subscription_id, message_id="<m@x>", smtp_reply="250 first")],
        )
        [again, *_] = await claim_deliveries(pool, letter.id, lease=lease, limit=5)
        assert again.subscription_id == first.subscription_id

        applied = await ack_deliveries(
            pool,
            letter.id,
            [DeliveryOutcome.delivered(again)],
            [SentEmail(subscription_id=again.subscription_id, message_id="<m@x>", smtp_reply="250 second")],
        )

        assert applied == {again.subscription_id}
        email = await get_sent_email(pool, letter.id, again.subscription_id)
        assert (email.message_id, email.smtp_reply) == ("<m@x>", "250 first")
        assert len(await list_sent_emails(pool, letter.id)) == 1

    @pytest.mark.parametrize("duplicate", [False, True], ids=["without-outcome", "twice"])
    async def test_rejects_an_email_that_does_not_match_one_outcome(
        self, pool: Pool, lease: LetterLease, letter: Letter, audience: list[int], duplicate: bool
    ) -> None:
        """Each email belongs to exactly one outcome of the batch; anything else is refused unsent."""
        a, b = await claim_deliveries(pool, letter.id, lease=lease, limit=2)
        emails = [SentEmail(subscription_id=a.subscription_id, message_id="<a@x>")]
        emails.append(
            emails[0] if duplicate else SentEmail(subscription_id=b.subscription_id, message_id="<b@x>")
        )

        with pytest.raises(ValueError, match="at most one sent email per subscription"):
            await ack_deliveries(pool, letter.id, [DeliveryOutcome.delivered(a)], emails)

        assert (await get_delivery(pool, letter.id, a.subscription_id)).state is DeliveryState.SENDING
        assert await list_sent_emails(pool, letter.id) == []


class TestMarkSendingUncertain:
    async def test_sending_rows_become_uncertain(
        self, pool: Pool, lease: LetterLease, letter: Letter, audience: list[int]
    ) -> None:
        """Rows left sending become uncertain, with their lease cleared; the count is returned."""
        claims = await claim_deliveries(pool, letter.id, lease=lease, limit=2)

        assert await mark_sending_uncertain(pool, letter.id) == 2

        assert await count_deliveries(pool, letter.id) == DeliveryCounts(pending=3, uncertain=2)
        delivery = await get_delivery(pool, letter.id, claims[0].subscription_id)
        assert (delivery.attempts, delivery.lease_token) == (1, None)


class TestRequeueUncertain:
    async def test_uncertain_rows_become_pending_with_attempts_kept(
        self, pool: Pool, lease: LetterLease, letter: Letter, audience: list[int]
    ) -> None:
        """Requeued rows are pending and claimable again; their earlier attempt still counts."""
        await claim_deliveries(pool, letter.id, lease=lease, limit=2)
        await mark_sending_uncertain(pool, letter.id)

        assert await requeue_uncertain(pool, letter.id) == 2

        claims = await claim_deliveries(pool, letter.id, lease=lease, limit=5)
        assert sorted(claim.attempts for claim in claims) == [1, 1, 1, 2, 2]

    async def test_requeued_rows_go_out_before_rows_nobody_tried(
        self, pool: Pool, lease: LetterLease, letter: Letter, audience: list[int]
    ) -> None:
        """A requeued row keeps its place (its next_attempt_at): resent at once, not after the rest
        of the letter, where another crash could catch it in flight a second time."""
        first = await claim_deliveries(pool, letter.id, lease=lease, limit=2)
        await mark_sending_uncertain(pool, letter.id)
        await requeue_uncertain(pool, letter.id)

        again = await claim_deliveries(pool, letter.id, lease=lease, limit=2)

        assert [claim.subscription_id for claim in again] == [claim.subscription_id for claim in first]


class TestRecoverDeliveries:
    async def test_resend_policy_requeues_the_rows_in_flight(
        self, pool: Pool, lease: LetterLease, letter: Letter, audience: list[int]
    ) -> None:
        """With resend, rows left sending end up pending (at-least-once)."""
        await claim_deliveries(pool, letter.id, lease=lease, limit=2)

        recovery = await recover_deliveries(pool, letter.id, UncertainPolicy.RESEND)

        assert recovery == Recovery(uncertain=2, requeued=2)
        assert await count_deliveries(pool, letter.id) == DeliveryCounts(pending=5)

    async def test_hold_policy_leaves_them_uncertain(
        self, pool: Pool, lease: LetterLease, letter: Letter, audience: list[int]
    ) -> None:
        """With hold, rows left sending stay uncertain, so nobody is mailed twice (at-most-once)."""
        await claim_deliveries(pool, letter.id, lease=lease, limit=2)

        recovery = await recover_deliveries(pool, letter.id, UncertainPolicy.HOLD)

        assert recovery == Recovery(uncertain=2, requeued=0)
        assert await count_deliveries(pool, letter.id) == DeliveryCounts(pending=3, uncertain=2)

    async def test_nothing_in_flight_changes_nothing(
        self, pool: Pool, letter: Letter, audience: list[int]
    ) -> None:
        """Recovery of a letter with no rows sending reports zero and leaves its rows as they were."""
        recovery = await recover_deliveries(pool, letter.id, UncertainPolicy.RESEND)

        assert recovery == Recovery(uncertain=0, requeued=0)
        assert await count_deliveries(pool, letter.id) == DeliveryCounts(pending=5)


class TestCountDeliveries:
    async def test_counts_every_state(
        self, pool: Pool, lease: LetterLease, letter: Letter, subscribe: Subscribe
    ) -> None:
        """One query reports how many rows are in each of the six states."""
        await subscribe(7)
        await fix_audience(pool, letter.id)
        a, b, c, _ = await claim_deliveries(pool, letter.id, lease=lease, limit=4)
        await ack_deliveries(
            pool,
            letter.id,
            [
                DeliveryOutcome.delivered(a),
                DeliveryOutcome.failed(b, "550"),
                DeliveryOutcome.skipped(c, "bounced"),
            ],
        )
        await mark_sending_uncertain(pool, letter.id)
        await claim_deliveries(pool, letter.id, lease=lease, limit=1)

        counts = await count_deliveries(pool, letter.id)

        assert counts == DeliveryCounts(pending=2, sending=1, delivered=1, failed=1, skipped=1, uncertain=1)
        assert counts.total == 7

    async def test_unknown_letter_counts_nothing(self, pool: Pool) -> None:
        """A letter with no deliveries (or none at all) has every count at zero."""
        assert await count_deliveries(pool, 12345) == DeliveryCounts()


class TestRetryFailed:
    async def test_failed_rows_become_pending_with_attempts_reset(
        self, pool: Pool, lease: LetterLease, letter: Letter, audience: list[int]
    ) -> None:
        """Dead letters are pending again with a fresh attempt budget; other rows are untouched."""
        a, b = await claim_deliveries(pool, letter.id, lease=lease, limit=2)
        await ack_deliveries(
            pool, letter.id, [DeliveryOutcome.failed(a, "550"), DeliveryOutcome.delivered(b)]
        )

        assert await retry_failed(pool, letter.id) == 1

        retried = await get_delivery(pool, letter.id, a.subscription_id)
        assert (retried.state, retried.attempts) == (DeliveryState.PENDING, 0)
        assert (await get_delivery(pool, letter.id, b.subscription_id)).state is DeliveryState.DELIVERED
        assert a.subscription_id in {
            claim.subscription_id for claim in await claim_deliveries(pool, letter.id, lease=lease, limit=5)
        }

"""The deliveries map: one row per (letter, subscription), claimed, acknowledged and recovered.

The life of a row::

    fix_audience      ->  pending
    claim_deliveries  :   pending   -> sending    (attempts + 1, a fresh lease token; due rows only;
                                       only under the letter's live lease, see below)
    ack_deliveries    :   sending   -> delivered | failed | skipped | pending (retry later, or a
                                       release that gives the attempt back)
                          only if the row is still sending under the token presented (fencing)
    recovery          :   sending   -> uncertain  (the process died mid-send)
                          uncertain -> pending    (policy resend; attempts kept) or stays (hold)
    retry_failed      :   failed    -> pending    (attempts reset: a person asked for it)

Claims commit at once and the sending happens outside any transaction; acks are batched into one
``UPDATE ... FROM unnest(...)`` per batch, which also records the messages the relay accepted.
The fencing token means an ack from a task whose claim was rescued meanwhile (a zombie) changes
nothing, and the caller learns which acks were applied.
See the composite recipe (c.6) of the job-queues reference.

Claims are fenced per letter too: a claim presents the node's
:class:`~mailman.services.store.models.LetterLease` and claims nothing unless that lease is the letter's,
live, and the letter is sending. It share-locks the letter's row while it claims, so a takeover
(which locks the row to change the lease) waits for a claim in progress, and a claim that comes
after a takeover sees it: the new holder's recovery finds every row the old holder claimed, and the
old holder cannot claim again. It then gets :class:`~mailman.services.errors.ClaimRefusedError`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg

from mailman.services.errors import ClaimRefusedError, NotFoundError
from mailman.services.store.database import Executor, transaction, translate_errors
from mailman.services.store.models import (
    Audience,
    ClaimedDelivery,
    ClaimedRecipient,
    Delivery,
    DeliveryCounts,
    DeliveryOutcome,
    DeliveryState,
    LetterLease,
    LetterStatus,
    Recovery,
    SentEmail,
    SubscriptionStatus,
    UncertainPolicy,
)
from mailman.services.store.queries import newsletter_emails

__all__ = [
    "ack_deliveries",
    "claim_deliveries",
    "claim_recipients",
    "count_deliveries",
    "dead_letters",
    "fix_audience",
    "get_delivery",
    "list_deliveries",
    "mark_sending_uncertain",
    "next_due_in",
    "pending_deliveries",
    "recover_deliveries",
    "requeue_uncertain",
    "retry_failed",
]

# --- Fixing the audience -------------------------------------------------------------------------
# The letter row is updated first: that locks it, so of two concurrent callers the second waits,
# then finds the letter already sending and inserts nothing.
START_SENDING = """
UPDATE letters
SET status = 'sending', updated_at = now()
WHERE id = $1 AND status IN ('draft', 'scheduled')
RETURNING newsletter_id
"""

SELECT_LETTER_STATUS = "SELECT status FROM letters WHERE id = $1"

INSERT_AUDIENCE = """
WITH inserted AS (
    INSERT INTO deliveries (letter_id, subscription_id, state, last_error)
    SELECT $1::bigint, id,
        CASE WHEN status = 'active' THEN 'pending' ELSE 'skipped' END,
        CASE WHEN status = 'active' THEN NULL ELSE 'subscription ' || status END
    FROM subscriptions
    WHERE newsletter_id = $2
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM inserted
"""

INSERT_AUDIENCE_SUBSET = """
WITH inserted AS (
    INSERT INTO deliveries (letter_id, subscription_id, state, last_error)
    SELECT $1::bigint, id,
        CASE WHEN status = 'active' THEN 'pending' ELSE 'skipped' END,
        CASE WHEN status = 'active' THEN NULL ELSE 'subscription ' || status END
    FROM subscriptions
    WHERE newsletter_id = $2 AND id = ANY($3::bigint[])
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM inserted
"""

ANALYZE_DELIVERIES = "ANALYZE deliveries"
ANALYZE_AFTER = 1000
"""Audiences at least this large refresh the deliveries table's planner statistics."""

RECORD_AUDIENCE = """
UPDATE letters
SET mail_order = mail_order || jsonb_build_object('audience_size', $2::bigint, 'started_at', now())
WHERE id = $1
"""

COUNT_AUDIENCE = "SELECT count(*) FROM deliveries WHERE letter_id = $1"

# --- Reading -------------------------------------------------------------------------------------
SELECT_DELIVERY = """
SELECT letter_id, subscription_id, state, attempts, last_error, next_attempt_at, lease_token, updated_at
FROM deliveries
WHERE letter_id = $1 AND subscription_id = $2
"""

# Keyset pagination on the primary key: pass the last subscription_id of a page to get the next.
SELECT_PAGE_IN_STATE = """
SELECT letter_id, subscription_id, state, attempts, last_error, next_attempt_at, lease_token, updated_at
FROM deliveries
WHERE letter_id = $1 AND state = $2 AND subscription_id > $3
ORDER BY subscription_id
LIMIT $4
"""

COUNT_BY_STATE = """
SELECT count(*) FILTER (WHERE state = 'pending')   AS pending,
       count(*) FILTER (WHERE state = 'sending')   AS sending,
       count(*) FILTER (WHERE state = 'delivered') AS delivered,
       count(*) FILTER (WHERE state = 'failed')    AS failed,
       count(*) FILTER (WHERE state = 'skipped')   AS skipped,
       count(*) FILTER (WHERE state = 'uncertain') AS uncertain
FROM deliveries
WHERE letter_id = $1
"""

# Served by deliveries_pending_idx: the first entry of the letter's pending range.
SECONDS_UNTIL_NEXT_DUE = """
SELECT extract(epoch FROM min(next_attempt_at) - now())::float8
FROM deliveries
WHERE letter_id = $1 AND state = 'pending'
"""

# --- Claim and acknowledge -----------------------------------------------------------------------
# MATERIALIZED keeps the planner from turning the LIMITed, locked subquery into a nested loop that
# updates more rows than LIMIT (Oban's "optimization fence"); SKIP LOCKED lets concurrent claimers
# take disjoint rows instead of queueing on the first ones. The UPDATE finds the locked rows by ctid
# (a TID scan: one heap fetch per row) whatever the statistics say. Joined on the key alone, a new
# letter that ANALYZE has not seen yet is estimated at one row and the planner scans all of the
# letter's deliveries for every claim (measured: 50 ms instead of 0.6 ms per claim of 25 at 10,000
# recipients, and growing with the letter). The key is still compared, as a guard.
#
# The lease CTE fences the claim by the letter's lease ($3, the holder's token; see the module
# docstring): one primary-key probe of the letter, checked once (an InitPlan) before any delivery
# is read. FOR SHARE, not FOR KEY SHARE: a key-share lock does not conflict with the takeover's
# non-key update, and would let this claim go on with the lease its snapshot saw; FOR SHARE waits
# for the takeover to commit and then re-checks the letter's newest row version. Share locks do not
# conflict with each other nor with the foreign-key checks of a flush, so claims never queue.
# The claim, joined with what sending needs of each subscription: one round trip per batch.
CLAIM_RECIPIENTS = """
WITH lease AS MATERIALIZED (
    SELECT FROM letters
    WHERE id = $1 AND owner_token = $3 AND lease_expires_at > now() AND status = 'sending'
    FOR SHARE
), claimable AS MATERIALIZED (
    SELECT ctid, subscription_id
    FROM deliveries
    WHERE letter_id = $1 AND state = 'pending' AND next_attempt_at <= now() AND EXISTS (SELECT FROM lease)
    ORDER BY next_attempt_at, subscription_id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE deliveries AS d
    SET state = 'sending',
        attempts = d.attempts + 1,
        lease_token = nextval('delivery_lease_token'),
        updated_at = now()
    FROM claimable
    WHERE d.ctid = claimable.ctid AND d.letter_id = $1 AND d.subscription_id = claimable.subscription_id
    RETURNING d.subscription_id, d.attempts, d.lease_token
)
SELECT claimed.subscription_id, claimed.attempts, claimed.lease_token,
       s.email, s.name, s.status, s.unsubscribe_token
FROM claimed
JOIN subscriptions AS s ON s.id = claimed.subscription_id
ORDER BY claimed.subscription_id
"""

# Read only after a claim came back empty: nothing was due, or the fence refused it (and why).
CLAIM_FENCE = """
SELECT status, owner_node, owner_token = $2 AS ours, lease_expires_at > now() AS live, lease_expires_at
FROM letters
WHERE id = $1
"""

# Fenced: a row is updated only while it is still sending under the token of the claim being
# acknowledged. Arrays keep the statement's shape fixed whatever the batch size (one prepared plan).
# The messages the relay accepted ($8, $9: a Message-ID, or null for an outcome without a message)
# are recorded in the same statement, for the rows actually updated only: one round trip and one
# implicit transaction per batch instead of BEGIN, two statements and COMMIT.
_RECORD_ACCEPTED = newsletter_emails.insert_sent_emails_from(
    "acked AS sent WHERE sent.message_id IS NOT NULL"
)
ACK = f"""
WITH acked AS (
    UPDATE deliveries AS d
    SET state = outcome.state,
        attempts = CASE WHEN outcome.refund_attempt THEN d.attempts - 1 ELSE d.attempts END,
        last_error = outcome.last_error,
        lease_token = NULL,
        next_attempt_at = CASE
            WHEN outcome.state = 'pending' THEN now() + outcome.retry_after
            ELSE d.next_attempt_at
        END,
        updated_at = now()
    FROM unnest(
        $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::interval[], $7::boolean[],
        $8::text[], $9::text[]
    ) AS outcome(
        subscription_id, lease_token, state, last_error, retry_after, refund_attempt,
        message_id, smtp_reply
    )
    WHERE d.letter_id = $1
      AND d.subscription_id = outcome.subscription_id
      AND d.state = 'sending'
      AND d.lease_token = outcome.lease_token
    RETURNING d.subscription_id, outcome.message_id, outcome.smtp_reply
), recorded AS ({_RECORD_ACCEPTED})
SELECT subscription_id FROM acked
"""

# --- Recovery and retries ------------------------------------------------------------------------
MARK_SENDING_UNCERTAIN = """
WITH changed AS (
    UPDATE deliveries
    SET state = 'uncertain', lease_token = NULL, updated_at = now()
    WHERE letter_id = $1 AND state = 'sending'
    RETURNING 1
)
SELECT count(*) FROM changed
"""

# Attempts are kept: a resend after a crash counts against the same attempt budget. So is
# next_attempt_at (already past): the row keeps its place in the claim order and goes out before the
# rows nobody has tried, rather than last, where a second crash could find it in flight again.
REQUEUE_UNCERTAIN = """
WITH changed AS (
    UPDATE deliveries
    SET state = 'pending', updated_at = now()
    WHERE letter_id = $1 AND state = 'uncertain'
    RETURNING 1
)
SELECT count(*) FROM changed
"""

# Attempts restart from zero: a person decided these recipients deserve a full new budget.
RETRY_FAILED = """
WITH changed AS (
    UPDATE deliveries
    SET state = 'pending', attempts = 0, next_attempt_at = now(), updated_at = now()
    WHERE letter_id = $1 AND state = 'failed'
    RETURNING 1
)
SELECT count(*) FROM changed
"""


@translate_errors
async def fix_audience(
    executor: Executor, letter_id: int, *, subscription_ids: Sequence[int] | None = None
) -> Audience:
    """Fix who receives the letter and start sending it, in one transaction.

    From a draft or scheduled letter: insert one delivery per subscription of its newsletter (only
    those among ``subscription_ids`` when given; ids of other newsletters or unknown ones are
    ignored): pending for an active subscription, skipped with the reason ("subscription
    unsubscribed", "subscription bounced"...) for an inactive one, so that the letter's accounting
    says who was not mailed and why. Then move the letter to sending and record ``audience_size``
    and ``started_at`` in its ``mail_order``. Subscribers who join later do not receive it.

    A letter in any other status is left alone: ``fixed_now`` is False and ``size`` is the number
    of deliveries it already has. Raises NotFoundError if the letter does not exist.
    """
    async with transaction(executor) as connection:
        newsletter_id = await connection.fetchval(START_SENDING, letter_id)
        if newsletter_id is None:
            status = await connection.fetchval(SELECT_LETTER_STATUS, letter_id)
            if status is None:
                raise NotFoundError("letter", letter_id)
            existing: int = await connection.fetchval(COUNT_AUDIENCE, letter_id)
            return Audience(size=existing, fixed_now=False, status=LetterStatus(status))
        if subscription_ids is None:
            size: int = await connection.fetchval(INSERT_AUDIENCE, letter_id, newsletter_id)
        else:
            size = await connection.fetchval(
                INSERT_AUDIENCE_SUBSET, letter_id, newsletter_id, list(subscription_ids)
            )
        await connection.execute(RECORD_AUDIENCE, letter_id, size)
    if size >= ANALYZE_AFTER:
        # A large audience changes the table's statistics at once; without them the planner picks
        # join plans for the batched ack that rescan the letter's rows (10x slower) until
        # autovacuum's analyze comes by. Refresh them now, outside the transaction.
        await executor.execute(ANALYZE_DELIVERIES)
    return Audience(size=size, fixed_now=True, status=LetterStatus.SENDING)


@translate_errors
async def get_delivery(executor: Executor, letter_id: int, subscription_id: int) -> Delivery:
    """One row of the deliveries map; NotFoundError if the subscription is not in the audience."""
    row = await executor.fetchrow(SELECT_DELIVERY, letter_id, subscription_id)
    if row is None:
        raise NotFoundError("delivery", (letter_id, subscription_id))
    return _delivery_from_row(row)


@translate_errors
async def list_deliveries(
    executor: Executor,
    letter_id: int,
    state: DeliveryState,
    *,
    after_subscription_id: int = 0,
    limit: int = 1000,
) -> list[Delivery]:
    """A page of the letter's deliveries in ``state``, by subscription id, after the one given.

    Keyset pagination: pass the last ``subscription_id`` of a page to read the next one, so a page
    costs the same however deep into the audience it is.
    """
    if limit < 1:
        raise ValueError(f"expected a limit >= 1, got {limit}")
    rows = await executor.fetch(
        SELECT_PAGE_IN_STATE, letter_id, DeliveryState(state).value, after_subscription_id, limit
    )
    return [_delivery_from_row(row) for row in rows]


async def pending_deliveries(
    executor: Executor, letter_id: int, *, after_subscription_id: int = 0, limit: int = 1000
) -> list[Delivery]:
    """A keyset page of the letter's pending deliveries (due or not), by subscription id."""
    return await list_deliveries(
        executor, letter_id, DeliveryState.PENDING, after_subscription_id=after_subscription_id, limit=limit
    )


async def dead_letters(
    executor: Executor, letter_id: int, *, after_subscription_id: int = 0, limit: int = 1000
) -> list[Delivery]:
    """A keyset page of the letter's failed deliveries, each with its ``last_error``."""
    return await list_deliveries(
        executor, letter_id, DeliveryState.FAILED, after_subscription_id=after_subscription_id, limit=limit
    )


@translate_errors
async def count_deliveries(executor: Executor, letter_id: int) -> DeliveryCounts:
    """How many of the letter's deliveries are in each state (all zero for an unknown letter)."""
    row = await executor.fetchrow(COUNT_BY_STATE, letter_id)
    assert row is not None
    return DeliveryCounts(
        pending=row["pending"],
        sending=row["sending"],
        delivered=row["delivered"],
        failed=row["failed"],
        skipped=row["skipped"],
        uncertain=row["uncertain"],
    )


@translate_errors
async def next_due_in(executor: Executor, letter_id: int) -> float | None:
    """Seconds until the letter's next pending delivery is due (<= 0: due now); None if none is pending.

    Measured on the database clock, like ``next_attempt_at`` itself, so a sender that found nothing
    to claim knows how long to wait without comparing clocks.
    """
    seconds: float | None = await executor.fetchval(SECONDS_UNTIL_NEXT_DUE, letter_id)
    return seconds


async def claim_deliveries(
    executor: Executor, letter_id: int, *, lease: LetterLease, limit: int
) -> list[ClaimedDelivery]:
    """Claim up to ``limit`` due pending deliveries of the letter for sending, by subscription id.

    Each claimed row becomes sending with one more attempt and a new lease token. Rows locked by a
    concurrent claimer are skipped, so concurrent claims never return the same row. The claim
    commits on its own (unless the caller holds a transaction): send outside any transaction.

    Only the holder of the letter's live ``lease`` claims, and only while the letter is sending:
    otherwise :class:`ClaimRefusedError`, with nothing claimed. An empty list means nothing is due.
    """
    recipients = await claim_recipients(executor, letter_id, lease=lease, limit=limit)
    return [recipient.claim for recipient in recipients]


@translate_errors
async def claim_recipients(
    executor: Executor, letter_id: int, *, lease: LetterLease, limit: int
) -> list[ClaimedRecipient]:
    """Claim like :func:`claim_deliveries`, returning each claim with its subscription's details,
    by subscription id.

    The subscription's email, name, current status and unsubscribe token come from the same
    statement, so a batch of recipient tasks starts after one round trip. Fenced by ``lease`` in
    the same way (:class:`ClaimRefusedError`).
    """
    if limit < 1:
        raise ValueError(f"expected a limit >= 1, got {limit}")
    if lease.letter_id != letter_id:
        raise ValueError(f"expected a lease on letter {letter_id}, got one on letter {lease.letter_id}")
    rows = await executor.fetch(CLAIM_RECIPIENTS, letter_id, limit, lease.token)
    if not rows:
        await _check_fence(executor, lease)
    claimed_at = asyncio.get_running_loop().time()
    return [
        ClaimedRecipient(
            claim=ClaimedDelivery(
                subscription_id=row["subscription_id"],
                attempts=row["attempts"],
                lease_token=row["lease_token"],
            ),
            email=row["email"],
            name=row["name"],
            status=SubscriptionStatus(row["status"]),
            unsubscribe_token=row["unsubscribe_token"],
            claimed_at=claimed_at,
        )
        for row in rows
    ]


async def _check_fence(executor: Executor, lease: LetterLease) -> None:
    """After an empty claim: raise :class:`ClaimRefusedError` if the fence, not the queue, was why."""
    row = await executor.fetchrow(CLAIM_FENCE, lease.letter_id, lease.token)
    if row is None:
        raise NotFoundError("letter", lease.letter_id)
    if not row["ours"]:
        holder = row["owner_node"]
        reason = "nobody holds its lease" if holder is None else f"node {holder} holds its lease"
    elif not row["live"]:
        reason = f"the lease of node {lease.node} expired at {row['lease_expires_at'].isoformat()}"
    elif row["status"] != LetterStatus.SENDING:
        reason = f"the letter is {row['status']}"
    else:
        return
    raise ClaimRefusedError(lease.letter_id, reason)


@translate_errors
async def ack_deliveries(
    executor: Executor,
    letter_id: int,
    outcomes: Sequence[DeliveryOutcome],
    sent_emails: Sequence[SentEmail] = (),
) -> set[int]:
    """Record a batch of outcomes in one statement; return the subscription ids actually updated.

    An outcome is applied only if its row is still sending under the same lease token; one whose
    claim was recovered or re-claimed meanwhile is ignored (compare the result with what was sent).
    A retry (state pending) becomes due ``retry_after`` from now, and a release also gives its
    attempt back; lease tokens are cleared.

    ``sent_emails`` are the messages the relay accepted for some of these outcomes (at most one per
    outcome's subscription): each is recorded as a NewsletterEmail row, in the same statement, if
    its outcome is applied, and kept as it was if the recipient already has one (a resend).
    """
    if not outcomes:
        return set()
    ids = [outcome.subscription_id for outcome in outcomes]
    if len(set(ids)) != len(ids):
        raise ValueError(f"expected at most one outcome per subscription in a batch, got {sorted(ids)}")
    sent = {email.subscription_id: email for email in sent_emails}
    if len(sent) != len(sent_emails) or not sent.keys() <= set(ids):
        raise ValueError(
            "expected at most one sent email per subscription, each with an outcome in the batch, "
            f"got emails for {sorted(email.subscription_id for email in sent_emails)} "
            f"and outcomes for {sorted(ids)}"
        )
    emails = [sent.get(subscription_id) for subscription_id in ids]
    rows = await executor.fetch(
        ACK,
        letter_id,
        ids,
        [outcome.lease_token for outcome in outcomes],
        [outcome.state.value for outcome in outcomes],
        [outcome.last_error for outcome in outcomes],
        [outcome.retry_after for outcome in outcomes],
        [outcome.refund_attempt for outcome in outcomes],
        [None if email is None else email.message_id for email in emails],
        [None if email is None else email.smtp_reply for email in emails],
    )
    return {row["subscription_id"] for row in rows}


@translate_errors
async def mark_sending_uncertain(executor: Executor, letter_id: int) -> int:
    """Turn the letter's sending rows into uncertain ones; return how many there were.

    Call it only when no recipient task of the letter can still be running (at takeover or boot):
    those sends started, but whether the server accepted them is unknown.
    """
    count: int = await executor.fetchval(MARK_SENDING_UNCERTAIN, letter_id)
    return count


@translate_errors
async def requeue_uncertain(executor: Executor, letter_id: int) -> int:
    """Make the letter's uncertain rows pending (due at once, in their place); return how many."""
    count: int = await executor.fetchval(REQUEUE_UNCERTAIN, letter_id)
    return count


@translate_errors
async def recover_deliveries(executor: Executor, letter_id: int, policy: UncertainPolicy) -> Recovery:
    """Recover a letter's deliveries after its sender died, in one transaction.

    Rows left sending become uncertain; then with :attr:`UncertainPolicy.RESEND` every uncertain
    row is pending again (attempts kept), while with :attr:`UncertainPolicy.HOLD` they stay
    uncertain, so that nobody is mailed twice.
    """
    policy = UncertainPolicy(policy)
    async with transaction(executor) as connection:
        uncertain: int = await connection.fetchval(MARK_SENDING_UNCERTAIN, letter_id)
        requeued: int = 0
        if policy is UncertainPolicy.RESEND:
            requeued = await connection.fetchval(REQUEUE_UNCERTAIN, letter_id)
    return Recovery(uncertain=uncertain, requeued=requeued)


@translate_errors
async def retry_failed(executor: Executor, letter_id: int) -> int:
    """Make the letter's failed (dead-lettered) rows pending with attempts reset; return how many.

    The letter itself is not touched: if it is no longer sending, set it sending again so that a
    sender picks the rows up.
    """
    count: int = await executor.fetchval(RETRY_FAILED, letter_id)
    return count


def _delivery_from_row(row: asyncpg.Record) -> Delivery:
    return Delivery(
        letter_id=row["letter_id"],
        subscription_id=row["subscription_id"],
        state=DeliveryState(row["state"]),
        attempts=row["attempts"],
        last_error=row["last_error"],
        next_attempt_at=row["next_attempt_at"],
        lease_token=row["lease_token"],
        updated_at=row["updated_at"],
    )

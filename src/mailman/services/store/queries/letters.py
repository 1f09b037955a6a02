"""Letters: creation, status changes guarded against races, the ``mail_order`` summary, due letters,
and the lease that lets one node (daemon) at a time drive a letter.

The lease, for several daemons on one database (see :class:`~mailman.services.store.models.LetterLease`)::

    acquire_lease   nobody holds it, this node does, or it expired  ->  this node, until now() + ttl
    renew_lease     still this lease (its token)                    ->  until now() + ttl
    lock_lease      still this lease: keep it so until the caller's transaction ends (fenced writes)
    release_lease   still this lease                                ->  nobody (a clean stop)
    letters_to_take_over   letters sending that nobody, this node, or an expired lease holds

Every time is the database's: nodes never compare their own clocks. All of them lock the letter's
row, and so does every claim of recipients (``FOR SHARE``, see :mod:`.deliveries`): a takeover
waits for a claim in progress, and a claim that starts after a takeover sees it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from mailman.services.errors import LeaseLostError, LetterLeasedError, NotFoundError
from mailman.services.store.database import (
    Connection,
    Executor,
    decode_json,
    encode_json,
    transaction,
    translate_errors,
)
from mailman.services.store.models import Letter, LetterLease, LetterStatus, UncertainPolicy

__all__ = [
    "acquire_lease",
    "create_letter",
    "fix_message_domain",
    "get_letter",
    "letters_due",
    "letters_to_take_over",
    "lock_lease",
    "lock_letter",
    "release_lease",
    "renew_lease",
    "schedule_letter",
    "set_letter_status",
    "update_mail_order",
]

# mail_order is read as text and written from text (see mailman.services.store.database), so these
# queries do not depend on a jsonb codec being registered on the connection.
LETTER_COLUMNS = """id, newsletter_id, subject, text_body, html_body, status, send_at, uncertain_policy,
mail_order::text AS mail_order, created_at, updated_at, owner_node, lease_expires_at, message_domain"""
"""What every query that returns letters selects: the columns ``_letter_from_row`` reads."""

INSERT_LETTER = f"""
INSERT INTO letters (newsletter_id, subject, text_body, html_body, uncertain_policy, message_domain)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING {LETTER_COLUMNS}
"""

SELECT_LETTER = f"""
SELECT {LETTER_COLUMNS}
FROM letters
WHERE id = $1
"""

LETTER_EXISTS = "SELECT EXISTS (SELECT FROM letters WHERE id = $1)"

# $3 is NULL for "whatever the current status"; a letter already in the target status is unchanged.
UPDATE_STATUS = """
UPDATE letters
SET status = $2, updated_at = now()
WHERE id = $1
  AND status <> $2
  AND ($3::text[] IS NULL OR status = ANY($3::text[]))
RETURNING id
"""

SCHEDULE_LETTER = """
UPDATE letters
SET status = 'scheduled', send_at = $2, updated_at = now()
WHERE id = $1 AND status IN ('draft', 'scheduled')
RETURNING id
"""

# A shallow merge: top-level keys of $2 replace those of the summary, other keys stay.
MERGE_MAIL_ORDER = f"""
UPDATE letters
SET mail_order = mail_order || $2::text::jsonb, updated_at = now()
WHERE id = $1
RETURNING {LETTER_COLUMNS}
"""

SELECT_DUE = f"""
SELECT {LETTER_COLUMNS}
FROM letters
WHERE status = 'scheduled' AND send_at <= now()
ORDER BY send_at, id
LIMIT $1
"""

# Served by letters_sending_idx. "Or this node": at boot, the letters a previous run of this node
# (same node_name) left sending, whose lease it still holds; later, ones whose service is gone.
# Paused and cancelled letters whose holder died without releasing them are taken too (a sender
# stops cleanly only by releasing): their service recovers the rows that holder left 'sending'.
SELECT_TO_TAKE_OVER = f"""
SELECT {LETTER_COLUMNS}
FROM letters
WHERE status = 'sending'
  AND (owner_node IS NULL OR owner_node = $1 OR lease_expires_at <= now())
UNION ALL
SELECT {LETTER_COLUMNS}
FROM letters
WHERE status IN ('paused', 'cancelled')
  AND owner_token IS NOT NULL
  AND (owner_node = $1 OR lease_expires_at <= now())
ORDER BY id
"""

# --- The lease ----------------------------------------------------------------------------------
# NO KEY UPDATE, the lock an UPDATE takes: it waits for claims in progress (FOR SHARE) and makes
# later ones wait, but not the foreign-key checks of rows inserted meanwhile (KEY SHARE).
LOCK_FOR_LEASE = """
SELECT owner_node, lease_expires_at, lease_expires_at > now() AS live
FROM letters
WHERE id = $1
FOR NO KEY UPDATE
"""

# The holder taking its own live lease again keeps the token, so that its running sender stays
# valid; any other taking draws a new token, which fences out whoever held the lease before.
TAKE_LEASE = """
UPDATE letters
SET owner_node = $2,
    owner_token = CASE
        WHEN owner_node = $2 AND lease_expires_at > now() THEN owner_token
        ELSE nextval('letter_lease_token')
    END,
    lease_expires_at = now() + $3::interval
WHERE id = $1
RETURNING owner_token, lease_expires_at
"""

# A lease that expired is still renewed while its token is the letter's: nobody took it over, and
# a takeover would have drawn a new token first (under the row lock).
RENEW_LEASE = """
UPDATE letters
SET lease_expires_at = now() + $3::interval
WHERE id = $1 AND owner_token = $2
RETURNING status, lease_expires_at
"""

LOCK_LEASE = """
SELECT status
FROM letters
WHERE id = $1 AND owner_token = $2
FOR NO KEY UPDATE
"""

RELEASE_LEASE = """
UPDATE letters
SET owner_node = NULL, owner_token = NULL, lease_expires_at = NULL,
    mail_order = mail_order || $3::text::jsonb, updated_at = now()
WHERE id = $1 AND owner_token = $2
RETURNING id
"""

SELECT_OWNER = "SELECT owner_node FROM letters WHERE id = $1"

# The letter's row locked for the caller's transaction, whoever holds its lease: what the commands
# that race the letter's sender (retry, and the sender's own settling) agree through.
LOCK_LETTER = f"""
SELECT {LETTER_COLUMNS}, owner_token IS NOT NULL AND lease_expires_at > now() AS leased
FROM letters
WHERE id = $1
FOR NO KEY UPDATE
"""

# The first domain fixed wins: every later call, on any node, gets that one back.
FIX_MESSAGE_DOMAIN = """
UPDATE letters
SET message_domain = COALESCE(message_domain, $2)
WHERE id = $1
RETURNING message_domain
"""


@translate_errors
async def create_letter(
    executor: Executor,
    *,
    newsletter_id: int,
    subject: str,
    text_body: str,
    html_body: str | None = None,
    uncertain_policy: UncertainPolicy = UncertainPolicy.RESEND,
    message_domain: str | None = None,
) -> Letter:
    """Create a draft letter; NotFoundError if the newsletter does not exist.

    ``message_domain`` fixes the right-hand side of the letter's Message-IDs now (the daemon passes
    its setting); None leaves it to be fixed when the letter's sending first starts
    (:func:`fix_message_domain`).
    """
    row = await executor.fetchrow(
        INSERT_LETTER,
        newsletter_id,
        subject,
        text_body,
        html_body,
        UncertainPolicy(uncertain_policy).value,
        message_domain,
    )
    assert row is not None
    return _letter_from_row(row)


@translate_errors
async def get_letter(executor: Executor, letter_id: int) -> Letter:
    """The letter ``letter_id``; NotFoundError if there is none."""
    row = await executor.fetchrow(SELECT_LETTER, letter_id)
    if row is None:
        raise NotFoundError("letter", letter_id)
    return _letter_from_row(row)


@translate_errors
async def set_letter_status(
    executor: Executor,
    letter_id: int,
    status: LetterStatus,
    *,
    expected: LetterStatus | Collection[LetterStatus] | None = None,
) -> bool:
    """Move the letter to ``status``; return whether it changed.

    With ``expected``, only from that status (or one of those statuses): a compare-and-set, so two
    actors racing on one letter cannot both win. Returns False when the letter is in another status
    or already in ``status``; raises NotFoundError when it does not exist.
    """
    if expected is None:
        allowed = None
    elif isinstance(expected, str):  # one status (a StrEnum member is a str, and so is "draft")
        allowed = [LetterStatus(expected).value]
    else:
        allowed = [LetterStatus(value).value for value in expected]
    changed = await executor.fetchval(UPDATE_STATUS, letter_id, LetterStatus(status).value, allowed)
    if changed is None and not await executor.fetchval(LETTER_EXISTS, letter_id):
        raise NotFoundError("letter", letter_id)
    return changed is not None


@translate_errors
async def schedule_letter(executor: Executor, letter_id: int, send_at: datetime) -> bool:
    """Schedule a draft (or reschedule a scheduled) letter for ``send_at``; return whether it was.

    ``send_at`` must be timezone-aware. Returns False when the letter is sending or done.
    """
    if send_at.tzinfo is None:
        raise ValueError(f"expected a timezone-aware send_at, got {send_at!r}")
    changed = await executor.fetchval(SCHEDULE_LETTER, letter_id, send_at)
    if changed is None and not await executor.fetchval(LETTER_EXISTS, letter_id):
        raise NotFoundError("letter", letter_id)
    return changed is not None


@translate_errors
async def update_mail_order(executor: Executor, letter_id: int, changes: Mapping[str, Any]) -> Letter:
    """Merge ``changes`` into the letter's summary (top-level keys replace); return the letter.

    Values must be JSON-serialisable; datetimes are stored as their ISO text.
    """
    row = await executor.fetchrow(MERGE_MAIL_ORDER, letter_id, encode_json(changes))
    if row is None:
        raise NotFoundError("letter", letter_id)
    return _letter_from_row(row)


@translate_errors
async def letters_due(executor: Executor, *, limit: int = 100) -> list[Letter]:
    """Scheduled letters whose ``send_at`` has come (by the database clock), earliest first."""
    return [_letter_from_row(row) for row in await executor.fetch(SELECT_DUE, limit)]


@translate_errors
async def letters_to_take_over(executor: Executor, node: str) -> list[Letter]:
    """Letters sending that ``node`` may take: held by nobody, by ``node`` itself, or by an expired lease.

    Those whose lease another node holds and renews are left out: that node is sending them. Also
    letters paused or cancelled whose lease is still held by ``node`` or expired: their sender died
    before it could stop cleanly, and rows it had in flight wait to be recovered.
    """
    return [_letter_from_row(row) for row in await executor.fetch(SELECT_TO_TAKE_OVER, node)]


@translate_errors
async def acquire_lease(executor: Executor, letter_id: int, *, node: str, ttl: timedelta) -> LetterLease:
    """Take the letter's lease for ``node`` until ``ttl`` from now; the lease.

    Granted when nobody holds the lease, when ``node`` holds it (it is extended, token unchanged),
    or when it has expired (a takeover: a new token, which fences out the node that held it).
    Raises :class:`LetterLeasedError` when another node holds a live lease, and
    :class:`NotFoundError` when the letter does not exist. The letter's status does not matter.
    """
    _check_ttl(ttl)
    async with transaction(executor) as connection:
        row = await connection.fetchrow(LOCK_FOR_LEASE, letter_id)
        if row is None:
            raise NotFoundError("letter", letter_id)
        if row["live"] and row["owner_node"] != node:
            raise LetterLeasedError(letter_id, node=row["owner_node"], expires_at=row["lease_expires_at"])
        taken = await connection.fetchrow(TAKE_LEASE, letter_id, node, ttl)
    assert taken is not None
    return LetterLease(
        letter_id=letter_id, node=node, token=taken["owner_token"], expires_at=taken["lease_expires_at"]
    )


@translate_errors
async def renew_lease(
    executor: Executor, lease: LetterLease, ttl: timedelta
) -> tuple[LetterLease, LetterStatus]:
    """Extend ``lease`` until ``ttl`` from now; the renewed lease and the letter's status.

    The status tells the holder whether the letter was paused or cancelled from elsewhere. Raises
    :class:`LeaseLostError` when the lease is no longer the letter's: another node took it over.
    """
    _check_ttl(ttl)
    row = await executor.fetchrow(RENEW_LEASE, lease.letter_id, lease.token, ttl)
    if row is None:
        raise await _lost(executor, lease)
    renewed = LetterLease(
        letter_id=lease.letter_id, node=lease.node, token=lease.token, expires_at=row["lease_expires_at"]
    )
    return renewed, LetterStatus(row["status"])


@translate_errors
async def lock_lease(connection: Connection, lease: LetterLease) -> LetterStatus:
    """Inside the caller's transaction: check that ``lease`` is still the letter's; the letter's status.

    The letter's row stays locked until the transaction ends, so no other node can take the lease
    over meanwhile: the writes that follow in the transaction are fenced by the lease. Expired but
    not taken over counts as held. Raises :class:`LeaseLostError` otherwise.
    """
    status = await connection.fetchval(LOCK_LEASE, lease.letter_id, lease.token)
    if status is None:
        raise await _lost(connection, lease)
    return LetterStatus(status)


@translate_errors
async def release_lease(
    executor: Executor, lease: LetterLease, mail_order: Mapping[str, Any] | None = None
) -> None:
    """Give ``lease`` up (a clean stop), merging ``mail_order`` into the summary in the same statement.

    Another node may take the letter at once. Raises :class:`LeaseLostError` when the lease is no
    longer the letter's (then nothing is written).
    """
    released = await executor.fetchval(
        RELEASE_LEASE, lease.letter_id, lease.token, encode_json(mail_order or {})
    )
    if released is None:
        raise await _lost(executor, lease)


@translate_errors
async def lock_letter(connection: Connection, letter_id: int) -> tuple[Letter, bool]:
    """Inside the caller's transaction: lock the letter's row; the letter, and whether a node holds a
    live lease on it (is sending it).

    The row stays locked until the transaction ends. Every change that must not interleave with the
    letter's sender settling it (a retry of failed recipients; the sender's own count-then-finish,
    through :func:`lock_lease`) takes this lock first, so one of them sees the other's effect whole.
    Raises NotFoundError when the letter does not exist.
    """
    row = await connection.fetchrow(LOCK_LETTER, letter_id)
    if row is None:
        raise NotFoundError("letter", letter_id)
    return _letter_from_row(row), bool(row["leased"])


@translate_errors
async def fix_message_domain(executor: Executor, letter_id: int, domain: str) -> str:
    """Fix the letter's Message-ID domain to ``domain`` unless one is fixed already; the one in force.

    A letter's Message-IDs must be the same on every node and across any change of settings, so
    that a resent message carries the Message-ID of the first copy. NotFoundError if no such letter.
    """
    fixed: str | None = await executor.fetchval(FIX_MESSAGE_DOMAIN, letter_id, domain)
    if fixed is None:
        raise NotFoundError("letter", letter_id)
    return fixed


def _check_ttl(ttl: timedelta) -> None:
    if ttl <= timedelta(0):
        raise ValueError(f"expected a positive ttl, got {ttl!r}")


async def _lost(executor: Executor, lease: LetterLease) -> LeaseLostError:
    holder: str | None = await executor.fetchval(SELECT_OWNER, lease.letter_id)
    return LeaseLostError(lease.letter_id, node=lease.node, holder=holder)


def _letter_from_row(row: asyncpg.Record) -> Letter:
    return Letter(
        id=row["id"],
        newsletter_id=row["newsletter_id"],
        subject=row["subject"],
        text_body=row["text_body"],
        html_body=row["html_body"],
        status=LetterStatus(row["status"]),
        send_at=row["send_at"],
        uncertain_policy=UncertainPolicy(row["uncertain_policy"]),
        mail_order=decode_json(row["mail_order"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        owner_node=row["owner_node"],
        lease_expires_at=row["lease_expires_at"],
        message_domain=row["message_domain"],
    )

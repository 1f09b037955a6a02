"""Letters: creation, status changes guarded against races, the ``mail_order`` summary, due letters."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

import asyncpg

from mailman.services.database import Executor, decode_json, encode_json, translate_errors
from mailman.services.errors import NotFoundError
from mailman.services.models import Letter, LetterStatus, UncertainPolicy

__all__ = [
    "create_letter",
    "get_letter",
    "letters_due",
    "letters_left_sending",
    "schedule_letter",
    "set_letter_status",
    "update_mail_order",
]

# mail_order is read as text and written from text (see mailman.services.database), so these
# queries do not depend on a jsonb codec being registered on the connection.
INSERT_LETTER = """
INSERT INTO letters (newsletter_id, subject, text_body, html_body, uncertain_policy)
VALUES ($1, $2, $3, $4, $5)
RETURNING id, newsletter_id, subject, text_body, html_body, status, send_at, uncertain_policy,
          mail_order::text AS mail_order, created_at, updated_at
"""

SELECT_LETTER = """
SELECT id, newsletter_id, subject, text_body, html_body, status, send_at, uncertain_policy,
       mail_order::text AS mail_order, created_at, updated_at
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
MERGE_MAIL_ORDER = """
UPDATE letters
SET mail_order = mail_order || $2::text::jsonb, updated_at = now()
WHERE id = $1
RETURNING id, newsletter_id, subject, text_body, html_body, status, send_at, uncertain_policy,
          mail_order::text AS mail_order, created_at, updated_at
"""

SELECT_DUE = """
SELECT id, newsletter_id, subject, text_body, html_body, status, send_at, uncertain_policy,
       mail_order::text AS mail_order, created_at, updated_at
FROM letters
WHERE status = 'scheduled' AND send_at <= now()
ORDER BY send_at, id
LIMIT $1
"""

SELECT_LEFT_SENDING = """
SELECT id, newsletter_id, subject, text_body, html_body, status, send_at, uncertain_policy,
       mail_order::text AS mail_order, created_at, updated_at
FROM letters
WHERE status = 'sending'
ORDER BY id
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
) -> Letter:
    """Create a draft letter; NotFoundError if the newsletter does not exist."""
    row = await executor.fetchrow(
        INSERT_LETTER, newsletter_id, subject, text_body, html_body, UncertainPolicy(uncertain_policy).value
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
async def letters_left_sending(executor: Executor) -> list[Letter]:
    """Letters in status sending: at boot, those a previous run did not finish."""
    return [_letter_from_row(row) for row in await executor.fetch(SELECT_LEFT_SENDING)]


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
    )

"""The params of every RPC method, as strict pydantic models: what the daemon accepts, exactly.

Each model is ``strict`` (no coercion: ``"5"`` is not an id, ``true`` is not a number) and
``extra="forbid"`` (a misspelt field is an error, not silently ignored). Ids are positive integers
that fit Postgres' ``bigint``. Text that ends up in a mail header (names, subjects, addresses) must be
one line: a newline there would let a caller inject headers.

Datetimes travel as ISO 8601 strings *with* a timezone (``2025-01-31T09:00:00+01:00`` or ``...Z``);
a naive one is rejected rather than guessed.

Email addresses are checked for shape only (``local@domain``, no spaces, at most 254 characters):
whether a mailbox exists is the SMTP server's business.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime
from typing import Annotated, Any, Final, Literal, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

__all__ = [
    "MAX_RECIPIENTS",
    "MAX_SUBSCRIBERS",
    "LetterCancelParams",
    "LetterCreateParams",
    "LetterPauseParams",
    "LetterResumeParams",
    "LetterRetryFailedParams",
    "LetterSendParams",
    "LetterStatusParams",
    "NewsletterCreateParams",
    "Params",
    "SubscriberParams",
    "SubscribersAddParams",
    "SystemConfigureParams",
    "SystemHealthParams",
    "SystemTreeParams",
]

MAX_RECIPIENTS: Final = 1_000_000
MAX_SUBSCRIBERS: Final = 100_000
_BIGINT_MAX: Final = 2**63 - 1

# One dot-atom-ish local part (any printable character but the RFC 5322 specials and spaces), then a
# host name of ASCII labels: internationalised domains must be sent in their punycode (xn--) form.
_EMAIL_RE: Final = re.compile(
    r"[^\s@\"(),:;<>\[\]\\]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def _check_email(value: str) -> str:
    if len(value) > 254 or not _EMAIL_RE.fullmatch(value) or not value.isprintable():
        raise ValueError("expected an email address like name@example.org")
    return value


def _check_one_line(value: str) -> str:
    if any(unicodedata.category(char) == "Cc" for char in value):
        raise ValueError("must be one line, without control characters")
    return value


def _check_not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _check_url_template(value: str) -> str:
    if "{token}" not in value:
        raise ValueError("must contain {token}, where each subscriber's unsubscribe token goes")
    if any(char.isspace() or unicodedata.category(char) == "Cc" for char in value):
        raise ValueError("must not contain spaces or control characters")
    return value


def _parse_iso_datetime(value: Any) -> Any:
    if isinstance(value, datetime):  # built in-process; JSON can only bring a string
        return value
    if not isinstance(value, str):
        raise ValueError("expected an ISO 8601 datetime string, like 2025-01-31T09:00:00+00:00")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            "expected an ISO 8601 datetime with a timezone, like 2025-01-31T09:00:00+00:00"
        ) from None


Id = Annotated[int, Field(gt=0, le=_BIGINT_MAX)]
"""A row id: an integer in 1..2**63-1 (Postgres ``bigint``)."""
LetterId = Id
Email = Annotated[str, AfterValidator(_check_email)]
"""An email address, checked for shape (``local@domain``), at most 254 characters."""
OneLine = Annotated[str, AfterValidator(_check_one_line)]
IsoDatetime = Annotated[AwareDatetime, BeforeValidator(_parse_iso_datetime)]
"""An ISO 8601 string with a timezone, parsed into an aware ``datetime``."""


class Params(BaseModel):
    """Base of every method's params: strict, no unknown fields, immutable."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class LetterSendParams(Params):
    """``letter.send``: start sending a letter, to every active subscriber or to ``recipients``.

    ``recipients`` are subscription ids (at most 1,000,000); leave it out to send to the whole
    audience. An empty list is refused, since sending to nobody is surely a mistake.
    """

    letter_id: LetterId
    recipients: Annotated[list[Id], Field(min_length=1, max_length=MAX_RECIPIENTS)] | None = None


class _LetterRef(Params):
    letter_id: LetterId


class LetterStatusParams(_LetterRef):
    """``letter.status``: where a letter is, and how many of its recipients are in each state."""


class LetterPauseParams(_LetterRef):
    """``letter.pause``: stop starting new recipients; the ones in flight finish."""


class LetterResumeParams(_LetterRef):
    """``letter.resume``: go on sending a paused letter."""


class LetterCancelParams(_LetterRef):
    """``letter.cancel``: stop sending for good; recipients not yet mailed are skipped."""


class LetterRetryFailedParams(_LetterRef):
    """``letter.retry_failed``: put the letter's failed (dead-lettered) recipients back to pending."""


class NewsletterCreateParams(Params):
    """``newsletter.create``: a user (found or created by ``owner_email``) and their newsletter.

    ``unsubscribe_url_template`` must contain ``{token}``; left out, the daemon's default is used.
    """

    owner_email: Email
    name: Annotated[OneLine, Field(max_length=200), AfterValidator(_check_not_blank)]
    from_address: Email
    reply_to: Email | None = None
    unsubscribe_url_template: (
        Annotated[str, Field(min_length=1, max_length=2000), AfterValidator(_check_url_template)] | None
    ) = None


class SubscriberParams(Params):
    """One address to subscribe: ``email``, and the subscriber's ``name`` (may be empty)."""

    email: Email
    name: Annotated[OneLine, Field(max_length=200)] = ""


class SubscribersAddParams(Params):
    """``subscribers.add``: subscribe up to 100,000 addresses to a newsletter at once.

    In practice a request line is at most 1 MiB, which holds some 15,000-20,000 addresses: send
    bigger lists in several calls.
    """

    newsletter_id: Id
    subscribers: Annotated[list[SubscriberParams], Field(min_length=1, max_length=MAX_SUBSCRIBERS)]


class LetterCreateParams(Params):
    """``letter.create``: a draft letter, or a scheduled one when ``send_at`` is given."""

    newsletter_id: Id
    subject: Annotated[OneLine, Field(max_length=998), AfterValidator(_check_not_blank)]
    text_body: Annotated[str, AfterValidator(_check_not_blank)]
    html_body: Annotated[str, Field(min_length=1)] | None = None
    send_at: IsoDatetime | None = None
    uncertain_policy: Literal["resend", "hold"] = "resend"
    """What recovery does with this letter's messages in flight at a crash: resend or hold."""


class SystemTreeParams(Params):
    """``system.tree``: no params."""


class SystemHealthParams(Params):
    """``system.health``: no params."""


class SystemConfigureParams(Params):
    """``system.configure``: change the sending rate (messages per second) and/or concurrency.

    At least one of the two must be given; a field left out keeps its current value. The
    concurrency sizes the SMTP pool live, as ``mailman serve`` does at start: one connection per
    task in flight, at most 64 (the answer says what is in effect).
    """

    rate_limit: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    concurrency: Annotated[int, Field(ge=1, le=1000)] | None = None

    @model_validator(mode="after")
    def _something_to_change(self) -> Self:
        if self.rate_limit is None and self.concurrency is None:
            raise ValueError("give rate_limit, concurrency or both")
        return self

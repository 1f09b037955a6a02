"""The delivery engine's domain objects: frozen rows, their statuses as enums, and query inputs/results.

Rows read from Postgres become these objects in :mod:`mailman.services.queries`; nothing above the
query layer sees a driver record. Statuses are :class:`~enum.StrEnum` members whose values are the
strings stored in the database (and accepted by its ``CHECK`` constraints).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

__all__ = [
    "Audience",
    "ClaimedDelivery",
    "ClaimedRecipient",
    "Delivery",
    "DeliveryCounts",
    "DeliveryOutcome",
    "DeliveryState",
    "Letter",
    "LetterLease",
    "LetterStatus",
    "NewSubscriber",
    "Newsletter",
    "NewsletterEmail",
    "Recovery",
    "SentEmail",
    "Subscription",
    "SubscriptionStatus",
    "UncertainPolicy",
    "User",
]


class SubscriptionStatus(StrEnum):
    """Whether a subscriber receives letters; only ``ACTIVE`` ones join an audience."""

    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"


class LetterStatus(StrEnum):
    """Where a letter is in its life: written, waiting for ``send_at``, going out, or done."""

    DRAFT = "draft"
    SCHEDULED = "scheduled"
    SENDING = "sending"
    PAUSED = "paused"
    SENT = "sent"
    CANCELLED = "cancelled"
    FAILED = "failed"


class DeliveryState(StrEnum):
    """The state of one recipient of one letter in the deliveries map.

    ``PENDING`` waits to be claimed (maybe until ``next_attempt_at``), ``SENDING`` is claimed by a
    recipient task, ``DELIVERED`` / ``FAILED`` / ``SKIPPED`` are final, and ``UNCERTAIN`` is a
    send that started but whose result was never recorded (the process died): see
    :class:`UncertainPolicy`.
    """

    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    FAILED = "failed"
    SKIPPED = "skipped"
    UNCERTAIN = "uncertain"


class UncertainPolicy(StrEnum):
    """What recovery does with uncertain recipients: send again (same Message-ID), or hold them."""

    RESEND = "resend"
    """At-least-once: an uncertain recipient is pending again and may receive the letter twice."""
    HOLD = "hold"
    """At-most-once: uncertain recipients stay uncertain and are reported, never mailed twice."""


@dataclass(frozen=True, slots=True, kw_only=True)
class User:
    """An account; it owns one newsletter."""

    id: int
    email: str
    created_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Newsletter:
    """A user's newsletter: who letters come from, and where subscribers unsubscribe."""

    id: int
    user_id: int
    name: str
    from_address: str
    reply_to: str | None
    unsubscribe_url_template: str
    created_at: datetime

    def unsubscribe_url(self, token: str) -> str:
        """The unsubscribe link for a subscription's ``token``."""
        return self.unsubscribe_url_template.replace("{token}", token)


@dataclass(frozen=True, slots=True, kw_only=True)
class Subscription:
    """One address subscribed to one newsletter."""

    id: int
    newsletter_id: int
    email: str
    name: str
    status: SubscriptionStatus
    status_reason: str | None
    unsubscribe_token: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Letter:
    """One issue of a newsletter, and the summary (``mail_order``) of sending it."""

    id: int
    newsletter_id: int
    subject: str
    text_body: str
    html_body: str | None
    status: LetterStatus
    send_at: datetime | None
    uncertain_policy: UncertainPolicy
    # The jsonb summary: audience_size, started_at, restarts, failure_reason, finished_at, ...
    mail_order: Mapping[str, Any] = field(hash=False)
    created_at: datetime
    updated_at: datetime
    owner_node: str | None = None
    """The node (daemon) holding the letter's lease: the one sending it, or the last one that did
    if ``lease_expires_at`` has passed. None when no node holds it (see :class:`LetterLease`)."""
    lease_expires_at: datetime | None = None
    """When that lease ends unless renewed, by the database's clock."""
    message_domain: str | None = None
    """The right-hand side of the letter's Message-IDs, fixed once for the letter (at creation by
    the daemon, or when its sending first starts) so that a resend carries the first copy's
    Message-ID on any node. None until then."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LetterLease:
    """A node's right to drive one letter until ``expires_at`` (the database's clock).

    Several daemons may share one database; each letter is driven by one of them at a time, the
    holder of its lease. The holder renews the lease while it sends; another node takes the letter
    over only once the lease has expired. ``token`` changes whenever the letter changes hands, and
    every claim of recipients presents it: a node whose lease was taken over claims nobody more.
    """

    letter_id: int
    node: str
    token: int
    expires_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """One recipient of one letter: a row of the deliveries map."""

    letter_id: int
    subscription_id: int
    state: DeliveryState
    attempts: int
    last_error: str | None
    next_attempt_at: datetime
    lease_token: int | None
    updated_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class NewsletterEmail:
    """A message the SMTP server accepted, with its Message-ID and the server's reply."""

    id: int
    letter_id: int
    subscription_id: int
    message_id: str
    smtp_reply: str | None
    sent_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class NewSubscriber:
    """An address to subscribe (input of ``add_subscribers``)."""

    email: str
    name: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Audience:
    """The result of fixing a letter's audience.

    ``fixed_now`` is true when this call moved the letter to ``sending`` and created its deliveries
    (``size`` of them); false when the letter was not a draft or scheduled (``status`` says what it
    is), in which case nothing was inserted and ``size`` is the number of deliveries it already has.
    """

    size: int
    fixed_now: bool
    status: LetterStatus


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimedDelivery:
    """A recipient claimed for sending: ack it with ``lease_token``; ``attempts`` includes this one."""

    subscription_id: int
    attempts: int
    lease_token: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimedRecipient:
    """A claimed delivery with what sending needs of its subscription, read in the same statement.

    ``status`` is the subscription's status at claim time: it may have left ``ACTIVE`` since the
    audience was fixed (an unsubscribe mid-send), in which case the recipient is to be skipped.
    ``claimed_at`` is when (the event loop's monotonic clock): a recipient whose turn to be sent
    comes long after its claim has its subscription read again first.
    """

    claim: ClaimedDelivery
    email: str
    name: str
    status: SubscriptionStatus
    unsubscribe_token: str
    claimed_at: float = 0.0


_OUTCOME_STATES = frozenset(
    {DeliveryState.DELIVERED, DeliveryState.FAILED, DeliveryState.SKIPPED, DeliveryState.UNCERTAIN}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryOutcome:
    """The result of sending to one claimed recipient, to be acknowledged in a batch.

    ``state`` is final (delivered, failed, skipped), ``UNCERTAIN`` (the message may or may not have
    reached the relay, and the letter's policy says to hold such rows for an operator) or ``PENDING``
    for a retry, which becomes due ``retry_after`` from the database's clock (so nodes with skewed
    clocks agree). Build one with :meth:`delivered`, :meth:`failed`, :meth:`skipped`,
    :meth:`uncertain`, :meth:`retry` or :meth:`release`.
    """

    subscription_id: int
    lease_token: int
    state: DeliveryState
    last_error: str | None = None
    retry_after: timedelta | None = None
    refund_attempt: bool = False
    """Give the claim's attempt back: the recipient was not tried (see :meth:`release`)."""

    def __post_init__(self) -> None:
        if self.state is DeliveryState.PENDING:
            if self.retry_after is None or self.retry_after < timedelta(0):
                raise ValueError(f"expected a retry_after >= 0 for a retry, got {self.retry_after!r}")
        elif self.state in _OUTCOME_STATES:
            if self.retry_after is not None or self.refund_attempt:
                raise ValueError(
                    f"expected retry_after and refund_attempt only with state PENDING, got state {self.state}"
                )
        else:
            raise ValueError(
                "expected an outcome state (delivered, failed, skipped, uncertain or pending), "
                f"got {self.state!r}"
            )

    @classmethod
    def delivered(cls, claim: ClaimedDelivery) -> DeliveryOutcome:
        """The server accepted the message."""
        return cls(
            subscription_id=claim.subscription_id,
            lease_token=claim.lease_token,
            state=DeliveryState.DELIVERED,
        )

    @classmethod
    def failed(cls, claim: ClaimedDelivery, error: str) -> DeliveryOutcome:
        """A permanent failure, or the last attempt failed: the recipient is dead-lettered."""
        return cls(
            subscription_id=claim.subscription_id,
            lease_token=claim.lease_token,
            state=DeliveryState.FAILED,
            last_error=error,
        )

    @classmethod
    def skipped(cls, claim: ClaimedDelivery, reason: str) -> DeliveryOutcome:
        """Not sent on purpose (unsubscribed, bounced, suppressed)."""
        return cls(
            subscription_id=claim.subscription_id,
            lease_token=claim.lease_token,
            state=DeliveryState.SKIPPED,
            last_error=reason,
        )

    @classmethod
    def uncertain(cls, claim: ClaimedDelivery, error: str) -> DeliveryOutcome:
        """The message went out but no verdict came back: held as uncertain, not resent."""
        return cls(
            subscription_id=claim.subscription_id,
            lease_token=claim.lease_token,
            state=DeliveryState.UNCERTAIN,
            last_error=error,
        )

    @classmethod
    def retry(cls, claim: ClaimedDelivery, error: str, after: timedelta) -> DeliveryOutcome:
        """A transient failure: pending again, due ``after`` from now, attempts kept."""
        return cls(
            subscription_id=claim.subscription_id,
            lease_token=claim.lease_token,
            state=DeliveryState.PENDING,
            last_error=error,
            retry_after=after,
        )

    @classmethod
    def release(cls, claim: ClaimedDelivery, reason: str, after: timedelta = timedelta(0)) -> DeliveryOutcome:
        """Not the recipient's fault (the relay refused us): pending again, the attempt given back."""
        return cls(
            subscription_id=claim.subscription_id,
            lease_token=claim.lease_token,
            state=DeliveryState.PENDING,
            last_error=reason,
            retry_after=after,
            refund_attempt=True,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryCounts:
    """How many of a letter's deliveries are in each state."""

    pending: int = 0
    sending: int = 0
    delivered: int = 0
    failed: int = 0
    skipped: int = 0
    uncertain: int = 0

    @property
    def total(self) -> int:
        """The audience size: every delivery, whatever its state."""
        return self.pending + self.sending + self.delivered + self.failed + self.skipped + self.uncertain

    @property
    def unfinished(self) -> int:
        """Deliveries still to be sent or in flight (uncertain ones wait for a decision, not a send)."""
        return self.pending + self.sending


@dataclass(frozen=True, slots=True, kw_only=True)
class Recovery:
    """What recovery did to a letter's deliveries: ``uncertain`` rows found in flight, ``requeued``."""

    uncertain: int
    requeued: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SentEmail:
    """A message accepted by SMTP, to be recorded with its outcome (``ack_deliveries``)."""

    subscription_id: int
    message_id: str
    smtp_reply: str | None = None

"""What an SMTP attempt came to: a pure classification of the reply code and the phase it ended in.

An attempt to send one message ends in one of four ways:

- :class:`Delivered`: the relay accepted the message at the end of DATA; ``reply`` is its 250 text,
  which usually holds the relay's queue id (keep it: it is how a message is traced in relay logs).
- :class:`Transient`: try again later. Any 4xx reply (421, 450, 451, 452, 454...) and any failure
  with no reply at all (connection lost, timeout) after the connection was made.
- :class:`Permanent`: this recipient cannot get this message: a 5xx reply to RCPT, to DATA or at
  the end of DATA. Do not retry. :attr:`Permanent.is_user_unknown` says whether the address itself
  is bad (the subscription should then be marked bounced).
- :class:`TransportFault`: the relay, not the recipient, is the problem, and every other recipient
  would fail the same way: a refused or timed-out connection, a 5xx to the greeting, EHLO,
  STARTTLS, AUTH (bad credentials) or MAIL FROM. A circuit breaker holds the whole letter.

A send can also end without an attempt: :class:`Withdrawn`, when its caller took it back before the
transaction started (a letter that stops gives back the recipients still waiting for their turn).

The decision is made from the reply code and the phase only, never from the reply text: texts differ
between servers and languages, codes do not. The one structured part of a text that is used is the
RFC 3463 enhanced status code (``5.1.1``) at its start, see :func:`is_user_unknown`.

The table, for a failure (``None`` = no reply):

============  ===========  ==========  ============  ==========
phase         no reply     4xx         5xx           2xx/3xx
============  ===========  ==========  ============  ==========
CONNECT       transport    transient   transport     transient
EHLO          transient    transient   transport     transient
STARTTLS      transient    transient   transport     transient
AUTH          transient    transient   transport     transient
MAIL          transient    transient   transport     transient
RCPT          transient    transient   permanent     transient
DATA          transient    transient   permanent     transient
END_OF_DATA   transient*   transient   permanent     delivered
============  ===========  ==========  ============  ==========

A positive code where the client expected another (a 250 to DATA, a 3xx to RCPT) means the server
and client disagree about the dialogue; nothing is known to have failed for good, so it is transient.

``*`` No reply after the final ``.`` of DATA is the one ambiguous moment of SMTP: the relay may have
accepted the message and lost the connection before answering. Such a result is
:attr:`Transient.uncertain`: retrying may deliver twice (with the same Message-ID, so that receivers
can tell), not retrying may deliver never. The caller chooses; mailman's ``hold`` policy records the
recipient as ``uncertain`` instead of retrying.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Final, NamedTuple, TypeAlias

__all__ = [
    "TRANSIENT_CODES",
    "USER_UNKNOWN_CODES",
    "AttemptResult",
    "Delivered",
    "EnhancedStatus",
    "OutcomeKind",
    "Permanent",
    "SendResult",
    "SmtpPhase",
    "Transient",
    "TransportFault",
    "Withdrawn",
    "classify",
    "enhanced_status",
    "is_user_unknown",
    "outcome",
]


class SmtpPhase(Enum):
    """Where in the SMTP dialogue an attempt ended, in dialogue order."""

    CONNECT = "connect"
    """TCP connection (and TLS for ``smtps``) and the server's 220 greeting."""
    EHLO = "ehlo"
    STARTTLS = "starttls"
    AUTH = "auth"
    MAIL = "mail"
    """``MAIL FROM``: the envelope sender."""
    RCPT = "rcpt"
    """``RCPT TO``: the recipient."""
    DATA = "data"
    """The ``DATA`` command, before the message is sent (the server answers 354 to go on)."""
    END_OF_DATA = "end_of_data"
    """The message and its final ``.`` were sent; the reply is the relay's verdict on it."""


class OutcomeKind(Enum):
    """The four ways an attempt can end (see the module documentation for the rules)."""

    DELIVERED = "delivered"
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    TRANSPORT_FAULT = "transport_fault"


TRANSIENT_CODES: Final = frozenset({421, 450, 451, 452, 454})
"""The usual "try again later" replies: service closing, mailbox busy, local error, storage, TLS/auth."""

USER_UNKNOWN_CODES: Final = frozenset({550, 551, 553})
"""RCPT replies that mean the mailbox does not exist: unavailable, not local, name not allowed."""

_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_TRANSPORT_PHASES: Final = frozenset(
    {SmtpPhase.CONNECT, SmtpPhase.EHLO, SmtpPhase.STARTTLS, SmtpPhase.AUTH, SmtpPhase.MAIL}
)


def classify(code: int | None, phase: SmtpPhase) -> OutcomeKind:
    """The kind of outcome of an attempt that ended with ``code`` (``None``: no reply) in ``phase``.

    ``code`` is a three-digit reply code (200-599) or ``None`` when there was no reply at all
    (connection refused or lost, timeout). Raises ``ValueError`` for anything else.
    """
    if not isinstance(phase, SmtpPhase):
        raise TypeError(f"expected an SmtpPhase, got {phase!r}")
    if code is None:
        # Without a connection there is no recipient to blame: the relay is down or refusing us.
        return OutcomeKind.TRANSPORT_FAULT if phase is SmtpPhase.CONNECT else OutcomeKind.TRANSIENT
    if type(code) is not int or not 200 <= code <= 599:
        raise ValueError(f"expected an SMTP reply code from 200 to 599 or None, got {code!r}")
    if code < 400:
        if phase is SmtpPhase.END_OF_DATA and code < 300:
            return OutcomeKind.DELIVERED
        return OutcomeKind.TRANSIENT
    if code < 500:
        return OutcomeKind.TRANSIENT
    if phase in _TRANSPORT_PHASES:
        return OutcomeKind.TRANSPORT_FAULT
    return OutcomeKind.PERMANENT


class EnhancedStatus(NamedTuple):
    """An RFC 3463 enhanced status code, ``class.subject.detail``: ``5.1.1`` is a bad mailbox."""

    status_class: int
    subject: int
    detail: int

    def __str__(self) -> str:
        return f"{self.status_class}.{self.subject}.{self.detail}"


def enhanced_status(reply: str) -> EnhancedStatus | None:
    """The enhanced status code a reply text starts with (RFC 2034), or ``None`` if it has none."""
    match = _ENHANCED.match(reply.lstrip())
    if match is None:
        return None
    return EnhancedStatus(int(match.group(1)), int(match.group(2)), int(match.group(3)))


def is_user_unknown(code: int | None, phase: SmtpPhase, reply: str = "") -> bool:
    """Whether a reply says the recipient's mailbox does not exist: the subscription has bounced.

    550, 551 or 553 to RCPT. When the reply carries an enhanced status code, its subject must also
    be 1 (addressing: ``5.1.1`` bad mailbox, ``5.1.10`` null MX...), so that a policy refusal such
    as ``550 5.7.1`` (spam, relaying denied) fails the message without marking the address bad.
    """
    if phase is not SmtpPhase.RCPT or code not in USER_UNKNOWN_CODES:
        return False
    status = enhanced_status(reply)
    return status is None or status.subject == 1


# ---------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Delivered:
    """The relay accepted the message; ``reply`` is its end-of-DATA text (often with a queue id)."""

    reply: str
    code: int = 250


@dataclass(frozen=True, slots=True)
class Transient:
    """Try again later: a 4xx reply, or no reply (``code`` is ``None``) after the connection was made."""

    code: int | None
    reply: str
    phase: SmtpPhase | None = None

    @property
    def uncertain(self) -> bool:
        """True when the message was sent but no verdict came back: the relay may have accepted it."""
        return self.phase is SmtpPhase.END_OF_DATA and self.code is None


@dataclass(frozen=True, slots=True)
class Permanent:
    """This recipient cannot get this message (a 5xx to RCPT or DATA): do not retry."""

    code: int
    reply: str
    phase: SmtpPhase | None = None

    @property
    def is_user_unknown(self) -> bool:
        """True when the address does not exist (see :func:`is_user_unknown`): mark it bounced."""
        return self.phase is not None and is_user_unknown(self.code, self.phase, self.reply)


@dataclass(frozen=True, slots=True)
class TransportFault:
    """The relay or its configuration is at fault, for every recipient: hold the letter, not the person."""

    code: int | None
    reply: str
    phase: SmtpPhase | None = None


@dataclass(frozen=True, slots=True)
class Withdrawn:
    """Nothing was sent: the caller withdrew the message before its transaction started (while it
    waited for a connection slot, a rate token or a connection, or when asked to confirm it);
    ``reason`` says why. Not an SMTP outcome: the relay never saw the message."""

    reason: str


AttemptResult: TypeAlias = Delivered | Transient | Permanent | TransportFault
"""How an SMTP attempt ended: the four outcomes the module documentation classifies."""

SendResult: TypeAlias = AttemptResult | Withdrawn
"""What :meth:`mailman.services.smtp.pool.SmtpPool.send` returns; match on it with ``case``."""


def outcome(code: int | None, reply: str, phase: SmtpPhase) -> AttemptResult:
    """The result of an attempt that ended with ``code`` and ``reply`` in ``phase``."""
    match classify(code, phase):
        case OutcomeKind.DELIVERED:
            assert code is not None
            return Delivered(reply, code)
        case OutcomeKind.TRANSIENT:
            return Transient(code, reply, phase)
        case OutcomeKind.PERMANENT:
            assert code is not None
            return Permanent(code, reply, phase)
        case OutcomeKind.TRANSPORT_FAULT:
            return TransportFault(code, reply, phase)

"""The classification of SMTP attempts: every phase against every kind of code, as a table."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailman.services.smtp.outcome import (
    TRANSIENT_CODES,
    USER_UNKNOWN_CODES,
    Delivered,
    EnhancedStatus,
    OutcomeKind,
    Permanent,
    SmtpPhase,
    Transient,
    TransportFault,
    classify,
    enhanced_status,
    is_user_unknown,
    outcome,
)

P = SmtpPhase
D, T, PERM, TF = (
    OutcomeKind.DELIVERED,
    OutcomeKind.TRANSIENT,
    OutcomeKind.PERMANENT,
    OutcomeKind.TRANSPORT_FAULT,
)

# phase -> (no reply, 4xx, 5xx, 2xx/3xx): the table of the module documentation.
TABLE = {
    P.CONNECT: (TF, T, TF, T),
    P.EHLO: (T, T, TF, T),
    P.STARTTLS: (T, T, TF, T),
    P.AUTH: (T, T, TF, T),
    P.MAIL: (T, T, TF, T),
    P.RCPT: (T, T, PERM, T),
    P.DATA: (T, T, PERM, T),
    P.END_OF_DATA: (T, T, PERM, D),
}

FOUR_XX = sorted(TRANSIENT_CODES | {400, 432, 447, 471, 499})
FIVE_XX = sorted({500, 501, 502, 503, 504, 521, 530, 534, 535, 538, 550, 551, 552, 553, 554, 556, 599})
POSITIVE = [200, 220, 235, 250, 251, 252, 299]


class TestClassify:
    def test_the_table_covers_every_phase(self) -> None:
        """The table below names every phase, so that a new phase cannot go unclassified."""
        assert set(TABLE) == set(SmtpPhase)

    @pytest.mark.parametrize("phase", list(SmtpPhase))
    def test_no_reply(self, phase: SmtpPhase) -> None:
        """No reply is a transport fault at CONNECT (the relay refuses us) and transient after it."""
        assert classify(None, phase) is TABLE[phase][0]

    @pytest.mark.parametrize(("phase", "code"), list(itertools.product(SmtpPhase, FOUR_XX)))
    def test_4xx_is_transient_everywhere(self, phase: SmtpPhase, code: int) -> None:
        """Every 4xx reply, in every phase, means try again later."""
        assert classify(code, phase) is TABLE[phase][1] is T

    @pytest.mark.parametrize(("phase", "code"), list(itertools.product(SmtpPhase, FIVE_XX)))
    def test_5xx(self, phase: SmtpPhase, code: int) -> None:
        """A 5xx before RCPT blames the transport; from RCPT on it is permanent for the recipient."""
        assert classify(code, phase) is TABLE[phase][2]

    @pytest.mark.parametrize(("phase", "code"), list(itertools.product(SmtpPhase, POSITIVE)))
    def test_2xx(self, phase: SmtpPhase, code: int) -> None:
        """A 2xx at the end of DATA is delivery; elsewhere an unexpected positive reply is transient."""
        assert classify(code, phase) is TABLE[phase][3]

    @pytest.mark.parametrize("phase", list(SmtpPhase))
    def test_3xx_is_never_delivered(self, phase: SmtpPhase) -> None:
        """A 354 where a verdict was expected is a confused dialogue, not a delivery."""
        assert classify(354, phase) is T

    @pytest.mark.parametrize(
        ("code", "phase", "kind"),
        [
            (421, P.RCPT, T),
            (450, P.RCPT, T),
            (451, P.END_OF_DATA, T),
            (452, P.RCPT, T),
            (454, P.END_OF_DATA, T),  # SES "454 Throttling failure" after DATA
            (550, P.RCPT, PERM),
            (551, P.RCPT, PERM),
            (553, P.RCPT, PERM),
            (554, P.END_OF_DATA, PERM),
            (535, P.AUTH, TF),
            (550, P.MAIL, TF),
            (None, P.CONNECT, TF),
            (None, P.RCPT, T),
            (None, P.DATA, T),
            (250, P.END_OF_DATA, D),
        ],
    )
    def test_the_rules_of_the_issue(self, code: int | None, phase: SmtpPhase, kind: OutcomeKind) -> None:
        """The cases the issue names, spelled out."""
        assert classify(code, phase) is kind

    @pytest.mark.parametrize("code", [-1, 0, 99, 100, 199, 600, 999])
    def test_out_of_range_codes_are_refused(self, code: int) -> None:
        """A code outside 200-599 is a bug in the caller (map a malformed reply to None)."""
        with pytest.raises(ValueError, match="200 to 599"):
            classify(code, P.RCPT)

    def test_a_phase_must_be_an_smtp_phase(self) -> None:
        """A phase given as a string is refused, not silently misclassified."""
        with pytest.raises(TypeError, match="SmtpPhase"):
            classify(451, "rcpt")  # type: ignore[arg-type]

    @given(code=st.one_of(st.none(), st.integers(200, 599)), phase=st.sampled_from(SmtpPhase))
    def test_only_end_of_data_delivers(self, code: int | None, phase: SmtpPhase) -> None:
        """Delivery is only ever a 2xx at the end of DATA."""
        delivered = classify(code, phase) is D
        assert delivered == (phase is P.END_OF_DATA and code is not None and 200 <= code < 300)

    @given(code=st.one_of(st.none(), st.integers(200, 599)), phase=st.sampled_from(SmtpPhase))
    def test_permanent_only_for_5xx_from_rcpt_on(self, code: int | None, phase: SmtpPhase) -> None:
        """Nobody is failed for good except by a 5xx to RCPT, DATA or the message itself."""
        permanent = classify(code, phase) is PERM
        expected = code is not None and code >= 500 and phase in (P.RCPT, P.DATA, P.END_OF_DATA)
        assert permanent == expected


class TestOutcome:
    def test_delivered_keeps_the_reply(self) -> None:
        """The end-of-DATA text, with its queue id, is kept in the result."""
        assert outcome(250, "2.0.0 Ok: queued as 4BXY", P.END_OF_DATA) == Delivered(
            "2.0.0 Ok: queued as 4BXY", 250
        )

    @pytest.mark.parametrize(
        ("code", "phase", "result"),
        [
            (451, P.RCPT, Transient(451, "r", P.RCPT)),
            (550, P.RCPT, Permanent(550, "r", P.RCPT)),
            (535, P.AUTH, TransportFault(535, "r", P.AUTH)),
            (None, P.CONNECT, TransportFault(None, "r", P.CONNECT)),
            (None, P.MAIL, Transient(None, "r", P.MAIL)),
        ],
    )
    def test_result_types(self, code: int | None, phase: SmtpPhase, result: object) -> None:
        """Each kind becomes its result type, carrying code, reply and phase."""
        assert outcome(code, "r", phase) == result


class TestUncertain:
    def test_no_reply_after_the_final_dot_is_uncertain(self) -> None:
        """A lost connection after the message was sent may have delivered it."""
        assert Transient(None, "connection lost", P.END_OF_DATA).uncertain

    @pytest.mark.parametrize("phase", [p for p in SmtpPhase if p is not P.END_OF_DATA])
    def test_no_reply_before_the_final_dot_is_certain(self, phase: SmtpPhase) -> None:
        """Before the final dot nothing was delivered: safe to retry."""
        assert not Transient(None, "connection lost", phase).uncertain

    def test_a_coded_reply_is_certain(self) -> None:
        """A 451 after the dot is an answer: the message was not accepted."""
        assert not Transient(451, "try later", P.END_OF_DATA).uncertain


class TestEnhancedStatus:
    @pytest.mark.parametrize(
        ("reply", "status"),
        [
            ("5.1.1 <a@b>: User unknown", EnhancedStatus(5, 1, 1)),
            ("  4.7.1 Try later", EnhancedStatus(4, 7, 1)),
            ("2.0.0 Ok", EnhancedStatus(2, 0, 0)),
            ("5.1.10 Null MX", EnhancedStatus(5, 1, 10)),
            ("User unknown", None),
            ("5.1 short", None),
            ("3.1.1 not a class", None),
            ("5.1.1.1 too long", None),
            ("", None),
        ],
    )
    def test_parse(self, reply: str, status: EnhancedStatus | None) -> None:
        """The RFC 3463 code at the start of a reply, or None."""
        assert enhanced_status(reply) == status

    def test_str(self) -> None:
        """It prints as written."""
        assert str(EnhancedStatus(5, 1, 1)) == "5.1.1"


class TestIsUserUnknown:
    @pytest.mark.parametrize("code", sorted(USER_UNKNOWN_CODES))
    def test_user_unknown_codes_on_rcpt(self, code: int) -> None:
        """550, 551 and 553 to RCPT mean the mailbox does not exist."""
        assert is_user_unknown(code, P.RCPT, "no such user")

    @pytest.mark.parametrize("code", [450, 451, 552, 554, 500])
    def test_other_codes_are_not(self, code: int) -> None:
        """A full mailbox (552) or a generic refusal (554) does not prove the address is bad."""
        assert not is_user_unknown(code, P.RCPT, "")

    @pytest.mark.parametrize("phase", [p for p in SmtpPhase if p is not P.RCPT])
    def test_only_on_rcpt(self, phase: SmtpPhase) -> None:
        """A 550 to MAIL or to the message says nothing about the recipient's mailbox."""
        assert not is_user_unknown(550, phase, "")

    @pytest.mark.parametrize(("reply", "expected"), [("5.1.1 unknown", True), ("5.7.1 spam", False)])
    def test_enhanced_status_must_be_about_addressing(self, reply: str, expected: bool) -> None:
        """550 5.7.1 (policy) fails the message but does not mark the address bounced."""
        assert is_user_unknown(550, P.RCPT, reply) is expected

    def test_permanent_result_exposes_it(self) -> None:
        """The result type answers the question itself."""
        assert Permanent(550, "5.1.1 User unknown", P.RCPT).is_user_unknown
        assert not Permanent(554, "5.7.1 Rejected", P.END_OF_DATA).is_user_unknown
        assert not Permanent(550, "5.1.1 User unknown").is_user_unknown  # phase unknown

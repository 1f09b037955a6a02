"""The letter commands' pure parts: --send-at, the recipients file, the status text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from mailman.cli.letters import format_status, parse_send_at, read_recipient_ids
from mailman.cli.output import CliError


class TestParseSendAt:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("2030-01-31T09:00:00+01:00", datetime(2030, 1, 31, 9, tzinfo=timezone(timedelta(hours=1)))),
            ("2030-01-31T08:00:00Z", datetime(2030, 1, 31, 8, tzinfo=UTC)),
        ],
    )
    def test_accepts_iso_8601_with_a_timezone(self, text: str, expected: datetime) -> None:
        """An offset or Z is required, and kept."""
        assert parse_send_at(text) == expected

    def test_refuses_a_naive_time(self) -> None:
        """Without a timezone the moment is ambiguous: refused, saying how to fix it."""
        with pytest.raises(ValueError, match=r"expected a timezone in '2030-01-31T09:00'.*\+00:00"):
            parse_send_at("2030-01-31T09:00")

    def test_refuses_nonsense(self) -> None:
        """Not a datetime at all."""
        with pytest.raises(ValueError, match="expected an ISO 8601 datetime"):
            parse_send_at("tomorrow")


class TestReadRecipientIds:
    def test_ids_by_lines_commas_and_spaces_with_comments(self, tmp_path: Path) -> None:
        """Ids may be separated any common way; # starts a comment."""
        path = tmp_path / "ids.txt"
        path.write_text("# the VIPs\n1, 2 3\n\n4 # and this one\n")
        assert read_recipient_ids(path) == [1, 2, 3, 4]

    def test_a_bad_id_is_reported_with_its_line(self, tmp_path: Path) -> None:
        """A token that is not a positive integer names its line."""
        path = tmp_path / "ids.txt"
        path.write_text("1\n2\nx7\n")
        with pytest.raises(CliError, match=r"ids\.txt:3: expected a subscription id .* got 'x7'"):
            read_recipient_ids(path)

    def test_an_empty_file_is_refused(self, tmp_path: Path) -> None:
        """Sending to nobody is surely a mistake."""
        path = tmp_path / "ids.txt"
        path.write_text("# nobody\n")
        with pytest.raises(CliError, match="holds no subscription ids"):
            read_recipient_ids(path)

    def test_a_missing_file(self, tmp_path: Path) -> None:
        """An unreadable file is a clear error."""
        with pytest.raises(CliError, match="cannot read the recipients file"):
            read_recipient_ids(tmp_path / "nope.txt")


class TestFormatStatus:
    def test_state_and_counts(self) -> None:
        """The state on the first line, then every count and the audience."""
        text = format_status(
            {
                "letter_id": 3,
                "state": "sending",
                "counts": {"pending": 5, "sending": 2, "delivered": 90, "failed": 1, "skipped": 2},
                "uncertain": 0,
                "audience": 100,
                "restarts": 1,
                "failure_reason": None,
            }
        )
        assert text.splitlines() == [
            "letter 3: sending",
            "  delivered 90  failed 1  skipped 2  sending 2  pending 5  (audience 100)",
            "  restarts: 1",
        ]

    def test_the_node_sending_a_letter(self) -> None:
        """A letter being sent says which daemon (node) sends it, and until when it holds it."""
        text = format_status(
            {
                "letter_id": 3,
                "state": "sending",
                "counts": {},
                "node": "mail-1",
                "lease_expires_at": "2030-01-31T09:00:15+00:00",
            }
        )
        assert "  sent by node mail-1 (lease until 2030-01-31T09:00:15+00:00)" in text.splitlines()

    def test_why_a_letter_failed(self) -> None:
        """A failed letter says why; a command's message follows the state."""
        text = format_status(
            {
                "letter_id": 3,
                "state": "failed",
                "counts": {},
                "failure_reason": "crashed 5 times",
                "message": "m",
            }
        )
        assert text.splitlines()[0] == "letter 3: failed (m)"
        assert "  failed because: crashed 5 times" in text.splitlines()

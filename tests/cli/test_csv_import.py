"""Reading subscriber CSV files: good rows, bad rows by line number, duplicates, unreadable files."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailman.cli.csv_import import CsvFileError, DuplicateRow, RejectedRow, SubscriberCsv
from mailman.services.store.models import NewSubscriber


def write(tmp_path: Path, content: str | bytes, name: str = "list.csv") -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", newline="")
    else:
        path.write_bytes(content)
    return path


def read_all(path: Path) -> tuple[list[NewSubscriber], SubscriberCsv]:
    with SubscriberCsv.open(path) as rows:
        return list(rows), rows


class TestGoodRows:
    def test_rows_become_subscribers_in_file_order(self, tmp_path: Path) -> None:
        """Each data row is one subscriber, email and name, in the order of the file."""
        path = write(tmp_path, "email,name\nada@example.com,Ada Lovelace\ngrace@example.com,Grace\n")
        subscribers, rows = read_all(path)
        assert subscribers == [
            NewSubscriber(email="ada@example.com", name="Ada Lovelace"),
            NewSubscriber(email="grace@example.com", name="Grace"),
        ]
        assert (rows.rows, rows.accepted, rows.rejected, rows.duplicates) == (2, 2, [], [])

    def test_the_name_column_is_optional(self, tmp_path: Path) -> None:
        """A file with only an email column gives subscribers without names."""
        subscribers, _ = read_all(write(tmp_path, "email\nada@example.com\n"))
        assert subscribers == [NewSubscriber(email="ada@example.com", name="")]

    def test_a_row_may_leave_out_the_name(self, tmp_path: Path) -> None:
        """A row with fewer fields than the header has an empty name."""
        subscribers, _ = read_all(write(tmp_path, "email,name\nada@example.com\n"))
        assert subscribers == [NewSubscriber(email="ada@example.com", name="")]

    def test_header_columns_in_any_order_and_case(self, tmp_path: Path) -> None:
        """The header names the columns; their order and letter case do not matter."""
        subscribers, _ = read_all(write(tmp_path, " Name , EMAIL \nAda,ada@example.com\n"))
        assert subscribers == [NewSubscriber(email="ada@example.com", name="Ada")]

    def test_quoted_fields_keep_their_commas(self, tmp_path: Path) -> None:
        """CSV quoting works as usual: a quoted name may hold commas and quotes."""
        subscribers, _ = read_all(write(tmp_path, 'email,name\nada@example.com,"Lovelace, ""Ada"""\n'))
        assert subscribers[0].name == 'Lovelace, "Ada"'

    def test_a_byte_order_mark_and_crlf_line_ends_are_fine(self, tmp_path: Path) -> None:
        """Files saved by spreadsheets (UTF-8 BOM, CRLF) read like any other."""
        path = write(tmp_path, b"\xef\xbb\xbfemail,name\r\nada@example.com,Ad\xc3\xa1\r\n")
        subscribers, _ = read_all(path)
        assert subscribers == [NewSubscriber(email="ada@example.com", name="Adá")]

    def test_blank_lines_and_trailing_separators_are_ignored(self, tmp_path: Path) -> None:
        """Blank lines are skipped, and empty trailing fields are not extra columns."""
        path = write(tmp_path, "email,name,\n\nada@example.com,Ada,\n   \n,\ngrace@example.com,,\n")
        subscribers, rows = read_all(path)
        assert [s.email for s in subscribers] == ["ada@example.com", "grace@example.com"]
        assert rows.rejected == []
        assert rows.rows == 2

    def test_spaces_around_values_are_trimmed(self, tmp_path: Path) -> None:
        """Spaces around an address or a name are not part of it."""
        subscribers, _ = read_all(write(tmp_path, "email,name\n  ada@example.com , Ada \n"))
        assert subscribers == [NewSubscriber(email="ada@example.com", name="Ada")]


class TestBadRows:
    def test_each_bad_row_is_reported_with_its_line_number(self, tmp_path: Path) -> None:
        """Invalid and missing emails, extra columns and bad names are rejected by line; the rest pass."""
        path = write(
            tmp_path,
            "email,name\n"
            "ada@example.com,Ada\n"  # line 2
            "not-an-email,Bob\n"  # line 3
            ",Nobody\n"  # line 4
            "carl@example.com,Carl,extra\n"  # line 5
            "dee@example.com,Dee\n"  # line 6
            "eve@exa mple.com,Eve\n"  # line 7
            f"fay@example.com,{'x' * 201}\n",  # line 8
        )
        subscribers, rows = read_all(path)
        assert [s.email for s in subscribers] == ["ada@example.com", "dee@example.com"]
        assert [r.line for r in rows.rejected] == [3, 4, 5, 7, 8]
        reasons = {r.line: r.reason for r in rows.rejected}
        assert reasons[3] == "invalid email 'not-an-email': expected an email address like name@example.org"
        assert reasons[4] == "missing email"
        assert reasons[5] == "too many columns: expected at most 2 (email,name), got 3"
        assert reasons[8].startswith("name: ")

    def test_emails_are_checked_by_the_rpc_rule(self, tmp_path: Path) -> None:
        """An address subscribers.add would refuse (here: an IDN not in punycode) is rejected."""
        path = write(tmp_path, "email\nada@exämple.com\nada@xn--exmple-cua.com\n")
        subscribers, rows = read_all(path)
        assert [s.email for s in subscribers] == ["ada@xn--exmple-cua.com"]
        assert [r.line for r in rows.rejected] == [2]

    def test_a_row_that_is_not_utf8_is_rejected_alone(self, tmp_path: Path) -> None:
        """Bytes that are not UTF-8 fail their row (shown as bytes), not the whole file."""
        path = write(tmp_path, b"email,name\nada@example.com,Ada\njose@example.com,Jos\xe9\n")
        subscribers, rows = read_all(path)
        assert [s.email for s in subscribers] == ["ada@example.com"]
        assert rows.rejected == [RejectedRow(3, "not valid UTF-8: b'jose@example.com,Jos\\xe9'")]

    def test_line_numbers_count_physical_lines(self, tmp_path: Path) -> None:
        """A row's number is its first line: a quoted field spanning lines moves the rows after it.

        (The name on two lines is itself refused: it goes into mail headers, so must be one line.)
        """
        path = write(tmp_path, 'email,name\nada@example.com,"Ada\nLovelace"\nbad,Bob\ngrace@example.com,G\n')
        subscribers, rows = read_all(path)
        assert [s.email for s in subscribers] == ["grace@example.com"]
        assert [r.line for r in rows.rejected] == [2, 4]
        assert "one line" in rows.rejected[0].reason


class TestDuplicates:
    def test_a_repeated_address_keeps_its_first_row(self, tmp_path: Path) -> None:
        """Repeats (in any letter case) are skipped and reported with the line they repeat."""
        path = write(
            tmp_path, "email,name\nada@example.com,Ada\ngrace@example.com,Grace\nADA@example.com,Other Ada\n"
        )
        subscribers, rows = read_all(path)
        assert subscribers == [
            NewSubscriber(email="ada@example.com", name="Ada"),
            NewSubscriber(email="grace@example.com", name="Grace"),
        ]
        assert rows.duplicates == [DuplicateRow(4, "ADA@example.com", 2)]
        assert rows.rejected == []


class TestUnreadableFiles:
    def test_a_missing_file(self, tmp_path: Path) -> None:
        """A file that does not exist is an error naming it."""
        with pytest.raises(CsvFileError, match=r"cannot read .*missing\.csv: No such file"):
            SubscriberCsv.open(tmp_path / "missing.csv")

    def test_a_directory(self, tmp_path: Path) -> None:
        """A directory is not a CSV file."""
        with pytest.raises(CsvFileError, match="is a directory"):
            SubscriberCsv.open(tmp_path)

    def test_an_empty_file(self, tmp_path: Path) -> None:
        """An empty file has no header row."""
        with pytest.raises(CsvFileError, match="is empty: expected a header row"):
            SubscriberCsv.open(write(tmp_path, ""))

    def test_a_file_without_a_header_row(self, tmp_path: Path) -> None:
        """A first line that holds an address is data, not a header: say to add one."""
        with pytest.raises(CsvFileError, match=r"line 1 is not a header row.*add the line `email,name`"):
            SubscriberCsv.open(write(tmp_path, "ada@example.com,Ada\n"))

    @pytest.mark.parametrize(
        ("header", "problem"),
        [("email,phone", "unknown column 'phone'"), ("name", "no email column"), ("email,Email", "twice")],
    )
    def test_a_header_with_wrong_columns(self, tmp_path: Path, header: str, problem: str) -> None:
        """Only the columns email and name are known, each once, email required."""
        with pytest.raises(CsvFileError, match=problem):
            SubscriberCsv.open(write(tmp_path, f"{header}\nada@example.com,x\n"))

    def test_a_utf16_file(self, tmp_path: Path) -> None:
        """UTF-16 (as some spreadsheets save 'Unicode text') is named as such."""
        path = write(tmp_path, "email,name\nada@example.com,Ada\n".encode("utf-16"))
        with pytest.raises(CsvFileError, match="UTF-16"):
            SubscriberCsv.open(path)

    def test_nul_bytes_fail_the_whole_file_even_late(self, tmp_path: Path) -> None:
        """NUL bytes mean binary or UTF-16 text: the iteration fails, whatever rows came before."""
        path = write(tmp_path, b"email,name\nada@example.com,Ada\ngrace@example.com,Gr\x00ace\n")
        with SubscriberCsv.open(path) as rows, pytest.raises(CsvFileError, match=r"NUL bytes.*line 3"):
            list(rows)

    def test_a_header_that_is_not_utf8(self, tmp_path: Path) -> None:
        """A header row that does not decode means the file is in another encoding."""
        with pytest.raises(CsvFileError, match=r"not UTF-8 text.*iconv"):
            SubscriberCsv.open(write(tmp_path, b"e\xe9mail,name\n"))

    def test_a_file_whose_rows_are_all_latin1_fails_as_a_whole(self, tmp_path: Path) -> None:
        """When not one row decodes, the file is in another encoding: an error, not N bad rows."""
        path = write(tmp_path, b"email,name\njose@example.com,Jos\xe9\nzoe@example.com,Zo\xeb\n")
        with SubscriberCsv.open(path) as rows, pytest.raises(CsvFileError, match="none of its 2 rows"):
            list(rows)

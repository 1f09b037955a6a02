"""Reading a subscriber list from CSV, row by row, with each bad row's line number.

The file is UTF-8 text (a byte-order mark is allowed) with a header row naming its columns: ``email``
(required) and ``name`` (optional), in either order, any letter case::

    email,name
    ada@example.com,Ada Lovelace
    grace@example.com,"Hopper, Grace"

Each data row is checked with the rules the RPC ``subscribers.add`` applies
(:class:`mailman.rpc.params.SubscriberParams`: the same email shape, a one-line name of at most 200
characters), so an address the daemon would refuse is never imported behind its back. Outcomes:

- a good row is yielded as a :class:`~mailman.services.store.models.NewSubscriber`;
- a bad row (missing or invalid email, bad name, more columns than the header, bytes that are not
  UTF-8) is recorded in :attr:`SubscriberCsv.rejected` with its line number and skipped;
- a repeat of an address seen earlier in the file (in any letter case) is recorded in
  :attr:`SubscriberCsv.duplicates` and skipped: the first occurrence wins;
- blank lines are skipped; empty trailing fields (``ada@example.com,Ada,``) are allowed;
- a file that cannot be read as a whole raises :class:`CsvFileError`: missing, a directory, no
  header row, an unknown column, NUL bytes (UTF-16 or binary), malformed CSV, or not one data row
  in UTF-8. Raised from inside the iteration too, so that an import streaming the rows into one
  transaction rolls back and imports nothing.

Line numbers are physical lines (a quoted field may span several); a row's number is its first line.

Example::

    with SubscriberCsv.open(Path("list.csv")) as rows:
        added = await add_subscribers(connection, newsletter_id, rows)   # one transaction
    for problem in rows.rejected:
        print(f"line {problem.line}: {problem.reason}")
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from pydantic import ValidationError

from mailman.rpc.params import SubscriberParams
from mailman.services.store.models import NewSubscriber

__all__ = ["COLUMNS", "CsvFileError", "DuplicateRow", "RejectedRow", "SubscriberCsv"]

COLUMNS: Final = ("email", "name")
"""The columns a subscriber file may have; ``email`` is required."""

_UTF16_BOMS: Final = (b"\xff\xfe", b"\xfe\xff")
_SHOWN_CHARS: Final = 60


class CsvFileError(Exception):
    """The file cannot be imported at all (nothing of it is); the message says why and how to fix it."""


@dataclass(frozen=True, slots=True)
class RejectedRow:
    """A row left out of the import: its first ``line``, and the ``reason``."""

    line: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class DuplicateRow:
    """A row whose ``email`` already appeared, at ``first_line``, earlier in the file."""

    line: int
    email: str
    first_line: int

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "email": self.email, "first_line": self.first_line}


@dataclass(slots=True)
class SubscriberCsv:
    """An open subscriber file; iterate it for the good rows. Use :meth:`open`."""

    path: Path
    stream: io.TextIOBase
    columns: tuple[str, ...]
    rows: int = 0
    """Data rows read so far (blank lines not counted)."""
    accepted: int = 0
    """Rows yielded: valid, and the first of their address."""
    rejected: list[RejectedRow] = field(default_factory=list)
    duplicates: list[DuplicateRow] = field(default_factory=list)
    _reader: Any = None
    _first_line_of: dict[str, int] = field(default_factory=dict)
    _undecodable: int = 0

    @classmethod
    def open(cls, path: Path) -> SubscriberCsv:
        """Open ``path`` and read its header row; raises :class:`CsvFileError` if it cannot be."""
        if path.is_dir():
            raise CsvFileError(f"{path} is a directory, expected a CSV file")
        try:
            raw = path.open("rb")
        except OSError as exc:
            raise CsvFileError(f"cannot read {path}: {exc.strerror or exc}") from None
        try:
            if raw.peek(2)[:2] in _UTF16_BOMS:
                raise CsvFileError(f"{path} is UTF-16 text; save it as UTF-8 (CSV UTF-8) and try again")
            # surrogateescape: an undecodable byte fails its row, not the whole file.
            stream = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
            reader = csv.reader(stream)
            csv_file = cls(path=path, stream=stream, columns=(), _reader=reader)
            csv_file.columns = csv_file._read_header()
        except BaseException:
            raw.close()
            raise
        return csv_file

    def close(self) -> None:
        self.stream.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[NewSubscriber]:
        email_at = self.columns.index("email")
        name_at = self.columns.index("name") if "name" in self.columns else None
        width = len(self.columns)
        line = self._reader.line_num + 1
        for record in self._records():
            first_line, line = line, self._reader.line_num + 1
            if not any(cell.strip() for cell in record):
                continue  # a blank line
            self.rows += 1
            subscriber = self._check(record, width, email_at, name_at)
            if isinstance(subscriber, str):
                self.rejected.append(RejectedRow(first_line, subscriber))
                continue
            key = subscriber.email.lower()
            seen_at = self._first_line_of.setdefault(key, first_line)
            if seen_at != first_line:
                self.duplicates.append(DuplicateRow(first_line, subscriber.email, seen_at))
                continue
            self.accepted += 1
            yield subscriber
        if self._undecodable and self._undecodable == self.rows:
            raise CsvFileError(
                f"{self.path} is not UTF-8 text: none of its {self.rows} rows decodes as UTF-8; convert it "
                f"(for example `iconv -f latin1 -t utf-8 {self.path}`) and try again"
            )

    # ---------------------------------------------------------------- internals

    def _records(self) -> Iterator[list[str]]:
        try:
            for record in self._reader:
                if any("\x00" in cell for cell in record):
                    # No text file holds NUL: this is UTF-16 or binary, and its other rows are not
                    # to be trusted either.
                    raise CsvFileError(
                        f"{self.path} contains NUL bytes (line {self._reader.line_num}): it is not UTF-8 "
                        "text (UTF-16, or a spreadsheet file?); export it as CSV UTF-8"
                    )
                yield record
        except csv.Error as exc:
            raise CsvFileError(f"{self.path}: malformed CSV at line {self._reader.line_num}: {exc}") from None
        except OSError as exc:
            raise CsvFileError(f"cannot read {self.path}: {exc.strerror or exc}") from None

    def _read_header(self) -> tuple[str, ...]:
        header = next(self._records(), None)
        if header is None:
            raise CsvFileError(f"{self.path} is empty: expected a header row `email,name`, then one row each")
        if any(_undecodable(cell) for cell in header):
            raise CsvFileError(
                f"{self.path} is not UTF-8 text (its header row does not decode); convert it (for example "
                f"`iconv -f latin1 -t utf-8 {self.path}`) and try again"
            )
        columns = tuple(cell.strip().lower() for cell in header)
        while columns and not columns[-1]:
            columns = columns[:-1]  # a trailing separator
        if any("@" in column for column in columns):
            raise CsvFileError(
                f"{self.path}: line 1 is not a header row ({_shown(','.join(header))}); add the line "
                "`email,name` at the top of the file"
            )
        unknown = [column for column in columns if column not in COLUMNS]
        if unknown or "email" not in columns or len(set(columns)) != len(columns):
            problem = (
                f"unknown column {unknown[0]!r}"
                if unknown
                else "no email column"
                if "email" not in columns
                else "a column appears twice"
            )
            raise CsvFileError(
                f"{self.path}: header row {_shown(','.join(header))}: {problem}; expected the columns "
                "email and, optionally, name (for example `email,name`)"
            )
        return columns

    def _check(
        self, record: list[str], width: int, email_at: int, name_at: int | None
    ) -> NewSubscriber | str:
        """The subscriber of a data row, or why the row is rejected."""
        if any(_undecodable(cell) for cell in record):
            self._undecodable += 1
            raw = ",".join(record).encode("utf-8", "surrogateescape")
            return f"not valid UTF-8: {_shown(raw)}"
        if len(record) > width and any(cell.strip() for cell in record[width:]):
            return f"too many columns: expected at most {width} ({','.join(self.columns)}), got {len(record)}"
        email = record[email_at].strip() if email_at < len(record) else ""
        name = record[name_at].strip() if name_at is not None and name_at < len(record) else ""
        if not email:
            return "missing email"
        try:
            params = SubscriberParams.model_validate({"email": email, "name": name})
        except ValidationError as exc:
            return _validation_problem(exc, email)
        return NewSubscriber(email=params.email, name=params.name)


def _undecodable(cell: str) -> bool:
    """True if ``cell`` holds bytes that were not UTF-8 (kept as lone surrogates by surrogateescape)."""
    if cell.isascii():
        return False
    try:
        cell.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _validation_problem(exc: ValidationError, email: str) -> str:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        where = str(error["loc"][0]) if error["loc"] else "row"
        message = error["msg"].removeprefix("Value error, ")
        problems.append(
            f"invalid email {_shown(email)}: {message}" if where == "email" else f"{where}: {message}"
        )
    return "; ".join(problems)


def _shown(value: str | bytes) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."

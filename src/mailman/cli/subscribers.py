"""``mailman subscribers add`` and ``mailman subscribers import``.

``add`` goes through the daemon (RPC ``subscribers.add``). ``import`` connects to the database
directly, with the daemon's settings, and streams the file's good rows into **one transaction**
(``COPY`` into a staging table, then one ``INSERT``: see
:func:`mailman.services.store.queries.subscriptions.add_subscribers`). Why not through the daemon: a request
line is at most 1 MiB (some 15,000 addresses), so a big list would take many ``subscribers.add`` calls,
each its own transaction, and a failure half-way would leave half a list imported. Connecting directly
keeps the import all-or-nothing, needs no new protocol (no import sessions held open in the daemon
between requests), and runs at COPY speed: 100,000 rows take a few seconds. It works whether the
daemon is running or not; it needs what the daemon needs to reach its database (run it as the
daemon's user, with its configuration).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from mailman.cli.csv_import import CsvFileError, SubscriberCsv
from mailman.cli.database import connect_database
from mailman.cli.invocation import Invocation
from mailman.cli.output import CliError, ExitCode
from mailman.services.store.queries.subscriptions import add_subscribers

__all__ = ["ImportReport", "import_subscribers", "run_add", "run_import"]

_DUPLICATES_SHOWN: Final = 10


async def run_add(invocation: Invocation) -> ExitCode:
    """``mailman subscribers add NEWSLETTER_ID EMAIL [--name N]``."""
    args = invocation.args
    entry = {"email": args.email, "name": args.name or ""}
    async with invocation.client() as client:
        result = await client.subscribers_add(args.newsletter_id, [entry])
    if result.get("added"):
        text = f"subscribed {args.email} to newsletter {args.newsletter_id}"
    else:
        text = f"{args.email} was already subscribed to newsletter {args.newsletter_id}: left as it was"
    invocation.output.result(result, text)
    return ExitCode.OK


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What an import did: rows read, imported (``added``; None for a dry run), already subscribed,
    repeated in the file, rejected."""

    newsletter_id: int
    csv_file: SubscriberCsv
    added: int | None
    seconds: float

    @property
    def existing(self) -> int | None:
        """Valid, unique rows whose address was already subscribed (None for a dry run)."""
        return None if self.added is None else self.csv_file.accepted - self.added

    def as_dict(self) -> dict[str, Any]:
        csv_file = self.csv_file
        return {
            "newsletter_id": self.newsletter_id,
            "file": str(csv_file.path),
            "dry_run": self.added is None,
            "rows": csv_file.rows,
            "valid": csv_file.accepted,
            "imported": self.added,
            "existing": self.existing,
            "duplicates": [row.as_dict() for row in csv_file.duplicates],
            "rejected": [row.as_dict() for row in csv_file.rejected],
            "seconds": round(self.seconds, 3),
        }

    def summary(self) -> str:
        csv_file = self.csv_file
        if self.added is None:
            text = f"dry run: {csv_file.accepted:,} of {csv_file.rows:,} rows would be imported"
        else:
            text = (
                f"imported {self.added:,} new subscribers to newsletter {self.newsletter_id} from "
                f"{csv_file.rows:,} rows in {self.seconds:.1f}s"
            )
            if self.existing:
                text += f"; {self.existing:,} already subscribed (left as they were)"
        if csv_file.duplicates:
            text += f"; {len(csv_file.duplicates):,} repeated in the file (first kept)"
        if csv_file.rejected:
            text += f"; {len(csv_file.rejected):,} rejected (listed on stderr)"
        return text


async def import_subscribers(
    invocation: Invocation, newsletter_id: int, path: Path, *, dry_run: bool = False
) -> ImportReport:
    """Read ``path`` and import its good rows in one transaction (none with ``dry_run``)."""
    started = time.monotonic()
    try:
        csv_file = SubscriberCsv.open(path)
    except CsvFileError as exc:
        raise CliError(f"{exc}; nothing was imported", details={"file": str(path)}) from None
    with csv_file:
        try:
            if dry_run:
                for _ in csv_file:
                    pass
                added = None
            else:
                async with connect_database(invocation.settings()) as database:
                    added = await add_subscribers(database.connection, newsletter_id, csv_file)
        except CsvFileError as exc:
            raise CliError(f"{exc}; nothing was imported", details={"file": str(path)}) from None
    return ImportReport(newsletter_id, csv_file, added, time.monotonic() - started)


async def run_import(invocation: Invocation) -> ExitCode:
    """``mailman subscribers import NEWSLETTER_ID FILE.csv [--dry-run]``.

    Exit code 0 when every row was imported (or skipped as already there); 1 when some rows were
    rejected -- the good rows are imported all the same, and the bad ones listed by line number.
    """
    args = invocation.args
    output = invocation.output
    report = await import_subscribers(invocation, args.newsletter_id, Path(args.file), dry_run=args.dry_run)
    csv_file = report.csv_file
    for rejected in csv_file.rejected:
        output.note(f"{csv_file.path}:{rejected.line}: rejected: {rejected.reason}")
    for duplicate in csv_file.duplicates[:_DUPLICATES_SHOWN]:
        output.note(
            f"{csv_file.path}:{duplicate.line}: skipped: {duplicate.email} "
            f"repeats line {duplicate.first_line}"
        )
    if len(csv_file.duplicates) > _DUPLICATES_SHOWN:
        output.note(f"... and {len(csv_file.duplicates) - _DUPLICATES_SHOWN:,} more repeated addresses")
    output.result(report.as_dict(), report.summary())
    return ExitCode.ERROR if csv_file.rejected else ExitCode.OK

"""Benchmark of ``mailman subscribers import``: a list of 100,000 subscribers, as a user runs it.

Run with ``make bench`` (or ``python bench/subscribers_import.py [--rows N] [--rounds R]``). It
starts an embedded Postgres (``pgserver``, in a fresh temporary directory, migrated, fsync off as
in bench/delivery.py), creates a newsletter, writes a CSV of ``--rows`` subscribers (1% of them
with a malformed address, 1% repeating an earlier row, as real lists have), and runs the command
as a user would: ``mailman subscribers import NEWSLETTER FILE --json`` in its own process, its
settings from ``MAILMAN_DATABASE_URL``.

Each round imports the file into a newsletter of its own (every good row new), then imports the
same file again (every good row already there: nothing added). Printed: the medians over the rounds
of the wall time of the whole command (process start, reading and checking the file, the one
transaction) and rows per second; the peak RSS of the command (``ru_maxrss`` of the child). The
command's own report is checked: as many imported as the file has good, unrepeated rows, the bad
ones rejected by line number.

Target (the daemon issue): 100,000 rows "in seconds, not minutes". Nothing is asserted but the
command's counts: the figures are for reading.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from delivery import create_database, start_postgres


@dataclass(frozen=True, slots=True)
class ListFile:
    """A CSV of subscribers and what a correct import makes of it."""

    path: Path
    rows: int
    good: int
    rejected: int
    repeated: int


def write_list(path: Path, rows: int) -> ListFile:
    """``rows`` subscribers: every 100th address malformed, every 100th (offset 50) a repeat."""
    rejected = repeated = 0
    with path.open("w", encoding="utf-8") as file:
        file.write("email,name\n")
        for i in range(rows):
            if i % 100 == 99:
                file.write(f"reader{i}-at-example.com,Reader {i}\n")
                rejected += 1
            elif i % 100 == 50 and i > 50:
                file.write(f"reader{i - 50}@example.com,Reader {i - 50} again\n")
                repeated += 1
            else:
                file.write(f"reader{i}@example.com,Reader {i}\n")
    return ListFile(path, rows, rows - rejected - repeated, rejected, repeated)


async def create_newsletter(uri: str, round_number: int) -> int:
    import asyncpg  # noqa: PLC0415

    from mailman.services.store.queries.newsletters import create_user_with_newsletter  # noqa: PLC0415

    connection = await asyncpg.connect(uri)
    try:
        _, newsletter = await create_user_with_newsletter(
            connection,
            email=f"owner{round_number}@bench.example.com",
            name=f"Bench list {round_number}",
            from_address="news@bench.example.com",
            unsubscribe_url_template="https://bench.example.com/u/{token}",
        )
    finally:
        await connection.close()
    return newsletter.id


@dataclass(frozen=True, slots=True)
class Import:
    seconds: float
    report: dict[str, Any]


def run_import(uri: str, newsletter_id: int, listing: ListFile) -> Import:
    command = [sys.executable, "-m", "mailman", "subscribers", "import", str(newsletter_id)]
    command += [str(listing.path), "--json"]
    env = {**os.environ, "MAILMAN_DATABASE_URL": uri}
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1):  # 1: some rows were rejected, as this list means them to be
        sys.exit(f"the import failed ({done.returncode}): {done.stderr.strip()}")
    return Import(seconds, json.loads(done.stdout))


def check(result: Import, listing: ListFile, *, imported: int) -> str | None:
    report = result.report
    seen = (report["rows"], report["imported"], len(report["rejected"]), len(report["duplicates"]))
    wanted = (listing.rows, imported, listing.rejected, listing.repeated)
    return None if seen == wanted else f"expected rows/imported/rejected/repeated {wanted}, got {seen}"


def main(rows: int, rounds: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="mailman-bench-import-"))
    server = start_postgres(str(workdir / "pg"))
    first: list[float] = []
    again: list[float] = []
    problems: list[str] = []
    try:
        uri = server.get_uri("bench")
        asyncio.run(create_database(server.get_uri(), uri))
        listing = write_list(workdir / "subscribers.csv", rows)
        for round_number in range(1, rounds + 1):
            newsletter_id = asyncio.run(create_newsletter(uri, round_number))
            fresh = run_import(uri, newsletter_id, listing)
            repeat = run_import(uri, newsletter_id, listing)
            first.append(fresh.seconds)
            again.append(repeat.seconds)
            for result, imported in ((fresh, listing.good), (repeat, 0)):
                problem = check(result, listing, imported=imported)
                if problem is not None:
                    problems.append(problem)
    finally:
        server.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        f"mailman subscribers import benchmark ({os.cpu_count()} CPUs; Postgres: embedded, fsync off; "
        f"medians of {rounds} rounds; the whole command, process start included)"
    )
    print(
        f"a list of {rows:,} rows ({listing.good:,} good, {listing.rejected:,} malformed, "
        f"{listing.repeated:,} repeated)"
    )
    for label, times in (("into a new newsletter", first), ("again (all already subscribed)", again)):
        median = statistics.median(times)
        print(
            f"  {label:<32} {median:6.2f} s  {rows / median:9,.0f} rows/s  "
            f"(rounds {', '.join(f'{t:.2f}' for t in times)} s; target: seconds, not minutes)"
        )
    print(f"  peak RSS of the command          {peak_mb:6.1f} MB")
    if problems:
        sys.exit("the import's report was wrong: " + "; ".join(problems))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows in the list (default 100,000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    arguments = parser.parse_args()
    main(arguments.rows, arguments.rounds)

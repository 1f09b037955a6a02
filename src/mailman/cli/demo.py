"""``mailman demo``: the whole job on embedded defaults, in one process, in well under a minute.

It starts the daemon in-process (:class:`~mailman.daemon.lifecycle.Daemon`) on a data directory of its
own (``./.mailman-demo`` unless ``--data-dir``) with an embedded Postgres and the built-in Maildir
SMTP sink, whatever ``MAILMAN_DATABASE_URL`` and ``MAILMAN_SMTP_URL`` say: a demo never mails
anyone. Then, as a user would, it creates a newsletter (RPC), subscribes N readers (the fast COPY
path of ``subscribers import``), writes a letter and sends it (RPC), shows the supervision tree while
the letter is being sent (its LetterSupervisor included), follows it with the progress bar, prints
the outcome and where the mail is, and stops the daemon.

Each run starts afresh: the directory is marked as the demo's with a ``.mailman-demo`` file, and a
marked directory has its Maildir emptied and its database dropped before the daemon starts. A
directory that is not empty and not marked is refused, so that ``--data-dir`` never wipes real data.
The sending rate is 5,000 messages per second (the daemon's default is 100), so that 10,000 readers
take seconds.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import asyncpg

from mailman.cli.invocation import Invocation
from mailman.cli.output import CliError, ExitCode, Output
from mailman.cli.progress import follow_letter, render_summary
from mailman.cli.tree import render_tree
from mailman.client import Client
from mailman.config import Settings
from mailman.daemon.lifecycle import Daemon
from mailman.embedded.postgres import DATABASE, EmbeddedPostgres
from mailman.log_setup import LogLevel, configure_logging
from mailman.services.store.models import NewSubscriber
from mailman.services.store.queries.subscriptions import add_subscribers

__all__ = ["DEFAULT_DATA_DIR", "DEFAULT_RATE", "MARKER", "count_messages", "prepare_data_dir", "run_demo"]

DEFAULT_DATA_DIR: Final = Path(".mailman-demo")
DEFAULT_RATE: Final = 5000.0
DEFAULT_SUBSCRIBERS: Final = 10_000
MARKER: Final = ".mailman-demo"
"""The file that marks a data directory as the demo's own, to be reset on each run."""

_TEXT_BODY: Final = """Dear {{ name }},

this letter was sent by the mailman demo: a supervision tree of asyncio processes read you from
Postgres, rendered this message for you alone and handed it to an SMTP server, which filed it
into a Maildir.

Unsubscribe: {{ unsubscribe_url }}
"""

_HTML_BODY: Final = """<p>Dear {{ name }},</p>
<p>this letter was sent by the <b>mailman demo</b>.</p>
<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
"""


def prepare_data_dir(data_dir: Path) -> bool:
    """Make ``data_dir`` the demo's, emptying its Maildir; True if it held an earlier run's database.

    Raises :class:`CliError` if it is not a directory, or holds files and no demo marker.
    """
    if data_dir.exists() and not data_dir.is_dir():
        raise CliError(f"{data_dir} is not a directory; choose another --data-dir")
    marker = data_dir / MARKER
    if data_dir.is_dir() and not marker.exists() and any(data_dir.iterdir()):
        raise CliError(
            f"{data_dir} is not empty and is not a demo directory (it has no {MARKER} file); the demo "
            "resets its directory on every run, so choose a new or empty one with --data-dir"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text("This directory belongs to `mailman demo`, which resets it on every run.\n")
    shutil.rmtree(data_dir / "maildir", ignore_errors=True)
    return (data_dir / "postgres").is_dir()


async def _drop_database(data_dir: Path) -> None:
    """Drop the demo database of an earlier run (the daemon creates and migrates it again)."""
    async with EmbeddedPostgres(data_dir, database="postgres") as postgres:
        connection = await asyncpg.connect(postgres.uri)
        try:
            # DDL takes no $n parameters; DATABASE is our own constant identifier.
            await connection.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        finally:
            await connection.close()


def count_messages(maildir: Path) -> int:
    """The messages in a Maildir: the files in its ``new`` and ``cur`` folders."""
    return sum(
        1
        for folder in ("new", "cur")
        if (maildir / folder).is_dir()
        for entry in (maildir / folder).iterdir()
    )


def _readers(count: int) -> Iterator[NewSubscriber]:
    for number in range(1, count + 1):
        yield NewSubscriber(email=f"reader{number}@example.com", name=f"Reader {number}")


def demo_settings(base: Settings, data_dir: Path, rate: float) -> Settings:
    """``base`` with the demo's data directory and rate, and the embedded database and SMTP sink."""
    kept = base.model_dump(exclude={"data_dir", "database_url", "smtp_url", "socket", "rate_limit"})
    return Settings(**kept, data_dir=data_dir, rate_limit=rate)


async def run_demo(invocation: Invocation) -> ExitCode:
    """``mailman demo [--subscribers N] [--data-dir DIR] [--rate R]``."""
    args = invocation.args
    output = invocation.output
    data_dir: Path = args.data_dir
    settings = demo_settings(invocation.settings(), data_dir, args.rate)
    configure_logging(settings.log_format, LogLevel.WARNING)  # the demo's own lines tell the story
    say = _Narrator(output)
    say(
        f"mailman demo: {args.subscribers:,} subscribers, data in {data_dir} (embedded Postgres and a "
        f"Maildir SMTP sink), sending at up to {args.rate:,.0f} messages/s"
    )
    if prepare_data_dir(data_dir):
        await _drop_database(data_dir)
    daemon = Daemon(settings)
    started = time.monotonic()
    running = await daemon.start()
    try:
        say(
            f"  the daemon is running in this process (RPC socket {running.socket}), started in "
            f"{time.monotonic() - started:.1f}s"
        )
        async with Client(running.socket, timeout=60.0) as client:
            newsletter = await client.newsletter_create(
                owner_email="owner@example.com",
                name="The mailman demo",
                from_address="demo@example.com",
                unsubscribe_url_template="https://example.com/unsubscribe/{token}",
            )
            newsletter_id = int(newsletter["newsletter_id"])
            imported_at = time.monotonic()
            connection = await asyncpg.connect(running.database_url)
            try:
                added = await add_subscribers(connection, newsletter_id, _readers(args.subscribers))
            finally:
                await connection.close()
            say(
                f"  newsletter {newsletter_id} created; {added:,} subscribers imported in "
                f"{time.monotonic() - imported_at:.1f}s (one COPY, one transaction)"
            )
            letter = await client.letter_create(
                newsletter_id, "Hello from the mailman demo", _TEXT_BODY, html_body=_HTML_BODY
            )
            letter_id = int(letter["letter_id"])
            sending_at = time.monotonic()
            sent = await client.letter_send(letter_id)
            say(f"  letter {letter_id}: {sent.get('message', sent['state'])}")
            tree = (await client.system_tree())["tree"]
            say("\nThe supervision tree while the letter is being sent:\n" + render_tree(tree) + "\n")
            status, progress = await follow_letter(
                client, letter_id, stream=output.stderr, tty=output.stderr.isatty()
            )
        progress = dataclasses.replace(progress, elapsed=time.monotonic() - sending_at)
    finally:
        await daemon.stop()
    maildir = running.maildir
    messages = 0 if maildir is None else count_messages(maildir)
    document: dict[str, Any] = {
        **status,
        "newsletter_id": newsletter_id,
        "subscribers": added,
        "seconds": round(progress.elapsed, 3),
        "rate": round(progress.done / progress.elapsed, 1) if progress.elapsed > 0 else None,
        "data_dir": str(data_dir),
        "maildir": {"path": None if maildir is None else str(maildir), "messages": messages},
        "tree": tree,
    }
    summary = render_summary(progress)
    text = (
        f"\n{summary}\nThe mail is in the Maildir {maildir}: {messages:,} messages, one file per recipient."
    )
    if maildir is not None:
        text += f"\nRead one: ls {maildir / 'new'} | head -1"
    output.result(document, text)
    return ExitCode.OK if status["state"] == "sent" else ExitCode.ERROR


@dataclasses.dataclass(frozen=True, slots=True)
class _Narrator:
    """The demo's running commentary: on stdout for people; on stderr with ``--json``, so that stdout
    holds only the JSON document."""

    output: Output

    def __call__(self, text: str) -> None:
        if self.output.json_mode:
            self.output.note(text)
        else:
            self.output.stdout.write(text + "\n")
            self.output.stdout.flush()

"""The letter commands: ``letter create``, ``send``, ``status``, ``pause``,
``resume``, ``cancel`` and ``retry``, each one RPC call to the daemon (``send --follow`` then polls
``letter.status`` until the letter is done)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from mailman.cli.invocation import Invocation
from mailman.cli.output import CliError, ExitCode
from mailman.cli.progress import follow_letter, render_summary
from mailman.client import Client

__all__ = [
    "format_status",
    "parse_send_at",
    "read_recipient_ids",
    "run_cancel",
    "run_letter_create",
    "run_pause",
    "run_resume",
    "run_retry",
    "run_send",
    "run_status",
]

_ID_SEPARATORS = re.compile(r"[\s,]+")


def parse_send_at(value: str) -> datetime:
    """``--send-at``: an ISO 8601 datetime with a timezone (``2025-01-31T09:00:00+01:00`` or ``...Z``)."""
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"expected an ISO 8601 datetime with a timezone, like 2025-01-31T09:00:00+01:00, got {value!r}"
        ) from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"expected a timezone in {value!r}: add one, like {value}+00:00 or {value}Z")
    return when


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of ``path``; :class:`CliError` naming ``what`` if it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except IsADirectoryError:
        raise CliError(f"{what} {path} is a directory, expected a file") from None
    except UnicodeDecodeError as exc:
        raise CliError(f"{what} {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise CliError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def read_recipient_ids(path: Path) -> list[int]:
    """Subscription ids from ``path``: separated by spaces, commas or newlines; ``#`` starts a comment."""
    ids: list[int] = []
    for number, line in enumerate(read_text(path, "the recipients file").splitlines(), start=1):
        for token in _ID_SEPARATORS.split(line.split("#", 1)[0]):
            if not token:
                continue
            if not token.isdigit() or int(token) == 0:
                raise CliError(
                    f"{path}:{number}: expected a subscription id (a positive integer), got {token!r}"
                )
            ids.append(int(token))
    if not ids:
        raise CliError(
            f"{path} holds no subscription ids; leave out --recipients to send to every subscriber"
        )
    return ids


def format_status(status: Mapping[str, Any]) -> str:
    """``letter.status`` for people: the state, then the counts."""
    counts: Mapping[str, Any] = status.get("counts", {})
    lines = [f"letter {status['letter_id']}: {status['state']}"]
    if status.get("message"):
        lines[0] += f" ({status['message']})"
    shown = ("delivered", "failed", "skipped", "sending", "pending")
    line = "  " + "  ".join(f"{key} {int(counts.get(key, 0)):,}" for key in shown)
    if status.get("uncertain"):
        line += f"  uncertain {int(status['uncertain']):,}"
    if isinstance(status.get("audience"), int):
        line += f"  (audience {status['audience']:,})"
    lines.append(line)
    if status.get("node") and status.get("state") == "sending":
        lines.append(f"  sent by node {status['node']} (lease until {status.get('lease_expires_at')})")
    if status.get("restarts"):
        lines.append(f"  restarts: {status['restarts']}")
    if status.get("failure_reason"):
        lines.append(f"  failed because: {status['failure_reason']}")
    if "retried" in status:
        lines.append(f"  retried: {status['retried']:,} recipient(s) back to pending")
    return "\n".join(lines)


async def run_letter_create(invocation: Invocation) -> ExitCode:
    """``mailman letter create NEWSLETTER_ID --subject S --text-file F [--html-file F] [--send-at ISO]
    [--uncertain-policy resend|hold]``."""
    args = invocation.args
    text_body = read_text(Path(args.text_file), "the text file")
    html_body = None if args.html_file is None else read_text(Path(args.html_file), "the HTML file")
    async with invocation.client() as client:
        result = await client.letter_create(
            args.newsletter_id,
            args.subject,
            text_body,
            html_body=html_body,
            send_at=args.send_at,
            uncertain_policy=args.uncertain_policy,
        )
    invocation.output.result(result, str(result["letter_id"]))
    return ExitCode.OK


async def run_send(invocation: Invocation) -> ExitCode:
    """``mailman send LETTER_ID [--recipients FILE] [--follow]``.

    Without ``--follow``: exit 0 once the daemon has the letter. With it: exit 0 when the letter is
    sent, 1 when it failed or was cancelled.
    """
    args = invocation.args
    output = invocation.output
    recipients = None if args.recipients is None else read_recipient_ids(Path(args.recipients))
    async with invocation.client() as client:
        try:
            result = await client.letter_send(args.letter_id, recipients)
        except ValueError as exc:  # refused by the client before sending: over 1 MiB
            raise CliError(f"cannot send letter {args.letter_id} to these recipients: {exc}") from None
        if not args.follow:
            output.result(result, format_status(result))
            return ExitCode.OK
        if result.get("message"):
            output.note(f"letter {args.letter_id}: {result['message']}")
        try:
            status, progress = await follow_letter(
                client, args.letter_id, stream=output.stderr, tty=output.stderr.isatty()
            )
        except asyncio.CancelledError:  # Ctrl-C: only the following stops
            output.note(
                f"\nstopped following; letter {args.letter_id} goes on in the daemon "
                f"(`mailman status {args.letter_id}`, `mailman send {args.letter_id} --follow`)"
            )
            raise
    output.result(status, render_summary(progress))
    return ExitCode.OK if status["state"] == "sent" else ExitCode.ERROR


async def _letter_command(
    invocation: Invocation, method: Callable[[Client, int], Awaitable[dict[str, Any]]]
) -> ExitCode:
    """Call one letter method of the daemon and show the letter's status it answers with."""
    async with invocation.client() as client:
        result = await method(client, invocation.args.letter_id)
    invocation.output.result(result, format_status(result))
    return ExitCode.OK


async def run_status(invocation: Invocation) -> ExitCode:
    """``mailman status LETTER_ID``: with ``--json``, exactly the ``letter.status`` result."""
    return await _letter_command(invocation, Client.letter_status)


async def run_pause(invocation: Invocation) -> ExitCode:
    """``mailman pause LETTER_ID``."""
    return await _letter_command(invocation, Client.letter_pause)


async def run_resume(invocation: Invocation) -> ExitCode:
    """``mailman resume LETTER_ID``."""
    return await _letter_command(invocation, Client.letter_resume)


async def run_cancel(invocation: Invocation) -> ExitCode:
    """``mailman cancel LETTER_ID``."""
    return await _letter_command(invocation, Client.letter_cancel)


async def run_retry(invocation: Invocation) -> ExitCode:
    """``mailman retry LETTER_ID``: send again to the recipients that failed."""
    return await _letter_command(invocation, Client.letter_retry_failed)

"""The ``mailman`` command line: argparse wiring, and the translation of failures into exit codes.

Each command's handler lives in the module of its group (:mod:`mailman.cli.letters`,
:mod:`mailman.cli.subscribers`...) and is an ``async def`` taking an
:class:`~mailman.cli.invocation.Invocation` and returning an :class:`~mailman.cli.output.ExitCode`.
:func:`main` parses, runs the handler in ``asyncio.run`` and turns the errors users meet (a bad
configuration, the daemon not running, the daemon's refusals, unreadable files) into a message on
stderr and an exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from mailman import __version__
from mailman.cli.database import run_migrate
from mailman.cli.demo import DEFAULT_DATA_DIR, DEFAULT_RATE, DEFAULT_SUBSCRIBERS, run_demo
from mailman.cli.invocation import Invocation
from mailman.cli.letters import (
    parse_send_at,
    run_cancel,
    run_letter_create,
    run_pause,
    run_resume,
    run_retry,
    run_send,
    run_status,
)
from mailman.cli.newsletters import run_newsletter_create
from mailman.cli.output import CliError, ExitCode, Output
from mailman.cli.serve import run_serve
from mailman.cli.subscribers import run_add, run_import
from mailman.cli.tree import run_tree
from mailman.client import ClientError, DaemonNotRunningError, RpcRemoteError
from mailman.config import ConfigError
from mailman.embedded.errors import EmbeddedServiceError
from mailman.services.errors import MailmanError

__all__ = ["build_parser", "main", "translate_error"]

Handler = Callable[[Invocation], Awaitable[ExitCode]]

EPILOG = """\
configuration:
  MAILMAN_* environment variables over the TOML file given with --config (or named by
  MAILMAN_CONFIG) over the defaults; `mailman serve` and the other commands read the same
  settings, so give them the same environment (see README.md, "Configuration").

exit codes:
  0  ok
  1  error (the message on stderr says what and why)
  2  usage: the command line is wrong
  3  the daemon is not running (start it with `mailman serve`)
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number greater than 0, got {text!r}")
    return value


def _send_at(text: str) -> object:
    try:
        return parse_send_at(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _common_options(*, in_subcommand: bool) -> argparse.ArgumentParser:
    """``--json`` and ``--config``, accepted before the command and after it.

    In a subcommand the defaults are SUPPRESS, so that an option given before the command is not
    overwritten by the subcommand's default.
    """
    options = argparse.ArgumentParser(add_help=False)
    suppress: dict[str, Any] = {"default": argparse.SUPPRESS} if in_subcommand else {}
    options.add_argument(
        "--json", action="store_true", help="machine output: exactly one JSON document on stdout", **suppress
    )
    options.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        help="the TOML configuration file (default: $MAILMAN_CONFIG)",
        **suppress,
    )
    return options


class _Commands:
    """Adds leaf commands to a subparsers action, each with the common options and a handler."""

    def __init__(self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        self._subparsers = subparsers
        self._common = _common_options(in_subcommand=True)

    def add(
        self, name: str, handler: Handler, help_text: str, description: str | None = None
    ) -> argparse.ArgumentParser:
        parser = self._subparsers.add_parser(
            name, help=help_text, description=description or help_text, parents=[self._common]
        )
        parser.set_defaults(handler=handler)
        return parser

    def group(self, name: str, help_text: str) -> _Commands:
        parser = self._subparsers.add_parser(name, help=help_text, description=help_text)
        return _Commands(parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND"))


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = argparse.ArgumentParser(
        prog="mailman",
        description="mailman: a newsletter delivery daemon on an asyncio port of OTP supervision.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common_options(in_subcommand=False)],
    )
    parser.add_argument("--version", action="version", version=f"mailman {__version__}")
    commands = _Commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))

    serve = commands.add(
        "serve",
        run_serve,
        "run the daemon in the foreground until SIGTERM/SIGINT",
        "Run the daemon until SIGTERM or SIGINT: embedded Postgres and Maildir sink for what the "
        "configuration leaves out, migrations, then the supervision tree and its RPC socket.",
    )
    serve.add_argument(
        "--no-migrate",
        action="store_true",
        help="refuse to start on an unmigrated database instead of migrating",
    )
    commands.add(
        "migrate",
        run_migrate,
        "apply the database migrations",
        "Apply pending migrations to MAILMAN_DATABASE_URL, or to the embedded Postgres in the data "
        "directory (started for the occasion if the daemon is not running it).",
    )

    newsletter = commands.group("newsletter", "newsletters")
    create_newsletter = newsletter.add("create", run_newsletter_create, "create a newsletter; prints its id")
    create_newsletter.add_argument("--owner", required=True, metavar="EMAIL", help="the owner's address")
    create_newsletter.add_argument("--name", required=True, help="the newsletter's name")
    create_newsletter.add_argument(
        "--from", dest="from_address", metavar="ADDRESS", help="the From address (default: the owner's)"
    )
    create_newsletter.add_argument("--reply-to", metavar="ADDRESS", help="a Reply-To address")
    create_newsletter.add_argument(
        "--unsubscribe-url",
        metavar="TEMPLATE",
        help="the unsubscribe URL, with {token} for each subscriber's token",
    )

    subscribers = commands.group("subscribers", "subscribers")
    add = subscribers.add("add", run_add, "subscribe one address")
    add.add_argument("newsletter_id", type=_positive_int, metavar="NEWSLETTER_ID")
    add.add_argument("email", metavar="EMAIL")
    add.add_argument("--name", default="", help="the subscriber's name")
    imported = subscribers.add(
        "import",
        run_import,
        "import subscribers from a CSV file, in one transaction",
        "Import subscribers from a UTF-8 CSV file with a header row `email,name` (name optional). The "
        "good rows are imported in one transaction, straight into the daemon's database; bad rows are "
        "listed with their line numbers on stderr, and make the exit code 1. An unreadable file "
        "imports nothing.",
    )
    imported.add_argument("newsletter_id", type=_positive_int, metavar="NEWSLETTER_ID")
    imported.add_argument("file", metavar="FILE.csv")
    imported.add_argument("--dry-run", action="store_true", help="check the file, import nothing")

    letter = commands.group("letter", "letters")
    create_letter = letter.add("create", run_letter_create, "write a letter; prints its id")
    create_letter.add_argument("newsletter_id", type=_positive_int, metavar="NEWSLETTER_ID")
    create_letter.add_argument("--subject", required=True)
    create_letter.add_argument(
        "--text-file",
        required=True,
        metavar="FILE",
        help="the plain-text body ({{ name }}, {{ unsubscribe_url }})",
    )
    create_letter.add_argument("--html-file", metavar="FILE", help="an HTML body, sent as an alternative")
    create_letter.add_argument(
        "--send-at", type=_send_at, metavar="ISO8601", help="schedule it, e.g. 2025-01-31T09:00:00+01:00"
    )
    create_letter.add_argument(
        "--uncertain-policy",
        choices=("resend", "hold"),
        help="after a crash, resend the messages that were in flight (default) or hold them as uncertain",
    )

    send = commands.add(
        "send",
        run_send,
        "send a letter",
        "Send a letter to every active subscriber (or to --recipients). With --follow, draw its "
        "progress on stderr until it is done: exit 0 when sent, 1 when failed or cancelled.",
    )
    send.add_argument("letter_id", type=_positive_int, metavar="LETTER_ID")
    send.add_argument(
        "--recipients", metavar="FILE", help="a file of subscription ids (spaces, commas or lines)"
    )
    send.add_argument("--follow", action="store_true", help="show a progress bar until the letter is done")

    for name, handler, help_text in (
        ("status", run_status, "a letter's state and counts"),
        ("pause", run_pause, "pause a letter being sent (the messages in flight finish)"),
        ("resume", run_resume, "resume a paused letter"),
        ("cancel", run_cancel, "cancel a letter for good"),
        ("retry", run_retry, "send again to a letter's failed recipients"),
    ):
        commands.add(name, handler, help_text).add_argument(
            "letter_id", type=_positive_int, metavar="LETTER_ID"
        )

    commands.add("tree", run_tree, "draw the daemon's live supervision tree")

    demo = commands.add(
        "demo",
        run_demo,
        "send a letter to N subscribers on embedded defaults, in-process",
        "Start the daemon in this process on an embedded Postgres and a Maildir SMTP sink, create a "
        "newsletter with N subscribers, send them a letter with a progress bar, and say where the mail "
        "is. The data directory is reset on each run.",
    )
    demo.add_argument(
        "--subscribers",
        type=_positive_int,
        default=DEFAULT_SUBSCRIBERS,
        metavar="N",
        help=f"how many (default {DEFAULT_SUBSCRIBERS:,})",
    )
    demo.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        metavar="DIR",
        help=f"the demo's own directory, reset on each run (default {DEFAULT_DATA_DIR})",
    )
    demo.add_argument(
        "--rate",
        type=_positive_float,
        default=DEFAULT_RATE,
        metavar="PER_SECOND",
        help=f"messages per second (default {DEFAULT_RATE:,.0f})",
    )

    commands.add("version", _run_version, "print the version")
    return parser


async def _run_version(invocation: Invocation) -> ExitCode:
    invocation.output.result({"version": __version__}, __version__)
    return ExitCode.OK


def translate_error(error: BaseException) -> CliError | None:
    """The :class:`CliError` to report for ``error``; None for a bug (let its traceback show)."""
    match error:
        case CliError():
            return error
        case ConfigError():
            return CliError(
                "invalid configuration", lines=error.problems, details={"problems": list(error.problems)}
            )
        case DaemonNotRunningError():
            return CliError(
                str(error),
                exit_code=ExitCode.DAEMON_NOT_RUNNING,
                details={"socket": str(error.path)},
                lines=("(the socket is MAILMAN_SOCKET, by default <MAILMAN_DATA_DIR>/mailman.sock)",),
            )
        case RpcRemoteError():
            return CliError(error.message, details={"code": error.code, "data": error.data})
        case ClientError() | MailmanError() | EmbeddedServiceError():
            return CliError(str(error))
        case OSError():
            return CliError(str(error))
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    output = Output(json_mode=args.json)
    invocation = Invocation(args, output, config_file=args.config)
    try:
        return int(asyncio.run(args.handler(invocation)))
    except KeyboardInterrupt:
        output.note("mailman: interrupted")
        return 130
    except Exception as exc:
        error = translate_error(exc)
        if error is None:
            raise
        output.error(error)
        return int(error.exit_code)


if __name__ == "__main__":
    sys.exit(main())

"""Runs the daemon as ``mailman serve`` will, for the tests that drive a real daemon process.

    python tests/daemon/launcher.py [--no-migrate]

Settings come from the ``MAILMAN_*`` environment (:func:`mailman.config.load_settings`). Exit codes:
``serve``'s own (0 after SIGTERM/SIGINT, 1 if the tree died), 2 for invalid settings, 3 when the
daemon refuses to start (the database is not migrated and ``--no-migrate`` was given, another daemon
runs on the socket, the tree failed to start); those print one line saying why.

It calls :func:`mailman.daemon.lifecycle.serve` as ``mailman serve`` does, without the rest of the
command line, so that these tests depend on the daemon alone.
"""

from __future__ import annotations

import asyncio
import sys

from mailman.config import ConfigError, load_settings
from mailman.daemon.lifecycle import serve
from mailman.services.errors import MailmanError
from mailman.supervisor import StartError


def main(argv: list[str]) -> int:
    unknown = [arg for arg in argv if arg != "--no-migrate"]
    if unknown:
        print(f"launcher: unknown arguments {unknown}; expected only --no-migrate", file=sys.stderr)
        return 2
    try:
        settings = load_settings()
    except ConfigError as error:
        print(f"mailman: {error}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(serve(settings, apply_migrations="--no-migrate" not in argv))
    except MailmanError as error:
        print(f"mailman: {error}", file=sys.stderr)
        return 3
    except StartError as error:
        print(f"mailman could not start: {error.reason}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The ``mailman`` command line (``mailman ...`` or ``python -m mailman ...``).

For now it offers ``version``; ``serve``, ``send``, ``demo`` and the rest arrive with the daemon.
"""

from __future__ import annotations

import argparse
import sys

from mailman import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mailman", description="Newsletter delivery daemon.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("version", help="print the version")
    commands.add_parser("demo", help="run the demo (arrives with the daemon)")
    args = parser.parse_args(argv)
    if args.command == "version":
        print(__version__)
        return 0
    print(
        "mailman demo: not available yet. The daemon, its embedded Postgres and SMTP sink, and the\n"
        "demo arrive with the next milestone. Meanwhile: `make test`, or run\n"
        "`.venv/bin/python examples/supervision_tree.py` to see a supervision tree at work.",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())

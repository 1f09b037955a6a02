"""What a command prints: human text, or exactly one JSON document with ``--json``; and the exit codes.

Every command ends by handing :class:`Output` one result: :meth:`Output.result` prints the human text
(for people, on stdout) or the JSON document (for scripts, on stdout, nothing else there). Notes and
progress go to stderr in both modes, so that stdout stays parseable. Failures are :class:`CliError`
(or an error :func:`mailman.cli.main.main` translates into one): the message goes to stderr, and with
``--json`` stdout gets ``{"error": {"message": ..., "exit_code": ..., ...}}`` as its one document.

Exit codes (also in ``mailman --help``): 0 ok, 1 error, 2 usage, 3 the daemon is not running.
"""

from __future__ import annotations

import enum
import json
import sys
from collections.abc import Mapping
from typing import Any, TextIO

__all__ = ["CliError", "ExitCode", "Output"]


class ExitCode(enum.IntEnum):
    """The process exit codes of ``mailman``."""

    OK = 0
    ERROR = 1
    """The command failed: bad input, the daemon refused, a file cannot be read..."""
    USAGE = 2
    """The command line itself is wrong (argparse's own code)."""
    DAEMON_NOT_RUNNING = 3
    """The command needs the daemon and nothing listens on its socket."""


class CliError(Exception):
    """A failure to report to the user: ``message`` on stderr, ``details`` in the JSON error document."""

    def __init__(
        self,
        message: str,
        *,
        exit_code: ExitCode = ExitCode.ERROR,
        details: Mapping[str, Any] | None = None,
        lines: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.details = dict(details or {})
        self.lines = lines
        """Further lines for people (one problem each), printed indented under the message."""


class Output:
    """Where a command's words go: stdout for its result, stderr for everything else."""

    def __init__(
        self, *, json_mode: bool, stdout: TextIO | None = None, stderr: TextIO | None = None
    ) -> None:
        self.json_mode = json_mode
        self.stdout = sys.stdout if stdout is None else stdout
        self.stderr = sys.stderr if stderr is None else stderr

    def result(self, document: Mapping[str, Any], text: str | None) -> None:
        """The command's result: ``document`` as JSON with ``--json``, else ``text`` (if any)."""
        if self.json_mode:
            self.stdout.write(to_json(document) + "\n")
        elif text is not None:
            self.stdout.write(text if text.endswith("\n") else text + "\n")
        self.stdout.flush()

    def note(self, text: str) -> None:
        """A line for people (on stderr, in both modes): warnings, per-row problems, hints."""
        self.stderr.write(text if text.endswith("\n") else text + "\n")
        self.stderr.flush()

    def error(self, error: CliError) -> None:
        """Report ``error``: its message (and lines) on stderr, and with ``--json`` a document on stdout."""
        self.note(f"mailman: error: {error.message}")
        for line in error.lines:
            self.note(f"  {line}")
        if self.json_mode:
            document = {"message": error.message, "exit_code": int(error.exit_code), **error.details}
            self.stdout.write(to_json({"error": document}) + "\n")
            self.stdout.flush()


def to_json(document: Mapping[str, Any]) -> str:
    """``document`` as one line of JSON (non-JSON values such as paths are written as strings)."""
    return json.dumps(document, default=str, ensure_ascii=False, allow_nan=False)

"""``mailman serve``: run the daemon in the foreground until SIGTERM or SIGINT."""

from __future__ import annotations

from mailman.cli.invocation import Invocation
from mailman.cli.output import CliError, ExitCode
from mailman.daemon.lifecycle import serve
from mailman.supervisor import StartError

__all__ = ["run_serve"]


async def run_serve(invocation: Invocation) -> ExitCode:
    """``mailman serve [--no-migrate]``: the exit code is the daemon's (0 stopped by a signal, 1 its
    tree died). With ``--json``, ``{"exit_code": N}`` is printed when it stops."""
    settings = invocation.settings()
    try:
        code = await serve(settings, apply_migrations=not invocation.args.no_migrate)
    except StartError as exc:
        raise CliError(f"mailman could not start: {exc.reason}") from None
    invocation.output.result({"exit_code": code}, None)
    return ExitCode(code)

"""``mailman newsletter create``: a newsletter and its owner, through the daemon (``newsletter.create``)."""

from __future__ import annotations

from mailman.cli.invocation import Invocation
from mailman.cli.output import ExitCode

__all__ = ["run_newsletter_create"]


async def run_newsletter_create(invocation: Invocation) -> ExitCode:
    """``mailman newsletter create --owner EMAIL --name NAME [--from A] [--reply-to A]
    [--unsubscribe-url T]``: prints the new newsletter's id."""
    args = invocation.args
    async with invocation.client() as client:
        result = await client.newsletter_create(
            owner_email=args.owner,
            name=args.name,
            from_address=args.from_address or args.owner,
            reply_to=args.reply_to,
            unsubscribe_url_template=args.unsubscribe_url,
        )
    invocation.output.result(result, str(result["newsletter_id"]))
    return ExitCode.OK

"""The daemon's answers to RPC methods: :class:`mailman.rpc.Handlers` over the running engine.

Each method validates nothing itself (the RPC layer already did, with pydantic) and translates
nothing by hand: the engine's typed exceptions become JSON-RPC errors in :func:`map_error`
(not found, conflict, unavailable, invalid params).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mailman.daemon.tree_view import describe_tree
from mailman.rpc import (
    ErrorCode,
    LetterCancelParams,
    LetterCreateParams,
    LetterPauseParams,
    LetterResumeParams,
    LetterRetryFailedParams,
    LetterSendParams,
    LetterStatusParams,
    NewsletterCreateParams,
    RpcError,
    SubscribersAddParams,
    SystemConfigureParams,
    SystemHealthParams,
    SystemTreeParams,
)
from mailman.services.delivery import letter_commands
from mailman.services.delivery.context import DeliveryContext
from mailman.services.delivery.scheduler import Scheduler
from mailman.services.errors import (
    ConflictError,
    DatabaseUnavailableError,
    InvalidDataError,
    LetterLeasedError,
    NotFoundError,
)
from mailman.services.smtp.mailer import Mailer, pool_size_for
from mailman.services.smtp.message import TemplateError
from mailman.services.store.models import NewSubscriber, UncertainPolicy
from mailman.services.store.queries import letters, newsletters, subscriptions
from mailman.services.store.repo import Repo
from mailman.supervisor import Pid, whereis

__all__ = ["MailmanHandlers", "map_error"]

Result = Mapping[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class MailmanHandlers:
    """Implements every RPC method on the engine named by ``context``."""

    context: DeliveryContext
    application: str = "mailman.application"
    scheduler: str = "mailman.scheduler"
    message_domain: str = "mailman.localhost"

    async def letter_send(self, params: LetterSendParams) -> Result:
        recipients = None if params.recipients is None else tuple(params.recipients)
        return await letter_commands.send_letter(self.context, params.letter_id, recipients)

    async def letter_status(self, params: LetterStatusParams) -> Result:
        return await letter_commands.letter_status(self.context, params.letter_id)

    async def letter_pause(self, params: LetterPauseParams) -> Result:
        return await letter_commands.pause_letter(self.context, params.letter_id)

    async def letter_resume(self, params: LetterResumeParams) -> Result:
        return await letter_commands.resume_letter(self.context, params.letter_id)

    async def letter_cancel(self, params: LetterCancelParams) -> Result:
        return await letter_commands.cancel_letter(self.context, params.letter_id)

    async def letter_retry_failed(self, params: LetterRetryFailedParams) -> Result:
        return await letter_commands.retry_failed(self.context, params.letter_id)

    async def letter_create(self, params: LetterCreateParams) -> Result:
        pool = await Repo.pool(self.context.repo)
        letter = await letters.create_letter(
            pool,
            newsletter_id=params.newsletter_id,
            subject=params.subject,
            text_body=params.text_body,
            html_body=params.html_body,
            uncertain_policy=UncertainPolicy(params.uncertain_policy),
            message_domain=self.message_domain,
        )
        state = letter.status.value
        if params.send_at is not None:
            await letters.schedule_letter(pool, letter.id, params.send_at)
            state = "scheduled"
            if whereis(self.scheduler) is not None:
                Scheduler.wake(self.scheduler)
        return {"letter_id": letter.id, "state": state}

    async def newsletter_create(self, params: NewsletterCreateParams) -> Result:
        pool = await Repo.pool(self.context.repo)
        template = params.unsubscribe_url_template or f"https://{self.message_domain}/unsubscribe/{{token}}"
        user, newsletter = await newsletters.create_user_with_newsletter(
            pool,
            email=params.owner_email,
            name=params.name,
            from_address=params.from_address,
            reply_to=params.reply_to,
            unsubscribe_url_template=template,
        )
        return {"newsletter_id": newsletter.id, "user_id": user.id}

    async def subscribers_add(self, params: SubscribersAddParams) -> Result:
        pool = await Repo.pool(self.context.repo)
        added = await subscriptions.add_subscribers(
            pool,
            params.newsletter_id,
            (NewSubscriber(email=s.email, name=s.name) for s in params.subscribers),
        )
        return {
            "newsletter_id": params.newsletter_id,
            "added": added,
            "existing": len(params.subscribers) - added,
        }

    async def system_tree(self, params: SystemTreeParams) -> Result:
        root = whereis(self.application)
        if not isinstance(root, Pid):
            raise RpcError(ErrorCode.UNAVAILABLE, "the supervision tree is not running")
        return {"tree": await describe_tree(root, registries=(self.context.letters,))}

    async def system_health(self, params: SystemHealthParams) -> Result:
        checks: dict[str, str] = {}
        try:
            pool = await Repo.pool(self.context.repo)
            async with asyncio.timeout(5):
                await pool.fetchval("SELECT 1")
            checks["database"] = "ok"
        except Exception as error:  # report, never raise: health must answer
            checks["database"] = f"unavailable: {error}"
        try:
            smtp = await Mailer.pool(self.context.mailer)
            breaker = smtp.breaker
            checks["smtp"] = "ok" if breaker is None or breaker.allow_request() else "circuit open"
        except Exception as error:
            checks["smtp"] = f"unavailable: {error}"
        status = "ok" if all(value == "ok" for value in checks.values()) else "degraded"
        return {"status": status, "checks": checks}

    async def system_configure(self, params: SystemConfigureParams) -> Result:
        pool_size = None if params.concurrency is None else pool_size_for(params.concurrency)
        settings = await Mailer.configure(self.context.mailer, rate=params.rate_limit, pool_size=pool_size)
        rate = None if settings.rate == float("inf") else settings.rate
        return {"rate_limit": rate, "concurrency": settings.pool_size}


def map_error(error: Exception) -> RpcError | None:
    """The JSON-RPC error for an engine exception; None for a bug (answered as internal error)."""
    match error:
        case NotFoundError():
            return RpcError(ErrorCode.NOT_FOUND, str(error))
        case ConflictError() | LetterLeasedError():  # the letter commands answer the latter themselves
            return RpcError(ErrorCode.CONFLICT, str(error))
        case DatabaseUnavailableError():
            return RpcError(ErrorCode.UNAVAILABLE, f"the database is unavailable: {error}")
        case InvalidDataError() | TemplateError():
            return RpcError(ErrorCode.INVALID_PARAMS, str(error))
    return None

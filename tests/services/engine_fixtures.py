"""The delivery engine running for real: Postgres (a fresh database), an SMTP sink, the tree.

``engine`` starts the :class:`Application` tree (Repo, letters Registry, Mailer, task supervisor,
dispatcher) on the test's database and the ``smtp_sink``, and gives the test an :class:`Engine`
with helpers to create a newsletter, subscribers and a letter, and to wait for a letter's end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest

from mailman.services import letter_commands
from mailman.services.application import Application, ApplicationConfig
from mailman.services.delivery_context import DeliveryContext, DeliverySettings
from mailman.services.letter_delivery_dispatcher import LetterDeliveryDispatcher
from mailman.services.mailer_server import MailerConfig
from mailman.services.models import Letter, LetterStatus, NewSubscriber
from mailman.services.queries import letters, newsletters, subscriptions
from mailman.services.retry_policy import RetryPolicy
from mailman.supervisor import Pid, Supervisor, await_exit
from tests.services.smtp_sink import SmtpSink

FAST_RETRY = RetryPolicy(max_attempts=5, base_delay=0.0, max_delay=0.0)


@dataclass
class Engine:
    tree: Pid
    pool: asyncpg.Pool[asyncpg.Record]
    context: DeliveryContext
    sink: SmtpSink
    newsletter_id: int = 0
    subscription_ids: list[int] = field(default_factory=list)

    async def newsletter(self, subscribers: int, *, domain: str = "example.com") -> list[int]:
        _, newsletter = await newsletters.create_user_with_newsletter(
            self.pool,
            email="owner@example.com",
            name="The Weekly",
            from_address="news@example.com",
            unsubscribe_url_template="https://example.com/unsubscribe/{token}",
        )
        self.newsletter_id = newsletter.id
        await subscriptions.add_subscribers(
            self.pool,
            newsletter.id,
            [NewSubscriber(email=f"reader{i}@{domain}", name=f"Reader {i}") for i in range(subscribers)],
        )
        rows = await self.pool.fetch(
            "SELECT id FROM subscriptions WHERE newsletter_id = $1 ORDER BY id", newsletter.id
        )
        self.subscription_ids = [row["id"] for row in rows]
        return self.subscription_ids

    async def letter(self, subject: str = "Hello") -> Letter:
        return await letters.create_letter(
            self.pool,
            newsletter_id=self.newsletter_id,
            subject=subject,
            text_body="Dear {{ name }},\nthe news.\nUnsubscribe: {{ unsubscribe_url }}\n",
            html_body="<p>Dear {{ name }},</p><p>the news.</p>",
        )

    async def send(self, letter_id: int, recipients: tuple[int, ...] | None = None) -> dict[str, Any]:
        return await letter_commands.send_letter(self.context, letter_id, recipients)

    async def wait_until_done(self, letter_id: int, timeout: float = 60.0) -> Letter:
        """Wait until nobody is sending the letter any more; the letter as it then is."""
        async with asyncio.timeout(timeout):
            while (service := LetterDeliveryDispatcher.running(self.context, letter_id)) is not None:
                await await_exit(service)
            # The LetterSupervisor may be restarting the service: look again after it settles.
            letter = await letters.get_letter(self.pool, letter_id)
            while letter.status is LetterStatus.SENDING and letter.mail_order.get("running") is not False:
                service = LetterDeliveryDispatcher.running(self.context, letter_id)
                if service is None:
                    await asyncio.sleep(0.01)  # the restart is in progress; poll briefly
                else:
                    await await_exit(service)
                letter = await letters.get_letter(self.pool, letter_id)
        return letter


def engine_config(database_url: str, sink: SmtpSink, **settings: Any) -> ApplicationConfig:
    delivery = DeliverySettings(
        **{"retry": FAST_RETRY, "flush_interval": 0.05, "idle_poll": 0.05, **settings}
    )
    return ApplicationConfig(
        database_url=database_url,
        mailer=MailerConfig(url=sink.url(), pool_size=8),
        context=DeliveryContext(settings=delivery),
    )


@pytest.fixture
async def engine(
    database_url: str, pool: asyncpg.Pool[asyncpg.Record], smtp_sink: SmtpSink
) -> AsyncIterator[Engine]:
    config = engine_config(database_url, smtp_sink)
    tree = await Application.start_link(config)
    yield Engine(tree=tree, pool=pool, context=config.context, sink=smtp_sink)
    await Supervisor.stop(tree)

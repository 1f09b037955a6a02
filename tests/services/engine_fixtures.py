"""The delivery engine running for real: Postgres (a fresh database), an SMTP sink, the tree.

``engine`` starts the :class:`Application` tree (Repo, letters Registry, Mailer, task supervisor,
dispatcher) on the test's database and the ``smtp_sink``, and gives the test an :class:`Engine`
with helpers to create a newsletter, subscribers and a letter, and to wait for a letter's end.

``engine_factory`` does the same with :class:`~mailman.services.delivery.context.DeliverySettings`
overrides (``await engine_factory(flush_interval=60.0)``); an :class:`Engine` can also be stopped
and started again (:meth:`Engine.stop`, :meth:`Engine.start`): a new tree on the same database, as
a daemon restart would give. Every tree still running is stopped after the test.

Several daemons (nodes) on one database run as several trees in the test's process: give each its
own ``names`` (the prefix of its registered names, ``"mailman"`` by default) and ``node_name``;
``scheduler_poll=`` adds the daemon's Scheduler (boot recovery, takeovers) ticking that often::

    a = await engine_factory(names="a", node_name="node-a", lease_ttl=1.0)
    b = await engine_factory(names="b", node_name="node-b", lease_ttl=1.0, scheduler_poll=0.05)

Synchronisation helpers, since tests never sleep to wait for something: :func:`eventually` polls a
condition (usually Postgres state) with a deadline; :func:`hold_replies` freezes the SMTP side with
held end-of-DATA replies, so that a test acts while a known set of messages is in flight;
:func:`while_draining` runs a pause, a cancel or a stop that way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from email import message_from_bytes
from typing import Any, Protocol

import asyncpg
import pytest

from mailman.services.delivery import letter_commands
from mailman.services.delivery.application import Application, ApplicationConfig
from mailman.services.delivery.context import DeliveryContext, DeliverySettings
from mailman.services.delivery.letter_delivery_dispatcher import LetterDeliveryDispatcher
from mailman.services.delivery.retry_policy import RetryPolicy
from mailman.services.delivery.scheduler import Scheduler, SchedulerArgs
from mailman.services.smtp.mailer import MailerConfig
from mailman.services.store.models import Letter, LetterStatus, NewSubscriber, UncertainPolicy
from mailman.services.store.queries import letters, newsletters, subscriptions
from mailman.supervisor import (
    KILL,
    ChildNotFoundError,
    DynamicSupervisor,
    EventName,
    GenServer,
    Pid,
    Supervisor,
    attach,
    await_exit,
    detach,
    exit,
    is_alive,
)
from tests.services.smtp_sink import Hold, ReceivedMessage, SmtpSink

FAST_RETRY = RetryPolicy(max_attempts=5, base_delay=0.0, max_delay=0.0)
POOL_SIZE = 8
"""SMTP connections of the test Mailer: at most this many messages are on the wire at once."""


@dataclass
class Engine:
    tree: Pid | None
    pool: asyncpg.Pool[asyncpg.Record]
    config: ApplicationConfig
    sink: SmtpSink
    newsletter_id: int = 0
    subscription_ids: list[int] = field(default_factory=list)

    @property
    def context(self) -> DeliveryContext:
        return self.config.context

    async def start(self) -> Pid:
        """Start a new Application tree on the same database and sink (after :meth:`stop`)."""
        assert self.tree is None or not is_alive(self.tree), "the tree is still running"
        self.tree = await Application.start_link(self.config)
        return self.tree

    async def stop(self) -> None:
        """Stop the tree gracefully (as the daemon does on SIGTERM)."""
        if self.tree is not None and is_alive(self.tree):
            await Supervisor.stop(self.tree)

    async def newsletter(self, subscribers: int, *, domain: str = "example.com") -> list[int]:
        _, newsletter = await newsletters.create_user_with_newsletter(
            self.pool,
            email="owner@example.com",
            name="The Weekly",
            from_address="news@example.com",
            unsubscribe_url_template="https://example.com/unsubscribe/{token}",
        )
        self.newsletter_id = newsletter.id
        await self.subscribe(subscribers, domain=domain)
        return self.subscription_ids

    async def subscribe(self, count: int, *, domain: str = "example.com", first: int = 0) -> list[int]:
        """Add ``count`` subscribers ``reader{first}@domain``...; their subscription ids."""
        before = set(self.subscription_ids)
        await subscriptions.add_subscribers(
            self.pool,
            self.newsletter_id,
            [
                NewSubscriber(email=f"reader{i}@{domain}", name=f"Reader {i}")
                for i in range(first, first + count)
            ],
        )
        rows = await self.pool.fetch(
            "SELECT id FROM subscriptions WHERE newsletter_id = $1 ORDER BY id", self.newsletter_id
        )
        self.subscription_ids = [row["id"] for row in rows]
        return [i for i in self.subscription_ids if i not in before]

    async def letter(
        self, subject: str = "Hello", *, uncertain_policy: UncertainPolicy = UncertainPolicy.RESEND
    ) -> Letter:
        return await letters.create_letter(
            self.pool,
            newsletter_id=self.newsletter_id,
            subject=subject,
            text_body="Dear {{ name }},\nthe news.\nUnsubscribe: {{ unsubscribe_url }}\n",
            html_body="<p>Dear {{ name }},</p><p>the news.</p>",
            uncertain_policy=uncertain_policy,
        )

    async def send(self, letter_id: int, recipients: tuple[int, ...] | None = None) -> dict[str, Any]:
        return await letter_commands.send_letter(self.context, letter_id, recipients)

    def service(self, letter_id: int) -> Pid:
        """The LetterDeliveryService sending the letter (it must be running)."""
        pid = LetterDeliveryDispatcher.running(self.context, letter_id)
        assert pid is not None, f"no service is sending letter {letter_id}"
        return pid

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

    async def delivery_states(self, letter_id: int) -> dict[int, tuple[str, int, str | None]]:
        """subscription id -> (state, attempts, last_error) of every delivery of the letter."""
        rows = await self.pool.fetch(
            "SELECT subscription_id, state, attempts, last_error FROM deliveries WHERE letter_id = $1",
            letter_id,
        )
        return {row["subscription_id"]: (row["state"], row["attempts"], row["last_error"]) for row in rows}

    async def emails(self) -> dict[int, str]:
        """subscription id -> address, for the newsletter's subscribers."""
        rows = await self.pool.fetch(
            "SELECT id, email FROM subscriptions WHERE newsletter_id = $1", self.newsletter_id
        )
        return {row["id"]: row["email"] for row in rows}


async def kill_node(node: Engine) -> None:
    """Kill the node as SIGKILL would, as far as its letters can tell.

    Its Scheduler goes first (it holds no letter state; left running, it would take its own letters
    back). Then every letter's service and LetterSupervisor are killed in one go, before any of them
    can run again: no terminate, so no flush, no release of the lease, ``running`` left set. Only
    then is the rest of the tree stopped, closing its database pool and SMTP connections.
    """
    assert node.tree is not None
    with contextlib.suppress(ChildNotFoundError):
        await Supervisor.terminate_child(node.tree, "scheduler")
    victims: list[Pid] = []
    for child in await DynamicSupervisor.which_children(node.context.dispatcher):
        assert isinstance(child.pid, Pid)
        victims += [c.pid for c in await Supervisor.which_children(child.pid) if isinstance(c.pid, Pid)]
        victims.append(child.pid)
    for pid in victims:  # no await in this loop: none of them runs again
        exit(pid, KILL)
    for pid in victims:
        await await_exit(pid)
    await node.stop()


def received(sink: SmtpSink) -> Counter[str]:
    """How many messages each address received."""
    return Counter(message.rcpt_tos[0] for message in sink.messages)


def message_ids(messages: list[ReceivedMessage]) -> dict[str, set[str]]:
    """address -> the Message-IDs of every message it received."""
    ids: dict[str, set[str]] = {}
    for message in messages:
        ids.setdefault(message.rcpt_tos[0], set()).add(str(message_from_bytes(message.data)["Message-ID"]))
    return ids


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 10.0, interval: float = 0.005
) -> None:
    """Poll ``check`` (a read of Postgres or of a process) until it holds; fail after ``timeout``."""
    async with asyncio.timeout(timeout):
        while True:
            if await check():
                return
            await asyncio.sleep(interval)


async def hold_replies(sink: SmtpSink, count: int = POOL_SIZE, timeout: float = 10.0) -> list[Hold]:
    """Hold the next ``count`` end-of-DATA replies and wait until all are held.

    With ``count`` equal to the Mailer's pool size, every SMTP connection is then stuck waiting for
    its verdict: nothing more is accepted until the holds are released (or the connections die), so
    the test acts on a frozen, known set of messages in flight.
    """
    holds = [sink.hold("END") for _ in range(count)]
    async with asyncio.timeout(timeout):
        for hold in holds:
            await hold.reached.wait()
    return holds


async def while_draining(
    engine: Engine, letter_id: int, command: Callable[[], Awaitable[Any]], *, after_messages: int = 20
) -> Any:
    """Run ``command`` (a pause, a cancel, a stop) mid-send, and its result.

    Once ``after_messages`` messages are in, every SMTP reply is held (:func:`hold_replies`);
    ``command`` starts, and the replies are released only when the letter's service has stopped
    claiming, so that the command is known to act while a known set of messages is in flight.
    """
    await engine.sink.wait_for_messages(after_messages)
    holds = await hold_replies(engine.sink)
    drain = GenServer.get_state(engine.service(letter_id)).drain
    running = asyncio.create_task(command())
    async with asyncio.timeout(10):
        await drain.wait()
    for hold in holds:
        hold.release()
    return await running


def engine_config(
    database_url: str,
    sink: SmtpSink,
    *,
    names: str = "mailman",
    scheduler_poll: float | None = None,
    **settings: Any,
) -> ApplicationConfig:
    delivery = DeliverySettings(
        **{"retry": FAST_RETRY, "flush_interval": 0.05, "idle_poll": 0.05, **settings}
    )
    context = DeliveryContext(
        repo=f"{names}.repo",
        mailer=f"{names}.mailer",
        tasks=f"{names}.tasks",
        letters=f"{names}.letters",
        dispatcher=f"{names}.dispatcher",
        settings=delivery,
    )
    extra = []
    if scheduler_poll is not None:
        extra.append(
            Scheduler.child_spec(
                SchedulerArgs(context=context, poll_interval=scheduler_poll),
                id="scheduler",
                name=f"{names}.scheduler",
            )
        )
    return ApplicationConfig(
        database_url=database_url,
        mailer=MailerConfig(url=sink.url(), pool_size=POOL_SIZE),
        context=context,
        extra_children=extra,
    )


class EngineFactory(Protocol):
    async def __call__(
        self, *, names: str = "mailman", scheduler_poll: float | None = None, **settings: Any
    ) -> Engine: ...


@pytest.fixture
async def engine_factory(
    database_url: str, pool: asyncpg.Pool[asyncpg.Record], smtp_sink: SmtpSink
) -> AsyncIterator[EngineFactory]:
    """Start engines with DeliverySettings overrides; every tree still running is stopped at the end."""
    engines: list[Engine] = []

    async def start(
        *, names: str = "mailman", scheduler_poll: float | None = None, **settings: Any
    ) -> Engine:
        config = engine_config(
            database_url, smtp_sink, names=names, scheduler_poll=scheduler_poll, **settings
        )
        engine = Engine(tree=None, pool=pool, config=config, sink=smtp_sink)
        engines.append(engine)
        await engine.start()
        return engine

    yield start
    smtp_sink.clear_faults()  # held replies go, so that no graceful stop waits for them
    for engine in engines:
        await engine.stop()


@pytest.fixture
async def engine(engine_factory: EngineFactory) -> Engine:
    return await engine_factory()


NO_FLUSH: Mapping[str, Any] = {"flush_size": 10_000, "flush_interval": 60.0}
"""Settings under which a letter's service records no outcome before its driver ends: killed then,
all it sent is in flight (accepted by the relay, unrecorded in Postgres)."""


@pytest.fixture
def restarts() -> Iterator[list[Pid]]:
    """The pids of every child restarted by any supervisor during the test (supervisor events)."""
    pids: list[Pid] = []

    def record(_event: EventName, metadata: Mapping[str, Any]) -> None:
        pids.append(metadata["pid"])

    attach("tests-engine-restarts", ("supervisor", "child", "restarted"), record)
    yield pids
    detach("tests-engine-restarts")

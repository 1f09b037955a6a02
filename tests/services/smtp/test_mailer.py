"""The SMTP pool and the Mailer, end to end against a real SMTP server (aiosmtpd on 127.0.0.1).

No SMTP mock anywhere: every test talks to :class:`~tests.services.smtp_sink.SmtpSink`, which fails
on command. Tests synchronise on the sink's events and holds, on fake time, and on task order,
never on sleeps.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest

from mailman import supervisor as otp
from mailman.services.smtp.circuit_breaker import BreakerState, CircuitBreaker
from mailman.services.smtp.mailer import MAX_POOL_SIZE, Mailer, MailerConfig, MailerSettings, pool_size_for
from mailman.services.smtp.outcome import (
    Delivered,
    Permanent,
    SmtpPhase,
    Transient,
    TransportFault,
    Withdrawn,
)
from mailman.services.smtp.pool import PoolClosedError, SmtpPool
from mailman.services.smtp.rate_limit import TokenBucket
from mailman.services.smtp.url import Security, SmtpUrl, SmtpUrlError, parse_smtp_url

if TYPE_CHECKING:
    from tests.services.smtp_fixtures import FakeTime, SinkFactory
    from tests.services.smtp_sink import Command, SmtpSink

SENDER = "news@example.com"
MESSAGE = b"From: news@example.com\r\nTo: ada@example.org\r\nSubject: hi\r\n\r\nHello.\r\n"

PoolFactory = Callable[..., SmtpPool]


@pytest.fixture
async def make_pool(smtp_sink: SmtpSink) -> AsyncIterator[PoolFactory]:
    """Pools on the sink (or another URL), closed after the test."""
    pools: list[SmtpPool] = []

    def make(url: str | None = None, **options: Any) -> SmtpPool:
        options.setdefault("local_hostname", "client.test")
        options.setdefault("timeout", 5.0)
        pool = SmtpPool(url or smtp_sink.url(), **options)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close()


async def send(pool: SmtpPool, recipient: str = "ada@example.org", **options: Any) -> Any:
    return await pool.send(SENDER, recipient, MESSAGE, **options)


async def _nothing() -> None:
    return None


async def let_started_tasks_run() -> None:
    """Return once every task created before the call has run up to its first suspension.

    asyncio starts tasks in creation order (call_soon is FIFO), so a task created now runs after
    them: awaiting it is a barrier, not a sleep.
    """
    await asyncio.create_task(_nothing())


# ---------------------------------------------------------------- URLs


class TestParseSmtpUrl:
    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("smtp://relay", SmtpUrl(host="relay", port=25, security=Security.NONE)),
            ("smtp://relay:2525", SmtpUrl(host="relay", port=2525, security=Security.NONE)),
            ("smtp+starttls://relay", SmtpUrl(host="relay", port=587, security=Security.STARTTLS)),
            ("smtps://relay", SmtpUrl(host="relay", port=465, security=Security.TLS)),
            (
                "SMTPS://Relay.Example.COM:1465/",
                SmtpUrl(host="relay.example.com", port=1465, security=Security.TLS),
            ),
            ("smtp://[::1]:25", SmtpUrl(host="::1", port=25, security=Security.NONE)),
            (
                "smtp+starttls://me%40example.com:p%3Ass@relay",
                SmtpUrl(
                    host="relay",
                    port=587,
                    security=Security.STARTTLS,
                    username="me@example.com",
                    password="p:ss",
                ),
            ),
            (
                "smtp://apikey@relay",
                SmtpUrl(host="relay", port=25, security=Security.NONE, username="apikey"),
            ),
        ],
    )
    def test_valid(self, url: str, expected: SmtpUrl) -> None:
        """The three schemes, their default ports, percent-decoded credentials, IPv6 hosts."""
        assert parse_smtp_url(url) == expected

    @pytest.mark.parametrize(
        ("url", "why"),
        [
            ("http://relay", "unknown scheme 'http'"),
            ("smtp+ssl://relay", "unknown scheme"),
            ("relay:25", "unknown scheme"),
            ("smtp://", "no host"),
            ("smtp://:secret@:25", "no host"),
            ("smtp://relay:abc", "port"),
            ("smtp://relay:0", "port"),
            ("smtp://relay:70000", "port"),
            ("smtp://relay/path", "no path"),
            ("smtp://relay?tls=1", "no path, query"),
            ("smtp://:secret@relay", "needs a user name"),
        ],
    )
    def test_invalid(self, url: str, why: str) -> None:
        """Each mistake gets its own reason and an example of a good URL."""
        with pytest.raises(SmtpUrlError, match=why) as caught:
            parse_smtp_url(url)
        assert "smtp+starttls://user:password@relay:587" in str(caught.value)
        assert isinstance(caught.value, ValueError)

    def test_errors_never_show_the_password(self) -> None:
        """A password does not leak into an error message (which ends up in logs)."""
        with pytest.raises(SmtpUrlError) as caught:
            parse_smtp_url("smtp://user:hunter2@relay/x")
        assert "hunter2" not in str(caught.value)
        assert "user:***@relay" in str(caught.value)

    def test_str_and_repr_hide_the_password(self) -> None:
        """Printing the URL for logs hides the password."""
        url = parse_smtp_url("smtp+starttls://user:hunter2@relay")
        assert str(url) == "smtp+starttls://user:***@relay:587"
        assert "hunter2" not in repr(url)

    def test_not_a_string(self) -> None:
        """A URL must be a str."""
        with pytest.raises(TypeError, match="str"):
            parse_smtp_url(b"smtp://relay")  # type: ignore[arg-type]


# ---------------------------------------------------------------- connections


class TestConnections:
    async def test_created_lazily(self, smtp_sink: SmtpSink, make_pool: PoolFactory) -> None:
        """A new pool opens no connection until something is sent."""
        pool = make_pool()
        assert (smtp_sink.connections, pool.stats().open_connections) == (0, 0)

    async def test_reused_across_messages(self, smtp_sink: SmtpSink, make_pool: PoolFactory) -> None:
        """Ten messages in a row travel over one connection."""
        pool = make_pool()
        for n in range(10):
            assert isinstance(await send(pool, f"r{n}@example.org"), Delivered)
        assert smtp_sink.connections == 1
        assert {message.connection for message in smtp_sink.messages} == {1}

    async def test_concurrency_is_bounded_by_the_size(
        self, smtp_sink: SmtpSink, make_pool: PoolFactory
    ) -> None:
        """Twenty concurrent sends on a pool of three use three connections, no more."""
        pool = make_pool(size=3)
        hold = smtp_sink.hold("RCPT")
        tasks = [asyncio.create_task(send(pool, f"r{n}@example.org")) for n in range(20)]
        await hold.reached.wait()
        await let_started_tasks_run()
        stats = pool.stats()
        assert (stats.busy, stats.waiting) == (3, 17)
        hold.release()
        results = await asyncio.gather(*tasks)
        assert all(isinstance(result, Delivered) for result in results)
        assert smtp_sink.connections == 3 == pool.stats().connections_opened

    async def test_recycled_after_max_messages(self, smtp_sink: SmtpSink, make_pool: PoolFactory) -> None:
        """With a cap of 3 messages per connection, 7 messages use 3 connections, the full ones QUIT."""
        pool = make_pool(max_messages_per_connection=3)
        for n in range(7):
            await send(pool, f"r{n}@example.org")
        per_connection = [message.connection for message in smtp_sink.messages]
        assert per_connection == [1, 1, 1, 2, 2, 2, 3]
        assert [entry for entry in smtp_sink.commands if entry[1] == "QUIT"] == [(1, "QUIT"), (2, "QUIT")]

    async def test_421_recycles(self, smtp_sink: SmtpSink, make_pool: PoolFactory) -> None:
        """A 421 (service closing) ends that connection; the next message gets a new one."""
        pool = make_pool()
        await send(pool)
        smtp_sink.reply("RCPT", 421)
        assert await send(pool) == Transient(421, "4.3.2 Service shutting down", SmtpPhase.RCPT)
        assert isinstance(await send(pool), Delivered)
        assert [message.connection for message in smtp_sink.messages] == [1, 2]

    async def test_reused_connection_refused_at_mail_is_retried_fresh(
        self, smtp_sink: SmtpSink, make_pool: PoolFactory
    ) -> None:
        """A 421 to MAIL on a reused connection (dropped while idle) costs nothing: a new one sends."""
        pool = make_pool()
        await send(pool)
        smtp_sink.reply("MAIL", 421)
        assert isinstance(await send(pool), Delivered)
        assert [message.connection for message in smtp_sink.messages] == [1, 2]

    async def test_connection_closed_by_the_server_while_idle(
        self, smtp_sink: SmtpSink, make_pool: PoolFactory
    ) -> None:
        """A connection the server closed while it sat idle is replaced without a failed send."""
        pool = make_pool()
        await send(pool)
        await smtp_sink.stop_listening()
        await smtp_sink.resume_listening()
        assert isinstance(await send(pool), Delivered)
        assert smtp_sink.connections == 2

    async def test_idle_too_long_is_not_reused(
        self, smtp_sink: SmtpSink, make_pool: PoolFactory, fake_time: FakeTime
    ) -> None:
        """After ``idle_timeout`` a connection is closed instead of reused (servers drop idle ones)."""
        pool = make_pool(idle_timeout=30, clock=fake_time)
        await send(pool)
        fake_time.advance(29)
        await send(pool)
        fake_time.advance(31)
        await send(pool)
        assert [message.connection for message in smtp_sink.messages] == [1, 1, 2]

    async def test_cancelled_send_discards_its_connection(
        self, smtp_sink: SmtpSink, make_pool: PoolFactory
    ) -> None:
        """A send cancelled mid-transaction closes its connection (state unknown) and frees its slot."""
        pool = make_pool(size=1)
        hold = smtp_sink.hold("RCPT")
        task = asyncio.create_task(send(pool))
        await hold.reached.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        hold.release()
        assert (pool.stats().open_connections, pool.stats().busy) == (0, 0)
        assert isinstance(await send(pool), Delivered)


# ---------------------------------------------------------------- outcomes, end to end


class TestOutcomes:
    async def test_delivered_with_the_queue_id(self, smtp_sink: SmtpSink, make_pool: PoolFactory) -> None:
        """The 250 text of the end of DATA (with the relay's queue id) comes back in Delivered."""
        assert await send(make_pool()) == Delivered("2.0.0 Ok: queued as Q0001")

    async def test_message_arrives_intact(self, smtp_sink: SmtpSink, make_pool: PoolFactory) -> None:
        """Envelope and bytes arrive as sent; lines starting with a dot survive dot-stuffing."""
        message = MESSAGE + b".leading dot\r\n.\r\n..two\r\n"
        await make_pool().send(SENDER, "ada@example.org", message)
        received = smtp_sink.messages[0]
        assert (received.mail_from, received.rcpt_tos, received.data) == (
            SENDER,
            ("ada@example.org",),
            message,
        )

    async def test_bare_line_feeds_are_sent_as_crlf(
        self, smtp_sink: SmtpSink, make_pool: PoolFactory
    ) -> None:
        """A message with LF line endings goes out in canonical CRLF form."""
        await make_pool().send(SENDER, "ada@example.org", b"Subject: x\n\nbody\nmore")
        assert smtp_sink.messages[0].data == b"Subject: x\r\n\r\nbody\r\nmore\r\n"

    async def test_null_sender(self, smtp_sink: SmtpSink, make_pool: PoolFactory) -> None:
        """An empty envelope sender is the null reverse-path <>."""
        assert isinstance(await make_pool().send("", "ada@example.org", MESSAGE), Delivered)
        assert smtp_sink.messages[0].mail_from == "<>"

    async def test_rcpt_4xx_is_transient_and_the_connection_goes_on(
        self, smtp_sink: SmtpSink, make_pool: PoolFactory
    ) -> None:
        """451 to RCPT: transient; the envelope is reset (RSET) and the connection reused."""
        pool = make_pool()
        smtp_sink.reply("RCPT", 451, "4.7.1 Greylisted")
        result = await send(pool)
        assert result == Transient(451, "4.7.1 Greylisted", SmtpPhase.RCPT)
        assert not result.uncertain
        assert isinstance(await send(pool), Delivered)
        assert (smtp_sink.connections, smtp_sink.commands) == (1, [(1, "RSET")])

    async def test_user_unknown_is_permanent_and_marks_a_bounce(
        self, smtp_sink: SmtpSink, make_pool: PoolFactory
    ) -> None:
        """550 5.1.1 to RCPT: permanent, and the address is unknown."""
        smtp_sink.user_unknown("gone@example.org")
        result = await send(make_pool(), "gone@example.org")
        assert isinstance(result, Permanent)
        assert (result.code, result.phase, result.is_user_unknown) == (550, SmtpPhase.RCPT, True)

    async def test_policy_refusal_is_permanent_without_a_bounce(
        self, smtp_sink: SmtpSink, make_pool: PoolFactory
    ) -> None:
        """550 5.7.1 to RCPT: permanent for this message, but the address is not marked bad."""
        smtp_sink.fail_recipients(["ada@example.org"], 550, "5.7.1 Rejected by policy")
        result = await send(make_pool())
        assert isinstance(result, Permanent)
        assert not result.is_user_unknown

    async def test_mail_from_5xx_is_a_transport_fault(
        self, smtp_sink: SmtpSink, make_pool: PoolFactory
    ) -> None:
        """550 to MAIL FROM refuses the sender: every recipient would fail, so the transport is at fault."""
        smtp_sink.reply("MAIL", 550, "5.7.1 Sender not allowed")
        assert await send(make_pool()) == TransportFault(550, "5.7.1 Sender not allowed", SmtpPhase.MAIL)

    async def test_data_command_4xx(self, smtp_sink: SmtpSink, make_pool: PoolFactory) -> None:
        """451 to the DATA command: transient, and nothing was sent yet."""
        smtp_sink.reply("DATA", 451)
        result = await send(make_pool())
        assert (type(result), result.code, result.phase) == (Transient, 451, SmtpPhase.DATA)
        assert smtp_sink.messages == []

    async def test_end_of_data_5xx_is_permanent(self, smtp_sink: SmtpSink, make_pool: PoolFactory) -> None:
        """554 after the message: the relay refused this message for good."""
        smtp_sink.reply("END", 554, "5.7.1 Message rejected as spam")
        assert await send(make_pool()) == Permanent(
            554, "5.7.1 Message rejected as spam", SmtpPhase.END_OF_DATA
        )

    async def test_end_of_data_throttling_is_transient(
        self, smtp_sink: SmtpSink, make_pool: PoolFactory
    ) -> None:
        """454 after the message (Amazon SES throttling): transient, and certain (an answer came)."""
        pool = make_pool()
        smtp_sink.reply("END", 454, "4.7.0 Throttling failure")
        result = await send(pool)
        assert result == Transient(454, "4.7.0 Throttling failure", SmtpPhase.END_OF_DATA)
        assert not result.uncertain
        assert isinstance(await send(pool), Delivered)
        assert smtp_sink.connections == 1

    async def test_fraction_of_recipients_throttled(
        self, smtp_sink: SmtpSink, make_pool: PoolFactory
    ) -> None:
        """With a deterministic fraction of recipients refused, exactly those are transient."""
        smtp_sink.fail_fraction(0.3, 450)
        pool = make_pool(size=4)
        recipients = [f"user{n}@example.org" for n in range(40)]
        results = await asyncio.gather(*(send(pool, r) for r in recipients))
        transient = {
            r for r, result in zip(recipients, results, strict=True) if isinstance(result, Transient)
        }
        assert transient == {r for r in recipients if smtp_sink.selected(r, 0.3)}
        assert 0 < len(transient) < 40
        assert len(smtp_sink.messages) == 40 - len(transient)

    async def test_dropped_connection_is_transient_and_the_next_send_reconnects(
        self, smtp_sink: SmtpSink, make_pool: PoolFactory
    ) -> None:
        """The server hangs up at RCPT: transient (nothing sent); the next message uses a new connection."""
        pool = make_pool()
        smtp_sink.drop("RCPT")
        result = await send(pool)
        assert (type(result), result.code, result.phase, result.uncertain) == (
            Transient,
            None,
            SmtpPhase.RCPT,
            False,
        )
        assert isinstance(await send(pool), Delivered)
        assert smtp_sink.connections == 2
        assert pool.stats().open_connections == 1

    async def test_lost_after_the_final_dot_is_uncertain(
        self, smtp_sink: SmtpSink, make_pool: PoolFactory
    ) -> None:
        """Accepted by the relay but the reply is lost: transient and uncertain (it may be delivered)."""
        smtp_sink.drop("END")
        result = await send(make_pool())
        assert isinstance(result, Transient)
        assert (result.phase, result.code, result.uncertain) == (SmtpPhase.END_OF_DATA, None, True)
        assert len(smtp_sink.messages) == 1

    async def test_timeout_is_transient(self, smtp_sink: SmtpSink, make_pool: PoolFactory) -> None:
        """No reply within the timeout: transient, and the connection is given up."""
        pool = make_pool(timeout=0.2)
        hold = smtp_sink.hold("RCPT")
        result = await send(pool)
        hold.release()
        assert (type(result), result.code, result.phase) == (Transient, None, SmtpPhase.RCPT)
        assert pool.stats().open_connections == 0

    @pytest.mark.parametrize(
        ("command", "phase"),
        [("MAIL", SmtpPhase.MAIL), ("DATA", SmtpPhase.DATA), ("END", SmtpPhase.END_OF_DATA)],
    )
    async def test_timeout_in_each_phase(
        self, smtp_sink: SmtpSink, make_pool: PoolFactory, command: Command, phase: SmtpPhase
    ) -> None:
        """Every reply has its own timeout; only one after the final dot leaves the outcome uncertain."""
        pool = make_pool(timeout=0.2)
        hold = smtp_sink.hold(command)
        result = await send(pool)
        hold.release()
        assert isinstance(result, Transient)
        assert (result.code, result.phase, result.reply) == (
            None,
            phase,
            "Timed out waiting for server response",
        )
        assert result.uncertain is (phase is SmtpPhase.END_OF_DATA)
        assert pool.stats().open_connections == 0
        assert isinstance(await send(pool), Delivered)  # a fresh connection

    async def test_a_late_reply_times_out_while_other_connections_keep_sending(
        self, smtp_sink: SmtpSink, make_pool: PoolFactory
    ) -> None:
        """One timer watches every connection's reply: sends on another connection, which keep moving
        their own deadlines on, do not postpone the held one's timeout."""
        pool = make_pool(timeout=0.2, size=2)
        hold = smtp_sink.hold("RCPT")
        held = asyncio.create_task(send(pool, "held@example.org"))
        await hold.reached.wait()
        others = 0
        while not held.done():
            assert isinstance(await send(pool, "busy@example.org"), Delivered)
            others += 1
        hold.release()
        result = held.result()
        assert (type(result), result.code, result.phase) == (Transient, None, SmtpPhase.RCPT)
        assert result.reply == "Timed out waiting for server response"
        assert others > 1

    async def test_refused_connection_is_a_transport_fault(
        self, smtp_sink: SmtpSink, make_pool: PoolFactory
    ) -> None:
        """Nobody listening: a transport fault at CONNECT; once the relay is back, sends succeed."""
        pool = make_pool()
        await smtp_sink.stop_listening()
        result = await send(pool)
        assert (type(result), result.code, result.phase) == (TransportFault, None, SmtpPhase.CONNECT)
        await smtp_sink.resume_listening()
        assert isinstance(await send(pool), Delivered)

    async def test_wrong_password_is_a_transport_fault(
        self, smtp_sink_factory: SinkFactory, make_pool: PoolFactory
    ) -> None:
        """535 to AUTH: the credentials are wrong for every recipient."""
        sink = await smtp_sink_factory(credentials=("mailman", "right"))
        result = await send(make_pool(sink.url(user="mailman", password="wrong")))
        assert (type(result), result.code, result.phase) == (TransportFault, 535, SmtpPhase.AUTH)

    async def test_auth(self, smtp_sink_factory: SinkFactory, make_pool: PoolFactory) -> None:
        """With the right credentials the pool logs in once per connection."""
        sink = await smtp_sink_factory(credentials=("mailman", "s3cret:@"))
        pool = make_pool(sink.url(user="mailman", password="s3cret%3A%40"))
        assert isinstance(await send(pool), Delivered)
        assert isinstance(await send(pool), Delivered)
        assert [message.login for message in sink.messages] == ["mailman", "mailman"]
        assert [entry for entry in sink.commands if entry[1] == "AUTH"] == [(1, "AUTH")]


class TestTls:
    async def test_starttls_and_auth(
        self,
        smtp_sink_factory: SinkFactory,
        make_pool: PoolFactory,
        server_tls_context: ssl.SSLContext,
        client_tls_context: ssl.SSLContext,
    ) -> None:
        """smtp+starttls:// upgrades the connection, then logs in, then sends."""
        sink = await smtp_sink_factory(
            credentials=("mailman", "pw"), tls_context=server_tls_context, require_starttls=True
        )
        url = sink.url("smtp+starttls", "mailman", "pw")
        assert isinstance(await send(make_pool(url, tls_context=client_tls_context)), Delivered)
        assert (sink.messages[0].tls, sink.messages[0].login) == (True, "mailman")

    async def test_implicit_tls(
        self,
        smtp_sink_factory: SinkFactory,
        make_pool: PoolFactory,
        server_tls_context: ssl.SSLContext,
        client_tls_context: ssl.SSLContext,
    ) -> None:
        """smtps:// speaks TLS from the first byte."""
        sink = await smtp_sink_factory(tls_context=server_tls_context, implicit_tls=True)
        assert isinstance(await send(make_pool(sink.url("smtps"), tls_context=client_tls_context)), Delivered)
        assert sink.messages[0].tls

    async def test_untrusted_certificate_is_a_transport_fault(
        self, smtp_sink_factory: SinkFactory, make_pool: PoolFactory, server_tls_context: ssl.SSLContext
    ) -> None:
        """A certificate that does not verify fails the transport (it will not verify next time either)."""
        sink = await smtp_sink_factory(tls_context=server_tls_context)
        result = await send(make_pool(sink.url("smtp+starttls"), tls_context=ssl.create_default_context()))
        assert (type(result), result.phase) == (TransportFault, SmtpPhase.STARTTLS)
        assert "TLS" in result.reply

    async def test_starttls_not_offered_is_a_transport_fault(
        self, smtp_sink: SmtpSink, make_pool: PoolFactory
    ) -> None:
        """The URL asks for STARTTLS and the server has none: never send in clear instead."""
        result = await send(make_pool(smtp_sink.url("smtp+starttls")))
        assert (type(result), result.code, result.phase) == (TransportFault, None, SmtpPhase.STARTTLS)
        assert smtp_sink.messages == []


# ---------------------------------------------------------------- rate, fairness, breaker


class TestRateLimit:
    async def test_each_send_takes_a_token(
        self, smtp_sink: SmtpSink, make_pool: PoolFactory, fake_time: FakeTime
    ) -> None:
        """At 1 message/s, the second send waits one second (of fake time) for its token."""
        pool = make_pool(rate_limiter=TokenBucket(1, 1, clock=fake_time, sleep=fake_time.sleep))
        await send(pool)
        second = asyncio.create_task(send(pool))
        await fake_time.wait_for_sleepers()
        assert fake_time.slept == [1.0]
        assert len(smtp_sink.messages) == 1
        fake_time.advance(1)
        assert isinstance(await second, Delivered)

    async def test_rate_changes_live(
        self, smtp_sink: SmtpSink, make_pool: PoolFactory, fake_time: FakeTime
    ) -> None:
        """Raising the rate releases sends already waiting for a token, without a restart."""
        pool = make_pool(rate_limiter=TokenBucket(0.01, 1, clock=fake_time, sleep=fake_time.sleep))
        await send(pool)
        waiting = [asyncio.create_task(send(pool, f"r{n}@example.org")) for n in range(5)]
        await fake_time.wait_for_sleepers()
        pool.rate_limiter.set_rate(float("inf"))
        assert all(isinstance(result, Delivered) for result in await asyncio.gather(*waiting))
        assert fake_time.now == 1000.0


class Gate:
    """A :class:`~mailman.services.smtp.pool.SendGate` for the tests: withdrawn on demand, and a
    confirmation that answers ``refuse`` (None: go on) and counts its calls."""

    def __init__(self, refuse: str | None = None) -> None:
        self.withdrawn = asyncio.Event()
        self.refuse = refuse
        self.confirmed = 0

    async def confirm(self) -> str | None:
        self.confirmed += 1
        return self.refuse


class TestSendGate:
    async def test_a_send_waiting_for_a_slot_is_withdrawn_at_once(
        self, smtp_sink: SmtpSink, make_pool: PoolFactory
    ) -> None:
        """With the only connection busy, a send queued for the slot ends ``Withdrawn`` as soon as
        its gate is withdrawn, sends nothing, and leaves the slot accounting intact: the busy send
        and a later one are delivered."""
        pool = make_pool(size=1)
        hold = smtp_sink.hold("END")
        busy = asyncio.create_task(send(pool, "first@example.org"))
        await hold.reached.wait()
        gate = Gate()
        queued = asyncio.create_task(send(pool, "second@example.org", gate=gate))
        await let_started_tasks_run()
        assert pool.stats().waiting == 1

        gate.withdrawn.set()
        result = await queued

        assert isinstance(result, Withdrawn)
        assert pool.stats().waiting == 0
        hold.release()
        assert isinstance(await busy, Delivered)
        assert isinstance(await send(pool, "third@example.org"), Delivered)
        assert [message.rcpt_tos[0] for message in smtp_sink.messages] == [
            "first@example.org",
            "third@example.org",
        ]
        assert gate.confirmed == 0

    async def test_a_send_waiting_for_a_rate_token_is_withdrawn_at_once(
        self, smtp_sink: SmtpSink, make_pool: PoolFactory, fake_time: FakeTime
    ) -> None:
        """At one message a minute, a send waiting for its token ends ``Withdrawn`` when its gate is
        withdrawn, without waiting for the token; its slot is free again."""
        pool = make_pool(size=1, rate_limiter=TokenBucket(1 / 60, 1, clock=fake_time, sleep=fake_time.sleep))
        await send(pool)
        gate = Gate()
        waiting = asyncio.create_task(send(pool, "late@example.org", gate=gate))
        await fake_time.wait_for_sleepers()

        gate.withdrawn.set()

        assert isinstance(await waiting, Withdrawn)
        assert pool.stats().busy == 0
        assert len(smtp_sink.messages) == 1

    async def test_a_send_whose_confirmation_refuses_sends_nothing(
        self, smtp_sink: SmtpSink, make_pool: PoolFactory
    ) -> None:
        """The gate is asked right before the transaction; a reason not to send ends the send
        ``Withdrawn`` with that reason, and the connection is kept for the next message."""
        pool = make_pool(size=1)
        await send(pool)
        gate = Gate(refuse="subscription unsubscribed")

        result = await send(pool, "gone@example.org", gate=gate)

        assert result == Withdrawn("subscription unsubscribed")
        assert gate.confirmed == 1
        assert len(smtp_sink.messages) == 1
        assert isinstance(await send(pool), Delivered)
        assert smtp_sink.connections == 1

    async def test_a_gate_withdrawn_before_the_send_sends_nothing(
        self, smtp_sink: SmtpSink, make_pool: PoolFactory
    ) -> None:
        """A send whose gate is already withdrawn connects to nobody."""
        pool = make_pool()
        gate = Gate()
        gate.withdrawn.set()

        assert isinstance(await send(pool, gate=gate), Withdrawn)
        assert smtp_sink.connections == 0

    async def test_a_send_with_its_turn_goes_through_the_gate(
        self, smtp_sink: SmtpSink, make_pool: PoolFactory
    ) -> None:
        """A gate that is never withdrawn changes nothing: confirmed once, delivered."""
        pool = make_pool()
        gate = Gate()

        assert isinstance(await send(pool, gate=gate), Delivered)
        assert gate.confirmed == 1


class TestFairness:
    async def test_letters_take_turns(self, smtp_sink: SmtpSink, make_pool: PoolFactory) -> None:
        """A small letter queued behind a big one is served after one message of it, not after all."""
        pool = make_pool(size=1)
        hold = smtp_sink.hold("END")
        first = asyncio.create_task(send(pool, "big0@example.org", key="big"))
        await hold.reached.wait()
        big = [asyncio.create_task(send(pool, f"big{n}@example.org", key="big")) for n in range(1, 6)]
        small = asyncio.create_task(send(pool, "small@example.org", key="small"))
        await let_started_tasks_run()
        assert pool.stats().waiting == 6
        hold.release()
        await asyncio.gather(first, *big, small)
        order = [message.rcpt_tos[0].split("@")[0] for message in smtp_sink.messages]
        assert order == ["big0", "big1", "small", "big2", "big3", "big4", "big5"]

    async def test_one_key_is_fifo(self, smtp_sink: SmtpSink, make_pool: PoolFactory) -> None:
        """Within a letter, waiting sends go in the order they came."""
        pool = make_pool(size=1)
        hold = smtp_sink.hold("END")
        first = asyncio.create_task(send(pool, "m0@example.org"))
        await hold.reached.wait()
        rest = [asyncio.create_task(send(pool, f"m{n}@example.org")) for n in range(1, 5)]
        await let_started_tasks_run()
        hold.release()
        await asyncio.gather(first, *rest)
        assert [message.rcpt_tos[0] for message in smtp_sink.messages] == [
            f"m{n}@example.org" for n in range(5)
        ]


class TestCircuitBreaker:
    async def test_open_breaker_holds_sends_without_connecting(
        self, smtp_sink: SmtpSink, make_pool: PoolFactory, fake_time: FakeTime
    ) -> None:
        """After a transport fault, sends fail fast; after the wait one probe goes and closes it."""
        breaker = CircuitBreaker(clock=fake_time, sleep=fake_time.sleep)
        pool = make_pool(breaker=breaker)
        await smtp_sink.stop_listening()
        assert isinstance(await send(pool), TransportFault)
        assert breaker.state is BreakerState.OPEN
        await smtp_sink.resume_listening()
        held = await send(pool)
        assert (type(held), held.phase) == (TransportFault, SmtpPhase.CONNECT)
        assert "circuit open" in held.reply
        assert smtp_sink.connections == 0
        fake_time.advance(10)
        assert isinstance(await send(pool), Delivered)
        assert breaker.state is BreakerState.CLOSED

    async def test_recipient_failures_do_not_open_it(
        self, smtp_sink: SmtpSink, make_pool: PoolFactory, fake_time: FakeTime
    ) -> None:
        """Permanent and transient replies show a working relay: the breaker stays closed."""
        breaker = CircuitBreaker(clock=fake_time)
        pool = make_pool(breaker=breaker)
        smtp_sink.user_unknown("gone@example.org")
        smtp_sink.reply("RCPT", 451)
        await send(pool)
        await send(pool, "gone@example.org")
        assert breaker.state is BreakerState.CLOSED


# ---------------------------------------------------------------- lifecycle and misuse


class TestLifecycle:
    async def test_close_quits_idle_connections(self, smtp_sink: SmtpSink, make_pool: PoolFactory) -> None:
        """Closing the pool says QUIT on every idle connection."""
        pool = make_pool(size=2)
        await asyncio.gather(send(pool), send(pool))
        await pool.close()
        assert sorted(smtp_sink.commands) == [(1, "QUIT"), (2, "QUIT")]
        assert pool.stats().open_connections == 0

    async def test_send_after_close_raises(self, make_pool: PoolFactory) -> None:
        """A closed pool is a lifecycle error, not an SMTP outcome."""
        pool = make_pool()
        await pool.close()
        with pytest.raises(PoolClosedError):
            await send(pool)

    async def test_waiting_sends_fail_on_close(self, smtp_sink: SmtpSink, make_pool: PoolFactory) -> None:
        """Sends waiting for a connection get PoolClosedError; the one in flight finishes."""
        pool = make_pool(size=1)
        hold = smtp_sink.hold("RCPT")
        busy = asyncio.create_task(send(pool))
        await hold.reached.wait()
        waiting = asyncio.create_task(send(pool))
        await let_started_tasks_run()
        await pool.close()
        with pytest.raises(PoolClosedError):
            await waiting
        hold.release()
        assert isinstance(await busy, Delivered)
        assert pool.stats().open_connections == 0

    async def test_growing_the_pool_admits_waiting_sends(
        self, smtp_sink: SmtpSink, make_pool: PoolFactory
    ) -> None:
        """A larger size lets waiting sends open connections at once."""
        pool = make_pool(size=1)
        hold = smtp_sink.hold("RCPT")
        first = asyncio.create_task(send(pool))
        await hold.reached.wait()
        second = asyncio.create_task(send(pool))
        await let_started_tasks_run()
        assert pool.stats().waiting == 1
        pool.set_size(2)
        assert isinstance(await second, Delivered)
        hold.release()
        await first
        assert smtp_sink.connections == 2

    async def test_shrinking_the_pool_closes_surplus_connections(
        self, smtp_sink: SmtpSink, make_pool: PoolFactory
    ) -> None:
        """A smaller size closes idle connections beyond it."""
        pool = make_pool(size=3)
        hold = smtp_sink.hold("END")
        tasks = [asyncio.create_task(send(pool)) for _ in range(3)]
        await hold.reached.wait()
        hold.release()
        await asyncio.gather(*tasks)
        assert pool.stats().open_connections == 3
        pool.set_size(1)
        assert pool.stats().open_connections == 1

    @pytest.mark.parametrize(
        ("sender", "recipient"),
        [
            (SENDER, "Ada <ada@example.org>"),
            (SENDER, ""),
            (SENDER, "ada@example.org\r\nRCPT TO:<x@y>"),
            (SENDER, "jöhn@example.org"),
            ("<news@example.com>", "ada@example.org"),
        ],
    )
    async def test_bad_addresses_raise_at_once(
        self, smtp_sink: SmtpSink, make_pool: PoolFactory, sender: str, recipient: str
    ) -> None:
        """An address with a name, brackets, line breaks or non-ASCII raises before anything is sent."""
        with pytest.raises(ValueError, match="bare ASCII address"):
            await make_pool().send(sender, recipient, MESSAGE)
        assert smtp_sink.connections == 0

    async def test_message_must_be_bytes(self, smtp_sink: SmtpSink, make_pool: PoolFactory) -> None:
        """A str message is a TypeError: the pool sends bytes exactly as given."""
        with pytest.raises(TypeError, match="bytes"):
            await make_pool().send(SENDER, "ada@example.org", MESSAGE.decode())  # type: ignore[arg-type]
        assert smtp_sink.connections == 0

    @pytest.mark.parametrize("options", [{"size": 0}, {"max_messages_per_connection": 0}, {"timeout": 0}])
    def test_invalid_options(self, options: dict[str, Any]) -> None:
        """Sizes and timeouts must be positive."""
        with pytest.raises(ValueError, match="expected"):
            SmtpPool("smtp://relay", **options)


# ---------------------------------------------------------------- the Mailer process


@pytest.fixture
async def start_mailer(smtp_sink: SmtpSink) -> AsyncIterator[Callable[..., Awaitable[otp.Pid]]]:
    pids: list[otp.Pid] = []

    async def start(**options: Any) -> otp.Pid:
        options.setdefault("local_hostname", "client.test")
        pid = await Mailer.start(MailerConfig(url=smtp_sink.url(), **options))
        pids.append(pid)
        return pid

    yield start
    for pid in pids:
        if otp.is_alive(pid):
            await Mailer.stop(pid)


class TestMailer:
    async def test_hands_out_its_pool(self, smtp_sink: SmtpSink, start_mailer: Any) -> None:
        """Senders get the pool from the Mailer and send on it directly."""
        mailer = await start_mailer(pool_size=4)
        pool = await Mailer.pool(mailer)
        assert pool is await Mailer.pool(mailer)
        assert isinstance(await send(pool), Delivered)

    async def test_sends_do_not_queue_behind_the_mailers_mailbox(
        self, smtp_sink: SmtpSink, start_mailer: Any
    ) -> None:
        """While a send is stuck at the relay, the Mailer still answers calls and other sends go through."""
        mailer = await start_mailer(pool_size=2)
        pool = await Mailer.pool(mailer)
        hold = smtp_sink.hold("RCPT")
        stuck = asyncio.create_task(send(pool))
        await hold.reached.wait()
        assert await Mailer.settings(mailer) == MailerSettings(float("inf"), 1, 2, 50)
        assert isinstance(await send(pool, "other@example.org"), Delivered)
        hold.release()
        assert isinstance(await stuck, Delivered)

    async def test_configure_changes_settings_live(self, start_mailer: Any) -> None:
        """Rate, burst, pool size and recycling change without a restart."""
        mailer = await start_mailer()
        settings = await Mailer.configure(
            mailer, rate=50, burst=10, pool_size=16, max_messages_per_connection=20
        )
        assert settings == MailerSettings(50.0, 10, 16, 20)
        pool = await Mailer.pool(mailer)
        assert (
            pool.rate_limiter.rate,
            pool.rate_limiter.burst,
            pool.size,
            pool.max_messages_per_connection,
        ) == (
            50,
            10,
            16,
            20,
        )

    async def test_configure_releases_waiting_sends(
        self, smtp_sink: SmtpSink, start_mailer: Any, fake_time: FakeTime
    ) -> None:
        """A send waiting for a token goes as soon as the rate is raised over the Mailer."""
        mailer = await start_mailer(rate=0.001, clock=fake_time, sleep=fake_time.sleep)
        pool = await Mailer.pool(mailer)
        await send(pool)
        waiting = asyncio.create_task(send(pool))
        await fake_time.wait_for_sleepers()
        await Mailer.configure(mailer, rate=1000)
        await fake_time.wait_for_sleep_calls(2)
        fake_time.advance(0.001)
        assert isinstance(await waiting, Delivered)

    @pytest.mark.parametrize(
        "change", [{"rate": 0}, {"burst": 0}, {"pool_size": 0}, {"max_messages_per_connection": -1}]
    )
    async def test_invalid_configuration_raises_in_the_caller(
        self, start_mailer: Any, change: dict[str, Any]
    ) -> None:
        """A bad value raises ValueError in the caller; the Mailer runs on, unchanged."""
        mailer = await start_mailer()
        with pytest.raises(ValueError, match="expected"):
            await Mailer.configure(mailer, **change)
        assert otp.is_alive(mailer)
        assert await Mailer.settings(mailer) == MailerSettings(float("inf"), 1, 8, 50)

    async def test_pool_wide_breaker_is_opt_in(self, start_mailer: Any) -> None:
        """Each letter keeps its own breaker; a breaker for the whole pool is asked for explicitly."""
        assert (await Mailer.pool(await start_mailer())).breaker is None
        guarded = await Mailer.pool(await start_mailer(circuit_breaker=True))
        assert isinstance(guarded.breaker, CircuitBreaker)

    def test_config_is_checked_when_written(self) -> None:
        """A bad URL fails where the configuration is created, not later in the tree."""
        with pytest.raises(SmtpUrlError):
            MailerConfig(url="smtp:/relay")
        with pytest.raises(ValueError, match="pool_size"):
            MailerConfig(url="smtp://relay", pool_size=0)

    async def test_terminate_closes_the_connections_under_a_supervisor(self, smtp_sink: SmtpSink) -> None:
        """Stopping the supervision tree runs the Mailer's terminate: connections QUIT, the pool closes."""
        spec = Mailer.child_spec(
            MailerConfig(url=smtp_sink.url(), local_hostname="client.test"), name="mailer"
        )
        assert (spec.id, spec.restart) == (Mailer, otp.Restart.PERMANENT)
        supervisor = await otp.Supervisor.start_link(
            otp.SupervisorSpec([spec], strategy=otp.Strategy.ONE_FOR_ONE)
        )
        pool = await Mailer.pool("mailer")
        await send(pool)
        await otp.Supervisor.stop(supervisor)
        assert pool.closed
        assert smtp_sink.commands == [(1, "QUIT")]
        with pytest.raises(PoolClosedError):
            await send(pool)


class TestPoolSizeFor:
    def test_one_connection_per_task_in_flight(self) -> None:
        """Up to the cap, the daemon opens as many connections as recipient tasks run at once."""
        assert [pool_size_for(n) for n in (1, 16, 50, MAX_POOL_SIZE)] == [1, 16, 50, MAX_POOL_SIZE]

    def test_never_more_than_the_cap(self) -> None:
        """A concurrency of hundreds still opens at most MAX_POOL_SIZE connections to the relay."""
        assert MAX_POOL_SIZE == 64
        assert [pool_size_for(n) for n in (MAX_POOL_SIZE + 1, 1000)] == [64, 64]

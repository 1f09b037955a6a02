"""The guarantees of DESIGN section 5 in the interleavings an adversarial review found broken.

Each test reproduces one case against the real engine (a fresh Postgres database, the test SMTP
sink, the supervision tree) by forcing the interleaving with locks, held replies and kills, never
with sleeps: a retry landing between the sender's count and its marking the letter sent (1), a
graceful stop at a low rate (2), a retry and then a crash mid-send (3), a pause from another node
and then a crash (4), a letter failed by its crash limit and retried (5), a failed write of outcomes
(6), a Message-ID domain changed between two runs, an unsubscribe while claimed, and a retry of a
cancelled letter.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from mailman.services.delivery import letter_commands
from mailman.services.delivery.letter_delivery_dispatcher import LetterDeliveryDispatcher
from mailman.services.delivery.retry_policy import RetryPolicy
from mailman.services.smtp.mailer import Mailer
from mailman.services.store.models import DeliveryCounts, LetterStatus, SubscriptionStatus
from mailman.services.store.queries import deliveries, letters, subscriptions
from mailman.supervisor import KILL, Pid, exit
from tests.services.engine_fixtures import (
    NO_FLUSH,
    Engine,
    EngineFactory,
    eventually,
    hold_replies,
    kill_node,
    message_ids,
    received,
)

ONE_ATTEMPT = RetryPolicy(max_attempts=1, base_delay=0.0, max_delay=0.0)


async def waiting_on_locks(pool: asyncpg.Pool[asyncpg.Record]) -> int:
    """Sessions of this database waiting for a lock held by another."""
    count: int = await pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    return count


@asynccontextmanager
async def letter_row_held(pool: asyncpg.Pool[asyncpg.Record], letter_id: int) -> AsyncIterator[None]:
    """Hold a share lock on the letter's row: claims and acks go on, but every change of the letter
    (its status, its lease, its summary) and every lock taken to change it waits until the block ends."""
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute("SELECT FROM letters WHERE id = $1 FOR SHARE", letter_id)
        yield


async def restarted(engine: Engine, letter_id: int, killed: Pid) -> Pid:
    """The letter's service after ``killed`` was restarted by its LetterSupervisor."""

    async def new_service() -> bool:
        service = LetterDeliveryDispatcher.running(engine.context, letter_id)
        return service is not None and service != killed

    await eventually(new_service)
    return engine.service(letter_id)


class TestRetryRacingTheEnd:
    async def test_a_retry_committed_while_the_sender_settles_is_sent(
        self, engine_factory: EngineFactory
    ) -> None:
        """Case 1. The send's last recipient has failed and the sender is settling the letter when a
        retry of the failed recipient comes: both queue on the letter's lock, the sender first. The
        sender must not mark the letter sent on a count the retry then changes: the retried recipient
        is mailed and the letter ends sent with nobody pending."""
        engine = await engine_factory(retry=ONE_ATTEMPT, lease_ttl=60.0)
        ids = await engine.newsletter(20)
        emails = await engine.emails()
        unlucky = emails[ids[-1]]
        engine.sink.fail_recipients([unlucky], 451, "4.3.0 Try later")
        letter = await engine.letter()
        await engine.send(letter.id)
        holds = await hold_replies(engine.sink, count=1)

        async with letter_row_held(engine.pool, letter.id):
            for hold in holds:
                hold.release()

            async def settling() -> bool:  # the sender waits for the letter's lock to settle it
                return await waiting_on_locks(engine.pool) >= 1

            await eventually(settling)
            engine.sink.clear_faults()
            retry = asyncio.create_task(letter_commands.retry_failed(engine.context, letter.id))

            async def both_waiting() -> bool:
                return await waiting_on_locks(engine.pool) >= 2

            await eventually(both_waiting)
        answer = await retry
        done = await engine.wait_until_done(letter.id)

        assert answer["retried"] == 1
        assert done.status is LetterStatus.SENT
        counts = await deliveries.count_deliveries(engine.pool, letter.id)
        assert (counts.pending, counts.sending, counts.failed) == (0, 0, 0)
        assert counts.delivered == 20
        assert received(engine.sink)[unlucky] == 1


class TestGracefulStopAtALowRate:
    async def test_a_stop_gives_back_the_recipients_waiting_for_a_token_and_mails_nobody_twice(
        self, engine_factory: EngineFactory
    ) -> None:
        """Case 2. At half a message a second, 50 recipient tasks wait for a rate token when the
        daemon is stopped gracefully. Those waiting give their recipients back at once (pending,
        attempt refunded): the stop leaves nobody 'sending', and after a restart every recipient is
        mailed exactly once."""
        engine = await engine_factory()
        await engine.newsletter(120)
        smtp = await Mailer.pool(engine.context.mailer)
        smtp.rate_limiter.set_rate(0.5)
        letter = await engine.letter()
        await engine.send(letter.id)
        await engine.sink.wait_for_messages(1)

        await engine.stop()

        counts = await deliveries.count_deliveries(engine.pool, letter.id)
        assert counts.sending == 0
        assert counts.delivered == len(engine.sink.messages)
        assert counts.pending == 120 - counts.delivered
        attempts = await engine.pool.fetchval(
            "SELECT max(attempts) FROM deliveries WHERE letter_id = $1 AND state = 'pending'", letter.id
        )
        assert attempts == 0  # given back, not tried
        await engine.start()
        (await Mailer.pool(engine.context.mailer)).rate_limiter.set_rate(float("inf"))
        await engine.send(letter.id)
        done = await engine.wait_until_done(letter.id)

        assert done.status is LetterStatus.SENT
        emails = await engine.emails()
        assert received(engine.sink) == dict.fromkeys(emails.values(), 1)


class TestRetryThenCrash:
    async def test_a_crash_after_a_retry_mid_send_is_recovered(self, engine_factory: EngineFactory) -> None:
        """Case 3. A retry mid-send (two recipients had failed) and then a kill of the letter's
        service: the restarted service still recovers the rows the killed one left 'sending', the
        letter ends sent, nobody is lost, and the restart is counted."""
        engine = await engine_factory(retry=ONE_ATTEMPT, lease_ttl=60.0)
        ids = await engine.newsletter(300)
        emails = await engine.emails()
        engine.sink.fail_recipients([emails[ids[0]], emails[ids[1]]], 451, "4.3.0 Try later")
        letter = await engine.letter()
        await engine.send(letter.id)

        async def two_failed() -> bool:
            return (await deliveries.count_deliveries(engine.pool, letter.id)).failed == 2

        await eventually(two_failed)
        holds = await hold_replies(engine.sink)
        service = engine.service(letter.id)
        engine.sink.clear_faults()

        answer = await letter_commands.retry_failed(engine.context, letter.id)
        exit(service, KILL)
        await restarted(engine, letter.id, service)
        for hold in holds:
            hold.release()
        done = await engine.wait_until_done(letter.id, timeout=30)

        assert answer["retried"] == 2
        assert done.status is LetterStatus.SENT
        assert done.mail_order["restarts"] == 1
        counts = await deliveries.count_deliveries(engine.pool, letter.id)
        assert counts == DeliveryCounts(delivered=300)
        assert set(received(engine.sink)) == set(emails.values())


class TestPauseElsewhereThenCrash:
    async def test_rows_a_crashed_sender_left_are_recovered_after_a_pause_from_another_node(
        self, engine_factory: EngineFactory
    ) -> None:
        """Case 4. Node b pauses the letter node a is sending; a's service is killed before it
        notices. Its restart finds the letter paused and recovers the rows left 'sending' before it
        lets the letter go; resumed from b, the letter ends sent and nobody is lost."""
        a = await engine_factory(names="a", node_name="node-a", lease_ttl=60.0)
        b = await engine_factory(names="b", node_name="node-b", lease_ttl=60.0)
        await a.newsletter(300)
        emails = await a.emails()
        letter = await a.letter()
        await a.send(letter.id)
        await a.sink.wait_for_messages(20)
        holds = await hold_replies(a.sink)
        service = a.service(letter.id)

        paused = await letter_commands.pause_letter(b.context, letter.id)
        exit(service, KILL)

        async def released() -> bool:
            return (await letters.get_letter(a.pool, letter.id)).owner_node is None

        await eventually(released)
        after_crash = await deliveries.count_deliveries(a.pool, letter.id)
        for hold in holds:
            hold.release()
        resumed = await letter_commands.resume_letter(b.context, letter.id)
        done = await b.wait_until_done(letter.id, timeout=30)

        assert paused["state"] == "paused"
        assert after_crash.sending == 0
        assert resumed["message"] == "resumed"
        assert done.status is LetterStatus.SENT
        counts = await deliveries.count_deliveries(a.pool, letter.id)
        assert (counts.pending, counts.sending, counts.delivered) == (0, 0, 300)
        assert set(received(a.sink)) == set(emails.values())


class TestCrashLimitThenRetry:
    async def test_a_letter_failed_by_its_crash_limit_and_retried_mails_everyone(
        self, engine_factory: EngineFactory
    ) -> None:
        """Case 5. Under ``resend``, a letter whose sender crashed past its limit ends failed with the
        rows it had in flight uncertain. A retry sends the letter on: the uncertain rows are queued
        again with the pending ones, the letter ends sent, and every recipient is mailed."""
        engine = await engine_factory(max_letter_restarts=0, lease_ttl=60.0)
        await engine.newsletter(300)
        emails = await engine.emails()
        letter = await engine.letter()
        await engine.send(letter.id)
        await engine.sink.wait_for_messages(20)
        holds = await hold_replies(engine.sink)
        service = engine.service(letter.id)
        exit(service, KILL)
        failed = await engine.wait_until_done(letter.id)
        for hold in holds:
            hold.release()
        held = await deliveries.count_deliveries(engine.pool, letter.id)

        answer = await letter_commands.retry_failed(engine.context, letter.id)
        done = await engine.wait_until_done(letter.id, timeout=30)

        assert failed.status is LetterStatus.FAILED
        assert held.uncertain > 0
        assert answer["state"] == "sending"
        assert done.status is LetterStatus.SENT
        counts = await deliveries.count_deliveries(engine.pool, letter.id)
        assert counts == DeliveryCounts(delivered=300)
        assert set(received(engine.sink)) == set(emails.values())


FAIL_ACKS = """
CREATE SEQUENCE test_ack_faults;
CREATE FUNCTION test_fail_acks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state = 'sending' AND NEW.state = 'delivered' AND nextval('test_ack_faults') <= $FAILURES$ THEN
        RAISE EXCEPTION 'injected: the write of an outcome fails';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER test_fail_acks BEFORE UPDATE ON deliveries FOR EACH ROW EXECUTE FUNCTION test_fail_acks();
"""
"""A real Postgres error for the first writes of outcomes (each fails its whole statement)."""


class TestFailedWrite:
    async def test_a_failed_write_of_outcomes_loses_nothing_and_resends_nobody(
        self, engine_factory: EngineFactory
    ) -> None:
        """Case 6. The first three writes of a batch of outcomes fail in Postgres. The batch stays
        in memory and is written on a later try: no restart, nobody mailed twice, and every
        message the relay accepted is recorded."""
        engine = await engine_factory()
        await engine.newsletter(200)
        await engine.pool.execute(FAIL_ACKS.replace("$FAILURES$", "3"))
        letter = await engine.letter()

        await engine.send(letter.id)
        done = await engine.wait_until_done(letter.id)

        assert await engine.pool.fetchval("SELECT last_value FROM test_ack_faults") >= 4  # they did fail
        assert done.status is LetterStatus.SENT
        assert done.mail_order.get("restarts", 0) == 0
        emails = await engine.emails()
        assert received(engine.sink) == dict.fromkeys(emails.values(), 1)
        recorded = await engine.pool.fetchval(
            "SELECT count(*) FROM newsletter_emails WHERE letter_id = $1", letter.id
        )
        assert recorded == 200


class TestMessageId:
    async def test_the_message_id_domain_is_the_letters_across_a_change_of_settings(
        self, engine_factory: EngineFactory
    ) -> None:
        """A daemon sending with ``message_domain`` one.example dies mid-send; the daemon that
        resumes the letter is configured with two.example. The messages in flight at the death go
        again with the Message-ID of their first copy, and every message of the letter carries the
        domain fixed when its sending started."""
        first = await engine_factory(names="a", node_name="node-a", message_domain="one.example", **NO_FLUSH)
        await first.newsletter(300)
        letter = await first.letter()
        await first.send(letter.id)
        await first.sink.wait_for_messages(40)
        await hold_replies(first.sink)
        await kill_node(first)
        first.sink.clear_faults()

        second = await engine_factory(names="b", node_name="node-a", message_domain="two.example")
        await second.send(letter.id)
        done = await second.wait_until_done(letter.id)

        assert done.status is LetterStatus.SENT
        ids = message_ids(second.sink.messages)
        assert any(len(copies) > 0 and received(second.sink)[address] > 1 for address, copies in ids.items())
        assert all(len(copies) == 1 for copies in ids.values())
        assert all(next(iter(copies)).endswith("@one.example>") for copies in ids.values())


class TestUnsubscribeWhileClaimed:
    async def test_an_unsubscribe_stops_a_claimed_message_that_has_not_started(
        self, engine_factory: EngineFactory
    ) -> None:
        """At one message a second, recipients wait long after their claim for a token. One of
        them unsubscribes meanwhile: when its turn comes its subscription is read again, it is not
        mailed, and its delivery is skipped with the reason."""
        engine = await engine_factory(subscription_recheck=0.0)
        ids = await engine.newsletter(60)
        smtp = await Mailer.pool(engine.context.mailer)
        smtp.rate_limiter.set_rate(1.0)
        letter = await engine.letter()
        await engine.send(letter.id)
        await engine.sink.wait_for_messages(1)
        claimed = await engine.pool.fetchval(
            "SELECT max(subscription_id) FROM deliveries WHERE letter_id = $1 AND state = 'sending'",
            letter.id,
        )
        await subscriptions.set_subscription_status(engine.pool, claimed, SubscriptionStatus.UNSUBSCRIBED)
        smtp.rate_limiter.set_rate(float("inf"))
        done = await engine.wait_until_done(letter.id)

        assert done.status is LetterStatus.SENT
        emails = await engine.emails()
        assert emails[claimed] not in received(engine.sink)
        state, _, reason = (await engine.delivery_states(letter.id))[claimed]
        assert (state, reason) == ("skipped", "subscription unsubscribed")
        assert len(received(engine.sink)) == len(ids) - 1


class TestRetryCancelled:
    async def test_retrying_a_cancelled_letter_is_refused(self, engine_factory: EngineFactory) -> None:
        """A cancelled letter's failed recipients stay failed on a retry: nothing is queued, nobody
        mailed, and the answer says why."""
        engine = await engine_factory(retry=ONE_ATTEMPT)
        ids = await engine.newsletter(30)
        emails = await engine.emails()
        engine.sink.fail_recipients([emails[ids[0]]], 451, "4.3.0 Try later")
        letter = await engine.letter()
        await engine.send(letter.id)
        await engine.wait_until_done(letter.id)
        await letter_commands.cancel_letter(engine.context, letter.id)  # a sent letter stays sent
        await engine.pool.execute("UPDATE letters SET status = 'cancelled' WHERE id = $1", letter.id)
        before = len(engine.sink.messages)

        answer = await letter_commands.retry_failed(engine.context, letter.id)

        assert answer["retried"] == 0
        assert answer["state"] == "cancelled"
        assert answer["message"] == "the letter is cancelled: its recipients are not sent to again"
        assert (await deliveries.count_deliveries(engine.pool, letter.id)).failed == 1
        assert len(engine.sink.messages) == before

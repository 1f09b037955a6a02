"""The delivery engine against a faulty relay: real Postgres, a real SMTP sink with injected faults.

Guarantee 3 of DESIGN section 5 (a transient failure is retried, a permanent one ends failed with
the server's reply, nothing is dropped silently, dead letters can be retried by command) and the
circuit breaker that holds a letter while its relay refuses connections.
"""

from __future__ import annotations

import asyncio

from mailman.services.delivery import letter_commands
from mailman.services.delivery.retry_policy import RetryPolicy
from mailman.services.store.models import LetterStatus, SubscriptionStatus, UncertainPolicy
from mailman.services.store.queries import deliveries, subscriptions
from tests.services.engine_fixtures import (
    POOL_SIZE,
    Engine,
    EngineFactory,
    eventually,
    hold_replies,
    message_ids,
    received,
)
from tests.services.smtp_sink import SmtpSink

NO_WAIT = {"base_delay": 0.0, "max_delay": 0.0}

REFUSED = """
SELECT count(*) FROM deliveries
WHERE letter_id = $1 AND state = 'pending' AND attempts = 0 AND last_error IS NOT NULL
"""
"""Recipients the relay refused: given back to pending with their attempt refunded."""


class TestTransientFailures:
    async def test_greylisted_recipients_and_dropped_connections_are_retried_until_delivered(
        self, engine: Engine
    ) -> None:
        """10% of the addresses (chosen by hash) get 451 on their first RCPT, and the relay drops a
        few connections at RCPT, DATA and after the final dot: everyone is delivered in the end,
        each failure costs exactly one more attempt (recorded in Postgres), the greylisted have more
        than one attempt, and the one message accepted before its connection dropped is the only
        duplicate, with the same Message-ID."""
        await engine.newsletter(300)
        emails = await engine.emails()
        greylisted = {i for i, email in emails.items() if SmtpSink.selected(email, 0.1)}
        assert 15 < len(greylisted) < 45
        engine.sink.fail_fraction(0.1, 451, "4.7.1 Greylisted, try again later", times=1)
        engine.sink.drop("RCPT", times=3)
        engine.sink.drop("DATA", times=2)
        engine.sink.drop("END", times=1)
        letter = await engine.letter()

        await engine.send(letter.id)
        done = await engine.wait_until_done(letter.id)

        assert done.status is LetterStatus.SENT
        states = await engine.delivery_states(letter.id)
        assert {state for state, _, _ in states.values()} == {"delivered"}
        assert all(states[i][1] >= 2 for i in greylisted)
        extra_attempts = sum(attempts - 1 for _, attempts, _ in states.values())
        assert extra_attempts == len(greylisted) + 3 + 2 + 1
        counts = received(engine.sink)
        assert set(counts) == set(emails.values())
        duplicates = [email for email, n in counts.items() if n > 1]
        assert len(duplicates) == 1
        assert counts[duplicates[0]] == 2
        assert len(message_ids(engine.sink.messages)[duplicates[0]]) == 1
        recorded = await engine.pool.fetchval(
            "SELECT count(*) FROM newsletter_emails WHERE letter_id = $1", letter.id
        )
        assert recorded == len(emails)


class TestUnknowableOutcomes:
    async def test_hold_policy_holds_a_message_whose_reply_was_lost_after_the_final_dot(
        self, engine: Engine
    ) -> None:
        """Under the letter's ``hold`` policy, a message the relay accepted but whose reply was lost
        (the connection dropped after the final dot) is recorded ``uncertain`` with one attempt and is
        not resent: nobody is mailed twice, and the letter still ends sent, the uncertain row counted."""
        emails = await engine.newsletter(50)
        engine.sink.drop("END", times=1)
        letter = await engine.letter(uncertain_policy=UncertainPolicy.HOLD)

        await engine.send(letter.id)
        done = await engine.wait_until_done(letter.id)

        assert done.status is LetterStatus.SENT
        counts = received(engine.sink)
        assert len(counts) == len(emails)
        assert max(counts.values()) == 1
        states = await engine.delivery_states(letter.id)
        held = [(attempts, error) for state, attempts, error in states.values() if state == "uncertain"]
        assert len(held) == 1
        assert held[0][0] == 1
        status = await letter_commands.letter_status(engine.context, letter.id)
        assert (status["uncertain"], status["counts"]["delivered"]) == (1, len(emails) - 1)

    async def test_resend_policy_resends_it_with_the_same_message_id(self, engine: Engine) -> None:
        """Under ``resend`` (the default) the same lost reply is retried: the recipient gets the
        message twice, both copies with one Message-ID, and the row ends delivered."""
        emails = await engine.newsletter(50)
        engine.sink.drop("END", times=1)
        letter = await engine.letter(uncertain_policy=UncertainPolicy.RESEND)

        await engine.send(letter.id)
        done = await engine.wait_until_done(letter.id)

        assert done.status is LetterStatus.SENT
        counts = received(engine.sink)
        twice = [email for email, n in counts.items() if n == 2]
        assert len(twice) == 1
        assert len(counts) == len(emails)
        assert len(message_ids(engine.sink.messages)[twice[0]]) == 1


class TestPermanentFailures:
    async def test_user_unknown_fails_once_with_the_reply_and_bounces_the_subscription(
        self, engine: Engine
    ) -> None:
        """A 550 5.1.1 on RCPT fails the recipient after exactly one attempt, with the server's reply
        as last_error, and marks the subscription bounced; a 550 5.7.1 (policy) fails the recipient
        without bouncing the address. Neither is retried; the letter is sent to everyone else."""
        ids = await engine.newsletter(100)
        emails = await engine.emails()
        unknown = ids[3:8]
        refused = ids[50]
        engine.sink.user_unknown(*(emails[i] for i in unknown))
        engine.sink.fail_recipients([emails[refused]], 550, "5.7.1 Rejected by policy")
        letter = await engine.letter()

        await engine.send(letter.id)
        done = await engine.wait_until_done(letter.id)

        assert done.status is LetterStatus.SENT
        states = await engine.delivery_states(letter.id)
        for i in unknown:
            assert states[i] == ("failed", 1, f"550 5.1.1 <{emails[i]}>: User unknown")
            subscription = await subscriptions.get_subscription(engine.pool, i)
            assert subscription.status is SubscriptionStatus.BOUNCED
            assert subscription.status_reason == states[i][2]
        assert states[refused] == ("failed", 1, "550 5.7.1 Rejected by policy")
        refused_subscription = await subscriptions.get_subscription(engine.pool, refused)
        assert refused_subscription.status is SubscriptionStatus.ACTIVE
        counts = received(engine.sink)
        assert set(counts) == {emails[i] for i in ids if i not in {*unknown, refused}}
        assert max(counts.values()) == 1
        dead = await deliveries.dead_letters(engine.pool, letter.id)
        assert {d.subscription_id for d in dead} == {*unknown, refused}
        assert done.mail_order["failed"] == len(unknown) + 1


class TestMaxAttempts:
    async def test_exhausted_recipients_are_dead_lettered_then_retried_by_command(
        self, engine_factory: EngineFactory
    ) -> None:
        """Addresses the relay keeps answering 451 fail after max_attempts attempts, with the last
        reply; the letter is sent. Once the relay recovers, retry_failed gives them a fresh budget
        and delivers each of them exactly once; the letter ends sent again."""
        engine = await engine_factory(retry=RetryPolicy(max_attempts=3, **NO_WAIT))
        ids = await engine.newsletter(100)
        emails = await engine.emails()
        stuck = ids[20:26]
        engine.sink.fail_recipients([emails[i] for i in stuck], 451, "4.2.1 Mailbox busy")
        letter = await engine.letter()

        await engine.send(letter.id)
        first = await engine.wait_until_done(letter.id)

        assert first.status is LetterStatus.SENT
        states = await engine.delivery_states(letter.id)
        for i in stuck:
            assert states[i] == ("failed", 3, "gave up after 3 attempts: 451 4.2.1 Mailbox busy")
        assert set(received(engine.sink)) == {emails[i] for i in ids if i not in stuck}

        engine.sink.clear_faults()
        answer = await letter_commands.retry_failed(engine.context, letter.id)
        done = await engine.wait_until_done(letter.id)

        assert answer["retried"] == len(stuck)
        assert done.status is LetterStatus.SENT
        assert received(engine.sink) == dict.fromkeys(emails.values(), 1)
        states = await engine.delivery_states(letter.id)
        assert {state for state, _, _ in states.values()} == {"delivered"}
        assert {states[i][1] for i in stuck} == {1}
        assert done.mail_order["failed"] == 0

    async def test_retry_failed_with_nothing_failed_changes_nothing(self, engine: Engine) -> None:
        """retry_failed on a letter without dead letters retries nobody and leaves the letter sent."""
        await engine.newsletter(20)
        letter = await engine.letter()
        await engine.send(letter.id)
        await engine.wait_until_done(letter.id)

        answer = await letter_commands.retry_failed(engine.context, letter.id)

        assert answer["retried"] == 0
        assert answer["state"] == "sent"
        assert answer["running"] is False
        assert len(engine.sink.messages) == 20


class TestRelayDown:
    async def test_the_breaker_holds_the_letter_while_the_relay_refuses_and_no_attempt_is_burnt(
        self, engine_factory: EngineFactory
    ) -> None:
        """The relay goes down mid-send (open connections dropped, new ones refused): the messages on
        the wire count one attempt, but every recipient refused meanwhile is given back with its
        attempt refunded, again and again while the breaker holds the letter, so that nobody fails
        even with max_attempts=2; once the relay is back the letter completes, each recipient mailed
        exactly once."""
        engine = await engine_factory(
            retry=RetryPolicy(max_attempts=2, **NO_WAIT), breaker_base_delay=0.02, breaker_max_delay=0.1
        )
        await engine.newsletter(300)
        letter = await engine.letter()
        await engine.send(letter.id)
        await engine.sink.wait_for_messages(40)
        await hold_replies(engine.sink)  # POOL_SIZE messages on the wire, waiting for their verdict

        await engine.sink.stop_listening()

        async def refused_many() -> bool:
            refused: int = await engine.pool.fetchval(REFUSED, letter.id)
            return refused >= 150  # several rounds of refusals: more than one claim's worth

        await eventually(refused_many)
        states = await engine.delivery_states(letter.id)
        assert not any(state == "failed" for state, _, _ in states.values())
        # (A row being tried right now counts its attempt until the refusal gives it back.)
        assert max(attempts for state, attempts, _ in states.values() if state != "sending") == 1
        status = await letter_commands.letter_status(engine.context, letter.id)
        assert status["state"] == "sending"

        await engine.sink.resume_listening()
        done = await engine.wait_until_done(letter.id)

        assert done.status is LetterStatus.SENT
        emails = await engine.emails()
        assert received(engine.sink) == dict.fromkeys(emails.values(), 1)
        states = await engine.delivery_states(letter.id)
        assert {state for state, _, _ in states.values()} == {"delivered"}
        attempts = [attempts for _, attempts, _ in states.values()]
        assert attempts.count(2) == POOL_SIZE  # those cut off mid-DATA; the refused ones kept theirs
        assert attempts.count(1) == len(emails) - POOL_SIZE

    async def test_pausing_while_the_breaker_is_open_is_prompt(self, engine_factory: EngineFactory) -> None:
        """With the relay down and the breaker open for a long wait, pausing the letter does not wait
        for the breaker: the letter is paused at once with nobody left sending, and resumed after
        the relay is back it completes with each recipient mailed exactly once."""
        engine = await engine_factory(breaker_base_delay=30.0, breaker_max_delay=30.0)
        await engine.newsletter(300)
        letter = await engine.letter()
        await engine.send(letter.id)
        await engine.sink.wait_for_messages(20)
        await hold_replies(engine.sink)  # so that no message is cut off after its final dot
        await engine.sink.stop_listening()

        async def breaker_holding() -> bool:
            counts = await deliveries.count_deliveries(engine.pool, letter.id)
            refused: int = await engine.pool.fetchval(REFUSED, letter.id)
            return refused > 0 and counts.sending == 0  # nothing in flight: the driver waits on the breaker

        await eventually(breaker_holding)
        async with asyncio.timeout(5):
            paused = await letter_commands.pause_letter(engine.context, letter.id)

        assert paused["state"] == "paused"
        assert paused["running"] is False
        assert paused["counts"]["sending"] == 0
        await engine.sink.resume_listening()
        await letter_commands.resume_letter(engine.context, letter.id)
        done = await engine.wait_until_done(letter.id)
        assert done.status is LetterStatus.SENT
        emails = await engine.emails()
        assert received(engine.sink) == dict.fromkeys(emails.values(), 1)

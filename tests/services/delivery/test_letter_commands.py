"""The letter commands on a running tree: real Postgres, a real SMTP sink, the real supervision tree.

Each command is answered from the letter's status, never raised: sending twice joins the running
send, sending a finished letter changes nothing, pause and cancel let the messages in flight finish.
"Mid-send" is made deterministic with held SMTP replies (see ``engine_fixtures.hold_replies``).
"""

from __future__ import annotations

import asyncio

from mailman.services.delivery import letter_commands
from mailman.services.store.models import LetterStatus, SubscriptionStatus
from mailman.services.store.queries import letters, subscriptions
from mailman.supervisor import Supervisor
from tests.services.engine_fixtures import POOL_SIZE, Engine, hold_replies, received, while_draining

COUNTS = {"pending", "sending", "delivered", "failed", "skipped"}


class TestSendLetter:
    async def test_sending_twice_joins_the_running_send(self, engine: Engine) -> None:
        """A second send while the letter is sending joins it: the answer says so, the same service
        keeps sending, and each recipient gets exactly one message."""
        await engine.newsletter(200)
        letter = await engine.letter()

        first = await engine.send(letter.id)
        holds = await hold_replies(engine.sink)
        service = engine.service(letter.id)
        second = await engine.send(letter.id)
        assert engine.service(letter.id) == service
        for hold in holds:
            hold.release()
        done = await engine.wait_until_done(letter.id)

        assert first["message"] == "sending started to 200 recipients"
        assert second["message"] == "already sending: joined the running send"
        assert second["running"] is True
        assert second["audience"] == 200
        assert done.status is LetterStatus.SENT
        emails = await engine.emails()
        assert received(engine.sink) == dict.fromkeys(emails.values(), 1)

    async def test_concurrent_sends_start_one_service(self, engine: Engine) -> None:
        """Two sends of a draft racing each other start one service between them (the Registry holds
        one name per letter): one audience, one message per recipient; one answer says it started
        the send, the other that it joined it."""
        await engine.newsletter(200)
        letter = await engine.letter()
        holds = [engine.sink.hold("END") for _ in range(POOL_SIZE)]

        answers = await asyncio.gather(engine.send(letter.id), engine.send(letter.id))
        children = await Supervisor.count_children(engine.context.dispatcher)
        for hold in holds:
            hold.release()
        done = await engine.wait_until_done(letter.id)

        assert children.active == 1
        assert [answer["audience"] for answer in answers] == [200, 200]
        assert sorted(answer["message"] for answer in answers) == [
            "already sending: joined",
            "sending started to 200 recipients",
        ]
        assert done.status is LetterStatus.SENT
        emails = await engine.emails()
        assert received(engine.sink) == dict.fromkeys(emails.values(), 1)

    async def test_sending_a_sent_letter_changes_nothing_and_says_so(self, engine: Engine) -> None:
        """Sending a letter that was already sent starts no service, mails nobody, and says why."""
        await engine.newsletter(50)
        letter = await engine.letter()
        await engine.send(letter.id)
        await engine.wait_until_done(letter.id)

        again = await engine.send(letter.id)

        assert again["message"] == "the letter is already sent: nothing was sent"
        assert again["state"] == "sent"
        assert again["running"] is False
        assert len(engine.sink.messages) == 50
        assert (await letters.get_letter(engine.pool, letter.id)).status is LetterStatus.SENT

    async def test_subscribers_added_after_the_send_started_are_not_mailed(self, engine: Engine) -> None:
        """The audience is fixed when the send starts: subscribers who join mid-send get no message and
        no delivery row."""
        await engine.newsletter(100)
        letter = await engine.letter()

        await engine.send(letter.id)
        holds = await hold_replies(engine.sink)
        late = await engine.subscribe(20, first=100)
        for hold in holds:
            hold.release()
        done = await engine.wait_until_done(letter.id)

        assert done.status is LetterStatus.SENT
        states = await engine.delivery_states(letter.id)
        assert len(states) == 100
        assert not set(late) & set(states)
        emails = await engine.emails()
        assert received(engine.sink) == {emails[i]: 1 for i in states}


class TestLetterStatus:
    async def test_status_of_a_draft(self, engine: Engine) -> None:
        """A draft's status has the full shape, with every count zero and nobody sending it."""
        await engine.newsletter(10)
        letter = await engine.letter()

        status = await letter_commands.letter_status(engine.context, letter.id)

        assert status == {
            "letter_id": letter.id,
            "state": "draft",
            "counts": dict.fromkeys(COUNTS, 0),
            "uncertain": 0,
            "audience": 0,
            "restarts": 0,
            "failure_reason": None,
            "running": False,
            "node": None,
            "lease_expires_at": None,
        }

    async def test_status_of_a_sent_letter_counts_each_state(self, engine: Engine) -> None:
        """After the send, the counts add up to the audience: delivered, failed (a user unknown) and
        skipped (an unsubscribed address), nothing pending or sending."""
        ids = await engine.newsletter(30)
        emails = await engine.emails()
        engine.sink.user_unknown(emails[ids[5]])
        letter = await engine.letter()
        await subscriptions.set_subscription_status(engine.pool, ids[6], SubscriptionStatus.UNSUBSCRIBED)
        await engine.send(letter.id)
        await engine.wait_until_done(letter.id)

        status = await letter_commands.letter_status(engine.context, letter.id)

        assert set(status) == {
            "letter_id",
            "state",
            "counts",
            "uncertain",
            "audience",
            "restarts",
            "failure_reason",
            "running",
            "node",
            "lease_expires_at",
        }
        assert status["letter_id"] == letter.id
        assert status["state"] == "sent"
        assert status["counts"] == {"pending": 0, "sending": 0, "delivered": 28, "failed": 1, "skipped": 1}
        assert status["audience"] == 30
        assert status["running"] is False
        assert status["node"] is None  # released when the letter was sent


class TestPauseAndResume:
    async def test_pause_mid_send_then_resume_mails_everyone_once(self, engine: Engine) -> None:
        """Pausing mid-send lets the messages in flight finish and records them, leaves the rest
        pending and nobody sending; a paused letter is not sent by ``send`` (the answer says to
        resume it); resuming completes it with each recipient mailed exactly once."""
        await engine.newsletter(300)
        letter = await engine.letter()
        await engine.send(letter.id)

        paused = await while_draining(
            engine, letter.id, lambda: letter_commands.pause_letter(engine.context, letter.id)
        )

        assert paused["state"] == "paused"
        assert paused["running"] is False
        assert paused["counts"]["sending"] == 0
        assert paused["counts"]["pending"] > 0
        assert paused["counts"]["delivered"] == len(engine.sink.messages)
        send_answer = await engine.send(letter.id)
        assert send_answer["message"] == "the letter is paused: resume it to go on"
        assert send_answer["running"] is False

        resumed = await letter_commands.resume_letter(engine.context, letter.id)
        done = await engine.wait_until_done(letter.id)

        assert resumed["message"] == "resumed"
        assert done.status is LetterStatus.SENT
        assert done.mail_order.get("restarts", 0) == 0
        emails = await engine.emails()
        assert received(engine.sink) == dict.fromkeys(emails.values(), 1)

    async def test_resuming_a_letter_that_is_not_paused_says_so(self, engine: Engine) -> None:
        """Resuming a draft changes nothing and the answer says what the letter is."""
        await engine.newsletter(5)
        letter = await engine.letter()

        answer = await letter_commands.resume_letter(engine.context, letter.id)

        assert answer["message"] == "the letter is draft, not paused"
        assert answer["state"] == "draft"
        assert engine.sink.messages == []


class TestCancel:
    async def test_cancel_mid_send_leaves_the_rest_pending_for_good(self, engine: Engine) -> None:
        """Cancelling mid-send lets the messages in flight finish; the letter is cancelled with the
        remaining recipients pending, and neither send nor resume mails them afterwards."""
        await engine.newsletter(300)
        letter = await engine.letter()
        await engine.send(letter.id)

        cancelled = await while_draining(
            engine, letter.id, lambda: letter_commands.cancel_letter(engine.context, letter.id)
        )

        assert cancelled["state"] == "cancelled"
        assert cancelled["running"] is False
        assert cancelled["counts"]["sending"] == 0
        assert cancelled["counts"]["pending"] > 0
        sent = len(engine.sink.messages)
        assert cancelled["counts"]["delivered"] == sent
        again = await engine.send(letter.id)
        resumed = await letter_commands.resume_letter(engine.context, letter.id)
        assert again["message"] == "the letter is already cancelled: nothing was sent"
        assert resumed["message"] == "the letter is cancelled, not paused"
        assert len(engine.sink.messages) == sent
        assert max(received(engine.sink).values()) == 1

    async def test_cancel_a_draft(self, engine: Engine) -> None:
        """A draft can be cancelled before it is sent: no service, no delivery, nobody mailed."""
        await engine.newsletter(5)
        letter = await engine.letter()

        answer = await letter_commands.cancel_letter(engine.context, letter.id)

        assert answer["state"] == "cancelled"
        assert answer["audience"] == 0
        again = await engine.send(letter.id)
        assert again["message"] == "the letter is already cancelled: nothing was sent"
        assert engine.sink.messages == []

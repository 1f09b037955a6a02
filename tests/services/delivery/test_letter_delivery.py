"""The delivery engine end to end: real Postgres, real SMTP (aiosmtpd), the real supervision tree.

The guarantees of DESIGN section 5 (1, 2 and 4), each shown on a running tree: a clean run, a
recipient subset, a graceful stop mid-send, a kill mid-send (with the ``resend`` and ``hold``
policies for the recipients in flight), and a crash-looping letter beside a healthy one. SMTP
faults are in ``test_letter_delivery_faults.py``, the letter commands in ``test_letter_commands.py``.

"Mid-send" is made deterministic with held SMTP replies (:func:`hold_replies`): every connection of
the Mailer waits for its end-of-DATA verdict, so the test stops or kills the service while a known
set of messages is in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from email import message_from_bytes
from typing import Any

import pytest

from mailman.services.delivery import letter_commands
from mailman.services.delivery.letter_delivery_service import LetterDeliveryService
from mailman.services.smtp.message import message_id
from mailman.services.store.models import DeliveryState, LetterStatus, SubscriptionStatus, UncertainPolicy
from mailman.services.store.queries import deliveries, letters, subscriptions
from mailman.supervisor import (
    KILL,
    NORMAL,
    SHUTDOWN,
    EventName,
    GenServer,
    Pid,
    Registry,
    attach,
    await_exit,
    detach,
    exit,
    is_alive,
    whereis,
)
from tests.services.engine_fixtures import (
    NO_FLUSH,
    Engine,
    EngineFactory,
    hold_replies,
    message_ids,
    received,
    while_draining,
)

DOMAIN = "mailman.localhost"
"""The default DeliverySettings.message_domain: the right-hand side of every Message-ID."""


def expected_message_id(letter_id: int, subscription_id: int) -> str:
    return message_id(letter_id, subscription_id, DOMAIN)


class TestCleanRun:
    async def test_every_active_recipient_gets_exactly_one_message(self, engine: Engine) -> None:
        """2,000 recipients, two inactive: the sink gets one message per active recipient, each has one
        newsletter_emails row, the inactive are skipped with a reason, and the letter is sent."""
        ids = await engine.newsletter(2000)
        await subscriptions.set_subscription_status(engine.pool, ids[0], SubscriptionStatus.UNSUBSCRIBED)
        await subscriptions.mark_bounced(engine.pool, ids[1], "550 user unknown")
        letter = await engine.letter()

        await engine.send(letter.id)
        done = await engine.wait_until_done(letter.id)

        assert done.status is LetterStatus.SENT
        received = [m.rcpt_tos[0] for m in engine.sink.messages]
        assert len(received) == 1998
        assert len(set(received)) == 1998
        counts = await deliveries.count_deliveries(engine.pool, letter.id)
        assert (counts.delivered, counts.skipped, counts.failed, counts.pending, counts.sending) == (
            1998,
            2,
            0,
            0,
            0,
        )
        rows = await engine.pool.fetch(
            "SELECT subscription_id, message_id FROM newsletter_emails WHERE letter_id = $1", letter.id
        )
        assert len(rows) == 1998
        assert {row["subscription_id"] for row in rows} == set(ids[2:])
        skipped = await deliveries.list_deliveries(engine.pool, letter.id, DeliveryState.SKIPPED)
        assert {d.last_error for d in skipped} == {"subscription unsubscribed", "subscription bounced"}
        first = message_from_bytes(engine.sink.messages[0].data)
        assert first["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


class TestRecipientSubset:
    async def test_only_the_given_subscriptions_are_mailed(self, engine: Engine) -> None:
        """Sending to a subset mails exactly those subscriptions (an inactive one among them is skipped,
        an unknown id is ignored); every other subscriber has no delivery row at all."""
        ids = await engine.newsletter(200)
        subset = ids[10:60]
        await subscriptions.set_subscription_status(engine.pool, subset[0], SubscriptionStatus.UNSUBSCRIBED)
        letter = await engine.letter()

        answer = await engine.send(letter.id, (*subset, 999_999_999))
        done = await engine.wait_until_done(letter.id)

        assert answer["audience"] == len(subset)
        assert done.status is LetterStatus.SENT
        emails = await engine.emails()
        assert received(engine.sink) == {emails[i]: 1 for i in subset[1:]}
        states = await engine.delivery_states(letter.id)
        assert set(states) == set(subset)
        assert states[subset[0]] == ("skipped", 0, "subscription unsubscribed")
        assert {states[i][0] for i in subset[1:]} == {"delivered"}


class TestGracefulStop:
    """Guarantee 1: a graceful stop or restart mid-send mails every recipient exactly once."""

    async def test_stopping_the_tree_mid_send_and_starting_a_new_one_mails_everyone_once(
        self, engine: Engine
    ) -> None:
        """The whole tree stops gracefully while messages are in flight: the service lets them finish
        and records them, leaves the rest pending and nothing sending; a new tree on the same database
        resumes the letter (not counted as a restart) and each recipient gets exactly one message."""
        await engine.newsletter(300)
        letter = await engine.letter()
        await engine.send(letter.id)
        # The service is stopping: it claims nobody more, and lets the messages in flight finish.
        await while_draining(engine, letter.id, engine.stop, after_messages=40)

        stopped = await letters.get_letter(engine.pool, letter.id)
        assert stopped.status is LetterStatus.SENDING
        assert stopped.mail_order["running"] is False
        counts = await deliveries.count_deliveries(engine.pool, letter.id)
        assert counts.sending == 0
        assert counts.uncertain == 0
        assert counts.pending > 0
        assert counts.delivered == len(engine.sink.messages)  # every accepted message is recorded
        recorded = await engine.pool.fetchval(
            "SELECT count(*) FROM newsletter_emails WHERE letter_id = $1", letter.id
        )
        assert recorded == counts.delivered

        await engine.start()
        answer = await engine.send(letter.id)
        done = await engine.wait_until_done(letter.id)

        assert answer["message"] == "resumed the send"
        assert done.status is LetterStatus.SENT
        assert done.mail_order.get("restarts", 0) == 0
        emails = await engine.emails()
        assert received(engine.sink) == dict.fromkeys(emails.values(), 1)
        states = await engine.delivery_states(letter.id)
        assert {state for state, _, _ in states.values()} == {"delivered"}
        assert {attempts for _, attempts, _ in states.values()} == {1}

    async def test_stopping_the_service_mid_send_and_sending_again_mails_everyone_once(
        self, engine: Engine, restarts: list[Pid]
    ) -> None:
        """The letter's service alone is stopped with ``shutdown`` mid-send: its supervisor does not
        restart it (an expected exit), the letter stays sending with nobody running it, and sending
        it again resumes it: each recipient gets exactly one message."""
        await engine.newsletter(300)
        letter = await engine.letter()
        await engine.send(letter.id)
        service = engine.service(letter.id)
        await while_draining(engine, letter.id, lambda: GenServer.stop(service, SHUTDOWN), after_messages=40)

        status = await letter_commands.letter_status(engine.context, letter.id)
        assert status["state"] == "sending"
        assert status["running"] is False
        assert status["counts"]["sending"] == 0
        assert status["counts"]["pending"] > 0
        assert restarts == []

        answer = await engine.send(letter.id)
        done = await engine.wait_until_done(letter.id)

        assert answer["message"] == "resumed the send"
        assert done.status is LetterStatus.SENT
        emails = await engine.emails()
        assert received(engine.sink) == dict.fromkeys(emails.values(), 1)
        assert done.mail_order.get("restarts", 0) == 0


async def kill_mid_send(engine: Engine, letter_id: int) -> frozenset[str]:
    """Let some messages through, freeze the SMTP side, then kill the letter's service (no terminate);
    the addresses the sink had accepted a message for by then.

    Run under :data:`NO_FLUSH` settings, so that none of those messages is recorded in Postgres yet:
    they are all in flight for the engine. The held replies are never released: the kill closes
    their connections, so those messages are never accepted.
    """
    await engine.sink.wait_for_messages(40)
    await hold_replies(engine.sink)
    accepted = frozenset(received(engine.sink))
    counts = await deliveries.count_deliveries(engine.pool, letter_id)
    assert counts.delivered == 0
    exit(engine.service(letter_id), KILL)
    return accepted


class TestKill:
    """Guarantee 2: a kill mid-send loses nobody; only messages in flight may go twice, same Message-ID."""

    async def test_a_killed_service_is_restarted_and_only_messages_in_flight_go_twice(
        self, engine_factory: EngineFactory, restarts: list[Pid]
    ) -> None:
        """The service is killed (no terminate) with messages accepted by the relay but not recorded:
        its LetterSupervisor restarts it, the restart is counted in mail_order, recovery resends the
        rows that were sending, and the letter ends sent. Everyone got the letter; the only duplicates
        are the messages in flight at the kill, each with the same Message-ID as its first copy."""
        engine = await engine_factory(**NO_FLUSH)
        await engine.newsletter(300)
        letter = await engine.letter()
        await engine.send(letter.id)

        accepted = await kill_mid_send(engine, letter.id)
        done = await engine.wait_until_done(letter.id)

        assert done.status is LetterStatus.SENT
        assert done.mail_order["restarts"] == 1
        assert len(restarts) == 1
        states = await engine.delivery_states(letter.id)
        assert {state for state, _, _ in states.values()} == {"delivered"}
        # The rows sending at the kill: recovery found them, and they were claimed a second time.
        in_flight = {i for i, (_, attempts, _) in states.items() if attempts == 2}
        assert len(in_flight) == done.mail_order["uncertain_found"]
        assert {attempts for _, attempts, _ in states.values()} == {1, 2}
        emails = await engine.emails()
        by_email = {email: i for i, email in emails.items()}
        counts = received(engine.sink)
        assert set(counts) == set(emails.values())  # nobody lost
        duplicates = {email for email, n in counts.items() if n > 1}
        assert duplicates == accepted
        assert {by_email[email] for email in duplicates} <= in_flight
        assert max(counts.values()) == 2
        ids = message_ids(engine.sink.messages)
        for email in duplicates:
            assert ids[email] == {expected_message_id(letter.id, by_email[email])}
        recorded = await engine.pool.fetchval(
            "SELECT count(DISTINCT subscription_id) FROM newsletter_emails WHERE letter_id = $1", letter.id
        )
        assert recorded == len(emails)


class TestUncertainPolicy:
    """Guarantee 2 with its ``hold`` variant: the rows that were sending at a kill are uncertain."""

    @pytest.mark.parametrize(
        ("letter_policy", "settings_policy", "expected"),
        [
            pytest.param(UncertainPolicy.HOLD, None, UncertainPolicy.HOLD, id="letter-hold"),
            pytest.param(
                UncertainPolicy.RESEND, UncertainPolicy.HOLD, UncertainPolicy.HOLD, id="settings-hold"
            ),
            pytest.param(
                UncertainPolicy.HOLD, UncertainPolicy.RESEND, UncertainPolicy.RESEND, id="settings-resend"
            ),
        ],
    )
    async def test_rows_in_flight_at_a_kill_follow_the_policy(
        self,
        engine_factory: EngineFactory,
        letter_policy: UncertainPolicy,
        settings_policy: UncertainPolicy | None,
        expected: UncertainPolicy,
    ) -> None:
        """After a kill with messages in flight, under ``hold`` (the letter's, or the settings' which
        override it) the rows that were sending are reported uncertain, in letter_status too, and
        nobody is mailed twice; under ``resend`` they are mailed again with the same Message-ID."""
        engine = await engine_factory(**NO_FLUSH, uncertain_policy=settings_policy)
        await engine.newsletter(300)
        letter = await engine.letter(uncertain_policy=letter_policy)
        await engine.send(letter.id)

        accepted = await kill_mid_send(engine, letter.id)
        done = await engine.wait_until_done(letter.id)

        assert done.status is LetterStatus.SENT
        emails = await engine.emails()
        by_email = {email: i for i, email in emails.items()}
        counts = received(engine.sink)
        states = await engine.delivery_states(letter.id)
        status = await letter_commands.letter_status(engine.context, letter.id)
        found = done.mail_order["uncertain_found"]
        assert found >= len(accepted) + 8  # the accepted ones and the held ones were all in flight
        if expected is UncertainPolicy.HOLD:
            assert max(counts.values()) == 1  # nobody mailed twice
            uncertain = {i for i, (state, _, _) in states.items() if state == "uncertain"}
            assert len(uncertain) == found
            assert {by_email[email] for email in accepted} <= uncertain
            assert status["uncertain"] == found
            assert status["counts"]["delivered"] == len(emails) - found
            assert done.mail_order["uncertain"] == found
            # The accepted ones got their only copy before the kill; the others in flight never did.
            assert set(counts) == set(emails.values()) - {
                emails[i] for i in uncertain if emails[i] not in accepted
            }
        else:
            assert status["uncertain"] == 0
            assert {state for state, _, _ in states.values()} == {"delivered"}
            assert {email for email, n in counts.items() if n > 1} == accepted
            ids = message_ids(engine.sink.messages)
            for email in accepted:
                assert ids[email] == {expected_message_id(letter.id, by_email[email])}


class TestCrashLoop:
    """Guarantee 4: one letter's crashes never disturb another; a crash-looping letter ends failed."""

    async def test_a_letter_killed_each_time_it_runs_fails_and_the_other_letter_completes(
        self, engine_factory: EngineFactory, restarts: list[Pid]
    ) -> None:
        """Two letters send at once; one letter's service is killed each time it has loaded. Its
        LetterSupervisor restarts it until the service finds it crashed more than
        max_letter_restarts times and fails the letter with the reason in mail_order. The other
        letter's service is never restarted and completes; the dispatcher stays up throughout."""
        engine = await engine_factory(max_letter_restarts=2)
        await engine.newsletter(300)
        good = await engine.letter("Good")
        bad = await engine.letter("Bad")
        dispatcher = whereis(engine.context.dispatcher)
        services: asyncio.Queue[Pid] = asyncio.Queue()

        def new_bad_service(_event: EventName, metadata: Mapping[str, Any]) -> None:
            if Registry.keys(engine.context.letters, metadata["pid"]) == [bad.id]:
                services.put_nowait(metadata["pid"])

        await engine.send(good.id)
        good_service = engine.service(good.id)
        await engine.send(bad.id)
        service = engine.service(bad.id)
        attach("test-bad-letter", ("supervisor", "child", "restarted"), new_bad_service)
        try:
            for _ in range(3):
                await LetterDeliveryService.progress(service)  # loaded: its start is accounted for
                exit(service, KILL)
                async with asyncio.timeout(10):
                    service = await services.get()
            assert await await_exit(service, timeout=10) == NORMAL  # the last one failed the letter
        finally:
            detach("test-bad-letter")
        failed = await engine.wait_until_done(bad.id)
        sent = await engine.wait_until_done(good.id)

        assert failed.status is LetterStatus.FAILED
        assert failed.mail_order["restarts"] == 3
        assert "crashed 3 times (limit 2)" in failed.mail_order["failure_reason"]
        status = await letter_commands.letter_status(engine.context, bad.id)
        assert status["failure_reason"] == failed.mail_order["failure_reason"]
        assert status["counts"]["sending"] == 0  # those in flight at the last kill are accounted for
        assert sent.status is LetterStatus.SENT
        assert await await_exit(good_service) == NORMAL
        assert all(Registry.keys(engine.context.letters, pid) != [good.id] for pid in restarts)
        assert len(restarts) == 3
        assert whereis(engine.context.dispatcher) == dispatcher
        assert dispatcher is not None
        assert is_alive(dispatcher)
        good_counts = await deliveries.count_deliveries(engine.pool, good.id)
        assert good_counts.delivered == 300

    async def test_a_letter_that_cannot_be_rendered_crash_loops_to_failed_beside_a_good_one(
        self, engine_factory: EngineFactory, restarts: list[Pid]
    ) -> None:
        """A poison letter (a merge field the renderer refuses) crashes its service on every load: it
        ends failed with the renderer's error in failure_reason, while a letter sending at the same
        time completes without its service ever restarting."""
        engine = await engine_factory(max_letter_restarts=2)
        await engine.newsletter(300)
        good = await engine.letter("Good")
        bad = await letters.create_letter(
            engine.pool, newsletter_id=engine.newsletter_id, subject="Bad", text_body="Dear {{ nickname }}\n"
        )

        await engine.send(good.id)
        good_service = engine.service(good.id)
        await engine.send(bad.id)
        failed = await engine.wait_until_done(bad.id)
        sent = await engine.wait_until_done(good.id)

        assert failed.status is LetterStatus.FAILED
        assert "crashed 3 times (limit 2)" in failed.mail_order["failure_reason"]
        assert "nickname" in failed.mail_order["failure_reason"]
        assert sent.status is LetterStatus.SENT
        assert await await_exit(good_service) == NORMAL
        assert len(restarts) == 3
        assert all(Registry.keys(engine.context.letters, pid) != [good.id] for pid in restarts)
        emails = await engine.emails()
        assert received(engine.sink) == dict.fromkeys(emails.values(), 1)

    async def test_the_dispatcher_outlives_many_crashing_letters(self, engine_factory: EngineFactory) -> None:
        """Three poison letters crash-loop at once, more crashes in all than the dispatcher's own
        restart intensity allows: each ends failed, and the dispatcher is the same process after."""
        engine = await engine_factory(max_letter_restarts=2)
        await engine.newsletter(10)
        dispatcher = whereis(engine.context.dispatcher)
        bad = [
            await letters.create_letter(
                engine.pool, newsletter_id=engine.newsletter_id, subject=f"Bad {n}", text_body="{{ x }}\n"
            )
            for n in range(3)
        ]

        for letter in bad:
            await engine.send(letter.id)
        done = [await engine.wait_until_done(letter.id) for letter in bad]

        assert {letter.status for letter in done} == {LetterStatus.FAILED}
        assert whereis(engine.context.dispatcher) == dispatcher
        good = await engine.letter("Good")
        await engine.send(good.id)
        assert (await engine.wait_until_done(good.id)).status is LetterStatus.SENT

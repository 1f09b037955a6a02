"""``serve`` as a process: graceful stop mid-send, catching up on boot, migrations, JSON logs."""

from __future__ import annotations

import json
import signal
import socket
from collections import Counter
from datetime import UTC, datetime, timedelta

import asyncpg

from tests.daemon.conftest import DaemonLauncher, DaemonProcess, mailed, make_newsletter, wait_for
from tests.services.smtp_sink import SmtpSink


class TestGracefulStop:
    async def test_sigterm_mid_send_then_serve_again_mails_everyone_exactly_once(
        self, launcher: DaemonLauncher, smtp_sink: SmtpSink, db: asyncpg.Connection[asyncpg.Record]
    ) -> None:
        """SIGTERM while a letter is half sent (a message in flight): the daemon lets the message in
        flight finish, flushes, says so and exits 0, leaving the rest pending; the next ``serve`` on
        the same database resumes the letter at boot and completes it, every recipient mailed
        exactly once."""
        readers, delivered_before_stop = 20, 5
        first = await launcher.start(env={"MAILMAN_CONCURRENCY": "1"})
        async with first.client() as client:
            newsletter_id, emails = await make_newsletter(client, readers)
            letter_id = (await client.letter_create(newsletter_id, "Issue 1", "Hello {{ name }}"))[
                "letter_id"
            ]
            held = smtp_sink.hold("END")
            await client.letter_send(letter_id)
        # Let messages through one at a time until `delivered_before_stop` are in and the next is held.
        for _ in range(delivered_before_stop):
            await wait_for(held.reached)
            held, previous = smtp_sink.hold("END"), held
            previous.release()
        await wait_for(held.reached)
        assert len(smtp_sink.messages) == delivered_before_stop

        first.signal(signal.SIGTERM)
        # The RPC server goes first, then the scheduler, then the letters: release the message in
        # flight only once the stop is under way, so that it is the last one this daemon sends.
        await first.wait_for_event("rpc_stopped")
        held.release()
        assert await first.wait_exit() == 0
        await first.wait_for_event("stopping: letters in flight are finished and flushed")
        await first.wait_for_event("mailman stopped")
        assert not first.socket.exists()
        sent_by_first = len(smtp_sink.messages)
        assert delivered_before_stop < sent_by_first < readers
        assert max(mailed(smtp_sink).values()) == 1
        # Flushed: Postgres knows of every message sent, and of nobody left half-sent.
        rows = await db.fetch(
            "SELECT state, count(*) AS n FROM deliveries WHERE letter_id = $1 GROUP BY state", letter_id
        )
        assert {row["state"]: row["n"] for row in rows} == {
            "delivered": sent_by_first,
            "pending": readers - sent_by_first,
        }

        second = await launcher.start()
        await second.wait_for_event("resumed letters left sending", letters=[letter_id])
        await second.wait_for_event("letter sent", letter_id=letter_id, delivered=readers)
        async with second.client() as client:
            status = await client.letter_status(letter_id)
        assert status["state"] == "sent"
        assert status["counts"] == {
            "pending": 0,
            "sending": 0,
            "delivered": readers,
            "failed": 0,
            "skipped": 0,
        }
        assert mailed(smtp_sink) == Counter(emails)
        message_ids = [
            line
            for message in smtp_sink.messages
            for line in message.data.splitlines()
            if line.lower().startswith(b"message-id:")
        ]
        assert len(set(message_ids)) == readers


class TestStart:
    async def test_sigterm_during_the_start_stops_gracefully_once_started(
        self, launcher: DaemonLauncher, empty_database_url: str
    ) -> None:
        """A SIGTERM that arrives while the daemon starts (here: just after its migrations) does not
        kill it mid-start: it finishes starting, then stops gracefully and exits 0."""
        daemon = await launcher.spawn(env={"MAILMAN_DATABASE_URL": empty_database_url})
        await daemon.wait_for_event("migrations applied")
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait_exit() == 0, daemon.output
        await daemon.wait_for_event("mailman stopped")

    async def test_a_second_daemon_on_the_same_socket_refuses_before_touching_anything(
        self, launcher: DaemonLauncher, smtp_sink: SmtpSink
    ) -> None:
        """A second daemon on the socket of a running one exits non-zero saying another mailman runs
        there, having started nothing (its Scheduler would resume the letters the first is sending);
        the first goes on and mails everyone exactly once. (The letter's status names the node
        sending it: with no MAILMAN_NODE_NAME, ``<hostname>-<pid>-<random>``.)"""
        first = await launcher.start(env={"MAILMAN_CONCURRENCY": "1"})
        async with first.client() as client:
            newsletter_id, emails = await make_newsletter(client, 5)
            letter_id = (await client.letter_create(newsletter_id, "Issue 1", "Hello"))["letter_id"]
            held = smtp_sink.hold("END")
            await client.letter_send(letter_id)
        await wait_for(held.reached)
        async with first.client() as client:
            status = await client.letter_status(letter_id)
        assert status["node"].startswith(f"{socket.gethostname()}-{first.pid}-")

        second = await launcher.spawn()
        assert await second.wait_exit() != 0
        assert f"another mailman is already running on {launcher.socket}" in second.output
        assert second.events() == [], second.output

        held.release()
        await first.wait_for_event("letter sent", letter_id=letter_id)
        assert mailed(smtp_sink) == Counter(emails)
        async with first.client() as client:
            assert (await client.system_health())["status"] == "ok"


class TestCatchingUp:
    async def test_a_letter_due_while_the_daemon_was_down_is_sent_after_the_restart(
        self, launcher: DaemonLauncher, smtp_sink: SmtpSink, db: asyncpg.Connection[asyncpg.Record]
    ) -> None:
        """A scheduled letter whose send_at passed while no daemon ran (stopped with SIGINT) is sent
        by the next one, at boot, to every subscriber once."""
        first = await launcher.start()
        async with first.client() as client:
            newsletter_id, emails = await make_newsletter(client, 3)
            later = datetime.now(UTC) + timedelta(hours=1)
            letter_id = (await client.letter_create(newsletter_id, "Issue 1", "Hi", send_at=later))[
                "letter_id"
            ]
        first.signal(signal.SIGINT)
        assert await first.wait_exit() == 0
        assert smtp_sink.messages == []

        await db.execute("UPDATE letters SET send_at = now() - interval '1 minute' WHERE id = $1", letter_id)
        second = await launcher.start()
        await second.wait_for_event("scheduled letter due", letter_id=letter_id)
        await second.wait_for_event("letter sent", letter_id=letter_id)
        async with second.client() as client:
            assert (await client.letter_status(letter_id))["state"] == "sent"
        assert mailed(smtp_sink) == Counter(emails)

    async def test_a_letter_created_already_due_is_sent_at_once(
        self, daemon: DaemonProcess, smtp_sink: SmtpSink
    ) -> None:
        """letter.create with a send_at already past wakes the Scheduler, which sends the letter
        without waiting for its next tick."""
        async with daemon.client() as client:
            newsletter_id, emails = await make_newsletter(client, 2)
            asked_at = datetime.now(UTC)
            past = asked_at - timedelta(minutes=5)
            letter = await client.letter_create(newsletter_id, "Issue 1", "Hi", send_at=past)
            assert letter["state"] == "scheduled"
            due = await daemon.wait_for_event("scheduled letter due", letter_id=letter["letter_id"])
            await daemon.wait_for_event("letter sent", letter_id=letter["letter_id"])
        assert mailed(smtp_sink) == Counter(emails)
        # The Scheduler's tick is 1 s: a letter sent well within that was sent because of the wake.
        assert datetime.fromisoformat(due["timestamp"]) - asked_at < timedelta(seconds=0.4)


class TestMigrations:
    async def test_no_migrate_on_an_unmigrated_database_refuses_to_start(
        self, launcher: DaemonLauncher, empty_database_url: str
    ) -> None:
        """With --no-migrate on a database without mailman's schema, the daemon does not start: it
        says the database is not migrated and how to migrate it, exits non-zero, opens no socket
        and leaves the database untouched."""
        daemon = await launcher.spawn("--no-migrate", env={"MAILMAN_DATABASE_URL": empty_database_url})
        code = await daemon.wait_exit()
        assert code != 0
        assert "not migrated" in daemon.output
        assert "mailman migrate" in daemon.output
        assert not launcher.socket.exists()
        connection = await asyncpg.connect(empty_database_url)
        try:
            tables = await connection.fetchval(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
            )
        finally:
            await connection.close()
        assert tables == 0

    async def test_an_unmigrated_database_is_migrated_at_start(
        self, launcher: DaemonLauncher, empty_database_url: str
    ) -> None:
        """Without --no-migrate, the daemon applies the migrations to an empty database, says which,
        and serves."""
        daemon = await launcher.start(env={"MAILMAN_DATABASE_URL": empty_database_url})
        applied = await daemon.wait_for_event("migrations applied")
        assert applied["migrations"]
        async with daemon.client() as client:
            assert (await client.system_health())["status"] == "ok"


class TestLogs:
    async def test_json_logs_are_json_throughout(self, launcher: DaemonLauncher, smtp_sink: SmtpSink) -> None:
        """With MAILMAN_LOG_FORMAT=json every line the daemon writes, on stdout and stderr, from start
        to stop and at debug level (libraries' records included), is a JSON object with a timestamp,
        a level and an event."""
        daemon = await launcher.start(env={"MAILMAN_LOG_FORMAT": "json", "MAILMAN_LOG_LEVEL": "debug"})
        async with daemon.client() as client:
            newsletter_id, _ = await make_newsletter(client, 2)
            letter_id = (await client.letter_create(newsletter_id, "Issue 1", "Hello"))["letter_id"]
            await client.letter_send(letter_id)
            await daemon.wait_for_event("letter sent", letter_id=letter_id)
        assert await daemon.stop() == 0

        assert daemon.lines
        for line in daemon.lines:
            event = json.loads(line.text)
            assert isinstance(event, dict), line
            assert {"timestamp", "level", "event"} <= set(event), line
        events = [event["event"] for event in daemon.events()]
        for expected in ("rpc_listening", "mailman is running", "letter sent", "mailman stopped"):
            assert expected in events

"""Every RPC method, malformed input and many clients, against a real daemon process on its socket."""

from __future__ import annotations

import asyncio
import os
import re
import stat
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from mailman.rpc import ErrorCode
from mailman.rpc.protocol import MAX_LINE_BYTES
from tests.daemon.conftest import (
    DaemonLauncher,
    DaemonProcess,
    mailed,
    make_newsletter,
    subscription_ids,
    wait_for,
)
from tests.rpc.conftest import RawConnection
from tests.services.smtp_sink import SmtpSink

COUNT_KEYS = {"pending", "sending", "delivered", "failed", "skipped"}
PID = re.compile(r"<\d+\.\d+\.\d+>")


def assert_status_shape(status: dict[str, Any], letter_id: int) -> None:
    assert type(status["letter_id"]) is int
    assert status["letter_id"] == letter_id
    assert isinstance(status["state"], str)
    assert set(status["counts"]) == COUNT_KEYS
    assert all(type(count) is int for count in status["counts"].values())


class TestCreating:
    async def test_newsletters_subscribers_and_letters_are_created(
        self, daemon: DaemonProcess, db: asyncpg.Connection[asyncpg.Record]
    ) -> None:
        """newsletter.create makes a newsletter and its owner; subscribers.add counts new and existing
        addresses; letter.create makes a draft, or with send_at a scheduled letter; letter.cancel
        cancels a scheduled letter for good."""
        send_at = datetime.now(UTC) + timedelta(hours=1)
        async with daemon.client() as client:
            created = await client.newsletter_create("owner@example.com", "The Weekly", "news@example.com")
            newsletter_id = created["newsletter_id"]
            assert type(newsletter_id) is int
            assert type(created["user_id"]) is int
            added = await client.subscribers_add(newsletter_id, ["a@example.com", "b@example.com"])
            assert added == {"newsletter_id": newsletter_id, "added": 2, "existing": 0}
            again = await client.subscribers_add(newsletter_id, ["b@example.com", "c@example.com"])
            assert again == {"newsletter_id": newsletter_id, "added": 1, "existing": 1}
            draft = await client.letter_create(newsletter_id, "Issue 1", "Hello {{ name }}")
            scheduled = await client.letter_create(newsletter_id, "Issue 2", "Later", send_at=send_at)
            held = await client.letter_create(newsletter_id, "Issue 3", "Once", uncertain_policy="hold")
            assert draft["state"] == "draft"
            assert scheduled["state"] == "scheduled"
            cancelled = await client.letter_cancel(scheduled["letter_id"])
            assert cancelled["state"] == "cancelled"
            assert_status_shape(cancelled, scheduled["letter_id"])

        assert set(await subscription_ids(db, newsletter_id)) == {
            "a@example.com",
            "b@example.com",
            "c@example.com",
        }
        rows = await db.fetch("SELECT id, status, send_at, uncertain_policy FROM letters ORDER BY id")
        assert [(row["id"], row["status"], row["uncertain_policy"]) for row in rows] == [
            (draft["letter_id"], "draft", "resend"),
            (scheduled["letter_id"], "cancelled", "resend"),
            (held["letter_id"], "draft", "hold"),
        ]
        assert rows[1]["send_at"] == send_at


class TestSending:
    async def test_a_letter_is_sent_to_everyone_then_another_to_a_subset(
        self, daemon: DaemonProcess, smtp_sink: SmtpSink, db: asyncpg.Connection[asyncpg.Record]
    ) -> None:
        """letter.send mails every subscriber once and letter.status then counts them delivered;
        with recipients, only those subscriptions are mailed; sending a sent letter again sends
        nothing and says so."""
        async with daemon.client() as client:
            newsletter_id, emails = await make_newsletter(client, 5)
            letter_id = (await client.letter_create(newsletter_id, "Issue 1", "Hello {{ name }}"))[
                "letter_id"
            ]
            started = await client.letter_send(letter_id)
            assert_status_shape(started, letter_id)
            assert started["state"] == "sending"
            assert "5 recipients" in started["message"]
            await daemon.wait_for_event("letter sent", letter_id=letter_id)
            status = await client.letter_status(letter_id)
            assert_status_shape(status, letter_id)
            assert status["state"] == "sent"
            assert status["counts"] == {"pending": 0, "sending": 0, "delivered": 5, "failed": 0, "skipped": 0}
            assert mailed(smtp_sink) == Counter(emails)

            again = await client.letter_send(letter_id)
            assert again["state"] == "sent"
            assert "nothing was sent" in again["message"]

            ids = await subscription_ids(db, newsletter_id)
            chosen = [emails[1], emails[3]]
            subset = (await client.letter_create(newsletter_id, "Issue 2", "Just you"))["letter_id"]
            await client.letter_send(subset, [ids[email] for email in chosen])
            await daemon.wait_for_event("letter sent", letter_id=subset)
            status = await client.letter_status(subset)
        assert status["counts"]["delivered"] == 2
        assert status["audience"] == 2
        assert mailed(smtp_sink) == Counter(emails) + Counter(chosen)

    async def test_a_letter_is_paused_and_resumed(
        self, launcher: DaemonLauncher, smtp_sink: SmtpSink
    ) -> None:
        """letter.pause stops a letter mid-send: the message in flight finishes, no other is sent, and
        the letter stays paused; letter.resume goes on from there, every subscriber mailed once."""
        daemon = await launcher.start(env={"MAILMAN_CONCURRENCY": "1"})
        async with daemon.client() as client:
            newsletter_id, emails = await make_newsletter(client, 10)
            letter_id = (await client.letter_create(newsletter_id, "Issue 1", "Hello"))["letter_id"]
            held = smtp_sink.hold("END")
            await client.letter_send(letter_id)
            await wait_for(held.reached)  # mid-send: the first message is in, its reply held
            raw = await RawConnection.open(daemon.socket)
            try:
                # Written before the reply is released, so it reaches the letter before the reply does.
                await raw.send_json(
                    {"jsonrpc": "2.0", "id": 1, "method": "letter.pause", "params": {"letter_id": letter_id}}
                )
                held.release()  # pause waits for the message in flight
                paused = (await raw.receive())["result"]
            finally:
                await raw.close()
            assert_status_shape(paused, letter_id)
            assert paused["state"] == "paused"
            assert paused["counts"] == {"pending": 9, "sending": 0, "delivered": 1, "failed": 0, "skipped": 0}
            assert (await client.letter_status(letter_id))["state"] == "paused"
            assert len(smtp_sink.messages) == 1

            resumed = await client.letter_resume(letter_id)
            assert_status_shape(resumed, letter_id)
            assert resumed["message"] == "resumed"
            await daemon.wait_for_event("letter sent", letter_id=letter_id)
            assert (await client.letter_status(letter_id))["counts"]["delivered"] == 10
        assert mailed(smtp_sink) == Counter(emails)

    async def test_failed_recipients_are_retried(self, daemon: DaemonProcess, smtp_sink: SmtpSink) -> None:
        """A recipient refused for good (554) ends failed with the letter otherwise sent;
        letter.retry_failed sends to it again, and it is delivered once the relay takes it."""
        async with daemon.client() as client:
            newsletter_id, emails = await make_newsletter(client, 3)
            smtp_sink.fail_recipients([emails[0]], 554, "5.7.1 Refused by policy")
            letter_id = (await client.letter_create(newsletter_id, "Issue 1", "Hello"))["letter_id"]
            await client.letter_send(letter_id)
            await daemon.wait_for_event("letter sent", letter_id=letter_id, failed=1)
            status = await client.letter_status(letter_id)
            assert status["counts"] == {"pending": 0, "sending": 0, "delivered": 2, "failed": 1, "skipped": 0}

            smtp_sink.clear_faults()
            retried = await client.letter_retry_failed(letter_id)
            assert_status_shape(retried, letter_id)
            assert retried["retried"] == 1
            await daemon.wait_for_event("letter sent", letter_id=letter_id, failed=0)
            status = await client.letter_status(letter_id)
        assert status["counts"] == {"pending": 0, "sending": 0, "delivered": 3, "failed": 0, "skipped": 0}
        assert mailed(smtp_sink) == Counter(emails)


class TestSystem:
    async def test_system_tree_health_and_configure(self, daemon: DaemonProcess, smtp_sink: SmtpSink) -> None:
        """system.tree shows the supervision tree in start order with pids and strategies (a letter
        being sent included); system.health reports database and SMTP ok; system.configure changes
        rate and concurrency live, and a later call reads them back."""
        async with daemon.client() as client:
            assert await client.system_health() == {
                "status": "ok",
                "checks": {"database": "ok", "smtp": "ok"},
            }

            newsletter_id, _ = await make_newsletter(client, 1)
            letter_id = (await client.letter_create(newsletter_id, "Issue 1", "Hello"))["letter_id"]
            held = smtp_sink.hold("END")
            await client.letter_send(letter_id)
            await wait_for(held.reached)
            tree = (await client.system_tree())["tree"]
            held.release()

            assert (tree["id"], tree["name"], tree["strategy"]) == (
                "application",
                "mailman.application",
                "rest_for_one",
            )
            children = {child["id"]: child for child in tree["children"]}
            assert list(children) == [
                "repo",
                "mailman.letters",
                "mailer",
                "mailman_supervisor",
                "letter_delivery_dispatcher",
                "scheduler",
                "rpc_server",
            ]
            assert all(PID.fullmatch(child["pid"]) for child in tree["children"])
            assert children["scheduler"]["name"] == "mailman.scheduler"
            assert children["rpc_server"]["name"] == "mailman.rpc"
            assert children["mailman_supervisor"]["strategy"] == "one_for_one"
            dispatcher = children["letter_delivery_dispatcher"]
            assert dispatcher["strategy"] == "one_for_one"
            (letter,) = dispatcher["children"]
            assert (letter["id"], letter["module"]) == (f"LetterSupervisor {letter_id}", "LetterSupervisor")
            assert (letter["type"], letter["strategy"]) == ("supervisor", "one_for_one")
            assert [(c["id"], c["type"]) for c in letter["children"]] == [
                (f"LetterDeliveryService {letter_id}", "worker")
            ]
            assert children["repo"]["module"] == "Repo"
            assert PID.fullmatch(letter["children"][0]["pid"])

            assert await client.system_configure(rate_limit=50.5, concurrency=7) == {
                "rate_limit": 50.5,
                "concurrency": 7,
            }
            assert await client.system_configure(concurrency=9) == {"rate_limit": 50.5, "concurrency": 9}
            assert await client.system_configure(rate_limit=20.0) == {"rate_limit": 20.0, "concurrency": 9}
            # As at start, the pool opens at most 64 connections to the relay, whatever is asked.
            assert await client.system_configure(concurrency=1000) == {"rate_limit": 20.0, "concurrency": 64}
            await daemon.wait_for_event("letter sent", letter_id=letter_id)


class TestMalformedInput:
    async def test_errors_are_answered_and_the_connection_goes_on(self, daemon: DaemonProcess) -> None:
        """Malformed JSON, an unknown method, bad params and an unknown letter each get a JSON-RPC
        error saying what is wrong, and the same connection answers the next request."""
        raw = await RawConnection.open(daemon.socket)
        try:
            await raw.send(b'{"jsonrpc": "2.0", "id": 1, "method": \n')
            error = (await raw.receive())["error"]
            assert error["code"] == ErrorCode.PARSE_ERROR
            assert error["message"].startswith("parse error:")

            reply = await raw.request({"jsonrpc": "2.0", "id": 2, "method": "letter.explode"})
            assert reply["id"] == 2
            assert reply["error"]["code"] == ErrorCode.METHOD_NOT_FOUND
            assert "letter.explode" in reply["error"]["message"]

            bad = {"jsonrpc": "2.0", "id": 3, "method": "letter.status", "params": {"letter_id": "seven"}}
            reply = await raw.request(bad)
            assert reply["error"]["code"] == ErrorCode.INVALID_PARAMS
            assert "letter_id" in reply["error"]["message"]

            missing = {"jsonrpc": "2.0", "id": 4, "method": "letter.status", "params": {"letter_id": 999}}
            reply = await raw.request(missing)
            assert reply["error"]["code"] == ErrorCode.NOT_FOUND
            assert "999" in reply["error"]["message"]

            reply = await raw.request({"jsonrpc": "2.0", "id": 5, "method": "system.health"})
            assert reply == {
                "jsonrpc": "2.0",
                "result": {"status": "ok", "checks": reply["result"]["checks"]},
                "id": 5,
            }
        finally:
            await raw.close()

    async def test_an_oversized_line_is_refused_and_the_connection_closed(
        self, daemon: DaemonProcess
    ) -> None:
        """A request line over 1 MiB gets an invalid-request error naming the limit, the connection is
        closed cleanly, and the daemon answers the next connection."""
        raw = await RawConnection.open(daemon.socket)
        try:
            await raw.send(b"x" * (MAX_LINE_BYTES + 100) + b"\n")
            reply = await raw.receive()
            assert reply["id"] is None
            assert reply["error"]["code"] == ErrorCode.INVALID_REQUEST
            assert "1 MiB" in reply["error"]["message"]
            assert await raw.closed_by_server()
        finally:
            await raw.close()
        async with daemon.client() as client:
            assert (await client.system_health())["status"] == "ok"

    async def test_thirty_clients_at_once(self, daemon: DaemonProcess) -> None:
        """Thirty clients calling letter.status at the same time are each answered correctly."""
        async with daemon.client() as client:
            newsletter_id, _ = await make_newsletter(client, 2)
            letter_id = (await client.letter_create(newsletter_id, "Issue 1", "Hello"))["letter_id"]

        async def ask() -> list[dict[str, Any]]:
            async with daemon.client() as own:
                return [await own.letter_status(letter_id) for _ in range(5)]

        answers = await asyncio.gather(*(ask() for _ in range(30)))
        assert len(answers) == 30
        for status in (status for answer in answers for status in answer):
            assert_status_shape(status, letter_id)
            assert status["state"] == "draft"


class TestSocket:
    async def test_the_socket_is_private_to_the_daemons_user(self, daemon: DaemonProcess) -> None:
        """The daemon's socket is a Unix socket owned by its user, mode 0600."""
        info = os.stat(daemon.socket)
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert info.st_uid == os.getuid()

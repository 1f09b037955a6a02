"""The Maildir SMTP sink: a real SMTP server on 127.0.0.1, spoken to with aiosmtplib."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest

from mailman import supervisor as otp
from mailman.embedded import MaildirSink, MaildirSinkServer, SmtpSinkError

QUEUED = re.compile(r"2\.0\.0 Ok: queued as ([0-9A-F]{16})")


@pytest.fixture
async def sink(tmp_path: Path) -> AsyncIterator[MaildirSink]:
    async with MaildirSink(tmp_path) as running:
        yield running


def newsletter(subject: str = "Issue 1", body: str = "Hello, reader.\n") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "news@example.com"
    message["To"] = "readers@example.com"
    message["Subject"] = subject
    message["Message-ID"] = "<1.2@mailman.localhost>"
    message.set_content(body)
    return message


async def send(
    sink_url_or_sink: MaildirSink | str, recipients: list[str], message: EmailMessage | None = None
) -> str:
    """Send and return the server's reply to DATA (code stripped)."""
    if isinstance(sink_url_or_sink, MaildirSink):
        host, port = sink_url_or_sink.host, sink_url_or_sink.port
    else:
        host, _, port_text = sink_url_or_sink.removeprefix("smtp://").rpartition(":")
        port = int(port_text)
    _, reply = await aiosmtplib.send(
        message or newsletter(), hostname=host, port=port, sender="bounces@example.com", recipients=recipients
    )
    return reply


async def refuses_connections(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


class TestStart:
    async def test_listens_on_a_free_port_of_localhost(self, sink: MaildirSink) -> None:
        """With port 0 the sink binds a free port on 127.0.0.1 and reports it in ``port`` and ``url``."""
        assert sink.host == "127.0.0.1"
        assert sink.port > 0
        assert sink.url == f"smtp://127.0.0.1:{sink.port}"

    async def test_creates_the_maildir(self, tmp_path: Path, sink: MaildirSink) -> None:
        """``<data_dir>/maildir`` exists with its cur, new and tmp directories, and starts empty."""
        assert sink.maildir_path == tmp_path / "maildir"
        assert {p.name for p in sink.maildir_path.iterdir()} >= {"cur", "new", "tmp"}
        assert len(sink.maildir) == 0

    async def test_a_configured_port_is_used(self, tmp_path: Path, sink: MaildirSink) -> None:
        """A sink given a port listens on that port (here: one just freed by another sink)."""
        port = sink.port
        await sink.stop()
        async with MaildirSink(tmp_path, port=port) as again:
            assert again.port == port
            assert await send(again, ["ada@example.com"])

    async def test_a_busy_port_is_a_clear_error(self, tmp_path: Path, sink: MaildirSink) -> None:
        """Starting on a port that is taken raises SmtpSinkError naming the address."""
        with pytest.raises(SmtpSinkError, match=f"cannot listen on 127.0.0.1:{sink.port} for the SMTP sink"):
            await MaildirSink(tmp_path / "other", port=sink.port).start()

    async def test_an_unusable_data_dir_is_a_clear_error(self, tmp_path: Path) -> None:
        """A data dir that cannot hold a Maildir (here: a file) raises SmtpSinkError naming the path."""
        not_a_dir = tmp_path / "file"
        not_a_dir.write_text("")
        with pytest.raises(SmtpSinkError, match=f"cannot create the sink's Maildir {not_a_dir}/maildir"):
            await MaildirSink(not_a_dir).start()

    def test_a_port_out_of_range_is_refused(self, tmp_path: Path) -> None:
        """Ports outside 0..65535 are a ValueError at construction."""
        with pytest.raises(ValueError, match="expected a port from 0"):
            MaildirSink(tmp_path, port=70000)


class TestDelivery:
    async def test_a_message_lands_in_the_maildir_with_trace_headers(self, sink: MaildirSink) -> None:
        """A received message is filed with Delivered-To, X-Mailman-Envelope-To and Return-Path added."""
        await send(sink, ["ada@example.com"])
        (stored,) = sink.maildir.values()
        assert stored["Delivered-To"] == "ada@example.com"
        assert stored["X-Mailman-Envelope-To"] == "ada@example.com"
        assert stored["Return-Path"] == "<bounces@example.com>"
        assert stored["Subject"] == "Issue 1"
        assert stored["Message-ID"] == "<1.2@mailman.localhost>"
        assert stored.get_payload() == "Hello, reader.\n"

    async def test_each_recipient_gets_a_file(self, sink: MaildirSink) -> None:
        """One message to three recipients is three files, one addressed to each."""
        recipients = ["ada@example.com", "bob@example.com", "cy@example.com"]
        await send(sink, recipients)
        assert len(list((sink.maildir_path / "new").iterdir())) == 3
        assert sorted(m["X-Mailman-Envelope-To"] for m in sink.maildir.values()) == recipients

    async def test_the_reply_carries_the_queue_id(self, sink: MaildirSink) -> None:
        """DATA is answered ``250 2.0.0 Ok: queued as <id>``, and each stored copy names that id."""
        reply = await send(sink, ["ada@example.com", "bob@example.com"])
        match = QUEUED.fullmatch(reply)
        assert match is not None, reply
        assert {m["X-Mailman-Queue-Id"] for m in sink.maildir.values()} == {match.group(1)}

    async def test_each_message_gets_its_own_queue_id(self, sink: MaildirSink) -> None:
        """Two messages are queued under two different ids."""
        first = await send(sink, ["ada@example.com"])
        second = await send(sink, ["ada@example.com"])
        assert first != second

    async def test_non_ascii_addresses_are_accepted(self, sink: MaildirSink) -> None:
        """SMTPUTF8 is offered, so internationalised addresses are delivered."""
        await send(sink, ["zoë@exämple.com"], newsletter(subject="Grüße"))
        (key,) = sink.maildir.keys()
        assert "Delivered-To: zoë@exämple.com\n".encode() in sink.maildir.get_bytes(key)


class TestStop:
    async def test_stop_closes_the_port(self, tmp_path: Path) -> None:
        """After stop, nothing listens on the sink's port any more."""
        sink = MaildirSink(tmp_path)
        await sink.start()
        await sink.stop()
        assert not sink.running
        assert await refuses_connections(sink.host, sink.port)

    async def test_stop_hangs_up_open_connections(self, sink: MaildirSink) -> None:
        """A client still connected when the sink stops finds the connection closed."""
        client = aiosmtplib.SMTP(hostname=sink.host, port=sink.port)
        await client.connect()
        await sink.stop()
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            await client.noop()

    async def test_stop_is_idempotent(self, sink: MaildirSink) -> None:
        """Stopping a stopped sink does nothing."""
        await sink.stop()
        await sink.stop()
        assert not sink.running


class TestMaildirSinkServer:
    async def test_url_answers_where_the_sink_listens(self, tmp_path: Path) -> None:
        """``await MaildirSinkServer.url(server)`` is the smtp:// URL of a sink that accepts mail."""
        server = await MaildirSinkServer.start(tmp_path)
        try:
            url = await MaildirSinkServer.url(server)
            assert re.fullmatch(r"smtp://127\.0\.0\.1:\d+", url)
            await send(url, ["ada@example.com"])
            assert len(list((tmp_path / "maildir" / "new").iterdir())) == 1
        finally:
            await otp.GenServer.stop(server)

    async def test_child_spec_runs_it_under_a_supervisor(self, tmp_path: Path) -> None:
        """``child_spec(data_dir)`` runs the sink in a supervision tree; shutting the tree down closes it."""
        supervisor = await otp.Supervisor.start_link(
            otp.SupervisorSpec(
                [MaildirSinkServer.child_spec(tmp_path, name="sink")], strategy=otp.Strategy.ONE_FOR_ONE
            )
        )
        url = await MaildirSinkServer.url("sink")
        host, _, port = url.removeprefix("smtp://").rpartition(":")
        await otp.Supervisor.stop(supervisor)
        assert await refuses_connections(host, int(port))

    async def test_child_spec_takes_a_port(self, tmp_path: Path) -> None:
        """``child_spec(data_dir, port=...)`` listens on that port."""
        async with MaildirSink(tmp_path / "probe") as probe:
            port = probe.port  # a port known to be free once the probe stops
        supervisor = await otp.Supervisor.start_link(
            otp.SupervisorSpec(
                [MaildirSinkServer.child_spec(tmp_path, name="sink", port=port)],
                strategy=otp.Strategy.ONE_FOR_ONE,
            )
        )
        try:
            assert await MaildirSinkServer.url("sink") == f"smtp://127.0.0.1:{port}"
        finally:
            await otp.Supervisor.stop(supervisor)

    async def test_a_failed_start_says_why(self, tmp_path: Path) -> None:
        """If the sink cannot start, start raises StartError carrying the SmtpSinkError."""
        not_a_dir = tmp_path / "file"
        not_a_dir.write_text("")
        with pytest.raises(otp.StartError) as caught:
            await MaildirSinkServer.start(not_a_dir)
        reason = caught.value.reason
        assert isinstance(reason, otp.Crash)
        assert isinstance(reason.exception, SmtpSinkError)
        assert "cannot create the sink's Maildir" in str(reason.exception)

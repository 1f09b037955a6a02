"""The commands against a real daemon started in-process (:class:`~mailman.daemon.lifecycle.Daemon`) on the
test's database, with its built-in Maildir SMTP sink and a socket in a short temporary directory."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from mailman.cli.demo import count_messages
from mailman.client import Client
from mailman.config import Settings
from mailman.daemon.lifecycle import Daemon, RunningDaemon
from mailman.services.store.migrations import DEFAULT_DIRECTORY
from tests.cli.conftest import RunCli


@pytest.fixture
async def daemon(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[RunningDaemon]:
    # A Unix socket path is limited to ~107 bytes: pytest's tmp_path may be longer.
    socket_dir = Path(tempfile.mkdtemp(prefix="mailman-cli-"))
    settings = Settings(
        data_dir=tmp_path, database_url=database_url, socket=socket_dir / "mailman.sock", rate_limit=10_000
    )
    # What the commands read: the same socket and database as the daemon's.
    monkeypatch.setenv("MAILMAN_SOCKET", str(settings.socket))
    monkeypatch.setenv("MAILMAN_DATABASE_URL", database_url)
    daemon = Daemon(settings)
    try:
        yield await daemon.start()
    finally:
        await daemon.stop()
        shutil.rmtree(socket_dir, ignore_errors=True)


async def create_newsletter(cli: RunCli) -> int:
    result = await cli("newsletter", "create", "--owner", "owner@example.com", "--name", "The Weekly")
    assert result.code == 0, result.stderr
    return int(result.stdout)


async def create_letter(cli: RunCli, tmp_path: Path, newsletter_id: int, *extra: str) -> int:
    (tmp_path / "body.txt").write_text("Dear {{ name }},\nnews.\n{{ unsubscribe_url }}\n")
    (tmp_path / "body.html").write_text("<p>Dear {{ name }}</p>")
    result = await cli(
        "letter", "create", str(newsletter_id), "--subject", "Issue 1",
        "--text-file", str(tmp_path / "body.txt"), "--html-file", str(tmp_path / "body.html"), *extra,
    )  # fmt: skip
    assert result.code == 0, result.stderr
    return int(result.stdout)


class TestAgainstADaemon:
    async def test_from_newsletter_to_sent_letter(
        self, cli: RunCli, daemon: RunningDaemon, tmp_path: Path
    ) -> None:
        """newsletter create, subscribers import and add, letter create, send --follow: all mailed."""
        newsletter_id = await create_newsletter(cli)
        csv_file = tmp_path / "list.csv"
        csv_file.write_text("email,name\n" + "".join(f"r{i}@example.com,R {i}\n" for i in range(20)))
        imported = await cli("subscribers", "import", str(newsletter_id), str(csv_file))
        assert imported.code == 0, imported.stderr
        added = await cli(
            "subscribers", "add", str(newsletter_id), "ada@example.com", "--name", "Ada", "--json"
        )
        assert added.json() == {"newsletter_id": newsletter_id, "added": 1, "existing": 0}
        letter_id = await create_letter(cli, tmp_path, newsletter_id)

        sent = await cli("send", str(letter_id), "--follow", "--json")
        assert sent.code == 0, sent.stderr
        assert sent.json()["state"] == "sent"
        assert sent.json()["counts"]["delivered"] == 21
        assert f"letter {letter_id}: sent 21/21 (100%)" in sent.stderr  # the plain progress lines
        assert daemon.maildir is not None
        assert count_messages(daemon.maildir) == 21

        status = await cli("status", str(letter_id), "--json")
        async with Client(daemon.socket) as client:
            expected = await client.letter_status(letter_id)
        assert status.json() == expected  # exactly the letter.status result
        assert set(status.json()["counts"]) == {"pending", "sending", "delivered", "failed", "skipped"}

        human = await cli("status", str(letter_id))
        assert human.stdout.splitlines()[0] == f"letter {letter_id}: sent"

    async def test_tree_draws_the_live_tree(self, cli: RunCli, daemon: RunningDaemon) -> None:
        """mailman tree: the application and its children, drawn; --json gives the system.tree result."""
        drawn = await cli("tree")
        assert drawn.code == 0
        lines = drawn.stdout.splitlines()
        assert lines[0].startswith("application  mailman.application  <")
        assert "supervisor rest_for_one" in lines[0]
        assert any(line.startswith("├── repo  Repo  mailman.repo") for line in lines), lines
        assert lines[-1].startswith("└── rpc_server  RpcServer  mailman.rpc"), lines
        as_json = await cli("tree", "--json")
        assert as_json.json()["tree"]["id"] == "application"

    async def test_send_to_chosen_recipients(
        self, cli: RunCli, daemon: RunningDaemon, database_url: str, tmp_path: Path
    ) -> None:
        """send --recipients FILE mails only the subscription ids in the file."""
        newsletter_id = await create_newsletter(cli)
        for email in ("a@example.com", "b@example.com", "c@example.com"):
            assert (await cli("subscribers", "add", str(newsletter_id), email)).code == 0
        connection = await asyncpg.connect(database_url)
        try:
            rows = await connection.fetch("SELECT id FROM subscriptions WHERE email <> 'b@example.com'")
        finally:
            await connection.close()
        ids = tmp_path / "ids.txt"
        ids.write_text("\n".join(str(row["id"]) for row in rows))
        letter_id = await create_letter(cli, tmp_path, newsletter_id)
        sent = await cli("send", str(letter_id), "--recipients", str(ids), "--follow", "--json")
        assert sent.code == 0, sent.stderr
        assert (sent.json()["audience"], sent.json()["counts"]["delivered"]) == (2, 2)

    async def test_a_cancelled_letter_cannot_be_followed_to_sent(
        self, cli: RunCli, daemon: RunningDaemon, tmp_path: Path
    ) -> None:
        """cancel a draft; then send --follow ends at once, cancelled, with exit code 1."""
        newsletter_id = await create_newsletter(cli)
        letter_id = await create_letter(cli, tmp_path, newsletter_id)
        cancelled = await cli("cancel", str(letter_id), "--json")
        assert (cancelled.code, cancelled.json()["state"]) == (0, "cancelled")
        sent = await cli("send", str(letter_id), "--follow")
        assert sent.code == 1
        assert "the letter is already cancelled" in sent.stderr
        assert sent.stdout.startswith(f"letter {letter_id} cancelled: 0 delivered")

    async def test_a_scheduled_letter(self, cli: RunCli, daemon: RunningDaemon, tmp_path: Path) -> None:
        """letter create --send-at schedules it."""
        newsletter_id = await create_newsletter(cli)
        letter_id = await create_letter(cli, tmp_path, newsletter_id, "--send-at", "2099-01-01T09:00:00Z")
        status = await cli("status", str(letter_id), "--json")
        assert status.json()["state"] == "scheduled"

    async def test_the_daemon_refusing_is_exit_code_1(self, cli: RunCli, daemon: RunningDaemon) -> None:
        """An error answered by the daemon: its message on stderr; its code in the JSON document."""
        result = await cli("status", "999", "--json")
        assert result.code == 1
        assert "mailman: error: letter 999 does not exist" in result.stderr
        assert result.json()["error"]["code"] == -32001
        invalid = await cli("subscribers", "add", "1", "not-an-email")
        assert invalid.code == 1
        assert "expected an email address like name@example.org" in invalid.stderr


class TestMigrate:
    async def test_migrate_applies_then_has_nothing_to_do(
        self, cli: RunCli, empty_database_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """mailman migrate applies the migrations once, and says the database is up to date after."""
        monkeypatch.setenv("MAILMAN_DATABASE_URL", empty_database_url)
        first = await cli("migrate", "--json")
        assert first.code == 0, first.stderr
        shipped = sorted(
            int(path.name[:4]) for path in DEFAULT_DIRECTORY.iterdir() if path.name.endswith(".sql")
        )
        assert [m["version"] for m in first.json()["applied"]] == shipped
        second = await cli("migrate")
        assert second.code == 0
        assert "is up to date" in second.stdout

    async def test_an_unreachable_database(
        self, cli: RunCli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """A database that cannot be reached is a clear error, not a traceback, without the password."""
        monkeypatch.setenv("MAILMAN_DATABASE_URL", f"postgresql://u:secret@/db?host={tmp_path}")
        result = await cli("migrate")
        assert result.code == 1
        assert "cannot connect to the database db" in result.stderr
        assert "secret" not in result.stderr

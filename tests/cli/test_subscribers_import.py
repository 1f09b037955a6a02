"""``mailman subscribers import``: one transaction straight into the database, bad rows by line number.

The command runs as a user runs it, reading its settings from ``MAILMAN_DATABASE_URL`` (here the
test's fresh database); the daemon need not be running for an import.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from mailman.services.store.queries.newsletters import create_user_with_newsletter
from tests.cli.conftest import RunCli

Connection = asyncpg.Connection


@pytest.fixture
async def connection(database_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Connection]:
    """A connection to the test's database, which the commands use too (``MAILMAN_DATABASE_URL``)."""
    monkeypatch.setenv("MAILMAN_DATABASE_URL", database_url)
    connection = await asyncpg.connect(database_url)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def newsletter_id(connection: Connection) -> int:
    _, newsletter = await create_user_with_newsletter(
        connection,
        email="owner@example.com",
        name="The Weekly",
        from_address="news@example.com",
        unsubscribe_url_template="https://example.com/u/{token}",
    )
    return newsletter.id


async def subscribed(connection: Connection, newsletter_id: int) -> list[tuple[str, str]]:
    rows = await connection.fetch(
        "SELECT email, name FROM subscriptions WHERE newsletter_id = $1 ORDER BY id", newsletter_id
    )
    return [(row["email"], row["name"]) for row in rows]


def write(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "list.csv"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


class TestImport:
    async def test_good_rows_are_imported_and_bad_rows_reported_by_line(
        self, cli: RunCli, connection: Connection, newsletter_id: int, tmp_path: Path
    ) -> None:
        """The good rows go in; each bad row is on stderr as FILE:LINE with why; the exit code is 1."""
        path = write(
            tmp_path, "email,name\nada@example.com,Ada\nnope,Bob\ngrace@example.com,Grace\n,Nobody\n"
        )
        result = await cli("subscribers", "import", str(newsletter_id), str(path))
        assert result.code == 1
        assert await subscribed(connection, newsletter_id) == [
            ("ada@example.com", "Ada"),
            ("grace@example.com", "Grace"),
        ]
        assert f"{path}:3: rejected: invalid email 'nope'" in result.stderr
        assert f"{path}:5: rejected: missing email" in result.stderr
        assert result.stdout.startswith(
            f"imported 2 new subscribers to newsletter {newsletter_id} from 4 rows"
        )
        assert "2 rejected" in result.stdout

    async def test_a_clean_file_exits_0(
        self, cli: RunCli, connection: Connection, newsletter_id: int, tmp_path: Path
    ) -> None:
        """With every row imported the exit code is 0 and stderr is empty."""
        path = write(tmp_path, "email\nada@example.com\n")
        result = await cli("subscribers", "import", str(newsletter_id), str(path))
        assert (result.code, result.stderr) == (0, "")
        assert await subscribed(connection, newsletter_id) == [("ada@example.com", "")]

    async def test_json_output_lists_every_outcome(
        self, cli: RunCli, connection: Connection, newsletter_id: int, tmp_path: Path
    ) -> None:
        """--json prints one document: counts, the duplicates and the rejected rows with line numbers."""
        await connection.execute(
            "INSERT INTO subscriptions (newsletter_id, email, name) VALUES ($1, 'old@example.com', 'Old')",
            newsletter_id,
        )
        path = write(
            tmp_path,
            "email,name\nada@example.com,Ada\nOLD@example.com,Again\nbad,x\nADA@example.com,Twice\n",
        )
        result = await cli("subscribers", "import", str(newsletter_id), str(path), "--json")
        assert result.code == 1
        assert result.json() == {
            "newsletter_id": newsletter_id,
            "file": str(path),
            "dry_run": False,
            "rows": 4,
            "valid": 2,
            "imported": 1,
            "existing": 1,
            "duplicates": [{"line": 5, "email": "ADA@example.com", "first_line": 2}],
            "rejected": [
                {"line": 4, "reason": "invalid email 'bad': expected an email address like name@example.org"}
            ],
            "seconds": result.json()["seconds"],
        }
        assert await subscribed(connection, newsletter_id) == [
            ("old@example.com", "Old"),
            ("ada@example.com", "Ada"),
        ]

    async def test_importing_again_adds_nothing(
        self, cli: RunCli, connection: Connection, newsletter_id: int, tmp_path: Path
    ) -> None:
        """Addresses already subscribed are left as they were: an import can be repeated safely."""
        path = write(tmp_path, "email,name\nada@example.com,Ada\n")
        await cli("subscribers", "import", str(newsletter_id), str(path))
        again = await cli("subscribers", "import", str(newsletter_id), str(path), "--json")
        assert (again.code, again.json()["imported"], again.json()["existing"]) == (0, 0, 1)
        assert await subscribed(connection, newsletter_id) == [("ada@example.com", "Ada")]

    async def test_a_dry_run_imports_nothing(
        self, cli: RunCli, connection: Connection, newsletter_id: int, tmp_path: Path
    ) -> None:
        """--dry-run checks the file and reports, without touching the database."""
        path = write(tmp_path, "email\nada@example.com\nbad\n")
        result = await cli("subscribers", "import", str(newsletter_id), str(path), "--dry-run", "--json")
        assert result.code == 1
        assert (result.json()["dry_run"], result.json()["valid"], result.json()["imported"]) == (
            True,
            1,
            None,
        )
        assert await subscribed(connection, newsletter_id) == []


class TestOneTransaction:
    async def test_a_file_failing_late_imports_nothing(
        self, cli: RunCli, connection: Connection, newsletter_id: int, tmp_path: Path
    ) -> None:
        """Rows are streamed into one transaction: a file found unreadable after 5,000 good rows (NUL
        bytes) rolls them all back."""
        good = "".join(f"reader{i}@example.com,Reader {i}\n" for i in range(5000))
        path = write(tmp_path, ("email,name\n" + good).encode() + b"late@example.com,\x00\x00\n")
        result = await cli("subscribers", "import", str(newsletter_id), str(path))
        assert result.code == 1
        assert "contains NUL bytes (line 5002)" in result.stderr
        assert "nothing was imported" in result.stderr
        assert await subscribed(connection, newsletter_id) == []

    async def test_an_unknown_newsletter_imports_nothing(
        self, cli: RunCli, connection: Connection, tmp_path: Path
    ) -> None:
        """A newsletter that does not exist is an error, and no row is written."""
        path = write(tmp_path, "email\nada@example.com\n")
        result = await cli("subscribers", "import", "4242", str(path))
        assert result.code == 1
        assert "newsletter 4242 does not exist" in result.stderr
        assert await connection.fetchval("SELECT count(*) FROM subscriptions") == 0

    @pytest.mark.parametrize(
        "case",
        [
            ("missing.csv", None, "No such file or directory"),
            ("folder", "directory", "is a directory"),
            ("latin1.csv", b"email,name\njose@example.com,Jos\xe9\n", "is not UTF-8 text"),
            ("utf16.csv", "email,name\nada@example.com,Ada\n".encode("utf-16-le"), "contains NUL bytes"),
        ],
        ids=["missing", "directory", "latin1", "utf16-without-bom"],
    )
    async def test_an_unreadable_file_imports_nothing(
        self,
        cli: RunCli,
        connection: Connection,
        newsletter_id: int,
        tmp_path: Path,
        case: tuple[str, bytes | str | None, str],
    ) -> None:
        """Missing, a directory, not UTF-8 at all: a clear error on stderr, exit 1, no row written."""
        name, content, message = case
        path = tmp_path / name
        if content == "directory":
            path.mkdir()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        result = await cli("subscribers", "import", str(newsletter_id), str(path), "--json")
        assert result.code == 1
        assert message in result.stderr
        assert "nothing was imported" in result.json()["error"]["message"]
        assert await subscribed(connection, newsletter_id) == []


class TestLargeLists:
    @pytest.mark.timeout(120)
    async def test_100_000_rows_are_imported_in_one_go(
        self, cli: RunCli, connection: Connection, newsletter_id: int, tmp_path: Path
    ) -> None:
        """A list of 100,000 subscribers is read, checked and imported whole (its speed is judged by
        a benchmark, bench/subscribers_import.py, not by a test)."""
        rows = "".join(f"reader{i}@example.com,Reader {i}\n" for i in range(100_000))
        path = write(tmp_path, "email,name\n" + rows)
        result = await cli("subscribers", "import", str(newsletter_id), str(path), "--json")
        assert (result.code, result.json()["imported"]) == (0, 100_000)
        assert await connection.fetchval("SELECT count(*) FROM subscriptions") == 100_000

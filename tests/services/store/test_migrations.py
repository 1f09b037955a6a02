"""Schema migrations against a real, initially empty Postgres database."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from importlib.resources import as_file
from pathlib import Path

import asyncpg
import pytest

from mailman.services.errors import (
    MigrationChecksumError,
    MigrationError,
    MigrationFailedError,
    UnknownMigrationError,
)
from mailman.services.store.migrations import (
    DEFAULT_DIRECTORY,
    applied_migrations,
    load_migrations,
    migrate,
    pending_migrations,
)

REPOSITORY = Path(__file__).resolve().parents[3]

TABLES = {"users", "newsletters", "subscriptions", "letters", "deliveries", "newsletter_emails"}

SHIPPED = [(1, "initial"), (2, "letter_leases"), (3, "letter_message_domain")]
"""The migrations this version of mailman ships, in order."""


@pytest.fixture
async def connection(empty_database_url: str) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    connection = await asyncpg.connect(empty_database_url)
    try:
        yield connection
    finally:
        await connection.close()


def write(directory: Path, name: str, sql: str) -> Path:
    path = directory / name
    path.write_text(sql)
    return path


async def table_names(connection: asyncpg.Connection[asyncpg.Record]) -> set[str]:
    rows = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {row["tablename"] for row in rows}


class TestMigrate:
    async def test_applies_the_shipped_schema_to_an_empty_database(
        self, connection: asyncpg.Connection[asyncpg.Record]
    ) -> None:
        """The shipped migrations create every table of the data model, the lease-token sequences of
        deliveries and letters, the letters' lease columns and their Message-ID domain."""
        applied = await migrate(connection)

        assert [(m.version, m.name) for m in applied] == SHIPPED
        assert TABLES | {"mailman_migrations"} <= await table_names(connection)
        assert await connection.fetchval("SELECT to_regclass('delivery_lease_token')") is not None
        assert await connection.fetchval("SELECT to_regclass('letter_lease_token')") is not None
        columns = await connection.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'letters'"
        )
        assert {"owner_node", "owner_token", "lease_expires_at", "message_domain"} <= {
            row["column_name"] for row in columns
        }

    async def test_records_version_name_and_checksum(
        self, connection: asyncpg.Connection[asyncpg.Record]
    ) -> None:
        """Each applied file is recorded with the sha256 of its bytes."""
        await migrate(connection)

        records = await applied_migrations(connection)
        assert [(record.version, record.name) for record in records] == SHIPPED
        for record in records:
            content = (DEFAULT_DIRECTORY / f"{record.version:04d}_{record.name}.sql").read_bytes()
            assert record.checksum == hashlib.sha256(content).hexdigest()

    async def test_second_run_applies_nothing(self, connection: asyncpg.Connection[asyncpg.Record]) -> None:
        """Re-running the migrator on an up-to-date database changes nothing."""
        await migrate(connection)

        assert await migrate(connection) == []
        assert len(await applied_migrations(connection)) == len(SHIPPED)

    async def test_applies_files_in_version_order(
        self, connection: asyncpg.Connection[asyncpg.Record], tmp_path: Path
    ) -> None:
        """Files run by version number, whatever order the directory lists them in."""
        write(tmp_path, "0002_add_column.sql", "ALTER TABLE things ADD COLUMN label text;")
        write(tmp_path, "0010_add_index.sql", "CREATE INDEX things_label_idx ON things (label);")
        write(tmp_path, "0001_create.sql", "CREATE TABLE things (id int);")

        applied = await migrate(connection, tmp_path)

        assert [m.version for m in applied] == [1, 2, 10]
        assert await connection.fetchval("SELECT to_regclass('things_label_idx')") is not None

    async def test_applies_only_files_added_since_last_run(
        self, connection: asyncpg.Connection[asyncpg.Record], tmp_path: Path
    ) -> None:
        """A new file is applied on the next run; the ones already applied are not run again."""
        write(tmp_path, "0001_create.sql", "CREATE TABLE things (id int);")
        await migrate(connection, tmp_path)
        write(tmp_path, "0002_more.sql", "CREATE TABLE more_things (id int);")

        applied = await migrate(connection, tmp_path)

        assert [m.name for m in applied] == ["more"]

    async def test_refuses_when_an_applied_file_changed(
        self, connection: asyncpg.Connection[asyncpg.Record], tmp_path: Path
    ) -> None:
        """Editing an applied file stops the migrator, naming the file, before it applies anything."""
        edited = write(tmp_path, "0001_create.sql", "CREATE TABLE things (id int);")
        await migrate(connection, tmp_path)
        edited.write_text("CREATE TABLE things (id bigint);")
        write(tmp_path, "0002_more.sql", "CREATE TABLE more_things (id int);")

        with pytest.raises(MigrationChecksumError, match=r"0001_create\.sql") as raised:
            await migrate(connection, tmp_path)

        assert raised.value.version == 1
        assert raised.value.path == str(edited)
        assert "more_things" not in await table_names(connection)

    async def test_failed_file_is_rolled_back_and_not_recorded(
        self, connection: asyncpg.Connection[asyncpg.Record], tmp_path: Path
    ) -> None:
        """A file Postgres rejects leaves no trace; the files before it stay applied."""
        write(tmp_path, "0001_create.sql", "CREATE TABLE things (id int);")
        write(
            tmp_path, "0002_broken.sql", "CREATE TABLE half_done (id int); SELECT no_such_column FROM things;"
        )

        with pytest.raises(MigrationFailedError, match=r"0002_broken\.sql") as raised:
            await migrate(connection, tmp_path)

        assert raised.value.version == 2
        assert [m.version for m in await applied_migrations(connection)] == [1]
        assert "half_done" not in await table_names(connection)

    async def test_refuses_a_database_migrated_by_newer_code(
        self, connection: asyncpg.Connection[asyncpg.Record], tmp_path: Path
    ) -> None:
        """A recorded migration with no file here means this code is older than the schema."""
        write(tmp_path, "0001_create.sql", "CREATE TABLE things (id int);")
        newer = write(tmp_path, "0002_more.sql", "CREATE TABLE more_things (id int);")
        await migrate(connection, tmp_path)
        newer.unlink()

        with pytest.raises(UnknownMigrationError, match="0002_more") as raised:
            await migrate(connection, tmp_path)

        assert raised.value.version == 2

    async def test_concurrent_migrators_apply_each_file_once(
        self, connection: asyncpg.Connection[asyncpg.Record], empty_database_url: str
    ) -> None:
        """Two migrators started together are serialised: each file runs once, neither fails."""
        other = await asyncpg.connect(empty_database_url)
        try:
            first, second = await asyncio.gather(migrate(connection), migrate(other))
        finally:
            await other.close()

        assert sorted(m.version for m in first + second) == [version for version, _ in SHIPPED]
        assert len(await applied_migrations(connection)) == len(SHIPPED)

    async def test_the_lease_migration_applies_to_letters_written_before_it(
        self, connection: asyncpg.Connection[asyncpg.Record], tmp_path: Path
    ) -> None:
        """A database of the first release, letters sending included, takes 0002: every letter then
        has no lease holder, so the first daemon to look resumes it."""
        write(tmp_path, "0001_initial.sql", (DEFAULT_DIRECTORY / "0001_initial.sql").read_text())
        await migrate(connection, tmp_path)
        await connection.execute(
            "INSERT INTO users (email) VALUES ('o@example.com');"
            "INSERT INTO newsletters (user_id, name, from_address, unsubscribe_url_template)"
            " VALUES (1, 'N', 'n@example.com', 'https://example.com/{token}');"
            "INSERT INTO letters (newsletter_id, subject, text_body, status) VALUES (1, 'S', 'T', 'sending')"
        )

        applied = await migrate(connection)

        assert [(m.version, m.name) for m in applied] == SHIPPED[1:]
        row = await connection.fetchrow("SELECT owner_node, owner_token, lease_expires_at FROM letters")
        assert tuple(row) == (None, None, None)


class TestPendingMigrations:
    async def test_lists_every_file_for_an_empty_database(
        self, connection: asyncpg.Connection[asyncpg.Record]
    ) -> None:
        """On a database never migrated, every shipped file is pending, and nothing is created."""
        pending = await pending_migrations(connection)

        assert [(m.version, m.name) for m in pending] == SHIPPED
        assert await table_names(connection) == set()

    async def test_lists_only_files_not_applied(
        self, connection: asyncpg.Connection[asyncpg.Record], tmp_path: Path
    ) -> None:
        """Applied files are not pending; files added since are."""
        write(tmp_path, "0001_create.sql", "CREATE TABLE things (id int);")
        await migrate(connection, tmp_path)
        write(tmp_path, "0002_more.sql", "CREATE TABLE more_things (id int);")

        pending = await pending_migrations(connection, tmp_path)

        assert [m.version for m in pending] == [2]

    async def test_refuses_when_an_applied_file_changed(
        self, connection: asyncpg.Connection[asyncpg.Record], tmp_path: Path
    ) -> None:
        """The pending list is not computed over an edited applied file."""
        edited = write(tmp_path, "0001_create.sql", "CREATE TABLE things (id int);")
        await migrate(connection, tmp_path)
        edited.write_text("-- edited\nCREATE TABLE things (id int);")

        with pytest.raises(MigrationChecksumError, match=r"0001_create\.sql"):
            await pending_migrations(connection, tmp_path)


class TestLoadMigrations:
    def test_default_directory_ships_inside_the_package(self) -> None:
        """The migrations are package data, so an installed mailman finds them."""
        with as_file(DEFAULT_DIRECTORY) as directory:
            assert directory.is_dir()
            assert directory.parent.name == "mailman"

    def test_repository_migrations_are_the_shipped_ones(self) -> None:
        """The repository's migrations/ directory holds exactly the files the package ships."""
        in_repository = load_migrations(REPOSITORY / "migrations")
        shipped = load_migrations()

        assert [(m.version, m.checksum) for m in in_repository] == [(m.version, m.checksum) for m in shipped]

    def test_ignores_files_that_are_not_sql(self, tmp_path: Path) -> None:
        """Notes and editor files next to the migrations are not migrations."""
        write(tmp_path, "0001_create.sql", "SELECT 1;")
        write(tmp_path, "README.md", "notes")

        assert [m.name for m in load_migrations(tmp_path)] == ["create"]

    @pytest.mark.parametrize("name", ["1_create.sql", "0001-create.sql", "0001_Create.sql", "0001.sql"])
    def test_rejects_malformed_file_names(self, tmp_path: Path, name: str) -> None:
        """A .sql file not named NNNN_description.sql is an error, not silently skipped."""
        write(tmp_path, name, "SELECT 1;")

        with pytest.raises(MigrationError, match=r"0001_initial\.sql"):
            load_migrations(tmp_path)

    def test_rejects_two_files_with_one_version(self, tmp_path: Path) -> None:
        """Two files cannot share a version number."""
        write(tmp_path, "0001_create.sql", "SELECT 1;")
        write(tmp_path, "0001_other.sql", "SELECT 2;")

        with pytest.raises(MigrationError, match="two migrations with version 1"):
            load_migrations(tmp_path)

    def test_rejects_a_missing_directory(self, tmp_path: Path) -> None:
        """A directory that does not exist is reported as such."""
        with pytest.raises(MigrationError, match="expected a directory"):
            load_migrations(tmp_path / "nowhere")

"""The embedded Postgres: a real server started with pgserver in the test's directory.

Each start of a fresh directory costs most of a second (initdb), so there are few tests, each
checking one behaviour of a server it starts itself.

The data dirs live in a fresh ``tempfile.mkdtemp`` directory, not under ``tmp_path``: run as root,
pgserver runs Postgres as the user ``pgserver`` and opens up the directories above its data for it,
but every pytest session sets ``/tmp/pytest-of-<user>`` back to 0700, which would lock a running
server out of its own files whenever another pytest run starts meanwhile.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from mailman import supervisor as otp
from mailman.embedded import DATABASE, EmbeddedPostgres, EmbeddedPostgresError, EmbeddedPostgresServer


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """An empty data dir for this test, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="mailman-test-embedded-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def exited_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], check=True, capture_output=True
    )
    return int(process.stdout)


def is_running(postgres: EmbeddedPostgres) -> bool:
    """Whether a postmaster runs on the directory: pg_ctl stop removes postmaster.pid once it is down."""
    return (postgres.pgdata / "postmaster.pid").exists()


class TestStart:
    async def test_serves_the_mailman_database(self, data_dir: Path) -> None:
        """start() returns a URI asyncpg connects to, on the database ``mailman``, over a Unix socket."""
        async with EmbeddedPostgres(data_dir) as postgres:
            assert postgres.uri.startswith("postgresql://postgres:@/mailman?host=/")
            connection = await asyncpg.connect(postgres.uri)
            try:
                assert await connection.fetchval("SELECT 1") == 1
                assert await connection.fetchval("SELECT current_database()") == DATABASE
            finally:
                await connection.close()
        assert postgres.pgdata == data_dir / "postgres"

    async def test_a_restart_on_the_same_directory_keeps_the_data(self, data_dir: Path) -> None:
        """Stopping and starting again on one data dir reuses it: tables and rows are still there."""
        async with EmbeddedPostgres(data_dir) as first:
            connection = await asyncpg.connect(first.uri)
            await connection.execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (42)")
            await connection.close()
            uri = first.uri
        async with EmbeddedPostgres(data_dir) as second:
            assert second.uri == uri
            connection = await asyncpg.connect(second.uri)
            try:
                assert await connection.fetchval("SELECT n FROM kept") == 42
            finally:
                await connection.close()

    async def test_an_unusable_data_dir_is_a_clear_error(self, data_dir: Path) -> None:
        """A data dir that cannot hold Postgres (a file) makes start raise EmbeddedPostgresError with why."""
        not_a_dir = data_dir / "file"
        not_a_dir.write_text("")
        postgres = EmbeddedPostgres(not_a_dir)
        with pytest.raises(EmbeddedPostgresError, match=f"cannot create its directory {not_a_dir}: "):
            await postgres.start()
        assert not postgres.running
        with pytest.raises(EmbeddedPostgresError, match="is not running; start"):
            _ = postgres.uri


class TestStop:
    async def test_stop_shuts_the_server_down(self, data_dir: Path) -> None:
        """After stop the server process is gone and connecting fails."""
        postgres = EmbeddedPostgres(data_dir)
        uri = await postgres.start()
        await postgres.stop()
        assert not is_running(postgres)
        with pytest.raises(FileNotFoundError):  # the server's Unix socket is gone with it
            await asyncpg.connect(uri)

    async def test_a_killed_user_does_not_keep_the_server_running(self, data_dir: Path) -> None:
        """A killed process that used the server (never letting go) does not keep stop() from stopping it."""
        postgres = EmbeddedPostgres(data_dir)
        await postgres.start()
        handles = postgres.pgdata / ".handle_pids.json"
        handles.write_text(json.dumps([exited_pid(), *json.loads(handles.read_text())]))
        await postgres.stop()
        assert not is_running(postgres)


class TestEmbeddedPostgresServer:
    async def test_uri_answers_the_database_uri(self, data_dir: Path) -> None:
        """``await EmbeddedPostgresServer.uri(server)`` is the URI of the running ``mailman`` database."""
        server = await EmbeddedPostgresServer.start(data_dir)
        try:
            connection = await asyncpg.connect(await EmbeddedPostgresServer.uri(server))
            assert await connection.fetchval("SELECT current_database()") == DATABASE
            await connection.close()
        finally:
            await otp.GenServer.stop(server)

    async def test_supervisor_shutdown_stops_postgres(self, data_dir: Path) -> None:
        """Under a supervisor (``child_spec(data_dir)``), shutting the tree down stops the server."""
        supervisor = await otp.Supervisor.start_link(
            otp.SupervisorSpec(
                [EmbeddedPostgresServer.child_spec(data_dir, name="postgres")],
                strategy=otp.Strategy.ONE_FOR_ONE,
            )
        )
        assert (await EmbeddedPostgresServer.uri("postgres")).startswith("postgresql://")
        await otp.Supervisor.stop(supervisor)
        assert not (data_dir / "postgres" / "postmaster.pid").exists()

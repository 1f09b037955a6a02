"""The adapter's plumbing: asyncpg errors become MailmanErrors, transactions, the pool."""

from __future__ import annotations

import asyncio
from typing import TypeAlias

import asyncpg
import pytest

from mailman.services.errors import (
    ConflictError,
    DatabaseError,
    DatabaseUnavailableError,
    InvalidDataError,
    NotFoundError,
)
from mailman.services.store.database import Executor, create_pool, transaction, translate_errors
from mailman.services.store.queries.letters import get_letter

Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"


@translate_errors
async def run(executor: Executor, sql: str, *args: object) -> str:
    return await executor.execute(sql, *args)


async def insert_then_fail(executor: Executor, email: str) -> None:
    async with transaction(executor) as connection:
        await connection.execute("INSERT INTO users (email) VALUES ($1)", email)
        raise RuntimeError("boom")


class TestTranslateErrors:
    async def test_unique_violation_is_a_conflict(self, pool: Pool) -> None:
        """A duplicate key becomes ConflictError naming the constraint."""
        await run(pool, "INSERT INTO users (email) VALUES ('a@example.com')")

        with pytest.raises(ConflictError) as raised:
            await run(pool, "INSERT INTO users (email) VALUES ('a@example.com')")

        assert (raised.value.constraint, raised.value.sqlstate) == ("users_email_key", "23505")
        assert isinstance(raised.value.__cause__, asyncpg.UniqueViolationError)

    async def test_foreign_key_violation_names_the_missing_entity(self, pool: Pool) -> None:
        """A reference to a missing row becomes NotFoundError (a LookupError) for that entity."""
        with pytest.raises(NotFoundError) as raised:
            await run(
                pool,
                "INSERT INTO newsletters (user_id, name, from_address, unsubscribe_url_template) "
                "VALUES (1, 'n', 'f', '{token}')",
            )

        assert raised.value.entity == "user"
        assert isinstance(raised.value, LookupError)

    async def test_check_violation_is_invalid_data(self, pool: Pool) -> None:
        """A value refused by a CHECK constraint becomes InvalidDataError (a ValueError)."""
        await run(pool, "INSERT INTO users (email) VALUES ('a@example.com')")

        with pytest.raises(InvalidDataError) as raised:
            await run(
                pool,
                "INSERT INTO newsletters (user_id, name, from_address, unsubscribe_url_template) "
                "SELECT id, 'n', 'f', 'no token here' FROM users",
            )

        assert raised.value.constraint == "newsletters_unsubscribe_url_has_token"
        assert isinstance(raised.value, ValueError)

    async def test_argument_of_the_wrong_type_is_invalid_data(self, pool: Pool) -> None:
        """An argument the driver cannot encode becomes InvalidDataError."""
        with pytest.raises(InvalidDataError):
            await get_letter(pool, "one")  # type: ignore[arg-type]

    async def test_other_database_errors_keep_their_sqlstate(self, pool: Pool) -> None:
        """Any other server error becomes a DatabaseError carrying the SQLSTATE."""
        with pytest.raises(DatabaseError) as raised:
            await run(pool, "SELECT * FROM no_such_table")

        assert raised.value.sqlstate == "42P01"

    async def test_closed_pool_is_unavailable(self, pool: Pool) -> None:
        """Using a pool after it was closed raises DatabaseUnavailableError (a ConnectionError)."""
        await pool.close()

        with pytest.raises(DatabaseUnavailableError) as raised:
            await get_letter(pool, 1)

        assert isinstance(raised.value, ConnectionError)

    async def test_closed_connection_is_unavailable(self, database_url: str) -> None:
        """Using a closed connection raises DatabaseUnavailableError."""
        connection = await asyncpg.connect(database_url)
        await connection.close()

        with pytest.raises(DatabaseUnavailableError):
            await get_letter(connection, 1)

    async def test_terminated_session_is_unavailable(self, pool: Pool, database_url: str) -> None:
        """A connection whose server session was killed raises DatabaseUnavailableError on next use."""
        connection = await asyncpg.connect(database_url)
        try:
            await pool.execute("SELECT pg_terminate_backend($1)", connection.get_server_pid())

            with pytest.raises(DatabaseUnavailableError):
                await get_letter(connection, 1)
        finally:
            await connection.close()

    async def test_released_connection_is_a_misuse_not_an_outage(self, pool: Pool) -> None:
        """A pooled connection used after its release raises a plain DatabaseError."""
        async with pool.acquire() as connection:
            pass

        with pytest.raises(DatabaseError) as raised:
            await get_letter(connection, 1)

        assert not isinstance(raised.value, DatabaseUnavailableError)

    async def test_unreachable_server_is_unavailable(self, tmp_path: object) -> None:
        """A pool on a server that does not answer raises DatabaseUnavailableError."""
        with pytest.raises(DatabaseUnavailableError):
            await create_pool(f"postgresql://postgres@/postgres?host={tmp_path}", min_size=1, max_size=1)

    async def test_cancellation_passes_through(self, pool: Pool) -> None:
        """A cancelled query raises CancelledError, never a translated error."""
        task = asyncio.create_task(run(pool, "SELECT pg_sleep(30)"))
        while not await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'"
        ):
            pass

        task.cancel()

        with pytest.raises(asyncio.CancelledError):
            await task


class TestTransaction:
    async def test_pool_transaction_commits_on_success(self, pool: Pool) -> None:
        """On a pool, a connection is lent for the block and its work committed at the end."""
        async with transaction(pool) as connection:
            await connection.execute("INSERT INTO users (email) VALUES ('a@example.com')")

        assert await pool.fetchval("SELECT count(*) FROM users") == 1

    async def test_pool_transaction_rolls_back_on_error(self, pool: Pool) -> None:
        """An exception in the block rolls its work back."""
        with pytest.raises(RuntimeError):
            await insert_then_fail(pool, "a@example.com")

        assert await pool.fetchval("SELECT count(*) FROM users") == 0

    async def test_nests_as_a_savepoint_on_a_connection(self, pool: Pool) -> None:
        """Inside a caller's transaction, a failed inner block undoes only its own work."""
        async with pool.acquire() as connection, connection.transaction():
            await connection.execute("INSERT INTO users (email) VALUES ('outer@example.com')")
            with pytest.raises(RuntimeError):
                await insert_then_fail(connection, "inner@example.com")

        assert await pool.fetchval("SELECT array_agg(email) FROM users") == ["outer@example.com"]


class TestCreatePool:
    async def test_rejects_inconsistent_sizes(self, database_url: str) -> None:
        """min_size above max_size is a misuse, reported before connecting."""
        with pytest.raises(ValueError, match="min_size"):
            await create_pool(database_url, min_size=5, max_size=2)

    async def test_a_transaction_left_open_is_rolled_back_on_release(self, database_url: str) -> None:
        """Releasing skips asyncpg's reset query, yet an open transaction never reaches the next user."""
        pool = await create_pool(database_url, min_size=1, max_size=1)
        loop = asyncio.get_running_loop()
        handler = loop.get_exception_handler()
        complaints: list[str] = []
        loop.set_exception_handler(lambda _loop, context: complaints.append(context["message"]))
        try:
            async with pool.acquire() as connection:
                await connection.execute("BEGIN")
                await connection.execute("INSERT INTO users (email) VALUES ('left@example.com')")
            loop.set_exception_handler(handler)
            assert [c.split(" <")[0] for c in complaints] == [
                "Resetting connection with an active transaction"
            ]
            async with pool.acquire() as connection:
                assert not connection.is_in_transaction()
                assert await connection.fetchval("SELECT count(*) FROM users") == 0
        finally:
            loop.set_exception_handler(handler)
            await pool.close()

    async def test_release_sends_no_reset_query(self, database_url: str) -> None:
        """A released connection goes back to the pool without a round trip: its session's
        statement count (pg_stat_activity's query is the last one sent) is unchanged."""
        pool = await create_pool(database_url, min_size=1, max_size=1)
        try:
            async with pool.acquire() as connection:
                backend = await connection.fetchval("SELECT pg_backend_pid() /* marker */")
            async with pool.acquire() as connection:
                assert await connection.fetchval("SELECT pg_backend_pid()") == backend
            observer = await asyncpg.connect(database_url)
            try:
                last = await observer.fetchval("SELECT query FROM pg_stat_activity WHERE pid = $1", backend)
            finally:
                await observer.close()
            assert last == "SELECT pg_backend_pid()"
        finally:
            await pool.close()

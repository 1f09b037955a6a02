"""Schema migrations: numbered plain-SQL files, applied in order, each in its own transaction.

A migration is a file ``NNNN_description.sql`` (four digits, then lowercase words joined by ``_``).
:func:`migrate` applies those not yet recorded in the ``mailman_migrations`` table, in version order,
each in one transaction together with its record (version, name, sha256 checksum, time), so a file is
either applied and recorded or neither. Released files are never edited: when the checksum of an
applied file no longer matches its record, :func:`migrate` and :func:`pending_migrations` refuse with
:class:`~mailman.services.errors.MigrationChecksumError` naming the file, before touching anything.

Several migrators (for example two daemons starting together) are serialised by a transaction-level
advisory lock; each re-checks, under the lock, whether its next file was applied meanwhile.
Statements that cannot run inside a transaction (``CREATE INDEX CONCURRENTLY``) are not supported.

The files ship inside the package (``mailman/migrations/``, found with :mod:`importlib.resources`);
in a source checkout the repository's ``migrations/`` directory is a link to the same files.

>>> applied = await migrate(connection)  # doctest: +SKIP
>>> [m.version for m in applied]  # doctest: +SKIP
[1]
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

import asyncpg

from mailman.services.errors import (
    MigrationChecksumError,
    MigrationError,
    MigrationFailedError,
    UnknownMigrationError,
)
from mailman.services.store.database import Connection, translate_errors

__all__ = [
    "DEFAULT_DIRECTORY",
    "AppliedMigration",
    "Migration",
    "applied_migrations",
    "load_migrations",
    "migrate",
    "pending_migrations",
]

DEFAULT_DIRECTORY: Traversable = files("mailman") / "migrations"
"""The migrations shipped with this version of mailman."""

_FILE_NAME = re.compile(r"(?P<version>\d{4})_(?P<name>[a-z0-9]+(?:_[a-z0-9]+)*)\.sql")

# Key of the advisory lock that serialises migrators: "mailman" in ASCII, as a bigint.
_LOCK_KEY = int.from_bytes(b"mailman", "big")

LOCK = "SELECT pg_advisory_xact_lock($1)"

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS mailman_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""

TABLE_EXISTS = "SELECT to_regclass('mailman_migrations') IS NOT NULL"

SELECT_APPLIED = """
SELECT version, name, checksum, applied_at
FROM mailman_migrations
ORDER BY version
"""

IS_APPLIED = "SELECT EXISTS (SELECT FROM mailman_migrations WHERE version = $1)"

RECORD_APPLIED = """
INSERT INTO mailman_migrations (version, name, checksum)
VALUES ($1, $2, $3)
RETURNING version, name, checksum, applied_at
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Migration:
    """One migration file: its version, name, the sha256 of its bytes, and its SQL."""

    version: int
    name: str
    checksum: str
    path: str
    sql: str = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class AppliedMigration:
    """The record of a migration applied to a database."""

    version: int
    name: str
    checksum: str
    applied_at: datetime


def load_migrations(directory: Traversable | os.PathLike[str] | str | None = None) -> list[Migration]:
    """The migration files of ``directory`` (default: those shipped with mailman), by version.

    Files not ending in ``.sql`` are ignored; a ``.sql`` file with a malformed name, or two files with
    one version, raise :class:`MigrationError`.
    """
    root = _as_traversable(directory)
    if not root.is_dir():
        raise MigrationError(f"expected a directory of migration files, got {root}")
    by_version: dict[int, Migration] = {}
    for entry in root.iterdir():
        if not entry.name.endswith(".sql") or not entry.is_file():
            continue
        match = _FILE_NAME.fullmatch(entry.name)
        if match is None:
            raise MigrationError(
                f"expected migration file names like 0001_initial.sql, got {entry.name!r} in {root}"
            )
        content = entry.read_bytes()
        migration = Migration(
            version=int(match["version"]),
            name=match["name"],
            checksum=hashlib.sha256(content).hexdigest(),
            path=str(entry),
            sql=content.decode("utf-8"),
        )
        if (other := by_version.get(migration.version)) is not None:
            raise MigrationError(f"two migrations with version {migration.version}: {other.path}, {entry}")
        by_version[migration.version] = migration
    return [by_version[version] for version in sorted(by_version)]


@translate_errors
async def applied_migrations(connection: Connection) -> list[AppliedMigration]:
    """The migrations recorded in the database, by version (none if it was never migrated)."""
    if not await connection.fetchval(TABLE_EXISTS):
        return []
    return [_applied_from_row(row) for row in await connection.fetch(SELECT_APPLIED)]


@translate_errors
async def pending_migrations(
    connection: Connection, directory: Traversable | os.PathLike[str] | str | None = None
) -> list[Migration]:
    """The migrations of ``directory`` that :func:`migrate` would apply, after checking the applied ones."""
    migrations = load_migrations(directory)
    applied = await applied_migrations(connection)
    _verify(migrations, applied)
    done = {record.version for record in applied}
    return [migration for migration in migrations if migration.version not in done]


@translate_errors
async def migrate(
    connection: Connection, directory: Traversable | os.PathLike[str] | str | None = None
) -> list[AppliedMigration]:
    """Apply the pending migrations of ``directory`` in order; return the records of those applied now.

    Raises :class:`MigrationChecksumError` (nothing applied) if an applied file was edited,
    :class:`UnknownMigrationError` if the database has a migration this code lacks, and
    :class:`MigrationFailedError` if Postgres rejects a file (that file is rolled back; those before
    it stay applied).
    """
    migrations = load_migrations(directory)
    async with connection.transaction():
        await connection.execute(LOCK, _LOCK_KEY)
        await connection.execute(CREATE_TABLE)
        applied = [_applied_from_row(row) for row in await connection.fetch(SELECT_APPLIED)]
        _verify(migrations, applied)
    done = {record.version for record in applied}
    newly_applied: list[AppliedMigration] = []
    for migration in migrations:
        if migration.version in done:
            continue
        async with connection.transaction():
            await connection.execute(LOCK, _LOCK_KEY)
            if await connection.fetchval(IS_APPLIED, migration.version):
                continue  # another migrator applied it while we waited for the lock
            try:
                await connection.execute(migration.sql)
            except asyncpg.PostgresError as error:
                raise MigrationFailedError(
                    migration.path, version=migration.version, reason=f"{type(error).__name__}: {error}"
                ) from error
            row = await connection.fetchrow(
                RECORD_APPLIED, migration.version, migration.name, migration.checksum
            )
            assert row is not None
        newly_applied.append(_applied_from_row(row))
    return newly_applied


def _verify(migrations: list[Migration], applied: list[AppliedMigration]) -> None:
    by_version = {migration.version: migration for migration in migrations}
    for record in applied:
        migration = by_version.get(record.version)
        if migration is None:
            raise UnknownMigrationError(record.version, record.name)
        if migration.checksum != record.checksum:
            raise MigrationChecksumError(
                migration.path, version=record.version, recorded=record.checksum, actual=migration.checksum
            )


def _as_traversable(directory: Traversable | os.PathLike[str] | str | None) -> Traversable:
    if directory is None:
        return DEFAULT_DIRECTORY
    if isinstance(directory, str | os.PathLike):
        return Path(directory)
    return directory


def _applied_from_row(row: asyncpg.Record) -> AppliedMigration:
    return AppliedMigration(
        version=row["version"], name=row["name"], checksum=row["checksum"], applied_at=row["applied_at"]
    )

"""The delivery engine's exceptions: one root, :class:`MailmanError`, and a typed class per outcome.

Foreign errors are translated where they enter: the Postgres adapter turns ``asyncpg`` exceptions into
these (see :func:`mailman.services.store.database.translate_errors`), so that no caller ever needs to import
``asyncpg`` to handle a failure. Each class keeps its data in attributes; the message is for people.
Where the meaning matches a builtin, the class inherits it too (``NotFoundError`` is a ``LookupError``,
``DatabaseUnavailableError`` a ``ConnectionError``), so generic handlers keep working.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import PurePath

__all__ = [
    "ClaimRefusedError",
    "ConflictError",
    "DatabaseError",
    "DatabaseUnavailableError",
    "InvalidDataError",
    "LeaseLostError",
    "LetterLeasedError",
    "MailmanError",
    "MigrationChecksumError",
    "MigrationError",
    "MigrationFailedError",
    "NotFoundError",
    "UnknownMigrationError",
]


class MailmanError(Exception):
    """The root of every exception raised by the delivery engine."""


class DatabaseError(MailmanError):
    """Postgres refused or failed a statement; ``sqlstate`` is its SQLSTATE code when it sent one."""

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class DatabaseUnavailableError(DatabaseError, ConnectionError):
    """Postgres cannot be reached, is shutting down, or dropped the connection: try again later.

    The statement may or may not have been applied if the connection broke while it ran.
    """


class NotFoundError(DatabaseError, LookupError):
    """A row the operation needs does not exist: ``entity`` (``"letter"``...) with ``key`` (its id).

    ``key`` is ``None`` when Postgres reported the missing row through a foreign key, which names the
    table but not the value in a structured field.
    """

    def __init__(self, entity: str, key: object = None, *, sqlstate: str | None = None) -> None:
        where = "" if key is None else f" {key!r}"
        super().__init__(f"{entity}{where} does not exist", sqlstate=sqlstate)
        self.entity = entity
        self.key = key


class ConflictError(DatabaseError):
    """The row would duplicate one that exists: ``constraint`` names the unique constraint it broke."""

    def __init__(self, message: str, *, constraint: str | None, sqlstate: str | None = None) -> None:
        super().__init__(message, sqlstate=sqlstate)
        self.constraint = constraint


class InvalidDataError(DatabaseError, ValueError):
    """A value was rejected by a check, not-null constraint or type conversion: a bug in the caller."""

    def __init__(self, message: str, *, constraint: str | None = None, sqlstate: str | None = None) -> None:
        super().__init__(message, sqlstate=sqlstate)
        self.constraint = constraint


class LetterLeasedError(MailmanError):
    """Another node holds a live lease on the letter: ``node`` is sending it, until ``expires_at``
    at least (the database's clock), and no other node may until then."""

    def __init__(self, letter_id: int, *, node: str, expires_at: datetime) -> None:
        super().__init__(f"letter {letter_id} is being sent by node {node}")
        self.letter_id = letter_id
        self.node = node
        self.expires_at = expires_at


class LeaseLostError(MailmanError):
    """``node`` no longer holds the lease it held on the letter: it expired and another node took
    the letter over (``holder``, or None if that node has released it since)."""

    def __init__(self, letter_id: int, *, node: str, holder: str | None) -> None:
        now = "nobody holds it now" if holder is None else f"node {holder} holds it now"
        super().__init__(f"node {node} lost its lease on letter {letter_id}; {now}")
        self.letter_id = letter_id
        self.node = node
        self.holder = holder


class ClaimRefusedError(MailmanError):
    """A claim of recipients was refused: the lease presented is no longer the letter's live lease,
    or the letter is no longer sending (``reason`` says which). Nothing was claimed."""

    def __init__(self, letter_id: int, reason: str) -> None:
        super().__init__(f"claim on letter {letter_id} refused: {reason}")
        self.letter_id = letter_id
        self.reason = reason


class MigrationError(MailmanError):
    """The schema migrations cannot be applied as they are."""


class MigrationChecksumError(MigrationError):
    """An already-applied migration file was edited: its checksum no longer matches the recorded one.

    Released migrations are never edited; write a new numbered file instead.
    """

    def __init__(self, path: PurePath | str, *, version: int, recorded: str, actual: str) -> None:
        super().__init__(
            f"migration {path} (version {version}) was changed after it was applied: recorded sha256 "
            f"{recorded}, file now has {actual}; restore the file and put the change in a new migration"
        )
        self.path = str(path)
        self.version = version
        self.recorded = recorded
        self.actual = actual


class UnknownMigrationError(MigrationError):
    """The database records a migration that no file provides: this code is older than the schema."""

    def __init__(self, version: int, name: str) -> None:
        super().__init__(
            f"the database has migration {version:04d}_{name} applied, but no such file exists here; "
            "run a mailman version that ships it"
        )
        self.version = version
        self.name = name


class MigrationFailedError(MigrationError):
    """Postgres rejected a migration file; nothing of that file was applied (it ran in a transaction)."""

    def __init__(self, path: PurePath | str, *, version: int, reason: str) -> None:
        super().__init__(f"migration {path} (version {version}) failed: {reason}")
        self.path = str(path)
        self.version = version
        self.reason = reason

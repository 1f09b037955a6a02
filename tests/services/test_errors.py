"""The delivery engine's exceptions: one root, data in attributes, builtin bases where they fit."""

from __future__ import annotations

import pytest

from mailman.services.errors import (
    ConflictError,
    DatabaseError,
    DatabaseUnavailableError,
    InvalidDataError,
    MailmanError,
    MigrationChecksumError,
    MigrationError,
    MigrationFailedError,
    NotFoundError,
    UnknownMigrationError,
)


class TestHierarchy:
    @pytest.mark.parametrize(
        "error",
        [
            DatabaseUnavailableError("down"),
            NotFoundError("letter", 1),
            ConflictError("dup", constraint="users_email_key"),
            InvalidDataError("bad"),
            MigrationChecksumError("m/0001_a.sql", version=1, recorded="a", actual="b"),
            UnknownMigrationError(2, "b"),
            MigrationFailedError("m/0002_b.sql", version=2, reason="syntax"),
        ],
    )
    def test_every_error_is_a_mailman_error(self, error: MailmanError) -> None:
        """One `except MailmanError` catches whatever the engine raises."""
        assert isinstance(error, MailmanError)

    def test_builtin_bases_match_the_meaning(self) -> None:
        """Generic handlers keep working: not found is a LookupError, unavailable a ConnectionError."""
        assert isinstance(NotFoundError("letter", 1), LookupError)
        assert isinstance(DatabaseUnavailableError("down"), ConnectionError)
        assert isinstance(InvalidDataError("bad"), ValueError)
        assert issubclass(MigrationChecksumError, MigrationError)
        assert issubclass(ConflictError, DatabaseError)


class TestNotFoundError:
    def test_names_the_entity_and_key(self) -> None:
        """The message and the attributes say what was missing."""
        error = NotFoundError("letter", 42)

        assert (str(error), error.entity, error.key) == ("letter 42 does not exist", "letter", 42)


class TestMigrationChecksumError:
    def test_names_the_file_and_the_remedy(self) -> None:
        """The message names the edited file, both checksums, and what to do instead."""
        error = MigrationChecksumError("migrations/0001_initial.sql", version=1, recorded="abc", actual="def")

        assert "migrations/0001_initial.sql" in str(error)
        assert "abc" in str(error)
        assert "def" in str(error)
        assert "new migration" in str(error)

"""The errors of the embedded services."""

from __future__ import annotations

__all__ = ["EmbeddedPostgresError", "EmbeddedServiceError", "SmtpSinkError"]


class EmbeddedServiceError(RuntimeError):
    """An embedded service (Postgres, the SMTP sink) could not start or stop; the message says why."""


class EmbeddedPostgresError(EmbeddedServiceError):
    """The embedded Postgres could not start, create its database or stop."""


class SmtpSinkError(EmbeddedServiceError):
    """The Maildir SMTP sink could not start (its Maildir or its port)."""

"""Services mailman can run itself, so that it needs nothing installed to try out or to test.

- :class:`EmbeddedPostgres` / :class:`EmbeddedPostgresServer`: a private Postgres in
  ``<data_dir>/postgres``, used when no ``MAILMAN_DATABASE_URL`` is set.
- :class:`MaildirSink` / :class:`MaildirSinkServer`: an SMTP server on 127.0.0.1 that files every
  message into the Maildir ``<data_dir>/maildir``, used when no ``MAILMAN_SMTP_URL`` is set.

Each comes as a plain object with ``start`` / ``stop`` (and ``async with``), which the daemon uses
today (started before its tree, stopped after it), and as a GenServer with a ``child_spec(data_dir)``
meant for the tree (not yet used by the daemon: the Repo and Mailer need the URLs at their start).
"""

from mailman.embedded.errors import EmbeddedPostgresError, EmbeddedServiceError, SmtpSinkError
from mailman.embedded.postgres import DATABASE, EmbeddedPostgres, EmbeddedPostgresServer
from mailman.embedded.smtp_sink import MaildirSink, MaildirSinkOptions, MaildirSinkServer

__all__ = [
    "DATABASE",
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "EmbeddedPostgresServer",
    "EmbeddedServiceError",
    "MaildirSink",
    "MaildirSinkOptions",
    "MaildirSinkServer",
    "SmtpSinkError",
]

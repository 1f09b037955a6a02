"""Logging for the daemon: structlog, as readable console lines or as JSON lines.

Call :func:`configure_logging` once at start-up, before the first event is logged::

    configure_logging(LogFormat.JSON, LogLevel.INFO)

- ``console``: one readable line per event (time, level, event, key=value pairs), coloured when the
  stream is a terminal. For people.
- ``json``: one JSON object per line with ``timestamp`` (ISO 8601, UTC), ``level``, ``event`` and the
  event's key/values. For log shippers.

Records from libraries that log through the standard library (asyncpg, aiosmtpd, pgserver) are
rendered by the same renderer on the same stream, so a JSON log stays JSON throughout. The chattiest of
them (aiosmtpd logs every connection at INFO, pgserver every command it runs) are held at WARNING
unless the level is DEBUG.

The module is named ``log_setup`` rather than ``logging`` so that it never shadows the standard library.
"""

from __future__ import annotations

import enum
import importlib
import logging
import sys
from typing import TextIO, TypeVar

import structlog
from structlog.typing import Processor

__all__ = ["LogFormat", "LogLevel", "configure_logging"]


class LogFormat(enum.StrEnum):
    """How log lines look: ``console`` for people, ``json`` for machines."""

    CONSOLE = "console"
    JSON = "json"


class LogLevel(enum.StrEnum):
    """The least severe level that is written."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"

    @property
    def number(self) -> int:
        """The standard library's number for this level (``logging.INFO`` == 20)."""
        return logging.getLevelNamesMapping()[self.value.upper()]


_E = TypeVar("_E", bound=enum.StrEnum)

# Libraries that log routine work at INFO: held at WARNING unless the level is DEBUG.
_CHATTY_LOGGERS = ("mail.log", "pgserver")


class _StdlibHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler this module installs; its class marks it, so that a reconfiguration replaces it."""


def configure_logging(
    log_format: LogFormat | str = LogFormat.CONSOLE,
    level: LogLevel | str = LogLevel.INFO,
    *,
    stream: TextIO | None = None,
) -> None:
    """Configure structlog (and the standard library's root logger) to write to ``stream``.

    ``stream`` defaults to standard error. Calling it again replaces the previous configuration
    rather than adding to it. Raises ``ValueError`` for an unknown format or level.
    """
    parsed_format = _parse(LogFormat, log_format, "log format")
    parsed_level = _parse(LogLevel, level, "log level")
    out = sys.stderr if stream is None else stream

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
    ]
    renderer: Processor
    if parsed_format is LogFormat.JSON:
        shared += [
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
        ]
        renderer = structlog.processors.JSONRenderer()
    else:
        # No format_exc_info here: ConsoleRenderer lays out tracebacks itself (and warns if it is given
        # pre-formatted ones).
        shared += [
            structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False),
            structlog.processors.StackInfoRenderer(),
        ]
        renderer = structlog.dev.ConsoleRenderer(colors=_is_terminal(out))

    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(parsed_level.number),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        # Not cached: a module-level logger must follow a later reconfiguration (tests reconfigure; the
        # daemon configures once, before logging). The OTP library binds its own logger for speed.
        cache_logger_on_first_use=False,
    )
    _configure_stdlib(shared, renderer, parsed_level, out)
    _reset_library_logger()


def _parse(kind: type[_E], value: object, what: str) -> _E:
    if isinstance(value, kind):
        return value
    try:
        return kind(str(value).lower())
    except ValueError:
        *others, last = [repr(member.value) for member in kind]
        choices = f"{', '.join(others)} or {last}" if others else last
        raise ValueError(f"expected a {what} of {choices}, got {value!r}") from None


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


def _configure_stdlib(shared: list[Processor], renderer: Processor, level: LogLevel, out: TextIO) -> None:
    handler = _StdlibHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StdlibHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.number)
    chatty_level = level.number if level is LogLevel.DEBUG else max(level.number, logging.WARNING)
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(chatty_level)


def _reset_library_logger() -> None:
    # mailman.supervisor binds its structlog logger once, for speed; make it pick up this configuration.
    # Looked up by name and getattr: reset_logger is internal to the library and may move or go.
    events = importlib.import_module("mailman.supervisor._events")
    reset = getattr(events, "reset_logger", None)
    if reset is not None:
        reset()

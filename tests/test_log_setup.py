"""configure_logging: JSON lines for machines, readable lines for people, the same for stdlib loggers."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from mailman import supervisor as otp
from mailman.log_setup import LogFormat, LogLevel, configure_logging
from mailman.supervisor import _events


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Put back the suite's structlog configuration and the root logger after each test."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    chatty = {name: logging.getLogger(name).level for name in ("mail.log", "pgserver")}
    yield
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, chatty_level in chatty.items():
        logging.getLogger(name).setLevel(chatty_level)
    _events.reset_logger()


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


class TestJsonFormat:
    def test_each_event_is_one_json_object_per_line(self) -> None:
        """With format json, an event is a line holding event, level, ISO timestamp and its key/values."""
        stream = io.StringIO()
        configure_logging(LogFormat.JSON, LogLevel.INFO, stream=stream)
        structlog.get_logger().info("letter.sent", letter_id=7, recipients=3)
        (line,) = json_lines(stream)
        assert line["event"] == "letter.sent"
        assert line["level"] == "info"
        assert (line["letter_id"], line["recipients"]) == (7, 3)
        assert line["timestamp"].endswith("Z")
        assert "T" in line["timestamp"]

    def test_events_below_the_level_are_dropped(self) -> None:
        """At level warning, info events are not written."""
        stream = io.StringIO()
        configure_logging("json", "warning", stream=stream)
        structlog.get_logger().info("quiet")
        structlog.get_logger().warning("loud")
        assert [line["event"] for line in json_lines(stream)] == ["loud"]

    def test_exceptions_are_rendered_into_the_line(self) -> None:
        """An event logged with exc_info carries the traceback as text in ``exception``."""
        stream = io.StringIO()
        configure_logging("json", "info", stream=stream)
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            structlog.get_logger().exception("failed")
        (line,) = json_lines(stream)
        assert "RuntimeError: boom" in line["exception"]

    def test_stdlib_records_are_json_too(self) -> None:
        """Records logged through the standard library come out as JSON lines with the logger's name."""
        stream = io.StringIO()
        configure_logging("json", "info", stream=stream)
        logging.getLogger("asyncpg.pool").warning("pool %s closed", "main")
        (line,) = json_lines(stream)
        assert (line["event"], line["level"], line["logger"]) == (
            "pool main closed",
            "warning",
            "asyncpg.pool",
        )


class TestConsoleFormat:
    def test_lines_are_readable_with_level_event_and_values(self) -> None:
        """The console format writes one line with the level, the event and key=value pairs."""
        stream = io.StringIO()
        configure_logging(LogFormat.CONSOLE, LogLevel.INFO, stream=stream)
        structlog.get_logger().info("letter.sent", letter_id=7)
        (line,) = stream.getvalue().splitlines()
        assert "info" in line
        assert "letter.sent" in line
        assert "letter_id=7" in line

    def test_no_colour_codes_when_not_a_terminal(self) -> None:
        """A stream that is not a terminal gets no ANSI escape codes."""
        stream = io.StringIO()
        configure_logging("console", "info", stream=stream)
        structlog.get_logger().info("plain")
        assert "\x1b[" not in stream.getvalue()


class TestConfigureLogging:
    def test_reconfiguring_replaces_instead_of_adding(self) -> None:
        """Calling it twice leaves one configuration: each line is written once, in the last format."""
        first, second = io.StringIO(), io.StringIO()
        configure_logging("console", "info", stream=first)
        configure_logging("json", "info", stream=second)
        structlog.get_logger().info("once")
        logging.getLogger("lib").warning("stdlib once")
        assert first.getvalue() == ""
        assert [line["event"] for line in json_lines(second)] == ["once", "stdlib once"]

    def test_the_otp_library_logs_with_the_new_configuration(self) -> None:
        """Library events (whose logger is bound once) follow a reconfiguration."""
        stream = io.StringIO()
        configure_logging("json", "info", stream=stream)
        otp.execute(("gen_server", "terminated"), {"server": "Example", "pid": None, "reason": "boom"})
        (line,) = json_lines(stream)
        assert (line["event"], line["level"], line["server"]) == ("gen_server.terminated", "error", "Example")

    def test_chatty_libraries_are_held_at_warning(self) -> None:
        """aiosmtpd's per-connection INFO lines are dropped unless the level is debug."""
        stream = io.StringIO()
        configure_logging("json", "info", stream=stream)
        logging.getLogger("mail.log").info("Peer: ('127.0.0.1', 5000)")
        assert stream.getvalue() == ""
        configure_logging("json", "debug", stream=stream)
        logging.getLogger("mail.log").info("Peer: ('127.0.0.1', 5000)")
        assert [line["logger"] for line in json_lines(stream)] == ["mail.log"]

    @pytest.mark.parametrize(
        ("log_format", "level", "message"),
        [
            ("xml", "info", "expected a log format of 'console' or 'json', got 'xml'"),
            (
                "json",
                "loud",
                "expected a log level of 'debug', 'info', 'warning', 'error' or 'critical', got 'loud'",
            ),
        ],
    )
    def test_unknown_format_or_level_is_a_value_error(
        self, log_format: str, level: str, message: str
    ) -> None:
        """A format or level that does not exist raises ValueError saying which ones do."""
        with pytest.raises(ValueError, match=message):
            configure_logging(log_format, level, stream=io.StringIO())

    def test_defaults_to_standard_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Without a stream, lines go to standard error."""
        configure_logging("json", "info")
        structlog.get_logger().info("to.stderr")
        captured = capsys.readouterr()
        assert captured.out == ""
        assert json.loads(captured.err)["event"] == "to.stderr"

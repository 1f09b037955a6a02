"""The command line's contract: exit codes, --json anywhere, errors on stderr, the daemon not running."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from mailman.cli.main import build_parser, translate_error
from mailman.cli.output import CliError, ExitCode, Output
from mailman.client import DaemonNotRunningError, RpcRemoteError
from mailman.config import ConfigError
from tests.cli.conftest import RunCli

COMMANDS_NEEDING_THE_DAEMON = [
    ["status", "7"],
    ["send", "7"],
    ["pause", "7"],
    ["resume", "7"],
    ["cancel", "7"],
    ["retry", "7"],
    ["tree"],
    ["newsletter", "create", "--owner", "o@example.com", "--name", "N"],
    ["subscribers", "add", "1", "a@example.com"],
]


class TestDaemonNotRunning:
    @pytest.mark.parametrize("argv", COMMANDS_NEEDING_THE_DAEMON, ids=lambda argv: " ".join(argv[:2]))
    async def test_exit_code_3_and_how_to_start_it(
        self, cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str]
    ) -> None:
        """Every command that needs the daemon says it is not running, where, and how to start it."""
        monkeypatch.setenv("MAILMAN_DATA_DIR", str(tmp_path))
        result = await cli(*argv)
        assert result.code == ExitCode.DAEMON_NOT_RUNNING == 3
        assert result.stdout == ""
        assert f"mailman is not running on {tmp_path / 'mailman.sock'}" in result.stderr
        assert "start it with `mailman serve`" in result.stderr

    async def test_with_json_the_error_is_the_one_document(
        self, cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With --json, stdout holds exactly one JSON document: the error, with its exit code."""
        monkeypatch.setenv("MAILMAN_SOCKET", str(tmp_path / "x.sock"))
        result = await cli("status", "7", "--json")
        assert result.code == 3
        error = result.json()["error"]
        assert error["exit_code"] == 3
        assert error["socket"] == str(tmp_path / "x.sock")
        assert "not running" in error["message"]


class TestCommonOptions:
    @pytest.mark.parametrize("argv", [["--json", "version"], ["version", "--json"]])
    async def test_json_before_or_after_the_command(self, cli: RunCli, argv: list[str]) -> None:
        """--json works on either side of the command name."""
        result = await cli(*argv)
        assert result.code == 0
        assert set(result.json()) == {"version"}

    async def test_config_file_is_read(self, cli: RunCli, tmp_path: Path) -> None:
        """--config FILE gives the settings (here the socket the command looks for)."""
        config = tmp_path / "mailman.toml"
        config.write_text(f'socket = "{tmp_path / "from-config.sock"}"\n')
        result = await cli("--config", str(config), "tree")
        assert result.code == 3
        assert "from-config.sock" in result.stderr

    async def test_a_bad_configuration_prints_every_problem(
        self, cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """ConfigError: exit 1 and each problem on its own line (and in the JSON document)."""
        monkeypatch.setenv("MAILMAN_CONCURRENCY", "0")
        config = tmp_path / "mailman.toml"
        config.write_text("rate_limt = 5\n")
        result = await cli("status", "1", "--config", str(config), "--json")
        assert result.code == 1
        assert "mailman: error: invalid configuration" in result.stderr
        assert "  MAILMAN_CONCURRENCY: expected an integer from 1 to 1000, got '0'" in result.stderr
        assert f"  rate_limt in {config}: unknown setting" in result.stderr
        assert len(result.json()["error"]["problems"]) == 2

    async def test_a_missing_config_file(self, cli: RunCli, tmp_path: Path) -> None:
        """--config naming no file is a configuration error, not a traceback."""
        result = await cli("tree", "--config", str(tmp_path / "nope.toml"))
        assert result.code == 1
        assert "which does not exist" in result.stderr


class TestUsage:
    @pytest.mark.parametrize(
        "argv",
        [
            [],
            ["status"],
            ["status", "seven"],
            ["status", "0"],
            ["frobnicate"],
            ["demo", "--subscribers", "-1"],
        ],
    )
    async def test_a_wrong_command_line_exits_2(self, cli: RunCli, argv: list[str]) -> None:
        """argparse's usage errors exit 2, with the usage on stderr."""
        result = await cli(*argv)
        assert result.code == ExitCode.USAGE == 2
        assert "usage: mailman" in result.stderr

    async def test_send_at_needs_a_timezone(self, cli: RunCli, tmp_path: Path) -> None:
        """A naive --send-at is a usage error saying how to add a timezone."""
        body = tmp_path / "body.txt"
        body.write_text("Hello")
        result = await cli(
            "letter",
            "create",
            "1",
            "--subject",
            "S",
            "--text-file",
            str(body),
            "--send-at",
            "2030-01-01T09:00",
        )
        assert result.code == 2
        assert "expected a timezone" in result.stderr

    def test_help_documents_the_exit_codes(self) -> None:
        """mailman --help ends with the exit codes."""
        text = build_parser().format_help()
        for line in ("0  ok", "1  error", "2  usage", "3  the daemon is not running"):
            assert line in text


class TestOutput:
    def test_human_result_goes_to_stdout(self) -> None:
        """Without --json the text is printed, with a newline."""
        stdout, stderr = io.StringIO(), io.StringIO()
        Output(json_mode=False, stdout=stdout, stderr=stderr).result({"a": 1}, "hello")
        assert (stdout.getvalue(), stderr.getvalue()) == ("hello\n", "")

    def test_json_result_is_one_line_of_json(self) -> None:
        """With --json the document is printed as one JSON line, paths as strings."""
        stdout = io.StringIO()
        Output(json_mode=True, stdout=stdout, stderr=io.StringIO()).result(
            {"path": Path("/x"), "n": 1}, "ignored"
        )
        assert stdout.getvalue().count("\n") == 1
        assert json.loads(stdout.getvalue()) == {"path": "/x", "n": 1}

    def test_notes_go_to_stderr_in_both_modes(self) -> None:
        """Notes never mix with the result on stdout."""
        stdout, stderr = io.StringIO(), io.StringIO()
        Output(json_mode=True, stdout=stdout, stderr=stderr).note("careful")
        assert (stdout.getvalue(), stderr.getvalue()) == ("", "careful\n")

    def test_an_error_is_a_message_on_stderr_and_a_document_on_stdout(self) -> None:
        """An error: 'mailman: error: ...' and its lines on stderr; {"error": {...}} on stdout with --json."""
        stdout, stderr = io.StringIO(), io.StringIO()
        error = CliError("it broke", details={"code": 7}, lines=("first", "second"))
        Output(json_mode=True, stdout=stdout, stderr=stderr).error(error)
        assert stderr.getvalue() == "mailman: error: it broke\n  first\n  second\n"
        assert json.loads(stdout.getvalue()) == {"error": {"message": "it broke", "exit_code": 1, "code": 7}}


class TestTranslateError:
    def test_daemon_not_running_is_exit_code_3(self) -> None:
        """DaemonNotRunningError becomes exit code 3 with the client's message."""
        error = translate_error(DaemonNotRunningError(Path("/run/m.sock")))
        assert error is not None
        assert error.exit_code == ExitCode.DAEMON_NOT_RUNNING
        assert error.message == "mailman is not running on /run/m.sock; start it with `mailman serve`"

    def test_a_remote_error_keeps_its_code_and_data(self) -> None:
        """The daemon's JSON-RPC error: its message, with code and data in the JSON document."""
        error = translate_error(RpcRemoteError(-32001, "letter 9 does not exist", {"letter_id": 9}))
        assert error is not None
        assert (error.message, error.exit_code) == ("letter 9 does not exist", ExitCode.ERROR)
        assert error.details == {"code": -32001, "data": {"letter_id": 9}}

    def test_config_error_lists_its_problems(self) -> None:
        """ConfigError's problems become the error's lines."""
        error = translate_error(ConfigError(["a: bad", "b: worse"]))
        assert error is not None
        assert error.lines == ("a: bad", "b: worse")

    def test_a_bug_is_not_translated(self) -> None:
        """Anything unexpected keeps its traceback (None: not translated)."""
        assert translate_error(KeyError("x")) is None

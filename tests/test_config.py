"""Settings: defaults, the environment over the TOML file, and errors that say what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailman.config import ConfigError, Settings, load_settings
from mailman.log_setup import LogFormat, LogLevel
from mailman.services.smtp.url import Security, SmtpUrl
from mailman.services.store.models import UncertainPolicy


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mailman.toml"
    path.write_text(text)
    return path


def problems_of(env: dict[str, str], config_file: Path | None = None) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as caught:
        load_settings(config_file, env=env)
    return caught.value.problems


class TestDefaults:
    def test_an_empty_environment_gives_the_documented_defaults(self) -> None:
        """With no variables and no file, every setting has its documented default."""
        settings = load_settings(env={})
        assert settings.data_dir == Path(".mailman")
        assert settings.database_url is None
        assert settings.smtp_url is None
        assert settings.socket == Path(".mailman/mailman.sock")
        assert settings.concurrency == 50
        assert settings.rate_limit == 100.0
        assert settings.max_attempts == 5
        assert settings.message_domain == "mailman.localhost"
        assert settings.uncertain_policy is None  # each letter's own policy is in force
        assert settings.max_letter_restarts == 5
        assert settings.node_name is None  # the daemon makes a unique one up at start
        assert settings.lease_ttl == 15.0
        assert settings.allowed_uids == ()
        assert settings.log_format is LogFormat.CONSOLE
        assert settings.log_level is LogLevel.INFO

    def test_settings_are_frozen(self) -> None:
        """Settings cannot be changed once built."""
        settings = Settings()
        with pytest.raises(ValueError, match="frozen"):
            settings.concurrency = 3  # type: ignore[misc]

    def test_settings_ignore_the_process_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """``Settings()`` takes values only from its arguments; only load_settings reads the environment."""
        monkeypatch.setenv("MAILMAN_CONCURRENCY", "7")
        assert Settings().concurrency == 50


class TestSocket:
    def test_socket_defaults_under_the_data_dir(self) -> None:
        """Without MAILMAN_SOCKET the socket is ``<data_dir>/mailman.sock``."""
        settings = load_settings(env={"MAILMAN_DATA_DIR": "/var/lib/mailman"})
        assert settings.socket == Path("/var/lib/mailman/mailman.sock")

    def test_socket_can_be_set_elsewhere(self) -> None:
        """MAILMAN_SOCKET overrides the default location."""
        settings = load_settings(env={"MAILMAN_DATA_DIR": "/data", "MAILMAN_SOCKET": "/run/mailman.sock"})
        assert settings.socket == Path("/run/mailman.sock")

    def test_a_home_relative_data_dir_is_expanded(self) -> None:
        """``~`` in the data dir (and so in the default socket) is the user's home."""
        settings = load_settings(env={"MAILMAN_DATA_DIR": "~/mailman"})
        assert settings.data_dir == Path.home() / "mailman"
        assert settings.socket == Path.home() / "mailman" / "mailman.sock"


class TestEnvironment:
    def test_variables_override_defaults(self) -> None:
        """Each ``MAILMAN_<FIELD>`` variable sets its field, parsed to the field's type."""
        settings = load_settings(
            env={
                "MAILMAN_DATA_DIR": "/srv/mailman",
                "MAILMAN_CONCURRENCY": "10",
                "MAILMAN_RATE_LIMIT": "12.5",
                "MAILMAN_MAX_ATTEMPTS": "3",
                "MAILMAN_MESSAGE_DOMAIN": "News.Example.COM",
                "MAILMAN_UNCERTAIN_POLICY": "hold",
                "MAILMAN_MAX_LETTER_RESTARTS": "0",
                "MAILMAN_NODE_NAME": " mail-1.example.com ",
                "MAILMAN_LEASE_TTL": "30",
                "MAILMAN_LOG_FORMAT": "json",
                "MAILMAN_LOG_LEVEL": "DEBUG",
            }
        )
        assert settings.data_dir == Path("/srv/mailman")
        assert settings.concurrency == 10
        assert settings.rate_limit == 12.5
        assert settings.max_attempts == 3
        assert settings.message_domain == "news.example.com"
        assert settings.uncertain_policy is UncertainPolicy.HOLD
        assert settings.max_letter_restarts == 0
        assert settings.node_name == "mail-1.example.com"
        assert settings.lease_ttl == 30.0
        assert settings.log_format is LogFormat.JSON
        assert settings.log_level is LogLevel.DEBUG

    def test_allowed_uids_is_a_comma_separated_list(self) -> None:
        """MAILMAN_ALLOWED_UIDS takes ``1000,1001`` (or ``[1000, 1001]``)."""
        assert load_settings(env={"MAILMAN_ALLOWED_UIDS": "1000, 1001"}).allowed_uids == (1000, 1001)
        assert load_settings(env={"MAILMAN_ALLOWED_UIDS": "[0,1]"}).allowed_uids == (0, 1)

    def test_empty_variables_count_as_unset(self) -> None:
        """An empty variable leaves the setting at its default instead of failing."""
        assert load_settings(env={"MAILMAN_CONCURRENCY": ""}).concurrency == 50

    def test_unknown_mailman_variables_are_ignored(self) -> None:
        """Variables with the prefix that name no setting are not errors: other tools share the prefix."""
        assert load_settings(env={"MAILMAN_TEST_DATABASE_URL": "x"}).database_url is None

    def test_os_environ_is_read_when_no_mapping_is_given(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """``load_settings()`` without ``env`` reads the process environment."""
        monkeypatch.setenv("MAILMAN_MAX_ATTEMPTS", "9")
        assert load_settings().max_attempts == 9


class TestConfigFile:
    def test_values_come_from_the_file(self, tmp_path: Path) -> None:
        """Top-level keys of the TOML file set the fields of the same name."""
        path = write_config(
            tmp_path,
            'data_dir = "/data"\nconcurrency = 7\nallowed_uids = [1000]\nsmtp_url = "smtps://mail.example.com"\n',
        )
        settings = load_settings(path, env={})
        assert settings.data_dir == Path("/data")
        assert settings.concurrency == 7
        assert settings.allowed_uids == (1000,)
        assert settings.smtp_url == SmtpUrl(host="mail.example.com", port=465, security=Security.TLS)

    def test_environment_beats_the_file(self, tmp_path: Path) -> None:
        """A variable overrides the file's value for that field, and only that field."""
        path = write_config(tmp_path, "concurrency = 7\nmax_attempts = 2\n")
        settings = load_settings(path, env={"MAILMAN_CONCURRENCY": "9"})
        assert settings.concurrency == 9
        assert settings.max_attempts == 2

    def test_mailman_config_names_the_file(self, tmp_path: Path) -> None:
        """Without an explicit file, the one named by MAILMAN_CONFIG is read."""
        path = write_config(tmp_path, "max_attempts = 4\n")
        assert load_settings(env={"MAILMAN_CONFIG": str(path)}).max_attempts == 4

    def test_an_explicit_file_wins_over_mailman_config(self, tmp_path: Path) -> None:
        """A file passed to load_settings is used even if MAILMAN_CONFIG names another."""
        explicit = write_config(tmp_path, "max_attempts = 4\n")
        settings = load_settings(explicit, env={"MAILMAN_CONFIG": str(tmp_path / "missing.toml")})
        assert settings.max_attempts == 4

    def test_a_missing_file_is_an_error(self, tmp_path: Path) -> None:
        """A named file that does not exist is reported, with the variable that named it."""
        missing = tmp_path / "nope.toml"
        assert problems_of({"MAILMAN_CONFIG": str(missing)}) == (
            f"MAILMAN_CONFIG: expected a TOML file, got {str(missing)!r}, which does not exist",
        )

    def test_invalid_toml_is_an_error(self, tmp_path: Path) -> None:
        """A file that is not TOML is reported with the parser's reason and the file's path."""
        path = write_config(tmp_path, "concurrency = = 3\n")
        (problem,) = problems_of({}, path)
        assert problem.startswith(f"{path}: not valid TOML: ")

    def test_unknown_keys_in_the_file_are_errors(self, tmp_path: Path) -> None:
        """A misspelt key is reported rather than silently ignored."""
        path = write_config(tmp_path, "concurency = 3\n")
        (problem,) = problems_of({}, path)
        assert problem.startswith(f"concurency in {path}: unknown setting; expected one of data_dir, ")

    def test_errors_from_the_file_name_the_key_and_file(self, tmp_path: Path) -> None:
        """A bad value in the file is reported as ``<key> in <file>``."""
        path = write_config(tmp_path, "concurrency = 0\n")
        assert problems_of({}, path) == (f"concurrency in {path}: expected an integer from 1 to 1000, got 0",)


class TestValidation:
    @pytest.mark.parametrize(
        ("variable", "value", "expected"),
        [
            ("MAILMAN_CONCURRENCY", "0", "expected an integer from 1 to 1000, got '0'"),
            ("MAILMAN_CONCURRENCY", "1001", "expected an integer from 1 to 1000, got '1001'"),
            ("MAILMAN_CONCURRENCY", "many", "expected an integer from 1 to 1000, got 'many'"),
            (
                "MAILMAN_RATE_LIMIT",
                "0",
                "expected a number of messages per second greater than 0, such as 100 or 12.5, got '0'",
            ),
            (
                "MAILMAN_RATE_LIMIT",
                "inf",
                "expected a number of messages per second greater than 0, such as 100 or 12.5, got 'inf'",
            ),
            ("MAILMAN_MAX_ATTEMPTS", "101", "expected an integer from 1 to 100, got '101'"),
            ("MAILMAN_MAX_LETTER_RESTARTS", "-1", "expected an integer from 0 to 1000, got '-1'"),
            ("MAILMAN_UNCERTAIN_POLICY", "maybe", "expected 'resend' or 'hold', got 'maybe'"),
            (
                "MAILMAN_NODE_NAME",
                "two words",
                "expected a node name of 1 to 100 letters, digits, '.', '_', ':', '@' or '-' (starting "
                "with a letter or digit), such as mail-1.example.com, got 'two words'",
            ),
            (
                "MAILMAN_LEASE_TTL",
                "0.5",
                "expected a number of seconds from 1 to 3600, such as 15, got '0.5'",
            ),
            (
                "MAILMAN_LEASE_TTL",
                "nan",
                "expected a number of seconds from 1 to 3600, such as 15, got 'nan'",
            ),
            ("MAILMAN_LOG_FORMAT", "xml", "expected 'console' or 'json', got 'xml'"),
            (
                "MAILMAN_LOG_LEVEL",
                "loud",
                "expected 'debug', 'info', 'warning', 'error' or 'critical', got 'loud'",
            ),
            (
                "MAILMAN_ALLOWED_UIDS",
                "1000,bob",
                "expected a list of user ids, such as 1000,1001, got '1000,bob'",
            ),
            ("MAILMAN_ALLOWED_UIDS", "-5", "expected a list of user ids, such as 1000,1001, got '-5'"),
            (
                "MAILMAN_MESSAGE_DOMAIN",
                "not a host",
                "expected a hostname such as mail.example.com, got 'not a host'",
            ),
            (
                "MAILMAN_MESSAGE_DOMAIN",
                "-bad.example.com",
                "expected a hostname such as mail.example.com, got '-bad.example.com'",
            ),
            (
                "MAILMAN_DATABASE_URL",
                "mysql://db/mailman",
                "expected a postgresql:// or postgres:// URL (for a Unix socket: "
                "postgresql://user@/dbname?host=/run/postgresql), got 'mysql://db/mailman'",
            ),
            (
                "MAILMAN_SMTP_URL",
                "http://x",
                "expected smtp://, smtp+starttls:// or smtps://, got 'http://x'",
            ),
        ],
    )
    def test_a_bad_value_names_the_variable_and_what_was_expected(
        self, variable: str, value: str, expected: str
    ) -> None:
        """Each invalid value is reported as ``VARIABLE: expected X, got 'Y'``."""
        assert problems_of({variable: value}) == (f"{variable}: {expected}",)

    def test_every_problem_is_reported_at_once(self) -> None:
        """Several bad values give one ConfigError listing all of them, one per line."""
        with pytest.raises(ConfigError) as caught:
            load_settings(env={"MAILMAN_SMTP_URL": "http://x", "MAILMAN_CONCURRENCY": "0"})
        assert str(caught.value) == (
            "invalid configuration:\n"
            "  MAILMAN_SMTP_URL: expected smtp://, smtp+starttls:// or smtps://, got 'http://x'\n"
            "  MAILMAN_CONCURRENCY: expected an integer from 1 to 1000, got '0'"
        )

    def test_config_error_is_a_value_error(self) -> None:
        """ConfigError can be caught as the ValueError it is."""
        assert issubclass(ConfigError, ValueError)


class TestDatabaseUrl:
    @pytest.mark.parametrize(
        "url",
        [
            "postgresql://mailman:secret@db.example.com:5432/mailman",
            "postgres://db/mailman",
            "postgresql://mailman@/mailman?host=/run/postgresql",
            "postgresql://postgres:@/postgres?host=/tmp/data/postgres",
        ],
    )
    def test_postgres_urls_are_accepted_as_given(self, url: str) -> None:
        """TCP and Unix-socket DSNs in both schemes are accepted and kept unchanged for asyncpg."""
        assert load_settings(env={"MAILMAN_DATABASE_URL": url}).database_url == url


class TestSmtpUrl:
    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("smtp://mail.example.com", SmtpUrl(host="mail.example.com", port=25, security=Security.NONE)),
            (
                "smtp+starttls://mail.example.com",
                SmtpUrl(host="mail.example.com", port=587, security=Security.STARTTLS),
            ),
            ("smtps://mail.example.com", SmtpUrl(host="mail.example.com", port=465, security=Security.TLS)),
            ("smtp://127.0.0.1:2525", SmtpUrl(host="127.0.0.1", port=2525, security=Security.NONE)),
        ],
    )
    def test_scheme_sets_security_and_default_port(self, url: str, expected: SmtpUrl) -> None:
        """smtp:// is plain on 25, smtp+starttls:// upgrades on 587, smtps:// is TLS on 465."""
        assert load_settings(env={"MAILMAN_SMTP_URL": url}).smtp_url == expected

    def test_credentials_are_parsed_and_percent_decoded(self) -> None:
        """``user:password@`` become username and password, with %-escapes decoded."""
        settings = load_settings(
            env={"MAILMAN_SMTP_URL": "smtp+starttls://news%40example.com:p%3Ass@mail:2587"}
        )
        assert settings.smtp_url is not None
        assert (settings.smtp_url.username, settings.smtp_url.password) == ("news@example.com", "p:ss")

    def test_the_password_is_not_in_the_repr(self) -> None:
        """Logging the settings does not print the SMTP password."""
        settings = load_settings(env={"MAILMAN_SMTP_URL": "smtps://u:hunter2@mail.example.com"})
        assert "hunter2" not in repr(settings)

    @pytest.mark.parametrize("url", ["smtp://", "smtp://mail:99999", "smtp://mail/inbox"])
    def test_other_malformed_urls_are_reported_with_the_reason(self, url: str) -> None:
        """A URL with the right scheme but no host, a bad port or a path is reported under its variable."""
        (problem,) = problems_of({"MAILMAN_SMTP_URL": url})
        assert problem.startswith(f"MAILMAN_SMTP_URL: invalid SMTP URL {url!r}: ")

    @pytest.mark.parametrize(
        ("variable", "url"),
        [
            ("MAILMAN_SMTP_URL", "http://user:hunter2@mail.example.com"),
            ("MAILMAN_SMTP_URL", "smtp://user:hunter2@mail.example.com:99999"),
            ("MAILMAN_DATABASE_URL", "mysql://user:hunter2@db/mailman"),
        ],
    )
    def test_errors_never_show_a_password(self, variable: str, url: str) -> None:
        """A rejected URL is echoed with its password replaced by ``***``."""
        (problem,) = problems_of({variable: url})
        assert "hunter2" not in problem
        assert "user:***@" in problem

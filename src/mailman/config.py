"""The daemon's settings: environment variables ``MAILMAN_*`` over an optional TOML file over defaults.

Example::

    settings = load_settings()                       # MAILMAN_* from os.environ, MAILMAN_CONFIG if set
    settings = load_settings(Path("mailman.toml"), env={"MAILMAN_CONCURRENCY": "10"})

A setting ``x`` is read from the environment variable ``MAILMAN_X`` (``MAILMAN_SMTP_URL``) and from the
key ``x`` at the top level of the TOML file (``smtp_url = "smtp://mail.example.com"``); the environment
wins. The file is ``config_file`` if given, else the file ``MAILMAN_CONFIG`` names, else none. Empty
environment variables count as unset. Unknown keys in the file are errors (they are usually typos);
unknown ``MAILMAN_*`` variables are ignored, since other tools share the prefix.

Every problem is reported at once, as a :class:`ConfigError` naming where each bad value came from::

    MAILMAN_SMTP_URL: expected smtp://, smtp+starttls:// or smtps://, got 'http://x'
    concurrency in /etc/mailman.toml: expected an integer from 1 to 1000, got 0

:class:`Settings` itself takes values only from its arguments (``Settings(concurrency=5)``), never from
the process environment: :func:`load_settings` is the one place that reads the environment and the file.

Field types are the ones their users take: ``smtp_url`` is parsed into the Mailer's
:class:`~mailman.services.smtp.url.SmtpUrl` (host, port, security, credentials; default ports 25, 587
and 465), ``uncertain_policy`` is :class:`~mailman.services.store.models.UncertainPolicy`, ``log_format`` and
``log_level`` are :class:`~mailman.log_setup.LogFormat` and :class:`~mailman.log_setup.LogLevel`.
No error message shows a password.

When ``database_url`` is unset the daemon runs an embedded Postgres in ``<data_dir>/postgres``; when
``smtp_url`` is unset it delivers into the built-in Maildir sink in ``<data_dir>/maildir``
(:mod:`mailman.embedded`).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)
from pydantic_settings.sources.utils import parse_env_vars

from mailman.log_setup import LogFormat, LogLevel
from mailman.services.smtp.url import SmtpUrl, SmtpUrlError, parse_smtp_url
from mailman.services.store.models import UncertainPolicy

__all__ = ["CONFIG_FILE_VARIABLE", "ENV_PREFIX", "ConfigError", "Settings", "load_settings"]

ENV_PREFIX = "MAILMAN_"
CONFIG_FILE_VARIABLE = "MAILMAN_CONFIG"
"""The environment variable naming the TOML file to read when no file is passed explicitly."""


class ConfigError(ValueError):
    """The settings are invalid; ``problems`` lists each one as ``"<where>: <why>"``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in self.problems))


_SMTP_SCHEMES = ("smtp", "smtp+starttls", "smtps")
_EXPECTED_SCHEMES = "smtp://, smtp+starttls:// or smtps://"


def _without_password(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: error messages end up in logs."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return url
    return url if password is None else url.replace(f":{password}@", ":***@", 1)


def _smtp_url(value: object) -> object:
    if not isinstance(value, str):
        return value
    if urlsplit(value.strip()).scheme not in _SMTP_SCHEMES or "://" not in value:
        raise ValueError(f"expected {_EXPECTED_SCHEMES}, got {_without_password(value)!r}")
    try:
        return parse_smtp_url(value.strip())
    except SmtpUrlError as exc:  # its message names the problem, hides the password and shows examples
        raise ValueError(str(exc)) from None


def _database_url(value: object) -> object:
    if not isinstance(value, str):
        return value
    scheme = urlsplit(value).scheme
    if scheme not in ("postgres", "postgresql") or "://" not in value:
        raise ValueError(
            "expected a postgresql:// or postgres:// URL (for a Unix socket: "
            f"postgresql://user@/dbname?host=/run/postgresql), got {_without_password(value)!r}"
        )
    return value


_HOSTNAME = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*")


def _hostname(value: object) -> object:
    if not isinstance(value, str):
        return value
    host = value.lower().rstrip(".")
    if len(host) > 253 or not _HOSTNAME.fullmatch(host):
        raise ValueError(f"expected a hostname such as mail.example.com, got {value!r}")
    return host


_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,99}")


def _node_name(value: object) -> object:
    if not isinstance(value, str):
        return value
    name = value.strip()
    if not _NODE_NAME.fullmatch(name):
        raise ValueError(
            "expected a node name of 1 to 100 letters, digits, '.', '_', ':', '@' or '-' (starting "
            f"with a letter or digit), such as mail-1.example.com, got {value!r}"
        )
    return name


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _uid_list(value: object) -> object:
    """``"1000, 1001"`` or ``"[1000, 1001]"`` (from the environment) as a list; lists pass through."""
    if not isinstance(value, str):
        return value
    text = value.strip().removeprefix("[").removesuffix("]")
    return [item for item in re.split(r"[\s,]+", text) if item]


_IN_DATA_DIR: Any = None
"""The default of ``socket``: ``<data_dir>/mailman.sock``, filled in once ``data_dir`` is known."""


class Settings(BaseSettings):
    """Everything the daemon can be told, validated and frozen.

    ``Settings()`` holds the defaults; :func:`load_settings` builds one from the environment and the
    config file. Each field's description says what it accepts (and is quoted in error messages).

    - ``data_dir``: where the daemon keeps its state (embedded Postgres, Maildir sink, socket).
    - ``database_url``: any DSN asyncpg accepts, Unix-socket form included; unset = embedded Postgres.
    - ``smtp_url``: the relay to send through; unset = the built-in Maildir sink.
    - ``socket``: the RPC socket; default ``<data_dir>/mailman.sock``.
    - ``concurrency``: recipient tasks in flight per letter. ``rate_limit``: messages per second.
    - ``max_attempts``: SMTP attempts per recipient before it is dead-lettered.
    - ``message_domain``: the right-hand side of the Message-IDs the daemon makes.
    - ``uncertain_policy``: what recovery does with messages that were in flight at a crash, for
      every letter; unset = each letter's own (``letter create --uncertain-policy``, ``resend``
      unless it says ``hold``).
    - ``max_letter_restarts``: crashes of one letter's sender before the letter is failed.
    - ``node_name``: this daemon's name among those sharing the database; unset = one made up at
      start, unique (``<hostname>-<pid>-<random>``). ``lease_ttl``: seconds a letter's lease lasts
      unless renewed, i.e. how long other daemons wait before they take over a dead one's letters.
    - ``allowed_uids``: user ids besides the daemon's own that may use the RPC socket.
    - ``log_format``, ``log_level``: see :func:`mailman.log_setup.configure_logging`.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,
        frozen=True,
        extra="forbid",
        validate_default=True,
    )

    data_dir: Path = Field(default=Path(".mailman"), description="a directory path")
    database_url: Annotated[str | None, BeforeValidator(_database_url)] = Field(
        default=None, description="a postgresql:// URL"
    )
    smtp_url: Annotated[SmtpUrl | None, BeforeValidator(_smtp_url)] = Field(
        default=None, description=f"an SMTP URL ({_EXPECTED_SCHEMES})"
    )
    socket: Path = Field(default=_IN_DATA_DIR, description="a socket path")
    concurrency: int = Field(default=50, ge=1, le=1000, description="an integer from 1 to 1000")
    rate_limit: float = Field(
        default=100.0,
        gt=0,
        allow_inf_nan=False,
        description="a number of messages per second greater than 0, such as 100 or 12.5",
    )
    max_attempts: int = Field(default=5, ge=1, le=100, description="an integer from 1 to 100")
    message_domain: Annotated[str, BeforeValidator(_hostname)] = Field(
        default="mailman.localhost", description="a hostname"
    )
    uncertain_policy: Annotated[UncertainPolicy | None, BeforeValidator(_lower)] = Field(
        default=None, description="'resend' or 'hold'"
    )
    max_letter_restarts: int = Field(default=5, ge=0, le=1000, description="an integer from 0 to 1000")
    node_name: Annotated[str | None, BeforeValidator(_node_name)] = Field(
        default=None, description="a node name such as mail-1.example.com"
    )
    lease_ttl: float = Field(
        default=15.0,
        ge=1,
        le=3600,
        allow_inf_nan=False,
        description="a number of seconds from 1 to 3600, such as 15",
    )
    allowed_uids: Annotated[tuple[Annotated[int, Field(ge=0)], ...], NoDecode, BeforeValidator(_uid_list)] = (
        Field(default=(), description="a list of user ids, such as 1000,1001")
    )
    log_format: Annotated[LogFormat, BeforeValidator(_lower)] = Field(
        default=LogFormat.CONSOLE, description="'console' or 'json'"
    )
    log_level: Annotated[LogLevel, BeforeValidator(_lower)] = Field(
        default=LogLevel.INFO, description="'debug', 'info', 'warning', 'error' or 'critical'"
    )

    SOCKET_NAME: ClassVar[str] = "mailman.sock"

    @field_validator("data_dir", "socket", mode="after")
    @classmethod
    def _expand_user(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("socket", mode="before")
    @classmethod
    def _socket_in_data_dir(cls, value: object, info: ValidationInfo) -> object:
        if value is not None:
            return value
        # data_dir is declared first, so it is validated by now -- unless it was invalid, in which case
        # validation fails on data_dir anyway and this placeholder is never seen.
        data_dir = info.data.get("data_dir")
        return (Path(".") if data_dir is None else data_dir) / cls.SOCKET_NAME

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only the constructor's arguments: load_settings reads the environment and the file itself, so
        # that it knows where each value came from and Settings(...) is the same in every environment.
        return (init_settings,)


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source, reading a given mapping instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


def load_settings(config_file: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """The settings from ``env`` (default: ``os.environ``) over ``config_file`` over the defaults.

    ``config_file`` defaults to the file named by ``MAILMAN_CONFIG`` in ``env``, if any; a named file
    must exist. Raises :class:`ConfigError` listing every invalid value and where it came from.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    if config_file is None:
        named = environ.get(CONFIG_FILE_VARIABLE)
        file_origin = CONFIG_FILE_VARIABLE
        config_file = Path(named) if named else None
    else:
        file_origin = "config file"
    file_values = {} if config_file is None else _read_toml(config_file, file_origin)
    try:
        env_values = _MappingEnvSource(Settings, environ)()
    except SettingsError as exc:
        raise ConfigError([f"environment: {exc}"]) from None
    values = {**file_values, **env_values}
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = [_describe(error, values, env_values, config_file) for error in exc.errors()]
        raise ConfigError(problems) from None


def _read_toml(path: Path, origin: str) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError([f"{origin}: expected a TOML file, got {str(path)!r}, which does not exist"])
    try:
        return TomlConfigSettingsSource(Settings, toml_file=path)()
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot be read: {exc.strerror or exc}"]) from None


def _describe(
    error: ErrorDetails, values: Mapping[str, Any], env_values: Mapping[str, Any], config_file: Path | None
) -> str:
    name = str(error["loc"][0]) if error["loc"] else ""
    # For an item of a list (allowed_uids), show the whole value as given: that is what the user wrote.
    given = values.get(name, error["input"])
    if name in env_values:
        where = f"{ENV_PREFIX}{name.upper()}"
    elif config_file is not None:
        where = f"{name} in {config_file}"
    else:
        where = name
    if error["type"] == "extra_forbidden":
        known = ", ".join(Settings.model_fields)
        return f"{where}: unknown setting; expected one of {known}"
    if error["type"] == "value_error":
        # Our own validators' messages already read "expected X, got Y".
        return f"{where}: {error['ctx']['error']}"
    field_info = Settings.model_fields.get(name)
    expected = field_info.description if field_info is not None else None
    if expected is None:
        return f"{where}: {error['msg']}, got {given!r}"
    return f"{where}: expected {expected}, got {given!r}"

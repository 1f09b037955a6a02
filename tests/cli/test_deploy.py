"""The deployment files: the example settings load, and the unit says what the README promises."""

from __future__ import annotations

import configparser
from pathlib import Path

from mailman.config import load_settings

DEPLOY = Path(__file__).parents[2] / "deploy"


def test_the_example_settings_are_valid() -> None:
    """deploy/mailman.toml.example loads without a single problem."""
    settings = load_settings(DEPLOY / "mailman.toml.example", env={})
    assert settings.socket == Path("/run/mailman/mailman.sock")
    assert settings.data_dir == Path("/var/lib/mailman")


def test_the_unit_runs_serve_and_stops_gently() -> None:
    """The unit: mailman serve as user mailman, SIGTERM, a generous stop timeout, hardening."""
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "mailman.service")
    service = unit["Service"]
    assert service["Type"] == "simple"
    assert service["ExecStart"] == "mailman serve"
    assert service["User"] == "mailman"
    assert service["EnvironmentFile"] == "/etc/mailman/env"
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) >= 60
    assert service["Restart"] == "on-failure"
    assert service["ProtectSystem"] == "strict"
    assert service["ReadWritePaths"] == "/var/lib/mailman"
    assert service["RuntimeDirectory"] == "mailman"
    env = (DEPLOY / "env.example").read_text()
    assert "MAILMAN_CONFIG=/etc/mailman/mailman.toml" in env

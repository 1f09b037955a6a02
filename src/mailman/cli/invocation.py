"""One run of a command: its parsed arguments, its output, its settings and its way to the daemon."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mailman.cli.output import Output
from mailman.client import Client
from mailman.config import Settings, load_settings

__all__ = ["Invocation"]


@dataclass(slots=True)
class Invocation:
    """What a command handler gets: ``args`` (argparse's namespace) and ``output``.

    The settings are loaded on first use (from ``--config FILE``, else the environment and
    ``MAILMAN_CONFIG``), so that commands needing none never fail on a bad configuration.
    """

    args: argparse.Namespace
    output: Output
    config_file: Path | None = None
    _settings: Settings | None = field(default=None, repr=False)

    def settings(self) -> Settings:
        """The daemon's settings; raises :class:`~mailman.config.ConfigError` listing every problem."""
        if self._settings is None:
            self._settings = load_settings(self.config_file)
        return self._settings

    @asynccontextmanager
    async def client(self, *, timeout: float | None = 60.0) -> AsyncIterator[Client]:
        """A connected client of the daemon (on the settings' socket); raises
        :class:`~mailman.client.DaemonNotRunningError` if none listens."""
        async with Client(self.settings().socket, timeout=timeout) as client:
            yield client

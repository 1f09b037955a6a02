"""Fixtures for the command line: run ``mailman`` in-process (the database fixtures are the suite's).

``cli`` runs :func:`mailman.cli.main` on a worker thread (each command calls ``asyncio.run``, which
cannot run on the test's own loop; the thread leaves that loop free to serve an in-process daemon)
and returns a :class:`CliResult`: exit code, stdout, stderr. The command reads its settings from the
environment, so tests set ``MAILMAN_*`` with ``monkeypatch`` (and every inherited ``MAILMAN_*``
variable is removed first, so that the developer's own configuration never leaks in).

``database_url`` / ``empty_database_url`` come from ``tests/services/postgres_fixtures.py`` (registered in
the root conftest): a fresh database per test.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from unittest import mock

import pytest

from mailman.cli import main


@dataclass(frozen=True, slots=True)
class CliResult:
    """What a command did: its exit code and everything it wrote."""

    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """stdout as the one JSON document it must be."""
        return json.loads(self.stdout)


RunCli = Callable[..., Awaitable[CliResult]]


def _run(argv: list[str]) -> CliResult:
    stdout, stderr = io.StringIO(), io.StringIO()
    with mock.patch.object(sys, "stdout", stdout), mock.patch.object(sys, "stderr", stderr):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code if isinstance(exc.code, int) else 1
    return CliResult(code, stdout.getvalue(), stderr.getvalue())


@pytest.fixture(autouse=True)
def _no_inherited_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("MAILMAN_") and name != "MAILMAN_TEST_DATABASE_URL":
            monkeypatch.delenv(name)


@pytest.fixture
def cli() -> RunCli:
    """``await cli("status", "7", "--json")``: run a command in a worker thread, capture its output."""

    async def run(*argv: str) -> CliResult:
        return await asyncio.to_thread(_run, list(argv))

    return run

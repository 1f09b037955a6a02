"""A real mailman daemon process, driven over its real Unix socket.

- ``launcher``: starts daemon processes (``tests/daemon/launcher.py``, which calls
  :func:`mailman.daemon.lifecycle.serve` as ``mailman serve`` does) on the test's fresh database
  (``database_url``) and SMTP sink (``smtp_sink``, listening on 127.0.0.1 in the test's own loop),
  with the socket in a short temporary directory (a Unix socket path is limited to ~107 bytes) and
  JSON logs. Every process it started is killed at teardown if it is still running.
- ``daemon``: one such process, started and answering ``system.health``.

A :class:`DaemonProcess` records every line its process writes, so that a test synchronises on the
daemon's own log events (``await daemon.wait_for_event("letter sent", letter_id=3)``) instead of
sleeping. The only polling is for readiness: connection attempts every few milliseconds, bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from mailman.client import Client, DaemonNotRunningError
from tests.services.smtp_sink import SmtpSink

__all__ = [
    "DaemonLauncher",
    "DaemonProcess",
    "mailed",
    "make_newsletter",
    "subscription_ids",
    "wait_for",
]

LAUNCHER = Path(__file__).with_name("launcher.py")
START_TIMEOUT = 30.0
"""A bound on a daemon's start (imports, migrations, the tree): a broken start fails, not hangs."""
WAIT = 15.0
"""A bound on waits for the daemon's events: a bug fails the test instead of hanging it."""
READY_POLL = 0.005
"""Seconds between connection attempts while a daemon starts."""


@dataclass(frozen=True, slots=True)
class OutputLine:
    """One line the daemon wrote, and on which stream."""

    stream: str
    text: str

    def event(self) -> dict[str, Any] | None:
        """The line as a JSON log event, or None if it is not one."""
        try:
            value = json.loads(self.text)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None


class DaemonProcess:
    """A running daemon subprocess: its socket, its output, and ways to stop it."""

    def __init__(self, process: asyncio.subprocess.Process, socket: Path) -> None:
        self.process = process
        self.socket = socket
        self.lines: list[OutputLine] = []
        self._changed = asyncio.Event()
        assert process.stdout is not None
        assert process.stderr is not None
        self._readers = [
            asyncio.ensure_future(self._read(process.stdout, "stdout")),
            asyncio.ensure_future(self._read(process.stderr, "stderr")),
        ]
        self._exited = asyncio.ensure_future(self._wait_exit())

    async def _read(self, stream: asyncio.StreamReader, name: str) -> None:
        while line := await stream.readline():
            self.lines.append(OutputLine(name, line.decode("utf-8", "replace").rstrip("\r\n")))
            self._changed.set()
        self._changed.set()

    async def _wait_exit(self) -> int:
        code = await self.process.wait()
        await asyncio.gather(*self._readers)  # everything it wrote is in self.lines
        self._changed.set()
        return code

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def exited(self) -> bool:
        return self._exited.done()

    @property
    def output(self) -> str:
        """Everything the daemon wrote, for assertion messages."""
        return "\n".join(f"[{line.stream}] {line.text}" for line in self.lines)

    def events(self) -> list[dict[str, Any]]:
        """The JSON log events written so far."""
        return [event for line in self.lines if (event := line.event()) is not None]

    def client(self, **options: Any) -> Client:
        return Client(self.socket, **options)

    async def wait_for_event(self, event: str, timeout: float = WAIT, **fields: Any) -> dict[str, Any]:
        """The first log event named ``event`` whose fields include ``fields``; waits for it to come."""
        seen = 0
        async with asyncio.timeout(timeout):
            while True:
                for line in self.lines[seen:]:
                    logged = line.event()
                    if (
                        logged is not None
                        and logged.get("event") == event
                        and all(logged.get(key) == value for key, value in fields.items())
                    ):
                        return logged
                seen = len(self.lines)
                if self.exited:
                    raise AssertionError(
                        f"the daemon exited ({self.process.returncode}) without logging {event!r} "
                        f"{fields}; its output:\n{self.output}"
                    )
                self._changed.clear()
                await self._changed.wait()

    async def wait_ready(self, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        """Wait until the daemon answers ``system.health`` on its socket; return the answer."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.exited:
                raise AssertionError(
                    f"the daemon exited ({self.process.returncode}) before answering; its output:\n"
                    f"{self.output}"
                )
            try:
                async with Client(self.socket, timeout=WAIT, connect_timeout=WAIT) as client:
                    return await client.system_health()
            except DaemonNotRunningError:
                pass
            if loop.time() > deadline:
                raise AssertionError(
                    f"the daemon did not answer within {timeout}s; its output:\n{self.output}"
                )
            await asyncio.sleep(READY_POLL)  # readiness polling: the socket is not there yet

    def signal(self, signum: int) -> None:
        if not self.exited:
            self.process.send_signal(signum)

    async def wait_exit(self, timeout: float = WAIT) -> int:
        """Wait for the process to end (all its output read); its exit code."""
        async with asyncio.timeout(timeout):
            return await asyncio.shield(self._exited)

    async def stop(self, timeout: float = WAIT) -> int:
        """SIGTERM, then wait for the exit code."""
        self.signal(signal.SIGTERM)
        return await self.wait_exit(timeout)

    async def kill(self) -> None:
        """SIGKILL if still running; wait until it is gone and its pipes are drained."""
        self.signal(signal.SIGKILL)
        await asyncio.shield(self._exited)


class DaemonLauncher:
    """Starts daemon processes for one test; they share the socket path, data dir and environment."""

    def __init__(self, *, socket: Path, data_dir: Path, env: Mapping[str, str]) -> None:
        self.socket = socket
        self.data_dir = data_dir
        self.env = dict(env)
        self.started: list[DaemonProcess] = []

    async def spawn(self, *args: str, env: Mapping[str, str] | None = None) -> DaemonProcess:
        """Start a daemon process (``args`` for the launcher, ``env`` over the test's environment)."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(LAUNCHER),
            *args,
            env={**self.env, **(env or {})},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        daemon = DaemonProcess(process, self.socket)
        self.started.append(daemon)
        return daemon

    async def start(self, *args: str, env: Mapping[str, str] | None = None) -> DaemonProcess:
        """Start a daemon process and wait until it answers on its socket."""
        daemon = await self.spawn(*args, env=env)
        await daemon.wait_ready()
        return daemon

    async def kill_all(self) -> None:
        for daemon in self.started:
            await daemon.kill()


# ---------------------------------------------------------------- helpers


async def make_newsletter(client: Client, readers: int) -> tuple[int, list[str]]:
    """A newsletter with ``readers`` subscribers; its id and their addresses."""
    created = await client.newsletter_create("owner@example.com", "The Weekly", "news@example.com")
    emails = [f"reader{i}@example.com" for i in range(readers)]
    await client.subscribers_add(
        created["newsletter_id"], [{"email": email, "name": f"Reader {i}"} for i, email in enumerate(emails)]
    )
    return created["newsletter_id"], emails


async def subscription_ids(db: asyncpg.Connection[asyncpg.Record], newsletter_id: int) -> dict[str, int]:
    rows = await db.fetch("SELECT id, email FROM subscriptions WHERE newsletter_id = $1", newsletter_id)
    return {row["email"]: row["id"] for row in rows}


def mailed(sink: SmtpSink) -> Counter[str]:
    """How many messages the sink accepted for each recipient."""
    return Counter(recipient for message in sink.messages for recipient in message.rcpt_tos)


async def wait_for(event: asyncio.Event) -> None:
    async with asyncio.timeout(WAIT):
        await event.wait()


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path, for Unix sockets (``tmp_path`` can be too long)."""
    directory = Path(tempfile.mkdtemp(prefix="mm-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def launcher(
    database_url: str, smtp_sink: SmtpSink, short_tmp: Path, tmp_path: Path
) -> AsyncIterator[DaemonLauncher]:
    """Starts daemons on the test's database and SMTP sink; kills whatever still runs at the end."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MAILMAN_")}
    env.update(
        MAILMAN_DATABASE_URL=database_url,
        MAILMAN_SMTP_URL=smtp_sink.url(),
        MAILMAN_SOCKET=str(short_tmp / "mailman.sock"),
        MAILMAN_DATA_DIR=str(tmp_path / "data"),
        MAILMAN_RATE_LIMIT="100000",
        MAILMAN_LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
    )
    daemons = DaemonLauncher(socket=short_tmp / "mailman.sock", data_dir=tmp_path / "data", env=env)
    try:
        yield daemons
    finally:
        await daemons.kill_all()


@pytest.fixture
async def daemon(launcher: DaemonLauncher) -> DaemonProcess:
    """A daemon process on the test's database and sink, answering on its socket."""
    return await launcher.start()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    """A direct connection to the test's database, to look at (or arrange) what the daemon sees."""
    connection = await asyncpg.connect(database_url)
    try:
        yield connection
    finally:
        with contextlib.suppress(OSError):
            await connection.close()

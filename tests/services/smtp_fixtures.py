"""Fixtures for the SMTP side of delivery: a real SMTP sink, fake time, and a TLS certificate.

Register them with ``pytest_plugins = ["tests.services.smtp_fixtures"]`` (in the root
``tests/conftest.py`` for the whole suite, or in a test module).

- ``smtp_sink``: a started :class:`~tests.services.smtp_sink.SmtpSink`, stopped after the test.
- ``smtp_sink_factory``: ``await smtp_sink_factory(credentials=..., tls_context=...)`` for sinks
  with authentication or TLS; all are stopped after the test.
- ``fake_time``: a :class:`FakeTime`, the clock and ``sleep`` to inject into rate limiters and
  circuit breakers: time moves only when the test calls ``advance``.
- ``tls_files`` / ``server_tls_context`` / ``client_tls_context``: a self-signed certificate for
  127.0.0.1 made once per session with the ``openssl`` command (tests using it skip without it).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.services.smtp_sink import SmtpSink


class FakeTime:
    """A monotonic clock and an ``async sleep`` that only move when the test calls :meth:`advance`."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._changed = asyncio.Event()
        self.slept: list[float] = []
        """Every duration passed to :meth:`sleep`, in order."""

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self._changed.set()
        if seconds <= 0:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self.now + seconds, next(self._order), waiter)
        heapq.heappush(self._sleepers, entry)
        self._changed.set()
        try:
            await waiter
        finally:
            if entry in self._sleepers:
                self._sleepers.remove(entry)
                heapq.heapify(self._sleepers)

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose time has come."""
        assert seconds >= 0
        self.now += seconds
        while self._sleepers and self._sleepers[0][0] <= self.now:
            _, _, waiter = heapq.heappop(self._sleepers)
            if not waiter.done():
                waiter.set_result(None)

    @property
    def sleepers(self) -> int:
        """How many sleeps are pending."""
        return sum(1 for _, _, waiter in self._sleepers if not waiter.done())

    async def wait_for_sleepers(self, count: int = 1, timeout: float = 5.0) -> None:
        """Wait until at least ``count`` sleeps are pending (the code under test is waiting on time)."""
        async with asyncio.timeout(timeout):
            while self.sleepers < count:
                self._changed.clear()
                await self._changed.wait()

    async def wait_for_sleep_calls(self, count: int, timeout: float = 5.0) -> None:
        """Wait until :meth:`sleep` has been called ``count`` times in all."""
        async with asyncio.timeout(timeout):
            while len(self.slept) < count:
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
async def smtp_sink() -> AsyncIterator[SmtpSink]:
    async with SmtpSink() as sink:
        yield sink


SinkFactory = Callable[..., Awaitable[SmtpSink]]


@pytest.fixture
async def smtp_sink_factory() -> AsyncIterator[SinkFactory]:
    sinks: list[SmtpSink] = []

    async def make(**options: Any) -> SmtpSink:
        sink = SmtpSink(**options)
        await sink.start()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        await sink.stop()


@dataclass(frozen=True)
class TlsFiles:
    certificate: Path
    key: Path


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    files = TlsFiles(directory / "cert.pem", directory / "key.pem")
    arguments = ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    arguments += [
        "-days",
        "2",
        "-subj",
        "/CN=127.0.0.1",
        "-addext",
        "subjectAltName=IP:127.0.0.1,DNS:localhost",
    ]
    subprocess.run(
        [openssl, *arguments, "-keyout", str(files.key), "-out", str(files.certificate)],
        check=True,
        capture_output=True,
    )
    return files


@pytest.fixture
def server_tls_context(tls_files: TlsFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_files.certificate, tls_files.key)
    return context


@pytest.fixture
def client_tls_context(tls_files: TlsFiles) -> ssl.SSLContext:
    """A client context that trusts the test certificate (and verifies it, host name included)."""
    return ssl.create_default_context(cafile=str(tls_files.certificate))

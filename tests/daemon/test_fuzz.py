"""Property tests against the daemon process: whatever arrives on its socket, it answers and stays up.

Each property runs its examples against one daemon process. Examples on one connection are each
followed by a valid ``system.tree`` request with a fresh id, which needs no database round trip;
answers come in order on a connection, so reading up to the probe's answer keeps the stream in
step, and the probe's answer shows that the daemon still serves after that example.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailman.rpc import METHODS, ErrorCode
from tests.daemon.conftest import DaemonProcess
from tests.rpc.conftest import RawConnection
from tests.rpc.json_strategies import json_values

FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
"""One daemon and one connection (function-scoped fixtures) serve all of a property's examples."""

_probe_ids = itertools.count(1)


# Requests for the methods that only read: random params must not change what later examples see.
request_shaped = st.fixed_dictionaries(
    {"jsonrpc": st.just("2.0"), "id": st.integers() | st.text(max_size=8)},
    optional={
        "method": st.sampled_from(["letter.status", "system.health", "system.tree"])
        | st.sampled_from([spec.name for spec in METHODS]).map(lambda name: name.upper())
        | st.text(max_size=12),
        "params": st.dictionaries(
            st.sampled_from(["letter_id", "recipients", "newsletter_id"]) | st.text(max_size=10),
            json_values,
            max_size=3,
        )
        | json_values,
    },
)


@pytest.fixture
async def raw(daemon: DaemonProcess) -> AsyncIterator[RawConnection]:
    connection = await RawConnection.open(daemon.socket)
    yield connection
    await connection.close()


async def probe(connection: RawConnection) -> None:
    """Send a valid request and read up to its answer, checking every line on the way is JSON-RPC."""
    probe_id = f"probe-{next(_probe_ids)}"
    await connection.send_json({"jsonrpc": "2.0", "id": probe_id, "method": "system.tree"})
    while True:
        message = await connection.receive()
        assert message["jsonrpc"] == "2.0"
        assert ("result" in message) != ("error" in message)
        if message.get("id") == probe_id:
            assert message["result"]["tree"]["id"] == "application"
            return
        if "error" in message:
            assert -32768 <= message["error"]["code"] <= -32000
            assert message["error"]["code"] != ErrorCode.INTERNAL_ERROR, message


@settings(FUZZ, max_examples=1200)
@given(garbage=st.binary(max_size=200))
async def test_random_bytes(daemon: DaemonProcess, raw: RawConnection, garbage: bytes) -> None:
    """Random bytes (a line, or several) are answered with JSON-RPC errors, never an internal error,
    and the connection and the daemon go on serving."""
    await raw.send(garbage + b"\n")
    await probe(raw)
    assert not daemon.exited


@settings(FUZZ, max_examples=600)
@given(value=json_values)
async def test_random_json_values(daemon: DaemonProcess, raw: RawConnection, value: Any) -> None:
    """Any JSON value is answered with an error (or ignored, if blank), and the daemon goes on."""
    await raw.send_json(value)
    await probe(raw)
    assert not daemon.exited


@settings(FUZZ, max_examples=300)
@given(message=request_shaped)
async def test_random_requests(daemon: DaemonProcess, raw: RawConnection, message: dict[str, Any]) -> None:
    """Requests with random methods and params reach validation and the real handlers safely."""
    await raw.send(json.dumps(message).encode() + b"\n")
    await probe(raw)
    assert not daemon.exited

"""Property tests: whatever arrives on the socket, the server stays up and answers the next valid request.

Each property runs thousands of examples against one live server. Examples on one connection are
each followed by a valid probe request with a fresh id; the responses to the garbage come first (a
connection answers in order), so reading up to the probe's answer keeps the stream in step.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailman import supervisor as otp
from mailman.client import Client
from mailman.rpc import METHODS, ErrorCode
from tests.rpc.conftest import RawConnection
from tests.rpc.json_strategies import json_values

FUZZ = settings(
    max_examples=1000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
"""One server and one connection (function-scoped fixtures) serve all of a property's examples."""

_probe_ids = itertools.count(1)


request_shaped = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "1.0", 2.0]) | json_values,
        "method": st.sampled_from([spec.name for spec in METHODS]) | json_values,
        "params": st.dictionaries(
            st.sampled_from(
                ["letter_id", "recipients", "newsletter_id", "subscribers", "send_at", "rate_limit"]
            )
            | st.text(max_size=10),
            json_values,
            max_size=4,
        )
        | json_values,
        "id": st.integers() | st.text(max_size=8) | json_values,
    },
)


async def probe(connection: RawConnection) -> None:
    """Send a valid request and read up to its answer, checking every line on the way is JSON-RPC."""
    probe_id = f"probe-{next(_probe_ids)}"
    await connection.send_json(
        {"jsonrpc": "2.0", "id": probe_id, "method": "letter.status", "params": {"letter_id": 1}}
    )
    while True:
        message = await connection.receive()
        assert message["jsonrpc"] == "2.0"
        assert ("result" in message) != ("error" in message)
        if message.get("id") == probe_id:
            assert message["result"]["letter_id"] == 1
            return
        if "error" in message:
            assert -32768 <= message["error"]["code"] <= -32000
            assert message["error"]["code"] != ErrorCode.INTERNAL_ERROR, message


@settings(FUZZ, max_examples=3000)
@given(garbage=st.binary(max_size=300))
async def test_random_bytes_on_one_connection(raw: RawConnection, server: otp.Pid, garbage: bytes) -> None:
    """Random bytes (a line, or several) are answered with errors, and the connection keeps serving."""
    await raw.send(garbage + b"\n")
    await probe(raw)
    assert otp.is_alive(server)


@FUZZ
@given(value=json_values)
async def test_random_json_values_on_one_connection(raw: RawConnection, server: otp.Pid, value: Any) -> None:
    """Any JSON value is answered (or ignored), never crashes the server or yields an internal error."""
    await raw.send_json(value)
    await probe(raw)


@settings(FUZZ, max_examples=600)
@given(message=request_shaped)
async def test_random_request_shaped_objects_on_one_connection(
    raw: RawConnection, server: otp.Pid, message: dict[str, Any]
) -> None:
    """Objects with the right members and random values reach validation and the handlers safely."""
    await raw.send(json.dumps(message).encode() + b"\n")
    await probe(raw)


@settings(FUZZ, max_examples=300)
@given(garbage=st.binary(max_size=300), then_close=st.booleans())
async def test_random_bytes_on_new_connections(
    server: otp.Pid, socket_path: Path, garbage: bytes, then_close: bool
) -> None:
    """A connection that sends garbage and hangs up (or waits) leaves the server serving new ones."""
    connection = await RawConnection.open(socket_path)
    await connection.send(garbage)
    if then_close:
        await connection.close()
    async with Client(socket_path) as client:
        assert (await client.letter_status(1))["letter_id"] == 1
    if not then_close:
        await connection.close()

"""How long a graceful stop (SIGTERM) of a daemon sending a letter takes, at the default rate and
at a low one, and what it leaves behind.

Run with ``python bench/graceful_stop.py`` (``make bench`` runs it). A real ``mailman serve`` on an
embedded Postgres sends a letter to 2,000 subscribers through the chaos script's SMTP sink (another
process); once a few hundred (or, at 1 message a second, a few) are delivered, the daemon gets a
SIGTERM. Printed per rate: the seconds from the signal to the daemon's exit, and the deliveries
left ``sending`` (they would be resent or held after a restart: a graceful stop must leave none).

Before the stop gave back the recipients waiting for a rate token, a stop at a low rate waited for
every task in flight to get its token (50 tasks at 1.5 messages a second: past the 30 s shutdown
limit, then killed, and 45 recipients mailed twice).
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
from chaos import Chaos, Daemon, Sink, create_letter, prepare_newsletter  # bench/chaos.py
from delivery import create_database, start_postgres  # bench/delivery.py

from mailman.client import Client

AUDIENCE = 2_000
RATES = (("the default rate, 100/s", "100", 300), ("a low rate, 1/s", "1", 3))
ROUNDS = 3
"""Stops measured per rate (each of a new letter, by a new daemon): the longest is reported."""


async def measure(directory: Path, uri: str, admin_uri: str) -> list[tuple[str, float, int]]:
    await create_database(admin_uri, uri)
    newsletter_id, _, _ = await prepare_newsletter(uri, AUDIENCE)
    sink = await Sink.start(1, 0.0)
    results = []
    try:
        with (directory / "daemon.log").open("ab") as log:
            chaos = Chaos(uri=uri, sink=sink, directory=directory, log=log, observer=None)
            for (label, rate, delivered), _ in itertools.product(RATES, range(ROUNDS)):
                letter_id = await create_letter(uri, newsletter_id, f"Stop at {label}", "resend")
                env = {**chaos.env, "MAILMAN_RATE_LIMIT": rate}
                daemon, _ = await Daemon.start(env, chaos.socket, log)
                async with Client(chaos.socket) as client:
                    await client.letter_send(letter_id)
                    # Polling the daemon's status over RPC, as a user would: there is no event to await.
                    while (await client.letter_status(letter_id))["counts"]["delivered"] < delivered:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
                started = time.perf_counter()
                await daemon.stop(signal.SIGTERM)
                seconds = time.perf_counter() - started
                connection = await asyncpg.connect(uri)
                try:
                    left = await connection.fetchval(
                        "SELECT count(*) FROM deliveries WHERE letter_id = $1 AND state = 'sending'",
                        letter_id,
                    )
                finally:
                    await connection.close()
                results.append((label, seconds, left))
    finally:
        await sink.stop()
    return results


def main() -> int:
    directory = Path(tempfile.mkdtemp(prefix="mailman-stop-"))
    server = start_postgres(str(directory / "postgres"))
    try:
        results = asyncio.run(measure(directory, server.get_uri("bench"), server.get_uri()))
    finally:
        server.cleanup()
        shutil.rmtree(directory, ignore_errors=True)
    print(
        f"graceful stop (SIGTERM) mid-send, {AUDIENCE:,} subscribers, concurrency 50,"
        f" {ROUNDS} stops per rate:"
    )
    for label, _, _ in RATES:
        mine = [(seconds, left) for name, seconds, left in results if name == label]
        times = ", ".join(f"{seconds:.2f}" for seconds, _ in mine)
        print(
            f"  at {label:<24} longest stop {max(s for s, _ in mine):5.2f} s ({times});"
            f" deliveries left sending: {sum(left for _, left in mine)}"
        )
    return 0 if all(left == 0 for _, _, left in results) else 1


if __name__ == "__main__":
    sys.exit(main())

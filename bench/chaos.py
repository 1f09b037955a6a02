"""Chaos: a real ``mailman serve`` process killed and restarted mid-send, and what the receivers got.

Run with ``make chaos`` (or ``python bench/chaos.py [--quick] [--seed N]``). It shows guarantees 1
and 2 of the design (DESIGN.md section 5) with figures:

1. a graceful stop (SIGTERM) mid-send, then a restart: every recipient is mailed exactly once;
2. a SIGKILL mid-send: nobody is lost; only the messages in flight at the kill may go twice, each
   repeat with the same Message-ID; under the ``hold`` policy nobody is mailed twice and the
   messages whose fate the kill made unknowable are reported ``uncertain`` instead.

How it runs. An embedded Postgres (``pgserver`` in a fresh temporary directory, fsync off, migrated)
and an SMTP sink in another process: an aiosmtpd server on 127.0.0.1 that records, for every
message, the RCPT address, the ``Message-ID`` header and the *round* it arrived in (the daemon's
incarnation), and answers ``451`` to a small share of messages (1% by default) so that retries
happen under the kills too. A newsletter gets 10,000 subscribers (one in 200 unsubscribed before
the send, to be skipped) and two letters, written straight into the database.

Letter 1 (policy ``resend``): ``mailman serve`` starts as a subprocess (configured only through
``MAILMAN_*`` variables: that Postgres, that sink, a socket in the temporary directory) and the
letter is sent over RPC (:class:`mailman.client.Client`). Then, 12 times: wait until the letter's
delivered count (``letter.status``) passes a random threshold, stop the daemon with SIGKILL (most
times) or SIGTERM (some times), note which deliveries it left ``sending`` in Postgres (the messages
in flight at that moment), and start it again: nobody sends the letter again, the Scheduler's boot
recovery resumes it. Letter 2 goes through 4 SIGKILLs the same way under the ``hold`` policy: the
letter's own (``MAILMAN_UNCERTAIN_POLICY`` is left unset, so each letter's policy is in force).
After each letter is ``sent``, the sink's records are checked against the deliveries map and
``newsletter_emails``.

The seed (printed; ``--seed`` replays it) fixes the thresholds, the signals and the sink's 451
draws; where in the SMTP dialogue each kill lands still depends on timing, so two runs with one seed
agree on the plan, not on every figure.

How to read the output. One line per stop: the delivered count at the stop, the deliveries left
``sending`` (in flight: claimed, or sent but not yet flushed to Postgres), how many of them had
already reached the sink and so were repeated after the restart, the exit code (-9 for SIGKILL, 0
for a graceful stop) and the seconds until the new daemon answered. Then, per letter, the figures:
``mailed more than once`` must come only from SIGKILLs, each repeat with the letter's own
Message-ID for that recipient (a recipient can get three copies: a resent row goes to the back of
the queue, so its resend may be in flight at a later kill); ``repeats per SIGKILL`` is set beside
the engine's in-flight bound (``DeliverySettings.concurrency`` + ``claim_batch``) and beside the
rows actually left ``sending``, which also hold outcomes not yet flushed; ``never mailed`` must be 0
(under ``hold``: only uncertain ones); ``newsletter_emails`` holds one row per recipient mailed.
Under ``hold``, ``uncertain`` counts the rows left ``sending`` at the kills, and how many of those
the sink had in fact received (delivered, though the daemon cannot know it). The last lines list
each check; the exit code is 1 if any failed, and the temporary directory (with the daemons' log)
is kept to look into.

Daemon settings: the engine's defaults (concurrency 50, claim batch 25), except the rate limit
(raised so the sink sets the pace) and ``max_attempts`` (10, so that a recipient met by 451s and
kills alike is not dead-lettered). ``max_letter_restarts`` stays at its default of 5 although the
daemon is killed more often than that: a dead daemon is not a crash of the letter (checked below).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import IO, Any

import asyncpg
from aiosmtpd.smtp import SMTP, Envelope, Session
from delivery import (  # bench/delivery.py, beside this script
    create_database,
    start_postgres,
    subscriber_email,
)

from mailman.client import Client, DaemonNotRunningError
from mailman.services.delivery.context import DeliverySettings
from mailman.services.smtp.message import message_id
from mailman.services.store.database import create_pool
from mailman.services.store.models import NewSubscriber, SubscriptionStatus, UncertainPolicy
from mailman.services.store.queries import letters, newsletters, subscriptions

SENDER = "news@chaos.example.com"
MESSAGE_DOMAIN = "chaos.example.com"
UNSUBSCRIBE_URL = "https://chaos.example.com/unsubscribe/{token}"
TEXT_BODY = "Dear {{ name }},\n\nA daemon that kept being killed sent you this.\n\n{{ unsubscribe_url }}\n"
UNSUBSCRIBED_EVERY = 200
"""One subscriber in this many unsubscribes before the send (skipped, never mailed)."""
POLL = 0.05
"""Seconds between two ``letter.status`` calls while waiting for a threshold."""
SETTLE = 0.3
"""Seconds after a daemon's death before the sink's round changes: a message the dead daemon had
fully written is still being read by the sink, and belongs to the round that sent it."""
LETTER_TIMEOUT = 600.0
STOP_TIMEOUT = 120.0
READY_TIMEOUT = 60.0
OBSERVER = "mailman-chaos"
"""The application_name of this script's own connection to Postgres."""


# ---------------------------------------------------------------- the sink (another process)


def run_sink(seed: int, transient_rate: float) -> None:
    """An aiosmtpd server that records every message, refusing a share with 451; driven on stdin.

    Prints its port, then answers ``round N`` (the round later messages are recorded in) with
    ``ok``, and ``dump`` with one JSON line: ``[[round, rcpt, message_id, accepted], ...]``.
    Stops at the end of stdin.
    """

    headers = BytesHeaderParser()

    class Recorder:
        def __init__(self) -> None:
            self.round = 0
            self.rng = random.Random(seed)
            self.records: list[tuple[int, str, str, bool]] = []

        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            content = envelope.original_content or b""
            message_id = str(headers.parsebytes(content).get("Message-ID", "")).strip()
            accepted = self.rng.random() >= transient_rate
            for rcpt in envelope.rcpt_tos:
                self.records.append((self.round, rcpt, message_id, accepted))
            if not accepted:
                return "451 4.3.0 chaos sink: try again later"
            return "250 2.0.0 Ok: recorded"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        recorder = Recorder()
        server = await loop.create_server(
            lambda: SMTP(recorder, hostname="sink.chaos", ident="mailman chaos sink"), "127.0.0.1", 0
        )
        print(server.sockets[0].getsockname()[1], flush=True)
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            match line.split():
                case [b"round", number]:
                    recorder.round = int(number)
                    print("ok", flush=True)
                case [b"dump"]:
                    print(json.dumps(recorder.records), flush=True)
        server.close()

    asyncio.run(main())


@dataclass(frozen=True, slots=True)
class Received:
    """One message the sink answered: in which round, to whom, with which Message-ID."""

    round: int
    rcpt: str
    message_id: str
    accepted: bool


class Sink:
    """The sink process, seen from the chaos script."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port

    @classmethod
    async def start(cls, seed: int, transient_rate: float) -> Sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--sink",
            "--seed",
            str(seed),
            "--transient-rate",
            str(transient_rate),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=256 * 1024 * 1024,  # the dump is one line
        )
        sink = cls(process, 0)
        sink.port = int(await sink._read())
        return sink

    async def _read(self) -> str:
        assert self.process.stdout is not None
        line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError("the SMTP sink died")
        return line.decode()

    async def _ask(self, command: str) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")
        await self.process.stdin.drain()
        return await self._read()

    async def set_round(self, number: int) -> None:
        await self._ask(f"round {number}")

    async def dump(self) -> list[Received]:
        return [Received(*record) for record in json.loads(await self._ask("dump"))]

    async def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            async with asyncio.timeout(10):
                await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


# ---------------------------------------------------------------- the daemon (a subprocess)


class Daemon:
    """One ``mailman serve`` process; its output goes to the shared log file."""

    def __init__(self, process: asyncio.subprocess.Process, socket: Path) -> None:
        self.process = process
        self.socket = socket

    @classmethod
    async def start(cls, env: Mapping[str, str], socket: Path, log: IO[bytes]) -> tuple[Daemon, float]:
        """Start the daemon and wait until it answers on its socket; it, and the seconds that took."""
        started = time.perf_counter()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mailman",
            "serve",
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        daemon = cls(process, socket)
        async with asyncio.timeout(READY_TIMEOUT):
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"the daemon exited ({process.returncode}) before answering")
                try:
                    async with Client(socket) as client:
                        await client.system_health()
                    return daemon, time.perf_counter() - started
                except DaemonNotRunningError:
                    await asyncio.sleep(POLL)  # the socket is not there yet

    @property
    def exited(self) -> bool:
        return self.process.returncode is not None

    async def stop(self, signum: signal.Signals) -> int:
        """Send ``signum`` and wait for the exit code."""
        if not self.exited:
            self.process.send_signal(signum)
        async with asyncio.timeout(STOP_TIMEOUT):
            return await self.process.wait()


# ---------------------------------------------------------------- the data


async def prepare_newsletter(uri: str, audience: int) -> tuple[int, dict[str, int], set[int]]:
    """The newsletter, its subscribers (email -> subscription id), and those who unsubscribed."""
    pool = await create_pool(uri, min_size=1, max_size=2)
    try:
        _, newsletter = await newsletters.create_user_with_newsletter(
            pool,
            email="owner@chaos.example.com",
            name="The Chaos Weekly",
            from_address=SENDER,
            unsubscribe_url_template=UNSUBSCRIBE_URL,
        )
        readers = (NewSubscriber(email=subscriber_email(i), name=f"Reader {i}") for i in range(audience))
        await subscriptions.add_subscribers(pool, newsletter.id, readers)
        rows = await pool.fetch("SELECT id, email FROM subscriptions WHERE newsletter_id = $1", newsletter.id)
        ids = {row["email"]: row["id"] for row in rows}
        unsubscribed = {ids[subscriber_email(i)] for i in range(0, audience, UNSUBSCRIBED_EVERY)}
        for subscription_id in unsubscribed:
            await subscriptions.set_subscription_status(
                pool, subscription_id, SubscriptionStatus.UNSUBSCRIBED, reason="unsubscribed before the send"
            )
        await pool.execute("ANALYZE subscriptions")
        return newsletter.id, ids, unsubscribed
    finally:
        await pool.close()


async def create_letter(uri: str, newsletter_id: int, subject: str, policy: str) -> int:
    """A draft letter to the newsletter, with its own uncertain policy; its id."""
    pool = await create_pool(uri, min_size=1, max_size=1)
    try:
        letter = await letters.create_letter(
            pool,
            newsletter_id=newsletter_id,
            subject=subject,
            text_body=TEXT_BODY,
            uncertain_policy=UncertainPolicy(policy),
        )
        return letter.id
    finally:
        await pool.close()


# ---------------------------------------------------------------- one letter under chaos


@dataclass(frozen=True, slots=True)
class PlannedStop:
    threshold: int
    """The delivered count after which the daemon is stopped."""
    signum: signal.Signals


def plan_stops(rng: random.Random, active: int, count: int, sigterm_share: float) -> list[PlannedStop]:
    """``count`` stops at random delivered counts (5% to 95% of ``active``), in order.

    Each is a SIGTERM with probability ``sigterm_share``, else a SIGKILL; with a share strictly
    between 0 and 1 and two stops or more, there is at least one of each.
    """
    thresholds = sorted(rng.sample(range(active // 20, active * 19 // 20), count))
    signals = [signal.SIGTERM if rng.random() < sigterm_share else signal.SIGKILL for _ in thresholds]
    if count >= 2 and 0 < sigterm_share < 1:
        if signal.SIGTERM not in signals:
            signals[rng.randrange(count)] = signal.SIGTERM
        if signal.SIGKILL not in signals:
            signals[rng.randrange(count)] = signal.SIGKILL
    return [PlannedStop(t, s) for t, s in zip(thresholds, signals, strict=True)]


@dataclass(slots=True)
class Stop:
    """What happened at one stop of the daemon."""

    round: int
    """The round (daemon incarnation) the stop ended."""
    signum: signal.Signals
    delivered: int
    """The letter's delivered count when the stop was decided."""
    exit_code: int
    left_sending: frozenset[int]
    """Subscription ids the dead daemon left ``sending`` in Postgres: in flight at the stop."""
    restart_seconds: float = 0.0
    repeats: int = 0
    """Recipients mailed before this stop and again after it (filled in by the analysis)."""


@dataclass(slots=True)
class LetterRun:
    policy: str
    letter_id: int
    first_round: int
    last_round: int = 0
    stops: list[Stop] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    mail_order: dict[str, Any] = field(default_factory=dict)
    states: dict[int, str] = field(default_factory=dict)
    """Subscription id -> delivery state, at the end."""
    emails: dict[int, str] = field(default_factory=dict)
    """Subscription id -> the Message-ID of its ``newsletter_emails`` row."""
    first_start_seconds: float = 0.0
    elapsed: float = 0.0


class Chaos:
    """The shared pieces of a run: Postgres, the sink, the daemon's environment, the log."""

    def __init__(self, *, uri: str, sink: Sink, directory: Path, log: IO[bytes], observer: Any) -> None:
        self.sink = sink
        self.socket = directory / "mailman.sock"
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("MAILMAN_")}
        self.env.update(
            MAILMAN_DATABASE_URL=uri,
            MAILMAN_SMTP_URL=f"smtp://127.0.0.1:{sink.port}",
            MAILMAN_SOCKET=str(self.socket),
            MAILMAN_DATA_DIR=str(directory / "data"),
            MAILMAN_MESSAGE_DOMAIN=MESSAGE_DOMAIN,
            MAILMAN_RATE_LIMIT="100000",
            MAILMAN_MAX_ATTEMPTS="10",
            MAILMAN_LOG_FORMAT="json",
            # One name for every start: the same daemon restarted, as under systemd. A daemon that
            # leases its letters takes them back at once instead of waiting for the dead one's lease
            # to expire (a daemon without the setting ignores the variable).
            MAILMAN_NODE_NAME="chaos-node",
        )
        self.log = log
        self.observer = observer  # an asyncpg connection of this script's own
        self.round = 0

    async def run_letter(self, letter_id: int, policy: str, plan: list[PlannedStop]) -> LetterRun:
        """Send the letter, stop the daemon as planned (restarting it each time), wait until done."""
        env = dict(self.env)  # no MAILMAN_UNCERTAIN_POLICY: the letter's own policy decides
        self.round += 1
        await self.sink.set_round(self.round)
        run = LetterRun(policy=policy, letter_id=letter_id, first_round=self.round)
        started = time.perf_counter()
        daemon, run.first_start_seconds = await Daemon.start(env, self.socket, self.log)
        try:
            async with Client(self.socket) as client:
                await client.letter_send(letter_id)
            for planned in plan:
                status = await self._wait(daemon, letter_id, planned.threshold)
                if status["state"] != "sending":
                    break  # done before this threshold: the remaining stops do not happen
                exit_code = await daemon.stop(planned.signum)
                stop = Stop(
                    round=self.round,
                    signum=planned.signum,
                    delivered=status["counts"]["delivered"],
                    exit_code=exit_code,
                    left_sending=await self._left_sending(letter_id),
                )
                run.stops.append(stop)
                await asyncio.sleep(SETTLE)
                self.round += 1
                await self.sink.set_round(self.round)
                daemon, stop.restart_seconds = await Daemon.start(env, self.socket, self.log)
            run.status = await self._wait(daemon, letter_id, None)
            run.elapsed = time.perf_counter() - started
            exit_code = await daemon.stop(signal.SIGTERM)
        finally:
            if not daemon.exited:  # an error above: leave no daemon behind
                await daemon.stop(signal.SIGKILL)
        if exit_code != 0:
            raise RuntimeError(f"the daemon's final graceful stop exited {exit_code}")
        run.last_round = self.round
        await self._read_outcome(run)
        return run

    async def _wait(self, daemon: Daemon, letter_id: int, threshold: int | None) -> dict[str, Any]:
        """Poll ``letter.status`` until ``threshold`` delivered, or until the letter is no longer sending."""
        async with asyncio.timeout(LETTER_TIMEOUT), Client(self.socket) as client:
            while True:
                if daemon.exited:
                    raise RuntimeError(f"the daemon exited on its own ({daemon.process.returncode})")
                status = await client.letter_status(letter_id)
                if status["state"] != "sending":
                    return status
                if threshold is not None and status["counts"]["delivered"] >= threshold:
                    return status
                await asyncio.sleep(POLL)

    async def _left_sending(self, letter_id: int) -> frozenset[int]:
        """The deliveries left ``sending``, read once the dead daemon's backends are all gone.

        A backend notices its client's death by itself: until it has, a transaction the daemon
        had finished sending (a flush) may still commit. Waiting for it makes the read exact.
        """
        async with asyncio.timeout(30):
            while await self.observer.fetchval(  # noqa: ASYNC110 - Postgres has no event to wait on
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND backend_type = 'client backend'"
            ):
                await asyncio.sleep(0.01)
        rows = await self.observer.fetch(
            "SELECT subscription_id FROM deliveries WHERE letter_id = $1 AND state = 'sending'", letter_id
        )
        return frozenset(row["subscription_id"] for row in rows)

    async def _read_outcome(self, run: LetterRun) -> None:
        run.mail_order = dict((await letters.get_letter(self.observer, run.letter_id)).mail_order)
        rows = await self.observer.fetch(
            "SELECT subscription_id, state FROM deliveries WHERE letter_id = $1", run.letter_id
        )
        run.states = {row["subscription_id"]: row["state"] for row in rows}
        rows = await self.observer.fetch(
            "SELECT subscription_id, message_id FROM newsletter_emails WHERE letter_id = $1", run.letter_id
        )
        run.emails = {row["subscription_id"]: row["message_id"] for row in rows}


# ---------------------------------------------------------------- the analysis


@dataclass(slots=True)
class Findings:
    """What the sink's records say about one letter, against the deliveries map."""

    accepted: int = 0
    refused: int = 0
    once: int = 0
    repeated: int = 0
    repeats: int = 0
    """Messages beyond the first, over all recipients."""
    same_message_id: bool = True
    never_mailed: int = 0
    lost: list[int] = field(default_factory=list)
    """Active recipients never mailed and neither failed nor uncertain: lost."""
    unexplained: list[str] = field(default_factory=list)
    """Repeats that no SIGKILL explains (after a graceful stop, within one run, or of a row that was
    not in flight at the kill)."""
    uncertain_received: int = 0
    """Uncertain recipients the sink had in fact received."""
    skipped_mailed: int = 0
    """Skipped recipients (unsubscribed) the sink received all the same."""

    @property
    def mailed(self) -> int:
        return self.once + self.repeated


def analyse(run: LetterRun, records: list[Received], ids: Mapping[str, int]) -> Findings:
    """Compare the sink's records of this letter's rounds with the letter's deliveries map."""
    findings = Findings()
    mine = [r for r in records if run.first_round <= r.round <= run.last_round]
    findings.refused = sum(not r.accepted for r in mine)
    received: dict[int, list[Received]] = defaultdict(list)
    for record in mine:
        if record.accepted:
            received[ids[record.rcpt.lower()]].append(record)
    findings.accepted = sum(len(rounds) for rounds in received.values())
    stops = {stop.round: stop for stop in run.stops}
    for subscription_id, got in received.items():
        expected = message_id(run.letter_id, subscription_id, MESSAGE_DOMAIN)
        recorded = run.emails.get(subscription_id, expected)
        if recorded != expected or any(r.message_id != expected for r in got):
            findings.same_message_id = False
        if len(got) == 1:
            findings.once += 1
            continue
        findings.repeated += 1
        findings.repeats += len(got) - 1
        for earlier, later in itertools.pairwise(got):
            stop = stops.get(earlier.round)
            if earlier.round == later.round or stop is None:
                findings.unexplained.append(f"{earlier.rcpt}: twice in round {earlier.round}")
            elif stop.signum is signal.SIGTERM:
                findings.unexplained.append(f"{earlier.rcpt}: again after the SIGTERM of round {stop.round}")
            elif subscription_id not in stop.left_sending:
                findings.unexplained.append(
                    f"{earlier.rcpt}: again after the SIGKILL of round {stop.round}, "
                    "though it was not left sending"
                )
            else:
                stop.repeats += 1
    for subscription_id, state in run.states.items():
        if subscription_id in received:
            if state == "uncertain":
                findings.uncertain_received += 1
            elif state == "skipped":
                findings.skipped_mailed += 1
            continue
        if state == "skipped":
            continue
        findings.never_mailed += 1
        if state not in ("failed", "uncertain"):
            findings.lost.append(subscription_id)
    return findings


# ---------------------------------------------------------------- the report


def print_stops(run: LetterRun) -> None:
    header = ("stop", "signal", "at delivered", "left sending", "of them repeated", "exit", "answering again")
    rows = [
        (
            str(number),
            stop.signum.name,
            f"{stop.delivered:,}",
            f"{len(stop.left_sending):,}",
            f"{stop.repeats:,}",
            str(stop.exit_code),
            f"{stop.restart_seconds:.1f} s",
        )
        for number, stop in enumerate(run.stops, start=1)
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  " + "  ".join(cell.rjust(widths[i]) for i, cell in enumerate(row)))


@dataclass(frozen=True, slots=True)
class Bounds:
    """The engine's settings that bound what a kill can leave in flight (its defaults)."""

    concurrency: int
    claim_batch: int
    flush_size: int

    @property
    def in_flight(self) -> int:
        """Recipients claimed or being sent at once: a kill leaves their fate unknown."""
        return self.concurrency + self.claim_batch


def _mean(values: list[int]) -> str:
    return f"{sum(values) / len(values):,.1f}" if values else "-"


def print_figures(
    run: LetterRun, findings: Findings, audience: int, unsubscribed: int, bounds: Bounds
) -> None:
    kills = [stop for stop in run.stops if stop.signum is signal.SIGKILL]
    terms = [stop for stop in run.stops if stop.signum is signal.SIGTERM]
    order = run.mail_order
    hold = run.policy == "hold"
    print(f"\nletter {run.letter_id}, uncertain policy {run.policy}:")
    if run.stops:
        print_stops(run)
    notes: list[str] = []
    figures: list[tuple[str, str]] = [
        ("audience", f"{audience:,} subscribers, {unsubscribed:,} of them unsubscribed before the send"),
        ("stops", f"{len(kills)} SIGKILL, {len(terms)} SIGTERM"),
        (
            "messages the sink received",
            f"{findings.accepted:,}, and {findings.refused:,} answered 451 (retried)",
        ),
        ("recipients mailed exactly once", f"{findings.once:,}"),
        (
            "recipients mailed more than once",
            f"{findings.repeated:,} ({findings.repeats:,} repeats); all with the same Message-ID: "
            + ("yes" if findings.same_message_id else "NO"),
        ),
    ]
    if kills:
        repeats = [stop.repeats for stop in kills]
        left = [len(stop.left_sending) for stop in kills]
        figures += [
            (
                "repeats per SIGKILL",
                f"max {max(repeats):,}, mean {_mean(repeats)}; in-flight bound {bounds.in_flight} "
                f"(concurrency {bounds.concurrency} + claim batch {bounds.claim_batch})",
            ),
            (
                "left sending per SIGKILL",
                f"max {max(left):,}, mean {_mean(left)}: in flight, plus outcomes not yet flushed "
                f"(up to flush_size {bounds.flush_size})",
            ),
        ]
        if max(repeats) > bounds.in_flight:
            notes.append(
                f"more repeats than the in-flight bound {bounds.in_flight}: messages the relay had accepted "
                "whose outcomes were still buffered, not yet flushed to Postgres, were resent too"
            )
    figures += [
        ("repeats after a SIGTERM", f"{sum(stop.repeats for stop in terms):,}"),
        ("repeats no SIGKILL explains", f"{len(findings.unexplained):,}"),
        (
            "recipients never mailed",
            f"{findings.never_mailed:,}"
            + (
                f" (held uncertain), lost: {len(findings.lost):,}"
                if hold
                else f", lost: {len(findings.lost):,}"
            ),
        ),
        (
            "letter",
            f"{run.status['state']}; mail_order: delivered {order.get('delivered')}, failed "
            f"{order.get('failed')}, skipped {order.get('skipped')}, uncertain {order.get('uncertain')}; "
            f"restarts counted {run.status.get('restarts')}",
        ),
    ]
    if hold:
        left_at_kills = frozenset[int]().union(*(stop.left_sending for stop in kills))
        figures.append(
            (
                "uncertain",
                f"{run.status['uncertain']:,} = rows left sending at the kills {len(left_at_kills):,}; "
                f"the sink had received {findings.uncertain_received:,} of them",
            )
        )
    figures += [
        (
            "newsletter_emails rows",
            f"{len(run.emails):,}; distinct recipients mailed {findings.mailed:,}"
            + (f", {findings.uncertain_received:,} of them uncertain" if hold else ""),
        ),
        ("elapsed", f"{run.elapsed:.1f} s from the first start to sent"),
    ]
    width = max(len(name) for name, _ in figures)
    for name, value in figures:
        print(f"  {name.ljust(width)}  {value}")
    for note in notes:
        print(f"  note: {note}")
    for line in findings.unexplained[:10]:
        print(f"  unexplained repeat: {line}")


def checks_of(run: LetterRun, findings: Findings, audience: int, unsubscribed: int) -> list[tuple[str, bool]]:
    """The guarantees this letter must have kept: (description, held)."""
    terms = [stop for stop in run.stops if stop.signum is signal.SIGTERM]
    kills = [stop for stop in run.stops if stop.signum is signal.SIGKILL]
    skipped = run.status["counts"]["skipped"]
    checks = [
        ("ended sent", run.status["state"] == "sent"),
        ("nobody lost: every active recipient mailed, failed or held", not findings.lost),
        (
            f"skipped = unsubscribed ({unsubscribed}), none of them mailed",
            skipped == unsubscribed and findings.skipped_mailed == 0,
        ),
        ("every repeat carried the recipient's own Message-ID", findings.same_message_id),
        ("every repeat was left sending at a SIGKILL", not findings.unexplained),
        ("no daemon death counted as a crash of the letter", not run.status.get("restarts")),
    ]
    if terms:
        # A SIGTERM that comes before the new daemon has recovered the rows the last SIGKILL left
        # sending leaves them as they were (the next start recovers them); it adds none of its own.
        before = [frozenset[int](), *(stop.left_sending for stop in run.stops)]
        added = [
            stop.left_sending - before[i] for i, stop in enumerate(run.stops) if stop.signum is signal.SIGTERM
        ]
        checks += [
            ("no repeat after a SIGTERM", sum(stop.repeats for stop in terms) == 0),
            (
                "a SIGTERM left nothing sending of its own, and the daemon exited 0",
                not any(added) and all(stop.exit_code == 0 for stop in terms),
            ),
        ]
    if run.policy == "hold":
        left = frozenset[int]().union(*(stop.left_sending for stop in kills))
        checks += [
            ("nobody mailed twice", findings.repeated == 0),
            ("uncertain = the rows left sending at the kills", run.status["uncertain"] == len(left)),
            (
                "newsletter_emails rows = recipients mailed, less the uncertain ones",
                len(run.emails) == findings.mailed - findings.uncertain_received,
            ),
        ]
    else:
        checks += [
            ("every active recipient mailed", findings.mailed == audience - unsubscribed),
            ("newsletter_emails rows = recipients mailed", len(run.emails) == findings.mailed),
        ]
    return [(f"letter {run.letter_id} ({run.policy}): {text}", held) for text, held in checks]


# ---------------------------------------------------------------- the whole run


@dataclass(frozen=True, slots=True)
class Options:
    seed: int
    subscribers: int
    stops: int
    hold_stops: int
    transient_rate: float
    sigterm_share: float


async def chaos(options: Options, directory: Path, uri: str, admin_uri: str, log: IO[bytes]) -> bool:
    """The whole run; True if every check held."""
    started = time.perf_counter()
    rng = random.Random(options.seed)
    await create_database(admin_uri, uri)
    newsletter_id, ids, unsubscribed = await prepare_newsletter(uri, options.subscribers)
    resend_letter = await create_letter(uri, newsletter_id, "Chaos, resend", "resend")
    hold_letter = await create_letter(uri, newsletter_id, "Chaos, hold", "hold")
    active = options.subscribers - len(unsubscribed)
    plans = [
        (resend_letter, "resend", plan_stops(rng, active, options.stops, options.sigterm_share)),
        (hold_letter, "hold", plan_stops(rng, active, options.hold_stops, 0.0)),
    ]
    defaults = DeliverySettings()
    bounds = Bounds(defaults.concurrency, defaults.claim_batch, defaults.flush_size)
    sink = await Sink.start(rng.randrange(2**32), options.transient_rate)
    observer = await asyncpg.connect(uri, server_settings={"application_name": OBSERVER})
    try:
        runner = Chaos(uri=uri, sink=sink, directory=directory, log=log, observer=observer)
        runs = [await runner.run_letter(letter_id, policy, plan) for letter_id, policy, plan in plans]
        records = await sink.dump()
    finally:
        await observer.close()
        await sink.stop()

    checks: list[tuple[str, bool]] = []
    for run in runs:
        findings = analyse(run, records, ids)
        print_figures(run, findings, options.subscribers, len(unsubscribed), bounds)
        checks += checks_of(run, findings, options.subscribers, len(unsubscribed))
    print(f"\nelapsed {time.perf_counter() - started:.1f} s in all (setup included)")
    print("checks:")
    for description, held in checks:
        print(f"  {'ok  ' if held else 'FAIL'}  {description}")
    return all(held for _, held in checks)


def main(options: Options) -> int:
    directory = Path(tempfile.mkdtemp(prefix="mailman-chaos-"))
    print(
        f"mailman chaos (seed {options.seed}; replay with --seed {options.seed}): "
        f"{options.subscribers:,} subscribers, {options.stops} stops of a resend letter, "
        f"{options.hold_stops} SIGKILLs of a hold letter; the sink answers 451 to "
        f"{options.transient_rate:.1%} of messages; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    )
    print(
        "daemons: `mailman serve` processes at the engine's defaults; Postgres: embedded, fsync off; "
        "sink: aiosmtpd in another process"
    )
    sys.stdout.flush()
    ok = False
    log_path = directory / "daemon.log"
    server = start_postgres(str(directory / "postgres"))
    try:
        with log_path.open("ab") as log:
            ok = asyncio.run(chaos(options, directory, server.get_uri("bench"), server.get_uri(), log))
    except RuntimeError as error:  # the run could not go on (a daemon that would not start...)
        print(f"\nchaos: {error}; the last lines of the daemons' log:", file=sys.stderr)
        for line in log_path.read_text(errors="replace").splitlines()[-15:]:
            print(f"  {line}", file=sys.stderr)
    finally:
        server.cleanup()
        if ok:
            shutil.rmtree(directory, ignore_errors=True)
        else:
            print(
                f"kept for inspection: {directory} (the daemons' output is in {log_path.name})",
                file=sys.stderr,
            )
    return 0 if ok else 1


def _options(args: argparse.Namespace) -> Options:
    quick = args.quick
    return Options(
        seed=args.seed if args.seed is not None else random.SystemRandom().randrange(1_000_000),
        subscribers=args.subscribers or (2_000 if quick else 10_000),
        stops=args.stops or (4 if quick else 12),
        hold_stops=args.hold_stops or (2 if quick else 4),
        transient_rate=args.transient_rate,
        sigterm_share=0.25,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 subscribers, 4 + 2 stops")
    parser.add_argument("--seed", type=int, help="replay a run's plan (printed at the start)")
    parser.add_argument("--subscribers", type=int, help="the audience (default 10,000)")
    parser.add_argument("--stops", type=int, help="stops of the resend letter (default 12)")
    parser.add_argument("--hold-stops", type=int, help="SIGKILLs of the hold letter (default 4)")
    parser.add_argument(
        "--transient-rate", type=float, default=0.01, help="share of messages the sink answers 451 (0.01)"
    )
    parser.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        run_sink(args.seed, args.transient_rate)
    else:
        sys.exit(main(_options(args)))

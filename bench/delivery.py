"""Benchmark of the delivery engine, beside the bare SMTP limit measured in the same run.

Run with ``make bench`` (or ``python bench/delivery.py [--quick]``). It starts an embedded Postgres
(``pgserver``, in a fresh temporary directory, migrated) and an SMTP sink in another process (a
minimal aiosmtpd server on 127.0.0.1 that counts what it accepts and throws it away), then measures:

- the bare limit: as many aiosmtplib connections as the engine's pool (50) sending the same
  messages as the engine run beside it (as many: 10,000 or 100,000, built beforehand) as fast as
  the sink takes them, with no database and no supervision, each connection replaced every 50
  messages as the engine's pool does by default (the same SMTP conversation), messages per second;
- the engine: the :class:`~mailman.services.delivery.application.Application` tree (Repo, Registry, Mailer
  with the pool ``mailman serve`` opens: one connection per task in flight, 50 at the default
  concurrency, see ``pool_size_for``; TaskSupervisor, dispatcher), at its default ``DeliverySettings``,
  sending one letter to 10,000 and then 100,000 subscribers (2,000 and 10,000 with ``--quick``),
  from ``send_letter`` to the letter being ``sent``. Each run is a fresh process, so that its peak
  RSS (``VmHWM``) is its own. The sink must have received exactly the audience.

The relay and the sender each get CPUs of their own (``--no-pin`` to let the scheduler place
them): the sink is pinned to the first CPU the bench may use, and the sender's side to the others:
the bench process (which runs the bare pool), the engine's process and Postgres. A relay is another
host in production; sharing the 2 CPUs with the engine's Postgres, the sink was preempted and moved
between CPUs, and spent 5-15% more CPU per message in engine runs than in bare ones (measured on
this machine: pinned, the sink's cost per message is the same in both). Pinned, the engine and its
Postgres must fit in the one CPU the bare client has to itself.

Each size is measured in paired rounds (3 by default, ``--rounds``): the bare limit, then right
after it the engine, so that both see the same machine; on a shared machine the rates move with its
load (printed in the header), the CPU costs much less. The figures printed are the medians over the
rounds, and "vs bare" is the median of the rounds' own ratios (as bench/supervisor.py does), never a
best bare run set against one engine run. Peak RSS is the largest of the rounds.
``--profile FILE`` runs only one smaller engine run, under cProfile, and prints its hot spots.

CPU is counted per 1,000 messages for each process apart: the bench (or engine) process
(``time.process_time``), the sink, and Postgres (the postmaster and all its backends, from
``/proc/<pid>/stat``, terminated backends included through the postmaster's children times).

Targets: the engine at least 80% of the bare rate; peak RSS growing by at most 50 MB from the
smaller run to the larger. Nothing is asserted but the sink's count: the figures are for reading.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def pool_size() -> int:
    """The engine's SMTP pool as ``mailman serve`` sizes it at the default concurrency (50).

    The bare limit gets as many connections: the sink, not the client, is the bare pool's limit
    (measured: 16 and 48 bare connections reach the same rate), so neither side gains by the count.
    """
    from mailman.services.delivery.context import DeliverySettings  # noqa: PLC0415
    from mailman.services.smtp.mailer import pool_size_for  # noqa: PLC0415

    return pool_size_for(DeliverySettings().concurrency)


SENDER = "news@bench.example.com"
TEXT_BODY = (
    "Dear {{ name }},\n\n"
    "This is the weekly letter: three short paragraphs of news, as a newsletter has.\n"
    "Nothing in it changes per reader but the greeting and the unsubscribe link.\n\n"
    "Unsubscribe: {{ unsubscribe_url }}\n"
)
HTML_BODY = (
    "<p>Dear {{ name }},</p>\n<p>This is the weekly letter: three short paragraphs of news.</p>\n"
    "<p>Nothing in it changes per reader but the greeting and the unsubscribe link.</p>\n"
    '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>\n'
)
UNSUBSCRIBE_URL = "https://bench.example.com/unsubscribe/{token}"
MESSAGE_DOMAIN = "bench.example.com"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def subscriber_email(i: int) -> str:
    return f"reader{i}@example.org"


# ---------------------------------------------------------------- CPU of other processes


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": fields from state on


def process_cpu(pid: int, *, children: bool = False) -> float:
    """CPU seconds of ``pid`` (user + system), plus its waited-for children's when asked."""
    fields = _stat_fields(pid)
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / CLOCK_TICKS


def postgres_cpu(postmaster: int) -> float:
    """CPU seconds of the postmaster, its live backends, and the backends that have exited."""
    total = process_cpu(postmaster, children=True)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat_fields(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
        if int(fields[1]) == postmaster:  # ppid
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def peak_rss_mb() -> float:
    """This process's peak RSS, in MB.

    ``VmHWM`` rather than ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux carries ``ru_maxrss`` over
    ``exec``, so a process started by a big parent would report the parent's peak as its own.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---------------------------------------------------------------- the sink (another process)


def run_sink() -> None:
    """An aiosmtpd server that accepts everything and counts it; driven by lines on stdin.

    Prints its port, then answers ``count`` with the messages accepted since the last ``reset``.
    Stops at the end of stdin.
    """
    from aiosmtpd.smtp import SMTP, Envelope, Session  # noqa: PLC0415 - only the sink needs it

    class Counter:
        count = 0

        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            self.count += 1
            return "250 2.0.0 Ok: discarded"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        counter = Counter()
        server = await loop.create_server(
            lambda: SMTP(counter, hostname="sink.bench", ident="mailman bench sink"), "127.0.0.1", 0
        )
        print(server.sockets[0].getsockname()[1], flush=True)
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            match line.strip():
                case b"count":
                    print(counter.count, flush=True)
                case b"reset":
                    counter.count = 0
                    print(0, flush=True)
        server.close()

    asyncio.run(main())


class Sink:
    """The sink process, seen from the bench."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--sink"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.port = int(self._read())

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the SMTP sink died")
        return line

    def _ask(self, command: str) -> int:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return int(self._read())

    def count(self) -> int:
        return self._ask("count")

    def reset(self) -> None:
        self._ask("reset")

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# ---------------------------------------------------------------- Postgres and the data


def start_postgres(pgdata: str) -> Any:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pgserver  # noqa: PLC0415

        return pgserver.get_server(pgdata, cleanup_mode="stop")


async def create_database(admin_uri: str, uri: str) -> None:
    import asyncpg  # noqa: PLC0415

    from mailman.services.store.migrations import migrate  # noqa: PLC0415

    admin = await asyncpg.connect(admin_uri)
    try:
        # A throwaway server, as in the test suite: durability buys nothing here.
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            await admin.execute(f"ALTER SYSTEM SET {setting} = off")
        await admin.execute("SELECT pg_reload_conf()")
        await admin.execute("CREATE DATABASE bench")
    finally:
        await admin.close()
    connection = await asyncpg.connect(uri)
    try:
        await migrate(connection)
    finally:
        await connection.close()


def _subscribers(n: int) -> Iterator[Any]:
    from mailman.services.store.models import NewSubscriber  # noqa: PLC0415

    for i in range(n):
        yield NewSubscriber(email=subscriber_email(i), name=f"Reader {i}")


async def prepare_letter(uri: str, audience: int, run: int) -> int:
    """A newsletter with ``audience`` subscribers and a draft letter to them; the letter's id."""
    from mailman.services.store.database import create_pool  # noqa: PLC0415
    from mailman.services.store.queries import letters, newsletters, subscriptions  # noqa: PLC0415

    pool = await create_pool(uri, min_size=1, max_size=2)
    try:
        _, newsletter = await newsletters.create_user_with_newsletter(
            pool,
            email=f"owner{run}@bench.example.com",
            name="The Bench Weekly",
            from_address=SENDER,
            unsubscribe_url_template=UNSUBSCRIBE_URL,
        )
        added = await subscriptions.add_subscribers(pool, newsletter.id, _subscribers(audience))
        assert added == audience, (added, audience)
        await pool.execute("ANALYZE subscriptions")  # as autovacuum would after a bulk import
        letter = await letters.create_letter(
            pool,
            newsletter_id=newsletter.id,
            subject=f"The news, run {run}",
            text_body=TEXT_BODY,
            html_body=HTML_BODY,
        )
        return letter.id
    finally:
        await pool.close()


# ---------------------------------------------------------------- the bare limit


def bench_template() -> Any:
    """The letter the engine sends in the bench's first run, rendered once as the engine does.

    As the engine's: the subject prepare_letter gives run 1, and 32-hex unsubscribe tokens (the
    database's default), so that the sink parses messages of the same size and line count.
    """
    from mailman.services.smtp.message import LetterTemplate  # noqa: PLC0415

    return LetterTemplate.render(
        subject="The news, run 1",
        text_body=TEXT_BODY,
        html_body=HTML_BODY,
        from_address=SENDER,
        from_name="The Bench Weekly",
        message_domain=MESSAGE_DOMAIN,
        unsubscribe_url=UNSUBSCRIBE_URL,
    )


def personalized(template: Any, i: int) -> bytes:
    """Subscriber ``i``'s message from ``template``."""
    message: bytes = template.personalize(
        email=subscriber_email(i),
        name=f"Reader {i}",
        subscription_id=i + 1,
        letter_id=1,
        unsubscribe_token=f"{i:032x}",
    )
    return message


def prebuilt_messages(n: int) -> list[tuple[str, bytes]]:
    """The messages the engine would send to n subscribers, built beforehand."""
    template = bench_template()
    return [(subscriber_email(i), personalized(template, i)) for i in range(n)]


def message_costs(count: int = 2_000) -> tuple[float, float]:
    """CPU seconds per message: personalising the letter's template, and building the same message
    wholly with ``email.message.EmailMessage`` (what the template saves)."""
    from email.headerregistry import Address  # noqa: PLC0415
    from email.message import EmailMessage  # noqa: PLC0415
    from email.policy import SMTP  # noqa: PLC0415

    template = bench_template()

    def from_template(i: int) -> bytes:
        return personalized(template, i)

    def built(i: int) -> bytes:
        url = UNSUBSCRIBE_URL.format(token=f"{i:032x}")
        message = EmailMessage(policy=SMTP)
        message["From"] = Address("The Bench Weekly", addr_spec=SENDER)
        message["To"] = Address(f"Reader {i}", addr_spec=subscriber_email(i))
        message["Subject"] = "The news, run 1"
        message["Message-ID"] = f"<letter-1.sub-{i + 1}@{MESSAGE_DOMAIN}>"
        message["List-Unsubscribe"] = f"<{url}>"
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        message["Precedence"] = "bulk"
        values = {"{{ name }}": f"Reader {i}", "{{ unsubscribe_url }}": url}
        text, page = TEXT_BODY, HTML_BODY
        for field, value in values.items():
            text, page = text.replace(field, value), page.replace(field, value)
        message.set_content(text)
        message.add_alternative(page, subtype="html")
        return message.as_bytes()

    costs = []
    for build in (from_template, built):
        started = time.process_time()
        for i in range(count):
            build(i)
        costs.append((time.process_time() - started) / count)
    return costs[0], costs[1]


RECYCLE_AFTER = 50
"""The engine's default ``max_messages_per_connection`` (mailman.services.smtp.pool)."""


async def bare_rate(port: int, messages: list[tuple[str, bytes]]) -> tuple[float, float]:
    """``pool_size()`` aiosmtplib connections sending ``messages``: (messages/s, bench CPU s per 1,000).

    Like the engine's pool with its default settings, each connection is replaced after
    ``RECYCLE_AFTER`` messages (a relay-friendly policy the engine follows); without that the bare
    pool would be measured on a cheaper SMTP conversation than the engine is allowed to have.
    """
    import aiosmtplib  # noqa: PLC0415

    clients = [
        aiosmtplib.SMTP(hostname="127.0.0.1", port=port, local_hostname="bench.local")
        for _ in range(pool_size())
    ]
    await asyncio.gather(*(client.connect() for client in clients))
    queue = iter(messages)

    async def worker(client: aiosmtplib.SMTP) -> None:
        for sent, (recipient, data) in enumerate(queue, start=1):
            await client.sendmail(SENDER, [recipient], data)
            if sent % RECYCLE_AFTER == 0:
                # The same conversation the engine must have: a fresh connection every N messages.
                await client.quit()
                await client.connect()

    cpu = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker(client) for client in clients))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    await asyncio.gather(*(client.quit() for client in clients))
    return len(messages) / elapsed, cpu / len(messages) * 1000


# ---------------------------------------------------------------- one engine run (its own process)


async def engine_run(uri: str, port: int, letter_id: int, sink_pid: int, postmaster: int) -> dict[str, Any]:
    from mailman.log_setup import LogFormat, configure_logging  # noqa: PLC0415
    from mailman.services.delivery import letter_commands  # noqa: PLC0415
    from mailman.services.delivery.application import Application, ApplicationConfig  # noqa: PLC0415
    from mailman.services.delivery.context import DeliveryContext, DeliverySettings  # noqa: PLC0415
    from mailman.services.delivery.letter_delivery_dispatcher import LetterDeliveryDispatcher  # noqa: PLC0415
    from mailman.services.smtp.mailer import MailerConfig  # noqa: PLC0415
    from mailman.services.store.models import LetterStatus  # noqa: PLC0415
    from mailman.services.store.queries import letters  # noqa: PLC0415
    from mailman.services.store.repo import Repo  # noqa: PLC0415
    from mailman.supervisor import Supervisor, await_exit  # noqa: PLC0415

    configure_logging(LogFormat.JSON, "warning")
    context = DeliveryContext(settings=DeliverySettings(message_domain=MESSAGE_DOMAIN))
    config = ApplicationConfig(
        database_url=uri,
        mailer=MailerConfig(url=f"smtp://127.0.0.1:{port}", pool_size=pool_size()),
        context=context,
    )
    tree = await Application.start_link(config)
    try:
        pool = await Repo.pool(context.repo)
        before = (time.process_time(), process_cpu(sink_pid), postgres_cpu(postmaster))
        started = time.perf_counter()
        await letter_commands.send_letter(context, letter_id)
        while (service := LetterDeliveryDispatcher.running(context, letter_id)) is not None:
            await await_exit(service)
        letter = await letters.get_letter(pool, letter_id)
        while letter.status is LetterStatus.SENDING:  # a restart in progress: wait for it to settle
            await asyncio.sleep(0.01)
            while (service := LetterDeliveryDispatcher.running(context, letter_id)) is not None:
                await await_exit(service)
            letter = await letters.get_letter(pool, letter_id)
        elapsed = time.perf_counter() - started
        after = (time.process_time(), process_cpu(sink_pid), postgres_cpu(postmaster))
    finally:
        await Supervisor.stop(tree)
    return {
        "status": letter.status.value,
        "delivered": letter.mail_order.get("delivered"),
        "elapsed": elapsed,
        "cpu": [b - a for a, b in zip(before, after, strict=True)],
        "peak_rss_mb": peak_rss_mb(),
    }


def engine_run_in_subprocess(
    uri: str, port: int, letter_id: int, sink_pid: int, postmaster: int, *, profile: str | None
) -> dict[str, Any]:
    command = [sys.executable]
    if profile:
        command += ["-m", "cProfile", "-o", profile]
    command += [__file__, "--engine-run", json.dumps([uri, port, letter_id, sink_pid, postmaster])]
    output = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------- the whole run


@dataclass
class BareResult:
    rate: float
    cpu_bench: float
    cpu_sink: float


@dataclass
class EngineResult:
    audience: int
    rate: float
    cpu_bench: float
    cpu_sink: float
    cpu_postgres: float
    peak_rss_mb: float
    received: int
    status: str

    @property
    def ok(self) -> bool:
        return self.received == self.audience and self.status == "sent"


def measure_bare(sink: Sink, messages: list[tuple[str, bytes]]) -> BareResult:
    """One run of the bare pool; checks that the sink got every message."""
    sink.reset()
    sink_cpu = process_cpu(sink.pid)
    rate, cpu = asyncio.run(bare_rate(sink.port, messages))
    sink_cpu = (process_cpu(sink.pid) - sink_cpu) / len(messages) * 1000
    received = sink.count()
    if received != len(messages):
        raise RuntimeError(f"the sink received {received} messages of {len(messages)}")
    return BareResult(rate, cpu, sink_cpu)


def measure_engine(
    uri: str, sink: Sink, postmaster: int, audience: int, *, run: int, profile: str | None
) -> EngineResult:
    letter_id = asyncio.run(prepare_letter(uri, audience, run))
    sink.reset()
    outcome = engine_run_in_subprocess(uri, sink.port, letter_id, sink.pid, postmaster, profile=profile)
    received = sink.count()
    cpu_bench, cpu_sink, cpu_postgres = (c / audience * 1000 for c in outcome["cpu"])
    return EngineResult(
        audience=audience,
        rate=audience / outcome["elapsed"],
        cpu_bench=cpu_bench,
        cpu_sink=cpu_sink,
        cpu_postgres=cpu_postgres,
        peak_rss_mb=outcome["peak_rss_mb"],
        received=received,
        status=outcome["status"],
    )


def report_profile(path: str, result: EngineResult, bare: BareResult) -> None:
    import pstats  # noqa: PLC0415

    print(
        f"engine: letter to {result.audience:,} under cProfile: {result.rate:,.0f} msg/s "
        f"(bare {bare.rate:,.0f} msg/s; the profiler slows the engine down), sink got {result.received:,}"
    )
    stats = pstats.Stats(path)
    stats.sort_stats(pstats.SortKey.TIME).print_stats(25)
    stats.sort_stats(pstats.SortKey.CUMULATIVE).print_stats("mailman", 30)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f}"


@dataclass
class PairedRounds:
    """The rounds of one audience size: each a bare run and the engine run right after it."""

    audience: int
    rounds: list[tuple[BareResult, EngineResult]]

    def median(self, figure: Callable[[BareResult, EngineResult], float]) -> float:
        return statistics.median(figure(bare, engine) for bare, engine in self.rounds)

    @property
    def ratios(self) -> list[float]:
        return [engine.rate / bare.rate for bare, engine in self.rounds]

    @property
    def ok(self) -> bool:
        return all(engine.ok for _, engine in self.rounds)


@dataclass(frozen=True, slots=True)
class CpuLayout:
    """Which CPUs the relay (the sink) and the sender's side run on; None: the scheduler's choice."""

    relay: frozenset[int] | None
    sender: frozenset[int] | None

    @classmethod
    def choose(cls, pin: bool) -> CpuLayout:
        usable = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if not pin or len(usable) < 2:
            return cls(None, None)
        return cls(frozenset(usable[:1]), frozenset(usable[1:]))

    def pin_sender(self) -> None:
        """Pin this process; Postgres and the engine's processes, started after, inherit it."""
        if self.sender is not None:
            os.sched_setaffinity(0, self.sender)

    def pin_relay(self, pid: int) -> None:
        if self.relay is not None:
            os.sched_setaffinity(pid, self.relay)

    def __str__(self) -> str:
        if self.relay is None or self.sender is None:
            return "not pinned"
        return f"sink on CPU {_cpus(self.relay)}, bench + engine + Postgres on CPU {_cpus(self.sender)}"


def _cpus(cpus: frozenset[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))


def main(quick: bool, profile: str | None, rounds: int, *, pin: bool) -> None:
    audiences = (2_000, 10_000) if quick else (10_000, 100_000)
    if profile:
        audiences, rounds = audiences[:1], 1
    load = os.getloadavg()[0]
    layout = CpuLayout.choose(pin)
    layout.pin_sender()
    pgdata = tempfile.mkdtemp(prefix="mailman-bench-pg-")
    server = start_postgres(pgdata)
    sink = Sink()
    layout.pin_relay(sink.pid)
    measured: list[PairedRounds] = []
    try:
        uri = server.get_uri("bench")
        postmaster = int(Path(pgdata, "postmaster.pid").read_text().split()[0])
        asyncio.run(create_database(server.get_uri(), uri))
        # The bare pool sends the messages of the same audience: as many, as long a run (the rates
        # of this machine drift over tens of seconds; a short bare run beside a long engine run
        # would compare two different machines).
        messages = prebuilt_messages(max(audiences))
        letters = itertools.count(1)
        for audience in audiences:
            paired = PairedRounds(audience, [])
            for _ in range(rounds):
                # The bare limit right before each engine run, so that both see the same machine.
                bare = measure_bare(sink, messages[:audience])
                engine = measure_engine(uri, sink, postmaster, audience, run=next(letters), profile=profile)
                paired.rounds.append((bare, engine))
            measured.append(paired)
    finally:
        sink.stop()
        server.cleanup()
        shutil.rmtree(pgdata, ignore_errors=True)
    if profile:
        bare, engine = measured[0].rounds[0]
        report_profile(profile, engine, bare)
        return

    header = ("", "rate", "vs bare", "CPU ms per 1,000 msgs: bench | sink | postgres", "peak RSS", "sink got")
    rows = []
    for paired in measured:
        rows.append(
            (
                f"bare: {pool_size()} aiosmtplib connections, no database, new one every {RECYCLE_AFTER}",
                f"{paired.median(lambda b, _: b.rate):,.0f} msg/s",
                "",
                f"{_ms(paired.median(lambda b, _: b.cpu_bench))} | "
                f"{_ms(paired.median(lambda b, _: b.cpu_sink))} | -",
                "",
                f"{paired.audience:,} each",
            )
        )
        ratios = paired.ratios
        rows.append(
            (
                f"engine: a letter to {paired.audience:,} (pool of {pool_size()})",
                f"{paired.median(lambda _, e: e.rate):,.0f} msg/s",
                f"{statistics.median(ratios):.0%} ({min(ratios):.0%}-{max(ratios):.0%}; target >= 80%)",
                f"{_ms(paired.median(lambda _, e: e.cpu_bench))} | "
                f"{_ms(paired.median(lambda _, e: e.cpu_sink))} | "
                f"{_ms(paired.median(lambda _, e: e.cpu_postgres))}",
                f"{max(e.peak_rss_mb for _, e in paired.rounds):,.1f} MB",
                f"{paired.audience:,} each" if paired.ok else "MISMATCH",
            )
        )
    small, large = (max(e.peak_rss_mb for _, e in paired.rounds) for paired in measured)
    rows.append(
        (
            f"peak RSS growth, {measured[0].audience:,} -> {measured[1].audience:,} recipients",
            "",
            "",
            "",
            f"{large - small:+,.1f} MB (target <= 50 MB)",
            "",
        )
    )
    print(
        f"mailman delivery benchmark ({'quick' if quick else 'full'}; {os.cpu_count()} CPUs, load {load:.1f} "
        f"at start; {layout}; sink: aiosmtpd in another process; Postgres: embedded, fsync off; "
        f"medians of {rounds} paired rounds: the bare pool, then the engine, the same messages)"
    )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    for paired in measured:
        print(
            f"rounds at {paired.audience:,}: engine/bare "
            + ", ".join(f"{e.rate:,.0f}/{b.rate:,.0f} = {e.rate / b.rate:.0%}" for b, e in paired.rounds)
        )
    totals = ", ".join(
        f"bare {_ms(p.median(lambda b, _: b.cpu_bench + b.cpu_sink))} / "
        f"engine {_ms(p.median(lambda _, e: e.cpu_bench + e.cpu_sink + e.cpu_postgres))} ({p.audience:,})"
        for p in measured
    )
    left = f"CPU {_cpus(layout.sender)}" if layout.sender is not None else f"the {os.cpu_count()} CPUs"
    print(
        f"CPU ms per 1,000 msgs, all processes: {totals}. The sink alone needs most of a core, so at the "
        f"bare rate the engine and Postgres must fit in what is left of {left}."
    )
    fast, slow = message_costs()
    print(
        f"a message per recipient: {fast * 1e6:,.1f} us from the letter's template, "
        f"{slow * 1e6:,.0f} us built with email.message.EmailMessage ({slow / fast:,.0f}x)"
    )
    if not all(paired.ok for paired in measured):
        sys.exit("the sink did not receive exactly the audience")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 and 10,000 recipients")
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="only the smaller engine run, under cProfile: stats into FILE, hot spots printed",
    )
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds per audience size (default 3)")
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="leave the sink, the bench, the engine and Postgres where the scheduler puts them",
    )
    parser.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--engine-run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        run_sink()
    elif args.engine_run:
        print(json.dumps(asyncio.run(engine_run(*json.loads(args.engine_run)))))
    else:
        main(args.quick, args.profile, args.rounds, pin=args.pin)

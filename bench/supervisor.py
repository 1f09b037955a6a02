"""Benchmarks of the supervision library, each beside the bare-asyncio figure measured in the same run.

Run with ``make bench`` (or ``python bench/supervisor.py [--quick]``). It prints one table:

- start+exit of temporary children under a DynamicSupervisor, per second, against
  ``asyncio.create_task`` of the same no-op coroutine (target: at least 25% of the bare rate);
- GenServer call round trip, median microseconds, against a bare ``Queue`` + ``Future`` round
  trip (target: at most 2x);
- supervisor restart latency (child killed -> replacement running), median microseconds;
- ``async_stream_nolink`` over 100,000 items at max_concurrency 50, items per second, against
  bare tasks bounded by a ``Semaphore(50)``;
- memory per idle GenServer, against an idle task blocked on its own ``Queue``.

Each comparison alternates rounds of mailman and of bare asyncio and reports medians, and the
median of the per-round ratios, so that a busy machine disturbs both sides alike. Nothing here is
asserted: the figures are for reading and for the notes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import statistics
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

from mailman import supervisor as otp  # noqa: E402 - structlog must be configured first


async def _noop() -> None:
    return None


async def _start_noop() -> otp.Pid:
    return otp.spawn_link(_noop)


TEMPORARY_NOOP = otp.ChildSpec(id="noop", start=_start_noop, restart=otp.Restart.TEMPORARY)


async def children_rate(n: int) -> float:
    """Temporary children started one ``await start_child`` after another, and exited, per second."""
    sup = await otp.DynamicSupervisor.start_link()
    exited = 0
    all_exited = asyncio.get_running_loop().create_future()

    def on_exit(_event: otp.EventName, _meta: Any) -> None:
        nonlocal exited
        exited += 1
        if exited == n and not all_exited.done():
            all_exited.set_result(None)

    otp.attach("bench-exits", ("supervisor", "child", "exited"), on_exit)
    try:
        started = time.perf_counter()
        for _ in range(n):
            await otp.DynamicSupervisor.start_child(sup, TEMPORARY_NOOP)
        await all_exited
        elapsed = time.perf_counter() - started
    finally:
        otp.detach("bench-exits")
        await otp.DynamicSupervisor.stop(sup)
    return n / elapsed


async def bare_task_rate(n: int) -> float:
    """``asyncio.create_task`` of the same no-op, n times, then all awaited, per second."""
    started = time.perf_counter()
    tasks = [asyncio.create_task(_noop()) for _ in range(n)]
    await asyncio.gather(*tasks)
    return n / (time.perf_counter() - started)


class Echo(otp.GenServer[None]):
    async def handle_call(self, request: Any, from_: otp.From, state: None) -> otp.Reply[None]:
        return otp.Reply(request, state)


async def call_round_trip(n: int) -> float:
    """Median over batches of 1,000 of the mean GenServer.call round trip, in microseconds."""
    pid = await Echo.start_link(None)
    batches = []
    for _ in range(n // 1000):
        started = time.perf_counter()
        for i in range(1000):
            await otp.GenServer.call(pid, i)
        batches.append((time.perf_counter() - started) / 1000 * 1e6)
    await otp.GenServer.stop(pid)
    return statistics.median(batches)


async def bare_round_trip(n: int) -> float:
    """The same with a bare asyncio.Queue of (request, Future) and a server task."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, asyncio.Future[int]]] = asyncio.Queue()

    async def server() -> None:
        while True:
            request, future = await queue.get()
            future.set_result(request)

    task = asyncio.create_task(server())
    batches = []
    for _ in range(n // 1000):
        started = time.perf_counter()
        for i in range(1000):
            future: asyncio.Future[int] = loop.create_future()
            queue.put_nowait((i, future))
            await future
        batches.append((time.perf_counter() - started) / 1000 * 1e6)
    task.cancel()
    return statistics.median(batches)


class Idle(otp.GenServer[None]):
    pass


async def restart_latency(n: int) -> float:
    """Median microseconds from killing a one_for_one child to its replacement running."""
    sup = await otp.Supervisor.start_link(
        otp.SupervisorSpec(
            [Idle.child_spec(None, id="idle")],
            strategy=otp.Strategy.ONE_FOR_ONE,
            max_restarts=n + 1,
            max_seconds=3600,
        )
    )
    loop = asyncio.get_running_loop()
    restarted: list[asyncio.Future[None]] = []

    def on_restart(_event: otp.EventName, _meta: Any) -> None:
        if restarted and not restarted[-1].done():
            restarted[-1].set_result(None)

    otp.attach("bench-restarts", ("supervisor", "child", "restarted"), on_restart)
    samples = []
    try:
        for _ in range(n):
            (child,) = await otp.Supervisor.which_children(sup)
            assert isinstance(child.pid, otp.Pid)
            restarted.append(loop.create_future())
            started = time.perf_counter()
            otp.exit(child.pid, otp.KILL)
            await restarted[-1]
            samples.append((time.perf_counter() - started) * 1e6)
    finally:
        otp.detach("bench-restarts")
        await otp.Supervisor.stop(sup)
    return statistics.median(samples)


async def _double(x: int) -> int:
    return 2 * x


async def stream_rate(n: int) -> float | None:
    """async_stream_nolink over n items at max_concurrency 50, items per second."""
    task_supervisor = getattr(otp, "TaskSupervisor", None)
    if task_supervisor is None:
        return None
    sup = await task_supervisor.start_link()
    started = time.perf_counter()
    count = 0
    async for _result in task_supervisor.async_stream_nolink(sup, range(n), _double, max_concurrency=50):
        count += 1
    elapsed = time.perf_counter() - started
    assert count == n
    await otp.DynamicSupervisor.stop(sup)
    return n / elapsed


async def bare_stream_rate(n: int) -> float:
    """Bare tasks bounded by a Semaphore(50), results collected in order, items per second."""
    semaphore = asyncio.Semaphore(50)
    started = time.perf_counter()

    async def one(x: int) -> int:
        try:
            return await _double(x)
        finally:
            semaphore.release()

    pending: list[asyncio.Task[int]] = []
    for x in range(n):
        await semaphore.acquire()
        pending.append(asyncio.create_task(one(x)))
        if len(pending) >= 1000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    return n / (time.perf_counter() - started)


async def memory_per_server(n: int) -> float:
    """Bytes allocated per idle GenServer (tracemalloc), n servers alive at once."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    pids = [await Idle.start(None) for _ in range(n)]
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    for pid in pids:
        await otp.GenServer.stop(pid)
    return (after - before) / n


async def memory_per_bare_task(n: int) -> float:
    """Bytes allocated per idle asyncio task blocked on its own Queue."""

    async def idle(queue: asyncio.Queue[None]) -> None:
        await queue.get()

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    queues: list[asyncio.Queue[None]] = [asyncio.Queue() for _ in range(n)]
    tasks = [asyncio.create_task(idle(q)) for q in queues]
    await asyncio.sleep(0)  # let every task reach its await: that is the idle state measured
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    for q in queues:
        q.put_nowait(None)
    await asyncio.gather(*tasks)
    return (after - before) / n


async def paired(
    rounds: int, ours: Callable[[], Awaitable[float]], bare: Callable[[], Awaitable[float]]
) -> tuple[float, float, float]:
    """Alternate rounds of ours and bare; medians of each and the median of the per-round ratios.

    Pairing each round of ours with a round of bare taken right after it keeps a busy machine from
    flattering either side: both see the same load.
    """
    ours_figures, bare_figures, ratios = [], [], []
    for _ in range(rounds):
        mine, theirs = await ours(), await bare()
        ours_figures.append(mine)
        bare_figures.append(theirs)
        ratios.append(mine / theirs)
    return statistics.median(ours_figures), statistics.median(bare_figures), statistics.median(ratios)


async def main(quick: bool) -> None:
    scale = 10 if quick else 1
    rounds = 3 if quick else 5
    n_children = 100_000 // scale
    n_calls = 100_000 // scale
    n_stream = 100_000 // scale

    children, bare_children, children_ratio = await paired(
        rounds, lambda: children_rate(n_children), lambda: bare_task_rate(n_children)
    )
    call, bare_call, call_ratio = await paired(
        rounds, lambda: call_round_trip(n_calls), lambda: bare_round_trip(n_calls)
    )
    restart = await restart_latency(2_000 // scale)
    stream = await stream_rate(n_stream)
    bare_stream = await bare_stream_rate(n_stream)
    memory = await memory_per_server(10_000 // scale)
    bare_memory = await memory_per_bare_task(10_000 // scale)

    rows = [
        (
            "child start+exit (DynamicSupervisor, temporary)",
            f"{children:,.0f}/s",
            f"{bare_children:,.0f}/s (create_task)",
            f"{children_ratio:.0%} of bare (target >= 25%)",
        ),
        (
            "GenServer.call round trip (median)",
            f"{call:.1f} us",
            f"{bare_call:.1f} us (Queue+Future)",
            f"{call_ratio:.2f}x bare (target <= 2x)",
        ),
        ("restart latency, one_for_one (median)", f"{restart:.0f} us", "-", ""),
        (
            "async_stream_nolink, max_concurrency 50",
            "n/a" if stream is None else f"{stream:,.0f} items/s",
            f"{bare_stream:,.0f} items/s (Semaphore)",
            "" if stream is None else f"{stream / bare_stream:.0%} of bare",
        ),
        (
            "memory per idle GenServer",
            f"{memory:,.0f} B",
            f"{bare_memory:,.0f} B (task+Queue)",
            f"{memory / bare_memory:.1f}x bare",
        ),
    ]
    print(
        f"mailman.supervisor benchmarks ({'quick' if quick else 'full'}: "
        f"{n_children:,} children, {n_calls:,} calls, {n_stream:,} stream items)"
    )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the work, one round")
    asyncio.run(main(parser.parse_args().quick))

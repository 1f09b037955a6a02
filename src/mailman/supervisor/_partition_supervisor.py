"""PartitionSupervisor: one supervisor running N copies of a child, with keys routed to a copy.

A single process (a DynamicSupervisor starting every job, a cache server) can become a
bottleneck. When its state splits cleanly by some key, a *partition supervisor* starts one copy
of it per partition and routes each key to one copy: ``PartitionSupervisor.via(name, key)``
addresses "the partition responsible for ``key``" wherever a server is expected.

Example::

    await PartitionSupervisor.start_link(
        DynamicSupervisor.child_spec(), name="workers", partitions=4
    )
    await DynamicSupervisor.start_child(PartitionSupervisor.via("workers", job_id), Job.child_spec(job_id))
    await PartitionSupervisor.which_children("workers")      # ids 0..3

Concepts:

- It is a :class:`Supervisor` (same strategies, restart intensity, shutdown order) whose children
  are copies of ``child_spec`` with ids ``0 .. partitions-1``. ``with_arguments(args, partition)``
  rewrites each copy's ``args``, so a partition can know its number.
- Routing: an integer key goes to ``abs(key) % partitions``; any other key goes to
  ``crc32(canonical encoding of key) % partitions``. The encoding covers None, numbers, str,
  bytes, tuples/lists, sets, dicts, enums, dataclasses and pids, so the route of such a key is
  **stable across runs and machines** (unlike Python's ``hash()``, randomised per process, and
  unlike ``:erlang.phash2``, which Elixir documents as possibly changing between versions).
  Equal keys always take the same route (``1``, ``1.0`` and ``True`` included); other hashable
  keys are routed by ``hash()``: consistent within a run, not across runs.
- A via name of a partition supervisor only *finds* processes; registering a process under one
  raises ``ValueError``.

Deviations from Elixir, and why:

- Arguments are keyword arguments of ``start_link`` instead of a keyword list; ``child_spec`` is a
  :class:`ChildSpec` (build it with ``X.child_spec(...)``).
- The routing hash is crc32 of a canonical encoding instead of ``phash2``: Python has no stable
  term hash, and a stable one lets routing be tested and reasoned about.
- ``resize`` (Elixir's ``resize!/2``) is a coroutine returning the previous count and raises
  ``ValueError`` for a count outside ``0..initial``.

See also: Elixir ``PartitionSupervisor``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import os
import zlib
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from mailman.supervisor._child_spec import ChildCounts, ChildInfo, ChildSpec, ChildType, Restart
from mailman.supervisor._clock import INFINITY
from mailman.supervisor._exceptions import NoProcessError
from mailman.supervisor._exit_reason import NORMAL, ExitReason
from mailman.supervisor._names import Name, Via, whereis
from mailman.supervisor._process import Pid, Process, current_process
from mailman.supervisor._supervisor import Strategy, Supervisor, SupervisorSpec

__all__ = ["PartitionSupervisor"]

WithArguments = Callable[[tuple[Any, ...], int], tuple[Any, ...]]


class _Partitions:
    """Routing data read synchronously by the via name: how many partitions, and their pids."""

    __slots__ = ("count", "lock", "maximum", "pids")

    def __init__(self, count: int) -> None:
        self.count = count
        self.maximum = count
        self.pids: list[Pid | None] = [None] * count
        self.lock = asyncio.Lock()


# The routing table of each running partition supervisor, by its pid; an exit hook on the
# supervisor removes the entry whichever way it ends.
_tables: dict[Pid, _Partitions] = {}


class PartitionSupervisor:
    """Runs one copy of a child per partition and routes keys to copies (Elixir's ``PartitionSupervisor``)."""

    @staticmethod
    async def start_link(
        child_spec: ChildSpec,
        *,
        name: Name,
        partitions: int | None = None,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        max_restarts: int = 3,
        max_seconds: int = 5,
        with_arguments: WithArguments | None = None,
    ) -> Pid:
        """Start the supervisor and its ``partitions`` children (default: ``os.cpu_count()``).

        Raises as :meth:`Supervisor.start_link` does; ``ValueError``/``TypeError`` for bad options.
        """
        if not isinstance(child_spec, ChildSpec):
            raise TypeError(f"expected child_spec to be a ChildSpec, got {child_spec!r}")
        if not isinstance(name, str | Via) or not name:
            raise TypeError(f"expected name to be a local name (str) or a Via, got {name!r}")
        if partitions is None:
            partitions = os.cpu_count() or 1
        if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
            raise ValueError(f"expected partitions to be a positive int, got {partitions!r}")
        if with_arguments is not None and not callable(with_arguments):
            raise TypeError(f"expected with_arguments(args, partition) -> args, got {with_arguments!r}")
        table = _Partitions(partitions)
        children = []
        for partition in range(partitions):
            args = child_spec.args if with_arguments is None else with_arguments(child_spec.args, partition)
            if not isinstance(args, tuple):
                raise TypeError(f"expected with_arguments to return a tuple of arguments, got {args!r}")
            start = functools.partial(_start_partition, table, partition, child_spec.start)
            children.append(dataclasses.replace(child_spec, id=partition, start=start, args=args))
        spec = SupervisorSpec(children, strategy=strategy, max_restarts=max_restarts, max_seconds=max_seconds)
        return await _PartitionSupervisorModule.start_link((spec, table), name=name)

    @staticmethod
    def child_spec(
        child_spec: ChildSpec,
        *,
        name: Name,
        partitions: int | None = None,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        max_restarts: int = 3,
        max_seconds: int = 5,
        with_arguments: WithArguments | None = None,
        id: Hashable | None = None,  # noqa: A002 - the child spec field is called id
        restart: Restart = Restart.PERMANENT,
    ) -> ChildSpec:
        """The spec to run a partition supervisor under another; its id is the name (or via key)."""
        start = functools.partial(
            PartitionSupervisor.start_link,
            name=name,
            partitions=partitions,
            strategy=strategy,
            max_restarts=max_restarts,
            max_seconds=max_seconds,
            with_arguments=with_arguments,
        )
        default_id = name.key if isinstance(name, Via) else name
        return ChildSpec(
            id=default_id if id is None else id,
            start=start,
            args=(child_spec,),
            restart=restart,
            shutdown=INFINITY,
            type=ChildType.SUPERVISOR,
        )

    @staticmethod
    def via(name: Name, key: object) -> Via:
        """The partition responsible for ``key``: ``{:via, PartitionSupervisor, {name, key}}``."""
        if not isinstance(name, str | Via) or not name:
            raise TypeError(f"expected name to be a local name (str) or a Via, got {name!r}")
        return Via(_PartitionVia(name), key)

    @staticmethod
    def partitions(name: Name) -> int:
        """How many partitions the supervisor routes to. :class:`NoProcessError` if it is not running."""
        return _routing(name).count

    @staticmethod
    async def which_children(name: Name) -> list[ChildInfo]:
        """One row per partition; the id is the partition number."""
        return await Supervisor.which_children(name)

    @staticmethod
    async def count_children(name: Name) -> ChildCounts:
        """``specs`` is the number of partitions, ``active`` how many run."""
        return await Supervisor.count_children(name)

    @staticmethod
    async def stop(name: Name, reason: ExitReason = NORMAL, timeout: float = INFINITY) -> None:
        """Stop the supervisor: partitions are stopped in reverse order first."""
        await Supervisor.stop(name, reason, timeout)

    @staticmethod
    async def resize(name: Name, partitions: int) -> int:
        """Route to ``partitions`` partitions from now on; return the previous count.

        Shrinking terminates the partitions past the new count (their specs stay); growing
        restarts them. The count must be between 0 and the number the supervisor started with.
        """
        if isinstance(partitions, bool) or not isinstance(partitions, int):
            raise TypeError(f"expected partitions to be an int, got {partitions!r}")
        table = _routing(name)
        async with table.lock:
            current = table.count
            if not 0 <= partitions <= table.maximum:
                raise ValueError(f"expected partitions between 0 and {table.maximum}, got {partitions}")
            if partitions > current:
                for partition in range(current, partitions):
                    await Supervisor.restart_child(name, partition)
                table.count = partitions
            elif partitions < current:
                table.count = partitions  # stop routing first, then stop the partitions
                for partition in range(partitions, current):
                    await Supervisor.terminate_child(name, partition)
            return current


class _PartitionSupervisorModule(Supervisor):
    """The supervisor behind a PartitionSupervisor: publishes the routing table while it runs."""

    def init(self, arg: Any) -> SupervisorSpec:
        spec, table = arg
        assert isinstance(spec, SupervisorSpec)
        me = current_process()
        assert me is not None  # Supervisor.init runs inside the supervisor process
        _tables[me.pid] = table
        me.add_exit_hook(("partition_supervisor", table), _forget_table)
        return spec


def _forget_table(process: Process, _reason: ExitReason) -> None:
    _tables.pop(process.pid, None)


async def _start_partition(table: _Partitions, partition: int, start: Callable[..., Any], *args: Any) -> Pid:
    """Start one partition (at boot and at every restart) and record its pid for routing."""
    pid: Pid = await start(*args)
    if isinstance(pid, Pid):
        table.pids[partition] = pid
    return pid


def _routing(name: Name) -> _Partitions:
    pid = whereis(name)
    table = None if pid is None else _tables.get(pid)
    if table is None:
        raise NoProcessError(name)
    return table


@dataclass(frozen=True, slots=True)
class _PartitionVia:
    """The via module of :meth:`PartitionSupervisor.via`: lookup only."""

    supervisor: Name

    def __repr__(self) -> str:
        return f"PartitionSupervisor({self.supervisor!r})"

    def register_name(self, key: object, pid: Pid) -> Pid | None:
        raise ValueError("a PartitionSupervisor via name cannot be given on registration")

    def unregister_name(self, key: object) -> None:
        raise ValueError("a PartitionSupervisor via name cannot be given on unregistration")

    def whereis_name(self, key: object) -> Pid | None:
        supervisor = whereis(self.supervisor)
        table = None if supervisor is None else _tables.get(supervisor)
        if table is None:
            return None
        if table.count == 0:
            raise ValueError(f"PartitionSupervisor {self.supervisor!r} has zero partitions")
        pid = table.pids[_partition_for(key, table.count)]
        return pid if pid is not None and pid._process.reason is None else None


# -------------------------------------------------------------------- routing


def _partition_for(key: object, partitions: int) -> int:
    """The partition of ``key`` among ``partitions``: ``abs(key) % partitions`` for integers,
    else crc32 of :func:`_canonical` ``(key)``, so that the route is stable across runs."""
    if isinstance(key, int):
        return abs(key) % partitions
    if isinstance(key, float) and key.is_integer():
        return abs(int(key)) % partitions
    return zlib.crc32(_canonical(key)) % partitions


def _canonical(key: object) -> bytes:
    """Bytes that equal keys share, independent of ``PYTHONHASHSEED`` for the types listed."""
    match key:
        case None:
            return b"N"
        case bool() | int():
            return b"i%d" % key
        case float() if key.is_integer():
            return b"i%d" % int(key)
        case float():
            return b"f" + repr(key).encode()
        case str():
            return b"s" + key.encode("utf-8", "surrogatepass")
        case bytes() | bytearray():
            return b"b" + bytes(key)
        case tuple() | list():
            return b"t" + _join(_canonical(item) for item in key)
        case frozenset() | set():
            return b"S" + _join(sorted(_canonical(item) for item in key))
        case dict():
            return b"m" + _join(sorted(_join((_canonical(k), _canonical(v))) for k, v in key.items()))
        case Pid():
            return b"p%d" % key.id
        case enum.Enum():
            return b"e" + type(key).__qualname__.encode() + b"." + key.name.encode()
        case _ if dataclasses.is_dataclass(key) and not isinstance(key, type):
            values = tuple(getattr(key, f.name) for f in dataclasses.fields(key) if f.compare)
            return b"d" + type(key).__qualname__.encode() + _canonical(values)
    try:
        return b"h%d" % hash(key)
    except TypeError:
        raise TypeError(f"expected a routing key that is hashable or plain data, got {key!r}") from None


def _join(parts: Any) -> bytes:
    """Length-prefix each part, so that nested encodings cannot run into each other."""
    return b"".join(b"%d:%s" % (len(part), part) for part in parts)

"""Registry: a key-value store of processes, where an entry lives exactly as long as its process.

A *registry* maps keys to the processes that registered them, each with a value. A process
registers **itself** (never another process); when it ends, for any reason, its keys go away.
With ``Keys.UNIQUE`` a key names at most one process, so the registry is a name service and its
:meth:`Registry.via` names can be given to ``start_link(name=...)``; with ``Keys.DUPLICATE`` a key
may be held by any number of processes (even several times by one), which makes it a pub-sub
topic list or a property store.

Example::

    await Registry.start_link(keys=Keys.UNIQUE, name="sessions")

    # inside a process:
    Registry.register("sessions", "alice", {"since": 3})
    Registry.lookup("sessions", "alice")          # [(<0.42.0>, {"since": 3})]

    # as a name:
    pid = await Counter.start_link(0, name=Registry.via("sessions", ("counter", 7)))
    await GenServer.call(Registry.via("sessions", ("counter", 7)), "get")

Concepts:

- The registry is a process (start it under a supervisor with :meth:`Registry.child_spec`,
  before the processes that use it). Its table is plain Python memory that the process owns:
  when the registry process ends, the table is gone and every function raises
  :class:`NoProcessError` for that name.
- Registering links the caller to the registry (as Elixir links it to a partition), and
  unregistering its last key unlinks it. The registry traps exits, so a registered process that
  crashes does not take the registry down; a registry that stops with a reason other than
  ``normal`` takes down the registered processes that do not trap exits.
- Reads (:meth:`lookup`, :meth:`keys`, :meth:`values`, :meth:`count`, :meth:`dispatch`) read the
  table directly, without a message to the registry: they are plain functions.
- ``listeners`` (pids or local names) get :class:`RegisterMessage` / :class:`UnregisterMessage`
  for explicit :meth:`register` / :meth:`unregister` calls (via names included). They are *not*
  told when a process exits; monitor the pid for that.

Deviations from Elixir, and why:

- Keys are removed *synchronously*, at the moment the holder ends, from an exit hook on the
  holder; in Elixir a partition removes them later, on the ``EXIT`` message, so ``lookup`` may
  briefly return dead pids there. Here it never returns a process that has ended (one that has
  been told to die but has not reached its next ``await`` still counts as alive, as it would on
  the BEAM). A unique key whose holder is dead is still replaced by a new ``register``.
- No ``partitions``: one event loop is one thread, so one table has no contention to spread.
- Keys are compared with Python's ``==`` and ``hash`` (so ``1``, ``1.0`` and ``True`` are the same
  key), not Erlang's ``===``; keys must be hashable.
- ``register`` raises :class:`AlreadyRegisteredError` instead of returning
  ``{:error, {:already_registered, pid}}``; ``update_value`` returns None instead of ``:error``.
- No ``match``/``select``/``meta``/``lock``: filter :meth:`lookup`'s list in Python instead.
- Listener names that are not registered when a message is due are skipped (Elixir's ``send``
  to an unregistered name raises).
- The registry is a worker (a GenServer), not a supervisor of partitions, so ``child_spec``'s type
  is ``WORKER``.

See also: Elixir ``Registry``.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mailman.supervisor._child_spec import ChildSpec, ChildType
from mailman.supervisor._exceptions import AlreadyRegisteredError, NoProcessError
from mailman.supervisor._exit_reason import ExitReason
from mailman.supervisor._gen_server import GenServer, Init, NoReply, Stop
from mailman.supervisor._names import Via, whereis
from mailman.supervisor._process import (
    ExitMessage,
    Pid,
    Process,
    current_process,
    require_process,
    send,
    trap_exit,
)

__all__ = ["Keys", "RegisterMessage", "Registry", "UnregisterMessage"]


class Keys(enum.Enum):
    """Whether a key names one process (``UNIQUE``) or any number (``DUPLICATE``)."""

    UNIQUE = "unique"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class RegisterMessage:
    """``{:register, registry, key, pid, value}``: sent to listeners on an explicit register."""

    registry: str
    key: Any
    pid: Pid
    value: Any


@dataclass(frozen=True, slots=True)
class UnregisterMessage:
    """``{:unregister, registry, key, pid}``: sent to listeners on an explicit unregister."""

    registry: str
    key: Any
    pid: Pid


Listener = Pid | str


class _Table:
    """The registry's entries: ``key -> [(pid, value)]`` and, for cleanup, ``pid -> [key]``."""

    __slots__ = ("by_key", "by_pid", "keys", "listeners", "name", "owner")

    def __init__(self, name: str, keys: Keys, listeners: tuple[Listener, ...], owner: Process) -> None:
        self.name = name
        self.keys = keys
        self.listeners = listeners
        self.owner = owner
        self.by_key: dict[Hashable, list[tuple[Pid, Any]]] = {}
        self.by_pid: dict[Pid, list[Hashable]] = {}

    def __repr__(self) -> str:
        return f"<Registry {self.name!r} {self.keys.value}, {sum(map(len, self.by_key.values()))} entries>"


# Exit-hook keys: one hook per (registry, holder) on the holder, one on the registry itself.
_HOLDER_HOOK = "registry_holder"
_OWNER_HOOK = "registry_owner"


class Registry:
    """A key-value store of processes whose entries end with their process (Elixir's ``Registry``)."""

    # ---------------------------------------------------------------- starting

    @classmethod
    async def start_link(cls, *, keys: Keys, name: str, listeners: Sequence[Listener] = ()) -> Pid:
        """Start a registry process linked to the caller, registered under the local ``name``.

        Raises :class:`AlreadyStartedError` if ``name`` is taken.
        """
        return await _RegistryServer.start_link(_check_options(keys, name, listeners), name=name)

    @classmethod
    def child_spec(
        cls,
        *,
        keys: Keys,
        name: str,
        listeners: Sequence[Listener] = (),
        id: Hashable | None = None,  # noqa: A002 - the child spec field is called id
    ) -> ChildSpec:
        """The spec to run a registry under a supervisor; its id is ``name`` unless given."""
        _check_options(keys, name, listeners)
        return ChildSpec(
            id=name if id is None else id,
            start=functools.partial(cls.start_link, keys=keys, name=name, listeners=tuple(listeners)),
            type=ChildType.WORKER,
        )

    # ---------------------------------------------------------------- writing (the caller's own keys)

    @staticmethod
    def register(registry: str, key: Hashable, value: Any = None) -> Pid:
        """Register the calling process under ``key`` with ``value``; return the registry's pid.

        Unique registries raise :class:`AlreadyRegisteredError` (with the holder's ``pid``) when a
        live process holds ``key``, the caller included. Duplicate registries accept any number of
        registrations, even of the same key by the same process. Raises
        :class:`NotAProcessError` outside a process.
        """
        me = require_process("Registry.register()")
        table = _running(registry)
        _register(table, me, key, value)
        return table.owner.pid

    @staticmethod
    def unregister(registry: str, key: Hashable) -> None:
        """Remove every entry of the calling process under ``key``. Always succeeds."""
        me = require_process("Registry.unregister()")
        table = _running(registry)
        _unregister(table, me, key)
        _notify(table, UnregisterMessage(table.name, key, me.pid))

    @staticmethod
    def update_value(registry: str, key: Hashable, fn: Callable[[Any], Any]) -> tuple[Any, Any] | None:
        """Replace the calling process's value under ``key`` by ``fn(old)``: ``(new, old)``.

        None when the caller does not hold ``key`` (Elixir's ``:error``). Unique registries only.
        """
        me = require_process("Registry.update_value()")
        table = _running(registry)
        _require_unique(table, "update_value")
        entries = table.by_key.get(key)
        if not entries or entries[0][0] != me.pid:
            return None
        old = entries[0][1]
        new = fn(old)
        table.by_key[key] = [(me.pid, new)]
        return new, old

    # ---------------------------------------------------------------- reading (any caller)

    @staticmethod
    def lookup(registry: str, key: Hashable) -> list[tuple[Pid, Any]]:
        """Every ``(pid, value)`` under ``key``, in registration order; ``[]`` if none."""
        return list(_running(registry).by_key.get(key, ()))

    @staticmethod
    def keys(registry: str, pid: Pid) -> list[Hashable]:
        """The keys ``pid`` holds, in registration order (repeated if registered repeatedly)."""
        return list(_running(registry).by_pid.get(pid, ()))

    @staticmethod
    def values(registry: str, key: Hashable, pid: Pid) -> list[Any]:
        """The values ``pid`` registered under ``key``."""
        return [value for holder, value in _running(registry).by_key.get(key, ()) if holder == pid]

    @staticmethod
    def count(registry: str) -> int:
        """How many entries the registry holds."""
        return sum(len(entries) for entries in _running(registry).by_key.values())

    @staticmethod
    def dispatch(registry: str, key: Hashable, fn: Callable[[list[tuple[Pid, Any]]], object]) -> None:
        """Call ``fn(entries)`` in the caller with every ``(pid, value)`` under ``key``.

        ``fn`` is not called when there are no entries. It runs in the caller, so an exception it
        raises is the caller's.
        """
        entries = Registry.lookup(registry, key)
        if entries:
            fn(entries)

    # ---------------------------------------------------------------- names

    @staticmethod
    def via(registry: str, key: Hashable, value: Any = None) -> Via:
        """A name held in a unique registry: ``{:via, Registry, {registry, key}}`` (or ``{.., value}``).

        Give it as ``name=`` to ``GenServer.start_link`` or ``Supervisor.start_link`` (the started
        process registers itself, with ``value``), and as the server of ``call``/``cast``/``stop``.
        A taken name makes the start raise :class:`AlreadyStartedError` with the holder's pid.
        Raises ``ValueError`` for a duplicate registry (checked now if it runs, else at use).
        """
        if not isinstance(registry, str) or not registry:
            raise TypeError(f"expected the registry's name (a non-empty str), got {registry!r}")
        _hashable(key)
        table = _find(registry)
        if table is not None:
            _require_unique(table, "via names")
        return Via(_RegistryVia(registry, value), key)


@dataclass(frozen=True, slots=True)
class _RegistryVia:
    """The via module of :meth:`Registry.via`: Erlang's ``register_name``/``whereis_name``/..."""

    registry: str
    value: Any = field(default=None, hash=False)

    def __repr__(self) -> str:
        return f"Registry({self.registry!r})"

    def register_name(self, key: object, pid: Pid) -> Pid | None:
        me = current_process()
        if me is None or me.pid != pid:
            raise ValueError(
                f"a Registry via name registers the calling process only; {pid} is not the caller"
            )
        table = _running(self.registry)
        _require_unique(table, "via names")
        try:
            _register(table, me, key, self.value)
        except AlreadyRegisteredError as taken:
            return taken.pid
        return None

    def unregister_name(self, key: object) -> None:
        table = _find(self.registry)
        if table is None:
            return
        entries = table.by_key.get(key)
        if entries:
            holder = entries[0][0]
            _unregister(table, holder._process, key)
            _notify(table, UnregisterMessage(table.name, key, holder))

    def whereis_name(self, key: object) -> Pid | None:
        # Lenient when the registry is gone: this runs in exit hooks, which must not raise.
        table = _find(self.registry)
        if table is None:
            return None
        _require_unique(table, "via names")
        entries = table.by_key.get(key)
        if not entries:
            return None
        pid = entries[0][0]
        return pid if pid._process.reason is None else None


# -------------------------------------------------------------------- the registry process


class _RegistryServer(GenServer[_Table]):
    """The process that owns the table. It traps exits, as Elixir's partitions do."""

    table: _Table | None = None

    async def init(self, arg: Any) -> Init[_Table]:
        name, keys, listeners = arg
        trap_exit(True)
        me = current_process()
        assert me is not None
        table = _Table(name, keys, listeners, me)
        me.add_exit_hook((_OWNER_HOOK, table), functools.partial(_drop_table, table))
        self.table = table
        return Init(table)

    async def handle_info(self, message: Any, state: _Table) -> NoReply[_Table] | Stop[_Table]:
        if isinstance(message, ExitMessage):
            # A registered process ended; its exit hook already removed its keys.
            return NoReply(state)
        return await super().handle_info(message, state)


def _drop_table(table: _Table, _owner: Process, _reason: ExitReason) -> None:
    """The registry ended (any reason, ``kill`` included): forget every holder's hook."""
    for pid in table.by_pid:
        pid._process.remove_exit_hook((_HOLDER_HOOK, table))
    table.by_pid.clear()
    table.by_key.clear()


# -------------------------------------------------------------------- table operations


def _check_options(
    keys: Keys, name: str, listeners: Sequence[Listener]
) -> tuple[str, Keys, tuple[Listener, ...]]:
    if not isinstance(keys, Keys):
        raise TypeError(f"expected keys to be Keys.UNIQUE or Keys.DUPLICATE, got {keys!r}")
    if not isinstance(name, str) or not name:
        raise TypeError(f"expected the registry's name to be a non-empty str, got {name!r}")
    if isinstance(listeners, str) or not all(isinstance(item, Pid | str) for item in listeners):
        raise TypeError(f"expected listeners to be a sequence of pids or local names, got {listeners!r}")
    return name, keys, tuple(listeners)


def _find(registry: str) -> _Table | None:
    pid = whereis(registry)
    if pid is None:
        return None
    server = pid._process.behaviour
    if not isinstance(server, _RegistryServer):
        raise ValueError(f"{registry!r} names {pid}, which is not a Registry")
    return server.table


def _running(registry: str) -> _Table:
    if not isinstance(registry, str):
        raise TypeError(f"expected the registry's name (a str), got {registry!r}")
    table = _find(registry)
    if table is None:
        error = NoProcessError(registry)
        error.add_note(
            f"unknown registry {registry!r}: no Registry is running under that name; start it with "
            f"Registry.start_link(keys=..., name={registry!r}) or Registry.child_spec(...)"
        )
        raise error
    return table


def _require_unique(table: _Table, what: str) -> None:
    if table.keys is not Keys.UNIQUE:
        raise ValueError(f"{what} need a Keys.UNIQUE registry; {table.name!r} is {table.keys}")


def _hashable(key: object) -> None:
    try:
        hash(key)
    except TypeError:
        raise TypeError(f"expected a hashable registry key, got {key!r}") from None


def _register(table: _Table, holder: Process, key: Hashable, value: Any) -> None:
    _hashable(key)
    if table.keys is Keys.UNIQUE:
        entries = table.by_key.get(key)
        if entries:
            current = entries[0][0]
            if current._process.reason is None:
                raise AlreadyRegisteredError(key, current)
            _unregister(table, current._process, key)  # a dead holder's entry: replace it
        table.by_key[key] = [(holder.pid, value)]
    else:
        table.by_key.setdefault(key, []).append((holder.pid, value))
    held = table.by_pid.get(holder.pid)
    if held is None:
        held = table.by_pid[holder.pid] = []
        holder.add_exit_hook((_HOLDER_HOOK, table), functools.partial(_forget_holder, table))
        holder.links.add(table.owner)
        table.owner.links.add(holder)
    held.append(key)
    _notify(table, RegisterMessage(table.name, key, holder.pid, value))


def _unregister(table: _Table, holder: Process, key: Hashable) -> None:
    """Remove ``holder``'s entries under ``key``; unlink it once it holds nothing."""
    pid = holder.pid
    entries = table.by_key.get(key)
    if entries:
        remaining = [entry for entry in entries if entry[0] != pid]
        if remaining:
            table.by_key[key] = remaining
        else:
            del table.by_key[key]
    held = table.by_pid.get(pid)
    if held is None:
        return
    held[:] = [k for k in held if k != key]
    if not held:
        del table.by_pid[pid]
        holder.remove_exit_hook((_HOLDER_HOOK, table))
        holder.links.discard(table.owner)
        table.owner.links.discard(holder)


def _forget_holder(table: _Table, holder: Process, _reason: ExitReason) -> None:
    """A holder ended: remove all its entries. Listeners are not told (Elixir's rule)."""
    for key in table.by_pid.pop(holder.pid, ()):
        entries = table.by_key.get(key)
        if entries:
            remaining = [entry for entry in entries if entry[0] != holder.pid]
            if remaining:
                table.by_key[key] = remaining
            else:
                del table.by_key[key]


def _notify(table: _Table, message: RegisterMessage | UnregisterMessage) -> None:
    for listener in table.listeners:
        pid = whereis(listener) if isinstance(listener, str) else listener
        if pid is not None:
            send(pid, message)

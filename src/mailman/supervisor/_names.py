"""Names: reach a process without knowing its pid.

A *local name* is a string registered for one live process (Erlang's ``register/2``; Elixir's
``name: MyServer``). A *via name* delegates to a registry module, any object with
``register_name`` / ``unregister_name`` / ``whereis_name`` (Erlang's ``{via, Module, Name}``;
:meth:`Registry.via` builds one). Either way the name is freed when the process ends.

Local names live per event loop, so two ``asyncio.run`` programs (or two tests) never see each
other's names.

Example::

    pid = await Counter.start_link(0, name="counter")
    assert whereis("counter") == pid
    await GenServer.call("counter", "get")

See also: Erlang ``register/2``, ``whereis/1``, ``{via, Module, Name}``; Elixir name registration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from mailman.supervisor._exceptions import NoProcessError
from mailman.supervisor._exit_reason import ExitReason
from mailman.supervisor._loop_local import LoopLocal
from mailman.supervisor._process import ExitHook, Pid, Process

__all__ = ["Name", "ServerRef", "Via", "ViaModule", "register", "registered_name", "unregister", "whereis"]


class ViaModule(Protocol):
    """What a via-name registry implements (Erlang's via callback module)."""

    def register_name(self, key: object, pid: Pid) -> Pid | None:
        """Register ``pid`` under ``key``; return None, or the pid that already holds the key."""
        ...

    def unregister_name(self, key: object) -> None: ...

    def whereis_name(self, key: object) -> Pid | None: ...


@dataclass(frozen=True, slots=True)
class Via:
    """A name held by a registry module: ``{via, Module, Key}``."""

    module: ViaModule
    key: object


Name = str | Via
ServerRef = Pid | Name
"""Whatever addresses a server: a pid, a local name, or a via name."""

_local_names: LoopLocal[dict[str, Process]] = LoopLocal(lambda _loop: {})
_table = _local_names.get


def register_name(name: Name, process: Process) -> Pid | None:
    """Give ``process`` the name; return None, or the live pid that already holds it."""
    if isinstance(name, Via):
        holder = name.module.register_name(name.key, process.pid)
        if holder is None:
            process.add_exit_hook(("name", name), _unregister_via_on_exit(name))
        return holder
    table = _table()
    current = table.get(name)
    if current is not None and current.reason is None:
        return current.pid
    table[name] = process
    process.add_exit_hook(("name", name), _unregister_local_on_exit(table, name))
    return None


def _unregister_local_on_exit(table: dict[str, Process], name: str) -> ExitHook:
    def hook(process: Process, _reason: ExitReason) -> None:
        if table.get(name) is process:
            del table[name]

    return hook


def _unregister_via_on_exit(name: Via) -> ExitHook:
    def hook(process: Process, _reason: ExitReason) -> None:
        if name.module.whereis_name(name.key) == process.pid:
            name.module.unregister_name(name.key)

    return hook


def register(name: str, pid: Pid) -> None:
    """Register a live ``pid`` under a local name: ``register/2``.

    Raises ``ValueError`` if the name is taken or the process is dead (Erlang's ``badarg``).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"expected a non-empty str name, got {name!r}")
    process = pid._process
    if process.reason is not None:
        raise ValueError(f"{pid} is not alive; cannot register it as {name!r}")
    holder = register_name(name, process)
    if holder is not None:
        raise ValueError(f"{name!r} is already registered by {holder}")


def unregister(name: str) -> None:
    """Remove a local name: ``unregister/1``. Raises ``ValueError`` if it is not registered."""
    table = _table()
    process = table.pop(name, None)
    if process is None:
        raise ValueError(f"{name!r} is not registered")
    process.remove_exit_hook(("name", name))


def whereis(name: Name) -> Pid | None:
    """The live pid registered under ``name``, or None: ``whereis/1``."""
    if isinstance(name, Via):
        return name.module.whereis_name(name.key)
    process = _table().get(name)
    if process is None or process.reason is not None:
        return None
    return process.pid


def registered_name(pid: Pid) -> str | None:
    """The local name ``pid`` is registered under, if any (``Process.info(pid, :registered_name)``)."""
    for name, process in _table().items():
        if process.pid is pid and process.reason is None:
            return name
    return None


def resolve(server: ServerRef) -> Process:
    """The live process ``server`` addresses; raises :class:`NoProcessError` if there is none."""
    if isinstance(server, Pid):
        process = server._process
    else:
        pid = whereis(server)
        if pid is None:
            raise NoProcessError(server)
        process = pid._process
    if process.reason is not None:
        raise NoProcessError(server)
    return process

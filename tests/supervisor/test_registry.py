"""Registry: unique and duplicate keys, automatic removal, listeners, via names.

Ported from Elixir's ``registry_test.exs`` ("has unique registrations (across processes)",
"allows process unregistering", "allows listeners", "updates current process value", "dispatches
to a single key", "via callbacks") plus the rules of otp-semantics.md A12. Tests run in a plain
script; what must run inside a registering process runs in a :class:`Holder` through
:func:`run_in`. Nothing sleeps: a process's end is awaited with ``await_exit``, and a listener's
mailbox is read with a call queued behind the messages it got.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from mailman import supervisor as otp
from mailman.supervisor import (
    KILL,
    KILLED,
    NORMAL,
    SHUTDOWN,
    AlreadyRegisteredError,
    AlreadyStartedError,
    Crash,
    From,
    GenServer,
    Init,
    Keys,
    NoProcessError,
    NoReply,
    NotAProcessError,
    Pid,
    RegisterMessage,
    Registry,
    Reply,
    StartError,
    Stop,
    Strategy,
    Supervisor,
    SupervisorSpec,
    UnregisterMessage,
)
from tests.supervisor.processes import WAIT

# -------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Run:
    """Run ``fn`` inside the holder process; its result (or the exception it raised) is the reply."""

    fn: Callable[[], Any]


@dataclass(frozen=True)
class Raised:
    error: Exception


class Holder(GenServer[Any]):
    """A process that runs whatever it is asked to, so a test can act *as* a process."""

    async def handle_call(self, request: Any, from_: From, state: Any) -> Reply[Any] | Stop[Any]:
        match request:
            case Run(fn):
                try:
                    result = fn()
                    if inspect.isawaitable(result):
                        result = await result
                except Exception as exc:
                    return Reply(Raised(exc), state)
                return Reply(result, state)
            case "stop":
                return Stop(NORMAL, state, reply=None)
            case "crash":
                raise RuntimeError("holder crashed")
        raise ValueError(f"unexpected {request!r}")


async def run_in(pid: Pid, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in the process ``pid``; re-raise here what it raised there."""
    result = await GenServer.call(pid, Run(fn), WAIT)
    if isinstance(result, Raised):
        raise result.error
    return result


class Collector(GenServer[list[Any]]):
    """A listener: keeps every message it gets; ``"messages"`` returns them."""

    async def init(self, arg: Any) -> Init[list[Any]]:
        return Init([])

    async def handle_call(self, request: Any, from_: From, state: list[Any]) -> Reply[list[Any]]:
        return Reply(list(state), state)

    async def handle_info(self, message: Any, state: list[Any]) -> NoReply[list[Any]]:
        return NoReply([*state, message])


async def messages_of(collector: Pid) -> list[Any]:
    """What ``collector`` received so far: the call is queued behind every message already sent."""
    return await GenServer.call(collector, "messages", WAIT)  # type: ignore[no-any-return]


class Counter(GenServer[int]):
    async def handle_call(self, request: Any, from_: From, state: int) -> Reply[int]:
        match request:
            case "get":
                return Reply(state, state)
            case ("add", amount):
                return Reply(state + amount, state + amount)
        raise ValueError(f"unexpected {request!r}")


class FailingInit(GenServer[None]):
    async def init(self, arg: Any) -> Init[None]:
        raise RuntimeError("init failed")


@pytest.fixture
def spawn_holder(cleanup: list[Pid]) -> Callable[[], Awaitable[Pid]]:
    async def start() -> Pid:
        pid = await Holder.start()
        cleanup.append(pid)
        return pid

    return start


@pytest.fixture
async def unique(cleanup: list[Pid]) -> str:
    """A running unique registry, named ``"unique"``."""
    cleanup.append(await Registry.start_link(keys=Keys.UNIQUE, name="unique"))
    return "unique"


@pytest.fixture
async def duplicate(cleanup: list[Pid]) -> str:
    """A running duplicate registry, named ``"duplicate"``."""
    cleanup.append(await Registry.start_link(keys=Keys.DUPLICATE, name="duplicate"))
    return "duplicate"


# -------------------------------------------------------------------- tests


class TestStartLink:
    async def test_registers_the_registry_process_under_its_name(self, cleanup: list[Pid]) -> None:
        """The registry is a process reachable by its local name."""
        pid = await Registry.start_link(keys=Keys.UNIQUE, name="names")
        cleanup.append(pid)
        assert otp.whereis("names") == pid

    async def test_table_is_gone_once_the_registry_exits(self, unique: str, spawn_holder: Any) -> None:
        """When the registry process ends its table goes with it: reads raise NoProcessError."""
        holder = await spawn_holder()
        await run_in(holder, lambda: Registry.register(unique, "hello"))
        await GenServer.stop(unique)
        with pytest.raises(NoProcessError):
            Registry.lookup(unique, "hello")

    async def test_rejects_keys_that_are_not_a_keys_member(self) -> None:
        """``keys`` must be Keys.UNIQUE or Keys.DUPLICATE, not a string."""
        with pytest.raises(TypeError, match=r"Keys\.UNIQUE"):
            await Registry.start_link(keys="unique", name="bad")  # type: ignore[arg-type]


class TestChildSpec:
    async def test_runs_under_a_supervisor_with_its_name_as_id(self, cleanup: list[Pid]) -> None:
        """``Registry.child_spec`` starts the registry under a supervisor, with the name as child id."""
        sup = await Supervisor.start_link(
            SupervisorSpec(
                [Registry.child_spec(keys=Keys.UNIQUE, name="supervised")], strategy=Strategy.ONE_FOR_ONE
            )
        )
        cleanup.append(sup)
        [child] = await Supervisor.which_children(sup)
        assert child.id == "supervised"
        assert child.pid == otp.whereis("supervised")
        assert Registry.count("supervised") == 0


class TestRegister:
    async def test_has_unique_registrations(self, unique: str, spawn_holder: Any) -> None:
        """A process registers several keys; registering a key it holds again raises with its pid."""
        holder = await spawn_holder()
        owner = await run_in(holder, lambda: Registry.register(unique, "hello", "value"))
        assert owner == otp.whereis(unique)
        assert Registry.keys(unique, holder) == ["hello"]

        with pytest.raises(AlreadyRegisteredError) as taken:
            await run_in(holder, lambda: Registry.register(unique, "hello", "value"))
        assert taken.value.pid == holder
        assert taken.value.key == "hello"
        assert Registry.keys(unique, holder) == ["hello"]

        await run_in(holder, lambda: Registry.register(unique, "world", "value"))
        assert sorted(Registry.keys(unique, holder)) == ["hello", "world"]

    async def test_has_unique_registrations_across_processes(self, unique: str, spawn_holder: Any) -> None:
        """A second process cannot take a live holder's key; the error carries the holder's pid."""
        first, second = await spawn_holder(), await spawn_holder()
        await run_in(first, lambda: Registry.register(unique, "hello", "value"))
        with pytest.raises(AlreadyRegisteredError) as taken:
            await run_in(second, lambda: Registry.register(unique, "hello", "recent"))
        assert taken.value.pid == first
        assert Registry.keys(unique, second) == []
        assert Registry.lookup(unique, "hello") == [(first, "value")]

    async def test_has_duplicate_registrations(self, duplicate: str, spawn_holder: Any) -> None:
        """A duplicate registry takes the same key any number of times, even from one process."""
        first, second = await spawn_holder(), await spawn_holder()
        await run_in(first, lambda: Registry.register(duplicate, "hello", 1))
        await run_in(first, lambda: Registry.register(duplicate, "hello", 2))
        await run_in(second, lambda: Registry.register(duplicate, "hello", 3))
        assert Registry.keys(duplicate, first) == ["hello", "hello"]
        assert Registry.lookup(duplicate, "hello") == [(first, 1), (first, 2), (second, 3)]
        assert Registry.values(duplicate, "hello", first) == [1, 2]

    async def test_needs_a_calling_process(self, unique: str) -> None:
        """Only a process can register (itself): a plain script gets NotAProcessError."""
        with pytest.raises(NotAProcessError):
            Registry.register(unique, "hello")

    async def test_rejects_an_unhashable_key(self, unique: str, spawn_holder: Any) -> None:
        """Keys must be hashable; the error says so."""
        holder = await spawn_holder()
        with pytest.raises(TypeError, match="hashable"):
            await run_in(holder, lambda: Registry.register(unique, ["not", "hashable"]))

    @pytest.mark.parametrize("ending", ["normal", "crash", "kill"])
    async def test_keys_are_removed_when_the_holder_exits(
        self, unique: str, spawn_holder: Any, ending: str
    ) -> None:
        """Whatever way the holder ends (normally, crashing, killed), its keys are gone at once."""
        holder = await spawn_holder()
        await run_in(holder, lambda: Registry.register(unique, "hello", "value"))
        await run_in(holder, lambda: Registry.register(unique, "world", "value"))
        match ending:
            case "normal":
                await GenServer.call(holder, "stop")
            case "crash":
                GenServer.cast(holder, "crash")  # no handle_cast: the holder raises
            case "kill":
                otp.exit(holder, KILL)
        await otp.await_exit(holder, WAIT)
        assert Registry.lookup(unique, "hello") == []
        assert Registry.keys(unique, holder) == []
        assert Registry.count(unique) == 0

    async def test_key_of_an_exited_holder_can_be_taken(self, unique: str, spawn_holder: Any) -> None:
        """Once its holder has died, a unique key goes to the next process that registers it."""
        first, second = await spawn_holder(), await spawn_holder()
        await run_in(first, lambda: Registry.register(unique, "hello", "old"))
        otp.exit(first, KILL)
        await otp.await_exit(first, WAIT)
        await run_in(second, lambda: Registry.register(unique, "hello", "new"))
        assert Registry.lookup(unique, "hello") == [(second, "new")]

    async def test_a_registered_process_exits_with_the_registry(self, unique: str, spawn_holder: Any) -> None:
        """Registering links the caller to the registry: the registry's shutdown ends the holder too."""
        holder = await spawn_holder()
        await run_in(holder, lambda: Registry.register(unique, "hello"))
        await GenServer.stop(unique, SHUTDOWN)
        assert await otp.await_exit(holder, WAIT) == SHUTDOWN

    async def test_registry_survives_a_registered_process_crashing(
        self, unique: str, spawn_holder: Any
    ) -> None:
        """The registry traps exits: a holder's crash does not take it down."""
        holder = await spawn_holder()
        await run_in(holder, lambda: Registry.register(unique, "hello"))
        GenServer.cast(holder, "crash")
        assert isinstance(await otp.await_exit(holder, WAIT), Crash)
        other = await spawn_holder()
        await run_in(other, lambda: Registry.register(unique, "hello"))
        assert Registry.lookup(unique, "hello") == [(other, None)]


class TestUnregister:
    async def test_unregisters_process_by_key(self, unique: str, spawn_holder: Any) -> None:
        """Unregistering removes the caller's key and leaves its other keys; a missing key is fine."""
        holder = await spawn_holder()
        await run_in(holder, lambda: Registry.unregister(unique, "hello"))
        await run_in(holder, lambda: Registry.register(unique, "hello", "value"))
        await run_in(holder, lambda: Registry.register(unique, "world", "value"))
        await run_in(holder, lambda: Registry.unregister(unique, "hello"))
        assert Registry.keys(unique, holder) == ["world"]
        await run_in(holder, lambda: Registry.unregister(unique, "world"))
        assert Registry.keys(unique, holder) == []
        assert Registry.count(unique) == 0

    async def test_removes_only_the_callers_duplicate_entries(
        self, duplicate: str, spawn_holder: Any
    ) -> None:
        """In a duplicate registry, unregister drops all the caller's entries under the key, no others."""
        first, second = await spawn_holder(), await spawn_holder()
        await run_in(first, lambda: Registry.register(duplicate, "hello", 1))
        await run_in(first, lambda: Registry.register(duplicate, "hello", 2))
        await run_in(second, lambda: Registry.register(duplicate, "hello", 3))
        await run_in(first, lambda: Registry.unregister(duplicate, "hello"))
        assert Registry.lookup(duplicate, "hello") == [(second, 3)]

    async def test_does_not_remove_another_holders_key(self, unique: str, spawn_holder: Any) -> None:
        """A process cannot unregister a unique key that another process holds."""
        first, second = await spawn_holder(), await spawn_holder()
        await run_in(first, lambda: Registry.register(unique, "hello"))
        await run_in(second, lambda: Registry.unregister(unique, "hello"))
        assert Registry.lookup(unique, "hello") == [(first, None)]

    async def test_unregistering_the_last_key_unlinks(self, unique: str, spawn_holder: Any) -> None:
        """With no key left the caller is unlinked: the registry's shutdown no longer ends it."""
        holder = await spawn_holder()
        await run_in(holder, lambda: Registry.register(unique, "hello"))
        await run_in(holder, lambda: Registry.unregister(unique, "hello"))
        await GenServer.stop(unique, SHUTDOWN)
        assert otp.is_alive(holder)
        assert await run_in(holder, lambda: "still here") == "still here"


class TestListeners:
    async def test_allows_listeners(self, cleanup: list[Pid], spawn_holder: Any) -> None:
        """Listeners get RegisterMessage / UnregisterMessage for explicit register and unregister."""
        collector = await Collector.start()
        cleanup.append(collector)
        cleanup.append(await Registry.start_link(keys=Keys.UNIQUE, name="heard", listeners=[collector]))
        holder = await spawn_holder()
        await run_in(holder, lambda: Registry.register("heard", "hello", "world"))
        await run_in(holder, lambda: Registry.unregister("heard", "hello"))
        assert await messages_of(collector) == [
            RegisterMessage("heard", "hello", holder, "world"),
            UnregisterMessage("heard", "hello", holder),
        ]

    async def test_listeners_are_not_told_of_exits(self, cleanup: list[Pid], spawn_holder: Any) -> None:
        """A holder's exit removes its keys silently: listeners must monitor to learn of it."""
        cleanup.append(await Collector.start(name="listener"))
        cleanup.append(await Registry.start_link(keys=Keys.UNIQUE, name="heard", listeners=["listener"]))
        holder = await spawn_holder()
        await run_in(holder, lambda: Registry.register("heard", "hello"))
        otp.exit(holder, KILL)
        await otp.await_exit(holder, WAIT)
        assert await messages_of("listener") == [RegisterMessage("heard", "hello", holder, None)]  # type: ignore[arg-type]


class TestLookup:
    async def test_reads_from_a_plain_script(self, unique: str, spawn_holder: Any) -> None:
        """lookup is a plain function any caller can use; an unknown key gives an empty list."""
        holder = await spawn_holder()
        await run_in(holder, lambda: Registry.register(unique, ("user", 7), {"role": "admin"}))
        assert Registry.lookup(unique, ("user", 7)) == [(holder, {"role": "admin"})]
        assert Registry.lookup(unique, ("user", 8)) == []

    async def test_unknown_registry_raises_no_process(self) -> None:
        """Naming a registry that is not running raises NoProcessError with a note saying so."""
        with pytest.raises(NoProcessError) as error:
            Registry.lookup("missing", "hello")
        assert "unknown registry 'missing'" in "".join(error.value.__notes__)

    async def test_name_of_another_kind_of_process_raises(self, cleanup: list[Pid]) -> None:
        """A name held by a process that is not a registry is refused with ValueError."""
        cleanup.append(await Counter.start(0, name="counter"))
        with pytest.raises(ValueError, match="not a Registry"):
            Registry.count("counter")


class TestCount:
    async def test_counts_entries_across_processes(self, duplicate: str, spawn_holder: Any) -> None:
        """count is the number of entries, each duplicate registration included."""
        first, second = await spawn_holder(), await spawn_holder()
        await run_in(first, lambda: Registry.register(duplicate, "a"))
        await run_in(first, lambda: Registry.register(duplicate, "a"))
        await run_in(second, lambda: Registry.register(duplicate, "b"))
        assert Registry.count(duplicate) == 3


class TestUpdateValue:
    async def test_updates_current_process_value(self, unique: str, spawn_holder: Any) -> None:
        """Only the holder updates its value: ``(new, old)``; None when the caller does not hold it."""
        holder, other = await spawn_holder(), await spawn_holder()
        assert await run_in(holder, lambda: Registry.update_value(unique, "hello", _never)) is None
        await run_in(other, lambda: Registry.register(unique, "hello", "value"))
        assert await run_in(holder, lambda: Registry.update_value(unique, "hello", _never)) is None

        await run_in(holder, lambda: Registry.register(unique, "world", 1))
        assert await run_in(holder, lambda: Registry.update_value(unique, "world", lambda v: v + 1)) == (2, 1)
        assert Registry.lookup(unique, "world") == [(holder, 2)]

    async def test_refuses_a_duplicate_registry(self, duplicate: str, spawn_holder: Any) -> None:
        """update_value is for unique registries only."""
        holder = await spawn_holder()
        with pytest.raises(ValueError, match="UNIQUE"):
            await run_in(holder, lambda: Registry.update_value(duplicate, "hello", _never))


def _never(value: Any) -> Any:
    raise AssertionError("must not be called")


class TestDispatch:
    async def test_dispatches_to_a_key(self, duplicate: str, spawn_holder: Any) -> None:
        """dispatch calls fn with the key's entries, and not at all when there are none."""
        Registry.dispatch(duplicate, "hello", _never)
        first, second = await spawn_holder(), await spawn_holder()
        await run_in(first, lambda: Registry.register(duplicate, "hello", 1))
        await run_in(second, lambda: Registry.register(duplicate, "hello", 2))
        await run_in(second, lambda: Registry.register(duplicate, "world", 3))
        seen: list[list[tuple[Pid, Any]]] = []
        Registry.dispatch(duplicate, "hello", seen.append)
        assert seen == [[(first, 1), (second, 2)]]


class TestVia:
    async def test_via_callbacks(self, unique: str, cleanup: list[Pid]) -> None:
        """A via name starts a server registered under the key, reaches it, and refuses a second one."""
        name = Registry.via(unique, "counter")
        pid = await Counter.start(0, name=name)
        cleanup.append(pid)
        assert Registry.lookup(unique, "counter") == [(pid, None)]
        assert otp.whereis(name) == pid
        assert await GenServer.call(name, ("add", 1)) == 1
        assert await GenServer.call(Registry.via(unique, "counter"), "get") == 1

        with pytest.raises(AlreadyStartedError) as taken:
            await Counter.start(0, name=name)
        assert taken.value.pid == pid

    async def test_failed_init_frees_the_name(self, unique: str, cleanup: list[Pid]) -> None:
        """A server whose init fails leaves the via name free for the next start."""
        name = Registry.via(unique, "server")
        with pytest.raises(StartError):
            await FailingInit.start(name=name)
        assert Registry.lookup(unique, "server") == []
        pid = await Counter.start(0, name=name)
        cleanup.append(pid)
        assert otp.whereis(name) == pid

    async def test_registers_the_given_value(self, unique: str, cleanup: list[Pid]) -> None:
        """``via(registry, key, value)`` stores ``value`` with the started process."""
        pid = await Counter.start(0, name=Registry.via(unique, "counter", {"shard": 3}))
        cleanup.append(pid)
        assert Registry.lookup(unique, "counter") == [(pid, {"shard": 3})]

    async def test_whereis_is_none_after_the_holder_exits(self, unique: str) -> None:
        """Once the named server has stopped, the name resolves to nothing and a call raises."""
        name = Registry.via(unique, "counter")
        pid = await Counter.start(0, name=name)
        await GenServer.stop(name)
        assert not otp.is_alive(pid)
        assert otp.whereis(name) is None
        with pytest.raises(NoProcessError):
            await GenServer.call(name, "get")

    async def test_names_a_supervisor(self, unique: str, cleanup: list[Pid]) -> None:
        """A supervisor can be started and addressed with a via name too."""
        name = Registry.via(unique, "sup")
        pid = await Supervisor.start_link(SupervisorSpec([], strategy=Strategy.ONE_FOR_ONE), name=name)
        cleanup.append(pid)
        assert await Supervisor.which_children(name) == []
        assert Registry.lookup(unique, "sup") == [(pid, None)]

    async def test_refuses_a_duplicate_registry(self, duplicate: str) -> None:
        """Only unique registries give via names."""
        with pytest.raises(ValueError, match="UNIQUE"):
            Registry.via(duplicate, "counter")

    async def test_killed_server_is_restarted_under_the_same_name(
        self, unique: str, cleanup: list[Pid], events: Any
    ) -> None:
        """A supervised server named by via gets its name back after a restart (the old entry is gone)."""
        name = Registry.via(unique, "counter")
        sup = await Supervisor.start_link(
            SupervisorSpec([Counter.child_spec(0, name=name)], strategy=Strategy.ONE_FOR_ONE)
        )
        cleanup.append(sup)
        first = otp.whereis(name)
        assert first is not None
        otp.exit(first, KILL)
        restarted = await events.wait_for(("supervisor", "child", "restarted"))
        assert otp.whereis(name) == restarted["pid"] != first
        assert otp.exit_reason(first) == KILLED

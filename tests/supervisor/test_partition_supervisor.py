"""PartitionSupervisor: N copies of a child, ids 0..N-1, keys routed to one copy.

Ported from Elixir's ``partition_supervisor_test.exs`` ("on success", "with_arguments", "raises on
bad partitions", "start_link/1 with a via name", "stop/1 is synchronous", "which_children/1 returns
all partitions", "count_children/1 with workers / with supervisors") plus the rules of
otp-semantics.md A13. Restarts are awaited through library events, never with sleeps.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from mailman import supervisor as otp
from mailman.supervisor import (
    KILL,
    ChildCounts,
    ChildInfo,
    ChildType,
    Crash,
    DynamicSupervisor,
    From,
    GenServer,
    Keys,
    NoProcessError,
    PartitionSupervisor,
    Pid,
    Registry,
    Reply,
    StartError,
    Strategy,
    Supervisor,
    SupervisorSpec,
)
from tests.supervisor.processes import WAIT, in_process


class Value(GenServer[Any]):
    """A server holding its start argument; ``"get"`` returns it."""

    async def handle_call(self, request: Any, from_: From, state: Any) -> Reply[Any]:
        if request == "get":
            return Reply(state, state)
        raise ValueError(f"unexpected {request!r}")


def numbered(args: tuple[Any, ...], partition: int) -> tuple[Any, ...]:
    """``with_arguments`` that makes each partition's state its own number."""
    return (partition,)


async def get(server: Any) -> Any:
    return await GenServer.call(server, "get", WAIT)


@pytest.fixture
async def numbered_parts(cleanup: list[Pid]) -> str:
    """A partition supervisor ``"parts"`` of 4 ``Value`` servers whose state is their partition."""
    cleanup.append(
        await PartitionSupervisor.start_link(
            Value.child_spec(None), name="parts", partitions=4, with_arguments=numbered
        )
    )
    return "parts"


async def pids_by_partition(name: Any) -> dict[Any, Any]:
    return {child.id: child.pid for child in await PartitionSupervisor.which_children(name)}


class TestStartLink:
    async def test_starts_one_child_per_partition(self, numbered_parts: str) -> None:
        """Each partition is a child whose id is its number, 0..N-1, each a distinct live process."""
        children = await pids_by_partition(numbered_parts)
        assert sorted(children) == [0, 1, 2, 3]
        assert len(set(children.values())) == 4
        assert all(otp.is_alive(pid) for pid in children.values())
        assert PartitionSupervisor.partitions(numbered_parts) == 4

    async def test_partitions_default_to_the_cpu_count(self, cleanup: list[Pid]) -> None:
        """Without ``partitions`` there is one partition per CPU (Elixir: schedulers online)."""
        cleanup.append(await PartitionSupervisor.start_link(Value.child_spec(None), name="parts"))
        assert PartitionSupervisor.partitions("parts") == os.cpu_count()

    async def test_on_success(self, cleanup: list[Pid]) -> None:
        """Children started through via names land in the partitions, and all can be found there."""
        cleanup.append(
            await PartitionSupervisor.start_link(DynamicSupervisor.child_spec(), name="dyn", partitions=3)
        )
        keys: list[Any] = [*range(10), *(f"job-{i}" for i in range(10)), ("tuple", 1)]
        for key in keys:
            await DynamicSupervisor.start_child(PartitionSupervisor.via("dyn", key), Value.child_spec(key))
        found = []
        for partition in await PartitionSupervisor.which_children("dyn"):
            for child in await DynamicSupervisor.which_children(partition.pid):  # type: ignore[arg-type]
                found.append(await get(child.pid))
        assert sorted(map(repr, found)) == sorted(map(repr, keys))

    async def test_with_arguments(self, cleanup: list[Pid]) -> None:
        """``with_arguments(args, partition)`` rewrites each copy's arguments."""
        seen: list[tuple[tuple[Any, ...], int]] = []

        def with_arguments(args: tuple[Any, ...], partition: int) -> tuple[Any, ...]:
            seen.append((args, partition))
            return (f"partition {partition}",)

        cleanup.append(
            await PartitionSupervisor.start_link(
                Value.child_spec("unused"), name="parts", partitions=3, with_arguments=with_arguments
            )
        )
        assert seen == [(("unused",), 0), (("unused",), 1), (("unused",), 2)]
        assert await get(PartitionSupervisor.via("parts", 0)) == "partition 0"
        assert await get(PartitionSupervisor.via("parts", 1)) == "partition 1"
        assert await get(PartitionSupervisor.via("parts", 2)) == "partition 2"
        assert await get(PartitionSupervisor.via("parts", 3)) == "partition 0"
        assert await get(PartitionSupervisor.via("parts", -1)) == "partition 1"

    @pytest.mark.parametrize("partitions", [0, -1, True, 2.0])
    async def test_raises_on_bad_partitions(self, partitions: Any) -> None:
        """``partitions`` must be a positive int."""
        with pytest.raises(ValueError, match="positive int"):
            await PartitionSupervisor.start_link(Value.child_spec(None), name="parts", partitions=partitions)

    async def test_raises_on_with_arguments_not_returning_a_tuple(self) -> None:
        """``with_arguments`` must return the tuple of arguments."""
        with pytest.raises(TypeError, match="tuple"):
            await PartitionSupervisor.start_link(
                Value.child_spec(None), name="parts", partitions=2, with_arguments=lambda args, p: [p]
            )
        assert otp.whereis("parts") is None

    async def test_with_a_via_name(self, cleanup: list[Pid]) -> None:
        """The supervisor itself may be named through a Registry; routing works through that name."""
        cleanup.append(await Registry.start_link(keys=Keys.UNIQUE, name="names"))
        name = Registry.via("names", "parts")
        cleanup.append(
            await PartitionSupervisor.start_link(Value.child_spec("hello"), name=name, partitions=2)
        )
        assert PartitionSupervisor.partitions(name) == 2
        assert await get(PartitionSupervisor.via(name, 0)) == "hello"


class TestVia:
    @pytest.mark.parametrize("key", [0, 1, 5, -6, 1001, 4.0])
    async def test_integer_keys_route_by_remainder(self, numbered_parts: str, key: Any) -> None:
        """An integer key (or an integral float, equal to it) goes to partition ``abs(key) % N``."""
        assert await get(PartitionSupervisor.via(numbered_parts, key)) == abs(int(key)) % 4

    async def test_equal_keys_take_the_same_route(self, numbered_parts: str) -> None:
        """Routing is deterministic: the same or an equal key always reaches the same partition."""
        routes = {await get(PartitionSupervisor.via(numbered_parts, ("user", 1))) for _ in range(5)}
        routes.add(await get(PartitionSupervisor.via(numbered_parts, ("user", 1.0))))
        routes.add(await get(PartitionSupervisor.via(numbered_parts, ("user", True))))
        assert len(routes) == 1

    @pytest.mark.parametrize(
        ("key", "partition"),
        [
            ("hello", 7),
            ("world", 2),
            (("user", 42), 5),
            (b"raw", 3),
            (None, 2),
            (frozenset({"a", "b", "c"}), 7),
            (2.5, 2),
        ],
    )
    async def test_routes_are_stable_across_runs(self, cleanup: list[Pid], key: Any, partition: int) -> None:
        """Non-integer keys route by crc32 of a canonical encoding: these routes never change
        (Python's ``hash()`` of a str changes with every interpreter run)."""
        cleanup.append(
            await PartitionSupervisor.start_link(
                Value.child_spec(None), name="parts", partitions=8, with_arguments=numbered
            )
        )
        assert await get(PartitionSupervisor.via("parts", key)) == partition

    async def test_registering_under_it_raises(self, numbered_parts: str) -> None:
        """A PartitionSupervisor via name only finds processes; starting a server under it fails."""
        with pytest.raises(StartError) as error:
            await Value.start(None, name=PartitionSupervisor.via(numbered_parts, 1))
        assert isinstance(error.value.reason, Crash)
        assert isinstance(error.value.reason.exception, ValueError)

    async def test_registering_under_it_does_not_kill_the_linked_caller(self, numbered_parts: str) -> None:
        """The refused registration is a failed start: the calling process gets the error, not an exit."""

        async def body() -> StartError:
            with pytest.raises(StartError) as error:
                await Value.start_link(None, name=PartitionSupervisor.via(numbered_parts, 1))
            return error.value

        assert isinstance((await in_process(body)).reason, Crash)

    async def test_unknown_supervisor(self) -> None:
        """Routing through a supervisor that is not running finds no process."""
        assert otp.whereis(PartitionSupervisor.via("missing", 1)) is None
        with pytest.raises(NoProcessError):
            await get(PartitionSupervisor.via("missing", 1))
        with pytest.raises(NoProcessError):
            PartitionSupervisor.partitions("missing")


class TestWhichChildren:
    async def test_returns_all_partitions(self, numbered_parts: str) -> None:
        """One row per partition: its number, the pid its via name resolves to, its type."""
        children = sorted(await PartitionSupervisor.which_children(numbered_parts), key=lambda c: c.id)
        assert children == [
            ChildInfo(
                partition,
                otp.whereis(PartitionSupervisor.via(numbered_parts, partition)),
                ChildType.WORKER,
                ("Value",),
            )
            for partition in range(4)
        ]


class TestCountChildren:
    async def test_with_workers(self, numbered_parts: str) -> None:
        """Every partition is a spec and an active worker."""
        assert await PartitionSupervisor.count_children(numbered_parts) == ChildCounts(
            specs=4, active=4, supervisors=0, workers=4
        )

    async def test_with_supervisors(self, cleanup: list[Pid]) -> None:
        """Partitions that are supervisors count as supervisors."""
        cleanup.append(
            await PartitionSupervisor.start_link(DynamicSupervisor.child_spec(), name="dyn", partitions=3)
        )
        assert await PartitionSupervisor.count_children("dyn") == ChildCounts(
            specs=3, active=3, supervisors=3, workers=0
        )


class TestRestart:
    async def test_crashed_partition_is_restarted_and_routed_to(
        self, numbered_parts: str, events: Any
    ) -> None:
        """A partition that dies is restarted by the supervisor, and its key reaches the new process."""
        old = otp.whereis(PartitionSupervisor.via(numbered_parts, 1))
        assert old is not None
        otp.exit(old, KILL)
        restarted = await events.wait_for(("supervisor", "child", "restarted"), id=1)
        new = otp.whereis(PartitionSupervisor.via(numbered_parts, 1))
        assert new == restarted["pid"] != old
        assert await get(PartitionSupervisor.via(numbered_parts, 5)) == 1

    async def test_one_for_all_restarts_every_partition(self, cleanup: list[Pid], events: Any) -> None:
        """``strategy`` is the supervisor's: with ONE_FOR_ALL one crash restarts all partitions."""
        cleanup.append(
            await PartitionSupervisor.start_link(
                Value.child_spec(None), name="parts", partitions=3, strategy=Strategy.ONE_FOR_ALL
            )
        )
        before = await pids_by_partition("parts")
        otp.exit(before[0], KILL)
        await events.wait_for(("supervisor", "child", "restarted"), id=2)
        after = await pids_by_partition("parts")
        assert not set(before.values()) & set(after.values())


class TestStop:
    async def test_is_synchronous(self, numbered_parts: str) -> None:
        """stop returns once the supervisor and its partitions have exited; its routing is gone."""
        children = await pids_by_partition(numbered_parts)
        await PartitionSupervisor.stop(numbered_parts)
        assert otp.whereis(numbered_parts) is None
        assert not any(otp.is_alive(pid) for pid in children.values())
        with pytest.raises(NoProcessError):
            PartitionSupervisor.partitions(numbered_parts)


class TestResize:
    async def test_shrinks_and_grows(self, numbered_parts: str) -> None:
        """Shrinking stops the partitions past the new count and reroutes; growing starts them again."""
        assert await PartitionSupervisor.resize(numbered_parts, 2) == 4
        assert PartitionSupervisor.partitions(numbered_parts) == 2
        assert (await PartitionSupervisor.count_children(numbered_parts)).active == 2
        assert await get(PartitionSupervisor.via(numbered_parts, 3)) == 1

        assert await PartitionSupervisor.resize(numbered_parts, 4) == 2
        assert (await PartitionSupervisor.count_children(numbered_parts)).active == 4
        assert await get(PartitionSupervisor.via(numbered_parts, 3)) == 3

    async def test_cannot_grow_past_the_initial_count(self, numbered_parts: str) -> None:
        """The count stays between 0 and the number of partitions the supervisor started with."""
        with pytest.raises(ValueError, match="between 0 and 4"):
            await PartitionSupervisor.resize(numbered_parts, 5)
        assert PartitionSupervisor.partitions(numbered_parts) == 4


class TestChildSpec:
    async def test_runs_under_a_supervisor_with_its_name_as_id(self, cleanup: list[Pid]) -> None:
        """``child_spec`` starts the partition supervisor as a supervisor child whose id is its name."""
        spec = PartitionSupervisor.child_spec(Value.child_spec(None), name="parts", partitions=2)
        cleanup.append(await Supervisor.start_link(SupervisorSpec([spec], strategy=Strategy.ONE_FOR_ONE)))
        assert spec.id == "parts"
        assert spec.type is ChildType.SUPERVISOR
        assert PartitionSupervisor.partitions("parts") == 2

"""Looking at a running tree: describe, which_children on any supervisor kind, registered names."""

from __future__ import annotations

from mailman import supervisor as otp


class Worker(otp.GenServer[None]):
    pass


class TestDescribe:
    async def test_describe_reports_strategy_intensity_and_children(self) -> None:
        """``describe`` gives the strategy, the intensity flags, the restarts in the window and the
        children, newest first."""
        clock = otp.ManualClock()
        sup = await otp.Supervisor.start_link(
            otp.SupervisorSpec(
                [Worker.child_spec(None, id="a"), Worker.child_spec(None, id="b")],
                strategy=otp.Strategy.REST_FOR_ONE,
                max_restarts=7,
                max_seconds=30,
                clock=clock,
            )
        )
        (b, _a) = await otp.Supervisor.which_children(sup)
        assert isinstance(b.pid, otp.Pid)
        otp.exit(b.pid, otp.KILL)
        await otp.await_exit(b.pid)  # its EXIT is now in the supervisor's mailbox, ahead of our call
        info = await otp.Supervisor.describe(sup)
        flags = (info.strategy, info.max_restarts, info.max_seconds, info.restarts)
        assert flags == ("rest_for_one", 7, 30, 1)
        assert [child.id for child in info.children] == ["b", "a"]
        await otp.Supervisor.stop(sup)

    async def test_describe_and_which_children_work_on_a_dynamic_supervisor(self) -> None:
        """The Supervisor functions answer for a DynamicSupervisor too, as supervisor:which_children/1
        does for every supervisor in OTP."""
        sup = await otp.DynamicSupervisor.start_link()
        pid = await otp.DynamicSupervisor.start_child(sup, Worker.child_spec(None))
        assert [child.pid for child in await otp.Supervisor.which_children(sup)] == [pid]
        info = await otp.Supervisor.describe(sup)
        assert (info.strategy, info.restarts, len(info.children)) == ("one_for_one", 0, 1)
        await otp.DynamicSupervisor.stop(sup)


class TestRegisteredName:
    async def test_registered_name_of_a_named_process(self) -> None:
        """``registered_name`` finds the local name of a pid, and None once it is gone."""
        pid = await Worker.start(None, name="introspected")
        assert otp.registered_name(pid) == "introspected"
        await otp.GenServer.stop(pid)
        assert otp.registered_name(pid) is None

    async def test_registered_name_of_an_unnamed_process_is_none(self) -> None:
        """A process without a local name has none."""
        pid = await Worker.start(None)
        assert otp.registered_name(pid) is None
        await otp.GenServer.stop(pid)

"""describe_tree: the live tree as data, even while parts of it come and go."""

from __future__ import annotations

import dataclasses
from typing import Any

from mailman import supervisor as otp
from mailman.daemon.tree_view import describe_tree


class Worker(otp.GenServer[None]):
    pass


class VanishingSupervisor(otp.GenServer[None]):
    """Stands in for a letter's supervisor that stops itself just as the tree asks about it."""

    async def handle_call(self, request: Any, from_: otp.From, state: None) -> otp.Stop[None]:
        return otp.Stop(otp.SHUTDOWN, state)


class TestDescribeTree:
    async def test_a_supervisor_that_exits_while_described_is_shown_gone(self) -> None:
        """A child supervisor that exits during the walk (a letter's supervisor ends once its letter is
        sent) appears with no pid, and the rest of the tree is still described."""
        vanishing = dataclasses.replace(
            VanishingSupervisor.child_spec(None, id="letter", restart=otp.Restart.TEMPORARY),
            type=otp.ChildType.SUPERVISOR,
        )
        root = await otp.Supervisor.start_link(
            otp.SupervisorSpec(
                [Worker.child_spec(None, id="repo"), vanishing], strategy=otp.Strategy.ONE_FOR_ONE
            )
        )
        tree = await describe_tree(root)
        assert tree["strategy"] == "one_for_one"
        assert [(child["id"], child["pid"] is None) for child in tree["children"]] == [
            ("repo", False),
            ("letter", True),
        ]
        await otp.Supervisor.stop(root)

"""The live supervision tree, as data: for ``mailman tree`` and the ``system.tree`` RPC.

Walks the tree from its root with :meth:`Supervisor.describe` (any supervisor kind answers it),
naming each process by its registered name where it has one.
"""

from __future__ import annotations

from typing import Any

from mailman.supervisor import (
    CallExitError,
    ChildType,
    NoProcessError,
    Pid,
    Supervisor,
    SupervisorInfo,
    registered_name,
)

__all__ = ["describe_tree"]


async def describe_tree(root: Pid, root_id: str = "application") -> dict[str, Any]:
    """``{"id", "name", "pid", "type", "strategy", "restarts", "max_restarts", "max_seconds",
    "children": [...]}`` for a supervisor; workers have no strategy and no children."""
    return await _describe(root, root_id, ChildType.SUPERVISOR)


async def _describe(pid: Pid | None, child_id: str, kind: ChildType) -> dict[str, Any]:
    node: dict[str, Any] = {
        "id": child_id,
        "name": None if pid is None else registered_name(pid),
        "pid": None if pid is None else repr(pid),
        "type": kind.value,
    }
    if kind is not ChildType.SUPERVISOR or pid is None:
        return node
    try:
        info: SupervisorInfo = await Supervisor.describe(pid)
    except (NoProcessError, CallExitError):
        # It ended between its parent's listing and this question: a letter's supervisor stops
        # itself once its letter is sent. The tree is a snapshot; the snapshot shows it gone.
        node["pid"] = None
        return node
    node.update(
        strategy=info.strategy,
        restarts=info.restarts,
        max_restarts=info.max_restarts,
        max_seconds=info.max_seconds,
        children=[
            await _describe(
                child.pid if isinstance(child.pid, Pid) else None,
                _label(child.id, child.pid),
                child.type,
            )
            for child in reversed(info.children)  # start order reads better than termination order
        ],
    )
    return node


def _label(child_id: object, pid: object) -> str:
    if child_id is None:
        return f"child {pid!r}"
    if isinstance(child_id, type):
        return child_id.__name__
    return str(child_id)

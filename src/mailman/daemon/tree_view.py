"""The live supervision tree, as data: for ``mailman tree`` and the ``system.tree`` RPC.

Walks the tree from its root with :meth:`Supervisor.describe` (any supervisor kind answers it),
naming each process by its registered name where it has one, and saying what it runs (the child
spec's ``modules``, as OTP's ``which_children`` reports them). A child registered under a key of
one of ``registries`` is labelled by what it runs and that key: a letter's processes read
``LetterSupervisor 42`` and ``LetterDeliveryService 42`` rather than ``child <0.7.0>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mailman.supervisor import (
    CallExitError,
    ChildType,
    NoProcessError,
    Pid,
    Registry,
    Supervisor,
    SupervisorInfo,
    registered_name,
)

__all__ = ["describe_tree"]


async def describe_tree(
    root: Pid, root_id: str = "application", registries: Sequence[str] = ()
) -> dict[str, Any]:
    """``{"id", "module", "name", "pid", "type", "strategy", "restarts", "max_restarts",
    "max_seconds", "children": [...]}`` for a supervisor; workers have no strategy and no children.

    ``registries`` are the Registries whose keys label the processes registered in them.
    """
    return await _describe(root, root_id, ChildType.SUPERVISOR, None, tuple(registries))


async def _describe(
    pid: Pid | None, child_id: str, kind: ChildType, module: str | None, registries: tuple[str, ...]
) -> dict[str, Any]:
    node: dict[str, Any] = {
        "id": child_id,
        "module": module,
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
    children = []
    for child in reversed(info.children):  # start order reads better than termination order
        child_pid = child.pid if isinstance(child.pid, Pid) else None
        child_module = child.modules[0] if child.modules else None
        label = _label(child.id, child_pid, child_module, registries)
        children.append(await _describe(child_pid, label, child.type, child_module, registries))
    node.update(
        strategy=info.strategy,
        restarts=info.restarts,
        max_restarts=info.max_restarts,
        max_seconds=info.max_seconds,
        children=children,
    )
    return node


def _label(child_id: object, pid: Pid | None, module: str | None, registries: tuple[str, ...]) -> str:
    """What to call a child: what it runs and its registry key, else its id, else what it runs."""
    key = _registry_key(pid, registries)
    if module is not None and key is not None:
        return f"{module} {key}"
    if child_id is None:
        return module or f"child {pid!r}"
    if isinstance(child_id, type):
        return child_id.__name__
    return str(child_id)


def _registry_key(pid: Pid | None, registries: tuple[str, ...]) -> str | None:
    """The key ``pid`` is registered under in one of ``registries`` (its last part, for a tuple)."""
    if pid is None:
        return None
    for registry in registries:
        try:
            keys = Registry.keys(registry, pid)
        except (NoProcessError, ValueError):
            continue  # that registry is not running (yet, or any more)
        if keys:
            key = keys[0]
            return str(key[-1] if isinstance(key, tuple) and key else key)
    return None

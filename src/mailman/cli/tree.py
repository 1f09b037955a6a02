"""``mailman tree``: the daemon's live supervision tree, drawn with box characters.

:func:`render_tree` is a pure function of the ``system.tree`` result
(:func:`mailman.daemon.tree_view.describe_tree`)::

    application  mailman.application  <0.1.0>  supervisor rest_for_one · restarts 0/3 in 5s
    ├── repo  mailman.repo  <0.2.0>  worker
    ├── mailman_supervisor  mailman.tasks  <0.5.0>  supervisor one_for_one · restarts 0/3 in 5s
    └── rpc_server  mailman.rpc  <0.9.0>  worker
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from mailman.cli.invocation import Invocation
from mailman.cli.output import ExitCode

__all__ = ["describe_node", "render_tree", "run_tree"]


def describe_node(node: Mapping[str, Any]) -> str:
    """One node's line (without the tree's branches): id, registered name, pid, kind, and for a
    supervisor its strategy and restarts against its intensity."""
    parts = [str(node.get("id"))]
    module = node.get("module")
    if module and str(module) not in parts[0]:
        parts.append(str(module))
    name = node.get("name")
    if name is not None and str(name) != parts[0]:
        parts.append(str(name))
    pid = node.get("pid")
    if pid is None:
        parts.append("(not running)")
    elif str(pid) not in parts[0]:  # a dynamic child's id is "child <pid>" already
        parts.append(str(pid))
    kind = str(node.get("type", "worker"))
    if kind == "supervisor" and "strategy" in node:
        kind += (
            f" {node['strategy']} · restarts {node.get('restarts', 0)}/{node.get('max_restarts', '?')}"
            f" in {node.get('max_seconds', '?')}s"
        )
    parts.append(kind)
    return "  ".join(parts)


def render_tree(node: Mapping[str, Any]) -> str:
    """The tree rooted at ``node`` as text, one node per line, children under their parent."""
    return "\n".join(_lines(node, prefix="", branch="", last=True))


def _lines(node: Mapping[str, Any], *, prefix: str, branch: str, last: bool) -> Iterator[str]:
    yield prefix + branch + describe_node(node)
    children = node.get("children") or []
    if branch:
        prefix += "    " if last else "│   "
    for index, child in enumerate(children):
        is_last = index == len(children) - 1
        yield from _lines(child, prefix=prefix, branch="└── " if is_last else "├── ", last=is_last)


async def run_tree(invocation: Invocation) -> ExitCode:
    """``mailman tree``."""
    async with invocation.client() as client:
        result = await client.system_tree()
    invocation.output.result(result, render_tree(result["tree"]))
    return ExitCode.OK

"""The RPC layer's public surface and its place in the layering.

- ``mailman.rpc.__all__`` re-exports exactly what its modules declare public.
- The layer uses only the public names of ``mailman.supervisor`` and knows nothing of the engine
  (``mailman.services``): the engine plugs in through ``Handlers`` and the error mapper.
- ``mailman.client`` shares only the wire protocol with the server: params are checked by the daemon.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import mailman.client
from mailman import rpc

PACKAGE_DIR = Path(rpc.__file__).parent


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return names


def test_all_matches_the_modules_public_names() -> None:
    """Every submodule's ``__all__`` is re-exported by the package, and nothing else."""
    exported: set[str] = set()
    for _, module_name, _ in pkgutil.iter_modules([str(PACKAGE_DIR)]):
        exported.update(importlib.import_module(f"mailman.rpc.{module_name}").__all__)
    assert set(rpc.__all__) == exported
    assert all(hasattr(rpc, name) for name in rpc.__all__)


def test_the_rpc_layer_uses_only_public_supervisor_names_and_no_engine() -> None:
    """No ``mailman.supervisor._x`` and no ``mailman.services`` import under ``mailman.rpc``."""
    offenders = [
        f"{path.name}: {name}"
        for path in PACKAGE_DIR.glob("*.py")
        for name in _imports(path)
        if name.startswith(("mailman.supervisor._", "mailman.services"))
    ]
    assert offenders == []


def test_the_client_depends_only_on_the_protocol() -> None:
    """``mailman.client`` imports nothing of mailman but ``mailman.rpc.protocol`` (no params models)."""
    mailman_imports = {name for name in _imports(Path(mailman.client.__file__)) if name.startswith("mailman")}
    assert mailman_imports == {"mailman.rpc.protocol"}

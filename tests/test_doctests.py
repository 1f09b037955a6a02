"""The docstring examples written as doctests (``>>>``) run, so that they stay true.

Every module of ``mailman`` whose source holds a ``>>>`` example is run through :mod:`doctest`;
examples that need a live server say ``# doctest: +SKIP``. (Examples in ``Example::`` blocks are
asyncio code, shown rather than run.)
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil

import pytest

import mailman


def _modules_with_doctests() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(mailman.__path__, prefix="mailman."):
        spec = importlib.util.find_spec(info.name)
        origin = None if spec is None else spec.origin
        if origin and origin.endswith(".py"):
            with open(origin, encoding="utf-8") as source:
                if ">>> " in source.read():
                    names.append(info.name)
    return sorted(names)


MODULES = _modules_with_doctests()


def test_there_are_doctests_to_run() -> None:
    """The collection finds the modules with ``>>>`` examples (it is not silently empty)."""
    assert "mailman.services.smtp.url" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_examples_hold(name: str) -> None:
    """The module's ``>>>`` examples give the output they show."""
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed"

"""The library's public surface and its layering.

- ``mailman.supervisor.__all__`` names exactly the public names its modules define, so nothing
  public is forgotten and nothing private leaks (anyio's ``test_all_attributes``).
- The library imports nothing from the rest of mailman: it is domain-free (trio's layering).
- Every public module has a docstring naming its Erlang/Elixir counterpart.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import mailman.supervisor as otp

PACKAGE_DIR = Path(otp.__file__).parent


def _library_modules() -> list[str]:
    return sorted(name for _, name, _ in pkgutil.iter_modules([str(PACKAGE_DIR)]))


class TestAll:
    def test_every_name_in_all_exists(self) -> None:
        """Every name listed in ``__all__`` can be imported from the package."""
        missing = [name for name in otp.__all__ if not hasattr(otp, name)]
        assert missing == []

    def test_all_is_unique(self) -> None:
        """``__all__`` has no duplicates (ruff RUF022 keeps it sorted)."""
        assert len(otp.__all__) == len(set(otp.__all__))

    def test_all_covers_every_module_export(self) -> None:
        """Each private module's own ``__all__`` is re-exported by the package, and only those names."""
        exported: set[str] = set()
        for module_name in _library_modules():
            module = importlib.import_module(f"mailman.supervisor.{module_name}")
            exported.update(getattr(module, "__all__", []))
        internal_only = {"deliver_exit_signal", "current_process", "require_process", "expire_after"}
        assert set(otp.__all__) == exported - internal_only - _internal_exports()


def _internal_exports() -> set[str]:
    """Names modules share inside the library but that are not part of the public API."""
    return {
        "ChildStartFailure",
        "start_spec",
        "is_clean_shutdown",
        "shutdown_child",
        "shutdown_children",
        "validate_intensity",
        "reset_logger",
        "LoopLocal",
        "request_start_child",
        "started_child",
    }


class TestLayering:
    def test_library_imports_nothing_from_the_rest_of_mailman(self) -> None:
        """No module under ``mailman.supervisor`` imports ``mailman.<anything else>``."""
        offenders = []
        for path in PACKAGE_DIR.glob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                names: list[str] = []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                for name in names:
                    if name.startswith("mailman") and not name.startswith("mailman.supervisor"):
                        offenders.append(f"{path.name}: {name}")
        assert offenders == []

    def test_library_has_no_domain_words(self) -> None:
        """The OTP library does not mention letters, newsletters, SMTP or subscribers."""
        words = ("newsletter", "letter_id", "smtp", "subscriber", "recipient")
        hits = [
            f"{path.name}: {word}"
            for path in PACKAGE_DIR.glob("*.py")
            for word in words
            if word in path.read_text().lower()
        ]
        assert hits == []


class TestDocstrings:
    def test_every_module_names_its_otp_counterpart(self) -> None:
        """Each public-facing module's docstring says which Erlang/Elixir concept it ports."""
        missing = []
        for module_name in _library_modules():
            module = importlib.import_module(f"mailman.supervisor.{module_name}")
            doc = module.__doc__ or ""
            if not any(word in doc for word in ("Erlang", "Elixir", "OTP", "BEAM")):
                missing.append(module_name)
        assert missing == []

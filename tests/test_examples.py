"""The README's example script runs as printed and shows what the README says it shows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mailman import __version__

ROOT = Path(__file__).resolve().parent.parent


def test_supervision_tree_example_runs_from_a_plain_script() -> None:
    """examples/supervision_tree.py restarts a killed child and stops the tree with reason normal."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "supervision_tree.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert "apples: 5" in lines
    assert "apples restarted: True" in lines
    assert "apples after restart: 1" in lines
    assert [line.split()[1] for line in lines if line.startswith("child:")] == ["pears", "apples"]
    assert lines[-1] == "tree exited with: normal"


def test_cli_version_prints_the_package_version() -> None:
    """`python -m mailman version` prints the installed version."""
    result = subprocess.run(
        [sys.executable, "-m", "mailman", "version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == __version__

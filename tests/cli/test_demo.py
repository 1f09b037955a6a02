"""``mailman demo``: the whole job end to end in a subprocess, and its data directory's safety rules."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailman.cli.demo import MARKER, count_messages, prepare_data_dir
from mailman.cli.output import CliError


@pytest.fixture
def demo_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: as root, pgserver runs Postgres as the user `pgserver`, which cannot
    # enter /tmp/pytest-of-root.
    path = Path(tempfile.mkdtemp(prefix="mailman-demo-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_demo(data_dir: Path, subscribers: int) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("MAILMAN_")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mailman",
            "demo",
            "--subscribers",
            str(subscribers),
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )


@pytest.mark.timeout(300)
def test_the_demo_sends_to_everyone_and_can_run_again(demo_dir: Path) -> None:
    """python -m mailman demo: exit 0, a summary, one Maildir file per subscriber; a second run starts
    afresh in the same directory."""
    first = run_demo(demo_dir, 200)
    assert first.returncode == 0, first.stderr
    assert re.search(r"letter 1 sent: 200 delivered, 0 failed, 0 skipped of 200 in [\d.]+s", first.stdout)
    assert f"The mail is in the Maildir {demo_dir / 'maildir'}: 200 messages" in first.stdout
    assert "└── rpc_server  RpcServer  mailman.rpc" in first.stdout  # the tree, drawn while sending
    assert re.search(r"LetterSupervisor 1  <[\d.]+>  supervisor", first.stdout)
    assert re.search(r"LetterDeliveryService 1  <[\d.]+>  worker", first.stdout)
    assert count_messages(demo_dir / "maildir") == 200

    again = run_demo(demo_dir, 50)
    assert again.returncode == 0, again.stderr
    assert "letter 1 sent: 50 delivered" in again.stdout  # a fresh database: letter 1 again
    assert count_messages(demo_dir / "maildir") == 50


class TestPrepareDataDir:
    def test_a_new_directory_is_created_and_marked(self, tmp_path: Path) -> None:
        """A directory that does not exist is made the demo's."""
        assert prepare_data_dir(tmp_path / "demo") is False
        assert (tmp_path / "demo" / MARKER).is_file()

    def test_a_foreign_directory_is_refused(self, tmp_path: Path) -> None:
        """A non-empty directory without the marker is never reset: it may hold real data."""
        (tmp_path / "precious.txt").write_text("keep me")
        with pytest.raises(CliError, match="is not empty and is not a demo directory"):
            prepare_data_dir(tmp_path)
        assert (tmp_path / "precious.txt").read_text() == "keep me"

    def test_a_marked_directory_has_its_maildir_emptied(self, tmp_path: Path) -> None:
        """An earlier run's mail is removed, so that the count is this run's."""
        prepare_data_dir(tmp_path)
        (tmp_path / "maildir" / "new").mkdir(parents=True)
        (tmp_path / "maildir" / "new" / "1.eml").write_text("old")
        (tmp_path / "postgres").mkdir()
        assert prepare_data_dir(tmp_path) is True  # an earlier database: to be dropped
        assert not (tmp_path / "maildir").exists()

    def test_a_file_is_refused(self, tmp_path: Path) -> None:
        """--data-dir naming a file is an error."""
        (tmp_path / "file").write_text("")
        with pytest.raises(CliError, match="is not a directory"):
            prepare_data_dir(tmp_path / "file")

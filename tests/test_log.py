"""Log lines: the journal's priority prefix only when stderr really is the journal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = (
    "import logging; from responder.log import setup_logging; setup_logging(); "
    "logging.getLogger('responder').error('boom')"
)


def run(stderr_path: Path, journal_stream: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal_stream is not None:
        env["JOURNAL_STREAM"] = journal_stream
    with stderr_path.open("wb") as stderr:
        subprocess.run([sys.executable, "-c", SCRIPT], stderr=stderr, env=env, check=True)
    return stderr_path.read_text()


def test_priority_prefix_only_on_the_stream_systemd_named(tmp_path: Path) -> None:
    """systemd names the journal stream (device:inode) in JOURNAL_STREAM; a process whose
    stderr was redirected elsewhere keeps the variable but must write plain lines."""
    path = tmp_path / "stderr"
    path.touch()
    stat = path.stat()
    assert run(path, f"{stat.st_dev}:{stat.st_ino}").startswith("<3>")
    assert not run(path, "1:2").startswith("<")
    assert not run(path, None).startswith("<")

"""The example scripts in examples/, run as the README runs them."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_a_reply_to_a_daemon_that_is_not_running_says_so_in_one_line() -> None:
    """`loopback_peers.py --reply` before the daemon is up (or at the wrong port) ended in a
    page of aiohttp traceback; it says what is wrong and how to point it elsewhere."""
    with socket.socket() as closed:
        # Bound, never listening: a connection to it is refused for as long as it is held.
        closed.bind(("127.0.0.1", 0))
        daemon = f"http://127.0.0.1:{closed.getsockname()[1]}"
        command = ["loopback_peers.py", "--daemon", daemon, "--reply", "+15551230001", "ACK 1"]
        done = subprocess.run(
            [sys.executable, *command],
            cwd=EXAMPLES,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(f"cannot reach the daemon at {daemon}: ")
    assert done.stderr.rstrip().endswith("is it running? (another address: --daemon URL)")
    assert done.stderr.count("\n") == 1

"""The example scripts in examples/, run as the README runs them."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


def stand_ins(*args: str) -> subprocess.CompletedProcess[str]:
    """``loopback_peers.py`` with ``args``, run to its end from examples/ as the README runs it."""
    return subprocess.run(
        [sys.executable, "loopback_peers.py", *args],
        cwd=EXAMPLES,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_reply_to_a_daemon_that_is_not_running_says_so_in_one_line() -> None:
    """`loopback_peers.py --reply` before the daemon is up (or at the wrong port) ended in a
    page of aiohttp traceback; it says what is wrong and how to point it elsewhere."""
    with socket.socket() as closed:
        # Bound, never listening: a connection to it is refused for as long as it is held.
        closed.bind(("127.0.0.1", 0))
        daemon = f"http://127.0.0.1:{closed.getsockname()[1]}"
        done = stand_ins("--daemon", daemon, "--reply", "+15551230001", "ACK 1")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(f"cannot reach the daemon at {daemon}: ")
    assert done.stderr.rstrip().endswith("is it running? (another address: --daemon URL)")
    assert done.stderr.count("\n") == 1


def test_stand_ins_on_a_port_in_use_say_so_and_how_to_choose_others(tmp_path: Path) -> None:
    """A port taken (a second copy, another program) was a traceback; it is one line that
    names the flags for other ports."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        token = str(tmp_path / "token")
        done = stand_ins("--token-file", token, "--twilio-port", port, "--smtp-port", "0")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"('127.0.0.1', {port}): address already in use" in done.stderr
    assert done.stderr.endswith("; other ports: --twilio-port N --smtp-port M\n")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_stops_the_stand_ins_without_a_traceback(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """The README stops them with Ctrl-C; that printed a KeyboardInterrupt traceback. The
    child starts with SIGINT ignored, as anything started from a non-interactive shell's
    background job does (CI): it must stop all the same."""
    command = ["loopback_peers.py", "--token-file", str(tmp_path / "token")]
    with subprocess.Popen(
        [sys.executable, *command, "--twilio-port", "0", "--smtp-port", "0"],
        cwd=EXAMPLES,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    ) as peers:
        assert peers.stdout is not None
        assert peers.stdout.readline().startswith("twilio api_base_url: ")  # both are up
        peers.send_signal(signum)
        _, errors = peers.communicate(timeout=30)
    assert peers.returncode == 0
    assert errors == ""

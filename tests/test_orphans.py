"""Action processes a kill -9 of the daemon left running are stopped at the next start, and
only those: a pid given to another process since, or a record from before a reboot, is left
alone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from responder.contain import orphans
from responder.contain.runner import ExecRequest, Recording, run_process
from responder.testing import SmtpTestServer
from tests.test_containment import RESTART_RULE, config, restart_action, smtp
from tests.test_escalation_story import alert, webhook
from tests.test_kill_points import _kill_orphan, incident_document, post_alert
from tests.test_process import running
from tests.test_process_escalation import wait_for

__all__ = ["smtp"]

pytestmark = pytest.mark.skipif(orphans.boot_id() is None, reason="needs Linux /proc")


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process group of its own, as an action's, that sleeps."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    yield process
    process.kill()
    process.wait()


def _alive(process: subprocess.Popen[bytes]) -> bool:
    return process.poll() is None


async def test_a_pid_now_another_process_s_is_not_signalled(
    sleeper: subprocess.Popen[bytes],
) -> None:
    """The record names the pid, but another start time: the pid was reused, and the process
    now holding it is not signalled."""
    boot = orphans.boot_id()
    identity = orphans.identify(sleeper.pid, boot)
    assert identity is not None
    reused = orphans.ProcessIdentity(identity.pgid, identity.start_ticks - 1, identity.boot_id)
    assert await orphans.stop(reused, boot, grace_s=0.2) is orphans.Stopped.NOT_OURS
    await asyncio.sleep(0.2)
    assert _alive(sleeper)


async def test_a_record_from_another_boot_is_not_signalled(
    sleeper: subprocess.Popen[bytes],
) -> None:
    """A reboot ended every process of the record: nothing is signalled."""
    identity = orphans.identify(sleeper.pid, "an-earlier-boot")
    assert identity is not None
    assert await orphans.stop(identity, orphans.boot_id()) is orphans.Stopped.OTHER_BOOT
    assert _alive(sleeper)


async def test_the_very_process_recorded_is_stopped_with_its_group(
    sleeper: subprocess.Popen[bytes],
) -> None:
    boot = orphans.boot_id()
    identity = orphans.identify(sleeper.pid, boot)
    assert identity is not None
    loop = asyncio.get_running_loop()
    # The test is its parent: a thread reaps it, as init reaps a real orphan.
    reaped = loop.run_in_executor(None, sleeper.wait)
    assert await orphans.stop(identity, boot) is orphans.Stopped.TERMINATED
    assert await reaped == -signal.SIGTERM


@pytest.fixture
def deaf() -> Iterator[subprocess.Popen[bytes]]:
    """One that ignores SIGTERM (once it has printed a line)."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print(flush=True); time.sleep(60)",
        ],
        start_new_session=True,
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    process.stdout.readline()
    yield process
    process.kill()
    process.wait()


async def test_one_deaf_to_sigterm_is_killed(deaf: subprocess.Popen[bytes]) -> None:
    boot = orphans.boot_id()
    identity = orphans.identify(deaf.pid, boot)
    assert identity is not None
    reaped = asyncio.get_running_loop().run_in_executor(None, deaf.wait)
    assert await orphans.stop(identity, boot, grace_s=0.3) is orphans.Stopped.KILLED
    assert await reaped == -signal.SIGKILL


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 2] != "Z"


async def test_an_action_left_running_by_a_kill_9_is_stopped_at_the_next_start(
    tmp_path: Path, smtp: SmtpTestServer
) -> None:
    """nginx's restart hangs; the daemon is killed with SIGKILL and the restart goes on
    running with no timeout. At the next start it is stopped within seconds, and the run's
    record and the incident's timeline say so."""
    pidfile = tmp_path / "action.pid"
    body = f"open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    path = config(tmp_path, smtp, restart_action(tmp_path, body, "    timeout: 10m"), RESTART_RULE)
    try:
        async with running(path) as daemon:
            await post_alert(daemon, webhook(alert("WebDown", service="nginx")))
            await wait_for(lambda: pidfile.exists() and pidfile.read_text() != "", 10, "started")
            daemon.process.send_signal(signal.SIGKILL)
            await daemon.process.wait()
        pid = int(pidfile.read_text())
        await asyncio.sleep(0.5)
        assert _running(pid), "the action outlived the daemon"
        async with running(path) as daemon:
            await wait_for(lambda: not _running(pid), 10, "the orphan stopped")
            timeline = (await incident_document(daemon))["timeline"]
            log = daemon.log.read_text()
        stopped = [e["detail"] for e in timeline if e["kind"] == "action_process_stopped"]
        assert len(stopped) == 1
        assert stopped[0]["outcome"] == "terminated"
        assert stopped[0]["process_group"] == pid
        kinds = [e["kind"] for e in timeline]
        assert kinds.index("action_process_stopped") < kinds.index("action_interrupted")
        assert "stopped at start (SIGTERM)" in log
        with contextlib.closing(sqlite3.connect(tmp_path / "state" / "responder.db")) as db:
            (audit,) = db.execute("SELECT audit FROM action_runs").fetchone()
            (left,) = db.execute("SELECT count(*) FROM action_processes").fetchone()
        assert left == 0
        assert json.loads(audit)["stopped_at_start"]["outcome"] == "terminated"
    finally:
        _kill_orphan(pidfile)


class _Ledger:
    """Records what the runner tells it, in order."""

    def __init__(self) -> None:
        self.on_record: list[orphans.ProcessIdentity] = []
        self.events: list[str] = []

    async def started(self, identity: orphans.ProcessIdentity, run_id: str, argv0: str) -> None:
        self.on_record.append(identity)
        self.events.append(f"started {run_id} {argv0}")

    async def ended(self, identity: orphans.ProcessIdentity) -> None:
        self.on_record.remove(identity)
        self.events.append(f"ended {identity.pgid}")


async def test_a_process_is_on_record_while_it_runs_and_off_once_it_ends(tmp_path: Path) -> None:
    """The record names the process's own group with its start time; its end clears it."""
    ledger, boot = _Ledger(), orphans.boot_id()
    assert boot is not None
    pidfile = tmp_path / "pid"
    probe = f"import os; open({str(pidfile)!r}, 'w').write(str(os.getpid()))"
    request = ExecRequest((sys.executable, "-c", probe), {})
    result = await run_process(request, recording=Recording(ledger, boot, "run-1"))
    assert result.exit_status == 0
    pid = int(pidfile.read_text())
    assert ledger.events == [f"started run-1 {sys.executable}", f"ended {pid}"]
    assert ledger.on_record == []

"""A real ``responder serve`` killed with SIGKILL across an escalation due time: after the
restart, the step that came due while it was dead is done once, and nothing already sent is
sent again. Pages are counted where they arrive: a real SMTP server."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from responder.testing import SmtpTestServer
from tests.conftest import AUTH, write_config
from tests.test_process import running

POLICY = """
contacts:
  alice: {email: alice@example.com}
  bob: {email: bob@example.com}
  carol: {email: carol@example.com}
escalation_policies:
  fast:
    levels:
      - targets: [alice]
      - after: 3s
        targets: [bob]
      - after: 6s
        targets: [carol]
incidents:
  default_policy: fast
"""


@pytest.fixture
async def smtp() -> AsyncIterator[SmtpTestServer]:
    async with SmtpTestServer() as server:
        yield server


def body(status: str = "firing") -> dict[str, Any]:
    return {
        "version": "4",
        "status": status,
        "receiver": "responder",
        "groupKey": '{}:{alertname="TargetDown"}',
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://am",
        "alerts": [
            {
                "status": status,
                "labels": {"alertname": "TargetDown", "instance": "web-1:9100"},
                "annotations": {},
                "startsAt": "2026-11-29T10:00:00Z",
                "endsAt": "2026-11-29T11:00:00Z"
                if status == "resolved"
                else "0001-01-01T00:00:00Z",
            }
        ],
    }


async def wait_for(check: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def recipients(smtp: SmtpTestServer) -> Counter[str]:
    return Counter(to for m in smtp.messages for to in m.rcpt_tos)


async def test_kill_9_across_a_due_time_pages_each_level_once(
    tmp_path: Path, smtp: SmtpTestServer
) -> None:
    channels = f"""
channels:
  smtp:
    host: 127.0.0.1
    port: {smtp.port}
    mode: none
    from: "Responder <responder@example.com>"
"""
    config = write_config(tmp_path, POLICY + channels)
    async with running(config) as daemon:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                daemon.url + "/api/v1/alertmanager", json=body(), headers=AUTH
            ) as response,
        ):
            assert response.status == 200
        await wait_for(lambda: recipients(smtp)["alice@example.com"] == 1, 10, "level 1")
        daemon.process.send_signal(signal.SIGKILL)
        await daemon.process.wait()
    killed_at = time.monotonic()
    # Dead while level 2 (3 s) comes due.
    await asyncio.sleep(max(0.0, 4.0 - (time.monotonic() - killed_at)))
    assert recipients(smtp)["bob@example.com"] == 0

    async with running(config) as daemon:
        await wait_for(lambda: recipients(smtp)["bob@example.com"] == 1, 10, "level 2 late")
        await wait_for(lambda: recipients(smtp)["carol@example.com"] == 1, 10, "level 3")
        await asyncio.sleep(1.0)
        url = daemon.url + "/api/v1/incidents/1"
        async with aiohttp.ClientSession() as session, session.get(url, headers=AUTH) as response:
            doc = (await response.json())["data"]
    assert recipients(smtp) == Counter(
        {"alice@example.com": 1, "bob@example.com": 1, "carol@example.com": 1}
    )
    steps = Counter(p["step"] for p in doc["pages"])
    assert steps == Counter({"L1": 1, "L2": 1, "L3": 1})
    assert all(p["state"] == "sent" for p in doc["pages"])


def cli(config: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "responder", *args, "-c", str(config), "--url", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def clis(
    config: Path, url: str, *commands: tuple[str, ...]
) -> list[subprocess.CompletedProcess[str]]:
    """``commands`` run side by side, for those whose order cannot matter (reads, and
    refusals that change nothing): each is a process of its own that spends most of its
    time importing, and two cores do two at once."""
    return list(
        await asyncio.gather(*(asyncio.to_thread(cli, config, url, *args) for args in commands))
    )


async def test_cli_lists_acknowledges_and_reports(tmp_path: Path, smtp: SmtpTestServer) -> None:
    channels = f"""
channels:
  smtp: {{host: 127.0.0.1, port: {smtp.port}, mode: none, from: "r@example.com"}}
"""
    config = write_config(tmp_path, POLICY + channels)
    async with running(config) as daemon:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                daemon.url + "/api/v1/alertmanager", json=body(), headers=AUTH
            ) as response,
        ):
            assert response.status == 200
        await wait_for(lambda: recipients(smtp)["alice@example.com"] == 1, 10, "level 1")
        listed = await asyncio.to_thread(cli, config, daemon.url, "incidents")
        assert listed.returncode == 0, listed.stderr
        assert "TargetDown on web-1:9100" in listed.stdout
        assert "triggered" in listed.stdout
        acked = await asyncio.to_thread(cli, config, daemon.url, "ack", "1", "--by", "alice")
        assert acked.returncode == 0, acked.stderr
        assert "acknowledged" in acked.stdout
        again = await asyncio.to_thread(cli, config, daemon.url, "ack", "1")
        assert "already acknowledged" in again.stdout
        shown, report, period, missing, bad, far = await clis(
            config,
            daemon.url,
            ("incident", "1"),
            ("report", "1"),
            ("report", "--since", "1d"),
            ("ack", "42"),
            ("snooze", "1", "banana"),
            ("report", "--since", "99999999d"),
        )
        assert "acknowledged" in shown.stdout
        assert "alice" in shown.stdout
        assert report.returncode == 0, report.stderr
        assert report.stdout.startswith("# Incident 1")
        assert period.returncode == 0, period.stderr
        assert missing.returncode == 1  # refused; 3 means the daemon could not be reached
        assert "404" in missing.stderr
        assert bad.returncode == 2, bad.stderr
        assert far.returncode == 1
        assert "Traceback" not in far.stderr
    gone = await asyncio.to_thread(cli, config, daemon.url, "incidents")
    assert gone.returncode == 3
    assert "cannot reach the daemon" in gone.stderr


async def test_cli_asking_for_the_state_an_incident_is_in_exits_0_a_refusal_exits_1(
    tmp_path: Path,
) -> None:
    """A script that acts on an incident: asking for the state it is in already (unack of a
    triggered one, resolve of a resolved one) says so and exits 0, keeping a note given with
    it; an action its state does not allow (ack, snooze, unack, unsnooze of a resolved one)
    exits 1. An unsnooze of an incident not snoozed says so and exits 0."""
    config = write_config(tmp_path)
    async with running(config) as daemon:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                daemon.url + "/api/v1/alertmanager", json=body(), headers=AUTH
            ) as response,
        ):
            assert response.status == 200

        async def run(*args: str) -> subprocess.CompletedProcess[str]:
            return await asyncio.to_thread(cli, config, daemon.url, *args)

        unacked = await run("unack", "1")
        assert (unacked.returncode, unacked.stdout) == (0, "incident 1 was already triggered\n")
        unsnoozed = await run("unsnooze", "1")
        assert (unsnoozed.returncode, unsnoozed.stdout) == (
            0,
            "incident 1 was not snoozed: triggered\n",
        )
        # A note or a reassignment leaves the state as it was: the answer says what was done.
        noted = await run("note", "1", "looking at the exporter", "--by", "carol")
        assert (noted.returncode, noted.stdout) == (0, "incident 1: note recorded (triggered)\n")
        snoozed = await run("snooze", "1", "2h")
        assert (snoozed.returncode, snoozed.stdout) == (0, "incident 1: snoozed\n")
        unsnoozed = await run("unsnooze", "1", "--by", "bob", "--note", "back on it")
        assert (unsnoozed.returncode, unsnoozed.stdout) == (0, "incident 1: triggered\n")
        resolved = await run("resolve", "1", "--by", "alice", "--note", "exporter restarted")
        assert (resolved.returncode, resolved.stdout) == (0, "incident 1: resolved\n")
        again = await run("resolve", "1", "--by", "bob", "--note", "root cause: full disk")
        assert again.returncode == 0, again.stderr
        assert again.stdout == "incident 1 was already resolved (the note is recorded)\n"
        refusals = (("ack", "1"), ("snooze", "1", "30m"), ("unack", "1"), ("unsnooze", "1"))
        for refused, answer in zip(
            refusals, await clis(config, daemon.url, *refusals), strict=True
        ):
            assert answer.returncode == 1, (refused, answer.stdout, answer.stderr)
            assert "409: incident 1 is already resolved" in answer.stderr
        shown = json.loads((await run("incident", "1", "--json")).stdout)
    # Still resolved: the refusals, made side by side, changed nothing.
    assert shown["state"] == "resolved"
    assert shown["resolvedBy"] == "alice"
    notes = [(e["actor"], e["detail"]) for e in shown["timeline"] if e["kind"] == "note"]
    assert notes == [
        ("carol", {"text": "looking at the exporter"}),
        ("bob", {"text": "root cause: full disk"}),
    ]
    ended = [
        (e["actor"], e["via"], e["detail"].get("note"))
        for e in shown["timeline"]
        if e["kind"] == "snooze_ended"
    ]
    assert ended == [("bob", "cli", "back on it")]


async def test_cli_lists_with_nothing_to_show_say_so(tmp_path: Path) -> None:
    """`incidents`, `alerts` and `heartbeats` with nothing to list say so, not a bare header
    that reads as a fault (new-user review: after the README's resolve, `responder
    incidents` printed only its column names)."""
    config = write_config(tmp_path)
    async with running(config) as daemon:

        async def run_side_by_side(*commands: tuple[str, ...]) -> list[str]:
            answers = await clis(config, daemon.url, *commands)
            for answer in answers:
                assert answer.returncode == 0, answer.stderr
            return [answer.stdout for answer in answers]

        incidents, every, alerts, heartbeats = await run_side_by_side(
            ("incidents",), ("incidents", "--all"), ("alerts",), ("heartbeats",)
        )
        assert incidents == "no open incidents (--all lists every incident)\n"
        assert every == "no incidents yet\n"
        assert alerts == "no alerts stored yet\n"
        assert heartbeats.startswith("no heartbeats heard yet")
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                daemon.url + "/api/v1/alertmanager", json=body(), headers=AUTH
            ) as response,
        ):
            assert response.status == 200
        snoozed, stale, incidents = await run_side_by_side(
            ("incidents", "--state", "snoozed"), ("alerts", "--status", "stale"), ("incidents",)
        )
        assert snoozed == "no snoozed incidents (--all lists every incident)\n"
        assert stale == "no alerts match\n"
        assert "TargetDown on web-1:9100" in incidents


async def test_ctrl_c_on_a_drill_says_where_its_answers_are(tmp_path: Path) -> None:
    """Ctrl-C while `responder drill` waits stops the waiting, not the drill: the command
    says where its answers and its close are (new-user review: it exited without a word,
    and the drill stayed open among the incidents)."""
    config = write_config(tmp_path, POLICY)
    async with running(config) as daemon:
        drill = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "responder", "drill", "--contact", "alice",
            "-c", str(config), "--url", daemon.url,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert drill.stdout is not None
        started = await asyncio.wait_for(drill.stdout.readline(), 30)
        assert started.startswith(b"drill 1 started; waiting up to 5m"), started
        drill.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(drill.communicate(), 30)
    assert drill.returncode == 130, err
    assert out.decode() == (
        "\nstopped waiting; `responder drill --list` shows drill 1's answers, "
        "`responder resolve 1` closes it\n"
    )
    assert b"Traceback" not in err

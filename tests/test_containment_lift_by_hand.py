"""An operator lifts a change by hand (`responder actions lift RUN`, POST
/api/v1/actions/lift): whatever the lift waits for, the undo runs now, once, and other runs'
lifts of the same change stand down."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

from responder.clock import FakeClock
from responder.testing import SmtpTestServer
from tests.conftest import AUTH, ClientFactory
from tests.test_containment import MAINTENANCE_RULE, _true, config, script, smtp
from tests.test_containment_lifts import _maintenance
from tests.test_containment_shared_change import _lines, _runs, _undone
from tests.test_escalation_story import alert, eventually, incident, post, webhook
from tests.test_process_escalation import cli

__all__ = ["smtp"]


async def _run_ids(client: Any) -> list[str]:
    """Oldest first."""
    answer = await client.get("/api/v1/actions", headers=AUTH)
    return [str(r["runId"]) for r in reversed((await answer.json())["data"]["recent"])]


async def _cancelled(client: Any, runs: list[str]) -> bool:
    return [c["run_id"] for c in await _undone(client, "cancelled")] == runs


async def _lift(client: Any, run: str) -> tuple[int, dict[str, Any]]:
    answer = await client.post(
        "/api/v1/actions/lift", json={"run": run, "by": "alice"}, headers=AUTH
    )
    return answer.status, await answer.json(content_type=None)


async def test_a_change_held_for_a_stale_or_firing_alert_is_lifted_by_hand_via_the_cli(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """The first alert resolved, the second (its run skipped by the cooldown) still fires:
    the lift is held. `responder actions lift <first 12 characters>` runs it now, and the
    timeline says who asked."""
    log, actions = _maintenance(tmp_path)
    actions = actions.replace("cooldown: 0", "cooldown: 1h")
    path = config(tmp_path, smtp, actions, MAINTENANCE_RULE)
    client = await make_client(path)
    first = alert("BackendErrors", backend="web-1", instance="lb-a")
    await post(client, webhook(first))
    await eventually(lambda: _runs(client, "done", 1), "the first run finished")
    clock.advance(timedelta(seconds=30))  # the runs' start times order them
    await post(client, webhook(alert("BackendErrors", backend="web-1", instance="lb-b")))
    await eventually(lambda: _runs(client, "skipped", 1), "the second run skipped")
    await post(client, webhook(alert("BackendErrors", "resolved", **first["labels"])))
    await asyncio.sleep(0.2)
    clock.advance(timedelta(minutes=6))
    await asyncio.sleep(0.5)
    assert await _lines(log) == ["on web-1"], "held for the second alert"

    run = (await _run_ids(client))[0]
    url = str(client.make_url("")).rstrip("/")
    done = await asyncio.to_thread(cli, path, url, "actions", "lift", run[:12], "--by", "alice")
    assert done.returncode == 0, done.stderr
    assert f"lift of run {run} due now (requested by alice)" in done.stdout
    await eventually(lambda: _true("off web-1" in log.read_text()), "lifted by hand")
    requested = await _undone(client, "requested")
    assert [r["by"] for r in requested] == ["alice"]
    listed = await asyncio.to_thread(cli, path, url, "actions", "status")
    assert run[:12] in listed.stdout
    assert run not in listed.stdout

    again = await asyncio.to_thread(cli, path, url, "actions", "lift", run)
    assert again.returncode != 0
    assert "its lift has ended already (done)" in again.stderr
    clock.advance(timedelta(hours=2))  # nothing else is due: lifted once
    await asyncio.sleep(0.5)
    assert await _lines(log) == ["on web-1", "off web-1"]


async def test_a_lift_by_hand_cancels_the_other_runs_lift_of_the_same_change(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """Two alerts, two runs, one change. Lifting the first by hand while both fire undoes
    it once; the second run's lift, with nothing left to undo, stands down."""
    log, actions = _maintenance(tmp_path)
    client = await make_client(config(tmp_path, smtp, actions, MAINTENANCE_RULE))
    second = alert("BackendErrors", backend="web-1", instance="lb-b")
    await post(client, webhook(alert("BackendErrors", backend="web-1", instance="lb-a")))
    await eventually(lambda: _runs(client, "done", 1), "the first run finished")
    clock.advance(timedelta(seconds=30))  # the runs' start times order them
    await post(client, webhook(second))
    await eventually(lambda: _runs(client, "done", 2), "the second run finished")
    first_run, second_run = await _run_ids(client)
    status, answer = await _lift(client, first_run)
    assert status == 202, answer
    await eventually(lambda: _true("off web-1" in log.read_text()), "lifted by hand")
    await eventually(lambda: _cancelled(client, [second_run]), "the other lift stood down")
    cancelled = await _undone(client, "cancelled")
    assert first_run in cancelled[0]["reason"]
    await post(client, webhook(alert("BackendErrors", "resolved", **second["labels"])))
    await asyncio.sleep(0.2)
    clock.advance(timedelta(minutes=10))
    await asyncio.sleep(0.5)
    assert await _lines(log) == ["on web-1", "on web-1", "off web-1"]


async def test_lift_refuses_what_it_cannot_lift(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """No such run: 404. A run without a lift: 409 with the reason. No run id: 400."""
    log, actions = _maintenance(tmp_path)
    actions = actions.replace("    undo: {argv: [", "    x_undo: {argv: [").replace(
        "    undo_hold_down: 5m\n", ""
    )
    actions = "\n".join(line for line in actions.splitlines() if "x_undo" not in line)
    client = await make_client(config(tmp_path, smtp, actions, MAINTENANCE_RULE))
    await post(client, webhook(alert("BackendErrors", backend="web-1")))
    await eventually(lambda: _runs(client, "done", 1), "the run finished")
    (run,) = await _run_ids(client)
    status, answer = await _lift(client, run)
    assert status == 409
    assert "has no lift" in answer["error"]
    status, answer = await _lift(client, "0123456789abcdef")
    assert status == 404
    assert "no run 0123456789abcdef;" in answer["error"]
    # The RUN column shows 12 characters; fewer than 8 never match (new-user review: a
    # 4-character start was 'no run 22db', as if it did not exist).
    status, answer = await _lift(client, run[:4])
    assert status == 404
    assert f"no run {run[:4]} (give its id, or 8 or more of its start)" in answer["error"]
    short = await client.post("/api/v1/actions/lift", json={"by": "alice"}, headers=AUTH)
    assert short.status == 400
    assert await _lines(log) == ["on web-1"]


async def test_a_failed_lift_by_hand_cancels_nothing_and_can_be_asked_again(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """Two alerts, one change. The lift by hand of the first fails once (a lock held for a
    moment): the second run's lift stays (it was cancelled at the request, and nothing ever
    lifted the change), and the failed lift can be asked for again, which then cancels it."""
    log, actions = _maintenance(tmp_path)
    count = tmp_path / "offcount"
    off = script(
        tmp_path,
        "off2",
        f"p = {str(count)!r}\nn = int(open(p).read()) if os.path.exists(p) else 0\n"
        f"open(p, 'w').write(str(n + 1))\n"
        f"if not n: sys.exit(1)\n"
        f"open({str(log)!r}, 'a').write('off ' + sys.argv[1] + '\\n')",
    )
    actions = actions.replace(str(tmp_path / "off"), str(off))
    client = await make_client(config(tmp_path, smtp, actions, MAINTENANCE_RULE))
    second = alert("BackendErrors", backend="web-1", instance="lb-b")
    await post(client, webhook(alert("BackendErrors", backend="web-1", instance="lb-a")))
    await eventually(lambda: _runs(client, "done", 1), "the first run finished")
    clock.advance(timedelta(seconds=30))
    await post(client, webhook(second))
    await eventually(lambda: _runs(client, "done", 2), "the second run finished")
    first_run, second_run = await _run_ids(client)
    status, _ = await _lift(client, first_run)
    assert status == 202
    await eventually(lambda: _true(count.exists()), "the lift ran (and failed)")
    await asyncio.sleep(0.3)
    assert await _undone(client, "cancelled") == []
    status, answer = await _lift(client, first_run)  # again, once the lock is free
    assert status == 202, answer
    await eventually(lambda: _true("off web-1" in log.read_text()), "lifted on the retry")
    await eventually(lambda: _cancelled(client, [second_run]), "the other lift stood down")
    await post(client, webhook(alert("BackendErrors", "resolved", **second["labels"])))
    await asyncio.sleep(0.2)
    for _ in range(3):
        clock.advance(timedelta(minutes=10))
        await asyncio.sleep(0.3)
    assert await _lines(log) == ["on web-1", "on web-1", "off web-1"]


async def _postponed(client: Any, run: str) -> bool:
    return [e["run_id"] for e in await _undone(client, "postponed")] == [run]


async def test_a_lift_by_hand_of_a_postponed_lift_runs_beside_a_slow_lift(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """Two changes due at once: web-1's undo is slow; web-2's alert fired again (its new run
    skipped by the cooldown), so the engine postpones web-2's lift. The operator lifts web-2
    while web-1's undo runs: it runs now, beside the slow one (lifts have a lane of their
    own), and stays lifted. (The race of a postponement decided before the lift by hand and
    written after it is the store's: test_store_sqlite, postponed_after_a_lift_by_hand.)"""
    log, actions = _maintenance(tmp_path)
    actions = actions.replace("cooldown: 0", "cooldown: 1h")
    script(  # web-1's lift is slow
        tmp_path,
        "off",
        f"if sys.argv[1] == 'web-1': open({str(log)!r}, 'a').write('lifting web-1\\n')\n"
        "if sys.argv[1] == 'web-1': time.sleep(1.5)\n"
        f"open({str(log)!r}, 'a').write('off ' + sys.argv[1] + '\\n')",
    )
    client = await make_client(config(tmp_path, smtp, actions, MAINTENANCE_RULE))
    one = alert("BackendErrors", backend="web-1", instance="lb-a")
    two = alert("BackendErrors", backend="web-2", instance="lb-b")
    await post(client, webhook(one))
    await eventually(lambda: _runs(client, "done", 1), "web-1 on")
    clock.advance(timedelta(seconds=30))
    await post(client, webhook(two))
    await eventually(lambda: _runs(client, "done", 2), "web-2 on")
    _, web2_run = await _run_ids(client)
    await post(client, webhook(alert("BackendErrors", "resolved", **one["labels"])))
    await post(client, webhook(alert("BackendErrors", "resolved", **two["labels"])))
    await asyncio.sleep(0.2)
    clock.advance(timedelta(minutes=1))
    # web-2 fires again within its hold-down (a new episode; its run is skipped: cooldown)
    again = alert("BackendErrors", starts="2026-01-05T09:30:00Z", **two["labels"])
    await post(client, webhook(again))
    await eventually(lambda: _runs(client, "skipped", 1), "the re-fire's run skipped")
    clock.advance(timedelta(minutes=5))  # both lifts due; web-1's undo is slow
    await eventually(lambda: _true("lifting web-1" in log.read_text()), "web-1's lift runs")
    await eventually(lambda: _postponed(client, web2_run), "postponed")
    status, _ = await _lift(client, web2_run)
    assert status == 202
    await eventually(lambda: _true("off web-2" in log.read_text()), "web-2 lifted as asked")
    assert "off web-1" not in log.read_text(), "web-2's lift waited for web-1's slow one"
    await eventually(lambda: _true("off web-1" in log.read_text()), "web-1 lifted")
    answer = await client.get("/api/v1/actions", headers=AUTH)
    lifts = {r["runId"]: r["undo"] for r in (await answer.json())["data"]["recent"]}
    assert lifts[web2_run] == "done"


async def test_an_nft_lift_by_hand_cancels_another_actions_lift_of_the_same_element(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """Two actions (ssh 1h, web 24h) block one address into the same nft set: one element,
    one lift argv. Lifting the ssh run by hand deletes the element; the web run's lift, of
    a gone element, stands down (it ran, failed, and paged)."""
    log = tmp_path / "fw.log"
    have = tmp_path / "set"
    body = (
        f"open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        f"p = {str(have)!r}\n"
        "if 'add' in sys.argv: open(p, 'w').write('x')\n"
        "if 'delete' in sys.argv:\n"
        "    if not os.path.exists(p):\n"
        "        sys.stderr.write('Error: Could not process rule: No such file or directory')\n"
        "        sys.exit(1)\n"
        "    os.remove(p)\n"
    )
    tool = script(tmp_path, "nft", body)
    block = """
  {name}:
    kind: block-address
    nft: {tool}
    duration: {duration}
    params:
      address: {{from: label, key: source_ip, type: ip}}
    cooldown: 0
    undo: builtin
    undo_hold_down: 5m
"""
    actions = "actions:" + block.format(name="block-ssh", tool=tool, duration="1h")
    actions += block.format(name="block-web", tool=tool, duration="24h")
    rules = """
rules:
  - name: ssh
    matchers: ['alertname="SSHBruteForce"']
    severity: P1
    category: security
    actions: [block-ssh]
  - name: web
    matchers: ['alertname="WebLoginBruteForce"']
    severity: P1
    category: security
    actions: [block-web]
"""
    client = await make_client(config(tmp_path, smtp, actions, rules))
    await post(client, webhook(alert("SSHBruteForce", source_ip="203.0.113.7")))
    await eventually(lambda: _runs(client, "done", 1), "blocked for ssh")
    clock.advance(timedelta(seconds=30))
    web = alert("WebLoginBruteForce", source_ip="203.0.113.7")
    await post(client, webhook(web))
    await eventually(lambda: _runs(client, "done", 2), "blocked for web")
    ssh_run, web_run = await _run_ids(client)
    status, _ = await _lift(client, ssh_run)
    assert status == 202
    await eventually(lambda: _true("delete" in log.read_text()), "ssh lifted by hand")
    await eventually(lambda: _cancelled(client, [web_run]), "the web lift stood down")
    await post(client, webhook(alert("WebLoginBruteForce", "resolved", **web["labels"])))
    await asyncio.sleep(0.2)
    clock.advance(timedelta(minutes=6))
    await asyncio.sleep(1.0)
    timeline = (await incident(client))["timeline"]
    failed = [e["detail"]["reason"] for e in timeline if e["kind"] == "containment_failed"]
    assert not any("undo of block-web failed" in r for r in failed), failed
    assert log.read_text().count("delete") == 1


async def test_actions_status_shows_the_kill_switch_time_as_the_other_tables_do(
    make_client: ClientFactory, tmp_path: Path, smtp: SmtpTestServer
) -> None:
    """`actions status` while paused: the time to the second in UTC, as every table shows
    times (it was raw ISO with microseconds and an offset; docs review)."""
    _, actions = _maintenance(tmp_path)
    path = config(tmp_path, smtp, actions, MAINTENANCE_RULE)
    client = await make_client(path)
    url = str(client.make_url("")).rstrip("/")
    paused = await asyncio.to_thread(
        cli, path, url, "actions", "pause", "--reason", "maintenance window", "--by", "ops"
    )
    assert paused.returncode == 0, paused.stderr
    listed = await asyncio.to_thread(cli, path, url, "actions", "status")
    assert re.search(
        r"^PAUSED by ops at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC: maintenance window$",
        listed.stdout,
        re.MULTILINE,
    ), listed.stdout

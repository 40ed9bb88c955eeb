"""An operator records that a run's change is gone (`responder actions lifted RUN --reason
TEXT`, POST /api/v1/actions/lifted): removed by hand, or its lift can never succeed. Nothing
runs; the run's lift ends as 'removed_by_hand' with who and why, other runs' lifts of the
same change stand down, and the run's ContainmentLiftFailed resolves."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

from responder.clock import FakeClock
from responder.testing import SmtpTestServer
from tests.conftest import AUTH, ClientFactory
from tests.test_containment import (
    BACKEND_PARAMS,
    MAINTENANCE_RULE,
    _finished,
    _true,
    config,
    maintenance_action,
    maintenance_undone_by_action,
    on_off_scripts,
    script,
    smtp,
)
from tests.test_containment_lift_by_hand import _run_ids
from tests.test_containment_lift_failed import RULES, _lines, _run_id, _state
from tests.test_containment_shared_change import _runs, _undone
from tests.test_escalation_story import alert, eventually, incident, post, webhook
from tests.test_process_escalation import cli

__all__ = ["smtp"]

REASON = "took web-1 out of maintenance in the LB console"


async def _lifted(
    client: Any, run: str, reason: str = REASON, by: str = "alice"
) -> tuple[int, dict[str, Any]]:
    body = {"run": run, "reason": reason, "by": by}
    answer = await client.post("/api/v1/actions/lifted", json=body, headers=AUTH)
    return answer.status, await answer.json(content_type=None)


def _maintenance_with_undo_action(folder: Path, *, undo: bool = True) -> str:
    """``maintenance`` puts a backend into maintenance (writing to ``log``); with ``undo``,
    the action ``maintenance-off`` lifts it 5 minutes after its alert resolved."""
    log = folder / "log"
    on, off = on_off_scripts(folder, log)
    if undo:
        return "actions:\n" + maintenance_undone_by_action(on, off)
    return f"""
actions:
  maintenance:
    kind: exec
    argv: [{on}, "{{backend}}"]
    params: {BACKEND_PARAMS}
    cooldown: 0
"""


async def test_a_lift_whose_undo_action_a_reload_removed_is_recorded_as_removed_by_hand(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """web-1 went into maintenance; a reload then dropped the maintenance-off action, so
    its lift, after the resolve, fails and can never succeed: ContainmentLiftFailed
    (incident 2). The operator takes web-1 out of maintenance by hand and says so with
    `actions lifted`: nothing runs, the alert resolves and stays resolved, the timeline,
    status, report and metrics say who removed it and why. Asked again, it says so."""
    log = tmp_path / "log"
    path = config(tmp_path, smtp, _maintenance_with_undo_action(tmp_path), RULES)
    client = await make_client(path)
    fired = alert("BackendErrors", backend="web-1", service="shop")
    await post(client, webhook(fired))
    await eventually(lambda: _finished(client), "web-1 in maintenance")
    config(tmp_path, smtp, _maintenance_with_undo_action(tmp_path, undo=False), RULES)
    assert (await client.post("/-/reload", headers=AUTH)).status == 200
    await post(client, webhook(alert("BackendErrors", "resolved", **fired["labels"])))
    await eventually(lambda: _state(client, 1, "resolved"), "its incident resolved")
    await asyncio.sleep(0.2)
    clock.advance(timedelta(minutes=6))
    await eventually(lambda: _state(client, 2, "triggered"), "ContainmentLiftFailed")
    failed = [e for e in (await incident(client))["timeline"] if e["kind"] == "containment_failed"]
    assert "undo action 'maintenance-off' is gone" in failed[-1]["detail"]["reason"]

    run = await _run_id(client, "web-1")
    (own,) = (await incident(client, 2))["alerts"]
    assert f"'responder actions lifted {run} --reason TEXT'" in own["annotations"]["description"]
    url = str(client.make_url("")).rstrip("/")
    args = ("actions", "lifted", run[:12], "--reason", REASON, "--by", "alice")
    done = await asyncio.to_thread(cli, path, url, *args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"run {run}: its change is recorded as removed by hand (by alice: {REASON}); no undo ran",
        "its ContainmentLiftFailed alert resolves",
    ]
    await eventually(lambda: _state(client, 2, "resolved"), "ContainmentLiftFailed resolved")
    assert _lines(log) == ["on web-1"], "something ran"

    (removed,) = [
        e
        for e in (await incident(client))["timeline"]
        if e["kind"] == "action_undone" and e["detail"].get("undo") == "removed_by_hand"
    ]
    assert removed["actor"] == "alice"
    assert removed["detail"] == {
        "run_id": run,
        "action": "maintenance",
        "undo": "removed_by_hand",
        "by": "alice",
        "reason": REASON,
    }
    metrics = await (await client.get("/metrics")).text()
    assert 'responder_actions_total{action="maintenance",outcome="undo_removed_by_hand"} 1.0' in (
        metrics
    )
    status = await asyncio.to_thread(cli, path, url, "actions", "status")
    (row,) = [line for line in status.stdout.splitlines() if run[:12] in line]
    assert row.rstrip().endswith("removed_by_hand")
    report = await asyncio.to_thread(cli, path, url, "report", "1")
    (line,) = [line for line in report.stdout.splitlines() if "undo=removed\\_by\\_hand" in line]
    assert "alice via containment" in line
    assert REASON in line

    again = await asyncio.to_thread(cli, path, url, *args[:-1], "bob")
    assert again.returncode == 0, again.stderr
    assert (
        again.stdout == f"run {run} was already recorded as removed by hand (by alice: {REASON})\n"
    )
    lift = await asyncio.to_thread(cli, path, url, "actions", "lift", run)
    assert lift.returncode != 0
    assert f"the change was recorded as removed by hand by alice: {REASON}" in lift.stderr

    for _ in range(3):  # the re-sends (each minute) leave it resolved
        clock.advance(timedelta(minutes=1))
        await asyncio.sleep(0.1)
    assert await _state(client, 2, "resolved")
    assert (await client.get("/api/v1/incidents/3", headers=AUTH)).status == 404
    assert _lines(log) == ["on web-1"]


async def test_a_waiting_lift_recorded_as_removed_by_hand_stands_the_other_lifts_down(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """Two alerts put web-1 into maintenance (two runs, one change), both still firing;
    the operator took web-1 out of maintenance before any lift (by the first run's id, 8
    characters of it): the other run's lift stands down, and once both alerts resolved
    nothing runs. Asked again (by bob), the first record stands."""
    log = tmp_path / "log"
    on, off = on_off_scripts(tmp_path, log)
    path = config(tmp_path, smtp, f"actions:\n{maintenance_action(on, off)}", MAINTENANCE_RULE)
    client = await make_client(path)
    first = alert("BackendErrors", backend="web-1", instance="lb-a")
    second = alert("BackendErrors", backend="web-1", instance="lb-b")
    await post(client, webhook(first))
    await eventually(lambda: _runs(client, "done", 1), "the first run finished")
    clock.advance(timedelta(seconds=30))  # the runs' start times order them
    await post(client, webhook(second))
    await eventually(lambda: _runs(client, "done", 2), "the second run finished")
    first_run, second_run = await _run_ids(client)

    status, answer = await _lifted(client, first_run[:8])
    assert status == 200, answer
    assert answer["changed"] is True
    data = answer["data"]
    assert (data["run"], data["undo"], data["by"], data["reason"]) == (
        first_run,
        "removed_by_hand",
        "alice",
        REASON,
    )
    assert data["liftAlert"] is False
    (cancelled,) = await _undone(client, "cancelled")
    assert cancelled["run_id"] == second_run
    assert cancelled["reason"] == f"the same change was removed by hand (run {first_run})"

    status, answer = await _lifted(client, first_run, reason="another reason", by="bob")
    assert status == 200, answer
    assert answer["changed"] is False
    assert (answer["data"]["by"], answer["data"]["reason"]) == ("alice", REASON)
    assert len(await _undone(client, "removed_by_hand")) == 1

    await post(client, webhook(alert("BackendErrors", "resolved", **first["labels"])))
    await post(client, webhook(alert("BackendErrors", "resolved", **second["labels"])))
    await asyncio.sleep(0.2)
    for _ in range(3):
        clock.advance(timedelta(minutes=5))
        await asyncio.sleep(0.3)
    assert _lines(log) == ["on web-1", "on web-1"], "a lift ran"


async def test_lifted_refuses_what_it_cannot_record(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """A run still running, a run with no lift, a lift that has ended (done): 409, saying
    why. No such run, or too short a start: 404. No reason or no run: 400. No credentials
    or wrong ones: 401. Nothing is recorded."""
    log, hold = tmp_path / "log", tmp_path / "hold"
    write = f"open({str(log)!r}, 'a').write"
    on = script(
        tmp_path,
        "on",
        f"while os.path.exists({str(hold)!r}): time.sleep(0.02)\n"
        f"{write}('on ' + sys.argv[1] + '\\n')",
    )
    off = script(tmp_path, "off", f"{write}('off ' + sys.argv[1] + '\\n')")
    note = script(tmp_path, "note", f"{write}('note\\n')")
    actions = f"""actions:
{maintenance_action(on, off)}  note:
    kind: exec
    argv: [{note}]
    cooldown: 0
"""
    rules = (
        RULES
        + """  - name: disk
    matchers: ['alertname="DiskFull"']
    severity: P3
    category: infrastructure
    actions: [note]
"""
    )
    client = await make_client(config(tmp_path, smtp, actions, rules))
    hold.touch()
    fired = alert("BackendErrors", backend="web-1", service="shop")
    await post(client, webhook(fired))
    await eventually(lambda: _runs(client, "running", 1), "the run is running")
    run = await _run_id(client, "web-1")
    status, answer = await _lifted(client, run)
    assert (status, answer["error"]) == (
        409,
        f"run {run}: the run is still running; record its change as removed once it has finished",
    )
    hold.unlink()
    await eventually(lambda: _runs(client, "done", 1), "the run finished")

    await post(client, webhook(alert("DiskFull", host="db-1")))
    await eventually(lambda: _runs(client, "done", 2), "the note ran")
    (note_run,) = [r for r in await _run_ids(client) if r != run]
    status, answer = await _lifted(client, note_run)
    assert (status, answer["error"]) == (
        409,
        f"run {note_run}: the run has no lift (no undo declared, or it changed nothing): "
        "nothing to record",
    )

    await post(client, webhook(alert("BackendErrors", "resolved", **fired["labels"])))
    await asyncio.sleep(0.2)
    clock.advance(timedelta(minutes=6))
    await eventually(lambda: _true("off web-1" in _lines(log)), "lifted")

    async def lift_recorded() -> bool:
        return bool(await _undone(client, "argv"))

    await eventually(lift_recorded, "its lift recorded")
    status, answer = await _lifted(client, run)
    assert (status, answer["error"]) == (
        409,
        f"run {run}: its lift has ended already (done): its undo ran",
    )

    status, answer = await _lifted(client, "0123456789abcdef")
    assert (status, answer["error"]) == (
        404,
        "no run 0123456789abcdef; `responder actions status` lists recent runs",
    )
    status, answer = await _lifted(client, run[:7])
    assert status == 404
    assert f"no run {run[:7]} (give its id, or 8 or more of its start)" in answer["error"]
    no_reason = await client.post("/api/v1/actions/lifted", json={"run": run}, headers=AUTH)
    assert (no_reason.status, await no_reason.text()) == (400, "reason: expected non-empty text")
    no_run = await client.post("/api/v1/actions/lifted", json={"reason": REASON}, headers=AUTH)
    assert (no_run.status, await no_run.text()) == (400, "run: expected non-empty text")
    body = {"run": run, "reason": REASON}
    anonymous = await client.post("/api/v1/actions/lifted", json=body)
    assert anonymous.status == 401
    wrong = {"Authorization": "Bearer not-the-token-0123456789"}
    assert (await client.post("/api/v1/actions/lifted", json=body, headers=wrong)).status == 401
    assert await _undone(client, "removed_by_hand") == []
    assert _lines(log) == ["on web-1", "note", "off web-1"]


async def test_lifted_from_the_cli_needs_a_reason(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """Without --reason the CLI refuses before it asks the daemon (exit 2, the usage
    error); --help tells `lift` (runs the undo) from `lifted` (runs nothing)."""
    path = config(tmp_path, smtp, _maintenance_with_undo_action(tmp_path), RULES)
    client = await make_client(path)
    url = str(client.make_url("")).rstrip("/")
    refused = await asyncio.to_thread(cli, path, url, "actions", "lifted", "0123456789ab")
    assert refused.returncode == 2
    assert "--reason is required (it is audited)" in refused.stderr
    shown = await asyncio.to_thread(cli, path, url, "actions", "--help")
    assert "lift RUN: run the run's undo now" in " ".join(shown.stdout.split())
    assert "nothing runs" in shown.stdout

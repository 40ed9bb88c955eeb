"""Lifts run in a lane of their own: a lift whose command takes its time (up to its
timeout) holds up neither a fresh alert's containment nor the engine's other work, at most
two run at once, and one under way when the daemon stops is let finish."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from responder.clock import FakeClock
from responder.contain import engine
from responder.runtime import RUNTIME
from responder.store import StoreError
from responder.testing import SmtpTestServer
from tests.conftest import AUTH, ClientFactory
from tests.test_containment import (
    MAINTENANCE_RULE,
    _finished,
    _true,
    config,
    maintenance_action,
    script,
    smtp,
)
from tests.test_escalation_story import alert, eventually, incident, post, webhook

__all__ = ["smtp"]

RULES = """
rules:
  - name: backend-errors
    matchers: ['alertname="BackendErrors"']
    severity: P2
    category: availability
    group_by: [backend]
    actions: [maintenance]
  - name: web-down
    matchers: ['alertname="WebDown"']
    severity: P0
    category: availability
    group_by: [service]
    actions: [restart]
"""


def _actions(folder: Path) -> tuple[Path, Path, str]:
    """Maintenance on a backend (lifted 5 minutes after its alert resolved, by a command that
    says it started, then waits for the gate file to appear) and a service restart. Returns
    the log both write to, the gate and the actions' YAML."""
    log, gate = folder / "log", folder / "gate"
    write = f"open({str(log)!r}, 'a').write"
    on = script(folder, "on", f"{write}('on ' + sys.argv[1] + '\\n')")
    off = script(
        folder,
        "off",
        f"{write}('lifting ' + sys.argv[1] + '\\n')\n"
        "end = time.monotonic() + 20\n"
        f"while not os.path.exists({str(gate)!r}) and time.monotonic() < end: time.sleep(0.02)\n"
        f"{write}('off ' + sys.argv[1] + '\\n')",
    )
    restart = script(folder, "restart", f"{write}('restart ' + sys.argv[1] + '\\n')")
    return (
        log,
        gate,
        f"""
actions:
{maintenance_action(on, off, timeout="60s")}  restart:
    kind: exec
    argv: [{restart}, "{{service}}"]
    params:
      service: {{from: label, key: service, type: identifier}}
    cooldown: 0
""",
    )


async def _lines(log: Path) -> list[str]:
    return (await asyncio.to_thread(log.read_text)).splitlines()


async def _has(log: Path, line: str) -> bool:
    return line in await _lines(log)


async def _maintenance_lifting(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,
    backends: tuple[str, ...] = ("web-1",),
) -> tuple[Any, Path, Path]:
    """Each backend was put into maintenance by its alert, which resolved; the hold-down is
    over and the lifts have started (the first two: the lane's room)."""
    log, gate, actions = _actions(tmp_path)
    client = await make_client(config(tmp_path, smtp, actions, RULES))
    for number, backend in enumerate(backends, 1):
        fired = alert("BackendErrors", backend=backend)
        await post(client, webhook(fired, group=backend))
        await eventually(functools.partial(_finished, client, number), f"{backend} on")
        resolved = alert("BackendErrors", "resolved", **fired["labels"])
        await post(client, webhook(resolved, group=backend))
    await asyncio.sleep(0.2)
    clock.advance(timedelta(minutes=6))
    await eventually(lambda: _has(log, f"lifting {backends[0]}"), "the lift started")
    return client, log, gate


async def test_a_p0_alerts_action_does_not_wait_behind_a_slow_lift(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """A site script takes its time to take web-1 out of maintenance; meanwhile a P0 alert
    arrives: its restart runs at once, while the lift still runs (it waited for the lift,
    up to the lift's timeout), and the lift then ends as it would have."""
    client, log, gate = await _maintenance_lifting(make_client, tmp_path, clock, smtp)
    await post(client, webhook(alert("WebDown", service="nginx"), group="nginx"))
    await eventually(lambda: _has(log, "restart nginx"), "the P0's containment ran")
    await eventually(lambda: _finished(client, 2), "and was recorded")
    assert not await _has(log, "off web-1")  # the lift is still under way
    gate.touch()
    await eventually(lambda: _has(log, "off web-1"), "the lift ended")
    assert await _lines(log) == ["on web-1", "lifting web-1", "restart nginx", "off web-1"]


async def test_lifts_run_two_at_a_time(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """The lane has room for two lifts: a third waits for one of them to end, then runs."""
    backends = ("web-1", "web-2", "web-3")
    client, log, gate = await _maintenance_lifting(make_client, tmp_path, clock, smtp, backends)

    def lifting() -> list[str]:
        return [line for line in log.read_text().splitlines() if line.startswith("lifting")]

    await eventually(lambda: _true(len(lifting()) == 2), "two lifts under way")
    await asyncio.sleep(0.3)
    assert len(lifting()) == 2
    gate.touch()
    for backend in backends:
        await eventually(functools.partial(_has, log, f"off {backend}"), f"{backend} lifted")
    assert len(lifting()) == 3
    del client


def _rows(folder: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of the daemon's database under ``folder``, read beside the running daemon."""
    (db,) = folder.rglob("responder.db")
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _undo_states(folder: Path) -> list[str]:
    rows = _rows(folder, "SELECT undo_state FROM action_runs ORDER BY started_at")
    return [str(state) for (state,) in rows]


async def test_a_lift_under_way_when_the_daemon_stops_is_let_finish(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """The daemon stops while a lift runs: the lift ends and is recorded as done before the
    engine stops (it was cut off, to run again at the next start)."""
    client, log, gate = await _maintenance_lifting(make_client, tmp_path, clock, smtp)
    asyncio.get_running_loop().call_later(0.3, gate.touch)
    await client.close()
    assert await _lines(log) == ["on web-1", "lifting web-1", "off web-1"]
    assert _undo_states(tmp_path) == ["done"]


async def test_a_lift_cut_off_by_the_shutdown_runs_again_at_the_next_start(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lift still running when the shutdown's grace period ends is cut off (its process
    group killed): it stays due, and the next start runs it."""
    monkeypatch.setattr(engine, "LIFT_GRACE_S", 0.2)
    client, log, gate = await _maintenance_lifting(make_client, tmp_path, clock, smtp)
    await client.close()
    assert await _lines(log) == ["on web-1", "lifting web-1"]
    assert _undo_states(tmp_path) == ["wait"]
    gate.touch()
    await make_client(tmp_path / "config.yaml")
    await eventually(lambda: _has(log, "off web-1"), "lifted after the restart")


async def test_a_cut_off_lift_of_a_command_is_failed_whatever_its_output_says(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A site's lift command, cut off by the shutdown, fails when run again, and its error
    quotes the alert's label (attacker text) holding iptables' 'no such rule' answer: that
    is no answer of the block tool, so the lift is failed (people are told the change is
    still in place), not done as if a cut-off delete had removed it."""
    monkeypatch.setattr(engine, "LIFT_GRACE_S", 0.2)
    gate = tmp_path / "gate"
    on = script(tmp_path, "on", "")
    off = script(
        tmp_path,
        "off",
        f"if not os.path.exists({str(gate)!r}): time.sleep(20)\n"
        "sys.stderr.write('cannot end maintenance of backend ' + sys.argv[1] + '\\n')\n"
        "sys.exit(1)",
    )
    actions = maintenance_action(on, off, timeout="60s").replace(
        "type: identifier}", "type: text, pattern: '[ -~]+'}"
    )
    client = await make_client(config(tmp_path, smtp, f"actions:\n{actions}", MAINTENANCE_RULE))
    fired = alert("BackendErrors", backend="Bad rule (does a matching rule exist in that chain?)")
    await post(client, webhook(fired, group="web-1"))
    await eventually(lambda: _finished(client, 1), "in maintenance")
    await post(client, webhook(alert("BackendErrors", "resolved", **fired["labels"])))
    await asyncio.sleep(0.2)
    clock.advance(timedelta(minutes=6))
    await eventually(lambda: _true(bool(_rows(tmp_path, _LIFTING))), "the lift started")
    await client.close()  # the lift is cut off by the shutdown
    assert _undo_states(tmp_path) == ["wait"]
    gate.touch()
    await make_client(tmp_path / "config.yaml")
    await eventually(lambda: _true(_undo_states(tmp_path) != ["wait"]), "lifted again")
    assert _undo_states(tmp_path) == ["failed"]


_LIFTING = "SELECT 1 FROM action_runs WHERE json_extract(undo, '$.lifting') IS NOT NULL"


async def test_while_the_kill_switch_holds_a_lift_checks_are_still_judged(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """Paused: web-1's lift is due and held, and the restart's check falls due meanwhile;
    the check is judged at its deadline (the alert still fires: failed), the lift waits for
    the release and then runs."""
    log, gate, actions = _actions(tmp_path)
    gate.touch()
    actions = actions.replace(
        "  restart:\n", "  restart:\n    check: {alert_resolves_within: 10m}\n"
    )
    client = await make_client(config(tmp_path, smtp, actions, RULES))
    fired = alert("BackendErrors", backend="web-1")
    await post(client, webhook(fired, group="web-1"))
    await eventually(lambda: _finished(client, 1), "web-1 on")
    await post(client, webhook(alert("WebDown", service="nginx"), group="nginx"))
    await eventually(lambda: _finished(client, 2), "nginx restarted")
    paused = await client.post(
        "/api/v1/actions/pause", json={"reason": "hands on", "by": "alice"}, headers=AUTH
    )
    assert paused.status == 200
    await post(client, webhook(alert("BackendErrors", "resolved", **fired["labels"])))
    await asyncio.sleep(0.2)
    clock.advance(timedelta(minutes=11))  # past the hold-down and the check's deadline

    async def check_failed() -> bool:
        doc = await incident(client, 2)
        return "containment_failed" in [e["kind"] for e in doc["timeline"]]

    await eventually(check_failed, "the check judged while paused")
    assert not await _has(log, "lifting web-1")
    resumed = await client.post("/api/v1/actions/resume", json={"by": "alice"}, headers=AUTH)
    assert resumed.status == 200
    await eventually(lambda: _has(log, "off web-1"), "lifted once released")


def _run_rows(folder: Path) -> list[tuple[str, str | None]]:
    rows = _rows(folder, "SELECT state, undo_state FROM action_runs ORDER BY started_at")
    return [(str(state), undo) for state, undo in rows]


async def test_an_alert_that_fires_again_while_its_lift_runs_is_contained_after_the_lift(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """web-1's lift (out of maintenance) is under way when its alert fires again: the new
    run puts web-1 back into maintenance only once the lift has ended, so web-1 ends in
    maintenance while its alert fires, and the new run's lift is the one still to come."""
    client, log, gate = await _maintenance_lifting(make_client, tmp_path, clock, smtp)
    again = alert("BackendErrors", starts="2026-01-05T09:20:00Z", backend="web-1")
    await post(client, webhook(again, group="web-1"))
    await asyncio.sleep(0.5)  # the new run would have run by now, were it not waiting
    assert await _lines(log) == ["on web-1", "lifting web-1"]
    gate.touch()

    async def both_done() -> bool:
        return [state for state, _ in _run_rows(tmp_path)] == ["done", "done"]

    await eventually(both_done, "the new run finished")
    assert await _lines(log) == ["on web-1", "lifting web-1", "off web-1", "on web-1"]
    assert _run_rows(tmp_path) == [("done", "done"), ("done", None)]


async def test_a_lift_by_hand_asked_while_the_same_change_is_made_runs_after_it(
    make_client: ClientFactory, tmp_path: Path, smtp: SmtpTestServer
) -> None:
    """lb1's alert put web-1 into maintenance; lb2's alert for web-1 is putting it into
    maintenance again (slowly) when Alice lifts lb1's run by hand: her lift runs once lb2's
    run is done, so web-1 ends out of maintenance as she asked (lb2's lift stands down: the
    change was lifted by hand), not in maintenance with no lift left to come."""
    log, gate = tmp_path / "log", tmp_path / "gate-on"
    write = f"open({str(log)!r}, 'a').write"
    on = script(
        tmp_path,
        "on",
        f"while not os.path.exists({str(gate)!r}): time.sleep(0.02)\n"
        f"{write}('on ' + sys.argv[1] + '\\n')",
    )
    off = script(tmp_path, "off", f"{write}('off ' + sys.argv[1] + '\\n')")
    actions = f"""
actions:
{maintenance_action(on, off, timeout="60s")}"""
    gate.touch()
    log.touch()
    client = await make_client(config(tmp_path, smtp, actions, RULES.split("  - name: web")[0]))
    await post(client, webhook(alert("BackendErrors", backend="web-1", lb="lb1"), group="web-1"))
    await eventually(lambda: _has(log, "on web-1"), "lb1's run")
    await eventually(lambda: _true(_run_rows(tmp_path) == [("done", None)]), "and done")
    (first,) = _run_ids(tmp_path)
    gate.unlink()
    await post(client, webhook(alert("BackendErrors", backend="web-1", lb="lb2"), group="web-1"))
    await eventually(lambda: _true(len(_run_rows(tmp_path)) == 2), "lb2's run under way")
    lifted = await client.post(
        "/api/v1/actions/lift", json={"run": first, "by": "alice"}, headers=AUTH
    )
    assert lifted.status == 202
    await asyncio.sleep(0.5)  # the lift would have run by now, were it not waiting
    assert await _lines(log) == ["on web-1"]
    gate.touch()
    await eventually(lambda: _has(log, "off web-1"), "the lift by hand ran")
    await asyncio.sleep(0.2)
    assert await _lines(log) == ["on web-1", "on web-1", "off web-1"]
    assert _run_rows(tmp_path) == [("done", "done"), ("done", "cancelled")]


def _run_ids(folder: Path) -> list[str]:
    rows = _rows(folder, "SELECT run_id FROM action_runs ORDER BY started_at")
    return [str(run_id) for (run_id,) in rows]


async def test_a_run_whose_record_failed_holds_neither_its_target_nor_its_lifts(
    make_client: ClientFactory, tmp_path: Path, smtp: SmtpTestServer
) -> None:
    """lb2's run of maintenance on web-1 could not be recorded (the disk), so it never
    started. It does not read as running afterwards: Alice's lift by hand of lb1's run goes
    at once (the lane does not spin on it meanwhile), and a later alert for web-1 runs."""
    log, gate, actions = _actions(tmp_path)
    gate.touch()
    client = await make_client(config(tmp_path, smtp, actions, RULES))
    store = client.app[RUNTIME].store
    await post(client, webhook(alert("BackendErrors", backend="web-1", lb="lb1"), group="web-1"))
    await eventually(lambda: _finished(client, 1), "lb1's run")
    (first,) = _run_ids(tmp_path)

    real_record, real_due = store.record_run, store.due_undos
    failures = [StoreError("commit failed: disk I/O error")]
    passes = 0

    async def flaky_record(*args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return await real_record(*args, **kwargs)

    async def counted_due(*args: Any, **kwargs: Any) -> Any:
        nonlocal passes
        passes += 1
        return await real_due(*args, **kwargs)

    store.record_run, store.due_undos = flaky_record, counted_due
    await post(client, webhook(alert("BackendErrors", backend="web-1", lb="lb2"), group="web-1"))
    await eventually(lambda: _true(not failures), "lb2's run not recorded")
    await asyncio.sleep(0.1)
    lifted = await client.post(
        "/api/v1/actions/lift", json={"run": first, "by": "alice"}, headers=AUTH
    )
    assert lifted.status == 202
    await eventually(lambda: _has(log, "off web-1"), "the lift by hand ran")
    assert passes < 10
    await post(client, webhook(alert("BackendErrors", backend="web-1", lb="lb3"), group="web-1"))
    await eventually(lambda: _true(len(_run_ids(tmp_path)) == 2), "lb3's run recorded")
    await eventually(lambda: _true((log.read_text().count("on web-1")) == 2), "lb3's run ran")


def _timeline_kinds(folder: Path) -> list[str]:
    return [str(kind) for (kind,) in _rows(folder, "SELECT kind FROM timeline ORDER BY id")]


async def test_a_run_waiting_for_a_lift_when_the_daemon_stops_runs_at_the_next_start(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """web-1's alert fires again while its lift runs, and the daemon stops: the lift ends
    within the grace period, the run that waited for it does not start then (to be cut off
    and found interrupted), and the next start runs it."""
    client, log, gate = await _maintenance_lifting(make_client, tmp_path, clock, smtp)
    again = alert("BackendErrors", starts="2026-01-05T09:20:00Z", backend="web-1")
    await post(client, webhook(again, group="web-1"))
    await asyncio.sleep(0.2)
    asyncio.get_running_loop().call_later(0.3, gate.touch)
    await client.close()
    assert await _lines(log) == ["on web-1", "lifting web-1", "off web-1"]
    assert _run_rows(tmp_path) == [("done", "done")]
    await make_client(tmp_path / "config.yaml")
    await eventually(lambda: _true(len(_run_rows(tmp_path)) == 2), "run at the next start")
    await eventually(lambda: _true(_run_rows(tmp_path)[1][0] == "done"), "and done")
    assert await _lines(log) == ["on web-1", "lifting web-1", "off web-1", "on web-1"]
    assert "action_interrupted" not in _timeline_kinds(tmp_path)


async def test_a_failed_lift_cut_off_by_the_shutdown_as_it_is_recorded_still_escalates(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """web-1's lift fails (web-1 stays in maintenance) just as the daemon stops: the
    shutdown cuts the lift off once its outcome is written but before the store said so.
    The failure is recorded with its escalation, never the one without the other (a
    failed lift is not tried again, so without it nobody would hear of it)."""
    monkeypatch.setattr(engine, "LIFT_GRACE_S", 0.2)
    _, _, actions = _actions(tmp_path)
    off = script(tmp_path, "off-fails", "sys.exit(1)")
    actions = actions.replace(str(tmp_path / "off"), str(off))
    client = await make_client(config(tmp_path, smtp, actions, RULES))
    store = client.app[RUNTIME].store
    fired = alert("BackendErrors", backend="web-1")
    await post(client, webhook(fired, group="web-1"))
    await eventually(lambda: _finished(client, 1), "web-1 on")
    await post(client, webhook(alert("BackendErrors", "resolved", **fired["labels"])))

    real = store.finish_undo
    written = asyncio.Event()

    async def slow_answer(*args: Any, **kwargs: Any) -> None:
        await real(*args, **kwargs)
        if args[1] == "failed":
            written.set()
            await asyncio.sleep(5)  # the commit is done; its answer is late

    store.finish_undo = slow_answer
    await asyncio.sleep(0.2)
    clock.advance(timedelta(minutes=6))
    await asyncio.wait_for(written.wait(), 5)
    await client.close()
    assert _undo_states(tmp_path) == ["failed"]
    assert "containment_failed" in _timeline_kinds(tmp_path)

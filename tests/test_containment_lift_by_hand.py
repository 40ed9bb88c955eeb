"""An operator lifts a change by hand (`responder actions lift RUN`, POST
/api/v1/actions/lift): whatever the lift waits for, the undo runs now, once, and other runs'
lifts of the same change stand down."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

from responder.clock import FakeClock
from responder.testing import SmtpTestServer
from tests.conftest import AUTH, ClientFactory
from tests.test_containment import MAINTENANCE_RULE, _true, config, smtp
from tests.test_containment_lifts import _maintenance
from tests.test_containment_shared_change import _lines, _runs, _undone
from tests.test_escalation_story import alert, eventually, post, webhook
from tests.test_process_escalation import cli

__all__ = ["smtp"]


async def _run_ids(client: Any) -> list[str]:
    """Oldest first."""
    answer = await client.get("/api/v1/actions", headers=AUTH)
    return [str(r["runId"]) for r in reversed((await answer.json())["data"]["recent"])]


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
    assert f"lift of run {run[:12]} due now (requested by alice)" in done.stdout
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
    cancelled = await _undone(client, "cancelled")
    assert [c["run_id"] for c in cancelled] == [second_run]
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
    assert "no run 0123456789abcdef" in answer["error"]
    short = await client.post("/api/v1/actions/lift", json={"by": "alice"}, headers=AUTH)
    assert short.status == 400
    assert await _lines(log) == ["on web-1"]

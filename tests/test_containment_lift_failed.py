"""A lift that fails after its incident resolved pages someone: the daemon raises an alert
of its own, ContainmentLiftFailed, one per run, which a lift by hand that succeeds resolves.
While the run's incident is still open, the failure escalates that incident instead."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

from responder.clock import FakeClock
from responder.testing import SmtpTestServer
from tests.conftest import AUTH, ClientFactory
from tests.test_containment import _finished, _true, config, maintenance_action, script, smtp
from tests.test_escalation_story import alert, eventually, incident, post, webhook

__all__ = ["smtp"]

RULES = """
rules:
  - name: backend-errors
    matchers: ['alertname="BackendErrors"']
    severity: P2
    category: availability
    group_by: [service]
    actions: [maintenance]
"""


def _actions(folder: Path) -> str:
    """Maintenance on a backend (writing to ``log``), lifted 5 minutes after its alert
    resolved by a command that fails while the file ``broken`` (made here) exists."""
    log, broken = folder / "log", folder / "broken"
    write = f"open({str(log)!r}, 'a').write"
    on = script(folder, "on", f"{write}('on ' + sys.argv[1] + '\\n')")
    off = script(
        folder,
        "off",
        f"if os.path.exists({str(broken)!r}):\n"
        f"    {write}('off failed ' + sys.argv[1] + '\\n'); sys.exit('backend API: 503')\n"
        f"{write}('off ' + sys.argv[1] + '\\n')",
    )
    broken.touch()
    return f"""
actions:
{maintenance_action(on, off)}"""


async def _client(make_client: ClientFactory, tmp_path: Path, smtp: SmtpTestServer) -> Any:
    return await make_client(config(tmp_path, smtp, _actions(tmp_path), RULES))


async def _resolved_and_lift_due(client: Any, clock: FakeClock) -> None:
    """web-1 put into maintenance for its alert (incident 1), which then resolves; past the
    5 minutes' hold-down its lift runs (and fails while ``broken`` exists)."""
    fired = alert("BackendErrors", backend="web-1", service="shop")
    await post(client, webhook(fired))
    await eventually(lambda: _finished(client), "web-1 in maintenance")
    await post(client, webhook(alert("BackendErrors", "resolved", **fired["labels"])))
    await eventually(lambda: _state(client, 1, "resolved"), "its incident resolved")
    await asyncio.sleep(0.2)
    clock.advance(timedelta(minutes=6))


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


async def _state(client: Any, number: int, state: str) -> bool:
    response = await client.get(f"/api/v1/incidents/{number}", headers=AUTH)
    return response.status == 200 and bool((await response.json())["data"]["state"] == state)


async def _run_id(client: Any, backend: str) -> str:
    answer = await client.get("/api/v1/actions", headers=AUTH)
    for run in (await answer.json())["data"]["recent"]:
        if run["target"].endswith(backend):
            return str(run["runId"])
    raise AssertionError(f"no run on {backend}")


async def _lift(client: Any, run: str) -> None:
    answer = await client.post(
        "/api/v1/actions/lift", json={"run": run, "by": "alice"}, headers=AUTH
    )
    assert answer.status == 202, await answer.text()


def _mail_to(smtp: SmtpTestServer, who: str, text: str) -> list[str]:
    return [
        str(m.message["Subject"])
        for m in smtp.messages
        if who in m.rcpt_tos and text in m.raw.decode(errors="replace")
    ]


async def test_a_lift_failed_after_the_resolve_pages_and_a_lift_by_hand_resolves_it(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """web-1's incident resolved; its lift fails 5 minutes later: ContainmentLiftFailed
    opens an incident of its own (the shipped rule: P2, infrastructure) and alice is
    paged for it (nobody was: escalating a resolved incident pages no one). A second
    failure of the same run (a lift by hand, the backend still broken) is a repeat, not a
    new incident; the lift by hand that works resolves it."""
    log = tmp_path / "log"
    client = await _client(make_client, tmp_path, smtp)
    await _resolved_and_lift_due(client, clock)
    await eventually(lambda: _true(_lines(log) == ["on web-1", "off failed web-1"]), "failed")

    await eventually(lambda: _state(client, 2, "triggered"), "an incident for the failure")
    doc = await incident(client, 2)
    assert (doc["rule"], doc["severity"], doc["category"]) == (
        "containment-lift-failed",
        "P2",
        "infrastructure",
    )
    (own,) = doc["alerts"]
    run = await _run_id(client, "web-1")
    assert own["labels"] == {
        "alertname": "ContainmentLiftFailed",
        "action": "maintenance",
        "run": run,
        "target": own["labels"]["target"],
    }
    assert "web-1" in own["labels"]["target"]
    assert f"responder actions lift {run}" in own["annotations"]["summary"]
    clock.advance(timedelta(minutes=1))  # alice's rate limit: two mails already this minute
    await eventually(
        lambda: _true(bool(_mail_to(smtp, "alice@example.com", "ContainmentLiftFailed"))),
        "alice paged for the change still in place",
    )

    await _lift(client, run)  # still broken: the same alert again
    await eventually(
        lambda: _true(_lines(log)[-1:] == ["off failed web-1"] and len(_lines(log)) == 3),
        "failed again",
    )
    await asyncio.sleep(0.3)
    answer = await client.get("/api/v1/incidents/3", headers=AUTH)
    assert answer.status == 404, "a second failure of the run opened another incident"
    assert await _state(client, 2, "triggered")

    # The change stays in place for half a day: the daemon keeps sending its alert, as
    # Alertmanager re-sends its own, so the stale sweep (12h) never takes it for over.
    for _ in range(14):
        clock.advance(timedelta(hours=1))
        await asyncio.sleep(0.1)
        assert await _state(client, 2, "triggered"), "the stale sweep ended the lift's alert"

    (tmp_path / "broken").unlink()
    await _lift(client, run)
    await eventually(lambda: _true(_lines(log)[-1:] == ["off web-1"]), "lifted by hand")
    await eventually(lambda: _state(client, 2, "resolved"), "ContainmentLiftFailed resolved")


async def test_a_lift_failed_while_the_incident_is_open_escalates_it_instead(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """web-1 and web-2 of one service share an incident; web-1 resolves and its lift
    fails while web-2 still fires: that incident escalates (bob, its next level, is paged
    at once, not after 15 minutes) and no alert of the daemon's own is raised. Once the
    incident has resolved, the same run's lift by hand fails again: now nobody would hear
    of it through the incident, and ContainmentLiftFailed is raised."""
    log = tmp_path / "log"
    client = await _client(make_client, tmp_path, smtp)
    one = alert("BackendErrors", backend="web-1", service="shop")
    two = alert("BackendErrors", backend="web-2", service="shop")
    await post(client, webhook(one))
    await eventually(lambda: _finished(client), "web-1 on")
    await post(client, webhook(one, two))  # one run at a time (the concurrency guard)
    await eventually(lambda: _true(sorted(_lines(log)) == ["on web-1", "on web-2"]), "both on")
    await eventually(
        lambda: _true(bool(_mail_to(smtp, "alice@example.com", "BackendErrors"))), "alice paged"
    )
    await post(client, webhook(alert("BackendErrors", "resolved", **one["labels"])))
    await asyncio.sleep(0.2)
    clock.advance(timedelta(minutes=6))
    await eventually(lambda: _true("off failed web-1" in _lines(log)), "web-1's lift failed")
    await eventually(
        lambda: _true(bool(_mail_to(smtp, "bob@example.com", "BackendErrors"))),
        "the open incident escalated to bob",
    )
    await asyncio.sleep(0.3)
    assert await _state(client, 1, "triggered")
    answer = await client.get("/api/v1/incidents/2", headers=AUTH)
    assert answer.status == 404, "an own alert beside the open incident"
    assert not _mail_to(smtp, "alice@example.com", "ContainmentLiftFailed")

    await post(client, webhook(alert("BackendErrors", "resolved", **two["labels"])))
    await eventually(lambda: _state(client, 1, "resolved"), "the incident resolved")
    await _lift(client, await _run_id(client, "web-1"))
    await eventually(lambda: _state(client, 2, "triggered"), "now ContainmentLiftFailed")
    assert (await incident(client, 2))["rule"] == "containment-lift-failed"


async def test_a_later_run_whose_lift_ends_the_same_change_resolves_the_lift_alert(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """web-1's lift fails (ContainmentLiftFailed, incident 2). Another alert puts web-1 in
    maintenance again (a later run of the same change) and, the backend fixed, that run's
    lift takes web-1 out of it: nothing is left in place, so incident 2 resolves. It kept
    firing (re-sent every minute, for ever) while the first run stayed 'failed'."""
    log = tmp_path / "log"
    client = await _client(make_client, tmp_path, smtp)
    await _resolved_and_lift_due(client, clock)
    await eventually(lambda: _state(client, 2, "triggered"), "ContainmentLiftFailed")

    again = alert("BackendErrors", backend="web-1", service="shop", region="eu")
    await post(client, webhook(again))
    await eventually(lambda: _true(_lines(log)[-1:] == ["on web-1"]), "web-1 on again")
    (tmp_path / "broken").unlink()
    await asyncio.sleep(0.2)
    await post(client, webhook(alert("BackendErrors", "resolved", **again["labels"])))
    await asyncio.sleep(0.2)
    clock.advance(timedelta(minutes=6))
    await eventually(lambda: _true(_lines(log)[-1:] == ["off web-1"]), "the later run lifted")
    for _ in range(3):
        clock.advance(timedelta(minutes=1))
        await asyncio.sleep(0.1)
    await eventually(lambda: _state(client, 2, "resolved"), "ContainmentLiftFailed resolved")

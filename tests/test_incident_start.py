"""What counts from an incident's trigger, whatever episodes follow (an unacknowledge, a
severity raise onto another policy, a reload): response targets, their breaches (recorded
once), duration levels, time to acknowledge; (fifth review, stop 13)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from responder.clock import FakeClock
from responder.report import incident_figures
from responder.testing import FakeTwilio, SmtpTestServer
from tests.conftest import AUTH, ClientFactory, write_config
from tests.test_escalation_story import (
    STAKEHOLDER_POLICY,
    _count,
    alert,
    channels,
    eventually,
    incident,
    post,
    settle,
    smtp,  # noqa: F401 - fixture
    smtp_channel,
    twilio,  # noqa: F401 - fixture
    webhook,
)
from tests.test_reload_policies import (
    OPS,
    RULES_DEFAULT,
    RULES_OPS,
    STANDARD,
    config,
)


def _breaches(doc: dict[str, Any], target: str) -> list[dict[str, Any]]:
    return [
        e
        for e in doc["timeline"]
        if e["kind"] == "target_breached" and e.get("detail", {}).get("target") == target
    ]


async def _act(client: Any, action: str, by: str = "alice") -> None:
    answer = await client.post(f"/api/v1/incidents/1/{action}", json={"by": by}, headers=AUTH)
    assert answer.status == 200, await answer.text()


async def _minutes(client: Any, clock: FakeClock, n: int) -> None:
    for _ in range(n):
        await settle(client, clock, timedelta(minutes=1))


# -- 1. an unacknowledge moves the resolve target's deadline ---------------------------------

TARGETS = "  response_targets:\n    P1: {respond: 5m, resolve: 20m}\n"


async def test_unacknowledge_does_not_move_the_resolve_target(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,  # noqa: F811
    twilio: FakeTwilio,  # noqa: F811
) -> None:
    """Resolve target 20m. Acked at 1m, unacked and re-acked at 10m, resolved at 25m: the
    incident lasted 25m, and the missed target is recorded (the deadline does not move
    with the unacknowledge)."""
    extra = channels(tmp_path, smtp, twilio)
    client = await make_client(
        write_config(tmp_path, TARGETS + config(OPS + STANDARD) + extra, rules=RULES_OPS)
    )
    await post(client, webhook(alert("DiskFull", instance="a")))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "alice"), "alice")
    await _minutes(client, clock, 1)
    await _act(client, "acknowledge")
    await _minutes(client, clock, 9)
    await _act(client, "unacknowledge")
    await _act(client, "acknowledge")
    await _minutes(client, clock, 15)
    await _act(client, "resolve")
    await _minutes(client, clock, 2)
    doc = await incident(client)
    figures = incident_figures(doc, now=datetime.now(UTC))
    assert _breaches(doc, "resolve"), (
        [e["kind"] for e in doc["timeline"]],
        "report says:",
        figures.resolve,
    )


# -- 2. a reload restarting a triggered incident moves its response deadlines ------------------

TARGETS_10 = "  response_targets:\n    P1: {respond: 10m, resolve: 60m}\n"


async def test_reload_does_not_move_a_triggered_incidents_respond_target(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,  # noqa: F811
    twilio: FakeTwilio,  # noqa: F811
) -> None:
    """Respond target 10m. Nobody acks; a reload at 5m removes the policy; acked at 12m:
    the respond target was missed (the reload does not move its deadline)."""
    extra = channels(tmp_path, smtp, twilio)
    client = await make_client(
        write_config(tmp_path, TARGETS_10 + config(OPS + STANDARD) + extra, rules=RULES_OPS)
    )
    await post(client, webhook(alert("DiskFull", instance="a")))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "alice"), "alice")
    await _minutes(client, clock, 5)
    write_config(tmp_path, TARGETS_10 + config(STANDARD) + extra, rules=RULES_DEFAULT)
    assert (await client.post("/-/reload", headers=AUTH)).status == 200
    await _minutes(client, clock, 7)
    await _act(client, "acknowledge", "carol")
    await _minutes(client, clock, 5)
    doc = await incident(client)
    figures = incident_figures(doc, now=datetime.now(UTC))
    assert _breaches(doc, "respond"), (
        [e["kind"] for e in doc["timeline"]],
        "report: time to acknowledge",
        figures.time_to_acknowledge,
        figures.respond,
    )


# -- 3. a severity raise to another policy records a breach again ------------------------------

RAISE_RULES = """
rules:
  - name: low-thing
    matchers: ['alertname="LowThing"']
    severity: P2
    category: availability
    policy: low
  - name: big-thing
    matchers: ['alertname="BigThing"']
    severity: P1
    category: availability
    policy: standard
"""
RAISE_POLICIES = """
contacts:
  alice: {email: alice@example.com}
  cto: {email: cto@example.com}
  ticket: {email: tickets@example.com}
escalation_policies:
  low:
    levels:
      - targets: [ticket]
  standard:
    levels:
      - targets: [alice]
      - after: 30m
        clock: duration
        targets: [cto]
"""
RAISE_TARGETS = (
    "  response_targets:\n    P1: {respond: 5m, resolve: 8h}\n    P2: {respond: 5m, resolve: 8h}\n"
)


async def test_a_severity_raise_does_not_record_a_respond_breach_twice(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,  # noqa: F811
    twilio: FakeTwilio,  # noqa: F811
) -> None:
    extra = channels(tmp_path, smtp, twilio)
    path = write_config(tmp_path, RAISE_TARGETS + RAISE_POLICIES + extra, rules=RAISE_RULES)
    client = await make_client(path)
    low = alert("LowThing", instance="a")
    await post(client, webhook(low))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "ticket"), "ticket")
    await _minutes(client, clock, 7)  # respond target (5m) breached, recorded
    await post(client, webhook(low, alert("BigThing", instance="a")))
    await _minutes(client, clock, 7)
    doc = await incident(client)
    assert len(_breaches(doc, "respond")) == 1, [
        (e["at"], e["detail"]) for e in _breaches(doc, "respond")
    ]


# -- 4. lasting_since is kept by an unacknowledge only ---------------------------------------


@pytest.mark.parametrize("unacked_before", [True, False])
async def test_a_severity_raise_counts_duration_levels_the_same_either_way(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,  # noqa: F811
    twilio: FakeTwilio,  # noqa: F811
    unacked_before: bool,
) -> None:
    """A P2 incident under 'low' raised at 20m to 'standard' (cto: duration 30m): the cto
    hears of it at 30m of the incident, whether or not it was unacknowledged before."""
    extra = channels(tmp_path, smtp, twilio)
    path = write_config(tmp_path, RAISE_POLICIES + extra, rules=RAISE_RULES)
    client = await make_client(path)
    low = alert("LowThing", instance="a")
    await post(client, webhook(low))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "ticket"), "ticket")
    await _minutes(client, clock, 1)
    if unacked_before:
        await _act(client, "acknowledge", "ticket")
        await _minutes(client, clock, 1)
        await _act(client, "unacknowledge", "ticket")
        await _minutes(client, clock, 18)
    else:
        await _minutes(client, clock, 19)
    await post(client, webhook(low, alert("BigThing", instance="a")))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "alice"), "alice")
    await _minutes(client, clock, 11)  # 31m of the incident
    assert await _count(client, lambda p: p["contact"] == "cto"), "cto not paged at 31m"


# -- 5. the notices say how long the incident has lasted, not the episode --------------------


def _mail_text(server: SmtpTestServer, to: str, subject_has: str) -> str | None:
    for mail in server.messages:
        if to in mail.rcpt_tos and subject_has in str(mail.message["Subject"]):
            body = mail.message.get_body(("plain",))
            return None if body is None else str(body.get_content())
    return None


async def test_status_update_and_recovery_count_from_the_trigger_not_the_unacknowledge(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,  # noqa: F811
) -> None:
    """Acked at 1m, unacked and acked again at 20m (a new episode), mgr's status update at
    30m and the resolve at 40m: the update says open 30m and the recovery 40m, as the report
    and the resolve target count (new-user review: they said 10m and 20m, counting from the
    unacknowledge, and a recovery 'after 7s' stood beside a report's 23s)."""
    client = await make_client(write_config(tmp_path, STAKEHOLDER_POLICY + smtp_channel(smtp)))
    await post(client, webhook(alert("Other", instance="a")))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "alice"), "alice")
    await _minutes(client, clock, 1)
    await _act(client, "acknowledge")
    await _minutes(client, clock, 19)
    await _act(client, "unacknowledge")
    await _act(client, "acknowledge")
    await _minutes(client, clock, 10)

    async def status_sent() -> bool:
        return _mail_text(smtp, "mgr@example.com", "status") is not None

    await eventually(status_sent, "mgr's status update at 30m")
    assert "Open for:      30m (since " in (_mail_text(smtp, "mgr@example.com", "status") or "")
    await _minutes(client, clock, 10)
    await post(client, webhook(alert("Other", "resolved", instance="a")))
    await _minutes(client, clock, 1)

    async def recovered() -> bool:
        return _mail_text(smtp, "alice@example.com", "RESOLVED") is not None

    await eventually(recovered, "alice told of the recovery")
    assert "Duration:      40m (triggered " in (
        _mail_text(smtp, "alice@example.com", "RESOLVED") or ""
    )

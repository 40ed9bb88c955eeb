"""The operator's day, with a fake clock, through the real app: webhooks in over HTTP, the
escalation engine and the outbox running, pages out to a real SMTP server and the real twilio
library talking to a Twilio-compatible server on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from responder.clock import FakeClock
from responder.report import TargetStatus, incident_figures
from responder.testing import FakeTwilio, Fault, SmtpTestServer
from tests.conftest import AUTH, ClientFactory, write_config

Client = TestClient[Any, Any]

POLICY = """
contacts:
  alice: {sms: "+15551230001", email: alice@example.com, backup: bob}
  bob: {sms: "+15551230002", email: bob@example.com}
  mgr: {email: mgr@example.com}
  ciso: {email: ciso@example.com}
escalation_policies:
  standard:
    levels:
      - targets: [alice]
      - after: 15m
        targets: [bob]
      - after: 30m
        clock: duration
        targets: [mgr]
      - after: 30m
        clock: duration
        when: {category: security}
        targets: [ciso]
    status_updates: {every: 30m, to: [mgr]}
incidents:
  default_policy: standard
"""


@pytest.fixture
async def smtp() -> AsyncIterator[SmtpTestServer]:
    async with SmtpTestServer() as server:
        yield server


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as fake:
        yield fake


def story_config(folder: Path, smtp: SmtpTestServer, twilio: FakeTwilio, extra: str = "") -> Path:
    return write_config(folder, POLICY + channels(folder, smtp, twilio) + extra)


def channels(folder: Path, smtp: SmtpTestServer, twilio: FakeTwilio) -> str:
    """The ``channels`` section for the test SMTP server and the fake Twilio."""
    (folder / "twilio_token").write_text(twilio.auth_token)
    return f"""
channels:
  smtp:
    host: 127.0.0.1
    port: {smtp.port}
    mode: none
    from: "Responder <responder@example.com>"
  twilio:
    account_sid: {twilio.account_sid}
    auth_token_file: twilio_token
    from: "+15550000000"
    api_base_url: {twilio.base_url}
"""


def alert(
    name: str, status: str = "firing", starts: str = "2026-01-05T09:00:00Z", **labels: str
) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": name, **labels},
        "annotations": {},
        "startsAt": starts,
        "endsAt": "2026-01-05T10:00:00Z" if status == "resolved" else "0001-01-01T00:00:00Z",
    }


def webhook(*alerts: dict[str, Any], group: str = '{}:{alertname="x"}') -> dict[str, Any]:
    return {
        "version": "4",
        "status": "resolved" if all(a["status"] == "resolved" for a in alerts) else "firing",
        "receiver": "responder",
        "groupKey": group,
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://am",
        "alerts": list(alerts),
    }


async def post(client: Client, body: dict[str, Any]) -> None:
    response = await client.post("/api/v1/alertmanager", json=body, headers=AUTH)
    assert response.status == 200, await response.text()


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Let the engine's loops run (real time, a few ms) until ``check`` holds."""
    for _ in range(300):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def incident(client: Client, number: int = 1) -> dict[str, Any]:
    response = await client.get(f"/api/v1/incidents/{number}", headers=AUTH)
    assert response.status == 200, await response.text()
    data: dict[str, Any] = (await response.json())["data"]
    return data


def pages_of(doc: dict[str, Any], **match: str) -> list[tuple[str, str, str, str]]:
    return [
        (p["step"], p["contact"], p["channel"], p["state"])
        for p in doc["pages"]
        if all(p[k] == v for k, v in match.items())
    ]


async def settle(client: Client, clock: FakeClock, delta: timedelta) -> None:
    clock.advance(delta)
    await asyncio.sleep(0.05)


async def test_p1_story_page_escalate_ack_manage_recover(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,
    twilio: FakeTwilio,
) -> None:
    registry = CollectorRegistry()
    client = await make_client(story_config(tmp_path, smtp, twilio), registry)
    brute = alert("SSHBruteForce", source_ip="203.0.113.7", instance="bastion")
    await post(client, webhook(brute))

    # Level 1 at once: alice by SMS and email.
    async def level1_sent() -> bool:
        doc = await incident(client)
        return sorted(pages_of(doc, step="L1")) == [
            ("L1", "alice", "email", "sent"),
            ("L1", "alice", "sms", "sent"),
        ]

    await eventually(level1_sent, "level 1 paged alice")
    doc = await incident(client)
    assert doc["severity"] == "P1"
    assert doc["category"] == "security"
    assert doc["policy"] is None  # the rule names none: the default policy escalates it
    assert [m.rcpt_tos for m in smtp.messages] == [["alice@example.com"]]
    assert [r.to for r in twilio.sent_sms()] == ["+15551230001"]
    assert "Reply ACK 1" in twilio.sent_sms()[0].body

    # Repeats of the same alert change nothing: no new incident, no new page.
    await post(client, webhook(brute))
    await asyncio.sleep(0.05)
    assert len(twilio.sent_sms()) == 1

    # 14 minutes: still nothing more. 15 minutes without ack: level 2, bob.
    await settle(client, clock, timedelta(minutes=14))
    assert len(twilio.sent_sms()) == 1
    clock.advance(timedelta(minutes=1))

    async def level2_sent() -> bool:
        return ("L2", "bob", "sms", "sent") in pages_of(await incident(client))

    await eventually(level2_sent, "level 2 paged bob")

    # Bob acknowledges through the API.
    response = await client.post(
        "/api/v1/incidents/1/acknowledge", json={"by": "bob"}, headers=AUTH
    )
    assert response.status == 200
    body = await response.json()
    assert body["data"]["state"] == "acknowledged"
    assert body["data"]["acknowledgedBy"] == "bob"

    # 30 minutes: no further unacknowledged levels, but the management matrix still goes,
    # the CISO because it is security, and the status update to the manager.
    sms_before = len(twilio.sent_sms())
    clock.advance(timedelta(minutes=15))

    async def management_told() -> bool:
        doc = await incident(client)
        return {("L3", "mgr"), ("L4", "ciso"), ("U1", "mgr")} <= {
            (p["step"], p["contact"]) for p in doc["pages"] if p["state"] == "sent"
        }

    await eventually(management_told, "management and CISO told at 30 minutes")
    assert len(twilio.sent_sms()) == sms_before  # nobody's phone buzzed again

    # Alertmanager resolves: the incident resolves, everyone paged gets a recovery notice.
    await post(client, webhook(alert("SSHBruteForce", "resolved", **brute["labels"])))

    async def recovered() -> bool:
        doc = await incident(client)
        return doc["state"] == "resolved" and {
            p["contact"] for p in doc["pages"] if p["kind"] == "recovery" and p["state"] == "sent"
        } == {"alice", "bob", "mgr", "ciso"}

    # The manager got a message this very minute: the recovery notice waits out the
    # one-message-a-minute limit.
    clock.advance(timedelta(minutes=1))
    await eventually(recovered, "recovery notices to everyone paged")
    doc = await incident(client)
    kinds = [e["kind"] for e in doc["timeline"]]
    for expected in ("triggered", "escalated", "acknowledged", "status_update", "resolved"):
        assert expected in kinds, kinds
    assert kinds.index("acknowledged") < kinds.index("resolved")
    recovery_sms = [r for r in twilio.sent_sms() if r.body.startswith("RESOLVED")]
    assert sorted(r.to for r in recovery_sms) == ["+15551230001", "+15551230002"]

    # Later: nothing else is ever sent for it.
    total = len(smtp.messages) + len(twilio.sent_sms())
    await settle(client, clock, timedelta(hours=3))
    assert len(smtp.messages) + len(twilio.sent_sms()) == total

    text = await (await client.get("/metrics")).text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert (
        samples[("responder_incident_time_to_acknowledge_seconds_count", (("severity", "P1"),))]
        == 1
    )
    assert (
        samples[("responder_incident_time_to_acknowledge_seconds_sum", (("severity", "P1"),))]
        == 15 * 60
    )
    assert samples[("responder_incident_time_to_resolve_seconds_count", (("severity", "P1"),))] == 1


async def test_resolve_before_level2_stops_escalation(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,
    twilio: FakeTwilio,
) -> None:
    client = await make_client(story_config(tmp_path, smtp, twilio))
    down = alert("TargetDown", instance="web-1:9100", job="node")
    await post(client, webhook(down))
    await eventually(lambda: _has(client, ("L1", "alice", "sms", "sent")), "level 1 paged alice")
    await post(client, webhook(alert("TargetDown", "resolved", **down["labels"])))
    await eventually(lambda: _state(client, "resolved"), "resolved")
    await settle(client, clock, timedelta(hours=2))
    doc = await incident(client)
    assert not [p for p in doc["pages"] if p["step"] in ("L2", "L3", "U1")]


async def test_incident_resolves_only_when_all_its_alerts_resolve(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,
    twilio: FakeTwilio,
) -> None:
    client = await make_client(story_config(tmp_path, smtp, twilio))
    a = alert("TargetDown", instance="web-1:9100")
    b = alert("TargetDown", instance="web-2:9100")
    await post(client, webhook(a, b))
    await eventually(lambda: _has(client, ("L1", "alice", "sms", "sent")), "paged")
    doc = await incident(client)
    assert doc["alertCount"] == 2  # one group, one incident
    await post(client, webhook(alert("TargetDown", "resolved", **a["labels"]), b))
    await asyncio.sleep(0.05)
    assert (await incident(client))["state"] == "triggered"
    await post(client, webhook(alert("TargetDown", "resolved", **b["labels"])))
    await eventually(lambda: _state(client, "resolved"), "resolved after the last alert")


async def test_snooze_holds_escalation_then_resumes(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,
    twilio: FakeTwilio,
) -> None:
    client = await make_client(story_config(tmp_path, smtp, twilio))
    await post(client, webhook(alert("TargetDown", instance="web-1:9100")))
    await eventually(lambda: _has(client, ("L1", "alice", "sms", "sent")), "paged")
    response = await client.post(
        "/api/v1/incidents/1/snooze", json={"by": "alice", "for": "1h"}, headers=AUTH
    )
    assert response.status == 200, await response.text()
    assert (await response.json())["data"]["state"] == "snoozed"
    await settle(client, clock, timedelta(minutes=50))
    assert not pages_of(await incident(client), step="L2")
    clock.advance(timedelta(minutes=11))
    await eventually(lambda: _state(client, "triggered"), "snooze ended")

    async def reminded() -> bool:
        # alice, who snoozed it, hears of it again as the snooze ends (escalation review,
        # stop 13): a snooze is no silent acknowledge.
        pages = pages_of(await incident(client), contact="alice", channel="sms", state="sent")
        return any(step.startswith("L1.s") for step, *_ in pages)

    await eventually(reminded, "alice reminded when the snooze ended")
    # The review reads cause before effect: the snooze ended, then its reminder went out
    # (both are recorded at one instant, and the report keeps the stored order).
    kinds = [
        e["kind"]
        for e in (await incident(client))["timeline"]
        if e["kind"] == "snooze_ended"
        or (e["kind"] == "escalated" and str(e["detail"].get("step", "")).startswith("L1.s"))
    ]
    assert kinds == ["snooze_ended", "escalated"]
    # Re-armed: level 2 waits its full 15 minutes after the snooze ends.
    await settle(client, clock, timedelta(minutes=10))
    assert not pages_of(await incident(client), step="L2")
    clock.advance(timedelta(minutes=6))
    await eventually(lambda: _has(client, ("L2", "bob", "sms", "sent")), "level 2 after snooze")


async def test_unsnooze_ends_the_snooze_as_its_time_would(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,
    twilio: FakeTwilio,
) -> None:
    """Snoozed for an hour, ended by bob after 20 minutes: triggered again at once, alice
    (the level reached) is reminded now with the page saying why, level 2 waits its full
    gap from the early end, and the planned end, when it comes, does nothing more."""
    registry = CollectorRegistry()
    client = await make_client(story_config(tmp_path, smtp, twilio), registry)
    await post(client, webhook(alert("TargetDown", instance="web-1:9100")))
    await eventually(lambda: _has(client, ("L1", "alice", "sms", "sent")), "paged")
    planned_end = clock.now() + timedelta(hours=1)
    response = await client.post(
        "/api/v1/incidents/1/snooze", json={"by": "alice", "for": "1h"}, headers=AUTH
    )
    assert response.status == 200, await response.text()
    await settle(client, clock, timedelta(minutes=20))
    ended_at = clock.now()
    response = await client.post(
        "/api/v1/incidents/1/unsnooze",
        json={"by": "bob", "text": "deploy rolled back, watching"},
        headers=AUTH,
    )
    assert response.status == 200, await response.text()
    answer = await response.json()
    assert answer["changed"] is True
    data = answer["data"]
    assert (data["state"], data["acknowledgedAt"]) == ("triggered", None)
    # The end is kept, as after a snooze that ran out: escalation is re-armed from it.
    assert data["snoozedUntil"] == ended_at.isoformat().replace("+00:00", "Z")

    async def reminded() -> bool:
        pages = pages_of(await incident(client), contact="alice", channel="sms", state="sent")
        return (f"L1.s{int(ended_at.timestamp())}", "alice", "sms", "sent") in pages

    await eventually(reminded, "alice reminded when bob ended the snooze")
    reminder = twilio.sent_sms("+15551230001")[-1]
    assert "Its snooze ended" in reminder.body, reminder.body
    timeline = (await incident(client))["timeline"]
    ended = [e for e in timeline if e["kind"] == "snooze_ended"]
    assert [(e["actor"], e["via"]) for e in ended] == [("bob", "api")]
    assert ended[0]["detail"] == {
        "until": planned_end.isoformat(),
        "note": "deploy rolled back, watching",
    }
    kinds = [
        e["kind"]
        for e in timeline
        if e["at"] == ended[0]["at"] and e["kind"] in ("snooze_ended", "escalated")
    ]
    assert kinds == ["snooze_ended", "escalated"]  # cause before effect, as the engine writes

    # Re-armed from the early end: level 2 waits its full 15 minutes after it.
    await settle(client, clock, timedelta(minutes=14))
    assert not pages_of(await incident(client), step="L2")
    clock.advance(timedelta(minutes=2))
    await eventually(lambda: _has(client, ("L2", "bob", "sms", "sent")), "level 2 after unsnooze")
    # The snooze's planned end passes: it is over already, nobody hears of it again.
    await settle(client, clock, timedelta(minutes=40))
    doc = await incident(client)
    assert [e["kind"] for e in doc["timeline"]].count("snooze_ended") == 1
    assert {p[0] for p in pages_of(doc, contact="alice") if ".s" in p[0]} == {
        f"L1.s{int(ended_at.timestamp())}"
    }
    text = await (await client.get("/metrics")).text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("responder_incident_actions_total", (("action", "unsnooze"), ("via", "api")))]
    # The reminder is counted as the engine counts its steps.
    escalated = [e for e in doc["timeline"] if e["kind"] == "escalated"]
    assert samples[("responder_escalation_steps_total", (("kind", "escalated"),))] == len(escalated)


async def test_unsnooze_of_an_incident_not_snoozed(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,
    twilio: FakeTwilio,
) -> None:
    """Not snoozed (triggered, acknowledged): 200 with changed false, nothing happens but a
    note given with it; resolved: 409, as the other actions on a resolved incident."""
    client = await make_client(story_config(tmp_path, smtp, twilio))
    await post(client, webhook(alert("TargetDown", instance="web-1:9100")))
    await eventually(lambda: _has(client, ("L1", "alice", "sms", "sent")), "paged")

    async def unsnooze(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        response = await client.post("/api/v1/incidents/1/unsnooze", json=body, headers=AUTH)
        document: dict[str, Any] = await response.json()
        return response.status, document

    status, answer = await unsnooze({"by": "bob", "text": "was it snoozed?"})
    assert (status, answer["changed"], answer["data"]["state"]) == (200, False, "triggered")
    doc = await incident(client)
    assert [e["detail"] for e in doc["timeline"] if e["kind"] == "note"] == [
        {"text": "was it snoozed?"}
    ]
    acked = await client.post("/api/v1/incidents/1/acknowledge", json={"by": "alice"}, headers=AUTH)
    assert acked.status == 200
    status, answer = await unsnooze({"by": "bob"})
    assert (status, answer["changed"], answer["data"]["state"]) == (200, False, "acknowledged")
    await settle(client, clock, timedelta(minutes=20))
    doc = await incident(client)
    assert "snooze_ended" not in [e["kind"] for e in doc["timeline"]]
    assert not [p for p in doc["pages"] if p["step"] != "L1"]  # nobody paged by it
    resolved = await client.post("/api/v1/incidents/1/resolve", json={"by": "alice"}, headers=AUTH)
    assert resolved.status == 200
    status, answer = await unsnooze({"by": "bob"})
    assert status == 409
    assert "resolved" in answer["error"]
    missing = await client.post("/api/v1/incidents/9/unsnooze", json={}, headers=AUTH)
    assert missing.status == 404


async def test_an_acknowledged_incident_snoozed_keeps_its_answer(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,
    twilio: FakeTwilio,
) -> None:
    """Acknowledged within the response target, then snoozed: the target was met and the
    time to acknowledge is the acknowledgement's, though the snooze (as an unacknowledge)
    clears acknowledgedAt so that escalation resumes after it (new-user review, stop 16:
    the report said "not acknowledged" and a respond breach was recorded)."""
    client = await make_client(story_config(tmp_path, smtp, twilio))
    await post(client, webhook(alert("TargetDown", instance="web-1:9100")))
    await eventually(lambda: _has(client, ("L1", "alice", "sms", "sent")), "paged")
    clock.advance(timedelta(minutes=2))
    respond_s = (await incident(client))["target"]["respondSeconds"]
    snooze = {"by": "bob", "for": f"{respond_s // 60 + 60}m"}  # past the target
    for action, body in (("acknowledge", {"by": "alice"}), ("snooze", snooze)):
        answer = await client.post(f"/api/v1/incidents/1/{action}", json=body, headers=AUTH)
        assert answer.status == 200, await answer.text()
    await settle(client, clock, timedelta(seconds=respond_s + 60))
    doc = await incident(client)
    assert (doc["state"], doc["acknowledgedAt"]) == ("snoozed", None)
    assert doc["firstAcknowledgedBy"] == "alice"
    assert not [e for e in doc["timeline"] if e["kind"] == "target_breached"]
    figures = incident_figures(doc, now=clock.now())
    assert figures.time_to_acknowledge == timedelta(minutes=2)
    assert figures.respond is not None
    assert figures.respond.status is TargetStatus.MET
    # Acknowledged again after the snooze: still the first answer that counts.
    answer = await client.post("/api/v1/incidents/1/acknowledge", json={"by": "bob"}, headers=AUTH)
    assert answer.status == 200
    doc = await incident(client)
    assert (doc["acknowledgedBy"], doc["firstAcknowledgedBy"]) == ("bob", "alice")


async def test_refire_within_window_reopens_the_same_incident(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,
    twilio: FakeTwilio,
) -> None:
    client = await make_client(story_config(tmp_path, smtp, twilio))
    first = alert("TargetDown", instance="web-1:9100")
    await post(client, webhook(first))
    await eventually(lambda: _has(client, ("L1", "alice", "sms", "sent")), "paged")
    await post(client, webhook(alert("TargetDown", "resolved", **first["labels"])))
    await eventually(lambda: _state(client, "resolved"), "resolved")
    clock.advance(timedelta(minutes=20))
    again = alert("TargetDown", starts="2026-01-05T09:20:00Z", instance="web-1:9100")
    await post(client, webhook(again))
    await eventually(lambda: _state(client, "triggered"), "re-triggered")
    doc = await incident(client)
    assert doc["episode"] == 2
    assert "retriggered" in [e["kind"] for e in doc["timeline"]]
    listed = await (await client.get("/api/v1/incidents", headers=AUTH)).json()
    assert len(listed["data"]) == 1
    await eventually(
        lambda: _count(client, lambda p: p["step"] == "L1" and p["episode"] == 2), "paged again"
    )


async def test_api_errors(
    make_client: ClientFactory, tmp_path: Path, smtp: SmtpTestServer, twilio: FakeTwilio
) -> None:
    client = await make_client(story_config(tmp_path, smtp, twilio))
    assert (await client.get("/api/v1/incidents/1")).status == 401
    assert (await client.get("/api/v1/incidents/99", headers=AUTH)).status == 404
    assert (await client.post("/api/v1/incidents/99/acknowledge", headers=AUTH)).status == 404
    await post(client, webhook(alert("TargetDown", instance="web-1:9100")))
    bad = await client.post("/api/v1/incidents/1/explode", headers=AUTH)
    assert bad.status == 404
    bad = await client.post("/api/v1/incidents/1/snooze", json={"for": "forever"}, headers=AUTH)
    assert bad.status == 400
    assert "for:" in (await bad.json())["error"]
    bad = await client.post("/api/v1/incidents/1/reassign", json={"to": "mallory"}, headers=AUTH)
    assert bad.status == 400
    assert "unknown contact" in (await bad.json())["error"]
    ok = await client.post("/api/v1/incidents/1/resolve", json={"by": "alice"}, headers=AUTH)
    assert ok.status == 200
    again = await client.post("/api/v1/incidents/1/acknowledge", headers=AUTH)
    assert again.status == 409
    assert (await client.get("/api/v1/incidents?state=bogus", headers=AUTH)).status == 400


async def _has(client: Client, page: tuple[str, str, str, str]) -> bool:
    return page in pages_of(await incident(client))


async def _state(client: Client, state: str) -> bool:
    return bool((await incident(client))["state"] == state)


async def _count(client: Client, predicate: Callable[[dict[str, Any]], bool]) -> bool:
    return any(predicate(p) for p in (await incident(client))["pages"])


def test_story_payloads_are_valid_json() -> None:
    json.dumps(webhook(alert("x")))
    assert datetime(2026, 1, 5, 9, tzinfo=UTC).isoformat()


def smtp_channel(smtp: SmtpTestServer) -> str:
    """A config's ``channels:`` with only the test SMTP server."""
    return (
        "channels:\n"
        f'  smtp: {{host: 127.0.0.1, port: {smtp.port}, mode: none, from: "r@example.com"}}\n'
    )


DST_POLICY = """
contacts:
  alice: {email: alice@example.com}
  bob: {email: bob@example.com}
schedules:
  primary:
    timezone: Europe/Berlin
    layers:
      - type: daily
        start: 2026-03-01
        handoff: "09:00"
        members: [alice, bob]
escalation_policies:
  oncall:
    levels:
      - targets: [{schedule: primary}]
      - after: 15m
        targets: [{schedule: primary}]
incidents:
  default_policy: oncall
"""


async def test_story_across_the_spring_forward_change(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,
) -> None:
    """Berlin springs forward on 29 March 2026: the 09:00 hand-off is 07:00 UTC that day, not
    08:00. An incident at 08:50 local is paged to the night's person, and its level 2 at
    09:05 local goes to the day's person, as the wall clock says."""
    client = await make_client(write_config(tmp_path, DST_POLICY + smtp_channel(smtp)))
    clock.set(datetime(2026, 3, 29, 6, 50, tzinfo=UTC))  # 08:50 CEST
    await post(client, webhook(alert("TargetDown", starts="2026-03-29T06:50:00Z", instance="db")))
    await eventually(lambda: _has(client, ("L1", "bob", "email", "sent")), "level 1 to bob")
    clock.advance(timedelta(minutes=15))  # 09:05 CEST: alice's day shift began at 07:00 UTC
    await eventually(lambda: _has(client, ("L2", "alice", "email", "sent")), "level 2 to alice")
    assert [m.rcpt_tos for m in smtp.messages] == [["bob@example.com"], ["alice@example.com"]]


async def test_a_management_page_that_fails_goes_to_the_backup_though_acknowledged(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,
    twilio: FakeTwilio,
) -> None:
    """A duration level pages while the incident is acknowledged (that is its point); when
    its page fails for good, its failover must go too (escalation review, stop 12)."""
    text = """
contacts:
  alice: {email: alice@example.com}
  cto: {sms: "+15551239999", backup: deputy}
  deputy: {sms: "+15551238888"}
escalation_policies:
  standard:
    levels:
      - targets: [alice]
      - after: 30m
        clock: duration
        targets: [cto]
incidents:
  default_policy: standard
"""
    twilio.fail_number("+15551239999", Fault.INVALID_NUMBER)
    client = await make_client(write_config(tmp_path, text + channels(tmp_path, smtp, twilio)))
    await post(client, webhook(alert("Other", instance="a")))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "alice"), "alice paged")
    answer = await client.post(
        "/api/v1/incidents/1/acknowledge", json={"by": "alice"}, headers=AUTH
    )
    assert answer.status == 200
    clock.advance(timedelta(minutes=31))

    async def deputy_paged() -> bool:
        return len(twilio.sent_sms("+15551238888")) == 1

    await eventually(deputy_paged, "the deputy paged for the cto")


async def test_a_contact_without_a_channel_is_paged_through_its_backup_and_the_step_says_so(
    make_client: ClientFactory,
    tmp_path: Path,
    smtp: SmtpTestServer,
    twilio: FakeTwilio,
) -> None:
    """dave has no channel: carol, his backup, is paged, and the step's timeline entry names
    whom she stands in for (the docs said the page says so; nothing did, escalation review)."""
    text = """
contacts:
  dave: {backup: carol}
  carol: {sms: "+15551237777"}
escalation_policies:
  standard:
    levels:
      - targets: [dave]
incidents:
  default_policy: standard
"""
    client = await make_client(write_config(tmp_path, text + channels(tmp_path, smtp, twilio)))
    await post(client, webhook(alert("Other", instance="a")))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "carol"), "carol paged")
    (step,) = [e for e in (await incident(client))["timeline"] if e["kind"] == "escalated"]
    assert step["detail"]["pages"] == ["carol/sms"]
    assert step["detail"]["instead_of"] == {"carol": "dave"}


async def test_everyone_paged_before_an_unacknowledge_hears_of_the_recovery(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,
    twilio: FakeTwilio,
) -> None:
    """Unacknowledging starts a new episode; the recovery notice still goes to everyone
    paged since the last one, bob included (escalation review, stop 12)."""
    client = await make_client(story_config(tmp_path, smtp, twilio))
    await post(client, webhook(alert("Other", instance="a")))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "alice"), "alice paged")
    for _ in range(16):
        await settle(client, clock, timedelta(minutes=1))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "bob"), "bob paged")
    for action in ("acknowledge", "unacknowledge"):
        answer = await client.post(
            f"/api/v1/incidents/1/{action}", json={"by": "bob"}, headers=AUTH
        )
        assert answer.status == 200
        await settle(client, clock, timedelta(minutes=2))
    await post(client, webhook(alert("Other", "resolved", instance="a")))

    async def told(number: str) -> bool:
        return any(r.body.startswith("RESOLVED") for r in twilio.sent_sms(number))

    for _ in range(3):
        await settle(client, clock, timedelta(minutes=1))
    await eventually(lambda: told("+15551230001"), "alice told of the recovery")
    await eventually(lambda: told("+15551230002"), "bob told of the recovery")


async def test_a_reload_that_moves_a_level_earlier_pages_it_then(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,
    twilio: FakeTwilio,
) -> None:
    """The open incident's next step was due at the old policy's time (bob at 60m); after a
    reload that moves bob to 15m, bob is paged at 15m (escalation review, stop 12)."""

    def policy(bob_after: str) -> str:
        return f"""
contacts:
  alice: {{email: alice@example.com}}
  bob: {{email: bob@example.com}}
escalation_policies:
  standard:
    levels:
      - targets: [alice]
      - after: {bob_after}
        targets: [bob]
incidents:
  default_policy: standard
{channels(tmp_path, smtp, twilio)}"""

    path = write_config(tmp_path, policy("60m"))
    client = await make_client(path)
    await post(client, webhook(alert("Other", instance="a")))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "alice"), "alice paged")
    await settle(client, clock, timedelta(minutes=10))
    write_config(tmp_path, policy("15m"))
    assert (await client.post("/-/reload", headers=AUTH)).status == 200
    await settle(client, clock, timedelta(minutes=6))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "bob"), "bob at 15m")


async def test_a_worse_alert_under_another_policy_starts_that_policys_escalation(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,
    twilio: FakeTwilio,
) -> None:
    """A P3 incident under the 'low' policy (a ticket) is raised to P1 by a worse alert whose
    rule names 'standard': alice, that policy's first level, is paged at once, and bob 15
    minutes later (review, stop 12: the old policy's L1 counted as the new one's)."""
    rules = """
rules:
  - name: low-thing
    matchers: ['alertname="LowThing"']
    severity: P3
    category: availability
    policy: low
  - name: big-thing
    matchers: ['alertname="BigThing"']
    severity: P1
    category: availability
    policy: standard
"""
    text = """
contacts:
  alice: {email: alice@example.com}
  bob: {email: bob@example.com}
  ticket: {email: tickets@example.com}
escalation_policies:
  low:
    levels:
      - targets: [ticket]
  standard:
    levels:
      - targets: [alice]
      - after: 15m
        targets: [bob]
"""
    path = write_config(tmp_path, text + channels(tmp_path, smtp, twilio), rules=rules)
    client = await make_client(path)
    low = alert("LowThing", instance="a")
    await post(client, webhook(low))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "ticket"), "the ticket")
    await settle(client, clock, timedelta(minutes=2))
    await post(client, webhook(low, alert("BigThing", instance="a")))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "alice"), "alice at once")
    doc = await incident(client)
    assert (doc["severity"], doc["policy"]) == ("P1", "standard")
    await settle(client, clock, timedelta(minutes=10))
    assert not await _count(client, lambda p: p["contact"] == "bob")
    await settle(client, clock, timedelta(minutes=6))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "bob"), "bob at 15m")


async def test_an_incident_list_cut_short_says_so(
    make_client: ClientFactory, tmp_path: Path, smtp: SmtpTestServer, twilio: FakeTwilio
) -> None:
    """`responder report --since` counts the incidents of a period: a list cut at its limit
    must say so instead of passing for the whole period (operations review, stop 12)."""
    client = await make_client(story_config(tmp_path, smtp, twilio))
    for n in (1, 2):
        await post(client, webhook(alert("Other", instance=f"h{n}"), group=f"g{n}"))

    async def listed(limit: int) -> dict[str, Any]:
        answer = await client.get(f"/api/v1/incidents?limit={limit}", headers=AUTH)
        document: dict[str, Any] = await answer.json()
        return document

    cut = await listed(1)
    assert (len(cut["data"]), cut.get("truncated")) == (1, True)
    whole = await listed(2)
    assert (len(whole["data"]), "truncated" in whole) == (2, False)


async def test_the_incident_list_says_where_the_next_page_starts(client: Client) -> None:
    """As the alert list does: a list cut at its limit says so (``more``) and where the next
    page starts (``nextBefore``, for ``before``). Pages are by id, so incidents opened
    between two requests do not shift them; a state filter applies to each page."""

    async def page(query: str) -> tuple[list[int], bool, int | None]:
        answer = await client.get(f"/api/v1/incidents?{query}", headers=AUTH)
        assert answer.status == 200, await answer.text()
        document = await answer.json()
        ids = [i["id"] for i in document["data"]]
        return ids, document["more"], document.get("nextBefore")

    async def open_incident(n: int) -> None:
        await post(client, webhook(alert("Other", instance=f"h{n}"), group=f"g{n}"))

    for n in range(1, 6):
        await open_incident(n)
    assert await page("limit=5") == ([5, 4, 3, 2, 1], False, None)
    first = await page("limit=2")
    assert first == ([5, 4], True, 4)
    await open_incident(6)  # opened between two pages: on the newest page, not the next ones
    second = await page(f"limit=2&before={first[2]}")
    assert second == ([3, 2], True, 2)
    assert await page(f"limit=2&before={second[2]}") == ([1], False, None)
    assert await page("limit=1") == ([6], True, 6)
    resolved = await client.post("/api/v1/incidents/3/resolve", json={}, headers=AUTH)
    assert resolved.status == 200, await resolved.text()
    assert await page("state=open&limit=2&before=5") == ([4, 2], True, 2)
    assert await page("state=open&limit=2&before=2") == ([1], False, None)
    for bad in ("abc", "-1", "1.5", "99999999999999999999"):
        answer = await client.get(f"/api/v1/incidents?before={bad}", headers=AUTH)
        assert answer.status == 400, bad
        assert "before: expected an incident id" in (await answer.json())["error"]


async def test_a_restart_after_a_long_outage_does_not_call_live_alerts_stale(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,
    twilio: FakeTwilio,
) -> None:
    """The daemon was down 13 hours; Alertmanager kept the alert and sends it again soon
    after the start. Silence counts only while the daemon could hear: the incident stays
    acknowledged, nobody is told RESOLVED and paged again (rules review, stop 12)."""
    path = story_config(tmp_path, smtp, twilio)
    client = await make_client(path)
    down = alert("InstanceDown", instance="db-1")
    await post(client, webhook(down))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "alice"), "alice paged")
    answer = await client.post(
        "/api/v1/incidents/1/acknowledge", json={"by": "alice"}, headers=AUTH
    )
    assert answer.status == 200
    await client.close()
    sms_before = len(twilio.sent_sms())
    clock.advance(timedelta(hours=13))
    client = await make_client(path)
    await asyncio.sleep(0.3)  # the first sweep runs at start
    await settle(client, clock, timedelta(minutes=5))
    await post(client, webhook(down))
    await settle(client, clock, timedelta(minutes=1))
    doc = await incident(client)
    assert doc["state"] == "acknowledged"
    assert "resolved" not in [e["kind"] for e in doc["timeline"]]
    assert len(twilio.sent_sms()) == sms_before


async def test_recoveries_sent_together_are_told_as_resolved_not_as_new(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,
    twilio: FakeTwilio,
) -> None:
    """Two incidents paged in one bundle resolve together: the notice that tells of both
    says they are over; it does not call them new or ask for ACK ALL (escalation review,
    stop 13)."""
    client = await make_client(story_config(tmp_path, smtp, twilio))
    # SSHBruteForce incidents are keyed by source address (shipped rule): two of them.
    first, second = (
        alert("SSHBruteForce", source_ip=f"203.0.113.{n}", instance="bastion") for n in (7, 8)
    )
    await post(client, webhook(first, second))

    async def paged_for_both() -> bool:
        sent = ("L1", "alice", "sms", "sent")
        return all([sent in pages_of(await incident(client, n)) for n in (1, 2)])

    # One bundle, or (if the engine took them one at a time) #2 held by the rate limit.
    await settle(client, clock, timedelta(minutes=2))
    await eventually(paged_for_both, "alice paged for both")
    resolved = [alert("SSHBruteForce", "resolved", **a["labels"]) for a in (first, second)]
    await post(client, webhook(*resolved))
    await settle(client, clock, timedelta(minutes=2))  # past the rate limit either way

    async def told() -> bool:
        return any("resolved" in sms.body for sms in twilio.sent_sms("+15551230001"))

    await eventually(told, "alice told of the recoveries")
    notice = next(s.body for s in twilio.sent_sms("+15551230001") if "resolved" in s.body)
    assert notice.startswith("2 incidents resolved:"), notice
    assert "new" not in notice, notice
    assert "ACK" not in notice, notice


STAKEHOLDER_POLICY = """
contacts:
  alice: {email: alice@example.com}
  mgr: {email: mgr@example.com}
escalation_policies:
  standard:
    levels:
      - targets: [alice]
    status_updates: {every: 30m, to: [mgr]}
incidents:
  default_policy: standard
"""


async def test_stakeholders_who_got_status_updates_hear_of_the_recovery(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,
    twilio: FakeTwilio,
) -> None:
    """mgr is no escalation level, only told by status updates; the recovery reaches mgr
    too (escalation review, stop 13)."""
    config = write_config(tmp_path, STAKEHOLDER_POLICY + channels(tmp_path, smtp, twilio))
    client = await make_client(config)
    await post(client, webhook(alert("Other", instance="a")))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "alice"), "alice paged")
    for _ in range(4):
        await settle(client, clock, timedelta(minutes=10))
    await eventually(
        lambda: _count(client, lambda p: p["contact"] == "mgr" and p["state"] == "sent"),
        "mgr's status update",
    )
    await post(client, webhook(alert("Other", "resolved", instance="a")))
    await settle(client, clock, timedelta(minutes=1))

    async def mgr_told() -> bool:
        doc = await incident(client)
        return any(p["kind"] == "recovery" and p["contact"] == "mgr" for p in doc["pages"])

    await eventually(mgr_told, "mgr told of the recovery")


RENAME_RULES = """
rules:
  - name: disk
    matchers: ['alertname="DiskFull"']
    severity: P1
    category: availability
    policy: {name}
"""


def renamed_policy_config(name: str) -> str:
    return f"""
contacts:
  alice: {{email: alice@example.com}}
  bob: {{email: bob@example.com}}
escalation_policies:
  {name}:
    levels:
      - targets: [alice]
      - after: 15m
        targets: [bob]
incidents:
  default_policy: {name}
"""


async def test_renaming_a_policy_keeps_open_incidents_escalating(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,
    twilio: FakeTwilio,
) -> None:
    """A reload renames the open incident's policy: it goes on under the default policy, and
    its timeline says so (escalation review, stop 13)."""
    extra = channels(tmp_path, smtp, twilio)
    client = await make_client(
        write_config(
            tmp_path, renamed_policy_config("ops") + extra, rules=RENAME_RULES.format(name="ops")
        )
    )
    await post(client, webhook(alert("DiskFull", instance="a")))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "alice"), "alice")
    await settle(client, clock, timedelta(minutes=5))
    # The operator renames the policy 'ops' to 'operations' (rules and default follow).
    write_config(
        tmp_path,
        renamed_policy_config("operations") + extra,
        rules=RENAME_RULES.format(name="operations"),
    )
    answer = await client.post("/-/reload", headers=AUTH)
    assert answer.status == 200, await answer.text()
    for _ in range(15):
        await settle(client, clock, timedelta(minutes=1))
    doc = await incident(client)
    assert [p["contact"] for p in doc["pages"]] == ["alice", "bob"]
    gone = [e for e in doc["timeline"] if e["kind"] == "policy_gone"]
    assert len(gone) == 1


RAISE_RULES = """
rules:
  - name: low-thing
    matchers: ['alertname="LowThing"']
    severity: P3
    category: availability
    policy: low
  - name: big-thing
    matchers: ['alertname="BigThing"']
    severity: P0
    category: availability
"""
RAISE = """
contacts:
  alice: {email: alice@example.com}
  ticket: {email: tickets@example.com}
escalation_policies:
  low:
    levels:
      - targets: [ticket]
  standard:
    levels:
      - targets: [alice]
incidents:
  default_policy: standard
"""


async def test_a_p0_joining_a_low_incident_pages_under_the_default_policy(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,
    twilio: FakeTwilio,
) -> None:
    """BigThing (P0) names no policy, so it escalates under the default 'standard'. Joining
    an open P3 incident under 'low', it raises it to P0 and starts 'standard' from its first
    level: alice is paged (escalation review, stop 13)."""
    path = write_config(tmp_path, RAISE + channels(tmp_path, smtp, twilio), rules=RAISE_RULES)
    client = await make_client(path)
    low = alert("LowThing", instance="a")
    await post(client, webhook(low))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "ticket"), "the ticket")
    await settle(client, clock, timedelta(minutes=2))
    await post(client, webhook(low, alert("BigThing", instance="a")))
    for _ in range(10):
        await settle(client, clock, timedelta(minutes=1))
    doc = await incident(client)
    assert doc["severity"] == "P0"
    assert await _count(client, lambda p: p["contact"] == "alice")


RELOAD_CONTACTS = """
contacts:
  alice: {email: alice@example.com}
  bob: {email: bob@example.com}
  carol: {email: carol@example.com}
  dave: {email: dave@example.com}
incidents:
  default_policy: standard
"""


def reload_policy(levels: str) -> str:
    return RELOAD_CONTACTS + "escalation_policies:\n  standard:\n    levels:\n" + levels


THREE = """
      - targets: [alice]
      - after: 15m
        targets: [bob]
      - after: 30m
        targets: [carol]
"""
# bob's level removed (he left the team): carol is now level 2, still at 30m.
TWO = """
      - targets: [alice]
      - after: 30m
        targets: [carol]
"""


async def test_removing_a_level_that_was_paged_does_not_skip_the_next_one(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,
    twilio: FakeTwilio,
) -> None:
    """Steps are recorded by level number: after a reload removed bob's level 2 (already
    paged), carol's level became 2 and counted as done, so she was never paged. Levels are
    matched by their targets across a reload now (escalation review, stop 13)."""
    extra = channels(tmp_path, smtp, twilio)
    client = await make_client(write_config(tmp_path, reload_policy(THREE) + extra))
    await post(client, webhook(alert("Other", instance="a")))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "alice"), "alice")
    for _ in range(16):
        await settle(client, clock, timedelta(minutes=1))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "bob"), "bob at 15m")
    write_config(tmp_path, reload_policy(TWO) + extra)
    assert (await client.post("/-/reload", headers=AUTH)).status == 200
    for _ in range(30):
        await settle(client, clock, timedelta(minutes=1))
    doc = await incident(client)
    # 46 minutes unacknowledged: carol's level (30m) should have paged her.
    assert [p["contact"] for p in doc["pages"] if p["contact"] == "carol"] == ["carol"]


# A new first level (dave) inserted in front: alice's level becomes L2.
INSERTED = """
      - targets: [dave]
      - targets: [alice]
      - after: 15m
        targets: [bob]
      - after: 30m
        targets: [carol]
"""


async def test_inserting_a_level_does_not_page_an_earlier_level_twice(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,
    twilio: FakeTwilio,
) -> None:
    """A reload puts dave's level in front of alice's: alice's level 1 (done) is level 2
    now, and must not page her again; dave, new at 0m, is paged (escalation review, stop
    13)."""
    extra = channels(tmp_path, smtp, twilio)
    client = await make_client(write_config(tmp_path, reload_policy(THREE) + extra))
    await post(client, webhook(alert("Other", instance="a")))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "alice"), "alice")
    await settle(client, clock, timedelta(minutes=5))
    write_config(tmp_path, reload_policy(INSERTED) + extra)
    assert (await client.post("/-/reload", headers=AUTH)).status == 200
    await settle(client, clock, timedelta(minutes=2))
    doc = await incident(client)
    pages = [(p["step"], p["contact"]) for p in doc["pages"]]
    assert ("L1", "dave") in pages
    # alice was paged once at 0m for this episode; the reload must not page her again.
    assert sum(1 for _, c in pages if c == "alice") == 1


DURATION_POLICY = """
contacts:
  alice: {email: alice@example.com}
  cto: {email: cto@example.com}
escalation_policies:
  standard:
    levels:
      - targets: [alice]
      - after: 30m
        clock: duration
        targets: [cto]
incidents:
  default_policy: standard
"""


async def test_unacknowledge_does_not_page_a_duration_level_again(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,
    twilio: FakeTwilio,
) -> None:
    """The CTO's duration level told them at 30m; an acknowledge and unacknowledge start a
    new episode, which pages alice again but not the CTO (escalation review, stop 13)."""
    config = write_config(tmp_path, DURATION_POLICY + channels(tmp_path, smtp, twilio))
    client = await make_client(config)
    await post(client, webhook(alert("Other", instance="a")))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "alice"), "alice")
    for _ in range(4):
        await settle(client, clock, timedelta(minutes=10))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "cto"), "cto at 30m")
    for action in ("acknowledge", "unacknowledge"):
        answer = await client.post(
            f"/api/v1/incidents/1/{action}", json={"by": "alice"}, headers=AUTH
        )
        assert answer.status == 200
        await settle(client, clock, timedelta(minutes=1))
    for _ in range(4):
        await settle(client, clock, timedelta(minutes=10))
    pages = (await incident(client))["pages"]
    assert [p["episode"] for p in pages if p["contact"] == "cto"] == [1]
    assert [p["episode"] for p in pages if p["contact"] == "alice"] == [1, 2]


async def test_unacknowledge_does_not_delay_a_duration_level(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,
    twilio: FakeTwilio,
) -> None:
    """The CTO is told when the incident has lasted 30 minutes: an acknowledge at 1m and
    an unacknowledge at 20m start the escalation over, not the incident's lasting (fourth
    review, stop 13)."""
    config = write_config(tmp_path, DURATION_POLICY + channels(tmp_path, smtp, twilio))
    client = await make_client(config)
    await post(client, webhook(alert("Other", instance="a")))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "alice"), "alice")
    await settle(client, clock, timedelta(minutes=1))
    for action, wait in (("acknowledge", 18), ("unacknowledge", 1), ("acknowledge", 8)):
        answer = await client.post(
            f"/api/v1/incidents/1/{action}", json={"by": "alice"}, headers=AUTH
        )
        assert answer.status == 200
        await settle(client, clock, timedelta(minutes=wait))
    assert not await _count(client, lambda p: p["contact"] == "cto")  # 28m: not yet
    await settle(client, clock, timedelta(minutes=3))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "cto"), "cto at 30m")


GAP_POLICY = """
contacts:
  alice: {email: alice@example.com}
schedules:
  primary:
    timezone: Europe/Berlin
    layers:
      - type: daily
        start: 2026-03-02
        handoff: "09:00"
        members: [alice]
escalation_policies:
  oncall:
    levels:
      - targets: [{schedule: primary}]
incidents:
  default_policy: oncall
"""


async def test_a_level_with_nobody_on_call_pages_whoever_comes_on_call(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,
) -> None:
    """The schedule has nobody until its first hand-off at 09:00 Berlin: an incident at
    08:50 says so once, and the level pages alice when she comes on call (escalation review,
    stop 16: the level was recorded done with nobody paged, and nobody ever was)."""
    client = await make_client(write_config(tmp_path, GAP_POLICY + smtp_channel(smtp)))
    clock.set(datetime(2026, 3, 2, 7, 50, tzinfo=UTC))  # 08:50 CET
    await post(client, webhook(alert("TargetDown", starts="2026-03-02T07:50:00Z", instance="db")))
    for _ in range(5):
        await settle(client, clock, timedelta(minutes=1))
    doc = await incident(client)
    assert doc["pages"] == []
    assert [e["kind"] for e in doc["timeline"]].count("nobody_to_page") == 1
    for _ in range(6):  # past 09:00 CET and the next retry
        await settle(client, clock, timedelta(minutes=1))
    await eventually(lambda: _has(client, ("L1", "alice", "email", "sent")), "level 1 to alice")

"""A reload that removes the policy open incidents escalate under: they go on under the
default policy from its start, snoozed or acknowledged, and even when the store could not
take the re-arm at once; and reassignment pages of a snoozed incident (third review of
stop 13, through the real app)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from responder.clock import FakeClock
from responder.runtime import RUNTIME
from responder.store import StoreError
from responder.testing import FakeTwilio, SmtpTestServer
from tests.conftest import AUTH, ClientFactory, write_config
from tests.test_escalation_story import (
    _count,
    _state,
    alert,
    channels,
    eventually,
    incident,
    post,
    settle,
    smtp,  # noqa: F401 - fixture
    twilio,  # noqa: F401 - fixture
    webhook,
)

RULES_OPS = """
rules:
  - name: disk
    matchers: ['alertname="DiskFull"']
    severity: P1
    category: availability
    policy: ops
"""
RULES_DEFAULT = """
rules:
  - name: disk
    matchers: ['alertname="DiskFull"']
    severity: P1
    category: availability
"""
CONTACTS = """
contacts:
  alice: {email: alice@example.com}
  bob: {email: bob@example.com}
  carol: {email: carol@example.com}
  dave: {email: dave@example.com}
  mgr: {email: mgr@example.com}
incidents:
  default_policy: standard
"""
OPS = """
  ops:
    levels:
      - targets: [alice]
      - after: 15m
        targets: [bob]
"""
STANDARD = """
  standard:
    levels:
      - targets: [carol]
      - after: 15m
        targets: [dave]
"""
# The default has a management (duration) level as its level 1.
STANDARD_MGMT = """
  standard:
    levels:
      - after: 10m
        clock: duration
        targets: [mgr]
      - after: 15m
        targets: [carol]
"""


def config(policies: str) -> str:
    return CONTACTS + "escalation_policies:\n" + policies


async def _contacts(client: Any) -> list[tuple[str, str, str]]:
    doc = await incident(client)
    return [(p["step"], p["contact"], p["state"]) for p in doc["pages"]]


def _rearm_refused_while_full(client: Any, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The store refuses the re-arm of open incidents (a full disk) until the returned
    flag's ``[0]`` is set to False."""
    store = client.app[RUNTIME].store
    real = store.rearm_open_incidents
    disk_full = [True]

    async def failing_while_full(*args: Any, **kwargs: Any) -> int:
        if disk_full[0]:
            raise StoreError("database or disk is full")
        count: int = await real(*args, **kwargs)
        return count

    monkeypatch.setattr(store, "rearm_open_incidents", failing_while_full)
    return disk_full


async def _snoozed_after_bob(client: Any, clock: FakeClock, duration: str) -> None:
    """Incident 1 (a DiskFull under 'ops') paged alice, then bob at 15 min, who snoozed it."""
    await post(client, webhook(alert("DiskFull", instance="a")))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "alice"), "alice")
    for _ in range(16):
        await settle(client, clock, timedelta(minutes=1))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "bob"), "bob at 15m")
    answer = await client.post(
        "/api/v1/incidents/1/snooze", json={"by": "bob", "for": duration}, headers=AUTH
    )
    assert answer.status == 200, await answer.text()


async def test_a_snoozed_incident_whose_policy_is_removed_starts_the_default_from_level_1(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,  # noqa: F811
    twilio: FakeTwilio,  # noqa: F811
) -> None:
    """A snoozed incident whose policy a reload removed starts the default from its start
    (a new episode): carol, the default's level 1, is paged when the snooze ends; the steps
    done under 'ops' are not the default's."""
    extra = channels(tmp_path, smtp, twilio)
    client = await make_client(
        write_config(tmp_path, config(OPS + STANDARD) + extra, rules=RULES_OPS)
    )
    await _snoozed_after_bob(client, clock, "30m")
    # 'ops' is removed; the rule now names no policy (the default, 'standard').
    write_config(tmp_path, config(STANDARD) + extra, rules=RULES_DEFAULT)
    assert (await client.post("/-/reload", headers=AUTH)).status == 200
    for _ in range(35):
        await settle(client, clock, timedelta(minutes=1))
    await eventually(lambda: _state(client, "triggered"), "snooze ended")
    for _ in range(5):
        await settle(client, clock, timedelta(minutes=1))
    pages = await _contacts(client)
    assert any(contact == "carol" for _, contact, _ in pages), pages


async def test_an_unsnooze_waits_for_the_re_arm_of_a_reload(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,  # noqa: F811
    twilio: FakeTwilio,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Snoozed after bob ('ops' level 2) was paged; a reload removes 'ops' and the store
    refuses its re-arm for a while. An unsnooze meanwhile is refused (503, still snoozed):
    the steps stored still name the old levels, and its reminder would page dave, whom the
    default's level 2 names. Once the re-arm is written the default starts from its start,
    as at a snooze's own end: carol is paged, dave is not."""
    from responder import runtime as runtime_module

    monkeypatch.setattr(runtime_module, "REARM_RETRY_S", 0.01)
    extra = channels(tmp_path, smtp, twilio)
    client = await make_client(
        write_config(tmp_path, config(OPS + STANDARD) + extra, rules=RULES_OPS)
    )
    await _snoozed_after_bob(client, clock, "1h")
    disk_full = _rearm_refused_while_full(client, monkeypatch)
    write_config(tmp_path, config(STANDARD) + extra, rules=RULES_DEFAULT)
    assert (await client.post("/-/reload", headers=AUTH)).status == 503
    answer = await client.post("/api/v1/incidents/1/unsnooze", json={"by": "bob"}, headers=AUTH)
    assert answer.status == 503, await answer.text()
    assert "re-armed" in (await answer.json())["error"]
    assert (await incident(client))["state"] == "snoozed"
    disk_full[0] = False
    await eventually(lambda: _true(not client.app[RUNTIME].rearm_pending), "the re-arm written")
    answer = await client.post("/api/v1/incidents/1/unsnooze", json={"by": "bob"}, headers=AUTH)
    assert answer.status == 200, await answer.text()
    assert (await answer.json())["data"]["state"] == "triggered"
    await eventually(lambda: _count(client, lambda p: p["contact"] == "carol"), "carol")
    for _ in range(5):
        await settle(client, clock, timedelta(minutes=1))
    pages = await _contacts(client)
    assert not [p for p in pages if p[1] == "dave"], pages


async def _true(value: bool) -> bool:
    return value


async def test_an_acknowledged_incident_moved_to_the_default_gets_its_management_level(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,  # noqa: F811
    twilio: FakeTwilio,  # noqa: F811
) -> None:
    """An acknowledged incident whose policy is removed stays acknowledged and starts the
    default from its start: the default's level 1, a duration (management) level that pages
    acknowledged or not, tells mgr 10 minutes after the reload."""
    extra = channels(tmp_path, smtp, twilio)
    client = await make_client(
        write_config(tmp_path, config(OPS + STANDARD_MGMT) + extra, rules=RULES_OPS)
    )
    await post(client, webhook(alert("DiskFull", instance="a")))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "alice"), "alice")
    answer = await client.post(
        "/api/v1/incidents/1/acknowledge", json={"by": "alice"}, headers=AUTH
    )
    assert answer.status == 200, await answer.text()
    await settle(client, clock, timedelta(minutes=2))
    write_config(tmp_path, config(STANDARD_MGMT) + extra, rules=RULES_DEFAULT)
    assert (await client.post("/-/reload", headers=AUTH)).status == 200
    for _ in range(15):
        await settle(client, clock, timedelta(minutes=1))
    pages = await _contacts(client)
    doc = await incident(client)
    assert doc["state"] == "acknowledged"
    assert any(contact == "mgr" for _, contact, _ in pages), pages


REASSIGN = """
contacts:
  alice: {email: alice@example.com}
  bob:
    email: bob@example.com
    sms: "+15551230002"
    notify:
      - channel: email
      - channel: sms
        after: 5m
escalation_policies:
  standard:
    levels:
      - targets: [alice]
incidents:
  default_policy: standard
"""


async def test_an_acknowledgement_drops_a_reassignment_s_later_notifications_when_snoozed(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,  # noqa: F811
    twilio: FakeTwilio,  # noqa: F811
) -> None:
    """A snoozed incident is not acknowledged: an acknowledgement after its reassignment
    drops the new owner's later notifications (bob's SMS 5 minutes after his email)."""
    extra = channels(tmp_path, smtp, twilio)
    client = await make_client(write_config(tmp_path, REASSIGN + extra))
    await post(client, webhook(alert("Other", instance="a")))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "alice"), "alice")
    answer = await client.post(
        "/api/v1/incidents/1/snooze", json={"by": "alice", "for": "1h"}, headers=AUTH
    )
    assert answer.status == 200, await answer.text()
    answer = await client.post(
        "/api/v1/incidents/1/reassign", json={"by": "alice", "to": "bob"}, headers=AUTH
    )
    assert answer.status == 200, await answer.text()
    await settle(client, clock, timedelta(minutes=1))
    answer = await client.post(
        "/api/v1/incidents/1/acknowledge", json={"by": "alice"}, headers=AUTH
    )
    assert answer.status == 200, await answer.text()
    for _ in range(8):
        await settle(client, clock, timedelta(minutes=1))
    doc = await incident(client)
    later = [
        (p["channel"], p["state"])
        for p in doc["pages"]
        if p["contact"] == "bob" and p["channel"] == "sms"
    ]
    assert later, doc["pages"]
    assert all(state == "cancelled" for _, state in later), later


async def test_a_rearm_the_store_could_not_take_is_tried_again(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,  # noqa: F811
    twilio: FakeTwilio,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The re-arm write also moves incidents of a removed policy to the default: when the
    store refuses it once, it is tried again, and carol (the default's level 1) is paged."""
    from responder import runtime as runtime_module

    monkeypatch.setattr(runtime_module, "REARM_RETRY_S", 0.01)
    extra = channels(tmp_path, smtp, twilio)
    client = await make_client(
        write_config(tmp_path, config(OPS + STANDARD) + extra, rules=RULES_OPS)
    )
    await post(client, webhook(alert("DiskFull", instance="a")))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "alice"), "alice")
    runtime = client.app[RUNTIME]
    real = runtime.store.rearm_open_incidents
    calls = []

    async def failing_once(*args: Any, **kwargs: Any) -> int:
        calls.append(args)
        if len(calls) == 1:
            raise StoreError("database or disk is full")
        count: int = await real(*args, **kwargs)
        return count

    monkeypatch.setattr(runtime.store, "rearm_open_incidents", failing_once)
    write_config(tmp_path, config(STANDARD) + extra, rules=RULES_DEFAULT)
    assert (await client.post("/-/reload", headers=AUTH)).status == 503  # in force once retried
    for _ in range(20):
        await settle(client, clock, timedelta(minutes=1))
    pages = await _contacts(client)
    assert any(contact == "carol" for _, contact, _ in pages), pages
    assert len(calls) == 2


async def _reload_metrics(client: Any) -> tuple[float, float]:
    """responder_config_last_reload_successful and its success timestamp, as scraped."""
    text = await (await client.get("/metrics")).text()
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("responder_config_last_reload_success"):
            values[name] = float(value)
    return (
        values["responder_config_last_reload_successful"],
        values["responder_config_last_reload_success_timestamp_seconds"],
    )


async def test_the_reload_metric_reads_0_until_the_re_arm_is_written(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reload whose re-arm of the open incidents the store refuses is not in force in
    full (the engine holds off until it is written): the metric says 0 meanwhile, not 1
    with only the log to tell, and 1 with the time of the write once the retry succeeds."""
    from responder import runtime as runtime_module

    monkeypatch.setattr(runtime_module, "REARM_RETRY_S", 0.01)
    client = await make_client(write_config(tmp_path, config(OPS + STANDARD), rules=RULES_OPS))
    await post(client, webhook(alert("DiskFull", instance="a")))
    disk_full = _rearm_refused_while_full(client, monkeypatch)
    _, started = await _reload_metrics(client)
    clock.advance(timedelta(minutes=1))
    write_config(tmp_path, config(STANDARD), rules=RULES_DEFAULT)
    answer = await client.post("/-/reload", headers=AUTH)
    assert answer.status == 503, "a reload not in force in full is no clean success"
    assert "re-arm of the open incidents" in (await answer.json())["error"]
    assert await _reload_metrics(client) == (0, started)
    clock.advance(timedelta(minutes=1))
    disk_full[0] = False

    async def rearmed() -> bool:
        return not client.app[RUNTIME].rearm_pending

    await eventually(rearmed, "the re-arm written by its retry")
    assert await _reload_metrics(client) == (1, clock.now().timestamp())


# Continues the classification: section write_config opens.
TARGETS = "  response_targets:\n    P1: {respond: 5m, resolve: 20m}\n"


def _breaches(doc: dict[str, Any], target: str) -> list[dict[str, Any]]:
    return [
        e
        for e in doc["timeline"]
        if e["kind"] == "target_breached" and e.get("detail", {}).get("target") == target
    ]


async def _ack_then_remove_policy(
    client: Any, tmp_path: Path, clock: FakeClock, extra: str, minutes_before_reload: int
) -> None:
    await post(client, webhook(alert("DiskFull", instance="a")))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "alice"), "alice")
    answer = await client.post(
        "/api/v1/incidents/1/acknowledge", json={"by": "alice"}, headers=AUTH
    )
    assert answer.status == 200, await answer.text()
    for _ in range(minutes_before_reload):
        await settle(client, clock, timedelta(minutes=1))
    write_config(tmp_path, TARGETS + config(STANDARD) + extra, rules=RULES_DEFAULT)
    assert (await client.post("/-/reload", headers=AUTH)).status == 200
    await settle(client, clock, timedelta(seconds=1))


async def test_acked_incident_moved_by_reload_still_breaches_its_resolve_target(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,  # noqa: F811
    twilio: FakeTwilio,  # noqa: F811
) -> None:
    """Resolve target 20m. Acknowledged at once; a reload at 10m removes its policy; it is
    resolved at 25m: the missed target is recorded (fourth review, stop 13)."""
    extra = channels(tmp_path, smtp, twilio)
    client = await make_client(
        write_config(tmp_path, TARGETS + config(OPS + STANDARD) + extra, rules=RULES_OPS)
    )
    await _ack_then_remove_policy(client, tmp_path, clock, extra, 10)
    for _ in range(15):
        await settle(client, clock, timedelta(minutes=1))
    answer = await client.post("/api/v1/incidents/1/resolve", json={"by": "alice"}, headers=AUTH)
    assert answer.status == 200, await answer.text()
    for _ in range(3):
        await settle(client, clock, timedelta(minutes=1))
    doc = await incident(client)
    assert _breaches(doc, "resolve"), [e["kind"] for e in doc["timeline"]]


async def test_acked_incident_moved_by_reload_breaches_its_resolve_target_once(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,  # noqa: F811
    twilio: FakeTwilio,  # noqa: F811
) -> None:
    """Resolve target 20m, breached at 20m; reload at 25m removes its policy: the breach
    is not recorded (and counted) a second time 20 minutes after the reload."""
    extra = channels(tmp_path, smtp, twilio)
    client = await make_client(
        write_config(tmp_path, TARGETS + config(OPS + STANDARD) + extra, rules=RULES_OPS)
    )
    await _ack_then_remove_policy(client, tmp_path, clock, extra, 25)
    for _ in range(25):
        await settle(client, clock, timedelta(minutes=1))
    doc = await incident(client)
    assert len(_breaches(doc, "resolve")) == 1, _breaches(doc, "resolve")


async def test_without_a_reload_the_resolve_breach_is_recorded_once(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,  # noqa: F811
    twilio: FakeTwilio,  # noqa: F811
) -> None:
    """The comparison for the two tests above."""
    extra = channels(tmp_path, smtp, twilio)
    client = await make_client(
        write_config(tmp_path, TARGETS + config(OPS + STANDARD) + extra, rules=RULES_OPS)
    )
    await post(client, webhook(alert("DiskFull", instance="a")))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "alice"), "alice")
    assert (
        await client.post("/api/v1/incidents/1/acknowledge", json={"by": "alice"}, headers=AUTH)
    ).status == 200
    for _ in range(25):
        await settle(client, clock, timedelta(minutes=1))
    assert (
        await client.post("/api/v1/incidents/1/resolve", json={"by": "alice"}, headers=AUTH)
    ).status == 200
    await settle(client, clock, timedelta(minutes=1))
    assert len(_breaches(await incident(client), "resolve")) == 1

"""The escalation engine over real SQLite on the fake clock: ``Escalator.run_once`` minute
by minute, as the loop would wake, for what one pass cannot show: a containment failure
waiting for someone to come on call, a policy change in the middle of an incident, status
updates across a reload."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from responder.clock import FakeClock
from responder.escalate import Escalator, load_escalation
from responder.incident import Page, PageKind
from responder.metrics import Metrics
from responder.model import Classification, ResponseTarget, Severity
from responder.policy import EscalationLayout
from responder.store import IncomingAlert, SQLiteStore
from responder.yamlfile import load_text
from tests.test_store_sqlite import CLASSIFIED, T0, disk_alert, resolved


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "responder.db")
    await opened.open()
    yield opened
    await opened.close()


def engine(
    store: SQLiteStore, clock: FakeClock, text: str, registry: CollectorRegistry | None = None
) -> Escalator:
    return reloadable(store, clock, text, registry)[0]


def reloadable(
    store: SQLiteStore, clock: FakeClock, text: str, registry: CollectorRegistry | None = None
) -> tuple[Escalator, Callable[[str], Awaitable[None]]]:
    """The engine on ``text`` (its metrics in ``registry``, when the test reads them), and a
    reload to another config: the engine reads it from its next pass, and the open incidents
    are re-armed with its layout of levels, as the runtime does (gone: the policies it
    removed, for the default)."""
    current = [load_escalation(load_text(text, "config.yaml"))]

    async def reload(new_text: str) -> None:
        old, new = current[0], load_escalation(load_text(new_text, "config.yaml"))
        current[0] = new
        gone: dict[str | None, bool] = {n: True for n in old.policies if n not in new.policies}
        await store.rearm_open_incidents(
            clock.now(), gone=gone, default_policy=new.default_policy, layout=layout_of(new_text)
        )

    metrics = Metrics(registry or CollectorRegistry())
    escalator = Escalator(store, clock, metrics, lambda: current[0])
    return escalator, reload


async def run_until(escalator: Escalator, clock: FakeClock, until: datetime) -> None:
    """A pass each minute up to ``until``, as the loop wakes for a level with nobody."""
    while clock.now() < until:
        clock.advance(timedelta(minutes=1))
        await escalator.run_once()


async def pages(store: SQLiteStore, incident_id: int = 1) -> list[Page]:
    _, _, _, found = await store.incident_details(incident_id)
    return found


async def kinds(store: SQLiteStore, incident_id: int = 1) -> list[str]:
    _, _, timeline, _ = await store.incident_details(incident_id)
    return [event.kind.value for event in timeline]


# T0 is 07:00 UTC. Bob is on call from 08:00, dave from 12:00; before that, nobody.
SCHEDULES = """
contacts:
  alice: {email: alice@example.com}
  bob: {email: bob@example.com}
  carol: {email: carol@example.com}
  dave: {email: dave@example.com}
schedules:
  day:
    timezone: UTC
    layers:
      - {type: daily, start: 2026-11-01, members: [bob], restrict: {start: "08:00", end: "18:00"}}
  late:
    timezone: UTC
    layers:
      - {type: daily, start: 2026-11-01, members: [dave], restrict: {start: "12:00", end: "20:00"}}
incidents:
  default_policy: standard
"""

NEXT_HAS_NOBODY = (
    SCHEDULES
    + """
escalation_policies:
  standard:
    levels:
      - targets: [alice]
      - after: 15m
        targets: [{schedule: day}]
      - after: 45m
        targets: [carol]
"""
)


async def test_a_containment_failure_goes_past_a_level_with_nobody_on_call(
    store: SQLiteStore,
) -> None:
    """Alice is paged at 07:00; the restart fails at 07:05. The next level's schedule has
    nobody until 08:00, so carol, the level after it, is paged now, not at 07:45 (the
    failure fell back to the levels' own times: escalation review, nobody on call)."""
    clock = FakeClock(T0)
    escalator = engine(store, clock, NEXT_HAS_NOBODY)
    await store.ingest([disk_alert("aaaa000000000001")], T0)
    await escalator.run_once()
    clock.set(T0 + timedelta(minutes=5))
    await store.escalate_incident(1, "restart-web: unit failed", clock.now())
    await escalator.run_once()
    assert [(p.step, p.contact, p.due_at) for p in await pages(store)] == [
        ("L1", "alice", T0),
        ("L3", "carol", T0 + timedelta(minutes=5)),
    ]
    assert (await kinds(store)).count("nobody_to_page") == 1  # level 2, said once
    await run_until(escalator, clock, T0 + timedelta(hours=2))
    # Level 2 is moot once level 3 paged (escalation only moves forward).
    assert [p.contact for p in await pages(store)] == ["alice", "carol"]


NOBODY_AT_ALL = (
    SCHEDULES
    + """
escalation_policies:
  standard:
    levels:
      - targets: [alice]
      - after: 90m
        targets: [{schedule: day}]
      - after: 120m
        targets: [{schedule: late}]
"""
)


async def test_a_containment_failure_with_nobody_on_call_pages_whoever_comes_on_call(
    store: SQLiteStore,
) -> None:
    """The restart fails at 07:50 and both later levels have nobody on call: the failure
    stays pending and is tried each minute, so bob is paged when he comes on call at
    08:00, not at level 2's own time, 08:30. The timeline tells of the escalation once."""
    clock = FakeClock(T0)
    escalator = engine(store, clock, NOBODY_AT_ALL)
    await store.ingest([disk_alert("aaaa000000000001")], T0)
    await escalator.run_once()
    clock.set(T0 + timedelta(minutes=50))
    await store.escalate_incident(1, "restart-web: unit failed", clock.now())
    await escalator.run_once()
    assert (await store.get_incident(1)).escalate_now is not None  # still pending
    await run_until(escalator, clock, T0 + timedelta(minutes=65))
    assert [(p.step, p.contact, p.due_at) for p in await pages(store)] == [
        ("L1", "alice", T0),
        ("L2", "bob", T0 + timedelta(hours=1)),
    ]
    incident = await store.get_incident(1)
    assert incident.escalate_now is None
    timeline = await kinds(store)
    assert timeline.count("nobody_to_page") == 2  # levels 2 and 3, once each
    assert timeline.count("escalated") == 3  # alice, the failure (once), bob


# -- a policy change within one trigger ------------------------------------------------------

MANAGEMENT = """
contacts:
  alice: {email: alice@example.com}
  ticket: {email: tickets@example.com}
  mgr: {email: mgr@example.com}
  cto: {email: cto@example.com}
escalation_policies:
  low:
    levels:
      - targets: [ticket]
      - after: 30m
        clock: duration
        targets: [mgr]
  high:
    levels:
      - targets: [alice]
      - after: 30m
        clock: duration
        targets: [mgr]
      - after: 60m
        clock: duration
        targets: [cto]
incidents:
  default_policy: high
"""


def under(policy: str, fingerprint: str, severity: Severity) -> IncomingAlert:
    """An alert of the incident keyed "disk" whose rule names ``policy``."""
    classification = Classification(severity, "availability", "test", policy=policy)
    return replace(disk_alert(fingerprint), classification=classification)


def layout_of(text: str) -> str:
    """The layout of the levels, as the daemon keeps it with the incidents' steps."""
    config = load_escalation(load_text(text, "config.yaml"))
    return EscalationLayout.of(config.policies, config.default_policy).to_json()


async def acknowledged_and_managed(store: SQLiteStore, clock: FakeClock) -> Escalator:
    """A P3 incident under 'low': the ticket at 07:00, alice acknowledges at 07:05, and
    mgr hears at 07:30 that it has lasted half an hour."""
    escalator = engine(store, clock, MANAGEMENT)
    await store.rearm_open_incidents(T0, layout=layout_of(MANAGEMENT))
    await store.ingest([under("low", "aaaa000000000001", Severity.P3)], T0)
    await escalator.run_once()
    clock.set(T0 + timedelta(minutes=5))
    await store.transition(1, "acknowledge", actor="alice", via="api", now=clock.now())
    await escalator.run_once()
    await run_until(escalator, clock, T0 + timedelta(minutes=35))
    assert [p.contact for p in await pages(store)] == ["ticket", "mgr"]
    return escalator


async def test_a_worse_alert_under_another_policy_does_not_tell_management_twice(
    store: SQLiteStore,
) -> None:
    """At 07:40 a P1 alert whose rule names 'high' joins: a new episode under 'high',
    still acknowledged. Its management level is the one 'low' had (mgr at 30 min) and
    was paged already: mgr is not told again; the CTO level, which 'low' has not, goes
    at 08:00 (escalation review: the new policy's duration levels were all paged anew)."""
    clock = FakeClock(T0)
    escalator = await acknowledged_and_managed(store, clock)
    clock.set(T0 + timedelta(minutes=40))
    await store.ingest([under("high", "bbbb000000000001", Severity.P1)], clock.now())
    await escalator.run_once()
    incident = await store.get_incident(1)
    assert (incident.policy, incident.episode, incident.state.value) == (
        "high",
        2,
        "acknowledged",
    )
    await run_until(escalator, clock, T0 + timedelta(minutes=65))
    assert [(p.contact, p.due_at) for p in await pages(store)] == [
        ("ticket", T0),
        ("mgr", T0 + timedelta(minutes=30)),
        ("cto", T0 + timedelta(hours=1)),
    ]


async def test_a_reload_removing_the_policy_does_not_tell_management_twice(
    store: SQLiteStore,
) -> None:
    """At 07:40 a reload removes 'low': the acknowledged incident goes on under the default
    'high', whose management level mgr has heard from already; the CTO hears at 08:00."""
    clock = FakeClock(T0)
    await acknowledged_and_managed(store, clock)
    clock.set(T0 + timedelta(minutes=40))
    without_low = MANAGEMENT.replace(
        "  low:\n    levels:\n      - targets: [ticket]\n      - after: 30m\n"
        "        clock: duration\n        targets: [mgr]\n",
        "",
    )
    assert "low:" not in without_low
    escalator, reload = reloadable(store, clock, MANAGEMENT)
    await reload(without_low)
    await escalator.run_once()
    await run_until(escalator, clock, T0 + timedelta(minutes=65))
    assert [(p.contact, p.due_at) for p in await pages(store)] == [
        ("ticket", T0),
        ("mgr", T0 + timedelta(minutes=30)),
        ("cto", T0 + timedelta(hours=1)),
    ]


THREE_POLICIES = """
contacts:
  alice: {email: alice@example.com}
  ticket: {email: tickets@example.com}
  lead: {email: lead@example.com}
  mgr: {email: mgr@example.com}
escalation_policies:
  low:
    levels:
      - targets: [ticket]
      - after: 30m
        clock: duration
        targets: [mgr]
  mid:
    levels:
      - targets: [lead]
  high:
    levels:
      - targets: [alice]
      - after: 30m
        clock: duration
        targets: [mgr]
incidents:
  default_policy: high
"""


@pytest.mark.parametrize("unack_under_mid", [False, True])
async def test_management_is_told_once_through_a_policy_without_its_level(
    store: SQLiteStore, unack_under_mid: bool
) -> None:
    """mgr hears at 07:30 under 'low' that the acknowledged P3 has lasted half an hour. At
    07:40 a P2 alert moves it to 'mid', which has no management level; at 07:45 a P1 alert
    moves it to 'high', whose management level is the one mgr heard from already (with or
    without an unacknowledge under 'mid' in between): mgr is not told again (escalation
    review: the level done two policies back was forgotten, and mgr was told twice)."""
    clock = FakeClock(T0)
    escalator = engine(store, clock, THREE_POLICIES)
    await store.rearm_open_incidents(T0, layout=layout_of(THREE_POLICIES))
    await store.ingest([under("low", "aaaa000000000001", Severity.P3)], T0)
    await escalator.run_once()
    clock.set(T0 + timedelta(minutes=5))
    await store.transition(1, "acknowledge", actor="alice", via="api", now=clock.now())
    await run_until(escalator, clock, T0 + timedelta(minutes=40))
    await store.ingest([under("mid", "bbbb000000000001", Severity.P2)], clock.now())
    await run_until(escalator, clock, T0 + timedelta(minutes=42))
    if unack_under_mid:
        await store.transition(1, "unacknowledge", actor="alice", via="api", now=clock.now())
        await run_until(escalator, clock, T0 + timedelta(minutes=43))
        await store.transition(1, "acknowledge", actor="lead", via="api", now=clock.now())
    await run_until(escalator, clock, T0 + timedelta(minutes=45))
    await store.ingest([under("high", "cccc000000000001", Severity.P1)], clock.now())
    await run_until(escalator, clock, T0 + timedelta(minutes=65))
    assert (await store.get_incident(1)).policy == "high"
    assert [p.contact for p in await pages(store) if p.contact == "mgr"] == ["mgr"]


# -- status updates across a reload ----------------------------------------------------------

UPDATES = """
contacts:
  alice: {email: alice@example.com}
  mgr: {email: mgr@example.com}
escalation_policies:
  standard:
    levels:
      - targets: [alice]
    status_updates: {every: EVERY, to: [mgr]}
incidents:
  default_policy: standard
"""


async def status_times(store: SQLiteStore) -> list[float]:
    """When status updates were sent, in minutes after T0."""
    return [
        (p.due_at - T0) / timedelta(minutes=1)
        for p in await pages(store)
        if p.kind is PageKind.STATUS
    ]


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        # Longer: under the old numbering, U4 to U9 were sent already (at 40 to 90 minutes),
        # and the updates at 120, 150 ... 270 minutes were taken for done.
        ("10m", "30m", [10, 20, 30, 40, 50, 60, 70, 80, 90, 120, 150, 180]),
        # Shorter: U9 (at 90 minutes under 10m) was not sent yet, so it went at once, five
        # minutes after the one at 90 minutes.
        ("30m", "10m", [30, 60, 90, 100, 110, 120, 130, 140, 150, 160, 170, 180]),
    ],
)
async def test_a_reload_that_changes_the_update_interval_keeps_updates_coming(
    store: SQLiteStore, before: str, after: str, expected: list[float]
) -> None:
    """Updates every ``before``; at 95 minutes a reload makes it ``after``: the next update
    comes at most one new interval after the last one sent, on the new interval's
    rhythm from the trigger (escalation review: the old numbering silenced them)."""
    clock = FakeClock(T0)
    escalator, reload = reloadable(store, clock, UPDATES.replace("EVERY", before))
    await store.ingest([disk_alert("aaaa000000000001")], T0)
    await escalator.run_once()
    await run_until(escalator, clock, T0 + timedelta(minutes=95))
    await reload(UPDATES.replace("EVERY", after))
    await escalator.run_once()
    await run_until(escalator, clock, T0 + timedelta(minutes=185))
    assert await status_times(store) == expected


GONE_UPDATES = """
contacts:
  alice: {email: alice@example.com}
  ticket: {email: tickets@example.com}
  mgr: {email: mgr@example.com}
escalation_policies:
  ops:
    levels:
      - targets: [ticket]
    status_updates: {every: 30m, to: [mgr]}
  standard:
    levels:
      - targets: [alice]
    status_updates: {every: 30m, to: [mgr]}
incidents:
  default_policy: standard
"""
WITHOUT_OPS = GONE_UPDATES.replace(
    "  ops:\n    levels:\n      - targets: [ticket]\n    status_updates: {every: 30m, to: [mgr]}\n",
    "",
)


@pytest.mark.parametrize("action", ["acknowledge", "snooze", None])
async def test_a_reload_removing_the_policy_repeats_no_status_update(
    store: SQLiteStore, action: str | None
) -> None:
    """Updates under 'ops' at 30 and 60 minutes; at 70 a reload removes 'ops' and the
    incident (acknowledged, snoozed or neither) goes on under the default: the update of
    60 minutes is not sent again, and the next comes at 90 (escalation review: an
    acknowledged or snoozed incident got the update of 60 minutes twice, and a triggered
    one's next waited until 100)."""
    clock = FakeClock(T0)
    escalator, reload = reloadable(store, clock, GONE_UPDATES)
    await store.rearm_open_incidents(T0, layout=layout_of(GONE_UPDATES))
    await store.ingest([under("ops", "aaaa000000000001", Severity.P1)], T0)
    await escalator.run_once()
    clock.set(T0 + timedelta(minutes=5))
    if action is not None:
        until = T0 + timedelta(hours=3)
        await store.transition(1, action, actor="alice", via="api", now=clock.now(), until=until)
    await run_until(escalator, clock, T0 + timedelta(minutes=70))
    assert "ops" not in WITHOUT_OPS
    await reload(WITHOUT_OPS)
    await escalator.run_once()
    await run_until(escalator, clock, T0 + timedelta(minutes=125))
    assert await status_times(store) == [30, 60, 90, 120]


# -- response targets judged after the fact ----------------------------------------------------


async def test_a_late_pass_records_no_respond_breach_for_an_incident_resolved_in_time(
    store: SQLiteStore,
) -> None:
    """Respond target 15m; nobody acknowledges and the alert resolves at 10m. The pass that
    closes the incident comes at 25m (the daemon was killed just after the resolve's
    commit and started again): the respond target was met, as the report says (resolved
    within it), and no breach is recorded or counted (KPI review: the late pass judged
    the resolved incident as never answered)."""
    clock = FakeClock(T0)
    registry = CollectorRegistry()
    escalator = engine(store, clock, NEXT_HAS_NOBODY, registry)
    targeted = replace(
        disk_alert("aaaa000000000001"),
        classification=replace(CLASSIFIED, target=ResponseTarget(15 * 60, 4 * 3600)),
    )
    await store.ingest([targeted], T0)
    await escalator.run_once()
    clock.set(T0 + timedelta(minutes=10))
    await store.ingest([resolved(targeted, clock.now())], clock.now())
    clock.set(T0 + timedelta(minutes=25))
    await escalator.run_once()
    assert "target_breached" not in await kinds(store)
    breaches = registry.get_sample_value(
        "responder_response_target_breaches_total", {"severity": "P1", "target": "respond"}
    )
    assert not breaches


async def test_an_incident_that_ended_by_going_stale_has_no_time_to_resolve(
    store: SQLiteStore,
) -> None:
    """The alert stops arriving and goes stale: the incident resolves, by the stale sweep,
    and the engine's closing pass observes no time to resolve (nobody saw it end; 12 hours
    of nothing would swamp the MTTR; KPI review). A resolve by Alertmanager is observed."""
    clock = FakeClock(T0)
    registry = CollectorRegistry()
    escalator = engine(store, clock, NEXT_HAS_NOBODY, registry)
    await store.ingest([disk_alert("aaaa000000000001")], T0)
    await escalator.run_once()
    clock.set(T0 + timedelta(hours=13))
    assert await store.mark_stale(T0 + timedelta(hours=1), clock.now()) == [1]
    (ended,) = await store.list_incidents()
    assert (ended.state.value, ended.resolved_by) == ("resolved", "stale-sweep")
    await escalator.run_once()
    observed = registry.get_sample_value(
        "responder_incident_time_to_resolve_seconds_count", {"severity": "P1"}
    )
    assert observed == 0

    await store.ingest([disk_alert("bbbb000000000002")], clock.now())
    await escalator.run_once()
    clock.set(clock.now() + timedelta(minutes=5))
    await store.ingest([resolved(disk_alert("bbbb000000000002"), clock.now())], clock.now())
    await escalator.run_once()
    observed = registry.get_sample_value(
        "responder_incident_time_to_resolve_seconds_count", {"severity": "P1"}
    )
    assert observed == 1

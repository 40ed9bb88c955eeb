"""The escalation engine over real SQLite on the fake clock: ``Escalator.run_once`` minute
by minute, as the loop would wake, for what one pass cannot show (a containment failure
waiting for someone to come on call, a policy change in the middle of an incident)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from responder.clock import FakeClock
from responder.escalate import Escalator, load_escalation
from responder.incident import Page
from responder.metrics import Metrics
from responder.store import SQLiteStore
from responder.yamlfile import load_text
from tests.test_store_sqlite import T0, disk_alert


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "responder.db")
    await opened.open()
    yield opened
    await opened.close()


def engine(store: SQLiteStore, clock: FakeClock, text: str) -> Escalator:
    config = load_escalation(load_text(text, "config.yaml"))
    return Escalator(store, clock, Metrics(CollectorRegistry()), lambda: config)


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

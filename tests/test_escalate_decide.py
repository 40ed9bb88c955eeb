"""``escalate.decide`` alone, on a fake clock: what one pass records for one incident."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from responder.escalate import decide, load_escalation
from responder.incident import EscalationWork, Incident, IncidentState
from responder.yamlfile import load_text

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

CONFIG = """
contacts:
  alice: {email: alice@example.com}
  bob: {email: bob@example.com}
  carol: {email: carol@example.com}
  boss: {email: boss@example.com}
escalation_policies:
  standard:
    levels:
      - targets: [alice]
      - after: 5m
        targets: [bob]
      - after: 30m
        targets: [carol]
    status_updates: {every: 10m, to: [boss]}
"""


def _incident(state: IncidentState, **changes: object) -> Incident:
    fields: dict[str, object] = {
        "id": 1,
        "key": "k",
        "state": state,
        "severity": "P1",
        "category": "availability",
        "policy": "standard",
        "rule": None,
        "title": "t",
        "respond_s": None,
        "resolve_s": None,
        "opened_at": T0,
        "triggered_at": T0,
        "episode": 1,
        "acknowledged_at": None,
        "acknowledged_by": None,
        "resolved_at": None,
        "resolved_by": None,
        "snoozed_until": None,
        "assignee": None,
        "next_due": None,
        "version": 1,
    }
    fields.update(changes)
    return Incident(**fields)  # type: ignore[arg-type]


def test_a_containment_failure_pages_the_next_level_not_the_next_status_update() -> None:
    """At 12 minutes (levels 1 and 2 done, U1 sent), containment fails: carol's level 3 is
    paged now; the status update U2 keeps its time (escalation review, stop 16: U2 went out
    early instead, and carol was never paged)."""
    config = load_escalation(load_text(CONFIG, "config.yaml"))
    now = T0 + timedelta(minutes=12)
    incident = _incident(IncidentState.TRIGGERED, escalate_now="restart failed")
    work = EscalationWork(incident, frozenset({"L1", "L2", "U1"}), ())
    decision = decide(work, config, now)
    assert [s.step for s in decision.steps] == ["L3"]


def test_a_containment_failure_pages_a_snoozed_incident_at_once() -> None:
    """Snoozed for an hour after level 1; containment fails at 3 minutes: level 2 now."""
    config = load_escalation(load_text(CONFIG, "config.yaml"))
    now = T0 + timedelta(minutes=3)
    incident = _incident(
        IncidentState.SNOOZED, snoozed_until=T0 + timedelta(hours=1), escalate_now="failed"
    )
    decision = decide(EscalationWork(incident, frozenset({"L1"}), ()), config, now)
    assert [s.step for s in decision.steps] == ["L2"]


OFFICE = """
business_hours: {timezone: UTC, start: "09:00", end: "17:00"}
contacts:
  it-manager: {email: it@example.com}
  night: {email: night@example.com}
escalation_policies:
  standard:
    levels:
      - targets: [it-manager]
        when: {business_hours: true}
      - after: 10m
        targets: [night]
"""


def test_the_reminder_at_a_snooze_end_keeps_to_its_level_condition() -> None:
    """The office-hours level reached at 16:00 (a Monday), snoozed until 20:00: the IT
    manager is not paged at 20:00 (escalation review, stop 16: the reminder ignored the
    level's condition)."""
    config = load_escalation(load_text(OFFICE, "config.yaml"))
    start = datetime(2026, 1, 5, 16, 0, tzinfo=UTC)
    end = start + timedelta(hours=4)
    incident = _incident(
        IncidentState.SNOOZED, triggered_at=start, opened_at=start, snoozed_until=end
    )
    decision = decide(EscalationWork(incident, frozenset({"L1"}), ()), config, end)
    assert not [s for s in decision.steps if s.step.startswith("L1.s")]
    assert decision.unsnooze


LASTING = """
contacts:
  alice: {email: alice@example.com}
  boss: {email: boss@example.com}
  carol: {email: carol@example.com}
escalation_policies:
  standard:
    levels:
      - targets: [alice]
      - after: 30m
        clock: duration
        targets: [boss]
      - after: 60m
        targets: [carol]
"""


def test_a_containment_failure_reaches_a_duration_level_of_a_long_incident() -> None:
    """The incident has lasted since 20 minutes before this episode's trigger; the next
    level is a duration level (counted from the lasting): a containment failure at +5m
    pages it now (regression review, stop 16: only the episode's clock was shifted)."""
    config = load_escalation(load_text(LASTING, "config.yaml"))
    incident = _incident(
        IncidentState.TRIGGERED,
        lasting_since=T0 - timedelta(minutes=20),
        escalate_now="restart failed",
    )
    decision = decide(
        EscalationWork(incident, frozenset({"L1"}), ()), config, T0 + timedelta(minutes=5)
    )
    assert [s.step for s in decision.steps] == ["L2"]


def test_a_level_retried_for_want_of_anyone_keeps_to_its_condition() -> None:
    """An office-hours level found nobody at 16:55 and was retried: at 17:05 it is out of
    hours, so it is skipped, not paged to whoever came on call (regression review, stop
    16)."""
    config = load_escalation(load_text(OFFICE, "config.yaml"))
    start = datetime(2026, 1, 5, 16, 55, tzinfo=UTC)
    incident = _incident(IncidentState.TRIGGERED, triggered_at=start, opened_at=start)
    work = EscalationWork(incident, frozenset({"nobody:L1"}), ())
    decision = decide(work, config, start + timedelta(minutes=10))
    skipped, night = decision.steps
    assert (skipped.step, skipped.pages, skipped.event) == ("L1", (), None)
    assert [p.contact for p in night.pages] == ["night"]  # level 2, at its own time


def test_a_containment_failure_just_after_office_hours_pages_the_next_level() -> None:
    """The office-hours level found nobody at 16:55 and waits its retry; containment fails
    at 17:00:30, before that retry skipped it: the failure pages level 2 now. It paged
    nobody: the level, still pending, was chosen by its condition at its due time (16:55)
    and then skipped as out of hours, and the failure was cleared."""
    config = load_escalation(load_text(OFFICE, "config.yaml"))
    start = datetime(2026, 1, 5, 16, 55, tzinfo=UTC)
    incident = _incident(
        IncidentState.TRIGGERED, triggered_at=start, opened_at=start, escalate_now="failed"
    )
    work = EscalationWork(incident, frozenset({"nobody:L1"}), ())
    now = datetime(2026, 1, 5, 17, 0, 30, tzinfo=UTC)
    decision = decide(work, config, now)
    paged = [p.contact for s in decision.steps for p in s.pages]
    assert paged == ["night"]
    assert not decision.keep_failure


OFFICE_IN_CLASSIFICATION = """
classification:
  business_hours: {timezone: Europe/Berlin, start: "08:00", end: "18:00"}
contacts:
  it-manager: {email: it@example.com}
  night: {email: night@example.com}
escalation_policies:
  standard:
    levels:
      - targets: [it-manager]
        when: {business_hours: true}
      - targets: [night]
        when: {business_hours: false}
"""


def test_business_hours_given_in_classification_also_decide_escalation_conditions() -> None:
    """Business hours written in the classification section (as configuration.md and
    rules.md show them) are the one definition: at 08:30 on a Monday in Berlin the office
    level is paged, as the response target says the office is open, not the night level
    of the default Mon-Fri 09:00-17:00 UTC."""
    config = load_escalation(load_text(OFFICE_IN_CLASSIFICATION, "config.yaml"))
    start = datetime(2026, 3, 2, 7, 30, tzinfo=UTC)  # 08:30 CET
    incident = _incident(IncidentState.TRIGGERED, triggered_at=start, opened_at=start)
    decision = decide(EscalationWork(incident, frozenset(), ()), config, start)
    assert [p.contact for s in decision.steps for p in s.pages] == ["it-manager"]
    assert config.business_hours.timezone.key == "Europe/Berlin"

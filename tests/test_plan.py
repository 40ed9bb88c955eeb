"""What would happen: the escalation plan and the on-call view, read before it counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from responder.calendar import parse_business_hours
from responder.directory import Channel, Directory, parse_directory
from responder.model import Severity
from responder.plan import PlannedPage, escalation_plan, render_oncall, render_plan
from responder.policy import EscalationClock, Policy, StepKind, parse_policies
from responder.yamlfile import load_text

BERLIN = ZoneInfo("Europe/Berlin")

CONFIG = """\
business_hours:
  timezone: Europe/Berlin
contacts:
  alice: {sms: "+4915110000001", email: alice@example.com, backup: bob}
  bob:
    sms: "+4915110000002"
    voice: "+4915110000002"
    notify: [{channel: sms}, {channel: voice, after: 5m}]
    backup: carol
  carol: {email: carol@example.com}
  dan: {sms: "+4915110000004"}
  erin: {email: erin@example.com}
  frank: {email: frank@example.com}
  ceo-office: {backup: frank}
roles:
  it-manager: [dan]
  cto: [erin]
  security-officer: [carol]
  ceo: [ceo-office]
teams:
  management: [{role: it-manager}, {role: cto}]
schedules:
  primary:
    timezone: Europe/Berlin
    layers:
      - {type: daily, start: 2026-03-28, handoff: "09:00", members: [alice, bob]}
  night:
    timezone: Europe/Berlin
    layers:
      - {type: daily, start: 2026-03-28, handoff: "02:30", members: [dan, erin]}
escalation_policies:
  standard:
    levels:
      - targets: [{schedule: primary}]
      - after: 15m
        targets: [{role: it-manager}]
      - after: 30m
        targets: [{role: cto}]
      - after: 60m
        clock: duration
        targets: [{team: management}]
    status_updates: {every: 30m, to: [{role: it-manager}]}
  secure:
    levels:
      - targets: [{contact: alice}]
      - targets: [{role: security-officer}]
        when: {category: security}
      - after: 10m
        targets: [{role: ceo}]
        when: {category: security, severity: P0}
      - after: 20m
        targets: [{role: it-manager}]
        when: {business_hours: false}
  looping:
    repeat: 100
    repeat_after: 5m
    levels:
      - targets: [{contact: dan}]
    status_updates: {every: 1h, to: [{contact: erin}]}
"""

T0 = datetime(2026, 3, 31, 8, 0, tzinfo=UTC)  # a Tuesday, 10:00 in Berlin


def load() -> tuple[Directory, dict[str, Policy]]:
    root = load_text(CONFIG, "config.yaml")
    people = parse_directory(root)
    hours = parse_business_hours(root["business_hours"])
    return people, parse_policies(root["escalation_policies"], people, hours)


def minutes(n: float) -> datetime:
    return T0 + timedelta(minutes=n)


def test_nobody_answers_a_p1_levels_page_in_turn_and_updates_go_every_half_hour() -> None:
    """P1 at 10:00 Berlin, nobody acknowledges: on-call Bob at once (voice 5 min later), the
    IT manager at 15 min, the CTO at 30 min with the first update, the management team at
    60 min on the duration clock with the second update, and updates every 30 min after."""
    people, policies = load()
    plan = escalation_plan(
        policies["standard"], people, Severity.P1, "availability", T0, horizon=timedelta(hours=2)
    )
    assert [(s.id, s.offset / timedelta(minutes=1)) for s in plan] == [
        ("L1", 0),
        ("L2", 15),
        ("L3", 30),
        ("U1", 30),
        ("L4", 60),
        ("U2", 60),
        ("U3", 90),
        ("U4", 120),
    ]
    assert plan[0].pages == (
        PlannedPage(
            "bob", Channel.SMS, "+4915110000002", T0, timedelta(0), "carol", plan[0].pages[0].via
        ),
        PlannedPage(
            "bob",
            Channel.VOICE,
            "+4915110000002",
            minutes(5),
            timedelta(minutes=5),
            "carol",
            plan[0].pages[1].via,
        ),
    )
    by_id = {s.id: s for s in plan}
    assert [(p.contact, p.at) for p in by_id["L2"].pages] == [("dan", minutes(15))]
    assert [(p.contact, p.at) for p in by_id["L3"].pages] == [("erin", minutes(30))]
    assert [p.contact for p in by_id["L4"].pages] == ["dan", "erin"]
    assert by_id["L4"].clock is EscalationClock.DURATION
    assert by_id["L4"].even_when_acknowledged
    assert not by_id["L2"].even_when_acknowledged
    assert by_id["U1"].kind is StepKind.STATUS_UPDATE
    assert all(s.skipped is None for s in plan)


def test_render_plan_shows_offsets_local_clock_and_backups() -> None:
    """The text names the offset, the Berlin wall time, the level and who gets what."""
    people, policies = load()
    plan = escalation_plan(
        policies["standard"], people, Severity.P1, "availability", T0, horizon=timedelta(hours=1)
    )
    text = render_plan(plan, zone=BERLIN)
    lines = text.splitlines()
    assert lines[0] == "2026-03-31 (Tue)"
    # Runs of spaces only align columns: compare the words.
    words = [" ".join(line.split()) for line in lines[1:3]]
    assert words == [
        "+0s 10:00 CEST L1 (unacknowledged) bob sms +4915110000002 (backup: carol)",
        "+5m 10:05 CEST bob voice +4915110000002 (backup: carol)",
    ]
    assert "+15m  10:15 CEST  L2 (unacknowledged)" in text
    assert "L4 (duration: goes even when acknowledged)" in text
    assert "U2 (status update, while open)" in text
    # Default zone is UTC.
    assert "+15m  08:15 UTC  L2" in render_plan(plan, zone=None)


def test_security_only_levels_are_skipped_for_a_performance_alert_with_the_reason() -> None:
    """A performance P0 does not page the security officer nor the CEO's security level, and
    the plan says why; the off-hours level is skipped at 10:20 on a Tuesday."""
    people, policies = load()
    plan = escalation_plan(policies["secure"], people, Severity.P0, "performance", T0)
    assert [(s.id, s.skipped) for s in plan] == [
        ("L1", None),
        ("L2", "only for category security"),
        ("L3", "only for category security"),
        ("L4", "only outside business hours"),
    ]
    assert plan[1].pages == ()
    text = render_plan(plan, zone=BERLIN)
    assert "L2 (unacknowledged)  skipped: only for category security" in text


def test_security_p1_pages_the_officer_but_not_the_p0_level() -> None:
    """Only the failing part of a condition is named."""
    people, policies = load()
    plan = escalation_plan(policies["secure"], people, Severity.P1, "security", T0)
    assert [(s.id, s.skipped) for s in plan][:3] == [
        ("L1", None),
        ("L2", None),
        ("L3", "only for severity P0"),
    ]
    assert [p.contact for p in plan[1].pages] == ["carol"]


def test_a_contact_without_channels_shows_who_is_paged_instead() -> None:
    """The CEO's office has no phone: Frank gets the page, and the plan says so."""
    people, policies = load()
    plan = escalation_plan(policies["secure"], people, Severity.P0, "security", T0)
    ceo = next(s for s in plan if s.id == "L3")
    assert [(p.contact, p.instead_of) for p in ceo.pages] == [("frank", "ceo-office")]
    assert "frank  email  frank@example.com  (instead of ceo-office)" in render_plan(plan)


def test_horizon_and_max_steps_bound_a_repeating_policy() -> None:
    """A policy repeating every 5 minutes for hours ends at the horizon or the step limit."""
    people, policies = load()
    looping = policies["looping"]
    plan = escalation_plan(looping, people, Severity.P2, "infra", T0, horizon=timedelta(hours=1))
    assert [s.id for s in plan] == ["L1", *(f"L1.r{r}" for r in range(1, 13)), "U1"]
    assert plan[-1].due == minutes(60)
    assert len(escalation_plan(looping, people, Severity.P2, "infra", T0, max_steps=4)) == 4
    # The default horizon (24h) stops the status updates, which never end on their own.
    whole = escalation_plan(looping, people, Severity.P2, "infra", T0, max_steps=10_000)
    assert max(s.due for s in whole) == minutes(24 * 60)
    assert [s.id for s in whole if s.kind is StepKind.STATUS_UPDATE][-1] == "U24"


def test_rotation_hands_off_at_local_nine_across_the_dst_change() -> None:
    """Daily 09:00 Berlin hand-off: 08:00 UTC on Saturday, 07:00 UTC on Sunday (CEST)."""
    people, _ = load()
    saturday_noon = datetime(2026, 3, 28, 11, 0, tzinfo=UTC)
    text = render_oncall(people, saturday_noon, zone=BERLIN)
    assert "primary  alice  until 2026-03-29 09:00 CEST (Sun)  next: bob" in text
    assert people.on_call("primary", datetime(2026, 3, 29, 6, 59, tzinfo=UTC)) == ("alice",)
    sunday = datetime(2026, 3, 29, 7, 30, tzinfo=UTC)  # 09:30 CEST; 08:30 if it were still CET
    text = render_oncall(people, sunday, zone=BERLIN)
    assert text.startswith("On call at 2026-03-29 09:30 CEST (Sun)\n")
    assert "primary  bob   until 2026-03-30 09:00 CEST (Mon)  next: alice" in text


def test_a_handoff_inside_the_spring_forward_gap_happens_at_the_jump() -> None:
    """02:30 does not exist on 29 March in Berlin: the night desk changes at 03:00 CEST."""
    people, _ = load()
    text = render_oncall(people, datetime(2026, 3, 28, 23, 0, tzinfo=UTC), zone=BERLIN)
    assert "night    dan    until 2026-03-29 03:00 CEST (Sun)  next: erin" in text
    text = render_oncall(people, datetime(2026, 3, 29, 1, 0, tzinfo=UTC), zone=None)
    assert "night    erin   until 2026-03-30 00:30 UTC (Mon)  next: dan" in text


def test_oncall_lists_roles_and_teams_as_they_resolve_at_that_instant() -> None:
    """Groups are expanded at the instant; a contact without channels shows its stand-in."""
    people, _ = load()
    text = render_oncall(people, T0, zone=BERLIN)
    lines = text.splitlines()
    roles = lines[lines.index("Roles") + 1 : lines.index("Teams") - 1]
    assert roles == [
        "  ceo               ceo-office (via frank)",
        "  cto               erin",
        "  it-manager        dan",
        "  security-officer  carol",
    ]
    assert lines[lines.index("Teams") + 1] == "  management  dan, erin"


def test_a_single_member_rotation_has_no_next_shift_and_an_empty_plan_says_so() -> None:
    """A one-person schedule never hands off: the view says so instead of searching forever."""
    root = load_text(
        "contacts:\n  solo: {email: solo@example.com}\n"
        "schedules:\n  lone:\n    layers: [{type: weekly, start: 2026-01-05, members: [solo]}]\n",
        "config.yaml",
    )
    text = render_oncall(parse_directory(root), T0)
    assert "  lone  solo  no change before 2026-12-12 08:00 UTC (Sat)" in text
    assert render_plan([]) == "nothing would be paged\n"

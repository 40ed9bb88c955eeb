"""Escalation as the operator lives it: who is paged, when, and when the paging stops."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from responder.calendar import parse_business_hours
from responder.directory import Channel, Directory, Target, TargetKind, parse_directory
from responder.model import Severity
from responder.policy import (
    EscalationLayout,
    IncidentView,
    LevelKeys,
    PageTarget,
    Policy,
    due_steps,
    level_keys,
    level_renumbering,
    next_due,
    pages_for,
    parse_policies,
)
from responder.yamlfile import ConfigError, Node, load_text

CONFIG = """\
business_hours:
  timezone: Europe/Berlin
  start: "09:00"
  end: "17:00"
contacts:
  alice: {sms: "+4915110000001", email: alice@example.com, backup: bob}
  bob:
    sms: "+4915110000002"
    voice: "+4915110000002"
    email: bob@example.com
    notify: [{channel: sms}, {channel: voice, after: 5m}]
  carol: {email: carol@example.com, backup: dan}
  dan: {sms: "+4915110000004"}
  erin: {email: erin@example.com}
  frank: {email: frank@example.com}
  ceo-office: {backup: frank}
roles:
  primary-admin: [alice]
  security-officer: [carol]
  it-manager: [dan]
  cto: [erin]
  ceo: [ceo-office]
teams:
  management: [{role: it-manager}, {role: cto}]
schedules:
  primary:
    layers: [{type: weekly, start: 2026-01-05, members: [bob]}]
escalation_policies:
  standard:
    repeat: 1
    repeat_after: 15m
    levels:
      - targets: [{role: primary-admin}, {schedule: primary}]
      - targets: [{role: security-officer}]
        when: {category: security}
      - after: 15m
        targets: [{role: it-manager}]
      - after: 30m
        clock: duration
        targets: [{team: management}]
      - after: 45m
        targets: [{role: cto}]
      - after: 60m
        clock: duration
        targets: [{role: ceo}]
        when: {severity: [P0]}
    status_updates: {every: 30m, to: [{role: it-manager}]}
  office:
    levels:
      - targets: [{role: it-manager}]
        when: {business_hours: true}
      - targets: [{schedule: primary}]
        when: {business_hours: false}
"""

T0 = datetime(2026, 3, 31, 8, 0, tzinfo=UTC)  # a Tuesday, 10:00 in Berlin


def load() -> tuple[Node, Directory, dict[str, Policy]]:
    root = load_text(CONFIG, "config.yaml")
    people = parse_directory(root)
    hours = parse_business_hours(root["business_hours"])
    return root, people, parse_policies(root["escalation_policies"], people, hours)


def minutes(n: float) -> datetime:
    return T0 + timedelta(minutes=n)


def run(policy: Policy, incident: IncidentView, until: float) -> list[tuple[float, list[str]]]:
    """Drive the decision like the engine does: wake at next_due, do what is due, record it."""
    story: list[tuple[float, list[str]]] = []
    now = incident.triggered_at
    limit = minutes(until)
    while now <= limit:
        steps = due_steps(policy, incident, now)
        if steps:
            story.append(((now - T0) / timedelta(minutes=1), [s.id for s in steps]))
            incident = replace(incident, done=incident.done | {s.id for s in steps})
        following = next_due(policy, incident, now)
        if following is None:
            break
        now = following
    return story


def fired(severity: Severity = Severity.P1, category: str = "availability") -> IncidentView:
    return IncidentView(triggered_at=T0, severity=severity, category=category)


def test_p1_pages_on_call_then_managers_and_ack_stops_only_the_unacknowledged_clock() -> None:
    """P1 fires -> level 1 pages the primary admin and the on-call; 15 min without ack ->
    the IT manager; ack at 20 min -> no more paging levels, but the 30 min management notice
    (duration clock) and status updates still go; resolve at 70 min -> nothing more."""
    _, people, policies = load()
    standard = policies["standard"]
    incident = replace(fired(), acknowledged_at=minutes(20), resolved_at=minutes(70))
    assert run(standard, incident, until=200) == [
        (0, ["L1"]),
        (15, ["L3"]),
        (30, ["L4", "U1"]),
        (60, ["U2"]),
    ]
    level_one = due_steps(standard, fired(), T0)
    assert [
        (p.contact, p.channel, p.delay) for p in pages_for(level_one[0], standard, people, T0)
    ] == [
        ("alice", Channel.SMS, timedelta(0)),
        ("alice", Channel.EMAIL, timedelta(0)),
        ("bob", Channel.SMS, timedelta(0)),
        ("bob", Channel.VOICE, timedelta(minutes=5)),
    ]


def test_unacknowledged_p0_security_incident_climbs_every_level_and_repeats_once() -> None:
    """Security P0 nobody answers: officer at once, managers, CTO, CEO via the duration clock,
    then the paging levels start over once, 15 min after the last one, and status updates go on."""
    _, _, policies = load()
    story = run(policies["standard"], fired(Severity.P0, "security"), until=200)
    assert story == [
        (0, ["L1", "L2"]),
        (15, ["L3"]),
        (30, ["L4", "U1"]),
        (45, ["L5"]),
        (60, ["L1.r1", "L2.r1", "L6", "U2"]),
        (75, ["L3.r1"]),
        (90, ["U3"]),
        (105, ["L5.r1"]),
        (120, ["U4"]),
        (150, ["U5"]),
        (180, ["U6"]),
    ]


def test_security_officer_level_is_skipped_for_other_categories() -> None:
    """An availability incident never pages the security officer, not even on repeat."""
    _, _, policies = load()
    ids = [i for _, step_ids in run(policies["standard"], fired(), until=120) for i in step_ids]
    assert "L2" not in ids
    assert "L2.r1" not in ids
    assert "L6" not in ids  # the CEO level is for P0 only


def test_snooze_holds_paging_and_rearms_with_the_full_gap_after_it_ends() -> None:
    """Snoozed at 5 min until 65 min: no IT manager at 15 min; the duration notice still goes at
    30 min; after the snooze the next paging level waits its full 15 min gap (80 min), and the
    CTO level its full gap after that (95 min)."""
    _, _, policies = load()
    incident = replace(fired(), done=frozenset({"L1"}), snoozed_until=minutes(65))
    assert due_steps(policies["standard"], incident, minutes(15)) == []
    assert next_due(policies["standard"], incident, minutes(5)) == minutes(30)
    story = run(policies["standard"], incident, until=100)
    assert story == [(30, ["L4", "U1"]), (60, ["U2"]), (80, ["L3"]), (90, ["U3"]), (95, ["L5"])]


def test_resolve_stops_everything() -> None:
    """Resolved at 10 min: nothing is due afterwards and there is nothing to wake up for."""
    _, _, policies = load()
    incident = replace(fired(), done=frozenset({"L1"}), resolved_at=minutes(10))
    assert due_steps(policies["standard"], incident, minutes(30)) == []
    assert next_due(policies["standard"], incident, minutes(10)) is None
    assert next_due(policies["standard"], incident, minutes(5)) is None


def test_after_downtime_each_level_is_paged_once_and_only_the_latest_update_goes() -> None:
    """The daemon was down for 100 minutes: it catches up without paging anyone twice."""
    _, _, policies = load()
    steps = due_steps(policies["standard"], replace(fired(), done=frozenset({"L1"})), minutes(100))
    assert [s.id for s in steps] == ["L4", "L5", "L1.r1", "L3.r1", "U3"]
    # Once recorded, the earlier passes are moot: nothing older comes back.
    done = frozenset({"L1", *(s.id for s in steps)})
    assert due_steps(policies["standard"], replace(fired(), done=done), minutes(100)) == []


def test_business_hours_condition_chooses_the_office_or_the_on_call() -> None:
    """In office hours the IT manager is paged; on Saturday night the on-call is."""
    _, _, policies = load()
    office = policies["office"]
    assert [s.id for s in due_steps(office, fired(), T0)] == ["L1"]
    saturday = datetime(2026, 4, 4, 22, 0, tzinfo=UTC)
    night = replace(fired(), triggered_at=saturday)
    assert [s.id for s in due_steps(office, night, saturday)] == ["L2"]
    assert next_due(office, replace(night, done=frozenset({"L2"})), saturday) is None


def test_a_role_without_channels_is_paged_through_the_backup() -> None:
    """The CEO's office has no phone of its own: Frank, its backup, gets the page instead."""
    _, people, policies = load()
    standard = policies["standard"]
    incident = fired(Severity.P0)
    ceo_level = next(s for s in due_steps(standard, incident, minutes(60)) if s.id == "L6")
    assert pages_for(ceo_level, standard, people, minutes(60)) == [
        PageTarget(
            contact="frank",
            channel=Channel.EMAIL,
            address="frank@example.com",
            delay=timedelta(0),
            backup=None,
            via=Target(TargetKind.ROLE, "ceo"),
            instead_of="ceo-office",
        )
    ]


def test_pages_carry_the_backup_for_delivery_failover_and_never_repeat_a_contact() -> None:
    """Dan is in the management team and its IT manager: paged once, Carol's backup noted."""
    _, people, policies = load()
    standard = policies["standard"]
    l4 = next(s for s in due_steps(standard, fired(), minutes(30)) if s.id == "L4")
    pages = pages_for(l4, standard, people, minutes(30))
    assert [(p.contact, p.channel) for p in pages] == [
        ("dan", Channel.SMS),
        ("erin", Channel.EMAIL),
    ]
    alice = pages_for(due_steps(standard, fired(), T0)[0], standard, people, T0)[0]
    assert alice.backup == "bob"


@pytest.mark.parametrize(
    ("policy", "where", "message"),
    [
        (
            "  p:\n    levels:\n      - targets: [{contact: zed}]\n",
            "config.yaml:6: escalation_policies.p.levels[0].targets[0].contact",
            "unknown contact 'zed'",
        ),
        (
            "  p:\n    levels:\n      - targets: [{role: cfo}]\n",
            "config.yaml:6: escalation_policies.p.levels[0].targets[0].role",
            "unknown role 'cfo'",
        ),
        (
            "  p:\n    levels:\n      - {after: 30m, targets: [{contact: a}]}\n"
            "      - {after: 15m, targets: [{contact: a}]}\n",
            "config.yaml:7: escalation_policies.p.levels[1].after",
            "time order",
        ),
        (
            "  p:\n    levels:\n      - {clock: wallclock, targets: [{contact: a}]}\n",
            "config.yaml:6: escalation_policies.p.levels[0].clock",
            "expected one of unacknowledged, duration",
        ),
        (
            "  p:\n    levels:\n      - {targets: [{contact: a}], when: {severity: P5}}\n",
            "config.yaml:6: escalation_policies.p.levels[0].when.severity",
            "P0, P1, P2, P3",
        ),
        (
            "  p:\n    repeat: 2\n    levels:\n"
            "      - {clock: duration, targets: [{contact: a}]}\n",
            "config.yaml:5: escalation_policies.p.repeat",
            "restarts unacknowledged levels",
        ),
        (
            "  p:\n    levels: []\n",
            "config.yaml:5: escalation_policies.p.levels",
            "at least one level",
        ),
        (
            "  p:\n    levels:\n      - {targets: [{contact: a, role: b}]}\n",
            "config.yaml:6: escalation_policies.p.levels[0].targets[0]",
            "exactly one",
        ),
        (
            "  p:\n    levels:\n      - {targets: [{contact: a}]}\n"
            "    status_updates: {every: 10s, to: [{contact: a}]}\n",
            "config.yaml:7: escalation_policies.p.status_updates.every",
            "once a minute",
        ),
        (
            # The interval names a reload's update ids (U4.e90): whole seconds keep two
            # intervals from sharing one (escalation review, stop 17).
            "  p:\n    levels:\n      - {targets: [{contact: a}]}\n"
            "    status_updates: {every: 1m30s500ms, to: [{contact: a}]}\n",
            "config.yaml:7: escalation_policies.p.status_updates.every",
            "whole seconds",
        ),
    ],
)
def test_policy_errors_name_file_line_and_key(policy: str, where: str, message: str) -> None:
    """Every target is checked against the directory, and the error says where it stands."""
    text = "contacts:\n  a: {email: a@x.org}\nescalation_policies:\n" + policy
    root = load_text(text, "config.yaml")
    people = parse_directory(root)
    with pytest.raises(ConfigError) as caught:
        parse_policies(
            root["escalation_policies"], people, parse_business_hours(Node(None, "c", 0, ""))
        )
    assert str(caught.value).startswith(where), str(caught.value)
    assert message in str(caught.value)


def _levels(levels: str) -> LevelKeys:
    text = (
        "contacts:\n  a: {email: a@x.org}\n  b: {email: b@x.org}\n  c: {email: c@x.org}\n"
        "escalation_policies:\n  p:\n    levels:\n" + levels
    )
    root = load_text(text, "config.yaml")
    hours = parse_business_hours(Node(None, "c", 0, ""))
    return level_keys(
        parse_policies(root["escalation_policies"], parse_directory(root), hours)["p"]
    )


def test_level_renumbering_follows_levels_by_their_targets() -> None:
    """Across a reload a level is known by clock, targets and condition, not by position:
    removed levels map to None, moved ones to their new number, a changed ``after`` is the
    same level; nothing moved gives nothing to do."""
    three = _levels(
        "      - targets: [a]\n      - {after: 15m, targets: [b]}\n"
        "      - {after: 30m, targets: [c]}\n"
    )
    assert level_renumbering(three, three) == {}
    later = _levels(
        "      - targets: [a]\n      - {after: 20m, targets: [b]}\n"
        "      - {after: 30m, targets: [c]}\n"
    )
    assert level_renumbering(three, later) == {}
    without_b = _levels("      - targets: [a]\n      - {after: 30m, targets: [c]}\n")
    assert level_renumbering(three, without_b) == {1: 1, 2: None, 3: 2}
    c_first = _levels(
        "      - targets: [c]\n      - targets: [a]\n      - {after: 15m, targets: [b]}\n"
    )
    assert level_renumbering(three, c_first) == {1: 2, 2: 3, 3: 1}
    twice = _levels("      - targets: [a]\n      - {after: 15m, targets: [a]}\n")
    assert level_renumbering(twice, _levels("      - targets: [a]\n")) == {1: 1, 2: None}


def test_a_level_s_clock_and_condition_are_part_of_what_it_is() -> None:
    """The same targets on the other clock, or under another condition, are another level:
    a level done under one is not done under the other."""
    plain = _levels("      - targets: [a]\n      - {after: 15m, targets: [b]}\n")
    duration = _levels(
        "      - targets: [a]\n      - {after: 15m, clock: duration, targets: [b]}\n"
    )
    assert level_renumbering(plain, duration) == {1: 1, 2: None}
    conditioned = _levels(
        "      - targets: [a]\n      - {after: 15m, targets: [b], when: {severity: [P0, P1]}}\n"
    )
    assert level_renumbering(plain, conditioned) == {1: 1, 2: None}
    reordered = _levels(
        "      - targets: [a]\n      - {after: 15m, targets: [b], when: {severity: [P1, P0]}}\n"
    )
    assert level_renumbering(conditioned, reordered) == {}


def test_an_escalation_layout_survives_its_text() -> None:
    """The layout kept in the store reads back as written; anything else is refused."""
    keys = _levels("      - targets: [a]\n      - {after: 15m, targets: [b]}\n")
    layout = EscalationLayout("p", {"p": keys, "q": ()})
    assert EscalationLayout.from_json(layout.to_json()) == layout
    for text in ("", "[]", '{"policies": {}}', '{"default_policy": 1, "policies": {}}'):
        with pytest.raises(ValueError, match="not an escalation layout"):
            EscalationLayout.from_json(text)

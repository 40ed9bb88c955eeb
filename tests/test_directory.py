"""Who is on call: contacts, roles, layered rotations across daylight saving, overrides."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from responder.calendar import wall_to_utc
from responder.directory import (
    Channel,
    Directory,
    Layer,
    NotificationRule,
    Schedule,
    Shift,
    Target,
    TargetKind,
    parse_directory,
)
from responder.yamlfile import ConfigError, load_text

CONFIG = """\
contacts:
  alice:
    sms: "+4915110000001"
    email: alice@example.com
    timezone: Europe/Berlin
    backup: bob
  bob:
    sms: "+4915110000002"
    voice: "+4915110000002"
    email: bob@example.com
    backup: carol
    notify:
      - {channel: sms, after: 0m}
      - {channel: voice, after: 5m}
  carol:
    email: carol@example.com
  dave:
    sms: "+14155550100"
  night-desk:
    backup: dave
roles:
  primary-admin: [alice]
  on-call-admins: [{schedule: primary}, {role: primary-admin}]
teams:
  operations: [{role: on-call-admins}, carol]
schedules:
  primary:
    timezone: Europe/Berlin
    layers:
      - name: weekly
        type: weekly
        start: 2026-01-05
        handoff: "09:00"
        members: [alice, bob]
      - name: office hours
        type: weekly
        start: 2026-01-05
        members: [carol]
        restrict: {days: [mon, tue, wed, thu, fri], start: "09:00", end: "17:00"}
    overrides:
      - {contact: dave, start: "2026-03-31T12:00", end: "2026-03-31T18:00"}
  nights:
    timezone: Europe/Berlin
    layers:
      - type: daily
        start: 2026-03-27
        handoff: "02:30"
        members: [alice, bob]
"""


def directory(text: str = CONFIG) -> Directory:
    return parse_directory(load_text(text, "config.yaml"))


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def test_contacts_carry_validated_addresses_and_default_rules() -> None:
    """Alice has SMS and email, so she is texted and mailed at once unless she says otherwise."""
    people = directory()
    alice = people.contacts["alice"]
    assert alice.sms == "+4915110000001"
    assert alice.timezone == ZoneInfo("Europe/Berlin")
    assert alice.rules == (NotificationRule(Channel.SMS), NotificationRule(Channel.EMAIL))
    assert people.contacts["bob"].rules == (
        NotificationRule(Channel.SMS),
        NotificationRule(Channel.VOICE, timedelta(minutes=5)),
    )
    assert people.contacts["carol"].rules == (NotificationRule(Channel.EMAIL),)
    assert people.backup_of("alice") == "bob"
    assert people.backup_of("carol") is None


def test_a_contact_without_channels_is_reached_through_the_backup() -> None:
    """The night desk has no phone of its own: pages go to Dave, its backup."""
    people = directory()
    assert people.reachable("night-desk") == ("dave", (NotificationRule(Channel.SMS),))
    assert people.reachable("alice")[0] == "alice"


def test_weekly_handoff_stays_at_nine_local_when_clocks_spring_forward() -> None:
    """Bob hands over to Alice on Monday 30 March at 09:00 CEST, which is 07:00 UTC."""
    people = directory()
    assert people.on_call("primary", utc(2026, 3, 28, 12, 0)) == ("bob",)  # Saturday
    assert people.on_call("primary", utc(2026, 3, 30, 6, 59, 59)) == ("bob",)
    # At 09:00 local the office-hours layer takes over, so read the weekly layer alone.
    weekly = Directory(people.contacts, {}, {}, {"w": _only_layer(people, "primary", 0)})
    assert weekly.on_call("w", utc(2026, 3, 30, 6, 59, 59)) == ("bob",)
    assert weekly.on_call("w", utc(2026, 3, 30, 7, 0)) == ("alice",)
    shifts = weekly.shifts("w", utc(2026, 3, 20), utc(2026, 4, 3))
    assert shifts == [
        Shift(("alice",), utc(2026, 3, 20), utc(2026, 3, 23, 8, 0)),
        Shift(("bob",), utc(2026, 3, 23, 8, 0), utc(2026, 3, 30, 7, 0)),
        Shift(("alice",), utc(2026, 3, 30, 7, 0), utc(2026, 4, 3)),
    ]
    assert shifts[1].end - shifts[1].start == timedelta(hours=167)


def test_weekly_handoff_stays_at_nine_local_when_clocks_fall_back() -> None:
    """Bob hands over to Alice on Monday 26 October at 09:00 CET, which is 08:00 UTC."""
    weekly = Directory(directory().contacts, {}, {}, {"w": _only_layer(directory(), "primary", 0)})
    shifts = weekly.shifts("w", utc(2026, 10, 19, 7, 0), utc(2026, 10, 26, 9, 0))
    assert shifts == [
        Shift(("bob",), utc(2026, 10, 19, 7, 0), utc(2026, 10, 26, 8, 0)),
        Shift(("alice",), utc(2026, 10, 26, 8, 0), utc(2026, 10, 26, 9, 0)),
    ]
    assert shifts[0].end - shifts[0].start == timedelta(hours=169)


def test_handoff_inside_the_skipped_hour_happens_at_the_jump() -> None:
    """02:30 does not exist on 29 March in Berlin: Alice takes over when 02:00 becomes 03:00."""
    people = directory()
    assert people.on_call("nights", utc(2026, 3, 29, 0, 59, 59)) == ("bob",)
    assert people.on_call("nights", utc(2026, 3, 29, 1, 0)) == ("alice",)
    assert people.shifts("nights", utc(2026, 3, 28), utc(2026, 3, 31)) == [
        Shift(("alice",), utc(2026, 3, 28), utc(2026, 3, 28, 1, 30)),  # 02:30 CET
        Shift(("bob",), utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 0)),  # the jump
        Shift(("alice",), utc(2026, 3, 29, 1, 0), utc(2026, 3, 30, 0, 30)),  # 02:30 CEST
        Shift(("bob",), utc(2026, 3, 30, 0, 30), utc(2026, 3, 31)),
    ]


def test_handoff_inside_the_repeated_hour_happens_the_first_time_round() -> None:
    """02:30 happens twice on 25 October in Berlin: the hand-off takes the first, in CEST."""
    people = directory()
    day = (date(2026, 10, 25) - date(2026, 3, 27)).days
    before, after = ("alice", "bob") if day % 2 else ("bob", "alice")
    assert people.on_call("nights", utc(2026, 10, 25, 0, 29, 59)) == (before,)
    assert people.on_call("nights", utc(2026, 10, 25, 0, 30)) == (after,)
    assert people.on_call("nights", utc(2026, 10, 25, 1, 30)) == (after,)


def test_later_layer_wins_where_it_has_someone_and_overrides_win_over_all() -> None:
    """Carol covers office hours over the weekly rotation; Dave's override beats everyone."""
    people = directory()
    assert people.shifts("primary", utc(2026, 3, 30), utc(2026, 4, 1)) == [
        Shift(("bob",), utc(2026, 3, 30), utc(2026, 3, 30, 7, 0)),
        Shift(("carol",), utc(2026, 3, 30, 7, 0), utc(2026, 3, 30, 15, 0)),
        Shift(("alice",), utc(2026, 3, 30, 15, 0), utc(2026, 3, 31, 7, 0)),
        Shift(("carol",), utc(2026, 3, 31, 7, 0), utc(2026, 3, 31, 10, 0)),
        Shift(("dave",), utc(2026, 3, 31, 10, 0), utc(2026, 3, 31, 16, 0)),  # 12:00-18:00 CEST
        Shift(("alice",), utc(2026, 3, 31, 16, 0), utc(2026, 4, 1)),
    ]


def test_nobody_is_on_call_before_a_rotation_starts() -> None:
    """A schedule that has not started yet shows a gap, not a guess."""
    people = directory()
    assert people.on_call("nights", utc(2026, 3, 26)) == ()
    assert people.shifts("nights", utc(2026, 3, 26), utc(2026, 3, 27, 2, 0))[0] == Shift(
        (), utc(2026, 3, 26), utc(2026, 3, 27, 1, 30)
    )


def test_targets_expand_through_roles_teams_and_schedules() -> None:
    """The operations team is whoever is on call, the primary admin, and Carol, each once."""
    people = directory()
    saturday = utc(2026, 3, 28, 12, 0)
    assert people.expand(Target(TargetKind.TEAM, "operations"), saturday) == (
        "bob",
        "alice",
        "carol",
    )
    assert people.expand(Target(TargetKind.CONTACT, "dave"), saturday) == ("dave",)
    assert people.expand(Target(TargetKind.SCHEDULE, "primary"), saturday) == ("bob",)


WEEKEND = """\
contacts:
  alice: {email: alice@example.com}
  bob: {email: bob@example.com}
schedules:
  weekend:
    timezone: Europe/Berlin
    layers:
      - type: weekly
        start: 2026-01-05
        members: [bob]
        restrict: {days: [mon, tue, wed, thu, fri]}
      - {type: weekly, start: 2026-01-05, members: [alice], restrict: {days: [sat, sun]}}
      - {type: daily, start: 2026-01-05, members: [alice], restrict: {start: "20:00"}}
"""


def test_a_restriction_leaves_out_what_it_does_not_name() -> None:
    """``restrict: {days: [sat, sun]}`` is the whole weekend and the weekdays layer the whole
    weekday: without start and end a restriction is not 09:00-17:00 (which left Saturday
    night and every weekday night with nobody on call); ``{start: "20:00"}`` runs to
    midnight."""
    people = directory(WEEKEND)
    assert people.on_call("weekend", utc(2026, 3, 28, 22, 0)) == ("alice",)  # Sat 23:00
    assert people.on_call("weekend", utc(2026, 3, 29, 3, 0)) == ("alice",)  # Sun 05:00
    assert people.on_call("weekend", utc(2026, 3, 30, 4, 0)) == ("bob",)  # Mon 06:00
    assert people.on_call("weekend", utc(2026, 3, 30, 17, 0)) == ("bob",)  # Mon 19:00
    assert people.on_call("weekend", utc(2026, 3, 30, 18, 0)) == ("alice",)  # Mon 20:00
    assert people.on_call("weekend", utc(2026, 3, 30, 21, 59)) == ("alice",)  # Mon 23:59
    shifts = people.shifts("weekend", utc(2026, 3, 27, 12), utc(2026, 3, 31))
    assert all(shift.who for shift in shifts)


def _only_layer(people: Directory, schedule: str, index: int) -> Schedule:
    plan = people.schedules[schedule]
    return Schedule(plan.name, plan.timezone, (plan.layers[index],))


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ('contacts:\n  a:\n    sms: "015110000001"\n', "config.yaml:3: contacts.a.sms", "E.164"),
        # Unquoted, YAML reads the number as an integer: the message says to quote it.
        (
            "contacts:\n  a:\n    sms: +4915110000001\n",
            "config.yaml:3: contacts.a.sms",
            'phone numbers must be quoted, e.g. "+4915112345678"',
        ),
        (
            "contacts:\n  a:\n    voice: 015110000001\n",
            "config.yaml:3: contacts.a.voice",
            "phone numbers must be quoted",
        ),
        (
            "contacts:\n  a:\n    email: a.example.com\n",
            "config.yaml:3: contacts.a.email",
            "address",
        ),
        (
            "contacts:\n  a:\n    email: a@example.com\n    backup: zed\n",
            "config.yaml:4: contacts.a.backup",
            "unknown contact 'zed'",
        ),
        (
            "contacts:\n  a:\n    email: a@x.org\n    backup: b\n  b:\n    email: b@x.org\n"
            "    backup: a\n",
            "config.yaml:4: contacts.a.backup",
            "circle: a -> b -> a",
        ),
        (
            "contacts:\n  a:\n    email: a@x.org\n    notify: [{channel: sms}]\n",
            "config.yaml:4: contacts.a.notify[0].channel",
            "no sms address",
        ),
        ("contacts:\n  a:\n    timezone: UTC\n", "config.yaml:2: contacts.a", "reach nobody"),
        ("contacts:\n  a:\n    pager: 123\n", "config.yaml:3: contacts.a.pager", "unknown key"),
        (
            "contacts:\n  a: {email: a@x.org}\nroles:\n  r: [a, b]\n",
            "config.yaml:4: roles.r[1]",
            "unknown contact 'b'",
        ),
        (
            "contacts:\n  a: {email: a@x.org}\nroles:\n  r: [{role: s}]\n  s: [{team: t}]\n"
            "teams:\n  t: [{role: r}]\n",
            "config.yaml:4: roles.r",
            "contain each other",
        ),
        (
            "contacts:\n  a: {email: a@x.org}\nschedules:\n  s:\n    layers:\n"
            "      - {type: custom, start: 2026-01-01, members: [a]}\n",
            "config.yaml:6: schedules.s.layers[0]",
            "needs a length",
        ),
        (
            "contacts:\n  a: {email: a@x.org}\nschedules:\n  s:\n    timezone: Berlin\n"
            "    layers: []\n",
            "config.yaml:5: schedules.s.timezone",
            "unknown time zone",
        ),
        (
            "contacts:\n  a: {email: a@x.org}\nschedules:\n  s:\n    layers:\n"
            "      - {start: 2026-01-01, handoff: 9:00, members: [a]}\n",
            "config.yaml:6: schedules.s.layers[0].handoff",
            "quoted",
        ),
        (
            "contacts:\n  a: {email: a@x.org}\nschedules:\n  s:\n    layers:\n"
            "      - {start: 2026-01-01, members: [a]}\n    overrides:\n"
            "      - {contact: a, start: 2026-12-24, end: 2026-12-27}\n",
            "config.yaml:8: schedules.s.overrides[0].start",
            "expected a time such as 2026-12-24T00:00, got the date 2026-12-24 alone",
        ),
        (
            "contacts:\n  a: {email: a@x.org}\nschedules:\n  s:\n    layers:\n"
            "      - {start: 2026-01-01, members: [a], restrict: {}}\n",
            "config.yaml:6: schedules.s.layers[0].restrict",
            "restricts nothing",
        ),
        (
            "contacts:\n  a: {email: a@x.org}\nschedules:\n  s:\n    layers:\n"
            "      - {start: 2026-01-01, members: [a]}\n    overrides:\n"
            '      - {contact: a, start: "2026-01-02T10:00", end: "2026-01-02T09:00"}\n',
            "config.yaml:8: schedules.s.overrides[0].end",
            "after start",
        ),
    ],
)
def test_config_errors_name_file_line_and_key(text: str, where: str, message: str) -> None:
    """Each mistake in the people section is reported where it stands."""
    with pytest.raises(ConfigError) as caught:
        directory(text)
    assert str(caught.value).startswith(where), str(caught.value)
    assert message in str(caught.value)


# -- rotation invariants -----------------------------------------------------------------------

zones = st.sampled_from(["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "UTC"])
lengths = st.one_of(
    st.sampled_from([(1, timedelta(days=1)), (7, timedelta(days=7)), (3, timedelta(days=3))]),
    st.integers(min_value=30, max_value=4000).map(lambda m: (None, timedelta(minutes=m))),
)


@settings(max_examples=150, deadline=None)
@given(
    zones,
    lengths,
    st.integers(min_value=0, max_value=24 * 60 - 1),
    st.integers(min_value=1, max_value=4),
    st.datetimes(min_value=datetime(2025, 1, 2), max_value=datetime(2027, 12, 1)),
    st.integers(min_value=1, max_value=30 * 24),
)
def test_single_layer_rotation_has_one_person_at_a_time_and_contiguous_shifts(
    zone: str,
    length: tuple[int | None, timedelta],
    handoff: int,
    size: int,
    start: datetime,
    hours: int,
) -> None:
    """For any rotation, exactly one member is on call, and shifts tile the window in turn."""
    members = tuple(f"m{i}" for i in range(size))
    layer = Layer("l", members, date(2025, 1, 1), timedelta(minutes=handoff), length[1], length[0])
    people = Directory({}, {}, {}, {"s": Schedule("s", ZoneInfo(zone), (layer,))})
    begin = start.replace(tzinfo=UTC)
    end = begin + timedelta(hours=hours)
    shifts = people.shifts("s", begin, end)
    assert shifts[0].start == begin
    assert shifts[-1].end == end
    for shift in shifts:
        assert len(shift.who) == 1
        assert shift.start < shift.end
        assert people.on_call("s", shift.start) == shift.who
        assert people.on_call("s", shift.end - timedelta(microseconds=1)) == shift.who
    for first, second in itertools.pairwise(shifts):
        assert first.end == second.start
        following = members[(members.index(first.who[0]) + 1) % size]
        if size > 1:
            assert second.who == (following,)
    if length[0] is not None:
        local = ZoneInfo(zone)
        for shift in shifts[1:]:
            day = shift.start.astimezone(local).date()
            naive = datetime(day.year, day.month, day.day) + timedelta(minutes=handoff)
            # Whole-day rotations hand off at the local hand-off time (or at the jump skipping it).
            assert shift.start == wall_to_utc(naive, local)

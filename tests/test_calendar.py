"""Business hours as an operator sees them: local office hours, holidays, daylight saving."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from responder.calendar import BusinessHours, parse_business_hours
from responder.yamlfile import ConfigError, load_text

BERLIN = """\
business_hours:
  timezone: Europe/Berlin
  days: [mon, tue, wed, thu, fri]
  start: "09:00"
  end: "17:00"
  holidays: ["2026-12-25", 2026-12-24]
"""


def hours(text: str) -> BusinessHours:
    return parse_business_hours(load_text(text, "config.yaml")["business_hours"])


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def test_defaults_are_weekdays_nine_to_five_utc() -> None:
    """Without a business_hours block the office is open Mon-Fri 09:00-17:00 UTC."""
    office = parse_business_hours(load_text("business_hours:\n", "c.yaml")["business_hours"])
    monday = utc(2026, 1, 5, 9, 0)
    assert office == BusinessHours()
    assert office.is_open(monday)
    assert not office.is_open(monday - timedelta(microseconds=1))
    assert office.is_open(utc(2026, 1, 5, 16, 59, 59))
    assert not office.is_open(utc(2026, 1, 5, 17, 0))
    assert not office.is_open(utc(2026, 1, 10, 12, 0))  # Saturday


def test_berlin_office_opens_at_nine_local_in_winter_and_in_summer() -> None:
    """09:00 in Berlin is 08:00 UTC in January and 07:00 UTC in July."""
    office = hours(BERLIN)
    assert not office.is_open(utc(2026, 1, 5, 7, 59))
    assert office.is_open(utc(2026, 1, 5, 8, 0))
    assert office.is_open(utc(2026, 7, 6, 7, 0))
    assert not office.is_open(utc(2026, 7, 6, 15, 0))  # 17:00 CEST


def test_holidays_are_closed_all_day() -> None:
    """Christmas Eve and Christmas Day are weekdays in 2026 but the office is shut."""
    office = hours(BERLIN)
    assert office.holidays == frozenset({date(2026, 12, 24), date(2026, 12, 25)})
    assert not office.is_open(utc(2026, 12, 24, 10, 0))
    assert not office.is_open(utc(2026, 12, 25, 10, 0))
    assert office.is_open(utc(2026, 12, 23, 10, 0))


def test_next_change_skips_weekend_and_holidays() -> None:
    """Closing Wednesday 23 December, the office next opens Monday 28 December at 09:00."""
    office = hours(BERLIN)
    closes = office.next_change(utc(2026, 12, 23, 10, 0))
    assert closes == utc(2026, 12, 23, 16, 0)
    assert office.next_change(closes) == utc(2026, 12, 28, 8, 0)


def test_next_change_across_spring_forward() -> None:
    """Friday before the clocks go forward closes 16:00 UTC; Monday opens 07:00 UTC."""
    office = hours(BERLIN)
    assert office.next_change(utc(2026, 3, 27, 12, 0)) == utc(2026, 3, 27, 16, 0)
    assert office.next_change(utc(2026, 3, 27, 16, 0)) == utc(2026, 3, 30, 7, 0)


def test_opening_time_inside_the_skipped_hour_opens_at_the_jump() -> None:
    """02:30 does not exist on 29 March 2026 in Berlin: the office opens at the jump to 03:00."""
    office = hours(
        "business_hours:\n  timezone: Europe/Berlin\n  days: [sun]\n"
        '  start: "02:30"\n  end: "04:00"\n'
    )
    jump = utc(2026, 3, 29, 1, 0)
    assert not office.is_open(jump - timedelta(microseconds=1))
    assert office.is_open(jump)
    assert office.next_change(utc(2026, 3, 28, 12, 0)) == jump
    assert office.next_change(jump) == utc(2026, 3, 29, 2, 0)  # 04:00 CEST


def test_window_inside_the_repeated_hour_opens_twice() -> None:
    """On 25 October 2026 Berlin lives 02:30-02:45 twice, once in CEST and once in CET."""
    office = hours(
        "business_hours:\n  timezone: Europe/Berlin\n  days: [sun]\n"
        '  start: "02:30"\n  end: "02:45"\n'
    )
    changes = [utc(2026, 10, 24, 12, 0)]
    for _ in range(4):
        changes.append(office.next_change(changes[-1]))
    assert changes[1:] == [
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 25, 0, 45),
        utc(2026, 10, 25, 1, 30),
        utc(2026, 10, 25, 1, 45),
    ]


def test_end_of_day_may_be_written_as_24_00() -> None:
    """A 24-hour weekend desk is open until local midnight."""
    office = hours('business_hours:\n  days: [sat, sunday]\n  start: "00:00"\n  end: "24:00"\n')
    assert office.is_open(utc(2026, 1, 10, 23, 59, 59))
    assert office.next_change(utc(2026, 1, 10, 12, 0)) == utc(2026, 1, 12, 0, 0)


def test_naive_times_are_refused() -> None:
    """A naive datetime is a caller bug; guessing its zone would page at the wrong hour."""
    with pytest.raises(ValueError, match="timezone-aware"):
        BusinessHours().is_open(datetime(2026, 1, 5, 9, 0))


@pytest.mark.parametrize(
    ("body", "where", "message"),
    [
        (
            "  timezone: Mars/Olympus\n",
            "config.yaml:2: business_hours.timezone",
            "unknown time zone",
        ),
        ('  start: "9am"\n', "config.yaml:2: business_hours.start", "time of day"),
        ("  end: 17:00\n", "config.yaml:2: business_hours.end", "must be quoted"),
        ('  start: "17:00"\n  end: "09:00"\n', "config.yaml:3: business_hours.end", "after start"),
        ('  start: "25:00"\n', "config.yaml:2: business_hours.start", "time of day"),
        ("  days: [mon, funday]\n", "config.yaml:2: business_hours.days[1]", "weekday"),
        ("  days: [mon, mon]\n", "config.yaml:2: business_hours.days[1]", "twice"),
        ("  days: []\n", "config.yaml:2: business_hours.days", "at least one"),
        ('  holidays: ["2026-02-30"]\n', "config.yaml:2: business_hours.holidays[0]", "date"),
        (
            "  holidays: [2026-12-25, 2026-12-25]\n",
            "config.yaml:2: business_hours.holidays[1]",
            "twice",
        ),
        ("  open: always\n", "config.yaml:2: business_hours.open", "unknown key"),
    ],
)
def test_config_errors_name_file_line_and_key(body: str, where: str, message: str) -> None:
    """Each mistake is reported where it stands in the file."""
    with pytest.raises(ConfigError) as caught:
        hours("business_hours:\n" + body)
    assert str(caught.value).startswith(where)
    assert message in str(caught.value)


instants = st.datetimes(
    min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC)
)
zones = st.sampled_from(["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "UTC"])
minutes = st.integers(min_value=0, max_value=24 * 60)


@settings(max_examples=200, deadline=None)
@given(instants, zones, minutes, minutes, st.sets(st.integers(0, 6), min_size=1))
def test_next_change_is_the_first_flip(
    at: datetime, zone: str, a: int, b: int, days: set[int]
) -> None:
    """The answer is constant from ``at`` until next_change, and differs there."""
    start, end = sorted((a, b))
    if start == end or (len(days) == 7 and (start, end) == (0, 24 * 60)):
        return  # no window, or open around the clock: parse_business_hours refuses both
    office = BusinessHours(
        ZoneInfo(zone), frozenset(days), timedelta(minutes=start), timedelta(minutes=end)
    )
    change = office.next_change(at)
    assert change > at
    state = office.is_open(at)
    assert office.is_open(change) != state
    assert office.is_open(change - timedelta(microseconds=1)) == state
    step = (change - at) / 7
    for i in range(1, 7):
        assert office.is_open(at + step * i) == state


def test_a_window_the_spring_forward_gap_swallows_opens_a_week_later() -> None:
    """02:00-02:01 on Sundays in Berlin does not exist on 30 March 2025: the next opening is
    6 April (found by hypothesis; it raised "business hours never change")."""
    office = BusinessHours(
        ZoneInfo("Europe/Berlin"), frozenset({6}), timedelta(minutes=120), timedelta(minutes=121)
    )
    change = office.next_change(datetime(2025, 3, 24, tzinfo=UTC))
    assert change == datetime(2025, 4, 6, 0, 0, tzinfo=UTC)  # 02:00 CEST

"""Business hours: when the office is open, in the office's own time zone, holidays excluded.

Escalation conditions (``business_hours: true``) and response targets ask one question of this
module, ``BusinessHours.is_open(when)``, with an aware UTC instant; the answer is decided on the
local wall clock, so a 09:00-17:00 Berlin office stays 09:00-17:00 across daylight-saving
changes. ``next_change`` gives the next instant the answer flips, for schedulers that want to
wake exactly then. The small parsers for time zones, times of day and dates live here too, so
that schedules and policies read them the same way. Everything is pure: no wall clock, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from responder.yamlfile import Node

WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_TIME_OF_DAY = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")
_MIDNIGHT = timedelta(0)
_FULL_DAY = timedelta(days=1)
_TICK = timedelta(microseconds=1)


def parse_timezone(node: Node) -> ZoneInfo:
    """An IANA zone name such as ``Europe/Berlin``; ``UTC`` is a zone too."""
    name = node.as_str()
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise node.error(
            f"unknown time zone {name!r}; expected an IANA name such as Europe/Berlin or UTC"
        ) from None


def _time_offset(node: Node, *, allow_24: bool) -> timedelta:
    raw = node.value
    if isinstance(raw, int) and not isinstance(raw, bool):
        # YAML 1.1 reads an unquoted 17:00 as the base-60 number 1020; the digits are lost.
        raise node.error('times of day must be quoted, e.g. "17:00" (YAML reads 17:00 as a number)')
    text = node.as_str().strip()
    if allow_24 and text == "24:00":
        return _FULL_DAY
    match = _TIME_OF_DAY.fullmatch(text)
    if match is None:
        raise node.error(f'expected a time of day such as "09:00", got {text!r}')
    return timedelta(hours=int(match.group(1)), minutes=int(match.group(2)))


def parse_time_of_day(node: Node) -> time:
    """A quoted ``"HH:MM"`` (24-hour clock)."""
    offset = _time_offset(node, allow_24=False)
    return time(offset.seconds // 3600, offset.seconds % 3600 // 60)


def parse_date(node: Node) -> date:
    """A calendar date, ``2026-12-25`` (YAML may already have read it as a date)."""
    raw = node.value
    if isinstance(raw, datetime):
        raise node.error(f"expected a date such as 2026-12-25, got the timestamp {raw}")
    if isinstance(raw, date):
        return raw
    text = node.as_str().strip()
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise node.error(f"expected a date such as 2026-12-25, got {text!r}") from None


def parse_weekday(node: Node) -> int:
    """``mon`` .. ``sun`` or ``monday`` .. ``sunday`` (any case) to 0..6, Monday first."""
    text = node.as_str().strip().lower()
    for index, short in enumerate(WEEKDAYS):
        if text in (short, _FULL_NAMES[index]):
            return index
    raise node.error(f"expected a weekday ({', '.join(WEEKDAYS)}), got {node.as_str()!r}")


_FULL_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def require_aware(when: datetime, what: str = "time") -> None:
    """Naive datetimes are a bug in the caller: refuse them rather than guess a zone."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {when!r}")


@dataclass(frozen=True, slots=True)
class BusinessHours:
    """Open on ``days`` from ``start`` to ``end`` local time in ``timezone``, except holidays.

    ``start`` and ``end`` are offsets from local midnight (``end`` may be a full day, written
    ``"24:00"``), so a window is always within one local day: overnight windows are refused.
    """

    timezone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    days: frozenset[int] = frozenset(range(5))
    start: timedelta = timedelta(hours=9)
    end: timedelta = timedelta(hours=17)
    holidays: frozenset[date] = frozenset()

    def is_open(self, when: datetime) -> bool:
        """Whether ``when`` (any aware datetime) falls within business hours."""
        require_aware(when)
        local = when.astimezone(self.timezone)
        if local.weekday() not in self.days or local.date() in self.holidays:
            return False
        wall = timedelta(
            hours=local.hour,
            minutes=local.minute,
            seconds=local.second,
            microseconds=local.microsecond,
        )
        return self.start <= wall < self.end

    def next_change(self, after: datetime) -> datetime:
        """The first instant later than ``after`` at which ``is_open`` gives the other answer.

        Always exists: at least one weekday is open and holidays are finite.
        """
        require_aware(after)
        state = self.is_open(after)
        previous = after
        for candidate in self._candidates(after):
            if self.is_open(candidate) == state:
                previous = candidate
                continue
            if self.is_open(candidate - _TICK) != state:
                # The wall-clock boundary does not exist that day (it fell into a
                # spring-forward gap): the answer flipped at the jump, somewhere before.
                return self._first_flip(previous, candidate, state)
            return candidate
        raise AssertionError("business hours never change; parse_business_hours forbids this")

    def _candidates(self, after: datetime) -> list[datetime]:
        """Instants at which local wall time is midnight, start or end, in order, after ``after``.

        Both folds are taken, so the repeated hour of a fall-back day counts twice.
        """
        first = after.astimezone(self.timezone).date() - timedelta(days=1)
        # Every holiday can push the next opening by a week (a single open weekday: each
        # holiday on it skips to the next), and so can a spring-forward gap that swallows a
        # short window (02:00-02:30 on Sundays only, in Berlin on the last Sunday of March);
        # a week more, and a day either side, finds one.
        ahead = sum(1 for day in self.holidays if day >= first)
        span = (ahead + 2) * 7 + 2
        found: set[datetime] = set()
        for offset in range(span):
            day = first + timedelta(days=offset)
            midnight = datetime(day.year, day.month, day.day)
            for wall in (_MIDNIGHT, self.start, self.end):
                if wall == _FULL_DAY:
                    continue  # the next day's midnight
                naive = midnight + wall
                for fold in (0, 1):
                    local = naive.replace(tzinfo=self.timezone, fold=fold)
                    instant = local.astimezone(UTC)
                    if instant > after:
                        found.add(instant)
        return sorted(found)

    def _first_flip(self, low: datetime, high: datetime, state: bool) -> datetime:
        """Bisect (low, high]: ``low`` has ``state``, ``high`` does not; one flip lies between."""
        while high - low > _TICK:
            middle = low + (high - low) / 2
            if self.is_open(middle) == state:
                low = middle
            else:
                high = middle
        return high


DAY = timedelta(days=1)


def parse_business_hours(node: Node) -> BusinessHours:
    """Read a ``business_hours:`` mapping; an absent or empty one means Mon-Fri 09-17 UTC."""
    hours = parse_window(node, BusinessHours())
    if (
        not node.is_null()
        and len(hours.days) == 7
        and hours.start == timedelta(0)
        and hours.end == DAY
        and not hours.holidays
    ):
        raise node.error(
            "open around the clock on every day: that is no window at all; leave it out"
        )
    return hours


def parse_window(node: Node, defaults: BusinessHours) -> BusinessHours:
    """Read a mapping of ``timezone``, ``days``, ``start``, ``end`` and ``holidays``; a key
    left out (or the whole mapping) takes its value from ``defaults``."""
    if node.is_null():
        return defaults
    node.keys_allowed("timezone", "days", "start", "end", "holidays")
    zone_node = node.get("timezone")
    timezone = defaults.timezone if zone_node is None else parse_timezone(zone_node)

    days = defaults.days
    days_node = node.get("days")
    if days_node is not None:
        chosen: set[int] = set()
        for item in days_node.as_list():
            day = parse_weekday(item)
            if day in chosen:
                raise item.error(f"{WEEKDAYS[day]} is listed twice")
            chosen.add(day)
        if not chosen:
            raise days_node.error("at least one weekday must be open")
        days = frozenset(chosen)

    start_node = node.get("start")
    end_node = node.get("end")
    start = defaults.start if start_node is None else _time_offset(start_node, allow_24=False)
    end = defaults.end if end_node is None else _time_offset(end_node, allow_24=True)
    if end <= start:
        culprit = end_node or start_node or node
        raise culprit.error(
            f"end ({_show(end)}) must be after start ({_show(start)}); "
            "overnight windows are not supported"
        )

    holidays: set[date] = set()
    holidays_node = node.get("holidays")
    if holidays_node is not None:
        for item in holidays_node.as_list():
            day_off = parse_date(item)
            if day_off in holidays:
                raise item.error(f"holiday {day_off.isoformat()} is listed twice")
            holidays.add(day_off)
    return BusinessHours(timezone, days, start, end, frozenset(holidays))


def _show(offset: timedelta) -> str:
    minutes = int(offset.total_seconds()) // 60
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def wall_to_utc(naive: datetime, zone: ZoneInfo) -> datetime:
    """The first instant at which the wall clock in ``zone`` reads ``naive`` or later.

    An ambiguous wall time (the repeated hour of a fall-back day) gives its first occurrence;
    a wall time that does not exist (skipped by a spring-forward jump) gives the jump itself,
    which is when a clock on the wall first shows a time at or past it.
    """
    first = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == naive:
        return first
    # In a gap fold=1 reads the wall time with the offset after the jump: an instant before it.
    low = naive.replace(tzinfo=zone, fold=1).astimezone(UTC)
    high = first
    while high - low > _TICK:
        middle = low + (high - low) / 2
        if middle.astimezone(zone).replace(tzinfo=None) >= naive:
            high = middle
        else:
            low = middle
    return high

"""What would happen: the escalation an incident would go through, and who is on call now.

``escalation_plan`` replays the policy's own decision (``due_steps``/``next_due`` from
``responder.policy``) for an incident that nobody acknowledges or resolves, so that
``responder explain`` shows exactly what the engine would do rather than a second reading of
the rules. Levels whose ``when`` fails are listed as skipped, with the reason. ``render_plan``
and ``render_oncall`` turn the answers into plain aligned text for the CLI. Everything is pure:
every instant is an argument, nothing reads a clock or a file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta, tzinfo

from responder.calendar import require_aware
from responder.classify import format_duration
from responder.directory import Channel, Directory, Shift, Target, TargetKind
from responder.model import Severity
from responder.policy import (
    EscalationClock,
    IncidentView,
    Level,
    Policy,
    StepKind,
    due_steps,
    next_due,
    pages_for,
)

__all__ = [
    "PlannedPage",
    "PlannedStep",
    "escalation_plan",
    "render_oncall",
    "render_plan",
    "skip_reason",
]


@dataclass(frozen=True, slots=True)
class PlannedPage:
    """One page the step would send: ``contact`` on ``channel`` at ``at`` (due + delay)."""

    contact: str
    channel: Channel
    address: str
    at: datetime
    delay: timedelta
    backup: str | None
    via: Target
    instead_of: str | None = None


@dataclass(frozen=True, slots=True)
class PlannedStep:
    """One step of the simulated escalation; ``skipped`` says why a level would not page."""

    id: str
    kind: StepKind
    due: datetime
    offset: timedelta  # from the trigger
    level: int | None = None
    repeat: int = 0
    clock: EscalationClock | None = None  # None for status updates
    pages: tuple[PlannedPage, ...] = ()
    skipped: str | None = None

    @property
    def even_when_acknowledged(self) -> bool:
        """Duration levels and status updates go on after an acknowledgement."""
        return self.kind is StepKind.STATUS_UPDATE or self.clock is EscalationClock.DURATION


def escalation_plan(
    policy: Policy,
    directory: Directory,
    severity: Severity,
    category: str,
    triggered_at: datetime,
    *,
    horizon: timedelta = timedelta(hours=24),
    max_steps: int = 50,
) -> list[PlannedStep]:
    """The steps an incident triggered at ``triggered_at`` goes through if nobody answers.

    Stops at ``triggered_at + horizon`` and after ``max_steps`` steps (skipped ones count), so a
    policy with status updates, which go on for as long as the incident is open, still ends.
    """
    require_aware(triggered_at, "triggered_at")
    end = triggered_at + horizon
    levels = {level.number: level for level in policy.levels}
    incident = IncidentView(triggered_at=triggered_at, severity=severity, category=category)
    planned: list[PlannedStep] = []
    now: datetime | None = triggered_at
    # Driven exactly like the engine: wake at next_due, do what is due, record it as done.
    while now is not None and now <= end and len(planned) < max_steps:
        steps = due_steps(policy, incident, now)
        for step in steps:
            level = None if step.level is None else levels[step.level]
            pages = tuple(
                PlannedPage(
                    contact=page.contact,
                    channel=page.channel,
                    address=page.address,
                    at=step.due + page.delay,
                    delay=page.delay,
                    backup=page.backup,
                    via=page.via,
                    instead_of=page.instead_of,
                )
                for page in pages_for(step, policy, directory, step.due)
            )
            planned.append(
                PlannedStep(
                    id=step.id,
                    kind=step.kind,
                    due=step.due,
                    offset=step.due - triggered_at,
                    level=step.level,
                    repeat=step.repeat,
                    clock=None if level is None else level.clock,
                    pages=pages,
                )
            )
        incident = replace(incident, done=incident.done | {s.id for s in steps})
        now = next_due(policy, incident, now)

    planned.extend(_skipped(policy, severity, category, triggered_at, end))
    planned.sort(key=lambda s: (s.due, s.id))
    return planned[:max_steps]


def _skipped(
    policy: Policy, severity: Severity, category: str, start: datetime, end: datetime
) -> list[PlannedStep]:
    """Levels whose condition fails at their due time; the policy drops them silently.

    The step ids and offsets follow docs/escalation.md (``L3``, ``L3.r1``, r * cycle + after).
    """
    candidates: list[tuple[str, Level, int, timedelta]] = []
    for level in policy.levels:
        if level.clock is EscalationClock.DURATION:
            candidates.append((f"L{level.number}", level, 0, level.after))
            continue
        for repeat in range(policy.repeat + 1):
            step_id = f"L{level.number}" if repeat == 0 else f"L{level.number}.r{repeat}"
            candidates.append((step_id, level, repeat, policy.cycle * repeat + level.after))
    skipped: list[PlannedStep] = []
    for step_id, level, repeat, offset in candidates:
        due = start + offset
        if due > end:
            continue
        reason = skip_reason(level, policy, severity, category, due)
        if reason is not None:
            skipped.append(
                PlannedStep(
                    id=step_id,
                    kind=StepKind.LEVEL,
                    due=due,
                    offset=offset,
                    level=level.number,
                    repeat=repeat,
                    clock=level.clock,
                    skipped=reason,
                )
            )
    return skipped


def skip_reason(
    level: Level, policy: Policy, severity: Severity, category: str, at: datetime
) -> str | None:
    """Why ``level`` would not page at ``at`` (e.g. "only for category security"), or None."""
    when = level.when
    if when.holds(severity, category, at, policy.business_hours):
        return None
    reasons: list[str] = []
    if when.categories is not None and category not in when.categories:
        reasons.append("only for category " + " or ".join(sorted(when.categories)))
    if when.severities is not None and severity not in when.severities:
        reasons.append("only for severity " + " or ".join(sorted(when.severities)))
    if when.business_hours is not None and policy.business_hours.is_open(at) != when.business_hours:
        reasons.append(
            "only in business hours" if when.business_hours else "only outside business hours"
        )
    return "; ".join(reasons)


# -- rendering ---------------------------------------------------------------------------------


def _offset(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    sign = "-" if seconds < 0 else "+"
    return sign + format_duration(abs(seconds))


def _clock(moment: datetime, zone: tzinfo) -> str:
    return moment.astimezone(zone).strftime("%H:%M %Z")


def _day(moment: datetime, zone: tzinfo) -> date:
    return moment.astimezone(zone).date()


def _label(step: PlannedStep) -> str:
    if step.kind is StepKind.STATUS_UPDATE:
        return f"{step.id} (status update, while open)"
    if step.clock is EscalationClock.DURATION:
        return f"{step.id} (duration: goes even when acknowledged)"
    return f"{step.id} (unacknowledged)"


def _page_text(page: PlannedPage) -> list[str]:
    extra: list[str] = []
    if page.instead_of is not None:
        extra.append(f"instead of {page.instead_of}")
    if page.backup is not None:
        extra.append(f"backup: {page.backup}")
    return [
        page.contact,
        page.channel.value,
        page.address,
        f"({', '.join(extra)})" if extra else "",
    ]


def _table(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Columns padded to their widest cell, two spaces apart.

    A row's last cell is not padded and does not widen its column, so a row may end early with
    one long note (``skipped: ...``) without pushing the other rows' columns apart.
    """
    count = max((len(row) for row in rows), default=0)
    widths = [
        max((len(row[i]) for row in rows if len(row) > i + 1), default=0) for i in range(count)
    ]
    lines: list[str] = []
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + list(row[-1:])
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


def render_plan(steps: Sequence[PlannedStep], *, zone: tzinfo | None = None) -> str:
    """The plan as aligned lines, one per page; clock times in ``zone`` (default UTC).

    A delayed page (a contact's own ``notify`` rule) shows its own time. A date line starts
    each new local day so that a 24-hour plan stays readable.
    """
    if not steps:
        return "nothing would be paged\n"
    where = zone or UTC
    rows: list[list[str]] = []
    days: list[date] = []  # the local day of each row, for the date lines
    for step in steps:
        head = [_offset(step.offset), _clock(step.due, where), _label(step)]
        if step.skipped is not None:
            rows.append([*head, f"skipped: {step.skipped}"])
            days.append(_day(step.due, where))
        elif not step.pages:
            rows.append([*head, "nobody to page (no one on call)"])
            days.append(_day(step.due, where))
        for page in step.pages:
            if page.delay:
                when = [_offset(step.offset + page.delay), _clock(page.at, where)]
            else:
                when = head[:2]
            first = page is step.pages[0]
            rows.append([*when, head[2] if first else "", *_page_text(page)])
            days.append(_day(page.at, where))
    lines: list[str] = []
    previous: date | None = None
    # One alignment for the whole plan; a date line whenever the local day changes.
    for day, line in zip(days, _table(rows), strict=True):
        if day != previous:
            lines.append(f"{day.isoformat()} ({day.strftime('%a')})")
            previous = day
        lines.append(line)
    return "".join(line + "\n" for line in lines)


def _who(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "nobody"


def _current_and_next(directory: Directory, schedule: str, at: datetime) -> list[Shift]:
    """The running shift and the one after, looking ever further ahead (rotations vary)."""
    window = timedelta(days=1)
    shifts: list[Shift] = []
    # 1, 4, 16, 64, 256 days: a one-member rotation never changes, so the search must end.
    for _ in range(5):
        shifts = directory.shifts(schedule, at, at + window)
        if len(shifts) >= 2:
            return shifts[:2]
        window *= 4
    return shifts[:1]


def _when(moment: datetime, zone: tzinfo) -> str:
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z (%a)")


def render_oncall(directory: Directory, at: datetime, *, zone: tzinfo | None = None) -> str:
    """Who is on call at ``at`` in every schedule, until when, who is next; roles and teams."""
    require_aware(at)
    where = zone or UTC
    lines = [f"On call at {_when(at, where)}", ""]
    if directory.schedules:
        lines.append("Schedules")
        rows: list[list[str]] = []
        for name in sorted(directory.schedules):
            shifts = _current_and_next(directory, name, at)
            now_on = _who(directory.on_call(name, at))
            if len(shifts) >= 2:
                rows.append(
                    [
                        name,
                        now_on,
                        f"until {_when(shifts[0].end, where)}",
                        f"next: {_who(shifts[1].who)}",
                    ]
                )
            else:
                end = shifts[0].end if shifts else at
                rows.append([name, now_on, f"no change before {_when(end, where)}", ""])
        lines.extend(_table(rows))
    for title, kind, group in (
        ("Roles", TargetKind.ROLE, directory.roles),
        ("Teams", TargetKind.TEAM, directory.teams),
    ):
        if not group:
            continue
        rows = []
        for name in sorted(group):
            names = directory.expand(Target(kind, name), at)
            rows.append([name, _who([_reached(directory, n) for n in names])])
        lines.extend(["", title, *_table(rows)])
    if not (directory.schedules or directory.roles or directory.teams):
        lines.append("No schedules, roles or teams are configured (see docs/escalation.md).")
    return "".join(line + "\n" for line in lines)


def _reached(directory: Directory, name: str) -> str:
    """A contact without channels is paged through its backup chain: show who gets it."""
    reached, _ = directory.reachable(name)
    return name if reached == name else f"{name} (via {reached})"

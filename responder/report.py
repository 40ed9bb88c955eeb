"""Markdown for the post-incident review and the period review, from the API's JSON documents.

Reports take the same plain documents the JSON API returns (camelCase keys, ISO 8601 times with
an offset), so the CLI can render what the daemon sends and the daemon can render what it
stores. ``incident_figures`` computes one incident's key figures (time to acknowledge and to
resolve, response targets met or breached); ``incident_report`` and ``period_report`` turn them
into Markdown. Everything is pure: the current instant is an argument. Labels, annotations,
titles and timeline details come from alerts, that is from whoever can make an alert fire, so
every such text goes through ``md_text`` and can neither break a table nor inject Markdown or
HTML.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from responder.calendar import require_aware
from responder.classify import format_duration
from responder.model import DRILL_CATEGORY, STALE_SWEEP, Severity

__all__ = [
    "TRIGGER_EVENTS",
    "IncidentFigures",
    "TargetCheck",
    "TargetStatus",
    "Trigger",
    "drill_results",
    "earlier_triggers",
    "incident_figures",
    "incident_report",
    "md_text",
    "period_report",
    "trigger_document",
    "trigger_history",
]

# -- escaping ------------------------------------------------------------------------------------

# Markdown punctuation that can start inline markup (code, emphasis, links, strikethrough,
# math) or end a table cell. The block-level ones (#, -, >, 1.) only act at the start of a
# line, and every value here follows fixed text, except that `#` also ends a heading.
_MD_ESCAPE = frozenset("\\`*_[]|~$#")
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")
# Bidirectional overrides can make a cell read differently from what it holds.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def md_text(value: object, limit: int | None = 300) -> str:
    """``value`` as inert Markdown inline text on one line, at most ``limit`` characters.

    HTML-special characters become entities and Markdown punctuation is backslash-escaped, so
    ``<script>`` shows as text; line breaks show as ``⏎`` and other control characters as
    ``\\xNN``, so a value stays within its table cell or list item.
    """
    text = value if isinstance(value, str) else _compact(value)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    out: list[str] = []
    for char in text.replace("\r\n", "\n"):
        if char in _LINE_BREAKS:
            out.append(" ⏎ ")
        elif char == "\t":
            out.append(" ")
        elif char in _HTML:
            out.append(_HTML[char])
        elif char in _MD_ESCAPE:
            out.append("\\" + char)
        elif char < " " or char == "\x7f" or "\x80" <= char < "\xa0":
            out.append(f"\\x{ord(char):02x}")
        elif char in _BIDI:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return "".join(out)


def _compact(value: object) -> str:
    """One value as short text: strings as they are, everything else as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _detail(detail: object) -> str:
    """A timeline event's detail as ``key=value; ...``, every piece escaped and bounded."""
    if detail is None:
        return ""
    if not isinstance(detail, Mapping):
        return md_text(detail)
    return "; ".join(f"{md_text(k, 60)}={md_text(v, 200)}" for k, v in detail.items())


def _row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cell or " " for cell in cells) + " |"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    return [_row(header), _row("---" for _ in header), *(_row(r) for r in rows)]


# -- reading documents -----------------------------------------------------------------------------


def _time(doc: Mapping[str, Any], key: str) -> datetime | None:
    """An ISO 8601 time with an offset (or None); a naive time is refused, not guessed."""
    raw = doc.get(key)
    if raw is None:
        return None
    if isinstance(raw, datetime):
        moment = raw
    elif isinstance(raw, str):
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError:
            raise ValueError(f"{key}: expected an ISO 8601 time, got {raw!r}") from None
    else:
        raise ValueError(f"{key}: expected an ISO 8601 time, got {raw!r}")
    require_aware(moment, key)
    return moment.astimezone(UTC)


def _text(doc: Mapping[str, Any], key: str) -> str | None:
    raw = doc.get(key)
    return None if raw is None else str(raw)


def _seconds(doc: Mapping[str, Any], key: str) -> int | None:
    raw = doc.get(key)
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ValueError(f"{key}: expected a number of seconds, got {raw!r}")
    return int(raw)


# -- key figures -----------------------------------------------------------------------------------


class TargetStatus(StrEnum):
    MET = "met"
    BREACHED = "breached"
    PENDING = "pending"  # still open and the deadline has not passed


@dataclass(frozen=True, slots=True)
class TargetCheck:
    """One response target: its length, the verdict, and the margin (to spare, over, or left)."""

    target: timedelta
    status: TargetStatus
    margin: timedelta

    def __str__(self) -> str:
        target = f"target {_span(self.target)}"
        match self.status:
            case TargetStatus.MET:
                return f"{target}: met, {_span(self.margin)} to spare"
            case TargetStatus.BREACHED:
                return f"{target}: **breached** by {_span(self.margin)}"
            case TargetStatus.PENDING:
                return f"{target}: {_span(self.margin)} left"


@dataclass(frozen=True, slots=True)
class IncidentFigures:
    """What the review measures about one incident, as of ``now``.

    Time to acknowledge and time to resolve run from the incident's start (``startedAt``: its
    trigger, through every episode that followed; a re-fire after a resolve is a new
    trigger), as the resolve target, the metrics and the recovery notice count.
    """

    opened: datetime
    respond_from: datetime
    acknowledged: datetime | None
    resolved: datetime | None
    now: datetime
    respond: TargetCheck | None
    resolve: TargetCheck | None
    resolve_from: datetime | None = None  # None: ``opened``
    # Resolved because its last alerts went stale: nobody saw it end (no time to resolve in
    # MTTR, as in the metric).
    ended_unseen: bool = False

    @property
    def time_to_acknowledge(self) -> timedelta | None:
        return None if self.acknowledged is None else self.acknowledged - self.respond_from

    @property
    def time_to_resolve(self) -> timedelta | None:
        return None if self.resolved is None else self.resolved - (self.resolve_from or self.opened)

    @property
    def open_for(self) -> timedelta:
        """How long it has been open since its start, until resolved or ``now``."""
        return (self.resolved or self.now) - (self.resolve_from or self.opened)


def _check(
    target_s: int | None, start: datetime, done: datetime | None, now: datetime
) -> TargetCheck | None:
    if target_s is None:
        return None
    target = timedelta(seconds=target_s)
    deadline = start + target
    if done is not None:
        if done <= deadline:
            return TargetCheck(target, TargetStatus.MET, deadline - done)
        return TargetCheck(target, TargetStatus.BREACHED, done - deadline)
    if now > deadline:
        return TargetCheck(target, TargetStatus.BREACHED, now - deadline)
    return TargetCheck(target, TargetStatus.PENDING, deadline - now)


def incident_figures(doc: Mapping[str, Any], *, now: datetime) -> IncidentFigures:
    """Key figures of one incident document; open incidents are judged at ``now``."""
    require_aware(now, "now")
    now = now.astimezone(UTC)
    opened = _time(doc, "openedAt") or _time(doc, "triggeredAt")
    if opened is None:
        raise ValueError("the incident document has neither openedAt nor triggeredAt")
    # Response targets count from the trigger, not from a later episode (an unacknowledge,
    # a reload): startedAt, in documents written since it was added.
    triggered = _time(doc, "startedAt") or _time(doc, "triggeredAt")
    # The first acknowledgement since the trigger (a snooze or an unacknowledge clears
    # acknowledgedAt, not the answer given); documents of older releases have only the last.
    acknowledged = _time(doc, "firstAcknowledgedAt") or _time(doc, "acknowledgedAt")
    resolved = _time(doc, "resolvedAt")
    respond_from = opened
    if triggered is not None and (acknowledged is None or triggered <= acknowledged):
        respond_from = triggered
    target = doc.get("target")
    respond_s = resolve_s = None
    if isinstance(target, Mapping):
        respond_s = _seconds(target, "respondSeconds")
        resolve_s = _seconds(target, "resolveSeconds")
    # An incident resolved before anyone acknowledged it was answered in time if it was
    # resolved in time; one left burning unacknowledged past the target was not.
    answered = acknowledged if acknowledged is not None else resolved
    return IncidentFigures(
        opened=opened,
        respond_from=respond_from,
        acknowledged=acknowledged,
        resolved=resolved,
        now=now,
        respond=_check(respond_s, respond_from, answered, now),
        resolve=_check(resolve_s, triggered or opened, resolved, now),
        resolve_from=triggered or opened,
        ended_unseen=resolved is not None and _text(doc, "resolvedBy") == STALE_SWEEP,
    )


# -- triggers -------------------------------------------------------------------------------------

# The timeline entries that start, answer, end or judge a trigger.
TRIGGER_EVENTS = frozenset(
    {"triggered", "retriggered", "acknowledged", "severity_raised", "target_breached", "resolved"}
)


@dataclass(frozen=True, slots=True)
class Trigger:
    """One trigger of an incident before its current one: an incident that resolved and
    fired again (a re-fire) has had several, and the metrics observed each of them.
    ``severity`` is the one it ended with (a raise during it included)."""

    start: datetime
    severity: str | None
    acknowledged: datetime | None
    acknowledged_by: str | None
    acknowledged_via: str | None
    resolved: datetime | None
    resolved_by: str | None
    resolved_via: str | None
    breached: tuple[str, ...]

    @property
    def ended_unseen(self) -> bool:
        """Resolved because its last alerts went stale: no time to resolve, as in the metric."""
        return self.resolved is not None and self.resolved_by == STALE_SWEEP


def trigger_history(events: Sequence[Mapping[str, Any]], current: datetime) -> list[Trigger]:
    """The triggers before the one that started at ``current``, read from the timeline (event
    documents; at one instant, in the engine's order): each runs from its ``triggered`` or
    ``retriggered`` entry to the next one; its first acknowledgement, its resolve and the
    targets the engine recorded as breached are the first such entries in that span, as the
    metrics counted them. Its severity is its opening's, raised by any raise during it."""
    timed = sorted(
        ((at, e) for e in events if (at := _time(e, "at")) is not None), key=lambda item: item[0]
    )
    starts = [
        (at, e) for at, e in timed if e.get("kind") in ("triggered", "retriggered") and at < current
    ]
    triggers: list[Trigger] = []
    for number, (start, opening) in enumerate(starts, 1):
        end = starts[number][0] if number < len(starts) else current
        window = [(at, e) for at, e in timed if start <= at < end]
        acked = next((e for _, e in window if e.get("kind") == "acknowledged"), None)
        resolved = next((e for _, e in window if e.get("kind") == "resolved"), None)
        severity = _detail_text(opening, "severity")
        for _, event in window:
            if event.get("kind") == "severity_raised":
                severity = _detail_text(event, "to") or severity
        breached = {
            target
            for _, e in window
            if e.get("kind") == "target_breached" and (target := _detail_text(e, "target"))
        }
        triggers.append(
            Trigger(
                start=start,
                severity=severity,
                acknowledged=None if acked is None else _time(acked, "at"),
                acknowledged_by=None if acked is None else _text(acked, "actor"),
                acknowledged_via=None if acked is None else _text(acked, "via"),
                resolved=None if resolved is None else _time(resolved, "at"),
                resolved_by=None if resolved is None else _text(resolved, "actor"),
                resolved_via=None if resolved is None else _text(resolved, "via"),
                breached=tuple(sorted(breached)),
            )
        )
    return triggers


def _detail_text(event: Mapping[str, Any], key: str) -> str | None:
    detail = event.get("detail")
    value = detail.get(key) if isinstance(detail, Mapping) else None
    return value if isinstance(value, str) and value else None


def trigger_document(trigger: Trigger) -> dict[str, Any]:
    """A trigger as the API's ``earlierTriggers`` lists it."""

    def iso(moment: datetime | None) -> str | None:  # as the API writes times
        return None if moment is None else moment.isoformat().replace("+00:00", "Z")

    return {
        "startedAt": iso(trigger.start),
        "severity": trigger.severity,
        "firstAcknowledgedAt": iso(trigger.acknowledged),
        "firstAcknowledgedBy": trigger.acknowledged_by,
        "firstAcknowledgedVia": trigger.acknowledged_via,
        "resolvedAt": iso(trigger.resolved),
        "resolvedBy": trigger.resolved_by,
        "resolvedVia": trigger.resolved_via,
        "breached": list(trigger.breached),
    }


def earlier_triggers(doc: Mapping[str, Any], current: datetime | None) -> list[Trigger]:
    """The incident's triggers before its current one (which started at ``current``): the
    document's ``earlierTriggers`` (the API's), else read from its ``timeline``."""
    if current is None:
        return []
    listed = doc.get("earlierTriggers")
    if listed is None:
        return trigger_history(_mappings(doc.get("timeline")), current)
    triggers = []
    for item in _mappings(listed):
        start = _time(item, "startedAt")
        if start is None or start >= current:
            continue
        breached = item.get("breached")
        triggers.append(
            Trigger(
                start=start,
                severity=_text(item, "severity"),
                acknowledged=_time(item, "firstAcknowledgedAt"),
                acknowledged_by=_text(item, "firstAcknowledgedBy"),
                acknowledged_via=_text(item, "firstAcknowledgedVia"),
                resolved=_time(item, "resolvedAt"),
                resolved_by=_text(item, "resolvedBy"),
                resolved_via=_text(item, "resolvedVia"),
                breached=tuple(
                    sorted(str(t) for t in breached if isinstance(t, str))
                    if isinstance(breached, list)
                    else ()
                ),
            )
        )
    return sorted(triggers, key=lambda t: t.start)


# -- formatting ------------------------------------------------------------------------------------


def _span(span: timedelta) -> str:
    seconds = round(span.total_seconds())
    return ("-" if seconds < 0 else "") + format_duration(abs(seconds))


def _signed(span: timedelta) -> str:
    seconds = round(span.total_seconds())
    return ("-" if seconds < 0 else "+") + format_duration(abs(seconds))


def _utc(moment: datetime | None) -> str:
    return "—" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _policy_text(doc: Mapping[str, Any]) -> str:
    """The rule's policy; or the one escalation used (``incidents.default_policy``)."""
    named = _text(doc, "policy")
    if named:
        return md_text(named)
    for event in reversed(_mappings(doc.get("timeline"))):
        detail = event.get("detail")
        if event.get("kind") == "escalated" and isinstance(detail, Mapping):
            used = detail.get("policy")
            if isinstance(used, str) and used:
                return f"{md_text(used)} (the default policy)"
    return "—"


def _or_dash(value: str | None) -> str:
    return "—" if value is None or value == "" else md_text(value)


_STEP = re.compile(r"L(\d+)(?:\.r(\d+))?")


def _escalation(pages: Sequence[Mapping[str, Any]]) -> str:
    """Levels reached, repeats and status updates, read from the pages' step ids."""
    levels: set[int] = set()
    repeats = 0
    updates: set[tuple[object, str]] = set()  # (episode, step): ids repeat across episodes
    for page in pages:
        step = str(page.get("step") or "")
        match = _STEP.fullmatch(step)
        if match is not None:
            levels.add(int(match.group(1)))
            repeats = max(repeats, int(match.group(2) or 0))
        elif step.startswith("U"):
            updates.add((page.get("episode"), step))
    if not levels:
        text = "none"
    else:
        text = ", ".join(f"L{n}" for n in sorted(levels)) + f" (highest: L{max(levels)})"
    if repeats:
        text += f"; repeated {repeats} time{'s' if repeats > 1 else ''}"
    if updates:
        text += f"; {len(updates)} status update{'s' if len(updates) > 1 else ''}"
    return text


def _pages_table(pages: Sequence[Mapping[str, Any]]) -> list[str]:
    counts: Counter[tuple[str, str]] = Counter()
    for page in pages:
        counts[str(page.get("channel") or "?"), str(page.get("state") or "?")] += 1
    channels = sorted({c for c, _ in counts})
    states = sorted({s for _, s in counts})
    rows = [
        [
            md_text(channel, 40),
            str(sum(counts[channel, s] for s in states)),
            *(str(counts[channel, s]) for s in states),
        ]
        for channel in channels
    ]
    return _table(["Channel", "Pages", *(md_text(s, 40) for s in states)], rows)


def _who(event: Mapping[str, Any]) -> str:
    actor = _text(event, "actor")
    via = _text(event, "via")
    parts = [md_text(actor, 80)] if actor else []
    if via:
        parts.append(f"via {md_text(via, 40)}")
    return " ".join(parts)


def _mappings(value: object) -> list[Mapping[str, Any]]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def _labels(value: object) -> str:
    if not isinstance(value, Mapping) or not value:
        return "—"
    return ", ".join(f"{md_text(k, 60)}={md_text(v, 200)}" for k, v in sorted(value.items()))


def _earlier_trigger_lines(triggers: Sequence[Trigger]) -> list[str]:
    """One line per trigger before the current one (the figures above are its own): when it
    started, its first acknowledgement, its resolve and the targets the engine recorded as
    breached. The metrics counted each of them; without these lines a breach of the first
    trigger read as "met" once the incident fired again."""
    lines: list[str] = []
    for number, trigger in enumerate(triggers, 1):
        start = trigger.start
        parts = [f"- Earlier trigger {number}, from {_utc(start)}"]
        if trigger.severity is not None:
            parts[0] += f" ({md_text(trigger.severity, 20)})"
        if trigger.acknowledged is None:
            parts.append("not acknowledged")
        else:
            by = _by_whom(trigger.acknowledged_by, trigger.acknowledged_via)
            parts.append(f"acknowledged after {_span(trigger.acknowledged - start)}{by}")
        if trigger.resolved is None:
            parts.append("not resolved")
        elif trigger.ended_unseen:
            parts.append(f"its alerts went stale after {_span(trigger.resolved - start)}")
        else:
            by = _by_whom(trigger.resolved_by, trigger.resolved_via)
            parts.append(f"resolved after {_span(trigger.resolved - start)}{by}")
        if trigger.breached:
            targets = " and ".join(md_text(t, 20) for t in trigger.breached)
            parts.append(f"**{targets} target breached**")
        lines.append(": ".join(parts[:2]) + "".join(f"; {p}" for p in parts[2:]))
    return lines


def _by_whom(actor: str | None, via: str | None) -> str:
    who = _who({"actor": actor, "via": via})
    return f" by {who}" if who else ""


def drill_results(document: Mapping[str, Any]) -> dict[str, Any]:
    """A drill's answers from its incident document: per contact, the channels paged and
    the first answer with its channel and delay (``GET /api/v1/drills``, the report)."""
    opened = datetime.fromisoformat(document["openedAt"])
    answers: dict[str, dict[str, Any]] = {}
    for event in document["timeline"]:
        if event["kind"] == "acknowledged" and event["actor"] not in answers:
            at = datetime.fromisoformat(event["at"])
            answers[event["actor"]] = {
                "via": event["via"],
                "at": event["at"],
                "seconds": round((at - opened).total_seconds(), 1),
            }
    contacts: dict[str, Any] = {}
    for page in document["pages"]:
        entry = contacts.setdefault(page["contact"], {"pages": [], "answer": None})
        entry["pages"].append({"channel": page["channel"], "state": page["state"]})
    for name, entry in contacts.items():
        entry["answer"] = answers.get(name)
    return {
        "id": document["id"],
        "openedAt": document["openedAt"],
        "contacts": contacts,
        "answered": sum(1 for e in contacts.values() if e["answer"] is not None),
        "total": len(contacts),
    }


def _drill_answers(doc: Mapping[str, Any]) -> list[str]:
    """A drill's section: who was paged, through what, and who answered how fast. The
    summary's acknowledgement is the first answer only; a drill tests everyone paged."""
    try:
        results = drill_results(doc)
    except (KeyError, TypeError, ValueError):  # a document without the API's fields
        return []
    rows = []
    for name, entry in sorted(results["contacts"].items()):
        paged = ", ".join(
            f"{md_text(p['channel'], 40)} ({md_text(p['state'], 40)})" for p in entry["pages"]
        )
        answer = entry["answer"]
        answered = (
            "**no answer**"
            if answer is None
            else f"{_span(timedelta(seconds=answer['seconds']))} after, via "
            f"{md_text(answer['via'], 40)}"
        )
        rows.append([md_text(name, 80), paged, answered])
    return [
        "## Drill answers",
        "",
        f"{results['answered']} of {results['total']} contacts paged answered.",
        "",
        *_table(["Contact", "Paged (state)", "Answered"], rows),
        "",
    ]


def incident_report(doc: Mapping[str, Any], *, now: datetime) -> str:
    """The post-incident review of one incident document, as Markdown."""
    figures = incident_figures(doc, now=now)
    title = _text(doc, "title") or _text(doc, "key") or "(untitled)"
    lines = [f"# Incident {md_text(doc.get('id', '?'), 40)}: {md_text(title)}", ""]

    state = _text(doc, "state") or "?"
    state_text = md_text(state, 40)
    snoozed = _time(doc, "snoozedUntil")
    if state == "snoozed" and snoozed is not None:
        state_text += f" until {_utc(snoozed)}"
    triggered = _time(doc, "triggeredAt")
    episode = doc.get("episode")
    triggered_text = _utc(triggered)
    if isinstance(episode, int) and episode > 1:
        triggered_text += f" (episode {episode})"
    acked_by = _text(doc, "firstAcknowledgedBy") or _text(doc, "acknowledgedBy")
    acked = _utc(figures.acknowledged)
    if figures.acknowledged is not None and acked_by:
        acked += f" by {md_text(acked_by, 80)}"
    resolved_by = _text(doc, "resolvedBy")
    resolved = _utc(figures.resolved)
    if figures.resolved is not None and resolved_by:
        resolved += f" by {md_text(resolved_by, 80)}"
    alerts = _mappings(doc.get("alerts"))
    alert_count = doc.get("alertCount", len(alerts))
    firing = doc.get("firingCount")
    alert_text = md_text(alert_count, 20) + (
        "" if firing is None else f" ({md_text(firing)} firing)"
    )
    summary = [
        ("Severity", _or_dash(_text(doc, "severity"))),
        ("Category", _or_dash(_text(doc, "category"))),
        ("State", state_text),
        ("Policy", _policy_text(doc)),
        ("Rule", _or_dash(_text(doc, "rule"))),
        ("Key", _or_dash(_text(doc, "key"))),
        ("Opened", _utc(figures.opened)),
        ("Triggered", triggered_text),
        ("Acknowledged", acked),
        ("Resolved", resolved),
        ("Assignee", _or_dash(_text(doc, "assignee"))),
        ("Alerts", alert_text),
    ]
    lines += ["## Summary", "", *_table(["", ""], summary), ""]

    lines += ["## Key figures", ""]
    tta = figures.time_to_acknowledge
    if tta is not None:
        ack_line = f"- Time to acknowledge: {_span(tta)}"
    else:
        ack_line = "- Time to acknowledge: not acknowledged"
    if figures.respond is not None:
        ack_line += f" ({figures.respond})"
    ttr = figures.time_to_resolve
    if ttr is not None and figures.ended_unseen:
        # As the metric and the period report: nobody saw it end, so this is no time to resolve.
        resolve_line = (
            f"- Time to resolve: not measured: its alerts went stale, nobody saw it end "
            f"(closed by {STALE_SWEEP} {_span(ttr)} after its start; left out of MTTR)"
        )
    elif ttr is not None:
        resolve_line = f"- Time to resolve: {_span(ttr)}"
    else:
        resolve_line = f"- Time to resolve: open for {_span(figures.open_for)}"
    if figures.resolve is not None:
        resolve_line += f" ({figures.resolve})"
    pages = _mappings(doc.get("pages"))
    earlier = _earlier_trigger_lines(earlier_triggers(doc, figures.resolve_from))
    if earlier:
        lines.append(
            f"- The incident fired again after it resolved: the current trigger, since "
            f"{_utc(figures.resolve_from)}:"
        )
        ack_line, resolve_line = "  " + ack_line, "  " + resolve_line
    lines += [
        ack_line,
        resolve_line,
        *earlier,
        f"- Escalation levels reached: {_escalation(pages)}",
        f"- Pages: {len(pages)}" + (", by channel and state:" if pages else ""),
        "",
    ]
    if pages:
        lines += [*_pages_table(pages), ""]

    if doc.get("category") == DRILL_CATEGORY:
        lines += _drill_answers(doc)

    lines += ["## Timeline", ""]
    events = _mappings(doc.get("timeline"))
    if events:
        # Stable sort: events recorded at the same instant keep the engine's order.
        timed = sorted(
            ((_time(e, "at"), e) for e in events),
            key=lambda item: item[0] or figures.opened,
        )
        rows = [
            [
                "—" if at is None else at.strftime("%Y-%m-%d %H:%M:%S"),
                "" if at is None else _signed(at - figures.opened),
                md_text(event.get("kind", ""), 60),
                _who(event),
                _detail(event.get("detail")),
            ]
            for at, event in timed
        ]
        lines += _table(["Time (UTC)", "Since opened", "Event", "By", "Detail"], rows)
    else:
        lines.append("No events recorded.")
    lines.append("")

    lines += ["## Alerts", ""]
    if isinstance(alert_count, int) and alert_count > len(alerts):
        lines += [f"Showing {len(alerts)} of {alert_count} alerts.", ""]
    for alert in alerts:
        starts = _time(alert, "startsAt")
        ends = _time(alert, "endsAt")
        status = md_text(alert.get("status", "?"), 40)
        head = f"- **{status}** since {_utc(starts)}"
        if ends is not None:
            head += f", ended {_utc(ends)}"
        head += f", fingerprint {md_text(alert.get('fingerprint', '?'), 40)}"
        lines += [
            head,
            f"  - labels: {_labels(alert.get('labels'))}",
            f"  - annotations: {_labels(alert.get('annotations'))}",
        ]
    if not alerts:
        lines.append("No alerts recorded.")
    lines.append("")

    # Left empty for the people writing the review.
    lines += ["## Root cause", "", "## Actions", "", "## Lessons", ""]
    return "\n".join(lines)


# -- the period review -----------------------------------------------------------------------------


def _severity_order(names: Iterable[str]) -> list[str]:
    known = [s.value for s in Severity]
    others = sorted(set(names) - set(known))
    return [*known, *others]


def _p90(values: Sequence[float]) -> float:
    """Nearest rank: the smallest value with at least 90% of the values at or below it."""
    ordered = sorted(values)
    return ordered[math.ceil(0.9 * len(ordered)) - 1]


def _stats_row(values: Sequence[float]) -> list[str]:
    if not values:
        return [str(len(values)), "—", "—", "—"]
    return [
        str(len(values)),
        _span(timedelta(seconds=statistics.fmean(values))),
        _span(timedelta(seconds=statistics.median(values))),
        _span(timedelta(seconds=_p90(values))),
    ]


@dataclass(frozen=True, slots=True)
class _Counted:
    """One trigger the period review counts: an incident's current one or an earlier one."""

    doc: Mapping[str, Any]
    number: int  # which of the incident's triggers, from 1
    of: int  # how many it has had
    severity: str
    start: datetime
    acknowledged: bool
    resolved: bool
    still_open: bool
    time_to_acknowledge: timedelta | None
    time_to_resolve: timedelta | None
    ended_unseen: bool
    respond: TargetStatus | None
    resolve: TargetStatus | None


def _counted(doc: Mapping[str, Any], now: datetime) -> list[_Counted]:
    """Every trigger of one incident document, the current one last."""
    figures = incident_figures(doc, now=now)
    current = figures.resolve_from or figures.opened
    earlier = earlier_triggers(doc, current)
    severity = _text(doc, "severity") or "?"
    target = doc.get("target")
    targets = {
        name
        for name, key in (("respond", "respondSeconds"), ("resolve", "resolveSeconds"))
        if isinstance(target, Mapping) and _seconds(target, key) is not None
    }

    def recorded(trigger: Trigger, name: str, done: bool) -> TargetStatus | None:
        # An earlier trigger is judged by what the engine recorded while it lasted.
        if name in trigger.breached:
            return TargetStatus.BREACHED
        return TargetStatus.MET if name in targets and done else None

    rows = [
        _Counted(
            doc=doc,
            number=number,
            of=len(earlier) + 1,
            severity=t.severity or severity,
            start=t.start,
            acknowledged=t.acknowledged is not None,
            resolved=t.resolved is not None,
            still_open=False,
            time_to_acknowledge=None if t.acknowledged is None else t.acknowledged - t.start,
            time_to_resolve=None if t.resolved is None else t.resolved - t.start,
            ended_unseen=t.ended_unseen,
            respond=recorded(t, "respond", t.acknowledged is not None or t.resolved is not None),
            resolve=recorded(t, "resolve", t.resolved is not None),
        )
        for number, t in enumerate(earlier, 1)
    ]
    rows.append(
        _Counted(
            doc=doc,
            number=len(earlier) + 1,
            of=len(earlier) + 1,
            severity=severity,
            start=current,
            acknowledged=figures.acknowledged is not None,
            resolved=figures.resolved is not None,
            still_open=figures.resolved is None,
            time_to_acknowledge=figures.time_to_acknowledge,
            time_to_resolve=figures.time_to_resolve,
            ended_unseen=figures.ended_unseen,
            respond=None if figures.respond is None else figures.respond.status,
            resolve=None if figures.resolve is None else figures.resolve.status,
        )
    )
    return rows


def period_report(docs: Sequence[Mapping[str, Any]], *, since: datetime, until: datetime) -> str:
    """Triggers that started in ``[since, until)``: counts, MTTA, MTTR and target breaches, as
    Markdown. An incident that resolved and fired again counts once per trigger, each with
    its own times and severity, as the metrics observe them.

    Incidents still open are judged against their targets at ``until``.
    """
    require_aware(since, "since")
    require_aware(until, "until")
    chosen: list[_Counted] = []
    drills = 0
    left_out = 0
    for doc in docs:
        triggers = _counted(doc, until)
        inside = [row for row in triggers if since <= row.start < until]
        if _text(doc, "category") == DRILL_CATEGORY:
            # Tests of the paging path, not incidents: kept out of the figures.
            drills += 1 if inside else 0
            continue
        left_out += len(triggers) - len(inside)
        chosen += inside
    chosen.sort(key=lambda row: row.start)

    groups: dict[str, list[_Counted]] = {}
    for row in chosen:
        groups.setdefault(row.severity, []).append(row)
    order = _severity_order(groups)

    def tta(group: Sequence[_Counted]) -> list[float]:
        return [t.total_seconds() for r in group if (t := r.time_to_acknowledge) is not None]

    def ttr(group: Sequence[_Counted]) -> list[float]:
        return [
            t.total_seconds()
            for r in group
            if (t := r.time_to_resolve) is not None and not r.ended_unseen
        ]

    def breaches(group: Sequence[_Counted], which: str) -> str:
        return str(sum(1 for r in group if getattr(r, which) is TargetStatus.BREACHED))

    labelled = [(md_text(name, 40), groups.get(name, [])) for name in order]
    labelled.append(("**All**", chosen))
    still_open = sum(1 for r in chosen if r.still_open)
    incidents = len({id(r.doc) for r in chosen})
    if incidents == len(chosen):
        counted = f"{incidents} incident{'' if incidents == 1 else 's'} fired in the period"
    else:
        counted = (
            f"{len(chosen)} triggers of {incidents} incident{'' if incidents == 1 else 's'} in "
            "the period (an incident that resolved and fired again counts once per trigger)"
        )
    lines = [
        f"# Incidents from {_utc(since)} to {_utc(until)}",
        "",
        f"{counted}; {still_open} still open.",
        "",
        "## By severity",
        "",
        *_table(
            [
                "Severity",
                "Triggers",
                "Still open",
                "Acknowledged",
                "Resolved",
                "Respond target breached",
                "Resolve target breached",
            ],
            (
                [
                    name,
                    str(len(group)),
                    str(sum(1 for r in group if r.still_open)),
                    str(sum(1 for r in group if r.acknowledged)),
                    str(sum(1 for r in group if r.resolved)),
                    breaches(group, "respond"),
                    breaches(group, "resolve"),
                ]
                for name, group in labelled
            ),
        ),
        "",
        "## Time to acknowledge (MTTA)",
        "",
        *_table(
            ["Severity", "Counted", "Mean", "Median", "p90"],
            ([name, *_stats_row(tta(group))] for name, group in labelled),
        ),
        "",
        "## Time to resolve (MTTR)",
        "",
        *_table(
            ["Severity", "Counted", "Mean", "Median", "p90"],
            ([name, *_stats_row(ttr(group))] for name, group in labelled),
        ),
        "",
    ]

    if chosen:
        lines += ["## Incidents", ""]
        rows = [
            [
                md_text(r.doc.get("id", "?"), 40)
                + (f" (trigger {r.number} of {r.of})" if r.of > 1 else ""),
                md_text(r.severity, 40),
                md_text(_text(r.doc, "title") or _text(r.doc, "key") or "", 120),
                _utc(r.start),
                "—" if (a := r.time_to_acknowledge) is None else _span(a),
                ("open" if r.still_open else "—")
                if (t := r.time_to_resolve) is None
                else f"{_span(t)} (stale)"
                if r.ended_unseen
                else _span(t),
                ", ".join(
                    f"{what} {status}"
                    for what, status in (("respond", r.respond), ("resolve", r.resolve))
                    if status is not None
                ),
            ]
            for r in chosen
        ]
        lines += [
            *_table(["Id", "Severity", "Title", "Started", "TTA", "TTR", "Targets"], rows),
            "",
        ]

    unacked = sum(1 for r in chosen if not r.acknowledged)
    unresolved = sum(1 for r in chosen if not r.resolved)
    unseen = sum(1 for r in chosen if r.ended_unseen)
    lines += [
        "## Notes",
        "",
        *(
            [
                f"- Drills are left out of every figure above ({drills} in the period; see "
                "`responder drill --list`)."
            ]
            if drills
            else []
        ),
        "- An incident that resolved and fired again counts once for each trigger that started "
        "in the period, each with its own times and its severity as that trigger ended, as the "
        "metrics observe them.",
        f"- MTTA counts acknowledged triggers only ({unacked} never acknowledged); it runs from "
        "the trigger's start (whatever episodes followed) to its first acknowledgement.",
        f"- MTTR counts resolved triggers only ({unresolved} unresolved); it runs from the "
        "trigger's start too. Triggers that ended because their alerts went stale (no copy "
        f"within alerts.stale_after: nobody saw them end) are not counted ({unseen}; marked "
        '"(stale)" above).',
        "- p90 is by nearest rank. Open incidents are judged against their targets at the end "
        "of the period; an incident resolved without acknowledgement met the respond target if "
        "it was resolved within it. An earlier trigger is judged by the breaches the engine "
        "recorded while it lasted.",
    ]
    if left_out:
        lines.append(
            f"- {left_out} trigger{'s' if left_out > 1 else ''} that started outside the "
            "period left out."
        )
    lines.append("")
    return "\n".join(lines)

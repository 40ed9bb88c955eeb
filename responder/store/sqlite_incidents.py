"""Incident SQL for the SQLite engine: each function runs inside the writer's transaction
(or on the reader connection) and takes the connection as its first argument.

The rules that keep pages exactly-once live here: a step is a row with a unique key
(incident, episode, step) and its pages are inserted only when that row is new; an engine
write carries the incident's ``version`` and does nothing when someone else changed the
incident in between (the engine then decides again from fresh data).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import orjson

from responder.incident import (
    INTERRUPTED,
    REASSIGN_STEP,
    TRIGGER_ENDED,
    EscalationWork,
    Event,
    Incident,
    IncidentNotFound,
    IncidentState,
    NewPage,
    Page,
    PageKind,
    PageState,
    StateConflict,
    StepDone,
    TimelineEvent,
    TransitionError,
    incident_title,
)
from responder.model import DRILL_CATEGORY, Severity
from responder.policy import EscalationLayout, LevelKeys, duration_levels
from responder.store.base import Reroute

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DRILL_KEY_PREFIX = "drill:"


def to_us(when: datetime) -> int:
    """Aware datetime -> integer microseconds since the epoch (exact, sortable)."""
    delta = when - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(value: int) -> datetime:
    return datetime.fromtimestamp(value // 1_000_000, UTC).replace(microsecond=value % 1_000_000)


def _opt_us(value: int | None) -> datetime | None:
    return None if value is None else from_us(value)


_DUMPS_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


def dumps(value: object) -> str:
    """The JSON text of a column: compact, keys sorted, UTF-8 as is (what the standard
    library writes with those options, at a third of its cost: this runs several times for
    every alert stored)."""
    return orjson.dumps(value, option=_DUMPS_OPTIONS).decode()


def dumps_texts(texts: Mapping[str, str]) -> str:
    """``dumps`` of labels or annotations, which arrive as read-only views of a dict. The
    view's ``copy()`` is that dict's own copy, a third of the cost of ``dict(view)``, which
    goes key by key (0.36 against 0.14 µs, and this runs twice for every alert stored)."""
    plain = texts.copy() if type(texts) is MappingProxyType else texts
    return dumps(plain if type(plain) is dict else dict(plain))


def add_event(conn: sqlite3.Connection, incident_id: int, event: TimelineEvent) -> None:
    conn.execute(
        "INSERT INTO timeline (incident_id, at, kind, actor, via, detail) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (
            incident_id,
            to_us(event.at),
            event.kind.value,
            event.actor,
            event.via,
            dumps(dict(event.detail)),
        ),
    )


# -- alerts joining and leaving incidents -------------------------------------------------------


def open_incident(conn: sqlite3.Connection, key: str) -> tuple[int, str] | None:
    """The open (not resolved) incident with ``key``: (id, severity)."""
    row = conn.execute(
        "SELECT id, severity FROM incidents WHERE key = ? AND state != 'resolved'", (key,)
    ).fetchone()
    return None if row is None else (int(row[0]), str(row[1]))


_RANK = {s.value: s.rank for s in Severity}  # "P1": 1, without building the enum per alert


def join_incident(
    conn: sqlite3.Connection,
    incident_id: int,
    current: str,
    classification: dict[str, Any],
    now_us: int,
    default_policy: str | None = None,
) -> bool:
    """A firing alert (already stored with ``incident_id`` and ``joined_at``, which make its
    "alert_fired" timeline entry) joined the open incident whose severity is ``current``.
    True when a worse alert raised the incident (due now). A rule that names no policy
    means ``default_policy``, for the incident (stored as none) as for the alert."""
    severity = str(classification["severity"])
    if _RANK[severity] >= _RANK[current]:
        return False
    # A worse alert joined: the incident takes its severity, policy and response targets,
    # and the engine looks again at once. Under another policy, escalation starts over from
    # that policy's first level, as after an unacknowledge (a new episode): the old policy's
    # levels done say nothing of the new one's.
    policy = classification.get("policy") or default_policy
    target = classification.get("target") or {}
    episode, was_under = conn.execute(
        "SELECT episode, COALESCE(policy, ?) FROM incidents WHERE id = ?",
        (default_policy, incident_id),
    ).fetchone()
    # Under another policy the escalation starts over (a new episode), not the incident's
    # lasting: response targets and duration levels keep counting from its trigger. Also
    # while it is snoozed (the new policy's first level then waits for the snooze's end)
    # or acknowledged (its duration levels are its own): the old policy's steps done must
    # not be read as level numbers of the new one.
    conn.execute(
        "UPDATE incidents SET severity = ?6, "
        "lasting_since = CASE WHEN ?1 IS NOT NULL "
        "AND ?1 IS NOT COALESCE(policy, ?7) THEN COALESCE(lasting_since, triggered_at) "
        "ELSE lasting_since END, "
        "episode = episode + (?1 IS NOT NULL AND ?1 IS NOT COALESCE(policy, ?7)), "
        "triggered_at = CASE WHEN ?1 IS NOT NULL "
        "AND ?1 IS NOT COALESCE(policy, ?7) THEN ?2 ELSE triggered_at END, "
        "policy = COALESCE(?1, policy), respond_s = COALESCE(?3, respond_s), "
        "resolve_s = COALESCE(?4, resolve_s), held_until = NULL, "
        "next_due = ?2, version = version + 1, updated_at = ?2 WHERE id = ?5",
        (
            policy,
            now_us,
            target.get("respond_s"),
            target.get("resolve_s"),
            incident_id,
            severity,
            default_policy,
        ),
    )
    (now_episode,) = conn.execute(
        "SELECT episode FROM incidents WHERE id = ?", (incident_id,)
    ).fetchone()
    if now_episode != episode:
        _carry_steps(conn, incident_id, BREACH_STEPS)
        layout = stored_layout(conn)
        old = None if layout is None else layout.policies.get(was_under)
        new = None if layout is None else layout.policies.get(policy or "")
        _carry_duration_levels(conn, incident_id, old, new)
    _event(
        conn,
        incident_id,
        now_us,
        Event.SEVERITY_RAISED,
        "alertmanager",
        {"from": current, "to": severity},
    )
    return True


def _place_alert(
    conn: sqlite3.Connection,
    alert_id: int,
    incident_id: int,
    fired: dict[str, object] | None,
    now_us: int,
    *,
    fresh: bool,
) -> None:
    """Put the alert into ``incident_id``. ``fired``: the detail of its "alert_fired" entry
    there; None when the incident's own event (triggered, retriggered) tells of it. The
    entry is read from the alert row (``joined_at``, see ``timeline``) when the row says
    what the entry says; otherwise it is written as a timeline row. ``fresh``: the alert
    was stored just now and belongs to no incident. An entry the alert makes already (a
    stale alert firing again) is first written out as a row, so that its timeline keeps it."""
    stored_severity = None  # what the alert row says, when it was stored before now
    if not fresh:
        was_in, was_joined, alertname, stored_severity = conn.execute(
            "SELECT incident_id, joined_at, alertname, severity FROM alerts WHERE id = ?",
            (alert_id,),
        ).fetchone()
        if was_in is not None and was_joined is not None:
            was = {"alert": alert_id, "alertname": alertname, "severity": stored_severity}
            _event(conn, was_in, was_joined, Event.ALERT_FIRED, "alertmanager", was)
    joined_at = None
    if fired is not None:
        if fresh or fired["severity"] == stored_severity:
            joined_at = now_us
        else:  # classified anew since it was stored (the rules changed): the row is out of date
            _event(conn, incident_id, now_us, Event.ALERT_FIRED, "alertmanager", fired)
    conn.execute(
        "UPDATE alerts SET incident_id = ?, joined_at = ? WHERE id = ?",
        (incident_id, joined_at, alert_id),
    )


def attach_alert(
    conn: sqlite3.Connection,
    alert_id: int,
    key: str,
    labels: Mapping[str, str],
    classification: dict[str, Any],
    now_us: int,
    reopen_us: int,
    *,
    none_open: bool = False,
    source: str = "alertmanager",
    default_policy: str | None = None,
) -> bool:
    """Put a firing alert into the open incident with its key, reopening or creating one
    (``none_open``: the caller already found no open incident). True when the incident's
    next due time moved earlier: opened (due now, or when a rule's hold_page ends),
    reopened, raised. ``source``: who raised the alert, for the timeline."""
    severity = str(classification["severity"])
    fired = {"alert": alert_id, "alertname": labels.get("alertname", ""), "severity": severity}
    found = None if none_open else open_incident(conn, key)
    if found is not None:
        _place_alert(conn, alert_id, found[0], fired, now_us, fresh=none_open)
        return join_incident(conn, found[0], found[1], classification, now_us, default_policy)

    row = conn.execute(
        "SELECT id FROM incidents WHERE key = ? AND state = 'resolved' AND resolved_at >= ? "
        "ORDER BY resolved_at DESC LIMIT 1",
        (key, now_us - reopen_us),
    ).fetchone()
    target = classification.get("target") or {}
    if row is not None:
        incident_id = row[0]
        conn.execute(
            "UPDATE incidents SET state = 'triggered', episode = episode + 1, triggered_at = ?, "
            "lasting_since = NULL, acknowledged_at = NULL, acknowledged_by = NULL, "
            "first_acknowledged_at = NULL, first_acknowledged_by = NULL, "
            "held_until = NULL, "
            "resolved_at = NULL, "
            "resolved_by = NULL, snoozed_until = NULL, severity = ?, category = ?, policy = ?, "
            "respond_s = ?, resolve_s = ?, next_due = ?, version = version + 1, updated_at = ? "
            "WHERE id = ?",
            (
                now_us,
                severity,
                classification["category"],
                classification.get("policy"),
                target.get("respond_s"),
                target.get("resolve_s"),
                now_us,
                now_us,
                incident_id,
            ),
        )
        _place_alert(conn, alert_id, incident_id, None, now_us, fresh=none_open)
        _event(conn, incident_id, now_us, Event.RETRIGGERED, source, fired, source)
        return True

    # A rule may hold the first page while containment works (hold_page).
    hold_us = int(classification.get("hold_page_s") or 0) * 1_000_000
    cur = conn.execute(
        "INSERT INTO incidents (key, state, severity, category, policy, rule, title, respond_s, "
        "resolve_s, opened_at, triggered_at, next_due, updated_at, held_until) "
        "VALUES (?, 'triggered', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            key,
            severity,
            classification["category"],
            classification.get("policy"),
            classification.get("rule"),
            incident_title(labels),
            target.get("respond_s"),
            target.get("resolve_s"),
            now_us,
            now_us,
            now_us + hold_us,
            now_us,
            now_us + hold_us if hold_us else None,
        ),
    )
    incident_id = int(cur.lastrowid or 0)
    _place_alert(conn, alert_id, incident_id, None, now_us, fresh=none_open)
    _event(
        conn,
        incident_id,
        now_us,
        Event.TRIGGERED,
        source,
        {**fired, "classification": classification},
        source,
    )
    return True


def alert_ended(
    conn: sqlite3.Connection,
    alert_id: int,
    incident_id: int,
    kind: Event,
    now_us: int,
    source: str = "alertmanager",
) -> bool:
    """An alert resolved or went stale: the incident resolves when none of its alerts fires.
    True when it did (its recovery notice is due now). ``source``: who said so."""
    _event(conn, incident_id, now_us, kind, source, {"alert": alert_id}, source)
    firing = conn.execute(
        "SELECT 1 FROM alerts WHERE incident_id = ? AND status = 'firing' LIMIT 1", (incident_id,)
    ).fetchone()
    if firing is not None:
        return False
    cur = conn.execute(
        "UPDATE incidents SET state = 'resolved', resolved_at = ?, resolved_by = ?, "
        "snoozed_until = NULL, next_due = ?, version = version + 1, updated_at = ? "
        "WHERE id = ? AND state != 'resolved'",
        (now_us, source, now_us, now_us, incident_id),
    )
    if cur.rowcount:
        _cancel_pending(conn, incident_id, now_us, "resolved", resolve=True)
        reason = (
            "all alerts resolved"
            if kind is Event.ALERT_RESOLVED
            else "all alerts ended, the last by going stale (no copy within alerts.stale_after)"
        )
        _event(conn, incident_id, now_us, Event.RESOLVED, source, {"reason": reason}, source)
        return True
    return False


def _event(
    conn: sqlite3.Connection,
    incident_id: int,
    at_us: int,
    kind: Event,
    actor: str | None,
    detail: dict[str, object],
    via: str | None = "alertmanager",
) -> None:
    conn.execute(
        "INSERT INTO timeline (incident_id, at, kind, actor, via, detail) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (incident_id, at_us, kind.value, actor, via, dumps(detail)),
    )


def _cancel_pending(
    conn: sqlite3.Connection,
    incident_id: int,
    now_us: int,
    reason: str,
    *,
    resolve: bool,
    snooze: bool = False,
) -> int:
    """Pages that lost their point (``_lose_point``). On acknowledge: unacknowledged-clock
    pages; on a snooze, the same but a reassignment's (step ``A...``: the new owner is
    told, snoozed or not). On resolve: every page and status update (the recovery notice
    comes after)."""
    condition = "kind IN ('page', 'status')" if resolve else "cancel_on_ack = 1"
    if snooze:
        condition += f" AND step NOT LIKE '{REASSIGN_STEP}%'"
    return _lose_point(conn, condition, [], incident_id, now_us, reason)


def _cancel_pages_to(
    conn: sqlite3.Connection, incident_id: int, contact: str, now_us: int, reason: str
) -> int:
    """The pages of the incident to ``contact`` (not status updates or recoveries): they
    acknowledged it, first or not (only the first is kept on the incident), or a
    reassignment relieved them of it."""
    condition = "kind = 'page' AND contact = ?"
    return _lose_point(conn, condition, [contact], incident_id, now_us, reason)


def _lose_point(
    conn: sqlite3.Connection,
    condition: str,
    params: Sequence[object],
    incident_id: int,
    now_us: int,
    reason: str,
) -> int:
    """The incident's pages matching ``condition`` lost their point: the queued ones are
    cancelled with ``reason``; the others still out keep it in ``lost_point``: one being
    made is cancelled at its hand-over, one handed over or sent is cancelled should it
    come back for a retry, and pages nobody in its place should it fail (``_POINTLESS``,
    ``reroute_page``). A later change (an unacknowledge, a snooze's end) does not give it
    back. Returns how many were cancelled."""
    cur = conn.execute(
        "UPDATE pages SET state = 'cancelled', error = ?, updated_at = ? "  # noqa: S608 - fixed text
        f"WHERE incident_id = ? AND state = 'queued' AND {condition}",
        [reason, now_us, incident_id, *params],
    )
    conn.execute(
        "UPDATE pages SET lost_point = ? "  # noqa: S608 - fixed text
        "WHERE incident_id = ? AND state IN ('sending', 'sent') AND lost_point IS NULL "
        f"AND {condition}",
        [reason, incident_id, *params],
    )
    return cur.rowcount


# -- reads -------------------------------------------------------------------------------------

INCIDENT_COLUMNS = (
    "i.id, i.key, i.state, i.severity, i.category, i.policy, i.rule, i.title, i.respond_s, "
    "i.resolve_s, i.opened_at, i.triggered_at, i.episode, i.acknowledged_at, i.acknowledged_by, "
    "i.resolved_at, i.resolved_by, i.snoozed_until, i.assignee, i.next_due, i.version, "
    "i.escalate_now, i.lasting_since, "
    "(SELECT COUNT(*) FROM alerts a WHERE a.incident_id = i.id), "
    "(SELECT COUNT(*) FROM alerts a WHERE a.incident_id = i.id AND a.status = 'firing'), "
    "i.first_acknowledged_at, i.first_acknowledged_by"
)


def incident_from_row(row: Sequence[Any]) -> Incident:
    return Incident(
        id=row[0],
        key=row[1],
        state=IncidentState(row[2]),
        severity=row[3],
        category=row[4],
        policy=row[5],
        rule=row[6],
        title=row[7],
        respond_s=row[8],
        resolve_s=row[9],
        opened_at=from_us(row[10]),
        triggered_at=from_us(row[11]),
        episode=row[12],
        acknowledged_at=_opt_us(row[13]),
        acknowledged_by=row[14],
        resolved_at=_opt_us(row[15]),
        resolved_by=row[16],
        snoozed_until=_opt_us(row[17]),
        assignee=row[18],
        next_due=_opt_us(row[19]),
        version=row[20],
        escalate_now=row[21],
        lasting_since=_opt_us(row[22]),
        alert_count=row[23],
        firing_count=row[24],
        first_acknowledged_at=_opt_us(row[25]),
        first_acknowledged_by=row[26],
    )


def get_incident(conn: sqlite3.Connection, incident_id: int) -> Incident:
    row = conn.execute(
        f"SELECT {INCIDENT_COLUMNS} FROM incidents i WHERE i.id = ?",  # noqa: S608 - fixed text
        (incident_id,),
    ).fetchone()
    if row is None:
        raise IncidentNotFound(f"no incident {incident_id}")
    return incident_from_row(row)


def open_incident_ids(conn: sqlite3.Connection) -> list[int]:
    return [i for (i,) in conn.execute("SELECT id FROM incidents WHERE state != 'resolved'")]


def list_incidents(
    conn: sqlite3.Connection,
    states: Sequence[str],
    since_us: int | None,
    limit: int,
    category: str | None = None,
    started_since_us: int | None = None,
    before_id: int | None = None,
) -> list[Incident]:
    clauses: list[str] = []
    params: list[Any] = []
    if before_id is not None:
        clauses.append("i.id < ?")
        params.append(before_id)
    if category is not None:
        clauses.append("i.category = ?")
        params.append(category)
    if states:
        clauses.append(f"i.state IN ({','.join('?' * len(states))})")
        params.extend(states)
    if since_us is not None:
        clauses.append("i.opened_at >= ?")
        params.append(since_us)
    if started_since_us is not None:
        # The current trigger is the latest: one that started since means some did. Not
        # indexed: a report's scan, not a hot path.
        clauses.append(f"{_STARTED} >= ?")
        params.append(started_since_us)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    params.append(limit)
    sql = f"SELECT {INCIDENT_COLUMNS} FROM incidents i {where} ORDER BY i.id DESC LIMIT ?"  # noqa: S608 - fixed text
    return [incident_from_row(row) for row in conn.execute(sql, params)]


def trigger_events(
    conn: sqlite3.Connection, incident_ids: Sequence[int], kinds: Sequence[str]
) -> dict[int, list[TimelineEvent]]:
    """The timeline rows of ``kinds`` of these incidents, each incident's in time order."""
    events: dict[int, list[TimelineEvent]] = {i: [] for i in incident_ids}
    rows = conn.execute(
        "SELECT incident_id, at, kind, actor, via, detail FROM timeline "
        "WHERE incident_id IN (SELECT value FROM json_each(?1)) "
        "AND kind IN (SELECT value FROM json_each(?2)) ORDER BY incident_id, at, id",
        (dumps(list(incident_ids)), dumps(list(kinds))),
    )
    for incident_id, at, kind, actor, via, detail in rows:
        events[incident_id].append(
            TimelineEvent(from_us(at), Event(kind), actor, via, json.loads(detail))
        )
    return events


def timeline(conn: sqlite3.Connection, incident_id: int) -> list[TimelineEvent]:
    """The incident's events in time order: its timeline rows, and an "alert_fired" entry
    for each alert that joined it (read from the alert, see migration 7)."""
    rows = [
        TimelineEvent(from_us(at), Event(kind), actor, via, json.loads(detail))
        for at, kind, actor, via, detail in conn.execute(
            "SELECT at, kind, actor, via, detail FROM timeline WHERE incident_id = ? "
            "ORDER BY at, id",
            (incident_id,),
        )
    ]
    joined = [
        TimelineEvent(
            from_us(at),
            Event.ALERT_FIRED,
            "alertmanager",
            "alertmanager",
            {"alert": alert_id, "alertname": alertname, "severity": severity},
        )
        for at, alert_id, alertname, severity in conn.execute(
            "SELECT joined_at, id, alertname, severity FROM alerts "
            "WHERE incident_id = ? AND joined_at IS NOT NULL ORDER BY joined_at, id",
            (incident_id,),
        )
    ]
    if not joined:
        return rows
    merged: list[TimelineEvent] = []
    pending = iter(joined)
    entry = next(pending, None)
    for row in rows:
        # One body's alerts share an instant. Its resolves and the incident's opening or
        # reopening come before the alerts that join, and a raise after the alert that
        # caused it.
        while entry is not None and (
            entry.at < row.at or (entry.at == row.at and row.kind is Event.SEVERITY_RAISED)
        ):
            merged.append(entry)
            entry = next(pending, None)
        merged.append(row)
    if entry is not None:
        merged.append(entry)
        merged.extend(pending)
    return merged


PAGE_COLUMNS = (
    "id, incident_id, episode, step, kind, contact, channel, address, backup, due_at, state, "
    "attempts, provider_id, error, created_at, sent_at, cancel_on_ack, trigger_at"
)


def page_from_row(row: Sequence[Any]) -> Page:
    return Page(
        id=row[0],
        incident_id=row[1],
        episode=row[2],
        step=row[3],
        kind=PageKind(row[4]),
        contact=row[5],
        channel=row[6],
        address=row[7],
        backup=row[8],
        due_at=from_us(row[9]),
        state=PageState(row[10]),
        attempts=row[11],
        provider_id=row[12],
        error=row[13],
        created_at=from_us(row[14]),
        sent_at=_opt_us(row[15]),
        cancel_on_ack=bool(row[16]),
        trigger_at=_opt_us(row[17]),
    )


def pages_of(conn: sqlite3.Connection, incident_id: int) -> list[Page]:
    return [
        page_from_row(row)
        for row in conn.execute(
            f"SELECT {PAGE_COLUMNS} FROM pages WHERE incident_id = ? ORDER BY id",  # noqa: S608 - fixed text
            (incident_id,),
        )
    ]


def due_work(conn: sqlite3.Connection, now_us: int, limit: int) -> list[EscalationWork]:
    """Due incidents with their done steps (and, for resolved ones, who was paged), read in
    three queries for the whole batch rather than two per incident."""
    incidents = [
        incident_from_row(row)
        for row in conn.execute(
            f"SELECT {INCIDENT_COLUMNS} FROM incidents i "  # noqa: S608 - fixed text
            "WHERE i.next_due IS NOT NULL AND i.next_due <= ? ORDER BY i.next_due LIMIT ?",
            (now_us, limit),
        )
    ]
    if not incidents:
        return []
    episode = {i.id: i.episode for i in incidents}
    marks = ",".join("?" * len(incidents))
    done: dict[int, set[str]] = {i.id: set() for i in incidents}
    last_update: dict[int, int] = {}  # the latest status update's time, in any episode
    for incident_id, step_episode, step, done_at in conn.execute(
        "SELECT incident_id, episode, step, done_at FROM steps "  # noqa: S608
        f"WHERE incident_id IN ({marks})",
        list(episode),
    ):
        if step_episode == episode[incident_id]:
            done[incident_id].add(step)
        if step.startswith("U"):
            last_update[incident_id] = max(done_at, last_update.get(incident_id, done_at))
    paged: dict[int, list[tuple[str, str, str]]] = {}
    resolved = [i.id for i in incidents if i.state is IncidentState.RESOLVED]
    if resolved:
        # Who was told of it since the last recovery notice: every episode since (an
        # unacknowledge starts one mid-incident), and only pages that reached someone or
        # may have (never a route that failed or was cancelled). A page claimed and not yet
        # handed over does not: its hand-over, after the resolve, cancels it (hand_over).
        # A recovery notice of an earlier trigger still waiting (a retry, a rate limit), or
        # cancelled because the incident fired again before it went, told nobody: those it
        # was for hear this one.
        resolved_marks = ",".join("?" * len(resolved))
        for incident_id, contact, channel, address in conn.execute(
            "SELECT DISTINCT p.incident_id, p.contact, p.channel, p.address FROM pages p "  # noqa: S608
            f"WHERE p.incident_id IN ({resolved_marks}) AND p.kind IN ('page', 'status') "
            f"AND {_REACHED} "
            "AND p.episode > (SELECT COALESCE(MAX(r.episode), 0) FROM pages r "
            "WHERE r.incident_id = p.incident_id AND r.kind = 'recovery' "
            "AND r.state != 'queued' AND r.error IS NOT ?) "
            "ORDER BY p.contact",
            [*resolved, TRIGGER_ENDED],
        ):
            paged.setdefault(incident_id, []).append((contact, channel, address))
    return [
        EscalationWork(
            i,
            frozenset(done[i.id]),
            tuple(paged.get(i.id, ())),
            _opt_us(last_update.get(i.id)),
        )
        for i in incidents
    ]


_LEVEL_STEP = re.compile(r"L(\d+)((?:\.r\d+)?)")


def renumber_levels(
    conn: sqlite3.Connection, policy: str | None, moves: Mapping[int, int | None], now_us: int
) -> None:
    """Rename the level steps done by open incidents under ``policy`` (None: those that
    follow the default policy) after a reload moved its levels (``level_renumbering``). A
    step of a level that is gone keeps its row under a name no level has."""
    rows = conn.execute(
        "SELECT s.incident_id, s.episode, s.step, s.done_at FROM steps s "
        "JOIN incidents i ON i.id = s.incident_id "
        "WHERE i.state != 'resolved' AND i.policy IS ? AND s.step GLOB 'L[0-9]*'",
        (policy,),
    ).fetchall()
    renamed = []
    for incident_id, episode, step, done_at in rows:
        match = _LEVEL_STEP.fullmatch(step)
        if match is None:
            continue
        number, repeat = int(match.group(1)), match.group(2)
        if number not in moves:
            continue
        target = moves[number]
        name = f"gone:{step}@{now_us}" if target is None else f"L{target}{repeat}"
        if name != step:
            renamed.append((incident_id, episode, step, name, done_at))
    # All out first, then all in: a rename may take a name another one gives up.
    conn.executemany(
        "DELETE FROM steps WHERE incident_id = ? AND episode = ? AND step = ?",
        [(i, e, old) for i, e, old, _, _ in renamed],
    )
    conn.executemany(
        "INSERT OR IGNORE INTO steps (incident_id, episode, step, done_at) VALUES (?, ?, ?, ?)",
        [(i, e, new, done_at) for i, e, _, new, done_at in renamed],
    )


# Response-target breaches: recorded once per incident, whatever episodes follow.
BREACH_STEPS = ("B.respond", "B.resolve")


def _carry_steps(conn: sqlite3.Connection, incident_id: int, steps: Sequence[str]) -> None:
    """Steps done in the incident's previous episode that stay done in its new (current)
    one."""
    if steps:
        conn.execute(
            "INSERT OR IGNORE INTO steps (incident_id, episode, step, done_at) "  # noqa: S608
            "SELECT s.incident_id, i.episode, s.step, s.done_at FROM steps s "
            "JOIN incidents i ON i.id = s.incident_id "
            "WHERE s.incident_id = ? AND s.episode = i.episode - 1 "
            f"AND s.step IN ({','.join('?' * len(steps))})",
            (incident_id, *steps),
        )


def stored_layout(conn: sqlite3.Connection) -> EscalationLayout | None:
    """The layout of levels the open incidents' steps are recorded under (None before the
    first start, or unreadable: the start replaces it)."""
    row = conn.execute("SELECT layout FROM escalation_layout").fetchone()
    if row is None:
        return None
    try:
        return EscalationLayout.from_json(str(row[0]))
    except ValueError:
        return None


# What management was told in a trigger, whatever policies the incident went through since
# (one without the level may come between): a bookkeeping step per duration level told,
# ``told:<key of its identity>:<n>`` (the n-th of its look-alikes), kept in every episode.
TOLD_STEP = "told:"


def _told_key(identity: str) -> str:
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def _carry_duration_levels(
    conn: sqlite3.Connection, incident_id: int, old: LevelKeys | None, new: LevelKeys | None
) -> None:
    """The incident went from policy ``old`` to ``new`` in a new episode of the same trigger:
    management told that the incident has lasted, under ``old`` or under a policy before it,
    is not told again by the same level of ``new`` (by identity, not number; look-alikes
    pair in order): management is told once, whatever policy it is under."""
    previous = dict(
        conn.execute(
            "SELECT s.step, s.done_at FROM steps s JOIN incidents i ON i.id = s.incident_id "
            "WHERE s.incident_id = ? AND s.episode = i.episode - 1",
            (incident_id,),
        ).fetchall()
    )
    told: dict[str, list[int]] = {}  # identity key -> when each of its look-alikes was told
    for step, done_at in previous.items():
        if step.startswith(TOLD_STEP):
            told.setdefault(step.split(":")[1], []).append(done_at)
    under_old: dict[str, list[int]] = {}
    for number, identity in duration_levels(old or ()):
        if (done_at := previous.get(f"L{number}")) is not None:
            under_old.setdefault(_told_key(identity), []).append(done_at)
    for key, times in under_old.items():
        # Levels carried into the previous episode are in both: the larger count is all.
        if len(times) > len(told.get(key, ())):
            told[key] = times
    rows: list[tuple[int, str, int]] = []
    for key, times in told.items():
        times.sort()
        rows += [(incident_id, f"{TOLD_STEP}{key}:{n}", at) for n, at in enumerate(times, 1)]
    taken: dict[str, int] = {}
    for number, identity in duration_levels(new or ()):
        key = _told_key(identity)
        seen = taken[key] = taken.get(key, 0) + 1
        if seen <= len(told.get(key, ())):
            rows.append((incident_id, f"L{number}", told[key][seen - 1]))
    conn.executemany(
        "INSERT OR IGNORE INTO steps (incident_id, episode, step, done_at) "
        "SELECT ?1, episode, ?2, ?3 FROM incidents WHERE id = ?1",
        rows,
    )


def policy_gone(
    conn: sqlite3.Connection,
    policy: str | None,
    default_policy: str | None,
    now_us: int,
    *,
    restart: bool = True,
    levels: tuple[LevelKeys | None, LevelKeys | None] = (None, None),
) -> None:
    """A reload took away the policy open incidents escalated under: ``policy`` removed
    (None: the default policy changed, for incidents whose rule names none). They go on
    under the default. With ``restart``, a new episode: the old policy's levels done say
    nothing of the new one's, but for its duration levels that the default has too
    (``levels``: the old policy's and the default's, to match them). A triggered incident
    starts the default's levels from now; an acknowledged or snoozed one keeps its start
    (its duration levels count from there). Response-target breaches already recorded stay
    recorded. Without ``restart`` (the default has the same levels: a rename), they go on
    where they were."""
    rows = conn.execute(
        "SELECT id, policy FROM incidents WHERE state != 'resolved' AND policy IS ?", (policy,)
    ).fetchall()
    for incident_id, old in rows:
        conn.execute(
            "UPDATE incidents SET policy = NULL, episode = episode + ?3, "
            "lasting_since = CASE WHEN ?3 THEN COALESCE(lasting_since, triggered_at) "
            "ELSE lasting_since END, "
            "triggered_at = CASE WHEN ?3 AND state = 'triggered' THEN ?1 ELSE triggered_at END, "
            # A first page a rule's hold_page holds stays held: containment is working.
            "next_due = CASE WHEN state = 'triggered' AND held_until > ?1 THEN held_until "
            "ELSE ?1 END, version = version + 1, updated_at = ?1 WHERE id = ?2",
            (now_us, incident_id, restart),
        )
        if restart:
            _carry_steps(conn, incident_id, BREACH_STEPS)
            _carry_duration_levels(conn, incident_id, *levels)
        detail: dict[str, object] = {"policy": old, "default_policy": default_policy}
        _event(conn, incident_id, now_us, Event.POLICY_GONE, "responder", detail, "reload")


def rearm_open(conn: sqlite3.Connection, now_us: int) -> int:
    """Every open incident due now (the policies changed), but for a first page a rule's
    hold_page still holds (its end stays its due time); returns how many."""
    # A new version: an escalation pass that read the incident before the reload must not
    # apply a decision made with the old levels (apply_steps checks the version).
    cur = conn.execute(
        "UPDATE incidents SET next_due = MIN(COALESCE(next_due, ?1), "
        "CASE WHEN state = 'triggered' AND held_until > ?1 THEN held_until ELSE ?1 END), "
        "version = version + 1 WHERE state != 'resolved'",
        (now_us,),
    )
    return cur.rowcount


def next_escalation(conn: sqlite3.Connection) -> int | None:
    row = conn.execute("SELECT MIN(next_due) FROM incidents WHERE next_due IS NOT NULL").fetchone()
    return None if row is None or row[0] is None else int(row[0])


def next_page(conn: sqlite3.Connection, busy: Sequence[tuple[str, str, str]] = ()) -> int | None:
    skip, params = _not_busy(busy)
    row = conn.execute(
        f"SELECT MIN(due_at) FROM pages WHERE state = 'queued' {skip}",  # noqa: S608 - placeholders
        params,
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def _not_busy(busy: Sequence[tuple[str, str, str]]) -> tuple[str, list[object]]:
    """A condition leaving out pages of the busy (contact, channel, address) methods."""
    if not busy:
        return "", []
    rows = ",".join(["(?, ?, ?)"] * len(busy))
    return f"AND (contact, channel, address) NOT IN (VALUES {rows}) ", [
        value for method in busy for value in method
    ]


# -- the engine's writes -----------------------------------------------------------------------


def apply_steps(
    conn: sqlite3.Connection,
    incident_id: int,
    version: int,
    steps: Sequence[StepDone],
    events: Sequence[TimelineEvent],
    next_due_us: int | None,
    unsnooze: bool,
    now_us: int,
    keep_failure: bool = False,
) -> list[str] | None:
    """Record steps (each once), their pages and events; None if the incident changed since
    the engine read it (its version moved), in which case nothing is written.
    ``keep_failure``: a containment failure's escalation found nobody on call and stays
    pending (``escalate_now`` is kept); otherwise it has been dealt with."""
    row = conn.execute(
        "SELECT episode FROM incidents WHERE id = ? AND version = ?", (incident_id, version)
    ).fetchone()
    if row is None:
        return None
    episode = row[0]
    # The pass's own events (a snooze that ended, a containment failure) cause its steps:
    # written first, they come first in the timeline, which keeps this order at one instant.
    for event in events:
        add_event(conn, incident_id, event)
    recorded: list[str] = []
    for step in steps:
        cur = conn.execute(
            "INSERT INTO steps (incident_id, episode, step, done_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (incident_id, episode, step.step, now_us),
        )
        if not cur.rowcount:
            continue  # already done (another node, or a retry): its pages exist
        recorded.append(step.step)
        if step.event is not None:
            add_event(conn, incident_id, step.event)
        add_pages(conn, incident_id, episode, step.pages, None, now_us)
    # The snooze's end stays recorded: the policy re-arms escalation from it.
    state_sql = ", state = 'triggered'" if unsnooze else ""
    failure_sql = "" if keep_failure else ", escalate_now = NULL"
    conn.execute(
        "UPDATE incidents SET next_due = ?, version = version + 1, updated_at = ?"  # noqa: S608 - fixed text
        f"{failure_sql}{state_sql} WHERE id = ?",
        (next_due_us, now_us, incident_id),
    )
    return recorded


# -- people's actions --------------------------------------------------------------------------


def transition(
    conn: sqlite3.Connection,
    incident_id: int,
    action: str,
    *,
    actor: str,
    via: str,
    now_us: int,
    until_us: int | None = None,
    text: str | None = None,
    assignee: str | None = None,
    pages: Sequence[NewPage] = (),
    once_only: Callable[[str | None], Collection[str]] | None = None,
    expect: Callable[[Incident], None] | None = None,
    resume: Callable[[Incident, frozenset[str], datetime], Sequence[StepDone]] | None = None,
) -> tuple[Incident, bool]:
    """Acknowledge, unacknowledge, resolve, snooze, unsnooze, reassign or note. Returns the
    incident after the change and whether anything changed: asking for the state the
    incident is in already (acknowledging or resolving twice, unacknowledging a triggered
    incident, unsnoozing one that is not snoozed) is not an error and not a second event;
    an action its state does not allow raises TransitionError. ``resume(incident, done,
    end)``: the steps an unsnooze takes at once, from the steps done in the episode."""
    incident = get_incident(conn, incident_id)
    if expect is not None:
        expect(incident)
    state = incident.state
    detail: dict[str, object] = {}
    if action == "note":
        if not text:
            raise TransitionError("a note needs text")
        _event(conn, incident_id, now_us, Event.NOTE, actor, {"text": text}, via)
        return incident, True
    if state is IncidentState.RESOLVED and action == "resolve":
        return _unchanged(conn, incident, now_us, actor, via, text)
    if state is IncidentState.RESOLVED and action != "reassign":
        raise StateConflict(f"incident {incident_id} is already resolved")
    if action == "acknowledge":
        # Whoever acknowledges is not paged again for it: their own later notifications
        # (a call after the SMS, a reassignment's) are dropped even when someone else
        # acknowledged first.
        own = _cancel_pages_to(conn, incident_id, actor, now_us, f"acknowledged by {actor}")
        if state is IncidentState.ACKNOWLEDGED:
            if incident.key.startswith(DRILL_KEY_PREFIX):
                # A drill wants every contact's answer, not only the first one.
                _event(conn, incident_id, now_us, Event.ACKNOWLEDGED, actor, {"drill": True}, via)
                return incident, True
            return _unchanged(conn, incident, now_us, actor, via, text)
        conn.execute(
            "UPDATE incidents SET state = 'acknowledged', acknowledged_at = ?1, "
            "acknowledged_by = ?2, snoozed_until = NULL, next_due = ?1, version = version + 1, "
            "first_acknowledged_by = CASE WHEN first_acknowledged_at IS NULL THEN ?2 "
            "ELSE first_acknowledged_by END, "
            "first_acknowledged_at = COALESCE(first_acknowledged_at, ?1), "
            "updated_at = ?1 WHERE id = ?3",
            (now_us, actor, incident_id),
        )
        detail["cancelled_pages"] = own + _cancel_pending(
            conn, incident_id, now_us, f"acknowledged by {actor}", resolve=False
        )
        kind = Event.ACKNOWLEDGED
    elif action == "unacknowledge":
        if state is IncidentState.TRIGGERED:
            return _unchanged(conn, incident, now_us, actor, via, text)
        if state is not IncidentState.ACKNOWLEDGED:  # snoozed: unack does not end a snooze
            raise StateConflict(f"incident {incident_id} is {state.value}, not acknowledged")
        # Escalation starts over from the top, as if it had just triggered; what is done
        # once (management told the incident has lasted) stays done.
        conn.execute(
            "UPDATE incidents SET state = 'triggered', triggered_at = ?, episode = episode + 1, "
            "lasting_since = COALESCE(lasting_since, triggered_at), "
            "acknowledged_at = NULL, acknowledged_by = NULL, next_due = ?, held_until = NULL, "
            "version = version + 1, updated_at = ? WHERE id = ?",
            (now_us, now_us, now_us, incident_id),
        )
        kept = list(once_only(incident.policy)) if once_only is not None else []
        _carry_steps(conn, incident_id, [*kept, *BREACH_STEPS])
        _carry_duration_levels(conn, incident_id, None, None)  # what management was told
        kind = Event.UNACKNOWLEDGED
    elif action == "resolve":
        conn.execute(
            "UPDATE incidents SET state = 'resolved', resolved_at = ?, resolved_by = ?, "
            "snoozed_until = NULL, next_due = ?, version = version + 1, updated_at = ? "
            "WHERE id = ?",
            (now_us, actor, now_us, now_us, incident_id),
        )
        detail["cancelled_pages"] = _cancel_pending(
            conn, incident_id, now_us, f"resolved by {actor}", resolve=True
        )
        detail["still_firing"] = incident.firing_count
        kind = Event.RESOLVED
    elif action == "snooze":
        if until_us is None or until_us <= now_us:
            raise TransitionError("snooze needs a time in the future")
        conn.execute(
            "UPDATE incidents SET state = 'snoozed', snoozed_until = ?, acknowledged_at = NULL, "
            "acknowledged_by = NULL, next_due = ?, version = version + 1, updated_at = ? "
            "WHERE id = ?",
            (until_us, now_us, now_us, incident_id),
        )
        detail["cancelled_pages"] = _cancel_pending(
            conn, incident_id, now_us, f"snoozed by {actor}", resolve=False, snooze=True
        )
        detail["until"] = from_us(until_us).isoformat()
        kind = Event.SNOOZED
    elif action == "unsnooze":
        if state is not IncidentState.SNOOZED:  # triggered or acknowledged: not snoozed
            return _unchanged(conn, incident, now_us, actor, via, text)
        _end_snooze(conn, incident, actor, via, now_us, text, resume)
        return get_incident(conn, incident_id), True
    elif action == "reassign":
        if not assignee:
            raise TransitionError("reassign needs a contact")
        conn.execute(
            "UPDATE incidents SET assignee = ?, version = version + 1, updated_at = ? WHERE id = ?",
            (assignee, now_us, incident_id),
        )
        detail["to"] = assignee
        # The one relieved (the owner before, else whoever hands it over) is not called
        # for it any more by what is still on its way to them; the escalation goes on.
        relieved = incident.assignee or actor
        if state is IncidentState.RESOLVED:
            pages = ()  # an owner for the review: nothing to wake anyone for
        elif relieved != assignee:
            reason = f"reassigned to {assignee}"
            detail["cancelled_pages"] = _cancel_pages_to(
                conn, incident_id, relieved, now_us, reason
            )
        # One step per reassignment: its pages are unique among themselves only. On an
        # incident nobody has acknowledged (triggered, snoozed), an acknowledgement drops
        # the ones still waiting (the new owner's later calls); on an acknowledged one they
        # go regardless, and the new owner's own acknowledgement drops them
        # (_cancel_pages_to).
        step = f"{REASSIGN_STEP}{now_us}"
        waits_for_ack = state is not IncidentState.ACKNOWLEDGED
        reassigned = [replace(p, step=step, cancel_on_ack=waits_for_ack) for p in pages]
        add_pages(conn, incident_id, incident.episode, reassigned, None, now_us)
        detail["pages"] = len(reassigned)
        kind = Event.REASSIGNED
    else:
        raise TransitionError(f"unknown action {action!r}")
    if text:
        detail["note"] = text
    _event(conn, incident_id, now_us, kind, actor, detail, via)
    return get_incident(conn, incident_id), True


def _end_snooze(
    conn: sqlite3.Connection,
    incident: Incident,
    actor: str,
    via: str,
    now_us: int,
    text: str | None,
    resume: Callable[[Incident, frozenset[str], datetime], Sequence[StepDone]] | None,
) -> None:
    """A snooze ended by hand ends as one that ran out (``apply_steps`` with ``unsnooze``):
    triggered again, the end kept in ``snoozed_until`` (escalation is re-armed from it),
    the reminder of the level reached recorded with its pages, and the engine due now for
    the rest; only its timeline entry names who ended it."""
    planned = incident.snoozed_until
    # A snooze already over that the engine has not seen yet ends at its own time: the
    # reminder's step is the one the engine would have taken, so it is not taken twice.
    end_us = now_us if planned is None else min(now_us, to_us(planned))
    done = frozenset(
        row[0]
        for row in conn.execute(
            "SELECT step FROM steps WHERE incident_id = ? AND episode = ?",
            (incident.id, incident.episode),
        )
    )
    steps = resume(incident, done, from_us(end_us)) if resume is not None else ()
    detail: dict[str, object] = {"until": None if planned is None else planned.isoformat()}
    if text:
        detail["note"] = text
    event = TimelineEvent(from_us(now_us), Event.SNOOZE_ENDED, actor, via, detail)
    # The containment failure an incident may carry is the engine's to page (keep_failure).
    apply_steps(conn, incident.id, incident.version, steps, [event], now_us, True, now_us, True)
    conn.execute("UPDATE incidents SET snoozed_until = ? WHERE id = ?", (end_us, incident.id))


def _unchanged(
    conn: sqlite3.Connection,
    incident: Incident,
    now_us: int,
    actor: str,
    via: str,
    text: str | None,
) -> tuple[Incident, bool]:
    """An action that finds the incident as it asks: nothing changes, but a note given with it
    is recorded (``resolve --note`` after someone else resolved must not lose the note)."""
    if text:
        _event(conn, incident.id, now_us, Event.NOTE, actor, {"text": text}, via)
    return incident, False


# -- the outbox --------------------------------------------------------------------------------


def claim_pages(
    conn: sqlite3.Connection, now_us: int, limit: int, busy: Sequence[tuple[str, str, str]] = ()
) -> list[Page]:
    """Mark due pages as sending (durably, before any provider call) and return them,
    skipping the ``busy`` (contact, channel, address) methods."""
    # A page, status update or recovery notice that waited (a retry, a rate limit) while
    # its incident resolved and fired again told of a trigger that is over: the new one
    # pages whoever is on call for it now, and its recovery notice tells them all.
    conn.execute(
        "UPDATE pages SET state = 'cancelled', error = ?, updated_at = ? "  # noqa: S608 - fixed text
        "WHERE state = 'queued' AND due_at <= ? AND EXISTS (SELECT 1 FROM incidents i "
        f"WHERE i.id = pages.incident_id AND {_TRIGGER_OVER})",
        (TRIGGER_ENDED, now_us, now_us),
    )
    skip, busy_params = _not_busy(busy)
    params: list[object] = [now_us, now_us, *busy_params, limit]
    rows = conn.execute(
        "UPDATE pages SET state = 'sending', attempts = attempts + 1, handed_at = NULL, "  # noqa: S608 - fixed text and placeholders
        "updated_at = ? "
        f"WHERE id IN (SELECT id FROM pages WHERE state = 'queued' AND due_at <= ? {skip}"
        f"ORDER BY due_at LIMIT ?) RETURNING {PAGE_COLUMNS}",
        params,
    ).fetchall()
    return sorted((page_from_row(r) for r in rows), key=lambda p: (p.due_at, p.id))


def finish_page(
    conn: sqlite3.Connection,
    page_id: int,
    state: PageState,
    now_us: int,
    *,
    provider_id: str | None = None,
    error: str | None = None,
    retry_at_us: int | None = None,
) -> bool:
    """Record a send's outcome; False (nothing recorded) for a page cancelled meanwhile (at
    its hand-over): it is not failed (nor re-routed) after that."""
    if retry_at_us is not None:
        cur = conn.execute(
            "UPDATE pages SET state = 'queued', due_at = ?, error = ?, updated_at = ? "
            "WHERE id = ? AND state = 'sending'",
            (retry_at_us, error, now_us, page_id),
        )
        _cancel_if_pointless(conn, [page_id], now_us)
        return cur.rowcount > 0
    sent_at = now_us if state in (PageState.SENT, PageState.DELIVERED) else None
    cur = conn.execute(
        "UPDATE pages SET state = ?, provider_id = COALESCE(?, provider_id), error = ?, "
        "sent_at = COALESCE(?, sent_at), updated_at = ? WHERE id = ? AND state != 'cancelled'",
        (state.value, provider_id, error, sent_at, now_us, page_id),
    )
    if not cur.rowcount:
        return False
    page = conn.execute(
        "SELECT incident_id, contact, channel, step FROM pages WHERE id = ?", (page_id,)
    ).fetchone()
    if page is not None and state in (PageState.SENT, PageState.FAILED):
        kind = Event.PAGE_SENT if state is PageState.SENT else Event.PAGE_FAILED
        detail: dict[str, object] = {
            "page": page_id,
            "contact": page[1],
            "channel": page[2],
            "step": page[3],
        }
        if error:
            detail["error"] = error
        _event(conn, page[0], now_us, kind, "responder", detail, via=page[2])
    return True


def readdress_pages(
    conn: sqlite3.Connection, page_ids: Sequence[int], address: str, now_us: int
) -> None:
    """Claimed pages go to their contact's address in force, not the one they were queued
    with."""
    conn.executemany(
        "UPDATE pages SET address = ?, updated_at = ? WHERE id = ? AND state = 'sending'",
        [(address, now_us, page_id) for page_id in page_ids],
    )


def hand_over(conn: sqlite3.Connection, page_ids: Sequence[int], now_us: int) -> list[int]:
    """The pages of one message are about to be handed to their channel: from now on, an
    interruption leaves their outcome unknown. An acknowledgement, snooze or resolve (or a
    re-fire) committed since they were claimed cancelled only the queued ones: those of
    these that lost their point are cancelled here as they would have been (``_POINTLESS``,
    which includes what such a change marked and a later one undid: ``_lose_point``).
    All or nothing: when any of them is cancelled, none is handed over and their ids are
    returned; the message was made with them, and the caller makes it again without them."""
    ids = list(dict.fromkeys(page_ids))
    if not ids:
        return []
    handing, handed, undoing, cancelling = _hand_over_sql(len(ids))
    if conn.execute(handing, [now_us, *ids]).rowcount == len(ids):
        return []  # the usual case: one statement
    going = {row[0] for row in conn.execute(handed, ids)}
    conn.execute(undoing, ids)
    conn.execute(cancelling, [now_us, TRIGGER_ENDED, *ids])
    return [page_id for page_id in ids if page_id not in going]


@functools.cache
def _hand_over_sql(count: int) -> tuple[str, str, str, str]:
    """``hand_over``'s statements for ``count`` pages: hand over those still going; which
    those were; take that back; cancel those that lost their point."""
    marks = ",".join("?" * count)
    pointless = (
        "EXISTS (SELECT 1 FROM incidents i "  # noqa: S608 - fixed text
        f"WHERE i.id = pages.incident_id AND {_POINTLESS})"
    )
    return (
        f"UPDATE pages SET handed_at = ? WHERE id IN ({marks}) AND state = 'sending' "  # noqa: S608 - fixed text and placeholders
        f"AND NOT {pointless}",
        f"SELECT id FROM pages WHERE id IN ({marks}) AND state = 'sending' "  # noqa: S608
        "AND handed_at IS NOT NULL",
        f"UPDATE pages SET handed_at = NULL WHERE id IN ({marks}) AND state = 'sending'",  # noqa: S608
        f"UPDATE pages SET state = 'cancelled', updated_at = ?, error = {_POINTLESS_ERROR} "  # noqa: S608
        f"WHERE id IN ({marks}) AND state = 'sending' AND {pointless}",
    )


def settle_interrupted(
    conn: sqlite3.Connection,
    now_us: int,
    page_ids: Sequence[int] | None = None,
    retry_at_us: int | None = None,
    exclude: Sequence[int] = (),
) -> list[Page]:
    """Pages left in 'sending' by a crash (all of them, at start, but those in ``exclude``:
    claimed since by this daemon) or by a delivery that failed midway (``page_ids``). One
    never handed to its channel reached nobody: it goes back to the queue (due at
    ``retry_at_us`` if later), its claim not counted as an attempt. For one handed over,
    whether the provider took it is unknown, and sending it again on the same route could
    page twice: it is marked failed ('outcome unknown') and returned, for the caller to
    re-route to the next channel or the backup."""
    only, params = "", list[object]()
    if page_ids is not None:
        only = f" AND id IN ({','.join('?' * len(page_ids))})"
        params = list(page_ids)
    if exclude:
        only += f" AND id NOT IN ({','.join('?' * len(exclude))})"
        params += list(exclude)
    requeued = [
        row[0]
        for row in conn.execute(
            "UPDATE pages SET state = 'queued', due_at = MAX(due_at, ?), "  # noqa: S608 - fixed text and placeholders
            "attempts = MAX(attempts - 1, 0), updated_at = ? "
            f"WHERE state = 'sending' AND handed_at IS NULL{only} RETURNING id",
            [retry_at_us or 0, now_us, *params],
        )
    ]
    _cancel_if_pointless(conn, requeued, now_us)
    rows = conn.execute(
        f"UPDATE pages SET state = 'failed', error = '{INTERRUPTED}', updated_at = ? "  # noqa: S608
        f"WHERE state = 'sending'{only} RETURNING {PAGE_COLUMNS}",
        [now_us, *params],
    ).fetchall()
    pages = [page_from_row(row) for row in rows]
    for page in pages:
        detail: dict[str, object] = {
            "page": page.id,
            "contact": page.contact,
            "channel": page.channel,
            "step": page.step,
            "error": INTERRUPTED,
        }
        _event(conn, page.incident_id, now_us, Event.PAGE_FAILED, "responder", detail, page.channel)
    return pages


def reroute_page(conn: sqlite3.Connection, page_id: int, reroute: Reroute, now_us: int) -> int:
    """Queue what ``reroute`` says for a page that failed or waits (in the caller's
    transaction); returns how many pages were new."""
    page = get_page(conn, page_id)
    if page is None or page.state is PageState.CANCELLED:
        return 0  # it lost its point: nobody else needs waking for it either
    failed_over_at, budget_rerouted_at, lost_point = conn.execute(
        "SELECT failed_over_at, budget_rerouted_at, lost_point FROM pages WHERE id = ?",
        (page_id,),
    ).fetchone()
    if lost_point is not None:
        return 0  # so it did on its way (``_lose_point``)
    incident = get_incident(conn, page.incident_id)
    siblings = step_pages(conn, page.incident_id, page.episode, page.step)
    # Each once, also when nobody was left: a failover, and the budget's first hold (after
    # a failover, someone has the page already).
    mark = "budget_rerouted_at" if reroute.free_only else "failed_over_at"
    done = failed_over_at is not None or (reroute.free_only and budget_rerouted_at is not None)
    pages, event = reroute(page, incident, siblings, done)
    if not done:
        conn.execute(f"UPDATE pages SET {mark} = ? WHERE id = ?", (now_us, page_id))  # noqa: S608
    if not pages:
        return 0
    return add_pages(conn, page.incident_id, page.episode, pages, event, now_us)


def get_page(conn: sqlite3.Connection, page_id: int) -> Page | None:
    row = conn.execute(
        f"SELECT {PAGE_COLUMNS} FROM pages WHERE id = ?",  # noqa: S608 - fixed text
        (page_id,),
    ).fetchone()
    return None if row is None else page_from_row(row)


def pages_by_provider_id(conn: sqlite3.Connection, provider_id: str) -> list[Page]:
    rows = conn.execute(
        f"SELECT {PAGE_COLUMNS} FROM pages WHERE provider_id = ? ORDER BY id",  # noqa: S608 - fixed text
        (provider_id,),
    ).fetchall()
    return [page_from_row(row) for row in rows]


def unconfirmed_sends(conn: sqlite3.Connection, channel: str, since_us: int) -> list[Page]:
    rows = conn.execute(
        f"SELECT {PAGE_COLUMNS} FROM pages "  # noqa: S608 - fixed text
        "WHERE sent_at >= ? AND state = 'sent' AND channel = ? AND provider_id IS NOT NULL "
        "ORDER BY sent_at, id",
        (since_us, channel),
    ).fetchall()
    return [page_from_row(row) for row in rows]


def step_pages(conn: sqlite3.Connection, incident_id: int, episode: int, step: str) -> list[Page]:
    return [
        page_from_row(row)
        for row in conn.execute(
            f"SELECT {PAGE_COLUMNS} FROM pages "  # noqa: S608 - fixed text
            "WHERE incident_id = ? AND episode = ? AND step = ? ORDER BY id",
            (incident_id, episode, step),
        )
    ]


def provider_status(
    conn: sqlite3.Connection, page_id: int, state: PageState, error: str | None, now_us: int
) -> bool:
    """A provider's later word on a sent page (delivered, or failed after all). Only moves a
    page forward: a late 'delivered' never revives a page already failed over."""
    cur = conn.execute(
        "UPDATE pages SET state = ?, error = COALESCE(?, error), updated_at = ? "
        "WHERE id = ? AND state IN ('sent', 'sending')",
        (state.value, error, now_us, page_id),
    )
    if cur.rowcount and state is PageState.FAILED:
        page = get_page(conn, page_id)
        if page is not None:
            detail: dict[str, object] = {
                "page": page_id,
                "contact": page.contact,
                "channel": page.channel,
                "step": page.step,
                "error": error or "failed",
            }
            _event(
                conn, page.incident_id, now_us, Event.PAGE_FAILED, "responder", detail, page.channel
            )
    return bool(cur.rowcount)


def add_pages(
    conn: sqlite3.Connection,
    incident_id: int,
    episode: int,
    pages: Sequence[NewPage],
    event: TimelineEvent | None,
    now_us: int,
) -> int:
    added = 0
    trigger_us = _trigger_of(conn, incident_id, episode)
    for page in pages:
        cur = conn.execute(
            "INSERT INTO pages (incident_id, episode, step, kind, contact, channel, address, "
            "backup, due_at, state, cancel_on_ack, created_at, updated_at, trigger_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (
                incident_id,
                episode,
                page.step,
                page.kind.value,
                page.contact,
                page.channel,
                page.address,
                page.backup,
                to_us(page.due_at),
                int(page.cancel_on_ack),
                now_us,
                now_us,
                trigger_us,
            ),
        )
        added += cur.rowcount
    if added and event is not None:
        add_event(conn, incident_id, event)
    return added


# When the incident's current trigger began (Incident.started), for ``i``.
_STARTED = "COALESCE(i.lasting_since, i.triggered_at)"
# A page, status update or recovery notice (row ``pages``) of a trigger that is over: its
# incident ``i`` resolved and fired again since it was made.
_TRIGGER_OVER = (
    f"pages.kind IN ('page', 'status', 'recovery') AND pages.trigger_at IS NOT {_STARTED}"
)


def _trigger_of(conn: sqlite3.Connection, incident_id: int, episode: int) -> int | None:
    """When the trigger of an episode began: the incident's, for its current episode; for
    an earlier one (a failover of a page that waited across a re-fire), that of the
    episode's pages already made."""
    row = conn.execute(
        f"SELECT {_STARTED} FROM incidents i WHERE i.id = ? AND i.episode = ?",  # noqa: S608
        (incident_id, episode),
    ).fetchone()
    if row is None:
        row = conn.execute(
            "SELECT trigger_at FROM pages WHERE incident_id = ? AND episode = ? LIMIT 1",
            (incident_id, episode),
        ).fetchone()
    return None if row is None else row[0]


# A page that reached its contact, or may have: what a reply by SMS can answer to. Pages
# still queued, held by a rate limit, cancelled or failed told nobody anything.
_REACHED = (
    "(p.state IN ('sent', 'delivered') OR (p.state = 'sending' AND p.handed_at IS NOT NULL) "
    "OR (p.state = 'failed' AND p.error LIKE '%outcome unknown%'))"
)


def open_incidents_paged_to(
    conn: sqlite3.Connection, contacts: Sequence[str]
) -> list[tuple[Incident, str]]:
    """Open incidents whose pages or status updates of their current trigger reached any of
    ``contacts`` (the contacts of one number), the one told of last first, each with the
    contact told of it last: what 'ACK' and 'ACK ALL' answer. One that resolved and fired
    again since is not: someone else may be on call for it now."""
    marks = ",".join("?" * len(contacts))
    rows = conn.execute(
        # SQLite takes a bare column (p.contact) from the row that gave the MAX().
        f"SELECT {INCIDENT_COLUMNS}, t.contact FROM incidents i JOIN "  # noqa: S608 - fixed text
        "(SELECT p.incident_id, p.trigger_at, p.contact, "
        "MAX(COALESCE(p.sent_at, p.created_at)) AS told_at "
        f"FROM pages p WHERE p.contact IN ({marks}) AND p.kind IN ('page', 'status', 'test') "
        f"AND {_REACHED} GROUP BY p.incident_id, p.trigger_at) t "
        f"ON t.incident_id = i.id AND t.trigger_at = {_STARTED} "
        "WHERE i.state IN ('triggered', 'snoozed', 'acknowledged') "
        "ORDER BY t.told_at DESC, i.id DESC LIMIT 100",
        list(contacts),
    ).fetchall()
    return [(incident_from_row(row), row[-1]) for row in rows]


def trigger_told(
    conn: sqlite3.Connection, contacts: Sequence[str], incident_id: int
) -> tuple[int, str] | None:
    """When the latest trigger of the incident that a page or status update told any of
    ``contacts`` of began, and which of them was told of it last; None if none was."""
    marks = ",".join("?" * len(contacts))
    row = conn.execute(
        "SELECT p.trigger_at, p.contact FROM pages p "  # noqa: S608 - fixed text
        f"WHERE p.incident_id = ? AND p.contact IN ({marks}) "
        f"AND p.kind IN ('page', 'status', 'test') AND {_REACHED} "
        "ORDER BY p.trigger_at DESC, COALESCE(p.sent_at, p.created_at) DESC, p.id DESC LIMIT 1",
        (incident_id, *contacts),
    ).fetchone()
    return None if row is None or row[0] is None else (row[0], row[1])


def send_times(
    conn: sqlite3.Connection, contact: str, channel: str, since_us: int, without_tests: bool
) -> list[int]:
    """When messages went to one contact method (a bundle of pages counts once); with
    ``without_tests``, those that held only drill pages left out."""
    return [
        row[0]
        for row in conn.execute(
            "SELECT DISTINCT sent_at FROM pages WHERE contact = ? AND channel = ? "
            "AND sent_at >= ? AND NOT (? AND kind = 'test') ORDER BY sent_at",
            (contact, channel, since_us, without_tests),
        )
    ]


def paid_send_times(conn: sqlite3.Connection, since_us: int) -> list[int]:
    """When SMS and calls were sent since a time, for the spend budget (a bundle once)."""
    return [
        int(sent_at)
        for _contact, _channel, sent_at in conn.execute(
            # INDEXED BY: the planner would rather scan the whole (contact, channel, sent_at)
            # index for the DISTINCT than seek to the last hour.
            "SELECT DISTINCT contact, channel, sent_at FROM pages "
            "INDEXED BY pages_sent_at WHERE channel IN ('sms', 'voice') AND sent_at >= ? "
            "ORDER BY sent_at",
            (since_us,),
        )
    ]


def retry_channel_now(conn: sqlite3.Connection, channel: str, now_us: int) -> int:
    # attempts > 0: tried and put back for a retry (a hold gives its claim back).
    cur = conn.execute(
        "UPDATE pages SET due_at = ?, updated_at = ? "
        "WHERE state = 'queued' AND channel = ? AND attempts > 0 AND due_at > ?",
        (now_us, now_us, channel, now_us),
    )
    return cur.rowcount


def hold_pages(
    conn: sqlite3.Connection, page_ids: Sequence[int], until_us: int, reason: str, now_us: int
) -> None:
    """Put claimed pages back in the queue until a limit allows them; not a failed attempt."""
    conn.executemany(
        "UPDATE pages SET state = 'queued', due_at = ?, error = ?, "
        "attempts = MAX(attempts - 1, 0), updated_at = ? WHERE id = ? AND state = 'sending'",
        [(until_us, reason, now_us, page_id) for page_id in page_ids],
    )
    _cancel_if_pointless(conn, page_ids, now_us)


# A page (row ``pages``) that lost its point, by what it is, given its incident ``i``: an
# escalation page on the unacknowledged clock once someone acknowledged, or snoozed (not a
# reassignment's: the new owner hears of it, snoozed or not); a page or status update once
# resolved; any page, status update or recovery notice of a trigger that is over; a page
# that lost it while out of the queue (``lost_point``: its contact acknowledged, or was
# relieved by a reassignment; an acknowledgement or snooze since undone). A management
# (duration) level's page, a status update while open, a recovery notice of its own
# trigger and a drill's test page still go. The same rules as the transitions apply to
# queued pages (``_cancel_pending``) and the reroutes to failed ones (deliver._Rerouter).
_GONE_WITH_STATE = (
    "(pages.kind = 'page' AND pages.cancel_on_ack = 1 AND (i.state = 'acknowledged' "
    f"OR (i.state = 'snoozed' AND pages.step NOT LIKE '{REASSIGN_STEP}%'))) "
    "OR (pages.kind IN ('page', 'status') AND i.state = 'resolved')"
)
_POINTLESS = f"({_GONE_WITH_STATE} OR ({_TRIGGER_OVER}) OR pages.lost_point IS NOT NULL)"
# Why it was cancelled (one parameter: TRIGGER_ENDED).
_POINTLESS_ERROR = (
    f"(SELECT CASE WHEN {_TRIGGER_OVER} THEN ? "  # noqa: S608
    f"WHEN {_GONE_WITH_STATE} THEN 'incident ' || i.state ELSE pages.lost_point END "
    "FROM incidents i WHERE i.id = pages.incident_id)"
)


def _cancel_if_pointless(conn: sqlite3.Connection, page_ids: Sequence[int], now_us: int) -> None:
    """Pages going back to the queue (a retry, a hold) that were being sent when their
    incident was acknowledged, snoozed or resolved: cancelled as that transition cancelled
    the queued ones (``_cancel_pending``), instead of going out after it; so are those
    whose trigger is over (``claim_pages``), with ``TRIGGER_ENDED``."""
    conn.executemany(
        f"UPDATE pages SET state = 'cancelled', updated_at = ?, error = {_POINTLESS_ERROR} "  # noqa: S608 - fixed text
        "WHERE id = ? AND state = 'queued' AND EXISTS (SELECT 1 FROM incidents i "
        f"WHERE i.id = pages.incident_id AND {_POINTLESS})",
        [(now_us, TRIGGER_ENDED, page_id) for page_id in page_ids],
    )


def queue_depth(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT COUNT(*) FROM pages WHERE state = 'queued'").fetchone()
    return int(row[0])


def first_alert_of(conn: sqlite3.Connection, incident_id: int) -> tuple[str, str, str] | None:
    """(labels, annotations, classification) JSON of the incident's first alert."""
    row = conn.execute(
        "SELECT labels, annotations, classification FROM alerts WHERE incident_id = ? "
        "ORDER BY id LIMIT 1",
        (incident_id,),
    ).fetchone()
    return None if row is None else (row[0], row[1], row[2])


def create_drill(
    conn: sqlite3.Connection,
    title: str,
    pages: Sequence[NewPage],
    actor: str,
    now_us: int,
    via: str = "api",
) -> int:
    """A drill is an incident of its own (category drill) that never escalates: its test pages
    go out at once, and acknowledgements come back through the usual doors."""
    cur = conn.execute(
        "INSERT INTO incidents (key, state, severity, category, policy, rule, title, opened_at, "
        "triggered_at, next_due, updated_at) "
        "VALUES (?, 'triggered', 'P3', ?, NULL, NULL, ?, ?, ?, NULL, ?)",
        (f"{DRILL_KEY_PREFIX}{now_us}", DRILL_CATEGORY, title, now_us, now_us, now_us),
    )
    incident_id = int(cur.lastrowid or 0)
    contacts = sorted({p.contact for p in pages})
    detail: dict[str, object] = {"contacts": contacts, "pages": len(pages)}
    _event(conn, incident_id, now_us, Event.DRILL, actor, detail, via)
    add_pages(conn, incident_id, 1, pages, None, now_us)
    return incident_id


def apply_batch(
    conn: sqlite3.Connection,
    batch: Sequence[
        tuple[int, int, Sequence[StepDone], Sequence[TimelineEvent], int | None, bool, bool]
    ],
    now_us: int,
) -> list[list[str] | None]:
    """``apply_steps`` for many incidents in one transaction: one commit for a whole pass."""
    return [
        apply_steps(conn, incident_id, version, steps, events, next_us, unsnooze, now_us, keep)
        for incident_id, version, steps, events, next_us, unsnooze, keep in batch
    ]

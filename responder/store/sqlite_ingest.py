"""The ingest write path: one alert of a webhook into its row, its incident and its
containment queue, run by the writer thread inside the batch's transaction (sqlite.py).

The busiest code of the daemon (every alert received runs it), so it is compiled with
mypyc where the install has a C compiler (setup.py): no classes here that tests or
callers patch, and nothing that mypyc cannot hold.
"""

from __future__ import annotations

import sqlite3

from responder.incident import Event
from responder.model import AlertStatus, Classification
from responder.store import sqlite_actions as actions
from responder.store import sqlite_heartbeats as heartbeats
from responder.store import sqlite_incidents as inc
from responder.store.base import IncomingAlert, IngestOutcome
from responder.store.sqlite_incidents import dumps as _dumps
from responder.store.sqlite_incidents import dumps_texts, to_us

# A firing copy of a resolved alert episode (same fingerprint and startsAt) that arrives
# this long after the resolve fires again; sooner, it is out of order and ignored. Longer
# than a webhook can wait in the daemon before it is stored (its deadline, 8 s), shorter
# than Alertmanager's group_wait (30 s by default) before a new group's first notice.
REFIRE_AFTER_RESOLVE_US = 20_000_000


def classification_document(c: Classification) -> dict[str, object]:
    """The classification as stored and shown by the API."""
    return {
        "severity": c.severity.value,
        "category": c.category,
        "rule": c.rule,
        "policy": c.policy,
        "actions": list(c.actions),
        "templates": dict(c.templates),
        "group_by": list(c.group_by) if c.group_by is not None else None,
        "labels": dict(c.extra_labels),
        "annotations": dict(c.extra_annotations),
        "target": (
            {"respond_s": c.target.respond_s, "resolve_s": c.target.resolve_s}
            if c.target is not None
            else None
        ),
        "heartbeat": c.heartbeat,
        "heartbeat_timeout_s": c.heartbeat_timeout_s,
        "hold_page_s": c.hold_page_s,
    }


class IngestCache:
    """What the writer remembers between ingest jobs, to do less work; never what is true.

    * The stored classification document, built once for a run of alerts that share their
      classification (alerts of one rule usually do).
    * Fingerprints seen firing lately: for those, a delivery is most likely a repeat and the
      row is updated first; for others it is most likely new and inserted first. Either
      order gives the same result, the wrong guess costs one statement that does nothing.
    """

    __slots__ = ("_classification", "_document", "_firing", "_text")

    FIRING_ENTRIES = 100_000  # forgotten all at once when full, then learnt again

    def __init__(self) -> None:
        self._classification: Classification | None = None
        self._document: dict[str, object] = {}
        self._text = ""
        self._firing: set[str] = set()

    def document(self, c: Classification) -> tuple[dict[str, object], str]:
        if c is not self._classification and c != self._classification:
            self._classification = c
            self._document = classification_document(c)
            self._text = _dumps(self._document)
        return self._document, self._text

    def probably_firing(self, fingerprint: str) -> bool:
        return fingerprint in self._firing

    def firing(self, fingerprint: str) -> None:
        if len(self._firing) >= self.FIRING_ENTRIES:
            self._firing.clear()
        self._firing.add(fingerprint)

    def ended(self, fingerprint: str) -> None:
        self._firing.discard(fingerprint)


class OpenIncidents:
    """Open incidents looked up by the ingest jobs of one batch (new alerts mostly join the
    same few: one SELECT saved per new alert, 5% of its store work). Valid while nothing
    changes an incident: ingest forgets them all when it opens, reopens, raises or resolves
    one, and ``_run_jobs`` after any other job and any rollback."""

    __slots__ = ("_found",)

    def __init__(self) -> None:
        self._found: dict[str, tuple[int, str]] = {}

    def get(self, conn: sqlite3.Connection, key: str) -> tuple[int, str] | None:
        found = self._found.get(key)
        if found is None:
            found = inc.open_incident(conn, key)
            if found is not None:
                self._found[key] = found
        return found

    def forget(self) -> None:
        self._found.clear()


def ingest_one(
    conn: sqlite3.Connection,
    incoming: IncomingAlert,
    now_us: int,
    reopen_us: int,
    cache: IngestCache,
    known: OpenIncidents,
    default_policy: str | None = None,
) -> tuple[IngestOutcome, bool]:
    """Store one alert; the flag says an incident's next due time moved earlier (opened,
    reopened, raised, resolved): the escalation engine should look again."""
    outcome, alert_id, incident_id, incident_severity = _store_alert(
        conn, incoming, now_us, cache, known
    )
    if alert_id is None:
        return outcome, False
    classification = incoming.decided()
    if classification.actions and outcome is not IngestOutcome.RESOLVED_UNSEEN:
        # Containment's work, durable with the alert: a crash before it runs loses nothing.
        trigger = "resolve" if outcome is IngestOutcome.RESOLVED else "fire"
        if outcome is not IngestOutcome.NEW:
            # A revived alert is a new generation: its actions run again ("fire#1").
            (revivals,) = conn.execute(
                "SELECT revivals FROM alerts WHERE id = ?", (alert_id,)
            ).fetchone()
            if revivals:
                trigger += f"#{revivals}"
        conn.execute(
            "INSERT INTO action_queue (alert_id, trigger, queued_at) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (alert_id, trigger, now_us),
        )
    if outcome is IngestOutcome.RESOLVED:
        known.forget()
        actions.alert_resolved(conn, alert_id, now_us)
        if incident_id is not None:
            return outcome, inc.alert_ended(
                conn, alert_id, incident_id, Event.ALERT_RESOLVED, now_us, incoming.source
            )
        return outcome, False
    if incoming.incident_key is None:
        if classification.heartbeat:
            alert = incoming.alert  # a new or revived episode of a heartbeat: watch it
            heartbeats.track(conn, alert.fingerprint, dumps_texts(alert.labels), now_us)
        return outcome, False
    document = cache.document(classification)[0]
    if incident_id is not None and incident_severity is not None:
        # A new alert, stored with the open incident it joins.
        raised = inc.join_incident(
            conn, incident_id, incident_severity, document, now_us, default_policy
        )
        if raised:
            known.forget()
        return outcome, raised
    known.forget()
    return outcome, inc.attach_alert(
        conn,
        alert_id,
        incoming.incident_key,
        incoming.alert.labels,
        document,
        now_us,
        reopen_us,
        none_open=outcome is IngestOutcome.NEW,  # _store_alert looked for one
        source=incoming.source,
        default_policy=default_policy,
    )


def _store_alert(
    conn: sqlite3.Connection,
    incoming: IncomingAlert,
    now_us: int,
    cache: IngestCache,
    known: OpenIncidents,
) -> tuple[IngestOutcome, int | None, int | None, str | None]:
    """Write the alert row. Returns the outcome; the row id when incidents must hear of it;
    the incident it belongs to (for a resolve, the alert's; for a new alert, the open
    incident it was stored with, None when incidents must place it); and, for a new alert
    stored with its incident, that incident's severity."""
    alert = incoming.alert
    if alert.status is AlertStatus.FIRING:
        annotations = dumps_texts(alert.annotations)
        fingerprint = alert.fingerprint
        if cache.probably_firing(fingerprint):
            if _repeat(conn, fingerprint, annotations, now_us):
                return IngestOutcome.REPEAT, None, None, None
            starts_us = to_us(alert.starts_at)
            stored = _insert_firing(conn, incoming, annotations, starts_us, now_us, cache, known)
        else:
            starts_us = to_us(alert.starts_at)
            stored = _insert_firing(conn, incoming, annotations, starts_us, now_us, cache, known)
            if stored is None and _repeat(conn, fingerprint, annotations, now_us):
                cache.firing(fingerprint)
                return IngestOutcome.REPEAT, None, None, None
        if stored is not None:
            cache.firing(fingerprint)
            return (IngestOutcome.NEW, *stored)
        # Same identity exists and is not firing: stale comes back to life. Resolved comes
        # back too once its resolve is older than REFIRE_AFTER_RESOLVE_S: Prometheus keeps an
        # alert's start while it stays active, so after Alertmanager resolved it by timeout
        # (Prometheus could not reach it) the alert fires again with the same startsAt. A
        # firing copy closer to the resolve is out of order (a request that waited in our
        # intake while the resolve went by) and is ignored. A heartbeat's copy is proof of
        # life in any order: the dead-man switch must see it (heartbeats.py).
        revived = conn.execute(
            "UPDATE alerts SET status = 'firing', ends_at = NULL, last_received = ?, "
            "receive_count = receive_count + 1, revivals = revivals + 1, updated_at = ? "
            "WHERE fingerprint = ? AND "
            "starts_at = ? AND (status = 'stale' OR "
            "(status = 'resolved' AND (? OR last_received <= ? OR last_received > ?))) "
            "RETURNING id",
            (
                now_us,
                now_us,
                fingerprint,
                starts_us,
                incoming.decided().heartbeat,
                now_us - REFIRE_AFTER_RESOLVE_US,
                now_us,  # recorded "later" than now: the clock stepped back since
            ),
        ).fetchone()
        if revived is not None:
            cache.firing(fingerprint)
            return IngestOutcome.REVIVED, revived[0], None, None
        return IngestOutcome.LATE, None, None, None

    cache.ended(alert.fingerprint)
    assert alert.ends_at is not None  # the parser guarantees an end time for resolved alerts
    starts_us = to_us(alert.starts_at)
    ends_us = to_us(alert.ends_at)
    # Resolve the open episode of this fingerprint; the resolve may carry an earlier startsAt
    # than the firing copy (Alertmanager keeps the earliest it saw), so match on fingerprint,
    # but never let an old resolve close an episode that started after it ended.
    resolved = conn.execute(
        "UPDATE alerts SET status = 'resolved', ends_at = ?, last_received = ?, "
        "receive_count = receive_count + 1, updated_at = ? "
        "WHERE id = (SELECT id FROM alerts WHERE fingerprint = ? AND status IN ('firing', 'stale') "
        "AND starts_at <= ? ORDER BY starts_at DESC LIMIT 1) RETURNING id, incident_id",
        (ends_us, now_us, now_us, alert.fingerprint, ends_us),
    ).fetchone()
    if resolved is not None:
        return IngestOutcome.RESOLVED, resolved[0], resolved[1], None
    cur = conn.execute(
        "UPDATE alerts SET last_received = ?, receive_count = receive_count + 1 "
        "WHERE id = (SELECT id FROM alerts WHERE fingerprint = ? AND status = 'resolved' "
        "ORDER BY starts_at DESC LIMIT 1)",
        (now_us, alert.fingerprint),
    )
    if cur.rowcount:
        return IngestOutcome.REPEAT_RESOLVED, None, None, None
    annotations = dumps_texts(alert.annotations)
    _insert_alert(
        conn, incoming, AlertStatus.RESOLVED, annotations, starts_us, ends_us, now_us, cache
    )
    return IngestOutcome.RESOLVED_UNSEEN, None, None, None


def _repeat(conn: sqlite3.Connection, fingerprint: str, annotations: str, now_us: int) -> bool:
    """The alert is firing already: count the delivery. False when it is not firing."""
    cur = conn.execute(
        "UPDATE alerts SET last_received = ?, receive_count = receive_count + 1, "
        "annotations = ?, updated_at = ? WHERE fingerprint = ? AND status = 'firing'",
        (now_us, annotations, now_us, fingerprint),
    )
    return cur.rowcount > 0


def _insert_firing(
    conn: sqlite3.Connection,
    incoming: IncomingAlert,
    annotations: str,
    starts_us: int,
    now_us: int,
    cache: IngestCache,
    known: OpenIncidents,
) -> tuple[int, int | None, str | None] | None:
    """Insert a firing alert unless its fingerprint is firing or its episode (fingerprint,
    startsAt) is stored. Returns the new row id with the open incident it was stored with
    and that incident's severity (None, None when incidents must place it); None when
    nothing was inserted."""
    incoming.decided()  # the incident key comes with the classification
    # Most new alerts join an open incident: stored with it at once, no second write.
    joins = None
    if incoming.incident_key is not None:
        joins = known.get(conn, incoming.incident_key)
    incident_id = None if joins is None else joins[0]
    cur = _insert_alert(
        conn, incoming, AlertStatus.FIRING, annotations, starts_us, None, now_us, cache, incident_id
    )
    if not cur.rowcount:
        return None
    assert cur.lastrowid is not None
    if joins is None:
        return cur.lastrowid, None, None
    return cur.lastrowid, joins[0], joins[1]


def _insert_alert(
    conn: sqlite3.Connection,
    incoming: IncomingAlert,
    status: AlertStatus,
    annotations: str,
    starts_us: int,
    ends_us: int | None,
    now_us: int,
    cache: IngestCache,
    incident_id: int | None = None,
) -> sqlite3.Cursor:
    """Insert an alert's first row, unless a unique index refuses it: its episode
    (fingerprint, startsAt) is stored, or (firing) its fingerprint is firing already."""
    alert = incoming.alert
    c = incoming.decided()
    return conn.execute(
        "INSERT INTO alerts (fingerprint, status, labels, annotations, starts_at, ends_at, "
        "generator_url, group_key, receiver, alertname, severity, category, rule, "
        "classification, first_received, last_received, receive_count, updated_at, "
        "incident_id, joined_at) "
        # ?15, the time of storing, is bound once for its four columns (each bound value
        # costs 0.1 µs); joined_at: joined as it was stored.
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?15, 1, ?15, "
        "?16, CASE WHEN ?16 IS NOT NULL THEN ?15 END) "
        "ON CONFLICT DO NOTHING",
        (
            alert.fingerprint,
            status.value,
            dumps_texts(alert.labels),
            annotations,
            starts_us,
            ends_us,
            alert.generator_url,
            incoming.group_key,
            incoming.receiver,
            alert.labels.get("alertname", ""),
            c.severity.value,
            c.category,
            c.rule,
            cache.document(c)[1],
            now_us,
            incident_id,
        ),
    )

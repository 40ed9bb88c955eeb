"""Retention: incidents resolved long ago, with everything recorded of them, and alerts of no
incident that ended long ago, are deleted in small batches (``storage.retention``).

What is still in use is never deleted: open incidents, firing alerts, alerts of a watched
heartbeat (the dead-man switch reads when it was last heard from them), and containment
runs still running, being checked, or holding a change not undone yet (its lift waiting, or
failed), with their alerts and incidents. An alert deleted this way that fires again later
is a new alert (not a revival of the old one): after that long, that is what it is.

The signed Twilio requests taken (SMS replies, keypresses) are forgotten after the same
time. Twilio's signature never expires, so no bound is safe by itself; this one is the
time the operator keeps the incidents such a replay would be about, a year by default,
longer than proxy logs and backups (where a request gets captured) are usually kept, and a
row per reply costs next to nothing. A captured request posted again after that long acts
again.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

# A containment run whose alert and incident must stay: the engine still has work with it
# (running, checking, an undo due), or a change it made waits for the alert's resolve to
# be undone, unless that change (an nft set element) expired before the cutoff (?1), or
# its lift failed: the change is still in place, the daemon's own alert (ContainmentLiftFailed)
# names the run and is re-sent from it, and 'responder actions lift RUN' needs it.
_BUSY_RUN = (
    "(r.state = 'running' OR r.check_due IS NOT NULL "
    "OR r.undo_state IN ('wait', 'postponed', 'failed') "
    "OR (r.undo IS NOT NULL AND r.undo_state IS NULL AND r.undo_hold_s IS NOT NULL "
    "AND COALESCE(json_extract(r.undo, '$.until'), 9e18) >= ?1))"
)


def prune(conn: sqlite3.Connection, before_us: int, limit: int) -> tuple[int, int]:
    """Delete up to ``limit`` incidents resolved before ``before_us`` (and their alerts,
    timeline, steps, pages and containment records), then up to ``limit`` alerts of no
    incident that ended before it. Returns (incidents, alerts) deleted; fewer than
    ``limit`` of each means nothing more is due."""
    incidents = [
        row[0]
        for row in conn.execute(
            "SELECT i.id FROM incidents i WHERE i.opened_at < ?1 AND i.state = 'resolved' "  # noqa: S608 - fixed text
            "AND i.resolved_at < ?1 "
            "AND NOT EXISTS (SELECT 1 FROM alerts a WHERE a.incident_id = i.id "
            "AND a.status = 'firing') "
            "AND NOT EXISTS (SELECT 1 FROM action_runs r WHERE (r.incident_id = i.id "
            f"OR r.alert_id IN (SELECT id FROM alerts WHERE incident_id = i.id)) AND {_BUSY_RUN}) "
            "LIMIT ?2",
            (before_us, limit),
        )
    ]
    alerts = [
        row[0]
        for row in conn.execute(
            "SELECT a.id FROM alerts a WHERE a.incident_id IS NULL AND a.status != 'firing' "  # noqa: S608 - fixed text
            "AND a.last_received < ?1 "
            "AND a.fingerprint NOT IN "
            "(SELECT fingerprint FROM heartbeats WHERE forgotten_at IS NULL) "
            "AND NOT EXISTS (SELECT 1 FROM action_runs r "
            f"WHERE r.alert_id = a.id AND {_BUSY_RUN}) "
            "LIMIT ?2",
            (before_us, limit),
        )
    ]
    if incidents:
        _delete_incidents(conn, incidents)
    if alerts:
        _delete_alerts(conn, alerts)
    return len(incidents), len(alerts)


def forget_twilio_requests(conn: sqlite3.Connection, before_us: int, limit: int) -> int:
    """Forget up to ``limit`` Twilio requests taken before ``before_us``; returns how many."""
    cur = conn.execute(
        "DELETE FROM twilio_requests WHERE sid IN "
        "(SELECT sid FROM twilio_requests WHERE taken_at < ? LIMIT ?)",
        (before_us, limit),
    )
    return cur.rowcount


def _marks(ids: Sequence[int]) -> str:
    return ",".join("?" * len(ids))


def _delete_incidents(conn: sqlite3.Connection, ids: Sequence[int]) -> None:
    marks = _marks(ids)
    alert_ids = [
        row[0]
        for row in conn.execute(
            f"SELECT id FROM alerts WHERE incident_id IN ({marks})",  # noqa: S608 - marks only
            list(ids),
        )
    ]
    conn.execute(f"DELETE FROM action_runs WHERE incident_id IN ({marks})", list(ids))  # noqa: S608
    for table in ("timeline", "steps", "pages"):
        conn.execute(f"DELETE FROM {table} WHERE incident_id IN ({marks})", list(ids))  # noqa: S608
    if alert_ids:
        _delete_alerts(conn, alert_ids)
    conn.execute(f"DELETE FROM incidents WHERE id IN ({marks})", list(ids))  # noqa: S608


def _delete_alerts(conn: sqlite3.Connection, ids: Sequence[int]) -> None:
    marks = _marks(ids)
    for table in ("action_queue", "action_runs"):
        conn.execute(f"DELETE FROM {table} WHERE alert_id IN ({marks})", list(ids))  # noqa: S608
    conn.execute(f"DELETE FROM alerts WHERE id IN ({marks})", list(ids))  # noqa: S608

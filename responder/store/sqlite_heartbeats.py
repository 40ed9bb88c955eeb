"""The SQL of the dead-man switch (``responder.heartbeats``): which heartbeats exist, when
each last showed life, which were found missing or forgotten, and when the watch last ran.

A heartbeat's last sign of life is read from its alert rows, not written on each delivery:
a repeat of a firing alert (what Alertmanager sends most) is never classified, so the
webhook path does not know it is a heartbeat. Firing and stale rows were last alive when
last received; a resolved row when Alertmanager said it ended (a resolve of Watchdog means
Prometheus stopped sending it), or its last receipt if that is earlier.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping

from responder.store.base import HeartbeatRow
from responder.store.sqlite_incidents import from_us

# Heartbeat ``h``'s last sign of life from its alert rows, and the last firing copy
# received (a resolve is no return: Alertmanager's end time may come after it went quiet).
_SELECT = (
    "SELECT h.fingerprint, h.labels, h.first_seen, h.missing_since, h.forgotten_at, "
    "max(CASE WHEN a.status = 'resolved' "
    "THEN min(coalesce(a.ends_at, a.last_received), a.last_received) "
    "ELSE a.last_received END), "
    "max(CASE WHEN a.status != 'resolved' THEN a.last_received END) "
    "FROM heartbeats h LEFT JOIN alerts a ON a.fingerprint = h.fingerprint"
)
_GROUP = " GROUP BY h.fingerprint"


def track(conn: sqlite3.Connection, fingerprint: str, labels: str, now_us: int) -> None:
    """A heartbeat alert started firing (a new episode): watch it from now on, forgotten
    or not (a Prometheus retired and then brought back)."""
    conn.execute(
        "INSERT INTO heartbeats (fingerprint, labels, first_seen) VALUES (?, ?, ?) "
        "ON CONFLICT (fingerprint) DO UPDATE SET labels = excluded.labels, forgotten_at = NULL",
        (fingerprint, labels, now_us),
    )


def remember(conn: sqlite3.Connection, fingerprint: str, forgotten_us: int) -> None:
    """Watch a forgotten heartbeat again (that forget, not a later one)."""
    conn.execute(
        "UPDATE heartbeats SET forgotten_at = NULL WHERE fingerprint = ? AND forgotten_at = ?",
        (fingerprint, forgotten_us),
    )


def all_rows(conn: sqlite3.Connection) -> list[HeartbeatRow]:
    query = _SELECT + _GROUP + " ORDER BY h.first_seen, h.fingerprint"
    return [_row(r) for r in conn.execute(query)]


def set_missing(conn: sqlite3.Connection, fingerprint: str, since_us: int | None) -> bool:
    cur = conn.execute(
        "UPDATE heartbeats SET missing_since = ? WHERE fingerprint = ?", (since_us, fingerprint)
    )
    return cur.rowcount > 0


def forget(conn: sqlite3.Connection, fingerprint: str, now_us: int) -> HeartbeatRow | None:
    """Mark a heartbeat forgotten (until it is heard again); the row as it is now. Its
    missing mark stays until its HeartbeatMissing alert is resolved (``set_missing``)."""
    cur = conn.execute(
        "UPDATE heartbeats SET forgotten_at = ? WHERE fingerprint = ?", (now_us, fingerprint)
    )
    if not cur.rowcount:
        return None
    query = _SELECT + " WHERE h.fingerprint = ?" + _GROUP
    return _row(conn.execute(query, (fingerprint,)).fetchone())


def track_many(
    conn: sqlite3.Connection, found: list[tuple[str, str]], now_us: int, signature: str
) -> None:
    """Watch these firing alerts (fingerprint, labels JSON) that the rules whose signature
    is given call heartbeats; ones watched already are left as they are."""
    conn.executemany(
        "INSERT INTO heartbeats (fingerprint, labels, first_seen) VALUES (?, ?, ?) "
        "ON CONFLICT (fingerprint) DO NOTHING",
        [(fingerprint, labels, now_us) for fingerprint, labels in found],
    )
    set_adopted_for(conn, signature)


def unwatched_firing(conn: sqlite3.Connection, own_prefix: str) -> list[tuple[str, str]]:
    """Firing alerts not watched as heartbeats, but the daemon's own (whose fingerprints
    start with ``own_prefix``): (fingerprint, labels JSON)."""
    return conn.execute(
        "SELECT fingerprint, labels FROM alerts WHERE status = 'firing' "
        "AND fingerprint NOT IN (SELECT fingerprint FROM heartbeats) "
        "AND substr(fingerprint, 1, length(?1)) != ?1",
        (own_prefix,),
    ).fetchall()


def adopted_for(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT adopted_for FROM watch_state WHERE id = 1").fetchone()
    return None if row is None else row[0]


def set_adopted_for(conn: sqlite3.Connection, signature: str) -> None:
    conn.execute("UPDATE watch_state SET adopted_for = ? WHERE id = 1", (signature,))


def started(
    conn: sqlite3.Connection, now_us: int, keep_us: int
) -> tuple[list[tuple[int, int]], str | None]:
    """The daemon starts: the time since its last check was downtime (from 0 when no check
    was ever recorded). Returns the downtimes a watched heartbeat's silence may reach back
    over, and the rules signature of the last adoption (``set_adopted_for``)."""
    row = conn.execute("SELECT last_check FROM watch_state WHERE id = 1").fetchone()
    down_from = 0 if row is None or row[0] is None else int(row[0])
    deaf(conn, down_from, now_us)
    return forget_downtimes(conn, now_us, keep_us)[1], adopted_for(conn)


def forget_downtimes(
    conn: sqlite3.Connection, now_us: int, keep_us: int
) -> tuple[int, list[tuple[int, int]]]:
    """Delete the downtimes more than ``keep_us`` of listening followed: a silence reaching
    back further is longer than any heartbeat timeout, downtimes or not. Returns how many
    went, and the downtimes kept."""
    listened, cursor, deleted = 0, now_us, 0
    for down, up in conn.execute(
        "SELECT down_from, up_at FROM watch_downtime ORDER BY up_at DESC"
    ).fetchall():
        listened += max(cursor - up, 0)
        if listened > keep_us:
            deleted = conn.execute("DELETE FROM watch_downtime WHERE up_at <= ?", (up,)).rowcount
            break
        cursor = min(cursor, down)
    downtimes = conn.execute("SELECT down_from, up_at FROM watch_downtime ORDER BY up_at")
    return deleted, downtimes.fetchall()


def deaf(conn: sqlite3.Connection, down_from: int, up_at: int) -> None:
    """The watch heard nothing from ``down_from`` to ``up_at``, now; its last check is now."""
    if down_from < up_at:
        conn.execute(
            "INSERT INTO watch_downtime (down_from, up_at) VALUES (?, ?)", (down_from, up_at)
        )
    checked(conn, up_at)


def checked(conn: sqlite3.Connection, now_us: int) -> None:
    conn.execute(
        "INSERT INTO watch_state (id, last_check) VALUES (1, ?) "
        "ON CONFLICT (id) DO UPDATE SET last_check = excluded.last_check",
        (now_us,),
    )


def _row(
    row: tuple[str, str, int, int | None, int | None, int | None, int | None],
) -> HeartbeatRow:
    labels: Mapping[str, str] = json.loads(row[1])
    return HeartbeatRow(
        fingerprint=row[0],
        labels=labels,
        first_seen=from_us(row[2]),
        missing_since=None if row[3] is None else from_us(row[3]),
        forgotten_at=None if row[4] is None else from_us(row[4]),
        alive_until=None if row[5] is None else from_us(row[5]),
        heard_firing=None if row[6] is None else from_us(row[6]),
    )

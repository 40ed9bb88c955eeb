"""Containment SQL for the SQLite engine: the work queue, the run records and the guards'
state. A run row is written (with the guards' state that counts it) before its process
starts; the unique key (alert, action, trigger) makes a repeated webhook or a restart unable
to start the same action for the same alert twice."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from responder.contain.orphans import ProcessIdentity
from responder.incident import Event
from responder.store.base import QueuedAlert, RemovedByHand, RunRow
from responder.store.migrations import CHANGE_KEY, SHARED_LIFT
from responder.store.sqlite_incidents import dumps

_RUN_COLUMNS = (
    "run_id, alert_id, incident_id, action, target, trigger, state, outcome, audit, undo, "
    "undo_state, undo_due, check_due, started_at, finished_at"
)


def _run(row: Sequence[Any]) -> RunRow:
    return RunRow(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        row[6],
        row[7],
        json.loads(row[8]),
        json.loads(row[9]) if row[9] else None,
        row[10],
        row[11],
        row[12],
        row[13],
        row[14],
    )


def _event(
    conn: sqlite3.Connection,
    incident_id: int | None,
    now_us: int,
    kind: Event,
    detail: dict[str, Any],
    actor: str = "responder",
) -> None:
    if incident_id is None:
        return
    conn.execute(
        "INSERT INTO timeline (incident_id, at, kind, actor, via, detail) "
        "VALUES (?, ?, ?, ?, 'containment', ?)",
        (incident_id, now_us, kind.value, actor, dumps(detail)),
    )


def queued(conn: sqlite3.Connection, after_id: int, limit: int) -> list[QueuedAlert]:
    """Queued work with ids above ``after_id`` (the engine's high-water mark: rows it has
    already taken are not read again while it works on them)."""
    rows = conn.execute(
        "SELECT q.id, q.alert_id, q.trigger, a.incident_id, a.fingerprint, a.status, a.labels, "
        "a.annotations, a.classification FROM action_queue q JOIN alerts a ON a.id = q.alert_id "
        "WHERE q.id > ? ORDER BY q.id LIMIT ?",
        (after_id, limit),
    ).fetchall()
    return [
        QueuedAlert(
            r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]), json.loads(r[7]), json.loads(r[8])
        )
        for r in rows
    ]


def dequeue(
    conn: sqlite3.Connection, queue_id: int, now_us: int, release_hold: int | None = None
) -> None:
    """The alert's containment is done; ``release_hold`` (an incident id: its actions were
    dry runs only) ends a rule's hold_page in the same write."""
    conn.execute("DELETE FROM action_queue WHERE id = ?", (queue_id,))
    if release_hold is not None:
        _release_hold(conn, release_hold, now_us)


def load_guards(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT state FROM guard_state WHERE id = 1").fetchone()
    return None if row is None else str(row[0])


def save_guards(conn: sqlite3.Connection, state: str, now_us: int) -> None:
    conn.execute(
        "INSERT INTO guard_state (id, state, updated_at) VALUES (1, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
        (state, now_us),
    )


def record_run(
    conn: sqlite3.Connection,
    *,
    run_id: str,
    alert_id: int,
    incident_id: int | None,
    action: str,
    target: str,
    trigger: str,
    state: str,
    audit: dict[str, Any],
    guards: Callable[[], str] | None,
    event: Event,
    detail: dict[str, Any],
    now_us: int,
    escalate: str | None = None,
    release_hold: bool = False,
) -> bool:
    """Write the run before anything starts; False if this alert already ran this action.
    ``escalate`` (a refused parameter) pages the next level in the same transaction;
    ``release_hold`` (a guard stopped the run) ends a rule's hold_page: no containment is
    working, so the first page goes now."""
    cur = conn.execute(
        "INSERT INTO action_runs (run_id, alert_id, incident_id, action, target, trigger, state, "
        "audit, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (run_id, alert_id, incident_id, action, target, trigger, state, dumps(audit), now_us),
    )
    if not cur.rowcount:
        return False
    conn.execute(
        f"UPDATE action_runs SET change_key = {CHANGE_KEY}, shared_lift = {SHARED_LIFT} "  # noqa: S608
        "WHERE run_id = ?",
        (run_id,),
    )
    if guards is not None:
        save_guards(conn, guards(), now_us)
    _event(conn, incident_id, now_us, event, detail)
    if escalate is not None:
        escalate_incident(conn, incident_id, escalate, now_us)
    if release_hold:
        _release_hold(conn, incident_id, now_us)
    return True


def _release_hold(conn: sqlite3.Connection, incident_id: int | None, now_us: int) -> None:
    """No containment is at work for the incident (a guard stopped its run, or it
    failed): a rule's hold_page ends, and the first page goes now."""
    if incident_id is None:
        return
    conn.execute(
        "UPDATE incidents SET next_due = ?, held_until = NULL, version = version + 1, "
        "updated_at = ? WHERE id = ? AND state = 'triggered' AND next_due > ?",
        (now_us, now_us, incident_id, now_us),
    )


def finish_run(
    conn: sqlite3.Connection,
    *,
    run_id: str,
    outcome: str,
    audit: dict[str, Any],
    undo: dict[str, Any] | None,
    undo_hold_s: int | None,
    undo_at_us: int | None,
    check_due_us: int | None,
    guards: Callable[[], str],
    escalate: str | None,
    now_us: int,
    release_hold: bool = False,
) -> None:
    """The run's outcome, in one write with the guards' state; ``escalate`` pages the next
    level, ``release_hold`` (the kill switch stopped it, or it failed) ends a rule's
    hold_page."""
    row = conn.execute(
        "UPDATE action_runs SET state = 'done', outcome = ?, audit = ?, undo = ?, "
        "undo_hold_s = ?, undo_state = ?, undo_due = ?, check_due = ?, finished_at = ? "
        "WHERE run_id = ? RETURNING incident_id, alert_id",
        (
            outcome,
            dumps(audit),
            dumps(undo) if undo is not None else None,
            undo_hold_s,
            "wait" if undo_at_us is not None else None,
            undo_at_us,
            check_due_us,
            now_us,
            run_id,
        ),
    ).fetchone()
    save_guards(conn, guards(), now_us)
    incident_id = None if row is None else row[0]
    if row is not None and undo is not None:
        _supersede(conn, run_id, row[1], now_us)
    if row is not None and undo is not None and undo_hold_s is not None:
        # The alert may have resolved while the action ran: its hold-down starts now.
        status = conn.execute("SELECT status FROM alerts WHERE id = ?", (row[1],)).fetchone()
        if status is not None and status[0] == "resolved":
            alert_resolved(conn, row[1], now_us)
    _event(conn, incident_id, now_us, Event.ACTION_FINISHED, audit)
    if escalate is not None:
        escalate_incident(conn, incident_id, escalate, now_us)
    if release_hold:
        _release_hold(conn, incident_id, now_us)


def escalate_incident(
    conn: sqlite3.Connection, incident_id: int | None, reason: str, now_us: int
) -> None:
    """Containment failed: the timeline says so, and an incident nobody has taken on
    (triggered, snoozed) pages its next level now, with the reason in the page."""
    if incident_id is None:
        return
    # Once an episode: a second action failing for the same incident says so on the
    # timeline, but does not page yet another level.
    escalated = conn.execute(
        "SELECT 1 FROM timeline t JOIN incidents i ON i.id = t.incident_id "
        "WHERE t.incident_id = ? AND t.kind = ? AND t.at >= i.triggered_at LIMIT 1",
        (incident_id, Event.CONTAINMENT_FAILED.value),
    ).fetchone()
    if escalated is None:
        conn.execute(
            "UPDATE incidents SET escalate_now = ?, next_due = ?, held_until = NULL, "
            "version = version + 1, updated_at = ? WHERE id = ? "
            "AND state IN ('triggered', 'snoozed')",
            (reason[:500], now_us, now_us, incident_id),
        )
    _event(conn, incident_id, now_us, Event.CONTAINMENT_FAILED, {"reason": reason[:2000]})


# Undo states of a change still in force: waiting for its alert's resolve (none yet), for
# the hold-down after it ('wait'), or again for a resolve after the alert fired anew
# within the hold-down ('postponed').
_IN_FORCE = "(undo_state IS NULL OR undo_state IN ('wait', 'postponed'))"


def alert_resolved(conn: sqlite3.Connection, alert_id: int, now_us: int) -> None:
    """Undos of the runs for this alert, and for earlier episodes of it (its fingerprint)
    whose undo was postponed when it fired again, wait out their hold-down from now; one
    that waits for its expiry (an iptables block) runs at whichever comes first."""
    conn.execute(
        "UPDATE action_runs SET undo_state = 'wait', undo = json_remove(undo, '$.held'), "  # noqa: S608 - _IN_FORCE is a constant
        "undo_due = MIN(?1 + undo_hold_s * 1000000, "
        "COALESCE(json_extract(undo, '$.at'), 9e18)) WHERE alert_id IN "
        "(SELECT b.id FROM alerts a JOIN alerts b ON b.fingerprint = a.fingerprint "
        "WHERE a.id = ?2) "
        f"AND undo IS NOT NULL AND undo_hold_s IS NOT NULL AND {_IN_FORCE}",
        (now_us, alert_id),
    )


def interrupt_running(conn: sqlite3.Connection, now_us: int) -> list[RunRow]:
    """At start: runs a stopped daemon left 'running' are interrupted, never started again,
    and escalated (nobody knows whether they helped) in the same transaction: a crash
    between the mark and the escalation would leave the run interrupted and nobody told,
    as the next start only escalates the runs it finds still 'running'."""
    rows = conn.execute(
        f"UPDATE action_runs SET state = 'interrupted', outcome = 'interrupted', "  # noqa: S608
        f"finished_at = ? WHERE state = 'running' RETURNING {_RUN_COLUMNS}",
        (now_us,),
    ).fetchall()
    runs = [_run(r) for r in rows]
    for run in runs:
        detail = {"run_id": run.run_id, "action": run.action, "target": run.target}
        _event(conn, run.incident_id, now_us, Event.ACTION_INTERRUPTED, detail)
        _lift_at_expiry(conn, run)
        _lift_on_resolve(conn, run, now_us)
        reason = f"{run.action} was interrupted by a restart: outcome unknown"
        escalate_incident(conn, run.incident_id, reason, now_us)
    return runs


_PROCESS_KEY = "boot_id = ? AND pgid = ? AND start_ticks = ?"


def _key(identity: ProcessIdentity) -> tuple[str, int, int]:
    return identity.boot_id, identity.pgid, identity.start_ticks


def record_process(
    conn: sqlite3.Connection, identity: ProcessIdentity, run_id: str, argv0: str, now_us: int
) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO action_processes "
        "(boot_id, pgid, start_ticks, run_id, argv0, started_at) VALUES (?, ?, ?, ?, ?, ?)",
        (*_key(identity), run_id, argv0, now_us),
    )


def forget_process(conn: sqlite3.Connection, identity: ProcessIdentity) -> None:
    conn.execute(f"DELETE FROM action_processes WHERE {_PROCESS_KEY}", _key(identity))  # noqa: S608


def recorded_processes(conn: sqlite3.Connection) -> list[tuple[ProcessIdentity, str, str]]:
    rows = conn.execute(
        "SELECT boot_id, pgid, start_ticks, run_id, argv0 FROM action_processes ORDER BY started_at"
    ).fetchall()
    return [
        (ProcessIdentity(pgid, ticks, boot), run, argv0) for boot, pgid, ticks, run, argv0 in rows
    ]


def process_stopped(
    conn: sqlite3.Connection,
    identity: ProcessIdentity,
    run_id: str,
    detail: dict[str, Any],
    now_us: int,
) -> None:
    forget_process(conn, identity)
    # A run runs one process at a time: at most one group of it to stop.
    row = conn.execute(
        "UPDATE action_runs SET audit = json_set(audit, '$.stopped_at_start', json(?)) "
        "WHERE run_id = ? RETURNING incident_id",
        (dumps(detail), run_id),
    ).fetchone()
    if row is None:
        return  # a process of a lift run by another action, under the lift's own id
    _event(conn, row[0], now_us, Event.ACTION_PROCESS_STOPPED, {"run_id": run_id, **detail})


def _lift_at_expiry(conn: sqlite3.Connection, run: RunRow) -> None:
    """An interrupted iptables block may be in place, and nothing else would ever lift it:
    its lift, recorded with the run before it started, is due at the block's expiry. Each
    attempt the run may have made inserted a rule: as many lifts (the lift stops at the
    first that finds no rule left)."""
    planned = run.audit.get("undo") or {}
    argv, at = planned.get("argv"), planned.get("at")
    if not argv or not at:
        return
    at_us = int(datetime.fromisoformat(at).timestamp() * 1_000_000)
    env = (run.audit.get("request") or {}).get("env") or {}
    times = int(planned.get("attempts") or 1)
    # No attempt is known to have inserted (the run was cut off): finding no rule to delete
    # is then "nothing to lift", not a failed lift that pages, as for a timed-out run.
    undo = {
        "argv": {"argv": argv, "env": env},
        "action": None,
        "block_tool": True,  # only the built-in block's lift has an expiry
        "at": at_us,
        "times": times,
        "maybe": True,
    }
    conn.execute(
        "UPDATE action_runs SET undo = ?, undo_state = 'wait', undo_due = ? WHERE run_id = ?",
        (dumps(undo), at_us, run.run_id),
    )


def _lift_on_resolve(conn: sqlite3.Connection, run: RunRow, now_us: int) -> None:
    """An interrupted run of an action with an undo (a command or another action) may have
    made its change, as an attempt that timed out may have: its lift, planned when the run
    was recorded, waits for the alert's resolve and the hold-down as a finished run's does
    (at once if the alert resolved already). Block-address runs are left to their expiry
    (the kernel's for nft; ``_lift_at_expiry`` for iptables)."""
    planned = run.audit.get("undo") or {}
    if run.audit.get("kind") == "block-address" or not planned.get("on_resolve", True):
        return
    if planned.get("action"):
        undo: dict[str, Any] = {"argv": None, "action": planned["action"]}
    elif planned.get("argv"):
        request = planned.get("request") or {"argv": planned["argv"]}
        undo = {"argv": request, "action": None}
    else:
        return
    hold_s = int(float(planned.get("hold_down_s") or 0))
    conn.execute(
        "UPDATE action_runs SET undo = ?, undo_hold_s = ?, undo_state = NULL, undo_due = NULL "
        "WHERE run_id = ?",
        (dumps(undo), hold_s, run.run_id),
    )
    _supersede(conn, run.run_id, run.alert_id, now_us)
    status = conn.execute("SELECT status FROM alerts WHERE id = ?", (run.alert_id,)).fetchone()
    if status is not None and status[0] == "resolved":
        alert_resolved(conn, run.alert_id, now_us)


# Undo states of a lift that has ended with nothing left for it to do ('failed' is not one:
# what the run changed may still be in place), each with what it means for an operator who
# asks for the lift again ('removed_by_hand' says who and why: ``_how_ended``).
_HOW_ENDED = {
    "done": "its undo ran",
    "nothing": "there was nothing to lift",
    "expired": "the block expired by itself",
    "cancelled": "another run's lift of the same change took its place",
    "superseded": "the change was made again, and the later run's lift took its place",
}
_LIFT_OVER = (*_HOW_ENDED, "removed_by_hand")


def _how_ended(undo_state: str, undo: dict[str, Any]) -> str:
    """Why a run's lift cannot be asked for: it has ended, and how."""
    removed = undo.get("removed") or {}
    if undo_state == "removed_by_hand":
        how = f"the change was recorded as removed by hand by {removed.get('by')}"
        return f"{how}: {removed.get('reason')}"
    return f"its lift has ended already ({undo_state}): {_HOW_ENDED[undo_state]}"


def _find_run(conn: sqlite3.Connection, run_id: str) -> tuple[str, tuple[Any, ...] | None, str]:
    """The run an operator names by its id or a unique start of it (8 characters or more,
    like git's short hashes): its full id and row (run_id, state, undo, undo_state,
    incident_id, action), or the id as given, None and why none fits."""
    run_id = run_id.strip().lower()
    upper = run_id + "g"  # ids are hex: every id that starts with run_id sorts below this
    rows = conn.execute(
        "SELECT run_id, state, undo, undo_state, incident_id, action FROM action_runs "
        "WHERE run_id = ?1 OR (length(?1) >= 8 AND run_id >= ?1 AND run_id < ?2) LIMIT 2",
        (run_id, upper),
    ).fetchall()
    exact = [r for r in rows if r[0] == run_id]
    if exact:
        rows = exact
    if not rows:
        return run_id, None, "no such run"
    if len(rows) > 1:
        return run_id, None, "more than one run's id starts so; give more of it"
    return str(rows[0][0]), tuple(rows[0]), ""


def lift_now(conn: sqlite3.Connection, run_id: str, by: str, now_us: int) -> tuple[str, str | None]:
    """An operator lifts a run's change now, whatever it waits for (a resolve, a hold-down,
    another alert, the block's expiry), or again after it failed: the lift is due at once
    and ``due_undos`` hands it to the engine without its usual checks. ``run_id`` may be a
    unique start of the id (8 characters or more). Returns the run's id and None when the
    lift is due, else why it cannot be."""
    run_id, row, missing = _find_run(conn, run_id)
    if row is None:
        return run_id, missing
    _, state, undo, undo_state, incident_id, action = row
    if state == "running":
        return run_id, "the run is still running; lift it once it has finished"
    if undo is None:
        return run_id, "the run has no lift (no undo declared, or it changed nothing)"
    if undo_state in _LIFT_OVER:
        return run_id, _how_ended(undo_state, json.loads(undo))
    conn.execute(
        "UPDATE action_runs SET undo = json_remove(json_set(undo, '$.manual', ?), '$.held'), "
        "undo_state = 'wait', undo_due = ? WHERE run_id = ?",
        (by, now_us, run_id),
    )
    detail = {"run_id": run_id, "action": action, "undo": "requested", "by": by}
    detail["reason"] = "lifted by hand"
    _event(conn, incident_id, now_us, Event.ACTION_UNDONE, detail)
    return run_id, None


def removed_by_hand(
    conn: sqlite3.Connection,
    run_id: str,
    by: str,
    reason: str,
    now_us: int,
    under_way: Sequence[str] = (),
) -> RemovedByHand:
    """An operator records that a run's change is gone (removed by hand, or its lift can
    never succeed: the undo action or its tool removed): its lift ends as
    'removed_by_hand', with who and why, and nothing runs. For a lift that failed, or is
    still to come (the operator got there first). In the same write: the timeline of the
    run's incident says so, and other runs' lifts of the very same change, to come or
    failed, stand down. The run's own alert (ContainmentLiftFailed), if it has one, is
    resolved by the engine; ``alerted_lifts`` lists it until it is, should the daemon
    stop first. ``under_way``: the runs whose lifts the engine is running now."""
    run_id, row, missing = _find_run(conn, run_id)
    if row is None:
        return RemovedByHand(run_id, missing, False, None)
    _, state, undo, undo_state, incident_id, action = row
    if state == "running":
        refused = "the run is still running; record its change as removed once it has finished"
        return RemovedByHand(run_id, refused, False, None)
    if undo is None:
        refused = "the run has no lift (no undo declared, or it changed nothing): nothing to record"
        return RemovedByHand(run_id, refused, False, None)
    if undo_state == "removed_by_hand":
        return RemovedByHand(run_id, None, False, _run_row(conn, run_id))
    if undo_state in _LIFT_OVER:
        return RemovedByHand(run_id, _how_ended(undo_state, json.loads(undo)), False, None)
    if run_id in under_way:
        refused = "its lift is running now; the incident's timeline will show how it ended"
        return RemovedByHand(run_id, refused, False, None)
    removed = {"by": by, "reason": reason, "at": now_us}
    found = conn.execute(
        "UPDATE action_runs SET undo_state = 'removed_by_hand', "  # noqa: S608 - constant
        "undo = json_set(json_remove(undo, '$.held'), '$.removed', json(?)) "
        f"WHERE run_id = ? RETURNING {_RUN_COLUMNS}",
        (dumps(removed), run_id),
    ).fetchone()
    run = _run(found)
    detail = {"run_id": run_id, "action": action, "undo": "removed_by_hand", "by": by}
    detail["reason"] = reason
    _event(conn, incident_id, now_us, Event.ACTION_UNDONE, detail, actor=by)
    why = f"the same change was removed by hand (run {run_id})"
    _others_stand_down(conn, run, by, why, now_us)
    _failed_lifts_ended(conn, run, why, now_us)
    return RemovedByHand(run_id, None, True, run)


def _run_row(conn: sqlite3.Connection, run_id: str) -> RunRow:
    row = conn.execute(
        f"SELECT {_RUN_COLUMNS} FROM action_runs WHERE run_id = ?",  # noqa: S608 - constant
        (run_id,),
    ).fetchone()
    return _run(row)


def _others_stand_down(
    conn: sqlite3.Connection, run: RunRow, by: str | None, why: str, now_us: int
) -> None:
    """A run's change was lifted by hand (or recorded as removed by hand): other runs'
    lifts of the very same change still to come have nothing left to undo, so they stand
    down."""
    _same_change_stands_down(conn, run, _LIFT_TO_COME, why, now_us, by=by)


def _same_change_stands_down(
    conn: sqlite3.Connection,
    run: RunRow,
    which: str,
    why: str,
    now_us: int,
    *,
    by: str | None = None,
) -> None:
    """Other runs' lifts (``e``, those that SQL condition ``which`` picks) of the very same
    change as ``run``'s (for an nft block, any lift of the same set element) end as
    'cancelled', ``why`` in their timeline."""
    others = conn.execute(
        "UPDATE action_runs SET undo_state = 'cancelled' WHERE run_id IN ("  # noqa: S608
        "SELECT e.run_id FROM action_runs n JOIN action_runs e ON e.run_id != n.run_id "
        f"AND ({_same_lift('e', 'n')} OR (json_extract(n.undo, '$.shared') "
        "AND json_extract(e.undo, '$.argv.argv') = json_extract(n.undo, '$.argv.argv'))) "
        f"WHERE n.run_id = ? AND {which}) "
        "RETURNING run_id, incident_id, action",
        (run.run_id,),
    ).fetchall()
    for other, other_incident, other_action in others:
        detail: dict[str, Any] = {"run_id": other, "action": other_action, "undo": "cancelled"}
        if by is not None:
            detail["by"] = by
        detail["reason"] = why
        _event(conn, other_incident, now_us, Event.ACTION_UNDONE, detail)


# SQL: a waiting lift the lift lane may take (run ``r``): none of the same action and target
# is under way (the runs in the JSON list :busy, the lift itself among them), and while the
# kill switch holds lifts (:manual_only) only one asked for by hand.
_LIFT_FREE = (
    "NOT EXISTS (SELECT 1 FROM action_runs b WHERE b.run_id IN "
    "(SELECT value FROM json_each(:busy)) AND b.action = r.action AND b.target = r.target) "
    "AND (NOT :manual_only OR json_extract(r.undo, '$.manual') IS NOT NULL)"
)


def due_undos(
    conn: sqlite3.Connection,
    now_us: int,
    limit: int,
    busy: Sequence[str] = (),
    *,
    manual_only: bool = False,
) -> list[tuple[RunRow, bool]]:
    """Runs whose undo is due, each with whether its alert (by fingerprint) fires again, so
    that the hold-down is over for nothing. An undo due at the block's expiry is never
    stopped so; one due after a hold-down whose alert fires again waits for that expiry.
    ``busy``: the runs whose lifts are under way; ``manual_only``: the kill switch holds
    the others (see _LIFT_FREE)."""
    rows = conn.execute(
        f"SELECT {_RUN_COLUMNS} FROM action_runs r WHERE undo_state = 'wait' "  # noqa: S608 - constants
        f"AND undo_due <= :now AND {_LIFT_FREE} ORDER BY undo_due LIMIT :limit",
        {"now": now_us, "limit": limit, "busy": dumps(list(busy)), "manual_only": manual_only},
    ).fetchall()
    result: list[tuple[RunRow, bool]] = []
    for row in rows:
        run = _run(row)
        until = (run.undo or {}).get("until")
        if (run.undo or {}).get("shared") and until is not None and until <= now_us:
            # The kernel let the set element go at its timeout: nothing is left to lift
            # (deleting it would fail, and say containment failed).
            detail = {"run_id": run.run_id, "action": run.action, "undo": "expired"}
            detail["reason"] = "the block expired by itself"
            finish_undo(conn, run.run_id, "expired", detail, now_us)
            continue
        if (run.undo or {}).get("manual"):
            result.append((run, False))  # an operator asked for it: no hold, no hand-over
            continue
        expires_us = (run.undo or {}).get("at")
        if expires_us is not None and run.undo_due is not None and run.undo_due >= expires_us:
            result.append((run, False))  # an iptables block's expiry: nothing holds it longer
            continue
        if (run.undo or {}).get("shared") and _held_by_another(conn, run, now_us):
            detail = {"run_id": run.run_id, "action": run.action, "undo": "cancelled"}
            detail["reason"] = "another run's block on the same address is still in force"
            finish_undo(conn, run.run_id, "cancelled", detail, now_us)
            continue
        if not (run.undo or {}).get("shared") and _same_change_in_force(conn, run.run_id):
            detail = {"run_id": run.run_id, "action": run.action, "undo": "cancelled"}
            detail["reason"] = "another run made the same change; its own lift undoes it"
            finish_undo(conn, run.run_id, "cancelled", detail, now_us)
            continue
        if _wanted_by_another_alert(conn, run, now_us):
            _hold_for_another_alert(conn, run, now_us)
            continue
        refired = conn.execute(
            "SELECT 1 FROM alerts b JOIN alerts a ON a.fingerprint = b.fingerprint "
            "WHERE a.id = ? AND b.status = 'firing' LIMIT 1",
            (run.alert_id,),
        ).fetchone()
        if refired is not None and expires_us is not None:
            conn.execute(
                "UPDATE action_runs SET undo_due = ? WHERE run_id = ?", (expires_us, run.run_id)
            )
            continue
        result.append((run, refired is not None))
    return result


def _supersede(conn: sqlite3.Connection, run_id: str, alert_id: int, now_us: int) -> None:
    """The run ``run_id`` made its change again for an alert that fired anew (a revival, a
    new episode) while an earlier run's lift of the very same change still waited (for a
    resolve, a hold-down, or postponed): the new run's own lift replaces it, so it is lifted
    once. Only an identical lift command, and never an iptables one: each iptables run
    inserts a rule of its own, which its own lift must delete."""
    rows = conn.execute(
        "UPDATE action_runs SET undo_state = 'superseded' WHERE run_id IN ("  # noqa: S608
        f"SELECT e.run_id FROM action_runs n JOIN action_runs e ON {_same_lift('e', 'n')} "
        "JOIN alerts a ON a.id = e.alert_id JOIN alerts b ON b.id = ?2 "
        f"AND b.fingerprint = a.fingerprint WHERE n.run_id = ?1 AND {_LIFT_TO_COME}) "
        "RETURNING run_id, incident_id, action",
        (run_id, alert_id),
    ).fetchall()
    for earlier, incident_id, action in rows:
        detail = {"run_id": earlier, "action": action, "undo": "superseded", "by": run_id}
        detail["reason"] = "the alert fired again and the change was made again"
        _event(conn, incident_id, now_us, Event.ACTION_UNDONE, detail)


def _same_lift(e: str, n: str) -> str:
    """SQL: runs ``e`` and ``n`` (aliases of action_runs) made the same change, which one
    lift undoes for both (migrations.CHANGE_KEY). Never an iptables block: each run inserts
    a rule of its own, which its own lift must delete."""
    return (
        f"{e}.change_key = {n}.change_key AND {e}.run_id != {n}.run_id "
        f"AND {e}.shared_lift AND {n}.shared_lift"
    )


# A change whose lift is still to come, by ``e``'s undo state: waiting for its alert's
# resolve (none yet), for the hold-down after it ('wait'), or again for a resolve after the
# alert fired anew ('postponed').
_LIFT_TO_COME = (
    "e.undo IS NOT NULL AND (e.undo_state IN ('wait', 'postponed') "
    "OR (e.undo_state IS NULL AND e.undo_hold_s IS NOT NULL))"
)


def _same_change_in_force(conn: sqlite3.Connection, run_id: str) -> bool:
    """Another run made the very change this run's lift would undo (two alerts that put the
    same backend into maintenance), and its own lift is still to come: that lift undoes it,
    later; lifting now would undo it under the other alert."""
    row = conn.execute(
        "SELECT 1 FROM action_runs n JOIN action_runs e "  # noqa: S608 - constant fragments
        f"ON {_same_lift('e', 'n')} WHERE n.run_id = ? AND {_LIFT_TO_COME} LIMIT 1",
        (run_id,),
    ).fetchone()
    return row is not None


def _wanted_by_another_alert(conn: sqlite3.Connection, run: RunRow, now_us: int) -> bool:
    """Another alert (another fingerprint) asked for the same change and still needs it: it
    fires (or went stale), or resolved less than this run's hold-down ago. Its own run was
    skipped (a cooldown, the target busy with this run), failed, or is still running, so it
    has no lift of its own to hand over to: this run's change stays until it is done. An
    iptables block too (the other alert's address stays blocked), but never past the
    block's expiry."""
    row = conn.execute(
        "SELECT 1 FROM action_runs n JOIN alerts na ON na.id = n.alert_id "
        "JOIN action_runs e ON e.change_key = n.change_key AND e.run_id != n.run_id "
        "AND e.state != 'rejected' AND e.outcome IS NOT 'dry_run' "
        "JOIN alerts ea ON ea.id = e.alert_id AND ea.fingerprint != na.fingerprint "
        "WHERE n.run_id = ?1 AND (ea.status != 'resolved' "
        "OR ea.updated_at > ?2 - COALESCE(n.undo_hold_s, 0) * 1000000) LIMIT 1",
        (run.run_id, now_us),
    ).fetchone()
    return row is not None


def _held_by_another(conn: sqlite3.Connection, run: RunRow, now_us: int) -> bool:
    """Another run made the same change (the same lift argv), it has not expired, and its
    own lift is still to come."""
    row = conn.execute(
        "SELECT 1 FROM action_runs WHERE run_id != ? AND undo IS NOT NULL "  # noqa: S608
        f"AND {_IN_FORCE} "
        "AND json_extract(undo, '$.until') > ? "
        "AND json_extract(undo, '$.argv.argv') = json_extract(?, '$.argv.argv') LIMIT 1",
        (run.run_id, now_us, dumps(run.undo)),
    ).fetchone()
    return row is not None


def _hold_for_another_alert(conn: sqlite3.Connection, run: RunRow, now_us: int) -> None:
    """Look again after another hold-down (the other alert may resolve meanwhile, or fire
    for days: one query per hold-down). The timeline says so once."""
    conn.execute(
        "UPDATE action_runs SET undo = json_set(undo, '$.held', 1), "
        "undo_due = MIN(? + MAX(COALESCE(undo_hold_s, 0), 60) * 1000000, "
        "COALESCE(json_extract(undo, '$.at'), 9e18)) WHERE run_id = ?",
        (now_us, run.run_id),
    )
    if not (run.undo or {}).get("held"):
        detail = {"run_id": run.run_id, "action": run.action, "undo": "held"}
        detail["reason"] = "another alert that asked for the same change still fires"
        _event(conn, run.incident_id, now_us, Event.ACTION_UNDONE, detail)


def start_undo(conn: sqlite3.Connection, run_id: str, now_us: int) -> bool:
    """A lift's process is about to start. The mark stays until the lift's outcome is
    written: a lift that finds it was cut off (a crash, the shutdown's grace period) and
    may have done its work before. False, and no mark, when the lift is no longer waiting:
    since the lane read it as due, an operator recorded its change as removed by hand, or
    another run's lift ended it. Then it must not run (its outcome would overwrite that)."""
    found = conn.execute(
        "UPDATE action_runs SET undo = json_set(undo, '$.lifting', ?) "
        "WHERE run_id = ? AND undo_state = 'wait' RETURNING 1",
        (now_us, run_id),
    ).fetchone()
    return found is not None


def hold_undo(
    conn: sqlite3.Connection, run_id: str, removed: int, detail: dict[str, Any], now_us: int
) -> None:
    """A lift stopped by the kill switch before its next attempt waits again (still due:
    it runs once the switch is released, or by hand), with how many of its rules it has
    deleted (``removed``): it goes on from there. No outcome: it did not end."""
    row = conn.execute(
        "UPDATE action_runs SET undo = json_remove(json_set(undo, '$.removed', ?), '$.lifting') "
        "WHERE run_id = ? AND undo_state = 'wait' RETURNING incident_id",
        (removed, run_id),
    ).fetchone()
    if row is not None:
        _event(conn, row[0], now_us, Event.ACTION_UNDONE, detail)


def finish_undo(
    conn: sqlite3.Connection,
    run_id: str,
    state: str,
    detail: dict[str, Any],
    now_us: int,
    escalate: str | None = None,
) -> bool:
    """Record a lift's outcome. With ``escalate`` (a failed lift): when the run's incident
    is open (not resolved), it is escalated and True returned; otherwise the timeline still
    says so, the run is marked ``alerted`` (the first failure's time, kept by a later one),
    and False tells the engine to raise its own alert, as nobody would be paged."""
    if state == "postponed":
        # Only a lift still waiting: a run that made the change again may have superseded
        # it since the engine read it (then the new run's lift is the one to come), and an
        # operator may have asked to lift it by hand meanwhile (then it goes now).
        row = conn.execute(
            "UPDATE action_runs SET undo_state = ?, undo = json_remove(undo, '$.held') "  # noqa: S608 - constants
            "WHERE run_id = ? AND undo_state = 'wait' AND json_extract(undo, '$.manual') IS NULL "
            f"RETURNING {_RUN_COLUMNS}",
            (state, run_id),
        ).fetchone()
        if row is None:
            return False
    else:
        row = conn.execute(
            "UPDATE action_runs SET undo_state = ?, undo = json_remove(undo, '$.lifting') "  # noqa: S608 - constants
            f"WHERE run_id = ? RETURNING {_RUN_COLUMNS}",
            (state, run_id),
        ).fetchone()
    run = None if row is None else _run(row)
    _event(conn, None if run is None else run.incident_id, now_us, Event.ACTION_UNDONE, detail)
    if run is not None and state == "done" and (run.undo or {}).get("manual"):
        by = (run.undo or {}).get("manual")
        why = f"the same change was lifted by hand (run {run.run_id})"
        _others_stand_down(conn, run, by, why, now_us)
    if run is not None and state == "done":
        _failed_lifts_ended(conn, run, f"the same change was lifted (run {run.run_id})", now_us)
    elif run is not None and state == "nothing":
        # Nothing of the change is in place (a shared nft element found gone): the failed
        # lifts of the very same change have nothing left to lift either.
        why = f"the same change is no longer in place (run {run.run_id} found nothing to lift)"
        _failed_lifts_ended(conn, run, why, now_us)
    if run is None or escalate is None:
        return False
    escalate_incident(conn, run.incident_id, escalate, now_us)
    incident = None
    if run.incident_id is not None:
        incident = conn.execute(
            "SELECT state FROM incidents WHERE id = ?", (run.incident_id,)
        ).fetchone()
    if incident is not None and incident[0] != "resolved":
        return True
    conn.execute(
        "UPDATE action_runs SET undo = json_set(undo, '$.alerted', "
        "COALESCE(json_extract(undo, '$.alerted'), ?), '$.alerted_reason', ?) "
        "WHERE run_id = ? AND undo IS NOT NULL",
        (now_us, escalate, run.run_id),
    )
    return False


def _failed_lifts_ended(conn: sqlite3.Connection, run: RunRow, why: str, now_us: int) -> None:
    """A lift of a change is done (or found nothing to lift), or the change is recorded as
    removed by hand: other runs' failed lifts of the very same change (an earlier run whose
    lift failed, the change made again by a later run) have nothing left in place, so they
    stand down, and their own alerts resolve (``alerted_lifts``). Left 'failed', their
    alerts were sent again for ever."""
    which = "e.undo IS NOT NULL AND e.undo_state = 'failed'"
    _same_change_stands_down(conn, run, which, why, now_us)


def alerted_lifts(conn: sqlite3.Connection) -> list[RunRow]:
    """Failed lifts the daemon raised its own alert for, still failed: their alerts are
    sent again (a crash may have come between the mark and the alert; and, unrenewed, the
    stale sweep would take one for over while the change is still in place). Also those
    whose lift has ended since (another run's lift of the same change, a crash between
    the lift and its alert's resolve) while their alert still fires: it is resolved."""
    rows = conn.execute(
        f"SELECT {_RUN_COLUMNS} FROM action_runs r "  # noqa: S608
        "WHERE json_extract(undo, '$.alerted') IS NOT NULL AND (undo_state = 'failed' "
        f"OR (undo_state IN {_LIFT_OVER!r} AND EXISTS (SELECT 1 FROM alerts a "
        "WHERE a.fingerprint = 'lift-failed:' || r.run_id AND a.status = 'firing'))) "
        "ORDER BY started_at"
    ).fetchall()
    return [_run(row) for row in rows]


def due_checks(conn: sqlite3.Connection, now_us: int, limit: int) -> list[tuple[RunRow, str]]:
    """'alert resolves within' checks whose deadline passed, with the alert's status now
    ('gone' for an alert no longer stored)."""
    rows = conn.execute(
        f"SELECT {_RUN_COLUMNS} FROM action_runs WHERE check_due IS NOT NULL "  # noqa: S608
        "AND check_due <= ? ORDER BY check_due LIMIT ?",
        (now_us, limit),
    ).fetchall()
    result: list[tuple[RunRow, str]] = []
    for row in rows:
        run = _run(row)
        status = conn.execute("SELECT status FROM alerts WHERE id = ?", (run.alert_id,)).fetchone()
        result.append((run, status[0] if status else "gone"))
    return result


def finish_check(
    conn: sqlite3.Connection,
    run_id: str,
    verified: bool | None,
    reason: str,
    now_us: int,
    guards: Callable[[], str] | None = None,
) -> None:
    """Record an 'alert resolves within' verdict: verified, failed (escalates), or None for
    unknown (the alert went stale): the run keeps the outcome it ended with. ``guards``:
    the guards' state that counts the verdict (the breaker), in the same transaction, so
    that a crash leaves both or neither."""
    outcome = {True: "ok", False: "check_failed", None: None}[verified]
    row = conn.execute(
        "UPDATE action_runs SET check_due = NULL, outcome = COALESCE(?, outcome) "
        "WHERE run_id = ? RETURNING incident_id, action",
        (outcome, run_id),
    ).fetchone()
    if guards is not None:
        save_guards(conn, guards(), now_us)
    if row is None:
        return
    incident_id, action = row
    detail = {"run_id": run_id, "action": action, "check": reason}
    if verified is None:
        _event(conn, incident_id, now_us, Event.CONTAINMENT_UNVERIFIED, detail)
    elif verified:
        _event(conn, incident_id, now_us, Event.CONTAINMENT_VERIFIED, detail)
    else:
        escalate_incident(conn, incident_id, f"{action}: {reason}", now_us)


def runs(conn: sqlite3.Connection, limit: int) -> list[RunRow]:
    rows = conn.execute(
        f"SELECT {_RUN_COLUMNS} FROM action_runs ORDER BY started_at DESC LIMIT ?",  # noqa: S608
        (limit,),
    ).fetchall()
    return [_run(r) for r in rows]


def latest_failure(conn: sqlite3.Connection, incident_id: int) -> str | None:
    """Why containment failed for this incident, for the page that escalates it."""
    row = conn.execute(
        "SELECT detail FROM timeline WHERE incident_id = ? AND kind = 'containment_failed' "
        "ORDER BY id DESC LIMIT 1",
        (incident_id,),
    ).fetchone()
    return None if row is None else str(json.loads(row[0]).get("reason", ""))


def next_check_due(conn: sqlite3.Connection) -> int | None:
    """The earliest 'alert resolves within' deadline."""
    row = conn.execute(
        "SELECT MIN(check_due) FROM action_runs WHERE check_due IS NOT NULL"
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def next_lift_due(
    conn: sqlite3.Connection, busy: Sequence[str] = (), *, manual_only: bool = False
) -> int | None:
    """The earliest due time of a lift the lift lane may take (as in ``due_undos``)."""
    row = conn.execute(
        f"SELECT MIN(undo_due) FROM action_runs r WHERE undo_state = 'wait' AND {_LIFT_FREE}",  # noqa: S608 - constant
        {"busy": dumps(list(busy)), "manual_only": manual_only},
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def recent_runs(conn: sqlite3.Connection, since_us: int) -> list[tuple[Any, ...]]:
    """Finished and skipped-free runs started since a time, for the guards' history."""
    return conn.execute(
        "SELECT run_id, action, target, started_at, outcome, finished_at, state FROM action_runs "
        "WHERE started_at >= ? AND state IN ('done', 'dry_run', 'interrupted')",
        (since_us,),
    ).fetchall()

"""Versioned schema migrations. Append only: a released migration is never edited.

The version applied is kept in SQLite's ``user_version``; each list entry is one version.
Times are integer microseconds since the epoch (exact and sortable).
"""

# A containment run's change, from the audit it is recorded with (its planned undo and its
# parameters): its action and target, its lift (the undo command with its values, or the
# undo action) and its parameter values, without where each came from (a label or the
# declared default give the same change). An iptables block's lift deletes that run's own
# rule, so its key names no command: "own rule". NULL when no undo is planned. Migration 13
# fills the column with it: changing it needs a migration that fills the column anew.
CHANGE_KEY = (
    "(CASE WHEN json_extract(audit, '$.undo') IS NULL THEN NULL ELSE json_array(action, target, "
    "CASE WHEN json_extract(audit, '$.undo.at') IS NULL THEN COALESCE("
    "json_extract(audit, '$.undo.argv'), json_extract(audit, '$.undo.action')) "
    "ELSE 'own rule' END, "
    "(SELECT json_group_array(json_array(json_extract(p.value, '$.name'), "
    "json_extract(p.value, '$.value'))) FROM json_each(audit, '$.params') p)) END)"
)
# One lift undoes the change for every run with its key (not so for an iptables rule).
SHARED_LIFT = "(json_extract(audit, '$.undo.at') IS NULL)"

SQLITE_MIGRATIONS: list[list[str]] = [
    # 1: alerts as received, one row per episode (fingerprint, startsAt).
    [
        """
        CREATE TABLE alerts (
            id INTEGER PRIMARY KEY,
            fingerprint TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('firing', 'resolved', 'stale')),
            labels TEXT NOT NULL,
            annotations TEXT NOT NULL,
            starts_at INTEGER NOT NULL,
            ends_at INTEGER,
            generator_url TEXT NOT NULL,
            group_key TEXT NOT NULL,
            receiver TEXT NOT NULL,
            alertname TEXT NOT NULL,
            severity TEXT NOT NULL,
            category TEXT NOT NULL,
            rule TEXT,
            classification TEXT NOT NULL,
            first_received INTEGER NOT NULL,
            last_received INTEGER NOT NULL,
            receive_count INTEGER NOT NULL,
            updated_at INTEGER NOT NULL
        )
        """,
        "CREATE UNIQUE INDEX alerts_identity ON alerts (fingerprint, starts_at)",
        # At most one open episode per fingerprint: repeats update it, never duplicate it.
        "CREATE UNIQUE INDEX alerts_open ON alerts (fingerprint) WHERE status = 'firing'",
        "CREATE INDEX alerts_firing_last ON alerts (last_received) WHERE status = 'firing'",
        "CREATE INDEX alerts_status ON alerts (status, id)",
    ],
    # 2: incidents, their timelines, escalation steps done, and the outbox of pages.
    [
        """
        CREATE TABLE incidents (
            id INTEGER PRIMARY KEY,
            key TEXT NOT NULL,
            state TEXT NOT NULL
                CHECK (state IN ('triggered', 'acknowledged', 'snoozed', 'resolved')),
            severity TEXT NOT NULL,
            category TEXT NOT NULL,
            policy TEXT,
            rule TEXT,
            title TEXT NOT NULL,
            respond_s INTEGER,
            resolve_s INTEGER,
            opened_at INTEGER NOT NULL,
            triggered_at INTEGER NOT NULL,
            episode INTEGER NOT NULL DEFAULT 1,
            acknowledged_at INTEGER,
            acknowledged_by TEXT,
            resolved_at INTEGER,
            resolved_by TEXT,
            snoozed_until INTEGER,
            assignee TEXT,
            next_due INTEGER,
            version INTEGER NOT NULL DEFAULT 0,
            updated_at INTEGER NOT NULL
        )
        """,
        # One open incident per key: a new alert with the key joins it.
        "CREATE UNIQUE INDEX incidents_open_key ON incidents (key) WHERE state != 'resolved'",
        "CREATE INDEX incidents_key ON incidents (key, resolved_at)",
        "CREATE INDEX incidents_due ON incidents (next_due) WHERE next_due IS NOT NULL",
        "CREATE INDEX incidents_opened ON incidents (opened_at)",
        "ALTER TABLE alerts ADD COLUMN incident_id INTEGER REFERENCES incidents (id)",
        "CREATE INDEX alerts_incident ON alerts (incident_id, status)",
        """
        CREATE TABLE timeline (
            id INTEGER PRIMARY KEY,
            incident_id INTEGER NOT NULL REFERENCES incidents (id),
            at INTEGER NOT NULL,
            kind TEXT NOT NULL,
            actor TEXT,
            via TEXT,
            detail TEXT NOT NULL
        )
        """,
        "CREATE INDEX timeline_incident ON timeline (incident_id, id)",
        """
        CREATE TABLE steps (
            incident_id INTEGER NOT NULL REFERENCES incidents (id),
            episode INTEGER NOT NULL,
            step TEXT NOT NULL,
            done_at INTEGER NOT NULL,
            PRIMARY KEY (incident_id, episode, step)
        )
        """,
        """
        CREATE TABLE pages (
            id INTEGER PRIMARY KEY,
            incident_id INTEGER NOT NULL REFERENCES incidents (id),
            episode INTEGER NOT NULL,
            step TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('page', 'status', 'recovery', 'test')),
            contact TEXT NOT NULL,
            channel TEXT NOT NULL,
            address TEXT NOT NULL,
            backup TEXT,
            due_at INTEGER NOT NULL,
            state TEXT NOT NULL CHECK (state IN
                ('queued', 'sending', 'sent', 'delivered', 'failed', 'cancelled')),
            cancel_on_ack INTEGER NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            provider_id TEXT,
            error TEXT,
            created_at INTEGER NOT NULL,
            sent_at INTEGER,
            updated_at INTEGER NOT NULL,
            UNIQUE (incident_id, episode, step, contact, channel)
        )
        """,
        "CREATE INDEX pages_queued ON pages (due_at) WHERE state = 'queued'",
        "CREATE INDEX pages_incident ON pages (incident_id, id)",
    ],
    # 3: containment. Work arrives through a durable queue written with the alert; every run
    # is a row written before anything starts; the guards' state is one JSON document.
    [
        """
        CREATE TABLE action_queue (
            id INTEGER PRIMARY KEY,
            alert_id INTEGER NOT NULL REFERENCES alerts (id),
            trigger TEXT NOT NULL CHECK (trigger IN ('fire', 'resolve')),
            queued_at INTEGER NOT NULL,
            UNIQUE (alert_id, trigger)
        )
        """,
        """
        CREATE TABLE action_runs (
            run_id TEXT PRIMARY KEY,
            alert_id INTEGER NOT NULL REFERENCES alerts (id),
            incident_id INTEGER REFERENCES incidents (id),
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            trigger TEXT NOT NULL,
            state TEXT NOT NULL,
            outcome TEXT,
            audit TEXT NOT NULL,
            undo TEXT,
            undo_hold_s INTEGER,
            undo_state TEXT,
            undo_due INTEGER,
            check_due INTEGER,
            started_at INTEGER NOT NULL,
            finished_at INTEGER,
            UNIQUE (alert_id, action, trigger)
        )
        """,
        "CREATE INDEX action_runs_undo ON action_runs (undo_due) WHERE undo_state = 'wait'",
        "CREATE INDEX action_runs_check ON action_runs (check_due) WHERE check_due IS NOT NULL",
        "CREATE INDEX action_runs_incident ON action_runs (incident_id)",
        """
        CREATE TABLE guard_state (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            state TEXT NOT NULL,
            updated_at INTEGER NOT NULL
        )
        """,
        "ALTER TABLE incidents ADD COLUMN escalate_now TEXT",
    ],
    # 4: queue ids never reused. Without AUTOINCREMENT SQLite hands a deleted highest id out
    # again, and the containment engine's high-water mark (it reads ids above the last one it
    # took) would then skip the new row.
    [
        """
        CREATE TABLE action_queue_v4 (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            alert_id INTEGER NOT NULL REFERENCES alerts (id),
            trigger TEXT NOT NULL CHECK (trigger IN ('fire', 'resolve')),
            queued_at INTEGER NOT NULL,
            UNIQUE (alert_id, trigger)
        )
        """,
        "INSERT INTO action_queue_v4 SELECT id, alert_id, trigger, queued_at FROM action_queue",
        "DROP TABLE action_queue",
        "ALTER TABLE action_queue_v4 RENAME TO action_queue",
    ],
    # 5: the outbox's rate-limit and budget reads look up sends by contact method and time;
    # without these indexes each one scanned every page ever sent.
    [
        "CREATE INDEX pages_sent_by_method ON pages (contact, channel, sent_at)",
        "CREATE INDEX pages_sent_at ON pages (sent_at) WHERE sent_at IS NOT NULL",
    ],
    # 6: every repeat of a firing alert moves its last_received, and this index had to move
    # with it (a fifth of a repeat's write). Its only reader, the stale sweep, runs once a
    # minute and reads the firing alerts through alerts_open instead.
    [
        "DROP INDEX alerts_firing_last",
    ],
    # 7: an alert that joins an open incident records when, and its "alert_fired" entry in
    # the incident's timeline is read from the alert (sqlite_incidents.timeline) instead of
    # being a timeline row of its own: that row was a tenth of a new alert's store work.
    [
        "ALTER TABLE alerts ADD COLUMN joined_at INTEGER",
    ],
    # 8: heartbeats watched by the dead-man switch (responder.heartbeats), one row per
    # heartbeat alert (fingerprint) seen; when it was found missing, the time its
    # HeartbeatMissing alert started; when someone said to forget it. Heartbeats stored
    # before this version are adopted if firing (not a Prometheus retired long ago).
    [
        """
        CREATE TABLE heartbeats (
            fingerprint TEXT PRIMARY KEY,
            labels TEXT NOT NULL,
            first_seen INTEGER NOT NULL,
            missing_since INTEGER,
            forgotten_at INTEGER
        )
        """,
        """
        INSERT INTO heartbeats (fingerprint, labels, first_seen)
        SELECT fingerprint, labels, min(first_received) FROM alerts
        WHERE json_extract(classification, '$.heartbeat') = 1
        GROUP BY fingerprint HAVING max(status = 'firing') = 1
        """,
        # The daemon's own state between runs: when the heartbeat watch last checked, and
        # the times it was down (from its last check to its next start), which are not a
        # heartbeat's silence.
        "CREATE TABLE watch_state ("
        "id INTEGER PRIMARY KEY CHECK (id = 1), last_check INTEGER, adopted_for TEXT)",
        "CREATE TABLE watch_downtime (down_from INTEGER NOT NULL, up_at INTEGER NOT NULL)",
    ],
    # 9: when an incident's duration-clock levels count from, when that is not the current
    # episode's start: an unacknowledge starts the escalation over, not the incident's
    # lasting (management is told at 30m of the incident, not of the new episode).
    [
        "ALTER TABLE incidents ADD COLUMN lasting_since INTEGER",
    ],
    # 10: the escalation layout (policies' levels by number and identity) the open
    # incidents' steps were last armed under: a config changed while the daemon was
    # stopped is reconciled at the next start as a reload would have been.
    [
        "CREATE TABLE escalation_layout ("
        "id INTEGER PRIMARY KEY CHECK (id = 1), layout TEXT NOT NULL)",
    ],
    # 11: until when a rule's hold_page holds an incident's first page. Kept apart from
    # next_due, which a re-arm (a reload, every start) pulls forward to recompute.
    [
        "ALTER TABLE incidents ADD COLUMN held_until INTEGER",
        # A hold in progress at the upgrade: a first page not yet due (no step done), of an
        # incident whose alert's rule holds it. Without this, the first start would page.
        """
        UPDATE incidents SET held_until = next_due
        WHERE state = 'triggered' AND episode = 1
        AND next_due > CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)
        AND NOT EXISTS (SELECT 1 FROM steps s WHERE s.incident_id = incidents.id)
        AND EXISTS (SELECT 1 FROM alerts a WHERE a.incident_id = incidents.id
                    AND json_extract(a.classification, '$.hold_page_s') > 0)
        """,
    ],
    # 12: how often an alert came back to life (stale or resolved, then firing again with
    # its startsAt): each time is a new generation for containment, whose runs are once per
    # (alert, action, trigger), or a revived alert would never run its actions again.
    [
        "ALTER TABLE alerts ADD COLUMN revivals INTEGER NOT NULL DEFAULT 0",
        """
        CREATE TABLE action_queue_v12 (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            alert_id INTEGER NOT NULL REFERENCES alerts (id),
            trigger TEXT NOT NULL CHECK (
                trigger IN ('fire', 'resolve')
                OR trigger GLOB 'fire#[1-9]*' OR trigger GLOB 'resolve#[1-9]*'
            ),
            queued_at INTEGER NOT NULL,
            UNIQUE (alert_id, trigger)
        )
        """,
        "INSERT INTO action_queue_v12 SELECT id, alert_id, trigger, queued_at FROM action_queue",
        # Ids stay never reused (migration 4): the new table counts on from the old one.
        "DELETE FROM sqlite_sequence WHERE name = 'action_queue_v12'",
        "INSERT INTO sqlite_sequence (name, seq) SELECT 'action_queue_v12', seq "
        "FROM sqlite_sequence WHERE name = 'action_queue'",
        "DROP TABLE action_queue",
        "ALTER TABLE action_queue_v12 RENAME TO action_queue",
    ],
    # 13: which change a containment run makes, as its lift will undo it (CHANGE_KEY): runs
    # with the same key want the same change, whichever alert asked, so a lift stands down
    # or waits while another alert still needs it. Kept in a column of its own, read from
    # the run's audit when it is recorded: a finished run's audit no longer shows the lift
    # it planned if it changed nothing, and the column takes an index.
    [
        "ALTER TABLE action_runs ADD COLUMN change_key TEXT",
        "ALTER TABLE action_runs ADD COLUMN shared_lift INTEGER",
        f"UPDATE action_runs SET change_key = {CHANGE_KEY}, shared_lift = {SHARED_LIFT}",  # noqa: S608
        "CREATE INDEX action_runs_change ON action_runs (change_key) WHERE change_key IS NOT NULL",
    ],
    # 14: when a page failed over (its channel down, its retries run out, its last failure):
    # a page fails over once, whichever way it fails, also when nobody was left to take it;
    # and when the SMS/voice budget first held it and re-routed it to free channels, which
    # is not its failover but is done once too. Pages of before the upgrade are known by
    # their failover events.
    [
        "ALTER TABLE pages ADD COLUMN failed_over_at INTEGER",
        "ALTER TABLE pages ADD COLUMN budget_rerouted_at INTEGER",
        # One pass over the failover events (a subquery per page read each page's whole
        # incident timeline: 34 s for 2,000 pages of an incident with 100,000 entries).
        """
        CREATE TEMP TABLE failed_over AS
        SELECT json_extract(detail, '$.failed_page') AS page_id, MIN(at) AS at
        FROM timeline WHERE kind = 'failover'
        AND json_extract(detail, '$.reason') != 'hourly SMS/voice budget used'
        GROUP BY 1
        """,
        "CREATE INDEX temp.failed_over_page ON failed_over (page_id)",
        """
        UPDATE pages SET failed_over_at =
            (SELECT f.at FROM failed_over f WHERE f.page_id = pages.id)
        WHERE id IN (SELECT page_id FROM failed_over)
        """,
        "DROP TABLE temp.failed_over",
        """
        UPDATE pages SET budget_rerouted_at = (
            SELECT MIN(t.at) FROM timeline t WHERE t.incident_id = pages.incident_id
            AND t.kind = 'failover' AND json_extract(t.detail, '$.failed_page') = pages.id)
        WHERE state = 'queued' AND error = 'hourly SMS/voice budget used'
        """,
    ],
    # 15: when a claimed page was handed to its channel (just before the provider call). A
    # page claimed and not yet handed (its limits being checked, its message composed) that
    # a crash or a store error interrupts was sent to nobody: it goes back to the queue,
    # where before it was "outcome unknown" and re-routed. Pages of an older release that
    # are sending were handed, as far as anyone can tell.
    [
        "ALTER TABLE pages ADD COLUMN handed_at INTEGER",
        "UPDATE pages SET handed_at = updated_at WHERE state = 'sending'",
    ],
    # 16: the first acknowledgement since the incident's trigger, and by whom: what the
    # response target and the time to acknowledge measure. A snooze or an unacknowledge
    # clears acknowledged_at (escalation resumes after it) but not the answer already given:
    # a snoozed incident was reported never acknowledged, and its respond target breached.
    # Older incidents take their first 'acknowledged' entry since their trigger.
    [
        "ALTER TABLE incidents ADD COLUMN first_acknowledged_at INTEGER",
        "ALTER TABLE incidents ADD COLUMN first_acknowledged_by TEXT",
        """
        UPDATE incidents SET (first_acknowledged_at, first_acknowledged_by) = (
            SELECT t.at, t.actor FROM timeline t
            WHERE t.incident_id = incidents.id AND t.kind = 'acknowledged'
            AND t.at >= COALESCE(incidents.lasting_since, incidents.triggered_at)
            ORDER BY t.id LIMIT 1)
        """,
    ],
    # 17: the trigger each page was made for (when it began: Incident.started). A page
    # queued for one trigger and sent after the incident resolved and fired again is not a
    # page for the new one: its link and an SMS reply act on the trigger it told of. Older
    # pages take the latest trigger (opening or re-fire) at or before the first page of
    # their episode, which a failover made after a re-fire does not move.
    [
        "ALTER TABLE pages ADD COLUMN trigger_at INTEGER",
        """
        CREATE TEMP TABLE page_triggers AS
        SELECT e.incident_id, e.episode, (
            SELECT MAX(t.at) FROM timeline t WHERE t.incident_id = e.incident_id
            AND t.kind IN ('triggered', 'retriggered') AND t.at <= e.first_at) AS trigger_at
        FROM (SELECT incident_id, episode, MIN(created_at) AS first_at FROM pages
              GROUP BY incident_id, episode) e
        """,
        """
        UPDATE pages SET trigger_at = COALESCE(
            (SELECT COALESCE(i.lasting_since, i.triggered_at) FROM incidents i
             WHERE i.id = pages.incident_id AND i.episode = pages.episode),
            (SELECT t.trigger_at FROM page_triggers t
             WHERE t.incident_id = pages.incident_id AND t.episode = pages.episode),
            (SELECT i.opened_at FROM incidents i WHERE i.id = pages.incident_id))
        """,
        "DROP TABLE temp.page_triggers",
    ],
    # 18: when the daemon last sent each of its own notices to the administrators (the SMS/
    # voice budget reached: once an hour). Kept in memory, a restart or a crash loop sent
    # the notice again at every start.
    [
        "CREATE TABLE admin_notices (kind TEXT PRIMARY KEY, sent_at INTEGER NOT NULL)",
    ],
    # 19: the signed Twilio requests taken (an SMS reply's MessageSid, a keypress's
    # CallSid) and the answer each got. Twilio's signature holds no time nor nonce: kept in
    # memory, a captured 'ACK' posted again after a restart acted on the incident open then.
    # A request that acts is recorded in the write that acts (answer NULL until it is known).
    [
        "CREATE TABLE twilio_requests (sid TEXT PRIMARY KEY, taken_at INTEGER NOT NULL, "
        "answer TEXT)",
        "CREATE INDEX twilio_requests_taken_at ON twilio_requests (taken_at)",
    ],
    # 20: the process groups of action and lift processes while they run (contain/orphans.py):
    # a start after a kill -9 of the daemon stops those still alive. A group is its leader's
    # pid with the leader's start time (clock ticks since boot) and the boot's id.
    [
        """
        CREATE TABLE action_processes (
            boot_id TEXT NOT NULL,
            pgid INTEGER NOT NULL,
            start_ticks INTEGER NOT NULL,
            run_id TEXT NOT NULL,
            argv0 TEXT NOT NULL,
            started_at INTEGER NOT NULL,
            PRIMARY KEY (boot_id, pgid, start_ticks)
        )
        """,
    ],
    # 21: why a page lost its point while it was with its channel (handed over, or sent and
    # not yet confirmed), where the change that took it (an acknowledgement, a snooze, a
    # reassignment) could not cancel it: should it come back (a retry, a failure), it is
    # cancelled or not re-routed, as it would have been had it still been queued. The
    # incident's state cannot say so: an unacknowledge undoes it, and it keeps only the
    # first of several people who acknowledged.
    [
        "ALTER TABLE pages ADD COLUMN lost_point TEXT",
    ],
]

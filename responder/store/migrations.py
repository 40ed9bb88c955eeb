"""Versioned schema migrations. Append only: a released migration is never edited.

The version applied is kept in SQLite's ``user_version``; each list entry is one version.
Times are integer microseconds since the epoch (exact and sortable).
"""

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
]

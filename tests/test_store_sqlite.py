"""The SQLite engine: idempotent ingest, resolves, staleness, group commit, migrations."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest

from responder.incident import (
    Event,
    Incident,
    IncidentState,
    NewPage,
    Page,
    PageKind,
    PageState,
    StateConflict,
    TimelineEvent,
)
from responder.model import Alert, AlertStatus, Classification, Severity, frozen_labels
from responder.store import (
    AlertQuery,
    CommitStats,
    IncomingAlert,
    IngestOutcome,
    SchemaTooNew,
    SQLiteStore,
    StoreError,
    TakenRequest,
)
from responder.store.migrations import SQLITE_MIGRATIONS
from responder.store.sqlite_incidents import to_us

T = TypeVar("T")
T0 = datetime(2026, 11, 22, 7, 0, tzinfo=UTC)
CLASSIFIED = Classification(severity=Severity.P1, category="availability", rule="test")


def alert(
    fingerprint: str = "aaaa000000000001",
    status: AlertStatus = AlertStatus.FIRING,
    starts: datetime = T0,
    ends: datetime | None = None,
) -> IncomingAlert:
    return IncomingAlert(
        alert=Alert(
            fingerprint=fingerprint,
            status=status,
            labels=frozen_labels({"alertname": "DiskFull", "instance": fingerprint}),
            annotations=frozen_labels({"summary": "disk almost full"}),
            starts_at=starts,
            ends_at=ends,
        ),
        group_key='{}:{alertname="DiskFull"}',
        receiver="responder",
        classification=CLASSIFIED,
    )


def disk_alert(fingerprint: str, severity: Severity | None = None) -> IncomingAlert:
    """A firing alert of the incident keyed "disk", of another severity when given."""
    incoming = replace(alert(fingerprint), incident_key="disk")
    if severity is None:
        return incoming
    return replace(incoming, classification=replace(CLASSIFIED, severity=severity))


def resolved(a: IncomingAlert, ends: datetime, starts: datetime | None = None) -> IncomingAlert:
    return replace(
        a,
        alert=msgspec.structs.replace(
            a.alert,
            status=AlertStatus.RESOLVED,
            ends_at=ends,
            starts_at=starts or a.alert.starts_at,
        ),
    )


# The columns each migration since 14 added, for a database taken back to an older release.
_ADDED_COLUMNS = {
    15: [("pages", "handed_at")],
    16: [("incidents", "first_acknowledged_at"), ("incidents", "first_acknowledged_by")],
    17: [("pages", "trigger_at")],
    21: [("pages", "lost_point")],
}
_ADDED_TABLES = {18: ["admin_notices"], 19: ["twilio_requests"], 20: ["action_processes"]}


def back_to_schema(path: Path, version: int) -> None:
    """A database of the current schema, with rows, as release ``version`` (14 or later)
    left it: the columns and tables added since dropped, so that their migrations run
    again."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for later in sorted(_ADDED_TABLES, reverse=True):
            if later > version:
                for table in _ADDED_TABLES[later]:
                    conn.execute(f"DROP TABLE {table}")
        for later in sorted(_ADDED_COLUMNS, reverse=True):
            if later > version:
                for table, column in _ADDED_COLUMNS[later]:
                    conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        conn.execute(f"PRAGMA user_version = {version}")
    finally:
        conn.close()


def migrate_to(conn: sqlite3.Connection, version: int) -> None:
    """The schema of an older release: the first ``version`` migrations, as it left them."""
    for script in SQLITE_MIGRATIONS[:version]:
        for statement in script:
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {version}")


@contextlib.asynccontextmanager
async def writer_held(store: SQLiteStore) -> AsyncIterator[None]:
    """The writer thread held by a write of its own: the writes queued inside the block
    wait, and run in one batch once it ends."""
    entered, gate = threading.Event(), threading.Event()

    def hold(_: sqlite3.Connection) -> None:
        entered.set()
        gate.wait(10)

    held = asyncio.ensure_future(store._write(hold))
    await asyncio.to_thread(entered.wait, 10)
    try:
        yield
        await asyncio.sleep(0.1)  # the writes queued in the block reach the writer's queue
    finally:
        gate.set()
        await held


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "responder.db")
    await s.open()
    yield s
    await s.close()


async def test_migrations_are_logged_once_with_the_versions_found_and_reached(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A new database takes every migration: one log line, not one per version (new-user
    review: twenty "schema migrated" lines at a first start); an upgrade says from where."""
    caplog.set_level(logging.INFO, logger="responder.store")
    newest = len(SQLITE_MIGRATIONS)

    async def opened_and_closed() -> list[dict[str, int]]:
        caplog.clear()
        s = SQLiteStore(tmp_path / "responder.db")
        await s.open()
        await s.close()
        return [
            r.fields  # type: ignore[attr-defined]
            for r in caplog.records
            if r.getMessage() == "schema migrated"
        ]

    assert await opened_and_closed() == [{"from_version": 0, "version": newest}]
    assert await opened_and_closed() == []  # nothing to do
    back_to_schema(tmp_path / "responder.db", 14)
    assert await opened_and_closed() == [{"from_version": 14, "version": newest}]


async def test_repeats_update_and_create_nothing(store: SQLiteStore) -> None:
    """Alertmanager re-sends firing alerts constantly: the first is new, the rest repeats."""
    a = alert()
    assert await store.ingest([a], T0) == [IngestOutcome.NEW]
    for minute in range(1, 4):
        assert await store.ingest([a], T0 + timedelta(minutes=minute)) == [IngestOutcome.REPEAT]
    (stored,) = await store.list_alerts(AlertQuery())
    assert stored.receive_count == 4
    assert stored.first_received == T0
    assert stored.last_received == T0 + timedelta(minutes=3)
    assert stored.status is AlertStatus.FIRING
    assert stored.classification["severity"] == "P1"


async def test_resolve_once_then_repeat(store: SQLiteStore) -> None:
    """A resolve closes the alert once; the re-sent resolve changes nothing."""
    a = alert()
    await store.ingest([a], T0)
    end = T0 + timedelta(minutes=5)
    assert await store.ingest([resolved(a, end)], end) == [IngestOutcome.RESOLVED]
    assert await store.ingest([resolved(a, end)], end) == [IngestOutcome.REPEAT_RESOLVED]
    (stored,) = await store.list_alerts(AlertQuery())
    assert stored.status is AlertStatus.RESOLVED
    assert stored.ends_at == end


async def test_resolve_with_earlier_start_matches_by_fingerprint(store: SQLiteStore) -> None:
    """Alertmanager keeps the earliest startsAt, so a resolve may carry another one."""
    a = alert()
    await store.ingest([a], T0)
    end = T0 + timedelta(minutes=1)
    outcome = await store.ingest([resolved(a, end, starts=T0 - timedelta(seconds=60))], end)
    assert outcome == [IngestOutcome.RESOLVED]


async def test_late_firing_copy_does_not_reopen(store: SQLiteStore) -> None:
    """A firing copy delivered just after its resolve is out of order and ignored."""
    a = alert()
    await store.ingest([a], T0)
    await store.ingest([resolved(a, T0 + timedelta(minutes=1))], T0 + timedelta(minutes=1))
    late = T0 + timedelta(minutes=1, seconds=5)
    assert await store.ingest([a], late) == [IngestOutcome.LATE]
    assert (await store.list_alerts(AlertQuery()))[0].status is AlertStatus.RESOLVED


async def test_a_resolved_alert_firing_again_with_its_start_is_revived(
    store: SQLiteStore,
) -> None:
    """Alertmanager resolved the alert by timeout while Prometheus could not reach it; when
    Prometheus gets through, the alert fires again with the same startsAt (Prometheus keeps
    it). That is no out-of-order copy: the alert fires again and its incident opens. Before,
    it was "late" for good, and nobody was paged while the problem lasted (review of stop
    14, seen with the real Alertmanager 0.25)."""
    a = alert()
    await store.ingest([a], T0)
    await store.ingest([resolved(a, T0 + timedelta(minutes=1))], T0 + timedelta(minutes=1))
    again = T0 + timedelta(minutes=30)
    assert await store.ingest([a], again) == [IngestOutcome.REVIVED]
    (stored,) = await store.list_alerts(AlertQuery())
    assert (stored.status, stored.ends_at) == (AlertStatus.FIRING, None)
    assert await store.ingest([a], again + timedelta(minutes=1)) == [IngestOutcome.REPEAT]


async def test_a_refire_after_a_clock_step_back_is_revived(store: SQLiteStore) -> None:
    """The resolve is recorded "later" than now (the clock stepped back an hour since): the
    firing copy 10 minutes on is no out-of-order copy, and fires again (second review of
    stop 14)."""
    a = alert()
    await store.ingest([a], T0)
    await store.ingest([resolved(a, T0 + timedelta(minutes=1))], T0 + timedelta(minutes=1))
    stepped_back = T0 + timedelta(minutes=11) - timedelta(hours=1)
    assert await store.ingest([a], stepped_back) == [IngestOutcome.REVIVED]


async def test_refiring_with_new_start_is_a_new_episode(store: SQLiteStore) -> None:
    """The same labels firing again later (new startsAt) is a new alert episode."""
    a = alert()
    await store.ingest([a], T0)
    await store.ingest([resolved(a, T0 + timedelta(minutes=1))], T0 + timedelta(minutes=1))
    again = replace(a, alert=msgspec.structs.replace(a.alert, starts_at=T0 + timedelta(minutes=10)))
    assert await store.ingest([again], T0 + timedelta(minutes=10)) == [IngestOutcome.NEW]
    statuses = [s.status for s in await store.list_alerts(AlertQuery())]
    assert statuses == [AlertStatus.FIRING, AlertStatus.RESOLVED]


async def test_old_resolve_does_not_close_a_newer_episode(store: SQLiteStore) -> None:
    """A resolve that ended before the open episode started belongs to an older one."""
    later = msgspec.structs.replace(alert().alert, starts_at=T0 + timedelta(hours=1))
    a = replace(alert(), alert=later)
    await store.ingest([a], T0 + timedelta(hours=1))
    stale_resolve = resolved(alert(), T0 + timedelta(minutes=5), starts=T0)
    outcome = await store.ingest([stale_resolve], T0 + timedelta(hours=1))
    assert outcome == [IngestOutcome.RESOLVED_UNSEEN]
    firing = await store.list_alerts(AlertQuery(statuses=frozenset({AlertStatus.FIRING})))
    assert len(firing) == 1


async def test_resolve_never_seen_firing_is_recorded(store: SQLiteStore) -> None:
    """A resolve for an alert we never saw firing is kept, not dropped."""
    outcome = await store.ingest([resolved(alert(), T0)], T0)
    assert outcome == [IngestOutcome.RESOLVED_UNSEEN]
    assert (await store.list_alerts(AlertQuery()))[0].status is AlertStatus.RESOLVED


async def test_stale_then_revived(store: SQLiteStore) -> None:
    """Silence past the cut-off makes an alert stale; hearing it again revives it."""
    a, b = alert("aaaa000000000001"), alert("aaaa000000000002")
    await store.ingest([a, b], T0)
    await store.ingest([b], T0 + timedelta(hours=5))
    stale = await store.mark_stale(T0 + timedelta(hours=1), T0 + timedelta(hours=6))
    assert len(stale) == 1
    rows = {s.fingerprint: s.status for s in await store.list_alerts(AlertQuery())}
    assert rows == {"aaaa000000000001": AlertStatus.STALE, "aaaa000000000002": AlertStatus.FIRING}
    assert await store.ingest([a], T0 + timedelta(hours=7)) == [IngestOutcome.REVIVED]
    # and a resolve closes a stale alert too
    end = T0 + timedelta(hours=8)
    await store.mark_stale(T0 + timedelta(hours=7, minutes=30), end)
    assert await store.ingest([resolved(a, end)], end) == [IngestOutcome.RESOLVED]


async def test_a_repeat_between_the_stale_scan_and_its_write_keeps_the_alert(
    tmp_path: Path,
) -> None:
    """The sweep finds candidates on the reader, then writes: an alert heard again in
    between stays firing."""
    heard_again = alert("aaaa000000000001")

    store = SQLiteStore(tmp_path / "r.db")
    read = store._read

    async def read_then_repeat(work: Callable[[sqlite3.Connection], T]) -> T:
        found = await read(work)
        await store.ingest([heard_again], T0 + timedelta(hours=5))
        return found

    store._read = read_then_repeat  # type: ignore[method-assign]
    await store.open()
    try:
        await store.ingest([heard_again, alert("aaaa000000000002")], T0)
        stale = await store.mark_stale(T0 + timedelta(hours=1), T0 + timedelta(hours=6))
        assert len(stale) == 1
        rows = {s.fingerprint: s.status for s in await store.list_alerts(AlertQuery())}
        assert rows["aaaa000000000001"] is AlertStatus.FIRING
        assert rows["aaaa000000000002"] is AlertStatus.STALE
    finally:
        await store.close()


async def test_concurrent_writes_share_commits(tmp_path: Path) -> None:
    """Many concurrent ingests are committed in fewer transactions than writes."""
    commits: list[CommitStats] = []
    store = SQLiteStore(tmp_path / "r.db", on_commit=commits.append)
    await store.open()
    try:
        batch = [alert(f"{i:016x}") for i in range(300)]
        results = await asyncio.gather(*(store.ingest([a], T0) for a in batch))
        assert all(r == [IngestOutcome.NEW] for r in results)
        assert sum(c.batch_size for c in commits) == 300
        assert len(commits) < 300
    finally:
        await store.close()


async def test_commits_under_concurrent_writes_are_spaced(tmp_path: Path) -> None:
    """After a commit of several writes, the next waits out the spacing so that the writes
    arriving meanwhile share it; a lone chain of writes is never held back."""
    spacing = 0.25
    started: list[tuple[float, int]] = []  # (when the commit began, how many writes)

    def committed(stats: CommitStats) -> None:
        started.append((time.perf_counter() - stats.seconds, stats.batch_size))

    store = SQLiteStore(tmp_path / "r.db", on_commit=committed, commit_spacing=spacing)
    await store.open()
    try:
        chain_began = time.perf_counter()
        for i in range(4):
            assert await store.ingest([alert(f"c{i:015x}")], T0) == [IngestOutcome.NEW]
        assert time.perf_counter() - chain_began < spacing  # four commits, none delayed
        assert all(size == 1 for _, size in started)

        for wave in range(3):
            writes = [store.ingest([alert(f"{wave}{i:015x}")], T0) for i in range(50)]
            await asyncio.gather(*writes)
        after_shared = [
            later - earlier
            for (earlier, size), (later, _) in itertools.pairwise(started)
            if size > 1
        ]
        assert after_shared  # the waves did share commits
        assert min(after_shared) >= spacing - 0.02
        assert sum(size for _, size in started) == 4 + 150
    finally:
        await store.close()


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policy")
async def test_the_writer_thread_runs_as_a_batch_thread(tmp_path: Path) -> None:
    """It must not preempt the event loop on waking (sqlite.py, _yield_to_event_loop); the
    event loop's own thread keeps its policy."""
    loop_policy = os.sched_getscheduler(0)
    store = SQLiteStore(tmp_path / "r.db")
    await store.open()
    try:
        await store.ingest([alert("b000000000000001")], T0)  # the writer has run
        writer = store._writer
        assert writer is not None
        assert writer.native_id is not None
        assert os.sched_getscheduler(writer.native_id) == os.SCHED_BATCH
        assert os.sched_getscheduler(0) == loop_policy
    finally:
        await store.close()


async def test_one_failing_write_does_not_fail_its_batch(tmp_path: Path) -> None:
    """A write that fails is rolled back alone; its neighbours in the batch commit."""
    store = SQLiteStore(tmp_path / "r.db")
    await store.open()
    try:
        with sqlite3.connect(tmp_path / "r.db") as conn:
            conn.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON alerts WHEN NEW.fingerprint = 'bad' "
                "BEGIN SELECT RAISE(ABORT, 'refused by test'); END"
            )
        good = [store.ingest([alert(f"{i:016x}")], T0) for i in range(20)]
        bad = store.ingest([alert("bad")], T0)
        results = await asyncio.gather(*good, bad, return_exceptions=True)
        assert isinstance(results[-1], StoreError)
        assert all(r == [IngestOutcome.NEW] for r in results[:-1])
        assert len(await store.list_alerts(AlertQuery())) == 20
    finally:
        await store.close()


async def test_each_page_cancelled_is_reported_once_with_the_commit_that_cancels_it(
    tmp_path: Path,
) -> None:
    """What responder_pages_total{outcome="cancelled"} counts: bob's acknowledgement cancels
    alice's queued SMS and email, counted by channel with its commit. In a batch run again
    because another write failed, it is still counted once, and that failed write's own
    cancellation, rolled back, not at all."""
    commits: list[CommitStats] = []
    store = SQLiteStore(tmp_path / "r.db", on_commit=commits.append)
    await store.open()
    try:
        await store.ingest([disk_alert("aaaa000000000001")], T0)
        later = T0 + timedelta(minutes=5)
        pages = [NewPage("L1", PageKind.PAGE, "alice", ch, "a", later) for ch in ("sms", "email")]
        status = NewPage("U1", PageKind.STATUS, "alice", "voice", "a", later, None, False)
        await store.add_pages(1, 1, [*pages, status], None, T0)

        def cancelled() -> dict[str, int]:
            total: dict[str, int] = {}
            for stats in commits:
                for channel, count in stats.pages_cancelled.items():
                    total[channel] = total.get(channel, 0) + count
            return total

        def fails_after_cancelling(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE pages SET state = 'cancelled' WHERE channel = 'voice'")
            raise RuntimeError("refused by test")

        # The acknowledgement and the failing write share a batch.
        async with writer_held(store):
            ack = asyncio.ensure_future(
                store.transition(1, "acknowledge", actor="bob", via="api", now=T0)
            )
            failing = asyncio.ensure_future(store._write(fails_after_cancelling))
        await ack
        with pytest.raises(RuntimeError, match="refused by test"):
            await failing
        assert cancelled() == {"sms": 1, "email": 1}
        voice = [p for p in (await store.incident_details(1))[3] if p.channel == "voice"]
        assert voice[0].state is PageState.QUEUED
    finally:
        await store.close()


async def test_data_survives_reopen(tmp_path: Path) -> None:
    """A restart on the same file sees everything committed before it."""
    path = tmp_path / "r.db"
    first = SQLiteStore(path)
    await first.open()
    await first.ingest([alert()], T0)
    await first.close()
    second = SQLiteStore(path)
    await second.open()
    try:
        assert await second.ingest([alert()], T0 + timedelta(minutes=1)) == [IngestOutcome.REPEAT]
    finally:
        await second.close()


async def test_an_admin_notice_is_sent_once_per_period_across_a_reopen(tmp_path: Path) -> None:
    """The claim on a notice is durable: a reopened store refuses it within the period and
    grants it after; a claim recorded in the future (the clock stepped back) holds nothing."""
    path, hour = tmp_path / "r.db", timedelta(hours=1)
    first = SQLiteStore(path)
    await first.open()
    assert await first.claim_admin_notice("budget_reached", T0, hour)
    assert not await first.claim_admin_notice("budget_reached", T0 + timedelta(minutes=1), hour)
    assert await first.claim_admin_notice("other", T0, hour)  # each notice on its own
    await first.close()
    second = SQLiteStore(path)
    await second.open()
    try:
        later = T0 + timedelta(minutes=59)
        assert not await second.claim_admin_notice("budget_reached", later, hour)
        assert await second.claim_admin_notice("budget_reached", T0 + hour, hour)
        assert await second.claim_admin_notice("budget_reached", T0, hour)  # stepped back
    finally:
        await second.close()


async def test_an_admin_notice_given_back_may_be_claimed_again(tmp_path: Path) -> None:
    """A notice not sent gives its claim back: the next claim gets it. Giving back an
    older claim leaves a later one in place."""
    store, hour = SQLiteStore(tmp_path / "r.db"), timedelta(hours=1)
    await store.open()
    try:
        assert await store.claim_admin_notice("budget_reached", T0, hour)
        await store.release_admin_notice("budget_reached", T0)
        later = T0 + timedelta(minutes=5)
        assert await store.claim_admin_notice("budget_reached", later, hour)
        await store.release_admin_notice("budget_reached", T0)  # not this claim's time
        assert not await store.claim_admin_notice("budget_reached", later, hour)
    finally:
        await store.close()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A database written by a newer responder is not touched by an older one."""
    path = tmp_path / "r.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 999")
    before = path.read_bytes()
    with pytest.raises(SchemaTooNew, match="newer than this responder"):
        await SQLiteStore(path).open()
    # Not even switched to WAL: the file is exactly as it was (ops review, stop 13).
    assert path.read_bytes() == before
    assert not path.with_name("r.db-wal").exists()
    # The lock was let go: a later (newer) responder is not told another one runs.
    await SQLiteStore(tmp_path / "other.db").open()


async def test_a_second_store_on_the_same_database_is_refused(tmp_path: Path) -> None:
    """Two daemons on one database would each recover the other's pages in flight and
    page twice: the second is refused, naming the first's pid, until the first closes
    (ops review, stop 13)."""
    path = tmp_path / "r.db"
    first = SQLiteStore(path)
    await first.open()
    try:
        with pytest.raises(StoreError, match=rf"another responder \(pid {os.getpid()}\)"):
            await SQLiteStore(path).open()
        assert await first.ping()  # the first one goes on undisturbed
    finally:
        await first.close()
    second = SQLiteStore(path)
    await second.open()
    await second.close()


async def test_closed_store_refuses_writes(tmp_path: Path) -> None:
    """After close, writes fail with StoreError (answered 503), not a hang."""
    store = SQLiteStore(tmp_path / "r.db")
    await store.open()
    await store.close()
    with pytest.raises(StoreError):
        await store.ingest([alert()], T0)
    assert not await store.ping()


async def test_containment_queue_ids_are_never_reused(tmp_path: Path) -> None:
    """The containment engine reads queue ids above the last one it took: a deleted highest
    id handed out again would be skipped for good."""

    from responder.store import SQLiteStore

    store = SQLiteStore(tmp_path / "q.db")
    await store.open()
    try:

        def queue(conn: sqlite3.Connection, alert_id: int) -> int:
            conn.execute(
                "INSERT INTO alerts (id, fingerprint, status, labels, annotations, starts_at, "
                "generator_url, group_key, receiver, alertname, severity, category, "
                "classification, first_received, last_received, receive_count, updated_at) "
                "VALUES (?, ?, 'firing', '{}', '{}', 0, '', '', '', '', 'P2', 'x', '{}', "
                "0, 0, 1, 0)",
                (alert_id, f"f{alert_id}"),
            )
            cur = conn.execute(
                "INSERT INTO action_queue (alert_id, trigger, queued_at) VALUES (?, 'fire', 0)",
                (alert_id,),
            )
            return int(cur.lastrowid or 0)

        first = await store._write(lambda conn: queue(conn, 1))
        await store.containment_done(first, T0)
        second = await store._write(lambda conn: queue(conn, 2))
        assert second > first
        assert [q.queue_id for q in await store.containment_queue(first)] == [second]
    finally:
        await store.close()


async def test_on_due_only_when_an_incident_needs_the_engine_now(store: SQLiteStore) -> None:
    """Opening, raising and resolving an incident call ``on_due`` after the commit; an alert
    joining an open incident at the same severity, and a repeat, do not (the webhook then
    has no reason to wake the engine or wait for it)."""
    calls: list[str] = []

    async def ingest(a: IncomingAlert, at: datetime, what: str) -> None:
        await store.ingest([a], at, on_due=lambda: calls.append(what))

    first = disk_alert("aaaa000000000001")
    joins = disk_alert("aaaa000000000002")
    worse = disk_alert("aaaa000000000003", Severity.P0)
    await ingest(first, T0, "opened")
    await ingest(first, T0 + timedelta(minutes=1), "repeat")
    await ingest(joins, T0 + timedelta(minutes=1), "joined")
    await ingest(worse, T0 + timedelta(minutes=2), "raised")
    end = T0 + timedelta(minutes=3)
    await ingest(resolved(first, end), end, "one of three resolved")
    await ingest(resolved(joins, end), end, "two of three resolved")
    await ingest(resolved(worse, end), end, "all resolved")
    assert calls == ["opened", "raised", "all resolved"]


async def test_one_body_that_resolves_an_incident_and_fires_again(store: SQLiteStore) -> None:
    """Within one body, an incident that its alerts resolve is not joined by the next new
    alert of its key (the store remembers open incidents only until one changes): that alert
    starts the incident's next episode."""
    first = disk_alert("aaaa000000000001")
    second = disk_alert("aaaa000000000002")
    third = disk_alert("aaaa000000000003")
    await store.ingest([first], T0)
    end = T0 + timedelta(minutes=1)
    outcomes = await store.ingest([second, resolved(first, end), resolved(second, end), third], end)
    assert outcomes == [
        IngestOutcome.NEW,
        IngestOutcome.RESOLVED,
        IngestOutcome.RESOLVED,
        IngestOutcome.NEW,
    ]
    (incident,) = await store.list_incidents()
    assert incident.state is IncidentState.TRIGGERED
    assert incident.episode == 2


async def only_timeline(store: SQLiteStore) -> tuple[list[TimelineEvent], dict[str, int]]:
    """The one incident's timeline, and its alerts' IDs by fingerprint."""
    (incident,) = await store.list_incidents()
    _, alerts, events, _ = await store.incident_details(incident.id)
    return events, {a.fingerprint: a.id for a in alerts}


def _kinds(events: list[TimelineEvent]) -> list[tuple[str, object]]:
    return [(e.kind.value, e.detail.get("alert")) for e in events]


async def test_alerts_joining_an_incident_are_in_its_timeline_without_a_row_each(
    store: SQLiteStore,
) -> None:
    """An alert that joins an open incident has its "alert_fired" entry read from the alert
    row: in place, with the detail a row had, and no timeline row written for it. At one
    instant the opening comes first and a raise after the alert that caused it."""
    first = disk_alert("aaaa000000000001")
    same_body = disk_alert("aaaa000000000002")
    later = disk_alert("aaaa000000000003")
    worse = disk_alert("aaaa000000000004", Severity.P0)
    await store.ingest([first, same_body], T0)
    await store.ingest([later], T0 + timedelta(minutes=1))
    await store.ingest([worse], T0 + timedelta(minutes=2))
    events, ids = await only_timeline(store)
    assert _kinds(events) == [
        ("triggered", ids["aaaa000000000001"]),
        ("alert_fired", ids["aaaa000000000002"]),
        ("alert_fired", ids["aaaa000000000003"]),
        ("alert_fired", ids["aaaa000000000004"]),
        ("severity_raised", None),
    ]
    fired = [e for e in events if e.kind.value == "alert_fired"]
    assert [e.at for e in fired] == [T0, T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)]
    assert (fired[2].actor, fired[2].via) == ("alertmanager", "alertmanager")
    assert dict(fired[2].detail) == {
        "alert": ids["aaaa000000000004"],
        "alertname": "DiskFull",
        "severity": "P0",
    }
    conn = sqlite3.connect(store.path)
    try:
        rows = conn.execute("SELECT kind FROM timeline WHERE kind = 'alert_fired'").fetchall()
    finally:
        conn.close()
    assert rows == []


async def test_an_alert_that_moves_to_another_incident_stays_in_the_first_timeline(
    store: SQLiteStore,
) -> None:
    """A stale alert that fires again after its incident resolved opens the next incident;
    the first incident's timeline keeps the entry of when the alert joined it."""
    first = disk_alert("aaaa000000000001")
    second = disk_alert("aaaa000000000002")
    joined_at = T0 + timedelta(minutes=1)
    await store.ingest([first], T0)
    await store.ingest([second], joined_at)
    await store.ingest([first], T0 + timedelta(hours=2))
    assert len(await store.mark_stale(T0 + timedelta(hours=1), T0 + timedelta(hours=2))) == 1
    end = T0 + timedelta(hours=3)
    await store.ingest([resolved(first, end)], end)
    (old,) = await store.list_incidents()
    assert old.state is IncidentState.RESOLVED

    back = T0 + timedelta(hours=9)
    assert await store.ingest([second], back, reopen_within=timedelta(minutes=5)) == [
        IngestOutcome.REVIVED
    ]
    new, _ = await store.list_incidents()  # newest first
    assert new.id != old.id
    _, _, events, _ = await store.incident_details(old.id)
    second_id = next(e.detail["alert"] for e in events if e.kind.value == "alert_stale")
    assert _kinds(events) == [
        ("triggered", 1),
        ("alert_fired", second_id),
        ("alert_stale", second_id),
        ("alert_resolved", 1),
        ("resolved", None),
    ]
    assert events[1].at == joined_at
    _, alerts, events, _ = await store.incident_details(new.id)
    assert [a.id for a in alerts] == [second_id]
    assert _kinds(events) == [("triggered", second_id)]


async def test_one_body_that_resolves_reopens_and_joins_is_in_order(store: SQLiteStore) -> None:
    """The alerts of one body share an instant: the timeline keeps the body's order, the
    resolve and the reopening before the alert that joins the reopened incident."""
    first = disk_alert("aaaa000000000001")
    second = disk_alert("aaaa000000000002")
    third = disk_alert("aaaa000000000003")
    await store.ingest([first], T0)
    end = T0 + timedelta(minutes=1)
    await store.ingest([resolved(first, end), second, third], end)
    events, ids = await only_timeline(store)
    assert _kinds(events) == [
        ("triggered", ids["aaaa000000000001"]),
        ("alert_resolved", ids["aaaa000000000001"]),
        ("resolved", None),
        ("retriggered", ids["aaaa000000000002"]),
        ("alert_fired", ids["aaaa000000000003"]),
    ]


async def test_an_alert_classified_anew_when_it_fires_again_shows_its_new_severity(
    store: SQLiteStore,
) -> None:
    """A stale alert firing again under changed rules: its entry tells the severity it
    has now, before the raise it causes, and its first entry stays as it was."""
    first = disk_alert("aaaa000000000001")
    second = disk_alert("aaaa000000000002")
    await store.ingest([first, second], T0)
    joined = T0 + timedelta(minutes=1)
    later = disk_alert("aaaa000000000003")
    await store.ingest([later], joined)
    await store.ingest([first, second], T0 + timedelta(hours=2))
    assert len(await store.mark_stale(T0 + timedelta(hours=1), T0 + timedelta(hours=3))) == 1
    back = T0 + timedelta(hours=4)
    worse = disk_alert("aaaa000000000003", Severity.P0)
    assert await store.ingest([worse], back) == [IngestOutcome.REVIVED]
    (incident,) = await store.list_incidents()
    assert incident.severity == "P0"
    _, alerts, events, _ = await store.incident_details(incident.id)
    third = next(a.id for a in alerts if a.fingerprint == "aaaa000000000003")
    fired = [
        (e.at, e.detail["severity"])
        for e in events
        if e.kind.value == "alert_fired" and e.detail["alert"] == third
    ]
    assert fired == [(joined, "P1"), (back, "P0")]
    assert [e.kind.value for e in events][-2:] == ["alert_fired", "severity_raised"]


async def test_timeline_rows_from_before_schema_7_are_read_once(tmp_path: Path) -> None:
    """A database written by schema 6 kept an "alert_fired" row per joining alert; after the
    migration those rows are the entries, not doubled by the alerts they name."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        migrate_to(conn, 6)
        conn.execute(
            "INSERT INTO incidents (id, key, state, severity, category, opened_at, "
            "triggered_at, updated_at, title) "
            "VALUES (1, 'disk', 'triggered', 'P1', 'availability', 1, 1, 1, 'DiskFull')"
        )
        for alert_id in (1, 2):
            conn.execute(
                "INSERT INTO alerts (id, fingerprint, status, labels, annotations, starts_at, "
                "generator_url, group_key, receiver, alertname, severity, category, "
                "classification, first_received, last_received, receive_count, updated_at, "
                "incident_id) VALUES (?, ?, 'firing', '{}', '{}', 1, '', '', '', 'DiskFull', "
                "'P1', 'availability', '{}', ?, ?, 1, ?, 1)",
                (alert_id, f"{alert_id:016x}", alert_id, alert_id, alert_id),
            )
        conn.execute(
            "INSERT INTO timeline (incident_id, at, kind, actor, via, detail) VALUES "
            "(1, 1, 'triggered', 'alertmanager', 'alertmanager', '{\"alert\":1}'), "
            "(1, 2, 'alert_fired', 'alertmanager', 'alertmanager', '{\"alert\":2}')"
        )
    finally:
        conn.close()

    store = SQLiteStore(path)
    await store.open()
    try:
        _, _, events, _ = await store.incident_details(1)
        assert _kinds(events) == [("triggered", 1), ("alert_fired", 2)]
        # A new alert joining it now makes its entry from its own row.
        joins = disk_alert("aaaa000000000003")
        await store.ingest([joins], T0)
        _, _, events, _ = await store.incident_details(1)
        assert _kinds(events) == [("triggered", 1), ("alert_fired", 2), ("alert_fired", 3)]
    finally:
        await store.close()


async def test_an_incident_resolved_within_a_batch_is_looked_up_again(tmp_path: Path) -> None:
    """Ingest jobs of one batch share the open incidents they looked up; a job of another
    kind between them (here the incident is resolved by hand) makes the next one look
    again, so a new alert retriggers the incident instead of joining it resolved."""
    commits: list[CommitStats] = []
    store = SQLiteStore(tmp_path / "r.db", on_commit=commits.append)
    await store.open()
    try:
        first = disk_alert("aaaa000000000001")
        second = disk_alert("aaaa000000000002")
        third = disk_alert("aaaa000000000003")
        await store.ingest([first], T0)
        (incident,) = await store.list_incidents()

        # The next three writes queue up and share one batch.
        later = T0 + timedelta(minutes=1)
        async with writer_held(store):
            joined = asyncio.ensure_future(store.ingest([second], later))
            resolved_by_hand = asyncio.ensure_future(
                store.transition(incident.id, "resolve", actor="alice", via="api", now=later)
            )
            fired_again = asyncio.ensure_future(store.ingest([third], later))
        assert await joined == [IngestOutcome.NEW]
        await resolved_by_hand
        assert await fired_again == [IngestOutcome.NEW]
        assert commits[-1].batch_size == 3  # the three did share one batch

        (incident,) = await store.list_incidents()
        assert incident.state is IncidentState.TRIGGERED
        assert incident.episode == 2
    finally:
        await store.close()


async def test_claim_skips_contact_methods_with_a_message_in_progress(
    store: SQLiteStore,
) -> None:
    """Pages for a contact method that is busy stay queued: marked as sending while they
    wait, a crash would make their outcome unknown although nobody had sent them."""
    await store.ingest([disk_alert("aaaa000000000001")], T0)
    pages = [
        NewPage("L1", PageKind.PAGE, contact, channel, address, T0)
        for contact, channel, address in [
            ("alice", "sms", "+15551230001"),
            ("alice", "email", "alice@example.com"),
            ("bob", "sms", "+15551230002"),
        ]
    ]
    await store.add_pages(1, 1, pages, None, T0)
    busy = [("alice", "sms", "+15551230001")]
    claimed = await store.claim_pages(T0, busy=busy)
    assert sorted((p.contact, p.channel) for p in claimed) == [("alice", "email"), ("bob", "sms")]
    assert await store.claim_pages(T0, busy=busy) == []
    (last,) = await store.claim_pages(T0)
    assert (last.contact, last.channel, last.state) == ("alice", "sms", PageState.SENDING)


async def test_a_page_being_sent_when_its_incident_is_acknowledged_is_not_retried(
    store: SQLiteStore,
) -> None:
    """Acknowledging cancels the queued pages; one that was being sent and then fails (a
    retry) or is held back (a rate limit) is cancelled too, instead of going out after the
    acknowledgement."""
    await store.ingest([disk_alert("aaaa000000000001")], T0)
    pages = [
        NewPage("L1", PageKind.PAGE, "alice", "sms", "+15551230001", T0),
        NewPage("L1", PageKind.PAGE, "alice", "email", "alice@example.com", T0),
    ]
    await store.add_pages(1, 1, pages, None, T0)
    sms, email = sorted(await store.claim_pages(T0), key=lambda p: p.channel != "sms")
    later = T0 + timedelta(seconds=5)
    # bob: alice's own acknowledgement would cancel her pages at once (_cancel_pages_to).
    await store.transition(1, "acknowledge", actor="bob", via="api", now=later)
    await store.finish_page(sms.id, PageState.QUEUED, later, error="500", retry_at=later)
    await store.hold_pages([email.id], later, "rate limit", later)
    assert await store.claim_pages(later + timedelta(minutes=5)) == []
    for page_id in (sms.id, email.id):
        page = await store.get_page(page_id)
        assert page is not None
        assert (page.state, page.error) == (PageState.CANCELLED, "incident acknowledged")


async def test_a_failed_page_and_its_reroute_are_one_transaction(store: SQLiteStore) -> None:
    """Recovery marks a page left 'sending' failed and queues where it goes next in one
    commit: when working out the reroute fails (as a crash would cut it), the page is still
    'sending', to be recovered again, not 'failed' with nobody told (ops review, stop 13)."""
    await store.ingest([disk_alert("aaaa000000000001")], T0)
    await store.add_pages(
        1, 1, [NewPage("L1", PageKind.PAGE, "alice", "sms", "+1555", T0)], None, T0
    )
    (page,) = await store.claim_pages(T0)
    await store.hand_over([page.id], T0)

    class Broken:
        free_only = False

        def __call__(
            self, page: Page, incident: Incident, siblings: Sequence[Page], done_before: bool
        ) -> Any:
            raise RuntimeError("cut off here")

    broken = Broken()

    with pytest.raises(RuntimeError, match="cut off here"):
        await store.recover_sending(T0, broken)
    still = await store.get_page(page.id)
    assert still is not None
    assert still.state is PageState.SENDING

    class ToBob:
        free_only = False

        def __call__(
            self, page: Page, incident: Incident, siblings: Sequence[Page], done_before: bool
        ) -> tuple[list[NewPage], None]:
            return [NewPage(page.step, page.kind, "bob", "email", "bob@example.com", T0)], None

    to_bob = ToBob()

    assert [p.id for p in await store.recover_sending(T0, to_bob)] == [page.id]
    pages = await store.step_pages(1, 1, "L1")
    assert [(p.contact, p.state) for p in pages] == [
        ("alice", PageState.FAILED),
        ("bob", PageState.QUEUED),
    ]


async def test_a_page_claimed_but_never_handed_over_goes_back_to_the_queue(
    store: SQLiteStore,
) -> None:
    """A page claimed while its limits were checked or its message composed reached nobody:
    interrupted (a crash, a store error), it is queued again, its claim not counted as an
    attempt, and it does not count as having told its contact. Once handed to its channel,
    the same interruption leaves its outcome unknown (failed, re-routed)."""
    await store.ingest([disk_alert("aaaa000000000001")], T0)
    await store.add_pages(
        1,
        1,
        [
            NewPage("L1", PageKind.PAGE, "alice", "sms", "+1555", T0),
            NewPage("L1", PageKind.PAGE, "alice", "email", "alice@example.com", T0),
        ],
        None,
        T0,
    )
    sms, email = sorted(await store.claim_pages(T0), key=lambda p: p.channel != "sms")
    await store.hand_over([email.id], T0)
    assert [i.id for i, _ in await store.open_incidents_paged_to(["alice"])] == [1]  # the email
    later = T0 + timedelta(minutes=1)
    # A delivery cut off by a store error: only its own pages, the unsent one due later.
    failed = await store.recover_sending(later, page_ids=[sms.id], retry_at=later)
    assert failed == []
    again = await store.get_page(sms.id)
    assert again is not None
    assert (again.state, again.attempts, again.due_at) == (PageState.QUEUED, 0, later)
    assert (await store.get_page(email.id)).state is PageState.SENDING  # type: ignore[union-attr]
    (claimed,) = await store.claim_pages(later)
    assert claimed.id == sms.id
    # At start: every page left sending, each by what became of it.
    failed = await store.recover_sending(later)
    assert [p.id for p in failed] == [email.id]
    assert (await store.get_page(sms.id)).state is PageState.QUEUED  # type: ignore[union-attr]


async def test_a_claimed_page_tells_nobody_until_it_is_handed_over(store: SQLiteStore) -> None:
    await store.ingest([disk_alert("aaaa000000000001")], T0)
    await store.add_pages(
        1, 1, [NewPage("L1", PageKind.PAGE, "alice", "sms", "+1555", T0)], None, T0
    )
    (page,) = await store.claim_pages(T0)
    assert await store.open_incidents_paged_to(["alice"]) == []
    assert await store.trigger_told(["alice"], 1) is None
    await store.hand_over([page.id], T0)
    assert [(i.id, who) for i, who in await store.open_incidents_paged_to(["alice"])] == [
        (1, "alice")
    ]
    assert await store.trigger_told(["alice"], 1) == (T0, "alice")


async def test_a_shared_number_answers_as_the_contact_told_last(store: SQLiteStore) -> None:
    """A phone two contacts share (a team phone) was texted for incident 1 as ops, then as
    alice: a reply from it acts as alice, whose page it most likely answers; incident 2,
    paged to ops alone, as ops."""
    await store.ingest([disk_alert("aaaa000000000001")], T0)
    await store.ingest([replace(alert("aaaa000000000002"), incident_key="other")], T0)
    later = T0 + timedelta(minutes=1)
    for incident_id, contact, at in ((1, "ops", T0), (2, "ops", T0), (1, "alice", later)):
        page = NewPage("L1", PageKind.PAGE, contact, "sms", "+15551230001", at)
        await store.add_pages(incident_id, 1, [page], None, at)
        (claimed,) = await store.claim_pages(at)
        await store.finish_page(claimed.id, PageState.SENT, at)
    both = ["ops", "alice"]
    assert await store.trigger_told(both, 1) == (T0, "alice")
    assert await store.trigger_told(both, 2) == (T0, "ops")
    assert await store.trigger_told(["bob"], 1) is None
    told = [(i.id, who) for i, who in await store.open_incidents_paged_to(both)]
    assert told == [(1, "alice"), (2, "ops")]


async def test_a_recovery_notice_goes_to_whoever_a_page_was_handed_over_for(
    store: SQLiteStore,
) -> None:
    """The incident resolves while alice's email and bob's SMS are claimed; alice's was
    handed over before the resolve (it may have reached her), bob's not: its hand-over
    cancels it, so the recovery notice is for alice alone. Before, a claimed page counted
    (it could still go out after the resolve) and bob would have been told "RESOLVED" of a
    page he never got."""
    await store.ingest([disk_alert("aaaa000000000001")], T0)
    pages = [
        NewPage("L1", PageKind.PAGE, "alice", "email", "a@example.com", T0),
        NewPage("L1", PageKind.PAGE, "bob", "sms", "+15551230002", T0),
    ]
    await store.add_pages(1, 1, pages, None, T0)
    alice, bob = sorted(await store.claim_pages(T0), key=lambda p: p.contact)
    assert await store.hand_over([alice.id], T0) == []
    later = T0 + timedelta(minutes=1)
    await store.transition(1, "resolve", actor="carol", via="api", now=later)
    (work,) = await store.due_escalations(later)
    assert work.paged == (("alice", "email", "a@example.com"),)
    assert await store.hand_over([bob.id], later) == [bob.id]
    cancelled = await store.get_page(bob.id)
    assert cancelled is not None
    assert (cancelled.state, cancelled.error) == (PageState.CANCELLED, "incident resolved")


async def test_a_transition_refused_by_its_expectation_changes_nothing(
    store: SQLiteStore,
) -> None:
    """``expect`` sees the incident inside the write (an email link checks the trigger it
    was sent for there): when it refuses, nothing is acknowledged and nothing recorded. A
    separate read before the write left room for a resolve and re-fire in between
    (escalation review, stop 17)."""
    await store.ingest([disk_alert("aaaa000000000001")], T0)
    seen: list[int] = []

    def refuse(incident: Incident) -> None:
        seen.append(incident.episode)
        raise LookupError("sent for another trigger")

    with pytest.raises(LookupError, match="another trigger"):
        await store.transition(
            1, "acknowledge", actor="bob", via="email", now=T0, text="on it", expect=refuse
        )
    assert set(seen) == {1}  # in the write (run again alone when a job of a batch fails)
    incident = await store.get_incident(1)
    assert incident.state is IncidentState.TRIGGERED
    assert incident.first_acknowledged_at is None
    # Accepted, it acts as before.
    accepted, changed = await store.transition(
        1, "acknowledge", actor="bob", via="email", now=T0, expect=lambda _: None
    )
    assert changed
    assert accepted.state is IncidentState.ACKNOWLEDGED


async def test_a_snooze_does_not_silence_a_reassignment(store: SQLiteStore) -> None:
    """The new owner's pages, queued before or during a snooze, stay queued through it (and
    through a longer snooze); the escalation's own pages are cancelled."""
    await store.ingest([disk_alert("aaaa000000000001")], T0)
    await store.add_pages(
        1,
        1,
        [NewPage("L2", PageKind.PAGE, "carol", "sms", "+1555", T0 + timedelta(hours=1))],
        None,
        T0,
    )
    to_bob = [NewPage("A", PageKind.PAGE, "bob", "email", "b@example.com", T0)]
    await store.transition(
        1, "reassign", actor="op", via="api", now=T0, assignee="bob", pages=to_bob
    )
    for minute in (1, 2):  # a snooze, then a longer one
        at = T0 + timedelta(minutes=minute)
        until = T0 + timedelta(hours=minute)
        await store.transition(1, "snooze", actor="op", via="api", now=at, until=until)
    pages = await store.step_pages(1, 1, "L2")
    assert [p.state for p in pages] == [PageState.CANCELLED]
    (claimed,) = await store.claim_pages(T0 + timedelta(minutes=3))
    assert (claimed.contact, claimed.step[0]) == ("bob", "A")


async def test_a_worse_alert_under_another_policy_starts_over_also_when_snoozed(
    store: SQLiteStore,
) -> None:
    """An incident of policy 'low', snoozed (or acknowledged); a P0 alert under 'high'
    joins: a new episode, so that 'low''s steps done are not read as 'high''s levels
    (escalation review, stop 16: high's level 1 never paged, and its level 2 was "reminded"
    to someone never paged). Its state stays, and targets still count from the trigger."""
    low = replace(CLASSIFIED, policy="low")
    high = replace(CLASSIFIED, severity=Severity.P0, policy="high")
    later = T0 + timedelta(minutes=20)
    for incident_id, action in ((1, "snooze"), (2, "acknowledge")):
        key = f"k{incident_id}"
        first = replace(alert(f"aaaa00000000000{incident_id}"), incident_key=key)
        await store.ingest([replace(first, classification=low)], T0)
        await store.transition(
            incident_id, action, actor="op", via="api", now=later, until=T0 + timedelta(hours=2)
        )
        before = await store.get_incident(incident_id)
        worse = replace(alert(f"bbbb00000000000{incident_id}"), incident_key=key)
        await store.ingest([replace(worse, classification=high)], later)
        after = await store.get_incident(incident_id)
        assert (after.policy, after.episode) == ("high", before.episode + 1), action
        assert (after.state, after.started) == (before.state, before.started), action


async def test_paid_send_times_count_a_bundle_once(store: SQLiteStore) -> None:
    """The SMS/voice budget's window, as read at start: a bundle is one message; email and
    messages older than the window do not count."""
    await store.ingest([disk_alert("aaaa000000000001")], T0)
    pages = [
        NewPage(f"L{n}", PageKind.PAGE, "alice", channel, address, T0)
        for n, (channel, address) in enumerate(
            [("sms", "+15551230001")] * 3 + [("email", "alice@example.com")]
        )
    ]
    await store.add_pages(1, 1, pages, None, T0)
    claimed = await store.claim_pages(T0)
    sms = [p.id for p in claimed if p.channel == "sms"]
    email = [p.id for p in claimed if p.channel == "email"]
    early, later = T0 + timedelta(minutes=1), T0 + timedelta(minutes=50)
    await store.finish_page(sms[0], PageState.SENT, early, provider_id="SM1")
    await store.finish_pages(sms[1:], PageState.SENT, later, provider_id="SM2")
    await store.finish_page(email[0], PageState.SENT, later, provider_id="<m@x>")
    assert await store.paid_send_times(T0) == [early, later]
    assert await store.paid_send_times(early + timedelta(seconds=1)) == [later]


async def test_the_last_drill_is_found_behind_any_number_of_incidents(
    store: SQLiteStore,
) -> None:
    """The drill schedule asks for the newest drill by category: it used to look among the
    newest 1,000 incidents only, and a storm made a drill look overdue (review, stop 12)."""
    drill = await store.create_drill("DRILL", [], "schedule", T0)
    for n in range(3):
        await store.ingest([disk_alert(f"bbbb00000000000{n}")], T0 + timedelta(hours=n + 2))
    assert len(await store.list_incidents()) >= 2
    (latest,) = await store.list_incidents(limit=1, category="drill")
    assert latest.id == drill
    assert [i.id for i in await store.list_incidents(limit=1)] != [drill]


async def _run_started(
    store: SQLiteStore,
    *,
    incident_id: int | None,
    action: str,
    target: str,
    audit: dict[str, Any] | None = None,
) -> bool:
    """Run r1 of ``action`` on ``target`` for alert 1, recorded as started at T0."""
    return await store.record_run(
        T0,
        run_id="r1",
        alert_id=1,
        incident_id=incident_id,
        action=action,
        target=target,
        trigger="fire",
        state="running",
        audit=audit or {},
        guards=None,
        event=Event.ACTION_STARTED,
        detail={},
    )


async def _run_ended(
    store: SQLiteStore,
    *,
    undo: dict[str, Any] | None = None,
    undo_hold_s: int | None = None,
    check_due_us: int | None = None,
) -> None:
    """Run r1 ended well at T0, with its lift and its check, if any."""
    await store.finish_run(
        T0,
        run_id="r1",
        outcome="ok",
        audit={},
        undo=undo,
        undo_hold_s=undo_hold_s,
        undo_at_us=None,
        check_due_us=check_due_us,
        guards=lambda: "{}",
        escalate=None,
    )


async def _blocked_for_a_loose_alert(store: SQLiteStore, fingerprint: str) -> IncomingAlert:
    """An alert of no incident fired at T0; run r1 blocked an address for it, to be lifted
    10 minutes after its resolve."""
    loose = alert(fingerprint)  # no incident key
    await store.ingest([loose], T0)
    assert await _run_started(store, incident_id=None, action="block", target="address=203.0.113.7")
    lift = {"argv": {"argv": ["/usr/sbin/iptables", "-D", "INPUT", "-s", "203.0.113.7"]}}
    await _run_ended(store, undo=lift, undo_hold_s=600)
    return loose


async def test_an_interrupted_iptables_block_is_lifted_at_its_expiry(store: SQLiteStore) -> None:
    """A daemon killed during an iptables block leaves the run 'running'; at the next start
    it is interrupted, and the lift recorded with it before it started is due at the
    block's expiry (nothing else would ever remove the rule)."""
    await store.ingest([disk_alert("aaaa000000000001")], T0)
    expiry = T0 + timedelta(hours=1)
    lift = ["/usr/sbin/iptables", "-w", "-D", "INPUT", "-s", "203.0.113.7", "-j", "DROP"]
    audit = {
        "request": {"argv": ["/usr/sbin/iptables", "-w", "-I"], "env": {"LANG": "C.UTF-8"}},
        "undo": {"argv": lift, "action": None, "on_resolve": False, "at": expiry.isoformat()},
    }
    recorded = await _run_started(
        store, incident_id=1, action="block", target="address=203.0.113.7", audit=audit
    )
    assert recorded
    (interrupted,) = await store.interrupt_runs(T0 + timedelta(minutes=1))
    assert interrupted.run_id == "r1"
    assert await store.due_undos(expiry - timedelta(seconds=1)) == []
    ((run, refired),) = await store.due_undos(expiry)
    assert run.undo is not None
    assert run.undo["argv"]["argv"] == lift
    # Cut off, it is not known to have inserted anything: a -D that finds no rule is then
    # "nothing to lift", not a failed lift that pages (containment review, stop 16).
    assert run.undo["maybe"] is True
    assert refired is False


async def test_a_new_state_directory_and_database_are_owner_only(tmp_path: Path) -> None:
    """Outside systemd's UMask=0077 too: the store holds phone numbers and alert text."""
    old = os.umask(0o022)
    try:
        store = SQLiteStore(tmp_path / "state" / "responder.db")
        await store.open()
        await store.ingest([disk_alert("aaaa000000000001")], T0)
        modes = {
            p.name: p.stat().st_mode & 0o777
            for p in [tmp_path / "state", *(tmp_path / "state").iterdir()]
        }
        await store.close()
    finally:
        os.umask(old)
    assert modes.pop("state") == 0o700
    assert "responder.db-wal" in modes
    assert set(modes.values()) == {0o600}, modes


async def test_retention_deletes_what_ended_long_ago_and_nothing_in_use(
    store: SQLiteStore,
) -> None:
    """An incident resolved before the cutoff goes with its alerts, timeline and pages; an
    alert of no incident that ended before it goes; an open incident, a recent one, a
    firing alert and a watched heartbeat's alert stay."""
    old, recent = T0, T0 + timedelta(days=30)
    cutoff = T0 + timedelta(days=10)
    gone = replace(disk_alert("aaaa000000000001"), incident_key="gone")
    await store.ingest([gone], old)
    await store.add_pages(
        1, 1, [NewPage("L1", PageKind.PAGE, "alice", "sms", "+1", old)], None, old
    )
    await store.ingest([resolved(gone, old + timedelta(hours=1))], old + timedelta(hours=1))
    loose = alert("bbbb000000000001")  # no incident key: an alert of no incident
    await store.ingest([loose], old)
    await store.ingest([resolved(loose, old + timedelta(hours=1))], old + timedelta(hours=1))
    beat = replace(alert("cccc000000000001"), classification=replace(CLASSIFIED, heartbeat=True))
    await store.ingest([beat], old)
    await store.ingest([resolved(beat, old + timedelta(hours=1))], old + timedelta(hours=1))
    still_open = replace(disk_alert("dddd000000000001"), incident_key="open")
    await store.ingest([still_open], old)
    kept = replace(disk_alert("eeee000000000001"), incident_key="kept")
    await store.ingest([kept], recent)
    await store.ingest([resolved(kept, recent + timedelta(hours=1))], recent)

    assert await store.prune(cutoff, limit=1) == (1, 1)  # one batch: at most one of each
    assert await store.prune(cutoff) == (0, 0)  # nothing more due: the rest is in use
    incidents = {i.key: i.state for i in await store.list_incidents(states=())}
    assert incidents == {"open": IncidentState.TRIGGERED, "kept": IncidentState.RESOLVED}
    left = {a.fingerprint for a in await store.list_alerts(AlertQuery(limit=100))}
    assert left == {"cccc000000000001", "dddd000000000001", "eeee000000000001"}
    assert await store.step_pages(1, 1, "L1") == []


async def test_not_ready_while_the_disk_refuses_writes(store: SQLiteStore) -> None:
    """A full disk fails every write with 503; readiness says so too, and comes back with
    the first write that succeeds (ops review, stop 13). The database's page limit stands
    in for a full disk."""
    assert await store.ping()
    full = await store._write(lambda conn: conn.execute("PRAGMA page_count").fetchone()[0])
    await store._write(lambda conn: conn.execute(f"PRAGMA max_page_count = {full}"))
    with pytest.raises(StoreError, match="full"):
        await store.ingest([alert(f"{n:016x}") for n in range(500)], T0)
    assert not await store.ping()
    await store._write(lambda conn: conn.execute("PRAGMA max_page_count = 1073741823"))
    await store.ingest([alert("aaaa000000000001")], T0)
    assert await store.ping()


async def test_retention_keeps_a_run_whose_undo_waits_for_the_resolve(
    store: SQLiteStore,
) -> None:
    """A block made for a firing alert is lifted when the alert resolves. The alert went
    stale meanwhile; retention must keep it and its run, or the resolve that comes later
    lifts nothing and the block stays for ever (second review, stop 13)."""
    loose = await _blocked_for_a_loose_alert(store, "bbbb000000000001")
    assert await store.mark_stale(T0 + timedelta(minutes=30), T0 + timedelta(hours=1))
    assert await store.prune(T0 + timedelta(days=2)) == (0, 0)
    assert [r.run_id for r in await store.action_runs()] == ["r1"]
    await store.ingest([resolved(loose, T0 + timedelta(days=3))], T0 + timedelta(days=3))
    assert await store.due_undos(T0 + timedelta(days=4))  # the block is lifted


async def test_two_paths_to_one_database_share_its_lock(tmp_path: Path) -> None:
    real = tmp_path / "state"
    real.mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "responder.db").symlink_to(real / "responder.db")
    first = SQLiteStore(real / "responder.db")
    await first.open()
    second = SQLiteStore(tmp_path / "other" / "responder.db")
    try:
        with pytest.raises(StoreError, match="another responder"):
            await second.open()
    finally:
        await second.close()
        await first.close()


async def test_a_write_refused_by_a_full_disk_leaves_readiness_at_503(
    store: SQLiteStore, tmp_path: Path
) -> None:
    """When SQLite undoes only the failing statement (a multi-row write: rearm_open's
    UPDATE), the batch's empty COMMIT that follows must not clear the fault: the write
    failed 'database or disk is full', and readiness says so (third review, stop 13)."""
    await store.ingest([replace(alert(f"{n:016x}"), incident_key=f"k{n}") for n in range(400)], T0)
    # Incidents with nothing due (acknowledged, every step done): next_due NULL.
    await store._write(lambda conn: conn.execute("UPDATE incidents SET next_due = NULL"))
    with sqlite3.connect(tmp_path / "responder.db") as other:
        other.execute("VACUUM")  # no free page left: the disk is full
    full = await store._write(lambda conn: conn.execute("PRAGMA page_count").fetchone()[0])
    await store._write(lambda conn: conn.execute(f"PRAGMA max_page_count = {full}"))
    with pytest.raises(StoreError, match="full"):
        await store.rearm_open_incidents(T0)
    assert not await store.ping()


async def test_a_hold_in_progress_at_the_upgrade_to_schema_11_is_kept(tmp_path: Path) -> None:
    """An incident whose first page a rule's hold_page held when schema 10 was running: the
    migration records its hold, so the first start's re-arm does not page at once."""
    path = tmp_path / "old.db"
    now_us = int(datetime.now(UTC).timestamp() * 1_000_000)
    held_to = now_us + 300_000_000
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        migrate_to(conn, 10)
        for incident_id, hold in ((1, "300"), (2, "null")):
            conn.execute(
                "INSERT INTO incidents (id, key, state, severity, category, opened_at, "
                "triggered_at, next_due, updated_at, title) "
                "VALUES (?, ?, 'triggered', 'P1', 'availability', ?, ?, ?, ?, 'WebDown')",
                (incident_id, f"k{incident_id}", now_us, now_us, held_to, now_us),
            )
            conn.execute(
                "INSERT INTO alerts (id, fingerprint, status, labels, annotations, starts_at, "
                "generator_url, group_key, receiver, alertname, severity, category, "
                "classification, first_received, last_received, receive_count, updated_at, "
                "incident_id) VALUES (?, ?, 'firing', '{}', '{}', 1, '', '', '', 'WebDown', "
                "'P1', 'availability', ?, 1, 1, 1, 1, ?)",
                (incident_id, f"{incident_id:016x}", f'{{"hold_page_s": {hold}}}', incident_id),
            )
    finally:
        conn.close()
    store = SQLiteStore(path)
    await store.open()
    try:
        await store.rearm_open_incidents(datetime.now(UTC))
        due = {i.id: i.next_due for i in await store.list_incidents()}
    finally:
        await store.close()
    assert due[1] is not None
    assert to_us(due[1]) == held_to  # still held
    assert due[2] is not None
    assert to_us(due[2]) < held_to  # no hold: due at once


async def test_the_upgrade_to_schema_13_keys_each_runs_change(tmp_path: Path) -> None:
    """Runs recorded before schema 13 get their change key from their audit: the same undo
    with the same values from a label and from a default is one change; an iptables block
    (a lift at its expiry) is not a shared lift; a run with no undo has no key."""
    path = tmp_path / "old.db"
    undo: dict[str, Any] = {
        "argv": ["/usr/local/bin/maint", "off", "web-1"],
        "action": None,
        "at": None,
    }
    own_rule = {"argv": ["iptables", "-D"], "action": None, "at": "2026-01-05T10:00:00+00:00"}
    runs = {
        "a": ("maintenance", "backend=web-1", undo, "label backend"),
        "b": ("maintenance", "backend=web-1", undo, "default"),
        "c": (
            "maintenance",
            "backend=web-2",
            {**undo, "argv": ["/usr/local/bin/maint", "off", "web-2"]},
            "",
        ),
        "d": ("block", "address=203.0.113.7", own_rule, "label source_ip"),
        "e": ("restart", "unit=nginx.service", None, "label unit"),
    }
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        migrate_to(conn, 12)
        for number, (run_id, (action, target, planned, origin)) in enumerate(runs.items()):
            value = target.split("=", 1)[1]
            params = [{"name": target.split("=")[0], "value": value, "from": origin}]
            audit = json.dumps({"undo": planned, "params": params})
            conn.execute(
                "INSERT INTO action_runs (run_id, alert_id, action, target, trigger, state, "
                "audit, started_at) VALUES (?, ?, ?, ?, 'fire', 'done', ?, 1)",
                (run_id, number + 1, action, target, audit),
            )
    finally:
        conn.close()
    store = SQLiteStore(path)
    await store.open()
    await store.close()
    conn = sqlite3.connect(path)
    try:
        keys = dict(
            conn.execute("SELECT run_id, json_array(change_key, shared_lift) FROM action_runs")
        )
    finally:
        conn.close()
    key = {run_id: json.loads(text) for run_id, text in keys.items()}
    assert key["a"] == key["b"]
    assert key["a"][0] is not None
    assert key["a"][1] == 1
    assert key["c"][0] != key["a"][0]
    assert key["d"][1] == 0
    assert key["e"][0] is None


async def test_the_upgrade_to_schema_14_knows_which_pages_failed_over(tmp_path: Path) -> None:
    """A page whose failover is on the timeline does not fail over again after the upgrade;
    a page that a budget hold only re-routed to free channels still may."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        migrate_to(conn, 13)
        for page_id, reason in (
            (1, "Twilio answered HTTP 500"),
            (2, "hourly SMS/voice budget used"),
        ):
            conn.execute(
                "INSERT INTO pages (id, incident_id, episode, step, kind, contact, channel, "
                "address, due_at, state, cancel_on_ack, created_at, updated_at) "
                "VALUES (?, 1, 1, 'L1', 'page', 'alice', ?, 'x', 1, 'queued', 1, 1, 1)",
                (page_id, f"channel{page_id}"),
            )
            detail = json.dumps({"failed_page": page_id, "reason": reason, "to": ["bob/email"]})
            conn.execute(
                "INSERT INTO timeline (incident_id, at, kind, detail) VALUES (1, 7, 'failover', ?)",
                (detail,),
            )
    finally:
        conn.close()
    store = SQLiteStore(path)
    await store.open()
    await store.close()
    conn = sqlite3.connect(path)
    try:
        marks = dict(conn.execute("SELECT id, failed_over_at FROM pages"))
    finally:
        conn.close()
    assert marks == {1: 7, 2: None}


async def test_pages_sending_before_the_upgrade_count_as_handed_over(tmp_path: Path) -> None:
    """Schema 15: a page an older release left 'sending' may have reached its provider
    (nothing tells which were handed over): its outcome stays unknown, re-routed, not resent."""
    path = tmp_path / "old.db"
    store = SQLiteStore(path)
    await store.open()
    await store.ingest([disk_alert("aaaa000000000001")], T0)
    await store.add_pages(
        1, 1, [NewPage("L1", PageKind.PAGE, "alice", "sms", "+1555", T0)], None, T0
    )
    (page,) = await store.claim_pages(T0)
    await store.close()
    back_to_schema(path, 14)
    store = SQLiteStore(path)
    await store.open()
    try:
        (failed,) = await store.recover_sending(T0)
        assert failed.id == page.id
    finally:
        await store.close()


async def test_the_first_acknowledgement_is_read_from_the_timeline_on_upgrade(
    tmp_path: Path,
) -> None:
    """Schema 16: an incident acknowledged, then snoozed, before the upgrade keeps its first
    acknowledgement (the timeline's), which the snooze had erased from acknowledged_at."""
    path = tmp_path / "old.db"
    store = SQLiteStore(path)
    await store.open()
    await store.ingest([disk_alert("aaaa000000000001")], T0)
    acked = T0 + timedelta(minutes=3)
    await store.transition(1, "acknowledge", actor="alice", via="sms", now=acked)
    later = T0 + timedelta(minutes=5)
    await store.transition(
        1, "snooze", actor="bob", via="api", now=later, until=T0 + timedelta(hours=1)
    )
    await store.close()
    back_to_schema(path, 15)
    store = SQLiteStore(path)
    await store.open()
    try:
        incident = await store.get_incident(1)
    finally:
        await store.close()
    assert (incident.acknowledged_at, incident.first_acknowledged_at) == (None, acked)
    assert incident.first_acknowledged_by == "alice"


async def test_a_held_lift_rescheduled_any_other_way_is_no_longer_shown_held(
    tmp_path: Path,
) -> None:
    """'held' (waiting for another alert) is a mark on the lift; a resolve of its own alert,
    a postponement or a lift by hand reschedules it for another reason, and the mark goes
    (the API said 'held' after nothing held it any more)."""
    from responder.store import sqlite_actions as actions

    store = SQLiteStore(tmp_path / "r.db")
    await store.open()
    await store.close()
    conn = sqlite3.connect(tmp_path / "r.db", isolation_level=None)
    undo = json.dumps({"argv": {"argv": ["/bin/off"], "env": {}}, "action": None, "held": 1})
    try:
        conn.execute(
            "INSERT INTO alerts (id, fingerprint, status, labels, annotations, starts_at, "
            "generator_url, group_key, receiver, alertname, severity, category, "
            "classification, first_received, last_received, receive_count, updated_at) "
            "VALUES (1, 'f', 'resolved', '{}', '{}', 1, '', '', '', 'A', 'P2', 'x', '{}', "
            "1, 1, 1, 1)"
        )

        def held_run(run_id: str) -> None:
            conn.execute(
                "INSERT INTO action_runs (run_id, alert_id, action, target, trigger, state, "
                "audit, undo, undo_hold_s, undo_state, undo_due, started_at) "
                "VALUES (?, 1, 'm', 't', ?, 'done', '{}', ?, 300, 'wait', 5, 1)",
                (run_id, run_id, undo),
            )

        def held(run_id: str) -> object:
            return conn.execute(
                "SELECT json_extract(undo, '$.held') FROM action_runs WHERE run_id = ?",
                (run_id,),
            ).fetchone()[0]

        for run_id in ("resolved", "postponed", "by-hand1"):
            held_run(run_id)
        actions.alert_resolved(conn, 1, 10)
        assert held("resolved") is None
        conn.execute("UPDATE action_runs SET undo_state = 'wait' WHERE run_id != 'resolved'")
        conn.execute("UPDATE action_runs SET undo = ? WHERE run_id != 'resolved'", (undo,))
        actions.finish_undo(conn, "postponed", "postponed", {}, 10)
        assert held("postponed") is None
        assert actions.lift_now(conn, "by-hand1", "alice", 10) == ("by-hand1", None)
        assert held("by-hand1") is None
    finally:
        conn.close()


async def _lift_waiting(
    store: SQLiteStore,
    run_id: str,
    target: str,
    *,
    at: datetime,
    hold_s: int | None = None,
    action: str = "m",
    undo: dict[str, Any] | None = None,
) -> None:
    """A finished run of ``action`` on ``target`` (alert 1) whose lift waits: due ``at``
    (an iptables expiry), or with ``hold_s``, a hold-down after its alert's resolve. Its
    ``undo`` is ``/bin/off TARGET`` unless given."""
    recorded = await store.record_run(
        T0,
        run_id=run_id,
        alert_id=1,
        incident_id=1,
        action=action,
        target=target,
        trigger=f"fire-{run_id}",
        state="running",
        audit={},
        guards=None,
        event=Event.ACTION_STARTED,
        detail={},
    )
    assert recorded
    await store.finish_run(
        T0,
        run_id=run_id,
        outcome="ok",
        audit={},
        undo=undo or {"argv": {"argv": ["/bin/off", target], "env": {}}, "action": None},
        undo_hold_s=hold_s,
        undo_at_us=None if hold_s is not None else to_us(at),
        check_due_us=None,
        guards=lambda: "{}",
        escalate=None,
    )


async def test_the_lift_lane_is_not_handed_a_lift_under_way_nor_one_the_kill_switch_holds(
    store: SQLiteStore,
) -> None:
    """Lifts run beside the engine's loop: one under way is still 'wait' in the store, and
    must not be handed out (nor counted as due) again, nor another of its action and target
    (two site scripts at once on one backend); while paused, only lifts asked for by hand."""
    await store.ingest([disk_alert("aaaa000000000001")], T0)
    due = T0 + timedelta(minutes=1)
    await _lift_waiting(store, "r1", "web-1", at=due)
    await _lift_waiting(store, "r2", "web-1", at=due + timedelta(seconds=1))
    await _lift_waiting(store, "r3", "web-2", at=due + timedelta(seconds=2))
    later = T0 + timedelta(minutes=5)

    async def handed(**kwargs: Any) -> list[str]:
        return [run.run_id for run, _ in await store.due_undos(later, **kwargs)]

    assert await handed() == ["r1", "r2", "r3"]
    assert await handed(busy=["r1"]) == ["r3"]
    assert await store.next_lift_due(busy=["r1"]) == due + timedelta(seconds=2)
    assert await store.next_lift_due(busy=["r1", "r3"]) is None
    assert await handed(manual_only=True) == []
    assert await store.next_lift_due(manual_only=True) is None
    assert await store.lift_now("r2", "alice", later) == ("r2", None)
    assert await handed(manual_only=True) == ["r2"]
    assert await store.next_lift_due(manual_only=True) == later


async def test_a_lift_cut_off_is_known_as_such_when_it_is_due_again(store: SQLiteStore) -> None:
    """A lift marked started and never finished (the daemon died in it) is handed out again
    with the mark, so the engine knows its first try may have done the work; a lift that
    ended loses the mark (a later lift by hand is no re-run of a cut-off one)."""
    await store.ingest([disk_alert("aaaa000000000001")], T0)
    await _lift_waiting(store, "r1", "web-1", at=T0)
    await store.start_undo("r1", T0)
    ((run, _),) = await store.due_undos(T0)
    assert run.undo is not None
    assert run.undo["lifting"] == to_us(T0)
    await store.finish_undo("r1", "failed", {}, T0)
    assert await store.lift_now("r1", "alice", T0) == ("r1", None)
    ((run, _),) = await store.due_undos(T0)
    assert run.undo is not None
    assert "lifting" not in run.undo


async def test_a_lift_recorded_as_removed_by_hand_after_it_was_read_as_due_does_not_start(
    store: SQLiteStore,
) -> None:
    """The lift lane reads a lift as due, then (while it awaits another write) an operator
    records the change as removed by hand: the lift must not start, or its outcome would
    overwrite the operator's record (and a failure would raise ContainmentLiftFailed)."""
    await store.ingest([disk_alert("aaaa000000000001")], T0)
    await _lift_waiting(store, "r1", "web-1", at=T0)
    ((run, _),) = await store.due_undos(T0)
    removed = await store.removed_by_hand("r1", "alice", "deleted the rule myself", T0)
    assert removed.changed
    assert not await store.start_undo(run.run_id, T0)
    (stored,) = [r for r in await store.action_runs() if r.run_id == "r1"]
    assert stored.undo_state == "removed_by_hand"
    assert stored.undo is not None
    assert "lifting" not in stored.undo


async def test_a_postponement_written_after_a_lift_by_hand_keeps_the_lift(
    store: SQLiteStore,
) -> None:
    """The lift lane reads a lift as due while its alert fires again (to be postponed), then
    an operator lifts it by hand, then the postponement is written: the lift by hand stands
    (it was turned into 'postponed', and the change was never lifted)."""
    first = disk_alert("aaaa000000000001")
    await store.ingest([first], T0)
    await _lift_waiting(store, "r1", "web-1", at=T0, hold_s=300)
    await store.ingest([resolved(first, T0 + timedelta(minutes=1))], T0 + timedelta(minutes=1))
    again = replace(
        disk_alert("aaaa000000000001"),
        alert=msgspec.structs.replace(first.alert, starts_at=T0 + timedelta(minutes=2)),
    )
    await store.ingest([again], T0 + timedelta(minutes=2))
    now = T0 + timedelta(minutes=7)
    ((run, refired),) = await store.due_undos(now)
    assert (run.run_id, refired) == ("r1", True)
    assert await store.lift_now("r1", "alice", now) == ("r1", None)
    await store.finish_undo("r1", "postponed", {"undo": "postponed"}, now)
    ((run, refired),) = await store.due_undos(now)
    assert (run.run_id, refired) == ("r1", False)
    assert run.undo is not None
    assert run.undo["manual"] == "alice"


async def test_an_alert_resolves_within_check_of_a_stale_alert_is_unknown(
    store: SQLiteStore,
) -> None:
    """At its deadline the check reads the alert's status; a stale alert did not resolve,
    and the verdict recorded for it is neither verified nor failed: the run's outcome stays
    as it ended, the timeline says 'containment_unverified', and nothing escalates."""
    await store.ingest([disk_alert("aaaa000000000001")], T0)
    recorded = await _run_started(store, incident_id=1, action="restart", target="web")
    assert recorded
    deadline = T0 + timedelta(hours=1)
    await _run_ended(store, check_due_us=to_us(deadline))
    assert await store.mark_stale(T0 + timedelta(minutes=30), T0 + timedelta(minutes=30))
    assert await store.next_check_due() == deadline
    ((run, status),) = await store.due_checks(deadline)
    assert (run.run_id, status) == ("r1", "stale")
    await store.finish_check("r1", None, "went stale", deadline)
    assert await store.due_checks(deadline) == []
    assert await store.next_check_due() is None
    (row,) = await store.action_runs()
    assert row.outcome == "ok"
    events, _ = await only_timeline(store)
    kinds = [e.kind for e in events]
    assert Event.CONTAINMENT_UNVERIFIED in kinds
    assert Event.CONTAINMENT_FAILED not in kinds
    assert Event.CONTAINMENT_VERIFIED not in kinds


async def test_a_late_verdict_and_the_breaker_that_counts_it_are_one_write(
    store: SQLiteStore, tmp_path: Path
) -> None:
    """The verdict of an 'alert resolves within' check and the guards' state that counts
    it are written together: refused (a full disk, here a trigger on the guards' row), the
    check is still due and the timeline says nothing of it; written, both are there (they
    were two writes, and a crash between them left the breaker not counting a failure the
    timeline recorded)."""
    await store.ingest([disk_alert("aaaa000000000001")], T0)
    assert await _run_started(store, incident_id=1, action="restart", target="web")
    deadline = T0 + timedelta(minutes=2)
    await _run_ended(store, check_due_us=to_us(deadline))
    counted = '{"breakers": [{"action": "restart", "consecutive_failures": 1}]}'
    with sqlite3.connect(tmp_path / "responder.db") as conn:
        conn.execute(
            "CREATE TRIGGER refuse_guards BEFORE UPDATE ON guard_state "
            "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    with pytest.raises(StoreError):
        await store.finish_check("r1", False, "did not resolve", deadline, guards=lambda: counted)
    assert [run.run_id for run, _ in await store.due_checks(deadline)] == ["r1"]
    events, _ = await only_timeline(store)
    assert Event.CONTAINMENT_FAILED not in [e.kind for e in events]
    with sqlite3.connect(tmp_path / "responder.db") as conn:
        conn.execute("DROP TRIGGER refuse_guards")
    await store.finish_check("r1", False, "did not resolve", deadline, guards=lambda: counted)
    assert await store.due_checks(deadline) == []
    assert await store.load_guards() == counted
    (row,) = await store.action_runs()
    assert row.outcome == "check_failed"
    events, _ = await only_timeline(store)
    assert Event.CONTAINMENT_FAILED in [e.kind for e in events]


async def _failed_lift(store: SQLiteStore) -> None:
    """Run r1 blocked an address for an alert of no incident; its lift failed after the
    resolve, and the run is marked for the daemon's own alert."""
    loose = await _blocked_for_a_loose_alert(store, "bbbb000000000002")
    later = T0 + timedelta(hours=1)
    await store.ingest([resolved(loose, later)], later)
    assert not await store.finish_undo("r1", "failed", {}, later, escalate="undo failed")
    assert [r.run_id for r in await store.alerted_lifts()] == ["r1"]


async def test_retention_keeps_a_run_whose_lift_failed(store: SQLiteStore) -> None:
    """A failed lift leaves its change in place (an address blocked) and the daemon's own
    alert (ContainmentLiftFailed) names the run: retention must keep the run, or its alert
    is no longer re-sent (the stale sweep then ends it with the change still in place) and
    'responder actions lift RUN' answers 'no such run'."""
    await _failed_lift(store)
    assert await store.prune(T0 + timedelta(days=30)) == (0, 0)
    assert [r.run_id for r in await store.alerted_lifts()] == ["r1"]


async def test_a_lift_done_whose_own_alert_still_fires_is_listed_to_resolve_it(
    store: SQLiteStore,
) -> None:
    """The lift by hand of r1 succeeded and the daemon died before it sent the resolved
    copy of ContainmentLiftFailed: the run is still listed (as ended) while that alert
    fires, so the next start resolves it; nothing is listed once it has."""
    await _failed_lift(store)
    at = T0 + timedelta(hours=2)
    await store.ingest([alert("lift-failed:r1", starts=at)], at)
    assert await store.lift_now("r1", "alice", at + timedelta(minutes=1)) == ("r1", None)
    await store.finish_undo("r1", "done", {}, at + timedelta(minutes=2))
    (listed,) = await store.alerted_lifts()
    assert (listed.run_id, listed.undo_state) == ("r1", "done")
    end = at + timedelta(minutes=3)
    await store.ingest([alert("lift-failed:r1", AlertStatus.RESOLVED, at, end)], end)
    assert await store.alerted_lifts() == []


async def test_a_change_removed_by_hand_whose_own_alert_still_fires_is_listed_to_resolve_it(
    store: SQLiteStore,
) -> None:
    """r1's lift failed (its ContainmentLiftFailed fires); an operator records that its
    change was removed by hand, and the daemon dies before it sends the alert's resolved
    copy: the run is still listed (as ended) while that alert fires, so the next start
    resolves it. Asked again, it is recorded already, with the first record's who and why;
    a lift by hand is refused, and says so."""
    await _failed_lift(store)
    at = T0 + timedelta(hours=2)
    await store.ingest([alert("lift-failed:r1", starts=at)], at)
    removed = await store.removed_by_hand("r1", "alice", "rule deleted by hand", at)
    assert (removed.run_id, removed.refused, removed.changed) == ("r1", None, True)
    assert removed.run is not None
    assert removed.run.undo_state == "removed_by_hand"
    (listed,) = await store.alerted_lifts()
    assert (listed.run_id, listed.undo_state) == ("r1", "removed_by_hand")
    again = await store.removed_by_hand("r1", "bob", "again", at + timedelta(minutes=1))
    assert (again.refused, again.changed) == (None, False)
    assert again.run is not None
    assert again.run.undo is not None
    assert again.run.undo["removed"] == {
        "by": "alice",
        "reason": "rule deleted by hand",
        "at": to_us(at),
    }
    _, refused = await store.lift_now("r1", "carol", at + timedelta(minutes=2))
    assert refused == "the change was recorded as removed by hand by alice: rule deleted by hand"
    end = at + timedelta(minutes=3)
    await store.ingest([alert("lift-failed:r1", AlertStatus.RESOLVED, at, end)], end)
    assert await store.alerted_lifts() == []


async def test_a_lift_under_way_is_not_recorded_as_removed_by_hand(store: SQLiteStore) -> None:
    """The engine runs r1's lift now: its outcome is about to be written, and a record that
    the change is gone would be overwritten by it (or overwrite it). Refused; the lift
    still waits in the store."""
    await _failed_lift(store)
    at = T0 + timedelta(hours=2)
    removed = await store.removed_by_hand("r1", "alice", "gone", at, under_way=["r1"])
    assert removed.refused == (
        "its lift is running now; the incident's timeline will show how it ended"
    )
    (run,) = await store.action_runs()
    assert run.undo_state == "failed"


async def test_a_shared_element_found_gone_ends_the_failed_lifts_of_the_same_element(
    store: SQLiteStore,
) -> None:
    """Two runs added the same nft set element (a shared change). The first run's lift
    failed and raised its own alert; the second run's lift finds the element gone (nft: no
    such element, 'nothing'). Nothing of the change is in place, so the first run's failed
    lift stands down and its alert can resolve; it stayed 'failed', re-sent for ever, as
    only a 'done' lift ended it (crash review)."""
    await store.ingest([disk_alert("aaaa000000000001")], T0)
    delete = [
        "/usr/sbin/nft",
        "delete",
        "element",
        "inet",
        "responder",
        "blocked",
        "{ 203.0.113.7 }",
    ]
    shared = {"argv": {"argv": delete, "env": {}}, "shared": True}
    for run_id in ("r1", "r2"):
        await _lift_waiting(
            store, run_id, "address=203.0.113.7", at=T0, action="block", undo=shared
        )
    await store.finish_undo("r1", "failed", {}, T0, escalate="undo of block failed")
    await store.finish_undo("r2", "nothing", {}, T0)
    states = {r.run_id: r.undo_state for r in await store.action_runs()}
    assert states == {"r1": "cancelled", "r2": "nothing"}


async def test_a_twilio_request_is_taken_with_the_action_it_asks_for(store: SQLiteStore) -> None:
    """The sid of an SMS reply is recorded in the write that acts on it, and only if that
    write commits; the answer comes after, and retention forgets it with the incidents."""
    await store.ingest([disk_alert("aaaa000000000001")], T0)

    def refuse(incident: Incident) -> None:
        raise StateConflict("fired again")

    with pytest.raises(StateConflict):
        await store.transition(
            1, "acknowledge", actor="alice", via="sms", now=T0, expect=refuse, taking="SM1"
        )
    assert await store.twilio_request("SM1") is None  # nothing done, nothing taken
    later = T0 + timedelta(seconds=5)
    await store.transition(1, "acknowledge", actor="alice", via="sms", now=later, taking="SM1")
    assert await store.twilio_request("SM1") == TakenRequest(later, None)
    await store.take_twilio_request("SM1", later + timedelta(seconds=1), "Acknowledged #1.")
    assert await store.twilio_request("SM1") == TakenRequest(later, "Acknowledged #1.")
    await store.take_twilio_request("SM2", later, None)  # acted on nothing: taken all the same

    assert await store.forget_twilio_requests(later, limit=1) == 0  # taken at the cutoff: kept
    cutoff = later + timedelta(days=1)
    assert await store.forget_twilio_requests(cutoff, limit=1) == 1
    assert await store.forget_twilio_requests(cutoff, limit=1) == 1
    assert await store.forget_twilio_requests(cutoff) == 0
    assert await store.twilio_request("SM1") is None

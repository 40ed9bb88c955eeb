"""The embedded engine: SQLite in WAL mode, one writer thread with group commit.

Every write is a small function run by the single writer thread on its own connection.
The thread takes whatever writes are waiting, runs each inside a savepoint (so one failing
write does not fail its neighbours), commits them all with one fsync, then wakes their
callers. Under load this turns N webhooks into one commit; at rest a write commits alone
at once. Reads use a second connection and never wait for the writer (WAL).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from mypy_extensions import mypyc_attr

from responder.contain.guards import RunRecord
from responder.contain.orphans import ProcessIdentity
from responder.contain.outcome import Outcome
from responder.incident import (
    EscalationWork,
    Event,
    Incident,
    NewPage,
    Page,
    PageState,
    StepDone,
    TimelineEvent,
)
from responder.model import STALE_SWEEP, AlertStatus
from responder.policy import EscalationLayout
from responder.store import sqlite_actions as actions
from responder.store import sqlite_heartbeats as heartbeats
from responder.store import sqlite_incidents as inc
from responder.store import sqlite_retention as retention
from responder.store.base import (
    PRUNE_BATCH,
    AlertQuery,
    EscalationUpdate,
    HeartbeatRow,
    IncomingAlert,
    IngestOutcome,
    QueuedAlert,
    RemovedByHand,
    Reroute,
    RunRow,
    SchemaTooNew,
    StoredAlert,
    StoreError,
    TakenRequest,
)
from responder.store.migrations import SQLITE_MIGRATIONS
from responder.store.sqlite_incidents import dumps as _dumps
from responder.store.sqlite_incidents import dumps_texts, from_us, to_us
from responder.store.sqlite_ingest import IngestCache, OpenIncidents, ingest_one

T = TypeVar("T")
DEFAULT_REOPEN_WITHIN = timedelta(hours=1)
log = logging.getLogger("responder.store")

# A batch larger than this is split: it bounds the time one commit holds the lock and
# the latency of the first request in the batch.
MAX_BATCH = 512
# How often writes with a deadline are checked: a deadline is met to within this.
DEADLINE_CHECK_S = 0.25
# Under concurrent writes, a commit starts at least this long after the previous one. Each
# commit costs a fixed ~150 µs of CPU (fsync, thread hand-overs) however few writes it
# carries: at 5,400 webhooks/s the writer committed 1,900 times a second, 2.9 webhooks
# each, and the daemon needed 0.91 of its core; spaced 2 ms apart, 0.60 (docs/performance.md).
# A write with nothing else in flight (quiet times, one chain of writes) is not delayed.
COMMIT_SPACING_S = 0.002
# Disk space set aside at open, in a file beside the database (``<database>.reserve``), and
# given up the first time a commit finds the disk full: the writes that follow (the outbox
# claiming and recording its pages, webhooks) have room while the operator frees space,
# so a full disk does not silence paging. Taken again once twice that much is free.
RESERVE_BYTES = 8 * 1024 * 1024
RESERVE_CHECK_S = 30.0  # how often, while the reserve is given up, free space is looked at
SQLITE_FULL = 13


@dataclass(slots=True)
class _Job:
    work: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    # An ingest job keeps the open incidents it looked up for the next ingest job of the
    # batch (``OpenIncidents``); after any other job they are looked up again.
    ingest: bool = False


@dataclass(frozen=True, slots=True)
class CommitStats:
    """Reported to the metrics hook after each commit."""

    batch_size: int
    seconds: float
    # The disk filled and the reserve is given up (not yet set aside again): the writes go on
    # in the reserve's space, and the operator must free space before it runs out too.
    reserve_given_up: bool = False
    # Pages this commit cancelled (they lost their point before they went), by channel.
    pages_cancelled: Mapping[str, int] = field(default_factory=dict)


# Compiled (setup.py) but an ordinary class: tests stand faults in for its methods on an
# instance, which a native class would refuse. (A subclass is refused either way: its
# compiled methods check the class of self.)
@mypyc_attr(native_class=False)
class SQLiteStore:
    """``Store`` on one SQLite file. URL: ``sqlite:///absolute/path.db``."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str = "FULL",
        on_commit: Callable[[CommitStats], None] | None = None,
        commit_spacing: float = COMMIT_SPACING_S,
    ) -> None:
        self.url = f"sqlite://{path}" if path.is_absolute() else f"sqlite:{path}"
        self.path = path
        self._synchronous = synchronous
        self._on_commit = on_commit
        self._commit_spacing = commit_spacing
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()
        self._closed = False
        # Writes with a deadline, oldest first, and the timer that fails the overdue ones.
        self._deadlines: collections.deque[tuple[float, asyncio.Future[Any]]] = collections.deque()
        self._deadline_timer: asyncio.TimerHandle | None = None
        # The writer thread's memory between ingest jobs (only that thread touches it).
        self._ingest_cache = IngestCache()
        self._open_incidents = OpenIncidents()
        self._lock_fd: int | None = None
        # The last commit failed (disk full, I/O error): not ready until one succeeds. The
        # engine's loops write every 30 s or so, so this clears soon after the cause does.
        self._commit_failing = False
        self._batch_fault = False  # a write of the batch in progress met a storage fault
        self._batch_full = False  # ... and that fault was a full disk
        # The channels of the pages the batch in progress cancelled (writer thread only),
        # reported once its commit holds (``_count_cancellations``).
        self._cancelled: list[str] = []
        self._reserve = path.with_name(path.name + ".reserve")
        self._reserve_given_up_at: float | None = None  # perf_counter; None: held

    # -- lifecycle ----------------------------------------------------------------------------
    async def open(self) -> None:
        await asyncio.to_thread(self._open_sync)

    def _open_sync(self) -> None:
        # Alert labels, timelines and contacts' numbers: owner-only whatever the umask (the
        # WAL and shared-memory files take the database file's mode).
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock()
        try:
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            self._refuse_newer_schema()
            writer_conn = self._connect()
            try:
                self._migrate(writer_conn)
                self._count_cancellations(writer_conn)
            except BaseException as exc:
                writer_conn.close()
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"cannot prepare database {self.path}: {exc}") from exc
                raise
            self._reader = self._connect()
        except BaseException:
            self._unlock()
            raise
        if not self._take_reserve():
            self._reserve_given_up_at = time.perf_counter()
            log.warning(
                "disk space reserve not set aside: the disk is nearly full",
                extra={"fields": {"reserve": str(self._reserve), "bytes": RESERVE_BYTES}},
            )
        self._writer = threading.Thread(
            target=self._write_loop,
            args=(writer_conn,),
            name="responder-sqlite-writer",
            daemon=True,
        )
        self._writer.start()

    def _lock(self) -> None:
        """Hold ``<database>.lock`` while open: a second daemon on the same database would
        take over the first one's pages in flight at its start (recovery) and page twice.
        The kernel drops the lock when the process dies, kill -9 included."""
        # Beside the file itself: two paths to one database (a symlink) share one lock.
        real = self.path.resolve()
        lock_path = real.with_name(real.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(
                f"another responder (pid {holder}) is using {self.path}; "
                f"stop it first (lock {lock_path})"
            ) from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the lock
            self._lock_fd = None

    def _take_reserve(self) -> bool:
        """Set ``RESERVE_BYTES`` aside in the reserve file; False when the disk cannot spare
        them (nothing is left half-taken)."""
        try:
            fd = os.open(self._reserve, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
            finally:
                os.close(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(self._reserve)
            return False
        return True

    def _give_up_reserve(self) -> None:
        """The disk is full: free the reserve for the writes that follow (writer thread)."""
        if self._reserve_given_up_at is not None:
            return
        self._reserve_given_up_at = time.perf_counter()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._reserve)
        log.error(
            "disk full: the database's reserve is given up so that pages can still be "
            "sent; free space on the disk (webhooks may be refused with 503 until then)",
            extra={"fields": {"database": str(self.path), "reserve_bytes": RESERVE_BYTES}},
        )

    def _retake_reserve(self) -> None:
        """Set the reserve aside again once the disk has room for it twice over (writer
        thread; looks at most every ``RESERVE_CHECK_S``)."""
        given_up = self._reserve_given_up_at
        if given_up is None or time.perf_counter() - given_up < RESERVE_CHECK_S:
            return
        self._reserve_given_up_at = time.perf_counter()
        try:
            disk = os.statvfs(self.path.parent)
        except OSError:
            return
        if disk.f_bavail * disk.f_frsize < 2 * RESERVE_BYTES or not self._take_reserve():
            return
        self._reserve_given_up_at = None
        log.info(
            "disk space reserve set aside again",
            extra={"fields": {"reserve": str(self._reserve), "bytes": RESERVE_BYTES}},
        )

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=10000")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {self.path}: {exc}") from exc
        return conn

    def _refuse_newer_schema(self) -> None:
        """Read the schema version before anything writes (even switching to WAL writes
        the file): a newer responder's database is left exactly as it is."""
        try:
            probe = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
            try:
                current = probe.execute("PRAGMA user_version").fetchone()[0]
            finally:
                probe.close()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {self.path}: {exc}") from exc
        if current > len(SQLITE_MIGRATIONS):
            raise _too_new(current)

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        current = conn.execute("PRAGMA user_version").fetchone()[0]
        if current > len(SQLITE_MIGRATIONS):  # checked before opening; a race is still refused
            raise _too_new(current)
        reached = current
        try:
            for version, script in enumerate(SQLITE_MIGRATIONS[current:], start=current + 1):
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in script:
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version={version}")
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                reached = version
        finally:
            if reached > current:  # one line, not one per step (a new database takes them all)
                log.info(
                    "schema migrated",
                    extra={"fields": {"from_version": current, "version": reached}},
                )

    def _count_cancellations(self, conn: sqlite3.Connection) -> None:
        """Every page any write cancels, whichever rule it followed, is noted for the
        commit's report (``CommitStats.pages_cancelled``): one place, not one per rule."""
        conn.create_function("page_cancelled", 1, self._cancelled.append)
        conn.execute(
            "CREATE TEMP TRIGGER page_cancelled AFTER UPDATE OF state ON main.pages "
            "WHEN NEW.state = 'cancelled' AND OLD.state != 'cancelled' "
            "BEGIN SELECT page_cancelled(NEW.channel); END"
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        if self._writer is not None:
            self._jobs.put(None)  # sentinel: the writer drains what is queued, then stops
            await asyncio.to_thread(self._writer.join)
        if self._reader is not None:
            with self._reader_lock:
                self._reader.close()
        self._unlock()

    async def ping(self) -> bool:
        if self._closed or self._writer is None or not self._writer.is_alive():
            return False
        if self._commit_failing:
            return False
        try:
            await self._read(lambda conn: conn.execute("SELECT 1").fetchone())
        except StoreError:
            return False
        return True

    # -- the writer thread --------------------------------------------------------------------
    async def _write(
        self, work: Callable[[sqlite3.Connection], T], deadline: float | None = None
    ) -> T:
        """Queue ``work`` for the writer and wait for its commit. With a ``deadline`` (on the
        loop's clock) the caller gets ``StoreError`` once it passes; the write itself may
        still commit later."""
        return await self._queue(work, deadline)

    def _queue(
        self,
        work: Callable[[sqlite3.Connection], T],
        deadline: float | None = None,
        *,
        ingest: bool = False,
    ) -> asyncio.Future[T]:
        """``_write`` without its coroutine, for the webhook's path."""
        if self._closed or self._writer is None:
            raise StoreError("store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put(_Job(work, future, loop, ingest))
        if deadline is not None:
            self._deadlines.append((deadline, future))
            if self._deadline_timer is None:
                self._deadline_timer = loop.call_later(DEADLINE_CHECK_S, self._expire, loop)
        return future

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fail the waiting writes whose deadline passed (a stalled disk), and forget the
        settled ones. One timer for all writes: a timer per webhook costs it 6 µs."""
        now = loop.time()
        deadlines = self._deadlines
        while deadlines and (deadlines[0][1].done() or deadlines[0][0] <= now):
            _, future = deadlines.popleft()
            if not future.done():
                future.set_exception(StoreError("store did not commit in time"))
        self._deadline_timer = (
            loop.call_later(DEADLINE_CHECK_S, self._expire, loop) if deadlines else None
        )

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        _yield_to_event_loop()
        stopping = False
        last_started = 0.0
        concurrent = False  # the last batch held more than one write
        while not stopping:
            first = self._jobs.get()
            if first is None:
                break
            if concurrent:
                # Let the writes now arriving join this commit instead of paying for their own.
                wait = last_started + self._commit_spacing - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            last_started = time.perf_counter()
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                batch.append(job)
            self._run_batch(conn, batch)
            concurrent = len(batch) > 1
        conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        started = time.perf_counter()
        self._batch_fault = self._batch_full = False
        try:
            results = self._run_jobs(conn, batch)
            conn.execute("COMMIT")
            # A write refused by a full disk may leave the rest of the batch to commit.
            self._commit_failing = self._batch_fault
        except sqlite3.Error as exc:
            # The commit itself failed (disk full, I/O error): nothing in the batch is durable.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._commit_failing = True
            self._batch_full = self._batch_full or _is_disk_full(exc)
            error = StoreError(f"commit failed: {exc}")
            results = [(job, False, error) for job in batch]
            self._cancelled.clear()
        if self._batch_full:
            self._give_up_reserve()
        elif not self._commit_failing:
            self._retake_reserve()
        cancelled = collections.Counter(self._cancelled)
        self._cancelled.clear()
        if self._on_commit is not None:
            self._on_commit(
                CommitStats(
                    len(batch),
                    time.perf_counter() - started,
                    reserve_given_up=self._reserve_given_up_at is not None,
                    pages_cancelled=cancelled,
                )
            )
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, bool, Any]]] = {}
        for item in results:
            by_loop.setdefault(item[0].loop, []).append(item)
        for loop, items in by_loop.items():
            # A closed loop means its caller is gone; nobody waits for these results.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, items)

    def _run_jobs(
        self, conn: sqlite3.Connection, batch: list[_Job]
    ) -> list[tuple[_Job, bool, Any]]:
        """Run the batch's jobs in one open transaction. First without savepoints (two
        statements a job, a tenth of a webhook's store time); if a job fails, the batch is
        rolled back and run again with a savepoint per job, so that one bad write fails
        alone. A job is a function of the connection only, so running it again is safe.

        The open incidents that ingest jobs looked up are forgotten whenever what they saw
        may have changed: at each start, after any other job, after a job rolled back."""
        known = self._open_incidents
        known.forget()
        cancelled = self._cancelled
        cancelled.clear()
        conn.execute("BEGIN IMMEDIATE")
        results: list[tuple[_Job, bool, Any]] = []
        try:
            for job in batch:
                results.append((job, True, job.work(conn)))
                if not job.ingest:
                    known.forget()
            return results
        except Exception:  # which job failed, and why, is found below
            if conn.in_transaction:  # SQLite may have rolled it back itself (a full disk)
                conn.execute("ROLLBACK")
        known.forget()
        cancelled.clear()
        conn.execute("BEGIN IMMEDIATE")
        results = []
        for job in batch:
            conn.execute("SAVEPOINT job")
            noted = len(cancelled)
            try:
                value = job.work(conn)
            except Exception as exc:  # one bad write must not fail the batch
                if not conn.in_transaction:
                    # SQLite rolled the whole transaction back (a full disk, an I/O error):
                    # the jobs before this one are lost too, so the whole batch fails. Going
                    # on would start a new transaction and report them done.
                    if isinstance(exc, sqlite3.Error):
                        raise
                    raise sqlite3.OperationalError(f"transaction lost: {exc}") from exc
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
                del cancelled[noted:]
                known.forget()
                if _is_storage_fault(exc):
                    self._batch_fault = True  # the disk, not this write: not ready
                    self._batch_full = self._batch_full or _is_disk_full(exc)
                results.append((job, False, _as_store_error(exc)))
            else:
                conn.execute("RELEASE job")
                if not job.ingest:
                    known.forget()
                results.append((job, True, value))
        return results

    # -- reads --------------------------------------------------------------------------------
    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed or self._reader is None:
            raise StoreError("store is closed")
        reader = self._reader

        def run() -> T:
            with self._reader_lock:
                try:
                    return work(reader)
                except sqlite3.Error as exc:
                    raise StoreError(f"read failed: {exc}") from exc

        return await asyncio.to_thread(run)

    # -- alerts -------------------------------------------------------------------------------
    async def ingest(
        self,
        alerts: Sequence[IncomingAlert],
        now: datetime,
        *,
        reopen_within: timedelta = DEFAULT_REOPEN_WITHIN,
        on_due: Callable[[], None] | None = None,
        deadline: float | None = None,
        default_policy: str | None = None,
    ) -> list[IngestOutcome]:
        now_us = to_us(now)
        reopen_us = int(reopen_within.total_seconds() * 1_000_000)

        def work(conn: sqlite3.Connection) -> list[tuple[IngestOutcome, bool]]:
            cache, known = self._ingest_cache, self._open_incidents
            return [
                ingest_one(conn, a, now_us, reopen_us, cache, known, default_policy) for a in alerts
            ]

        results = await self._queue(work, deadline, ingest=True)
        if on_due is not None and any(due for _, due in results):
            on_due()
        return [outcome for outcome, _ in results]

    async def mark_stale(self, last_received_before: datetime, now: datetime) -> list[int]:
        cutoff = to_us(last_received_before)
        # Found on the reader: the scan reads every firing alert (40 ms for 130,000), and on
        # the writer it would hold up every webhook meanwhile. The write checks again.
        candidates = await self._read(
            lambda conn: [
                row[0]
                for row in conn.execute(
                    "SELECT id FROM alerts WHERE status = 'firing' AND last_received < ?",
                    (cutoff,),
                )
            ]
        )
        if not candidates:
            return []

        def work(conn: sqlite3.Connection) -> list[int]:
            now_us = to_us(now)
            rows = conn.execute(
                "UPDATE alerts SET status = 'stale', updated_at = ? "
                "WHERE id IN (SELECT value FROM json_each(?)) "
                "AND status = 'firing' AND last_received < ? RETURNING id, incident_id",
                (now_us, _dumps(candidates), cutoff),
            ).fetchall()
            for alert_id, incident_id in sorted(rows):
                if incident_id is not None:
                    inc.alert_ended(
                        conn, alert_id, incident_id, Event.ALERT_STALE, now_us, STALE_SWEEP
                    )
            return sorted(row[0] for row in rows)

        return await self._write(work)

    # -- heartbeats (the dead-man switch) -----------------------------------------------------
    async def prune(self, before: datetime, limit: int = PRUNE_BATCH) -> tuple[int, int]:
        before_us = to_us(before)
        return await self._write(lambda conn: retention.prune(conn, before_us, limit))

    async def forget_twilio_requests(self, before: datetime, limit: int = PRUNE_BATCH) -> int:
        before_us = to_us(before)
        return await self._write(
            lambda conn: retention.forget_twilio_requests(conn, before_us, limit)
        )

    async def heartbeats(self) -> list[HeartbeatRow]:
        return await self._read(heartbeats.all_rows)

    async def heartbeat_missing(self, fingerprint: str, since: datetime | None) -> bool:
        since_us = None if since is None else to_us(since)
        return await self._write(lambda conn: heartbeats.set_missing(conn, fingerprint, since_us))

    async def forget_heartbeat(self, fingerprint: str, now: datetime) -> HeartbeatRow | None:
        now_us = to_us(now)
        return await self._write(lambda conn: heartbeats.forget(conn, fingerprint, now_us))

    async def remember_heartbeat(self, fingerprint: str, forgotten_at: datetime) -> None:
        forgotten_us = to_us(forgotten_at)
        await self._write(lambda conn: heartbeats.remember(conn, fingerprint, forgotten_us))

    async def heartbeat_watch_checked(self, now: datetime) -> None:
        now_us = to_us(now)
        await self._write(lambda conn: heartbeats.checked(conn, now_us))

    async def heartbeat_watch_deaf(self, down_from: datetime, up_at: datetime) -> None:
        down_us, up_us = to_us(down_from), to_us(up_at)
        await self._write(lambda conn: heartbeats.deaf(conn, down_us, up_us))

    async def heartbeat_watch_started(
        self, now: datetime, keep: timedelta
    ) -> tuple[list[tuple[datetime, datetime]], str | None]:
        now_us, keep_us = to_us(now), int(keep.total_seconds() * 1_000_000)
        rows, signature = await self._write(lambda conn: heartbeats.started(conn, now_us, keep_us))
        return [(from_us(down), from_us(up)) for down, up in rows], signature

    async def heartbeat_watch_forget(
        self, now: datetime, keep: timedelta
    ) -> tuple[int, list[tuple[datetime, datetime]]]:
        now_us, keep_us = to_us(now), int(keep.total_seconds() * 1_000_000)
        deleted, rows = await self._write(
            lambda conn: heartbeats.forget_downtimes(conn, now_us, keep_us)
        )
        return deleted, [(from_us(down), from_us(up)) for down, up in rows]

    async def unwatched_firing_alerts(
        self, except_prefix: str
    ) -> list[tuple[str, Mapping[str, str]]]:
        def work(conn: sqlite3.Connection) -> list[tuple[str, Mapping[str, str]]]:
            # Parsed on the reader thread: an alert storm's worth of labels is ~0.1 s.
            rows = heartbeats.unwatched_firing(conn, except_prefix)
            return [(fingerprint, json.loads(labels)) for fingerprint, labels in rows]

        return await self._read(work)

    async def watch_heartbeats(
        self, found: Sequence[tuple[str, Mapping[str, str]]], now: datetime, signature: str
    ) -> None:
        now_us = to_us(now)
        rows = [(fingerprint, dumps_texts(labels)) for fingerprint, labels in found]
        await self._write(lambda conn: heartbeats.track_many(conn, rows, now_us, signature))

    async def list_alerts(self, query: AlertQuery) -> list[StoredAlert]:
        clauses: list[str] = []
        params: list[Any] = []
        if query.statuses:
            clauses.append(f"status IN ({','.join('?' * len(query.statuses))})")
            params.extend(sorted(query.statuses))
        if query.fingerprint is not None:
            clauses.append("fingerprint = ?")
            params.append(query.fingerprint)
        if query.before_id is not None:
            clauses.append("id < ?")
            params.append(query.before_id)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT {_ALERT_COLUMNS} FROM alerts {where} ORDER BY id DESC LIMIT ?"  # noqa: S608 - clauses are fixed text
        params.append(query.limit)

        def work(conn: sqlite3.Connection) -> list[StoredAlert]:
            return [_stored_alert(row) for row in conn.execute(sql, params)]

        return await self._read(work)

    # -- incidents ----------------------------------------------------------------------------
    async def due_escalations(self, now: datetime, limit: int = 200) -> list[EscalationWork]:
        now_us = to_us(now)
        return await self._read(lambda conn: inc.due_work(conn, now_us, limit))

    async def apply_escalation(
        self,
        incident_id: int,
        version: int,
        steps: Sequence[StepDone],
        events: Sequence[TimelineEvent],
        next_due: datetime | None,
        now: datetime,
        *,
        unsnooze: bool = False,
    ) -> list[str] | None:
        next_us = None if next_due is None else to_us(next_due)
        now_us = to_us(now)
        return await self._write(
            lambda conn: inc.apply_steps(
                conn, incident_id, version, steps, events, next_us, unsnooze, now_us
            )
        )

    async def apply_escalations(
        self, batch: Sequence[EscalationUpdate], now: datetime
    ) -> list[list[str] | None]:
        now_us = to_us(now)
        rows = [
            (
                u.incident_id,
                u.version,
                u.steps,
                u.events,
                None if u.next_due is None else to_us(u.next_due),
                u.unsnooze,
                u.keep_failure,
            )
            for u in batch
        ]
        return await self._write(lambda conn: inc.apply_batch(conn, rows, now_us))

    async def next_escalation(self) -> datetime | None:
        value = await self._read(inc.next_escalation)
        return None if value is None else from_us(value)

    async def rearm_open_incidents(
        self,
        now: datetime,
        renumber: Mapping[str | None, Mapping[int, int | None]] = {},
        gone: Mapping[str | None, bool] = {},
        default_policy: str | None = None,
        *,
        layout: str | None = None,
    ) -> int:
        now_us = to_us(now)

        def work(conn: sqlite3.Connection) -> int:
            # The levels the steps were recorded under, and those they go on under: a
            # duration level the default shares with a removed policy is not paged again.
            before = inc.stored_layout(conn)
            after = None if layout is None else EscalationLayout.from_json(layout)
            for policy, moves in renumber.items():
                inc.renumber_levels(conn, policy, moves, now_us)
            for policy, restart in gone.items():
                was = policy or (None if before is None else before.default_policy)
                old = None if before is None else before.policies.get(was or "")
                new = None if after is None else after.policies.get(default_policy or "")
                inc.policy_gone(
                    conn, policy, default_policy, now_us, restart=restart, levels=(old, new)
                )
            if layout is not None:
                conn.execute(
                    "INSERT INTO escalation_layout (id, layout) VALUES (1, ?) "
                    "ON CONFLICT (id) DO UPDATE SET layout = excluded.layout",
                    (layout,),
                )
            return inc.rearm_open(conn, now_us)

        return await self._write(work)

    async def escalation_layout(self) -> str | None:
        row = await self._read(
            lambda conn: conn.execute("SELECT layout FROM escalation_layout").fetchone()
        )
        return None if row is None else str(row[0])

    async def claim_admin_notice(self, kind: str, now: datetime, every: timedelta) -> bool:
        now_us, every_us = to_us(now), int(every.total_seconds() * 1_000_000)

        def work(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "INSERT INTO admin_notices (kind, sent_at) VALUES (?, ?) "
                "ON CONFLICT (kind) DO UPDATE SET sent_at = excluded.sent_at "
                "WHERE sent_at <= ? OR sent_at > ?",
                (kind, now_us, now_us - every_us, now_us),
            )
            return bool(cur.rowcount)

        return await self._write(work)

    async def release_admin_notice(self, kind: str, claimed_at: datetime) -> None:
        claimed_us = to_us(claimed_at)
        await self._write(
            lambda conn: conn.execute(
                "DELETE FROM admin_notices WHERE kind = ? AND sent_at = ?", (kind, claimed_us)
            )
        )

    async def next_page(self, busy: Collection[tuple[str, str, str]] = ()) -> datetime | None:
        skip = list(busy)
        value = await self._read(lambda conn: inc.next_page(conn, skip))
        return None if value is None else from_us(value)

    async def transition(
        self,
        incident_id: int,
        action: str,
        *,
        actor: str,
        via: str,
        now: datetime,
        until: datetime | None = None,
        text: str | None = None,
        assignee: str | None = None,
        pages: Sequence[NewPage] = (),
        once_only: Callable[[str | None], Collection[str]] | None = None,
        expect: Callable[[Incident], None] | None = None,
        taking: str | None = None,
        answer: Callable[[Incident, bool], str | None] | None = None,
        resume: Callable[[Incident, frozenset[str], datetime], Sequence[StepDone]] | None = None,
    ) -> tuple[Incident, bool]:
        now_us = to_us(now)
        until_us = None if until is None else to_us(until)

        def work(conn: sqlite3.Connection) -> tuple[Incident, bool]:
            result = inc.transition(
                conn,
                incident_id,
                action,
                actor=actor,
                via=via,
                now_us=now_us,
                until_us=until_us,
                text=text,
                assignee=assignee,
                pages=pages,
                once_only=once_only,
                expect=expect,
                resume=resume,
            )
            if taking is not None:
                # DO NOTHING: an ACK ALL acts in one write per incident, each taking it.
                conn.execute(
                    "INSERT INTO twilio_requests (sid, taken_at, answer) VALUES (?, ?, ?) "
                    "ON CONFLICT (sid) DO NOTHING",
                    (taking, now_us, None if answer is None else answer(*result)),
                )
            return result

        return await self._write(work)

    async def twilio_request(self, sid: str) -> TakenRequest | None:
        row = await self._read(
            lambda conn: conn.execute(
                "SELECT taken_at, answer FROM twilio_requests WHERE sid = ?", (sid,)
            ).fetchone()
        )
        return None if row is None else TakenRequest(from_us(row[0]), row[1])

    async def take_twilio_request(self, sid: str, now: datetime, answer: str | None) -> None:
        now_us = to_us(now)
        await self._write(
            lambda conn: conn.execute(
                "INSERT INTO twilio_requests (sid, taken_at, answer) VALUES (?, ?, ?) "
                "ON CONFLICT (sid) DO UPDATE SET answer = excluded.answer",
                (sid, now_us, answer),
            )
        )

    async def get_incident(self, incident_id: int) -> Incident:
        return await self._read(lambda conn: inc.get_incident(conn, incident_id))

    async def incident_details(
        self, incident_id: int
    ) -> tuple[Incident, list[StoredAlert], list[TimelineEvent], list[Page]]:
        def work(
            conn: sqlite3.Connection,
        ) -> tuple[Incident, list[StoredAlert], list[TimelineEvent], list[Page]]:
            # One snapshot: an alert moving to another incident meanwhile (its timeline
            # entry moves with it) is seen on one side of the move, not on neither.
            conn.execute("BEGIN")
            try:
                alerts = [
                    _stored_alert(row)
                    for row in conn.execute(
                        f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE incident_id = ? ORDER BY id",  # noqa: S608 - fixed text
                        (incident_id,),
                    )
                ]
                return (
                    inc.get_incident(conn, incident_id),
                    alerts,
                    inc.timeline(conn, incident_id),
                    inc.pages_of(conn, incident_id),
                )
            finally:
                conn.execute("COMMIT")

        return await self._read(work)

    async def list_incidents(
        self,
        states: Sequence[str] = (),
        since: datetime | None = None,
        limit: int = 500,
        *,
        category: str | None = None,
        started_since: datetime | None = None,
        before_id: int | None = None,
    ) -> list[Incident]:
        since_us = None if since is None else to_us(since)
        started_us = None if started_since is None else to_us(started_since)
        return await self._read(
            lambda conn: inc.list_incidents(
                conn, states, since_us, limit, category, started_us, before_id
            )
        )

    async def open_incident_ids(self) -> list[int]:
        return await self._read(inc.open_incident_ids)

    async def trigger_events(
        self, incident_ids: Sequence[int], kinds: Sequence[str]
    ) -> dict[int, list[TimelineEvent]]:
        if not incident_ids:
            return {}
        return await self._read(lambda conn: inc.trigger_events(conn, incident_ids, kinds))

    # -- the outbox ---------------------------------------------------------------------------
    async def claim_pages(
        self, now: datetime, limit: int = 50, busy: Collection[tuple[str, str, str]] = ()
    ) -> list[Page]:
        now_us = to_us(now)
        skip = list(busy)
        return await self._write(lambda conn: inc.claim_pages(conn, now_us, limit, skip))

    async def finish_page(
        self,
        page_id: int,
        state: PageState,
        now: datetime,
        *,
        provider_id: str | None = None,
        error: str | None = None,
        retry_at: datetime | None = None,
        reroute: Reroute | None = None,
    ) -> int:
        now_us = to_us(now)
        retry_us = None if retry_at is None else to_us(retry_at)

        def work(conn: sqlite3.Connection) -> int:
            recorded = inc.finish_page(
                conn,
                page_id,
                state,
                now_us,
                provider_id=provider_id,
                error=error,
                retry_at_us=retry_us,
            )
            if reroute is None or not recorded:
                return 0
            return inc.reroute_page(conn, page_id, reroute, now_us)

        return await self._write(work)

    async def finish_pages(
        self, page_ids: Sequence[int], state: PageState, now: datetime, *, provider_id: str
    ) -> None:
        now_us = to_us(now)
        ids = list(page_ids)

        def work(conn: sqlite3.Connection) -> None:
            for page_id in ids:
                inc.finish_page(conn, page_id, state, now_us, provider_id=provider_id)

        await self._write(work)

    async def get_page(self, page_id: int) -> Page | None:
        return await self._read(lambda conn: inc.get_page(conn, page_id))

    async def pages_by_provider_id(self, provider_id: str) -> list[Page]:
        return await self._read(lambda conn: inc.pages_by_provider_id(conn, provider_id))

    async def unconfirmed_sends(self, channel: str, since: datetime) -> list[Page]:
        since_us = to_us(since)
        return await self._read(lambda conn: inc.unconfirmed_sends(conn, channel, since_us))

    async def step_pages(self, incident_id: int, episode: int, step: str) -> list[Page]:
        return await self._read(lambda conn: inc.step_pages(conn, incident_id, episode, step))

    async def provider_status(
        self,
        page_id: int,
        state: PageState,
        error: str | None,
        now: datetime,
        reroute: Reroute | None = None,
    ) -> bool:
        now_us = to_us(now)

        def work(conn: sqlite3.Connection) -> bool:
            moved = inc.provider_status(conn, page_id, state, error, now_us)
            if moved and reroute is not None and state is PageState.FAILED:
                inc.reroute_page(conn, page_id, reroute, now_us)
            return moved

        return await self._write(work)

    async def add_pages(
        self,
        incident_id: int,
        episode: int,
        pages: Sequence[NewPage],
        event: TimelineEvent | None,
        now: datetime,
    ) -> int:
        now_us = to_us(now)
        return await self._write(
            lambda conn: inc.add_pages(conn, incident_id, episode, pages, event, now_us)
        )

    async def open_incidents_paged_to(self, contacts: Sequence[str]) -> list[tuple[Incident, str]]:
        return await self._read(lambda conn: inc.open_incidents_paged_to(conn, contacts))

    async def trigger_told(
        self, contacts: Sequence[str], incident_id: int
    ) -> tuple[datetime, str] | None:
        told = await self._read(lambda conn: inc.trigger_told(conn, contacts, incident_id))
        return None if told is None else (from_us(told[0]), told[1])

    async def send_times(
        self, contact: str, channel: str, since: datetime, *, without_tests: bool = False
    ) -> list[datetime]:
        since_us = to_us(since)
        values = await self._read(
            lambda conn: inc.send_times(conn, contact, channel, since_us, without_tests)
        )
        return [from_us(v) for v in values]

    async def paid_send_times(self, since: datetime) -> list[datetime]:
        since_us = to_us(since)
        values = await self._read(lambda conn: inc.paid_send_times(conn, since_us))
        return [from_us(v) for v in values]

    async def readdress_pages(self, page_ids: Sequence[int], address: str, now: datetime) -> None:
        now_us = to_us(now)
        await self._write(lambda conn: inc.readdress_pages(conn, page_ids, address, now_us))

    async def hand_over(self, page_ids: Sequence[int], now: datetime) -> list[int]:
        now_us = to_us(now)
        ids = list(page_ids)
        return await self._write(lambda conn: inc.hand_over(conn, ids, now_us))

    async def retry_channel_now(self, channel: str, now: datetime) -> int:
        now_us = to_us(now)
        return await self._write(lambda conn: inc.retry_channel_now(conn, channel, now_us))

    async def hold_pages(
        self,
        page_ids: Sequence[int],
        until: datetime,
        reason: str,
        now: datetime,
        reroute: tuple[Reroute, Collection[int]] | None = None,
    ) -> None:
        until_us, now_us = to_us(until), to_us(now)

        def work(conn: sqlite3.Connection) -> None:
            inc.hold_pages(conn, page_ids, until_us, reason, now_us)
            if reroute is not None:
                plan, ids = reroute
                for page_id in ids:
                    inc.reroute_page(conn, page_id, plan, now_us)

        await self._write(work)

    async def create_drill(
        self, title: str, pages: Sequence[NewPage], actor: str, now: datetime, via: str = "api"
    ) -> int:
        now_us = to_us(now)
        return await self._write(
            lambda conn: inc.create_drill(conn, title, pages, actor, now_us, via)
        )

    # -- containment --------------------------------------------------------------------------
    async def containment_queue(self, after_id: int = 0, limit: int = 100) -> list[QueuedAlert]:
        return await self._read(lambda conn: actions.queued(conn, after_id, limit))

    async def containment_done(
        self, queue_id: int, now: datetime, *, release_hold: int | None = None
    ) -> None:
        now_us = to_us(now)
        await self._write(lambda conn: actions.dequeue(conn, queue_id, now_us, release_hold))

    async def load_guards(self) -> str | None:
        return await self._read(actions.load_guards)

    async def save_guards(self, state: Callable[[], str], now: datetime) -> None:
        now_us = to_us(now)
        await self._write(lambda conn: actions.save_guards(conn, state(), now_us))

    async def record_run(self, now: datetime, **fields: Any) -> bool:
        now_us = to_us(now)
        return await self._write(lambda conn: actions.record_run(conn, now_us=now_us, **fields))

    async def finish_run(self, now: datetime, **fields: Any) -> None:
        now_us = to_us(now)
        await self._write(lambda conn: actions.finish_run(conn, now_us=now_us, **fields))

    async def recent_runs(self, since: datetime) -> list[RunRecord]:
        since_us = to_us(since)
        rows = await self._read(lambda conn: actions.recent_runs(conn, since_us))
        return [
            RunRecord(
                run_id,
                action,
                target,
                from_us(started),
                Outcome(outcome or "interrupted"),
                from_us(finished) if finished is not None else None,
                dry_run=state == "dry_run",
            )
            for run_id, action, target, started, outcome, finished, state in rows
        ]

    async def interrupt_runs(self, now: datetime) -> list[RunRow]:
        now_us = to_us(now)
        return await self._write(lambda conn: actions.interrupt_running(conn, now_us))

    async def escalate_incident(self, incident_id: int, reason: str, now: datetime) -> None:
        now_us = to_us(now)
        await self._write(lambda conn: actions.escalate_incident(conn, incident_id, reason, now_us))

    async def record_process(
        self, identity: ProcessIdentity, run_id: str, argv0: str, now: datetime
    ) -> None:
        now_us = to_us(now)
        await self._write(
            lambda conn: actions.record_process(conn, identity, run_id, argv0, now_us)
        )

    async def forget_process(self, identity: ProcessIdentity) -> None:
        await self._write(lambda conn: actions.forget_process(conn, identity))

    async def recorded_processes(self) -> list[tuple[ProcessIdentity, str, str]]:
        return await self._read(actions.recorded_processes)

    async def process_stopped(
        self, identity: ProcessIdentity, run_id: str, detail: dict[str, Any], now: datetime
    ) -> None:
        now_us = to_us(now)
        await self._write(
            lambda conn: actions.process_stopped(conn, identity, run_id, detail, now_us)
        )

    async def due_undos(
        self,
        now: datetime,
        limit: int = 50,
        *,
        busy: Sequence[str] = (),
        manual_only: bool = False,
    ) -> list[tuple[RunRow, bool]]:
        now_us = to_us(now)
        # A write: an undo whose alert fires again may go back to waiting for its expiry.
        return await self._write(
            lambda conn: actions.due_undos(conn, now_us, limit, busy, manual_only=manual_only)
        )

    async def lift_now(self, run_id: str, by: str, now: datetime) -> tuple[str, str | None]:
        now_us = to_us(now)
        return await self._write(lambda conn: actions.lift_now(conn, run_id, by, now_us))

    async def removed_by_hand(
        self, run_id: str, by: str, reason: str, now: datetime, *, under_way: Sequence[str] = ()
    ) -> RemovedByHand:
        now_us = to_us(now)
        return await self._write(
            lambda conn: actions.removed_by_hand(conn, run_id, by, reason, now_us, under_way)
        )

    async def start_undo(self, run_id: str, now: datetime) -> bool:
        now_us = to_us(now)
        return await self._write(lambda conn: actions.start_undo(conn, run_id, now_us))

    async def hold_undo(
        self, run_id: str, removed: int, detail: dict[str, Any], now: datetime
    ) -> None:
        now_us = to_us(now)
        await self._write(lambda conn: actions.hold_undo(conn, run_id, removed, detail, now_us))

    async def finish_undo(
        self,
        run_id: str,
        state: str,
        detail: dict[str, Any],
        now: datetime,
        *,
        escalate: str | None = None,
    ) -> bool:
        now_us = to_us(now)
        return await self._write(
            lambda conn: actions.finish_undo(conn, run_id, state, detail, now_us, escalate)
        )

    async def due_checks(self, now: datetime, limit: int = 50) -> list[tuple[RunRow, str]]:
        now_us = to_us(now)
        return await self._read(lambda conn: actions.due_checks(conn, now_us, limit))

    async def alerted_lifts(self) -> list[RunRow]:
        return await self._read(actions.alerted_lifts)

    async def finish_check(
        self,
        run_id: str,
        verified: bool | None,
        reason: str,
        now: datetime,
        *,
        guards: Callable[[], str] | None = None,
    ) -> None:
        now_us = to_us(now)
        await self._write(
            lambda conn: actions.finish_check(conn, run_id, verified, reason, now_us, guards)
        )

    async def action_runs(self, limit: int = 100) -> list[RunRow]:
        return await self._read(lambda conn: actions.runs(conn, limit))

    async def next_check_due(self) -> datetime | None:
        value = await self._read(actions.next_check_due)
        return None if value is None else from_us(value)

    async def next_lift_due(
        self, *, busy: Sequence[str] = (), manual_only: bool = False
    ) -> datetime | None:
        value = await self._read(
            lambda conn: actions.next_lift_due(conn, busy, manual_only=manual_only)
        )
        return None if value is None else from_us(value)

    async def page_context(
        self, incident_id: int
    ) -> tuple[Incident, tuple[dict[str, str], dict[str, str], dict[str, Any]] | None, str | None]:
        def work(
            conn: sqlite3.Connection,
        ) -> tuple[Incident, tuple[str, str, str] | None, str | None]:
            return (
                inc.get_incident(conn, incident_id),
                inc.first_alert_of(conn, incident_id),
                actions.latest_failure(conn, incident_id),
            )

        incident, first, failure = await self._read(work)
        alert = None
        if first is not None:
            alert = (json.loads(first[0]), json.loads(first[1]), json.loads(first[2]))
        return incident, alert, failure

    async def queue_depth(self) -> int:
        return await self._read(inc.queue_depth)

    async def recover_sending(
        self,
        now: datetime,
        reroute: Reroute | None = None,
        *,
        page_ids: Sequence[int] | None = None,
        retry_at: datetime | None = None,
        exclude: Collection[int] = (),
    ) -> list[Page]:
        now_us = to_us(now)
        retry_at_us = None if retry_at is None else to_us(retry_at)
        excluded = sorted(exclude)

        def work(conn: sqlite3.Connection) -> list[Page]:
            pages = inc.settle_interrupted(conn, now_us, page_ids, retry_at_us, excluded)
            if reroute is not None:
                for page in pages:
                    inc.reroute_page(conn, page.id, reroute, now_us)
            return pages

        return await self._write(work)


def _too_new(version: int) -> SchemaTooNew:
    return SchemaTooNew(
        f"database schema version {version} is newer than this responder "
        f"({len(SQLITE_MIGRATIONS)}); refusing to touch it"
    )


def _yield_to_event_loop() -> None:
    """Make the calling thread (the writer) a batch thread for the kernel's scheduler.

    On a core it shares with the event loop, a writer woken by a new job would preempt the
    loop in the middle of a request (the kernel favours a thread that has slept), and the
    two would trade the core, and the GIL, several times per commit, each time finding its
    caches cold. A batch thread does not preempt on waking: it runs when the loop waits or
    its time slice ends, and still gets its fair share of the core, so commits are not
    starved under load. 6% less CPU per new webhook (docs/performance.md). Where the
    policy cannot be set (not Linux, a sandbox), nothing changes."""
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


def _settle(items: list[tuple[_Job, bool, Any]]) -> None:
    for job, ok, value in items:
        if job.future.done():
            continue  # the caller gave up (request cancelled); the write still happened
        if ok:
            job.future.set_result(value)
        else:
            job.future.set_exception(value)


# SQLite's primary result codes for a disk that is full or failing (the extended codes
# carry them in their low byte).
_STORAGE_FAULTS = frozenset({10, 13})  # SQLITE_IOERR, SQLITE_FULL


def _is_storage_fault(exc: Exception) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in _STORAGE_FAULTS


def _is_disk_full(exc: Exception) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF == SQLITE_FULL


def _as_store_error(exc: Exception) -> Exception:
    if isinstance(exc, sqlite3.Error):
        return StoreError(str(exc))
    return exc


# -- alert SQL ------------------------------------------------------------------------------

_ALERT_COLUMNS = (
    "id, fingerprint, status, labels, annotations, starts_at, ends_at, generator_url, "
    "group_key, receiver, severity, category, rule, classification, first_received, "
    "last_received, receive_count"
)


def _stored_alert(row: sqlite3.Row | tuple[Any, ...]) -> StoredAlert:
    return StoredAlert(
        id=row[0],
        fingerprint=row[1],
        status=AlertStatus(row[2]),
        labels=json.loads(row[3]),
        annotations=json.loads(row[4]),
        starts_at=from_us(row[5]),
        ends_at=from_us(row[6]) if row[6] is not None else None,
        generator_url=row[7],
        group_key=row[8],
        receiver=row[9],
        severity=row[10],
        category=row[11],
        rule=row[12],
        classification=json.loads(row[13]),
        first_received=from_us(row[14]),
        last_received=from_us(row[15]),
        receive_count=row[16],
    )

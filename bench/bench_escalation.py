"""Escalation at scale: 100,000 open incidents with pending escalations in one daemon.

Run by hand: ``.venv/bin/python bench/bench_escalation.py`` (100,000 incidents, levels two
minutes apart: about 10 minutes when the targets are met); ``--quick`` runs 10,000 incidents
with levels one minute apart. Linux only (reads ``/proc``). Writes the Markdown section it
prints to ``bench/results/escalation.md``.

The targets (the issue): with 100,000 open incidents with pending escalations in one daemon,
each step fires within 1 s of its due time, RSS stays under 300 MB, and a restart is ready in
under 5 s.

What it does, in one run:

* runs a real SMTP server on loopback in this process (``responder.testing.SmtpTestServer``,
  aiosmtpd) and writes a temporary config: the shipped ``storage.synchronous`` setting, a
  bearer token from a file, four contacts with email only (alice, bob, carol, dave), one
  escalation policy ``bench`` (L1 alice at once, L2 bob after T, L3 carol after 2T, L4 dave
  after 3T; T is ``--l2-after``, default 120 s) as ``incidents.default_policy``, generous
  email rate limits (``9999/1s``: per-contact limits would otherwise hold pages back; pages
  due together still go out bundled, one email per contact and outbox batch), and one rule
  file that groups by ``instance``, so every distinct instance is its own incident;
* starts ``responder serve`` on it and posts N alerts with distinct ``instance`` labels
  through the real webhook (bodies of ``--per-body`` alerts, ``--concurrency`` in flight):
  N incidents; the L1 wave runs while they arrive;
* samples the daemon's VmRSS and VmHWM (``/proc/PID/status``) every 200 ms and follows the
  ``steps`` table of its database (read-only, from this process) until each wave is done;
* once the L1 and L2 waves are done (at the latest 15 s before L3 is due: steps still
  pending then stay pending across the restart), stops the daemon with SIGTERM and starts it
  again (time to exit, time from start to ``GET /-/ready`` answering 200), then lets the L3
  wave come due; once that is done, the same with SIGKILL and the L4 wave;
* waits until the outbox is empty, stops the daemon, and reads the database: for every step,
  lag = ``steps.done_at - (incidents.triggered_at + offset)``; steps per level (exactly one
  per incident); pages per level; and, from the emails received, how often each incident was
  paged per level (bundles list their incidents as ``#id``).

``--profile`` runs the first daemon (ingest, L1 and L2 waves) under cProfile and prints where
its time went.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import math
import pstats
import re
import secrets
import shlex
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from benchlib import cpu_seconds, free_port, machine, percentile, shipped_synchronous

from responder.testing import SmtpTestServer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "escalation.md"
WEBHOOK_PATH = "/api/v1/alertmanager"
STARTS_AT = "2026-11-22T07:06:22.284703Z"
ALERTNAME = "BenchEscalation"
# Level k pages CONTACTS[k - 1]; level k is due (k - 1) * T after the incident triggered.
CONTACTS = ("alice", "bob", "carol", "dave")
LEVELS = tuple(f"L{k}" for k in range(1, len(CONTACTS) + 1))
SAMPLE_EVERY_S = 0.2
POLL_EVERY_S = 1.0
RESTART_LEAD_S = 15.0  # a restart happens at the latest this long before the next wave
START_TIMEOUT_S = 120.0

# Targets (the issue).
TARGET_LAG_S = 1.0
TARGET_RSS_MB = 300.0
TARGET_READY_S = 5.0


# -- the daemon's memory ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # time.monotonic()
    phase: str
    rss_kb: int
    hwm_kb: int


def proc_status(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) in kB, or None when the process is gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except (OSError, ValueError):
        return None
    return rss, hwm


class Sampler:
    """Samples the watched daemon's memory in a thread; ``phase`` labels the samples."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []
        self.phase = "start"
        self.pid: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            self.sample()

    def sample(self) -> Sample | None:
        pid = self.pid
        if pid is None:
            return None
        status = proc_status(pid)
        if status is None:
            return None
        sample = Sample(time.monotonic(), self.phase, *status)
        self.samples.append(sample)
        return sample

    def peak_mb(self, phases: Iterable[str]) -> float:
        wanted = set(phases)
        return max((s.rss_kb for s in self.samples if s.phase in wanted), default=0) / 1024

    def hwm_mb(self) -> float:
        return max((s.hwm_kb for s in self.samples), default=0) / 1024


# -- setup ------------------------------------------------------------------------------------


def write_setup(work: Path, token: str, smtp_port: int, after_s: int, synchronous: str) -> Path:
    """The temporary config, its token file and the bench rule file; returns the config."""
    token_file = work / "token"
    token_file.write_text(token + "\n", encoding="utf-8")
    token_file.chmod(0o600)
    rules = work / "rules"
    rules.mkdir()
    rule_file = {
        "rules": [
            {
                "name": "bench-escalation",
                "description": "Every instance is its own incident.",
                "matchers": [f'alertname="{ALERTNAME}"'],
                "severity": "P2",
                "category": "availability",
                "policy": "bench",
                "group_by": ["instance"],
            }
        ]
    }
    (rules / "bench.yaml").write_text(yaml.safe_dump(rule_file, sort_keys=False), "utf-8")
    levels: list[dict[str, Any]] = []
    for k, contact in enumerate(CONTACTS):
        level: dict[str, Any] = {"targets": [contact]}
        if k:
            level["after"] = f"{k * after_s}s"
        levels.append(level)
    config = {
        "state_dir": "state",
        "server": {"max_body_bytes": 64 * 1024 * 1024, "shutdown_timeout": "10s"},
        "auth": {"bearer_token_file": "token"},
        "storage": {"url": "sqlite:responder.db", "synchronous": synchronous},
        "logging": {"level": "info", "format": "text"},
        "classification": {"rule_files": ["rules/*.yaml"]},
        "contacts": {name: {"email": f"{name}@example.com"} for name in CONTACTS},
        "escalation_policies": {"bench": {"levels": levels}},
        "incidents": {"default_policy": "bench"},
        "channels": {
            "smtp": {
                "host": "127.0.0.1",
                "port": smtp_port,
                "mode": "none",
                "from": "Responder <responder@example.com>",
            }
        },
        "delivery": {"rate_limits": {"email": ["9999/1s"]}},
    }
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


# -- the daemon -------------------------------------------------------------------------------


@dataclass
class Daemon:
    process: asyncio.subprocess.Process
    url: str
    log: Path
    spawned: float  # time.monotonic() at spawn
    profile: Path | None = None
    ready_s: float = 0.0

    @property
    def pid(self) -> int:
        return self.process.pid


async def start_daemon(
    work: Path, config: Path, label: str, sampler: Sampler, *, profile: bool = False
) -> Daemon:
    port = free_port()
    log = work / f"daemon-{label}.log"
    stats = work / f"profile-{label}.prof" if profile else None
    command = [sys.executable]
    if stats is not None:
        command += ["-m", "cProfile", "-o", str(stats)]
    command += ["-m", "responder", "serve", "-c", str(config), "--listen", f"127.0.0.1:{port}"]
    with log.open("wb") as sink:
        spawned = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            *command,
            stdout=sink,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
            cwd=str(ROOT),
        )
    daemon = Daemon(process, f"http://127.0.0.1:{port}", log, spawned, stats)
    sampler.pid = process.pid
    daemon.ready_s = await wait_ready(daemon)
    return daemon


async def wait_ready(daemon: Daemon) -> float:
    """Seconds from spawn until ``GET /-/ready`` answered 200."""
    deadline = daemon.spawned + START_TIMEOUT_S
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while time.monotonic() < deadline:
            if daemon.process.returncode is not None:
                raise SystemExit(f"daemon exited early:\n{tail(daemon.log)}")
            try:
                async with session.get(daemon.url + "/-/ready") as response:
                    if response.status == 200:
                        return time.monotonic() - daemon.spawned
            except (aiohttp.ClientError, TimeoutError):
                # not listening yet: poll again after the pause below
                ...
            await asyncio.sleep(0.01)
    raise SystemExit(f"daemon not ready after {START_TIMEOUT_S:g} s:\n{tail(daemon.log)}")


def tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


async def stop_daemon(daemon: Daemon, how: signal.Signals, sampler: Sampler) -> tuple[int, float]:
    """Send ``how``; returns (exit status, seconds until the process was gone)."""
    sampler.sample()
    sent = time.monotonic()
    daemon.process.send_signal(how)
    try:
        code = await asyncio.wait_for(daemon.process.wait(), 60)
    except TimeoutError:
        daemon.process.kill()
        code = await daemon.process.wait()
    took = time.monotonic() - sent
    sampler.pid = None
    return code, took


# -- load -------------------------------------------------------------------------------------


def body(first: int, count: int) -> bytes:
    """An Alertmanager v4 webhook with ``count`` firing alerts, instances ``first`` onwards."""
    alerts = [
        {
            "status": "firing",
            "labels": {
                "alertname": ALERTNAME,
                "instance": f"bench-{i:07d}:9100",
                "job": "node",
                "severity": "warning",
            },
            "annotations": {"summary": "benchmark incident"},
            "startsAt": STARTS_AT,
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://127.0.0.1:9090/graph?g0.expr=up",
            "fingerprint": f"{i:016x}",
        }
        for i in range(first, first + count)
    ]
    document = {
        "version": "4",
        "status": "firing",
        "receiver": "responder",
        "groupKey": f'{{}}:{{alertname="{ALERTNAME}"}}',
        "groupLabels": {"alertname": ALERTNAME},
        "commonLabels": {"alertname": ALERTNAME, "job": "node"},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "truncatedAlerts": 0,
        "alerts": alerts,
    }
    return json.dumps(document, separators=(",", ":")).encode()


@dataclass
class Ingest:
    seconds: float = 0.0
    requests: int = 0
    alerts: int = 0
    errors: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    started_wall: float = 0.0  # time.time()
    ended_wall: float = 0.0


async def ingest(daemon: Daemon, token: str, n: int, per_body: int, concurrency: int) -> Ingest:
    result = Ingest()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    starts = list(range(0, n, per_body))
    queue: asyncio.Queue[int] = asyncio.Queue()
    for start in starts:
        queue.put_nowait(start)
    timeout = aiohttp.ClientTimeout(total=120)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            start = queue.get_nowait()
            count = min(per_body, n - start)
            data = body(start, count)
            sent = time.monotonic()
            try:
                async with session.post(
                    daemon.url + WEBHOOK_PATH, data=data, headers=headers
                ) as response:
                    text = await response.text()
                    ok = response.status == 200
                    if not ok:
                        result.errors.append(f"{response.status}: {text[:200]}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                ok = False
                result.errors.append(f"{type(exc).__name__}: {exc}")
            result.latencies_s.append(time.monotonic() - sent)
            result.requests += 1
            if ok:
                result.alerts += count

    result.started_wall = time.time()
    began = time.monotonic()
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    result.seconds = time.monotonic() - began
    result.ended_wall = time.time()
    return result


# -- the database, read from outside ----------------------------------------------------------


def connect_ro(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)


class StepCounter:
    """Steps recorded per id, read incrementally: the daemon's single writer commits rows in
    rowid order, so only rows after the last one seen need counting (cheap at 400,000)."""

    def __init__(self, db: Path) -> None:
        self._db = db
        self._last = 0
        self.counts: Counter[str] = Counter()

    def update(self) -> Counter[str]:
        with contextlib.closing(connect_ro(self._db)) as conn:
            rows = conn.execute(
                "SELECT step, count(*), max(rowid) FROM steps WHERE rowid > ? GROUP BY step",
                (self._last,),
            ).fetchall()
        for step, count, top in rows:
            self.counts[step] += count
            self._last = max(self._last, top)
        return Counter(self.counts)


def open_pages(db: Path) -> int:
    with contextlib.closing(connect_ro(db)) as conn:
        row = conn.execute("SELECT count(*) FROM pages WHERE state IN ('queued', 'sending')")
        return int(row.fetchone()[0])


def trigger_range(db: Path) -> tuple[float, float]:
    """(first, last) incident trigger time, seconds since the epoch."""
    with contextlib.closing(connect_ro(db)) as conn:
        low, high = conn.execute(
            "SELECT min(triggered_at), max(triggered_at) FROM incidents"
        ).fetchone()
    return low / 1e6, high / 1e6


@dataclass
class Wave:
    step: str
    due_first: float  # time.time() of the first and last due time
    due_last: float
    done_wall: float | None = None  # when the last step of the wave was seen recorded
    count: int = 0


class Follower:
    """Polls the steps table; notes when each wave is complete (N steps recorded)."""

    def __init__(self, db: Path, waves: dict[str, Wave], n: int, sampler: Sampler) -> None:
        self._counter = StepCounter(db)
        self._waves = waves
        self._n = n
        self._sampler = sampler

    async def follow(self, label: str, until: float, done_with: Sequence[str] = ()) -> bool:
        """Label the samples ``label`` and poll until wall time ``until``, or, when
        ``done_with`` names waves, until those are complete; returns whether they are."""
        self._sampler.phase = label
        reported: Counter[str] | None = None
        while True:
            counts = await asyncio.to_thread(self._counter.update)
            now = time.time()
            for wave in self._waves.values():
                wave.count = counts[wave.step]
                if wave.done_wall is None and wave.count >= self._n:
                    wave.done_wall = now
            complete = all(self._waves[step].done_wall is not None for step in done_with)
            if (done_with and complete) or now >= until:
                return complete
            if counts != reported and any(w.due_first <= now for w in self._waves.values()):
                reported = counts
                progress = ", ".join(f"{s} {counts[s]:,}" for s in LEVELS if counts[s])
                print(f"  {label}: {progress}", file=sys.stderr)
            await asyncio.sleep(min(POLL_EVERY_S, max(0.0, until - now)))


async def wait_outbox(db: Path, timeout_s: float) -> int:
    """Wait until no page is queued or sending; returns how many still are."""
    deadline = time.monotonic() + timeout_s
    left = await asyncio.to_thread(open_pages, db)
    while left and time.monotonic() < deadline:
        await asyncio.sleep(POLL_EVERY_S)
        left = await asyncio.to_thread(open_pages, db)
    return left


@dataclass
class StepFigures:
    step: str
    steps: int
    incidents_with_step: int
    lags_s: list[float]
    pages: int
    page_incidents: int
    page_states: Counter[str]
    delivery_s: list[float]  # sent_at - due_at of sent pages
    # Incidents whose page a SIGKILL caught while sending: the daemon marks such a page
    # failed ("outcome unknown") and never sends it again on that route, so it arrived at
    # most once (docs/incidents.md, "The outbox and delivery").
    outcome_unknown: set[int]


def final_figures(db: Path, after_s: int) -> dict[str, StepFigures]:
    figures: dict[str, StepFigures] = {}
    with contextlib.closing(connect_ro(db)) as conn:
        for k, step in enumerate(LEVELS):
            offset_us = k * after_s * 1_000_000
            lags = [
                lag / 1e6
                for (lag,) in conn.execute(
                    "SELECT s.done_at - i.triggered_at - ? FROM steps s "
                    "JOIN incidents i ON i.id = s.incident_id AND i.episode = s.episode "
                    "WHERE s.step = ?",
                    (offset_us, step),
                )
            ]
            steps, incidents = conn.execute(
                "SELECT count(*), count(DISTINCT incident_id) FROM steps WHERE step = ?", (step,)
            ).fetchone()
            pages, page_incidents = conn.execute(
                "SELECT count(*), count(DISTINCT incident_id) FROM pages "
                "WHERE step = ? AND kind = 'page'",
                (step,),
            ).fetchone()
            rows = conn.execute(
                "SELECT state, count(*) FROM pages WHERE step = ? GROUP BY state", (step,)
            )
            states = Counter(dict(rows))
            delivery = [
                value / 1e6
                for (value,) in conn.execute(
                    "SELECT sent_at - due_at FROM pages WHERE step = ? AND sent_at IS NOT NULL",
                    (step,),
                )
            ]
            unknown = {
                incident_id
                for (incident_id,) in conn.execute(
                    "SELECT incident_id FROM pages WHERE step = ? AND state = 'failed' "
                    "AND error LIKE 'interrupted while sending%'",
                    (step,),
                )
            }
            figures[step] = StepFigures(
                step, steps, incidents, lags, pages, page_incidents, states, delivery, unknown
            )
    return figures


# -- what arrived by email --------------------------------------------------------------------

_BUNDLE_ITEM = re.compile(r"^#(\d+) \[", re.MULTILINE)
_SUBJECT_ID = re.compile(r"#(\d+)")


class Mailbox:
    """Counts, per level, how often each incident arrived by email; drains the SMTP server's
    list as it goes so that its parsed messages do not pile up in memory."""

    def __init__(self, server: SmtpTestServer) -> None:
        self._server = server
        self.paged: dict[str, Counter[int]] = {step: Counter() for step in LEVELS}
        self.messages: Counter[str] = Counter()
        self.unparsed = 0
        self._level_of = {
            f"{name}@example.com": step for name, step in zip(CONTACTS, LEVELS, strict=True)
        }

    def drain(self) -> None:
        received = self._server.messages
        count = len(received)  # only appends happen meanwhile (the SMTP thread): safe to cut
        batch = received[:count]
        del received[:count]
        for item in batch:
            text_part = item.message.get_body(preferencelist=("plain",))
            text = text_part.get_content() if text_part is not None else ""
            ids = [int(x) for x in _BUNDLE_ITEM.findall(text)]
            if not ids:
                found = _SUBJECT_ID.search(str(item.message["Subject"] or ""))
                ids = [int(found.group(1))] if found else []
            if not ids:
                self.unparsed += 1
            for rcpt in item.rcpt_tos:
                step = self._level_of.get(rcpt.lower())
                if step is None:
                    self.unparsed += 1
                    continue
                self.messages[step] += 1
                self.paged[step].update(ids)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
        self.drain()


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Restart:
    how: str
    exit_code: int
    shutdown_s: float
    ready_s: float
    rss_ready_mb: float
    margin_s: float  # from ready to the next wave's first due time (negative: overlapped)
    unfinished: list[str]  # waves not yet complete when the signal was sent


@dataclass
class Run:
    n: int
    after_s: int
    ingest: Ingest = field(default_factory=Ingest)
    ready_first_s: float = 0.0
    waves: dict[str, Wave] = field(default_factory=dict)
    restarts: list[Restart] = field(default_factory=list)
    rss_after_load_mb: float = 0.0
    hwm_mb: list[float] = field(default_factory=list)  # per daemon lifetime
    cpu_s: list[float] = field(default_factory=list)
    figures: dict[str, StepFigures] = field(default_factory=dict)
    mailbox: Mailbox | None = None
    left_in_outbox: int = 0
    db_mb: float = 0.0
    profile: str = ""
    finished: str = ""  # UTC time the run ended
    rss_peaks: dict[str, float] = field(default_factory=dict)  # peak VmRSS MB per phase


def lifetime_end(daemon: Daemon, run: Run, sampler: Sampler) -> None:
    sample = sampler.sample()
    if sample is not None:
        run.hwm_mb.append(sample.hwm_kb / 1024)
    run.cpu_s.append(cpu_seconds(daemon.pid))


async def run_bench(args: argparse.Namespace, work: Path, sampler: Sampler) -> Run:
    n, after_s = args.incidents, args.l2_after
    run = Run(n, after_s)
    token = secrets.token_urlsafe(32)
    async with SmtpTestServer() as smtp:
        config = write_setup(work, token, smtp.port, after_s, shipped_synchronous())
        db = work / "state" / "responder.db"
        mailbox = run.mailbox = Mailbox(smtp)
        stop_mail = asyncio.Event()
        mail_task = asyncio.create_task(mailbox.run(stop_mail))
        try:
            await drive(args, work, config, db, token, run, sampler)
        finally:
            stop_mail.set()
            await mail_task
    run.finished = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    run.figures = await asyncio.to_thread(final_figures, db, after_s)
    run.db_mb = sum(p.stat().st_size for p in db.parent.glob("responder.db*")) / 1e6
    return run


async def drive(
    args: argparse.Namespace,
    work: Path,
    config: Path,
    db: Path,
    token: str,
    run: Run,
    sampler: Sampler,
) -> None:
    n, after_s = run.n, run.after_s
    print(f"# starting responder serve ({work})", file=sys.stderr)
    daemon = await start_daemon(work, config, "1", sampler, profile=args.profile)
    run.ready_first_s = daemon.ready_s

    sampler.phase = "ingest"
    print(f"# posting {n:,} alerts, {args.per_body} per body", file=sys.stderr)
    run.ingest = await ingest(daemon, token, n, args.per_body, args.concurrency)
    print(
        f"  {run.ingest.alerts:,} alerts in {run.ingest.seconds:.1f} s, "
        f"{len(run.ingest.errors)} errors",
        file=sys.stderr,
    )
    if run.ingest.errors:
        print("  first error: " + run.ingest.errors[0], file=sys.stderr)
    first, last = await asyncio.to_thread(trigger_range, db)
    for k, step in enumerate(LEVELS):
        run.waves[step] = Wave(step, first + k * after_s, last + k * after_s)
    waves = run.waves
    follower = Follower(db, waves, n, sampler)

    # L1: due as each incident triggers, done while the rest arrive.
    if await follower.follow("L1 wave", waves["L2"].due_first, ["L1"]):
        await asyncio.sleep(1.0)
    sample = sampler.sample()
    run.rss_after_load_mb = sample.rss_kb / 1024 if sample else 0.0
    await follower.follow("loaded", waves["L2"].due_first)

    # L2: N steps due within the span the incidents triggered in. Then the restarts, each
    # once the waves so far are done, at the latest RESTART_LEAD_S before the next wave.
    await follower.follow("L2 wave", waves["L3"].due_first - RESTART_LEAD_S, LEVELS[:2])
    for k, how in ((2, signal.SIGTERM), (3, signal.SIGKILL)):
        await asyncio.sleep(2.0)  # the outbox takes the wave's last pages
        sampler.phase = f"stop {how.name}"
        lifetime_end(daemon, run, sampler)
        print(f"# {how.name} and start again", file=sys.stderr)
        code, shutdown_s = await stop_daemon(daemon, how, sampler)
        if daemon.profile is not None:
            run.profile = profile_summary(daemon.profile)
        sampler.phase = f"restart {how.name}"
        daemon = await start_daemon(work, config, str(k), sampler)
        sample = sampler.sample()
        upcoming = waves[LEVELS[k]]
        run.restarts.append(
            Restart(
                how.name,
                code,
                shutdown_s,
                daemon.ready_s,
                sample.rss_kb / 1024 if sample else 0.0,
                upcoming.due_first - time.time(),
                [s for s in LEVELS[:k] if waves[s].done_wall is None],
            )
        )
        print(f"  ready in {daemon.ready_s:.2f} s (shutdown {shutdown_s:.2f} s)", file=sys.stderr)
        if k + 1 < len(LEVELS):
            until = waves[LEVELS[k + 1]].due_first - RESTART_LEAD_S
        else:
            until = upcoming.due_last + args.wave_timeout
        await follower.follow(f"{upcoming.step} wave", until, LEVELS[: k + 1])

    sampler.phase = "drain"
    print("# waiting for the outbox to empty", file=sys.stderr)
    run.left_in_outbox = await wait_outbox(db, args.wave_timeout)
    await asyncio.sleep(2.0)  # the last emails are in flight to the SMTP server
    lifetime_end(daemon, run, sampler)
    await stop_daemon(daemon, signal.SIGTERM, sampler)


def profile_summary(stats_file: Path, top: int = 30) -> str:
    if not stats_file.exists():
        return "(no profile written: the daemon did not exit normally)"
    out = io.StringIO()
    stats = pstats.Stats(str(stats_file), stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


# -- the report -------------------------------------------------------------------------------


def filesystem(path: Path) -> str:
    best, kind = "", "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mount = parts[1]
            if str(path).startswith(mount) and len(mount) > len(best):
                best, kind = mount, f"{parts[2]} on {parts[0]}"
    return kind


def s(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def report(
    run: Run, info: dict[str, str], work: Path, args: argparse.Namespace
) -> tuple[str, bool]:
    lines: list[str] = []
    out = lines.append
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])
    n, after = run.n, run.after_s
    out("## Escalation at scale\n")
    out(f"Command: `{command}`\n")
    out(
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), Linux {info['kernel']}; Python "
        f"{info['python']}, aiohttp {info['aiohttp']}, SQLite {info['sqlite']} "
        f"(`synchronous: {info['synchronous']}`); database on {filesystem(work)}. Daemon, load "
        "generator, database reader and SMTP server share the machine (no pinning).\n"
    )
    out(
        f"Setup: {n:,} incidents (one per `instance`, rule with `group_by: [instance]`), policy "
        f"L1 alice at once, L2 bob after {after} s, L3 carol after {2 * after} s, L4 dave after "
        f"{3 * after} s; email only, to aiosmtpd on loopback; `delivery.rate_limits.email: "
        f"[9999/1s]`. Alerts posted as {args.per_body}-alert webhooks, {args.concurrency} in "
        "flight. SIGTERM + restart once the L2 wave is done, SIGKILL + restart once the L3 wave "
        f"is done (each at the latest {RESTART_LEAD_S:g} s before the next wave is due). "
        f"Run finished {run.finished}.\n"
    )
    ing = run.ingest
    out("### Load\n")
    out("| figure | value |")
    out("| --- | ---: |")
    out(f"| alerts posted (answered 200) | {ing.alerts:,} of {n:,} |")
    out(f"| webhook errors | {len(ing.errors)} |")
    out(
        f"| ingest time | {ing.seconds:.1f} s "
        f"({ing.alerts / max(ing.seconds, 1e-9):,.0f} alerts/s) |"
    )
    out(
        f"| webhook latency p50 / max | {percentile(ing.latencies_s, 50):.2f} s / "
        f"{max(ing.latencies_s, default=0.0):.2f} s |"
    )
    out(f"| first start ready in | {run.ready_first_s:.2f} s |")
    out(f"| database size at the end (with WAL) | {run.db_mb:,.0f} MB |")
    out(f"| daemon CPU time per lifetime | {', '.join(f'{c:.0f} s' for c in run.cpu_s)} |")
    out("")

    out("### Escalation lag (`steps.done_at` - due time)\n")
    out(
        "| step | due (after trigger) | steps recorded | p50 s | p99 s | max s "
        "| wave done after its last due time | pages | emails | incidents emailed |"
    )
    out("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    mailbox = run.mailbox
    once = True
    emailed_once = mailbox is not None and mailbox.unparsed == 0
    for k, step in enumerate(LEVELS):
        fig = run.figures.get(step)
        w = run.waves.get(step)
        if fig is None or w is None:
            continue
        done = f"{w.done_wall - w.due_last:.1f} s" if w.done_wall is not None else "not done"
        paged = mailbox.paged[step] if mailbox else Counter()
        emails = mailbox.messages[step] if mailbox else 0
        dup = sum(1 for c in paged.values() if c > 1)
        once = once and fig.steps == n and fig.incidents_with_step == n and fig.pages == n
        missing = n - len(paged)
        unexplained = missing - sum(1 for i in fig.outcome_unknown if i not in paged)
        emailed_once = emailed_once and unexplained == 0 and not dup
        notes = [f"{missing:,} missing"] if missing else []
        if missing and not unexplained:
            notes[-1] += ", each caught mid-send by the SIGKILL"
        notes += [f"{dup:,} twice or more"] if dup else []
        note = f" ({', '.join(notes)})" if notes else ""
        out(
            f"| {step} | {k * after} s | {fig.steps:,} | {s(percentile(fig.lags_s, 50))} "
            f"| {s(percentile(fig.lags_s, 99))} | {s(max(fig.lags_s, default=math.nan))} "
            f"| {done} | {fig.pages:,} | {emails:,} | {len(paged):,}"
            f"{note} |"
        )
    out("")
    out("### Delivery (page `sent_at` - `due_at`, email to the local SMTP server)\n")
    out("| step | sent | other states | p50 s | p99 s | max s |")
    out("| --- | ---: | --- | ---: | ---: | ---: |")
    for step in LEVELS:
        fig = run.figures.get(step)
        if fig is None:
            continue
        others = ", ".join(f"{k} {v:,}" for k, v in sorted(fig.page_states.items()) if k != "sent")
        out(
            f"| {step} | {fig.page_states.get('sent', 0):,} | {others or '-'} "
            f"| {s(percentile(fig.delivery_s, 50))} | {s(percentile(fig.delivery_s, 99))} "
            f"| {s(max(fig.delivery_s, default=math.nan))} |"
        )
    out(f"\nPages still queued or sending at the end: {run.left_in_outbox:,}.\n")

    out("### Memory (daemon VmRSS, sampled every 200 ms)\n")
    out("| phase | peak VmRSS MB |")
    out("| --- | ---: |")
    phases = ["ingest", "L1 wave", "loaded", "L2 wave", "restart SIGTERM", "L3 wave"]
    phases += ["restart SIGKILL", "L4 wave", "drain"]
    for phase in phases:
        out(f"| {phase} | {run.rss_peaks.get(phase, 0.0):.0f} |")
    out(f"| after load (L1 wave done, 1 s later) | {run.rss_after_load_mb:.0f} |")
    out(f"| VmHWM per lifetime | {', '.join(f'{h:.0f}' for h in run.hwm_mb)} |")
    out("")

    out("### Restarts with the open incidents\n")
    out(
        "| signal | exit status | exit took s | start to `/-/ready` 200 s | VmRSS when ready MB "
        "| next wave due after ready s | waves unfinished at the signal |"
    )
    out("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in run.restarts:
        out(
            f"| {r.how} | {r.exit_code} | {r.shutdown_s:.2f} | {r.ready_s:.2f} "
            f"| {r.rss_ready_mb:.0f} | {r.margin_s:.1f} | {', '.join(r.unfinished) or '-'} |"
        )
    out("")

    all_lags = [lag for fig in run.figures.values() for lag in fig.lags_s]
    after_restart = [lag for step in ("L3", "L4") for lag in run.figures[step].lags_s]
    peak = max(run.hwm_mb, default=0.0)
    ready = max([r.ready_s for r in run.restarts], default=math.inf)
    verdicts = [
        (
            f"every step fires within {TARGET_LAG_S:g} s of its due time (max over all steps)",
            f"{s(max(all_lags, default=math.nan))} s",
            bool(all_lags) and max(all_lags) <= TARGET_LAG_S,
        ),
        (
            "... after a restart (L3 after SIGTERM, L4 after SIGKILL)",
            f"{s(max(after_restart, default=math.nan))} s",
            bool(after_restart) and max(after_restart) <= TARGET_LAG_S,
        ),
        (
            "every level's step recorded exactly once per incident, one page each",
            "yes" if once else "no",
            once,
        ),
        (
            "(check) every incident's page of every level arrived by email exactly once "
            "(at most once where a SIGKILL caught it mid-send)",
            "yes" if emailed_once else "no",
            emailed_once,
        ),
        (f"RSS stays under {TARGET_RSS_MB:g} MB (VmHWM)", f"{peak:.0f} MB", peak < TARGET_RSS_MB),
        (
            f"a restart is ready in under {TARGET_READY_S:g} s (SIGTERM and SIGKILL)",
            f"{ready:.2f} s",
            ready < TARGET_READY_S,
        ),
    ]
    out("### Targets\n")
    out("| target | measured | met |")
    out("| --- | ---: | --- |")
    for name, value, ok in verdicts:
        out(f"| {name} | {value} | {'yes' if ok else '**no**'} |")
    return "\n".join(lines) + "\n", all(ok for _, _, ok in verdicts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--incidents", type=int, default=None, help="open incidents (default 100,000)"
    )
    parser.add_argument("--quick", action="store_true", help="10,000 incidents, levels 60 s apart")
    parser.add_argument(
        "--l2-after",
        type=int,
        default=None,
        metavar="SECONDS",
        help="L2 due this long after the trigger, L3 twice, L4 three times (default 120)",
    )
    parser.add_argument("--per-body", type=int, default=1000, help="alerts per webhook body")
    parser.add_argument("--concurrency", type=int, default=4, help="webhooks in flight")
    parser.add_argument(
        "--wave-timeout",
        type=float,
        default=900.0,
        metavar="SECONDS",
        help="give up on the L4 wave, and on emptying the outbox, after this long",
    )
    parser.add_argument(
        "--profile", action="store_true", help="run the first daemon under cProfile"
    )
    parser.add_argument("--work-dir", type=Path, help="where the state goes (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS.name}")
    args = parser.parse_args(argv)
    if args.incidents is None:
        args.incidents = 10_000 if args.quick else 100_000
    if args.l2_after is None:
        args.l2_after = 60 if args.quick else 120
    if not Path("/proc/self/status").exists():
        print("bench_escalation: needs Linux /proc", file=sys.stderr)
        return 2
    info = machine()
    base = args.work_dir
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-escalation-", dir=base))
    sampler = Sampler()
    sampler.start()
    try:
        run = asyncio.run(run_bench(args, work, sampler))
    finally:
        sampler.stop()
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    phases = {sample.phase for sample in sampler.samples}
    run.rss_peaks = {phase: sampler.peak_mb([phase]) for phase in phases}
    text, met = report(run, info, work, args)
    print(text)
    if run.profile:
        print("### Profile of the first daemon (cProfile)\n", file=sys.stderr)
        print(run.profile, file=sys.stderr)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text, encoding="utf-8")
        print(f"written to {RESULTS.relative_to(ROOT)}", file=sys.stderr)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())

"""Containment latency: from a webhook leaving the sender to the action's process running.

Run by hand: ``.venv/bin/python bench/bench_containment.py`` (about a minute; ``--quick``
takes about half). Linux only; ``taskset`` is used when it is there.

Target (issue): the time from webhook received to action process started, p99 under 50 ms at
100 alerts per second.

What it does:

* writes a temporary config from the shipped ``config.yaml`` (same SQLite ``synchronous``
  and logging; a bearer token file; its own port), with one rule file of its own in front of
  the shipped ones: alerts named ``BenchContain`` run the action ``stamp``;
* ``stamp`` is an ``exec`` action whose argv[0] is a small compiled program, never a Python
  script (Python's own start-up, 20-40 ms, is not responder's latency). With the default
  ``--probe date`` it is ``/usr/bin/date "+%s%N {seq}"``: the process prints its own
  CLOCK_REALTIME in nanoseconds, responder keeps the output in the run's audit record, and
  the benchmark reads it from the database afterwards. ``--probe touch`` runs
  ``/usr/bin/touch <dir>/{seq}`` instead and takes the file's ``st_mtime_ns``; on Linux that
  stamp comes from the coarse (per tick) clock, so it reads a few ms early (measured and
  printed), which is why it is not the default;
* the guards are opened wide so that they never stop a run: ``max_actions_per_window`` and
  ``max_targets_per_window`` above the number of alerts sent, global ``concurrency`` 1000;
  the action has ``cooldown: 0``, no ``max_runs`` and ``concurrency`` 1000. Each alert has
  its own ``seq`` label (the action's target), fingerprint and Alertmanager group key, so each
  is a new alert, a new incident and a new target. No escalation policy: nobody is paged;
* starts ``responder serve`` pinned to core 0 (``taskset -c 0``; the action processes it
  starts inherit that core) and pins this process, the load generator, to core 1;
* sends one alert per webhook on a fixed schedule (open loop: a request leaves at its time
  whether or not earlier ones were answered, over pre-opened keep-alive connections), taking
  ``time.time_ns()`` just before each request is written;
* waits until every run has finished, stops the daemon, and reads from its database, per
  alert: when it was received (``alerts.first_received``), when the engine recorded its run
  as started (``action_runs.started_at``, before the process is spawned), and the stamp.
  Latency = stamp - send time. Every alert must have exactly one run, with outcome ok;
* prints a Markdown report and writes it to ``bench/results/containment.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import itertools
import json
import os
import secrets
import shlex
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from benchlib import cpu_seconds_with_children, free_port, read_response, wait_ready
from benchlib import machine as benchlib_machine

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "containment.md"
WEBHOOK_PATH = "/api/v1/alertmanager"
SERVER_CORE = "0"
LOAD_CORE = 1
ACTION = "stamp"
ALERT_NAME = "BenchContain"
TARGET_RATE = 100.0
TARGET_P99_MS = 50.0
DATE = "/usr/bin/date"
TOUCH = "/usr/bin/touch"
SLICE_S = 5.0  # the per-slice table: does latency drift as the run goes on?

RULE = f"""
rules:
  - name: bench-containment
    description: every {ALERT_NAME} alert runs the stamp action once
    matchers: ['alertname="{ALERT_NAME}"']
    severity: P2
    category: availability
    actions: [{ACTION}]
"""


# -- config and daemon ----------------------------------------------------------------------


def action_config(probe: str, stamps: Path) -> dict[str, Any]:
    argv = [DATE, "+%s%N {seq}"] if probe == "date" else [TOUCH, f"{stamps}/{{seq}}"]
    return {
        "kind": "exec",
        "description": "record when the action process started",
        "argv": argv,
        "params": {"seq": {"from": "label", "key": "seq", "type": "identifier"}},
        "timeout": "10s",
        "cooldown": 0,
        "concurrency": 1000,
    }


def write_config(
    work: Path, port: int, probe: str, stamps: Path, budget: int, synchronous: str | None
) -> Path:
    shipped = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    (work / "token").write_text(secrets.token_hex(16) + "\n", encoding="utf-8")
    rules = work / "bench-rules.yaml"
    rules.write_text(RULE, encoding="utf-8")
    shipped_rules = (shipped.get("classification") or {}).get("rule_files") or ["rules/*.yaml"]
    config: dict[str, Any] = {
        "server": dict(shipped.get("server") or {}, listen=f"127.0.0.1:{port}"),
        "auth": {"bearer_token_file": str(work / "token")},
        "storage": dict(shipped.get("storage") or {}),
        "logging": shipped.get("logging") or {},
        "classification": {"rule_files": [str(rules), *(str(ROOT / p) for p in shipped_rules)]},
        "containment": {
            "max_actions_per_window": budget,
            "max_targets_per_window": budget,
            "window": "10m",
            "concurrency": 1000,
        },
        "actions": {ACTION: action_config(probe, stamps)},
    }
    if synchronous is not None:
        config["storage"]["synchronous"] = synchronous
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    port: int
    state: Path
    log: Path
    pinned: bool


@contextlib.contextmanager
def responder(work: Path, config: Path, port: int) -> Iterator[Daemon]:
    state = work / "state"
    log = work / "responder.log"
    pinned = shutil.which("taskset") is not None and (os.cpu_count() or 1) > 1
    argv = [
        str(Path(sys.executable).parent / "responder"),
        "serve",
        "-c",
        str(config),
        "--state-dir",
        str(state),
    ]
    if pinned:
        argv = ["taskset", "-c", SERVER_CORE, *argv]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{port}/-/ready", process, log)
        yield Daemon(process, port, state, log, pinned)
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def busy_seconds() -> float:
    """CPU seconds all CPUs have spent busy since boot (/proc/stat, idle and iowait excluded)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                values[name] = float(value)
    return values


# -- the load -------------------------------------------------------------------------------


def seq_label(number: int) -> str:
    return f"s{number:06d}"


def webhook(number: int, run: str) -> bytes:
    seq = seq_label(number)
    labels = {"alertname": ALERT_NAME, "seq": seq, "instance": f"host-{seq}:9100"}
    group = f'{{}}:{{alertname="{ALERT_NAME}", seq="{seq}"}}'
    document = {
        "version": "4",
        "status": "firing",
        "receiver": "responder",
        "groupKey": group,
        "groupLabels": {"alertname": ALERT_NAME, "seq": seq},
        "commonLabels": labels,
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "truncatedAlerts": 0,
        "alerts": [
            {
                "status": "firing",
                "labels": labels,
                "annotations": {"summary": "containment benchmark"},
                "startsAt": "2026-11-22T07:06:22.284703Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://127.0.0.1:9090/graph",
                "fingerprint": f"{run}{number:08x}",
            }
        ],
    }
    return json.dumps(document, separators=(",", ":")).encode()


def http_request(port: int, token: str, body: bytes) -> bytes:
    head = (
        f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"User-Agent: Alertmanager/0.25.0\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class Sent:
    number: int
    sent_ns: int  # time.time_ns() just before the request was written
    answered_ms: float = float("nan")  # webhook response latency, from the same instant
    status: int = 0


@dataclass
class Load:
    rate: float
    seconds: float
    sent: list[Sent] = field(default_factory=list)
    late_ms: float = 0.0  # worst lag of the generator behind its schedule
    connections: int = 0
    errors: int = 0


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def response(self) -> int:
        return await read_response(self.reader)


async def open_loop(
    port: int, token: str, rate: float, seconds: float, first: int, run: str
) -> Load:
    """``rate`` webhooks per second for ``seconds``, on a fixed schedule, numbered from
    ``first``. A request takes an idle keep-alive connection or opens a new one."""
    load = Load(rate, seconds)
    idle: asyncio.LifoQueue[_Conn] = asyncio.LifoQueue()
    for _ in range(8):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        idle.put_nowait(_Conn(reader, writer))
        load.connections += 1
    total = int(rate * seconds)
    bodies = [http_request(port, token, webhook(first + i, run)) for i in range(total)]

    async def one(sent: Sent, request: bytes) -> None:
        if idle.empty():
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            conn = _Conn(reader, writer)
            load.connections += 1
        else:
            conn = idle.get_nowait()
        sent.sent_ns = time.time_ns()
        began = time.perf_counter()
        try:
            conn.writer.write(request)
            sent.status = await conn.response()
        except (OSError, asyncio.IncompleteReadError, ValueError):
            load.errors += 1
            conn.writer.close()
            return
        sent.answered_ms = (time.perf_counter() - began) * 1000
        if sent.status != 200:
            load.errors += 1
        idle.put_nowait(conn)

    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter() + 0.05
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            load.late_ms = max(load.late_ms, -delay * 1000)
        sent = Sent(first + i, 0)
        load.sent.append(sent)
        task = asyncio.create_task(one(sent, bodies[i]))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    while tasks:
        await asyncio.wait(set(tasks))
    while not idle.empty():
        idle.get_nowait().writer.close()
    return load


def run_load(port: int, token: str, rate: float, seconds: float, first: int, run: str) -> Load:
    # The generator's own pauses would show as latency: no garbage collection while it runs.
    gc.collect()
    gc.disable()
    try:
        return asyncio.run(open_loop(port, token, rate, seconds, first, run))
    finally:
        gc.enable()


# -- results --------------------------------------------------------------------------------


@dataclass
class Run:
    seq: str
    received_us: int  # alerts.first_received: the webhook's time in the daemon
    recorded_us: int  # action_runs.started_at: the run recorded, before the spawn
    state: str
    outcome: str | None
    stamp_ns: int | None  # when the action process said it started


def wait_for_runs(db: Path, expected: int, timeout_s: float) -> bool:
    """True once ``expected`` runs are finished and the queue is empty."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(sqlite3.Error):
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
                done = conn.execute(
                    "SELECT count(*) FROM action_runs WHERE state != 'running'"
                ).fetchone()[0]
                queued = conn.execute("SELECT count(*) FROM action_queue").fetchone()[0]
            if done >= expected and queued == 0:
                return True
        time.sleep(0.2)
    return False


def read_runs(db: Path, probe: str, stamps: Path) -> tuple[list[Run], int]:
    """The runs of the bench action, and how many bench alerts were stored."""
    runs: list[Run] = []
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        stored = conn.execute(
            "SELECT count(*) FROM alerts WHERE alertname = ?", (ALERT_NAME,)
        ).fetchone()[0]
        rows = conn.execute(
            "SELECT a.labels, a.first_received, r.started_at, r.state, r.outcome, r.audit "
            "FROM action_runs r JOIN alerts a ON a.id = r.alert_id WHERE r.action = ?",
            (ACTION,),
        ).fetchall()
    for labels, received, recorded, state, outcome, audit in rows:
        seq = str(json.loads(labels).get("seq", ""))
        stamp: int | None = None
        if probe == "date":
            attempts = json.loads(audit).get("attempts") or []
            if attempts:
                words = str(attempts[0].get("stdout", "")).split()
                if len(words) == 2 and words[1] == seq and words[0].isdigit():
                    stamp = int(words[0])
        else:
            with contextlib.suppress(OSError):
                stamp = (stamps / seq).stat().st_mtime_ns
        runs.append(Run(seq, int(received), int(recorded), state, outcome, stamp))
    return runs, int(stored)


@dataclass(frozen=True)
class MtimeCheck:
    tick_ms: float  # the median step between distinct mtimes
    early_min_ms: float  # how far mtime reads before the wall clock, at best and at worst
    early_max_ms: float


def mtime_check(folder: Path, files: int = 100) -> MtimeCheck:
    """Create files in a loop: the step between distinct mtimes and their lag behind the
    wall clock read just before each create."""
    stamps: list[int] = []
    early: list[float] = []
    for i in range(files):
        path = folder / f"mtime-{i}"
        before = time.time_ns()
        path.touch()
        stamp = path.stat().st_mtime_ns
        stamps.append(stamp)
        early.append((before - stamp) / 1e6)
        time.sleep(0.0007)
    distinct = sorted(set(stamps))
    steps = [b - a for a, b in itertools.pairwise(distinct)]
    for i in range(files):
        (folder / f"mtime-{i}").unlink()
    return MtimeCheck(statistics.median(steps) / 1e6 if steps else 0.0, min(early), max(early))


def pct(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def summary(values: Sequence[float]) -> str:
    """p50 | p90 | p99 | max as table cells, in ms."""
    if not values:
        return "- | - | - | -"
    return " | ".join(f"{pct(values, p):.2f}" for p in (50, 90, 99)) + f" | {max(values):.2f}"


def code_under_test() -> str:
    """Which responder package the daemon imports (same environment), and a digest of it."""
    found = subprocess.run(
        [sys.executable, "-c", "import responder; print(responder.__file__)"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tempfile.gettempdir(),
    )
    if found.returncode != 0:
        return "unknown"
    package = Path(found.stdout.strip()).parent
    digest = hashlib.sha256()
    newest = 0.0
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
        newest = max(newest, path.stat().st_mtime)
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(newest))
    return f"`{package}`, sha256 of its *.py {digest.hexdigest()[:12]}, newest file {when}"


def machine() -> dict[str, str]:
    fs = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["df", "--output=fstype", tempfile.gettempdir()],
            capture_output=True,
            text=True,
            check=False,
        )
        fs = out.stdout.split()[-1]
    return {**benchlib_machine(), "fs": fs, "code": code_under_test()}


@dataclass
class Outcome:
    load: Load
    warm: Load
    runs: list[Run]
    stored: int
    finished: bool
    mtime: MtimeCheck
    server_cpu: float  # responder's CPU s per s of load
    children_cpu: float  # the action processes' (reaped) CPU s per s of load
    other_cpu: float  # everything else on the machine, CPU s per s: should be near 0
    load_cpu: float
    elapsed: float  # the load's wall time, first send to last answer
    commit_batch: float
    commit_ms: float


def report(out: Outcome, info: dict[str, str], args: argparse.Namespace, pinned: bool) -> str:
    lines: list[str] = []
    add = lines.append
    load = out.load
    sent = {s.number: s for s in load.sent}
    by_seq: dict[str, list[Run]] = {}
    for r in out.runs:
        by_seq.setdefault(r.seq, []).append(r)
    latency: list[float] = []
    ingest: list[float] = []
    pickup: list[float] = []
    spawn: list[float] = []
    slices: dict[int, list[float]] = {}
    t0 = min((s.sent_ns for s in load.sent), default=0)
    for s in load.sent:
        mine = by_seq.get(seq_label(s.number), [])
        if len(mine) != 1 or mine[0].stamp_ns is None:
            continue
        r = mine[0]
        assert r.stamp_ns is not None
        value = (r.stamp_ns - s.sent_ns) / 1e6
        latency.append(value)
        ingest.append((r.received_us * 1000 - s.sent_ns) / 1e6)
        pickup.append((r.recorded_us - r.received_us) / 1000)
        spawn.append((r.stamp_ns - r.recorded_us * 1000) / 1e6)
        slices.setdefault(int((s.sent_ns - t0) / 1e9 // SLICE_S), []).append(value)
    answered = [s.answered_ms for s in load.sent if s.status == 200]
    measured = {seq_label(n) for n in sent}
    runs_measured = [r for r in out.runs if r.seq in measured]
    per_alert = Counter(len(by_seq.get(seq_label(n), [])) for n in sent)
    states = Counter(f"{r.state}/{r.outcome}" for r in runs_measured)
    by_state = ", ".join(f"{k} {v}" for k, v in sorted(states.items()))
    stamped = sum(1 for r in runs_measured if r.stamp_ns is not None)
    exactly_once = per_alert.get(1, 0) == len(sent) and stamped == len(sent)
    p99 = pct(latency, 99)
    met = (
        exactly_once
        and load.errors == 0
        and len(latency) == len(sent)
        and p99 < TARGET_P99_MS
        and args.rate >= TARGET_RATE
    )

    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])
    add("## Containment: webhook to action process start\n")
    add(f"Command: `{command}`\n")
    add(
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), Linux {info['kernel']}; Python "
        f"{info['python']}, SQLite {info['sqlite']} (`synchronous: {info['synchronous']}`), "
        f"state and stamps on {info['fs']}.\n"
    )
    add(f"Code measured: {info['code']}.\n")
    where = (
        f"responder pinned to core {SERVER_CORE} with `taskset` (its action processes too), "
        f"the load generator to core {LOAD_CORE}"
        if pinned
        else "nothing pinned (no taskset or one CPU)"
    )
    add(
        f"Setup: {where}. Open loop at {args.rate:g} alerts/s (one alert per webhook, each "
        f"with its own `seq` label, fingerprint and group key) for {args.seconds:g} s after "
        f"{len(out.warm.sent)} warm-up alerts. Action `{ACTION}`: "
        f"`exec` of `{DATE if args.probe == 'date' else TOUCH}` (probe `{args.probe}`). "
        "Guards opened so they never stop a run: `max_actions_per_window` and "
        "`max_targets_per_window` above the alerts sent, global `concurrency: 1000`; the "
        "action `cooldown: 0`, no `max_runs`, `concurrency: 1000`. No escalation policy, so "
        "no pages.\n"
    )
    verdict = "**met**" if met else "**missed**"
    unrun = len(sent) - len(latency)
    ran = (
        "every alert ran exactly once"
        if exactly_once
        else f"NOT every alert ran once: {unrun} without a finished run after the "
        f"{args.wait:g} s wait, left out of the percentiles, which therefore flatter"
    )
    add(
        f"Target: p99 of webhook sent -> action process started under {TARGET_P99_MS:g} ms at "
        f"{TARGET_RATE:g} alerts/s: {verdict} (p99 {p99:.2f} ms; {ran}).\n"
    )
    add("| ms | p50 | p90 | p99 | max |")
    add("| --- | ---: | ---: | ---: | ---: |")
    add(f"| **webhook sent -> action process started** | {summary(latency)} |")
    add(f"| webhook response (sent -> 200 read) | {summary(answered)} |")
    add(f"| sent -> alert stored with `now` (parse, before commit) | {summary(ingest)} |")
    add(
        f"| stored `now` -> run recorded as started (commit, wake, queue read, guards) | "
        f"{summary(pickup)} |"
    )
    add(f"| run recorded -> process stamp (record commit, spawn, exec) | {summary(spawn)} |")
    add("")
    add(f"Over time (slices of {SLICE_S:g} s by send time):\n")
    add("| from s | alerts | p50 | p90 | p99 | max |")
    add("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for index in sorted(slices):
        values = slices[index]
        add(f"| {index * SLICE_S:g} | {len(values)} | {summary(values)} |")
    add("")
    statuses = ", ".join(
        f"{'no answer' if code == 0 else f'HTTP {code}'} x{count}"
        for code, count in sorted(Counter(s.status for s in load.sent if s.status != 200).items())
    )
    add("Checks:\n")
    add(
        f"- alerts sent {len(sent)}, answered 200 {len(answered)}, errors {load.errors} "
        f"({statuses or 'none'}); "
        f"bench alerts stored {out.stored} (warm-up included: {len(out.warm.sent)})"
    )
    add(
        f"- runs of the measured alerts {len(runs_measured)} ({by_state}); "
        f"alerts with exactly one run {per_alert.get(1, 0)}, with none {per_alert.get(0, 0)}, "
        f"with more {sum(v for k, v in per_alert.items() if k > 1)}; runs with a stamp "
        f"{stamped}; all runs finished before the wait ended: {'yes' if out.finished else 'NO'}"
    )
    add(
        f"- generator: worst lag behind schedule {load.late_ms:.2f} ms, "
        f"{load.connections} connections, CPU {out.load_cpu:.0%} of core {LOAD_CORE}"
    )
    add(
        f"- responder CPU {out.server_cpu:.0%} of its core during the load ({out.elapsed:.1f} s, "
        "first send to last answer), action processes "
        f"{out.children_cpu:.0%}; SQLite commits: mean batch {out.commit_batch:.2f} jobs, "
        f"mean {out.commit_ms:.2f} ms"
    )
    add(
        f"- everything else on the machine (kernel threads, other processes): "
        f"{out.other_cpu:.0%} of a CPU during the load"
        + (" - NOT quiet: these figures are disturbed, run again" if out.other_cpu > 0.2 else "")
    )
    add("")
    add("Method notes:\n")
    add(
        "- Latency runs from `time.time_ns()` taken just before the webhook is written to the "
        "socket (so it includes the client's send and the HTTP round trip) to the action's "
        "own stamp."
    )
    if args.probe == "date":
        add(
            "- Stamp: `/usr/bin/date +%s%N` prints CLOCK_REALTIME (ns, vDSO) once it runs, "
            "after fork, exec and dynamic linking: the process has started by then, so the "
            "figure errs late, not early. Read from the run's audit record (stdout)."
        )
    else:
        add("- Stamp: `st_mtime_ns` of the file `touch` creates.")
    add(
        f"- File mtime on this machine ({info['fs']}): stored in ns, but taken from the coarse "
        f"kernel clock: distinct mtimes step by {out.mtime.tick_ms:.2f} ms (median) and read "
        f"{out.mtime.early_min_ms:.2f}-{out.mtime.early_max_ms:.2f} ms before the wall clock "
        "read just before the write. "
        + (
            "That is why the default probe is `date`, not `touch` + mtime."
            if args.probe == "date"
            else "So this probe's figures read low by up to that much."
        )
    )
    add(
        "- The breakdown rows use the daemon's clock (`alerts.first_received`, "
        "`action_runs.started_at`, microseconds), the same machine's wall clock as the "
        "generator's."
    )
    add(
        "- Each run is recorded (and committed) before its process starts; finishing it "
        "commits again. Every alert is a new incident; with no policy nothing is paged."
    )
    return "\n".join(lines) + "\n"


# -- main -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=TARGET_RATE, help="alerts per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured load, seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up, seconds")
    parser.add_argument("--probe", choices=["date", "touch"], default="date")
    parser.add_argument(
        "--synchronous",
        choices=["full", "normal"],
        help="override the shipped storage.synchronous (for diagnosis only)",
    )
    parser.add_argument(
        "--wait", type=float, default=120.0, help="longest wait for the runs to finish, s"
    )
    parser.add_argument("--quick", action="store_true", help="10 s of load, 1 s of warm-up")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS}")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup = 10.0, 1.0
    for tool in (DATE, TOUCH):
        if not os.access(tool, os.X_OK):
            raise SystemExit(f"{tool} is needed")

    info = machine()
    if args.synchronous is not None:
        info["synchronous"] = f"{args.synchronous}, overridden"
    work = Path(tempfile.mkdtemp(prefix="bench-containment-"))
    try:
        stamps = work / "stamps"
        stamps.mkdir()
        warm_n = int(args.rate * args.warmup)
        total = warm_n + int(args.rate * args.seconds)
        port = free_port()
        config = write_config(
            work, port, args.probe, stamps, max(10_000, 2 * total), args.synchronous
        )
        token = (work / "token").read_text().strip()
        mtime = mtime_check(stamps)
        run = secrets.token_hex(4)
        with responder(work, config, port) as daemon:
            if daemon.pinned:
                os.sched_setaffinity(0, {LOAD_CORE})
            print(f"# warm-up: {warm_n} alerts at {args.rate:g}/s", file=sys.stderr)
            warm = run_load(port, token, args.rate, args.warmup, 0, run)
            db = daemon.state / "responder.db"
            wait_for_runs(db, len(warm.sent), 30)
            before = metrics(port)
            server_before = cpu_seconds_with_children(daemon.process.pid)
            machine_before = busy_seconds()
            started = time.process_time()
            wall = time.monotonic()
            print(f"# load: {args.rate:g} alerts/s for {args.seconds:g} s", file=sys.stderr)
            load = run_load(port, token, args.rate, args.seconds, warm_n, run)
            # The load lasts until the last answer: longer than args.seconds when answers lag.
            elapsed = time.monotonic() - wall
            load_cpu = (time.process_time() - started) / elapsed
            server_after = cpu_seconds_with_children(daemon.process.pid)
            machine_busy = (busy_seconds() - machine_before) / elapsed
            finished = wait_for_runs(db, total, args.wait)
            after = metrics(port)
        runs, stored = read_runs(db, args.probe, stamps)
        batches = after.get("responder_store_commit_batch_size_count", 0.0) - before.get(
            "responder_store_commit_batch_size_count", 0.0
        )
        jobs = after.get("responder_store_commit_batch_size_sum", 0.0) - before.get(
            "responder_store_commit_batch_size_sum", 0.0
        )
        commit_s = after.get("responder_store_commit_duration_seconds_sum", 0.0) - before.get(
            "responder_store_commit_duration_seconds_sum", 0.0
        )
        outcome = Outcome(
            load=load,
            warm=warm,
            runs=runs,
            stored=stored,
            finished=finished,
            mtime=mtime,
            server_cpu=(server_after[0] - server_before[0]) / elapsed,
            children_cpu=(server_after[1] - server_before[1]) / elapsed,
            load_cpu=load_cpu,
            elapsed=elapsed,
            other_cpu=max(
                0.0,
                machine_busy
                - load_cpu
                - sum(server_after) / elapsed
                + sum(server_before) / elapsed,
            ),
            commit_batch=jobs / batches if batches else 0.0,
            commit_ms=commit_s / batches * 1000 if batches else 0.0,
        )
        text = report(outcome, info, args, daemon.pinned)
        print(text)
        if not args.no_write:
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(text, encoding="utf-8")
            print(f"(written to {RESULTS.relative_to(ROOT)})", file=sys.stderr)
    finally:
        if args.keep:
            print(f"(kept {work})", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Webhook ingest speed: a real ``responder serve`` against a bare aiohttp server, one core each.

Run by hand: ``.venv/bin/python bench/bench_ingest.py`` (about 15 minutes; ``--quick`` takes
about two). Linux only; needs ``taskset`` and ``wrk`` (``apt-get install wrk``).

What it does, in one run:

* writes a temporary config derived from the shipped ``config.yaml`` (same rule files, same
  SQLite storage and ``synchronous`` setting; a bearer token from a file; its own port), and
  starts ``responder serve`` pinned to core 0 with ``taskset -c 0``, a fresh state directory
  for every case;
* starts, also pinned to core 0, a bare aiohttp server whose handler only reads the body and
  answers 200: the ceiling of this stack (Python, asyncio, aiohttp) on this machine;
* drives both with ``wrk`` (one thread, pinned to core 1, a generated Lua script) posting
  Alertmanager v4 webhooks with a bearer token: bodies of 1 and of 10 alerts, either new
  alerts on every request ("distinct": the labels and fingerprint carry a counter) or the
  same alerts again ("repeated"); the two servers take turns, ``--rounds`` times each, and
  each one's median run counts, because this VM's speed drifts by 10-20% within minutes;
* measures latency at half of each case's maximum rate with an open-loop generator written
  below (asyncio, core 1, raw HTTP/1.1 keep-alive): requests leave on a fixed schedule whether
  or not earlier ones were answered, and latency counts from the scheduled send time, so a
  stalled server cannot hide its stall (no coordinated omission). The same schedule against
  the bare server is the control: it shows what the generator itself adds;
* checks afterwards, in each responder database, that at least as many alerts were stored as
  were acknowledged with 200 (durable before 2xx), and prints Markdown tables.

The machine must be otherwise idle. Before each measurement the benchmark waits until other
processes use less than ``--max-other`` of a core, and it discards and repeats a measurement
during which they used more (``--retries``); the worst accepted figure is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import re
import resource
import secrets
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import yaml
from benchlib import cpu_seconds, free_port, read_response, wait_ready
from benchlib import machine as benchlib_machine

ROOT = Path(__file__).resolve().parent.parent
WEBHOOK_PATH = "/api/v1/alertmanager"
SERVER_CORE = "0"
LOAD_CORE = "1"
STARTS_AT = "2026-11-22T07:06:22.284703Z"

# Targets (docs/performance.md).
TARGET_RATIO = 0.5  # responder req/s >= 50% of the bare ceiling, 1-alert bodies
TARGET_ALERTS_PER_S = 20_000.0  # 10-alert bodies
TARGET_HALF_RATE_P99_MS = 20.0


@dataclass(frozen=True)
class Case:
    alerts: int
    distinct: bool

    @property
    def name(self) -> str:
        kind = "distinct" if self.distinct else "repeated"
        noun = "alert" if self.alerts == 1 else "alerts"
        return f"{self.alerts} {noun}, {kind}"


CASES = [Case(1, True), Case(1, False), Case(10, True), Case(10, False)]


# -- bodies ---------------------------------------------------------------------------------

_SLOT = "\x00SLOT\x00"  # stands for one per-alert unique part until the template is rendered


def body_template(alerts: int) -> str:
    """An Alertmanager 0.25 webhook (v4) as a printf template: ``%s`` per unique part.

    Each alert takes two arguments: its instance tag and its fingerprint (16 hex digits).
    Literal ``%`` signs are escaped, so both Lua's ``string.format`` and Python's ``%`` work.
    """
    items = []
    for _ in range(alerts):
        items.append(
            {
                "status": "firing",
                "labels": {
                    "alertname": "BenchDiskFull",
                    "instance": f"host-{_SLOT}:9100",
                    "job": "node",
                    "severity": "critical",
                },
                "annotations": {
                    "runbook_url": "http://runbooks/disk",
                    "summary": "disk almost full",
                },
                "startsAt": STARTS_AT,
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://127.0.0.1:9090/graph?g0.expr=up",
                "fingerprint": _SLOT,
            }
        )
    document = {
        "receiver": "responder",
        "status": "firing",
        "alerts": items,
        "groupLabels": {"alertname": "BenchDiskFull"},
        "commonLabels": {"alertname": "BenchDiskFull", "job": "node", "severity": "critical"},
        "commonAnnotations": {"runbook_url": "http://runbooks/disk", "summary": "disk almost full"},
        "externalURL": "http://127.0.0.1:9093",
        "version": "4",
        "groupKey": '{}:{alertname="BenchDiskFull"}',
        "truncatedAlerts": 0,
    }
    text = json.dumps(document, separators=(",", ":")).replace("%", "%%")
    return text.replace(json.dumps(_SLOT)[1:-1], "%s")


def fingerprint(prefix: int, counter: int, index: int) -> str:
    return f"{prefix:06x}{counter:08x}{index:02x}"


def render(template: str, alerts: int, prefix: int, counter: int) -> str:
    args: list[str] = []
    for i in range(alerts):
        fp = fingerprint(prefix, counter, i)
        args += [fp, fp]
    return template % tuple(args)


def lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def wrk_script(case: Case, token: str, prefix: int) -> str:
    """wrk's Lua: fixed headers; a per-request body for distinct cases; results as JSON."""
    template = body_template(case.alerts)
    lines = [
        'wrk.method = "POST"',
        'wrk.headers["Content-Type"] = "application/json"',
        'wrk.headers["User-Agent"] = "Alertmanager/0.25.0"',
        f'wrk.headers["Authorization"] = {lua_string("Bearer " + token)}',
    ]
    if case.distinct:
        lines += [
            f"local template = {lua_string(template)}",
            f"local alerts = {case.alerts}",
            f"local prefix = {prefix}",
            "local counter = 0",
            "local args = {}",
            "request = function()",
            "  counter = counter + 1",
            "  for i = 0, alerts - 1 do",
            '    local fp = string.format("%06x%08x%02x", prefix, counter, i)',
            "    args[2 * i + 1] = fp",
            "    args[2 * i + 2] = fp",
            "  end",
            "  return wrk.format(nil, nil, nil, string.format(template, unpack(args)))",
            "end",
        ]
    else:
        lines.append(f"wrk.body = {lua_string(render(template, case.alerts, prefix, 0))}")
    lines += [
        "done = function(summary, latency, requests)",
        "  local e = summary.errors",
        '  io.write(string.format("BENCH-RESULT {\\"requests\\":%d,\\"duration_us\\":%d,'
        '\\"connect\\":%d,\\"read\\":%d,\\"write\\":%d,\\"status\\":%d,\\"timeout\\":%d,'
        '\\"p50_us\\":%d,\\"p99_us\\":%d,\\"max_us\\":%d}\\n",',
        "    summary.requests, summary.duration, e.connect, e.read, e.write, e.status,",
        "    e.timeout, latency:percentile(50), latency:percentile(99), latency.max))",
        "end",
    ]
    return "\n".join(lines) + "\n"


# -- processes ------------------------------------------------------------------------------


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Server:
    kind: str  # "responder" or "bare"
    port: int
    process: subprocess.Popen[bytes]
    state_dir: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{WEBHOOK_PATH}"


@contextlib.contextmanager
def bare_server(work: Path) -> Iterator[Server]:
    port = free_port()
    log = work / "bare.log"
    argv = [
        "taskset",
        "-c",
        SERVER_CORE,
        sys.executable,
        str(Path(__file__).resolve()),
        "--serve-bare",
        str(port),
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{port}/-/ready", process, log)
        yield Server("bare", port, process)
    finally:
        stop(process)


def responder_config(work: Path, port: int, token_file: Path) -> Path:
    """The shipped config.yaml with absolute rule paths, a token file and our port."""
    shipped = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    config: dict[str, Any] = dict(shipped)
    config["server"] = dict(config.get("server") or {}, listen=f"127.0.0.1:{port}")
    config["auth"] = {"bearer_token_file": str(token_file)}
    classification = dict(config.get("classification") or {})
    rule_files = classification.get("rule_files") or ["rules/*.yaml"]
    classification["rule_files"] = [str(ROOT / pattern) for pattern in rule_files]
    config["classification"] = classification
    path = work / f"config-{port}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


@contextlib.contextmanager
def responder_server(
    work: Path, token_file: Path, label: str, python: str = sys.executable
) -> Iterator[Server]:
    """``responder serve`` of the virtualenv whose interpreter is ``python``, started in
    ``/tmp`` so that it imports its own build, not one in the current directory."""
    port = free_port()
    config = responder_config(work, port, token_file)
    state = work / f"state-{label}"
    log = work / f"responder-{label}.log"
    argv = [
        "taskset",
        "-c",
        SERVER_CORE,
        str(Path(python).parent / "responder"),
        "serve",
        "-c",
        str(config),
        "--state-dir",
        str(state),
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd="/tmp")
    try:
        wait_ready(f"http://127.0.0.1:{port}/-/ready", process, log)
        yield Server("responder", port, process, state)
    finally:
        stop(process)


def serve_bare(port: int) -> int:
    """The ceiling: aiohttp with the same body limit, a handler that reads and answers 200."""
    from aiohttp import web

    async def receive(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"status": "ok"})

    async def ready(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post(WEBHOOK_PATH, receive)
    app.router.add_get("/-/ready", ready)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)
    return 0


# -- closed loop: wrk -----------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    server_cpu: float  # CPU seconds the server used per second of load (1.0: its core is full)
    load_cpu: float  # the same for wrk
    other_cpu: float  # the same for everything else on the machine (should be near 0)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


_prefixes = iter(range(1, 1 << 24))


def run_wrk(
    work: Path, server: Server, case: Case, token: str, seconds: float, connections: int
) -> Load:
    prefix = next(_prefixes)
    script = work / f"wrk-{prefix}.lua"
    script.write_text(wrk_script(case, token, prefix), encoding="utf-8")
    argv = [
        "taskset",
        "-c",
        LOAD_CORE,
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        server.url,
    ]
    busy_before = machine_busy()
    server_before = cpu_seconds(server.process.pid)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    server_used = cpu_seconds(server.process.pid) - server_before
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_used = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    other_used = machine_busy() - busy_before - server_used - load_used
    match = re.search(r"^BENCH-RESULT (\{.*\})$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or match is None:
        raise SystemExit(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    result = json.loads(match.group(1))
    errors = sum(result[k] for k in ("connect", "read", "write", "status", "timeout"))
    return Load(
        requests=result["requests"],
        seconds=result["duration_us"] / 1e6,
        errors=errors,
        p50_ms=result["p50_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        max_ms=result["max_us"] / 1000,
        server_cpu=server_used / (result["duration_us"] / 1e6),
        load_cpu=load_used / (result["duration_us"] / 1e6),
        other_cpu=max(0.0, other_used) / (result["duration_us"] / 1e6),
    )


def machine_busy() -> float:
    """CPU seconds all processes on the machine have used (user and system), from boot."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    user, nice, system = (int(v) for v in fields[1:4])
    return (user + nice + system) / os.sysconf("SC_CLK_TCK")


# -- open loop: fixed-rate generator --------------------------------------------------------


@dataclass
class OpenLoop:
    rate: float
    sent: int = 0
    errors: int = 0
    late_ms: float = 0.0  # how far behind its schedule the generator fell at worst
    latencies_ms: list[float] = field(default_factory=list)
    connections: int = 0
    cpu: float = 0.0  # the generator's CPU seconds per second (its core: 1.0)
    other_cpu: float = 0.0  # CPU used by other processes than server and generator, per second

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def exchange(self, request: bytes) -> int:
        self.writer.write(request)
        return await read_response(self.reader)


async def open_loop(
    port: int,
    rate: float,
    seconds: float,
    make_request: Callable[[int], bytes],
    max_connections: int = 512,
) -> OpenLoop:
    """Send ``rate`` requests per second on a fixed schedule for ``seconds``.

    A request waits for a free keep-alive connection or opens one (up to
    ``max_connections``); its latency runs from its scheduled time to the end of the answer.
    """
    result = OpenLoop(rate=rate)
    idle: asyncio.LifoQueue[_Conn] = asyncio.LifoQueue()
    clock = time.perf_counter

    async def connection() -> _Conn:
        if not idle.empty():
            return idle.get_nowait()
        if result.connections < max_connections:
            result.connections += 1
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            return _Conn(reader, writer)
        return await idle.get()

    async def one(number: int, scheduled: float) -> None:
        request = make_request(number)
        conn = await connection()
        try:
            status = await conn.exchange(request)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            result.errors += 1
            result.connections -= 1
            conn.writer.close()
            return
        result.latencies_ms.append((clock() - scheduled) * 1000)
        if status != 200:
            result.errors += 1
        idle.put_nowait(conn)

    total = int(rate * seconds)
    tasks: set[asyncio.Task[None]] = set()
    start = clock() + 0.05
    for number in range(total):
        scheduled = start + number / rate
        delay = scheduled - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            result.late_ms = max(result.late_ms, -delay * 1000)
        task = asyncio.create_task(one(number, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        result.sent += 1
    while tasks:
        await asyncio.wait(set(tasks))
    while not idle.empty():
        idle.get_nowait().writer.close()
    return result


def http_request(port: int, token: str, body: str) -> bytes:
    data = body.encode()
    head = (
        f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"User-Agent: Alertmanager/0.25.0\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def run_open_loop(server: Server, case: Case, token: str, rate: float, seconds: float) -> OpenLoop:
    prefix = next(_prefixes)
    template = body_template(case.alerts)
    fixed = http_request(server.port, token, render(template, case.alerts, prefix, 0))

    def make(number: int) -> bytes:
        if not case.distinct:
            return fixed
        return http_request(server.port, token, render(template, case.alerts, prefix, number))

    # The generator's own pauses would show as server latency: no garbage collection runs.
    gc.collect()
    gc.disable()
    busy_before = machine_busy()
    server_before = cpu_seconds(server.process.pid)
    started = time.process_time()
    try:
        result = asyncio.run(open_loop(server.port, rate, seconds, make))
    finally:
        gc.enable()
    own = time.process_time() - started
    server_used = cpu_seconds(server.process.pid) - server_before
    result.cpu = own / seconds
    result.other_cpu = max(0.0, machine_busy() - busy_before - server_used - own) / seconds
    return result


# -- checks ---------------------------------------------------------------------------------


def stored_alerts(state_dir: Path) -> tuple[int, int]:
    """(rows, sum of receive counts) in a stopped responder's database."""
    db = state_dir / "responder.db"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows, received = conn.execute(
            "SELECT count(*), coalesce(sum(receive_count), 0) FROM alerts"
        ).fetchone()
    return int(rows), int(received)


def commit_stats(port: int) -> tuple[float, float]:
    """(mean group-commit batch size, mean commit ms) from the daemon's /metrics."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as answer:
        text = answer.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("responder_store_commit_"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    batches = values.get("responder_store_commit_batch_size_count", 0.0)
    if not batches:
        return 0.0, 0.0
    return (
        values["responder_store_commit_batch_size_sum"] / batches,
        values["responder_store_commit_duration_seconds_sum"] / batches * 1000,
    )


# -- the run --------------------------------------------------------------------------------


def median_run(loads: list[Load]) -> Load:
    """The run with the median rate (the lower middle one for an even count)."""
    return sorted(loads, key=lambda load: load.rate)[(len(loads) - 1) // 2]


@dataclass
class CaseResult:
    case: Case
    responder: Load  # the median run
    bare: Load
    responder_runs: list[Load]
    bare_runs: list[Load]
    half: list[OpenLoop] = field(default_factory=list)  # one per repetition
    half_bare: list[OpenLoop] = field(default_factory=list)
    acked: int = 0  # alerts answered 200 (warm-up included)
    stored: int = 0  # receive counts in the database after the run
    batch: float = 0.0
    commit_ms: float = 0.0

    def other_cpu(self) -> float:
        """The most CPU anything else on the machine took during one of the measurements."""
        runs = [x.other_cpu for x in self.responder_runs + self.bare_runs]
        runs += [x.other_cpu for x in self.half + self.half_bare]
        return max(runs)


def machine() -> dict[str, str]:
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    wrk = (wrk_version.stdout + wrk_version.stderr).split("\n", 1)[0].strip()
    return {**benchlib_machine(), "wrk": wrk}


@dataclass(frozen=True)
class Settings:
    seconds: float
    warmup: float
    connections: int
    repeat: int
    rounds: int
    max_other: float  # other processes' CPU (cores) above which a measurement is taken again
    retries: int
    quiet_timeout: float


class _Measured(Protocol):
    @property
    def other_cpu(self) -> float: ...


M = TypeVar("M", bound=_Measured)


def others_now(pids: list[int], seconds: float) -> float:
    """CPU that processes other than ours and the servers take, sampled over ``seconds``."""
    busy, ours, own = machine_busy(), sum(cpu_seconds(p) for p in pids), time.process_time()
    time.sleep(seconds)
    used = machine_busy() - busy
    used -= sum(cpu_seconds(p) for p in pids) - ours + time.process_time() - own
    return max(0.0, used) / seconds


def measured(what: str, run: Callable[[], M], pids: list[int], settings: Settings) -> M:
    """Run a measurement when the machine is quiet; again if something else ran meanwhile."""
    for attempt in range(settings.retries + 1):
        deadline = time.monotonic() + settings.quiet_timeout
        while (other := others_now(pids, 2.0)) > settings.max_other:
            if time.monotonic() > deadline:
                print(f"  machine still busy ({other:.0%} CPU); measuring anyway", file=sys.stderr)
                break
            print(f"  waiting: other processes use {other:.0%} CPU", file=sys.stderr)
        result = run()
        if result.other_cpu <= settings.max_other or attempt == settings.retries:
            return result
        print(
            f"  {what}: other processes took {result.other_cpu:.0%} CPU; measuring again",
            file=sys.stderr,
        )
    raise AssertionError("unreachable")


def run_case(work: Path, token: str, case: Case, settings: Settings) -> CaseResult:
    label = f"{case.alerts}-{'distinct' if case.distinct else 'repeated'}"
    seconds, connections = settings.seconds, settings.connections
    print(f"# {case.name}", file=sys.stderr)
    with bare_server(work) as bare:
        pids = [bare.process.pid]
        run_wrk(work, bare, case, token, settings.warmup, connections)
        with responder_server(work, Path(work / "token"), label) as responder:
            pids.append(responder.process.pid)
            acked = 0  # requests answered 200, every attempt included

            def closed() -> Load:
                nonlocal acked
                load = run_wrk(work, responder, case, token, seconds, connections)
                acked += load.requests - load.errors
                return load

            def open_loop() -> OpenLoop:
                nonlocal acked
                run = run_open_loop(responder, case, token, half_rate, seconds)
                acked += run.sent - run.errors
                return run

            warm = run_wrk(work, responder, case, token, settings.warmup, connections)
            acked += warm.requests - warm.errors
            # Bare and responder alternate, so that both meet the same spells of the VM's
            # noise (rates drift by 10-20% within minutes); the median run of each counts.
            bares: list[Load] = []
            loads: list[Load] = []
            for _ in range(settings.rounds):
                bares.append(
                    measured(
                        "bare",
                        lambda: run_wrk(work, bare, case, token, seconds, connections),
                        pids,
                        settings,
                    )
                )
                loads.append(measured("responder", closed, pids, settings))
                print(
                    f"  max rate: responder {loads[-1].rate:9.0f} req/s, "
                    f"bare {bares[-1].rate:9.0f} req/s",
                    file=sys.stderr,
                )
            load, bare_load = median_run(loads), median_run(bares)
            result = CaseResult(case, load, bare_load, loads, bares)
            half_rate = load.rate / 2
            # Responder and control alternate, so that both meet the same spells of noise.
            for _ in range(settings.repeat):
                half = measured("open loop", open_loop, pids, settings)
                result.half.append(half)
                control = measured(
                    "open loop, bare",
                    lambda: run_open_loop(bare, case, token, half_rate, seconds),
                    pids,
                    settings,
                )
                result.half_bare.append(control)
                print(
                    f"  half rate {half_rate:9.0f} req/s: p99 responder "
                    f"{half.percentile(99):.2f} ms, bare {control.percentile(99):.2f} ms",
                    file=sys.stderr,
                )
            result.batch, result.commit_ms = commit_stats(responder.port)
            result.acked = acked * case.alerts
            state = responder.state_dir
    assert state is not None
    _, result.stored = stored_alerts(state)
    return result


def round_ratios(result: CaseResult) -> str:
    """Each round's responder/bare ratio, in brackets, when there was more than one."""
    pairs = zip(result.responder_runs, result.bare_runs, strict=True)
    ratios = [f"{load.rate / bare.rate:.0%}" for load, bare in pairs]
    return f" ({', '.join(ratios)})" if len(ratios) > 1 else ""


def ms(value: float) -> str:
    return f"{value:.2f}"


def p99s(runs: list[OpenLoop]) -> tuple[float, str]:
    """The median over repetitions of each run's p99, and the range as text."""
    values = sorted(run.percentile(99) for run in runs)
    median = statistics.median(values)
    spread = f" ({values[0]:.1f}-{values[-1]:.1f})" if len(values) > 1 else ""
    return median, f"{median:.2f}{spread}"


def report(results: list[CaseResult], info: dict[str, str], args: argparse.Namespace) -> bool:
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])
    out = print
    out("## Webhook ingest\n")
    out(f"Command: `{command}`\n")
    out(
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), Linux {info['kernel']}; "
        f"Python {info['python']}, aiohttp {info['aiohttp']}, SQLite {info['sqlite']} "
        f"(`synchronous: {info['synchronous']}`), {info['wrk']}.\n"
    )
    out(
        f"Servers pinned to core {SERVER_CORE}, load generators to core {LOAD_CORE}. "
        f"Closed loop: wrk, 1 thread, {args.connections} connections, "
        f"{args.rounds} run(s) of {args.duration:g} s per server after {args.warmup:g} s of "
        "warm-up, alternating; the table shows each server's median run, the ratio is "
        "theirs, the ratios of the rounds are in brackets. Open loop: "
        f"{args.repeat} run(s) of {args.duration:g} s per server, alternating; p99 is the "
        "median of the runs' p99 (range in brackets).\n"
    )
    out("### Maximum rate (closed loop, wrk)\n")
    out(
        "| body | responder req/s | responder alerts/s | p50 ms | p99 ms "
        "| bare req/s | bare p50 ms | bare p99 ms | responder/bare |"
    )
    out("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        out(
            f"| {r.case.name} | {r.responder.rate:,.0f} | {r.responder.rate * r.case.alerts:,.0f} "
            f"| {ms(r.responder.p50_ms)} | {ms(r.responder.p99_ms)} | {r.bare.rate:,.0f} "
            f"| {ms(r.bare.p50_ms)} | {ms(r.bare.p99_ms)} "
            f"| {r.responder.rate / r.bare.rate:.0%}{round_ratios(r)} |"
        )
    out("")
    # --repeat 0 measures the maximum rate only: no half-rate table, no p99 verdicts.
    half_measured = [r for r in results if r.half and r.half_bare]
    if half_measured:
        out("### Latency at half the maximum rate (open loop, fixed schedule)\n")
        out(
            "| body | rate req/s | responder p50 ms | p99 ms | max ms | errors "
            "| bare (control) p50 ms | p99 ms | generator CPU | generator max lag ms |"
        )
        out("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in half_measured:
        h, b = r.half, r.half_bare
        out(
            f"| {r.case.name} | {h[0].rate:,.0f} "
            f"| {ms(statistics.median(x.percentile(50) for x in h))} | {p99s(h)[1]} "
            f"| {ms(max(max(x.latencies_ms, default=0.0) for x in h))} "
            f"| {sum(x.errors for x in h)} "
            f"| {ms(statistics.median(x.percentile(50) for x in b))} | {p99s(b)[1]} "
            f"| {max(x.cpu for x in h):.0%} | {ms(max(x.late_ms for x in h + b))} |"
        )
    out("")
    out("### Checks\n")
    out(
        "| body | errors (wrk) | alerts answered 200 | alerts stored | mean commit batch "
        "| mean commit ms | server CPU responder / bare | wrk CPU responder / bare "
        "| other processes' CPU, worst |"
    )
    out("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    durable = True
    for r in results:
        durable = durable and r.stored >= r.acked
        out(
            f"| {r.case.name} | {r.responder.errors} / {r.bare.errors} | {r.acked:,} "
            f"| {r.stored:,} | {r.batch:.1f} | {r.commit_ms:.2f} "
            f"| {r.responder.server_cpu:.0%} / {r.bare.server_cpu:.0%} "
            f"| {r.responder.load_cpu:.0%} / {r.bare.load_cpu:.0%} "
            f"| {r.other_cpu():.0%} |"
        )
    out("")
    by = {(r.case.alerts, r.case.distinct): r for r in results}
    verdicts: list[tuple[str, str, bool]] = []
    for distinct in (True, False):
        one = by.get((1, distinct))
        if one is not None:
            ratio = one.responder.rate / one.bare.rate
            verdicts.append(
                (
                    f"1-alert bodies ({one.case.name}): >= 50% of the bare ceiling",
                    f"{ratio:.0%}",
                    ratio >= TARGET_RATIO,
                )
            )
    for distinct in (True, False):
        ten = by.get((10, distinct))
        if ten is not None:
            rate = ten.responder.rate * ten.case.alerts
            verdicts.append(
                (
                    f"10-alert bodies ({ten.case.name}): >= 20,000 alerts/s",
                    f"{rate:,.0f}",
                    rate >= TARGET_ALERTS_PER_S,
                )
            )
    for r in half_measured:
        p99 = p99s(r.half)[0]
        verdicts.append(
            (
                f"p99 < 20 ms at half the maximum rate ({r.case.name})",
                f"{p99:.2f} ms",
                p99 < TARGET_HALF_RATE_P99_MS and not any(x.errors for x in r.half),
            )
        )
    verdicts.append(("stored >= answered 200 in every case (durable before 2xx)", "", durable))
    out("### Targets\n")
    out("| target | measured | met |")
    out("| --- | ---: | --- |")
    for name, value, ok in verdicts:
        out(f"| {name} | {value} | {'yes' if ok else '**no**'} |")
    return all(ok for _, _, ok in verdicts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per server")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument(
        "--repeat",
        type=int,
        help="open-loop runs per case; the median of their p99s counts (default 3, quick 1)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="closed-loop runs per server and case, alternating; the median run counts "
        "(default 3, quick 1)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="3 s per measurement, 1 s warm-up, 1 round, 1 open-loop run",
    )
    parser.add_argument(
        "--case",
        action="append",
        choices=["1-distinct", "1-repeated", "10-distinct", "10-repeated"],
        help="run only these cases (default: all four)",
    )
    parser.add_argument(
        "--max-other",
        type=float,
        default=0.10,
        metavar="CORES",
        help="CPU other processes may use during a measurement before it is taken again "
        "(default 0.10 of a core)",
    )
    parser.add_argument("--retries", type=int, default=3, help="attempts after a noisy one")
    parser.add_argument(
        "--quiet-timeout",
        type=float,
        default=600.0,
        help="seconds to wait for a quiet machine before each measurement",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_bare is not None:
        return serve_bare(args.serve_bare)
    if args.quick:
        args.duration, args.warmup = 3.0, 1.0
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    for tool in ("taskset", "wrk"):
        if shutil.which(tool) is None:
            print(
                f"bench_ingest: {tool} not found (apt-get install wrk util-linux)", file=sys.stderr
            )
            return 2
    if len(os.sched_getaffinity(0)) < 2:
        print("bench_ingest: needs two CPUs (server on core 0, load on core 1)", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {int(LOAD_CORE)})  # this process is the open-loop generator
    cases = CASES
    if args.case:
        cases = [
            c
            for c in CASES
            if f"{c.alerts}-{'distinct' if c.distinct else 'repeated'}" in args.case
        ]
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        token = secrets.token_urlsafe(32)
        token_file = work / "token"
        token_file.write_text(token + "\n", encoding="utf-8")
        token_file.chmod(0o600)
        settings = Settings(
            seconds=args.duration,
            warmup=args.warmup,
            connections=args.connections,
            repeat=args.repeat,
            rounds=args.rounds,
            max_other=args.max_other,
            retries=args.retries,
            quiet_timeout=args.quiet_timeout,
        )
        results = [run_case(work, token, case, settings) for case in cases]
        report(results, info, args)
    finally:
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

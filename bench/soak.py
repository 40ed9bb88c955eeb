"""Soak test: a real ``responder serve`` run for tens of minutes under a realistic mixed
stream, sampled every 30 s for what a daemon that runs for months must not do (grow, pile
up tasks or file descriptors, keep a WAL that never shrinks, log without end, page twice,
ignore an acknowledgement).

Run by hand, not by the test suite (about 25 minutes with the defaults)::

    .venv/bin/python bench/soak.py                     # 22 min of traffic, then the report
    .venv/bin/python bench/soak.py --duration 5m       # a shorter trial, same schedule scaled
    .venv/bin/python bench/soak.py --dir /tmp/soak-1   # keep the state, log and samples there

What it starts, all on loopback (free ports unless given):

* in this process, the Twilio API stand-in (``responder.testing.FakeTwilio``) and an SMTP
  server (``SmtpTestServer``), as ``examples/loopback_peers.py`` does;
* ``responder serve`` on a config written into ``--dir`` (paging to those peers, short
  escalation delays, status updates, rate limits, a budget, an exec containment action, a
  heartbeat with a 1-minute timeout). It runs through this script's ``daemon`` sub-command:
  ``responder.entry.main`` in a process whose only additions are (1) a task that writes,
  every 10 s, the asyncio tasks by name, the objects the garbage collector tracks and the
  40 most common of their types to ``tasks.jsonl`` (nothing outside the process can count
  them; ``--collect`` runs a full collection first, ``--tracemalloc WARMUP`` adds the
  allocation sites grown since WARMUP), and (2) shorter periods than the config allows, so
  that the periodic jobs run many times in minutes: retention looks every
  ``--retention-every`` (6 h in the code) and keeps ``--retention`` (at least 1 d in
  config), alerts go stale after ``--stale-after`` (at least 5 m in config).

The stream (times scale with ``--duration``): new alerts every ``--new-every`` seconds on
average, grouped by alertname and re-sent every ``--repeat`` seconds as Alertmanager does;
resolves after 1 to 5 minutes; flapping alerts that fire again after their resolve (the
incident reopens); alerts that stop arriving without a resolve (stale); a burst of 40 new
alerts in one webhook; two heartbeats every 10 s, one of which falls silent for a while
(HeartbeatMissing pages, then resolves); acknowledgements by API, by SMS reply (in process,
and a few through ``examples/loopback_peers.py --reply``), by voice keypress and ``ACK
ALL``; snoozes, unacknowledges, resolves by hand; Twilio status callbacks (delivered,
undelivered, none: the status lookups find them); a reload every ``--reload-every`` seconds
(SIGHUP, one by ``POST /-/reload``, one of a broken file that must be refused and then
mended); a window in which Twilio answers 503 and one in which the SMTP server is down; a
wrong token and a malformed body now and then.

Every ``--sample-every`` seconds it records (``samples.jsonl``) the daemon's RSS (and how
much of it is the main heap and other anonymous memory), open file descriptors, threads,
asyncio tasks, CPU, the database, WAL and shared-memory file sizes, the log's size and every
series of ``/metrics``. At the end it stops the daemon with SIGTERM (it must exit 0) and
reports (``report.json`` and the printed summary): each figure at start and end, its
trend over the second half, and for memory the trend between reloads (a reload leaves the
old config's objects, cyclic garbage, to the next full collection: RSS steps up after
reloads and levels off after some tens of them; traffic must not move it), the log's
levels, tracebacks and most repeated lines, pages by channel and outcome, sends at the
peers that no page row ever named (a page sent twice), escalation pages sent while an
acknowledgement or snooze was in force (an acknowledgement not honoured), and the answers
people got. Exit status 1 when one of those checks failed (a run shorter than about 15
minutes is still warming up: its memory and WAL verdicts mean nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import itertools
import json
import math
import os
import random
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from benchlib import free_port

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT_SID = "AC" + "0" * 32
FROM_NUMBER = "+15550000000"
PHONES = {"alice": "+15551230001", "bob": "+15551230002", "carol": "+15551230003"}
WEBHOOK = "/api/v1/alertmanager"
INBOUND_SMS = "/api/v1/twilio/sms"
# Log lines expected from the scenario itself (outages, the broken reload, the wrong
# token): counted, not reported as faults.
EXPECTED_ERRORS = (
    "reload failed; the old config stays in force",
    "channel failing; its pages are retried",
    "status lookups at Twilio failing; trying again",
    "page failed and nobody is left to fail over to",
    "heartbeat missing",  # the silent heartbeat's window
)
# A page's failure the scenario causes: Twilio's 503s (retries run out), the SMTP server
# down, an SMS the callbacks call undelivered, a call nobody answered.
EXPECTED_PAGE_FAILURES = re.compile(r"503|undelivered|30003|no-answer|refused|connect", re.I)
# The counters the report quotes at the end (the database forgets what retention deletes).
COUNTED = (
    "responder_pages_total",
    "responder_pages_bundled_total",
    "responder_escalation_steps_total",
    "responder_incident_actions_total",
    "responder_alerts_ingested_total",
    "responder_alerts_stale_total",
    "responder_webhook_requests_total",
    "responder_status_lookups_total",
    "responder_actions_total",
)
METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")
# A text log line: time, level, then the quoted event.
LOG_LINE = re.compile(r'^\S+ (debug|info|warning|error|critical) "((?:[^"\\]|\\.)*)"')


def parse_duration(text: str) -> float:
    """Seconds of ``90``, ``90s``, ``5m`` or ``1h``."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"expected a duration such as 90s, 5m or 1h: {text!r}")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]


def iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


# -- the daemon sub-command: responder serve, with a task census and shorter periods ---------


def daemon_main(argv: list[str]) -> int:
    """``soak.py daemon [options] -- serve -c CONFIG ...``: ``responder`` as ``python -m
    responder`` runs it, plus the census task and the shortened periods."""
    parser = argparse.ArgumentParser(prog="soak.py daemon")
    parser.add_argument("--tasks-file", type=Path, required=True)
    parser.add_argument("--tasks-every", type=parse_duration, default=10.0)
    parser.add_argument("--tracemalloc", type=parse_duration, metavar="WARMUP")
    parser.add_argument("--collect", action="store_true", help="a full collection first")
    parser.add_argument("--retention", type=parse_duration)
    parser.add_argument("--retention-every", type=parse_duration)
    parser.add_argument("--stale-after", type=parse_duration)
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest

    from responder import entry

    signal.signal(signal.SIGHUP, entry._remember)  # as entry.main, before the slow imports
    import dataclasses

    from aiohttp import web

    import responder.app
    import responder.config
    import responder.runtime

    if args.retention_every is not None:
        responder.app.RETENTION_EVERY = timedelta(seconds=args.retention_every)
    parse_config = responder.config.parse_config

    def shortened(*a: Any, **kw: Any) -> Any:
        config = parse_config(*a, **kw)
        if args.retention is not None:
            storage = dataclasses.replace(
                config.storage, retention=timedelta(seconds=args.retention)
            )
            config = dataclasses.replace(config, storage=storage)
        if args.stale_after is not None:
            alerts = dataclasses.replace(
                config.alerts, stale_after=timedelta(seconds=args.stale_after)
            )
            config = dataclasses.replace(config, alerts=alerts)
        return config

    # load_snapshot (at start and at every reload) calls it by this module's name.
    setattr(responder.runtime, "parse_config", shortened)  # noqa: B010
    build_app = responder.app.build_app

    def build_with_census(*a: Any, **kw: Any) -> web.Application:
        app = build_app(*a, **kw)

        async def census(_app: web.Application) -> None:
            asyncio.get_running_loop().create_task(
                _census(args.tasks_file, args.tasks_every, args.tracemalloc, args.collect),
                name="soak-census",
            )

        app.on_startup.append(census)
        return app

    responder.app.build_app = build_with_census
    sys.argv = ["responder", *rest]
    from responder.cli import main

    return main(rest)


def _task_kind(task: asyncio.Task[Any]) -> str:
    name = task.get_name()
    if not name.startswith("Task-"):
        return name
    coro = task.get_coro()
    return str(getattr(coro, "__qualname__", type(coro).__name__))


async def _census(path: Path, every: float, tracemalloc_after: float | None, collect: bool) -> None:
    """One JSON line every ``every`` seconds: asyncio tasks (this one left out) by kind, and
    the objects the garbage collector tracks. With ``tracemalloc_after``, also the sites
    whose allocations still alive grew most since that many seconds after the start."""
    import tracemalloc

    me = asyncio.current_task()
    started = time.monotonic()
    baseline: tracemalloc.Snapshot | None = None
    traced_at = 0.0  # a snapshot holds the loop up for a while: at most one in 2 minutes
    if tracemalloc_after is not None:
        tracemalloc.start(8)
    with path.open("a", encoding="utf-8") as out:
        while True:
            if collect:  # what is counted then is referenced, not garbage awaiting a collection
                gc.collect()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            kinds = Counter(_task_kind(t) for t in tasks)
            line: dict[str, Any] = {
                "t": time.time(),
                "tasks": len(tasks),
                "by_kind": dict(kinds.most_common()),
                "gc_objects": len(gc.get_objects()),
                "gc_frozen": gc.get_freeze_count(),
                # What the collector tracks, by type: a leak of Python objects shows here.
                "types": dict(Counter(type(o).__name__ for o in gc.get_objects()).most_common(40)),
            }
            if (
                tracemalloc_after is not None
                and time.monotonic() - started >= tracemalloc_after
                and time.monotonic() - traced_at >= 120
            ):
                traced_at = time.monotonic()
                snapshot = tracemalloc.take_snapshot().filter_traces(
                    [tracemalloc.Filter(False, tracemalloc.__file__)]
                )
                if baseline is None:
                    baseline = snapshot
                line["traced_bytes"] = tracemalloc.get_traced_memory()[0]
                line["grown"] = [
                    {"size_diff": d.size_diff, "count_diff": d.count_diff,
                     "where": [f"{f.filename}:{f.lineno}" for f in d.traceback][:8]}
                    for d in snapshot.compare_to(baseline, "traceback")[:12]
                ]  # fmt: skip
            out.write(json.dumps(line) + "\n")
            out.flush()
            await asyncio.sleep(every)


# -- the config the daemon runs on ------------------------------------------------------------

SOAK_RULES = """\
# Rules of the soak test, tried before the shipped ones.
rules:
  - name: soak-watchdog
    matchers: ['alertname="SoakWatchdog"']
    heartbeat: true
    heartbeat_timeout: 1m
    severity: P3
    category: infrastructure
  - name: soak-infra
    matchers: ['alertname="SoakInfraDown"']
    severity: P1
    category: infrastructure
    policy: infra
    group_by: [alertname, cluster]
  - name: soak-disk
    matchers: ['alertname="SoakDiskFull"']
    severity: P2
    category: availability
    actions: [soak-clean]
"""


def config_text(
    *, port: int, twilio_port: int, smtp_port: int, variant: str, broken: bool = False
) -> str:
    """The daemon's config; ``variant`` "a" or "b" differ in escalation delays and limits,
    so that every reload re-arms the open incidents."""
    second = "1m" if variant == "a" else "90s"
    infra_second = "2m" if variant == "a" else "150s"
    email_limit = "[6/1m, 40/15m]" if variant == "a" else "[8/1m, 40/15m]"
    bad = "    surprise: true\n" if broken else ""
    return f"""\
# Written by bench/soak.py; rewritten at each reload (variant {variant}).
state_dir: state
server:
  listen: 127.0.0.1:{port}
  public_url: http://127.0.0.1:{port}
auth:
  bearer_token_file: webhook-token
storage:
  url: sqlite:responder.db
  synchronous: full
  retention: 1d           # the soak's daemon sub-command shortens it (--retention)
alerts:
  stale_after: 5m         # and this (--stale-after)
  stale_check_every: 15s
logging:
  level: info
  format: text
classification:
  rule_files: [soak-rules.yaml, {ROOT}/rules/*.yaml]
channels:
  twilio:
    account_sid: {ACCOUNT_SID}
    auth_token_file: twilio-token
    from: "{FROM_NUMBER}"
    api_base_url: http://127.0.0.1:{twilio_port}
    timeout: 5s
  smtp:
    host: 127.0.0.1
    port: {smtp_port}
    mode: none
    from: "Responder <responder@example.com>"
    timeout: 10s
contacts:
  alice: {{sms: "{PHONES["alice"]}", email: alice@example.com, backup: bob}}
  bob:
    sms: "{PHONES["bob"]}"
    voice: "{PHONES["bob"]}"
    email: bob@example.com
    notify:
      - {{channel: sms, after: 0m}}
      - {{channel: email, after: 0m}}
      - {{channel: voice, after: 1m}}
  carol: {{sms: "{PHONES["carol"]}", email: carol@example.com, backup: alice}}
  manager: {{email: manager@example.com}}
escalation_policies:
  standard:
    levels:
      - targets: [alice]
      - after: {second}
        targets: [bob]
      - after: 3m
        clock: duration
        targets: [manager]
{bad}    status_updates: {{every: 2m, to: [manager]}}
  infra:
    levels:
      - targets: [carol]
      - after: {infra_second}
        targets: [alice, bob]
incidents:
  default_policy: standard
  reopen_within: 10m
delivery:
  max_attempts: 4
  retry_for: 8m
  rate_limits:
    sms: [4/1m, 40/15m]
    voice: [2/1m]
    email: {email_limit}
  budget:
    sms_voice_per_hour: 400
    notify: [admins@example.com]
actions:
  soak-clean:
    kind: exec
    params:
      host: {{from: label, key: instance, type: hostname, extract: "([^:]+):[0-9]+"}}
    argv: [/bin/echo, cleaned, "{{host}}"]
    timeout: 10s
    cooldown: 0s
    max_runs: 1000
    window: 1h
"""


# -- the simulated Alertmanager ---------------------------------------------------------------

ALERT_KINDS = (
    # (alertname, extra labels), as Prometheus setups name them; the rules classify each.
    ("InstanceDown", {"job": "node", "severity": "critical"}),
    ("ServiceDown", {"tier": "critical"}),
    ("HighErrorRate", {"severity": "warning", "service": "checkout"}),
    ("HighErrorRate", {"severity": "critical", "service": "search"}),
    ("NodeFilesystemAlmostOutOfSpace", {"severity": "warning", "mountpoint": "/var"}),
    ("TargetDown", {"job": "kubelet", "severity": "warning"}),
    ("SoakInfraDown", {"cluster": "eu-1"}),
    ("SoakInfraDown", {"cluster": "us-2"}),
    ("SoakDiskFull", {"severity": "warning"}),
    ("SoakCustomThing", {"severity": "info"}),
)


@dataclass(slots=True)
class SimAlert:
    labels: dict[str, str]
    starts_at: datetime
    kind: str  # normal, flappy, abandoned
    ends_in: float  # seconds of firing from its start (or re-fire)
    born: float  # time.monotonic() when it (last) started firing
    firing: bool = True
    ends_at: datetime | None = None
    resolved_sends: int = 0  # resolved copies still to send
    flaps_left: int = 0
    refire_at: float | None = None
    gone: bool = False  # no longer sent (abandoned, or done)

    @property
    def fingerprint(self) -> str:
        text = ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def document(self) -> dict[str, Any]:
        return {
            "status": "firing" if self.firing else "resolved",
            "labels": self.labels,
            "annotations": {"summary": f"{self.labels['alertname']} on {self.labels['instance']}"},
            "startsAt": iso(self.starts_at),
            "endsAt": iso(self.ends_at) if self.ends_at else "0001-01-01T00:00:00Z",
            "generatorURL": "http://127.0.0.1:9090/graph?g0.expr=up",
            "fingerprint": self.fingerprint,
        }


@dataclass(slots=True)
class Group:
    name: str
    alerts: list[SimAlert] = field(default_factory=list)
    next_send: float = 0.0


@dataclass(slots=True)
class Counts:
    webhooks: Counter[int] = field(default_factory=Counter)  # by HTTP status
    webhook_seconds: list[float] = field(default_factory=list)  # each answered one's time
    alerts_new: int = 0
    resolves: int = 0
    refires: int = 0
    abandoned: int = 0
    heartbeat_posts: int = 0
    bad_requests: Counter[str] = field(default_factory=Counter)
    acks: list[dict[str, Any]] = field(default_factory=list)  # every answer-type action
    actions: Counter[str] = field(default_factory=Counter)
    callbacks: Counter[str] = field(default_factory=Counter)
    keypresses: int = 0
    reloads: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # the driver's own trouble


class Soak:
    """The scenario: peers, the daemon, the stream, the sampler and the checks."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dir: Path = args.dir
        self.port: int = args.port or free_port()
        self.twilio_port: int = args.twilio_port or free_port()
        self.smtp_port: int = args.smtp_port or free_port()
        self.duration: float = args.duration
        self.rng = random.Random(args.seed)  # a scenario, not security
        self.token = secrets.token_hex(16)
        self.twilio_token = secrets.token_hex(16)
        self.counts = Counts()
        self.groups: dict[str, Group] = {}
        self.instance = 0
        self.started = 0.0
        self.process: subprocess.Popen[bytes] | None = None
        self.session: aiohttp.ClientSession | None = None
        self.twilio: Any = None
        self.smtp: Any = None
        self.mail: list[Any] = []  # every message every SMTP server instance took
        self.samples: list[dict[str, Any]] = []
        self.variant = "a"
        self.reload_count = 0
        self.reload_times: list[float] = []  # elapsed seconds when each reload was asked
        self.heartbeat_starts = datetime.now(UTC) - timedelta(hours=1)
        self.decided: dict[tuple[int, str], str] = {}  # (incident, startedAt) -> action
        self.seen_triggered: dict[int, tuple[str, float]] = {}  # id -> (startedAt, since)
        self.seen_sends = 0
        self.windows: dict[str, tuple[float, float]] = {}
        self.ledger = Ledger(self.dir / "state" / "responder.db")

    # -- helpers -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def at(self, fraction: float) -> float:
        """Seconds since the start at ``fraction`` of the duration."""
        return self.duration * fraction

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def write_config(self, *, broken: bool = False) -> None:
        path = self.dir / "config.yaml"
        text = config_text(
            port=self.port,
            twilio_port=self.twilio_port,
            smtp_port=self.smtp_port,
            variant=self.variant,
            broken=broken,
        )
        temporary = path.with_suffix(".tmp")
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(path)

    def prepare(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if (self.dir / "state").exists():
            raise SystemExit(f"{self.dir}/state exists: give an empty --dir")
        for name, value in (("webhook-token", self.token), ("twilio-token", self.twilio_token)):
            secret = self.dir / name
            secret.write_text(value + "\n", encoding="utf-8")
            secret.chmod(0o600)
        (self.dir / "soak-rules.yaml").write_text(SOAK_RULES, encoding="utf-8")
        self.write_config()

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def post_json(self, path: str, body: Any) -> tuple[int, Any]:
        assert self.session is not None
        began = time.monotonic()
        try:
            async with self.session.post(
                self.url + path, json=body, headers=self.auth(), timeout=aiohttp.ClientTimeout(15)
            ) as answer:
                text = await answer.text()
                if path == WEBHOOK:
                    self.counts.webhook_seconds.append(time.monotonic() - began)
                with contextlib.suppress(ValueError):
                    return answer.status, json.loads(text)
                return answer.status, text
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.counts.errors.append(f"POST {path}: {exc!r}")
            return 0, None

    async def get_json(self, path: str) -> Any:
        assert self.session is not None
        try:
            async with self.session.get(
                self.url + path, headers=self.auth(), timeout=aiohttp.ClientTimeout(15)
            ) as answer:
                if answer.status != 200:
                    self.counts.errors.append(f"GET {path}: {answer.status}")
                    return None
                return await answer.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.counts.errors.append(f"GET {path}: {exc!r}")
            return None

    # -- the daemon ----------------------------------------------------------------------------
    def spawn_daemon(self) -> subprocess.Popen[bytes]:
        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "daemon",
            "--tasks-file",
            str(self.dir / "tasks.jsonl"),
            "--retention",
            str(self.args.retention),
            "--retention-every",
            str(self.args.retention_every),
            "--stale-after",
            str(self.args.stale_after),
            *(["--tracemalloc", str(self.args.tracemalloc)] if self.args.tracemalloc else []),
            *(["--collect"] if self.args.collect else []),
            "--",
            "serve",
            "-c",
            str(self.dir / "config.yaml"),
        ]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        with (self.dir / "daemon.log").open("wb") as sink:
            return subprocess.Popen(
                argv, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )

    async def start_daemon(self) -> None:
        self.process = self.spawn_daemon()
        assert self.session is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(
                    f"responder exited with {self.process.returncode}:\n"
                    + (self.dir / "daemon.log").read_text()
                )
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with self.session.get(self.url + "/-/ready") as answer:
                    if answer.status == 200:
                        return
            await asyncio.sleep(0.1)
        raise SystemExit("responder not ready after 60 s")

    async def stop_daemon(self) -> int:
        """SIGTERM, and its exit status. Waited for off the loop: the peers run on it, and
        pages still on their way get their answers while the daemon stops."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.process.wait, 60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return await asyncio.to_thread(self.process.wait)

    # -- Alertmanager --------------------------------------------------------------------------
    def new_alert(self, name: str, extra: dict[str, str], now: float) -> SimAlert:
        self.instance += 1
        labels = {"alertname": name, "instance": f"host-{self.instance:05d}:9100", **extra}
        roll = self.rng.random()
        kind = "flappy" if roll < 0.25 else "abandoned" if roll < 0.38 else "normal"
        alert = SimAlert(
            labels=labels,
            starts_at=datetime.now(UTC) - timedelta(seconds=30),
            kind=kind,
            ends_in=self.rng.uniform(60, 300),
            born=now,
            flaps_left=self.rng.randint(1, 3) if kind == "flappy" else 0,
        )
        group = self.groups.setdefault(name, Group(name))
        group.alerts.append(alert)
        group.next_send = min(group.next_send, now + 1.0)  # group_wait
        self.counts.alerts_new += 1
        return alert

    def advance(self, now: float) -> None:
        """Resolves, abandons and re-fires that are due."""
        for group in self.groups.values():
            for alert in group.alerts:
                if alert.gone:
                    continue
                if alert.firing and now - alert.born >= alert.ends_in:
                    if alert.kind == "abandoned":
                        alert.gone = True  # never resolved: the daemon must call it stale
                        self.counts.abandoned += 1
                        continue
                    alert.firing = False
                    alert.ends_at = datetime.now(UTC)
                    alert.resolved_sends = 2
                    self.counts.resolves += 1
                    group.next_send = min(group.next_send, now + 1.0)
                    if alert.flaps_left > 0:
                        alert.flaps_left -= 1
                        alert.refire_at = now + self.rng.uniform(20, 90)
                elif not alert.firing and alert.refire_at is not None and now >= alert.refire_at:
                    alert.firing, alert.ends_at, alert.refire_at = True, None, None
                    alert.starts_at = datetime.now(UTC)  # a new episode of the same alert
                    alert.born, alert.ends_in = now, self.rng.uniform(45, 180)
                    alert.resolved_sends = 0
                    self.counts.refires += 1
                    group.next_send = min(group.next_send, now + 1.0)
            group.alerts = [
                a
                for a in group.alerts
                if not a.gone and (a.firing or a.resolved_sends > 0 or a.refire_at is not None)
            ]

    def webhook_body(self, group: Group, alerts: list[SimAlert]) -> dict[str, Any]:
        firing = any(a.firing for a in alerts)
        common = dict(alerts[0].labels)
        for alert in alerts[1:]:
            common = {k: v for k, v in common.items() if alert.labels.get(k) == v}
        return {
            "receiver": "responder",
            "status": "firing" if firing else "resolved",
            "alerts": [a.document() for a in alerts],
            "groupLabels": {"alertname": group.name},
            "commonLabels": common,
            "commonAnnotations": {},
            "externalURL": "http://127.0.0.1:9093",
            "version": "4",
            "groupKey": f'{{}}:{{alertname="{group.name}"}}',
            "truncatedAlerts": 0,
        }

    async def send_group(self, group: Group) -> None:
        alerts = [a for a in group.alerts if a.firing or a.resolved_sends > 0]
        if not alerts:
            return
        for alert in alerts:
            if not alert.firing:
                alert.resolved_sends -= 1
        status, _ = await self.post_json(WEBHOOK, self.webhook_body(group, alerts))
        self.counts.webhooks[status] += 1

    async def alertmanager(self, until: float) -> None:
        next_new = 5.0
        burst_done = False
        while (now := time.monotonic()) - self.started < until:
            elapsed = now - self.started
            if elapsed >= next_new:
                name, extra = self.rng.choice(ALERT_KINDS)
                self.new_alert(name, extra, now)
                next_new = elapsed + self.rng.expovariate(1 / self.args.new_every)
            if not burst_done and elapsed >= self.at(0.15):
                burst_done = True
                for _ in range(40):
                    self.new_alert("SoakBurst", {"severity": "warning", "job": "batch"}, now)
            self.advance(now)
            for group in list(self.groups.values()):
                if group.alerts and now >= group.next_send:
                    group.next_send = now + self.args.repeat * self.rng.uniform(0.9, 1.1)
                    await self.send_group(group)
            await asyncio.sleep(0.5)

    async def heartbeats(self, until: float) -> None:
        silent_from, silent_to = self.windows["heartbeat_silent"]
        while (elapsed := self.elapsed()) < until:
            sources = ["p1"] if silent_from <= elapsed < silent_to else ["p1", "p2"]
            alerts = [
                {
                    "status": "firing",
                    "labels": {"alertname": "SoakWatchdog", "prometheus": f"soak/{source}"},
                    "annotations": {},
                    "startsAt": iso(self.heartbeat_starts),
                    "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "",
                    "fingerprint": hashlib.sha256(source.encode()).hexdigest()[:16],
                }
                for source in sources
            ]
            body = {
                "receiver": "responder",
                "status": "firing",
                "alerts": alerts,
                "groupLabels": {"alertname": "SoakWatchdog"},
                "commonLabels": {"alertname": "SoakWatchdog"},
                "commonAnnotations": {},
                "externalURL": "http://127.0.0.1:9093",
                "version": "4",
                "groupKey": '{}:{alertname="SoakWatchdog"}',
                "truncatedAlerts": 0,
            }
            status, _ = await self.post_json(WEBHOOK, body)
            self.counts.webhooks[status] += 1
            self.counts.heartbeat_posts += 1
            await asyncio.sleep(10)

    async def bad_requests(self, until: float) -> None:
        assert self.session is not None
        while self.elapsed() < until:
            await asyncio.sleep(min(120.0, max(0.0, until - self.elapsed())))
            if self.elapsed() >= until:
                return
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self.session.post(
                    self.url + WEBHOOK, json={}, headers={"Authorization": "Bearer wrong"}
                ) as answer:
                    self.counts.bad_requests[f"wrong token: {answer.status}"] += 1
                async with self.session.post(
                    self.url + WEBHOOK,
                    data=b'{"version": "4", "alerts": [',
                    headers={**self.auth(), "Content-Type": "application/json"},
                ) as answer:
                    self.counts.bad_requests[f"malformed: {answer.status}"] += 1

    # -- people --------------------------------------------------------------------------------
    def record(self, incident: int, via: str, action: str, status: int, answer: Any) -> None:
        changed = None
        if isinstance(answer, dict):
            data = answer.get("data")
            if isinstance(data, dict):
                changed = data.get("changed")
        self.counts.acks.append(
            {
                "incident": incident,
                "via": via,
                "action": action,
                "status": status,
                "changed": changed,
                "answer": answer if isinstance(answer, str) else None,
                "at": time.time(),
                "elapsed": round(self.elapsed(), 1),
            }
        )
        self.counts.actions[f"{action} via {via}: {status}"] += 1

    async def sms_reply(self, contact: str, text: str, incident: int) -> None:
        answer = await self.twilio.send_inbound_sms(
            self.url + INBOUND_SMS, PHONES[contact], FROM_NUMBER, text
        )
        self.record(incident, "sms", text, answer.status, answer.text)

    async def sms_reply_by_example(self, contact: str, text: str, incident: int) -> None:
        """The reply as a person tries it from the README: examples/loopback_peers.py."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "examples" / "loopback_peers.py"),
            "--reply",
            PHONES[contact],
            text,
            "--daemon",
            self.url,
            "--token-file",
            str(self.dir / "twilio-token"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        out, _ = await process.communicate()
        first, _, rest = out.decode(errors="replace").strip().partition(" ")
        status = int(first) if first.isdigit() else 0
        self.record(incident, "sms (loopback_peers.py)", text, status, rest)

    def paged_by_sms(self, document: dict[str, Any]) -> str | None:
        """A contact whose SMS for this incident's current trigger went out."""
        for page in document.get("pages", []):
            if (
                page["channel"] == "sms"
                and page["state"] in ("sent", "delivered")
                and page["contact"] in PHONES
            ):
                return str(page["contact"])
        return None

    async def people(self, until: float) -> None:
        example_replies = 0
        next_ack_all = self.at(0.25)
        while self.elapsed() < until:
            await asyncio.sleep(4)
            listing = await self.get_json("/api/v1/incidents?state=open&limit=500")
            if listing is None:
                continue
            now = time.monotonic()
            for incident in listing.get("data", []):
                if incident.get("category") == "drill":
                    continue
                number, state, started = incident["id"], incident["state"], incident["startedAt"]
                if state != "triggered":
                    self.seen_triggered.pop(number, None)
                    continue
                seen = self.seen_triggered.get(number)
                if seen is None or seen[0] != started:
                    self.seen_triggered[number] = (started, now)
                    continue
                key = (number, f"{started}/{incident.get('episode')}")
                if key in self.decided or now - seen[1] < self.rng.uniform(15, 80):
                    continue
                await self.decide(number, key, example_replies < 3)
                if self.decided.get(key) == "sms-example":
                    example_replies += 1
            if self.elapsed() >= next_ack_all:
                next_ack_all += self.at(0.3)
                await self.sms_reply("bob", "ACK ALL", 0)

    async def decide(self, number: int, key: tuple[int, str], example: bool) -> None:
        roll = self.rng.random()
        by = self.rng.choice(["alice", "bob", "carol"])
        if roll < 0.32:
            self.decided[key] = "api"
            status, answer = await self.post_json(
                f"/api/v1/incidents/{number}/acknowledge", {"by": by}
            )
            self.record(number, "api", "acknowledge", status, answer)
        elif roll < 0.60:
            document = await self.get_json(f"/api/v1/incidents/{number}")
            contact = self.paged_by_sms(document["data"]) if document else None
            if contact is None:
                return  # nobody texted yet (limits, an outage): decided at a later look
            self.decided[key] = "sms-example" if example else "sms"
            if example:
                await self.sms_reply_by_example(contact, f"ACK {number}", number)
            else:
                await self.sms_reply(contact, f"ACK {number}", number)
        elif roll < 0.70:
            self.decided[key] = "snooze"
            status, answer = await self.post_json(
                f"/api/v1/incidents/{number}/snooze", {"by": by, "for": "1m"}
            )
            self.record(number, "api", "snooze", status, answer)
        elif roll < 0.74:
            self.decided[key] = "resolve"
            status, answer = await self.post_json(
                f"/api/v1/incidents/{number}/resolve", {"by": by, "text": "fixed by hand"}
            )
            self.record(number, "api", "resolve", status, answer)
        elif roll < 0.78:
            # Acknowledged, then given back: the escalation starts over.
            self.decided[key] = "ack-unack"
            status, answer = await self.post_json(
                f"/api/v1/incidents/{number}/acknowledge", {"by": by}
            )
            self.record(number, "api", "acknowledge", status, answer)
            await asyncio.sleep(2)
            status, answer = await self.post_json(
                f"/api/v1/incidents/{number}/unacknowledge", {"by": by, "text": "not mine"}
            )
            self.record(number, "api", "unacknowledge", status, answer)
        else:
            self.decided[key] = "ignore"  # left to escalate, update and resolve by itself

    # -- Twilio's side: callbacks and keypresses ----------------------------------------------
    async def callbacks(self, until: float) -> None:
        while self.elapsed() < until:
            await asyncio.sleep(2)
            accepted = [r for r in self.twilio.requests[self.seen_sends :] if r.accepted]
            self.seen_sends = len(self.twilio.requests)
            for request in accepted:
                asyncio.get_running_loop().create_task(self.answer_send(request))

    async def answer_send(self, request: Any) -> None:
        await asyncio.sleep(self.rng.uniform(1, 5))
        if self.process is None or self.process.poll() is not None:
            return  # the run is over: the daemon is stopping or stopped
        roll = self.rng.random()
        try:
            if request.kind == "voice":
                if roll < 0.5 and "Gather" in request.twiml:
                    answer = await self.twilio.send_keypress(request.sid, "1")
                    self.counts.keypresses += 1
                    self.record(0, "voice", "keypress 1", answer.status, answer.text)
                    await self.twilio.send_status_callback(request.sid, "completed")
                    self.counts.callbacks["call completed"] += 1
                else:
                    await self.twilio.send_status_callback(request.sid, "no-answer")
                    self.counts.callbacks["call no-answer"] += 1
            elif roll < 0.80:
                await self.twilio.send_status_callback(request.sid, "delivered")
                self.counts.callbacks["sms delivered"] += 1
            elif roll < 0.85:
                await self.twilio.send_status_callback(request.sid, "undelivered", 30003)
                self.counts.callbacks["sms undelivered"] += 1
            elif roll < 0.95:
                self.twilio.set_status(request.sid, "delivered")  # the lookup finds it
                self.counts.callbacks["sms delivered, no callback"] += 1
            else:
                self.counts.callbacks["sms none"] += 1
        except (aiohttp.ClientError, OSError, ValueError, KeyError) as exc:
            self.counts.errors.append(f"callback for {request.sid}: {exc!r}")

    # -- outages and reloads -------------------------------------------------------------------
    async def twilio_outage(self) -> None:
        from responder.testing import Fault

        start, end = self.windows["twilio_down"]
        await asyncio.sleep(max(0.0, start - self.elapsed()))
        for number in PHONES.values():
            self.twilio.fail_number(number, Fault.UNAVAILABLE)
        self.twilio.fail_lookups(Fault.UNAVAILABLE)
        await asyncio.sleep(max(0.0, end - self.elapsed()))
        self.twilio.clear_faults()

    async def smtp_outage(self) -> None:
        from responder.testing import SmtpTestServer

        start, end = self.windows["smtp_down"]
        await asyncio.sleep(max(0.0, start - self.elapsed()))
        self.mail.extend(self.smtp.messages)
        await self.smtp.__aexit__(None, None, None)
        await asyncio.sleep(max(0.0, end - self.elapsed()))
        self.smtp = SmtpTestServer(port=self.smtp_port)
        await self.smtp.__aenter__()

    async def metric(self, name: str) -> float | None:
        assert self.session is not None
        async with self.session.get(self.url + "/metrics") as answer:
            for series, value in parse_metrics(await answer.text()).items():
                if series == name:
                    return value
        return None

    async def reloads(self, until: float) -> None:
        assert self.process is not None
        while True:
            await asyncio.sleep(min(self.args.reload_every, max(0.0, until - self.elapsed())))
            if self.elapsed() >= until:
                return
            self.reload_count += 1
            broken = self.reload_count == 3
            if not broken:
                self.variant = "b" if self.variant == "a" else "a"
            self.write_config(broken=broken)
            how = "POST /-/reload" if self.reload_count == 5 else "SIGHUP"
            before = await self.metric("responder_config_last_reload_success_timestamp_seconds")
            asked = time.monotonic()
            self.reload_times.append(self.elapsed())
            if how == "SIGHUP":
                self.process.send_signal(signal.SIGHUP)
                status = None
            else:
                status, _ = await self.post_json("/-/reload", {})
            # Done when the metrics say so: a new success time, or 0 for the broken file.
            ok = stamp = None
            while time.monotonic() - asked < 30:
                ok = await self.metric("responder_config_last_reload_successful")
                stamp = await self.metric("responder_config_last_reload_success_timestamp_seconds")
                if (ok == 0.0) if broken else (ok == 1.0 and stamp != before):
                    break
                await asyncio.sleep(0.25)
            self.counts.reloads.append(
                {
                    "elapsed": round(self.elapsed()),
                    "how": how,
                    "variant": self.variant,
                    "broken": broken,
                    "status": status,
                    "metric": ok,
                    "seconds": round(time.monotonic() - asked, 2),
                    "as_expected": ok == (0.0 if broken else 1.0) and (broken or stamp != before),
                }
            )

    # -- sampling ------------------------------------------------------------------------------
    async def sample(self) -> dict[str, Any]:
        assert self.process is not None
        assert self.session is not None
        pid = self.process.pid
        status, stat = proc_status(pid)
        tick = os.sysconf("SC_CLK_TCK")
        state = self.dir / "state"

        def size(name: str) -> int:
            with contextlib.suppress(OSError):
                return (state / name).stat().st_size
            return 0

        tasks: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError, IndexError):
            tasks = json.loads((self.dir / "tasks.jsonl").read_text().splitlines()[-1])
        metrics: dict[str, float] = {}
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with self.session.get(self.url + "/metrics") as answer:
                metrics = parse_metrics(await answer.text())
        log = self.dir / "daemon.log"
        return {
            "elapsed": round(self.elapsed(), 1),
            "rss_kb": int(status["VmRSS"].split()[0]),
            "hwm_kb": int(status["VmHWM"].split()[0]),
            "threads": int(status["Threads"]),
            **memory_map(pid),
            "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "cpu_s": (int(stat[11]) + int(stat[12])) / tick,
            "tasks": tasks.get("tasks"),
            "task_kinds": tasks.get("by_kind"),
            "gc_objects": tasks.get("gc_objects"),
            "db_bytes": size("responder.db"),
            "wal_bytes": size("responder.db-wal"),
            "shm_bytes": size("responder.db-shm"),
            "log_bytes": log.stat().st_size,
            "metrics": metrics,
        }

    async def sampler(self, until: float) -> None:
        out = (self.dir / "samples.jsonl").open("a", encoding="utf-8")
        with out:
            while True:
                sample = await self.sample()
                await asyncio.to_thread(self.ledger.observe)
                self.samples.append(sample)
                out.write(json.dumps(sample) + "\n")
                out.flush()
                print(
                    f"{sample['elapsed']:7.0f}s rss {sample['rss_kb'] / 1024:6.1f} MiB"
                    f"  fds {sample['fds']:3d}  threads {sample['threads']:2d}"
                    f"  tasks {sample['tasks']}  gc {sample['gc_objects']}"
                    f"  db {sample['db_bytes'] / 1024:7.0f} KiB"
                    f"  wal {sample['wal_bytes'] / 1024:6.0f} KiB"
                    f"  log {sample['log_bytes'] / 1024:6.0f} KiB  cpu {sample['cpu_s']:.0f}s",
                    flush=True,
                )
                if self.elapsed() >= until:
                    return
                await asyncio.sleep(self.args.sample_every)

    # -- the run -------------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        from responder.testing import FakeTwilio, SmtpTestServer

        self.prepare()
        d = self.duration
        self.windows = {
            "heartbeat_silent": (0.20 * d, 0.20 * d + max(150.0, 0.1 * d)),
            "twilio_down": (0.30 * d, 0.42 * d),
            "smtp_down": (0.55 * d, 0.67 * d),
        }
        async with contextlib.AsyncExitStack() as stack:
            self.session = await stack.enter_async_context(aiohttp.ClientSession())
            self.twilio = await stack.enter_async_context(
                FakeTwilio(ACCOUNT_SID, self.twilio_token, port=self.twilio_port)
            )
            self.smtp = SmtpTestServer(port=self.smtp_port)
            await self.smtp.__aenter__()
            await self.start_daemon()
            self.started = time.monotonic()
            print(
                f"responder pid {self.process.pid if self.process else '?'} on {self.url}; "
                f"twilio :{self.twilio_port}, smtp :{self.smtp_port}; state in {self.dir}",
                flush=True,
            )
            jobs = [
                self.alertmanager(d),
                self.heartbeats(d + self.args.tail),
                self.people(d),
                self.callbacks(d + self.args.tail),
                self.reloads(d),
                self.twilio_outage(),
                self.smtp_outage(),
                self.bad_requests(d),
                self.sampler(d + self.args.tail),
            ]
            try:
                await asyncio.gather(*jobs)
            finally:  # a fault of this script must not leave the daemon running
                rc = await self.stop_daemon()
            self.mail.extend(self.smtp.messages)
            await self.smtp.__aexit__(None, None, None)
            return self.analyse(rc)

    # -- the checks ----------------------------------------------------------------------------
    def analyse(self, rc: int) -> dict[str, Any]:
        report: dict[str, Any] = {"exit_status": rc, "duration_s": self.duration}
        report["resources"] = resources(self.samples, self.reload_times)
        report["log"] = read_log(self.dir / "daemon.log")
        db = sqlite3.connect(f"file:{self.dir / 'state' / 'responder.db'}?mode=ro", uri=True)
        with contextlib.closing(db):
            report["database"] = database_figures(db)
        last = self.samples[-1]["metrics"] if self.samples else {}
        report["metric_totals"] = {
            name: value
            for name, value in sorted(last.items())
            if name.startswith(COUNTED) and value
        }
        self.ledger.observe()
        report["sent_twice"] = self.ledger.sends_unknown(self.twilio.requests, self.mail)
        report["acks_not_honoured"] = list(self.ledger.late_pages)
        report["driver"] = {
            "webhooks": dict(self.counts.webhooks),
            "webhook_seconds": percentiles(self.counts.webhook_seconds),
            "alerts_new": self.counts.alerts_new,
            "resolves": self.counts.resolves,
            "refires": self.counts.refires,
            "abandoned": self.counts.abandoned,
            "heartbeat_posts": self.counts.heartbeat_posts,
            "bad_requests": dict(self.counts.bad_requests),
            "actions": dict(self.counts.actions),
            "callbacks": dict(self.counts.callbacks),
            "keypresses": self.counts.keypresses,
            "answers": dict(
                Counter(
                    re.sub(r"\d+", "N", str(a["answer"]))[:60]
                    for a in self.counts.acks
                    if a["answer"] is not None
                )
            ),
            "reloads": self.counts.reloads,
            "errors": self.counts.errors[:50],
            "twilio_requests": len(self.twilio.requests),
            "twilio_accepted": sum(1 for r in self.twilio.requests if r.accepted),
            "mails": len(self.mail),
            "windows_s": {k: [round(v[0]), round(v[1])] for k, v in self.windows.items()},
        }
        failures = []
        if rc != 0:
            failures.append(f"daemon exit status {rc}")
        if report["log"]["tracebacks"]:
            failures.append(f"{report['log']['tracebacks']} tracebacks in the log")
        if report["log"]["unexpected_errors"]:
            failures.append(f"{len(report['log']['unexpected_errors'])} unexpected error lines")
        if report["sent_twice"]:
            failures.append(f"{len(report['sent_twice'])} sends the database does not know of")
        if report["acks_not_honoured"]:
            failures.append(f"{len(report['acks_not_honoured'])} pages after an acknowledgement")
        if not all(r["as_expected"] for r in self.counts.reloads):
            failures.append("a reload's outcome was not as expected")
        failures.extend(report["resources"]["growing"])
        report["failures"] = failures
        report["acks"] = self.counts.acks
        (self.dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
        return report


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p99 and the largest, nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return {}

    def rank(p: float) -> float:
        return round(ordered[max(0, math.ceil(len(ordered) * p / 100) - 1)], 4)

    return {"p50": rank(50), "p99": rank(99), "max": round(ordered[-1], 4)}


def proc_status(pid: int) -> tuple[dict[str, str], list[str]]:
    """/proc/PID/status as a mapping, and the fields of /proc/PID/stat after the name."""
    status: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        status[key] = value.strip()
    return status, Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def memory_map(pid: int) -> dict[str, int]:
    """Resident kB by kind of mapping: the main heap, anonymous mappings (other malloc
    arenas, large allocations, thread stacks), and files (code)."""
    kinds = {"heap_kb": 0, "anon_kb": 0, "file_kb": 0}
    kind = "anon_kb"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if line[:1] in "0123456789abcdef" and "-" in line.split(" ", 1)[0]:
            parts = line.split(None, 5)
            name = parts[5] if len(parts) > 5 else ""
            kind = (
                "heap_kb" if name == "[heap]" else "file_kb" if name.startswith("/") else "anon_kb"
            )
        elif line.startswith("Rss:"):
            kinds[kind] += int(line.split()[1])
    return kinds


def parse_metrics(text: str) -> dict[str, float]:
    series: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = METRIC_LINE.match(line)
        if match is None:
            continue
        with contextlib.suppress(ValueError):
            series[match[1] + (match[2] or "")] = float(match[3])
    return series


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value), per minute."""
    if len(points) < 3:
        return math.nan
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    return 60 * sxy / sxx if sxx else math.nan


def resources(samples: list[dict[str, Any]], reloads: list[float]) -> dict[str, Any]:
    """Start, end, extremes and the trend over the second half of each figure (memory over
    the last third, between reloads); a figure that still grows by more than its allowance
    is listed in ``growing``."""
    figures: dict[str, Any] = {}
    growing: list[str] = []
    # Allowance per minute over the second half, once warm: about the least growth a run of
    # 20 minutes sampled every 30 s tells from noise (100 KiB/min is 140 MiB a day). Memory
    # is judged over the last third, between reloads.
    allowance = {"rss_kb": 100.0, "fds": 0.1, "threads": 0.05, "tasks": 0.1, "wal_bytes": 32768}
    if not samples:
        return {"growing": ["no samples"]}
    half = samples[len(samples) // 2 :]
    for name in ("rss_kb", "heap_kb", "anon_kb", "fds", "threads", "tasks", "gc_objects",
                 "db_bytes", "wal_bytes", "shm_bytes", "log_bytes", "cpu_s"):  # fmt: skip
        values = [(s["elapsed"], float(s[name])) for s in samples if s.get(name) is not None]
        if not values:
            continue
        trend = slope_per_minute([v for v in values if v[0] >= half[0]["elapsed"]])
        figures[name] = {
            "start": values[0][1],
            "end": values[-1][1],
            "min": min(v for _, v in values),
            "max": max(v for _, v in values),
            "second_half_slope_per_min": round(trend, 2),
        }
        if name in ("rss_kb", "heap_kb", "anon_kb"):
            # Over the last third, sample to sample, leaving out the step a reload falls in
            # and the next (the garbage it left may be collected in either). The outages'
            # backlogs are sent by then: what still grows is not a burst's high-water mark.
            steps = [
                (b[0] - a[0], b[1] - a[1])
                for a, b in itertools.pairwise(values)
                if a[0] >= samples[len(samples) * 2 // 3]["elapsed"]
                and not any(a[0] - 1.5 * (b[0] - a[0]) < r <= b[0] for r in reloads)
            ]
            seconds = sum(d for d, _ in steps)
            trend = 60 * sum(v for _, v in steps) / seconds if seconds else math.nan
            figures[name]["last_third_slope_between_reloads_per_min"] = round(trend, 2)
        if name in allowance and trend > allowance[name]:
            growing.append(f"{name} still grows once warm: {trend:.1f}/min")
    kinds_start = samples[0].get("task_kinds") or {}
    kinds_end = samples[-1].get("task_kinds") or {}
    figures["task_kinds_start"] = kinds_start
    figures["task_kinds_end"] = kinds_end
    figures["growing"] = growing
    return figures


def read_log(path: Path) -> dict[str, Any]:
    levels: Counter[str] = Counter()
    events: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    unexpected: list[str] = []
    tracebacks = 0
    lines = 0
    with path.open(encoding="utf-8", errors="replace") as log:
        for line in log:
            lines += 1
            if line.startswith("Traceback"):
                tracebacks += 1
            match = LOG_LINE.match(line)
            if match is None:
                continue
            level, event = match[1], match[2]
            levels[level] += 1
            events[event] += 1
            if level in ("error", "critical"):
                errors[event] += 1
                expected = event.startswith(EXPECTED_ERRORS) or (
                    event == "page failed" and EXPECTED_PAGE_FAILURES.search(line) is not None
                )
                if not expected and len(unexpected) < 40:
                    unexpected.append(line.strip()[:400])
    return {
        "lines": lines,
        "levels": dict(levels),
        "tracebacks": tracebacks,
        "errors": dict(errors),
        "unexpected_errors": unexpected,
        "top_events": events.most_common(20),
    }


def database_figures(db: sqlite3.Connection) -> dict[str, Any]:
    def grouped(sql: str) -> dict[str, int]:
        return {" ".join(str(c) for c in row[:-1]): row[-1] for row in db.execute(sql)}

    return {
        "incidents": grouped("SELECT state, count(*) FROM incidents GROUP BY state"),
        "alerts": grouped("SELECT status, count(*) FROM alerts GROUP BY status"),
        "pages": grouped("SELECT channel, kind, state, count(*) FROM pages GROUP BY 1, 2, 3"),
        "timeline": grouped("SELECT kind, count(*) FROM timeline GROUP BY kind"),
        "acknowledged_via": grouped(
            "SELECT via, count(*) FROM timeline WHERE kind = 'acknowledged' GROUP BY via"
        ),
        "heartbeats": db.execute("SELECT count(*) FROM heartbeats").fetchone()[0],
        "twilio_requests": db.execute("SELECT count(*) FROM twilio_requests").fetchone()[0],
        "action_runs": grouped("SELECT state, count(*) FROM action_runs GROUP BY state"),
    }


class Ledger:
    """What the database showed over the run: retention deletes resolved incidents with
    their pages within minutes here, so the checks read it at every sample."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.routes: dict[str, set[tuple[str, str]]] = {}  # provider id -> (contact, channel)
        self.late_pages: dict[str, None] = {}  # acks_not_honoured's findings, in order

    def observe(self) -> None:
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        with contextlib.closing(db):
            for provider_id, contact, channel in db.execute(
                "SELECT provider_id, contact, channel FROM pages WHERE provider_id IS NOT NULL"
            ):
                self.routes.setdefault(provider_id, set()).add((contact, channel))
            self.late_pages.update(dict.fromkeys(acks_not_honoured(db)))

    def sends_unknown(self, requests: list[Any], mail: list[Any]) -> list[str]:
        """Messages the peers accepted that no page row ever named: a send the outbox did
        not record, so possibly a page sent twice on one route. And provider ids that
        pages of distinct routes carried."""
        known = self.routes
        found = [
            f"{r.kind} to {r.to} {r.sid}" for r in requests if r.accepted and r.sid not in known
        ]
        for message in mail:
            message_id = str(message.message["Message-ID"])
            if message_id not in known:
                found.append(f"mail to {message.rcpt_tos} {message_id}")
        found += [f"{pid} sent for {sorted(r)}" for pid, r in known.items() if len(r) > 1]
        return found


def acks_not_honoured(db: sqlite3.Connection, grace_us: int = 3_000_000) -> list[str]:
    """Escalation pages (those an acknowledgement cancels) that went out more than
    ``grace_us`` (microseconds, as the store's times) after an acknowledgement or snooze
    still in force: nothing between them started the escalation over (an unacknowledge, a
    snooze's end, a re-trigger, a severity raise)."""
    restart = ("unacknowledged", "snooze_ended", "retriggered", "triggered", "severity_raised",
               "resolved", "policy_gone")  # fmt: skip
    found = []
    events: dict[int, list[tuple[int, str]]] = {}
    for incident, at, kind in db.execute(
        "SELECT incident_id, at, kind FROM timeline ORDER BY incident_id, at, id"
    ):
        events.setdefault(incident, []).append((at, kind))
    for page_id, incident, step, contact, channel, sent_at in db.execute(
        "SELECT id, incident_id, step, contact, channel, sent_at FROM pages WHERE kind = 'page' "
        "AND cancel_on_ack = 1 AND sent_at IS NOT NULL AND state IN ('sent', 'delivered')"
    ):
        acked_at = None
        for at, kind in events.get(incident, []):
            if at > sent_at:
                break
            if kind in ("acknowledged", "snoozed"):
                acked_at = at if acked_at is None else acked_at
            elif kind in restart:
                acked_at = None
        if acked_at is not None and sent_at - acked_at > grace_us:
            found.append(
                f"page {page_id} (#{incident} {step} {contact}/{channel}) sent "
                f"{(sent_at - acked_at) / 1e6:.1f}s after an acknowledgement or snooze"
            )
    return found


def summary(report: dict[str, Any]) -> str:
    res = report["resources"]
    lines = ["", "== soak report =="]

    def row(name: str, scale: float, unit: str) -> None:
        if name in res:
            f = res[name]
            between = f.get("last_third_slope_between_reloads_per_min")
            lines.append(
                f"{name:11s} start {f['start'] / scale:10.1f}  end {f['end'] / scale:10.1f}  "
                f"max {f['max'] / scale:10.1f} {unit}  slope(2nd half) "
                f"{f['second_half_slope_per_min'] / scale:.2f} {unit}/min"
                + (
                    ""
                    if between is None
                    else f"; last third, between reloads {between / scale:.2f}"
                )
            )

    row("rss_kb", 1024, "MiB")
    row("heap_kb", 1024, "MiB")
    row("anon_kb", 1024, "MiB")
    row("fds", 1, "")
    row("threads", 1, "")
    row("tasks", 1, "")
    row("gc_objects", 1, "")
    row("db_bytes", 1024, "KiB")
    row("wal_bytes", 1024, "KiB")
    row("log_bytes", 1024, "KiB")
    row("cpu_s", 1, "s")
    lines.append(f"task kinds at start: {res.get('task_kinds_start')}")
    lines.append(f"task kinds at end:   {res.get('task_kinds_end')}")
    log = report["log"]
    lines.append(
        f"log: {log['lines']} lines, levels {log['levels']}, tracebacks {log['tracebacks']}"
    )
    lines.append(f"log errors: {log['errors']}")
    for event, count in log["top_events"][:12]:
        lines.append(f"  {count:6d}  {event}")
    for line in log["unexpected_errors"][:10]:
        lines.append(f"  unexpected: {line}")
    for key, value in report["database"].items():
        lines.append(f"db now {key}: {value}")
    for key, value in report["metric_totals"].items():
        lines.append(f"metric {key} {value:g}")
    for key, value in report["driver"].items():
        lines.append(f"driver {key}: {value}")
    lines.append(f"sends the database does not know of: {report['sent_twice'][:10]}")
    lines.append(f"pages after an acknowledgement: {report['acks_not_honoured'][:10]}")
    lines.append(f"daemon exit status: {report['exit_status']}")
    lines.append("FAILURES: " + "; ".join(report["failures"]) if report["failures"] else "OK")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["daemon"]:
        return daemon_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--dir", type=Path, help="empty folder for config, state, log, samples")
    parser.add_argument("--duration", type=parse_duration, default=22 * 60.0)
    parser.add_argument("--tail", type=parse_duration, default=60.0,
                        help="sampling after the traffic stops")  # fmt: skip
    parser.add_argument("--sample-every", type=parse_duration, default=30.0)
    parser.add_argument("--new-every", type=parse_duration, default=6.0)
    parser.add_argument("--repeat", type=parse_duration, default=8.0)
    parser.add_argument("--reload-every", type=parse_duration, default=180.0)
    parser.add_argument("--retention", type=parse_duration, default=240.0)
    parser.add_argument("--retention-every", type=parse_duration, default=60.0)
    parser.add_argument("--stale-after", type=parse_duration, default=120.0)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--twilio-port", type=int, default=0)
    parser.add_argument("--smtp-port", type=int, default=0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--tracemalloc",
        type=parse_duration,
        metavar="WARMUP",
        help="trace the daemon's allocations; tasks.jsonl lists the sites grown since WARMUP "
        "(slows the daemon down a lot: its answer times mean nothing then)",
    )
    parser.add_argument(
        "--collect",
        action="store_true",
        help="a full garbage collection in the daemon before each census: objects counted "
        "are then referenced, not garbage awaiting the collector",
    )
    args = parser.parse_args(argv)
    if args.dir is None:
        args.dir = Path(f"/tmp/responder-soak-{os.getpid()}")
    report = asyncio.run(Soak(args).run())
    print(summary(report))
    print(f"\nfull report: {args.dir / 'report.json'}; samples: {args.dir / 'samples.jsonl'}")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())

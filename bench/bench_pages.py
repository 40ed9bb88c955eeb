"""Page latency: webhook sent to provider request started, at a constant rate of new incidents.

Run by hand: ``.venv/bin/python bench/bench_pages.py`` (under a minute; ``--quick`` takes about
20 s). Linux; uses ``taskset`` when there are two CPUs or more. Writes the Markdown report to
``bench/results/pages.md`` and prints it.

The target (issue): with both peers on loopback and 100 new incidents per second, the time from
webhook received to the provider request started is under 100 ms at p99.

What it does:

* runs, in this process (pinned to core 1), ``FakeTwilio`` (the Twilio API the real ``twilio``
  library talks to; it stamps each request with ``time.time()`` on arrival) and
  ``SmtpTestServer`` (real aiosmtpd, in its own thread), whose handler gets three hooks that
  stamp EHLO (the first command of a connection: the email "request started"), MAIL and
  accepted DATA;
* starts a real ``responder serve`` pinned to core 0 with a temporary config: the shipped rule
  files and storage settings (SQLite, ``synchronous: full``), ``--contacts`` contacts with SMS
  and email (no ``notify`` rules: both at once), one policy per contact with level 1 at once,
  and a tagging rule per contact that routes incident ``n`` to contact ``n % contacts``. Per
  contact method the rate limit is raised to 9999/1m (the default, one message a minute, would
  hold and bundle the pages: that is what it is for, not what is measured here) and the
  SMS/voice budget to 1,000,000 an hour;
* warms up (twilio client, templates, SQLite caches) with a few incidents at a low rate, then
  posts ``--rate`` webhooks a second for ``--seconds`` on a fixed schedule (open loop: a slow
  answer does not delay the next webhook), each one new alert (``TargetDown`` on instance
  ``bench-NNNNNN``) in a new group, so a new incident;
* matches every SMS (the body) and every email (the message text) to its incident by the
  instance in the incident title, and reports webhook sent (``time.time()`` just before the
  POST) to provider request started, p50/p90/p99/max, for SMS and for email, and the webhook
  answer time; after the daemon stops, reads its database (read-only) for the stages in between:
  incident opened (the ingest handler's clock), page created (the escalation pass's clock) and
  page marked sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email
import email.policy
import gc
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from benchlib import cpu_seconds, free_port, machine, percentile

from responder.testing import FakeTwilio, SmtpTestServer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "pages.md"
WEBHOOK_PATH = "/api/v1/alertmanager"
SERVER_CORE = 0
LOAD_CORE = 1
TARGET_P99_MS = 100.0
INSTANCE = re.compile(r"bench-(\d{6})")
STARTS_AT = "2026-11-22T07:06:22Z"
WARMUP_BASE = 900_000  # warm-up incidents are numbered from here; measured ones from 0


# -- peers: SMTP arrival stamps ---------------------------------------------------------------


@dataclass(slots=True)
class MailArrival:
    ehlo_at: float  # the connection's EHLO: the request started
    mail_at: float
    data_at: float  # DATA accepted: the whole message is in
    rcpt_tos: list[str]
    raw: bytes


class SmtpStamps:
    """Hooks added to the running SmtpTestServer's handler; they run in aiosmtpd's thread."""

    def __init__(self) -> None:
        self.arrivals: list[MailArrival] = []
        self._ehlo: dict[int, float] = {}
        self._mail: dict[int, float] = {}

    def install(self, server: SmtpTestServer) -> None:
        controller = server._controller
        if controller is None:
            raise RuntimeError("SmtpTestServer is not started")
        handler: Any = controller.handler
        original_mail = handler.handle_MAIL
        original_data = handler.handle_DATA
        ehlo, mail, arrivals = self._ehlo, self._mail, self.arrivals

        # Five parameters: aiosmtpd's current EHLO hook form, which must set host_name itself.
        async def handle_ehlo(
            _smtp: Any, session: Any, _envelope: Any, hostname: str, responses: list[str]
        ) -> list[str]:
            ehlo[id(session)] = time.time()
            session.host_name = hostname
            return responses

        async def handle_mail(
            smtp: Any, session: Any, envelope: Any, address: str, options: list[str]
        ) -> str:
            mail[id(session)] = time.time()
            answer: str = await original_mail(smtp, session, envelope, address, options)
            return answer

        async def handle_data(smtp: Any, session: Any, envelope: Any) -> str:
            answer: str = await original_data(smtp, session, envelope)
            now = time.time()
            key = id(session)
            if answer.startswith("250"):
                raw = envelope.original_content or envelope.content or b""
                arrivals.append(
                    MailArrival(
                        ehlo_at=ehlo.pop(key, now),
                        mail_at=mail.pop(key, now),
                        data_at=now,
                        rcpt_tos=list(envelope.rcpt_tos),
                        raw=raw if isinstance(raw, bytes) else raw.encode(),
                    )
                )
            return answer

        # aiosmtpd reads the handle_* attributes of the handler for every new connection.
        handler.handle_EHLO = handle_ehlo
        handler.handle_MAIL = handle_mail
        handler.handle_DATA = handle_data


# -- the daemon -------------------------------------------------------------------------------


def contact_name(slot: int) -> str:
    return f"c{slot:04d}"


def write_config(
    work: Path, port: int, token: str, twilio: FakeTwilio, smtp: SmtpTestServer, contacts: int
) -> Path:
    shipped = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    (work / "token").write_text(token + "\n", encoding="utf-8")
    (work / "token").chmod(0o600)
    (work / "twilio-token").write_text(twilio.auth_token + "\n", encoding="utf-8")
    (work / "twilio-token").chmod(0o600)
    rules = [
        {
            "name": f"bench-route-{slot:04d}",
            "matchers": [f'bench_slot="{slot}"'],
            "policy": f"bench-{slot:04d}",
            "continue": True,  # the shipped rules still decide severity and category
        }
        for slot in range(contacts)
    ]
    rule_file = work / "00-bench-routes.yaml"
    rule_file.write_text(yaml.safe_dump({"rules": rules}, sort_keys=False), encoding="utf-8")
    shipped_rules = (shipped.get("classification") or {}).get("rule_files") or ["rules/*.yaml"]
    config: dict[str, Any] = {
        "state_dir": str(work / "state"),
        "server": {"listen": f"127.0.0.1:{port}"},
        "auth": {"bearer_token_file": str(work / "token")},
        "storage": shipped.get("storage") or {},
        "logging": shipped.get("logging") or {},
        "classification": {"rule_files": [str(rule_file), *(str(ROOT / p) for p in shipped_rules)]},
        "contacts": {
            contact_name(slot): {
                "sms": f"+1555{2_000_000 + slot:07d}",
                "email": f"{contact_name(slot)}@bench.example",
            }
            for slot in range(contacts)
        },
        "escalation_policies": {
            f"bench-{slot:04d}": {"levels": [{"targets": [contact_name(slot)]}]}
            for slot in range(contacts)
        },
        "incidents": {"default_policy": "bench-0000"},
        "channels": {
            "twilio": {
                "account_sid": twilio.account_sid,
                "auth_token_file": str(work / "twilio-token"),
                "from": "+15550000000",
                "api_base_url": twilio.base_url,
                "timeout": "5s",
            },
            "smtp": {
                "host": "127.0.0.1",
                "port": smtp.port,
                "mode": "none",
                "from": "Responder <responder@bench.example>",
            },
        },
        "delivery": {
            "rate_limits": {"sms": ["9999/1m"], "email": ["9999/1m"]},
            "budget": {"sms_voice_per_hour": 1_000_000},
        },
    }
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


@dataclass
class Daemon:
    process: asyncio.subprocess.Process
    port: int
    log: Path
    state: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def start_daemon(config: Path, port: int, work: Path, pin: bool) -> Daemon:
    log = work / "responder.log"
    argv = [str(Path(sys.executable).parent / "responder"), "serve", "-c", str(config)]
    if pin:
        argv = ["taskset", "-c", str(SERVER_CORE), *argv]
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=sink, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL
        )
    daemon = Daemon(process, port, log, work / "state")
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise SystemExit(f"responder exited with {process.returncode}:\n{log.read_text()}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(daemon.url + "/-/ready") as answer:
                    if answer.status == 200:
                        return daemon
            await asyncio.sleep(0.05)
    await stop_daemon(daemon)
    raise SystemExit(f"responder not ready after 30 s:\n{log.read_text()}")


async def stop_daemon(daemon: Daemon) -> None:
    process = daemon.process
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), 20)
    except TimeoutError:
        process.kill()
        await process.wait()


def busy_seconds() -> float:
    """CPU time the whole machine spent busy (all CPUs, every process), from /proc/stat."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    return float("nan")


def tcp_counters() -> dict[str, int]:
    """Machine-wide TCP counters: a full accept queue drops SYNs, retried after 1 s, 3 s, ..."""
    wanted = ("ListenOverflows", "TCPSynRetrans")
    with contextlib.suppress(OSError):
        lines = Path("/proc/net/netstat").read_text().splitlines()
        for names, values in zip(lines[::2], lines[1::2], strict=False):
            if names.startswith("TcpExt:"):
                table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
                return {key: int(table.get(key, 0)) for key in wanted}
    return dict.fromkeys(wanted, 0)


async def scrape(session: aiohttp.ClientSession, daemon: Daemon) -> dict[str, float]:
    async with session.get(daemon.url + "/metrics") as answer:
        text = await answer.text()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            values[name] = float(value)
    return values


# -- the load ---------------------------------------------------------------------------------


def webhook_body(number: int, contacts: int) -> bytes:
    instance = f"bench-{number:06d}"
    labels = {
        "alertname": "TargetDown",
        "instance": instance,
        "job": "node",
        "bench_slot": str(number % contacts),
    }
    document = {
        "version": "4",
        "status": "firing",
        "receiver": "responder",
        "groupKey": f'{{}}:{{instance="{instance}"}}',
        "groupLabels": {"instance": instance},
        "commonLabels": labels,
        "commonAnnotations": {"summary": "targets down"},
        "externalURL": "http://127.0.0.1:9093",
        "truncatedAlerts": 0,
        "alerts": [
            {
                "status": "firing",
                "labels": labels,
                "annotations": {"summary": "targets down"},
                "startsAt": STARTS_AT,
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://127.0.0.1:9090/graph",
                "fingerprint": f"{number:016x}",
            }
        ],
    }
    return json.dumps(document, separators=(",", ":")).encode()


@dataclass(slots=True)
class Sent:
    number: int
    scheduled: float  # time.time() the schedule said
    body: bytes
    sent_at: float = 0.0  # time.time() just before the POST
    answered_at: float = 0.0
    status: int = 0


@dataclass
class Load:
    rate: float
    seconds: float
    sent: list[Sent] = field(default_factory=list)
    lags_ms: list[float] = field(default_factory=list)  # each send's lateness: this loop's lag
    daemon_cpu: float = 0.0  # the daemon's CPU seconds per second of load (1.0: a full core)
    bench_cpu: float = 0.0  # the same for this process (generator and both fake peers)
    other_cpu: float = 0.0  # the same for everything else on the machine (should be ~0)
    tcp: dict[str, int] = field(default_factory=dict)  # counter increases, load and drain


async def post_one(session: aiohttp.ClientSession, url: str, token: str, item: Sent) -> None:
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {token}",
        "User-Agent": "Alertmanager/0.25.0",
    }
    item.sent_at = time.time()
    try:
        async with session.post(url, data=item.body, headers=headers) as answer:
            await answer.read()
            item.status = answer.status
    except (aiohttp.ClientError, OSError, TimeoutError):
        item.status = -1
    item.answered_at = time.time()


async def generate(
    session: aiohttp.ClientSession,
    daemon: Daemon,
    token: str,
    numbers: Sequence[int],
    rate: float,
    contacts: int,
) -> Load:
    """Post one webhook per number on a fixed schedule, not waiting for earlier answers."""
    bodies = {number: webhook_body(number, contacts) for number in numbers}
    load = Load(rate, len(numbers) / rate)
    url = daemon.url + WEBHOOK_PATH
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[None]] = []
    daemon_cpu = cpu_seconds(daemon.process.pid)
    bench_cpu = time.process_time()
    machine_cpu = busy_seconds()
    start_mono = loop.time() + 0.05
    start_wall = time.time() + (start_mono - loop.time())
    for index, number in enumerate(numbers):
        due = start_mono + index / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        load.lags_ms.append((loop.time() - due) * 1000)
        item = Sent(number, start_wall + index / rate, bodies[number])
        load.sent.append(item)
        tasks.append(asyncio.create_task(post_one(session, url, token, item)))
    await asyncio.gather(*tasks)
    elapsed = max(loop.time() - start_mono, 1e-9)
    load.daemon_cpu = (cpu_seconds(daemon.process.pid) - daemon_cpu) / elapsed
    load.bench_cpu = (time.process_time() - bench_cpu) / elapsed
    machine_used = (busy_seconds() - machine_cpu) / elapsed
    load.other_cpu = max(0.0, machine_used - load.daemon_cpu - load.bench_cpu)
    return load


# -- matching ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Arrival:
    at: float  # provider request started
    done_at: float  # SMS: the same; email: DATA accepted
    incidents: tuple[int, ...]  # more than one: a bundle


def _mail_text(raw: bytes) -> str:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    parts = [str(message.get("Subject", ""))]
    for part in message.walk():
        if part.get_content_type() == "text/plain" and isinstance(part, EmailMessage):
            content = part.get_content()
            if isinstance(content, str):
                parts.append(content)
    return "\n".join(parts)


def _numbers(text: str) -> tuple[int, ...]:
    return tuple(sorted({int(m) for m in INSTANCE.findall(text)}))


_SUBJECT = re.compile(rb"^Subject: (.*)$", re.MULTILINE)


def _mail_numbers(raw: bytes) -> tuple[int, ...]:
    """The incidents an email is about. A single page names one in its subject: a regex on the
    raw bytes finds it (parsing every email would stall this loop, and FakeTwilio with it);
    anything else (a bundle) is parsed in full."""
    subject = _SUBJECT.search(raw)
    numbers = _numbers(subject.group(1).decode("ascii", "replace")) if subject else ()
    if len(numbers) == 1 and b"new incidents" not in raw:
        return numbers
    return _numbers(_mail_text(raw))


class Collector:
    """What reached the peers, matched to incident numbers; each arrival is parsed once (this
    runs on the loop that serves FakeTwilio, so it must stay cheap)."""

    def __init__(self, twilio: FakeTwilio, stamps: SmtpStamps) -> None:
        self._twilio = twilio
        self._stamps = stamps
        self.sms: list[Arrival] = []
        self.mail: list[Arrival] = []
        self.first_sms: dict[int, Arrival] = {}
        self.first_mail: dict[int, Arrival] = {}

    def update(self) -> None:
        for request in self._twilio.requests[len(self.sms) :]:
            numbers = _numbers(request.body) if request.kind == "sms" else ()
            self._add(Arrival(request.at, request.at, numbers), self.sms, self.first_sms)
        for mail in self._stamps.arrivals[len(self.mail) :]:
            arrival = Arrival(mail.ehlo_at, mail.data_at, _mail_numbers(mail.raw))
            self._add(arrival, self.mail, self.first_mail)

    @staticmethod
    def _add(arrival: Arrival, into: list[Arrival], first: dict[int, Arrival]) -> None:
        into.append(arrival)
        for number in arrival.incidents:
            if number not in first or arrival.at < first[number].at:
                first[number] = arrival

    def complete(self, numbers: Sequence[int]) -> bool:
        self.update()
        return all(n in self.first_sms and n in self.first_mail for n in numbers)


async def wait_for_pages(collector: Collector, numbers: Sequence[int], seconds: float) -> None:
    """Until every number has its SMS and its email, or nothing new arrived for ``seconds``."""
    last_count = -1
    quiet_since = time.monotonic()
    while not collector.complete(numbers):
        count = len(collector.sms) + len(collector.mail)
        if count != last_count:
            last_count, quiet_since = count, time.monotonic()
        elif time.monotonic() - quiet_since > seconds:
            return
        await asyncio.sleep(0.1)


# -- figures ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    name: str
    values_ms: tuple[float, ...]

    def cells(self) -> str:
        v = self.values_ms
        figures = [percentile(v, p) for p in (50, 90, 99)] + [max(v, default=float("nan"))]
        return f"| {self.name} | {len(v):,} | " + " | ".join(f"{x:.1f}" for x in figures) + " |"


@dataclass
class Stages:
    """From the daemon's database, by incident number: microsecond wall-clock stamps."""

    opened: dict[int, float] = field(default_factory=dict)
    created: dict[tuple[int, str], float] = field(default_factory=dict)
    sent: dict[tuple[int, str], float] = field(default_factory=dict)


def read_stages(state: Path) -> Stages:
    db = state / "responder.db"
    stages = Stages()
    if not db.exists():
        return stages
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows = conn.execute(
            "SELECT i.title, i.opened_at, p.channel, p.created_at, p.sent_at "
            "FROM incidents i LEFT JOIN pages p ON p.incident_id = i.id AND p.step = 'L1'"
        ).fetchall()
    for title, opened, channel, created, sent in rows:
        match = INSTANCE.search(str(title))
        if match is None:
            continue
        number = int(match.group(1))
        stages.opened[number] = opened / 1e6
        if channel is not None:
            stages.created[(number, channel)] = created / 1e6
            if sent is not None:
                stages.sent[(number, channel)] = sent / 1e6
    return stages


@dataclass
class Outcome:
    load: Load
    sms: dict[int, Arrival]
    mail: dict[int, Arrival]
    sms_requests: int
    mail_messages: int
    stages: Stages
    metrics: dict[str, float]
    cold_sms_ms: float
    cold_mail_ms: float

    def ok_sent(self) -> list[Sent]:
        return [s for s in self.load.sent if s.status == 200]

    def latencies(self, arrivals: dict[int, Arrival], *, done: bool = False) -> list[float]:
        out = []
        for s in self.ok_sent():
            arrival = arrivals.get(s.number)
            if arrival is not None:
                out.append(((arrival.done_at if done else arrival.at) - s.sent_at) * 1000)
        return out

    def missing(self, arrivals: dict[int, Arrival]) -> int:
        return sum(1 for s in self.ok_sent() if s.number not in arrivals)

    def bundled(self, arrivals: dict[int, Arrival]) -> int:
        return sum(
            1
            for s in self.ok_sent()
            if len(arrivals.get(s.number, Arrival(0, 0, ())).incidents) > 1
        )


def stage_rows(outcome: Outcome) -> list[Row]:
    st = outcome.stages
    sent = {s.number: s for s in outcome.ok_sent()}
    rows: dict[str, list[float]] = {}

    def add(name: str, value_s: float) -> None:
        rows.setdefault(name, []).append(value_s * 1000)

    for number, s in sent.items():
        opened = st.opened.get(number)
        if opened is None:
            continue
        add("webhook sent → incident opened (ingest handler's clock)", opened - s.sent_at)
        add("incident opened → 200 back at the client (store commit)", s.answered_at - opened)
        created_at = [t for c in ("sms", "email") if (t := st.created.get((number, c)))]
        if created_at:
            add(
                "incident opened → its pages created (escalation pass's clock)",
                min(created_at) - opened,
            )
        for channel, arrivals in (("sms", outcome.sms), ("email", outcome.mail)):
            created = st.created.get((number, channel))
            arrival = arrivals.get(number)
            if created is None:
                continue
            if arrival is not None:
                add(f"{channel} page created → provider request started", arrival.at - created)
            done = st.sent.get((number, channel))
            if done is not None and arrival is not None:
                add(f"{channel} provider request started → page marked sent", done - arrival.at)
    return [Row(name, tuple(values)) for name, values in rows.items()]


def slice_rows(outcome: Outcome, width: float) -> list[str]:
    """p50/p99 per slice of the run: a latency that grows with time is a queue that grows."""
    sent = outcome.ok_sent()
    if not sent:
        return []
    start = min(s.sent_at for s in sent)
    slices: dict[int, list[Sent]] = {}
    for s in sent:
        slices.setdefault(int((s.sent_at - start) // width), []).append(s)
    lines = []
    for index in sorted(slices):
        items = slices[index]
        cells = []
        for arrivals in (outcome.sms, outcome.mail):
            values = [
                (arrivals[s.number].at - s.sent_at) * 1000 for s in items if s.number in arrivals
            ]
            cells.append(f"{percentile(values, 50):.1f} | {percentile(values, 99):.1f}")
        span = f"{index * width:g}-{(index + 1) * width:g} s"
        lines.append(f"| {span} | {len(items):,} | " + " | ".join(cells) + " |")
    return lines


def metric_mean(metrics: dict[str, float], name: str) -> float:
    count = metrics.get(f"{name}_count", 0.0)
    return metrics.get(f"{name}_sum", 0.0) / count * 1000 if count else float("nan")


def write_csv(outcome: Outcome, path: Path) -> None:
    """One row per measured incident: every stamp, seconds since the epoch (empty: none)."""
    st = outcome.stages

    def cell(value: float | None) -> str:
        return "" if value is None else f"{value:.6f}"

    lines = [
        "number,status,sent_at,answered_at,opened_at,sms_created_at,sms_request_at,"
        "sms_marked_sent_at,email_created_at,email_ehlo_at,email_data_at,email_marked_sent_at"
    ]
    for s in outcome.load.sent:
        sms, mail = outcome.sms.get(s.number), outcome.mail.get(s.number)
        values = [
            s.sent_at,
            s.answered_at,
            st.opened.get(s.number),
            st.created.get((s.number, "sms")),
            sms.at if sms else None,
            st.sent.get((s.number, "sms")),
            st.created.get((s.number, "email")),
            mail.at if mail else None,
            mail.done_at if mail else None,
            st.sent.get((s.number, "email")),
        ]
        lines.append(f"{s.number},{s.status}," + ",".join(cell(v) for v in values))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def report(outcome: Outcome, args: argparse.Namespace, info: dict[str, str], pinned: bool) -> str:
    load = outcome.load
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])
    sms_ms = outcome.latencies(outcome.sms)
    mail_ms = outcome.latencies(outcome.mail)
    answer_ms = [(s.answered_at - s.sent_at) * 1000 for s in outcome.ok_sent()]
    errors = sum(1 for s in load.sent if s.status != 200)
    sms_missing, mail_missing = outcome.missing(outcome.sms), outcome.missing(outcome.mail)
    m = outcome.metrics
    lines: list[str] = []
    out = lines.append
    out("## Pages: webhook to provider request\n")
    out(f"Command: `{command}`\n")
    out(
        f"Machine: nproc {info['nproc']} ({info['cpu']}), Linux {info['kernel']}; "
        f"Python {info['python']}, aiohttp {info['aiohttp']}, SQLite {info['sqlite']} "
        f"(`synchronous: {info['synchronous']}`, as shipped).\n"
    )
    placement = (
        f"`responder serve` pinned to core {SERVER_CORE}, this process (load generator, "
        f"FakeTwilio, aiosmtpd thread) to core {LOAD_CORE}"
        if pinned
        else "no CPU pinning (fewer than two CPUs or no taskset)"
    )
    out(
        f"Setup: {placement}. {load.rate:g} webhooks/s for {load.seconds:g} s, open loop, each a "
        f"new alert in a new group (a new incident); {args.contacts} contacts with SMS and email, "
        "incident n routed to contact n mod contacts by a tagging rule in front of the shipped "
        "rules, policy level 1 at once. `delivery.rate_limits` raised to 9999/1m for sms and "
        "email and `delivery.budget.sms_voice_per_hour` to 1,000,000 (the defaults would hold "
        f"and bundle these pages by design). Warm-up: {args.warmup:g} s at 10/s, not counted.\n"
    )
    out(
        "Latency counts from `time.time()` just before the POST; the provider request starts "
        "when FakeTwilio's handler stamps it (body read) and, for email, at the connection's "
        "EHLO (aiosmtpd hook).\n"
    )
    out("| from webhook sent to | n | p50 ms | p90 ms | p99 ms | max ms |")
    out("| --- | ---: | ---: | ---: | ---: | ---: |")
    out(Row("SMS request started at Twilio", tuple(sms_ms)).cells())
    out(Row("email request started at SMTP (EHLO)", tuple(mail_ms)).cells())
    out(
        Row("email accepted (DATA done)", tuple(outcome.latencies(outcome.mail, done=True))).cells()
    )
    out(Row("webhook answered 200", tuple(answer_ms)).cells())
    out("")
    width = max(1.0, round(load.seconds / 6))
    out(f"### By time into the run ({width:g} s slices)\n")
    out("| webhooks sent | n | SMS p50 ms | SMS p99 ms | email p50 ms | email p99 ms |")
    out("| --- | ---: | ---: | ---: | ---: | ---: |")
    for line in slice_rows(outcome, width):
        out(line)
    out("")
    out("### Where the time goes (daemon's database, same wall clock)\n")
    out("| stage | n | p50 ms | p90 ms | p99 ms | max ms |")
    out("| --- | ---: | ---: | ---: | ---: | ---: |")
    for row in stage_rows(outcome):
        out(row.cells())
    out("")
    out("### Checks\n")
    out("| check | value |")
    out("| --- | ---: |")
    out(
        f"| webhooks sent / answered 200 / errors | {len(load.sent):,} / "
        f"{len(outcome.ok_sent()):,} / {errors} |"
    )
    out(
        f"| SMS requests / incidents without SMS / incidents in a bundle | "
        f"{outcome.sms_requests:,} / {sms_missing} / {outcome.bundled(outcome.sms)} |"
    )
    out(
        f"| emails / incidents without email / incidents in a bundle | "
        f"{outcome.mail_messages:,} / {mail_missing} / {outcome.bundled(outcome.mail)} |"
    )
    out(
        f"| first page after start (cold), SMS / email ms | {outcome.cold_sms_ms:.1f} / "
        f"{outcome.cold_mail_ms:.1f} |"
    )
    out(
        "| this process's loop lag (sends behind schedule) p99 / max ms | "
        f"{percentile(load.lags_ms, 99):.1f} / {max(load.lags_ms, default=0.0):.1f} |"
    )
    out(
        "| CPU used: daemon / this process / everything else on the machine (1.0 = one core) "
        f"| {load.daemon_cpu:.2f} / {load.bench_cpu:.2f} / {load.other_cpu:.2f} |"
    )
    out(
        "| TCP listen-queue overflows / SYN retransmits, load and drain (machine-wide) | "
        f"{load.tcp.get('ListenOverflows', 0)} / {load.tcp.get('TCPSynRetrans', 0)} |"
    )
    out(
        f"| escalation pass mean ms (n) | "
        f"{metric_mean(m, 'responder_escalation_pass_seconds'):.2f} "
        f"({m.get('responder_escalation_pass_seconds_count', 0):,.0f}) |"
    )
    batches = m.get("responder_store_commit_batch_size_count", 0.0)
    if batches:
        out(
            f"| store commits: n / mean batch / mean ms | {batches:,.0f} / "
            f"{m['responder_store_commit_batch_size_sum'] / batches:.2f} / "
            f"{metric_mean(m, 'responder_store_commit_duration_seconds'):.2f} |"
        )
    out("")
    if load.other_cpu > 0.2:
        out(
            f"**Warning:** other processes used {load.other_cpu:.2f} cores of this machine during "
            "the run; the daemon and the peers competed with them, so the figures above are "
            "worse and noisier than on an otherwise idle machine.\n"
        )
    sms_p99 = percentile(sms_ms, 99)
    mail_p99 = percentile(mail_ms, 99)
    complete = not errors and not sms_missing and not mail_missing
    met = complete and sms_p99 < TARGET_P99_MS and mail_p99 < TARGET_P99_MS
    out("### Target\n")
    out("| target | measured | met |")
    out("| --- | ---: | --- |")
    for name, value in (("SMS", sms_p99), ("email", mail_p99)):
        ok = value < TARGET_P99_MS and complete
        out(
            f"| {name}: webhook → provider request p99 < {TARGET_P99_MS:g} ms at "
            f"{load.rate:g} incidents/s | {value:.1f} ms | {'yes' if ok else '**no**'} |"
        )
    out(
        f"| every webhook answered 200, every incident paged | "
        f"{'all' if complete else 'no'} | {'yes' if complete else '**no**'} |"
    )
    out("")
    out(f"Target met: {'**yes**' if met else '**no**'}.")
    return "\n".join(lines) + "\n"


# -- the run ----------------------------------------------------------------------------------


async def run(args: argparse.Namespace, pinned: bool) -> Outcome:
    token = secrets.token_urlsafe(32)
    work = Path(tempfile.mkdtemp(prefix="bench-pages-"))
    try:
        async with FakeTwilio(hang_seconds=5) as twilio, SmtpTestServer() as smtp:
            stamps = SmtpStamps()
            stamps.install(smtp)
            collector = Collector(twilio, stamps)
            port = free_port()
            config = write_config(work, port, token, twilio, smtp, args.contacts)
            daemon = await start_daemon(config, port, work, pinned)
            try:
                connector = aiohttp.TCPConnector(limit=0, force_close=False)
                timeout = aiohttp.ClientTimeout(total=30)
                async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                    warm_numbers = [WARMUP_BASE + i for i in range(max(1, int(args.warmup * 10)))]
                    warm = await generate(session, daemon, token, warm_numbers, 10.0, args.contacts)
                    await wait_for_pages(collector, warm_numbers, 5.0)
                    cold = warm.sent[0]
                    cold_sms = collector.first_sms.get(cold.number)
                    cold_mail = collector.first_mail.get(cold.number)
                    skip_sms, skip_mail = len(collector.sms), len(collector.mail)
                    numbers = list(range(int(args.rate * args.seconds)))
                    print(
                        f"bench_pages: {len(numbers)} webhooks at {args.rate:g}/s ...",
                        file=sys.stderr,
                    )
                    gc.collect()
                    gc.disable()  # this process's pauses would show as daemon latency
                    tcp_before = tcp_counters()
                    try:
                        load = await generate(
                            session, daemon, token, numbers, args.rate, args.contacts
                        )
                        await wait_for_pages(collector, numbers, 10.0)
                    finally:
                        gc.enable()
                    load.tcp = {k: v - tcp_before[k] for k, v in tcp_counters().items()}
                    metrics = await scrape(session, daemon)
            finally:
                await stop_daemon(daemon)
            collector.update()
            sms_list = [a for a in collector.sms[skip_sms:] if a.incidents]
            mail_list = collector.mail[skip_mail:]
            stages = read_stages(daemon.state)
            return Outcome(
                load=load,
                sms={n: a for n, a in collector.first_sms.items() if n < WARMUP_BASE},
                mail={n: a for n, a in collector.first_mail.items() if n < WARMUP_BASE},
                sms_requests=len(sms_list),
                mail_messages=len(mail_list),
                stages=stages,
                metrics=metrics,
                cold_sms_ms=(cold_sms.at - cold.sent_at) * 1000 if cold_sms else float("nan"),
                cold_mail_ms=(cold_mail.at - cold.sent_at) * 1000 if cold_mail else float("nan"),
            )
    finally:
        if args.keep:
            print(f"bench_pages: work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=100.0, help="new incidents per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the measured run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up at 10/s")
    parser.add_argument(
        "--contacts",
        type=int,
        default=0,
        help="contacts the incidents rotate over (default: the rate, one page each a second)",
    )
    parser.add_argument("--quick", action="store_true", help="5 s run, 1 s warm-up")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--csv", type=Path, help="write every incident's time stamps here")
    parser.add_argument(
        "--no-write", action="store_true", help=f"print only; do not write {RESULTS.name}"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup = 5.0, 1.0
    if args.contacts <= 0:
        args.contacts = max(1, round(args.rate))
    pinned = shutil.which("taskset") is not None and len(os.sched_getaffinity(0)) >= 2
    if pinned:
        os.sched_setaffinity(0, {LOAD_CORE})
    info = machine()
    outcome = asyncio.run(run(args, pinned))
    text = report(outcome, args, info, pinned)
    if args.csv is not None:
        write_csv(outcome, args.csv)
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text, encoding="utf-8")
        print(f"bench_pages: written to {RESULTS.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

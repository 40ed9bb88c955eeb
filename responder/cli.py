"""The ``responder`` command: serve, token, check, alerts, and the rule tools.

Exit codes: 0 success, 1 a check or test failed, 2 bad usage or a config error,
3 the daemon could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import logging
import os
import shlex
import signal
import socket
import sqlite3
import ssl
import sys
import threading
import urllib.parse
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web

from responder import __version__, build
from responder.advice import config_warnings
from responder.auth import ensure_generated_token, token_path
from responder.classify import format_duration, render_explanation, run_rule_tests
from responder.client import ApiClient, CertificateRefused, ClientError, CredentialsMissing
from responder.clock import SystemClock
from responder.config import Config, load_config
from responder.contain import ActionRunner, GuardState, ParamRejected, RunContext, decide, evidence
from responder.limits import OPEN_FILES_FEW, raise_open_file_limit
from responder.log import AccessLog, fields, setup_logging
from responder.plan import escalation_plan, render_oncall, render_plan
from responder.report import incident_report, period_report
from responder.runtime import Snapshot, load_snapshot, log_config_warnings
from responder.store import SchemaTooNew, StoreError, sqlite_path
from responder.webhook import PayloadError, parse_webhook
from responder.yamlfile import ConfigError, parse_duration

log = logging.getLogger("responder")

EXIT_FAILED = 1
# Connections waiting to be accepted (see cmd_serve).
LISTEN_BACKLOG = 1024
# How long a connection may take to send a request's line and headers, counted from its
# accept or from the end of its previous answer; then it is closed, idle or trickling a
# header byte at a time, and its file descriptor is free again. This is aiohttp's keep-alive
# timer: one per connection, and an answer only moves its due time (no timer per request);
# arriving bytes do not move it. aiohttp's defaults are 75 s (run_app) and about an hour
# (AppRunner). With TLS it starts after the handshake, which asyncio bounds at 60 s. The
# body then has ingest.BODY_TIMEOUT_S.
KEEPALIVE_TIMEOUT_S = 30.0
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
# The most incidents a period report reads (the API's largest page).
REPORT_LIMIT = 10_000


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    serving = getattr(args, "run", None) is cmd_serve
    if not serving and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, signal.SIG_DFL)  # held for the daemon only (entry.py)
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_USAGE
    try:
        result: int = args.run(args)
    except ConfigError as exc:
        print(f"responder: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ClientError as exc:
        print(f"responder: {exc}", file=sys.stderr)
        if isinstance(exc, CertificateRefused | CredentialsMissing):
            return EXIT_USAGE  # a matter of trust or config to set right, not one to retry
        if exc.status is None or exc.status >= 500:
            return EXIT_UNREACHABLE  # down, or up without its store: try again later
        return EXIT_USAGE if exc.status == 400 else EXIT_FAILED  # refused: 404, 409, 401
    except BrokenPipeError:
        # Output piped into a reader that stopped (`responder incident 1 | head`): as other
        # command-line tools, quietly. Python would complain again flushing at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except (OSError, OverflowError) as exc:  # a state directory under a file, a date too far
        print(f"responder: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    return result


class _Version(argparse.Action):
    """``--version``: the build is looked up only when asked (it lists the package's files)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(f"responder {__version__} ({build.describe()})")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="responder",
        description="Turns Alertmanager webhooks into containment and pages that reach a human.",
    )
    parser.add_argument(
        "--version", action=_Version, nargs=0, help="show the version and the build, and exit"
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "-c",
            "--config",
            type=Path,
            default=Path("config.yaml"),
            help="config file (default: config.yaml)",
        )
        sub.add_argument("--state-dir", type=Path, help="state directory (overrides config)")
        return sub

    def add_daemon_address(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--url", help="daemon URL (default: from the config's listen address)")
        sub.add_argument(
            "--cacert",
            type=Path,
            metavar="FILE",
            help="for an https daemon, trust this CA or certificate (PEM) and no other; "
            "the certificate must name the URL's host (default: server.tls.cert_file, and "
            "with --url this system's CAs too); refused for a plain-HTTP daemon",
        )

    def add_page_options(sub: argparse.ArgumentParser, what: str) -> None:
        sub.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
        sub.add_argument(
            "--before",
            type=int,
            metavar="ID",
            help=f"only {what} older than this id: the next page of a list cut at --limit",
        )

    serve = command("serve", "run the daemon")
    serve.add_argument("--listen", metavar="HOST:PORT", help="listen address (overrides config)")
    serve.set_defaults(run=cmd_serve)

    token = command("token", "print the webhook token (generating it if needed)")
    token.set_defaults(run=cmd_token)

    check = command("check", "validate the config and every rule file it names")
    check.set_defaults(run=cmd_check)

    alerts = command("alerts", "list stored alerts (asks the running daemon)")
    alerts.add_argument("--status", action="append", help="firing, resolved or stale")
    alerts.add_argument(
        "--filter", action="append", default=[], help='label matcher, e.g. severity="critical"'
    )
    add_page_options(alerts, "alerts")
    alerts.add_argument(
        "--json", action="store_true", help="print the data of the daemon's answer as JSON"
    )
    add_daemon_address(alerts)
    alerts.set_defaults(run=cmd_alerts)

    test = commands.add_parser(
        "test",
        help="run rule test files (promtool style)",
        description="Run rule test files: each lists alerts and the classification expected; "
        "a failure prints the difference and how the alert was classified.",
    )
    test.add_argument("files", nargs="+", type=Path, metavar="FILE", help="test file or folder")
    test.set_defaults(run=cmd_test)

    explain = command("explain", "show how an alert would be classified, and why")
    given = explain.add_mutually_exclusive_group(required=True)
    given.add_argument(
        "--labels",
        action="append",
        metavar="K=V,...",
        help="the alert's labels, e.g. alertname=TargetDown,severity=critical (repeatable)",
    )
    given.add_argument(
        "--payload", type=Path, metavar="FILE", help="an Alertmanager webhook body (JSON)"
    )
    explain.add_argument("--at", metavar="TIME", help="ISO 8601 time to classify at (default now)")
    explain.add_argument(
        "--all-matchers", action="store_true", help="show every matcher of rules that missed"
    )
    explain.set_defaults(run=cmd_explain)

    def daemon_command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = command(name, help_text)
        add_daemon_address(sub)
        sub.add_argument(
            "--json", action="store_true", help="print the data of the daemon's answer as JSON"
        )
        return sub

    incidents = daemon_command("incidents", "list incidents (open ones by default)")
    # One or the other: --all with --state silently ignored the states.
    which = incidents.add_mutually_exclusive_group()
    which.add_argument(
        "--state", action="append", help="open, triggered, acknowledged, snoozed, resolved"
    )
    which.add_argument("--all", action="store_true", help="every state")
    add_page_options(incidents, "incidents")
    incidents.set_defaults(run=cmd_incidents)

    show = daemon_command("incident", "show one incident with its timeline and pages")
    show.add_argument("id", type=int)
    show.set_defaults(run=cmd_incident)

    for name, action, help_text in (
        ("ack", "acknowledge", "acknowledge an incident: escalation stops"),
        ("unack", "unacknowledge", "take an acknowledgement back: escalation starts over"),
        (
            "unsnooze",
            "unsnooze",
            "end a snooze now: the level reached is paged again and escalation resumes",
        ),
        ("resolve", "resolve", "resolve an incident by hand"),
        ("note", "note", "add a note to an incident's timeline"),
    ):
        sub = daemon_command(name, help_text)
        sub.add_argument("id", type=int)
        sub.add_argument("--by", help="who (default: $USER, else your login name)")
        sub.add_argument(
            "text" if name == "note" else "--note", nargs=None if name == "note" else "?"
        )
        sub.set_defaults(run=cmd_act, action=action)
    snooze = daemon_command("snooze", "hold escalation for a while (e.g. 30m), then resume")
    snooze.add_argument("id", type=int)
    snooze.add_argument("duration", help="30m, 2h, ...")
    snooze.add_argument("--by", help="who (default: $USER, else your login name)")
    snooze.add_argument("--note")
    snooze.set_defaults(run=cmd_act, action="snooze")
    reassign = daemon_command("reassign", "hand an incident to a contact, who is paged")
    reassign.add_argument("id", type=int)
    reassign.add_argument("contact")
    reassign.add_argument("--by", help="who (default: $USER, else your login name)")
    reassign.add_argument("--note")
    reassign.set_defaults(run=cmd_act, action="reassign")

    oncall = command("oncall", "who is on call now (or --at TIME), per schedule, role and team")
    oncall.add_argument("--at", metavar="TIME", help="ISO 8601 time (default now)")
    oncall.add_argument("--tz", help="show times in this IANA zone (default UTC)")
    oncall.set_defaults(run=cmd_oncall)

    drill = daemon_command(
        "drill", "send a marked test page to contacts and report who answered, how, how fast"
    )
    drill.add_argument("--policy", help="everyone the policy's levels reach now")
    drill.add_argument("--contact", action="append", default=[], help="a contact (repeatable)")
    drill.add_argument("--wait", default="5m", help="how long to wait for answers (default 5m)")
    drill.add_argument("--list", action="store_true", help="show past drills instead")
    drill.set_defaults(run=cmd_drill)

    actions = daemon_command(
        "actions",
        "containment: status, kill switch, breaker reset, lift by hand, a change removed by hand",
    )
    actions.add_argument(
        "verb",
        choices=["status", "pause", "resume", "reset", "lift", "lifted"],
        help="status; pause --reason TEXT: no action or lift starts, nor a further attempt "
        "of one under way (a lift stopped so waits for resume; a lift by hand still runs); "
        "resume; reset ACTION TARGET (ACTION alone: its breaker across targets); "
        "lift RUN: run the run's undo now (again, after it failed); "
        "lifted RUN --reason TEXT: record that the run's change is gone (you removed it by "
        "hand, or its undo can never succeed): its lift ends, nothing runs, and its "
        "ContainmentLiftFailed alert resolves",
    )
    actions.add_argument(
        "name",
        nargs="?",
        help="reset: the action; lift, lifted: the run (its id, or 8+ of its start)",
    )
    actions.add_argument(
        "target",
        nargs="?",
        help="reset: the target, as status shows it (none: the breaker across targets)",
    )
    actions.add_argument("--reason", help="pause, lifted: why (required, recorded)")
    actions.add_argument("--by", help="who (default: $USER, else your login name)")
    actions.set_defaults(run=cmd_actions)

    heartbeats = daemon_command(
        "heartbeats", "heartbeats watched by the dead-man switch and when each was last heard"
    )
    heartbeats.add_argument(
        "--forget",
        metavar="FINGERPRINT",
        help="stop watching a retired heartbeat; its HeartbeatMissing incident resolves",
    )
    heartbeats.set_defaults(run=cmd_heartbeats)

    report = daemon_command(
        "report", "Markdown for the post-incident review (ID), or MTTA/MTTR (--since)"
    )
    report.add_argument("id", type=int, nargs="?")
    report.add_argument("--since", help="a duration back from now (30d) or an ISO 8601 time")
    report.set_defaults(run=cmd_report)
    return parser


# -- serve ------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    # Imported here: the other commands stay fast.
    from responder.app import build_app, finish_requests_on_stop

    snapshot = load_snapshot(args.config, listen=args.listen, state_dir=args.state_dir)
    config = snapshot.config
    setup_logging(config.logging.level, config.logging.format)
    generated = None
    if not config.auth.configured:
        generated, created = ensure_generated_token(config.state_dir)
        log.warning(
            "no credentials configured: webhooks and the API need the generated bearer token"
            if created
            else "no credentials configured: using the generated bearer token",
            extra=fields(token_file=str(token_path(config.state_dir)), show_with="responder token"),
        )
    ssl_context = server_tls(config)
    app = build_app(
        snapshot,
        generated_token=generated,
        listen_override=args.listen,
        state_dir_override=args.state_dir,
    )
    app.on_startup.append(finish_requests_on_stop)
    scheme = "https" if ssl_context else "http"
    log.info(
        "responder starting",
        extra=fields(
            version=__version__,
            listen=f"{scheme}://{config.server.listen}",
            config=str(config.path),
            state_dir=str(config.state_dir),
            rules=snapshot.classifier.rule_count,
            build=build.describe(),
        ),
    )
    stale = build.stale_modules()
    if stale:
        log.warning(
            "compiled modules whose source changed since: the old code runs until the "
            "install is run again",
            extra=fields(modules=stale, rebuild="pip install -e ."),
        )
    log_config_warnings(snapshot)
    before, after = raise_open_file_limit()
    if after < OPEN_FILES_FEW:
        log.warning(
            "few file descriptors: many idle connections could lock webhooks out",
            extra=fields(open_files=after, was=before, raise_with="LimitNOFILE= in the unit"),
        )
    try:
        # Bound before the app starts: an address in use fails here, before the store is
        # opened, anything is recovered, or systemd is told the daemon is ready.
        try:
            sockets = listening_sockets(config.server.host, config.server.port)
        except OSError as exc:
            raise OSError(
                f"cannot listen on {config.server.listen}: {exc.strerror or exc}"
            ) from exc
        web.run_app(
            app,
            sock=sockets,
            ssl_context=ssl_context,
            print=None,
            handle_signals=True,
            # aiohttp's default of 128 overflowed when a burst of new connections met a busy
            # loop (bench_ingest, 5,900 req/s after a saturating run: 21 SYNs dropped, each
            # answered a second late). The kernel caps it at net.core.somaxconn.
            backlog=LISTEN_BACKLOG,
            **runner_options(config),
        )
    except SchemaTooNew as exc:
        # A newer responder's database: restarting cannot help (the unit does not restart
        # on the config-error status).
        log.error("responder cannot start", extra=fields(error=str(exc)))
        return EXIT_USAGE
    except (StoreError, OSError) as exc:
        # The database cannot be opened or migrated, another responder holds it, or the
        # address is taken: say so in one line, not a traceback; systemd restarts (exit 1)
        # since the cause may pass.
        log.error("responder cannot start", extra=fields(error=str(exc)))
        return EXIT_FAILED
    log.info("responder stopped")
    return 0


def server_tls(config: Config) -> ssl.SSLContext | None:
    """The server's TLS context (``server.tls``), or None for plain HTTP."""
    if config.server.tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.server.tls.cert_file, config.server.tls.key_file)
    return context


def runner_options(config: Config) -> dict[str, Any]:
    """What ``serve`` gives aiohttp's runner besides sockets and TLS; ``web.AppRunner``
    takes the same, so tests serve the app as the daemon does."""
    return {
        "shutdown_timeout": config.server.shutdown_timeout,
        "keepalive_timeout": KEEPALIVE_TIMEOUT_S,
        "access_log": logging.getLogger("responder.access") if config.server.access_log else None,
        "access_log_class": AccessLog,
    }


def listening_sockets(host: str, port: int) -> list[socket.socket]:
    """The server's sockets, bound and listening (connections queue until the app serves
    them, so READY=1 is never sent for an address that refuses): one per address of
    ``host``."""
    sockets: list[socket.socket] = []
    seen: set[tuple[Any, ...]] = set()
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            if address in seen:
                continue
            seen.add(address)
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


# -- token, check ---------------------------------------------------------------------------


def cmd_token(args: argparse.Namespace) -> int:
    config = load_config(args.config, state_dir=args.state_dir)
    if config.auth.bearer_token is not None:
        print(config.auth.bearer_token.value)
        return 0
    if config.auth.configured:
        print(
            "responder: the config uses basic auth and no bearer token; nothing to print",
            file=sys.stderr,
        )
        return EXIT_FAILED
    token, created = ensure_generated_token(config.state_dir)
    if created:
        print(
            f"responder: generated a new token in {token_path(config.state_dir)}", file=sys.stderr
        )
    print(token.value)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    snapshot = load_snapshot(args.config, state_dir=args.state_dir)
    rules, files = snapshot.classifier.rule_count, len(snapshot.classifier.files)
    print(f"{snapshot.config.path}: OK ({_count(rules, 'rule')} from {_count(files, 'file')})")
    for warning in config_warnings(snapshot):
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


# -- test, explain --------------------------------------------------------------------------


def cmd_test(args: argparse.Namespace) -> int:
    return run_rule_tests(args.files, sys.stdout)


def cmd_explain(args: argparse.Namespace) -> int:
    snapshot = load_snapshot(args.config, state_dir=args.state_dir)
    at = _parse_time(args.at) if args.at else datetime.now(UTC)
    if args.payload is not None:
        try:
            message = parse_webhook(args.payload.read_bytes())
        except OSError as exc:
            raise ConfigError(str(args.payload), 0, "payload", exc.strerror or str(exc)) from exc
        except PayloadError as exc:
            raise ConfigError(str(args.payload), 0, "payload", str(exc)) from exc
        label_sets = [(dict(a.labels), dict(a.annotations)) for a in message.alerts]
    else:
        label_sets = [(parse_label_list(",".join(args.labels)), {})]
    guards = _saved_guards(snapshot)
    for index, (labels, notes) in enumerate(label_sets):
        if index:
            print()
        explanation = snapshot.classifier.explain(labels, at)
        print(render_explanation(explanation, all_matchers=args.all_matchers), end="")
        c = explanation.classification
        if c.heartbeat:
            watch = (
                f"; {format_duration(c.heartbeat_timeout_s)} without it opens HeartbeatMissing"
                if c.heartbeat_timeout_s is not None
                else ""
            )
            print(f"escalation: none (a heartbeat never opens an incident{watch})")
            continue
        _explain_actions(snapshot, c.actions, c.severity.value, labels, notes, guards, at)
        escalation = snapshot.escalation
        policy = escalation.policy_for(c.policy)
        if policy is None:
            print("escalation: no policy (name one in the rule or set incidents.default_policy)")
            continue
        plan = escalation_plan(
            policy, escalation.directory, c.severity, c.category, at, horizon=timedelta(hours=4)
        )
        hold = f", first page held {c.hold_page_s}s for containment" if c.hold_page_s else ""
        default = "" if c.policy else " (incidents.default_policy: the rules name none)"
        print(f"escalation: policy {policy.name}{default}, if nobody acknowledges (next 4h){hold}:")
        print(render_plan(plan, zone=escalation.business_hours.timezone), end="")
    return 0


def _saved_guards(snapshot: Snapshot) -> GuardState:
    """The daemon's guard state (kill switch, breakers, recent runs), read-only from its
    database if there is one, so explain says which guard would stop an action now."""
    try:
        path = sqlite_path(snapshot.config.storage.url, snapshot.config.state_dir)
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            row = conn.execute("SELECT state FROM guard_state WHERE id = 1").fetchone()
    except (ValueError, sqlite3.Error):
        return GuardState()
    return GuardState.from_json(json.loads(row[0])) if row else GuardState()


def _evidence_lines(plan: dict[str, Any]) -> list[str]:
    """A capture-evidence plan as an operator reads it (its audit form holds each command's
    whole environment)."""
    lines = [f"journal of {j['unit']}: {shlex.join(j['argv'])}" for j in plan["journals"]]
    lines += [f"file {path}" for path in plan["files"]]
    lines += [f"command {c['name']}: {shlex.join(c['argv'])}" for c in plan["commands"]]
    lines.append(f"at most {plan['max_bytes']:,} bytes kept of each")
    return lines


def _explain_actions(
    snapshot: Snapshot,
    names: Sequence[str],
    severity: str,
    labels: dict[str, str],
    notes: dict[str, str],
    guards: GuardState,
    at: datetime,
) -> None:
    """Each action the alert would run, rendered dry, and the guard that would stop it."""
    if not names:
        print("containment: no actions")
        return
    print("containment (dry: nothing runs):")
    runner = ActionRunner(SystemClock(), evidence.root(snapshot.config.state_dir))
    # As the engine gives it (RESPONDER_SEVERITY); no fingerprint: no alert is stored.
    context = RunContext("(explain)", labels.get("alertname", ""), "", severity)
    for name in names:
        action = snapshot.actions.actions[name]
        # A placeholder run id: the real one is made per run (iptables rules carry it).
        prepared = runner.prepare(action, labels, notes, context, run_id="<run-id>")
        if isinstance(prepared, ParamRejected):
            # The value is the caller's own (--labels, --payload): shown, escaped.
            print(f"  - {name}: REFUSED, nothing would run: {prepared}")
            continue
        request = prepared.request.to_audit()
        if "journals" in request:  # an evidence plan: what it would read, one per line
            print(f"  - {name} ({action.kind.value}) on {prepared.target}:")
            for line in _evidence_lines(request):
                print(f"      {line}")
        else:
            shown = request.get("argv") or request.get("url") or request
            print(f"  - {name} ({action.kind.value}) on {prepared.target}: {shown}")
        decision = decide(guards, action, prepared.target, snapshot.containment, at)
        if decision.dry_run:
            print(f"      dry run: {decision.reason}")
        elif decision.wait:
            print(f"      would wait for a free slot: {decision.reason}")
        elif not decision.allowed:
            guard = decision.guard.value if decision.guard else "guard"
            print(f"      would be stopped by {guard}: {decision.reason}")
        if action.on_resolve:
            print("      runs when the alert resolves")


def parse_label_list(text: str) -> dict[str, str]:
    """``a=b,c="d,e"`` into a dict; values may be double-quoted to hold commas or '='."""
    labels: dict[str, str] = {}
    rest = text.strip()
    while rest:
        name, eq, rest = rest.partition("=")
        name = name.strip()
        if not eq or not name:
            raise ConfigError("--labels", 0, "labels", f"expected name=value, got {text!r}")
        rest = rest.lstrip()
        if rest.startswith('"'):
            end = rest.find('"', 1)
            if end < 0:
                raise ConfigError("--labels", 0, name, "unterminated quoted value")
            value, rest = rest[1:end], rest[end + 1 :].lstrip()
            if rest and not rest.startswith(","):
                raise ConfigError("--labels", 0, name, "expected ',' after a quoted value")
            rest = rest[1:]
        else:
            value, _, rest = rest.partition(",")
            value = value.strip()
        labels[name] = value
        rest = rest.strip()
    return labels


def _parse_time(
    text: str, zone: tzinfo | None = None, *, flag: str = "--at", expected: str = "an ISO 8601 time"
) -> datetime:
    """An ISO 8601 time; one without an offset is in ``zone`` (default: this machine's).
    An error names ``flag`` and says what it takes (``expected``)."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError as exc:
        key = flag.lstrip("-")
        raise ConfigError(flag, 0, key, f"expected {expected}, got {text!r}") from exc
    if at.tzinfo is not None:
        return at
    if zone is None:
        return at.astimezone()
    # Through UTC and back: a wall time the zone skips (02:30 on a spring-forward day) reads
    # as the instant it names under the old offset, shown as it is (03:30), not as 02:30.
    return at.replace(tzinfo=zone).astimezone(UTC).astimezone(zone)


# -- incidents --------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> ApiClient:
    config = load_config(args.config, state_dir=args.state_dir)
    return ApiClient.from_config(config, args.url, args.cacert)


def cmd_incidents(args: argparse.Namespace) -> int:
    params = _page_params(args)
    if not args.all:
        params += [("state", s) for s in args.state or ["open"]]
    document = asyncio.run(_client(args).request("GET", "/api/v1/incidents", params=params))
    _say_cut("incidents", args.limit, document)
    if args.json:
        print(_as_json(document["data"]))
        return 0
    if not document["data"]:  # a bare header reads as a fault
        older = "" if args.before is None else f" older than {args.before}"
        if args.all:
            print(f"no incidents{older or ' yet'}")
        else:
            states = " or ".join(args.state or ["open"])
            print(f"no {states} incidents{older} (--all lists every incident)")
        return 0
    print_table(
        ["ID", "STATE", "SEV", "CATEGORY", "OPENED", "ACK BY", "ALERTS", "TITLE"],
        [
            [
                str(i["id"]),
                i["state"],
                i["severity"],
                i["category"],
                shown_time(i["openedAt"]),
                i["acknowledgedBy"] or "",
                f"{i['firingCount']}/{i['alertCount']}",
                i["title"],
            ]
            for i in document["data"]
        ],
    )
    return 0


def _page_params(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The query of one page of a list: --limit and --before."""
    params = [("limit", str(args.limit))]
    if args.before is not None:
        params.append(("before", str(args.before)))
    return params


def _say_cut(what: str, limit: int, document: dict[str, Any]) -> None:
    """A list the daemon cut at --limit says so and where the next page starts: a page of
    rows in a storm must not read as all there is."""
    if document.get("more"):
        print(f"responder: more {what} than the {limit} shown (newest first); --limit shows more"
              f", --before {document['nextBefore']} the next ones", file=sys.stderr)  # fmt: skip


def cmd_incident(args: argparse.Namespace) -> int:
    document = asyncio.run(_client(args).request("GET", f"/api/v1/incidents/{args.id}"))
    data = document["data"]
    if args.json:
        print(_as_json(data))
        return 0
    print(f"incident {data['id']}: {_printable(data['title'])}")
    for key in (
        "state",
        "severity",
        "category",
        "policy",
        "rule",
        "openedAt",
        "acknowledgedAt",
        "acknowledgedBy",
        "firstAcknowledgedAt",
        "firstAcknowledgedBy",
        "resolvedAt",
        "resolvedBy",
        "snoozedUntil",
        "assignee",
        "nextDue",
    ):
        if data.get(key) is not None:
            print(f"  {key + ':':<21}{_printable(str(data[key]))}")
    print("timeline:")
    print_table(
        ["AT", "EVENT", "WHO", "VIA", "DETAIL"],
        [
            [
                shown_time(e["at"]),
                e["kind"],
                e["actor"] or "",
                e["via"] or "",
                json.dumps(e["detail"], ensure_ascii=False, sort_keys=True)[:120],
            ]
            for e in data["timeline"]
        ],
    )
    print("pages:")
    print_table(
        ["ID", "STEP", "KIND", "CONTACT", "CHANNEL", "STATE", "DUE", "ERROR"],
        [
            [
                str(p["id"]),
                p["step"],
                p["kind"],
                p["contact"],
                p["channel"],
                p["state"],
                shown_time(p["dueAt"]),
                p["error"] or "",
            ]
            for p in data["pages"]
        ],
    )
    return 0


def cmd_act(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"by": args.by or operator_name(), "via": "cli"}
    text = getattr(args, "text", None) or getattr(args, "note", None)
    if text:
        body["text"] = text
    if args.action == "snooze":
        body["for"] = args.duration
    if args.action == "reassign":
        body["to"] = args.contact
    path = f"/api/v1/incidents/{args.id}/{args.action}"
    document = asyncio.run(_client(args).request("POST", path, body=body))
    data = document["data"]
    if args.json:
        print(_as_json(document))
    elif not document.get("changed", True):
        # Asking for the state it is in is done, not refused (exit 0), as a script expects.
        noted = " (the note is recorded)" if text else ""
        if args.action == "unsnooze":
            print(f"incident {data['id']} was not snoozed: {data['state']}{noted}")
        else:
            print(f"incident {data['id']} was already {data['state']}{noted}")
    elif args.action == "note":
        print(f"incident {data['id']}: note recorded ({data['state']})")
    elif args.action == "reassign":
        print(f"incident {data['id']}: reassigned to {data['assignee']} ({data['state']})")
    else:
        print(f"incident {data['id']}: {data['state']}")
    return 0


def cmd_drill(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.list:
        document = asyncio.run(client.request("GET", "/api/v1/drills"))
        if args.json:
            print(_as_json(document["data"]))
            return 0
        for result in document["data"]:
            _print_drill(result)
        if not document["data"]:
            print("no drills yet (responder drill starts one)")
        return 0
    try:
        wait = parse_duration(args.wait)
    except ValueError as exc:
        raise ConfigError("--wait", 0, "wait", str(exc)) from None
    body: dict[str, Any] = {"contacts": args.contact, "by": operator_name()}
    if args.policy:
        body["policy"] = args.policy
    result = asyncio.run(_run_drill(client, body, args.wait, wait.total_seconds()))
    if result is None:
        return 130
    if args.json:
        print(_as_json(result))
    else:
        _print_drill(result)
    return 0 if result["answered"] == result["total"] else EXIT_FAILED


async def _run_drill(
    client: ApiClient, body: dict[str, Any], wait_text: str, seconds: float
) -> dict[str, Any] | None:
    """Start a drill and wait for its answers; None when Ctrl-C stopped the waiting. Ctrl-C
    cancels the wait through the loop's own handler: a KeyboardInterrupt could land while
    asyncio sets up or tears down, and end the command with a traceback."""
    waiting = asyncio.current_task()
    assert waiting is not None
    started = await client.request("POST", "/api/v1/drills", body=body)
    drill_id = started["data"]["id"]
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, waiting.cancel)
    print(f"drill {drill_id} started; waiting up to {wait_text} for answers (Ctrl-C stops)",
          flush=True)  # fmt: skip
    try:
        return await _await_drill(client, drill_id, seconds)
    except asyncio.CancelledError:
        # The drill goes on (answers are still recorded): say where to find it.
        print(
            f"\nstopped waiting; `responder drill --list` shows drill {drill_id}'s answers, "
            f"`responder resolve {drill_id}` closes it"
        )
        return None


async def _await_drill(client: ApiClient, drill_id: int, seconds: float) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        result: dict[str, Any] = (await client.request("GET", f"/api/v1/drills/{drill_id}"))["data"]
        if result["answered"] == result["total"] or asyncio.get_running_loop().time() > deadline:
            return result
        await asyncio.sleep(2.0)


def _print_drill(result: dict[str, Any]) -> None:
    print(
        f"drill {result['id']} at {result['openedAt'][:19].replace('T', ' ')}: "
        f"{result['answered']} of {result['total']} answered"
    )
    rows = []
    for name, entry in sorted(result["contacts"].items()):
        answer = entry["answer"]
        channels = ", ".join(f"{p['channel']} {p['state']}" for p in entry["pages"])
        rows.append(
            [
                name,
                channels,
                answer["via"] if answer else "NO ANSWER",
                f"{answer['seconds']:.0f}s" if answer else "",
            ]
        )
    print_table(["CONTACT", "PAGES", "ANSWERED VIA", "AFTER"], rows)


def operator_name() -> str:
    """Who runs the command, for the audit: $USER, else the login name the system knows
    (a root shell, cron or a container often has no $USER), else "cli"."""
    try:
        return os.environ.get("USER") or getpass.getuser() or "cli"
    except (OSError, KeyError):  # no such variable and no passwd entry for the uid
        return "cli"


def shown_time(value: str | None) -> str:
    """A time of the API (ISO 8601, UTC) as the tables show it: 2026-12-03 16:57:37."""
    return (value or "")[:19].replace("T", " ")


# Runs are shown by the start of their id, like git's short hashes; `actions lift` and
# `actions lifted` take it.
RUN_ID_SHOWN = 12


# The TARGET of an action's breaker across targets in `actions status`.
ACROSS_TARGETS = "(every target)"


def cmd_actions(args: argparse.Namespace) -> int:
    client = _client(args)
    by = args.by or operator_name()
    if args.verb == "pause":
        if not args.reason:
            raise ConfigError("actions pause", 0, "", "--reason is required (it is audited)")
        body: dict[str, Any] = {"reason": args.reason, "by": by}
        document = asyncio.run(client.request("POST", "/api/v1/actions/pause", body=body))
        print(f"containment paused by {by}: {args.reason}")
        return 0
    if args.verb == "resume":
        document = asyncio.run(client.request("POST", "/api/v1/actions/resume", body={"by": by}))
        if document.get("changed", True):
            print(f"containment resumed by {by}")
        else:
            print("containment was not paused")
        return 0
    if args.verb == "reset":
        if not args.name:
            raise ConfigError("actions reset", 0, "", "give the action (and the target)")
        body = {"action": args.name, "by": by}
        if args.target:
            body["target"] = args.target
        asyncio.run(client.request("POST", "/api/v1/actions/reset", body=body))
        print(f"breaker reset: {args.name} on {args.target or 'every target'}")
        return 0
    if args.verb == "lift":
        if not args.name:
            raise ConfigError("actions lift", 0, "", "give the run's id (actions status shows it)")
        body = {"run": args.name, "by": by}
        document = asyncio.run(client.request("POST", "/api/v1/actions/lift", body=body))
        print(f"lift of run {document['data']['run']} due now (requested by {by})")
        return 0
    if args.verb == "lifted":
        return _actions_lifted(args, client, by)
    document = asyncio.run(client.request("GET", "/api/v1/actions"))
    data = document["data"]
    if args.json:
        print(_as_json(data))
        return 0
    switch = data["killSwitch"]
    if data["paused"]:
        print(f"PAUSED by {switch['by']} at {shown_time(switch['at'])} UTC: {switch['reason']}")
    else:
        print("containment active" + (" (dry run)" if data["dryRun"] else ""))
    print(f"actions: {', '.join(data['actions']) or 'none configured'}")
    if data["breakers"] or data.get("actionBreakers"):
        print("breakers:")
        print_table(
            ["ACTION", "TARGET", "FAILURES", "OPEN SINCE"],
            [
                # Broken whatever the target: failed runs on that many targets.
                *(
                    [
                        b["action"],
                        ACROSS_TARGETS,
                        f"{b['failures']} runs on {b['targets']} targets",
                        shown_time(b["opened_at"]),
                    ]
                    for b in data.get("actionBreakers", [])
                ),
                *(
                    [
                        b["action"],
                        b["target"],
                        str(b["consecutive_failures"]),
                        shown_time(b["opened_at"]),
                    ]
                    for b in data["breakers"]
                ),
            ],
        )
    print("recent runs:")
    print_table(
        ["STARTED", "RUN", "ACTION", "TARGET", "STATE", "OUTCOME", "INCIDENT", "UNDO"],
        [
            [
                shown_time(r["startedAt"]),
                r["runId"][:RUN_ID_SHOWN],
                r["action"],
                r["target"],
                r["state"],
                r["outcome"] or "",
                str(r["incident"] or ""),
                r["undo"] or "",
            ]
            for r in data["recent"]
        ],
    )
    return 0


def _actions_lifted(args: argparse.Namespace, client: ApiClient, by: str) -> int:
    """`actions lifted RUN --reason TEXT`: the run's change is gone; nothing runs."""
    if not args.name:
        raise ConfigError("actions lifted", 0, "", "give the run's id (actions status shows it)")
    if not args.reason:
        raise ConfigError(
            "actions lifted", 0, "", "--reason is required (it is audited): how the change went"
        )
    body = {"run": args.name, "reason": args.reason, "by": by}
    document = asyncio.run(client.request("POST", "/api/v1/actions/lifted", body=body))
    data = document["data"]
    if args.json:
        print(_as_json(document))
        return 0
    recorded = _printable(f"by {data['by']}: {data['reason']}")
    if not document.get("changed", True):
        # Asking for what is recorded already is done, not refused (exit 0), as ack does.
        print(f"run {data['run']} was already recorded as removed by hand ({recorded})")
        return 0
    print(f"run {data['run']}: its change is recorded as removed by hand ({recorded}); no undo ran")
    if data["liftAlert"]:
        print("its ContainmentLiftFailed alert resolves")
    return 0


def cmd_oncall(args: argparse.Namespace) -> int:
    snapshot = load_snapshot(args.config, state_dir=args.state_dir)
    zone: tzinfo = UTC
    if args.tz:
        try:
            zone = ZoneInfo(args.tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError("--tz", 0, "tz", f"unknown time zone {args.tz!r}") from None
    # A time without an offset is read in the zone it is shown in.
    at = _parse_time(args.at, zone if args.tz else None) if args.at else datetime.now(UTC)
    print(render_oncall(snapshot.escalation.directory, at, zone=zone), end="")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    client = _client(args)
    now = datetime.now(UTC)
    if args.id is not None:
        document = asyncio.run(client.request("GET", f"/api/v1/incidents/{args.id}"))
        if args.json:
            print(_as_json(document["data"]))
            return 0
        print(incident_report(document["data"], now=now), end="")
        return 0
    if not args.since:
        raise ConfigError("report", 0, "", "give an incident ID or --since (e.g. 30d)")
    try:
        since = now - parse_duration(args.since)
    except ValueError:
        since = _parse_time(
            args.since, flag="--since", expected="a duration (30d) or an ISO 8601 time"
        )
    if since > now:  # a period that would end before it starts
        raise ConfigError(
            "report", 0, "", f"--since {args.since} is in the future; give a time before now"
        )
    # Every trigger that started in the period: an incident opened before it that fired
    # again in it counts too.
    params = [("startedSince", since.isoformat()), ("limit", str(REPORT_LIMIT))]
    document = asyncio.run(client.request("GET", "/api/v1/incidents", params=params))
    if args.json:
        print(_as_json(document["data"]))
    else:
        print(period_report(document["data"], since=since, until=now), end="")
    if document.get("more"):
        print(
            f"responder: more than {REPORT_LIMIT} incidents since {since.isoformat()}; the "
            f"figures above cover the newest {REPORT_LIMIT} only: give a shorter --since",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return 0


def cmd_heartbeats(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.forget:
        path = f"/api/v1/heartbeats/{urllib.parse.quote(args.forget, safe='')}"
        asyncio.run(client.request("DELETE", path))
        print(f"heartbeat {args.forget} forgotten")
        return 0
    document = asyncio.run(client.request("GET", "/api/v1/heartbeats"))
    if args.json:
        print(_as_json(document["data"]))
        return 0
    if not document["data"]:
        print(
            "no heartbeats heard yet (alerts a rule marks heartbeat: true, such as Watchdog; "
            "docs/rules.md#heartbeats)"
        )
        return 0

    rows = []
    for h in document["data"]:
        labels = dict(h["labels"])
        alertname = labels.pop("alertname", "")
        timeout = h["timeoutSeconds"]
        rows.append(
            [
                h["fingerprint"],
                alertname,
                h["state"],
                "-" if timeout is None else format_duration(timeout),
                shown_time(h["lastHeard"]),
                shown_time(h["missingSince"]),
                ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
            ]
        )
    print_table(
        ["FINGERPRINT", "ALERTNAME", "STATE", "TIMEOUT", "LAST HEARD", "MISSING SINCE", "LABELS"],
        rows,
    )
    return 0


def _as_json(data: Any) -> str:
    # ASCII only: label text is anyone's, and raw control or bidi characters would reach
    # the terminal; \u escapes keep it valid JSON for jq.
    return json.dumps(data, indent=2, ensure_ascii=True)


# -- alerts ---------------------------------------------------------------------------------


def cmd_alerts(args: argparse.Namespace) -> int:
    config = load_config(args.config, state_dir=args.state_dir)
    client = ApiClient.from_config(config, args.url, args.cacert)
    params = _page_params(args)
    params += [("status", s) for s in args.status or []]
    params += [("filter", f) for f in args.filter]
    document = asyncio.run(client.request("GET", "/api/v1/alerts", params=params))
    if args.json:
        print(_as_json(document["data"]))
    elif not document["data"]:
        chosen = args.status or args.filter or args.before is not None
        print("no alerts" + (" match" if chosen else " stored yet"))
    else:
        print_table(
            ["ID", "STATUS", "SEV", "CATEGORY", "RULE", "ALERTNAME", "STARTED", "SEEN", "LABELS"],
            [_alert_row(alert) for alert in document["data"]],
        )
    if "truncated" in document:
        following = document.get("nextBefore")
        onward = f"; --before {following} searches older ones" if following else ""
        print(f"responder: the filter {document['truncated']}{onward}", file=sys.stderr)
    else:
        _say_cut("alerts", args.limit, document)
    return 0


def _alert_row(alert: dict[str, Any]) -> list[str]:
    labels = dict(alert["labels"])
    alertname = labels.pop("alertname", "")
    c = alert["classification"]
    return [
        str(alert["id"]),
        alert["status"],
        c["severity"],
        c["category"],
        c["rule"] or "(fallback)",
        alertname,
        shown_time(alert["startsAt"]),
        str(alert["receiveCount"]),
        ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
    ]


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """Columns sized to their content; control characters from labels are made visible."""
    clean = [[_printable(cell) for cell in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in clean]) for i, h in enumerate(header)]
    for row in [header, *clean]:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


def _printable(text: str) -> str:
    # A label may hold escape sequences meant to rewrite the operator's terminal.
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)

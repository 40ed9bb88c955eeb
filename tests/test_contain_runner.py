"""The runner against real subprocesses and a real HTTP server on loopback; a strict catalog."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from responder.clock import FakeClock
from responder.contain.catalog import (
    Action,
    ActionCatalog,
    CaptureEvidenceSpec,
    parse_actions,
    parse_containment,
)
from responder.contain.outcome import Outcome
from responder.contain.params import ParamRejected
from responder.contain.runner import (
    REDACTED,
    ActionRunner,
    ExecRequest,
    HttpRequest,
    PreparedRun,
    RunContext,
    _redact,
    run_process,
)
from responder.secrets import Secret
from responder.yamlfile import ConfigError, load_text

CONTEXT = RunContext("42", "HighErrorRate", "abc123", "P1")


def script(tmp_path: Path, name: str, body: str) -> Path:
    """An executable Python script; the tests' stand-in for a real tool."""
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def catalog(text: str, base_dir: Path) -> ActionCatalog:
    return parse_actions(load_text(text, "actions.yaml"), base_dir)


@pytest.fixture
async def runner(tmp_path: Path) -> AsyncIterator[ActionRunner]:
    r = ActionRunner(FakeClock(), tmp_path / "evidence", kill_grace_s=0.3)
    yield r
    await r.close()


def prepared(
    runner: ActionRunner,
    action: Action,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> PreparedRun:
    result = runner.prepare(action, labels or {}, annotations or {}, CONTEXT)
    assert isinstance(result, PreparedRun), result
    return result


DUMP = """
import json, os, sys
print(json.dumps({"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd(),
                  "stdin": sys.stdin.read()}))
"""


async def test_argv_placeholders_fill_whole_or_part_of_one_element_only(
    tmp_path: Path, runner: ActionRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """{host} fills an element or part of one; the env is minimal plus RESPONDER_* context."""
    monkeypatch.setenv("LEAKY", "parent-secret")
    monkeypatch.setenv("API_TOKEN", "s3cr3t-token")
    dump = script(tmp_path, "dump", DUMP)
    actions = catalog(
        f"""
flush:
  kind: exec
  params:
    host: {{from: label, key: instance, type: hostname, extract: "([^:]+):[0-9]+"}}
  argv: [{dump}, "{{host}}", "--target={{host}}.internal", "{{{{literal}}}}"]
  env: {{MODE: flush, TOKEN: {{value_env: API_TOKEN}}}}
  cwd: {tmp_path}
""",
        tmp_path,
    )
    prep = prepared(runner, actions["flush"], {"instance": "db-01:9100"})
    result = await runner.execute(prep)
    assert result.outcome is Outcome.OK, result
    seen = json.loads(result.attempts[0].stdout)
    assert seen["argv"] == ["db-01", "--target=db-01.internal", "{literal}"]
    assert seen["cwd"] == str(tmp_path)
    assert seen["stdin"] == ""
    env = seen["env"]
    assert "LEAKY" not in env
    assert env["MODE"] == "flush"
    assert env["RESPONDER_ALERT_NAME"] == "HighErrorRate"
    assert env["RESPONDER_INCIDENT_ID"] == "42"
    assert env["RESPONDER_SEVERITY"] == "P1"
    assert env["RESPONDER_FINGERPRINT"] == "abc123"
    assert env["RESPONDER_PARAM_HOST"] == "db-01"
    assert set(env) - {"LC_CTYPE"} <= {
        "PATH", "LANG", "MODE", "TOKEN", "RESPONDER_ACTION", "RESPONDER_RUN_ID",
        "RESPONDER_INCIDENT_ID", "RESPONDER_ALERT_NAME", "RESPONDER_FINGERPRINT",
        "RESPONDER_SEVERITY", "RESPONDER_PARAM_HOST",
    }  # fmt: skip
    # The secret reached the process but not the record.
    assert "s3cr3t-token" not in json.dumps(result.to_audit())
    assert result.to_audit()["request"]["env"]["TOKEN"] == REDACTED
    audit = result.to_audit()
    assert audit["params"] == [{"name": "host", "value": "db-01", "from": "label instance"}]
    assert audit["exit_status"] == 0
    assert audit["outcome"] == "ok"


async def test_injection_in_a_label_never_reaches_a_process(
    tmp_path: Path, runner: ActionRunner
) -> None:
    """prepare() refuses `$(id)`; there is nothing to execute."""
    marker = tmp_path / "ran"
    tool = script(tmp_path, "tool", f"open({str(marker)!r}, 'w').close()\n")
    actions = catalog(
        f"""
a:
  kind: exec
  params: {{host: {{from: label, key: host, type: hostname}}}}
  argv: [{tool}, "{{host}}"]
""",
        tmp_path,
    )
    for evil in ("$(id)", "; rm -rf /", "--help", "db\n01", "d\u0430tabase"):
        result = runner.prepare(actions["a"], {"host": evil}, {}, CONTEXT)
        assert isinstance(result, ParamRejected)
        record = runner.rejected_result(actions["a"], result, CONTEXT).to_audit()
        assert record["outcome"] == "rejected"
        assert record["rejected"]["param"] == "host"
    assert not marker.exists()


async def test_timeout_kills_the_whole_process_group(tmp_path: Path, runner: ActionRunner) -> None:
    """A hung action and the child it forked are both gone after the timeout (TERM ignored)."""
    pids = tmp_path / "pids"
    hang = script(
        tmp_path,
        "hang",
        f"""
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
open({str(pids)!r}, "w").write(f"{{os.getpid()}} {{child.pid}}")
time.sleep(60)
""",
    )
    actions = catalog(f"h: {{kind: exec, argv: [{hang}], timeout: 1s}}", tmp_path)
    started = time.monotonic()
    result = await runner.execute(prepared(runner, actions["h"]))
    assert time.monotonic() - started < 5
    assert result.outcome is Outcome.TIMEOUT
    for pid in map(int, pids.read_text().split()):
        assert not _alive(pid), pid


def _alive(pid: int) -> bool:
    """Dead within a moment: a killed process closes its files (which ends the runner's wait)
    a little before the kernel marks it a zombie."""
    deadline = time.monotonic() + 2.0
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    return _running(pid)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead; only its parent (init, here) has not reaped it yet.
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


async def test_output_is_bounded_and_the_child_never_blocks(
    tmp_path: Path, runner: ActionRunner
) -> None:
    """4 MiB to stdout and stderr: 64 KiB of each kept, the rest counted, the run ok."""
    loud = script(
        tmp_path,
        "loud",
        "import sys\nsys.stdout.write('o' * 4194304)\nsys.stderr.write('e' * 4194304)\n",
    )
    actions = catalog(f"l: {{kind: exec, argv: [{loud}]}}", tmp_path)
    result = await runner.execute(prepared(runner, actions["l"]))
    attempt = result.attempts[0]
    assert result.outcome is Outcome.OK
    assert len(attempt.stdout) == 65536
    assert attempt.stdout_dropped == 4194304 - 65536
    assert len(attempt.stderr) == 65536
    assert attempt.stderr_dropped == 4194304 - 65536


async def test_retries_until_success_and_failures_are_recorded(
    tmp_path: Path, runner: ActionRunner
) -> None:
    """Fails twice, then works: three attempts, outcome ok, each attempt in the record."""
    counter = tmp_path / "count"
    flaky = script(
        tmp_path,
        "flaky",
        f"""
import pathlib, sys
p = pathlib.Path({str(counter)!r})
n = int(p.read_text()) + 1 if p.exists() else 1
p.write_text(str(n))
print("attempt", n)
sys.exit(0 if n >= 3 else 1)
""",
    )
    actions = catalog(f"f: {{kind: exec, argv: [{flaky}], retries: 2, retry_delay: 0}}", tmp_path)
    result = await runner.execute(prepared(runner, actions["f"]))
    assert result.outcome is Outcome.OK
    assert [a.outcome for a in result.attempts] == [Outcome.FAILED, Outcome.FAILED, Outcome.OK]
    assert [a.exit_status for a in result.attempts] == [1, 1, 0]

    counter.write_text("-10")
    result = await runner.execute(prepared(runner, actions["f"]))
    assert result.outcome is Outcome.FAILED
    assert len(result.attempts) == 3


async def test_missing_executable_is_an_error_not_a_crash(
    tmp_path: Path, runner: ActionRunner
) -> None:
    """An executable that does not exist yields outcome error with the reason."""
    actions = catalog(f"m: {{kind: exec, argv: [{tmp_path}/nope], retries: 3}}", tmp_path)
    result = await runner.execute(prepared(runner, actions["m"]))
    assert result.outcome is Outcome.ERROR
    assert len(result.attempts) == 1
    assert "cannot start" in result.attempts[0].detail


async def test_check_argv_failing_makes_check_failed_and_retries(
    tmp_path: Path, runner: ActionRunner
) -> None:
    """The action exits 0 but its verification fails: check_failed, retried, undo kept."""
    checker = script(tmp_path, "check", "import sys; print('still broken'); sys.exit(2)\n")
    actions = catalog(
        f"""
c:
  kind: exec
  argv: [/bin/true]
  retries: 1
  retry_delay: 0
  check: {{argv: [{checker}], timeout: 5s}}
  undo: {{argv: [/bin/echo, undone]}}
""",
        tmp_path,
    )
    result = await runner.execute(prepared(runner, actions["c"]))
    assert result.outcome is Outcome.CHECK_FAILED
    assert len(result.attempts) == 2
    assert result.check is not None
    assert result.check.exit_status == 2
    assert "still broken" in result.check.detail
    assert result.undo is not None
    assert result.undo.request is not None
    undone = await runner.run_exec(
        ExecRequest.from_json(result.undo.request.to_json()), run_id=result.run_id
    )
    assert undone.stdout == "undone\n"


async def test_alert_resolves_within_is_left_to_the_engine_with_a_deadline(
    tmp_path: Path, runner: ActionRunner
) -> None:
    """`alert_resolves_within: 2m`: the check is pending with a deadline two minutes out."""
    actions = catalog(
        "r: {kind: exec, argv: [/bin/true], check: {alert_resolves_within: 2m}}", tmp_path
    )
    prep = prepared(runner, actions["r"])
    result = await runner.execute(prep)
    assert result.outcome is Outcome.OK
    assert result.check is not None
    assert result.check.outcome is Outcome.RUNNING
    assert result.check.deadline is not None
    assert (result.check.deadline - result.finished_at).total_seconds() == 120


async def test_dry_run_renders_but_runs_nothing(tmp_path: Path, runner: ActionRunner) -> None:
    """dry_run: the audit shows the argv that would have run; the tool never starts."""
    marker = tmp_path / "ran"
    tool = script(tmp_path, "tool", f"open({str(marker)!r}, 'w').close()\n")
    actions = catalog(f"d: {{kind: exec, argv: [{tool}, x], dry_run: true}}", tmp_path)
    result = await runner.execute(prepared(runner, actions["d"]))
    assert result.outcome is Outcome.DRY_RUN
    assert result.attempts == ()
    assert result.to_audit()["request"]["argv"] == [str(tool), "x"]
    assert not marker.exists()
    forced = catalog(f"d: {{kind: exec, argv: [{tool}]}}", tmp_path)
    assert (await runner.execute(prepared(runner, forced["d"]), dry_run=True)).dry_run
    assert not marker.exists()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def http_app() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A maintenance-mode API on loopback that records what it receives."""
    seen: list[dict[str, Any]] = []

    async def maintenance(request: web.Request) -> web.Response:
        seen.append(
            {
                "path": request.raw_path,
                "method": request.method,
                "headers": dict(request.headers),
                "body": await request.text(),
            }
        )
        if request.headers.get("X-Token") != "hunter2":
            return web.Response(status=403)
        return web.json_response({"ok": True, "token": "hunter2"}, status=202)

    async def health(request: web.Request) -> web.Response:
        return web.Response(status=int(request.query.get("status", "200")))

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(3)
        return web.Response()

    app = web.Application()
    app.router.add_route("*", "/api/backends/{name}/maintenance", maintenance)
    app.router.add_get("/health", health)
    app.router.add_get("/slow", slow)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield f"http://127.0.0.1:{server.port}", seen
    await server.close()


async def test_http_maintenance_mode_with_secret_header_and_json_body(
    tmp_path: Path,
    runner: ActionRunner,
    http_app: tuple[str, list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Path parameter percent-encoded, JSON body encoded, secret sent but redacted."""
    base, seen = http_app
    (tmp_path / "token").write_text("hunter2\n")
    actions = catalog(
        f"""
maint:
  kind: http
  method: PUT
  url: {base}/api/backends/{{backend}}/maintenance
  params:
    backend: {{from: label, key: backend, type: identifier}}
    reason: {{from: annotation, key: summary, type: text, pattern: "[ -~]+"}}
  headers:
    X-Token: {{value_file: token}}
  body: >-
    {{"enabled": true, "reason": {{{{ params.reason }}}},
      "incident": {{{{ alert.incident_id }}}}}}
  expect: [202]
  check: {{http: {{url: "{base}/health"}}}}
""",
        tmp_path,
    )
    prep = prepared(
        runner, actions["maint"], {"backend": "web:01"}, {"summary": 'x", "enabled": false, "a": "'}
    )
    result = await runner.execute(prep)
    assert result.outcome is Outcome.OK, result.to_audit()
    assert result.http_status == 202
    assert seen[0]["path"] == "/api/backends/web%3A01/maintenance"
    assert seen[0]["headers"]["X-Token"] == "hunter2"
    body = json.loads(seen[0]["body"])
    assert body == {"enabled": True, "reason": 'x", "enabled": false, "a": "', "incident": "42"}
    audit = json.dumps(result.to_audit())
    assert "hunter2" not in audit
    assert result.to_audit()["request"]["headers"]["X-Token"] == REDACTED
    assert result.check is not None
    assert result.check.http_status == 200


async def test_http_unexpected_status_timeout_and_failing_probe(
    tmp_path: Path, runner: ActionRunner, http_app: tuple[str, list[dict[str, Any]]]
) -> None:
    """403 is a failure, a slow server a timeout, a 503 health probe a failed check."""
    base, _ = http_app
    actions = catalog(
        f"""
noauth: {{kind: http, url: "{base}/api/backends/a/maintenance", expect: [202]}}
slow: {{kind: http, method: GET, url: "{base}/slow", timeout: 500ms}}
probe:
  kind: exec
  argv: [/bin/true]
  check: {{http: {{url: "{base}/health?status=503"}}}}
""",
        tmp_path,
    )
    failed = await runner.execute(prepared(runner, actions["noauth"]))
    assert failed.outcome is Outcome.FAILED
    assert failed.http_status == 403
    slow = await runner.execute(prepared(runner, actions["slow"]))
    assert slow.outcome is Outcome.TIMEOUT
    probe = await runner.execute(prepared(runner, actions["probe"]))
    assert probe.outcome is Outcome.CHECK_FAILED
    assert probe.check is not None
    assert probe.check.http_status == 503


GOOD_HEAD = "a:\n  kind: exec\n  params: {h: {from: label, key: h, type: hostname}}\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD_HEAD + "  argv: [/bin/echo, '{x}']\n", "names no declared parameter"),
        (GOOD_HEAD + "  argv: ['{h}']\n", "the executable must be fixed"),
        (GOOD_HEAD + "  argv: [echo]\n", "must be an absolute path"),
        (GOOD_HEAD + "  argv: [/bin/echo, '{print $1}']\n", "lone brace"),
        (GOOD_HEAD + "  argv: [/bin/echo, 'a}']\n", "lone brace"),
        (GOOD_HEAD + "  argv: []\n", "must not be empty"),
        (GOOD_HEAD + "  argv: [/bin/true]\n  shell: true\n", "unknown key"),
        (GOOD_HEAD + "  argv: [/bin/true]\n  env: {RESPONDER_X: y}\n", "set by responder"),
        (GOOD_HEAD + "  argv: [/bin/true]\n  env: {T: {value: x}}\n", "unknown key"),
        (GOOD_HEAD + "  argv: [/bin/true]\n  undo: {action: nope}\n", "no action named"),
        (GOOD_HEAD + "  argv: [/bin/true]\n  target: x\n", "must name a declared"),
        (
            GOOD_HEAD + "  argv: [/bin/true]\n  check: {argv: [/bin/true], "
            "alert_resolves_within: 1m}\n",
            "exactly one",
        ),
        (
            "a: {kind: http, url: 'http://{h}/x', params: {h: {from: label, key: h, "
            "type: hostname}}}",
            "URL path only",
        ),
        ("a: {kind: http, url: 'http://u:p@h/x'}", "credentials in the URL"),
        ("a: {kind: http, url: 'ftp://h/x'}", "http:// or https://"),
        ("a: {kind: http, url: 'http://h/', body: '{{ x '}", "template syntax error"),
        ("a: {kind: teleport}", "expected one of"),
        ("a: {kind: systemd-restart, units: []}", "at least one unit"),
        ("a: {kind: systemd-restart, units: [a, b]}", "exactly one unit"),
        ("a: {kind: systemd-restart, units: ['@a']}", "not a valid systemd unit name"),
        ("a: {kind: block-address}", "needs a parameter `address`"),
        # What a process or the HTTP client cannot take is refused at load, not at each run.
        (GOOD_HEAD + '  argv: [/bin/echo, "a\\0b"]\n', "a NUL cannot be passed"),
        (GOOD_HEAD + '  argv: [/bin/true]\n  cwd: "/tmp\\0x"\n', "cannot hold a NUL"),
        ('a: {kind: http, url: "http://h/", headers: {X: "a\\x7fb"}}', "control characters"),
        (
            # /33 would refuse every IPv4 address, silently, at each alert.
            "a: {kind: block-address, min_prefix4: 33, params: {address: {from: label, "
            "key: ip, type: ip}}}",
            "min_prefix4: must be at most 32, got 33",
        ),
        (
            "a: {kind: block-address, min_prefix6: 129, params: {address: {from: label, "
            "key: ip, type: ip}}}",
            "min_prefix6: must be at most 128, got 129",
        ),
        ("a: {kind: capture-evidence}", "at least one of units, files, commands"),
        ("a: {kind: capture-evidence, files: [relative.log]}", "absolute path"),
        ("'a b': {kind: exec, argv: [/bin/true]}", "action names"),
    ],
)
def test_catalog_is_parsed_strictly(text: str, message: str, tmp_path: Path) -> None:
    """Each config mistake is refused at load time with file, line and key."""
    with pytest.raises(ConfigError) as err:
        catalog(text, tmp_path)
    assert message in str(err.value)
    assert str(err.value).startswith("actions.yaml:")


def test_the_caps_on_a_run_refuse_past_them_not_at_them() -> None:
    """A 10m timeout, 5 retries, a 16 MiB evidence item and a run of exactly an hour (6
    attempts of 10m) all load; a second more of timeout, or of retry delay, does not."""
    longest = "a: {kind: exec, argv: [/bin/true], timeout: 10m, retries: 5, retry_delay: "
    assert catalog(longest + "0}", Path("/"))["a"].timeout == timedelta(minutes=10)
    evidence = "e: {kind: capture-evidence, files: [/var/log/syslog], max_bytes: 16777216}"
    spec = catalog(evidence, Path("/"))["e"].spec
    assert isinstance(spec, CaptureEvidenceSpec)
    assert spec.max_bytes == 16 * 1024 * 1024
    with pytest.raises(ConfigError, match=r"a\.timeout: must be at most 10m"):
        catalog("a: {kind: exec, argv: [/bin/true], timeout: 10m1s}", Path("/"))
    with pytest.raises(ConfigError, match="a: a run may take up to 1h5s"):
        catalog(longest + "1s}", Path("/"))


def test_a_secret_a_header_or_environment_cannot_carry_is_refused_at_load(
    tmp_path: Path,
) -> None:
    """A header's secret with a line break or another control character (aiohttp refuses
    to send it: every run ended in an exception and stayed 'running'), an environment
    secret with a NUL. An environment secret of several lines (a key) is fine."""
    (tmp_path / "two-lines").write_text("part one\npart two\n")
    (tmp_path / "control").write_text("tok\x01en\n")
    (tmp_path / "nul").write_text("a\x00b\n")
    head = "a: {kind: http, url: 'http://h/', headers: {X: {value_file: "
    for name, message in [
        ("two-lines", "more than one line"),
        ("control", "a control character a header cannot carry"),
    ]:
        with pytest.raises(ConfigError) as err:
            catalog(head + name + "}}}", tmp_path)
        assert message in str(err.value)
        assert "tok" not in str(err.value)
    env = "a: {kind: exec, argv: [/bin/true], env: {K: {value_file: "
    with pytest.raises(ConfigError) as err:
        catalog(env + "nul}}}", tmp_path)
    assert "the secret holds a NUL" in str(err.value)
    assert "a" in catalog(env + "two-lines}}}", tmp_path)


async def test_what_cannot_start_or_be_sent_ends_the_attempt_not_the_run(
    tmp_path: Path,
    runner: ActionRunner,
    http_app: tuple[str, list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request the OS or the HTTP client refuses with ValueError (a NUL in argv, a control
    character in a header), or any fault of ours, ends that attempt as an error; execute
    returns. It raised, and the engine left the run recorded as running: its target
    refused ("already running") until the next start, and nobody told."""
    base, _ = http_app
    actions = catalog(
        f"""
nul: {{kind: exec, argv: [/bin/echo, hello], retries: 1}}
web: {{kind: http, url: "{base}/api/backends/a/maintenance", headers: {{X: "ok"}}}}
""",
        tmp_path,
    )
    prep = prepared(runner, actions["nul"])
    assert isinstance(prep.request, ExecRequest)
    request = replace(prep.request, argv=("/bin/echo", "a\x00b"))
    result = await runner.execute(replace(prep, request=request))
    assert result.outcome is Outcome.ERROR
    assert len(result.attempts) == 1  # an error is not retried (it could not start)
    assert "embedded null byte" in result.attempts[0].detail
    web_prep = prepared(runner, actions["web"])
    assert isinstance(web_prep.request, HttpRequest)
    bad = replace(web_prep.request, headers={"X": "a\x01b"})
    sent = await runner.execute(replace(web_prep, request=bad))
    assert sent.outcome is Outcome.FAILED
    assert "ValueError" in sent.attempts[0].detail

    async def broken(*_: Any) -> Any:
        raise RuntimeError("a fault of ours")

    monkeypatch.setattr(ActionRunner, "_attempt", broken)
    faulty = await runner.execute(prepared(runner, actions["nul"]))
    assert faulty.outcome is Outcome.ERROR
    assert faulty.attempts[-1].detail == "internal error: RuntimeError: a fault of ours"


def test_containment_settings() -> None:
    """The global section is strict too, with defaults for what is left out."""
    settings = parse_containment(load_text("dry_run: true\nbreaker_failures: 5\n", "c.yaml"))
    assert settings.dry_run
    assert settings.breaker_failures == 5
    assert settings.max_actions_per_window == 20
    with pytest.raises(ConfigError, match="unknown key"):
        parse_containment(load_text("dryrun: true\n", "c.yaml"))
    assert parse_containment(None).concurrency == 4


def test_the_documented_example_config_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/actions.md's complete example parses as it stands."""
    monkeypatch.setenv("LB_TOKEN", "Bearer x")
    doc = (Path(__file__).parent.parent / "docs" / "actions.md").read_text()
    block = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    root = load_text(block, "actions.md")
    settings = parse_containment(root["containment"])
    actions = parse_actions(root["actions"], tmp_path)
    assert settings.breaker_failures == 3
    assert set(actions) == {
        "restart-web", "block-attacker", "maintenance-on", "maintenance-off",
        "preserve-evidence", "clear-cache",
    }  # fmt: skip
    runner = ActionRunner(FakeClock(), tmp_path)
    prep = runner.prepare(actions["maintenance-on"], {"backend": "web-3"}, {}, CONTEXT)
    assert isinstance(prep, PreparedRun)
    body = prep.request.to_audit()["body"]
    assert json.loads(body) == {"enabled": True, "incident": "42", "alert": "HighErrorRate"}
    assert prep.undo is not None
    assert prep.undo.action == "maintenance-off"


def test_the_documented_checks_load(tmp_path: Path) -> None:
    """Each `check:` example of docs/actions.md's "Verify, hold-down and undo" loads as an
    action's check (the http one had a placeholder in the host, which the loader refuses)."""
    doc = (Path(__file__).parent.parent / "docs" / "actions.md").read_text()
    section = doc.split("## Verify, hold-down and undo", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    checks = [line for line in block.splitlines() if line.startswith("check:")]
    assert len(checks) == 3, block
    for line in checks:
        text = (
            "a:\n  kind: exec\n  argv: [/bin/true]\n"
            "  params: {host: {from: label, key: instance, type: hostname}}\n  " + line
        )
        action = parse_actions(load_text(text, "actions.md"), tmp_path)["a"]
        assert action.check is not None, line


async def test_leftovers_holding_the_output_open_do_not_outlive_the_action(
    tmp_path: Path, runner: ActionRunner
) -> None:
    """The action exits 0 but its background child keeps stdout: ok, and the child is killed."""
    pid_file = tmp_path / "child"
    leaver = script(
        tmp_path,
        "leaver",
        f"""
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
open({str(pid_file)!r}, "w").write(str(child.pid))
print("done")
""",
    )
    actions = catalog(f"l: {{kind: exec, argv: [{leaver}], timeout: 20s}}", tmp_path)
    started = time.monotonic()
    result = await runner.execute(prepared(runner, actions["l"]))
    assert time.monotonic() - started < 5
    assert result.outcome is Outcome.OK
    assert result.attempts[0].stdout == "done\n"
    assert not _alive(int(pid_file.read_text()))


async def test_a_secret_cut_by_the_output_limit_is_still_redacted(tmp_path: Path) -> None:
    """Output is cut at the limit; a secret that straddles the cut leaves its first part in
    the kept text, which no longer matches the whole secret: it is redacted as well
    (security review, stop 13)."""
    tool = script(
        tmp_path,
        "leaky",
        "import os, sys\nsys.stdout.write('x' * 90 + 'Bearer ' + os.environ['TOKEN'] + 'y' * 50)",
    )
    token = Secret("sk_live_0123456789abcdef", "file token")
    request = ExecRequest(argv=(str(tool),), env={"TOKEN": token})
    result = await run_process(request, limit=110)
    assert result.stdout_dropped > 0
    assert "sk_live" not in result.stdout
    assert result.stdout.endswith("Bearer " + REDACTED)
    whole = await run_process(request, limit=1000)  # not cut: only the secret goes
    assert whole.stdout == "x" * 90 + "Bearer " + REDACTED + "y" * 50


def test_redaction_at_the_cut_takes_the_longest_secret_tail() -> None:
    got = _redact("output ... passwo", ["o123", "password"], cut=True)
    assert got == "output ... " + REDACTED


def test_redaction_at_the_cut_of_a_character_split_in_two() -> None:
    """The byte cap fell inside a character: its replacement mark is not in the secret."""
    full = "log: pässwörd".encode()
    text = full[: full.index("ö".encode()) + 1].decode("utf-8", "replace")
    assert _redact(text, ["pässwörd"], cut=True) == "log: " + REDACTED


def test_actions_start_with_the_open_file_limit_the_daemon_started_with() -> None:
    """The daemon raises its soft open-file limit to the hard one; the programs containment
    starts get the limit it started with back (select() breaks past 1,024, and some tools
    close every descriptor up to the limit: second review of stop 14)."""
    script = textwrap.dedent(
        f"""
        import asyncio, resource
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 4096))
        from responder.limits import raise_open_file_limit
        from responder.contain.runner import ExecRequest, run_process
        print("daemon", raise_open_file_limit())
        probe = "import resource; print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
        result = asyncio.run(run_process(ExecRequest(({sys.executable!r}, "-c", probe), {{}})))
        print("child", result.stdout.strip())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert lines == {"daemon": "(1024, 4096)", "child": "1024"}, done.stdout

"""The rule tools as a user runs them: ``responder test``, ``responder explain``, and the
classification each stored alert carries into the API and the metrics."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from responder.cli import main, parse_label_list
from responder.yamlfile import ConfigError
from tests.conftest import AUTH, PAYLOADS, write_config

ROOT = Path(__file__).parent.parent


def test_shipped_rule_tests_pass(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test", str(ROOT / "rules" / "tests")]) == 0
    assert "0 failed" in capsys.readouterr().out


def test_failing_rule_test_prints_the_difference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "rules.yaml").write_text(
        "rules:\n  - name: disk\n    matchers: ['alertname=\"DiskFull\"']\n    severity: P2\n"
        "    category: availability\n"
    )
    (tmp_path / "t.yaml").write_text(
        "rule_files: [rules.yaml]\ntests:\n  - name: disk is P1\n"
        "    labels: {alertname: DiskFull}\n    expect: {severity: P1}\n"
    )
    assert main(["test", str(tmp_path / "t.yaml")]) == 1
    out = capsys.readouterr().out
    assert "expected P1, got P2" in out
    assert "+ disk" in out  # the explanation shows which rule decided


def test_explain_labels(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "explain",
            "-c",
            str(ROOT / "config.yaml"),
            "--labels",
            "alertname=SSHBruteForce,source_ip=203.0.113.7",
            "--at",
            "2026-11-30T10:00:00+01:00",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "+ security-brute-force" in out
    assert "severity:    P1" in out
    assert "respond 30m, resolve 8h" in out


def test_explain_says_when_the_default_policy_pages(capsys: pytest.CaptureFixture[str]) -> None:
    """The rule result reads "policy: -" when no rule names one; the escalation line says
    which policy pages then, and why (new-user review: it looked as if none would)."""
    labels = ["--labels", "alertname=TargetDown,instance=x"]
    assert main(["explain", "-c", str(ROOT / "examples" / "paging.yaml"), *labels]) == 0
    out = capsys.readouterr().out
    assert "policy:      -\n" in out
    assert (
        "escalation: policy standard (incidents.default_policy: the rules name none), "
        "if nobody acknowledges (next 4h):\n" in out
    )


def test_explain_payload_explains_each_alert(capsys: pytest.CaptureFixture[str]) -> None:
    path = PAYLOADS / "am-0.25.0-grouped-mixed.json"
    count = len(json.loads(path.read_text())["alerts"])
    assert main(["explain", "-c", str(ROOT / "config.yaml"), "--payload", str(path)]) == 0
    assert capsys.readouterr().out.count("rules tried:") == count


def test_explain_shows_control_characters_of_labels_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A payload's labels are anyone's text: explain wrote them raw, so an escape sequence in
    one (retitle the terminal, clear the screen, a carriage return over the line) reached
    the operator's terminal."""
    payload = json.loads((PAYLOADS / "am-0.25.0-firing-api.json").read_text())
    hostile = "db-1\x1b]0;pwned\x07\x1b[2J\rfake\u202e"
    payload["alerts"] = payload["alerts"][:1]
    payload["alerts"][0]["labels"]["instance"] = hostile
    payload["alerts"][0]["labels"]["x\x1b[31m"] = "y"
    path = tmp_path / "hostile.json"
    path.write_text(json.dumps(payload))
    args = ["explain", "-c", str(ROOT / "config.yaml"), "--payload", str(path), "--all-matchers"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert not any(c in out for c in "\x1b\x07\r\u202e")
    assert 'instance="db-1\\x1b]0;pwned\\x07\\x1b[2J\\rfake\\u202e"' in out
    assert 'x\\x1b[31m="y"' in out


def test_explain_bad_payload_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": "4"')
    assert main(["explain", "-c", str(ROOT / "config.yaml"), "--payload", str(bad)]) == 2
    assert "bad.json: payload:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a=b", {"a": "b"}),
        ("a=b, c = d", {"a": "b", "c": "d"}),
        ('a="x,y=z",b=1', {"a": "x,y=z", "b": "1"}),
        ("a=", {"a": ""}),
        ("a=b=c", {"a": "b=c"}),
    ],
)
def test_label_list(text: str, expected: dict[str, str]) -> None:
    assert parse_label_list(text) == expected


@pytest.mark.parametrize("text", ["x", "=b", 'a="open', 'a="x"y'])
def test_label_list_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_label_list(text)


async def test_classification_metrics_count_started_alerts_once(
    make_client: Any, tmp_path: Path
) -> None:
    """New alerts are counted by severity and category; re-sends are not counted again;
    an alert that matches no rule is counted as unmatched."""
    client: TestClient[Any, Any] = await make_client(write_config(tmp_path))

    def body(*labelsets: dict[str, str]) -> dict[str, Any]:
        return {
            "version": "4",
            "status": "firing",
            "receiver": "responder",
            "groupKey": "{}:{}",
            "groupLabels": {},
            "commonLabels": {},
            "commonAnnotations": {},
            "externalURL": "http://am",
            "alerts": [
                {
                    "status": "firing",
                    "labels": ls,
                    "annotations": {},
                    "startsAt": "2026-11-29T10:00:00Z",
                }
                for ls in labelsets
            ],
        }

    brute = {"alertname": "SSHBruteForce", "source_ip": "203.0.113.7"}
    odd = {"alertname": "SomethingNobodyWroteARuleFor", "severity": "warning"}
    for _ in range(2):
        response = await client.post("/api/v1/alertmanager", json=body(brute, odd), headers=AUTH)
        assert response.status == 200, await response.text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(await (await client.get("/metrics")).text())
        for s in family.samples
    }
    key = (("category", "security"), ("severity", "P1"))
    assert samples[("responder_alerts_classified_total", key)] == 1
    assert samples[("responder_alerts_unmatched_total", ())] == 1
    assert samples[("responder_rules_loaded", ())] >= 20
    listed = (await (await client.get("/api/v1/alerts", headers=AUTH)).json())["data"]
    fallback = next(a for a in listed if a["labels"]["alertname"].startswith("Something"))
    assert fallback["classification"]["rule"] is None
    assert fallback["classification"]["severity"] == "P2"


def test_output_into_a_reader_that_stopped_ends_quietly() -> None:
    """`responder explain ... | head -1`: the pipe breaks while responder writes. It ends
    without a complaint on stderr (it printed "responder: [Errno 32] Broken pipe")."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "responder",
            "explain",
            "-c",
            str(ROOT / "config.yaml"),
            "--labels",
            "alertname=TargetDown,instance=x",
            "--all-matchers",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    process.stdout.close()
    errors = process.stderr.read()
    process.stderr.close()
    assert process.wait(timeout=30) != 0
    assert errors == b""


def test_explain_shows_a_placeholder_for_the_run_id_an_iptables_rule_carries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each run's rule carries its own id; explain runs nothing, so it shows where the id
    goes instead of a random one that no run will ever have."""
    actions = (
        "actions:\n  block:\n    kind: block-address\n    backend: iptables\n"
        "    params:\n      address: {from: label, key: source_ip, type: ip}\n"
    )
    rules = (
        "rules:\n  - name: brute\n    matchers: ['alertname=\"SSHBruteForce\"']\n"
        "    severity: P1\n    category: security\n    actions: [block]\n"
    )
    path = write_config(tmp_path, actions, rules=rules)
    labels = "alertname=SSHBruteForce,source_ip=203.0.113.7"
    assert main(["explain", "-c", str(path), "--labels", labels]) == 0
    out = capsys.readouterr().out
    assert "'responder:<run-id>'" in out, out
    refused = "alertname=SSHBruteForce,source_ip=--203.0.113.7"
    assert main(["explain", "-c", str(path), "--labels", refused]) == 0
    out = capsys.readouterr().out
    # Which parameter, from which label, and the value given.
    assert (
        "block: REFUSED, nothing would run: parameter address from label source_ip rejected: "
        "starts with '-' (would read as an option) (value \"--203.0.113.7\")"
    ) in out, out


def test_explain_shows_an_evidence_plan_readably_with_the_severity_it_would_get(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A capture-evidence action is shown as what it would read, one item a line (it was a
    Python dict with each command's whole environment), and its commands get the severity
    a real run gives them (RESPONDER_SEVERITY was empty; docs review)."""
    actions = (
        "actions:\n  evidence:\n    kind: capture-evidence\n    units: [ssh.service]\n"
        "    files: [/var/log/auth.log]\n    commands:\n      sockets: [/usr/bin/ss, -tanp]\n"
    )
    rules = (
        "rules:\n  - name: brute\n    matchers: ['alertname=\"SSHBruteForce\"']\n"
        "    severity: P1\n    category: security\n    actions: [evidence]\n"
    )
    path = write_config(tmp_path, actions, rules=rules)
    assert main(["explain", "-c", str(path), "--labels", "alertname=SSHBruteForce"]) == 0
    out = capsys.readouterr().out
    assert "journal of ssh.service: /usr/bin/journalctl -u ssh.service" in out, out
    assert "file /var/log/auth.log" in out
    assert "command sockets: /usr/bin/ss -tanp" in out
    assert "'env'" not in out

    from responder.contain.runner import ActionRunner

    seen: list[str] = []
    real_prepare = ActionRunner.prepare

    def prepare(self: ActionRunner, *args: Any, **kwargs: Any) -> Any:
        seen.append(args[3].severity)  # the RunContext
        return real_prepare(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ActionRunner, "prepare", prepare)
        assert main(["explain", "-c", str(path), "--labels", "alertname=SSHBruteForce"]) == 0
    assert seen == ["P1"]


def test_who_ran_a_command_is_the_login_name_when_user_is_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A root shell, cron or a container often has no $USER: the audit names the login
    (it said "cli", and who acknowledged was lost)."""
    import getpass
    import os
    import pwd

    from responder.cli import operator_name

    for name in ("USER", "LOGNAME", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)
    assert operator_name() == pwd.getpwuid(os.getuid()).pw_name
    monkeypatch.setenv("USER", "alice")
    assert operator_name() == "alice"
    assert getpass.getuser() == "alice"


def test_oncall_reads_a_time_without_offset_in_the_zone_it_shows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--at 2026-12-24T10:00 --tz Europe/Berlin` is ten o'clock in Berlin, not in UTC
    (new-user review, stop 16: it showed 11:00 CET)."""
    config = write_config(tmp_path)
    argv = ["oncall", "-c", str(config), "--at", "2026-12-24T10:00", "--tz", "Europe/Berlin"]
    assert main(argv) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("On call at 2026-12-24 10:00 CET (Thu)")
    assert "No schedules, roles or teams are configured" in shown  # not a bare header
    assert (
        main(["oncall", "-c", str(config), "--at", "2026-12-24T10:00Z", "--tz", "Europe/Berlin"])
        == 0
    )
    assert capsys.readouterr().out.startswith("On call at 2026-12-24 11:00 CET (Thu)")
    # A wall time the spring-forward skips is shown as the instant it stands for, not as a
    # 02:45 CET that never was (calendar review: the answer was for 03:45 CEST).
    argv[4] = "2026-03-29T02:45"
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("On call at 2026-03-29 03:45 CEST (Sun)")


def test_report_since_that_is_neither_a_duration_nor_a_time_names_since(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`report --since 5x` is refused naming --since and what it takes, before the daemon is
    asked (new-user review: it said `--at: at: expected an ISO 8601 time`, a flag report
    does not have)."""
    config = write_config(tmp_path)
    assert main(["report", "-c", str(config), "--since", "5x"]) == 2
    error = capsys.readouterr().err
    assert error == (
        "responder: --since: since: expected a duration (30d) or an ISO 8601 time, got '5x'\n"
    )
    # A time to come would make a period that ends before it starts (new-user review).
    assert main(["report", "-c", str(config), "--since", "2999-01-01T00:00:00Z"]) == 2
    assert "is in the future" in capsys.readouterr().err


def test_check_warns_of_programs_an_action_would_start_that_are_not_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo in an action's program (or a tool not installed) passed `check` and showed
    only at the first incident, as an 'error' run. It is a warning, not an error: a config
    may be checked on another machine than the one it runs on."""
    tool = tmp_path / "clear-cache"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    actions = f"""
actions:
  clear:
    kind: exec
    argv: [{tool}, --all]
    cwd: {tmp_path}/nowhere
    undo: {{argv: [{tmp_path}/uncleer]}}
  fine:
    kind: exec
    argv: [{tool}]
  restart:
    kind: systemd-restart
    systemctl: {tmp_path}/systemctl
    units: [nginx]
  block:
    kind: block-address
    backend: iptables
    iptables: {tool}
    ip6tables: {tmp_path}/ip6tables
    params: {{address: {{from: label, key: ip, type: ip}}}}
"""
    assert main(["check", "-c", str(write_config(tmp_path, actions))]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "action" in line]
    assert warnings == [
        f"warning: action block: ip6tables {tmp_path}/ip6tables is not an executable file "
        "on this host",
        f"warning: action clear: undo.argv[0] {tmp_path}/uncleer is not an executable file "
        "on this host",
        f"warning: action clear: cwd {tmp_path}/nowhere is not a directory on this host",
        f"warning: action restart: systemctl {tmp_path}/systemctl is not an executable file "
        "on this host",
    ]


def test_check_counts_rules_and_files_and_warns_when_none_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config whose rule_files match nothing is valid, but every alert would take the
    default classification: `check` says so (new-user review: "OK (0 rules from 0 files)"
    and nothing else; also "1 rules from 1 files")."""
    config = write_config(tmp_path)
    assert main(["check", "-c", str(config)]) == 0
    shipped = capsys.readouterr()
    assert " rules from " in shipped.out
    assert shipped.out.endswith(" files)\n")
    assert shipped.err == ""
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "config.yaml").write_text(
        "auth:\n  bearer_token_file: token\nclassification:\n  rule_files: [r.yaml]\n"
    )
    (tmp_path / "one" / "token").write_text("t0ken\n")
    (tmp_path / "one" / "r.yaml").write_text(
        "rules:\n  - name: disk\n    matchers: ['alertname=\"DiskFull\"']\n    severity: P2\n"
        "    category: availability\n"
    )
    assert main(["check", "-c", str(tmp_path / "one" / "config.yaml")]) == 0
    assert capsys.readouterr().out.endswith("OK (1 rule from 1 file)\n")
    # No rule_files: the default, rules/*.yaml beside the config, which is not there.
    (tmp_path / "one" / "config.yaml").write_text("auth:\n  bearer_token_file: token\n")
    assert main(["check", "-c", str(tmp_path / "one" / "config.yaml")]) == 0
    empty = capsys.readouterr()
    assert empty.out.endswith("OK (0 rules from 0 files)\n")
    assert "warning: no classification rules loaded" in empty.err


@pytest.mark.parametrize(
    ("text", "warned"),
    [
        (
            "escalation_policies:\n  standard:\n    levels:\n      - targets: [alice]\n",
            "incidents.default_policy is not set: an incident whose rules name no policy "
            "(RULES) pages nobody; set it to one of standard (docs/escalation.md)",
        ),
        (
            "",
            "contacts are defined but no escalation_policies: nobody is paged (docs/escalation.md)",
        ),
        (
            "escalation_policies:\n  standard:\n    levels:\n      - targets: [alice]\n"
            "incidents:\n  default_policy: standard\n",
            None,
        ),
    ],
)
def test_check_warns_when_incidents_would_page_nobody(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, warned: str | None
) -> None:
    """Valid, but pages go nowhere: contacts without policies, or policies that no incident
    takes (no default_policy; the shipped rules name no policy). New-user review: the
    escalation docs' full example without its incidents block paged nobody, silently."""
    config = write_config(tmp_path, "contacts:\n  alice: {email: alice@example.com}\n" + text)
    assert main(["check", "-c", str(config)]) == 0
    err = capsys.readouterr().err
    if warned is None:
        assert err == ""
        return
    (line,) = err.splitlines()
    rules = re.search(r"\((\d+) of (\d+) rules name none, and alerts no rule matches\)", line)
    if rules is not None:  # the shipped rules name no policy
        assert rules[1] == rules[2] != "0"
        line = line.replace(rules[0], "(RULES)")
    assert line == f"warning: {config}: {warned}"


def test_incidents_all_with_a_state_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--all` lists every state, so `--state` beside it was silently ignored (new-user
    review); asking for both is refused before anything is asked of the daemon."""
    config = write_config(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(["incidents", "-c", str(config), "--all", "--state", "snoozed"])
    assert exited.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_url_without_its_scheme_is_a_usage_error_not_an_unreachable_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--url 127.0.0.1:9095` exits 2 saying what --url takes (new-user review: it said
    'cannot reach the daemon at 127.0.0.1:9095: 127.0.0.1:9095/api/v1/incidents' and exited
    3, which tells a script to try again)."""
    config = write_config(tmp_path)
    assert main(["incidents", "-c", str(config), "--url", "127.0.0.1:9095"]) == 2
    assert capsys.readouterr().err == (
        "responder: --url: url: expected an http:// or https:// URL, got '127.0.0.1:9095'\n"
    )


def test_no_token_found_says_to_pass_the_daemons_state_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A daemon started with --state-dir keeps its generated token there; a command run
    without the flag looked in the config's state_dir and told the operator to start the
    daemon or run `responder token` (a token the running daemon would not accept), and
    exited 3, which tells a script to try again. It says to pass the same --state-dir, and
    exits 2: a config matter (new-operator review)."""
    config = tmp_path / "config.yaml"
    config.write_text("server:\n  listen: 127.0.0.1:9\n")
    assert main(["incidents", "-c", str(config)]) == 2
    token = tmp_path / "state" / "webhook-token"
    assert capsys.readouterr().err == (
        f"responder: no credentials: the config names none and {token} does not exist (start"
        " the daemon once, or run `responder token`; a daemon started with --state-dir keeps"
        " its token there: pass the same --state-dir)\n"
    )


def test_a_state_directory_that_cannot_be_made_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file where the state directory goes said only `[Errno 17] File exists: '...'`
    (acceptance review)."""
    (tmp_path / "afile").write_text("")
    config = tmp_path / "config.yaml"
    config.write_text("server:\n  listen: 127.0.0.1:9\n")  # no token: one is generated
    argv = ["token", "-c", str(config), "--state-dir", str(tmp_path / "afile")]
    assert main(argv) == 1
    assert capsys.readouterr().err == (
        f"responder: cannot create the state directory {tmp_path / 'afile'}: a file is in the way\n"
    )

"""Rule tests: the shipped ones pass and cover every shipped rule; failures read well."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml

from responder.classify import load_classifier, run_rule_tests

ROOT = Path(__file__).resolve().parent.parent


def run(*paths: Path) -> tuple[int, str]:
    out = io.StringIO()
    code = run_rule_tests(list(paths), out)
    return code, out.getvalue()


def test_shipped_rule_tests_pass() -> None:
    """rules/tests/*.yaml all pass against rules/*.yaml."""
    code, text = run(ROOT / "rules" / "tests")
    assert code == 0, text
    assert " 0 failed" in text.splitlines()[-1]


def test_shipped_rule_tests_cover_every_rule_and_the_fallback() -> None:
    """Every shipped rule is expected by name in some case, and so is the fallback."""
    shipped = {r.name for r in load_classifier(None, ROOT).rules}
    assert len(shipped) >= 15
    named: set[str | None] = set()
    for path in (ROOT / "rules" / "tests").glob("*.yaml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            if "rule" in case["expect"]:
                named.add(case["expect"]["rule"])
    assert shipped <= named, shipped - named
    assert None in named


RULES = """
rules:
  - name: db-down
    matchers: ['{alertname="InstanceDown", job="db"}']
    severity: P0
    category: data-integrity
  - name: down
    matchers: [alertname="InstanceDown"]
    severity: P1
"""


def write(tmp_path: Path, test: str, rules: str = RULES) -> Path:
    (tmp_path / "rules.yaml").write_text(rules)
    path = tmp_path / "test.yaml"
    path.write_text(test)
    return path


def test_failures_print_a_diff_and_the_explanation(tmp_path: Path) -> None:
    """A failing case shows each differing field, the alert and how it was classified."""
    path = write(
        tmp_path,
        """
rule_files: [rules.yaml]
tests:
  - name: web is down
    labels: {alertname: InstanceDown, job: web}
    expect: {severity: P0, rule: down, category: security}
  - name: passes
    labels: {alertname: InstanceDown, job: db}
    expect: {severity: P0}
""",
    )
    code, text = run(path)
    assert code == 1
    assert f"FAIL {path}:4: web is down" in text
    assert '  alert: {alertname="InstanceDown", job="web"}' in text
    assert "  severity: expected P0, got P1" in text
    assert "  category: expected 'security', got 'availability'" in text
    assert "rule:" not in text.split("how it was classified")[0]  # equal fields are not listed
    assert "    rules tried: 2 of 2" in text
    assert f"FAILED {path}: 1 passed, 1 failed" in text
    assert text.endswith("rule tests: 1 passed, 1 failed\n")


def test_only_given_fields_are_compared(tmp_path: Path) -> None:
    """Fields left out of expect are not checked; null expects the fallback or none."""
    path = write(
        tmp_path,
        """
rule_files: [rules.yaml]
tests:
  - labels: {alertname: InstanceDown}
    expect: {rule: down}
  - labels: {alertname: Other, severity: info}
    expect:
      {rule: null, severity: P3, policy: null, actions: [], labels: {}, respond: 4h, resolve: 72h}
""",
    )
    assert run(path) == (0, f"ok {path}: 2 passed, 0 failed\nrule tests: 2 passed, 0 failed\n")


def test_config_supplies_categories_hours_and_targets(tmp_path: Path) -> None:
    """A test may name config.yaml; its classification section applies, and `at` picks the
    in-hours or off-hours target."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text(
        """
server: {listen: "127.0.0.1:9095"}
classification:
  rule_files: [../rules.yaml]
  categories: [business]
  fallback: {category: business}
  business_hours: {timezone: America/New_York, start: "08:00", end: "18:00"}
  response_targets:
    P1: {off_hours: {respond: 2h}}
"""
    )
    path = write(
        tmp_path,
        """
config: conf/config.yaml
at: 2026-03-02T14:00:00Z
tests:
  - name: 09:00 in New York, in hours
    labels: {alertname: InstanceDown}
    expect: {respond: 30m, resolve: 8h}
  - name: 20:00 in New York, off hours
    labels: {alertname: InstanceDown}
    at: "2026-03-02T20:00:00-05:00"
    expect: {respond: 2h, resolve: 8h}
  - name: the fallback category comes from the config
    labels: {alertname: Unknown}
    expect: {category: business, rule: null}
""",
    )
    code, text = run(path)
    assert code == 0, text


@pytest.mark.parametrize(
    ("test", "message"),
    [
        ("tests: []\n", "test.yaml:1: missing required key 'rule_files'"),
        (
            "rule_files: [rules.yaml]\ntests:\n  - labels: {a: b}\n    expect: {severty: P1}\n",
            "test.yaml:4: tests[0].expect.severty: unknown key",
        ),
        (
            "rule_files: [rules.yaml]\ntests:\n  - labels: {a: b}\n    at: 2026-01-05T12:00:00\n"
            "    expect: {severity: P1}\n",
            "tests[0].at: the time needs a UTC offset",
        ),
        (
            "rule_files: [rules.yaml]\ntests:\n  - labels: {a: b}\n    expect: {severity: P7}\n",
            "tests[0].expect.severity: expected one of P0, P1, P2, P3",
        ),
        ("rule_files: [nope.yaml]\ntests: []\n", "test.yaml:1: rule_files[0]: no such file"),
    ],
)
def test_broken_test_files_exit_2(tmp_path: Path, test: str, message: str) -> None:
    """A test file that cannot be read is reported with file, line and key; exit code 2."""
    path = write(tmp_path, test)
    code, text = run(path)
    assert code == 2
    assert message in text, text


def test_broken_rules_named_by_a_test_exit_2(tmp_path: Path) -> None:
    """A bad rule file under test is reported like a bad config."""
    path = write(tmp_path, "rule_files: [rules.yaml]\ntests: []\n", rules="rules:\n  - name: x\n")
    code, text = run(path)
    assert code == 2
    assert "rules.yaml:2: rules[0]: missing required key 'matchers'" in text


def test_no_test_files(tmp_path: Path) -> None:
    """An empty directory is not a pass."""
    assert run(tmp_path)[0] == 2


def test_top_level_business_hours_apply_as_in_the_daemon(tmp_path: Path) -> None:
    """business_hours at the top of config.yaml (the recommended place) decide off hours
    in rule tests as they do in the daemon; the tests refused such a config before (rules
    review, stop 12)."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text(
        """
business_hours: {timezone: America/New_York, start: "08:00", end: "18:00"}
classification:
  rule_files: [../rules.yaml]
  response_targets:
    P1: {off_hours: {respond: 2h}}
"""
    )
    path = write(
        tmp_path,
        """
config: conf/config.yaml
tests:
  - name: 09:00 in New York, in hours
    labels: {alertname: InstanceDown}
    at: 2026-03-02T14:00:00Z
    expect: {respond: 30m}
  - name: 20:00 in New York, off hours
    labels: {alertname: InstanceDown}
    at: "2026-03-02T20:00:00-05:00"
    expect: {respond: 2h}
""",
    )
    code, text = run(path)
    assert code == 0, text


def test_a_test_file_whose_cases_are_all_commented_out_is_an_error(tmp_path: Path) -> None:
    """It passed as "0 passed, 0 failed", green, testing nothing (rules review)."""
    path = write(tmp_path, "rule_files: [rules.yaml]\ntests: []\n")
    code, text = run(path)
    assert code == 2
    assert f"ERROR {path}:2: tests: no test cases" in text

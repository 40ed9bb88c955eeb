"""Rule tests in the spirit of ``promtool test rules``: example alerts and what they must get.

A test file names the rule files it tests (relative to itself) and optionally a config file
whose ``classification:`` section supplies categories, fallback, business hours and response
targets. Each case gives an alert's labels, optionally the time ``at`` which it is
classified, and ``expect``: only the fields written there are compared. A failure prints each
differing field and the explanation of how the alert was classified. The exit code is 0 when
every case passes, 1 when some case fails, 2 when a test file (or what it names) is broken.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from responder.calendar import parse_business_hours
from responder.classify.classifier import Classifier, load_classifier
from responder.classify.explain import format_duration, format_labels, render_explanation
from responder.model import Classification, Severity
from responder.yamlfile import ConfigError, Node, load_file

__all__ = ["DEFAULT_AT", "run_rule_tests"]

# When a case gives no time: a Monday at noon UTC, inside ordinary business hours.
DEFAULT_AT = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)

_EXPECT_KEYS = (
    "severity",
    "category",
    "rule",
    "policy",
    "actions",
    "templates",
    "group_by",
    "labels",
    "annotations",
    "heartbeat",
    "heartbeat_timeout",
    "respond",
    "resolve",
)


@dataclass(frozen=True, slots=True)
class _Case:
    name: str
    line: int
    labels: dict[str, str]
    at: datetime
    expect: tuple[tuple[str, object], ...]


@dataclass(frozen=True, slots=True)
class _Suite:
    classifier: Classifier
    cases: tuple[_Case, ...]


def _actual(field: str, c: Classification) -> object:
    getters: dict[str, Callable[[Classification], object]] = {
        "severity": lambda c: c.severity,
        "category": lambda c: c.category,
        "rule": lambda c: c.rule,
        "policy": lambda c: c.policy,
        "actions": lambda c: c.actions,
        "templates": lambda c: dict(c.templates),
        "group_by": lambda c: c.group_by,
        "labels": lambda c: dict(c.extra_labels),
        "annotations": lambda c: dict(c.extra_annotations),
        "heartbeat": lambda c: c.heartbeat,
        "heartbeat_timeout": lambda c: c.heartbeat_timeout_s,
        "respond": lambda c: None if c.target is None else c.target.respond_s,
        "resolve": lambda c: None if c.target is None else c.target.resolve_s,
    }
    return getters[field](c)


def _show(field: str, value: object) -> str:
    if value is None:
        return "none"
    if field in ("respond", "resolve", "heartbeat_timeout") and isinstance(value, int):
        return format_duration(value)
    if isinstance(value, Severity):
        return value.value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return format_labels(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return repr(value)


def _optional_str(node: Node) -> str | None:
    return None if node.is_null() else node.as_str()


def _expected(field: str, node: Node) -> object:
    if field == "severity":
        return Severity(node.as_choice(*Severity.__members__))
    if field in ("category",):
        return node.as_str()
    if field in ("rule", "policy"):
        return _optional_str(node)
    if field == "actions":
        if not node.is_list() and not node.is_null():
            raise node.error("expected a list of action names")
        return tuple(item.as_str() for item in node.as_list())
    if field == "group_by":
        if node.is_null():
            return None
        if not node.is_list():
            raise node.error("expected a list of label names, or null for the group key")
        return tuple(item.as_str() for item in node.as_list())
    if field in ("templates", "labels", "annotations"):
        return node.as_str_map()
    if field == "heartbeat":
        return node.as_bool()
    # respond / resolve: null expects no target (a heartbeat); heartbeat_timeout: null
    # expects no dead-man switch
    if node.is_null():
        return None
    return int(node.as_duration().total_seconds())


def _time(node: Node) -> datetime:
    raw = node.value
    if isinstance(raw, str):
        try:
            raw = datetime.fromisoformat(raw)
        except ValueError:
            raise node.error(f"expected an ISO 8601 time, got {raw!r}") from None
    if not isinstance(raw, datetime):
        raise node.error("expected an ISO 8601 time such as 2026-01-05T09:30:00+01:00")
    if raw.tzinfo is None:
        raise node.error("the time needs a UTC offset or Z, e.g. 2026-01-05T09:30:00Z")
    return raw


def _case(node: Node, index: int, default_at: datetime) -> _Case:
    node.keys_allowed("name", "labels", "at", "expect")
    name_node = node.get("name")
    name = f"case {index + 1}" if name_node is None else name_node.as_str()
    labels = node["labels"].as_str_map()
    at_node = node.get("at")
    at = default_at if at_node is None else _time(at_node)
    expect_node = node["expect"]
    expect_node.keys_allowed(*_EXPECT_KEYS)
    expect = tuple((field, _expected(field, value)) for field, value in expect_node.items())
    if not expect:
        raise expect_node.error("expect nothing? name at least one field to compare")
    return _Case(name, node.line, labels, at, expect)


def _suite(path: Path) -> _Suite:
    root = load_file(path)
    root.keys_allowed("rule_files", "config", "at", "tests")
    here = path.parent
    section: Node | None = None
    base_dir = here
    business_hours = None
    config_node = root.get("config")
    if config_node is not None:
        config_path = here / config_node.as_str()
        config = load_file(config_path)
        section = config.get("classification")
        base_dir = config_path.parent
        if (hours := config.get("business_hours")) is not None:
            business_hours = parse_business_hours(hours)  # as the daemon reads the config
    rule_files = root.get("rule_files")
    if rule_files is None and section is None:
        raise root.error("missing required key 'rule_files' (or a config that names them)")
    classifier = load_classifier(
        section, base_dir, rule_files=rule_files, rule_base=here, business_hours=business_hours
    )
    at_node = root.get("at")
    default_at = DEFAULT_AT if at_node is None else _time(at_node)
    tests_node = root["tests"]
    if not tests_node.is_list():
        raise tests_node.error("expected a list of test cases")
    if not tests_node.as_list():  # every case commented out must not pass for a green run
        raise tests_node.error("no test cases: a rule test file tests at least one alert")
    cases = tuple(_case(item, i, default_at) for i, item in enumerate(tests_node.as_list()))
    return _Suite(classifier, cases)


def _test_files(paths: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.glob("*.yaml") if p.is_file()))
        else:
            files.append(path)
    return files


def _indent(text: str, prefix: str = "    ") -> str:
    return "".join(prefix + line for line in text.splitlines(keepends=True))


def run_rule_tests(paths: Sequence[Path], out: TextIO) -> int:
    """Run the test files (a directory means its ``*.yaml``); return the exit code."""
    total_passed = total_failed = broken = 0
    files = _test_files(paths)
    if not files:
        out.write("no rule test files found\n")
        return 2
    for path in files:
        try:
            suite = _suite(path)
        except ConfigError as exc:
            out.write(f"ERROR {exc}\n")
            broken += 1
            continue
        passed = failed = 0
        for case in suite.cases:
            got = suite.classifier.classify(case.labels, case.at)
            diffs = [
                (field, want, _actual(field, got))
                for field, want in case.expect
                if _actual(field, got) != want
            ]
            if not diffs:
                passed += 1
                continue
            failed += 1
            out.write(f"FAIL {path}:{case.line}: {case.name}\n")
            out.write(f"  alert: {format_labels(case.labels)}\n")
            out.write(f"  at:    {case.at.isoformat()}\n")
            width = max(len(field) for field, _, _ in diffs) + 1
            for field, want, have in diffs:
                out.write(
                    f"  {field + ':':<{width}} expected {_show(field, want)}, "
                    f"got {_show(field, have)}\n"
                )
            out.write("  how it was classified:\n")
            out.write(_indent(render_explanation(suite.classifier.explain(case.labels, case.at))))
        status = "ok" if not failed else "FAILED"
        out.write(f"{status} {path}: {passed} passed, {failed} failed\n")
        total_passed += passed
        total_failed += failed
    summary = f"{total_passed} passed, {total_failed} failed"
    if broken:
        summary += f", {broken} test file(s) could not be loaded"
    out.write(f"rule tests: {summary}\n")
    if broken:
        return 2
    return 1 if total_failed else 0

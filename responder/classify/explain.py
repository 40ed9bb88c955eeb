"""Why an alert got its classification: every rule tried, every matcher's result, the merge.

``Classifier.explain`` fills an ``Explanation``; ``render_explanation`` turns it into the text
the CLI prints and rule tests show on failure. Explaining walks the rules one by one without
the index that ``classify`` uses, so it also serves as the reference the fast path is tested
against.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from responder.classify.matchers import Matcher
from responder.classify.rules import Rule
from responder.model import Classification, Labels

__all__ = [
    "FIELDS",
    "Explanation",
    "MatcherResult",
    "RuleTrial",
    "format_duration",
    "format_labels",
    "render_explanation",
]


@dataclass(frozen=True, slots=True)
class MatcherResult:
    matcher: Matcher
    value: str | None  # the label's value; None when absent (matched as "")
    matched: bool


@dataclass(frozen=True, slots=True)
class RuleTrial:
    """One rule checked against the alert, in rule order."""

    rule: Rule
    results: tuple[MatcherResult, ...]
    matched: bool

    @property
    def stops(self) -> bool:
        """A matching rule without ``continue: true`` ends the walk."""
        return self.matched and not self.rule.continue_


@dataclass(frozen=True, slots=True)
class Explanation:
    labels: Labels
    at: datetime
    trials: tuple[RuleTrial, ...]
    rule_count: int
    # Field name (severity, category, ..., target) -> what decided it, e.g. a rule name or
    # 'fallback: severity label "critical"'.
    decided_by: Mapping[str, str]
    business_hours_open: bool | None
    classification: Classification

    @property
    def matched(self) -> tuple[Rule, ...]:
        return tuple(trial.rule for trial in self.trials if trial.matched)

    @property
    def not_reached(self) -> int:
        return self.rule_count - len(self.trials)


def format_duration(seconds: int) -> str:
    """``900`` -> ``15m``, ``5400`` -> ``1h30m``, ``259200`` -> ``72h``."""
    if seconds == 0:
        return "0s"
    parts = []
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes}m")
    if secs:
        parts.append(f"{secs}s")
    return "".join(parts)


def _visible(text: str, escape: str = "") -> str:
    """``text`` with characters that are not printable shown escaped (\\x1b, \\r, \\u202e):
    labels are chosen by whoever sends an alert, and written as they are, escape sequences
    would rewrite the reader's terminal. Characters in ``escape`` get a backslash."""
    out = []
    for char in text:
        if char in escape:
            out.append("\\" + char)
        elif char.isprintable():
            out.append(char)
        else:
            out.append(repr(char)[1:-1])
    return "".join(out)


def _quote(text: str) -> str:
    return '"' + _visible(text, '"\\') + '"'


def format_labels(labels: Mapping[str, str]) -> str:
    """Labels in Prometheus' brace form, sorted by name."""
    return "{" + ", ".join(f"{_visible(k)}={_quote(v)}" for k, v in sorted(labels.items())) + "}"


def _result_line(result: MatcherResult) -> str:
    seen = "absent" if result.value is None else _quote(result.value)
    mark = "yes" if result.matched else "no "
    return f"      {mark} {result.matcher}   ({result.matcher.name} is {seen})"


def _value(field: str, classification: Classification) -> str:
    c = classification
    if field == "severity":
        return c.severity.value
    if field == "category":
        return c.category
    if field == "policy":
        return c.policy or "-"
    if field == "actions":
        return ", ".join(c.actions) or "-"
    if field == "templates":
        return ", ".join(f"{k}={v}" for k, v in sorted(c.templates.items())) or "-"
    if field == "group_by":
        return "Alertmanager's group key" if c.group_by is None else ", ".join(c.group_by)
    if field == "labels":
        return format_labels(c.extra_labels) if c.extra_labels else "-"
    if field == "annotations":
        return format_labels(c.extra_annotations) if c.extra_annotations else "-"
    if field == "heartbeat":
        if c.heartbeat_timeout_s is not None:
            return (
                f"yes, HeartbeatMissing after {format_duration(c.heartbeat_timeout_s)} of silence"
            )
        return "yes" if c.heartbeat else "no"
    if field == "target":
        if c.target is None:
            return "none (heartbeat)"
        return f"respond {format_duration(c.target.respond_s)}, " + (
            f"resolve {format_duration(c.target.resolve_s)}"
        )
    raise KeyError(field)


FIELDS: tuple[str, ...] = (
    "severity",
    "category",
    "policy",
    "actions",
    "templates",
    "group_by",
    "labels",
    "annotations",
    "heartbeat",
    "target",
)


def render_explanation(explanation: Explanation, *, all_matchers: bool = False) -> str:
    """Readable text. Rules that did not match show their first failing matcher only, unless
    ``all_matchers`` asks for every matcher's result."""
    e = explanation
    lines = [f"alert {format_labels(e.labels)}", f"at    {e.at.isoformat()}"]
    tail = f", {e.not_reached} not reached" if e.not_reached else ""
    lines.append(f"rules tried: {len(e.trials)} of {e.rule_count}{tail}")
    for trial in e.trials:
        rule = trial.rule
        if trial.matched:
            verdict = "MATCH, stops here" if trial.stops else "MATCH, continues"
            lines.append(f"  + {rule.name} ({rule.where}): {verdict}")
            lines.extend(_result_line(r) for r in trial.results)
            continue
        lines.append(f"  - {rule.name} ({rule.where}): no match")
        if all_matchers:
            lines.extend(_result_line(r) for r in trial.results)
        else:
            first_failure = next(r for r in trial.results if not r.matched)
            lines.append(_result_line(first_failure))
    if not e.trials:
        lines.append("  (no rules)")
    c = e.classification
    lines.append("result:")
    lines.append(f"  rule:        {c.rule or '- (no rule matched: fallback)'}")
    for field in FIELDS:
        source = e.decided_by.get(field)
        note = f"   [{source}]" if source else ""
        lines.append(f"  {field + ':':<12} {_value(field, c)}{note}")
    if e.business_hours_open is not None:
        state = "open" if e.business_hours_open else "closed"
        lines.append(f"  business hours: {state}")
    return "\n".join(lines) + "\n"

"""The compiled rule set: loads rule files and config, then classifies alerts, fast and pure.

Rules are tried in order (files in lexical order, rules in file order). The first matching
rule decides; with ``continue: true`` the walk goes on and later matching rules fill in only
what is still unset (maps merge key by key, earlier rules win), until a matching rule without
``continue`` ends it. Whatever is still unset falls back: severity from the alert's
``severity`` label, category from config. An alert is never dropped.

Speed comes from skipping rules, never from reordering them: a rule's ``alertname`` matchers
are decided once per distinct alertname (rules with ``alertname="X"`` are found through a
dict, the others are checked) and the surviving rule indices are cached in rule order, so an
alert only runs the remaining matchers of the few rules that can still match it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import MappingProxyType

from responder.calendar import BusinessHours, parse_business_hours
from responder.classify.explain import Explanation, MatcherResult, RuleTrial
from responder.classify.matchers import Matcher, MatchType
from responder.classify.rules import Rule, load_rule_file
from responder.classify.targets import ResponseTargets, parse_response_targets
from responder.model import (
    BUILTIN_CATEGORIES,
    DRILL_CATEGORY,
    Classification,
    Labels,
    ResponseTarget,
    Severity,
    frozen_labels,
)
from responder.yamlfile import ConfigError, Node

__all__ = [
    "DEFAULT_RULE_FILES",
    "SEVERITY_LABEL_VALUES",
    "Classifier",
    "Fallback",
    "load_classifier",
]

DEFAULT_RULE_FILES: tuple[str, ...] = ("rules/*.yaml",)

# The alert's own ``severity`` label, for alerts no rule gave a severity (lower-cased first).
SEVERITY_LABEL_VALUES: Mapping[str, Severity] = MappingProxyType(
    {
        "critical": Severity.P0,
        "error": Severity.P1,
        "high": Severity.P1,
        "warning": Severity.P2,
        "info": Severity.P3,
        "low": Severity.P3,
    }
)

# Alertnames are attacker controlled: bound the memo, and do not memoise absurd keys.
_CACHE_ENTRIES = 4096
_CACHE_KEY_CHARS = 256
_CATEGORY_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_EMPTY: Labels = frozen_labels({})
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True, slots=True)
class Fallback:
    """What decides fields no matching rule set (or everything, when no rule matched)."""

    category: str = "availability"
    severity: Severity = Severity.P2  # for a severity label that is absent or unknown

    def severity_for(self, labels: Mapping[str, str]) -> Severity:
        return SEVERITY_LABEL_VALUES.get(labels.get("severity", "").lower(), self.severity)

    def describe(self, labels: Mapping[str, str]) -> str:
        value = labels.get("severity")
        if value is None:
            return "fallback: no severity label"
        if value.lower() in SEVERITY_LABEL_VALUES:
            return f'fallback: severity label "{value}"'
        return f'fallback: unknown severity label "{value}"'


@dataclass(frozen=True, slots=True)
class _Decision:
    """What the matching rules decided together; None means nobody set it."""

    severity: Severity | None = None
    category: str | None = None
    policy: str | None = None
    actions: tuple[str, ...] | None = None
    templates: Labels = field(default_factory=lambda: _EMPTY)
    group_by: tuple[str, ...] | None = None
    labels: Labels = field(default_factory=lambda: _EMPTY)
    annotations: Labels = field(default_factory=lambda: _EMPTY)
    heartbeat: bool | None = None
    heartbeat_timeout: timedelta | None = None  # decided by the rule that decides heartbeat
    hold_page: timedelta | None = None


_NOTHING = _Decision()
_SCALARS = ("severity", "category", "policy", "actions", "group_by", "heartbeat", "hold_page")
_MAPS = ("templates", "labels", "annotations")


def _merge(rules: Sequence[Rule]) -> _Decision:
    """First set wins for every field; maps merge per key, the earlier rule's key wins."""

    def merged(maps: list[Mapping[str, str] | None]) -> Labels:
        combined: dict[str, str] = {}
        for value in reversed(maps):
            if value:
                combined.update(value)
        return frozen_labels(combined) if combined else _EMPTY

    return _Decision(
        severity=next((r.severity for r in rules if r.severity is not None), None),
        category=next((r.category for r in rules if r.category is not None), None),
        policy=next((r.policy for r in rules if r.policy is not None), None),
        actions=next((r.actions for r in rules if r.actions is not None), None),
        templates=merged([r.templates for r in rules]),
        group_by=next((r.group_by for r in rules if r.group_by is not None), None),
        labels=merged([r.labels for r in rules]),
        annotations=merged([r.annotations for r in rules]),
        heartbeat=next((r.heartbeat for r in rules if r.heartbeat is not None), None),
        heartbeat_timeout=next(
            (r.heartbeat_timeout for r in rules if r.heartbeat is not None), None
        ),
        # The hold waits for the containment of the rule whose actions run: another rule's
        # hold (say, behind an earlier `actions: []`) would hold a page nothing works on.
        hold_page=next((r.hold_page for r in rules if r.actions is not None), None),
    )


def _named(rules: Sequence[Rule]) -> str:
    """The rule a classification is named after: the one whose severity it carries, else
    (severity from the alert's label) the first that matched."""
    return next((r.name for r in rules if r.severity is not None), rules[0].name)


def _decided_by(rules: Sequence[Rule]) -> dict[str, str]:
    result: dict[str, str] = {}
    for name in _SCALARS:
        decides = "actions" if name == "hold_page" else name  # hold_page goes with actions
        setter = next((r for r in rules if getattr(r, decides) is not None), None)
        if setter is not None and getattr(setter, name) is not None:
            result[name] = setter.name
    for name in _MAPS:
        setters = [r.name for r in rules if getattr(r, name)]
        if setters:
            result[name] = ", ".join(setters)
    return result


class Classifier:
    """An immutable, compiled rule set. Build it with ``load_classifier``."""

    __slots__ = (
        "_by_alertname",
        "_cache",
        "_categories",
        "_decisions",
        "_fallback",
        "_files",
        "_finished",
        "_name_matchers",
        "_rest",
        "_rules",
        "_scan",
        "_targets",
    )

    def __init__(
        self,
        rules: Sequence[Rule],
        *,
        categories: Collection[str] = BUILTIN_CATEGORIES,
        fallback: Fallback | None = None,
        targets: ResponseTargets | None = None,
        files: Sequence[str] = (),
    ) -> None:
        fallback = fallback or Fallback()
        if fallback.category not in categories:
            raise ValueError(f"fallback category {fallback.category!r} is not a category")
        names: set[str] = set()
        for rule in rules:
            if rule.name in names:
                raise ValueError(f"duplicate rule name {rule.name!r}")
            names.add(rule.name)
        self._rules: tuple[Rule, ...] = tuple(rules)
        self._categories = frozenset(categories)
        self._fallback = fallback
        self._targets = targets or parse_response_targets(None, None)
        self._files = tuple(files)
        self._decisions = tuple(_merge((rule,)) for rule in self._rules)

        by_alertname: dict[str, list[int]] = {}
        scan: list[int] = []
        name_matchers: list[tuple[Matcher, ...]] = []
        rest: list[tuple[Matcher, ...]] = []
        for index, rule in enumerate(self._rules):
            on_name = tuple(m for m in rule.matchers if m.name == "alertname")
            others = [m for m in rule.matchers if m.name != "alertname"]
            # Equality first: a cheap miss saves a regex run; the result is an AND either way.
            others.sort(key=lambda m: m.type not in (MatchType.EQUAL, MatchType.NOT_EQUAL))
            name_matchers.append(on_name)
            rest.append(tuple(others))
            key = next((m.value for m in on_name if m.type is MatchType.EQUAL), None)
            if key is None:
                scan.append(index)
            else:
                by_alertname.setdefault(key, []).append(index)
        self._by_alertname = {k: tuple(v) for k, v in by_alertname.items()}
        self._scan = tuple(scan)
        self._name_matchers = tuple(name_matchers)
        self._rest = tuple(rest)
        # The mutable parts: memos of pure results, invisible to callers.
        self._cache: dict[str, tuple[int, ...]] = {}
        self._finished: dict[tuple[int, Severity, ResponseTarget | None], Classification] = {}

    # -- facts ------------------------------------------------------------------------------
    @property
    def rule_count(self) -> int:
        return len(self._rules)

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._rules

    @property
    def files(self) -> tuple[str, ...]:
        """The rule files loaded, in the order their rules are tried."""
        return self._files

    @property
    def categories(self) -> frozenset[str]:
        return self._categories

    @property
    def fallback(self) -> Fallback:
        return self._fallback

    @property
    def targets(self) -> ResponseTargets:
        return self._targets

    def target_for(self, severity: Severity, now: datetime) -> ResponseTarget:
        """The response target in force at ``now`` (business hours or not)."""
        return self._targets.target(severity, now)

    # -- classification ---------------------------------------------------------------------
    def _candidates(self, alertname: str) -> tuple[int, ...]:
        """Indices, in rule order, of rules whose alertname matchers accept ``alertname``."""
        found = self._cache.get(alertname)
        if found is not None:
            return found
        checks = self._name_matchers

        def accepts(index: int) -> bool:
            return all(m.matches_value(alertname) for m in checks[index])

        picked = [i for i in self._by_alertname.get(alertname, ()) if accepts(i)]
        picked.extend(i for i in self._scan if accepts(i))
        picked.sort()
        found = tuple(picked)
        if len(alertname) <= _CACHE_KEY_CHARS:
            if len(self._cache) >= _CACHE_ENTRIES:
                self._cache.clear()
            self._cache[alertname] = found
        return found

    def classify(self, labels: Mapping[str, str], now: datetime) -> Classification:
        """The classification of an alert with ``labels`` at ``now`` (an aware datetime)."""
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        rules = self._rules
        rest = self._rest
        first = -1
        more: list[Rule] | None = None
        for index in self._candidates(labels.get("alertname", "")):
            for matcher in rest[index]:
                if not matcher.matches(labels):
                    break
            else:
                rule = rules[index]
                if first < 0:
                    first = index
                elif more is None:
                    more = [rules[first], rule]
                else:
                    more.append(rule)
                if not rule.continue_:
                    break
        if first < 0:
            return self._finish(_NOTHING, None, labels, now, first)
        if more is None:
            return self._finish(self._decisions[first], rules[first].name, labels, now, first)
        return self._finish(_merge(more), _named(more), labels, now)

    def _finish(
        self,
        decision: _Decision,
        rule: str | None,
        labels: Mapping[str, str],
        now: datetime,
        index: int | None = None,
    ) -> Classification:
        """The classification for what one rule (``index``; -1 for none) or several rules
        decided. For one rule it depends only on the severity and the response target, so
        equal ones are one shared object: built once, and the store recognises it at once."""
        severity = decision.severity or self._fallback.severity_for(labels)
        heartbeat = bool(decision.heartbeat)
        target = None if heartbeat else self._targets.target(severity, now)
        if index is None:
            return self._build(decision, rule, severity, heartbeat, target)
        key = (index, severity, target)
        found = self._finished.get(key)
        if found is None:
            if len(self._finished) >= _CACHE_ENTRIES:
                self._finished.clear()
            found = self._finished[key] = self._build(decision, rule, severity, heartbeat, target)
        return found

    def _build(
        self,
        decision: _Decision,
        rule: str | None,
        severity: Severity,
        heartbeat: bool,
        target: ResponseTarget | None,
    ) -> Classification:
        return Classification(
            severity=severity,
            category=decision.category or self._fallback.category,
            rule=rule,
            policy=decision.policy,
            actions=decision.actions or (),
            templates=decision.templates,
            group_by=decision.group_by,
            extra_labels=decision.labels,
            extra_annotations=decision.annotations,
            target=target,  # None for a heartbeat: proof of life, nobody has to respond
            heartbeat=heartbeat,
            heartbeat_timeout_s=(
                int(decision.heartbeat_timeout.total_seconds())
                if heartbeat and decision.heartbeat_timeout is not None
                else None
            ),
            hold_page_s=(
                None if decision.hold_page is None else int(decision.hold_page.total_seconds())
            ),
        )

    def explain(self, labels: Mapping[str, str], now: datetime) -> Explanation:
        """Walk every rule in order without the index, recording each matcher's result."""
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        trials: list[RuleTrial] = []
        matched: list[Rule] = []
        for rule in self._rules:
            results = tuple(
                MatcherResult(m, labels.get(m.name), m.matches(labels)) for m in rule.matchers
            )
            hit = all(r.matched for r in results)
            trials.append(RuleTrial(rule, results, hit))
            if hit:
                matched.append(rule)
                if not rule.continue_:
                    break
        decision = _merge(matched) if matched else _NOTHING
        classification = self._finish(decision, _named(matched) if matched else None, labels, now)
        decided_by = _decided_by(matched)
        if decision.severity is None:
            decided_by["severity"] = self._fallback.describe(labels)
        if decision.category is None:
            decided_by["category"] = "fallback: the default category"
        if classification.target is not None:
            open_now = self._targets.is_open(now)
            decided_by["target"] = (
                f"{classification.severity} target"
                if open_now is None
                else f"{classification.severity} target, "
                + ("business hours" if open_now else "off hours")
            )
        return Explanation(
            labels=frozen_labels(labels),
            at=now,
            trials=tuple(trials),
            rule_count=len(self._rules),
            decided_by=MappingProxyType(decided_by),
            business_hours_open=self._targets.is_open(now),
            classification=classification,
        )

    # -- cross-checks -----------------------------------------------------------------------
    def check_references(
        self,
        policies: Collection[str] | None,
        actions: Collection[str] | None,
        templates: Collection[str] | None,
    ) -> None:
        """Raise ConfigError at the first rule line naming an unknown policy, action or
        template. None skips a catalog that does not exist yet."""
        catalogs = {"policy": policies, "action": actions, "template": templates}
        titles = {"policy": "escalation policy", "action": "action", "template": "template"}
        for rule in self._rules:
            for ref in rule.references:
                known = catalogs[ref.kind]
                if known is None or ref.name in known:
                    continue
                listing = ", ".join(sorted(known)) or "none defined"
                raise ConfigError(
                    ref.file,
                    ref.line,
                    ref.key,
                    f"rule {rule.name!r}: unknown {titles[ref.kind]} {ref.name!r} "
                    f"(known: {listing})",
                )


# -- loading ---------------------------------------------------------------------------------
def _categories(node: Node | None) -> tuple[str, ...]:
    if node is None:
        return BUILTIN_CATEGORIES
    extra: list[str] = []
    for item in node.as_list():
        name = item.as_str()
        if not _CATEGORY_NAME.fullmatch(name):
            raise item.error(f"invalid category name {name!r} (expected [a-z0-9][a-z0-9_-]*)")
        if name in BUILTIN_CATEGORIES:
            raise item.error(f"{name!r} is a built-in category; list only new ones")
        if name == DRILL_CATEGORY:
            raise item.error(
                f"{name!r} is reserved for drills (never escalated, left out of the KPIs)"
            )
        if name in extra:
            raise item.error(f"category {name!r} is listed twice")
        extra.append(name)
    return BUILTIN_CATEGORIES + tuple(extra)


def _fallback(node: Node | None, categories: Collection[str]) -> Fallback:
    if node is None:
        return Fallback()
    node.keys_allowed("category", "severity")
    result = Fallback()
    category_node = node.get("category")
    if category_node is not None:
        category = category_node.as_str()
        if category not in categories:
            raise category_node.error(
                f"unknown category {category!r}; known: {', '.join(sorted(categories))}"
            )
        result = Fallback(category=category, severity=result.severity)
    severity_node = node.get("severity")
    if severity_node is not None:
        text = severity_node.as_str()
        if text not in Severity.__members__:
            raise severity_node.error(f"impossible severity {text!r}; expected P0, P1, P2 or P3")
        result = Fallback(category=result.category, severity=Severity(text))
    return result


def _rule_paths(node: Node | None, base_dir: Path) -> list[tuple[Path, str]]:
    """Files named by ``rule_files`` patterns: patterns in order, each one's matches sorted
    lexically, a file matched twice kept at its first place. A pattern the operator wrote
    that matches nothing is an error; the default matching nothing just means no rules."""
    if node is None:
        patterns: list[tuple[str, Node | None]] = [(p, None) for p in DEFAULT_RULE_FILES]
    else:
        if not node.is_list():
            raise node.error("expected a list of file names or glob patterns")
        patterns = [(item.as_str(), item) for item in node.as_list()]
    seen: set[Path] = set()
    result: list[tuple[Path, str]] = []
    for pattern, item in patterns:
        try:
            matches = _matching_files(base_dir, pattern)
        except _BrokenLink as exc:
            message = f"{exc.path} is a symbolic link to {exc.target}, which does not exist"
            if item is None:
                raise ConfigError(str(exc.path), 0, "", message) from None
            raise item.error(message) from None
        if not matches and item is not None:
            if _GLOB_CHARS.search(pattern):
                raise item.error(f"pattern matches no file (looked in {base_dir})")
            if (base_dir / pattern).is_dir():
                raise item.error(
                    f"{base_dir / pattern} is a folder, not a rule file "
                    f"(write {pattern.rstrip('/')}/*.yaml for the files in it)"
                )
            raise item.error(f"no such file: {base_dir / pattern}")
        for path in matches:
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                result.append((path, str(path)))
    return result


class _BrokenLink(Exception):
    """A rule file that is a symbolic link to nothing (its target was removed or renamed)."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path
        try:
            self.target = os.readlink(path)
        except OSError:
            self.target = "?"


def _is_broken_link(path: Path) -> bool:
    return path.is_symlink() and not path.exists()


def _matching_files(base_dir: Path, pattern: str) -> list[Path]:
    """The files ``pattern`` (relative to ``base_dir``, or absolute) matches, sorted. As
    ``glob`` would, with three differences: the folder's own name is never read as a
    pattern (a config in ``responder[prod]/`` finds its rules); ``**`` does not walk into
    symlinked folders, so a link loop cannot make it endless; hidden files and folders are
    left out unless the pattern names one (an editor's ``.#rules.yaml``). A match that is a
    symbolic link to nothing raises ``_BrokenLink``: glob would drop it, and its rules with it."""
    given = Path(pattern)
    if given.is_absolute():
        root, relative = Path(given.anchor), str(given.relative_to(given.anchor))
    else:
        root, relative = base_dir, pattern
    if not _GLOB_CHARS.search(relative):
        literal = root / relative
        if _is_broken_link(literal):
            raise _BrokenLink(literal)
        return [literal] if literal.is_file() else []
    # As glob reads them: "**" inside a name is "*", and a trailing "**" is every file below.
    components = [c if c == "**" else c.replace("**", "*") for c in Path(relative).parts]
    if components[-1] == "**":
        components.append("*")
    hidden_named = any(c[0] == "." and c not in (".", "..") for c in components)
    found = []
    for match in root.glob(str(Path(*components))):
        parts = match.relative_to(root).parts
        if not hidden_named and any(p[0] == "." and p not in (".", "..") for p in parts):
            continue
        if match.is_file():
            found.append(match)
        elif _is_broken_link(match):
            raise _BrokenLink(match)
    return sorted(found, key=str)


def load_classifier(
    section: Node | None,
    base_dir: Path,
    *,
    rule_files: Node | None = None,
    rule_base: Path | None = None,
    business_hours: BusinessHours | None = None,
) -> Classifier:
    """Build the classifier from config.yaml's ``classification:`` section (None if absent).

    Rule file patterns are relative to ``base_dir``. Rule tests pass ``rule_files`` (a list
    node) to replace the section's own, relative to ``rule_base``. ``business_hours`` is the
    top-level definition, which escalation shares; the section may hold its own only when
    there is none at the top level (one definition, one truth). Raises ConfigError.
    """
    if section is None:
        # An absent section reads like an empty one: every key takes its default.
        section = Node(None, "config", 0, "classification")
    section.keys_allowed(
        "rule_files", "categories", "business_hours", "response_targets", "fallback"
    )
    get = section.get
    categories = _categories(get("categories"))
    fallback = _fallback(get("fallback"), categories)
    hours_node = get("business_hours")
    if hours_node is not None:
        if business_hours is not None:
            raise hours_node.error(
                "business hours are defined at the top level already; keep one definition"
            )
        business_hours = parse_business_hours(hours_node)
    targets = parse_response_targets(get("response_targets"), business_hours)
    if rule_files is not None:
        paths = _rule_paths(rule_files, rule_base or base_dir)
    else:
        paths = _rule_paths(get("rule_files"), base_dir)

    rules: list[Rule] = []
    first_seen: dict[str, Rule] = {}
    for path, display in paths:
        for rule in load_rule_file(path, categories, display):
            earlier = first_seen.get(rule.name)
            if earlier is not None:
                raise ConfigError(
                    rule.file,
                    rule.name_line or rule.line,
                    f"{rule.path}.name",
                    f"duplicate rule name {rule.name!r} (first defined at {earlier.where})",
                )
            first_seen[rule.name] = rule
            rules.append(rule)
    return Classifier(
        rules,
        categories=categories,
        fallback=fallback,
        targets=targets,
        files=[display for _, display in paths],
    )

"""Rule files: strict reading of ``rules/*.yaml`` into frozen ``Rule`` objects.

A rule file is a mapping with one key, ``rules:``, a list of rules. Each rule names itself,
lists Alertmanager matchers and says what it decides: severity (directly, or from impact and
urgency), category, escalation policy, actions, templates, grouping, labels and annotations
to add, whether matching continues, and whether the alert is a heartbeat. Every mistake is a
``ConfigError`` naming the file, the line and the key; nothing is guessed or skipped.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Literal

from responder.classify.matchers import LABEL_NAME, Matcher, matchers_from_node
from responder.model import Level, Severity, frozen_labels, severity_from
from responder.yamlfile import Node, load_file

__all__ = ["RULE_KEYS", "Reference", "Rule", "load_rule_file", "parse_rule"]

RULE_KEYS: tuple[str, ...] = (
    "name",
    "description",
    "matchers",
    "severity",
    "impact",
    "urgency",
    "category",
    "policy",
    "actions",
    "templates",
    "group_by",
    "labels",
    "annotations",
    "continue",
    "heartbeat",
    "heartbeat_timeout",
    "hold_page",
)

# Rule names show up in timelines, metrics and CLI output: keep them to one plain word.
_RULE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
# The notices a rule may choose templates for (``responder.messages.Kind``; drills and
# bundles span incidents, so no rule chooses theirs).
RULE_TEMPLATE_KINDS = ("activation", "status", "recovery")

# The dead-man switch checks every 30 s; shorter would page for a heartbeat in transit.
MIN_HEARTBEAT_TIMEOUT = timedelta(minutes=1)
MAX_HEARTBEAT_TIMEOUT = timedelta(days=7)

RefKind = Literal["policy", "action", "template"]


@dataclass(frozen=True, slots=True)
class Reference:
    """A name a rule uses from another catalog, with where it was written (for errors)."""

    kind: RefKind
    name: str
    file: str
    line: int
    key: str


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled rule. ``None`` (or an empty map) means "not set by this rule"."""

    name: str
    matchers: tuple[Matcher, ...]
    file: str
    line: int
    path: str = ""  # the key path in its file, e.g. rules[3]
    description: str = ""
    severity: Severity | None = None
    impact: Level | None = None
    urgency: Level | None = None
    category: str | None = None
    policy: str | None = None
    actions: tuple[str, ...] | None = None
    templates: Mapping[str, str] | None = None
    group_by: tuple[str, ...] | None = None
    labels: Mapping[str, str] | None = None
    annotations: Mapping[str, str] | None = None
    continue_: bool = False
    heartbeat: bool | None = None
    # With heartbeat: true, silence this long (no firing copy received) opens a
    # HeartbeatMissing incident (responder.heartbeats): the dead-man switch.
    heartbeat_timeout: timedelta | None = None
    # With actions: hold the first page this long while containment works; a failed
    # containment pages at once, a resolve within the hold pages nobody.
    hold_page: timedelta | None = None
    references: tuple[Reference, ...] = ()
    name_line: int = 0  # the line of its name: key, for errors about the name (0: line)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def _reference_name(node: Node, what: str) -> str:
    name = node.as_str()
    if not name or name != name.strip():
        raise node.error(f"{what} name must be non-empty, without surrounding spaces")
    return name


def _label_map(node: Node) -> Mapping[str, str]:
    result: dict[str, str] = {}
    for key, value in node.items():
        if not LABEL_NAME.fullmatch(key):
            raise value.error("invalid label name (expected [a-zA-Z_][a-zA-Z0-9_]*)")
        result[key] = value.as_str()
    return frozen_labels(result)


def _severity(node: Node) -> tuple[Severity | None, Level | None, Level | None]:
    severity_node = node.get("severity")
    impact_node = node.get("impact")
    urgency_node = node.get("urgency")
    if severity_node is not None:
        if impact_node is not None or urgency_node is not None:
            culprit = impact_node or urgency_node or severity_node
            raise culprit.error("give either severity or impact and urgency, not both")
        text = severity_node.as_str()
        if text not in Severity.__members__:
            raise severity_node.error(f"impossible severity {text!r}; expected P0, P1, P2 or P3")
        return Severity(text), None, None
    if impact_node is None and urgency_node is None:
        return None, None, None
    if impact_node is None or urgency_node is None:
        present = impact_node or urgency_node
        assert present is not None
        missing = "urgency" if urgency_node is None else "impact"
        raise present.error(f"needs {missing} too (impact x urgency decides the severity)")
    impact = Level(impact_node.as_choice("high", "low"))
    urgency = Level(urgency_node.as_choice("high", "low"))
    return severity_from(impact, urgency), impact, urgency


def parse_rule(node: Node, categories: Collection[str]) -> Rule:
    """One rule mapping; ``categories`` are the names a rule may use."""
    if not node.is_map():
        raise node.error("expected a rule (a mapping with name and matchers)")
    node.keys_allowed(*RULE_KEYS)
    name_node = node["name"]
    name = name_node.as_str()
    if not _RULE_NAME.fullmatch(name):
        raise name_node.error(
            f"invalid rule name {name!r} (letters, digits and _ . : -, starting with a "
            "letter or digit)"
        )
    matchers_node = node["matchers"]
    if matchers_node.is_null():
        # An empty key (its matchers commented out, say) would match every alert and end the
        # search there: say it, with [], if that is what is meant.
        raise matchers_node.error("no matchers; write [] to match every alert")
    matchers = matchers_from_node(matchers_node)
    severity, impact, urgency = _severity(node)
    references: list[Reference] = []

    category = None
    category_node = node.get("category")
    if category_node is not None:
        category = category_node.as_str()
        if category not in categories:
            raise category_node.error(
                f"unknown category {category!r}; known: {', '.join(sorted(categories))} "
                "(declare more in classification.categories)"
            )

    policy = None
    policy_node = node.get("policy")
    if policy_node is not None:
        policy = _reference_name(policy_node, "policy")
        references.append(
            Reference("policy", policy, policy_node.file, policy_node.line, policy_node.path)
        )

    actions = None
    actions_node = node.get("actions")
    if actions_node is not None:
        if not actions_node.is_list():
            raise actions_node.error("expected a list of action names")
        names: list[str] = []
        for item in actions_node.as_list():
            action = _reference_name(item, "action")
            if action in names:
                raise item.error(f"action {action!r} is listed twice")
            names.append(action)
            references.append(Reference("action", action, item.file, item.line, item.path))
        actions = tuple(names)

    templates = None
    templates_node = node.get("templates")
    if templates_node is not None:
        chosen: dict[str, str] = {}
        for kind, item in templates_node.items():
            if kind not in RULE_TEMPLATE_KINDS:
                raise item.error(
                    f"unknown notice kind {kind!r} (one of {', '.join(RULE_TEMPLATE_KINDS)})"
                )
            chosen[kind] = _reference_name(item, "template")
            references.append(Reference("template", chosen[kind], item.file, item.line, item.path))
        templates = frozen_labels(chosen)

    group_by = None
    group_node = node.get("group_by")
    if group_node is not None:
        if not group_node.is_list():
            raise group_node.error("expected a list of label names")
        labels_seen: list[str] = []
        for item in group_node.as_list():
            label = item.as_str()
            if not LABEL_NAME.fullmatch(label):
                raise item.error(f"invalid label name {label!r}")
            if label in labels_seen:
                raise item.error(f"label {label!r} is listed twice")
            labels_seen.append(label)
        group_by = tuple(labels_seen)

    labels_node = node.get("labels")
    annotations_node = node.get("annotations")
    labels = None if labels_node is None else _label_map(labels_node)
    annotations = None if annotations_node is None else _label_map(annotations_node)

    continue_node = node.get("continue")
    continue_ = False if continue_node is None else continue_node.as_bool()
    heartbeat_node = node.get("heartbeat")
    heartbeat = None if heartbeat_node is None else heartbeat_node.as_bool()
    timeout_node = node.get("heartbeat_timeout")
    heartbeat_timeout = None
    if timeout_node is not None:
        heartbeat_timeout = timeout_node.as_duration()
        if heartbeat is not True:
            raise timeout_node.error("heartbeat_timeout needs heartbeat: true in the same rule")
        if not MIN_HEARTBEAT_TIMEOUT <= heartbeat_timeout <= MAX_HEARTBEAT_TIMEOUT:
            raise timeout_node.error(
                "heartbeat_timeout must be between 1m and 7d, and longer than the repeat "
                "interval of Alertmanager's route for this alert"
            )
    hold_node = node.get("hold_page")
    hold_page = None
    if hold_node is not None:
        hold_page = hold_node.as_duration()
        if hold_page > timedelta(hours=1):
            raise hold_node.error("hold a page at most 1h: a human must hear of it eventually")
        if actions is None or not actions:
            raise hold_node.error("hold_page needs actions whose containment it waits for")
    description_node = node.get("description")
    description = "" if description_node is None else description_node.as_str()

    decided = (severity, category, policy, actions, templates, group_by, labels, annotations)
    if heartbeat is None and all(value is None for value in decided):
        raise node.error(
            f"rule {name!r} decides nothing: set severity (or impact and urgency), category, "
            "policy, actions, templates, group_by, labels, annotations or heartbeat"
        )
    return Rule(
        name=name,
        matchers=matchers,
        file=node.file,
        line=node.line,
        name_line=name_node.line,
        path=node.path,
        description=description,
        severity=severity,
        impact=impact,
        urgency=urgency,
        category=category,
        policy=policy,
        actions=actions,
        templates=templates,
        group_by=group_by,
        labels=labels,
        annotations=annotations,
        continue_=continue_,
        heartbeat=heartbeat,
        heartbeat_timeout=heartbeat_timeout,
        hold_page=hold_page,
        references=tuple(references),
    )


def load_rule_file(
    path: Path, categories: Collection[str], display: str | None = None
) -> list[Rule]:
    """Every rule of one file, in file order."""
    root = load_file(path, display)
    if not root.is_map():
        raise root.error("expected a mapping with a rules: list")
    root.keys_allowed("rules")
    rules_node = root["rules"]
    if not rules_node.is_list() and not rules_node.is_null():
        raise rules_node.error("expected a list of rules")
    return [parse_rule(item, categories) for item in rules_node.as_list()]

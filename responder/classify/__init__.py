"""The classify stage: rule files decide each alert's severity, category and response plan.

Alertmanager-style matchers select alerts (``matchers``); rule files compile into an
immutable ``Classifier`` (``rules``, ``classifier``); response targets depend on severity
and business hours (``targets``); ``explain`` says why an alert got what it got, and
``ruletest`` runs promtool-style rule tests. ``docs/rules.md`` is the operator's reference.
"""

from responder.classify.classifier import (
    DEFAULT_RULE_FILES,
    SEVERITY_LABEL_VALUES,
    Classifier,
    Fallback,
    load_classifier,
)
from responder.classify.explain import (
    Explanation,
    MatcherResult,
    RuleTrial,
    format_duration,
    render_explanation,
)
from responder.classify.matchers import (
    Matcher,
    MatcherError,
    MatchType,
    parse_matcher,
    parse_matchers,
)
from responder.classify.rules import Reference, Rule
from responder.classify.ruletest import run_rule_tests
from responder.classify.targets import DEFAULT_TARGETS, ResponseTargets

__all__ = [
    "DEFAULT_RULE_FILES",
    "DEFAULT_TARGETS",
    "SEVERITY_LABEL_VALUES",
    "Classifier",
    "Explanation",
    "Fallback",
    "MatchType",
    "Matcher",
    "MatcherError",
    "MatcherResult",
    "Reference",
    "ResponseTargets",
    "Rule",
    "RuleTrial",
    "format_duration",
    "load_classifier",
    "parse_matcher",
    "parse_matchers",
    "render_explanation",
    "run_rule_tests",
]

"""Config that loads but is likely not what the operator meant: warnings, not errors.

``responder check`` prints them; the daemon logs them at start and after each reload, so an
edit that leaves pages going nowhere is said where the operator looks.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

from responder.classify import format_duration
from responder.classify.rules import Rule
from responder.config import display_name
from responder.contain.catalog import missing_programs
from responder.escalate import EscalationConfig

if TYPE_CHECKING:
    from responder.runtime import Snapshot

# How long Alertmanager's default route may leave a firing alert unsent: a repeat is due
# after repeat_interval (4h) and goes out on the next group_interval tick (5m).
ALERTMANAGER_DEFAULT_RESEND = timedelta(hours=4, minutes=5)


def config_warnings(snapshot: Snapshot) -> list[str]:
    classifier = snapshot.classifier
    warnings: list[str] = []
    if not classifier.rule_count:
        # Valid, but every alert takes the default classification: likely a wrong path.
        warnings.append(
            "no classification rules loaded; every alert gets the default classification "
            "(check classification.rule_files)"
        )
    warnings += heartbeat_timeout_warnings(classifier.rules)
    warnings += paging_warnings(
        snapshot.escalation, classifier.rules, display_name(snapshot.config.path)
    )
    warnings += missing_programs(snapshot.actions)
    return warnings


def paging_warnings(escalation: EscalationConfig, rules: Sequence[Rule], file: str) -> list[str]:
    """Contacts or policies that no incident can reach: an incident whose rules name no
    policy takes ``incidents.default_policy``, and without one it pages nobody."""
    if escalation.default_policy is not None:
        return []
    if escalation.policies:
        naming = sum(1 for rule in rules if rule.policy is not None)
        return [
            f"{file}: incidents.default_policy is not set: an incident whose rules name no "
            f"policy ({len(rules) - naming} of {len(rules)} rules name none, and alerts no "
            "rule matches) pages nobody; set it to one of "
            f"{', '.join(sorted(escalation.policies))} (docs/escalation.md)"
        ]
    if escalation.directory.contacts:
        return [
            f"{file}: contacts are defined but no escalation_policies: nobody is paged "
            "(docs/escalation.md)"
        ]
    return []


def heartbeat_timeout_warnings(rules: Sequence[Rule]) -> list[str]:
    """Heartbeat timeouts that Alertmanager's default route would outlast: valid (a route of
    its own may re-send the alert every minute), but with the defaults HeartbeatMissing
    would fire between the heartbeat's copies, every time."""
    default = format_duration(int(ALERTMANAGER_DEFAULT_RESEND.total_seconds()))
    return [
        f"{rule.file}:{rule.line}: rule {rule.name!r}: heartbeat_timeout "
        f"{format_duration(int(rule.heartbeat_timeout.total_seconds()))} is not longer than "
        f"Alertmanager's default repeat_interval plus group_interval ({default}): unless "
        "the route for this alert re-sends it more often, HeartbeatMissing fires between its "
        "copies (docs/rules.md#heartbeats)"
        for rule in rules
        if rule.heartbeat_timeout is not None
        and rule.heartbeat_timeout <= ALERTMANAGER_DEFAULT_RESEND
    ]

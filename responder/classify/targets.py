"""Response targets: how fast each severity must be answered and fixed, in and out of hours.

The defaults are the seeds' (P0 15m/4h, P1 30m/8h, P2 2h/24h, P3 4h/72h). An operator may
change any of them and give an ``off_hours`` variant, which applies while the configured
business hours (``responder.calendar``) are closed. The answer for an instant is a pure
function of the severity and that instant.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType

from responder.calendar import BusinessHours
from responder.model import ResponseTarget, Severity
from responder.yamlfile import Node

__all__ = ["DEFAULT_TARGETS", "ResponseTargets", "parse_response_targets"]

DEFAULT_TARGETS: Mapping[Severity, ResponseTarget] = MappingProxyType(
    {
        Severity.P0: ResponseTarget(respond_s=15 * 60, resolve_s=4 * 3600),
        Severity.P1: ResponseTarget(respond_s=30 * 60, resolve_s=8 * 3600),
        Severity.P2: ResponseTarget(respond_s=2 * 3600, resolve_s=24 * 3600),
        Severity.P3: ResponseTarget(respond_s=4 * 3600, resolve_s=72 * 3600),
    }
)


@dataclass(frozen=True, slots=True)
class ResponseTargets:
    """Targets per severity; ``off_hours`` equals ``in_hours`` where no variant was given."""

    in_hours: Mapping[Severity, ResponseTarget]
    off_hours: Mapping[Severity, ResponseTarget]
    business_hours: BusinessHours | None

    def is_open(self, now: datetime) -> bool | None:
        """Whether business hours are open at ``now``; None when none are configured."""
        return None if self.business_hours is None else self.business_hours.is_open(now)

    def target(self, severity: Severity, now: datetime) -> ResponseTarget:
        """The target in force at ``now``."""
        inside = self.in_hours[severity]
        outside = self.off_hours[severity]
        # Skipping the calendar when both variants agree keeps classify cheap.
        if outside == inside or self.business_hours is None:
            return inside
        return inside if self.business_hours.is_open(now) else outside


def _seconds(node: Node) -> int:
    span = node.as_duration()
    if span <= timedelta(0):
        raise node.error("must be longer than zero")
    if span % timedelta(seconds=1):
        raise node.error("must be a whole number of seconds")
    return int(span.total_seconds())


def _target(node: Node, base: ResponseTarget) -> ResponseTarget:
    respond_node = node.get("respond")
    resolve_node = node.get("resolve")
    respond = base.respond_s if respond_node is None else _seconds(respond_node)
    resolve = base.resolve_s if resolve_node is None else _seconds(resolve_node)
    if respond > resolve:
        culprit = respond_node or resolve_node or node
        raise culprit.error(
            f"respond ({timedelta(seconds=respond)}) is longer than resolve "
            f"({timedelta(seconds=resolve)})"
        )
    return ResponseTarget(respond_s=respond, resolve_s=resolve)


def parse_response_targets(
    node: Node | None, business_hours: BusinessHours | None
) -> ResponseTargets:
    """Read ``response_targets:``; a severity or key left out keeps its default.

    ``off_hours`` values left out fall back to the same severity's in-hours target.
    """
    in_hours = dict(DEFAULT_TARGETS)
    off_hours = dict(DEFAULT_TARGETS)
    if node is not None:
        node.keys_allowed(*(s.value for s in Severity))
        for name, entry in node.items():
            severity = Severity(name)
            entry.keys_allowed("respond", "resolve", "off_hours")
            if entry.is_null():
                raise entry.error("expected respond and/or resolve")
            inside = _target(entry, DEFAULT_TARGETS[severity])
            in_hours[severity] = inside
            off_hours[severity] = inside
            off_node = entry.get("off_hours")
            if off_node is not None:
                if business_hours is None:
                    raise off_node.error(
                        "off_hours needs business hours: define business_hours (at the top "
                        "level, or in classification)"
                    )
                off_node.keys_allowed("respond", "resolve")
                if off_node.is_null():
                    raise off_node.error("expected respond and/or resolve")
                off_hours[severity] = _target(off_node, inside)
    return ResponseTargets(
        in_hours=MappingProxyType(in_hours),
        off_hours=MappingProxyType(off_hours),
        business_hours=business_hours,
    )

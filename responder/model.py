"""Domain objects shared by every stage: alerts as received, and their classification.

Frozen dataclasses with slots; enums are StrEnums so they store and print as plain text.
The two made for every webhook, ``Alert`` and ``WebhookMessage``, are frozen msgspec
structs instead: the same immutable, typed objects, made about eight times faster (a frozen
dataclass sets each field through ``object.__setattr__``), 2.5 µs of a webhook's CPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType

import msgspec


class AlertStatus(StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"
    # Firing, but Alertmanager stopped re-sending it without ever sending the resolve
    # (see FACTS.md: a resolve is only sent if the firing notification was delivered).
    STALE = "stale"


class Severity(StrEnum):
    P0 = "P0"  # critical
    P1 = "P1"  # high
    P2 = "P2"  # medium
    P3 = "P3"  # low

    @property
    def rank(self) -> int:
        """0 for the most severe."""
        return int(self.value[1])


class Level(StrEnum):
    """Impact and urgency each take one of these; together they decide a severity."""

    HIGH = "high"
    LOW = "low"


def severity_from(impact: Level, urgency: Level) -> Severity:
    """The seeds' matrix: high+high P0, high+low P1, low+high P2, low+low P3."""
    if impact is Level.HIGH:
        return Severity.P0 if urgency is Level.HIGH else Severity.P1
    return Severity.P2 if urgency is Level.HIGH else Severity.P3


# The built-in categories; operators may declare more in config.
BUILTIN_CATEGORIES: tuple[str, ...] = (
    "security",
    "data-integrity",
    "availability",
    "performance",
    "infrastructure",
    "compliance",
)

# The category of drills (responder.drills): never escalated, kept out of every KPI. Reserved,
# so that no rule can give it to a real incident.
DRILL_CATEGORY = "drill"
# Who resolves an incident whose last alerts went stale (alerts.stale_after without a copy):
# nobody saw it end, so its time to resolve is left out of MTTR (metric and report).
STALE_SWEEP = "stale-sweep"

Labels = Mapping[str, str]


def frozen_labels(labels: Mapping[str, str]) -> Labels:
    """A read-only view, so that a frozen dataclass stays frozen all the way down."""
    return MappingProxyType(dict(labels))


# gc=False: they hold only text, times and read-only views of dicts of text, which
# cannot make a reference cycle, so the collector need not track them.
class Alert(msgspec.Struct, frozen=True, gc=False):
    """One alert exactly as Alertmanager described it in a webhook."""

    fingerprint: str
    status: AlertStatus  # FIRING or RESOLVED as received; STALE is only ever set by the store
    labels: Labels
    annotations: Labels
    starts_at: datetime
    ends_at: datetime | None  # None while firing (Alertmanager sends year 1)
    generator_url: str = ""


class WebhookMessage(msgspec.Struct, frozen=True, gc=False):
    """A decoded Alertmanager webhook (version 4)."""

    receiver: str
    status: AlertStatus
    group_key: str
    group_labels: Labels
    common_labels: Labels
    common_annotations: Labels
    external_url: str
    truncated_alerts: int
    alerts: tuple[Alert, ...]
    # What was mended in the alerts' text to keep them (a value cut to size, a NUL
    # replaced): one note per mend, naming the field.
    repairs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ResponseTarget:
    """How fast a severity must be answered and fixed, in seconds."""

    respond_s: int
    resolve_s: int


@dataclass(frozen=True, slots=True)
class Classification:
    """What the rules decided about one alert; stored with the alert."""

    severity: Severity
    category: str
    rule: str | None  # None when no rule matched and the fallback decided
    policy: str | None = None  # escalation policy name
    actions: tuple[str, ...] = ()
    templates: Mapping[str, str] = field(default_factory=lambda: frozen_labels({}))
    group_by: tuple[str, ...] | None = None  # None: Alertmanager's group key
    extra_labels: Labels = field(default_factory=lambda: frozen_labels({}))
    extra_annotations: Labels = field(default_factory=lambda: frozen_labels({}))
    target: ResponseTarget | None = None
    heartbeat: bool = False  # e.g. Watchdog: proves the pipeline works, never an incident
    heartbeat_timeout_s: int | None = None  # silence this long opens HeartbeatMissing
    hold_page_s: int | None = None  # hold the first page while containment works

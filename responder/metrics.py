"""Every Prometheus metric the daemon exposes, on a registry given to it (fresh per app).

One object holds them all so that each stage receives exactly the instruments it counts
with, and tests can read them from their own ``CollectorRegistry``.
"""

from __future__ import annotations

import bisect
import itertools
import platform
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from responder import __version__
from responder.model import Classification, Severity

# Ingest runs in well under a millisecond when healthy; the buckets resolve that range
# and still show multi-second stalls (a disk that stopped answering).
_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# Time to acknowledge and resolve: half a minute (a phone answered at once) to three days
# (the P3 resolve target); every response target of the seeds is a bound.
_KPI_BUCKETS = (30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 28800, 86400, 259200)
# A page reaching a handset, a containment run with its retries and check: a second to an
# hour (held by a rate limit, a provider slow to report).
_MINUTES_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# An escalation step is due to the millisecond when healthy; the shipped alert
# (docs/deployment.md) fires past a minute, which histogram_quantile can only report with
# bounds above it (it never returns more than the highest finite bound).
_LAG_BUCKETS = (*_LATENCY_BUCKETS, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


# The label values the code counts with, started at zero: a series that first appears with
# its first increment is invisible to rate() and increase() (an alert on the first failed
# page would never fire). Channels are responder.directory.Channel's, page kinds
# responder.incident.PageKind's (not imported: both modules are above this one).
_CHANNELS = ("sms", "voice", "email", "webhook")
_PAGE_KINDS = ("page", "status", "recovery", "test")
_PAGE_OUTCOMES = (
    "sent",
    "delivered",
    "undelivered",
    "failed",
    "retry",
    "channel_down",
    "held",
    "unknown",
    "exhausted",
    "cancelled",
)
_ESCALATION_STEPS = (
    "escalated",
    "status_update",
    "recovery",
    "nobody_to_page",
    "no_policy",
    "policy_gone",
)
_WEBHOOK_OUTCOMES = (
    "accepted",
    "unauthorized",
    "bad_request",
    "timeout",
    "too_large",
    "unsupported_media_type",
    "unavailable",
)


class WebhookMetrics:
    """The webhook's counters and its latency histogram, kept as plain numbers and read by
    the registry when it is scraped.

    prometheus_client's own metrics validate and take a lock on every update, which the
    webhook would pay half a dozen times per request (about 9% of its rate on one core).
    These are updated and collected on the event loop only, so they need neither.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = dict.fromkeys(_WEBHOOK_OUTCOMES, 0)
        self.received = {"firing": 0, "resolved": 0}  # alerts in accepted webhooks, by status
        self.ingested: dict[str, int] = {}  # alerts stored, by IngestOutcome
        self.classified: dict[tuple[str, str], int] = {}  # started firing: severity, category
        self.unmatched = 0  # started firing and matched no rule
        self._bounds = _LATENCY_BUCKETS
        self._buckets = [0] * (len(_LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self._sum = 0.0
        registry.register(self)

    def request(self, outcome: str) -> None:
        self.requests[outcome] = self.requests.get(outcome, 0) + 1

    def accepted(self, stored: dict[str, int], *, firing: int, resolved: int) -> None:
        """A webhook was stored: ``stored`` counts its alerts by ingest outcome."""
        self.request("accepted")
        ingested = self.ingested
        for outcome, count in stored.items():
            ingested[outcome] = ingested.get(outcome, 0) + count
        received = self.received
        if firing:
            received["firing"] = received.get("firing", 0) + firing
        if resolved:
            received["resolved"] = received.get("resolved", 0) + resolved

    def started_firing(self, classification: Classification) -> None:
        key = (classification.severity.value, classification.category)
        self.classified[key] = self.classified.get(key, 0) + 1
        if classification.rule is None:
            self.unmatched += 1

    def observe_ingest(self, seconds: float) -> None:
        self._buckets[bisect.bisect_left(self._bounds, seconds)] += 1
        self._sum += seconds

    def collect(self) -> Iterator[Metric]:
        labelled: list[tuple[str, str, list[str], Mapping[Any, int]]] = [
            (
                "responder_webhook_requests",
                "Webhook requests by outcome (accepted, unauthorized, bad_request, timeout, "
                "too_large, unsupported_media_type, unavailable).",
                ["outcome"],
                self.requests,
            ),
            (
                "responder_alerts_received",
                "Alerts received in accepted webhooks, by the status Alertmanager gave them.",
                ["status"],
                self.received,
            ),
            (
                "responder_alerts_ingested",
                "Alerts stored, by what storing them meant (new, repeat, resolved, ...).",
                ["outcome"],
                self.ingested,
            ),
            (
                "responder_alerts_classified",
                "Alerts that started firing, by the severity and category the rules gave them.",
                ["severity", "category"],
                self.classified,
            ),
        ]
        for name, documentation, labels, counts in labelled:
            family = CounterMetricFamily(name, documentation, labels=labels)
            for key, count in counts.items():
                family.add_metric(list(key) if isinstance(key, tuple) else [key], count)
            yield family
        yield CounterMetricFamily(
            "responder_alerts_unmatched",
            "Alerts that started firing and matched no rule: the fallback classified them.",
            value=self.unmatched,
        )
        cumulative = list(itertools.accumulate(self._buckets))
        bounds = [*map(floatToGoString, self._bounds), "+Inf"]
        yield HistogramMetricFamily(
            "responder_ingest_duration_seconds",
            "Time from a webhook's body being read to its alerts being committed, including "
            "any wait for its turn during an alert storm.",
            buckets=list(zip(bounds, cumulative, strict=True)),
            sum_value=self._sum,
        )


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.webhook = WebhookMetrics(registry)
        self.build_info = Info(
            "responder_build", "Version of the running responder.", registry=registry
        )
        self.build_info.info({"version": __version__, "python": platform.python_version()})
        self.alerts_stale = Counter(
            "responder_alerts_stale_total",
            "Firing alerts marked stale because Alertmanager stopped re-sending them.",
            registry=registry,
        )
        self.heartbeats = Gauge(
            "responder_heartbeats",
            "Heartbeat alerts seen, by state: alive, missing (HeartbeatMissing raised), "
            "unwatched (no heartbeat_timeout in the rules).",
            ["state"],
            registry=registry,
        )
        self.store_commit_duration = Histogram(
            "responder_store_commit_duration_seconds",
            "Time one group commit took, writes and fsync included.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.store_commit_batch = Histogram(
            "responder_store_commit_batch_size",
            "Writes committed together in one group commit.",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.store_disk_full = Gauge(
            "responder_store_disk_full",
            "1 from the commit that found the disk full until twice the database's reserve "
            "(8 MiB) is free again; writes meanwhile use the reserve.",
            registry=registry,
        )
        self.rules_loaded = Gauge(
            "responder_rules_loaded",
            "Classification rules in force.",
            registry=registry,
        )
        # -- incidents and escalation (KPIs by severity, from the seeds) --
        self.time_to_acknowledge = Histogram(
            "responder_incident_time_to_acknowledge_seconds",
            "From an incident triggering to a person acknowledging it.",
            ["severity"],
            buckets=_KPI_BUCKETS,
            registry=registry,
        )
        self.time_to_resolve = Histogram(
            "responder_incident_time_to_resolve_seconds",
            "From an incident triggering to its resolution (not observed for incidents "
            "that ended because their alerts went stale).",
            ["severity"],
            buckets=_KPI_BUCKETS,
            registry=registry,
        )
        self.target_breaches = Counter(
            "responder_response_target_breaches_total",
            "Incidents that passed their response target (respond or resolve) unmet.",
            ["severity", "target"],
            registry=registry,
        )
        self.incident_actions = Counter(
            "responder_incident_actions_total",
            "What people did to incidents (acknowledge, resolve, snooze, ...) and through what.",
            ["action", "via"],
            registry=registry,
        )
        self.escalation_steps = Counter(
            "responder_escalation_steps_total",
            "Escalation steps done, by what they were (escalated, status_update, recovery, "
            "nobody_to_page, no_policy, policy_gone).",
            ["kind"],
            registry=registry,
        )
        self.escalation_lag = Histogram(
            "responder_escalation_lag_seconds",
            "How late an escalation step was done after its due time.",
            buckets=_LAG_BUCKETS,
            registry=registry,
        )
        self.escalation_pass = Histogram(
            "responder_escalation_pass_seconds",
            "Time one pass of the escalation engine over the due incidents took.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.pages_queued = Counter(
            "responder_pages_queued_total",
            "Pages written to the outbox, by channel and kind (page, status, recovery, test).",
            ["channel", "kind"],
            registry=registry,
        )
        self.pages = Counter(
            "responder_pages_total",
            "Pages by channel and outcome (sent; delivered or undelivered, as the provider "
            "reported; failed; retry; channel_down: our credentials or setup refused; held: a "
            "rate limit or the budget; unknown: cut off while sending; exhausted: failed with "
            "nobody left to fail over to; cancelled: lost its point before it went, by an "
            "acknowledgement, snooze, resolve, re-fire or reassignment).",
            ["channel", "outcome"],
            registry=registry,
        )
        self.pages_bundled = Counter(
            "responder_pages_bundled_total",
            "Pages that went out inside a bundle (several pages to one person, one message).",
            registry=registry,
        )
        self.delivery_latency = Histogram(
            "responder_delivery_latency_seconds",
            "From a page being due to the provider accepting it.",
            ["channel"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.delivered_latency = Histogram(
            "responder_delivery_to_handset_seconds",
            "From a page being due to the provider reporting it delivered (Twilio callbacks).",
            ["channel"],
            buckets=_MINUTES_BUCKETS,
            registry=registry,
        )
        self.status_lookups = Counter(
            "responder_status_lookups_total",
            "Sent messages whose status was asked of the provider because its callback had "
            "not come, by channel and outcome (delivered, failed, pending, error, unknown).",
            ["channel", "outcome"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            "responder_outbox_queued_pages",
            "Pages waiting in the outbox (due later, held back, or waiting for a retry).",
            registry=registry,
        )
        self.budget_used = Gauge(
            "responder_sms_voice_sent_last_hour",
            "SMS and calls sent in the last hour, against the delivery budget.",
            registry=registry,
        )
        self.drills = Counter(
            "responder_drills_total",
            "Drills started (by hand or on schedule).",
            registry=registry,
        )
        # -- containment --
        self.actions = Counter(
            "responder_actions_total",
            "Containment runs by action and outcome (ok, failed, timeout, check_failed, "
            "rejected, dry_run, interrupted, undo_done, ...).",
            ["action", "outcome"],
            registry=registry,
        )
        self.action_guard_stops = Counter(
            "responder_action_guard_stops_total",
            "Runs a guard stopped (paused, action_breaker_open, breaker_open, concurrency, "
            "cooldown, rate_limit, blast_radius).",
            ["action", "guard"],
            registry=registry,
        )
        self.action_duration = Histogram(
            "responder_action_duration_seconds",
            "How long a containment run took, retries and check included.",
            ["action"],
            buckets=_MINUTES_BUCKETS,
            registry=registry,
        )
        self.breakers_opened = Counter(
            "responder_action_breakers_opened_total",
            "Circuit breakers opened after consecutive failures of an action on a target.",
            ["action"],
            registry=registry,
        )
        self.action_breaker_open = Gauge(
            "responder_action_breaker_open",
            "1 while an action's breaker across targets is open: it failed "
            "containment.action_breaker_failures runs within the window, whatever their "
            "targets, and runs on no target until reset.",
            ["action"],
            registry=registry,
        )
        self.containment_paused = Gauge(
            "responder_containment_paused",
            "1 while the kill switch holds every containment action.",
            registry=registry,
        )
        self.config_reload_ok = Gauge(
            "responder_config_last_reload_successful",
            "Whether the last configuration reload attempt was successful and is in force in "
            "full (0 while its re-arm of the open incidents waits for the database).",
            registry=registry,
        )
        self.config_reload_time = Gauge(
            "responder_config_last_reload_success_timestamp_seconds",
            "Timestamp of the last successful configuration reload.",
            registry=registry,
        )
        self._start_at_zero()

    def _start_at_zero(self) -> None:
        for severity in Severity:
            self.time_to_acknowledge.labels(severity.value)
            self.time_to_resolve.labels(severity.value)
            for target in ("respond", "resolve"):
                self.target_breaches.labels(severity.value, target)
        for channel in _CHANNELS:
            for outcome in _PAGE_OUTCOMES:
                self.pages.labels(channel, outcome)
            for kind in _PAGE_KINDS:
                self.pages_queued.labels(channel, kind)
        for step in _ESCALATION_STEPS:
            self.escalation_steps.labels(step)

"""The metrics as a dashboard reads them: every known series there from the start, and
buckets that tell apart the figures an operator compares (KPI review)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from responder.metrics import Metrics


def test_known_series_start_at_zero() -> None:
    """A series that first appears with its first increment is invisible to rate() and
    increase(): an alert on the first failed page or the first breach would never fire, and
    MTTA by severity would show no data instead of none acknowledged yet."""
    registry = CollectorRegistry()
    Metrics(registry)
    zero = {
        "responder_incident_time_to_acknowledge_seconds_count": {"severity": "P0"},
        "responder_incident_time_to_resolve_seconds_count": {"severity": "P3"},
        "responder_response_target_breaches_total": {"severity": "P1", "target": "respond"},
        "responder_pages_total": {"channel": "sms", "outcome": "failed"},
        "responder_pages_queued_total": {"channel": "voice", "kind": "page"},
        "responder_escalation_steps_total": {"kind": "nobody_to_page"},
        "responder_webhook_requests_total": {"outcome": "unauthorized"},
        "responder_alerts_received_total": {"status": "resolved"},
    }
    for name, labels in zero.items():
        assert registry.get_sample_value(name, labels) == 0, (name, labels)
    cancelled = {"channel": "voice", "outcome": "cancelled"}
    assert registry.get_sample_value("responder_pages_total", cancelled) == 0


def test_kpi_buckets_resolve_the_first_minutes() -> None:
    """An acknowledgement in 20 seconds and one in 50 are told apart (the lowest bucket was
    a minute), as are a handset reached in 45 seconds and in 5 minutes, and a containment
    run of a minute and one of ten, and an escalation step a minute late (the latency
    buckets stopped at 10 seconds)."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.time_to_acknowledge.labels("P0").observe(20)
    metrics.delivered_latency.labels("sms").observe(45)
    metrics.action_duration.labels("restart").observe(50)
    metrics.escalation_lag.observe(90)

    def bucket(name: str, le: str, **labels: str) -> float | None:
        return registry.get_sample_value(name + "_bucket", {**labels, "le": le})

    assert bucket("responder_incident_time_to_acknowledge_seconds", "30.0", severity="P0") == 1
    assert bucket("responder_delivery_to_handset_seconds", "60.0", channel="sms") == 1
    assert bucket("responder_delivery_to_handset_seconds", "30.0", channel="sms") == 0
    assert bucket("responder_action_duration_seconds", "60.0", action="restart") == 1
    assert bucket("responder_action_duration_seconds", "30.0", action="restart") == 0
    # The shipped ResponderEscalationLate alert (> 60 s) needs bounds past a minute:
    # histogram_quantile never answers more than the highest finite bound (it was 10 s).
    assert bucket("responder_escalation_lag_seconds", "60.0") == 0
    assert bucket("responder_escalation_lag_seconds", "120.0") == 1


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_the_exposition_lints_clean() -> None:
    """promtool check metrics: names, units, help texts, with every series started."""
    text = generate_latest(Metrics(CollectorRegistry()).registry)
    lint = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, check=False
    )
    assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()

"""`responder report --since` across a re-fire, through the real app and the real CLI: an
incident that resolved and fired again is counted once per trigger, each with its own times
and severity, as the Prometheus histograms observed them. Fake clock in the app; pages out
to a real SMTP server and the fake Twilio."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from responder import cli
from responder.clock import FakeClock
from responder.testing import FakeTwilio, SmtpTestServer
from tests.conftest import AUTH, ClientFactory
from tests.test_escalation_story import (
    Client,
    alert,
    eventually,
    incident,
    post,
    settle,
    smtp,
    story_config,
    twilio,
    webhook,
)
from tests.test_report import section, table

__all__ = ["smtp", "twilio"]

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)  # the fake clock's start
REFIRED = "2026-01-05T09:50:00Z"


async def _ack(client: Client, number: int, by: str) -> None:
    answer = await client.post(
        f"/api/v1/incidents/{number}/acknowledge", json={"by": by}, headers=AUTH
    )
    assert answer.status == 200, await answer.text()


async def _at(client: Client, clock: FakeClock, minutes: int) -> None:
    """The fake clock moves on to ``minutes`` after T0."""
    await settle(client, clock, T0 + timedelta(minutes=minutes) - clock.now())


def _observed(registry: CollectorRegistry, what: str, severity: str) -> tuple[float, float]:
    """(count, sum in seconds) of an incident histogram for a severity."""
    name = f"responder_incident_time_to_{what}_seconds"
    labels = {"severity": severity}
    count = registry.get_sample_value(f"{name}_count", labels) or 0.0
    return count, registry.get_sample_value(f"{name}_sum", labels) or 0.0


async def _cli(capsys: pytest.CaptureFixture[str], client: Client, config: Path, *args: str) -> str:
    """A command's output, run as from a shell (its own event loop, in a thread) against
    the app's server."""
    url = str(client.make_url("")).rstrip("/")
    code = await asyncio.to_thread(cli.main, [*args, "-c", str(config), "--url", url])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


async def _listed(client: Client, query: str) -> list[dict[str, Any]]:
    answer = await client.get(f"/api/v1/incidents?{query}", headers=AUTH)
    assert answer.status == 200, await answer.text()
    data: list[dict[str, Any]] = (await answer.json())["data"]
    return data


async def test_report_since_counts_every_trigger_as_the_metrics_do(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,
    twilio: FakeTwilio,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """TargetDown (P2) fires at 09:00, InstanceDown joins it at 09:01 (raised to P1), alice
    acknowledges at 09:04, both resolve at 09:30. TargetDown fires again at 09:50 (the
    incident re-triggers, P2), bob acknowledges at 09:52, it resolves at 10:00. A drill at
    10:00 is acknowledged at once. The histograms hold two acknowledgements (4 min as P1,
    2 min as P2) and two resolves (30 min, 10 min): so must the report, which counted only
    the re-fire (one trigger, 2 min and 10 min)."""
    registry = CollectorRegistry()
    config = story_config(tmp_path, smtp, twilio)
    client = await make_client(config, registry)
    target = alert("TargetDown", instance="web-1:9100", job="node")
    instance = alert("InstanceDown", instance="web-1:9100", job="node")
    await post(client, webhook(target))
    await _at(client, clock, 1)
    await post(client, webhook(target, instance))
    await _at(client, clock, 4)
    await _ack(client, 1, "alice")
    await _at(client, clock, 30)
    ended = [alert(a["labels"]["alertname"], "resolved", **a["labels"]) for a in (target, instance)]
    await post(client, webhook(*ended))

    async def closed(count: float) -> bool:
        doc = await incident(client)
        done = sum(_observed(registry, "resolve", s)[0] for s in ("P1", "P2"))
        return bool(doc["state"] == "resolved" and done == count)

    await eventually(lambda: closed(1), "the first trigger resolved and observed")
    await _at(client, clock, 50)
    await post(client, webhook(alert("TargetDown", starts=REFIRED, **target["labels"])))
    doc = await incident(client)
    assert (doc["state"], doc["severity"], doc["startedAt"]) == ("triggered", "P2", REFIRED)
    await _at(client, clock, 52)
    await _ack(client, 1, "bob")
    await _at(client, clock, 60)
    await post(client, webhook(alert("TargetDown", "resolved", REFIRED, **target["labels"])))
    await eventually(lambda: closed(2), "the re-fire resolved and observed")
    drill = await client.post("/api/v1/drills", json={"by": "carol"}, headers=AUTH)
    assert drill.status == 200, await drill.text()
    await _ack(client, (await drill.json())["data"]["id"], "alice")

    # What the metrics observed: every trigger, with the severity it had then.
    assert _observed(registry, "acknowledge", "P1") == (1, 4 * 60)
    assert _observed(registry, "acknowledge", "P2") == (1, 2 * 60)
    assert _observed(registry, "resolve", "P1") == (1, 30 * 60)
    assert _observed(registry, "resolve", "P2") == (1, 10 * 60)

    text = await _cli(capsys, client, config, "report", "--since", "2026-01-05T08:59:00Z")
    assert "2 triggers of 1 incident in the period" in text
    mtta = table(text, "Time to acknowledge (MTTA)")
    assert mtta["P1"] == ["1", "4m", "4m", "4m"]
    assert mtta["P2"] == ["1", "2m", "2m", "2m"]
    assert mtta["**All**"] == ["2", "3m", "3m", "4m"]
    mttr = table(text, "Time to resolve (MTTR)")
    assert mttr["P1"] == ["1", "30m", "30m", "30m"]
    assert mttr["P2"] == ["1", "10m", "10m", "10m"]
    assert mttr["**All**"] == ["2", "20m", "20m", "30m"]
    for severity in ("P1", "P2"):  # the counts agree with the histograms'
        assert int(mtta[severity][0]) == _observed(registry, "acknowledge", severity)[0]
        assert int(mttr[severity][0]) == _observed(registry, "resolve", severity)[0]
    assert list(table(text, "Incidents")) == ["1 (trigger 1 of 2)", "1 (trigger 2 of 2)"]
    assert "Drills are left out of every figure above (1 in the period" in text

    # From 09:40: the re-fire only, although the incident opened before.
    text = await _cli(capsys, client, config, "report", "--since", "2026-01-05T09:40:00Z")
    assert "1 incident fired in the period; 0 still open." in text
    assert table(text, "Time to acknowledge (MTTA)")["**All**"] == ["1", "2m", "2m", "2m"]
    assert table(text, "Time to resolve (MTTR)")["**All**"] == ["1", "10m", "10m", "10m"]
    assert list(table(text, "Incidents")) == ["1 (trigger 2 of 2)"]
    assert "- 1 trigger that started outside the period left out." in text

    # The API: `since` is still the opening, `startedSince` any trigger's start.
    assert [i["id"] for i in await _listed(client, "since=2026-01-05T09:40:00Z")] == [2]
    (listed, _) = sorted(
        await _listed(client, "startedSince=2026-01-05T09:40:00Z"), key=lambda i: i["id"]
    )
    assert listed["earlierTriggers"] == [
        {
            "startedAt": "2026-01-05T09:00:00Z",
            "severity": "P1",
            "firstAcknowledgedAt": "2026-01-05T09:04:00Z",
            "firstAcknowledgedBy": "alice",
            "firstAcknowledgedVia": "api",
            "resolvedAt": "2026-01-05T09:30:00Z",
            "resolvedBy": "alertmanager",
            "resolvedVia": "alertmanager",
            "breached": [],
        }
    ]
    assert (await incident(client))["earlierTriggers"] == listed["earlierTriggers"]

    # The incident's own report lists the same earlier trigger.
    text = await _cli(capsys, client, config, "report", "1")
    figures = section(text, "Key figures")
    assert figures[1:4] == [
        "  - Time to acknowledge: 2m (target 2h: met, 1h58m to spare)",
        "  - Time to resolve: 10m (target 24h: met, 23h50m to spare)",
        "- Earlier trigger 1, from 2026-01-05 09:00:00 UTC (P1): acknowledged after 4m by "
        "alice via api; resolved after 30m by alertmanager via alertmanager",
    ]


async def test_an_earlier_trigger_that_went_stale_stays_out_of_mttr(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,
    twilio: FakeTwilio,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Alertmanager stops sending TargetDown after 09:00; the stale sweep closes the
    incident: nobody saw it end, so no time to resolve (the metric observes none). The alert
    arrives again at 09:30 (revived: a new trigger), is acknowledged at 09:32 and resolved
    at 09:34: MTTR counts that trigger alone, MTTA both."""
    registry = CollectorRegistry()
    config = story_config(tmp_path, smtp, twilio, "alerts:\n  stale_after: 5m\n")
    client = await make_client(config, registry)
    target = alert("TargetDown", instance="web-1:9100", job="node")
    await post(client, webhook(target))
    await _at(client, clock, 3)
    await _ack(client, 1, "alice")
    for minute in range(4, 12):  # the sweep looks every minute
        await _at(client, clock, minute)

    async def went_stale() -> bool:
        doc = await incident(client)
        return bool(doc["resolvedBy"] == "stale-sweep")

    await eventually(went_stale, "the incident closed by the stale sweep")
    await _at(client, clock, 30)
    await post(client, webhook(target))
    assert (await incident(client))["state"] == "triggered"
    await _at(client, clock, 32)
    await _ack(client, 1, "bob")
    await _at(client, clock, 34)
    await post(client, webhook(alert("TargetDown", "resolved", **target["labels"])))

    async def observed() -> bool:
        return _observed(registry, "resolve", "P2")[0] == 1

    await eventually(observed, "the re-fire's resolve observed")
    assert _observed(registry, "resolve", "P2") == (1, 4 * 60)
    assert _observed(registry, "acknowledge", "P2") == (2, 3 * 60 + 2 * 60)

    text = await _cli(capsys, client, config, "report", "--since", "2026-01-05T08:59:00Z")
    assert table(text, "Time to acknowledge (MTTA)")["P2"] == ["2", "2m30s", "2m30s", "3m"]
    assert table(text, "Time to resolve (MTTR)")["P2"] == ["1", "4m", "4m", "4m"]
    assert table(text, "Incidents")["1 (trigger 1 of 2)"][4].endswith("(stale)")
    assert "are not counted (1;" in "\n".join(section(text, "Notes"))

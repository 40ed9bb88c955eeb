"""The dead-man switch: a heartbeat that stops arriving opens an incident, pages, and its
return resolves it. Through the real app with a fake clock, pages to a real SMTP server and
the real twilio library on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from responder.classify.rules import parse_rule
from responder.cli import main
from responder.clock import FakeClock
from responder.heartbeats import (
    CHECK_EVERY,
    HEARTBEAT_WATCH,
    HeartbeatState,
    judge,
    missing_alert,
)
from responder.model import Alert, AlertStatus, Classification, Severity, frozen_labels
from responder.runtime import RUNTIME
from responder.store import HeartbeatRow, IncomingAlert, SQLiteStore, StoreError
from responder.store.sqlite_incidents import to_us
from responder.testing import FakeTwilio, SmtpTestServer
from responder.yamlfile import ConfigError, load_text
from tests.conftest import AUTH, ClientFactory, write_config
from tests.test_escalation_story import (
    POLICY,
    alert,
    channels,
    eventually,
    incident,
    post,
    webhook,
)
from tests.test_process import post as post_to
from tests.test_process import running
from tests.test_process_escalation import cli, clis
from tests.test_store_sqlite import migrate_to

Client = TestClient[Any, Any]

FAST_WATCHDOG = """
rules:
  - name: fast-watchdog
    matchers: ['alertname="Watchdog"']
    heartbeat: true
    heartbeat_timeout: 5m
"""
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def row(
    alive: datetime | None, missing: datetime | None = None, labels: dict[str, str] | None = None
) -> HeartbeatRow:
    return HeartbeatRow(
        fingerprint="abc123",
        labels=labels or {"alertname": "Watchdog", "severity": "none", "prometheus": "k8s"},
        first_seen=T0,
        alive_until=alive,
        missing_since=missing,
        heard_firing=alive,  # a firing copy, unless a test says otherwise
    )


# -- the judgement, on its own --------------------------------------------------------------


@pytest.mark.parametrize(
    ("alive", "missing", "now", "started", "expected"),
    [
        # heard 4 minutes ago: alive; 6 minutes ago: missing
        (T0, None, T0 + timedelta(minutes=4), T0, HeartbeatState.ALIVE),
        (T0, None, T0 + timedelta(minutes=6), T0, HeartbeatState.MISSING),
        # the daemon started 2 minutes ago after a day down: the heartbeat has its timeout
        (T0, None, T0 + timedelta(days=1), T0 + timedelta(days=1, minutes=-2), "alive"),
        (T0, None, T0 + timedelta(days=1), T0 + timedelta(days=1, minutes=-6), "missing"),
        # found missing: stays missing until a copy arrives after that, restart or not
        (
            T0,
            T0 + timedelta(minutes=6),
            T0 + timedelta(minutes=7),
            T0 + timedelta(minutes=7),
            "missing",
        ),
        (
            T0 + timedelta(minutes=8),
            T0 + timedelta(minutes=6),
            T0 + timedelta(minutes=9),
            T0,
            "alive",
        ),
    ],
)
def test_judge(
    alive: datetime, missing: datetime | None, now: datetime, started: datetime, expected: str
) -> None:
    downtime = [(EPOCH, started)]  # listening since ``started``, down before
    assert judge(row(alive, missing), timedelta(minutes=5), now, downtime) == expected


def test_silence_adds_up_across_restarts_but_downtime_does_not() -> None:
    """Heard at T0; the daemon checked last at T0+3m, was down until T0+10m and runs since:
    at T0+13m the heartbeat has been silent 6 minutes of listening (3 + 3), not 13 or 3."""
    five = timedelta(minutes=5)
    down = [(T0 + timedelta(minutes=3), T0 + timedelta(minutes=10))]
    now = T0 + timedelta(minutes=13)
    assert judge(row(T0), five, now, down) is HeartbeatState.MISSING
    assert judge(row(T0), five, now - timedelta(minutes=2), down) == "alive"
    # a restart every few minutes no longer hides a dead pipeline for ever
    day3 = T0 + timedelta(days=3)
    restarts = [(day3 - timedelta(minutes=2), day3 - timedelta(minutes=1))]
    assert judge(row(T0), five, day3, restarts) is HeartbeatState.MISSING
    # nor does a long outage count when a quick restart follows it
    outage = [(T0 + timedelta(minutes=1), T0 + timedelta(days=1))]
    quick = [*outage, (T0 + timedelta(days=1, minutes=1), T0 + timedelta(days=1, minutes=2))]
    assert judge(row(T0), five, T0 + timedelta(days=1, minutes=3), quick) == "alive"


def test_a_timeout_raised_past_the_silence_ends_the_missing_state() -> None:
    """Found missing with a 5m timeout that was shorter than Alertmanager's repeat interval;
    the operator raises it to 4h30m: 7 minutes of silence is no longer missing."""
    found = row(T0, missing=T0 + timedelta(minutes=6))
    now = T0 + timedelta(minutes=7)
    assert judge(found, timedelta(minutes=5), now) is HeartbeatState.MISSING
    assert judge(found, timedelta(hours=4, minutes=30), now) is HeartbeatState.ALIVE


def test_a_heartbeat_without_a_timeout_is_not_watched() -> None:
    assert judge(row(T0), None, T0 + timedelta(days=9)) is HeartbeatState.UNWATCHED


def test_the_missing_alert_names_the_heartbeat_and_keeps_its_source() -> None:
    firing = missing_alert(row(T0), timedelta(minutes=5), T0 + timedelta(minutes=6), None)
    assert firing.labels == {
        "alertname": "HeartbeatMissing",
        "heartbeat": "Watchdog",
        "prometheus": "k8s",  # which Prometheus went quiet
    }  # Watchdog's severity="none" is not carried: the rules decide
    assert firing.status is AlertStatus.FIRING
    assert firing.fingerprint == "heartbeat-missing:abc123"
    assert firing.annotations["summary"] == "Watchdog not heard for 5m"
    assert "2026-01-05T09:00:00Z" in firing.annotations["description"]
    assert "responder heartbeats --forget abc123" in firing.annotations["description"]
    ended = missing_alert(row(T0), None, firing.starts_at, T0 + timedelta(minutes=9))
    assert (ended.status, ended.fingerprint) == (AlertStatus.RESOLVED, firing.fingerprint)


def _rule(text: str) -> None:
    parse_rule(load_text(text, "rules.yaml")["rules"].as_list()[0], ("infrastructure",))


def test_heartbeat_timeout_needs_heartbeat_true_and_a_sane_length() -> None:
    _rule(FAST_WATCHDOG)
    with pytest.raises(ConfigError, match=r"rules.yaml:6: .*needs heartbeat: true"):
        _rule(FAST_WATCHDOG.replace("heartbeat: true", "heartbeat: false"))
    with pytest.raises(ConfigError, match=r"rules.yaml:6: .*between 1m and 7d"):
        _rule(FAST_WATCHDOG.replace("5m", "30s"))
    with pytest.raises(ConfigError, match=r"rules.yaml:6: .*between 1m and 7d"):
        _rule(FAST_WATCHDOG.replace("5m", "8d"))


# -- the daemon ------------------------------------------------------------------------------


def watchdog(status: str = "firing", **labels: str) -> dict[str, Any]:
    return alert("Watchdog", status, severity="none", prometheus="k8s", **labels)


async def heartbeats(client: Client) -> list[dict[str, Any]]:
    response = await client.get("/api/v1/heartbeats", headers=AUTH)
    assert response.status == 200, await response.text()
    data: list[dict[str, Any]] = (await response.json())["data"]
    return data


async def incident_count(client: Client) -> int:
    listed = await (await client.get("/api/v1/incidents", headers=AUTH)).json()
    return len(listed["data"])


def subjects(smtp: SmtpTestServer) -> list[str]:
    return [str(m.message["Subject"]) for m in smtp.messages]


@pytest.fixture
async def smtp() -> Any:
    async with SmtpTestServer() as server:
        yield server


@pytest.fixture
async def twilio() -> Any:
    async with FakeTwilio() as fake:
        yield fake


@pytest.fixture
async def make_client(
    smtp: SmtpTestServer, twilio: FakeTwilio, make_client: ClientFactory
) -> ClientFactory:
    """The daemons of these tests stop before the stand-ins they page through, as a real
    daemon stops while Twilio stays up: set up after them, torn down first. The other way
    round, an SMS on its way as a test ended (HeartbeatMissing pages at once) lost its
    peer, and the daemon's stop waited out the adapter's 10 s timeout for it, in about one
    run of this file in 15 (a task dump showed the dispatcher waiting on that send)."""
    return make_client


async def test_a_silent_watchdog_pages_and_its_return_resolves(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,
    twilio: FakeTwilio,
) -> None:
    client = await make_client(paging_config(tmp_path, smtp, twilio))

    await post(client, webhook(watchdog()))
    assert await incident_count(client) == 0  # a heartbeat that arrives is no incident
    listed = await heartbeats(client)
    assert [(h["labels"]["alertname"], h["state"], h["timeoutSeconds"]) for h in listed] == [
        ("Watchdog", "alive", 300)
    ]
    clock.advance(timedelta(minutes=4))
    await post(client, webhook(watchdog()))  # Alertmanager's repeat: still alive
    clock.advance(timedelta(minutes=4))
    assert await incident_count(client) == 0

    clock.advance(timedelta(minutes=2))  # 6 minutes since the last copy

    await eventually(lambda: _one_incident(client), "HeartbeatMissing opened an incident")
    doc = await incident(client)
    assert (doc["severity"], doc["category"]) == ("P1", "infrastructure")
    assert doc["title"].startswith("HeartbeatMissing")

    async def paged() -> bool:
        sms = twilio.sent_sms("+15551230001")
        return any("HeartbeatMissing" in s for s in subjects(smtp)) and bool(sms)

    await eventually(paged, "alice paged by email and SMS")
    assert "HeartbeatMissing" in twilio.sent_sms()[0].body
    text = smtp.messages[0].message.get_body(("plain",))
    assert text is not None
    assert "Watchdog not heard for 5m" in text.get_content()
    (missing,) = await heartbeats(client)
    assert missing["state"] == "missing"
    assert missing["lastHeard"] == "2026-01-05T09:04:00Z"
    assert missing["missingSince"] == "2026-01-05T09:10:00Z"
    metrics = await (await client.get("/metrics")).text()
    assert 'responder_heartbeats{state="missing"} 1.0' in metrics

    # Half a day of silence: the stale sweep (12h) must not take it as resolved.
    for _ in range(14):
        clock.advance(timedelta(hours=1))
        await eventually(
            lambda: _state_is(client, "triggered"), "still open after an hour more of silence"
        )

    clock.advance(timedelta(minutes=1))
    await post(client, webhook(watchdog(starts="2026-01-05T23:00:00Z")))  # Prometheus is back
    clock.advance(CHECK_EVERY)  # the next check sees it
    await eventually(lambda: _state_is(client, "resolved"), "its return resolved the incident")
    clock.advance(timedelta(minutes=2))  # past SMS's and email's 1-a-minute limits

    async def recovered() -> bool:
        doc = await incident(client)
        return {
            p["channel"] for p in doc["pages"] if p["kind"] == "recovery" and p["state"] == "sent"
        } == {"sms", "email"}

    await eventually(recovered, "the people paged were told of the recovery")
    assert [h["state"] for h in await heartbeats(client)] == ["alive"]
    doc = await incident(client)
    assert doc["resolvedBy"] == "responder"  # raised and ended by the daemon, not Alertmanager
    actors = {e["kind"]: (e["actor"], e["via"]) for e in doc["timeline"]}
    assert actors["triggered"] == actors["resolved"] == ("responder", "responder")


async def _one_incident(client: Client) -> bool:
    return await incident_count(client) == 1


async def _state_is(client: Client, state: str) -> bool:
    return bool((await incident(client))["state"] == state)


def paging_config(
    tmp_path: Path, smtp: SmtpTestServer, twilio: FakeTwilio, rules: str = FAST_WATCHDOG
) -> Path:
    """Paging through the test SMTP server and fake Twilio; ``rules`` before the shipped."""
    return write_config(tmp_path, POLICY + channels(tmp_path, smtp, twilio), rules=rules)


@pytest.fixture
def fast_path(tmp_path: Path, smtp: SmtpTestServer, twilio: FakeTwilio) -> Path:
    """The config: Watchdog a heartbeat with a 5m timeout, everyone paged by SMS and email."""
    return paging_config(tmp_path, smtp, twilio)


async def go_missing(client: Client, clock: FakeClock) -> None:
    """Watchdog heard now, then 6 minutes of silence: HeartbeatMissing is open."""
    await post(client, webhook(watchdog()))
    clock.advance(timedelta(minutes=6))

    await eventually(lambda: _one_incident(client), "HeartbeatMissing opened an incident")


async def test_after_a_restart_a_heartbeat_has_its_timeout_to_arrive(
    make_client: ClientFactory,
    fast_path: Path,
    clock: FakeClock,
) -> None:
    """Silence while the daemon was down is not the heartbeat's: after a day down, nothing
    pages until the heartbeat has had its timeout to arrive after the start."""
    client = await make_client(fast_path)
    await post(client, webhook(watchdog()))
    await client.close()
    clock.advance(timedelta(days=1))

    client = await make_client(fast_path)
    clock.advance(timedelta(minutes=4))
    assert [h["state"] for h in await heartbeats(client)] == ["alive"]
    clock.advance(timedelta(minutes=2))

    await eventually(
        lambda: _one_incident(client), "missing once the timeout has passed since the start"
    )


async def test_a_missing_heartbeat_stays_missing_across_a_restart(
    make_client: ClientFactory,
    fast_path: Path,
    clock: FakeClock,
) -> None:
    client = await make_client(fast_path)
    await go_missing(client, clock)
    await client.close()
    clock.advance(timedelta(minutes=1))

    client = await make_client(fast_path)
    clock.advance(timedelta(minutes=1))
    assert [h["state"] for h in await heartbeats(client)] == ["missing"]
    assert (await incident(client))["state"] == "triggered"
    await post(client, webhook(watchdog()))
    clock.advance(CHECK_EVERY)  # the next check sees it
    await eventually(lambda: _state_is(client, "resolved"), "the heartbeat's return resolves it")


async def test_forgetting_a_retired_heartbeat_resolves_its_incident(
    make_client: ClientFactory,
    fast_path: Path,
    clock: FakeClock,
) -> None:
    client = await make_client(fast_path)
    await go_missing(client, clock)
    (watched,) = await heartbeats(client)
    url = f"/api/v1/heartbeats/{watched['fingerprint']}"
    assert (await client.delete(url)).status == 401
    assert (await client.delete("/api/v1/heartbeats/nope", headers=AUTH)).status == 404
    assert (await client.delete(url, headers=AUTH)).status == 200
    await eventually(lambda: _state_is(client, "resolved"), "forgetting resolved the incident")
    assert [h["state"] for h in await heartbeats(client)] == ["forgotten"]
    clock.advance(timedelta(hours=1))
    await asyncio.sleep(0.1)  # the watch's loop runs
    assert await incident_count(client) == 1  # and nothing new opened
    # Heard again (a forget by mistake, or the Prometheus came back): watched again.
    await post(client, webhook(watchdog()))
    assert [h["state"] for h in await heartbeats(client)] == ["alive"]


async def test_a_reload_that_drops_the_timeout_resolves_the_missing_incident(
    make_client: ClientFactory,
    tmp_path: Path,
    fast_path: Path,
    clock: FakeClock,
) -> None:
    client = await make_client(fast_path)
    await go_missing(client, clock)
    rules = tmp_path / "rules.yaml"
    rules.write_text(FAST_WATCHDOG.replace("    heartbeat_timeout: 5m\n", ""))
    assert (await client.post("/-/reload", headers=AUTH)).status == 200
    clock.advance(CHECK_EVERY)
    await eventually(lambda: _state_is(client, "resolved"), "no longer watched: resolved")
    assert [h["state"] for h in await heartbeats(client)] == ["unwatched"]


async def test_a_resolved_watchdog_is_no_sign_of_life(
    make_client: ClientFactory,
    fast_path: Path,
    clock: FakeClock,
) -> None:
    """Alertmanager resolves Watchdog when Prometheus stops sending it: life ended then."""
    client = await make_client(fast_path)
    await post(client, webhook(watchdog()))
    clock.advance(timedelta(minutes=3))
    ended = watchdog("resolved")
    ended["endsAt"] = "2026-01-05T09:01:00Z"  # Prometheus' last copy said: until 09:01
    await post(client, webhook(ended))
    (hb,) = await heartbeats(client)
    assert hb["lastHeard"] == "2026-01-05T09:01:00Z"
    clock.advance(timedelta(minutes=3, seconds=30))  # 09:06:30: past 5 minutes since the end

    await eventually(
        lambda: _one_incident(client), "missing 5 minutes after the end Alertmanager gave"
    )


# -- the store -------------------------------------------------------------------------------


async def test_heartbeats_stored_before_the_switch_existed_are_watched(tmp_path: Path) -> None:
    """Migration 8 adopts the heartbeat alerts already stored."""
    path = tmp_path / "responder.db"
    conn = sqlite3.connect(path)
    migrate_to(conn, 7)
    columns = (
        "fingerprint, status, labels, annotations, starts_at, generator_url, group_key, "
        "receiver, alertname, severity, category, classification, first_received, "
        "last_received, receive_count, updated_at"
    )
    for fingerprint, status, name, heartbeat in (
        ("f1", "firing", "Watchdog", "true"),
        ("f2", "firing", "DiskFull", "false"),
        ("f3", "resolved", "Watchdog", "true"),  # a Prometheus retired long ago: not adopted
    ):
        conn.execute(
            f"INSERT INTO alerts ({columns}) VALUES (?, ?, ?, '{{}}', 1, '', 'g', 'r', "  # noqa: S608
            "?, 'P3', 'infrastructure', ?, 5, 7, 2, 7)",
            (
                fingerprint,
                status,
                f'{{"alertname": "{name}"}}',
                name,
                f'{{"heartbeat": {heartbeat}}}',
            ),
        )
    conn.commit()
    conn.close()
    store = SQLiteStore(path)
    await store.open()
    try:
        (adopted,) = await store.heartbeats()
    finally:
        await store.close()
    assert (adopted.fingerprint, dict(adopted.labels)) == ("f1", {"alertname": "Watchdog"})
    assert (adopted.alive_until, adopted.missing_since) == (
        datetime.fromtimestamp(7 / 1e6, UTC),
        None,
    )


# -- the command line, against a real daemon -------------------------------------------------


async def test_the_cli_lists_and_forgets_heartbeats(tmp_path: Path) -> None:
    config = write_config(tmp_path)  # the shipped rules: Watchdog, 13h
    async with running(config) as daemon:
        async with aiohttp.ClientSession() as session:
            assert await post_to(session, daemon.url, webhook(watchdog())) == 200
        listed = await asyncio.to_thread(cli, config, daemon.url, "heartbeats")
        assert listed.returncode == 0, listed.stderr
        header, line = listed.stdout.splitlines()
        assert header.split()[:4] == ["FINGERPRINT", "ALERTNAME", "STATE", "TIMEOUT"]
        fingerprint, name, state, timeout = line.split()[:4]
        assert (name, state, timeout) == ("Watchdog", "alive", "13h")
        forgot = await asyncio.to_thread(
            cli, config, daemon.url, "heartbeats", "--forget", fingerprint
        )
        assert forgot.returncode == 0, forgot.stderr
        listed, unknown, odd = await clis(
            config,
            daemon.url,
            ("heartbeats",),
            ("heartbeats", "--forget", "0000000000000000"),
            ("heartbeats", "--forget", "a/../b?c"),
        )
        assert listed.stdout.splitlines()[1].split()[2] == "forgotten"
        assert unknown.returncode == 1
        assert "404: no heartbeat" in unknown.stderr
        assert odd.returncode == 1
        assert "404" in odd.stderr


async def test_a_watchdog_resent_with_its_old_start_after_a_resolve_is_life(
    make_client: ClientFactory,
    fast_path: Path,
    clock: FakeClock,
) -> None:
    """Alertmanager timed Watchdog out and resolved it; when the path heals, Prometheus sends
    it again with the same startsAt. That copy is life, and resolves HeartbeatMissing."""
    client = await make_client(fast_path)
    await post(client, webhook(watchdog()))
    clock.advance(timedelta(minutes=1))
    ended = watchdog("resolved")
    ended["endsAt"] = "2026-01-05T09:01:00Z"
    await post(client, webhook(ended))
    clock.advance(timedelta(minutes=6))

    await eventually(lambda: _one_incident(client), "missing after the resolve")
    clock.advance(timedelta(seconds=5))
    await post(client, webhook(watchdog()))  # the same startsAt as before the resolve
    clock.advance(CHECK_EVERY)
    await eventually(lambda: _state_is(client, "resolved"), "the old episode's copy is life")
    assert [h["state"] for h in await heartbeats(client)] == ["alive"]


async def test_a_crash_after_marking_missing_still_raises_the_alert(
    make_client: ClientFactory,
    tmp_path: Path,
    fast_path: Path,
    clock: FakeClock,
) -> None:
    """Marked missing, then the daemon died before storing HeartbeatMissing: after the
    restart the heartbeat is still missing and the alert is raised."""
    client = await make_client(fast_path)
    await post(client, webhook(watchdog()))
    (hb,) = await heartbeats(client)
    await client.close()
    store = SQLiteStore(tmp_path / "state" / "responder.db")
    await store.open()
    await store.heartbeat_missing(hb["fingerprint"], T0 + timedelta(minutes=6))
    await store.close()
    clock.advance(timedelta(minutes=7))

    client = await make_client(fast_path)

    await eventually(lambda: _one_incident(client), "HeartbeatMissing raised after the restart")
    assert (await heartbeats(client))[0]["missingSince"] == "2026-01-05T09:06:00Z"


async def test_a_rule_calling_heartbeat_missing_a_heartbeat_cannot_silence_it(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,
    twilio: FakeTwilio,
) -> None:
    broad = FAST_WATCHDOG.replace('alertname="Watchdog"', 'alertname=~"Watchdog|Heartbeat.*"')
    path = paging_config(tmp_path, smtp, twilio, broad)
    client = await make_client(path)
    await go_missing(client, clock)
    assert [h["labels"]["alertname"] for h in await heartbeats(client)] == ["Watchdog"]


async def test_a_quick_restart_after_a_long_outage_does_not_page(
    make_client: ClientFactory,
    fast_path: Path,
    clock: FakeClock,
) -> None:
    """Down for a day, started, restarted a minute later: neither downtime is silence."""
    client = await make_client(fast_path)
    await post(client, webhook(watchdog()))
    await client.close()
    clock.advance(timedelta(days=1))
    client = await make_client(fast_path)
    clock.advance(timedelta(minutes=1))
    await asyncio.sleep(0.05)
    await client.close()
    clock.advance(timedelta(minutes=1))
    client = await make_client(fast_path)
    clock.advance(timedelta(minutes=1))
    assert [h["state"] for h in await heartbeats(client)] == ["alive"]  # 2 minutes heard
    clock.advance(timedelta(minutes=4))
    await eventually(lambda: _one_incident(client), "5 minutes of listening without it")


async def test_a_forget_whose_resolve_failed_is_finished_by_the_next_check(
    make_client: ClientFactory,
    fast_path: Path,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = await make_client(fast_path)
    await go_missing(client, clock)
    (hb,) = await heartbeats(client)
    store = client.app[RUNTIME].store
    ingest = store.ingest

    async def fail_once(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(store, "ingest", ingest)
        raise StoreError("disk full")

    monkeypatch.setattr(store, "ingest", fail_once)
    answer = await client.delete(f"/api/v1/heartbeats/{hb['fingerprint']}", headers=AUTH)
    assert answer.status == 503
    assert (await incident(client))["state"] == "triggered"
    clock.advance(CHECK_EVERY)
    await eventually(lambda: _state_is(client, "resolved"), "the next check resolved it")


async def test_a_wall_clock_stepped_back_still_resolves_heartbeat_missing(
    make_client: ClientFactory,
    fast_path: Path,
    clock: FakeClock,
) -> None:
    client = await make_client(fast_path)
    await go_missing(client, clock)
    clock.set(clock.now() - timedelta(minutes=3))  # NTP stepped the clock back
    await post(client, webhook(watchdog()))
    await client.app[HEARTBEAT_WATCH].check()  # a check before the clock is past the start
    await eventually(lambda: _state_is(client, "resolved"), "its return resolved it anyway")


async def test_a_suspend_of_the_host_is_no_silence_and_a_step_back_only_logged(
    make_client: ClientFactory,
    fast_path: Path,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The host sleeps an hour (or NTP steps its clock an hour on): the wall clock jumps, the
    daemon's elapsed time does not. As after a restart, the heartbeat has its timeout from
    the wake-up to arrive, and the jump is logged; a silence past that still pages."""
    client = await make_client(fast_path)
    await post(client, webhook(watchdog()))
    clock.advance(timedelta(minutes=1))
    await client.app[HEARTBEAT_WATCH].check()
    clock.jump(timedelta(hours=1))

    async def jump_logged() -> bool:
        return "wall clock moved on further" in caplog.text

    await eventually(jump_logged, "the next check counted the jump as downtime")
    clock.advance(timedelta(minutes=4))
    assert [h["state"] for h in await heartbeats(client)] == ["alive"]  # 5 minutes heard
    assert await incident_count(client) == 0
    clock.advance(timedelta(minutes=2))
    await eventually(lambda: _one_incident(client), "missing once its timeout passed after it")

    # The downtime is stored: a restart right after still does not count it as silence.
    downtimes, _ = await client.app[RUNTIME].store.heartbeat_watch_started(
        clock.now(), timedelta(days=7)
    )
    woke = clock.now() - timedelta(minutes=6)
    assert any(up == woke and up - down >= timedelta(hours=1) for down, up in downtimes)

    caplog.clear()
    clock.jump(timedelta(minutes=-10))  # set back: nothing to forgive, only said
    await client.app[HEARTBEAT_WATCH].check()
    assert "wall clock was set back" in caplog.text


async def test_a_start_says_how_long_the_daemon_was_down(
    make_client: ClientFactory,
    fast_path: Path,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="responder.heartbeats")
    client = await make_client(fast_path)
    assert "was not running" not in caplog.text  # the first start ever: nothing before it
    clock.advance(timedelta(seconds=20))  # no check since the start: the stop is recorded
    await client.close()
    clock.advance(timedelta(hours=2))
    client = await make_client(fast_path)
    (record,) = [r for r in caplog.records if "was not running" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "escalation steps that fell due go out now" in record.getMessage()
    assert record.fields["down_s"] == 7200  # type: ignore[attr-defined]
    assert record.fields["since"] == "2026-01-05T09:00:20Z"  # type: ignore[attr-defined]

    await client.close()
    caplog.clear()
    clock.advance(timedelta(seconds=5))  # a restart: said, quietly
    await make_client(fast_path)
    (record,) = [r for r in caplog.records if "was not running" in r.getMessage()]
    assert (record.levelno, record.fields["down_s"]) == (logging.INFO, 5)  # type: ignore[attr-defined]


async def test_a_rule_loaded_for_an_alert_already_firing_watches_it(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,
    twilio: FakeTwilio,
) -> None:
    """DeadMansSwitch fires as an ordinary alert; a reload makes it a heartbeat. Its repeats
    are never classified, so the watch adopts it from the rules in force."""
    path = paging_config(tmp_path, smtp, twilio, "rules: []\n")
    client = await make_client(path)
    await post(client, webhook(alert("DeadMansSwitch", prometheus="k8s")))
    (tmp_path / "rules.yaml").write_text(FAST_WATCHDOG.replace("Watchdog", "DeadMansSwitch"))
    assert (await client.post("/-/reload", headers=AUTH)).status == 200
    clock.advance(CHECK_EVERY)

    async def adopted() -> bool:
        return [h["labels"]["alertname"] for h in await heartbeats(client)] == ["DeadMansSwitch"]

    await eventually(adopted, "the firing alert is watched as a heartbeat")


def test_overlapping_downtimes_count_once() -> None:
    """A clock stepped back can record overlapping downtimes: each moment is forgiven once.
    Heard at T0, down from +1m to +4m twice over, now +10m: 7 minutes of listening."""
    down = [(T0 + timedelta(minutes=1), T0 + timedelta(minutes=4))] * 2
    assert judge(row(T0), timedelta(minutes=5), T0 + timedelta(minutes=10), down) == "missing"


async def test_downtimes_are_kept_while_a_heartbeats_silence_reaches_back(tmp_path: Path) -> None:
    """Heard at T0; down a day; up two minutes; down a week: the first downtime, older than a
    week, still matters to that heartbeat's silence and is kept."""
    store = SQLiteStore(tmp_path / "responder.db")
    await store.open()
    try:
        c = Classification(Severity.P3, "infrastructure", "hb", heartbeat=True)
        labels = frozen_labels({"alertname": "Watchdog"})
        hb = Alert("f1", AlertStatus.FIRING, labels, frozen_labels({}), T0, None)
        await store.ingest([IncomingAlert(hb, "g", "r", classification=c)], T0)
        week = timedelta(days=7)
        await store.heartbeat_watch_started(T0, week)
        day = T0 + timedelta(days=1)
        await store.heartbeat_watch_started(day, week)
        await store.heartbeat_watch_checked(day + timedelta(minutes=2))
        downtimes, _ = await store.heartbeat_watch_started(day + timedelta(days=8), week)
    finally:
        await store.close()
    assert (T0, day) in downtimes
    assert judge(row(T0), timedelta(minutes=5), day + timedelta(days=8), downtimes) == "alive"


async def test_the_daemon_starts_when_the_watch_cannot_and_the_watch_catches_up(
    make_client: ClientFactory,
    fast_path: Path,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = SQLiteStore.heartbeat_watch_started
    calls = 0

    async def busy_once(self: SQLiteStore, *args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise StoreError("database is locked")
        return await original(self, *args)

    monkeypatch.setattr(SQLiteStore, "heartbeat_watch_started", busy_once)
    client = await make_client(fast_path)
    await post(client, webhook(watchdog()))  # webhooks are taken meanwhile
    clock.advance(CHECK_EVERY)

    async def tried_again() -> bool:
        return calls == 2

    await eventually(tried_again, "the watch tried again")
    clock.advance(timedelta(minutes=6))
    await eventually(lambda: _one_incident(client), "and then watched as usual")


async def test_a_restart_never_adopts_heartbeat_missing_as_a_heartbeat(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,
    twilio: FakeTwilio,
) -> None:
    broad = FAST_WATCHDOG.replace('alertname="Watchdog"', 'alertname=~"Watchdog|Heartbeat.*"')
    path = paging_config(tmp_path, smtp, twilio, broad)
    client = await make_client(path)
    await go_missing(client, clock)
    await client.close()
    (tmp_path / "rules.yaml").write_text(broad + "    # changed: the firing alerts get a look\n")
    client = await make_client(path)
    clock.advance(CHECK_EVERY)
    await client.app[HEARTBEAT_WATCH].check()
    assert [h["labels"]["alertname"] for h in await heartbeats(client)] == ["Watchdog"]


def test_a_late_resolve_is_no_return() -> None:
    """Found missing at +6m; Alertmanager's resolve arrives then, its end (+4m, Prometheus'
    own) after the last firing copy (+0): the heartbeat is still missing, and a forgotten
    one still forgotten."""
    ended = replace(row(T0 + timedelta(minutes=4)), heard_firing=T0)
    missing = replace(ended, missing_since=T0 + timedelta(minutes=6))
    now = T0 + timedelta(minutes=7)
    assert judge(missing, timedelta(minutes=5), now) is HeartbeatState.MISSING
    forgotten = replace(ended, forgotten_at=T0 + timedelta(seconds=30))
    assert judge(forgotten, timedelta(minutes=5), now) is HeartbeatState.FORGOTTEN


async def test_a_resolve_arriving_after_missing_does_not_close_it(
    make_client: ClientFactory,
    fast_path: Path,
    clock: FakeClock,
) -> None:
    client = await make_client(fast_path)
    await go_missing(client, clock)  # heard 09:00, missing 09:06
    clock.advance(timedelta(seconds=10))
    ended = watchdog("resolved")
    ended["endsAt"] = "2026-01-05T09:04:00Z"  # Prometheus' end time, after 09:00
    await post(client, webhook(ended))
    clock.advance(CHECK_EVERY)
    await client.app[HEARTBEAT_WATCH].check()
    assert [h["state"] for h in await heartbeats(client)] == ["missing"]
    assert (await incident(client))["state"] == "triggered"


async def test_downtimes_go_once_a_week_of_listening_followed_them(tmp_path: Path) -> None:
    """A forgotten heartbeat, heard long ago, must not keep every restart's downtime."""
    store = SQLiteStore(tmp_path / "responder.db")
    await store.open()
    try:
        week = timedelta(days=7)
        for day in range(30):  # a restart a day, a minute down each time
            start = T0 + timedelta(days=day)
            await store.heartbeat_watch_checked(start - timedelta(minutes=1))
            downtimes, _ = await store.heartbeat_watch_started(start, week)
    finally:
        await store.close()
    assert 7 <= len(downtimes) <= 9


async def test_a_daemon_running_for_months_forgets_old_downtimes(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock
) -> None:
    """The host is suspended now and then while the daemon runs: each suspend is a downtime
    stored. The periodic retention forgets those a week of listening followed, as a start
    does (only a start did, so a daemon running for months kept every one), also when
    records are kept forever; a newer one is kept, as is one less than a week of listening
    followed."""
    client = await make_client(write_config(tmp_path, "storage:\n  retention: forever\n"))
    watch = client.app[HEARTBEAT_WATCH]

    def downtimes() -> list[tuple[int, int]]:
        db = tmp_path / "state" / "responder.db"
        with contextlib.closing(sqlite3.connect(db)) as conn:
            rows = conn.execute("SELECT down_from, up_at FROM watch_downtime ORDER BY up_at")
            return [(int(down), int(up)) for down, up in rows]

    async def suspended() -> tuple[int, int]:
        """Checked now, the host sleeps an hour; the next check stores it."""
        await watch.check()
        down = clock.now()
        clock.jump(timedelta(hours=1))
        await watch.check()
        return to_us(down), to_us(clock.now())

    assert watch.listening
    first = await suspended()
    clock.advance(timedelta(days=4))  # retention runs: less than a week listened since
    second = await suspended()
    assert downtimes()[-2:] == [first, second]
    clock.advance(timedelta(days=4))  # a week and a day listened since the first

    async def forgotten() -> bool:
        return downtimes() == [second]

    await eventually(forgotten, "retention forgot the downtimes a week of listening followed")


async def _forget(client: Client) -> None:
    (hb,) = await heartbeats(client)
    answer = await client.delete(f"/api/v1/heartbeats/{hb['fingerprint']}", headers=AUTH)
    assert answer.status == 200


async def _dies_and_pages(client: Client, clock: FakeClock, starts: str) -> None:
    """Prometheus dies: Alertmanager resolves Watchdog; 6 minutes later it is missing."""
    ended = watchdog("resolved", starts=starts)
    ended["endsAt"] = starts
    await post(client, webhook(ended))
    clock.advance(timedelta(minutes=6))
    await client.app[HEARTBEAT_WATCH].check()
    assert [h["state"] for h in await heartbeats(client)] == ["missing"]


async def test_a_retired_prometheus_brought_back_is_watched_for_good(
    make_client: ClientFactory,
    fast_path: Path,
    clock: FakeClock,
) -> None:
    """Forgotten and resolved; back with a new startsAt (a new episode): watched again, and
    Alertmanager's next resolve does not make it forgotten again."""
    client = await make_client(fast_path)
    await post(client, webhook(watchdog()))
    await _forget(client)
    ended = watchdog("resolved")  # Alertmanager's resolve of the retired one's episode
    ended["endsAt"] = "2026-01-05T09:01:00Z"
    await post(client, webhook(ended))
    clock.advance(timedelta(minutes=30))
    await post(client, webhook(watchdog(starts="2026-01-05T09:30:00Z")))
    clock.advance(timedelta(minutes=1))
    await _dies_and_pages(client, clock, "2026-01-05T09:30:00Z")


async def test_a_heartbeat_forgotten_by_mistake_is_watched_again_while_it_arrives(
    make_client: ClientFactory,
    fast_path: Path,
    clock: FakeClock,
) -> None:
    client = await make_client(fast_path)
    await post(client, webhook(watchdog()))
    await _forget(client)
    for _ in range(11):  # it keeps arriving, one episode, long after the forget
        clock.advance(timedelta(minutes=1))
        await post(client, webhook(watchdog()))
    await client.app[HEARTBEAT_WATCH].check()
    await _dies_and_pages(client, clock, "2026-01-05T09:00:00Z")


async def test_copies_still_on_their_way_after_a_forget_do_not_watch_it_again(
    make_client: ClientFactory,
    fast_path: Path,
    clock: FakeClock,
) -> None:
    """A cluster retired whole: forgotten, one more repeat of the same episode arrives, then
    Prometheus and Alertmanager go, so no resolve ever comes. That copy came within the
    forget's settling time: the heartbeat stays forgotten and nothing pages."""
    client = await make_client(fast_path)
    await post(client, webhook(watchdog()))
    await _forget(client)
    clock.advance(timedelta(minutes=1))
    await post(client, webhook(watchdog()))  # Alertmanager's repeat, already on its way
    assert [h["state"] for h in await heartbeats(client)] == ["forgotten"]
    clock.advance(timedelta(minutes=7))
    await client.app[HEARTBEAT_WATCH].check()
    assert [h["state"] for h in await heartbeats(client)] == ["forgotten"]
    assert await incident_count(client) == 0


def test_check_warns_of_a_heartbeat_timeout_alertmanagers_defaults_would_outlast(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With Alertmanager's default route (repeat_interval 4h, group_interval 5m) Watchdog
    comes every 4h05m at worst: a shorter timeout pages between its copies, every time.
    `check` says so; the shipped 13h says nothing."""
    (tmp_path / "shipped").mkdir()
    assert main(["check", "-c", str(write_config(tmp_path / "shipped"))]) == 0
    assert capsys.readouterr().err == ""
    config = write_config(tmp_path, rules=FAST_WATCHDOG.replace("5m", "4h"))
    assert main(["check", "-c", str(config)]) == 0
    assert capsys.readouterr().err == (
        f"warning: {tmp_path / 'rules.yaml'}:3: rule 'fast-watchdog': heartbeat_timeout 4h "
        "is not longer than Alertmanager's default repeat_interval plus group_interval "
        "(4h5m): unless the route for this alert re-sends it more often, HeartbeatMissing "
        "fires between its copies (docs/rules.md#heartbeats)\n"
    )


def test_after_a_long_downtime_a_long_timeout_gets_a_short_grace_not_its_whole_length() -> None:
    """Shipped heartbeat: 13h. Heard at T0, the daemon down from T0+1m for two days, the
    pipeline dead too. A repeat fell due while the daemon was down, and Alertmanager re-sends
    it every group_interval until it goes through: a live pipeline is heard within minutes
    of the start. So the heartbeat has START_GRACE (30m) after the start, not its 13h (the
    dead-man switch was blind for 13 hours after every long downtime; heartbeat review)."""
    thirteen = timedelta(hours=13)
    start = T0 + timedelta(days=2)
    down = [(T0 + timedelta(minutes=1), start)]
    assert judge(row(T0), thirteen, start + timedelta(minutes=29), down) == "alive"
    assert judge(row(T0), thirteen, start + timedelta(minutes=31), down) == "missing"
    # Down for less than the silence the timeout allows: nothing fell due; as before.
    short = [(T0 + timedelta(minutes=1), T0 + timedelta(hours=3))]
    later = T0 + timedelta(hours=3, minutes=31)
    assert judge(row(T0), thirteen, later, short) == "alive"

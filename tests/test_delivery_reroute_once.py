"""A page fails over once, whichever way it fails: its channel down (our credentials), its
retries run out, its last retry before retry_for, or those in any order; each extra
failover woke the backup's backup for a page someone already had (review of the
channel-down change)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from responder.clock import FakeClock
from responder.testing import FakeTwilio, Fault, SmtpTestServer
from tests.conftest import ClientFactory
from tests.test_delivery import config, outcomes, smtp, twilio
from tests.test_escalation_story import alert, eventually, incident, post, webhook

__all__ = ["smtp", "twilio"]

ALICE = "+15551230001"
CHAIN = """
contacts:
  alice: {sms: "+15551230001", backup: bob}
  bob: {email: bob@example.com, backup: carol}
  carol: {email: carol@example.com}
escalation_policies:
  standard:
    levels:
      - targets: [alice]
incidents:
  default_policy: standard
"""


async def pages(client: Any) -> list[tuple[str, str, str, int, str]]:
    return [
        (p["contact"], p["channel"], p["state"], p["attempts"], (p["error"] or "")[:40])
        for p in (await incident(client))["pages"]
    ]


async def alice_attempts(client: Any, clock: FakeClock, n: int) -> None:
    async def done() -> bool:
        sms = [p for p in (await incident(client))["pages"] if p["channel"] == "sms"]
        return bool(sms[0]["attempts"] >= n and sms[0]["state"] != "sending")

    for _ in range(40):
        if await done():
            return
        clock.advance(timedelta(minutes=5))
        await asyncio.sleep(0.1)
    raise AssertionError(f"alice's SMS never reached attempt {n}")


async def until_failed(client: Any, clock: FakeClock) -> None:
    """Five minutes at a time until alice's SMS has failed for good (retry_for is over)."""

    async def failed() -> bool:
        sms = [p for p in (await incident(client))["pages"] if p["channel"] == "sms"]
        return bool(sms[0]["state"] == "failed")

    for _ in range(40):
        if await failed():
            break
        clock.advance(timedelta(minutes=5))
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)


def contacts_paged(smtp: SmtpTestServer) -> list[str]:
    return [m.rcpt_tos[0] for m in smtp.messages]


async def start(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
    delivery: str,
) -> Any:
    del clock  # the tests advance it themselves
    return await make_client(config(tmp_path, twilio, smtp, delivery, contacts=CHAIN))


async def test_channel_down_then_5xx_at_max_attempts_reroutes_once(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
) -> None:
    client = await start(
        make_client, tmp_path, clock, twilio, smtp, "delivery: {max_attempts: 3}\n"
    )
    right = twilio.auth_token
    twilio.auth_token = "0" * 32
    await post(client, webhook(alert("TargetDown", instance="web-1")))
    await alice_attempts(client, clock, 1)
    await eventually(lambda: _true(len(smtp.messages) == 1), "bob paged")
    twilio.auth_token = right
    twilio.fail_number(ALICE, Fault.UNAVAILABLE)  # Twilio itself now has an outage
    await alice_attempts(client, clock, 3)
    await asyncio.sleep(0.3)
    assert contacts_paged(smtp) == ["bob@example.com"], "carol paged: re-routed a second time"


async def test_outage_reroute_then_channel_down_reroutes_once(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
) -> None:
    client = await start(
        make_client, tmp_path, clock, twilio, smtp, "delivery: {max_attempts: 2}\n"
    )
    twilio.fail_number(ALICE, Fault.UNAVAILABLE)
    await post(client, webhook(alert("TargetDown", instance="web-1")))
    await alice_attempts(client, clock, 2)
    await eventually(lambda: _true(len(smtp.messages) == 1), "bob paged (outage)")
    twilio.clear_faults()
    twilio.auth_token = "0" * 32  # now our token is refused
    await alice_attempts(client, clock, 3)
    await asyncio.sleep(0.3)
    assert contacts_paged(smtp) == ["bob@example.com"], "carol paged: re-routed a second time"


async def test_channel_down_5xx_channel_down_reroutes_once(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
) -> None:
    client = await start(make_client, tmp_path, clock, twilio, smtp, "")
    right = twilio.auth_token
    twilio.auth_token = "0" * 32
    await post(client, webhook(alert("TargetDown", instance="web-1")))
    await alice_attempts(client, clock, 1)
    await eventually(lambda: _true(len(smtp.messages) == 1), "bob paged")
    twilio.auth_token = right
    twilio.fail_next(Fault.UNAVAILABLE)  # one 503 in between (attempt 2 of 6)
    await alice_attempts(client, clock, 2)
    twilio.auth_token = "0" * 32
    await alice_attempts(client, clock, 3)
    await asyncio.sleep(0.3)
    assert contacts_paged(smtp) == ["bob@example.com"], "carol paged: re-routed a second time"


def _break_alices_sms(twilio: FakeTwilio, cause: str) -> None:
    if cause == "channel_down":
        twilio.auth_token = "0" * 32  # our token refused
    else:
        twilio.fail_number(ALICE, Fault.UNAVAILABLE)  # Twilio's own outage


@pytest.mark.parametrize("cause", ["channel_down", "outage"])
async def test_with_retry_for_zero_a_page_reroutes_once(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
    cause: str,
) -> None:
    client = await start(
        make_client, tmp_path, clock, twilio, smtp, "delivery: {max_attempts: 2, retry_for: 0s}\n"
    )
    _break_alices_sms(twilio, cause)
    await post(client, webhook(alert("TargetDown", instance="web-1")))
    await alice_attempts(client, clock, 2)
    await asyncio.sleep(0.3)
    assert contacts_paged(smtp) == ["bob@example.com"], "carol paged: re-routed a second time"


@pytest.mark.parametrize("cause", ["channel_down", "outage"])
async def test_until_retry_for_a_page_reroutes_once(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
    cause: str,
) -> None:
    """Its last failure, at retry_for, does not fail it over again (an outage's did, before
    this session: the backup's backup woken at the end of the hour)."""
    client = await start(
        make_client, tmp_path, clock, twilio, smtp, "delivery: {max_attempts: 2, retry_for: 20m}\n"
    )
    _break_alices_sms(twilio, cause)
    await post(client, webhook(alert("TargetDown", instance="web-1")))
    await until_failed(client, clock)
    assert contacts_paged(smtp) == ["bob@example.com"], "carol paged: re-routed a second time"


async def _true(value: bool) -> bool:
    return value


async def test_smtp_size_refusal_at_mail_from_is_not_channel_down() -> None:
    """RFC 1870: a message over the server's SIZE limit is refused at MAIL FROM (552),
    which aiosmtplib raises as SMTPSenderRefused: one too-large message, not the channel."""
    import socket

    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Sink

    from notifiers.base import DeliveryError
    from notifiers.smtp import SmtpNotifier
    from tests.test_notifier_smtp import page, settings_for

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    controller = Controller(Sink(), hostname="127.0.0.1", port=port, data_size_limit=2000)
    await asyncio.to_thread(controller.start)
    try:
        server = SmtpTestServer()
        server.port = port
        notifier = SmtpNotifier(settings_for(server))
        await notifier.send(page())  # a small page goes
        with pytest.raises(DeliveryError) as caught:
            await notifier.send(page(text="x" * 5000))
        assert not caught.value.channel_down
    finally:
        await asyncio.to_thread(controller.stop)


async def test_a_broken_token_counts_as_channel_down_and_is_logged_once(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """docs/deployment.md's ResponderPagesFailing fires on outcome channel_down: a broken
    token counted only 'retry' for the hour of retry_for, and no documented alert fired;
    the log says so once, not at every attempt of every page."""
    client = await start(make_client, tmp_path, clock, twilio, smtp, "")
    twilio.auth_token = "0" * 32
    await post(client, webhook(alert("TargetDown", instance="web-1")))
    for _ in range(11):  # 55 minutes
        clock.advance(timedelta(minutes=5))
        await asyncio.sleep(0.1)
    assert (await outcomes(client, "sms")).get("channel_down", 0) > 1
    errors = [r for r in caplog.records if "channel cannot deliver" in r.getMessage()]
    assert len(errors) == 1


async def test_bundle_down_reroutes_each_page_once(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
) -> None:
    client = await start(make_client, tmp_path, clock, twilio, smtp, "")
    right = twilio.auth_token
    await post(client, webhook(alert("TargetDown", instance="web-1"), group="a"))
    await eventually(lambda: _true(len(twilio.sent_sms()) == 1), "first SMS")
    twilio.auth_token = "0" * 32
    await post(client, webhook(alert("TargetDown", instance="web-2"), group="b"))
    await post(client, webhook(alert("TargetDown", instance="web-3"), group="c"))
    await asyncio.sleep(0.3)
    for _ in range(8):
        clock.advance(timedelta(minutes=5))
        await asyncio.sleep(0.15)
    assert set(contacts_paged(smtp)) == {"bob@example.com"}
    twilio.auth_token = right
    clock.advance(timedelta(minutes=5))
    await eventually(lambda: _true(len(twilio.sent_sms()) == 2), "the bundle goes once fixed")
    await asyncio.sleep(0.3)
    clock.advance(timedelta(minutes=5))
    await asyncio.sleep(0.3)
    assert len(twilio.sent_sms()) == 2


async def test_ack_cancels_the_channel_down_page(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
) -> None:
    from tests.conftest import AUTH

    client = await start(make_client, tmp_path, clock, twilio, smtp, "")
    right = twilio.auth_token
    twilio.auth_token = "0" * 32
    await post(client, webhook(alert("TargetDown", instance="web-1")))
    await alice_attempts(client, clock, 1)
    r = await client.post("/api/v1/incidents/1/acknowledge", json={"by": "bob"}, headers=AUTH)
    assert r.status == 200
    twilio.auth_token = right
    for _ in range(4):
        clock.advance(timedelta(minutes=5))
        await asyncio.sleep(0.1)
    assert twilio.sent_sms() == []
    assert [p[2] for p in await pages(client) if p[1] == "sms"] == ["cancelled"]


async def test_restart_keeps_the_mark(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
) -> None:
    client = await start(make_client, tmp_path, clock, twilio, smtp, "")
    twilio.auth_token = "0" * 32
    await post(client, webhook(alert("TargetDown", instance="web-1")))
    await alice_attempts(client, clock, 1)
    await eventually(lambda: _true(len(smtp.messages) == 1), "bob paged")
    await client.close()
    client = await make_client(tmp_path / "config.yaml")
    await alice_attempts(client, clock, 3)
    await asyncio.sleep(0.3)
    assert contacts_paged(smtp) == ["bob@example.com"]


POLICY = """
escalation_policies:
  standard:
    levels:
      - targets: [alice]
incidents:
  default_policy: standard
"""


async def test_a_budget_hold_after_the_failover_wakes_nobody_else(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
) -> None:
    """alice's SMS fails over at max_attempts to bob (SMS + email); bob's SMS spends the
    budget; alice's SMS retry is then held by the budget: it failed over already, so its
    reroute to free channels wakes nobody (carol was woken for a page bob got twice)."""
    body = (
        """
contacts:
  alice: {sms: "+15551230001", backup: bob}
  bob: {sms: "+15551230002", email: bob@example.com, backup: carol}
  carol: {email: carol@example.com}
delivery:
  max_attempts: 1
  budget: {sms_voice_per_hour: 1}
"""
        + POLICY
    )
    client = await make_client(config(tmp_path, twilio, smtp, contacts=body))
    twilio.fail_next(Fault.UNAVAILABLE)
    await post(client, webhook(alert("TargetDown", instance="web-1")))
    await eventually(lambda: _true(len(twilio.sent_sms()) == 1), "bob's SMS")
    await eventually(lambda: _true(len(smtp.messages) == 1), "bob's email")
    for _ in range(4):
        clock.advance(timedelta(minutes=1))
        await asyncio.sleep(0.15)
    assert contacts_paged(smtp) == ["bob@example.com"], "carol woken: a second failover"


async def test_an_exhausted_chain_is_reported_once_while_the_channel_is_down(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """alice has only SMS and no backup; the token is refused for 55 minutes: the page's
    failover finds nobody once, and 'exhausted' is logged and counted once (it was at
    every attempt: nobody found wrote no failover event)."""
    body = (
        """
contacts:
  alice: {sms: "+15551230001"}
"""
        + POLICY
    )
    client = await make_client(config(tmp_path, twilio, smtp, contacts=body))
    twilio.auth_token = "0" * 32
    await post(client, webhook(alert("TargetDown", instance="web-1")))
    for _ in range(11):
        clock.advance(timedelta(minutes=5))
        await asyncio.sleep(0.1)
    got = await outcomes(client, "sms")
    nobody = [r for r in caplog.records if "nobody is left" in r.getMessage()]
    assert got.get("exhausted", 0) == 1
    assert len(nobody) == 1
    # The page itself still waits for its channel (retry_for): the line must not say it
    # failed, which deployment.md reads as "delivery gave up on a page".
    [sms] = [p for p in (await incident(client))["pages"] if p["channel"] == "sms"]
    assert sms["state"] == "queued"
    assert nobody[0].getMessage() == (
        "nobody is left to fail over to; the page waits for its channel"
    )


async def test_a_second_budget_hold_wakes_nobody_further_down_the_chain(tmp_path: Path) -> None:
    """The budget holds alice's SMS (re-routed to bob's email), a rate limit holds it next
    (its error changes), the budget holds it again: re-routed once, not on to carol (the
    'held before' was read from the page's last error, which the rate limit overwrote)."""
    from datetime import UTC, datetime

    from responder.deliver import BUDGET_HELD, _Rerouter
    from responder.directory import parse_directory
    from responder.incident import NewPage, PageKind
    from responder.store.sqlite import SQLiteStore
    from responder.yamlfile import load_text

    directory = parse_directory(load_text(CHAIN, "config.yaml"))
    store = SQLiteStore(tmp_path / "r.db")
    await store.open()
    try:
        now = datetime(2026, 1, 1, tzinfo=UTC)
        page = NewPage("drill", PageKind.TEST, "alice", "sms", "+15551230001", now, "bob", False)
        incident_id = await store.create_drill("d", [page], "t", now)
        for minutes, reason in ((0, BUDGET_HELD), (5, "rate limited"), (6, BUDGET_HELD)):
            at = now + timedelta(minutes=minutes)
            (claimed,) = [p for p in await store.claim_pages(at) if p.channel == "sms"]
            plan = None
            if reason == BUDGET_HELD:
                plan = (_Rerouter(BUDGET_HELD, directory, at, True), [claimed.id])
            await store.hold_pages([claimed.id], at + timedelta(minutes=1), reason, at, plan)
        pages = await store.step_pages(incident_id, 1, "drill")
    finally:
        await store.close()
    assert sorted(p.contact for p in pages) == ["alice", "bob"]

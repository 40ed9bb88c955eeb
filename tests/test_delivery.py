"""Delivery through provider trouble and alert storms: retries with backoff, failover on
permanent errors, per-contact rate limits that bundle instead of dropping, the spend budget,
and a kill -9 while a page is with the provider."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from notifiers.base import Message, Receipt
from responder.clock import FakeClock, SystemClock
from responder.deliver import Dispatcher, RateLimit, next_allowed, parse_delivery
from responder.incident import NewPage, Page, PageKind, PageState
from responder.metrics import Metrics
from responder.store import SQLiteStore
from responder.testing import FakeTwilio, Fault, SmtpTestServer
from responder.yamlfile import ConfigError, load_text
from tests.conftest import AUTH, ClientFactory, write_config
from tests.test_escalation_story import alert, eventually, incident, post, webhook
from tests.test_process import running
from tests.test_process_escalation import wait_for
from tests.test_store_sqlite import alert as stored_alert

CONTACTS = """
contacts:
  alice: {sms: "+15551230001", email: alice@example.com, backup: bob}
  bob: {sms: "+15551230002"}
escalation_policies:
  standard:
    levels:
      - targets: [alice]
incidents:
  default_policy: standard
"""


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio(hang_seconds=30) as fake:
        yield fake


@pytest.fixture
async def smtp() -> AsyncIterator[SmtpTestServer]:
    async with SmtpTestServer() as server:
        yield server


def config(
    folder: Path,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
    extra: str = "",
    *,
    contacts: str = CONTACTS,
    rules: str | None = None,
) -> Path:
    (folder / "twilio_token").write_text(twilio.auth_token)
    channels = f"""
channels:
  twilio:
    account_sid: {twilio.account_sid}
    auth_token_file: twilio_token
    from: "+15550000000"
    api_base_url: {twilio.base_url}
    timeout: 2s
  smtp: {{host: 127.0.0.1, port: {smtp.port}, mode: none, from: "r@example.com"}}
"""
    return write_config(folder, contacts + channels + extra, rules=rules)


def at(minute: int, second: int = 0) -> datetime:
    return datetime(2026, 1, 5, 9, minute, second, tzinfo=UTC)


def test_a_clock_stepped_back_does_not_hold_pages_for_the_step() -> None:
    """A send recorded an hour 'later' than now (the clock was corrected backwards) counts
    as sent now: the next page waits the limit's minute, not an hour and a minute (ops
    review, stop 13)."""
    limits = (RateLimit(1, timedelta(minutes=1)),)
    assert next_allowed([at(59)], limits, at(0)) == at(1)


def test_rate_limits_follow_the_oldest_message_in_each_window() -> None:
    limits = (RateLimit(1, timedelta(minutes=1)), RateLimit(3, timedelta(minutes=15)))
    assert next_allowed([], limits, at(0)) == at(0)
    assert next_allowed([at(0)], limits, at(0, 30)) == at(1)
    assert next_allowed([at(0), at(2), at(4)], limits, at(6)) == at(15)
    assert next_allowed([at(0), at(2), at(4)], limits, at(15)) == at(15)


def test_delivery_config_errors_name_the_line() -> None:
    node = load_text("delivery:\n  rate_limits:\n    sms: ['5 per 15m']\n", "config.yaml")
    with pytest.raises(ConfigError, match=r"config.yaml:3: .*COUNT/DURATION"):
        parse_delivery(node["delivery"])
    node = load_text("delivery:\n  rate_limits:\n    pager: ['1/1m']\n", "config.yaml")
    with pytest.raises(ConfigError, match="unknown channel"):
        parse_delivery(node["delivery"])
    ok = parse_delivery(
        load_text("delivery:\n  rate_limits:\n    sms: [2/1m]\n", "config.yaml")["delivery"]
    )
    assert ok.limits_for("sms") == (RateLimit(2, timedelta(minutes=1)),)


BUDGET_NOTIFYING_ADMIN = (
    "delivery:\n  budget: {sms_voice_per_hour: 1, notify: [admin@example.com]}\n"
)


def admin_emails(smtp: SmtpTestServer) -> int:
    """How many emails went to the admin the budget's notice goes to."""
    return sum("admin@example.com" in m.rcpt_tos for m in smtp.messages)


async def _sms_waiting_for_its_retry(client: Any) -> None:
    async def retried() -> bool:
        sms = [p for p in (await incident(client))["pages"] if p["channel"] == "sms"]
        return bool(sms) and sms[0]["state"] == "queued" and sms[0]["attempts"] >= 1

    await eventually(retried, "alice's SMS refused once, queued for its retry")


async def test_retryable_errors_back_off_then_succeed(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """429 then 503: the SMS goes at its third attempt. The log says why once, not nothing
    (the operator saw only 'page' lines with a growing attempt number) and not once per page
    and attempt; and once when the channel delivers again."""
    client = await make_client(config(tmp_path, twilio, smtp))
    twilio.fail_next(Fault.RATE_LIMITED)
    twilio.fail_next(Fault.UNAVAILABLE)
    with caplog.at_level(logging.INFO, logger="responder.deliver"):
        await post(client, webhook(alert("TargetDown", instance="web-1")))
        await _sms_waiting_for_its_retry(client)
        for _ in range(4):  # backoff: up to 15 s, then up to 30 s
            clock.advance(timedelta(seconds=30))
            await asyncio.sleep(0.05)

        async def sent() -> bool:
            sms = [p for p in (await incident(client))["pages"] if p["channel"] == "sms"]
            return bool(sms[0]["state"] == "sent")

        await eventually(sent, "sent after two retryable errors")
    sms = next(p for p in (await incident(client))["pages"] if p["channel"] == "sms")
    assert sms["attempts"] == 3
    assert [r.http_status for r in twilio.requests] == [429, 503, 201]
    failing = [r for r in caplog.records if r.getMessage().startswith("channel failing")]
    assert len(failing) == 1
    assert failing[0].levelno == logging.WARNING
    assert "429" in failing[0].fields["error"]  # type: ignore[attr-defined]
    again = [r for r in caplog.records if r.getMessage() == "channel delivers again"]
    assert [r.fields["channel"] for r in again] == ["sms"]  # type: ignore[attr-defined]


async def test_pages_waiting_on_a_channel_go_as_soon_as_it_delivers_again(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
) -> None:
    """Twilio refuses alice's SMS (503), then takes bob's for a newer incident: alice's waits
    no longer for its backoff (7.5-15 s here, up to 5 minutes later on), after the newer
    page (delivery review: pages came out of order after an outage)."""
    contacts = CONTACTS.replace(
        "incidents:", "  bob-first:\n    levels:\n      - targets: [bob]\nincidents:"
    )
    rules = """
rules:
  - name: for-bob
    matchers: ['alertname="ForBob"']
    policy: bob-first
"""
    client = await make_client(config(tmp_path, twilio, smtp, contacts=contacts, rules=rules))
    twilio.fail_next(Fault.UNAVAILABLE)
    await post(client, webhook(alert("TargetDown", instance="web-1")))
    await _sms_waiting_for_its_retry(client)
    await post(client, webhook(alert("ForBob", instance="web-2"), group="b"))

    async def both_sent() -> bool:
        return [len(twilio.sent_sms(n)) for n in ("+15551230002", "+15551230001")] == [1, 1]

    await eventually(both_sent, "alice's SMS went once Twilio took bob's, the clock unmoved")


async def test_invalid_number_fails_over_at_once(
    make_client: ClientFactory,
    tmp_path: Path,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
) -> None:
    client = await make_client(config(tmp_path, twilio, smtp))
    twilio.fail_number("+15551230001", Fault.INVALID_NUMBER)
    await post(client, webhook(alert("TargetDown", instance="web-1")))

    async def bob_paged() -> bool:
        return len(twilio.sent_sms("+15551230002")) == 1

    await eventually(bob_paged, "failover to the backup after a permanent error")
    pages = (await incident(client))["pages"]
    alice_sms = next(p for p in pages if (p["contact"], p["channel"]) == ("alice", "sms"))
    assert alice_sms["state"] == "failed", pages
    assert alice_sms["attempts"] == 1  # permanent: never retried
    assert "21211" in alice_sms["error"]
    assert [m.rcpt_tos for m in smtp.messages] == [["alice@example.com"]]


async def test_a_reload_that_corrects_a_number_reaches_the_page_waiting_to_retry(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
) -> None:
    """alice's number had a typo; her SMS waits for its retry when the operator corrects
    it and reloads: the retry goes to the corrected number (it went to the wrong one until
    it failed over), and the page shows the number it went to."""
    wrong = CONTACTS.replace("+15551230001", "+15551230009")
    client = await make_client(config(tmp_path, twilio, smtp, contacts=wrong))
    twilio.fail_next(Fault.UNAVAILABLE)
    await post(client, webhook(alert("TargetDown", instance="web-1")))
    await _sms_waiting_for_its_retry(client)
    config(tmp_path, twilio, smtp)
    assert (await client.post("/-/reload", headers=AUTH)).status == 200
    clock.advance(timedelta(seconds=30))  # past the first backoff

    async def sent_to_the_corrected_number() -> bool:
        sms = next(p for p in (await incident(client))["pages"] if p["channel"] == "sms")
        return bool((sms["state"], sms["address"]) == ("sent", "+15551230001"))

    # The page's row, not Twilio's request: the outbox records 'sent' after Twilio answers.
    await eventually(sent_to_the_corrected_number, "the SMS recorded sent to the new number")
    assert len(twilio.sent_sms("+15551230001")) == 1
    assert twilio.sent_sms("+15551230009") == []


async def test_a_page_whose_address_a_reload_removed_fails_over(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
) -> None:
    """alice's SMS waits for its retry when a reload takes her number away: it is not sent
    to the number she no longer has, but fails as for a contact who cannot be reached, and
    her backup bob is texted."""
    client = await make_client(config(tmp_path, twilio, smtp))
    twilio.fail_next(Fault.UNAVAILABLE)
    await post(client, webhook(alert("TargetDown", instance="web-1")))
    await _sms_waiting_for_its_retry(client)
    without_sms = CONTACTS.replace('sms: "+15551230001", ', "")
    config(tmp_path, twilio, smtp, contacts=without_sms)
    assert (await client.post("/-/reload", headers=AUTH)).status == 200
    clock.advance(timedelta(seconds=30))
    await eventually(lambda: _true(len(twilio.sent_sms("+15551230002")) == 1), "bob's SMS")
    assert twilio.sent_sms("+15551230001") == []
    pages = (await incident(client))["pages"]
    alice_sms = next(p for p in pages if (p["contact"], p["channel"]) == ("alice", "sms"))
    assert alice_sms["state"] == "failed"
    assert alice_sms["error"] == "alice has no sms address any more (config reloaded)"


async def test_a_provider_that_took_the_message_but_answered_late_is_not_sent_twice(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
) -> None:
    """Twilio accepted the SMS but answered after our 2 s timeout: the outcome is unknown,
    so the page is re-routed (the backup), never sent again on the same route."""
    client = await make_client(config(tmp_path, twilio, smtp))
    twilio.answer_delay = 3.0
    await post(client, webhook(alert("TargetDown", instance="web-1")))

    async def alice_failed() -> bool:
        pages = (await incident(client))["pages"]
        return any(
            (p["contact"], p["channel"], p["state"]) == ("alice", "sms", "failed") for p in pages
        )

    await eventually(alice_failed, "alice's SMS timed out")
    twilio.answer_delay = 0.0
    await eventually(lambda: _true(len(twilio.sent_sms("+15551230002")) == 1), "bob paged")
    for _ in range(4):  # well past any retry backoff
        clock.advance(timedelta(minutes=1))
        await asyncio.sleep(0.05)
    assert len(twilio.sent_sms("+15551230001")) == 1
    alice_sms = next(
        p
        for p in (await incident(client))["pages"]
        if (p["contact"], p["channel"]) == ("alice", "sms")
    )
    assert "outcome unknown" in alice_sms["error"]


async def test_an_email_the_server_took_but_answered_late_is_not_sent_twice(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
) -> None:
    """The SMTP server took the page but its 250 came after our timeout: re-routed to the
    backup like an SMS of unknown fate, never mailed again to the same address."""
    path = config(tmp_path, twilio, smtp)
    path.write_text(
        path.read_text().replace('from: "r@example.com"}', 'from: "r@x.org", timeout: 1s}')
    )
    client = await make_client(path)
    smtp.answer_delay = 2.0
    await post(client, webhook(alert("TargetDown", instance="web-1")))

    async def alice_email_failed() -> bool:
        pages = (await incident(client))["pages"]
        return any(
            (p["contact"], p["channel"], p["state"]) == ("alice", "email", "failed") for p in pages
        )

    await eventually(alice_email_failed, "alice's email got no answer in time")
    smtp.answer_delay = 0.0
    for _ in range(4):  # well past any retry backoff
        clock.advance(timedelta(minutes=1))
        await asyncio.sleep(0.05)
    assert [m.rcpt_tos for m in smtp.messages] == [["alice@example.com"]]  # taken once
    alice_email = next(
        p
        for p in (await incident(client))["pages"]
        if (p["contact"], p["channel"]) == ("alice", "email")
    )
    assert "outcome unknown" in alice_email["error"]
    assert "may have been delivered" in alice_email["error"]


async def test_a_storm_for_one_person_is_held_and_bundled_not_dropped(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
) -> None:
    client = await make_client(config(tmp_path, twilio, smtp))
    for n in range(8):
        await post(client, webhook(alert("TargetDown", instance=f"web-{n}"), group=f"g{n}"))
        await asyncio.sleep(0.02)
    await eventually(lambda: _true(len(twilio.sent_sms("+15551230001")) >= 1), "first SMS")
    await asyncio.sleep(0.1)
    assert len(twilio.sent_sms("+15551230001")) == 1  # one a minute
    clock.advance(timedelta(minutes=1))
    await eventually(lambda: _true(len(twilio.sent_sms("+15551230001")) == 2), "the bundle")
    bundle = twilio.sent_sms("+15551230001")[1].body
    assert bundle.startswith("7 new P2 incidents, reply ACK ALL")
    assert "ACK ALL" in bundle

    async def all_sent() -> bool:
        listed = await (await client.get("/api/v1/incidents?state=open", headers=AUTH)).json()
        states = [
            p["state"]
            for i in listed["data"]
            for p in (await incident(client, i["id"]))["pages"]
            if p["channel"] == "sms"
        ]
        return states == ["sent"] * 8  # every page accounted for, none dropped

    await eventually(all_sent, "all 8 SMS pages sent: 1 alone, 7 in the bundle")
    text = await (await client.get("/metrics")).text()
    assert 'responder_pages_total{channel="sms",outcome="held"}' in text
    # Alice's email pages are held and bundled the same way: at least the 7 SMS pages.
    bundled = next(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "responder_pages_bundled_total"
    )
    assert bundled >= 7


async def test_budget_holds_sms_and_tells_the_admins(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
) -> None:
    extra = """
delivery:
  budget: {sms_voice_per_hour: 1, notify: [admin@example.com]}
"""
    client = await make_client(config(tmp_path, twilio, smtp, extra))
    await post(client, webhook(alert("TargetDown", instance="web-1"), group="a"))
    await eventually(lambda: _true(len(twilio.sent_sms()) == 1), "first SMS")
    clock.advance(timedelta(minutes=2))
    await post(client, webhook(alert("DiskFull", instance="db-1"), group="b"))

    async def admin_told() -> bool:
        return any("admin@example.com" in m.rcpt_tos for m in smtp.messages)

    await eventually(admin_told, "budget notice to the admins")
    assert len(twilio.sent_sms()) == 1
    held = [p for p in (await incident(client, 2))["pages"] if p["channel"] == "sms"]
    assert held[0]["state"] == "queued"
    assert "budget" in held[0]["error"]
    # The first SMS is recorded as sent when the provider answered, which in fake time may be
    # after the 2-minute step above: wait past the hour from then, plus the hold's 5 minutes.
    clock.advance(timedelta(hours=1, minutes=10))
    await eventually(lambda: _true(len(twilio.sent_sms()) == 2), "sent once the budget frees")


async def test_the_budget_notice_goes_once_an_hour_across_restarts(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
) -> None:
    """The budget holds an SMS and the admins are emailed. The daemon restarts twice (a
    crash loop) while the budget still holds the SMS: no second email within the hour.
    An hour after the first, the budget holds another SMS: the admins are told again."""
    path = config(tmp_path, twilio, smtp, BUDGET_NOTIFYING_ADMIN)
    client = await make_client(path)

    async def held_here() -> bool:  # by the daemon now running (a fresh registry each)
        return (await outcomes(client, "sms")).get("held", 0) >= 1

    await post(client, webhook(alert("TargetDown", instance="web-1"), group="a"))
    await eventually(lambda: _true(len(twilio.sent_sms()) == 1), "first SMS: the budget")
    clock.advance(timedelta(minutes=2))
    await post(client, webhook(alert("DiskFull", instance="db-1"), group="b"))
    await eventually(lambda: _true(admin_emails(smtp) == 1), "budget notice to the admins")
    for _ in range(2):
        await client.close()
        client = await make_client(path)
        clock.advance(timedelta(minutes=6))  # the held SMS is due again: held again
        await eventually(held_here, "the SMS held again after the restart")
        await asyncio.sleep(0.1)
        assert admin_emails(smtp) == 1
    # The first SMS's hour is over: the held one goes, and uses the budget in turn.
    clock.advance(timedelta(minutes=50))
    await eventually(lambda: _true(len(twilio.sent_sms()) == 2), "sent once the budget frees")
    await client.close()
    client = await make_client(path)
    await post(client, webhook(alert("CpuHot", instance="app-1"), group="c"))
    await eventually(lambda: _true(admin_emails(smtp) == 2), "the notice again, an hour on")
    assert len(twilio.sent_sms()) == 2


async def test_a_budget_notice_the_mail_server_refused_goes_at_the_next_hold(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
) -> None:
    """The budget holds an SMS; the mail server refuses the admins' notice. The claim on
    the hour is given back: when the SMS is held again, the notice goes (once)."""
    client = await make_client(config(tmp_path, twilio, smtp, BUDGET_NOTIFYING_ADMIN))

    async def held(times: int) -> bool:
        return (await outcomes(client, "sms")).get("held", 0) >= times

    await post(client, webhook(alert("TargetDown", instance="web-1"), group="a"))
    await eventually(lambda: _true(len(twilio.sent_sms()) == 1), "first SMS: the budget")
    smtp.reject_recipients = frozenset({"admin@example.com"})
    clock.advance(timedelta(minutes=2))
    await post(client, webhook(alert("DiskFull", instance="db-1"), group="b"))
    await eventually(lambda: held(1), "the second SMS held by the budget")
    await asyncio.sleep(0.2)
    assert admin_emails(smtp) == 0
    smtp.reject_recipients = frozenset()
    clock.advance(timedelta(minutes=6))  # the held SMS is due again: held again
    await eventually(lambda: held(2), "the SMS held again")
    await eventually(lambda: _true(admin_emails(smtp) == 1), "the notice, at the next hold")
    clock.advance(timedelta(minutes=6))
    await eventually(lambda: held(3), "the SMS held a third time")
    await asyncio.sleep(0.2)
    assert admin_emails(smtp) == 1


async def test_a_page_held_by_the_budget_reaches_the_backup_by_email_at_once(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
) -> None:
    """carol has only SMS; with the hour's SMS budget spent her page waits, and her backup
    dave, who has email, which is free, is told at once: nobody waits an hour to hear of an
    incident (escalation review, stop 13)."""
    path = config(tmp_path, twilio, smtp, "delivery:\n  budget: {sms_voice_per_hour: 1}\n")
    text = path.read_text().replace(
        "contacts:\n",
        'contacts:\n  carol: {sms: "+15551230003", backup: dave}\n  dave: {email: d@x.org}\n',
    )
    path.write_text(text.replace("      - targets: [alice]", "      - targets: [carol]"))
    client = await make_client(path)
    await post(client, webhook(alert("TargetDown", instance="web-1"), group="a"))
    await eventually(lambda: _true(len(twilio.sent_sms()) == 1), "first SMS: the budget")
    clock.advance(timedelta(minutes=2))
    await post(client, webhook(alert("DiskFull", instance="db-1"), group="b"))

    async def dave_told() -> bool:
        return any("d@x.org" in m.rcpt_tos for m in smtp.messages)

    await eventually(dave_told, "dave's email")
    pages = {(p["contact"], p["channel"]): p for p in (await incident(client, 2))["pages"]}
    assert pages["carol", "sms"]["state"] == "queued"  # still goes when the budget frees
    clock.advance(timedelta(minutes=6))  # the next hold re-routes nothing more
    await asyncio.sleep(0.1)
    assert len((await incident(client, 2))["pages"]) == 2


async def test_kill_9_while_the_provider_holds_the_page(
    tmp_path: Path, twilio: FakeTwilio, smtp: SmtpTestServer
) -> None:
    """The SMS request hangs at the provider, the daemon dies: after the restart the SMS is not
    sent again on the same route (its fate is unknown); the page goes to the next route."""
    path = config(tmp_path, twilio, smtp)
    twilio.fail_next(Fault.HANG)
    async with running(path) as daemon:
        async with aiohttp.ClientSession() as session:
            body: dict[str, Any] = webhook(alert("TargetDown", instance="web-1"))
            url = daemon.url + "/api/v1/alertmanager"
            async with session.post(url, json=body, headers=AUTH) as response:
                assert response.status == 200
        await wait_for(lambda: len(twilio.requests) == 1, 10, "SMS request at the provider")
        await wait_for(lambda: len(smtp.messages) == 1, 10, "email to alice")
        daemon.process.send_signal(signal.SIGKILL)
        await daemon.process.wait()
    async with running(path) as daemon:
        await wait_for(lambda: len(twilio.sent_sms("+15551230002")) == 1, 10, "re-routed")
        await asyncio.sleep(0.5)
    assert [r.to for r in twilio.requests] == ["+15551230001", "+15551230002"]
    assert len(smtp.messages) == 1  # the email that was sent is not sent again


async def _true(value: bool) -> bool:
    await asyncio.sleep(0)
    return value


async def outcomes(client: Any, channel: str) -> dict[str, float]:
    """``responder_pages_total`` of one channel, by outcome."""
    text = await (await client.get("/metrics")).text()
    return {
        s.labels["outcome"]: s.value
        for f in text_string_to_metric_families(text)
        if f.name == "responder_pages"
        for s in f.samples
        if s.name == "responder_pages_total" and s.labels["channel"] == channel
    }


class HeldNotifier:
    """An email channel whose provider holds each message until the test releases it."""

    channel = "email"

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.sent: list[str] = []

    async def send(self, message: Message) -> Receipt:
        await self.release.wait()
        self.sent.append(message.text)
        return Receipt(f"id-{len(self.sent)}")

    async def close(self) -> None:
        return None


class PlainComposer:
    async def page(self, page: Page) -> Message:
        return Message(channel=page.channel, to=page.address, text=f"page {page.id}")

    async def bundle(self, pages: Sequence[Page]) -> Message:
        text = "bundle " + " ".join(str(p.id) for p in pages)
        return Message(channel=pages[0].channel, to=pages[0].address, text=text)


async def test_pages_for_a_busy_contact_wait_queued_without_spinning(tmp_path: Path) -> None:
    """While alice's email is with the provider, her next page stays queued (not marked
    sending) and the outbox sleeps instead of polling; it goes once the first is done."""
    store = SQLiteStore(tmp_path / "responder.db")
    await store.open()
    clock = SystemClock()
    now = clock.now()
    await store.ingest([replace(stored_alert(starts=now), incident_key="k")], now)
    claims = 0
    claim = store.claim_pages

    async def counted(*args: Any, **kwargs: Any) -> list[Page]:
        nonlocal claims
        claims += 1
        return await claim(*args, **kwargs)

    store.claim_pages = counted  # type: ignore[method-assign]
    notifier = HeldNotifier()
    loose = load_text("delivery:\n  rate_limits:\n    email: [100/1m]\n", "config.yaml")
    delivery = parse_delivery(loose["delivery"])  # the default would hold the second page
    dispatcher = Dispatcher(
        store,
        clock,
        Metrics(CollectorRegistry()),
        lambda: {"email": notifier},
        PlainComposer(),
        config=lambda: delivery,
    )
    first = NewPage("L1", PageKind.PAGE, "alice", "email", "alice@example.com", now)
    await store.add_pages(1, 1, [first], None, now)
    task = asyncio.create_task(dispatcher.run_forever())
    try:
        await asyncio.sleep(0.1)
        second = NewPage("L2", PageKind.PAGE, "alice", "email", "alice@example.com", clock.now())
        await store.add_pages(1, 1, [second], None, clock.now())
        dispatcher.wake()
        before = claims
        await asyncio.sleep(0.5)
        assert claims - before <= 2  # woken once, then asleep until the first is done
        assert [p.state for p in await store.step_pages(1, 1, "L2")] == [PageState.QUEUED]
        notifier.release.set()
        for _ in range(100):
            if len(notifier.sent) == 2:
                break
            await asyncio.sleep(0.02)
        assert notifier.sent == ["page 1", "page 2"]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()


async def test_a_provider_outage_longer_than_the_retries_still_delivers_the_page(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
) -> None:
    """Twilio answers 503 to alice's number for 15 minutes: after its attempts her SMS fails
    over (bob, her backup, is paged), and it keeps trying every few minutes, so she still
    gets it once it goes through (escalation review, stop 12: it was failed for good after
    about 6 minutes)."""
    client = await make_client(config(tmp_path, twilio, smtp))
    twilio.fail_number("+15551230001", Fault.UNAVAILABLE)
    await post(client, webhook(alert("TargetDown", instance="web-1")))
    for _ in range(15):
        clock.advance(timedelta(minutes=1))
        await asyncio.sleep(0.05)
    assert twilio.sent_sms("+15551230001") == []  # only refused requests so far
    assert len(twilio.sent_sms("+15551230002")) == 1  # the failover
    twilio.clear_faults()
    for _ in range(6):
        clock.advance(timedelta(minutes=1))
        await asyncio.sleep(0.05)
    await eventually(lambda: _true(len(twilio.sent_sms("+15551230001")) == 1), "sent at last")
    pages = (await incident(client))["pages"]
    alice_sms = next(p for p in pages if (p["contact"], p["channel"]) == ("alice", "sms"))
    assert alice_sms["state"] == "sent"


async def test_a_recovery_notice_held_by_the_rate_limit_still_goes(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
) -> None:
    """The alert resolves within a minute of the page: the recovery SMS waits for the
    1-a-minute limit and then goes; a held page is cancelled only when its point is gone,
    and a recovery's point comes with the resolve (found by hand, stop 12)."""
    client = await make_client(config(tmp_path, twilio, smtp))
    fired = alert("TargetDown", instance="web-1")
    await post(client, webhook(fired))
    await eventually(lambda: _true(len(twilio.sent_sms("+15551230001")) == 1), "the page")
    await post(client, webhook(alert("TargetDown", "resolved", instance="web-1")))

    async def held() -> bool:
        pages = (await incident(client))["pages"]
        return any(p["kind"] == "recovery" and p["channel"] == "sms" and p["error"] for p in pages)

    await eventually(held, "the recovery SMS held back by the rate limit")
    clock.advance(timedelta(minutes=1))
    await eventually(lambda: _true(len(twilio.sent_sms("+15551230001")) == 2), "the recovery")
    assert twilio.sent_sms("+15551230001")[1].body.startswith("RESOLVED")


async def _first_sms(client: Any, number: int) -> dict[str, Any]:
    """Incident ``number``'s first SMS page ({} while it has none)."""
    pages = [p for p in (await incident(client, number))["pages"] if p["channel"] == "sms"]
    return pages[0] if pages else {}


async def _sms_sent(client: Any, number: int) -> bool:
    return (await _first_sms(client, number)).get("state") == "sent"


async def test_an_sms_sent_before_the_clock_stepped_back_holds_the_budget_one_hour(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
) -> None:
    """The wall clock stepped back two hours (NTP at boot, a restored VM) after an SMS went
    out: that SMS counts as sent at the step, not two hours ahead, so the budget it used
    frees an hour later, not three."""
    extra = "delivery:\n  budget: {sms_voice_per_hour: 1}\n"
    client = await make_client(config(tmp_path, twilio, smtp, extra))
    await post(client, webhook(alert("TargetDown", instance="web-1"), group="a"))
    await eventually(lambda: _true(len(twilio.sent_sms()) == 1), "first SMS")
    await eventually(lambda: _sms_sent(client, 1), "the first SMS recorded as sent")
    clock.advance(timedelta(hours=-2))
    await post(client, webhook(alert("DiskFull", instance="db-1"), group="b"))

    async def held() -> bool:
        return "budget" in ((await _first_sms(client, 2)).get("error") or "")

    await eventually(held, "the second SMS held by the budget")
    clock.advance(timedelta(hours=1, minutes=10))
    await eventually(lambda: _true(len(twilio.sent_sms()) == 2), "sent an hour after the step")


async def test_level_1_after_an_unacknowledge_is_a_new_email_in_the_same_thread(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
) -> None:
    """After an unacknowledge, level 1 emails alice again: a message of its own (the first
    one's Message-ID again would be dropped by her mailbox as a duplicate) that replies to
    the first (review of stop 14)."""
    client = await make_client(config(tmp_path, twilio, smtp))
    await post(client, webhook(alert("TargetDown", instance="web-1")))

    def to_alice() -> list[Any]:
        return [m.message for m in smtp.messages if "alice@example.com" in m.rcpt_tos]

    await eventually(lambda: _true(len(to_alice()) == 1), "the first email")
    for action in ("acknowledge", "unacknowledge"):
        answer = await client.post(
            f"/api/v1/incidents/1/{action}", json={"by": "alice"}, headers=AUTH
        )
        assert answer.status == 200, await answer.text()
    for _ in range(3):  # past the rate limit
        clock.advance(timedelta(minutes=1))
        await asyncio.sleep(0.05)
    await eventually(lambda: _true(len(to_alice()) == 2), "the email after the unacknowledge")
    first, second = to_alice()
    assert second["Message-ID"] != first["Message-ID"]
    assert second["In-Reply-To"] == first["Message-ID"]


async def test_a_send_from_before_a_clock_step_is_not_counted_again_when_the_clock_catches_up(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
) -> None:
    """SMS 1 went out at t0, then the clock stepped back 2 h: SMS 1 counts as sent at the
    step, and SMS 2 waits the 1/10m limit. When the clock reaches t0 again, SMS 1 must not
    count a second time at its recorded time: SMS 3 goes at once (second review of stop
    14)."""
    extra = "delivery:\n  rate_limits:\n    sms: [1/10m]\n"
    client = await make_client(config(tmp_path, twilio, smtp, extra))
    t0 = clock.now()

    await post(client, webhook(alert("TargetDown", instance="web-1"), group="a"))
    await eventually(lambda: _true(len(twilio.sent_sms()) == 1), "SMS 1 at t0")
    await eventually(lambda: _sms_sent(client, 1), "SMS 1 recorded as sent at t0")
    clock.advance(timedelta(hours=-2))
    await post(client, webhook(alert("DiskFull", instance="db-1"), group="b"))
    await asyncio.sleep(0.3)
    clock.advance(timedelta(minutes=10, seconds=1))
    await eventually(lambda: _true(len(twilio.sent_sms()) == 2), "SMS 2, ten minutes on")

    await eventually(lambda: _sms_sent(client, 2), "SMS 2 recorded as sent before the clock moves")
    clock.advance(t0 + timedelta(minutes=1) - clock.now())
    await post(client, webhook(alert("LoadHigh", instance="app-1"), group="c"))

    await eventually(lambda: _sms_sent(client, 3), "SMS 3 at once")


async def test_refused_credentials_fail_over_at_once_and_the_page_still_goes_once_fixed(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
) -> None:
    """Twilio refuses our auth token (20003): no SMS can go, whoever it is for. alice's SMS
    fails over at once (her email went already, so to bob, whose SMS fails alike) and both
    stay queued, re-routed once each; once the token is right, both go. Before, 20003 failed
    the pages for good and a token fixed a minute later sent nothing."""
    path = config(tmp_path, twilio, smtp)
    right = twilio.auth_token
    twilio.auth_token = "0" * 32  # the provider knows another token than ours
    client = await make_client(path)
    await post(client, webhook(alert("TargetDown", instance="web-1")))

    async def both_down() -> bool:
        pages = (await incident(client))["pages"]
        sms = [p for p in pages if p["channel"] == "sms"]
        return len(sms) == 2 and all(
            p["state"] == "queued" and (p["error"] or "").startswith("channel down: ") for p in sms
        )

    await eventually(both_down, "alice's and bob's SMS queued, their channel down")
    assert [m.rcpt_tos for m in smtp.messages] == [["alice@example.com"]]
    for _ in range(3):  # retried: still down, and re-routed no further
        clock.advance(timedelta(minutes=5))
        await asyncio.sleep(0.2)
    assert len((await incident(client))["pages"]) == 3
    assert sum(r.error_code == 20003 for r in twilio.requests) >= 4
    twilio.auth_token = right  # fixed
    clock.advance(timedelta(minutes=5))

    async def sent() -> bool:
        return (
            len(twilio.sent_sms("+15551230001")) == 1 and len(twilio.sent_sms("+15551230002")) == 1
        )

    await eventually(sent, "both SMS sent once the token is right")
    await asyncio.sleep(0.3)
    clock.advance(timedelta(minutes=5))
    await asyncio.sleep(0.3)
    assert len(twilio.sent_sms()) == 2
    assert len((await incident(client))["pages"]) == 3

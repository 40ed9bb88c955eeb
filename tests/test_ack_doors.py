"""Acknowledge from anywhere: SMS replies, voice keypresses and email links, plus Twilio's
delivery callbacks driving failover. The real twilio library pages through a
Twilio-compatible server on loopback, which then calls back with valid signatures."""

from __future__ import annotations

import asyncio
import gzip
import logging
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from notifiers.twilio import INBOUND_SMS_PATH, STATUS_CALLBACK_PATH
from responder import ingest, twilio_doors
from responder import runtime as runtime_module
from responder.app import build_app
from responder.clock import FakeClock
from responder.links import LinkError, link_secret, make_token, read_token
from responder.runtime import RUNTIME, load_snapshot
from responder.secrets import Secret
from responder.store import StoreError
from responder.testing import FakeTwilio, Fault, SmtpTestServer
from responder.twilio_doors import Command, parse_reply
from tests.conftest import AUTH, write_config
from tests.test_escalation_story import alert, eventually, incident, post, webhook
from tests.test_ingest import send_slowly

Client = TestClient[Any, Any]

CONTACTS = """
contacts:
  alice:
    sms: "+15551230001"
    voice: "+15551230001"
    email: alice@example.com
    backup: bob
    notify: [{channel: sms}, {channel: voice, after: 5m}]
  bob: {sms: "+15551230002", email: bob@example.com}
escalation_policies:
  standard:
    levels:
      - targets: [alice]
      - after: 15m
        targets: [bob]
incidents:
  default_policy: standard
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as fake:
        yield fake


@pytest.fixture
async def smtp() -> AsyncIterator[SmtpTestServer]:
    async with SmtpTestServer() as server:
        yield server


class Starter(Protocol):
    def __call__(self, contacts: str = CONTACTS, rules: str | None = None) -> Awaitable[Client]: ...


@pytest.fixture
def start(
    aiohttp_client: Callable[..., Awaitable[Client]],
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
) -> Starter:
    """Starts the daemon on the test's state: again after a ``close()``, a restart."""

    def start(contacts: str = CONTACTS, rules: str | None = None) -> Awaitable[Client]:
        return start_daemon(aiohttp_client, tmp_path, clock, twilio, smtp, contacts, rules)

    return start


@pytest.fixture
async def daemon(start: Starter) -> Client:
    return await start()


async def start_daemon(
    aiohttp_client: Callable[..., Awaitable[Client]],
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
    contacts: str = CONTACTS,
    rules: str | None = None,
) -> Client:
    """The app on a known port, so its public URL is where the fake's callbacks land."""
    port = free_port()
    (tmp_path / "twilio_token").write_text(twilio.auth_token)
    config = write_config(
        tmp_path,
        f"""
server:
  public_url: http://127.0.0.1:{port}
channels:
  twilio:
    account_sid: {twilio.account_sid}
    auth_token_file: twilio_token
    from: "+15550000000"
    api_base_url: {twilio.base_url}
  smtp: {{host: 127.0.0.1, port: {smtp.port}, mode: none, from: "r@example.com"}}
"""
        + contacts,
        rules=rules,
    )
    app = build_app(load_snapshot(config), clock=clock, registry=CollectorRegistry())
    return await aiohttp_client(app, server_kwargs={"port": port})


def public(client: Client, path: str) -> str:
    return f"http://127.0.0.1:{client.port}{path}"


async def first_incident_paged(client: Client, twilio: FakeTwilio) -> None:
    await post(client, webhook(alert("TargetDown", instance="web-1:9100")))

    async def sms_sent() -> bool:
        # Recorded as sent too: the send time counts for alice's SMS rate limit, and a test
        # that moves the clock on between Twilio's answer and that record would find her
        # next text held back.
        if len(twilio.sent_sms("+15551230001")) != 1:
            return False
        pages = (await incident(client))["pages"]
        return any(p["channel"] == "sms" and p["sentAt"] is not None for p in pages)

    await eventually(sms_sent, "SMS to alice")


@pytest.mark.parametrize(
    ("text", "command"),
    [
        ("ACK 42", Command("acknowledge", 42)),
        ("ack #42", Command("acknowledge", 42)),
        (" Res 7 ", Command("resolve", 7)),
        ("ACK", Command("acknowledge", None)),
        ("ack all", Command("acknowledge", None, everything=True)),
        ("r", Command("resolve", None)),
        ("UNSNOOZE 42", Command("unsnooze", 42)),
        ("Unsnooze #7", Command("unsnooze", 7)),
        ("unsnooze", Command("unsnooze", None)),
        ("UNSNOOZE ALL", None),  # it pages again: one incident at a time
        ("RES ALL", None),  # one incident at a time: resolving is not undone by a reply
        ("u 42", None),
        ("hello", None),
        ("ACK 42; DROP TABLE", None),
        ("ACK 4" + "2" * 20, None),
    ],
)
def test_reply_parsing(text: str, command: Command | None) -> None:
    assert parse_reply(text) == command


async def _one_call_for_two_incidents(daemon: Client, twilio: FakeTwilio, clock: FakeClock) -> Any:
    """Two incidents for alice whose voice pages fall due together: one call tells of both."""
    for n in (1, 2):
        await post(
            daemon, webhook(alert("DiskFull", instance=f"db-{n}"), group=f'{{}}:{{x="{n}"}}')
        )
    await eventually(lambda: _true(len(twilio.sent_sms("+15551230001")) >= 1), "an SMS")
    clock.advance(timedelta(minutes=5))  # both voice pages are due together: one call
    await eventually(lambda: _true(len(twilio.calls("+15551230001")) >= 1), "the call")
    (call,) = twilio.calls("+15551230001")
    return call


def _second_transition_fails(daemon: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store refuses the second incident write from now on (a full disk, a lock): an
    'ACK ALL' or a bundled call's keypress cut off part-way."""
    store = daemon.app[RUNTIME].store
    real = store.transition
    calls: list[int] = []

    async def second_write_fails(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise StoreError("database is locked")
        return await real(*args, **kwargs)

    monkeypatch.setattr(store, "transition", second_write_fails)


async def test_an_action_whose_request_is_wrong_is_400_not_409(daemon: Client) -> None:
    """A field the request got wrong is a bad request (400; the CLI exits 2), whatever its
    text says; only a state that does not allow the action is 409 (exit 1). A snooze far
    too long or a contact whose name holds " is " was 409 (escalation review)."""
    await post(daemon, webhook(alert("DiskFull", instance="db-1")))
    for action, body in (
        ("snooze", {"for": "9999999999999w"}),
        ("snooze", {"for": "until this is over"}),
        ("reassign", {"to": "whoever is on call"}),
    ):
        answer = await daemon.post(f"/api/v1/incidents/1/{action}", json=body, headers=AUTH)
        assert answer.status == 400, (action, body, await answer.text())
    resolved = await daemon.post("/api/v1/incidents/1/resolve", json={}, headers=AUTH)
    assert resolved.status == 200
    for action in ("acknowledge", "unacknowledge"):
        answer = await daemon.post(f"/api/v1/incidents/1/{action}", json={}, headers=AUTH)
        assert answer.status == 409, (action, await answer.text())


async def test_sms_reply_acknowledges(daemon: Client, twilio: FakeTwilio) -> None:
    await first_incident_paged(daemon, twilio)
    answer = await twilio.send_inbound_sms(
        public(daemon, INBOUND_SMS_PATH), "+15551230001", "+15550000000", "ACK 1"
    )
    assert answer.status == 200
    assert "Acknowledged #1" in answer.text
    assert answer.content_type.startswith("application/xml")
    doc = await incident(daemon)
    assert (doc["state"], doc["acknowledgedBy"]) == ("acknowledged", "alice")
    ack = next(e for e in doc["timeline"] if e["kind"] == "acknowledged")
    assert (ack["actor"], ack["via"]) == ("alice", "sms")
    # The voice call that alice's rules put 5 minutes after the SMS is no longer needed.
    voice = [p for p in doc["pages"] if p["channel"] == "voice"]
    assert [p["state"] for p in voice] == ["cancelled"]


async def test_an_sms_reply_says_when_the_incident_already_was_so(
    daemon: Client, twilio: FakeTwilio
) -> None:
    """bob resolves #1 from the CLI while alice texts RES 1: her reply says it already was
    resolved, as the CLI and the email link say, rather than "Resolved #1" as if she had
    closed it (escalation review: she could not tell who resolved it, or that it was done)."""
    await first_incident_paged(daemon, twilio)
    inbound = public(daemon, INBOUND_SMS_PATH)
    answer = await twilio.send_inbound_sms(inbound, "+15551230001", "+15550000000", "ACK 1")
    assert "Acknowledged #1" in answer.text
    assert "already" not in answer.text
    again = await twilio.send_inbound_sms(inbound, "+15551230001", "+15550000000", "ACK 1")
    assert "Already acknowledged: #1" in again.text, again.text
    resolved = await daemon.post("/api/v1/incidents/1/resolve", json={"by": "bob"}, headers=AUTH)
    assert resolved.status == 200
    late = await twilio.send_inbound_sms(inbound, "+15551230001", "+15550000000", "RES 1")
    assert "Already resolved: #1" in late.text, late.text
    assert "(by bob)" in late.text, late.text
    assert (await incident(daemon))["resolvedBy"] == "bob"


async def test_an_sms_reply_ends_a_snooze_as_the_api_does(
    daemon: Client, twilio: FakeTwilio
) -> None:
    """bob snoozed #1 for an hour; alice, whose page told her of it, texts UNSNOOZE 1: the
    snooze ends now as through the API (recorded as hers, via sms; the level reached is
    paged again at once). Sent again, the reply says it is not snoozed; a bare UNSNOOZE
    ends the snooze of the incident she was told of last. bob, never paged for #1, is
    refused, and a resolved incident's snooze cannot be ended."""
    await first_incident_paged(daemon, twilio)
    inbound = public(daemon, INBOUND_SMS_PATH)

    async def reply(sender: str, text: str) -> str:
        answer = await twilio.send_inbound_sms(inbound, sender, "+15550000000", text)
        assert answer.status == 200, answer
        return answer.text

    async def act(action: str, body: dict[str, str]) -> None:
        done = await daemon.post(f"/api/v1/incidents/1/{action}", json=body, headers=AUTH)
        assert done.status == 200, await done.text()

    await act("snooze", {"by": "bob", "for": "1h"})
    assert "#1 was not paged to you" in await reply("+15551230002", "UNSNOOZE 1")
    assert (await incident(daemon))["state"] == "snoozed"
    text = await reply("+15551230001", "UNSNOOZE 1")
    assert "Snooze ended for #1 TargetDown on web-1:9100." in text, text
    doc = await incident(daemon)
    assert doc["state"] == "triggered"
    ended = [(e["actor"], e["via"]) for e in doc["timeline"] if e["kind"] == "snooze_ended"]
    assert ended == [("alice", "sms")]
    again = sorted((p["contact"], p["channel"]) for p in doc["pages"] if p["step"][:4] == "L1.s")
    assert again == [("alice", "sms"), ("alice", "voice")]  # her notification rules
    text = await reply("+15551230001", "UNSNOOZE 1")
    assert "Not snoozed: #1 TargetDown on web-1:9100 (triggered)." in text, text
    await act("snooze", {"by": "bob", "for": "1h"})
    text = await reply("+15551230001", "unsnooze")
    assert "Snooze ended for #1" in text, text
    await act("acknowledge", {"by": "bob"})
    text = await reply("+15551230001", "UNSNOOZE")
    assert "Not snoozed: #1 TargetDown on web-1:9100 (acknowledged by bob)." in text, text
    await act("resolve", {"by": "bob"})
    assert "#1: incident 1 is already resolved" in await reply("+15551230001", "UNSNOOZE 1")
    help_text = await reply("+15551230001", "wake up")
    assert "Reply ACK, RES or UNSNOOZE with an incident id" in help_text, help_text


async def test_an_sms_unsnooze_during_a_reloads_re_arm_says_why_it_waits(
    daemon: Client, twilio: FakeTwilio, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload changed the policies and the store refuses their re-arm for a while (a full
    disk): an unsnooze waits for it (it would page by the old levels' numbering). By SMS the
    reply says so, not "cannot reach its database"; once the re-arm is written it works."""
    await first_incident_paged(daemon, twilio)
    snoozed = await daemon.post(
        "/api/v1/incidents/1/snooze", json={"by": "alice", "for": "1h"}, headers=AUTH
    )
    assert snoozed.status == 200, await snoozed.text()
    store = daemon.app[RUNTIME].store
    real = store.rearm_open_incidents
    disk_full = True

    async def refused_while_full(*args: Any, **kwargs: Any) -> int:
        if disk_full:
            raise StoreError("database or disk is full")
        done: int = await real(*args, **kwargs)
        return done

    monkeypatch.setattr(store, "rearm_open_incidents", refused_while_full)
    monkeypatch.setattr(runtime_module, "REARM_RETRY_S", 0.01)
    config = tmp_path / "config.yaml"
    config.write_text(config.read_text().replace("after: 15m", "after: 20m"))
    assert (await daemon.post("/-/reload", headers=AUTH)).status == 503  # re-arm pending
    inbound = public(daemon, INBOUND_SMS_PATH)
    answer = await twilio.send_inbound_sms(inbound, "+15551230001", "+15550000000", "UNSNOOZE 1")
    assert answer.status == 200
    assert "#1: escalation is being re-armed for the new policies; try again shortly" in (
        answer.text
    ), answer.text
    assert (await incident(daemon))["state"] == "snoozed"
    disk_full = False
    await eventually(lambda: _true(not daemon.app[RUNTIME].rearm_pending), "re-arm written")
    answer = await twilio.send_inbound_sms(inbound, "+15551230001", "+15550000000", "UNSNOOZE 1")
    assert "Snooze ended for #1" in answer.text, answer.text


async def test_a_twilio_token_staged_by_a_reload_waits_for_the_restart(
    daemon: Client, twilio: FakeTwilio, tmp_path: Path
) -> None:
    """The operator puts a new Twilio token in the file and reloads: channels take effect at
    the next restart, for the pages and for checking Twilio's callbacks alike, so alice's
    ACK signed with the token in force is taken (it was refused with 403: review of stop
    14)."""
    await first_incident_paged(daemon, twilio)
    (tmp_path / "twilio_token").write_text("0123456789abcdef" * 2)
    assert (await daemon.post("/-/reload", headers=AUTH)).status == 200
    answer = await twilio.send_inbound_sms(
        public(daemon, INBOUND_SMS_PATH), "+15551230001", "+15550000000", "ACK 1"
    )
    assert answer.status == 200, answer
    assert (await incident(daemon))["state"] == "acknowledged"


async def test_sms_ack_all_and_unknown_senders(
    daemon: Client, twilio: FakeTwilio, caplog: pytest.LogCaptureFixture
) -> None:
    await first_incident_paged(daemon, twilio)
    await post(daemon, webhook(alert("DiskFull", instance="db-1"), group='{}:{x="2"}'))

    async def second_held() -> bool:
        # One SMS a minute per contact method: the second page waits, to go out bundled.
        pages = (await incident(daemon, 2))["pages"]
        return any(p["channel"] == "sms" and "rate limited" in (p["error"] or "") for p in pages)

    await eventually(second_held, "second incident's SMS held back by the rate limit")
    stranger = await twilio.send_inbound_sms(
        public(daemon, INBOUND_SMS_PATH), "+15559999999", "+15550000000", "ACK ALL"
    )
    assert stranger.status == 200
    assert "<Message>" not in stranger.text  # unknown senders get nothing
    forged = await twilio.send_inbound_sms(
        public(daemon, INBOUND_SMS_PATH),
        "+15551230001",
        "+15550000000",
        "ACK ALL",
        valid_signature=False,
    )
    assert forged.status == 403
    # The log names the URL the signature was checked against: a server.public_url that is
    # not the one Twilio calls refuses every reply, and this is where an operator sees it.
    (refused,) = [
        r.fields  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage() == "Twilio callback with a bad signature refused"
    ]
    assert refused["checked_url"] == public(daemon, INBOUND_SMS_PATH)
    assert (await incident(daemon, 1))["state"] == "triggered"
    answer = await twilio.send_inbound_sms(
        public(daemon, INBOUND_SMS_PATH), "+15551230001", "+15550000000", "ack all"
    )
    assert "#1" in answer.text
    # #2's page is still held: alice has not heard of it, so her ACK ALL leaves it for the
    # page that will tell her (escalation review, stop 13).
    assert "#2" not in answer.text
    assert (await incident(daemon, 1))["state"] == "acknowledged"
    assert (await incident(daemon, 2))["state"] == "triggered"


async def test_sms_replies_answer_only_for_incidents_the_sender_was_told_of(
    daemon: Client, twilio: FakeTwilio
) -> None:
    """A bare ACK means the incident whose page reached the sender, not a newer one still
    held by the rate limit; ACK <id> or RES <id> from a contact never paged for that
    incident is refused (security and escalation reviews, stop 13)."""
    await first_incident_paged(daemon, twilio)
    await post(daemon, webhook(alert("DiskFull", instance="db-1"), group='{}:{x="2"}'))

    async def second_held() -> bool:
        pages = (await incident(daemon, 2))["pages"]
        return any(p["channel"] == "sms" and "rate limited" in (p["error"] or "") for p in pages)

    await eventually(second_held, "second incident's SMS held back by the rate limit")
    inbound = public(daemon, INBOUND_SMS_PATH)
    answer = await twilio.send_inbound_sms(inbound, "+15551230001", "+15550000000", "ACK")
    assert "#1" in answer.text
    assert (await incident(daemon, 1))["state"] == "acknowledged"
    assert (await incident(daemon, 2))["state"] == "triggered"
    # bob (alice's backup) was paged for neither.
    refused = await twilio.send_inbound_sms(inbound, "+15551230002", "+15550000000", "RES 2")
    assert "#2 was not paged to you" in refused.text
    assert "DiskFull" not in refused.text  # not even the title
    assert (await incident(daemon, 2))["state"] == "triggered"


async def test_a_bare_ack_answers_the_page_told_last_even_when_someone_was_first(
    daemon: Client, twilio: FakeTwilio, clock: FakeClock
) -> None:
    """alice is texted #1, then #2; bob acknowledges #2 from the API, and alice answers
    #2's text with a bare ACK. The reply is about #2, which someone acknowledged first; it
    must not acknowledge #1 instead, an older incident she did not answer, stopping its
    escalation (escalation review: the bare ACK skipped acknowledged incidents)."""
    await first_incident_paged(daemon, twilio)
    clock.advance(timedelta(minutes=2))  # past alice's SMS rate limit
    await post(daemon, webhook(alert("DiskFull", instance="db-1"), group='{}:{x="2"}'))
    await eventually(lambda: _true(len(twilio.sent_sms("+15551230001")) == 2), "#2 paged")
    taken = await daemon.post("/api/v1/incidents/2/acknowledge", json={"by": "bob"}, headers=AUTH)
    assert taken.status == 200
    inbound = public(daemon, INBOUND_SMS_PATH)
    answer = await twilio.send_inbound_sms(inbound, "+15551230001", "+15550000000", "ACK")
    assert "Already acknowledged: #2 DiskFull on db-1 (by bob)." in answer.text, answer.text
    assert "#1" not in answer.text, answer.text
    assert (await incident(daemon, 1))["state"] == "triggered"
    assert (await incident(daemon, 2))["acknowledgedBy"] == "bob"
    # ACK ALL still acknowledges every open incident she was told of.
    answer = await twilio.send_inbound_sms(inbound, "+15551230001", "+15550000000", "ACK ALL")
    assert "Acknowledged #1" in answer.text, answer.text
    assert (await incident(daemon, 1))["acknowledgedBy"] == "alice"


async def test_an_sms_reply_acts_only_on_the_trigger_the_sender_was_paged_for(
    daemon: Client, twilio: FakeTwilio, clock: FakeClock
) -> None:
    """alice was texted for #1; it resolves and fires again, and its new text to her waits
    for her rate limit. Her 'ACK 1' (and a bare ACK) must not acknowledge the new trigger
    she has not heard of: the reply says it fired again and nothing changes. Once the new
    text reached her (paged for both triggers), ACK 1 acts, and keeps acting through the
    trigger's snooze and new episodes (escalation review: it acknowledged any trigger)."""
    await first_incident_paged(daemon, twilio)
    clock.advance(timedelta(seconds=30))  # within alice's rate limit of one SMS a minute
    await post(daemon, webhook(alert("TargetDown", status="resolved", instance="web-1:9100")))
    refired = alert("TargetDown", starts="2026-01-05T09:00:30Z", instance="web-1:9100")
    await post(daemon, webhook(refired))

    async def held() -> bool:
        pages = (await incident(daemon))["pages"]
        return any(p["episode"] == 2 and "rate limited" in (p["error"] or "") for p in pages)

    await eventually(held, "the new trigger's SMS held by alice's rate limit")
    inbound = public(daemon, INBOUND_SMS_PATH)
    answer = await twilio.send_inbound_sms(inbound, "+15551230001", "+15550000000", "ACK 1")
    assert "#1 fired again at 09:00 UTC since your page, not acknowledged" in answer.text
    answer = await twilio.send_inbound_sms(inbound, "+15551230001", "+15550000000", "RES 1")
    assert "not resolved" in answer.text
    answer = await twilio.send_inbound_sms(inbound, "+15551230001", "+15550000000", "UNSNOOZE 1")
    assert "since your page, its snooze not ended" in answer.text
    answer = await twilio.send_inbound_sms(inbound, "+15551230001", "+15550000000", "ACK")
    assert "Nothing open to act on." in answer.text
    assert (await incident(daemon))["state"] == "triggered"
    clock.advance(timedelta(minutes=1))
    await eventually(lambda: _true(len(twilio.sent_sms("+15551230001")) == 2), "new SMS")
    for action, body in (
        ("snooze", {"by": "bob", "for": "1h"}),
        ("unacknowledge", {"by": "bob"}),  # after her ACK: a new episode of the same trigger
    ):
        done = await daemon.post(f"/api/v1/incidents/1/{action}", json=body, headers=AUTH)
        assert done.status == 200, await done.text()
        answer = await twilio.send_inbound_sms(inbound, "+15551230001", "+15550000000", "ACK 1")
        assert "Acknowledged #1" in answer.text
    doc = await incident(daemon)
    assert (doc["state"], doc["acknowledgedBy"], doc["episode"]) == ("acknowledged", "alice", 3)


async def test_a_replayed_sms_reply_acts_on_nothing_even_after_a_restart(
    start: Starter,
    clock: FakeClock,
    twilio: FakeTwilio,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Twilio's signature holds no time: a signed 'ACK' captured once stays valid. Posted
    again after a restart and a new incident paging alice, it must not acknowledge that one
    as her, nor tell the one who posted it anything."""
    daemon = await start()
    await first_incident_paged(daemon, twilio)
    sid = "SM" + "ab" * 16
    answer = await twilio.send_inbound_sms(
        public(daemon, INBOUND_SMS_PATH), "+15551230001", "+15550000000", "ACK", message_sid=sid
    )
    assert "Acknowledged #1" in answer.text, answer.text
    await daemon.close()

    daemon = await start()
    await post(daemon, webhook(alert("DiskFull", instance="db-1"), group='{}:{x="2"}'))
    clock.advance(timedelta(minutes=2))  # past the SMS rate limit
    await eventually(lambda: _true(len(twilio.sent_sms("+15551230001")) == 2), "#2 paged")
    with caplog.at_level(logging.INFO, logger="responder.twilio"):
        replayed = await twilio.send_inbound_sms(
            public(daemon, INBOUND_SMS_PATH), "+15551230001", "+15550000000", "ACK", message_sid=sid
        )
    assert replayed.status == 200
    assert "<Message>" not in replayed.text, replayed.text
    assert (await incident(daemon, 2))["state"] == "triggered"
    [record] = [r for r in caplog.records if "posted again" in r.getMessage()]
    assert (record.levelno, record.getMessage()) == (
        logging.WARNING,
        "SMS reply posted again; not acted on again",
    )


async def test_a_replayed_sms_reply_with_a_sid_that_swallowed_a_field_acts_on_nothing(
    daemon: Client, twilio: FakeTwilio, clock: FakeClock
) -> None:
    """Twilio signs the fields run together, name after value: a captured 'ACK' whose
    MessageSid takes in the field after it (and that field left out) carries the same
    signature. It must not pass as a new request and acknowledge a later incident."""
    await first_incident_paged(daemon, twilio)
    sid = "SM" + "ef" * 16
    form = {
        "AccountSid": twilio.account_sid,
        "ApiVersion": "2010-04-01",
        "Body": "ACK",
        "From": "+15551230001",
        "MessageSid": sid,
        "NumMedia": "0",
        "SmsSid": sid,
        "To": "+15550000000",
    }
    signature = twilio.sign(public(daemon, INBOUND_SMS_PATH), form)
    headers = {"X-Twilio-Signature": signature}
    answer = await daemon.post(INBOUND_SMS_PATH, data=form, headers=headers)
    assert "Acknowledged #1" in await answer.text()

    await post(daemon, webhook(alert("DiskFull", instance="db-1"), group='{}:{x="2"}'))
    clock.advance(timedelta(minutes=2))  # past the SMS rate limit
    await eventually(lambda: _true(len(twilio.sent_sms("+15551230001")) == 2), "#2 paged")
    swallowed = {k: v for k, v in form.items() if k != "NumMedia"}
    swallowed["MessageSid"] = sid + "NumMedia0"
    assert twilio.sign(public(daemon, INBOUND_SMS_PATH), swallowed) == signature
    replayed = await daemon.post(INBOUND_SMS_PATH, data=swallowed, headers=headers)
    assert replayed.status == 400, await replayed.text()
    assert (await incident(daemon, 2))["state"] == "triggered"


async def test_twilio_retrying_an_sms_reply_gets_the_first_answer(
    daemon: Client, twilio: FakeTwilio, caplog: pytest.LogCaptureFixture
) -> None:
    """Twilio retries a webhook whose answer failed or came late: the retry, even while
    the first is being answered, acts on nothing and gets the first answer, logged as info
    (a retry, not an attack)."""
    await first_incident_paged(daemon, twilio)
    inbound = public(daemon, INBOUND_SMS_PATH)
    sid = "SM" + "cd" * 16
    with caplog.at_level(logging.INFO, logger="responder.twilio"):
        answers = await asyncio.gather(
            *(
                twilio.send_inbound_sms(
                    inbound, "+15551230001", "+15550000000", "RES", message_sid=sid
                )
                for _ in range(3)
            )
        )
    assert {a.status for a in answers} == {200}
    assert len({a.text for a in answers}) == 1, [a.text for a in answers]
    assert "Resolved #1" in answers[0].text, answers[0].text
    doc = await incident(daemon)
    assert [e["kind"] for e in doc["timeline"]].count("resolved") == 1
    repeats = [r for r in caplog.records if "posted again" in r.getMessage()]
    assert [r.levelno for r in repeats] == [logging.INFO, logging.INFO]


async def test_an_ack_all_cut_off_part_way_is_finished_by_twilios_retry(
    daemon: Client, twilio: FakeTwilio, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'ACK ALL' acknowledges one incident per write. The database fails after the first
    (as a crash there would cut it): Twilio posts the reply again, and the retry must finish
    the rest. Each write recorded the reply as taken, so the retry was ignored and #2 stayed
    unacknowledged with nobody told (crash review). Only the last write records it now; the
    incident acknowledged already is simply not asked again."""
    await first_incident_paged(daemon, twilio)
    await post(daemon, webhook(alert("DiskFull", instance="db-1"), group='{}:{x="2"}'))
    clock.advance(timedelta(minutes=1))  # past alice's rate limit: #2's SMS goes too
    await eventually(lambda: _true(len(twilio.sent_sms("+15551230001")) == 2), "#2 paged")
    _second_transition_fails(daemon, monkeypatch)
    inbound, sid = public(daemon, INBOUND_SMS_PATH), "SM" + "ef" * 16
    first = await twilio.send_inbound_sms(
        inbound, "+15551230001", "+15550000000", "ACK ALL", message_sid=sid
    )
    assert "cannot reach its database" in first.text, first.text
    states = [(await incident(daemon, n))["state"] for n in (1, 2)]
    assert sorted(states) == ["acknowledged", "triggered"]  # one of the two
    left = 1 + states.index("triggered")
    retry = await twilio.send_inbound_sms(
        inbound, "+15551230001", "+15550000000", "ACK ALL", message_sid=sid
    )
    assert f"Acknowledged #{left}" in retry.text, retry.text
    assert [(await incident(daemon, n))["state"] for n in (1, 2)] == ["acknowledged"] * 2


# The team phone's number is ops-desk's and alice's (she carries it): ops-desk, first in the
# file, is paged for disks, alice for the rest.
SHARED_PHONE_CONTACTS = """
contacts:
  ops-desk: {sms: "+15551230001"}
  alice: {sms: "+15551230001"}
  bob: {sms: "+15551230002"}
escalation_policies:
  standard:
    levels:
      - targets: [alice]
  disks:
    levels:
      - targets: [ops-desk]
incidents:
  default_policy: standard
"""
DISK_RULES = """
rules:
  - name: disk
    matchers: ['alertname="DiskFull"']
    severity: P2
    category: availability
    policy: disks
"""


async def test_a_reply_from_a_shared_number_acts_as_the_contact_that_was_paged(
    start: Starter, twilio: FakeTwilio
) -> None:
    """Two contacts share a phone. #1 paged alice, the second of them in the file: her
    'ACK 1' acknowledges it as her (it answered "#1 was not paged to you", the number
    taken for ops-desk's alone), and 'ACK ALL' then takes #2, paged to ops-desk, as
    ops-desk: each incident records the contact its page went to."""
    daemon = await start(SHARED_PHONE_CONTACTS, DISK_RULES)
    await post(daemon, webhook(alert("TargetDown", instance="web-1:9100")))
    await post(daemon, webhook(alert("DiskFull", instance="db-1"), group='{}:{x="2"}'))
    await eventually(lambda: _true(len(twilio.sent_sms("+15551230001")) == 2), "both SMS")
    inbound = public(daemon, INBOUND_SMS_PATH)
    answer = await twilio.send_inbound_sms(inbound, "+15551230001", "+15550000000", "ACK 1")
    assert "Acknowledged #1" in answer.text, answer.text
    answer = await twilio.send_inbound_sms(inbound, "+15551230001", "+15550000000", "ACK ALL")
    assert "Acknowledged #2" in answer.text, answer.text
    for number, contact in ((1, "alice"), (2, "ops-desk")):
        doc = await incident(daemon, number)
        assert (doc["state"], doc["acknowledgedBy"]) == ("acknowledged", contact)
        ack = next(e for e in doc["timeline"] if e["kind"] == "acknowledged")
        assert (ack["actor"], ack["via"]) == (contact, "sms")


async def test_a_reassigned_contact_who_acknowledges_is_not_called_afterwards(
    daemon: Client, twilio: FakeTwilio, clock: FakeClock
) -> None:
    """bob hands #1 to alice: her rules text her now and call 5 minutes later. She answers
    the text; the call must not come. A resolved incident may get an owner, but nobody is
    woken for it (escalation review, stop 13)."""
    await post(daemon, webhook(alert("DiskFull", instance="db-1")))
    answer = await daemon.post("/api/v1/incidents/1/acknowledge", json={"by": "bob"}, headers=AUTH)
    assert answer.status == 200
    answer = await daemon.post(
        "/api/v1/incidents/1/reassign", json={"by": "bob", "to": "alice"}, headers=AUTH
    )
    assert answer.status == 200
    reassigned = [p for p in (await incident(daemon))["pages"] if p["step"].startswith("A")]
    assert sorted(p["channel"] for p in reassigned) == ["sms", "voice"]

    async def texted() -> bool:
        return len(twilio.sent_sms("+15551230001")) == 1

    await eventually(texted, "alice's SMS of the reassignment")
    inbound = public(daemon, INBOUND_SMS_PATH)
    await twilio.send_inbound_sms(inbound, "+15551230001", "+15550000000", "ACK 1")
    clock.advance(timedelta(minutes=6))
    await asyncio.sleep(0.1)
    pages = (await incident(daemon))["pages"]
    voice = [p["state"] for p in pages if p["channel"] == "voice" and p["step"].startswith("A")]
    assert voice == ["cancelled"]
    assert twilio.calls("+15551230001") == []
    resolved = await daemon.post("/api/v1/incidents/1/resolve", json={"by": "bob"}, headers=AUTH)
    assert resolved.status == 200
    answer = await daemon.post(
        "/api/v1/incidents/1/reassign", json={"by": "carol", "to": "alice"}, headers=AUTH
    )
    assert answer.status == 200
    doc = await incident(daemon)
    assert doc["assignee"] == "alice"
    assert len([p for p in doc["pages"] if p["step"].startswith("A")]) == 2  # the first two


async def test_voice_keypress_acknowledges(
    daemon: Client, twilio: FakeTwilio, clock: FakeClock
) -> None:
    await first_incident_paged(daemon, twilio)
    clock.advance(timedelta(minutes=5))
    await eventually(lambda: _true(len(twilio.calls("+15551230001")) == 1), "voice call")
    call = twilio.calls("+15551230001")[0]
    answer = await twilio.send_keypress(call.sid, "1")
    assert answer.status == 200
    assert "acknowledged" in answer.text
    doc = await incident(daemon)
    ack = next(e for e in doc["timeline"] if e["kind"] == "acknowledged")
    assert (ack["actor"], ack["via"]) == ("alice", "voice")


async def test_a_replayed_keypress_acts_on_nothing(
    daemon: Client, twilio: FakeTwilio, clock: FakeClock
) -> None:
    """A call posts one keypress: its signed request posted again, after alice took the
    incident back, must not acknowledge it again as her."""
    await first_incident_paged(daemon, twilio)
    clock.advance(timedelta(minutes=5))
    await eventually(lambda: _true(len(twilio.calls("+15551230001")) == 1), "voice call")
    call = twilio.calls("+15551230001")[0]
    answer = await twilio.send_keypress(call.sid, "1")
    assert "Incident 1 acknowledged" in answer.text, answer.text
    assert (await twilio.send_keypress(call.sid, "1")).text == answer.text  # Twilio's retry
    response = await daemon.post(
        "/api/v1/incidents/1/unacknowledge", json={"by": "alice"}, headers=AUTH
    )
    assert response.status == 200, await response.text()
    clock.advance(timedelta(minutes=5))

    replayed = await twilio.send_keypress(call.sid, "1")
    assert replayed.status == 200
    assert "acknowledged" not in replayed.text, replayed.text
    doc = await incident(daemon)
    assert doc["state"] == "triggered"
    assert [e["kind"] for e in doc["timeline"]].count("acknowledged") == 1


async def test_a_replayed_keypress_with_a_sid_that_swallowed_a_field_acts_on_nothing(
    daemon: Client, twilio: FakeTwilio, clock: FakeClock
) -> None:
    """As for SMS: a keypress whose CallSid takes in the field after it signs the same, and
    must not act again as a new request after alice took the incident back."""
    await first_incident_paged(daemon, twilio)
    clock.advance(timedelta(minutes=5))
    await eventually(lambda: _true(len(twilio.calls("+15551230001")) == 1), "voice call")
    call = twilio.calls("+15551230001")[0]
    gather = re.search(r'action="([^"]+)"', call.twiml)
    assert gather is not None, call.twiml
    url = gather.group(1).replace("&amp;", "&")
    form = {
        "AccountSid": twilio.account_sid,
        "CallSid": call.sid,
        "CallStatus": "in-progress",
        "Digits": "1",
    }
    headers = {"X-Twilio-Signature": twilio.sign(url, form)}
    path = url.removeprefix(public(daemon, ""))
    answer = await daemon.post(path, data=form, headers=headers)
    assert "Incident 1 acknowledged" in await answer.text()
    response = await daemon.post(
        "/api/v1/incidents/1/unacknowledge", json={"by": "alice"}, headers=AUTH
    )
    assert response.status == 200, await response.text()

    swallowed = {k: v for k, v in form.items() if k != "CallStatus"}
    swallowed["CallSid"] = call.sid + "CallStatusin-progress"
    assert twilio.sign(url, swallowed) == headers["X-Twilio-Signature"]
    replayed = await daemon.post(path, data=swallowed, headers=headers)
    assert replayed.status == 400, await replayed.text()
    assert (await incident(daemon))["state"] == "triggered"


async def test_undelivered_sms_fails_over_to_the_backup(
    daemon: Client, twilio: FakeTwilio, caplog: pytest.LogCaptureFixture
) -> None:
    await first_incident_paged(daemon, twilio)
    sid = twilio.sent_sms("+15551230001")[0].sid
    with caplog.at_level(logging.INFO, logger="responder"):
        answer = await twilio.send_status_callback(sid, "undelivered", 30003)
        assert answer.status == 204
        # Twilio's 'failed' after it (or the same callback again) changes nothing more.
        assert (await twilio.send_status_callback(sid, "failed", 30003)).status == 204
    # The operator reads why the backup was paged, once.
    [record] = [r for r in caplog.records if r.getMessage() == "SMS not delivered"]
    assert record.levelno == logging.WARNING
    assert record.fields["status"] == "undelivered"  # type: ignore[attr-defined]
    assert record.fields["error_code"] == 30003  # type: ignore[attr-defined]

    async def bob_paged() -> bool:
        return len(twilio.sent_sms("+15551230002")) == 1

    await eventually(bob_paged, "failover to bob: alice has no unused channel left in L1")
    doc = await incident(daemon)
    failed = [p for p in doc["pages"] if p["channel"] == "sms" and p["contact"] == "alice"]
    assert failed[0]["state"] == "failed"
    assert "30003" in failed[0]["error"]
    assert "failover" in [e["kind"] for e in doc["timeline"]]


async def test_a_failure_callback_that_overtakes_the_send_still_fails_over(
    daemon: Client, twilio: FakeTwilio
) -> None:
    """Twilio's answer to the send is slow, and its 'undelivered' callback arrives before
    the daemon has recorded the SID: the callback waits for the send's record, then fails
    over (Twilio sends each callback once)."""
    twilio.answer_delay = 0.5
    await first_incident_paged(daemon, twilio)
    sid = twilio.sent_sms("+15551230001")[0].sid
    answer = await twilio.send_status_callback(sid, "undelivered", 30003)
    assert answer.status == 204
    doc = await incident(daemon)
    failed = [p for p in doc["pages"] if p["channel"] == "sms" and p["contact"] == "alice"]
    assert failed[0]["state"] == "failed"

    async def bob_paged() -> bool:
        return len(twilio.sent_sms("+15551230002")) == 1

    await eventually(bob_paged, "failover to bob")


async def test_delivered_callback_marks_the_page(daemon: Client, twilio: FakeTwilio) -> None:
    await first_incident_paged(daemon, twilio)
    sid = twilio.sent_sms("+15551230001")[0].sid
    assert (await twilio.send_status_callback(sid, "delivered")).status == 204
    doc = await incident(daemon)
    sms = next(p for p in doc["pages"] if p["channel"] == "sms")
    assert sms["state"] == "delivered"


async def test_email_link_get_shows_post_acts(
    daemon: Client,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await post(daemon, webhook(alert("TargetDown", instance="web-1:9100")))
    clock.advance(timedelta(minutes=15))  # level 2: bob, who has email in his default rules
    await eventually(lambda: _true(len(smtp.messages) == 1), "email to bob")
    body = smtp.messages[0].message.get_body(("plain",))
    assert body is not None
    match = re.search(r"(http://\S+/ack/\S+)", body.get_content())
    assert match is not None
    link = match.group(1).replace(public(daemon, ""), "")
    shown = await daemon.get(link)
    assert shown.status == 200
    page = await shown.text()
    assert "Acknowledge" in page
    assert "bob" in page
    assert (await incident(daemon))["state"] == "triggered"  # a GET never acts
    acted = await daemon.post(link, data={"action": "acknowledge"})
    assert acted.status == 200
    doc = await incident(daemon)
    assert (doc["state"], doc["acknowledgedBy"]) == ("acknowledged", "bob")
    # Unacknowledged (a new episode of the same trigger): bob's link still acts.
    again = await daemon.post(
        "/api/v1/incidents/1/unacknowledge", json={"by": "alice"}, headers=AUTH
    )
    assert again.status == 200
    retaken = await daemon.post(link, data={"action": "acknowledge"})
    assert retaken.status == 200
    assert (await incident(daemon))["state"] == "acknowledged"
    # Resolved and fired again (a new trigger): bob may not have been paged for it.
    await post(daemon, webhook(alert("TargetDown", status="resolved", instance="web-1:9100")))
    refired = alert("TargetDown", starts="2026-01-05T09:30:00Z", instance="web-1:9100")
    await post(daemon, webhook(refired))
    assert (await incident(daemon))["episode"] > 2
    replayed = await daemon.post(link, data={"action": "acknowledge"})
    assert replayed.status == 403
    assert "fired again" in await replayed.text()
    assert (await incident(daemon))["state"] == "triggered"
    tampered = link[:-3] + ("AAA" if not link.endswith("AAA") else "BBB")
    assert (await daemon.post(tampered, data={"action": "resolve"})).status == 403
    # A stranger's large body is not read: the token is checked first, forms are small.
    huge = {"action": "resolve", "pad": "x" * 200_000}
    assert (await daemon.post(tampered, data=huge)).status == 403
    assert (await daemon.post(link, data=huge)).status == 413
    # No body and no Content-Length (curl -X POST): no action chosen, not a body too large.
    reader, writer = await asyncio.open_connection(daemon.server.host, daemon.server.port)
    writer.write(f"POST {link} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"Unknown action" in answer
    inbound = public(daemon, INBOUND_SMS_PATH).replace(public(daemon, ""), "")
    assert (await daemon.post(inbound, data=huge)).status == 413
    # A form trickled slower than the body deadline (unsigned, so read before any check).
    monkeypatch.setattr(ingest, "BODY_TIMEOUT_S", 0.2)
    form = b"From=%2B15551230001&Body=ACK"
    kind = {"Content-Type": "application/x-www-form-urlencoded"}
    answer = await send_slowly(daemon, inbound, kind, form, 4, 0.1)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    clock.advance(timedelta(hours=25))
    expired = await daemon.post(link, data={"action": "resolve"})
    assert expired.status == 403
    assert "expired" in await expired.text()


RAISE_RULES = """
rules:
  - name: low-thing
    matchers: ['alertname="LowThing"']
    severity: P3
    category: availability
  - name: big-thing
    matchers: ['alertname="BigThing"']
    severity: P1
    category: availability
    policy: urgent
"""


async def test_an_email_link_still_acts_after_a_worse_alert_changed_the_policy(
    start: Starter, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """Bob's email at 15 minutes links to the incident. A P1 alert whose rule names
    'urgent' joins: the escalation starts over under 'urgent' (a new episode), but the
    incident is the same problem bob was paged for, and his link acknowledges it
    (escalation review: the raise ended every link sent before it)."""
    urgent = "  urgent:\n    levels:\n      - targets: [alice]\n"
    contacts = CONTACTS.replace("incidents:", urgent + "incidents:")
    daemon = await start(contacts, RAISE_RULES)
    low = alert("LowThing", instance="web-1:9100")
    await post(daemon, webhook(low))
    clock.advance(timedelta(minutes=15))
    await eventually(lambda: _true(len(smtp.messages) == 1), "email to bob")
    body = smtp.messages[0].message.get_body(("plain",))
    assert body is not None
    match = re.search(r"(http://\S+/ack/\S+)", body.get_content())
    assert match is not None
    link = match.group(1).replace(public(daemon, ""), "")
    await post(daemon, webhook(low, alert("BigThing", instance="web-1:9100")))
    doc = await incident(daemon)
    assert (doc["policy"], doc["episode"], doc["state"]) == ("urgent", 2, "triggered")
    acted = await daemon.post(link, data={"action": "acknowledge"})
    assert acted.status == 200, await acted.text()
    doc = await incident(daemon)
    assert (doc["state"], doc["acknowledgedBy"]) == ("acknowledged", "bob")


def test_tokens_are_bound_to_one_incident() -> None:
    secret = Secret("s3cret", "test")
    now = datetime(2026, 1, 1, tzinfo=UTC)
    token = make_token(secret, 7, 2, "alice", now + timedelta(hours=1))
    claim = read_token(secret, token, now)
    assert (claim.incident_id, claim.episode, claim.contact) == (7, 2, "alice")
    with pytest.raises(LinkError):
        read_token(Secret("other", "test"), token, now)
    _payload, signature = token.split(".")
    forged_payload = make_token(secret, 8, 2, "alice", now).split(".")[0]
    with pytest.raises(LinkError):
        read_token(secret, f"{forged_payload}.{signature}", now)
    with pytest.raises(LinkError):
        read_token(secret, "garbage", now)


def test_a_token_names_its_trigger_to_the_microsecond() -> None:
    """A link names the trigger it was sent for (a re-fire may come within the second of
    the resolve); one made before it was named (a day at most) reads without it."""
    secret = Secret("s3cret", "test")
    now = datetime(2026, 1, 1, tzinfo=UTC)
    started = datetime(2025, 12, 31, 23, 59, 58, 123456, tzinfo=UTC)
    token = make_token(secret, 7, 3, "a:b", now + timedelta(hours=1), started)
    claim = read_token(secret, token, now)
    assert (claim.episode, claim.contact, claim.trigger) == (3, "a:b", started)
    older = read_token(secret, make_token(secret, 7, 3, "a:b", now + timedelta(hours=1)), now)
    assert (older.episode, older.trigger) == (3, None)


async def test_callbacks_refused_without_twilio(make_client: Any, tmp_path: Path) -> None:
    client = await make_client(write_config(tmp_path))
    response = await client.post(INBOUND_SMS_PATH, data={"From": "+1", "Body": "ACK 1"})
    assert response.status == 403
    assert (await client.get("/api/v1/incidents", headers=AUTH)).status == 200


async def _true(value: bool) -> bool:
    await asyncio.sleep(0)
    return value


async def test_drill_pages_every_channel_and_reports_answers(
    daemon: Client, twilio: FakeTwilio, smtp: SmtpTestServer
) -> None:
    started = await daemon.post(
        "/api/v1/drills", json={"contacts": ["alice", "bob"], "by": "ops"}, headers=AUTH
    )
    assert started.status == 200, await started.text()
    drill_id = (await started.json())["data"]["id"]

    async def all_sent() -> bool:
        return len(twilio.sent_sms()) == 2 and len(twilio.calls()) == 1 and len(smtp.messages) == 2

    await eventually(all_sent, "test pages on every channel of both contacts")
    assert all("TEST" in r.body for r in twilio.sent_sms())
    answer = await twilio.send_inbound_sms(
        public(daemon, INBOUND_SMS_PATH), "+15551230001", "+15550000000", f"ACK {drill_id}"
    )
    assert "Acknowledged" in answer.text
    acked = await daemon.post(
        f"/api/v1/incidents/{drill_id}/acknowledge", json={"by": "bob"}, headers=AUTH
    )
    assert acked.status == 200
    result = (await (await daemon.get(f"/api/v1/drills/{drill_id}", headers=AUTH)).json())["data"]
    assert (result["answered"], result["total"]) == (2, 2)
    assert result["contacts"]["alice"]["answer"]["via"] == "sms"
    assert result["contacts"]["bob"]["answer"]["via"] == "api"
    doc = await incident(daemon, drill_id)
    assert {p["step"] for p in doc["pages"]} == {"D"}  # a drill never escalates
    # Drills stay out of the time to acknowledge, as out of the report's figures.
    metrics = await (await daemon.get("/metrics")).text()
    counts = [
        s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name == "responder_incident_time_to_acknowledge_seconds_count"
    ]
    assert counts
    assert not any(counts)
    # Nor are the answers work done on incidents: a dashboard of acknowledgements by door
    # must not rise with every drill.
    actions = [
        s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name == "responder_incident_actions_total"
    ]
    assert not any(actions)
    listed = (await (await daemon.get("/api/v1/drills", headers=AUTH)).json())["data"]
    assert [d["id"] for d in listed] == [drill_id]
    bad = await daemon.post("/api/v1/drills", json={"contacts": ["mallory"]}, headers=AUTH)
    assert bad.status == 400


async def test_a_drill_message_does_not_hold_back_a_real_page(
    daemon: Client, twilio: FakeTwilio
) -> None:
    """A page of a real incident right after a drill's test SMS to the same phone goes at
    once: the drill's message does not count against the page's rate limit (1 a minute),
    or a drill would delay a real page by up to a minute (KPI review). The clock stands
    still here: a held page would never go."""
    started = await daemon.post(
        "/api/v1/drills", json={"contacts": ["alice"], "by": "ops"}, headers=AUTH
    )
    assert started.status == 200, await started.text()
    await eventually(lambda: _true(len(twilio.sent_sms("+15551230001")) == 1), "the drill SMS")
    await post(daemon, webhook(alert("TargetDown", instance="web-1:9100")))
    await eventually(lambda: _true(len(twilio.sent_sms("+15551230001")) == 2), "the real page")
    assert "TEST" not in twilio.sent_sms("+15551230001")[1].body


async def test_a_drill_shows_a_channel_down_as_failed_at_once(
    daemon: Client, twilio: FakeTwilio, smtp: SmtpTestServer
) -> None:
    """A drill is there to find a channel that does not work: a refused Twilio token fails
    its test SMS now (not queued for an hour, and sent after the drill, once fixed)."""
    twilio.auth_token = "0" * 32  # Twilio knows another token than ours
    started = await daemon.post("/api/v1/drills", json={"contacts": ["alice"]}, headers=AUTH)
    drill_id = (await started.json())["data"]["id"]

    async def alices_sms_failed() -> bool:
        pages = (await incident(daemon, drill_id))["pages"]
        return [p["state"] for p in pages if p["contact"] == "alice"] == ["failed"] * 2 + ["sent"]

    await eventually(alices_sms_failed, "the test SMS and call failed, the email went")
    pages = (await incident(daemon, drill_id))["pages"]
    alices = [p for p in pages if p["contact"] == "alice" and p["channel"] != "email"]
    assert all("20003" in p["error"] for p in alices), alices
    assert ["alice@example.com"] in [m.rcpt_tos for m in smtp.messages]


async def test_an_undelivered_bundle_fails_over_every_incident_in_it(
    daemon: Client, twilio: FakeTwilio, clock: FakeClock
) -> None:
    """A bundle is one SMS for several incidents' pages: its 'undelivered' callback fails
    each of them over, not only the newest."""
    await first_incident_paged(daemon, twilio)
    for n in (2, 3):
        await post(
            daemon, webhook(alert("DiskFull", instance=f"db-{n}"), group=f'{{}}:{{x="{n}"}}')
        )

    async def both_held() -> bool:
        held = []
        for number in (2, 3):
            pages = (await incident(daemon, number))["pages"]
            held += [p for p in pages if p["channel"] == "sms" and "rate" in (p["error"] or "")]
        return len(held) == 2

    await eventually(both_held, "both SMS pages held back by the rate limit")
    clock.advance(timedelta(minutes=1))
    await eventually(lambda: _true(len(twilio.sent_sms("+15551230001")) == 2), "the bundle")
    bundle = twilio.sent_sms("+15551230001")[1]
    assert bundle.body.startswith("2 new")
    answer = await twilio.send_status_callback(bundle.sid, "undelivered", 30003)
    assert answer.status == 204
    for number in (2, 3):
        pages = (await incident(daemon, number))["pages"]
        alice = [p for p in pages if (p["contact"], p["channel"]) == ("alice", "sms")]
        assert [p["state"] for p in alice] == ["failed"], number
        assert any(p["contact"] == "bob" for p in pages), f"incident {number} not failed over"


async def test_a_keypress_on_a_bundled_call_acknowledges_every_incident_in_it(
    daemon: Client, twilio: FakeTwilio, clock: FakeClock
) -> None:
    """A call that told of several incidents offers "press 1" for them all (review, stop
    12: the key named a bundle, which the keypress door did not know)."""
    call = await _one_call_for_two_incidents(daemon, twilio, clock)
    answer = await twilio.send_keypress(call.sid, "1")
    assert answer.status == 200
    assert "Incidents 1, 2 acknowledged" in answer.text
    for number in (1, 2):
        assert (await incident(daemon, number))["state"] == "acknowledged"


async def test_a_keypress_cut_off_part_way_through_a_bundled_call_is_finished_by_the_retry(
    daemon: Client, twilio: FakeTwilio, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A keypress acknowledges a bundled call's incidents one write each. The database
    fails after the first (as a crash there would cut it): Twilio's retry must finish the
    rest, as it does for an 'ACK ALL'. Each write recorded the CallSid as taken, so the
    retry was taken for a repeat and the other incident stayed unacknowledged, escalating
    past the person who pressed 1."""
    call = await _one_call_for_two_incidents(daemon, twilio, clock)
    _second_transition_fails(daemon, monkeypatch)
    first = await twilio.send_keypress(call.sid, "1")
    assert "cannot reach its database" in first.text, first.text
    assert [(await incident(daemon, n))["state"] for n in (1, 2)] == [
        "acknowledged",
        "triggered",
    ]
    retry = await twilio.send_keypress(call.sid, "1")
    assert "Incidents 1, 2 acknowledged" in retry.text, retry.text
    assert [(await incident(daemon, n))["state"] for n in (1, 2)] == ["acknowledged"] * 2
    # Taken now: a replay acts on nothing.
    response = await daemon.post(
        "/api/v1/incidents/2/unacknowledge", json={"by": "alice"}, headers=AUTH
    )
    assert response.status == 200, await response.text()
    await twilio.send_keypress(call.sid, "1")
    assert (await incident(daemon, 2))["state"] == "triggered"


async def test_a_webhook_page_carries_the_acknowledge_link(
    aiohttp_client: Callable[..., Awaitable[Client]],
    tmp_path: Path,
    clock: FakeClock,
) -> None:
    """With server.public_url, a webhook page carries the signed link in data.ack_url (the
    docs said so; it did not: review of stop 14), and the link opens the ack page."""
    bodies: list[dict[str, Any]] = []

    async def receive(request: web.Request) -> web.Response:
        bodies.append(await request.json())
        return web.Response(text="ok")

    receiver = web.Application()
    receiver.router.add_post("/hook", receive)
    runner = web.AppRunner(receiver)
    await runner.setup()
    hook_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", hook_port).start()
    try:
        port = free_port()
        config = write_config(
            tmp_path,
            f"""
server:
  public_url: http://127.0.0.1:{port}
channels:
  webhook: {{}}
contacts:
  alice: {{webhook: "http://127.0.0.1:{hook_port}/hook"}}
escalation_policies:
  standard:
    levels:
      - targets: [alice]
incidents:
  default_policy: standard
""",
        )
        app = build_app(load_snapshot(config), clock=clock, registry=CollectorRegistry())
        client = await aiohttp_client(app, server_kwargs={"port": port})
        await post(client, webhook(alert("TargetDown", instance="web-1:9100")))

        async def paged() -> bool:
            return len(bodies) == 1

        await eventually(paged, "the webhook page")
        link = bodies[0]["data"]["ack_url"]
        assert link.startswith(f"http://127.0.0.1:{port}/ack/")
        page = await client.get(link.removeprefix(f"http://127.0.0.1:{port}"))
        assert page.status == 200
        assert "Acknowledge" in await page.text()
    finally:
        await runner.cleanup()


async def test_odd_input_to_the_doors_is_a_4xx_never_a_500(
    daemon: Client, twilio: FakeTwilio
) -> None:
    """What a stranger can send to the public doors is refused before it is parsed, and
    what an API client can send is a 4xx that says why: never a 500 and its traceback."""
    inbound = public(daemon, INBOUND_SMS_PATH).replace(public(daemon, ""), "")
    form = "application/x-www-form-urlencoded"
    # A small gzip body would inflate to megabytes before the signature is checked.
    bomb = gzip.compress(b"From=%2B1&Body=" + b"A" * 5_000_000)
    for headers, body, status in (
        ({"Content-Type": form, "Content-Encoding": "gzip"}, bomb, 415),
        ({"Content-Type": "multipart/form-data"}, b"x", 415),
        ({"Content-Type": f"{form}; charset=bogus"}, b"From=x", 415),
        ({"Content-Type": form}, b"Body=\xff\xfe", 400),
        ({"Content-Type": form}, b"&".join([b"a=1"] * 1000), 400),
    ):
        answer = await daemon.post(inbound, data=body, headers=headers)
        assert answer.status == status, (headers, await answer.text())
    too_big = "9" * 30
    for method, path in (
        ("GET", f"/api/v1/incidents/{too_big}"),
        ("POST", f"/api/v1/incidents/{too_big}/acknowledge"),
        ("GET", f"/api/v1/drills/{too_big}"),
        ("GET", f"/api/v1/incidents/{'9' * 5000}"),
    ):
        answer = await daemon.request(method, path, headers=AUTH)
        assert answer.status == 404, (path, await answer.text())
    nested = b"[" * 100_000 + b"]" * 100_000
    for path in ("/api/v1/incidents/1/note", "/api/v1/actions/pause", "/api/v1/drills"):
        answer = await daemon.post(path, data=nested, headers=AUTH)
        assert answer.status == 400, (path, await answer.text())
        assert (await answer.json())["error"] == "body: malformed JSON"


async def test_the_sms_reply_shows_the_title_on_one_line(
    daemon: Client, twilio: FakeTwilio
) -> None:
    """An alert's name is the sender's text: a line break in it must not make the reply
    read as if it said something else (pages clean it the same way)."""
    await post(daemon, webhook(alert("DiskFull\nFAKE: all clear\u202e", instance="web-1")))
    await eventually(lambda: _true(len(twilio.sent_sms("+15551230001")) == 1), "SMS to alice")
    answer = await twilio.send_inbound_sms(
        public(daemon, INBOUND_SMS_PATH), "+15551230001", "+15550000000", "ACK 1"
    )
    assert "Acknowledged #1 DiskFull FAKE: all clear on web-1." in answer.text, answer.text
    runtime = daemon.app[RUNTIME]
    secret = link_secret(runtime.started_with.config.state_dir)
    link = make_token(secret, 1, 1, "alice", runtime.clock.now() + timedelta(hours=1))
    page = await (await daemon.get(f"/ack/{link}")).text()
    assert "DiskFull FAKE: all clear on web-1<" in page
    assert "\u202e" not in page


async def test_a_reassignment_during_a_snooze_reaches_the_new_owner(
    daemon: Client, twilio: FakeTwilio, clock: FakeClock
) -> None:
    """Snoozed, then handed to alice, who was texted a moment ago: her text waits for her
    rate limit and then goes; the snooze silences the escalation, not the reassignment
    (new-user review, stop 16: it was cancelled, "incident snoozed")."""
    await first_incident_paged(daemon, twilio)
    for action, body in (
        ("snooze", {"by": "bob", "for": "2h"}),
        ("reassign", {"by": "bob", "to": "alice"}),
    ):
        answer = await daemon.post(f"/api/v1/incidents/1/{action}", json=body, headers=AUTH)
        assert answer.status == 200, await answer.text()

    async def held() -> bool:
        pages = (await incident(daemon))["pages"]
        sms = [p for p in pages if p["step"].startswith("A") and p["channel"] == "sms"]
        return [(p["state"], (p["error"] or "")[:12]) for p in sms] == [("queued", "rate limited")]

    await eventually(held, "the reassignment's SMS held by alice's rate limit")
    clock.advance(timedelta(minutes=2))
    await eventually(lambda: _true(len(twilio.sent_sms("+15551230001")) == 2), "alice's 2nd SMS")


async def test_a_reassignment_during_a_snooze_fails_over_like_any_page(
    daemon: Client, twilio: FakeTwilio, clock: FakeClock
) -> None:
    """Handed to alice while snoozed; her number is refused for good: her reassignment page
    fails over down her chain as it would on a triggered incident (escalation review, stop
    16: nobody else was woken)."""
    await first_incident_paged(daemon, twilio)
    twilio.fail_number("+15551230001", Fault.INVALID_NUMBER)
    for action, body in (
        ("snooze", {"by": "bob", "for": "2h"}),
        ("reassign", {"by": "bob", "to": "alice"}),
    ):
        answer = await daemon.post(f"/api/v1/incidents/1/{action}", json=body, headers=AUTH)
        assert answer.status == 200, await answer.text()
    clock.advance(timedelta(minutes=2))  # past alice's rate limit

    async def failed_over() -> bool:
        return "failover" in [e["kind"] for e in (await incident(daemon))["timeline"]]

    await eventually(failed_over, "the reassignment's SMS failed over")


async def test_refused_twilio_callbacks_are_logged_once_a_minute(
    daemon: Client, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Twilio doors are public and answer anyone: one warning per refused request let a
    stranger write the log at the rate they send (under systemd, journald's per-service rate
    limit then drops the daemon's other lines too: 'webhook not stored', 'page failed').
    Refusals are logged once a minute, with how many were not."""
    loop_time = [1000.0]
    monkeypatch.setattr(twilio_doors, "_now", lambda: loop_time[0])
    form = {"From": "+15551230001", "Body": "ACK ALL"}
    with caplog.at_level(logging.WARNING, logger="responder.twilio"):
        for path in (INBOUND_SMS_PATH, STATUS_CALLBACK_PATH) * 100:
            answer = await daemon.post(path, data=form, headers={"X-Twilio-Signature": "x"})
            assert answer.status == 403
        loop_time[0] += twilio_doors.REFUSED_LOG_EVERY_S
        answer = await daemon.post(INBOUND_SMS_PATH, data=form)
        assert answer.status == 403
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 2, [r.getMessage() for r in refused]
    assert refused[1].fields["not_logged_since"] == 199  # type: ignore[attr-defined]

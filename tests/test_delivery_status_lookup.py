"""An SMS or a call whose final status callback never came is looked up at Twilio: the real
twilio library against FakeTwilio, which records a status without posting its callback (the
daemon was down, and Twilio does not post a callback again)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from responder.clock import FakeClock
from responder.reconcile import CALL_CHECK_AFTER, CHECK_AFTER, GIVE_UP_AFTER
from responder.testing import FakeTwilio, Fault
from tests.test_ack_doors import Client, Starter, _true, first_incident_paged, smtp, start, twilio
from tests.test_escalation_story import alert, eventually, incident, post, webhook

__all__ = ["smtp", "start", "twilio"]


async def alice_sms(client: Client) -> dict[str, object]:
    doc = await incident(client)
    return next(p for p in doc["pages"] if (p["contact"], p["channel"]) == ("alice", "sms"))


async def alice_paged(client: Client, twilio: FakeTwilio) -> str:
    """The first incident's SMS to alice, taken by Twilio and recorded sent; its SID."""
    await first_incident_paged(client, twilio)

    async def recorded() -> bool:
        return (await alice_sms(client))["state"] == "sent"

    await eventually(recorded, "alice's SMS recorded as sent")
    return twilio.sent_sms("+15551230001")[0].sid


async def test_an_sms_undelivered_while_the_daemon_was_down_fails_over_at_the_start(
    start: Starter,
    clock: FakeClock,
    twilio: FakeTwilio,
) -> None:
    """Twilio took alice's SMS; the daemon stopped; the SMS turned out undelivered and the
    callback saying so found nobody. At the start the daemon asks Twilio, and the page
    fails over to bob as the callback would have made it."""
    client = await start()
    sid = await alice_paged(client, twilio)
    await client.close()
    twilio.set_status(sid, "undelivered", 30003)
    client = await start()
    await eventually(lambda: _true(len(twilio.sent_sms("+15551230002")) == 1), "bob paged")
    page = await alice_sms(client)
    assert page["state"] == "failed"
    assert page["error"] == "undelivered (Twilio error 30003)"
    doc = await incident(client)
    assert "failover" in [e["kind"] for e in doc["timeline"]]
    assert twilio.lookups == [sid]
    assert twilio.sent_sms("+15551230001")[0].statuses == ["queued", "undelivered"]


async def test_a_lost_delivered_callback_is_looked_up_after_five_minutes_then_never_again(
    start: Starter,
    clock: FakeClock,
    twilio: FakeTwilio,
) -> None:
    """The daemon runs; alice's SMS is delivered but the callback is lost. Nobody asks
    before five minutes; then the page is marked delivered, and not asked for again."""
    client = await start()
    sid = await alice_paged(client, twilio)
    twilio.set_status(sid, "delivered")
    clock.advance(CHECK_AFTER - timedelta(seconds=30))
    await asyncio.sleep(0.2)
    assert twilio.lookups == []
    clock.advance(timedelta(seconds=40))

    async def delivered() -> bool:
        return (await alice_sms(client))["state"] == "delivered"

    await eventually(delivered, "alice's SMS marked delivered")
    for _ in range(3):
        clock.advance(timedelta(hours=1))
        await asyncio.sleep(0.05)
    assert twilio.lookups.count(sid) == 1


async def test_while_twilio_cannot_answer_the_outbox_goes_on_and_the_lookup_waits(
    start: Starter,
    clock: FakeClock,
    twilio: FakeTwilio,
) -> None:
    """Twilio's API answers 503 to the lookups after the start: the page of a new incident
    still goes out meanwhile, and the lookup, tried again a minute later, fails alice's
    page over once Twilio answers."""
    client = await start()
    sid = await alice_paged(client, twilio)
    await client.close()
    twilio.set_status(sid, "failed", 30008)
    twilio.fail_lookups(Fault.UNAVAILABLE)
    client = await start()
    await eventually(lambda: _true(twilio.lookups == [sid]), "the lookup at the start")
    await post(client, webhook(alert("DiskFull", instance="db-1"), group="other"))
    clock.advance(timedelta(minutes=1))  # alice's rate limit; the lookup fails again
    await eventually(lambda: _true(len(twilio.sent_sms("+15551230001")) == 2), "next page")
    await eventually(lambda: _true(twilio.lookups == [sid, sid]), "the lookup tried again")
    assert (await alice_sms(client))["state"] == "sent"
    twilio.fail_lookups(None)
    clock.advance(timedelta(minutes=1))
    await eventually(lambda: _true(len(twilio.sent_sms("+15551230002")) == 1), "bob paged")
    assert (await alice_sms(client))["error"] == "failed (Twilio error 30008)"


async def test_an_sms_older_than_the_bound_is_not_asked_for(
    start: Starter,
    clock: FakeClock,
    twilio: FakeTwilio,
) -> None:
    """A daemon down longer than Twilio keeps a message queued does not ask about the
    SMS it sent before: whatever became of it, it is over."""
    client = await start()
    sid = await alice_paged(client, twilio)
    await client.close()
    clock.advance(GIVE_UP_AFTER + timedelta(minutes=1))
    client = await start()
    await asyncio.sleep(0.3)
    assert sid not in twilio.lookups
    assert (await alice_sms(client))["state"] == "sent"


async def alice_called(client: Client, twilio: FakeTwilio, clock: FakeClock) -> str:
    """The first incident's call to alice (her voice page 5 minutes after the SMS), taken
    by Twilio and recorded sent; its SID."""
    await alice_paged(client, twilio)
    clock.advance(timedelta(minutes=5))
    await eventually(lambda: _true(len(twilio.calls("+15551230001")) == 1), "alice called")

    async def recorded() -> bool:
        pages = (await incident(client))["pages"]
        return [p["state"] for p in pages if p["channel"] == "voice"] == ["sent"]

    await eventually(recorded, "the call recorded as sent")
    return twilio.calls("+15551230001")[0].sid


async def test_a_lost_no_answer_callback_of_a_call_is_looked_up_and_fails_over(
    start: Starter,
    clock: FakeClock,
    twilio: FakeTwilio,
) -> None:
    """alice does not answer the call, and Twilio's no-answer callback is lost. Nobody
    asks before three minutes; then the call is looked up, the voice page fails as the
    callback would have made it, and bob is paged in alice's place."""
    client = await start()
    sid = await alice_called(client, twilio, clock)
    twilio.set_status(sid, "no-answer")
    clock.advance(CALL_CHECK_AFTER - timedelta(seconds=30))
    await asyncio.sleep(0.2)
    assert sid not in twilio.lookups
    assert twilio.sent_sms("+15551230002") == []
    clock.advance(timedelta(seconds=40))
    await eventually(lambda: _true(len(twilio.sent_sms("+15551230002")) == 1), "bob paged")
    voice = [p for p in (await incident(client))["pages"] if p["channel"] == "voice"]
    assert [(p["state"], p["error"]) for p in voice] == [("failed", "no-answer")]
    assert twilio.lookups.count(sid) == 1


async def test_a_call_that_failed_while_the_daemon_was_down_fails_over_at_the_start(
    start: Starter,
    clock: FakeClock,
    twilio: FakeTwilio,
) -> None:
    """The daemon stopped during alice's call; the line was busy and the callback saying
    so found nobody. At the start the call is looked up and bob is paged."""
    client = await start()
    sid = await alice_called(client, twilio, clock)
    await client.close()
    twilio.set_status(sid, "busy")
    client = await start()
    await eventually(lambda: _true(len(twilio.sent_sms("+15551230002")) == 1), "bob paged")
    assert sid in twilio.lookups
    voice = [p for p in (await incident(client))["pages"] if p["channel"] == "voice"]
    assert [(p["state"], p["error"]) for p in voice] == [("failed", "busy")]

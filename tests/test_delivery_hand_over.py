"""An acknowledgement, snooze or resolve that lands while a page is being made (claimed, its
limits checked, its message composed, not yet handed to its channel) stops it: the
hand-over cancels what lost its point and the outbox sends only what was handed over, a
bundle made again without the pages it lost. Status updates and recovery notices that
still have a point go. The real app with a fake clock, the fake Twilio and aiosmtpd; the
change lands from inside ``Store.hand_over``, just before the real one."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from responder.clock import FakeClock
from responder.incident import PageKind
from responder.runtime import RUNTIME
from responder.testing import FakeTwilio, SmtpTestServer
from tests.conftest import AUTH, ClientFactory
from tests.test_delivery import config, smtp, twilio
from tests.test_escalation_story import alert, eventually, incident, post, webhook

__all__ = ["smtp", "twilio"]

ALICE = "+15551230001"


def _before_hand_over(
    client: Any, change: Callable[[Sequence[int]], Awaitable[bool]]
) -> list[list[int]]:
    """Runs ``change`` (with the page ids) before each hand-over until it returns True,
    then no more; returns the ids of every hand-over asked for, in order."""
    store = client.app[RUNTIME].store
    real = store.hand_over
    asked: list[list[int]] = []
    done = False

    async def racing(page_ids: Sequence[int], now: datetime) -> list[int]:
        nonlocal done
        asked.append(list(page_ids))
        if not done:
            done = await change(page_ids)
        result: list[int] = await real(page_ids, now)
        return result

    store.hand_over = racing
    return asked


async def _act(client: Any, number: int, action: str, by: str) -> None:
    response = await client.post(
        f"/api/v1/incidents/{number}/{action}", json={"by": by}, headers=AUTH
    )
    assert response.status == 200, await response.text()


async def _pages(client: Any, number: int) -> list[tuple[str, str, str, str, str | None]]:
    return sorted(
        (p["kind"], p["contact"], p["channel"], p["state"], p["error"])
        for p in (await incident(client, number))["pages"]
    )


async def _held(client: Any, *numbers: int) -> bool:
    """Every page of the incidents waits in the queue for a rate limit."""
    pages = [p for n in numbers for p in await _pages(client, n)]
    return all(p[3] == "queued" and (p[4] or "").startswith("rate limited") for p in pages)


async def _time_passes(clock: FakeClock, minutes: int) -> None:
    for _ in range(minutes):
        clock.advance(timedelta(minutes=1))
        await asyncio.sleep(0.05)


async def test_an_acknowledgement_while_the_page_is_made_pages_nobody(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
) -> None:
    """bob acknowledges the moment alice's first page is about to go: neither her SMS nor
    her email goes out (before, both did, asking an answer already given), and nobody is
    paged in her place."""
    client = await make_client(config(tmp_path, twilio, smtp))

    async def ack(page_ids: Sequence[int]) -> bool:
        await _act(client, 1, "acknowledge", "bob")
        return True

    asked = _before_hand_over(client, ack)
    await post(client, webhook(alert("TargetDown", instance="web-1")))

    async def both_cancelled() -> bool:
        return [p[3] for p in await _pages(client, 1)] == ["cancelled", "cancelled"]

    await eventually(both_cancelled, "alice's SMS and email cancelled at their hand-over")
    await _time_passes(clock, 10)  # past any retry or failover
    assert twilio.sent_sms() == []
    assert smtp.messages == []
    assert await _pages(client, 1) == [
        ("page", "alice", "email", "cancelled", "incident acknowledged"),
        ("page", "alice", "sms", "cancelled", "incident acknowledged"),
    ]
    assert len(asked) == 2  # one hand-over each, nothing made again
    registry = client.app[RUNTIME].metrics.registry
    for channel in ("sms", "email"):
        labels = {"channel": channel, "outcome": "cancelled"}
        assert registry.get_sample_value("responder_pages_total", labels) == 1, channel


async def test_a_bundle_that_lost_a_page_goes_without_it(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
) -> None:
    """alice's pages for incidents 2 and 3 wait for her rate limit and go as one bundle;
    incident 2 is acknowledged while the bundle is made. The message is made again for
    incident 3 alone: she is not asked about 2, which the bundle's "ACK ALL" would then
    answer for her."""
    client = await make_client(config(tmp_path, twilio, smtp))
    await post(client, webhook(alert("TargetDown", instance="web-1"), group="g1"))
    await eventually(lambda: _true(len(twilio.sent_sms(ALICE)) == 1), "incident 1's SMS")
    for n in (2, 3):
        await post(client, webhook(alert("TargetDown", instance=f"web-{n}"), group=f"g{n}"))

    async def ack_2(page_ids: Sequence[int]) -> bool:
        if len(page_ids) < 2:
            return False
        await _act(client, 2, "acknowledge", "bob")
        return True

    await eventually(lambda: _held(client, 2, 3), "incidents 2 and 3 held for alice's limits")
    asked = _before_hand_over(client, ack_2)
    clock.advance(timedelta(minutes=1))
    await eventually(lambda: _true(len(twilio.sent_sms(ALICE)) == 2), "the second SMS")
    text = twilio.sent_sms(ALICE)[1].body
    assert text.startswith("[P2] #3 "), text  # incident 3's own page, not a bundle
    assert "#2" not in text

    async def settled() -> bool:
        cancelled = [p[3] for p in await _pages(client, 2)] == ["cancelled", "cancelled"]
        return cancelled and [p[3] for p in await _pages(client, 3)] == ["sent", "sent"]

    await eventually(settled, "incident 2's SMS and email cancelled, 3's sent")
    # Each bundle handed over once as made, refused, then made again for incident 3 alone.
    assert sorted(len(ids) for ids in asked) == [1, 1, 2, 2]
    assert len(smtp.messages) == 2
    await _time_passes(clock, 5)
    assert len(twilio.sent_sms(ALICE)) == 2
    assert len(smtp.messages) == 2
    subject = str(smtp.messages[1].message["Subject"])
    assert "#3 " in subject, subject
    assert "#2" not in subject, subject


async def test_a_recovery_notice_still_goes_when_its_bundle_partner_resolves(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
) -> None:
    """Incident 1 resolved after paging alice; its recovery notice waits for her rate
    limit with incident 2's page, and incident 2 is resolved while their bundle is made.
    incident 1's "RESOLVED" goes, alone; incident 2's page does not, and neither does a
    recovery notice for it: it never reached her."""
    client = await make_client(config(tmp_path, twilio, smtp))
    await post(client, webhook(alert("TargetDown", instance="web-1"), group="g1"))
    await eventually(lambda: _true(len(twilio.sent_sms(ALICE)) == 1), "incident 1's SMS")
    await post(client, webhook(alert("TargetDown", instance="web-2"), group="g2"))
    await post(client, webhook(alert("TargetDown", "resolved", instance="web-1"), group="g1"))

    async def recovery_waits() -> bool:
        recoveries = [p for p in await _pages(client, 1) if p[0] == "recovery"]
        waiting = [p for p in recoveries if p[3] == "queued" and (p[4] or "").startswith("rate")]
        return len(waiting) == 2 and await _held(client, 2)

    await eventually(recovery_waits, "incident 1's recovery and 2's page held by the limits")

    async def resolve_2(page_ids: Sequence[int]) -> bool:
        if len(page_ids) < 2:
            return False
        await _act(client, 2, "resolve", "bob")
        return True

    _before_hand_over(client, resolve_2)
    clock.advance(timedelta(minutes=1))
    await eventually(lambda: _true(len(twilio.sent_sms(ALICE)) == 2), "the second SMS")
    text = twilio.sent_sms(ALICE)[1].body
    assert text.startswith("RESOLVED [P2] #1 "), text
    assert "#2" not in text
    await _time_passes(clock, 5)
    assert len(twilio.sent_sms(ALICE)) == 2
    assert [p[:4] for p in await _pages(client, 2)] == [
        ("page", "alice", "email", "cancelled"),
        ("page", "alice", "sms", "cancelled"),
    ]


STATUS_TO_ALICE = """
contacts:
  alice: {sms: "+15551230001", email: alice@example.com}
  bob: {sms: "+15551230002"}
escalation_policies:
  standard:
    levels:
      - targets: [bob]
    status_updates: {every: 1m, to: [alice]}
incidents:
  default_policy: standard
"""


async def test_a_status_update_made_while_the_incident_is_acknowledged_still_goes(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
) -> None:
    """Stakeholders get their updates while the incident is open, acknowledged or not: an
    acknowledgement while alice's first update is being made does not stop it."""
    client = await make_client(config(tmp_path, twilio, smtp, contacts=STATUS_TO_ALICE))
    store = client.app[RUNTIME].store

    async def ack_at_the_update(page_ids: Sequence[int]) -> bool:
        kinds = [(await store.get_page(i)).kind for i in page_ids]
        if PageKind.STATUS not in kinds:
            return False
        await _act(client, 1, "acknowledge", "bob")
        return True

    _before_hand_over(client, ack_at_the_update)
    await post(client, webhook(alert("TargetDown", instance="web-1")))
    await eventually(lambda: _true(len(twilio.sent_sms("+15551230002")) == 1), "bob's page")
    clock.advance(timedelta(minutes=1))
    await eventually(lambda: _true(len(twilio.sent_sms(ALICE)) == 1), "alice's update")
    assert twilio.sent_sms(ALICE)[0].body.startswith("STATUS [P2] #1 ")
    assert (await incident(client))["state"] == "acknowledged"

    async def both_sent() -> bool:
        updates = [p for p in await _pages(client, 1) if p[0] == "status"]
        return [p[3] for p in updates] == ["sent", "sent"]

    await eventually(both_sent, "alice's update sent by SMS and email")
    assert len(smtp.messages) == 1


MANAGEMENT = """
contacts:
  alice: {sms: "+15551230001"}
  bob: {sms: "+15551230002"}
  mgr: {email: mgr@example.com, backup: cto}
  cto: {email: cto@example.com}
escalation_policies:
  standard:
    levels:
      - targets: [alice]
      - after: 30m
        clock: duration
        targets: [mgr]
incidents:
  default_policy: standard
"""


async def test_a_manager_who_acknowledges_while_their_page_is_made_is_not_paged(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    twilio: FakeTwilio,
    smtp: SmtpTestServer,
) -> None:
    """bob acknowledged after 10 minutes; the management level still pages mgr at 30
    (it goes even when acknowledged), and mgr acknowledges as their email is being made
    (from the dashboard, say): it is not sent, nor passed to their backup."""
    client = await make_client(config(tmp_path, twilio, smtp, contacts=MANAGEMENT))

    async def mgr_acks(page_ids: Sequence[int]) -> bool:
        store = client.app[RUNTIME].store
        if [(await store.get_page(i)).contact for i in page_ids] != ["mgr"]:
            return False
        await _act(client, 1, "acknowledge", "mgr")
        return True

    _before_hand_over(client, mgr_acks)
    await post(client, webhook(alert("TargetDown", instance="web-1")))
    await eventually(lambda: _true(len(twilio.sent_sms(ALICE)) == 1), "alice's page")
    await _time_passes(clock, 10)
    await _act(client, 1, "acknowledge", "bob")
    await _time_passes(clock, 20)

    async def cancelled() -> bool:
        pages = await _pages(client, 1)
        return ("page", "mgr", "email", "cancelled", "acknowledged by mgr") in pages

    await eventually(cancelled, "mgr's email cancelled by their acknowledgement")
    await _time_passes(clock, 10)
    assert smtp.messages == []
    assert [p[1] for p in await _pages(client, 1)] == ["alice", "mgr"]  # no failover to cto


async def _true(value: bool) -> bool:
    await asyncio.sleep(0)
    return value

"""Faults inside the daemon while a page is made or handed over: nothing was sent, so the
page is tried again; or the adapter crashed mid-send, so it fails and is re-routed. No page
is lost and none is left "sending" (review of stop 14)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from notifiers.base import Message, Receipt
from responder.clock import FakeClock, SystemClock
from responder.deliver import Dispatcher, parse_delivery
from responder.incident import NewPage, Page, PageKind, PageState
from responder.metrics import Metrics
from responder.runtime import RUNTIME
from responder.store import SQLiteStore, StoreError
from responder.testing import SmtpTestServer
from responder.yamlfile import load_text
from tests.conftest import ClientFactory, write_config
from tests.test_escalation_story import (
    alert,
    eventually,
    incident,
    post,
    smtp_channel,
    webhook,
)
from tests.test_store_sqlite import alert as stored_alert

ALICE_THEN_BOB = """
contacts:
  alice: {email: alice@example.com, backup: bob}
  bob: {email: bob@example.com}
escalation_policies:
  standard:
    levels:
      - targets: [alice]
incidents:
  default_policy: standard
"""


async def test_a_store_error_while_a_page_is_composed_is_tried_again(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock
) -> None:
    """One failed read while alice's email is composed (the disk): it was never sent, so it
    is tried again after a backoff and reaches her; before, it failed for good and neither
    she nor her backup was paged."""
    async with SmtpTestServer() as smtp:
        client = await make_client(write_config(tmp_path, ALICE_THEN_BOB + smtp_channel(smtp)))
        store = client.app[RUNTIME].store
        real = store.page_context
        failures = [StoreError("read failed: disk I/O error")]

        async def flaky(incident_id: int) -> Any:
            if failures:
                raise failures.pop()
            return await real(incident_id)

        store.page_context = flaky
        await post(client, webhook(alert("TargetDown", instance="web-1")))
        for _ in range(50):
            if not failures:
                break
            await asyncio.sleep(0.02)
        for _ in range(10):  # past any backoff
            clock.advance(timedelta(minutes=1))
            await asyncio.sleep(0.05)

        async def sent_on_the_second_attempt() -> bool:
            pages = (await incident(client))["pages"]
            return [(p["contact"], p["state"], p["attempts"]) for p in pages] == [
                ("alice", "sent", 2)
            ]

        await eventually(sent_on_the_second_attempt, "alice's page sent on its second attempt")
        assert [m.rcpt_tos for m in smtp.messages] == [["alice@example.com"]]


async def test_a_page_that_cannot_be_composed_for_good_fails_over_at_once(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock
) -> None:
    """Not the store but a fault that will not pass (here a bug of ours): alice's page
    fails at once and her backup bob is paged, instead of minutes of retries."""
    async with SmtpTestServer() as smtp:
        client = await make_client(write_config(tmp_path, ALICE_THEN_BOB + smtp_channel(smtp)))
        store = client.app[RUNTIME].store
        real = store.page_context
        failures = [RuntimeError("a bug of ours")]

        async def broken(incident_id: int) -> Any:
            if failures:
                raise failures.pop()
            return await real(incident_id)

        store.page_context = broken
        await post(client, webhook(alert("TargetDown", instance="web-1")))

        async def bob_paged() -> bool:
            pages = (await incident(client))["pages"]
            return [(p["contact"], p["state"]) for p in pages] == [
                ("alice", "failed"),
                ("bob", "sent"),
            ]

        await eventually(bob_paged, "alice's page failed, bob paged at once")
        assert [m.rcpt_tos for m in smtp.messages] == [["bob@example.com"]]


class _Email:
    channel = "email"

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, message: Message) -> Receipt:
        self.sent.append(message.text)
        return Receipt(f"id-{len(self.sent)}")

    async def close(self) -> None:
        return None


class _FailingOnce:
    """A composer whose first bundle fails (a store read)."""

    def __init__(self) -> None:
        self.failures = 1

    async def page(self, page: Page) -> Message:
        return Message(channel=page.channel, to=page.address, text=f"page {page.id}")

    async def bundle(self, pages: Sequence[Page]) -> Message:
        if self.failures:
            self.failures -= 1
            raise StoreError("read failed: disk I/O error")
        return Message(channel="email", to=pages[0].address, text="bundle")


async def test_a_bundle_that_could_not_be_composed_is_not_left_sending(tmp_path: Path) -> None:
    """Two pages for alice go as one bundle; its composition fails once. They are queued
    again (and later sent), not left "sending" until a restart calls them "outcome
    unknown"."""
    store = SQLiteStore(tmp_path / "responder.db")
    await store.open()
    clock = SystemClock()
    now = clock.now()
    await store.ingest([replace(stored_alert(starts=now), incident_key="k")], now)
    loose = parse_delivery(
        load_text("delivery:\n  rate_limits:\n    email: [100/1m]\n", "c.yaml")["delivery"]
    )
    notifier = _Email()
    dispatcher = Dispatcher(
        store,
        clock,
        Metrics(CollectorRegistry()),
        lambda: {"email": notifier},
        _FailingOnce(),
        config=lambda: loose,
    )
    pages = [
        NewPage(step, PageKind.PAGE, "alice", "email", "alice@example.com", now)
        for step in ("L1", "L2")
    ]
    await store.add_pages(1, 1, pages, None, now)
    task = asyncio.create_task(dispatcher.run_forever())
    try:
        await asyncio.sleep(0.5)
        states = [p.state for s in ("L1", "L2") for p in await store.step_pages(1, 1, s)]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()
    assert states == [PageState.QUEUED, PageState.QUEUED]


async def test_a_store_error_before_the_hand_over_queues_the_page_again(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock
) -> None:
    """One failed read while alice's rate limits are checked, after her page was claimed:
    it was handed to no channel, so it waits in the queue and reaches her; before, it stayed
    'sending' until the next start, which then paged her backup instead (review of stop 16)."""
    async with SmtpTestServer() as smtp:
        client = await make_client(write_config(tmp_path, ALICE_THEN_BOB + smtp_channel(smtp)))
        store = client.app[RUNTIME].store
        real = store.send_times
        failures = [StoreError("read failed: disk I/O error")]

        async def flaky(*args: Any, **kwargs: Any) -> Any:
            if failures:
                raise failures.pop()
            return await real(*args, **kwargs)

        store.send_times = flaky
        await post(client, webhook(alert("TargetDown", instance="web-1")))

        async def back_in_the_queue() -> bool:
            pages = (await incident(client))["pages"]
            return not failures and [(p["state"], p["attempts"]) for p in pages] == [("queued", 0)]

        await eventually(back_in_the_queue, "alice's page queued again")
        clock.advance(timedelta(seconds=20))  # past RETRY_AFTER_FAULT
        await eventually(lambda: _true(len(smtp.messages) == 1), "alice's email")
        assert [m.rcpt_tos for m in smtp.messages] == [["alice@example.com"]]

        async def sent_once() -> bool:
            pages = (await incident(client))["pages"]
            return [(p["contact"], p["state"], p["attempts"]) for p in pages] == [
                ("alice", "sent", 1)
            ]

        await eventually(sent_once, "alice's page sent on its first counted attempt")


async def test_a_store_error_after_the_hand_over_is_settled_as_a_cut_off_send(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock
) -> None:
    """The email went out but recording it failed: the page is not left 'sending' for the
    next start; as after a crash mid-send it is failed, outcome unknown, and re-routed, never
    sent to alice again."""
    async with SmtpTestServer() as smtp:
        client = await make_client(write_config(tmp_path, ALICE_THEN_BOB + smtp_channel(smtp)))
        store = client.app[RUNTIME].store
        real = store.finish_page
        failures = [StoreError("commit failed: disk I/O error")]

        async def flaky(*args: Any, **kwargs: Any) -> Any:
            if failures:
                raise failures.pop()
            return await real(*args, **kwargs)

        store.finish_page = flaky
        await post(client, webhook(alert("TargetDown", instance="web-1")))
        await eventually(lambda: _true(len(smtp.messages) == 2), "alice's email, then bob's")
        assert sorted(m.rcpt_tos[0] for m in smtp.messages) == [
            "alice@example.com",
            "bob@example.com",
        ]

        async def settled() -> bool:
            pages = (await incident(client))["pages"]
            return [(p["contact"], p["state"]) for p in pages] == [
                ("alice", "failed"),
                ("bob", "sent"),
            ]

        await eventually(settled, "alice's page failed, bob's sent")
        assert "outcome unknown" in (await incident(client))["pages"][0]["error"]


async def _true(value: bool) -> bool:
    return value


async def test_a_delivery_pass_the_store_fails_is_tried_again_within_seconds_and_said_once(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The store refuses the outbox's claims twice (a full disk, a locked database):
    the page goes out as soon as it lets it, a second or so later, not after the loop's
    30 s sleep (the fake clock stands still here: only the retry can send it), and the log
    says it once with how many it left out, not a traceback a pass (disk review)."""
    async with SmtpTestServer() as smtp:
        client = await make_client(write_config(tmp_path, ALICE_THEN_BOB + smtp_channel(smtp)))
        store = client.app[RUNTIME].store
        real = store.claim_pages
        failures = [StoreError("database or disk is full") for _ in range(2)]

        async def refusing(*args: Any, **kwargs: Any) -> Any:
            if failures:
                raise failures.pop()
            return await real(*args, **kwargs)

        store.claim_pages = refusing
        with caplog.at_level(logging.ERROR, logger="responder.deliver"):
            await post(client, webhook(alert("TargetDown", instance="web-1")))
            for _ in range(100):  # a second between passes: up to 10 s of real time
                if smtp.messages:
                    break
                await asyncio.sleep(0.1)
            assert [m.rcpt_tos for m in smtp.messages] == [["alice@example.com"]]
        said = [r for r in caplog.records if "delivery pass failed" in r.getMessage()]
        assert len(said) == 1, [r.getMessage() for r in said]
        assert said[0].exc_info is None

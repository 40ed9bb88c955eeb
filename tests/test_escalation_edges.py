"""Edges of escalation and delivery found by the second review of stop 13: a reassignment
of an acknowledged incident, a removed policy, a bundle's wording, the budget's reroute down
a backup chain, a reroute run twice, an escalation pass racing a reload."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from responder.clock import FakeClock
from responder.compose import Composer
from responder.incident import NewPage, PageKind, PageState, TransitionError
from responder.store import SQLiteStore
from responder.testing import FakeTwilio, SmtpTestServer
from tests.conftest import AUTH, ClientFactory, write_config
from tests.test_escalation_story import (  # noqa: F401 - fixtures
    _count,
    alert,
    channels,
    eventually,
    incident,
    post,
    settle,
    smtp,
    twilio,
    webhook,
)
from tests.test_store_sqlite import T0, disk_alert


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "responder.db")
    await opened.open()
    yield opened
    await opened.close()


# -- 1. 997087c: a reassignment of an acknowledged incident is cancelled by a hold ----------


async def test_reassigning_an_acknowledged_incident_survives_a_rate_limit_hold(
    store: SQLiteStore,
) -> None:
    """alice acknowledged, then hands the incident to bob: bob's page waits out a rate limit
    and goes; the incident being acknowledged already does not cancel it."""
    await store.ingest([disk_alert("aaaa000000000001")], T0)
    await store.transition(1, "acknowledge", actor="alice", via="api", now=T0)
    page = NewPage("A", PageKind.PAGE, "bob", "sms", "+15551230002", T0)
    later = T0 + timedelta(seconds=5)
    await store.transition(
        1, "reassign", actor="alice", via="api", now=later, assignee="bob", pages=[page]
    )
    (claimed,) = await store.claim_pages(later)
    held_until = later + timedelta(seconds=40)
    await store.hold_pages([claimed.id], held_until, "rate limited", later)
    after = await store.get_page(claimed.id)
    assert after is not None
    assert after.state is PageState.QUEUED, (after.state, after.error)


# -- 2. 3bd5204: a removed policy's levels done count as the default policy's --------------

GONE_RULES = """
rules:
  - name: disk
    matchers: ['alertname="DiskFull"']
    severity: P1
    category: availability
    policy: ops
"""


def gone_config(with_ops: bool) -> str:
    ops = "  ops:\n    levels:\n      - targets: [ticket]\n" if with_ops else ""
    return f"""
contacts:
  alice: {{email: alice@example.com}}
  ticket: {{email: tickets@example.com}}
escalation_policies:
{ops}  standard:
    levels:
      - targets: [alice]
incidents:
  default_policy: standard
"""


async def test_an_incident_whose_policy_was_removed_pages_the_default_policy(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,  # noqa: F811
    twilio: FakeTwilio,  # noqa: F811
) -> None:
    """'ops' paged the ticket queue (its L1). A reload removes 'ops': the incident goes on
    under the default policy from its first level (a new episode), so alice is paged; the
    levels 'ops' did say nothing of the default's."""
    extra = channels(tmp_path, smtp, twilio)
    client = await make_client(write_config(tmp_path, gone_config(True) + extra, rules=GONE_RULES))
    await post(client, webhook(alert("DiskFull", instance="a")))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "ticket"), "ticket")
    write_config(tmp_path, gone_config(False) + extra, rules=GONE_RULES.replace("ops", "standard"))
    assert (await client.post("/-/reload", headers=AUTH)).status == 200
    for _ in range(10):
        await settle(client, clock, timedelta(minutes=1))
    doc = await incident(client)
    assert [e for e in doc["timeline"] if e["kind"] == "policy_gone"]
    assert doc["state"] == "triggered"
    assert any(p["contact"] == "alice" for p in doc["pages"]), doc["pages"]


# -- 3. 15d96b6: a page and a status update of one incident in one bundle read as 'update' --


async def test_a_bundle_with_an_incidents_first_page_and_its_status_update_asks_for_ack(
    store: SQLiteStore,
    tmp_path: Path,
) -> None:
    """alice's L1 page was held by her rate limit long enough for a status update (she is a
    stakeholder too) to join it: the bundle tells the incident as new and asks for ACK, as
    she has never been told of it."""
    from responder.messages import load_templates
    from responder.secrets import Secret

    await store.ingest([disk_alert("aaaa000000000001")], T0)
    pages = [
        NewPage("L1", PageKind.PAGE, "alice", "sms", "+15551230001", T0),
        NewPage("U1", PageKind.STATUS, "alice", "sms", "+15551230001", T0),
    ]
    await store.add_pages(1, 1, pages, None, T0)
    claimed = await store.claim_pages(T0)
    assert len(claimed) == 2
    templates = load_templates(None, tmp_path)
    composer = Composer(
        store, lambda: T0, lambda: templates, public_url=None, link_secret=Secret("x" * 32, "t")
    )
    message = await composer.bundle(claimed)
    first_line = message.text.splitlines()[0]
    assert "new" in first_line, message.text
    assert "ACK" in first_line, message.text


# -- 4. b941fb4: a budget hold re-routes nowhere when the first backup is SMS-only --------

CHAIN = """
contacts:
  carol: {sms: "+15551230003", backup: dave}
  dave: {sms: "+15551230004", backup: erin}
  erin: {email: erin@example.com}
"""


def _dispatcher(store: SQLiteStore, registry: CollectorRegistry) -> Any:
    from responder.clock import FakeClock
    from responder.deliver import Dispatcher
    from responder.directory import parse_directory
    from responder.metrics import Metrics
    from responder.yamlfile import load_text

    directory = parse_directory(load_text(CHAIN, "config.yaml"))
    clock = FakeClock(T0)
    return Dispatcher(
        store,
        clock,
        Metrics(registry),
        dict,
        None,  # type: ignore[arg-type]  # composes nothing: only reroutes are asked of it
        directory=lambda: directory,
    )


async def test_a_budget_hold_reaches_the_first_free_channel_down_the_backup_chain(
    store: SQLiteStore,
) -> None:
    """carol (SMS only) -> dave (SMS only) -> erin (email). With the SMS budget spent,
    carol's page waits, and the re-route goes down the chain past dave to erin's email."""
    from responder.deliver import BUDGET_HELD

    await store.ingest([disk_alert("aaaa000000000001")], T0)
    page = NewPage("L1", PageKind.PAGE, "carol", "sms", "+15551230003", T0, "dave")
    await store.add_pages(1, 1, [page], None, T0)
    (claimed,) = await store.claim_pages(T0)
    dispatcher = _dispatcher(store, CollectorRegistry())
    reroute = dispatcher.reroute_for(BUDGET_HELD, free_only=True)
    later = T0 + timedelta(minutes=5)
    await store.hold_pages([claimed.id], later, BUDGET_HELD, T0, (reroute, [claimed.id]))
    pages = await store.step_pages(1, 1, "L1")
    assert ("erin", "email") in [(p.contact, p.channel) for p in pages], pages


# -- 5. b941fb4: the 'pure' Reroute counts metrics and logs; a batch re-run doubles them ---


async def test_a_reroute_rerun_with_its_batch_counts_its_pages_once(tmp_path: Path) -> None:
    """The writer runs a batch again, job by job, when any job in it fails. A failed page's
    reroute shares its batch with a failing transition: it runs twice, and its failover
    is counted once, after the commit."""
    store = SQLiteStore(tmp_path / "r.db")
    await store.open()
    try:
        await store.ingest([disk_alert("aaaa000000000001")], T0)
        page = NewPage("L1", PageKind.PAGE, "carol", "sms", "+15551230003", T0, "dave")
        await store.add_pages(1, 1, [page], None, T0)
        await store.ingest([replace(disk_alert("aaaa000000000002"), incident_key="other")], T0)
        await store.transition(2, "resolve", actor="x", via="api", now=T0)
        (claimed,) = await store.claim_pages(T0)
        registry = CollectorRegistry()
        dispatcher = _dispatcher(store, registry)
        reroute = dispatcher.reroute_for("invalid number")

        gate = threading.Event()
        blocker = asyncio.ensure_future(store._write(lambda _conn: gate.wait(5)))
        await asyncio.sleep(0.1)  # the writer is inside the blocker: the next two batch up
        failed = asyncio.ensure_future(
            store.finish_page(claimed.id, PageState.FAILED, T0, error="21211", reroute=reroute)
        )
        ack = asyncio.ensure_future(
            store.transition(2, "acknowledge", actor="bob", via="sms", now=T0)
        )
        await asyncio.sleep(0.05)
        gate.set()
        await blocker
        assert await failed == 1  # one page added: dave/sms
        dispatcher.counted(reroute)
        with contextlib.suppress(TransitionError):  # already resolved
            await ack
        queued = registry.get_sample_value(
            "responder_pages_queued_total", {"channel": "sms", "kind": "page"}
        )
        assert [(p.contact, p.state) for p in await store.step_pages(1, 1, "L1")] == [
            ("carol", PageState.FAILED),
            ("dave", PageState.QUEUED),
        ]
        assert queued == 1.0, queued
    finally:
        await store.close()


# -- 6. e2cefbf: a pass that read the steps before the renumbering undoes it ----------------

RACE_BASE = """
contacts:
  alice: {email: alice@example.com}
  bob: {email: bob@example.com}
  carol: {email: carol@example.com}
incidents:
  default_policy: standard
escalation_policies:
  standard:
    levels:
"""


async def _pass(store: SQLiteStore, config: Any, now: Any, work: Any = None) -> Any:
    """What Escalator.run_once does: read due work, decide under the config it reads
    *after* that await, apply (guarded only by the incident's version)."""
    from responder.escalate import decide
    from responder.store.base import EscalationUpdate

    work = work if work is not None else await store.due_escalations(now)
    decisions = [decide(item, config, now) for item in work]
    updates = [
        EscalationUpdate(
            i.incident.id, i.incident.version, d.steps, d.events, d.next_due, d.unsnooze
        )
        for i, d in zip(work, decisions, strict=True)
    ]
    return await store.apply_escalations(updates, now)


async def test_a_pass_that_read_the_steps_before_a_reload_does_not_undo_the_renumbering(
    store: SQLiteStore,
    tmp_path: Path,
) -> None:
    """Reload at 30m removes bob's level 2 while carol's (old L3, 30m) is due. The escalator
    read the incident's steps ({L1, L2}) just before the re-arm renamed them, and reads the
    new config after its await: under it 'L2' is carol's level. The re-arm moved the
    incident's version, so that stale decision is refused and the next pass pages carol
    (the very outcome e2cefbf was written to prevent)."""
    from responder.policy import level_keys, level_renumbering
    from responder.runtime import load_snapshot

    three = (
        "      - targets: [alice]\n      - {after: 15m, targets: [bob]}\n"
        "      - {after: 30m, targets: [carol]}\n"
    )
    two = "      - targets: [alice]\n      - {after: 30m, targets: [carol]}\n"
    old = load_snapshot(write_config(tmp_path, RACE_BASE + three)).escalation
    new = load_snapshot(write_config(tmp_path, RACE_BASE + two)).escalation
    moves = level_renumbering(
        level_keys(old.policies["standard"]), level_keys(new.policies["standard"])
    )
    assert moves == {1: 1, 2: None, 3: 2}

    start = T0
    await store.ingest([disk_alert("aaaa000000000001")], start)  # its rule names no policy
    await _pass(store, old, start)
    await _pass(store, old, start + timedelta(minutes=15))
    at30 = start + timedelta(minutes=30)
    stale = await store.due_escalations(at30)  # the pass reads {L1, L2} ...
    await store.rearm_open_incidents(at30, {None: moves})  # ... the reload commits ...
    assert await _pass(store, new, at30, stale) == [None]  # ... the stale decision is refused
    for minute in range(31, 60):
        await _pass(store, new, start + timedelta(minutes=minute))
    contacts = {p.contact for p in await store.step_pages(1, 1, "L2")}
    assert "carol" in contacts, contacts

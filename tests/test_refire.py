"""Paging across a re-fire: a page made for one trigger of an incident that waited (a
retry, a rate limit) while the incident resolved and fired again is that trigger's page,
not the new one's. Real SQLite, the real composer and link tokens."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import msgspec

from responder import links
from responder.compose import Composer
from responder.incident import TRIGGER_ENDED, IncidentState, NewPage, PageKind, PageState
from responder.messages import load_templates
from responder.secrets import Secret
from responder.store import SQLiteStore
from tests.test_store_sqlite import T0, back_to_schema, disk_alert, resolved, store

__all__ = ["store"]

RESOLVED_AT = T0 + timedelta(minutes=5)
REFIRED_AT = T0 + timedelta(minutes=6)
SECRET = Secret("x" * 32, "test")


async def _paged_then_refired(store: SQLiteStore, channel: str, address: str) -> int:
    """Incident 1 pages alice for its first trigger; her page is claimed (with the
    provider) when the alert resolves and fires again. Returns the page's id."""
    first = disk_alert("aaaa000000000001")
    await store.ingest([first], T0)
    page = NewPage("L1", PageKind.PAGE, "alice", channel, address, T0)
    await store.add_pages(1, 1, [page], None, T0)
    (claimed,) = await store.claim_pages(T0)
    await store.hand_over([claimed.id], T0)
    await store.ingest([resolved(first, RESOLVED_AT)], RESOLVED_AT)
    again = replace(first, alert=msgspec.structs.replace(first.alert, starts_at=REFIRED_AT))
    await store.ingest([again], REFIRED_AT)
    incident = await store.get_incident(1)
    assert (incident.state, incident.started) == (IncidentState.TRIGGERED, REFIRED_AT)
    return claimed.id


async def test_a_page_retried_across_a_refire_is_cancelled_not_sent_for_the_new_trigger(
    store: SQLiteStore,
) -> None:
    """Twilio asks for a retry of alice's SMS after the incident resolved and fired again:
    the SMS told of a trigger that is over, so it is cancelled, not sent as a page of the
    new one (whose own pages go to whoever is on call for it). A page of the new trigger
    carries the new start and goes."""
    page_id = await _paged_then_refired(store, "sms", "+15551230001")
    await store.finish_page(page_id, PageState.QUEUED, REFIRED_AT, error="503", retry_at=REFIRED_AT)
    assert await store.claim_pages(REFIRED_AT) == []
    page = await store.get_page(page_id)
    assert page is not None
    assert (page.state, page.error, page.trigger_at) == (PageState.CANCELLED, TRIGGER_ENDED, T0)
    new = NewPage("L1", PageKind.PAGE, "bob", "sms", "+15551230002", REFIRED_AT)
    await store.add_pages(1, 2, [new], None, REFIRED_AT)
    (claimed,) = await store.claim_pages(REFIRED_AT)
    assert (claimed.contact, claimed.trigger_at) == ("bob", REFIRED_AT)


async def test_a_page_composed_after_a_refire_links_to_its_own_trigger(
    store: SQLiteStore, tmp_path: Path
) -> None:
    """alice's email of the first trigger, composed once the incident fired again, links
    to the first trigger: her link then says the incident fired again since, and does not
    acknowledge the new trigger she was never paged for."""
    page_id = await _paged_then_refired(store, "email", "alice@example.com")
    page = await store.get_page(page_id)
    assert page is not None
    templates = load_templates(None, tmp_path)
    composer = Composer(
        store,
        lambda: REFIRED_AT,
        lambda: templates,
        public_url="https://responder.example",
        link_secret=SECRET,
    )
    message = await composer.page(page)
    url = message.data["ack_url"]
    assert isinstance(url, str)
    claim = links.read_token(SECRET, url.rsplit("/", 1)[1], REFIRED_AT)
    assert (claim.episode, claim.trigger) == (1, T0)


async def test_the_upgrade_gives_older_pages_the_trigger_they_were_made_for(
    tmp_path: Path,
) -> None:
    """Pages of a database of before the column: each takes the trigger its episode's first
    page was made in, a failover made after the re-fire included."""
    path = tmp_path / "responder.db"
    store = SQLiteStore(path)
    await store.open()
    try:
        page_id = await _paged_then_refired(store, "sms", "+15551230001")
        later = REFIRED_AT + timedelta(minutes=1)
        failover = NewPage("L1", PageKind.PAGE, "bob", "sms", "+15551230002", later)
        await store.add_pages(1, 1, [failover], None, later)
        new = NewPage("L1", PageKind.PAGE, "carol", "sms", "+15551230003", later)
        await store.add_pages(1, 2, [new], None, later)
    finally:
        await store.close()
    back_to_schema(path, 16)
    store = SQLiteStore(path)
    await store.open()
    try:
        *_, pages = await store.incident_details(1)
    finally:
        await store.close()
    assert [(p.contact, p.trigger_at) for p in pages] == [
        ("alice", T0),
        ("bob", T0),
        ("carol", REFIRED_AT),
    ]
    assert pages[0].id == page_id


async def test_a_recovery_notice_held_across_a_refire_is_dropped_and_the_next_one_tells(
    store: SQLiteStore,
) -> None:
    """alice's "RESOLVED, no action is needed" for the first trigger waits for her rate
    limit while the incident fires again: sent then, it would say the opposite of what is
    happening, next to (or in a bundle instead of) the new trigger's page. It is cancelled
    like a late page, and alice, told of the first trigger and of no end to it, is among
    those the new trigger's recovery notice goes to."""
    first = disk_alert("aaaa000000000001")
    await store.ingest([first], T0)
    page = NewPage("L1", PageKind.PAGE, "alice", "sms", "+15551230001", T0)
    await store.add_pages(1, 1, [page], None, T0)
    (claimed,) = await store.claim_pages(T0)
    await store.finish_page(claimed.id, PageState.SENT, T0)
    await store.ingest([resolved(first, RESOLVED_AT)], RESOLVED_AT)
    recovery = NewPage(
        "R", PageKind.RECOVERY, "alice", "sms", "+15551230001", RESOLVED_AT, cancel_on_ack=False
    )
    await store.add_pages(1, 1, [recovery], None, RESOLVED_AT)
    (notice,) = await store.claim_pages(RESOLVED_AT)
    held_until = REFIRED_AT + timedelta(minutes=1)
    await store.hold_pages([notice.id], held_until, "rate limited", RESOLVED_AT)
    again = replace(first, alert=msgspec.structs.replace(first.alert, starts_at=REFIRED_AT))
    await store.ingest([again], REFIRED_AT)
    assert await store.claim_pages(held_until) == []
    dropped = await store.get_page(notice.id)
    assert dropped is not None
    assert (dropped.state, dropped.error) == (PageState.CANCELLED, TRIGGER_ENDED)
    over = REFIRED_AT + timedelta(minutes=10)
    await store.ingest([resolved(again, over)], over)
    (work,) = await store.due_escalations(over)
    assert work.incident.state is IncidentState.RESOLVED
    assert ("alice", "sms", "+15551230001") in work.paged

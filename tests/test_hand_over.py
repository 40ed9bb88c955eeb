"""The hand-over re-checks each claimed page against its incident as it is now: an
acknowledgement, snooze, resolve or re-fire committed after the pages were claimed (while
their limits were checked and their message made) cancels those that lost their point, as
the same change cancels queued ones, and hands over none of a message that lost any. Real
SQLite; the outbox's side is in test_delivery_hand_over."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

import msgspec

from responder.deliver import BUDGET_HELD
from responder.incident import TRIGGER_ENDED, Incident, NewPage, Page, PageKind, PageState
from responder.store import SQLiteStore
from tests.test_store_sqlite import T0, disk_alert, resolved, store

__all__ = ["store"]

LATER = T0 + timedelta(seconds=5)


def sms(step: str, kind: PageKind, contact: str, *, cancel_on_ack: bool = True) -> NewPage:
    return NewPage(step, kind, contact, "sms", f"+1555{contact}", T0, None, cancel_on_ack)


async def _claimed(store: SQLiteStore, *pages: NewPage) -> dict[str, int]:
    """Incident 1 with ``pages`` queued and claimed; their ids by step."""
    await store.ingest([disk_alert("aaaa000000000001")], T0)
    await store.add_pages(1, 1, pages, None, T0)
    return {p.step: p.id for p in await store.claim_pages(T0)}


async def _state(store: SQLiteStore, page_id: int) -> tuple[PageState, str | None]:
    page = await store.get_page(page_id)
    assert page is not None
    return page.state, page.error


async def test_an_acknowledgement_after_the_claim_cancels_the_unacknowledged_clock_pages(
    store: SQLiteStore,
) -> None:
    """bob acknowledges while alice's level-1 SMS is being made: it is cancelled at its
    hand-over, not sent; a status update and a management (duration) level's page claimed
    with it still go. It was handed over regardless, and alice was paged after the
    acknowledgement."""
    ids = await _claimed(
        store,
        sms("L1", PageKind.PAGE, "alice"),
        sms("L3", PageKind.PAGE, "mgr", cancel_on_ack=False),
        sms("U1", PageKind.STATUS, "cto", cancel_on_ack=False),
    )
    await store.transition(1, "acknowledge", actor="bob", via="api", now=LATER)
    assert await store.hand_over([ids["L1"]], LATER) == [ids["L1"]]
    assert await _state(store, ids["L1"]) == (PageState.CANCELLED, "incident acknowledged")
    assert await store.open_incidents_paged_to(["alice"]) == []  # nothing reached her
    assert await store.hand_over([ids["L3"]], LATER) == []
    assert await store.hand_over([ids["U1"]], LATER) == []
    assert [i.id for i, _ in await store.open_incidents_paged_to(["mgr", "cto"])] == [1]


async def test_whoever_acknowledges_is_not_paged_by_a_page_being_made_for_them(
    store: SQLiteStore,
) -> None:
    """bob acknowledged; the management levels' SMS to mgr and cto (they go even when
    acknowledged) are being made when mgr acknowledges too: as their queued pages would be,
    mgr's is cancelled, and its hand-over finds it gone. cto's still goes."""
    await store.ingest([disk_alert("aaaa000000000001")], T0)
    await store.transition(1, "acknowledge", actor="bob", via="api", now=T0)
    pages = [
        sms("L3", PageKind.PAGE, "mgr", cancel_on_ack=False),
        sms("L4", PageKind.PAGE, "cto", cancel_on_ack=False),
    ]
    await store.add_pages(1, 1, pages, None, T0)
    ids = {p.step: p.id for p in await store.claim_pages(T0)}
    incident, changed = await store.transition(1, "acknowledge", actor="mgr", via="sms", now=LATER)
    assert (incident.acknowledged_by, changed) == ("bob", False)  # nothing else records it
    assert await store.hand_over([ids["L3"]], LATER) == [ids["L3"]]
    assert await _state(store, ids["L3"]) == (PageState.CANCELLED, "acknowledged by mgr")
    assert await store.hand_over([ids["L4"]], LATER) == []
    # Had its message failed instead, it is neither revived as failed nor re-routed.
    failed = await store.finish_page(
        ids["L3"], PageState.FAILED, LATER, error="x", reroute=ToBackup()
    )
    assert failed == 0
    # Nor, held by the SMS budget instead, put back in the queue or re-routed.
    until = LATER + timedelta(minutes=5)
    await store.hold_pages([ids["L3"]], until, BUDGET_HELD, LATER, (ToBackup(), [ids["L3"]]))
    assert await _state(store, ids["L3"]) == (PageState.CANCELLED, "acknowledged by mgr")
    assert await store.claim_pages(until) == []


class ToBackup:
    """A re-route that always pages a backup (deliver's decides by the incident's state)."""

    free_only = False

    def __call__(
        self, page: Page, incident: Incident, siblings: Sequence[Page], done_before: bool
    ) -> tuple[list[NewPage], None]:
        return [replace(sms(page.step, page.kind, "backup"), due_at=LATER)], None


async def test_a_snooze_after_the_claim_cancels_escalation_not_a_reassignment(
    store: SQLiteStore,
) -> None:
    ids = await _claimed(
        store,
        sms("L1", PageKind.PAGE, "alice"),
        sms("A1", PageKind.PAGE, "carol"),  # a reassignment's page: the new owner hears
    )
    await store.transition(
        1, "snooze", actor="bob", via="api", now=LATER, until=LATER + timedelta(hours=1)
    )
    assert await store.hand_over([ids["L1"]], LATER) == [ids["L1"]]
    assert await _state(store, ids["L1"]) == (PageState.CANCELLED, "incident snoozed")
    assert await store.hand_over([ids["A1"]], LATER) == []


async def test_a_resolve_after_the_claim_cancels_pages_and_status_updates_not_recoveries(
    store: SQLiteStore,
) -> None:
    ids = await _claimed(
        store,
        sms("L3", PageKind.PAGE, "mgr", cancel_on_ack=False),
        sms("U1", PageKind.STATUS, "cto", cancel_on_ack=False),
    )
    await store.transition(1, "resolve", actor="bob", via="api", now=LATER)
    assert await store.hand_over([ids["L3"], ids["U1"]], LATER) == [ids["L3"], ids["U1"]]
    for page_id in (ids["L3"], ids["U1"]):
        assert await _state(store, page_id) == (PageState.CANCELLED, "incident resolved")
    (work,) = await store.due_escalations(LATER)
    assert work.paged == ()  # nobody heard of it: no recovery notice either
    recovery = sms("R", PageKind.RECOVERY, "alice", cancel_on_ack=False)
    await store.add_pages(1, 1, [recovery], None, LATER)
    (claimed,) = await store.claim_pages(LATER)
    assert await store.hand_over([claimed.id], LATER) == []


async def test_a_recovery_notice_of_a_trigger_that_fired_again_is_cancelled_at_its_hand_over(
    store: SQLiteStore,
) -> None:
    """alice's "RESOLVED" SMS is being made when the alert fires again: it would arrive
    while the incident fires, telling of the trigger that is over."""
    first = disk_alert("aaaa000000000001")
    await store.ingest([first], T0)
    await store.ingest([resolved(first, LATER)], LATER)
    recovery = sms("R", PageKind.RECOVERY, "alice", cancel_on_ack=False)
    await store.add_pages(1, 1, [recovery], None, LATER)
    (claimed,) = await store.claim_pages(LATER)
    again_at = LATER + timedelta(seconds=1)
    again = replace(first, alert=msgspec.structs.replace(first.alert, starts_at=again_at))
    await store.ingest([again], again_at)
    assert await store.hand_over([claimed.id], again_at) == [claimed.id]
    assert await _state(store, claimed.id) == (PageState.CANCELLED, TRIGGER_ENDED)


async def test_a_drill_page_goes_whatever_its_drill_became(store: SQLiteStore) -> None:
    test_page = NewPage("D", PageKind.TEST, "alice", "sms", "+1555alice", T0, None, False)
    drill = await store.create_drill("drill", [test_page], "ops", T0)
    (claimed,) = await store.claim_pages(T0)
    await store.transition(drill, "acknowledge", actor="alice", via="sms", now=LATER)
    await store.transition(drill, "resolve", actor="ops", via="cli", now=LATER)
    assert await store.hand_over([claimed.id], LATER) == []


async def test_a_message_that_lost_a_page_is_not_handed_over_and_survives_a_crash(
    store: SQLiteStore,
) -> None:
    """A bundle of alice's level-1 page and a status update, acknowledged while it was
    made: the page is cancelled and neither is handed over (the message names both). A
    crash now (recover at start) puts the status update back in the queue, never sends the
    cancelled page; made again and handed over alone, a crash leaves its outcome unknown
    (re-routed, not resent)."""
    ids = await _claimed(
        store,
        sms("L1", PageKind.PAGE, "alice"),
        sms("U1", PageKind.STATUS, "alice", cancel_on_ack=False),
    )
    await store.transition(1, "acknowledge", actor="bob", via="api", now=LATER)
    assert await store.hand_over([ids["L1"], ids["U1"]], LATER) == [ids["L1"]]
    assert await _state(store, ids["U1"]) == (PageState.SENDING, None)
    assert await store.open_incidents_paged_to(["alice"]) == []  # nothing handed over
    assert await store.recover_sending(LATER) == []  # the crash: nothing was handed over
    assert await _state(store, ids["L1"]) == (PageState.CANCELLED, "incident acknowledged")
    (status,) = await store.claim_pages(LATER)
    assert status.id == ids["U1"]
    assert await store.hand_over([status.id], LATER) == []
    assert [p.id for p in await store.recover_sending(LATER)] == [status.id]
    assert (await _state(store, status.id))[0] is PageState.FAILED
    assert await store.claim_pages(LATER + timedelta(hours=1)) == []


async def _handed(store: SQLiteStore, page: NewPage, at: datetime) -> int:
    """``page`` of incident 1 claimed and handed to its channel at ``at``: its id."""
    await store.add_pages(1, (await store.get_incident(1)).episode, [page], None, at)
    (claimed,) = await store.claim_pages(at)
    assert await store.hand_over([claimed.id], at) == []
    return claimed.id


async def _back_for_a_retry(store: SQLiteStore, page_id: int, at: datetime) -> None:
    """Its provider answered 503: the page goes back to the queue for a retry."""
    await store.finish_page(
        page_id, PageState.QUEUED, at, error="503", retry_at=at + timedelta(seconds=15)
    )


async def test_a_second_acknowledger_s_page_on_its_way_does_not_come_back_for_a_retry(
    store: SQLiteStore,
) -> None:
    """alice acknowledged first. The management level's SMS to mgr (it goes even when
    acknowledged) is with Twilio when mgr acknowledges too; Twilio answers 503. The retry
    would page mgr about an incident he has just acknowledged: it is cancelled instead.
    Had it failed for good, nobody is paged in his place either."""
    await store.ingest([disk_alert("aaaa000000000001")], T0)
    await store.transition(1, "acknowledge", actor="alice", via="api", now=T0)
    retried = await _handed(store, sms("L3", PageKind.PAGE, "mgr", cancel_on_ack=False), T0)
    failed = await _handed(store, sms("L4", PageKind.PAGE, "mgr", cancel_on_ack=False), T0)
    await store.transition(1, "acknowledge", actor="mgr", via="sms", now=LATER)
    await _back_for_a_retry(store, retried, LATER)
    assert await _state(store, retried) == (PageState.CANCELLED, "acknowledged by mgr")
    assert await store.claim_pages(LATER + timedelta(minutes=5)) == []
    await store.finish_page(failed, PageState.FAILED, LATER, error="x", reroute=ToBackup())
    assert await _state(store, failed) == (PageState.FAILED, "x")  # as it happened
    assert await store.claim_pages(LATER + timedelta(minutes=5)) == []  # no backup paged


async def test_an_acknowledgement_undone_before_the_hand_over_still_stops_the_page(
    store: SQLiteStore,
) -> None:
    """bob acknowledges while alice's level-1 SMS is being made, and unacknowledges at once:
    the escalation starts over (a new episode), which pages alice afresh. The page claimed
    in the old episode lost its point at the acknowledgement and is not handed over; one
    on its way at the acknowledgement does not come back for a retry either. The new
    episode's pages go."""
    await store.ingest([disk_alert("aaaa000000000001")], T0)
    on_its_way = await _handed(store, sms("L1", PageKind.PAGE, "alice"), T0)
    await store.add_pages(1, 1, [sms("L1", PageKind.PAGE, "carol")], None, T0)
    (being_made,) = await store.claim_pages(T0)
    await store.transition(1, "acknowledge", actor="bob", via="api", now=LATER)
    await store.transition(1, "unacknowledge", actor="bob", via="api", now=LATER)
    assert await store.hand_over([being_made.id], LATER) == [being_made.id]
    assert await _state(store, being_made.id) == (PageState.CANCELLED, "acknowledged by bob")
    await _back_for_a_retry(store, on_its_way, LATER)
    assert await _state(store, on_its_way) == (PageState.CANCELLED, "acknowledged by bob")
    afresh = await _handed(store, sms("L1", PageKind.PAGE, "alice"), LATER)
    assert (await store.get_incident(1)).episode == 2
    assert await _state(store, afresh) == (PageState.SENDING, None)


async def test_a_snooze_ended_before_the_hand_over_still_stops_the_page(
    store: SQLiteStore,
) -> None:
    """bob snoozes while alice's level-1 SMS is being made and ends the snooze at once: its
    end pages the level reached again (a reminder), so the page claimed before it does not
    go as well."""
    ids = await _claimed(store, sms("L1", PageKind.PAGE, "alice"))
    until = LATER + timedelta(hours=1)
    await store.transition(1, "snooze", actor="bob", via="api", now=LATER, until=until)
    await store.transition(1, "unsnooze", actor="bob", via="api", now=LATER)
    assert await store.hand_over([ids["L1"]], LATER) == [ids["L1"]]
    assert await _state(store, ids["L1"]) == (PageState.CANCELLED, "snoozed by bob")


async def test_a_reassignment_cancels_what_is_still_on_its_way_to_the_one_relieved(
    store: SQLiteStore,
) -> None:
    """Level 1 texted alice (the SMS is with Twilio) and calls her in 5 minutes; carol,
    paged with her, too. alice hands the incident to bob: her call is cancelled, and her
    SMS does not come back for a retry; carol's call still comes. Then the lead hands it
    from bob to dave: bob's page still waiting for his rate limit is cancelled. Neither
    fails over: nobody else needs waking for them."""
    await store.ingest([disk_alert("aaaa000000000001")], T0)
    texted = await _handed(store, sms("L1", PageKind.PAGE, "alice"), T0)
    in_5_minutes = T0 + timedelta(minutes=5)
    calls = [
        NewPage("L1", PageKind.PAGE, who, "voice", f"+1555{who}", in_5_minutes)
        for who in ("alice", "carol")
    ]
    await store.add_pages(1, 1, calls, None, T0)
    to_bob = [replace(sms("A", PageKind.PAGE, "bob"), due_at=in_5_minutes)]
    await store.transition(
        1, "reassign", actor="alice", via="api", now=LATER, assignee="bob", pages=to_bob
    )
    await _back_for_a_retry(store, texted, LATER)
    assert await _state(store, texted) == (PageState.CANCELLED, "reassigned to bob")
    await store.transition(
        1, "reassign", actor="lead", via="cli", now=LATER, assignee="dave", pages=()
    )
    pages = {(p.contact, p.channel): p for p in (await store.incident_details(1))[3]}
    assert (pages["alice", "voice"].state, pages["alice", "voice"].error) == (
        PageState.CANCELLED,
        "reassigned to bob",
    )
    assert (pages["bob", "sms"].state, pages["bob", "sms"].error) == (
        PageState.CANCELLED,
        "reassigned to dave",
    )
    assert [(p.contact, p.channel) for p in await store.claim_pages(in_5_minutes)] == [
        ("carol", "voice")
    ]
    reassigned = [e for e in (await store.incident_details(1))[2] if e.kind == "reassigned"]
    assert [(e.detail["to"], e.detail["cancelled_pages"]) for e in reassigned] == [
        ("bob", 1),
        ("dave", 1),
    ]

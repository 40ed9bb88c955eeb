"""The storage contract: what every engine (SQLite now, PostgreSQL later) must do.

Records crossing this boundary are frozen dataclasses; engines own their SQL. Every write
is durable when its coroutine returns: callers answer Alertmanager only after that.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from responder.contain.guards import RunRecord
from responder.contain.orphans import ProcessIdentity
from responder.incident import (
    EscalationWork,
    Incident,
    NewPage,
    Page,
    PageState,
    StepDone,
    TimelineEvent,
)
from responder.model import Alert, AlertStatus, Classification


class Reroute(Protocol):
    """Where a page that failed (or waits) is re-routed: given the page, its incident, every
    page of its step, and whether this was done for the page before (each page fails over
    once), the pages to queue and the timeline entry saying so. Called by the store inside
    the transaction that records why, so a crash cannot keep one without the other. Pure,
    and safe on any thread. ``free_only``: only to channels that cost nothing while the
    page itself waits for the SMS/voice budget, which is not the page's failover (and is
    done once too, never after its failover)."""

    free_only: bool

    def __call__(
        self, page: Page, incident: Incident, siblings: Sequence[Page], done_before: bool
    ) -> tuple[Sequence[NewPage], TimelineEvent | None]: ...


# Rows of each kind one retention write deletes: small enough not to hold webhooks back.
PRUNE_BATCH = 200
# The largest integer SQLite (and PostgreSQL's bigint) holds: a larger id names no row, and
# binding one raises OverflowError.
MAX_ROW_ID = 2**63 - 1


def row_id(text: str) -> int | None:
    """The row id ``text`` names: ASCII digits up to ``MAX_ROW_ID``; None for anything else
    (a client's or a caller's text, such as a URL's ``/incidents/<id>``)."""
    if not (0 < len(text) <= 19 and text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value <= MAX_ROW_ID else None


class StoreError(Exception):
    """The store could not do what was asked (disk full, locked, gone); callers answer 503."""


class SchemaTooNew(StoreError):
    """The database was written by a newer responder: a restart cannot help."""


class IngestOutcome(StrEnum):
    NEW = "new"  # first time this alert (fingerprint, startsAt) fires
    REPEAT = "repeat"  # still firing; Alertmanager re-sent it
    REVIVED = "revived"  # had gone stale, arrived again: firing once more
    RESOLVED = "resolved"  # was firing, now resolved
    REPEAT_RESOLVED = "repeat_resolved"  # resolved before; the resolve was re-sent
    RESOLVED_UNSEEN = "resolved_unseen"  # a resolve for an alert never seen firing
    LATE = "late"  # a firing copy just after its resolve: out of order, ignored


@dataclass(slots=True)
class IncomingAlert:
    """An alert as received, with where it came from and what the rules decided.

    The decision is given, or made by ``decide`` when the store first needs it (a repeat of
    a firing alert never does): ``decided()`` returns it.
    """

    alert: Alert
    group_key: str
    receiver: str
    classification: Classification | None = None
    # The incident this alert joins when it fires (``responder.incident.incident_key``);
    # None for alerts that never make an incident (heartbeats). Known once decided.
    incident_key: str | None = None
    decide: Callable[[Alert], tuple[Classification, str | None]] | None = None
    # Who raised it, as the incident's timeline names it: Alertmanager, or this daemon
    # itself (HeartbeatMissing).
    source: str = "alertmanager"

    def decided(self) -> Classification:
        if self.classification is None:
            if self.decide is None:
                raise ValueError("an incoming alert needs a classification or a decide")
            self.classification, self.incident_key = self.decide(self.alert)
        return self.classification


@dataclass(frozen=True, slots=True)
class StoredAlert:
    id: int
    fingerprint: str
    status: AlertStatus
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: datetime
    ends_at: datetime | None
    generator_url: str
    group_key: str
    receiver: str
    severity: str
    category: str
    rule: str | None
    classification: Mapping[str, object]
    first_received: datetime
    last_received: datetime
    receive_count: int


@dataclass(frozen=True, slots=True)
class TakenRequest:
    """A signed Twilio request taken once (an SMS reply, a keypress): when, and what it was
    answered (None: no answer, or a crash before the answer was recorded)."""

    taken_at: datetime
    answer: str | None


@dataclass(frozen=True, slots=True)
class HeartbeatRow:
    """A heartbeat alert the dead-man switch watches (``responder.heartbeats``)."""

    fingerprint: str
    labels: Mapping[str, str]
    first_seen: datetime
    # The last sign of life: a firing copy received, or the end Alertmanager gave it.
    alive_until: datetime | None
    # When it was found missing: its HeartbeatMissing alert's start. None while alive.
    missing_since: datetime | None
    # When someone said to forget it (retired); watched again once heard after that.
    forgotten_at: datetime | None = None
    # The last firing copy received: only that ends "missing" or "forgotten" (a resolve
    # arriving late, its end after the heartbeat went quiet, is no return).
    heard_firing: datetime | None = None


@dataclass(frozen=True, slots=True)
class AlertQuery:
    statuses: frozenset[AlertStatus] = frozenset()  # empty: any status
    fingerprint: str | None = None
    limit: int = 500
    before_id: int | None = None  # only older alerts: the next page, newest first


@dataclass(frozen=True, slots=True)
class QueuedAlert:
    """An alert whose classification names actions, waiting for containment."""

    queue_id: int
    alert_id: int
    trigger: str  # fire | resolve; fire#1, resolve#1, ... for an alert revived once, ...
    incident_id: int | None
    fingerprint: str
    status: str
    labels: dict[str, str]
    annotations: dict[str, str]
    classification: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RunRow:
    run_id: str
    alert_id: int
    incident_id: int | None
    action: str
    target: str
    trigger: str
    state: str
    outcome: str | None
    audit: dict[str, Any]
    undo: dict[str, Any] | None
    undo_state: str | None
    undo_due: int | None
    check_due: int | None
    started_at: int
    finished_at: int | None


@dataclass(frozen=True, slots=True)
class RemovedByHand:
    """The answer to "the change of this run is gone, I removed it by hand"
    (``ContainmentStore.removed_by_hand``)."""

    run_id: str  # the run's full id (as given when none fits)
    refused: str | None  # why it cannot be recorded; None: recorded, now or before
    changed: bool  # False: recorded before (``run`` says by whom and why)
    run: RunRow | None  # the run as recorded (None when refused)


@dataclass(frozen=True, slots=True)
class EscalationUpdate:
    """What the engine decided for one incident (see ``Store.apply_escalations``)."""

    incident_id: int
    version: int
    steps: Sequence[StepDone]
    events: Sequence[TimelineEvent]
    next_due: datetime | None
    unsnooze: bool = False
    # Keep the incident's escalate_now: a containment failure that found nobody to page.
    keep_failure: bool = False


class ContainmentStore(Protocol):
    """What containment needs: its durable queue, run records and the guards' state."""

    async def containment_queue(self, after_id: int = 0, limit: int = 100) -> list[QueuedAlert]:
        """Queued alerts with queue ids above ``after_id``, oldest first."""
        ...

    async def containment_done(
        self, queue_id: int, now: datetime, *, release_hold: int | None = None
    ) -> None:
        """Take the alert off the containment queue; ``release_hold`` (an incident id) ends
        its rule's hold_page in the same write: no containment is at work for it."""
        ...

    async def load_guards(self) -> str | None: ...

    async def save_guards(self, state: Callable[[], str], now: datetime) -> None:
        """``state`` is read in the writer at commit time: the newest state always wins."""
        ...

    async def record_run(self, now: datetime, **fields: Any) -> bool:
        """Write a run before it starts (see ``sqlite_actions.record_run``); False if this
        alert already ran this action."""
        ...

    async def finish_run(self, now: datetime, **fields: Any) -> None: ...

    async def recent_runs(self, since: datetime) -> list[RunRecord]:
        """Runs recorded since a time, as the guards count them (start-up history)."""
        ...

    async def interrupt_runs(self, now: datetime) -> list[RunRow]:
        """Mark the runs left 'running' interrupted and escalate their incidents, in one
        transaction; returns them."""
        ...

    async def escalate_incident(self, incident_id: int, reason: str, now: datetime) -> None: ...

    async def record_process(
        self, identity: ProcessIdentity, run_id: str, argv0: str, now: datetime
    ) -> None:
        """Record an action or lift process group while it runs (contain/orphans.py)."""
        ...

    async def forget_process(self, identity: ProcessIdentity) -> None:
        """The group's leader ended: its record goes."""
        ...

    async def recorded_processes(self) -> list[tuple[ProcessIdentity, str, str]]:
        """The groups on record, each with its run id and program."""
        ...

    async def process_stopped(
        self, identity: ProcessIdentity, run_id: str, detail: dict[str, Any], now: datetime
    ) -> None:
        """The start stopped a group a killed daemon left (``detail`` says how): its record
        goes, and its run's audit and its incident's timeline say so, in one transaction."""
        ...

    async def due_undos(
        self,
        now: datetime,
        limit: int = 50,
        *,
        busy: Sequence[str] = (),
        manual_only: bool = False,
    ) -> list[tuple[RunRow, bool]]:
        """Lifts due now, leaving out those of the same action and target as the runs in
        ``busy`` (lifts under way) and, with ``manual_only``, all not asked for by hand."""
        ...

    async def lift_now(self, run_id: str, by: str, now: datetime) -> tuple[str, str | None]: ...

    async def removed_by_hand(
        self, run_id: str, by: str, reason: str, now: datetime, *, under_way: Sequence[str] = ()
    ) -> RemovedByHand:
        """Record that a run's change is gone, removed by hand: its lift ends (nothing runs),
        other runs' lifts of the same change stand down (``sqlite_actions.removed_by_hand``).
        ``under_way``: the runs whose lifts are running now (refused)."""
        ...

    async def start_undo(self, run_id: str, now: datetime) -> bool:
        """A lift is about to run: marked ``lifting`` in its undo until ``finish_undo``, so
        that a lift cut off by a crash or the shutdown is known as such when it runs again.
        False when it is no longer waiting (removed by hand, ended by another run's lift
        since it was read as due): it must not run."""
        ...

    async def hold_undo(
        self, run_id: str, removed: int, detail: dict[str, Any], now: datetime
    ) -> None:
        """A lift the kill switch stopped before its next attempt waits again, due, with
        the number of its deletes done (``removed`` in its undo); the timeline says so."""
        ...

    async def finish_undo(
        self,
        run_id: str,
        state: str,
        detail: dict[str, Any],
        now: datetime,
        *,
        escalate: str | None = None,
    ) -> bool:
        """A lift's outcome; ``escalate`` (a failed lift) escalates the run's incident in
        the same transaction. True when that incident is open (not resolved): it pages, or
        someone has it. False otherwise: the run is marked ``alerted`` in its undo (the
        first failure's time, in microseconds) for the daemon's own alert."""
        ...

    async def due_checks(self, now: datetime, limit: int = 50) -> list[tuple[RunRow, str]]: ...

    async def alerted_lifts(self) -> list[RunRow]:
        """Failed lifts marked ``alerted`` (their own alert raised): still failed (sent
        again), or ended since while their alert still fires (resolved)."""
        ...

    async def finish_check(
        self,
        run_id: str,
        verified: bool | None,
        reason: str,
        now: datetime,
        *,
        guards: Callable[[], str] | None = None,
    ) -> None:
        """An 'alert resolves within' verdict; None: unknown (the alert went stale).
        ``guards`` (read at commit, as in ``save_guards``): the state that counts the verdict,
        written in the same transaction."""
        ...

    async def action_runs(self, limit: int = 100) -> list[RunRow]: ...

    async def next_check_due(self) -> datetime | None:
        """The earliest 'alert resolves within' deadline of containment runs."""
        ...

    async def next_lift_due(
        self, *, busy: Sequence[str] = (), manual_only: bool = False
    ) -> datetime | None:
        """The earliest due time of a lift, leaving out what ``due_undos`` would."""
        ...


class Store(ContainmentStore, Protocol):
    """One interface, several engines, chosen by URL (``responder.store.open_store``)."""

    url: str

    async def open(self) -> None:
        """Connect, apply migrations, start background writers."""
        ...

    async def close(self) -> None:
        """Flush pending writes and close; safe to call twice."""
        ...

    async def ping(self) -> bool:
        """True when the store can serve reads and writes."""
        ...

    async def ingest(
        self,
        alerts: Sequence[IncomingAlert],
        now: datetime,
        *,
        reopen_within: timedelta = ...,
        on_due: Callable[[], None] | None = None,
        deadline: float | None = None,
        default_policy: str | None = None,
    ) -> list[IngestOutcome]:
        """Record alerts durably and idempotently; one outcome per alert, same order. In the
        same transaction, firing alerts join (or open, or reopen) their incident, and an
        incident whose last firing alert resolved is resolved. ``on_due`` is called, after
        the commit, when that made an incident due now (opened, reopened, severity raised,
        resolved); an alert joining an open incident does not. Past ``deadline`` (on the
        running loop's clock) the call raises ``StoreError`` (the writes may still land).
        ``default_policy`` is the policy of a rule that names none (a worse alert that joins
        an incident under another policy restarts its escalation under its own)."""
        ...

    async def prune(self, before: datetime, limit: int = PRUNE_BATCH) -> tuple[int, int]:
        """Retention, one batch: delete up to ``limit`` incidents resolved before ``before``
        with all that was recorded of them, and up to ``limit`` alerts of no incident that
        ended before it; never anything still in use. Returns (incidents, alerts)."""
        ...

    async def forget_twilio_requests(self, before: datetime, limit: int = PRUNE_BATCH) -> int:
        """Retention, one batch: forget up to ``limit`` Twilio requests taken before
        ``before``; returns how many."""
        ...

    async def mark_stale(self, last_received_before: datetime, now: datetime) -> list[int]:
        """Firing alerts not heard of since the cut-off become stale; returns their ids."""
        ...

    async def heartbeats(self) -> list[HeartbeatRow]:
        """Every heartbeat seen (a heartbeat alert's new episode starts watching it)."""
        ...

    async def heartbeat_missing(self, fingerprint: str, since: datetime | None) -> bool:
        """Record that a heartbeat was found missing (``since``) or is alive again (None).
        False if it is not watched (forgotten meanwhile)."""
        ...

    async def forget_heartbeat(self, fingerprint: str, now: datetime) -> HeartbeatRow | None:
        """Stop watching a heartbeat until it is heard again; the row as it was before."""
        ...

    async def remember_heartbeat(self, fingerprint: str, forgotten_at: datetime) -> None:
        """Watch a forgotten heartbeat again: it kept arriving long after that forget."""
        ...

    async def heartbeat_watch_checked(self, now: datetime) -> None:
        """Record that the heartbeat watch ran: a stop after it was down from then."""
        ...

    async def heartbeat_watch_deaf(self, down_from: datetime, up_at: datetime) -> None:
        """Record a downtime while running: the host was suspended, or its clock stepped
        forward, between two checks."""
        ...

    async def heartbeat_watch_started(
        self, now: datetime, keep: timedelta
    ) -> tuple[list[tuple[datetime, datetime]], str | None]:
        """Record the downtime that ends now (since the last check). Returns the downtimes
        a watched heartbeat's silence may reach back over (no silence counts in them; with
        none watched, those of the last ``keep``), and the rules signature the firing
        alerts were last adopted for (``watch_heartbeats``)."""
        ...

    async def heartbeat_watch_forget(
        self, now: datetime, keep: timedelta
    ) -> tuple[int, list[tuple[datetime, datetime]]]:
        """Retention of the downtimes recorded: forget those more than ``keep`` of listening
        followed (as ``heartbeat_watch_started`` does). Returns how many went, and the
        downtimes kept."""
        ...

    async def unwatched_firing_alerts(
        self, except_prefix: str
    ) -> list[tuple[str, Mapping[str, str]]]:
        """Firing alerts not watched as heartbeats, but those whose fingerprint starts with
        ``except_prefix`` (the daemon's own): (fingerprint, labels)."""
        ...

    async def watch_heartbeats(
        self, found: Sequence[tuple[str, Mapping[str, str]]], now: datetime, signature: str
    ) -> None:
        """Watch these firing alerts, which the rules with this signature call heartbeats."""
        ...

    async def list_alerts(self, query: AlertQuery) -> list[StoredAlert]:
        """Newest first."""
        ...

    # -- incidents: the engine's side ---------------------------------------------------------
    async def due_escalations(self, now: datetime, limit: int = 200) -> list[EscalationWork]:
        """Incidents whose ``next_due`` has come, with the steps already done."""
        ...

    async def apply_escalation(
        self,
        incident_id: int,
        version: int,
        steps: Sequence[StepDone],
        events: Sequence[TimelineEvent],
        next_due: datetime | None,
        now: datetime,
        *,
        unsnooze: bool = False,
    ) -> list[str] | None:
        """Record steps once each, with their pages and events, and the next due time, in one
        transaction; None (nothing written) when the incident changed since it was read."""
        ...

    async def apply_escalations(
        self, batch: Sequence[EscalationUpdate], now: datetime
    ) -> list[list[str] | None]:
        """``apply_escalation`` for a whole pass in one transaction; one result each."""
        ...

    async def next_escalation(self) -> datetime | None:
        """The earliest ``next_due`` of any incident."""
        ...

    async def rearm_open_incidents(
        self,
        now: datetime,
        renumber: Mapping[str | None, Mapping[int, int | None]] = {},
        gone: Mapping[str | None, bool] = {},
        default_policy: str | None = None,
        *,
        layout: str | None = None,
    ) -> int:
        """Every open incident is due now: the policies changed (a reload), and the times
        their next steps were due under the old ones no longer hold. ``renumber``: for a
        policy whose levels moved (by name; None for incidents on the default policy), old
        level number to new, None for a level that is gone; the steps done are renamed in
        the same transaction. ``gone``: policies the reload removed (None: the default
        changed), whose open incidents go on under ``default_policy``; True: from its first
        level if nobody acknowledged them, False: where they were (the same levels, renamed;
        ``renumber`` holds their moves under the old name). A timeline entry
        ``policy_gone`` says so. ``layout`` (``EscalationLayout.to_json``), when given, is
        kept as the layout the incidents are now armed under, in the same transaction.
        Returns how many incidents were re-armed."""
        ...

    async def escalation_layout(self) -> str | None:
        """The layout last kept by ``rearm_open_incidents``; None before the first."""
        ...

    async def claim_admin_notice(self, kind: str, now: datetime, every: timedelta) -> bool:
        """Whether the administrators' notice ``kind`` may be sent now: it was not sent in
        the last ``every``. If so, it is recorded as sent now, durably, before it goes (a
        restart does not send it again; a crash during the send loses that one copy). A
        time recorded later than ``now`` (the clock stepped back) does not hold it."""
        ...

    async def release_admin_notice(self, kind: str, claimed_at: datetime) -> None:
        """Give back the claim ``claim_admin_notice`` made at ``claimed_at``: the notice
        was not sent, and the next claim may send it. A later claim stays."""
        ...

    async def next_page(self, busy: Collection[tuple[str, str, str]] = ()) -> datetime | None:
        """The earliest due time of a queued page, leaving out the ``busy`` contact methods
        (as ``claim_pages`` does: their pages wait for the message in progress)."""
        ...

    # -- incidents: people's side -------------------------------------------------------------
    async def transition(
        self,
        incident_id: int,
        action: str,
        *,
        actor: str,
        via: str,
        now: datetime,
        until: datetime | None = None,
        text: str | None = None,
        assignee: str | None = None,
        pages: Sequence[NewPage] = (),
        once_only: Callable[[str | None], Collection[str]] | None = None,
        expect: Callable[[Incident], None] | None = None,
        taking: str | None = None,
        answer: Callable[[Incident, bool], str | None] | None = None,
        resume: Callable[[Incident, frozenset[str], datetime], Sequence[StepDone]] | None = None,
    ) -> tuple[Incident, bool]:
        """acknowledge, unacknowledge, resolve, snooze, unsnooze, reassign or note; raises
        ``IncidentNotFound`` or ``TransitionError``. ``once_only``: for an incident's
        policy, the steps an unacknowledge must not do again (they stay done in the new
        episode). ``resume(incident, done, end)``: the steps an unsnooze records at once
        (the snooze's reminder), given the steps done in the episode and the snooze's end.
        ``expect`` sees the incident as the write finds it and raises to refuse
        the action (an email link's trigger), so nothing can change in between.
        ``taking``: the Twilio request (its sid) that asks for the action, recorded as
        taken in the same write (``take_twilio_request``), so a crash keeps both or
        neither; with ``answer(incident, changed)``, its answer too, for Twilio's retry
        after a crash before the answer went out."""
        ...

    async def twilio_request(self, sid: str) -> TakenRequest | None:
        """The signed Twilio request ``sid`` (MessageSid, CallSid) if it was taken."""
        ...

    async def take_twilio_request(self, sid: str, now: datetime, answer: str | None) -> None:
        """Record the Twilio request ``sid`` as taken now with ``answer``; one recorded by
        the write that acted on it keeps its time and gets the answer."""
        ...

    async def get_incident(self, incident_id: int) -> Incident: ...

    async def incident_details(
        self, incident_id: int
    ) -> tuple[Incident, list[StoredAlert], list[TimelineEvent], list[Page]]: ...

    async def list_incidents(
        self,
        states: Sequence[str] = (),
        since: datetime | None = None,
        limit: int = 500,
        *,
        category: str | None = None,
        started_since: datetime | None = None,
        before_id: int | None = None,
    ) -> list[Incident]:
        """Newest first (by id); ``category="drill"`` for the drills. ``since``: opened at
        or after it; ``started_since``: with a trigger that started at or after it (a
        re-fire of an incident opened before counts); ``before_id``: only older incidents,
        the next page."""
        ...

    async def open_incident_ids(self) -> list[int]:
        """Every incident not resolved (drills included)."""
        ...

    async def trigger_events(
        self, incident_ids: Sequence[int], kinds: Sequence[str]
    ) -> dict[int, list[TimelineEvent]]:
        """The timeline entries of ``kinds`` of these incidents, each incident's in time
        order: what the triggers before its current one are read from."""
        ...

    # -- the outbox ---------------------------------------------------------------------------
    async def claim_pages(
        self, now: datetime, limit: int = 50, busy: Collection[tuple[str, str, str]] = ()
    ) -> list[Page]:
        """Due queued pages, marked ``sending`` durably before they are returned; none for
        the ``busy`` (contact, channel, address) methods, whose pages would only wait, marked
        as sending, for the message in progress (a crash would make their outcome unknown)."""
        ...

    async def finish_page(
        self,
        page_id: int,
        state: PageState,
        now: datetime,
        *,
        provider_id: str | None = None,
        error: str | None = None,
        retry_at: datetime | None = None,
        reroute: Reroute | None = None,
    ) -> int:
        """Record the outcome; with ``retry_at`` the page is queued again for then. With
        ``reroute``, in the same transaction, the pages it gives are queued; returns how
        many were new. A page cancelled meanwhile stays cancelled, and one that lost its
        point while it was out of the queue (its contact acknowledged, an acknowledgement
        since undone) is not re-routed, and cancelled instead of queued for a retry."""
        ...

    async def finish_pages(
        self, page_ids: Sequence[int], state: PageState, now: datetime, *, provider_id: str
    ) -> None:
        """The outcome of one message that carried several pages (a bundle), recorded for
        all of them in one transaction."""
        ...

    async def get_page(self, page_id: int) -> Page | None: ...

    async def pages_by_provider_id(self, provider_id: str) -> list[Page]:
        """The pages a provider id (Twilio MessageSid/CallSid) was returned for: one, or
        every page of a bundle."""
        ...

    async def unconfirmed_sends(self, channel: str, since: datetime) -> list[Page]:
        """Pages of ``channel`` sent since ``since`` that the provider took (they have its
        id) and has not said the fate of yet (still ``sent``), oldest first."""
        ...

    async def step_pages(self, incident_id: int, episode: int, step: str) -> list[Page]:
        """Every page of one step, failovers included."""
        ...

    async def provider_status(
        self,
        page_id: int,
        state: PageState,
        error: str | None,
        now: datetime,
        reroute: Reroute | None = None,
    ) -> bool:
        """A status callback's outcome for a sent page; False if the page had moved on.
        A page that failed is re-routed by ``reroute`` in the same transaction."""
        ...

    async def add_pages(
        self,
        incident_id: int,
        episode: int,
        pages: Sequence[NewPage],
        event: TimelineEvent | None,
        now: datetime,
    ) -> int:
        """Queue pages outside the engine (failover, drills); returns how many were new."""
        ...

    async def open_incidents_paged_to(self, contacts: Sequence[str]) -> list[tuple[Incident, str]]:
        """Open incidents whose pages or status updates of their current trigger reached any
        of ``contacts`` (sent, or maybe sent), the one told of last first, each with the
        contact of those told of it last."""
        ...

    async def trigger_told(
        self, contacts: Sequence[str], incident_id: int
    ) -> tuple[datetime, str] | None:
        """When the latest trigger of the incident (``Incident.started``) that a page or
        status update told any of ``contacts`` of began (sent, or maybe sent), and which of
        them was told of it last; None if none was."""
        ...

    async def send_times(
        self, contact: str, channel: str, since: datetime, *, without_tests: bool = False
    ) -> list[datetime]:
        """When messages went to one contact method since a time (a bundle counts once);
        ``without_tests``: not those that carried only drill pages."""
        ...

    async def paid_send_times(self, since: datetime) -> list[datetime]:
        """When each SMS and call since a time was sent (a bundle once), oldest first: the
        spend budget's window, read once at start and kept in memory after."""
        ...

    async def readdress_pages(self, page_ids: Sequence[int], address: str, now: datetime) -> None:
        """Claimed pages go to ``address``, their contact's for the channel in the config in
        force (a reload corrected it since they were queued): the rows show where they went."""
        ...

    async def hand_over(self, page_ids: Sequence[int], now: datetime) -> list[int]:
        """The claimed pages of one message go to their channel now: from here on an
        interruption leaves their outcome unknown (``recover_sending``). First, in the same
        transaction, each is checked against its incident as it is now: one that lost its
        point since it was claimed (acknowledged, snoozed, resolved, fired again, its
        contact acknowledged or relieved by a reassignment: the rules that cancel queued
        pages, also when a later change undid the first, an unacknowledge) is cancelled.
        Returns the pages not handed over (cancelled now or before); when there are any,
        none was, and the message made with them must be made again without them."""
        ...

    async def retry_channel_now(self, channel: str, now: datetime) -> int:
        """The pages queued on ``channel`` for a retry (a failed attempt, not a first send
        held by a limit) are due ``now``; returns how many."""
        ...

    async def hold_pages(
        self,
        page_ids: Sequence[int],
        until: datetime,
        reason: str,
        now: datetime,
        reroute: tuple[Reroute, Collection[int]] | None = None,
    ) -> None:
        """Return claimed pages to the queue until a limit allows them; ``reroute`` (and
        the pages it is for) re-routes some of them in the same transaction."""
        ...

    async def create_drill(
        self, title: str, pages: Sequence[NewPage], actor: str, now: datetime, via: str = "api"
    ) -> int:
        """Open a drill incident with its test pages; returns its id. ``via``: how it was
        started (``api``, which the CLI uses too, or ``schedule``), for its timeline."""
        ...

    async def page_context(
        self, incident_id: int
    ) -> tuple[Incident, tuple[dict[str, str], dict[str, str], dict[str, Any]] | None, str | None]:
        """What a page's message needs, in one read: the incident, its first alert's labels,
        annotations and classification, and why containment failed (if it did)."""
        ...

    async def queue_depth(self) -> int:
        """Pages waiting in the outbox."""
        ...

    async def recover_sending(
        self,
        now: datetime,
        reroute: Reroute | None = None,
        *,
        page_ids: Sequence[int] | None = None,
        retry_at: datetime | None = None,
        exclude: Collection[int] = (),
    ) -> list[Page]:
        """Settle pages left in ``sending``: at start, all that a crash left (but those in
        ``exclude``, claimed since by this daemon: a start whose first try failed goes on
        delivering); during a run, ``page_ids``, whose delivery failed midway (a store
        error). A page never handed to
        its channel goes back to the queue (due at ``retry_at`` if later); one handed over
        is failed, "outcome unknown", re-routed by ``reroute`` in the same transaction, and
        returned (docs/incidents.md)."""
        ...

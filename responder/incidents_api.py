"""Incidents through the authenticated JSON API, and ``act``: the one function every door
(API, CLI, SMS reply, voice keypress, email link) uses to acknowledge, resolve, snooze,
unsnooze, reassign or annotate an incident, so each is recorded, counted and woken the same
way."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from responder.api import BadQuery, authenticated, cut_page, iso, page_query
from responder.escalate import count_step, snooze_ended_by_hand
from responder.incident import (
    Incident,
    IncidentNotFound,
    IncidentState,
    NewPage,
    Page,
    PageKind,
    StateConflict,
    StepDone,
    TimelineEvent,
    TransitionError,
)
from responder.ingest import json_error, read_json_object
from responder.model import DRILL_CATEGORY
from responder.policy import once_only_steps
from responder.report import TRIGGER_EVENTS, trigger_document, trigger_history
from responder.runtime import RUNTIME, Runtime
from responder.store import StoredAlert, StoreError, row_id
from responder.yamlfile import parse_duration

ACTIONS = ("acknowledge", "unacknowledge", "resolve", "snooze", "unsnooze", "reassign", "note")
MAX_TEXT = 2000
MAX_SNOOZE = timedelta(days=7)


class RearmPending(StoreError):
    """An unsnooze while a reload's re-arm of the open incidents is not written yet: it
    would page by the old levels' numbering. Retried by the daemon every few seconds."""


async def act(
    runtime: Runtime,
    incident_id: int,
    action: str,
    *,
    actor: str,
    via: str,
    until: datetime | None = None,
    text: str | None = None,
    assignee: str | None = None,
    expect: Callable[[Incident], None] | None = None,
    taking: str | None = None,
    answer: Callable[[Incident, bool], str | None] | None = None,
) -> tuple[Incident, bool]:
    """Apply a person's action; raises IncidentNotFound, TransitionError or StoreError, or
    what ``expect`` raises: it sees the incident as the write finds it. ``taking``: the
    signed Twilio request asking for it, recorded as taken in the same write, with
    ``answer(incident, changed)``: what the request is answered."""
    now = runtime.clock.now()
    pages: list[NewPage] = []
    if action == "reassign":
        if assignee is None:
            raise TransitionError("reassign needs a contact")
        pages = reassign_pages(runtime, assignee, now)
    escalation = runtime.snapshot.escalation
    if action == "unsnooze" and runtime.rearm_pending:
        # The steps stored may still name the old policies' levels: the reminder would
        # page whoever the new numbering puts there. The re-arm is retried every 5 s.
        raise RearmPending("escalation is being re-armed for the new policies; try again shortly")

    def once_only(policy: str | None) -> frozenset[str]:
        return once_only_steps(escalation.policy_for(policy))

    resumed: list[StepDone] = []

    def resume(incident: Incident, done: frozenset[str], end: datetime) -> list[StepDone]:
        resumed[:] = snooze_ended_by_hand(escalation, incident, done, end)
        return resumed

    incident, changed = await runtime.store.transition(
        incident_id,
        action,
        actor=actor,
        via=via,
        now=now,
        until=until,
        text=text,
        assignee=assignee,
        pages=pages,
        once_only=once_only,
        expect=expect,
        taking=taking,
        answer=answer,
        resume=resume,
    )
    if changed and incident.category != DRILL_CATEGORY:
        # A drill's answers are its result (GET /api/v1/drills/ID), not work on incidents.
        runtime.metrics.incident_actions.labels(action, via).inc()
    if changed:
        for step in resumed:  # recorded with the unsnooze, as the engine's steps are counted
            count_step(runtime.metrics, step, incident, now)
        first = incident.first_acknowledged_at
        # The first acknowledgement since the trigger (not one after an unacknowledge; a
        # drill's, each contact's answer, stays out of the figures as in the report).
        if (
            action == "acknowledge"
            and first is not None
            and first == incident.acknowledged_at
            and incident.category != DRILL_CATEGORY
        ):
            took = (first - incident.started).total_seconds()
            runtime.metrics.time_to_acknowledge.labels(incident.severity).observe(took)
        runtime.wake_engine()
    return incident, changed


def reassign_pages(runtime: Runtime, contact: str, now: datetime) -> list[NewPage]:
    """The new owner is paged at once through their own notification rules."""
    directory = runtime.snapshot.escalation.directory
    if contact not in directory.contacts:
        known = ", ".join(sorted(directory.contacts)) or "none defined"
        raise TransitionError(f"unknown contact {contact!r} (known: {known})")
    reached, rules = directory.reachable(contact)
    pages: list[NewPage] = []
    for rule in rules:
        address = directory.contacts[reached].address(rule.channel)
        if address is None:
            continue
        pages.append(
            NewPage(
                "A",
                PageKind.PAGE,
                reached,
                rule.channel.value,
                address,
                now + rule.after,
                directory.backup_of(reached),
                cancel_on_ack=False,
            )
        )
    return pages


# -- documents ---------------------------------------------------------------------------------


def incident_document(incident: Incident) -> dict[str, Any]:
    target = None
    if incident.respond_s is not None and incident.resolve_s is not None:
        target = {"respondSeconds": incident.respond_s, "resolveSeconds": incident.resolve_s}
    return {
        "id": incident.id,
        "key": incident.key,
        "state": incident.state.value,
        "severity": incident.severity,
        "category": incident.category,
        "policy": incident.policy,
        "rule": incident.rule,
        "title": incident.title,
        "target": target,
        "openedAt": iso(incident.opened_at),
        "triggeredAt": iso(incident.triggered_at),
        "startedAt": iso(incident.started),
        "episode": incident.episode,
        "acknowledgedAt": iso(incident.acknowledged_at),
        "acknowledgedBy": incident.acknowledged_by,
        "firstAcknowledgedAt": iso(incident.first_acknowledged_at),
        "firstAcknowledgedBy": incident.first_acknowledged_by,
        "resolvedAt": iso(incident.resolved_at),
        "resolvedBy": incident.resolved_by,
        "snoozedUntil": iso(incident.snoozed_until),
        "assignee": incident.assignee,
        "nextDue": iso(incident.next_due),
        "alertCount": incident.alert_count,
        "firingCount": incident.firing_count,
    }


def _event_document(event: TimelineEvent) -> dict[str, Any]:
    return {
        "at": iso(event.at),
        "kind": event.kind.value,
        "actor": event.actor,
        "via": event.via,
        "detail": event.detail,
    }


def _page_document(page: Page) -> dict[str, Any]:
    return {
        "id": page.id,
        "step": page.step,
        "kind": page.kind.value,
        "contact": page.contact,
        "channel": page.channel,
        "address": page.address,
        "backup": page.backup,
        "state": page.state.value,
        "dueAt": iso(page.due_at),
        "sentAt": iso(page.sent_at),
        "attempts": page.attempts,
        "providerId": page.provider_id,
        "error": page.error,
        "episode": page.episode,
    }


def _alert_summary(alert: StoredAlert) -> dict[str, Any]:
    return {
        "id": alert.id,
        "fingerprint": alert.fingerprint,
        "status": alert.status.value,
        "labels": alert.labels,
        "annotations": alert.annotations,
        "startsAt": iso(alert.starts_at),
        "endsAt": iso(alert.ends_at),
    }


# -- handlers ----------------------------------------------------------------------------------


def _incident_id(request: web.Request) -> int:
    value = row_id(request.match_info["id"])
    if value is None:
        raise web.HTTPNotFound(text="incident ids are whole numbers")
    return value


@authenticated
async def list_incidents(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/incidents?state=triggered,acknowledged&since=2026-11-01T00:00:00Z&limit=100
    &before=ID

    Newest first (by id), a page at a time as the alerts are (``cut_page``)."""
    runtime = request.app[RUNTIME]
    states: list[str] = []
    for value in request.query.getall("state", []):
        for part in value.split(","):
            part = part.strip()
            if part == "open":
                states += ["triggered", "acknowledged", "snoozed"]
                continue
            if part not in {s.value for s in IncidentState}:
                return json_error(400, f"state: expected open or one of {_STATES}, got {part!r}")
            states.append(part)
    try:
        limit, before = page_query(request.query, "an incident")
    except BadQuery as exc:
        return json_error(400, str(exc))
    times: dict[str, datetime | None] = {"since": None, "startedSince": None}
    for name in times:
        if name not in request.query:
            continue
        try:
            times[name] = moment = datetime.fromisoformat(request.query[name])
        except ValueError:
            return json_error(400, f"{name}: expected an ISO 8601 time")
        if moment.tzinfo is None:
            return json_error(400, f"{name}: needs a time zone (e.g. Z)")
    try:
        incidents = await runtime.store.list_incidents(
            states,
            times["since"],
            limit + 1,
            started_since=times["startedSince"],
            before_id=before,
        )
        answer: dict[str, Any] = {"status": "ok"}
        incidents = cut_page(incidents, limit, answer)
        if answer["more"]:  # what `more` says, under its name before `more` came
            answer["truncated"] = True
        # Only an incident that resolved and fired again has had earlier triggers.
        refired = [i.id for i in incidents if i.started > i.opened_at]
        events = await runtime.store.trigger_events(refired, sorted(TRIGGER_EVENTS))
    except StoreError as exc:
        return json_error(503, f"store unavailable: {exc}")
    answer["data"] = [
        incident_document(i) | {"earlierTriggers": _earlier_triggers(i, events.get(i.id, []))}
        for i in incidents
    ]
    return web.json_response(answer)


def _earlier_triggers(incident: Incident, events: list[TimelineEvent]) -> list[dict[str, Any]]:
    """The incident's triggers before its current one, from its timeline, as the metrics
    observed them: what the period report counts besides the current trigger."""
    history = trigger_history([_event_document(e) for e in events], incident.started)
    return [trigger_document(t) for t in history]


_STATES = ", ".join(s.value for s in IncidentState)


@authenticated
async def get_incident(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/incidents/{id}: the incident with its alerts, timeline and pages."""
    runtime = request.app[RUNTIME]
    try:
        incident, alerts, timeline, pages = await runtime.store.incident_details(
            _incident_id(request)
        )
    except IncidentNotFound as exc:
        return json_error(404, str(exc))
    except StoreError as exc:
        return json_error(503, f"store unavailable: {exc}")
    document = incident_document(incident)
    document["earlierTriggers"] = _earlier_triggers(incident, timeline)
    document["alerts"] = [_alert_summary(a) for a in alerts]
    document["timeline"] = [_event_document(e) for e in timeline]
    document["pages"] = [_page_document(p) for p in pages]
    return web.json_response({"status": "ok", "data": document})


def _text_field(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise TransitionError(f"{name}: expected non-empty text")
    if len(value) > MAX_TEXT:
        raise TransitionError(f"{name}: at most {MAX_TEXT} characters")
    return value.strip()


def _until(body: dict[str, Any], now: datetime) -> datetime | None:
    if "until" in body:
        text = body["until"]
        try:
            until = datetime.fromisoformat(text) if isinstance(text, str) else None
        except ValueError:
            until = None
        if until is None or until.tzinfo is None:
            raise TransitionError("until: expected an ISO 8601 time with a time zone")
    elif "for" in body:
        text = body["for"]
        try:
            until = now + parse_duration(str(text))
        except ValueError as exc:
            raise TransitionError(f"for: {exc}") from None
    else:
        return None
    if until - now > MAX_SNOOZE:
        raise TransitionError("a snooze lasts at most 7 days")
    return until


@authenticated
async def incident_action(request: web.Request) -> web.StreamResponse:
    """POST /api/v1/incidents/{id}/{action} with an optional JSON body:
    {"by": "alice", "text": "...", "for": "30m" | "until": "...", "to": "bob", "via": "cli"}"""
    runtime = request.app[RUNTIME]
    action = request.match_info["action"]
    if action not in ACTIONS:
        return json_error(404, f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
    body = await read_json_object(request)
    try:
        actor = _text_field(body, "by") or "api"
        via = body.get("via") if body.get("via") in ("api", "cli") else "api"
        incident, changed = await act(
            runtime,
            _incident_id(request),
            action,
            actor=actor[:100],
            via=str(via),
            until=_until(body, runtime.clock.now()),
            text=_text_field(body, "text"),
            assignee=_text_field(body, "to"),
        )
    except IncidentNotFound as exc:
        return json_error(404, str(exc))
    except TransitionError as exc:
        # Told by type, not by text: a field's message may hold any words ("... is too long").
        return json_error(409 if isinstance(exc, StateConflict) else 400, str(exc))
    except RearmPending as exc:
        return json_error(503, str(exc))
    except StoreError as exc:
        return json_error(503, f"store unavailable: {exc}")
    return web.json_response(
        {"status": "ok", "changed": changed, "data": incident_document(incident)}
    )


@authenticated
async def oncall(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/oncall?at=TIME: who is on call per schedule."""
    runtime = request.app[RUNTIME]
    at = runtime.clock.now()
    if "at" in request.query:
        try:
            at = datetime.fromisoformat(request.query["at"])
        except ValueError:
            return json_error(400, "at: expected an ISO 8601 time")
        if at.tzinfo is None:
            return json_error(400, "at: needs a time zone (e.g. Z)")
    directory = runtime.snapshot.escalation.directory
    data = {name: list(directory.on_call(name, at)) for name in sorted(directory.schedules)}
    return web.json_response({"status": "ok", "at": iso(at), "data": data})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/v1/incidents", list_incidents)
    router.add_get("/api/v1/incidents/{id}", get_incident)
    router.add_post("/api/v1/incidents/{id}/{action}", incident_action)
    router.add_get("/api/v1/oncall", oncall)

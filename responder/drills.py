"""Drills: prove that the paging path reaches people, before a real incident has to.

A drill sends a clearly marked test page through every channel of the chosen contacts (a
policy's, or named ones, or everyone), at once and ignoring rate limits' delays only as far
as the limits allow, and records who acknowledged through what and how fast. It is an
incident of category ``drill`` that never escalates, so its answers arrive through the usual
doors (SMS reply, voice keypress, email link, API, CLI) and its result is its timeline.
A scheduled drill (``drills.every``) runs on its own; results stay in the store.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from responder.api import authenticated, iso
from responder.directory import Channel, Directory
from responder.escalate import EscalationConfig
from responder.incident import Incident, NewPage, PageKind
from responder.incidents_api import incident_document
from responder.ingest import json_error, read_json_object
from responder.log import fields
from responder.model import DRILL_CATEGORY
from responder.report import drill_results
from responder.runtime import RUNTIME, Runtime, in_background
from responder.store import StoreError, row_id

log = logging.getLogger("responder.drills")

DRILL_STEP = "D"


def drill_contacts(
    escalation: EscalationConfig, policy: str | None, contacts: Sequence[str], at: datetime
) -> list[str]:
    """Who a drill pages: the named contacts, everyone a policy's levels reach right now, or
    (with neither) every contact."""
    directory = escalation.directory
    if contacts:
        unknown = [c for c in contacts if c not in directory.contacts]
        if unknown:
            raise ValueError(f"unknown contact(s): {', '.join(unknown)}")
        return list(dict.fromkeys(contacts))
    if policy is not None:
        if policy not in escalation.policies:
            raise ValueError(f"unknown escalation policy {policy!r}")
        names: list[str] = []
        for level in escalation.policies[policy].levels:
            for target in level.targets:
                names.extend(directory.expand(target, at))
        return list(dict.fromkeys(names))
    return sorted(directory.contacts)


def drill_pages(directory: Directory, contacts: Sequence[str], at: datetime) -> list[NewPage]:
    """One test page on every channel a contact has an address for, not only the channels of
    their notification rules: a drill finds the number that stopped working before a page does."""
    pages: list[NewPage] = []
    for name in contacts:
        contact = directory.contacts[name]
        for channel in Channel:
            address = contact.address(channel)
            if address is not None:
                pages.append(
                    NewPage(
                        DRILL_STEP, PageKind.TEST, name, channel.value, address, at, None, False
                    )
                )
    return pages


async def start_drill(
    runtime: Runtime,
    *,
    policy: str | None,
    contacts: Sequence[str],
    actor: str,
    via: str = "api",
) -> int:
    now = runtime.clock.now()
    escalation = runtime.snapshot.escalation
    names = drill_contacts(escalation, policy, contacts, now)
    pages = drill_pages(escalation.directory, names, now)
    if not escalation.directory.contacts:
        raise ValueError("nobody to drill: no contacts are configured (contacts: in the config)")
    if not pages:
        raise ValueError("nobody to drill: the chosen contacts have no channel")
    title = "DRILL: test page, please acknowledge"
    incident_id = await runtime.store.create_drill(title, pages, actor, now, via)
    for page in pages:
        runtime.metrics.pages_queued.labels(page.channel, page.kind.value).inc()
    runtime.metrics.drills.inc()
    runtime.wake_engine()
    log.info("drill started", extra=fields(incident=incident_id, contacts=names))
    return incident_id


# -- HTTP --------------------------------------------------------------------------------------


@authenticated
async def post_drill(request: web.Request) -> web.StreamResponse:
    """POST /api/v1/drills {"policy": "standard"} or {"contacts": ["alice"]}; {} is everyone."""
    runtime = request.app[RUNTIME]
    body = await read_json_object(request)
    policy = body.get("policy")
    contacts = body.get("contacts") or []
    if policy is not None and not isinstance(policy, str):
        return json_error(400, "policy: expected a name")
    if not isinstance(contacts, list) or not all(isinstance(c, str) for c in contacts):
        return json_error(400, "contacts: expected a list of names")
    by = str(body["by"])[:100] if isinstance(body.get("by"), str) else "api"
    try:
        incident_id = await start_drill(runtime, policy=policy, contacts=contacts, actor=by)
    except ValueError as exc:
        return json_error(400, str(exc))
    except StoreError as exc:
        return json_error(503, f"store unavailable: {exc}")
    return web.json_response({"status": "ok", "data": {"id": incident_id}})


async def _drill_document(runtime: Runtime, incident: Incident) -> dict[str, Any]:
    _, _, timeline, pages = await runtime.store.incident_details(incident.id)
    document = incident_document(incident)
    document["timeline"] = [
        {"at": iso(e.at), "kind": e.kind.value, "actor": e.actor, "via": e.via} for e in timeline
    ]
    document["pages"] = [
        {"contact": p.contact, "channel": p.channel, "state": p.state.value} for p in pages
    ]
    return document


@authenticated
async def list_drills(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/drills: the latest drills with who answered through what and how fast."""
    runtime = request.app[RUNTIME]
    try:
        drills = await runtime.store.list_incidents(limit=50, category=DRILL_CATEGORY)
        results = [drill_results(await _drill_document(runtime, i)) for i in drills]
    except StoreError as exc:
        return json_error(503, f"store unavailable: {exc}")
    return web.json_response({"status": "ok", "data": results})


@authenticated
async def get_drill(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    drill_id = row_id(request.match_info["id"])
    if drill_id is None:
        return json_error(404, "no such drill")
    try:
        incident = await runtime.store.get_incident(drill_id)
    except LookupError:
        return json_error(404, "no such drill")
    if incident.category != DRILL_CATEGORY:
        return json_error(404, "no such drill")
    return web.json_response(
        {"status": "ok", "data": drill_results(await _drill_document(runtime, incident))}
    )


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/api/v1/drills", post_drill)
    router.add_get("/api/v1/drills", list_drills)
    router.add_get("/api/v1/drills/{id}", get_drill)


# -- the schedule ------------------------------------------------------------------------------


async def scheduled_drills(app: web.Application) -> AsyncIterator[None]:
    """Run ``drills.every``: the next drill is due that long after the last one (any kind)."""
    runtime = app[RUNTIME]

    async def loop() -> None:
        while True:
            schedule = runtime.snapshot.escalation.drills
            now = runtime.clock.now()
            wait_until = now + timedelta(minutes=10)
            if schedule is not None:
                try:
                    # However many incidents came since: a storm must not make it look overdue.
                    latest = await runtime.store.list_incidents(limit=1, category=DRILL_CATEGORY)
                    last = latest[0].opened_at if latest else None
                    due = now if last is None else last + schedule.every
                    if due <= now:
                        await start_drill(
                            runtime,
                            policy=schedule.policy,
                            contacts=schedule.contacts,
                            actor="schedule",
                            via="schedule",
                        )
                        due = now + schedule.every
                    wait_until = min(wait_until, due)
                except (StoreError, ValueError):
                    log.exception("scheduled drill failed; trying again later")
            await runtime.clock.sleep_until(wait_until)

    async with in_background(loop(), "drills"):
        yield

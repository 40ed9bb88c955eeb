"""Turning outbox rows into messages: the incident and its first alert from the store, the
templates of the config in force, and the signed acknowledge link for email."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from notifiers.base import Message
from responder import links
from responder.incident import Incident, IncidentState, Page, PageKind
from responder.log import fields
from responder.messages import BundleItem, Kind, Templates, context_for, kind_for_page
from responder.secrets import Secret
from responder.store import Store

log = logging.getLogger("responder.compose")


# What a bundle tells of an incident with several of its pages in it: that it is over, else
# that it is news (a page), else how it stands (a status update).
_TELLING_ORDER = {PageKind.TEST: 0, PageKind.STATUS: 1, PageKind.PAGE: 2, PageKind.RECOVERY: 3}


class Composer:
    def __init__(
        self,
        store: Store,
        now: Callable[[], datetime],
        templates: Callable[[], Templates],
        *,
        public_url: str | None,
        link_secret: Secret,
        contact_zone: Callable[[str], Any] = lambda _name: None,
    ) -> None:
        self._store = store
        self._now = now
        self._templates = templates
        self._public_url = public_url
        self._secret = link_secret
        self._contact_zone = contact_zone
        # The install's mark on its messages (Message.origin), from its own secret.
        self._origin = hmac.new(
            link_secret.value.encode(), b"message origin", hashlib.sha256
        ).hexdigest()[:16]

    def _ack_url(self, page: Page, incident: Incident) -> str | None:
        if self._public_url is None or page.channel not in ("email", "webhook"):
            return None
        if incident.state is IncidentState.RESOLVED or page.kind is PageKind.RECOVERY:
            return None
        return links.ack_url(self._public_url, self._secret, page, self._now())

    async def page(self, page: Page) -> Message:
        incident, first, failure = await self._store.page_context(page.incident_id)
        labels, annotations, classification = first or ({}, {}, {})
        labels = {**labels, **classification.get("labels", {})}
        annotations = {**annotations, **classification.get("annotations", {})}
        if page.kind is PageKind.PAGE and failure:
            # The page says what containment tried and how it failed.
            summary = annotations.get("summary", "")
            annotations["summary"] = f"Containment failed: {failure}. {summary}".strip()
        kind = kind_for_page(page.kind)
        ack_url = self._ack_url(page, incident)
        context = context_for(
            page,
            incident,
            now=self._now(),
            labels=labels,
            annotations=annotations,
            contact_timezone=self._contact_zone(page.contact),
            ack_url=ack_url,
            public_url=self._public_url,
        )
        chosen = (classification.get("templates") or {}).get(kind.value)
        rendered = self._templates().render(kind, page.channel, context, template_set=chosen)
        if rendered.problem is not None:
            log.error(
                "template failed; the default text was sent",
                extra=fields(page=page.id, problem=rendered.problem),
            )
        return Message(
            channel=page.channel,
            to=page.address,
            text=rendered.text,
            subject=rendered.subject,
            html=rendered.html,
            thread_id=f"incident-{incident.id}",
            idempotency_key=f"page-{page.id}",
            # The incident's first page; level 1 of a later episode (after an unacknowledge)
            # replies to it: a second root would repeat its Message-ID, and be dropped.
            thread_start=page.step == "L1" and page.kind is PageKind.PAGE and page.episode == 1,
            origin=self._origin,
            data={
                "incident": incident.id,
                "step": page.step,
                "kind": page.kind.value,
                # A webhook's receiver (a chat bot) can offer the signed link as a button.
                **({"ack_url": ack_url} if ack_url else {}),
            },
        )

    async def bundle(self, pages: Sequence[Page]) -> Message:
        first = pages[0]
        incidents: dict[int, Incident] = {}
        # What the bundle tells of each incident (_TELLING_ORDER): a resolved incident is
        # no news to acknowledge; one never told of is news, whatever else is said of it.
        told: dict[int, Page] = {}
        for page in pages:
            if page.incident_id not in incidents:
                incidents[page.incident_id] = await self._store.get_incident(page.incident_id)
            known = told.get(page.incident_id)
            if known is None or _TELLING_ORDER[page.kind] > _TELLING_ORDER[known.kind]:
                told[page.incident_id] = page
        items = tuple(
            BundleItem(
                i.id,
                i.title,
                i.severity,
                i.category,
                i.state.value,
                i.triggered_at,
                self._ack_url(told[i.id], i),
                kind_for_page(told[i.id].kind).value,
                i.started,
            )
            for i in incidents.values()
        )
        lead = next(iter(incidents.values()))
        context = context_for(
            first,
            lead,
            now=self._now(),
            labels={},
            annotations={},
            contact_timezone=self._contact_zone(first.contact),
            public_url=self._public_url,
            items=items,
        )
        rendered = self._templates().render(Kind.BUNDLE, first.channel, context)
        return Message(
            channel=first.channel,
            to=first.address,
            text=rendered.text,
            subject=rendered.subject,
            html=rendered.html,
            idempotency_key="bundle-" + "-".join(str(p.id) for p in pages),
            origin=self._origin,
            data={"incidents": list(incidents), "kind": "bundle"},
        )

"""Delivery: drain the outbox through the channel adapters in ``notifiers/``.

A page is claimed (marked ``sending``, durably) before the provider is called, so a crash
never sends it twice; at start, pages a crash left in ``sending`` are settled by
``Store.recover_sending`` (the rule is in docs/escalation.md). Retryable errors (timeouts,
429, 5xx) are retried with exponential backoff and jitter up to a limit; permanent ones fail
the page at once. Every page is written to the log as well: the log is the channel of last
resort that always works, and the only one when no provider is configured.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta

from notifiers.base import DeliveryError, Message, Notifier
from responder.clock import Clock
from responder.directory import Directory
from responder.incident import (
    Event,
    Incident,
    IncidentState,
    NewPage,
    Page,
    PageKind,
    PageState,
    TimelineEvent,
)
from responder.log import fields
from responder.metrics import Metrics
from responder.store import Store

log = logging.getLogger("responder.deliver")

MAX_ATTEMPTS = 6
BASE_BACKOFF = timedelta(seconds=15)
MAX_BACKOFF = timedelta(minutes=5)
MAX_SLEEP = timedelta(seconds=30)
# One provider call may not hold the outbox longer than this (twilio ignores its own timeout).
SEND_DEADLINE_S = 30.0

Renderer = Callable[[Page, Incident], Message]


def backoff(attempt: int, rng: random.Random) -> timedelta:
    """Exponential backoff with full jitter: attempt 1 waits up to 15 s, then 30 s, ... 5 min."""
    ceiling = min(BASE_BACKOFF * (1 << min(max(0, attempt - 1), 16)), MAX_BACKOFF)
    return ceiling * (0.5 + rng.random() / 2)


def render_plain(page: Page, incident: Incident, *, ack_url: str | None = None) -> Message:
    """The built-in text of a page; short enough for one or two SMS segments."""
    ref = f"#{page.incident_id}"
    title, severity = incident.title, incident.severity
    if page.kind is PageKind.RECOVERY:
        text = f"RESOLVED {ref} {title}"
        subject = f"[RESOLVED] {ref} {title}"
    elif page.kind is PageKind.STATUS:
        text = f"STATUS {ref} [{severity}] still open: {title}"
        subject = f"[{severity}] {ref} status update: {title}"
    elif page.kind is PageKind.TEST:
        text = f"TEST page from responder (drill {ref}). Reply ACK {page.incident_id}."
        subject = f"[TEST] responder drill {ref}"
    else:
        text = f"[{severity}] {ref} {title}. Reply ACK {page.incident_id} to acknowledge."
        subject = f"[{severity}] {ref} {title}"
    if ack_url is not None:
        text += f"\n\nAcknowledge or resolve: {ack_url}"
    return Message(
        channel=page.channel,
        to=page.address,
        text=text,
        subject=subject,
        thread_id=f"incident-{page.incident_id}",
        idempotency_key=f"page-{page.id}",
        thread_start=page.step == "L1" and page.kind is PageKind.PAGE,
        data={"incident": page.incident_id, "step": page.step, "kind": page.kind.value},
    )


def failover_pages(
    page: Page, siblings: Sequence[Page], directory: Directory, now: datetime
) -> list[NewPage]:
    """Where a failed page goes next: the contact's next unused channel, else every channel of
    the backup contact not yet tried in this step. Empty when the chain is exhausted."""
    used = {(p.contact, p.channel) for p in siblings}
    cancel_on_ack = page.kind is PageKind.PAGE

    def new(contact: str, channel: str, address: str, backup: str | None) -> NewPage:
        return NewPage(page.step, page.kind, contact, channel, address, now, backup, cancel_on_ack)

    contact = directory.contacts.get(page.contact)
    if contact is not None:
        for rule in contact.rules:
            address = contact.address(rule.channel)
            if address is not None and (contact.name, rule.channel.value) not in used:
                return [new(contact.name, rule.channel.value, address, contact.backup)]
    backup_name = page.backup or (contact.backup if contact is not None else None)
    seen: set[str] = {page.contact}
    while backup_name is not None and backup_name in directory.contacts:
        if backup_name in seen:
            return []  # parse_directory refuses circles; a reload race must not loop
        seen.add(backup_name)
        reached, rules = directory.reachable(backup_name)
        backup = directory.contacts[reached]
        pages = [
            new(reached, rule.channel.value, address, backup.backup)
            for rule in rules
            if (address := backup.address(rule.channel)) is not None
            and (reached, rule.channel.value) not in used
        ]
        if pages:
            return pages
        backup_name = backup.backup
    return []


class Dispatcher:
    """Sends due pages; sleeps until the next queued page is due or it is woken."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        metrics: Metrics,
        notifiers: Callable[[], Mapping[str, Notifier]],
        render: Renderer,
        *,
        directory: Callable[[], Directory] | None = None,
        rng: random.Random | None = None,
        batch: int = 50,
    ) -> None:
        self._directory = directory
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._notifiers = notifiers
        self._render = render
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self._batch = batch
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def recover(self) -> int:
        count = await self._store.recover_sending(self._clock.now())
        if count:
            log.warning(
                "pages interrupted while sending were marked failed (outcome unknown)",
                extra=fields(count=count),
            )
        return count

    async def run_once(self) -> int:
        sent = 0
        while True:
            pages = await self._store.claim_pages(self._clock.now(), self._batch)
            if not pages:
                return sent
            await asyncio.gather(*(self._deliver(page) for page in pages))
            sent += len(pages)

    async def _deliver(self, page: Page) -> None:
        m = self._metrics
        log.info(
            "page",
            extra=fields(
                page=page.id,
                incident=page.incident_id,
                step=page.step,
                kind=page.kind.value,
                contact=page.contact,
                channel=page.channel,
                attempt=page.attempts,
            ),
        )
        notifier = self._notifiers().get(page.channel)
        if notifier is None:
            error = f"no {page.channel} channel configured (see channels: in the config)"
            await self._finish(page, PageState.FAILED, error=error)
            m.pages.labels(page.channel, "failed").inc()
            return
        try:
            incident = await self._store.get_incident(page.incident_id)
            message = self._render(page, incident)
            receipt = await asyncio.wait_for(notifier.send(message), SEND_DEADLINE_S)
        except (DeliveryError, TimeoutError) as exc:
            retryable = exc.retryable if isinstance(exc, DeliveryError) else True
            reason = str(exc) or "timed out"
            if retryable and page.attempts < MAX_ATTEMPTS:
                retry_at = self._clock.now() + backoff(page.attempts, self._rng)
                await self._finish(page, PageState.QUEUED, error=reason, retry_at=retry_at)
                m.pages.labels(page.channel, "retry").inc()
                return
            await self._finish(page, PageState.FAILED, error=reason)
            m.pages.labels(page.channel, "failed").inc()
            log.error(
                "page failed",
                extra=fields(page=page.id, incident=page.incident_id, error=reason),
            )
            await self.failover(page, reason)
            return
        except Exception as exc:  # a bug in an adapter must not stop the outbox
            log.exception("page crashed its channel adapter", extra=fields(page=page.id))
            await self._finish(
                page, PageState.FAILED, error=f"internal error: {type(exc).__name__}"
            )
            m.pages.labels(page.channel, "failed").inc()
            return
        await self._finish(page, PageState.SENT, provider_id=receipt.provider_id)
        m.pages.labels(page.channel, "sent").inc()

    async def failover(self, page: Page, reason: str) -> int:
        """Queue the next channel or the backup contact for a page that failed for good."""
        if self._directory is None:
            return 0
        incident = await self._store.get_incident(page.incident_id)
        if page.kind is PageKind.PAGE and incident.state is not IncidentState.TRIGGERED:
            return 0  # someone has it (or it is over): nobody else needs waking
        if page.kind is not PageKind.RECOVERY and incident.state is IncidentState.RESOLVED:
            return 0
        now = self._clock.now()
        siblings = await self._store.step_pages(page.incident_id, page.episode, page.step)
        pages = failover_pages(page, siblings, self._directory(), now)
        if not pages:
            log.error(
                "page failed and nobody is left to fail over to",
                extra=fields(page=page.id, incident=page.incident_id, contact=page.contact),
            )
            self._metrics.pages.labels(page.channel, "exhausted").inc()
            return 0
        detail = {
            "failed_page": page.id,
            "reason": reason,
            "to": [f"{p.contact}/{p.channel}" for p in pages],
        }
        event = TimelineEvent(now, Event.FAILOVER, "responder", page.channel, detail)
        added = await self._store.add_pages(page.incident_id, page.episode, pages, event, now)
        if added:
            for new_page in pages:
                self._metrics.pages_queued.labels(new_page.channel, new_page.kind.value).inc()
            self.wake()
        return added

    async def _finish(
        self,
        page: Page,
        state: PageState,
        *,
        provider_id: str | None = None,
        error: str | None = None,
        retry_at: datetime | None = None,
    ) -> None:
        await self._store.finish_page(
            page.id,
            state,
            self._clock.now(),
            provider_id=provider_id,
            error=error,
            retry_at=retry_at,
        )

    async def run_forever(self) -> None:
        await self.recover()
        while True:
            self._wake.clear()
            try:
                await self.run_once()
                due = await self._store.next_page()
            except Exception:
                log.exception("delivery pass failed; trying again shortly")
                due = None
                await asyncio.sleep(1.0)
            now = self._clock.now()
            until = now + MAX_SLEEP if due is None else min(due, now + MAX_SLEEP)
            if until <= now:
                continue
            sleeper = asyncio.ensure_future(self._clock.sleep_until(until))
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waker.cancel()

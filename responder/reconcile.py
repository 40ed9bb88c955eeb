"""Reconcile: ask Twilio how a sent SMS or call fared when its status callback did not come.

Twilio posts a message's or call's status to the daemon once and never again. A final status
(an SMS ``undelivered`` or ``failed``, a call ``no-answer``, ``busy`` or ``failed``) posted
while the daemon was down, or lost on the way, left a page that never reached anyone
recorded as ``sent``, and nobody was paged in its place. So an SMS or voice page still
``sent`` a while after its send (``CHECK_AFTER``, ``CALL_CHECK_AFTER``), and at start every
such page from before (its callback may have come while the daemon was down), is looked up
through Twilio's REST API, and a final answer is applied exactly as the callback's would be
(``Dispatcher.provider_status``): a failure fails the page over, ``delivered`` (or a call
``completed``) marks it delivered. A message or call still on its way is asked again when
its age has doubled (at most hourly) until ``GIVE_UP_AFTER``. The lookups run in a loop of
their own, one at a time and paced, so they never hold up the outbox and stay far below
Twilio's API limits; when Twilio cannot be reached, they wait and try again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from notifiers.base import DeliveryError, Notifier, StatusLookup
from responder.clock import Clock
from responder.deliver import Dispatcher
from responder.incident import Page
from responder.log import fields
from responder.metrics import Metrics
from responder.store import Store

log = logging.getLogger("responder.reconcile")

# Twilio's callback for a delivered SMS usually comes within seconds, a carrier's verdict
# within a minute or two: a lookup sooner would mostly find the message still on its way.
# Later, an undelivered page would wait longer for its failover, and the next escalation
# level often comes at 15 min.
CHECK_AFTER = timedelta(minutes=5)
# A call that nobody answers ends when Twilio stops ringing (60 s), a busy or failed one
# sooner; an answered page is over within about three minutes (the text said twice, at
# most 1,000 characters, with 5 s waits for the key). A no-answer is what matters most
# here (its failover is the point), so calls are asked sooner than SMS; one still in
# progress then is asked again at twice its age.
CALL_CHECK_AFTER = timedelta(minutes=3)
# A message still on its way is asked again when its age has doubled, at most this far apart
# (some carriers never report delivery: such a message stays "sent" for good).
CHECK_EVERY_AT_MOST = timedelta(hours=1)
# Twilio keeps an SMS queued for at most 10 hours (its validity period), then fails it: by
# this age every message has its final status, or never will. A call ends long before
# (Twilio cuts any call at 4 hours).
GIVE_UP_AFTER = timedelta(hours=12)
# Between two lookups: one at a time, two a second at most (Twilio limits concurrent API
# requests per account; the outbox's own sends must keep their share).
LOOKUP_PAUSE_S = 0.5
# After Twilio refused (429) or could not be reached: the lookups wait this long.
PAUSE_AFTER_FAULT = timedelta(minutes=1)
# The store is read for new sends at least this often.
IDLE = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class _Kind:
    """How the pages of one channel are looked up."""

    check_after: timedelta  # a send's first lookup, counted from the send
    what: str  # for the log: "SMS", "call"


# The channels whose provider posts a status callback that can be lost.
LOOKED_UP = {"sms": _Kind(CHECK_AFTER, "SMS"), "voice": _Kind(CALL_CHECK_AFTER, "call")}


class Reconciler:
    """Looks up the SMS and calls whose final status did not arrive; ``run_once`` is one
    pass."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        metrics: Metrics,
        dispatcher: Dispatcher,
        notifiers: Callable[[], Mapping[str, Notifier]],
        *,
        lookup_pause: float = LOOKUP_PAUSE_S,
    ) -> None:
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._dispatcher = dispatcher
        self._notifiers = notifiers
        self._lookup_pause = lookup_pause
        # The sends the first pass finds are from before the start: their callback may have
        # come while the daemon was down, and they are looked up at once.
        self._started_at = clock.now()
        self._from_before: set[str] | None = None
        self._checked: dict[str, datetime] = {}  # provider id -> its last lookup
        self._unknown: set[str] = set()  # ids the provider does not know: not asked again
        self._failing = False  # lookups fail (Twilio down): said once in the log

    def _due(self, provider_id: str, pages: list[Page]) -> datetime:
        last = self._checked.get(provider_id)
        first = LOOKED_UP[pages[0].channel].check_after
        sent_at = _sent_at(pages)
        if last is None:
            if self._from_before is not None and provider_id in self._from_before:
                return self._started_at
            return sent_at + first
        return last + min(max(last - sent_at, first), CHECK_EVERY_AT_MOST)

    async def run_once(self) -> datetime:
        """Look up what is due; returns when the next lookup is due."""
        now = self._clock.now()
        notifiers = self._notifiers()
        lookups: dict[str, StatusLookup] = {}
        messages: dict[str, list[Page]] = {}  # by provider id (SIDs are unique across both)
        for channel in LOOKED_UP:
            lookup: object = notifiers.get(channel)
            if not isinstance(lookup, StatusLookup):
                continue  # no Twilio channel of this kind: nothing to ask
            lookups[channel] = lookup
            for page in await self._store.unconfirmed_sends(channel, now - GIVE_UP_AFTER):
                if page.provider_id is not None:
                    messages.setdefault(page.provider_id, []).append(page)
        if not lookups:
            return now + IDLE
        # What is final by now, or too old, is forgotten.
        self._checked = {sid: at for sid, at in self._checked.items() if sid in messages}
        self._unknown.intersection_update(messages)
        if self._from_before is None:
            self._from_before = set(messages)
        self._from_before.intersection_update(messages)
        for provider_id in self._unknown:
            del messages[provider_id]
        next_due = now + IDLE
        first = True
        for provider_id, pages in sorted(messages.items(), key=lambda item: self._due(*item)):
            due = self._due(provider_id, pages)
            if due > self._clock.now():
                next_due = min(next_due, due)
                break  # sorted: the others are due later still
            if not first:
                await asyncio.sleep(self._lookup_pause)
            first = False
            if not await self._look_up(lookups[pages[0].channel], provider_id, pages):
                return self._clock.now() + PAUSE_AFTER_FAULT
        return next_due

    async def _look_up(self, lookup: StatusLookup, provider_id: str, pages: list[Page]) -> bool:
        """One message; False when the provider cannot answer now (the pass ends, and this
        message is first in line at the next)."""
        previous = self._checked.get(provider_id)
        self._checked[provider_id] = self._clock.now()
        channel = pages[0].channel
        what = LOOKED_UP[channel].what
        try:
            update = await lookup.fetch_status(provider_id)
        except DeliveryError as exc:
            if not exc.retryable:
                self._unknown.add(provider_id)
                self._metrics.status_lookups.labels(channel, "unknown").inc()
                log.warning(
                    f"{what} status not known to Twilio; not asked again",
                    extra=fields(pages=[p.id for p in pages], error=str(exc)),
                )
                return True
            self._metrics.status_lookups.labels(channel, "error").inc()
            if previous is None:
                del self._checked[provider_id]
            else:
                self._checked[provider_id] = previous
            if not self._failing:
                self._failing = True
                log.error(
                    "status lookups at Twilio failing; trying again",
                    extra=fields(error=str(exc), retry_in_s=PAUSE_AFTER_FAULT.total_seconds()),
                )
            return False
        if self._failing:
            self._failing = False
            log.warning("status lookups at Twilio work again")
        if not update.final:
            self._metrics.status_lookups.labels(channel, "pending").inc()
            return True
        outcome = "delivered" if update.delivered else "failed"
        self._metrics.status_lookups.labels(channel, outcome).inc()
        log.log(
            logging.INFO if update.delivered else logging.WARNING,
            f"{what} status callback missing; status looked up at Twilio",
            extra=fields(
                pages=[p.id for p in pages], status=update.status, error_code=update.error_code
            ),
        )
        await self._dispatcher.provider_status(pages, update)
        return True

    async def run_forever(self) -> None:
        while True:
            try:
                until = await self.run_once()
            except Exception:  # the store, or a bug: the outbox goes on meanwhile
                log.exception("status lookup pass failed; trying again shortly")
                until = self._clock.now() + PAUSE_AFTER_FAULT
            await self._clock.sleep_until(until)


def _sent_at(pages: list[Page]) -> datetime:
    """When a message or call went (a bundle's pages share it)."""
    return min(p.sent_at or p.created_at for p in pages)

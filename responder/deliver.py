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
import collections
import logging
import random
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Protocol

from notifiers.base import SEND_DEADLINE_S, DeliveryError, Message, Notifier, StatusUpdate
from responder.classify import format_duration
from responder.clock import Clock, sleep_until_or_woken
from responder.directory import Channel, Directory
from responder.incident import (
    INTERRUPTED,
    Event,
    Incident,
    IncidentState,
    NewPage,
    Page,
    PageKind,
    PageState,
    TimelineEvent,
    is_reassignment,
)
from responder.log import STORE_ERROR_LOG_EVERY_S, ThrottledLog, fields
from responder.metrics import Metrics
from responder.store import Store, StoreError
from responder.yamlfile import Node, parse_duration

log = logging.getLogger("responder.deliver")

MAX_ATTEMPTS = 6
BASE_BACKOFF = timedelta(seconds=15)
MAX_BACKOFF = timedelta(minutes=5)
MAX_SLEEP = timedelta(seconds=30)
# A delivery cut off by a store error: its pages never handed to their channel wait this
# long in the queue (the store may be failing: not a loop of claims that fail alike).
RETRY_AFTER_FAULT = timedelta(seconds=15)
# Settling the pages the last stop left 'sending' failed (the store): tried again this soon.
RECOVER_RETRY = timedelta(seconds=1)


class MessageComposer(Protocol):
    """Turns outbox rows into messages (``responder.compose.Composer``)."""

    async def page(self, page: Page) -> Message: ...

    async def bundle(self, pages: Sequence[Page]) -> Message: ...


PAID_CHANNELS = frozenset({"sms", "voice"})


@dataclass(frozen=True, slots=True)
class RateLimit:
    count: int
    window: timedelta

    def __str__(self) -> str:
        return f"{self.count}/{format_duration(int(self.window.total_seconds()))}"


# GoAlert's limits per contact method (FACTS.md): at most one message a minute, 5 per 15 min,
# 11 per hour, 21 per 3 h. Held-back pages wait in the queue and go out bundled.
DEFAULT_LIMITS = (
    RateLimit(1, timedelta(minutes=1)),
    RateLimit(5, timedelta(minutes=15)),
    RateLimit(11, timedelta(hours=1)),
    RateLimit(21, timedelta(hours=3)),
)


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    """The ``delivery:`` section: retries, per-contact rate limits, the spend budget."""

    max_attempts: int = MAX_ATTEMPTS
    # After the attempts, a page whose provider is down (not its route: connection refused,
    # 5xx, 429) fails over and keeps trying this long from its creation, every 5 minutes.
    retry_for: timedelta = timedelta(hours=1)
    rate_limits: Mapping[str, tuple[RateLimit, ...]] = field(
        default_factory=lambda: MappingProxyType(
            dict.fromkeys(("sms", "voice", "email", "webhook"), DEFAULT_LIMITS)
        )
    )
    sms_voice_per_hour: int = 200  # across all contacts; Grafana OnCall caps 200/user/day
    budget_notify: tuple[str, ...] = ()  # email addresses told when the budget is reached

    def limits_for(self, channel: str) -> tuple[RateLimit, ...]:
        return self.rate_limits.get(channel, DEFAULT_LIMITS)


_LIMIT = re.compile(r"^\s*(\d{1,4})\s*/\s*(\S+)\s*$")


def parse_delivery(node: Node | None) -> DeliveryConfig:
    if node is None:
        return DeliveryConfig()
    node.keys_allowed("max_attempts", "retry_for", "rate_limits", "budget")
    config = DeliveryConfig()
    if (attempts := node.get("max_attempts")) is not None:
        config = replace(config, max_attempts=attempts.as_int(minimum=1, maximum=20))
    if (retry_for := node.get("retry_for")) is not None:
        config = replace(config, retry_for=retry_for.as_duration())
    if (limits_node := node.get("rate_limits")) is not None:
        limits = dict(config.rate_limits)
        for channel, item in limits_node.items():
            if channel not in limits:
                raise item.error(f"unknown channel {channel!r}; one of {', '.join(limits)}")
            parsed: list[RateLimit] = []
            for entry in item.as_list():
                match = _LIMIT.match(entry.as_str())
                try:
                    window = parse_duration(match.group(2)) if match else timedelta(0)
                except ValueError:
                    window = timedelta(0)
                if match is None or int(match.group(1)) < 1 or window <= timedelta(0):
                    raise entry.error("expected COUNT/DURATION, e.g. 5/15m")
                parsed.append(RateLimit(int(match.group(1)), window))
            limits[channel] = tuple(parsed)
        config = replace(config, rate_limits=MappingProxyType(limits))
    if (budget := node.get("budget")) is not None:
        budget.keys_allowed("sms_voice_per_hour", "notify")
        if (per_hour := budget.get("sms_voice_per_hour")) is not None:
            config = replace(config, sms_voice_per_hour=per_hour.as_int(minimum=1))
        if (notify := budget.get("notify")) is not None:
            addresses = tuple(item.as_str() for item in notify.as_list())
            for item, address in zip(notify.as_list(), addresses, strict=True):
                if "@" not in address or any(c.isspace() for c in address):
                    raise item.error("expected an email address")
            config = replace(config, budget_notify=addresses)
    return config


def next_allowed(sent: Sequence[datetime], limits: Sequence[RateLimit], now: datetime) -> datetime:
    """The earliest instant a message may go to a contact method that got ``sent`` (sorted).
    A send recorded later than ``now`` (the wall clock stepped back: NTP, a restored VM)
    counts as sent now, not as a message from the future holding the next page for as long
    as the step."""
    allowed = now
    sent = [min(t, now) for t in sent]
    for limit in limits:
        recent = [t for t in sent if t > now - limit.window]
        if len(recent) >= limit.count:
            # The oldest message inside the window must leave it first.
            allowed = max(allowed, recent[-limit.count] + limit.window)
    return allowed


# Marks a page's error when its channel could not deliver anything (DeliveryError's
# channel_down), for the timeline and the API.
CHANNEL_DOWN = "channel down: "


def backoff(attempt: int, rng: random.Random) -> timedelta:
    """Exponential backoff with full jitter: attempt 1 waits up to 15 s, then 30 s, ... 5 min."""
    ceiling = min(BASE_BACKOFF * (1 << min(max(0, attempt - 1), 16)), MAX_BACKOFF)
    return ceiling * (0.5 + rng.random() / 2)


def failover_pages(
    page: Page,
    siblings: Sequence[Page],
    directory: Directory,
    now: datetime,
    passed: Collection[tuple[str, str]] = (),
) -> list[NewPage]:
    """Where a failed page goes next: the contact's next unused channel, else every channel of
    the backup contact not yet tried in this step (nor ``passed``: contact methods to go
    by). Empty when the chain is exhausted."""
    used = {(p.contact, p.channel) for p in siblings} | set(passed)
    cancel_on_ack = page.kind is PageKind.PAGE and page.cancel_on_ack

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


class _Rerouter:
    """A ``Reroute`` for one failure (see ``Dispatcher.reroute_for``). The store may run it
    twice (a batch run again after another write failed): what it decided is kept by page,
    and counted once, by ``counted()``, after the commit."""

    def __init__(
        self,
        reason: str,
        directory: Directory,
        now: datetime,
        free_only: bool,
        kept: bool = False,
    ) -> None:
        self._reason = reason
        self._directory = directory
        self._now = now
        self.free_only = free_only
        self.kept = kept  # the page itself stays queued (an outage): it has not failed
        self._decided: dict[int, tuple[Page, list[NewPage]]] = {}

    def __call__(
        self, page: Page, incident: Incident, siblings: Sequence[Page], done_before: bool
    ) -> tuple[list[NewPage], TimelineEvent | None]:
        if done_before:
            # It failed over before (its channel went down, then its retries ran out; or the
            # budget holds it after its failover), or the budget held it before: whoever was
            # paged then has it (or nobody was left); waking the next in the chain too would
            # page twice.
            return [], None
        if (
            page.kind is PageKind.PAGE
            and page.cancel_on_ack
            and incident.state is not IncidentState.TRIGGERED
            # A snooze holds the escalation, not a reassignment: its pages fail over.
            and not (incident.state is IncidentState.SNOOZED and is_reassignment(page.step))
        ):
            return [], None  # someone has it (or it is over): nobody else needs waking
        if page.trigger_at is not None and page.trigger_at != incident.started:
            return [], None  # its trigger is over: the new one pages whoever is on call now
        # A duration level (management, cancel_on_ack off) pages even once acknowledged.
        if page.kind is not PageKind.RECOVERY and incident.state is IncidentState.RESOLVED:
            return [], None
        pages = self._next(page, siblings)
        if self.free_only and not pages:
            return [], None  # the page itself still goes when the budget frees
        self._decided[page.id] = (page, pages)
        if not pages:
            return [], None
        detail: dict[str, Any] = {
            "failed_page": page.id,
            "reason": self._reason,
            "to": [f"{p.contact}/{p.channel}" for p in pages],
        }
        if self.free_only:
            detail["free_only"] = True  # the page itself still waits: not its failover
        return pages, TimelineEvent(self._now, Event.FAILOVER, "responder", page.channel, detail)

    def _next(self, page: Page, siblings: Sequence[Page]) -> list[NewPage]:
        if not self.free_only:
            return failover_pages(page, siblings, self._directory, self._now)
        # Down the chain, past whoever has only paid channels, to the first free one.
        passed: set[tuple[str, str]] = set()
        while pages := failover_pages(page, siblings, self._directory, self._now, passed):
            free = [p for p in pages if p.channel not in PAID_CHANNELS]
            if free:
                return free
            passed.update((p.contact, p.channel) for p in pages)
        return []

    def counted(self, metrics: Metrics) -> None:
        for page, pages in self._decided.values():
            if not pages:
                log.log(
                    logging.WARNING if self.kept else logging.ERROR,
                    "nobody is left to fail over to; the page waits for its channel"
                    if self.kept
                    else "page failed and nobody is left to fail over to",
                    extra=fields(page=page.id, incident=page.incident_id, contact=page.contact),
                )
                metrics.pages.labels(page.channel, "exhausted").inc()
            for new_page in pages:
                metrics.pages_queued.labels(new_page.channel, new_page.kind.value).inc()
        self._decided.clear()


# Why a paid page waits: also how a later hold knows the page was held (and re-routed) before.
BUDGET_HELD = "hourly SMS/voice budget used"
# The administrators' notice that the budget holds pages back, and how often it is sent.
BUDGET_NOTICE = "budget_reached"
BUDGET_NOTICE_EVERY = timedelta(hours=1)
# How long a send recorded in the future (the clock stepped back) keeps the time it was
# first seen at: longer than any rate limit's window and the budget's hour.
FUTURE_SENDS_KEPT = timedelta(days=2)


class Dispatcher:
    """Sends due pages; sleeps until the next queued page is due or it is woken."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        metrics: Metrics,
        notifiers: Callable[[], Mapping[str, Notifier]],
        compose: MessageComposer,
        *,
        directory: Callable[[], Directory] | None = None,
        config: Callable[[], DeliveryConfig] = DeliveryConfig,
        rng: random.Random | None = None,
        batch: int = 50,
        max_in_flight: int = 64,
    ) -> None:
        self._directory = directory
        self._config = config
        # Send times of SMS and calls in the last hour (the budget's window), read from the
        # store on first use and kept here after: counting them in the database for every
        # message grew with the traffic.
        self._paid: collections.deque[datetime] | None = None
        # Send times recorded later than the clock reads (it stepped back), and when each
        # was first seen: it counts as sent then. Clamped to "now" afresh at every look, it
        # would hold its contact method until the clock caught up with it, hours perhaps.
        self._future_sends: dict[datetime, datetime] = {}
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._notifiers = notifiers
        self._compose = compose
        self._max_in_flight = max_in_flight
        self._in_flight = 0  # pages claimed and not yet settled
        self._depth_at = datetime.min.replace(tzinfo=UTC)
        self._tasks: set[asyncio.Task[None]] = set()
        self._method_locks: dict[tuple[str, str, str], asyncio.Lock] = {}
        self._channels_down: set[str] = set()  # said once in the log until one delivers again
        # Channels whose provider refused or could not be reached (pages wait for a retry):
        # said once in the log, as above, not once per page and attempt.
        self._channels_failing: set[str] = set()
        # A store that keeps failing fails every pass (each second): a line a minute says so.
        self._store_failing = ThrottledLog(log, logging.ERROR, STORE_ERROR_LOG_EVERY_S)
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self._batch = batch
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()  # set, and replaced, whenever a delivery settles
        # Until the pages the last stop left 'sending' are settled (recover), the pages
        # claimed here meanwhile and not yet settled: 'sending' too, but no crash's.
        self._recovered = False
        self._claimed_unrecovered: set[int] = set()

    def wake(self) -> None:
        self._wake.set()

    @property
    def sending(self) -> bool:
        """Pages are on their way: a provider may already know of a send not recorded yet."""
        return self._in_flight > 0

    async def delivery_settled(self) -> None:
        """Wait until the next delivery in progress has recorded its outcome."""
        await self._settled.wait()

    async def recover(self) -> int:
        """Settle pages a crash left in 'sending' (docs/incidents.md): those handed to their
        channel failed and re-routed, the others queued again. Returns how many failed.
        Pages this dispatcher claimed itself (the queue is delivered while a failed first
        try waits for the next) are left alone."""
        reroute = self.reroute_for(INTERRUPTED)
        pages = await self._store.recover_sending(
            self._clock.now(), reroute, exclude=self._claimed_unrecovered
        )
        self._recovered = True
        self._claimed_unrecovered.clear()
        self._interrupted(pages, reroute)
        return len(pages)

    async def _recover_safely(self) -> None:
        """``recover``, logged instead of raised (tried again before the next pass)."""
        try:
            await self.recover()
        except Exception:
            log.exception(
                "pages left sending by the last stop not settled yet; trying again shortly"
            )

    async def _settle_interrupted(self, pages: list[Page]) -> None:
        now = self._clock.now()
        reroute = self.reroute_for(INTERRUPTED)
        try:
            failed = await self._store.recover_sending(
                now, reroute, page_ids=[p.id for p in pages], retry_at=now + RETRY_AFTER_FAULT
            )
        except Exception:  # the next start settles them
            log.exception("pages left sending", extra=fields(pages=[p.id for p in pages]))
            return
        self._interrupted(failed, reroute)

    def _interrupted(self, failed: list[Page], reroute: _Rerouter | None) -> None:
        self.counted(reroute)
        if failed:
            log.warning(
                "pages interrupted while sending: outcome unknown, re-routed instead of resent",
                extra=fields(pages=[p.id for p in failed]),
            )
        for page in failed:
            self._metrics.pages.labels(page.channel, "unknown").inc()

    async def run_once(self) -> int:
        """Claim what is due and start delivering it; returns how many pages were claimed.

        Deliveries run as tasks: a slow provider call never holds up pages claimed after it
        (up to ``max_in_flight`` pages at once). Pages to one contact method go one group at
        a time, so rate limits and bundling see every message sent before.
        """
        claimed = 0
        while (room := self._max_in_flight - self._in_flight) > 0:
            # A contact method with a message in progress gets its next pages afterwards,
            # together (one bundle), instead of marked as sending while they wait.
            pages = await self._store.claim_pages(
                self._clock.now(), min(room, self._batch), busy=tuple(self._method_locks)
            )
            if not pages:
                break
            if not self._recovered:
                self._claimed_unrecovered.update(p.id for p in pages)
            groups: dict[tuple[str, str, str], list[Page]] = {}
            for page in pages:
                address = self._address_now(page) or page.address
                groups.setdefault((page.contact, page.channel, address), []).append(page)
            for key, group in groups.items():
                self._in_flight += len(group)
                self._method_locks.setdefault(key, asyncio.Lock())  # busy from now on
                task = asyncio.create_task(self._deliver_in_turn(key, group), name="deliver")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            claimed += len(pages)
        return claimed

    async def _update_queue_depth(self) -> None:
        # A count over the queue: every few seconds is plenty for a gauge.
        now = self._clock.now()
        if now - self._depth_at >= timedelta(seconds=5):
            self._depth_at = now
            self._metrics.queue_depth.set(await self._store.queue_depth())

    async def _deliver_in_turn(self, key: tuple[str, str, str], pages: list[Page]) -> None:
        lock = self._method_locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                await self._deliver_group(pages)
        except Exception:
            # A store error (or a bug) midway: the pages must not stay 'sending' until the
            # next start. What was never handed to its channel waits in the queue again;
            # what was is settled as after a crash.
            log.exception("delivery failed unexpectedly", extra=fields(pages=[p.id for p in pages]))
            await self._settle_interrupted(pages)
        finally:
            self._in_flight -= len(pages)
            self._claimed_unrecovered.difference_update(p.id for p in pages)  # settled
            if not lock.locked():
                self._method_locks.pop(key, None)
            self._settled.set()
            self._settled = asyncio.Event()
            self.wake()

    def _address_now(self, page: Page) -> str | None:
        """Where a page goes: its contact's address for its channel in the config in force
        (a reload may have corrected it since the page was queued); None when the contact,
        or its address for the channel, is gone."""
        if self._directory is None:
            return page.address
        contact = self._directory().contacts.get(page.contact)
        return None if contact is None else contact.address(Channel(page.channel))

    async def _to_current_address(self, pages: list[Page]) -> list[Page]:
        """One contact method's pages, each rewritten (and its row) to go to the address in
        force; none when that is gone: they fail over as for an unreachable contact."""
        first = pages[0]
        address = self._address_now(first)
        if address is None:
            known = self._directory is not None and first.contact in self._directory().contacts
            error = (
                f"{first.contact} has no {first.channel} address any more (config reloaded)"
                if known
                else f"{first.contact} is no longer a contact (config reloaded)"
            )
            for page in pages:
                self._metrics.pages.labels(page.channel, "failed").inc()
                await self._finish(
                    page, PageState.FAILED, error=error, reroute=self.reroute_for(error)
                )
            return []
        moved = [p.id for p in pages if p.address != address]
        if moved:
            await self._store.readdress_pages(moved, address, self._clock.now())
            log.info(
                "pages go to their contact's address changed by a reload",
                extra=fields(pages=moved, contact=first.contact, channel=first.channel),
            )
        return [replace(p, address=address) for p in pages]

    async def _deliver_group(self, pages: list[Page]) -> None:
        """One contact method's due pages: within its limits they go as one message."""
        pages = await self._to_current_address(pages)
        if not pages:
            return
        first = pages[0]
        config = self._config()
        now = self._clock.now()
        if first.channel in PAID_CHANNELS:
            used = await self._paid_in_last_hour(now)
            self._metrics.budget_used.set(used)
            if used >= config.sms_voice_per_hour:
                # The first hold of a page: whoever else can be reached without SMS or a call
                # (the contact's email, the backup) is told now; the page itself waits.
                unheld = [p.id for p in pages if p.error != BUDGET_HELD]
                reroute = self.reroute_for(BUDGET_HELD, free_only=True)
                plan = (reroute, unheld) if reroute is not None and unheld else None
                await self._hold(pages, now + timedelta(minutes=5), BUDGET_HELD, plan)
                await self._tell_admins(config, used, now)
                return
        limits = config.limits_for(first.channel)
        longest = max((limit.window for limit in limits), default=timedelta(0))
        # A drill's test message does not hold back a real page: a drill must never delay
        # the page of an incident. Drills among themselves keep to the limits.
        real = any(p.kind is not PageKind.TEST for p in pages)
        sent = self._as_seen(
            await self._store.send_times(
                first.contact, first.channel, now - longest, without_tests=real
            ),
            now,
        )
        allowed = next_allowed(sent, limits, now)
        if allowed > now:
            await self._hold(pages, allowed, f"rate limited until {allowed.isoformat()}")
            return
        if len(pages) == 1:
            await self._deliver(first)
        else:
            await self._deliver_bundle(pages)

    async def _paid_in_last_hour(self, now: datetime) -> int:
        since = now - timedelta(hours=1)
        if self._paid is None:
            seeded = collections.deque(await self._store.paid_send_times(since))
            if self._paid is None:  # another delivery may have seeded it meanwhile
                self._paid = seeded
        paid = self._paid
        if paid and max(paid) > now:
            # At most a budget's worth to scan, and only after the clock stepped back.
            self._paid = paid = collections.deque(self._as_seen(paid, now))
        while paid and paid[0] < since:
            paid.popleft()
        return len(paid)

    def _as_seen(self, sent: Iterable[datetime], now: datetime) -> list[datetime]:
        """Send times, sorted, with those recorded later than ``now`` (the wall clock stepped
        back: NTP, a restored VM) moved to when this dispatcher first saw them."""
        seen = self._future_sends
        # Remembered past any limit's window (even once the clock reaches the recorded
        # time: read raw again then, the send would count a second time).
        windows = [
            limit.window for limits in self._config().rate_limits.values() for limit in limits
        ]
        kept = max([FUTURE_SENDS_KEPT, *windows])
        for at in [at for at, first in seen.items() if first < now - kept]:
            del seen[at]
        return sorted(
            seen[at] if at in seen else seen.setdefault(at, now) if at > now else at for at in sent
        )

    def _count_paid(self, channel: str, at: datetime) -> None:
        if channel in PAID_CHANNELS and self._paid is not None:
            self._paid.append(at)

    async def _hold(
        self,
        pages: list[Page],
        until: datetime,
        reason: str,
        reroute: tuple[_Rerouter, Collection[int]] | None = None,
    ) -> None:
        ids = [p.id for p in pages]
        await self._store.hold_pages(ids, until, reason, self._clock.now(), reroute)
        if reroute is not None:
            self.counted(reroute[0])
        for page in pages:
            self._metrics.pages.labels(page.channel, "held").inc()
        log.warning(
            "pages held back",
            extra=fields(
                pages=[p.id for p in pages],
                contact=pages[0].contact,
                channel=pages[0].channel,
                reason=reason,
            ),
        )

    async def _tell_admins(self, config: DeliveryConfig, used: int, now: datetime) -> None:
        """Email the admins once an hour while the budget holds pages back. The hour is
        kept in the store: a restart (or a crash loop) must not send the notice again. It
        is claimed before the email goes (two holds at once send it once) and given back
        when no admin got it, so the next hold tries again."""
        try:
            due = await self._store.claim_admin_notice(BUDGET_NOTICE, now, BUDGET_NOTICE_EVERY)
        except StoreError as exc:  # the pages are held already; the next hold asks again
            log.error("budget notice not sent", extra=fields(error=str(exc)))
            return
        if not due:
            return
        log.error("SMS/voice budget reached", extra=fields(used=used))
        email = self._notifiers().get("email")
        if email is None or not config.budget_notify:
            return
        text = (
            f"responder has sent {used} SMS and calls in the last hour, its budget "
            f"({config.sms_voice_per_hour}). Further SMS and calls wait in the queue until the "
            "budget frees up; email pages still go out. Raise delivery.budget if this is real."
        )
        told = False
        for address in config.budget_notify:
            message = Message("email", address, text, subject="[responder] SMS/voice budget used")
            try:
                await asyncio.wait_for(email.send(message), SEND_DEADLINE_S)
            except (DeliveryError, TimeoutError) as exc:
                log.error("budget notice not sent", extra=fields(to=address, error=str(exc)))
            else:
                told = True
        if told:
            return  # an admin who got it passes it on: sent again, it would repeat to them
        try:
            await self._store.release_admin_notice(BUDGET_NOTICE, now)
        except StoreError as exc:  # kept: the notice waits for the next hour
            log.error("budget notice claim not given back", extra=fields(error=str(exc)))

    async def _deliver_bundle(self, pages: list[Page]) -> None:
        m = self._metrics
        notifier = self._notifiers().get(pages[0].channel)
        if notifier is None:
            for page in pages:
                await self._deliver(page)  # records the missing channel per page
            return
        made = await self._made_and_handed_over(pages)
        if made is None:
            return
        pages, message = made
        try:
            async with asyncio.timeout(SEND_DEADLINE_S):
                receipt = await notifier.send(message)
        except (DeliveryError, TimeoutError) as exc:
            # Each page takes its own retry (with backoff, the limits checked again when it is
            # due) or failover; never an immediate resend, one message per page.
            for page in pages:
                await self._not_sent(page, exc)
            return
        except Exception as exc:  # a bug in an adapter must not leave the pages "sending"
            for page in pages:
                await self._adapter_failed(page, exc)
            return
        if len(pages) > 1:
            m.pages_bundled.inc(len(pages))
        sent_at = self._clock.now()  # one message: one send time, counted once by the limits
        recovered = [self._observe_sent(page) for page in pages]
        await self._store.finish_pages(
            [p.id for p in pages], PageState.SENT, sent_at, provider_id=receipt.provider_id
        )
        self._count_paid(pages[0].channel, sent_at)
        if any(recovered):
            await self._retries_go_now(pages[0].channel)
        log.info(
            "pages bundled",
            extra=fields(pages=[p.id for p in pages], contact=pages[0].contact),
        )

    async def _made_and_handed_over(self, pages: list[Page]) -> tuple[list[Page], Message] | None:
        """The message for one contact method's pages, made and then handed over with them:
        those the hand-over finds pointless now (acknowledged, snoozed or resolved since
        they were claimed) are cancelled, and the message is made again without them. Only
        the pages handed over go, in the message made for exactly them. None: nothing to
        send (all cancelled, or not composed: each page is then settled)."""
        while pages:
            try:
                if len(pages) == 1:
                    message = await self._compose.page(pages[0])
                else:
                    message = await self._compose.bundle(pages)
            except Exception as exc:  # nothing was sent (_not_composed: whether to try again)
                error = self._not_composed(pages, exc)
                for page in pages:
                    await self._not_sent(page, error)
                return None
            dropped = await self._store.hand_over([p.id for p in pages], self._clock.now())
            if not dropped:
                return pages, message
            log.info(
                "pages cancelled at the hand-over: their incident changed since they were claimed",
                extra=fields(pages=dropped, contact=pages[0].contact, channel=pages[0].channel),
            )
            pages = [p for p in pages if p.id not in dropped]
        return None

    def _observe_sent(self, page: Page) -> bool:
        """Count a send; True when its channel was failing until it (it delivers again)."""
        recovered = page.channel in self._channels_down or page.channel in self._channels_failing
        if recovered:
            self._channels_down.discard(page.channel)
            self._channels_failing.discard(page.channel)
            log.warning("channel delivers again", extra=fields(channel=page.channel))
        self._metrics.pages.labels(page.channel, "sent").inc()
        latency = (self._clock.now() - page.due_at).total_seconds()
        self._metrics.delivery_latency.labels(page.channel).observe(max(latency, 0.0))
        return recovered

    async def _retries_go_now(self, channel: str) -> None:
        """The channel delivers again: the pages waiting on it for a retry go now, oldest
        first, rather than each at the end of its own backoff (up to 5 minutes), after the
        pages of newer incidents. The rate limits still apply to them."""
        try:
            moved = await self._store.retry_channel_now(channel, self._clock.now())
        except StoreError:
            return  # each goes at its own retry time
        if moved:
            log.info(
                "pages waiting for the channel go now", extra=fields(channel=channel, pages=moved)
            )
            self.wake()

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
            m.pages.labels(page.channel, "failed").inc()
            await self._finish(page, PageState.FAILED, error=error, reroute=self.reroute_for(error))
            return
        made = await self._made_and_handed_over([page])
        if made is None:
            return
        _, message = made
        try:
            async with asyncio.timeout(SEND_DEADLINE_S):
                receipt = await notifier.send(message)
        except (DeliveryError, TimeoutError) as exc:
            await self._not_sent(page, exc)
            return
        except Exception as exc:  # a bug in an adapter must not stop the outbox
            await self._adapter_failed(page, exc)
            return
        recovered = self._observe_sent(page)
        await self._finish(page, PageState.SENT, provider_id=receipt.provider_id)
        self._count_paid(page.channel, self._clock.now())
        if recovered:
            await self._retries_go_now(page.channel)

    @staticmethod
    def _not_composed(pages: Sequence[Page], exc: Exception) -> DeliveryError:
        """The message could not be made. Nothing reached a provider: a store read that
        failed (the disk) is tried again like a refused send; anything else (the incident
        is gone, a bug) will not get better, and the page fails over at once."""
        transient = isinstance(exc, StoreError)
        log.error(
            "page not composed; trying again" if transient else "page not composed",
            extra=fields(pages=[p.id for p in pages], error=f"{type(exc).__name__}: {exc}"),
            exc_info=not transient,
        )
        return DeliveryError(
            "compose", f"message not composed: {type(exc).__name__}", retryable=transient
        )

    async def _adapter_failed(self, page: Page, exc: Exception) -> None:
        """The channel adapter crashed during the send: whether the provider took the message
        is unknown, so the page fails and is re-routed, as for a send cut off."""
        log.exception("page crashed its channel adapter", extra=fields(page=page.id))
        error = f"internal error: {type(exc).__name__}"
        self._metrics.pages.labels(page.channel, "failed").inc()
        await self._finish(page, PageState.FAILED, error=error, reroute=self.reroute_for(error))

    async def _not_sent(self, page: Page, exc: DeliveryError | TimeoutError) -> None:
        """A send that failed: retried later on the same route when that can help and cannot
        page twice; otherwise failed, and the next channel or backup contact is queued."""
        m = self._metrics
        config = self._config()
        now = self._clock.now()
        channel_down = isinstance(exc, DeliveryError) and exc.channel_down
        if isinstance(exc, DeliveryError):
            retryable, maybe_sent, reason = exc.retryable, exc.maybe_sent, str(exc)
        else:  # our own deadline: the provider had the request and did not answer
            retryable, maybe_sent, reason = True, True, f"no answer within {SEND_DEADLINE_S:g}s"
        if channel_down and page.kind is PageKind.TEST:
            # A drill is there to find a channel that does not work: it says so now, and
            # its test message does not go out an hour later, once fixed.
            retryable = channel_down = False
        if channel_down:
            reason = CHANNEL_DOWN + reason
            if page.channel not in self._channels_down:
                self._channels_down.add(page.channel)
                log.error(
                    "channel cannot deliver any page until its settings are fixed",
                    extra=fields(channel=page.channel, page=page.id, error=str(exc)),
                )
        if maybe_sent:
            # As after a crash during a send: re-routed, never resent (docs/incidents.md).
            reason = f"outcome unknown, re-routed instead of resent: {reason}"
        elif retryable and (
            page.attempts < config.max_attempts or now - page.created_at < config.retry_for
        ):
            retry_at = now + backoff(page.attempts, self._rng)
            # At the last attempt, an outage most likely: the next channel or the backup is
            # tried now, and this page still goes once the provider is back (retry_for). A
            # channel that is down (our credentials) is such an outage from the first
            # failure. A page is re-routed once, whatever the path (the store knows).
            outage = channel_down or page.attempts == config.max_attempts
            reroute = self.reroute_for(reason, kept=True) if outage else None
            if not channel_down and page.channel not in self._channels_failing:
                self._channels_failing.add(page.channel)
                log.warning(
                    "channel failing; its pages are retried",
                    extra=fields(channel=page.channel, page=page.id, error=reason),
                )
            m.pages.labels(page.channel, "channel_down" if channel_down else "retry").inc()
            await self._finish(
                page, PageState.QUEUED, error=reason, retry_at=retry_at, reroute=reroute
            )
            return
        m.pages.labels(page.channel, "failed").inc()
        log.error(
            "page failed", extra=fields(page=page.id, incident=page.incident_id, error=reason)
        )
        await self._finish(page, PageState.FAILED, error=reason, reroute=self.reroute_for(reason))

    async def provider_status(self, pages: Sequence[Page], update: StatusUpdate) -> list[Page]:
        """A provider's final word on a message it took (its status callback, or a lookup
        when the callback did not come), for each page the message carried (a bundle's
        status is each one's): delivered; or failed, and re-routed as any failed page.
        Returns the pages it changed (none for a repeat)."""
        now = self._clock.now()
        code = f" (Twilio error {update.error_code})" if update.error_code else ""
        reason = f"{update.status}{code}"
        moved: list[Page] = []
        for page in pages:
            if update.delivered:
                if await self._store.provider_status(page.id, PageState.DELIVERED, None, now):
                    moved.append(page)
                    self._metrics.pages.labels(page.channel, "delivered").inc()
                    took = max((now - page.due_at).total_seconds(), 0.0)
                    self._metrics.delivered_latency.labels(page.channel).observe(took)
                continue
            reroute = self.reroute_for(reason)
            if await self._store.provider_status(page.id, PageState.FAILED, reason, now, reroute):
                moved.append(page)
                self._metrics.pages.labels(page.channel, "undelivered").inc()
            self.counted(reroute)
        return moved

    def reroute_for(
        self, reason: str, *, free_only: bool = False, kept: bool = False
    ) -> _Rerouter | None:
        """How a page that failed for good (or waits: an outage, the budget) is re-routed:
        the contact's next channel, else the backup; ``free_only``, only where no SMS or
        call is needed (what the budget allows). The store applies it in the transaction
        that records the failure, so a crash keeps both or neither; ``counted()`` after
        that commit keeps the metrics."""
        if self._directory is None:
            return None
        return _Rerouter(reason, self._directory(), self._clock.now(), free_only, kept)

    async def _finish(
        self,
        page: Page,
        state: PageState,
        *,
        provider_id: str | None = None,
        error: str | None = None,
        retry_at: datetime | None = None,
        reroute: _Rerouter | None = None,
    ) -> None:
        await self._store.finish_page(
            page.id,
            state,
            self._clock.now(),
            provider_id=provider_id,
            error=error,
            retry_at=retry_at,
            reroute=reroute,
        )
        self.counted(reroute)

    def counted(self, reroute: _Rerouter | None) -> None:
        """After the commit that applied ``reroute``: its metrics, and a pass for its pages."""
        if reroute is not None:
            reroute.counted(self._metrics)
            self.wake()

    async def run_forever(self) -> None:
        # Pages the last stop left 'sending'. A store error here (a full disk at the start)
        # must not end the loop: it is tried again before each pass until it is done, and
        # meanwhile the queue is delivered (claims take queued pages only; recover leaves
        # the pages claimed here alone).
        try:
            while True:
                self._wake.clear()
                if not self._recovered:
                    await self._recover_safely()
                try:
                    await self.run_once()
                    # Busy contact methods are left out: their pages go when the message in
                    # progress is done (which wakes this loop), not in a spin until then.
                    due = await self._store.next_page(busy=tuple(self._method_locks))
                    await self._update_queue_depth()
                except StoreError as exc:
                    # A full disk, a broken database: no traceback to read, and the queue is
                    # tried again in a second (not at MAX_SLEEP), as soon as it can be.
                    self._store_failing.log("delivery pass failed; trying again", error=str(exc))
                    due = self._clock.now()
                    await asyncio.sleep(1.0)
                except Exception:
                    log.exception("delivery pass failed; trying again shortly")
                    due = None
                    await asyncio.sleep(1.0)
                now = self._clock.now()
                until = now + MAX_SLEEP if due is None else min(due, now + MAX_SLEEP)
                if not self._recovered:
                    until = min(until, now + RECOVER_RETRY)
                if until <= now and self._in_flight < self._max_in_flight:
                    continue
                await sleep_until_or_woken(self._clock, until, self._wake)
        finally:
            # Let provider calls under way finish: a page cut off mid-call would have to be
            # re-routed at the next start. Every adapter ends its call within the outbox's
            # deadline (send_bound); the unit's TimeoutStopSec leaves room for it.
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=SEND_DEADLINE_S)

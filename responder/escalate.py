"""The escalation engine: one loop that sleeps until the earliest stored due time, decides what
is due with ``responder.policy`` and records it (steps, pages, timeline) through the store.

Due times are data in the store, so a restart simply reads them: nothing is recomputed by
hand, nothing missed, nothing repeated (a step is a unique row). The decision (``decide``) is
pure and takes the instant; the loop (``Escalator``) is the only part that waits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import MappingProxyType

from responder.calendar import BusinessHours, parse_business_hours
from responder.clock import Clock, monotonic, sleep_until_or_woken
from responder.directory import Directory, parse_directory
from responder.incident import (
    EscalationWork,
    Event,
    Incident,
    IncidentState,
    NewPage,
    PageKind,
    StepDone,
    TimelineEvent,
)
from responder.log import fields
from responder.metrics import Metrics
from responder.model import DRILL_CATEGORY, STALE_SWEEP, Severity
from responder.policy import (
    EscalationClock,
    IncidentView,
    Policy,
    Step,
    StepKind,
    due_steps,
    last_level_reached,
    levels_ahead,
    next_due,
    pages_for,
    parse_policies,
)
from responder.store import EscalationUpdate, Store
from responder.yamlfile import Node

log = logging.getLogger("responder.escalate")

ESCALATION_KEYS = (
    "business_hours",
    "contacts",
    "roles",
    "teams",
    "schedules",
    "escalation_policies",
    "incidents",
    "drills",
)
DEFAULT_REOPEN_WITHIN = timedelta(hours=1)
# A safety net, not the mechanism: the loop is woken when a nearer due time is written, and
# this bounds how long a due time written by another daemon (HA) can wait.
MAX_SLEEP = timedelta(seconds=30)
RECOVERY_STEP = "R"
CLOSED_STEP = "K"  # the resolve seen by the engine once: time to resolve is observed then
# A level that found nobody to page (a gap in a schedule) is tried again this often; its
# "nobody_to_page" event is recorded once, as the step "nobody:L<n>".
NOBODY_RETRY = timedelta(minutes=1)
NOBODY_STEP = "nobody:"
# Bookkeeping for a containment failure's escalation that waits for someone to come on
# call: its timeline entry is written once, not at each retry.
FAILURE_STEP = "containment-failed"


@dataclass(frozen=True, slots=True)
class DrillSchedule:
    every: timedelta
    policy: str | None = None
    contacts: tuple[str, ...] = ()


def parse_drills(
    node: Node | None, directory: Directory, policies: Mapping[str, Policy]
) -> DrillSchedule | None:
    """``drills: {every: 7d, policy: standard}`` or ``{every: 30d, contacts: [alice]}``."""
    if node is None:
        return None
    node.keys_allowed("every", "policy", "contacts")
    every_node = node["every"]
    every = every_node.as_duration()
    if every < timedelta(hours=1):
        raise every_node.error("drills at most once an hour")
    policy = None
    if (policy_node := node.get("policy")) is not None:
        policy = policy_node.as_str()
        if policy not in policies:
            raise policy_node.error(f"unknown escalation policy {policy!r}")
    contacts: list[str] = []
    if (contacts_node := node.get("contacts")) is not None:
        for item in contacts_node.as_list():
            name = item.as_str()
            if name not in directory.contacts:
                raise item.error(f"unknown contact {name!r}")
            contacts.append(name)
    return DrillSchedule(every, policy, tuple(contacts))


@dataclass(frozen=True, slots=True)
class EscalationConfig:
    """Everything from config.yaml that decides who is paged when."""

    business_hours: BusinessHours = field(default_factory=BusinessHours)
    directory: Directory = field(
        default_factory=lambda: Directory(
            MappingProxyType({}), MappingProxyType({}), MappingProxyType({}), MappingProxyType({})
        )
    )
    policies: Mapping[str, Policy] = field(default_factory=lambda: MappingProxyType({}))
    default_policy: str | None = None
    reopen_within: timedelta = DEFAULT_REOPEN_WITHIN
    drills: DrillSchedule | None = None

    def policy_for(self, name: str | None) -> Policy | None:
        """The policy ``name``; the default one when it is none, or when a reload removed
        or renamed it (an open incident must not stop escalating for that)."""
        policy = self.policies.get(name) if name else None
        return policy or self.policies.get(self.default_policy or "")


def _business_hours_node(root: Node) -> Node | None:
    """The one definition of business hours: the top-level section, else the one in
    ``classification`` (the classifier refuses both at once). Response targets and
    ``when: {business_hours: ...}`` must read the same office hours."""
    node = root.get("business_hours")
    section = root.get("classification")
    if node is None and section is not None and section.is_map():
        node = section.get("business_hours")
    return node


def load_escalation(root: Node) -> EscalationConfig:
    """Read the escalation sections of the top-level config node; raises ConfigError."""
    hours_node = _business_hours_node(root)
    hours = BusinessHours() if hours_node is None else parse_business_hours(hours_node)
    directory = parse_directory(root)
    policies_node = root.get("escalation_policies")
    policies = {} if policies_node is None else parse_policies(policies_node, directory, hours)
    default_policy = None
    reopen = DEFAULT_REOPEN_WITHIN
    incidents = root.get("incidents")
    if incidents is not None:
        incidents.keys_allowed("default_policy", "reopen_within")
        if (node := incidents.get("default_policy")) is not None:
            default_policy = node.as_str()
            if default_policy not in policies:
                known = ", ".join(sorted(policies)) or "none defined"
                raise node.error(f"unknown escalation policy {default_policy!r} (known: {known})")
        if (node := incidents.get("reopen_within")) is not None:
            reopen = node.as_duration()
    drills = parse_drills(root.get("drills"), directory, policies)
    return EscalationConfig(
        hours, directory, MappingProxyType(policies), default_policy, reopen, drills
    )


# -- the decision ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    steps: tuple[StepDone, ...]
    events: tuple[TimelineEvent, ...]
    next_due: datetime | None
    unsnooze: bool = False
    # A containment failure found nobody on call on any level: it stays pending (the
    # incident's escalate_now is kept) and the levels are tried again each minute.
    keep_failure: bool = False


def _view(
    incident: Incident, done: frozenset[str], last_update_at: datetime | None
) -> IncidentView:
    return IncidentView(
        triggered_at=incident.triggered_at,
        severity=Severity(incident.severity),
        category=incident.category,
        acknowledged_at=incident.acknowledged_at,
        resolved_at=incident.resolved_at,
        snoozed_until=incident.snoozed_until,
        done=done,
        lasting_since=incident.lasting_since,
        last_update_at=last_update_at,
    )


def _level_clock(policy: Policy, step: Step) -> EscalationClock:
    for level in policy.levels:
        if level.number == step.level:
            return level.clock
    return EscalationClock.UNACKNOWLEDGED


def _target_breaches(incident: Incident, done: frozenset[str], now: datetime) -> list[StepDone]:
    """Response targets passed while nobody acknowledged / nothing resolved: recorded once."""
    breaches: list[StepDone] = []
    # Resolved before anyone acknowledged: answered when it was resolved (as the report
    # judges it), also when the pass that closes it comes after the deadline (a restart).
    answered = incident.first_acknowledged_at or incident.resolved_at
    checks = (
        ("B.respond", incident.respond_s, answered, "respond"),
        ("B.resolve", incident.resolve_s, incident.resolved_at, "resolve"),
    )
    for step_id, seconds, met_at, target in checks:
        if seconds is None or step_id in done:
            continue
        deadline = incident.started + timedelta(seconds=seconds)
        if now >= deadline and (met_at is None or met_at > deadline):
            detail = {"target": target, "seconds": seconds, "deadline": deadline.isoformat()}
            event = TimelineEvent(now, Event.TARGET_BREACHED, "responder", "engine", detail)
            breaches.append(StepDone(step_id, event))
    return breaches


def _next_breach(incident: Incident, done: frozenset[str]) -> datetime | None:
    if incident.state is IncidentState.RESOLVED:
        return None
    times = []
    respond_open = "B.respond" not in done and incident.first_acknowledged_at is None
    if incident.respond_s is not None and respond_open:
        times.append(incident.started + timedelta(seconds=incident.respond_s))
    if incident.resolve_s is not None and "B.resolve" not in done:
        times.append(incident.started + timedelta(seconds=incident.resolve_s))
    return min(times, default=None)


def decide(work: EscalationWork, config: EscalationConfig, now: datetime) -> Decision:
    """What to record for one due incident at ``now``: steps with their pages, events, and the
    next due time. Pure: the same inputs give the same decision."""
    incident, done = work.incident, work.done
    if incident.category == DRILL_CATEGORY:
        return Decision((), (), None)  # drills page once, by themselves, and never escalate
    breaches = tuple(_target_breaches(incident, done, now))
    policy = config.policy_for(incident.policy)

    steps: list[StepDone]
    if incident.state is IncidentState.RESOLVED:
        steps = list(breaches)
        if CLOSED_STEP not in done:
            steps.append(StepDone(CLOSED_STEP, None))
        if RECOVERY_STEP not in done and work.paged:
            pages = tuple(
                # After the incident is over, by definition: never cancelled by its state.
                NewPage(
                    RECOVERY_STEP,
                    PageKind.RECOVERY,
                    contact,
                    channel,
                    address,
                    now,
                    cancel_on_ack=False,
                )
                for contact, channel, address in work.paged
            )
            detail = {"contacts": sorted({p.contact for p in pages}), "pages": len(pages)}
            event = TimelineEvent(now, Event.RECOVERY, "responder", "engine", detail)
            steps.append(StepDone(RECOVERY_STEP, event, pages))
        return Decision(tuple(steps), (), None)

    events: list[TimelineEvent] = []
    unsnooze = False
    snooze_end = incident.snoozed_until
    if incident.state is IncidentState.SNOOZED and snooze_end is not None and snooze_end <= now:
        unsnooze = True
        events.append(TimelineEvent(now, Event.SNOOZE_ENDED, "responder", "engine"))

    if incident.policy and incident.policy not in config.policies and "policy-gone" not in done:
        # Said once on the timeline: the incident now escalates under the default policy.
        detail = {"policy": incident.policy, "default_policy": config.default_policy}
        event = TimelineEvent(now, Event.POLICY_GONE, "responder", "engine", detail)
        breaches = (*breaches, StepDone("policy-gone", event))

    if policy is None:
        if "no-policy" not in done:
            detail = {"policy": incident.policy, "default_policy": config.default_policy}
            event = TimelineEvent(now, Event.NO_POLICY, "responder", "engine", detail)
            breaches = (*breaches, StepDone("no-policy", event))
        recorded = done | {s.step for s in breaches}
        return Decision(breaches, tuple(events), _next_breach(incident, recorded), unsnooze)

    view = _view(incident, done, work.last_update_at)
    failure: list[Step] | None = None  # the levels a containment failure pages now
    keep_failure = False
    if incident.escalate_now is not None and incident.state is not IncidentState.ACKNOWLEDGED:
        # Containment failed: whatever level comes next is due now, snoozed or not (status
        # updates keep their times). A level with nobody on call does not make the failure
        # wait for the following level's time: the first one after it that has someone is
        # paged now (escalation only moves forward). With nobody on call on any of them,
        # the failure stays pending and they are tried again each minute, as any level
        # with nobody is.
        failure, keep_failure = _failure_levels(policy, view, config.directory, now)
        if FAILURE_STEP not in done:  # said once, however many minutes it waits for someone
            events.append(
                TimelineEvent(
                    now,
                    Event.ESCALATED,
                    "responder",
                    "containment",
                    {"reason": incident.escalate_now},
                )
            )
    steps = list(breaches)
    if unsnooze and snooze_end is not None:
        reminder = snooze_reminder(policy, config.directory, incident, done, snooze_end, now)
        if reminder is not None:
            steps.append(reminder)
    nobody = False
    due = due_steps(policy, view, now)
    if failure is not None:
        due = [s for s in due if s.kind is not StepKind.LEVEL] + failure
    if keep_failure:
        steps.append(StepDone(FAILURE_STEP, None))  # its event is not written again
    for step in due:
        retried = NOBODY_STEP + step.id in done
        if retried and not _holds_now(step, policy, view, now):
            # Tried for want of anyone and its condition (business hours) has ended since:
            # skipped from now on, as a level whose condition fails at its due time is.
            steps.append(StepDone(step.id, None))
            continue
        record = _step_record(step, policy, config.directory, now)
        if step.kind is StepKind.LEVEL and not record.pages:
            # Nobody to page on this level now (a gap in a schedule): the level stays due
            # and is tried again each minute until someone is on call or a later level
            # pages; the timeline says so once.
            nobody = True
            if (said := NOBODY_STEP + step.id) not in done:
                steps.append(StepDone(said, record.event))
            continue
        steps.append(record)
    recorded = done | {s.step for s in steps}
    following = next_due(policy, _view(incident, recorded, work.last_update_at), now)
    upcoming = [following, _next_breach(incident, recorded)]
    if incident.state is IncidentState.SNOOZED and not unsnooze:
        upcoming.append(incident.snoozed_until)
    if nobody:
        # The level left due is the only time here not in the future: it waits its retry.
        upcoming = [t for t in upcoming if t is None or t > now] + [now + NOBODY_RETRY]
    wake = min((t for t in upcoming if t is not None), default=None)
    return Decision(tuple(steps), tuple(events), wake, unsnooze, keep_failure)


def snooze_reminder(
    policy: Policy,
    directory: Directory,
    incident: Incident,
    done: frozenset[str],
    snooze_end: datetime,
    now: datetime,
) -> StepDone | None:
    """What a snooze's end pages when nobody acknowledged, whether it ran out or someone
    ended it: whoever the escalation had reached hears of it again now (step
    ``L<n>.s<end>``, whose message says "Its snooze ended"; the next level still waits its
    own time after the snooze). None when no level was reached yet, or when the level's
    condition does not hold now, as for any step: an office-hours level reached at 16:00
    is not paged at 20:00 when a snooze ends."""
    reached = last_level_reached(policy, done)
    if reached is None:
        return None
    step_id, level = reached
    reminder = f"{step_id}.s{int(snooze_end.timestamp())}"
    severity = Severity(incident.severity)
    if reminder in done or not level.when.holds(
        severity, incident.category, now, policy.business_hours
    ):
        return None
    return _step_record(Step(reminder, StepKind.LEVEL, now, level.number), policy, directory, now)


def snooze_ended_by_hand(
    config: EscalationConfig, incident: Incident, done: frozenset[str], end: datetime
) -> list[StepDone]:
    """The steps a snooze ended by hand at ``end`` takes at once (``act``'s unsnooze): the
    reminder the engine pages when a snooze runs out. The engine's next pass does the rest
    (the next level, re-armed from ``end``; targets), as after a snooze that ran out."""
    if incident.category == DRILL_CATEGORY:
        return []  # drills never escalate
    policy = config.policy_for(incident.policy)
    if policy is None:
        return []
    reminder = snooze_reminder(policy, config.directory, incident, done, end, end)
    return [] if reminder is None else [reminder]


def _failure_levels(
    policy: Policy, view: IncidentView, directory: Directory, now: datetime
) -> tuple[list[Step], bool]:
    """The levels a containment failure pages now: the next ones in the escalation, and
    past those with nobody on call, up to the first that has someone. True when none has
    anyone: the failure must wait for someone to come on call, not for the levels' times."""
    chosen: list[Step] = []
    tried: set[int | None] = set()
    for group in levels_ahead(policy, view, now):
        # Paged now, not at their own times (the lag metric would read them as early). A
        # level with nobody on call now has nobody on its repeats either. A level tried
        # for want of anyone is paged now if at all: its condition is the one of now, not
        # of its due time (decide skips it once that condition has ended).
        fresh = [
            replace(step, due=now) if step.due > now else step
            for step in group
            if step.level not in tried
            and (NOBODY_STEP + step.id not in view.done or _holds_now(step, policy, view, now))
        ]
        if not fresh:
            continue
        chosen += fresh
        tried.update(step.level for step in fresh)
        if any(pages_for(step, policy, directory, now) for step in fresh):
            return chosen, False
    return chosen, bool(chosen)


def _holds_now(step: Step, policy: Policy, view: IncidentView, now: datetime) -> bool:
    level = next((lv for lv in policy.levels if lv.number == step.level), None)
    return level is None or level.when.holds(
        view.severity, view.category, now, policy.business_hours
    )


def _step_record(step: Step, policy: Policy, directory: Directory, now: datetime) -> StepDone:
    targets = pages_for(step, policy, directory, now)
    if step.kind is StepKind.STATUS_UPDATE:
        kind, cancel_on_ack = PageKind.STATUS, False
    else:
        kind = PageKind.PAGE
        # Management (duration-clock) levels go even when acknowledged.
        cancel_on_ack = _level_clock(policy, step) is EscalationClock.UNACKNOWLEDGED
    pages = tuple(
        NewPage(
            step.id,
            kind,
            t.contact,
            t.channel.value,
            t.address,
            now + t.delay,
            t.backup,
            cancel_on_ack,
        )
        for t in targets
    )
    detail: dict[str, object] = {
        "step": step.id,
        "policy": policy.name,
        "due": step.due.isoformat(),
        "pages": [f"{p.contact}/{p.channel}" for p in pages],
    }
    if replaced := {t.contact: t.instead_of for t in targets if t.instead_of is not None}:
        detail["instead_of"] = replaced  # a contact with no channel, paged through its backup
    if step.level is not None:
        detail["level"] = step.level
    if step.repeat:
        detail["repeat"] = step.repeat
    if not pages:
        event_kind = Event.NOBODY_TO_PAGE
    elif kind is PageKind.STATUS:
        event_kind = Event.STATUS_UPDATE
    else:
        event_kind = Event.ESCALATED
    return StepDone(step.id, TimelineEvent(now, event_kind, "responder", "engine", detail), pages)


# -- the loop ----------------------------------------------------------------------------------


class Escalator:
    """Runs ``decide`` for every due incident, then sleeps until the next due time or a wake."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        metrics: Metrics,
        config: Callable[[], EscalationConfig],  # read at each pass: a reload swaps it
        *,
        on_pages: Callable[[], None] = lambda: None,
        held: Callable[[], bool] = lambda: False,
        batch: int = 1000,
    ) -> None:
        self._on_pages = on_pages  # wakes the outbox sender
        # True while a re-arm (new policies) waits for the store: the steps recorded may
        # still name the old levels, so nothing is decided until it is written (and wakes us).
        self._held = held
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._config = config
        self._batch = batch
        self._wake = asyncio.Event()
        self._passes_started = 0
        self._passes_done = 0
        self._pass_done = asyncio.Event()

    def wake(self) -> None:
        """A nearer due time may have been written (new incident, acknowledge, ...)."""
        self._wake.set()

    async def next_pass(self) -> None:
        """Return once a pass that started after this call has finished: whatever was due
        when it was called has been handled (or failed, to be tried again)."""
        target = self._passes_started + 1
        while self._passes_done < target:
            self._pass_done.clear()
            await self._pass_done.wait()

    async def run_once(self) -> int:
        """Handle everything due now, a batch per transaction; returns how many were handled."""
        handled = 0
        while True:
            now = self._clock.now()
            work = await self._store.due_escalations(now, self._batch)
            if not work:
                return handled
            config = self._config()
            decisions = [decide(item, config, now) for item in work]
            updates = [
                EscalationUpdate(
                    item.incident.id,
                    item.incident.version,
                    d.steps,
                    d.events,
                    d.next_due,
                    d.unsnooze,
                    d.keep_failure,
                )
                for item, d in zip(work, decisions, strict=True)
            ]
            results = await self._store.apply_escalations(updates, now)
            progressed = False
            paged = False
            for item, decision, recorded in zip(work, decisions, results, strict=True):
                if recorded is None:
                    continue  # changed meanwhile (acknowledged, new alert): decided again next pass
                progressed = True
                for step in decision.steps:
                    if step.step in recorded:
                        count_step(self._metrics, step, item.incident, now)
                        paged = paged or bool(step.pages)
            if paged:
                self._on_pages()
            handled += len(work)
            if not progressed or len(work) < self._batch:
                return handled

    async def run_forever(self) -> None:
        while True:
            self._wake.clear()
            started = monotonic()
            self._passes_started += 1
            try:
                if self._held():
                    wake_at = None
                else:
                    await self.run_once()
                    wake_at = await self._store.next_escalation()
            except Exception:
                log.exception("escalation pass failed; trying again shortly")
                wake_at = None
                await asyncio.sleep(1.0)
            self._passes_done = self._passes_started
            self._pass_done.set()
            self._metrics.escalation_pass.observe(monotonic() - started)
            now = self._clock.now()
            limit = now + MAX_SLEEP
            until = limit if wake_at is None else min(wake_at, limit)
            if until <= now:
                continue
            await sleep_until_or_woken(self._clock, until, self._wake)


def count_step(metrics: Metrics, step: StepDone, incident: Incident, now: datetime) -> None:
    """Metrics and log of one escalation step recorded (by the engine, or by an unsnooze)."""
    m = metrics
    if step.event is None:
        # An incident whose alerts went stale ended unseen: no time to resolve.
        if (
            step.step == CLOSED_STEP
            and incident.resolved_at is not None
            and incident.resolved_by != STALE_SWEEP
        ):
            took = (incident.resolved_at - incident.started).total_seconds()
            m.time_to_resolve.labels(incident.severity).observe(took)
        return
    kind = step.event.kind
    if kind is Event.TARGET_BREACHED:
        m.target_breaches.labels(incident.severity, str(step.event.detail["target"])).inc()
        return
    m.escalation_steps.labels(kind.value).inc()
    due = step.event.detail.get("due")
    if isinstance(due, str):
        m.escalation_lag.observe((now - datetime.fromisoformat(due)).total_seconds())
    for page in step.pages:
        m.pages_queued.labels(page.channel, page.kind.value).inc()
    if kind is Event.NOBODY_TO_PAGE:
        log.error(
            "escalation step found nobody to page",
            extra=fields(incident=incident.id, step=step.step),
        )
    elif step.pages:
        log.info(
            "escalated",
            extra=fields(incident=incident.id, step=step.step, pages=len(step.pages)),
        )

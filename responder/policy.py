"""Escalation policies and the pure decision of what is due: which steps, when, and to whom.

A policy is a list of levels, each ``after`` some time from the incident's trigger, on one of
two clocks: ``unacknowledged`` levels page until someone acknowledges (classic paging, repeated
``repeat`` times), ``duration`` levels page while the incident is open, acknowledged or not (the
management matrix). Status updates go out every ``every`` while open. Each step has a stable id
(``L2``, ``L2.r1``, ``U3``) that the engine stores with a unique key, so a step is done once.
``due_steps`` and ``next_due`` take the instant and read no clock; ``pages_for`` turns a step
into concrete (contact, channel, delay) pages through the directory. The exact rules are in
docs/escalation.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType

from responder.calendar import BusinessHours
from responder.directory import Channel, Directory, Target, parse_target
from responder.model import Severity
from responder.yamlfile import Node

DEFAULT_REPEAT_AFTER = timedelta(minutes=15)


class EscalationClock(StrEnum):
    UNACKNOWLEDGED = "unacknowledged"
    DURATION = "duration"


class StepKind(StrEnum):
    LEVEL = "level"
    STATUS_UPDATE = "status_update"


@dataclass(frozen=True, slots=True)
class Condition:
    """When a level applies; ``None`` means "any". Evaluated at the step's due time."""

    categories: frozenset[str] | None = None
    severities: frozenset[Severity] | None = None
    business_hours: bool | None = None

    def holds(self, severity: Severity, category: str, at: datetime, hours: BusinessHours) -> bool:
        if self.categories is not None and category not in self.categories:
            return False
        if self.severities is not None and severity not in self.severities:
            return False
        return self.business_hours is None or hours.is_open(at) == self.business_hours


@dataclass(frozen=True, slots=True)
class Level:
    number: int  # 1-based, as the operator counts
    after: timedelta
    clock: EscalationClock
    targets: tuple[Target, ...]
    when: Condition = Condition()


@dataclass(frozen=True, slots=True)
class StatusUpdates:
    every: timedelta
    targets: tuple[Target, ...]


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    levels: tuple[Level, ...]
    repeat: int = 0
    repeat_after: timedelta = DEFAULT_REPEAT_AFTER
    status_updates: StatusUpdates | None = None
    business_hours: BusinessHours = field(default_factory=BusinessHours)

    @property
    def cycle(self) -> timedelta:
        """How long one pass over the unacknowledged levels lasts before a repeat restarts it."""
        last = max(
            (lv.after for lv in self.levels if lv.clock is EscalationClock.UNACKNOWLEDGED),
            default=timedelta(0),
        )
        return last + self.repeat_after


@dataclass(frozen=True, slots=True)
class IncidentView:
    """What the decision needs to know about one incident (one trigger episode).

    ``snoozed_until`` is the end of the latest snooze, kept after it has passed: a past value
    tells the policy where the escalation was re-armed. ``done`` holds the ids of steps the
    engine has recorded, for this trigger episode.
    """

    triggered_at: datetime
    severity: Severity
    category: str
    acknowledged_at: datetime | None = None
    resolved_at: datetime | None = None
    snoozed_until: datetime | None = None
    done: frozenset[str] = frozenset()
    # When the incident's trigger began (Incident.started), if not triggered_at: what
    # duration-clock levels and status updates count from.
    lasting_since: datetime | None = None
    # When the incident's latest status update went, in any episode (None: none, or the
    # caller keeps no times and ``done`` says which went).
    last_update_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """One thing the escalation does once: page a level, or send a status update."""

    id: str
    kind: StepKind
    due: datetime
    level: int | None = None  # the level number for LEVEL steps
    repeat: int = 0  # 0 on the first pass, r on the r-th repeat
    update: int | None = None  # the count for STATUS_UPDATE steps


@dataclass(frozen=True, slots=True)
class PageTarget:
    """One page to send: ``contact`` on ``channel`` at ``address``, ``delay`` after the step.

    ``backup`` is who the delivery stage fails over to if every channel of ``contact`` fails;
    ``instead_of`` names the contact this page replaces when that contact had no channel.
    """

    contact: str
    channel: Channel
    address: str
    delay: timedelta
    backup: str | None
    via: Target
    instead_of: str | None = None


# -- the decision ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Planned:
    step: Step
    offset: timedelta  # on the unacknowledged clock, for ordering and re-arming; else zero
    condition: Condition | None


def _unacknowledged(policy: Policy) -> list[tuple[str, Level, int, timedelta]]:
    """Every unacknowledged step as (id, level, repeat, offset from trigger), in time order."""
    levels = [lv for lv in policy.levels if lv.clock is EscalationClock.UNACKNOWLEDGED]
    planned: list[tuple[str, Level, int, timedelta]] = []
    for repeat in range(policy.repeat + 1):
        for level in levels:
            step_id = f"L{level.number}" if repeat == 0 else f"L{level.number}.r{repeat}"
            planned.append((step_id, level, repeat, policy.cycle * repeat + level.after))
    planned.sort(key=lambda item: item[3])
    return planned


def last_level_reached(policy: Policy, done: frozenset[str]) -> tuple[str, Level] | None:
    """The unacknowledged-clock step done last in the escalation (the latest in time, a
    repeat included) with its level: whom to remind when a snooze ends."""
    reached = [
        (offset, sid, level) for sid, level, _, offset in _unacknowledged(policy) if sid in done
    ]
    if not reached:
        return None
    _, step_id, level = max(reached, key=lambda item: item[0])
    return step_id, level


def _open_at(incident: IncidentView, at: datetime) -> bool:
    return incident.resolved_at is None or at < incident.resolved_at


def _plan(policy: Policy, incident: IncidentView, now: datetime) -> list[_Planned]:
    """The steps not yet done that may still happen, each with the time it becomes due."""
    start = incident.triggered_at
    if not _open_at(incident, now):
        return []
    plan: list[_Planned] = []

    if incident.acknowledged_at is None or incident.acknowledged_at > now:
        unacked = _unacknowledged(policy)
        done_offsets = [off for sid, _, _, off in unacked if sid in incident.done]
        reached = max(done_offsets, default=None)
        snooze = incident.snoozed_until
        for step_id, level, repeat, offset in unacked:
            # Escalation only moves forward: once a later step is done, earlier ones are moot.
            if step_id in incident.done or (reached is not None and offset < reached):
                continue
            due = start + offset
            if snooze is not None:
                # Re-armed from where it was: the next step waits its full gap after the snooze
                # ends, which also holds everything back while the snooze lasts.
                due = max(due, snooze + (offset - (reached or timedelta(0))))
            step = Step(step_id, StepKind.LEVEL, due, level.number, repeat)
            plan.append(_Planned(step, offset, level.when))

    lasting = incident.lasting_since or start
    for level in policy.levels:
        step_id = f"L{level.number}"
        if level.clock is EscalationClock.DURATION and step_id not in incident.done:
            step = Step(step_id, StepKind.LEVEL, lasting + level.after, level.number)
            plan.append(_Planned(step, timedelta(0), level.when))
    return plan


def _applies(planned: _Planned, policy: Policy, incident: IncidentView) -> bool:
    condition = planned.condition
    return condition is None or condition.holds(
        incident.severity, incident.category, planned.step.due, policy.business_hours
    )


def due_steps(policy: Policy, incident: IncidentView, now: datetime) -> list[Step]:
    """The steps to do at ``now``: due, not done, not moot, whose conditions hold.

    A level whose condition fails at its due time is skipped for good, so the answer depends
    only on the incident, never on when the engine happened to look.
    """
    if not _open_at(incident, now):
        return []
    due: list[Step] = []
    for planned in _plan(policy, incident, now):
        step = planned.step
        if step.due > now or not _applies(planned, policy, incident):
            continue
        due.append(step)
    due = _latest_pass_only(due)
    update = _latest_update(policy, incident, now)
    if update is not None:
        due.append(update)
    return sorted(due, key=lambda s: (s.due, s.id))


def levels_ahead(policy: Policy, incident: IncidentView, now: datetime) -> list[list[Step]]:
    """The levels not done yet, in the order the escalation would reach them, grouped by
    due time (those due by ``now`` form the first group). A snooze is left out, and a level
    is kept only if its condition holds when it would be paged: at its due time if that has
    come, else at ``now``. What a containment failure pages from: it cannot wait for the
    levels' own times, and when the next has nobody on call, the one after may."""
    if not _open_at(incident, now):
        return []
    groups: dict[datetime, list[Step]] = {}
    for planned in _plan(policy, replace(incident, snoozed_until=None), now):
        step, condition = planned.step, planned.condition
        at = min(step.due, now)
        if condition is not None and not condition.holds(
            incident.severity, incident.category, at, policy.business_hours
        ):
            continue
        groups.setdefault(max(step.due, now), []).append(step)
    return [
        sorted(_latest_pass_only(steps), key=lambda s: s.id) for _, steps in sorted(groups.items())
    ]


def _latest_pass_only(steps: list[Step]) -> list[Step]:
    """After downtime several passes of one level may be overdue: page the level once."""
    latest: dict[int | None, Step] = {}
    for step in steps:
        kept = latest.get(step.level)
        if kept is None or step.repeat > kept.repeat:
            latest[step.level] = step
    return list(latest.values())


def _latest_update(policy: Policy, incident: IncidentView, now: datetime) -> Step | None:
    """The newest status update due by ``now``; older missed ones are superseded by it.

    Updates go every ``every`` from the incident's trigger, through its episodes (an
    unacknowledge, a severity raise or a reload start the levels over, not the updates),
    and one is due unless an update went since its time: after a reload changed
    ``every``, the next goes at most one new interval after the last one sent.
    """
    updates = policy.status_updates
    start = incident.lasting_since or incident.triggered_at
    if updates is None or now < start + updates.every:
        return None
    count = (now - start) // updates.every
    due = start + updates.every * count
    last = incident.last_update_at
    if last is not None and last >= due:
        return None
    step_id = f"U{count}"
    if step_id in incident.done:
        if last is None:
            return None
        # Taken by an update sent before a reload changed the interval; with the interval
        # in it, the id is that of this time only.
        step_id += f".e{int(updates.every.total_seconds())}"
    return Step(step_id, StepKind.STATUS_UPDATE, due, update=count)


def next_due(
    policy: Policy, incident: IncidentView, after: datetime, *, levels_only: bool = False
) -> datetime | None:
    """The earliest instant later than ``after`` at which ``due_steps`` will return something
    (``levels_only``: a level, not a status update).

    None when nothing more can happen (resolved, or every step done, moot or skipped). The
    engine stores this as the incident's wake-up time.
    """
    if not _open_at(incident, after):
        return None
    candidates: list[datetime] = []
    for planned in _plan(policy, incident, after):
        due = planned.step.due
        if due > after and _applies(planned, policy, incident):
            candidates.append(due)
    updates = policy.status_updates
    if updates is not None and not levels_only:
        start = incident.lasting_since or incident.triggered_at
        count = max(1, (after - start) // updates.every + 1)
        candidates.append(start + updates.every * count)
    candidates = [c for c in candidates if incident.resolved_at is None or c < incident.resolved_at]
    return min(candidates, default=None)


# -- to whom -----------------------------------------------------------------------------------


LevelKeys = tuple[tuple[int, str], ...]  # (number, identity) of each of a policy's levels


def level_identity(level: Level) -> str:
    """What makes a level the same level across config changes, as stable text: its clock,
    targets and condition. Its ``after`` may change; the number is where it stands."""
    when = level.when
    return json.dumps(
        [
            level.clock.value,
            [[target.kind.value, target.name] for target in level.targets],
            None if when.categories is None else sorted(when.categories),
            None if when.severities is None else sorted(s.value for s in when.severities),
            when.business_hours,
        ],
        separators=(",", ":"),
    )


def level_keys(policy: Policy) -> LevelKeys:
    return tuple((level.number, level_identity(level)) for level in policy.levels)


def level_renumbering(old: LevelKeys, new: LevelKeys) -> dict[int, int | None]:
    """How a config change moved the levels of a policy kept by name: old level number to
    new, or None for a level that is gone. A level is the same level when its identity
    (``level_identity``) is; repeated look-alikes pair in order. Empty when nothing moved.
    Steps are recorded by level number, so without this a removed level would make the
    next one count as done, and an inserted one would page a level again."""
    free: dict[str, list[int]] = {}
    for number, identity in new:
        free.setdefault(identity, []).append(number)
    moves: dict[int, int | None] = {}
    for number, identity in old:
        matches = free.get(identity)
        moves[number] = matches.pop(0) if matches else None
    if all(old_number == new_number for old_number, new_number in moves.items()):
        return {}
    return moves


def once_only_steps(policy: Policy | None) -> frozenset[str]:
    """Steps an incident does once whatever happens to it: its duration-clock levels
    (management is told once that an incident has lasted; an unacknowledge does not tell
    them again)."""
    if policy is None:
        return frozenset()
    return frozenset(
        f"L{level.number}" for level in policy.levels if level.clock is EscalationClock.DURATION
    )


def duration_levels(keys: LevelKeys) -> list[tuple[int, str]]:
    """The duration-clock (management) levels among ``keys``, as (number, identity), in the
    order of their numbers."""
    duration = EscalationClock.DURATION.value
    return sorted((n, identity) for n, identity in keys if json.loads(identity)[0] == duration)


def same_levels(old: LevelKeys, new: LevelKeys) -> dict[int, int | None] | None:
    """When ``new`` has exactly the levels of ``old``, perhaps in another order: how they
    moved (``level_renumbering``; empty: not at all). None when the levels differ."""
    moves = level_renumbering(old, new)
    if len(old) != len(new) or None in moves.values():
        return None
    return moves


@dataclass(frozen=True, slots=True)
class EscalationLayout:
    """The shape of the escalation policies that open incidents' recorded steps refer to:
    each policy's levels by number and identity, and the default policy. The store keeps
    the layout its incidents were last armed under, so that a config changed while the
    daemon was stopped is reconciled at the next start as a reload would have been."""

    default_policy: str | None
    policies: Mapping[str, LevelKeys]

    @classmethod
    def of(cls, policies: Mapping[str, Policy], default_policy: str | None) -> EscalationLayout:
        return cls(default_policy, {name: level_keys(p) for name, p in policies.items()})

    def to_json(self) -> str:
        document = {
            "default_policy": self.default_policy,
            "policies": {name: [list(key) for key in keys] for name, keys in self.policies.items()},
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> EscalationLayout:
        """Raises ValueError for text that is not a layout."""
        try:
            document = json.loads(text)
            default = document["default_policy"]
            policies = {
                str(name): tuple((int(number), str(identity)) for number, identity in keys)
                for name, keys in document["policies"].items()
            }
        except (TypeError, KeyError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not an escalation layout: {exc}") from None
        if default is not None and not isinstance(default, str):
            raise ValueError("not an escalation layout: default_policy")
        return cls(default, policies)


def targets_of(step: Step, policy: Policy) -> tuple[Target, ...]:
    """The targets a step pages, as the policy lists them."""
    if step.kind is StepKind.STATUS_UPDATE:
        return () if policy.status_updates is None else policy.status_updates.targets
    for level in policy.levels:
        if level.number == step.level:
            return level.targets
    raise KeyError(f"policy {policy.name} has no level {step.level}")


def pages_for(step: Step, policy: Policy, directory: Directory, at: datetime) -> list[PageTarget]:
    """Expand a step into pages: one per (contact, channel), with the contact's own delays.

    Schedules are read at ``at``. A contact without any channel is replaced by the first
    contact along its backup chain that has one.
    """
    pages: list[PageTarget] = []
    seen: set[tuple[str, Channel]] = set()
    for target in targets_of(step, policy):
        for name in directory.expand(target, at):
            reached, rules = directory.reachable(name)
            for rule in rules:
                if (reached, rule.channel) in seen:
                    continue
                seen.add((reached, rule.channel))
                contact = directory.contacts[reached]
                address = contact.address(rule.channel)
                if address is None:  # parse_directory refuses such rules
                    continue
                pages.append(
                    PageTarget(
                        contact=reached,
                        channel=rule.channel,
                        address=address,
                        delay=rule.after,
                        backup=directory.backup_of(reached),
                        via=target,
                        instead_of=None if reached == name else name,
                    )
                )
    return pages


# -- parsing -----------------------------------------------------------------------------------


def parse_policies(
    node: Node, directory: Directory, business_hours: BusinessHours
) -> dict[str, Policy]:
    """Read the ``escalation_policies:`` mapping; every target is checked against the directory."""
    return {
        name: _parse_policy(name, item, directory, business_hours) for name, item in node.items()
    }


def _parse_targets(node: Node, directory: Directory) -> tuple[Target, ...]:
    targets: list[Target] = []
    for item in node.as_list():
        target = parse_target(item, directory)
        if target in targets:
            raise item.error(f"{target} is listed twice")
        targets.append(target)
    if not targets:
        raise node.error("at least one target is needed")
    return tuple(targets)


def _parse_condition(node: Node) -> Condition:
    node.keys_allowed("category", "severity", "business_hours")
    categories = None
    category_node = node.get("category")
    if category_node is not None:
        categories = frozenset(c.as_str() for c in _one_or_many(category_node))
    severities = None
    severity_node = node.get("severity")
    if severity_node is not None:
        names = [s.value for s in Severity]
        severities = frozenset(Severity(s.as_choice(*names)) for s in _one_or_many(severity_node))
    hours_node = node.get("business_hours")
    hours = None if hours_node is None else hours_node.as_bool()
    return Condition(categories, severities, hours)


def _one_or_many(node: Node) -> list[Node]:
    items = node.as_list() if node.is_list() else [node]
    if not items:
        raise node.error("an empty list matches nothing; leave the key out to match anything")
    return items


def _parse_policy(
    name: str, node: Node, directory: Directory, business_hours: BusinessHours
) -> Policy:
    node.keys_allowed("levels", "repeat", "repeat_after", "status_updates")
    levels: list[Level] = []
    previous = timedelta(0)
    levels_node = node["levels"]
    for number, item in enumerate(levels_node.as_list(), start=1):
        item.keys_allowed("after", "clock", "targets", "when")
        after_node = item.get("after")
        after = timedelta(0) if after_node is None else after_node.as_duration()
        if after < previous:
            raise (after_node or item).error(
                f"levels are listed in time order; this one comes before level {number - 1}"
            )
        previous = after
        clock_node = item.get("clock")
        clock = EscalationClock(
            "unacknowledged"
            if clock_node is None
            else clock_node.as_choice(*(c.value for c in EscalationClock))
        )
        when_node = item.get("when")
        when = Condition() if when_node is None else _parse_condition(when_node)
        targets = _parse_targets(item["targets"], directory)
        levels.append(Level(number, after, clock, targets, when))
    if not levels:
        raise levels_node.error(f"policy {name} needs at least one level")

    repeat_node = node.get("repeat")
    repeat = 0 if repeat_node is None else repeat_node.as_int(minimum=0, maximum=100)
    repeat_after_node = node.get("repeat_after")
    repeat_after = DEFAULT_REPEAT_AFTER
    if repeat_after_node is not None:
        repeat_after = repeat_after_node.as_duration()
        if repeat_after <= timedelta(0):
            raise repeat_after_node.error("must be longer than zero")
    if repeat and not any(lv.clock is EscalationClock.UNACKNOWLEDGED for lv in levels):
        raise (repeat_node or node).error("repeat restarts unacknowledged levels; there are none")

    updates = None
    updates_node = node.get("status_updates")
    if updates_node is not None:
        updates_node.keys_allowed("every", "to")
        every_node = updates_node["every"]
        every = every_node.as_duration()
        if every < timedelta(minutes=1):
            raise every_node.error("status updates at most once a minute")
        if every % timedelta(seconds=1):
            # After a reload an update's id carries its interval in seconds (U4.e90): two
            # intervals within a second of each other would share ids, and one update
            # would be taken for the other and never sent.
            raise every_node.error("status updates: an interval in whole seconds")
        updates = StatusUpdates(every, _parse_targets(updates_node["to"], directory))
    return Policy(name, tuple(levels), repeat, repeat_after, updates, business_hours)


def frozen_policies(policies: Mapping[str, Policy]) -> Mapping[str, Policy]:
    """A read-only view for the config snapshot."""
    return MappingProxyType(dict(policies))

"""The people: contacts, roles and teams, and on-call schedules, parsed into one ``Directory``.

A page is addressed to a ``Target`` (a contact, a role, a team or a schedule); the directory
turns it into contact names at a given instant. Schedules are layers of rotations, each handing
off at a local time of day in the schedule's time zone, so a Monday 09:00 Berlin hand-off stays
at 09:00 on the wall across daylight-saving changes; a later layer wins over an earlier one
where it has someone on call, and overrides win over every layer. Everything is pure and
immutable: the directory is part of the config snapshot and every question takes the instant.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from zoneinfo import ZoneInfo

from responder.calendar import (
    DAY,
    BusinessHours,
    parse_date,
    parse_time_of_day,
    parse_timezone,
    parse_window,
    require_aware,
    wall_to_utc,
)
from responder.yamlfile import Node

E164 = re.compile(r"\+[1-9]\d{6,14}")
# Deliberately loose: the mail server is the judge; this only catches typos like a missing @.
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+")
WEBHOOK_URL = re.compile(r"https?://[^\s/]+\S*")


UTC_ZONE = ZoneInfo("UTC")


class Channel(StrEnum):
    SMS = "sms"
    VOICE = "voice"
    EMAIL = "email"
    WEBHOOK = "webhook"


class TargetKind(StrEnum):
    CONTACT = "contact"
    ROLE = "role"
    TEAM = "team"
    SCHEDULE = "schedule"


@dataclass(frozen=True, slots=True)
class Target:
    """Whom a page is for, before it is resolved to people."""

    kind: TargetKind
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True, slots=True)
class NotificationRule:
    """One of a contact's own rules: use ``channel``, ``after`` this long into the page."""

    channel: Channel
    after: timedelta = timedelta(0)


@dataclass(frozen=True, slots=True)
class Contact:
    name: str
    sms: str | None = None
    voice: str | None = None
    email: str | None = None
    webhook: str | None = None
    timezone: ZoneInfo = UTC_ZONE
    backup: str | None = None
    rules: tuple[NotificationRule, ...] = ()

    def address(self, channel: Channel) -> str | None:
        """The number, mailbox or URL for ``channel``, if the contact has one."""
        match channel:
            case Channel.SMS:
                return self.sms
            case Channel.VOICE:
                return self.voice
            case Channel.EMAIL:
                return self.email
            case Channel.WEBHOOK:
                return self.webhook


class RotationType(StrEnum):
    DAILY = "daily"
    WEEKLY = "weekly"
    CUSTOM = "custom"


@dataclass(frozen=True, slots=True)
class Layer:
    """One rotation: ``members`` take turns, the first from ``start`` at ``handoff`` local time.

    ``local_days`` shifts are counted in calendar days on the schedule's wall clock (so hand-offs
    stay at the same local time across DST); otherwise ``length`` is elapsed time.
    ``restrict`` limits the layer to a weekly window (its holidays are ignored).
    """

    name: str
    members: tuple[str, ...]
    start: date
    handoff: timedelta  # from local midnight
    length: timedelta
    local_days: int | None
    restrict: BusinessHours | None = None


@dataclass(frozen=True, slots=True)
class Override:
    contact: str
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class Schedule:
    name: str
    timezone: ZoneInfo
    layers: tuple[Layer, ...]
    overrides: tuple[Override, ...] = ()


@dataclass(frozen=True, slots=True)
class Shift:
    """``who`` is on call from ``start`` to ``end``; an empty ``who`` is a gap in the schedule."""

    who: tuple[str, ...]
    start: datetime
    end: datetime


def _anchor(layer: Layer, zone: ZoneInfo) -> datetime:
    naive = datetime(layer.start.year, layer.start.month, layer.start.day) + layer.handoff
    return wall_to_utc(naive, zone)


def _handoff(layer: Layer, zone: ZoneInfo, index: int) -> datetime:
    """When the ``index``-th shift of ``layer`` begins (index 0 at the anchor)."""
    if layer.local_days is None:
        return _anchor(layer, zone) + layer.length * index
    first = datetime(layer.start.year, layer.start.month, layer.start.day) + layer.handoff
    return wall_to_utc(first + timedelta(days=layer.local_days * index), zone)


def _shift_index(layer: Layer, zone: ZoneInfo, at: datetime) -> int | None:
    """The index of the shift running at ``at``; None before the rotation starts."""
    anchor = _anchor(layer, zone)
    if at < anchor:
        return None
    # Elapsed time is within an hour or two of local time, so the guess is off by at most one.
    index = int((at - anchor) / layer.length)
    while index > 0 and _handoff(layer, zone, index) > at:
        index -= 1
    while _handoff(layer, zone, index + 1) <= at:
        index += 1
    return index


def _layer_member(layer: Layer, zone: ZoneInfo, at: datetime) -> str | None:
    if layer.restrict is not None and not layer.restrict.is_open(at):
        return None
    index = _shift_index(layer, zone, at)
    if index is None:
        return None
    return layer.members[index % len(layer.members)]


def _layer_changes(layer: Layer, zone: ZoneInfo, start: datetime, end: datetime) -> list[datetime]:
    """Every instant in (start, end) at which this layer may put someone else on call."""
    changes: list[datetime] = []
    index = _shift_index(layer, zone, start)
    index = -1 if index is None else index
    while (moment := _handoff(layer, zone, index + 1)) < end:
        if moment > start:
            changes.append(moment)
        index += 1
    if layer.restrict is not None:
        moment = start
        while (moment := layer.restrict.next_change(moment)) < end:
            changes.append(moment)
    return changes


@dataclass(frozen=True, slots=True)
class Directory:
    """Contacts, roles, teams and schedules of one config snapshot."""

    contacts: Mapping[str, Contact]
    roles: Mapping[str, tuple[Target, ...]]
    teams: Mapping[str, tuple[Target, ...]]
    schedules: Mapping[str, Schedule]

    def has(self, target: Target) -> bool:
        return target.name in self._namespace(target.kind)

    def _namespace(self, kind: TargetKind) -> Mapping[str, object]:
        match kind:
            case TargetKind.CONTACT:
                return self.contacts
            case TargetKind.ROLE:
                return self.roles
            case TargetKind.TEAM:
                return self.teams
            case TargetKind.SCHEDULE:
                return self.schedules

    def backup_of(self, name: str) -> str | None:
        return self.contacts[name].backup

    def on_call(self, schedule: str, at: datetime) -> tuple[str, ...]:
        """Who is on call at ``at``: active overrides, else the last layer with someone."""
        require_aware(at)
        plan = self.schedules[schedule]
        overriding = _unique(o.contact for o in plan.overrides if o.start <= at < o.end)
        if overriding:
            return overriding
        for layer in reversed(plan.layers):
            member = _layer_member(layer, plan.timezone, at)
            if member is not None:
                return (member,)
        return ()

    def shifts(self, schedule: str, start: datetime, end: datetime) -> list[Shift]:
        """The schedule from ``start`` to ``end`` as contiguous shifts, gaps included."""
        require_aware(start)
        require_aware(end)
        if end <= start:
            return []
        plan = self.schedules[schedule]
        moments = {start, end}
        for layer in plan.layers:
            moments.update(_layer_changes(layer, plan.timezone, start, end))
        for override in plan.overrides:
            moments.update(m for m in (override.start, override.end) if start < m < end)
        ordered = sorted(m.astimezone(UTC) for m in moments)
        result: list[Shift] = []
        for begin, finish in itertools.pairwise(ordered):
            who = self.on_call(schedule, begin)
            if result and result[-1].who == who:
                result[-1] = Shift(who, result[-1].start, finish)
            else:
                result.append(Shift(who, begin, finish))
        return result

    def expand(self, target: Target, at: datetime) -> tuple[str, ...]:
        """The contact names ``target`` means at ``at``, in order, each once."""
        return _unique(self._expand(target, at))

    def _expand(self, target: Target, at: datetime) -> Iterable[str]:
        match target.kind:
            case TargetKind.CONTACT:
                yield target.name
            case TargetKind.SCHEDULE:
                yield from self.on_call(target.name, at)
            case TargetKind.ROLE | TargetKind.TEAM:
                group = self.roles if target.kind is TargetKind.ROLE else self.teams
                for member in group[target.name]:
                    yield from self._expand(member, at)

    def reachable(self, name: str) -> tuple[str, tuple[NotificationRule, ...]]:
        """The first contact along ``name``'s backup chain that has a channel, with its rules.

        Parsing guarantees that every chain ends in such a contact.
        """
        contact = self.contacts[name]
        while not contact.rules and contact.backup is not None:
            contact = self.contacts[contact.backup]
        return contact.name, contact.rules


def _unique(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


# -- parsing ---------------------------------------------------------------------------------


def parse_directory(root: Node) -> Directory:
    """Read ``contacts``, ``roles``, ``teams`` and ``schedules`` from the top-level config node.

    Other top-level keys are left to their own readers.
    """
    contacts_node = root.get("contacts")
    contacts: dict[str, Contact] = {}
    contact_nodes: dict[str, Node] = {}
    if contacts_node is not None:
        for name, node in contacts_node.items():
            contacts[name] = _parse_contact(name, node)
            contact_nodes[name] = node
    _check_backups(contacts, contact_nodes)

    schedules: dict[str, Schedule] = {}
    schedules_node = root.get("schedules")
    if schedules_node is not None:
        for name, node in schedules_node.items():
            schedules[name] = _parse_schedule(name, node, contacts)

    directory = Directory(MappingProxyType(contacts), {}, {}, MappingProxyType(schedules))
    # Groups may name each other, so every group name is known before any member is read.
    group_nodes: dict[TargetKind, dict[str, Node]] = {TargetKind.ROLE: {}, TargetKind.TEAM: {}}
    for kind, key in ((TargetKind.ROLE, "roles"), (TargetKind.TEAM, "teams")):
        section = root.get(key)
        if section is not None:
            group_nodes[kind] = dict(section.items())
    placeholder = Directory(
        directory.contacts,
        dict.fromkeys(group_nodes[TargetKind.ROLE], ()),
        dict.fromkeys(group_nodes[TargetKind.TEAM], ()),
        directory.schedules,
    )
    roles = {n: _parse_group(node, placeholder) for n, node in group_nodes[TargetKind.ROLE].items()}
    teams = {n: _parse_group(node, placeholder) for n, node in group_nodes[TargetKind.TEAM].items()}
    _check_group_cycles(roles, teams, group_nodes)
    return Directory(
        directory.contacts,
        MappingProxyType(roles),
        MappingProxyType(teams),
        directory.schedules,
    )


def _parse_contact(name: str, node: Node) -> Contact:
    node.keys_allowed("sms", "voice", "email", "webhook", "timezone", "backup", "notify")
    addresses: dict[Channel, str] = {}
    for channel, pattern, example in (
        (Channel.SMS, E164, "an E.164 number such as +4915112345678"),
        (Channel.VOICE, E164, "an E.164 number such as +4915112345678"),
        (Channel.EMAIL, EMAIL, "an address such as alice@example.com"),
        (Channel.WEBHOOK, WEBHOOK_URL, "an http(s) URL"),
    ):
        field_node = node.get(channel.value)
        if field_node is None:
            continue
        phone = channel in (Channel.SMS, Channel.VOICE)
        value = (field_node.as_phone_number() if phone else field_node.as_str()).strip()
        if not pattern.fullmatch(value):
            raise field_node.error(f"expected {example}, got {value!r}")
        addresses[channel] = value

    zone_node = node.get("timezone")
    timezone = ZoneInfo("UTC") if zone_node is None else parse_timezone(zone_node)
    backup_node = node.get("backup")
    backup = None if backup_node is None else backup_node.as_str()
    if backup == name and backup_node is not None:
        raise backup_node.error(f"{name} cannot be their own backup")

    rules_node = node.get("notify")
    if rules_node is None:
        # Text and mail at once; a contact with neither gets whatever else they have.
        defaults: list[Channel] = [c for c in (Channel.SMS, Channel.EMAIL) if c in addresses]
        defaults = defaults or [c for c in (Channel.VOICE, Channel.WEBHOOK) if c in addresses]
        rules = tuple(NotificationRule(c) for c in defaults)
    else:
        parsed: list[NotificationRule] = []
        for item in rules_node.as_list():
            item.keys_allowed("channel", "after")
            channel_node = item["channel"]
            channel = Channel(channel_node.as_choice(*(c.value for c in Channel)))
            if channel not in addresses:
                raise channel_node.error(f"{name} has no {channel} address to notify")
            after_node = item.get("after")
            after = timedelta(0) if after_node is None else after_node.as_duration()
            rule = NotificationRule(channel, after)
            if rule in parsed:
                raise item.error(f"the rule {channel} after {after} is listed twice")
            parsed.append(rule)
        rules = tuple(sorted(parsed, key=lambda r: r.after))
    if not rules and backup is None:
        raise node.error(
            f"{name} has no sms, voice, email or webhook and no backup: "
            "pages to them would reach nobody"
        )
    return Contact(
        name,
        sms=addresses.get(Channel.SMS),
        voice=addresses.get(Channel.VOICE),
        email=addresses.get(Channel.EMAIL),
        webhook=addresses.get(Channel.WEBHOOK),
        timezone=timezone,
        backup=backup,
        rules=rules,
    )


def _check_backups(contacts: Mapping[str, Contact], nodes: Mapping[str, Node]) -> None:
    for name, contact in contacts.items():
        if contact.backup is None:
            continue
        backup_node = nodes[name]["backup"]
        if contact.backup not in contacts:
            raise backup_node.error(f"unknown contact {contact.backup!r}")
        seen = [name]
        current: str | None = contact.backup
        while current is not None:
            if current in seen:
                chain = " -> ".join([*seen, current])
                raise backup_node.error(f"backups go round in a circle: {chain}")
            seen.append(current)
            current = contacts[current].backup


def _contact_ref(node: Node, contacts: Mapping[str, Contact]) -> str:
    name = node.as_str()
    if name not in contacts:
        raise node.error(f"unknown contact {name!r}")
    return name


def parse_target(node: Node, directory: Directory) -> Target:
    """``{contact: x}``, ``{role: x}``, ``{team: x}`` or ``{schedule: x}``, checked by name;
    a plain name is a contact, as in roles and teams."""
    if not node.is_map():
        return Target(TargetKind.CONTACT, _contact_ref(node, directory.contacts))
    kinds = [k.value for k in TargetKind]
    node.keys_allowed(*kinds)
    keys = node.keys()
    if len(keys) != 1:
        raise node.error(f"a target names exactly one of {', '.join(kinds)}")
    kind = TargetKind(keys[0])
    name_node = node[keys[0]]
    target = Target(kind, name_node.as_str())
    if not directory.has(target):
        raise name_node.error(f"unknown {kind} {target.name!r}")
    return target


def _parse_group(node: Node, directory: Directory) -> tuple[Target, ...]:
    members: list[Target] = []
    for item in node.as_list():
        if item.is_map():
            target = parse_target(item, directory)
        else:
            target = Target(TargetKind.CONTACT, _contact_ref(item, directory.contacts))
        if target in members:
            raise item.error(f"{target} is listed twice")
        members.append(target)
    if not members:
        raise node.error("a role or team needs at least one member")
    return tuple(members)


def _check_group_cycles(
    roles: Mapping[str, tuple[Target, ...]],
    teams: Mapping[str, tuple[Target, ...]],
    nodes: Mapping[TargetKind, Mapping[str, Node]],
) -> None:
    groups = {TargetKind.ROLE: roles, TargetKind.TEAM: teams}

    def visit(target: Target, path: list[Target]) -> None:
        if target in path:
            chain = " -> ".join(str(t) for t in [*path, target])
            raise nodes[path[0].kind][path[0].name].error(f"groups contain each other: {chain}")
        for member in groups[target.kind][target.name]:
            if member.kind in groups:
                visit(member, [*path, target])

    for kind, mapping in groups.items():
        for name in mapping:
            visit(Target(kind, name), [])


_ROTATION_DAYS = {RotationType.DAILY: 1, RotationType.WEEKLY: 7}


def _parse_schedule(name: str, node: Node, contacts: Mapping[str, Contact]) -> Schedule:
    node.keys_allowed("timezone", "layers", "overrides")
    zone_node = node.get("timezone")
    zone = ZoneInfo("UTC") if zone_node is None else parse_timezone(zone_node)
    layers_node = node["layers"]
    layers = tuple(
        _parse_layer(item, index, zone, contacts)
        for index, item in enumerate(layers_node.as_list(), start=1)
    )
    if not layers:
        raise layers_node.error(f"schedule {name} needs at least one layer")
    overrides: list[Override] = []
    overrides_node = node.get("overrides")
    for item in [] if overrides_node is None else overrides_node.as_list():
        item.keys_allowed("contact", "start", "end")
        contact = _contact_ref(item["contact"], contacts)
        start = _parse_instant(item["start"], zone)
        end_node = item["end"]
        end = _parse_instant(end_node, zone)
        if end <= start:
            raise end_node.error("end must be after start")
        overrides.append(Override(contact, start, end))
    return Schedule(name, zone, layers, tuple(overrides))


def _parse_layer(node: Node, index: int, zone: ZoneInfo, contacts: Mapping[str, Contact]) -> Layer:
    node.keys_allowed("name", "type", "length", "start", "handoff", "members", "restrict")
    name_node = node.get("name")
    name = f"layer {index}" if name_node is None else name_node.as_str()
    type_node = node.get("type")
    rotation = RotationType(
        "weekly" if type_node is None else type_node.as_choice(*(t.value for t in RotationType))
    )
    length_node = node.get("length")
    if rotation is RotationType.CUSTOM:
        if length_node is None:
            raise node.error("a custom rotation needs a length, such as 12h or 3d")
        length = length_node.as_duration()
        if length < timedelta(minutes=1):
            raise length_node.error("a shift must last at least one minute")
        whole_days = length.days if length == timedelta(days=length.days) else None
    else:
        if length_node is not None:
            raise length_node.error(f"only custom rotations take a length; {rotation} is fixed")
        whole_days = _ROTATION_DAYS[rotation]
        length = timedelta(days=whole_days)

    handoff_node = node.get("handoff")
    handoff = timedelta(hours=9)
    if handoff_node is not None:
        moment = parse_time_of_day(handoff_node)
        handoff = timedelta(hours=moment.hour, minutes=moment.minute)
    members_node = node["members"]
    members = tuple(_contact_ref(m, contacts) for m in members_node.as_list())
    if not members:
        raise members_node.error("a rotation needs at least one member")
    restrict_node = node.get("restrict")
    restrict = None
    if restrict_node is not None:
        restrict = _parse_restriction(restrict_node, zone)
    return Layer(name, members, parse_date(node["start"]), handoff, length, whole_days, restrict)


def _parse_restriction(node: Node, zone: ZoneInfo) -> BusinessHours:
    """A weekly window in the schedule's zone; what it leaves out is not restricted: without
    ``days`` it applies every day, without ``start`` from midnight, without ``end`` until
    midnight (``restrict: {days: [sat, sun]}`` is the whole weekend, not 09:00-17:00)."""
    node.keys_allowed("days", "start", "end")
    window = parse_window(node, BusinessHours(zone, frozenset(range(7)), timedelta(0), DAY))
    if len(window.days) == 7 and window.start == timedelta(0) and window.end == DAY:
        raise node.error("a restriction to every hour of every day restricts nothing; leave it out")
    return window


def _parse_instant(node: Node, zone: ZoneInfo) -> datetime:
    """A timestamp; one written without an offset is wall time in the schedule's zone."""
    raw = node.value
    if isinstance(raw, datetime):
        moment = raw
    elif isinstance(raw, str):
        try:
            moment = datetime.fromisoformat(raw.strip())
        except ValueError:
            raise node.error(f"expected a time such as 2026-03-01T09:00, got {raw!r}") from None
    elif isinstance(raw, date):
        day = raw.isoformat()
        raise node.error(f"expected a time such as {day}T00:00, got the date {day} alone")
    else:
        raise node.error(f"expected a time such as 2026-03-01T09:00, got {raw!r}")
    if moment.tzinfo is None:
        return wall_to_utc(moment, zone)
    return moment.astimezone(UTC)

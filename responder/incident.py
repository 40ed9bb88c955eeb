"""Incidents: what groups alerts, the states an incident moves through, and its records.

An incident is one problem a human must own. Alerts join it by its key (the rule's
``group_by`` labels, or Alertmanager's group key); it is triggered, acknowledged, snoozed
until a time, or resolved. A resolved incident that fires again within the reopen window is
re-triggered (a new *episode*: escalation starts over, the history stays). Every change is an
event in its timeline. The store writes these records; this module only defines them and the
pure rules (keys, titles, which transitions are allowed).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType

from responder.model import Classification


class IncidentState(StrEnum):
    TRIGGERED = "triggered"
    ACKNOWLEDGED = "acknowledged"
    SNOOZED = "snoozed"
    RESOLVED = "resolved"


class PageKind(StrEnum):
    PAGE = "page"  # an escalation level: someone must act
    STATUS = "status"  # a status update to stakeholders while open
    RECOVERY = "recovery"  # the incident resolved: everyone paged is told
    TEST = "test"  # a drill


# The step of a reassignment's pages: A<time>. A snooze holds the escalation, not them.
REASSIGN_STEP = "A"


def is_reassignment(step: str) -> bool:
    return step.startswith(REASSIGN_STEP)


# The error of a page whose send was cut off (a crash, a store error after the hand-over):
# whether it reached the provider is unknown, so it is re-routed, never resent.
INTERRUPTED = "interrupted while sending: outcome unknown"


# The error of a page cancelled because the trigger it was made for is over: the incident
# resolved and fired again while it waited (a retry, a rate limit).
TRIGGER_ENDED = "cancelled: the incident resolved and fired again since this page was made"


class PageState(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"  # claimed; handed to its channel (``handed_at``) just before the call
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"  # acknowledged or resolved before it was due


class Event(StrEnum):
    """Timeline entry kinds; the report and the API show them by these names."""

    TRIGGERED = "triggered"
    RETRIGGERED = "retriggered"
    ALERT_FIRED = "alert_fired"
    ALERT_RESOLVED = "alert_resolved"
    ALERT_STALE = "alert_stale"
    SEVERITY_RAISED = "severity_raised"
    ESCALATED = "escalated"
    STATUS_UPDATE = "status_update"
    NOBODY_TO_PAGE = "nobody_to_page"
    NO_POLICY = "no_policy"
    POLICY_GONE = "policy_gone"
    ACKNOWLEDGED = "acknowledged"
    UNACKNOWLEDGED = "unacknowledged"
    SNOOZED = "snoozed"
    SNOOZE_ENDED = "snooze_ended"
    REASSIGNED = "reassigned"
    NOTE = "note"
    RESOLVED = "resolved"
    RECOVERY = "recovery"
    TARGET_BREACHED = "target_breached"
    PAGE_SENT = "page_sent"
    PAGE_FAILED = "page_failed"
    PAGE_DELIVERED = "page_delivered"
    FAILOVER = "failover"
    DRILL = "drill"
    ACTION_STARTED = "action_started"
    ACTION_SKIPPED = "action_skipped"
    ACTION_REJECTED = "action_rejected"
    ACTION_DRY_RUN = "action_dry_run"
    ACTION_FINISHED = "action_finished"
    ACTION_INTERRUPTED = "action_interrupted"
    # A process a killed daemon left running, stopped at the next start.
    ACTION_PROCESS_STOPPED = "action_process_stopped"
    ACTION_UNDONE = "action_undone"
    CONTAINMENT_FAILED = "containment_failed"
    CONTAINMENT_VERIFIED = "containment_verified"
    CONTAINMENT_UNVERIFIED = "containment_unverified"  # a check that could not tell


class TransitionError(ValueError):
    """The action cannot be done as asked: a field of the request (HTTP 400), or the
    incident's state (``StateConflict``, HTTP 409)."""


class StateConflict(TransitionError):
    """The incident's state does not allow the action (HTTP 409): ack of a resolved one."""


class IncidentNotFound(LookupError):
    """No incident has that id (HTTP 404)."""


def incident_key(
    classification: Classification, labels: Mapping[str, str], group_key: str
) -> str | None:
    """Which incident an alert belongs to; None when it never makes one (heartbeats).

    With the rule's ``group_by``, the key is the rule and those label values; without, it is
    Alertmanager's group key, so one Alertmanager notification group is one incident.
    """
    if classification.heartbeat:
        return None
    if classification.group_by is None:
        return "am:" + group_key
    parts = [classification.rule or "fallback"]
    parts += [f"{name}={labels.get(name, '')}" for name in classification.group_by]
    # Hashed: label values may be long and any text; the key only has to be equal or not.
    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]
    return f"rule:{classification.rule or 'fallback'}:{digest}"


def incident_title(labels: Mapping[str, str]) -> str:
    """``TargetDown on web-1:9100``: the alert name and where, for lists and messages."""
    name = labels.get("alertname") or "alert"
    where = labels.get("instance") or labels.get("job") or labels.get("service")
    title = f"{name} on {where}" if where else name
    return title[:200]


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    at: datetime
    kind: Event
    actor: str | None = None  # who: a contact, "alertmanager", "responder", an API user
    via: str | None = None  # how: api, cli, sms, voice, email, alertmanager, engine
    detail: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class Incident:
    id: int
    key: str
    state: IncidentState
    severity: str
    category: str
    policy: str | None
    rule: str | None
    title: str
    respond_s: int | None  # the response target in force when it triggered
    resolve_s: int | None
    opened_at: datetime
    triggered_at: datetime  # start of the current episode
    episode: int
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    resolved_at: datetime | None
    resolved_by: str | None
    snoozed_until: datetime | None
    assignee: str | None
    next_due: datetime | None
    version: int
    escalate_now: str | None = None  # why the next level must go now (containment failed)
    # When this trigger of the incident began, if not triggered_at: an unacknowledge, a
    # severity raise or a reload start the escalation over (a new episode), not the
    # incident's lasting. See ``started``.
    lasting_since: datetime | None = None
    alert_count: int = 0
    firing_count: int = 0
    # The first acknowledgement since the trigger: kept through a snooze or an
    # unacknowledge, which clear ``acknowledged_at``. What targets and MTTA measure.
    first_acknowledged_at: datetime | None = None
    first_acknowledged_by: str | None = None

    @property
    def started(self) -> datetime:
        """What response targets, duration levels and time to acknowledge or resolve count
        from: the incident's trigger, whatever episodes followed (a re-fire after a resolve
        is a new trigger)."""
        return self.lasting_since or self.triggered_at


@dataclass(frozen=True, slots=True)
class NewPage:
    """A page the engine decided on; the store gives it its unique key and its row."""

    step: str
    kind: PageKind
    contact: str
    channel: str
    address: str
    due_at: datetime
    backup: str | None = None
    # Unacknowledged-clock pages are moot once someone acknowledged; management (duration)
    # pages and status updates still go.
    cancel_on_ack: bool = True


@dataclass(frozen=True, slots=True)
class Page:
    id: int
    incident_id: int
    episode: int
    step: str
    kind: PageKind
    contact: str
    channel: str
    address: str
    backup: str | None
    due_at: datetime
    state: PageState
    attempts: int
    provider_id: str | None
    error: str | None
    created_at: datetime
    sent_at: datetime | None
    # On the unacknowledged clock: moot once someone acknowledged (``NewPage``).
    cancel_on_ack: bool = True
    # When the trigger the page was made for began (``Incident.started``): a page that waited
    # while the incident resolved and fired again tells of that trigger, not the new one.
    trigger_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class StepDone:
    """One escalation step recorded once (unique per incident, episode and id), with its pages
    and its timeline event, in one transaction."""

    step: str
    event: TimelineEvent | None  # None: a bookkeeping step the timeline need not show
    pages: tuple[NewPage, ...] = ()


@dataclass(frozen=True, slots=True)
class EscalationWork:
    """What the engine needs to decide one due incident."""

    incident: Incident
    done: frozenset[str]  # step ids recorded in the current episode
    paged: tuple[tuple[str, str, str], ...]  # (contact, channel, address) paged this episode
    # When its latest status update went, in any episode: updates keep their rhythm across
    # episodes and a reload that changes their interval.
    last_update_at: datetime | None = None

"""A failed lift nobody would hear of raises an alert of the daemon's own.

A lift (undo) runs after its alert resolved, so its incident is usually resolved too, and
escalating a resolved incident pages nobody: a site left in maintenance, an address left
blocked, would be known only to the timeline, a log line and the ``undo_failed`` metric.
When a lift fails and the run's incident is not open (resolved, or the run has none), the
containment engine hands a ``LiftAlarm`` here, and ``ContainmentLiftFailed`` is stored as if
Alertmanager had sent it (as HeartbeatMissing is): classified by the rules (the shipped rule
``containment-lift-failed``), an incident, pages, escalation. One alert per run (its
fingerprint): another failure of the same run is a repeat. The later lift of that run that
succeeds (by hand: ``responder actions lift RUN``) sends its resolved copy, as does an
operator's record that the change was removed by hand (``responder actions lifted RUN``)."""

from __future__ import annotations

from responder.contain.engine import LiftAlarm
from responder.ingest import store_own_alert
from responder.model import Alert, AlertStatus, frozen_labels
from responder.runtime import Runtime

LIFT_FAILED_ALERTNAME = "ContainmentLiftFailed"
LIFT_FAILED_PREFIX = "lift-failed:"
_TARGET_LIMIT = 200  # a target is data only; a label need not carry all of a long one


def lift_failed_alert(alarm: LiftAlarm) -> Alert:
    """The ContainmentLiftFailed alert of a run: firing, or resolved at ``alarm.ended``. Its
    labels and start depend only on the run and its first failure, so each copy is the same
    alert; the description carries the newest failure's reason."""
    run = alarm.run
    target = run.target or "(none)"
    labels = {
        "alertname": LIFT_FAILED_ALERTNAME,
        "action": run.action,
        "run": run.run_id,
        "target": target[:_TARGET_LIMIT],
    }
    lift = f"responder actions lift {run.run_id}"
    lifted = f"responder actions lifted {run.run_id} --reason TEXT"
    annotations = {
        "summary": (
            f"The change of {run.action} on {target} is still in place: its lift failed. "
            f"Lift it by hand: {lift}"
        ),
        "description": (
            f"The lift (undo) of run {run.run_id} ({run.action} on {target}) failed after its "
            f"alert resolved, and is not tried again by itself. {alarm.reason} Once the cause "
            f"is fixed, '{lift}' (POST /api/v1/actions/lift) runs it again; when it succeeds "
            "this alert resolves. If the lift can never succeed (its undo action or tool is "
            "gone) or the change is gone already, remove what is left of it by hand and "
            f"record that: '{lifted}' (POST /api/v1/actions/lifted) runs nothing, and this "
            "alert resolves."
        ).replace("  ", " "),
    }
    return Alert(
        fingerprint=LIFT_FAILED_PREFIX + run.run_id,
        status=AlertStatus.FIRING if alarm.ended is None else AlertStatus.RESOLVED,
        labels=frozen_labels(labels),
        annotations=frozen_labels(annotations),
        starts_at=alarm.since,
        ends_at=alarm.ended,
    )


async def store_lift_alarm(runtime: Runtime, alarm: LiftAlarm) -> None:
    """Raise or resolve a run's ContainmentLiftFailed (the engine's ``on_lift_alarm``).
    Each run is an incident of its own, unless a rule's group_by joins them."""
    await store_own_alert(runtime, lift_failed_alert(alarm), f"responder:lift:{alarm.run.run_id}")

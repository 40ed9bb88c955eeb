"""Guards: pure decisions on whether a containment run may start now, over plain persisted state.

``GuardState`` is plain data (runs per action and target with their times and outcomes, a
circuit breaker per action and target, the kill switch) that the engine keeps in the store and
hands back after a restart. ``decide`` takes that state, the proposed run and ``now`` and answers
with a ``Decision`` value naming the guard that stops the run (paused, breaker_open,
concurrency, cooldown, rate_limit, blast_radius, dry_run), never with an exception. State only
changes through functions that return a new state: ``start_run`` (before the process starts,
so a crash never leads to a blind re-run), ``finish_run``, ``interrupt_running``, the kill
switch and ``reset_breaker``. A breaker opens after N consecutive failed attempts and stays
open until an operator resets it. Each action also has a breaker across its targets: a
broken tool fed a new target each time (an attacker's next address) never fails twice on
one, so N failed runs of the action within a window, whatever their targets, open it for
every target, until an operator resets it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from responder.contain.catalog import Action, ContainmentSettings
from responder.contain.outcome import Outcome


class Guard(StrEnum):
    PAUSED = "paused"
    ACTION_BREAKER_OPEN = "action_breaker_open"
    BREAKER_OPEN = "breaker_open"
    CONCURRENCY = "concurrency"
    COOLDOWN = "cooldown"
    RATE_LIMIT = "rate_limit"
    BLAST_RADIUS = "blast_radius"
    DRY_RUN = "dry_run"


@dataclass(frozen=True, slots=True)
class RunRecord:
    run_id: str
    action: str
    target: str
    started_at: datetime
    outcome: Outcome = Outcome.RUNNING
    finished_at: datetime | None = None
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class Breaker:
    action: str
    target: str
    consecutive_failures: int = 0
    opened_at: datetime | None = None
    last_failure_at: datetime | None = None

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None


@dataclass(frozen=True, slots=True)
class ActionBreaker:
    """Open: the action failed ``failures`` runs on ``targets`` distinct targets within the
    window, so it is broken whatever the target, until an operator resets it. Reset
    (closed): only failures after ``reset_at`` count toward opening it again."""

    action: str
    failures: int = 0
    targets: int = 0
    opened_at: datetime | None = None
    reset_at: datetime | None = None

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None


@dataclass(frozen=True, slots=True)
class KillSwitch:
    """The global pause: while engaged, no action runs (dry runs neither)."""

    engaged: bool = False
    reason: str = ""
    by: str = ""
    at: datetime | None = None  # when it was last engaged or released


@dataclass(frozen=True, slots=True)
class GuardState:
    runs: tuple[RunRecord, ...] = ()
    breakers: tuple[Breaker, ...] = ()
    kill_switch: KillSwitch = field(default_factory=KillSwitch)
    action_breakers: tuple[ActionBreaker, ...] = ()

    def breaker(self, action: str, target: str) -> Breaker:
        for b in self.breakers:
            if b.action == action and b.target == target:
                return b
        return Breaker(action, target)

    def action_breaker(self, action: str) -> ActionBreaker:
        """The breaker of ``action`` across its targets (closed when none is recorded)."""
        return next((b for b in self.action_breakers if b.action == action), ActionBreaker(action))

    def running(self) -> tuple[RunRecord, ...]:
        return tuple(r for r in self.runs if r.outcome is Outcome.RUNNING)

    # -- persistence as JSON-ready dicts --------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "runs": [
                {
                    "run_id": r.run_id,
                    "action": r.action,
                    "target": r.target,
                    "started_at": r.started_at.isoformat(),
                    "outcome": r.outcome.value,
                    "finished_at": _iso(r.finished_at),
                    "dry_run": r.dry_run,
                }
                for r in self.runs
            ],
            "breakers": [
                {
                    "action": b.action,
                    "target": b.target,
                    "consecutive_failures": b.consecutive_failures,
                    "opened_at": _iso(b.opened_at),
                    "last_failure_at": _iso(b.last_failure_at),
                }
                for b in self.breakers
            ],
            "kill_switch": {
                "engaged": self.kill_switch.engaged,
                "reason": self.kill_switch.reason,
                "by": self.kill_switch.by,
                "at": _iso(self.kill_switch.at),
            },
            "action_breakers": [
                {
                    "action": b.action,
                    "failures": b.failures,
                    "targets": b.targets,
                    "opened_at": _iso(b.opened_at),
                    "reset_at": _iso(b.reset_at),
                }
                for b in self.action_breakers
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GuardState:
        runs = tuple(
            RunRecord(
                run_id=str(r["run_id"]),
                action=str(r["action"]),
                target=str(r["target"]),
                started_at=datetime.fromisoformat(r["started_at"]),
                outcome=Outcome(r["outcome"]),
                finished_at=_from_iso(r.get("finished_at")),
                dry_run=bool(r.get("dry_run", False)),
            )
            for r in data.get("runs", [])
        )
        breakers = tuple(
            Breaker(
                action=str(b["action"]),
                target=str(b["target"]),
                consecutive_failures=int(b["consecutive_failures"]),
                opened_at=_from_iso(b.get("opened_at")),
                last_failure_at=_from_iso(b.get("last_failure_at")),
            )
            for b in data.get("breakers", [])
        )
        ks = data.get("kill_switch") or {}
        kill = KillSwitch(
            engaged=bool(ks.get("engaged", False)),
            reason=str(ks.get("reason", "")),
            by=str(ks.get("by", "")),
            at=_from_iso(ks.get("at")),
        )
        broken = tuple(
            ActionBreaker(
                action=str(b["action"]),
                failures=int(b["failures"]),
                targets=int(b["targets"]),
                opened_at=_from_iso(b.get("opened_at")),
                reset_at=_from_iso(b.get("reset_at")),
            )
            for b in data.get("action_breakers", [])  # absent in a state saved before them
        )
        return cls(runs, breakers, kill, broken)


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when is not None else None


def _from_iso(text: Any) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


@dataclass(frozen=True, slots=True)
class Decision:
    """Allowed, or the guard that stops the run and why; ``retry_at`` when waiting would help."""

    allowed: bool
    guard: Guard | None = None
    reason: str = ""
    retry_at: datetime | None = None
    # Stopped only because the action's or the global concurrency is reached: another
    # run ending frees a slot, and the run waits for it instead of being skipped.
    wait: bool = False

    @property
    def dry_run(self) -> bool:
        """Every other guard passed; the run is to be rendered and recorded, not executed."""
        return self.guard is Guard.DRY_RUN


ALLOW = Decision(True)


def decide(
    state: GuardState,
    action: Action,
    target: str,
    settings: ContainmentSettings,
    now: datetime,
) -> Decision:
    """Whether ``action`` may run against ``target`` at ``now``; the first guard that says no."""
    ks = state.kill_switch
    if ks.engaged:
        return Decision(False, Guard.PAUSED, f"containment paused by {ks.by}: {ks.reason}")

    broken = state.action_breaker(action.name)
    if broken.is_open:
        return Decision(
            False,
            Guard.ACTION_BREAKER_OPEN,
            f"action broken: {broken.failures} failed runs on {broken.targets} targets"
            f" (open since {_iso(broken.opened_at)}); reset it to run again",
        )

    breaker = state.breaker(action.name, target)
    if breaker.is_open:
        return Decision(
            False,
            Guard.BREAKER_OPEN,
            f"circuit open after {breaker.consecutive_failures} consecutive failures"
            f" (since {_iso(breaker.opened_at)}); reset it to run again",
        )

    running = state.running()
    if any(r.action == action.name and r.target == target for r in running):
        return Decision(False, Guard.CONCURRENCY, "already running against this target")
    if sum(1 for r in running if r.action == action.name) >= action.concurrency:
        reason = f"{action.concurrency} run(s) of it in flight"
        return Decision(False, Guard.CONCURRENCY, reason, wait=True)
    if len(running) >= settings.concurrency:
        reason = f"{settings.concurrency} actions in flight"
        return Decision(False, Guard.CONCURRENCY, reason, wait=True)

    mine = [r for r in state.runs if r.action == action.name and r.target == target]
    if mine and action.cooldown > timedelta(0):
        last = max(r.started_at for r in mine)
        if now < last + action.cooldown:
            return Decision(
                False,
                Guard.COOLDOWN,
                f"last run at {last.isoformat()}, cooldown {action.cooldown}",
                last + action.cooldown,
            )

    if action.max_runs is not None:
        recent = sorted(r.started_at for r in mine if r.started_at > now - action.window)
        if len(recent) >= action.max_runs:
            return Decision(
                False,
                Guard.RATE_LIMIT,
                f"{len(recent)} runs against this target within {action.window}",
                recent[-action.max_runs] + action.window,
            )

    window_start = now - settings.window
    in_window = [r for r in state.runs if r.started_at > window_start]
    if len(in_window) >= settings.max_actions_per_window:
        oldest = min(r.started_at for r in in_window)
        return Decision(
            False,
            Guard.RATE_LIMIT,
            f"{len(in_window)} actions within {settings.window} (global budget)",
            oldest + settings.window,
        )

    targets = {(r.action, r.target) for r in in_window}
    if (action.name, target) not in targets and len(targets) >= settings.max_targets_per_window:
        return Decision(
            False,
            Guard.BLAST_RADIUS,
            f"{len(targets)} distinct targets touched within {settings.window}",
        )

    if action.dry_run or settings.dry_run:
        which = "action" if action.dry_run else "containment"
        return Decision(False, Guard.DRY_RUN, f"dry_run is set for this {which}")
    return ALLOW


def start_run(
    state: GuardState,
    run_id: str,
    action: str,
    target: str,
    now: datetime,
    *,
    dry_run: bool = False,
) -> GuardState:
    """Record a run as started; persist the result before the process starts."""
    if any(r.run_id == run_id for r in state.runs):
        raise ValueError(f"run {run_id} is already recorded")
    outcome = Outcome.DRY_RUN if dry_run else Outcome.RUNNING
    finished = now if dry_run else None
    record = RunRecord(run_id, action, target, now, outcome, finished, dry_run)
    return replace(state, runs=(*state.runs, record))


@dataclass(frozen=True, slots=True)
class Finished:
    """The state after a run ended, and what that means for the engine."""

    state: GuardState
    consecutive_failures: int
    breaker_opened: bool  # opened by this run
    escalate: bool  # the failure count just reached escalate_after_failures (or start limit)
    action_breaker: ActionBreaker | None = None  # the breaker across targets this run opened


def finish_run(
    state: GuardState,
    run_id: str,
    outcome: Outcome,
    now: datetime,
    *,
    action: Action,
    settings: ContainmentSettings,
    attempts: int = 1,
) -> Finished:
    """Record how a run ended; count failed attempts toward the breaker and escalation."""
    record = next((r for r in state.runs if r.run_id == run_id), None)
    if record is None:
        raise ValueError(f"run {run_id} was never started")
    runs = tuple(
        replace(r, outcome=outcome, finished_at=now) if r.run_id == run_id else r
        for r in state.runs
    )
    before = state.breaker(record.action, record.target)
    count = before.consecutive_failures
    last_failure = before.last_failure_at
    if outcome is Outcome.OK:
        # A check that waits for the alert to resolve decides later (late_check): until
        # then an ok run proves nothing, and its failure must add to the count it found.
        if action.check is None or action.check.alert_resolves_within is None:
            count = 0
    elif outcome.is_failure:
        count += max(attempts, 1)
        last_failure = now
    # Otherwise (STOPPED: the kill switch ended its retries) the count stays as it was.
    threshold = action.breaker_failures or settings.breaker_failures
    opened_at = before.opened_at
    if opened_at is None and count >= threshold:
        opened_at = now
    after = Breaker(record.action, record.target, count, opened_at, last_failure)
    breakers = tuple(
        b for b in state.breakers if (b.action, b.target) != (record.action, record.target)
    )
    if count or opened_at is not None:
        breakers = (*breakers, after)
    # Every failure at or past the threshold escalates: a new incident on the same target
    # must be paged too (the store pages each incident once for it).
    failing = outcome.is_failure and count >= action.escalate_after_failures
    escalate = failing or outcome is Outcome.START_LIMIT_HIT
    broken = None
    if outcome.is_failure and not state.action_breaker(action.name).is_open:
        broken = _broken(runs, state.action_breaker(action.name), action, settings, now)
    action_breakers = state.action_breakers
    if broken is not None:
        others = tuple(b for b in action_breakers if b.action != action.name)
        action_breakers = (*others, broken)
    return Finished(
        replace(state, runs=runs, breakers=breakers, action_breakers=action_breakers),
        consecutive_failures=count,
        breaker_opened=before.opened_at is None and opened_at is not None,
        escalate=escalate or broken is not None,
        action_breaker=broken,
    )


def _broken(
    runs: tuple[RunRecord, ...],
    before: ActionBreaker,
    action: Action,
    settings: ContainmentSettings,
    now: datetime,
) -> ActionBreaker | None:
    """The breaker across targets, opened now, when the action's failed runs within the
    window (since its last reset) reach its threshold, whatever their targets; else None.
    Runs, not attempts: one run with retries is one target that failed."""
    since = now - settings.action_breaker_window
    if before.reset_at is not None:
        since = max(since, before.reset_at)
    failed = [
        r
        for r in runs
        if r.action == action.name
        and r.outcome.is_failure
        and r.finished_at is not None
        and r.finished_at > since
    ]
    threshold = action.action_breaker_failures or settings.action_breaker_failures
    if len(failed) < threshold:
        return None
    return ActionBreaker(action.name, len(failed), len({r.target for r in failed}), now, None)


def late_check(
    state: GuardState,
    action: Action,
    target: str,
    verified: bool,
    now: datetime,
    settings: ContainmentSettings,
    *,
    run_started: datetime,
) -> tuple[GuardState, bool]:
    """A run recorded ok, then its ``alert_resolves_within`` check: verified, the breaker's
    count of (action, target) starts over, as after any ok run, unless a failure came after
    that run started (a later run's); failed, one failed attempt more, as a failed check at
    run time is. Returns the state and whether the breaker opened now."""
    before = state.breaker(action.name, target)
    if verified and before.last_failure_at is not None and before.last_failure_at > run_started:
        return state, False
    if verified:
        breakers = tuple(b for b in state.breakers if (b.action, b.target) != (action.name, target))
        if before.opened_at is not None:  # open until an operator resets it
            breakers = (*breakers, replace(before, consecutive_failures=0))
        return replace(state, breakers=breakers), False
    count = before.consecutive_failures + 1
    threshold = action.breaker_failures or settings.breaker_failures
    opened_at = before.opened_at or (now if count >= threshold else None)
    after = Breaker(action.name, target, count, opened_at, now)
    breakers = tuple(b for b in state.breakers if (b.action, b.target) != (action.name, target))
    opened = before.opened_at is None and opened_at is not None
    return replace(state, breakers=(*breakers, after)), opened


def restore_breaker(state: GuardState, earlier: GuardState, action: str, target: str) -> GuardState:
    """``state`` with the breaker of ``action`` on ``target`` as it was in ``earlier``: takes
    back a count that could not be written, and keeps whatever else changed meanwhile."""
    key = (action, target)
    others = tuple(b for b in state.breakers if (b.action, b.target) != key)
    kept = tuple(b for b in earlier.breakers if (b.action, b.target) == key)
    return replace(state, breakers=(*others, *kept))


def forget_run(state: GuardState, run_id: str) -> GuardState:
    """Take back a start that could not be recorded (the alert had run this action already)."""
    return replace(state, runs=tuple(r for r in state.runs if r.run_id != run_id))


def interrupt_running(state: GuardState, now: datetime) -> GuardState:
    """At start-up: runs left RUNNING by a stopped daemon become INTERRUPTED, not re-run."""
    runs = tuple(
        replace(r, outcome=Outcome.INTERRUPTED, finished_at=now)
        if r.outcome is Outcome.RUNNING
        else r
        for r in state.runs
    )
    return replace(state, runs=runs)


def prune(state: GuardState, now: datetime, keep: timedelta) -> GuardState:
    """Forget finished runs that started before ``now - keep`` (keep >= the longest window)."""
    cutoff = now - keep
    runs = tuple(r for r in state.runs if r.outcome is Outcome.RUNNING or r.started_at >= cutoff)
    # A reset older than every window forgives nothing the window still holds.
    broken = tuple(
        b for b in state.action_breakers if b.is_open or (b.reset_at and b.reset_at >= cutoff)
    )
    return replace(state, runs=runs, action_breakers=broken)


def pause(state: GuardState, reason: str, by: str, now: datetime) -> GuardState:
    return replace(state, kill_switch=KillSwitch(True, reason, by, now))


def resume(state: GuardState, by: str, now: datetime) -> GuardState:
    return replace(state, kill_switch=KillSwitch(False, "", by, now))


def reset_breaker(state: GuardState, action: str, target: str) -> GuardState:
    breakers = tuple(b for b in state.breakers if (b.action, b.target) != (action, target))
    return replace(state, breakers=breakers)


def reset_action_breaker(state: GuardState, action: str, now: datetime) -> GuardState:
    """Close the breaker of ``action`` across its targets: the failures before the reset are
    forgiven (else the next failure would open it again at once)."""
    others = tuple(b for b in state.action_breakers if b.action != action)
    return replace(state, action_breakers=(*others, ActionBreaker(action, reset_at=now)))


class UndoState(StrEnum):
    WAIT = "wait"  # resolved, but not for long enough: the alert may flap back
    DUE = "due"
    CANCELLED = "cancelled"  # fired again after resolving: keep the containment in place


@dataclass(frozen=True, slots=True)
class UndoDecision:
    state: UndoState
    at: datetime | None = None  # when it becomes due (WAIT and DUE)


def undo_decision(
    resolved_at: datetime,
    last_fired_at: datetime | None,
    now: datetime,
    hold_down: timedelta,
) -> UndoDecision:
    """An undo runs only after the alert stayed resolved for ``hold_down``."""
    if last_fired_at is not None and last_fired_at > resolved_at:
        return UndoDecision(UndoState.CANCELLED)
    due = resolved_at + hold_down
    if now < due:
        return UndoDecision(UndoState.WAIT, due)
    return UndoDecision(UndoState.DUE, due)

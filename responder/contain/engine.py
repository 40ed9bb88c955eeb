"""The containment engine: runs a rule's actions for its alerts, under the guards, and says
so in the incident's timeline.

Work arrives through a durable queue written in the same transaction as the alert, so a
crash between storing an alert and acting on it loses nothing. Each run is recorded (with the
guards' state that counts it) before its process starts, under a unique key (alert, action,
trigger): a repeated webhook never runs an action twice, and a restart finds an unfinished
run marked interrupted instead of starting it again blindly (and escalates, because nobody
knows whether it helped). A failed containment (the failure count reaching the action's
``escalate_after_failures``, a failed check, a refused parameter, an opened breaker) pages
the next level at once, with the reason in the page.

Lifts (undos) run in a lane of their own, a few at a time: a lift's process may take its
whole timeout, and the containment of a fresh alert must not wait behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from responder.classify.explain import format_duration
from responder.clock import Clock, sleep_until_or_woken
from responder.contain import orphans
from responder.contain.builtins import found_nothing_to_lift
from responder.contain.catalog import (
    Action,
    ActionCatalog,
    BlockAddressSpec,
    ContainmentSettings,
    EnvValue,
    ExecSpec,
)
from responder.contain.guards import (
    GuardState,
    decide,
    finish_run,
    forget_run,
    interrupt_running,
    late_check,
    pause,
    prune,
    reset_action_breaker,
    reset_breaker,
    restore_breaker,
    resume,
    start_run,
)
from responder.contain.outcome import Outcome
from responder.contain.params import ParamRejected
from responder.contain.runner import ActionRunner, ExecRequest, RunContext, RunResult
from responder.incident import Event
from responder.log import fields
from responder.metrics import Metrics
from responder.secrets import Secret
from responder.store.base import ContainmentStore, QueuedAlert, RemovedByHand, RunRow

log = logging.getLogger("responder.contain")

MAX_SLEEP = timedelta(seconds=30)
# The alerts of failed lifts (ContainmentLiftFailed) are sent again this often, as
# Alertmanager re-sends its own: the stale sweep (alerts.stale_after, 5 minutes at least)
# must never take one for over while the change is still in place. Also once at start: a
# crash may have come between a lift's failure and its alert.
LIFT_ALARM_RESEND = timedelta(minutes=1)

ConfigSource = Callable[[], tuple[ActionCatalog, ContainmentSettings]]


@dataclass(frozen=True, slots=True)
class LiftAlarm:
    """A failed lift nobody would be paged for (its run's incident resolved, or none), or
    the later lift of that run that ended it. The runtime turns it into an alert of the
    daemon's own (lift_alarm.py): ``ended`` None raises it, a time resolves it."""

    run: RunRow
    reason: str  # why the lift failed ("" once it is ended)
    since: datetime  # the run's first failed lift: the alert's start, for every copy
    ended: datetime | None


class _StoreLedger:
    """Action and lift process groups on record in the store while they run."""

    def __init__(self, store: ContainmentStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def started(self, identity: orphans.ProcessIdentity, run_id: str, argv0: str) -> None:
        try:
            await self._store.record_process(identity, run_id, argv0, self._clock.now())
        except Exception:
            log.exception("cannot record an action process; it runs unrecorded")

    async def ended(self, identity: orphans.ProcessIdentity) -> None:
        try:
            await self._store.forget_process(identity)
        except Exception:
            # Harmless: its leader has ended, and a start signals no group whose leader
            # is gone.
            log.exception("cannot clear the record of an ended action process")


# What the start tells of each group it stopped.
_STOPPED_SAYS = {
    orphans.Stopped.TERMINATED: "stopped at start (SIGTERM): the daemon that ran it was killed",
    orphans.Stopped.KILLED: (
        "killed at start (SIGKILL: it outlived SIGTERM by "
        f"{orphans.STOP_GRACE_S:g} s): the daemon that ran it was killed"
    ),
    orphans.Stopped.SURVIVED: (
        "still running after SIGTERM and SIGKILL at start: what is left of its group runs "
        "as another user (a command under sudo) and the daemon may not signal it; stop it by hand"
    ),
}


def _tail(result: RunResult, limit: int = 300) -> str:
    if result.rejected is not None:
        return result.rejected.without_value()
    if not result.attempts:
        return ""
    last = result.attempts[-1]
    text = (last.stderr or last.stdout or last.detail).strip()
    return text[-limit:]


class Containment:
    def __init__(
        self,
        store: ContainmentStore,
        clock: Clock,
        metrics: Metrics,
        runner: ActionRunner,
        config: ConfigSource,
        *,
        on_escalate: Callable[[], None] = lambda: None,
        on_lift_alarm: Callable[[LiftAlarm], Awaitable[object]] | None = None,
    ) -> None:
        self._on_escalate = on_escalate  # wakes the escalation engine
        self._on_lift_alarm = on_lift_alarm  # raises or resolves ContainmentLiftFailed
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._runner = runner
        self._config = config
        self._state = GuardState()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._taken_up_to = 0  # highest queue id handed to a task
        self._deadline: datetime | None = None  # earliest check due; None: unknown
        # The lift lane: lifts under way by run id, with the (action, target) each undoes,
        # and what wakes the lane (a lift asked for, the kill switch released, a lift ended
        # and its slot is free).
        self._lifting: dict[str, tuple[tuple[str, str], asyncio.Task[None]]] = {}
        self._lift_wake = asyncio.Event()
        # Runs waiting for a lift of their change to end, or for a concurrency slot; at a
        # stop they are cancelled before they start (the queue keeps their alert for the
        # next start).
        self._waiting: set[asyncio.Task[Any]] = set()
        # Set (and replaced) each time a run ends: runs waiting for a concurrency slot.
        self._run_end = asyncio.Event()
        self._stopping = False
        self._pruned_at = datetime.min.replace(tzinfo=UTC)
        self._lift_alarms_sent_at = datetime.min.replace(tzinfo=UTC)

    @property
    def state(self) -> GuardState:
        return self._state

    def wake(self) -> None:
        # Both lanes: what queued work may also have moved a lift's due time (a resolve
        # starts a hold-down, a finished run leaves a lift).
        self._wake.set()
        self._lift_wake.set()

    def _guards_json(self) -> str:
        # Called by the store's writer when it commits, so a commit always carries the newest
        # state even when writes queued in another order than the changes were made. Reading
        # the attribute from the writer thread is safe: GuardState is immutable. Finished runs
        # are not written: action_runs holds them, and start() reads them back.
        state = self._state
        slim = replace(state, runs=tuple(r for r in state.runs if r.outcome is Outcome.RUNNING))
        return json.dumps(slim.to_json())

    def _keep(self) -> timedelta:
        """How far back the guards look: the longest window, cooldown or budget window."""
        catalog, settings = self._config()
        spans = [settings.window, settings.action_breaker_window, timedelta(minutes=1)]
        for action in catalog.actions.values():
            spans.append(action.cooldown)
            if action.max_runs is not None:
                spans.append(action.window)
        return max(spans)

    def _prune(self, now: datetime) -> None:
        # Runs older than every window are history only: dropping them keeps each decision
        # (and the state) proportional to recent activity, not to the daemon's age.
        if now - self._pruned_at >= timedelta(seconds=10):
            self._state = prune(self._state, now, self._keep())
            self._pruned_at = now

    def _paused(self) -> str | None:
        """Why nothing may run now (the kill switch), or None."""
        switch = self._state.kill_switch
        return f"containment paused by {switch.by}: {switch.reason}" if switch.engaged else None

    async def _save(self) -> None:
        await self._store.save_guards(self._guards_json, self._clock.now())

    # -- start ----------------------------------------------------------------------------------
    async def start(self) -> None:
        # Before the interrupted runs are marked: their processes are stopped first.
        await self._stop_orphans()
        now = self._clock.now()
        saved = await self._store.load_guards()
        state = GuardState.from_json(json.loads(saved)) if saved else GuardState()
        # Recent finished runs come back from their records: cooldowns and budgets survive.
        history = await self._store.recent_runs(now - self._keep())
        known = {r.run_id for r in state.runs}
        state = replace(state, runs=(*state.runs, *(r for r in history if r.run_id not in known)))
        self._state = prune(interrupt_running(state, now), now, self._keep())
        await self._save()
        # Marked interrupted and escalated in one write (the store does both).
        for run in await self._store.interrupt_runs(now):
            self._metrics.actions.labels(run.action, Outcome.INTERRUPTED.value).inc()
            log.error(
                "action was running when the daemon stopped; not started again",
                extra=fields(run=run.run_id, action=run.action, target=run.target),
            )
            if run.incident_id is not None:
                self._on_escalate()
        self._metrics.containment_paused.set(int(self._state.kill_switch.engaged))
        for broken in self._state.action_breakers:
            self._metrics.action_breaker_open.labels(broken.action).set(int(broken.is_open))

    async def _stop_orphans(self) -> None:
        """Stop the action and lift processes a killed daemon left running (orphans.py),
        then record those this one starts."""
        boot = orphans.boot_id()
        if boot is None:
            log.info(
                "no /proc/sys/kernel/random/boot_id: action processes that outlive a killed "
                "daemon are neither recorded nor stopped at start on this system"
            )
            return
        recorded = await self._store.recorded_processes()
        found = await asyncio.gather(*(orphans.stop(identity, boot) for identity, _, _ in recorded))
        now = self._clock.now()
        for (identity, run_id, program), stopped in zip(recorded, found, strict=True):
            says = _STOPPED_SAYS.get(stopped)
            if says is None:  # nothing of it runs, or its pid is another process's now
                await self._store.forget_process(identity)
                continue
            detail = {
                "process_group": identity.pgid,
                "program": program,
                "outcome": stopped.value,
                "detail": says,
            }
            await self._store.process_stopped(identity, run_id, detail, now)
            level = logging.ERROR if stopped is orphans.Stopped.SURVIVED else logging.WARNING
            log.log(
                level,
                f"action process left by a killed daemon {says}",
                extra=fields(run=run_id, process_group=identity.pgid, program=program),
            )
        self._runner.record_processes(_StoreLedger(self._store, self._clock), boot)

    # -- the kill switch and breakers ------------------------------------------------------------
    async def pause(self, reason: str, by: str) -> GuardState:
        self._state = pause(self._state, reason, by, self._clock.now())
        await self._save()
        self._metrics.containment_paused.set(1)
        log.warning("containment paused", extra=fields(by=by, reason=reason))
        return self._state

    async def resume(self, by: str) -> GuardState:
        """Release the kill switch; when it is not engaged, nothing changes (nothing
        recorded, nothing logged)."""
        if self._paused() is None:
            return self._state
        self._state = resume(self._state, by, self._clock.now())
        await self._save()
        self._metrics.containment_paused.set(0)
        log.warning("containment resumed", extra=fields(by=by))
        self._lift_wake.set()  # the lifts the switch held are due
        return self._state

    async def reset(self, action: str, target: str | None, by: str) -> GuardState | None:
        """Close the breaker of ``action`` on ``target``, or (None) across its targets; None
        when there is none open (a typo must not read as a reset)."""
        if target is None:
            if not self._state.action_breaker(action).is_open:
                return None
            self._state = reset_action_breaker(self._state, action, self._clock.now())
            await self._save()
            self._metrics.action_breaker_open.labels(action).set(0)
            log.warning("breaker across targets reset", extra=fields(action=action, by=by))
            return self._state
        if not any((b.action, b.target) == (action, target) for b in self._state.breakers):
            return None
        self._state = reset_breaker(self._state, action, target)
        await self._save()
        log.warning("breaker reset", extra=fields(action=action, target=target, by=by))
        return self._state

    async def lift(self, run_id: str, by: str) -> tuple[str, str | None]:
        """Lift a run's change now (the lift lane runs its undo next). Returns the run's
        full id and None when it is due, else why it cannot be."""
        run_id, refused = await self._store.lift_now(run_id, by, self._clock.now())
        if refused is None:
            log.warning("lift requested by hand", extra=fields(run=run_id, by=by))
            self._lift_wake.set()
        return run_id, refused

    async def removed_by_hand(self, run_id: str, by: str, reason: str) -> RemovedByHand:
        """Record that a run's change is gone, removed by hand: its lift ends and nothing
        runs (the store's ``removed_by_hand``). A lift the lane is running now is refused:
        its outcome is about to be recorded. The run's ContainmentLiftFailed, if it has one,
        resolves now (or at the next re-send, should the daemon stop first)."""
        now = self._clock.now()
        answer = await self._store.removed_by_hand(
            run_id, by, reason, now, under_way=tuple(self._lifting)
        )
        if answer.refused is not None or not answer.changed or answer.run is None:
            return answer
        run = answer.run
        self._metrics.actions.labels(run.action, "undo_removed_by_hand").inc()
        log.warning(
            "change recorded as removed by hand; no undo run",
            extra=fields(run=run.run_id, action=run.action, by=by, reason=reason),
        )
        alerted = (run.undo or {}).get("alerted")
        if alerted is not None:
            since = _from_us(int(alerted))
            await self._lift_alarm(LiftAlarm(run, "", since, max(now, since)))
        return answer

    # -- one alert -------------------------------------------------------------------------------
    async def handle(self, item: QueuedAlert) -> None:
        catalog, settings = self._config()
        names = item.classification.get("actions") or []
        outcomes: list[Outcome | None] = []
        for name in names:
            action = catalog.actions.get(name)
            if action is None:
                log.error(
                    "rule names an action the config no longer has", extra=fields(action=name)
                )
                continue
            wanted = "resolve" if action.on_resolve else "fire"
            if item.trigger.partition("#")[0] != wanted:  # "fire#2": its third generation
                continue  # actions run for firing alerts only, unless declared for resolve
            outcomes.append(await self._run_one(item, action, settings))
        # A dry run changes nothing: unless another of the alert's actions ran and is at
        # work (ok), the page its rule holds for containment goes now. Runs that failed or
        # were stopped released it already.
        dry_only = Outcome.DRY_RUN in outcomes and Outcome.OK not in outcomes
        release = item.incident_id if dry_only else None
        await self._store.containment_done(item.queue_id, self._clock.now(), release_hold=release)
        if release is not None:
            self._on_escalate()  # a held first page is due now

    async def _run_one(
        self, item: QueuedAlert, action: Action, settings: ContainmentSettings
    ) -> Outcome | None:
        """Run one action for the alert; the run's outcome, None when none was started
        (a parameter refused, a guard stopped it, the alert had run it already)."""
        m = self._metrics
        context = RunContext(
            str(item.incident_id or ""),
            item.labels.get("alertname", ""),
            item.fingerprint,
            str(item.classification.get("severity", "")),
        )
        common: dict[str, Any] = {
            "alert_id": item.alert_id,
            "incident_id": item.incident_id,
            "action": action.name,
            "trigger": item.trigger,
        }
        prepared = self._runner.prepare(action, item.labels, item.annotations, context)
        if isinstance(prepared, ParamRejected):
            result = self._runner.rejected_result(action, prepared, context)
            recorded = await self._store.record_run(
                self._clock.now(),
                run_id=result.run_id,
                target="",
                state="rejected",
                audit=result.to_audit(),
                guards=None,
                event=Event.ACTION_REJECTED,
                detail=result.to_audit(),
                escalate=f"{action.name} not run: {_tail(result)}",
                **common,
            )
            self._on_escalate()
            if recorded:
                m.actions.labels(action.name, Outcome.REJECTED.value).inc()
                log.warning(
                    "action refused a parameter; nothing ran",
                    extra=fields(action=action.name, rejection=prepared.to_audit()),
                )
            return None

        # A lift of this very change under way (its alert fired again as it was lifted) ends
        # first: side by side, the lift could end last and leave the change undone while the
        # alert fires. Waited for before the guards decide (the kill switch may be engaged
        # meanwhile) and before the run is recorded (a stop meanwhile is no interruption);
        # once the run is started, the lane takes no new lift of it.
        while True:
            await self._lift_ended(action.name, prepared.target)
            now = self._clock.now()
            decision = decide(self._state, action, prepared.target, settings, now)
            if not decision.wait:
                break
            # Every slot is taken by runs on other targets: this one runs when one ends,
            # rather than never (its alert's repeats never run an action again).
            await self._run_ended()
        if not decision.allowed and not decision.dry_run:
            guard = decision.guard.value if decision.guard else "unknown"
            detail = {"action": action.name, "target": prepared.target, "guard": guard}
            detail["reason"] = decision.reason
            recorded = await self._store.record_run(
                now,
                run_id=prepared.run_id,
                target=prepared.target,
                state="skipped",
                audit={**prepared.to_audit(), "guard": guard, "reason": decision.reason},
                guards=None,
                event=Event.ACTION_SKIPPED,
                detail=detail,
                release_hold=True,
                **common,
            )
            if recorded:
                m.action_guard_stops.labels(action.name, guard).inc()
                self._on_escalate()  # a held first page is due now
            return None
        # No await between the decision and the start: the loop's single thread makes the
        # two one step, so concurrent runs always see each other.
        dry = decision.dry_run
        self._state = start_run(
            self._state, prepared.run_id, action.name, prepared.target, now, dry_run=dry
        )
        try:
            recorded = await self._store.record_run(
                now,
                run_id=prepared.run_id,
                target=prepared.target,
                state="dry_run" if dry else "running",
                audit=prepared.to_audit(),
                guards=self._guards_json,
                event=Event.ACTION_DRY_RUN if dry else Event.ACTION_STARTED,
                detail=prepared.to_audit(),
                **common,
            )
        except Exception:
            # Not recorded (the disk), so it never starts: left running in the guards, it
            # would refuse its target and hold its lifts until the next start.
            self._state = forget_run(self._state, prepared.run_id)
            self._slot_freed()
            raise
        if not recorded:
            self._state = forget_run(self._state, prepared.run_id)  # ran already: never twice
            self._slot_freed()
            return None

        result = await self._runner.execute(prepared, dry_run=dry, stopped=self._paused)
        m.actions.labels(action.name, result.outcome.value).inc()
        m.action_duration.labels(action.name).observe(result.duration_s)
        now = self._clock.now()
        escalate: str | None = None
        if not dry:
            finished = finish_run(
                self._state,
                prepared.run_id,
                result.outcome,
                now,
                action=action,
                settings=settings,
                attempts=max(len(result.attempts), 1),
            )
            self._state = finished.state
            self._slot_freed()
            if finished.escalate or result.outcome is Outcome.CHECK_FAILED:
                escalate = f"{action.name} {result.outcome.value}: {_tail(result)}"
            if finished.breaker_opened:
                m.breakers_opened.labels(action.name).inc()
                escalate = (escalate or f"{action.name} {result.outcome.value}") + (
                    f"; breaker open for {prepared.target} until reset"
                )
            if (broken := finished.action_breaker) is not None:
                m.action_breaker_open.labels(action.name).set(1)
                says = (
                    f"{action.name} is broken: {broken.failures} failed runs on "
                    f"{broken.targets} targets within "
                    f"{_shown(settings.action_breaker_window)}; it runs on no target until "
                    f"reset (responder actions reset {action.name})"
                )
                log.error(
                    "action broken: its breaker across targets is open until reset",
                    extra=fields(
                        action=action.name, failures=broken.failures, targets=broken.targets
                    ),
                )
                escalate = says if escalate is None else f"{says}; {escalate}"
        undo_json: dict[str, Any] | None = None
        undo_hold: int | None = None
        undo_at: int | None = None
        if result.undo is not None:
            plan = result.undo
            undo_json = {
                "argv": plan.request.to_json() if plan.request is not None else None,
                "action": plan.action,
            }
            if plan.block_tool:
                undo_json["block_tool"] = True
            if plan.at is not None:
                # iptables: lifted at expiry whatever happens (and earlier on resolve, below).
                undo_at = _us(plan.at)
                undo_json["at"] = undo_at
                # Each attempt that may have run "-I" inserted a rule of its own; the lift
                # ("-D") removes one a time, so it runs as often, until nothing is left.
                inserts = sum(a.outcome in _MAY_HAVE_RUN for a in result.attempts)
                undo_json["times"] = max(inserts, 1)
                # No attempt is known to have inserted (each timed out): finding nothing to
                # delete then is no failure, the rule most likely never went in.
                undo_json["maybe"] = not any(a.outcome is Outcome.OK for a in result.attempts)
            if plan.on_resolve:
                undo_hold = int(plan.hold_down.total_seconds())
            spec = action.spec
            if (
                isinstance(spec, BlockAddressSpec)
                and spec.backend == "nft"
                and result.expires_at is not None
            ):
                # One set element per address, whichever runs added it: its lift waits while
                # another run's block on it is in force (sqlite_actions.due_undos).
                undo_json["shared"] = True
                undo_json["until"] = _us(result.expires_at)
        check_due = None
        check = prepared.check
        if (
            check is not None
            and check.alert_resolves_within is not None
            and result.outcome is Outcome.OK
            and not dry
        ):
            check_due = _us(now + check.alert_resolves_within)
        # Stopped by the kill switch, or failed (even below escalate_after_failures, which
        # pages nobody more): no containment is at work, the page a rule held for it goes.
        release = result.outcome is Outcome.STOPPED or result.outcome.is_failure
        await self._store.finish_run(
            now,
            run_id=prepared.run_id,
            outcome=result.outcome.value,
            audit=result.to_audit(),
            undo=undo_json,
            undo_hold_s=undo_hold,
            undo_at_us=undo_at,
            check_due_us=check_due,
            guards=self._guards_json,
            escalate=escalate,
            release_hold=release,
        )
        if escalate is not None or release:
            self._on_escalate()
        level = {
            Outcome.OK: logging.INFO,
            Outcome.DRY_RUN: logging.INFO,
            Outcome.STOPPED: logging.WARNING,
        }.get(result.outcome, logging.ERROR)
        log.log(
            level,
            "action finished",
            extra=fields(
                action=action.name,
                target=prepared.target,
                outcome=result.outcome.value,
                duration_s=round(result.duration_s, 3),
                escalate=escalate is not None,
            ),
        )
        return result.outcome

    # -- deadlines: alert_resolves_within checks ---------------------------------------------------
    async def _checks(self) -> None:
        now = self._clock.now()
        for run, status in await self._store.due_checks(now):
            verdict = _check_verdict(status)
            if verdict is None:
                # Stale: Alertmanager stopped sending the alert without a resolve. That says
                # nothing of the action: no proof it worked (the breaker's count of earlier
                # failures stays), and no failure to page about or to open the breaker with.
                reason = f"the alert did not resolve in time but is {status}: outcome unknown"
                await self._store.finish_check(run.run_id, None, reason, now)
                log.warning(
                    "check outcome unknown",
                    extra=fields(action=run.action, run=run.run_id, alert_status=status),
                )
                self._metrics.actions.labels(run.action, "check_unknown").inc()
                continue
            reason = "the alert " + ("resolved in time" if verdict else "did not resolve in time")
            await self._finish_late_check(run, verdict, reason, now)
            if not verdict:
                self._on_escalate()
            # Said either way: a failed check pages the next level, and the log must say
            # why ("escalated" alone read as if nobody had acknowledged).
            log.log(
                logging.INFO if verdict else logging.ERROR,
                "check finished",
                extra=fields(action=run.action, run=run.run_id, target=run.target, passed=verdict),
            )
            outcome = Outcome.OK if verdict else Outcome.CHECK_FAILED
            self._metrics.actions.labels(run.action, f"check_{outcome.value}").inc()

    async def _finish_late_check(
        self, run: RunRow, verified: bool, reason: str, now: datetime
    ) -> None:
        """The run was ok when it ended; its check, later, says whether it was: a failure
        counts toward the breaker as the failed attempt it turned out to be. The verdict and
        the breaker's count are one write: a crash between two left the timeline saying the
        check failed and the breaker not counting it."""
        catalog, settings = self._config()
        action = catalog.actions.get(run.action)
        if action is None:
            await self._store.finish_check(run.run_id, verified, reason, now)
            return
        started = datetime.fromtimestamp(run.started_at / 1_000_000, UTC)
        before = self._state
        self._state, opened = late_check(
            self._state, action, run.target, verified, now, settings, run_started=started
        )
        try:
            await self._store.finish_check(
                run.run_id, verified, reason, now, guards=self._guards_json
            )
        except Exception:
            # Not written: the check is still due, and the next pass counts it then (once).
            self._state = restore_breaker(self._state, before, action.name, run.target)
            raise
        if opened:
            self._metrics.breakers_opened.labels(action.name).inc()
            log.error(
                "breaker open until reset",
                extra=fields(action=action.name, target=run.target, reason="check_failed"),
            )

    # -- the lift lane -------------------------------------------------------------------------
    def _busy(self) -> tuple[str, ...]:
        """Runs whose action and target no lift may be started on now: the lifts under way,
        and the actions running (a lift beside its own action could undo it as it is made)."""
        return (*self._lifting, *(r.run_id for r in self._state.running()))

    def _slot_freed(self) -> None:
        """A run left the running ones: the runs waiting for a concurrency slot look again."""
        self._run_end.set()
        self._run_end = asyncio.Event()

    async def _run_ended(self) -> None:
        """Wait until a run ends (or the engine stops: then the run is not started, and its
        queued alert runs it at the next start)."""
        if self._stopping:
            raise asyncio.CancelledError
        ended = self._run_end
        task = asyncio.current_task()
        assert task is not None
        self._waiting.add(task)
        try:
            await ended.wait()
        finally:
            self._waiting.discard(task)

    async def _lift_ended(self, action: str, target: str) -> None:
        """Wait until no lift of ``action`` on ``target`` is under way."""
        while under_way := [t for k, t in self._lifting.values() if k == (action, target)]:
            if self._stopping:
                # Not started, nor recorded: its queued alert runs it at the next start,
                # rather than starting now to be cut off and found interrupted.
                raise asyncio.CancelledError
            task = asyncio.current_task()
            assert task is not None
            self._waiting.add(task)
            try:
                await asyncio.wait(under_way)
            finally:
                self._waiting.discard(task)

    async def _start_lifts(self) -> None:
        """Start the lifts that are due, as many as the lane has room for. A lift of the
        same action and target as one under way waits for it (two site scripts at once on
        one backend): the store leaves those out, and the lifts under way themselves."""
        # The kill switch holds lifts too (a lift is a change: a site taken out of
        # maintenance while someone works on it); they run once it is released. A lift
        # asked for by hand is a person's decision and runs.
        paused = self._paused() is not None
        now = self._clock.now()
        taken: set[tuple[str, str]] = set()
        for run, refired in await self._store.due_undos(now, busy=self._busy(), manual_only=paused):
            if refired:
                # The change stays while the alert fires; it is lifted after its next resolve.
                detail = {"run_id": run.run_id, "action": run.action, "undo": "postponed"}
                detail["reason"] = "the alert fired again within the hold-down"
                await self._store.finish_undo(run.run_id, "postponed", detail, now)
                continue
            key = (run.action, run.target)
            if len(self._lifting) >= LIFT_CONCURRENCY or key in taken:
                continue  # still due: taken once a lift under way ends (which wakes the lane)
            if any((r.action, r.target) == key for r in self._state.running()):
                # An action on it started since the store was read (its run may not have
                # been written then): the lift waits for it, and the store then looks again.
                continue
            taken.add(key)
            task = asyncio.create_task(self._lift(run), name="containment-lift")
            self._lifting[run.run_id] = (key, task)

    async def _lift(self, run: RunRow) -> None:
        try:
            if self._paused() is not None and not (run.undo or {}).get("manual"):
                return  # paused since the lane took it: still due, it waits for the release
            catalog, _ = self._config()
            await self._undo(run, catalog)
        except Exception:
            log.exception("lift failed to run", extra=fields(action=run.action, run=run.run_id))
            # Still due: not again at once (a store that fails would make it a busy loop).
            await asyncio.sleep(1.0)
        finally:
            self._lifting.pop(run.run_id, None)
            self._lift_wake.set()

    async def _lift_lane(self) -> None:
        """Start the lifts due, then sleep until the next falls due or something wakes the
        lane. A wake costs a read; the store is asked for lifts (a write) only when one is
        due."""
        due: datetime | None = self._clock.now()  # look once at start
        while True:
            self._lift_wake.clear()
            try:
                if due is not None and due <= self._clock.now():
                    await self._start_lifts()
                due = None
                if len(self._lifting) < LIFT_CONCURRENCY:
                    # While paused only lifts asked for by hand are due (the others would
                    # read as due at once, a pass per turn); resume() wakes the lane.
                    due = await self._store.next_lift_due(
                        busy=self._busy(), manual_only=self._paused() is not None
                    )
            except Exception:
                log.exception("lift pass failed; trying again shortly")
                due = self._clock.now()
                await asyncio.sleep(1.0)
                continue
            now = self._clock.now()
            until = now + MAX_SLEEP if due is None else min(due, now + MAX_SLEEP)
            if until <= now:
                continue
            await sleep_until_or_woken(self._clock, until, self._lift_wake)

    async def _undo(self, run: RunRow, catalog: ActionCatalog) -> None:
        plan = run.undo or {}
        detail: dict[str, Any] = {"run_id": run.run_id, "action": run.action}
        if plan.get("manual"):
            detail["by"] = plan["manual"]
        state = "done"
        # An earlier try of this very lift was cut off (a crash, the shutdown): its process
        # may have removed the change before it was killed.
        cut_off = plan.get("lifting") is not None
        if not await self._store.start_undo(run.run_id, self._clock.now()):
            return  # ended since the lane read it as due (removed by hand, another lift)
        if plan.get("argv"):
            request = ExecRequest.from_json(plan["argv"], _secret_env(catalog, run.action))
            detail["undo"] = "argv"
            # Rules inserted more than once (retries) go one lift each, counted from those
            # a lift held by the kill switch had already removed; the first that finds
            # nothing left (iptables says no such rule) ends it. Any other failure (sudo's
            # refusal, the lock, a timeout) leaves a rule in place: a failed lift.
            times, removed = int(plan.get("times", 1)), int(plan.get("removed", 0))
            for number in range(removed, times):
                if (held := self._held_by_switch(plan)) is not None:
                    await self._hold_lift(run, number, times, held)
                    return
                process = await self._runner.run_exec(request, run_id=run.run_id)
                detail["exit_status"] = process.exit_status
                if process.outcome is Outcome.OK:
                    continue
                gone = bool(plan.get("block_tool")) and found_nothing_to_lift(
                    process.exit_status, process.stderr
                )
                if gone and number > 0:
                    break  # none left: the lifts before this one removed them all
                if gone and cut_off:
                    # Before "maybe": a block that may never have gone in may have, and
                    # then the cut-off lift removed it.
                    detail["reason"] = (
                        "nothing left to lift: the lift that was cut off (the daemon stopped) "
                        "had most likely removed it"
                    )
                elif gone and plan.get("maybe"):
                    # iptables found no such rule: the block most likely never went in.
                    state = "nothing"
                    detail["reason"] = (
                        "nothing to lift: no attempt of the block is known to have run"
                    )
                else:
                    state = "failed"
                    detail["stderr"] = process.stderr[-300:]
                break
        elif plan.get("action"):
            other = catalog.actions.get(str(plan["action"]))
            if other is None:
                state, detail["error"] = "failed", f"undo action {plan['action']!r} is gone"
            else:
                # The run's values, by parameter name: already read from the labels,
                # extracted and checked; the undo action checks them against its own types.
                values = {p["name"]: p["value"] for p in run.audit.get("params", [])}
                context = RunContext(str(run.incident_id or ""))
                # Under the run's id: a process of it that a kill -9 leaves is the run's.
                prepared = self._runner.prepare(
                    other, {}, {}, context, run_id=run.run_id, values=values
                )
                if isinstance(prepared, ParamRejected):
                    state, detail["error"] = "failed", str(prepared.to_audit())
                elif (held := self._held_by_switch(plan)) is not None:
                    await self._hold_lift(run, 0, 1, held)
                    return
                else:
                    result = await self._runner.execute(
                        prepared, stopped=lambda: self._held_by_switch(plan)
                    )
                    if result.stopped is not None:
                        # Its retries are left: the whole undo action runs again later.
                        await self._hold_lift(run, 0, 1, result.stopped)
                        return
                    detail |= {"undo": other.name, "outcome": result.outcome.value}
                    state = "done" if result.outcome is Outcome.OK else "failed"
        self._metrics.actions.labels(run.action, f"undo_{state}").inc()
        now = self._clock.now()
        escalate: str | None = None
        if state == "failed":
            # What containment changed is still in place (a site left in maintenance, an
            # address still blocked): a person must hear of it. In the same write as the
            # outcome: a failed lift is not tried again, so a stop or crash between the two
            # would leave it unheard of.
            log.error("undo failed", extra=fields(action=run.action, run_id=run.run_id))
            escalate = f"undo of {run.action} failed: {detail.get('error') or detail}"[:500]
        told = await self._store.finish_undo(run.run_id, state, detail, now, escalate=escalate)
        if escalate is not None and run.incident_id is not None:
            self._on_escalate()
        # The run's incident is resolved (the usual case: lifts follow the resolve), or it
        # has none: escalating it pages nobody, so the daemon raises an alert of its own,
        # one per run (a second failure is a repeat). The lift that later ends the change
        # (by hand) resolves it.
        alerted = plan.get("alerted")
        if escalate is not None and not told:
            since = now if alerted is None else _from_us(int(alerted))
            await self._lift_alarm(LiftAlarm(run, escalate, since, None))
        elif state in ("done", "nothing") and alerted is not None:
            since = _from_us(int(alerted))
            await self._lift_alarm(LiftAlarm(run, "", since, max(now, since)))

    def _held_by_switch(self, plan: dict[str, Any]) -> str | None:
        """Why a lift under way may start no further attempt (the kill switch), or None. A
        lift asked for by hand is a person's decision: it keeps running all its attempts."""
        return None if plan.get("manual") else self._paused()

    async def _hold_lift(self, run: RunRow, removed: int, times: int, why: str) -> None:
        """The kill switch was engaged during a lift: it stops before its next attempt and
        waits again, for the release or a lift by hand, with what it has left to do. Not
        done, nor failed: what it did not try says nothing of the change."""
        detail: dict[str, Any] = {"run_id": run.run_id, "action": run.action, "undo": "paused"}
        detail["reason"] = (
            f"{why}; the lift stopped before its next attempt and runs when containment is "
            f"resumed (or now with `responder actions lift {run.run_id}`)"
        )
        if times > 1:
            detail["left"] = f"{times - removed} of {times} rules still to delete"
        self._metrics.actions.labels(run.action, "undo_paused").inc()
        log.warning(
            "lift stopped by the kill switch; it waits for the release",
            extra=fields(action=run.action, run=run.run_id, removed=removed, times=times),
        )
        await self._store.hold_undo(run.run_id, removed, detail, self._clock.now())

    async def _resend_lift_alarms(self) -> None:
        now = self._clock.now()
        if self._on_lift_alarm is None or now - self._lift_alarms_sent_at < LIFT_ALARM_RESEND:
            return
        self._lift_alarms_sent_at = now
        for run in await self._store.alerted_lifts():
            plan = run.undo or {}
            since = _from_us(int(plan["alerted"]))
            if run.undo_state != "failed":  # its lift has ended since: resolve the alert
                await self._lift_alarm(LiftAlarm(run, "", since, max(now, since)))
                continue
            reason = str(plan.get("alerted_reason") or "")
            await self._lift_alarm(LiftAlarm(run, reason, since, None))

    async def _lift_alarm(self, alarm: LiftAlarm) -> None:
        if self._on_lift_alarm is None:
            return
        try:
            await self._on_lift_alarm(alarm)
        except Exception:
            # The lift's outcome is committed (it must not run again for this): the
            # timeline, the log and the undo_failed metric still say so.
            log.exception(
                "lift alert not stored",
                extra=fields(action=alarm.run.action, run=alarm.run.run_id),
            )

    # -- the loop ----------------------------------------------------------------------------------
    async def run_once(self) -> None:
        self._prune(self._clock.now())
        await self._resend_lift_alarms()
        # Take new queue rows only (the queue only grows at the end): a backlog is read once,
        # not again on every pass while its runs are under way.
        while items := await self._store.containment_queue(self._taken_up_to):
            for item in items:
                self._taken_up_to = max(self._taken_up_to, item.queue_id)
                task = asyncio.create_task(self._handle_safely(item), name="containment")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        now = self._clock.now()
        if self._deadline is not None and now >= self._deadline:
            await self._checks()

    async def _handle_safely(self, item: QueuedAlert) -> None:
        try:
            await self.handle(item)
        except Exception:
            log.exception("containment failed for an alert", extra=fields(alert=item.alert_id))
            with contextlib.suppress(Exception):
                await self._store.containment_done(item.queue_id, self._clock.now())
        finally:
            self.wake()

    async def run_forever(self) -> None:
        """Call ``start`` first (the app does, before it serves requests)."""
        self._deadline = self._clock.now()  # look once at start
        lane = asyncio.create_task(self._lift_lane(), name="containment-lifts")
        try:
            while True:
                self._wake.clear()
                try:
                    await self.run_once()
                    self._deadline = await self._store.next_check_due()
                except Exception:
                    log.exception("containment pass failed; trying again shortly")
                    self._deadline = self._clock.now()
                    await asyncio.sleep(1.0)
                now = self._clock.now()
                until = now + MAX_SLEEP
                if self._deadline is not None:
                    until = min(until, self._deadline)
                if until <= now:
                    continue
                await sleep_until_or_woken(self._clock, until, self._wake)
        finally:
            await self._stop(lane)

    async def _stop(self, lane: asyncio.Task[None]) -> None:
        """Two phases: lifts under way get a grace period to finish (one cut off stays due
        and runs again at the next start); then whatever still runs is cancelled (an action
        is found interrupted at the next start) and awaited, so nothing outlives the engine."""
        self._stopping = True
        for task in list(self._waiting):
            task.cancel()
        lane.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await lane
        if self._lifting:
            await asyncio.wait({t for _, t in self._lifting.values()}, timeout=LIFT_GRACE_S)
        if self._lifting:
            log.warning(
                "lifts cut off by the shutdown; they run again at the next start",
                extra=fields(runs=sorted(self._lifting)),
            )
        left = [*self._tasks, *(t for _, t in self._lifting.values())]
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left)
        await self._runner.close()


def _secret_env(catalog: ActionCatalog, name: str) -> dict[str, EnvValue]:
    """The secret variables of action ``name`` as configured now: an undo is stored without
    their values, and gets them back when it runs."""
    action = catalog.actions.get(name)
    if action is None or not isinstance(action.spec, ExecSpec):
        return {}
    return {k: v for k, v in action.spec.env.items() if isinstance(v, Secret)}


# Lifts under way at once, in their own lane beside the actions (which have containment's
# concurrency): a slow lift holds up other lifts at most, never a fresh alert's action.
LIFT_CONCURRENCY = 2
# At shutdown, how long lifts under way may take to finish before they are cut off.
LIFT_GRACE_S = 10.0
# Attempts whose process may have done its work: it exited 0, or was killed on timeout.
_MAY_HAVE_RUN = frozenset({Outcome.OK, Outcome.TIMEOUT})


def _check_verdict(status: str) -> bool | None:
    """An ``alert_resolves_within`` check at its deadline, by the alert's status then:
    resolved, verified; firing, failed; stale (or gone), unknown."""
    if status == "resolved":
        return True
    if status == "firing":
        return False
    return None


def _shown(span: timedelta) -> str:
    return format_duration(int(span.total_seconds()))


def _from_us(value: int) -> datetime:
    return datetime.fromtimestamp(value // 1_000_000, UTC).replace(microsecond=value % 1_000_000)


def _us(when: datetime) -> int:
    return int(when.timestamp() * 1_000_000)

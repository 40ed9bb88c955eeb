"""Guards with a fake clock: cooldown, budgets, blast radius, breaker, kill switch, hold-down."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from responder.clock import FakeClock
from responder.contain.catalog import Action, CheckSpec, ContainmentSettings, parse_actions
from responder.contain.guards import (
    Guard,
    GuardState,
    UndoState,
    decide,
    finish_run,
    interrupt_running,
    late_check,
    pause,
    prune,
    reset_action_breaker,
    reset_breaker,
    resume,
    start_run,
    undo_decision,
)
from responder.contain.outcome import Outcome
from responder.yamlfile import load_text

CONFIG = """
restart:
  kind: systemd-restart
  params: {unit: {from: label, key: unit, type: systemd_unit}}
  units: [nginx, php-fpm, redis]
  cooldown: 5m
  max_runs: 3
  window: 1h
  concurrency: 2
block:
  kind: block-address
  params: {address: {from: label, key: source_ip, type: ip}}
  cooldown: 0
  dry_run: true
"""


def actions() -> dict[str, Action]:
    catalog = parse_actions(load_text(CONFIG, "actions.yaml"), Path("/etc/responder"))
    return dict(catalog.actions)


SETTINGS = ContainmentSettings(
    max_actions_per_window=5, max_targets_per_window=3, window=timedelta(minutes=10)
)


def run_once(
    state: GuardState, clock: FakeClock, action: Action, target: str, outcome: Outcome, n: int
) -> GuardState:
    state = start_run(state, f"r{n}", action.name, target, clock.now())
    return finish_run(state, f"r{n}", outcome, clock.now(), action=action, settings=SETTINGS).state


def test_cooldown_blocks_a_second_run_on_the_same_target_until_it_passes() -> None:
    """nginx restarted at 09:00 with a 5 min cooldown: 09:02 is refused, 09:05 allowed."""
    clock = FakeClock()
    restart = actions()["restart"]
    state = run_once(GuardState(), clock, restart, "nginx.service", Outcome.OK, 1)
    clock.advance(timedelta(minutes=2))
    decision = decide(state, restart, "nginx.service", SETTINGS, clock.now())
    assert decision.guard is Guard.COOLDOWN
    assert not decision.allowed
    assert decision.retry_at == clock.now() + timedelta(minutes=3)
    assert decide(state, restart, "redis.service", SETTINGS, clock.now()).allowed
    clock.advance(timedelta(minutes=3))
    assert decide(state, restart, "nginx.service", SETTINGS, clock.now()).allowed


def test_max_runs_per_window_per_target() -> None:
    """Three restarts of nginx within the hour: the fourth waits for the window to slide."""
    clock = FakeClock()
    restart = actions()["restart"]
    state = GuardState()
    for n in range(3):
        state = run_once(state, clock, restart, "nginx.service", Outcome.OK, n)
        clock.advance(timedelta(minutes=6))
    decision = decide(state, restart, "nginx.service", SETTINGS, clock.now())
    assert decision.guard is Guard.RATE_LIMIT
    assert decision.retry_at is not None
    clock.set(decision.retry_at + timedelta(seconds=1))
    assert decide(state, restart, "nginx.service", SETTINGS, clock.now()).allowed


def test_global_budget_and_blast_radius() -> None:
    """A storm touching many targets is stopped by the distinct-target and total budgets."""
    clock = FakeClock()
    restart = actions()["restart"]
    state = GuardState()
    for n, unit in enumerate(["nginx.service", "php-fpm.service", "redis.service"]):
        state = run_once(state, clock, restart, unit, Outcome.OK, n)
    decision = decide(state, restart, "other.service", SETTINGS, clock.now())
    assert decision.guard is Guard.BLAST_RADIUS
    # Same targets again, after their cooldowns: allowed until the total budget (5) is spent.
    clock.advance(timedelta(minutes=5))
    state = run_once(state, clock, restart, "nginx.service", Outcome.OK, 10)
    state = run_once(state, clock, restart, "redis.service", Outcome.OK, 11)
    decision = decide(state, restart, "php-fpm.service", SETTINGS, clock.now())
    assert decision.guard is Guard.RATE_LIMIT
    assert "global" in decision.reason
    clock.advance(timedelta(minutes=11))
    assert decide(state, restart, "other.service", SETTINGS, clock.now()).allowed


def test_breaker_opens_after_three_failures_escalates_and_stays_open_until_reset() -> None:
    """The seeds: a service that fails to restart 3 times escalates; no fourth blind attempt."""
    clock = FakeClock()
    restart = actions()["restart"]
    state = GuardState()
    escalations = []
    for n in range(3):
        state = start_run(state, f"r{n}", "restart", "nginx.service", clock.now())
        done = finish_run(
            state, f"r{n}", Outcome.FAILED, clock.now(), action=restart, settings=SETTINGS
        )
        state = done.state
        escalations.append(done.escalate)
        clock.advance(timedelta(minutes=6))
    assert escalations == [False, False, True]
    assert done.breaker_opened
    assert done.consecutive_failures == 3
    clock.advance(timedelta(days=2))
    decision = decide(state, restart, "nginx.service", SETTINGS, clock.now())
    assert decision.guard is Guard.BREAKER_OPEN
    # The breaker is plain data: it survives a save and load (a daemon restart).
    reloaded = GuardState.from_json(json.loads(json.dumps(state.to_json())))
    assert decide(reloaded, restart, "nginx.service", SETTINGS, clock.now()).guard is (
        Guard.BREAKER_OPEN
    )
    state = reset_breaker(reloaded, "restart", "nginx.service")
    assert decide(state, restart, "nginx.service", SETTINGS, clock.now()).allowed


def test_failed_attempts_within_one_run_count_and_success_resets() -> None:
    """A run with 2 failed retries counts 3 failures; a later success starts again from 0."""
    clock = FakeClock()
    restart = actions()["restart"]
    state = start_run(GuardState(), "a", "restart", "redis.service", clock.now())
    done = finish_run(
        state, "a", Outcome.TIMEOUT, clock.now(), action=restart, settings=SETTINGS, attempts=3
    )
    assert done.escalate
    assert done.breaker_opened
    state = reset_breaker(done.state, "restart", "redis.service")
    clock.advance(timedelta(minutes=10))
    state = start_run(state, "b", "restart", "redis.service", clock.now())
    done = finish_run(state, "b", Outcome.FAILED, clock.now(), action=restart, settings=SETTINGS)
    assert done.consecutive_failures == 1
    clock.advance(timedelta(minutes=10))
    state = start_run(done.state, "c", "restart", "redis.service", clock.now())
    done = finish_run(state, "c", Outcome.OK, clock.now(), action=restart, settings=SETTINGS)
    assert done.consecutive_failures == 0
    assert done.state.breakers == ()


def test_start_limit_hit_escalates_at_once() -> None:
    """systemd refusing starts is not worth two more tries: escalate on the first."""
    clock = FakeClock()
    restart = actions()["restart"]
    state = start_run(GuardState(), "a", "restart", "nginx.service", clock.now())
    done = finish_run(
        state, "a", Outcome.START_LIMIT_HIT, clock.now(), action=restart, settings=SETTINGS
    )
    assert done.escalate
    assert not done.breaker_opened


def test_kill_switch_pauses_everything_and_records_who_and_why() -> None:
    """Paused by an operator: every action is refused with their name and reason."""
    clock = FakeClock()
    restart = actions()["restart"]
    state = pause(GuardState(), "drill in progress", "alice", clock.now())
    decision = decide(state, restart, "nginx.service", SETTINGS, clock.now())
    assert decision.guard is Guard.PAUSED
    assert "alice" in decision.reason
    assert "drill in progress" in decision.reason
    assert state.kill_switch.at == clock.now()
    state = resume(state, "bob", clock.now())
    assert decide(state, restart, "nginx.service", SETTINGS, clock.now()).allowed
    assert state.kill_switch.by == "bob"


def test_concurrency_in_flight_runs() -> None:
    """The same target never twice at once; per-action and global in-flight caps hold."""
    clock = FakeClock()
    restart = actions()["restart"]
    state = start_run(GuardState(), "a", "restart", "nginx.service", clock.now())
    assert decide(state, restart, "nginx.service", SETTINGS, clock.now()).guard is (
        Guard.CONCURRENCY
    )
    assert decide(state, restart, "redis.service", SETTINGS, clock.now()).allowed
    state = start_run(state, "b", "restart", "redis.service", clock.now())
    decision = decide(state, restart, "php-fpm.service", SETTINGS, clock.now())
    assert decision.guard is Guard.CONCURRENCY
    assert "2 run(s)" in decision.reason
    # A full slot is worth waiting for (a run on another target ends); the same target
    # already in work is not (that change is being made).
    assert decision.wait
    assert not decide(state, restart, "nginx.service", SETTINGS, clock.now()).wait


def test_interrupted_runs_are_not_rerun_blindly() -> None:
    """After a crash, a run left RUNNING becomes INTERRUPTED and still holds its cooldown."""
    clock = FakeClock()
    restart = actions()["restart"]
    state = start_run(GuardState(), "a", "restart", "nginx.service", clock.now())
    state = interrupt_running(state, clock.now() + timedelta(seconds=30))
    assert state.runs[0].outcome is Outcome.INTERRUPTED
    clock.advance(timedelta(minutes=1))
    assert decide(state, restart, "nginx.service", SETTINGS, clock.now()).guard is Guard.COOLDOWN


def test_dry_run_is_decided_last() -> None:
    """A dry-run action that would otherwise run says dry_run; paused still says paused."""
    clock = FakeClock()
    block = actions()["block"]
    decision = decide(GuardState(), block, "203.0.113.7", SETTINGS, clock.now())
    assert decision.guard is Guard.DRY_RUN
    assert decision.dry_run
    restart = actions()["restart"]
    global_dry = ContainmentSettings(dry_run=True)
    assert decide(GuardState(), restart, "x", global_dry, clock.now()).dry_run
    paused = pause(GuardState(), "why", "me", clock.now())
    assert decide(paused, block, "203.0.113.7", SETTINGS, clock.now()).guard is Guard.PAUSED


def test_hold_down_keeps_a_flapping_alert_from_undoing_too_early() -> None:
    """Resolved at 09:00 with a 5 min hold-down: wait; re-fired: cancel; stayed resolved: due."""
    clock = FakeClock()
    resolved = clock.now()
    hold = timedelta(minutes=5)
    clock.advance(timedelta(minutes=2))
    wait = undo_decision(resolved, None, clock.now(), hold)
    assert wait.state is UndoState.WAIT
    assert wait.at == resolved + hold
    refired = undo_decision(resolved, resolved + timedelta(minutes=1), clock.now(), hold)
    assert refired.state is UndoState.CANCELLED
    clock.advance(timedelta(minutes=3))
    assert undo_decision(resolved, None, clock.now(), hold).state is UndoState.DUE


def test_prune_forgets_old_finished_runs_but_not_running_ones() -> None:
    """Old history goes; a run still in flight is kept whatever its age."""
    clock = FakeClock()
    restart = actions()["restart"]
    state = run_once(GuardState(), clock, restart, "nginx.service", Outcome.OK, 1)
    state = start_run(state, "live", "restart", "redis.service", clock.now())
    clock.advance(timedelta(days=2))
    pruned = prune(state, clock.now(), timedelta(days=1))
    assert [r.run_id for r in pruned.runs] == ["live"]


def test_a_check_that_fails_after_an_ok_run_counts_toward_the_breaker() -> None:
    """Each restart exits 0 (the breaker's count reset) and its alert_resolves_within check
    fails later: those failures add up and open the breaker at its threshold (containment
    review, stop 16: four such restarts left no breaker)."""
    clock = FakeClock()
    check = CheckSpec(alert_resolves_within=timedelta(minutes=5))
    restart = replace(actions()["restart"], breaker_failures=2, check=check)
    state = GuardState()
    opened = []
    for n in range(2):
        state = run_once(state, clock, restart, "nginx.service", Outcome.OK, n)
        now = clock.now()
        state, now_open = late_check(
            state, restart, "nginx.service", False, now, SETTINGS, run_started=now
        )
        opened.append(now_open)
        clock.advance(timedelta(minutes=10))
    assert opened == [False, True]
    assert state.breaker("restart", "nginx.service").opened_at is not None
    assert not decide(state, restart, "nginx.service", SETTINGS, clock.now()).allowed


def test_a_verified_late_check_starts_the_count_over() -> None:
    """One late failure, then a run whose check verifies: the count starts over, and the
    next failure does not open the breaker (threshold 2)."""
    clock = FakeClock()
    check = CheckSpec(alert_resolves_within=timedelta(minutes=5))
    restart = replace(actions()["restart"], breaker_failures=2, check=check)
    state = GuardState()
    for n, verified in enumerate((False, True, False)):
        state = run_once(state, clock, restart, "nginx.service", Outcome.OK, n)
        now = clock.now()
        state, opened = late_check(
            state, restart, "nginx.service", verified, now, SETTINGS, run_started=now
        )
        assert not opened
        clock.advance(timedelta(minutes=10))
    assert state.breaker("restart", "nginx.service").consecutive_failures == 1


def test_a_late_verified_check_keeps_failures_that_came_after_its_run() -> None:
    """Run 1 ok, its check pending; runs 2 and 3 fail; then run 1's check verifies: the two
    later failures still count (regression review, stop 16: they were wiped out)."""
    clock = FakeClock()
    check = CheckSpec(alert_resolves_within=timedelta(minutes=5))
    restart = replace(actions()["restart"], breaker_failures=3, check=check)
    state = run_once(GuardState(), clock, restart, "nginx.service", Outcome.OK, 1)
    first_started = clock.now()
    for n in (2, 3):
        clock.advance(timedelta(minutes=6))
        state = run_once(state, clock, restart, "nginx.service", Outcome.FAILED, n)
    state, _ = late_check(
        state, restart, "nginx.service", True, clock.now(), SETTINGS, run_started=first_started
    )
    assert state.breaker("restart", "nginx.service").consecutive_failures == 2


def test_an_action_failing_on_many_targets_opens_its_breaker_across_targets() -> None:
    """nft is broken: every block fails, each on a new attacker address, so no target's
    breaker ever counts past 1. The fifth failed run within the hour (the default) opens
    the action's breaker across targets, once; every target is refused until it is reset,
    and the open breaker survives a save and load (a restart)."""
    clock = FakeClock()
    block = replace(actions()["block"], dry_run=False)
    settings = replace(SETTINGS, max_actions_per_window=100, max_targets_per_window=100)
    state = GuardState()
    opened = []
    for n in range(7):
        target = f"203.0.113.{n}"
        assert decide(state, block, target, settings, clock.now()).allowed, n
        state = start_run(state, f"r{n}", "block", target, clock.now())
        done = finish_run(
            state, f"r{n}", Outcome.FAILED, clock.now(), action=block, settings=settings
        )
        state = done.state
        assert done.consecutive_failures == 1  # per target: never near its breaker
        opened.append(done.action_breaker is not None)
        if n == 4:
            break
        clock.advance(timedelta(minutes=10))
    assert opened == [False, False, False, False, True]
    assert done.escalate  # the run that opened it pages: the action is broken
    broken = state.action_breaker("block")
    assert (broken.failures, broken.targets, broken.opened_at) == (5, 5, clock.now())
    decision = decide(state, block, "198.51.100.7", settings, clock.now())
    assert decision.guard is Guard.ACTION_BREAKER_OPEN
    assert "5 failed runs on 5 targets" in decision.reason
    reloaded = GuardState.from_json(json.loads(json.dumps(state.to_json())))
    clock.advance(timedelta(minutes=5))  # open until reset, not until the window passes
    decision = decide(reloaded, block, "198.51.100.7", settings, clock.now())
    assert decision.guard is Guard.ACTION_BREAKER_OPEN
    state = reset_action_breaker(reloaded, "block", clock.now())
    assert not state.action_breaker("block").is_open
    assert decide(state, block, "198.51.100.7", settings, clock.now()).allowed
    # The failures before the reset are forgiven: one more does not open it again at once.
    state = start_run(state, "after", "block", "198.51.100.7", clock.now())
    done = finish_run(state, "after", Outcome.FAILED, clock.now(), action=block, settings=settings)
    assert done.action_breaker is None


def test_failures_older_than_the_window_do_not_open_the_action_breaker() -> None:
    """Failures 20 minutes apart, an ok and a stopped run among them: the window never holds
    five failed runs, so the action keeps running (an ok run does not count, nor does it
    start the count over: the window does). A per-action setting overrides the default."""
    clock = FakeClock()
    block = replace(actions()["block"], dry_run=False)
    settings = replace(SETTINGS, max_actions_per_window=100, max_targets_per_window=100)
    state = GuardState()
    outcomes = [Outcome.FAILED, Outcome.OK, Outcome.TIMEOUT, Outcome.ERROR, Outcome.STOPPED]
    outcomes += [Outcome.FAILED] * 4
    for n, outcome in enumerate(outcomes):
        state = start_run(state, f"r{n}", "block", f"192.0.2.{n}", clock.now())
        done = finish_run(state, f"r{n}", outcome, clock.now(), action=block, settings=settings)
        state = done.state
        assert done.action_breaker is None, n
        clock.advance(timedelta(minutes=20))
    strict = replace(block, action_breaker_failures=3)
    state = start_run(state, "last", "block", "192.0.2.99", clock.now())
    done = finish_run(state, "last", Outcome.FAILED, clock.now(), action=strict, settings=settings)
    assert done.action_breaker is not None
    assert done.action_breaker.failures == 3  # the three within the last hour

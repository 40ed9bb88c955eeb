"""Which lift is the same lift: an undo action with the same values, an undo command with
the same parameters; an iptables rule belongs to its run; a lift of a block that most
likely never went in is no failure (sixth review of stop 14)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from responder.clock import FakeClock
from responder.testing import SmtpTestServer
from tests.conftest import ClientFactory
from tests.test_containment import (
    MAINTENANCE_RULE,
    _finished,
    _true,
    blocked_once,
    config,
    maintenance_undone_by_action,
    on_off_scripts,
    script,
    smtp,
)
from tests.test_containment_lifts import drained_from_two_pools
from tests.test_escalation_story import alert, eventually, post, webhook

__all__ = ["smtp"]


async def test_an_undo_action_is_run_once_when_a_new_episode_makes_the_change_again(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """undo: {action: ...}: a new episode that makes the same change again (same values)
    supersedes the first run's lift; the undo action runs once after the last resolve."""
    log = tmp_path / "log"
    on, off = on_off_scripts(tmp_path, log)
    actions = "actions:\n" + maintenance_undone_by_action(on, off)
    client = await make_client(config(tmp_path, smtp, actions, MAINTENANCE_RULE))
    fired = alert("BackendErrors", backend="web-1")
    await post(client, webhook(fired))
    await eventually(lambda: _finished(client), "the run finished")
    await post(client, webhook(alert("BackendErrors", "resolved", **fired["labels"])))
    clock.advance(timedelta(minutes=2))
    again = alert("BackendErrors", starts="2026-01-05T09:02:00Z", backend="web-1")
    await post(client, webhook(again))  # fires again within the hold-down
    await eventually(
        lambda: _true(log.read_text().splitlines() == ["on web-1", "on web-1"]), "run again"
    )
    await asyncio.sleep(0.3)
    await post(client, webhook(alert("BackendErrors", "resolved", **again["labels"])))
    await asyncio.sleep(0.2)
    clock.advance(timedelta(minutes=6))
    await eventually(lambda: _true("off web-1" in log.read_text()), "lifted")
    await asyncio.sleep(0.5)
    assert log.read_text().splitlines() == ["on web-1", "on web-1", "off web-1"]


async def test_a_new_episode_whose_undo_differs_only_in_its_param_env_lifts_both(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """The undo reads the pool from RESPONDER_PARAM_POOL, so its argv is the same for pool a
    and pool b: the values differ, the lifts are not the same, and both run."""
    log = tmp_path / "log"
    w = (
        f"open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + ' '"
        " + os.environ['RESPONDER_PARAM_POOL'] + '\\n')"
    )
    on = script(tmp_path, "on", w)
    off = script(tmp_path, "off", w)
    actions = f"""
actions:
  maintenance:
    kind: exec
    argv: [{on}, "drain", "{{backend}}"]
    params:
      backend: {{from: label, key: backend, type: identifier}}
      pool: {{from: annotation, key: pool, type: identifier}}
    target: backend
    cooldown: 0
    undo: {{argv: [{off}, "undrain", "{{backend}}"]}}
    undo_hold_down: 5m
"""
    await drained_from_two_pools(make_client, tmp_path, clock, smtp, actions, log)


def _stateful_iptables(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A fake iptables that keeps its rules, one line each: -I adds one (its very first call
    hangs on the xtables lock, inserting nothing, until killed), -D deletes one identical
    rule or fails like iptables when there is none."""
    rules = tmp_path / "rules"
    rules.write_text("")
    flag = tmp_path / "locked-once"
    log = tmp_path / "fw.log"
    body = (
        f"open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        f"kept = [r for r in open({str(rules)!r}).read().splitlines() if r]\n"
        "op = '-I' if '-I' in sys.argv else '-D'\n"
        "spec = ' '.join(a for a in sys.argv[1:] if a not in ('-w', '-I', '-D'))\n"
        "if op == '-I':\n"
        f"    if not os.path.exists({str(flag)!r}):\n"
        f"        open({str(flag)!r}, 'w').close(); time.sleep(30)\n"
        "    kept.append(spec)\n"
        "elif spec in kept:\n"
        "    kept.remove(spec)\n"
        "else:\n"
        "    sys.stderr.write('iptables: Bad rule (does a matching rule exist?).\\n')\n"
        "    sys.exit(1)\n"
        f"open({str(rules)!r}, 'w').write('\\n'.join(kept))\n"
    )
    return script(tmp_path, "iptables", body), rules, log


def _count(rules: Path) -> int:
    return len([r for r in rules.read_text().splitlines() if r])


async def test_an_earlier_runs_lift_does_not_delete_a_later_episodes_iptables_rule(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """Run A (attempt 1 timed out on the xtables lock, attempt 2 inserted) lifts twice at its
    expiry; run B (a new episode) inserted a rule of its own. Each rule carries its run's
    id, so A's lift cannot delete B's block before B's expiry."""
    tool, rules, _ = _stateful_iptables(tmp_path)
    undo = "    undo: builtin\n    undo_hold_down: 5m\n"
    client = await blocked_once(make_client, tmp_path, smtp, tool, undo)
    fired = alert("SSHBruteForce", source_ip="203.0.113.7")
    assert _count(rules) == 1
    await post(client, webhook(alert("SSHBruteForce", "resolved", **fired["labels"])))
    clock.advance(timedelta(minutes=2))
    again = alert("SSHBruteForce", starts="2026-01-05T09:02:00Z", source_ip="203.0.113.7")
    await post(client, webhook(again))  # the attacker is back, B blocks until +1h02m
    await eventually(lambda: _true(_count(rules) == 2), "B's rule in")
    await asyncio.sleep(0.3)
    clock.advance(timedelta(minutes=10))  # A's hold-down over while B fires: A waits
    await asyncio.sleep(0.3)
    clock.advance(timedelta(minutes=49, seconds=30))  # past A's expiry, before B's
    await asyncio.sleep(1.0)
    assert _count(rules) == 1, "B's block was lifted by A's lift before its expiry"


async def test_a_timed_out_insert_that_inserted_nothing_is_not_a_failed_lift(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """Attempt 1 hung on the xtables lock and was killed, attempt 2 failed: the run keeps its
    lift (a rule may be in place); at expiry -D finds none, and that is 'nothing', not
    'undo of block failed' paging the next level."""
    from tests.test_escalation_story import incident

    tool, rules, log = _stateful_iptables(tmp_path)
    # Attempt 2 fails: a second flag makes -I exit 1 after the hang.
    text = tool.read_text().replace(
        "    open(",
        "    if os.path.exists("
        + repr(str(tmp_path / "locked-once"))
        + "): sys.exit(1)\n    open(",
        1,
    )
    tool.write_text(text)
    client = await blocked_once(make_client, tmp_path, smtp, tool)
    assert _count(rules) == 0
    clock.advance(timedelta(hours=1, minutes=1))
    await eventually(lambda: _true(" -D " in f" {log.read_text()} "), "the lift ran")
    await asyncio.sleep(0.5)
    reasons = [
        e["detail"].get("reason", "")
        for e in (await incident(client))["timeline"]
        if e["kind"] == "containment_failed"
    ]
    assert not any("undo of block failed" in r for r in reasons), reasons

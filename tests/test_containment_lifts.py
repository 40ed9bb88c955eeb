"""Every change containment made is lifted exactly once: iptables rules one per insert, a
change made again by a new episode once, a retried attempt's change too (fifth review of
stop 14)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

from responder.clock import FakeClock
from responder.testing import SmtpTestServer
from tests.conftest import AUTH, ClientFactory
from tests.test_containment import (
    BLOCK_RULE,
    MAINTENANCE_RULE,
    _finished,
    _lines,
    _true,
    block_action,
    blocked_once,
    config,
    maintenance_action,
    maintenance_undone_by_action,
    on_off_scripts,
    smtp,
)
from tests.test_escalation_story import alert, eventually, incident, post, webhook

__all__ = ["smtp"]


async def test_an_iptables_block_made_again_by_a_new_episode_lifts_both_rules(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """iptables: each run inserts a rule of its own (-I), each lift deletes one (-D). A new
    episode's run must not supersede the first run's lift: as many rules come out as went
    in (it superseded it, and the address stayed blocked for ever)."""
    log, actions = block_action(tmp_path)
    client = await make_client(config(tmp_path, smtp, actions, BLOCK_RULE))
    fired = alert("SSHBruteForce", source_ip="203.0.113.7")
    await post(client, webhook(fired))
    await eventually(lambda: _finished(client), "blocked")
    await post(client, webhook(alert("SSHBruteForce", "resolved", **fired["labels"])))
    clock.advance(timedelta(minutes=10))
    again = alert("SSHBruteForce", starts="2026-01-05T09:10:00Z", source_ip="203.0.113.7")
    await post(client, webhook(again))  # the attacker is back: a new episode
    await eventually(lambda: _true(_lines(log, "-I") == 2), "blocked again")
    await asyncio.sleep(0.3)
    clock.advance(timedelta(hours=3))  # both blocks long expired
    await asyncio.sleep(0.5)
    clock.advance(timedelta(minutes=1))
    await asyncio.sleep(0.5)
    assert _lines(log, "-I") == 2
    assert _lines(log, "-D") == 2, "one inserted rule is never deleted: blocked for ever"


def _maintenance(tmp_path: Path, extra: str = "") -> tuple[Path, str]:

    log = tmp_path / "log"
    on, off = on_off_scripts(tmp_path, log)
    return (
        log,
        f"""
actions:
{maintenance_action(on, off)}{extra}
""",
    )


async def test_a_stale_alert_revived_lifts_its_change_once(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """The alert went stale (the first run's lift still waiting for a resolve), then revived
    and ran its action again: the new run's lift supersedes the first, and the change is
    lifted once at the final resolve (it was lifted twice)."""
    log, actions = _maintenance(tmp_path)
    text_actions = "alerts: {stale_after: 10m, stale_check_every: 1m}\n" + actions
    client = await make_client(config(tmp_path, smtp, text_actions, MAINTENANCE_RULE))
    fired = alert("BackendErrors", backend="web-1")
    await post(client, webhook(fired))
    await eventually(lambda: _true(log.exists() and "on web-1" in log.read_text()), "on")
    await eventually(lambda: _finished(client), "the run finished")
    for _ in range(15):  # past stale_after: the sweeper marks it stale
        clock.advance(timedelta(minutes=1))
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    answer = await client.post("/api/v1/alertmanager", json=webhook(fired), headers=AUTH)
    assert (await answer.json())["outcomes"] == {"revived": 1}
    await eventually(
        lambda: _true(log.read_text().splitlines() == ["on web-1", "on web-1"]), "run again"
    )
    await asyncio.sleep(0.3)
    await post(client, webhook(alert("BackendErrors", "resolved", **fired["labels"])))
    await asyncio.sleep(0.2)
    clock.advance(timedelta(minutes=6))
    await eventually(lambda: _true("off web-1" in log.read_text()), "lifted")
    await asyncio.sleep(0.5)
    assert log.read_text().splitlines() == ["on web-1", "on web-1", "off web-1"]


async def drained_from_two_pools(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,
    actions: str,
    log: Path,
) -> None:
    """Episode 1 drains web-1 from pool a (from an annotation), episode 2 from pool b, and
    both resolve: both pools are undrained."""
    client = await make_client(config(tmp_path, smtp, actions, MAINTENANCE_RULE))
    fired = alert("BackendErrors", backend="web-1")
    fired["annotations"] = {"pool": "a"}
    await post(client, webhook(fired))
    await eventually(lambda: _true(log.exists() and "drain web-1 a" in log.read_text()), "a")
    await eventually(lambda: _finished(client), "the run finished")
    await post(client, webhook(alert("BackendErrors", "resolved", **fired["labels"])))
    clock.advance(timedelta(minutes=2))
    again = alert("BackendErrors", starts="2026-01-05T09:02:00Z", backend="web-1")
    again["annotations"] = {"pool": "b"}
    await post(client, webhook(again))
    await eventually(lambda: _true("drain web-1 b" in log.read_text()), "b")
    await asyncio.sleep(0.3)
    await post(client, webhook(alert("BackendErrors", "resolved", **again["labels"])))
    await asyncio.sleep(0.2)
    clock.advance(timedelta(minutes=6))
    await eventually(lambda: _true("undrain web-1 b" in log.read_text()), "b lifted")
    await asyncio.sleep(0.5)
    text = await asyncio.to_thread(log.read_text)
    assert "undrain web-1 a" in text.splitlines(), text


async def test_a_new_episode_on_the_same_target_with_other_values_lifts_both_changes(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """`target: backend`, the pool from an annotation: episode 1 drains web-1 from pool a,
    episode 2 from pool b. Different lifts: neither supersedes the other, and both are
    lifted (pool a's was superseded, and web-1 stayed drained from it)."""
    from tests.test_containment import script

    log = tmp_path / "log"
    w = f"open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')"
    on = script(tmp_path, "on", w)
    off = script(tmp_path, "off", w)
    actions = f"""
actions:
  maintenance:
    kind: exec
    argv: [{on}, "drain", "{{backend}}", "{{pool}}"]
    params:
      backend: {{from: label, key: backend, type: identifier}}
      pool: {{from: annotation, key: pool, type: identifier}}
    target: backend
    cooldown: 0
    undo: {{argv: [{off}, "undrain", "{{backend}}", "{{pool}}"]}}
    undo_hold_down: 5m
"""
    await drained_from_two_pools(make_client, tmp_path, clock, smtp, actions, log)


async def test_a_builtin_iptables_block_refired_deletes_as_many_rules_as_it_inserted(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """The scenario of test_an_iptables_block_with_builtin_undo_is_lifted_on_resolve, counting
    the rules that went in as well as those that came out."""
    log, actions = block_action(tmp_path, "    undo: builtin\n    undo_hold_down: 5m\n")
    client = await make_client(config(tmp_path, smtp, actions, BLOCK_RULE))
    fired = alert("SSHBruteForce", source_ip="203.0.113.7")
    await post(client, webhook(fired))
    await eventually(lambda: _finished(client), "blocked")
    await post(client, webhook(alert("SSHBruteForce", "resolved", **fired["labels"])))
    clock.advance(timedelta(minutes=2))
    again = alert("SSHBruteForce", starts="2026-01-05T09:02:00Z", source_ip="203.0.113.7")
    await post(client, webhook(again))
    await asyncio.sleep(0.3)
    await post(client, webhook(alert("SSHBruteForce", "resolved", **again["labels"])))
    await asyncio.sleep(0.2)
    clock.advance(timedelta(minutes=6))
    await asyncio.sleep(0.5)
    clock.advance(timedelta(hours=2))
    await asyncio.sleep(0.5)
    assert _lines(log, "-I") == 2
    assert _lines(log, "-D") == 2, "one DROP rule stays for ever"


async def test_an_iptables_insert_that_timed_out_then_a_failed_retry_is_lifted(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """Attempt 1's insert timed out after the rule went in, the retry failed: the outcome is
    'failed', yet the rule is lifted at its expiry (the lift was dropped, and the rule
    stayed for ever)."""
    from tests.test_containment import script

    log = tmp_path / "fw.log"
    flag = tmp_path / "tried"
    body = (
        f"open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        "if '-I' in sys.argv:\n"
        f"    if not os.path.exists({str(flag)!r}):\n"
        f"        open({str(flag)!r}, 'w').close(); time.sleep(10)\n"
        "    sys.exit(1)\n"
    )
    await blocked_once(make_client, tmp_path, smtp, script(tmp_path, "iptables", body))
    assert _lines(log, "-I") == 2
    clock.advance(timedelta(hours=1, minutes=1))
    await asyncio.sleep(0.5)
    clock.advance(timedelta(minutes=1))
    await asyncio.sleep(0.5)
    assert _lines(log, "-D") >= 1, "the rule attempt 1 may have inserted is never lifted"


async def test_maintenance_on_whose_retry_failed_after_a_failed_check_is_lifted(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """Attempt 1 put web-1 in maintenance but its check failed, the retry failed: the resolve
    still takes web-1 out of maintenance (the lift was dropped)."""
    from tests.test_containment import script

    log = tmp_path / "log"
    flag = tmp_path / "tried"
    on = script(
        tmp_path,
        "on",
        f"if os.path.exists({str(flag)!r}): sys.exit(1)\n"
        f"open({str(flag)!r}, 'w').close(); open({str(log)!r}, 'a').write('on web-1\\n')",
    )
    off = script(tmp_path, "off", f"open({str(log)!r}, 'a').write('off ' + sys.argv[1] + '\\n')")
    check = script(tmp_path, "check", "sys.exit(1)")
    actions = f"""
actions:
  maintenance:
    kind: exec
    argv: [{on}, "{{backend}}"]
    params:
      backend: {{from: label, key: backend, type: identifier}}
    cooldown: 0
    retries: 1
    retry_delay: 0s
    check: {{argv: [{check}]}}
    undo: {{argv: [{off}, "{{backend}}"]}}
    undo_hold_down: 5m
"""
    client = await make_client(config(tmp_path, smtp, actions, MAINTENANCE_RULE))
    fired = alert("BackendErrors", backend="web-1")
    await post(client, webhook(fired))
    await eventually(lambda: _finished(client), "the run finished")
    await post(client, webhook(alert("BackendErrors", "resolved", **fired["labels"])))
    await asyncio.sleep(0.2)
    clock.advance(timedelta(minutes=6))
    await asyncio.sleep(0.5)
    assert log.read_text().splitlines() == ["on web-1", "off web-1"]


async def test_an_iptables_lift_that_fails_on_a_second_rule_is_a_failed_lift(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """Two rules went in (the first insert timed out after it ran, the retry worked); the
    second -D meets the xtables lock (exit 4): a rule is still there, so the lift failed and
    a person hears of it (containment review, stop 16: it was recorded done, the address
    blocked for ever)."""
    from tests.test_containment import script

    log = tmp_path / "fw.log"
    flag = tmp_path / "tried"
    deletes = tmp_path / "deletes"
    body = (
        f"open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        "if '-I' in sys.argv and not os.path.exists(" + repr(str(flag)) + "):\n"
        f"    open({str(flag)!r}, 'w').close(); time.sleep(10)\n"
        "if '-D' in sys.argv:\n"
        f"    open({str(deletes)!r}, 'a').write('x')\n"
        f"    sys.exit(4 if len(open({str(deletes)!r}).read()) == 2 else 0)\n"
    )
    client = await blocked_once(make_client, tmp_path, smtp, script(tmp_path, "iptables", body))
    assert _lines(log, "-I") == 2
    clock.advance(timedelta(hours=1, minutes=1))

    async def lift_failed() -> bool:
        runs = (await (await client.get("/api/v1/actions", headers=AUTH)).json())["data"]
        return any(r.get("undo") == "failed" for r in runs["recent"])

    await eventually(lift_failed, "the lift recorded as failed")
    assert _lines(log, "-D") == 2


async def test_the_kill_switch_holds_lifts_until_it_is_released(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """Paused, the site stays in maintenance past its hold-down (someone may be working on
    it); released, the lift runs at once (containment review, stop 16: it ran while paused)."""
    log, actions = _maintenance(tmp_path)
    client = await make_client(config(tmp_path, smtp, actions, MAINTENANCE_RULE))
    fired = alert("BackendErrors", backend="shop")
    await post(client, webhook(fired))
    await eventually(lambda: _finished(client), "maintenance on")
    paused = await client.post(
        "/api/v1/actions/pause", json={"reason": "hands on", "by": "alice"}, headers=AUTH
    )
    assert paused.status == 200
    await post(client, webhook(alert("BackendErrors", "resolved", **fired["labels"])))
    await asyncio.sleep(0.2)
    clock.advance(timedelta(minutes=10))  # past the 5 minutes' hold-down
    await asyncio.sleep(0.5)
    assert log.read_text().splitlines() == ["on shop"]
    resumed = await client.post("/api/v1/actions/resume", json={"by": "alice"}, headers=AUTH)
    assert resumed.status == 200
    assert (await resumed.json())["changed"] is True
    await eventually(
        lambda: _true(log.read_text().splitlines() == ["on shop", "off shop"]), "lifted"
    )
    # Resuming what is not paused changes nothing, and says so (new-user review: the CLI
    # printed "resumed" and the audit recorded a resume that was none).
    again = await client.post("/api/v1/actions/resume", json={"by": "bob"}, headers=AUTH)
    document = await again.json()
    assert document["changed"] is False
    assert document["data"]["by"] == "alice"


async def test_an_undo_gets_the_secret_variables_of_its_action(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """The lift is stored without secret values (they never reach the database) and takes
    them from the action's configuration when it runs (containment review, stop 16: the undo
    ran without its token, unauthenticated or failing)."""
    from tests.test_containment import script

    log = tmp_path / "log"
    secret = tmp_path / "site-token"
    secret.write_text("s3cr3t-value\n")
    body = (
        f"open({str(log)!r}, 'a').write(sys.argv[1] + ' ' + os.environ.get('TOKEN', '-') + '\\n')"
    )
    tool = script(tmp_path, "site", body)
    actions = f"""
actions:
  maintenance:
    kind: exec
    argv: [{tool}, "on"]
    env:
      TOKEN: {{value_file: {secret}}}
    cooldown: 0
    undo: {{argv: [{tool}, "off"]}}
    undo_hold_down: 1m
"""
    client = await make_client(config(tmp_path, smtp, actions, MAINTENANCE_RULE))
    fired = alert("BackendErrors", backend="shop")
    await post(client, webhook(fired))
    await eventually(lambda: _finished(client), "maintenance on")
    await post(client, webhook(alert("BackendErrors", "resolved", **fired["labels"])))
    await asyncio.sleep(0.2)
    clock.advance(timedelta(minutes=2))
    await eventually(lambda: _true(len(log.read_text().splitlines()) == 2), "lifted")
    assert log.read_text().splitlines() == ["on s3cr3t-value", "off s3cr3t-value"]


def _iptables_deleting_on_go(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A fake iptables keeping its rules in a file: its first -I inserts and then hangs (cut
    off at the 1 s timeout), a retry inserts; each -D waits until the file ``go`` exists,
    then deletes one rule (or finds none, as iptables says it). Returns the tool, the rules
    and ``go``."""
    from tests.test_containment import script

    rules, flag, go = tmp_path / "rules", tmp_path / "hung-once", tmp_path / "go"
    rules.write_text("")
    body = (
        f"open({str(tmp_path / 'fw.log')!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        f"kept = open({str(rules)!r}).read().splitlines()\n"
        "if '-I' in sys.argv:\n"
        f"    open({str(rules)!r}, 'a').write('rule\\n')\n"
        f"    if not os.path.exists({str(flag)!r}):\n"
        f"        open({str(flag)!r}, 'w').close(); time.sleep(30)\n"
        "    sys.exit(0)\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.02)\n"
        "if not kept:\n"
        "    sys.stderr.write('iptables: Bad rule (does a matching rule exist in that chain?).')\n"
        "    sys.exit(1)\n"
        f"open({str(rules)!r}, 'w').write(''.join(r + '\\n' for r in kept[1:]))\n"
    )
    return script(tmp_path, "iptables", body), rules, go


async def _undo_states(client: Any) -> list[str | None]:
    answer = await client.get("/api/v1/actions", headers=AUTH)
    return [r["undo"] for r in (await answer.json())["data"]["recent"]]


async def _paused_lifts(client: Any) -> list[dict[str, Any]]:
    timeline = (await incident(client))["timeline"]
    return [
        e["detail"]
        for e in timeline
        if e["kind"] == "action_undone" and e["detail"].get("undo") == "paused"
    ]


async def _lift_paused(client: Any) -> bool:
    return bool(await _paused_lifts(client))


async def _pause_while_lifting(client: Any, go: Path) -> None:
    """Containment paused while a lift is under way, then the lift's held attempt let go
    (``go``): the lift stops before its next attempt (and, a moment later, has started
    none)."""
    paused = await client.post(
        "/api/v1/actions/pause", json={"reason": "hands on", "by": "alice"}, headers=AUTH
    )
    assert paused.status == 200
    await asyncio.to_thread(go.touch)
    await eventually(lambda: _lift_paused(client), "the lift stopped")
    await asyncio.sleep(0.3)


async def test_the_kill_switch_stops_a_lift_under_way_before_its_next_delete(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """Two rules went in; at expiry the lift deletes the first, and containment is paused
    meanwhile. The second -D does not start: the lift waits again (not done, not failed),
    the timeline says why and what is left; resumed, it deletes the second rule and is
    done (the switch held new lifts only, and the lift under way went on deleting)."""
    tool, rules, go = _iptables_deleting_on_go(tmp_path)
    client = await blocked_once(make_client, tmp_path, smtp, tool)
    assert rules.read_text() == "rule\nrule\n"
    log = tmp_path / "fw.log"
    clock.advance(timedelta(hours=1, minutes=1))
    await eventually(lambda: _true(_lines(log, "-D") == 1), "the first delete under way")
    await _pause_while_lifting(client, go)
    assert _lines(log, "-D") == 1
    assert rules.read_text() == "rule\n"
    assert await _undo_states(client) == ["wait"]
    (held,) = await _paused_lifts(client)
    assert "containment paused by alice: hands on" in held["reason"]
    assert held["left"] == "1 of 2 rules still to delete"
    resumed = await client.post("/api/v1/actions/resume", json={"by": "alice"}, headers=AUTH)
    assert resumed.status == 200
    await eventually(lambda: _true(rules.read_text() == ""), "the second rule deleted")
    await eventually(lambda: _true(_lines(log, "-D") == 2), "one more delete")
    await asyncio.sleep(0.3)
    assert await _undo_states(client) == ["done"]
    reasons = [
        e["detail"].get("reason", "")
        for e in (await incident(client))["timeline"]
        if e["kind"] == "containment_failed"
    ]
    assert not any("undo of block failed" in r for r in reasons), reasons


async def test_a_lift_by_hand_under_the_kill_switch_runs_all_its_deletes(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """Paused, an operator lifts the two-rule block by hand: it is a person's decision, and
    both -D run although the switch is engaged."""
    tool, rules, go = _iptables_deleting_on_go(tmp_path)
    go.touch()
    client = await blocked_once(make_client, tmp_path, smtp, tool)
    assert rules.read_text() == "rule\nrule\n"
    paused = await client.post(
        "/api/v1/actions/pause", json={"reason": "hands on", "by": "alice"}, headers=AUTH
    )
    assert paused.status == 200
    answer = await client.get("/api/v1/actions", headers=AUTH)
    (run,) = (await answer.json())["data"]["recent"]
    lifted = await client.post(
        "/api/v1/actions/lift", json={"run": run["runId"], "by": "bob"}, headers=AUTH
    )
    assert lifted.status == 202
    await eventually(lambda: _true(rules.read_text() == ""), "both rules deleted")

    async def done() -> bool:
        return await _undo_states(client) == ["done"]

    await eventually(done, "the lift recorded done")
    assert await _paused_lifts(client) == []


async def test_the_kill_switch_stops_the_retries_of_an_undo_action_under_way(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """undo: {action: maintenance-off}, with a retry. Its first attempt fails as containment
    is paused: the retry does not start, and the lift waits (not failed: the attempt it did
    not make says nothing); resumed, the undo action runs again and web-1 comes out of
    maintenance."""
    from tests.test_containment import script

    log, go = tmp_path / "log", tmp_path / "go"
    write = f"open({str(log)!r}, 'a').write"
    on = script(tmp_path, "on", f"{write}('on ' + sys.argv[1] + '\\n')")
    off = script(
        tmp_path,
        "off",
        f"if 'off' not in open({str(log)!r}).read():\n"
        f"    {write}('off failed\\n')\n"
        f"    while not os.path.exists({str(go)!r}): time.sleep(0.02)\n"
        "    sys.exit(1)\n"
        f"{write}('off ' + sys.argv[1] + '\\n')",
    )
    retry = "    retries: 1\n    retry_delay: 0s\n"
    actions = "actions:\n" + maintenance_undone_by_action(on, off, off_extra=retry)
    client = await make_client(config(tmp_path, smtp, actions, MAINTENANCE_RULE))
    fired = alert("BackendErrors", backend="web-1")
    await post(client, webhook(fired))
    await eventually(lambda: _finished(client), "maintenance on")
    await post(client, webhook(alert("BackendErrors", "resolved", **fired["labels"])))
    await asyncio.sleep(0.2)
    clock.advance(timedelta(minutes=6))
    await eventually(lambda: _true("off failed" in log.read_text()), "the undo's first attempt")
    await _pause_while_lifting(client, go)
    assert log.read_text().splitlines() == ["on web-1", "off failed"]
    assert await _undo_states(client) == ["wait"]
    resumed = await client.post("/api/v1/actions/resume", json={"by": "alice"}, headers=AUTH)
    assert resumed.status == 200
    await eventually(lambda: _true("off web-1" in log.read_text()), "lifted once resumed")
    await asyncio.sleep(0.3)
    assert log.read_text().splitlines() == ["on web-1", "off failed", "off web-1"]
    assert await _undo_states(client) == ["done"]


async def test_a_resolve_wakes_the_lift_lane_after_a_reload_took_the_rules_actions_away(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """The alert's rule named the action when it fired; a reload took it out of the rule
    (the action stays). The resolve still starts the lift's hold-down (here none), so it
    must wake the lift lane: it slept until its next look, up to 30 s later (the clock
    stands still here: for ever)."""
    log, actions = _maintenance(tmp_path)
    actions = actions.replace("undo_hold_down: 5m", "undo_hold_down: 0s")
    path = config(tmp_path, smtp, actions, MAINTENANCE_RULE)
    client = await make_client(path)
    fired = alert("BackendErrors", backend="web-1")
    await post(client, webhook(fired))
    await eventually(lambda: _true(log.exists() and "on web-1" in log.read_text()), "on")
    await eventually(lambda: _finished(client), "the run finished")
    (tmp_path / "rules.yaml").write_text(MAINTENANCE_RULE.replace("actions: [maintenance]", ""))
    assert (await client.post("/-/reload", headers=AUTH)).status == 200
    await asyncio.sleep(0.2)  # the lane has looked and sleeps until its next look
    await post(client, webhook(alert("BackendErrors", "resolved", **fired["labels"])))
    await eventually(lambda: _true("off web-1" in log.read_text()), "lifted at the resolve")

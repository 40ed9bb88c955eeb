"""Two alerts (different fingerprints) that asked for the same change: the change stays until
the last of them no longer needs it. Lifting it at the first one's resolve undid it under the
alert still firing (a gap noted at stop 14)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

from responder.clock import FakeClock
from responder.testing import SmtpTestServer
from tests.conftest import AUTH, ClientFactory
from tests.test_containment import MAINTENANCE_RULE, _true, config, script, smtp
from tests.test_containment_lifts import _maintenance
from tests.test_escalation_story import alert, eventually, incident, post, webhook

__all__ = ["smtp"]


async def _runs(client: Any, state: str, count: int) -> bool:
    """Exactly ``count`` runs are in ``state``."""
    answer = await client.get("/api/v1/actions", headers=AUTH)
    states = [str(r["state"]) for r in (await answer.json())["data"]["recent"]]
    return states.count(state) == count


async def _lines(log: Path) -> list[str]:
    return (await asyncio.to_thread(log.read_text)).splitlines()


async def _undone(client: Any, how: str) -> list[dict[str, Any]]:
    return [
        e["detail"]
        for e in (await incident(client))["timeline"]
        if e["kind"] == "action_undone" and e["detail"].get("undo") == how
    ]


async def _first_resolves_then_second(
    client: Any, clock: FakeClock, log: Path, first: dict[str, Any], second: dict[str, Any]
) -> None:
    """Both alerts fire (their runs are done or skipped). The first resolves and its
    hold-down passes while the second still fires: nothing is lifted. Then the second
    resolves and its hold-down passes: the change is lifted, once."""
    on = await _lines(log)
    await post(client, webhook(alert("BackendErrors", "resolved", **first["labels"])))
    await asyncio.sleep(0.2)
    clock.advance(timedelta(minutes=6))  # the first alert's hold-down is over
    await asyncio.sleep(1.0)
    assert await _lines(log) == on, "the change was lifted while the second alert still fires"
    answer = await client.get("/api/v1/actions", headers=AUTH)
    undo = {r["undo"] for r in (await answer.json())["data"]["recent"]}
    assert undo & {"cancelled", "held"}, undo  # the API says why nothing was lifted
    await post(client, webhook(alert("BackendErrors", "resolved", **second["labels"])))
    await asyncio.sleep(0.2)
    for _ in range(3):  # the held lift looks again each hold-down
        clock.advance(timedelta(minutes=6))
        await asyncio.sleep(0.5)
    await eventually(lambda: _true("off web-1" in log.read_text()), "lifted")
    await asyncio.sleep(0.5)
    assert await _lines(log) == [*on, "off web-1"]


async def _both_ran(client: Any, log: Path, first: dict[str, Any], second: dict[str, Any]) -> None:
    await post(client, webhook(first))
    await eventually(lambda: _runs(client, "done", 1), "the first run finished")
    await post(client, webhook(second))
    await eventually(lambda: _runs(client, "done", 2), "the second run finished")
    assert await _lines(log) == ["on web-1", "on web-1"]


async def test_a_change_two_alerts_made_is_lifted_once_after_the_last_resolves(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """Both runs made the change (cooldown 0): the first lift stands down for the second."""
    log, actions = _maintenance(tmp_path)
    client = await make_client(config(tmp_path, smtp, actions, MAINTENANCE_RULE))
    first = alert("BackendErrors", backend="web-1", instance="lb-a")
    second = alert("BackendErrors", backend="web-1", instance="lb-b")
    await _both_ran(client, log, first, second)
    await _first_resolves_then_second(client, clock, log, first, second)
    stood_down = await _undone(client, "cancelled")
    assert len(stood_down) == 1, stood_down
    assert "its own lift undoes it" in stood_down[0]["reason"]


async def test_the_same_value_from_a_default_and_from_a_label_is_the_same_change(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """One alert names backend web-1 in a label, the other takes the declared default
    web-1: the same change, lifted once after both resolved."""
    log, actions = _maintenance(tmp_path)
    actions = actions.replace(
        "{from: label, key: backend, type: identifier}",
        "{from: label, key: backend, type: identifier, default: web-1}",
    )
    client = await make_client(config(tmp_path, smtp, actions, MAINTENANCE_RULE))
    first = alert("BackendErrors", backend="web-1", instance="lb-a")
    second = alert("BackendErrors", instance="lb-b")
    await _both_ran(client, log, first, second)
    await _first_resolves_then_second(client, clock, log, first, second)


async def test_a_change_held_for_an_alert_whose_run_a_cooldown_skipped(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """The second alert's run is skipped (cooldown): it has no lift of its own, so the first
    run's lift waits for it (timeline: held, once), then lifts the change once."""
    log, actions = _maintenance(tmp_path)
    actions = actions.replace("cooldown: 0", "cooldown: 1h")
    client = await make_client(config(tmp_path, smtp, actions, MAINTENANCE_RULE))
    first = alert("BackendErrors", backend="web-1", instance="lb-a")
    second = alert("BackendErrors", backend="web-1", instance="lb-b")
    await post(client, webhook(first))
    await eventually(lambda: _runs(client, "done", 1), "the first run finished")
    await post(client, webhook(second))
    await eventually(lambda: _runs(client, "skipped", 1), "the second run skipped")
    assert await _lines(log) == ["on web-1"]
    await _first_resolves_then_second(client, clock, log, first, second)
    held = await _undone(client, "held")
    assert len(held) == 1, held
    assert "still fires" in held[0]["reason"]


async def test_changes_to_different_targets_are_lifted_each_at_its_own_resolve(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """The control: web-1 and web-2 are separate changes; web-1 is lifted at once."""
    log, actions = _maintenance(tmp_path)
    client = await make_client(config(tmp_path, smtp, actions, MAINTENANCE_RULE))
    first = alert("BackendErrors", backend="web-1", instance="lb-a")
    second = alert("BackendErrors", backend="web-2", instance="lb-b")
    await post(client, webhook(first))
    await eventually(lambda: _runs(client, "done", 1), "the first run finished")
    await post(client, webhook(second))
    await eventually(lambda: _runs(client, "done", 2), "both runs finished")
    await post(client, webhook(alert("BackendErrors", "resolved", **first["labels"])))
    await asyncio.sleep(0.2)
    clock.advance(timedelta(minutes=6))
    await eventually(lambda: _true("off web-1" in log.read_text()), "web-1 lifted")
    assert "off web-2" not in await _lines(log)


def _fails_after_the_first(tmp_path: Path, then: str) -> tuple[Path, str]:
    """The maintenance action whose 'on' works the first time, then does ``then`` (fails,
    say 'already in maintenance')."""
    log, actions = _maintenance(tmp_path)
    count = tmp_path / "count"
    on = script(
        tmp_path,
        "on2",
        f"p = {str(count)!r}\nn = int(open(p).read()) if os.path.exists(p) else 0\n"
        f"open(p, 'w').write(str(n + 1))\n"
        f"if n: {then}\n"
        f"open({str(log)!r}, 'a').write('on ' + sys.argv[1] + '\\n')",
    )
    return log, actions.replace(str(tmp_path / "on"), str(on))


async def test_a_failed_run_of_a_firing_alert_holds_the_lift(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """The second alert's run fails (the 'on' tool exits 1 the second time, say 'already in
    maintenance'): the run has no lift of its own, its alert still fires, so the first run's
    lift is held (its finished audit shows no planned lift: the change key keeps it)."""
    log, actions = _fails_after_the_first(tmp_path, "sys.exit(1)")
    client = await make_client(config(tmp_path, smtp, actions, MAINTENANCE_RULE))
    first = alert("BackendErrors", backend="web-1", instance="lb-a")
    second = alert("BackendErrors", backend="web-1", instance="lb-b")
    await post(client, webhook(first))
    await eventually(lambda: _runs(client, "done", 1), "the first run finished")
    await post(client, webhook(second))
    await eventually(lambda: _runs(client, "done", 2), "the second run finished (failed)")
    assert await _lines(log) == ["on web-1"]
    await post(client, webhook(alert("BackendErrors", "resolved", **first["labels"])))
    await asyncio.sleep(0.2)
    clock.advance(timedelta(minutes=6))  # the first alert's hold-down is over
    await asyncio.sleep(1.0)
    assert await _lines(log) == ["on web-1"], "lifted while the second alert still fires"


async def test_a_running_holder_that_then_fails_keeps_holding(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """The second alert's run is still running when the first lift is due: held. Then that
    run fails: the lift stays held while the second alert fires."""
    log, actions = _fails_after_the_first(tmp_path, "time.sleep(1.5); sys.exit(1)")
    client = await make_client(config(tmp_path, smtp, actions, MAINTENANCE_RULE))
    first = alert("BackendErrors", backend="web-1", instance="lb-a")
    second = alert("BackendErrors", backend="web-1", instance="lb-b")
    await post(client, webhook(first))
    await eventually(lambda: _runs(client, "done", 1), "the first run finished")
    await post(client, webhook(alert("BackendErrors", "resolved", **first["labels"])))
    await asyncio.sleep(0.2)
    await post(client, webhook(second))
    await eventually(lambda: _runs(client, "running", 1), "the second run is running")
    clock.advance(timedelta(minutes=6))  # the first lift is due while the second runs
    await asyncio.sleep(0.5)
    assert await _lines(log) == ["on web-1"], "held while the second run runs"
    await eventually(lambda: _runs(client, "done", 2), "the second run finished (failed)")
    clock.advance(timedelta(minutes=6))  # the held lift looks again
    await asyncio.sleep(1.0)
    assert await _lines(log) == ["on web-1"], "lifted while the second alert still fires"


async def test_an_iptables_block_is_held_for_another_alert_until_its_expiry(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """The address attacks two services: the second alert's block is skipped (cooldown), so
    the first block is the only one. Its lift after the first alert's resolve waits while
    the second alert fires, but not past the block's expiry (an attacker who keeps an alert
    firing cannot make a block permanent)."""
    from tests.test_containment import BLOCK_RULE, block_action
    from tests.test_containment import _lines as verbs

    log, actions = block_action(tmp_path, "    undo: builtin\n    undo_hold_down: 5m\n")
    actions = actions.replace("cooldown: 0", "cooldown: 1h")
    client = await make_client(config(tmp_path, smtp, actions, BLOCK_RULE))
    first = alert("SSHBruteForce", source_ip="203.0.113.7", instance="bastion")
    await post(client, webhook(first))
    await eventually(lambda: _runs(client, "done", 1), "blocked")
    await post(client, webhook(alert("SSHBruteForce", source_ip="203.0.113.7", instance="git")))
    await eventually(lambda: _runs(client, "skipped", 1), "the second block skipped")
    await post(client, webhook(alert("SSHBruteForce", "resolved", **first["labels"])))
    await asyncio.sleep(0.2)
    clock.advance(timedelta(minutes=6))
    await asyncio.sleep(0.5)
    assert verbs(log, "-D") == 0, "unblocked while the second alert still fires"
    assert len(await _undone(client, "held")) == 1
    clock.advance(timedelta(minutes=55))  # past the block's expiry
    await eventually(lambda: _true(verbs(log, "-D") == 1), "lifted at its expiry")

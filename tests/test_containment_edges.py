"""Containment edges found by the review of stop 13: an nft lift after the kernel expired
the element, escalation past the failure threshold, the kill switch during retries, the
guards' history, retention of runs with a block, an interrupted iptables block with
retries; and an `alert_resolves_within` check whose alert went stale."""

from __future__ import annotations

import asyncio
import functools
from datetime import timedelta
from pathlib import Path
from typing import Any

from responder.clock import FakeClock
from responder.runtime import RUNTIME
from responder.testing import SmtpTestServer
from tests.conftest import AUTH, ClientFactory
from tests.test_containment import (
    BLOCK_RULE,
    RESTART_RULE,
    _finished,
    _lines,
    _true,
    config,
    iptables_actions,
    restart_action,
    runs,
    script,
    smtp,  # noqa: F401  (fixture)
)
from tests.test_escalation_story import _state, alert, eventually, incident, post, webhook


def nft_action(folder: Path, extra: str = "") -> tuple[Path, str]:
    """An nft block whose fake nft logs argv; 'delete' fails like the real nft does for an
    element the kernel already removed at its timeout."""
    log = folder / "fw.log"
    body = (
        f"open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        "if 'delete' in sys.argv:\n"
        "    sys.stderr.write('Error: Could not process rule: No such file or directory')\n"
        "    sys.exit(1)"
    )
    tool = script(folder, "nft", body)
    return (
        log,
        f"""
actions:
  block:
    kind: block-address
    nft: {tool}
    duration: 1h
    params:
      address: {{from: label, key: source_ip, type: ip}}
    cooldown: 0
{extra}
""",
    )


async def test_an_nft_lift_after_the_element_expired_does_nothing_and_fails_nothing(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,  # noqa: F811
) -> None:
    """The alert fires for 2h; the nft element expired in the kernel after 1h. The lift on
    resolve should stand down (nothing is left to lift), not run and report a failed undo."""
    log, actions = nft_action(tmp_path, "    undo: builtin\n    undo_hold_down: 5m\n")
    client = await make_client(config(tmp_path, smtp, actions, BLOCK_RULE))
    fired = alert("SSHBruteForce", source_ip="203.0.113.7")
    await post(client, webhook(fired))
    await eventually(lambda: _finished(client), "blocked")
    clock.advance(timedelta(hours=2))  # the element's 1h timeout passed long ago
    await post(client, webhook(alert("SSHBruteForce", "resolved", **fired["labels"])))
    clock.advance(timedelta(minutes=6))
    await asyncio.sleep(0.5)
    timeline = (await incident(client))["timeline"]
    failed = [e for e in timeline if e["kind"] == "containment_failed"]
    assert _lines(log, "delete") == 0, (log.read_text(), failed)
    assert failed == []


async def test_a_failure_past_the_escalation_threshold_still_releases_the_held_page(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,  # noqa: F811
) -> None:
    """escalate_after_failures: 1 and the breaker not yet open: the second incident's
    containment fails too, and it escalates: its held page goes at once."""
    tool = script(tmp_path, "restart", "sys.stderr.write('nginx failed'); sys.exit(1)")
    actions = f"""
actions:
  restart:
    kind: exec
    argv: [{tool}, "{{service}}"]
    params:
      service: {{from: label, key: service, type: identifier}}
    cooldown: 0
    escalate_after_failures: 1
    breaker_failures: 5
"""
    client = await make_client(
        config(tmp_path, smtp, actions, RESTART_RULE + "    hold_page: 30m\n")
    )
    down = alert("WebDown", service="nginx")
    await post(client, webhook(down))
    await eventually(lambda: _true(len(smtp.messages) == 1), "first failure pages at once")
    await post(client, webhook(alert("WebDown", "resolved", **down["labels"])))
    clock.advance(timedelta(hours=2))
    await eventually(lambda: _true(len(smtp.messages) == 2), "the recovery notice went")
    await post(client, webhook(alert("WebDown", starts="2026-01-05T11:00:00Z", service="nginx")))
    await eventually(lambda: _finished(client, 2), "second incident's containment failed")
    await asyncio.sleep(0.3)
    clock.advance(timedelta(minutes=2))  # past email's 1-a-minute limit
    await asyncio.sleep(0.5)
    kinds = [e["kind"] for e in (await incident(client, 2))["timeline"]]
    outcome = [e["detail"].get("outcome") for e in await runs(client, 2)]
    assert "failed" in outcome
    assert "containment_failed" in kinds, kinds
    assert any("#2" in str(m.message["Subject"]) for m in smtp.messages), "page held 30m"


async def test_the_kill_switch_stops_the_retries_of_a_run_under_way(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,  # noqa: F811
) -> None:
    log = tmp_path / "attempts"
    tool = script(tmp_path, "restart", f"open({str(log)!r}, 'a').write('x'); sys.exit(1)")
    actions = f"""
actions:
  restart:
    kind: exec
    argv: [{tool}, "{{service}}"]
    params:
      service: {{from: label, key: service, type: identifier}}
    cooldown: 0
    retries: 3
    retry_delay: 1s
    breaker_failures: 10
    escalate_after_failures: 10
"""
    client = await make_client(config(tmp_path, smtp, actions, RESTART_RULE))
    await post(client, webhook(alert("WebDown", service="nginx")))
    await eventually(lambda: _true(log.exists()), "first attempt")
    paused = await client.post(
        "/api/v1/actions/pause", json={"reason": "stop everything", "by": "alice"}, headers=AUTH
    )
    assert paused.status == 200
    await asyncio.sleep(4.0)
    assert log.read_text() == "x", f"{len(log.read_text())} attempts ran, 3 after the pause"


async def test_a_run_the_kill_switch_stopped_is_recorded_stopped_not_failed(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,  # noqa: F811
) -> None:
    """The restart fails its first attempt as containment is paused: its retries are not
    made, and the run is recorded stopped by the switch (timeline, actions status,
    metric), not failed. One failure would open the breaker and escalate: neither
    happens, and the page held for containment goes to level 1 at once."""
    log, go = tmp_path / "attempts", tmp_path / "go"
    body = (
        f"open({str(log)!r}, 'a').write('x')\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.02)\n"
        "sys.stderr.write('nginx failed'); sys.exit(1)"
    )
    extra = "    retries: 2\n    retry_delay: 0s\n    breaker_failures: 1\n"
    actions = restart_action(tmp_path, body, extra)
    client = await make_client(
        config(tmp_path, smtp, actions, RESTART_RULE + "    hold_page: 30m\n")
    )
    await post(client, webhook(alert("WebDown", service="nginx")))
    await eventually(lambda: _true(log.exists()), "the first attempt")
    paused = await client.post(
        "/api/v1/actions/pause", json={"reason": "hands on", "by": "alice"}, headers=AUTH
    )
    assert paused.status == 200
    go.touch()
    await eventually(lambda: _finished(client), "the run ended")
    assert log.read_text() == "x"
    (finished,) = [e["detail"] for e in await runs(client) if e["kind"] == "action_finished"]
    assert finished["outcome"] == "stopped"
    assert finished["stopped"] == "containment paused by alice: hands on"
    assert [a["outcome"] for a in finished["attempts"]] == ["failed"]
    status = (await (await client.get("/api/v1/actions", headers=AUTH)).json())["data"]
    assert [r["outcome"] for r in status["recent"]] == ["stopped"]
    assert status["breakers"] == []
    metrics = await (await client.get("/metrics")).text()
    assert 'responder_actions_total{action="restart",outcome="stopped"} 1.0' in metrics
    await eventually(lambda: _true(len(smtp.messages) == 1), "level 1 paged, not after 30m")
    await asyncio.sleep(0.3)
    assert [m.rcpt_tos for m in smtp.messages] == [["alice@example.com"]]
    kinds = [e["kind"] for e in (await incident(client))["timeline"]]
    assert "containment_failed" not in kinds, kinds


async def test_the_guards_in_memory_history_is_pruned(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,  # noqa: F811
) -> None:
    tool = script(tmp_path, "restart", "pass")
    actions = f"""
actions:
  restart:
    kind: exec
    argv: [{tool}, "{{service}}"]
    params:
      service: {{from: label, key: service, type: identifier}}
    cooldown: 0
"""
    client = await make_client(config(tmp_path, smtp, actions, RESTART_RULE))
    engine = client.app[RUNTIME].containment
    assert engine is not None
    for n in range(1, 21):
        await post(client, webhook(alert("WebDown", service=f"svc{n}")))
        await eventually(functools.partial(_finished, client, n), f"run {n}")
        clock.advance(timedelta(days=1))  # far beyond every window (10m, cooldown, ...)
    await asyncio.sleep(0.2)
    assert len(engine.state.runs) <= 2, f"{len(engine.state.runs)} runs kept after 20 days"


async def _run_resolve_and_prune_a_year_later(client: Any, clock: FakeClock) -> tuple[int, int]:
    """SSHBruteForce fires (its action runs) and resolves; 400 days later, retention with a
    365-day cutoff runs once. Returns what it deleted."""
    fired = alert("SSHBruteForce", source_ip="203.0.113.7")
    await post(client, webhook(fired))
    await eventually(lambda: _finished(client), "the action ran")
    await post(client, webhook(alert("SSHBruteForce", "resolved", **fired["labels"])))
    await eventually(lambda: _state(client, "resolved"), "incident resolved")
    clock.advance(timedelta(days=400))  # a 1h block expired 400 days ago
    deleted: tuple[int, int] = await client.app[RUNTIME].store.prune(
        clock.now() - timedelta(days=365)
    )
    return deleted


async def test_retention_deletes_an_incident_whose_nft_block_expired(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,  # noqa: F811
) -> None:
    """An nft block without undo: builtin (the documented block-attacker) keeps an undo that
    never runs: once the block expired, retention deletes its incident like any other."""
    _log, actions = nft_action(tmp_path)
    client = await make_client(config(tmp_path, smtp, actions, BLOCK_RULE))
    deleted = await _run_resolve_and_prune_a_year_later(client, clock)
    assert deleted[0] == 1, f"prune deleted {deleted}: the incident is kept forever"


async def test_retention_deletes_an_exec_runs_incident(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,  # noqa: F811
) -> None:
    """Control for the test above: the same steps with an action that has no undo."""
    tool = script(tmp_path, "restart", "pass")
    actions = f"""
actions:
  block:
    kind: exec
    argv: [{tool}, "{{address}}"]
    params:
      address: {{from: label, key: source_ip, type: ip}}
    cooldown: 0
"""
    client = await make_client(config(tmp_path, smtp, actions, BLOCK_RULE))
    deleted = await _run_resolve_and_prune_a_year_later(client, clock)
    assert deleted[0] == 1


async def test_an_interrupted_iptables_block_with_retries_lifts_every_rule(
    tmp_path: Path,
    smtp: SmtpTestServer,  # noqa: F811
) -> None:
    """Killed during the 2nd attempt's check: two -I rules are in place; after the restart
    only one -D runs at expiry, so one DROP rule stays for ever."""
    import os
    import signal
    import time

    import aiohttp

    from tests.test_process import running
    from tests.test_process_escalation import wait_for

    log = tmp_path / "fw.log"
    calls = tmp_path / "checks"
    pidfile = tmp_path / "check.pid"
    tool = script(
        tmp_path, "iptables", f"open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')"
    )
    check = script(
        tmp_path,
        "check",
        f"open({str(calls)!r}, 'a').write('x')\n"
        f"if len(open({str(calls)!r}).read()) == 1: sys.exit(1)\n"
        f"open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)",
    )
    extra = (
        "    retries: 2\n    retry_delay: 0s\n    timeout: 90s\n"
        f"    check: {{argv: [{check}], timeout: 90s}}\n"
    )
    actions = iptables_actions(tool, extra, duration="3s")
    path = config(tmp_path, smtp, actions, BLOCK_RULE)
    async with running(path) as daemon:
        async with aiohttp.ClientSession() as session:
            body = webhook(alert("SSHBruteForce", source_ip="203.0.113.7"))
            async with session.post(
                daemon.url + "/api/v1/alertmanager", json=body, headers=AUTH
            ) as response:
                assert response.status == 200
        await wait_for(lambda: pidfile.exists(), 15, "second attempt's check running")
        daemon.process.send_signal(signal.SIGKILL)
        await daemon.process.wait()
    os.kill(int(pidfile.read_text()), signal.SIGKILL)  # the check we started
    assert _lines(log, "-I") == 2
    async with running(path):
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline and _lines(log, "-D") < 2:  # noqa: ASYNC110 - a file
            await asyncio.sleep(0.2)
    # One lift per attempt that may have inserted a rule; the real iptables stops at the
    # first "-D" that finds none (this fake does not), so at least as many lifts as rules.
    assert _lines(log, "-D") >= 2, log.read_text()


async def test_a_check_whose_alert_went_stale_is_neither_verified_nor_failed(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,  # noqa: F811
) -> None:
    """Restarting nginx failed once (one failure toward the breaker); a second alert's
    restart exits 0, its check waits for that alert to resolve within 15 minutes, and the
    alert goes stale instead (Alertmanager stopped sending it). Nobody saw it resolve: the
    check is not verified (it was, and the breaker's count of real failures started over),
    nor failed (monitoring gone quiet is no failed restart to page or open the breaker
    for): its outcome is unknown."""
    failing = tmp_path / "failing"
    failing.touch()
    actions = "alerts: {stale_after: 10m, stale_check_every: 1m}\n" + restart_action(
        tmp_path,
        f"sys.exit(1 if os.path.exists({str(failing)!r}) else 0)",
        "    breaker_failures: 2\n    check: {alert_resolves_within: 15m}",
        escalate_after_failures=5,
    )
    client = await make_client(config(tmp_path, smtp, actions, RESTART_RULE))
    first = alert("WebDown", service="nginx", instance="a")
    await post(client, webhook(first))
    await eventually(lambda: _finished(client), "the first restart failed")
    await post(client, webhook(alert("WebDown", "resolved", **first["labels"])))
    failing.unlink()
    await post(client, webhook(alert("WebDown", service="nginx", instance="b")))

    async def finished_twice() -> bool:
        kinds = [e["kind"] for e in await runs(client)]
        return kinds.count("action_finished") == 2

    await eventually(finished_twice, "the second restart exited 0 (the incident reopened)")

    async def breakers() -> list[dict[str, Any]]:
        answer = await client.get("/api/v1/actions", headers=AUTH)
        found: list[dict[str, Any]] = (await answer.json())["data"]["breakers"]
        return found

    assert [b["consecutive_failures"] for b in await breakers()] == [1]
    for _ in range(12):  # past stale_after: the sweeper marks the second alert stale
        clock.advance(timedelta(minutes=1))
        await asyncio.sleep(0.02)
    clock.advance(timedelta(minutes=4))  # past the check's 15 minutes

    async def judged() -> bool:
        doc = await incident(client)
        return "containment_unverified" in [e["kind"] for e in doc["timeline"]]

    await eventually(judged, "the check's verdict")
    kinds = [e["kind"] for e in (await incident(client))["timeline"]]
    assert "alert_stale" in kinds
    assert "containment_verified" not in kinds
    assert "containment_failed" not in kinds
    (breaker,) = await breakers()
    assert (breaker["consecutive_failures"], breaker["opened_at"]) == (1, None)
    text = await (await client.get("/metrics")).text()
    assert 'responder_actions_total{action="restart",outcome="check_unknown"} 1.0' in text

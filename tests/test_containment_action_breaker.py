"""A broken action fed a new target each time (nft failing on every call, an attacker's
next address) never fails twice on one target: its breaker across targets opens, pages once
that the action is broken, stops it for every target, and an operator resets it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from responder.testing import SmtpTestServer
from tests.conftest import AUTH, ClientFactory
from tests.test_containment import BLOCK_RULE, config, runs, script, smtp
from tests.test_escalation_story import alert, eventually, incident, post, webhook
from tests.test_process_escalation import cli

__all__ = ["smtp"]

BROKEN_NFT = "sys.stderr.write('Error: No such file or directory'); sys.exit(1)"


def _actions(tool: Path) -> str:
    return f"""
actions:
  block:
    kind: block-address
    nft: {tool}
    params:
      address: {{from: label, key: source_ip, type: ip}}
    cooldown: 0
"""


async def _kinds(client: Any, number: int) -> list[str]:
    return [e["kind"] for e in (await incident(client, number))["timeline"]]


async def _status(client: Any) -> dict[str, Any]:
    data: dict[str, Any] = (await (await client.get("/api/v1/actions", headers=AUTH)).json())[
        "data"
    ]
    return data


async def test_a_broken_action_on_many_targets_opens_its_breaker_and_pages_once(
    make_client: ClientFactory, tmp_path: Path, smtp: SmtpTestServer
) -> None:
    """Five attackers, five failed blocks (each target's own count stays at 1): the fifth
    opens the action's breaker and escalates its incident, saying the action is broken.
    The sixth attacker's block is not tried (action_breaker_open), and pages nobody more.
    `actions status` shows it; `actions reset block` closes it."""
    tool = script(tmp_path, "nft", BROKEN_NFT)
    path = config(tmp_path, smtp, _actions(tool), BLOCK_RULE + "    group_by: [source_ip]\n")
    client = await make_client(path)
    for n in range(1, 6):
        await post(client, webhook(alert("SSHBruteForce", source_ip=f"203.0.113.{n}")))

        async def failed(number: int = n) -> bool:
            events = await runs(client, number)
            return any(e["kind"] == "action_finished" for e in events)

        await eventually(failed, f"block {n} failed")
    for number in range(1, 5):
        assert "containment_failed" not in await _kinds(client, number), number
    (broken,) = [
        e["detail"]["reason"]
        for e in (await incident(client, 5))["timeline"]
        if e["kind"] == "containment_failed"
    ]
    assert "block is broken: 5 failed runs on 5 targets within 1h" in broken, broken
    assert "responder actions reset block" in broken
    assert "escalated" in await _kinds(client, 5)

    await post(client, webhook(alert("SSHBruteForce", source_ip="203.0.113.6")))

    async def skipped() -> bool:
        return "action_skipped" in [e["kind"] for e in await runs(client, 6)]

    await eventually(skipped, "the sixth block was not tried")
    (stop,) = [e for e in await runs(client, 6) if e["kind"] == "action_skipped"]
    assert stop["detail"]["guard"] == "action_breaker_open"
    assert "containment_failed" not in await _kinds(client, 6)  # paged once, by the fifth
    text = await (await client.get("/metrics")).text()
    assert 'responder_action_breaker_open{action="block"} 1.0' in text
    assert 'responder_action_guard_stops_total{action="block",guard="action_breaker_open"} 1.0' in (
        text
    )
    status = await _status(client)
    (shown,) = status["actionBreakers"]
    assert (shown["action"], shown["failures"], shown["targets"]) == ("block", 5, 5)

    url = str(client.make_url("")).rstrip("/")
    listed = await asyncio.to_thread(cli, path, url, "actions", "status")
    assert listed.returncode == 0, listed.stderr
    assert any(
        line.split()[:3] == ["block", "(every", "target)"] for line in listed.stdout.splitlines()
    ), listed.stdout
    reset = await asyncio.to_thread(cli, path, url, "actions", "reset", "block", "--by", "ops")
    assert reset.returncode == 0, reset.stderr
    assert "breaker reset: block on every target" in reset.stdout
    assert (await _status(client))["actionBreakers"] == []
    text = await (await client.get("/metrics")).text()
    assert 'responder_action_breaker_open{action="block"} 0.0' in text
    again = await client.post(
        "/api/v1/actions/reset", json={"action": "block", "by": "ops"}, headers=AUTH
    )
    assert again.status == 404  # nothing open: a second reset is no reset

"""A config changed while the daemon was stopped (an edit, then a restart instead of a
reload) is reconciled at the next start as a reload would have been: the store keeps the
layout of the policies that open incidents were armed under (schema 10)."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from responder import runtime as runtime_module
from responder.clock import FakeClock
from responder.runtime import RUNTIME
from responder.store import SQLiteStore, StoreError
from responder.testing import FakeTwilio, SmtpTestServer
from tests.conftest import AUTH, ClientFactory, write_config
from tests.test_containment import RESTART_RULE, _finished, restart_action
from tests.test_containment import config as containment_config
from tests.test_escalation_story import (
    _count,
    alert,
    channels,
    eventually,
    incident,
    post,
    settle,
    smtp,  # noqa: F401 - fixture
    twilio,  # noqa: F401 - fixture
    webhook,
)
from tests.test_reload_policies import RULES_OPS, STANDARD, _contacts, config

OPS_THREE = """
  ops:
    levels:
      - targets: [alice]
      - after: 15m
        targets: [bob]
      - after: 30m
        targets: [carol]
"""
OPS_WITHOUT_BOB = """
  ops:
    levels:
      - targets: [alice]
      - after: 30m
        targets: [carol]
"""
OPS_BOB_LATE = """
  ops:
    levels:
      - targets: [alice]
      - after: 30m
        targets: [bob]
"""
OPS_BOB_EARLY = """
  ops:
    levels:
      - targets: [alice]
      - after: 10m
        targets: [bob]
"""
OPS_CAROL_FIRST = """
  ops:
    levels:
      - targets: [carol]
      - after: 1m
        targets: [alice]
      - after: 15m
        targets: [bob]
"""


async def _paged_to_bob(make_client: ClientFactory, path: Path, clock: FakeClock) -> None:
    client = await make_client(path)
    await post(client, webhook(alert("DiskFull", instance="a")))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "alice"), "alice")
    for _ in range(16):
        await settle(client, clock, timedelta(minutes=1))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "bob"), "bob at 15m")
    await client.close()


async def _nobody_paged_again(client: Any, clock: FakeClock) -> None:
    """Twenty minutes on: alice and bob were paged once each, and nobody else."""
    for _ in range(20):
        await settle(client, clock, timedelta(minutes=1))
    contacts = [contact for _, contact, _ in await _contacts(client)]
    assert sorted(contacts) == ["alice", "bob"], contacts


async def test_a_level_removed_across_a_restart_does_not_make_the_next_one_done(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,  # noqa: F811
    twilio: FakeTwilio,  # noqa: F811
) -> None:
    """Bob's level 2 was done; the restart's config drops it, so carol is level 2 now. She
    is still paged at 30m: the step done was bob's, not hers."""
    extra = channels(tmp_path, smtp, twilio)
    path = write_config(tmp_path, config(OPS_THREE + STANDARD) + extra, rules=RULES_OPS)
    await _paged_to_bob(make_client, path, clock)
    write_config(tmp_path, config(OPS_WITHOUT_BOB + STANDARD) + extra, rules=RULES_OPS)
    client = await make_client(path)
    for _ in range(16):
        await settle(client, clock, timedelta(minutes=1))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "carol"), "carol at 30m")
    contacts = [contact for _, contact, _ in await _contacts(client)]
    assert sorted(contacts) == ["alice", "bob", "carol"], contacts


async def test_levels_reordered_across_a_restart_page_nobody_again(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,  # noqa: F811
    twilio: FakeTwilio,  # noqa: F811
) -> None:
    """Alice (level 1) and bob (level 2) were paged; the restart's config puts a new carol
    level first. Alice and bob are not paged again (their steps are renamed L2 and L3),
    and carol's level, earlier than the levels reached, is moot as after a reload."""
    extra = channels(tmp_path, smtp, twilio)
    path = write_config(tmp_path, config(OPS_THREE + STANDARD) + extra, rules=RULES_OPS)
    await _paged_to_bob(make_client, path, clock)
    write_config(tmp_path, config(OPS_CAROL_FIRST + STANDARD) + extra, rules=RULES_OPS)
    await _nobody_paged_again(await make_client(path), clock)


async def test_a_level_moved_earlier_while_stopped_pages_at_its_new_time(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,  # noqa: F811
    twilio: FakeTwilio,  # noqa: F811
) -> None:
    """Bob's level moves from 30m to 10m while the daemon is stopped (the same level: only
    its ``after`` changed). At the start, past 10m, he is paged at once, not at 30m."""
    extra = channels(tmp_path, smtp, twilio)
    path = write_config(tmp_path, config(OPS_BOB_LATE + STANDARD) + extra, rules=RULES_OPS)
    client = await make_client(path)
    await post(client, webhook(alert("DiskFull", instance="a")))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "alice"), "alice")
    stored = await client.app[RUNTIME].store.escalation_layout()
    assert stored is not None
    assert '"ops"' in stored
    await client.close()
    write_config(tmp_path, config(OPS_BOB_EARLY + STANDARD) + extra, rules=RULES_OPS)
    clock.advance(timedelta(minutes=12))
    client = await make_client(path)
    await settle(client, clock, timedelta(seconds=10))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "bob"), "bob at once")


async def test_a_restart_during_a_hold_keeps_the_page_held(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,  # noqa: F811
) -> None:
    """hold_page 5m and containment worked; the daemon restarts a minute in (same config)
    and the alert resolves at 2m: nobody is woken, as without the restart. The start's
    re-arm released the hold and paged (second review of stop 14)."""
    path = containment_config(
        tmp_path, smtp, restart_action(tmp_path, "pass"), RESTART_RULE + "    hold_page: 5m\n"
    )
    client = await make_client(path)
    down = alert("WebDown", service="nginx")
    await post(client, webhook(down))
    for _ in range(200):
        if await _finished(client):
            break
        await asyncio.sleep(0.02)
    assert await _finished(client)
    await client.close()
    clock.advance(timedelta(minutes=1))
    client = await make_client(path)
    await asyncio.sleep(0.5)  # the engine and the outbox run
    clock.advance(timedelta(minutes=1))
    await post(client, webhook(alert("WebDown", "resolved", **down["labels"])))
    clock.advance(timedelta(minutes=10))
    await asyncio.sleep(0.3)
    assert (await incident(client))["state"] == "resolved"
    assert smtp.messages == [], [m.rcpt_tos for m in smtp.messages]


async def test_a_start_whose_re_arm_the_store_refuses_does_not_start(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,  # noqa: F811
    twilio: FakeTwilio,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The levels moved while the daemon was stopped and the store refuses the start's
    re-arm: the start fails (systemd starts it again) instead of escalating with the new
    levels on the old steps, which paged bob twice (second review of stop 14). The next
    start re-arms and pages nobody again."""
    extra = channels(tmp_path, smtp, twilio)
    path = write_config(tmp_path, config(OPS_THREE + STANDARD) + extra, rules=RULES_OPS)
    await _paged_to_bob(make_client, path, clock)
    write_config(tmp_path, config(OPS_CAROL_FIRST + STANDARD) + extra, rules=RULES_OPS)
    real = SQLiteStore.rearm_open_incidents

    async def refused(self: SQLiteStore, *args: Any, **kwargs: Any) -> int:
        raise StoreError("database is locked")

    monkeypatch.setattr(SQLiteStore, "rearm_open_incidents", refused)
    with pytest.raises(StoreError, match="could not be re-armed at start"):
        await make_client(path)
    monkeypatch.setattr(SQLiteStore, "rearm_open_incidents", real)
    await _nobody_paged_again(await make_client(path), clock)


async def test_no_escalation_while_a_reload_s_re_arm_waits_for_the_store(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,  # noqa: F811
    twilio: FakeTwilio,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reload puts carol's level first and the store refuses its re-arm once: until the
    retry writes it, the engine decides nothing (the steps still name the old levels), so
    nobody is paged again."""
    monkeypatch.setattr(runtime_module, "REARM_RETRY_S", 1.5)
    extra = channels(tmp_path, smtp, twilio)
    path = write_config(tmp_path, config(OPS_THREE + STANDARD) + extra, rules=RULES_OPS)
    client = await make_client(path)
    await post(client, webhook(alert("DiskFull", instance="a")))
    for _ in range(16):
        await settle(client, clock, timedelta(minutes=1))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "bob"), "bob at 15m")
    runtime = client.app[RUNTIME]
    real = runtime.store.rearm_open_incidents
    calls: list[object] = []

    async def refused_once(*args: Any, **kwargs: Any) -> int:
        calls.append(args)
        if len(calls) == 1:
            raise StoreError("database is locked")
        count: int = await real(*args, **kwargs)
        return count

    monkeypatch.setattr(runtime.store, "rearm_open_incidents", refused_once)
    write_config(tmp_path, config(OPS_CAROL_FIRST + STANDARD) + extra, rules=RULES_OPS)
    assert (await client.post("/-/reload", headers=AUTH)).status == 503  # in force once retried
    # Past the old level 3's time (30m) before the retry: nothing may be decided yet.
    await settle(client, clock, timedelta(minutes=20))
    await asyncio.sleep(2.0)  # past the retry
    for _ in range(5):
        await settle(client, clock, timedelta(minutes=1))
    assert len(calls) == 2
    contacts = [contact for _, contact, _ in await _contacts(client)]
    assert sorted(contacts) == ["alice", "bob"], contacts


async def _held_incident(
    make_client: ClientFactory,
    tmp_path: Path,
    smtp: SmtpTestServer,  # noqa: F811
) -> tuple[Path, Any, dict[str, Any]]:
    """An incident whose first page a rule's hold_page (5m) holds; containment worked."""
    path = containment_config(
        tmp_path, smtp, restart_action(tmp_path, "pass"), RESTART_RULE + "    hold_page: 5m\n"
    )
    client = await make_client(path)
    down = alert("WebDown", service="nginx")
    await post(client, webhook(down))
    for _ in range(200):
        if await _finished(client):
            break
        await asyncio.sleep(0.02)
    assert await _finished(client)
    return path, client, down


def _rename_default(path: Path) -> None:
    path.write_text(
        path.read_text()
        .replace("  standard:\n", "  std:\n")
        .replace("default_policy: standard", "default_policy: std")
    )


async def _resolved_with_nobody_woken(
    client: Any,
    clock: FakeClock,
    down: dict[str, Any],
    smtp: SmtpTestServer,  # noqa: F811
) -> None:
    clock.advance(timedelta(minutes=1))
    await post(client, webhook(alert("WebDown", "resolved", **down["labels"])))
    clock.advance(timedelta(minutes=10))
    await asyncio.sleep(0.3)
    assert (await incident(client))["state"] == "resolved"
    assert smtp.messages == [], [m.rcpt_tos for m in smtp.messages]


@pytest.mark.parametrize("how", ["restart", "reload"])
async def test_a_renamed_default_policy_keeps_a_held_page_held(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,  # noqa: F811
    how: str,
) -> None:
    """The default policy renamed (same levels) during the hold, across a restart or by a
    reload: the incident moves to the new name and its first page stays held (third
    review of stop 14: policy_gone paged at once)."""
    path, client, down = await _held_incident(make_client, tmp_path, smtp)
    clock.advance(timedelta(minutes=1))
    _rename_default(path)
    if how == "restart":
        await client.close()
        client = await make_client(path)
    else:
        assert await client.app[RUNTIME].reload() is None
    await asyncio.sleep(0.5)
    await _resolved_with_nobody_woken(client, clock, down, smtp)


async def test_a_reopened_incident_has_no_hold_of_its_first_episode(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,  # noqa: F811
) -> None:
    """Resolved at 1m, reopened at 2m (a new startsAt: alice paged at once); at 3m a reload
    moves bob's level to 1m, so he is due now. The first episode's hold (until 5m) held
    him back."""
    path, client, down = await _held_incident(make_client, tmp_path, smtp)
    clock.advance(timedelta(minutes=1))
    await post(client, webhook(alert("WebDown", "resolved", **down["labels"])))
    await asyncio.sleep(0.2)
    clock.advance(timedelta(minutes=1))
    await post(client, webhook(alert("WebDown", starts="2026-01-05T09:30:00Z", service="nginx")))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "alice"), "alice")
    clock.advance(timedelta(minutes=1))
    path.write_text(path.read_text().replace("after: 15m", "after: 1m"))
    assert await client.app[RUNTIME].reload() is None
    clock.advance(timedelta(seconds=5))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "bob"), "bob at once")


async def test_a_start_says_it_re_armed_open_incidents_only_when_some_are_open(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    smtp: SmtpTestServer,  # noqa: F811
    twilio: FakeTwilio,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every start re-arms the open incidents; with none open, the log said "re-armed for
    the new policies" with incidents=0 at each start all the same."""
    caplog.set_level(logging.INFO, logger="responder")
    extra = channels(tmp_path, smtp, twilio)
    path = write_config(tmp_path, config(OPS_BOB_LATE + STANDARD) + extra, rules=RULES_OPS)
    client = await make_client(path)
    assert "re-armed" not in caplog.text
    await post(client, webhook(alert("DiskFull", instance="a")))
    await eventually(lambda: _count(client, lambda p: p["contact"] == "alice"), "alice")
    await client.close()
    await make_client(path)
    (record,) = [r for r in caplog.records if "re-armed" in r.getMessage()]
    assert record.fields == {"incidents": 1}  # type: ignore[attr-defined]

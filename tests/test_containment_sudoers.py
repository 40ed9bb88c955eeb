"""The sudoers example lets exactly the block commands responder runs through sudo (and the
lifts of blocks made before rules carried their run's id); a lift that could not run is a
failure (seventh review of stop 14)."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from responder.clock import FakeClock
from responder.contain import builtins
from responder.contain.catalog import BlockAddressSpec
from responder.testing import SmtpTestServer
from tests.conftest import AUTH, ClientFactory
from tests.test_containment import _true, blocked_once, script, smtp
from tests.test_escalation_story import eventually, incident

__all__ = ["smtp"]

ROOT = Path(__file__).resolve().parent.parent


def _sudoers_patterns() -> dict[str, list[str]]:
    """Cmnd_Alias RESPONDER_IPTABLES: command -> its argument regexes (sudoers '\\:' -> ':')."""
    text = (ROOT / "systemd" / "sudoers.d-responder.example").read_text()
    body = text.split("Cmnd_Alias RESPONDER_IPTABLES =", 1)[1].split("\n\n", 1)[0]
    found: dict[str, list[str]] = {}
    for item in body.replace("\\\n", " ").split(", "):
        cmd, _, args = item.strip().partition(" ")
        found.setdefault(cmd, []).append(args.strip().replace("\\:", ":"))
    return found


def _sudo_allows(argv: tuple[str, ...]) -> bool:
    """As sudo >= 1.9.10 does: the arguments joined by spaces, matched by ^...$ regex."""
    assert argv[:2] == ("/usr/bin/sudo", "-n")
    cmd, args = argv[2], " ".join(argv[3:])
    return any(re.search(p, args) for p in _sudoers_patterns().get(cmd, []))


def _spec() -> BlockAddressSpec:
    return BlockAddressSpec(
        backend="iptables", duration=timedelta(hours=1), nft="/usr/sbin/nft",
        table="responder", set4="blocklist4", set6="blocklist6",
        iptables="/usr/sbin/iptables", ip6tables="/usr/sbin/ip6tables", chain="INPUT",
        sudo="/usr/bin/sudo", never_block=(), min_prefix4=24, min_prefix6=48,
    )  # fmt: skip


@pytest.mark.parametrize("address", ["198.51.100.9", "203.0.113.0/24", "2001:db8::1"])
def test_sudoers_example_allows_the_generated_block_and_lift(address: str) -> None:
    """The block and lift commands responder generates match the example."""
    block, lift = builtins.block_argv(_spec(), address, uuid.uuid4().hex)
    assert _sudo_allows(block)
    assert _sudo_allows(lift)


def test_sudoers_example_still_allows_the_lift_of_a_block_recorded_before_the_upgrade() -> None:
    """A block inserted by the previous release (no comment) has its lift recorded in the
    store with the old argv; after the upgrade (sudoers replaced by the new example) that
    lift must still be allowed, or the rule stays and the lift fails."""
    old_lift = (
        "/usr/bin/sudo",
        "-n",
        "/usr/sbin/iptables",
        "-w",
        "-D",
        "INPUT",
        "-s",
        "198.51.100.9",
        "-j",
        "DROP",
    )  # fmt: skip  (what block_argv of 86badc6 returned, stored in action_runs.undo)
    assert _sudo_allows(old_lift), "the pending lift of a pre-upgrade block is refused by sudo"


def _iptables_inserting_once_then_failing(tmp_path: Path, on_delete: str) -> tuple[Path, Path]:
    """A fake iptables (and its log): the first -I inserts the rule and hangs until it is
    killed on timeout, a retry fails (so no attempt is known to have run: a 'maybe' lift);
    -D runs ``on_delete``. Returns the tool and the file of rules in place."""
    rules = tmp_path / "rules"
    rules.write_text("")
    flag = tmp_path / "once"
    log = tmp_path / "fw.log"
    tool = script(
        tmp_path,
        "iptables",
        f"open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        "if '-I' in sys.argv:\n"
        f"    if os.path.exists({str(flag)!r}): sys.exit(1)\n"
        f"    open({str(flag)!r}, 'w').close()\n"
        f"    open({str(rules)!r}, 'a').write('rule\\n'); time.sleep(30)\n"
        "else:\n"
        f"{on_delete}\n",
    )
    return tool, rules


def _sudo(tmp_path: Path, refuses: str) -> str:
    """The ``sudo:`` key of a block action, naming a fake sudo that runs the command (as the
    real one does when sudoers allows it) unless ``refuses`` (Python over ``sys.argv``): then
    it says why and exits 1 without running it, as the real one does for a password it may
    not ask for."""
    sudo = script(
        tmp_path,
        "sudo",
        f"if {refuses}:\n"
        "    sys.stderr.write('sudo: a password is required\\n')\n"
        "    sys.exit(1)\n"
        "os.execv(sys.argv[2], sys.argv[2:])",
    )
    return f"    sudo: {sudo}\n"


async def _lift_failed(client: Any) -> None:
    """The only run's lift is recorded failed, and its incident hears of it."""
    status = (await (await client.get("/api/v1/actions", headers=AUTH)).json())["data"]
    assert [r["undo"] for r in status["recent"]] == ["failed"], status["recent"]
    reasons = [
        e["detail"].get("reason", "")
        for e in (await incident(client))["timeline"]
        if e["kind"] == "containment_failed"
    ]
    assert any("undo of block failed" in r for r in reasons), reasons


async def test_a_maybe_lift_that_cannot_run_is_a_failure_not_nothing(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """Attempt 1 inserted the rule but was killed on timeout before it exited, attempt 2
    failed: 'maybe' is set. At expiry, -D cannot take the xtables lock (exit 4): the rule
    is still there, and that must be a failed undo (paged), not 'nothing'."""
    tool, rules = _iptables_inserting_once_then_failing(
        tmp_path,
        "    sys.stderr.write('Another app is currently holding the xtables lock.\\n')\n"
        "    sys.exit(4)",
    )
    client = await blocked_once(make_client, tmp_path, smtp, tool)
    assert rules.read_text() == "rule\n"  # the block is in place
    clock.advance(timedelta(hours=1, minutes=1))
    log = tmp_path / "fw.log"
    await eventually(lambda: _true(" -D " in f" {log.read_text()} "), "the lift ran")
    await asyncio.sleep(0.5)
    assert rules.read_text() == "rule\n"  # still blocked
    await _lift_failed(client)


async def test_a_maybe_lift_refused_by_sudo_is_a_failure_not_nothing(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """The same 'maybe' lift, through sudo: sudo refuses the -D (exit 1, as iptables' "no
    such rule" is). iptables never ran, the rule is in place: a failed undo that pages,
    not 'nothing' (sudo's exit 1 was read as iptables finding no rule)."""
    tool, rules = _iptables_inserting_once_then_failing(
        tmp_path, f"    open({str(tmp_path / 'rules')!r}, 'w').write('')"
    )
    sudo = _sudo(tmp_path, "'-D' in sys.argv")
    client = await blocked_once(make_client, tmp_path, smtp, tool, sudo)
    assert rules.read_text() == "rule\n"
    clock.advance(timedelta(hours=1, minutes=1))
    await eventually(lambda: _lift_ended(client), "the lift ran")
    assert rules.read_text() == "rule\n"  # still blocked
    await _lift_failed(client)


async def test_a_second_delete_refused_by_sudo_is_a_failed_lift(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock, smtp: SmtpTestServer
) -> None:
    """Two rules went in (the first insert timed out after it ran, the retry worked); the
    first -D goes through sudo, the second is refused by it (exit 1). A rule is still in
    place: a failed lift that pages (exit 1 was read as iptables finding none left)."""
    rules = tmp_path / "rules"
    rules.write_text("")
    flag = tmp_path / "once"
    tool = script(
        tmp_path,
        "iptables",
        f"kept = open({str(rules)!r}).read().splitlines()\n"
        "if '-I' in sys.argv:\n"
        f"    open({str(rules)!r}, 'a').write('rule\\n')\n"
        f"    if not os.path.exists({str(flag)!r}):\n"
        f"        open({str(flag)!r}, 'w').close(); time.sleep(30)\n"
        "else:\n"
        f"    open({str(rules)!r}, 'w').write(''.join(r + '\\n' for r in kept[1:]))\n",
    )
    deletes = tmp_path / "deletes"
    refuses = (
        f"'-D' in sys.argv and (open({str(deletes)!r}, 'a').write('x') or True) "
        f"and len(open({str(deletes)!r}).read()) == 2"
    )
    client = await blocked_once(make_client, tmp_path, smtp, tool, _sudo(tmp_path, refuses))
    assert rules.read_text() == "rule\nrule\n"
    clock.advance(timedelta(hours=1, minutes=1))
    await eventually(lambda: _lift_ended(client), "the lift ran")
    assert rules.read_text() == "rule\n"  # one rule still blocks the address
    await _lift_failed(client)


async def _lift_ended(client: Any) -> bool:
    status = (await (await client.get("/api/v1/actions", headers=AUTH)).json())["data"]
    return all(r["undo"] not in (None, "wait") for r in status["recent"])

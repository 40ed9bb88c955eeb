"""Built-ins against recording scripts: systemd restart, address blocks, evidence capture."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import ipaddress
import json
import os
import socket
import stat
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import psutil
import pytest

from responder.clock import FakeClock
from responder.contain.builtins import address_refusal, local_addresses
from responder.contain.catalog import ActionCatalog, BlockAddressSpec, parse_actions
from responder.contain.outcome import Outcome
from responder.contain.params import ParamRejected
from responder.contain.runner import ActionRunner, PreparedRun, RunContext
from responder.yamlfile import load_text

CONTEXT = RunContext("17", "SSHBruteForce", "f00d", "P0")

RECORDER = """
import json, os, pathlib, sys
here = pathlib.Path(__file__).parent
with open(here / "calls.jsonl", "a") as log:
    log.write(json.dumps(sys.argv) + "\\n")
if len(sys.argv) > 1 and sys.argv[1] == "show":
    print((here / "result").read_text() if (here / "result").exists() else "Result=success")
    sys.exit(0)
if sys.argv[1:2] == ["-u"]:
    print("2026-01-05T08:59:00+0000 host sshd[1]: Failed password for root")
    sys.exit(0)
rc = here / "rc"
sys.exit(int(rc.read_text()) if rc.exists() else 0)
"""


def recorder(tmp_path: Path, name: str) -> Path:
    """A stand-in for systemctl/nft/iptables/journalctl that logs its argv next to itself."""
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\n{RECORDER}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def calls(tmp_path: Path) -> list[list[str]]:
    log = tmp_path / "calls.jsonl"
    if not log.exists():
        return []
    return [json.loads(line)[1:] for line in log.read_text().splitlines()]


def catalog(text: str, tmp_path: Path) -> ActionCatalog:
    return parse_actions(load_text(text, "actions.yaml"), tmp_path)


@pytest.fixture
async def runner(tmp_path: Path) -> AsyncIterator[ActionRunner]:
    r = ActionRunner(FakeClock(), tmp_path / "state" / "evidence", kill_grace_s=0.3)
    yield r
    await r.close()


def prepare(runner: ActionRunner, cat: ActionCatalog, name: str, **labels: str) -> PreparedRun:
    result = runner.prepare(cat[name], labels, {}, CONTEXT)
    assert isinstance(result, PreparedRun), result
    return result


def restart_catalog(tmp_path: Path) -> ActionCatalog:
    systemctl = recorder(tmp_path, "systemctl")
    return catalog(
        f"""
restart-service:
  kind: systemd-restart
  systemctl: {systemctl}
  params: {{unit: {{from: label, key: service, type: systemd_unit}}}}
  units: [nginx, php-fpm.service]
  retries: 2
  retry_delay: 0
""",
        tmp_path,
    )


async def test_systemd_restart_runs_exactly_the_allowlisted_unit(
    tmp_path: Path, runner: ActionRunner
) -> None:
    """service=nginx -> systemctl restart --no-ask-password nginx.service, and nothing else."""
    cat = restart_catalog(tmp_path)
    result = await runner.execute(prepare(runner, cat, "restart-service", service="nginx"))
    assert result.outcome is Outcome.OK
    assert calls(tmp_path) == [["restart", "--no-ask-password", "nginx.service"]]
    assert result.target == "unit=nginx.service"


async def test_a_unit_outside_the_allowlist_is_rejected(
    tmp_path: Path, runner: ActionRunner
) -> None:
    """sshd is a valid unit name but not on the list: rejected before systemctl is called."""
    cat = restart_catalog(tmp_path)
    result = runner.prepare(cat["restart-service"], {"service": "sshd"}, {}, CONTEXT)
    assert isinstance(result, ParamRejected)
    assert "allowlist" in result.reason
    assert result.source == "label service"
    assert calls(tmp_path) == []


async def test_restart_failure_is_retried_and_reports_the_result(
    tmp_path: Path, runner: ActionRunner
) -> None:
    """Exit 1 with Result=exit-code: three attempts, each followed by `systemctl show`."""
    cat = restart_catalog(tmp_path)
    (tmp_path / "rc").write_text("1")
    (tmp_path / "result").write_text("Result=exit-code")
    result = await runner.execute(prepare(runner, cat, "restart-service", service="php-fpm"))
    assert result.outcome is Outcome.FAILED
    assert len(result.attempts) == 3
    assert result.attempts[0].detail == "Result=exit-code"
    assert calls(tmp_path)[:2] == [
        ["restart", "--no-ask-password", "php-fpm.service"],
        ["show", "-p", "Result", "php-fpm.service"],
    ]


async def test_start_limit_hit_is_its_own_outcome_and_not_retried(
    tmp_path: Path, runner: ActionRunner
) -> None:
    """systemd's start limit: retrying cannot help, so one attempt and start_limit_hit."""
    cat = restart_catalog(tmp_path)
    (tmp_path / "rc").write_text("1")
    (tmp_path / "result").write_text("Result=start-limit-hit\n")
    result = await runner.execute(prepare(runner, cat, "restart-service", service="nginx"))
    assert result.outcome is Outcome.START_LIMIT_HIT
    assert len(result.attempts) == 1
    assert result.to_audit()["attempts"][0]["detail"] == "Result=start-limit-hit"


def block_catalog(tmp_path: Path, backend: str = "nft", extra: str = "") -> ActionCatalog:
    nft = recorder(tmp_path, "nft")
    iptables = recorder(tmp_path, "iptables")
    return catalog(
        f"""
block-attacker:
  kind: block-address
  backend: {backend}
  nft: {nft}
  iptables: {iptables}
  ip6tables: {iptables}
  table: responder
  set: blocklist4
  set6: blocklist6
  duration: 1h
  never_block: [192.0.2.0/24]
  params:
    address: {{from: label, key: source_ip, type: ip}}
  undo: builtin
  undo_hold_down: 10m
{extra}""",
        tmp_path,
    )


async def test_block_brute_force_source_ip_for_an_hour_with_nft(
    tmp_path: Path, runner: ActionRunner
) -> None:
    """source_ip=203.0.113.7 -> one nft element with a 3600 s timeout, undo argv recorded."""
    cat = block_catalog(tmp_path)
    result = await runner.execute(prepare(runner, cat, "block-attacker", source_ip="203.0.113.7"))
    assert result.outcome is Outcome.OK
    assert calls(tmp_path) == [
        ["add", "element", "inet", "responder", "blocklist4", "{ 203.0.113.7 timeout 3600s }"]
    ]
    assert result.expires_at == result.finished_at + timedelta(hours=1)
    assert result.undo is not None
    assert result.undo.request is not None
    assert result.undo.on_resolve
    assert result.undo.hold_down == timedelta(minutes=10)
    assert result.undo.at is None  # nft expires the element itself
    assert result.undo.request.argv[1:] == (
        "delete", "element", "inet", "responder", "blocklist4", "{ 203.0.113.7 }",
    )  # fmt: skip
    v6 = await runner.execute(prepare(runner, cat, "block-attacker", source_ip="2001:DB8::7"))
    assert v6.outcome is Outcome.OK
    assert calls(tmp_path)[-1][4:] == ["blocklist6", "{ 2001:db8::7 timeout 3600s }"]


async def test_block_with_iptables_has_an_undo_due_at_expiry(
    tmp_path: Path, runner: ActionRunner
) -> None:
    """iptables has no timeouts: the undo (-D) is due at expiry, with sudo -n in front."""
    sudo = recorder(tmp_path, "sudo")
    cat = block_catalog(tmp_path, "iptables", f"  sudo: {sudo}\n  chain: RESPONDER\n")
    prepared = prepare(runner, cat, "block-attacker", source_ip="198.51.100.9")
    # Recorded before the run starts: an interrupted run is still lifted at its expiry.
    assert prepared.to_audit()["undo"]["at"] is not None
    result = await runner.execute(prepared)
    assert result.outcome is Outcome.OK
    iptables = str(tmp_path / "iptables")
    # The rule carries its run's id: a lift deletes its own rule, not another run's.
    tag = ["-m", "comment", "--comment", f"responder:{prepared.run_id}"]
    assert calls(tmp_path) == [
        ["-n", iptables, "-w", "-I", "RESPONDER", "-s", "198.51.100.9", *tag, "-j", "DROP"]
    ]
    assert result.undo is not None
    assert result.undo.request is not None
    assert result.undo.at == result.expires_at
    assert list(result.undo.request.argv[1:]) == [
        "-n", iptables, "-w", "-D", "RESPONDER", "-s", "198.51.100.9", *tag, "-j", "DROP",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "0.0.0.0",  # noqa: S104 - an address to refuse, nothing binds to it
        "::1",
        "224.0.0.1",
        "192.0.2.55",
        "fe80::1",
        "10.0.0.1; reboot",
        "::ffff:127.0.0.1",  # loopback, IPv4-mapped: not loopback to Python 3.11's checks
        "::ffff:192.0.2.55",  # never_block, IPv4-mapped
    ],
)
async def test_addresses_that_must_never_be_blocked(
    tmp_path: Path, runner: ActionRunner, address: str
) -> None:
    """Loopback, unspecified, multicast, link-local and never_block networks are refused."""
    cat = block_catalog(tmp_path)
    result = runner.prepare(cat["block-attacker"], {"source_ip": address}, {}, CONTEXT)
    assert isinstance(result, ParamRejected), address
    assert calls(tmp_path) == []


@pytest.mark.parametrize("address", ["203.0.113.7", "2001:db8::5"])
async def test_the_hosts_own_addresses_are_never_blocked(tmp_path: Path, address: str) -> None:
    """An alert naming this host's own address (or a network holding it) would cut the host
    off itself: refused without being listed in never_block."""
    own = frozenset({ipaddress.ip_address("203.0.113.7"), ipaddress.ip_address("2001:db8::5")})
    runner = ActionRunner(FakeClock(), tmp_path / "evidence", own_addresses=lambda: own)
    try:
        result = runner.prepare(
            block_catalog(tmp_path)["block-attacker"], {"source_ip": address}, {}, CONTEXT
        )
        assert isinstance(result, ParamRejected)
        assert "an address of this host" in str(result)
        other = runner.prepare(
            block_catalog(tmp_path)["block-attacker"], {"source_ip": "203.0.113.8"}, {}, CONTEXT
        )
        assert isinstance(other, PreparedRun)
    finally:
        await runner.close()
    spec = block_catalog(tmp_path)["block-attacker"].spec
    assert isinstance(spec, BlockAddressSpec)
    assert "203.0.113.7, an address of this host" in str(
        address_refusal(spec, "203.0.113.0/24", own)  # a network holding one
    )


@pytest.mark.parametrize(
    "network",
    ["169.0.0.0/8", "120.0.0.0/5", "224.0.0.0/3", "fe00::/7", "::fffe:0:0/95", "::/120"],
)
def test_a_network_holding_special_addresses_is_refused_whatever_min_prefix(
    tmp_path: Path, network: str
) -> None:
    """With min_prefix 0 an operator allows wide blocks, not one that holds the cloud's
    metadata address (169.254.169.254), loopback, multicast or the IPv4-mapped range
    (containment review, stop 16: only the first address was looked at)."""
    spec = block_catalog(tmp_path)["block-attacker"].spec
    assert isinstance(spec, BlockAddressSpec)
    wide = replace(spec, min_prefix4=0, min_prefix6=0)
    assert address_refusal(wide, network) is not None
    assert address_refusal(wide, "198.51.0.0/16") is None


def test_local_addresses_are_the_interfaces_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every IPv4 and IPv6 address of every interface, link-local ones without their scope;
    hardware addresses are not IP addresses."""
    nic = collections.namedtuple("nic", "family address netmask broadcast ptp")
    fake = {
        "lo": [nic(socket.AF_INET, "127.0.0.1", None, None, None)],
        "eth0": [
            nic(socket.AF_INET, "203.0.113.7", "255.255.255.0", None, None),
            nic(socket.AF_INET, "203.0.113.8", "255.255.255.0", None, None),  # secondary
            nic(socket.AF_INET6, "2001:db8::5", None, None, None),
            nic(socket.AF_INET6, "fe80::1%eth0", None, None, None),
            nic(psutil.AF_LINK, "02:fc:00:00:00:01", None, None, None),
        ],
    }
    monkeypatch.setattr(psutil, "net_if_addrs", lambda: fake)
    own = local_addresses()
    assert own is not None
    assert own == {
        ipaddress.ip_address(a)
        for a in ("127.0.0.1", "203.0.113.7", "203.0.113.8", "2001:db8::5", "fe80::1")
    }


def test_this_hosts_addresses_include_loopback() -> None:
    own = local_addresses()
    assert own is not None
    assert ipaddress.ip_address("127.0.0.1") in own


def test_no_block_when_the_hosts_addresses_cannot_be_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Fail closed: if the interfaces cannot be read (a seccomp filter, no netlink), the
    own-address check cannot be made, so nothing is blocked (security review, stop 13)."""

    def broken() -> None:
        raise PermissionError("netlink refused")

    monkeypatch.setattr(psutil, "net_if_addrs", broken)
    assert local_addresses() is None
    spec = block_catalog(tmp_path)["block-attacker"].spec
    assert isinstance(spec, BlockAddressSpec)
    refusal = address_refusal(spec, "198.51.100.7", local_addresses())
    assert refusal is not None
    assert "could not be read" in refusal


async def test_cidr_blocks_narrower_than_the_minimum_prefix_only(
    tmp_path: Path, runner: ActionRunner
) -> None:
    """A /24 may be blocked; a /8 from a label would cut off half a continent."""
    nft = recorder(tmp_path, "nft")
    cat = catalog(
        f"""
b:
  kind: block-address
  nft: {nft}
  params: {{address: {{from: label, key: net, type: cidr}}}}
""",
        tmp_path,
    )
    assert isinstance(runner.prepare(cat["b"], {"net": "203.0.113.0/24"}, {}, CONTEXT), PreparedRun)
    wide = runner.prepare(cat["b"], {"net": "10.0.0.0/8"}, {}, CONTEXT)
    assert isinstance(wide, ParamRejected)
    assert "wider than /24" in wide.reason


async def test_capture_evidence_writes_a_manifest_with_sha256(
    tmp_path: Path, runner: ActionRunner
) -> None:
    """Journal, allowlisted log file and a command land in the incident's folder, hashed."""
    journalctl = recorder(tmp_path, "journalctl")
    log = tmp_path / "auth.log"
    log.write_text("line 1\n" + "x" * 5000 + "\nlast line\n")
    cat = catalog(
        f"""
evidence:
  kind: capture-evidence
  journalctl: {journalctl}
  params: {{unit: {{from: label, key: service, type: systemd_unit}}}}
  units: [ssh.service, "{{unit}}"]
  since: 30m
  max_lines: 500
  files: [{log}, {tmp_path}/missing.log]
  max_bytes: 1024
  commands:
    who: [/bin/echo, "who is there"]
""",
        tmp_path,
    )
    bad = runner.prepare(cat["evidence"], {"service": "../../etc/x"}, {}, CONTEXT)
    assert isinstance(bad, ParamRejected)
    clock_now = FakeClock().now()
    umask = os.umask(0o022)  # the usual one, whatever this test runs under
    try:
        result = await runner.execute(prepare(runner, cat, "evidence", service="nginx"))
    finally:
        os.umask(umask)
    # A missing file makes the capture incomplete (failed) but everything else is kept.
    assert result.outcome is Outcome.FAILED
    assert "missing.log" in result.attempts[0].detail
    assert result.evidence_dir is not None
    folder = Path(result.evidence_dir)
    assert folder.parent == tmp_path / "state" / "evidence" / "incident-17"
    since = int((clock_now - timedelta(minutes=30)).timestamp())
    assert calls(tmp_path)[0] == [
        "-u", "ssh.service", "--since", f"@{since}", "-o", "short-iso", "--no-pager", "-n", "500",
    ]  # fmt: skip
    assert calls(tmp_path)[1][1] == "nginx.service"
    manifest_bytes = (folder / "manifest.json").read_bytes()
    assert hashlib.sha256(manifest_bytes).hexdigest() == result.evidence_manifest_sha256
    manifest = json.loads(manifest_bytes)
    assert manifest["context"]["incident_id"] == "17"
    by_name = {entry["name"]: entry for entry in manifest["files"]}
    assert set(by_name) == {
        "journal-1.log", "journal-2.log", "file-1.log", "file-2.log", "command-who.txt",
    }  # fmt: skip
    for name, entry in by_name.items():
        data = (folder / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert _mode(folder / name) == 0o600
    assert by_name["file-1.log"]["truncated"] is True
    assert (folder / "file-1.log").read_bytes().endswith(b"last line\n")
    assert len((folder / "file-1.log").read_bytes()) == 1024
    assert "error" in by_name["file-2.log"]
    assert (folder / "command-who.txt").read_text() == "who is there\n"
    assert "Failed password" in (folder / "journal-1.log").read_text()
    assert _mode(folder) == 0o700
    # The folders above it too (they were 0755 under the usual umask 022): their names say
    # which incidents had evidence taken, when, and by which action.
    assert _mode(folder.parent) == 0o700
    assert _mode(folder.parent.parent) == 0o700


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


async def test_evidence_folder_comes_from_the_incident_id_never_from_labels(
    tmp_path: Path, runner: ActionRunner
) -> None:
    """An odd incident id is hashed into a plain folder name; no path escapes the root."""
    cat = catalog("e: {kind: capture-evidence, commands: {id: [/bin/echo, hi]}}", tmp_path)
    context = RunContext("../../../tmp/evil", "x")
    prep = runner.prepare(cat["e"], {"incident": "../../boom"}, {}, context)
    assert isinstance(prep, PreparedRun)
    result = await runner.execute(prep)
    assert result.outcome is Outcome.OK
    assert result.evidence_dir is not None
    folder = Path(result.evidence_dir)
    root = tmp_path / "state" / "evidence"
    assert folder.parent.parent == root
    assert folder.parent.name.startswith("incident-")
    assert "." not in folder.parent.name


async def test_an_evidence_file_that_is_no_regular_file_fails_at_once(
    tmp_path: Path, runner: ActionRunner
) -> None:
    """A listed log path that is a FIFO (or a device) is not read: opening a FIFO waits for a
    writer, for ever, and the run held its target with it (no timeout covers a file read).
    The capture fails for that file and keeps the rest."""
    fifo = tmp_path / "auth.log"
    os.mkfifo(fifo)
    log = tmp_path / "app.log"
    log.write_text("kept\n")
    cat = catalog(f"e: {{kind: capture-evidence, files: [{fifo}, {log}], timeout: 2s}}", tmp_path)
    prep = runner.prepare(cat["e"], {}, {}, CONTEXT)
    assert isinstance(prep, PreparedRun)
    result = await asyncio.wait_for(runner.execute(prep), timeout=10)
    assert result.outcome is Outcome.FAILED
    assert f"file {fifo}: not a regular file" in result.attempts[0].detail
    assert result.evidence_dir is not None
    assert (Path(result.evidence_dir) / "file-2.log").read_text() == "kept\n"

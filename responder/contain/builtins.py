"""Argv builders for the built-in actions: restart a systemd unit, block an address, read a journal.

Pure functions from a parsed spec and validated values to fixed argv tuples (and the undo argv
of a block), so that what runs is visible and testable without running it. The executables
are configurable absolute paths; tests point them at recording scripts. Safety checks that need
the parsed value (the unit allowlist, never-block networks, the narrowest prefix) live here
too and answer with a reason string rather than raising.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Collection
from datetime import datetime

import psutil

from responder.contain.catalog import BlockAddressSpec, CaptureEvidenceSpec, SystemdRestartSpec

START_LIMIT_HIT = "start-limit-hit"


def restart_argv(spec: SystemdRestartSpec, unit: str) -> tuple[str, ...]:
    # --no-ask-password: without polkit permission, fail at once instead of waiting for a
    # password prompt that nobody will ever answer.
    return (spec.systemctl, "restart", "--no-ask-password", unit)


def result_argv(spec: SystemdRestartSpec, unit: str) -> tuple[str, ...]:
    return (spec.systemctl, "show", "-p", "Result", unit)


def parse_result(stdout: str) -> str:
    """``Result=start-limit-hit`` -> ``start-limit-hit``; empty when the output is unexpected."""
    for line in stdout.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key == "Result":
            return value.strip()
    return ""


def unit_refusal(spec: SystemdRestartSpec, unit: str) -> str | None:
    if unit not in spec.units:
        return f"unit {unit} is not in this action's units allowlist"
    return None


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def local_addresses() -> frozenset[Address] | None:
    """The addresses this host owns right now (read at each block: DHCP may change them).
    None when the system does not say (then no block is safe)."""
    found: set[Address] = set()
    try:
        interfaces = psutil.net_if_addrs()
    except OSError:
        return None
    for addresses in interfaces.values():
        for item in addresses:
            if item.family in (socket.AF_INET, socket.AF_INET6):
                # A link-local IPv6 address carries its interface: fe80::1%eth0.
                with contextlib.suppress(ValueError):
                    found.add(ipaddress.ip_address(item.address.partition("%")[0]))
    return frozenset(found)


_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_NEVER_BLOCKED: tuple[Network, ...] = tuple(
    ipaddress.ip_network(text)
    for text in (
        "127.0.0.0/8",
        "0.0.0.0/32",
        "224.0.0.0/4",
        "169.254.0.0/16",
        "::1/128",
        "::/128",
        "ff00::/8",
        "fe80::/10",
    )
)


def address_refusal(
    spec: BlockAddressSpec, address: str, own: Collection[Address] | None = ()
) -> str | None:
    """Why ``address`` (an IP or a CIDR) must not be blocked, or None. ``own``: the host's
    own addresses, never blocked (an alert naming one would cut the host off itself); None
    when they could not be read, and then nothing is blocked (fail closed)."""
    if own is None:
        return f"{address} not blocked: this host's own addresses could not be read"
    network: Network = ipaddress.ip_network(address, strict=False)
    if isinstance(network, ipaddress.IPv6Network) and network.overlaps(_IPV4_MAPPED):
        # ::ffff:127.0.0.1 is 127.0.0.1 to the kernel, but not to the checks below.
        return f"{address} is an IPv4-mapped address; give the IPv4 address"
    # Any part of these, not only the first address: with a wide min_prefix, 169.0.0.0/8
    # would hold 169.254.169.254, the cloud's metadata service.
    if any(network.version == r.version and network.overlaps(r) for r in _NEVER_BLOCKED):
        return f"{address} holds loopback, unspecified, multicast or link-local addresses"
    minimum = spec.min_prefix4 if network.version == 4 else spec.min_prefix6
    if network.prefixlen < minimum:
        return f"{address} is wider than /{minimum}"
    for protected in spec.never_block:
        if protected.version == network.version and network.overlaps(protected):
            return f"{address} overlaps never_block {protected}"
    for mine in own:
        if mine.version == network.version and mine in network:
            return f"{address} holds {mine}, an address of this host"
    return None


def block_argv(
    spec: BlockAddressSpec, address: str, run_id: str
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The argv that blocks ``address`` and the argv that lifts the block again. An iptables
    rule carries its run's id: ``-D`` deletes any identical rule, and without it one run's
    lift could delete another's block of the same address before that one expires."""
    version = ipaddress.ip_network(address, strict=False).version
    seconds = int(spec.duration.total_seconds())
    prefix: tuple[str, ...] = (spec.sudo, "-n") if spec.sudo else ()
    if spec.backend == "nft":
        set_name = spec.set4 if version == 4 else spec.set6
        base = (spec.nft, "add", "element", "inet", spec.table, set_name)
        # nft joins its argv and parses it; the only variable part is a validated address.
        block = (*prefix, *base, f"{{ {address} timeout {seconds}s }}")
        undo = (
            *prefix,
            spec.nft,
            "delete",
            "element",
            "inet",
            spec.table,
            set_name,
            f"{{ {address} }}",
        )
        return block, undo
    exe = spec.iptables if version == 4 else spec.ip6tables
    # -w: wait for the xtables lock instead of failing when another tool holds it.
    tag = ("-m", "comment", "--comment", f"responder:{run_id}")
    rule = (spec.chain, "-s", address, *tag, "-j", "DROP")
    return (*prefix, exe, "-w", "-I", *rule), (*prefix, exe, "-w", "-D", *rule)


# What the block tools themselves say when the rule or element to delete is not there, both
# with exit status 1: iptables' "-D" ("iptables: Bad rule (does a matching rule exist in
# that chain?)."), nft's "delete element" ("Error: Could not process rule: No such file or
# directory"). Exit status 1 alone is no answer: sudo exits 1 when it refuses to run the
# command at all ("sudo: a password is required", "Sorry, user ... is not allowed to
# execute ..."), and a rule may then be in place.
_NOTHING_THERE = (
    "Bad rule (does a matching rule exist",
    "Error: Could not process rule: No such file or directory",
)


def found_nothing_to_lift(exit_status: int | None, stderr: str) -> bool:
    """Whether a block's lift failed only because the block tool found no such rule or set
    element (it is gone already), not because it could not run (sudo, the lock, a typo)."""
    return exit_status == 1 and any(text in stderr for text in _NOTHING_THERE)


def journal_argv(spec: CaptureEvidenceSpec, unit: str, since: datetime) -> tuple[str, ...]:
    return (
        spec.journalctl,
        "-u",
        unit,
        "--since",
        f"@{int(since.timestamp())}",
        "-o",
        "short-iso",
        "--no-pager",
        "-n",
        str(spec.max_lines),
    )

"""Action processes a killed daemon left running: recorded while they run, stopped at start.

Each action (and lift) process runs in a process group of its own, which the daemon kills at
its timeout. Under systemd the unit's cgroup also ends them with the daemon; elsewhere (a
daemon run by hand, a container whose PID 1 is another program) a kill -9 of the daemon leaves
them running with no timeout any more. So the daemon records each group while it runs (its
leader's pid, which is the group id, with the leader's start time and the boot id, which tell
that very process from a later one given the same pid) and, at the next start, stops the groups
still alive: SIGTERM, a short wait, then SIGKILL. Linux only (/proc); elsewhere nothing is
recorded and the start says so once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from responder.clock import monotonic

PROC = Path("/proc")
BOOT_ID = PROC / "sys" / "kernel" / "random" / "boot_id"
# How long a group has to end after SIGTERM (and again after SIGKILL) at start.
STOP_GRACE_S = 3.0


@dataclass(frozen=True, slots=True)
class ProcessIdentity:
    """One process group leader: its pid (the group's id), its start time in clock ticks
    since boot (/proc/<pid>/stat field 22) and the boot it ran in."""

    pgid: int
    start_ticks: int
    boot_id: str


class ProcessLedger(Protocol):
    """Where the runner records the process groups it starts (the store, through the
    engine); ``started`` returns before the runner lets the process go on."""

    async def started(self, identity: ProcessIdentity, run_id: str, argv0: str) -> None: ...

    async def ended(self, identity: ProcessIdentity) -> None: ...


class Stopped(StrEnum):
    """What the start did with a recorded group."""

    GONE = "gone"  # nothing left to stop: its leader has ended
    OTHER_BOOT = "other_boot"  # recorded before a reboot: it cannot be running
    NOT_OURS = "not_ours"  # its pid now belongs to another process: not signalled
    TERMINATED = "terminated"  # ended after SIGTERM
    KILLED = "killed"  # ended after SIGKILL
    SURVIVED = "survived"  # still there after SIGKILL: a member the daemon may not signal


def boot_id(path: Path = BOOT_ID) -> str | None:
    """This boot's id, or None where the system has no /proc (not Linux)."""
    try:
        return path.read_text(encoding="ascii").strip() or None
    except OSError:
        return None


def _stat_fields(pid: int, proc: Path) -> list[str] | None:
    """/proc/<pid>/stat from field 3 on (the command name, field 2, may hold spaces and
    parentheses: everything after its last ')' is split), or None when there is no such
    process."""
    try:
        text = (proc / str(pid) / "stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def start_ticks(pid: int, proc: Path = PROC) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (field 22), or None."""
    fields = _stat_fields(pid, proc)
    return int(fields[19]) if fields is not None and len(fields) > 19 else None


def identify(pid: int, boot: str | None, proc: Path = PROC) -> ProcessIdentity | None:
    """The identity of the group leader ``pid`` in this boot, or None (no /proc)."""
    if boot is None:
        return None
    ticks = start_ticks(pid, proc)
    return None if ticks is None else ProcessIdentity(pid, ticks, boot)


def _group_alive(pgid: int, proc: Path) -> bool:
    """Whether any process (zombies aside) is still in group ``pgid``."""
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name), proc)
        # Field 3 is the state, field 5 the process group.
        if fields is not None and len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def _signal(pgid: int, sig: signal.Signals) -> None:
    # EPERM: every member left is one the daemon may not signal (a root command whose sudo
    # has ended; sudo itself runs with the daemon's user as its real user and relays TERM).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _ended_within(pgid: int, seconds: float, proc: Path) -> bool:
    deadline = monotonic() + seconds
    while _group_alive(pgid, proc):
        if monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def recognise(identity: ProcessIdentity, boot: str | None, proc: Path = PROC) -> Stopped | None:
    """None when ``identity``'s leader is still running (same boot, same start time), else
    why there is nothing to signal."""
    if identity.boot_id != boot:
        return Stopped.OTHER_BOOT
    ticks = start_ticks(identity.pgid, proc)
    if ticks is None:
        # The leader ended. Members it left in the group are not signalled: once the
        # group is gone its id may be reused, and a group of strangers cannot be told from
        # it by anything recorded.
        return Stopped.GONE
    if ticks != identity.start_ticks:
        return Stopped.NOT_OURS
    return None


async def stop(
    identity: ProcessIdentity,
    boot: str | None,
    *,
    grace_s: float = STOP_GRACE_S,
    proc: Path = PROC,
) -> Stopped:
    """Stop the group ``identity`` leads if it is still that very group: SIGTERM, then
    SIGKILL after ``grace_s``. Processes that left the group (setsid) are out of reach."""
    found = recognise(identity, boot, proc)
    if found is not None:
        return found
    _signal(identity.pgid, signal.SIGTERM)
    if await _ended_within(identity.pgid, grace_s, proc):
        return Stopped.TERMINATED
    _signal(identity.pgid, signal.SIGKILL)
    if await _ended_within(identity.pgid, grace_s, proc):
        return Stopped.KILLED
    return Stopped.SURVIVED

"""What the benchmarks share: ports, readiness, CPU accounting from /proc, percentiles, and
the machine description every report starts with. Imported as ``benchlib`` (the scripts
run from this folder)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import platform
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Poll ``url`` until it answers 200; stop with the server's log if it exits or takes
    longer than 30 s."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:  # noqa: S310 - our URL
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            # not listening yet: poll again after the pause below
            ...
        time.sleep(0.05)
    raise SystemExit(f"server at {url} not ready after 30 s:\n{log.read_text()}")


def cpu_seconds_with_children(pid: int) -> tuple[float, float]:
    """(own user + system CPU seconds, its reaped children's) of a process; zeros when it is
    gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0, 0.0
    # After the command name: utime, stime, cutime, cstime are fields 14-17 (1-based).
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far, all its threads (0.0 when gone)."""
    return cpu_seconds_with_children(pid)[0]


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest rank: the smallest value with at least p% of the values at or below it."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(len(ordered) * p / 100))
    return ordered[min(len(ordered), rank) - 1]


def shipped_synchronous() -> str:
    """``storage.synchronous`` of the shipped config.yaml: what the benchmarks measure with."""
    with contextlib.suppress(OSError, yaml.YAMLError, AttributeError, TypeError):
        shipped = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
        return str(((shipped.get("storage") or {}).get("synchronous")) or "full")
    return "full"


def machine() -> dict[str, str]:
    """CPU, kernel and the versions that matter, for a report's first lines."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "sqlite": sqlite3.sqlite_version,
        "synchronous": shipped_synchronous(),
    }


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response (head and Content-Length body) off a keep-alive
    connection; returns its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status

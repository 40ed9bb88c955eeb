"""Two builds of responder, head to head: which one spends less CPU per webhook.

This VM's speed drifts by 10-20% within minutes, so two builds measured one after the other
differ by more than most changes do. Here both run at once, pinned to the same core, each
driven by its own ``wrk`` on the other core: the drift hits both alike. The figure is CPU
time (user + system, all threads) per request of each; their ratio is the change's effect.
Identical builds give 0.99-1.01.

Each build is a Python interpreter of a virtualenv with that build installed, e.g. a git
worktree of the older commit installed in a second venv:

    git worktree add /tmp/base HEAD~1
    python3 -m venv /tmp/base-venv && /tmp/base-venv/bin/pip install -e /tmp/base
    .venv/bin/python bench/bench_head_to_head.py --a /tmp/base-venv/bin/python --case 1-repeated

(The servers start in ``/tmp``, so each imports its own build, not the current directory.)
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
from pathlib import Path

from bench_ingest import CASES, Case, Load, Server, responder_server, run_wrk
from benchlib import cpu_seconds

CONNECTIONS = 64


def one_round(
    work: Path, servers: dict[str, Server], case: Case, token: str, seconds: float
) -> dict[str, float]:
    """Load both servers at once; microseconds of CPU per request of each."""
    before = {name: cpu_seconds(s.process.pid) for name, s in servers.items()}
    loads: dict[str, Load] = {}

    def drive(name: str, server: Server) -> None:
        loads[name] = run_wrk(work, server, case, token, seconds, CONNECTIONS)

    threads = [threading.Thread(target=drive, args=item) for item in servers.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        name: (cpu_seconds(s.process.pid) - before[name]) / loads[name].requests * 1e6
        for name, s in servers.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--a", required=True, metavar="PYTHON", help="the base build's python")
    parser.add_argument("--b", default=sys.executable, metavar="PYTHON", help="the new build's")
    names = {f"{c.alerts}-{'distinct' if c.distinct else 'repeated'}": c for c in CASES}
    parser.add_argument("--case", choices=sorted(names), default="1-repeated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        print("bench_head_to_head: needs wrk and taskset", file=sys.stderr)
        return 2
    case = names[args.case]
    work = Path(tempfile.mkdtemp(prefix="bench-h2h-"))
    token = secrets.token_urlsafe(32)
    token_file = work / "token"
    token_file.write_text(token + "\n", encoding="utf-8")
    try:
        with contextlib.ExitStack() as stack:
            servers = {
                label: stack.enter_context(responder_server(work, token_file, label, python))
                for label, python in (("A", args.a), ("B", args.b))
            }
            for server in servers.values():
                run_wrk(work, server, case, token, 2, CONNECTIONS)  # warm-up
            ratios = []
            for number in range(args.rounds):
                cost = one_round(work, servers, case, token, args.seconds)
                ratios.append(cost["A"] / cost["B"])
                print(
                    f"round {number + 1}: A {cost['A']:.1f} us/request, B {cost['B']:.1f} "
                    f"us/request, A/B {ratios[-1]:.3f}"
                )
        print(f"{case.name}: median A/B {statistics.median(ratios):.3f} (above 1: B is cheaper)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

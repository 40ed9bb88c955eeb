"""The store's own work for new alerts, variants of its SQLite settings interleaved.

Run by hand: ``.venv/bin/python bench/bench_store.py`` (about a minute). No HTTP and no writer
thread: one thread runs what the writer runs for each new 1-alert webhook (classification,
the ``alerts`` row, the incident it joins) in commits of ``--batch`` webhooks, the way the
writer's group commit takes them at the maximum rate. Each variant has its own database and
they take turns, one commit each, so the VM's drift (10-30% within minutes) hits them alike;
the figure is thread CPU time per alert. Identical variants give the same figure to within
about 1%.

A variant is ``PAGE_SIZE:SYNCHRONOUS[:PRAGMA=VALUE,...]``, e.g. ``4096:full 4096:normal
4096:off`` (the default), ``4096:full 8192:full`` or ``4096:full 4096:full:cache_size=-65536``
(further pragmas set on the writer's connection after the store's own).
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench_ingest import body_template, render
from benchlib import ROOT

from responder.ingest import _incoming
from responder.model import WebhookMessage
from responder.runtime import Runtime, load_snapshot
from responder.store.sqlite import SQLiteStore
from responder.store.sqlite_incidents import to_us
from responder.store.sqlite_ingest import ingest_one
from responder.webhook import parse_webhook

REOPEN_WITHIN_US = 3_600_000_000


@dataclass
class Variant:
    name: str
    store: SQLiteStore
    conn: sqlite3.Connection
    messages: list[WebhookMessage]
    cpu: float = 0.0


def open_variant(name: str, work: Path, prefix: int, count: int) -> Variant:
    page_size, _, rest = name.partition(":")
    synchronous, _, extra = rest.partition(":")
    path = work / f"{prefix}.db"
    # The page size of a new database is set before its first table.
    setup = sqlite3.connect(path)
    setup.execute(f"PRAGMA page_size={int(page_size)}")
    setup.execute("VACUUM")
    setup.close()
    store = SQLiteStore(path, synchronous=(synchronous or "full").upper())
    asyncio.run(store.open())
    # A connection of the store's own making (same pragmas), driven from this thread.
    conn = store._connect()
    for pragma in filter(None, extra.split(",")):
        key, _, value = pragma.partition("=")
        if not key.isidentifier() or not value.lstrip("-").isalnum():
            raise SystemExit(f"{name}: expected PRAGMA=VALUE, got {pragma!r}")
        conn.execute(f"PRAGMA {key}={value}")
    template = body_template(1)
    messages = [parse_webhook(render(template, 1, prefix, i).encode()) for i in range(count)]
    return Variant(name, store, conn, messages)


def commit_one(variant: Variant, runtime: Runtime, start: int, batch: int) -> None:
    """One commit of ``batch`` new 1-alert webhooks, as the writer runs it."""
    store, conn = variant.store, variant.conn
    now = datetime.now(UTC)
    now_us = to_us(now)
    cache, known = store._ingest_cache, store._open_incidents
    began = time.thread_time()
    known.forget()
    conn.execute("BEGIN IMMEDIATE")
    for message in variant.messages[start : start + batch]:
        incoming = _incoming(runtime, message.alerts, message.group_key, message.receiver, now)
        for alert in incoming:
            ingest_one(conn, alert, now_us, REOPEN_WITHIN_US, cache, known)
    conn.execute("COMMIT")
    variant.cpu += time.thread_time() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="*", default=["4096:full", "4096:normal", "4096:off"])
    parser.add_argument("--alerts", type=int, default=48_000, help="new alerts per variant")
    parser.add_argument("--batch", type=int, default=24, help="webhooks per commit")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        work = Path(tmp)
        snapshot = load_snapshot(ROOT / "config.yaml", state_dir=work / "state")
        # _incoming reads only the runtime's snapshot (the classifier).
        runtime = Runtime.__new__(Runtime)
        runtime.snapshot = snapshot
        variants = [
            open_variant(name, work, prefix, args.alerts)
            for prefix, name in enumerate(args.variants, start=1)
        ]
        for start in range(0, args.alerts, args.batch):
            for variant in variants:
                commit_one(variant, runtime, start, args.batch)
        print(f"{args.alerts:,} new 1-alert webhooks per variant, commits of {args.batch}:")
        print("| variant (page size:synchronous:pragmas) | CPU µs per alert |")
        print("| --- | ---: |")
        for variant in variants:
            print(f"| {variant.name} | {variant.cpu / args.alerts * 1e6:.1f} |")
            variant.conn.close()
            asyncio.run(variant.store.close())
    return 0


if __name__ == "__main__":
    sys.exit(main())

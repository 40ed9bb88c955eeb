"""Where the pipeline is wired: one screen shows every stage and every door.

``build_app`` takes a loaded snapshot and returns an aiohttp application whose cleanup
contexts open and close each long-lived resource in order (store, background loops).
Signals: SIGTERM/SIGINT stop the server gracefully (aiohttp's run_app, after the requests
in flight are done: ``finish_requests_on_stop``), SIGHUP reloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web
from prometheus_client import CollectorRegistry

from notifiers.config import build_notifiers
from responder import (
    actions_api,
    api,
    drills,
    heartbeats,
    incidents_api,
    ingest,
    links,
    ops,
    twilio_doors,
)
from responder.clock import Clock, SystemClock
from responder.compose import Composer
from responder.contain import ActionRunner, evidence
from responder.contain.engine import Containment
from responder.deliver import Dispatcher
from responder.directory import Directory
from responder.entry import EARLY_SIGHUP
from responder.escalate import Escalator
from responder.lift_alarm import store_lift_alarm
from responder.log import fields
from responder.metrics import Metrics
from responder.reconcile import Reconciler
from responder.runtime import BODY_LIMIT, RUNTIME, Runtime, Snapshot, in_background
from responder.secrets import Secret
from responder.store import PRUNE_BATCH, CommitStats, StoreError, open_store

log = logging.getLogger("responder")


def build_app(
    snapshot: Snapshot,
    *,
    clock: Clock | None = None,
    registry: CollectorRegistry | None = None,
    generated_token: Secret | None = None,
    listen_override: str | None = None,
    state_dir_override: Path | None = None,
) -> web.Application:
    config = snapshot.config
    metrics = Metrics(registry or CollectorRegistry())

    def on_commit(stats: CommitStats) -> None:
        metrics.store_commit_duration.observe(stats.seconds)
        metrics.store_commit_batch.observe(stats.batch_size)
        metrics.store_disk_full.set(stats.reserve_given_up)
        for channel, count in stats.pages_cancelled.items():
            metrics.pages.labels(channel, "cancelled").inc(count)

    store = open_store(
        config.storage.url,
        config.state_dir,
        synchronous=config.storage.synchronous,
        on_commit=on_commit,
    )
    runtime = Runtime(
        snapshot,
        store=store,
        metrics=metrics,
        clock=clock or SystemClock(),
        generated_token=generated_token,
        listen_override=listen_override,
        state_dir_override=state_dir_override,
    )
    # aiohttp refuses larger bodies itself (413) before the handler reads them.
    app = web.Application(client_max_size=config.server.max_body_bytes)
    app[RUNTIME] = runtime
    app[BODY_LIMIT] = config.server.max_body_bytes
    app[heartbeats.HEARTBEAT_WATCH] = heartbeats.HeartbeatWatch(runtime)

    # Inbound doors.
    app.router.add_post("/api/v1/alertmanager", ingest.receive_alertmanager)
    app.router.add_get("/api/v1/alerts", api.list_alerts)
    incidents_api.add_routes(app.router)
    twilio_doors.add_routes(app)
    links.add_routes(app.router)
    drills.add_routes(app.router)
    actions_api.add_routes(app.router)
    heartbeats.add_routes(app.router)
    app.router.add_get("/metrics", ops.metrics)
    app.router.add_get("/-/healthy", ops.healthy)
    app.router.add_get("/-/ready", ops.ready)
    app.router.add_post("/-/reload", ops.reload)

    # Resources, opened in this order and closed in reverse.
    app.cleanup_ctx.append(_store_context)
    app.cleanup_ctx.append(_stale_sweeper)
    app.cleanup_ctx.append(_retention)
    app.cleanup_ctx.append(_engine)
    app.cleanup_ctx.append(heartbeats.watch_heartbeats)
    app.cleanup_ctx.append(drills.scheduled_drills)
    app.cleanup_ctx.append(_sighup_reload)
    app.on_startup.append(_quiet_accept_errors)
    app.on_startup.append(_freeze_startup_objects)
    app.on_startup.append(_tell_systemd_ready)  # last: the store, engines, SIGHUP are up
    app.on_shutdown.append(_tell_systemd_stopping)
    return app


def requests_in_flight() -> list[asyncio.Task[Any]]:
    """The request handlers running now, a body still arriving included: aiohttp runs each
    request in a task of its own. Looked for when needed rather than counted per request:
    a middleware that counted cost 8% of a webhook's CPU."""
    return [
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "") == "RequestHandler._handle_request"
    ]


async def finish_requests_on_stop(app: web.Application) -> None:
    """``serve``'s SIGTERM and SIGINT (on_startup, after aiohttp's run_app set its own): the
    requests in flight finish first, for at most ``server.shutdown_timeout``, and then
    aiohttp stops the server. Its own stop reads nothing more from a connection, so a
    request whose body was still arriving waited out the timeout and was cut off
    unanswered. A second signal cuts the requests off at once."""
    loop = asyncio.get_running_loop()
    timeout = app[RUNTIME].snapshot.config.server.shutdown_timeout
    draining: list[asyncio.Task[None]] = []

    def stop() -> None:
        raise web.GracefulExit()  # as aiohttp's own signal handler: out of the loop

    async def finish() -> None:
        deadline = loop.time() + timeout
        if tasks := requests_in_flight():
            log.info("stopping once requests in flight are done",
                     extra=fields(requests=len(tasks)))  # fmt: skip
        while tasks and loop.time() < deadline:
            await asyncio.wait(tasks, timeout=deadline - loop.time())
            tasks = requests_in_flight()  # and those that began meanwhile
        for task in tasks:  # what aiohttp does at its own timeout
            task.cancel()
        loop.call_soon(stop)

    def on_signal() -> None:
        if draining:  # not stop(): aiohttp would then wait for them itself
            for task in requests_in_flight():
                task.cancel()
            return
        draining.append(loop.create_task(finish(), name="finish-requests"))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)


def notify_systemd(state: bytes) -> None:
    """Tell systemd (``Type=notify``) how the service stands: READY=1 once it can take a
    reload and webhooks, STOPPING=1 when it begins to stop. Nothing without NOTIFY_SOCKET
    (not started by systemd, or another Type)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or address[0] not in "/@":
        return
    target = "\0" + address[1:] if address[0] == "@" else address  # @: the abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(target)
            sock.sendall(state)
    except OSError as exc:
        log.warning("systemd not told", extra=fields(state=state.decode(), error=str(exc)))


async def _tell_systemd_ready(_app: web.Application) -> None:
    notify_systemd(b"READY=1")


async def _tell_systemd_stopping(_app: web.Application) -> None:
    notify_systemd(b"STOPPING=1")


async def _store_context(app: web.Application) -> AsyncIterator[None]:
    runtime = app[RUNTIME]
    await runtime.store.open()
    log.info("store open", extra=fields(url=runtime.store.url))
    try:
        await runtime.rearm_at_start()  # before the engine's first pass
    except BaseException:
        await runtime.store.close()  # the start fails: its lock and writer go with it
        raise
    yield
    await runtime.stop()
    await runtime.store.close()
    log.info("store closed")


# Allocations between young-generation collections (CPython's default is 700). Each
# collection scans every object alive at that moment, in-flight requests included; with a
# webhook creating a few hundred objects, the default collects every few requests. Fewer,
# larger collections: +4% webhooks per second on one core, pauses still well under 1 ms.
GC_YOUNG_THRESHOLD = 10_000


# How often the loop may log that it cannot accept connections (out of file descriptors):
# asyncio logs a traceback at every retry, and in a flood of idle connections that filled
# the disk the database lives on (184 MB in 30 s, review of stop 14).
ACCEPT_ERROR_LOG_EVERY_S = 60.0


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Log the loop's "cannot accept" errors once a minute at most; others as before."""
    previous = loop.get_exception_handler()
    last_logged: float | None = None
    held = 0

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        nonlocal last_logged, held
        if not str(context.get("message", "")).startswith("socket.accept() out of system"):
            if previous is None:
                loop.default_exception_handler(context)
            else:
                previous(loop, context)
            return
        now = loop.time()
        if last_logged is not None and now - last_logged < ACCEPT_ERROR_LOG_EVERY_S:
            held += 1
            return
        log.error(
            "cannot accept connections: out of file descriptors or memory; webhooks are "
            "refused until connections close",
            extra=fields(error=str(context.get("exception")), not_logged_since=held),
        )
        last_logged, held = now, 0

    loop.set_exception_handler(handler)


async def _quiet_accept_errors(_app: web.Application) -> None:
    quiet_accept_errors(asyncio.get_running_loop())


async def _freeze_startup_objects(_app: web.Application) -> None:
    """Everything loaded at start (modules, rules, templates) lives as long as the process:
    moved out of the collector's sight, a full collection under load scans only what
    requests create, which shortens the pauses that make latency tails."""
    gc.collect()  # start-up garbage is collected, not frozen for the process's life
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


async def _stale_sweeper(app: web.Application) -> AsyncIterator[None]:
    """Alerts that Alertmanager stopped re-sending without a resolve are marked stale."""
    runtime = app[RUNTIME]
    # Silence counts only while this daemon could hear: an alert that Alertmanager kept
    # re-sending while we were down arrives again within its repeat interval after the
    # start, and must not be called stale (its incident resolved, everyone told) meanwhile.
    listening_since = runtime.clock.now()

    async def sweep_forever() -> None:
        while True:
            alerts_config = runtime.config.alerts
            now = runtime.clock.now()
            cutoff = now - alerts_config.stale_after
            try:
                stale = (
                    await runtime.store.mark_stale(cutoff, now) if listening_since < cutoff else []
                )
            except Exception:
                log.exception("stale sweep failed; will try again")
            else:
                if stale:
                    runtime.wake_engine()  # incidents may have resolved: recovery notices
                    runtime.metrics.alerts_stale.inc(len(stale))
                    log.warning("alerts went stale", extra=fields(count=len(stale), ids=stale[:20]))
            await runtime.clock.sleep_until(now + alerts_config.stale_check_every)

    async with in_background(sweep_forever(), "stale-sweeper"):
        yield


# How often retention looks for what to delete; it deletes in small writes until done.
RETENTION_EVERY = timedelta(hours=6)


async def _retention(app: web.Application) -> AsyncIterator[None]:
    """``storage.retention``: what ended longer ago is deleted, a little at a time; and
    the heartbeat watch's downtimes that no longer matter, whatever is kept;
    ``containment.evidence_retention``: old evidence captures."""
    runtime = app[RUNTIME]
    watch = app[heartbeats.HEARTBEAT_WATCH]

    async def prune_forever() -> None:
        while True:
            kept = runtime.started_with.config.storage.retention  # storage: at start only
            now = runtime.clock.now()
            await _prune_evidence(runtime, now)
            deleted: dict[str, int] = {}
            try:
                if kept is not None:
                    deleted["incidents"], deleted["alerts"] = await _prune(runtime, now - kept)
                    deleted["twilio_requests"] = await _forget_twilio_requests(runtime, now - kept)
                # The watch's own state, not records: trimmed whatever is kept (a host
                # suspended nightly adds a downtime a day for as long as the daemon runs).
                deleted["watch_downtimes"] = await watch.forget_old_downtimes()
            except Exception:
                log.exception("retention failed; will try again")
            else:
                if any(deleted.values()):
                    log.info(
                        "old records deleted (storage.retention)",
                        extra=fields(**deleted, kept="forever" if kept is None else str(kept)),
                    )
            await runtime.clock.sleep_until(now + RETENTION_EVERY)

    async with in_background(prune_forever(), "retention"):
        yield


async def _prune_evidence(runtime: Runtime, now: datetime) -> None:
    """Evidence captures past ``containment.evidence_retention`` (read per pass: a reload
    changes it), and the oldest past ``evidence_max_total_bytes``."""
    settings = runtime.snapshot.containment
    if settings.evidence_retention is None and settings.evidence_max_total_bytes is None:
        return
    folder = evidence.root(runtime.started_with.config.state_dir)
    try:
        # An open incident's evidence waits for its review, however old.
        still_open = [str(i) for i in await runtime.store.open_incident_ids()]
    except StoreError:
        log.warning("evidence retention skipped: open incidents unknown; will try again")
        return
    try:
        done = await asyncio.to_thread(
            evidence.prune,
            folder,
            now,
            max_age=settings.evidence_retention,
            max_total_bytes=settings.evidence_max_total_bytes,
            open_incidents=still_open,
        )
    except OSError:
        log.exception("evidence retention failed; will try again")
        return
    if done.captures or done.errors:
        log.log(
            logging.WARNING if done.errors else logging.INFO,
            "old evidence deleted (containment.evidence_retention)",
            extra=fields(
                captures=done.captures,
                bytes=done.bytes,
                incident_folders=done.incidents,
                not_deleted=done.errors,
            ),
        )


async def _forget_twilio_requests(runtime: Runtime, before: datetime) -> int:
    """The SMS replies and keypresses taken before ``before``, batch after batch: a
    captured one posted again acts again after that long (``storage.retention``)."""
    forgotten = 0
    while True:
        batch = await runtime.store.forget_twilio_requests(before, PRUNE_BATCH)
        forgotten += batch
        if batch < PRUNE_BATCH:
            return forgotten
        await asyncio.sleep(0.05)


async def _prune(runtime: Runtime, before: datetime) -> tuple[int, int]:
    """Batch after batch until nothing more is due; a pause between them lets webhooks by."""
    incidents = alerts = 0
    while True:
        batch_incidents, batch_alerts = await runtime.store.prune(before, PRUNE_BATCH)
        incidents, alerts = incidents + batch_incidents, alerts + batch_alerts
        if batch_incidents < PRUNE_BATCH and batch_alerts < PRUNE_BATCH:
            return incidents, alerts
        await asyncio.sleep(0.05)


async def _engine(app: web.Application) -> AsyncIterator[None]:
    """The escalation engine, the outbox sender and its status lookups, each one loop on
    the shared clock."""
    runtime = app[RUNTIME]
    public_url = runtime.started_with.config.server.public_url
    escalation = runtime.snapshot.escalation
    # With contacts defined, the config warnings (responder.advice) say it already.
    if not escalation.policies and not escalation.directory.contacts:
        log.warning(
            "no escalation_policies configured: incidents are recorded, nobody is paged "
            "(see docs/escalation.md)"
        )
    runtime.notifiers = build_notifiers(runtime.started_with.channels, public_url)

    def directory() -> Directory:
        return runtime.snapshot.escalation.directory  # read per use: a reload swaps it

    def contact_zone(name: str) -> ZoneInfo | None:
        contact = directory().contacts.get(name)
        return None if contact is None else contact.timezone

    composer = Composer(
        runtime.store,
        runtime.clock.now,
        lambda: runtime.snapshot.templates,
        public_url=public_url,
        link_secret=links.link_secret(runtime.started_with.config.state_dir),
        contact_zone=contact_zone,
    )
    runtime.dispatcher = dispatcher = Dispatcher(
        runtime.store,
        runtime.clock,
        runtime.metrics,
        lambda: runtime.notifiers,
        composer,
        directory=directory,
        config=lambda: runtime.snapshot.delivery,
    )
    runtime.escalator = Escalator(
        runtime.store,
        runtime.clock,
        runtime.metrics,
        lambda: runtime.snapshot.escalation,
        on_pages=dispatcher.wake,
        held=lambda: runtime.rearm_pending,
    )
    runner = ActionRunner(runtime.clock, evidence.root(runtime.started_with.config.state_dir))
    runtime.containment = Containment(
        runtime.store,
        runtime.clock,
        runtime.metrics,
        runner,
        lambda: (runtime.snapshot.actions, runtime.snapshot.containment),
        on_escalate=runtime.escalator.wake,
        on_lift_alarm=functools.partial(store_lift_alarm, runtime),
    )
    # SMS and calls whose status callback did not come (the daemon was down) are looked up.
    reconciler = Reconciler(
        runtime.store, runtime.clock, runtime.metrics, dispatcher, lambda: runtime.notifiers
    )
    # Before any request: the guards' state (kill switch, breakers) is in force from the start.
    await runtime.containment.start()
    tasks = [
        asyncio.create_task(runtime.containment.run_forever(), name="containment"),
        asyncio.create_task(runtime.escalator.run_forever(), name="escalator"),
        asyncio.create_task(runtime.dispatcher.run_forever(), name="dispatcher"),
        asyncio.create_task(reconciler.run_forever(), name="reconciler"),
    ]
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for notifier in runtime.notifiers.values():
        with contextlib.suppress(Exception):
            await notifier.close()


async def _sighup_reload(app: web.Application) -> AsyncIterator[None]:
    runtime = app[RUNTIME]
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[object]] = set()

    def on_sighup() -> None:
        task = loop.create_task(runtime.reload(), name="reload")
        pending.add(task)
        task.add_done_callback(pending.discard)

    try:
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
    except (NotImplementedError, RuntimeError):  # not the main thread (tests), or no signals
        yield
        return
    if EARLY_SIGHUP.is_set():  # sent while starting: the files may have changed since read
        EARLY_SIGHUP.clear()
        on_sighup()
    yield
    loop.remove_signal_handler(signal.SIGHUP)
    for task in pending:
        task.cancel()

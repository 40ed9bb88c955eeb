"""The dead-man switch: a heartbeat that stops arriving opens an incident.

A heartbeat (a rule's ``heartbeat: true``, e.g. Prometheus' always-firing ``Watchdog``)
never opens an incident while it arrives. Its silence is the alarm: when Prometheus,
Alertmanager or the path from them to this daemon is down, no other alert arrives either.
With ``heartbeat_timeout`` in its rule, a heartbeat not received firing for that long raises
a ``HeartbeatMissing`` alert of our own, stored and classified like any other (the shipped
rule makes it P1): an incident, pages, escalation. The heartbeat's return resolves it, and
the people paged get the recovery notice.

Every heartbeat alert (fingerprint) seen is watched, so one Prometheus of several going
quiet is noticed. Silence counts only while this daemon could hear: the time it was down
(from its stop, or after a crash its last check, to its start) or asleep (a suspend of the
host between two checks) is not the heartbeat's. A heartbeat retired on purpose
is forgotten with ``responder heartbeats --forget FINGERPRINT`` (``DELETE
/api/v1/heartbeats/{fingerprint}``) until it is heard again.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from responder.api import authenticated, iso
from responder.classify import Classifier, format_duration
from responder.classify.rules import MAX_HEARTBEAT_TIMEOUT
from responder.ingest import json_error, store_own_alert
from responder.log import STORE_ERROR_LOG_EVERY_S, ThrottledLog, fields
from responder.model import Alert, AlertStatus, frozen_labels
from responder.runtime import RUNTIME, Runtime, in_background
from responder.store import HeartbeatRow, StoreError

log = logging.getLogger("responder.heartbeats")

MISSING_ALERTNAME = "HeartbeatMissing"
# Detection comes at most this long after the timeout. Each check also re-sends the open
# HeartbeatMissing alerts to the store, as Alertmanager re-sends its own, so that the stale
# sweep never takes a silence that lasts for a day as resolved.
CHECK_EVERY = timedelta(seconds=30)
# A heartbeat forgotten by mistake that still arrives this long after the forget is watched
# again. Shorter would take the copies still on their way for a return: Alertmanager keeps
# re-sending a retired Prometheus' Watchdog until its end time, about 4 minutes.
FORGET_SETTLES = timedelta(minutes=10)
# After a start, a heartbeat whose silence reaches past its timeout once the daemon's own
# downtime is counted too has at most this long to arrive (its timeout, if shorter): a
# repeat that fell due while the daemon was down failed, and Alertmanager sends it again on
# every group_interval tick (5m by default) until it goes through. Without it, a 13h timeout
# left a dead pipeline unpaged for 13 hours after every restart.
START_GRACE = timedelta(minutes=30)
# A check that finds the wall clock this much further on (or back) than the daemon's
# elapsed time since the last check: the host was suspended, or its clock was stepped (an
# NTP step at boot). Nothing was heard in a suspend, and a step forward is time that never
# passed: either way the gap counts as downtime, not as a heartbeat's silence.
CLOCK_JUMP = timedelta(seconds=60)
# A downtime at least this long is worth a warning at start (a restart is a few seconds).
NOTABLE_DOWNTIME = timedelta(minutes=5)


class HeartbeatState(enum.StrEnum):
    ALIVE = "alive"
    MISSING = "missing"
    UNWATCHED = "unwatched"  # the rules in force give it no heartbeat_timeout
    FORGOTTEN = "forgotten"  # retired by hand, not heard since


@dataclass(frozen=True, slots=True)
class HeartbeatStatus:
    row: HeartbeatRow
    timeout: timedelta | None
    state: HeartbeatState


def judge(
    row: HeartbeatRow,
    timeout: timedelta | None,
    now: datetime,
    downtimes: Sequence[tuple[datetime, datetime]] = (),
) -> HeartbeatState:
    """Whether a heartbeat is alive, missing or not watched, now. ``downtimes``: when the
    daemon was down (from its last check to its next start). Silence counts only while it
    listened: restarts, however many and however close, neither hide a dead pipeline's
    silence nor add their downtime to it. But a heartbeat overdue in wall time (downtime
    counted) is missing once ``START_GRACE`` (or its timeout) has passed since the last
    start without it: Alertmanager re-sends what it could not deliver meanwhile."""
    if timeout is None:
        return HeartbeatState.UNWATCHED
    firing = row.heard_firing
    # Copies of the same episode still on their way after a forget are no return: only one
    # past the settling time is (a new episode clears the forget as it is stored).
    if row.forgotten_at is not None and (
        firing is None or firing <= row.forgotten_at + FORGET_SETTLES
    ):
        return HeartbeatState.FORGOTTEN
    if row.missing_since is not None:
        # Missing until a firing copy arrives after it was found missing, or a reload gives
        # it a timeout longer than its silence (a timeout shorter than Alertmanager's repeat
        # interval, corrected); a restart of the daemon meanwhile changes nothing.
        back = firing is not None and (firing > row.missing_since or now - firing <= timeout)
        return HeartbeatState.ALIVE if back else HeartbeatState.MISSING
    heard = row.alive_until
    since = row.first_seen if heard is None else heard
    silence = now - since
    deaf_until = since  # downtimes may overlap (a clock stepped back): count each moment once
    for down_from, up_at in sorted(downtimes):
        start, end = max(down_from, deaf_until), min(up_at, now)
        if end > start:
            silence -= end - start
            deaf_until = end
    if silence > timeout:
        return HeartbeatState.MISSING
    started = max((up_at for _, up_at in downtimes if up_at <= now), default=None)
    if started is not None and now - since > timeout and now - started >= min(timeout, START_GRACE):
        return HeartbeatState.MISSING  # overdue in wall time, and not re-sent since the start
    return HeartbeatState.ALIVE


MISSING_PREFIX = "heartbeat-missing:"


def missing_fingerprint(heartbeat_fingerprint: str) -> str:
    return MISSING_PREFIX + heartbeat_fingerprint


def heartbeat_rules_signature(classifier: Classifier) -> str:
    """What decides which alerts are heartbeats: the rules that set ``heartbeat``, in order.
    Unchanged, the firing alerts need no new look after a start or reload."""
    deciding = [
        (r.name, r.matchers, r.heartbeat) for r in classifier.rules if r.heartbeat is not None
    ]
    return hashlib.sha256(repr(deciding).encode()).hexdigest()


def missing_alert(
    row: HeartbeatRow, timeout: timedelta | None, since: datetime, ended: datetime | None
) -> Alert:
    """The HeartbeatMissing alert for a heartbeat: firing from ``since``, or resolved at
    ``ended``. It carries the heartbeat's labels (which Prometheus, which cluster) except
    its name and its severity label (Watchdog's is "none"): the rules decide the severity.
    Its text depends only on the heartbeat's state, so each re-send is a plain repeat."""
    name = row.labels.get("alertname", "heartbeat")
    labels = {k: v for k, v in row.labels.items() if k not in ("alertname", "severity")}
    labels["alertname"] = MISSING_ALERTNAME
    labels["heartbeat"] = name
    last = (
        f"last heard at {iso(row.alive_until)}"
        if row.alive_until is not None
        else "not heard since it was first seen"
    )
    silence = f" for {format_duration(int(timeout.total_seconds()))}" if timeout else ""
    annotations = {
        "summary": f"{name} not heard{silence}",
        "description": (
            f"The heartbeat {name} ({row.fingerprint}) was {last}. Prometheus, Alertmanager "
            "or the path from them to responder may be down: other alerts may not arrive "
            "either. If it was retired on purpose: responder heartbeats --forget "
            f"{row.fingerprint}"
        ),
    }
    return Alert(
        fingerprint=missing_fingerprint(row.fingerprint),
        status=AlertStatus.FIRING if ended is None else AlertStatus.RESOLVED,
        labels=frozen_labels(labels),
        annotations=frozen_labels(annotations),
        starts_at=since,
        ends_at=ended,
    )


def _tell_downtime(downtimes: Sequence[tuple[datetime, datetime]], now: datetime) -> None:
    """Log the downtime that ends with this start (none at the first start ever)."""
    ended = [down_from for down_from, up_at in downtimes if up_at == now]
    if not ended or ended[0].timestamp() <= 0:  # from 1970: no check was ever recorded
        return
    down_for = now - ended[0]
    notable = down_for >= NOTABLE_DOWNTIME
    log.log(
        logging.WARNING if notable else logging.INFO,
        "this daemon was not running"
        + (
            "; Alertmanager re-sends what it could not deliver meanwhile, and escalation "
            "steps that fell due go out now"
            if notable
            else ""
        ),
        extra=fields(since=iso(ended[0]), until=iso(now), down_s=round(down_for.total_seconds())),
    )


class HeartbeatWatch:
    """Checks every heartbeat on the shared clock; raises and resolves HeartbeatMissing."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._downtimes: list[tuple[datetime, datetime]] = []
        self._adopted_for: str | None = None  # the heartbeat rules the last adoption used
        self._lock = asyncio.Lock()  # one check or forget at a time
        # The last check (or the start): the wall clock's time and the elapsed clock's.
        self._last_check: tuple[datetime, float] | None = None

    @property
    def listening(self) -> bool:
        """The downtime before this start is known: checks may judge."""
        return self._last_check is not None

    async def start_listening(self) -> None:
        clock = self._runtime.clock
        async with self._lock:  # not overwritten by a retention pass that read before it
            now, elapsed = clock.now(), clock.elapsed()
            store = self._runtime.store
            self._downtimes, self._adopted_for = await store.heartbeat_watch_started(
                now, MAX_HEARTBEAT_TIMEOUT
            )
            self._last_check = (now, elapsed)
        _tell_downtime(self._downtimes, now)

    async def forget_old_downtimes(self) -> int:
        """Retention, while running: the downtimes no heartbeat's silence can reach back over
        any more go from the store and from here, as at a start. Returns how many went."""
        async with self._lock:
            deleted, self._downtimes = await self._runtime.store.heartbeat_watch_forget(
                self._runtime.clock.now(), MAX_HEARTBEAT_TIMEOUT
            )
        return deleted

    async def _count_clock_jump(self) -> None:
        """A suspend or a step of the wall clock since the last check becomes downtime."""
        clock = self._runtime.clock
        now, elapsed = clock.now(), clock.elapsed()
        if self._last_check is None:
            return
        last, last_elapsed = self._last_check
        jumped = (now - last) - timedelta(seconds=elapsed - last_elapsed)
        if jumped > CLOCK_JUMP:
            # Stored first: a failed write leaves the jump to the next check.
            await self._runtime.store.heartbeat_watch_deaf(last, now)
            self._downtimes.append((last, now))
            log.warning(
                "the wall clock moved on further than this daemon's time since the last check "
                "(the host was suspended or its clock was set forward); heartbeats' silence "
                "does not count that time, and escalation steps that fell due in it go out now",
                extra=fields(since=iso(last), now=iso(now), jumped_s=round(jumped.total_seconds())),
            )
        elif jumped < -CLOCK_JUMP:
            log.warning(
                "the wall clock was set back since the last check; escalation steps wait for "
                "their times on the new clock",
                extra=fields(since=iso(last), now=iso(now), back_s=round(-jumped.total_seconds())),
            )
        self._last_check = (now, elapsed)

    def _timeout(self, labels: Mapping[str, str], now: datetime) -> timedelta | None:
        c = self._runtime.snapshot.classifier.classify(labels, now)  # the rules now in force
        if not c.heartbeat or c.heartbeat_timeout_s is None:
            return None
        return timedelta(seconds=c.heartbeat_timeout_s)

    async def statuses(self) -> list[HeartbeatStatus]:
        now = self._runtime.clock.now()
        result = []
        for row in await self._runtime.store.heartbeats():
            timeout = self._timeout(row.labels, now)
            state = judge(row, timeout, now, self._downtimes)
            result.append(HeartbeatStatus(row, timeout, state))
        return result

    async def check(self) -> None:
        """One pass: raise (or re-send) HeartbeatMissing for the missing heartbeats, resolve
        it for those back or no longer watched."""
        async with self._lock:
            await self._count_clock_jump()
            await self._adopt()
            statuses = await self.statuses()
            self._count(statuses)
            for status in statuses:
                row = status.row
                if status.state is HeartbeatState.MISSING:
                    await self._raise(status)
                elif row.missing_since is not None:
                    await self._clear(status)
                if (
                    row.forgotten_at is not None
                    and row.heard_firing is not None
                    and row.heard_firing - row.forgotten_at > FORGET_SETTLES
                ):
                    await self._runtime.store.remember_heartbeat(row.fingerprint, row.forgotten_at)
            await self._runtime.store.heartbeat_watch_checked(self._runtime.clock.now())

    async def forget(self, fingerprint: str) -> HeartbeatRow | None:
        async with self._lock:
            now = self._runtime.clock.now()
            row = await self._runtime.store.forget_heartbeat(fingerprint, now)
            if row is None:
                return None
            log.warning("heartbeat forgotten", extra=fields(fingerprint=fingerprint))
            if row.missing_since is not None:
                # Resolved now; should that fail, the mark stays and the next check does it.
                await self._clear(HeartbeatStatus(row, None, HeartbeatState.FORGOTTEN))
            return row

    async def _adopt(self) -> None:
        """Rules new since the last look (the start, a reload) may call alerts that are
        firing already heartbeats: watch them. Their repeats are never classified."""
        classifier = self._runtime.snapshot.classifier
        signature = heartbeat_rules_signature(classifier)
        if signature == self._adopted_for:
            return
        now = self._runtime.clock.now()
        found = []
        firing = await self._runtime.store.unwatched_firing_alerts(MISSING_PREFIX)
        for index, (fingerprint, labels) in enumerate(firing):
            if classifier.classify(labels, now).heartbeat:
                found.append((fingerprint, labels))
            if index % 200 == 199:
                await asyncio.sleep(0)  # a storm's worth of firing alerts: let requests in
        await self._runtime.store.watch_heartbeats(found, now, signature)
        if found:
            log.info("firing alerts now watched as heartbeats", extra=fields(count=len(found)))
        self._adopted_for = signature

    async def _raise(self, status: HeartbeatStatus) -> None:
        row = status.row
        since = row.missing_since or self._runtime.clock.now()
        if row.missing_since is None:
            # Marked before the alert is stored: after a crash between the two, the
            # heartbeat is still missing and the next check stores the same alert.
            await self._runtime.store.heartbeat_missing(row.fingerprint, since)
            log.error(
                "heartbeat missing",
                extra=fields(
                    fingerprint=row.fingerprint,
                    alertname=row.labels.get("alertname", ""),
                    last_heard=iso(row.alive_until),
                ),
            )
        alert = missing_alert(row, status.timeout, since, ended=None)
        await store_own_alert(self._runtime, alert, _group_key(row))

    async def _clear(self, status: HeartbeatStatus) -> None:
        row = status.row
        assert row.missing_since is not None
        # Never before its start, even if the wall clock stepped back: the store would not
        # take the resolve as this episode's.
        ended = max(self._runtime.clock.now(), row.missing_since)
        alert = missing_alert(row, status.timeout, row.missing_since, ended=ended)
        await store_own_alert(self._runtime, alert, _group_key(row))
        await self._runtime.store.heartbeat_missing(row.fingerprint, None)
        message = {
            HeartbeatState.ALIVE: "heartbeat back",
            HeartbeatState.FORGOTTEN: "heartbeat forgotten: its HeartbeatMissing resolved",
        }.get(status.state, "heartbeat no longer watched")
        log.warning(message, extra=fields(fingerprint=row.fingerprint))

    def _count(self, statuses: list[HeartbeatStatus]) -> None:
        gauge = self._runtime.metrics.heartbeats
        for state in HeartbeatState:
            gauge.labels(state.value).set(sum(1 for s in statuses if s.state is state))


def _group_key(row: HeartbeatRow) -> str:
    """Each missing heartbeat is an incident of its own (unless a rule's group_by joins
    them)."""
    return f"responder:heartbeat:{row.fingerprint}"


HEARTBEAT_WATCH = web.AppKey("heartbeat_watch", HeartbeatWatch)


async def watch_heartbeats(app: web.Application) -> AsyncIterator[None]:
    """The dead-man switch's loop, every CHECK_EVERY on the shared clock."""
    runtime = app[RUNTIME]
    watch = app[HEARTBEAT_WATCH]

    async def start() -> bool:
        try:
            await watch.start_listening()
        except Exception:  # the daemon still starts: webhooks and pages matter more
            log.exception("heartbeat watch cannot start; will try again")
            return False
        return True

    started = await start()  # before the first request: the API judges with it too

    async def loop() -> None:
        # Nothing is judged before the downtime is known: without it, every heartbeat
        # would count the time the daemon was down as silence.
        while not started and not await start():
            await runtime.clock.sleep_until(runtime.clock.now() + CHECK_EVERY)
        store_failing = ThrottledLog(log, logging.ERROR, STORE_ERROR_LOG_EVERY_S)
        while True:
            now = runtime.clock.now()
            try:
                await watch.check()
            except StoreError as exc:  # a full disk, a broken database: one line a while
                store_failing.log("heartbeat check failed; will try again", error=str(exc))
            except Exception:
                log.exception("heartbeat check failed; will try again")
            await runtime.clock.sleep_until(now + CHECK_EVERY)

    async with in_background(loop(), "heartbeat-watch"):
        yield
    if watch.listening:
        # A clean stop: the watch listened until now, so the next start's downtime (its log
        # line, the heartbeats' silence forgiven) begins here, not at the last check.
        with contextlib.suppress(StoreError):
            await runtime.store.heartbeat_watch_checked(runtime.clock.now())


def _document(status: HeartbeatStatus) -> dict[str, Any]:
    row = status.row
    return {
        "fingerprint": row.fingerprint,
        "labels": dict(row.labels),
        "state": status.state.value,
        "timeoutSeconds": None if status.timeout is None else int(status.timeout.total_seconds()),
        "firstSeen": iso(row.first_seen),
        "lastHeard": iso(row.alive_until),
        # Shown while missing; a heartbeat back keeps its mark until the check resolves it.
        "missingSince": iso(row.missing_since) if status.state is HeartbeatState.MISSING else None,
    }


@authenticated
async def list_heartbeats(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/heartbeats: every heartbeat watched, its state and when it was heard."""
    try:
        statuses = await request.app[HEARTBEAT_WATCH].statuses()
    except StoreError as exc:
        return json_error(503, f"store unavailable: {exc}")
    return web.json_response({"status": "ok", "data": [_document(s) for s in statuses]})


@authenticated
async def forget_heartbeat(request: web.Request) -> web.StreamResponse:
    """DELETE /api/v1/heartbeats/{fingerprint}: stop watching a retired heartbeat; its
    HeartbeatMissing incident, if any, resolves. Heard again, it is watched again."""
    fingerprint = request.match_info["fingerprint"]
    try:
        row = await request.app[HEARTBEAT_WATCH].forget(fingerprint)
    except StoreError as exc:
        return json_error(503, f"store unavailable: {exc}")
    if row is None:
        return json_error(404, f"no heartbeat {fingerprint}")
    return web.json_response({"status": "ok", "data": {"fingerprint": fingerprint}})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/v1/heartbeats", list_heartbeats)
    router.add_delete("/api/v1/heartbeats/{fingerprint}", forget_heartbeat)

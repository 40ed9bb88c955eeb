"""The front door: Alertmanager's webhook, authenticated, bounded, validated, stored, answered.

A webhook is answered 200 only after its alerts are committed (durable before 2xx), 503 when
the store cannot take them (Alertmanager retries), and 4xx with the reason for anything that
is not a valid, authenticated webhook. The handler itself does nothing slow; in an alert
storm it may wait (bounded) for its turn and for the escalation engine (intake.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError
from aiohttp.web_protocol import RequestPayloadError

from responder.incident import incident_key
from responder.log import fields
from responder.model import Alert, AlertStatus, Classification
from responder.runtime import BODY_LIMIT, RUNTIME, Runtime
from responder.store import IncomingAlert, IngestOutcome, StoreError
from responder.webhook import PayloadError, parse_webhook

log = logging.getLogger("responder.ingest")

# Alertmanager gives up on a webhook after 10 s and sends it again; answering 503 a little
# before that is better than being cancelled (FACTS.md).
STORE_DEADLINE_S = 8.0
# After the store, a webhook that opened incidents waits for the escalation engine's next
# pass (back-pressure, intake.py): at most this long, and never past the store's deadline
# plus a second; then it answers 200 anyway. A pass over a large wave of due steps can take
# longer, and Alertmanager must not be held near its own timeout for that.
ENGINE_WAIT_S = 2.0
ANSWER_AFTER_STORE_S = 1.0
# A client gets this long to send its body once its headers are in (Alertmanager's own
# timeout is 10 s), then 408. aiohttp sets no limit of its own: a body trickled a byte at a
# time would hold its connection and its handler forever, and a few thousand such would take
# every file descriptor the daemon has.
BODY_TIMEOUT_S = 30.0
# Outcomes after which an incident (and containment) has something to do.
_CHANGES_INCIDENTS = frozenset({IngestOutcome.NEW, IngestOutcome.REVIVED, IngestOutcome.RESOLVED})
# The receiver recorded for alerts the daemon raises itself.
OWN_RECEIVER = "responder"


def _incoming(
    runtime: Runtime,
    alerts: Sequence[Alert],
    group_key: str,
    receiver: str,
    now: datetime,
    *,
    own: bool = False,
) -> list[IncomingAlert]:
    """The alerts to store. Each is classified when the store first needs it: a repeat of a
    firing alert, what Alertmanager sends most, never is. The daemon's ``own`` alerts are
    never heartbeats, whatever a rule says: HeartbeatMissing must open an incident."""
    classifier = runtime.snapshot.classifier  # the rules in force now, even after a reload

    def decide(alert: Alert) -> tuple[Classification, str | None]:
        classification = classifier.classify(alert.labels, now)
        if own and classification.heartbeat:
            classification = replace(classification, heartbeat=False, heartbeat_timeout_s=None)
        return classification, incident_key(classification, alert.labels, group_key)

    source = OWN_RECEIVER if own else "alertmanager"
    return [
        IncomingAlert(alert, group_key, receiver, decide=decide, source=source) for alert in alerts
    ]


def _stored(
    runtime: Runtime, incoming: Sequence[IncomingAlert], outcomes: Sequence[IngestOutcome]
) -> dict[str, int]:
    """After the commit: count the outcomes, tell the metrics which alerts started firing
    and containment that it has work. Returns the counts by outcome."""
    metrics = runtime.metrics.webhook
    counts: dict[str, int] = {}
    contain = False
    for item, stored in zip(incoming, outcomes, strict=True):
        counts[stored] = counts.get(stored, 0) + 1
        if stored in _CHANGES_INCIDENTS:
            c = item.decided()
            # A resolve starts the hold-down of its runs' lifts, also when a reload has
            # since taken the actions out of its rule: the lift lane must look again.
            contain = contain or bool(c.actions) or stored is IngestOutcome.RESOLVED
            if stored is not IngestOutcome.RESOLVED:
                metrics.started_firing(c)
    if contain:
        runtime.wake_containment()
    return counts


async def store_own_alert(runtime: Runtime, alert: Alert, group_key: str) -> IngestOutcome:
    """Store an alert the daemon raises itself (HeartbeatMissing) as if Alertmanager had
    sent it: classified by the rules, an incident, escalation and containment. Raises
    StoreError when the store cannot take it."""
    now = runtime.clock.now()
    incoming = _incoming(runtime, (alert,), group_key, OWN_RECEIVER, now, own=True)
    escalation = runtime.snapshot.escalation
    outcomes = await runtime.store.ingest(
        incoming,
        now,
        reopen_within=escalation.reopen_within,
        on_due=runtime.wake_escalator,
        default_policy=escalation.default_policy,
    )
    _stored(runtime, incoming, outcomes)
    return outcomes[0]


async def read_body(request: web.Request) -> bytes:
    """The request's body, within ``BODY_TIMEOUT_S``; raises ``TimeoutError`` after it."""
    if request.content.is_eof():  # all of it arrived with the headers (nearly always)
        return await request.read()
    async with asyncio.timeout(BODY_TIMEOUT_S):
        return await request.read()


def json_error(status: int, message: str, **extra: str) -> web.Response:
    return web.json_response({"status": "error", "error": message}, status=status, headers=extra)


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """An API call's JSON object body, ``{}`` when it has none; a 400 (or 408) otherwise."""
    if not request.can_read_body:
        return {}
    try:
        raw = await read_body(request)
    except TimeoutError:
        raise _http_error(web.HTTPRequestTimeout, "body not received in time") from None
    try:
        # RecursionError: nested about 1,000 deep
        parsed = json.loads(raw or b"{}")
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise _http_error(web.HTTPBadRequest, "body: malformed JSON") from None
    if not isinstance(parsed, dict):
        raise _http_error(web.HTTPBadRequest, "body: expected a JSON object")
    return parsed


def _http_error(kind: type[web.HTTPException], message: str) -> web.HTTPException:
    body = json.dumps({"status": "error", "error": message})
    return kind(text=body, content_type="application/json")


def unauthorized(runtime: Runtime) -> web.Response:
    return json_error(
        401,
        "missing or wrong credentials",
        **{"WWW-Authenticate": runtime.authenticator.challenge()},
    )


async def receive_alertmanager(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    metrics = runtime.metrics.webhook
    if not runtime.authenticator.check(request.headers.get("Authorization")):
        metrics.request("unauthorized")
        return unauthorized(runtime)
    # Alertmanager sends exactly this; anything else is parsed (parameters, case).
    if (
        request.headers.get("Content-Type") != "application/json"
        and request.content_type != "application/json"
    ):
        metrics.request("unsupported_media_type")
        # aiohttp reads a missing header as application/octet-stream: say what was sent.
        sent = request.content_type if "Content-Type" in request.headers else "none"
        return json_error(415, f"expected Content-Type application/json, got {sent}")
    limit = request.app[BODY_LIMIT]
    if request.content_length is not None and request.content_length > limit:
        metrics.request("too_large")
        return json_error(413, f"body larger than {limit} bytes")
    try:
        body = await read_body(request)
    except TimeoutError:
        metrics.request("timeout")
        return json_error(408, f"body not received within {BODY_TIMEOUT_S:g} s")
    except web.HTTPRequestEntityTooLarge:
        metrics.request("too_large")
        return json_error(413, f"body larger than {limit} bytes")
    except (RequestPayloadError, ContentEncodingError) as exc:
        # A body that does not decode as its Content-Encoding says (not gzip at all, cut off).
        metrics.request("bad_request")
        return json_error(400, f"body could not be read: {exc}")
    loop = asyncio.get_running_loop()
    # On the loop's clock, from the body's arrival: a wait for a turn (intake.py) counts
    # against the deadline, because Alertmanager's own 10 s timeout does too.
    started = loop.time()
    deadline = started + STORE_DEADLINE_S
    try:
        message = parse_webhook(body)
    except PayloadError as exc:
        metrics.request("bad_request")
        log.warning("webhook rejected", extra=fields(reason=str(exc), peer=request.remote))
        return json_error(400, str(exc))

    if message.repairs:
        log.warning(
            "alert text mended to keep the alerts",
            extra=fields(repairs=list(message.repairs[:20]), peer=request.remote),
        )
    alerts = message.alerts
    firing = [a.status for a in alerts].count(AlertStatus.FIRING)
    intake = runtime.intake
    if not intake.try_acquire(firing):
        await intake.acquire(firing)
    try:
        now = runtime.clock.now()  # after any wait: an incident opens when it is stored
        incoming = _incoming(runtime, alerts, message.group_key, message.receiver, now)
        due = False

        def incidents_due() -> None:
            nonlocal due
            due = True
            runtime.wake_escalator()

        escalation = runtime.snapshot.escalation
        try:
            outcomes = await runtime.store.ingest(
                incoming,
                now,
                reopen_within=escalation.reopen_within,
                on_due=incidents_due,
                deadline=deadline,
                default_policy=escalation.default_policy,
            )
        except StoreError as exc:
            metrics.request("unavailable")
            runtime.unstored_webhooks.log(
                "webhook not stored", reason=str(exc) or "store timed out"
            )
            return json_error(503, "alerts could not be stored; retry later")
        metrics.observe_ingest(loop.time() - started)
        counts = _stored(runtime, incoming, outcomes)
        if due and runtime.escalator is not None:
            # Hold our places until the engine has seen the new incidents (intake.py). The
            # alerts are stored: running out of time here still answers 200.
            with contextlib.suppress(TimeoutError):
                wait_until = min(deadline + ANSWER_AFTER_STORE_S, loop.time() + ENGINE_WAIT_S)
                async with asyncio.timeout_at(wait_until):
                    await runtime.escalator.next_pass()
    finally:
        intake.release(firing)

    metrics.accepted(counts, firing=firing, resolved=len(alerts) - firing)
    if message.truncated_alerts:
        log.warning(
            "Alertmanager truncated the group; raise max_alerts or expect missing alerts",
            extra=fields(group_key=message.group_key, truncated=message.truncated_alerts),
        )
    if message.repairs:
        answer = {"status": "ok", "alerts": len(outcomes), "outcomes": counts}
        return web.json_response({**answer, "repairs": list(message.repairs)})
    return _accepted(len(outcomes), counts)


# The few distinct answers, encoded once each (a 1-alert webhook has about a dozen).
_ANSWERS: dict[tuple[int, tuple[tuple[str, int], ...]], bytes] = {}
_MAX_ANSWERS = 1024


def _accepted(alerts: int, counts: dict[str, int]) -> web.Response:
    key = (alerts, tuple(counts.items()))
    body = _ANSWERS.get(key)
    if body is None:
        if len(_ANSWERS) >= _MAX_ANSWERS:
            _ANSWERS.clear()
        answer = {"status": "ok", "alerts": alerts, "outcomes": counts}
        body = _ANSWERS[key] = json.dumps(answer).encode()
    return web.Response(body=body, content_type="application/json", charset="utf-8")

"""The front door: Alertmanager's webhook, authenticated, bounded, validated, stored, answered.

A webhook is answered 200 only after its alerts are committed (durable before 2xx), 503 when
the store cannot take them (Alertmanager retries), and 4xx with the reason for anything that
is not a valid, authenticated webhook. The handler itself does nothing slow; in an alert
storm it may wait (bounded) for its turn and for the escalation engine (intake.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime

from aiohttp import web

from responder.clock import monotonic
from responder.incident import incident_key
from responder.log import fields
from responder.model import Alert, AlertStatus, Classification, WebhookMessage
from responder.runtime import RUNTIME, Runtime
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
# Outcomes that mean an alert (re)started firing: what the classification metrics count.
_STARTED_FIRING = frozenset({IngestOutcome.NEW, IngestOutcome.REVIVED})
_CHANGES_INCIDENTS = _STARTED_FIRING | {IngestOutcome.RESOLVED}


def _incoming(runtime: Runtime, message: WebhookMessage, now: datetime) -> list[IncomingAlert]:
    """The alerts to store. Each is classified when the store first needs it: a repeat of a
    firing alert, what Alertmanager sends most, never is."""
    classifier = runtime.snapshot.classifier  # the rules in force now, even after a reload
    group_key = message.group_key

    def decide(alert: Alert) -> tuple[Classification, str | None]:
        classification = classifier.classify(alert.labels, now)
        return classification, incident_key(classification, alert.labels, group_key)

    receiver = message.receiver
    return [IncomingAlert(alert, group_key, receiver, decide=decide) for alert in message.alerts]


def json_error(status: int, message: str, **extra: str) -> web.Response:
    return web.json_response({"status": "error", "error": message}, status=status, headers=extra)


def unauthorized(runtime: Runtime) -> web.Response:
    return json_error(
        401,
        "missing or wrong credentials",
        **{"WWW-Authenticate": runtime.authenticator.challenge()},
    )


async def receive_alertmanager(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    metrics = runtime.metrics
    if not runtime.authenticator.check(request.headers.get("Authorization")):
        metrics.webhook_requests.labels("unauthorized").inc()
        return unauthorized(runtime)
    if request.content_type != "application/json":
        metrics.webhook_requests.labels("unsupported_media_type").inc()
        return json_error(
            415, f"expected Content-Type application/json, got {request.content_type or 'none'}"
        )
    limit = runtime.config.server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        metrics.webhook_requests.labels("too_large").inc()
        return json_error(413, f"body larger than {limit} bytes")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        metrics.webhook_requests.labels("too_large").inc()
        return json_error(413, f"body larger than {limit} bytes")
    started = monotonic()
    # On the loop's clock, from the body's arrival: a wait for a turn (intake.py) counts
    # against it, because Alertmanager's own 10 s timeout does too.
    deadline = asyncio.get_running_loop().time() + STORE_DEADLINE_S
    try:
        message = parse_webhook(body)
    except PayloadError as exc:
        metrics.webhook_requests.labels("bad_request").inc()
        log.warning("webhook rejected", extra=fields(reason=str(exc), peer=request.remote))
        return json_error(400, str(exc))

    firing = sum(1 for a in message.alerts if a.status is AlertStatus.FIRING)
    await runtime.intake.acquire(firing)
    try:
        now = runtime.clock.now()  # after any wait: an incident opens when it is stored
        incoming = _incoming(runtime, message, now)
        due = False

        def incidents_due() -> None:
            nonlocal due
            due = True
            runtime.wake_escalator()

        reopen = runtime.snapshot.escalation.reopen_within
        try:
            outcomes = await runtime.store.ingest(
                incoming, now, reopen_within=reopen, on_due=incidents_due, deadline=deadline
            )
        except StoreError as exc:
            metrics.webhook_outcome("unavailable").inc()
            log.error("webhook not stored", extra=fields(reason=str(exc) or "store timed out"))
            return json_error(503, "alerts could not be stored; retry later")
        metrics.ingest_duration.observe(monotonic() - started)
        if any(
            stored in _CHANGES_INCIDENTS and item.decided().actions
            for item, stored in zip(incoming, outcomes, strict=True)
        ):
            runtime.wake_containment()
        if due and runtime.escalator is not None:
            # Hold our places until the engine has seen the new incidents (intake.py). The
            # alerts are stored: running out of time here still answers 200.
            with contextlib.suppress(TimeoutError):
                loop_now = asyncio.get_running_loop().time()
                wait_until = min(deadline + ANSWER_AFTER_STORE_S, loop_now + ENGINE_WAIT_S)
                async with asyncio.timeout_at(wait_until):
                    await runtime.escalator.next_pass()
    finally:
        runtime.intake.release(firing)

    metrics.webhook_outcome("accepted").inc()
    counts: dict[str, int] = {}
    for item, stored in zip(incoming, outcomes, strict=True):
        counts[stored] = counts.get(stored, 0) + 1
        if stored in _STARTED_FIRING:
            c = item.decided()
            metrics.classified_as(c.severity, c.category).inc()
            if c.rule is None:
                metrics.alerts_unmatched.inc()
    for outcome, count in counts.items():
        metrics.ingested_by_outcome(outcome).inc(count)
    if firing:
        metrics.received_by_status(AlertStatus.FIRING).inc(firing)
    if firing < len(message.alerts):
        metrics.received_by_status(AlertStatus.RESOLVED).inc(len(message.alerts) - firing)
    if message.truncated_alerts:
        log.warning(
            "Alertmanager truncated the group; raise max_alerts or expect missing alerts",
            extra=fields(group_key=message.group_key, truncated=message.truncated_alerts),
        )
    return web.json_response({"status": "ok", "alerts": len(outcomes), "outcomes": counts})

"""Endpoints for operators and Prometheus: metrics, health, readiness, reload."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from responder.api import authenticated
from responder.runtime import REARM_RETRY_S, RUNTIME


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[RUNTIME].metrics.registry
    # The content type carries a charset, which web.Response(content_type=...) refuses.
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def healthy(_request: web.Request) -> web.Response:
    return web.Response(text="responder is healthy.\n")


async def ready(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    if await runtime.store.ping():
        return web.Response(text="responder is ready.\n")
    return web.Response(status=503, text="responder is not ready: the store is unavailable.\n")


@authenticated
async def reload(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    error = await runtime.reload()
    if error is not None:
        return web.json_response({"status": "error", "error": str(error)}, status=400)
    if runtime.rearm_pending:
        # In force but for escalation, which holds off until the re-arm is written: a tool
        # that reloads must not take this for a clean success (the metric reads 0 too).
        message = (
            "config loaded, but the re-arm of the open incidents for the new escalation "
            "policies could not be written (the database refused it); it is retried every "
            f"{REARM_RETRY_S:g} s and escalation waits for it: see the log"
        )
        return web.json_response({"status": "error", "error": message}, status=503)
    answer: dict[str, object] = {"status": "ok"}
    if runtime.restart_needed:
        answer["restartNeeded"] = list(runtime.restart_needed)
    if runtime.config_warnings:
        answer["warnings"] = list(runtime.config_warnings)
    return web.json_response(answer)

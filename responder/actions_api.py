"""Containment through the authenticated API: status, the kill switch, breaker resets.
``responder actions ...`` uses these."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from responder.api import authenticated, iso
from responder.contain.guards import GuardState
from responder.ingest import json_error, read_json_object
from responder.runtime import RUNTIME, Runtime
from responder.store import StoreError
from responder.store.base import RunRow
from responder.store.sqlite_incidents import from_us


def _containment(runtime: Runtime) -> Any:
    if runtime.containment is None:
        raise web.HTTPServiceUnavailable(text="containment is not running")
    return runtime.containment


def _text(body: dict[str, Any], key: str, default: str | None = None) -> str:
    value = body.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise web.HTTPBadRequest(text=f"{key}: expected non-empty text")
    return value.strip()[:500]


def _undo_state(run: RunRow) -> str | None:
    """A lift held for another alert waits like any other lift; the API says why it waits."""
    if run.undo_state == "wait" and (run.undo or {}).get("held"):
        return "held"
    return run.undo_state


def _open_action_breakers(state: GuardState) -> list[dict[str, Any]]:
    """The breakers open across targets (a reset one is kept only to count from its reset)."""
    return [b for b in state.to_json()["action_breakers"] if b["opened_at"] is not None]


@authenticated
async def status(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/actions: the kill switch, running actions, open breakers, recent runs."""
    runtime = request.app[RUNTIME]
    state = _containment(runtime).state
    try:
        runs = await runtime.store.action_runs(50)
    except StoreError as exc:
        return json_error(503, f"store unavailable: {exc}")
    catalog = runtime.snapshot.actions
    data = {
        "paused": state.kill_switch.engaged,
        "killSwitch": state.to_json()["kill_switch"],
        "dryRun": runtime.snapshot.containment.dry_run,
        "actions": sorted(catalog.actions),
        "running": [r for r in state.to_json()["runs"] if r["outcome"] == "running"],
        "breakers": state.to_json()["breakers"],
        "actionBreakers": _open_action_breakers(state),
        "recent": [
            {
                "runId": r.run_id,
                "action": r.action,
                "target": r.target,
                "state": r.state,
                "outcome": r.outcome,
                "incident": r.incident_id,
                "startedAt": iso(from_us(r.started_at)),
                "undo": _undo_state(r),
            }
            for r in runs
        ],
    }
    return web.json_response({"status": "ok", "data": data})


@authenticated
async def pause(request: web.Request) -> web.StreamResponse:
    """POST /api/v1/actions/pause {"reason": "...", "by": "alice"}: the kill switch."""
    runtime = request.app[RUNTIME]
    body = await read_json_object(request)
    state = await _containment(runtime).pause(_text(body, "reason"), _text(body, "by", "api"))
    return web.json_response({"status": "ok", "data": state.to_json()["kill_switch"]})


@authenticated
async def resume(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    body = await read_json_object(request)
    containment = _containment(runtime)
    was_paused = containment.state.kill_switch.engaged
    state = await containment.resume(_text(body, "by", "api"))
    document = {"status": "ok", "data": state.to_json()["kill_switch"], "changed": was_paused}
    return web.json_response(document)


@authenticated
async def reset(request: web.Request) -> web.StreamResponse:
    """POST /api/v1/actions/reset {"action": "restart-web", "target": "unit=nginx.service"};
    without a target, the action's breaker across targets."""
    runtime = request.app[RUNTIME]
    body = await read_json_object(request)
    action = _text(body, "action")
    target = _text(body, "target") if "target" in body else None
    state = await _containment(runtime).reset(action, target, _text(body, "by", "api"))
    if state is None:
        where = "across targets" if target is None else f"on {target}"
        return json_error(
            404, f"no open breaker for {action} {where}; `responder actions status` lists them"
        )
    data = {
        "breakers": state.to_json()["breakers"],
        "actionBreakers": _open_action_breakers(state),
    }
    return web.json_response({"status": "ok", "data": data})


@authenticated
async def lift(request: web.Request) -> web.StreamResponse:
    """POST /api/v1/actions/lift {"run": "<run id>", "by": "alice"}: undo a run's change now,
    whatever its lift waits for (the alert's resolve, a hold-down, another alert)."""
    runtime = request.app[RUNTIME]
    body = await read_json_object(request)
    asked = _text(body, "run")
    try:
        run_id, refused = await _containment(runtime).lift(asked, _text(body, "by", "api"))
    except StoreError as exc:
        return json_error(503, f"store unavailable: {exc}")
    if refused is not None:
        return _refused(asked, run_id, refused)
    data = {"run": run_id, "lift": "due now; the incident's timeline shows its outcome"}
    return web.json_response({"status": "ok", "data": data}, status=202)


@authenticated
async def lifted(request: web.Request) -> web.StreamResponse:
    """POST /api/v1/actions/lifted {"run": "<run id>", "reason": "...", "by": "alice"}: the
    run's change is gone (removed by hand, or its lift can never succeed): its lift ends as
    ``removed_by_hand`` and nothing runs. Unlike ``lift``, which runs the undo again."""
    runtime = request.app[RUNTIME]
    body = await read_json_object(request)
    asked, reason, by = _text(body, "run"), _text(body, "reason"), _text(body, "by", "api")
    try:
        answer = await _containment(runtime).removed_by_hand(asked, by, reason)
    except StoreError as exc:
        return json_error(503, f"store unavailable: {exc}")
    if answer.refused is not None:
        return _refused(asked, answer.run_id, answer.refused)
    run = answer.run
    assert run is not None  # recorded (now or before)
    removed = (run.undo or {}).get("removed") or {}
    data = {
        "run": run.run_id,
        "action": run.action,
        "target": run.target,
        "undo": run.undo_state,
        "by": removed.get("by"),
        "reason": removed.get("reason"),
        "at": iso(from_us(int(removed["at"]))) if removed.get("at") else None,
        "liftAlert": (run.undo or {}).get("alerted") is not None,
    }
    return web.json_response({"status": "ok", "changed": answer.changed, "data": data})


def _refused(asked: str, run_id: str, refused: str) -> web.StreamResponse:
    """A lift asked for (or recorded) that cannot be: 404 for no run, else 409."""
    if refused == "no such run":
        # Fewer than 8 characters never match a start of an id (sqlite_actions._find_run).
        short = "" if len(asked.strip()) >= 8 else " (give its id, or 8 or more of its start)"
        return json_error(
            404, f"no run {asked}{short}; `responder actions status` lists recent runs"
        )
    return json_error(409, f"run {run_id}: {refused}")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/v1/actions", status)
    router.add_post("/api/v1/actions/pause", pause)
    router.add_post("/api/v1/actions/resume", resume)
    router.add_post("/api/v1/actions/reset", reset)
    router.add_post("/api/v1/actions/lift", lift)
    router.add_post("/api/v1/actions/lifted", lifted)

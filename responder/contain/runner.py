"""The action runner: prepare (validate and render, nothing runs), then execute and record.

``ActionRunner.prepare`` binds an alert's labels and annotations to the action's declared
parameters and renders the exact argv or HTTP request; it is pure and returns a
``PreparedRun`` or a ``ParamRejected``. The engine records "run started" in the store and only
then calls ``execute``, so a restart finds the run recorded and never blindly repeats it.
Processes start with ``create_subprocess_exec`` (argv only, never a shell), stdin from
/dev/null, a minimal environment and a session of their own, so a timeout kills the whole
process group (SIGTERM, then SIGKILL). Output is captured up to a bound and the rest counted and
dropped, secrets are redacted from everything recorded, and ``RunResult`` holds all that the
audit needs: the rendered request, the parameters and their origin, each attempt's status,
duration and output, the check and the undo plan.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import aiohttp
import jinja2
import yarl

from responder import limits
from responder.clock import Clock, monotonic
from responder.contain import builtins, evidence
from responder.contain.catalog import (
    Action,
    BlockAddressSpec,
    CaptureEvidenceSpec,
    EnvValue,
    ExecSpec,
    HttpSpec,
    Kind,
    SystemdRestartSpec,
    Template,
)
from responder.contain.orphans import ProcessIdentity, ProcessLedger, identify
from responder.contain.outcome import Outcome
from responder.contain.params import (
    BoundParam,
    ParamRejected,
    audit_value,
    bind_params,
    bind_values,
)
from responder.log import fields
from responder.secrets import Secret

log = logging.getLogger("responder.contain")

OUTPUT_LIMIT = 64 * 1024
BASE_ENV: Mapping[str, str] = MappingProxyType(
    {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
)
REDACTED = "<redacted>"
# After the main process exits, how long its leftovers may keep the output pipes open.
PIPE_GRACE_S = 1.0
_RETRYABLE = frozenset({Outcome.FAILED, Outcome.TIMEOUT, Outcome.CHECK_FAILED})
# Outcomes after which something may have changed on the system and may need reversing.
_MAY_NEED_UNDO = frozenset({Outcome.OK, Outcome.CHECK_FAILED, Outcome.TIMEOUT})


def _clean(value: str, limit: int = 256) -> str:
    """Alert context for the environment: printable ASCII only, bounded."""
    return "".join(c if " " <= c <= "~" else "?" for c in value[:limit])


@dataclass(frozen=True, slots=True)
class RunContext:
    """What the engine knows about the alert; exported to actions as RESPONDER_* variables."""

    incident_id: str
    alert_name: str = ""
    fingerprint: str = ""
    severity: str = ""

    def to_audit(self) -> dict[str, str]:
        return {
            "incident_id": self.incident_id,
            "alert_name": self.alert_name,
            "fingerprint": self.fingerprint,
            "severity": self.severity,
        }


def _redact(text: str, secrets: Sequence[str], *, cut: bool = False) -> str:
    """``text`` with every secret replaced. ``cut``: the text was cut at a size limit, so a
    secret may have been cut too; a tail that begins one is replaced as well."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    if cut:
        # The cut may also have split a character: its replacement mark ends the text.
        text = text.removesuffix("\ufffd")
        longest = max(
            (
                length
                for secret in secrets
                for length in range(min(len(secret), len(text)) - 1, 0, -1)
                if text.endswith(secret[:length])
            ),
            default=0,
        )
        if longest:
            return text[:-longest] + REDACTED
    return text


@dataclass(frozen=True, slots=True)
class ExecRequest:
    """A fully rendered process to start: argv, environment, cwd, timeout."""

    argv: tuple[str, ...]
    env: Mapping[str, EnvValue]
    cwd: str | None = None
    timeout_s: float = 30.0

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(v.value for v in self.env.values() if isinstance(v, Secret))

    def resolved_env(self) -> dict[str, str]:
        return {k: v.value if isinstance(v, Secret) else v for k, v in self.env.items()}

    def to_audit(self) -> dict[str, Any]:
        secrets = self.secrets
        return {
            "argv": [_redact(a, secrets) for a in self.argv],
            "env": {k: REDACTED if isinstance(v, Secret) else v for k, v in self.env.items()},
            "cwd": self.cwd,
            "timeout_s": self.timeout_s,
        }

    def to_json(self) -> dict[str, Any]:
        """For persisting an undo; secret values are not written (their names are)."""
        return self.to_audit()

    @classmethod
    def from_json(
        cls, data: Mapping[str, Any], secrets: Mapping[str, EnvValue] | None = None
    ) -> ExecRequest:
        """The request persisted by ``to_json``; its secret variables (stored by name only)
        take their values from ``secrets`` (the action's, as configured now), or are left
        out when it has none of that name."""
        env: dict[str, EnvValue] = {}
        for name, value in data.get("env", {}).items():
            if value != REDACTED:
                env[str(name)] = str(value)
            elif secrets is not None and str(name) in secrets:
                env[str(name)] = secrets[str(name)]
        return cls(
            argv=tuple(str(a) for a in data["argv"]),
            env=MappingProxyType(env),
            cwd=data.get("cwd"),
            timeout_s=float(data.get("timeout_s", 30.0)),
        )


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    url: str
    headers: Mapping[str, EnvValue]
    body: bytes | None
    timeout_s: float
    expect: frozenset[int]

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(v.value for v in self.headers.values() if isinstance(v, Secret))

    def resolved_headers(self) -> dict[str, str]:
        return {k: v.value if isinstance(v, Secret) else v for k, v in self.headers.items()}

    def to_audit(self) -> dict[str, Any]:
        body = self.body.decode("utf-8", "replace") if self.body is not None else None
        return {
            "method": self.method,
            "url": self.url,
            "headers": {
                k: REDACTED if isinstance(v, Secret) else v for k, v in self.headers.items()
            },
            "body": _redact(body, self.secrets) if body is not None else None,
            "timeout_s": self.timeout_s,
            "expect": sorted(self.expect),
        }


@dataclass(frozen=True, slots=True)
class EvidencePlan:
    journals: tuple[tuple[str, ExecRequest], ...]  # (unit, journalctl argv)
    files: tuple[Path, ...]
    commands: tuple[tuple[str, ExecRequest], ...]
    max_bytes: int

    def to_audit(self) -> dict[str, Any]:
        return {
            "journals": [{"unit": u, **r.to_audit()} for u, r in self.journals],
            "files": [str(p) for p in self.files],
            "commands": [{"name": n, **r.to_audit()} for n, r in self.commands],
            "max_bytes": self.max_bytes,
        }


@dataclass(frozen=True, slots=True)
class CheckRequest:
    exec: ExecRequest | None = None
    http: HttpRequest | None = None
    alert_resolves_within: timedelta | None = None
    delay: timedelta = timedelta(0)

    def to_audit(self) -> dict[str, Any]:
        if self.exec is not None:
            return {"argv": self.exec.to_audit()["argv"], "delay_s": self.delay.total_seconds()}
        if self.http is not None:
            return {"http": self.http.to_audit(), "delay_s": self.delay.total_seconds()}
        assert self.alert_resolves_within is not None
        return {"alert_resolves_within_s": self.alert_resolves_within.total_seconds()}


@dataclass(frozen=True, slots=True)
class UndoPlan:
    """How to reverse a run: an argv (persist ``request.to_json()``) or another action."""

    request: ExecRequest | None = None
    action: str | None = None
    on_resolve: bool = True  # run after the alert resolved and stayed so for ``hold_down``
    hold_down: timedelta = timedelta(minutes=5)
    at: datetime | None = None  # run at this time regardless (iptables has no timeouts)
    # How many times the run may have done what this undoes (each attempt of an iptables
    # block inserts a rule): what a run interrupted by a crash must lift.
    attempts: int = 1
    # The block tool's own delete (iptables -D, nft delete element), whose 'no such rule'
    # answer means there is nothing to lift. Another lift command's output may quote
    # alert labels: it is never read so.
    block_tool: bool = False

    def to_audit(self) -> dict[str, Any]:
        return {
            "argv": self.request.to_audit()["argv"] if self.request is not None else None,
            # The whole command as persisted (secrets by name): what a run interrupted by a
            # crash is lifted with.
            "request": self.request.to_json() if self.request is not None else None,
            "action": self.action,
            "on_resolve": self.on_resolve,
            "hold_down_s": self.hold_down.total_seconds(),
            "at": self.at.isoformat() if self.at is not None else None,
            "attempts": self.attempts,
        }


Request = ExecRequest | HttpRequest | EvidencePlan


@dataclass(frozen=True, slots=True)
class PreparedRun:
    """Everything decided before anything runs; record it, then ``execute`` it."""

    run_id: str
    action: Action
    target: str
    params: tuple[BoundParam, ...]
    context: RunContext
    request: Request
    check: CheckRequest | None
    undo: UndoPlan | None
    prepared_at: datetime
    unit: str | None = None  # systemd-restart
    address: str | None = None  # block-address

    def to_audit(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "action": self.action.name,
            "kind": self.action.kind.value,
            "target": self.target,
            "params": [p.to_audit() for p in self.params],
            "context": self.context.to_audit(),
            "request": self.request.to_audit(),
            "check": self.check.to_audit() if self.check is not None else None,
            "undo": self.undo.to_audit() if self.undo is not None else None,
            "prepared_at": self.prepared_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class ProcessResult:
    exit_status: int | None  # negative: killed by that signal; None: never started
    stdout: str
    stderr: str
    stdout_dropped: int
    stderr_dropped: int
    duration_s: float
    timed_out: bool = False
    error: str | None = None  # could not start

    @property
    def outcome(self) -> Outcome:
        if self.error is not None:
            return Outcome.ERROR
        if self.timed_out:
            return Outcome.TIMEOUT
        return Outcome.OK if self.exit_status == 0 else Outcome.FAILED


@dataclass(frozen=True, slots=True)
class Attempt:
    number: int
    outcome: Outcome
    started_at: datetime
    duration_s: float
    exit_status: int | None = None
    http_status: int | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_dropped: int = 0
    stderr_dropped: int = 0
    detail: str = ""

    def to_audit(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "outcome": self.outcome.value,
            "started_at": self.started_at.isoformat(),
            "duration_s": round(self.duration_s, 6),
            "exit_status": self.exit_status,
            "http_status": self.http_status,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "stdout_dropped": self.stdout_dropped,
            "stderr_dropped": self.stderr_dropped,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The verification; ``RUNNING`` with a deadline when the engine must watch the alert."""

    outcome: Outcome  # OK, CHECK_FAILED or RUNNING (alert_resolves_within)
    detail: str = ""
    exit_status: int | None = None
    http_status: int | None = None
    deadline: datetime | None = None

    def to_audit(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "detail": self.detail,
            "exit_status": self.exit_status,
            "http_status": self.http_status,
            "deadline": self.deadline.isoformat() if self.deadline is not None else None,
        }


@dataclass(frozen=True, slots=True)
class RunResult:
    run_id: str
    action: str
    kind: Kind
    target: str
    outcome: Outcome
    params: tuple[BoundParam, ...]
    context: RunContext
    request: Mapping[str, Any]  # the rendered request, secrets redacted
    started_at: datetime
    finished_at: datetime
    duration_s: float
    attempts: tuple[Attempt, ...] = ()
    check: CheckResult | None = None
    undo: UndoPlan | None = None
    expires_at: datetime | None = None
    evidence_dir: str | None = None
    evidence_manifest_sha256: str | None = None
    rejected: ParamRejected | None = None
    dry_run: bool = False
    # Why ``stopped`` ended the retries with attempts left (the kill switch), else None.
    stopped: str | None = None

    @property
    def exit_status(self) -> int | None:
        return self.attempts[-1].exit_status if self.attempts else None

    @property
    def http_status(self) -> int | None:
        return self.attempts[-1].http_status if self.attempts else None

    def to_audit(self) -> dict[str, Any]:
        """One JSON-ready record for the incident timeline and the audit log."""
        return {
            "run_id": self.run_id,
            "action": self.action,
            "kind": self.kind.value,
            "target": self.target,
            "outcome": self.outcome.value,
            "dry_run": self.dry_run,
            "params": [p.to_audit() for p in self.params],
            "context": self.context.to_audit(),
            "request": dict(self.request),
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "duration_s": round(self.duration_s, 6),
            "exit_status": self.exit_status,
            "http_status": self.http_status,
            "attempts": [a.to_audit() for a in self.attempts],
            "check": self.check.to_audit() if self.check is not None else None,
            "undo": self.undo.to_audit() if self.undo is not None else None,
            "expires_at": self.expires_at.isoformat() if self.expires_at is not None else None,
            "evidence_dir": self.evidence_dir,
            "evidence_manifest_sha256": self.evidence_manifest_sha256,
            "rejected": self.rejected.to_audit() if self.rejected is not None else None,
            "stopped": self.stopped,
        }


class _Readable(Protocol):
    """asyncio's and aiohttp's stream readers alike."""

    async def read(self, n: int = -1, /) -> bytes: ...


class _Capture:
    """Keeps the first ``limit`` bytes of a stream and counts the rest, always reading on."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.dropped = 0

    async def drain(self, stream: _Readable | None) -> None:
        if stream is None:
            return
        while chunk := await stream.read(65536):
            room = self.limit - len(self.data)
            if room > 0:
                self.data += chunk[:room]
            self.dropped += max(0, len(chunk) - max(room, 0))


async def _exited(
    proc: asyncio.subprocess.Process, exit_task: asyncio.Future[int], within_s: float
) -> bool:
    """Whether the main process exited within ``within_s`` (pipes may still be open)."""
    deadline = monotonic() + within_s
    interval = 0.005
    while proc.returncode is None:
        remaining = deadline - monotonic()
        if remaining <= 0:
            return False
        await asyncio.wait([exit_task], timeout=min(interval, remaining))
        interval = min(interval * 2, 0.1)
    return True


def _close_transport(proc: asyncio.subprocess.Process) -> None:
    # asyncio has no public way to drop the pipes of a process that has exited.
    transport = getattr(proc, "_transport", None)
    if transport is not None:
        transport.close()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@dataclass(frozen=True, slots=True)
class Recording:
    """Where and as what a process's group is recorded while it runs (orphans.py)."""

    ledger: ProcessLedger
    boot_id: str
    run_id: str


async def run_process(
    request: ExecRequest,
    *,
    limit: int = OUTPUT_LIMIT,
    kill_grace_s: float = 2.0,
    recording: Recording | None = None,
) -> ProcessResult:
    """Run one argv without a shell, bounded in time and output; the group dies on timeout.
    With ``recording``, the group is on record while it runs, for a start after a kill -9
    of the daemon to stop it."""
    started = monotonic()
    secrets = request.secrets
    try:
        proc = await asyncio.create_subprocess_exec(
            *request.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=request.resolved_env(),
            cwd=request.cwd,
            # A session (and so a process group) of its own: a timeout can then kill
            # everything the action started, not just its first process.
            start_new_session=True,
            # The open-file limit the daemon started with, not the one it raised.
            preexec_fn=limits.restore_in_child if limits.raised() else None,
        )
    except (OSError, ValueError) as exc:  # ValueError: a NUL in argv or the environment
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return ProcessResult(
            None,
            "",
            "",
            0,
            0,
            monotonic() - started,
            error=_redact(f"cannot start {request.argv[0]}: {reason}", secrets),
        )
    out, err = _Capture(limit), _Capture(limit)
    readers = [
        asyncio.create_task(out.drain(proc.stdout)),
        asyncio.create_task(err.drain(proc.stderr)),
    ]
    # Process.wait() also waits for the pipes to close, which a leftover grandchild can delay
    # forever; the exit itself is watched through returncode instead.
    exit_task = asyncio.ensure_future(proc.wait())
    timed_out = False
    identity: ProcessIdentity | None = None
    try:
        if recording is not None:
            # The ledger keeps store failures to itself: a process must not lose its
            # timeout because it could not be recorded.
            identity = identify(proc.pid, recording.boot_id)
            if identity is not None:
                await recording.ledger.started(identity, recording.run_id, request.argv[0])
        if not await _exited(proc, exit_task, request.timeout_s):
            timed_out = True
            _signal_group(proc.pid, signal.SIGTERM)
            await _exited(proc, exit_task, kill_grace_s)
            _signal_group(proc.pid, signal.SIGKILL)
            await _exited(proc, exit_task, kill_grace_s)
        _, pending = await asyncio.wait(readers, timeout=PIPE_GRACE_S)
        if pending:
            # Something the action started still holds its output open: it does not outlive
            # the action.
            _signal_group(proc.pid, signal.SIGKILL)
            _, pending = await asyncio.wait(pending, timeout=PIPE_GRACE_S)
        if pending:
            # It left our process group (setsid) and keeps the pipe: stop listening to it.
            for task in pending:
                task.cancel()
            _close_transport(proc)
        await asyncio.wait([exit_task], timeout=PIPE_GRACE_S)
    except asyncio.CancelledError:
        _signal_group(proc.pid, signal.SIGKILL)
        for task in readers:
            task.cancel()
        exit_task.cancel()
        raise
    finally:
        if not exit_task.done():
            exit_task.cancel()
    if recording is not None and identity is not None and proc.returncode is not None:
        await recording.ledger.ended(identity)
    return ProcessResult(
        exit_status=proc.returncode,
        stdout=_redact(out.data.decode("utf-8", "replace"), secrets, cut=out.dropped > 0),
        stderr=_redact(err.data.decode("utf-8", "replace"), secrets, cut=err.dropped > 0),
        stdout_dropped=out.dropped,
        stderr_dropped=err.dropped,
        duration_s=monotonic() - started,
        timed_out=timed_out,
    )


def target_of(action: Action, params: Mapping[str, BoundParam]) -> str:
    """The thing an action acts on, for cooldowns and breakers: one parameter, or all of them."""
    if action.target is not None:
        return params[action.target].value
    if not params:
        return "*"
    return ",".join(f"{name}={params[name].value}" for name in sorted(params))


class ActionRunner:
    """Prepares and executes actions; one per daemon, shared by all incidents."""

    def __init__(
        self,
        clock: Clock,
        evidence_dir: Path,
        *,
        session: aiohttp.ClientSession | None = None,
        output_limit: int = OUTPUT_LIMIT,
        kill_grace_s: float = 2.0,
        base_env: Mapping[str, str] = BASE_ENV,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        own_addresses: Callable[[], Collection[builtins.Address] | None] = builtins.local_addresses,
    ) -> None:
        self._clock = clock
        self._own_addresses = own_addresses
        self._evidence_dir = evidence_dir
        self._session = session
        self._own_session = session is None
        self._limit = output_limit
        self._grace = kill_grace_s
        self._base_env = dict(base_env)
        self._sleep = sleep
        self._ledger: ProcessLedger | None = None
        self._boot_id = ""

    def record_processes(self, ledger: ProcessLedger, boot_id: str) -> None:
        """From now on every process group started is recorded in ``ledger`` while it runs."""
        self._ledger, self._boot_id = ledger, boot_id

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    # -- prepare: pure ------------------------------------------------------------------------
    def prepare(
        self,
        action: Action,
        labels: Mapping[str, str],
        annotations: Mapping[str, str],
        context: RunContext,
        *,
        run_id: str | None = None,
        values: Mapping[str, str] | None = None,
    ) -> PreparedRun | ParamRejected:
        """Validate the parameters and render the request; nothing runs. ``values``, by
        parameter name, stand for the labels (an undo action takes its run's values)."""
        if values is None:
            bound = bind_params(action.params, labels, annotations)
        else:
            bound = bind_values(action.params, values)
        if isinstance(bound, ParamRejected):
            return bound
        values = {name: p.value for name, p in bound.items()}
        run_id = run_id or uuid.uuid4().hex
        now = self._clock.now()
        env = self._env(action, values, context, run_id)
        unit: str | None = None
        address: str | None = None
        undo: UndoPlan | None = None
        spec = action.spec
        request: Request
        if isinstance(spec, ExecSpec):
            request = self._exec(action, spec.argv, values, env, spec.cwd)
        elif isinstance(spec, HttpSpec):
            rendered = self._http(action, spec, values, context)
            if isinstance(rendered, ParamRejected):
                return rendered
            request = rendered
        elif isinstance(spec, SystemdRestartSpec):
            unit = values.get("unit", spec.fixed_unit)
            assert unit is not None  # the catalog guarantees a unit parameter or a fixed unit
            refusal = builtins.unit_refusal(spec, unit)
            if refusal is not None:
                return _rejected(bound, "unit", refusal)
            request = ExecRequest(builtins.restart_argv(spec, unit), env, None, _s(action.timeout))
        elif isinstance(spec, BlockAddressSpec):
            address = values["address"]
            refusal = builtins.address_refusal(spec, address, self._own_addresses())
            if refusal is not None:
                return _rejected(bound, "address", refusal)
            block, lift = builtins.block_argv(spec, address, run_id)
            request = ExecRequest(block, env, None, _s(action.timeout))
            undo = UndoPlan(
                request=ExecRequest(lift, env, None, _s(action.timeout)),
                on_resolve=action.undo is not None and action.undo.builtin,
                hold_down=action.undo_hold_down,
                # iptables: the expiry if the run is interrupted (it is recorded before it
                # starts); a finished run's expiry counts from when it finished.
                at=now + spec.duration if spec.backend == "iptables" else None,
                attempts=action.retries + 1,
                block_tool=True,
            )
        else:
            request = self._evidence_plan(action, spec, values, env, now)
        if action.undo is not None and action.undo.argv is not None:
            cwd = action.spec.cwd if isinstance(action.spec, ExecSpec) else None
            undo = UndoPlan(
                request=self._exec(action, action.undo.argv, values, env, cwd),
                hold_down=action.undo_hold_down,
            )
        elif action.undo is not None and action.undo.action is not None:
            undo = UndoPlan(action=action.undo.action, hold_down=action.undo_hold_down)
        return PreparedRun(
            run_id=run_id,
            action=action,
            target=target_of(action, bound),
            params=tuple(bound.values()),
            context=context,
            request=request,
            check=self._check(action, values, env, context),
            undo=undo,
            prepared_at=now,
            unit=unit,
            address=address,
        )

    def _env(
        self, action: Action, values: Mapping[str, str], context: RunContext, run_id: str
    ) -> Mapping[str, EnvValue]:
        env: dict[str, EnvValue] = dict(self._base_env)
        if isinstance(action.spec, ExecSpec):
            env.update(action.spec.env)
        env.update(
            {
                "RESPONDER_ACTION": action.name,
                "RESPONDER_RUN_ID": run_id,
                "RESPONDER_INCIDENT_ID": _clean(context.incident_id),
                "RESPONDER_ALERT_NAME": _clean(context.alert_name),
                "RESPONDER_FINGERPRINT": _clean(context.fingerprint),
                "RESPONDER_SEVERITY": _clean(context.severity),
            }
        )
        for name, value in values.items():
            env[f"RESPONDER_PARAM_{name.upper()}"] = value
        return MappingProxyType(env)

    def _exec(
        self,
        action: Action,
        argv: tuple[Template, ...],
        values: Mapping[str, str],
        env: Mapping[str, EnvValue],
        cwd: Path | None,
        timeout: timedelta | None = None,
    ) -> ExecRequest:
        # Each template renders to exactly one argv element: a value is never split.
        rendered = tuple(t.render(values) for t in argv)
        return ExecRequest(
            rendered, env, str(cwd) if cwd is not None else None, _s(timeout or action.timeout)
        )

    def _http(
        self, action: Action, spec: HttpSpec, values: Mapping[str, str], context: RunContext
    ) -> HttpRequest | ParamRejected:
        headers: dict[str, EnvValue] = dict(spec.headers)
        body: bytes | None = None
        if spec.body is not None:
            try:
                text = spec.body.template.render(params=dict(values), alert=context.to_audit())
                json.loads(text)
            except (jinja2.TemplateError, ValueError) as exc:
                return ParamRejected(
                    "body", "template", f"body does not render to JSON: {exc}", audit_value("")
                )
            body = text.encode("utf-8")
            if not any(k.lower() == "content-type" for k in headers):
                headers["Content-Type"] = "application/json"
        return HttpRequest(
            spec.method,
            spec.url.render(values),
            MappingProxyType(headers),
            body,
            _s(action.timeout),
            spec.expect,
        )

    def _check(
        self,
        action: Action,
        values: Mapping[str, str],
        env: Mapping[str, EnvValue],
        context: RunContext,
    ) -> CheckRequest | None:
        check = action.check
        if check is None:
            return None
        if check.argv is not None:
            req = self._exec(action, check.argv, values, env, None, check.timeout)
            return CheckRequest(exec=req, delay=check.delay)
        if check.http is not None:
            probe = check.http
            http = HttpRequest(
                probe.method,
                probe.url.render(values),
                probe.headers,
                None,
                _s(check.timeout),
                probe.expect,
            )
            return CheckRequest(http=http, delay=check.delay)
        return CheckRequest(alert_resolves_within=check.alert_resolves_within, delay=check.delay)

    def _evidence_plan(
        self,
        action: Action,
        spec: CaptureEvidenceSpec,
        values: Mapping[str, str],
        env: Mapping[str, EnvValue],
        now: datetime,
    ) -> EvidencePlan:
        since = now - spec.since
        journals = []
        for template in spec.units:
            unit = template.render(values)
            argv = builtins.journal_argv(spec, unit, since)
            journals.append((unit, ExecRequest(argv, env, None, _s(action.timeout))))
        commands = tuple(
            (name, self._exec(action, argv, values, env, None)) for name, argv in spec.commands
        )
        return EvidencePlan(tuple(journals), spec.files, commands, spec.max_bytes)

    # -- execute ------------------------------------------------------------------------------
    def rejected_result(
        self, action: Action, rejection: ParamRejected, context: RunContext, run_id: str = ""
    ) -> RunResult:
        """The audit record of a run that never started because a parameter was refused."""
        now = self._clock.now()
        return RunResult(
            run_id=run_id or uuid.uuid4().hex,
            action=action.name,
            kind=action.kind,
            target="",
            outcome=Outcome.REJECTED,
            params=(),
            context=context,
            request={},
            started_at=now,
            finished_at=now,
            duration_s=0.0,
            rejected=rejection,
        )

    async def execute(
        self,
        prepared: PreparedRun,
        *,
        dry_run: bool = False,
        stopped: Callable[[], str | None] | None = None,
    ) -> RunResult:
        """Run a prepared action with its retries and check; never raises for action failures.
        ``stopped`` is asked before each retry: a reason (the kill switch was engaged
        meanwhile) ends the run with the attempts made."""
        action = prepared.action
        started_at = self._clock.now()
        started = monotonic()
        dry = dry_run or action.dry_run
        attempts: list[Attempt] = []
        check: CheckResult | None = None
        evidence_dir: str | None = None
        manifest: str | None = None
        outcome = Outcome.DRY_RUN
        stopped_by: str | None = None
        if not dry:
            for number in range(1, action.retries + 2):
                at = self._clock.now()
                try:
                    if isinstance(prepared.request, EvidencePlan):
                        attempt, evidence_dir, manifest = await self._capture(prepared, number)
                    else:
                        attempt = await self._attempt(prepared, number)
                except Exception as exc:
                    # A fault of ours or of a library must end the run (as an error, which
                    # counts and escalates) rather than leave it recorded as running, its
                    # target refused until the next start.
                    log.exception("action attempt failed unexpectedly", extra=_run(prepared))
                    attempt = Attempt(number, Outcome.ERROR, at, 0.0, detail=_fault(exc, prepared))
                attempts.append(attempt)
                outcome = attempt.outcome
                check = None
                if outcome is Outcome.OK and prepared.check is not None:
                    try:
                        check = await self._run_check(prepared.check, prepared.run_id)
                    except Exception as exc:
                        log.exception("action check failed unexpectedly", extra=_run(prepared))
                        check = CheckResult(Outcome.CHECK_FAILED, _fault(exc, prepared))
                    if check.outcome is Outcome.CHECK_FAILED:
                        outcome = Outcome.CHECK_FAILED
                if outcome not in _RETRYABLE or number > action.retries:
                    break
                await self._sleep(action.retry_delay.total_seconds())
                if stopped is not None and (stopped_by := stopped()) is not None:
                    break  # the kill switch: no new attempt (the audit has those made)
        finished_at = self._clock.now()
        undo = prepared.undo
        expires_at: datetime | None = None
        # Any attempt that may have made the change needs its lift, whatever the last one
        # did: a timed-out insert then a failed retry still left the rule in place.
        changed = outcome in _MAY_NEED_UNDO or any(a.outcome in _MAY_NEED_UNDO for a in attempts)
        if isinstance(action.spec, BlockAddressSpec) and not dry and changed:
            # A timeout or a failed check may leave the block in place: it expires all the same.
            expires_at = finished_at + action.spec.duration
            if undo is not None and action.spec.backend == "iptables":
                # iptables rules have no timeout of their own: the engine lifts them at expiry.
                undo = replace(undo, at=expires_at)
        if dry or not changed:
            undo = None
        if stopped_by is not None:
            # Recorded as stopped, not as its last attempt's failure: the operator paused
            # containment on purpose, and the retries it did not make may have helped.
            outcome = Outcome.STOPPED
        return RunResult(
            run_id=prepared.run_id,
            action=action.name,
            kind=action.kind,
            target=prepared.target,
            outcome=outcome,
            params=prepared.params,
            context=prepared.context,
            request=prepared.request.to_audit(),
            started_at=started_at,
            finished_at=finished_at,
            duration_s=monotonic() - started,
            attempts=tuple(attempts),
            check=check,
            undo=undo,
            expires_at=expires_at,
            evidence_dir=evidence_dir,
            evidence_manifest_sha256=manifest,
            dry_run=dry,
            stopped=stopped_by,
        )

    async def run_exec(
        self, request: ExecRequest, *, run_id: str, limit: int | None = None
    ) -> ProcessResult:
        """Run one rendered argv of run ``run_id`` (an undo, for instance) with the runner's
        bounds."""
        recording = None
        if self._ledger is not None:
            recording = Recording(self._ledger, self._boot_id, run_id)
        return await run_process(
            request, limit=limit or self._limit, kill_grace_s=self._grace, recording=recording
        )

    async def _attempt(self, prepared: PreparedRun, number: int) -> Attempt:
        at = self._clock.now()
        request = prepared.request
        if isinstance(request, HttpRequest):
            return await self._http_attempt(request, number, at)
        assert isinstance(request, ExecRequest)
        proc = await self.run_exec(request, run_id=prepared.run_id)
        outcome = proc.outcome
        detail = proc.error or ""
        spec = prepared.action.spec
        if outcome is Outcome.FAILED and isinstance(spec, SystemdRestartSpec):
            assert prepared.unit is not None
            # systemd refuses starts after too many in a short time; retrying cannot help and
            # the operator must run reset-failed, so this is an outcome of its own.
            show = ExecRequest(
                builtins.result_argv(spec, prepared.unit), request.env, None, request.timeout_s
            )
            shown = await self.run_exec(show, run_id=prepared.run_id)
            result = builtins.parse_result(shown.stdout)
            if result:
                detail = f"Result={result}"
            if result == builtins.START_LIMIT_HIT:
                outcome = Outcome.START_LIMIT_HIT
        return _attempt_from(number, outcome, at, proc, detail)

    async def _http_attempt(self, request: HttpRequest, number: int, at: datetime) -> Attempt:
        started = monotonic()
        status, body, dropped, error = await self._send(request)
        if error == "timeout":
            outcome = Outcome.TIMEOUT
        elif error is not None:
            outcome = Outcome.FAILED
        else:
            outcome = Outcome.OK if status in request.expect else Outcome.FAILED
        return Attempt(
            number=number,
            outcome=outcome,
            started_at=at,
            duration_s=monotonic() - started,
            http_status=status,
            stdout=_redact(body, request.secrets, cut=dropped > 0),
            stdout_dropped=dropped,
            detail=error or "",
        )

    async def _send(self, request: HttpRequest) -> tuple[int | None, str, int, str | None]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        capture = _Capture(self._limit)
        try:
            async with asyncio.timeout(request.timeout_s):
                async with self._session.request(
                    request.method,
                    # Already percent-encoded by the catalog: yarl must not re-normalise it.
                    yarl.URL(request.url, encoded=True),
                    headers=request.resolved_headers(),
                    data=request.body,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=request.timeout_s),
                ) as resp:
                    await capture.drain(resp.content)
                    status = resp.status
        except TimeoutError:
            return None, "", 0, "timeout"
        except (aiohttp.ClientError, ValueError) as exc:
            # ValueError: what the client refuses to send (a control character in a header).
            return None, "", 0, _redact(f"{type(exc).__name__}: {exc}", request.secrets)
        return status, capture.data.decode("utf-8", "replace"), capture.dropped, None

    async def _run_check(self, check: CheckRequest, run_id: str) -> CheckResult:
        if check.delay > timedelta(0):
            await self._sleep(check.delay.total_seconds())
        if check.exec is not None:
            proc = await self.run_exec(check.exec, run_id=run_id)
            ok = proc.outcome is Outcome.OK
            detail = proc.error or (
                "timeout" if proc.timed_out else _tail(proc.stdout + proc.stderr)
            )
            return CheckResult(
                Outcome.OK if ok else Outcome.CHECK_FAILED, detail, exit_status=proc.exit_status
            )
        if check.http is not None:
            status, _, _, error = await self._send(check.http)
            ok = error is None and status in check.http.expect
            return CheckResult(
                Outcome.OK if ok else Outcome.CHECK_FAILED, error or "", http_status=status
            )
        assert check.alert_resolves_within is not None
        deadline = self._clock.now() + check.alert_resolves_within
        return CheckResult(Outcome.RUNNING, "waiting for the alert to resolve", deadline=deadline)

    async def _capture(
        self, prepared: PreparedRun, number: int
    ) -> tuple[Attempt, str | None, str | None]:
        plan = prepared.request
        assert isinstance(plan, EvidencePlan)
        at = self._clock.now()
        started = monotonic()
        items: list[evidence.EvidenceItem] = []
        problems: list[str] = []
        for index, (unit, request) in enumerate(plan.journals, start=1):
            proc = await self.run_exec(request, run_id=prepared.run_id, limit=plan.max_bytes)
            items.append(_proc_item(f"journal-{index}.log", "journal", unit, request, proc))
            if proc.outcome is not Outcome.OK:
                problems.append(f"journal {unit}: {proc.error or proc.exit_status}")
        for index, path in enumerate(plan.files, start=1):
            try:
                data, cut = await asyncio.to_thread(evidence.read_tail, path, plan.max_bytes)
            except OSError as exc:
                problems.append(f"file {path}: {exc.strerror or exc}")
                data, cut = b"", False
                meta: dict[str, Any] = {"error": str(exc.strerror or exc)}
            else:
                meta = {}
            items.append(
                evidence.EvidenceItem(f"file-{index}.log", "file", str(path), data, cut, meta)
            )
        for name, request in plan.commands:
            proc = await self.run_exec(request, run_id=prepared.run_id, limit=plan.max_bytes)
            items.append(_proc_item(f"command-{name}.txt", "command", name, request, proc))
            if proc.outcome is not Outcome.OK:
                problems.append(f"command {name}: {proc.error or proc.exit_status}")
        folder = evidence.capture_folder(
            self._evidence_dir, prepared.context.incident_id, prepared.action.name, at
        )
        if number > 1:
            folder = folder.with_name(f"{folder.name}-{number}")
        header = {
            "run_id": prepared.run_id,
            "action": prepared.action.name,
            "created_at": at.isoformat(),
            "context": prepared.context.to_audit(),
            "params": [p.to_audit() for p in prepared.params],
        }
        try:
            digest = await asyncio.to_thread(evidence.write_capture, folder, items, header)
        except OSError as exc:
            return (
                Attempt(
                    number,
                    Outcome.ERROR,
                    at,
                    monotonic() - started,
                    detail=f"cannot write evidence: {exc.strerror or exc}",
                ),
                None,
                None,
            )
        outcome = Outcome.FAILED if problems else Outcome.OK
        attempt = Attempt(number, outcome, at, monotonic() - started, detail="; ".join(problems))
        return attempt, str(folder), digest


def _run(prepared: PreparedRun) -> dict[str, Any]:
    return fields(action=prepared.action.name, run=prepared.run_id)


def _fault(exc: Exception, prepared: PreparedRun) -> str:
    """An unexpected exception, for the audit: its type and message, secrets redacted."""
    request = prepared.request
    secrets = request.secrets if isinstance(request, ExecRequest | HttpRequest) else ()
    return _redact(f"internal error: {type(exc).__name__}: {exc}", secrets)[:500]


def _proc_item(
    name: str, kind: str, source: str, request: ExecRequest, proc: ProcessResult
) -> evidence.EvidenceItem:
    meta: dict[str, Any] = {
        "argv": request.to_audit()["argv"],
        "exit_status": proc.exit_status,
        "stderr": _tail(proc.stderr),
    }
    if proc.error is not None:
        meta["error"] = proc.error
    return evidence.EvidenceItem(
        name, kind, source, proc.stdout.encode("utf-8"), proc.stdout_dropped > 0, meta
    )


def _attempt_from(
    number: int, outcome: Outcome, at: datetime, proc: ProcessResult, detail: str
) -> Attempt:
    return Attempt(
        number=number,
        outcome=outcome,
        started_at=at,
        duration_s=proc.duration_s,
        exit_status=proc.exit_status,
        stdout=proc.stdout,
        stderr=proc.stderr,
        stdout_dropped=proc.stdout_dropped,
        stderr_dropped=proc.stderr_dropped,
        detail=detail,
    )


def _rejected(bound: Mapping[str, BoundParam], name: str, reason: str) -> ParamRejected:
    param = bound.get(name)
    source = f"{param.source.value} {param.key}" if param and param.source else "config"
    return ParamRejected(name, source, reason, audit_value(param.value if param else ""))


def _tail(text: str, limit: int = 512) -> str:
    return text[-limit:]


def _s(delta: timedelta) -> float:
    return delta.total_seconds()

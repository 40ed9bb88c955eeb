"""The running daemon's shared state: the current config snapshot and the long-lived parts.

A ``Snapshot`` is everything loaded from files (config, rules, ...), immutable, built whole
or not at all. ``Runtime.reload`` builds a new one and swaps it in one assignment; work that
already holds the old snapshot finishes with it. A failed reload keeps the old snapshot,
logs why, and sets ``responder_config_last_reload_successful`` to 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from notifiers.base import Notifier
from notifiers.config import ChannelSettings, parse_channels
from responder.advice import config_warnings
from responder.auth import Authenticator
from responder.classify import Classifier, load_classifier
from responder.clock import Clock
from responder.config import DAEMON_KEYS, Config, display_name, parse_config, read_config_file
from responder.contain import ActionCatalog, ContainmentSettings, parse_actions, parse_containment
from responder.contain.engine import Containment
from responder.deliver import DeliveryConfig, Dispatcher, parse_delivery
from responder.escalate import ESCALATION_KEYS, EscalationConfig, Escalator, load_escalation
from responder.intake import Intake
from responder.log import STORE_ERROR_LOG_EVERY_S, ThrottledLog, fields
from responder.messages import Templates, load_templates
from responder.metrics import Metrics
from responder.policy import EscalationLayout, LevelKeys, level_renumbering, same_levels
from responder.secrets import Secret
from responder.store import Store, StoreError
from responder.yamlfile import ConfigError

log = logging.getLogger("responder")
# How soon a re-arm the store could not take is tried again.
REARM_RETRY_S = 5.0

SECTION_KEYS = (
    "classification",
    "channels",
    "delivery",
    "templates",
    "actions",
    "containment",
    *ESCALATION_KEYS,
)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Config and everything compiled from it, as one immutable value."""

    config: Config
    classifier: Classifier
    escalation: EscalationConfig
    channels: ChannelSettings
    delivery: DeliveryConfig
    templates: Templates
    actions: ActionCatalog
    containment: ContainmentSettings


def load_snapshot(
    path: Path, *, listen: str | None = None, state_dir: Path | None = None
) -> Snapshot:
    """Read the config file and every file it names; raise ``ConfigError`` on the first fault."""
    path = path.absolute()
    root = read_config_file(path)
    root.keys_allowed(*DAEMON_KEYS, *SECTION_KEYS)
    config = parse_config(root, path, listen=listen, state_dir=state_dir)
    escalation = load_escalation(root)
    classifier = load_classifier(
        root.get("classification"),
        config.base_dir,
        business_hours=escalation.business_hours if root.get("business_hours") else None,
    )
    templates = load_templates(root.get("templates"), config.base_dir)
    actions = parse_actions(root.get("actions"), config.base_dir)
    containment = parse_containment(root.get("containment"))
    classifier.check_references(set(escalation.policies), set(actions.actions), templates.names)
    channels = parse_channels(root.get("channels"), config.base_dir)
    delivery = parse_delivery(root.get("delivery"))
    return Snapshot(
        config, classifier, escalation, channels, delivery, templates, actions, containment
    )


class Runtime:
    """What every handler and background loop shares; stored on the app under ``RUNTIME``."""

    def __init__(
        self,
        snapshot: Snapshot,
        *,
        store: Store,
        metrics: Metrics,
        clock: Clock,
        generated_token: Secret | None = None,
        listen_override: str | None = None,
        state_dir_override: Path | None = None,
    ) -> None:
        self.snapshot = snapshot
        # The sections read only at start (server, storage, state_dir, channels, logging):
        # a reload that changes them takes effect at the next restart, for every part alike.
        self.started_with = snapshot
        # What the last successful reload said: the sections changed that wait for a
        # restart, and what ``responder check`` would warn of (POST /-/reload answers both).
        self.restart_needed: tuple[str, ...] = ()
        self.config_warnings: tuple[str, ...] = ()
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.generated_token = generated_token
        self.authenticator = Authenticator(snapshot.config.auth, generated_token)
        self._listen_override = listen_override
        self._state_dir_override = state_dir_override
        self._reload_lock = asyncio.Lock()
        # The reload that callers asking now share: it has not begun to read the files yet.
        self._next_reload: asyncio.Task[ConfigError | None] | None = None
        self._reloads: set[asyncio.Task[ConfigError | None]] = set()
        # Re-arms of open incidents a reload asked for and the store has not taken yet.
        self._rearms: list[
            tuple[dict[str | None, dict[int, int | None]], dict[str | None, bool], str | None, str]
        ] = []
        self._rearm_retry: asyncio.Task[None] | None = None
        # Whether the last reload loaded its files (or none was asked for since the start):
        # with no re-arm waiting, that reload is in force in full.
        self._last_reload_loaded = True
        # The engine loops, set by the app; handlers wake them after writing a nearer due time.
        self.escalator: Escalator | None = None
        self.dispatcher: Dispatcher | None = None
        self.containment: Containment | None = None
        self.intake = Intake()  # back-pressure from the escalation engine on the webhook
        # Webhooks the store refused (a full disk, a broken database): Alertmanager retries
        # every group's, so one line a minute says it, with how many since.
        self.unstored_webhooks = ThrottledLog(
            logging.getLogger("responder.ingest"), logging.ERROR, STORE_ERROR_LOG_EVERY_S
        )
        self.notifiers: dict[str, Notifier] = {}
        metrics.config_reload_ok.set(1)
        metrics.config_reload_time.set(clock.now().timestamp())
        metrics.rules_loaded.set(snapshot.classifier.rule_count)

    @property
    def config(self) -> Config:
        return self.snapshot.config

    def wake_engine(self) -> None:
        """Something changed that may make a step or a page due now."""
        if self.escalator is not None:
            self.escalator.wake()
        if self.dispatcher is not None:
            self.dispatcher.wake()
        if self.containment is not None:
            self.containment.wake()

    def wake_escalator(self) -> None:
        """An incident's next due time moved earlier (opened, reopened, raised, resolved)."""
        if self.escalator is not None:
            self.escalator.wake()

    def wake_containment(self) -> None:
        """Containment work was queued."""
        if self.containment is not None:
            self.containment.wake()

    async def rearm_at_start(self) -> None:
        """Reconcile the open incidents with the policies in force, as a reload would: the
        config may have changed while the daemon was stopped (an edit, then a restart), or
        a reload's re-arm may not have been written before it stopped. The store keeps the
        layout its incidents were last armed under; without one (a new database) there is
        nothing to carry over. Every open incident is looked at again even when the layout
        is the same: a level's ``after`` is not part of it. Before the engine's first pass."""
        current = self._layout(self.snapshot.escalation)
        # A store that cannot take this cannot take anything: the start fails (and systemd
        # starts the daemon again), rather than escalate on steps of the old levels.
        stored = await self.store.escalation_layout()
        previous = current
        if stored is not None:
            try:
                previous = EscalationLayout.from_json(stored)
            except ValueError as exc:
                log.warning(
                    "stored escalation layout unreadable; replaced", extra=fields(error=str(exc))
                )
        async with self._reload_lock:
            self._queue_rearm(previous, current)
            if not await self._apply_rearms():
                raise StoreError("open incidents could not be re-armed at start")

    @property
    def rearm_pending(self) -> bool:
        """A re-arm waits for the store (the escalation engine holds off meanwhile)."""
        return bool(self._rearms)

    @staticmethod
    def _layout(escalation: EscalationConfig) -> EscalationLayout:
        return EscalationLayout.of(escalation.policies, escalation.default_policy)

    def _queue_rearm(self, old: EscalationLayout, new: EscalationLayout) -> None:
        """New policies: each open incident's next step is computed again under them now
        (a level moved earlier is due at once, not at the time the old policy gave), and
        the levels done are renamed where the change added, removed or moved levels."""
        renumber: dict[str | None, dict[int, int | None]] = {}
        for name, levels in new.policies.items():
            before = old.policies.get(name)
            if before is not None and (moves := level_renumbering(before, levels)):
                renumber[name] = moves
                if name == new.default_policy == old.default_policy:
                    renumber[None] = moves  # incidents whose rule names no policy
        if renumber:
            log.info(
                "escalation levels moved; open incidents keep the levels they reached",
                extra=fields(policies=sorted(n for n in renumber if n is not None)),
            )
        # Policies gone, and (None) the default for incidents whose rule names none: their
        # incidents go on under the new default, where they were if its levels are the same
        # (a rename), else from its first level. The default's own incidents come first:
        # those whose policy is removed join them after, and must not be moved twice.
        fallback = new.policies.get(new.default_policy or "")
        lost: dict[str | None, LevelKeys] = {}
        if old.default_policy != new.default_policy:
            renumber.pop(None, None)
            if (old_default := old.policies.get(old.default_policy or "")) is not None:
                lost[None] = old_default
        lost.update((n, p) for n, p in old.policies.items() if n not in new.policies)
        gone: dict[str | None, bool] = {}
        for key, previous in lost.items():
            carried = None if fallback is None else same_levels(previous, fallback)
            gone[key] = carried is None
            if carried:
                renumber[key] = carried
        # In order, each once: a re-arm that could not be written (the disk) is tried again
        # until it is, or the open incidents would escalate with the old levels' steps. The
        # layout is written with it: a re-arm still waiting when the daemon stops is done
        # at the next start (rearm_at_start).
        self._rearms.append((renumber, gone, new.default_policy, new.to_json()))

    async def _apply_rearms(self) -> bool:
        """Write the re-arms waiting, oldest first; False when one could not be written."""
        while self._rearms:
            renumber, gone, default_policy, layout = self._rearms[0]
            try:
                count = await self.store.rearm_open_incidents(
                    self.clock.now(), renumber, gone, default_policy, layout=layout
                )
            except StoreError as exc:
                log.error(
                    "open incidents not re-armed for the new policies; trying again",
                    extra=fields(error=str(exc), retry_in_s=REARM_RETRY_S),
                )
                return False
            self._rearms.pop(0)
            if count:  # every start re-arms too: with nothing open, nothing to say
                log.info(
                    "open incidents re-armed for the new policies", extra=fields(incidents=count)
                )
            self.wake_engine()
        return True

    async def stop(self) -> None:
        """Before the store closes: a re-arm still waiting is not tried again here; the
        store still holds the layout before it, so the next start does it."""
        for task in list(self._reloads):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._rearm_retry is not None:
            self._rearm_retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rearm_retry

    async def _retry_rearms(self) -> None:
        try:
            while True:
                await asyncio.sleep(REARM_RETRY_S)
                if await self._apply_rearms():
                    self._report_reload(loaded=self._last_reload_loaded)
                    return
        finally:
            self._rearm_retry = None

    def _report_reload(self, *, loaded: bool) -> None:
        """``responder_config_last_reload_successful``: 1 (and the success time) once the
        last reload is in force in full; 0 when its files were refused, and also while the
        re-arm of the open incidents it asked for waits for the store (the engine holds
        off meanwhile), as Prometheus reads 0 when a config it loaded could not be applied."""
        self._last_reload_loaded = loaded
        if loaded and not self._rearms:
            self.metrics.config_reload_ok.set(1)
            self.metrics.config_reload_time.set(self.clock.now().timestamp())
        else:
            self.metrics.config_reload_ok.set(0)

    def _reload_fault(self, old: Snapshot, exc: Exception) -> ConfigError:
        """A reload that failed for a fault of ours, not the file's: the old config stays."""
        self._report_reload(loaded=False)
        error = ConfigError(display_name(old.config.path), 0, "", f"cannot load: {exc!r}")
        log.exception(
            "reload failed; the old config stays in force", extra=fields(error=str(error))
        )
        return error

    async def reload(self) -> ConfigError | None:
        """Load the config again; swap it in on success. Returns the error on failure.

        Callers that ask while no reload has begun to read the files share one: a storm of
        SIGHUPs (one per file a deployment tool changed) loads the files once or twice,
        not once per signal, each under the lock after the one before. A caller that asks
        once a reload is reading gets the next one, which reads the files as they are
        after the caller asked."""
        if self._next_reload is None:
            task = asyncio.create_task(self._reload_when_free(), name="reload")
            self._next_reload = task
            self._reloads.add(task)
            task.add_done_callback(self._forget_reload)
        # Shielded: one caller given up (a request cut off) does not cancel the others' reload.
        return await asyncio.shield(self._next_reload)

    def _forget_reload(self, task: asyncio.Task[ConfigError | None]) -> None:
        self._reloads.discard(task)
        if self._next_reload is task:  # cancelled (at stop) before it began
            self._next_reload = None

    async def _reload_when_free(self) -> ConfigError | None:
        async with self._reload_lock:
            self._next_reload = None  # reading from here on: later callers need another
            return await self._reload()

    async def _reload(self) -> ConfigError | None:
        """One reload, under the lock."""
        old = self.snapshot
        try:
            new = await asyncio.to_thread(
                load_snapshot,
                old.config.path,
                listen=self._listen_override,
                state_dir=self._state_dir_override,
            )
        except ConfigError as exc:
            self._report_reload(loaded=False)
            log.error("reload failed; the old config stays in force", extra=fields(error=str(exc)))
            return exc
        except Exception as exc:  # a fault of ours in loading: still keep the old config
            return self._reload_fault(old, exc)
        try:
            authenticator = Authenticator(new.config.auth, self.generated_token)
        except ValueError:
            # No credentials left, and no generated token to fall back on: one is made
            # only at a start (docs/configuration.md, Reload).
            self._report_reload(loaded=False)
            error = ConfigError(
                display_name(new.config.path),
                0,
                "auth",
                "a reload cannot remove every credential; restart instead, and a token "
                "is generated",
            )
            log.error(
                "reload failed; the old config stays in force", extra=fields(error=str(error))
            )
            return error
        except Exception as exc:  # a fault of ours
            return self._reload_fault(old, exc)
        # Against what runs (the start's), not the last reload's: a section edited back to
        # it takes effect at once, and one still edited is said again at each reload.
        running = self.started_with
        changed = [name for name in ("logging", "server", "storage", "state_dir")
                   if getattr(new.config, name) != getattr(running.config, name)]  # fmt: skip
        if new.channels != running.channels:
            changed.insert(1, "channels")
        for name in changed:
            log.warning(
                "config section changed; it takes effect at the next restart",
                extra=fields(section=name),
            )
        self.restart_needed = tuple(changed)
        self.snapshot = new
        self.authenticator = authenticator
        if new.escalation != old.escalation:
            self._queue_rearm(self._layout(old.escalation), self._layout(new.escalation))
            if self._rearm_retry is None and not await self._apply_rearms():
                self._rearm_retry = asyncio.create_task(self._retry_rearms(), name="rearm-retry")
        self._report_reload(loaded=True)
        self.metrics.rules_loaded.set(new.classifier.rule_count)
        log.info("config reloaded", extra=fields(rules=new.classifier.rule_count))
        self.config_warnings = tuple(log_config_warnings(new))
        return None


def log_config_warnings(snapshot: Snapshot) -> list[str]:
    """Log what ``responder check`` would warn of in this config; returns it."""
    warnings = config_warnings(snapshot)
    for warning in warnings:
        log.warning("config warning", extra=fields(warning=warning))
    return warnings


@contextlib.asynccontextmanager
async def in_background(loop: Coroutine[Any, Any, None], name: str) -> AsyncIterator[None]:
    """Run ``loop`` (a daemon's forever-loop) while the app serves; cancel it at shutdown."""
    task = asyncio.create_task(loop, name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


RUNTIME = web.AppKey("runtime", Runtime)
# The body limit aiohttp enforces, fixed at start (``server`` changes wait for a restart).
BODY_LIMIT = web.AppKey("body_limit", int)

"""Message templates: the text of every page, rendered from Jinja2 templates in a sandbox.

A page's words come from ``<kind>.<part>.j2`` files: the shipped defaults in
``responder/message_templates/``, overridden file by file from the operator's
``templates.directory``, and again from named sets (``templates.sets``) that rules choose per
notice kind. Everything is read, compiled and test-rendered against sample contexts when the
config loads, so a syntax error, a misspelt variable or a sandbox violation is a
``ConfigError`` naming the file and line, not a silent page at 3 a.m. Alert labels are
attacker-controlled text: templates run in Jinja's immutable sandbox, the HTML part is
autoescaped, and control characters in every value are neutralized before rendering, so a
label can neither add lines to an SMS nor headers to an email. See docs/templates.md.
"""

from __future__ import annotations

import logging
import os
import re
import traceback
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from dataclasses import fields as dataclass_fields
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from notifiers.sms_text import fit_keeping_head
from responder.calendar import parse_timezone
from responder.incident import REASSIGN_STEP, Incident, Page, PageKind
from responder.log import fields
from responder.yamlfile import ConfigError, Node

__all__ = [
    "CHANNEL_PARTS",
    "DEFAULT_SET",
    "KINDS",
    "SECTION_KEYS",
    "TEMPLATE_FILES",
    "BundleItem",
    "Kind",
    "MessageContext",
    "Part",
    "RenderedMessage",
    "Templates",
    "clean_text",
    "context_for",
    "default_templates",
    "duration_filter",
    "http_url_test",
    "kind_for_page",
    "load_templates",
    "localtime_filter",
]

log = logging.getLogger("responder.messages")

SECTION_KEYS = ("directory", "sms_max_segments", "timezone", "sets")
SET_KEYS = ("directory",)
DEFAULT_SET = "default"  # the operator directory over the shipped files; rules may name it
DEFAULT_SMS_SEGMENTS = 3
MAX_SMS_SEGMENTS = 10  # Twilio refuses bodies over 1600 characters (10 GSM-7 parts)
LOCALTIME_FORMAT = "%Y-%m-%d %H:%M %Z"
# A single label value may be long (descriptions); nothing a page shows needs more than this,
# and it bounds the work an alert sender can cause per render.
MAX_VALUE_CHARS = 4000
MAX_SUBJECT_CHARS = 250
_SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
# An http(s) URL with a host: the host part stops at the first of / ? #, so a long value
# that fails at its end is refused in linear time ("[^\s/?#]+\S*" backtracked
# quadratically: 90 ms for 4,000 characters, on the event loop, per HTML email).
_HTTP_URL = re.compile(r"https?://[^\s/?#]+(?:[/?#]\S*)?")
_SUFFIX = ".j2"
# Test seam: compiled templates shared between loads (jinja2 keys them by name and checks
# their source). None in the daemon, which loads at start and at a reload; the test suite
# loads the same shipped templates hundreds of times, and compiling them is most of a load.
BYTECODE_CACHE: jinja2.BytecodeCache | None = None


class Kind(StrEnum):
    """What a notice is for; also the key a rule's ``templates:`` map uses."""

    ACTIVATION = "activation"  # an escalation page: someone must act
    STATUS = "status"  # a status update while the incident is open
    RECOVERY = "recovery"  # the incident resolved
    TEST = "test"  # a drill
    BUNDLE = "bundle"  # several new incidents paging one person at once


class Part(StrEnum):
    """One template file per kind and part: ``activation.sms.j2``, ``recovery.html.j2``."""

    SMS = "sms"
    VOICE = "voice"
    SUBJECT = "subject"  # email subject; also the heading of every other channel
    TEXT = "text"  # email plain-text body
    HTML = "html"  # email HTML body (autoescaped); empty output means no HTML part
    WEBHOOK = "webhook"


KINDS: frozenset[str] = frozenset(k.value for k in Kind)
# Which parts make the body of each channel; every channel also gets the subject.
CHANNEL_PARTS: Mapping[str, tuple[Part, ...]] = MappingProxyType(
    {
        "sms": (Part.SMS,),
        "voice": (Part.VOICE,),
        "email": (Part.TEXT, Part.HTML),
        "webhook": (Part.WEBHOOK,),
    }
)
TEMPLATE_FILES: frozenset[str] = frozenset(f"{k}.{p}{_SUFFIX}" for k in Kind for p in Part)

_PAGE_KINDS: Mapping[PageKind, Kind] = MappingProxyType(
    {
        PageKind.PAGE: Kind.ACTIVATION,
        PageKind.STATUS: Kind.STATUS,
        PageKind.RECOVERY: Kind.RECOVERY,
        PageKind.TEST: Kind.TEST,
    }
)


def kind_for_page(kind: PageKind) -> Kind:
    """The notice kind of a page (a bundle is a delivery decision, not a page kind)."""
    return _PAGE_KINDS[kind]


# -- the context -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BundleItem:
    """One incident of a bundle notice. ``kind`` is what the notice about it is: a new
    incident ("activation"), a status update, its recovery or a drill (``Kind``'s values)."""

    incident_id: int
    title: str
    severity: str
    category: str
    state: str
    triggered_at: datetime  # start of the current episode
    ack_url: str | None = None
    kind: str = "activation"
    # The incident's trigger, whatever episodes followed: what "since" means to the
    # people told (as ``MessageContext.started_at``). None: ``triggered_at``.
    started_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class MessageContext:
    """Everything a template may use; templates see each field under its own name.

    Times are aware datetimes (templates show them with ``localtime``). For a bundle the
    incident fields describe its first item and ``items`` lists them all.
    """

    incident_id: int
    title: str
    severity: str
    category: str
    state: str
    opened_at: datetime
    triggered_at: datetime  # start of the current episode
    now: datetime  # when the message is rendered: "open for" is counted to here
    step: str  # L1, L2.r1, U3, R, ...
    contact: str
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    annotations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    alert_count: int = 0
    firing_count: int = 0
    respond_s: int | None = None  # response target in force, seconds
    resolve_s: int | None = None
    timezone: ZoneInfo | None = None  # the contact's zone; None: templates.timezone
    ack_url: str | None = None
    resolve_url: str | None = None
    public_url: str | None = None
    is_test: bool = False
    items: tuple[BundleItem, ...] = ()
    # The incident's trigger, whatever episodes followed (an unacknowledge, a severity raise
    # or a reload start the escalation over, not the incident): what ``open_for``, response
    # targets, status updates and the time to resolve count from. None: ``triggered_at``.
    started_at: datetime | None = None

    @property
    def level(self) -> int | None:
        """The escalation level number of an ``L<n>`` step, else None."""
        match = re.match(r"L(\d+)", self.step)
        return int(match.group(1)) if match else None


def context_for(
    page: Page,
    incident: Incident,
    *,
    now: datetime,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    contact_timezone: ZoneInfo | None = None,
    ack_url: str | None = None,
    resolve_url: str | None = None,
    public_url: str | None = None,
    items: Sequence[BundleItem] = (),
) -> MessageContext:
    """The context of one page; ``labels``/``annotations`` are those of the incident's first
    alert (with the classification's extra labels and annotations merged in)."""
    return MessageContext(
        incident_id=incident.id,
        title=incident.title,
        severity=incident.severity,
        category=incident.category,
        state=incident.state.value,
        opened_at=incident.opened_at,
        triggered_at=incident.triggered_at,
        now=now,
        step=page.step,
        contact=page.contact,
        acknowledged_at=incident.acknowledged_at,
        acknowledged_by=incident.acknowledged_by,
        resolved_at=incident.resolved_at,
        resolved_by=incident.resolved_by,
        labels=MappingProxyType(dict(labels)),
        annotations=MappingProxyType(dict(annotations)),
        alert_count=incident.alert_count,
        firing_count=incident.firing_count,
        respond_s=incident.respond_s,
        resolve_s=incident.resolve_s,
        timezone=contact_timezone,
        ack_url=ack_url,
        resolve_url=resolve_url,
        public_url=public_url,
        is_test=page.kind is PageKind.TEST,
        items=tuple(items),
        started_at=incident.started,
    )


@dataclass(frozen=True, slots=True)
class RenderedMessage:
    """A rendered page. ``problem`` says why a fallback text was used (None: none was)."""

    subject: str
    text: str
    html: str | None = None
    problem: str | None = None


# -- neutralizing values ---------------------------------------------------------------------------

# Zero-width joiners build emoji sequences; tag characters build subdivision flags.
_KEEP_FORMAT = frozenset("\u200c\u200d")


def _is_kept_format(ch: str) -> bool:
    return ch in _KEEP_FORMAT or "\U000e0020" <= ch <= "\U000e007f"


def clean_text(value: str) -> str:
    """``value`` on one line: control characters, line and paragraph separators and odd spaces
    become one space; invisible format characters (bidi overrides, BOM) are dropped."""
    if len(value) > MAX_VALUE_CHARS:
        value = value[:MAX_VALUE_CHARS] + "..."
    if value.isprintable():  # the common case: nothing to do
        return value
    out: list[str] = []
    spaced = False
    for ch in value:
        category = unicodedata.category(ch)
        if category in ("Cc", "Zl", "Zp", "Zs"):
            # A run such as "\r\n" becomes one space, not two.
            if not spaced:
                out.append(" ")
            spaced = True
            continue
        spaced = False
        if category == "Cf" and not _is_kept_format(ch):
            continue
        out.append(ch)
    return "".join(out)


class _Labels(dict[str, str]):
    """Label map for templates: an absent label is the empty string, as in Alertmanager."""

    def __missing__(self, key: str) -> str:
        return ""


def _label_view(values: Mapping[str, str]) -> _Labels:
    return _Labels({clean_text(k): clean_text(v) for k, v in values.items()})


def _optional(value: str | None) -> str | None:
    return None if value is None else clean_text(value)


def _variables(context: MessageContext, zone: ZoneInfo) -> dict[str, Any]:
    """The names templates see: the context's fields, cleaned, plus a few derived values."""
    variables: dict[str, Any] = {
        f.name: getattr(context, f.name) for f in dataclass_fields(context)
    }
    for name in ("title", "severity", "category", "state", "step", "contact"):
        variables[name] = clean_text(variables[name])
    for name in ("acknowledged_by", "resolved_by", "ack_url", "resolve_url", "public_url"):
        variables[name] = _optional(variables[name])
    labels = _label_view(context.labels)
    annotations = _label_view(context.annotations)
    variables["labels"] = labels
    variables["annotations"] = annotations
    variables["items"] = [
        replace(
            item,
            title=clean_text(item.title),
            severity=clean_text(item.severity),
            category=clean_text(item.category),
            state=clean_text(item.state),
            ack_url=_optional(item.ack_url),
        )
        for item in context.items
    ]
    variables["timezone"] = zone.key
    variables["level"] = context.level
    variables["summary"] = annotations["summary"] or annotations["description"]
    started = context.started_at or context.triggered_at
    variables["started_at"] = started
    end = context.resolved_at or context.now
    variables["open_for"] = max(end - started, timedelta(0))
    variables["why"] = _why(context, started)
    public = variables["public_url"]
    variables["incident_url"] = (
        f"{public.rstrip('/')}/api/v1/incidents/{context.incident_id}" if public else None
    )
    return variables


def _why(context: MessageContext, started: datetime) -> str:
    """Why a page comes that is not the incident's first news: the people paged must not
    take it for the page they already answered."""
    if context.step.startswith(REASSIGN_STEP):
        return "Reassigned to you"
    if re.match(r"L\d+\.s", context.step):
        return "Its snooze ended"
    if started > context.opened_at:
        return "Fired again after it resolved"
    return ""


# -- filters ---------------------------------------------------------------------------------------


def _zone_of(ctx: jinja2.runtime.Context, zone: str | None) -> ZoneInfo:
    return ZoneInfo(zone or str(ctx.get("timezone") or "UTC"))


@jinja2.pass_context
def localtime_filter(
    ctx: jinja2.runtime.Context,
    value: datetime | None,
    fmt: str = LOCALTIME_FORMAT,
    zone: str | None = None,
) -> str:
    """``2026-11-29 14:05 CET``: a time in the message's zone (or ``zone``)."""
    if value is None:
        return ""
    if value.tzinfo is None:  # stored times are UTC; never guess a local zone
        value = value.replace(tzinfo=UTC)
    return value.astimezone(_zone_of(ctx, zone)).strftime(fmt)


def _words(count: int, unit: str) -> str:
    return f"{count} {unit}" if count == 1 else f"{count} {unit}s"


def duration_filter(value: timedelta | float | None, words: bool = False) -> str:
    """``45s``, ``12m``, ``1h05m``, ``3d04h``: compact, for SMS; with ``words``,
    ``1 hour 5 minutes``, for speech. Seconds are dropped above a minute."""
    if value is None:
        return ""
    # Rounded to the second, as the review report rounds: both must tell the same time.
    seconds = round(value.total_seconds() if isinstance(value, timedelta) else value)
    seconds = max(seconds, 0)
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if words:
        if seconds < 60:
            return _words(seconds, "second")
        if minutes < 60:
            return _words(minutes, "minute")
        if hours < 24:
            rest = minutes % 60
            return _words(hours, "hour") + (f" {_words(rest, 'minute')}" if rest else "")
        rest = hours % 24
        return _words(days, "day") + (f" {_words(rest, 'hour')}" if rest else "")
    if seconds < 60:
        return f"{seconds}s"
    if minutes < 60:
        return f"{minutes}m"
    if hours < 24:
        return f"{hours}h{minutes % 60:02d}m" if minutes % 60 else f"{hours}h"
    return f"{days}d{hours % 24:02d}h" if hours % 24 else f"{days}d"


def http_url_test(value: object) -> bool:
    """True for an http(s) URL with a host: safe to put in an ``href`` (never ``javascript:``)."""
    return isinstance(value, str) and _HTTP_URL.fullmatch(value) is not None


@jinja2.pass_context
def _finalize(ctx: jinja2.runtime.Context, value: object) -> object:
    # None prints as nothing, times in the message's zone, spans as durations: the natural
    # reading of ``{{ acknowledged_at }}`` or ``{{ open_for }}``.
    if value is None:
        return ""
    if isinstance(value, datetime):
        return localtime_filter(ctx, value)
    if isinstance(value, timedelta):
        return duration_filter(value)
    return value


# -- loading ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Source:
    text: str
    display: str  # the file as errors name it


class _MemoryLoader(jinja2.BaseLoader):
    """Serves sources read at load time, so a render never touches the disk."""

    def __init__(self, sources: Mapping[str, _Source]) -> None:
        self._sources = dict(sources)

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        source = self._sources.get(template)
        if source is None:
            raise jinja2.TemplateNotFound(template)
        return source.text, source.display, lambda: True

    def list_templates(self) -> list[str]:
        return sorted(self._sources)


def _autoescape(name: str | None) -> bool:
    return name is not None and name.endswith(".html" + _SUFFIX)


def _environment(sources: Mapping[str, _Source]) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        loader=_MemoryLoader(sources),
        undefined=jinja2.StrictUndefined,
        autoescape=_autoescape,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
        finalize=_finalize,
        bytecode_cache=BYTECODE_CACHE,
    )
    env.filters["localtime"] = localtime_filter
    env.filters["duration"] = duration_filter
    env.tests["http_url"] = http_url_test
    return env


def _display(path: Path) -> str:
    """As the operator would type it: relative below the working directory, else absolute."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if relative.startswith("..") else relative


def _shipped_sources() -> dict[str, _Source]:
    folder = resources.files("responder") / "message_templates"
    sources: dict[str, _Source] = {}
    for entry in folder.iterdir():
        if entry.name.endswith(_SUFFIX):
            display = f"responder/message_templates/{entry.name}"
            sources[entry.name] = _Source(entry.read_text(encoding="utf-8"), display)
    missing = TEMPLATE_FILES - sources.keys()
    if missing:  # a broken installation, not an operator mistake
        raise ConfigError(
            "responder/message_templates", 0, "", f"shipped templates missing: {sorted(missing)}"
        )
    return sources


def _directory_sources(node: Node, base_dir: Path, *, required: bool) -> dict[str, _Source]:
    """The ``*.j2`` files of a configured folder; names must be known templates or helpers."""
    folder = Path(node.as_str())
    if not folder.is_absolute():
        folder = base_dir / folder
    if not folder.is_dir():
        raise node.error(f"not a directory: {folder}")
    sources: dict[str, _Source] = {}
    for path in sorted(folder.iterdir()):
        if not path.name.endswith(_SUFFIX):
            continue  # READMEs, editor backups: not ours
        display = _display(path)
        if path.name not in TEMPLATE_FILES and not path.name.startswith("_"):
            raise ConfigError(
                display,
                0,
                "",
                "unknown template file; expected <kind>.<part>.j2 with kind one of "
                f"{', '.join(Kind)} and part one of {', '.join(Part)}, or a helper "
                "starting with _",
            )
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(display, 0, "", f"cannot read: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(display, 0, "", "not valid UTF-8") from None
        sources[path.name] = _Source(text, display)
    if required and not sources:
        raise node.error(f"no *.j2 templates in {folder}")
    return sources


def _sample_contexts() -> dict[Kind, tuple[MessageContext, ...]]:
    """Contexts every template must render at load: one with everything set, one sparse.

    Each kind keeps its promise (a recovery has ``resolved_at``, a bundle at least one item);
    everything else that is optional is None in the sparse one.
    """
    start = datetime(2026, 11, 29, 13, 5, tzinfo=UTC)
    full = MessageContext(
        incident_id=42,
        title="DiskFull on db-1:9100",
        severity="P1",
        category="availability",
        state="acknowledged",
        opened_at=start - timedelta(hours=2),
        triggered_at=start,
        now=start + timedelta(minutes=25),
        step="L2",
        contact="alice",
        acknowledged_at=start + timedelta(minutes=7),
        acknowledged_by="bob",
        labels=MappingProxyType(
            {
                "alertname": "DiskFull",
                "instance": "db-1:9100",
                "job": "node",
                "severity": "critical",
                "service": "billing",
                "team": "platform",
                "env": "prod",
            }
        ),
        annotations=MappingProxyType(
            {
                "summary": "Disk /var is 95% full",
                "description": "Filesystem /var on db-1 has 2 GiB left.",
                "runbook_url": "https://wiki.example.com/disk-full",
            }
        ),
        alert_count=3,
        firing_count=2,
        respond_s=1800,
        resolve_s=28800,
        timezone=ZoneInfo("Europe/Berlin"),
        ack_url="https://responder.example.com/ack/abc",
        resolve_url="https://responder.example.com/ack/abc?resolve",
        public_url="https://responder.example.com",
        items=(
            BundleItem(42, "DiskFull on db-1:9100", "P1", "availability", "triggered", start),
            BundleItem(43, "TargetDown on web-2", "P1", "availability", "triggered", start),
            BundleItem(44, "BruteForce on vpn-1", "P0", "security", "triggered", start),
        ),
    )
    sparse = replace(
        full,
        state="triggered",
        step="L1",
        acknowledged_at=None,
        acknowledged_by=None,
        labels=MappingProxyType({"alertname": "Watchdog"}),
        annotations=MappingProxyType({}),
        alert_count=1,
        firing_count=1,
        respond_s=None,
        resolve_s=None,
        timezone=None,
        ack_url=None,
        resolve_url=None,
        public_url=None,
        items=full.items[:1],
    )
    resolved = full.now + timedelta(minutes=20)
    # Bundles also carry status updates, recoveries and drills, alone or mixed.
    over = tuple(replace(item, state="resolved", kind="recovery") for item in full.items)
    mixed = replace(
        full,
        items=(
            full.items[0],
            replace(full.items[1], state="acknowledged", kind="status"),
            over[2],
            replace(full.items[0], incident_id=45, kind="test"),
        ),
    )
    samples: dict[Kind, tuple[MessageContext, ...]] = {
        Kind.ACTIVATION: (full, sparse),
        Kind.STATUS: (replace(full, step="U1"), replace(sparse, step="U1")),
        Kind.RECOVERY: (
            replace(full, state="resolved", step="R", resolved_at=resolved),
            replace(sparse, state="resolved", step="R", resolved_at=resolved),
        ),
        Kind.TEST: (replace(full, is_test=True), replace(sparse, is_test=True)),
        Kind.BUNDLE: (full, sparse, mixed, replace(full, items=over)),
    }
    return samples


def _blame(exc: BaseException, displays: Iterable[str], fallback: str) -> tuple[str, int]:
    """The template file and line an error happened in (Jinja maps its frames to them)."""
    if isinstance(exc, jinja2.TemplateSyntaxError) and exc.filename:
        return exc.filename, exc.lineno
    known = set(displays)
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename in known:
            return frame.filename, frame.lineno or 0
    return fallback, 0


def _describe(exc: BaseException) -> str:
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return f"template syntax error: {exc.message}"
    if isinstance(exc, jinja2.exceptions.SecurityError):
        return f"not allowed in the sandbox: {exc}"
    if isinstance(exc, jinja2.UndefinedError):
        return f"{exc.message} (see docs/templates.md for the variables)"
    if isinstance(exc, jinja2.TemplateNotFound):
        return f"template not found: {exc.name}"
    return f"{type(exc).__name__}: {exc}"


class _Set:
    """One lookup chain (set folder, operator folder, shipped files), compiled."""

    __slots__ = ("environment", "sources")

    def __init__(self, sources: Mapping[str, _Source]) -> None:
        self.sources = MappingProxyType(dict(sources))
        self.environment = _environment(self.sources)

    def template(self, name: str) -> jinja2.Template:
        return self.environment.get_template(name)


class Templates:
    """The compiled templates of one config snapshot; immutable once loaded."""

    __slots__ = ("_sets", "names", "sms_max_segments", "timezone")

    def __init__(
        self, sets: Mapping[str, _Set], *, timezone: ZoneInfo, sms_max_segments: int
    ) -> None:
        self._sets = MappingProxyType(dict(sets))
        # The names a rule's ``templates:`` map may use (check_references).
        self.names: frozenset[str] = frozenset(sets)
        self.timezone = timezone
        self.sms_max_segments = sms_max_segments

    def render(
        self,
        kind: Kind | str,
        channel: str,
        context: MessageContext,
        *,
        template_set: str | None = None,
    ) -> RenderedMessage:
        """The subject and body of one message. Never raises for data: a template that fails
        on a real alert falls back to the default set, then to a built-in line, and
        ``problem`` says so."""
        kind = Kind(kind)
        if channel not in CHANNEL_PARTS:
            raise ValueError(f"unknown channel {channel!r}")
        chosen = template_set or DEFAULT_SET
        problem: str | None = None
        if chosen not in self._sets:
            # A stored classification may name a set a later reload removed.
            problem = f"template set {chosen!r} is not defined; used {DEFAULT_SET!r}"
            chosen = DEFAULT_SET
        zone = context.timezone or self.timezone
        variables = _variables(context, zone)
        for name in dict.fromkeys((chosen, DEFAULT_SET)):
            try:
                return self._render_with(self._sets[name], kind, channel, variables, problem)
            except Exception as exc:  # a template bug must not stop the page
                where, line = _blame(exc, _displays(self._sets[name]), name)
                problem = f"{where}:{line}: {_describe(exc)}"
                log.error(
                    "message template failed; using a fallback",
                    extra=fields(incident=context.incident_id, kind=kind.value, error=problem),
                )
        subject, text = _last_resort(kind, variables)
        return RenderedMessage(subject, self._fit(kind, channel, text), None, problem)

    def _render_with(
        self,
        chain: _Set,
        kind: Kind,
        channel: str,
        variables: Mapping[str, Any],
        problem: str | None,
    ) -> RenderedMessage:
        def part(which: Part) -> str:
            return chain.template(f"{kind}.{which}{_SUFFIX}").render(variables)

        subject = _one_line(part(Part.SUBJECT), MAX_SUBJECT_CHARS)
        html: str | None = None
        if channel == "sms":
            text = _tidy_lines(part(Part.SMS))
        elif channel == "voice":
            text = _one_line(part(Part.VOICE), None)
        elif channel == "email":
            text = _tidy_lines(part(Part.TEXT))
            html = part(Part.HTML).strip() or None
        else:
            text = _tidy_lines(part(Part.WEBHOOK))
        return RenderedMessage(subject, self._fit(kind, channel, text), html, problem)

    def _fit(self, kind: Kind, channel: str, text: str) -> str:
        if channel != "sms":
            return text
        # What must survive the cut: what happened and how to acknowledge, the first two
        # lines; a bundle says both ("3 new P1 incidents, reply ACK ALL:") in its first.
        head = 1 if kind is Kind.BUNDLE else 2
        return fit_keeping_head(text, self.sms_max_segments, head_lines=head)

    def check(self) -> None:
        """Render every template of every set against the sample contexts; raise
        ``ConfigError`` naming the file and line of the first failure."""
        samples = _sample_contexts()
        for name, chain in self._sets.items():
            displays = _displays(chain)
            for kind, contexts in samples.items():
                for context in contexts:
                    variables = _variables(context, context.timezone or self.timezone)
                    for which in Part:
                        file = f"{kind}.{which}{_SUFFIX}"
                        try:
                            chain.template(file).render(variables)
                        except Exception as exc:
                            where, line = _blame(exc, displays, chain.sources[file].display)
                            raise ConfigError(
                                where, line, "", f"{_describe(exc)} (template set {name!r})"
                            ) from None


def _displays(chain: _Set) -> list[str]:
    return [source.display for source in chain.sources.values()]


def _one_line(text: str, limit: int | None) -> str:
    """Whitespace collapsed to single spaces: an email subject, a spoken text."""
    line = " ".join(text.split())
    if limit is not None and len(line) > limit:
        line = line[: limit - 3].rstrip() + "..."
    return line


def _tidy_lines(text: str) -> str:
    """Trailing spaces off every line, at most one blank line in a row, none at the ends."""
    lines = [line.rstrip() for line in text.strip().splitlines()]
    out: list[str] = []
    for line in lines:
        if not line and out and not out[-1]:
            continue
        out.append(line)
    return "\n".join(out)


def _last_resort(kind: Kind, variables: Mapping[str, Any]) -> tuple[str, str]:
    """The built-in words when every template failed: enough to act on."""
    ref = f"#{variables['incident_id']}"
    head = f"[{variables['severity']}] {ref} {variables['title']}"
    if kind is Kind.RECOVERY:
        return f"[RESOLVED] {head}", f"RESOLVED {head}"
    if kind is Kind.STATUS:
        return f"{head} status update", f"STATUS {head}"
    if kind is Kind.TEST:
        return f"[TEST] responder drill {ref}", f"TEST page from responder (drill {ref})."
    if kind is Kind.BUNDLE:
        count = len(variables["items"])
        return f"{count} new incidents", f"{count} new incidents. Reply ACK ALL."
    return head, f"{head}. Reply ACK {variables['incident_id']} to acknowledge."


def _compile_all(chain: _Set) -> None:
    for name, source in chain.sources.items():
        try:
            chain.template(name)
        except jinja2.TemplateSyntaxError as exc:
            raise ConfigError(
                exc.filename or source.display, exc.lineno, "", _describe(exc)
            ) from None


def load_templates(section: Node | None, base_dir: Path) -> Templates:
    """Read, compile and test-render the ``templates:`` section (None: shipped defaults)."""
    zone = ZoneInfo("UTC")
    segments = DEFAULT_SMS_SEGMENTS
    base = _shipped_sources()
    set_folders: dict[str, dict[str, _Source]] = {}
    if section is not None and not section.is_null():
        section.keys_allowed(*SECTION_KEYS)
        directory_node = section.get("directory")
        if directory_node is not None:
            base |= _directory_sources(directory_node, base_dir, required=False)
        segments_node = section.get("sms_max_segments")
        if segments_node is not None:
            segments = segments_node.as_int(1, MAX_SMS_SEGMENTS)
        zone_node = section.get("timezone")
        if zone_node is not None:
            zone = parse_timezone(zone_node)
        sets_node = section.get("sets")
        for name, set_node in sets_node.items() if sets_node is not None else ():
            if not _SET_NAME.fullmatch(name) or name == DEFAULT_SET:
                raise set_node.error(
                    f"invalid template set name {name!r} (letters, digits and _ . : -, "
                    f"starting with a letter or digit; {DEFAULT_SET!r} is reserved)"
                )
            if not set_node.is_map():
                raise set_node.error("expected a mapping with directory:")
            set_node.keys_allowed(*SET_KEYS)
            set_folders[name] = _directory_sources(set_node["directory"], base_dir, required=True)
    chains = {DEFAULT_SET: _Set(base)}
    for name, overrides in set_folders.items():
        chains[name] = _Set(base | overrides)
    for chain in chains.values():
        _compile_all(chain)
    templates = Templates(chains, timezone=zone, sms_max_segments=segments)
    templates.check()
    return templates


def default_templates() -> Templates:
    """The shipped templates alone (UTC, 3 SMS segments): for tools and tests."""
    return load_templates(None, Path.cwd())

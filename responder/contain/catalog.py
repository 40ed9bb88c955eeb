"""The action catalog: ``actions:`` and ``containment:`` read strictly into immutable objects.

An action is data: a fixed argv, an HTTP request or a built-in (restart a systemd unit, block an
address, capture evidence), plus its parameters and the options that keep it safe (timeout,
retries, cooldown, runs per window, concurrency, dry-run, undo with a hold-down, a check that
verifies it worked). Placeholders such as ``{unit}`` only ever name a declared parameter and
are replaced by its validated value inside one argv element; everything that can be checked
before an alert arrives (placeholders, URL shape, templates, allowlists) is checked here, so a
config error names its file, line and key instead of surfacing during an incident.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from responder.classify.explain import format_duration
from responder.contain.params import ParamSpec, ParamType, normalize_unit, parse_params
from responder.secrets import Secret, read_secret
from responder.yamlfile import Node

ACTION_KEYS_COMMON = (
    "kind",
    "description",
    "params",
    "target",
    "timeout",
    "retries",
    "retry_delay",
    "escalate_after_failures",
    "cooldown",
    "max_runs",
    "window",
    "concurrency",
    "dry_run",
    "undo",
    "undo_hold_down",
    "check",
    "on_resolve",
    "breaker_failures",
    "action_breaker_failures",
)
_ACTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([a-z_][a-z0-9_]*)\}|[{}]")
_NFT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")
_CHAIN = re.compile(r"[A-Za-z0-9_-]{1,28}")

# Caps on how long one run may take: a run holds a concurrency slot, and the first page a
# rule's hold_page holds for it, until it ends; a typo such as `timeout: 10h` must fail at
# load, not during an incident. Ten minutes outlasts a slow unit's start (systemd's own
# TimeoutStartSec is 90s by default); an hour is the longest a page may be held.
MAX_TIMEOUT = timedelta(minutes=10)  # timeout, retry_delay, check.delay, check.timeout
MAX_RETRIES = 5
MAX_RUN = timedelta(hours=1)  # every attempt with its check, and the delays between them
# Each evidence item (a journal, a file, a command's output) is held in memory until the
# capture is written: 16 MiB is some 100,000 log lines.
MAX_EVIDENCE_BYTES = 16 * 1024 * 1024
_HOLDS = "a run holds a concurrency slot, and the page a rule holds for it, that long"


class Kind(StrEnum):
    EXEC = "exec"
    HTTP = "http"
    SYSTEMD_RESTART = "systemd-restart"
    BLOCK_ADDRESS = "block-address"
    CAPTURE_EVIDENCE = "capture-evidence"


@dataclass(frozen=True, slots=True)
class Placeholder:
    name: str


@dataclass(frozen=True, slots=True)
class Template:
    """A string with ``{param}`` placeholders; ``{{`` and ``}}`` are literal braces."""

    source: str
    parts: tuple[str | Placeholder, ...]

    @property
    def names(self) -> frozenset[str]:
        return frozenset(p.name for p in self.parts if isinstance(p, Placeholder))

    def render(self, values: Mapping[str, str], encode: Callable[[str], str] | None = None) -> str:
        """Substitute validated values; the result is one string, never split or re-parsed."""
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, Placeholder):
                value = values[part.name]
                out.append(encode(value) if encode is not None else value)
            else:
                out.append(part)
        return "".join(out)


def parse_template(node: Node, declared: frozenset[str]) -> Template:
    text = node.as_str()
    if "\x00" in text:
        raise node.error("a NUL cannot be passed to a program (argv ends there)")
    parts: list[str | Placeholder] = []
    pos = 0
    for match in _PLACEHOLDER.finditer(text):
        if match.start() > pos:
            parts.append(text[pos : match.start()])
        token = match.group(0)
        if token in ("{{", "}}"):
            parts.append(token[0])
        elif match.group(1) is not None:
            name = match.group(1)
            if name not in declared:
                raise node.error(f"placeholder {{{name}}} names no declared parameter")
            parts.append(Placeholder(name))
        else:
            raise node.error("a lone brace; write {{ or }} for a literal brace")
        pos = match.end()
    if pos < len(text):
        parts.append(text[pos:])
    return Template(text, tuple(parts))


def _argv(node: Node, declared: frozenset[str], *, what: str = "argv") -> tuple[Template, ...]:
    items = node.as_list()
    if not items:
        raise node.error(f"{what} must not be empty")
    argv = tuple(parse_template(item, declared) for item in items)
    first = argv[0]
    if first.names:
        raise items[0].error("the executable must be fixed, not a parameter")
    if not first.source.startswith("/"):
        raise items[0].error("the executable must be an absolute path")
    return argv


EnvValue = str | Secret


def _header_controls(value: str) -> bool:
    """Whether a header value holds a control character the HTTP client refuses (all but a
    tab: a line break would be a header of its own)."""
    return any((ord(c) < 0x20 and c != "\t") or c == "\x7f" for c in value)


def _env_or_headers(
    node: Node | None, base_dir: Path, name_re: re.Pattern[str], what: str
) -> Mapping[str, EnvValue]:
    out: dict[str, EnvValue] = {}
    if node is None:
        return MappingProxyType(out)
    for name, item in node.items():
        if not name_re.fullmatch(name):
            raise item.error(f"not a valid {what} name")
        if what == "environment variable" and name.startswith("RESPONDER_"):
            raise item.error("RESPONDER_* variables are set by responder from the alert")
        if item.is_map():
            item.keys_allowed("value_file", "value_env")
            # An action's variable may be a key or a certificate: several lines are fine. A
            # header may not hold a line break (the HTTP client refuses it at each run).
            one_line = what == "header"
            secret = read_secret(item, "value", base_dir, required=True, one_line=one_line)
            assert secret is not None  # required=True raises instead
            # The process's environment cannot hold a NUL, and a header no control
            # character but a tab: refused here, not at the first run (the value unsaid).
            if one_line and _header_controls(secret.value):
                raise item.error("the secret holds a control character a header cannot carry")
            if "\x00" in secret.value:
                raise item.error("the secret holds a NUL, which an environment cannot carry")
            out[name] = secret
        else:
            value = item.as_str()
            if any(ord(c) < 0x20 or c == "\x7f" for c in value):
                raise item.error("control characters are not allowed")
            out[name] = value
    return MappingProxyType(out)


@dataclass(frozen=True, slots=True)
class ExecSpec:
    argv: tuple[Template, ...]
    env: Mapping[str, EnvValue]
    cwd: Path | None


@dataclass(frozen=True, slots=True)
class UrlSpec:
    """A URL whose placeholders may stand only in the path; each is percent-encoded."""

    prefix: str  # scheme://host:port
    path: Template
    query: str  # fixed, may be empty

    def render(self, values: Mapping[str, str]) -> str:
        url = self.prefix + self.path.render(values, encode=lambda v: quote(v, safe=""))
        return f"{url}?{self.query}" if self.query else url


def _url(node: Node, declared: frozenset[str]) -> UrlSpec:
    text = node.as_str()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise node.error("expected an absolute http:// or https:// URL")
    if parts.fragment:
        raise node.error("a URL fragment is never sent; remove it")
    if "{" in parts.netloc or "{" in parts.query:
        raise node.error("placeholders are allowed in the URL path only")
    if parts.username or parts.password:
        raise node.error("credentials in the URL would be logged; use a header secret")
    path_node = Node(parts.path or "/", node.file, node.line, node.path)
    return UrlSpec(
        f"{parts.scheme}://{parts.netloc}", parse_template(path_node, declared), parts.query
    )


_JINJA = SandboxedEnvironment(
    autoescape=False,
    undefined=jinja2.StrictUndefined,
    # Every {{ expression }} is written as JSON, so a value can never break out of its string.
    finalize=lambda value: _json_dumps(value),
)


def _json_dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=True)


@dataclass(frozen=True, slots=True)
class BodyTemplate:
    source: str
    template: jinja2.Template = field(repr=False, compare=False)


def _body(node: Node) -> BodyTemplate:
    text = node.as_str()
    try:
        return BodyTemplate(text, _JINJA.from_string(text))
    except jinja2.TemplateSyntaxError as exc:
        raise node.error(f"template syntax error: {exc.message}") from None


def _statuses(node: Node | None) -> frozenset[int]:
    if node is None:
        return frozenset(range(200, 300))
    codes = frozenset(item.as_int(100, 599) for item in node.as_list())
    if not codes:
        raise node.error("must list at least one status code")
    return codes


@dataclass(frozen=True, slots=True)
class HttpSpec:
    method: str
    url: UrlSpec
    headers: Mapping[str, EnvValue]
    body: BodyTemplate | None
    expect: frozenset[int]


@dataclass(frozen=True, slots=True)
class SystemdRestartSpec:
    systemctl: str
    units: frozenset[str]  # normalized: nginx -> nginx.service
    fixed_unit: str | None  # when no `unit` parameter is declared


@dataclass(frozen=True, slots=True)
class BlockAddressSpec:
    backend: str  # nft | iptables
    duration: timedelta
    nft: str
    table: str
    set4: str
    set6: str
    iptables: str
    ip6tables: str
    chain: str
    sudo: str | None  # e.g. /usr/bin/sudo: prefixed with -n when set
    never_block: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    min_prefix4: int
    min_prefix6: int


@dataclass(frozen=True, slots=True)
class CaptureEvidenceSpec:
    journalctl: str
    units: tuple[Template, ...]
    since: timedelta
    max_lines: int
    files: tuple[Path, ...]
    commands: tuple[tuple[str, tuple[Template, ...]], ...]
    max_bytes: int


Spec = ExecSpec | HttpSpec | SystemdRestartSpec | BlockAddressSpec | CaptureEvidenceSpec


@dataclass(frozen=True, slots=True)
class HttpProbe:
    method: str
    url: UrlSpec
    headers: Mapping[str, EnvValue]
    expect: frozenset[int]


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """How to verify an action worked: run argv, probe a URL, or wait for the alert to resolve."""

    argv: tuple[Template, ...] | None = None
    http: HttpProbe | None = None
    alert_resolves_within: timedelta | None = None
    delay: timedelta = timedelta(0)
    timeout: timedelta = timedelta(seconds=10)


@dataclass(frozen=True, slots=True)
class UndoSpec:
    """What reverses an action: an argv, another action, or the built-in's recorded undo."""

    argv: tuple[Template, ...] | None = None
    action: str | None = None
    builtin: bool = False


@dataclass(frozen=True, slots=True)
class Action:
    name: str
    kind: Kind
    spec: Spec
    params: tuple[ParamSpec, ...] = ()
    description: str = ""
    target: str | None = None  # the parameter naming the target; None: all parameters
    timeout: timedelta = timedelta(seconds=30)
    retries: int = 0
    retry_delay: timedelta = timedelta(seconds=5)
    escalate_after_failures: int = 3
    cooldown: timedelta = timedelta(minutes=5)
    max_runs: int | None = None
    window: timedelta = timedelta(hours=1)
    concurrency: int = 1
    dry_run: bool = False
    undo: UndoSpec | None = None
    undo_hold_down: timedelta = timedelta(minutes=5)
    check: CheckSpec | None = None
    on_resolve: bool = False
    breaker_failures: int | None = None  # None: containment.breaker_failures
    action_breaker_failures: int | None = None  # None: containment.action_breaker_failures


@dataclass(frozen=True, slots=True)
class ContainmentSettings:
    dry_run: bool = False
    max_actions_per_window: int = 20
    max_targets_per_window: int = 10
    window: timedelta = timedelta(minutes=10)
    concurrency: int = 4
    breaker_failures: int = 3
    # Failed runs of one action, whatever their targets, within the window that open its
    # breaker across targets: a broken tool fed a new address each time.
    action_breaker_failures: int = 5
    action_breaker_window: timedelta = timedelta(hours=1)
    # Captures older than this are deleted (None: kept forever), and the oldest past the
    # total size (None: no cap).
    evidence_retention: timedelta | None = timedelta(days=90)
    evidence_max_total_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class ActionCatalog:
    actions: Mapping[str, Action] = field(default_factory=lambda: MappingProxyType({}))

    def __contains__(self, name: object) -> bool:
        return name in self.actions

    def __getitem__(self, name: str) -> Action:
        return self.actions[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.actions)

    def __len__(self) -> int:
        return len(self.actions)


def parse_containment(node: Node | None) -> ContainmentSettings:
    """Parse the global ``containment:`` section."""
    if node is None or node.is_null():
        return ContainmentSettings()
    node.keys_allowed(
        "dry_run",
        "max_actions_per_window",
        "max_targets_per_window",
        "window",
        "concurrency",
        "breaker_failures",
        "action_breaker_failures",
        "action_breaker_window",
        "evidence_retention",
        "evidence_max_total_bytes",
    )
    d = ContainmentSettings()
    return ContainmentSettings(
        dry_run=_opt(node, "dry_run", Node.as_bool, d.dry_run),
        max_actions_per_window=_opt_int(node, "max_actions_per_window", d.max_actions_per_window),
        max_targets_per_window=_opt_int(node, "max_targets_per_window", d.max_targets_per_window),
        window=_opt_duration(node, "window", d.window, positive=True),
        concurrency=_opt_int(node, "concurrency", d.concurrency),
        breaker_failures=_opt_int(node, "breaker_failures", d.breaker_failures),
        action_breaker_failures=_opt_int(
            node, "action_breaker_failures", d.action_breaker_failures
        ),
        action_breaker_window=_opt_duration(
            node, "action_breaker_window", d.action_breaker_window, positive=True
        ),
        evidence_retention=_opt(
            node, "evidence_retention", Node.as_retention, d.evidence_retention
        ),
        evidence_max_total_bytes=_opt(
            node, "evidence_max_total_bytes", lambda n: n.as_int(1), d.evidence_max_total_bytes
        ),
    )


def _opt(node: Node, key: str, read: Callable[[Node], Any], default: Any) -> Any:
    child = node.get(key)
    return default if child is None else read(child)


def _opt_int(
    node: Node, key: str, default: int, minimum: int = 1, maximum: int | None = None
) -> int:
    child = node.get(key)
    return default if child is None else child.as_int(minimum, maximum)


def _opt_duration(
    node: Node,
    key: str,
    default: timedelta,
    *,
    positive: bool = False,
    maximum: timedelta | None = None,
) -> timedelta:
    child = node.get(key)
    if child is None:
        return default
    value = child.as_duration()
    if positive and value <= timedelta(0):
        raise child.error("must be longer than 0")
    if maximum is not None and value > maximum:
        raise child.error(f"must be at most {_shown(maximum)} ({_HOLDS}), got {child.value}")
    return value


def _shown(span: timedelta) -> str:
    return format_duration(int(span.total_seconds()))


def _longest_run(node: Node, action: Action) -> None:
    """Refuse an action whose run, every attempt failing, may take longer than MAX_RUN."""
    attempts = action.retries + 1
    per_attempt = action.timeout
    check = action.check
    checked = ""
    if check is not None and check.alert_resolves_within is None:
        per_attempt += check.delay + check.timeout
        checked = f" and its check ({_shown(check.delay + check.timeout)})"
    longest = attempts * per_attempt + action.retries * action.retry_delay
    if longest > MAX_RUN:
        delays = "retry delay" if action.retries == 1 else "retry delays"
        raise node.error(
            f"a run may take up to {_shown(longest)} ({attempts} attempts of timeout "
            f"{_shown(action.timeout)}{checked}, {action.retries} {delays} of "
            f"{_shown(action.retry_delay)}); at most {_shown(MAX_RUN)}"
        )


def parse_actions(node: Node | None, base_dir: Path) -> ActionCatalog:
    """Parse the ``actions:`` mapping (name -> action) strictly; all or nothing."""
    actions: dict[str, Action] = {}
    nodes: dict[str, Node] = {}
    if node is not None and not node.is_null():
        for name, item in node.items():
            if not _ACTION_NAME.fullmatch(name):
                raise item.error("action names are letters, digits, '.', '_' and '-'")
            actions[name] = _parse_action(name, item, base_dir)
            _longest_run(item, actions[name])
            nodes[name] = item
    for name, action in actions.items():
        if action.undo is not None and action.undo.action is not None:
            where = nodes[name]["undo"]["action"]
            if action.undo.action not in actions:
                raise where.error(f"no action named {action.undo.action!r}")
            if action.undo.action == name:
                raise where.error("an action cannot undo itself")
    return ActionCatalog(MappingProxyType(actions))


def _parse_action(name: str, node: Node, base_dir: Path) -> Action:
    kind = Kind(node["kind"].as_choice(*[k.value for k in Kind]))
    specific = _KIND_KEYS[kind]
    node.keys_allowed(*ACTION_KEYS_COMMON, *specific)
    params = parse_params(node.get("params"))
    declared = frozenset(p.name for p in params)
    by_name = {p.name: p for p in params}
    spec: Spec
    if kind is Kind.EXEC:
        spec = _parse_exec(node, declared, base_dir)
    elif kind is Kind.HTTP:
        spec = _parse_http(node, declared, base_dir)
    elif kind is Kind.SYSTEMD_RESTART:
        spec = _parse_systemd(node, by_name)
    elif kind is Kind.BLOCK_ADDRESS:
        spec = _parse_block(node, by_name)
    else:
        spec = _parse_evidence(node, declared)

    target_node = node.get("target")
    target = target_node.as_str() if target_node is not None else None
    if target_node is not None and target not in declared:
        raise target_node.error("must name a declared parameter")
    max_runs_node = node.get("max_runs")
    window_default = timedelta(hours=1)
    undo = _parse_undo(node.get("undo"), declared, kind)
    check = _parse_check(node.get("check"), declared, base_dir)
    breaker_node = node.get("breaker_failures")
    broken_node = node.get("action_breaker_failures")
    desc_node = node.get("description")
    return Action(
        name=name,
        kind=kind,
        spec=spec,
        params=params,
        description=desc_node.as_str() if desc_node is not None else "",
        target=target,
        timeout=_opt_duration(
            node, "timeout", timedelta(seconds=30), positive=True, maximum=MAX_TIMEOUT
        ),
        retries=_opt_int(node, "retries", 0, minimum=0, maximum=MAX_RETRIES),
        retry_delay=_opt_duration(node, "retry_delay", timedelta(seconds=5), maximum=MAX_TIMEOUT),
        escalate_after_failures=_opt_int(node, "escalate_after_failures", 3),
        cooldown=_opt_duration(node, "cooldown", timedelta(minutes=5)),
        max_runs=max_runs_node.as_int(1) if max_runs_node is not None else None,
        window=_opt_duration(node, "window", window_default, positive=True),
        concurrency=_opt_int(node, "concurrency", 1),
        dry_run=_opt(node, "dry_run", Node.as_bool, False),
        undo=undo,
        undo_hold_down=_opt_duration(node, "undo_hold_down", timedelta(minutes=5)),
        check=check,
        on_resolve=_opt(node, "on_resolve", Node.as_bool, False),
        breaker_failures=breaker_node.as_int(1) if breaker_node is not None else None,
        action_breaker_failures=broken_node.as_int(1) if broken_node is not None else None,
    )


_KIND_KEYS: dict[Kind, tuple[str, ...]] = {
    Kind.EXEC: ("argv", "env", "cwd"),
    Kind.HTTP: ("method", "url", "headers", "body", "expect"),
    Kind.SYSTEMD_RESTART: ("units", "systemctl"),
    Kind.BLOCK_ADDRESS: (
        "backend",
        "duration",
        "nft",
        "table",
        "set",
        "set6",
        "iptables",
        "ip6tables",
        "chain",
        "sudo",
        "never_block",
        "min_prefix4",
        "min_prefix6",
    ),
    Kind.CAPTURE_EVIDENCE: (
        "journalctl",
        "units",
        "since",
        "max_lines",
        "files",
        "commands",
        "max_bytes",
    ),
}


def _abs_path(node: Node) -> Path:
    if "\x00" in node.as_str():
        raise node.error("a path cannot hold a NUL")
    path = Path(node.as_str())
    if not path.is_absolute():
        raise node.error("must be an absolute path")
    return path


def _exe(node: Node, key: str, default: str) -> str:
    child = node.get(key)
    return str(_abs_path(child)) if child is not None else default


def _parse_exec(node: Node, declared: frozenset[str], base_dir: Path) -> ExecSpec:
    cwd_node = node.get("cwd")
    return ExecSpec(
        argv=_argv(node["argv"], declared),
        env=_env_or_headers(node.get("env"), base_dir, _ENV_NAME, "environment variable"),
        cwd=_abs_path(cwd_node) if cwd_node is not None else None,
    )


def _method(node: Node | None, default: str) -> str:
    if node is None:
        return default
    return node.as_choice("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _parse_http(node: Node, declared: frozenset[str], base_dir: Path) -> HttpSpec:
    body_node = node.get("body")
    return HttpSpec(
        method=_method(node.get("method"), "POST"),
        url=_url(node["url"], declared),
        headers=_env_or_headers(node.get("headers"), base_dir, _HEADER_NAME, "header"),
        body=_body(body_node) if body_node is not None else None,
        expect=_statuses(node.get("expect")),
    )


def _parse_systemd(node: Node, params: Mapping[str, ParamSpec]) -> SystemdRestartSpec:
    units_node = node["units"]
    units: set[str] = set()
    for item in units_node.as_list():
        unit = item.as_str()
        if not re.fullmatch(r"[A-Za-z0-9:_.@-]+", unit) or unit.startswith(("-", ".", "@")):
            raise item.error("not a valid systemd unit name")
        units.add(normalize_unit(unit))
    if not units:
        raise units_node.error("list at least one unit that this action may restart")
    unit_param = params.get("unit")
    fixed: str | None = None
    if unit_param is None:
        if len(units) != 1:
            raise units_node.error("without a `unit` parameter, list exactly one unit")
        fixed = next(iter(units))
    elif unit_param.type is not ParamType.SYSTEMD_UNIT:
        raise node["params"].error("parameter unit must have type systemd_unit")
    return SystemdRestartSpec(
        systemctl=_exe(node, "systemctl", "/usr/bin/systemctl"),
        units=frozenset(units),
        fixed_unit=fixed,
    )


def _nft_name(node: Node, key: str, default: str) -> str:
    child = node.get(key)
    if child is None:
        return default
    value = child.as_str()
    if not _NFT_NAME.fullmatch(value):
        raise child.error("letters, digits and _ only, starting with a letter")
    return value


def _parse_block(node: Node, params: Mapping[str, ParamSpec]) -> BlockAddressSpec:
    address = params.get("address")
    allowed = (ParamType.IP, ParamType.IPV4, ParamType.IPV6, ParamType.CIDR)
    if address is None or address.type not in allowed:
        where = node.get("params") or node
        raise where.error(
            "block-address needs a parameter `address` of type ip, ipv4, ipv6 or cidr"
        )
    backend = node["backend"].as_choice("nft", "iptables") if "backend" in node else "nft"
    chain_node = node.get("chain")
    chain = chain_node.as_str() if chain_node is not None else "INPUT"
    if chain_node is not None and (not _CHAIN.fullmatch(chain) or chain.startswith("-")):
        raise chain_node.error("not a valid iptables chain name")
    never: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    never_node = node.get("never_block")
    for item in never_node.as_list() if never_node is not None else []:
        try:
            never.append(ipaddress.ip_network(item.as_str(), strict=False))
        except ValueError as exc:
            raise item.error(str(exc)) from None
    sudo_node = node.get("sudo")
    duration = _opt_duration(node, "duration", timedelta(hours=1), positive=True)
    if duration.total_seconds() != int(duration.total_seconds()):
        raise node["duration"].error("whole seconds only")
    return BlockAddressSpec(
        backend=backend,
        duration=duration,
        nft=_exe(node, "nft", "/usr/sbin/nft"),
        table=_nft_name(node, "table", "responder"),
        set4=_nft_name(node, "set", "blocklist4"),
        set6=_nft_name(node, "set6", "blocklist6"),
        iptables=_exe(node, "iptables", "/usr/sbin/iptables"),
        ip6tables=_exe(node, "ip6tables", "/usr/sbin/ip6tables"),
        chain=chain,
        sudo=str(_abs_path(sudo_node)) if sudo_node is not None else None,
        never_block=tuple(never),
        min_prefix4=_opt_int(node, "min_prefix4", 24, minimum=0, maximum=32),
        min_prefix6=_opt_int(node, "min_prefix6", 64, minimum=0, maximum=128),
    )


def _parse_evidence(node: Node, declared: frozenset[str]) -> CaptureEvidenceSpec:
    units_node = node.get("units")
    units = tuple(parse_template(i, declared) for i in (units_node.as_list() if units_node else []))
    files_node = node.get("files")
    files = tuple(_abs_path(i) for i in (files_node.as_list() if files_node else []))
    commands: list[tuple[str, tuple[Template, ...]]] = []
    commands_node = node.get("commands")
    if commands_node is not None:
        for cname, argv_node in commands_node.items():
            if not _ACTION_NAME.fullmatch(cname):
                raise argv_node.error("command names are letters, digits, '.', '_' and '-'")
            commands.append((cname, _argv(argv_node, declared)))
    if not units and not files and not commands:
        raise node.error("capture-evidence needs at least one of units, files, commands")
    return CaptureEvidenceSpec(
        journalctl=_exe(node, "journalctl", "/usr/bin/journalctl"),
        units=units,
        since=_opt_duration(node, "since", timedelta(hours=1), positive=True),
        max_lines=_opt_int(node, "max_lines", 10000),
        files=files,
        commands=tuple(commands),
        max_bytes=_opt_int(node, "max_bytes", 1024 * 1024, maximum=MAX_EVIDENCE_BYTES),
    )


def _parse_undo(node: Node | None, declared: frozenset[str], kind: Kind) -> UndoSpec | None:
    if node is None or node.is_null():
        return None
    if not node.is_map():
        if node.as_str() != "builtin":
            raise node.error("expected builtin, or a mapping with argv or action")
        if kind is not Kind.BLOCK_ADDRESS:
            raise node.error("only block-address has a built-in undo")
        return UndoSpec(builtin=True)
    node.keys_allowed("argv", "action")
    if ("argv" in node) == ("action" in node):
        raise node.error("give argv or action, exactly one")
    if "argv" in node:
        return UndoSpec(argv=_argv(node["argv"], declared))
    return UndoSpec(action=node["action"].as_str())


def _parse_check(node: Node | None, declared: frozenset[str], base_dir: Path) -> CheckSpec | None:
    if node is None or node.is_null():
        return None
    node.keys_allowed("argv", "http", "alert_resolves_within", "delay", "timeout")
    given = [k for k in ("argv", "http", "alert_resolves_within") if k in node]
    if len(given) != 1:
        raise node.error("give exactly one of argv, http, alert_resolves_within")
    delay = _opt_duration(node, "delay", timedelta(0), maximum=MAX_TIMEOUT)
    timeout = _opt_duration(
        node, "timeout", timedelta(seconds=10), positive=True, maximum=MAX_TIMEOUT
    )
    if "argv" in node:
        return CheckSpec(argv=_argv(node["argv"], declared), delay=delay, timeout=timeout)
    if "http" in node:
        http = node["http"]
        http.keys_allowed("method", "url", "headers", "expect")
        probe = HttpProbe(
            method=_method(http.get("method"), "GET"),
            url=_url(http["url"], declared),
            headers=_env_or_headers(http.get("headers"), base_dir, _HEADER_NAME, "header"),
            expect=_statuses(http.get("expect")),
        )
        return CheckSpec(http=probe, delay=delay, timeout=timeout)
    within = _opt_duration(node, "alert_resolves_within", timedelta(0), positive=True)
    return CheckSpec(alert_resolves_within=within, delay=delay, timeout=timeout)


def programs(action: Action) -> Iterator[tuple[str, str]]:
    """Each program the action may start, as (what it is for, its path): the action's own,
    its check's and its undo's."""
    spec = action.spec
    if isinstance(spec, ExecSpec):
        yield "argv[0]", spec.argv[0].source
    elif isinstance(spec, SystemdRestartSpec):
        yield "systemctl", spec.systemctl
    elif isinstance(spec, BlockAddressSpec):
        if spec.sudo is not None:
            yield "sudo", spec.sudo
        if spec.backend == "nft":
            yield "nft", spec.nft
        else:
            yield "iptables", spec.iptables
            yield "ip6tables", spec.ip6tables
    elif isinstance(spec, CaptureEvidenceSpec):
        if spec.units:
            yield "journalctl", spec.journalctl
        for name, argv in spec.commands:
            yield f"commands.{name}[0]", argv[0].source
    if action.check is not None and action.check.argv is not None:
        yield "check.argv[0]", action.check.argv[0].source
    if action.undo is not None and action.undo.argv is not None:
        yield "undo.argv[0]", action.undo.argv[0].source


def missing_programs(catalog: ActionCatalog) -> list[str]:
    """What `responder check` warns of: programs the actions would start that are not an
    executable file on this host (a typo, a tool not installed), and a missing ``cwd``. A
    warning, not an error: the config may be checked on another machine than it runs on."""
    warnings: list[str] = []
    for name, action in sorted(catalog.actions.items()):
        for what, path in programs(action):
            if not (os.path.isfile(path) and os.access(path, os.X_OK)):
                warnings.append(
                    f"action {name}: {what} {path} is not an executable file on this host"
                )
        spec = action.spec
        if isinstance(spec, ExecSpec) and spec.cwd is not None and not spec.cwd.is_dir():
            warnings.append(f"action {name}: cwd {spec.cwd} is not a directory on this host")
    return warnings

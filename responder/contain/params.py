"""Action parameters: the only way a label or annotation value reaches an action, validated first.

Labels and annotations are written by whoever can post an alert, so they are treated as hostile.
An action declares each parameter (where it comes from, its type, an optional anchored RE2
pattern and an optional RE2 ``extract`` with one group); ``bind_params`` reads the values and
either returns them all, validated and canonical, or the first ``ParamRejected`` naming the
parameter, its source and the reason, with the offending value escaped and truncated so that it
can go into the audit record as is. Nothing runs before this has succeeded.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import re2

from responder.yamlfile import Node

DEFAULT_MAX_LENGTH = 256
# Label values longer than this are refused before any regex (even a linear one) sees them.
MAX_RAW_LENGTH = 4096
_AUDIT_CHARS = 64


class ParamSource(StrEnum):
    LABEL = "label"
    ANNOTATION = "annotation"


class ParamType(StrEnum):
    IPV4 = "ipv4"
    IPV6 = "ipv6"
    IP = "ip"
    CIDR = "cidr"
    HOSTNAME = "hostname"
    SYSTEMD_UNIT = "systemd_unit"
    IDENTIFIER = "identifier"
    PORT = "port"
    # Free text that must match the declared pattern (a pattern is required for this type).
    TEXT = "text"


# Strict shapes, checked on ASCII text before ipaddress sees it: ipaddress alone would accept
# scope ids (fe80::1%eth0) and, in some versions, non-ASCII digits.
_IPV4 = re.compile(
    r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}"
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])",
    re.ASCII,
)
_IPV6 = re.compile(r"[0-9A-Fa-f:.]{2,45}", re.ASCII)
_PREFIX = re.compile(r"(?:[0-9]|[1-9][0-9]|1[01][0-9]|12[0-8])", re.ASCII)
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", re.ASCII)
_UNIT = re.compile(r"[A-Za-z0-9:_.@-]{1,246}", re.ASCII)
UNIT_SUFFIXES = (
    ".service",
    ".socket",
    ".timer",
    ".target",
    ".mount",
    ".path",
    ".slice",
    ".scope",
)
_IDENTIFIER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@+-]*", re.ASCII)
_PORT = re.compile(r"[1-9][0-9]{0,4}", re.ASCII)
_NAME = re.compile(r"[a-z_][a-z0-9_]*", re.ASCII)


@dataclass(frozen=True, slots=True)
class ParamRejected:
    """Why an alert's value could not fill a parameter; a value for the audit, not an exception."""

    param: str
    source: str  # "label instance", "annotation summary"
    reason: str
    value: str  # escaped and truncated: safe to log and store

    def __str__(self) -> str:
        return (
            f"parameter {self.param} from {self.source} rejected: {self.reason}"
            f" (value {self.value})"
        )

    def without_value(self) -> str:
        """Which parameter was refused and why, without the alert's value: for the page and
        the timeline's reason (the audit record keeps the value, escaped)."""
        return f"parameter {self.param} from {self.source}: {self.reason}"

    def to_audit(self) -> dict[str, str]:
        return {
            "param": self.param,
            "source": self.source,
            "reason": self.reason,
            "value": self.value,
        }


@dataclass(frozen=True, slots=True)
class BoundParam:
    """A validated parameter value and where it came from."""

    name: str
    value: str
    source: ParamSource | None  # None: the declared default was used
    key: str

    def to_audit(self) -> dict[str, str]:
        origin = f"{self.source.value} {self.key}" if self.source is not None else "default"
        return {"name": self.name, "value": self.value, "from": origin}


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """One declared parameter of an action."""

    name: str
    source: ParamSource
    key: str
    type: ParamType
    pattern: Any = None  # compiled re2, anchored; None: the type alone decides
    pattern_text: str | None = None
    extract: Any = None  # compiled re2 with exactly one group, anchored
    max_length: int = DEFAULT_MAX_LENGTH
    allow_non_ascii: bool = False
    default: str | None = None

    @property
    def origin(self) -> str:
        return f"{self.source.value} {self.key}"


def audit_value(value: str) -> str:
    """The value escaped to printable ASCII and cut to a few dozen characters, with its length."""
    shown = value[:_AUDIT_CHARS].encode("unicode_escape").decode("ascii")
    shown = shown.replace('"', '\\"')
    if len(value) > _AUDIT_CHARS:
        return f'"{shown}"... ({len(value)} chars)'
    return f'"{shown}"'


# Controls, format characters (bidi overrides and isolates, zero-width, soft hyphen),
# surrogates, private use, unassigned, line and paragraph separators: nothing a reader sees.
_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _is_control(ch: str) -> bool:
    if ch.isascii():
        return ch < " " or ch == "\x7f"
    return unicodedata.category(ch) in _INVISIBLE


def check_value(spec: ParamSpec, value: str) -> tuple[str, None] | tuple[None, str]:
    """Validate one value against ``spec``: ``(canonical, None)`` or ``(None, reason)``."""
    if not value:
        return None, "empty"
    if len(value) > spec.max_length:
        return None, f"longer than {spec.max_length} characters"
    if "\x00" in value:
        return None, "contains NUL"
    if "\n" in value or "\r" in value:
        return None, "contains a newline"
    if any(_is_control(ch) for ch in value):
        return None, "contains a control character"
    if not value.isascii() and not spec.allow_non_ascii:
        return None, "contains non-ASCII characters"
    if value.startswith("-"):
        return None, "starts with '-' (would read as an option)"
    if "\\" in value or ("/" in value and spec.type is not ParamType.CIDR):
        return None, "contains a path separator"
    if value in (".", ".."):
        return None, "is a path step ('.' or '..')"
    if value.strip() != value:
        return None, "has surrounding whitespace"
    checked = _check_type(spec.type, value)
    if checked[0] is None:
        return checked
    if spec.pattern is not None and spec.pattern.fullmatch(value) is None:
        return None, f"does not match pattern {spec.pattern_text}"
    return checked


def _check_type(kind: ParamType, value: str) -> tuple[str, None] | tuple[None, str]:
    if kind is ParamType.TEXT:
        return value, None
    if not value.isascii():
        return None, f"not a valid {kind.value}: non-ASCII"
    if kind is ParamType.IPV4:
        return _ip(value, 4)
    if kind is ParamType.IPV6:
        return _ip(value, 6)
    if kind is ParamType.IP:
        return _ip(value, 6 if ":" in value else 4)
    if kind is ParamType.CIDR:
        return _cidr(value)
    if kind is ParamType.HOSTNAME:
        if len(value) > 253 or not all(_HOST_LABEL.fullmatch(p) for p in value.split(".")):
            return None, "not a valid hostname"
        return value.lower(), None
    if kind is ParamType.SYSTEMD_UNIT:
        # systemd refuses a name starting with '.' or '@' (unit_name_is_valid); a leading
        # '@' also reads as "the contents of a file" to curl, argparse and javac.
        if not _UNIT.fullmatch(value) or value.startswith((".", "@")):
            return None, "not a valid systemd unit name"
        return normalize_unit(value), None
    if kind is ParamType.IDENTIFIER:
        if not _IDENTIFIER.fullmatch(value):
            return None, "not a valid identifier"
        return value, None
    if kind is ParamType.PORT:
        if not _PORT.fullmatch(value) or int(value) > 65535:
            return None, "not a valid port"
        return value, None
    raise AssertionError(kind)  # pragma: no cover - every ParamType is handled above


def normalize_unit(name: str) -> str:
    """``nginx`` means ``nginx.service``, as it does to systemctl."""
    return name if name.endswith(UNIT_SUFFIXES) else f"{name}.service"


def _ip(value: str, version: int) -> tuple[str, None] | tuple[None, str]:
    if version == 4:
        if not _IPV4.fullmatch(value):
            return None, "not a valid IPv4 address"
        return str(ipaddress.IPv4Address(value)), None
    if not _IPV6.fullmatch(value):
        return None, "not a valid IPv6 address"
    try:
        return str(ipaddress.IPv6Address(value)), None
    except ValueError:
        return None, "not a valid IPv6 address"


def _cidr(value: str) -> tuple[str, None] | tuple[None, str]:
    address, sep, prefix = value.partition("/")
    if not sep or not _PREFIX.fullmatch(prefix):
        return None, "not a valid CIDR (address/prefix)"
    canonical, _ = _ip(address, 6 if ":" in address else 4)
    if canonical is None:
        return None, "not a valid CIDR (address/prefix)"
    try:
        # strict: 10.0.0.1/8 is refused rather than silently widened to 10.0.0.0/8.
        return str(ipaddress.ip_network(f"{canonical}/{prefix}", strict=True)), None
    except ValueError as exc:
        return None, f"not a valid CIDR: {exc}"


def bind_params(
    specs: tuple[ParamSpec, ...], labels: Mapping[str, str], annotations: Mapping[str, str]
) -> dict[str, BoundParam] | ParamRejected:
    """Read, extract and validate every declared parameter; the first failure is returned."""
    bound: dict[str, BoundParam] = {}
    for spec in specs:
        values = labels if spec.source is ParamSource.LABEL else annotations
        raw = values.get(spec.key)
        if raw is None or raw == "":
            if spec.default is not None:
                bound[spec.name] = BoundParam(spec.name, spec.default, None, spec.key)
                continue
            return ParamRejected(spec.name, spec.origin, "missing", audit_value(""))
        if len(raw) > MAX_RAW_LENGTH:
            return ParamRejected(
                spec.name, spec.origin, f"longer than {MAX_RAW_LENGTH} characters", audit_value(raw)
            )
        value = raw
        if spec.extract is not None:
            match = spec.extract.fullmatch(raw)
            if match is None or match.group(1) is None:
                return ParamRejected(
                    spec.name, spec.origin, "does not match extract", audit_value(raw)
                )
            value = match.group(1)
        canonical, reason = check_value(spec, value)
        if canonical is None:
            return ParamRejected(spec.name, spec.origin, reason or "invalid", audit_value(raw))
        bound[spec.name] = BoundParam(spec.name, canonical, spec.source, spec.key)
    return bound


def bind_values(
    specs: tuple[ParamSpec, ...], values: Mapping[str, str]
) -> dict[str, BoundParam] | ParamRejected:
    """Bind parameters by name from values another action bound (already extracted from
    their labels): each is checked again against this action's type and pattern."""
    bound: dict[str, BoundParam] = {}
    for spec in specs:
        origin = f"the run's {spec.name}"
        raw = values.get(spec.name)
        if raw is None or raw == "":
            if spec.default is not None:
                bound[spec.name] = BoundParam(spec.name, spec.default, None, spec.key)
                continue
            return ParamRejected(spec.name, origin, "missing", audit_value(""))
        canonical, reason = check_value(spec, raw)
        if canonical is None:
            return ParamRejected(spec.name, origin, reason or "invalid", audit_value(raw))
        bound[spec.name] = BoundParam(spec.name, canonical, spec.source, spec.key)
    return bound


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # the error goes into the ConfigError, not to stderr


def compile_re2(node: Node, *, groups: int | None = None) -> Any:
    """Compile an operator's RE2 regex, anchored as Alertmanager anchors: ``^(?:...)$``."""
    text = node.as_str()
    try:
        compiled = re2.compile(f"^(?:{text})$", _RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "invalid"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise node.error(f"invalid RE2 regex: {reason}") from None
    if groups is not None and compiled.groups != groups:
        raise node.error(f"must have exactly {groups} capturing group, has {compiled.groups}")
    return compiled


def parse_params(node: Node | None) -> tuple[ParamSpec, ...]:
    """Parse an action's ``params:`` mapping strictly."""
    if node is None:
        return ()
    specs: list[ParamSpec] = []
    for name, item in node.items():
        if not _NAME.fullmatch(name):
            raise item.error("parameter names are lower-case letters, digits and _")
        item.keys_allowed(
            "from",
            "key",
            "type",
            "pattern",
            "extract",
            "max_length",
            "allow_non_ascii",
            "default",
        )
        source = ParamSource(item["from"].as_choice(*[s.value for s in ParamSource]))
        key = item["key"].as_str()
        kind = ParamType(item["type"].as_choice(*[t.value for t in ParamType]))
        pattern_node = item.get("pattern")
        pattern = compile_re2(pattern_node) if pattern_node is not None else None
        if kind is ParamType.TEXT and pattern is None:
            raise item.error("type text needs a pattern")
        extract_node = item.get("extract")
        extract = compile_re2(extract_node, groups=1) if extract_node is not None else None
        max_node = item.get("max_length")
        max_length = max_node.as_int(1, MAX_RAW_LENGTH) if max_node else DEFAULT_MAX_LENGTH
        ascii_node = item.get("allow_non_ascii")
        allow_non_ascii = ascii_node.as_bool() if ascii_node is not None else False
        if allow_non_ascii and pattern is None:
            raise item.error("allow_non_ascii needs a pattern that says which characters")
        spec = ParamSpec(
            name=name,
            source=source,
            key=key,
            type=kind,
            pattern=pattern,
            pattern_text=pattern_node.as_str() if pattern_node is not None else None,
            extract=extract,
            max_length=max_length,
            allow_non_ascii=allow_non_ascii,
        )
        default_node = item.get("default")
        if default_node is not None:
            canonical, reason = check_value(spec, default_node.as_str())
            if canonical is None:
                raise default_node.error(f"default is not a valid value: {reason}")
            spec = replace(spec, default=canonical)
        specs.append(spec)
    return tuple(specs)

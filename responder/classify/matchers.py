"""Alertmanager 0.25 label matchers: parsing, string form and matching, with RE2 regexes.

A matcher is ``name op value`` with op one of ``=``, ``!=``, ``=~``, ``!~``. Parsing follows
Alertmanager's ``pkg/labels/parse.go`` step by step (the tokenizer's quote tracking, the
OpenMetrics escapes ``\\\\``, ``\\"``, ``\\n`` and nothing else, unquoted values, optional
braces, a trailing comma). A regex is anchored as ``^(?:value)$`` and compiled with RE2, the
dialect Alertmanager uses, which also matches in linear time: label values come from whoever
can post an alert, so a backtracking engine would hand them a denial of service. An absent
label matches as the empty string.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import re2

from responder.yamlfile import Node

__all__ = [
    "LABEL_NAME",
    "MatchType",
    "Matcher",
    "MatcherError",
    "format_matchers",
    "matchers_from_node",
    "parse_matcher",
    "parse_matchers",
]


class MatcherError(ValueError):
    """A matcher (or a list of them) cannot be parsed or its regex does not compile."""


class MatchType(StrEnum):
    EQUAL = "="
    NOT_EQUAL = "!="
    REGEX = "=~"
    NOT_REGEX = "!~"


# Go's \s is ASCII [\t\n\f\r ] (no \v), so the class is spelled out rather than using \s,
# which in Python also covers Unicode spaces. The stdlib engine is safe here: it only ever
# sees operator-written config, never label values.
_WS = "[\t\n\f\r ]"
_MATCHER = re.compile(
    rf"^{_WS}*([a-zA-Z_:][a-zA-Z0-9_:]*){_WS}*(=~|=|!=|!~){_WS}*(.*?){_WS}*$", re.DOTALL
)
# Matchers accept the colon too (parse.go's pattern); labels a rule adds must be plain.
_MATCHER_NAME = re.compile("[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile("[a-zA-Z_][a-zA-Z0-9_]*")

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # the error goes into the ConfigError, not to stderr
_OPTIONS.never_capture = True  # only "does it match" is asked; no groups to track


def _compile(value: str) -> Any:
    """RE2 for ``^(?:value)$``; raises MatcherError with RE2's reason."""
    try:
        return re2.compile(f"^(?:{value})$", _OPTIONS)
    except re2.error as exc:
        reason = _reason(exc)
    # RE2 quotes the part it choked on, of the anchored form: said of the operator's own
    # text where that fails alike ("missing ): (a", not "missing ): ^(?:(a)$").
    try:
        re2.compile(value, _OPTIONS)
    except re2.error as exc:
        reason = _reason(exc)
    raise MatcherError(f"invalid regex {value!r}: {reason}")


def _reason(exc: Exception) -> str:
    reason = exc.args[0] if exc.args else "invalid"
    return reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)


_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _utf8(text: str) -> bytes:
    """UTF-8 for RE2. A lone surrogate (JSON can carry "\\ud800") becomes U+FFFD, as Go's
    JSON decoder would have made it before Alertmanager ever matched it."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text).encode("utf-8")


def _escape(value: str) -> str:
    """OpenMetrics escaping, as Alertmanager's ``Matcher.String`` writes values."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@dataclass(frozen=True, slots=True)
class Matcher:
    """One ``name op value`` condition; regexes are compiled once, when the matcher is made."""

    name: str
    type: MatchType
    value: str
    _regex: Any = field(default=None, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not _MATCHER_NAME.fullmatch(self.name):
            raise MatcherError(f"invalid label name {self.name!r}")
        try:
            self.value.encode("utf-8")
        except UnicodeEncodeError:
            raise MatcherError(f"matcher value not valid UTF-8: {self.value!r}") from None
        if self.type in (MatchType.REGEX, MatchType.NOT_REGEX):
            object.__setattr__(self, "_regex", _compile(self.value))

    def matches_value(self, value: str) -> bool:
        """The result for a label value (pass "" for an absent label)."""
        kind = self.type
        if kind is MatchType.EQUAL:
            return value == self.value
        if kind is MatchType.NOT_EQUAL:
            return value != self.value
        found = self._regex.search(_utf8(value)) is not None
        return found if kind is MatchType.REGEX else not found

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self.matches_value(labels.get(self.name, ""))

    def __str__(self) -> str:
        return f'{self.name}{self.type.value}"{_escape(self.value)}"'


def _unescape(raw_value: str, original: str) -> str:
    """The value part of one matcher, exactly as ``ParseMatcher`` reads it."""
    expect_trailing_quote = False
    if raw_value.startswith('"'):
        raw_value = raw_value[1:]
        expect_trailing_quote = True
    out: list[str] = []
    escaped = False
    last = len(raw_value) - 1
    for i, char in enumerate(raw_value):
        if escaped:
            escaped = False
            if char == "n":
                out.append("\n")
            elif char in '"\\':
                out.append(char)
            else:
                # A spurious escape: the backslash stays literal.
                out.append("\\" + char)
            continue
        if char == "\\":
            if i < last:
                escaped = True
                continue
            out.append("\\")
        elif char == '"':
            if not expect_trailing_quote or i < last:
                raise MatcherError(f"matcher value contains unescaped double quote: {original}")
            expect_trailing_quote = False
        else:
            out.append(char)
    if expect_trailing_quote:
        raise MatcherError(f"matcher value contains unescaped double quote: {original}")
    return "".join(out)


def parse_matcher(text: str) -> Matcher:
    """One matcher such as ``severity!="info"`` or ``alertname=~Disk.*``."""
    found = _MATCHER.match(text)
    if found is None:
        raise MatcherError(f"bad matcher format: {text}")
    name, op, raw_value = found.groups()
    value = _unescape(raw_value, raw_value)
    return Matcher(name, MatchType(op), value)


def parse_matchers(text: str) -> tuple[Matcher, ...]:
    """Comma-joined matchers, optionally in braces, split where Alertmanager splits them.

    The quote tracking is Alertmanager's, quirks included: a backslash before a quote hides
    that quote from the tokenizer, and a comma does not clear a pending backslash.
    """
    # Alertmanager trims one brace each side without trimming spaces first; YAML has already
    # stripped the scalar, so stripping here only forgives stray spaces around the braces.
    text = text.strip()
    text = text.removeprefix("{").removesuffix("}")
    tokens: list[str] = []
    token: list[str] = []
    inside_quotes = False
    escaped = False
    for char in text:
        if char == ",":
            if not inside_quotes:
                tokens.append("".join(token))
                token = []
                continue
        elif char == '"':
            if not escaped:
                inside_quotes = not inside_quotes
            else:
                escaped = False
        elif char == "\\":
            escaped = not escaped
        else:
            escaped = False
        token.append(char)
    last = "".join(token).strip()
    if last:
        tokens.append(last)
    return tuple(parse_matcher(tok) for tok in tokens)


def matchers_from_node(node: Node) -> tuple[Matcher, ...]:
    """A YAML ``matchers:`` list; each item holds one or more comma-joined matchers."""
    result: list[Matcher] = []
    for item in node.as_list():
        if item.is_map():
            raise item.error(
                "a matcher that starts with '{' must be quoted in YAML, "
                """e.g. '{alertname="X", severity="critical"}'"""
            )
        text = item.as_str()
        try:
            parsed = parse_matchers(text)
        except MatcherError as exc:
            raise item.error(str(exc)) from None
        if not parsed:
            raise item.error("empty matcher")
        result.extend(parsed)
    return tuple(result)


def format_matchers(matchers: tuple[Matcher, ...]) -> str:
    """The brace form Alertmanager prints, e.g. ``{alertname="X", severity!="info"}``."""
    return "{" + ", ".join(str(m) for m in matchers) + "}"

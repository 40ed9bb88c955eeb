"""Strict YAML reading: every value keeps its file and line, so every error can name them.

Config and rule files are read through ``Node``: a loaded value plus where it stood. Readers
ask for typed values (``node.as_str()``, ``node["key"]``, ``node.as_duration()``) and get a
``ConfigError`` that reads like ``config.yaml:12: server.listen: expected host:port``.
Unknown keys are errors: ``Node.keys_allowed`` is called by every mapping reader.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml


class ConfigError(Exception):
    """A config or rule file is wrong; the message names file, line and key."""

    def __init__(self, file: str, line: int, key: str, message: str) -> None:
        self.file = file
        self.line = line
        self.key = key
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class _Mark:
    __slots__ = ("line",)

    def __init__(self, line: int) -> None:
        self.line = line


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that wraps every scalar, list and map with its 1-based line number.

    Aliases (``*name``, and so ``<<: *name`` merges) are refused: each use would be expanded
    here, so a few hundred bytes of nested aliases (a "billion laughs") would take the
    daemon's memory on a reload, and an error inside one would name the anchor's line."""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None,
                None,
                f"aliases (*{event.anchor}) are not supported; write the value out",
                event.start_mark,
            )
        return super().compose_node(parent, index)


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    result: dict[Any, Any] = {}
    seen: set[Any] = set()
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        key_plain = key[0] if isinstance(key, tuple) else key
        if not isinstance(key_plain, str | int | float | bool) and key_plain is not None:
            raise yaml.constructor.ConstructorError(
                None, None, "mapping keys must be plain scalars", key_node.start_mark
            )
        if key_plain in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key_plain!r}", key_node.start_mark
            )
        seen.add(key_plain)
        # The key keeps its (value, line) form so that errors about the key name its line.
        result[key] = loader.construct_object(value_node, deep=True)
    return {"__line__": node.start_mark.line + 1, "__map__": result}


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> dict[str, Any]:
    items = [loader.construct_object(child, deep=True) for child in node.value]
    return {"__line__": node.start_mark.line + 1, "__list__": items}


def _construct_scalar_with_line(tag: str) -> Any:
    base = yaml.SafeLoader.yaml_constructors[tag]

    def construct(loader: _LineLoader, node: yaml.Node) -> tuple[Any, int]:
        try:
            value = base(loader, node)
        except (ValueError, OverflowError) as exc:  # 2026-02-30, +24:00, 5,000 digits
            raise yaml.constructor.ConstructorError(
                None, None, f"{node.value[:40]!r} cannot be read: {exc}", node.start_mark
            ) from None
        return (value, node.start_mark.line + 1)

    return construct


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)
for _tag in (
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:timestamp",
):
    _LineLoader.add_constructor(_tag, _construct_scalar_with_line(_tag))


def _unwrap(raw: Any) -> Any:
    """Drop the line markers, giving the plain Python value."""
    if isinstance(raw, tuple):
        return raw[0]
    if isinstance(raw, dict) and "__map__" in raw:
        return {_unwrap(k): _unwrap(v) for k, v in raw["__map__"].items()}
    if isinstance(raw, dict) and "__list__" in raw:
        return [_unwrap(v) for v in raw["__list__"]]
    return raw


def _line_of(raw: Any, default: int) -> int:
    if isinstance(raw, tuple):
        return int(raw[1])
    if isinstance(raw, dict) and "__line__" in raw:
        return int(raw["__line__"])
    return default


_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """Prometheus-style durations: ``90s``, ``15m``, ``1h30m``, ``2d``. Raises ValueError."""
    text = text.strip()
    if not text:
        raise ValueError("empty duration")
    if text == "0":
        return timedelta(0)
    pos = 0
    seconds = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        seconds += int(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        raise ValueError(f"expected a duration such as 30s, 15m or 1h30m, got {text!r}")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"duration {text!r} is too long") from None


class Node:
    """A value read from a YAML file, with its file, line and dotted key path."""

    __slots__ = ("_raw", "file", "line", "path")

    def __init__(self, raw: Any, file: str, line: int, path: str) -> None:
        self._raw = raw
        self.file = file
        self.line = line
        self.path = path

    # -- errors -----------------------------------------------------------------------------
    def error(self, message: str) -> ConfigError:
        return ConfigError(self.file, self.line, self.path, message)

    # -- shape ------------------------------------------------------------------------------
    @property
    def value(self) -> Any:
        """The plain Python value (no line markers)."""
        return _unwrap(self._raw)

    def is_null(self) -> bool:
        # Without unwrapping: a mapping's subtree need not be copied to say it is not null.
        raw = self._raw
        return raw is None or (isinstance(raw, tuple) and raw[0] is None)

    def is_map(self) -> bool:
        return isinstance(self._raw, dict) and "__map__" in self._raw

    def is_list(self) -> bool:
        return isinstance(self._raw, dict) and "__list__" in self._raw

    def _child(self, raw: Any, key: str) -> Node:
        if key.startswith("["):
            path = f"{self.path}{key}"
        else:
            path = f"{self.path}.{key}" if self.path else key
        return Node(raw, self.file, _line_of(raw, self.line), path)

    def _keyed_child(self, raw_key: Any, raw_value: Any, name: str) -> Node:
        node = self._child(raw_value, name)
        # An empty value, a mapping or a list is reported at its key's line: that is where
        # the reader looks for "this section" (a block mapping itself starts a line later).
        if node.is_null() or node.is_map() or node.is_list():
            node.line = _line_of(raw_key, self.line)
        return node

    # -- mappings ---------------------------------------------------------------------------
    def _map(self) -> dict[Any, Any]:
        if self.is_null():
            return {}
        if not self.is_map():
            raise self.error(f"expected a mapping, got {_kind(self.value)}")
        return dict(self._raw["__map__"])

    def keys(self) -> list[str]:
        return [str(_unwrap(k)) for k in self._map()]

    def keys_allowed(self, *allowed: str) -> None:
        """Raise on the first key not in ``allowed`` (unknown keys are errors, not ignored).

        A secret's bare name allowed beside its ``_file`` form (``auth_token`` with
        ``auth_token_file``) is let through only so that ``read_secret`` can say why it is
        refused: the hint does not offer it."""
        for key in self._map():
            name = _unwrap(key)
            if name not in allowed:
                child = self._child(key, str(name))
                offered = sorted(k for k in allowed if f"{k}_file" not in allowed)
                hint = f"; expected one of: {', '.join(offered)}" if offered else ""
                raise child.error(f"unknown key{hint}")

    def __contains__(self, key: str) -> bool:
        return any(_unwrap(k) == key for k in self._map())

    def get(self, key: str) -> Node | None:
        for raw_key, raw_value in self._map().items():
            if _unwrap(raw_key) == key:
                return self._keyed_child(raw_key, raw_value, key)
        return None

    def __getitem__(self, key: str) -> Node:
        node = self.get(key)
        if node is None:
            raise self.error(f"missing required key {key!r}")
        return node

    def items(self) -> Iterator[tuple[str, Node]]:
        for raw_key, raw_value in self._map().items():
            name = _unwrap(raw_key)
            if not isinstance(name, str):
                raise self._child(raw_key, str(name)).error("keys must be strings")
            yield name, self._keyed_child(raw_key, raw_value, name)

    # -- lists ------------------------------------------------------------------------------
    def as_list(self) -> list[Node]:
        if self.is_null():
            return []
        if not self.is_list():
            raise self.error(f"expected a list, got {_kind(self.value)}")
        return [self._child(raw, f"[{i}]") for i, raw in enumerate(self._raw["__list__"])]

    # -- scalars ----------------------------------------------------------------------------
    def as_str(self) -> str:
        value = self.value
        if not isinstance(value, str):
            raise self.error(f"expected a string, got {_kind(value)}")
        return value

    def as_phone_number(self) -> str:
        """The string of a phone number field, not yet checked as E.164."""
        value = self.value
        if isinstance(value, int) and not isinstance(value, bool):
            # YAML reads an unquoted +4915112345678 as a number; the + (or a leading 0) is lost.
            raise self.error(
                'phone numbers must be quoted, e.g. "+4915112345678"'
                " (YAML reads an unquoted +4915112345678 as a number)"
            )
        return self.as_str()

    def as_int(self, minimum: int | None = None, maximum: int | None = None) -> int:
        value = self.value
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"expected an integer, got {_kind(value)}")
        if minimum is not None and value < minimum:
            raise self.error(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise self.error(f"must be at most {maximum}, got {value}")
        return value

    def as_float(self) -> float:
        value = self.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(f"expected a number, got {_kind(value)}")
        return float(value)

    def as_bool(self) -> bool:
        value = self.value
        if not isinstance(value, bool):
            raise self.error(f"expected true or false, got {_kind(value)}")
        return value

    def as_duration(self) -> timedelta:
        value = self.value
        if isinstance(value, int) and not isinstance(value, bool) and value == 0:
            return timedelta(0)
        if not isinstance(value, str):
            raise self.error(f"expected a duration such as 30s, 15m or 1h30m, got {_kind(value)}")
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise self.error(str(exc)) from None

    def as_retention(self) -> timedelta | None:
        """How long records are kept: a duration of at least a day, or ``forever`` (None)."""
        if self.value == "forever":
            return None
        refused = "expected a duration of at least 1d, or forever"
        try:
            kept = self.as_duration()
        except ConfigError:
            raise self.error(f"{refused}, got {self.value!r}") from None
        if kept < timedelta(days=1):
            raise self.error(f"{refused}, got {self.value!r}")
        return kept

    def as_choice(self, *options: str) -> str:
        value = self.as_str()
        if value not in options:
            raise self.error(f"expected one of {', '.join(options)}, got {value!r}")
        return value

    def as_str_map(self) -> dict[str, str]:
        """A mapping of string to string (labels, annotations, headers)."""
        return {key: node.as_str() for key, node in self.items()}


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    return type(value).__name__


def load_text(text: str, file: str) -> Node:
    """Parse YAML text into a ``Node``; syntax errors become ``ConfigError`` with the line."""
    try:
        raw = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - _LineLoader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        problem = exc.problem or exc.context or "invalid YAML"
        if exc.problem and exc.context and exc.context_mark is not None:
            problem += f" ({exc.context} started at line {exc.context_mark.line + 1})"
        raise ConfigError(file, line, "", f"invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(file, 0, "", f"invalid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(file, 0, "", "invalid YAML: nested too deeply") from None
    return Node(raw, file, _line_of(raw, 1), "")


def load_file(path: Path, display: str | None = None) -> Node:
    """Read and parse one YAML file; a missing or unreadable file is a ``ConfigError``."""
    name = display or str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(name, 0, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(name, line, "", "not valid UTF-8") from None
    return load_text(text, name)

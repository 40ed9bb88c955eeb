"""Decode and validate an Alertmanager webhook (version 4) into typed, frozen objects.
Grafana's webhook contact point sends the same shape as version "1"; it is taken too.

Pure: bytes in, ``WebhookMessage`` out, or a ``PayloadError`` that names the offending field
(``alerts[3].labels.job: expected a string``). Unknown fields are accepted, because newer
Alertmanagers and Grafana add fields. Label text is attacker-controlled; here it is only
checked to be well-formed text of bounded size, and it stays data from here on.

Text that breaks a bound (a value too long, too many labels, a NUL, a lone surrogate) is
mended, not refused: anyone who can make one alert fire could otherwise get the whole group
it travels in refused, and Alertmanager does not retry a 4xx. The mended alert says so in
its ``responder_repaired`` annotation, and the message lists the mends. What is not text
where text belongs (a number for a label) is a malformed body and is refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import msgspec

from responder.model import Alert, AlertStatus, WebhookMessage, frozen_labels
from responder.webhook_schema import (
    MAX_FINGERPRINT_LENGTH,
    MAX_LABELS,
    MAX_NAME_LENGTH,
    MAX_VALUE_LENGTH,
    TYPED_DECODER,
    VERSIONS,
    TypedWebhook,
)

_EMPTY: Mapping[str, str] = frozen_labels({})

# Firing alerts carry Go's zero time as endsAt: that instant, however it is written.
_GO_ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)
_GO_ZERO_TIME_TEXT = "0001-01-01T00:00:00Z"
# Times Alertmanager accepts but Python cannot hold (year 0, an offset past either end)
# are clamped to these, and the mend noted: the first instant after the zero time, and
# the last one of year 9999.
_EARLIEST = datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC)
_LATEST = datetime.max.replace(tzinfo=UTC)
_RFC3339 = re.compile(
    r"(\d{4})-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|([+-])\d{2}:\d{2})"
)

# The annotation a mended alert carries, and what a cut value ends with. A sender's own
# annotation of that name is dropped (a mend itself): the mark must mean responder made it.
REPAIRED_ANNOTATION = "responder_repaired"
CUT_MARK = "...[cut]"
# Mends named: in one alert's annotation, and in the message (the webhook's answer and
# log); past these, only counted. A hostile body must not make a hostile answer.
MAX_NOTES_PER_ALERT = 10
MAX_NOTES = 20


class PayloadError(ValueError):
    """The body is not a valid webhook; ``str()`` names the field and what is wrong."""


def parse_webhook(body: bytes) -> WebhookMessage:
    """Decode a webhook body; raise ``PayloadError`` for anything that is not one."""
    # Almost every body is ASCII without escapes: then no text in it can hold anything but
    # printable ASCII (JSON forbids raw control characters). Such a body is decoded and
    # type-checked in one pass by msgspec, against webhook_schema.py. Anything else, or
    # anything that schema refuses, takes the general way, which decides and words errors.
    if _plain(body):
        # try, not contextlib.suppress: that is a Python class, called on every webhook
        # (1 µs). DecodeError or its subclass ValidationError; RecursionError: nested about
        # 1,000 deep.
        try:
            message = _from_typed(TYPED_DECODER.decode(body))
        except (msgspec.DecodeError, RecursionError):
            message = None
        if message is not None:
            return message
    return _parse_generally(body)


def _plain(body: bytes) -> bool:
    """ASCII without ``\\u`` escapes. A body without any backslash (nearly all) is told by
    one byte search, five times faster than a search for the pair."""
    return body.isascii() and (b"\\" not in body or b"\\u" not in body)


def _parse_generally(body: bytes) -> WebhookMessage:
    try:
        # msgspec is about three times faster than the standard library and gives the same
        # values; it takes only well-formed UTF-8 and standard JSON (no NaN, no lone
        # surrogates). What it refuses, the standard library decides, in its words.
        document = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        document = _decode_strictly(body)
    # As above; and no text can be longer than the body.
    plain = len(body) <= MAX_VALUE_LENGTH and _plain(body)
    return webhook_from_document(document, plain=plain)


def _from_typed(typed: TypedWebhook) -> WebhookMessage | None:
    """The message of a body that matched the schema; None when a rule the schema does not
    express is broken (the general way then words the error)."""
    alerts = []
    try:
        for index, raw in enumerate(typed.alerts):
            starts_at = _time(raw.starts_at, "startsAt", index)
            ends_at = _time(raw.ends_at, "endsAt", index)
            if not raw.labels or starts_at is None:
                return None
            if raw.annotations and REPAIRED_ANNOTATION in raw.annotations:
                return None  # a name of ours: the general way drops it, and says so
            if raw.status == "firing":
                status, ends_at = AlertStatus.FIRING, None  # see _alert
            elif ends_at is None:
                return None
            else:
                status = AlertStatus.RESOLVED
            labels = MappingProxyType(raw.labels)
            alerts.append(
                Alert(
                    fingerprint=raw.fingerprint or alertmanager_fingerprint(labels),
                    status=status,
                    labels=labels,
                    annotations=_frozen(raw.annotations),
                    starts_at=starts_at,
                    ends_at=ends_at,
                    generator_url=raw.generator_url or "",
                )
            )
    except PayloadError:
        return None
    return WebhookMessage(
        receiver=typed.receiver or "",
        status=AlertStatus.FIRING if typed.status == "firing" else AlertStatus.RESOLVED,
        group_key=typed.group_key or "",
        group_labels=_frozen(typed.group_labels),
        common_labels=_frozen(typed.common_labels),
        common_annotations=_frozen(typed.common_annotations),
        external_url=typed.external_url or "",
        truncated_alerts=typed.truncated_alerts,
        alerts=tuple(alerts),
    )


def _frozen(texts: dict[str, str] | None) -> Mapping[str, str]:
    # The decoder's own dict, which nobody else holds: frozen without a copy.
    return _EMPTY if texts is None else MappingProxyType(texts)


# -- the general way ------------------------------------------------------------------------


def _decode_strictly(body: bytes) -> Any:
    try:
        # Decode explicitly: json.loads(bytes) would also guess UTF-16 and UTF-32.
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"body is not valid UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PayloadError(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise PayloadError("malformed JSON: nested too deeply") from None
    except ValueError as exc:  # such as an integer of more than 4,300 digits
        raise PayloadError(f"malformed JSON: {exc}") from None


def webhook_from_document(document: Any, *, plain: bool = False) -> WebhookMessage:
    if type(document) is not dict:
        raise PayloadError(f"body: expected a JSON object, got {_kind(document)}")
    version = document.get("version")
    if version not in VERSIONS:
        raise PayloadError(
            f'version: expected "4" (Alertmanager webhook v4) or "1" (Grafana), got {version!r}'
        )
    raw_alerts = document.get("alerts")
    if type(raw_alerts) is not list:
        raise PayloadError(f"alerts: expected a list, got {_kind(raw_alerts)}")
    repairs: list[str] = []
    alerts = tuple([_alert(raw, i, plain, repairs) for i, raw in enumerate(raw_alerts)])
    truncated = document.get("truncatedAlerts", 0)
    if type(truncated) is not int or truncated < 0:
        raise PayloadError(f"truncatedAlerts: expected a whole number, got {_kind(truncated)}")
    return WebhookMessage(
        receiver=_optional_str(document, "receiver", "receiver"),
        status=_status(document.get("status", "firing"), "status"),
        group_key=_optional_str(document, "groupKey", "groupKey"),
        group_labels=_labels(
            document.get("groupLabels"), "groupLabels", plain=plain, repairs=repairs
        ),
        common_labels=_labels(
            document.get("commonLabels"), "commonLabels", plain=plain, repairs=repairs
        ),
        common_annotations=_labels(
            document.get("commonAnnotations"), "commonAnnotations", plain=plain, repairs=repairs
        ),
        external_url=_optional_str(document, "externalURL", "externalURL"),
        truncated_alerts=truncated,
        alerts=alerts,
        repairs=_notes(repairs),
    )


def _notes(repairs: list[str]) -> tuple[str, ...]:
    """The mends of one message: every note is kept while parsing (one per mended entry, at
    most 129 an alert); the message names the first ``MAX_NOTES`` and counts the rest."""
    if len(repairs) <= MAX_NOTES:
        return tuple(repairs)
    return (*repairs[:MAX_NOTES], f"... and {len(repairs) - MAX_NOTES} more")


def _alert(raw: Any, index: int, plain: bool, repairs: list[str]) -> Alert:
    # Field paths (``alerts[3].labels``) are built only for a message: this runs for every
    # alert received.
    if type(raw) is not dict:
        raise PayloadError(f"alerts[{index}]: expected an object, got {_kind(raw)}")
    if "labels" not in raw:
        raise PayloadError(f"alerts[{index}].labels: required")
    mended: list[str] = []
    labels = _labels(raw["labels"], "labels", index, plain=plain, repairs=mended)
    if not labels:
        raise PayloadError(f"alerts[{index}].labels: an alert needs at least one label")
    raw_status = raw.get("status")
    if raw_status == "firing":
        status = AlertStatus.FIRING
    elif raw_status == "resolved":
        status = AlertStatus.RESOLVED
    else:
        status = _status(raw_status, f"alerts[{index}].status")  # raises
    if "startsAt" not in raw:
        raise PayloadError(f"alerts[{index}].startsAt: required")
    starts_at = _time(raw["startsAt"], "startsAt", index, mended)
    if starts_at is None:
        raise PayloadError(
            f"alerts[{index}].startsAt: a firing time is required, got the zero time"
        )
    if status is AlertStatus.FIRING:
        # Alertmanager sends the zero time while firing; a future endsAt is its own
        # resolve_timeout and means nothing to us until the resolve arrives. Still checked.
        _time(raw.get("endsAt"), "endsAt", index, [])
        ends_at = None
    else:
        ends_at = _time(raw.get("endsAt"), "endsAt", index, mended)
        if ends_at is None:
            raise PayloadError(f"alerts[{index}].endsAt: a resolved alert needs its end time")
    fingerprint = raw.get("fingerprint")
    if fingerprint is None or fingerprint == "":
        # Of the labels as sent: two alerts that differ only past a cut stay two alerts.
        fingerprint = alertmanager_fingerprint(raw["labels"] if mended else labels)
    elif type(fingerprint) is not str or len(fingerprint) > MAX_FINGERPRINT_LENGTH:
        raise PayloadError(
            f"alerts[{index}].fingerprint: expected a short string, got {_kind(fingerprint)}"
        )
    elif not plain:
        _check_text(fingerprint, f"alerts[{index}].fingerprint")
    generator = raw.get("generatorURL", "")
    if generator is None:
        generator = ""
    if type(generator) is not str:
        raise PayloadError(
            f"alerts[{index}].generatorURL: expected a string, got {_kind(generator)}"
        )
    if not plain and not _is_text(generator):
        # Alertmanager takes a URL of any length: cut, like an annotation, not refused.
        generator = _cut(_clean(generator), MAX_VALUE_LENGTH)
        mended.append(f"alerts[{index}].generatorURL: mended (cut or cleaned)")
    annotations = _labels(raw.get("annotations"), "annotations", index, plain=plain, repairs=mended)
    if REPAIRED_ANNOTATION in annotations:
        mended.append(
            f"alerts[{index}].annotations.{REPAIRED_ANNOTATION}: a name of responder's, dropped"
        )
    if mended:
        repairs.extend(mended)
        named = [m.removeprefix(f"alerts[{index}].") for m in mended[:MAX_NOTES_PER_ALERT]]
        if len(mended) > MAX_NOTES_PER_ALERT:
            named.append(f"... and {len(mended) - MAX_NOTES_PER_ALERT} more")
        annotations = MappingProxyType(
            {**annotations, REPAIRED_ANNOTATION: _cut("; ".join(named), MAX_VALUE_LENGTH)}
        )
    return Alert(
        fingerprint=fingerprint,
        status=status,
        labels=labels,
        annotations=annotations,
        starts_at=starts_at,
        ends_at=ends_at,
        generator_url=generator,
    )


def _status(raw: Any, where: str) -> AlertStatus:
    if raw == "firing":
        return AlertStatus.FIRING
    if raw == "resolved":
        return AlertStatus.RESOLVED
    raise PayloadError(f'{where}: expected "firing" or "resolved", got {_kind(raw)}')


def _labels(
    raw: Any,
    field: str,
    index: int | None = None,
    *,
    plain: bool,
    repairs: list[str],
) -> Mapping[str, str]:
    """Validate an object of label (or annotation) texts and freeze it. ``field`` and
    ``index`` say where it is (``alerts[index].field``), for a message; ``plain``, that
    every text in the body is known to be short, ASCII and free of NULs. Text out of
    bounds is mended (``_mend``), each mend noted in ``repairs``."""
    if raw is None:
        return _EMPTY
    if type(raw) is not dict:
        raise PayloadError(
            f"{_where(field, index)}: expected an object of strings, got {_kind(raw)}"
        )
    # This runs for every label of every alert received: the fast path builds no message.
    if len(raw) > MAX_LABELS:
        return _mend(raw, _where(field, index), repairs)
    if plain:
        for name, value in raw.items():
            if type(value) is not str or not 0 < len(name) <= MAX_NAME_LENGTH:
                return _mend(raw, _where(field, index), repairs)
    else:
        for name, value in raw.items():
            if not (
                0 < len(name) <= MAX_NAME_LENGTH
                and type(value) is str
                and len(value) <= MAX_VALUE_LENGTH
                and name.isascii()
                and value.isascii()
                and "\x00" not in name
                and "\x00" not in value
            ):
                if (
                    0 < len(name) <= MAX_NAME_LENGTH
                    and type(value) is str
                    and _is_text(name)
                    and _is_text(value)
                ):
                    continue  # non-ASCII, valid Unicode, within bounds: fine
                return _mend(raw, _where(field, index), repairs)
    # The decoder's own dict, which nobody else holds: frozen without a copy.
    return MappingProxyType(raw)


def _where(field: str, index: int | None) -> str:
    return field if index is None else f"alerts[{index}].{field}"


def _is_text(text: str) -> bool:
    """Within bounds, storable (no lone surrogates) and free of NULs."""
    if len(text) > MAX_VALUE_LENGTH or "\x00" in text:
        return False
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return True


def _mend(raw: dict[Any, Any], where: str, repairs: list[str]) -> Mapping[str, str]:
    """A copy of ``raw`` with its text brought within bounds, each mend noted in
    ``repairs``: NULs and lone surrogates become U+FFFD, values and names are cut (ending
    in ``CUT_MARK``), entries without a name are dropped, and of too many entries the first
    ``MAX_LABELS`` by name are kept (``alertname`` always), the same ones each time the
    alert comes again. A value that is not a string is refused: that is no text to mend."""
    for name, value in raw.items():
        if not isinstance(value, str):
            raise PayloadError(f"{where}.{_short(name)}: expected a string, got {_kind(value)}")
    mended: dict[str, str] = {}
    for name, value in raw.items():
        clean_name = _cut(_clean(name), MAX_NAME_LENGTH)
        if not clean_name:
            repairs.append(f"{where}: an entry without a name dropped")
            continue
        if clean_name != name:
            if clean_name in raw or clean_name in mended:
                # Another entry has (or was mended to) that name: one of the two would be
                # lost unseen. This one goes, and says so.
                repairs.append(
                    f"{where}: name {_short(clean_name)!r} taken twice once mended, dropped"
                )
                continue
            repairs.append(f"{where}: name {_short(clean_name)!r} mended")
        clean_value = _cut(_clean(value), MAX_VALUE_LENGTH)
        if clean_value != value:
            repairs.append(f"{where}.{_short(clean_name)}: value mended (cut or cleaned)")
        mended[clean_name] = clean_value
    if len(mended) > MAX_LABELS:
        kept = sorted(mended, key=lambda n: (n != "alertname", n))[:MAX_LABELS]
        repairs.append(f"{where}: {len(mended) - MAX_LABELS} of {len(mended)} entries dropped")
        mended = {n: mended[n] for n in kept}
    return MappingProxyType(mended)


def _clean(text: str) -> str:
    """NULs and lone surrogates (not storable text) replaced by U+FFFD."""
    if text.isascii():
        return text.replace("\x00", "\ufffd") if "\x00" in text else text
    return "".join("\ufffd" if ch == "\x00" or 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in text)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(CUT_MARK)] + CUT_MARK


def _check_text(text: str, where: str) -> None:
    # JSON may carry lone surrogates ("\ud800") that are not text and cannot be stored.
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise PayloadError(f"{where}: not valid Unicode text") from None
    if "\x00" in text:
        raise PayloadError(f"{where}: contains a NUL character")


def _optional_str(document: Mapping[str, Any], key: str, where: str) -> str:
    value = document.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_VALUE_LENGTH:
        raise PayloadError(f"{where}: expected a string, got {_kind(value)}")
    _check_text(value, where)
    return value


def _time(raw: Any, field: str, index: int, repairs: list[str] | None = None) -> datetime | None:
    """An RFC 3339 time in UTC; None for none (empty, null, Go's zero time). A time outside
    the years 1 to 9999 in UTC is clamped to the nearest end and the mend noted in
    ``repairs``; without ``repairs`` (msgspec's quick way) it is refused instead, and the
    general way mends it."""
    if raw is None or raw == "" or raw == _GO_ZERO_TIME_TEXT:
        return None
    if type(raw) is not str:
        raise PayloadError(f"{_where(field, index)}: expected an RFC 3339 time, got {_kind(raw)}")
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        shape = _RFC3339.fullmatch(raw)
        if shape is None or shape.group(1) != "0000":
            raise PayloadError(
                f"{_where(field, index)}: expected an RFC 3339 time, got {_short(raw)!r}"
            ) from None
        return _clamped(raw, _EARLIEST, field, index, repairs)  # year 0: RFC 3339 allows it
    if parsed.tzinfo is None:
        raise PayloadError(f"{_where(field, index)}: the time needs a zone offset (such as Z)")
    if parsed.tzinfo is not UTC:
        try:
            parsed = parsed.astimezone(UTC)
        except OverflowError:  # 0001-01-01T01:00+05:00 is before the first representable day
            end = _EARLIEST if parsed.year == 1 else _LATEST
            return _clamped(raw, end, field, index, repairs)
    return None if parsed == _GO_ZERO_TIME else parsed


def _clamped(
    raw: str, end: datetime, field: str, index: int, repairs: list[str] | None
) -> datetime:
    where = _where(field, index)
    if repairs is None:
        raise PayloadError(f"{where}: {_short(raw)!r} is outside the years 1 to 9999 in UTC")
    repairs.append(f"{where}: {_short(raw)!r} outside the years 1 to 9999, clamped")
    return end


_FNV_OFFSET = 14695981039346656037
_FNV_PRIME = 1099511628211
_MASK64 = 0xFFFFFFFFFFFFFFFF


def alertmanager_fingerprint(labels: Mapping[str, str]) -> str:
    """Alertmanager's label-set fingerprint (FNV-1a 64 over sorted names and values).

    Used only when a sender omits ``fingerprint``, so that the same alert gets the same
    identity whether or not the sender computed it.
    """
    value = _FNV_OFFSET
    for name in sorted(labels):
        for part in (name, labels[name]):
            # surrogatepass: the labels as sent may hold a lone surrogate (mended later).
            for byte in part.encode("utf-8", "surrogatepass"):
                value = ((value ^ byte) * _FNV_PRIME) & _MASK64
            value = ((value ^ 0xFF) * _FNV_PRIME) & _MASK64
    return f"{value:016x}"


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return f"the string {_short(value)!r}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__

"""Decode and validate an Alertmanager webhook (version 4) into typed, frozen objects.

Pure: bytes in, ``WebhookMessage`` out, or a ``PayloadError`` that names the offending field
(``alerts[3].labels.job: expected a string``). Unknown fields are accepted, because newer
Alertmanagers and Grafana add fields. Label text is attacker-controlled; here it is only
checked to be well-formed text of bounded size, and it stays data from here on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from responder.model import Alert, AlertStatus, WebhookMessage, frozen_labels

# Firing alerts carry Go's zero time as endsAt.
_GO_ZERO_TIME_PREFIX = "0001-01-01T00:00:00"

# Bounds per alert: generous for real alerts, tight enough that one body cannot make
# every later stage (rules, templates, storage) chew on megabytes of labels.
MAX_LABELS = 128
MAX_NAME_LENGTH = 256
MAX_VALUE_LENGTH = 16384
MAX_FINGERPRINT_LENGTH = 64


class PayloadError(ValueError):
    """The body is not a valid webhook; ``str()`` names the field and what is wrong."""


def parse_webhook(body: bytes) -> WebhookMessage:
    """Decode a webhook body; raise ``PayloadError`` for anything that is not one."""
    try:
        # Decode explicitly: json.loads(bytes) would also guess UTF-16 and UTF-32.
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"body is not valid UTF-8 (byte {exc.start})") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PayloadError(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise PayloadError("malformed JSON: nested too deeply") from None
    return webhook_from_document(document)


def webhook_from_document(document: Any) -> WebhookMessage:
    if not isinstance(document, dict):
        raise PayloadError(f"body: expected a JSON object, got {_kind(document)}")
    version = document.get("version")
    if version != "4":
        raise PayloadError(f'version: expected "4" (Alertmanager webhook v4), got {version!r}')
    raw_alerts = document.get("alerts")
    if not isinstance(raw_alerts, list):
        raise PayloadError(f"alerts: expected a list, got {_kind(raw_alerts)}")
    alerts = tuple(_alert(raw, f"alerts[{i}]") for i, raw in enumerate(raw_alerts))
    truncated = document.get("truncatedAlerts", 0)
    if isinstance(truncated, bool) or not isinstance(truncated, int) or truncated < 0:
        raise PayloadError(f"truncatedAlerts: expected a whole number, got {_kind(truncated)}")
    return WebhookMessage(
        receiver=_optional_str(document, "receiver", "receiver"),
        status=_status(document.get("status", "firing"), "status"),
        group_key=_optional_str(document, "groupKey", "groupKey"),
        group_labels=_labels(document.get("groupLabels"), "groupLabels"),
        common_labels=_labels(document.get("commonLabels"), "commonLabels"),
        common_annotations=_labels(document.get("commonAnnotations"), "commonAnnotations"),
        external_url=_optional_str(document, "externalURL", "externalURL"),
        truncated_alerts=truncated,
        alerts=alerts,
    )


def _alert(raw: Any, where: str) -> Alert:
    if not isinstance(raw, dict):
        raise PayloadError(f"{where}: expected an object, got {_kind(raw)}")
    if "labels" not in raw:
        raise PayloadError(f"{where}.labels: required")
    labels = _labels(raw["labels"], f"{where}.labels")
    if not labels:
        raise PayloadError(f"{where}.labels: an alert needs at least one label")
    status = _status(raw.get("status"), f"{where}.status")
    if "startsAt" not in raw:
        raise PayloadError(f"{where}.startsAt: required")
    starts_at = _time(raw["startsAt"], f"{where}.startsAt")
    if starts_at is None:
        raise PayloadError(f"{where}.startsAt: a firing time is required, got the zero time")
    ends_at = _time(raw.get("endsAt"), f"{where}.endsAt")
    if status is AlertStatus.FIRING:
        # Alertmanager sends the zero time while firing; a future endsAt is its own
        # resolve_timeout and means nothing to us until the resolve arrives.
        ends_at = None
    elif ends_at is None:
        raise PayloadError(f"{where}.endsAt: a resolved alert needs its end time")
    fingerprint = raw.get("fingerprint")
    if fingerprint is None or fingerprint == "":
        fingerprint = alertmanager_fingerprint(labels)
    elif not isinstance(fingerprint, str) or len(fingerprint) > MAX_FINGERPRINT_LENGTH:
        raise PayloadError(
            f"{where}.fingerprint: expected a short string, got {_kind(fingerprint)}"
        )
    generator = raw.get("generatorURL", "")
    if generator is None:
        generator = ""
    if not isinstance(generator, str) or len(generator) > MAX_VALUE_LENGTH:
        raise PayloadError(f"{where}.generatorURL: expected a string, got {_kind(generator)}")
    return Alert(
        fingerprint=fingerprint,
        status=status,
        labels=labels,
        annotations=_labels(raw.get("annotations"), f"{where}.annotations"),
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


def _labels(raw: Any, where: str) -> Mapping[str, str]:
    if raw is None:
        return frozen_labels({})
    if not isinstance(raw, dict):
        raise PayloadError(f"{where}: expected an object of strings, got {_kind(raw)}")
    if len(raw) > MAX_LABELS:
        raise PayloadError(f"{where}: more than {MAX_LABELS} entries")
    # The fast path checks every entry without building a message; only a fault pays for
    # finding and naming the entry (this runs for every label of every alert received).
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
            _label_fault(name, value, where)
    return frozen_labels(raw)


def _label_fault(name: str, value: Any, where: str) -> None:
    """Raise the ``PayloadError`` for one entry, or return if the entry is fine after all
    (non-ASCII text that is valid Unicode)."""
    if not name or len(name) > MAX_NAME_LENGTH:
        raise PayloadError(f"{where}: a name must have 1 to {MAX_NAME_LENGTH} characters")
    if not isinstance(value, str):
        raise PayloadError(f"{where}.{_short(name)}: expected a string, got {_kind(value)}")
    if len(value) > MAX_VALUE_LENGTH:
        raise PayloadError(f"{where}.{_short(name)}: longer than {MAX_VALUE_LENGTH} characters")
    _check_text(name, f"{where}: name {_short(name)}")
    _check_text(value, f"{where}.{_short(name)}")


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


def _time(raw: Any, where: str) -> datetime | None:
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise PayloadError(f"{where}: expected an RFC 3339 time, got {_kind(raw)}")
    if raw.startswith(_GO_ZERO_TIME_PREFIX):
        return None
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise PayloadError(f"{where}: expected an RFC 3339 time, got {_short(raw)!r}") from None
    if parsed.tzinfo is None:
        raise PayloadError(f"{where}: the time needs a zone offset (such as Z)")
    return parsed.astimezone(UTC)


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
            for byte in part.encode("utf-8"):
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

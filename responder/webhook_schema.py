"""The usual webhook body's schema, which msgspec decodes and checks in one C pass
(webhook.py), and the bounds of an alert's text.

Apart from webhook.py because that module is compiled with mypyc (setup.py), which cannot
hold msgspec's classes.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

# Bounds per alert: generous for real alerts, tight enough that one body cannot make
# every later stage (rules, templates, storage) chew on megabytes of labels.
MAX_LABELS = 128
MAX_NAME_LENGTH = 256
MAX_VALUE_LENGTH = 16384
MAX_FINGERPRINT_LENGTH = 64

_Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_LENGTH)]
_Text = Annotated[str, msgspec.Meta(max_length=MAX_VALUE_LENGTH)]
_Texts = Annotated[dict[_Name, _Text], msgspec.Meta(max_length=MAX_LABELS)]
_Fingerprint = Annotated[str, msgspec.Meta(max_length=MAX_FINGERPRINT_LENGTH)]
_Status = Literal["firing", "resolved"]


class TypedAlert(msgspec.Struct):
    labels: _Texts
    status: _Status
    starts_at: str = msgspec.field(name="startsAt")
    ends_at: str | None = msgspec.field(default=None, name="endsAt")
    annotations: _Texts | None = None
    generator_url: _Text | None = msgspec.field(default="", name="generatorURL")
    fingerprint: _Fingerprint | None = None


# Alertmanager's webhook v4, and Grafana Alerting's webhook, which has the same shape (with
# fields of its own) and calls itself "1".
VERSIONS = ("4", "1")


class TypedWebhook(msgspec.Struct):
    version: Literal["4", "1"]
    alerts: list[TypedAlert]
    status: _Status = "firing"
    receiver: _Text | None = ""
    group_key: _Text | None = msgspec.field(default="", name="groupKey")
    group_labels: _Texts | None = msgspec.field(default=None, name="groupLabels")
    common_labels: _Texts | None = msgspec.field(default=None, name="commonLabels")
    common_annotations: _Texts | None = msgspec.field(default=None, name="commonAnnotations")
    external_url: _Text | None = msgspec.field(default="", name="externalURL")
    truncated_alerts: Annotated[int, msgspec.Meta(ge=0)] = msgspec.field(
        default=0, name="truncatedAlerts"
    )


TYPED_DECODER = msgspec.json.Decoder(TypedWebhook)

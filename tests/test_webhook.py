"""The webhook parser: real Alertmanager bodies decode; anything else names what is wrong."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from responder.model import AlertStatus
from responder.webhook import (
    CUT_MARK,
    MAX_NOTES,
    MAX_NOTES_PER_ALERT,
    REPAIRED_ANNOTATION,
    PayloadError,
    _parse_generally,
    alertmanager_fingerprint,
    parse_webhook,
)
from responder.webhook_schema import MAX_LABELS, MAX_NAME_LENGTH, MAX_VALUE_LENGTH
from tests.conftest import payload


def body(document: Any) -> bytes:
    return json.dumps(document).encode()


def test_captured_firing_payload_decodes() -> None:
    """The API-posted firing alert from Alertmanager 0.25 decodes with all its fields."""
    message = parse_webhook(body(payload("firing-api")))
    assert message.status is AlertStatus.FIRING
    assert message.group_key == '{}:{alertname="ApiAlert0"}'
    (alert,) = message.alerts
    assert alert.fingerprint == "22309d8945c45a12"
    assert alert.labels["severity"] == "critical"
    assert alert.annotations["summary"] == "disk almost full"
    assert alert.starts_at == datetime(2026, 11, 22, 7, 6, 22, 284703, tzinfo=UTC)
    assert alert.ends_at is None  # Go's zero time means "still firing"


def test_captured_resolved_payload_has_end_time() -> None:
    """A resolved alert carries its end time; the Prometheus one has millisecond precision."""
    (alert,) = parse_webhook(body(payload("resolved-prometheus"))).alerts
    assert alert.status is AlertStatus.RESOLVED
    assert alert.ends_at == datetime(2026, 11, 22, 7, 7, 13, 491000, tzinfo=UTC)


def test_grouped_mixed_payload_keeps_each_alerts_status() -> None:
    """One group may hold a firing and a resolved alert; each keeps its own status."""
    message = parse_webhook(body(payload("grouped-mixed")))
    assert [a.status for a in message.alerts] == [AlertStatus.FIRING, AlertStatus.RESOLVED]


def test_fingerprint_matches_alertmanagers() -> None:
    """Our fallback fingerprint equals Alertmanager's for every captured alert."""
    for name in ("firing-api", "firing-prometheus", "grouped-mixed"):
        for raw in payload(name)["alerts"]:
            assert alertmanager_fingerprint(raw["labels"]) == raw["fingerprint"]


def test_missing_fingerprint_is_computed() -> None:
    """A sender that omits the fingerprint gets Alertmanager's, so identities agree."""
    document = payload("firing-api")
    del document["alerts"][0]["fingerprint"]
    assert parse_webhook(body(document)).alerts[0].fingerprint == "22309d8945c45a12"


def test_unknown_fields_are_accepted() -> None:
    """Newer Alertmanagers and Grafana add fields; they must not break ingest."""
    document = payload("firing-api")
    document["orgId"] = 1
    document["alerts"][0]["silenceURL"] = "http://grafana/silence"
    document["alerts"][0]["values"] = {"A": 1.5}
    assert len(parse_webhook(body(document)).alerts) == 1


def grafana_webhook(status: str) -> dict[str, Any]:
    """The body of Grafana Alerting's webhook contact point, as its documentation shows it:
    Alertmanager's shape with fields of its own, and "version": "1"."""
    ends = "0001-01-01T00:00:00Z" if status == "firing" else "2021-10-12T10:01:03.157076+02:00"
    return {
        "receiver": "responder",
        "status": status,
        "orgId": 1,
        "alerts": [
            {
                "status": status,
                "labels": {"alertname": "High memory usage", "team": "blue", "zone": "us-1"},
                "annotations": {"summary": "This alert was triggered for zone us-1"},
                "startsAt": "2021-10-12T09:51:03.157076+02:00",
                "endsAt": ends,
                "generatorURL": "https://play.grafana.org/alerting/1afz29v7z/edit",
                "fingerprint": "c6eadffa33fcdf37",
                "silenceURL": "https://play.grafana.org/alerting/silence/new",
                "dashboardURL": "",
                "panelURL": "",
                "values": {"B": 44.23943737541908, "C": 1},
            }
        ],
        "groupLabels": {},
        "commonLabels": {"team": "blue"},
        "commonAnnotations": {},
        "externalURL": "https://play.grafana.org/",
        "version": "1",
        "groupKey": "{}:{}",
        "truncatedAlerts": 0,
        "title": "[FIRING:1]  (blue)",
        "state": "alerting",
        "message": "**Firing**",
    }


@pytest.mark.parametrize("status", ["firing", "resolved"])
def test_grafanas_webhook_is_accepted(status: str) -> None:
    """Grafana's webhook contact point says "version": "1" for the same shape: refusing it
    would refuse every alert a Grafana sends, again at each of its retries."""
    (alert,) = parse_webhook(body(grafana_webhook(status))).alerts
    assert alert.status is AlertStatus(status)
    assert alert.labels["zone"] == "us-1"
    assert alert.starts_at == datetime(2021, 10, 12, 7, 51, 3, 157076, tzinfo=UTC)
    # The general path (taken when the schema path cannot word an error) agrees.
    document = grafana_webhook(status)
    document["alerts"].append({"status": "firing", "labels": {"alertname": "x"}})
    with pytest.raises(PayloadError, match=r"alerts\[1\]\.startsAt: required"):
        parse_webhook(body(document))


def test_nanosecond_timestamps_are_accepted() -> None:
    """The API echoes whatever precision was posted, nanoseconds included."""
    document = payload("firing-api")
    document["alerts"][0]["startsAt"] = "2026-11-22T07:06:22.284703123+01:00"
    (alert,) = parse_webhook(body(document)).alerts
    assert alert.starts_at == datetime(2026, 11, 22, 6, 6, 22, 284703, tzinfo=UTC)


def _mutated(path: list[Any], value: Any) -> bytes:
    document = payload("firing-api")
    target = document
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return body(document)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"version": "4", "alerts": [', "malformed JSON"),
        (b"", "malformed JSON"),
        (b"\xff\xfe{}", "not valid UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b"[]", "body: expected a JSON object"),
        (_mutated(["version"], "3"), 'version: expected "4"'),
        (_mutated(["alerts"], {}), "alerts: expected a list"),
        (_mutated(["alerts", 0, "labels"], KeyError), "alerts[0].labels: required"),
        (_mutated(["alerts", 0, "labels"], {}), "alerts[0].labels: an alert needs"),
        (_mutated(["alerts", 0, "labels", "job"], 5), "alerts[0].labels.job: expected a string"),
        (_mutated(["alerts", 0, "status"], "pending"), 'alerts[0].status: expected "firing"'),
        (_mutated(["alerts", 0, "startsAt"], "yesterday"), "alerts[0].startsAt: expected an RFC"),
        (_mutated(["alerts", 0, "startsAt"], "2026-11-22T07:06:22"), "needs a zone offset"),
        (_mutated(["alerts", 0, "startsAt"], KeyError), "alerts[0].startsAt: required"),
        (
            _mutated(["alerts", 0, "annotations"], ["x"]),
            "alerts[0].annotations: expected an object",
        ),
        (_mutated(["alerts", 0, "fingerprint"], 42), "alerts[0].fingerprint"),
        (_mutated(["truncatedAlerts"], -1), "truncatedAlerts"),
        # Each of these escaped the parser as an exception of its own, a 500 (review, stop 12).
        (_mutated(["alerts", 0, "fingerprint"], "\ud800"), "alerts[0].fingerprint: not valid"),
        (_mutated(["alerts", 0, "fingerprint"], "a\u0000b"), "fingerprint: contains a NUL"),
        (b'{"version":"4","alerts":[],"x":' + b"[" * 990 + b"]" * 990 + b"}", "nested too deeply"),
        (b'{"version":"4","alerts":[],"truncatedAlerts":' + b"9" * 5000 + b"}", "malformed JSON"),
    ],
)
def test_bad_bodies_name_the_problem(raw: bytes, message: str) -> None:
    """Each kind of bad body is refused with a message naming the field at fault."""
    with pytest.raises(PayloadError, match=message.replace("[", r"\[").replace("(", r"\(")):
        parse_webhook(raw)


def test_text_out_of_bounds_is_mended_not_refused() -> None:
    """One alert's hostile text must not get its whole group refused (Alertmanager does not
    retry a 4xx): a NUL, a lone surrogate, a value too long, a name too long or empty, too
    many labels are mended, and the alert says so (security review, stop 13)."""
    document = payload("firing-api")
    labels = document["alerts"][0]["labels"]
    labels.update({"nul": "a\u0000b", "big": "x" * 20_000, "n" * 300: "v", "": "gone"})
    labels.update({f"zz{i:03}": "v" for i in range(200)})
    document["alerts"][0]["annotations"]["description"] = "y" * 17_000
    raw = json.dumps(document).encode().replace(b'"node"', b'"\\ud800"')
    message = parse_webhook(raw)
    (alert,) = message.alerts
    assert len(alert.labels) == MAX_LABELS
    assert alert.labels["nul"] == "a\ufffdb"
    assert alert.labels["big"] == "x" * (MAX_VALUE_LENGTH - len(CUT_MARK)) + CUT_MARK
    assert alert.labels["job"] == "\ufffd"
    assert "n" * (MAX_NAME_LENGTH - len(CUT_MARK)) + CUT_MARK in alert.labels
    assert "" not in alert.labels
    assert len(alert.annotations["description"]) == MAX_VALUE_LENGTH
    assert alert.fingerprint == "22309d8945c45a12"  # Alertmanager's identity is kept
    note = alert.annotations[REPAIRED_ANNOTATION]
    assert "labels.nul: value mended" in note
    assert "annotations.description: value mended" in note
    assert "entries dropped" in note
    assert "alerts[0].labels.nul: value mended (cut or cleaned)" in message.repairs
    assert any(r.startswith("commonLabels.job") for r in message.repairs)  # "node" there too
    # The same hostile alert again is mended the same way: repeats stay idempotent.
    assert parse_webhook(raw).alerts[0] == alert


def test_mends_are_named_within_bounds_however_many() -> None:
    """10,000 alerts of 129 NUL labels each: the message names 20 mends and counts the
    rest, each alert's mark names 10; the answer and log stay small (review, stop 13)."""
    document = payload("firing-api")
    template = document["alerts"][0]
    document["alerts"] = [
        {
            **template,
            "fingerprint": f"{i:016x}",
            "labels": {"alertname": "X", **{f"l{j}": "\u0000" for j in range(129)}},
        }
        for i in range(10_000)
    ]
    message = parse_webhook(json.dumps(document).encode())
    assert len(message.repairs) == MAX_NOTES + 1
    per_alert = 129 + 1  # each NUL, and the 2 of 130 labels past the 128th
    assert message.repairs[-1] == f"... and {10_000 * per_alert - MAX_NOTES} more"
    mark = message.alerts[0].annotations[REPAIRED_ANNOTATION]
    assert mark.count("; ") == MAX_NOTES_PER_ALERT
    assert mark.endswith(f"... and {per_alert - MAX_NOTES_PER_ALERT} more")


def test_a_senders_own_repaired_annotation_is_dropped_and_said() -> None:
    """The mark must mean responder mended the alert: a sender's annotation of that name
    is dropped, which is itself a mend the mark names."""
    document = payload("firing-api")
    document["alerts"][0]["annotations"][REPAIRED_ANNOTATION] = "all fine, nothing mended"
    (alert,) = parse_webhook(body(document)).alerts
    assert alert.annotations[REPAIRED_ANNOTATION] == (
        f"annotations.{REPAIRED_ANNOTATION}: a name of responder's, dropped"
    )


def test_two_names_that_mend_alike_keep_one_and_say_so() -> None:
    document = payload("firing-api")
    labels = document["alerts"][0]["labels"]
    labels["team\u0000"] = "db"
    labels["team\ufffd"] = "web"
    message = parse_webhook(json.dumps(document).encode())
    (alert,) = message.alerts
    assert alert.labels["team\ufffd"] == "web"
    assert message.repairs == (
        "alerts[0].labels: name 'team\ufffd' taken twice once mended, dropped",
    )


def test_without_a_fingerprint_alerts_that_differ_past_a_cut_stay_two() -> None:
    """The identity is computed from the labels as sent, before any cut."""
    document = payload("firing-api")
    first = document["alerts"][0]
    del first["fingerprint"]
    second = json.loads(json.dumps(first))
    first["labels"]["path"] = "x" * 20_000 + "A"
    second["labels"]["path"] = "x" * 20_000 + "B"
    document["alerts"] = [first, second]
    one, two = parse_webhook(json.dumps(document).encode()).alerts
    assert one.labels["path"] == two.labels["path"]  # both cut alike
    assert one.fingerprint != two.fingerprint


def test_of_too_many_labels_alertname_is_kept() -> None:
    document = payload("firing-api")
    document["alerts"][0]["labels"].update({f"a{i:03}": "v" for i in range(200)})
    (alert,) = parse_webhook(body(document)).alerts
    assert alert.labels["alertname"] == "ApiAlert0"  # though 200 names sort before it
    assert len(alert.labels) == MAX_LABELS


def test_a_label_that_is_not_text_is_still_refused() -> None:
    """A number where a label's text belongs is a malformed body, not text to mend."""
    raw = _mutated(["alerts", 0, "labels", "job"], ["x"])
    with pytest.raises(PayloadError, match=r"alerts\[0\]\.labels\.job: expected a string"):
        parse_webhook(raw)


def test_resolved_alert_without_end_time_is_refused() -> None:
    """A resolve that does not say when it ended cannot close anything."""
    document = payload("resolved-api")
    document["alerts"][0]["endsAt"] = "0001-01-01T00:00:00Z"
    with pytest.raises(PayloadError, match=r"alerts\[0\]\.endsAt"):
        parse_webhook(body(document))


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(raw: bytes) -> None:
    """Whatever arrives, the parser answers with a message or a webhook, never a crash."""
    try:
        outcome = f"{len(parse_webhook(raw).alerts)} alerts"
    except PayloadError as exc:
        outcome = str(exc)
    assert outcome


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)


@given(
    st.dictionaries(
        st.sampled_from(
            ["status", "labels", "startsAt", "endsAt", "fingerprint", "annotations", "generatorURL"]
        ),
        json_values,
    )
)
def test_arbitrary_alert_objects_never_crash(alert: dict[str, Any]) -> None:
    """Any JSON shape in an alert gives a clean error or a valid alert."""
    document = payload("firing-api")
    document["alerts"] = [alert]
    try:
        outcome = dict(parse_webhook(body(document)).alerts[0].labels)
    except PayloadError as exc:
        outcome = {"error": str(exc)}
    assert outcome


def outcome_of(parse: Any, raw: bytes) -> Any:
    try:
        return parse(raw)
    except PayloadError as exc:
        return f"PayloadError: {exc}"


# Values a field may carry: right, wrong and borderline (long, empty, zero time, null).
EDGE_VALUES: list[Any] = [
    None,
    {},
    [],
    "firing",
    "resolved",
    "4",
    "",
    "2026-11-22T07:06:22.284703Z",
    "2026-11-22T07:06:22Z",
    "2026-11-22T09:06:22+02:00",
    "2026-11-22T07:06:22",
    "2026-11-22T07:06:22.123456789Z",
    "0001-01-01T00:00:00Z",
    "x" * 65,
    "x" * 16385,
    2**70,
    -1,
    0,
    1.0,
    True,
    {"alertname": "a"},
    {"alertname": ""},
    {"": "a"},
    {"x" * 257: "a"},
    {"a": "x" * 16385},
    {"a": "é"},
    {"é": "a"},
    {"a": "nul\x00"},
    {"a": "\ud800"},
    {"a": 1},
    {"a": None},
    {f"l{i}": "v" for i in range(129)},
]
ALERT_FIELDS = [
    "status",
    "labels",
    "startsAt",
    "endsAt",
    "fingerprint",
    "annotations",
    "generatorURL",
]
MESSAGE_FIELDS = [
    "version",
    "receiver",
    "status",
    "groupKey",
    "truncatedAlerts",
    "externalURL",
    "groupLabels",
    "commonLabels",
    "commonAnnotations",
]


def both_paths_agree(alert: dict[str, Any], message: dict[str, Any], ascii_only: bool) -> None:
    """The usual body is decoded against a schema (msgspec); anything else by the general
    path. Whatever the body, both give the same message or the same error."""
    document = payload("firing-api")
    document["alerts"][0].update(alert)
    document.update(message)
    raw = json.dumps(document, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    assert outcome_of(parse_webhook, raw) == outcome_of(_parse_generally, raw)


@pytest.mark.parametrize("value", EDGE_VALUES, ids=lambda v: repr(v)[:30])
def test_schema_path_agrees_with_the_general_path_on_one_field(value: Any) -> None:
    for field in ALERT_FIELDS:
        both_paths_agree({field: value}, {}, ascii_only=True)
        both_paths_agree({field: value}, {}, ascii_only=False)
    for field in MESSAGE_FIELDS:
        both_paths_agree({}, {field: value}, ascii_only=True)
        both_paths_agree({}, {field: value}, ascii_only=False)


field_values = st.sampled_from(EDGE_VALUES) | json_values


@settings(max_examples=300)
@given(
    st.dictionaries(st.sampled_from(ALERT_FIELDS), field_values, max_size=3),
    st.dictionaries(st.sampled_from(MESSAGE_FIELDS), field_values, max_size=3),
    st.booleans(),
)
def test_schema_path_agrees_with_the_general_path(
    alert: dict[str, Any], message: dict[str, Any], ascii_only: bool
) -> None:
    both_paths_agree(alert, message, ascii_only)


@pytest.mark.parametrize(
    ("path", "value", "mended", "note"),
    [
        (["generatorURL"], "http://x/\ud83d", "http://x/\ufffd", "generatorURL: mended"),
        (["generatorURL"], "a\u0000b", "a\ufffdb", "generatorURL: mended"),
        (["generatorURL"], "h" * 20_000, "h" * 16_376 + "...[cut]", "generatorURL: mended"),
        (["startsAt"], "0000-06-01T00:00:00Z", "0001-01-01T00:00:00.000001+00:00", "clamped"),
        (["startsAt"], "0001-01-01T01:00:00+05:00", "0001-01-01T00:00:00.000001+00:00", "clamped"),
        (["startsAt"], "9999-12-31T23:00:00-05:00", "9999-12-31T23:59:59.999999+00:00", "clamped"),
    ],
)
def test_odd_text_and_times_alertmanager_takes_are_mended_not_refused(
    path: list[str], value: str, mended: str, note: str
) -> None:
    """Alertmanager 0.25 forwards a generatorURL of any length and times Python cannot hold
    (year 0, an offset past either end): refusing them refused the alert's whole group,
    which Alertmanager does not retry (review of stop 14)."""
    message = parse_webhook(_mutated(["alerts", 0, *path], value))
    (alert,) = message.alerts
    got = alert.generator_url if path == ["generatorURL"] else alert.starts_at.isoformat()
    assert got == mended
    assert any(note in r for r in message.repairs), message.repairs
    assert "responder_repaired" in alert.annotations


def test_a_time_just_after_go_s_zero_time_is_a_time() -> None:
    """Only the zero instant itself means "no time"; half a second later is a start."""
    message = parse_webhook(_mutated(["alerts", 0, "startsAt"], "0001-01-01T00:00:00.5Z"))
    assert message.alerts[0].starts_at == datetime(1, 1, 1, 0, 0, 0, 500_000, tzinfo=UTC)
    zero = parse_webhook(_mutated(["alerts", 0, "endsAt"], "0001-01-01T00:00:00.000Z"))
    assert zero.alerts[0].ends_at is None

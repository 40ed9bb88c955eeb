"""The review: one incident's story and figures, and a month of incidents in numbers."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from responder.report import (
    TargetStatus,
    incident_figures,
    incident_report,
    md_text,
    period_report,
    trigger_document,
    trigger_history,
)

T0 = datetime(2026, 3, 31, 8, 0, tzinfo=UTC)
NASTY = "| ## x <script>alert(1)</script>\n# owned\r\n`code` *bold* [link](http://evil) \\|"


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


def document() -> dict[str, Any]:
    """A P0 security incident: acknowledged after 20 min (target 15), resolved after 3 h."""
    return {
        "id": 12,
        "key": '{}:{alertname="SSHBruteForce"}',
        "state": "resolved",
        "severity": "P0",
        "category": "security",
        "policy": "standard",
        "title": "SSH brute force on bastion-1",
        "rule": "ssh-bruteforce",
        "openedAt": at(0),
        "triggeredAt": at(0),
        "acknowledgedAt": at(20),
        "acknowledgedBy": "alice",
        "resolvedAt": at(180),
        "resolvedBy": "bob",
        "snoozedUntil": None,
        "episode": 1,
        "assignee": "alice",
        "target": {"respondSeconds": 15 * 60, "resolveSeconds": 4 * 3600},
        "alertCount": 1,
        "firingCount": 0,
        "alerts": [
            {
                "id": 1,
                "fingerprint": "3f2a9c",
                "status": "resolved",
                "labels": {"alertname": "SSHBruteForce", "user": NASTY},
                "annotations": {"summary": "many failed logins\nfrom 203.0.113.9"},
                "startsAt": at(-2),
                "endsAt": at(175),
            }
        ],
        "timeline": [
            {
                "at": at(0),
                "kind": "opened",
                "actor": None,
                "via": "alertmanager",
                "detail": {"rule": "ssh-bruteforce", "user": NASTY},
            },
            {
                "at": at(0),
                "kind": "paged",
                "actor": None,
                "via": None,
                "detail": {"step": "L1", "contacts": ["bob", "carol"]},
            },
            {
                "at": at(15),
                "kind": "escalated",
                "actor": None,
                "via": None,
                "detail": {"step": "L2"},
            },
            {
                "at": at(20),
                "kind": "acknowledged",
                "actor": "alice",
                "via": "sms",
                "detail": {"reply": NASTY},
            },
            {"at": at(180), "kind": "resolved", "actor": NASTY, "via": "api", "detail": {}},
        ],
        "pages": [
            {
                "id": 1,
                "step": "L1",
                "kind": "page",
                "contact": "bob",
                "channel": "sms",
                "address": "+4915110000002",
                "state": "sent",
                "dueAt": at(0),
                "sentAt": at(0),
                "error": None,
                "attempts": 1,
            },
            {
                "id": 2,
                "step": "L1",
                "kind": "page",
                "contact": "carol",
                "channel": "email",
                "address": "carol@example.com",
                "state": "sent",
                "dueAt": at(0),
                "sentAt": at(0),
                "error": None,
                "attempts": 1,
            },
            {
                "id": 3,
                "step": "L2",
                "kind": "page",
                "contact": "dan",
                "channel": "sms",
                "address": "+4915110000004",
                "state": "failed",
                "dueAt": at(15),
                "sentAt": None,
                "error": "30003",
                "attempts": 3,
            },
            {
                "id": 4,
                "step": "U1",
                "kind": "status",
                "contact": "dan",
                "channel": "sms",
                "address": "+4915110000004",
                "state": "sent",
                "dueAt": at(30),
                "sentAt": at(30),
                "error": None,
                "attempts": 1,
            },
        ],
    }


def section(text: str, title: str) -> list[str]:
    """The lines under the ``## title`` heading, up to the next heading."""
    lines = text.splitlines()
    start = lines.index(f"## {title}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return [line for line in lines[start:end] if line]


UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


def cells(row: str) -> list[str]:
    """A table row's cells, split at the pipes that are not escaped."""
    return [cell.strip() for cell in UNESCAPED_PIPE.split(row)[1:-1]]


def test_figures_measure_acknowledge_and_resolve_against_the_targets() -> None:
    """Acknowledged at 20 min against a 15 min target: breached by 5 min; resolved at 3 h
    against 4 h: met with an hour to spare."""
    figures = incident_figures(document(), now=T0 + timedelta(days=1))
    assert figures.time_to_acknowledge == timedelta(minutes=20)
    assert figures.time_to_resolve == timedelta(hours=3)
    assert figures.respond is not None
    assert figures.respond.status is TargetStatus.BREACHED
    assert figures.respond.margin == timedelta(minutes=5)
    assert figures.resolve is not None
    assert figures.resolve.status is TargetStatus.MET
    assert figures.resolve.margin == timedelta(hours=1)


def test_the_policy_escalation_used_is_named_when_the_rule_named_none() -> None:
    """The incident's policy is empty when it came from incidents.default_policy: the
    summary names the one the escalation used, from its timeline."""
    doc = document() | {"policy": None}
    for event in doc["timeline"]:
        if event["kind"] == "escalated":
            event["detail"] = {**event["detail"], "policy": "standard"}
    summary = {
        cells(r)[0]: cells(r)[1] for r in section(incident_report(doc, now=T0), "Summary")[2:]
    }
    assert summary["Policy"] == "standard (the default policy)"


def test_report_has_title_summary_key_figures_and_empty_review_headings() -> None:
    """The review page names the incident, its numbers and leaves room for the people."""
    text = incident_report(document(), now=T0 + timedelta(days=1))
    assert text.startswith("# Incident 12: SSH brute force on bastion-1\n")
    summary = {cells(r)[0]: cells(r)[1] for r in section(text, "Summary")[2:]}
    assert summary["Severity"] == "P0"
    assert summary["Category"] == "security"
    assert summary["Acknowledged"] == "2026-03-31 08:20:00 UTC by alice"
    assert summary["Resolved"] == "2026-03-31 11:00:00 UTC by bob"
    figures = section(text, "Key figures")
    assert figures[0] == "- Time to acknowledge: 20m (target 15m: **breached** by 5m)"
    assert figures[1] == "- Time to resolve: 3h (target 4h: met, 1h to spare)"
    assert figures[2] == "- Escalation levels reached: L1, L2 (highest: L2); 1 status update"
    assert figures[3] == "- Pages: 4, by channel and state:"
    pages = [cells(r) for r in figures[4:]]
    assert pages[0] == ["Channel", "Pages", "failed", "sent"]
    assert pages[2:] == [["email", "1", "0", "1"], ["sms", "3", "1", "2"]]
    for heading in ("Root cause", "Actions", "Lessons"):
        assert f"\n## {heading}\n" in text
        assert section(text, heading) == []


def test_status_updates_are_counted_per_episode() -> None:
    """A status update's id is unique within an episode only: U1 after a re-fire (or U4
    after a reload changed the interval and removed the policy) is another update, while
    one update to two people is one (escalation review: the report counted the second
    trigger's updates as none)."""
    doc = document()
    first = next(p for p in doc["pages"] if p["step"] == "U1")
    doc["pages"] = [
        *doc["pages"],
        first | {"id": 5, "contact": "erin", "address": "erin@example.com", "episode": None},
        first | {"id": 6, "episode": 2, "dueAt": at(150), "sentAt": at(150)},
    ]
    figures = section(incident_report(doc, now=T0 + timedelta(days=1)), "Key figures")
    assert figures[2] == "- Escalation levels reached: L1, L2 (highest: L2); 2 status updates"


def test_timeline_is_a_table_with_offsets_from_the_opening() -> None:
    """Each event is one row: time, +offset, kind, who and how, detail."""
    text = incident_report(document(), now=T0 + timedelta(days=1))
    rows = [cells(r) for r in section(text, "Timeline")]
    assert rows[0] == ["Time (UTC)", "Since opened", "Event", "By", "Detail"]
    assert [r[:4] for r in rows[2:]][1:4] == [
        ["2026-03-31 08:00:00", "+0s", "paged", ""],
        ["2026-03-31 08:15:00", "+15m", "escalated", ""],
        ["2026-03-31 08:20:00", "+20m", "acknowledged", "alice via sms"],
    ]
    assert rows[3][4] == 'step=L1; contacts=\\["bob","carol"\\]'


def test_injected_text_cannot_break_the_table_or_add_markup() -> None:
    """A label, an actor and a detail carrying pipes, headings, HTML, backticks and newlines
    stay inside their cells and render as plain text."""
    text = incident_report(document(), now=T0 + timedelta(days=1))
    table = section(text, "Timeline")
    assert len(table) == 2 + 5  # header, rule, one line per event: no newline got through
    assert all(line.startswith("| ") and line.endswith(" |") for line in table)
    assert all(len(cells(line)) == 5 for line in table)
    assert "<script>" not in text
    assert "&lt;script&gt;" in text
    assert not any(line.startswith(("# owned", "## x")) for line in text.splitlines())
    assert "`code`" not in text
    assert "[link](" not in text
    # The alert's label stays on its one list line.
    alerts = section(text, "Alerts")
    assert len(alerts) == 3
    assert alerts[1].startswith("  - labels: alertname=SSHBruteForce, user=\\| \\#\\# x &lt;")
    assert alerts[2] == "  - annotations: summary=many failed logins ⏎ from 203.0.113.9"


def test_md_text_escapes_one_value() -> None:
    """The escaping itself, character by character."""
    assert md_text("a|b") == "a\\|b"
    assert md_text("<b>&") == "&lt;b&gt;&amp;"
    assert md_text("x\r\ny\u2028z") == "x ⏎ y ⏎ z"
    assert md_text("\x1b[31m") == "\\x1b\\[31m"
    assert md_text("a\u202eb") == "a\\u202eb"
    assert md_text("_*~$") == "\\_\\*\\~\\$"
    assert md_text("x" * 400) == "x" * 299 + "…"
    assert md_text(None) == "null"


def test_an_open_unacknowledged_incident_is_judged_at_now() -> None:
    """P1, 30 min to respond, 8 h to resolve; an hour in, nobody has answered."""
    doc = document() | {
        "state": "triggered",
        "severity": "P1",
        "acknowledgedAt": None,
        "acknowledgedBy": None,
        "resolvedAt": None,
        "target": {"respondSeconds": 30 * 60, "resolveSeconds": 8 * 3600},
    }
    text = incident_report(doc, now=T0 + timedelta(hours=1))
    figures = section(text, "Key figures")
    assert figures[0] == "- Time to acknowledge: not acknowledged (target 30m: **breached** by 30m)"
    assert figures[1] == "- Time to resolve: open for 1h (target 8h: 7h left)"


def test_ack_after_a_retrigger_counts_from_the_new_trigger() -> None:
    """Episode 2 triggered at 2 h, acknowledged at 2 h 5 min, resolved at 3 h: 5 min to
    acknowledge, not 2 h 5 min, and 1 h to resolve, not 3 h, as the resolve target, the
    metric and the recovery notice count (new-user review: 'Time to resolve: 19m22s
    (target 4h: met, 3h58m54s to spare)' contradicted itself)."""
    doc = document() | {"triggeredAt": at(120), "acknowledgedAt": at(125), "episode": 2}
    figures = incident_figures(doc, now=T0 + timedelta(days=1))
    assert figures.time_to_acknowledge == timedelta(minutes=5)
    assert figures.time_to_resolve == timedelta(hours=1)
    text = incident_report(doc, now=T0 + timedelta(days=1))
    assert "(episode 2)" in text
    assert "- Time to resolve: 1h (target 4h: met, 3h to spare)" in text


def test_naive_times_are_refused() -> None:
    """A time without an offset is a bug in the producer, not something to guess."""
    with pytest.raises(ValueError, match="openedAt"):
        incident_figures(document() | {"openedAt": "2026-03-31T08:00:00"}, now=T0)


# -- the period ------------------------------------------------------------------------------------

BASE = datetime(2026, 3, 10, tzinfo=UTC)
P1_TARGET = {"respondSeconds": 30 * 60, "resolveSeconds": 8 * 3600}
P2_TARGET = {"respondSeconds": 2 * 3600, "resolveSeconds": 24 * 3600}
P3_TARGET = {"respondSeconds": 4 * 3600, "resolveSeconds": 72 * 3600}


def incident(
    number: int,
    severity: str,
    opened: datetime,
    ack: float | None,
    resolved: float | None,
    target: dict[str, int],
) -> dict[str, Any]:
    """A minimal incident document; ``ack`` and ``resolved`` in minutes after opening."""

    def later(m: float | None) -> str | None:
        return None if m is None else (opened + timedelta(minutes=m)).isoformat()

    return {
        "id": number,
        "severity": severity,
        "title": f"incident {number}",
        "state": "resolved" if resolved is not None else "triggered",
        "openedAt": opened.isoformat(),
        "triggeredAt": opened.isoformat(),
        "acknowledgedAt": later(ack),
        "resolvedAt": later(resolved),
        "target": target,
    }


def month() -> list[dict[str, Any]]:
    return [
        incident(1, "P1", BASE, 10, 120, P1_TARGET),
        incident(2, "P1", BASE + timedelta(days=1), 20, 240, P1_TARGET),
        incident(3, "P1", BASE + timedelta(days=2), 60, 600, P1_TARGET),  # both breached
        incident(4, "P2", BASE + timedelta(days=3), 5, 60, P2_TARGET),
        incident(5, "P2", datetime(2026, 3, 31, 12, tzinfo=UTC), 15, None, P2_TARGET),  # open 12h
        incident(6, "P2", BASE + timedelta(days=4), None, 30, P2_TARGET),  # auto-resolved
        incident(7, "P3", datetime(2026, 3, 20, tzinfo=UTC), None, None, P3_TARGET),  # forgotten
        incident(8, "P1", datetime(2026, 2, 20, tzinfo=UTC), 1, 2, P1_TARGET),  # February
    ]


def table(text: str, title: str) -> dict[str, list[str]]:
    """A section's table as {first cell: the other cells}."""
    return {cells(r)[0]: cells(r)[1:] for r in section(text, title)[2:]}


def test_period_counts_breaches_and_open_incidents_per_severity() -> None:
    """March: three P1 (one late on both targets), three P2 (one still open), one forgotten
    P3 that has breached both targets by the end of the month; February's is left out."""
    text = period_report(
        month(), since=datetime(2026, 3, 1, tzinfo=UTC), until=datetime(2026, 4, 1, tzinfo=UTC)
    )
    assert "7 incidents fired in the period; 2 still open." in text
    counts = table(text, "By severity")
    # Incidents, still open, acknowledged, resolved, respond breached, resolve breached.
    assert counts["P0"] == ["0", "0", "0", "0", "0", "0"]
    assert counts["P1"] == ["3", "0", "3", "3", "1", "1"]
    assert counts["P2"] == ["3", "1", "2", "2", "0", "0"]
    assert counts["P3"] == ["1", "1", "0", "0", "1", "1"]
    assert counts["**All**"] == ["7", "2", "5", "5", "2", "2"]
    assert "- 1 trigger that started outside the period left out." in text


def test_period_mtta_and_mttr_mean_median_p90() -> None:
    """Hand-computed: P1 acks 10/20/60 min -> mean 30m, median 20m, p90 60m; all acks
    5/10/15/20/60 -> mean 22m, median 15m, p90 60m. Resolves: P1 2h/4h/10h -> mean 5h20m;
    all 30m/1h/2h/4h/10h -> mean 3h30m, median 2h, p90 10h. Unacknowledged and unresolved
    incidents do not count."""
    text = period_report(
        month(), since=datetime(2026, 3, 1, tzinfo=UTC), until=datetime(2026, 4, 1, tzinfo=UTC)
    )
    mtta = table(text, "Time to acknowledge (MTTA)")
    assert mtta["P0"] == ["0", "—", "—", "—"]
    assert mtta["P1"] == ["3", "30m", "20m", "1h"]
    assert mtta["P2"] == ["2", "10m", "10m", "15m"]
    assert mtta["P3"] == ["0", "—", "—", "—"]
    assert mtta["**All**"] == ["5", "22m", "15m", "1h"]
    mttr = table(text, "Time to resolve (MTTR)")
    assert mttr["P1"] == ["3", "5h20m", "4h", "10h"]
    assert mttr["P2"] == ["2", "45m", "45m", "1h"]
    assert mttr["**All**"] == ["5", "3h30m", "2h", "10h"]
    notes = "\n".join(section(text, "Notes"))
    assert "acknowledged triggers only (2 never acknowledged)" in notes
    assert "resolved triggers only (2 unresolved)" in notes


def test_period_lists_each_incident_with_escaped_titles() -> None:
    """The incident list is a table too, so titles are escaped like everything else."""
    docs = [incident(1, "P1", BASE, 10, 120, P1_TARGET) | {"title": NASTY}]
    text = period_report(
        docs, since=datetime(2026, 3, 1, tzinfo=UTC), until=datetime(2026, 4, 1, tzinfo=UTC)
    )
    rows = section(text, "Incidents")
    assert len(rows) == 3
    assert all(len(cells(r)) == 7 for r in rows)
    assert cells(rows[2])[4:] == ["10m", "2h", "respond met, resolve met"]


def test_an_empty_period_still_renders() -> None:
    """No incidents: zeros and dashes, no division by zero."""
    text = period_report(
        [], since=datetime(2026, 3, 1, tzinfo=UTC), until=datetime(2026, 4, 1, tzinfo=UTC)
    )
    assert "0 incidents fired in the period; 0 still open." in text
    assert table(text, "Time to resolve (MTTR)")["**All**"] == ["0", "—", "—", "—"]


def test_drills_are_left_out_of_the_figures_and_counted_in_the_notes() -> None:
    """A drill tests the paging path; as a P3 incident it skewed MTTA and the counts (docs
    review of stop 14)."""
    drill = incident(9, "P3", BASE + timedelta(days=1), 1, None, P3_TARGET) | {"category": "drill"}
    text = period_report(
        [*month(), drill],
        since=datetime(2026, 3, 1, tzinfo=UTC),
        until=datetime(2026, 4, 1, tzinfo=UTC),
    )
    assert "7 incidents fired in the period; 2 still open." in text
    assert table(text, "By severity")["P3"] == ["1", "1", "0", "0", "1", "1"]
    notes = "\n".join(section(text, "Notes"))
    assert "Drills are left out of every figure above (1 in the period" in notes
    assert "- 1 trigger that started outside the period left out." in text


def test_period_mttr_leaves_out_incidents_that_ended_by_going_stale() -> None:
    """An incident whose alerts went stale (no copy for alerts.stale_after, 12h by default)
    ended unseen: its 13 hours are not a time to resolve, and counted they would swamp the
    MTTR (KPI review). Listed with its time marked "(stale)", and counted in the notes."""
    stale = incident(9, "P1", BASE + timedelta(days=5), 10, 13 * 60, P1_TARGET)
    stale["resolvedBy"] = "stale-sweep"
    text = period_report(
        [*month(), stale],
        since=datetime(2026, 3, 1, tzinfo=UTC),
        until=datetime(2026, 4, 1, tzinfo=UTC),
    )
    mttr = table(text, "Time to resolve (MTTR)")
    assert mttr["P1"] == ["3", "5h20m", "4h", "10h"]  # as without it
    assert table(text, "Incidents")["9"][4] == "13h (stale)"
    notes = "\n".join(section(text, "Notes"))
    assert "went stale" in notes
    assert "are not counted (1;" in notes


def test_an_incident_that_ended_by_going_stale_shows_no_time_to_resolve() -> None:
    """Resolved by the stale sweep: nobody saw it end, so the review must not show the sweep's
    time as its time to resolve (the metric and the period report leave it out; the report
    printed "Time to resolve: 13h" as if it were measured)."""
    doc = document() | {"resolvedAt": at(13 * 60), "resolvedBy": "stale-sweep"}
    figures = section(incident_report(doc, now=T0 + timedelta(days=1)), "Key figures")
    assert figures[1].startswith("- Time to resolve: not measured: its alerts went stale")
    assert "stale-sweep 13h after its start; left out of MTTR" in figures[1]
    assert figures[1].endswith("(target 4h: **breached** by 9h)")


def test_a_trigger_before_a_re_fire_keeps_its_figures_and_breaches() -> None:
    """Ignored past the respond target, resolved by hand, then fired again and answered at
    once: the figures are the new trigger's, and the first trigger's breach (in the timeline
    and the metric) must not vanish behind "respond met" in the review."""

    def event(
        minutes: float, kind: str, actor: str | None, via: str | None, **detail: Any
    ) -> dict[str, Any]:
        return {"at": at(minutes), "kind": kind, "actor": actor, "via": via, "detail": detail}

    doc = document() | {
        "triggeredAt": at(60),
        "startedAt": at(60),
        "acknowledgedAt": at(62),
        "firstAcknowledgedAt": at(62),
        "acknowledgedBy": "alice",
        "resolvedAt": at(70),
        "resolvedBy": "alertmanager",
        "episode": 2,
        "timeline": [
            event(0, "triggered", "alertmanager", "alertmanager", severity="P0"),
            event(15, "target_breached", "responder", "engine", target="respond"),
            event(40, "resolved", "bob", "cli"),
            event(60, "retriggered", "alertmanager", "alertmanager", severity="P0"),
            event(62, "acknowledged", "alice", "sms"),
            event(70, "resolved", "alertmanager", "alertmanager"),
        ],
    }
    figures = section(incident_report(doc, now=T0 + timedelta(days=1)), "Key figures")
    assert figures[:4] == [
        "- The incident fired again after it resolved: the current trigger, since "
        "2026-03-31 09:00:00 UTC:",
        "  - Time to acknowledge: 2m (target 15m: met, 13m to spare)",
        "  - Time to resolve: 10m (target 4h: met, 3h50m to spare)",
        "- Earlier trigger 1, from 2026-03-31 08:00:00 UTC (P0): not acknowledged; resolved "
        "after 40m by bob via cli; **respond target breached**",
    ]


def event(
    when: datetime, kind: str, actor: str | None, via: str | None, **detail: Any
) -> dict[str, Any]:
    return {"at": when.isoformat(), "kind": kind, "actor": actor, "via": via, "detail": detail}


REFIRED = BASE + timedelta(days=1)


def refired(first_resolved_by: str = "alertmanager") -> dict[str, Any]:
    """Incident 12 fired as P2 and was raised to P1, acknowledged after 40 min (past its
    30 min respond target, which the engine recorded) and resolved after 90 min; it fired
    again at 2 h as P2, was acknowledged 5 min later and resolved 30 min after it fired."""

    def m(minutes: float) -> datetime:
        return REFIRED + timedelta(minutes=minutes)

    doc = incident(12, "P2", REFIRED, None, None, P2_TARGET)
    return doc | {
        "state": "resolved",
        "triggeredAt": m(120).isoformat(),
        "startedAt": m(120).isoformat(),
        "firstAcknowledgedAt": m(125).isoformat(),
        "acknowledgedAt": m(125).isoformat(),
        "resolvedAt": m(150).isoformat(),
        "resolvedBy": "alertmanager",
        "episode": 2,
        "timeline": [
            event(m(0), "triggered", "alertmanager", "alertmanager", severity="P2"),
            event(m(0), "alert_fired", "alertmanager", "alertmanager", severity="P2"),
            event(m(5), "severity_raised", "alertmanager", "alertmanager", to="P1"),
            event(m(30), "target_breached", "responder", "engine", target="respond"),
            event(m(40), "acknowledged", "alice", "sms"),
            event(m(50), "unacknowledged", "alice", "api"),
            event(m(55), "acknowledged", "bob", "api"),
            event(m(90), "resolved", first_resolved_by, first_resolved_by),
            event(m(120), "retriggered", "alertmanager", "alertmanager", severity="P2"),
            event(m(125), "acknowledged", "alice", "email"),
            event(m(150), "resolved", "alertmanager", "alertmanager"),
        ],
    }


MARCH = {"since": datetime(2026, 3, 1, tzinfo=UTC), "until": datetime(2026, 4, 1, tzinfo=UTC)}


def test_period_counts_each_trigger_of_an_incident_that_fired_again() -> None:
    """The first trigger is counted too, with its own times (from its own start, to its
    first acknowledgement) and the severity it had (P1 after the raise), as the metrics
    observed it: the report counted only the latest trigger, so the 40 min answer and its
    breach were missing from the MTTA that the histograms showed."""
    text = period_report([refired()], **MARCH)
    assert (
        "2 triggers of 1 incident in the period (an incident that resolved and fired again "
        "counts once per trigger); 0 still open." in text
    )
    counts = table(text, "By severity")
    assert counts["P1"] == ["1", "0", "1", "1", "1", "0"]
    assert counts["P2"] == ["1", "0", "1", "1", "0", "0"]
    assert counts["**All**"] == ["2", "0", "2", "2", "1", "0"]
    mtta = table(text, "Time to acknowledge (MTTA)")
    assert mtta["P1"] == ["1", "40m", "40m", "40m"]
    assert mtta["P2"] == ["1", "5m", "5m", "5m"]
    assert mtta["**All**"] == ["2", "22m30s", "22m30s", "40m"]
    mttr = table(text, "Time to resolve (MTTR)")
    assert mttr["**All**"] == ["2", "1h", "1h", "1h30m"]
    listed = table(text, "Incidents")
    assert listed["12 (trigger 1 of 2)"][0] == "P1"
    assert listed["12 (trigger 1 of 2)"][2:] == [
        "2026-03-11 00:00:00 UTC",
        "40m",
        "1h30m",
        "respond breached, resolve met",
    ]
    assert listed["12 (trigger 2 of 2)"][2:] == [
        "2026-03-11 02:00:00 UTC",
        "5m",
        "30m",
        "respond met, resolve met",
    ]
    assert "left out" not in text


def test_a_period_that_holds_only_the_second_trigger_counts_that_one() -> None:
    """From 1 h on: the re-fire at 2 h is in, the first trigger (and the opening) is not."""
    text = period_report([refired()], since=REFIRED + timedelta(hours=1), until=MARCH["until"])
    assert "1 incident fired in the period; 0 still open." in text
    assert table(text, "By severity")["P1"] == ["0", "0", "0", "0", "0", "0"]
    assert table(text, "Time to acknowledge (MTTA)")["**All**"] == ["1", "5m", "5m", "5m"]
    assert table(text, "Time to resolve (MTTR)")["**All**"] == ["1", "30m", "30m", "30m"]
    assert list(table(text, "Incidents")) == ["12 (trigger 2 of 2)"]
    assert "- 1 trigger that started outside the period left out." in text
    before = period_report([refired()], since=MARCH["since"], until=REFIRED + timedelta(hours=1))
    assert list(table(before, "Incidents")) == ["12 (trigger 1 of 2)"]


def test_the_api_s_earlier_triggers_count_as_the_timeline_does() -> None:
    """The API lists an incident's earlier triggers (``earlierTriggers``), read from its
    timeline, without the timeline itself: both reports read the same figures from it."""
    doc = refired()
    history = trigger_history(doc["timeline"], REFIRED + timedelta(hours=2))
    assert [trigger_document(t) for t in history] == [
        {
            "startedAt": "2026-03-11T00:00:00Z",
            "severity": "P1",
            "firstAcknowledgedAt": "2026-03-11T00:40:00Z",
            "firstAcknowledgedBy": "alice",
            "firstAcknowledgedVia": "sms",
            "resolvedAt": "2026-03-11T01:30:00Z",
            "resolvedBy": "alertmanager",
            "resolvedVia": "alertmanager",
            "breached": ["respond"],
        }
    ]
    listed = {k: v for k, v in doc.items() if k != "timeline"}
    listed["earlierTriggers"] = [trigger_document(t) for t in history]
    assert period_report([listed], **MARCH) == period_report([doc], **MARCH)
    now = MARCH["until"]
    assert (
        section(incident_report(listed, now=now), "Key figures")[:4]
        == section(incident_report(doc, now=now), "Key figures")[:4]
    )


def test_an_earlier_trigger_that_ended_by_going_stale_is_left_out_of_mttr() -> None:
    """Its alerts went stale: nobody saw it end, so it has no time to resolve (as in the
    metric), but its acknowledgement still counts in MTTA."""
    text = period_report([refired(first_resolved_by="stale-sweep")], **MARCH)
    assert table(text, "Time to acknowledge (MTTA)")["**All**"][0] == "2"
    assert table(text, "Time to resolve (MTTR)")["**All**"] == ["1", "30m", "30m", "30m"]
    assert table(text, "Incidents")["12 (trigger 1 of 2)"][4] == "1h30m (stale)"
    assert "are not counted (1;" in "\n".join(section(text, "Notes"))


def test_a_drill_is_left_out_beside_an_incident_that_fired_again() -> None:
    drill = incident(9, "P3", REFIRED, 1, None, P3_TARGET) | {"category": "drill"}
    text = period_report([refired(), drill], **MARCH)
    assert table(text, "By severity")["**All**"][0] == "2"
    assert table(text, "By severity")["P3"][0] == "0"
    assert table(text, "Time to acknowledge (MTTA)")["**All**"][0] == "2"
    assert "Drills are left out of every figure above (1 in the period" in text
    assert "9" not in table(text, "Incidents")


def test_a_drill_report_names_who_answered_and_who_did_not() -> None:
    """A drill pages everyone it names; the summary's acknowledgement is the first answer
    only, so a drill half answered read as answered (review of stop 19)."""
    drill = incident(4, "P3", T0, 1, None, P3_TARGET) | {
        "category": "drill",
        "acknowledgedBy": "alice",
        "pages": [
            {"contact": "alice", "channel": "sms", "state": "delivered"},
            {"contact": "alice", "channel": "email", "state": "sent"},
            {"contact": "bob", "channel": "sms", "state": "failed"},
        ],
        "timeline": [
            {"kind": "triggered", "at": at(0), "actor": "responder", "via": "drill"},
            {"kind": "acknowledged", "at": at(1), "actor": "alice", "via": "sms"},
            {"kind": "acknowledged", "at": at(3), "actor": "alice", "via": "email"},
        ],
    }
    lines = section(incident_report(drill, now=T0 + timedelta(hours=1)), "Drill answers")
    assert lines[0] == "1 of 2 contacts paged answered."
    rows = {cells(r)[0]: cells(r)[1:] for r in lines[3:]}
    assert rows == {
        "alice": ["sms (delivered), email (sent)", "1m after, via sms"],
        "bob": ["sms (failed)", "**no answer**"],
    }
    assert "Drill answers" not in incident_report(document(), now=T0)  # drills only

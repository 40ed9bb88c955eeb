"""Rule files load strictly; the classifier decides in rule order, merges, falls back."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from responder.classify import Classifier, load_classifier, render_explanation
from responder.classify.matchers import Matcher, MatchType
from responder.classify.rules import Rule
from responder.model import ResponseTarget, Severity, frozen_labels
from responder.yamlfile import ConfigError, Node, load_text

BAD = Path(__file__).parent / "data" / "rules_bad"
NOON = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)  # a Monday


def section(text: str) -> Node:
    node = load_text(text, "config.yaml").get("classification")
    assert node is not None
    return node


def classifier(tmp_path: Path, files: dict[str, str], config: str = "") -> Classifier:
    (tmp_path / "rules").mkdir(exist_ok=True)
    for name, text in files.items():
        (tmp_path / "rules" / name).write_text(text, encoding="utf-8")
    return load_classifier(section(config) if config else None, tmp_path)


# -- order and merge --------------------------------------------------------------------------
def test_first_matching_rule_decides(tmp_path: Path) -> None:
    """Rules are tried in order; the first match without continue ends the walk."""
    c = classifier(
        tmp_path,
        {
            "a.yaml": """
rules:
  - name: disk-critical
    matchers: ['{alertname=~"Disk.*", severity="critical"}']
    severity: P0
  - name: disk
    matchers: [alertname=~"Disk.*"]
    severity: P2
    category: performance
""",
        },
    )
    first = c.classify({"alertname": "DiskFull", "severity": "critical"}, NOON)
    assert (first.rule, first.severity, first.category) == (
        "disk-critical",
        Severity.P0,
        "availability",
    )
    second = c.classify({"alertname": "DiskFull", "severity": "warning"}, NOON)
    assert (second.rule, second.severity, second.category) == ("disk", Severity.P2, "performance")


def test_files_are_tried_in_lexical_order(tmp_path: Path) -> None:
    """10-x.yaml sorts before 9-x.yaml: the order is the file names' string order."""
    rule = "rules:\n  - name: {name}\n    matchers: [alertname=X]\n    severity: {sev}\n"
    c = classifier(
        tmp_path,
        {
            "9-late.yaml": rule.format(name="late", sev="P3"),
            "10-early.yaml": rule.format(name="early", sev="P1"),
        },
    )
    assert [Path(f).name for f in c.files] == ["10-early.yaml", "9-late.yaml"]
    assert c.classify({"alertname": "X"}, NOON).rule == "early"


def test_continue_fills_in_what_is_unset(tmp_path: Path) -> None:
    """First set wins per field; maps merge per key with the earlier rule winning; the walk
    stops at the first matching rule without continue."""
    c = classifier(
        tmp_path,
        {
            "a.yaml": """
rules:
  - name: security-team
    matchers: [team="security"]
    category: security
    labels: {owner: secops, tier: "1"}
    templates: {activation: security-activation}
    continue: true
  - name: not-this-one
    matchers: [team="nobody"]
    severity: P0
  - name: tagger
    matchers: [alertname=~".+"]
    labels: {tier: "2", zone: eu}
    actions: []
    continue: true
  - name: instance-down
    matchers: [alertname="InstanceDown"]
    severity: P1
    category: availability
    actions: [restart]
    templates: {activation: generic, recovery: generic-recovery}
    group_by: [instance]
  - name: never-reached
    matchers: [alertname="InstanceDown"]
    policy: nobody-sees-this
""",
        },
    )
    got = c.classify({"alertname": "InstanceDown", "team": "security"}, NOON)
    assert got.rule == "instance-down"  # named after the rule whose severity it carries
    assert got.severity is Severity.P1
    assert got.category == "security"
    assert dict(got.extra_labels) == {"owner": "secops", "tier": "1", "zone": "eu"}
    assert dict(got.templates) == {
        "activation": "security-activation",
        "recovery": "generic-recovery",
    }
    assert got.actions == ()  # an explicit empty list counts as set
    assert got.group_by == ("instance",)
    assert got.policy is None
    explanation = c.explain({"alertname": "InstanceDown", "team": "security"}, NOON)
    assert [r.name for r in explanation.matched] == ["security-team", "tagger", "instance-down"]
    assert explanation.not_reached == 1
    assert explanation.decided_by["category"] == "security-team"
    assert explanation.decided_by["labels"] == "security-team, tagger"


def test_continue_only_rules_fall_back_for_the_rest(tmp_path: Path) -> None:
    """When the walk runs out after continue rules, unset fields fall back; the name is the
    first matching rule's when no rule gave a severity."""
    c = classifier(
        tmp_path,
        {
            "a.yaml": "rules:\n  - name: tag\n    matchers: []\n"
            "    labels: {seen: 'yes'}\n    continue: true\n"
        },
    )
    got = c.classify({"alertname": "Anything", "severity": "critical"}, NOON)
    assert (got.rule, got.severity, got.category) == ("tag", Severity.P0, "availability")
    assert dict(got.extra_labels) == {"seen": "yes"}


def test_hold_page_comes_with_the_actions_taken(tmp_path: Path) -> None:
    """hold_page holds the first page while the rule's actions work: a hold from a rule whose
    actions an earlier rule overrode (here with `actions: []`) held a P1 page for 30 minutes
    with no containment running."""
    c = classifier(
        tmp_path,
        {
            "a.yaml": """
rules:
  - name: no-containment-on-prod-db
    matchers: [env="prod", role="db"]
    actions: []
    continue: true
  - name: other-actions
    matchers: [env="staging"]
    actions: [capture]
    continue: true
  - name: web-down
    matchers: [alertname="WebDown"]
    severity: P1
    actions: [restart-web]
    hold_page: 30m
""",
        },
    )
    held = c.classify({"alertname": "WebDown"}, NOON)
    assert (held.actions, held.hold_page_s) == (("restart-web",), 1800)
    for labels in ({"env": "prod", "role": "db"}, {"env": "staging"}):
        alert = {"alertname": "WebDown", **labels}
        got = c.classify(alert, NOON)
        assert got.hold_page_s is None, labels
        assert c.explain(alert, NOON).classification == got
        assert "hold_page" not in c.explain(alert, NOON).decided_by


@pytest.mark.parametrize(
    ("impact", "urgency", "severity"),
    [("high", "high", "P0"), ("high", "low", "P1"), ("low", "high", "P2"), ("low", "low", "P3")],
)
def test_impact_and_urgency_decide_severity(
    tmp_path: Path, impact: str, urgency: str, severity: str
) -> None:
    """The seeds' matrix: high+high P0, high+low P1, low+high P2, low+low P3."""
    c = classifier(
        tmp_path,
        {
            "a.yaml": f"rules:\n  - name: r\n    matchers: [a=b]\n"
            f"    impact: {impact}\n    urgency: {urgency}\n"
        },
    )
    assert c.classify({"a": "b"}, NOON).severity == Severity(severity)


def test_heartbeat_has_no_target(tmp_path: Path) -> None:
    """A heartbeat is recorded as such and carries no response target."""
    c = classifier(
        tmp_path,
        {
            "a.yaml": "rules:\n  - name: watchdog\n    matchers: [alertname=Watchdog]\n"
            "    heartbeat: true\n"
        },
    )
    got = c.classify({"alertname": "Watchdog", "severity": "none"}, NOON)
    assert got.heartbeat is True
    assert got.target is None
    assert got.severity is Severity.P2  # severity "none" is unknown to the fallback


# -- fallback ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("label", "severity"),
    [
        ("critical", "P0"),
        ("error", "P1"),
        ("high", "P1"),
        ("warning", "P2"),
        ("info", "P3"),
        ("low", "P3"),
        ("Warning", "P2"),
        ("page", "P2"),
        ("", "P2"),
        (None, "P2"),
    ],
)
def test_fallback_reads_the_severity_label(
    tmp_path: Path, label: str | None, severity: str
) -> None:
    """No rule matched: the alert's severity label decides, P2 when absent or unknown."""
    c = classifier(tmp_path, {})
    labels = {"alertname": "Unknown"} | ({} if label is None else {"severity": label})
    got = c.classify(labels, NOON)
    assert (got.rule, got.severity, got.category) == (None, Severity(severity), "availability")
    assert got.target == c.target_for(Severity(severity), NOON)


def test_fallback_is_configurable(tmp_path: Path) -> None:
    """The fallback category and the severity for unknown labels come from config."""
    c = classifier(
        tmp_path,
        {},
        "classification:\n  categories: [business]\n"
        "  fallback: {category: business, severity: P3}\n",
    )
    got = c.classify({"alertname": "X", "severity": "whatever"}, NOON)
    assert (got.severity, got.category) == (Severity.P3, "business")
    assert c.classify({"severity": "critical"}, NOON).severity is Severity.P0


# -- response targets -------------------------------------------------------------------------
def test_default_targets(tmp_path: Path) -> None:
    """P0 15m/4h, P1 30m/8h, P2 2h/24h, P3 4h/72h."""
    c = classifier(tmp_path, {})
    expected = {"P0": (900, 14400), "P1": (1800, 28800), "P2": (7200, 86400), "P3": (14400, 259200)}
    for name, (respond, resolve) in expected.items():
        assert c.target_for(Severity(name), NOON) == ResponseTarget(respond, resolve)


BERLIN_HOURS = """
classification:
  business_hours:
    timezone: Europe/Berlin
    days: [mon, tue, wed, thu, fri]
    start: "09:00"
    end: "17:00"
    holidays: [2026-12-25]
  response_targets:
    P1: {respond: 20m, off_hours: {respond: 1h, resolve: 12h}}
    P3: {resolve: 5d}
"""


@pytest.mark.parametrize(
    ("when", "respond", "resolve"),
    [
        (datetime(2026, 1, 5, 8, 30, tzinfo=UTC), 1200, 28800),  # 09:30 Berlin, Monday
        (datetime(2026, 1, 5, 16, 30, tzinfo=UTC), 3600, 43200),  # 17:30 Berlin
        (datetime(2026, 1, 10, 10, 0, tzinfo=UTC), 3600, 43200),  # Saturday
        (datetime(2026, 12, 25, 10, 0, tzinfo=UTC), 3600, 43200),  # holiday, a Friday
        (datetime(2026, 7, 6, 7, 30, tzinfo=UTC), 1200, 28800),  # 09:30 summer time
    ],
)
def test_off_hours_targets(tmp_path: Path, when: datetime, respond: int, resolve: int) -> None:
    """Outside business hours the off_hours variant is in force; keys left out keep
    their in-hours (or default) values."""
    c = classifier(tmp_path, {}, BERLIN_HOURS)
    got = c.classify({"severity": "error"}, when)
    assert got.target == ResponseTarget(respond, resolve)
    assert c.target_for(Severity.P3, when) == ResponseTarget(4 * 3600, 5 * 86400)
    assert c.explain({"severity": "error"}, when).business_hours_open is (respond == 1200)


@pytest.mark.parametrize(
    ("config", "line", "key", "message"),
    [
        ("classification:\n  rules: x\n", 2, "classification.rules", "unknown key"),
        (
            "classification:\n  response_targets:\n    P1: {off_hours: {respond: 1h}}\n",
            3,
            "classification.response_targets.P1.off_hours",
            "off_hours needs business hours: define business_hours",
        ),
        (
            "classification:\n  response_targets:\n    P4: {respond: 1h}\n",
            3,
            "response_targets.P4",
            "unknown key",
        ),
        (
            "classification:\n  response_targets:\n    P0: {respond: 5h}\n",
            3,
            "response_targets.P0.respond",
            "longer than resolve",
        ),
        (
            "classification:\n  response_targets:\n    P0: {respond: 0}\n",
            3,
            "P0.respond",
            "longer than zero",
        ),
        (
            "classification:\n  fallback: {category: nowhere}\n",
            2,
            "fallback.category",
            "unknown category",
        ),
        (
            "classification:\n  fallback: {severity: P9}\n",
            2,
            "fallback.severity",
            "impossible severity",
        ),
        (
            "classification:\n  categories: [Bad Name]\n",
            2,
            "categories[0]",
            "invalid category name",
        ),
        ("classification:\n  categories: [security]\n", 2, "categories[0]", "built-in"),
        # Drills have this category: incidents of it would never escalate and stay out of
        # every KPI.
        ("classification:\n  categories: [drill]\n", 2, "categories[0]", "reserved for drills"),
        (
            "classification:\n  rule_files: [nothing/*.yaml]\n",
            2,
            "rule_files[0]",
            "matches no file",
        ),
        ("classification:\n  rule_files: [missing.yaml]\n", 2, "rule_files[0]", "no such file"),
        (
            "classification:\n  rule_files: rules/*.yaml\n",
            2,
            "classification.rule_files",
            "expected a list",
        ),
        (
            "classification:\n  business_hours: {start: '18:00', end: '09:00'}\n",
            2,
            "business_hours.end",
            "must be after start",
        ),
    ],
)
def test_config_errors(tmp_path: Path, config: str, line: int, key: str, message: str) -> None:
    """A bad classification section names file, line and key."""
    with pytest.raises(ConfigError, match=message) as caught:
        load_classifier(section(config), tmp_path)
    assert caught.value.file == "config.yaml"
    assert caught.value.line == line
    assert key in caught.value.key


def test_no_section_and_no_rules_directory_means_no_rules(tmp_path: Path) -> None:
    """Without config and without rules/, every alert is classified by the fallback."""
    c = load_classifier(None, tmp_path)
    assert c.rule_count == 0
    assert c.classify({"alertname": "X", "severity": "info"}, NOON).severity is Severity.P3


def test_rule_files_patterns_keep_their_order_and_skip_repeats(tmp_path: Path) -> None:
    """Patterns are expanded in the order written; a file named twice loads once."""
    (tmp_path / "extra").mkdir()
    (tmp_path / "rules").mkdir()
    rule = "rules:\n  - name: {name}\n    matchers: [alertname=X]\n    severity: P1\n"
    (tmp_path / "extra" / "z.yaml").write_text(rule.format(name="z"))
    (tmp_path / "rules" / "a.yaml").write_text(rule.format(name="a"))
    c = load_classifier(
        section("classification:\n  rule_files: [extra/*.yaml, rules/*.yaml, extra/z.yaml]\n"),
        tmp_path,
    )
    assert [r.name for r in c.rules] == ["z", "a"]
    assert c.classify({"alertname": "X"}, NOON).rule == "z"


def test_extra_categories(tmp_path: Path) -> None:
    """Declared categories are usable in rules, next to the built-in ones."""
    c = classifier(
        tmp_path,
        {"a.yaml": "rules:\n  - name: r\n    matchers: [a=b]\n    category: business\n"},
        "classification:\n  categories: [business]\n",
    )
    assert c.classify({"a": "b"}, NOON).category == "business"
    assert "business" in c.categories
    assert "security" in c.categories


# -- bad rule files: one file per error kind ----------------------------------------------------
BAD_FILES = {
    "unknown_key.yaml": (4, "rules[0].severty", "unknown key"),
    "duplicate_name.yaml": (5, "rules[1].name", "duplicate rule name 'disk-full'"),
    "bad_regex.yaml": (5, "rules[0].matchers[1]", "invalid regex"),
    "bad_matcher.yaml": (4, "rules[0].matchers[0]", "bad matcher format"),
    "unquoted_braces.yaml": (4, "rules[0].matchers[0]", "must be quoted in YAML"),
    "impossible_severity.yaml": (4, "rules[0].severity", "impossible severity 'P5'"),
    "severity_and_impact.yaml": (5, "rules[0].impact", "not both"),
    "impact_without_urgency.yaml": (4, "rules[0].impact", "needs urgency"),
    "bad_level.yaml": (5, "rules[0].urgency", "expected one of high, low"),
    "unknown_category.yaml": (5, "rules[0].category", "unknown category 'availabilty'"),
    "missing_name.yaml": (2, "rules[0]", "missing required key 'name'"),
    "missing_matchers.yaml": (2, "rules[0]", "missing required key 'matchers'"),
    "empty_matchers.yaml": (3, "rules[0].matchers", "no matchers; write [] to match every alert"),
    "decides_nothing.yaml": (2, "rules[0]", "decides nothing"),
    "bad_rule_name.yaml": (2, "rules[0].name", "invalid rule name"),
    "duplicate_action.yaml": (4, "rules[0].actions[2]", "listed twice"),
    "bad_template_kind.yaml": (5, "rules[0].templates.Activation", "unknown notice kind"),
    "bad_group_by.yaml": (4, "rules[0].group_by[1]", "invalid label name"),
    "bad_label_name.yaml": (5, "rules[0].labels.owner.team", "invalid label name"),
    "bad_bool.yaml": (5, "rules[0].continue", "expected true or false"),
    "not_a_mapping.yaml": (1, "", "expected a mapping"),
    "rules_not_a_list.yaml": (1, "rules", "expected a list of rules"),
    "unknown_top_key.yaml": (1, "groups", "unknown key"),
    "empty.yaml": (1, "", "expected a mapping with a rules: list"),
    "invalid_yaml.yaml": (4, "", "invalid YAML"),
    "duplicate_yaml_key.yaml": (5, "", "duplicate key 'severity'"),
}


def test_every_bad_file_is_tested() -> None:
    """The table and the directory list the same files."""
    assert sorted(p.name for p in BAD.glob("*.yaml")) == sorted(BAD_FILES)


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_rule_file(name: str) -> None:
    """Each bad example is rejected with its file, line, key and a reason."""
    line, key, message = BAD_FILES[name]
    with pytest.raises(ConfigError) as caught:
        load_classifier(section(f"classification:\n  rule_files: [{name}]\n"), BAD)
    error = caught.value
    assert Path(error.file).name == name
    assert (error.line, error.key) == (line, key), str(error)
    assert message in error.message, str(error)


# -- references ---------------------------------------------------------------------------------
REFERENCES = """
rules:
  - name: api
    matchers: [alertname=ApiDown]
    severity: P1
    policy: ops
    actions: [restart-api, capture]
    templates: {activation: api-down, recovery: api-up}
"""


def test_check_references(tmp_path: Path) -> None:
    """Unknown names are errors at the line that names them; None skips a catalog."""
    c = classifier(tmp_path, {"a.yaml": REFERENCES})
    c.check_references(None, None, None)
    c.check_references({"ops"}, {"restart-api", "capture"}, {"api-down", "api-up"})
    with pytest.raises(ConfigError, match="unknown escalation policy 'ops'") as caught:
        c.check_references({"security"}, None, None)
    assert (caught.value.line, caught.value.key) == (6, "rules[0].policy")
    with pytest.raises(ConfigError, match="unknown action 'capture'") as caught:
        c.check_references(None, ["restart-api"], None)
    assert (caught.value.line, caught.value.key) == (7, "rules[0].actions[1]")
    with pytest.raises(ConfigError, match="unknown template 'api-up'") as caught:
        c.check_references(None, None, ["api-down"])
    assert (caught.value.line, caught.value.key) == (8, "rules[0].templates.recovery")


# -- explain ------------------------------------------------------------------------------------
def test_explain_shows_each_matcher(tmp_path: Path) -> None:
    """The explanation lists tried rules, matcher results and what decided each field."""
    c = classifier(
        tmp_path,
        {
            "a.yaml": """
rules:
  - name: db
    matchers: ['{alertname="InstanceDown", job="db"}']
    severity: P0
  - name: down
    matchers: [alertname="InstanceDown"]
    severity: P1
  - name: other
    matchers: [alertname="Other"]
    severity: P3
""",
        },
    )
    labels = {"alertname": "InstanceDown", "job": "web"}
    text = render_explanation(c.explain(labels, NOON), all_matchers=True)
    assert "rules tried: 2 of 3, 1 not reached" in text
    assert "  - db (" in text
    assert "rules/a.yaml:3): no match" in text
    assert '      yes alertname="InstanceDown"   (alertname is "InstanceDown")' in text
    assert '      no  job="db"   (job is "web")' in text
    assert "rules/a.yaml:6): MATCH, stops here" in text
    assert "  severity:    P1   [down]" in text
    assert "  category:    availability   [fallback: the default category]" in text
    assert "  target:      respond 30m, resolve 8h   [P1 target]" in text
    fallback = render_explanation(c.explain({"alertname": "X"}, NOON))
    assert "rule:        - (no rule matched: fallback)" in fallback
    assert "[fallback: no severity label]" in fallback


def test_naive_time_is_refused(tmp_path: Path) -> None:
    """Decisions take an aware now; a naive one is a caller bug."""
    c = classifier(tmp_path, {})
    with pytest.raises(ValueError, match="timezone-aware"):
        c.classify({}, datetime(2026, 1, 5, 12, 0))  # naive on purpose


def test_memo_survives_many_alertnames(tmp_path: Path) -> None:
    """More distinct alertnames than the memo holds still classify correctly."""
    c = classifier(
        tmp_path,
        {
            "a.yaml": 'rules:\n  - name: n\n    matchers:\n      - alertname=~"N[0-9]*7"\n'
            "    severity: P1\n"
        },
    )
    for i in range(5000):
        got = c.classify({"alertname": f"N{i}"}, NOON)
        assert got.rule == ("n" if i % 10 == 7 else None)
    assert c.classify({"alertname": "N" + "1" * 1000 + "7"}, NOON).rule == "n"


# -- the index never changes an answer -----------------------------------------------------------
ALERTNAMES = ["A", "B", "AB", ""]
VALUES = ["x", "y", ""]


@st.composite
def random_matcher(draw: st.DrawFn) -> Matcher:
    name = draw(st.sampled_from(["alertname", "alertname", "sev", "team"]))
    kind = draw(st.sampled_from(list(MatchType)))
    pool = ALERTNAMES if name == "alertname" else VALUES
    if kind in (MatchType.REGEX, MatchType.NOT_REGEX):
        value = draw(st.sampled_from(["A|B", "A.*", ".*", "", "x|y", ".+", "(?i)a"]))
    else:
        value = draw(st.sampled_from(pool))
    return Matcher(name, kind, value)


@st.composite
def random_rules(draw: st.DrawFn) -> list[Rule]:
    rules = []
    for index in range(draw(st.integers(0, 12))):
        rules.append(
            Rule(
                name=f"r{index}",
                matchers=tuple(draw(st.lists(random_matcher(), max_size=3))),
                file="gen.yaml",
                line=index + 1,
                severity=draw(st.sampled_from([None, *Severity])),
                category=draw(st.sampled_from([None, "security", "performance"])),
                policy=draw(st.sampled_from([None, f"p{index}"])),
                actions=draw(st.sampled_from([None, (), (f"a{index}",)])),
                labels=draw(
                    st.sampled_from(
                        [None, frozen_labels({"k": str(index)}), frozen_labels({f"k{index}": "v"})]
                    )
                ),
                group_by=draw(st.sampled_from([None, ("team",)])),
                continue_=draw(st.booleans()),
                heartbeat=draw(st.sampled_from([None, True, False])),
            )
        )
    return rules


@settings(max_examples=300, deadline=None)
@given(
    random_rules(),
    st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "alertname": st.sampled_from([*ALERTNAMES, "C", "a"]),
                "sev": st.sampled_from([*VALUES, "critical"]),
                "team": st.sampled_from(VALUES),
                "severity": st.sampled_from(["critical", "info", "bogus"]),
            },
        ),
        min_size=1,
        max_size=5,
    ),
)
def test_index_gives_the_same_answer_as_walking_every_rule(
    rules: list[Rule], alerts: list[dict[str, str]]
) -> None:
    """classify (indexed, memoised) equals explain (every rule in order, no index)."""
    c = Classifier(rules)
    for labels in alerts:
        assert c.classify(labels, NOON) == c.explain(labels, NOON).classification

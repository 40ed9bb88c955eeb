"""Matchers behave like Alertmanager 0.25's: parsing, string form, anchoring, absent labels."""

from __future__ import annotations

import time

import pytest
import re2
from hypothesis import given
from hypothesis import strategies as st

from responder.classify.matchers import (
    Matcher,
    MatcherError,
    MatchType,
    format_matchers,
    matchers_from_node,
    parse_matcher,
    parse_matchers,
)
from responder.yamlfile import ConfigError, load_text

EQ, NE, RE, NRE = MatchType.EQUAL, MatchType.NOT_EQUAL, MatchType.REGEX, MatchType.NOT_REGEX

# (matcher text, labels, expected). Absent-label rows are the ones amtool decided (FACTS.md).
MATCH_TABLE = [
    # absent label counts as ""
    ('foo!="x"', {}, True),
    ('foo=""', {}, True),
    ('foo=~".*"', {}, True),
    ('foo!~".+"', {}, True),
    ('foo!=""', {}, False),
    ('foo!~".*"', {}, False),
    ('foo="x"', {}, False),
    ('foo=""', {"foo": ""}, True),
    ('foo=""', {"foo": "x"}, False),
    # anchoring: the whole value must match
    ('foo=~"a|b"', {"foo": "ab"}, False),
    ('foo=~"a|b"', {"foo": "b"}, True),
    ('foo=~"foo"', {"foo": "foobar"}, False),
    ('foo=~"foo"', {"foo": "xfoo"}, False),
    ('foo=~"foo.*"', {"foo": "foobar"}, True),
    ('foo!~"foo"', {"foo": "foobar"}, True),
    ('foo=~""', {"foo": ""}, True),
    ('foo=~""', {"foo": "x"}, False),
    # $ is the end of the text, not of a line; . does not cross a newline
    ('foo=~"x"', {"foo": "x\n"}, False),
    ('foo=~".*"', {"foo": "x\ny"}, False),
    ('foo=~"(?s).*"', {"foo": "x\ny"}, True),
    # equality is exact: case and spaces count
    ('foo="Bar"', {"foo": "bar"}, False),
    ('foo="bar"', {"foo": "bar "}, False),
    ('foo=~"(?i)bar"', {"foo": "BAR"}, True),
    ('foo=~"a(?i)b"', {"foo": "aB"}, True),
    ('foo=~"a(?i)b"', {"foo": "AB"}, False),
    # escapes in quoted values
    (r'foo="a\"b"', {"foo": 'a"b'}, True),
    (r'foo="a\\b"', {"foo": "a\\b"}, True),
    (r'foo="a\nb"', {"foo": "a\nb"}, True),
    (r'foo="a\tb"', {"foo": "a\\tb"}, True),  # not an escape: the backslash stays
    (r'foo=~"a\.b"', {"foo": "a.b"}, True),
    (r'foo=~"a\.b"', {"foo": "axb"}, False),
    (r'foo=~"\d+"', {"foo": "123"}, True),
    # UTF-8: a dot is one code point; \d, \w are ASCII-only as in Go
    ('foo="grüße"', {"foo": "grüße"}, True),
    ('foo=~"gr.ße"', {"foo": "grüße"}, True),
    ('foo=~"..."', {"foo": "日本語"}, True),
    (r'foo=~"\d"', {"foo": "\u0663"}, False),
    (r'foo=~"\w+"', {"foo": "é"}, False),
    ('foo=~"\\\\p{L}+"', {"foo": "é"}, True),
    # unquoted values, as Alertmanager allows
    ("foo=bar", {"foo": "bar"}, True),
    ("foo=~ba.", {"foo": "baz"}, True),
    ("foo != bar", {"foo": "bar"}, False),
    ("foo=", {}, True),
]


@pytest.mark.parametrize(("text", "labels", "expected"), MATCH_TABLE)
def test_match_table(text: str, labels: dict[str, str], expected: bool) -> None:
    """Each row gives the result amtool gives for the same matcher and alert."""
    (matcher,) = parse_matchers(text)
    assert matcher.matches(labels) is expected


PARSE_TABLE = [
    ('{foo = "bar", dings != "bums", }', [("foo", EQ, "bar"), ("dings", NE, "bums")]),
    ("foo=bar,dings!=bums", [("foo", EQ, "bar"), ("dings", NE, "bums")]),
    ("foo=bar, dings!=bums", [("foo", EQ, "bar"), ("dings", NE, "bums")]),
    (
        '{quote="She said: \\"Hi, ladies! That\'s gender-neutral…\\""}',
        [("quote", EQ, 'She said: "Hi, ladies! That\'s gender-neutral…"')],
    ),
    ('statuscode=~"5.."', [("statuscode", RE, "5..")]),
    ('a="x,y", b!~"1|2"', [("a", EQ, "x,y"), ("b", NRE, "1|2")]),
    (
        '{alertname=~"Disk.*", severity!="info"}',
        [("alertname", RE, "Disk.*"), ("severity", NE, "info")],
    ),
    ('  a = "  padded  "  ', [("a", EQ, "  padded  ")]),
    ("a=  unquoted value  ", [("a", EQ, "unquoted value")]),
    ("a=", [("a", EQ, "")]),
    ('a=""', [("a", EQ, "")]),
    ("a=x\\", [("a", EQ, "x\\")]),  # a trailing backslash is literal
    ("__name__=up", [("__name__", EQ, "up")]),
    ("job:rate5m=x", [("job:rate5m", EQ, "x")]),
    ('a=~"x=~y"', [("a", RE, "x=~y")]),
    ("{}", []),
    ("", []),
]


@pytest.mark.parametrize(("text", "expected"), PARSE_TABLE)
def test_parse_table(text: str, expected: list[tuple[str, MatchType, str]]) -> None:
    """Accepted inputs parse to the matchers Alertmanager would build."""
    assert [(m.name, m.type, m.value) for m in parse_matchers(text)] == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("foo", "bad matcher format"),
        ('1foo="x"', "bad matcher format"),
        ('foo=="x"', "unescaped double quote"),
        ('foo="x', "unescaped double quote"),
        ('foo=x"', "unescaped double quote"),
        ('foo="a"b"', "unescaped double quote"),
        ('foo="x\\"', "unescaped double quote"),
        ('foo=~"("', "invalid regex"),
        ('foo=~"a(?=b)"', "invalid regex"),  # no lookaround in RE2
        ('foo=~"(a)\\1"', "invalid regex"),  # no backreferences either
        ("a=b,,c=d", "bad matcher format"),
        ('foo<"x"', "bad matcher format"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    """Malformed matchers and regexes RE2 rejects are errors that say what is wrong."""
    with pytest.raises(MatcherError, match=message):
        parse_matchers(text)


def test_regex_error_names_the_regex() -> None:
    """The operator sees which regex failed and RE2's reason."""
    with pytest.raises(MatcherError) as caught:
        parse_matcher('job=~"node|(api"')
    assert "'node|(api'" in str(caught.value)
    # RE2's quote of where it choked is of the operator's text, not of the anchored form
    # the matcher compiles (new-user review: "missing ): ^(?:node|(api)$").
    assert str(caught.value).endswith("invalid regex 'node|(api': missing ): node|(api")


def test_string_form_is_alertmanagers() -> None:
    """str() quotes and escapes the value the way Alertmanager prints matchers."""
    matcher = Matcher("a", EQ, 'x"y\\z\nw')
    assert str(matcher) == 'a="x\\"y\\\\z\\nw"'
    assert format_matchers((matcher, Matcher("b", RE, ".*"))) == ('{a="x\\"y\\\\z\\nw", b=~".*"}')


def test_regex_is_linear_time() -> None:
    """A pattern that makes a backtracking engine explode stays fast under RE2."""
    (matcher,) = parse_matchers('x=~"(a+)+b"')
    started = time.perf_counter()
    assert not matcher.matches({"x": "a" * 50_000 + "c"})
    assert time.perf_counter() - started < 0.5


def test_lone_surrogate_does_not_crash() -> None:
    """A label value with a lone surrogate (possible from JSON) is matched as U+FFFD."""
    (matcher,) = parse_matchers('x=~"a.b"')
    assert matcher.matches({"x": "a\ud800b"})
    assert not parse_matcher('x=~"ab"').matches({"x": "a\ud800b"})


def test_yaml_list_items_may_hold_several_matchers() -> None:
    """Each list item is parsed with ParseMatchers; braces must be quoted for YAML."""
    node = load_text(
        'm:\n  - alertname=~"Disk.*", severity!="info"\n  - \'{team="db"}\'\n  - env = prod\n',
        "r.yaml",
    )["m"]
    assert [str(m) for m in matchers_from_node(node)] == [
        'alertname=~"Disk.*"',
        'severity!="info"',
        'team="db"',
        'env="prod"',
    ]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ('m:\n  - {alertname="X"}\n', 2, "must be quoted in YAML"),
        ("m:\n  - a=b\n  - 5\n", 3, "expected a string"),
        ("m:\n  - ''\n", 2, "empty matcher"),
        ('m:\n  - a=b\n  - a=~"("\n', 3, "invalid regex"),
        ("m: a=b\n", 1, "expected a list"),
    ],
)
def test_yaml_errors_name_the_line(text: str, line: int, message: str) -> None:
    """Errors in a matchers list point at the item's line."""
    with pytest.raises(ConfigError, match=message) as caught:
        matchers_from_node(load_text(text, "r.yaml")["m"])
    assert caught.value.line == line
    assert caught.value.file == "r.yaml"


# -- properties -------------------------------------------------------------------------------
names = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,12}", fullmatch=True)
values = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
literal_ops = st.sampled_from([EQ, NE])


@st.composite
def matchers(draw: st.DrawFn) -> Matcher:
    kind = draw(st.sampled_from(list(MatchType)))
    value = draw(values)
    if kind in (RE, NRE):
        value = draw(st.sampled_from([re2.escape(value), value + ".*", "(?i)" + re2.escape(value)]))
        try:
            return Matcher(draw(names), kind, value)
        except MatcherError:
            return Matcher(draw(names), kind, re2.escape(value))
    return Matcher(draw(names), kind, value)


@given(matchers())
def test_string_form_round_trips(matcher: Matcher) -> None:
    """Parsing a matcher's string form gives the same matcher back."""
    assert parse_matcher(str(matcher)) == matcher
    assert parse_matchers(str(matcher)) == (matcher,)


@given(st.lists(matchers(), max_size=6), st.booleans())
def test_lists_round_trip(ms: list[Matcher], braces: bool) -> None:
    """A comma-joined list, with or without braces, parses back to the same list."""
    text = ", ".join(str(m) for m in ms)
    if braces:
        text = "{" + text + "}"
    assert parse_matchers(text) == tuple(ms)


@given(names, values, values)
def test_equality_semantics(name: str, wanted: str, actual: str) -> None:
    """= is string equality on the value ("" when absent); != is its negation."""
    eq, ne = Matcher(name, EQ, wanted), Matcher(name, NE, wanted)
    assert eq.matches({name: actual}) is (actual == wanted)
    assert ne.matches({name: actual}) is (actual != wanted)
    assert eq.matches({}) is (wanted == "")


@given(names, values, st.text(max_size=20))
def test_escaped_regex_matches_only_the_literal(name: str, wanted: str, actual: str) -> None:
    """An escaped literal as regex matches exactly that string: the anchoring is complete;
    !~ is always the negation of =~, also for lone surrogates."""
    regex, negated = Matcher(name, RE, re2.escape(wanted)), Matcher(name, NRE, re2.escape(wanted))
    assert regex.matches({name: actual}) is (actual == wanted)
    assert negated.matches({name: actual}) is not regex.matches({name: actual})
    assert regex.matches({name: wanted})

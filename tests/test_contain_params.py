"""Action parameters: hostile label values are refused before anything runs."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from responder.contain.params import (
    BoundParam,
    ParamRejected,
    ParamSource,
    ParamSpec,
    ParamType,
    bind_params,
    check_value,
    parse_params,
)
from responder.yamlfile import ConfigError, load_text


def specs(yaml_text: str) -> tuple[ParamSpec, ...]:
    return parse_params(load_text(yaml_text, "actions.yaml"))


def one(kind: str, extra: str = "") -> ParamSpec:
    return specs(f"p: {{from: label, key: v, type: {kind}{extra}}}")[0]


def bind_one(kind: str, value: str, extra: str = "") -> str | ParamRejected:
    result = bind_params((one(kind, extra),), {"v": value}, {})
    if isinstance(result, ParamRejected):
        return result
    return result["p"].value


INJECTIONS = [
    "; rm -rf /",
    "$(id)",
    "`id`",
    "--help",
    "-rf",
    "db-01\nrm -rf /",
    "db-01\x00",
    "x" * 10240,
    "../../etc/passwd",
    "d\u0430tabase",  # Cyrillic a
    "\uff11\uff10.0.0.1",  # fullwidth 1 and 0
    "host name",
    "a|b",
    "a&&b",
    "a>b",
    "\u202eevil",  # right-to-left override
    "db-01\r",
    "\\\\server\\share",
    "..",  # a path step: /api/backends/{name}/maintenance must not climb (review, stop 12)
    ".",
]


@pytest.mark.parametrize("kind", [t.value for t in ParamType if t is not ParamType.TEXT])
@pytest.mark.parametrize("value", INJECTIONS)
def test_injection_attempts_are_rejected_for_every_type(kind: str, value: str) -> None:
    """Shell syntax, options, control characters, paths and look-alikes never bind."""
    assert isinstance(bind_one(kind, value), ParamRejected)


@pytest.mark.parametrize("value", INJECTIONS)
def test_injections_rejected_even_by_a_permissive_text_pattern(value: str) -> None:
    """The universal checks hold even when the operator's pattern would accept anything."""
    result = bind_one("text", value, ', pattern: ".*"')
    if value in ("; rm -rf /", "$(id)", "`id`", "host name", "a|b", "a&&b", "a>b"):
        # No shell ever sees the value, so shell syntax is data here: only the forbidden
        # characters (slash, leading dash, controls, non-ASCII) are refused.
        if "/" in value:
            assert isinstance(result, ParamRejected)
        else:
            assert result == value
    else:
        assert isinstance(result, ParamRejected)


@pytest.mark.parametrize(
    ("kind", "value", "canonical"),
    [
        ("ipv4", "203.0.113.7", "203.0.113.7"),
        ("ipv6", "2001:DB8::1", "2001:db8::1"),
        ("ip", "2001:db8:0:0::5", "2001:db8::5"),
        ("ip", "198.51.100.1", "198.51.100.1"),
        ("cidr", "198.51.100.0/24", "198.51.100.0/24"),
        ("cidr", "2001:db8::/64", "2001:db8::/64"),
        ("hostname", "DB-01.example.com", "db-01.example.com"),
        ("systemd_unit", "nginx", "nginx.service"),
        ("systemd_unit", "getty@tty1.service", "getty@tty1.service"),
        ("identifier", "cache_main.v2", "cache_main.v2"),
        ("port", "9100", "9100"),
    ],
)
def test_valid_values_bind_in_canonical_form(kind: str, value: str, canonical: str) -> None:
    """Good values pass and come out canonical (lower-case host, compressed IPv6, unit suffix)."""
    assert bind_one(kind, value) == canonical


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("ipv4", "010.0.0.1"),  # leading zeros read as octal by some tools
        ("ipv4", "256.1.1.1"),
        ("ipv4", "1.2.3"),
        ("ipv6", "fe80::1%eth0"),  # a scope id is an interface name in disguise
        ("ipv6", "1.2.3.4"),
        ("ipv4", "::1"),
        ("cidr", "10.0.0.1/8"),  # host bits set: refused, not widened
        ("cidr", "10.0.0.0/33"),
        ("cidr", "10.0.0.0"),
        ("hostname", "-db"),
        ("hostname", "db_01"),
        ("hostname", "a" * 64 + ".example"),
        ("systemd_unit", ".service"),
        # systemd refuses a name that starts with '@'; curl, argparse and javac read
        # "@name" as "the contents of the file name".
        ("systemd_unit", "@etc"),
        ("systemd_unit", "@tty1.service"),
        ("identifier", ".."),
        ("port", "0"),
        ("port", "65536"),
        ("port", "080"),
        ("port", "+80"),
    ],
)
def test_malformed_values_are_rejected(kind: str, value: str) -> None:
    """Each type has a strict shape; near misses are refused."""
    assert isinstance(bind_one(kind, value), ParamRejected)


def test_rejection_names_parameter_source_and_reason_with_an_escaped_value() -> None:
    """The audit gets the parameter, where it came from, why, and a safe, short value."""
    result = bind_one("hostname", "evil\n" + "x" * 10000)
    assert isinstance(result, ParamRejected)
    assert result.param == "p"
    assert result.source == "label v"
    assert "longer than" in result.reason
    assert "\n" not in result.value
    assert "\\n" in result.value
    assert len(result.value) < 120
    assert "10005 chars" in result.value
    assert set(result.value) <= set(string.printable) - set("\n\r\x0b\x0c")


def test_max_length_is_enforced() -> None:
    """A value one over the declared maximum is refused."""
    assert bind_one("identifier", "a" * 8, ", max_length: 8") == "a" * 8
    result = bind_one("identifier", "a" * 9, ", max_length: 8")
    assert isinstance(result, ParamRejected)
    assert "longer than 8" in result.reason


def test_pattern_is_fully_anchored() -> None:
    """A pattern must match the whole value, as in Alertmanager."""
    extra = ', pattern: "web-[0-9]+"'
    assert bind_one("hostname", "web-12", extra) == "web-12"
    assert isinstance(bind_one("hostname", "web-12x", extra), ParamRejected)
    assert isinstance(bind_one("hostname", "xweb-12", extra), ParamRejected)


def test_extract_takes_the_host_from_an_instance_label() -> None:
    """`extract` keeps one group: the host of db-01:9100, then validates it."""
    spec = specs('host: {from: label, key: instance, type: hostname, extract: "([^:]+):[0-9]+"}')
    assert bind_params(spec, {"instance": "db-01:9100"}, {}) == {
        "host": BoundParam("host", "db-01", ParamSource.LABEL, "instance")
    }
    nomatch = bind_params(spec, {"instance": "db-01"}, {})
    assert isinstance(nomatch, ParamRejected)
    assert nomatch.reason == "does not match extract"
    evil = bind_params(spec, {"instance": "$(id):9100"}, {})
    assert isinstance(evil, ParamRejected)


def test_annotation_source_missing_value_and_default() -> None:
    """Values come from labels or annotations; a missing one is refused unless defaulted."""
    declared = specs(
        "unit: {from: annotation, key: unit, type: systemd_unit}\n"
        "port: {from: label, key: port, type: port, default: '443'}\n"
    )
    bound = bind_params(declared, {}, {"unit": "nginx"})
    assert isinstance(bound, dict)
    assert bound["unit"].to_audit() == {
        "name": "unit",
        "value": "nginx.service",
        "from": "annotation unit",
    }
    assert bound["port"].to_audit()["from"] == "default"
    missing = bind_params(declared, {"unit": "nginx"}, {})
    assert isinstance(missing, ParamRejected)
    assert (missing.param, missing.source, missing.reason) == ("unit", "annotation unit", "missing")


def test_non_ascii_only_when_the_pattern_allows_it() -> None:
    """Unicode passes only with allow_non_ascii and a pattern that says which characters."""
    extra = ', pattern: "[\\\\p{L} ]+", allow_non_ascii: true'
    assert bind_one("text", "Zoë Müller", extra) == "Zoë Müller"
    assert isinstance(bind_one("text", "Zoë\u200bMüller", extra), ParamRejected)
    assert isinstance(bind_one("text", "Zoë Müller", ', pattern: ".+"'), ParamRejected)


@pytest.mark.parametrize("invisible", ["\u202e", "\u2066", "\u00ad", "\u2060", "\ufff9", "\u0085"])
def test_invisible_characters_never_bind_even_under_a_loose_pattern(invisible: str) -> None:
    """Bidi overrides and isolates, soft hyphens, word joiners, annotation marks: every
    format or control character is refused, not a hand-made few (security review, stop 13)."""
    loose = ', pattern: ".+", allow_non_ascii: true'
    assert bind_one("text", "Zoë", loose) == "Zoë"
    assert isinstance(bind_one("text", f"Zo{invisible}ë", loose), ParamRejected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("p: {from: label, key: v, type: ip, pattern: '(?=x)'}", "invalid RE2 regex"),
        ("p: {from: label, key: v, type: ip, extract: '.*'}", "exactly 1 capturing group"),
        ("p: {from: label, key: v, type: text}", "type text needs a pattern"),
        ("p: {from: label, key: v, type: ip, colour: red}", "unknown key"),
        ("p: {from: header, key: v, type: ip}", "expected one of label, annotation"),
        ("p: {from: label, key: v, type: url}", "expected one of"),
        ("Bad-Name: {from: label, key: v, type: ip}", "parameter names"),
        ("p: {from: label, key: v, type: ip, default: 'nope'}", "default is not a valid"),
        ("p: {from: label, key: v, type: ip, allow_non_ascii: true}", "needs a pattern"),
    ],
)
def test_parameter_declarations_are_parsed_strictly(text: str, message: str) -> None:
    """Every declaration error names the file, line and key."""
    with pytest.raises(ConfigError) as err:
        specs(text)
    assert message in str(err.value)
    assert str(err.value).startswith("actions.yaml:1:")


FORBIDDEN_ANYWHERE = set("\x00\n\r\t\x7f;$`|&<>()'\"\\ {}*?!~") | {chr(c) for c in range(32)}


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from([t for t in ParamType if t is not ParamType.TEXT]),
    value=st.one_of(
        st.text(max_size=80),
        st.text(alphabet=string.printable + "\u0430\uff11\u00e9", max_size=40),
        st.from_regex(r"-?[0-9a-f.:/]{1,45}", fullmatch=True),
    ),
)
def test_fuzz_no_accepted_value_contains_a_forbidden_character(kind: ParamType, value: str) -> None:
    """Whatever hypothesis sends, an accepted value is plain ASCII with no shell or control char."""
    spec = ParamSpec("p", ParamSource.LABEL, "v", kind)
    canonical, _ = check_value(spec, value)
    if canonical is not None:
        assert canonical.isascii()
        assert not set(canonical) & FORBIDDEN_ANYWHERE
        assert not canonical.startswith("-")
        assert "/" not in canonical or kind is ParamType.CIDR


@settings(max_examples=300, deadline=None)
@given(value=st.text(max_size=300))
def test_fuzz_permissive_text_still_refuses_controls_and_dashes(value: str) -> None:
    """Even with pattern `.*`, accepted text has no control char, NUL, slash or leading dash."""
    spec = one("text", ', pattern: "(?s).*"')
    canonical, _ = check_value(spec, value)
    if canonical is not None:
        assert canonical.isascii()
        assert all(" " <= c <= "~" for c in canonical)
        assert not canonical.startswith("-")
        assert "/" not in canonical
        assert "\\" not in canonical


def test_an_invalid_pattern_is_told_once_in_words(capfd: pytest.CaptureFixture[str]) -> None:
    """`responder check` on a bad pattern: the error says RE2's reason as text (it showed
    b'missing ): ...'), and RE2 writes nothing of its own to stderr (it logged the error
    there too, after an absl warning)."""
    with pytest.raises(ConfigError) as err:
        specs("p: {from: label, key: v, type: identifier, pattern: 'a(b'}")
    assert "invalid RE2 regex: missing ): ^(?:a(b)$" in str(err.value), str(err.value)
    assert "b'" not in str(err.value)
    assert capfd.readouterr().err == ""

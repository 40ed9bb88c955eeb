"""Rule and config files an operator may get wrong, or a copied file may carry: each is
refused at once with its file and line, or loaded as meant, and never hangs or crashes a
reload (review of stop 14)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from responder.calendar import BusinessHours
from responder.classify import load_classifier
from responder.yamlfile import ConfigError, Node, load_text
from tests.conftest import AUTH, ClientFactory, write_config

GOOD = "rules:\n  - name: a\n    matchers: []\n    severity: P1\n"


def _rules(base: Path, text: str | bytes, name: str = "x.yaml") -> Path:
    folder = base / "rules"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _laughs(levels: int) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "x:\n" + "\n".join("  " + line for line in lines) + "\nrules: []\n"


def test_nested_aliases_are_refused_at_once(tmp_path: Path) -> None:
    """Eight levels of aliases in 450 bytes expanded to 10**8 items (37 s, 2.3 GB; one
    more level would have taken the daemon's memory on a reload). Aliases are refused."""
    _rules(tmp_path, _laughs(8))
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        load_classifier(None, tmp_path)
    assert time.monotonic() - started < 1
    assert "x.yaml:3: invalid YAML: aliases (*a0) are not supported" in str(caught.value)


def test_a_merge_key_is_refused_with_a_reason(tmp_path: Path) -> None:
    """``<<: *base`` is an alias too: refused for what it is, not as a false duplicate."""
    _rules(
        tmp_path,
        "rules:\n  - &base\n    name: a\n    matchers: []\n    severity: P1\n"
        "  - <<: *base\n    name: b\n",
    )
    with pytest.raises(ConfigError, match=r"x\.yaml:6: .*aliases \(\*base\)"):
        load_classifier(None, tmp_path)


def test_a_symlink_loop_under_a_recursive_pattern_ends(tmp_path: Path) -> None:
    """rules/**/*.yaml with two links to '.' inside rules/: glob followed both at every
    level (2**40 paths), and check and reload never returned. ``**`` now walks real
    folders only, and finds the file once."""
    _rules(tmp_path, GOOD, "a.yaml")
    os.symlink(".", tmp_path / "rules" / "loop1")
    os.symlink(".", tmp_path / "rules" / "loop2")
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from responder.classify import load_classifier
        from responder.yamlfile import load_text
        section = load_text('classification:\\n  rule_files: ["rules/**/*.yaml"]\\n', "c.yaml")
        c = load_classifier(section.get("classification"), Path({str(tmp_path)!r}))
        print(c.rule_count)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.stdout.strip() == "1", done.stderr


def test_a_config_folder_named_like_a_pattern_finds_its_rules(tmp_path: Path) -> None:
    """A config in 'responder[prod]/': its own name was read as a pattern, rules/*.yaml
    matched nothing, and every alert fell back silently (check said OK, 0 rules)."""
    base = tmp_path / "responder[prod]"
    base.mkdir()
    _rules(base, GOOD)
    assert load_classifier(None, base).rule_count == 1


@pytest.mark.parametrize("pattern", [None, "rules/*.yaml", "rules/10-security.yaml"])
def test_a_rule_file_linked_to_nothing_is_an_error(tmp_path: Path, pattern: str | None) -> None:
    """rules/10-security.yaml a link to a file that was removed: glob dropped it, so check
    said OK and a reload went on without its rules; every security alert fell back."""
    _rules(tmp_path, GOOD, "20-a.yaml")
    os.symlink(tmp_path / "gone" / "security.yaml", tmp_path / "rules" / "10-security.yaml")
    with pytest.raises(ConfigError) as caught:
        load_classifier(None if pattern is None else _section(pattern), tmp_path)
    link = tmp_path / "rules" / "10-security.yaml"
    assert f"{link} is a symbolic link to {tmp_path}/gone/security.yaml, which does not exist" in (
        str(caught.value)
    )
    assert str(caught.value).startswith(str(link) if pattern is None else "c.yaml:2: ")


def test_a_folder_named_as_a_rule_file_is_called_a_folder(tmp_path: Path) -> None:
    """It was "no such file", for a path that plainly exists."""
    (tmp_path / "rules").mkdir()
    with pytest.raises(ConfigError) as caught:
        load_classifier(_section("rules"), tmp_path)
    assert str(caught.value) == (
        f"c.yaml:2: classification.rule_files[0]: {tmp_path}/rules is a folder, not a rule "
        "file (write rules/*.yaml for the files in it)"
    )


def test_hidden_files_are_not_rule_files(tmp_path: Path) -> None:
    """An editor's lock or backup file (.#x.yaml) beside the rules is not loaded."""
    _rules(tmp_path, GOOD)
    _rules(tmp_path, "not: [a rule file", ".#x.yaml")
    assert load_classifier(None, tmp_path).rule_count == 1


@pytest.mark.parametrize(
    "value",
    ["2026-02-30", "2026-13-01", "2026-01-05 12:00:00 +24:00", "1" * 5000],
)
def test_a_scalar_yaml_cannot_read_is_an_error_with_its_line(tmp_path: Path, value: str) -> None:
    """An impossible date (a holiday on 29 February of a non-leap year), a bad offset, an
    integer over Python's digit limit: ``responder check`` printed a traceback."""
    _rules(tmp_path, GOOD + f"    annotations:\n      since: {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_classifier(None, tmp_path)
    assert "x.yaml:6: invalid YAML:" in str(caught.value)
    assert "cannot be read" in str(caught.value)


async def test_a_reload_error_in_a_rule_file_names_the_rule_file(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """The same error at a reload was reported as an 'auth' error of config.yaml."""
    rules = "rules:\n  - name: r\n    matchers: ['alertname=\"X\"']\n    severity: P1\n"
    client = await make_client(write_config(tmp_path, rules=rules))
    write_config(tmp_path, rules=rules + "    annotations: {since: 2026-02-30}\n")
    answer = await client.post("/-/reload", headers=AUTH)
    assert answer.status == 400
    error = (await answer.json())["error"]
    assert "rules.yaml:5" in error, error
    assert "auth" not in error


def test_a_duplicate_rule_name_is_reported_at_its_name(tmp_path: Path) -> None:
    _rules(
        tmp_path,
        "rules:\n  - name: a\n    matchers: []\n    severity: P1\n"
        "  - matchers: []\n    severity: P2\n    name: a\n",
    )
    with pytest.raises(ConfigError) as caught:
        load_classifier(None, tmp_path)
    assert (caught.value.key, caught.value.line) == ("rules[1].name", 7)


def test_bytes_that_are_not_utf8_are_reported_at_their_line(tmp_path: Path) -> None:
    _rules(tmp_path, b'rules:\n  - name: a\n    matchers: []\n    description: "\xff"\n')
    with pytest.raises(ConfigError) as caught:
        load_classifier(None, tmp_path)
    assert (caught.value.line, caught.value.message) == (4, "not valid UTF-8")


def test_the_next_opening_past_holidays_on_the_one_open_weekday() -> None:
    """Mondays only, two Monday holidays: the next opening is two weeks away (the search
    looked one day further per holiday and failed)."""
    hours = BusinessHours(
        days=frozenset({0}), holidays=frozenset({date(2026, 1, 5), date(2026, 1, 12)})
    )
    after = datetime(2026, 1, 4, 12, tzinfo=UTC)
    assert hours.next_change(after) == datetime(2026, 1, 19, 9, tzinfo=UTC)


def _section(pattern: str) -> Node | None:
    return load_text(f'classification:\n  rule_files: ["{pattern}"]\n', "c.yaml").get(
        "classification"
    )


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("rules/**", 2),  # a trailing ** is every file below, as glob had it
        ("rules/**.yaml", 1),  # ** inside a name is *, as glob had it
        ("./rules/*.yaml", 1),  # ./ names no hidden part: .x.yaml stays out
        ("rules/.*.yaml", 1),  # a pattern that names hidden files gets them
    ],
)
def test_patterns_match_as_glob_did(tmp_path: Path, pattern: str, expected: int) -> None:
    (tmp_path / "rules" / "team").mkdir(parents=True)
    (tmp_path / "rules" / "a.yaml").write_text(GOOD)
    (tmp_path / "rules" / "team" / "b.yaml").write_text(GOOD.replace("name: a", "name: b"))
    (tmp_path / "rules" / ".x.yaml").write_text(GOOD.replace("name: a", "name: x"))
    assert load_classifier(_section(pattern), tmp_path).rule_count == expected


async def test_a_reload_that_fails_for_a_fault_of_ours_keeps_the_old_config(
    make_client: ClientFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a ConfigError (a bug of ours while loading): still a 400 that says so, the
    reload gauge at 0, the old config in force; not a 500 (review of stop 14)."""
    client = await make_client(write_config(tmp_path))

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("a fault of ours")

    monkeypatch.setattr("responder.runtime.load_snapshot", broken)
    answer = await client.post("/-/reload", headers=AUTH)
    assert answer.status == 400, await answer.text()
    assert "cannot load: RuntimeError('a fault of ours')" in (await answer.json())["error"]
    metrics = await (await client.get("/metrics")).text()
    assert "responder_config_last_reload_successful 0.0" in metrics

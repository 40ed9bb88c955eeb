"""Config loading: the shipped file loads; every kind of mistake names file, line and key."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from responder.config import load_config, parse_listen
from responder.runtime import load_snapshot
from responder.yamlfile import ConfigError, parse_duration

ROOT = Path(__file__).parent.parent
BAD = sorted((Path(__file__).parent / "data" / "config_bad").glob("*.yaml"))


def test_shipped_config_loads() -> None:
    """The config.yaml in the repository is valid and says what the README says."""
    snapshot = load_snapshot(ROOT / "config.yaml")
    config = snapshot.config
    assert config.server.listen == "127.0.0.1:9095"
    assert config.state_dir == ROOT / "state"
    assert config.storage.synchronous == "FULL"
    assert config.storage.retention == timedelta(days=365)
    assert not config.auth.configured  # the first start generates a token
    assert snapshot.classifier.rule_count > 0


SHIPPED = [ROOT / "config.yaml", *sorted((ROOT / "examples").glob("*.yaml"))]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.relative_to(ROOT).as_posix() for p in SHIPPED])
def test_every_shipped_config_passes_check(path: Path) -> None:
    """`responder check` passes on a fresh clone for every config the repository ships."""
    load_snapshot(path)


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_config_names_file_line_and_key(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each bad example file fails with the message its first line expects."""
    monkeypatch.delenv("RESPONDER_TEST_UNSET_VAR", raising=False)
    expected = path.read_text().splitlines()[0].removeprefix("# expect: ")
    monkeypatch.chdir(path.parent)
    with pytest.raises(ConfigError) as caught:
        load_snapshot(path)
    assert str(caught.value).startswith(expected), str(caught.value)


def test_retention_forever_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("storage:\n  retention: forever\n")
    assert load_config(path).storage.retention is None
    path.write_text("storage:\n  retention: 90d\n")
    assert load_config(path).storage.retention == timedelta(days=90)


def test_secret_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Secrets come from a file (trailing newline dropped) or a variable, never shown."""
    (tmp_path / "pw").write_text("s3cret\n")
    monkeypatch.setenv("RESPONDER_TEST_TOKEN", "tok-123")
    path = tmp_path / "config.yaml"
    path.write_text(
        "auth:\n  bearer_token_env: RESPONDER_TEST_TOKEN\n"
        "  basic_auth:\n    username: am\n    password_file: pw\n"
    )
    auth = load_config(path).auth
    assert auth.bearer_token is not None
    assert auth.bearer_token.value == "tok-123"
    assert auth.basic_password is not None
    assert auth.basic_password.value == "s3cret"
    assert "tok-123" not in repr(auth)
    assert "s3cret" not in repr(auth)
    assert "s3cret" not in str(auth.basic_password)


def test_command_line_overrides(tmp_path: Path) -> None:
    """--listen and --state-dir win over the file."""
    path = tmp_path / "config.yaml"
    path.write_text("server:\n  listen: 127.0.0.1:1111\nstate_dir: here\n")
    config = load_config(path, listen="[::1]:2222", state_dir=tmp_path / "there")
    assert (config.server.host, config.server.port) == ("::1", 2222)
    assert config.state_dir == tmp_path / "there"
    assert load_config(path).state_dir == tmp_path / "here"


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("")
    config = load_config(path)
    assert config.server.port == 9095
    assert config.alerts.stale_after == timedelta(hours=12)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("1h30m", 5400), ("2d", 172800), ("250ms", 0.25), ("0", 0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "5", "m5", "1h 30m", "-5m", "1.5h", "5 minutes"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    "text", ["127.0.0.1", ":80", "host:", "host:0", "[::1:80", "999.1.1.1:80", "bad_host:80"]
)
def test_bad_listen(text: str) -> None:
    with pytest.raises(ValueError, match=r"host:port|port must|IPv6|does not appear"):
        parse_listen(text)


def test_secret_file_must_not_be_empty(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("\n")
    path = tmp_path / "config.yaml"
    path.write_text("auth:\n  bearer_token_file: token\n")
    with pytest.raises(
        ConfigError, match=r"config\.yaml:2: auth\.bearer_token_file: secret file is empty"
    ):
        load_config(path)
    assert os.path.exists(tmp_path / "token")


@pytest.mark.parametrize("content", ["abc def\n", "first\nsecond\n", "tab\there\n", b"\xffx"])
def test_a_token_no_client_could_send_is_refused(tmp_path: Path, content: str | bytes) -> None:
    """Two lines, spaces, or bytes that are not UTF-8 in the token file: an error naming it,
    not a daemon nobody can authenticate to (operations review, stop 12)."""
    token = tmp_path / "token"
    if isinstance(content, bytes):
        token.write_bytes(content)
    else:
        token.write_text(content)
    path = tmp_path / "config.yaml"
    path.write_text("auth:\n  bearer_token_file: token\n")
    with pytest.raises(ConfigError, match=r"config\.yaml:2: auth\.bearer_token_file: "):
        load_config(path)


def test_a_certificate_that_cannot_be_loaded_is_a_config_error(tmp_path: Path) -> None:
    """`responder check` must catch what would stop `serve` (operations review, stop 12)."""
    (tmp_path / "cert.pem").write_text("garbage\n")
    (tmp_path / "key.pem").write_text("garbage\n")
    path = tmp_path / "config.yaml"
    path.write_text("server:\n  tls:\n    cert_file: cert.pem\n    key_file: key.pem\n")
    with pytest.raises(
        ConfigError, match=r"config\.yaml:2: server\.tls: cannot load the certificate and key"
    ):
        load_config(path)


def test_a_real_certificate_loads(tmp_path: Path) -> None:
    """The check above accepts a working pair: a self-signed one made for the tests only
    (`openssl req -x509 -newkey rsa:2048 -nodes -days 36500 -subj /CN=localhost`)."""
    tls = Path(__file__).parent / "data" / "tls"
    path = tmp_path / "config.yaml"
    path.write_text(
        f"server:\n  tls:\n    cert_file: {tls}/cert.pem\n    key_file: {tls}/key.pem\n"
    )
    assert load_config(path).server.tls is not None

"""The config file, loaded strictly and all-or-nothing into one immutable snapshot.

Relative paths are relative to the config file's folder. Unknown keys and wrong types are
errors that name file, line and key. A reload builds a whole new ``Config``; the running one
is swapped only when the new one loaded completely (see ``responder.app``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

from responder.secrets import Secret, read_secret
from responder.yamlfile import ConfigError, Node, load_file

DEFAULT_PORT = 9095
DEFAULT_MAX_BODY = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert_file: Path
    key_file: Path


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    tls: TlsConfig | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY
    # The address people and providers reach this daemon at (ack links, Twilio callbacks).
    public_url: str | None = None
    shutdown_timeout: float = 10.0
    access_log: bool = False

    @property
    def listen(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Who may post webhooks and use the API. Empty: a token generated into the state dir."""

    bearer_token: Secret | None = None
    basic_username: str | None = None
    basic_password: Secret | None = None

    @property
    def configured(self) -> bool:
        return self.bearer_token is not None or self.basic_username is not None


@dataclass(frozen=True, slots=True)
class StorageConfig:
    url: str = "sqlite:responder.db"
    # FULL: a commit survives power loss. NORMAL (WAL): survives a crash of the process
    # (kill -9), not of the machine.
    synchronous: str = "FULL"
    # Incidents resolved, and alerts of no incident ended, longer ago than this are
    # deleted; None keeps everything.
    retention: timedelta | None = timedelta(days=365)


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    # Alertmanager re-sends firing alerts every repeat_interval (4h by default); an alert
    # not heard of for several of those has been resolved without anyone telling us.
    stale_after: timedelta = timedelta(hours=12)
    stale_check_every: timedelta = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = "info"
    format: str = "text"  # or "json" (one object per line, for journald and log shippers)


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    base_dir: Path
    state_dir: Path
    server: ServerConfig
    auth: AuthConfig
    storage: StorageConfig
    alerts: AlertsConfig
    logging: LoggingConfig


DAEMON_KEYS = ("state_dir", "server", "auth", "storage", "alerts", "logging")


def read_config_file(path: Path) -> Node:
    """Parse the config file into a ``Node``; an empty file is an empty mapping."""
    root = load_file(path, display=display_name(path))
    if root.is_null():
        root = Node({"__line__": 1, "__map__": {}}, root.file, 1, "")
    return root


def load_config(path: Path, *, listen: str | None = None, state_dir: Path | None = None) -> Config:
    """Load and validate only the daemon's own sections (tests and tools use this)."""
    path = path.absolute()
    return parse_config(read_config_file(path), path, listen=listen, state_dir=state_dir)


def parse_config(
    root: Node, path: Path, *, listen: str | None = None, state_dir: Path | None = None
) -> Config:
    """The daemon's own sections of an already-read file; command-line overrides win."""
    base_dir = path.parent
    state_node = root.get("state_dir")
    state = Path("state")
    if state_node is not None:
        if not state_node.as_str().strip():  # Path("") is the config's own folder
            raise state_node.error("expected a directory path, got an empty string")
        state = Path(state_node.as_str())
    if not state.is_absolute():
        state = base_dir / state
    if state_dir is not None:
        state = state_dir

    server = _server(root.get("server"), base_dir)
    if listen is not None:
        try:
            host, port = parse_listen(listen)
        except ValueError as exc:
            raise ConfigError("--listen", 0, "", str(exc)) from None
        server = replace(server, host=host, port=port)

    return Config(
        path=path,
        base_dir=base_dir,
        state_dir=state.absolute(),
        server=server,
        auth=_auth(root.get("auth"), base_dir),
        storage=_storage(root.get("storage")),
        alerts=_alerts(root.get("alerts")),
        logging=_logging(root.get("logging")),
    )


def display_name(path: Path) -> str:
    """As the operator would type it: relative below the working directory, else absolute."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if relative.startswith("..") else relative


# A DNS name (RFC 1123 labels), such as localhost or responder.internal.
_HOST_NAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); raises ValueError."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"expected host:port, got {text!r}")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port must be 1-65535, got {port}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            message = f"expected host:port with an IPv6 address in brackets, got {text!r}"
            raise ValueError(message) from None
    elif any(c in host for c in "[]:"):
        raise ValueError(f"expected host:port (IPv6 in brackets: [::1]:9095), got {text!r}")
    elif all(part.isdigit() for part in host.split(".")):
        # Digits and dots are an IPv4 address or nothing (999.1.1.1 is no host name).
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(
                f"expected host:port with a valid IPv4 address, got {text!r}"
            ) from None
    elif not _HOST_NAME.fullmatch(host):
        raise ValueError(f"expected host:port with a host name or address, got {text!r}")
    return host, port


def _path(node: Node, base_dir: Path) -> Path:
    value = Path(node.as_str())
    return value if value.is_absolute() else base_dir / value


def _server(node: Node | None, base_dir: Path) -> ServerConfig:
    if node is None:
        return ServerConfig()
    node.keys_allowed(
        "listen", "tls", "max_body_bytes", "public_url", "shutdown_timeout", "access_log"
    )
    cfg = ServerConfig()
    if (listen := node.get("listen")) is not None:
        try:
            host, port = parse_listen(listen.as_str())
        except ValueError as exc:
            raise listen.error(str(exc)) from None
        cfg = replace(cfg, host=host, port=port)
    if (tls := node.get("tls")) is not None:
        tls.keys_allowed("cert_file", "key_file")
        cert, key = _path(tls["cert_file"], base_dir), _path(tls["key_file"], base_dir)
        for name, file in (("cert_file", cert), ("key_file", key)):
            if not file.is_file():
                raise tls[name].error(f"no such file: {file}")
        try:  # as serve will: `responder check` must catch what would stop the start
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as exc:
            raise tls.error(f"cannot load the certificate and key: {exc}") from None
        cfg = replace(cfg, tls=TlsConfig(cert, key))
    if (size := node.get("max_body_bytes")) is not None:
        cfg = replace(cfg, max_body_bytes=size.as_int(minimum=1024))
    if (url := node.get("public_url")) is not None:
        text = url.as_str().rstrip("/")
        if not text.startswith(("http://", "https://")):
            raise url.error("expected an http:// or https:// URL")
        cfg = replace(cfg, public_url=text)
    if (timeout := node.get("shutdown_timeout")) is not None:
        cfg = replace(cfg, shutdown_timeout=timeout.as_duration().total_seconds())
    if (access := node.get("access_log")) is not None:
        cfg = replace(cfg, access_log=access.as_bool())
    return cfg


def _auth(node: Node | None, base_dir: Path) -> AuthConfig:
    if node is None:
        return AuthConfig()
    node.keys_allowed("bearer_token_file", "bearer_token_env", "basic_auth", "bearer_token")
    token = read_secret(node, "bearer_token", base_dir)
    if token is not None and not all(0x21 <= ord(c) <= 0x7E for c in token.value):
        # No client could send it: a header value is one line of visible ASCII.
        where = node.get("bearer_token_file") or node["bearer_token_env"]
        raise where.error(
            "a bearer token must be one line of visible ASCII, without spaces (a second line?)"
        )
    username: str | None = None
    password: Secret | None = None
    if (basic := node.get("basic_auth")) is not None:
        basic.keys_allowed("username", "password_file", "password_env", "password")
        username = basic["username"].as_str()
        if not username or ":" in username:
            raise basic["username"].error("a user name must be non-empty and without ':'")
        password = read_secret(basic, "password", base_dir, required=True)
    return AuthConfig(bearer_token=token, basic_username=username, basic_password=password)


def _storage(node: Node | None) -> StorageConfig:
    if node is None:
        return StorageConfig()
    node.keys_allowed("url", "synchronous", "retention")
    cfg = StorageConfig()
    if (url := node.get("url")) is not None:
        text = url.as_str()
        absolute = text.startswith("sqlite:///") and len(text) > len("sqlite:///")
        relative = text.startswith("sqlite:") and not text.startswith("sqlite:/")
        if not (absolute or (relative and len(text) > len("sqlite:"))):
            raise url.error("expected a sqlite: URL (sqlite:///absolute/path or sqlite:name.db)")
        cfg = replace(cfg, url=text)
    if (sync := node.get("synchronous")) is not None:
        cfg = replace(cfg, synchronous=sync.as_choice("full", "normal").upper())
    if (retention := node.get("retention")) is not None:
        cfg = replace(cfg, retention=retention.as_retention())
    return cfg


def _alerts(node: Node | None) -> AlertsConfig:
    if node is None:
        return AlertsConfig()
    node.keys_allowed("stale_after", "stale_check_every")
    cfg = AlertsConfig()
    if (stale := node.get("stale_after")) is not None:
        value = stale.as_duration()
        if value < timedelta(minutes=5):
            raise stale.error("must be at least 5m (several of Alertmanager's repeat intervals)")
        cfg = replace(cfg, stale_after=value)
    if (every := node.get("stale_check_every")) is not None:
        value = every.as_duration()
        if value <= timedelta(0):
            raise every.error("must be positive")
        cfg = replace(cfg, stale_check_every=value)
    return cfg


def _logging(node: Node | None) -> LoggingConfig:
    if node is None:
        return LoggingConfig()
    node.keys_allowed("level", "format")
    cfg = LoggingConfig()
    if (level := node.get("level")) is not None:
        cfg = replace(cfg, level=level.as_choice("debug", "info", "warning", "error"))
    if (fmt := node.get("format")) is not None:
        cfg = replace(cfg, format=fmt.as_choice("text", "json"))
    return cfg

"""The ``channels:`` section of the config: provider settings, parsed strictly, and the notifiers
built from them.

``parse_channels`` turns the mapping into an immutable ``ChannelSettings`` (every error names
file, line and key; secrets come from ``*_file`` / ``*_env`` only) and ``build_notifiers``
makes one adapter per channel name: ``sms`` and ``voice`` from ``twilio:``, ``email`` from
``smtp:``, ``webhook`` from ``webhook:``. A provider section that is absent builds no channel.
Example::

    channels:
      twilio:
        account_sid: AC0123456789abcdef0123456789abcdef
        auth_token_file: /etc/responder/twilio_token
        from: "+15005550006"          # voice needs a phone number here
        messaging_service_sid: MG0123456789abcdef0123456789abcdef   # optional, used for SMS
        api_base_url: https://api.twilio.com   # optional (tests, proxies)
        timeout: 10s
        max_segments: 4
      smtp:
        host: smtp.example.com
        port: 587                     # default by mode: 587, 465, 25
        mode: starttls                # starttls | tls | none
        ca_file: /etc/responder/smtp-ca.pem
        verify: true
        username: responder
        password_file: /etc/responder/smtp_password
        from: "Responder <responder@example.com>"
        timeout: 30s
      webhook:
        timeout: 10s
        secret_env: RESPONDER_WEBHOOK_SECRET
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import parseaddr
from pathlib import Path

from notifiers.base import Notifier
from notifiers.smtp import SmtpMode, SmtpNotifier, SmtpSettings
from notifiers.twilio import E164, TwilioNotifier, TwilioSettings
from notifiers.webhook import WebhookNotifier, WebhookSettings
from responder.secrets import read_secret
from responder.yamlfile import Node

# Each checks a whole value (fullmatch: with match, "$" lets a trailing newline through).
_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
_SERVICE_SID = re.compile(r"MG[0-9a-fA-F]{32}")
# Alphanumeric sender IDs: up to 11 letters, digits and spaces, at least one letter.
_ALPHA_SENDER = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}")
_HOST = re.compile(r"[A-Za-z0-9.\-:\[\]]+")
_HTTP_URL = re.compile(r"https?://[^/\s]+(/\S*)?")


@dataclass(frozen=True, slots=True)
class ChannelSettings:
    """Provider settings from ``channels:``; None where a provider is not configured."""

    twilio: TwilioSettings | None = None
    smtp: SmtpSettings | None = None
    webhook: WebhookSettings | None = None


def _seconds(node: Node | None, default: float, maximum: float = 600.0) -> float:
    if node is None:
        return default
    seconds = node.as_duration().total_seconds()
    if seconds <= 0:
        raise node.error("must be more than 0s")
    if seconds > maximum:
        raise node.error(f"must be at most {maximum:g}s")
    return seconds


def _url(node: Node) -> str:
    value = node.as_str().rstrip("/")
    if not _HTTP_URL.fullmatch(value):
        raise node.error(f"expected an http:// or https:// URL, got {value!r}")
    return value


def _parse_twilio(node: Node, base_dir: Path) -> TwilioSettings:
    node.keys_allowed(
        "account_sid",
        # A literal secret key is let through here so read_secret can say why it is refused.
        "auth_token",
        "auth_token_file",
        "auth_token_env",
        "from",
        "messaging_service_sid",
        "api_base_url",
        "timeout",
        "max_segments",
    )
    sid_node = node["account_sid"]
    account_sid = sid_node.as_str()
    if not _ACCOUNT_SID.fullmatch(account_sid):
        # The value is not echoed: it identifies the account.
        raise sid_node.error("expected AC followed by 32 hexadecimal digits")
    auth_token = read_secret(node, "auth_token", base_dir, required=True)
    assert auth_token is not None  # required=True raises instead of returning None
    from_number: str | None = None
    if (from_node := node.get("from")) is not None:
        from_number = from_node.as_phone_number()
        if not (E164.fullmatch(from_number) or _ALPHA_SENDER.fullmatch(from_number)):
            raise from_node.error(
                f"expected an E.164 number such as +15005550006 or an alphanumeric sender ID,"
                f" got {from_number!r}"
            )
    service_sid: str | None = None
    if (service_node := node.get("messaging_service_sid")) is not None:
        service_sid = service_node.as_str()
        if not _SERVICE_SID.fullmatch(service_sid):
            raise service_node.error("expected MG followed by 32 hexadecimal digits")
    if from_number is None and service_sid is None:
        raise node.error("give from, messaging_service_sid, or both")
    api_node = node.get("api_base_url")
    max_node = node.get("max_segments")
    return TwilioSettings(
        account_sid=account_sid,
        auth_token=auth_token,
        from_number=from_number,
        messaging_service_sid=service_sid,
        api_base_url=_url(api_node) if api_node is not None else None,
        timeout=_seconds(node.get("timeout"), 10.0),
        max_segments=max_node.as_int(minimum=1, maximum=10) if max_node is not None else 10,
    )


def _parse_smtp(node: Node, base_dir: Path) -> SmtpSettings:
    node.keys_allowed(
        "host",
        "port",
        "mode",
        "ca_file",
        "verify",
        "username",
        "password",
        "password_file",
        "password_env",
        "from",
        "timeout",
    )
    host_node = node["host"]
    host = host_node.as_str()
    if not host or not _HOST.fullmatch(host):
        raise host_node.error(f"expected a host name or address, got {host!r}")
    mode_node = node.get("mode")
    mode = SmtpMode(mode_node.as_choice(*SmtpMode)) if mode_node is not None else SmtpMode.STARTTLS
    port_node = node.get("port")
    port = port_node.as_int(minimum=1, maximum=65535) if port_node is not None else None
    ca_file: Path | None = None
    if (ca_node := node.get("ca_file")) is not None:
        if mode is SmtpMode.NONE:
            raise ca_node.error("has no effect with mode none")
        ca_file = Path(ca_node.as_str())
        if not ca_file.is_absolute():
            ca_file = base_dir / ca_file
        if not ca_file.is_file():
            raise ca_node.error(f"no such file: {ca_file}")
    verify_node = node.get("verify")
    verify = verify_node.as_bool() if verify_node is not None else True
    if verify_node is not None and mode is SmtpMode.NONE:
        raise verify_node.error("has no effect with mode none")
    username_node = node.get("username")
    username = username_node.as_str() if username_node is not None else None
    password = read_secret(node, "password", base_dir, required=username is not None)
    if password is not None and username is None:
        raise node.error("a password needs a username")
    from_node = node["from"]
    from_addr = from_node.as_str()
    address = parseaddr(from_addr)[1]
    if "@" not in address or any(c in from_addr for c in "\r\n"):
        raise from_node.error(f"expected an email address, got {from_addr!r}")
    return SmtpSettings(
        host=host,
        from_addr=from_addr,
        mode=mode,
        port=port,
        ca_file=ca_file,
        verify=verify,
        username=username,
        password=password,
        timeout=_seconds(node.get("timeout"), 30.0),
    )


def _parse_webhook(node: Node, base_dir: Path) -> WebhookSettings:
    node.keys_allowed("timeout", "secret", "secret_file", "secret_env")
    return WebhookSettings(
        timeout=_seconds(node.get("timeout"), 10.0),
        secret=read_secret(node, "secret", base_dir),
    )


def parse_channels(node: Node | None, base_dir: Path) -> ChannelSettings:
    """Read ``channels:``; relative secret and CA paths resolve against ``base_dir``."""
    if node is None or node.is_null():
        return ChannelSettings()
    node.keys_allowed("twilio", "smtp", "webhook")
    twilio_node = node.get("twilio")
    smtp_node = node.get("smtp")
    webhook_node = node.get("webhook")
    return ChannelSettings(
        twilio=_parse_twilio(twilio_node, base_dir) if twilio_node is not None else None,
        smtp=_parse_smtp(smtp_node, base_dir) if smtp_node is not None else None,
        # ``webhook:`` with no value turns the channel on with its defaults.
        webhook=_parse_webhook(webhook_node, base_dir) if webhook_node is not None else None,
    )


def build_notifiers(settings: ChannelSettings, public_url: str | None) -> dict[str, Notifier]:
    """One notifier per channel name. ``public_url`` (the daemon's external base URL) enables
    Twilio status callbacks and voice keypresses; without it calls are only spoken.

    Nothing here opens a connection: clients are created on first send, inside the loop.
    """
    notifiers: dict[str, Notifier] = {}
    if settings.twilio is not None:
        notifiers["sms"] = TwilioNotifier("sms", settings.twilio, public_url)
        # A call needs a real number to call from; an alphanumeric sender or a messaging
        # service alone can only send SMS.
        if settings.twilio.from_number and E164.fullmatch(settings.twilio.from_number):
            notifiers["voice"] = TwilioNotifier("voice", settings.twilio, public_url)
    if settings.smtp is not None:
        notifiers["email"] = SmtpNotifier(settings.smtp)
    if settings.webhook is not None:
        notifiers["webhook"] = WebhookNotifier(settings.webhook)
    return notifiers

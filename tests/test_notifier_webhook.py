"""Outgoing webhook pages: signed JSON to a real aiohttp receiver on loopback."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

import aiohttp
import pytest
from aiohttp import web

from notifiers.base import DeliveryError, Message
from notifiers.config import ChannelSettings, build_notifiers, parse_channels
from notifiers.webhook import (
    SIGNATURE_HEADER,
    WebhookNotifier,
    WebhookSettings,
    sign,
    verify_signature,
)
from responder.clock import FakeClock
from responder.secrets import Secret
from responder.yamlfile import ConfigError, Node, load_text

SECRET = "whsec-0123456789abcdef-not-in-errors"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@dataclass
class Receiver:
    """A webhook endpoint whose answers the test chooses."""

    url: str = ""
    answers: list[int] = field(default_factory=list)  # statuses to answer, then 200
    delay: float = 0.0
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append((dict(request.headers), body))
        if self.delay:
            await asyncio.sleep(self.delay)
        status = self.answers.pop(0) if self.answers else 200
        if 300 <= status < 400:
            return web.Response(status=status, headers={"Location": "/elsewhere"})
        return web.Response(status=status, text=f"answer {status}")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/{token}", state.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    # The path holds a token, like chat webhooks do: it must not appear in errors.
    state.url = f"http://{host}:{port}/hooks/T0K3N-in-url"
    yield state
    await runner.cleanup()


@pytest.fixture
async def notifier() -> AsyncIterator[WebhookNotifier]:
    settings = WebhookSettings(timeout=2.0, secret=Secret(SECRET, "env HOOK_SECRET"))
    hook = WebhookNotifier(settings, clock=FakeClock(NOW))
    yield hook
    await hook.close()


def page(url: str) -> Message:
    return Message(
        channel="webhook",
        to=url,
        text="P1 DiskFull on db1",
        subject="[P1] DiskFull",
        thread_id="incident-42",
        idempotency_key="incident-42/0/ops-hook/webhook",
        data=MappingProxyType({"severity": "P1", "labels": {"instance": "db1"}, "at": NOW}),
    )


async def test_signed_json_is_delivered(receiver: Receiver, notifier: WebhookNotifier) -> None:
    """The receiver gets the page as JSON and can verify the signature over the raw body."""
    receipt = await notifier.send(page(receiver.url))
    assert receipt.status == "delivered"
    [(headers, body)] = receiver.received
    assert headers["Content-Type"] == "application/json"
    assert headers["Idempotency-Key"] == "incident-42/0/ops-hook/webhook"
    document = json.loads(body)
    assert document == {
        "text": "P1 DiskFull on db1",
        "subject": "[P1] DiskFull",
        "thread_id": "incident-42",
        "idempotency_key": "incident-42/0/ops-hook/webhook",
        "data": {"severity": "P1", "labels": {"instance": "db1"}, "at": str(NOW)},
    }
    header = headers[SIGNATURE_HEADER]
    assert header.startswith(f"t={int(NOW.timestamp())},v1=")
    assert verify_signature(SECRET, header, body, now=NOW.timestamp() + 10)
    assert not verify_signature(SECRET, header, body + b" ", now=NOW.timestamp())
    assert not verify_signature("other", header, body, now=NOW.timestamp())
    assert not verify_signature(SECRET, header, body, now=NOW.timestamp() + 3600)
    # A receiver's helper says no to a malformed header; it does not raise.
    for odd in ("t=\u00b2,v1=ab", "t=" + "9" * 5000 + ",v1=ab", "v1=ab", ""):
        assert not verify_signature(SECRET, odd, body, now=NOW.timestamp())


def test_signature_allows_key_rotation() -> None:
    """A header with two v1 values verifies if either matches (old and new secret)."""
    body = b'{"text":"x"}'
    old = sign("old-secret", 1000, body)
    new = sign("new-secret", 1000, body).rpartition(",")[2]
    assert verify_signature("new-secret", f"{old},{new}", body, now=1000)
    assert verify_signature("old-secret", f"{old},{new}", body, now=1000)


async def test_unsigned_when_no_secret(receiver: Receiver) -> None:
    """Without a secret no signature header is sent."""
    hook = WebhookNotifier(WebhookSettings(timeout=2.0))
    try:
        await hook.send(page(receiver.url))
    finally:
        await hook.close()
    assert SIGNATURE_HEADER not in receiver.received[0][0]


@pytest.mark.parametrize(
    ("status", "reason", "retryable"),
    [
        (500, "server_error", True),
        (503, "server_error", True),
        (429, "rate_limited", True),
        (400, "rejected", False),
        (404, "rejected", False),
        (302, "redirect", False),
    ],
)
async def test_answers_map_to_retryable_or_permanent(
    receiver: Receiver, notifier: WebhookNotifier, status: int, reason: str, retryable: bool
) -> None:
    """5xx and 429 can be retried; other 4xx and redirects cannot. No secret in the error."""
    receiver.answers.append(status)
    with pytest.raises(DeliveryError) as caught:
        await notifier.send(page(receiver.url))
    assert (caught.value.reason, caught.value.retryable) == (reason, retryable)
    assert f"HTTP {status}" in str(caught.value)
    for text in (str(caught.value), repr(caught.value), repr(notifier)):
        assert SECRET not in text
        assert "T0K3N" not in text
    assert len(receiver.received) == 1  # the redirect was not followed


async def test_slow_receiver_times_out(receiver: Receiver) -> None:
    """A receiver slower than the timeout gives a retryable timeout."""
    receiver.delay = 1.0
    hook = WebhookNotifier(WebhookSettings(timeout=0.2))
    try:
        with pytest.raises(DeliveryError) as caught:
            await hook.send(page(receiver.url))
    finally:
        await hook.close()
    assert (caught.value.reason, caught.value.retryable) == ("timeout", True)


async def test_refused_connection_is_retryable(notifier: WebhookNotifier) -> None:
    """Nothing listening on the port: retry later."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DeliveryError) as caught:
        await notifier.send(page(f"http://127.0.0.1:{port}/hooks/T0K3N"))
    assert (caught.value.reason, caught.value.retryable) == ("connection", True)
    assert "T0K3N" not in str(caught.value)


async def test_not_a_url_is_permanent(notifier: WebhookNotifier) -> None:
    """A contact whose webhook address is not http(s) cannot be paged this way."""
    with pytest.raises(DeliveryError) as caught:
        await notifier.send(page("ftp://example.invalid/x"))
    assert (caught.value.reason, caught.value.retryable) == ("bad_address", False)


async def test_shared_session_is_not_closed(receiver: Receiver) -> None:
    """A session passed in belongs to the caller and survives the notifier's close()."""
    async with aiohttp.ClientSession() as session:
        hook = WebhookNotifier(WebhookSettings(timeout=2.0), session)
        await hook.send(page(receiver.url))
        await hook.close()
        assert not session.closed


# -- config ------------------------------------------------------------------------------------


def channels(text: str) -> Node:
    return load_text(text, "config.yaml")["channels"]


async def test_config_webhook_signs_with_the_secret_file(
    receiver: Receiver, tmp_path: Path
) -> None:
    """``channels.webhook`` with a secret file builds a notifier whose pages verify."""
    (tmp_path / "hook.secret").write_text(SECRET + "\n")
    node = channels("channels:\n  webhook:\n    timeout: 3s\n    secret_file: hook.secret\n")
    settings = parse_channels(node, tmp_path)
    assert settings.webhook is not None
    assert settings.webhook.timeout == 3.0
    assert SECRET not in repr(settings)
    notifiers = build_notifiers(settings, None)
    assert sorted(notifiers) == ["webhook"]
    try:
        await notifiers["webhook"].send(page(receiver.url))
    finally:
        await notifiers["webhook"].close()
    headers, body = receiver.received[0]
    assert verify_signature(SECRET, headers[SIGNATURE_HEADER], body, now=time.time())


def test_config_empty_webhook_key_enables_the_channel(tmp_path: Path) -> None:
    """``webhook:`` with no value turns the channel on, unsigned, with a 10 s timeout."""
    settings = parse_channels(channels("channels:\n  webhook:\n"), tmp_path)
    assert settings.webhook == WebhookSettings(timeout=10.0, secret=None)


def test_config_without_channels_builds_nothing(tmp_path: Path) -> None:
    """No ``channels:`` section, or an empty one, configures no provider."""
    assert build_notifiers(parse_channels(None, tmp_path), None) == {}
    assert parse_channels(channels("channels:\n"), tmp_path) == ChannelSettings()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("channels:\n  pager:\n    x: 1\n", "config.yaml:2: channels.pager: unknown key"),
        ("channels:\n  webhook:\n    timeout: 20m\n", "config.yaml:3: channels.webhook.timeout:"),
        (
            "channels:\n  webhook:\n    secret_env: RESPONDER_TEST_UNSET_VARIABLE\n",
            "config.yaml:3: channels.webhook.secret_env: environment variable",
        ),
        ("channels:\n  - webhook\n", "config.yaml:1: channels: expected a mapping"),
    ],
)
def test_config_errors_name_file_line_and_key(text: str, message: str, tmp_path: Path) -> None:
    """Mistakes in ``channels`` name file, line and key."""
    with pytest.raises(ConfigError) as caught:
        parse_channels(channels(text), tmp_path)
    assert str(caught.value).startswith(message)

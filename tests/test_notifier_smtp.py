"""Email pages over SMTP: aiosmtplib against a real aiosmtpd server on loopback."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import aiosmtpd.smtp
import pytest

import notifiers.base
from notifiers.base import DeliveryError, Message
from notifiers.config import build_notifiers, parse_channels
from notifiers.smtp import SmtpMode, SmtpNotifier, SmtpSettings, thread_root_id
from responder.clock import FakeClock
from responder.secrets import Secret
from responder.testing import smtp_server
from responder.testing.smtp_server import SmtpTestServer, TlsMode, self_signed_cert
from responder.yamlfile import ConfigError, Node, load_text

FROM = "Responder <responder@ops.example>"
TO = "alice@example.com"
PASSWORD = "s3cret-Pa55word-xyz"


@pytest.fixture(scope="module")
def cert_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture
async def plain() -> AsyncIterator[SmtpTestServer]:
    async with SmtpTestServer(reject_recipients=["nobody@example.com"]) as server:
        yield server


def settings_for(server: SmtpTestServer, **overrides: object) -> SmtpSettings:
    values: dict[str, object] = {
        "host": server.host,
        "port": server.port,
        "from_addr": FROM,
        "mode": SmtpMode.NONE,
        "timeout": 3.0,
    }
    values |= overrides
    return SmtpSettings(**values)  # type: ignore[arg-type]


def page(**overrides: object) -> Message:
    values: dict[str, object] = {
        "channel": "email",
        "to": TO,
        "subject": "[P1] DiskFull on db1",
        "text": "Disk 97% full on db1.\nAck: https://responder.example/ack/abc",
        "html": "<p>Disk <b>97%</b> full on db1.</p>",
        "thread_id": "incident-42",
        "idempotency_key": "incident-42/0/alice/email",
    }
    values |= overrides
    return Message(**values)  # type: ignore[arg-type]


async def test_plain_relay_gets_both_parts_and_headers(plain: SmtpTestServer) -> None:
    """A page arrives as multipart/alternative with Date, Message-ID and the envelope we chose."""
    clock = FakeClock(datetime(2026, 3, 1, 12, 30, tzinfo=UTC))
    notifier = SmtpNotifier(settings_for(plain), clock=clock)
    receipt = await notifier.send(page())
    [got] = plain.messages
    assert got.mail_from == "responder@ops.example"
    assert got.rcpt_tos == [TO]
    assert not got.tls
    mail = got.message
    assert mail.get_content_type() == "multipart/alternative"
    assert mail["Message-ID"] == receipt.provider_id
    assert parsedate_to_datetime(str(mail["Date"])) == clock.now()
    assert mail["Subject"] == "[P1] DiskFull on db1"
    assert mail["Auto-Submitted"] == "auto-generated"
    text = mail.get_body(("plain",))
    html = mail.get_body(("html",))
    assert text is not None
    assert html is not None
    assert "Ack: https://responder.example/ack/abc" in text.get_content()
    assert "<b>97%</b>" in html.get_content()


async def test_text_only_page_is_a_single_part(plain: SmtpTestServer) -> None:
    """Without HTML the message is plain text, not a one-part alternative."""
    await SmtpNotifier(settings_for(plain)).send(page(html=None))
    assert plain.messages[0].message.get_content_type() == "text/plain"


async def test_messages_of_one_incident_thread_together(plain: SmtpTestServer) -> None:
    """The first notice is the thread root; updates reply to it; retries keep their id."""
    notifier = SmtpNotifier(settings_for(plain))
    first = await notifier.send(page(thread_start=True))
    update = await notifier.send(page(idempotency_key="incident-42/1/alice/email"))
    retry = await notifier.send(page(idempotency_key="incident-42/1/alice/email"))
    other = await notifier.send(page(thread_id="incident-43", thread_start=True))
    root = thread_root_id("incident-42", "ops.example", to=TO)
    m1, m2, m3, m4 = (m.message for m in plain.messages)
    assert m1["Message-ID"] == root == first.provider_id
    assert m1["In-Reply-To"] is None
    assert m2["In-Reply-To"] == root
    assert m2["References"] == root
    assert m2["Message-ID"] != root
    assert m3["Message-ID"] == m2["Message-ID"] == update.provider_id == retry.provider_id
    assert m4["Message-ID"] == other.provider_id != root


async def test_each_recipient_of_a_first_notice_has_a_message_id_of_its_own(
    plain: SmtpTestServer,
) -> None:
    """Alice and bob, both paged at level 1, each get the incident's first notice: two
    messages, two Message-IDs (a list or an alias that delivers both to one mailbox would
    drop the second as a duplicate; the soak test saw one id on two routes), and bob's later
    messages reply to the root bob got."""
    notifier = SmtpNotifier(settings_for(plain))
    await notifier.send(page(to="alice@example.com", thread_start=True))
    await notifier.send(page(to="bob@example.com", thread_start=True))
    await notifier.send(page(to="bob@example.com", idempotency_key="page-9"))
    alice_root, bob_root, bob_update = (m.message for m in plain.messages)
    assert alice_root["Message-ID"] != bob_root["Message-ID"]
    assert bob_update["In-Reply-To"] == bob_update["References"] == bob_root["Message-ID"]
    assert bob_root["Message-ID"] == thread_root_id(
        "incident-42", "ops.example", to="bob@example.com"
    )


async def test_two_installs_never_share_a_message_id(plain: SmtpTestServer) -> None:
    """Staging and production paging the same person each have an incident 42 and a page
    with the same key: their Message-IDs differ (their origins do), or the mailbox would
    drop the second as a duplicate (review of stop 14)."""
    notifier = SmtpNotifier(settings_for(plain))
    for origin in ("staging", "production"):
        await notifier.send(page(thread_start=True, origin=origin))
        await notifier.send(page(idempotency_key="page-7", origin=origin))
    staging_root, staging_page, production_root, production_page = (
        m.message for m in plain.messages
    )
    assert staging_root["Message-ID"] != production_root["Message-ID"]
    assert staging_page["Message-ID"] != production_page["Message-ID"]
    assert staging_page["In-Reply-To"] == staging_root["Message-ID"]
    assert production_page["In-Reply-To"] == production_root["Message-ID"]


async def test_label_text_cannot_inject_headers(plain: SmtpTestServer) -> None:
    """A subject rendered from labels with a line break stays one header line; an address
    with a line break is refused permanently instead of crashing the sender."""
    notifier = SmtpNotifier(settings_for(plain))
    await notifier.send(page(subject="DiskFull\r\nBcc: mallory@example.com"))
    mail = plain.messages[0].message
    assert mail["Subject"] == "DiskFull Bcc: mallory@example.com"
    assert mail["Bcc"] is None
    with pytest.raises(DeliveryError) as caught:
        await notifier.send(page(to="alice@example.com\r\nBcc: mallory@example.com"))
    assert (caught.value.reason, caught.value.retryable) == ("bad_address", False)
    assert len(plain.messages) == 1


async def test_rejected_recipient_is_permanent(plain: SmtpTestServer) -> None:
    """A 550 for the mailbox will not change on retry."""
    with pytest.raises(DeliveryError) as caught:
        await SmtpNotifier(settings_for(plain)).send(page(to="nobody@example.com"))
    assert (caught.value.reason, caught.value.retryable) == ("rejected_recipient", False)
    assert "550" in str(caught.value)


async def test_temporary_failure_then_success(plain: SmtpTestServer) -> None:
    """A 451 is retryable, and the retry is delivered."""
    plain.defer_next(1)
    notifier = SmtpNotifier(settings_for(plain))
    with pytest.raises(DeliveryError) as caught:
        await notifier.send(page())
    assert (caught.value.reason, caught.value.retryable) == ("deferred", True)
    assert not caught.value.maybe_sent  # the server said no: sending again is safe
    assert "451" in str(caught.value)
    await notifier.send(page())
    assert len(plain.messages) == 1


async def test_no_answer_after_the_message_went_out_may_have_delivered_it(
    plain: SmtpTestServer,
) -> None:
    """The server took the message but its 250 came after our timeout: the page may be in
    the mailbox, so the error says so (the outbox re-routes instead of sending it twice)."""
    plain.answer_delay = 1.0
    with pytest.raises(DeliveryError) as caught:
        await SmtpNotifier(settings_for(plain, timeout=0.3)).send(page())
    assert (caught.value.reason, caught.value.maybe_sent) == ("timeout", True)
    assert "may have been delivered" in str(caught.value)
    assert len(plain.messages) == 1  # it was indeed taken


async def test_a_timeout_before_the_message_went_out_is_a_plain_retry() -> None:
    """A server that never greets never got the message: retry it, it cannot double."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        settings = SmtpSettings(
            host="127.0.0.1",
            port=listener.getsockname()[1],
            from_addr=FROM,
            mode=SmtpMode.NONE,
            timeout=0.3,
        )
        with pytest.raises(DeliveryError) as caught:
            await SmtpNotifier(settings).send(page())
    assert (caught.value.reason, caught.value.maybe_sent) == ("timeout", False)


async def test_refused_connection_is_retryable() -> None:
    """Nobody listening: try again later."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = SmtpSettings(host="127.0.0.1", port=port, from_addr=FROM, mode=SmtpMode.NONE)
    with pytest.raises(DeliveryError) as caught:
        await SmtpNotifier(settings).send(page())
    assert (caught.value.reason, caught.value.retryable) == ("connection", True)


async def test_silent_server_times_out_within_the_bound() -> None:
    """A server that accepts but never greets is cut off by our timeout, retryably."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        settings = SmtpSettings(
            host="127.0.0.1", port=port, from_addr=FROM, mode=SmtpMode.NONE, timeout=0.3
        )
        with pytest.raises(DeliveryError) as caught:
            await SmtpNotifier(settings).send(page())
    assert (caught.value.reason, caught.value.retryable) == ("timeout", True)


async def test_starttls_with_ca_bundle(cert_pair: tuple[Path, Path]) -> None:
    """STARTTLS is used and the self-signed certificate verifies against the given CA file."""
    cert, key = cert_pair
    async with SmtpTestServer(mode=TlsMode.STARTTLS, cert=cert, key=key) as server:
        settings = settings_for(server, mode=SmtpMode.STARTTLS, ca_file=cert)
        await SmtpNotifier(settings).send(page())
        assert server.messages[0].tls


async def test_starttls_without_the_ca_takes_the_channel_down(
    cert_pair: tuple[Path, Path],
) -> None:
    """An unknown certificate is a configuration problem, "tls": no page on this channel
    goes until it is fixed (channel down: failed over at once, retried meanwhile)."""
    cert, key = cert_pair
    async with SmtpTestServer(mode=TlsMode.STARTTLS, cert=cert, key=key) as server:
        with pytest.raises(DeliveryError) as caught:
            await SmtpNotifier(settings_for(server, mode=SmtpMode.STARTTLS)).send(page())
        assert (caught.value.reason, caught.value.channel_down) == ("tls", True)
        assert server.messages == []


async def test_starttls_without_verification(cert_pair: tuple[Path, Path]) -> None:
    """verify=False accepts any certificate (still encrypted)."""
    cert, key = cert_pair
    async with SmtpTestServer(mode=TlsMode.STARTTLS, cert=cert, key=key) as server:
        await SmtpNotifier(settings_for(server, mode=SmtpMode.STARTTLS, verify=False)).send(page())
        assert server.messages[0].tls


async def test_starttls_required_but_not_offered(plain: SmtpTestServer) -> None:
    """Mode starttls never falls back to plain text. No page gets through such a server
    (a relay reconfigured, STARTTLS stripped on the way): the channel is down, so the page
    stays queued and goes once it is fixed, instead of failing for good."""
    with pytest.raises(DeliveryError) as caught:
        await SmtpNotifier(settings_for(plain, mode=SmtpMode.STARTTLS)).send(page())
    error = caught.value
    assert (error.reason, error.retryable, error.channel_down) == ("unsupported", True, True)
    assert not error.maybe_sent
    assert plain.messages == []


async def test_a_server_refusing_the_connection_at_its_greeting_takes_the_channel_down() -> None:
    """554 instead of 220 (our address on a blocklist, a relay that will not serve us):
    every page fails alike, none through its own fault, so none is failed for good."""

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"554 5.7.1 No SMTP service for you\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        settings = SmtpSettings(host="127.0.0.1", port=port, from_addr=FROM, mode=SmtpMode.NONE)
        with pytest.raises(DeliveryError) as caught:
            await SmtpNotifier(settings).send(page())
    finally:
        server.close()
        await server.wait_closed()
    error = caught.value
    assert (error.retryable, error.channel_down, error.maybe_sent) == (True, True, False)
    assert "554" in str(error)


async def test_implicit_tls(cert_pair: tuple[Path, Path]) -> None:
    """Mode tls speaks TLS from the first byte."""
    cert, key = cert_pair
    async with SmtpTestServer(mode=TlsMode.TLS, cert=cert, key=key) as server:
        await SmtpNotifier(settings_for(server, mode=SmtpMode.TLS, ca_file=cert)).send(page())
        assert server.messages[0].tls


async def test_auth_ok() -> None:
    """With the right password the server takes the page as the configured user."""
    async with SmtpTestServer(auth=("responder", PASSWORD)) as server:
        settings = settings_for(
            server, username="responder", password=Secret(PASSWORD, "file /run/pw")
        )
        await SmtpNotifier(settings).send(page())
        assert server.messages[0].login == "responder"


async def test_auth_wrong_password_takes_the_channel_down_and_is_secret_free() -> None:
    """535, reason "auth": the channel is down until the password is fixed; the password
    appears in no error or repr."""
    async with SmtpTestServer(auth=("responder", PASSWORD)) as server:
        wrong = Secret("Wr0ng-" + PASSWORD, "file /run/pw")
        settings = settings_for(server, username="responder", password=wrong)
        notifier = SmtpNotifier(settings)
        with pytest.raises(DeliveryError) as caught:
            await notifier.send(page())
        assert (caught.value.reason, caught.value.channel_down) == ("auth", True)
        assert "535" in str(caught.value)
        for thing in (caught.value, notifier, settings, wrong):
            assert wrong.value not in str(thing)
            assert wrong.value not in repr(thing)
        # aiosmtplib tries every mechanism the server offers (PLAIN, then LOGIN).
        assert server.auth_attempts
        assert all(attempt == ("responder", False) for attempt in server.auth_attempts)


async def test_auth_required_but_not_configured() -> None:
    """A server that demands AUTH refuses an anonymous page (530): channel down."""
    async with SmtpTestServer(auth=("responder", PASSWORD)) as server:
        with pytest.raises(DeliveryError) as caught:
            await SmtpNotifier(settings_for(server)).send(page())
        assert caught.value.channel_down
        assert "530" in str(caught.value)


# -- config ------------------------------------------------------------------------------------


def channels(text: str) -> Node:
    return load_text(text, "config.yaml")["channels"]


async def test_config_builds_email_over_starttls(
    cert_pair: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``channels.smtp`` block (CA file relative to the config, password from the
    environment) builds an email notifier that delivers over verified STARTTLS with AUTH."""
    cert, key = cert_pair
    (tmp_path / "ca.pem").write_bytes(cert.read_bytes())
    monkeypatch.setenv("SMTP_PW", PASSWORD)
    async with SmtpTestServer(
        mode=TlsMode.STARTTLS, cert=cert, key=key, auth=("responder", PASSWORD)
    ) as server:
        node = channels(
            f"""
channels:
  smtp:
    host: {server.host}
    port: {server.port}
    mode: starttls
    ca_file: ca.pem
    username: responder
    password_env: SMTP_PW
    from: "{FROM}"
    timeout: 5s
"""
        )
        settings = parse_channels(node, tmp_path)
        assert settings.smtp is not None
        assert settings.smtp.ca_file == tmp_path / "ca.pem"
        assert PASSWORD not in repr(settings)
        notifiers = build_notifiers(settings, None)
        assert sorted(notifiers) == ["email"]
        await notifiers["email"].send(page())
        assert server.messages[0].tls
        assert server.messages[0].login == "responder"


def test_config_defaults(tmp_path: Path) -> None:
    """Mode defaults to starttls with port 587 and verification on."""
    node = channels("channels:\n  smtp:\n    host: mail.example.com\n    from: a@example.com\n")
    settings = parse_channels(node, tmp_path).smtp
    assert settings is not None
    assert (settings.mode, settings.effective_port, settings.verify) == (
        SmtpMode.STARTTLS,
        587,
        True,
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("    mode: ssl\n", "config.yaml:5: channels.smtp.mode: expected one of starttls, tls"),
        ("    port: 70000\n", "config.yaml:5: channels.smtp.port: must be at most 65535"),
        ("    mode: none\n    ca_file: x.pem\n", "config.yaml:6: channels.smtp.ca_file: has no"),
        ("    ca_file: missing.pem\n", "config.yaml:5: channels.smtp.ca_file: no such file"),
        ("    username: bob\n", "config.yaml:3: channels.smtp: missing secret: give password"),
        ("    password: hunter2\n", "config.yaml:5: channels.smtp.password: secrets are not"),
        ("    verify: yes please\n", "config.yaml:5: channels.smtp.verify: expected true or"),
        ("    tls: true\n", "config.yaml:5: channels.smtp.tls: unknown key"),
    ],
)
def test_config_errors_name_file_line_and_key(body: str, message: str, tmp_path: Path) -> None:
    """Each mistake in ``channels.smtp`` is reported where it was made."""
    node = channels(
        "\nchannels:\n  smtp:\n    host: mail.example.com\n" + body + "    from: a@example.com\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_channels(node, tmp_path)
    assert str(caught.value).startswith(message)
    assert "hunter2" not in str(caught.value)


def test_a_host_with_a_trailing_newline_is_a_config_error(tmp_path: Path) -> None:
    """A host quoted with a newline at its end (or written as a block scalar) is refused
    when the config is read, not first met as a failed connection when a page is due."""
    node = channels(
        '\nchannels:\n  smtp:\n    host: "mail.example.com\\n"\n    from: a@b.example\n'
    )
    with pytest.raises(ConfigError) as caught:
        parse_channels(node, tmp_path)
    assert str(caught.value).startswith(
        "config.yaml:4: channels.smtp.host: expected a host name or address"
    )


async def test_the_whole_exchange_ends_within_the_timeout(plain: SmtpTestServer) -> None:
    """The bound covers QUIT too: a stalled server costs the timeout, not twice it."""
    plain.answer_delay = 2.0
    started = time.monotonic()
    with pytest.raises(DeliveryError):
        await SmtpNotifier(settings_for(plain, timeout=0.5)).send(page())
    assert time.monotonic() - started < 0.9


async def test_the_adapter_ends_before_the_outbox_deadline(
    plain: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """smtp.timeout as long as the outbox's deadline would leave the outcome to the outbox
    (always "unknown"): the adapter's own bound ends first, and it says what happened."""
    monkeypatch.setattr(notifiers.base, "SEND_DEADLINE_S", 1.0)
    monkeypatch.setattr(notifiers.base, "SEND_MARGIN_S", 0.5)
    plain.answer_delay = 2.0
    started = time.monotonic()
    with pytest.raises(DeliveryError) as caught:
        await SmtpNotifier(settings_for(plain, timeout=30.0)).send(page())
    assert time.monotonic() - started < 0.9
    assert (caught.value.reason, caught.value.maybe_sent) == ("timeout", True)


async def test_a_drop_before_the_body_went_out_is_a_plain_retry(
    plain: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relay restarts right after answering RCPT: the body never went out, so the page
    is retried on the same address, not re-routed as "may have been delivered"."""
    answer_rcpt = smtp_server._Handler.handle_RCPT

    async def answer_then_drop(self: Any, server: Any, *args: Any) -> str:
        answer = await answer_rcpt(self, server, *args)
        asyncio.get_running_loop().call_soon(server.transport.close)
        return answer

    monkeypatch.setattr(smtp_server._Handler, "handle_RCPT", answer_then_drop)
    with pytest.raises(DeliveryError) as caught:
        await SmtpNotifier(settings_for(plain)).send(page())
    assert plain.messages == []
    assert (caught.value.retryable, caught.value.maybe_sent) == (True, False)


async def test_a_slow_answer_to_the_data_command_is_a_plain_retry(
    plain: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checks at DATA hold the 354 past our bound: nothing of the message went out."""
    start_data = aiosmtpd.smtp.SMTP.smtp_DATA

    async def slow(self: Any, arg: str) -> None:
        await asyncio.sleep(1.0)
        await start_data(self, arg)

    monkeypatch.setattr(aiosmtpd.smtp.SMTP, "smtp_DATA", slow)
    with pytest.raises(DeliveryError) as caught:
        await SmtpNotifier(settings_for(plain, timeout=0.4)).send(page())
    assert (caught.value.reason, caught.value.maybe_sent) == ("timeout", False)


async def test_a_refusal_stays_a_refusal_when_what_follows_stalls(
    plain: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """451 for the message, then aiosmtplib's RSET gets no answer in time: the page was
    refused (retry it), not "may have been delivered"."""

    async def slow_rset(self: Any, arg: str) -> None:
        await asyncio.sleep(2.0)
        await self.push("250 OK")

    monkeypatch.setattr(aiosmtpd.smtp.SMTP, "smtp_RSET", slow_rset)
    plain.defer_next(1)
    with pytest.raises(DeliveryError) as caught:
        await SmtpNotifier(settings_for(plain, timeout=0.5)).send(page())
    assert (caught.value.reason, caught.value.maybe_sent) == ("deferred", False)
    assert "451" in str(caught.value)

"""Twilio SMS and voice pages: the real twilio library against FakeTwilio on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from aiohttp import web

import notifiers.base
from notifiers.base import DeliveryError, Message
from notifiers.config import build_notifiers, parse_channels
from notifiers.twilio import (
    INBOUND_SMS_PATH,
    STATUS_CALLBACK_PATH,
    VOICE_GATHER_PATH,
    TwilioNotifier,
    TwilioSettings,
    parse_status_callback,
    sms_reply_twiml,
    validate_twilio_signature,
    voice_reply_twiml,
    voice_twiml,
)
from responder.secrets import Secret
from responder.testing.fake_twilio import FakeTwilio, Fault
from responder.yamlfile import ConfigError, Node, load_text

PRIMARY = "+15005550006"
FROM = "+15005550001"


@dataclass
class Daemon:
    """The daemon's side of Twilio's callbacks, as the lead will serve it."""

    public_url: str
    auth_token: str
    received: list[tuple[str, dict[str, str], bool]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        form = {key: str(value) for key, value in (await request.post()).items()}
        # Signatures cover the public URL Twilio called, query string included.
        url = self.public_url + request.raw_path
        valid = validate_twilio_signature(
            self.auth_token, url, form, request.headers.get("X-Twilio-Signature", "")
        )
        self.received.append((request.path, form, valid))
        if not valid:
            return web.Response(status=403, text="bad signature")
        if request.path == INBOUND_SMS_PATH:
            return web.Response(text=sms_reply_twiml("Acknowledged"), content_type="text/xml")
        if request.path == VOICE_GATHER_PATH:
            return web.Response(text=voice_reply_twiml("Acknowledged"), content_type="text/xml")
        return web.Response(status=204)


@pytest.fixture(autouse=True)
def _no_twilio_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # TWILIO_EDGE / TWILIO_REGION would rewrite the API host away from loopback.
    for name in ("TWILIO_EDGE", "TWILIO_REGION", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as server:
        yield server


@pytest.fixture
async def daemon(fake: FakeTwilio) -> AsyncIterator[Daemon]:
    app = web.Application()
    runner = web.AppRunner(app)
    holder: list[Daemon] = []

    async def handle(request: web.Request) -> web.Response:
        return await holder[0].handle(request)

    for path in (STATUS_CALLBACK_PATH, INBOUND_SMS_PATH, VOICE_GATHER_PATH):
        app.router.add_post(path, handle)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    holder.append(Daemon(f"http://{host}:{port}", fake.auth_token))
    yield holder[0]
    await runner.cleanup()


def settings_for(fake: FakeTwilio, **overrides: object) -> TwilioSettings:
    values: dict[str, object] = {
        "account_sid": fake.account_sid,
        "auth_token": Secret(fake.auth_token, "test"),
        "from_number": FROM,
        "api_base_url": fake.base_url,
        "timeout": 2.0,
    }
    values |= overrides
    return TwilioSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def sms(fake: FakeTwilio, daemon: Daemon) -> AsyncIterator[TwilioNotifier]:
    notifier = TwilioNotifier("sms", settings_for(fake), daemon.public_url)
    yield notifier
    await notifier.close()


def page(text: str = "P1 DiskFull on db1: 97% used", to: str = PRIMARY) -> Message:
    return Message(
        channel="sms", to=to, text=text, thread_id="inc-42", idempotency_key="inc-42/1/alice/sms"
    )


def assert_no_secret(fake: FakeTwilio, *things: object) -> None:
    for thing in things:
        for text in (str(thing), repr(thing)):
            assert fake.auth_token not in text
            assert fake.account_sid not in text


async def test_sms_is_sent_with_the_real_library(fake: FakeTwilio, sms: TwilioNotifier) -> None:
    """A page goes out as one SMS with our From and a status callback to the public URL."""
    receipt = await sms.send(page())
    assert receipt.provider_id.startswith("SM")
    assert receipt.status == "queued"
    [sent] = fake.sent_sms(to=PRIMARY)
    assert sent.sid == receipt.provider_id
    assert sent.body == "P1 DiskFull on db1: 97% used"
    assert sent.from_ == FROM
    assert sent.status_callback == sms.status_callback_url
    assert sent.status_callback.endswith(STATUS_CALLBACK_PATH)


async def test_sms_uses_messaging_service_when_configured(fake: FakeTwilio) -> None:
    """With a messaging service SID the SMS names the service instead of a From number."""
    service = "MG" + "a" * 32
    notifier = TwilioNotifier("sms", settings_for(fake, messaging_service_sid=service))
    try:
        await notifier.send(page())
    finally:
        await notifier.close()
    [sent] = fake.sent_sms()
    assert sent.params["MessagingServiceSid"] == service
    assert "From" not in sent.params
    assert "StatusCallback" not in sent.params  # no public URL, no callback


async def test_long_sms_is_cut_to_the_segment_budget(fake: FakeTwilio) -> None:
    """A body over ``max_segments`` is cut with an ellipsis before it reaches Twilio."""
    notifier = TwilioNotifier("sms", settings_for(fake, max_segments=1))
    try:
        await notifier.send(page("x" * 500))
    finally:
        await notifier.close()
    assert fake.sent_sms()[0].body == "x" * 157 + "..."


async def test_voice_call_carries_twiml_that_gathers_a_key(
    fake: FakeTwilio, daemon: Daemon
) -> None:
    """A voice page is a call whose TwiML speaks the text and posts one key to the daemon."""
    voice = TwilioNotifier("voice", settings_for(fake), daemon.public_url)
    try:
        receipt = await voice.send(page())
    finally:
        await voice.close()
    assert receipt.provider_id.startswith("CA")
    [call] = fake.calls(to=PRIMARY)
    assert "<Say>P1 DiskFull on db1: 97% used</Say>" in call.twiml
    assert '<Gather action="' + daemon.public_url + VOICE_GATHER_PATH in call.twiml
    assert 'numDigits="1"' in call.twiml
    assert call.all_params["StatusCallbackEvent"] == [
        "initiated",
        "ringing",
        "answered",
        "completed",
    ]
    answer = await fake.send_keypress(call.sid, "1")
    assert answer.status == 200
    assert "<Say>Acknowledged</Say>" in answer.text
    path, form, valid = daemon.received[-1]
    assert (path, form["Digits"], form["CallSid"], valid) == (
        VOICE_GATHER_PATH,
        "1",
        call.sid,
        True,
    )


def test_voice_twiml_without_public_url_only_speaks() -> None:
    """Without a public URL there is nowhere to post a key, so the call just speaks."""
    twiml = voice_twiml("Disk full", None)
    assert "<Gather" not in twiml
    assert twiml.count("<Say>Disk full</Say>") == 2


@pytest.mark.parametrize(
    ("fault", "reason"),
    [(Fault.RATE_LIMITED, "rate_limited"), (Fault.UNAVAILABLE, "server_error")],
)
async def test_throttling_and_server_errors_are_retryable(
    fake: FakeTwilio, sms: TwilioNotifier, fault: Fault, reason: str
) -> None:
    """429 and 503 say "try again later"; the next attempt goes through."""
    fake.fail_next(fault)
    with pytest.raises(DeliveryError) as caught:
        await sms.send(page())
    assert (caught.value.reason, caught.value.retryable) == (reason, True)
    assert_no_secret(fake, caught.value)
    assert (await sms.send(page())).provider_id.startswith("SM")


async def test_a_500_may_have_sent_the_message(fake: FakeTwilio, sms: TwilioNotifier) -> None:
    """Twilio's error 20500: a create that failed with a 500 may still have gone out, so a
    resend could page twice (re-routed instead, as after a timeout)."""
    fake.fail_next(Fault.SERVER_ERROR)
    with pytest.raises(DeliveryError) as caught:
        await sms.send(page())
    assert (caught.value.reason, caught.value.maybe_sent) == ("server_error", True)


async def test_hanging_api_is_cut_off_by_our_timeout(fake: FakeTwilio) -> None:
    """The library ignores its timeout; ours bounds the call and the error is retryable."""
    notifier = TwilioNotifier("sms", settings_for(fake, timeout=0.3))
    fake.fail_next(Fault.HANG)
    started = time.monotonic()
    try:
        with pytest.raises(DeliveryError) as caught:
            await notifier.send(page())
    finally:
        await notifier.close()
    assert time.monotonic() - started < 1.5
    assert (caught.value.reason, caught.value.retryable) == ("timeout", True)
    assert caught.value.maybe_sent  # the request went out: Twilio may have taken it


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (Fault.INVALID_NUMBER, "invalid_number"),
        (Fault.OPTED_OUT, "opted_out"),
        (Fault.NOT_MOBILE, "not_mobile"),
    ],
)
async def test_number_problems_are_permanent(
    fake: FakeTwilio, sms: TwilioNotifier, fault: Fault, reason: str
) -> None:
    """A bad, opted-out or landline number will not get better by retrying."""
    fake.fail_number(PRIMARY, fault)
    with pytest.raises(DeliveryError) as caught:
        await sms.send(page())
    assert (caught.value.reason, caught.value.retryable) == (reason, False)
    assert fault.value in str(caught.value)
    assert_no_secret(fake, caught.value)


async def test_malformed_number_is_refused_by_the_api(
    fake: FakeTwilio, sms: TwilioNotifier
) -> None:
    """The fake validates E.164 like Twilio does, the whole number (a trailing newline
    too): 21211, permanent."""
    for number in ("0800-DISK", PRIMARY + "\n"):
        with pytest.raises(DeliveryError) as caught:
            await sms.send(page(to=number))
        assert (caught.value.reason, caught.value.retryable) == ("invalid_number", False)


async def test_bad_credentials_take_the_channel_down_and_are_never_shown(
    fake: FakeTwilio,
) -> None:
    """A wrong auth token is error 20003, reason "auth": no page on this channel goes until
    it is fixed (channel down), and no secret leaks."""
    wrong = Secret("0123456789abcdef0123456789abcdef", "test")
    notifier = TwilioNotifier("sms", settings_for(fake, auth_token=wrong))
    try:
        with pytest.raises(DeliveryError) as caught:
            await notifier.send(page())
    finally:
        await notifier.close()
    assert (caught.value.reason, caught.value.channel_down) == ("auth", True)
    assert fake.requests[-1].error_code == 20003
    for thing in (caught.value, notifier, settings_for(fake, auth_token=wrong)):
        assert wrong.value not in str(thing)
        assert wrong.value not in repr(thing)
    assert_no_secret(fake, caught.value, notifier, settings_for(fake))


async def test_unreachable_api_is_retryable(fake: FakeTwilio) -> None:
    """A refused connection is worth another try."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    notifier = TwilioNotifier(
        "sms", settings_for(fake, api_base_url=f"http://127.0.0.1:{closed_port}")
    )
    try:
        with pytest.raises(DeliveryError) as caught:
            await notifier.send(page())
    finally:
        await notifier.close()
    assert (caught.value.reason, caught.value.retryable) == ("connection", True)
    assert_no_secret(fake, caught.value)


@contextlib.contextmanager
def black_holed_port() -> Iterator[int]:
    """A loopback port whose connection attempts are dropped (its listen queue is full): a
    connect hangs, as when a firewall or a broken route black-holes the provider."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.1)
    try:
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_a_black_holed_api_sent_nothing(fake: FakeTwilio) -> None:
    """No connection within our timeout: nothing can have reached Twilio, so the page is
    tried again (not failed as 'outcome unknown', review of stop 14)."""
    with black_holed_port() as port:
        notifier = TwilioNotifier(
            "sms", settings_for(fake, api_base_url=f"http://127.0.0.1:{port}", timeout=0.5)
        )
        try:
            with pytest.raises(DeliveryError) as caught:
                await notifier.send(page())
        finally:
            await notifier.close()
    assert (caught.value.reason, caught.value.retryable) == ("connection", True)
    assert not caught.value.maybe_sent


async def test_a_long_twilio_timeout_still_ends_before_the_outbox_deadline(
    fake: FakeTwilio, monkeypatch: pytest.MonkeyPatch
) -> None:
    """twilio.timeout as long as the outbox's deadline left the outcome to the outbox, which
    calls it "maybe sent": a black-holed API failed the page instead of retrying it. The
    adapter's own bound ends first now, and it knows nothing was sent."""
    monkeypatch.setattr(notifiers.base, "SEND_DEADLINE_S", 1.0)
    monkeypatch.setattr(notifiers.base, "SEND_MARGIN_S", 0.5)
    with black_holed_port() as port:
        notifier = TwilioNotifier(
            "sms", settings_for(fake, api_base_url=f"http://127.0.0.1:{port}", timeout=30.0)
        )
        started = time.monotonic()
        try:
            with pytest.raises(DeliveryError) as caught:
                await notifier.send(page())
        finally:
            await notifier.close()
    assert time.monotonic() - started < 0.9
    assert (caught.value.reason, caught.value.maybe_sent) == ("connection", False)


async def test_a_connection_reset_after_the_request_may_have_sent_it(fake: FakeTwilio) -> None:
    """The whole request reached the API, then the connection was reset: Twilio may have
    taken the message, so the page must not be sent again on the same route."""
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await reader.read(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        while len(body) < length:
            body += await reader.read(65536)
        received.append(body)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # a reset, not a clean close

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    notifier = TwilioNotifier(
        "sms", settings_for(fake, api_base_url=f"http://127.0.0.1:{port}", timeout=3.0)
    )
    try:
        with pytest.raises(DeliveryError) as caught:
            await notifier.send(page())
    finally:
        await notifier.close()
        server.close()
        await server.wait_closed()
    assert len(received) == 1
    assert caught.value.maybe_sent, str(caught.value)


def test_signature_validation(fake: FakeTwilio) -> None:
    """Twilio's signature is accepted; a changed param, URL or token is not."""
    url = "https://responder.example/api/v1/twilio/sms"
    params = {"From": PRIMARY, "Body": "ACK 42"}
    signature = fake.sign(url, params)
    assert validate_twilio_signature(fake.auth_token, url, params, signature)
    assert not validate_twilio_signature(
        fake.auth_token, url, {**params, "Body": "ACK 43"}, signature
    )
    assert not validate_twilio_signature(fake.auth_token, url + "?x=1", params, signature)
    assert not validate_twilio_signature("other-token", url, params, signature)
    assert not validate_twilio_signature(fake.auth_token, url, params, "")


async def test_status_callback_arrives_signed(
    fake: FakeTwilio, sms: TwilioNotifier, daemon: Daemon
) -> None:
    """Twilio's delivery report reaches the daemon with a signature it can verify."""
    receipt = await sms.send(page())
    answer = await fake.send_status_callback(receipt.provider_id, "delivered")
    assert answer.status == 204
    path, form, valid = daemon.received[-1]
    assert (path, valid) == (STATUS_CALLBACK_PATH, True)
    update = parse_status_callback(form)
    assert update is not None
    assert (update.provider_id, update.status, update.final, update.delivered) == (
        receipt.provider_id,
        "delivered",
        True,
        True,
    )


async def test_failed_status_carries_error_code(
    fake: FakeTwilio, sms: TwilioNotifier, daemon: Daemon
) -> None:
    """An undelivered SMS reports its carrier error code."""
    receipt = await sms.send(page())
    await fake.send_status_callback(receipt.provider_id, "undelivered", error_code=30003)
    update = parse_status_callback(daemon.received[-1][1])
    assert update is not None
    assert (update.status, update.error_code, update.final, update.delivered) == (
        "undelivered",
        30003,
        True,
        False,
    )


async def test_a_message_status_is_looked_up_with_the_real_library(
    fake: FakeTwilio, sms: TwilioNotifier
) -> None:
    """The status Twilio has for a sent SMS, read back through its REST API: still queued,
    then undelivered with its error code when the callback never came."""
    receipt = await sms.send(page())
    pending = await sms.fetch_status(receipt.provider_id)
    assert (pending.status, pending.final) == ("queued", False)
    fake.set_status(receipt.provider_id, "undelivered", 30003)
    update = await sms.fetch_status(receipt.provider_id)
    assert (update.status, update.error_code, update.final, update.delivered) == (
        "undelivered",
        30003,
        True,
        False,
    )
    assert fake.lookups == [receipt.provider_id] * 2
    assert fake.sent_sms()[0].statuses == ["queued", "undelivered"]  # no callback sent


async def test_a_status_lookup_says_whether_asking_again_can_help(
    fake: FakeTwilio, sms: TwilioNotifier
) -> None:
    """A message Twilio does not know is not asked for again; an outage is; a SID that is
    not one never reaches the API; the credentials never show."""
    unknown = "SM" + "0" * 32
    with pytest.raises(DeliveryError) as raised:
        await sms.fetch_status(unknown)
    assert (raised.value.reason, raised.value.retryable) == ("unknown_message", False)
    assert_no_secret(fake, raised.value)
    receipt = await sms.send(page())
    fake.fail_lookups(Fault.UNAVAILABLE)
    with pytest.raises(DeliveryError) as raised:
        await sms.fetch_status(receipt.provider_id)
    assert (raised.value.reason, raised.value.retryable) == ("server_error", True)
    with pytest.raises(DeliveryError, match="not a Twilio message SID"):
        await sms.fetch_status("SM../../Calls")
    assert fake.lookups == [unknown, receipt.provider_id]


async def test_a_call_status_is_looked_up_with_the_real_library(
    fake: FakeTwilio, daemon: Daemon
) -> None:
    """A call's status is read back through its REST API (``calls(sid).fetch``): queued,
    then no-answer, final and not delivered; only a call SID reaches the API."""
    voice = TwilioNotifier("voice", settings_for(fake), daemon.public_url)
    try:
        receipt = await voice.send(replace(page(), channel="voice"))
        pending = await voice.fetch_status(receipt.provider_id)
        assert (pending.status, pending.final) == ("queued", False)
        fake.set_status(receipt.provider_id, "no-answer")
        update = await voice.fetch_status(receipt.provider_id)
        assert (update.status, update.final, update.delivered) == ("no-answer", True, False)
        with pytest.raises(DeliveryError, match="not a Twilio call SID"):
            await voice.fetch_status("SM" + "0" * 32)
    finally:
        await voice.close()
    assert fake.lookups == [receipt.provider_id] * 2


async def test_inbound_sms_signature_checked(fake: FakeTwilio, daemon: Daemon) -> None:
    """A reply with Twilio's signature is answered with TwiML; a forged one is refused."""
    url = daemon.public_url + INBOUND_SMS_PATH
    good = await fake.send_inbound_sms(url, PRIMARY, FROM, "ACK")
    assert good.status == 200
    assert "<Message>Acknowledged</Message>" in good.text
    forged = await fake.send_inbound_sms(url, PRIMARY, FROM, "ACK", valid_signature=False)
    assert forged.status == 403
    assert [valid for _, _, valid in daemon.received] == [True, False]


async def test_concurrent_pages_share_one_client(fake: FakeTwilio, sms: TwilioNotifier) -> None:
    """Several pages at once all go out over the same notifier."""
    numbers = [f"+1500555{n:04d}" for n in range(10)]
    receipts = await asyncio.gather(*(sms.send(page(to=number)) for number in numbers))
    assert len({r.provider_id for r in receipts}) == 10
    assert sorted(r.to for r in fake.sent_sms()) == sorted(numbers)


# -- config ------------------------------------------------------------------------------------


def channels(text: str) -> Node:
    return load_text(text, "config.yaml")["channels"]


async def test_config_builds_sms_and_voice_that_reach_the_fake(
    fake: FakeTwilio, daemon: Daemon, tmp_path: Path
) -> None:
    """A ``channels.twilio`` block with the token in a file pages through the fake."""
    (tmp_path / "twilio_token").write_text(fake.auth_token + "\n")
    node = channels(
        f"""
channels:
  twilio:
    account_sid: {fake.account_sid}
    auth_token_file: twilio_token
    from: "{FROM}"
    api_base_url: {fake.base_url}/
    timeout: 2s
    max_segments: 3
"""
    )
    settings = parse_channels(node, tmp_path)
    assert settings.twilio is not None
    assert (settings.twilio.timeout, settings.twilio.max_segments) == (2.0, 3)
    assert_no_secret(fake, settings, settings.twilio)
    notifiers = build_notifiers(settings, daemon.public_url)
    assert sorted(notifiers) == ["sms", "voice"]
    try:
        await notifiers["sms"].send(page())
        await notifiers["voice"].send(page())
    finally:
        for notifier in notifiers.values():
            await notifier.close()
    assert len(fake.sent_sms()) == len(fake.calls()) == 1


def test_config_alphanumeric_sender_gives_no_voice(tmp_path: Path) -> None:
    """An alphanumeric sender can send SMS but cannot place calls."""
    (tmp_path / "t").write_text("token")
    node = channels(
        f"""
channels:
  twilio:
    account_sid: AC{"0" * 32}
    auth_token_file: t
    from: ACME Ops
"""
    )
    assert sorted(build_notifiers(parse_channels(node, tmp_path), None)) == ["sms"]


def test_a_token_file_of_two_lines_is_a_config_error(tmp_path: Path) -> None:
    """The wrong file, or the token beside something else: refused when the config is
    read, not first met as Twilio's 401 when a page is due (new-user review)."""
    (tmp_path / "t").write_text("ACCOUNT=AC123\nTOKEN=abc\n")
    node = channels(
        f"""
channels:
  twilio:
    account_sid: AC{"0" * 32}
    auth_token_file: t
    from: "+15005550006"
"""
    )
    with pytest.raises(ConfigError, match="auth_token_file: secret file holds more than one"):
        parse_channels(node, tmp_path)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "    account_sid: AC123\n    auth_token_env: HOME\n    from: '+15005550006'\n",
            "config.yaml:4: channels.twilio.account_sid: expected AC followed by 32",
        ),
        (
            f"    account_sid: AC{'0' * 32}\n    auth_token: abc\n    from: '+15005550006'\n",
            "config.yaml:5: channels.twilio.auth_token: secrets are not written in config",
        ),
        (
            f"    account_sid: AC{'0' * 32}\n    auth_token_env: HOME\n    from: '555-1234'\n",
            "config.yaml:6: channels.twilio.from: expected an E.164 number",
        ),
        (
            f"    account_sid: AC{'0' * 32}\n    auth_token_env: HOME\n    from: +15005550006\n",
            "config.yaml:6: channels.twilio.from: phone numbers must be quoted",
        ),
        (
            f"    account_sid: AC{'0' * 32}\n    auth_token_env: HOME\n",
            "config.yaml:3: channels.twilio: give from, messaging_service_sid, or both",
        ),
        (
            f"    account_sid: AC{'0' * 32}\n    auth_token_env: HOME\n    form: '+15005550006'\n",
            "config.yaml:6: channels.twilio.form: unknown key",
        ),
        (
            f"    account_sid: AC{'0' * 32}\n    auth_token_env: HOME\n    from: '+15005550006'\n"
            "    timeout: 0s\n",
            "config.yaml:7: channels.twilio.timeout: must be more than 0s",
        ),
        (
            f"    account_sid: AC{'0' * 32}\n    auth_token_env: HOME\n    from: '+15005550006'\n"
            "    api_base_url: localhost:8080\n",
            "config.yaml:7: channels.twilio.api_base_url: expected an http:// or https:// URL",
        ),
        # A trailing newline (a YAML block scalar, a quoted "\n") is no part of a valid value.
        (
            f'    account_sid: "AC{"0" * 32}\\n"\n'
            '    auth_token_env: HOME\n    from: "+15005550006"\n',
            "config.yaml:4: channels.twilio.account_sid: expected AC followed by 32",
        ),
        (
            f"    account_sid: AC{'0' * 32}\n    auth_token_env: HOME\n"
            '    from: "+15005550006\\n"\n',
            "config.yaml:6: channels.twilio.from: expected an E.164 number",
        ),
        (
            f'    account_sid: AC{"0" * 32}\n    auth_token_env: HOME\n    from: "ACME Ops\\n"\n',
            "config.yaml:6: channels.twilio.from: expected an E.164 number",
        ),
        (
            f"    account_sid: AC{'0' * 32}\n    auth_token_env: HOME\n"
            f'    messaging_service_sid: "MG{"0" * 32}\\n"\n',
            "config.yaml:6: channels.twilio.messaging_service_sid: expected MG followed by 32",
        ),
        (
            f"    account_sid: AC{'0' * 32}\n    auth_token_env: HOME\n    from: '+15005550006'\n"
            '    api_base_url: "http://127.0.0.1:8080\\n"\n',
            "config.yaml:7: channels.twilio.api_base_url: expected an http:// or https:// URL",
        ),
    ],
)
def test_config_errors_name_file_line_and_key(body: str, message: str, tmp_path: Path) -> None:
    """Each mistake in ``channels.twilio`` is reported where it was made."""
    node = channels("\nchannels:\n  twilio:\n" + body)
    with pytest.raises(ConfigError) as caught:
        parse_channels(node, tmp_path)
    assert str(caught.value).startswith(message)


def test_an_unknown_key_is_not_offered_a_secret_written_in_config(tmp_path: Path) -> None:
    """The hint lists what may be written: auth_token_file and auth_token_env, not the bare
    auth_token, which is let through only to be refused with its reason (new-user review:
    "expected one of: ..., auth_token, ..." invited the secret into the file)."""
    body = f"    account_sid: AC{'0' * 32}\n    auth_token_env: HOME\n    frm: '+15005550006'\n"
    with pytest.raises(ConfigError) as caught:
        parse_channels(channels("\nchannels:\n  twilio:\n" + body), tmp_path)
    offered = str(caught.value).split("expected one of: ")[1].split(", ")
    assert "auth_token_file" in offered
    assert "auth_token_env" in offered
    assert "auth_token" not in offered

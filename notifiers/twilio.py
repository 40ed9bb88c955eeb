"""Twilio SMS and voice pages through the official ``twilio`` library and its async HTTP client.

``TwilioNotifier`` sends one page as an SMS (``channel="sms"``) or as a phone call
(``channel="voice"``) whose TwiML speaks the text and gathers one keypress. Every API call is
bounded with ``asyncio.wait_for`` because the library ignores its own timeout, and every failure
becomes a ``DeliveryError`` that says whether a retry can help. The library never retries by
itself here: retries, backoff and rate limits belong to the outbox. The daemon serves the
callback paths named below under its public URL; ``validate_twilio_signature`` checks the
``X-Twilio-Signature`` of what arrives there. The account SID and auth token never reach a log
line or an error message.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode

import aiohttp
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client
from twilio.twiml.messaging_response import MessagingResponse
from twilio.twiml.voice_response import VoiceResponse

from notifiers.base import DeliveryError, Message, Receipt, StatusUpdate, send_bound
from notifiers.sms_text import fit_segments
from responder.secrets import Secret

# Whole values only (``fullmatch``): ``match`` with ``$`` lets a trailing newline through.
E164 = re.compile(r"\+[1-9]\d{1,14}")
# A message's SID as Twilio hands it out: SM (SMS) or MM (MMS) and 32 hex digits.
MESSAGE_SID = re.compile(r"(?:SM|MM)[0-9a-fA-F]{32}")
# A call's SID: CA and 32 hex digits.
CALL_SID = re.compile(r"CA[0-9a-fA-F]{32}")

# Paths the daemon serves under its public URL; Twilio calls them.
STATUS_CALLBACK_PATH = "/api/v1/twilio/status"  # message and call status (queued -> delivered)
VOICE_GATHER_PATH = "/api/v1/twilio/voice"  # the keypress gathered during a voice page
INBOUND_SMS_PATH = "/api/v1/twilio/sms"  # replies to SMS pages (set on the number at Twilio)

# Twilio's own limits: a message body of at most 1600 characters, inline TwiML of at most
# 4000. Spoken pages are cut well below that, since nobody listens to a minute of text.
MAX_SPOKEN_CHARS = 1000

# Twilio's "Authenticate": our account SID or auth token is wrong (a channel outage).
AUTH_FAILED = 20003
# Error codes that no retry of this page can fix, with the metric label each one gets.
PERMANENT_CODES: Mapping[int, str] = {
    21211: "invalid_number",  # the To number is not a valid phone number
    21610: "opted_out",  # the recipient replied STOP
    21614: "not_mobile",  # the To number cannot receive SMS
}

# The library logs each request URL at INFO, and the URL holds the account SID: its logger is
# kept at WARNING so the SID never reaches a log handler.
_library_logger = logging.getLogger("notifiers.twilio.http")
_library_logger.setLevel(logging.WARNING)


class _Progress:
    """How far one request got: until a connection to the API exists, nothing was sent."""

    __slots__ = ("connected",)

    def __init__(self) -> None:
        self.connected = False


# The request in progress in this task (``send`` sets it; aiohttp's connection signals,
# which run in the same task, mark it).
_PROGRESS: contextvars.ContextVar[_Progress | None] = contextvars.ContextVar(
    "twilio_progress", default=None
)


async def _connected(*_args: object) -> None:
    if (progress := _PROGRESS.get()) is not None:
        progress.connected = True


def _connection_trace() -> aiohttp.TraceConfig:
    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(_connected)
    trace.on_connection_reuseconn.append(_connected)
    return trace


@dataclass(frozen=True, slots=True)
class TwilioSettings:
    """What both Twilio channels need; built by ``notifiers.config`` or by hand in tests."""

    account_sid: str
    auth_token: Secret
    from_number: str | None = None  # E.164 number (voice needs one) or alphanumeric sender
    messaging_service_sid: str | None = None  # preferred for SMS when set
    api_base_url: str | None = None  # None: the library's default (https://api.twilio.com)
    timeout: float = 10.0  # seconds, for one whole API call
    max_segments: int = 10  # SMS bodies are cut to this many segments (10 fit Twilio's 1600)

    def __repr__(self) -> str:
        # The SID identifies the account and is kept out of reprs like the token.
        return (
            f"TwilioSettings(from_number={self.from_number!r}, "
            f"messaging_service_sid={self.messaging_service_sid!r}, "
            f"api_base_url={self.api_base_url!r}, timeout={self.timeout!r})"
        )


_FINAL_STATUSES = frozenset(
    {"delivered", "undelivered", "failed", "read", "completed", "busy", "no-answer", "canceled"}
)
_DELIVERED_STATUSES = frozenset({"delivered", "read", "completed", "in-progress", "answered"})


def parse_status_callback(params: Mapping[str, str]) -> StatusUpdate | None:
    """Read a (signature-checked) status callback form; None if it names no message or call."""
    sid = params.get("MessageSid") or params.get("SmsSid") or params.get("CallSid") or ""
    status = params.get("MessageStatus") or params.get("SmsStatus") or params.get("CallStatus")
    if not sid or not status:
        return None
    raw_code = params.get("ErrorCode", "")
    error_code = int(raw_code) if raw_code.isascii() and raw_code.isdigit() else None
    return _status_update(sid, status, error_code)


def _status_update(sid: str, status: str, error_code: int | None) -> StatusUpdate:
    """One reading of a message's or call's status, from a callback or from the API."""
    return StatusUpdate(
        provider_id=sid,
        status=status,
        error_code=error_code,
        final=status in _FINAL_STATUSES,
        delivered=status in _DELIVERED_STATUSES,
    )


def validate_twilio_signature(
    auth_token: str, url: str, params: Mapping[str, str], signature: str
) -> bool:
    """True when ``signature`` (the ``X-Twilio-Signature`` header) signs this request.

    ``url`` must be the exact public URL Twilio called, query string included, not the URL the
    daemon saw behind a proxy: ``public_url + request.raw_path`` in aiohttp (``path_qs`` is
    normalised and can differ from what was signed). ``params`` is the POST form.
    """
    if not signature:
        return False
    validator = RequestValidator(auth_token)
    return bool(validator.validate(url, dict(params), signature))


def voice_twiml(
    text: str,
    gather_url: str | None,
    *,
    prompt: str = "Press 1 to acknowledge.",
    repeat: int = 2,
) -> str:
    """TwiML for a voice page: speak ``text`` and gather one key, posted to ``gather_url``.

    The message is said ``repeat`` times, since the first words are often lost while the callee
    brings the phone to their ear. Without a ``gather_url`` (no public URL) it is only spoken.
    """
    spoken = text if len(text) <= MAX_SPOKEN_CHARS else text[:MAX_SPOKEN_CHARS]
    response = VoiceResponse()
    for _ in range(max(repeat, 1)):
        if gather_url is None:
            response.say(spoken)
            continue
        gather = response.gather(num_digits=1, action=gather_url, method="POST", timeout=5)
        gather.say(spoken)
        gather.say(prompt)
    response.say("Goodbye.")
    response.hangup()
    return str(response)


def voice_reply_twiml(text: str) -> str:
    """TwiML answering a gathered keypress: say ``text`` and hang up."""
    response = VoiceResponse()
    response.say(text)
    response.hangup()
    return str(response)


def sms_reply_twiml(text: str | None) -> str:
    """TwiML answering an inbound SMS with ``text``, or with no reply at all when None."""
    response = MessagingResponse()
    if text:
        response.message(text)
    return str(response)


def gather_url(public_url: str, message: Message) -> str:
    """The keypress URL of one voice page; its query says which page the key answers."""
    query = {"thread": message.thread_id, "page": message.idempotency_key}
    # "/" stays literal: page keys hold slashes, and %2F is the kind of escape that proxies and
    # URL libraries normalise, which would break the signature Twilio computes over the URL.
    encoded = urlencode({k: v for k, v in query.items() if v}, safe="/")
    base = public_url.rstrip("/") + VOICE_GATHER_PATH
    return f"{base}?{encoded}" if encoded else base


class TwilioNotifier:
    """Pages over Twilio: ``channel`` is ``"sms"`` or ``"voice"``.

    ``public_url`` is the daemon's externally reachable base URL (``https://responder.example``);
    with it, Twilio posts status callbacks to ``STATUS_CALLBACK_PATH`` and keypresses to
    ``VOICE_GATHER_PATH``. The HTTP client is created on first use, inside the running loop.
    """

    def __init__(
        self,
        channel: Literal["sms", "voice"],
        settings: TwilioSettings,
        public_url: str | None = None,
    ) -> None:
        if channel not in ("sms", "voice"):
            raise ValueError(f"TwilioNotifier channel must be sms or voice, not {channel!r}")
        if channel == "voice" and not E164.fullmatch(settings.from_number or ""):
            raise ValueError("voice pages need an E.164 from number")
        if channel == "sms" and not (settings.from_number or settings.messaging_service_sid):
            raise ValueError("SMS pages need a from number or a messaging service SID")
        self.channel: str = channel
        self._settings = settings
        self._public_url = public_url.rstrip("/") if public_url else None
        self._http: AsyncTwilioHttpClient | None = None
        self._client: Any = None

    def __repr__(self) -> str:
        return f"TwilioNotifier(channel={self.channel!r}, public_url={self._public_url!r})"

    def _twilio(self) -> Any:
        if self._client is None:
            settings = self._settings
            # max_retries stays None: the library would retry 5xx on its own, unbounded by our
            # timeout and invisible to the outbox's accounting.
            self._http = AsyncTwilioHttpClient(
                logger=_library_logger, trace_configs=[_connection_trace()]
            )
            client = Client(
                username=settings.account_sid,
                password=settings.auth_token.value,
                account_sid=settings.account_sid,
                http_client=self._http,
                # An explicit environment: stray TWILIO_EDGE / TWILIO_REGION variables would
                # rewrite the API host, so config alone decides where pages go.
                environment={"TWILIO_ACCOUNT_SID": settings.account_sid},
            )
            if settings.api_base_url:
                client.api.base_url = settings.api_base_url.rstrip("/")
            self._client = client
        return self._client

    @property
    def status_callback_url(self) -> str | None:
        return self._public_url + STATUS_CALLBACK_PATH if self._public_url else None

    async def send(self, message: Message) -> Receipt:
        client = self._twilio()
        settings = self._settings
        kwargs: dict[str, Any] = {"to": message.to}
        if self.status_callback_url:
            kwargs["status_callback"] = self.status_callback_url
        if self.channel == "sms":
            kwargs["body"] = fit_segments(message.text, settings.max_segments)
            if settings.messaging_service_sid:
                kwargs["messaging_service_sid"] = settings.messaging_service_sid
            else:
                kwargs["from_"] = settings.from_number
            call = client.messages.create_async(**kwargs)
        else:
            kwargs["from_"] = settings.from_number
            action = gather_url(self._public_url, message) if self._public_url else None
            kwargs["twiml"] = voice_twiml(message.text, action)
            if self.status_callback_url:
                kwargs["status_callback_event"] = ["initiated", "ringing", "answered", "completed"]
            call = client.calls.create_async(**kwargs)
        progress = _Progress()
        token = _PROGRESS.set(progress)
        try:
            instance = await asyncio.wait_for(call, timeout=send_bound(settings.timeout))
        except Exception as exc:  # every failure becomes a DeliveryError, classified below
            raise self._delivery_error(exc, progress.connected) from None
        finally:
            _PROGRESS.reset(token)
        sid = getattr(instance, "sid", None)
        if not isinstance(sid, str) or not sid:
            # A success without the message's id: it most likely exists (see _api_error).
            raise DeliveryError(
                "bad_response", "Twilio answered without a SID", retryable=True, maybe_sent=True
            )
        status = getattr(instance, "status", None)
        return Receipt(provider_id=sid, status=str(status) if status else "queued")

    async def fetch_status(self, provider_id: str) -> StatusUpdate:
        """The status Twilio has now for an SMS or a call this channel sent, through its REST
        API (``GET .../Messages/{sid}.json``, ``.../Calls/{sid}.json``): for when the status
        callback did not come."""
        # Only what Twilio answered to a send of ours goes into the request's path.
        if self.channel == "sms":
            if not MESSAGE_SID.fullmatch(provider_id):
                raise DeliveryError("not_a_message", "not a Twilio message SID", retryable=False)
        elif not CALL_SID.fullmatch(provider_id):
            raise DeliveryError("not_a_call", "not a Twilio call SID", retryable=False)
        client = self._twilio()
        resource = client.messages if self.channel == "sms" else client.calls
        timeout = send_bound(self._settings.timeout)
        try:
            instance = await asyncio.wait_for(resource(provider_id).fetch_async(), timeout)
        except TwilioRestException as exc:
            raise self._lookup_error(exc) from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise DeliveryError(
                "connection",
                f"cannot reach Twilio: {self._scrub(type(exc).__name__ + ': ' + str(exc))}",
                retryable=True,
            ) from None
        status = getattr(instance, "status", None)
        if not status:
            raise DeliveryError("bad_response", "Twilio answered without a status", retryable=True)
        code = getattr(instance, "error_code", None)
        return _status_update(provider_id, str(status), code if isinstance(code, int) else None)

    def _lookup_error(self, exc: TwilioRestException) -> DeliveryError:
        status = int(exc.status)
        text = str(exc.msg).removeprefix("Unable to fetch record: ")
        detail = self._scrub(f"Twilio answered HTTP {status}, error {exc.code}: {text}")
        if status == 404:  # another account's message, or one deleted: asking again won't do
            return DeliveryError("unknown_message", detail, retryable=False)
        if status == 429:
            return DeliveryError("rate_limited", detail, retryable=True)
        if exc.code == AUTH_FAILED or status == 401:
            return DeliveryError("auth", detail, retryable=True, channel_down=True)
        reason = "server_error" if status >= 500 else "rejected"
        return DeliveryError(reason, detail, retryable=True)

    def _scrub(self, text: str) -> str:
        """Remove credentials from provider text (Twilio's 404 messages quote the URL)."""
        for secret, mask in (
            (self._settings.auth_token.value, "<auth token>"),
            (self._settings.account_sid, "<account>"),
        ):
            if secret:
                text = text.replace(secret, mask)
        return text

    def _delivery_error(self, exc: BaseException, connected: bool) -> DeliveryError:
        """``connected``: a connection to the API existed, so the request may have reached
        it. Before that nothing was sent, and the page is simply tried again; after, a
        failure leaves it unknown whether Twilio took the message (``maybe_sent``)."""
        what = "SMS" if self.channel == "sms" else "call"
        if isinstance(exc, aiohttp.ConnectionTimeoutError) or (
            isinstance(exc, TimeoutError) and not connected
        ):
            # A black-holed route or a firewall dropping packets: no connection, no request.
            return DeliveryError(
                "connection",
                "cannot reach Twilio: no connection within the timeout",
                retryable=True,
            )
        if isinstance(exc, TimeoutError):
            # The request was sent: Twilio may have taken the message and be slow to say so.
            return DeliveryError(
                "timeout",
                f"Twilio did not answer the {what} request within "
                f"{send_bound(self._settings.timeout):g}s",
                retryable=True,
                maybe_sent=True,
            )
        if isinstance(exc, TwilioRestException | TwilioServiceException):
            return self._api_error(exc)
        if isinstance(exc, aiohttp.ClientError | OSError):
            return DeliveryError(
                "connection",
                f"cannot reach Twilio: {self._scrub(type(exc).__name__ + ': ' + str(exc))}",
                retryable=True,
                # Refused, unresolvable, a bad certificate: nothing was sent. Reset or dropped
                # once connected: the whole request may have gone out, unknown.
                maybe_sent=connected and not isinstance(exc, aiohttp.ClientConnectorError),
            )
        if isinstance(exc, json.JSONDecodeError | KeyError | ValueError):
            # Errors come as TwilioRestException: this was a success we could not read.
            return DeliveryError(
                "bad_response",
                f"Twilio's answer was not understood: {exc}",
                retryable=True,
                maybe_sent=True,
            )
        return DeliveryError(
            "internal", f"{what} failed: {self._scrub(type(exc).__name__)}", retryable=True
        )

    def _api_error(self, exc: TwilioRestException | TwilioServiceException) -> DeliveryError:
        status = int(exc.status)
        code = exc.code if isinstance(exc.code, int) else None
        if isinstance(exc, TwilioServiceException):
            text = exc.detail or exc.title or ""
        else:
            # The library prefixes the provider's message with its own "Unable to create record".
            text = str(exc.msg).removeprefix("Unable to create record: ")
        detail = self._scrub(f"Twilio answered HTTP {status}, error {code}: {text}")
        if status in (429, 503):  # not taken: try again later
            return DeliveryError(
                "rate_limited" if status == 429 else "server_error", detail, retryable=True
            )
        if status >= 500:
            # Twilio's own advice (error 20500): a message create that failed with a 500 may
            # still have gone out, and sending it again may reach the person twice. As for
            # a timeout: re-routed, never resent. A gateway's 502 or 504 is as uncertain.
            return DeliveryError("server_error", detail, retryable=True, maybe_sent=True)
        if code == AUTH_FAILED or status == 401:
            # Our account SID or auth token: every page on this channel fails alike.
            return DeliveryError("auth", detail, retryable=True, channel_down=True)
        if code is not None and code in PERMANENT_CODES:
            return DeliveryError(PERMANENT_CODES[code], detail, retryable=False)
        return DeliveryError("rejected", detail, retryable=False)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
        self._http = None
        self._client = None

"""Outgoing webhook pages: a signed JSON POST to the URL in ``Message.to``.

The body is ``{"text", "subject", "thread_id", "idempotency_key", "data"}`` (``data`` is
``Message.data``). With a secret configured, the request carries
``X-Responder-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``; a
receiver recomputes it over the raw body, compares in constant time and refuses timestamps
older than a few minutes (``verify_signature`` does all three). ``Idempotency-Key`` repeats the
page's key so that a receiver can drop a retried duplicate. Redirects are not followed (a POST
turned into a GET delivers nothing). 2xx is delivered; 408, 429, 5xx, timeouts and connection
errors can be retried; any other answer is permanent. The target URL may itself be a secret
(chat webhooks put a token in it), so errors name only its scheme and host.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from notifiers.base import DeliveryError, Message, Receipt, send_bound
from responder import __version__
from responder.clock import Clock, SystemClock
from responder.secrets import Secret

SIGNATURE_HEADER = "X-Responder-Signature"
DEFAULT_TOLERANCE = 300.0  # seconds a receiver accepts between signing and checking


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    timeout: float = 10.0  # seconds, for the whole request
    secret: Secret | None = None  # signs every request when set


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header value for ``body`` sent at ``timestamp`` (unix seconds)."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_signature(
    secret: str, header: str, body: bytes, now: float, tolerance: float = DEFAULT_TOLERANCE
) -> bool:
    """What a receiver does: True when ``header`` signs ``body`` and is at most ``tolerance``
    seconds from ``now`` (unix seconds). Several ``v1=`` values are allowed (key rotation)."""
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isascii() and value.isdigit() and len(value) <= 12:
            timestamp = int(value)  # ("²".isdigit() holds, but int("²") fails)
        elif name == "v1":
            candidates.append(value)
    if timestamp is None or not candidates or abs(now - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body).rpartition("v1=")[2]
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)


def payload(message: Message) -> bytes:
    """The JSON body of one webhook page."""
    document = {
        "text": message.text,
        "subject": message.subject,
        "thread_id": message.thread_id,
        "idempotency_key": message.idempotency_key,
        "data": dict(message.data),
    }
    # default=str: data may hold datetimes or enums; a receiver gets their text form.
    return json.dumps(document, default=str, ensure_ascii=False, separators=(",", ":")).encode()


def _origin(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


class WebhookNotifier:
    """POSTs pages as signed JSON; uses the given ``aiohttp.ClientSession`` or owns one."""

    channel: str = "webhook"

    def __init__(
        self,
        settings: WebhookSettings,
        session: aiohttp.ClientSession | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        self._settings = settings
        self._session = session
        self._owns_session = session is None
        self._clock = clock or SystemClock()

    def __repr__(self) -> str:
        signed = self._settings.secret is not None
        return f"WebhookNotifier(timeout={self._settings.timeout!r}, signed={signed})"

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # Created on first use so that it belongs to the running loop.
            self._session = aiohttp.ClientSession()
        return self._session

    async def send(self, message: Message) -> Receipt:
        url = message.to
        origin = _origin(url)
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise DeliveryError("bad_address", f"not an http(s) URL: {origin}", retryable=False)
        body = payload(message)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"responder/{__version__}",
        }
        if message.idempotency_key and message.idempotency_key.isprintable():
            # isprintable() excludes CR/LF: a key can never split into a second header.
            headers["Idempotency-Key"] = message.idempotency_key
        if self._settings.secret is not None:
            timestamp = int(self._clock.now().timestamp())
            headers[SIGNATURE_HEADER] = sign(self._settings.secret.value, timestamp, body)
        session = self._get_session()
        try:
            async with asyncio.timeout(send_bound(self._settings.timeout)):
                async with session.post(
                    url, data=body, headers=headers, allow_redirects=False
                ) as response:
                    status = response.status
                    # A short excerpt of the answer goes into the timeline for the review.
                    excerpt = (await response.content.read(200)).decode("utf-8", "replace")
        except TimeoutError:
            raise DeliveryError(
                "timeout",
                f"{origin} did not answer within {send_bound(self._settings.timeout):g}s",
                retryable=True,
            ) from None
        except aiohttp.InvalidURL:
            raise DeliveryError("bad_address", f"invalid URL: {origin}", retryable=False) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise DeliveryError(
                "connection", f"cannot reach {origin}: {type(exc).__name__}", retryable=True
            ) from None
        if 200 <= status < 300:
            return Receipt(provider_id=message.idempotency_key or origin, status="delivered")
        detail = f"{origin} answered HTTP {status}: {excerpt.strip()}"
        if self._settings.secret is not None:
            detail = detail.replace(self._settings.secret.value, "<secret>")
        if status == 429:
            raise DeliveryError("rate_limited", detail, retryable=True)
        if status >= 500 or status == 408:
            raise DeliveryError("server_error", detail, retryable=True)
        if 300 <= status < 400:
            raise DeliveryError("redirect", detail, retryable=False)
        raise DeliveryError("rejected", detail, retryable=False)

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

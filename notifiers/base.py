"""The one small interface every channel implements, and the one error family it raises."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Message:
    """One page to one address over one channel, already rendered."""

    channel: str  # "sms", "voice", "email", "webhook"
    to: str  # E.164 number, email address, or URL, depending on the channel
    text: str  # SMS body, spoken text, plain-text email part, or webhook summary
    subject: str = ""
    html: str | None = None
    # Every message of one incident shares a thread id (email threading, chat threads).
    thread_id: str = ""
    # Unique per page; adapters pass it on where the provider supports idempotency.
    idempotency_key: str = ""
    # Structured data for channels that carry it (webhook JSON, email headers).
    data: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    # True for the first message of a thread to this address (the incident's first notice).
    # Email makes it the thread's root (its Message-ID derives from thread_id and ``to``:
    # each recipient has a root of its own); later messages to ``to`` reply to that root.
    # Only the caller knows which message is first: a notifier that guessed from memory
    # would, after a restart, send a second root with the same Message-ID, and mail
    # providers silently drop duplicate Message-IDs.
    thread_start: bool = False
    # Which install composed it: stable for the install, different for another (staging and
    # production paging the same person have their own incident 1 and page 1). Email mixes
    # it into Message-IDs, which must never repeat across the two.
    origin: str = ""


@dataclass(frozen=True, slots=True)
class Receipt:
    """The provider took the message; ``provider_id`` lets status callbacks find it again."""

    provider_id: str
    status: str = "sent"


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """What a provider says later of a message it took (a status callback, or a lookup)."""

    provider_id: str  # the MessageSid or CallSid that send() returned in its Receipt
    status: str  # queued, sent, delivered, undelivered, failed; ringing, completed, busy, ...
    error_code: int | None
    final: bool  # no later status will change the outcome
    delivered: bool  # the page reached the phone (delivered SMS, answered call)


# The outbox's bound on one send (twilio ignores its own timeout). An adapter with its own
# timeout ends before it, so that it, not the outbox, says whether the message may be out.
SEND_DEADLINE_S = 30.0
# Room between the end of an adapter's own bound and the outbox's deadline.
SEND_MARGIN_S = 5.0


def send_bound(timeout: float) -> float:
    """An adapter's bound on one send: its configured timeout, ending before the outbox's."""
    return min(timeout, SEND_DEADLINE_S - SEND_MARGIN_S)


class DeliveryError(Exception):
    """A page could not be handed to the provider.

    ``retryable`` says whether trying again later can help (timeouts, 429, 5xx) or not
    (invalid number, opted out, unknown mailbox). ``maybe_sent``: the request reached the
    provider and no answer came back (a read timeout, a dropped connection), so the message
    may be on its way; sending it again could page twice. ``reason`` is a short, stable word
    used as a metric label; ``str(error)`` is the human detail for the timeline. Neither may
    hold secrets.

    ``channel_down``: the channel itself cannot deliver any page (the provider refused our
    credentials, our TLS setup does not verify): not the page's fault, and not fixed by
    waiting but by an operator. Such an error is retryable: the page fails over at once and
    stays queued, retried until ``delivery.retry_for``, so it still goes once fixed.
    """

    def __init__(
        self,
        reason: str,
        detail: str,
        *,
        retryable: bool,
        maybe_sent: bool = False,
        channel_down: bool = False,
    ) -> None:
        super().__init__(detail)
        self.reason = reason
        self.retryable = retryable or channel_down  # retried until an operator fixes it
        self.maybe_sent = maybe_sent
        self.channel_down = channel_down


class Notifier(Protocol):
    """A channel adapter. ``send`` returns a receipt or raises ``DeliveryError``."""

    channel: str

    async def send(self, message: Message) -> Receipt: ...

    async def close(self) -> None: ...


@runtime_checkable
class StatusLookup(Protocol):
    """A channel whose provider can be asked how a message it took fared (Twilio's REST
    API), for when its status callback did not come."""

    async def fetch_status(self, provider_id: str) -> StatusUpdate:
        """The message's status now; raises ``DeliveryError`` (``retryable`` False: asking
        again cannot help, the provider does not know the message)."""
        ...

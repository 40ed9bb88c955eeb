"""Email pages over SMTP with aiosmtplib: TLS as configured, threaded per incident.

``SmtpNotifier`` (channel ``"email"``) builds a ``multipart/alternative`` message (text, and
HTML when the page has it) with the ``Date`` and ``Message-ID`` headers aiosmtplib does not add,
and threads every message of one incident: the thread's root Message-ID is derived from
``Message.thread_id`` and the recipient, the message marked ``thread_start`` carries it, and
every other message to that recipient replies to it (``In-Reply-To`` and ``References``).
Transport security is explicit: ``starttls`` (required, never silently skipped), ``tls``
(implicit, port 465) or ``none`` (a loopback relay).
Each send is bounded by a timeout; failures become ``DeliveryError``: connection problems,
timeouts and 4xx replies can be retried, a 5xx for the page (unknown mailbox) cannot, and what
refuses every page (failed AUTH, no STARTTLS, a 554 greeting) takes the channel down.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from enum import StrEnum
from pathlib import Path
from typing import Any

import aiosmtplib

from notifiers.base import DeliveryError, Message, Receipt, send_bound
from responder.clock import Clock, SystemClock
from responder.secrets import Secret


class SmtpMode(StrEnum):
    STARTTLS = "starttls"  # connect in plain text, then STARTTLS; fail if it is not offered
    TLS = "tls"  # implicit TLS from the first byte
    NONE = "none"  # plain text throughout: only for a relay on loopback or a trusted link


DEFAULT_PORTS = {SmtpMode.STARTTLS: 587, SmtpMode.TLS: 465, SmtpMode.NONE: 25}


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str
    from_addr: str  # "Responder <responder@example.com>" or a bare address
    mode: SmtpMode = SmtpMode.STARTTLS
    port: int | None = None  # None: 587, 465 or 25 by mode
    ca_file: Path | None = None  # trust only this bundle; None: the system's CAs
    verify: bool = True  # check the server's certificate and name
    username: str | None = None
    password: Secret | None = None
    timeout: float = 30.0  # seconds, for one whole send (connect to QUIT)

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else DEFAULT_PORTS[self.mode]


def _from_domain(from_addr: str) -> str:
    address = parseaddr(from_addr)[1]
    domain = address.rpartition("@")[2]
    return domain or "responder.invalid"


def thread_root_id(thread_id: str, domain: str, origin: str = "", to: str = "") -> str:
    """The Message-ID every message of ``thread_id`` to ``to`` refers to: the same on every
    run. Each recipient's thread has a root of its own: everyone paged at level 1 gets a first
    notice, and one Message-ID for two different messages makes a mailbox that receives both
    (a list, an alias, a shared archive) drop the second as a duplicate."""
    recipient = parseaddr(to)[1].lower()
    key = f"{origin}\x00{thread_id}\x00{recipient}"
    return f"<thread.{hashlib.sha256(key.encode()).hexdigest()[:32]}@{domain}>"


def message_id(message: Message, domain: str) -> str:
    """A message's own Message-ID: the thread root for ``thread_start``; otherwise derived from
    the idempotency key, so that a retried page carries the same id and mail systems can drop
    the duplicate; random only when there is no key. Both mix in the message's origin."""
    if message.thread_start and message.thread_id:
        return thread_root_id(message.thread_id, domain, message.origin, message.to)
    if message.idempotency_key:
        key = f"{message.origin}\x00{message.idempotency_key}"
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        return f"<page.{digest}@{domain}>"
    return make_msgid("page", domain=domain)


def build_email(message: Message, from_addr: str, clock: Clock) -> EmailMessage:
    """The RFC 5322 message for one page (exposed so that templates can be previewed)."""
    domain = _from_domain(from_addr)
    mail = EmailMessage()
    mail["From"] = from_addr
    mail["To"] = message.to
    subject = message.subject or (message.text.splitlines() or ["Alert"])[0][:120]
    # Subjects are rendered from alert labels: a line break there would be a header injection
    # (and makes the email library refuse the header), so whitespace runs become one space.
    mail["Subject"] = " ".join(subject.split())
    mail["Date"] = format_datetime(clock.now())
    mail["Message-ID"] = message_id(message, domain)
    if message.thread_id and not message.thread_start:
        root = thread_root_id(message.thread_id, domain, message.origin, message.to)
        mail["In-Reply-To"] = root
        mail["References"] = root
    # RFC 3834: tells vacation responders and ticket systems not to answer a page.
    mail["Auto-Submitted"] = "auto-generated"
    mail.set_content(message.text)
    if message.html is not None:
        mail.add_alternative(message.html, subtype="html")
    return mail


def _tls_context(settings: SmtpSettings) -> ssl.SSLContext:
    if not settings.verify:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    # With a CA bundle, only that bundle is trusted (a private relay's own CA).
    cafile = str(settings.ca_file) if settings.ca_file is not None else None
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)


class _TrackedSMTP(aiosmtplib.SMTP):
    """aiosmtplib's client, noting how far a message got. Once the body is on its way (after
    the server's 354) the server may take it whatever happens next; after the server's
    answer to it, a later failure (QUIT) does not undo the delivery; and a refusal (451,
    554) is kept, so that a stall after it (aiosmtplib's RSET) does not hide it."""

    body_sent = False
    data_answered = False
    data_refused: aiosmtplib.SMTPResponseException | None = None

    async def data(self, message: str | bytes, /, **kwargs: Any) -> aiosmtplib.SMTPResponse:
        protocol = self.protocol
        if protocol is not None:
            write = protocol.write

            def write_noting_the_body(data: bytes) -> None:
                write(data)
                if data != b"DATA\r\n":  # the only other write of the DATA exchange
                    self.body_sent = True

            # For this connection's DATA exchange only: the protocol writes the command and,
            # after the 354, the body, with no hook of its own between the two.
            protocol.write = write_noting_the_body  # type: ignore[method-assign]
        try:
            response = await super().data(message, **kwargs)
        except aiosmtplib.SMTPResponseException as exc:
            self.data_refused = exc
            raise
        self.data_answered = True
        return response


class SmtpNotifier:
    """Sends pages as email; one SMTP connection per page (pages are few and must not queue
    behind a stale pooled connection)."""

    channel: str = "email"

    def __init__(self, settings: SmtpSettings, *, clock: Clock | None = None) -> None:
        if settings.mode is SmtpMode.NONE and settings.ca_file is not None:
            raise ValueError("ca_file has no effect with mode none")
        if (settings.username is None) != (settings.password is None):
            raise ValueError("SMTP AUTH needs both a username and a password")
        self._settings = settings
        self._clock = clock or SystemClock()
        self._context: ssl.SSLContext | None = None
        # The EHLO name, without DNS: aiosmtplib would otherwise resolve the FQDN in the
        # default thread pool for every message, and DNS may be what is on fire.
        self._local_hostname = socket.gethostname() or "localhost"

    def __repr__(self) -> str:
        s = self._settings
        return f"SmtpNotifier(host={s.host!r}, port={s.effective_port}, mode={s.mode.value!r})"

    async def _get_context(self) -> ssl.SSLContext | None:
        if self._settings.mode is SmtpMode.NONE:
            return None
        if self._context is None:
            # Loading a CA bundle reads files: done once, off the event loop.
            self._context = await asyncio.to_thread(_tls_context, self._settings)
        return self._context

    async def send(self, message: Message) -> Receipt:
        settings = self._settings
        try:
            mail = build_email(message, settings.from_addr, self._clock)
        except ValueError as exc:
            # The email library refuses header values with line breaks or bad addresses.
            raise DeliveryError(
                "bad_address", f"cannot build the email: {exc}", retryable=False
            ) from None
        try:
            sender = Address(addr_spec=parseaddr(settings.from_addr)[1]).addr_spec
        except (ValueError, IndexError) as exc:
            raise DeliveryError("config", f"bad From address: {exc}", retryable=False) from None
        receipt = Receipt(provider_id=str(mail["Message-ID"]), status="sent")
        client: _TrackedSMTP | None = None
        try:
            # aiosmtplib's timeout is per command; this one bounds the whole exchange, from
            # loading the CA bundle to QUIT, and ends before the outbox's deadline so that
            # the outcome is ours.
            async with asyncio.timeout(self._bound):
                client = _TrackedSMTP(
                    hostname=settings.host,
                    port=settings.effective_port,
                    use_tls=settings.mode is SmtpMode.TLS,
                    # True: STARTTLS is required, a server not offering it is an error;
                    # False: never upgrade (aiosmtplib's default would upgrade when offered).
                    start_tls=settings.mode is SmtpMode.STARTTLS,
                    tls_context=await self._get_context(),
                    username=settings.username,
                    password=settings.password.value if settings.password else None,
                    timeout=settings.timeout,
                    local_hostname=self._local_hostname,
                )
                await client.connect()  # and STARTTLS and AUTH, as configured
                await client.send_message(mail, sender=sender, recipients=[message.to])
                await client.quit()
        except Exception as exc:  # every failure becomes a DeliveryError, classified below
            if client is not None and client.data_answered:
                return receipt  # the server took it; what failed was saying goodbye
            refused = None if client is None else client.data_refused
            cause = exc if refused is None else refused  # a clear answer, whatever followed
            error = self._delivery_error(cause)
            sent = client is not None and client.body_sent
            if sent and not isinstance(cause, aiosmtplib.SMTPResponseException):
                # The message went out and no answer came back: the server may have taken
                # it, and sending it again could page twice (deliver re-routes instead).
                error = DeliveryError(
                    error.reason,
                    f"{error} after the message was sent; it may have been delivered",
                    retryable=error.retryable,
                    maybe_sent=True,
                )
            raise error from None
        finally:
            if client is not None:
                client.close()  # never left to a QUIT outside the bound
        return receipt

    @property
    def _bound(self) -> float:
        """Seconds for one whole send: ends before the outbox's deadline, so that the
        outcome (not sent, maybe sent, sent) is decided here."""
        return send_bound(self._settings.timeout)

    def _scrub(self, text: str) -> str:
        password = self._settings.password
        if password is not None and password.value:
            text = text.replace(password.value, "<password>")
        return text

    def _delivery_error(self, exc: Exception) -> DeliveryError:
        where = f"{self._settings.host}:{self._settings.effective_port}"
        if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
            codes = [r.code for r in exc.recipients]
            first = exc.recipients[0] if exc.recipients else None
            text = f"{first.code} {first.message}" if first else "refused"
            retryable = all(400 <= code < 500 for code in codes)
            reason = "deferred" if retryable else "rejected_recipient"
            return DeliveryError(
                reason, self._scrub(f"{where} refused the recipient: {text}"), retryable=retryable
            )
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            detail = self._scrub(f"{where} answered {exc.code} {exc.message}")
            if 400 <= exc.code < 500:
                return DeliveryError("deferred", detail, retryable=True)
            # Our login or our From address refused: every page on this channel fails alike.
            if isinstance(exc, aiosmtplib.SMTPAuthenticationError) or exc.code == 530:
                return DeliveryError("auth", detail, retryable=True, channel_down=True)
            if isinstance(exc, aiosmtplib.SMTPSenderRefused):
                if exc.code == 552:
                    # MAIL FROM's SIZE= over the server's limit: this message, not the channel.
                    return DeliveryError("too_large", detail, retryable=False)
                return DeliveryError("rejected_sender", detail, retryable=True, channel_down=True)
            if isinstance(exc, aiosmtplib.SMTPConnectResponseError | aiosmtplib.SMTPHeloError):
                # The server refuses our connection itself (554 at the greeting: our address
                # blocklisted, a relay that is not ours): no page gets through, and a page
                # failed for good here would be lost once it is fixed.
                return DeliveryError("refused", detail, retryable=True, channel_down=True)
            return DeliveryError("rejected", detail, retryable=False)
        if isinstance(exc, TimeoutError):
            return DeliveryError(
                "timeout",
                f"{where} did not finish within {self._bound:g}s",
                retryable=True,
            )
        if isinstance(exc, ssl.SSLCertVerificationError) or (
            isinstance(exc, aiosmtplib.SMTPConnectError) and isinstance(exc.__cause__, ssl.SSLError)
        ):
            # A certificate that does not verify is a configuration problem, not bad luck.
            return DeliveryError(
                "tls",
                self._scrub(f"TLS with {where} failed: {exc}"),
                retryable=True,
                channel_down=True,
            )
        if isinstance(exc, ConnectionError | OSError):
            # SMTPConnectError and SMTPServerDisconnected are ConnectionErrors too.
            return DeliveryError(
                "connection", self._scrub(f"cannot talk to {where}: {exc}"), retryable=True
            )
        if isinstance(exc, aiosmtplib.SMTPNotSupported):
            # SMTPUTF8 needed by this page's address: other pages still go.
            return DeliveryError(
                "unsupported", self._scrub(f"{where}: {exc.message}"), retryable=False
            )
        if isinstance(exc, aiosmtplib.SMTPException):
            # What is left are missing capabilities of the connection (STARTTLS required but
            # not offered, AUTH not offered): every page fails alike until the server or our
            # settings are fixed, as for a certificate that does not verify.
            return DeliveryError(
                "unsupported",
                self._scrub(f"{where}: {exc.message}"),
                retryable=True,
                channel_down=True,
            )
        return DeliveryError(
            "internal", f"email to {where} failed: {type(exc).__name__}", retryable=True
        )

    async def close(self) -> None:
        # Nothing is held between pages: each send opens and closes its own connection.
        return None

"""A real SMTP server on loopback for tests and drills: aiosmtpd's ``Controller`` with switches.

``SmtpTestServer`` is an async context manager that starts aiosmtpd on 127.0.0.1 (in the
Controller's own thread) and collects every accepted message, parsed, with its envelope. It can
offer STARTTLS (and require it), speak implicit TLS, require AUTH, refuse one recipient with
550, and defer the next N transactions with 451. ``self_signed_cert`` makes a certificate for
``localhost`` and ``127.0.0.1`` with the ``openssl`` command, so TLS is tested for real: the
client verifies it against the certificate as its CA bundle.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import ssl
import subprocess
import threading
import weakref
from collections.abc import Collection
from dataclasses import dataclass
from email.message import EmailMessage
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


class TlsMode(StrEnum):
    NONE = "none"  # plain text, no STARTTLS offered
    STARTTLS = "starttls"  # plain connect, STARTTLS offered and required before MAIL
    TLS = "tls"  # implicit TLS from the first byte (port 465 style)


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """One message the server accepted."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    raw: bytes
    tls: bool  # the transaction ran over TLS (STARTTLS or implicit)
    login: str | None  # the AUTH user, if any


def self_signed_cert(
    directory: Path, hostname: str = "localhost", *, with_loopback_ip: bool = True
) -> tuple[Path, Path]:
    """Write ``cert.pem`` and ``key.pem`` for ``hostname`` and 127.0.0.1 (unless
    ``with_loopback_ip`` is false); return their paths.

    The certificate is its own CA: pass ``cert.pem`` as the client's CA bundle.
    """
    names = f"DNS:{hostname},IP:127.0.0.1" if with_loopback_ip else f"DNS:{hostname}"
    cert = directory / "cert.pem"
    key = directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={hostname}",
            "-addext",
            f"subjectAltName={names}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


def _free_port() -> int:
    # aiosmtpd's Controller connects to its own port to check readiness, so it cannot be
    # given port 0; a just-freed port is taken instead (the race is harmless on loopback).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Handler:
    """aiosmtpd hooks: refuse listed recipients, defer transactions on demand, keep the rest."""

    def __init__(self, server: SmtpTestServer) -> None:
        self._server = server

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self._server.auth_required and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address.lower() in self._server.reject_recipients:
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self._server.take_deferral():
            return "451 4.3.0 Temporary failure, try again later"
        raw = envelope.original_content or envelope.content or b""
        raw_bytes = raw if isinstance(raw, bytes) else raw.encode("utf-8")
        parsed = email.message_from_bytes(raw_bytes, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)  # policy.default builds EmailMessage
        auth_data = session.auth_data
        self._server.messages.append(
            ReceivedMessage(
                mail_from=envelope.mail_from or "",
                rcpt_tos=list(envelope.rcpt_tos),
                message=parsed,
                raw=raw_bytes,
                tls=session.ssl is not None or self._server.mode is TlsMode.TLS,
                login=auth_data.login.decode() if isinstance(auth_data, LoginPassword) else None,
            )
        )
        if self._server.answer_delay:
            # The message is taken; the answer is late (a server stalled writing it to disk).
            await asyncio.sleep(self._server.answer_delay)
        return "250 2.0.0 OK"


def _accepting(loop: asyncio.AbstractEventLoop) -> set[asyncio.Task[Any]]:
    """asyncio's own tasks that set up a connection just accepted."""
    return {
        task
        for task in asyncio.all_tasks(loop)
        if getattr(task.get_coro(), "__name__", "") == "_accept_connection2"
    }


class _Controller(Controller):
    """aiosmtpd's Controller, whose ``stop()`` closes the connections still open.

    Its own stop closes the event loop without closing them: a client that had just
    connected then waited for a greeting until its own timeout (25 s for the daemon's email
    adapter, so that long a test teardown whenever a page was on its way)."""

    def __init__(self, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()  # the loop's thread only

    def factory(self) -> SMTP:
        session = SMTP(self.handler, **self.SMTP_kwargs)  # as Controller.factory makes it
        self._sessions.add(session)
        return session

    async def _hang_up(self) -> None:
        """Refuse new connections and close the open ones, as a real server going down."""
        assert self.server is not None
        # asyncio's Server.close() leaks a connection accepted but not yet set up (making
        # its transport fails an assertion, and its socket stays open): close between them.
        give_up = self.loop.time() + 1.0  # a TLS handshake may linger
        while (accepting := _accepting(self.loop)) and self.loop.time() < give_up:
            await asyncio.wait(accepting, timeout=give_up - self.loop.time())
        self.server.close()
        for session in list(self._sessions):
            if isinstance(session.transport, asyncio.Transport):
                session.transport.abort()
        await asyncio.sleep(0)  # the aborted transports close their sockets

    def stop(self, no_assert: bool = False) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self._hang_up(), self.loop).result()
        super().stop(no_assert)


class SmtpTestServer:
    """aiosmtpd on 127.0.0.1 as an async context manager; ``messages`` fills as mail arrives."""

    def __init__(
        self,
        *,
        mode: TlsMode = TlsMode.NONE,
        cert: Path | None = None,
        key: Path | None = None,
        auth: tuple[str, str] | None = None,
        reject_recipients: Collection[str] = (),
        defer_next: int = 0,
        port: int = 0,
    ) -> None:
        if mode is not TlsMode.NONE and (cert is None or key is None):
            raise ValueError(f"mode {mode} needs cert and key")
        self.mode = mode
        self.host = "127.0.0.1"
        self.port = port  # 0: a free one, chosen at start
        self.messages: list[ReceivedMessage] = []
        self.reject_recipients = frozenset(r.lower() for r in reject_recipients)
        self.auth_attempts: list[tuple[str, bool]] = []  # (login, accepted)
        self._auth = auth
        self.auth_required = auth is not None
        self._cert = cert
        self._key = key
        # The handler runs in the Controller's thread; the counter is shared with the test.
        self._lock = threading.Lock()
        self._defer = defer_next
        self.answer_delay = 0.0  # seconds between taking a message and answering 250
        self._controller: _Controller | None = None

    def defer_next(self, count: int) -> None:
        """Answer the next ``count`` transactions' DATA with 451 (a temporary failure)."""
        with self._lock:
            self._defer = count

    def take_deferral(self) -> bool:
        with self._lock:
            if self._defer > 0:
                self._defer -= 1
                return True
            return False

    def _authenticate(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        if self._auth is None or not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode()
        password = auth_data.password.decode()
        ok = (login, password) == self._auth
        self.auth_attempts.append((login, ok))
        if ok:
            return AuthResult(success=True, auth_data=auth_data)
        # handled=False lets aiosmtpd answer "535 5.7.8 Authentication credentials invalid".
        return AuthResult(success=False, handled=False)

    def _ssl_context(self) -> ssl.SSLContext:
        assert self._cert is not None
        assert self._key is not None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self._cert, self._key)
        return context

    async def __aenter__(self) -> Self:
        self.port = self.port or _free_port()
        smtp_kwargs: dict[str, Any] = {}
        controller_kwargs: dict[str, Any] = {}
        if self.mode is TlsMode.STARTTLS:
            smtp_kwargs |= {"tls_context": self._ssl_context(), "require_starttls": True}
        elif self.mode is TlsMode.TLS:
            controller_kwargs["ssl_context"] = self._ssl_context()
        if self._auth is not None:
            # Loopback tests of plain mode still exercise AUTH, hence auth_require_tls=False.
            # AUTH is then enforced at MAIL by the handler rather than with auth_required,
            # which aiosmtpd warns about when combined with auth_require_tls=False.
            smtp_kwargs |= {"authenticator": self._authenticate, "auth_require_tls": False}
        self._controller = _Controller(
            _Handler(self),
            hostname=self.host,
            port=self.port,
            server_hostname="localhost",
            ready_timeout=10.0,
            **controller_kwargs,
            **smtp_kwargs,
        )
        # start() blocks until the server thread is ready: keep it off the event loop.
        await asyncio.to_thread(self._controller.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._controller is not None:
            await asyncio.to_thread(self._controller.stop)
            self._controller = None

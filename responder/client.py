"""A small client of the daemon's own API, for the CLI: same config, same credentials."""

from __future__ import annotations

import base64
import json
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from responder.auth import token_path
from responder.config import Config
from responder.secrets import read_secret_file
from responder.yamlfile import ConfigError


class ClientError(Exception):
    """The daemon could not be reached or refused the request; the message says why.
    ``status`` is the daemon's HTTP status when it answered (a refusal), None when it could
    not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class CertificateRefused(ClientError):
    """The daemon's certificate is not one this command trusts: retrying cannot help."""


class CredentialsMissing(ClientError):
    """The config names no credentials and no generated token was found: a matter of
    configuration (or of --state-dir), which retrying cannot help."""


# The first certificate of a PEM file: the leaf, when a chain follows it.
_FIRST_PEM_CERTIFICATE = re.compile(
    r"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)

# OpenSSL's verify codes for a certificate outside its dates: X509_V_ERR_CERT_NOT_YET_VALID,
# X509_V_ERR_CERT_HAS_EXPIRED.
_OUT_OF_DATE = frozenset({9, 10})


@dataclass(frozen=True, slots=True)
class ApiClient:
    base_url: str
    authorization: str
    ssl_context: ssl.SSLContext | None = None
    # What the operator can do when the daemon's certificate is refused (the trust in use).
    trust_hint: str = ""

    @classmethod
    def from_config(
        cls, config: Config, url: str | None = None, cacert: Path | None = None
    ) -> ApiClient:
        """A client of the daemon of ``config``, at ``url`` or else at its listen address.

        HTTPS trust: ``cacert`` alone when given; else, at the listen address, exactly the
        daemon's own certificate (``server.tls.cert_file``); else this system's CAs, plus
        that certificate when the config has one. The host name is checked against the
        certificate whenever the operator chose the address or the CA; it is not when the
        daemon's own certificate is pinned at the address read from the config, which a
        certificate rarely names (127.0.0.1 for 0.0.0.0): only the holder of that
        certificate's key can present it, whatever name it carries."""
        server = config.server
        scheme = "https" if server.tls is not None else "http"
        host = server.host
        if host in ("0.0.0.0", "::"):  # noqa: S104 - reading the config, not binding
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"  # noqa: S104
        host = f"[{host}]" if ":" in host else host
        if url is not None and not url.lower().startswith(("http://", "https://")):
            # Else aiohttp's "cannot reach" (exit 3, try again) for a typo retrying cannot fix.
            raise ConfigError(
                "--url", 0, "url", f"expected an http:// or https:// URL, got {url!r}"
            )
        base = (url or f"{scheme}://{host}:{server.port}").rstrip("/")
        context: ssl.SSLContext | None = None
        hint = ""
        if base.lower().startswith("https://"):
            context, hint = _trust(config, cacert, pinned=url is None)
        elif cacert is not None:
            # Silently unused, it would let the operator believe the daemon was verified.
            raise ConfigError(
                "--cacert",
                0,
                "",
                f"the daemon is at {base}, plain HTTP: there is no "
                "certificate to check (an https:// --url, or server.tls in the config)",
            )
        return cls(base, _authorization(config), context, hint)

    async def request(
        self, method: str, path: str, *, params: Any = None, body: Any = None
    ) -> dict[str, Any]:
        headers = {"Authorization": self.authorization}
        timeout = aiohttp.ClientTimeout(total=30)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.request(
                    method,
                    self.base_url + path,
                    params=params,
                    json=body,
                    headers=headers,
                    ssl=self.ssl_context if self.ssl_context is not None else True,
                ) as response,
            ):
                text = await response.text()
                try:
                    document = json.loads(text)
                except ValueError:
                    document = {"error": text.strip()}
                if response.status >= 400:
                    raise ClientError(
                        f"{response.status}: {document.get('error', text)}", response.status
                    )
                if not isinstance(document, dict):
                    raise ClientError("the daemon answered something that is not a JSON object")
                return document
        except aiohttp.ClientConnectorCertificateError as exc:
            reason = exc.certificate_error
            detail = (getattr(reason, "verify_message", None) or str(reason)).rstrip(".")
            hint = self.trust_hint
            if getattr(reason, "verify_code", None) in _OUT_OF_DATE:
                # The certificate may well be the trusted one: another trust cannot help.
                hint = (
                    "renew it (the daemon's own is server.tls.cert_file, read at its start), "
                    "or set this machine's clock right"
                )
            raise CertificateRefused(
                f"the daemon at {self.base_url} presented a certificate this command does "
                f"not trust ({detail}); {hint}"
            ) from None
        except aiohttp.ClientError as exc:
            raise ClientError(
                f"cannot reach the daemon at {self.base_url}: {exc} (another address: --url)"
            ) from None


def _trust(config: Config, cacert: Path | None, *, pinned: bool) -> tuple[ssl.SSLContext, str]:
    """The TLS context for the daemon, and what to do if its certificate is refused."""
    tls = config.server.tls
    if cacert is not None:
        context = _verifying_context(system_cas=False)
        try:
            context.load_verify_locations(cafile=str(cacert))
        except (OSError, ssl.SSLError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(
                "--cacert", 0, "", f"cannot load {cacert} as PEM certificates: {reason}"
            ) from None
        return context, (
            f"{cacert} (--cacert) is not its certificate nor the CA that issued it, or the "
            "certificate does not name the host of the URL (choose it with --url)"
        )
    if tls is None:
        return _verifying_context(system_cas=True), (
            "trust its certificate or CA with --cacert FILE"
        )
    if pinned:
        context = _verifying_context(system_cas=False)
        context.check_hostname = False
        context.load_verify_locations(cadata=_first_certificate(config, tls.cert_file))
        return context, (
            f"it is not server.tls.cert_file ({tls.cert_file}): after a renewal, restart the "
            "daemon; or trust its CA with --cacert FILE"
        )
    # --url: the daemon by a name its certificate carries, or another server (a proxy) that
    # this system's CAs vouch for.
    context = _verifying_context(system_cas=True)
    context.load_verify_locations(cadata=_first_certificate(config, tls.cert_file))
    return context, (
        "neither this system's CAs nor server.tls.cert_file vouch for it, or the certificate "
        "does not name the host of --url; trust its certificate or CA with --cacert FILE"
    )


def _verifying_context(*, system_cas: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, and checks the host name
    if system_cas:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    # A trusted certificate that a CA issued is trusted itself, without its CA: OpenSSL
    # otherwise accepts only a chain up to a self-signed root (Python 3.13 sets it too).
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def _first_certificate(config: Config, path: Path) -> str:
    """The daemon's own certificate, the first of its ``cert_file`` (a chain may follow):
    trusting the chain's CA as well would let any certificate it issued pass for the
    daemon's, since the host name is not checked against a pinned certificate."""
    key = "server.tls.cert_file"
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        reason = f"cannot read {path}: {exc.strerror or exc}"
        advice = "trust the daemon's certificate or CA with --cacert FILE instead"
        raise ConfigError(str(config.path), 0, key, f"{reason}; {advice}") from None
    found = _FIRST_PEM_CERTIFICATE.search(text)
    if found is None:
        raise ConfigError(str(config.path), 0, key, f"no PEM certificate in {path}")
    return found.group(0)


def _authorization(config: Config) -> str:
    auth = config.auth
    if auth.bearer_token is not None:
        return f"Bearer {auth.bearer_token.value}"
    if auth.basic_username is not None and auth.basic_password is not None:
        pair = f"{auth.basic_username}:{auth.basic_password.value}".encode()
        return "Basic " + base64.b64encode(pair).decode()
    path = token_path(config.state_dir)
    try:
        return f"Bearer {read_secret_file(path).value}"
    except OSError:
        raise CredentialsMissing(
            f"no credentials: the config names none and {path} does not exist "
            "(start the daemon once, or run `responder token`; a daemon started with"
            " --state-dir keeps its token there: pass the same --state-dir)"
        ) from None

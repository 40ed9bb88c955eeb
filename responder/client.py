"""A small client of the daemon's own API, for the CLI: same config, same credentials."""

from __future__ import annotations

import base64
import json
import ssl
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class ApiClient:
    base_url: str
    authorization: str
    ssl_context: ssl.SSLContext | None = None

    @classmethod
    def from_config(cls, config: Config, url: str | None = None) -> ApiClient:
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
        base = url or f"{scheme}://{host}:{server.port}"
        context: ssl.SSLContext | None = None
        if server.tls is not None and url is None:
            # Trust the daemon's own certificate: a self-signed one works without flags.
            context = ssl.create_default_context(cafile=str(server.tls.cert_file))
            context.check_hostname = False
        return cls(base.rstrip("/"), _authorization(config), context)

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
        except aiohttp.ClientError as exc:
            raise ClientError(
                f"cannot reach the daemon at {self.base_url}: {exc} (another address: --url)"
            ) from None


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
        raise ClientError(
            f"no credentials: the config names none and {path} does not exist "
            "(start the daemon once, or run `responder token`)"
        ) from None

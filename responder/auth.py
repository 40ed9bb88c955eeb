"""Who may talk to the daemon: bearer token and/or HTTP basic auth, compared in constant time.

When the config names no credentials, the first start generates a token into the state
directory (mode 0600) so that the daemon is never open by default.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import secrets
import tempfile
from pathlib import Path

from responder.config import AuthConfig
from responder.secrets import Secret, read_secret_file

TOKEN_FILE = "webhook-token"  # noqa: S105 - a file name, not a secret


def token_path(state_dir: Path) -> Path:
    return state_dir / TOKEN_FILE


def ensure_generated_token(state_dir: Path) -> tuple[Secret, bool]:
    """Read the generated token, creating it first if needed; returns (token, created)."""
    return ensure_generated_secret(token_path(state_dir))


def ensure_generated_secret(path: Path) -> tuple[Secret, bool]:
    """Read a generated secret file (mode 0600), creating it first if needed.

    The file appears whole or not at all: the secret is written and synced under a temporary
    name, then linked into place, which fails if another process got there first (two
    first starts at once, ``responder token`` beside ``serve``); then theirs is read. An empty
    file (cut short by a crash of an older release) is refused: it would let anyone in."""
    if not path.exists():
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:  # a file in the way, no permission: name the state directory
            why = "a file is in the way" if isinstance(exc, FileExistsError) else exc.strerror
            raise OSError(f"cannot create the state directory {path.parent}: {why}") from exc
        token = secrets.token_urlsafe(32)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(token + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            created = _linked(temporary, path)
        finally:
            os.unlink(temporary)
        if created:
            return Secret(token, f"file {path}"), True
        # Another process made it first: theirs is read below.
    secret = read_secret_file(path)
    if not secret.value:
        raise OSError(
            f"the generated secret file {path} is empty; delete it, and the next start "
            "makes a new one"
        )
    return secret, False


def _linked(source: str, target: Path) -> bool:
    """Link ``source`` at ``target``; False when ``target`` exists already."""
    try:
        os.link(source, target)
    except FileExistsError:
        return False
    except OSError:
        # A file system without hard links (some network and FUSE ones): created in place,
        # exclusively; a racer may then read it before it is written, and refuse it empty.
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as out:
            out.write(Path(source).read_bytes())
            out.flush()
            os.fsync(out.fileno())
    return True


class Authenticator:
    """Checks an ``Authorization`` header against the configured credentials."""

    def __init__(self, config: AuthConfig, generated_token: Secret | None = None) -> None:
        token = config.bearer_token or generated_token
        self._token = token.value.encode() if token is not None else None
        self._basic: bytes | None = None
        if config.basic_username is not None and config.basic_password is not None:
            self._basic = f"{config.basic_username}:{config.basic_password.value}".encode()
        if self._token is None and self._basic is None:
            raise ValueError("an Authenticator needs a token or basic credentials")

    @property
    def schemes(self) -> list[str]:
        names = []
        if self._token is not None:
            names.append("Bearer")
        if self._basic is not None:
            names.append("Basic")
        return names

    def check(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, value = header.strip().partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == "bearer" and self._token is not None:
            # aiohttp keeps undecodable header bytes as surrogates: give them back as bytes.
            return hmac.compare_digest(value.encode("utf-8", "surrogateescape"), self._token)
        if scheme == "basic" and self._basic is not None:
            try:
                decoded = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return False
            return hmac.compare_digest(decoded, self._basic)
        return False

    def challenge(self) -> str:
        """The ``WWW-Authenticate`` value for a 401."""
        return ", ".join(f'{scheme} realm="responder"' for scheme in self.schemes)

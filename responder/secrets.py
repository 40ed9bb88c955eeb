"""Secrets come from files or the environment, never from the YAML itself, never into a log.

In config, a secret named ``password`` is given as ``password_file: /path`` or
``password_env: NAME``. A literal ``password:`` key is refused with a message saying why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from responder.yamlfile import Node


@dataclass(frozen=True, slots=True)
class Secret:
    """A secret value whose repr and str never show it."""

    value: str = field(repr=False)
    source: str  # "file /etc/responder/token" or "env RESPONDER_TOKEN": safe to log

    def __str__(self) -> str:
        return f"<secret from {self.source}>"


def read_secret_file(path: Path, source: str | None = None) -> Secret:
    """Read a secret file; surrounding whitespace (a trailing newline) is not part of it."""
    value = path.read_text(encoding="utf-8").strip()
    return Secret(value, source or f"file {path}")


def read_secret(
    parent: Node, name: str, base_dir: Path, *, required: bool = False, one_line: bool = True
) -> Secret | None:
    """Read secret ``name`` of a config mapping from ``<name>_file`` or ``<name>_env``.
    ``one_line``: a credential that goes into a header or a login (all but an action's
    secret variables); a file with more lines is the wrong file, or the secret beside
    something else, and would fail only when first used."""
    if name in parent:
        raise parent[name].error(
            f"secrets are not written in config; use {name}_file or {name}_env"
        )
    file_node = parent.get(f"{name}_file")
    env_node = parent.get(f"{name}_env")
    if file_node is not None and env_node is not None:
        raise env_node.error(f"give {name}_file or {name}_env, not both")
    if file_node is not None:
        path = Path(file_node.as_str())
        if not path.is_absolute():
            path = base_dir / path
        try:
            secret = read_secret_file(path)
        except OSError as exc:
            raise file_node.error(
                f"cannot read secret file {path}: {exc.strerror or exc}"
            ) from None
        except UnicodeDecodeError:
            raise file_node.error("secret file is not valid UTF-8") from None
        if not secret.value:
            raise file_node.error("secret file is empty")
        if one_line and _lines(secret.value):
            raise file_node.error(
                "secret file holds more than one line; put the secret alone in it"
            )
        return secret
    if env_node is not None:
        var = env_node.as_str()
        value = os.environ.get(var, "")
        if not value:
            raise env_node.error(f"environment variable {var} is not set or empty")
        if one_line and _lines(value):
            raise env_node.error(f"environment variable {var} holds more than one line")
        return Secret(value, f"env {var}")
    if required:
        raise parent.error(f"missing secret: give {name}_file or {name}_env")
    return None


def _lines(value: str) -> bool:
    return "\n" in value or "\r" in value

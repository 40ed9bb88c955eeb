"""Evidence folders: one per incident under the state dir, each capture with a SHA-256 manifest.

The folder name comes from the incident id (which responder made) and never from a label, so
an alert cannot steer where evidence is written. Each capture gets its own sub-folder named by
time and action; files are written owner-only, then ``manifest.json`` lists every file with
its size and SHA-256 so that a later review can show the evidence was not altered.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def incident_folder_name(incident_id: str) -> str:
    """``incident-<id>`` when the id is plain, else a digest of it: never a path of its own."""
    if _SAFE_ID.fullmatch(incident_id):
        return f"incident-{incident_id}"
    digest = hashlib.sha256(incident_id.encode("utf-8", "surrogatepass")).hexdigest()[:24]
    return f"incident-{digest}"


def capture_folder(root: Path, incident_id: str, action: str, now: datetime) -> Path:
    stamp = now.strftime("%Y%m%dT%H%M%S%fZ")
    safe_action = re.sub(r"[^A-Za-z0-9_.-]", "_", action)[:64]
    return root / incident_folder_name(incident_id) / f"{stamp}-{safe_action}"


@dataclass(frozen=True, slots=True)
class EvidenceItem:
    name: str  # file name inside the capture folder, chosen by responder
    kind: str  # journal | file | command
    source: str  # unit, path or command name
    data: bytes = field(repr=False)
    truncated: bool = False
    meta: Mapping[str, Any] = field(default_factory=dict)


def read_tail(path: Path, max_bytes: int) -> tuple[bytes, bool]:
    """The last ``max_bytes`` of a file (the newest log lines), and whether it was cut. A
    FIFO or a device is refused: opening a FIFO waits for a writer, and reading a device
    may never end (O_NONBLOCK makes the open itself return at once)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        size = os.fstat(fd).st_size
        if size > max_bytes:
            fh.seek(size - max_bytes)
            return fh.read(max_bytes), True
        return fh.read(max_bytes + 1)[:max_bytes], False


def write_capture(folder: Path, items: Sequence[EvidenceItem], header: Mapping[str, Any]) -> str:
    """Write the items and their manifest; returns the manifest's own SHA-256."""
    _private_dir(folder.parent)
    folder.mkdir(mode=0o700)
    entries: list[dict[str, Any]] = []
    for item in items:
        _write_private(folder / item.name, item.data)
        entries.append(
            {
                "name": item.name,
                "kind": item.kind,
                "source": item.source,
                "bytes": len(item.data),
                "sha256": hashlib.sha256(item.data).hexdigest(),
                "truncated": item.truncated,
                **item.meta,
            }
        )
    manifest = json.dumps({**header, "files": entries}, indent=2, sort_keys=True).encode()
    _write_private(folder / "manifest.json", manifest)
    return hashlib.sha256(manifest).hexdigest()


def _private_dir(path: Path) -> None:
    """``path`` and the folders missing above it, owner-only: ``mkdir(parents=True)`` makes
    the parents 0777 less the umask (0755), and their names tell which incidents had
    evidence taken, when and by which action."""
    if not path.parent.exists():
        _private_dir(path.parent)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)


def _write_private(path: Path, data: bytes) -> None:
    # O_EXCL: a capture never overwrites anything, even if something raced into the folder.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)

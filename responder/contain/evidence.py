"""Evidence folders: one per incident under the state dir, each capture with a SHA-256 manifest.

The folder name comes from the incident id (which responder made) and never from a label, so
an alert cannot steer where evidence is written. Each capture gets its own sub-folder named by
time and action; files are written owner-only, then ``manifest.json`` lists every file with
its size and SHA-256 so that a later review can show the evidence was not altered.

``prune`` is retention: captures older than a limit, and the oldest past a total size, are
deleted. It works through directory file descriptors and never follows a symlink, and it
only deletes what it recognises as a capture by its name, so nothing outside the evidence
folder (nor an operator's own file in it) is ever touched.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import stat
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


_STAMP = "%Y%m%dT%H%M%S%fZ"
# What capture_folder names, and nothing else: incident-<id or digest>/<stamp>-<action>[-n].
_INCIDENT_FOLDER = re.compile(r"incident-[A-Za-z0-9_-]{1,64}")
_CAPTURE_FOLDER = re.compile(r"(\d{8}T\d{12})Z-[A-Za-z0-9_.-]{1,64}(?:-\d+)?")


def root(state_dir: Path) -> Path:
    """Where evidence is written: one folder per incident under it."""
    return state_dir / "evidence"


def incident_folder_name(incident_id: str) -> str:
    """``incident-<id>`` when the id is plain, else a digest of it: never a path of its own."""
    if _SAFE_ID.fullmatch(incident_id):
        return f"incident-{incident_id}"
    digest = hashlib.sha256(incident_id.encode("utf-8", "surrogatepass")).hexdigest()[:24]
    return f"incident-{digest}"


def capture_folder(root: Path, incident_id: str, action: str, now: datetime) -> Path:
    stamp = now.strftime(_STAMP)
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


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one retention pass deleted: captures, their bytes, incident folders left empty;
    and the captures it could not delete (an error each, left for the next pass)."""

    captures: int = 0
    bytes: int = 0
    incidents: int = 0
    errors: int = 0


@dataclass(frozen=True, slots=True)
class _Capture:
    incident: str
    name: str
    at: datetime
    size: int


_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def prune(
    folder: Path,
    now: datetime,
    *,
    max_age: timedelta | None,
    max_total_bytes: int | None,
    open_incidents: Collection[str] = (),
) -> Pruned:
    """Delete the captures under ``folder`` taken before ``now - max_age``, then the oldest
    until the rest hold at most ``max_total_bytes``; an incident folder left empty goes too.
    The captures of ``open_incidents`` (ids) are kept whatever their age: the review has
    not happened yet. Past the total size they go last, after every closed incident's.
    ``folder`` itself is where the operator put it (it may be a link); below it, symlinks
    are left alone, never followed, and names capture_folder would not make are not ours."""
    try:
        root_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return Pruned()
    try:
        still_open = {incident_folder_name(i) for i in open_incidents}
        # Oldest first, the open incidents' after all the others.
        captures = sorted(_captures(root_fd), key=lambda c: (c.incident in still_open, c.at))
        doomed: list[_Capture] = []
        if max_age is not None:
            doomed = [c for c in captures if c.at < now - max_age and c.incident not in still_open]
        aged = set(doomed)
        left = [c for c in captures if c not in aged]
        if max_total_bytes is not None:
            total = sum(c.size for c in left)
            while left and total > max_total_bytes:
                total -= left[0].size
                doomed.append(left.pop(0))
        deleted, size, errors = 0, 0, 0
        for victim in doomed:
            try:
                fd = os.open(victim.incident, _DIR, dir_fd=root_fd)
                try:
                    # With dir_fd, rmtree works through descriptors and never follows a link.
                    shutil.rmtree(victim.name, dir_fd=fd)
                finally:
                    os.close(fd)
            except OSError:
                errors += 1
            else:
                deleted, size = deleted + 1, size + victim.size
        emptied = 0
        for name in sorted({c.incident for c in doomed}):
            try:
                os.rmdir(name, dir_fd=root_fd)  # only if empty; rmdir never follows a link
            except OSError:
                continue
            emptied += 1
        return Pruned(deleted, size, emptied, errors)
    finally:
        os.close(root_fd)


def _captures(root_fd: int) -> Iterator[_Capture]:
    """Every capture folder under the evidence folder, with its time and size."""
    with os.scandir(root_fd) as incidents:
        names = [
            e.name
            for e in incidents
            if _INCIDENT_FOLDER.fullmatch(e.name) and e.is_dir(follow_symlinks=False)
        ]
    for incident in names:
        try:
            fd = os.open(incident, _DIR, dir_fd=root_fd)
        except OSError:
            continue  # gone, or replaced by a link, since it was listed
        try:
            with os.scandir(fd) as entries:
                found = [
                    (e.name, m.group(1))
                    for e in entries
                    if (m := _CAPTURE_FOLDER.fullmatch(e.name)) and e.is_dir(follow_symlinks=False)
                ]
            for name, stamp in found:
                try:
                    at = datetime.strptime(stamp + "Z", _STAMP).replace(tzinfo=UTC)
                    size = _size(fd, name)
                except (ValueError, OSError):
                    continue
                yield _Capture(incident, name, at, size)
        finally:
            os.close(fd)


def _size(parent_fd: int, name: str) -> int:
    """Bytes of the regular files directly in a capture folder (the runner writes no more)."""
    fd = os.open(name, _DIR, dir_fd=parent_fd)
    try:
        with os.scandir(fd) as entries:
            return sum(
                e.stat(follow_symlinks=False).st_size
                for e in entries
                if e.is_file(follow_symlinks=False)
            )
    finally:
        os.close(fd)

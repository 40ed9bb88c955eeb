"""The store on a real filesystem that fills up: a small ext4 image, loop-mounted (root only)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from responder.store import CommitStats, SQLiteStore, StoreError
from responder.store import sqlite as sqlite_engine
from tests.test_store_sqlite import alert

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MB ext4 filesystem of the test's own, mounted at the path given."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    image, mount_point = tmp_path / "disk.img", tmp_path / "mnt"
    mount_point.mkdir()
    with image.open("wb") as sink:
        sink.truncate(24 * 1024 * 1024)
    made = subprocess.run(["mkfs.ext4", "-q", str(image)], capture_output=True, check=False)
    mounted = subprocess.run(
        ["mount", "-o", "loop", str(image), str(mount_point)], capture_output=True, check=False
    )
    if made.returncode or mounted.returncode:
        pytest.skip(f"cannot mount a loop filesystem here: {(made.stderr or mounted.stderr)!r}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def fill(disk: Path) -> Path:
    """Take every free block of ``disk`` with one file; returns it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 1 << 12):  # large writes, then small ones for the last blocks
            with contextlib.suppress(OSError):  # ENOSPC: full at this size
                while os.write(fd, b"\0" * size) == size:
                    continue
    finally:
        os.close(fd)
    return filler


async def test_a_full_disk_gives_up_the_reserve_so_writes_go_on(
    small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills: the write that meets it fails (503 for a webhook, Alertmanager sends
    again), the reserve set aside at open is given up, and the writes that follow commit,
    the outbox's among them: a full disk does not silence paging. Once space returns, the
    reserve is set aside again, without a restart."""
    commits: list[CommitStats] = []
    store = SQLiteStore(small_disk / "state" / "responder.db", on_commit=commits.append)
    await store.open()
    try:
        reserve = small_disk / "state" / "responder.db.reserve"
        assert reserve.stat().st_blocks * 512 >= sqlite_engine.RESERVE_BYTES
        await store.ingest([alert("f000000000000000")], T0)
        filler = fill(small_disk)

        with pytest.raises(StoreError, match="full"):
            await store.ingest([alert(f"{n:016x}") for n in range(1, 200)], T0)
        assert not reserve.exists()
        assert not await store.ping()
        await store.ingest([alert(f"{n:016x}") for n in range(1, 200)], T0)
        assert await store.ping()
        assert commits[-1].reserve_given_up  # responder_store_disk_full 1: free space

        filler.unlink()
        monkeypatch.setattr(sqlite_engine, "RESERVE_CHECK_S", 0.0)
        await store.ingest([alert("f000000000000001")], T0 + timedelta(seconds=1))
        assert reserve.stat().st_blocks * 512 >= sqlite_engine.RESERVE_BYTES
        assert not commits[-1].reserve_given_up
    finally:
        await store.close()

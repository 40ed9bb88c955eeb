"""Evidence retention: captures older than containment.evidence_retention, and the oldest
past containment.evidence_max_total_bytes, are deleted; nothing outside the evidence folder
is ever touched, and no symlink is followed."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from responder.clock import FakeClock
from responder.contain import evidence
from responder.contain.catalog import parse_containment
from responder.yamlfile import ConfigError, load_text
from tests.conftest import AUTH, ClientFactory, payload, write_config
from tests.test_ingest import post

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


async def deleted(path: Path) -> bool:
    """Whether the daemon's retention pass deletes ``path`` within about 3 s."""
    for _ in range(300):
        if not await asyncio.to_thread(path.exists):
            return True
        await asyncio.sleep(0.01)
    return False


def capture(root: Path, incident: str, age: timedelta, size: int = 10) -> Path:
    """A capture as the runner writes it, taken ``age`` before NOW."""
    folder = evidence.capture_folder(root, incident, "preserve", NOW - age)
    item = evidence.EvidenceItem("file-1.log", "file", "/var/log/auth.log", b"x" * size)
    evidence.write_capture(folder, [item], {"action": "preserve"})
    return folder


def test_captures_older_than_the_retention_go_and_empty_incident_folders_with_them(
    tmp_path: Path,
) -> None:
    root = tmp_path / "evidence"
    old = capture(root, "1", timedelta(days=91))
    kept = capture(root, "2", timedelta(days=89))
    older_of_2 = capture(root, "2", timedelta(days=200))
    done = evidence.prune(root, NOW, max_age=timedelta(days=90), max_total_bytes=None)
    assert (done.captures, done.incidents, done.errors) == (2, 1, 0)
    assert done.bytes > 20  # the files and their manifests
    assert not old.parent.exists()  # incident-1 had nothing else
    assert kept.exists()
    assert not older_of_2.exists()
    assert evidence.prune(root, NOW, max_age=timedelta(days=90), max_total_bytes=None).captures == 0


def test_past_the_total_size_the_oldest_captures_go_first(tmp_path: Path) -> None:
    root = tmp_path / "evidence"
    folders = [capture(root, str(n), timedelta(days=10 - n), size=1000) for n in range(5)]
    each = sum(f.stat().st_size for f in folders[0].iterdir())
    done = evidence.prune(root, NOW, max_age=None, max_total_bytes=3 * each)
    assert done.captures == 2
    assert [f.exists() for f in folders] == [False, False, True, True, True]


def test_an_open_incidents_captures_stay_past_the_retention_and_go_last_past_the_size(
    tmp_path: Path,
) -> None:
    root = tmp_path / "evidence"
    open_old = capture(root, "7", timedelta(days=300), size=1000)
    closed_old = capture(root, "8", timedelta(days=300), size=1000)
    done = evidence.prune(
        root, NOW, max_age=timedelta(days=90), max_total_bytes=None, open_incidents=["7"]
    )
    assert done.captures == 1
    assert open_old.exists()
    assert not closed_old.exists()

    # Past the total size, every closed incident's capture goes before an open one's, even
    # a newer one.
    closed_new = capture(root, "9", timedelta(days=1), size=1000)
    each = sum(f.stat().st_size for f in open_old.iterdir())
    done = evidence.prune(root, NOW, max_age=None, max_total_bytes=each, open_incidents=["7"])
    assert done.captures == 1
    assert open_old.exists()
    assert not closed_new.exists()
    done = evidence.prune(root, NOW, max_age=None, max_total_bytes=0, open_incidents=["7"])
    assert done.captures == 1  # the size is the disk's safety: open ones go too, last
    assert not open_old.exists()


def test_symlinks_are_never_followed_and_nothing_outside_is_deleted(tmp_path: Path) -> None:
    """An old-looking incident folder, capture folder and file that are symlinks to places
    outside the evidence folder: the links are left, what they point to is untouched."""
    root = tmp_path / "evidence"
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = outside / "precious.log"
    precious.write_text("keep me")
    (outside / "20200101T000000000000Z-preserve").mkdir()
    (outside / "20200101T000000000000Z-preserve" / "f").write_text("keep me too")
    old = capture(root, "1", timedelta(days=400))
    (old / "linked.log").symlink_to(precious)  # inside a capture that goes
    (root / "incident-9").symlink_to(outside)
    incident_2 = capture(root, "2", timedelta(days=1)).parent
    (incident_2 / "20200101T000000000000Z-preserve").symlink_to(outside)
    (root / "notes.txt").write_text("an operator's file: not ours")
    (root / "incident-3").mkdir()
    (root / "incident-3" / "not-a-capture").mkdir()
    done = evidence.prune(root, NOW, max_age=timedelta(days=90), max_total_bytes=1)
    assert not old.exists()
    assert precious.read_text() == "keep me"
    assert (outside / "20200101T000000000000Z-preserve" / "f").read_text() == "keep me too"
    assert (root / "incident-9").is_symlink()
    assert (incident_2 / "20200101T000000000000Z-preserve").is_symlink()
    assert (root / "notes.txt").exists()
    assert (root / "incident-3" / "not-a-capture").exists()
    assert done.errors == 0


def test_no_evidence_folder_is_nothing_to_do(tmp_path: Path) -> None:
    done = evidence.prune(tmp_path / "evidence", NOW, max_age=timedelta(days=1), max_total_bytes=1)
    assert done == evidence.Pruned()


def test_the_settings_default_to_90_days_and_take_forever_and_a_size() -> None:
    settings = parse_containment(None)
    assert settings.evidence_retention == timedelta(days=90)
    assert settings.evidence_max_total_bytes is None
    text = "evidence_retention: forever\nevidence_max_total_bytes: 1073741824\n"
    settings = parse_containment(load_text(text, "c.yaml"))
    assert settings.evidence_retention is None
    assert settings.evidence_max_total_bytes == 1 << 30
    with pytest.raises(ConfigError, match=r"c.yaml:1: evidence_retention: expected a dur"):
        parse_containment(load_text("evidence_retention: 1h\n", "c.yaml"))


async def test_the_daemon_prunes_evidence_where_it_prunes_its_records(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The retention loop (at start, then every 6 hours) deletes evidence past
    containment.evidence_retention, and logs how much."""
    root = tmp_path / "state" / "evidence"
    age = NOW - clock.now()  # capture() counts back from NOW, the daemon from its clock
    young = capture(root, "1", age + timedelta(days=6, hours=20))
    old = capture(root, "2", age + timedelta(days=8))
    caplog.set_level(logging.INFO, logger="responder")
    await make_client(write_config(tmp_path, "containment:\n  evidence_retention: 7d\n"))
    assert await deleted(old)
    assert young.exists()
    (record,) = [r for r in caplog.records if r.getMessage().startswith("old evidence deleted")]
    assert record.__dict__["fields"]["captures"] == 1
    clock.advance(timedelta(hours=6))  # the next pass: young is 7d2h old now
    assert await deleted(young)


async def test_the_daemon_keeps_an_open_incidents_evidence_past_the_retention(
    make_client: ClientFactory,
    tmp_path: Path,
    clock: FakeClock,
) -> None:
    """Incident 1 opens from a captured payload and stays open: its old evidence stays,
    the old evidence of incident 2 (never opened here, so not open) goes."""
    root = tmp_path / "state" / "evidence"
    client = await make_client(write_config(tmp_path, "containment:\n  evidence_retention: 7d\n"))
    assert (await post(client, payload("firing-api"))).status == 200
    listed = await client.get("/api/v1/incidents", headers=AUTH)
    assert [i["id"] for i in (await listed.json())["data"]] == [1]
    age = NOW - clock.now()  # both after the pass at start, found by the next one
    kept = capture(root, "1", age + timedelta(days=30))
    gone = capture(root, "2", age + timedelta(days=30))
    clock.advance(timedelta(hours=6))  # the next retention pass
    assert await deleted(gone)
    assert kept.exists()

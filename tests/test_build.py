"""What an install says of its build: which modules run compiled, and which are stale."""

from __future__ import annotations

import importlib.machinery
import os
from pathlib import Path

import pytest

from responder import __version__, build
from responder.cli import main

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(build, "PACKAGE", tmp_path)
    return tmp_path


def make(path: Path, mtime: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    os.utime(path, (mtime, mtime))


def test_a_tree_without_compiled_modules_is_pure_python(package: Path) -> None:
    make(package / "webhook.py", 1000)
    assert build.compiled_modules() == []
    assert build.stale_modules() == []
    assert build.describe() == "pure Python"


def test_compiled_modules_are_found_beside_their_source(package: Path) -> None:
    make(package / "webhook.py", 1000)
    make(package / f"webhook{SUFFIX}", 2000)
    make(package / "store" / "sqlite_ingest.py", 1000)
    make(package / "store" / f"sqlite_ingest{SUFFIX}", 2000)
    make(package / f"_hot__mypyc{SUFFIX}", 2000)  # the shared library: no source of its own
    assert build.compiled_modules() == ["store/sqlite_ingest.py", "webhook.py"]
    assert build.describe() == "2 modules compiled with mypyc"
    assert build.stale_modules() == []


def test_a_source_edited_after_its_compile_is_stale(package: Path) -> None:
    make(package / "webhook.py", 3000)
    make(package / f"webhook{SUFFIX}", 2000)
    make(package / "ingest.py", 1000)
    make(package / f"ingest{SUFFIX}", 2000)
    assert build.stale_modules() == ["webhook.py"]


def test_the_version_names_the_build(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out == f"responder {__version__} ({build.describe()})\n"

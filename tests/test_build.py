"""What an install says of its build: which modules run compiled, and which are stale."""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
from pathlib import Path

import pytest

from responder import __version__, build
from responder.cli import main

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(build, "PACKAGE", tmp_path)
    return tmp_path


def make(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def compiled(package: Path, name: str, source: str) -> None:
    """A module as setup.py leaves it: its source, its compiled file, its source's hash."""
    make(package / f"{name}.py", source)
    make(package / f"{name}{SUFFIX}", "ELF")
    record_file = package / build.SOURCES_RECORD
    record = json.loads(record_file.read_text()) if record_file.exists() else {}
    record[f"{name}.py"] = hashlib.sha256(source.encode()).hexdigest()
    record_file.write_text(json.dumps(record))


def test_a_tree_without_compiled_modules_is_pure_python(package: Path) -> None:
    make(package / "webhook.py")
    assert build.compiled_modules() == []
    assert build.stale_modules() == []
    assert build.describe() == "pure Python"


def test_compiled_modules_are_found_beside_their_source(package: Path) -> None:
    compiled(package, "webhook", "a = 1\n")
    compiled(package, "store/sqlite_ingest", "b = 2\n")
    make(package / f"_hot__mypyc{SUFFIX}")  # the shared library: no source of its own
    assert build.compiled_modules() == ["store/sqlite_ingest.py", "webhook.py"]
    assert build.describe() == "2 modules compiled with mypyc"
    assert build.stale_modules() == []


def test_a_source_edited_after_its_compile_is_stale(package: Path) -> None:
    compiled(package, "webhook", "a = 1\n")
    compiled(package, "ingest", "b = 2\n")
    (package / "webhook.py").write_text("a = 2\n")
    assert build.stale_modules() == ["webhook.py"]


def test_a_compiled_module_without_a_record_of_its_source_is_stale(package: Path) -> None:
    make(package / "webhook.py", "a = 1\n")
    make(package / f"webhook{SUFFIX}", "ELF")
    assert build.stale_modules() == ["webhook.py"]


def test_the_version_names_the_build(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out == f"responder {__version__} ({build.describe()})\n"

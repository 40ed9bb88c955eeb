"""How this install was built: which of responder's modules run compiled (setup.py compiles
the webhook's hot path with mypyc where it can), and which compiled module is older than
its source (an editable install whose source was edited since: Python would still import
the compiled one)."""

from __future__ import annotations

import importlib.machinery
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def _compiled_files() -> list[tuple[Path, Path]]:
    """(source, compiled) of every module that has both."""
    found = []
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        for built in PACKAGE.rglob(f"*{suffix}"):
            source = built.with_name(built.name.removesuffix(suffix) + ".py")
            if source.exists():
                found.append((source, built))
    return sorted(found)


def compiled_modules() -> list[str]:
    """The modules that run compiled, by source path under the package (``webhook.py``)."""
    return [str(source.relative_to(PACKAGE)) for source, _ in _compiled_files()]


def stale_modules() -> list[str]:
    """Modules whose source changed after they were compiled: what runs is not what reads."""
    return [
        str(source.relative_to(PACKAGE))
        for source, built in _compiled_files()
        if source.stat().st_mtime > built.stat().st_mtime
    ]


def describe() -> str:
    """For ``--version`` and the start's log line."""
    compiled = compiled_modules()
    if not compiled:
        return "pure Python"
    return f"{len(compiled)} modules compiled with mypyc"

"""How this install was built: which of responder's modules run compiled (setup.py compiles
the webhook's hot path with mypyc where it can), and which compiled module's source changed
since (an editable install whose source was edited: Python would still import the compiled
one). setup.py records the SHA-256 of each source it compiled; file times cannot tell, as a
wheel's install writes the source after its compiled module."""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
SOURCES_RECORD = "_compiled_sources.json"


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
    """Modules whose source changed after they were compiled: what runs is not what reads.
    A compiled module without a record of its source counts as changed."""
    try:
        recorded = json.loads((PACKAGE / SOURCES_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        recorded = {}
    stale = []
    for source, _ in _compiled_files():
        name = str(source.relative_to(PACKAGE))
        if recorded.get(name) != hashlib.sha256(source.read_bytes()).hexdigest():
            stale.append(name)
    return stale


def describe() -> str:
    """For ``--version`` and the start's log line."""
    compiled = compiled_modules()
    if not compiled:
        return "pure Python"
    return f"{len(compiled)} modules compiled with mypyc"

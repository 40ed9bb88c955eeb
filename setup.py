"""The build: the webhook's hot path compiled to C with mypyc where the install can.

Every alert runs these modules (decode, intake, classification, the store's ingest write
path); compiled, a new 1-alert webhook costs about 14% less CPU (docs/performance.md). They
are plain, type-checked Python: without a C compiler or Python's headers (a fresh Debian
machine has neither until ``apt install gcc python3-dev``), or with RESPONDER_PURE_PYTHON=1,
the install keeps them as Python and everything works the same, a little slower.
``responder --version`` says which it is.

An editable install (``pip install -e .``) compiles them in place: after editing one of
them, run the install again (the tests refuse to run on a stale build).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import sys
import sysconfig
from pathlib import Path

from setuptools import setup

# mypyc makes a module's classes native (fixed attributes, no subclassing from Python)
# unless they say @mypyc_attr(native_class=False), as SQLiteStore does; and it cannot hold
# msgspec's classes (they live in webhook_schema.py).
COMPILED = [
    "responder/webhook.py",
    "responder/ingest.py",
    "responder/intake.py",
    "responder/auth.py",
    "responder/metrics.py",
    "responder/incident.py",
    "responder/classify/classifier.py",
    "responder/classify/matchers.py",
    "responder/classify/targets.py",
    "responder/store/base.py",
    "responder/store/sqlite.py",
    "responder/store/sqlite_ingest.py",
    "responder/store/sqlite_incidents.py",
]


def _why_not_compiled() -> str | None:
    if os.environ.get("RESPONDER_PURE_PYTHON"):
        return "RESPONDER_PURE_PYTHON is set"
    if sys.implementation.name != "cpython":
        return f"{sys.implementation.name} is not CPython"
    include = sysconfig.get_paths()["include"]
    if not os.path.exists(os.path.join(include, "Python.h")):
        return f"no Python headers in {include} (apt install python3-dev)"
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler}; apt install gcc)"
    return None


# What the compiled modules were compiled from (responder/build.py compares): an editable
# install's source edited since runs the old code until the next install.
SOURCES_RECORD = "responder/_compiled_sources.json"


def _forget_earlier_builds() -> None:
    """An earlier editable install's compiled modules would still shadow the Python."""
    for path in COMPILED:
        for built in glob.glob(path.removesuffix(".py") + ".*.so"):
            os.remove(built)
    for built in glob.glob("responder/_hot__mypyc.*.so"):
        os.remove(built)
    if os.path.exists(SOURCES_RECORD):
        os.remove(SOURCES_RECORD)


def _record_sources() -> None:
    record = {
        path.removeprefix("responder/"): hashlib.sha256(Path(path).read_bytes()).hexdigest()
        for path in COMPILED
    }
    with open(SOURCES_RECORD, "w", encoding="utf-8") as out:
        json.dump(record, out, indent=1, sort_keys=True)


def _extensions() -> list[object]:
    if sys.argv[1:2] in (["egg_info"], ["dist_info"]):
        return []  # metadata only: nothing is built
    reason = _why_not_compiled()
    if reason is not None:
        print(f"responder: hot path left as Python: {reason}", file=sys.stderr)
        _forget_earlier_builds()
        return []
    from mypyc.build import mypycify

    # The build environment has none of the daemon's dependencies installed: their types
    # are unknown here (Any), which costs the compiled code nothing that matters. CI type
    # checks everything with them (mypy --strict).
    options = [
        "--ignore-missing-imports",
        "--follow-imports=silent",
        "--no-warn-unused-ignores",
        "--no-warn-return-any",
    ]
    _record_sources()
    return list(mypycify([*options, *COMPILED], group_name="responder._hot", opt_level="3"))


setup(ext_modules=_extensions())

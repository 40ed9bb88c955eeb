"""Shared fixtures: a config written to a temporary folder, and the app built from it."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import jinja2
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import settings
from jinja2.bccache import Bucket
from prometheus_client import CollectorRegistry

from responder import build, messages
from responder.app import build_app
from responder.clock import FakeClock
from responder.runtime import load_snapshot

PAYLOADS = Path(__file__).parent / "data" / "payloads"
TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]

# Hypothesis fails an example slower than 200 ms by default. On a loaded 2-core machine (CI,
# helpers running beside the suite) a parse can take that long without anything being wrong.
settings.register_profile("responder", deadline=None)
settings.load_profile("responder")


def pytest_configure(config: pytest.Config) -> None:
    stale = build.stale_modules()
    if stale:
        pytest.exit(
            f"compiled modules whose source changed since: {', '.join(stale)}; the tests would "
            "run the old code. Run `.venv/bin/pip install -e .` again (or, to test the pure "
            "Python, RESPONDER_PURE_PYTHON=1 .venv/bin/pip install -e .)",
            returncode=4,
        )


class MemoryBytecodeCache(jinja2.BytecodeCache):
    """Compiled templates kept in memory for the whole run. jinja2 keys each by template name
    and file name and recompiles it when its source differs, so a test's own templates are
    compiled as the daemon would compile them."""

    def __init__(self) -> None:
        self._code: dict[str, bytes] = {}

    def load_bytecode(self, bucket: Bucket) -> None:
        if (code := self._code.get(bucket.key)) is not None:
            bucket.bytecode_from_string(code)

    def dump_bytecode(self, bucket: Bucket) -> None:
        self._code[bucket.key] = bucket.bytecode_to_string()


@pytest.fixture(scope="session", autouse=True)
def compiled_templates_shared() -> Iterator[None]:
    """Every config load compiles the shipped templates, most of its time; hundreds of tests
    load one. They share the compiled code (``messages.BYTECODE_CACHE``, a test seam)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(messages, "BYTECODE_CACHE", MemoryBytecodeCache())
        yield


def payload(name: str) -> dict[str, Any]:
    """A webhook body captured from a real Alertmanager 0.25."""
    document: dict[str, Any] = json.loads((PAYLOADS / f"am-0.25.0-{name}.json").read_text())
    return document


def write_config(folder: Path, text: str = "", *, rules: str | None = None) -> Path:
    """A config in ``folder`` with a token file and the shipped rules, plus ``text``.
    ``rules``: a rule file of the test's own, tried before the shipped ones."""
    (folder / "token").write_text(TOKEN + "\n")
    files = [f"{Path(__file__).parent.parent / 'rules'}/*.yaml"]
    if rules is not None:
        (folder / "rules.yaml").write_text(rules)
        files.insert(0, str(folder / "rules.yaml"))
    listed = ", ".join(f"'{f}'" for f in files)
    base = f"auth:\n  bearer_token_file: token\nclassification:\n  rule_files: [{listed}]\n"
    path = folder / "config.yaml"
    path.write_text(base + text)
    return path


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return write_config(tmp_path)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def make_client(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]], clock: FakeClock
) -> ClientFactory:
    async def make(
        config_path: Path, registry: CollectorRegistry | None = None
    ) -> TestClient[Any, Any]:
        snapshot = load_snapshot(config_path)
        app = build_app(snapshot, clock=clock, registry=registry or CollectorRegistry())
        return await aiohttp_client(app)

    return make


@pytest.fixture
async def client(make_client: ClientFactory, config_path: Path) -> TestClient[Any, Any]:
    return await make_client(config_path)

"""Back-pressure from the escalation engine on the webhook during an alert storm
(responder/intake.py): the intake bound itself, and the webhook waiting for the engine."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from responder.intake import Intake
from responder.runtime import RUNTIME
from tests.conftest import AUTH, ClientFactory, write_config
from tests.test_escalation_story import alert, webhook

Client = TestClient[Any, Any]


@contextlib.asynccontextmanager
async def admitted(intake: Intake, alerts: int) -> AsyncIterator[None]:
    await intake.acquire(alerts)
    try:
        yield
    finally:
        intake.release(alerts)


async def test_bodies_that_fit_are_let_in_at_once() -> None:
    intake = Intake(limit=10)
    async with admitted(intake, 4), admitted(intake, 6):
        assert intake.in_flight == 10
    assert intake.in_flight == 0


async def test_a_body_that_does_not_fit_waits_for_places() -> None:
    intake = Intake(limit=10, max_wait_s=5.0)
    order: list[str] = []

    async def body(name: str, alerts: int, hold: asyncio.Event) -> None:
        async with admitted(intake, alerts):
            order.append(f"{name} in")
            await hold.wait()
        order.append(f"{name} out")

    release_a, release_b = asyncio.Event(), asyncio.Event()
    a = asyncio.create_task(body("a", 8, release_a))
    await asyncio.sleep(0)
    b = asyncio.create_task(body("b", 5, release_b))
    await asyncio.sleep(0.02)
    assert order == ["a in"]  # 8 + 5 > 10: b waits
    release_a.set()
    await asyncio.sleep(0.02)
    assert order == ["a in", "a out", "b in"]
    release_b.set()
    await asyncio.gather(a, b)
    assert intake.in_flight == 0


async def test_a_body_larger_than_the_limit_goes_in_alone() -> None:
    intake = Intake(limit=10, max_wait_s=5.0)
    release = asyncio.Event()

    async def small() -> None:
        async with admitted(intake, 2):
            await release.wait()

    first = asyncio.create_task(small())
    await asyncio.sleep(0)
    entered = asyncio.Event()

    async def huge() -> None:
        async with admitted(intake, 50):
            entered.set()

    big = asyncio.create_task(huge())
    await asyncio.sleep(0.02)
    assert not entered.is_set()
    release.set()
    await asyncio.gather(first, big)
    assert entered.is_set()


async def test_waiting_is_bounded_the_body_goes_in_anyway() -> None:
    """A stuck engine slows the webhook down; it never stops it."""
    intake = Intake(limit=10, max_wait_s=0.05)
    async with admitted(intake, 10):
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with admitted(intake, 5):
            assert intake.in_flight == 15
        assert 0.04 <= loop.time() - started < 1.0


class HeldEngine:
    """Stands in for the escalation engine: a pass finishes only when the test says so."""

    def __init__(self) -> None:
        self.woken = 0
        self.passes: list[asyncio.Event] = []

    def wake(self) -> None:
        self.woken += 1

    async def next_pass(self) -> None:
        done = asyncio.Event()
        self.passes.append(done)
        await done.wait()


async def test_webhook_that_opens_an_incident_answers_after_the_engine_pass(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    client = await make_client(write_config(tmp_path))
    engine = HeldEngine()
    client.app[RUNTIME].escalator = engine

    async def post(body: dict[str, Any]) -> int:
        response = await client.post("/api/v1/alertmanager", json=body, headers=AUTH)
        return response.status

    first = asyncio.create_task(post(webhook(alert("DiskFull", instance="a"))))
    for _ in range(100):
        if engine.passes:
            break
        await asyncio.sleep(0.01)
    assert engine.woken == 1
    assert len(engine.passes) == 1
    await asyncio.sleep(0.05)
    assert not first.done()  # stored, waiting for the engine to page
    engine.passes[0].set()
    assert await first == 200

    # Another alert joining the same open incident needs nothing from the engine.
    assert await post(webhook(alert("DiskFull", instance="b"))) == 200
    assert engine.woken == 1
    assert len(engine.passes) == 1


async def test_with_the_real_engine_the_answer_comes_after_the_first_pages_are_queued(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """A 200 for a webhook that opened an incident means its level-1 pages are queued."""
    policy = """
contacts:
  alice: {email: alice@example.com}
escalation_policies:
  standard:
    levels:
      - targets: [alice]
incidents:
  default_policy: standard
"""
    client = await make_client(write_config(tmp_path, policy))
    runtime = client.app[RUNTIME]
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await client.post(
        "/api/v1/alertmanager", json=webhook(alert("DiskFull", instance="a")), headers=AUTH
    )
    assert response.status == 200
    assert loop.time() - started < 1.0  # the engine's pass, not the answer deadline
    pages = await runtime.store.step_pages(1, 1, "L1")
    assert [(p.contact, p.channel) for p in pages] == [("alice", "email")]

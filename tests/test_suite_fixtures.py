"""The suite's own machinery: the SMTP server tests page through."""

from __future__ import annotations

import asyncio
import contextlib
import time

from notifiers.base import DeliveryError
from notifiers.smtp import SmtpNotifier
from responder.testing import SmtpTestServer
from tests.test_notifier_smtp import page, settings_for


async def _ended_in(notifier: SmtpNotifier) -> float:
    """Seconds until a page ends, sent or refused."""
    started = time.monotonic()
    with contextlib.suppress(DeliveryError):
        await notifier.send(page())
    return time.monotonic() - started


async def test_stopping_the_smtp_server_hangs_up_on_its_clients_at_once() -> None:
    """Pages on their way when the server stops end at once, sent or refused. One whose
    connection had just been accepted waited for a greeting until its own timeout: a test
    whose daemon was paging as its server stopped took 25 s to tear down."""
    for round_ in range(40):  # the window is narrow: each round stops among five connects
        async with SmtpTestServer() as server:
            notifier = SmtpNotifier(settings_for(server, timeout=3.0))
            sends = [asyncio.create_task(_ended_in(notifier)) for _ in range(5)]
            await asyncio.sleep(round_ % 20 / 1000)
        took = await asyncio.gather(*sends)
        assert max(took) < 1.5, (round_, took)

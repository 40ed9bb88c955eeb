"""The suite's own machinery: the SMTP server tests page through, and the compiled templates
that tests share."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from notifiers.base import DeliveryError
from notifiers.smtp import SmtpNotifier
from responder import messages
from responder.testing import SmtpTestServer
from tests.conftest import MemoryBytecodeCache
from tests.test_messages import context, load_with
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


def test_a_template_changed_under_the_same_path_is_compiled_again(tmp_path: Path) -> None:
    """The suite shares compiled templates between config loads; an operator's template
    rewritten in place renders its new text (a cache keyed by path alone kept the old)."""
    assert isinstance(messages.BYTECODE_CACHE, MemoryBytecodeCache)
    first = load_with(tmp_path, {"activation.sms.j2": "first #{{ incident_id }}"})
    assert first.render("activation", "sms", context()).text == "first #42"
    again = load_with(tmp_path, {"activation.sms.j2": "second #{{ incident_id }}"})
    assert again.render("activation", "sms", context()).text == "second #42"

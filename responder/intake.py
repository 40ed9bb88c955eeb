"""Back-pressure between the webhook and the escalation engine during an alert storm.

On one core, the webhook can store new incidents faster than the engine can page for them:
left alone, a storm of 100,000 alerts would be stored at full speed while their first pages
fell further and further behind. Paging on time matters more than taking alerts fast, so
the webhook takes new firing alerts only while fewer than ``limit`` are between the door
and the engine (stored, but not yet through an escalation pass); others wait their turn
before they are stored. Alertmanager keeps what it has not had a 2xx for, and sends it again
if we are too slow, so waiting loses nothing. Waits are bounded: a stuck engine slows the
webhook down, it never stops it.
"""

from __future__ import annotations

import asyncio
import contextlib

from responder.clock import monotonic

# Firing alerts allowed between the door and the engine. About what one escalation pass
# handles in a few hundred milliseconds; a larger body is let in alone.
DEFAULT_LIMIT = 1000
# The longest a webhook waits for its turn before it is let in anyway.
DEFAULT_MAX_WAIT_S = 3.0


class Intake:
    """A weighted semaphore over firing alerts, never refusing, only delaying."""

    def __init__(self, limit: int = DEFAULT_LIMIT, max_wait_s: float = DEFAULT_MAX_WAIT_S):
        self._limit = limit
        self._max_wait_s = max_wait_s
        self._in_flight = 0
        self._freed = asyncio.Event()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def try_acquire(self, alerts: int) -> bool:
        """Take ``alerts`` places if they fit now (the usual case, without a coroutine)."""
        if self._full_for(alerts):
            return False
        self._in_flight += alerts
        return True

    def _full_for(self, alerts: int) -> bool:
        # A body larger than the limit is let in alone.
        return bool(alerts and self._in_flight and self._in_flight + alerts > self._limit)

    async def acquire(self, alerts: int) -> None:
        """Take ``alerts`` places, waiting (bounded) while they do not fit; pair with
        ``release``."""
        if self._full_for(alerts):
            deadline = monotonic() + self._max_wait_s
            with contextlib.suppress(TimeoutError):
                while self._full_for(alerts):
                    self._freed.clear()
                    async with asyncio.timeout(max(0.0, deadline - monotonic())):
                        await self._freed.wait()
        self._in_flight += alerts

    def release(self, alerts: int) -> None:
        self._in_flight -= alerts
        self._freed.set()

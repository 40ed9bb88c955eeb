"""The only module that reads the wall clock. Everything else receives a ``Clock``.

Time is always an aware UTC ``datetime``; monotonic time is for measuring durations only.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        ...

    def elapsed(self) -> float:
        """Seconds from an arbitrary point on a clock that setting the wall clock does not
        move and that stands still while the host is suspended. Compared with ``now()``,
        it tells a suspend or a step of the wall clock (heartbeats.py)."""
        ...

    async def sleep_until(self, when: datetime) -> None:
        """Return at ``when`` or later (early return is allowed; callers re-check)."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def elapsed(self) -> float:
        return time.monotonic()  # CLOCK_MONOTONIC: not CLOCK_BOOTTIME, which counts suspends

    async def sleep_until(self, when: datetime) -> None:
        delay = (when - self.now()).total_seconds()
        if delay > 0:
            await asyncio.sleep(delay)


def monotonic() -> float:
    """Seconds from an arbitrary point; for latency measurements."""
    return time.perf_counter()


class FakeClock:
    """A clock that moves only when a test says so; sleepers wake when it passes their time.

    ``advance`` and ``set`` forward are time passing; ``set`` back and ``jump`` move the wall
    clock alone, as a suspend of the host or a step of its clock does."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
        self._elapsed = 0.0
        self._changed = asyncio.Event()

    def now(self) -> datetime:
        return self._now

    def elapsed(self) -> float:
        return self._elapsed

    def set(self, when: datetime) -> None:
        if when.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime")
        self._elapsed += max(0.0, (when - self._now).total_seconds())
        self.jump(when - self._now)

    def jump(self, delta: timedelta) -> None:
        """The wall clock alone moves by ``delta``."""
        self._now += delta
        self._changed.set()
        self._changed = asyncio.Event()

    def advance(self, delta: timedelta | float) -> datetime:
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        self.set(self._now + step)
        return self._now

    async def sleep_until(self, when: datetime) -> None:
        while self._now < when:
            await self._changed.wait()


async def sleep_until_or_woken(clock: Clock, until: datetime, wake: asyncio.Event) -> None:
    """Sleep until ``until`` on ``clock``, or until ``wake`` is set, whichever comes first.

    The engine loops use this: they sleep to the next stored due time, and whoever writes a
    nearer one wakes them.
    """
    sleeper = asyncio.ensure_future(clock.sleep_until(until))
    waker = asyncio.ensure_future(wake.wait())
    try:
        await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        waker.cancel()

"""The storage contract: what every engine (SQLite now, PostgreSQL later) must do.

Records crossing this boundary are frozen dataclasses; engines own their SQL. Every write
is durable when its coroutine returns: callers answer Alertmanager only after that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from responder.model import Alert, AlertStatus, Classification


class StoreError(Exception):
    """The store could not do what was asked (disk full, locked, gone); callers answer 503."""


class IngestOutcome(StrEnum):
    NEW = "new"  # first time this alert (fingerprint, startsAt) fires
    REPEAT = "repeat"  # still firing; Alertmanager re-sent it
    REVIVED = "revived"  # had gone stale, arrived again: firing once more
    RESOLVED = "resolved"  # was firing, now resolved
    REPEAT_RESOLVED = "repeat_resolved"  # resolved before; the resolve was re-sent
    RESOLVED_UNSEEN = "resolved_unseen"  # a resolve for an alert never seen firing
    LATE = "late"  # a firing copy of an alert already resolved: out of order, ignored


@dataclass(frozen=True, slots=True)
class IncomingAlert:
    """An alert as received, with where it came from and what the rules decided."""

    alert: Alert
    group_key: str
    receiver: str
    classification: Classification


@dataclass(frozen=True, slots=True)
class StoredAlert:
    id: int
    fingerprint: str
    status: AlertStatus
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: datetime
    ends_at: datetime | None
    generator_url: str
    group_key: str
    receiver: str
    severity: str
    category: str
    rule: str | None
    classification: Mapping[str, object]
    first_received: datetime
    last_received: datetime
    receive_count: int


@dataclass(frozen=True, slots=True)
class AlertQuery:
    statuses: frozenset[AlertStatus] = frozenset()  # empty: any status
    fingerprint: str | None = None
    limit: int = 500


class Store(Protocol):
    """One interface, several engines, chosen by URL (``responder.store.open_store``)."""

    url: str

    async def open(self) -> None:
        """Connect, apply migrations, start background writers."""
        ...

    async def close(self) -> None:
        """Flush pending writes and close; safe to call twice."""
        ...

    async def ping(self) -> bool:
        """True when the store can serve reads and writes."""
        ...

    async def ingest(self, alerts: Sequence[IncomingAlert], now: datetime) -> list[IngestOutcome]:
        """Record alerts durably and idempotently; one outcome per alert, same order."""
        ...

    async def mark_stale(self, last_received_before: datetime, now: datetime) -> list[int]:
        """Firing alerts not heard of since the cut-off become stale; returns their ids."""
        ...

    async def list_alerts(self, query: AlertQuery) -> list[StoredAlert]:
        """Newest first."""
        ...

"""Storage behind one interface, the engine chosen by URL.

``sqlite:///var/lib/responder/responder.db`` (absolute) or ``sqlite:responder.db`` (relative
to the state directory). PostgreSQL (``postgresql://``) arrives with high availability.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from responder.store.base import (
    MAX_ROW_ID,
    PRUNE_BATCH,
    AlertQuery,
    EscalationUpdate,
    HeartbeatRow,
    IncomingAlert,
    IngestOutcome,
    Reroute,
    SchemaTooNew,
    Store,
    StoredAlert,
    StoreError,
    TakenRequest,
    row_id,
)
from responder.store.sqlite import CommitStats, SQLiteStore

__all__ = [
    "MAX_ROW_ID",
    "PRUNE_BATCH",
    "AlertQuery",
    "CommitStats",
    "EscalationUpdate",
    "HeartbeatRow",
    "IncomingAlert",
    "IngestOutcome",
    "Reroute",
    "SQLiteStore",
    "SchemaTooNew",
    "Store",
    "StoreError",
    "StoredAlert",
    "TakenRequest",
    "open_store",
    "row_id",
    "sqlite_path",
]


def sqlite_path(url: str, state_dir: Path) -> Path:
    """The file named by a ``sqlite:`` URL; raises ValueError for anything else."""
    if url.startswith("sqlite:///"):
        return Path("/" + url.removeprefix("sqlite:///").lstrip("/"))
    if url.startswith("sqlite:") and not url.startswith("sqlite://"):
        return state_dir / url.removeprefix("sqlite:")
    raise ValueError(f"not a sqlite URL: {url!r}")


def open_store(
    url: str,
    state_dir: Path,
    *,
    synchronous: str = "FULL",
    on_commit: Callable[[CommitStats], None] | None = None,
) -> Store:
    """Build (not yet open) the engine for ``url``."""
    if url.startswith("sqlite:"):
        return SQLiteStore(
            sqlite_path(url, state_dir), synchronous=synchronous, on_commit=on_commit
        )
    scheme = url.split(":", 1)[0]
    raise ValueError(f"unsupported storage URL scheme {scheme!r}; expected sqlite")

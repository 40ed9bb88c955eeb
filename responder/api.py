"""The authenticated JSON API for people and tools (the CLI uses it too)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any, Protocol, TypeVar

from aiohttp import hdrs, web

from responder.classify.matchers import Matcher, MatcherError, parse_matchers
from responder.ingest import json_error, unauthorized
from responder.model import AlertStatus
from responder.runtime import RUNTIME
from responder.store import AlertQuery, StoredAlert, StoreError, row_id

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_LIMIT = 10_000
# A label filter reads the alerts page by page, newest first, at most this many in all; the
# answer says when it stopped short ("truncated").
MAX_FILTER_SCAN = 100_000


# Methods that change nothing: a page on another site may make a browser send them, but
# cannot read the answer.
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def from_another_site(request: web.Request) -> bool:
    """Whether a browser sent this for a page of another origin: ``Sec-Fetch-Site`` says so,
    or an ``Origin`` comes without a same-origin ``Sec-Fetch-Site`` (older browsers send
    Origin alone). The CLI, curl and Alertmanager send neither."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return True
    return hdrs.ORIGIN in request.headers and site != "same-origin"


def authenticated(handler: Handler) -> Handler:
    async def wrapper(request: web.Request) -> web.StreamResponse:
        runtime = request.app[RUNTIME]
        if not runtime.authenticator.check(request.headers.get("Authorization")):
            return unauthorized(runtime)
        if request.method not in _SAFE_METHODS and from_another_site(request):
            # A browser attaches basic-auth credentials it holds for this origin (someone
            # opened an email's "Incident" link) to a form another site's page submits: a
            # runbook link in an alert could resolve incidents or pause containment.
            return json_error(
                403, "requests from web pages of other sites are refused; use the CLI or API"
            )
        return await handler(request)

    wrapper.__name__ = handler.__name__
    wrapper.__doc__ = handler.__doc__
    return wrapper


class BadQuery(ValueError):
    """A list request's parameter cannot be taken; the text is the 400's error."""


def page_query(query: Mapping[str, str], what: str) -> tuple[int, int | None]:
    """A list request's ``limit`` (1 to MAX_LIMIT, default 500) and ``before`` (only rows
    older than that id of ``what``: the next page), or BadQuery."""
    try:
        limit = int(query.get("limit", "500"))
    except ValueError:
        raise BadQuery("limit: expected a whole number") from None
    if not 0 < limit <= MAX_LIMIT:
        raise BadQuery(f"limit: must be 1 to {MAX_LIMIT}")
    if "before" not in query:
        return limit, None
    before = row_id(query["before"])
    if before is None:
        raise BadQuery(f"before: expected {what} id (a whole number)")
    return limit, before


class _Row(Protocol):
    @property
    def id(self) -> int: ...


R = TypeVar("R", bound=_Row)


def cut_page(
    rows: list[R], limit: int, answer: dict[str, Any], next_before: int | None = None
) -> list[R]:
    """The first ``limit`` of ``rows``, newest first by id, read one more than ``limit``
    (whether there are more is then known, not guessed); sets the answer's ``more`` and,
    if so, ``nextBefore``: the ``before`` of the next page. Ids only grow, so rows stored
    between two requests do not shift a page: none is listed twice or skipped.
    ``next_before``: where the next page starts although these rows were not cut (a
    search that stopped short)."""
    if len(rows) > limit:
        rows = rows[:limit]
        next_before = rows[-1].id
    answer["more"] = next_before is not None
    if next_before is not None:
        answer["nextBefore"] = next_before
    return rows


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def alert_document(alert: StoredAlert) -> dict[str, Any]:
    return {
        "id": alert.id,
        "fingerprint": alert.fingerprint,
        "status": alert.status.value,
        "labels": alert.labels,
        "annotations": alert.annotations,
        "startsAt": iso(alert.starts_at),
        "endsAt": iso(alert.ends_at),
        "generatorURL": alert.generator_url,
        "groupKey": alert.group_key,
        "receiver": alert.receiver,
        "classification": alert.classification,
        "firstReceived": iso(alert.first_received),
        "lastReceived": iso(alert.last_received),
        "receiveCount": alert.receive_count,
    }


@authenticated
async def list_alerts(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/alerts?status=firing&filter=severity="critical"&limit=100&before=ID

    Newest first (by id), a page at a time (``cut_page``): ``more`` says whether older
    alerts may match, ``nextBefore`` is then the ``before`` of the next page."""
    runtime = request.app[RUNTIME]
    statuses: set[AlertStatus] = set()
    for value in request.query.getall("status", []):
        for part in value.split(","):
            try:
                statuses.add(AlertStatus(part.strip()))
            except ValueError:
                return json_error(400, f"status: expected firing, resolved or stale, got {part!r}")
    try:
        limit, before = page_query(request.query, "an alert")
    except BadQuery as exc:
        return json_error(400, str(exc))
    try:
        matchers = [m for text in request.query.getall("filter", []) for m in parse_matchers(text)]
    except MatcherError as exc:
        return json_error(400, f"filter: {exc}")
    query = AlertQuery(
        statuses=frozenset(statuses),
        fingerprint=request.query.get("fingerprint"),
        # One more than asked for: whether there are more is known, not guessed. Label
        # filters are applied after the read: read pages until enough match.
        limit=MAX_LIMIT if matchers else limit + 1,
        before_id=before,
    )
    answer: dict[str, Any] = {"status": "ok"}
    next_before = None
    try:
        alerts = await runtime.store.list_alerts(query)
        if matchers:
            found, scanned = _matching(alerts, matchers), len(alerts)
            while len(found) <= limit and len(alerts) == MAX_LIMIT:
                if scanned >= MAX_FILTER_SCAN:
                    # Say so rather than let an older match look absent; the next page
                    # goes on searching where this one stopped.
                    answer["truncated"] = f"searched the newest {scanned} alerts only"
                    next_before = alerts[-1].id
                    break
                query = replace(query, before_id=alerts[-1].id)
                alerts = await runtime.store.list_alerts(query)
                found += _matching(alerts, matchers)
                scanned += len(alerts)
            alerts = found
    except StoreError as exc:
        return json_error(503, f"store unavailable: {exc}")
    alerts = cut_page(alerts, limit, answer, next_before)
    answer["data"] = [alert_document(a) for a in alerts]
    return web.json_response(answer)


def _matching(alerts: list[StoredAlert], matchers: list[Matcher]) -> list[StoredAlert]:
    return [a for a in alerts if all(m.matches(a.labels) for m in matchers)]

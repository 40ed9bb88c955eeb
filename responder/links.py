"""Acknowledge links for email: HMAC-signed, expiring, single-incident tokens.

A token names one incident and the contact it was sent to, and expires; it is signed with
HMAC-SHA256 under a secret kept in the state directory (``link-secret``, mode 0600; in high
availability every daemon needs the same file). ``GET /ack/{token}`` only shows a small page
with buttons; ``POST`` acts, because mail scanners and link previews follow every link in a
message and must never acknowledge anything.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiohttp import hdrs, web

from responder.auth import ensure_generated_secret
from responder.incident import Incident, IncidentNotFound, Page, TransitionError
from responder.incidents_api import act
from responder.ingest import BODY_TIMEOUT_S, read_body
from responder.messages import clean_text
from responder.runtime import RUNTIME
from responder.secrets import Secret
from responder.store import StoreError

LINK_SECRET_FILE = "link-secret"  # noqa: S105 - a file name, not a secret
LINK_LIFETIME = timedelta(hours=24)
ACK_PATH = "/ack/"
_SIG_BYTES = 18  # 144 bits: plenty against forgery, short enough for a tidy URL


class LinkError(ValueError):
    """The token is malformed, forged or expired; the message says which, for the page."""


@dataclass(frozen=True, slots=True)
class LinkClaim:
    incident_id: int
    episode: int  # the episode the page was sent in
    contact: str
    expires: datetime
    # When the trigger the page was for began (``Incident.started``): the link acts
    # through every episode of it, not after a re-fire. None in links made before it was
    # named: those act in their episode only.
    trigger: datetime | None = None


def link_secret(state_dir: Path) -> Secret:
    secret, _ = ensure_generated_secret(state_dir / LINK_SECRET_FILE)
    return secret


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: Secret, payload: bytes) -> bytes:
    return hmac.new(secret.value.encode(), payload, hashlib.sha256).digest()[:_SIG_BYTES]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def make_token(
    secret: Secret,
    incident_id: int,
    episode: int,
    contact: str,
    expires: datetime,
    trigger: datetime | None = None,
) -> str:
    # The trigger to the microsecond: a re-fire may come within the second of the resolve.
    sent_in = str(episode)
    if trigger is not None:
        sent_in += f"@{(trigger - _EPOCH) // _MICROSECOND}"
    payload = f"{incident_id}:{sent_in}:{int(expires.timestamp())}:{contact}".encode()
    return f"{_b64(payload)}.{_b64(_sign(secret, payload))}"


def read_token(secret: Secret, token: str, now: datetime) -> LinkClaim:
    try:
        payload_text, signature_text = token.split(".", 1)
        payload, signature = _unb64(payload_text), _unb64(signature_text)
    except (ValueError, UnicodeEncodeError):
        raise LinkError("this link is malformed") from None
    if not hmac.compare_digest(signature, _sign(secret, payload)):
        raise LinkError("this link is not valid")
    try:
        incident_text, sent_in, expires_text, contact = payload.decode().split(":", 3)
        expires = datetime.fromtimestamp(int(expires_text), UTC)
        episode_text, at, trigger_text = sent_in.partition("@")
        trigger = _EPOCH + int(trigger_text) * _MICROSECOND if at else None
        claim = LinkClaim(int(incident_text), int(episode_text), contact, expires, trigger)
    except (ValueError, UnicodeDecodeError):
        raise LinkError("this link is malformed") from None
    if now >= claim.expires:
        raise LinkError("this link has expired; acknowledge by SMS, the CLI or the API")
    return claim


def ack_url(public_url: str, secret: Secret, page: Page, now: datetime) -> str:
    """The link of a page: for the episode and trigger the page was made for, not the
    incident's current ones (a page that waited across a re-fire must not act on the new
    trigger)."""
    token = make_token(
        secret, page.incident_id, page.episode, page.contact, now + LINK_LIFETIME, page.trigger_at
    )
    return public_url.rstrip("/") + ACK_PATH + token


def _current(claim: LinkClaim, incident: Incident) -> None:
    """A link acts on the trigger it was sent for, through all its episodes: a severity
    raise, a reload or an unacknowledge start the escalation over, but its contact was
    paged for this very problem. Once the incident resolved and fired again, the contact
    may not have been paged for the new trigger at all."""
    if incident.episode == claim.episode:
        return
    if claim.trigger is not None and claim.trigger == incident.started:
        return
    raise LinkError(
        "this link was sent before the incident fired again; use the newest page's link, "
        "SMS, the CLI or the API"
    )


# -- the page ----------------------------------------------------------------------------------

_STYLE = (
    "body{font-family:sans-serif;max-width:32em;margin:2em auto;padding:0 1em}"
    "button{font-size:1.1em;padding:.5em 1em;margin:.3em}"
)


def _page(title: str, body: str, status: int = 200) -> web.Response:
    text = (
        "<!doctype html><html><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )
    return web.Response(
        text=text,
        status=status,
        content_type="text/html",
        headers={
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",  # the token must not leak to other sites
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
            "form-action 'self'",
        },
    )


async def show_link(request: web.Request) -> web.StreamResponse:
    """GET: what the link is for, with buttons. Changes nothing."""
    runtime = request.app[RUNTIME]
    secret = link_secret(runtime.started_with.config.state_dir)
    try:
        claim = read_token(secret, request.match_info["token"], runtime.clock.now())
        incident = await runtime.store.get_incident(claim.incident_id)
        _current(claim, incident)
    except LinkError as exc:
        return _page("Link not valid", f"<p>{html.escape(str(exc))}</p>", 403)
    except IncidentNotFound:
        return _page("Not found", "<p>This incident does not exist.</p>", 404)
    except StoreError:
        return _page("Unavailable", "<p>Try again in a moment.</p>", 503)
    title = f"Incident {incident.id}: {clean_text(incident.title)}"
    buttons = ""
    if incident.state.value != "resolved":
        buttons = (
            '<form method="post">'
            '<button name="action" value="acknowledge">Acknowledge</button>'
            '<button name="action" value="resolve">Resolve</button></form>'
        )
    body = (
        f"<h1>{html.escape(title)}</h1>"
        f"<p>{html.escape(incident.severity)} · {html.escape(incident.category)} · "
        f"<b>{html.escape(incident.state.value)}</b></p>"
        f"<p>Acting as {html.escape(claim.contact)}.</p>{buttons}"
    )
    return _page(title, body)


# What a form posted to a door anyone can reach (an email link, Twilio's callbacks) may
# weigh: theirs are a few hundred bytes, and a stranger must not make us read megabytes
# before the token or signature is checked.
FORM_LIMIT = 64 * 1024
# Twilio's callbacks carry about 30 fields.
_FORM_FIELDS = 200
# A form sent without a type (aiohttp then says application/octet-stream) is taken as one.
_FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "application/octet-stream", ""})


async def read_small_form(request: web.Request) -> dict[str, str]:
    """The posted form (``application/x-www-form-urlencoded``, UTF-8, as Twilio and browsers
    send it), read before any signature is checked, so it is refused early: 413 when over
    ``FORM_LIMIT`` or of unknown length (chunked), 415 when compressed (a small body must not
    inflate to megabytes) or of another type, 400 when it is not UTF-8. A request with no
    body at all is an empty form."""
    if not request.body_exists:
        return {}
    length = request.content_length
    if length is None or length > FORM_LIMIT:
        raise web.HTTPRequestEntityTooLarge(max_size=FORM_LIMIT, actual_size=length or 0)
    if request.headers.get(hdrs.CONTENT_ENCODING, "identity").lower() != "identity":
        raise web.HTTPUnsupportedMediaType(text="compressed forms are not accepted")
    if request.content_type not in _FORM_TYPES or (request.charset or "utf-8").lower() not in (
        "utf-8",
        "utf8",
    ):
        raise web.HTTPUnsupportedMediaType(
            text="expected Content-Type application/x-www-form-urlencoded (UTF-8)"
        )
    try:
        # aiohttp's post() would also take multipart forms and other charsets, and raise
        # (a 500) on some malformed ones; the standard library's parse is all this needs.
        text = (await read_body(request)).decode("utf-8")
        pairs = urllib.parse.parse_qsl(
            text, keep_blank_values=True, errors="strict", max_num_fields=_FORM_FIELDS
        )
    except TimeoutError:
        message = f"body not received within {BODY_TIMEOUT_S:g} s"
        raise web.HTTPRequestTimeout(text=message) from None
    except UnicodeDecodeError:
        raise web.HTTPBadRequest(text="the form is not valid UTF-8") from None
    except ValueError:  # more fields than _FORM_FIELDS
        raise web.HTTPBadRequest(text="the form has too many fields") from None
    return dict(pairs)


async def use_link(request: web.Request) -> web.StreamResponse:
    """POST: acknowledge or resolve the one incident the token names."""
    runtime = request.app[RUNTIME]
    secret = link_secret(runtime.started_with.config.state_dir)
    try:
        claim = read_token(secret, request.match_info["token"], runtime.clock.now())
    except LinkError as exc:
        return _page("Link not valid", f"<p>{html.escape(str(exc))}</p>", 403)
    form = await read_small_form(request)
    action = form.get("action", "")
    if action not in ("acknowledge", "resolve"):
        return _page("Bad request", "<p>Unknown action.</p>", 400)
    try:
        # Checked in the write itself: a resolve and re-fire between a read and the action
        # would let this link act on a trigger its contact was never paged for.
        incident, changed = await act(
            runtime,
            claim.incident_id,
            action,
            actor=claim.contact,
            via="email",
            expect=lambda found: _current(claim, found),
        )
    except LinkError as exc:
        return _page("Link not valid", f"<p>{html.escape(str(exc))}</p>", 403)
    except IncidentNotFound:
        return _page("Not found", "<p>This incident does not exist.</p>", 404)
    except TransitionError as exc:
        return _page("Nothing to do", f"<p>{html.escape(str(exc))}</p>", 409)
    except StoreError:
        return _page("Unavailable", "<p>Try again in a moment.</p>", 503)
    done = "Acknowledged" if action == "acknowledge" else "Resolved"
    note = "" if changed else " (it already was)"
    title = f"{done}: incident {incident.id}"
    return _page(
        title,
        f"<h1>{html.escape(title)}{note}</h1><p>{html.escape(clean_text(incident.title))}</p>",
    )


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get(ACK_PATH + "{token}", show_link)
    router.add_post(ACK_PATH + "{token}", use_link)

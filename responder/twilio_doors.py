"""What Twilio posts back: delivery status callbacks, SMS replies and voice keypresses.

Every request must carry a valid ``X-Twilio-Signature`` computed over the configured
``server.public_url`` plus the path Twilio called; without a Twilio channel or a public URL
these doors are closed. Replies a person can send to the Twilio number:

- ``ACK 42`` / ``RES 42``: acknowledge or resolve incident 42;
- ``UNSNOOZE 42``: end incident 42's snooze now, as the API's ``unsnooze`` does;
- ``ACK`` / ``RES`` / ``UNSNOOZE``: the open incident the sender was told of last;
- ``ACK ALL``: every open incident that paged the sender.

Senders are recognised by their number (a contact's ``sms`` or ``voice``); an unknown sender
gets no answer at all and is logged. A number several contacts share (a team phone, one
person in two roles) acts as whichever of them was paged.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

from aiohttp import web

from notifiers.twilio import (
    CALL_SID,
    INBOUND_SMS_PATH,
    MESSAGE_SID,
    STATUS_CALLBACK_PATH,
    VOICE_GATHER_PATH,
    parse_status_callback,
    sms_reply_twiml,
    validate_twilio_signature,
    voice_reply_twiml,
)
from responder.directory import Directory
from responder.incident import Incident, IncidentNotFound, Page, TransitionError
from responder.incidents_api import RearmPending, act
from responder.links import read_small_form
from responder.log import ThrottledLog, fields
from responder.messages import clean_text
from responder.runtime import RUNTIME, Runtime
from responder.store import StoreError, row_id

log = logging.getLogger("responder.twilio")
# Refused callbacks are logged at most this often: these doors are public, and a stranger
# posting to them must not write the log at the rate they send (a full disk; under systemd,
# journald's per-service rate limit would drop the daemon's other lines with theirs).
REFUSED_LOG_EVERY_S = 60.0
# How long a status callback waits for the send it is about to be recorded (Twilio waits
# 15 s for our answer).
CALLBACK_WAIT_S = 10.0

_COMMAND = re.compile(
    r"^\s*(?P<verb>ack|acknowledge|a|res|resolve|r|unsnooze)\b"
    r"\s*#?(?P<what>\d{1,12}|all)?\s*$",
    re.IGNORECASE,
)
_ACTIONS = {"a": "acknowledge", "r": "resolve", "u": "unsnooze"}  # by the verb's first letter

# The answer to a text that is no command.
REPLY_HELP = (
    "Reply ACK, RES or UNSNOOZE with an incident id (without: the one told of last), or ACK ALL."
)


@dataclass(frozen=True, slots=True)
class _Wording:
    """What the sender is answered for an action: done; someone else was first (for an
    unsnooze: there is no snooze to end); refused, it fired again since their page."""

    done: str
    already: str
    refused: str


_WORDING = {
    "acknowledge": _Wording("Acknowledged", "Already acknowledged", "not acknowledged"),
    "resolve": _Wording("Resolved", "Already resolved", "not resolved"),
    "unsnooze": _Wording("Snooze ended for", "Not snoozed", "its snooze not ended"),
}


@dataclass(frozen=True, slots=True)
class Command:
    action: str  # acknowledge | resolve | unsnooze
    incident: int | None  # None: the newest open incident that paged the sender
    everything: bool = False  # ACK ALL


def parse_reply(text: str) -> Command | None:
    """``ACK 42``, ``res 42``, ``UNSNOOZE 42``, ``ACK``, ``ACK ALL``; None for anything
    else."""
    match = _COMMAND.match(text.strip()[:100])
    if match is None:
        return None
    action = _ACTIONS[match["verb"][0].lower()]
    what = (match["what"] or "").lower()
    if what == "all":
        # Only acknowledgements in bulk: an unsnooze pages again, and resolving every open
        # incident from a phone, alerts still firing or not, is one typo from a wrong RES.
        return Command(action, None, everything=True) if action == "acknowledge" else None
    if not what:
        return Command(action, None)
    incident_id = row_id(what)
    return None if incident_id is None else Command(action, incident_id)


def contacts_by_number(directory: Directory, number: str) -> list[str]:
    """Every contact with this number (``sms`` or ``voice``): a team phone shared by several,
    or one person in two roles. A reply acts as whichever of them was paged."""
    if not number:
        return []
    return [c.name for c in directory.contacts.values() if number in (c.sms, c.voice)]


def _now() -> float:
    return asyncio.get_running_loop().time()


REFUSALS = web.AppKey("twilio_refusals", ThrottledLog)

# A request taken again within this time is most likely Twilio retrying (our answer failed
# or came late: Twilio waits 15 s); later, a replay of a captured request.
TWILIO_RETRY_S = 60.0


class TakenOnce:
    """Signed requests that act (an SMS reply, a keypress) are taken once. Twilio's
    signature holds no time nor nonce: a request captured once (a proxy's log, a plain-HTTP
    public_url) stays valid, and an 'ACK' posted again would act on whatever incident is
    open and paged to that number then. The signature covers the fields run together
    (name, value, name, value...), so a sid that takes in the field after it
    (``MessageSid=SM...NumMedia0``) signs the same: the doors take only sids of Twilio's
    exact shape, else a replay would pass as a new request. The store remembers each
    request's sid (for ``storage.retention``) and its answer, which a repeat within
    ``TWILIO_RETRY_S`` gets again: Twilio retries a request whose answer failed or came
    late. In memory, only the requests being answered now, so that a retry arriving
    meanwhile waits for the first answer and reads it.

    No cache of taken sids in front of the store: nearly every request is new, and only
    the store can say so."""

    def __init__(self) -> None:
        self._answering: dict[str, asyncio.Event] = {}

    async def answer(
        self,
        runtime: Runtime,
        sid: str,
        what: str,
        first_answer: Callable[[], Awaitable[str | None]],
        **log_fields: str,
    ) -> str | None:
        """``first_answer()`` the first time ``sid`` comes (what it acts on records the sid
        in the same write; here it is recorded with the answer after); for a repeat, the
        recorded answer if it is Twilio's retry, else None. Raises StoreError if the store
        cannot say."""
        while (busy := self._answering.get(sid)) is not None:
            await busy.wait()
        done = self._answering[sid] = asyncio.Event()
        try:
            taken = await runtime.store.twilio_request(sid)
            if taken is not None:
                after = (runtime.clock.now() - taken.taken_at).total_seconds()
                retried = after <= TWILIO_RETRY_S
                log.log(
                    logging.INFO if retried else logging.WARNING,
                    f"{what} posted again; not acted on again",
                    extra=fields(sid=sid, after_s=round(after), **log_fields),
                )
                # Twilio passes a retry's answer on to the person; a replayer learns nothing.
                return taken.answer if retried else None
            answer = await first_answer()
            await runtime.store.take_twilio_request(sid, runtime.clock.now(), answer)
            return answer
        finally:
            del self._answering[sid]
            done.set()


TAKEN = web.AppKey("twilio_taken_once", TakenOnce)


async def _verified_form(request: web.Request, runtime: Runtime) -> dict[str, str] | None:
    """The POST form if the request really comes from Twilio; None (and a log line, once a
    minute at most) if not."""
    # What the notifiers send with: the account and the URLs of the start, until a restart.
    twilio = runtime.started_with.channels.twilio
    public_url = runtime.started_with.config.server.public_url
    refusals = request.app[REFUSALS]
    if twilio is None or public_url is None:
        refusals.log(
            "Twilio callback refused: no twilio channel or no server.public_url configured",
            path=request.path,
        )
        return None
    params = await read_small_form(request)
    url = public_url.rstrip("/") + request.raw_path
    signature = request.headers.get("X-Twilio-Signature", "")
    if not validate_twilio_signature(twilio.auth_token.value, url, params, signature):
        # The URL the signature was checked against (without its query): one that is not
        # what Twilio was told to call (scheme, host, a proxy's prefix) refuses every
        # callback, and this is where that shows.
        refusals.log(
            "Twilio callback with a bad signature refused",
            path=request.path,
            peer=request.remote,
            checked_url=public_url.rstrip("/") + request.path,
        )
        return None
    return params


def _xml(text: str) -> web.Response:
    return web.Response(text=text, content_type="application/xml")


async def status_callback(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    params = await _verified_form(request, runtime)
    if params is None:
        return web.Response(status=403, text="forbidden")
    update = parse_status_callback(params)
    if update is None or not update.final:
        return web.Response(status=204)
    dispatcher = runtime.dispatcher
    if dispatcher is None:  # not started: the lookup after the start asks Twilio instead
        return web.Response(status=503, text="starting")
    # No replay guard needed: a captured callback can only tell a message's true final
    # status again, and the store applies a final status only to a page still sent or being
    # sent (the first one that came moved it on; a repeat changes nothing).
    # None: not ours (a drill from another daemon, say).
    pages = await _pages_of(runtime, update.provider_id)
    changed = await dispatcher.provider_status(pages, update)
    if changed and not update.delivered:
        # Once per message (a repeat changes nothing): the page went to Twilio fine, so
        # without this line the log would never say why the next in line was paged.
        log.warning(
            "SMS not delivered" if changed[0].channel == "sms" else "call not answered",
            extra=fields(
                pages=[p.id for p in changed],
                incident=changed[0].incident_id,
                contact=changed[0].contact,
                status=update.status,
                error_code=update.error_code,
            ),
        )
    return web.Response(status=204)


async def _pages_of(runtime: Runtime, provider_id: str) -> list[Page]:
    """The pages a provider's ID belongs to. A final status can overtake the record of its
    send (the provider answered; our write is on its way) and Twilio sends a callback only
    once: while deliveries are in progress, wait for them, at most ``CALLBACK_WAIT_S``."""
    pages = await runtime.store.pages_by_provider_id(provider_id)
    dispatcher = runtime.dispatcher
    if pages or dispatcher is None:
        return pages
    deadline = asyncio.get_running_loop().time() + CALLBACK_WAIT_S
    while not pages and dispatcher.sending:
        try:
            async with asyncio.timeout_at(deadline):
                await dispatcher.delivery_settled()
        except TimeoutError:
            break
        pages = await runtime.store.pages_by_provider_id(provider_id)
    return pages


async def inbound_sms(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    params = await _verified_form(request, runtime)
    if params is None:
        return web.Response(status=403, text="forbidden")
    message_sid = params.get("MessageSid", "")
    if not MESSAGE_SID.fullmatch(message_sid):  # Twilio always sends one
        return web.Response(status=400, text="no valid MessageSid")
    sender = params.get("From", "")

    async def first_answer() -> str | None:
        contacts = contacts_by_number(runtime.snapshot.escalation.directory, sender)
        if not contacts:
            log.warning("SMS from an unknown number ignored", extra=fields(sender=sender[-4:]))
            return None
        command = parse_reply(params.get("Body", ""))
        if command is None:
            return REPLY_HELP
        return await _run(runtime, contacts, command, message_sid)

    try:
        reply = await request.app[TAKEN].answer(
            runtime, message_sid, "SMS reply", first_answer, sender=sender[-4:]
        )
    except StoreError:
        reply = "responder cannot reach its database right now; try again or use the CLI."
    return _xml(sms_reply_twiml(reply))


class FiredAgain(Exception):
    """The incident resolved and fired again since the sender's page: the new trigger may
    page someone else, and their reply must not act on it."""

    def __init__(self, started: datetime) -> None:
        super().__init__(started)
        self.started = started


def _same_trigger(told: datetime) -> Callable[[Incident], None]:
    """Checked in the write that acts (as an email link's trigger is): a re-fire between the
    read of what the sender was told and the action must not let the reply act on it."""

    def expect(incident: Incident) -> None:
        if incident.started != told:
            raise FiredAgain(incident.started)

    return expect


async def _run(runtime: Runtime, contacts: list[str], command: Command, message_sid: str) -> str:
    """Act on the reply ``message_sid`` of the number of ``contacts``: as the one of them
    whose page of the incident's trigger reached it last, the message the reply most likely
    answers."""
    wording = _WORDING[command.action]
    # Each incident with the trigger told of, and the contact it was told to.
    targets: list[tuple[int, datetime, str]] = []
    if command.incident is not None:
        # Only an incident this person was told of: a number that can text responder must
        # not be able to close other teams' incidents (email links refuse the same).
        told = await runtime.store.trigger_told(contacts, command.incident)
        if told is None:
            return f"#{command.incident} was not paged to you; use the CLI or the API."
        targets = [(command.incident, *told)]
    else:
        open_incidents = await runtime.store.open_incidents_paged_to(contacts)
        if command.action == "acknowledge" and command.everything:
            open_incidents = [
                (i, paged) for i, paged in open_incidents if i.state.value != "acknowledged"
            ]
        targets = [(i.id, i.started, paged) for i, paged in open_incidents]
        if not command.everything:
            # A bare ACK answers the text told last, also when someone acknowledged it
            # first: skipping to an older incident would stop an escalation nobody answered.
            targets = targets[:1]
        if not targets:
            return "Nothing open to act on."
    done: list[str] = []
    already: list[str] = []  # someone else got there first: the sender must not think it was them
    problems: list[str] = []
    last = len(targets) - 1

    def answer(incident: Incident, changed: bool) -> str:
        """The reply once the last write acted on ``incident``."""
        told = _named(incident, command.action, changed)
        if changed:
            return _sms_reply(wording, [*done, told], already, problems)
        return _sms_reply(wording, done, [*already, told], problems)

    for index, (incident_id, trigger, contact) in enumerate(targets):
        try:
            incident, changed = await act(
                runtime,
                incident_id,
                command.action,
                actor=contact,
                via="sms",
                expect=_same_trigger(trigger),
                # 'ACK ALL' is a write per incident: the reply is taken in the last one, so
                # that Twilio's retry after a crash or a store error part-way finishes the
                # rest (those done are no longer open to it; an acknowledge is harmless).
                # Its answer goes with it: a retry after a crash before the answer went
                # out gets it.
                taking=message_sid if index == last else None,
                answer=answer if index == last else None,
            )
        except IncidentNotFound:
            problems.append(f"#{incident_id} not found")
        except FiredAgain as exc:
            at = exc.started.astimezone(_zone_of(runtime, contact)).strftime("%H:%M %Z")
            problems.append(
                f"#{incident_id} fired again at {at} since your page, {wording.refused} "
                "(use the CLI or the API)"
            )
        except (TransitionError, RearmPending) as exc:
            problems.append(f"#{incident_id}: {exc}")
        else:
            (done if changed else already).append(_named(incident, command.action, changed))
    return _sms_reply(wording, done, already, problems)


def _named(incident: Incident, action: str, changed: bool) -> str:
    """An incident in a reply; one someone else got to first says who, so that the sender
    does not wonder whether it was them; one with no snooze to end says what it is."""
    named = f"#{incident.id} {clean_text(incident.title)}"[:60]
    if changed:
        return named
    if action == "unsnooze":
        by = incident.acknowledged_by
        state = incident.state.value
        return f"{named} ({state} by {clean_text(by)[:30]})" if by else f"{named} ({state})"
    by = incident.resolved_by if action == "resolve" else incident.acknowledged_by
    return f"{named} (by {clean_text(by)[:30]})" if by else named


def _sms_reply(wording: _Wording, done: list[str], already: list[str], problems: list[str]) -> str:
    text = f"{wording.done} {', '.join(done)}." if done else ""
    if already:
        text = (text + " " if text else "") + f"{wording.already}: {', '.join(already)}."
    if problems:
        text = (text + " " if text else "") + "; ".join(problems)
    return text[:300]


def _zone_of(runtime: Runtime, contact: str) -> tzinfo:
    """The contact's time zone, for times in a reply (UTC if the contact is gone)."""
    known = runtime.snapshot.escalation.directory.contacts.get(contact)
    return UTC if known is None else known.timezone


async def voice_keypress(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    params = await _verified_form(request, runtime)
    if params is None:
        return web.Response(status=403, text="forbidden")
    # The call's sid is the keypress's: its <Gather> posts the first key pressed, and our
    # answer hangs up, so a call posts one keypress (a second one is a retry or a replay).
    call_sid = params.get("CallSid", "")
    if not CALL_SID.fullmatch(call_sid):  # Twilio always sends one
        return web.Response(status=400, text="no valid CallSid")

    async def first_answer() -> str:
        return await _keypress(runtime, request.query.get("page", ""), params, call_sid)

    try:
        said = await request.app[TAKEN].answer(runtime, call_sid, "voice keypress", first_answer)
    except StoreError:
        said = "responder cannot reach its database right now. Goodbye."
    return _xml(voice_reply_twiml(said or "Goodbye."))


async def _keypress(runtime: Runtime, page_key: str, params: dict[str, str], call_sid: str) -> str:
    """Act on a keypress of call ``call_sid`` made for the pages ``page_key`` names; what
    to say back."""
    pages = [
        page
        for page_id in _page_ids(page_key)
        if (page := await runtime.store.get_page(page_id)) is not None
    ]
    if not pages:
        return "This page is unknown. Goodbye."
    if params.get("Digits") != "1":
        return "No action taken. Goodbye."
    # One call may carry a bundle: the key acknowledges every incident it told of.
    done: list[str] = []
    problems: list[str] = []
    incident_ids = list(dict.fromkeys(page.incident_id for page in pages))
    last = len(incident_ids) - 1

    def answer(incident: Incident, _changed: bool) -> str:
        # A call says "acknowledged" either way: the person pressed 1 for it.
        return _said([*done, str(incident.id)], problems)

    for index, incident_id in enumerate(incident_ids):
        page = next(p for p in pages if p.incident_id == incident_id)
        # The call told of its page's trigger: not one that began after it.
        expect = None if page.trigger_at is None else _same_trigger(page.trigger_at)
        try:
            await act(
                runtime,
                incident_id,
                "acknowledge",
                actor=page.contact,
                via="voice",
                expect=expect,
                # Taken in the last write only, as an 'ACK ALL' is: Twilio's retry after a
                # crash or a store error part-way finishes the rest of a bundled call.
                taking=call_sid if index == last else None,
                answer=answer if index == last else None,
            )
        except FiredAgain:
            problems.append(f"Incident {incident_id} fired again since; not acknowledged.")
        except (TransitionError, IncidentNotFound) as exc:
            problems.append(f"{exc}.")
        else:
            done.append(str(incident_id))
    return _said(done, problems)


def _said(done: list[str], problems: list[str]) -> str:
    said = []
    if done:
        noun = "Incident" if len(done) == 1 else "Incidents"
        said.append(f"{noun} {', '.join(done)} acknowledged.")
    return " ".join([*said, *problems, "Goodbye."])


def _page_ids(key: str) -> list[int]:
    """The pages a keypress URL's key names: ``page-12`` (one page) or ``bundle-12-13``."""
    for prefix in ("page-", "bundle-"):
        if key.startswith(prefix):
            found = []
            for part in key.removeprefix(prefix).split("-"):
                page_id = row_id(part)
                if page_id is None:
                    return []
                found.append(page_id)
            return found
    return []


def add_routes(app: web.Application) -> None:
    # _now looked up at each call: tests move the loop's time through it.
    app[REFUSALS] = ThrottledLog(log, logging.WARNING, REFUSED_LOG_EVERY_S, lambda: _now())
    app[TAKEN] = TakenOnce()
    router = app.router
    router.add_post(STATUS_CALLBACK_PATH, status_callback)
    router.add_post(INBOUND_SMS_PATH, inbound_sms)
    router.add_post(VOICE_GATHER_PATH, voice_keypress)

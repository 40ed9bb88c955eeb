"""A Twilio-compatible API server on loopback that the real ``twilio`` library talks to.

``FakeTwilio`` answers ``POST /2010-04-01/Accounts/{sid}/Messages.json`` and ``Calls.json``
like the real API (form-encoded requests, HTTP basic auth, JSON answers with ``SM...`` and
``CA...`` SIDs, Twilio's error JSON), records every request, and injects faults on demand: for
the next requests (``fail_next``) or for one number (``fail_number``). ``GET .../Messages/
{sid}.json`` and ``.../Calls/{sid}.json`` answer with the status a message or call has now:
the last callback sent for it, or the one a test set without a callback (``set_status``: a
callback lost while the daemon was down); ``lookups`` lists those requests and
``fail_lookups`` makes them fail. It also plays Twilio's
side of the callbacks: status callbacks, inbound SMS and voice keypresses, each signed with a
valid ``X-Twilio-Signature`` (or a wrong one, to test that the daemon refuses it). Point the
notifier at it with ``TwilioSettings(api_base_url=fake.base_url, ...)``.

Usage::

    async with FakeTwilio() as fake:
        settings = TwilioSettings(fake.account_sid, Secret(fake.auth_token, "test"), ...)
        ...
        assert fake.sent_sms(to="+15005550006")[0].body == "disk full"
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time

# The TwiML parsed here is what the notifier under test wrote, not outside input.
import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from enum import StrEnum
from types import TracebackType
from typing import Self

import aiohttp
import yarl
from aiohttp import web
from twilio.request_validator import RequestValidator

API_VERSION = "2010-04-01"
_E164 = re.compile(r"\+[1-9]\d{1,14}")


class Fault(StrEnum):
    """What the fake does instead of accepting a request."""

    RATE_LIMITED = "429"  # HTTP 429, Twilio error 20429
    SERVER_ERROR = "500"  # HTTP 500, Twilio error 20500: the message may have gone out
    UNAVAILABLE = "503"  # HTTP 503, Twilio error 20503: not taken, try again later
    HANG = "hang"  # never answers (until the server stops or ``hang_seconds`` pass)
    INVALID_NUMBER = "21211"  # HTTP 400: the To number is not valid
    OPTED_OUT = "21610"  # HTTP 400: the recipient replied STOP
    NOT_MOBILE = "21614"  # HTTP 400: the To number cannot receive SMS


_FAULT_ANSWERS: dict[Fault, tuple[int, int, str]] = {
    Fault.RATE_LIMITED: (429, 20429, "Too Many Requests"),
    Fault.SERVER_ERROR: (500, 20500, "An internal server error has occurred"),
    Fault.UNAVAILABLE: (503, 20503, "Service Unavailable"),
    Fault.INVALID_NUMBER: (400, 21211, "The 'To' number {to} is not a valid phone number."),
    Fault.OPTED_OUT: (
        400,
        21610,
        "Attempt to send to unsubscribed recipient",
    ),
    Fault.NOT_MOBILE: (400, 21614, "'To' number {to} is not a valid mobile number"),
}


@dataclass(slots=True)
class TwilioRequest:
    """One API request as the fake saw it."""

    kind: str  # "sms" or "voice"
    to: str
    from_: str
    body: str  # SMS body ("" for calls)
    twiml: str  # call TwiML ("" for SMS)
    status_callback: str
    params: dict[str, str]  # first value of each form field
    at: float  # time.time() when it arrived
    http_status: int = 0  # what the fake answered (0 while hanging)
    sid: str = ""  # set when accepted
    error_code: int | None = None
    statuses: list[str] = field(default_factory=list)  # callbacks sent for it, in order
    all_params: dict[str, list[str]] = field(default_factory=dict)  # repeated fields in full

    @property
    def accepted(self) -> bool:
        return 200 <= self.http_status < 300


@dataclass(frozen=True, slots=True)
class CallbackAnswer:
    """What the daemon answered to a callback the fake posted."""

    status: int
    text: str
    content_type: str


class FakeTwilio:
    """Twilio's REST API for messages and calls, on 127.0.0.1, as an async context manager."""

    def __init__(
        self,
        account_sid: str | None = None,
        auth_token: str | None = None,
        *,
        hang_seconds: float = 30.0,
        port: int = 0,
    ) -> None:
        self._port = port  # 0: any free port
        self.account_sid = account_sid or "AC" + secrets.token_hex(16)
        self.auth_token = auth_token or secrets.token_hex(16)
        self.hang_seconds = hang_seconds
        # Seconds an accepted request waits before its answer: a slow API, whose callbacks
        # can overtake the answer that tells the sender the SID.
        self.answer_delay = 0.0
        self.requests: list[TwilioRequest] = []
        self._next_faults: deque[Fault] = deque()
        self._number_faults: dict[str, Fault] = {}
        self.lookups: list[str] = []  # the message and call SIDs asked for with GET, in order
        self._lookup_fault: Fault | None = None
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.base_url = ""

    # -- lifecycle ----------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        app = web.Application()
        prefix = f"/{API_VERSION}/Accounts/{{sid}}"
        app.router.add_post(prefix + "/Messages.json", self._messages)
        app.router.add_post(prefix + "/Calls.json", self._calls)
        app.router.add_get(prefix + "/Messages/{message_sid}.json", self._fetch_message)
        app.router.add_get(prefix + "/Calls/{message_sid}.json", self._fetch_call)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"
        self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Hanging handlers are released first so that shutdown does not wait for them.
        self._release.set()
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- fault injection ----------------------------------------------------------------------
    def fail_next(self, fault: Fault, count: int = 1) -> None:
        """The next ``count`` requests (any number) get ``fault``."""
        self._next_faults.extend([fault] * count)

    def fail_number(self, number: str, fault: Fault) -> None:
        """Every request to ``number`` gets ``fault`` until ``clear_faults``."""
        self._number_faults[number] = fault

    def clear_faults(self) -> None:
        self._next_faults.clear()
        self._number_faults.clear()
        self._lookup_fault = None

    def fail_lookups(self, fault: Fault | None) -> None:
        """Every message or call lookup (GET) gets ``fault`` until ``None`` or
        ``clear_faults``."""
        self._lookup_fault = fault

    def set_status(self, sid: str, status: str, error_code: int | None = None) -> None:
        """Give message or call ``sid`` a new status (``undelivered``, 30003, say; a call's
        ``no-answer``) and send no callback for it: what the daemon finds when the callback
        was lost."""
        record = self.find(sid)
        record.statuses.append(status)
        record.error_code = error_code

    # -- what was sent ------------------------------------------------------------------------
    def sent_sms(self, to: str | None = None) -> list[TwilioRequest]:
        """Accepted SMS, oldest first, optionally only those to ``to``."""
        return [r for r in self.requests if r.kind == "sms" and r.accepted and to in (None, r.to)]

    def calls(self, to: str | None = None) -> list[TwilioRequest]:
        """Accepted calls, oldest first, optionally only those to ``to``."""
        return [r for r in self.requests if r.kind == "voice" and r.accepted and to in (None, r.to)]

    def find(self, sid: str) -> TwilioRequest:
        for request in self.requests:
            if request.sid == sid:
                return request
        raise KeyError(f"no message or call with SID {sid}")

    # -- the API ------------------------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        try:
            auth = aiohttp.BasicAuth.decode(header)
        except ValueError:
            return False
        return (
            secrets.compare_digest(auth.login, self.account_sid)
            and secrets.compare_digest(auth.password, self.auth_token)
            and request.match_info["sid"] == self.account_sid
        )

    @staticmethod
    def _error(status: int, code: int, message: str) -> web.Response:
        return web.json_response(
            {
                "code": code,
                "message": message,
                "more_info": f"https://www.twilio.com/docs/errors/{code}",
                "status": status,
            },
            status=status,
        )

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        return await self._create(request, "sms")

    async def _calls(self, request: web.Request) -> web.StreamResponse:
        return await self._create(request, "voice")

    async def _create(self, request: web.Request, kind: str) -> web.StreamResponse:
        form = await request.post()
        all_params: dict[str, list[str]] = {}
        for key, value in form.items():
            all_params.setdefault(key, []).append(str(value))
        params = {key: values[0] for key, values in all_params.items()}
        record = TwilioRequest(
            kind=kind,
            to=params.get("To", ""),
            from_=params.get("From", params.get("MessagingServiceSid", "")),
            body=params.get("Body", ""),
            twiml=params.get("Twiml", ""),
            status_callback=params.get("StatusCallback", ""),
            params=params,
            at=time.time(),
            all_params=all_params,
        )
        self.requests.append(record)
        response = await self._answer(request, kind, record)
        record.http_status = response.status
        if record.accepted and self.answer_delay > 0:
            # Accepted (``sent_sms`` lists it, callbacks can be sent) but not answered yet.
            await asyncio.sleep(self.answer_delay)
        return response

    async def _answer(self, request: web.Request, kind: str, record: TwilioRequest) -> web.Response:
        if not self._authorized(request):
            record.error_code = 20003
            return self._error(401, 20003, "Authenticate")
        fault = self._next_faults.popleft() if self._next_faults else None
        faulted = await self._fault_answer(fault or self._number_faults.get(record.to), record)
        if faulted is not None:
            return faulted
        if not record.to:
            return self._error(400, 21604, "A 'To' phone number is required.")
        if not _E164.fullmatch(record.to):
            record.error_code = 21211
            return self._error(
                400, 21211, f"The 'To' number {record.to} is not a valid phone number."
            )
        if not record.from_:
            return self._error(400, 21603, "A 'From' phone number is required.")
        if kind == "sms" and not record.body:
            return self._error(400, 21602, "Message body is required.")
        if kind == "voice" and not (record.twiml or record.params.get("Url")):
            return self._error(400, 21205, "Url or Twiml is required.")
        record.sid = ("SM" if kind == "sms" else "CA") + secrets.token_hex(16)
        record.statuses.append("queued")
        return web.json_response(self._resource(record), status=201)

    async def _fault_answer(
        self, fault: Fault | None, record: TwilioRequest | None = None
    ) -> web.Response | None:
        """Twilio's answer of ``fault`` (its error code recorded on the ``record`` it
        refuses), None without one. A hang is held up to ``hang_seconds``, then a 500."""
        if fault is Fault.HANG:
            # Longer than any client timeout; released when the fake stops.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), self.hang_seconds)
            fault = Fault.SERVER_ERROR
        if fault is None:
            return None
        status, code, text = _FAULT_ANSWERS[fault]
        if record is not None:
            record.error_code = code
        return self._error(status, code, text.format(to=record.to if record else ""))

    def _resource(self, record: TwilioRequest) -> dict[str, object]:
        """The message or call as Twilio's JSON shows it, with its status now."""
        now = format_datetime(datetime.now(UTC), usegmt=True)
        resource = "Messages" if record.kind == "sms" else "Calls"
        payload: dict[str, object] = {
            "sid": record.sid,
            "account_sid": self.account_sid,
            "to": record.to,
            "from": record.params.get("From"),
            "status": record.statuses[-1],
            "error_code": record.error_code,
            "date_created": now,
            "date_updated": now,
            "api_version": API_VERSION,
            "uri": f"/{API_VERSION}/Accounts/{self.account_sid}/{resource}/{record.sid}.json",
        }
        if record.kind == "sms":
            payload |= {
                "body": record.body,
                "direction": "outbound-api",
                "num_segments": "1",
                "messaging_service_sid": record.params.get("MessagingServiceSid"),
            }
        else:
            payload |= {"direction": "outbound-api"}
        return payload

    async def _fetch_message(self, request: web.Request) -> web.StreamResponse:
        return await self._fetch(request, "sms")

    async def _fetch_call(self, request: web.Request) -> web.StreamResponse:
        return await self._fetch(request, "voice")

    async def _fetch(self, request: web.Request, kind: str) -> web.StreamResponse:
        sid = request.match_info["message_sid"]
        self.lookups.append(sid)
        if not self._authorized(request):
            return self._error(401, 20003, "Authenticate")
        faulted = await self._fault_answer(self._lookup_fault)
        if faulted is not None:
            return faulted
        record = next((r for r in self.requests if r.kind == kind and r.sid == sid), None)
        if record is None or not sid:
            return self._error(404, 20404, f"The requested resource {request.path} was not found")
        return web.json_response(self._resource(record))

    # -- Twilio's side of the callbacks -------------------------------------------------------
    def sign(self, url: str, params: dict[str, str]) -> str:
        """The ``X-Twilio-Signature`` Twilio would send for this URL and form."""
        return str(RequestValidator(self.auth_token).compute_signature(url, params))

    async def _post_form(
        self, url: str, params: dict[str, str], *, valid_signature: bool = True
    ) -> CallbackAnswer:
        if self._session is None:
            raise RuntimeError("FakeTwilio is not started")
        if valid_signature:
            signature = self.sign(url, params)
        else:
            # Signed with another key: what a forger without the auth token would send.
            signature = str(
                RequestValidator("not-" + self.auth_token).compute_signature(url, params)
            )
        headers = {"X-Twilio-Signature": signature, "User-Agent": "TwilioProxy/1.1"}
        # encoded=True: the URL goes out byte for byte as given, like Twilio calls it; a
        # normalised URL (%2F turned into /) would no longer match its signature.
        target = yarl.URL(url, encoded=True)
        async with self._session.post(target, data=params, headers=headers) as response:
            return CallbackAnswer(
                response.status, await response.text(), response.headers.get("Content-Type", "")
            )

    async def send_status_callback(
        self, sid: str, status: str, error_code: int | None = None
    ) -> CallbackAnswer:
        """POST a status callback for ``sid`` to the StatusCallback URL it was created with."""
        record = self.find(sid)
        if not record.status_callback:
            raise ValueError(f"{sid} was created without a StatusCallback")
        params = {
            "AccountSid": self.account_sid,
            "From": record.params.get("From", ""),
            "To": record.to,
            "ApiVersion": API_VERSION,
        }
        if record.kind == "sms":
            params |= {
                "MessageSid": sid,
                "SmsSid": sid,
                "MessageStatus": status,
                "SmsStatus": status,
            }
        else:
            params |= {"CallSid": sid, "CallStatus": status, "Direction": "outbound-api"}
        if error_code is not None:
            params["ErrorCode"] = str(error_code)
        record.statuses.append(status)
        record.error_code = error_code
        return await self._post_form(record.status_callback, params)

    async def send_inbound_sms(
        self,
        url: str,
        from_: str,
        to: str,
        body: str,
        *,
        valid_signature: bool = True,
        message_sid: str | None = None,
    ) -> CallbackAnswer:
        """POST an inbound SMS to ``url`` the way Twilio's messaging webhook does; the same
        ``message_sid`` again is the same signed request again (a replay)."""
        sid = message_sid or "SM" + secrets.token_hex(16)
        params = {
            "MessageSid": sid,
            "SmsSid": sid,
            "SmsMessageSid": sid,
            "AccountSid": self.account_sid,
            "From": from_,
            "To": to,
            "Body": body,
            "NumMedia": "0",
            "NumSegments": "1",
            "SmsStatus": "received",
            "ApiVersion": API_VERSION,
        }
        return await self._post_form(url, params, valid_signature=valid_signature)

    async def send_keypress(
        self, call_sid: str, digits: str, *, valid_signature: bool = True
    ) -> CallbackAnswer:
        """Press ``digits`` during call ``call_sid``: POST to its TwiML's <Gather> action."""
        record = self.find(call_sid)
        root = ET.fromstring(record.twiml)  # noqa: S314 - TwiML the notifier under test wrote
        gather = root.find("Gather")
        action = gather.get("action") if gather is not None else None
        if not action:
            raise ValueError(f"call {call_sid} gathers no keypress")
        params = {
            "CallSid": call_sid,
            "AccountSid": self.account_sid,
            "From": record.params.get("From", ""),
            "To": record.to,
            "CallStatus": "in-progress",
            "Direction": "outbound-api",
            "Digits": digits,
            "FinishedOnKey": "",
            "ApiVersion": API_VERSION,
        }
        return await self._post_form(action, params, valid_signature=valid_signature)

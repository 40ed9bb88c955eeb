"""Try paging without real providers: a Twilio-compatible API and an SMTP server on loopback
that print every SMS, call and mail they receive.

    cd examples && ../.venv/bin/python loopback_peers.py

(it needs aiosmtpd, one of the test extras: `.venv/bin/pip install -q -e '.[test]'`),

then start the daemon on examples/paging.yaml (which points at them) and post an alert. The
Twilio side is the fake the tests use (responder.testing.FakeTwilio); its auth token is read
from ./twilio-token, where the config reads it too (shipped with a placeholder, so that
`responder check -c examples/paging.yaml` passes before the peers ever ran; if the file is
removed, a new token is generated into it). Each mail is
printed with the links in its text (the acknowledge link, to try it with a browser or curl).

To answer a page by SMS as that phone would (signed with the same token, as Twilio signs):

    ../.venv/bin/python loopback_peers.py --reply +15551230001 "ACK 1"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import re
import secrets
import signal
from pathlib import Path

import aiohttp

from notifiers.twilio import INBOUND_SMS_PATH
from responder.testing import FakeTwilio, SmtpTestServer

ACCOUNT_SID = "AC" + "0" * 32
LINK = re.compile(r"https?://\S+")


async def main(twilio_port: int, smtp_port: int, token: str) -> None:
    async with (
        FakeTwilio(account_sid=ACCOUNT_SID, auth_token=token, port=twilio_port) as twilio,
        SmtpTestServer(port=smtp_port) as smtp,
    ):
        # Ctrl-C and SIGTERM stop them, also when started from a shell that ignores SIGINT
        # in what it runs (a script, CI: Python then raises no KeyboardInterrupt). Set
        # before they say they are up.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        print(f"twilio api_base_url: {twilio.base_url}  account_sid: {twilio.account_sid}")
        print(f"smtp: 127.0.0.1:{smtp.port}", flush=True)
        seen_sms = seen_calls = seen_mail = 0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
            for request in twilio.sent_sms()[seen_sms:]:
                print(f"SMS  to {request.to}: {request.body!r}", flush=True)
            for request in twilio.calls()[seen_calls:]:
                print(f"CALL to {request.to}", flush=True)
            for mail in smtp.messages[seen_mail:]:
                print(f"MAIL to {mail.rcpt_tos}: {mail.message['Subject']}", flush=True)
                text = mail.message.get_body(("plain",))
                for link in LINK.findall(text.get_content() if text is not None else ""):
                    print(f"     link: {link}", flush=True)
            seen_sms, seen_calls = len(twilio.sent_sms()), len(twilio.calls())
            seen_mail = len(smtp.messages)


async def reply(daemon: str, sender: str, text: str, token: str) -> None:
    """One inbound SMS to the daemon, signed as Twilio signs it; prints the daemon's answer."""
    async with FakeTwilio(account_sid=ACCOUNT_SID, auth_token=token) as twilio:
        try:
            answer = await twilio.send_inbound_sms(
                daemon.rstrip("/") + INBOUND_SMS_PATH, sender, "+15550000000", text
            )
        except aiohttp.ClientConnectionError as exc:
            raise SystemExit(
                f"cannot reach the daemon at {daemon}: {exc}; is it running?"
                " (another address: --daemon URL)"
            ) from None
    print(answer.status, answer.text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Twilio and SMTP stand-ins on loopback.")
    parser.add_argument("--twilio-port", type=int, default=8099)
    parser.add_argument("--smtp-port", type=int, default=2525)
    parser.add_argument("--token-file", type=Path, default=Path("twilio-token"))
    parser.add_argument(
        "--reply",
        nargs=2,
        metavar=("FROM", "TEXT"),
        help="send one SMS reply to the daemon (with the running peers' token) and exit",
    )
    parser.add_argument("--daemon", default="http://127.0.0.1:9096", help="for --reply")
    args = parser.parse_args()
    if args.reply:
        token = args.token_file.read_text().strip()
        asyncio.run(reply(args.daemon, args.reply[0], args.reply[1], token))
        raise SystemExit(0)
    # Kept across restarts: a daemon already running reads the token once, at its start.
    token = args.token_file.read_text().strip() if args.token_file.exists() else ""
    if not token:
        token = secrets.token_hex(16)
        args.token_file.write_text(token + "\n")
    args.token_file.chmod(0o600)
    try:
        asyncio.run(main(args.twilio_port, args.smtp_port, token))
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise SystemExit(f"{exc.strerror}; other ports: --twilio-port N --smtp-port M") from None

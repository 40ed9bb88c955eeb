"""Test peers shipped with the package, like ``structlog.testing``: real servers on loopback.

``FakeTwilio`` (``responder.testing.fake_twilio``) is a Twilio-compatible API that the real
``twilio`` library talks to, and that plays Twilio's side of status callbacks, inbound SMS and
voice keypresses. ``SmtpTestServer`` (``responder.testing.smtp_server``) is aiosmtpd with
switches for TLS, AUTH and failures. The names are imported lazily so that using one peer does
not require the other's dependencies (aiosmtpd is a test extra). The daemon never imports this.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from responder.testing.fake_twilio import CallbackAnswer, FakeTwilio, Fault, TwilioRequest
    from responder.testing.smtp_server import (
        ReceivedMessage,
        SmtpTestServer,
        TlsMode,
        self_signed_cert,
    )

_WHERE = {
    "CallbackAnswer": "fake_twilio",
    "FakeTwilio": "fake_twilio",
    "Fault": "fake_twilio",
    "TwilioRequest": "fake_twilio",
    "ReceivedMessage": "smtp_server",
    "SmtpTestServer": "smtp_server",
    "TlsMode": "smtp_server",
    "self_signed_cert": "smtp_server",
}

__all__ = [
    "CallbackAnswer",
    "FakeTwilio",
    "Fault",
    "ReceivedMessage",
    "SmtpTestServer",
    "TlsMode",
    "TwilioRequest",
    "self_signed_cert",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"responder.testing.{module}"), name)

"""Channel adapters: one module per channel behind the ``Notifier`` interface in ``base``.

The daemon's core only ever sees ``Message``, ``Receipt`` and ``DeliveryError``; provider SDKs
(twilio, aiosmtplib) are imported by the adapters alone.
"""

from notifiers.base import DeliveryError, Message, Notifier, Receipt

__all__ = ["DeliveryError", "Message", "Notifier", "Receipt"]

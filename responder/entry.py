"""The ``responder`` command's entry point: it holds SIGHUP before the slow imports.

systemd may send SIGHUP (``systemctl reload``, a logrotate hook) as soon as the process has
started, and SIGHUP's default action ends it. Importing the daemon takes about half a second;
the daemon installs its own handler later still, once the store is open. Until then a SIGHUP
is remembered here, and the daemon reloads once it can (``app._sighup_reload``).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

EARLY_SIGHUP = threading.Event()


def _remember(_signum: int, _frame: FrameType | None) -> None:
    EARLY_SIGHUP.set()


def main() -> int:
    signal.signal(signal.SIGHUP, _remember)
    from responder.cli import main as cli_main  # the slow imports

    return cli_main()

"""Structured logs: one line per event, as ``key=value`` text or as JSON for journald.

Call sites log an event name and fields: ``log.info("webhook accepted", extra=fields(n=3))``.
Values are data from outside (labels!), so the text format quotes anything with spaces,
quotes or control characters, and the JSON format escapes them: a label can never forge a
log line.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web import BaseRequest, StreamResponse


def fields(**values: Any) -> dict[str, Any]:
    """Wrap event fields for ``extra=`` so they land under one attribute."""
    return {"fields": values}


# How often a store error that repeats (every webhook, every pass of a loop) is logged.
STORE_ERROR_LOG_EVERY_S = 60.0


class ThrottledLog:
    """One kind of event that may repeat at a high rate (refused requests, a store that keeps
    failing): logged at most once every ``every_s`` seconds of ``clock`` (monotonic), with
    how many were not logged since the line before. A flood must not fill the disk or, under
    systemd, trip journald's rate limit, which would drop the daemon's other lines too."""

    def __init__(
        self,
        logger: logging.Logger,
        level: int,
        every_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger, self._level, self._every_s, self._clock = logger, level, every_s, clock
        self._last: float | None = None
        self._held = 0

    def log(self, event: str, **values: Any) -> None:
        now = self._clock()
        if self._last is not None and now - self._last < self._every_s:
            self._held += 1
            return
        self._logger.log(self._level, event, extra=fields(**values, not_logged_since=self._held))
        self._last, self._held = now, 0


def _fields_of(record: logging.LogRecord) -> dict[str, Any]:
    values = getattr(record, "fields", None)
    return dict(values) if isinstance(values, dict) else {}


# Characters that are not visible text: controls (C1 included, which some terminals obey),
# format characters (bidi overrides), line and paragraph separators (which splitlines() and
# some log viewers break on), surrogates and unassigned code points.
_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_NON_ASCII = re.compile(r"[^\x00-\x7e]")


def _escape_invisible(text: str) -> str:
    """JSON text with every invisible non-ASCII character written as ``\\uXXXX``: a label
    can never forge a log line, nor reach a terminal as a control."""

    def escape(match: re.Match[str]) -> str:
        ch = match.group()
        if unicodedata.category(ch) not in _INVISIBLE:
            return ch
        return json.dumps(ch)[1:-1]  # \\u escape; a character beyond the BMP as a pair

    return text if text.isascii() else _NON_ASCII.sub(escape, text)


def _quote(value: Any) -> str:
    text = str(value)
    if text and all(c.isalnum() or c in "-_.:/@+,[]()" for c in text):
        return text
    return _escape_invisible(json.dumps(text, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        parts = [when[:-4] + "Z", record.levelname.lower(), _quote(record.getMessage())]
        parts.extend(f"{key}={_quote(value)}" for key, value in _fields_of(record).items())
        if record.exc_info:
            parts.append("error=" + _quote(self.formatException(record.exc_info)))
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        document.update(_fields_of(record))
        if record.exc_info:
            document["error"] = self.formatException(record.exc_info)
        return _escape_invisible(json.dumps(document, ensure_ascii=False, default=str))


# How often a malformed HTTP request (a stranger's, a scanner's) is logged.
MALFORMED_LOG_EVERY_S = 60.0


class MalformedRequests(logging.Filter):
    """aiohttp logs every request it cannot parse (a line or header too long, a bad header,
    a broken body) at error, with a traceback: unthrottled, from anyone who can reach the
    public doors (ack links, Twilio), with nothing wrong in the daemon. Such lines are turned
    into one warning without the traceback at most once every ``every_s`` seconds, with how
    many were not logged since; the daemon's own errors pass as they are."""

    def __init__(
        self, every_s: float = MALFORMED_LOG_EVERY_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self._every_s, self._clock = every_s, clock
        self._last: float | None = None
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            return True
        now = self._clock()
        if self._last is not None and now - self._last < self._every_s:
            self._held += 1
            return False
        peer = record.args[0] if isinstance(record.args, tuple) and record.args else None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg, record.args = "malformed HTTP request refused", None
        record.exc_info, record.exc_text = None, None
        record.__dict__.update(
            fields(
                peer=peer,
                status=error.code,
                error=error.message[:200],
                not_logged_since=self._held,
            )
        )
        self._last, self._held = now, 0
        return True


# syslog priorities, for journald's "<N>" line prefix (SyslogLevelPrefix=, on by default).
_PRIORITY = {"CRITICAL": 2, "ERROR": 3, "WARNING": 4, "INFO": 6, "DEBUG": 7}


class _JournalPrefix(logging.Formatter):
    """Under systemd, prefix each line with its priority so `journalctl -p err` works."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelname, 6)
        return f"<{priority}>{self._inner.format(record)}"


def _stderr_is_the_journal() -> bool:
    """systemd sets JOURNAL_STREAM to the journal stream's device:inode; a child that
    inherited the variable but writes elsewhere (a redirect, a pipe) must not prefix."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        stat = os.fstat(sys.stderr.fileno())
        return (stat.st_dev, stat.st_ino) == (int(device), int(inode))
    except (ValueError, OSError, AttributeError):
        return False


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    if _stderr_is_the_journal():
        formatter = _JournalPrefix(formatter)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log is off unless asked for; its other loggers stay at warning.
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    server.filters[:] = [f for f in server.filters if not isinstance(f, MalformedRequests)]
    server.addFilter(MalformedRequests())


class AccessLog(AbstractAccessLogger):
    """``server.access_log``: one event per request. The path of an acknowledge link is its
    signed token, a credential that acknowledges an incident: it never reaches the log."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        path = request.path
        if path.startswith(_ACK_PATH):
            path = _ACK_PATH + "<token>"
        self.logger.info(
            "request",
            extra=fields(
                peer=request.remote,
                method=request.method,
                path=path,
                status=response.status,
                bytes=response.body_length,
                seconds=round(time, 6),
            ),
        )


_ACK_PATH = "/ack/"  # links.ACK_PATH (links imports this module, by way of runtime)

"""Log lines: the journal's priority prefix only when stderr really is the journal."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from responder.log import JsonFormatter, TextFormatter, fields

SCRIPT = (
    "import logging; from responder.log import setup_logging; setup_logging(); "
    "logging.getLogger('responder').error('boom')"
)


def run(stderr_path: Path, journal_stream: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal_stream is not None:
        env["JOURNAL_STREAM"] = journal_stream
    with stderr_path.open("wb") as stderr:
        subprocess.run([sys.executable, "-c", SCRIPT], stderr=stderr, env=env, check=True)
    return stderr_path.read_text()


def test_priority_prefix_only_on_the_stream_systemd_named(tmp_path: Path) -> None:
    """systemd names the journal stream (device:inode) in JOURNAL_STREAM; a process whose
    stderr was redirected elsewhere keeps the variable but must write plain lines."""
    path = tmp_path / "stderr"
    path.touch()
    stat = path.stat()
    assert run(path, f"{stat.st_dev}:{stat.st_ino}").startswith("<3>")
    assert not run(path, "1:2").startswith("<")
    assert not run(path, None).startswith("<")


def test_a_label_cannot_break_or_colour_a_log_line() -> None:
    """C1 controls (U+009B starts a terminal escape), Unicode line breaks and bidi
    overrides are escaped in both formats; visible non-ASCII text stays as it is (security
    review, stop 13)."""
    hostile = "x\u009b31m\u2028forged\u0085line\u202e end, caf\u00e9 \u65e5\u672c"
    record = logging.LogRecord("responder", logging.WARNING, __file__, 1, "webhook", None, None)
    record.__dict__.update(fields(label=hostile))
    for formatter in (TextFormatter(), JsonFormatter()):
        line = formatter.format(record)
        assert line.splitlines() == [line]
        assert not any(ch in line for ch in "\u009b\u2028\u0085\u202e")
        assert "caf\u00e9 \u65e5\u672c" in line
    document = json.loads(JsonFormatter().format(record))
    assert document["label"] == hostile  # escaped, not lost


MALFORMED = """
import asyncio, logging, socket
from aiohttp import web
from responder.log import setup_logging

async def broken(request):
    raise RuntimeError("a bug of ours")

async def main():
    setup_logging()
    app = web.Application()
    app.router.add_get("/broken", broken)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    requests = [b"GET /" + b"A" * 9000 + b" HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n"] * 5
    requests.append(b"GET /broken HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
    for raw in requests:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        await reader.read()
        writer.close()
    await runner.cleanup()

asyncio.run(main())
"""


def test_malformed_requests_are_one_warning_a_minute_without_a_traceback(
    tmp_path: Path,
) -> None:
    """aiohttp logs each request it cannot parse at error with a traceback: anyone who can
    reach the public doors (ack links, Twilio) must not write the log at the rate they send.
    The daemon's own errors still come with their traceback."""
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    done = subprocess.run(
        [sys.executable, "-c", MALFORMED], capture_output=True, text=True, env=env, check=True
    )
    lines = done.stderr.splitlines()
    malformed = [line for line in lines if "malformed HTTP request" in line]
    assert len(malformed) == 1, done.stderr
    assert " warning " in malformed[0]
    assert "status=400" in malformed[0]
    assert "Traceback" not in malformed[0]
    bugs = [line for line in lines if "Error handling request" in line]
    assert len(bugs) == 1, done.stderr
    assert " error " in bugs[0]
    assert "a bug of ours" in bugs[0]

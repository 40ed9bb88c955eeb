"""A real ``responder serve`` process: start, signals, generated token, and kill -9."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from responder.app import quiet_accept_errors
from responder.auth import ensure_generated_secret
from responder.secrets import Secret
from tests.conftest import TOKEN, payload, write_config

START_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Daemon:
    process: asyncio.subprocess.Process
    url: str
    log: Path

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.process.returncode is not None:
                    raise AssertionError(f"daemon exited early:\n{self.log.read_text()}")
                try:
                    async with session.get(self.url + "/-/ready") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    # not listening yet: poll again after the pause below
                    ...
                await asyncio.sleep(0.05)
        raise AssertionError(f"daemon not ready in time:\n{self.log.read_text()}")


async def spawn(config: Path, *extra: str) -> Daemon:
    """A ``responder serve`` process on a free port, its output in a log beside the config;
    not waited for."""
    port = free_port()
    log = config.parent / f"daemon-{port}.log"
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "responder",
            "serve",
            "-c",
            str(config),
            "--listen",
            f"127.0.0.1:{port}",
            *extra,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return Daemon(process, f"http://127.0.0.1:{port}", log)


@asynccontextmanager
async def running(config: Path, *extra: str) -> AsyncIterator[Daemon]:
    daemon = await spawn(config, *extra)
    process = daemon.process
    try:
        await daemon.wait_ready()
        yield daemon
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def post(session: aiohttp.ClientSession, url: str, document: Any, token: str = TOKEN) -> int:
    async with session.post(
        url + "/api/v1/alertmanager",
        data=json.dumps(document),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    ) as response:
        return response.status


def numbered_alert(i: int) -> dict[str, Any]:
    document = payload("firing-api")
    alert = document["alerts"][0]
    alert["labels"] = {**alert["labels"], "instance": f"host-{i}"}
    alert["fingerprint"] = f"{i:016x}"
    return document


async def test_sigterm_exits_cleanly(tmp_path: Path) -> None:
    """SIGTERM stops the daemon with exit status 0 within the shutdown bound."""
    async with running(write_config(tmp_path)) as daemon:
        async with aiohttp.ClientSession() as session:
            assert await post(session, daemon.url, payload("firing-api")) == 200
        daemon.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(daemon.process.wait(), 15) == 0
    assert "responder stopped" in daemon.log.read_text()


async def _webhook_begun(
    daemon: Daemon, length: int, first: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A webhook's headers (``Content-Length: length``) and the first bytes of its body."""
    port = int(daemon.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /api/v1/alertmanager HTTP/1.1\r\nHost: responder\r\n"
        b"Content-Type: application/json\r\n"
        + f"Authorization: Bearer {TOKEN}\r\nContent-Length: {length}\r\n\r\n".encode()
        + first
    )
    await writer.drain()
    return reader, writer


async def test_sigterm_finishes_a_webhook_whose_body_is_on_its_way(tmp_path: Path) -> None:
    """A webhook whose headers came before SIGTERM and whose body comes after it is read,
    stored and answered, and the daemon then exits at once. aiohttp alone drops what
    arrives after its shutdown began: the request waited out shutdown_timeout and its
    connection closed without an answer."""
    async with running(write_config(tmp_path)) as daemon:
        body = json.dumps(numbered_alert(7)).encode()
        reader, writer = await _webhook_begun(daemon, len(body), body[:10])
        await asyncio.sleep(0.3)  # the handler has begun to read the body
        started = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)  # shutdown is under way
        writer.write(body[10:])
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        assert status_line.startswith(b"HTTP/1.1 200"), status_line
        assert await asyncio.wait_for(daemon.process.wait(), 5) == 0
        assert time.monotonic() - started < 5  # not shutdown_timeout (10 s)
    database = sqlite3.connect(tmp_path / "state" / "responder.db")
    with contextlib.closing(database):
        (stored,) = database.execute("SELECT count(*) FROM alerts").fetchone()
    assert stored == 1


async def test_a_second_sigterm_cuts_a_stuck_request_off_and_closes_the_store(
    tmp_path: Path,
) -> None:
    """While the daemon waits for a request in flight (a body that stopped arriving), a
    second SIGTERM cuts it off at once, and the daemon still closes its store and exits 0
    (aiohttp's own second signal left the store open and exited 1)."""
    async with running(write_config(tmp_path)) as daemon:
        _, writer = await _webhook_begun(daemon, 1000, b"{")
        await asyncio.sleep(0.3)
        started = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        daemon.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(daemon.process.wait(), 5) == 0
        assert time.monotonic() - started < 5
        writer.close()
    log = daemon.log.read_text()
    assert "store closed" in log
    assert "Traceback" not in log


async def test_sighup_reload_keeps_old_config_on_error(tmp_path: Path) -> None:
    """SIGHUP with a broken file keeps serving on the old config and says why."""
    config = write_config(tmp_path)
    async with running(config) as daemon, aiohttp.ClientSession() as session:
        good = config.read_text()
        config.write_text(good + "alerts:\n  stale_after: often\n")
        daemon.process.send_signal(signal.SIGHUP)

        async def reload_metric() -> str:
            async with session.get(daemon.url + "/metrics") as response:
                text = await response.text()
            return next(
                line
                for line in text.splitlines()
                if line.startswith("responder_config_last_reload_successful ")
            )

        for _ in range(100):
            if (await reload_metric()).endswith(" 0.0"):
                break
            await asyncio.sleep(0.05)
        assert (await reload_metric()).endswith(" 0.0")
        assert "alerts.stale_after" in daemon.log.read_text()
        assert await post(session, daemon.url, payload("firing-api")) == 200
        config.write_text(good)
        daemon.process.send_signal(signal.SIGHUP)
        for _ in range(100):
            if (await reload_metric()).endswith(" 1.0"):
                break
            await asyncio.sleep(0.05)
        assert (await reload_metric()).endswith(" 1.0")


async def test_generated_token_when_none_configured(tmp_path: Path) -> None:
    """Without credentials in config, a 0600 token is generated and is the only way in."""
    rules = Path(__file__).parent.parent / "rules"
    config = tmp_path / "config.yaml"
    config.write_text(f"classification:\n  rule_files: ['{rules}/*.yaml']\n")
    async with running(config) as daemon, aiohttp.ClientSession() as session:
        token_file = tmp_path / "state" / "webhook-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token_cmd = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "responder",
            "token",
            "-c",
            str(config),
            stdout=subprocess.PIPE,
        )
        printed = (await token_cmd.communicate())[0].decode().strip()
        assert printed == token_file.read_text().strip()
        assert await post(session, daemon.url, payload("firing-api"), token="guess") == 401
        assert await post(session, daemon.url, payload("firing-api"), token=printed) == 200
        assert str(token_file) in daemon.log.read_text()
        assert printed not in daemon.log.read_text()  # the secret itself never reaches a log


def test_a_secret_generated_by_several_at_once_is_one_whole_secret(tmp_path: Path) -> None:
    """First starts at once (``responder token`` beside ``serve``): every one of them gets
    the same secret, never a file read before it was written."""
    for attempt in range(50):
        path = tmp_path / f"state-{attempt}" / "webhook-token"
        start = threading.Barrier(4)
        got: list[tuple[Secret, bool]] = []

        def generate() -> None:
            start.wait()  # noqa: B023 - joined below, before the loop moves on
            got.append(ensure_generated_secret(path))  # noqa: B023

        threads = [threading.Thread(target=generate) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert {secret.value for secret, _ in got} == {path.read_text().strip()}
        assert len(path.read_text().strip()) >= 40
        assert [created for _, created in got].count(True) == 1
        assert [p.name for p in path.parent.iterdir()] == ["webhook-token"]  # no leftovers


async def test_an_empty_generated_secret_is_refused(tmp_path: Path) -> None:
    """An empty token file (cut short by an older release's crash) would let anyone in with
    ``Authorization: Bearer``: the daemon and ``responder token`` refuse it, and say why."""
    rules = Path(__file__).parent.parent / "rules"
    config = tmp_path / "config.yaml"
    config.write_text(f"classification:\n  rule_files: ['{rules}/*.yaml']\n")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "webhook-token").write_text("\n")
    for command in ("token", "serve"):
        done = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "responder",
            command,
            "-c",
            str(config),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        output = (await asyncio.wait_for(done.communicate(), 30))[0].decode()
        assert done.returncode == 1, output
        assert "webhook-token is empty; delete it" in output, output


async def test_kill_9_loses_no_acknowledged_alert(tmp_path: Path) -> None:
    """kill -9 during a stream of webhooks: every alert answered 2xx is in the store after."""
    config = write_config(tmp_path)
    accepted: list[int] = []
    enough = asyncio.Event()
    async with running(config) as daemon, aiohttp.ClientSession() as session:

        async def sender(worker: int) -> None:
            for n in range(10_000):
                i = worker * 100_000 + n
                try:
                    status = await post(session, daemon.url, numbered_alert(i))
                except (TimeoutError, aiohttp.ClientError):
                    return
                if status == 200:
                    accepted.append(i)
                    if len(accepted) >= 300:
                        enough.set()

        senders = [asyncio.create_task(sender(w)) for w in range(8)]
        await asyncio.wait_for(enough.wait(), 60)
        os.kill(daemon.process.pid, signal.SIGKILL)
        await daemon.process.wait()
        await asyncio.gather(*senders)
    assert len(accepted) >= 300
    with sqlite3.connect(tmp_path / "state" / "responder.db") as conn:
        stored = {int(row[0], 16) for row in conn.execute("SELECT fingerprint FROM alerts")}
    missing = set(accepted) - stored
    assert not missing, f"{len(missing)} acknowledged alerts lost"
    # And the daemon starts again on the same database and keeps deduplicating.
    async with running(config) as daemon, aiohttp.ClientSession() as session:
        assert await post(session, daemon.url, numbered_alert(accepted[0])) == 200
        async with session.get(
            daemon.url + "/api/v1/alerts",
            params={"fingerprint": f"{accepted[0]:016x}"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as response:
            (alert,) = (await response.json())["data"]
        assert alert["receiveCount"] == 2


async def test_a_sighup_while_starting_is_held_and_applied(tmp_path: Path) -> None:
    """systemd may send SIGHUP (reload) right after it started the process; SIGHUP's
    default action would end the daemon. It is held, and the reload runs once the daemon
    is up (ops review, stop 13)."""
    daemon = await spawn(write_config(tmp_path))
    process, log = daemon.process, daemon.log
    try:
        await asyncio.sleep(0.2)  # past the interpreter's own start, within the imports
        assert process.returncode is None
        process.send_signal(signal.SIGHUP)
        await daemon.wait_ready()
        for _ in range(100):
            if "config reloaded" in log.read_text():
                break
            await asyncio.sleep(0.05)
        assert "config reloaded" in log.read_text()
        assert process.returncode is None
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_second_daemon_on_the_same_state_directory_is_refused(tmp_path: Path) -> None:
    """Two daemons on one database would each take over the other's pages in flight: the
    second exits 1 saying why, and the first serves on (ops review, stop 13)."""
    config = write_config(tmp_path)
    async with running(config) as first:
        second = await spawn(config)
        assert await asyncio.wait_for(second.process.wait(), 30) == 1
        assert "another responder (pid " in second.log.read_text()
        async with aiohttp.ClientSession() as session:
            assert await post(session, first.url, payload("firing-api")) == 200


async def test_systemd_is_told_ready_then_stopping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under Type=notify, systemd holds a reload until READY=1: the daemon sends it once
    the store, engines and its SIGHUP handler are up, and STOPPING=1 at SIGTERM."""
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address)
        listener.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        async with running(write_config(tmp_path)) as daemon:
            loop = asyncio.get_running_loop()
            ready = await asyncio.wait_for(loop.sock_recv(listener, 64), 10)
            assert ready == b"READY=1"
            daemon.process.send_signal(signal.SIGTERM)
            stopping = await asyncio.wait_for(loop.sock_recv(listener, 64), 10)
            assert stopping == b"STOPPING=1"
            assert await asyncio.wait_for(daemon.process.wait(), 15) == 0


def _port_taken() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, sock.getsockname()[1]


async def test_systemd_is_not_told_ready_when_the_address_is_taken(tmp_path: Path) -> None:
    """READY=1 makes 'systemctl start' succeed: it must not be sent by a daemon that then
    fails to listen (address in use) and exits 1."""
    cfg = write_config(tmp_path)
    address = str(tmp_path / "notify")
    taken, port = _port_taken()
    with taken, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address)
        listener.setblocking(False)
        env = {**os.environ, "NOTIFY_SOCKET": address}
        log = tmp_path / "daemon.log"
        with log.open("wb") as sink:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "responder",
                "serve",
                "-c",
                str(cfg),
                "--listen",
                f"127.0.0.1:{port}",
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        code = await asyncio.wait_for(process.wait(), 30)
        got = []
        while True:
            try:
                got.append(listener.recv(64))
            except BlockingIOError:
                break
        assert code == 1
        assert b"READY=1" not in got, got


async def test_ready_is_sent_by_a_daemon_that_accepts_connections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The notify queue is full, so the daemon blocks in sending READY=1: its address
    already accepts connections then (bound and listening before the app starts; fifth
    review, stop 13)."""
    address = str(tmp_path / "notify")
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as filler,
    ):
        listener.bind(address)
        listener.setblocking(False)
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:  # fill the queue: the daemon's READY=1 waits for room
                filler.sendto(b"x", address)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        daemon = await spawn(write_config(tmp_path))
        try:
            for _ in range(400):  # "store open" is logged after the bind, before READY=1
                if "store open" in daemon.log.read_text():
                    break
                await asyncio.sleep(0.05)
            port = int(daemon.url.rsplit(":", 1)[1])
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            got: list[bytes] = []
            for _ in range(2000):  # let READY=1 through now
                try:
                    got.append(listener.recv(64))
                except BlockingIOError:
                    if b"READY=1" in got:
                        break
                    await asyncio.sleep(0.01)
            assert b"READY=1" in got
        finally:
            daemon.process.kill()
            await daemon.process.wait()


async def test_the_daemon_takes_all_the_file_descriptors_it_may(tmp_path: Path) -> None:
    """Started under a soft limit of 256 (systemd's default is 1,024), the daemon raises it to
    the hard limit: idle connections from anyone who can reach the port must not use up its
    descriptors and lock Alertmanager out (review of stop 14)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # The daemon's own limits: a finite hard one (lowering it needs no privilege).
    hard = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    soft = min(256, hard)
    port = free_port()
    log = tmp_path / "daemon.log"
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "responder",
            "serve",
            "-c",
            str(write_config(tmp_path)),
            "--listen",
            f"127.0.0.1:{port}",
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
        )
    daemon = Daemon(process, f"http://127.0.0.1:{port}", log)
    try:
        await daemon.wait_ready()
        limits = await asyncio.to_thread(Path(f"/proc/{process.pid}/limits").read_text)
        line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
        assert line.split()[3] == str(hard), line
    finally:
        process.kill()
        await process.wait()


async def test_accept_errors_are_logged_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    """Out of descriptors, asyncio retries accept() every second and logs a traceback each
    time: 184 MB of log in 30 s, on the disk the database lives on. Once a minute now; other
    loop errors are logged as before."""
    loop = asyncio.get_running_loop()
    before = loop.get_exception_handler()
    quiet_accept_errors(loop)
    try:
        with caplog.at_level(logging.ERROR):
            for _ in range(5):
                loop.call_exception_handler(
                    {"message": "socket.accept() out of system resource", "exception": OSError(24)}
                )
            loop.call_exception_handler({"message": "something else went wrong"})
    finally:
        loop.set_exception_handler(before)
    texts = [r.getMessage() for r in caplog.records]
    assert sum("cannot accept connections" in t for t in texts) == 1
    assert any("something else went wrong" in t for t in texts)

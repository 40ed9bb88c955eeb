"""`responder alerts` and `responder incidents` against a daemon: a list cut at --limit says
so, so that a page of 100 rows in a storm does not read as all there is."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from responder import api, cli
from responder.app import build_app
from responder.runtime import load_snapshot
from tests.conftest import AUTH, payload, write_config


@asynccontextmanager
async def daemon(folder: Path, text: str = "") -> AsyncIterator[tuple[Path, str]]:
    """The daemon served as ``responder serve`` serves it, on 127.0.0.1, with ``text`` added
    to its config; yields its config (which names the address) and its URL."""
    (sock,) = cli.listening_sockets("127.0.0.1", 0)
    port = sock.getsockname()[1]
    config = write_config(folder, f"server:\n  listen: 127.0.0.1:{port}\n{text}")
    snapshot = load_snapshot(config)
    runner = web.AppRunner(build_app(snapshot), **cli.runner_options(snapshot.config))
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        yield config, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def post_alerts(url: str, count: int) -> None:
    """``count`` firing alerts, each in a group of its own and so its own incident."""
    async with aiohttp.ClientSession() as session:
        for i in range(count):
            document = payload("firing-api")
            alert: dict[str, Any] = document["alerts"][0]
            alert["labels"]["alertname"] = f"Alert{i}"
            alert["fingerprint"] = f"{i:016x}"
            document["groupKey"] = f'{{}}:{{alertname="Alert{i}"}}'
            async with session.post(
                url + "/api/v1/alertmanager", json=document, headers=AUTH
            ) as response:
                assert response.status == 200, await response.text()


async def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    # In a thread: the command runs its own event loop, as it does from a shell.
    code = await asyncio.to_thread(cli.main, list(args))
    out, err = capsys.readouterr()
    return code, out, err


async def test_a_list_cut_at_its_limit_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with daemon(tmp_path) as (config, url):
        await post_alerts(url, 3)
        for command in ("alerts", "incidents"):
            code, out, err = await run_cli(capsys, command, "-c", str(config), "--limit", "2")
            assert code == 0, err
            assert len(out.splitlines()) == 1 + 2  # the header and two rows
            assert f"more {command} than the 2 shown" in err, (command, err)
            code, out, err = await run_cli(capsys, command, "-c", str(config), "--limit", "3")
            assert code == 0, err
            assert len(out.splitlines()) == 1 + 3
            assert err == "", (command, err)
        code, out, err = await run_cli(
            capsys,
            "alerts",
            "-c",
            str(config),
            "--limit",
            "2",
            "--filter",
            'alertname=~"Alert[01]"',
        )
        assert (code, len(out.splitlines()), err) == (0, 1 + 2, "")
        code, out, err = await run_cli(capsys, "alerts", "-c", str(config), "--limit", "0")
        assert code == 2
        assert "limit: must be 1 to 10000" in err


@pytest.mark.parametrize("command", ["alerts", "incidents"])
async def test_a_list_cut_at_the_limit_says_where_the_next_page_starts(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    """`responder alerts` or `responder incidents` cut at --limit names the --before of the
    next page, and that page goes on from there; a list cut at the daemon's largest limit
    says so too (the command asked for one more than it showed to tell, which it could not
    at that limit)."""
    async with daemon(tmp_path) as (config, url):
        await post_alerts(url, 3)

        async def listed(*args: str) -> tuple[list[str], str]:
            code, out, err = await run_cli(capsys, command, "-c", str(config), *args)
            assert code == 0, err
            return [line.split()[0] for line in out.splitlines()[1:]], err

        ids, err = await listed("--limit", "2")
        assert ids == ["3", "2"]
        assert f"more {command} than the 2 shown" in err
        assert "--before 2 the next ones" in err
        assert await listed("--limit", "2", "--before", "2") == (["1"], "")
        code, out, err = await run_cli(capsys, command, "-c", str(config), "--before", "1")
        assert (code, err) == (0, "")
        assert "older than 1" in out or "match" in out, out  # an empty page, not an empty store
        monkeypatch.setattr(api, "MAX_LIMIT", 2)  # the daemon's largest limit, here 2
        ids, err = await listed("--limit", "2")
        assert ids == ["3", "2"]
        assert f"more {command} than the 2 shown" in err


async def test_a_period_report_cut_at_the_daemons_largest_page_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`responder report --since` whose incidents do not fit one page must not pass for the
    whole period: it says so and fails."""
    monkeypatch.setattr(cli, "REPORT_LIMIT", 2)
    async with daemon(tmp_path) as (config, url):
        await post_alerts(url, 2)
        code, _, err = await run_cli(capsys, "report", "-c", str(config), "--since", "1d")
        assert (code, err) == (0, "")
        await post_alerts(url, 3)  # a third incident (the first two only repeat)
        code, _, err = await run_cli(capsys, "report", "-c", str(config), "--since", "1d")
        assert code == cli.EXIT_FAILED
        assert "more than 2 incidents since" in err


async def test_a_reassignment_says_to_whom(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`reassign` leaves the state as it was: the answer names the new assignee instead of
    a bare "incident 1: triggered" (new-user review)."""
    async with daemon(tmp_path, "contacts:\n  alice: {email: alice@example.com}\n") as (
        config,
        url,
    ):
        await post_alerts(url, 1)
        code, out, err = await run_cli(capsys, "reassign", "1", "alice", "-c", str(config))
    assert (code, out) == (0, "incident 1: reassigned to alice (triggered)\n"), err

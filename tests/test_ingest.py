"""The webhook door over real HTTP: auth, bad input, durability, idempotency, the read API."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import shutil
import sqlite3
import ssl
from asyncio.subprocess import PIPE, STDOUT
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request
from prometheus_client.parser import text_string_to_metric_families

from responder import api, cli, ingest
from responder.app import build_app
from responder.clock import FakeClock
from responder.links import ACK_PATH
from responder.log import AccessLog
from responder.runtime import RUNTIME, load_snapshot
from responder.testing import self_signed_cert
from tests.conftest import AUTH, TOKEN, ClientFactory, payload, write_config

Client = TestClient[Any, Any]


async def post(client: Client, document: Any, headers: dict[str, str] | None = None) -> Any:
    return await client.post(
        "/api/v1/alertmanager",
        data=json.dumps(document),
        headers={"Content-Type": "application/json", **(headers if headers is not None else AUTH)},
    )


async def alerts(client: Client, query: str = "") -> list[dict[str, Any]]:
    response = await client.get(f"/api/v1/alerts{query}", headers=AUTH)
    assert response.status == 200, await response.text()
    data: list[dict[str, Any]] = (await response.json())["data"]
    return data


async def test_captured_payload_is_stored_and_listed(client: Client) -> None:
    """A real Alertmanager webhook gets 200 and its alert shows in the API, classified."""
    response = await post(client, payload("firing-api"))
    assert response.status == 200
    assert (await response.json())["outcomes"] == {"new": 1}
    (stored,) = await alerts(client)
    assert stored["fingerprint"] == "22309d8945c45a12"
    assert stored["status"] == "firing"
    assert stored["labels"]["instance"] == "db-01:9100"
    assert stored["classification"]["severity"] in {"P0", "P1", "P2", "P3"}


async def test_repeat_then_resolve(client: Client) -> None:
    """Re-sends update the alert; the captured resolve (other startsAt) resolves it."""
    for _ in range(3):
        assert (await post(client, payload("firing-api"))).status == 200
    response = await post(client, payload("resolved-api"))
    assert (await response.json())["outcomes"] == {"resolved": 1}
    (stored,) = await alerts(client)
    assert stored["status"] == "resolved"
    assert stored["receiveCount"] == 4
    assert await alerts(client, "?status=firing") == []


async def test_an_alert_resolved_by_timeout_that_fires_again_opens_an_incident(
    client: Client, clock: FakeClock
) -> None:
    """The captured alert resolved (Alertmanager timed it out), then sent firing again with
    its same startsAt an hour later: it fires again and an incident is open for it."""
    firing = payload("firing-api")
    assert (await post(client, firing)).status == 200
    clock.advance(timedelta(minutes=10))
    resolved = json.loads(json.dumps(firing))
    resolved["status"] = resolved["alerts"][0]["status"] = "resolved"
    resolved["alerts"][0]["endsAt"] = "2026-11-22T07:20:00Z"
    assert (await (await post(client, resolved)).json())["outcomes"] == {"resolved": 1}
    clock.advance(timedelta(hours=1))
    answer = await (await post(client, firing)).json()
    assert answer["outcomes"] == {"revived": 1}
    (stored,) = await alerts(client)
    assert stored["status"] == "firing"
    listed = await (await client.get("/api/v1/incidents?state=open", headers=AUTH)).json()
    assert len(listed["data"]) == 1


async def test_a_body_that_is_not_what_its_encoding_says_is_a_400(client: Client) -> None:
    """Content-Encoding: gzip on a body that is not gzip: a 400 that says so (it was a 500,
    which Alertmanager retries, and two tracebacks: review of stop 14)."""
    response = await client.post(
        "/api/v1/alertmanager",
        data=json.dumps(payload("firing-api")).encode(),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip", **AUTH},
    )
    assert response.status == 400, await response.text()
    assert "body could not be read" in (await response.json())["error"]


async def test_grouped_mixed_payload(client: Client) -> None:
    """A group with one firing and one resolved alert stores both, each as it is."""
    response = await post(client, payload("grouped-mixed"))
    assert (await response.json())["outcomes"] == {"new": 1, "resolved_unseen": 1}
    firing = await alerts(client, '?filter=instance="app-01:9100"')
    assert [a["status"] for a in firing] == ["firing"]


async def test_one_hostile_alert_does_not_get_its_group_refused(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Whoever can make one alert fire can give it a huge annotation or a NUL; the group it
    travels in is still stored (Alertmanager does not retry a 4xx), the hostile alert
    mended and marked (security review, stop 13)."""
    document = payload("firing-api")
    hostile = json.loads(json.dumps(document["alerts"][0]))
    hostile["fingerprint"] = "00000000000000ff"
    hostile["labels"]["instance"] = "evil\u0000"
    hostile["annotations"]["description"] = "A" * 20_000
    document["alerts"].append(hostile)
    with caplog.at_level(logging.WARNING, logger="responder.ingest"):
        response = await post(client, document)
    assert response.status == 200, await response.text()
    answer = await response.json()
    assert answer["outcomes"] == {"new": 2}
    assert "alerts[1].annotations.description: value mended (cut or cleaned)" in answer["repairs"]
    assert "alert text mended" in caplog.text
    stored = {a["fingerprint"]: a for a in await alerts(client)}
    assert stored["22309d8945c45a12"]["labels"]["instance"] == "db-01:9100"
    mended = stored["00000000000000ff"]
    assert mended["labels"]["instance"] == "evil\ufffd"
    assert mended["annotations"]["description"].endswith("...[cut]")
    assert "labels.instance" in mended["annotations"]["responder_repaired"]


async def test_retention_deletes_what_ended_long_ago(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock
) -> None:
    """With storage.retention 1d, a resolved alert is deleted by the retention loop once
    a day has passed since it ended (it looks every 6 hours); a firing one stays."""
    client = await make_client(write_config(tmp_path, "storage:\n  retention: 1d\n"))
    assert (await post(client, payload("firing-api"))).status == 200
    assert (await post(client, payload("resolved-api"))).status == 200
    other = payload("firing-api")
    other["groupKey"] = '{}:{alertname="StillFiring"}'
    other["alerts"][0]["fingerprint"] = "00000000000000aa"
    other["alerts"][0]["labels"]["alertname"] = "StillFiring"
    for _ in range(5):  # 30 hours, in the retention loop's steps; Alertmanager re-sends
        assert (await post(client, other)).status == 200
        clock.advance(timedelta(hours=6))
        await asyncio.sleep(0.05)
    assert [a["fingerprint"] for a in await alerts(client)] == ["00000000000000aa"]


async def test_label_filters_use_alertmanager_matchers(client: Client) -> None:
    """The read API filters with Alertmanager's matcher syntax; a bad matcher is a 400."""
    await post(client, payload("firing-api"))
    await post(client, payload("firing-prometheus"))
    found = await alerts(client, "?filter=" + '{instance=~"web-.*"}')
    assert [a["labels"]["alertname"] for a in found] == ["TriggerHigh"]
    response = await client.get('/api/v1/alerts?filter=instance=~"("', headers=AUTH)
    assert response.status == 400
    assert "filter" in (await response.json())["error"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": "Basic " + base64.b64encode(b"user:" + TOKEN.encode()).decode()},
        {"Authorization": TOKEN},
    ],
)
async def test_wrong_credentials_get_401(client: Client, headers: dict[str, str]) -> None:
    """Anything but the configured credentials is refused, with a challenge, and stores nothing."""
    response = await post(client, payload("firing-api"), headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert await alerts(client) == []
    assert (await client.get("/api/v1/alerts", headers=headers)).status == 401


async def test_basic_auth(make_client: ClientFactory, tmp_path: Path) -> None:
    """Basic auth works when configured, with the password from a file."""
    (tmp_path / "pw").write_text("s3cret\n")
    path = tmp_path / "config.yaml"
    path.write_text(
        "auth:\n  basic_auth:\n    username: am\n    password_file: pw\n"
        "classification:\n  rule_files: []\n"
    )
    client = await make_client(path)
    good = {"Authorization": "Basic " + base64.b64encode(b"am:s3cret").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"am:s3cre").decode()}
    assert (await post(client, payload("firing-api"), headers=bad)).status == 401
    assert (await post(client, payload("firing-api"), headers=good)).status == 200


async def test_wrong_content_type_is_415(client: Client) -> None:
    response = await client.post(
        "/api/v1/alertmanager",
        data=json.dumps(payload("firing-api")),
        headers={**AUTH, "Content-Type": "text/plain"},
    )
    assert response.status == 415
    assert "application/json" in (await response.json())["error"]


async def test_a_missing_content_type_is_named_missing(client: Client) -> None:
    """A sender that sends no Content-Type is told so, not that it sent
    application/octet-stream (aiohttp's default for a missing header)."""
    response = await client.post(
        "/api/v1/alertmanager",
        data=json.dumps(payload("firing-api")).encode(),
        headers=AUTH,
        skip_auto_headers=["Content-Type"],
    )
    assert response.status == 415
    assert (await response.json())["error"] == "expected Content-Type application/json, got none"


async def test_50_mb_body_is_413(client: Client) -> None:
    """A body over the limit is refused before it is read whole."""
    response = await client.post(
        "/api/v1/alertmanager",
        data=b"{" + b" " * (50 * 1024 * 1024) + b"}",
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert response.status == 413


async def send_slowly(
    client: Client, path: str, headers: dict[str, str], body: bytes, parts: int, pause: float
) -> bytes:
    """POST the first ``parts`` tenths of ``body`` over a raw connection, ``pause`` seconds
    apart, then the rest; the raw answer."""
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    request = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{head}"
    writer.write(f"{request}Connection: close\r\n\r\n".encode())
    step = len(body) // 10
    for start in range(0, parts * step, step):
        writer.write(body[start : start + step])
        await writer.drain()
        await asyncio.sleep(pause)
    writer.write(body[parts * step :])
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer


async def test_a_body_trickled_slower_than_the_deadline_is_408(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body that does not arrive within the deadline frees its connection with a 408; one
    sent in pieces within it is taken."""
    monkeypatch.setattr(ingest, "BODY_TIMEOUT_S", 0.3)
    body = json.dumps(payload("firing-api")).encode()
    headers = {**AUTH, "Content-Type": "application/json"}
    answer = await send_slowly(client, "/api/v1/alertmanager", headers, body, 4, 0.1)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"body not received within 0.3 s" in answer
    answer = await send_slowly(client, "/api/v1/alertmanager", headers, body, 2, 0.05)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert len(await alerts(client)) == 1


async def answer_until_closed(reader: asyncio.StreamReader, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took;
    fails if it is still open after ``limit`` seconds."""
    started = asyncio.get_running_loop().time()
    received = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await asyncio.wait_for(reader.read(65536), limit):
            received += chunk
    return received, asyncio.get_running_loop().time() - started


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_headers_trickled_past_the_deadline_lose_their_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tls: bool
) -> None:
    """Served as ``responder serve`` serves it, the app closes a connection that trickles a
    header byte every 0.2 s once the deadline passes (and an idle keep-alive one likewise),
    while a webhook on another connection is answered meanwhile."""
    monkeypatch.setattr(cli, "KEEPALIVE_TIMEOUT_S", 1.0)
    server = ""
    client_tls: ssl.SSLContext | None = None
    if tls:
        cert, key = self_signed_cert(tmp_path)
        server = f"server:\n  tls:\n    cert_file: {cert}\n    key_file: {key}\n"
        client_tls = ssl.create_default_context(cafile=str(cert))
    snapshot = load_snapshot(write_config(tmp_path, server))
    config = snapshot.config
    runner = web.AppRunner(build_app(snapshot), **cli.runner_options(config))
    await runner.setup()
    (sock,) = cli.listening_sockets("127.0.0.1", 0)
    await web.SockSite(runner, sock, ssl_context=cli.server_tls(config)).start()
    port = sock.getsockname()[1]
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_tls)
        writer.write(b"POST /api/v1/alertmanager HTTP/1.1\r\nHost: x\r\nX-Slow: ")

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                while True:
                    await asyncio.sleep(0.2)
                    writer.write(b"a")
                    await writer.drain()

        trickling = asyncio.create_task(trickle())
        closing = asyncio.create_task(answer_until_closed(reader, 5.0))
        await asyncio.sleep(0.3)
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                url + "/api/v1/alertmanager",
                json=payload("firing-api"),
                headers=AUTH,
                ssl=client_tls if client_tls is not None else True,
            ) as response,
        ):
            assert response.status == 200
        assert not closing.done()
        answer, seconds = await closing
        trickling.cancel()
        writer.close()
        assert answer == b""  # closed unanswered: its request never began
        assert 0.8 < seconds < 3.0, seconds

        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_tls)
        writer.write(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
        answer, seconds = await answer_until_closed(reader, 5.0)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert 0.8 < seconds < 3.0, seconds
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b'{"version": "4", "alerts": [{"status": "fir', "malformed JSON"),
        (b"\xc3\x28", "not valid UTF-8"),
        (b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
        (b'{"version": "4", "alerts": [{"status": "firing", "labels": {"a": 1}}]}', "labels.a"),
    ],
)
async def test_bad_bodies_are_400_with_reason(client: Client, raw: bytes, fragment: str) -> None:
    """Bad input gets a 400 that says what is wrong, never a 500."""
    response = await client.post(
        "/api/v1/alertmanager", data=raw, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status == 400
    assert fragment in (await response.json())["error"]


async def test_ten_thousand_alerts_in_one_body(client: Client) -> None:
    """A huge group (10,000 alerts) is stored whole in one answer."""
    document = payload("firing-api")
    template = document["alerts"][0]
    document["alerts"] = [
        {
            **template,
            "labels": {**template["labels"], "instance": f"host-{i}"},
            "fingerprint": f"{i:016x}",
        }
        for i in range(10_000)
    ]
    response = await post(client, document)
    assert response.status == 200
    assert (await response.json())["outcomes"] == {"new": 10_000}
    assert len(await alerts(client, "?limit=10000")) == 10_000


async def test_label_filters_read_past_the_newest_page(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A label filter finds an alert older than the newest page of alerts (pages of 3 here,
    10,000 in the daemon), and says so when it stops searching before the oldest."""
    monkeypatch.setattr(api, "MAX_LIMIT", 3)
    document = payload("firing-api")
    template = document["alerts"][0]
    for i in range(10):
        labels = {**template["labels"], "instance": f"host-{i}"}
        document["alerts"] = [{**template, "labels": labels, "fingerprint": f"{i:016x}"}]
        assert (await post(client, document)).status == 200
    oldest = await alerts(client, '?limit=2&filter=instance="host-0"')
    assert [a["labels"]["instance"] for a in oldest] == ["host-0"]
    two = await alerts(client, '?limit=2&filter=instance=~"host-[01]"')
    assert [a["labels"]["instance"] for a in two] == ["host-1", "host-0"]

    monkeypatch.setattr(api, "MAX_FILTER_SCAN", 6)
    response = await client.get('/api/v1/alerts?limit=2&filter=instance="host-0"', headers=AUTH)
    answer = await response.json()
    assert answer["data"] == []
    assert answer["truncated"] == "searched the newest 6 alerts only"
    # The search goes on where it stopped: the ids 10 to 5 were searched.
    assert (answer["more"], answer["nextBefore"]) == (True, 5)
    response = await client.get(
        '/api/v1/alerts?limit=2&filter=instance="host-0"&before=5', headers=AUTH
    )
    answer = await response.json()
    assert [a["labels"]["instance"] for a in answer["data"]] == ["host-0"]
    assert (answer["more"], "truncated" in answer, "nextBefore" in answer) == (False, False, False)


async def _page(client: Client, query: str) -> tuple[list[str], bool, int | None]:
    """The instances of one page of alerts, whether there are more, and the next page's
    ``before``."""
    response = await client.get(f"/api/v1/alerts?{query}", headers=AUTH)
    assert response.status == 200, await response.text()
    answer = await response.json()
    instances = [a["labels"]["instance"] for a in answer["data"]]
    return instances, answer["more"], answer.get("nextBefore")


async def test_the_alert_list_says_when_it_was_cut_and_pages_on(client: Client) -> None:
    """A list cut at its limit says so (``more``) and where the next page starts
    (``nextBefore``, for ``before``); pages are by id, so alerts stored between two
    requests do not shift them: every alert once, none skipped. A list that ends exactly
    at its limit is not said to be cut."""
    document = payload("firing-api")
    template = document["alerts"][0]

    async def store(i: int) -> None:
        labels = {**template["labels"], "instance": f"host-{i}"}
        document["alerts"] = [{**template, "labels": labels, "fingerprint": f"{i:016x}"}]
        assert (await post(client, document)).status == 200

    for i in range(5):
        await store(i)
    assert await _page(client, "limit=5") == ([f"host-{i}" for i in (4, 3, 2, 1, 0)], False, None)
    first = await _page(client, "limit=2")
    assert first == (["host-4", "host-3"], True, 4)
    await store(5)  # stored between two pages: on the newest page, not on the next ones
    second = await _page(client, f"limit=2&before={first[2]}")
    assert second == (["host-2", "host-1"], True, 2)
    assert await _page(client, f"limit=2&before={second[2]}") == (["host-0"], False, None)
    assert await _page(client, "limit=1") == (["host-5"], True, 6)
    # The same with a label filter: a page ends at its last match.
    matching = 'filter=instance=~"host-[0-2]"'
    assert await _page(client, f"limit=1&{matching}") == (["host-2"], True, 3)
    assert await _page(client, f"limit=1&{matching}&before=3") == (["host-1"], True, 2)
    assert await _page(client, f"limit=2&{matching}&before=3") == (
        ["host-1", "host-0"],
        False,
        None,
    )
    for bad in ("abc", "-1", "1.5", "99999999999999999999"):
        response = await client.get(f"/api/v1/alerts?before={bad}", headers=AUTH)
        assert response.status == 400, bad
        assert "before:" in (await response.json())["error"]


async def test_storage_failure_is_503(client: Client) -> None:
    """When the store cannot commit, Alertmanager gets 503 so that it retries."""
    db = client.app[RUNTIME].config.state_dir / "responder.db"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON alerts "
            "BEGIN SELECT RAISE(FAIL, 'disk on fire'); END"
        )
    response = await post(client, payload("firing-api"))
    assert response.status == 503
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TRIGGER refuse")
    assert (await post(client, payload("firing-api"))).status == 200


async def test_refused_webhooks_are_logged_once_a_minute_not_once_each(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """A store that refuses every write (a full disk) refuses every group's retries: one
    error line says so, with how many went unsaid, not a line per webhook (disk review)."""
    db = client.app[RUNTIME].config.state_dir / "responder.db"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON alerts "
            "BEGIN SELECT RAISE(FAIL, 'disk on fire'); END"
        )
    with caplog.at_level(logging.ERROR, logger="responder.ingest"):
        for _ in range(20):
            assert (await post(client, payload("firing-api"))).status == 503
    said = [r for r in caplog.records if r.getMessage() == "webhook not stored"]
    assert len(said) == 1, len(said)


async def test_a_stalled_disk_is_503_within_the_deadline(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit that does not come back in time answers 503 (Alertmanager retries) instead of
    holding the request; the write itself lands once the disk answers."""
    monkeypatch.setattr(ingest, "STORE_DEADLINE_S", 0.5)
    db = client.app[RUNTIME].config.state_dir / "responder.db"
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the writer's next transaction waits for this one
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        response = await post(client, payload("firing-api"))
        assert response.status == 503
        assert loop.time() - started < 2.0
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    for _ in range(100):
        if await alerts(client):
            break
        await asyncio.sleep(0.02)
    assert len(await alerts(client)) == 1
    assert (await post(client, payload("firing-api"))).status == 200


async def test_health_ready_and_metrics(client: Client) -> None:
    """/-/healthy and /-/ready answer; /metrics counts what happened and lints clean."""
    assert (await client.get("/-/healthy")).status == 200
    assert (await client.get("/-/ready")).status == 200
    await post(client, payload("firing-api"))
    await post(client, payload("firing-api"), headers={})
    text = await (await client.get("/metrics")).text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("responder_webhook_requests_total", (("outcome", "accepted"),))] == 1
    assert samples[("responder_webhook_requests_total", (("outcome", "unauthorized"),))] == 1
    assert samples[("responder_alerts_received_total", (("status", "firing"),))] == 1
    assert samples[("responder_alerts_ingested_total", (("outcome", "new"),))] == 1
    assert samples[("responder_ingest_duration_seconds_count", ())] == 1
    assert samples[("responder_store_commit_batch_size_count", ())] >= 1
    assert samples[("responder_config_last_reload_successful", ())] == 1
    promtool = shutil.which("promtool")
    if promtool is not None:
        lint = await asyncio.create_subprocess_exec(
            promtool, "check", "metrics", stdin=PIPE, stdout=PIPE, stderr=STDOUT
        )
        out, _ = await lint.communicate(text.encode())
        assert lint.returncode == 0, out.decode()


async def test_reload_keeps_old_config_when_new_is_bad(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """/-/reload with a broken file answers 400 with file and line, and changes nothing."""
    path = write_config(tmp_path)
    client = await make_client(path)
    path.write_text(path.read_text() + "server:\n  listen: nowhere\n")
    response = await client.post("/-/reload", headers=AUTH)
    assert response.status == 400
    assert "config.yaml:6: server.listen: expected host:port" in (await response.json())["error"]
    text = await (await client.get("/metrics")).text()
    assert "responder_config_last_reload_successful 0.0" in text
    assert (await post(client, payload("firing-api"))).status == 200
    path.write_text(path.read_text().replace("listen: nowhere", "listen: 127.0.0.1:9999"))
    response = await client.post("/-/reload", headers=AUTH)
    assert response.status == 200
    # Loaded, but the new address waits for a restart: the answer says so, not just "ok".
    assert await response.json() == {"status": "ok", "restartNeeded": ["server"]}
    assert (
        "responder_config_last_reload_successful 1.0" in await (await client.get("/metrics")).text()
    )


async def test_a_reload_that_leaves_incidents_paging_nobody_says_so(
    make_client: ClientFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Policies without incidents.default_policy, and rules that name none: every incident
    pages nobody, a valid config (new-user review: `check` said OK, the daemon nothing).
    The reload's answer and the log carry the warning `responder check` prints."""
    path = write_config(tmp_path)
    client = await make_client(path)
    contacts = (
        "contacts:\n  alice: {email: alice@example.com}\n"
        "escalation_policies:\n  standard:\n    levels:\n      - targets: [alice]\n"
    )
    path.write_text(path.read_text() + contacts)
    with caplog.at_level(logging.WARNING, logger="responder.runtime"):
        response = await client.post("/-/reload", headers=AUTH)
    assert response.status == 200
    (warning,) = (await response.json())["warnings"]
    assert warning.startswith(f"{path}: incidents.default_policy is not set: ")
    assert "pages nobody; set it to one of standard" in warning
    logged = [r for r in caplog.records if r.getMessage() == "config warning"]
    assert [r.fields["warning"] for r in logged] == [warning]  # type: ignore[attr-defined]
    path.write_text(path.read_text() + "incidents:\n  default_policy: standard\n")
    response = await client.post("/-/reload", headers=AUTH)
    assert await response.json() == {"status": "ok"}


async def test_a_storm_of_reloads_reads_the_files_once_not_once_per_signal(
    make_client: ClientFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Fifty reloads asked at once (a deployment tool sending SIGHUP per file it changed)
    share one load, and each asker gets its outcome; one asked once that load is reading
    gets a load of its own, which sees the file as it is then."""
    path = write_config(tmp_path)
    client = await make_client(path)
    runtime = client.app[RUNTIME]
    with caplog.at_level(logging.INFO, logger="responder"):
        assert await asyncio.gather(*(runtime.reload() for _ in range(50))) == [None] * 50
    assert [r.getMessage() for r in caplog.records].count("config reloaded") == 1

    reading = asyncio.ensure_future(runtime.reload())
    await asyncio.sleep(0)  # it asks for a reload ...
    await asyncio.sleep(0)  # ... which takes the lock and reads the files
    path.write_text(path.read_text() + "server:\n  listen: nowhere\n")
    later = await runtime.reload()
    assert later is not None
    assert "server.listen: expected host:port" in str(later)
    await reading


async def test_undecodable_authorization_header_is_401(client: Client) -> None:
    """Header bytes that are not UTF-8 reach us as surrogates; they are wrong credentials,
    not a 500 (review, stop 12)."""
    body = json.dumps(payload("firing-api")).encode()
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b"POST /api/v1/alertmanager HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\r\n"
        b"Content-Type: application/json\r\nConnection: close\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    assert status_line.split()[1] == b"401"
    assert await alerts(client) == []


async def test_body_limit_stays_the_one_in_force_until_restart(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """aiohttp's limit is fixed at start; the handler's own check must agree with it, not
    with a reloaded value that is only logged as waiting for a restart."""
    path = write_config(tmp_path)
    client = await make_client(path)
    path.write_text(path.read_text() + "server:\n  max_body_bytes: 2048\n")
    assert (await client.post("/-/reload", headers=AUTH)).status == 200
    document = payload("firing-api")
    document["alerts"][0]["annotations"]["description"] = "x" * 3000
    assert (await post(client, document)).status == 200


async def test_a_restart_only_section_edited_back_is_not_said_to_wait_for_a_restart(
    make_client: ClientFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A reload said a section "takes effect at the next restart" whenever it differed from
    the last reload's, so putting it back to what runs said so too (acceptance review); one
    still edited is said at every reload."""
    path = write_config(tmp_path)
    original = path.read_text()
    client = await make_client(path)
    waiting = "config section changed; it takes effect at the next restart"
    path.write_text(original + "server:\n  max_body_bytes: 2048\n")
    for _ in range(2):
        caplog.clear()
        assert (await client.post("/-/reload", headers=AUTH)).status == 200
        assert [r.fields for r in caplog.records if r.getMessage() == waiting] == [  # type: ignore[attr-defined]
            {"section": "server"}
        ]
    caplog.clear()
    path.write_text(original)
    assert (await client.post("/-/reload", headers=AUTH)).status == 200
    assert waiting not in caplog.text


async def test_reload_that_fails_unexpectedly_keeps_old_config(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """A duration too long for Python's timedelta is a config error like any other: 400, the
    old config stays, and the reload metric says so."""
    path = write_config(tmp_path)
    client = await make_client(path)
    path.write_text(path.read_text() + "alerts:\n  stale_after: 99999999999999w\n")
    response = await client.post("/-/reload", headers=AUTH)
    assert response.status == 400
    assert (
        "alerts.stale_after: duration '99999999999999w' is too long"
        in (await response.json())["error"]
    )
    text = await (await client.get("/metrics")).text()
    assert "responder_config_last_reload_successful 0.0" in text


def test_access_log_hides_acknowledge_link_tokens(caplog: pytest.LogCaptureFixture) -> None:
    """An acknowledge link's path is a credential; the access log shows it as <token>."""
    logger = logging.getLogger("responder.access")
    access = AccessLog(logger, "")
    with caplog.at_level(logging.INFO, logger="responder.access"):
        for path in (f"{ACK_PATH}SIGNED-SECRET-TOKEN", "/-/healthy"):
            access.log(make_mocked_request("GET", path), web.Response(status=200), 0.001)
    paths = [r.fields["path"] for r in caplog.records]  # type: ignore[attr-defined]
    assert paths == [f"{ACK_PATH}<token>", "/-/healthy"]
    assert "SIGNED-SECRET-TOKEN" not in caplog.text

"""A real ``responder serve`` killed with SIGKILL at chosen points between its writes, then
started again on the same state: nothing a person must hear of is lost on the way.

A write is caught in the middle by a SQL trigger that makes it slow (a join over a scratch
table, inside the daemon's own transaction); the test sees the daemon's writer hold the
database's write lock for that long and kills it there."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp

from notifiers.twilio import INBOUND_SMS_PATH
from responder.testing import FakeTwilio, Fault, SmtpTestServer
from tests.conftest import AUTH
from tests.test_containment import (
    BLOCK_RULE,
    MAINTENANCE_RULE,
    RESTART_RULE,
    config,
    iptables_actions,
    maintenance_action,
    restart_action,
    script,
    smtp,
)
from tests.test_containment_edges import nft_action
from tests.test_delivery import config as delivery_config
from tests.test_delivery import twilio
from tests.test_escalation_story import alert, webhook
from tests.test_process import Daemon, running, spawn
from tests.test_process_escalation import recipients, wait_for

__all__ = ["smtp", "twilio"]

# Rows of the scratch table: a three-way join over them takes seconds.
SLOW_ROWS = 400


def make_writes_slow(db: Path, when: str, write: str = "INSERT ON timeline") -> None:
    """Every ``write`` (an insert into the timeline unless told) matching ``when`` (SQL over
    NEW) takes seconds."""
    with contextlib.closing(sqlite3.connect(db, isolation_level=None, timeout=10)) as conn:
        conn.execute("CREATE TABLE slow_scratch (x INTEGER)")
        conn.executemany("INSERT INTO slow_scratch VALUES (?)", [(i,) for i in range(SLOW_ROWS)])
        conn.execute(
            f"CREATE TRIGGER slow_write BEFORE {write} WHEN {when} BEGIN "  # noqa: S608
            "SELECT count(*) FROM slow_scratch a, slow_scratch b, slow_scratch c "
            "WHERE a.x + b.x + c.x < 0; END"
        )


def make_writes_fast(db: Path) -> None:
    with contextlib.closing(sqlite3.connect(db, isolation_level=None, timeout=10)) as conn:
        conn.execute("DROP TRIGGER slow_write")
        conn.execute("DROP TABLE slow_scratch")


def _write_locked(db: Path) -> bool:
    with contextlib.closing(sqlite3.connect(db, isolation_level=None, timeout=0)) as conn:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return True
        conn.execute("ROLLBACK")
        return False


async def kill_inside_a_slow_write(daemon: Daemon, db: Path, seconds: float = 20.0) -> None:
    """SIGKILL the daemon once its writer has held the write lock for half a second: it is
    inside the slow write (every other write takes milliseconds)."""
    deadline = time.monotonic() + seconds
    held_since: float | None = None
    while time.monotonic() < deadline:
        if daemon.process.returncode is not None:
            raise AssertionError(f"daemon exited early:\n{daemon.log.read_text()}")
        if _write_locked(db):
            held_since = held_since or time.monotonic()
            if time.monotonic() - held_since >= 0.5:
                daemon.process.send_signal(signal.SIGKILL)
                await daemon.process.wait()
                return
        else:
            held_since = None
        await asyncio.sleep(0.05)
    daemon.process.kill()
    await daemon.process.wait()
    raise AssertionError(f"the daemon never reached the slow write:\n{daemon.log.read_text()}")


async def post_alert(daemon: Daemon, document: dict[str, Any]) -> None:
    url = daemon.url + "/api/v1/alertmanager"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=document, headers=AUTH) as response,
    ):
        assert response.status == 200, await response.text()


async def incident_document(daemon: Daemon, number: int = 1) -> dict[str, Any]:
    url = f"{daemon.url}/api/v1/incidents/{number}"
    async with aiohttp.ClientSession() as session, session.get(url, headers=AUTH) as response:
        document: dict[str, Any] = (await response.json())["data"]
        return document


async def timeline_kinds_once(daemon: Daemon, kind: str, seconds: float = 10.0) -> list[str]:
    """Incident 1's timeline kinds, once ``kind`` is among them (or as they are after
    ``seconds``, for the assertion to show)."""
    deadline = time.monotonic() + seconds
    while True:
        kinds = [e["kind"] for e in (await incident_document(daemon))["timeline"]]
        if kind in kinds or time.monotonic() > deadline:
            return kinds
        await asyncio.sleep(0.05)


def _kill_orphan(pidfile: Path) -> None:
    """The action's process has a session of its own: the SIGKILL of the daemon left it."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
        os.kill(int(pidfile.read_text()), signal.SIGKILL)


async def _alice_texted(daemon: Daemon, twilio: FakeTwilio) -> None:
    """An alert, and alice's SMS sent and recorded as sent."""
    await post_alert(daemon, webhook(alert("TargetDown", instance="web-1")))
    await wait_for(lambda: len(twilio.sent_sms("+15551230001")) == 1, 10, "alice's SMS")
    for _ in range(100):
        pages = (await incident_document(daemon))["pages"]
        if [p["state"] for p in pages if p["channel"] == "sms"] == ["sent"]:
            break
        await asyncio.sleep(0.05)


async def test_kill_9_between_marking_a_run_interrupted_and_escalating_it(
    tmp_path: Path, smtp: SmtpTestServer
) -> None:
    """The daemon dies during a restart of nginx; at the next start it is killed again just
    as it records that interrupted run's escalation. After a third start the next level
    (bob) is still paged: an interrupted run is never left marked interrupted with nobody
    told (it was, when the mark and the escalation were two writes)."""
    pidfile = tmp_path / "action.pid"
    body = f"open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(30)"
    path = config(tmp_path, smtp, restart_action(tmp_path, body, "    timeout: 60s"), RESTART_RULE)
    try:
        async with running(path) as daemon:
            await post_alert(daemon, webhook(alert("WebDown", service="nginx")))
            await wait_for(pidfile.exists, 10, "the action started")
            await wait_for(lambda: recipients(smtp)["alice@example.com"] == 1, 10, "level 1")
            daemon.process.send_signal(signal.SIGKILL)
            await daemon.process.wait()
        db = tmp_path / "state" / "responder.db"
        make_writes_slow(db, "NEW.kind = 'containment_failed'")
        await kill_inside_a_slow_write(await spawn(path), db)
        make_writes_fast(db)
        async with running(path) as daemon:
            await wait_for(lambda: recipients(smtp)["bob@example.com"] == 1, 10, "bob paged")
            kinds = [e["kind"] for e in (await incident_document(daemon))["timeline"]]
        assert "action_interrupted" in kinds
        assert "containment_failed" in kinds
    finally:
        _kill_orphan(pidfile)


async def test_the_outbox_goes_on_when_settling_the_last_crash_fails_at_start(
    tmp_path: Path, twilio: FakeTwilio, smtp: SmtpTestServer
) -> None:
    """The daemon dies while alice's SMS is with Twilio. At the next start the store refuses
    the write that settles that page (a full disk, here a trigger): a new incident's SMS
    still goes out, and once the store takes writes again the interrupted page is
    re-routed to bob, while the new SMS, still with Twilio then, is left to finish. The
    outbox loop used to die with that first write, and no page went out until the next
    restart while /-/ready said 200."""
    path = delivery_config(tmp_path, twilio, smtp)
    path.write_text(path.read_text().replace("timeout: 2s", "timeout: 10s"))
    twilio.fail_next(Fault.HANG)
    async with running(path) as daemon:
        await post_alert(daemon, webhook(alert("TargetDown", instance="web-1"), group="a"))
        await wait_for(lambda: len(twilio.requests) == 1, 10, "alice's SMS at the provider")
        daemon.process.send_signal(signal.SIGKILL)
        await daemon.process.wait()
    db = tmp_path / "state" / "responder.db"
    with contextlib.closing(sqlite3.connect(db, isolation_level=None, timeout=10)) as conn:
        conn.execute(
            "CREATE TRIGGER refuse_settle BEFORE UPDATE OF state ON pages "
            "WHEN NEW.state = 'failed' BEGIN SELECT RAISE(ABORT, 'disk trouble'); END"
        )
    async with running(path) as daemon:
        twilio.answer_delay = 3.0  # the new SMS is with Twilio when the store recovers
        await post_alert(daemon, webhook(alert("DiskFull", instance="db-1"), group="b"))
        await wait_for(lambda: len(twilio.sent_sms("+15551230001")) == 1, 10, "the new SMS")
        with contextlib.closing(sqlite3.connect(db, isolation_level=None, timeout=10)) as conn:
            conn.execute("DROP TRIGGER refuse_settle")
        await wait_for(lambda: len(twilio.sent_sms("+15551230002")) == 1, 10, "re-routed to bob")
        first, second = await incident_document(daemon, 1), await incident_document(daemon, 2)
        for _ in range(100):
            second = await incident_document(daemon, 2)
            if [p["state"] for p in second["pages"] if p["channel"] == "sms"] == ["sent"]:
                break
            await asyncio.sleep(0.05)
    alice_sms = next(p for p in first["pages"] if p["channel"] == "sms")
    assert "outcome unknown" in alice_sms["error"]
    # The interrupted SMS was not sent to alice again: her second SMS is the new incident's,
    # sent, not taken for one the crash interrupted (bob got no SMS for it).
    assert [p["state"] for p in second["pages"] if p["channel"] == "sms"] == ["sent"]
    assert [r.to for r in twilio.requests] == ["+15551230001", "+15551230001", "+15551230002"]
    assert "DiskFull" in twilio.requests[1].body


async def test_a_change_made_by_a_run_the_daemon_died_in_is_lifted_after_its_resolve(
    tmp_path: Path, smtp: SmtpTestServer
) -> None:
    """The load balancer took web-1 into maintenance and the daemon died before the call
    returned. The run is found interrupted (and paged) at the next start; when the alert
    resolves, web-1 comes out of maintenance after the hold-down, as it does after a run
    that timed out. It stayed in maintenance for good: only an iptables block kept its
    lift when its run was interrupted."""
    log, pidfile = tmp_path / "lb.log", tmp_path / "action.pid"
    write = f"open({str(log)!r}, 'a').write"
    on = script(
        tmp_path,
        "on",
        f"{write}('on ' + sys.argv[1] + '\\n')\n"
        f"open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(30)",
    )
    off = script(tmp_path, "off", f"{write}('off ' + sys.argv[1] + '\\n')")
    actions = f"""
actions:
{maintenance_action(on, off, timeout="60s", hold_down="1s")}"""
    path = config(tmp_path, smtp, actions, MAINTENANCE_RULE)
    fired = alert("BackendErrors", backend="web-1")
    try:
        async with running(path) as daemon:
            await post_alert(daemon, webhook(fired))
            await wait_for(pidfile.exists, 10, "maintenance on, the call not returned yet")
            daemon.process.send_signal(signal.SIGKILL)
            await daemon.process.wait()
        _kill_orphan(pidfile)
        async with running(path) as daemon:
            await wait_for(lambda: recipients(smtp)["bob@example.com"] == 1, 10, "bob paged")
            await post_alert(daemon, webhook(alert("BackendErrors", "resolved", **fired["labels"])))
            await wait_for(lambda: "off web-1" in log.read_text(), 10, "maintenance lifted")
            # The script wrote its line before it exited; the lift's outcome comes after.
            kinds = await timeline_kinds_once(daemon, "action_undone")
        assert log.read_text().splitlines() == ["on web-1", "off web-1"]
        assert "action_interrupted" in kinds
        assert "action_undone" in kinds
    finally:
        _kill_orphan(pidfile)


async def test_kill_9_between_a_late_verdict_and_the_breaker_that_counts_it(
    tmp_path: Path, smtp: SmtpTestServer
) -> None:
    """nginx was restarted, but the alert did not resolve within its second: the check
    failed. The daemon is killed as it writes the breaker's count of that failure. After
    the next start the timeline and the breaker agree: one failed check, counted once
    (they were two writes: the verdict was committed and the breaker never counted it)."""
    check = "    check: {alert_resolves_within: 1s}"
    path = config(tmp_path, smtp, restart_action(tmp_path, "pass", check), RESTART_RULE)
    db = tmp_path / "state" / "responder.db"
    async with running(path) as daemon:
        make_writes_slow(
            db, "NEW.state LIKE '%\"consecutive_failures\": 1%'", "UPDATE ON guard_state"
        )
        await post_alert(daemon, webhook(alert("WebDown", service="nginx")))
        await kill_inside_a_slow_write(daemon, db)
    make_writes_fast(db)
    async with running(path) as daemon:

        async def failed_checks() -> int:
            timeline = (await incident_document(daemon))["timeline"]
            failed = [e["detail"]["reason"] for e in timeline if e["kind"] == "containment_failed"]
            return sum("did not resolve in time" in r for r in failed)

        for _ in range(100):
            if await failed_checks():
                break
            await asyncio.sleep(0.1)
        url = daemon.url + "/api/v1/actions"
        async with aiohttp.ClientSession() as session, session.get(url, headers=AUTH) as answer:
            breakers = (await answer.json())["data"]["breakers"]
        assert await failed_checks() == 1
    assert [(b["action"], b["consecutive_failures"]) for b in breakers] == [("restart", 1)]


async def test_a_lift_cut_off_after_its_delete_went_through_is_done_when_run_again(
    tmp_path: Path, smtp: SmtpTestServer
) -> None:
    """The alert resolved and nft deleted the blocked address's element, but the daemon was
    killed before nft returned. At the next start the lift runs again and nft finds no such
    element: the lift is done (the cut-off one most likely removed it), not a failed lift
    paging people (ContainmentLiftFailed) for a block that is already gone."""
    element, pidfile = tmp_path / "element", tmp_path / "lift.pid"
    _, actions = nft_action(tmp_path, "    undo: builtin\n    undo_hold_down: 1s\n")
    script(  # the real nft's answers, in place of nft_action's
        tmp_path,
        "nft",
        f"p = {str(element)!r}\n"
        "if 'add' in sys.argv: open(p, 'w').write('203.0.113.7')\n"
        "if 'delete' in sys.argv:\n"
        "    if not os.path.exists(p):\n"
        "        sys.stderr.write('Error: Could not process rule: No such file or directory')\n"
        "        sys.exit(1)\n"
        f"    os.remove(p); open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(30)\n",
    )
    path = config(tmp_path, smtp, actions, BLOCK_RULE)
    fired = alert("SSHBruteForce", source_ip="203.0.113.7")
    try:
        async with running(path) as daemon:
            await post_alert(daemon, webhook(fired))
            await wait_for(element.exists, 10, "blocked")
            await asyncio.sleep(0.5)  # the run is recorded finished
            await post_alert(daemon, webhook(alert("SSHBruteForce", "resolved", **fired["labels"])))
            await wait_for(pidfile.exists, 10, "the element deleted, nft not returned yet")
            daemon.process.send_signal(signal.SIGKILL)
            await daemon.process.wait()
        _kill_orphan(pidfile)
        async with running(path) as daemon:
            url = daemon.url + "/api/v1/actions"
            async with aiohttp.ClientSession() as session:
                for _ in range(100):
                    async with session.get(url, headers=AUTH) as answer:
                        (run,) = (await answer.json())["data"]["recent"]
                    if run["undo"] != "wait":
                        break
                    await asyncio.sleep(0.1)
            timeline = (await incident_document(daemon))["timeline"]
        assert run["undo"] == "done"
        lifts = [e["detail"] for e in timeline if e["kind"] == "action_undone"]
        assert "most likely removed it" in lifts[-1]["reason"], lifts
        failed = [e["detail"]["reason"] for e in timeline if e["kind"] == "containment_failed"]
        assert not any("undo of block failed" in r for r in failed), failed
    finally:
        _kill_orphan(pidfile)


async def test_a_cut_off_lift_of_a_block_that_may_not_have_gone_in_is_done_when_run_again(
    tmp_path: Path, smtp: SmtpTestServer
) -> None:
    """iptables -I timed out (the rule went in, its answer never came): the block 'maybe'
    went in. The alert resolved, iptables -D deleted the rule, and the daemon was killed
    before -D returned. At the next start the lift runs again and finds no such rule: the
    cut-off lift removed it, so the lift is done. It was recorded 'nothing', "no attempt of
    the block is known to have run", as if the block had never been in place."""
    rule, pidfile = tmp_path / "rule", tmp_path / "lift.pid"
    tool = script(
        tmp_path,
        "iptables",
        f"p = {str(rule)!r}\n"
        "if '-I' in sys.argv: open(p, 'w').write('203.0.113.7'); time.sleep(30)\n"
        "if '-D' in sys.argv:\n"
        "    if not os.path.exists(p):\n"
        "        sys.stderr.write('iptables: Bad rule (does a matching rule exist in that "
        "chain?).')\n"
        "        sys.exit(1)\n"
        f"    os.remove(p); open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(30)\n",
    )
    extra = "    timeout: 1s\n    retries: 0\n    undo: builtin\n    undo_hold_down: 1s\n"
    path = config(tmp_path, smtp, iptables_actions(tool, extra), BLOCK_RULE)
    fired = alert("SSHBruteForce", source_ip="203.0.113.7")
    url = "/api/v1/actions"
    try:
        async with running(path) as daemon:
            await post_alert(daemon, webhook(fired))
            async with aiohttp.ClientSession() as session:
                for _ in range(100):
                    async with session.get(daemon.url + url, headers=AUTH) as answer:
                        recent = (await answer.json())["data"]["recent"]
                    if recent and recent[0]["outcome"] == "timeout":
                        break
                    await asyncio.sleep(0.1)
            assert recent[0]["outcome"] == "timeout", recent
            await post_alert(daemon, webhook(alert("SSHBruteForce", "resolved", **fired["labels"])))
            await wait_for(pidfile.exists, 10, "the rule deleted, iptables -D not returned yet")
            daemon.process.send_signal(signal.SIGKILL)
            await daemon.process.wait()
        _kill_orphan(pidfile)
        async with running(path) as daemon:
            async with aiohttp.ClientSession() as session:
                for _ in range(100):
                    async with session.get(daemon.url + url, headers=AUTH) as answer:
                        (run,) = (await answer.json())["data"]["recent"]
                    if run["undo"] != "wait":
                        break
                    await asyncio.sleep(0.1)
            timeline = (await incident_document(daemon))["timeline"]
        lifts = [e["detail"] for e in timeline if e["kind"] == "action_undone"]
        assert run["undo"] == "done", lifts
        assert "most likely removed it" in lifts[-1]["reason"], lifts
    finally:
        _kill_orphan(pidfile)


async def test_kill_9_between_a_status_lookup_and_its_failover_fails_over_once(
    tmp_path: Path, twilio: FakeTwilio, smtp: SmtpTestServer
) -> None:
    """Alice's SMS was undelivered and its callback was lost. At the next start the daemon
    asks Twilio, and is killed as it writes the answer (the page failed, bob's page
    queued). After a third start Twilio is asked again and bob is paged exactly once: the
    answer applied once, not lost with the crash and not applied twice."""
    path = delivery_config(tmp_path, twilio, smtp)
    db = tmp_path / "state" / "responder.db"
    async with running(path) as daemon:
        await _alice_texted(daemon, twilio)
        daemon.process.send_signal(signal.SIGKILL)
        await daemon.process.wait()
    sid = twilio.sent_sms("+15551230001")[0].sid
    twilio.set_status(sid, "undelivered", 30003)
    make_writes_slow(db, "NEW.state = 'failed'", "UPDATE ON pages")
    await kill_inside_a_slow_write(await spawn(path), db)
    make_writes_fast(db)
    assert twilio.lookups == [sid]
    async with running(path) as daemon:
        await wait_for(lambda: len(twilio.sent_sms("+15551230002")) == 1, 10, "bob paged")
        await asyncio.sleep(1.0)  # time for a second failover, were there one
        document = await incident_document(daemon)
    assert twilio.lookups == [sid, sid]
    assert len(twilio.sent_sms("+15551230002")) == 1
    kinds = [e["kind"] for e in document["timeline"]]
    assert kinds.count("failover") == 1, kinds
    alice = next(p for p in document["pages"] if (p["contact"], p["channel"]) == ("alice", "sms"))
    assert (alice["state"], alice["error"]) == ("failed", "undelivered (Twilio error 30003)")


NEW_NUMBER = "+15551230009"


async def queued_to_a_number_since_corrected(path: Path, db: Path) -> None:
    """Alice's SMS queued to her old number (the daemon killed as it claims it), and her
    number corrected in the config before the next start."""
    async with running(path) as daemon:
        make_writes_slow(db, "NEW.state = 'sending'", "UPDATE OF state ON pages")
        await post_alert(daemon, webhook(alert("TargetDown", instance="web-1")))
        await kill_inside_a_slow_write(daemon, db)
    make_writes_fast(db)
    correct_alices_number(path)


def correct_alices_number(path: Path) -> None:
    path.write_text(path.read_text().replace('sms: "+15551230001"', f'sms: "{NEW_NUMBER}"'))


def alice_sms_row(document: dict[str, Any]) -> dict[str, Any]:
    return next(p for p in document["pages"] if (p["contact"], p["channel"]) == ("alice", "sms"))


async def test_kill_9_between_readdressing_a_page_and_its_send_sends_it_once_to_the_new_number(
    tmp_path: Path, twilio: FakeTwilio, smtp: SmtpTestServer
) -> None:
    """The page is rewritten to alice's corrected number and the daemon is killed as it
    records the hand-over to Twilio. After the next start it goes once, to the new number,
    and its row says so."""
    path, db = delivery_config(tmp_path, twilio, smtp), tmp_path / "state" / "responder.db"
    await queued_to_a_number_since_corrected(path, db)
    make_writes_slow(db, "NEW.handed_at IS NOT NULL", "UPDATE OF handed_at ON pages")
    await kill_inside_a_slow_write(await spawn(path), db)
    make_writes_fast(db)
    assert twilio.requests == []
    async with running(path) as daemon:
        await wait_for(lambda: len(twilio.requests) == 1, 10, "alice's SMS")
        for _ in range(100):
            if alice_sms_row(await incident_document(daemon))["state"] == "sent":
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # time for a second send, were there one
        page = alice_sms_row(await incident_document(daemon))
    assert [r.to for r in twilio.requests] == [NEW_NUMBER]
    assert (page["state"], page["address"]) == ("sent", NEW_NUMBER)


async def test_kill_9_between_a_readdressed_send_and_its_record_pages_the_new_number_once(
    tmp_path: Path, twilio: FakeTwilio, smtp: SmtpTestServer
) -> None:
    """The page went to alice's corrected number and the daemon was killed before Twilio
    answered. After the next start it is not sent again (on any number): its row, with the
    new number, says its outcome is unknown, and it is re-routed to bob."""
    path, db = delivery_config(tmp_path, twilio, smtp), tmp_path / "state" / "responder.db"
    await queued_to_a_number_since_corrected(path, db)
    twilio.fail_next(Fault.HANG)
    daemon = await spawn(path)
    await wait_for(lambda: len(twilio.requests) == 1, 10, "alice's SMS at the provider")
    daemon.process.send_signal(signal.SIGKILL)
    await daemon.process.wait()
    async with running(path) as daemon:
        await wait_for(lambda: len(twilio.sent_sms("+15551230002")) == 1, 10, "re-routed to bob")
        await asyncio.sleep(0.5)  # time for a second send, were there one
        page = alice_sms_row(await incident_document(daemon))
    assert [r.to for r in twilio.requests] == [NEW_NUMBER, "+15551230002"]
    assert (page["state"], page["address"]) == ("failed", NEW_NUMBER)
    assert "outcome unknown" in page["error"]


PUBLIC_URL = "http://responder.invalid"


async def sms_reply(daemon: Daemon, twilio: FakeTwilio, sid: str, text: str) -> str:
    """Alice's phone answers ``text``: the request Twilio posts (signed for the public URL)
    to the daemon; its answer's text."""
    params = {
        "MessageSid": sid,
        "SmsSid": sid,
        "AccountSid": twilio.account_sid,
        "From": "+15551230001",
        "To": "+15550000000",
        "Body": text,
        "NumMedia": "0",
    }
    signature = twilio.sign(PUBLIC_URL + INBOUND_SMS_PATH, params)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            daemon.url + INBOUND_SMS_PATH, data=params, headers={"X-Twilio-Signature": signature}
        ) as response,
    ):
        assert response.status == 200, await response.text()
        return await response.text()


async def test_kill_9_between_acting_on_an_sms_reply_and_recording_its_answer(
    tmp_path: Path, twilio: FakeTwilio, smtp: SmtpTestServer
) -> None:
    """Alice answers "ACK 1"; the daemon acknowledges #1 and is killed before it has
    recorded its answer. Twilio posts the reply again after the restart: the retry acts on
    nothing and gets the first answer. It got none (the answer was a second write), and
    alice did not learn that her acknowledgement had been taken (crash campaign)."""
    path = delivery_config(tmp_path, twilio, smtp, f"server:\n  public_url: {PUBLIC_URL}\n")
    db = tmp_path / "state" / "responder.db"
    sid = "SM" + "ab" * 16
    async with running(path) as daemon:
        await _alice_texted(daemon, twilio)
        make_writes_slow(db, "1", "UPDATE ON twilio_requests")
        reply = asyncio.create_task(sms_reply(daemon, twilio, sid, "ACK 1"))
        await kill_inside_a_slow_write(daemon, db)
        with contextlib.suppress(aiohttp.ClientError):
            await reply
    make_writes_fast(db)
    async with running(path) as daemon:
        retried = await sms_reply(daemon, twilio, sid, "ACK 1")
        document = await incident_document(daemon)
    assert "Acknowledged #1" in retried, retried
    acks = [e for e in document["timeline"] if e["kind"] == "acknowledged"]
    assert [(e["actor"], e["via"]) for e in acks] == [("alice", "sms")]

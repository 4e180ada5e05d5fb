"""Dialog persistence: calls a crashed gateway left up are hung up by the next start.

Unit level: the ``call_dialogs`` row of an answered call names both legs' dialogs
(the same Call-ID and tags as on the wire) and goes when the call ends, whichever
side hangs up. End to end: a ``dialgate run`` process is killed with SIGKILL
during a call; the next process on the same SQLite file sends a BYE to the
carrier and to the agent in those dialogs, empties the table, and the card
(``concurrent = 1``) takes a new call. The carrier and the agent are the
call-path rig's own UAs (``tests/callpath/conftest.py``), on real sockets.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.sip import Request
from gateway.sip.dialog import Dialog
from gateway.store import SQLiteStore
from gateway.store.sqlite import CallDialogs
from simulator.testkit import eventually
from tests.callpath.conftest import Agent, Carrier, Rig
from tests.integration.conftest import START_TIMEOUT, DialgateProcess, _pump, dialgate_command
from tests.redis.conftest import RedisServer

# --------------------------------------------------------------------------- in process


def stored(rig: Rig) -> list[CallDialogs]:
    """The gateway's stored dialogs, read through its own store."""
    assert rig.gateway.store is not None
    return rig.gateway.store.call_dialogs()


def b_leg_of(carrier: Carrier, call_id: str) -> Request:
    """The INVITE the carrier received for a B-leg Call-ID."""
    [invite] = [r for r in carrier.invites() if r.call_id == call_id]
    return invite


async def test_answered_call_stores_both_dialogs_and_agent_bye_removes_them(rig: Rig) -> None:
    """The row holds the B-leg's dialog as the carrier sees it and the A-leg's as alice does."""
    resp, invite = await rig.alice.call("13912345678")
    assert 200 == resp.status
    [row] = stored(rig)
    assert (invite.call_id, "c1", "+8613912345678") == (row.call_id, row.card, row.callee)
    assert row.a_leg is not None and row.b_leg is not None
    b = Dialog.from_record(row.b_leg["dialog"])
    carrier_invite = b_leg_of(rig.carrier, b.call_id)
    carrier_dialog = rig.carrier.dialogs[b.call_id]
    assert (carrier_invite.from_.tag, carrier_dialog.local_tag) == (b.local_tag, b.remote_tag)
    assert list(rig.carrier.address) == row.b_leg["address"]
    assert "udp" == row.b_leg["transport"]
    a = Dialog.from_record(row.a_leg["dialog"])
    alice_dialog = rig.alice.dialogs[invite.call_id]
    assert (alice_dialog.remote_tag, alice_dialog.local_tag) == (a.local_tag, a.remote_tag)
    # The stored CSeq leaves headroom above what the leg used (the B-leg sent its INVITE).
    assert b.local_seq is not None and b.local_seq > carrier_invite.cseq.seq
    assert 200 == (await rig.alice.send_in_dialog(invite.call_id, "BYE")).status
    assert [] == stored(rig)


async def test_carrier_bye_removes_the_row(rig: Rig) -> None:
    """The callee hanging up ends the call and forgets its dialogs too."""
    resp, _invite = await rig.alice.call("13912345679")
    assert 200 == resp.status
    [row] = stored(rig)
    assert row.b_leg is not None
    b_call_id = row.b_leg["dialog"]["call_id"]
    assert 200 == (await rig.carrier.send_in_dialog(b_call_id, "BYE")).status
    await eventually(lambda: not stored(rig))
    assert rig.gateway.b2bua is not None
    assert (1, 0) == (
        rig.gateway.b2bua.stats["dialogs_stored"],
        rig.gateway.b2bua.stats["dialog_store_errors"],
    )


async def test_failed_calls_leave_no_row(rig: Rig) -> None:
    """A busy callee: the write-ahead row goes when the call ends."""
    rig.carrier.plan = lambda _req: (486, "Busy Here")
    resp, _invite = await rig.alice.call("13912345670")
    assert 486 == resp.status
    assert [] == stored(rig)


async def test_b_leg_is_stored_before_the_invite_leaves(rig: Rig) -> None:
    """Write-ahead (issue 19): while the callee rings, the row names the INVITE the
    carrier got (branch, Call-ID, From tag, CSeq, address) and the agent's."""
    rig.carrier.plan = lambda _req: ("ring",)
    task = asyncio.ensure_future(rig.alice.call("13912345673", cancel_after=1.0))
    try:
        await eventually(lambda: bool(rig.carrier.invites()))
        [carrier_invite] = rig.carrier.invites()
        await eventually(lambda: bool(stored(rig)) and stored(rig)[0].b_invite is not None)
        [row] = stored(rig)
        b = row.b_invite
        assert b is not None and row.a_invite is not None
        assert 1 == b["v"]
        # The branch CANCEL must repeat (the carrier's copy gained received/rport).
        assert f"branch={carrier_invite.via[0].branch};" in b["via"]
        assert (carrier_invite.call_id, carrier_invite.from_.tag, carrier_invite.cseq.seq) == (
            b["call_id"],
            b["from"].rsplit("tag=", 1)[1],
            b["cseq"],
        )
        assert list(rig.carrier.address) == b["address"]
        assert row.answer_at is None and row.a_leg is None and row.b_leg is None
        assert row.cdr is not None and '"interrupted"' in row.cdr
        assert row.a_invite["call_id"] == row.call_id
        resp, _invite = await task
        assert 487 == resp.status
    finally:
        if not task.done():
            task.cancel()
    await eventually(lambda: not stored(rig))


async def test_b_leg_not_stored_means_not_sent(rig: Rig) -> None:
    """With the table gone the INVITE does not leave: 503 store-unavailable (fail closed)."""
    assert rig.gateway.store is not None
    rig.gateway.store._db.execute("DROP TABLE call_dialogs")
    resp, _invite = await rig.alice.call("13912345671")
    assert 503 == resp.status
    assert 'text="store-unavailable"' in (resp.headers.get("Reason") or "")
    assert [] == rig.carrier.invites()
    assert rig.gateway.b2bua is not None
    assert 1 == rig.gateway.b2bua.stats["dialog_store_errors"]
    assert 0 == rig.gateway.b2bua.stats["b_legs_stored"]


async def test_relayed_requests_past_the_headroom_rewrite_the_stored_cseq(rig: Rig) -> None:
    """More relayed in-dialog requests than the headroom: the stored CSeq moves up with them."""
    from gateway.callpath import dialogs as dialogs_module

    old = dialogs_module.CSEQ_HEADROOM
    dialogs_module.CSEQ_HEADROOM = 2
    try:
        resp, invite = await rig.alice.call("13912345672")
        assert 200 == resp.status
        for _ in range(5):
            assert 200 == (await rig.alice.send_in_dialog(invite.call_id, "INFO")).status
    finally:
        dialogs_module.CSEQ_HEADROOM = old
    [row] = stored(rig)
    assert row.b_leg is not None
    b = Dialog.from_record(row.b_leg["dialog"])
    carrier_dialog = rig.carrier.dialogs[b.call_id]
    assert carrier_dialog.remote_seq is not None and b.local_seq is not None
    # The BYE a restart would send is above every CSeq the carrier has seen.
    assert b.local_seq >= carrier_dialog.remote_seq


# --------------------------------------------------------------------------- kill -9


def start_gateway(tmp: Path, carrier: tuple[str, int], redis: str | None = None) -> DialgateProcess:
    """``dialgate run`` on free ports and ``tmp/dialgate.db``: alice on c1, one SIM.

    With ``redis`` the quotas live in Redis (``[store] redis``) and the SQLite file
    keeps the durable record, the dialogs included.
    """
    config = tmp / "dialgate.toml"
    store = f'path = "{tmp / "dialgate.db"}"\n'
    if redis is not None:
        store += f'redis = "{redis}"\n'
    config.write_text(
        f"""[sip]
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]
[store]
{store}
[admin]
listen = "127.0.0.1:0"
[logging]
json = true
[policy]
consent = "dnc-only"
calling_hours = "00:00-24:00"
[[users]]
name = "alice"
password = "s3cret"
card = "c1"
[[carriers]]
name = "carrier-a"
address = "udp:{carrier[0]}:{carrier[1]}"
[quota_profiles.sim]
calls_per_minute = 1000
concurrent = 1
[[cards]]
id = "c1"
carrier = "carrier-a"
number = "+8613800000001"
quota = "sim"
"""
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALGATE_")}
    proc = subprocess.Popen(
        [*dialgate_command(), "run", "--config", str(config)],
        cwd=tmp,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    gw = DialgateProcess(proc, config)
    gw._reader = threading.Thread(target=_pump, args=(proc, gw.lines), daemon=True)
    gw._reader.start()
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        for entry in gw.events("listening"):
            gw.addresses[entry["transport"]] = (entry["host"], int(entry["port"]))
        if {"udp", "tcp"} <= gw.addresses.keys():
            return gw
        time.sleep(0.05)
    gw.stop()
    raise RuntimeError("dialgate did not start:\n" + "\n".join(gw.lines[-30:]))


def rows(db: Path) -> list[CallDialogs]:
    """The stored dialogs as another process sees them."""
    with SQLiteStore(db) as store:
        return store.call_dialogs()


async def register(alice: Agent) -> None:
    """Register alice (the registrar lives in memory: again after every start)."""
    for _ in range(100):
        try:
            if 200 == (await alice.register()).status:
                return
        except TimeoutError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("alice could not register")


def kill_9(gw: DialgateProcess) -> None:
    """SIGKILL by PID: no shutdown path runs (no BYE, no CDR, no row deleted)."""
    os.kill(gw.proc.pid, signal.SIGKILL)
    gw.proc.wait(10)
    if gw._reader is not None:
        gw._reader.join(10)


@pytest.fixture(params=["sqlite", "redis"])
def redis_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    """None (SQLite only), or the URL of a redis-server of the test's own."""
    if request.param == "sqlite":
        yield None
        return
    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server")
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


async def test_kill_9_then_restart_hangs_up_both_legs_and_frees_the_card(
    carrier: Carrier, tmp_path: Path, redis_url: str | None
) -> None:
    """The scenario of DESIGN "a crash can only over-count", with calls really up.

    With ``[store] redis`` too: the dialogs are in this instance's SQLite file and
    the card's slot is in Redis; the restart ends the call and frees the slot.
    """
    db = tmp_path / "dialgate.db"
    first = await asyncio.to_thread(start_gateway, tmp_path, carrier.address, redis_url)
    second: DialgateProcess | None = None
    alice = Agent("alice", "s3cret", first.addresses["udp"])
    await alice.start()
    try:
        await register(alice)
        # A call that ends normally leaves nothing behind.
        resp, ended = await alice.call("13912340001")
        assert 200 == resp.status
        assert 200 == (await alice.send_in_dialog(ended.call_id, "BYE")).status
        # Another process: its delete commits just after its 200 to the BYE left.
        await eventually(lambda: not rows(db))
        # The call the crash will cut.
        resp, live = await alice.call("13912340002")
        assert 200 == resp.status
        a_tag = resp.to.tag
        [b_invite] = [r for r in carrier.invites() if r.uri.user == "+8613912340002"]
        carrier_tag = carrier.dialogs[b_invite.call_id].local_tag
        [row] = rows(db)
        assert (live.call_id, "c1") == (row.call_id, row.card)
        # One SIM: while it is up, the card takes no second call.
        busy, _ = await alice.call("13912340003")
        assert 503 == busy.status
        kill_9(first)
        seen = len(carrier.requests)
        seen_by_alice = len(alice.requests)

        second = await asyncio.to_thread(start_gateway, tmp_path, carrier.address, redis_url)

        def byes() -> tuple[list[Request], list[Request]]:
            at_carrier = [r for r in carrier.requests[seen:] if r.method == "BYE"]
            at_alice = [r for r in alice.requests[seen_by_alice:] if r.method == "BYE"]
            return at_carrier, at_alice

        await eventually(lambda: all(byes()), timeout=10)
        await eventually(lambda: not rows(db), timeout=10)
        [to_carrier], [to_alice] = byes()
        # The carrier's BYE is in the B-leg it answered: Call-ID, our tag, its tag.
        assert (b_invite.call_id, b_invite.from_.tag, carrier_tag) == (
            to_carrier.call_id,
            to_carrier.from_.tag,
            to_carrier.to.tag,
        )
        assert to_carrier.cseq.seq > b_invite.cseq.seq
        assert 'SIP;cause=487;text="gateway restarted"' == to_carrier.headers.get("Reason")
        # The agent's BYE is in its dialog with the gateway.
        assert (live.call_id, live.from_.tag, a_tag) == (
            to_alice.call_id,
            to_alice.to.tag,
            to_alice.from_.tag,
        )
        # No BYE for the call that had ended before the crash.
        assert ended.call_id not in {r.call_id for r in carrier.requests[seen:]}
        # One log line per ended call, callee masked, both peers' answers.
        await eventually(lambda: bool(second.events("call.orphan_ended")))
        [line] = second.events("call.orphan_ended")
        assert (200, 200, "+86139****0002") == (
            line["b_status"],
            line["a_status"],
            line["destination"],
        )
        assert "13912340002" not in "\n".join(second.lines)
        # The cut call has its CDR: answered, then interrupted, end unknown.
        assert "written" == line["cdr"]
        probe = SQLiteStore(db)
        try:
            [cut] = probe.cdrs(call_id=live.call_id)
        finally:
            probe.close()
        assert ("interrupted", 200, "alice", ("c1",)) == (
            str(cut.outcome),
            cut.final_code,
            cut.origin,
            cut.cards,
        )
        assert cut.answer_at is not None and cut.end_at is None
        # The SIM is free again: a new call goes out on c1.
        alice.gateway = second.addresses["udp"]
        await register(alice)
        resp, _again = await alice.call("13912340004")
        assert 200 == resp.status
        [new_invite] = [r for r in carrier.invites() if r.uri.user == "+8613912340004"]
        assert "+8613800000001" == new_invite.from_.uri.user
    finally:
        await alice.close()
        if second is not None:
            second.stop()
        first.stop()


async def test_restart_with_no_stored_call_sends_nothing(carrier: Carrier, tmp_path: Path) -> None:
    """A clean stop (SIGTERM) hangs up its own calls: the next start finds no row, sends no BYE."""
    first = await asyncio.to_thread(start_gateway, tmp_path, carrier.address)
    alice = Agent("alice", "s3cret", first.addresses["udp"])
    await alice.start()
    second: DialgateProcess | None = None
    try:
        await register(alice)
        resp, _live = await alice.call("13912340005")
        assert 200 == resp.status
        await asyncio.to_thread(first.stop)
        assert [] == rows(tmp_path / "dialgate.db")
        # The clean shutdown's own BYE.
        await eventually(lambda: carrier.methods().count("BYE") == 1)
        second = await asyncio.to_thread(start_gateway, tmp_path, carrier.address)
        alice.gateway = second.addresses["udp"]
        await register(alice)  # the second gateway is up and serving
        assert [] == second.events("call.orphan_ended")
        assert 1 == carrier.methods().count("BYE")
    finally:
        await alice.close()
        if second is not None:
            second.stop()
        first.stop()

"""``dialgate run --workers 2`` with SIPp: calls spread and complete, quotas hold, a killed
worker is restarted and ends exactly its own calls, SIGTERM stops every worker.

SIPp agent (alice, ``-t un``: a socket per call, Contact-following ACK/BYE) →
``dialgate run --workers 2`` → SIPp carrier. Which worker handled a call is read
from its ``call.b_leg`` log line (every line of a worker carries ``worker``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from gateway.app import WORKER_CARD_SYNC
from gateway.store import SQLiteStore
from simulator.pytest_plugin import sipp_binary
from simulator.testkit import (
    Message,
    finish_sipp,
    free_udp_port,
    sipp_command,
    start_sipp,
    wait_until,
)
from tests.policy_sipp.conftest import (
    SIPP_DIR as POLICY_SIPP,
)
from tests.policy_sipp.conftest import admin_get, finish_agent, gateway_toml
from tests.workers.conftest import Rig, contacts, numbers

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REGISTRAR_SIPP = Path(__file__).resolve().parents[1] / "registrar" / "sipp"


def cdrs(db: Path) -> dict[str, list[tuple[str, int]]]:
    """A-leg Call-ID → its CDRs' (outcome, final code)."""
    out: dict[str, list[tuple[str, int]]] = {}
    with SQLiteStore(db) as store:
        for c in store.cdrs(limit=10000):
            out.setdefault(c.call_id, []).append((str(c.outcome), c.final_code))
    return out


def carrier_requests(messages: list[Message], method: str, b_call_id: str) -> list[Message]:
    return [
        m
        for m in messages
        if m.direction == "received"
        and m.method == method
        and (m.header("Call-ID") or m.header("i")) == b_call_id
    ]


def test_calls_spread_over_both_workers_and_all_complete(tmp_path: Path, rig: Rig) -> None:
    """40 calls, a socket each: both workers place calls, every call completes, and each
    call's ACK and BYE went to the private port of the worker that placed it (the
    Contact of its 200), one CDR each."""
    carrier, ws = rig.carrier_and_workers(120, cards=2)
    calls = numbers("0001", 40)
    work = tmp_path / "agent"
    agent = rig.agents(ws, work, calls, rate=20, hold_ms=500)
    result = finish_agent(agent, work, bound=60)
    assert (40, 0) == (result.successful, result.failed), result.stats
    legs = ws.b_legs()
    assert 40 == len(legs)
    per_worker = ws.per_worker("call.b_leg")
    print(f"calls per worker: {dict(per_worker)}")
    assert {0, 1} == set(per_worker), per_worker
    private = ws.private_udp()
    seen = contacts(work)
    assert 40 == len(seen)
    for call_id, port in seen.items():
        worker, _ = legs[call_id]
        assert private[worker] == port, (call_id, worker, port, private)
    # Every ACK and BYE was taken by its call (none refused, none waited for).
    assert [] == ws.gw.events("call.in_dialog.refused")
    assert [] == ws.gw.events("call.ack_timeout")
    messages = carrier.messages()
    for _, b in legs.values():
        assert 1 == len(carrier_requests(messages, "BYE", b)), b
        assert carrier_requests(messages, "ACK", b), b
    bye_answers = [
        m.status
        for m in result.messages
        if m.direction == "received" and (m.header("CSeq") or "").endswith("BYE")
    ]
    assert [200] * 40 == bye_answers
    wait_until(lambda: 40 == len(cdrs(tmp_path / "dialgate.db")), 10, "40 CDRs")
    assert all([("answered", 200)] == v for v in cdrs(tmp_path / "dialgate.db").values())
    url = ws.admin()
    assert 0 == int(admin_get(f"{url}/cards/c1")["in_use"])


@pytest.mark.parametrize(
    ("balance", "follow_contact"),
    [("call-id", True), ("call-id", False), ("kernel", True), ("load", True)],
    ids=["steered", "steered-acks-to-shared-port", "kernel-hash", "load-idle"],
)
def test_calls_from_one_socket_spread_over_both_workers(
    tmp_path: Path, rig: Rig, balance: str, follow_contact: bool
) -> None:
    """40 calls from ONE socket (a dialer, or a PBX in front of the agents). The kernel
    hands all of a source's datagrams to one worker; steered by Call-ID, the worker that
    checked alice's digest hands each call to the worker its Call-ID belongs to, and
    both place calls. Every call completes with one CDR, also when the agent sends its
    ACK and BYE to the shared port instead of the owner's Contact (the receiver hands
    them over too, never answering 481 for a sibling's call). By load (the default),
    a worker this far from busy keeps its calls: no hand-over costs anything."""
    carrier, ws = rig.carrier_and_workers(120, cards=2, balance=balance)
    work = tmp_path / "agent"
    agent = rig.agents(
        ws,
        work,
        numbers("0005", 40),
        rate=20,
        hold_ms=300,
        sockets="u1",
        follow_contact=follow_contact,
    )
    result = finish_agent(agent, work, bound=60)
    assert (40, 0) == (result.successful, result.failed), result.stats
    per_worker = ws.per_worker("call.b_leg")
    print(f"calls per worker: {dict(per_worker)}")
    if balance in ("kernel", "load"):
        assert 1 == len(per_worker), per_worker
    else:
        # crc32 of 40 Call-IDs over 2 workers: fewer than 8 on one is a 1-in-10^4 split.
        assert {0, 1} == set(per_worker) and min(per_worker.values()) >= 8, per_worker
    bye_answers = [
        m.status
        for m in result.messages
        if m.direction == "received" and (m.header("CSeq") or "").endswith("BYE")
    ]
    assert [200] * 40 == bye_answers
    legs = ws.b_legs()
    messages = carrier.messages()
    for _, b in legs.values():
        assert 1 == len(carrier_requests(messages, "BYE", b)), b
        assert carrier_requests(messages, "ACK", b), b
    assert [] == ws.gw.events("call.in_dialog.refused")
    assert [] == ws.gw.events("call.ack_timeout")
    wait_until(lambda: 40 == len(cdrs(tmp_path / "dialgate.db")), 10, "40 CDRs")
    assert all([("answered", 200)] == v for v in cdrs(tmp_path / "dialgate.db").values())


def test_a_card_quota_is_not_overbooked_across_workers(tmp_path: Path, rig: Rig) -> None:
    """One card with ``calls_per_minute = 10``; 30 calls spread over both workers within
    a second or two: exactly 10 reach the carrier (the reservation is one transaction
    on the shared SQLite file)."""
    carrier, ws = rig.carrier_and_workers(90, cards=1, quota={"calls_per_minute": 10})
    work = tmp_path / "agent"
    agent = rig.agents(ws, work, numbers("0002", 30), rate=30, hold_ms=200, timeout=30)
    result = finish_agent(agent, work, bound=45)
    finals = list({m.header("Call-ID"): m.status for m in result.finals()}.values())
    print(f"finals: 200 x{finals.count(200)}, 503 x{finals.count(503)}")
    assert 10 == len({m.header("Call-ID") for m in carrier.invites()})
    assert (10, 20) == (finals.count(200), finals.count(503))
    # Both workers took INVITEs (the refused ones too: each is logged).
    handled = ws.per_worker("call.b_leg") + ws.per_worker("sip.request.rejected")
    answered_503 = Counter(int(e["worker"]) for e in ws.gw.events("call.ended") if e["code"] == 503)
    print(f"b-legs per worker {dict(ws.per_worker('call.b_leg'))}, refusals {dict(answered_503)}")
    assert {0, 1} <= set(handled + answered_503), (handled, answered_503)
    with sqlite3.connect(tmp_path / "dialgate.db") as db:
        [(starts,)] = db.execute("SELECT COUNT(*) FROM call_starts WHERE card='c1'").fetchall()
    assert 10 == starts


def test_kill_9_of_one_worker_ends_its_calls_only(tmp_path: Path, rig: Rig) -> None:
    """12 answered calls held 20 s over both workers; SIGKILL worker 1: the supervisor
    starts it again, which BYEs both legs of each of its calls (one ``interrupted`` CDR
    each); worker 0's calls stay up and end normally when the agent hangs up."""
    carrier, ws = rig.carrier_and_workers(120, cards=1)
    work = tmp_path / "agent"
    agent = rig.agents(ws, work, numbers("0003", 12), rate=12, hold_ms=20000, timeout=60)
    wait_until(lambda: 12 == len(ws.b_legs()), 15, "12 B-legs")
    legs = ws.b_legs()
    wait_until(
        lambda: all(carrier_requests(carrier.messages(), "ACK", b) for _, b in legs.values()),
        15,
        "12 answered calls (ACK at the carrier)",
    )
    mine = {a: b for a, (w, b) in legs.items() if w == 1}
    theirs = {a: b for a, (w, b) in legs.items() if w == 0}
    print(f"worker 0: {len(theirs)} calls, worker 1: {len(mine)} calls")
    assert mine and theirs, legs
    url = ws.admin()
    assert 12 == int(admin_get(f"{url}/cards/c1")["in_use"])
    victim = ws.pids()[1]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: ws.pids()[1] != victim, 10, "worker 1 started again")
    [exited] = ws.gw.events("worker.exited")
    assert "signal SIGKILL" == exited["exit"]
    # The new worker 1 ends its predecessor's calls: BYE at the carrier for each.
    wait_until(
        lambda: all(carrier_requests(carrier.messages(), "BYE", b) for b in mine.values()),
        15,
        "BYE at the carrier for each of worker 1's calls",
    )
    db = tmp_path / "dialgate.db"
    wait_until(lambda: all(a in cdrs(db) for a in mine), 10, "a CDR for each of worker 1's calls")
    time.sleep(0.5)  # a second CDR would come from the same recovery pass
    for a in mine:
        assert [("interrupted", 200)] == cdrs(db)[a], a
    # Worker 0's calls are untouched: still up at the carrier, no CDR, still in use.
    messages = carrier.messages()
    assert not any(carrier_requests(messages, "BYE", b) for b in theirs.values())
    assert not any(a in cdrs(db) for a in theirs)
    assert len(theirs) == int(admin_get(f"{url}/cards/c1")["in_use"])
    result = finish_agent(agent, work, bound=40)
    # Every call ended as the scenario expects: BYE from the gateway (worker 1's) or
    # the agent's own BYE after 20 s (worker 0's).
    assert (12, 0) == (result.successful, result.failed), result.stats
    agent_byes = {
        m.header("Call-ID")
        for m in result.messages
        if m.direction == "received" and m.method == "BYE"
    }
    assert set(mine) == agent_byes
    wait_until(lambda: all(a in cdrs(db) for a in legs), 10, "a CDR for every call")
    for a in theirs:
        assert [("answered", 200)] == cdrs(db)[a], a
    assert 0 == int(admin_get(f"{url}/cards/c1")["in_use"])
    with SQLiteStore(db) as store:
        store.sweep = True  # every owner's rows
        assert [] == store.call_dialogs()


def test_kill_9_of_worker_0_cancels_its_unanswered_calls(tmp_path: Path, rig: Rig) -> None:
    """A slow carrier (1.2 s silent, 1.2 s ringing, then 200): SIGKILL worker 0 while
    every INVITE waits. The new worker 0 CANCELs each of its INVITEs (same branch),
    ACKs and BYEs the 200 that comes anyway and answers its agent 500; worker 1's calls
    are answered and complete."""
    carrier, ws = rig.carrier_and_workers(
        120,
        cards=1,
        scenario=POLICY_SIPP / "carrier_late.xml",
        extra=["-default_behaviors", "all,-abortunexp"],
    )
    work = tmp_path / "agent"
    agent = rig.agents(ws, work, numbers("0004", 10), rate=50, hold_ms=1000, timeout=60)
    # (Retransmitted every T1 = 0.1 s meanwhile: counted by Call-ID.)
    wait_until(
        lambda: 10 == len({m.header("Call-ID") for m in carrier.invites()}),
        10,
        "10 INVITEs at the carrier",
    )
    legs = ws.b_legs()
    mine = {a: b for a, (w, b) in legs.items() if w == 0}
    theirs = {a: b for a, (w, b) in legs.items() if w == 1}
    print(f"worker 0: {len(mine)} calls, worker 1: {len(theirs)} calls")
    assert mine and theirs, legs
    victim = ws.pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: ws.pids()[0] != victim, 10, "worker 0 started again")
    for method in ("CANCEL", "ACK", "BYE"):
        wait_until(
            lambda m=method: all(  # type: ignore[misc]
                carrier_requests(carrier.messages(), m, b) for b in mine.values()
            ),
            15,
            f"{method} at the carrier for each of worker 0's calls",
        )
    messages = carrier.messages()
    for b in mine.values():
        [invite, *_] = carrier_requests(messages, "INVITE", b)
        [cancel, *_] = carrier_requests(messages, "CANCEL", b)
        assert _branch(invite) == _branch(cancel)
    for b in theirs.values():
        assert not carrier_requests(messages, "CANCEL", b)
    result = finish_agent(agent, work, bound=40)
    finals = {str(m.header("Call-ID")): m.status for m in result.finals()}
    assert {a: 500 for a in mine} == {a: finals[a] for a in mine}
    assert {a: 200 for a in theirs} == {a: finals[a] for a in theirs}
    assert (10, 0) == (result.successful, result.failed), result.stats
    db = tmp_path / "dialgate.db"
    wait_until(lambda: all(a in cdrs(db) for a in legs), 15, "a CDR for every call")
    time.sleep(0.5)
    for a in mine:
        assert [("interrupted", 500)] == cdrs(db)[a], a
    for a in theirs:
        assert [("answered", 200)] == cdrs(db)[a], a
    wait_until(lambda: 0 == int(admin_get(f"{ws.admin()}/cards/c1")["in_use"]), 10, "c1 in use 0")


def test_sigterm_stops_every_worker(rig: Rig) -> None:
    """SIGTERM to the supervisor: every worker stops, the supervisor exits 0 and removes
    the directory of the workers' hand-over sockets."""
    ws = rig.workers(gateway_toml(1, cards=1))
    pids = list(ws.pids().values())
    assert 2 == len(pids)
    [starting] = ws.gw.events("workers.starting")
    handover = Path(starting["handover"])
    assert {"w0.sock", "w1.sock", "loads"} == {p.name for p in handover.iterdir()}
    assert 0o700 == handover.stat().st_mode & 0o777
    assert 0 == ws.gw.stop()
    for pid in pids:
        assert not _alive(pid), pid
    assert 2 == len(ws.gw.events("stopped"))
    assert not handover.exists()


def test_a_killed_supervisor_takes_its_workers_along(rig: Rig) -> None:
    """SIGKILL to the supervisor: the kernel sends each worker SIGTERM (parent-death
    signal); none is left serving."""
    ws = rig.workers(gateway_toml(1, cards=1))
    pids = list(ws.pids().values())
    os.kill(ws.gw.proc.pid, signal.SIGKILL)
    ws.gw.proc.wait(10)
    wait_until(lambda: not any(_alive(p) for p in pids), 15, "workers gone")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is not serving.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _branch(message: Message) -> str:
    return (message.header("Via") or "").split(";branch=")[1].split(";")[0]


def test_a_suspension_in_worker_0_is_honoured_by_worker_1(tmp_path: Path, rig: Rig) -> None:
    """Card c1 (first choice) suspended through worker 0's admin API: within the sync
    bound every call of both workers goes out on c2."""
    carrier, ws = rig.carrier_and_workers(90, cards=2)
    body = json.dumps({"reason": "maintenance"}).encode()
    request = urllib.request.Request(f"{ws.admin()}/cards/c1/suspend", data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert 200 == resp.status
    time.sleep(2 * WORKER_CARD_SYNC + 0.5)  # the bound: each worker adopts every second
    work = tmp_path / "agent"
    agent = rig.agents(ws, work, numbers("0005", 20), rate=20, hold_ms=100, timeout=30)
    result = finish_agent(agent, work, bound=40)
    assert (20, 0) == (result.successful, result.failed), result.stats
    assert {0, 1} == set(ws.per_worker("call.b_leg")), ws.per_worker("call.b_leg")
    cards_used = {str(e["card"]) for e in ws.gw.events("call.b_leg")}
    assert {"c2"} == cards_used
    senders = {(m.header("From") or "").split(">")[0] for m in carrier.invites()}
    assert {"<sip:+8613800000002@127.0.0.1"} == senders


def _sipp_peer(
    scenario: Path,
    workdir: Path,
    *,
    port: int,
    target: tuple[str, int] | None = None,
    numbers: list[str] | None = None,
) -> subprocess.Popen[bytes]:
    """One SIPp call on 127.0.0.1:``port`` (a client when ``target`` is given)."""
    extra = ["-m", "1", "-timeout_error"]
    if numbers is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "numbers.csv").write_text("SEQUENTIAL\n" + "".join(f"{n};\n" for n in numbers))
        extra += ["-inf", str(workdir / "numbers.csv")]
    cmd = sipp_command(
        scenario,
        port=port,
        target=target,
        workdir=workdir,
        timeout=30,
        binary=sipp_binary(),
        extra=extra,
    )
    return start_sipp(cmd, workdir)


def test_a_carrier_call_rings_an_agent_registered_through_the_other_worker(
    tmp_path: Path, processes: list[Any], rig: Rig
) -> None:
    """alice registers through worker A's private port; the carrier's call back lands on
    worker B (its address hashes there), which reads her binding from the store and
    rings her at the flow she registered from."""
    carrier_port, alice_port = free_udp_port(), free_udp_port()
    config = gateway_toml(carrier_port) + '\n[inbound]\nfallback_user = "alice"\n'
    ws = rig.workers(config)
    shared = ws.gw.addresses["udp"]
    # Which worker the carrier's address hashes to: an out-of-dialog INFO from it is
    # answered 481 (RFC 3261 §15.1.2) and logged by that worker.
    info = (
        f"INFO sip:gw@127.0.0.1:{shared[1]} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{carrier_port};branch=z9hG4bK-probe\r\n"
        "From: <sip:probe@127.0.0.1>;tag=p\r\nTo: <sip:gw@127.0.0.1>\r\n"
        "Call-ID: probe-1\r\nCSeq: 1 INFO\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", carrier_port))
        probe.settimeout(5)
        probe.sendto(info.encode(), shared)
        assert probe.recvfrom(65536)[0].startswith(b"SIP/2.0 481")

    def probes() -> list[dict[str, Any]]:
        return [e for e in ws.gw.events("sip.request.rejected") if e.get("method") == "INFO"]

    wait_until(probes, 5, "the INFO's log line")
    [rejected] = probes()
    lands_on = int(rejected["worker"])
    other = 1 - lands_on
    register = _sipp_peer(
        POLICY_SIPP / "register.xml",
        tmp_path / "register",
        port=alice_port,
        target=("127.0.0.1", ws.private_udp()[other]),
    )
    processes.append(register)
    reg = finish_sipp(register, tmp_path / "register", 20)
    assert (0, 1) == (reg.returncode, reg.successful), reg.stats
    alice = _sipp_peer(REGISTRAR_SIPP / "alice_uas.xml", tmp_path / "alice", port=alice_port)
    processes.append(alice)
    time.sleep(0.3)  # SIPp binds its socket
    call = _sipp_peer(
        REGISTRAR_SIPP / "carrier_call.xml",
        tmp_path / "carrier",
        port=carrier_port,
        target=shared,
        numbers=["+8613800000001"],  # card c1's number
    )
    processes.append(call)
    callback = finish_sipp(call, tmp_path / "carrier", 30)
    assert (0, 1) == (callback.returncode, callback.successful), callback.stats
    answered = finish_sipp(alice, tmp_path / "alice", 10)
    assert 1 == answered.successful, answered.stats
    [invite] = [m for m in answered.messages if m.direction == "received" and m.method == "INVITE"]
    assert f"sip:alice@127.0.0.1:{alice_port}" == invite.first_line.split()[1]
    [leg] = ws.gw.events("call.b_leg")
    assert lands_on == int(leg["worker"])

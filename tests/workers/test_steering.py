"""Calls steered to their worker by Call-ID (:mod:`gateway.callpath.steering`), on real
Unix sockets in one event loop: what is handed over arrives whole and in order, with its
source and identity; a burst beyond the socket buffer waits instead of failing; a sibling
that went away fails the hand-over (the receiver serves the call) until it is back."""

from __future__ import annotations

import asyncio
import socket
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.callpath.auth import Identity, IdentityKind
from gateway.callpath.element import Gateway
from gateway.callpath.steering import BUSY, MARGIN, REMEMBER, Handover, Steering, owner_of
from gateway.sip import Request, parse
from gateway.workers import WorkerRole
from tests.callpath.conftest import Agent, Carrier, gateway_settings


def invite(n: int, *, branch: str | None = None, method: str = "INVITE") -> Request:
    branch = branch or f"z9hG4bK-{n}"
    text = (
        f"{method} sip:+8613900000{n:03d}@gw.example SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.7:5062;branch={branch};rport=5062;received=192.0.2.7\r\n"
        f"From: <sip:alice@gw.example>;tag=a{n}\r\n"
        "To: <sip:+8613900000000@gw.example>\r\n"
        f"Call-ID: call-{n}@192.0.2.7\r\n"
        f"CSeq: 2 {method}\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    message = parse(text.encode())
    assert isinstance(message, Request)
    return message


class Pair:
    """Worker 0 (hands over) and worker 1 (receives) in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.got: list[Handover] = []
        self.clock = 1000.0
        self.w0 = Steering(0, 2, directory, self.got.append, clock=lambda: self.clock)
        self.w1 = Steering(1, 2, directory, self.got.append)

    def start(self) -> None:
        self.w0.start()
        self.w1.start()

    def close(self) -> None:
        self.w0.close()
        self.w1.close()


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    """Both workers of :class:`Pair` started in the test's loop, closed after it."""
    both = Pair(tmp_path)
    both.start()
    try:
        yield both
    finally:
        both.close()


async def until(check: object, seconds: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not check():  # type: ignore[operator]
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_owner_is_crc32_of_the_call_id_and_spreads() -> None:
    assert zlib.crc32(b"abc@host") % 3 == owner_of("abc@host", 3)
    spread = [owner_of(f"{i}-4242@127.0.0.1", 2) for i in range(1000)]
    assert 400 < spread.count(0) < 600


async def test_a_hand_over_arrives_whole_with_source_listener_and_identity(pair: Pair) -> None:
    alice = Identity(IdentityKind.AGENT, "alice", "spring", None)
    req = invite(1)
    assert pair.w0.hand_over(1, req, ("192.0.2.7", 5062), 0, alice)
    assert pair.w0.hand_over(1, invite(2), ("192.0.2.8", 5070), 1)
    await until(lambda: len(pair.got) == 2)
    first, second = pair.got
    assert bytes(req) == bytes(first.request)
    assert (("192.0.2.7", 5062), 0, alice) == (first.source, first.listener, first.identity)
    assert (("192.0.2.8", 5070), 1, None) == (
        second.source,
        second.listener,
        second.identity,
    )
    assert (2, 2) == (pair.w0.stats["handed_over"], pair.w1.stats["received"])
    # Never to itself, nor to a worker the set does not have.
    assert not pair.w0.hand_over(0, req, ("192.0.2.7", 5062), 0)
    assert not pair.w0.hand_over(2, req, ("192.0.2.7", 5062), 0)


async def test_the_invite_is_remembered_for_its_retransmissions_and_cancel(pair: Pair) -> None:
    req = invite(3, branch="z9hG4bK-keep")
    assert pair.w0.remembered(req) is None
    assert pair.w0.hand_over(1, req, ("192.0.2.7", 5062), 0)
    assert 1 == pair.w0.remembered(invite(3, branch="z9hG4bK-keep"))
    assert 1 == pair.w0.remembered(invite(3, branch="z9hG4bK-keep", method="CANCEL"))
    assert 1 == pair.w0.remembered(invite(3, branch="z9hG4bK-keep", method="ACK"))
    # No other method continues an INVITE transaction (a BYE reusing the branch is
    # a new transaction of its own): its Via is not even looked at.
    assert pair.w0.remembered(invite(3, branch="z9hG4bK-keep", method="BYE")) is None
    assert pair.w0.remembered(invite(3, branch="z9hG4bK-other")) is None
    pair.clock += REMEMBER + 1
    assert pair.w0.hand_over(1, invite(4), ("192.0.2.7", 5062), 0)  # trims the old
    assert pair.w0.remembered(req) is None


async def test_a_burst_beyond_the_socket_buffer_waits_and_keeps_its_order(pair: Pair) -> None:
    # Handed over without letting the loop run: the kernel's buffer fills, the rest
    # waits in the sender and leaves when the receiver has read.
    sent = [pair.w0.hand_over(1, invite(n), ("192.0.2.7", 5062), 0) for n in range(500)]
    assert all(sent)
    assert pair.w0._peers[1].pending  # some had to wait
    await until(lambda: len(pair.got) == 500)
    assert [f"call-{n}@192.0.2.7" for n in range(500)] == [h.request.call_id for h in pair.got]
    assert 0 == pair.w0.stats["failed"]


async def test_a_sibling_that_went_away_fails_the_hand_over_until_it_is_back(
    tmp_path: Path,
) -> None:
    got: list[Handover] = []
    w0 = Steering(0, 2, tmp_path, got.append)
    w0.start()
    try:
        assert not w0.hand_over(1, invite(5), ("192.0.2.7", 5062), 0)  # not started yet
        assert 1 == w0.stats["failed"]
        w1 = Steering(1, 2, tmp_path, got.append)
        w1.start()
        assert w0.hand_over(1, invite(6), ("192.0.2.7", 5062), 0)
        await until(lambda: len(got) == 1)
        w1.close()  # exits: w0 sees its connection close
        await until(lambda: not w0._peers)
        assert not w0.hand_over(1, invite(7), ("192.0.2.7", 5062), 0)
        again = Steering(1, 2, tmp_path, got.append)  # restarted: the same path
        again.start()
        assert w0.hand_over(1, invite(8), ("192.0.2.7", 5062), 0)
        await until(lambda: len(got) == 2)
        assert "call-8@192.0.2.7" == got[-1].request.call_id
        again.close()
    finally:
        w0.close()


async def test_what_is_not_a_hand_over_is_dropped_and_counted(tmp_path: Path) -> None:
    got: list[Handover] = []
    w1 = Steering(1, 2, tmp_path, got.append)
    w1.start()
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.connect(str(tmp_path / "w1.sock"))
        sock.send(b"INVITE sip:x SIP/2.0\r\n\r\n")  # no envelope
        sock.send(b'DGSTEER1 {"l":0}\n')  # no source
        sock.send(b'DGSTEER1 {"l":0,"h":"192.0.2.7","p":5062}\nnot sip at all')
        await until(lambda: w1.stats["bad"] == 3)
        assert [] == got
        sock.close()
    finally:
        w1.close()


async def test_the_socket_is_the_owners_alone_and_removed_at_close(tmp_path: Path) -> None:
    w0 = Steering(0, 2, tmp_path, lambda _h: None)
    w0.start()
    try:
        assert 0o600 == (tmp_path / "w0.sock").stat().st_mode & 0o777
    finally:
        w0.close()
    assert not (tmp_path / "w0.sock").exists()


async def test_by_load_a_new_call_goes_over_only_from_a_busy_worker_to_a_calmer_one(
    tmp_path: Path,
) -> None:
    """``worker_balance = "load"``: the loads every worker publishes in the shared file
    decide whether a new call is handed to its Call-ID's worker."""
    w0 = Steering(0, 2, tmp_path, lambda _h: None, always=False)
    w1 = Steering(1, 2, tmp_path, lambda _h: None, always=False)
    w0.start()
    w1.start()
    try:
        for mine, theirs, goes in (
            (0.9, 0.2, True),  # busy, the owner has room
            (0.9, 0.9 - MARGIN / 2, False),  # both busy: no gain worth the hand-over
            (BUSY - 0.01, 0.0, False),  # room here: keep it
            (BUSY, BUSY - MARGIN, True),
        ):
            w0.publish_load(mine)
            w1.publish_load(theirs)
            assert (mine, theirs) == (w0.load(0), w0.load(1))  # one file, seen by both
            assert goes == w0.worth_it(1), (mine, theirs)
        assert Steering(0, 2, tmp_path, lambda _h: None).worth_it(1)  # "call-id": always
    finally:
        w0.close()
        w1.close()


async def test_a_worker_publishes_its_cpu_share(tmp_path: Path) -> None:
    w0 = Steering(0, 2, tmp_path, lambda _h: None, always=False)
    w0.start()
    try:
        await asyncio.sleep(0.15)
        assert w0.load(0) < BUSY  # idle
        end = time.monotonic() + 0.35
        while time.monotonic() < end:  # the loop's thread busy: CPU time ≈ wall time
            pass
        await asyncio.sleep(0.02)  # the overdue sample runs first, over the busy stretch
        assert w0.load(0) > 0.3
    finally:
        w0.close()
    assert 0.0 == Steering(1, 2, tmp_path, lambda _h: None).load(0)  # not mapped


async def two_workers(
    tmp_path: Path, carrier: Carrier, balance: str, steer: str
) -> tuple[Gateway, Gateway]:
    """Workers 0 and 1 of a set, in this process: one shared UDP port (SO_REUSEPORT),
    one database, the hand-over directory ``steer``."""
    settings = gateway_settings(
        carrier.address, tmp_path / "gw.db", extra={"server": {"worker_balance": balance}}
    )
    w0 = Gateway(settings, worker=WorkerRole(0, 2, ports=(0,), home=(0,), steer=steer))
    await w0.start()
    port = w0.address("udp")[1]
    w1 = Gateway(
        settings, worker=WorkerRole(1, 2, ports=(port,), home=(0,), initial=False, steer=steer)
    )
    await w1.start()
    return w0, w1


async def test_calls_from_one_socket_reach_both_in_process_workers(tmp_path: Path) -> None:
    """alice's one socket hashes to one worker; that worker checks her digest and hands
    each call whose Call-ID is the other's over: both place calls, every call is
    answered and hung up, the answers come from the shared port she sent to."""
    carrier = Carrier()
    await carrier.start()
    steer = tmp_path / "steer"
    steer.mkdir(mode=0o700)
    w0, w1 = await two_workers(tmp_path, carrier, "call-id", str(steer))
    alice = Agent("alice", "s3cret", w0.address("udp"))
    await alice.start()
    try:
        assert 200 == (await alice.register()).status
        for n in range(16):
            resp, invite_sent = await alice.call(f"139123450{n:02d}")
            assert 200 == resp.status, resp
            assert 200 == (await alice.send_in_dialog(invite_sent.call_id, "BYE")).status
        placed = [w.b2bua.stats["calls"] for w in (w0, w1) if w.b2bua is not None]
        assert 16 == sum(placed) and min(placed) >= 2, placed
        handed = sum(w.steering.stats["handed_over"] for w in (w0, w1) if w.steering)
        assert handed >= 2
    finally:
        await alice.close()
        await w1.close()
        await w0.close()
        await carrier.close()


async def test_a_worker_without_the_hand_over_directory_still_serves(tmp_path: Path) -> None:
    """The supervisor's directory unusable: the worker logs it and serves what the kernel
    hands it, as with ``worker_balance = "kernel"``."""
    carrier = Carrier()
    await carrier.start()
    w0, w1 = await two_workers(tmp_path, carrier, "load", str(tmp_path / "missing"))
    alice = Agent("alice", "s3cret", w0.address("udp"))
    await alice.start()
    try:
        assert (None, None) == (w0.steering, w1.steering)
        assert 200 == (await alice.register()).status
        resp, invite_sent = await alice.call("13912345600")
        assert 200 == resp.status
        assert 200 == (await alice.send_in_dialog(invite_sent.call_id, "BYE")).status
    finally:
        await alice.close()
        await w1.close()
        await w0.close()
        await carrier.close()

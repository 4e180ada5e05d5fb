"""UDPTransport reads a burst in one wake-up and handles it answers, INVITEs, the rest.

Real sockets on 127.0.0.1: the datagrams are sent from a plain socket before the event
loop gets a turn, so all of them wait in the listener's queue when asyncio reads the
first one.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from gateway.sip import Request, Response, parse
from gateway.transport import UDPTransport
from gateway.transport.udp import READ_BATCH, urgency

from .conftest import Collector, options


@pytest.fixture
def sender() -> Iterator[socket.socket]:
    """A plain blocking UDP socket on 127.0.0.1: its sends queue before the loop runs."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2.0)
    yield sock
    sock.close()


def request(
    method: str, call_id: str, cseq_method: str | None = None, *, to_tag: str | None = None
) -> bytes:
    to = "<sip:gw@127.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
    return (
        f"{method} sip:gw@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK{call_id}{method}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@example.com>;tag=a1\r\n"
        f"To: {to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: 1 {cseq_method or method}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def response(status: int, reason: str, call_id: str) -> bytes:
    return (
        f"SIP/2.0 {status} {reason}\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK{call_id}\r\n"
        "From: <sip:gw@127.0.0.1>;tag=g1\r\n"
        "To: <sip:carrier@127.0.0.1>;tag=c1\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 INVITE\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def label(message: Request | Response) -> str:
    if isinstance(message, Response):
        return f"{message.status} {message.call_id}"
    return f"{message.method} {message.call_id}"


def test_urgency_classes() -> None:
    assert urgency(parse(response(200, "OK", "c"))) == 0
    assert urgency(parse(response(180, "Ringing", "c"))) == 0
    assert urgency(parse(request("INVITE", "n"))) == 1
    assert urgency(parse(request("INVITE", "r", to_tag="t9"))) == 2  # a re-INVITE
    for method in ("ACK", "BYE", "CANCEL", "REGISTER", "OPTIONS", "INFO"):
        assert urgency(parse(request(method, "x"))) == 2


async def test_burst_in_one_wakeup_answers_then_invites_then_the_rest(
    collector: Collector, sender: socket.socket
) -> None:
    udp = await UDPTransport.listen("127.0.0.1", 0, collector)
    try:
        burst = [
            request("BYE", "a"),
            request("INVITE", "b"),
            response(200, "OK", "c"),
            request("ACK", "d"),
            request("INVITE", "d", to_tag="t9"),  # in-dialog: stays behind the ACK
            b"\r\n\r\n",  # a keep-alive: counted, not delivered
            request("INVITE", "e"),
            request("CANCEL", "e"),
            response(180, "Ringing", "g"),
            options(call_id="h"),
        ]
        for data in burst:  # all queued before the loop reads the first
            sender.sendto(data, udp.local_address)
        await collector.wait(9)
        assert [label(m) for m, _, _ in collector.received] == [
            "200 c",
            "180 g",
            "INVITE b",
            "INVITE e",  # the CANCEL of e comes after it: never before its INVITE
            "BYE a",
            "ACK d",
            "INVITE d",
            "CANCEL e",
            "OPTIONS h",
        ]
        assert udp.stats.wakeups == 1
        assert udp.stats.received == 9
        assert udp.stats.keepalives == 1
        assert all(source == sender.getsockname() for _, source, _ in collector.received)
    finally:
        await udp.close()


async def test_a_wakeup_reads_at_most_a_batch(collector: Collector, sender: socket.socket) -> None:
    udp = await UDPTransport.listen("127.0.0.1", 0, collector)
    try:
        count = READ_BATCH + 5
        for i in range(count):
            sender.sendto(options(call_id=f"o{i}"), udp.local_address)
        await collector.wait(count)
        # Same class throughout: arrival order kept, over two wake-ups.
        assert [m.call_id for m, _, _ in collector.received] == [f"o{i}" for i in range(count)]
        assert udp.stats.wakeups == 2
    finally:
        await udp.close()


async def test_a_handler_that_raises_costs_only_its_own_message(
    collector: Collector, sender: socket.socket
) -> None:
    seen: list[str] = []

    def handler(message: Request | Response, source: object, transport: object) -> None:
        seen.append(label(message))
        if isinstance(message, Request) and message.call_id == "boom":
            raise RuntimeError("handler bug")
        collector(message, source, transport)  # type: ignore[arg-type]

    udp = await UDPTransport.listen("127.0.0.1", 0, handler)
    try:
        for data in (options(call_id="boom"), options(call_id="after"), request("INVITE", "i")):
            sender.sendto(data, udp.local_address)
        await collector.wait(2)
        assert seen == ["INVITE i", "OPTIONS boom", "OPTIONS after"]
        assert udp.stats.handler_errors == 1
        assert udp.stats.wakeups == 1
    finally:
        await udp.close()


async def test_a_bad_datagram_in_a_batch_is_answered_and_the_rest_delivered(
    collector: Collector, sender: socket.socket
) -> None:
    udp = await UDPTransport.listen("127.0.0.1", 0, collector)
    try:
        bad = request("INVITE", "bad").replace(b"Content-Length: 0", b"Content-Length: 50")
        for data in (options(call_id="first"), bad, request("INVITE", "ok")):
            sender.sendto(data, udp.local_address)
        await collector.wait(2)
        assert [label(m) for m, _, _ in collector.received] == ["INVITE ok", "OPTIONS first"]
        assert udp.stats.parse_errors == 1
        assert udp.stats.wakeups == 1
        answer = sender.recv(65536)  # the bad INVITE's 400, to where it came from
        assert answer.startswith(b"SIP/2.0 400 ")
    finally:
        await udp.close()

"""UDPTransport over 127.0.0.1 / ::1 with port 0: round trips, error answers, counters."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import pytest

from gateway.sip import Request, Response
from gateway.transport import UDPTransport

from .conftest import Collector, options, parse_response


async def test_round_trip_ipv4(
    collector: Collector, udp_client_factory: Callable[..., Any]
) -> None:
    """A request reaches the handler with its source; the 200 goes back to the client."""
    collector.answer = True
    udp = await UDPTransport.listen("127.0.0.1", 0, collector)
    try:
        assert udp.local_address[1] != 0
        client = await udp_client_factory()
        client.send(options(via_host=f"127.0.0.1:{client.address[1]}"), udp.local_address)
        resp = parse_response(await client.recv())
        assert resp.status == 200
        assert resp.call_id == "cid-1@test"
        message, source, transport = collector.received[0]
        assert isinstance(message, Request)
        assert client.address == source
        assert udp is transport
        assert udp.stats.received == 1
        assert udp.stats.delivered == 1
        assert udp.stats.sent == 1
    finally:
        await udp.close()


async def test_rport_response_goes_to_source_port(
    collector: Collector, udp_client_factory: Callable[..., Any]
) -> None:
    """With ;rport and a wrong sent-by port the response still reaches the real source port."""
    collector.answer = True
    udp = await UDPTransport.listen("127.0.0.1", 0, collector)
    try:
        client = await udp_client_factory()
        client.send(options(via_host="127.0.0.1:9", rport=True), udp.local_address)
        resp = parse_response(await client.recv())
        assert client.address[1] == resp.via[0].rport
        assert resp.via[0].received == "127.0.0.1"
    finally:
        await udp.close()


async def test_round_trip_ipv6(
    collector: Collector, udp_client_factory: Callable[..., Any]
) -> None:
    """The same round trip over ::1."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    collector.answer = True
    try:
        udp = await UDPTransport.listen("::1", 0, collector)
    except OSError:
        pytest.skip("::1 not configured")
    try:
        assert udp.local_address[0] == "::1"
        client = await udp_client_factory("::1")
        client.send(options(via_host=f"[::1]:{client.address[1]}"), udp.local_address)
        assert parse_response(await client.recv()).status == 200
    finally:
        await udp.close()


async def test_malformed_request_answered_with_error_response(
    collector: Collector, udp_client_factory: Callable[..., Any]
) -> None:
    """A request that fails to parse but has Via/From/To/Call-ID/CSeq gets a 400 back."""
    udp = await UDPTransport.listen("127.0.0.1", 0, collector)
    try:
        client = await udp_client_factory()
        client.send(options(content_length=999), udp.local_address)
        resp = parse_response(await client.recv())
        assert resp.status == 400
        assert resp.call_id == "cid-1@test"
        assert collector.received == []
        assert udp.stats.parse_errors == 1
        assert udp.stats.answered_errors == 1
        assert dict(udp.stats.by_status) == {400: 1}
    finally:
        await udp.close()


async def test_garbage_dropped_and_counted(
    collector: Collector, udp_client_factory: Callable[..., Any]
) -> None:
    """Bytes that are no answerable request are dropped, counted, and the socket keeps working."""
    collector.answer = True
    udp = await UDPTransport.listen("127.0.0.1", 0, collector)
    try:
        client = await udp_client_factory()
        for junk in (b"\x00\xff garbage", b"SIP/2.0 200 OK\r\n\r\n", b"INVITE"):
            client.send(junk, udp.local_address)
        client.send(b"\r\n\r\n", udp.local_address)  # keep-alive: not an error
        client.send(options(rport=True), udp.local_address)
        assert parse_response(await client.recv()).status == 200
        assert udp.stats.parse_errors == 2
        assert udp.stats.dropped == 2
        assert dict(udp.stats.dropped_by_reason) == {"unparseable": 2}
        assert udp.stats.keepalives == 1
        assert udp.stats.as_dict()["dropped_by_reason"] == {"unparseable": 2}
        # the header-less status line parses; its missing headers are the upper layer's business
        assert isinstance(collector.received[0][0], Response)
    finally:
        await udp.close()


async def test_oversize_datagram_gets_513(
    collector: Collector, udp_client_factory: Callable[..., Any]
) -> None:
    """A datagram over max_message_size is answered 513 when it is a readable request."""
    udp = await UDPTransport.listen("127.0.0.1", 0, collector, max_message_size=2000)
    try:
        client = await udp_client_factory()
        client.send(options(body=b"x" * 3000), udp.local_address)
        assert parse_response(await client.recv()).status == 513
    finally:
        await udp.close()


async def test_response_delivered_to_handler(
    collector: Collector, udp_client_factory: Callable[..., Any]
) -> None:
    """Responses are parsed and handed up unchanged (no Via stamping on responses)."""
    udp = await UDPTransport.listen("127.0.0.1", 0, collector)
    try:
        client = await udp_client_factory()
        client.send(
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKx\r\n"
            b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: r\r\n"
            b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            udp.local_address,
        )
        await collector.wait(1)
        message = collector.received[0][0]
        assert isinstance(message, Response)
        assert message.via[0].received is None
    finally:
        await udp.close()


async def test_handler_exception_is_contained(udp_client_factory: Callable[..., Any]) -> None:
    """A crashing handler is logged and counted; the transport keeps receiving."""
    calls: list[int] = []

    def boom(message: object, source: object, transport: object) -> None:
        calls.append(1)
        raise RuntimeError("bug above the transport")

    udp = await UDPTransport.listen("127.0.0.1", 0, boom)
    try:
        client = await udp_client_factory()
        client.send(options(), udp.local_address)
        client.send(options(call_id="2"), udp.local_address)
        async with asyncio.timeout(2):
            while len(calls) < 2:
                await asyncio.sleep(0.01)
        assert udp.stats.handler_errors == 2
    finally:
        await udp.close()


async def test_send_failure_is_counted_not_raised(collector: Collector) -> None:
    """Sending to an address of the wrong family fails quietly and is counted."""
    udp = await UDPTransport.listen("127.0.0.1", 0, collector)
    try:
        assert udp.send(options(), ("::1", 5099)) is False
        assert udp.stats.send_errors == 1
        await udp.close()
        assert udp.send(options(), ("127.0.0.1", 5099)) is False
    finally:
        await udp.close()


async def test_receive_buffer_requested(collector: Collector) -> None:
    """SO_RCVBUF is raised well above the usual 208 KiB default where the OS allows it."""
    udp = await UDPTransport.listen("127.0.0.1", 0, collector)
    try:
        with open("/proc/sys/net/core/rmem_max") as f:
            rmem_max = int(f.read())
        # Linux doubles the value asked for, capped at rmem_max (socket(7)).
        assert min(2 * 4 * 1024 * 1024, 2 * rmem_max) == udp.receive_buffer
    finally:
        await udp.close()

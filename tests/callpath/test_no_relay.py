"""No open relay: nothing unauthenticated ever produces a packet towards the carrier."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.app import Gateway
from tests.callpath.conftest import Agent, gateway_settings


@pytest.fixture
def recorder() -> Iterator[tuple[socket.socket, tuple[str, int]]]:
    """A UDP socket standing in for the carrier: it records every datagram, answers none."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    try:
        yield sock, sock.getsockname()
    finally:
        sock.close()


def drain(sock: socket.socket) -> list[bytes]:
    """Every datagram received so far."""
    out = []
    while True:
        try:
            out.append(sock.recv(65535))
        except BlockingIOError:
            return out


async def test_unauthenticated_invites_never_reach_the_carrier(
    recorder: tuple[socket.socket, tuple[str, int]], tmp_path: Path
) -> None:
    """No credentials, wrong password, unknown user, peer name from a foreign address, unregistered agent."""
    sock, address = recorder
    gw = Gateway(gateway_settings(address, tmp_path / "gw.db"))
    await gw.start()
    agents = [
        Agent("alice", "s3cret", gw.address("udp")),
        Agent("alice", "wrong", gw.address("udp")),
        Agent("mallory", "s3cret", gw.address("udp")),
        Agent("dialer-1", "dialer-secret", gw.address("udp")),  # from 127.0.0.1, not allowed
        Agent("bob", "bobpass", gw.address("udp")),  # right password, never registered
    ]
    try:
        for agent in agents:
            await agent.start()
        resp, _ = await agents[0].call("13912345678", credentials=False)
        assert 407 == resp.status
        statuses = []
        for agent in agents[1:]:
            resp, _ = await agent.call("13912345678")
            statuses.append(resp.status)
        assert [407, 407, 407, 403] == statuses
        # Wrong password and unknown user get the very same answer (no enumeration).
        await asyncio.sleep(0.3)
        assert [] == drain(sock)
        assert 0 == gw.b2bua.stats["b_legs"]  # type: ignore[union-attr]
    finally:
        for agent in agents:
            await agent.close()
        await gw.close()


async def test_peer_from_allowed_address_may_call(
    recorder: tuple[socket.socket, tuple[str, int]], tmp_path: Path
) -> None:
    """A dialer peer from its allow-listed address (127.0.0.2) with digest reaches the carrier."""
    sock, address = recorder
    gw = Gateway(gateway_settings(address, tmp_path / "gw.db"))
    await gw.start()
    peer = Agent("dialer-1", "dialer-secret", gw.address("udp"))
    from gateway.endpoint import SipEndpoint
    from tests.callpath.conftest import FAST

    peer.endpoint = SipEndpoint(lambda sr: None, timers=FAST)
    await peer.endpoint.listen("udp", "127.0.0.2", 0)
    try:
        task = asyncio.ensure_future(peer.call("13912345678"))
        for _ in range(100):
            await asyncio.sleep(0.02)
            data = drain(sock)
            if data:
                break
        assert data and data[0].startswith(b"INVITE sip:+8613912345678@")
        task.cancel()
    finally:
        await peer.close()
        await gw.close()


async def test_carrier_address_invite_is_never_sent_to_a_carrier(
    recorder: tuple[socket.socket, tuple[str, int]], tmp_path: Path
) -> None:
    """An INVITE from the carrier's address is inbound: with nobody registered it gets 480."""
    sock, address = recorder
    gw = Gateway(gateway_settings(address, tmp_path / "gw.db"))
    await gw.start()
    try:
        gw_host, gw_port = gw.address("udp")
        invite = (
            f"INVITE sip:+8613912345678@{gw_host}:{gw_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {address[0]}:{address[1]};branch=z9hG4bKrelay1\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:x@evil>;tag=1\r\nTo: <sip:+8613912345678@gw>\r\n"
            f"Call-ID: relay@test\r\nCSeq: 1 INVITE\r\nContact: <sip:x@{address[0]}:{address[1]}>\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        sock.sendto(invite, (gw_host, gw_port))
        got: list[bytes] = []
        for _ in range(100):
            await asyncio.sleep(0.02)
            got += drain(sock)
            if any(b" 480 " in d.split(b"\r\n")[0] for d in got):
                break
        starts = [d.split(b"\r\n")[0] for d in got]
        assert all(s.startswith(b"SIP/2.0 ") for s in starts), starts
        assert any(b" 480 " in s for s in starts)
    finally:
        await gw.close()

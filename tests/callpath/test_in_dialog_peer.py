"""In-dialog requests are accepted only from the leg's peer (issue 15).

A forger on another port of the same host knows the Call-ID and both tags (the
worst case: it sniffed them) and sends BYE, CANCEL, re-INVITE, INFO and ACK:
each is answered 403 (the ACK dropped), counted, logged once per source, and
nothing reaches the other leg; the real peer's requests still work.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import cast

import pytest
from structlog.testing import capture_logs

from gateway.callpath.calls import Leg
from gateway.callpath.element import Gateway
from gateway.sip import Request, Response, parse
from gateway.sip.digest import DigestClient
from gateway.sip.transaction import build_cancel
from gateway.transport import MemoryNetwork, MemoryTransport, TransportName
from gateway.transport.endpoint import ServerRequest, SipEndpoint
from simulator.testkit import eventually
from tests.callpath.conftest import FAST, SDP_A, Agent, Carrier, Rig, gateway_settings


@pytest.fixture
async def forger() -> AsyncIterator[SipEndpoint]:
    """A UA on another loopback port that sends what it is told and answers nothing."""

    def ignore(sr: ServerRequest) -> None:
        return None

    ep = SipEndpoint(ignore, timers=FAST)
    await ep.listen("udp", "127.0.0.1", 0)
    try:
        yield ep
    finally:
        await ep.close()


async def _send(forger: SipEndpoint, req: Request, to: tuple[str, int]) -> Response:
    return await asyncio.wait_for(forger.request(req, to), 5)


def _refused(rig: Rig) -> int:
    return rig.gateway.snapshot()["gateway"]["in_dialog_refused"]  # type: ignore[no-any-return]


async def test_forged_bye_reinvite_info_from_agent_side(rig: Rig, forger: SipEndpoint) -> None:
    """BYE, re-INVITE, INFO and ACK with the agent's dialog from another port: 403, not relayed."""
    resp, invite = await rig.alice.call("13912345678")
    assert 200 == resp.status
    await eventually(lambda: "ACK" in rig.carrier.methods())
    before = list(rig.carrier.methods())
    dialog = rig.alice.dialogs[invite.call_id]
    with capture_logs() as logs:
        for method in ("BYE", "INVITE", "INFO"):
            body = SDP_A if method == "INVITE" else b""
            headers = [("Content-Type", "application/sdp")] if body else []
            forged = dialog.create_request(method, headers=headers, body=body)
            answer = await _send(forger, forged, rig.address)
            assert (method, 403) == (method, answer.status)
        ack = dialog.create_request("ACK", cseq=invite.cseq.seq)
        forger.send_stateless(ack, rig.address)
        await asyncio.sleep(0.3)
    assert before == rig.carrier.methods()  # nothing reached the carrier
    assert 4 == _refused(rig)
    refused = [e for e in logs if e["event"] == "call.in_dialog.refused"]
    assert 1 == len(refused)  # logged once per source
    assert ("a", "BYE", invite.call_id) == (
        refused[0]["side"],
        refused[0]["method"],
        refused[0]["call_id"],
    )
    # The call is still up and the agent's own requests work.
    assert 200 == (await rig.alice.send_in_dialog(invite.call_id, "INFO")).status
    assert "INFO" in rig.carrier.methods()
    assert 200 == (await rig.alice.send_in_dialog(invite.call_id, "BYE")).status
    await eventually(lambda: "BYE" in rig.carrier.methods())
    await eventually(lambda: len(rig.gateway.store.cdrs()) == 1)  # type: ignore[union-attr]


async def test_forged_bye_and_reinvite_from_carrier_side(rig: Rig, forger: SipEndpoint) -> None:
    """The carrier's dialog from another port: 403, the agent sees nothing; the real BYE works."""
    resp, _ = await rig.alice.call("13912345678")
    assert 200 == resp.status
    [b_invite] = rig.carrier.invites()
    await eventually(lambda: "ACK" in rig.carrier.methods())
    dialog = rig.carrier.dialogs[b_invite.call_id]
    seen = len(rig.alice.requests)
    for method in ("INVITE", "INFO", "BYE"):
        answer = await _send(forger, dialog.create_request(method), rig.address)
        assert (method, 403) == (method, answer.status)
    await asyncio.sleep(0.2)
    assert seen == len(rig.alice.requests)
    assert 3 == _refused(rig)
    assert 200 == (await rig.carrier.send_in_dialog(b_invite.call_id, "BYE")).status
    await eventually(lambda: "BYE" in [r.method for r in rig.alice.requests])


async def test_forged_cancel_is_refused_real_cancel_works(rig: Rig, forger: SipEndpoint) -> None:
    """A CANCEL naming the ringing INVITE's branch from another port: 403, the call rings on."""
    rig.carrier.plan = lambda _req: ("ring",)
    alice = rig.alice
    assert alice.endpoint is not None
    ruri = f"sip:13912345678@{rig.address[0]}:{rig.address[1]}"
    call_id, tag = f"{secrets.token_hex(6)}@agent", secrets.token_hex(4)

    def build(cseq: int) -> Request:
        req = alice._base("INVITE", ruri, call_id, cseq, tag)
        req.headers.add("Content-Type", "application/sdp")
        req.body = SDP_A
        return req

    first = await asyncio.wait_for(alice.endpoint.request(build(1), rig.address), 5)
    assert 407 == first.status
    client = DigestClient("alice", "s3cret")
    assert client.handle_challenge(407, first.headers.get_all("Proxy-Authenticate"))
    req = build(2)
    auth = client.authorization("INVITE", ruri, SDP_A)
    assert auth is not None
    req.headers.add(*auth)
    ringing = asyncio.Event()

    def on_response(_h: object, r: Response) -> None:
        if 100 < r.status < 200:
            ringing.set()

    handle = alice.endpoint.send_request(req, rig.address, on_response=on_response)
    await asyncio.wait_for(ringing.wait(), 5)
    forged = build_cancel(handle.request)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(3)
        sock.sendto(bytes(forged), rig.address)
        data = await asyncio.to_thread(sock.recv, 65535)
    answer = parse(data)
    assert isinstance(answer, Response)
    assert 403 == answer.status
    await asyncio.sleep(0.2)
    assert "CANCEL" not in rig.carrier.methods()
    assert not handle.final.done()
    assert 1 == _refused(rig)
    handle.cancel()
    final = await asyncio.wait_for(handle.final, 5)
    assert 487 == final.status
    await eventually(lambda: "CANCEL" in rig.carrier.methods())


def test_leg_from_peer_rules() -> None:
    """UDP: exact address; TCP: the peer's host on any port; the A-leg: its own transport only."""
    net = MemoryNetwork()
    udp = MemoryTransport(lambda *_: None, ("127.0.0.1", 5060), network=net)
    other = MemoryTransport(lambda *_: None, ("127.0.0.1", 5062), network=net)
    a = Leg(udp, ("198.51.100.7", 40000), "c@x", "t", strict=True)
    assert a.from_peer(("198.51.100.7", 40000), udp)
    assert not a.from_peer(("198.51.100.7", 40001), udp)
    assert not a.from_peer(("198.51.100.8", 40000), udp)
    assert not a.from_peer(("198.51.100.7", 40000), other)  # another listener
    b = Leg(udp, ("203.0.113.5", 5060), "c2@x", "t2")
    assert b.from_peer(("203.0.113.5", 5060), other)  # B-leg: any UDP listener
    b.peers.add(("203.0.113.5", 5080))  # the carrier answered from another port
    assert b.from_peer(("203.0.113.5", 5080), udp)
    assert not b.from_peer(("203.0.113.5", 5081), udp)
    tcp = MemoryTransport(lambda *_: None, ("127.0.0.1", 5060), network=net, name=TransportName.TCP)
    t = Leg(tcp, ("198.51.100.7", 40000), "c3@x", "t3", strict=True)
    assert t.from_peer(("198.51.100.7", 41234), tcp)  # reconnected after an idle close
    assert not t.from_peer(("198.51.100.8", 40000), tcp)
    assert not t.from_peer(("198.51.100.7", 40000), udp)


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, tuple[str, int]], None]) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.on_datagram(data, addr)


class _SplitPortCarrier:
    """A carrier that takes requests on one port and answers (and sends) from another.

    ``inbound`` forwards what the gateway sends to the carrier from ``outbound``;
    what the carrier sends to ``outbound`` (answers, its own requests) goes on to
    the gateway from there, and the gateway's answers to those back to the carrier.
    """

    def __init__(self, carrier: tuple[str, int]) -> None:
        self.carrier = carrier
        self.gateway: tuple[str, int] | None = None
        self.inbound: asyncio.DatagramTransport | None = None
        self.outbound: asyncio.DatagramTransport | None = None

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self.inbound, _ = await loop.create_datagram_endpoint(
            lambda: _Socket(self._from_gateway), local_addr=("127.0.0.1", 0)
        )
        self.outbound, _ = await loop.create_datagram_endpoint(
            lambda: _Socket(self._from_carrier), local_addr=("127.0.0.1", 0)
        )
        return cast(tuple[str, int], self.inbound.get_extra_info("sockname")[:2])

    @property
    def answer_address(self) -> tuple[str, int]:
        assert self.outbound is not None
        return cast(tuple[str, int], self.outbound.get_extra_info("sockname")[:2])

    def _from_gateway(self, data: bytes, addr: tuple[str, int]) -> None:
        self.gateway = addr
        assert self.outbound is not None
        self.outbound.sendto(data, self.carrier)

    def _from_carrier(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.outbound is not None
        if addr != self.carrier:
            self.outbound.sendto(data, self.carrier)  # the gateway answering the carrier
        elif self.gateway is not None:
            self.outbound.sendto(data, self.gateway)

    def close(self) -> None:
        for t in (self.inbound, self.outbound):
            if t is not None:
                t.close()


async def test_carrier_answering_from_another_port_is_its_peer(
    carrier: Carrier, tmp_path: Path
) -> None:
    """Sent to one port, answered from another: requests from the answering port are the carrier's."""
    split = _SplitPortCarrier(carrier.address)
    relay_address = await split.start()
    gw = Gateway(gateway_settings(relay_address, tmp_path / "gw.db"))
    await gw.start()
    alice = Agent("alice", "s3cret", gw.address("udp"))
    await alice.start()
    try:
        assert 200 == (await alice.register()).status
        resp, invite = await alice.call("13912345678")
        assert 200 == resp.status
        [b_invite] = carrier.invites()
        await eventually(lambda: "ACK" in carrier.methods())
        b2bua = gw.b2bua
        assert b2bua is not None
        [call] = list(b2bua.calls.values())
        assert call.b is not None
        assert relay_address == call.b.address
        assert split.answer_address in call.b.peers  # where the answers came from
        assert relay_address != split.answer_address
        # The carrier's BYE comes from the port its answers came from: accepted, relayed.
        assert 200 == (await carrier.send_in_dialog(b_invite.call_id, "BYE")).status
        await eventually(lambda: "BYE" in [r.method for r in alice.requests])
        assert invite.call_id == next(r for r in alice.requests if r.method == "BYE").call_id
        assert 0 == gw.snapshot()["gateway"]["in_dialog_refused"]
    finally:
        await alice.close()
        await gw.close()
        split.close()

"""No open relay: nothing unauthenticated ever produces a packet towards the carrier."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.callpath.element import Gateway
from simulator.testkit import eventually
from tests.callpath.conftest import Agent, Carrier, gateway_settings


@pytest.fixture
async def recorder() -> AsyncIterator[Carrier]:
    """The simulator's carrier, silent: it records every request and datagram, answers none."""
    carrier = Carrier(silent=True)
    await carrier.start()
    try:
        yield carrier
    finally:
        await carrier.close()


async def test_unauthenticated_invites_never_reach_the_carrier(
    recorder: Carrier, tmp_path: Path
) -> None:
    """No credentials, wrong password, unknown user, peer name from a foreign address, unregistered agent."""
    gw = Gateway(gateway_settings(recorder.address, tmp_path / "gw.db"))
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
        assert (0, []) == (recorder.datagrams_received, recorder.requests)
        assert 0 == gw.b2bua.stats["b_legs"]  # type: ignore[union-attr]
    finally:
        for agent in agents:
            await agent.close()
        await gw.close()


async def test_peer_from_allowed_address_may_call(recorder: Carrier, tmp_path: Path) -> None:
    """A dialer peer from its allow-listed address (127.0.0.2) with digest reaches the carrier."""
    gw = Gateway(gateway_settings(recorder.address, tmp_path / "gw.db"))
    await gw.start()
    peer = Agent("dialer-1", "dialer-secret", gw.address("udp"))
    from gateway.transport.endpoint import SipEndpoint
    from tests.callpath.conftest import FAST

    peer.endpoint = SipEndpoint(lambda sr: None, timers=FAST)
    await peer.endpoint.listen("udp", "127.0.0.2", 0)
    try:
        task = asyncio.ensure_future(peer.call("13912345678"))
        await eventually(lambda: recorder.datagrams_received > 0, 2)
        first = recorder.requests[0]
        assert ("INVITE", "sip", "+8613912345678") == (
            first.method,
            first.uri.scheme,
            first.uri.user,
        )
        task.cancel()
    finally:
        await peer.close()
        await gw.close()


async def test_carrier_address_invite_is_never_sent_to_a_carrier(
    recorder: Carrier, tmp_path: Path
) -> None:
    """An INVITE from the carrier's address is inbound: with nobody registered it gets 480."""
    gw = Gateway(gateway_settings(recorder.address, tmp_path / "gw.db"))
    await gw.start()
    try:
        resp = await recorder.invite(gw.address("udp"), "+8613912345678")
        assert 480 == resp.status
        await asyncio.sleep(0.3)
        # Everything that came back was a response to it: no request towards the carrier.
        assert [] == recorder.requests
        assert 0 == recorder.sim.transport.stats.parse_errors
        assert recorder.datagrams_received >= 1
    finally:
        await gw.close()

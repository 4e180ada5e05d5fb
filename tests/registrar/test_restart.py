"""In-process restarts: a new ``Gateway`` on the same database finds the bindings.

UDP bindings keep their flow (source address) and are rung there; a TCP
binding is kept, its dead connection replaced by a new one to the Contact
(the phone listens there) until the phone registers again; ``Contact: *``
and expiry leave nothing behind to restore.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.callpath.element import Gateway
from tests.callpath.conftest import Agent, Carrier, gateway_settings

SIP_UDP_TCP = {
    "listen": ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"],
    "realm": "dialgate",
    "t1": 0.1,
    "t2": 0.4,
}


@pytest.fixture
async def carrier() -> AsyncIterator[Carrier]:
    """The carrier (it also calls back: inbound calls come from its address)."""
    c = Carrier()
    await c.start()
    try:
        yield c
    finally:
        await c.close()


async def gateway(carrier: Carrier, db: Path, **extra: Any) -> Gateway:
    """A started gateway on ``db`` (alice bound to c1; bob the inbound fallback)."""
    gw = Gateway(gateway_settings(carrier.address, db, extra=extra or None))
    await gw.start()
    return gw


async def test_udp_binding_survives_and_is_rung_at_its_flow(
    carrier: Carrier, tmp_path: Path
) -> None:
    """alice registers, the gateway goes, a new one rings alice for a call to c1."""
    db = tmp_path / "gw.db"
    gw = await gateway(carrier, db)
    alice = Agent("alice", "s3cret", gw.address("udp"))
    await alice.start()
    try:
        assert 200 == (await alice.register()).status
        await gw.close()
        gw = await gateway(carrier, db)
        [binding] = gw.registrar.lookup("alice", gw.sip_clock())
        assert (False, "udp") == (binding.flow_lost, binding.transport)
        assert alice.endpoint is not None
        assert alice.endpoint.transports[0].local_address == binding.source
        resp = await carrier.invite(gw.address("udp"), "+8613800000001")
        assert 200 == resp.status
        assert ["INVITE"] == [r.method for r in alice.requests][:1]
    finally:
        await alice.close()
        await gw.close()


async def test_tcp_binding_is_kept_and_reached_at_its_contact(
    carrier: Carrier, tmp_path: Path
) -> None:
    """Over TCP: after the restart alice is still registered; a call opens a connection to her Contact."""
    db = tmp_path / "gw.db"
    gw = await gateway(carrier, db, sip=SIP_UDP_TCP)
    alice = Agent("alice", "s3cret", gw.address("tcp"), transport="tcp")
    await alice.start()
    try:
        assert 200 == (await alice.register()).status
        [before] = gw.registrar.lookup("alice", gw.sip_clock())
        assert "tcp" == before.transport
        await gw.close()  # the connection goes with it
        gw = await gateway(carrier, db, sip=SIP_UDP_TCP)
        [binding] = gw.registrar.lookup("alice", gw.sip_clock())
        assert alice.endpoint is not None
        listening = alice.endpoint.transports[0].local_address
        assert (True, listening) == (binding.flow_lost, binding.source)
        assert before.source != binding.source  # not the dead connection's ephemeral port
        resp = await carrier.invite(gw.address("udp"), "+8613800000001")
        assert 200 == resp.status
        assert ["INVITE"] == [r.method for r in alice.requests][:1]
        # Registering again over a new connection gives the binding a live flow
        # (this gateway listens on another port: port 0 in the test settings).
        alice.gateway = gw.address("tcp")
        assert 200 == (await alice.register()).status
        [fresh] = gw.registrar.lookup("alice", gw.sip_clock())
        assert not fresh.flow_lost
    finally:
        await alice.close()
        await gw.close()


async def test_unregistered_and_expired_bindings_are_not_restored(
    carrier: Carrier, tmp_path: Path
) -> None:
    """Contact: * (Expires: 0) deletes; a binding that expired meanwhile is dropped at load."""
    db = tmp_path / "gw.db"
    gw = await gateway(carrier, db)
    alice = Agent("alice", "s3cret", gw.address("udp"))
    bob = Agent("bob", "bobpass", gw.address("udp"))
    await alice.start()
    await bob.start()
    try:
        assert 200 == (await alice.register()).status
        assert 200 == (await alice.register(expires=0)).status
        assert 200 == (await bob.register(expires=60)).status
        await gw.close()
        gw = await gateway(carrier, db)
        gw.sip_clock = lambda: time.time() + 61  # type: ignore[method-assign]
        assert not gw.registrar.is_registered("alice", gw.sip_clock())
        # bob's binding was loaded (still live at start) and expires on time.
        assert not gw.registrar.is_registered("bob", gw.sip_clock())
    finally:
        await alice.close()
        await bob.close()
        await gw.close()

"""The test kit itself: fixtures start real peers on free ports and tear everything down."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from gateway.sip import Request
from gateway.transport import Address
from simulator.agents import Dialer, Softphone
from simulator.carrier import Carrier
from simulator.pytest_plugin import SimCard, SimKit, SimPeer, SimUser, always_answer
from simulator.runner import InProcessGateway

WAIT = 10.0


def _options(target: Address) -> Request:
    host, port = target
    return Request(
        "OPTIONS",
        f"sip:{host}:{port}",
        [
            ("From", "<sip:probe@127.0.0.1>;tag=k1"),
            ("To", f"<sip:{host}:{port}>"),
            ("Call-ID", "kit-options@test"),
            ("CSeq", "1 OPTIONS"),
        ],
    )


def _udp_port_free(address: Address) -> bool:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(address)
    except OSError:
        return False
    finally:
        sock.close()
    return True


async def test_gateway_fixture_is_up_and_answers_options(
    gateway: InProcessGateway, gateway_address: Address, softphone: Softphone, carrier: Carrier
) -> None:
    """The in-process gateway listens on a free loopback port and answers OPTIONS with 200."""
    assert gateway.running
    assert gateway.gateway is not None and gateway.gateway.transports
    assert "127.0.0.1" == gateway_address[0] and gateway_address[1] not in (0, 5060)
    response = await asyncio.wait_for(
        softphone.endpoint.request(_options(gateway_address), gateway_address), WAIT
    )
    assert 200 == response.status
    # The gateway's carrier trunk is the fixture carrier.
    assert [carrier.address_spec] == [str(c.address) for c in gateway.settings.carriers]
    assert ["c1", "c2"] == [c.id for c in gateway.settings.cards]
    # Whole-day calling hours: fixture tests never depend on the wall clock.
    assert "00:00-24:00" == str(gateway.settings.policy.calling_hours)


async def test_softphone_fixture_passes_the_gateway_digest(softphone: Softphone) -> None:
    """The fixture agent's REGISTER is challenged and its credentials are accepted (no second 401)."""
    response = await asyncio.wait_for(softphone.register(), WAIT)
    assert 401 == softphone.register_responses[0]
    assert response.status not in (401, 407, 400)
    assert 2 == len(softphone.register_responses)


async def test_dialer_fixture_carries_campaign(dialer: Dialer, sim_peers: list[SimPeer]) -> None:
    """The dialer fixture is the first peer, with its campaign and a bound port."""
    assert (sim_peers[0].name, sim_peers[0].campaign) == (dialer.name, dialer.campaign)
    assert dialer.address[1] != 0


async def test_simkit_closes_every_peer_and_task(tmp_path: Path) -> None:
    """After the kit closes: the gateway's listeners closed, every UDP port released, no task left over."""
    before = set(asyncio.all_tasks())
    cards = [SimCard("c1", "+8613800000001", "c1", "pw1")]
    async with SimKit(tmp_path) as kit:
        carrier = await kit.carrier(cards, answer=always_answer(ring=1.0, talk=3600.0))
        gateway = await kit.gateway(
            carrier, cards=cards, users=[SimUser("alice", "a")], peers=[SimPeer("d", "p")]
        )
        phone = await kit.softphone("c1", "pw1", carrier.address)
        dialer = await kit.dialer("d", "p", gateway.address())
        # A call still up when the kit closes must not outlive it.
        call = asyncio.ensure_future(phone.call("+8613912345678", talk_seconds=None))
        for _ in range(200):
            if carrier.active_calls() and phone.outbound_calls():
                break
            await asyncio.sleep(0.01)
        assert 4 == len(kit.peers)
        addresses = [carrier.address, gateway.address(), phone.address, dialer.address]
    assert call.done()
    assert 0 == len(kit.peers)
    assert [] == gateway.gateway.transports
    assert not gateway.running
    assert all(_udp_port_free(a) for a in addresses)
    await asyncio.sleep(0)
    leftover = {t for t in asyncio.all_tasks() - before if not t.done()}
    assert set() == leftover - {asyncio.current_task()}


async def test_simkit_cleans_its_own_temporary_directory() -> None:
    """Without a directory the kit makes a temporary one (the gateway store) and removes it."""
    async with SimKit() as kit:
        carrier = await kit.carrier([SimCard("c1", "+8613800000001", "c1", "pw1")])
        await kit.gateway(carrier, cards=[SimCard("c1", "+8613800000001", "c1", "pw1")])
        workdir = kit.workdir
        assert workdir.is_dir()
    assert not workdir.exists()

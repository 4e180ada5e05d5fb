"""The simulated peers on an in-memory network: no sockets, same SIP behaviour."""

from __future__ import annotations

import asyncio

import pytest

from gateway.sip.transaction import TimerConfig
from gateway.transport import Address
from simulator.models import EventKind
from simulator.pytest_plugin import SimCard, SimKit, always_answer
from simulator.sipkit import LoopNetwork

CARDS = [SimCard("c1", "+8613800000001", "c1", "pw1")]
FAST = TimerConfig(t1=0.02, t2=0.08, t4=0.1, timer_d=0.2)


async def test_call_over_memory_network() -> None:
    """Carrier and softphone on a LoopNetwork: digest, 180, 200, ACK and the callee's BYE."""
    network = LoopNetwork()
    async with SimKit(network=network) as kit:
        carrier = await kit.carrier(CARDS, answer=always_answer(ring=1.0, talk=5.0))
        phone = await kit.softphone("c1", "pw1", carrier.address)
        assert ("10.0.0.1", 5060) == carrier.address
        assert ("10.0.0.2", 5060) == phone.address
        result = await asyncio.wait_for(phone.call("+8613912345678", talk_seconds=None), 5)
        assert (200, "remote", 1) == (result.status, result.hangup, result.challenges)
        for _ in range(50):
            if carrier.model.events[-1].kind is EventKind.CALL_ENDED:
                break
            await asyncio.sleep(0.01)
        assert [EventKind.ACCEPTED, EventKind.CALL_ENDED] == [e.kind for e in carrier.model.events]
    assert {} == network.endpoints  # every memory transport closed


async def test_lost_invite_is_retransmitted_on_real_sip_timers() -> None:
    """Losing the first authenticated INVITE costs one Timer A retransmission, not the call."""
    network = LoopNetwork()
    lost: list[bytes] = []

    def drop(data: bytes, _source: Address, _dest: Address) -> bool:
        if data.startswith(b"INVITE") and b"Authorization" in data and not lost:
            lost.append(data)
            return True
        return False

    network.drop = drop
    async with SimKit(network=network) as kit:
        carrier = await kit.carrier(CARDS, answer=always_answer(ring=1.0, talk=5.0), timers=FAST)
        phone = await kit.softphone("c1", "pw1", carrier.address, timers=FAST)
        result = await asyncio.wait_for(phone.call("+8613912345678", talk_seconds=None), 5)
        assert 200 == result.status
        assert 1 == len(lost)
        assert 1 == len(carrier.dialled())  # the retransmission hit the same transaction


async def test_gateway_refuses_a_memory_kit() -> None:
    """An in-process gateway cannot join an in-memory network: the kit says so."""
    async with SimKit(network=LoopNetwork()) as kit:
        carrier = await kit.carrier(CARDS)
        with pytest.raises(RuntimeError):
            await kit.gateway(carrier, cards=CARDS)


async def test_lost_ack_makes_the_carrier_retransmit_its_200() -> None:
    """Losing the first ACK: the carrier resends its 2xx (§13.3.1.4), the UA ACKs again, no BYE."""
    network = LoopNetwork()
    lost: list[bytes] = []

    def drop(data: bytes, _source: Address, _dest: Address) -> bool:
        if data.startswith(b"ACK ") and not lost:
            lost.append(data)
            return True
        return False

    network.drop = drop
    async with SimKit(network=network) as kit:
        carrier = await kit.carrier(CARDS, answer=always_answer(ring=1.0, talk=60.0), timers=FAST)
        phone = await kit.softphone("c1", "pw1", carrier.address, timers=FAST)
        call = asyncio.ensure_future(phone.call("+8613912345678", talk_seconds=None))
        for _ in range(100):
            inbound = list(carrier.inbound.values())
            if inbound and inbound[0].acks is not None and inbound[0].acks.acked:
                break
            await asyncio.sleep(0.01)
        assert 1 == len(lost)
        [answered] = list(carrier.inbound.values())
        assert answered.acks is not None and answered.acks.acked
        assert not answered.ended.is_set()  # no give-up BYE
        result = await asyncio.wait_for(call, 5)
        assert (200, "remote") == (result.status, result.hangup)

"""The callee's BYE at any moment of an outbound call: no worker ever dies on it.

Both races are built deterministically on an in-memory network: the order in
which the BYEs and the talk timer meet is forced, not left to timing.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

from gateway.transport import Address
from simulator.clock import ScaledClock
from simulator.pytest_plugin import DEFAULT_START, SimCard, SimKit, always_answer
from simulator.sipkit import LoopNetwork

CARDS = [SimCard("c1", "+8613800000001", "c1", "pw1")]
CALLEE = "+8613912345678"


def _is_bye(data: bytes) -> bool:
    return data.startswith(b"BYE ")


def _bye_answers(log: list[tuple[bytes, Address, Address]], source: Address) -> list[int]:
    """Status codes ``source`` sent in answer to a BYE."""
    out = []
    for data, src, _dest in log:
        head = data.split(b"\r\n\r\n", 1)[0]
        if src == source and data.startswith(b"SIP/2.0 ") and b" BYE\r\n" in head:
            out.append(int(data.split(b" ", 2)[1]))
    return out


async def test_callee_bye_crossing_the_agents_bye_is_answered_200() -> None:
    """The callee hangs up while the agent's own BYE is on the wire: the call ends cleanly."""
    network = LoopNetwork()
    log: list[tuple[bytes, Address, Address]] = []
    held: list[tuple[bytes, Address, Address]] = []
    addresses: dict[str, Address] = {}

    def wire(data: bytes, source: Address, dest: Address) -> bool:
        log.append((data, source, dest))
        if _is_bye(data) and source == addresses["carrier"]:
            held.append((data, source, dest))  # the callee's BYE waits ...
            return True
        if _is_bye(data) and source == addresses["phone"] and held:
            # ... until the agent hangs up too: both BYEs cross.
            network.queue.extend(held[:1])
            held.clear()
            addresses["carrier"] = ("0.0.0.0", 0)  # its retransmissions pass from now on
        return False

    network.drop = wire
    async with SimKit(network=network) as kit:
        carrier = await kit.carrier(CARDS, answer=always_answer(ring=1.0, talk=5.0))
        phone = await kit.softphone("c1", "pw1", carrier.address)
        addresses.update(carrier=carrier.address, phone=phone.address)
        result = await asyncio.wait_for(phone.call(CALLEE, talk_seconds=30.0), 10)
        assert (200, "local") == (result.status, result.hangup)
        # The callee's BYE reached a dialog we were ending ourselves: 200, not 481.
        assert [200] == _bye_answers(log, phone.address)
        assert result.bye_status is not None
        assert {} == phone._outbound  # the dialog is forgotten
        # The agent can place its next call.
        again = await asyncio.wait_for(phone.call(CALLEE, talk_seconds=None), 10)
        assert (200, "remote") == (again.status, again.hangup)


class _TalkTimerRace:
    """A scaled clock whose talk timer for ``talk`` business seconds expires at once,
    right after a callback that makes the callee hang up: the BYE and the expiry
    land in the same loop turn."""

    def __init__(self, start: datetime, talk: float) -> None:
        self.inner = ScaledClock(start, speed=200.0)
        self.talk = talk
        self.on_talk: list[object] = []

    def now(self) -> float:
        return self.inner.now()

    def now_datetime(self) -> datetime:
        return self.inner.now_datetime()

    def real_delay(self, business_seconds: float) -> float:
        if business_seconds == self.talk and self.on_talk:
            callback = self.on_talk.pop()
            assert callable(callback)
            asyncio.get_running_loop().call_soon(callback)
            return 0.0
        return self.inner.real_delay(business_seconds)


async def test_callee_bye_in_the_same_turn_as_the_talk_timer_wins() -> None:
    """The callee's BYE processed just before the agent's talk timer: no BYE of ours, no crash."""
    network = LoopNetwork()
    log: list[tuple[bytes, Address, Address]] = []

    def wire(data: bytes, source: Address, dest: Address) -> bool:
        log.append((data, source, dest))
        return False

    network.drop = wire
    race = _TalkTimerRace(DEFAULT_START, talk=77.0)
    async with SimKit(network=network) as kit:
        carrier = await kit.carrier(CARDS, answer=always_answer(ring=1.0, talk=600.0))
        phone = await kit.softphone("c1", "pw1", carrier.address, clock=race)

        def callee_hangs_up() -> None:
            [call] = carrier.inbound.values()
            carrier.hang_up(call)
            network.flush()  # delivered now, before the timer's own callback

        race.on_talk.append(callee_hangs_up)
        result = await asyncio.wait_for(phone.call(CALLEE, talk_seconds=77.0), 10)
        assert not race.on_talk  # the race was run
        assert (200, "remote", None) == (result.status, result.hangup, result.bye_status)
        phone_byes = [d for d, src, _ in log if _is_bye(d) and src == phone.address]
        assert [] == phone_byes
        assert [200] == _bye_answers(log, phone.address)

"""The in-process gateway on the simulator's business clock: what it counts is business time.

A rehearsal runs the business clock N times faster than real time; the
gateway's quotas (talk minutes per day, short-call ceiling) must count the
callee's talk in business seconds, as the carrier does, or every call looks N
times shorter than it was.
"""

from __future__ import annotations

import asyncio

from gateway.telemetry.events import CallEvent, CallEventKind
from simulator.agents import Softphone
from simulator.carrier import Carrier
from simulator.runner import InProcessGateway

CALLEE = "+8613912345678"


async def test_gateway_counts_talk_in_business_seconds(
    gateway: InProcessGateway, softphone: Softphone, carrier: Carrier
) -> None:
    """The carrier's callee talks 10 business seconds; the gateway's call end says about 10 too."""
    assert gateway.clock_shared
    ended: list[CallEvent] = []
    gateway.gateway.events.subscribe(
        lambda e: (
            ended.append(e) if isinstance(e, CallEvent) and e.kind is CallEventKind.ENDED else None
        )
    )
    assert 200 == (await asyncio.wait_for(softphone.register(), 15)).status
    result = await asyncio.wait_for(softphone.call(CALLEE, talk_seconds=None), 15)
    assert (200, "remote") == (result.status, result.hangup)
    [entry] = carrier.dialled()
    assert 10.0 == entry.talk_seconds  # the carrier's count (business seconds)
    for _ in range(500):
        if ended:
            break
        await asyncio.sleep(0.01)
    [end] = ended
    assert end.duration is not None
    # Counted in real seconds the call would be 10 / 200 = 0.05 s long. Real-time jitter
    # is multiplied by the speed (25 ms of a busy loop = 5 business seconds), so the upper
    # bound leaves room for a loaded machine; the lower one is what the test is about.
    assert 5.0 < end.duration < 40.0

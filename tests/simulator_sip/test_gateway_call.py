"""End to end through the in-process dialgate: softphone → gateway → simulated carrier.

These exercise the fixtures the way the call-path tests use them. They need
the gateway's B2BUA (``gateway.b2bua``); without it they are skipped.
"""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from simulator.agents import Dialer, Softphone
from simulator.carrier import Carrier
from simulator.runner import InProcessGateway

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gateway.b2bua") is None, reason="the gateway call path is not there"
)

WAIT = 15.0
CALLEE = "+8613912345678"


async def _registered(phone: Softphone) -> None:
    response = await asyncio.wait_for(phone.register(), WAIT)
    assert 200 == response.status, response


async def test_agent_call_reaches_the_carrier_on_its_bound_card(
    gateway: InProcessGateway, softphone: Softphone, carrier: Carrier
) -> None:
    """alice (bound to c1) calls: the carrier sees one authenticated INVITE from c1, answered."""
    await _registered(softphone)
    result = await asyncio.wait_for(softphone.call(CALLEE, talk_seconds=None), WAIT)
    assert (200, True, "remote") == (result.status, result.answered, result.hangup)
    [entry] = carrier.dialled()
    assert ("c1", CALLEE, "answer") == (entry.card, entry.callee, entry.outcome)
    assert entry.from_user == "+8613800000001"  # From = the card's number


async def test_suspended_card_fails_over_without_the_agent_noticing(
    gateway: InProcessGateway, softphone: Softphone, carrier: Carrier
) -> None:
    """c1 is suspended at the carrier: the call is placed on c2 and the callee is dialled once per card."""
    carrier.suspend("c1", "violation", "by test")
    await _registered(softphone)
    result = await asyncio.wait_for(softphone.call(CALLEE, talk_seconds=None), WAIT)
    assert 200 == result.status
    assert ["c1", "c2"] == [e.card for e in carrier.dialled()]
    assert [CALLEE] == carrier.callees_reached()


async def test_dialer_call_carries_through(
    gateway: InProcessGateway, dialer: Dialer, carrier: Carrier
) -> None:
    """A trusted dialer's call (digest when challenged) reaches the carrier and is answered."""
    result = await asyncio.wait_for(dialer.call(CALLEE, talk_seconds=None), WAIT)
    assert 200 == result.status
    assert [CALLEE] == carrier.callees_reached()

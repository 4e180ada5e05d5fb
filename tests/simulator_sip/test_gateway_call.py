"""End to end through the in-process dialgate: softphone → gateway → simulated carrier.

These exercise the fixtures the way the call-path tests use them. They need
the gateway's B2BUA (``gateway.callpath.b2bua``); without it they are skipped.
"""

from __future__ import annotations

import asyncio

from simulator.agents import Dialer, Softphone
from simulator.carrier import Carrier
from simulator.pytest_plugin import SimCard, SimKit, SimUser, always_answer
from simulator.runner import InProcessGateway

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


async def test_seeded_dnc_and_consent_decide_before_the_carrier_sees_anything(
    sim_kit: SimKit, carrier: Carrier, sim_cards: list[SimCard], sim_users: list[SimUser]
) -> None:
    """Numbers seeded into the gateway's store: DNC → 403 dnc, no consent → 403 no-consent."""
    consented, refused, unknown = "+8613911110001", "+8613911110002", "+8613911110003"
    gw = await sim_kit.gateway(
        carrier,
        cards=sim_cards,
        users=sim_users,
        policy={"consent": "require-consent"},
        consent=[consented],
        dnc=[refused],
    )
    user = sim_users[0]
    phone = await sim_kit.softphone(user.name, user.password, gw.address())
    await _registered(phone)
    dnc = await asyncio.wait_for(phone.call(refused), WAIT)
    no_consent = await asyncio.wait_for(phone.call(unknown), WAIT)
    assert (403, "dnc") == (dnc.status, dnc.reason_text)
    assert (403, "no-consent") == (no_consent.status, no_consent.reason_text)
    assert [] == carrier.dialled()
    ok = await asyncio.wait_for(phone.call(consented, talk_seconds=None), WAIT)
    assert 200 == ok.status
    assert [consented] == carrier.callees_reached()


async def test_callback_from_the_carrier_reaches_the_bound_agent(
    gateway: InProcessGateway, softphone: Softphone, carrier: Carrier
) -> None:
    """A callee calls c1's number back: the gateway rings alice (bound to c1), who answers."""
    await _registered(softphone)
    result = await asyncio.wait_for(
        carrier.call(gateway.address(), "+8613800000001", caller=CALLEE, talk_seconds=20.0),
        WAIT,
    )
    assert (200, "local") == (result.status, result.hangup)
    for _ in range(200):
        if softphone.inbound_calls:
            break
        await asyncio.sleep(0.01)
    [inbound] = softphone.inbound_calls
    assert (200, True, "remote") == (inbound.status, inbound.answered, inbound.hangup)


async def test_ring_timeout_cancel_crosses_the_gateway(
    sim_kit: SimKit, sim_cards: list[SimCard], sim_users: list[SimUser]
) -> None:
    """The agent gives up ringing: CANCEL goes through, the caller gets 487, the carrier too."""
    carrier = await sim_kit.carrier(sim_cards, answer=always_answer(ring=600.0))
    gw = await sim_kit.gateway(carrier, cards=sim_cards, users=sim_users)
    user = sim_users[0]
    phone = await sim_kit.softphone(user.name, user.password, gw.address())
    await _registered(phone)
    result = await asyncio.wait_for(phone.call(CALLEE, ring_timeout=20.0), WAIT)
    assert (487, True) == (result.status, result.cancelled)
    for _ in range(200):
        if carrier.invites[-1].final is not None:
            break
        await asyncio.sleep(0.01)
    assert 487 == carrier.invites[-1].final
    assert [CALLEE] == carrier.callees_reached()

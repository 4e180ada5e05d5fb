"""Inbound calls: carrier → the agent bound to the called card, else the fallback user."""

from __future__ import annotations

from simulator.testkit import eventually
from tests.callpath.conftest import SDP_A, SDP_C, Agent, Rig


async def test_inbound_call_reaches_bound_agent(rig: Rig) -> None:
    """A call to c1's number rings alice (bound to c1) at her registered contact; BYE relayed."""
    resp = await rig.carrier.invite(rig.address, "+8613800000001")
    assert 200 == resp.status
    assert SDP_A == resp.body
    [ringing] = [r for r in rig.alice.requests if r.method == "INVITE"]
    assert SDP_C == ringing.body
    assert "alice" == ringing.uri.user
    call_id = next(iter(rig.carrier.dialogs))
    await eventually(lambda: "ACK" in [r.method for r in rig.alice.requests])
    bye = await rig.carrier.send_in_dialog(call_id, "BYE")
    assert 200 == bye.status
    await eventually(lambda: "BYE" in [r.method for r in rig.alice.requests])


async def test_inbound_to_unbound_card_goes_to_fallback(rig: Rig) -> None:
    """c2 has no bound agent: the call goes to [inbound] fallback_user (bob) when registered."""
    resp = await rig.carrier.invite(rig.address, "+8613800000002")
    assert 480 == resp.status  # bob is not registered yet
    bob = Agent("bob", "bobpass", rig.address)
    await bob.start()
    try:
        assert 200 == (await bob.register()).status
        resp = await rig.carrier.invite(rig.address, "+8613800000002")
        assert 200 == resp.status
        assert ["INVITE"] == [r.method for r in bob.requests][:1]
    finally:
        await bob.close()


class NattedAgent(Agent):
    """An agent whose Contact names a private address the gateway cannot reach."""

    @property
    def contact(self) -> str:
        """A Contact behind NAT: 10.255.255.1 is not where its packets come from."""
        return "sip:bob@10.255.255.1:5060"


async def test_inbound_uses_the_registered_flow_behind_nat(rig: Rig) -> None:
    """The binding's flow (source address of the REGISTER) is used, not the Contact host."""
    bob = NattedAgent("bob", "bobpass", rig.address)
    await bob.start()
    try:
        assert 200 == (await bob.register()).status
        resp = await rig.carrier.invite(rig.address, "+8613800000002")  # c2 → fallback bob
        assert 200 == resp.status
        [invite] = [r for r in bob.requests if r.method == "INVITE"]
        assert "10.255.255.1" == invite.uri.host  # Request-URI = the registered contact
    finally:
        await bob.close()

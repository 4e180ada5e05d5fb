"""A finished call is not kept alive by its B-leg INVITE's Timer M (RFC 6026 Accepted).

The B-leg INVITE transaction lives 64*T1 after the 2xx to pass retransmitted 2xx
up; once the call is over, only the ACK for them is needed. Before, the handle's
callback held the whole call (legs, dialogs, messages, policy context) for those
32 s: at 100 CPS that was ~3,200 finished calls in memory (bench/memory_soak.py).
"""

from __future__ import annotations

import gc

from gateway.callpath.calls import Call
from gateway.sip import make_response
from simulator.testkit import eventually
from tests.callpath.conftest import Rig


async def test_ended_call_is_freed_while_the_b_invite_waits_in_accepted(rig: Rig) -> None:
    """After the BYE the Call object is gone, the B-leg INVITE handle is still in Timer M,
    and a retransmitted 2xx from the carrier is ACKed again (no second BYE)."""
    resp, invite = await rig.alice.call("13912345678")
    assert 200 == resp.status
    carrier = rig.carrier
    await eventually(lambda: "ACK" in carrier.methods())
    b2bua = rig.gateway.b2bua
    assert b2bua is not None
    [call] = b2bua.calls.values()
    handle = call.b_client
    assert handle is not None and handle.on_response is not None
    del call
    assert 200 == (await rig.alice.send_in_dialog(invite.call_id, "BYE")).status
    await eventually(lambda: "BYE" in carrier.methods() and not b2bua.calls)
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, Call)], "a finished call is kept"
    assert handle in rig.gateway.endpoint._clients.values()  # Timer M still running
    [b_invite] = carrier.invites()
    [ack] = [r for r in carrier.sim.requests if r.method == "ACK"]
    again = make_response(b_invite, 200, to_tag=ack.to.tag)
    handle.on_response(handle, again)
    await eventually(lambda: 2 == carrier.methods().count("ACK"))
    assert 1 == carrier.methods().count("BYE")

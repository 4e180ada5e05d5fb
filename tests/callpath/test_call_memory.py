"""A finished call is not kept alive by its B-leg INVITE's Timer M (RFC 6026 Accepted).

The B-leg INVITE transaction lives 64*T1 after the 2xx to pass retransmitted 2xx
up; once the call is over, only the ACK for them is needed. Before, the handle's
callback held the whole call (legs, dialogs, messages, policy context) for those
32 s: at 100 CPS that was ~3,200 finished calls in memory (bench/memory_soak.py).
"""

from __future__ import annotations

import gc

from gateway.callpath.b2bua import B2BUA
from gateway.callpath.calls import Call
from gateway.sip import Request, make_response
from simulator.testkit import eventually
from tests.callpath.conftest import Rig


async def answered_call(rig: Rig) -> tuple[Call, Request, B2BUA]:
    """Alice's call, answered and ACKed at the carrier: the call, her INVITE, the B2BUA."""
    resp, invite = await rig.alice.call("13912345678")
    assert 200 == resp.status
    await eventually(lambda: "ACK" in rig.carrier.methods())
    b2bua = rig.gateway.b2bua
    assert b2bua is not None
    [call] = b2bua.calls.values()
    return call, invite, b2bua


async def test_ended_call_is_freed_while_the_b_invite_waits_in_accepted(rig: Rig) -> None:
    """After the BYE the Call object is gone, the B-leg INVITE handle is still in Timer M,
    and a retransmitted 2xx from the carrier is ACKed again (no second BYE)."""
    call, invite, b2bua = await answered_call(rig)
    carrier = rig.carrier
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


def _parsed_views(message: object) -> int:
    """How many parsed views a message holds (Message._cache; 0 once compacted)."""
    return len(getattr(message, "_cache", {}))


async def test_messages_lingering_in_timers_after_a_call_keep_no_parsed_views(rig: Rig) -> None:
    """After the call: the A-leg and B-leg INVITEs (Timers L/M), the B-leg's 200, the
    BYE the agent sent and the 200 answering it (Timer J) and the B-leg's BYE (Timer K)
    keep their lines but not their parsed views (URIs, parameters, the header index):
    hundreds of objects per lingering call less for the collector to walk, and the
    views come back on the next access, equal."""
    call, invite, b2bua = await answered_call(rig)
    carrier = rig.carrier
    a_invite, handle = call.a_req.request, call.b_client
    assert handle is not None
    b_invite, b_ok = handle.request, handle.final.result()
    assert _parsed_views(a_invite) and _parsed_views(b_invite) and _parsed_views(b_ok)
    before = (str(a_invite.via[0]), str(a_invite.to), a_invite.cseq.seq, bytes(a_invite))
    del call
    assert 200 == (await rig.alice.send_in_dialog(invite.call_id, "BYE")).status
    await eventually(lambda: "BYE" in carrier.methods() and not b2bua.calls)
    layer = rig.gateway.endpoint.layer
    machines = [*layer.client.values(), *layer.server.values()]
    lingering = [tx.request for tx in machines if tx.request.method == "BYE"]
    assert 2 == len(lingering), lingering  # the agent's BYE (Timer J), ours (Timer K)
    for message in (a_invite, b_invite, b_ok, *lingering):
        assert 0 == _parsed_views(message), message
    assert before == (str(a_invite.via[0]), str(a_invite.to), a_invite.cseq.seq, bytes(a_invite))

"""Calls through the gateway between an agent UA and a carrier UAS over loopback UDP."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.callpath.element import Gateway
from gateway.cards import CardState
from simulator.testkit import eventually
from tests.callpath.conftest import SDP_A, SDP_C, Agent, Carrier, Rig, gateway_settings


async def test_answered_call_relays_sdp_and_bye_from_agent(rig: Rig) -> None:
    """INVITE → 200 relayed with SDP; ACK and BYE reach the carrier; one answered CDR."""
    resp, invite = await rig.alice.call("13912345678")
    assert 200 == resp.status
    assert SDP_C == resp.body
    carrier = rig.carrier
    [b_invite] = carrier.invites()
    assert SDP_A == b_invite.body
    assert "+8613912345678" == b_invite.uri.user
    assert "+8613800000001" == b_invite.from_.uri.user  # alice's bound card c1
    assert b_invite.call_id != invite.call_id
    assert b_invite.from_.tag != invite.from_.tag
    assert 69 == b_invite.max_forwards
    agent_port = str(rig.alice.endpoint.transports[0].local_address[1])  # type: ignore[union-attr]
    head = bytes(b_invite).split(b"\r\n\r\n")[0].decode()
    assert agent_port not in head
    assert "Authorization" not in head
    assert "alice" not in head
    await eventually(lambda: "ACK" in carrier.methods())
    bye = await rig.alice.send_in_dialog(invite.call_id, "BYE")
    assert 200 == bye.status
    await eventually(lambda: "BYE" in carrier.methods())
    await eventually(lambda: len(rig.gateway.store.cdrs()) == 1)  # type: ignore[union-attr]
    [cdr] = rig.gateway.store.cdrs()  # type: ignore[union-attr]
    assert ("answered", 200, ("c1",), "alice") == (
        str(cdr.outcome),
        cdr.final_code,
        cdr.cards,
        cdr.origin,
    )
    assert "+8613912345678" == cdr.destination


async def test_bye_from_carrier_reaches_agent(rig: Rig) -> None:
    """The callee hangs up: the BYE is relayed to the agent's dialog."""
    resp, invite = await rig.alice.call("13912345678")
    assert 200 == resp.status
    [b_invite] = rig.carrier.invites()
    await eventually(lambda: "ACK" in rig.carrier.methods())
    bye = await rig.carrier.send_in_dialog(b_invite.call_id, "BYE")
    assert 200 == bye.status
    await eventually(lambda: "BYE" in [r.method for r in rig.alice.requests])
    [agent_bye] = [r for r in rig.alice.requests if r.method == "BYE"]
    assert invite.call_id == agent_bye.call_id


async def test_reinvite_relayed_both_ways(rig: Rig) -> None:
    """A re-INVITE from the agent becomes a re-INVITE to the carrier; SDP unchanged both ways."""
    resp, invite = await rig.alice.call("13912345678")
    assert 200 == resp.status
    await eventually(lambda: "ACK" in rig.carrier.methods())
    offer = SDP_A.replace(b"40000", b"40002")
    re = await rig.alice.send_in_dialog(invite.call_id, "INVITE", offer)
    assert 200 == re.status
    assert SDP_C == re.body
    reinvites = [r for r in rig.carrier.requests if r.method == "INVITE" and r.to.tag]
    assert [offer] == [r.body for r in reinvites]
    assert 200 == (await rig.alice.send_in_dialog(invite.call_id, "BYE")).status


async def test_cancel_before_answer(rig: Rig) -> None:
    """CANCEL while ringing → CANCEL to the carrier, 487 to the agent, CDR cancelled."""
    rig.carrier.plan = lambda _req: ("ring",)
    resp, _ = await rig.alice.call("13912345678", cancel_after=0.05)
    assert 487 == resp.status
    await eventually(lambda: "CANCEL" in rig.carrier.methods())
    await eventually(lambda: len(rig.gateway.store.cdrs()) == 1)  # type: ignore[union-attr]
    [cdr] = rig.gateway.store.cdrs()  # type: ignore[union-attr]
    assert "cancelled" == str(cdr.outcome)


async def test_busy_is_relayed_and_never_retried(rig: Rig) -> None:
    """486 from the callee reaches the agent; no second INVITE leaves for that call."""
    rig.carrier.plan = lambda _req: (486, "Busy Here")
    resp, _ = await rig.alice.call("13912345678")
    assert 486 == resp.status
    await asyncio.sleep(0.3)
    assert 1 == len(rig.carrier.invites())
    assert CardState.ACTIVE == rig.gateway.b2bua.services.cards.get("c1").state  # type: ignore[union-attr]


async def test_unparseable_number_gets_484_and_blocked_cdr(rig: Rig) -> None:
    """DESIGN call flow step 2: an unparseable destination → 484; nothing reaches the carrier."""
    resp, _ = await rig.alice.call("12")
    assert 484 == resp.status
    assert 'text="address-incomplete"' in (resp.headers.get("Reason") or "")
    assert [] == rig.carrier.invites()
    [cdr] = rig.gateway.store.cdrs()  # type: ignore[union-attr]
    assert "blocked" == str(cdr.outcome)


async def test_dnc_number_gets_403_with_reason(rig: Rig) -> None:
    """A DNC-listed callee: 403 with Reason text "dnc" (DESIGN policy table)."""
    rig.gateway.store.add_dnc("+8613912345678", 0.0)  # type: ignore[union-attr]
    resp, _ = await rig.alice.call("13912345678")
    assert 403 == resp.status
    assert 'SIP;cause=403;text="dnc"' == resp.headers.get("Reason")
    assert [] == rig.carrier.invites()


async def test_campaign_header_recorded(rig: Rig) -> None:
    """The X-Campaign header of the agent's INVITE lands in the CDR."""
    rig.carrier.plan = lambda _req: (480, "Temporarily Unavailable")
    resp, _ = await rig.alice.call("13912345678", headers=[("X-Campaign", "autumn")])
    assert 480 == resp.status
    await eventually(lambda: len(rig.gateway.store.cdrs()) == 1)  # type: ignore[union-attr]
    [cdr] = rig.gateway.store.cdrs()  # type: ignore[union-attr]
    assert ("autumn", "no-answer") == (cdr.campaign, str(cdr.outcome))


async def test_lead_id_header_recorded(rig: Rig) -> None:
    """A dialer's X-Lead-Id lands in the CDR beside the campaign (issue 18), CSV included."""
    rig.carrier.plan = lambda _req: (486, "Busy Here")
    resp, _ = await rig.alice.call(
        "13912345678", headers=[("X-Campaign", "autumn"), ("X-Lead-Id", "L-4711")]
    )
    assert 486 == resp.status
    await eventually(lambda: len(rig.gateway.store.cdrs()) == 1)  # type: ignore[union-attr]
    [cdr] = rig.gateway.store.cdrs()  # type: ignore[union-attr]
    assert ("autumn", "L-4711") == (cdr.campaign, cdr.lead_id)
    assert "L-4711" == cdr.as_row()["lead_id"]


async def test_unanswered_call_times_out_with_408(rig: Rig) -> None:
    """Timer C: a B-leg ringing past the no-answer timeout is CANCELled; the agent gets 408."""
    rig.gateway.b2bua.no_answer_timeout = 0.3  # type: ignore[union-attr]
    rig.carrier.plan = lambda _req: ("ring",)
    resp, _ = await rig.alice.call("13912345678")
    assert 408 == resp.status
    assert "CANCEL" in rig.carrier.methods()
    await eventually(lambda: len(rig.gateway.store.cdrs()) == 1)  # type: ignore[union-attr]
    assert "no-answer" == str(rig.gateway.store.cdrs()[0].outcome)  # type: ignore[union-attr]


async def test_info_in_dialog_is_relayed(rig: Rig) -> None:
    """INFO from the agent inside the call reaches the carrier as a new transaction; 200 back."""
    resp, invite = await rig.alice.call("13912345678")
    assert 200 == resp.status
    info = await rig.alice.send_in_dialog(invite.call_id, "INFO")
    assert 200 == info.status
    assert "INFO" in rig.carrier.methods()


async def test_clean_shutdown_hangs_up_and_writes_cdrs(rig: Rig) -> None:
    """Closing the gateway with a call up sends BYE both ways and commits the CDR."""
    resp, _ = await rig.alice.call("13912345678")
    assert 200 == resp.status
    await eventually(lambda: "ACK" in rig.carrier.methods())
    await rig.gateway.close()
    await eventually(lambda: "BYE" in rig.carrier.methods())
    await eventually(lambda: "BYE" in [r.method for r in rig.alice.requests])
    from gateway.store import SQLiteStore

    with SQLiteStore(rig.db) as store:
        [cdr] = store.cdrs()
    assert "answered" == str(cdr.outcome)


async def test_max_forwards_zero_gets_483(rig: Rig) -> None:
    """A loop guard: an INVITE with Max-Forwards 0 is answered 483 and never leaves."""
    resp, _ = await rig.alice.call("13912345678", headers=[("Max-Forwards", "0")])
    assert 483 == resp.status
    assert [] == rig.carrier.invites()


async def test_cancel_crossing_200_acks_and_byes_the_carrier(rig: Rig) -> None:
    """The carrier answers 200 while our CANCEL is under way: the B-leg is ACKed and BYEd."""
    carrier = rig.carrier
    # The carrier rings, and its 200 goes out when the CANCEL arrives (the CANCEL gets 200 too).
    carrier.plan = lambda _req: ("answer-on-cancel",)
    resp, _ = await rig.alice.call("13912345678", cancel_after=0.05)
    assert 487 == resp.status
    await eventually(lambda: "BYE" in carrier.methods())
    assert ["INVITE", "CANCEL", "ACK", "BYE"] == [
        m for m in carrier.methods() if m in ("INVITE", "CANCEL", "ACK", "BYE")
    ]
    [entry] = carrier.sim.invites
    assert (200, "remote") == (entry.final, entry.hangup)  # answered, then BYEd by the gateway
    await eventually(lambda: len(rig.gateway.store.cdrs()) == 1)  # type: ignore[union-attr]
    assert "cancelled" == str(rig.gateway.store.cdrs()[0].outcome)  # type: ignore[union-attr]


async def test_missing_ack_retransmits_200_then_hangs_up(carrier: Carrier, tmp_path: Path) -> None:
    """RFC 3261 §13.3.1.4: the 2xx is retransmitted until 64*T1, then both legs get a BYE."""
    settings = gateway_settings(
        carrier.address,
        tmp_path / "gw.db",
        extra={"sip": {"listen": ["udp:127.0.0.1:0"], "t1": 0.02, "t2": 0.08}},
    )
    gw = Gateway(settings)
    await gw.start()
    agent = Agent("alice", "s3cret", gw.address("udp"))
    await agent.start()
    try:
        assert 200 == (await agent.register()).status
        assert agent.endpoint is not None
        original = agent.endpoint.send_stateless
        agent.endpoint.send_stateless = lambda *a, **k: True  # type: ignore[method-assign]
        resp, _ = await agent.call("13912345678")
        assert 200 == resp.status
        await eventually(lambda: "BYE" in carrier.methods(), 5)
        await eventually(lambda: "BYE" in [r.method for r in agent.requests], 5)
        agent.endpoint.send_stateless = original  # type: ignore[method-assign]
        # The 2xx was retransmitted to the agent (its transaction passes them up, RFC 6026).
        assert [r.status for r in agent.responses].count(200) >= 3
    finally:
        await agent.close()
        await gw.close()


async def test_reinvite_from_carrier_reaches_agent(rig: Rig) -> None:
    """A re-INVITE from the carrier side is relayed to the agent and its 200 comes back."""
    resp, invite = await rig.alice.call("13912345678")
    assert 200 == resp.status
    [b_invite] = rig.carrier.invites()
    await eventually(lambda: "ACK" in rig.carrier.methods())
    re = await rig.carrier.send_in_dialog(b_invite.call_id, "INVITE")
    assert 200 == re.status
    [relayed] = [r for r in rig.alice.requests if r.method == "INVITE"]
    assert invite.call_id == relayed.call_id


async def test_agent_over_tcp(carrier: Carrier, tmp_path: Path) -> None:
    """An agent on TCP registers and calls; the carrier's BYE reaches it on its connection."""
    settings = gateway_settings(
        carrier.address,
        tmp_path / "gw.db",
        extra={"sip": {"listen": ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"], "t1": 0.1}},
    )
    gw = Gateway(settings)
    await gw.start()
    agent = Agent("alice", "s3cret", gw.address("tcp"), transport="tcp")
    await agent.start()
    try:
        assert 200 == (await agent.register()).status
        resp, _ = await agent.call("13912345678")
        assert 200 == resp.status
        [b_invite] = carrier.invites()
        await eventually(lambda: "ACK" in carrier.methods())
        assert 200 == (await carrier.send_in_dialog(b_invite.call_id, "BYE")).status
        await eventually(lambda: "BYE" in [r.method for r in agent.requests])
    finally:
        await agent.close()
        await gw.close()


async def test_emergency_number_passes_dnc(rig: Rig) -> None:
    """DESIGN: emergency numbers bypass consent/DNC checks; 110 (CN) reaches the carrier as dialled."""
    rig.gateway.store.add_dnc("+86110", 0.0)  # type: ignore[union-attr]
    resp, _ = await rig.alice.call("110")
    assert 200 == resp.status
    [b_invite] = rig.carrier.invites()
    assert "110" == b_invite.uri.user

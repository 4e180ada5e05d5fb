"""Failover across cards: card-level failures move the call, callee-level ones never do."""

from __future__ import annotations

from pathlib import Path

from gateway.callpath.element import Gateway
from gateway.cards import CardState, SuspendReason
from gateway.sip import Request
from simulator.testkit import eventually
from tests.callpath.conftest import Agent, Carrier, Rig, gateway_settings


def suspend_c1(req: Request) -> tuple[object, ...]:
    """Carrier plan: 403 Card Suspended for c1's number, answer for anyone else."""
    if req.from_.uri.user == "+8613800000001":
        return (403, "Card Suspended")
    return ("answer",)


async def test_suspended_card_fails_over_and_stays_suspended_after_restart(
    rig: Rig, tmp_path: Path
) -> None:
    """403 Card Suspended on c1 → the call completes on c2; c1 suspended with evidence, also after restart."""
    rig.carrier.plan = suspend_c1
    resp, invite = await rig.alice.call("13912345678")
    assert 200 == resp.status
    froms = [r.from_.uri.user for r in rig.carrier.invites()]
    assert ["+8613800000001", "+8613800000002"] == froms
    first, second = rig.carrier.invites()
    assert first.call_id != second.call_id
    cards = rig.gateway.b2bua.services.cards  # type: ignore[union-attr]
    c1 = cards.get("c1")
    assert (CardState.SUSPENDED, SuspendReason.VIOLATION) == (c1.state, c1.reason)
    store = rig.gateway.store
    assert store is not None
    [transition] = [t for t in store.transitions("c1") if t.to_state == "suspended"]
    assert "SIP/2.0 403 Card Suspended" == transition.evidence["response"]
    assert 200 == (await rig.alice.send_in_dialog(invite.call_id, "BYE")).status
    await eventually(lambda: len(store.cdrs()) == 1)
    [cdr] = store.cdrs()
    assert (("c1", "c2"), 1, "answered") == (cdr.cards, cdr.failovers, str(cdr.outcome))

    # Restart on the same database: c1 is still suspended and is skipped.
    await rig.gateway.close()
    gw2 = Gateway(gateway_settings(rig.carrier.address, rig.db))
    await gw2.start()
    agent = Agent("alice", "s3cret", gw2.address("udp"))
    await agent.start()
    try:
        assert 200 == (await agent.register()).status
        before = len(rig.carrier.invites())
        resp2, _ = await agent.call("13912345679")
        assert 200 == resp2.status
        new = rig.carrier.invites()[before:]
        assert ["+8613800000002"] == [r.from_.uri.user for r in new]
        assert CardState.SUSPENDED == gw2.b2bua.services.cards.get("c1").state  # type: ignore[union-attr]
    finally:
        await agent.close()
        await gw2.close()


async def test_all_cards_failing_gives_503_no_card_available(rig: Rig) -> None:
    """Every card suspended by the carrier → 503 + Retry-After + Reason no-card-available."""
    rig.carrier.plan = lambda _req: (403, "Card Suspended")
    resp, _ = await rig.alice.call("13912345678")
    assert 503 == resp.status
    assert 'SIP;cause=503;text="no-card-available"' == resp.headers.get("Reason")
    assert resp.headers.get("Retry-After") is not None
    assert 2 == len(rig.carrier.invites())
    # The next call is refused before anything leaves.
    resp2, _ = await rig.alice.call("13912345679")
    assert 503 == resp2.status
    assert 2 == len(rig.carrier.invites())
    store = rig.gateway.store
    assert store is not None
    assert ["no-card", "no-card"] == [str(c.outcome) for c in store.cdrs()]


async def test_arrears_402_fails_over(rig: Rig) -> None:
    """402 on c1 (default rule: arrears) → c2 answers."""
    rig.carrier.plan = lambda req: (
        (402, "Payment Required") if req.from_.uri.user == "+8613800000001" else ("answer",)
    )
    resp, _ = await rig.alice.call("13912345678")
    assert 200 == resp.status
    c1 = rig.gateway.b2bua.services.cards.get("c1")  # type: ignore[union-attr]
    assert SuspendReason.ARREARS == c1.reason


async def test_carrier_digest_challenge_is_answered_with_card_credentials(
    tmp_path: Path,
) -> None:
    """A carrier that challenges the B-leg gets the card's credentials (not the agent's)."""
    carrier = Carrier(auth=407, realm="carrier")
    await carrier.start()
    gw = Gateway(gateway_settings(carrier.address, tmp_path / "gw.db"))
    await gw.start()
    alice = Agent("alice", "s3cret", gw.address("udp"))
    await alice.start()
    try:
        assert 200 == (await alice.register()).status
        resp, _ = await alice.call("13912345678")
        assert 200 == resp.status
        # The carrier's digest check: the first INVITE failed (challenged), the second passed as c1.
        entries = carrier.sim.invites
        assert ["challenged", "scripted"] == [e.outcome for e in entries]
        assert (407, "c1", "c1") == (entries[0].decided, entries[1].username, entries[1].card)
        assert 'username="c1"' in (carrier.invites()[1].headers.get("Proxy-Authorization") or "")
    finally:
        await alice.close()
        await gw.close()
        await carrier.close()


async def test_call_and_card_events_are_published(rig: Rig) -> None:
    """The event bus sees attempt → failover → ringing → answered → ended and the suspension alert."""
    from gateway.telemetry.events import Alert, CallEvent

    seen: list[object] = []
    rig.gateway.events.subscribe(seen.append)
    rig.carrier.plan = suspend_c1
    resp, invite = await rig.alice.call("13912345678")
    assert 200 == resp.status
    assert 200 == (await rig.alice.send_in_dialog(invite.call_id, "BYE")).status
    await eventually(lambda: any(getattr(e, "kind", None) == "ended" for e in seen))
    kinds = [str(e.kind) for e in seen if isinstance(e, CallEvent)]
    assert ["attempt", "failover", "ringing", "answered", "ended"] == kinds
    alerts = [str(e.kind) for e in seen if isinstance(e, Alert)]
    assert "card-suspended" in alerts

"""Carrier answers judged right, in process: the callee's outcome wins unless the card is proven dead.

The simulator's scripted carrier answers the ambiguous ways real carriers and
GSM gateways do (a bare 403, ringing then 408/503, a 503 with an originating
Q.850 cause, silence); each test checks what the agent hears, how many INVITEs
the carrier saw for the callee, and what happened to the card.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from gateway.callpath.element import Gateway
from gateway.cards import CardState
from gateway.sip import Request
from gateway.sip.message import parse as parse_message
from gateway.telemetry.events import Alert, AlertKind
from simulator.testkit import eventually
from tests.callpath.conftest import Agent, Carrier, Rig, gateway_settings


def callees(carrier: Carrier) -> list[str]:
    """The callee of every distinct initial INVITE the carrier received."""
    return [r.to.uri.user or "" for r in carrier.invites()]


async def bob(rig: Rig) -> Agent:
    """Bob: an agent bound to no card."""
    agent = Agent("bob", "bobpass", rig.address)
    await agent.start()
    assert 200 == (await agent.register()).status
    return agent


async def test_plain_403_is_relayed_once_and_only_counts_a_suspicion(rig: Rig) -> None:
    """A 403 no rule explains: the agent gets it, one INVITE, the card stays active."""
    rig.carrier.plan = lambda _req: (403, "Forbidden")
    resp, _ = await rig.alice.call("13912345678")
    assert 403 == resp.status
    assert ["+8613912345678"] == callees(rig.carrier)
    cards = rig.gateway.b2bua.services.cards  # type: ignore[union-attr]
    assert (CardState.ACTIVE, 1) == (cards.get("c1").state, cards.suspicion("c1"))


async def test_carrier_503_reaches_the_agent_as_500_and_is_not_retried(rig: Rig) -> None:
    """RFC 3261 §16.7: a 503 is not forwarded; no second card is tried."""
    rig.carrier.plan = lambda _req: (503, "Service Unavailable")
    resp, _ = await rig.alice.call("13912345678")
    assert 500 == resp.status
    assert 1 == len(rig.carrier.invites())
    assert CardState.ACTIVE == rig.gateway.b2bua.services.cards.get("c1").state  # type: ignore[union-attr]


async def test_ringing_then_408_or_503_is_the_callees_outcome(rig: Rig) -> None:
    """180 then 408 / 503: relayed (503 as 500), never retried, never counted against the card."""
    rig.carrier.plan = lambda _req: ("ring",)
    cards = rig.gateway.b2bua.services.cards  # type: ignore[union-attr]
    for number, (status, expected) in zip(
        ("13912345670", "13912345671", "13912345672", "13912345673"),
        ((408, 408), (503, 500), (408, 408), (480, 480)),
        strict=True,
    ):
        before = len(rig.carrier.invites())
        task = asyncio.create_task(rig.alice.call(number))
        await eventually(lambda b=before: len(rig.carrier.invites()) > b)
        invite = rig.carrier.invites()[-1]
        await eventually(lambda i=invite, s=status: rig.carrier.sim.reject_call(i.call_id, s))
        resp, _ = await task
        assert expected == resp.status
        assert before + 1 == len(rig.carrier.invites())
    assert (CardState.ACTIVE, 0) == (cards.get("c1").state, cards.suspicion("c1"))


def originating_503(_req: Request) -> tuple[Any, ...]:
    """A GSM port with no channel: 503 with Q.850 cause 34 (the originating side)."""
    return (503, "Service Unavailable", [("Reason", 'Q.850;cause=34;text="No circuit"')])


async def test_bound_agent_waits_for_its_resting_card_with_the_cause(rig: Rig) -> None:
    """Cause 34 on alice's c1: no retry on c2 (same trunk); c1 rests; alice's next call
    gets 503 naming c1's rest and never leaves on c2."""
    rig.carrier.plan = originating_503
    resp, _ = await rig.alice.call("13912345678")
    assert 500 == resp.status
    cards = rig.gateway.b2bua.services.cards  # type: ignore[union-attr]
    assert CardState.ACTIVE == cards.get("c1").state
    rig.carrier.plan = lambda _req: ("answer",)
    resp2, _ = await rig.alice.call("13912345679")
    assert 503 == resp2.status
    assert 'SIP;cause=503;text="no-card-available"' == resp2.headers.get("Reason")
    warning = resp2.headers.get("Warning") or ""
    assert warning.startswith('399 dialgate "bound card c1 unavailable resting after trunk')
    assert 0 < int(resp2.headers.get("Retry-After") or "0") <= 30
    assert ["+8613800000001"] == [r.from_.uri.user for r in rig.carrier.invites()]


async def test_bound_agent_over_its_quota_gets_503_and_no_other_card(tmp_path: Path) -> None:
    """alice bound to c1 (1 call a minute): the second call is refused with c1's cause
    and Retry-After; the carrier never sees c2's number for alice."""
    carrier = Carrier()
    await carrier.start()
    settings = gateway_settings(
        carrier.address,
        tmp_path / "gw.db",
        extra={"quota_profiles": {"open": {"calls_per_minute": 1}}},
    )
    gw = Gateway(settings)
    await gw.start()
    alice = Agent("alice", "s3cret", gw.address("udp"))
    await alice.start()
    try:
        assert 200 == (await alice.register()).status
        first, invite = await alice.call("13912345678")
        assert 200 == first.status
        assert 200 == (await alice.send_in_dialog(invite.call_id, "BYE")).status
        second, _ = await alice.call("13912345679")
        assert 503 == second.status
        assert "c1 calls_per_minute 1/1 in 60s" in (second.headers.get("Warning") or "")
        assert 0 < int(second.headers.get("Retry-After") or "0") <= 60
        assert {"+8613800000001"} == {r.from_.uri.user for r in carrier.invites()}
    finally:
        await alice.close()
        await gw.close()
        await carrier.close()


async def test_pool_with_spill_lets_a_bound_agent_use_another_card(tmp_path: Path) -> None:
    """[pools.main] spill = true: the second call within the minute leaves on c2."""
    carrier = Carrier()
    await carrier.start()
    settings = gateway_settings(
        carrier.address,
        tmp_path / "gw.db",
        extra={
            "quota_profiles": {"open": {"calls_per_minute": 1}},
            "pools": {"main": {"spill": True}},
        },
    )
    gw = Gateway(settings)
    await gw.start()
    alice = Agent("alice", "s3cret", gw.address("udp"))
    await alice.start()
    try:
        assert 200 == (await alice.register()).status
        assert 200 == (await alice.call("13912345678"))[0].status
        assert 200 == (await alice.call("13912345679"))[0].status
        assert ["+8613800000001", "+8613800000002"] == [r.from_.uri.user for r in carrier.invites()]
    finally:
        await alice.close()
        await gw.close()
        await carrier.close()


async def test_dead_bound_card_rebinds_the_agent_once_and_for_good(rig: Rig) -> None:
    """c1 proven dead: alice moves to c2 (stored, published) and stays there until c1
    is back in service."""
    seen: list[object] = []
    rig.gateway.events.subscribe(seen.append)
    rig.carrier.plan = lambda req: (
        (403, "Card Suspended") if req.from_.uri.user == "+8613800000001" else ("answer",)
    )
    assert 200 == (await rig.alice.call("13912345678"))[0].status
    store = rig.gateway.store
    assert store is not None
    assert {"alice": ("c2", "c1")} == store.agent_bindings()
    assert any(isinstance(e, Alert) and e.kind is AlertKind.AGENT_REBOUND for e in seen)
    rig.carrier.plan = lambda _req: ("answer",)
    assert 200 == (await rig.alice.call("13912345679"))[0].status
    froms = [r.from_.uri.user for r in rig.carrier.invites()]
    assert ["+8613800000001", "+8613800000002", "+8613800000002"] == froms
    # Its own card restored: alice is back on c1's number, the re-binding is gone.
    cards = rig.gateway.b2bua.services.cards  # type: ignore[union-attr]
    cards.restore("c1", now=rig.gateway.b2bua.clock())  # type: ignore[union-attr]
    assert 200 == (await rig.alice.call("13912345670"))[0].status
    assert "+8613800000001" == rig.carrier.invites()[-1].from_.uri.user
    assert {} == store.agent_bindings()


async def test_ambiguous_refusals_to_distinct_callees_make_the_card_suspect(rig: Rig) -> None:
    """Five plain 403s to five callees on c1 (bob, unbound): c1 suspect, no callee dialled
    twice, a card-suspect alert; the next call leaves on c2."""
    agent = await bob(rig)
    seen: list[object] = []
    rig.gateway.events.subscribe(seen.append)
    try:
        rig.carrier.plan = lambda req: (
            (403, "Forbidden") if req.from_.uri.user == "+8613800000001" else ("answer",)
        )
        for i in range(5):
            assert 403 == (await agent.call(f"1391234560{i}"))[0].status
        cards = rig.gateway.b2bua.services.cards  # type: ignore[union-attr]
        assert CardState.SUSPECT == cards.get("c1").state
        assert any(isinstance(e, Alert) and e.kind is AlertKind.CARD_SUSPECT for e in seen)
        assert 200 == (await agent.call("13912345699"))[0].status
        dialled = callees(rig.carrier)
        assert len(dialled) == len(set(dialled)) == 6
        assert "+8613800000002" == rig.carrier.invites()[-1].from_.uri.user
    finally:
        await agent.close()


class BlackHole(asyncio.DatagramProtocol):
    """A trunk that receives and never answers, not even 100 Trying (a dead GSM port)."""

    def __init__(self) -> None:
        self.messages: list[Request] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.address: tuple[str, int] = ("127.0.0.1", 0)

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0)
        )
        self.transport = transport
        self.address = transport.get_extra_info("sockname")[:2]
        return self.address

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        message = parse_message(data)
        if isinstance(message, Request):
            self.messages.append(message)

    def invites(self) -> list[Request]:
        """Initial INVITEs, one per Call-ID (retransmissions share it)."""
        seen: dict[str, Request] = {}
        for m in self.messages:
            if m.method == "INVITE" and m.to.tag is None:
                seen.setdefault(m.call_id, m)
        return list(seen.values())

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def two_trunks(silent: Any, answering: Carrier, db: Path) -> Gateway:
    """c1 on a silent trunk, c2 on another trunk that answers; t1 = 0.1 (Timer B 6.4 s)."""
    settings = gateway_settings(silent.address, db)
    data = settings.model_dump(by_alias=True, mode="json")
    data["carriers"].append(
        {
            "name": "carrier-b",
            "address": f"udp:{answering.address[0]}:{answering.address[1]}",
            "timezone": "Asia/Shanghai",
            "options_interval": None,
        }
    )
    data["cards"][1]["carrier"] = "carrier-b"
    for user in data["users"]:
        user.pop("card", None)
    return Gateway(type(settings)(**_secrets(data, settings)))


def _secrets(data: dict[str, Any], settings: Any) -> dict[str, Any]:
    """model_dump hides SecretStr values: put the real ones back."""
    for i, user in enumerate(settings.users):
        data["users"][i]["password"] = user.password.get_secret_value()
    for i, peer in enumerate(settings.peers):
        data["peers"][i]["password"] = peer.password.get_secret_value()
    for i, card in enumerate(settings.cards):
        data["cards"][i]["password"] = card.password.get_secret_value()
    data.pop("admin", None)
    return data


async def test_no_response_fails_over_once_to_another_trunk(tmp_path: Path) -> None:
    """Timer B on c1's silent trunk (nothing came back): one more attempt, on c2's trunk."""
    silent, answering = BlackHole(), Carrier()
    await silent.start()
    await answering.start()
    gw = two_trunks(silent, answering, tmp_path / "gw.db")
    await gw.start()
    alice = Agent("alice", "s3cret", gw.address("udp"))
    await alice.start()
    try:
        assert 200 == (await alice.register()).status
        resp, _ = await alice.call("13912345678")
        assert 200 == resp.status
        assert ["+8613912345678"] == callees(silent) == callees(answering)
        cards = gw.b2bua.services.cards  # type: ignore[union-attr]
        assert CardState.ACTIVE == cards.get("c1").state
        assert cards.resting_until("c1", gw.b2bua.clock()) is not None  # type: ignore[union-attr]
    finally:
        await alice.close()
        await gw.close()
        await silent.close()
        await answering.close()


async def test_no_response_on_a_shared_trunk_is_408_and_no_second_invite(
    tmp_path: Path,
) -> None:
    """Both cards behind one silent trunk: 408 trunk-unreachable, one INVITE, cards active."""
    silent = BlackHole()
    await silent.start()
    gw = Gateway(gateway_settings(silent.address, tmp_path / "gw.db"))
    await gw.start()
    agent = Agent("bob", "bobpass", gw.address("udp"))
    await agent.start()
    try:
        assert 200 == (await agent.register()).status
        resp, _ = await agent.call("13912345678")
        assert 408 == resp.status
        assert 'SIP;cause=408;text="trunk-unreachable"' == resp.headers.get("Reason")
        assert ["+8613912345678"] == callees(silent)
        cards = gw.b2bua.services.cards  # type: ignore[union-attr]
        assert {CardState.ACTIVE} == {cards.get("c1").state, cards.get("c2").state}
    finally:
        await agent.close()
        await gw.close()
        await silent.close()

"""Two real ``Gateway`` instances sharing one redis-server: quotas, card states, outages.

Each gateway has its own SQLite file, UDP listener and registered agent; the
carrier is one UAS both send to (``tests.callpath.conftest``). Everything runs
on real sockets on 127.0.0.1 and the gateways' own (wall) clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.callpath.element import Gateway
from gateway.cards import SuspendReason
from gateway.sip import Request, Response
from gateway.store.redis import MirroredLedger, SharedCardRepository
from policies.quotas import CardState
from simulator.testkit import eventually
from tests.callpath.conftest import Agent, Carrier, gateway_settings

from .conftest import RedisServer

N = 3  # calls per minute allowed on the card
CARD = {
    "id": "c1",
    "carrier": "carrier-a",
    "number": "+8613800000001",
    "username": "c1",
    "password": "card1-secret",
    "quota": "open",
    "priority": 1,
}


class Node:
    """One gateway instance with alice registered on it."""

    def __init__(self, gateway: Gateway, alice: Agent) -> None:
        self.gateway = gateway
        self.alice = alice

    @property
    def ledger(self) -> MirroredLedger:
        """The call path's usage ledger (Redis mirrored to this instance's SQLite)."""
        assert self.gateway.b2bua is not None
        ledger = self.gateway.b2bua.services.ledger
        assert isinstance(ledger, MirroredLedger)
        return ledger

    def card_state(self, card: str) -> CardState:
        """This instance's in-memory state of ``card``."""
        assert self.gateway.b2bua is not None
        return self.gateway.b2bua.services.cards.get(card).state


async def start_node(
    name: str, carrier: Carrier, redis_url: str, tmp_path: Path, profile: dict[str, Any]
) -> Node:
    """A gateway named ``name`` ([mqtt] node) on ``redis_url`` with the one card c1."""
    db = tmp_path / f"{name}.db"
    settings = gateway_settings(
        carrier.address,
        db,
        extra={
            "store": {"path": str(db), "redis": redis_url},
            "mqtt": {"node": name},
            "quota_profiles": {"open": profile},
            "cards": [CARD],
        },
    )
    gateway = Gateway(settings)
    await gateway.start()
    assert gateway.health is not None and gateway.health.shared is not None
    gateway.health.sync_interval = 0.1
    alice = Agent("alice", "s3cret", gateway.address("udp"))
    await alice.start()
    assert 200 == (await alice.register()).status
    return Node(gateway, alice)


@pytest.fixture
async def carrier() -> AsyncIterator[Carrier]:
    """A carrier UAS answering every call."""
    c = Carrier()
    await c.start()
    try:
        yield c
    finally:
        await c.close()


async def stop(*nodes: Node) -> None:
    """Close agents, then gateways (which also closes their Redis clients)."""
    for node in nodes:
        await node.alice.close()
        await node.gateway.close()


def reason(resp: Response) -> str:
    """The Reason header's text ("" when absent)."""
    return resp.headers.get("Reason") or ""


async def call_and_hang_up(agent: Agent, number: str) -> Response:
    """Place a call; if answered, hang up at once (BYE). Returns the final response."""
    resp, req = await agent.call(number)
    if 200 <= resp.status < 300:
        bye = await agent.send_in_dialog(req.call_id, "BYE")
        assert 200 == bye.status
    return resp


async def test_two_gateways_place_at_most_n_calls_per_minute_on_one_card(
    carrier: Carrier, private_redis: RedisServer, tmp_path: Path
) -> None:
    """c1 allows N calls a minute: 2N+2 simultaneous attempts on two gateways place exactly N.

    The others are refused 503 ``no-card-available`` with a Retry-After; the
    carrier sees N INVITEs. Each gateway's SQLite file holds its own starts,
    Redis the card's N.
    """
    profile = {"calls_per_minute": N}
    gw_a = await start_node("gwA", carrier, private_redis.url, tmp_path, profile)
    gw_b = await start_node("gwB", carrier, private_redis.url, tmp_path, profile)
    try:
        attempts = [
            call_and_hang_up((gw_a if i % 2 else gw_b).alice, f"+86139123{i:05d}")
            for i in range(2 * N + 2)
        ]
        finals = await asyncio.gather(*attempts)
        answered = [r for r in finals if r.status == 200]
        refused = [r for r in finals if r.status != 200]
        assert N == len(answered), [r.status for r in finals]
        assert all(r.status == 503 for r in refused)
        assert all('text="no-card-available"' in reason(r) for r in refused)
        assert all(r.headers.get("Retry-After") for r in refused)
        assert N == len(carrier.invites())
        now = gw_a.gateway.clock()
        assert N == len(gw_a.ledger.card_usage("c1", now).call_starts)
        assert N == len(gw_b.ledger.card_usage("c1", now).call_starts)
        per_file = [len(n.ledger.store.card_usage("c1", now).call_starts) for n in (gw_a, gw_b)]
        assert N == sum(per_file)
        await eventually(lambda: gw_a.ledger.card_usage("c1", gw_a.gateway.clock()).in_use == 0)
    finally:
        await stop(gw_a, gw_b)


async def test_a_suspension_on_one_gateway_reaches_the_other(
    carrier: Carrier, private_redis: RedisServer, tmp_path: Path
) -> None:
    """gwA's carrier suspends c1 (403): gwB adopts it on its sync timer and places nothing."""

    def suspend(_req: Request) -> tuple[Any, ...]:
        return (403, "Card Suspended")

    carrier.plan = suspend
    gw_a = await start_node("gwA", carrier, private_redis.url, tmp_path, {})
    gw_b = await start_node("gwB", carrier, private_redis.url, tmp_path, {})
    try:
        resp, _req = await gw_a.alice.call("+8613912340001")
        assert resp.status in (403, 503)
        assert CardState.SUSPENDED == gw_a.card_state("c1")
        await eventually(lambda: gw_b.card_state("c1") is CardState.SUSPENDED)
        assert gw_b.gateway.b2bua is not None
        card = gw_b.gateway.b2bua.services.cards.get("c1")
        assert SuspendReason.VIOLATION == card.reason
        invites = len(carrier.invites())
        resp, _req = await gw_b.alice.call("+8613912340002")
        assert 503 == resp.status and 'text="no-card-available"' in reason(resp)
        assert invites == len(carrier.invites()), "gwB sent nothing on the suspended card"
        repo = gw_b.gateway.b2bua.services.cards.repo
        assert isinstance(repo, SharedCardRepository)
        assert [] == gw_b.ledger.store.transitions("c1"), "adopted, not re-recorded by gwB"
    finally:
        await stop(gw_a, gw_b)


async def test_redis_killed_mid_call_fails_closed_and_loses_no_counter(
    carrier: Carrier, tmp_path: Path
) -> None:
    """Redis (AOF) dies during a call: the hang-up works, new calls get 503, nothing is lost.

    The BYE is answered and the CDR written; the next INVITE is refused 503
    ``store-unavailable`` with Retry-After (fail closed); the finish kept
    during the outage reaches Redis through the sync timer once it is back
    (no call left in use, the start still counted), and calls flow again.
    """
    server = RedisServer(tmp_path / "aof", aof=True)
    server.start()
    node = await start_node("gwA", carrier, server.url, tmp_path, {"calls_per_minute": 5})
    try:
        resp, req = await node.alice.call("+8613912340001")
        assert 200 == resp.status
        ledger = node.ledger
        assert 1 == ledger.card_usage("c1", node.gateway.clock()).in_use
        server.kill()
        bye = await node.alice.send_in_dialog(req.call_id, "BYE")
        assert 200 == bye.status
        assert [] == ledger.store.open_reservations(), "SQLite closed the call at once"
        assert 1 == len(ledger.store.cdrs(call_id=req.call_id))
        assert 1 == ledger.shared.unclosed
        refused, _ = await node.alice.call("+8613912340002")
        assert 503 == refused.status
        assert 'text="store-unavailable"' in reason(refused)
        assert refused.headers.get("Retry-After")
        assert 1 == len(carrier.invites())
        server.start()
        await eventually(lambda: ledger.shared.pending == 0)  # the timer replayed it
        usage = ledger.card_usage("c1", node.gateway.clock())
        assert (0, 1) == (usage.in_use, len(usage.call_starts))
        again = await call_and_hang_up(node.alice, "+8613912340003")
        assert 200 == again.status
    finally:
        await stop(node)
        server.stop()

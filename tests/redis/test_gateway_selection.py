"""RedisStore as the usage ledger of CardSelection over StoreCardSource on two gateway instances."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.cards import CardDef, CardManager, StoreCardSource
from gateway.store import StoreUnavailable
from gateway.store.redis import RedisStore
from policies.context import CallContext
from policies.decision import Decision, RejectReason
from policies.quotas import QuotaProfile
from policies.selection import CardSelection

from .conftest import CARRIERS, T0, RedisServer, make_store

PROFILES = {"default": QuotaProfile(name="default", concurrent=1, calls_per_minute=5)}
TIMEZONES = dict(CARRIERS)
DEFS = [
    CardDef("c1", "carrier-a", "+8613800000001", priority=1),
    CardDef("c2", "carrier-a", "+8613800000002", priority=2),
]


def manager() -> CardManager:
    """A gateway instance's card manager (cards in memory; usage in Redis)."""
    m = CardManager()
    m.load(DEFS, T0)
    return m


def pick(
    gw: CardManager,
    ledger: RedisStore,
    call: str,
    callee: str,
    now: float,
    *,
    exclude: frozenset[str] = frozenset(),
) -> Decision:
    """The gateway's one card picker: choose the call's card and reserve it in Redis."""
    source = StoreCardSource(gw, ledger, profiles=PROFILES, timezones=TIMEZONES)
    moment = datetime.fromtimestamp(now, UTC)
    ctx = CallContext(
        dialled=callee,
        agent="alice",
        campaign=None,
        default_region="CN",
        now=moment,
        destination=callee,
        call_id=call,
        exclude=exclude,
    )
    return CardSelection(source)(ctx, moment)


def test_two_instances_share_the_pool_through_redis(redis_server: RedisServer, prefix: str) -> None:
    """gw1 takes c1, gw2 then gets c2 (c1 is in use elsewhere), a third call finds no card."""
    gw1, gw2 = manager(), manager()
    led1 = make_store(redis_server.url, prefix, node="gw1")
    led2 = make_store(redis_server.url, prefix, node="gw2")
    first = pick(gw1, led1, "call-1", "+8613811110001", T0)
    second = pick(gw2, led2, "call-2", "+8613811110002", T0 + 1)
    third = pick(gw1, led1, "call-3", "+8613811110003", T0 + 2)
    assert ("c1", "c2", None) == (first.card_id, second.card_id, third.card_id)
    assert (False, RejectReason.NO_CARD_AVAILABLE, 503) == (
        third.allowed,
        third.reason,
        third.sip_code,
    )
    assert "c1 concurrent 1/1 in use; c2 concurrent 1/1 in use" == third.detail
    led1.finish("call-1", T0 + 30, answered=True, talk_seconds=25)
    assert 0 == led1.pending  # the finish's answer read: Redis ran it and announced it
    again = pick(gw2, led2, "call-4", "+8613811110004", T0 + 31)
    assert "c1" == again.card_id
    led1.close()
    led2.close()


def test_failover_reserves_the_next_card_in_redis(redis_server: RedisServer, prefix: str) -> None:
    """After its card failed, the call's reservation is released and the next card reserved."""
    gw = manager()
    ledger = make_store(redis_server.url, prefix)
    assert "c1" == pick(gw, ledger, "call-1", "+8613811110001", T0).card_id
    gw.on_response("c1", 402, "Payment Required", now=T0 + 1)
    ledger.release("call-1", T0 + 1)
    nxt = pick(gw, ledger, "call-1", "+8613811110001", T0 + 1, exclude=frozenset({"c1"}))
    assert "c2" == nxt.card_id
    assert [("call-1", "c2")] == ledger.open_reservations()
    ledger.close()


def test_selection_fails_closed_when_redis_is_gone(private_redis: RedisServer, prefix: str) -> None:
    """Redis killed: CardSelection raises StoreUnavailable (503), never picks a card."""
    gw = manager()
    ledger = make_store(private_redis.url, prefix, timeout=0.25)
    private_redis.kill()
    with pytest.raises(StoreUnavailable):
        pick(gw, ledger, "call-1", "+8613811110001", T0)

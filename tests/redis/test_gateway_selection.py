"""RedisStore as the ledger of gateway.cards.select_and_reserve on two gateway instances."""

from __future__ import annotations

import pytest

from gateway.cards import CardDef, CardManager, Selection, select_and_reserve
from gateway.redis_store import RedisStore
from gateway.store import StoreUnavailable
from policies.quotas import QuotaProfile

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


def pick(gw: CardManager, ledger: RedisStore, call: str, callee: str, now: float) -> Selection:
    """The gateway's entry point: choose the call's first card and reserve it."""
    return select_and_reserve(
        gw, gw.begin(call, "main"), ledger, callee=callee, now=now,
        profiles=PROFILES, timezones=TIMEZONES,
    )  # fmt: skip


def test_two_instances_share_the_pool_through_redis(redis_server: RedisServer, prefix: str) -> None:
    """gw1 takes c1, gw2 then gets c2 (c1 is in use elsewhere), a third call finds no card."""
    gw1, gw2 = manager(), manager()
    led1 = make_store(redis_server.url, prefix, node="gw1")
    led2 = make_store(redis_server.url, prefix, node="gw2")
    first = pick(gw1, led1, "call-1", "+8613811110001", T0)
    second = pick(gw2, led2, "call-2", "+8613811110002", T0 + 1)
    third = pick(gw1, led1, "call-3", "+8613811110003", T0 + 2)
    assert ("c1", "c2", None) == (
        first.card and first.card.id,
        second.card and second.card.id,
        third.card,
    )
    assert {"c1": "quota:concurrent", "c2": "quota:concurrent"} == dict(third.skipped)
    led1.finish("call-1", T0 + 30, answered=True, talk_seconds=25)
    again = pick(gw2, led2, "call-4", "+8613811110004", T0 + 31)
    assert again.card is not None and "c1" == again.card.id


def test_selection_fails_closed_when_redis_is_gone(private_redis: RedisServer, prefix: str) -> None:
    """Redis killed: select_and_reserve raises StoreUnavailable (503), never picks a card."""
    gw = manager()
    ledger = make_store(private_redis.url, prefix, timeout=0.25)
    private_redis.kill()
    with pytest.raises(StoreUnavailable):
        pick(gw, ledger, "call-1", "+8613811110001", T0)

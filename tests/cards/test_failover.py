"""Selection and failover through the one card picker: CardSelection over StoreCardSource.

Failover is the same picker with ``CallContext.exclude`` naming the cards tried
(and, after ``trunk-unreachable``, the cards sharing the failed device or trunk).
"""

from __future__ import annotations

import re

import pytest

from gateway.cards import (
    BLegClass,
    CardDef,
    CardManager,
    CarrierRule,
    StoreCardSource,
    SuspendReason,
)
from gateway.store.memory import MemoryStore
from policies.decision import Decision, RejectReason
from policies.quotas import QuotaProfile
from policies.selection import CardSelection

from .conftest import CALLEE, PROFILES, T0, TZ, at, ctx


@pytest.fixture
def store() -> MemoryStore:
    """The in-memory backend: these tests are about the cards' logic, not SQLite's."""
    return MemoryStore()


HOURLY = {"hourly": QuotaProfile(name="hourly", concurrent=1, calls_per_hour=10)}
TIGHT = {"tight": QuotaProfile(name="tight", concurrent=1, calls_per_minute=1)}


def _pick(source: StoreCardSource, call_id: str, now: float, **kw: object) -> Decision:
    return CardSelection(source)(ctx(call_id, now=now, **kw), at(now))  # type: ignore[arg-type]


def _used(store: MemoryStore, card: str, calls: int, start: float) -> None:
    """``calls`` finished calls on ``card`` from ``start`` on, one every 10 s."""
    for n in range(calls):
        call = f"{card}-past-{n}"
        store.reserve(card, call, f"+86138111{n:05d}", start + 10 * n)
        store.finish(call, start + 10 * n + 5, answered=True, talk_seconds=5)


def test_failover_sequence_c1_c2_exhausted(
    manager: CardManager, store: MemoryStore, source: StoreCardSource
) -> None:
    """c1 answers 403 suspend → c2 answers 402 → no card left: 503 no-card-available."""
    first = _pick(source, "call-1", T0)
    assert "c1" == first.card_id

    verdict = manager.on_response("c1", 403, "Card suspended", now=T0 + 1)
    assert (BLegClass.CARD_DEAD, True) == (verdict.kind, verdict.failover)
    store.release("call-1", T0 + 1)
    second = _pick(source, "call-1", T0 + 1, exclude={"c1"})
    assert "c2" == second.card_id

    verdict = manager.on_response("c2", 402, "Payment Required", now=T0 + 2)
    assert (BLegClass.CARD_DEAD, True, SuspendReason.ARREARS) == (
        verdict.kind,
        verdict.failover,
        verdict.marked,
    )
    store.release("call-1", T0 + 2)
    third = _pick(source, "call-1", T0 + 2, exclude={"c1", "c2"})
    assert (False, RejectReason.NO_CARD_AVAILABLE, "no cards in pool") == (
        third.allowed,
        third.reason,
        third.detail,
    )
    # Without the exclusions the suspended cards themselves say why.
    fresh = _pick(source, "call-2", T0 + 3)
    assert (False, "c1 suspended; c2 suspended") == (fresh.allowed, fresh.detail)
    assert [] == store.open_reservations()


def test_trunk_failover_skips_cards_sharing_the_device(store: MemoryStore) -> None:
    """After trunk-unreachable on k0, k1 (same GSM gateway) is skipped though it ranks first."""
    m = CardManager(store)
    m.load(
        [
            CardDef("k0", "carrier-a", "+8613800000010", "big", 0, device="goip-1"),
            CardDef("k1", "carrier-a", "+8613800000011", "big", 1, device="goip-1"),
            CardDef("k2", "carrier-a", "+8613800000012", "big", 2, device="goip-2"),
        ],
        T0,
    )
    src = StoreCardSource(m, store, profiles=PROFILES, timezones=TZ, default_pool="big")
    assert "k0" == _pick(src, "call-9", T0).card_id
    verdict = m.on_fault("k0", "timer-b", now=T0 + 32, callee=CALLEE)
    assert (BLegClass.TRUNK_UNREACHABLE, True) == (verdict.kind, verdict.failover)
    store.release("call-9", T0 + 32)
    assert {"k0", "k1"} == m.sharing("k0")
    nxt = _pick(src, "call-9", T0 + 32, exclude=m.sharing("k0"))
    assert "k2" == nxt.card_id
    # A card-dead failover excludes only the tried card: k1 would have been next.
    assert "k1" == _pick(src, "call-10", T0 + 33, exclude={"k0", "k2"}).card_id


def test_agent_bound_card_comes_first(source: StoreCardSource) -> None:
    """An agent bound to c2 gets c2 even though c1 has the higher priority."""
    decision = _pick(source, "k1", T0, bound="c2")
    assert ("c2", "bound card, headroom 1.00") == (decision.card_id, decision.detail)
    assert "c3" == _pick(source, "k2", T0, bound="c3").card_id


def test_suspended_bound_card_is_rebound_within_its_pool(
    manager: CardManager, source: StoreCardSource
) -> None:
    """A bound card out of service is skipped; another card of its pool is chosen."""
    manager.suspend("c2", now=T0)
    decision = _pick(source, "k1", T0 + 1, bound="c2")
    assert ("c1", "re-bound 1.00") == (decision.card_id, decision.detail)


def test_bound_card_over_a_limit_waits_unless_the_pool_spills(
    store: MemoryStore, source: StoreCardSource
) -> None:
    """A bound card that is busy: 503 with its cause; with spill the pool stands in."""
    store.reserve("c1", "elsewhere", "+8613811119999", T0)
    waits = _pick(source, "k1", T0 + 1, bound="c1")
    assert (False, RejectReason.NO_CARD_AVAILABLE, 60) == (
        waits.allowed,
        waits.reason,
        waits.retry_after,
    )
    assert "bound card c1 concurrent 1/1 in use" == waits.detail
    assert [("elsewhere", "c1")] == store.open_reservations()
    spilled = _pick(source, "k1", T0 + 1, bound="c1", spill=True)
    assert (True, "c2") == (spilled.allowed, spilled.card_id)


def test_bound_card_over_a_rate_limit_says_when_it_frees(store: MemoryStore) -> None:
    """The bound agent's 503 carries the card's own Retry-After, not another card's."""
    m = CardManager(store)
    m.load(
        [
            CardDef("a", "x", "+8613800000011", "p", 1, "tight"),
            CardDef("b", "x", "+8613800000012", "p", 2, "tight"),
        ],
        T0,
    )
    src = StoreCardSource(m, store, profiles=TIGHT, timezones={"x": "UTC"}, default_pool="p")
    _used(store, "a", 1, T0)
    waits = _pick(src, "k1", T0 + 20, bound="a")
    assert (False, 40) == (waits.allowed, waits.retry_after)
    assert waits.detail.startswith("bound card a calls_per_minute")


def test_most_headroom_wins_over_priority(store: MemoryStore) -> None:
    """Without a bound or last card the card with the most headroom wins, whatever its priority."""
    m = CardManager(store)
    m.load(
        [
            CardDef("a", "x", "+8613800000011", "p", 1, "hourly"),
            CardDef("b", "x", "+8613800000012", "p", 1, "hourly"),
            CardDef("z", "x", "+8613800000013", "p", 0, "hourly"),
        ],
        T0,
    )
    src = StoreCardSource(m, store, profiles=HOURLY, timezones={"x": "UTC"}, default_pool="p")
    _used(store, "a", 5, T0)
    _used(store, "b", 1, T0)
    _used(store, "z", 9, T0)
    now = T0 + 100
    decision = _pick(src, "k1", now)
    assert ("b", "headroom 0.90") == (decision.card_id, decision.detail)
    store.release("k1", now)
    m.suspend("b", now=now)
    second = _pick(src, "k2", now)
    assert ("a", "headroom 0.50") == (second.card_id, second.detail)


def test_equal_headroom_goes_to_the_better_priority_then_the_smaller_id(
    store: MemoryStore,
) -> None:
    """Equal headroom: the lower priority number wins; equal priority: the smaller id."""
    m = CardManager(store)
    m.load(
        [
            CardDef("a", "x", "+8613800000011", "p", 5, "hourly"),
            CardDef("b", "x", "+8613800000012", "p", 2, "hourly"),
            CardDef("c", "x", "+8613800000013", "p", 2, "hourly"),
        ],
        T0,
    )
    src = StoreCardSource(m, store, profiles=HOURLY, timezones={"x": "UTC"}, default_pool="p")
    assert "b" == _pick(src, "k1", T0).card_id
    assert "c" == _pick(src, "k2", T0).card_id  # b is busy now
    assert "a" == _pick(src, "k3", T0).card_id


def test_prefers_staying_on_the_last_used_card(store: MemoryStore) -> None:
    """The card used last keeps the calls while it has the headroom asked for."""
    m = CardManager(store)
    m.load(
        [
            CardDef("a", "x", "+8613800000011", "p", 1, "hourly"),
            CardDef("b", "x", "+8613800000012", "p", 1, "hourly"),
        ],
        T0,
    )
    src = StoreCardSource(m, store, profiles=HOURLY, timezones={"x": "UTC"}, default_pool="p")
    _used(store, "b", 7, T0)  # b: 0.3 headroom, a: 1.0
    now = T0 + 100
    stays = CardSelection(src, sticky_min_headroom=0.25)(ctx("k1", last="b", now=now), at(now))
    assert ("b", "headroom 0.30") == (stays.card_id, stays.detail)
    assert "b" == m.last_used("p")
    store.release("k1", now)
    moves = CardSelection(src, sticky_min_headroom=0.5)(ctx("k2", last="b", now=now), at(now))
    assert ("a", "headroom 1.00") == (moves.card_id, moves.detail)
    assert "a" == m.last_used("p")


def test_quota_exhausted_cards_are_skipped_with_retry_after(store: MemoryStore) -> None:
    """Cards over quota are skipped; Retry-After is when the first of them frees."""
    m = CardManager(store)
    m.load(
        [
            CardDef("a", "x", "+8613800000011", "p", 1, "tight"),
            CardDef("b", "x", "+8613800000012", "p", 2, "tight"),
        ],
        T0,
    )
    src = StoreCardSource(m, store, profiles=TIGHT, timezones={"x": "UTC"}, default_pool="p")
    _used(store, "a", 1, T0)
    _used(store, "b", 1, T0 + 20)
    refused = _pick(src, "k1", T0 + 30)
    assert (False, RejectReason.NO_CARD_AVAILABLE, 30) == (
        refused.allowed,
        refused.reason,
        refused.retry_after,
    )
    causes = refused.detail.split("; ")
    assert ["a calls_per_minute", "b calls_per_minute"] == [c[:18] for c in causes]
    assert causes[0].endswith("until 22:14") and causes[1].endswith("until 22:14")
    assert "a" == _pick(src, "k1", T0 + 60).card_id


MAINTENANCE = CarrierRule(503, SuspendReason.MAINTENANCE, re.compile("(?i)maintenance"))


def test_retry_after_counts_maintenance_end(store: MemoryStore) -> None:
    """With every card in maintenance, Retry-After is when the first maintenance ends."""
    m = CardManager(store, rules={"carrier-a": [MAINTENANCE]})
    m.load(
        [
            CardDef("c1", "carrier-a", "+8613800000001", "main", 1),
            CardDef("c2", "carrier-a", "+8613800000002", "main", 2),
        ],
        T0,
    )
    src = StoreCardSource(m, store, profiles=PROFILES, timezones=TZ)
    m.on_response("c1", 503, "Maintenance", retry_after=300, now=T0)
    m.on_response("c2", 503, "Maintenance", retry_after=120, now=T0)
    refused = _pick(src, "k1", T0 + 20)
    assert (False, 100) == (refused.allowed, refused.retry_after)


def test_only_operator_help_means_the_default_retry_after(
    manager: CardManager, source: StoreCardSource
) -> None:
    """Suspended for violation with no known end: the default wait, the card named."""
    manager.suspend("c3", now=T0, reason=SuspendReason.VIOLATION)
    refused = _pick(source, "k1", T0, bound="c3")
    assert (False, 60, "c3 suspended") == (refused.allowed, refused.retry_after, refused.detail)
    custom = CardSelection(source, default_retry_after=300)(ctx("k2", bound="c3"), at(T0))
    assert 300 == custom.retry_after


def test_cards_of_a_down_carrier_are_skipped(store: MemoryStore) -> None:
    """A carrier reported down takes its cards out of selection without marking them."""
    down = {"carrier-a"}
    m = CardManager(store, carrier_available=lambda carrier: carrier not in down)
    m.load(
        [
            CardDef("a", "carrier-a", "+8613800000011", "p", 1),
            CardDef("b", "carrier-b", "+8613800000012", "p", 2),
        ],
        T0,
    )
    src = StoreCardSource(m, store, profiles=PROFILES, timezones=TZ, default_pool="p")
    assert "b" == _pick(src, "k1", T0).card_id
    store.release("k1", T0)
    down.clear()
    assert "a" == _pick(src, "k2", T0).card_id
    assert "active" == m.get("a").state
    assert [] == m.drain_events()


def test_pools_are_ordered_groups(manager: CardManager) -> None:
    """pools() groups cards by pool in priority order."""
    pools = manager.pools()
    assert {"main": ["c1", "c2"], "backup": ["c3"]} == {
        name: [c.id for c in cards] for name, cards in pools.items()
    }

"""Selection and failover: select / next / mark with no network."""

from __future__ import annotations

from gateway.cards import Card, CardDef, CardManager, PoolExhausted
from gateway.store import SQLiteStore
from policies.quotas import Exhausted, Headroom, QuotaLimit

from .conftest import T0


def _id(card: Card | None) -> str | None:
    return None if card is None else card.id


def test_failover_sequence_c1_c2_exhausted(manager: CardManager, store: SQLiteStore) -> None:
    """c1 answers 403 suspend → c2 answers 402 → no card left: pool exhausted."""
    call = manager.begin("call-1", "main")
    first = manager.next(call, now=T0)
    assert "c1" == _id(first.card)
    store.reserve("c1", "call-1", "+8613811110001", T0)

    verdict = manager.on_response("c1", 403, "Card suspended", now=T0 + 1)
    assert verdict.failover
    store.release("call-1", T0 + 1)
    second = manager.next(call, now=T0 + 1)
    assert "c2" == _id(second.card)
    store.reserve("c2", "call-1", "+8613811110001", T0 + 1)

    verdict = manager.on_response("c2", 402, "Payment Required", now=T0 + 2)
    assert verdict.failover
    store.release("call-1", T0 + 2)
    third = manager.next(call, now=T0 + 2)
    assert None is third.card
    assert not third.attempts_exhausted
    assert {"c1": "excluded", "c2": "excluded"} == dict(third.skipped)
    assert ["c1", "c2"] == call.tried
    events = manager.drain_events()
    assert isinstance(events[-1], PoolExhausted)
    assert ("main", "call-1") == (events[-1].pool, events[-1].call_id)
    assert [] == store.open_reservations()


def test_failover_attempts_are_bounded(store: SQLiteStore) -> None:
    """With more cards than allowed attempts, next() stops at max_attempts."""
    m = CardManager(store, max_attempts=2)
    m.load([CardDef(f"k{i}", "carrier-a", f"+861380000001{i}", "big", i) for i in range(5)], T0)
    call = m.begin("call-9", "big")
    picked = []
    for n in range(3):
        sel = m.next(call, now=T0 + n)
        picked.append(_id(sel.card))
        if sel.card is not None:
            m.on_fault(sel.card.id, "timer-b", now=T0 + n)
    assert ["k0", "k1", None] == picked
    assert m.next(call, now=T0 + 5).attempts_exhausted


def test_agent_bound_card_comes_first(manager: CardManager) -> None:
    """An agent bound to c2 gets c2 even though c1 has the higher priority."""
    assert "c2" == _id(manager.select("main", agent_card="c2", now=T0).card)
    assert "c3" == _id(manager.select("main", agent_card="c3", now=T0).card)


def test_suspended_bound_card_falls_back_to_pool(manager: CardManager) -> None:
    """A suspended bound card is skipped; the pool stands in."""
    manager.suspend("c2", now=T0)
    selection = manager.select("main", agent_card="c2", now=T0 + 1)
    assert "c1" == _id(selection.card)
    assert "state:suspended" == selection.skipped["c2"]


def test_priority_then_headroom(store: SQLiteStore) -> None:
    """Within the same priority, the card with the most quota headroom wins."""
    m = CardManager(store)
    m.load(
        [
            CardDef("a", "x", "+8613800000011", "p", 1),
            CardDef("b", "x", "+8613800000012", "p", 1),
            CardDef("z", "x", "+8613800000013", "p", 0),
        ],
        T0,
    )
    scores = {"a": 0.2, "b": 0.9, "z": 0.1}

    def headroom(card: Card, now: float) -> Headroom | Exhausted:
        return Headroom(scores[card.id])

    assert "z" == _id(m.select("p", now=T0, headroom=headroom).card)
    m.suspend("z", now=T0)
    assert "b" == _id(m.select("p", now=T0, headroom=headroom).card)


def test_prefers_staying_on_the_last_used_card(store: SQLiteStore) -> None:
    """Once a card was picked, the pool sticks to it while it has headroom."""
    m = CardManager(store)
    m.load(
        [CardDef("a", "x", "+8613800000011", "p", 1), CardDef("b", "x", "+8613800000012", "p", 1)],
        T0,
    )
    scores = {"a": 0.5, "b": 0.9}

    def headroom(card: Card, now: float) -> Headroom | Exhausted:
        return Headroom(scores[card.id])

    first = m.next(m.begin("k1", "p"), now=T0, headroom=headroom)
    assert "b" == _id(first.card)
    scores["b"] = 0.3  # b used some quota; a now has more headroom
    second = m.next(m.begin("k2", "p"), now=T0 + 1, headroom=headroom)
    assert "b" == _id(second.card)


def test_quota_exhausted_cards_are_skipped_with_retry_after(manager: CardManager) -> None:
    """Cards over quota are skipped; retry_after is when the first of them frees."""

    def headroom(card: Card, now: float) -> Headroom | Exhausted:
        frees = {"c1": now + 40, "c2": now + 15}[card.id]
        return Exhausted(QuotaLimit.CALLS_PER_MINUTE, frees)

    selection = manager.select("main", now=T0, headroom=headroom)
    assert None is selection.card
    assert 15.0 == selection.retry_after
    assert "quota:calls_per_minute" == selection.skipped["c1"]


def test_retry_after_counts_maintenance_end(manager: CardManager) -> None:
    """With every card in maintenance, retry_after is when the first maintenance ends."""
    manager.on_response("c1", 503, "Maintenance", retry_after=300, now=T0)
    manager.on_response("c2", 503, "Maintenance", retry_after=120, now=T0)
    selection = manager.select("main", now=T0 + 20)
    assert (None, 100.0) == (selection.card, selection.retry_after)


def test_only_operator_help_means_no_retry_after(manager: CardManager) -> None:
    """Suspended for violation with no known end: retry_after is None."""
    manager.suspend("c3", now=T0)
    selection = manager.select("backup", now=T0)
    assert (None, None) == (selection.card, selection.retry_after)


def test_cards_of_a_down_carrier_are_skipped(store: SQLiteStore) -> None:
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
    selection = m.select("p", now=T0)
    assert "b" == _id(selection.card)
    assert "carrier-down" == selection.skipped["a"]
    down.clear()
    assert "a" == _id(m.select("p", now=T0).card)
    assert "active" == m.get("a").state


def test_pools_are_ordered_groups(manager: CardManager) -> None:
    """pools() groups cards by pool in priority order."""
    pools = manager.pools()
    assert {"main": ["c1", "c2"], "backup": ["c3"]} == {
        name: [c.id for c in cards] for name, cards in pools.items()
    }

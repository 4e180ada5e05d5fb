"""StoreCardSource under the policy pipeline's CardSelection, first card and failover."""

from __future__ import annotations

import pytest

from gateway.cards import (
    TIMER_SWEEP,
    BLegClass,
    CardDef,
    CardManager,
    CardState,
    StoreCardSource,
    SuspendReason,
)
from gateway.store.memory import MemoryStore
from policies.decision import RejectReason
from policies.quotas import QuotaLimit, evaluate_card
from policies.selection import CardSelection, CardSource

from .conftest import DEFS, PROFILES, T0, TZ, at, ctx


@pytest.fixture
def store() -> MemoryStore:
    """The in-memory backend: these tests are about the cards' logic, not SQLite's."""
    return MemoryStore()


def test_is_a_policies_card_source(source: StoreCardSource) -> None:
    """The adapter satisfies the policies' CardSource protocol."""
    assert isinstance(source, CardSource)


def test_pipeline_reserves_then_failover_excludes_the_dead_card(
    manager: CardManager, store: MemoryStore, source: StoreCardSource
) -> None:
    """The pipeline reserves c1; after a rule-matched 403 the same picker moves the call to c2."""
    decision = CardSelection(source)(ctx("k1"), at(T0))
    assert (True, "c1") == (decision.allowed, decision.card_id)
    assert [("k1", "c1")] == store.open_reservations()

    verdict = manager.on_response("c1", 403, "Suspended", now=T0 + 1)
    assert (BLegClass.CARD_DEAD, True, SuspendReason.VIOLATION) == (
        verdict.kind,
        verdict.failover,
        verdict.marked,
    )
    store.release("k1", T0 + 1)
    nxt = CardSelection(source)(ctx("k1", exclude={"c1"}, now=T0 + 1), at(T0 + 1))
    assert (True, "c2") == (nxt.allowed, nxt.card_id)
    assert [("k1", "c2")] == store.open_reservations()


def test_pool_of_the_bound_card_is_used(source: StoreCardSource) -> None:
    """An agent bound to a backup card draws from the backup pool."""
    decision = CardSelection(source)(ctx("k1", bound="c3"), at(T0))
    assert "c3" == decision.card_id
    assert ["c3"] == source.candidate_ids(ctx("k2", bound="c3"), T0)
    assert ["c1", "c2"] == source.candidate_ids(ctx("k3"), T0)


def test_bound_card_of_another_pool_comes_first(source: StoreCardSource) -> None:
    """A bound card outside the pool the call draws from leads the candidates."""
    other = StoreCardSource(
        source.manager, source.ledger, profiles=PROFILES, timezones=TZ, pool_for=lambda c: "main"
    )
    assert ["c3", "c1", "c2"] == other.candidate_ids(ctx("k1", bound="c3"), T0)


def test_no_card_gives_503_with_retry_after(
    manager: CardManager, store: MemoryStore, source: StoreCardSource
) -> None:
    """Both main cards busy: 503 no-card-available naming each card's limit."""
    assert CardSelection(source)(ctx("k1"), at(T0)).allowed
    assert CardSelection(source)(ctx("k2"), at(T0)).allowed
    third = CardSelection(source)(ctx("k3"), at(T0))
    assert (False, RejectReason.NO_CARD_AVAILABLE, 503, 60) == (
        third.allowed,
        third.reason,
        third.sip_code,
        third.retry_after,
    )
    assert "c1 concurrent 1/1 in use; c2 concurrent 1/1 in use" == third.detail


def test_unusable_cards_are_never_reserved(
    manager: CardManager, store: MemoryStore, source: StoreCardSource
) -> None:
    """reserve() refuses a suspended or suspect card, even for an emergency call."""
    manager.suspend("c1", now=T0)
    assert not source.reserve("c1", ctx("k1"), T0, emergency=True)
    manager.mark("c3", CardState.SUSPECT, now=T0, cause="test")
    assert not source.reserve("c3", ctx("k2", bound="c3"), T0, emergency=False)
    assert [] == store.open_reservations()


def test_down_carrier_cards_are_candidates_marked_unavailable(store: MemoryStore) -> None:
    """A carrier reported down: its cards stay candidates, snapshotted as unavailable."""
    down = {"carrier-a"}
    m = CardManager(store, carrier_available=lambda carrier: carrier not in down)
    m.load(DEFS, T0)
    src = StoreCardSource(m, store, profiles=PROFILES, timezones=TZ)
    assert ["c1", "c2"] == src.candidate_ids(ctx("k1"), T0)
    snap = {s.card_id: s for s in src.snapshots(["c1", "c3"], T0)}
    assert ("carrier down", None) == (snap["c1"].unavailable, snap["c1"].unavailable_until)
    assert None is snap["c3"].unavailable
    result = evaluate_card(snap["c1"], T0, "+8613811110001")
    assert QuotaLimit.UNAVAILABLE == getattr(result, "limit", None)

    refused = CardSelection(src)(ctx("k1"), at(T0))
    assert (False, "c1 unavailable carrier down; c2 unavailable carrier down") == (
        refused.allowed,
        refused.detail,
    )
    assert "c3" == CardSelection(src)(ctx("k2", bound="c3"), at(T0)).card_id
    assert "active" == m.get("c1").state  # down is not a card state
    down.clear()
    assert "c1" == CardSelection(src)(ctx("k3"), at(T0)).card_id


def test_emergency_reservation_skips_quota(store: MemoryStore, source: StoreCardSource) -> None:
    """Emergency calls reserve without a profile check even on a busy card."""
    assert source.reserve("c1", ctx("k1"), T0, emergency=False)
    assert not source.reserve("c1", ctx("k2"), T0, emergency=False)
    assert source.reserve("c1", ctx("k3", emergency=True), T0, emergency=True)
    assert 2 == store.card_usage("c1", T0).in_use


def test_emergency_call_takes_a_free_usable_card(
    manager: CardManager, store: MemoryStore, source: StoreCardSource
) -> None:
    """An emergency call skips quotas and prefers a card with a free line."""
    assert source.reserve("c1", ctx("k1"), T0, emergency=False)
    decision = CardSelection(source)(ctx("k2", emergency=True), at(T0))
    assert (True, "c2") == (decision.allowed, decision.card_id)
    assert source.reserve("c2", ctx("k3"), T0, emergency=True)
    busy = CardSelection(source)(ctx("k4", emergency=True), at(T0))
    assert (True, "c1") == (busy.allowed, busy.card_id)


@pytest.mark.parametrize("trouble", ["carrier-down", "resting"])
def test_emergency_call_avoids_a_card_that_cannot_reach_its_trunk(
    store: MemoryStore, trouble: str
) -> None:
    """A down carrier or a resting trunk cannot carry an emergency call: a working card does."""
    m = CardManager(store, carrier_available=lambda c: trouble != "carrier-down" or c != "a")
    m.load(
        [
            CardDef("e1", "a", "+8613800000021", "em", 1),
            CardDef("e2", "b", "+8613800000022", "em", 2),
        ],
        T0,
    )
    if trouble == "resting":
        m.on_fault("e1", "timer-b", now=T0 - 1, callee="+8613811110009")
    src = StoreCardSource(m, store, profiles=PROFILES, timezones=TZ, default_pool="em")
    decision = CardSelection(src)(ctx("k1", emergency=True), at(T0))
    assert (True, "e2") == (decision.allowed, decision.card_id)


def test_maintenance_over_is_recovered_by_the_next_selection(
    manager: CardManager, source: StoreCardSource
) -> None:
    """A card back from maintenance is recovered by card selection's sweep of the timers,
    which runs at most every TIMER_SWEEP seconds of the clock, never skips a later call."""

    def maintenance(now: float, until: float) -> None:
        manager.mark(
            "c1",
            CardState.SUSPENDED,
            now=now,
            reason=SuspendReason.MAINTENANCE,
            cause="test",
            resume_at=until,
        )

    source.candidate_ids(ctx("k0"), T0)  # a sweep at T0
    maintenance(T0, until=T0 + 0.1)
    assert "c2" == CardSelection(source)(ctx("k1", now=T0 + 0.1), at(T0 + 0.1)).card_id
    assert "suspended" == manager.get("c1").state  # within the sweep interval of T0
    later = T0 + TIMER_SWEEP
    assert "c1" == CardSelection(source)(ctx("k2", now=later), at(later)).card_id
    assert "active" == manager.get("c1").state
    # A clock that goes back (another caller's time) sweeps again.
    maintenance(later, until=T0 + 0.05)
    source.candidate_ids(ctx("k3"), T0 + 0.05)
    assert "active" == manager.get("c1").state

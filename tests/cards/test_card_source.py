"""StoreCardSource under the policy pipeline's CardSelection, then failover in the B2BUA."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.cards import CardManager, StoreCardSource, select_and_reserve
from gateway.store import SQLiteStore
from policies.context import CallContext
from policies.decision import RejectReason
from policies.quotas import QuotaProfile
from policies.selection import CardSelection, CardSource

from .conftest import DEFS, T0

PROFILES = {"default": QuotaProfile(name="default", concurrent=1, calls_per_minute=10)}
TZ = {"carrier-a": "UTC", "carrier-b": "UTC"}
CALLEE = "+8613811110001"


def _ctx(call_id: str, *, bound: str | None = None, emergency: bool = False) -> CallContext:
    return CallContext(
        dialled=CALLEE,
        agent="alice",
        campaign="spring",
        default_region="CN",
        now=datetime.fromtimestamp(T0, UTC),
        destination=CALLEE,
        bound_card=bound,
        call_id=call_id,
        emergency=emergency,
    )


@pytest.fixture
def source(manager: CardManager, store: SQLiteStore) -> StoreCardSource:
    """A card source over the fixture manager and store."""
    return StoreCardSource(manager, store, profiles=PROFILES, timezones=TZ)


def _at(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def test_is_a_policies_card_source(source: StoreCardSource) -> None:
    """The adapter satisfies the policies' CardSource protocol."""
    assert isinstance(source, CardSource)


def test_pipeline_reserves_then_b2bua_fails_over(
    manager: CardManager, store: SQLiteStore, source: StoreCardSource
) -> None:
    """Pipeline picks and reserves c1; after a 403 the B2BUA moves the call to c2."""
    decision = CardSelection(source)(_ctx("k1"), _at(T0))
    assert (True, "c1") == (decision.allowed, decision.card_id)
    assert [("k1", "c1")] == store.open_reservations()

    verdict = manager.on_response("c1", 403, "Suspended", now=T0 + 1)
    assert verdict.failover
    store.release("k1", T0 + 1)
    call = manager.begin("k1", "main", tried=[decision.card_id or ""])
    nxt = select_and_reserve(
        manager, call, store, callee=CALLEE, now=T0 + 1, profiles=PROFILES, timezones=TZ
    )
    assert nxt.card is not None and "c2" == nxt.card.id
    assert [("k1", "c2")] == store.open_reservations()


def test_pool_of_the_bound_card_is_used(source: StoreCardSource) -> None:
    """An agent bound to a backup card draws from the backup pool."""
    decision = CardSelection(source)(_ctx("k1", bound="c3"), _at(T0))
    assert "c3" == decision.card_id
    assert ["c3"] == source.candidate_ids(_ctx("k2", bound="c3"), T0)


def test_no_card_gives_503_with_retry_after(
    manager: CardManager, store: SQLiteStore, source: StoreCardSource
) -> None:
    """Both main cards busy: 503 no-card-available; suspended cards are never reserved."""
    assert CardSelection(source)(_ctx("k1"), _at(T0)).allowed
    assert CardSelection(source)(_ctx("k2"), _at(T0)).allowed
    third = CardSelection(source)(_ctx("k3"), _at(T0))
    assert (False, RejectReason.NO_CARD_AVAILABLE, 503) == (
        third.allowed,
        third.reason,
        third.sip_code,
    )
    manager.suspend("c1", now=T0)
    assert not source.reserve("c1", _ctx("k4"), T0, emergency=True)


def test_down_carrier_cards_are_not_candidates(store: SQLiteStore) -> None:
    """Cards of a carrier reported down are left out of the candidates."""
    m = CardManager(store, carrier_available=lambda carrier: carrier != "carrier-a")
    m.load(DEFS, T0)
    src = StoreCardSource(m, store, profiles=PROFILES, timezones=TZ)
    assert [] == src.candidate_ids(_ctx("k1"), T0)
    assert ["c3"] == src.candidate_ids(_ctx("k1", bound="c3"), T0)


def test_emergency_reservation_skips_quota(store: SQLiteStore, source: StoreCardSource) -> None:
    """Emergency calls reserve without a profile check even on a busy card."""
    assert source.reserve("c1", _ctx("k1"), T0, emergency=False)
    assert not source.reserve("c1", _ctx("k2"), T0, emergency=False)
    assert source.reserve("c1", _ctx("k3", emergency=True), T0, emergency=True)
    assert 2 == store.card_usage("c1", T0).in_use

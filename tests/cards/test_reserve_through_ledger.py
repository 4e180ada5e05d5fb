"""CardSelection + StoreCardSource: the card choice and its write-ahead reservation in the ledger."""

from __future__ import annotations

import pytest

from gateway.cards import CardManager, StoreCardSource, effective_profile
from gateway.store.memory import MemoryStore
from policies.quotas import CardUsage
from policies.selection import CardSelection

from .conftest import PROFILES, T0, TZ, at, ctx


@pytest.fixture
def store() -> MemoryStore:
    """The in-memory backend: these tests are about the cards' logic, not SQLite's."""
    return MemoryStore()


def _place(
    manager: CardManager, ledger: object, call_id: str, now: float, *, last: str | None = None
) -> str | None:
    source = StoreCardSource(manager, ledger, profiles=PROFILES, timezones=TZ)  # type: ignore[arg-type]
    decision = CardSelection(source)(ctx(call_id, now=now, last=last), at(now))
    return decision.card_id if decision.allowed else None


def test_concurrent_calls_spread_over_the_pool(manager: CardManager, store: MemoryStore) -> None:
    """One call per SIM: the second call takes c2, the third finds no card."""
    assert "c1" == _place(manager, store, "k1", T0)
    assert "c2" == _place(manager, store, "k2", T0 + 1)
    assert None is _place(manager, store, "k3", T0 + 2)
    assert [("k1", "c1"), ("k2", "c2")] == store.open_reservations()
    store.finish("k1", T0 + 30, answered=True, talk_seconds=25)
    assert "c1" == _place(manager, store, "k4", T0 + 31)


class StaleLedger:
    """The real store, but usage reads miss another process's reservation."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def card_usage(self, card_id: str, now: float) -> CardUsage:
        """Pretend nothing is in use (a stale read)."""
        return CardUsage()

    def reserve(self, *args: object, **kwargs: object) -> None:
        """The atomic reserve of the real store."""
        self.store.reserve(*args, **kwargs)  # type: ignore[arg-type]


def test_lost_race_moves_on_to_the_next_card(manager: CardManager, store: MemoryStore) -> None:
    """A reservation refused inside the atomic write moves on to c2."""
    store.reserve("c1", "other-process", "+8613811119999", T0)
    assert "c2" == _place(manager, StaleLedger(store), "k1", T0 + 1)
    assert [("other-process", "c1"), ("k1", "c2")] == store.open_reservations()


def test_every_race_lost_asks_for_a_quick_retry(manager: CardManager, store: MemoryStore) -> None:
    """Both cards taken between read and write: 503 with Retry-After 1, nothing written."""
    store.reserve("c1", "other-1", "+8613811119998", T0)
    store.reserve("c2", "other-2", "+8613811119999", T0)
    source = StoreCardSource(manager, StaleLedger(store), profiles=PROFILES, timezones=TZ)  # type: ignore[arg-type]
    decision = CardSelection(source)(ctx("k1", now=T0 + 1), at(T0 + 1))
    assert (False, 1, "cards taken by concurrent calls") == (
        decision.allowed,
        decision.retry_after,
        decision.detail,
    )
    assert [("other-1", "c1"), ("other-2", "c2")] == store.open_reservations()


def test_probation_profile_is_enforced(manager: CardManager, store: MemoryStore) -> None:
    """A card on probation with a reduced profile (1 call/min) is held to it."""
    manager.probation("c1", now=T0, until=T0 + 86400, profile="careful")
    assert PROFILES["careful"] == effective_profile(manager.get("c1"), PROFILES)
    assert PROFILES["default"] == effective_profile(manager.get("c2"), PROFILES)
    assert "c1" == _place(manager, store, "k1", T0 + 1)
    store.finish("k1", T0 + 20, answered=True, talk_seconds=15)
    # Under "default" (10/min) the call would stay on c1, the card used last;
    # "careful" allows 1/min.
    assert "c2" == _place(manager, store, "k2", T0 + 21, last="c1")
    store.finish("k2", T0 + 40, answered=True, talk_seconds=15)
    manager.restore("c1", now=T0 + 41)
    assert "c1" == _place(manager, store, "k3", T0 + 42, last="c1")


def test_probation_without_override_uses_the_profile_probation(manager: CardManager) -> None:
    """Probation with no explicit profile uses the base profile's configured probation one."""
    manager.probation("c2", now=T0, until=T0 + 86400)
    card = manager.get("c2")
    assert PROFILES["careful"] == effective_profile(card, PROFILES, {"default": "careful"})
    assert PROFILES["default"] == effective_profile(card, PROFILES)


def test_reservation_is_in_the_ledger_and_makes_the_card_sticky(
    manager: CardManager, store: MemoryStore
) -> None:
    """A successful reservation is in the ledger and makes the card the pool's last used."""
    assert None is manager.last_used("main")
    assert "c1" == _place(manager, store, "k1", T0)
    assert "c1" == manager.last_used("main")
    assert 1 == store.card_usage("c1", T0).in_use

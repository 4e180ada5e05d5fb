"""select_and_reserve: card choice plus the write-ahead reservation, as the B2BUA uses it."""

from __future__ import annotations

from gateway.cards import (
    CardManager,
    effective_profile,
    select_and_reserve,
)
from gateway.store import SQLiteStore
from policies.quotas import CardUsage, QuotaProfile

from .conftest import T0

PROFILES = {
    "default": QuotaProfile(name="default", concurrent=1, calls_per_minute=10),
    "careful": QuotaProfile(name="careful", concurrent=1, calls_per_minute=1),
}
TZ = {"carrier-a": "UTC", "carrier-b": "UTC"}


def _place(manager: CardManager, ledger: object, call_id: str, now: float) -> str | None:
    call = manager.begin(call_id, "main")
    selection = select_and_reserve(
        manager,
        call,
        ledger,  # type: ignore[arg-type]
        callee="+8613811110001",
        now=now,
        profiles=PROFILES,
        timezones=TZ,
    )
    return None if selection.card is None else selection.card.id


def test_concurrent_calls_spread_over_the_pool(manager: CardManager, store: SQLiteStore) -> None:
    """One call per SIM: the second call takes c2, the third finds no card."""
    assert "c1" == _place(manager, store, "k1", T0)
    assert "c2" == _place(manager, store, "k2", T0 + 1)
    assert None is _place(manager, store, "k3", T0 + 2)
    assert [("k1", "c1"), ("k2", "c2")] == store.open_reservations()
    store.finish("k1", T0 + 30, answered=True, talk_seconds=25)
    assert "c1" == _place(manager, store, "k4", T0 + 31)


class StaleLedger:
    """The real store, but usage reads miss another process's reservation."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    def card_usage(self, card_id: str, now: float) -> CardUsage:
        """Pretend nothing is in use (a stale read)."""
        return CardUsage()

    def reserve(self, *args: object, **kwargs: object) -> None:
        """The atomic reserve of the real store."""
        self.store.reserve(*args, **kwargs)  # type: ignore[arg-type]


def test_lost_race_moves_on_to_the_next_card(manager: CardManager, store: SQLiteStore) -> None:
    """A reservation refused inside the atomic write counts c1 as tried and takes c2."""
    store.reserve("c1", "other-process", "+8613811119999", T0)
    call = manager.begin("k1", "main")
    selection = select_and_reserve(
        manager,
        call,
        StaleLedger(store),  # type: ignore[arg-type]
        callee="+8613811110001",
        now=T0 + 1,
        profiles=PROFILES,
        timezones=TZ,
    )
    assert selection.card is not None
    assert "c2" == selection.card.id
    assert ["c1", "c2"] == call.tried
    assert [("other-process", "c1"), ("k1", "c2")] == store.open_reservations()


def test_probation_profile_is_enforced(manager: CardManager, store: SQLiteStore) -> None:
    """A card on probation with a reduced profile (1 call/min) is held to it."""
    manager.probation("c1", now=T0, until=T0 + 86400, profile="careful")
    assert PROFILES["careful"] == effective_profile(manager.get("c1"), PROFILES)
    assert PROFILES["default"] == effective_profile(manager.get("c2"), PROFILES)
    assert "c1" == _place(manager, store, "k1", T0 + 1)
    store.finish("k1", T0 + 20, answered=True, talk_seconds=15)
    # Under "default" (10/min) the pool would stay on c1; "careful" allows 1/min.
    assert "c2" == _place(manager, store, "k2", T0 + 21)
    store.finish("k2", T0 + 40, answered=True, talk_seconds=15)
    manager.restore("c1", now=T0 + 41)
    assert "c1" == _place(manager, store, "k3", T0 + 42)


def test_probation_without_override_uses_the_profile_probation(manager: CardManager) -> None:
    """Probation with no explicit profile uses the base profile's configured probation one."""
    manager.probation("c2", now=T0, until=T0 + 86400)
    card = manager.get("c2")
    assert PROFILES["careful"] == effective_profile(card, PROFILES, {"default": "careful"})
    assert PROFILES["default"] == effective_profile(card, PROFILES)

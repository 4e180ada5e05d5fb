"""Pool capacity (``policies.capacity``) over the gateway's cards: HTTP answer and MQTT payload.

``GET /pools/{pool}/capacity`` and the retained MQTT topic
``dialgate/pools/{pool}/capacity`` carry the same JSON: ``{"v": 1, "pool",
"at", "now", "next_minute", "cards": [{"card", "state", "now",
"next_minute", "cause", "frees_at"}]}``. Snapshots come from the card
manager and the usage store the call path selects with, so the figures
are what selection would see.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from policies.capacity import PoolCapacity, pool_capacity
from policies.quotas import CardSnapshot

if TYPE_CHECKING:
    from gateway.cards import Card, CardManager
    from gateway.operator.service import Operator
    from gateway.telemetry.events import EventBus, PoolCapacityStatus

__all__ = [
    "PoolCapacityRound",
    "capacity_event",
    "capacity_payload",
    "manager_pool_capacities",
    "operator_pool_capacity",
]


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def capacity_payload(capacity: PoolCapacity, now: float) -> dict[str, Any]:
    """The JSON document of one pool's capacity (``frees_at`` as ISO times)."""
    cards = []
    for card in capacity.cards:
        item = card.as_dict()
        item["frees_at"] = _iso(card.frees_at)
        cards.append(item)
    return {
        "v": 1,
        "at": _iso(now),
        "pool": capacity.pool,
        "now": capacity.now,
        "next_minute": capacity.next_minute,
        "cards": cards,
    }


def operator_pool_capacity(op: Operator, pool: str, now: float) -> PoolCapacity | None:
    """The pool's capacity from the operator's card manager; None when it has no cards."""
    cards = op.manager.cards(pool)
    if not cards:
        return None
    return pool_capacity(pool, [op.snapshot(c, now) for c in cards], now)


def manager_pool_capacities(
    manager: CardManager, snapshot: Callable[[Card, float], CardSnapshot], now: float
) -> dict[str, PoolCapacity]:
    """Every pool's capacity (the status round's MQTT publication)."""
    pools: dict[str, list[Card]] = {}
    for card in manager.cards():
        pools.setdefault(card.pool, []).append(card)
    return {
        pool: pool_capacity(pool, [snapshot(c, now) for c in cards], now)
        for pool, cards in _sorted(pools.items())
    }


def _sorted(items: Iterable[tuple[str, list[Card]]]) -> list[tuple[str, list[Card]]]:
    return sorted(items, key=lambda kv: kv[0])


def capacity_event(capacity: PoolCapacity, now: float) -> PoolCapacityStatus:
    """The bus event of one pool's capacity (MQTT ``dialgate/pools/{pool}/capacity``)."""
    from gateway.telemetry.events import PoolCapacityStatus

    payload = capacity_payload(capacity, now)
    return PoolCapacityStatus(
        pool=capacity.pool,
        at=now,
        now=capacity.now,
        next_minute=capacity.next_minute,
        cards=tuple(payload["cards"]),
    )


class PoolCapacityRound:
    """Each status round: every pool's capacity, published when it changed (retained)."""

    def __init__(self) -> None:
        self._last: dict[str, PoolCapacity] = {}

    def run(
        self,
        operator: Operator,
        bus: EventBus,
        now: float,
        *,
        snapshot: Callable[[Card, float], CardSnapshot] | None = None,
    ) -> int:
        """Compute every pool's capacity and publish the changed ones; returns how many.

        ``snapshot``: where each card's snapshot comes from (the operator's by default;
        the status round's, read once for its statuses too).
        """
        published = 0
        for pool, capacity in manager_pool_capacities(
            operator.manager, snapshot or operator.snapshot, now
        ).items():
            if self._last.get(pool) == capacity:
                continue
            self._last[pool] = capacity
            bus.publish(capacity_event(capacity, now))
            published += 1
        return published

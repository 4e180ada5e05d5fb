"""State store of the gateway: the embedded SQLite store (default) and its interfaces.

``gateway.store.sqlite`` holds the implementation (see its docstring for the
schema, write-ahead counting and durability). Several gateway instances share
quotas and card states through Redis: ``gateway.store.redis`` (imported only
when ``[store] redis`` is set), which :func:`ledger_from_settings` wires in.
This package module only re-exports, so ``from gateway.store import
SQLiteStore`` keeps working.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.store.sqlite import (
    SCHEMA_VERSION,
    CardRepository,
    CardUsageFacts,
    Complaint,
    QuotaExceeded,
    ReservationError,
    SQLiteStore,
    StoredCard,
    StoreUnavailable,
    TransitionRecord,
    UsageLedger,
    UsageStatus,
    store_from_settings,
)

if TYPE_CHECKING:
    from gateway.config import Settings

__all__ = [
    "SCHEMA_VERSION",
    "CardRepository",
    "CardUsageFacts",
    "Complaint",
    "QuotaExceeded",
    "ReservationError",
    "SQLiteStore",
    "StoreUnavailable",
    "StoredCard",
    "TransitionRecord",
    "UsageLedger",
    "UsageStatus",
    "ledger_from_settings",
    "store_from_settings",
]


def ledger_from_settings(settings: Settings, store: SQLiteStore, *, node: str) -> UsageLedger:
    """The usage ledger to reserve through: ``store`` alone, or Redis mirrored to it.

    With ``[store] redis`` set: a :class:`gateway.store.redis.MirroredLedger`
    (Redis decides atomically for every instance, ``store`` keeps each start
    durably). ``node`` names this gateway instance
    (:func:`gateway.store.redis.node_name`); Redis recovery only touches its
    own reservations. Call ``ledger.recover(now)`` once before taking traffic.
    """
    if settings.store.redis is None:
        return store
    from gateway.store.redis import ledger_from_settings as redis_ledger

    return redis_ledger(settings, store, node=node)

"""The gateway's state: one set of store protocols and the backends that satisfy them.

- :mod:`gateway.store.protocols` — what the layers above ask of a store
  (usage ledger, card repository, policy lookups, CDRs, calls in progress,
  agents, registrations, compliance records); :class:`Store` is all of them.
- :mod:`gateway.store.records` — the records and errors those protocols carry.
- :mod:`gateway.store.sqlite` — the embedded default (one SQLite file, WAL),
  including the operator's own tables (:mod:`gateway.store.operator_schema`).
- :mod:`gateway.store.redis` — the hot copy several instances share (imported
  only when ``[store] redis`` is set; :func:`ledger_from_settings` wires it).
- :mod:`gateway.store.memory` — a complete store in plain dicts, for unit tests.
- :mod:`gateway.store.spool` — CDRs kept on disk while the store refuses them.

This package module only re-exports and chooses the ledger. It must never
import :mod:`gateway.store.redis` at import time, nor anything above the store
(cards, call path, operator).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.store.protocols import (
    AgentStore,
    CallDialogStore,
    CallPathStore,
    CardRepository,
    CdrStore,
    ComplianceStore,
    PolicyLookups,
    RegistrationStore,
    Store,
    UsageLedger,
)
from gateway.store.records import (
    CallDialogs,
    CardUsageFacts,
    Complaint,
    QuotaExceeded,
    ReservationError,
    StoredCard,
    StoredRegistration,
    StoreUnavailable,
    TransitionRecord,
    UsageStatus,
)
from gateway.store.sqlite import SCHEMA_VERSION, SQLiteStore, store_from_settings

if TYPE_CHECKING:
    from gateway.config import Settings

__all__ = [
    "SCHEMA_VERSION",
    "AgentStore",
    "CallDialogStore",
    "CallDialogs",
    "CallPathStore",
    "CardRepository",
    "CardUsageFacts",
    "CdrStore",
    "Complaint",
    "ComplianceStore",
    "PolicyLookups",
    "QuotaExceeded",
    "RegistrationStore",
    "ReservationError",
    "SQLiteStore",
    "Store",
    "StoreUnavailable",
    "StoredCard",
    "StoredRegistration",
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

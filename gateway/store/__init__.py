"""State store of the gateway: the embedded SQLite store (default) and its interfaces.

``gateway.store.sqlite`` holds the implementation (see its docstring for the
schema, write-ahead counting and durability); ``gateway.store.redis`` holds a
:class:`UsageLedger` over Redis for several gateway instances sharing quotas
(needs the optional ``redis`` package, imported only there). This package
module only re-exports, so ``from gateway.store import SQLiteStore`` keeps working.
"""

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
    ledger_from_settings,
    store_from_settings,
)

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

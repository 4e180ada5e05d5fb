"""Fixtures for card tests: a store-backed CardManager with two pools of cards.

Selection goes through the one card picker, ``policies.selection.CardSelection``,
over :class:`gateway.cards.StoreCardSource` (the SQLite store is the usage ledger).
Times are plain floats (epoch seconds) from ``T0``; nothing reads a clock.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.cards import CardDef, CardManager, CarrierRule, StoreCardSource, SuspendReason
from gateway.store import SQLiteStore
from policies.context import CallContext
from policies.quotas import QuotaProfile

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
CALLEE = "+8613811110001"

DEFS = [
    CardDef("c1", "carrier-a", "+8613800000001", "main", 1),
    CardDef("c2", "carrier-a", "+8613800000002", "main", 2),
    CardDef("c3", "carrier-b", "+8613800000003", "backup", 1),
]

RULES = {
    "carrier-a": [
        CarrierRule(403, SuspendReason.VIOLATION, re.compile("(?i)suspend|blocked")),
        CarrierRule(480, SuspendReason.ABNORMAL_USE, re.compile("(?i)abnormal")),
    ]
}

PROFILES = {
    "default": QuotaProfile(name="default", concurrent=1, calls_per_minute=10),
    "careful": QuotaProfile(name="careful", concurrent=1, calls_per_minute=1),
}
TZ = {"carrier-a": "UTC", "carrier-b": "UTC"}


def at(t: float) -> datetime:
    """The aware UTC datetime CardSelection is called with."""
    return datetime.fromtimestamp(t, UTC)


def ctx(
    call_id: str,
    *,
    bound: str | None = None,
    last: str | None = None,
    exclude: Iterable[str] = (),
    spill: bool = False,
    emergency: bool = False,
    callee: str = CALLEE,
    now: float = T0,
) -> CallContext:
    """One call attempt as the pipeline (or a failover) hands it to CardSelection."""
    return CallContext(
        dialled=callee,
        agent="alice",
        campaign="spring",
        default_region="CN",
        now=at(now),
        destination=callee,
        bound_card=bound,
        last_card=last,
        call_id=call_id,
        emergency=emergency,
        spill=spill,
        exclude=frozenset(exclude),
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    """A fresh file-backed store."""
    s = SQLiteStore(tmp_path / "cards.db")
    yield s
    s.close()


@pytest.fixture
def manager(store: SQLiteStore) -> CardManager:
    """A manager over the store with carrier-a's rules (default carrier terms)."""
    m = CardManager(store, rules=RULES)
    m.load(DEFS, T0)
    return m


@pytest.fixture
def source(manager: CardManager, store: SQLiteStore) -> StoreCardSource:
    """The card source over the fixture manager, with the store as the usage ledger."""
    return StoreCardSource(manager, store, profiles=PROFILES, timezones=TZ)

"""Fixtures for card tests: a store-backed CardManager with two pools of cards."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cards import CardDef, CardManager, CarrierRule, SuspendReason
from gateway.store import SQLiteStore

T0 = 1_700_000_000.0

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


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    """A fresh file-backed store."""
    s = SQLiteStore(tmp_path / "cards.db")
    yield s
    s.close()


@pytest.fixture
def manager(store: SQLiteStore) -> CardManager:
    """A manager over the store with carrier-a's rules and a fault threshold of 3."""
    m = CardManager(store, rules=RULES, fault_threshold=3, max_attempts=3)
    m.load(DEFS, T0)
    return m

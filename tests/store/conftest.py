"""Fixtures for the store tests: a file-backed store in a temporary directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.store import SQLiteStore, StoredCard

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z, a fixed "now"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Path of a fresh database file."""
    return tmp_path / "var" / "dialgate.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[SQLiteStore]:
    """A migrated store with two cards of carrier-a (UTC day)."""
    s = SQLiteStore(db_path, carrier_timezones={"carrier-a": "UTC"})
    s.upsert_card(StoredCard("c1", "carrier-a", "+8613800000001", "main", 1, since=T0))
    s.upsert_card(StoredCard("c2", "carrier-a", "+8613800000002", "main", 2, since=T0))
    yield s
    s.close()

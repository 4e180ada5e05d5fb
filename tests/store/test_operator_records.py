"""The operator's records are part of the SQLite store: its connection, transactions and guard.

Real SQLite files, a real second connection holding the lock; no mocks.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from gateway.store import SCHEMA_VERSION, SQLiteStore, StoreUnavailable

T0 = 1_790_000_000.0
OPERATOR_TABLES = {
    "card_records",
    "audit_log",
    "operator_appeals",
    "appeal_updates",
    "complaint_attribution",
}


def _tables(path: Path) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        db.close()


def test_opening_the_store_creates_the_operator_tables_once(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    store = SQLiteStore(path)
    assert OPERATOR_TABLES <= _tables(path)
    store.operator.record_audit(at=T0, actor="op", action="dnc.add", target="x")
    store.close()
    again = SQLiteStore(path)  # idempotent: nothing dropped, the schema version unchanged
    assert SCHEMA_VERSION == again.schema_version()
    assert ["dnc.add"] == [e.action for e in again.operator.audit_entries()]
    again.close()


def test_operator_writes_share_the_store_transaction_machinery(tmp_path: Path) -> None:
    """A failed operator write rolls back whole (record and its audit entry together)."""
    store = SQLiteStore(tmp_path / "gw.db")
    with pytest.raises(ValueError):
        store.operator.update_card_record("c1", {"colour": "red"}, at=T0, actor="op")
    record = store.operator.update_card_record("c1", {"holder": "Li"}, at=T0, actor="op")
    assert ("Li", "op") == (record.holder, record.updated_by)
    assert ["card.record"] == [e.action for e in store.operator.audit_entries(card="c1")]
    appeal = store.operator.open_appeal(
        "c1", reference="R-1", channel="web", submitted_at=T0, notes="", at=T0, actor="op"
    )
    store.operator.add_appeal_update(
        appeal, kind="decision", decision="restored", notes="", at=T0 + 1, actor="op", close=True
    )
    assert store.operator.open_appeal_of("c1") is None
    store.close()


def test_a_locked_file_refuses_operator_writes_through_the_stores_guard(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "gw.db", busy_timeout_ms=200)
    other = sqlite3.connect(tmp_path / "gw.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreUnavailable):
            store.operator.record_audit(at=T0, actor="op", action="one")
        assert not store.guard.healthy  # the operator's failure tripped the store's guard
        start = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.add_dnc("+8613800000001", T0)  # and the store's own writes are refused at once
        with pytest.raises(StoreUnavailable):
            store.operator.record_audit(at=T0, actor="op", action="two")
        assert time.monotonic() - start < 0.1
    finally:
        other.execute("ROLLBACK")
        other.close()
    deadline = time.monotonic() + 3.0
    while not store.guard.healthy:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    store.operator.record_audit(at=T0, actor="op", action="three")
    assert ["three"] == [e.action for e in store.operator.audit_entries()]
    store.close()

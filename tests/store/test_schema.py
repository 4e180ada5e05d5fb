"""Schema creation, migrations and fail-closed behaviour of the SQLite store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.store import SCHEMA_VERSION, SQLiteStore, StoreUnavailable
from gateway.store.sqlite import _MIGRATIONS
from policies.errors import StoreUnavailableError

from .conftest import T0
from .test_guard import wait_recovered


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def test_fresh_database_has_every_table_and_current_version(db_path: Path) -> None:
    """Opening an empty file creates the full schema at the current version."""
    with SQLiteStore(db_path) as s:
        assert SCHEMA_VERSION == s.schema_version()
    expected = {
        "schema_version",
        "cards",
        "card_transitions",
        "cdrs",
        "call_starts",
        "consent",
        "dnc",
        "complaints",
        "appeals",
    }
    assert expected <= _tables(db_path)


def test_reopening_applies_no_migration(db_path: Path) -> None:
    """Migrating an up-to-date database is a no-op, however often it is opened."""
    SQLiteStore(db_path).close()
    for _ in range(3):
        with SQLiteStore(db_path) as s:
            assert 0 == s.migrate()
            assert SCHEMA_VERSION == s.schema_version()
    with sqlite3.connect(db_path) as db:
        versions = [r[0] for r in db.execute("SELECT version FROM schema_version ORDER BY 1")]
    assert [v for v, _ in _MIGRATIONS] == versions


def test_version_1_database_is_migrated_forward_keeping_rows(db_path: Path) -> None:
    """A database written by schema 1 gains the ``failed`` column and keeps its data."""
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for sql in _MIGRATIONS[0][1]:
            db.execute(sql)
        db.execute("INSERT INTO schema_version VALUES (1)")
        db.execute(
            "INSERT INTO call_starts (call_id, card, callee, started_at, status, answered) "
            "VALUES ('a', 'c1', '+8613811112222', ?, 'finished', 1)",
            (T0,),
        )
    with SQLiteStore(db_path) as s:
        assert SCHEMA_VERSION == s.schema_version()
        usage = s.card_usage("c1", T0 + 10)
    assert (T0,) == usage.call_starts
    assert [False] == [o.failed for o in usage.recent_outcomes]


def test_newer_schema_refuses_to_open(db_path: Path) -> None:
    """A database from a newer gateway is not touched: opening fails closed."""
    SQLiteStore(db_path).close()
    with sqlite3.connect(db_path) as db:
        db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreUnavailable):
        SQLiteStore(db_path)


def test_wal_mode_is_on(db_path: Path) -> None:
    """The file runs in WAL mode (the durability argument depends on it)."""
    SQLiteStore(db_path).close()
    with sqlite3.connect(db_path) as db:
        assert "wal" == db.execute("PRAGMA journal_mode").fetchone()[0]


def test_locked_database_raises_store_unavailable(db_path: Path) -> None:
    """A writer blocked past the busy timeout gets StoreUnavailable (→ 503), not a hang."""
    s = SQLiteStore(db_path, busy_timeout_ms=20)
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreUnavailable) as info:
            s.reserve("c1", "call-1", "+8613811112222", T0)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert 503 == info.value.status_code
    assert "store-unavailable" == info.value.reason_text
    assert isinstance(info.value, StoreUnavailableError)
    wait_recovered(s)  # the store's guard closes by itself once the lock is gone
    s.reserve("c1", "call-1", "+8613811112222", T0)  # works again
    assert 1 == s.card_usage("c1", T0).in_use
    s.close()


def test_closed_store_raises_store_unavailable(db_path: Path) -> None:
    """Reads and writes on a closed store fail closed with StoreUnavailable."""
    s = SQLiteStore(db_path)
    s.close()
    with pytest.raises(StoreUnavailable):
        s.is_dnc("+8613811112222")
    with pytest.raises(StoreUnavailable):
        s.add_dnc("+8613811112222", T0)


def test_invalid_synchronous_mode_is_rejected(db_path: Path) -> None:
    """Only NORMAL and FULL are accepted: OFF would give up crash safety."""
    with pytest.raises(ValueError):
        SQLiteStore(db_path, synchronous="OFF")

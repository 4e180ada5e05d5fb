"""Batches: several writes in one commit (the call path stores a call's start and its end
each as one), with the same meaning in SQLite and in the memory backend.

Real SQLite files, a second connection to see what is committed; no mocks.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from gateway.callpath.cdr import CallRecord, Outcome
from gateway.store import CallDialogs, QuotaExceeded, SQLiteStore, StoredCard, StoreUnavailable
from gateway.store.memory import MemoryStore
from policies.quotas import QuotaProfile

from .conftest import T0

ONE_AT_A_TIME = QuotaProfile(name="one", concurrent=1)


def row(key: str) -> CallDialogs:
    return CallDialogs(key, f"{key}@agent", "c1", "+8613912345678", T0)


def cdr(call_id: str) -> CallRecord:
    return CallRecord(call_id, T0, "+8613912345678", Outcome.ANSWERED, 200, end_at=T0 + 5)


def committed(path: Path, sql: str) -> int:
    """A count read by another connection: what is committed, nothing else."""
    other = sqlite3.connect(path)
    try:
        return int(other.execute(sql).fetchone()[0])
    finally:
        other.close()


def starts(path: Path) -> int:
    return committed(path, "SELECT COUNT(*) FROM call_starts WHERE status='reserved'")


def rows(path: Path) -> int:
    return committed(path, "SELECT COUNT(*) FROM call_dialogs")


def commits(store: SQLiteStore) -> list[str]:
    """Every COMMIT the store's connection runs from now on (appended as they happen)."""
    seen: list[str] = []
    store._db.set_trace_callback(lambda sql: seen.append(sql) if sql == "COMMIT" else None)
    return seen


def test_writes_in_a_batch_commit_once_at_its_end(store: SQLiteStore, db_path: Path) -> None:
    seen = commits(store)
    with store.batch():
        store.reserve("c1", "k1", "+8613912345678", T0)
        store.save_call_dialogs(row("k1"))
        assert (0, 0) == (starts(db_path), rows(db_path))  # nothing visible yet
        assert 1 == store.card_usage("c1", T0).in_use  # but this connection sees its own
    assert (1, 1) == (starts(db_path), rows(db_path))
    assert ["COMMIT"] == seen


def test_commit_ends_the_batch_early_and_later_writes_commit_one_by_one(
    store: SQLiteStore, db_path: Path
) -> None:
    seen = commits(store)
    with store.batch():
        store.reserve("c1", "k1", "+8613912345678", T0)
        store.save_call_dialogs(row("k1"))
        store.commit()
        assert (1, 1) == (starts(db_path), rows(db_path))
        store.add_cdrs([cdr("k1@agent")])
        assert 1 == committed(db_path, "SELECT COUNT(*) FROM cdrs")
        with store.batch():  # a batch after the commit is a new one
            store.finish("k1", T0 + 5, answered=True, talk_seconds=5)
            store.delete_call_dialogs("k1")
            assert (1, 1) == (starts(db_path), rows(db_path))
        assert (0, 0) == (starts(db_path), rows(db_path))
    assert 3 == len(seen)
    store.commit()  # outside a batch: nothing to do


def test_a_refused_reservation_undoes_only_itself(store: SQLiteStore, db_path: Path) -> None:
    """A quota refusal inside a batch (the picker then tries the next card) keeps what the
    batch wrote before it; the next card's reservation and the row commit together."""
    store.reserve("c1", "k0", "+8613912345670", T0)  # c1 is full now (concurrent = 1)
    with store.batch():
        store.save_agent_binding("alice", "c2", configured="c1", now=T0)
        with pytest.raises(QuotaExceeded):
            store.reserve("c1", "k1", "+8613912345678", T0, profile=ONE_AT_A_TIME)
        store.reserve("c2", "k1", "+8613912345678", T0, profile=ONE_AT_A_TIME)
        store.save_call_dialogs(row("k1"))
    assert (2, 1) == (starts(db_path), rows(db_path))
    assert {"alice": ("c2", "c1")} == store.agent_bindings()
    assert (1, 1) == (store.card_usage("c1", T0).in_use, store.card_usage("c2", T0).in_use)


def test_a_write_of_several_statements_that_fails_undoes_only_itself(
    store: SQLiteStore, db_path: Path
) -> None:
    """Two CDRs, the second invalid (NOT NULL): the first is undone with it (a savepoint),
    the reservation before them commits with the batch."""
    bad = CallRecord("k1@agent", T0, None, Outcome.ANSWERED, 200)  # type: ignore[arg-type]
    with store.batch():
        store.reserve("c1", "k1", "+8613912345678", T0)
        with pytest.raises(sqlite3.IntegrityError):
            store.add_cdrs([cdr("k1@agent"), bad])
        store.save_call_dialogs(row("k1"))
    assert (1, 1) == (starts(db_path), rows(db_path))
    assert 0 == committed(db_path, "SELECT COUNT(*) FROM cdrs")


def test_the_first_write_refused_leaves_the_batch_open_for_the_next(
    store: SQLiteStore, db_path: Path
) -> None:
    store.reserve("c1", "k0", "+8613912345670", T0)
    seen = commits(store)
    with store.batch():
        with pytest.raises(QuotaExceeded):
            store.reserve("c1", "k1", "+8613912345678", T0, profile=ONE_AT_A_TIME)
        store.reserve("c2", "k1", "+8613912345678", T0, profile=ONE_AT_A_TIME)
        store.save_call_dialogs(row("k1"))
        assert 1 == starts(db_path)
    assert (2, 1) == (starts(db_path), rows(db_path))
    assert ["COMMIT"] == seen


def wait_healthy(store: SQLiteStore) -> None:
    """Until the guard's probe closed it again (it probes every 0.5 s)."""
    deadline = time.monotonic() + 5.0
    while not store.guard.healthy:
        assert time.monotonic() < deadline, store.guard.status()
        time.sleep(0.02)


def test_a_store_failure_inside_a_batch_loses_the_whole_batch(
    store: SQLiteStore, db_path: Path
) -> None:
    """The reservation is not committed without its row: both or neither. The writes after
    the failure are on their own (refused at once while the guard is open)."""
    with store.batch():
        store.reserve("c1", "k1", "+8613912345678", T0)
        store.guard.trip("test: store down")
        with pytest.raises(StoreUnavailable):
            store.save_call_dialogs(row("k1"))
        with pytest.raises(StoreUnavailable):
            store.release("k1", T0)
    wait_healthy(store)
    assert (0, 0) == (starts(db_path), rows(db_path))
    assert 0 == store.card_usage("c1", T0).in_use  # the counters forgot it too
    store.reserve("c1", "k2", "+8613912345678", T0)  # and the store writes on
    assert 1 == starts(db_path)


def test_a_full_database_inside_a_batch_stores_nothing_of_it(
    store: SQLiteStore, db_path: Path
) -> None:
    """A real SQLITE_FULL on the second write: the first is rolled back with it."""
    pages = int(store._db.execute("PRAGMA page_count").fetchone()[0])
    with store.batch():
        store.reserve("c1", "k1", "+8613912345678", T0)
        store._db.execute(f"PRAGMA max_page_count={pages}")
        big = CallDialogs("k1", "k1@agent", "c1", "+8613912345678", T0, cdr="x" * 200_000)
        with pytest.raises(StoreUnavailable):
            store.save_call_dialogs(big)
    store._db.execute("PRAGMA max_page_count=1073741823")
    assert not store.guard.healthy  # a failure of the file itself
    wait_healthy(store)
    assert (0, 0) == (starts(db_path), rows(db_path))
    assert 0 == store.card_usage("c1", T0).in_use


def test_an_exception_leaving_the_batch_rolls_it_back(store: SQLiteStore, db_path: Path) -> None:
    with pytest.raises(RuntimeError), store.batch():
        store.reserve("c1", "k1", "+8613912345678", T0)
        raise RuntimeError("bug")
    assert 0 == starts(db_path)
    assert 0 == store.card_usage("c1", T0).in_use
    store.reserve("c1", "k2", "+8613912345678", T0)
    assert 1 == starts(db_path)


def _memory() -> MemoryStore:
    store = MemoryStore(carrier_timezones={"carrier-a": "UTC"})
    for i, card in enumerate(("c1", "c2"), 1):
        store.upsert_card(StoredCard(card, "carrier-a", f"+861380000000{i}", "main", i, since=T0))
    return store


def test_memory_batches_mean_what_sqlite_batches_mean() -> None:
    store = _memory()
    with store.batch():
        store.reserve("c1", "k1", "+8613912345678", T0)
        with pytest.raises(QuotaExceeded):
            store.reserve("c1", "k2", "+8613912345679", T0, profile=ONE_AT_A_TIME)
        store.save_call_dialogs(row("k1"))
        store.commit()
        store.add_cdrs([cdr("k1@agent")])
    assert (1, 1, 1) == (
        store.card_usage("c1", T0).in_use,
        len(store.call_dialogs()),
        len(store.cdrs()),
    )
    # A failure inside loses the whole batch; the store goes on after it.
    with store.batch():
        store.finish("k1", T0 + 5, answered=True, talk_seconds=5)
        store.down = True
        with pytest.raises(StoreUnavailable):
            store.delete_call_dialogs("k1")
    store.down = False
    assert (1, 1) == (store.card_usage("c1", T0).in_use, len(store.call_dialogs()))
    # A store down at the end: nothing of the batch is kept.
    with pytest.raises(StoreUnavailable), store.batch():
        store.finish("k1", T0 + 5, answered=True, talk_seconds=5)
        store.delete_call_dialogs("k1")
        store.down = True
    store.down = False
    assert (1, 1) == (store.card_usage("c1", T0).in_use, len(store.call_dialogs()))
    with pytest.raises(RuntimeError), store.batch():
        store.delete_call_dialogs("k1")
        raise RuntimeError("bug")
    assert 1 == len(store.call_dialogs())

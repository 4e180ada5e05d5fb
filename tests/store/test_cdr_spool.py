"""A store outage never loses a CDR: gateway.store.spool over a real SQLite file.

The outage is real: a second connection holds SQLite's exclusive lock, so the
store's writes fail after its busy timeout exactly as they would behind a
stuck backup job or a full disk.
"""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gateway.callpath.cdr import CallRecord, Origin, Outcome
from gateway.store import SQLiteStore
from gateway.store.spool import CdrWriter, record_from_json, record_to_json
from tests.store.test_guard import wait_recovered


def _record(n: int, **changes: object) -> CallRecord:
    fields: dict[str, object] = {
        "call_id": f"call-{n}@agent",
        "attempt_at": 1_790_000_000.0 + n,
        "destination": "+8613912345678",
        "outcome": Outcome.ANSWERED,
        "final_code": 200,
        "origin_kind": Origin.AGENT,
        "origin": "alice",
        "campaign": "spring",
        "cards": ("c1", "c2"),
        "ring_at": 1_790_000_000.5 + n,
        "answer_at": 1_790_000_001.0 + n,
        "end_at": 1_790_000_031.0 + n,
        "failovers": 1,
        "policy_reason": "",
    }
    fields.update(changes)
    return CallRecord(**fields)  # type: ignore[arg-type]


@contextmanager
def locked(db: Path) -> Iterator[None]:
    """Another process-like connection holding the write lock: the store is unavailable."""
    other = sqlite3.connect(db, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_json_round_trip_keeps_every_field() -> None:
    for record in (_record(1), _record(2, outcome=Outcome.BLOCKED, cards=(), answer_at=None)):
        assert record == record_from_json(record_to_json(record))


def test_outage_spools_to_a_private_file_and_the_next_write_flushes_in_order(
    tmp_path: Path,
) -> None:
    db = tmp_path / "gw.db"
    store = SQLiteStore(db)
    spool = tmp_path / "gw.db.cdr-spool.jsonl"
    writer = CdrWriter(store, spool)
    try:
        with locked(db):
            assert not writer.write(_record(1))
            assert not writer.write(_record(2))
        assert 2 == writer.pending
        assert 2 == len(spool.read_text().splitlines())
        assert 0o600 == stat.S_IMODE(spool.stat().st_mode)
        assert [] == store.cdrs()
        wait_recovered(store)  # the guard closes once a probe writes again
        assert writer.write(_record(3))  # the store is back: the spool goes first
        assert ["call-1@agent", "call-2@agent", "call-3@agent"] == [r.call_id for r in store.cdrs()]
        assert _record(2) == store.cdrs()[1]
        assert not spool.exists()
        assert 0 == writer.pending
    finally:
        store.close()


def test_spool_file_unwritable_keeps_records_in_memory(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    store = SQLiteStore(db)
    writer = CdrWriter(store, tmp_path / "missing-dir" / "spool.jsonl")
    try:
        with locked(db):
            for n in range(3):
                assert not writer.write(_record(n))
            assert 0 == writer.flush()  # still down: nothing moves, nothing is lost
        assert 3 == writer.pending
        wait_recovered(store)
        assert 3 == writer.flush()
        assert 3 == len(store.cdrs())
        assert {"written": 0, "spooled": 3, "replayed": 3, "pending": 0} == writer.stats()
    finally:
        store.close()


def test_a_spool_left_by_a_dead_process_is_replayed_once(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    spool = tmp_path / "spool.jsonl"
    store = SQLiteStore(db)
    try:
        store.add_cdrs([_record(1)])  # committed just before the process died
        spool.write_text(
            record_to_json(_record(1))
            + "\n"
            + record_to_json(_record(2))
            + "\n"
            + '{"call_id": "torn'
        )
        writer = CdrWriter(store, spool)
        assert 1 == writer.recover()
        assert ["call-1@agent", "call-2@agent"] == [r.call_id for r in store.cdrs()]
        assert not spool.exists()
        assert 0 == CdrWriter(store, spool).recover()
    finally:
        store.close()

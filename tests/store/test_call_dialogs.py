"""The ``call_dialogs`` table: dialogs of calls in progress, kept so a restart can hang them up."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.store import SCHEMA_VERSION, SQLiteStore
from gateway.store.sqlite import _MIGRATIONS, CallDialogs, StoreUnavailable

from .conftest import T0

LEG_B = {
    "dialog": {"call_id": "b1@dialgate", "local_tag": "x", "remote_tag": "y"},
    "transport": "udp",
    "address": ["127.0.0.1", 5070],
}
LEG_A = {"dialog": {"call_id": "a1@agent"}, "transport": "tcp", "address": ["::1", 40000]}


def call(key: str, *, at: float = T0) -> CallDialogs:
    """A stored call with both legs."""
    return CallDialogs(
        key=key,
        call_id=f"{key}@agent",
        card="c1",
        callee="+8613912345678",
        attempt_at=at,
        answer_at=at + 3,
        a_leg=LEG_A,
        b_leg=LEG_B,
    )


def test_save_list_update_delete(store: SQLiteStore) -> None:
    """Rows come back as written (oldest first), a leg can be replaced, delete forgets one."""
    store.save_call_dialogs(call("k2", at=T0 + 1))
    store.save_call_dialogs(call("k1"))
    assert [call("k1"), call("k2", at=T0 + 1)] == store.call_dialogs()
    newer = {**LEG_B, "dialog": {"call_id": "b1@dialgate", "local_seq": 201}}
    assert store.update_call_dialog_leg("k1", "b", newer)
    assert not store.update_call_dialog_leg("gone", "b", newer)
    [k1, _] = store.call_dialogs()
    assert (newer, LEG_A) == (k1.b_leg, k1.a_leg)
    assert store.delete_call_dialogs("k1")
    assert not store.delete_call_dialogs("k1")
    assert ["k2"] == [c.key for c in store.call_dialogs()]
    with pytest.raises(ValueError):
        store.update_call_dialog_leg("k2", "c", newer)


def test_answer_updates_the_answer_columns_only(store: SQLiteStore) -> None:
    """The answer writes its time, both legs and the CDR; the stored INVITEs and the rest of
    the write-ahead row stay; a key without a row is reported, not created."""
    invites = {"b_invite": {"v": 1, "uri": "sip:x@y"}, "a_invite": {"v": 1, "tag": "t"}}
    ahead = CallDialogs("k1", "k1@agent", "c1", "+8613912345678", T0, cdr='{"a":1}', **invites)
    store.save_call_dialogs(ahead)
    assert store.answer_call_dialogs(
        "k1", answer_at=T0 + 3, a_leg=LEG_A, b_leg=LEG_B, cdr='{"a":2}'
    )
    [row] = store.call_dialogs()
    assert row == CallDialogs(
        "k1", "k1@agent", "c1", "+8613912345678", T0, T0 + 3, LEG_A, LEG_B, '{"a":2}', **invites
    )
    assert not store.answer_call_dialogs("k2", answer_at=T0, a_leg=None, b_leg=LEG_B, cdr="{}")
    assert ["k1"] == [c.key for c in store.call_dialogs()]


def test_rows_survive_reopening_and_saving_again_replaces(store: SQLiteStore) -> None:
    """The row is durable across connections; saving the same key twice keeps one row."""
    store.save_call_dialogs(call("k1"))
    store.save_call_dialogs(CallDialogs("k1", "k1@agent", None, "+8613912345678", T0))
    with SQLiteStore(store.path) as other:
        assert [CallDialogs("k1", "k1@agent", None, "+8613912345678", T0)] == (other.call_dialogs())


def test_unreadable_leg_reads_as_none(store: SQLiteStore, db_path: Path) -> None:
    """A damaged leg column does not make the whole list unreadable."""
    store.save_call_dialogs(call("k1"))
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE call_dialogs SET b_leg='{not json', a_leg='[1]'")
    [row] = store.call_dialogs()
    assert (None, None) == (row.a_leg, row.b_leg)


def test_closed_store_fails_closed(store: SQLiteStore) -> None:
    """Writes to a closed store raise StoreUnavailable (the B2BUA logs and goes on)."""
    store.close()
    with pytest.raises(StoreUnavailable):
        store.save_call_dialogs(call("k1"))
    with pytest.raises(StoreUnavailable):
        store.call_dialogs()


def test_version_4_database_gains_the_table_and_keeps_its_rows(db_path: Path) -> None:
    """A database of the previous schema (4) is migrated forward: rows kept, table added."""
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for version, statements in _MIGRATIONS:
            if version > 4:
                break
            for sql in statements:
                db.execute(sql)
            db.execute("INSERT INTO schema_version VALUES (?)", (version,))
        db.execute(
            "INSERT INTO call_starts (call_id, card, callee, started_at, status) "
            "VALUES ('k0', 'c1', '+8613811112222', ?, 'reserved')",
            (T0,),
        )
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "call_dialogs" not in tables
    with SQLiteStore(db_path) as s:
        assert SCHEMA_VERSION == s.schema_version()
        assert [("k0", "c1")] == s.open_reservations()
        assert [] == s.call_dialogs()
        s.save_call_dialogs(call("k0"))
        assert ["k0"] == [c.key for c in s.call_dialogs()]


def test_version_9_rows_gain_the_write_ahead_columns(db_path: Path) -> None:
    """Schema 10 (write-ahead B-legs): an answered row of schema 9 reads back with no
    stored INVITEs; a new row keeps both INVITE records (JSON, ``"v": 1``)."""
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for version, statements in _MIGRATIONS:
            if version > 9:
                break
            for sql in statements:
                db.execute(sql)
            db.execute("INSERT INTO schema_version VALUES (?)", (version,))
        db.execute(
            "INSERT INTO call_dialogs (call_key, call_id, card, callee, attempt_at, answer_at, "
            "b_leg, cdr) VALUES ('old', 'old@agent', 'c1', '+8613912345678', ?, ?, ?, NULL)",
            (T0, T0 + 3, '{"transport": "udp"}'),
        )
    b_invite = {"v": 1, "via": "SIP/2.0/UDP gw;branch=z9hG4bKx;rport", "cseq": 1}
    a_invite = {"v": 1, "via": ["SIP/2.0/UDP agent;branch=z9hG4bKa"], "tag": "t"}
    with SQLiteStore(db_path) as s:
        assert 10 <= s.schema_version()
        [old] = s.call_dialogs()
        assert ("old", None, None) == (old.key, old.b_invite, old.a_invite)
        assert {"transport": "udp"} == old.b_leg
        new = CallDialogs(
            key="new",
            call_id="new@agent",
            card="c1",
            callee="+8613912345679",
            attempt_at=T0 + 5,
            b_invite=b_invite,
            a_invite=a_invite,
        )
        s.save_call_dialogs(new)
        assert [old, new] == s.call_dialogs()

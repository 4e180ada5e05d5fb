"""Private files (issue 15 item 4): 0600 files and 0700 directories whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import Settings, config_warnings
from gateway.private_files import loose_directory, make_private_dirs, open_private
from gateway.store import SQLiteStore
from gateway.store.spool import CdrWriter
from tests.store.test_cdr_spool import _record, locked


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask (new files 0644, directories 0755) for the test's duration."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_database_wal_shm_and_directories(tmp_path: Path, umask_022: None) -> None:
    """A new store in a new directory tree: db, -wal, -shm 0600; each new directory 0700."""
    db = tmp_path / "var" / "sub" / "gw.db"
    store = SQLiteStore(db)
    try:
        store.add_cdrs([_record(1)])
        files = sorted(p.name for p in db.parent.iterdir())
        assert {"gw.db", "gw.db-wal", "gw.db-shm"} <= set(files)
        for name in files:
            assert (name, 0o600) == (name, mode(db.parent / name))
    finally:
        store.close()
    assert 0o700 == mode(tmp_path / "var")
    assert 0o700 == mode(tmp_path / "var" / "sub")


def test_existing_loose_database_is_tightened(tmp_path: Path, umask_022: None) -> None:
    """A database (and WAL) left 0644 by an older version becomes 0600 when opened."""
    db = tmp_path / "gw.db"
    SQLiteStore(db).close()
    os.chmod(db, 0o644)
    wal = tmp_path / "gw.db-wal"
    wal.write_bytes(b"")
    os.chmod(wal, 0o664)
    store = SQLiteStore(db)
    try:
        assert 0o600 == mode(db)
        assert 0o600 == mode(wal)
    finally:
        store.close()


def test_cdr_spool_is_private(tmp_path: Path, umask_022: None) -> None:
    """The CDR spool written during a store outage is 0600, also when it existed looser."""
    db = tmp_path / "gw.db"
    store = SQLiteStore(db)
    spool = tmp_path / "gw.db.cdr-spool.jsonl"
    spool.write_text("")
    os.chmod(spool, 0o644)
    writer = CdrWriter(store, spool)
    try:
        with locked(db):
            assert not writer.write(_record(1))
        assert 0o600 == mode(spool)
    finally:
        store.close()


def test_open_private_truncates_and_keeps_existing_directories(
    tmp_path: Path, umask_022: None
) -> None:
    """An existing 0644 file is rewritten 0600; a directory that existed keeps its mode."""
    out = tmp_path / "export.csv"
    out.write_text("old, longer content")
    os.chmod(out, 0o644)
    with open_private(out, "w", encoding="utf-8") as fh:
        fh.write("new")
    assert "new" == out.read_text()
    assert 0o600 == mode(out)
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    make_private_dirs(shared / "a" / "b")
    assert 0o755 == mode(shared)
    assert 0o700 == mode(shared / "a")
    assert 0o700 == mode(shared / "a" / "b")


def test_check_config_warns_on_an_open_store_directory(tmp_path: Path) -> None:
    """config_warnings names store.path when its directory is group/world-accessible."""
    var = tmp_path / "var"
    var.mkdir()
    os.chmod(var, 0o755)
    settings = Settings(store={"path": str(var / "gw.db")}, policy={"consent": "dnc-only"})
    [warning] = [w for w in config_warnings(settings) if w.startswith("store.path")]
    assert str(var) in warning
    assert "0755" in warning
    os.chmod(var, 0o700)
    assert not [w for w in config_warnings(settings) if w.startswith("store.path")]
    assert loose_directory(tmp_path / "missing" / "gw.db") is None  # will be created 0700


def test_spool_dir_is_accepted_used_and_warned_about_when_open(tmp_path: Path) -> None:
    """``[store] spool_dir``: the CDR spool's directory (issue 19), checked like the store's."""
    from gateway.callpath.services import spool_path

    spool = tmp_path / "spool"
    spool.mkdir()
    os.chmod(spool, 0o755)
    settings = Settings(
        store={"path": str(tmp_path / "gw.db"), "spool_dir": str(spool)},
        policy={"consent": "dnc-only"},
    )
    [warning] = [w for w in config_warnings(settings) if w.startswith("store.spool_dir")]
    assert str(spool) in warning
    store = SQLiteStore(tmp_path / "gw.db")
    try:
        assert spool / "gw.db.cdr-spool.jsonl" == spool_path(store, settings.store.spool_dir)
        assert tmp_path / "gw.db.cdr-spool.jsonl" == spool_path(store)  # default: beside
    finally:
        store.close()

"""Crash safety: what a process commits survives its own ``kill -9``."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from gateway.callpath.cdr import CallRecord, Outcome
from gateway.store import SQLiteStore, StoredCard

from .conftest import T0

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from gateway.callpath.cdr import CallRecord, Outcome
    from gateway.store import SQLiteStore, StoredCard

    T0 = float(sys.argv[2])
    s = SQLiteStore(sys.argv[1])
    s.upsert_card(StoredCard("c1", "carrier-a", "+8613800000001", "main", since=T0))
    s.reserve("c1", "done", "+8613811110001", T0)
    s.finish("done", T0 + 40, answered=True, talk_seconds=30)
    s.add_cdr(CallRecord("done", T0, "+8613811110001", Outcome.ANSWERED, 200,
                         cards=("c1",), ring_at=T0 + 2, answer_at=T0 + 10, end_at=T0 + 40))
    s.reserve("c1", "in-flight", "+8613811110002", T0 + 50)
    sys.stdout.write("committed\\n")
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # no close(), no checkpoint, no atexit
    """
)


def test_cdr_and_reservation_survive_sigkill(tmp_path: Path) -> None:
    """A child that commits a CDR and a reservation and then SIGKILLs itself loses nothing."""
    db = tmp_path / "crash.db"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(db), repr(T0)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert -signal.SIGKILL == proc.returncode, proc.stderr
    assert "committed\n" == proc.stdout
    assert (tmp_path / "crash.db-wal").exists()  # the commits sit in the WAL, not yet checkpointed

    with SQLiteStore(db) as s:
        records = s.cdrs()
        assert [("done", Outcome.ANSWERED, 30.0)] == [
            (r.call_id, r.outcome, r.talk_seconds) for r in records
        ]
        assert [("in-flight", "c1")] == s.open_reservations()
        assert 1 == s.recover(T0 + 100)
        usage = s.card_usage("c1", T0 + 101)
    # Both starts still count (the in-flight one over-counts, never under-counts).
    assert (T0, T0 + 50) == usage.call_starts
    assert 0 == usage.in_use
    assert 30.0 == usage.talk_seconds_today


def test_manual_checkpoint_moves_wal_into_the_database(tmp_path: Path) -> None:
    """With autocheckpoint off, checkpoint() copies every WAL page and keeps the data."""
    db = tmp_path / "ckpt.db"
    s = SQLiteStore(db, autocheckpoint=False)
    for i in range(50):
        s.add_cdr(CallRecord(f"k{i}", T0 + i, "+8613811110001", Outcome.BUSY, 486))
    log, copied = s.checkpoint()
    assert log > 0
    assert log == copied
    s.close()
    with SQLiteStore(db) as again:
        assert 50 == len(again.cdrs())
    assert (0, 0) == SQLiteStore(":memory:").checkpoint()


RACER = textwrap.dedent(
    """
    import sys
    from gateway.store import QuotaExceeded, SQLiteStore
    from policies.quotas import QuotaProfile

    path, name, t0 = sys.argv[1], sys.argv[2], float(sys.argv[3])
    s = SQLiteStore(path, busy_timeout_ms=5000)
    won = 0
    for i in range(40):
        try:
            s.reserve("c1", f"{name}-{i}", "+8613811110001", t0 + i * 0.001,
                      profile=QuotaProfile(concurrent=1))
            won += 1
        except QuotaExceeded:
            continue
    print(won)
    """
)


def test_reserve_is_atomic_across_processes(tmp_path: Path) -> None:
    """Four processes racing for a one-call card: exactly one reservation commits."""
    db = tmp_path / "race.db"
    with SQLiteStore(db) as s:
        s.upsert_card(StoredCard("c1", "carrier-a", "+8613800000001", "main", since=T0))
    root = Path(__file__).resolve().parents[2]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(db), f"p{n}", repr(T0)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=root,
        )
        for n in range(4)
    ]
    wins = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert 1 == sum(wins)
    with SQLiteStore(db) as s:
        assert 1 == len(s.open_reservations())

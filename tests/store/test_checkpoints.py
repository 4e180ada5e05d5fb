"""The running gateway checkpoints its store's WAL in a thread, never in a commit.

SQLite's own checkpoint runs inside the commit that crosses 1,000 WAL pages: it
writes the database file and fsyncs it on the event loop. ``dialgate run`` turns
that off (a backstop far above stays) and checkpoints every CHECKPOINT_INTERVAL
in a worker thread instead.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from gateway.callpath import element
from gateway.callpath.cdr import CallRecord, Outcome
from gateway.callpath.element import Gateway
from gateway.store.sqlite import WAL_BACKSTOP_PAGES
from tests.callpath.conftest import Carrier, gateway_settings

from .conftest import T0


def in_the_file_alone(db: Path) -> int:
    """CDRs in the database file itself, the WAL ignored (what checkpoints copied)."""
    ro = sqlite3.connect(f"file:{db}?immutable=1", uri=True)
    try:
        return int(ro.execute("SELECT COUNT(*) FROM cdrs").fetchone()[0])
    finally:
        ro.close()


async def test_commits_leave_the_wal_to_the_checkpoint_thread(tmp_path: Path) -> None:
    carrier = Carrier()
    await carrier.start()
    db = tmp_path / "gw.db"
    gw = Gateway(gateway_settings(carrier.address, db))
    await gw.start()
    try:
        assert gw.store is not None
        pages = gw.store._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        assert WAL_BACKSTOP_PAGES == pages  # SQLite's own only as a backstop
        await asyncio.sleep(element.CHECKPOINT_INTERVAL * 2.5)
        done = gw.checkpoints["done"]
        assert done >= 1
        # Rounds paused (the one in flight finished), so only the commits could copy.
        assert gw._checkpoints is not None
        gw._checkpoints.cancel()
        await asyncio.gather(gw._checkpoints, gw._checkpoint, return_exceptions=True)
        before = in_the_file_alone(db)
        for i in range(600):  # more pages than SQLite's default mark of 1,000
            gw.store.add_cdr(CallRecord(f"k{i}", T0 + i, "+8613811110001", Outcome.BUSY, 486))
        # The commits themselves checkpointed nothing: the file has none of the rows yet.
        assert before == in_the_file_alone(db)
        gw._checkpoints = asyncio.ensure_future(gw._checkpoint_rounds(gw.store))
        for _ in range(40):
            await asyncio.sleep(element.CHECKPOINT_INTERVAL / 2)
            if in_the_file_alone(db) == before + 600:
                break
        assert before + 600 == in_the_file_alone(db)
        assert gw.checkpoints["done"] > done
        assert 0 == gw.checkpoints["failed"]
    finally:
        await gw.close()
        await carrier.close()

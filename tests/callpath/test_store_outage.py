"""A store outage loses no CDR and resets no counter (real SQLite, real lock, real sockets).

The outage is a second connection holding SQLite's exclusive lock: the
gateway's writes fail after the store's busy timeout, as behind a stuck backup
or a full disk. Calls that need a reservation are refused (fail closed: 503
``store-unavailable``); calls already up still end normally; what could not
be written (the reservation's finish, the CDRs) is written once the store is
back.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from simulator.testkit import eventually
from tests.callpath.conftest import Rig


@contextmanager
def store_locked(db: Path) -> Iterator[None]:
    other = sqlite3.connect(db, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


async def test_call_ending_during_an_outage_keeps_its_cdr_and_frees_its_card_after(
    rig: Rig,
) -> None:
    store = rig.gateway.store
    assert store is not None
    resp, invite = await rig.alice.call("13912345678")
    assert 200 == resp.status
    assert 1 == store.card_usage("c1", time.time()).in_use
    spool = Path(str(store.path) + ".cdr-spool.jsonl")
    with store_locked(rig.db):
        assert 200 == (await rig.alice.send_in_dialog(invite.call_id, "BYE")).status
        refused, _ = await rig.alice.call("13912345679")
        assert 503 == refused.status
        assert 'text="store-unavailable"' in (refused.headers.get("Reason") or "")
        assert refused.headers.get("Retry-After")
        # Both CDRs wait in the spool file beside the database.
        await eventually(lambda: spool.exists() and len(spool.read_text().splitlines()) == 2)
    # Still counted as in progress until the finish lands: an over-count, never lower.
    assert 1 == store.card_usage("c1", time.time()).in_use
    # The store's guard closes once its probe writes again; the gateway then flushes
    # what the outage held back by itself (finish, dialog row, then both CDRs at once).
    await eventually(lambda: store.guard.healthy and not spool.exists())
    assert [] == store.call_dialogs()
    assert not spool.exists()
    usage = store.card_usage("c1", time.time())
    assert 0 == usage.in_use
    cdrs = {r.call_id: r for r in store.cdrs()}
    assert "answered" == str(cdrs[invite.call_id].outcome)
    assert ["answered", "blocked"] == sorted(str(r.outcome) for r in cdrs.values())
    assert 0 == rig.gateway.flush_spooled()

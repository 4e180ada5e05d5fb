"""What one call writes to the store: three commits, each all or nothing.

The start (the card's reservation and the write-ahead B-leg row) is one commit
made before the INVITE leaves; the answer (both confirmed dialogs, the answered CDR:
an update of that row, whose stored INVITEs are not written again) one; the end
(the reservation finished, the stored row deleted, the CDR) one. A crash between
two of them leaves a state the next start repairs (see ``recovery``); a crash can
no longer leave a counted start without its row.
"""

from __future__ import annotations

import time

import pytest

from gateway.store.spool import record_from_json
from simulator.testkit import eventually
from tests.callpath.conftest import Rig


def transactions(statements: list[str]) -> list[list[str]]:
    """The statements of each committed write transaction, in order (reads, and the
    read-only snapshots of a card's counters being rebuilt, left out)."""
    out: list[list[str]] = []
    current: list[str] | None = None
    for sql in statements:
        word = sql.split(None, 1)[0].upper()
        if word == "BEGIN":
            current = []
        elif word == "COMMIT" and current is not None:
            if current:
                out.append(current)
            current = None
        elif current is not None and word in ("INSERT", "UPDATE", "DELETE"):
            current.append(" ".join(sql.split()[:3]))
    return out


async def test_one_call_is_three_commits_start_answer_end(rig: Rig) -> None:
    store = rig.gateway.store
    assert store is not None
    seen: list[str] = []
    store._db.set_trace_callback(seen.append)
    try:
        resp, invite = await rig.alice.call("13912345678")
        assert 200 == resp.status
        [row] = store.call_dialogs()
        assert (row.answer_at, row.a_leg, row.b_leg) != (None, None, None)
        assert None not in (row.a_invite, row.b_invite)  # as the write-ahead stored them
        draft = record_from_json(row.cdr or "")
        assert (200, draft.answer_at) == (draft.final_code, row.answer_at)
        assert 200 == (await rig.alice.send_in_dialog(invite.call_id, "BYE")).status
        await eventually(lambda: len(store.cdrs()) == 1)
    finally:
        store._db.set_trace_callback(None)
    version = "INSERT INTO card_usage_versions"  # the card's change counter, with its rows
    assert [
        ["INSERT INTO call_starts", version, "INSERT OR REPLACE"],  # before the INVITE left
        ["UPDATE call_dialogs SET"],  # the answer: both dialogs and the CDR
        ["UPDATE call_starts SET", version, "DELETE FROM call_dialogs", "INSERT INTO cdrs"],
    ] == transactions(seen)
    assert [] == store.call_dialogs()
    assert 0 == store.card_usage("c1", time.time()).in_use


async def test_an_answer_without_its_row_writes_the_whole_row(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer's update finds no row (taken by an outage, say): the answered call is
    written whole, so a restart can still hang it up."""
    store = rig.gateway.store
    assert store is not None
    monkeypatch.setattr(store, "answer_call_dialogs", lambda key, **_: False)
    resp, invite = await rig.alice.call("13912345678")
    assert 200 == resp.status
    [row] = store.call_dialogs()
    assert None not in (row.answer_at, row.a_leg, row.b_leg, row.a_invite, row.b_invite)
    assert 200 == record_from_json(row.cdr or "").final_code
    assert 200 == (await rig.alice.send_in_dialog(invite.call_id, "BYE")).status
    await eventually(lambda: len(store.cdrs()) == 1)
    assert [] == store.call_dialogs()

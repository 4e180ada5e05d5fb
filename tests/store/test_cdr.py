"""Call detail records: storage round trip, outcomes, masking and CSV export."""

from __future__ import annotations

import csv
import io

import pytest

from gateway.callpath.cdr import (
    CSV_COLUMNS,
    CallRecord,
    Origin,
    Outcome,
    outcome_for_status,
    write_csv,
)
from gateway.store import SQLiteStore

from .conftest import T0

CALLEE = "+8613812345678"


def _record(call_id: str = "call-1", **kw: object) -> CallRecord:
    base: dict[str, object] = {
        "call_id": call_id,
        "attempt_at": T0,
        "destination": CALLEE,
        "outcome": Outcome.ANSWERED,
        "final_code": 200,
        "origin_kind": Origin.DIALER,
        "origin": "dialer-1",
        "campaign": "spring-promo",
        "cards": ("c1", "c2"),
        "ring_at": T0 + 2,
        "answer_at": T0 + 8,
        "end_at": T0 + 68.5,
        "failovers": 1,
    }
    base.update(kw)
    return CallRecord(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.ANSWERED),
        (486, Outcome.BUSY),
        (480, Outcome.NO_ANSWER),
        (603, Outcome.DECLINED),
        (404, Outcome.NOT_FOUND),
        (487, Outcome.CANCELLED),
        (500, Outcome.FAILED),
    ],
)
def test_outcome_for_status(status: int, outcome: Outcome) -> None:
    """Final SIP codes map to the outcomes reports show."""
    assert outcome == outcome_for_status(status)


def test_cdr_round_trip_including_blocked_calls(store: SQLiteStore) -> None:
    """Answered, blocked and no-card records come back exactly as written."""
    answered = _record()
    blocked = _record(
        "call-2",
        attempt_at=T0 + 1,
        outcome=Outcome.BLOCKED,
        final_code=403,
        cards=(),
        ring_at=None,
        answer_at=None,
        end_at=None,
        failovers=0,
        policy_reason="no-consent",
        origin_kind=Origin.AGENT,
        origin="alice",
    )
    no_card = _record(
        "call-3",
        attempt_at=T0 + 2,
        outcome=Outcome.NO_CARD,
        final_code=503,
        answer_at=None,
        policy_reason="no-card-available",
    )
    store.add_cdr(answered)
    store.add_cdrs([blocked, no_card])
    assert [answered, blocked, no_card] == store.cdrs()
    assert [blocked] == store.cdrs(call_id="call-2")
    assert [blocked, no_card] == store.cdrs(since=T0 + 1)
    assert [answered] == store.cdrs(until=T0 + 1)
    assert "c2" == answered.card
    assert 60.5 == answered.talk_seconds
    assert None is blocked.card
    assert 0.0 == blocked.talk_seconds


def test_csv_export_masks_destinations_by_default(store: SQLiteStore) -> None:
    """The CSV export never shows a clear callee number unless asked to."""
    store.add_cdr(_record())
    out = io.StringIO()
    assert 1 == write_csv(store.cdrs(), out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert list(CSV_COLUMNS) == list(rows[0].keys())
    assert "+86138****5678" == rows[0]["destination"]
    assert CALLEE not in out.getvalue()
    assert "c1 c2" == rows[0]["cards"]
    assert "60.5" == rows[0]["talk_seconds"]


def test_csv_export_clear_numbers_when_configured(store: SQLiteStore) -> None:
    """``mask=False`` (configured exports) writes the stored E.164 number."""
    store.add_cdr(_record())
    out = io.StringIO()
    write_csv(store.cdrs(), out, mask=False)
    assert CALLEE in out.getvalue()

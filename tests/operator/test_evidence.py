"""The appeal evidence pack: every kind of evidence present, as of the call, masked, readable."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from html.parser import HTMLParser
from pathlib import Path

from gateway.callpath.cdr import CallRecord, Origin, Outcome
from gateway.operator.evidence import build_evidence, daily_usage, write_evidence_zip
from gateway.operator.service import Operator
from policies.quotas import QuotaProfile

from .conftest import T0

CONSENTED = "+8613912345678"
LISTED_LATER = "+8613987654321"
BLOCKED = "+8613700001111"
COMPLAINER = "+8613600002222"


class _Sections(HTMLParser):
    """Collects section ids, their h2 titles and table rows per section."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, dict[str, object]] = {}
        self._section: str | None = None
        self._in_h2 = False
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "section":
            self._section = dict(attrs)["id"] or ""
            self.sections[self._section] = {"title": "", "rows": []}
        elif tag == "h2":
            self._in_h2 = True
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2":
            self._in_h2 = False
        elif tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._section is not None and self._row is not None:
            rows = self.sections[self._section]["rows"]
            assert isinstance(rows, list)
            rows.append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._in_h2 and self._section is not None:
            self.sections[self._section]["title"] = (
                str(self.sections[self._section]["title"]) + data
            )
        if self._cell is not None:
            self._cell.append(data)


def _populate(op: Operator) -> None:
    op.store.add_consent(CONSENTED, T0 - 86400, campaign="", source="web-form", evidence="form-77")
    calls = [
        CallRecord(
            call_id="call-a",
            attempt_at=T0 + 100,
            destination=CONSENTED,
            outcome=Outcome.ANSWERED,
            final_code=200,
            origin_kind=Origin.AGENT,
            origin="alice",
            campaign="spring",
            cards=("c1",),
            ring_at=T0 + 101,
            answer_at=T0 + 105,
            end_at=T0 + 185,
        ),
        CallRecord(
            call_id="call-b",
            attempt_at=T0 + 400,
            destination=LISTED_LATER,
            outcome=Outcome.NO_ANSWER,
            final_code=480,
            origin="alice",
            campaign="spring",
            cards=("c2", "c1"),
            failovers=1,
            end_at=T0 + 430,
        ),
        CallRecord(
            call_id="call-c",
            attempt_at=T0 + 500,
            destination=BLOCKED,
            outcome=Outcome.BLOCKED,
            final_code=403,
            origin="alice",
            campaign="spring",
            policy_reason="no-consent",
        ),
        CallRecord(
            call_id="call-d",
            attempt_at=T0 + 600,
            destination=COMPLAINER,
            outcome=Outcome.ANSWERED,
            final_code=200,
            origin="alice",
            cards=("c1",),
            answer_at=T0 + 610,
            end_at=T0 + 613,
        ),
        CallRecord(  # another card's call: must not appear
            call_id="call-e",
            attempt_at=T0 + 700,
            destination=CONSENTED,
            outcome=Outcome.ANSWERED,
            final_code=200,
            origin="bob",
            cards=("c2",),
            answer_at=T0 + 701,
            end_at=T0 + 760,
        ),
    ]
    op.store.add_cdrs(calls)
    op.store.add_dnc(LISTED_LATER, T0 + 5000, source="opt-out")
    op.complaint_add(
        COMPLAINER, actor="dana", now=T0 + 3600, call_id="call-d", note=f"rude; also {CONSENTED}"
    )
    op.manager.on_response(
        "c1", 403, "Forbidden", now=T0 + 7200, warning='399 carrier "line blocked: complaints"'
    )
    op.update_record(
        "c1", {"holder": "Li Wei", "registered_number": "+8613555550000"}, actor="dana", now=T0
    )


def test_evidence_pack_contains_calls_blocks_complaints_usage_and_carrier_response(
    operator: Operator, tmp_path: Path
) -> None:
    """Calls with consent/DNC as of the call, the block, the complaint, usage and the 403 are all in."""
    _populate(operator)
    pack = build_evidence(operator, "c1", since=T0, now=T0 + 9000)
    out = tmp_path / "pack.zip"
    members = write_evidence_zip(pack, out)
    assert {
        "evidence.json",
        "calls.csv",
        "blocked.csv",
        "complaints.csv",
        "usage.csv",
        "transitions.csv",
        "summary.html",
    } == set(members)

    with zipfile.ZipFile(out) as archive:
        texts = {name: archive.read(name).decode() for name in archive.namelist()}
    doc = json.loads(texts["evidence.json"])

    calls = {c["call_id"]: c for c in doc["calls"]}
    assert ["call-a", "call-b", "call-d"] == sorted(calls)
    assert "+86139****5678" == calls["call-a"]["callee"]
    assert 80.0 == calls["call-a"]["duration_seconds"]
    assert ("granted", "web-form", "form-77") == (
        calls["call-a"]["consent"]["status"],
        calls["call-a"]["consent"]["source"],
        calls["call-a"]["consent"]["evidence"],
    )
    # Listed only after the call: the check behind the call said clear.
    assert {"status": "clear", "note": "listed-later"} == {
        k: calls["call-b"]["dnc"][k] for k in ("status", "note")
    }
    # Complaint at T0+3600 put the number on the DNC list after call-d: clear at the time.
    assert "clear" == calls["call-d"]["dnc"]["status"]

    assert [("call-c", "no-consent", 403)] == [
        (b["call_id"], b["policy_reason"], b["final_code"]) for b in doc["blocked"]
    ]
    assert [("+86136****2222", "call-d", "alice")] == [
        (c["callee"], c["call_id"], c["agent"]) for c in doc["complaints"]
    ]
    suspension = [t for t in doc["transitions"] if t["to"] == "suspended"]
    assert 1 == len(suspension)
    assert "SIP/2.0 403 Forbidden" == suspension[0]["carrier_response"]
    assert "line blocked" in suspension[0]["warning"]
    usage = {u["limit"]: u for u in doc["usage"]}
    assert 3 == usage["calls_per_day"]["used"] and 300 == usage["calls_per_day"]["value"]
    assert usage["calls_per_day"]["within"]
    assert "+86135****0000" == doc["card"]["record"]["registered_number"]

    rows = list(csv.DictReader(io.StringIO(texts["calls.csv"])))
    assert ["granted", "none", "none"] == [r["consent_status"] for r in rows]

    # Nothing in the archive carries a callee or the registration number in clear.
    for clear in (CONSENTED, LISTED_LATER, BLOCKED, COMPLAINER, "+8613555550000"):
        for name, text in texts.items():
            assert clear not in text, (clear, name)

    parser = _Sections()
    parser.feed(texts["summary.html"])
    sections = parser.sections
    assert [
        "card",
        "summary",
        "transitions",
        "calls",
        "blocked",
        "complaints",
        "usage",
        "appeals",
    ] == list(sections)
    assert "Calls blocked by policy" == sections["blocked"]["title"]
    call_rows = sections["calls"]["rows"]
    assert isinstance(call_rows, list)
    assert 1 + 3 == len(call_rows)  # header + three calls
    assert "+86139****5678" in call_rows[1]
    blocked_rows = sections["blocked"]["rows"]
    assert isinstance(blocked_rows, list) and "no-consent" in blocked_rows[1]
    transition_rows = sections["transitions"]["rows"]
    assert isinstance(transition_rows, list)
    assert any(
        "SIP/2.0 403 Forbidden" in row and any("line blocked" in cell for cell in row)
        for row in transition_rows
    )
    usage_rows = sections["usage"]["rows"]
    assert isinstance(usage_rows, list)
    assert ["2026-11-02", "calls_per_day", "3", "300"] == usage_rows[1][:4]


def test_period_bounds_the_pack(operator: Operator) -> None:
    """Calls before ``since`` are left out; the suspension before it is still shown."""
    _populate(operator)
    pack = build_evidence(operator, "c1", since=T0 + 550, now=T0 + 9000, until=T0 + 8000)
    assert ["call-d"] == [c["call_id"] for c in pack.calls]
    assert [] == pack.blocked
    late = build_evidence(operator, "c1", since=T0 + 8000, now=T0 + 9000)
    assert [] == late.calls
    assert ["suspended"] == [t["to"] for t in late.transitions]


def test_daily_usage_reports_peaks_and_breaches() -> None:
    """Per-day usage: peaks over rolling windows, and a breached limit marked not within."""
    profile = QuotaProfile(name="p", calls_per_minute=2, calls_per_day=10, concurrent=1)
    calls = [
        CallRecord(
            call_id=f"x{i}",
            attempt_at=T0 + i * 10,
            destination="+8613900000000",
            outcome=Outcome.BUSY,
            final_code=486,
            cards=("c1",),
            end_at=T0 + i * 10 + 5,
        )
        for i in range(4)
    ]
    rows = {r["limit"]: r for r in daily_usage(calls, profile, "UTC")}
    assert (4, False) == (rows["calls_per_minute"]["used"], rows["calls_per_minute"]["within"])
    assert (4, True) == (rows["calls_per_day"]["used"], rows["calls_per_day"]["within"])
    assert 1 == rows["concurrent"]["used"]

"""Tests for the rehearsal report: totals, determinism, text, JSON and the PNG chart."""

from __future__ import annotations

import json
import struct
from functools import cache
from pathlib import Path

import pytest

from simulator.antifraud import AntiFraudThresholds
from simulator.models import CarrierEvent, EventKind, InviteSeen
from simulator.offline import CallOutcome, CallRecord, run_offline
from simulator.records import GatewayCardState
from simulator.report import Report, build_report, report_from_offline
from simulator.scenario import load_scenario
from tests.simulator.support import T0

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "scenarios"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@cache
def example_report(name: str) -> Report:
    """The report of one offline example run (pure, so computed once)."""
    return report_from_offline(run_offline(load_scenario(EXAMPLES / f"{name}.toml")))


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk, which must come first."""
    assert PNG_SIGNATURE == data[:8]
    assert b"IHDR" == data[12:16]
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_report_is_deterministic_for_a_seed() -> None:
    """Two runs of the same scenario give byte-identical JSON and text."""
    scenario = load_scenario(EXAMPLES / "suspension-storm.toml")
    first = report_from_offline(run_offline(scenario))
    second = report_from_offline(run_offline(scenario))
    assert first.to_json() == second.to_json()
    assert first.to_text() == second.to_text()
    other = report_from_offline(run_offline(scenario.model_copy(update={"seed": 12})))
    assert first.to_json() != other.to_json()


def test_totals_are_consistent() -> None:
    """attempts = placed + blocked; answered ≤ placed; per-card rows add up to the totals."""
    for name in ("unguarded", "guarded", "suspension-storm"):
        data = json.loads(example_report(name).to_json())
        totals = data["totals"]
        assert totals["attempts"] == totals["placed"] + totals["blocked"], name
        assert totals["answered"] <= totals["placed"]
        assert totals["placed"] == sum(c["placed"] for c in data["cards"])
        assert totals["answered"] == sum(c["answered"] for c in data["cards"])
        assert totals["blocked"] == sum(data["blocks_by_reason"].values())
        assert totals["attempts"] == sum(data["outcomes"].values())
        assert totals["suspensions"] == len(data["suspensions"])


def test_unguarded_report_shows_suspensions_and_exhaustion() -> None:
    """The unguarded report lists each card's suspension with cause and local time."""
    data = json.loads(example_report("unguarded").to_json())
    assert 4 == data["totals"]["suspensions"]
    entry = data["suspensions"][0]
    assert {"card", "time", "offset_seconds", "local_time", "reason", "cause"} == set(entry)
    assert entry["local_time"].startswith("2026-03-02T09:")
    assert entry["local_time"].endswith("+08:00")
    assert "calls per hour 51 > 50" == entry["cause"]
    assert data["totals"]["gateway_503"] == data["blocks_by_reason"]["no-card-available"]
    assert all(card["state"] == "suspended (abnormal-use)" for card in data["cards"])
    assert 50 == data["carrier_thresholds"]["calls_per_hour"]


def test_storm_report_counts_carrier_503_and_failovers() -> None:
    """The storm report shows the maintenance 503, the failovers and card marks by status."""
    data = json.loads(example_report("suspension-storm").to_json())
    assert 1 == data["totals"]["carrier_503"]
    assert data["totals"]["failovers"] >= 4
    assert 1 == data["gateway_card_marks_by_status"]["503"]
    assert data["gateway_card_marks_by_status"]["403"] >= 1


def test_text_report_has_the_headline_numbers() -> None:
    """The terminal text carries calls, ASR, blocks by reason, suspensions and the card table."""
    report = example_report("guarded")
    text = report.to_text()
    assert text.startswith("Scenario 'guarded' (seed 7)")
    assert f"attempts      {report.attempts}" in text
    assert "ASR " in text
    assert "no-consent" in text
    assert "suspensions   0" in text
    for card in ("c1", "c2", "c3", "c4"):
        assert f"\n  {card} " in text


def test_report_never_shows_full_callee_numbers() -> None:
    """Only masked numbers can appear in the report output."""
    report = example_report("suspension-storm")
    assert "+8613912345678" not in report.to_json() + report.to_text()


def test_png_chart_is_a_valid_image(tmp_path: Path) -> None:
    """The chart is a real PNG: signature, IHDR dimensions, readable by matplotlib, not tiny."""
    report = example_report("unguarded")
    path = report.write_png(tmp_path / "unguarded.png", dpi=60)
    data = path.read_bytes()
    width, height = png_size(data)
    assert (720, 720) == (width, height)  # 12 in wide; 4 cards x 2.8 in + 0.8 in tall, at 60 dpi
    assert len(data) > 20_000
    image = pytest.importorskip("matplotlib.image").imread(path)
    assert (720, 720) == image.shape[:2]
    assert image.std() > 0.05  # not a blank canvas


def test_png_chart_for_one_card(tmp_path: Path) -> None:
    """A one-card run draws a one-row chart with no thresholds configured."""
    events = [
        CarrierEvent(T0 + 60 * i, "c1", EventKind.ACCEPTED, 200, "+86139****0001")
        for i in range(30)
    ]
    report = build_report(
        name="tiny",
        seed=1,
        start=T0,
        end=T0 + 7200,
        timezone="Asia/Shanghai",
        thresholds=AntiFraudThresholds(),
        cards=["c1"],
        events=events,
        calls=[],
    )
    width, height = png_size(report.write_png(tmp_path / "tiny.png", dpi=50).read_bytes())
    assert (600, 180) == (width, height)


def test_build_report_from_hand_made_records() -> None:
    """Totals, ASR and suspension entries are computed from events and call records alone."""
    events = [
        CarrierEvent(T0, "c1", EventKind.ACCEPTED, 200, "+86139****0001"),
        CarrierEvent(T0 + 10, "c1", EventKind.ACCEPTED, 486, "+86139****0002"),
        CarrierEvent(T0 + 100, "c1", EventKind.COMPLAINT, None, "+86139****0001"),
        CarrierEvent(
            T0 + 120, "c1", EventKind.SUSPENDED, 403, None, "complaints 1 > 0", "violation"
        ),
        CarrierEvent(T0 + 130, "c2", EventKind.REJECTED_MAINTENANCE, 503, "+86139****0003"),
        CarrierEvent(T0 + 140, "c2", EventKind.REJECTED_ARREARS, 402, "+86139****0003"),
    ]
    calls = [
        CallRecord(T0, "alice", "+86139****0001", "c1", CallOutcome.ANSWERED, 200, talk_seconds=90),
        CallRecord(T0 + 10, "alice", "+86139****0002", "c1", CallOutcome.BUSY, 486),
        CallRecord(
            T0 + 130,
            "alice",
            "+86139****0003",
            "c2",
            CallOutcome.BLOCKED,
            503,
            "no-card-available",
            2,
        ),
        CallRecord(T0 + 150, "bob", "+86139****0004", None, CallOutcome.BLOCKED, 403, "no-consent"),
    ]
    report = build_report(
        name="hand",
        seed=0,
        start=T0,
        end=T0 + 3600,
        timezone="Asia/Shanghai",
        thresholds=AntiFraudThresholds(),
        cards=["c1", "c2"],
        events=events,
        calls=calls,
    )
    data = report.to_dict()
    assert {
        "attempts": 4,
        "placed": 2,
        "answered": 1,
        "asr": 0.5,
        "blocked": 2,
        "failovers": 2,
        "carrier_503": 1,
        "carrier_402": 1,
        "cards_in_arrears": 1,  # c2: refused 402 and never topped up; no suspension
        "gateway_503": 1,
        "complaints": 1,
        "suspensions": 1,
        "cards_wrongly_out": None,  # the gateway's card states were not given
        "callees_redialled": 0,
        "callees_invited_more_than_once": 0,
    } == data["totals"]
    assert {"no-card-available": 1, "no-consent": 1} == data["blocks_by_reason"]
    assert [
        {
            "card": "c1",
            "time": T0 + 120,
            "offset_seconds": 120,
            "local_time": "2026-03-02T10:02:00+08:00",
            "reason": "violation",
            "cause": "complaints 1 > 0",
        }
    ] == data["suspensions"]
    c1 = data["cards"][0]
    assert (2, 1, 1.5, 1, "suspended (violation)") == (
        c1["placed"],
        c1["answered"],
        c1["talk_minutes"],
        c1["complaints"],
        c1["state"],
    )
    assert ["c2"] == data["cards_in_arrears"]
    assert ("arrears", 1) == (data["cards"][1]["state"], data["cards"][1]["refused_402"])
    assert "arrears       1   cards blocked by balance (c2), 402 refusals 1" in report.to_text()


def test_restore_returns_card_to_active_and_empty_run_has_no_asr() -> None:
    """A restore after a suspension leaves the card active; with nothing placed ASR is n/a."""
    events = [
        CarrierEvent(T0, "c1", EventKind.SUSPENDED, 403, None, "manual", "manual"),
        CarrierEvent(T0 + 5, "c1", EventKind.RESTORED, None, None, "manual", "manual"),
    ]
    report = build_report(
        name="empty",
        seed=0,
        start=T0,
        end=T0 + 60,
        timezone="UTC",
        thresholds=AntiFraudThresholds(),
        cards=["c1"],
        events=events,
        calls=[],
    )
    assert report.asr is None
    assert "active" == report.cards[0].state
    assert "ASR n/a" in report.to_text()


def _report(
    events: list[CarrierEvent],
    invites: list[InviteSeen],
    gateway: list[GatewayCardState] | None,
) -> Report:
    return build_report(
        name="checks",
        seed=0,
        start=T0,
        end=T0 + 3600,
        timezone="Asia/Shanghai",
        thresholds=AntiFraudThresholds(),
        cards=["c1", "c2", "c3"],
        events=events,
        calls=[],
        invites_seen=invites,
        gateway_cards=gateway,
    )


def test_cards_wrongly_out_are_the_gateways_refusals_without_carrier_evidence() -> None:
    """Out at the gateway (suspended or suspect) while the carrier never refused the card: wrongly
    out; a card the carrier suspended is rightly out; active and probation are in service."""
    events = [CarrierEvent(T0 + 5, "c2", EventKind.SUSPENDED, 403, None, "calls", "abnormal-use")]
    gateway = [
        GatewayCardState("c1", "suspect"),
        GatewayCardState("c2", "suspended", "abnormal-use"),
        GatewayCardState("c3", "probation"),
    ]
    report = _report(events, [], gateway)
    assert ["c1"] == report.cards_wrongly_out
    data = report.to_dict()
    assert 1 == data["totals"]["cards_wrongly_out"]
    assert ["c1"] == data["cards_wrongly_out"]
    assert {"card": "c2", "state": "suspended", "reason": "abnormal-use"} in data["gateway_cards"]
    assert ["suspect", "suspended (abnormal-use)", "probation"] == [
        c["gateway_state"] for c in data["cards"]
    ]
    text = report.to_text()
    assert "wrongly out   1   cards out of service at the gateway" in text
    assert "(c1)" in text
    assert "gateway: suspect" in text
    # Another card-level refusal by the carrier (here 402 arrears) is evidence too.
    arrears = [CarrierEvent(T0, "c1", EventKind.REJECTED_ARREARS, 402, "+86139****0001")]
    assert (
        []
        == _report(arrears, [], [GatewayCardState("c1", "suspended", "arrears")]).to_dict()[
            "cards_wrongly_out"
        ]
    )


def test_unknown_gateway_states_say_so() -> None:
    """Without the gateway's card states the count is null in JSON and n/a in the text."""
    report = _report([], [], None)
    assert report.to_dict()["totals"]["cards_wrongly_out"] is None
    assert "wrongly out   n/a" in report.to_text()


def test_callees_redialled_count_two_cards_within_the_window() -> None:
    """Put through from two cards < 60 s apart: redialled. Same card, a card-level refusal
    before the failover, or a minute and more apart: not. Any second INVITE: more than once."""
    invites = [
        # callee 0: c1 then c2 30 s later, both put through → redialled
        InviteSeen(T0, "c1", 0, True),
        InviteSeen(T0 + 30, "c2", 0, True),
        # callee 1: refused at card level on c1 (suspended), put through on c2 → a failover
        InviteSeen(T0 + 40, "c1", 1, False),
        InviteSeen(T0 + 41, "c2", 1, True),
        # callee 2: twice on the same card
        InviteSeen(T0 + 50, "c3", 2, True),
        InviteSeen(T0 + 55, "c3", 2, True),
        # callee 3: two cards, 60 s apart
        InviteSeen(T0 + 100, "c1", 3, True),
        InviteSeen(T0 + 160, "c2", 3, True),
        # callee 4: once
        InviteSeen(T0 + 200, "c1", 4, True),
    ]
    report = _report([], invites, None)
    assert (1, 4) == (report.callees_redialled, report.callees_invited_more_than_once)
    totals = report.to_dict()["totals"]
    assert (1, 4) == (totals["callees_redialled"], totals["callees_invited_more_than_once"])
    assert 60.0 == report.to_dict()["redial_window_seconds"]
    text = report.to_text()
    assert "redialled     1   callees put through from 2+ cards within 60 s" in text
    assert "re-INVITEd    4   callees INVITEd more than once" in text


def test_ambiguous_carrier_offline_report() -> None:
    """The shipped ambiguous-carrier example offline: every destination answer occurs, the
    stand-in gateway takes no card out and dials nobody twice."""
    report = example_report("ambiguous-carrier")
    data = json.loads(report.to_json())
    assert 0 == data["totals"]["cards_wrongly_out"]
    assert 0 == data["totals"]["callees_redialled"]
    assert [] == data["suspensions"]
    assert data["outcomes"]["refused"] > 0 and data["outcomes"]["failed"] > 0
    assert {"active"} == {c["gateway_state"] for c in data["cards"]}
    assert {"max_calls_per_callee": 2, "max_cards_per_callee": 1, "callee_window": 3600.0} == {
        k: data["carrier_thresholds"][k]
        for k in ("max_calls_per_callee", "max_cards_per_callee", "callee_window")
    }

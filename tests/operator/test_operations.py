"""DNC, consent and complaint operations, and the alerts that prevent the next suspension."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from gateway.operator.service import (
    BadRequest,
    Operator,
    parse_duration,
    parse_time,
    run_alert_loop,
)
from gateway.telemetry.alerts import AlertThresholds, assess_agent, assess_card
from gateway.telemetry.events import Alert, AlertKind
from policies.quotas import (
    CallOutcome,
    CardSnapshot,
    CardState,
    CardUsage,
    QuotaProfile,
    StartTimes,
)

from .conftest import T0


def test_dnc_import_keeps_good_lines_and_reports_bad_ones_by_number(operator: Operator) -> None:
    """Bad lines come back with their line numbers; good ones land on the internal list."""
    lines = ["+8613800001111", "", "garbage", "13800002222", "+8613800001111", "12"]
    result = operator.dnc_import(lines, actor="dana", now=T0)
    assert (2, 1) == (result.added, result.unchanged)
    assert [3, 6] == [line for line, _ in result.errors]
    assert operator.store.is_dnc("+8613800002222")
    entries = operator.db.audit_entries()
    assert [("dnc.import", "dana")] == [(e.action, e.actor) for e in entries]


def test_consent_import_survives_a_lone_carriage_return(operator: Operator) -> None:
    """A CR inside the CSV is a line break, not a crash; bad rows are reported by line."""
    text = (
        "number,campaign,granted_at,expires_at,source,evidence\r"
        "+8613700003333,*,2026-11-01T00:00:00+00:00,,web,f-1\r\n"
        "+8613700004444,spring,2026-11-01,,web,f-2\n"
    )
    result = operator.consent_import(text, actor="dana", now=T0)
    assert 1 == result.added
    assert [3] == [line for line, _ in result.errors]
    assert "granted" == operator.lookup_number("+8613700003333", now=T0)["consent"]["status"]


def test_consent_add_and_revoke(operator: Operator) -> None:
    """Consent for a campaign is granted, then revoked; the lookup follows, number masked."""
    shown = operator.consent_add("13700005555", actor="dana", now=T0, campaign="spring")
    assert ("+86137****5555", "granted") == (shown["number"], shown["consent"]["status"])
    shown = operator.consent_revoke("13700005555", actor="dana", now=T0 + 5, campaign="spring")
    assert "revoked" == shown["consent"]["status"]
    with pytest.raises(BadRequest):
        operator.consent_add("123", actor="dana", now=T0)


def test_complaint_dncs_the_number_and_pauses_an_agent_over_the_ceiling(operator: Operator) -> None:
    """Three calls and one complaint against bob cross a 20 % ceiling: bob is paused, with an event."""
    operator.thresholds = dataclasses.replace(
        operator.thresholds, complaint_min_sample=3, complaint_rate_ceiling=0.2
    )
    for i in range(3):
        operator.store.reserve("c2", f"b{i}", f"+861390000000{i}", T0 + i * 60, agent="bob")
        operator.store.finish(f"b{i}", T0 + i * 60 + 30, answered=True, talk_seconds=20)
    result = operator.complaint_add(
        "+8613900000001", actor="dana", now=T0 + 600, agent="bob", card="c2", note="angry"
    )
    assert result["agent_paused"]
    assert operator.store.is_dnc("+8613900000001")
    usage = operator.store.agent_usage("bob", T0 + 601)
    assert usage.paused and "complaint rate" in usage.pause_reason
    assert ["complaint", "agent-paused"] == [e.kind for e in list(operator.events)[-2:]]
    operator.agent_resume("bob", actor="dana", now=T0 + 700)
    assert not operator.store.agent_usage("bob", T0 + 701).paused


def _snapshot(usage: CardUsage, **limits: object) -> CardSnapshot:
    profile = QuotaProfile(name="p", **limits)  # type: ignore[arg-type]
    return CardSnapshot(card_id="c1", state=CardState.ACTIVE, profile=profile, usage=usage)


def test_assess_card_finds_near_limits_and_a_low_answer_rate() -> None:
    """Four of five calls per minute → quota-near; answers near the floor → card-at-risk."""
    now = T0 + 1000
    usage = CardUsage(call_starts=StartTimes(tuple(now - 50 + i for i in range(4))), in_use=0)
    findings = assess_card(_snapshot(usage, calls_per_minute=5, calls_per_hour=60), now)
    assert [(AlertKind.QUOTA_NEAR, "calls_per_minute")] == [(f.kind, f.key) for f in findings]

    outcomes = tuple(
        CallOutcome(started_at=now - 900 + i * 10, answered=i % 5 == 0, talk_seconds=60.0)
        for i in range(24)
    )
    findings = assess_card(
        _snapshot(CardUsage(recent_outcomes=outcomes), answer_rate_floor=0.18), now
    )
    assert [(AlertKind.CARD_AT_RISK, "answer_rate")] == [(f.kind, f.key) for f in findings]
    assert [] == assess_card(
        dataclasses.replace(_snapshot(usage, calls_per_minute=5), state=CardState.SUSPENDED), now
    )


def test_assess_agent_needs_a_sample_and_a_rate_over_the_ceiling() -> None:
    """No finding below the sample or at the ceiling; one above it."""
    limits = AlertThresholds(complaint_rate_ceiling=0.02, complaint_min_sample=50)
    assert assess_agent("a", 49, 10, limits) is None
    assert assess_agent("a", 100, 2, limits) is None
    finding = assess_agent("a", 100, 3, limits)
    assert finding is not None and 0.03 == finding.detail["rate"]


def test_check_alerts_raises_once_per_crossing(operator: Operator, published: list[object]) -> None:
    """quota-near is published once while the card stays near its limit, again after it clears."""
    for i in range(4):
        operator.store.reserve("c1", f"q{i}", f"+86139000001{i:02d}", T0 + i, agent="alice")
        operator.store.finish(f"q{i}", T0 + i + 0.5, answered=False)
    first = operator.check_alerts(T0 + 10)
    assert [("c1", "calls_per_minute")] == [(a.card, a.reason) for a in first]
    assert [] == operator.check_alerts(T0 + 20)
    assert [] == operator.check_alerts(T0 + 200)  # the minute passed: cleared, re-armed
    operator.store.reserve("c1", "q9", "+8613900000199", T0 + 201, agent="alice")
    operator.store.finish("q9", T0 + 201.5, answered=False)
    for i in range(3):
        operator.store.reserve("c1", f"r{i}", f"+86139000002{i:02d}", T0 + 202 + i)
        operator.store.finish(f"r{i}", T0 + 202.5 + i, answered=False)
    again = operator.check_alerts(T0 + 210)
    assert ["calls_per_minute"] == [a.reason for a in again]
    assert 2 == len([e for e in published if isinstance(e, Alert)])


def test_time_and_duration_parsing() -> None:
    """Dates, ISO times and epochs parse; nonsense and out-of-range values are refused."""
    assert T0 == parse_time("2026-11-02")
    assert T0 + 3600 == parse_time("2026-11-02T01:00:00Z")
    assert T0 == parse_time(str(T0))
    assert 14 * 86400.0 == parse_duration("14d") == parse_duration(14)
    for bad in ("yesterday", "nan", "1e300", "-5"):
        with pytest.raises(BadRequest):
            parse_time(bad)
    for bad in ("0d", "forever", "inf"):
        with pytest.raises(BadRequest):
            parse_duration(bad)


async def test_alert_loop_publishes_and_stops(operator: Operator, published: list[object]) -> None:
    """The periodic runner publishes the alert once across rounds and ends when told to stop."""
    for i in range(4):
        operator.store.reserve("c1", f"l{i}", f"+86139000003{i:02d}", T0 + i)
        operator.store.finish(f"l{i}", T0 + i + 0.5, answered=False)
    stop = asyncio.Event()
    rounds: list[float] = []

    def clock() -> float:
        rounds.append(T0 + 10)
        return T0 + 10

    task = asyncio.create_task(run_alert_loop(operator, interval=0.01, stop=stop, clock=clock))
    async with asyncio.timeout(5):
        while len(rounds) < 3:
            await asyncio.sleep(0.01)
    stop.set()
    async with asyncio.timeout(5):
        await task
    assert [("c1", "calls_per_minute")] == [
        (e.card, e.reason) for e in published if isinstance(e, Alert)
    ]


async def test_alert_loop_can_run_the_card_timers(operator: Operator) -> None:
    """With run_timers, the loop lapses a probation whose end has passed (stand-alone admin)."""
    operator.suspend("c2", actor="dana", now=T0)
    operator.probation("c2", actor="dana", now=T0 + 1, duration=3600.0)
    stop = asyncio.Event()

    def clock() -> float:
        return T0 + 7200

    task = asyncio.create_task(
        run_alert_loop(operator, interval=0.01, stop=stop, clock=clock, run_timers=True)
    )
    async with asyncio.timeout(5):
        while operator.manager.get("c2").state != "active":
            await asyncio.sleep(0.01)
    stop.set()
    async with asyncio.timeout(5):
        await task
    assert "probation-over" == operator.store.transitions("c2")[-1].cause

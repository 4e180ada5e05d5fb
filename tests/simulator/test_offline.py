"""Tests for the offline rehearsal: the example scenarios replayed through the carrier models."""

from __future__ import annotations

import itertools
from collections import Counter
from functools import cache
from pathlib import Path

import pytest

from simulator.models import EventKind
from simulator.offline import CallOutcome, OfflineResult, run_offline
from simulator.scenario import load_scenario, loads_scenario
from tests.simulator.support import MINIMAL

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "scenarios"


@cache
def example(name: str) -> OfflineResult:
    """Run an example scenario once per test session (runs are pure and deterministic)."""
    return run_offline(load_scenario(EXAMPLES / f"{name}.toml"))


def suspended(result: OfflineResult) -> list[tuple[str, str]]:
    """(card, cause) of every suspension, in order."""
    return [(e.card, e.cause or "") for e in result.carrier.events if e.kind is EventKind.SUSPENDED]


def test_unguarded_traffic_trips_anti_fraud() -> None:
    """Without quotas every card crosses the carrier's hourly limit and the pool is burnt."""
    result = example("unguarded")
    causes = suspended(result)
    assert {"c1", "c2", "c3", "c4"} == {card for card, _ in causes}
    assert all("calls per hour 51 > 50" == cause for _, cause in causes)
    blocks = Counter(c.reason for c in result.calls if c.outcome is CallOutcome.BLOCKED)
    assert blocks["no-card-available"] > 0
    assert "no-consent" not in blocks
    assert sum(c.failovers for c in result.calls) > 0


def test_guarded_traffic_stays_under_the_carrier() -> None:
    """Same traffic with dialgate's policies: no suspension, no complaint, quotas hold."""
    result = example("guarded")
    assert [] == suspended(result)
    kinds = Counter(e.kind for e in result.carrier.events)
    assert 0 == kinds[EventKind.COMPLAINT]
    assert kinds[EventKind.ACCEPTED] > 500
    blocks = Counter(c.reason for c in result.calls if c.outcome is CallOutcome.BLOCKED)
    assert blocks["no-consent"] > 0
    quota = result.scenario.gateway.quota_profiles["default"].calls_per_hour
    assert quota is not None
    hourly = [
        e.counters["calls_hour"] for e in result.carrier.events if e.kind is EventKind.ACCEPTED
    ]
    assert quota == max(hourly)


def test_guarded_dials_only_consented_leads() -> None:
    """With consent required, only callees with consent reach the carrier."""
    text = (
        (EXAMPLES / "guarded.toml")
        .read_text()
        .replace("calling_hours", "mask_callees = false\ncalling_hours")
    )
    scenario = loads_scenario(text)
    consenting = {lead.number for lead in scenario.expand_leads() if lead.consent}
    result = run_offline(scenario)
    dialled = [e.callee for e in result.carrier.events if e.kind is EventKind.ACCEPTED]
    assert dialled
    assert set(dialled) <= consenting


def test_storm_exhausts_the_pool() -> None:
    """Scheduled suspensions take the cards one by one; afterwards every attempt gets 503."""
    result = example("suspension-storm")
    storm = result.scenario
    offsets = [
        (e.card, e.time - storm.start_epoch)
        for e in result.carrier.events
        if e.kind is EventKind.SUSPENDED
    ]
    assert [("c1", 3600.0), ("c2", 6000.0), ("c3", 8400.0), ("c4", 10800.0)] == offsets
    last = storm.start_epoch + 10800
    after = [c for c in result.calls if c.time > last + 60]
    assert after
    assert {("blocked", "no-card-available", 503)} == {
        (str(c.outcome), c.reason, c.status) for c in after
    }
    kinds = Counter(e.kind for e in result.carrier.events)
    assert 1 == kinds[EventKind.REJECTED_MAINTENANCE]
    assert kinds[EventKind.REJECTED_SUSPENDED] >= 1
    assert sum(c.failovers for c in result.calls) >= 4


def test_maintenance_marks_card_until_retry_after() -> None:
    """A 503 + Retry-After takes the card out only until the window ends."""
    result = example("suspension-storm")
    maintenance = [m for m in result.marks if m.status == 503]
    assert 1 == len(maintenance)
    mark = maintenance[0]
    assert "c2" == mark.card
    window_end = result.scenario.carrier.maintenance[0].end.timestamp()
    assert mark.until is not None and window_end == pytest.approx(mark.until, abs=1)
    later = [
        e
        for e in result.carrier.events
        if e.card == "c2" and e.kind is EventKind.ACCEPTED and e.time > mark.time
    ]
    assert later and later[0].time >= window_end


def test_each_placed_call_reaches_the_carrier_once() -> None:
    """A callee-level outcome never fails over: one ACCEPTED event per placed call record."""
    for name in ("unguarded", "guarded", "suspension-storm", "ambiguous-carrier"):
        result = example(name)
        placed = [c for c in result.calls if c.outcome is not CallOutcome.BLOCKED]
        accepted = [e for e in result.carrier.events if e.kind is EventKind.ACCEPTED]
        assert len(placed) == len(accepted), name
        assert [(c.time, c.card) for c in placed] == [(e.time, e.card) for e in accepted], name


def test_call_ends_are_reported_in_time_order() -> None:
    """record_call_end runs in business-time order, after its INVITE."""
    for name in ("unguarded", "guarded"):
        result = example(name)
        ends = [e.time for e in result.carrier.events if e.kind is EventKind.CALL_ENDED]
        assert ends == sorted(ends)
        assert len(ends) == sum(1 for e in result.carrier.events if e.kind is EventKind.ACCEPTED)


def test_run_is_deterministic_for_a_seed() -> None:
    """Two runs of the same scenario record identical calls and events; another seed differs."""
    scenario = load_scenario(EXAMPLES / "guarded.toml")
    first, second = run_offline(scenario), run_offline(scenario)
    assert first.calls == second.calls
    assert first.carrier.events == second.carrier.events
    reseeded = run_offline(scenario.model_copy(update={"seed": 99}))
    assert first.calls != reseeded.calls


def test_bound_card_suspended_fails_over_within_pool() -> None:
    """When the agent's card is suspended, its next call fails over once and lands on the next card."""
    text = MINIMAL.replace(
        "[[agents]]",
        '[[cards]]\nid = "c2"\nnumber = "+8613800000002"\nusername = "c2"\npassword = "pw"\npriority = 2\n\n'
        '[[carrier.scheduled_suspensions]]\ncard = "c1"\nat = 2026-03-02T09:30:00+08:00\n\n[[agents]]',
        1,
    )
    text += '\n[leads.generate]\ncount = 200\nprefix = "+86137"\nconsent_share = 1.0\n'
    result = run_offline(loads_scenario(text))
    switched = [c for c in result.calls if c.failovers]
    assert 1 == len(switched)
    assert ("c2", 1) == (switched[0].card, switched[0].failovers)
    t_switch = switched[0].time
    assert all(c.card == "c2" for c in result.calls if c.time > t_switch and c.card)
    assert all(c.card == "c1" for c in result.calls if c.time < t_switch and c.card)


def test_run_stops_at_duration_and_when_leads_run_out() -> None:
    """No attempt starts after the scenario's end; a short list is simply exhausted."""
    result = run_offline(loads_scenario(MINIMAL))
    assert 1 == len(result.calls)
    assert 0 == result.leads_left
    unguarded = example("unguarded")
    assert all(c.time < unguarded.scenario.end_epoch for c in unguarded.calls)


def test_calling_hours_block_outside_window() -> None:
    """A guarded run starting before the callee's calling hours blocks with calling-hours."""
    text = MINIMAL.replace("start = 2026-03-02T09:00:00+08:00", "start = 2026-03-02T06:00:00+08:00")
    text = text.replace("consent = true", 'consent = true\ntimezone = "Asia/Shanghai"')
    result = run_offline(loads_scenario(text))
    assert [("blocked", "calling-hours", 403)] == [
        (str(c.outcome), c.reason, c.status) for c in result.calls
    ]


def test_calling_hours_use_the_numbers_time_zone_when_the_lead_has_none() -> None:
    """Without a lead time zone the number's own zone decides: 06:00 in Shanghai is 14:00 in
    Los Angeles the day before, so a US callee is dialled while a Chinese one is blocked."""
    text = MINIMAL.replace("start = 2026-03-02T09:00:00+08:00", "start = 2026-03-02T06:00:00+08:00")
    text = text.replace(
        "consent = true",
        'consent = true\n\n[[leads.numbers]]\nnumber = "+14155550123"\nconsent = true',
    )
    result = run_offline(loads_scenario(text))
    assert [("+86139****5678", "calling-hours"), ("+1415****0123", None)] == [
        (c.callee, c.reason) for c in result.calls
    ]


def guarded_run(profile: str, duration: str = "2h") -> list[float]:
    """Run one agent on one card under ``profile`` (TOML lines); return accepted INVITE times."""
    text = MINIMAL.replace('duration = "2h"', f'duration = "{duration}"')
    text += '\n[leads.generate]\ncount = 400\nprefix = "+86137"\nconsent_share = 1.0\n'
    text += "\n[pacing]\ncalls_per_minute_per_agent = 6\nthink_seconds = 1\n"
    text += "\n[gateway.quota_profiles.default]\n" + profile + "\n"
    result = run_offline(loads_scenario(text))
    return [e.time for e in result.carrier.events if e.kind is EventKind.ACCEPTED]


def test_stand_in_gateway_enforces_calls_per_minute() -> None:
    """calls_per_minute = 1: no two calls start within 60 s on the card."""
    times = guarded_run("calls_per_minute = 1")
    assert len(times) > 10
    assert all(b - a >= 60 for a, b in itertools.pairwise(times))


def test_stand_in_gateway_enforces_min_gap() -> None:
    """min_gap_seconds = 300: consecutive starts are at least 5 minutes apart."""
    times = guarded_run("min_gap_seconds = 300")
    assert len(times) >= 20
    assert all(b - a >= 300 for a, b in itertools.pairwise(times))


def test_stand_in_gateway_enforces_calls_per_day() -> None:
    """calls_per_day = 7: the card makes exactly 7 calls in a day with plenty of leads."""
    assert 7 == len(guarded_run("calls_per_day = 7"))


def test_stand_in_gateway_enforces_distinct_callees() -> None:
    """distinct_callees_per_day = 9: nine different callees, then the card rests."""
    assert 9 == len(guarded_run("distinct_callees_per_day = 9"))


def test_unguarded_stand_in_ignores_quotas() -> None:
    """guarded = false: the same profile does not limit anything but concurrency."""
    text = MINIMAL + '\n[leads.generate]\ncount = 400\nprefix = "+86137"\nconsent_share = 0.0\n'
    text += "\n[gateway]\nguarded = false\n\n[gateway.quota_profiles.default]\ncalls_per_day = 7\n"
    result = run_offline(loads_scenario(text))
    accepted = [e for e in result.carrier.events if e.kind is EventKind.ACCEPTED]
    assert len(accepted) > 50


@pytest.mark.parametrize(
    ("share", "outcome", "status", "ring"),
    [
        ("refuse_403_share", CallOutcome.REFUSED, 403, 0.0),
        ("ring_then_408_share", CallOutcome.NO_ANSWER, 408, 30.0),
        ("ring_then_503_share", CallOutcome.FAILED, 503, None),
        ("silent_share", CallOutcome.NO_ANSWER, 408, 32.0),
    ],
)
def test_destination_answers_are_the_callees_never_failed_over(
    share: str, outcome: CallOutcome, status: int, ring: float | None
) -> None:
    """Every destination answering one way: one INVITE per call, no mark, no failover, and the
    agent's outcome as the stand-in gateway relays it (silence: Timer B's 408 after 32 s)."""
    text = MINIMAL.replace(
        'card = "c1"', 'card = "c1"\n\n[[agents]]\nname = "bob"\npassword = "pw"', 1
    ).replace(
        'password = "pw"\n\n[[agents]]',
        'password = "pw"\n\n[[cards]]\nid = "c2"\nnumber = "+8613800000002"\n'
        'username = "c2"\npassword = "pw"\n\n[[agents]]',
        1,
    )
    text += f"\n[carrier.answer]\n{share} = 1.0\n"
    text += '\n[leads.generate]\ncount = 20\nprefix = "+86139"\nconsent_share = 1.0\n'
    result = run_offline(loads_scenario(text))
    placed = [c for c in result.calls if c.outcome is not CallOutcome.BLOCKED]
    assert len(placed) >= 10
    assert {(outcome, status)} == {(c.outcome, c.status) for c in placed}
    assert all(c.failovers == 0 for c in placed)
    assert [] == result.marks
    if ring is not None:
        assert {ring} == {c.ring_seconds for c in placed}
    seen = result.carrier.callee_invites
    assert len(seen) == len({i.callee for i in seen}) == len(placed)

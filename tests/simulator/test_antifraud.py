"""Tests for each anti-fraud trigger of the simulated carrier, driven through CarrierModel.

Every trigger must suspend the card with ``403 Card Suspended: <reason> (<cause>)``
exactly when its counter crosses the carrier's threshold, not one call earlier.
"""

from __future__ import annotations

from datetime import datetime, time

import pytest

from simulator.antifraud import AntiFraudThresholds, CardUsage, Metric, TimeWindow, Violation
from simulator.models import CarrierModel, EventKind
from tests.simulator.support import ALWAYS_ANSWER, SHANGHAI, T0, build_carrier, callee


def place(
    carrier: CarrierModel,
    n: int,
    *,
    start: float = T0,
    gap: float = 30.0,
    same_callee: bool = False,
    offset: int = 0,
) -> list[int]:
    """Place ``n`` INVITEs ``gap`` seconds apart and return their statuses."""
    return [
        carrier.decide_invite(
            "c1", callee(0 if same_callee else offset + i), start + i * gap
        ).status
        for i in range(n)
    ]


def accepted(statuses: list[int]) -> int:
    """How many INVITEs reached the callee (not refused by the carrier)."""
    return sum(1 for s in statuses if s not in (402, 403, 503))


def test_calls_per_hour_trigger() -> None:
    """The 61st call inside an hour suspends with 'calls per hour 61 > 60'."""
    carrier = build_carrier(calls_per_hour=60)
    statuses = place(carrier, 61, gap=30)
    assert 60 == accepted(statuses[:60])
    decision = carrier.decide_invite("c1", callee(999), T0 + 60 * 30 + 1)
    assert 403 == statuses[60]
    assert "Card Suspended: abnormal-use (calls per hour 61 > 60)" == decision.reason_phrase
    assert "card c1 suspended: abnormal-use (calls per hour 61 > 60)" in (
        decision.header("Warning") or ""
    )


def test_calls_per_hour_is_a_rolling_window() -> None:
    """Calls spread so that no hour holds more than the limit never trip it."""
    carrier = build_carrier(calls_per_hour=10)
    statuses = place(carrier, 40, gap=361)  # at most 10 starts in any 3600 s
    assert 40 == accepted(statuses)
    assert carrier.suspension("c1") is None


def test_calls_per_day_trigger_resets_at_carrier_midnight() -> None:
    """The daily count is per calendar day in the carrier's time zone."""
    carrier = build_carrier(calls_per_day=5)
    evening = datetime(2026, 3, 2, 23, 50, tzinfo=SHANGHAI).timestamp()
    assert 5 == accepted(place(carrier, 5, start=evening, gap=60))  # 23:50 .. 23:54
    after_midnight = datetime(2026, 3, 3, 0, 1, tzinfo=SHANGHAI).timestamp()
    assert 5 == accepted(place(carrier, 5, start=after_midnight, gap=60, offset=100))
    decision = carrier.decide_invite("c1", callee(500), after_midnight + 600)
    assert 403 == decision.status
    assert "calls per day 6 > 5" in decision.reason_phrase


def test_distinct_callees_trigger() -> None:
    """Dispersion: the 4th distinct callee of the day suspends; repeats of the same one do not."""
    carrier = build_carrier(distinct_callees_per_day=3)
    assert 10 == accepted(place(carrier, 10, same_callee=True))
    for i in range(1, 3):
        assert 403 != carrier.decide_invite("c1", callee(i), T0 + 1000 + i).status
    decision = carrier.decide_invite("c1", callee(3), T0 + 2000)
    assert 403 == decision.status
    assert "distinct callees per day 4 > 3" in decision.reason_phrase


def test_night_calls_trigger() -> None:
    """Inside the carrier's night window the 3rd call suspends when the ceiling is 2."""
    carrier = build_carrier(night=TimeWindow.parse("22:00-08:00"), night_calls_max=2)
    day = datetime(2026, 3, 2, 20, 0, tzinfo=SHANGHAI).timestamp()
    assert 10 == accepted(place(carrier, 10, start=day, gap=60))  # 20:00..20:09, not night
    night = datetime(2026, 3, 2, 23, 0, tzinfo=SHANGHAI).timestamp()
    statuses = place(carrier, 3, start=night, gap=60, offset=50)
    assert [403] == [s for s in statuses if s == 403]
    assert 403 == statuses[2]
    suspension = carrier.suspension("c1")
    assert suspension is not None
    assert "night calls 3 > 2" == suspension.cause


def test_answer_rate_trigger_after_minimum_calls() -> None:
    """Below the floor over the last N calls suspends, but only once min_calls have ended."""
    carrier = build_carrier(answer_rate_floor=0.3, answer_rate_window=10, answer_rate_min_calls=5)
    for i in range(4):
        assert carrier.record_call_end("c1", callee(i), False, 0, T0 + i) is None
    suspension = carrier.record_call_end("c1", callee(4), False, 0, T0 + 4)
    assert suspension is not None
    assert "abnormal-use" == suspension.reason
    assert "answer rate 0.00 < 0.30" == suspension.cause
    assert 403 == carrier.decide_invite("c1", callee(5), T0 + 10).status


def test_answer_rate_at_floor_does_not_trigger() -> None:
    """Exactly at the floor is allowed: the rule is 'rate < floor'."""
    carrier = build_carrier(answer_rate_floor=0.5, answer_rate_window=4, answer_rate_min_calls=4)
    for i, answered in enumerate([True, False, True, False, True, False]):
        assert (
            carrier.record_call_end("c1", callee(i), answered, 60 if answered else 0, T0 + i)
            is None
        )


def test_short_calls_trigger() -> None:
    """A share of answered calls under S seconds above the ceiling suspends."""
    carrier = build_carrier(
        short_call_seconds=10, short_call_share_max=0.5, short_call_window=6, short_call_min_calls=4
    )
    talks = [120, 3, 4]  # 2 short of 3: not yet min_calls
    for i, talk in enumerate(talks):
        assert carrier.record_call_end("c1", callee(i), True, talk, T0 + i) is None
    suspension = carrier.record_call_end("c1", callee(9), True, 5, T0 + 9)  # 3 short of 4
    assert suspension is not None
    assert "short call share 0.75 > 0.50" == suspension.cause


def test_unanswered_calls_do_not_count_as_short() -> None:
    """The short-call share is over answered calls only."""
    carrier = build_carrier(short_call_share_max=0.5, short_call_window=4, short_call_min_calls=2)
    for i in range(10):
        assert carrier.record_call_end("c1", callee(i), False, 0, T0 + i) is None
    assert carrier.suspension("c1") is None


def test_complaints_trigger_from_non_consented_callees() -> None:
    """With p=1 every answered non-consented callee complains; the 3rd complaint over 2 suspends."""
    consenting = callee(100)
    carrier = build_carrier(complaint_probability=1.0, complaints_max=2, consented=(consenting,))
    for i in range(5):
        assert carrier.record_call_end("c1", consenting, True, 60, T0 + i) is None
    assert carrier.record_call_end("c1", callee(1), False, 0, T0 + 10) is None  # not answered
    assert carrier.record_call_end("c1", callee(2), True, 60, T0 + 11) is None
    assert carrier.record_call_end("c1", callee(3), True, 60, T0 + 12) is None
    suspension = carrier.record_call_end("c1", callee(4), True, 60, T0 + 13)
    assert suspension is not None
    assert ("violation", "complaints 3 > 2") == (suspension.reason, suspension.cause)
    complaints = [e for e in carrier.events if e.kind is EventKind.COMPLAINT]
    assert 3 == len(complaints)


def test_complaint_probability_is_seeded() -> None:
    """With p=0.3 the same seed draws the same complaints, and roughly 30 % of them."""

    def complaints(seed: int) -> list[int]:
        carrier = build_carrier(complaint_probability=0.3, seed=seed)
        for i in range(1000):
            carrier.record_call_end("c1", callee(i), True, 60, T0 + i)
        return [i for i, e in enumerate(carrier.events) if e.kind is EventKind.COMPLAINT]

    first = complaints(5)
    assert first == complaints(5)
    assert 300 == pytest.approx(len(first), abs=60)


def test_thresholds_off_by_default() -> None:
    """A carrier without thresholds never suspends."""
    carrier = build_carrier(answer=ALWAYS_ANSWER)
    assert 500 == accepted(place(carrier, 500, gap=1))
    for i in range(50):
        assert carrier.record_call_end("c1", callee(i), True, 1, T0 + 600 + i) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"answer_rate_floor": 1.5}, "answer_rate_floor"),
        ({"answer_rate_window": 0}, "at least one"),
        ({"answer_rate_window": 5, "answer_rate_min_calls": 6}, "answer_rate_min_calls"),
        ({"short_call_window": 5, "short_call_min_calls": 6}, "short_call_min_calls"),
    ],
)
def test_threshold_validation(kwargs: dict[str, float], message: str) -> None:
    """Nonsensical thresholds are refused."""
    with pytest.raises(ValueError, match=message):
        AntiFraudThresholds(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("window", "inside", "outside"),
    [
        ("22:00-08:00", ["22:00", "23:59", "00:00", "07:59"], ["08:00", "12:00", "21:59"]),
        ("08:00-21:00", ["08:00", "20:59"], ["07:59", "21:00", "23:00"]),
        ("18:00-24:00", ["18:00", "23:59"], ["17:59", "00:00"]),
    ],
)
def test_time_window_contains(window: str, inside: list[str], outside: list[str]) -> None:
    """Windows are [start, end) and may wrap midnight; '24:00' ends the day."""
    parsed = TimeWindow.parse(window)
    assert all(parsed.contains(time.fromisoformat(t)) for t in inside)
    assert not any(parsed.contains(time.fromisoformat(t)) for t in outside)
    assert window == str(parsed)


@pytest.mark.parametrize("text", ["22:00", "25:00-08:00", "08:00-08:00", "x-y"])
def test_time_window_rejects_bad_text(text: str) -> None:
    """Malformed or empty windows are refused."""
    with pytest.raises(ValueError):
        TimeWindow.parse(text)


def test_usage_counters_snapshot() -> None:
    """The counters snapshot reports every watched metric."""
    usage = CardUsage(AntiFraudThresholds(), SHANGHAI)
    usage.record_invite(callee(1), T0)
    usage.record_invite(callee(1), T0 + 10)
    usage.record_end(True, 5, complained=True)
    usage.record_end(False, 0, complained=False)
    assert {
        "calls_hour": 2,
        "calls_day": 2,
        "distinct_day": 1,
        "night_calls_24h": 0,
        "answer_rate": 0.5,
        "short_share": 1.0,
        "complaints": 1,
    } == usage.counters(T0 + 20)
    assert 0 == usage.counters(T0 + 3700)["calls_hour"]


def test_violation_cause_text() -> None:
    """Causes read like a carrier's notice."""
    assert "calls per hour 61 > 60" == Violation(Metric.CALLS_PER_HOUR, 61, 60).cause
    assert "answer rate 0.12 < 0.20" == Violation(Metric.ANSWER_RATE, 0.12, 0.2).cause


# -- abnormal use around one callee (across cards) -------------------------------------------


def test_repeated_calls_to_one_callee_suspend_the_card() -> None:
    """The third call to one callee within the window suspends: 'calls to one callee 3 > 2'."""
    carrier = build_carrier(
        cards=("c1", "c2"), max_calls_per_callee=2, callee_window=3600, answer=ALWAYS_ANSWER
    )
    assert [200, 200] == [
        carrier.decide_invite("c1", callee(1), T0 + i * 600).status for i in range(2)
    ]
    decision = carrier.decide_invite("c1", callee(1), T0 + 1200)
    assert 403 == decision.status
    assert "Card Suspended: abnormal-use (calls to one callee 3 > 2)" == decision.reason_phrase
    suspended = [e for e in carrier.events if e.kind is EventKind.SUSPENDED]
    assert [("c1", "abnormal-use")] == [(e.card, e.reason) for e in suspended]
    # Other callees and the other card are untouched.
    assert 200 == carrier.decide_invite("c2", callee(2), T0 + 1300).status


def test_repeated_calls_count_every_card_and_leave_the_window() -> None:
    """Calls from any card count; a call older than ``callee_window`` no longer does."""
    carrier = build_carrier(
        cards=("c1", "c2"), max_calls_per_callee=2, callee_window=600, answer=ALWAYS_ANSWER
    )
    assert 200 == carrier.decide_invite("c1", callee(1), T0).status
    assert 200 == carrier.decide_invite("c2", callee(1), T0 + 300).status
    # The first call left the window (600 s): two calls in it with this one.
    assert 200 == carrier.decide_invite("c1", callee(1), T0 + 600).status
    # c2's call at +300 and c1's at +600 are still in it: the third suspends c2.
    assert 403 == carrier.decide_invite("c2", callee(1), T0 + 800).status
    assert carrier.suspension("c2") is not None
    assert carrier.suspension("c1") is None


def test_one_callee_from_several_cards_suspends_the_switching_card() -> None:
    """A callee called from a second card within the window: 'cards calling one callee 2 > 1'."""
    carrier = build_carrier(
        cards=("c1", "c2", "c3"), max_cards_per_callee=1, callee_window=3600, answer=ALWAYS_ANSWER
    )
    assert 200 == carrier.decide_invite("c1", callee(1), T0).status
    assert 200 == carrier.decide_invite("c1", callee(1), T0 + 60).status  # same card: fine
    decision = carrier.decide_invite("c2", callee(1), T0 + 120)
    assert "Card Suspended: abnormal-use (cards calling one callee 2 > 1)" == (
        decision.reason_phrase
    )
    assert carrier.suspension("c1") is None
    # Once the window has passed another card may call that callee.
    assert 200 == carrier.decide_invite("c3", callee(1), T0 + 3700).status


def test_callee_thresholds_are_off_by_default() -> None:
    """Without the keys one callee can be called from every card, again and again."""
    carrier = build_carrier(cards=("c1", "c2"), answer=ALWAYS_ANSWER)
    statuses = [carrier.decide_invite(f"c{1 + i % 2}", callee(1), T0 + i).status for i in range(50)]
    assert {200} == set(statuses)
    assert not AntiFraudThresholds().watches_callees


def test_refused_invites_do_not_count_towards_a_callee() -> None:
    """An INVITE the carrier refused (card suspended) never reached the callee: not counted."""
    carrier = build_carrier(
        cards=("c1", "c2"), max_calls_per_callee=1, calls_per_hour=1, answer=ALWAYS_ANSWER
    )
    assert 200 == carrier.decide_invite("c1", callee(5), T0).status
    assert 403 == carrier.decide_invite("c1", callee(1), T0 + 10).status
    suspension = carrier.suspension("c1")
    assert suspension is not None and "calls per hour 2 > 1" == suspension.cause
    assert 200 == carrier.decide_invite("c2", callee(1), T0 + 20).status


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_calls_per_callee": 0}, "max_calls_per_callee"),
        ({"max_cards_per_callee": 0}, "max_cards_per_callee"),
        ({"callee_window": 0}, "callee_window"),
    ],
)
def test_callee_threshold_validation(kwargs: dict[str, float], message: str) -> None:
    """Per-callee limits below one call or card and an empty window are refused."""
    with pytest.raises(ValueError, match=message):
        AntiFraudThresholds(**kwargs)  # type: ignore[arg-type]

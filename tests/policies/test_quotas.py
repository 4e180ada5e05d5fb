"""Tests for card quota evaluation: every limit, its free time, carrier days, probation."""

from __future__ import annotations

import pytest

from policies.quotas import (
    CallOutcome,
    CardSnapshot,
    CardState,
    CardUsage,
    Exhausted,
    Headroom,
    QuotaLimit,
    QuotaProfile,
    StartTimes,
    evaluate_card,
    would_exceed,
)
from tests.policies.helpers import ts

SHANGHAI = "Asia/Shanghai"
NOW = ts(2026, 6, 1, 4, 0)  # 12:00 in Shanghai


def card(
    profile: QuotaProfile,
    usage: CardUsage | None = None,
    *,
    state: CardState = CardState.ACTIVE,
    tz: str = SHANGHAI,
    probation: QuotaProfile | None = None,
    override: QuotaProfile | None = None,
) -> CardSnapshot:
    """A card snapshot with the given profile and usage."""
    return CardSnapshot(
        "c1",
        state,
        profile,
        tz,
        usage or CardUsage(),
        probation_profile=probation,
        profile_override=override,
    )


def exhausted(result: Headroom | Exhausted) -> Exhausted:
    """Narrow an evaluation to Exhausted (fails the test otherwise)."""
    assert isinstance(result, Exhausted), result
    return result


def test_fresh_card_has_full_headroom() -> None:
    """A card without usage scores 1.0."""
    result = evaluate_card(card(QuotaProfile(calls_per_minute=5, calls_per_day=100)), NOW)
    assert Headroom(1.0, QuotaLimit.CONCURRENT) == result


def test_calls_per_minute_rolling_free_time() -> None:
    """At the per-minute limit the card frees when the oldest start is 60 s old."""
    usage = CardUsage(call_starts=StartTimes((NOW - 50, NOW - 20)))
    result = exhausted(evaluate_card(card(QuotaProfile(calls_per_minute=2), usage), NOW))
    assert (QuotaLimit.CALLS_PER_MINUTE, NOW + 10) == (result.limit, result.frees_at)
    assert isinstance(
        evaluate_card(card(QuotaProfile(calls_per_minute=2), usage), NOW + 10), Headroom
    )


def test_calls_per_hour_headroom_fraction() -> None:
    """Headroom is the remaining fraction of the tightest limit."""
    usage = CardUsage(call_starts=StartTimes(tuple(NOW - 3000 + i for i in range(6))))
    profile = QuotaProfile(calls_per_hour=10, calls_per_day=100, concurrent=None)
    assert Headroom(0.4, QuotaLimit.CALLS_PER_HOUR) == evaluate_card(card(profile, usage), NOW)


def test_carrier_day_rollover_shanghai_not_utc() -> None:
    """The daily count resets at Shanghai midnight (16:00 UTC), not at UTC midnight."""
    profile = QuotaProfile(calls_per_day=2, concurrent=None)
    usage = CardUsage(call_starts=StartTimes((ts(2026, 6, 1, 10, 0), ts(2026, 6, 1, 15, 30))))
    before = exhausted(evaluate_card(card(profile, usage), ts(2026, 6, 1, 15, 59)))
    assert (QuotaLimit.CALLS_PER_DAY, ts(2026, 6, 1, 16, 0)) == (before.limit, before.frees_at)
    assert isinstance(evaluate_card(card(profile, usage), ts(2026, 6, 1, 16, 0)), Headroom)
    # The same usage on a UTC carrier is still exhausted after 16:00 UTC.
    utc_card = card(profile, usage, tz="UTC")
    result = exhausted(evaluate_card(utc_card, ts(2026, 6, 1, 16, 0)))
    assert ts(2026, 6, 2, 0, 0) == result.frees_at


def test_carrier_day_on_dst_day_is_23_hours() -> None:
    """A New York carrier's spring-forward day ends 23 h after it starts."""
    profile = QuotaProfile(calls_per_day=1, concurrent=None)
    start_of_day = ts(2026, 3, 8, 5, 0)  # 00:00 EST
    usage = CardUsage(call_starts=StartTimes((start_of_day + 60,)))
    result = exhausted(
        evaluate_card(card(profile, usage, tz="America/New_York"), start_of_day + 120)
    )
    assert start_of_day + 23 * 3600 == result.frees_at


def test_concurrent_limit_has_no_known_free_time() -> None:
    """A busy SIM frees when its call ends, which nobody knows in advance."""
    result = exhausted(evaluate_card(card(QuotaProfile(concurrent=1), CardUsage(in_use=1)), NOW))
    assert (QuotaLimit.CONCURRENT, None) == (result.limit, result.frees_at)


def test_min_gap_between_starts() -> None:
    """A new start within min_gap_seconds of the last one waits for the gap."""
    profile = QuotaProfile(min_gap_seconds=30, concurrent=None)
    usage = CardUsage(call_starts=StartTimes((NOW - 100, NOW - 10)))
    result = exhausted(evaluate_card(card(profile, usage), NOW))
    assert (QuotaLimit.MIN_GAP, NOW + 20) == (result.limit, result.frees_at)
    assert isinstance(evaluate_card(card(profile, usage), NOW + 20), Headroom)


def test_talk_minutes_per_day() -> None:
    """Talk time at the daily cap exhausts the card until the carrier's midnight."""
    profile = QuotaProfile(talk_minutes_per_day=60, concurrent=None)
    result = exhausted(evaluate_card(card(profile, CardUsage(talk_seconds_today=3600)), NOW))
    assert (QuotaLimit.TALK_MINUTES_PER_DAY, ts(2026, 6, 1, 16, 0)) == (
        result.limit,
        result.frees_at,
    )
    half = evaluate_card(card(profile, CardUsage(talk_seconds_today=1800)), NOW)
    assert Headroom(0.5, QuotaLimit.TALK_MINUTES_PER_DAY) == half


def test_distinct_callees_per_day_allows_repeat_callee() -> None:
    """At the dispersion limit a callee already called today still fits; a new one does not."""
    profile = QuotaProfile(distinct_callees_per_day=2, concurrent=None)
    usage = CardUsage(callees_today=frozenset({"+8613800000001", "+8613800000002"}))
    assert isinstance(evaluate_card(card(profile, usage), NOW, "+8613800000001"), Headroom)
    result = exhausted(evaluate_card(card(profile, usage), NOW, "+8613800000003"))
    assert QuotaLimit.DISTINCT_CALLEES_PER_DAY == result.limit


def _outcomes(answered: set[int], n: int = 20, talk: float = 60.0) -> tuple[CallOutcome, ...]:
    return tuple(
        CallOutcome(NOW - 3600 + k * 60, k in answered, talk if k in answered else 0.0)
        for k in range(n)
    )


def test_answer_rate_floor_after_min_sample() -> None:
    """A low answer rate exhausts the card once min_sample calls exist; it frees as calls age out."""
    profile = QuotaProfile(
        answer_rate_floor=0.3, rate_min_sample=10, rate_window_seconds=86400, concurrent=None
    )
    few = CardUsage(recent_outcomes=_outcomes(set(), n=9))
    assert isinstance(evaluate_card(card(profile, few), NOW), Headroom)
    usage = CardUsage(recent_outcomes=_outcomes({18, 19}))
    result = exhausted(evaluate_card(card(profile, usage), NOW))
    # Dropping the 11 oldest leaves 9 calls (< min_sample): that happens when call #10 ages out.
    assert (QuotaLimit.ANSWER_RATE_FLOOR, NOW - 3600 + 10 * 60 + 86400) == (
        result.limit,
        result.frees_at,
    )
    healthy = CardUsage(recent_outcomes=_outcomes(set(range(0, 20, 3))))
    assert isinstance(evaluate_card(card(profile, healthy), NOW), Headroom)


def test_rate_window_uses_last_n_calls_only() -> None:
    """Only the last rate_window_calls outcomes are sampled."""
    profile = QuotaProfile(
        answer_rate_floor=0.5, rate_window_calls=10, rate_min_sample=10, concurrent=None
    )
    usage = CardUsage(recent_outcomes=_outcomes(set(range(10, 20))))
    assert isinstance(evaluate_card(card(profile, usage), NOW), Headroom)


def test_short_call_ceiling() -> None:
    """Too many answered calls under short_call_seconds exhaust the card."""
    profile = QuotaProfile(short_call_ceiling=0.2, rate_min_sample=10, concurrent=None)
    usage = CardUsage(recent_outcomes=_outcomes(set(range(20)), talk=5.0))
    assert (
        QuotaLimit.SHORT_CALL_CEILING == exhausted(evaluate_card(card(profile, usage), NOW)).limit
    )
    long_calls = CardUsage(recent_outcomes=_outcomes(set(range(20)), talk=30.0))
    assert isinstance(evaluate_card(card(profile, long_calls), NOW), Headroom)


def test_consecutive_failures_cooldown() -> None:
    """N card failures in a row rest the card for cooldown_seconds after the last one."""
    profile = QuotaProfile(consecutive_failures=3, cooldown_seconds=600, concurrent=None)
    fails = tuple(
        CallOutcome(NOW - 300 + i, False, failed=True, ended_at=NOW - 200 + i) for i in range(3)
    )
    result = exhausted(evaluate_card(card(profile, CardUsage(recent_outcomes=fails)), NOW))
    assert (QuotaLimit.CONSECUTIVE_FAILURES, NOW - 198 + 600) == (result.limit, result.frees_at)
    assert isinstance(
        evaluate_card(card(profile, CardUsage(recent_outcomes=fails)), NOW - 198 + 600), Headroom
    )
    recovered = (*fails, CallOutcome(NOW - 50, True, 30.0))
    assert isinstance(
        evaluate_card(card(profile, CardUsage(recent_outcomes=recovered)), NOW), Headroom
    )


def test_night_window_in_carrier_zone() -> None:
    """No calls during the carrier's night; the card frees when the night ends there."""
    profile = QuotaProfile(night_window="21:00-08:00", concurrent=None)
    night = ts(2026, 6, 1, 14, 0)  # 22:00 CST
    result = exhausted(evaluate_card(card(profile), night))
    assert (QuotaLimit.NIGHT_WINDOW, ts(2026, 6, 2, 0, 0)) == (result.limit, result.frees_at)
    assert isinstance(evaluate_card(card(profile), ts(2026, 6, 2, 0, 0)), Headroom)
    assert isinstance(evaluate_card(card(profile), ts(2026, 6, 1, 12, 59)), Headroom)


def test_probation_profile_applies_in_probation() -> None:
    """A restored card in probation runs on its reduced profile."""
    normal = QuotaProfile(calls_per_day=100, concurrent=None)
    probation = QuotaProfile(name="probation", calls_per_day=2, concurrent=None)
    usage = CardUsage(call_starts=StartTimes((NOW - 600, NOW - 300)))
    active = card(normal, usage, probation=probation)
    restored = card(normal, usage, state=CardState.PROBATION, probation=probation)
    assert isinstance(evaluate_card(active, NOW), Headroom)
    assert QuotaLimit.CALLS_PER_DAY == exhausted(evaluate_card(restored, NOW)).limit


def test_profile_override_wins() -> None:
    """A per-card override replaces both the normal and the probation profile."""
    strict = QuotaProfile(calls_per_day=1, concurrent=None)
    usage = CardUsage(call_starts=StartTimes((NOW - 600,)))
    snapshot = card(QuotaProfile(concurrent=None), usage, override=strict)
    assert QuotaLimit.CALLS_PER_DAY == exhausted(evaluate_card(snapshot, NOW)).limit


@pytest.mark.parametrize("state", [CardState.SUSPENDED, CardState.APPEALING, CardState.RETIRED])
def test_unusable_states(state: CardState) -> None:
    """Suspended, appealing and retired cards are exhausted with no free time."""
    result = exhausted(evaluate_card(card(QuotaProfile(), state=state), NOW))
    assert (QuotaLimit.STATE, None) == (result.limit, result.frees_at)


def test_several_exhausted_limits_report_latest_free_time() -> None:
    """When two limits are exhausted the card frees when the later one frees."""
    profile = QuotaProfile(calls_per_minute=1, calls_per_day=1, concurrent=None)
    result = exhausted(
        evaluate_card(card(profile, CardUsage(call_starts=StartTimes((NOW - 30,)))), NOW)
    )
    assert (QuotaLimit.CALLS_PER_DAY, ts(2026, 6, 1, 16, 0)) == (result.limit, result.frees_at)


def test_would_exceed_for_store_recheck() -> None:
    """would_exceed names the first broken limit, or None when one more call fits."""
    profile = QuotaProfile(calls_per_minute=2, concurrent=2)
    ok = CardUsage(call_starts=StartTimes((NOW - 30,)), in_use=1)
    assert would_exceed(profile, ok, SHANGHAI, "+8613800000001", NOW) is None
    full = CardUsage(call_starts=StartTimes((NOW - 30, NOW - 5)), in_use=1)
    result = would_exceed(profile, full, SHANGHAI, "+8613800000001", NOW)
    assert result is not None
    assert QuotaLimit.CALLS_PER_MINUTE == result.limit


@pytest.mark.parametrize(
    "kwargs",
    [
        {"calls_per_day": -1},
        {"answer_rate_floor": 1.5},
        {"rate_min_sample": 0},
        {"night_window": "22-06"},
    ],
)
def test_profile_validation(kwargs: dict[str, object]) -> None:
    """Impossible profile values are refused at construction."""
    with pytest.raises(ValueError):
        QuotaProfile(**kwargs)  # type: ignore[arg-type]

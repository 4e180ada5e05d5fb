"""Property tests: reservations never push a card past a limit; Retry-After times are exact."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from policies.frequency import FrequencyCap, FrequencyPolicy, FrequencyRule, HistoryKind
from policies.memory import InMemoryHistory
from policies.quotas import CardUsage, Exhausted, QuotaProfile, StartTimes, would_exceed
from policies.timeutil import as_utc, day_bounds
from tests.policies.helpers import ctx, ts

T = ts(2026, 6, 1, 4, 0)
TZ = "Asia/Shanghai"
small = st.one_of(st.none(), st.integers(min_value=1, max_value=6))


@settings(max_examples=200, deadline=None)
@given(
    per_minute=small,
    per_hour=small,
    per_day=small,
    gap=st.one_of(st.none(), st.sampled_from([5.0, 30.0])),
    offsets=st.lists(st.integers(min_value=0, max_value=30_000), max_size=12),
)
def test_allowed_reservation_stays_within_every_limit(
    per_minute: int | None,
    per_hour: int | None,
    per_day: int | None,
    gap: float | None,
    offsets: list[int],
) -> None:
    """If would_exceed says a call fits, the usage after recording it is within every limit."""
    profile = QuotaProfile(
        calls_per_minute=per_minute,
        calls_per_hour=per_hour,
        calls_per_day=per_day,
        min_gap_seconds=gap,
        concurrent=None,
    )
    starts = sorted(T - o for o in offsets)
    if (
        would_exceed(profile, CardUsage(call_starts=StartTimes(tuple(starts))), TZ, None, T)
        is not None
    ):
        return
    after = sorted([*starts, T])

    def count(since: float) -> int:
        return bisect_right(after, T) - bisect_right(after, since)

    if per_minute is not None:
        assert count(T - 60) <= per_minute
    if per_hour is not None:
        assert count(T - 3600) <= per_hour
    if per_day is not None:
        day_start, _ = day_bounds(T, TZ)
        assert bisect_right(after, T) - bisect_left(after, day_start) <= per_day
    if gap is not None and starts:
        assert T - starts[-1] >= gap


@settings(max_examples=200, deadline=None)
@given(
    max_count=st.integers(min_value=1, max_value=4),
    window=st.sampled_from([3600.0, 86400.0, 7 * 86400.0]),
    offsets=st.lists(st.integers(min_value=1, max_value=8 * 86400), min_size=1, max_size=10),
)
def test_frequency_retry_after_is_exact(max_count: int, window: float, offsets: list[int]) -> None:
    """At now + Retry-After the cap has room; one second earlier it still rejects."""
    history = InMemoryHistory()
    for o in offsets:
        history.record_attempt("+8613812345678", T - o)
    policy = FrequencyPolicy(
        history, FrequencyCap((FrequencyRule(HistoryKind.ATTEMPTS, max_count, window),))
    )
    now = as_utc(T)
    decision = policy(ctx("13812345678", now), now)
    if decision is None:
        return
    assert decision.retry_after is not None
    later = now + timedelta(seconds=decision.retry_after)
    assert policy(ctx("13812345678", later), later) is None
    if decision.retry_after >= 1:
        earlier = later - timedelta(seconds=1)
        assert policy(ctx("13812345678", earlier), earlier) is not None


@settings(max_examples=100, deadline=None)
@given(
    per_minute=st.integers(min_value=1, max_value=5),
    per_hour=st.integers(min_value=1, max_value=8),
    offsets=st.lists(st.integers(min_value=0, max_value=4000), max_size=10),
)
def test_rolling_limit_frees_exactly_when_reported(
    per_minute: int, per_hour: int, offsets: list[int]
) -> None:
    """A rolling-window limit reported exhausted until t has room at t (and not just before)."""
    profile = QuotaProfile(calls_per_minute=per_minute, calls_per_hour=per_hour, concurrent=None)
    usage = CardUsage(call_starts=StartTimes(tuple(sorted(T - o for o in offsets))))
    result = would_exceed(profile, usage, TZ, None, T)
    if result is None:
        return
    assert isinstance(result, Exhausted)
    assert result.frees_at is not None
    again = would_exceed(profile, usage, TZ, None, result.frees_at)
    assert again is None or again.limit != result.limit
    if result.frees_at - 1 > T:
        before = would_exceed(profile, usage, TZ, None, result.frees_at - 1)
        assert before is not None

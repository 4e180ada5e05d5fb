"""Tests for the per-destination frequency cap and its Retry-After."""

from __future__ import annotations

import pytest

from policies.decision import RejectReason
from policies.frequency import FrequencyCap, FrequencyPolicy, FrequencyRule, HistoryKind
from policies.memory import InMemoryHistory
from tests.policies.helpers import ctx, ts, utc

NUMBER = "+8613812345678"
DAY = 86400.0


def test_under_cap_passes() -> None:
    """Two attempts in a week leave room under '3 attempts in 7 days'."""
    history = InMemoryHistory()
    history.record_attempt(NUMBER, ts(2026, 6, 1))
    history.record_attempt(NUMBER, ts(2026, 6, 2))
    assert FrequencyPolicy(history)(ctx(NUMBER), utc(2026, 6, 3)) is None


def test_cap_reached_retry_after_oldest_leaves_window() -> None:
    """With 3 attempts in 7 days, Retry-After is when the oldest falls out of the window."""
    history = InMemoryHistory()
    for day in (1, 2, 3):
        history.record_attempt(NUMBER, ts(2026, 6, day, 10, 0))
    now = utc(2026, 6, 4, 10, 0)
    decision = FrequencyPolicy(history)(ctx(NUMBER), now)
    assert decision is not None
    assert (403, RejectReason.FREQUENCY_CAP) == (decision.sip_code, decision.reason)
    assert int(ts(2026, 6, 8, 10, 0) - ts(2026, 6, 4, 10, 0)) == decision.retry_after
    # Exactly when the oldest attempt is 7 days old it no longer counts.
    assert FrequencyPolicy(history)(ctx(NUMBER), utc(2026, 6, 8, 10, 0)) is None


def test_over_cap_waits_for_enough_attempts_to_leave() -> None:
    """With 4 attempts against a cap of 3, two must age out: Retry-After uses the second oldest."""
    history = InMemoryHistory()
    for day in (1, 2, 3, 4):
        history.record_attempt(NUMBER, ts(2026, 6, day))
    decision = FrequencyPolicy(history)(ctx(NUMBER), utc(2026, 6, 5))
    assert decision is not None
    assert int(ts(2026, 6, 9) - ts(2026, 6, 5)) == decision.retry_after


def test_answered_per_day_rule() -> None:
    """One answered call per day: a second call within 24 h of the answer is refused."""
    history = InMemoryHistory()
    history.record_attempt(NUMBER, ts(2026, 6, 1, 9, 0))
    history.record_answer(NUMBER, ts(2026, 6, 1, 9, 0, 20))
    decision = FrequencyPolicy(history)(ctx(NUMBER), utc(2026, 6, 1, 15, 0))
    assert decision is not None
    assert "answers" in decision.detail
    assert int(ts(2026, 6, 2, 9, 0, 20) - ts(2026, 6, 1, 15, 0)) == decision.retry_after


def test_latest_freeing_rule_wins() -> None:
    """When two rules are broken, Retry-After is when both have room again."""
    history = InMemoryHistory()
    for hour in (8, 9, 10):
        history.record_attempt(NUMBER, ts(2026, 6, 1, hour))
    history.record_answer(NUMBER, ts(2026, 6, 1, 10, 1))
    decision = FrequencyPolicy(history)(ctx(NUMBER), utc(2026, 6, 1, 12))
    assert decision is not None
    assert int(ts(2026, 6, 8, 8) - ts(2026, 6, 1, 12)) == decision.retry_after


def test_other_numbers_do_not_count() -> None:
    """Attempts to another number never count toward this one."""
    history = InMemoryHistory()
    for day in (1, 2, 3):
        history.record_attempt("+8613900000000", ts(2026, 6, day))
    assert FrequencyPolicy(history)(ctx(NUMBER), utc(2026, 6, 4)) is None


def test_zero_cap_blocks_without_retry_after() -> None:
    """A cap of 0 blocks every call and promises no retry time."""
    cap = FrequencyCap((FrequencyRule(HistoryKind.ATTEMPTS, 0, DAY),))
    decision = FrequencyPolicy(InMemoryHistory(), cap)(ctx(NUMBER), utc(2026, 6, 1))
    assert decision is not None
    assert decision.retry_after is None


def test_rule_validation() -> None:
    """Negative counts and empty windows are configuration errors."""
    with pytest.raises(ValueError):
        FrequencyRule(HistoryKind.ATTEMPTS, -1, DAY)
    with pytest.raises(ValueError):
        FrequencyRule(HistoryKind.ATTEMPTS, 1, 0)


def test_campaign_override_and_next_allowed() -> None:
    """A campaign's own cap (1 a day) refuses where the default (3 a day) lets through;
    `next_allowed` gives the same instant as the policy's Retry-After."""
    history = InMemoryHistory()
    history.record_attempt(NUMBER, ts(2026, 6, 1, 10, 0))
    now = utc(2026, 6, 1, 16, 0)
    policy = FrequencyPolicy(
        history,
        FrequencyCap.of(3, 86400.0, 1, 86400.0),
        per_campaign={"gentle": FrequencyCap.of(1, 86400.0, 1, 86400.0)},
    )
    assert policy(ctx(NUMBER, campaign="spring"), now) is None
    decision = policy(ctx(NUMBER, campaign="gentle"), now)
    assert decision is not None and RejectReason.FREQUENCY_CAP == decision.reason
    assert 18 * 3600 == decision.retry_after
    frees = policy.cap_for("gentle").next_allowed(history, NUMBER, now.timestamp())
    assert ts(2026, 6, 2, 10, 0) == frees
    assert policy.cap_for("spring").next_allowed(history, NUMBER, now.timestamp()) is None

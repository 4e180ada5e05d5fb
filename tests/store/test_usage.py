"""Write-ahead reservations and the usage facts derived from them."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.store import (
    QuotaExceeded,
    ReservationError,
    SQLiteStore,
    StoredCard,
    UsageLedger,
)
from policies.quotas import CardUsageView, QuotaLimit, QuotaProfile

from .conftest import T0

A = "+8613811110001"
B = "+8613811110002"


def test_store_implements_the_protocols(store: SQLiteStore) -> None:
    """SQLiteStore satisfies the ledger protocol and the policies' CardUsageView."""
    ledger: UsageLedger = store
    assert isinstance(store, CardUsageView)
    assert ledger is store


def test_reservation_counts_as_start_and_concurrent(store: SQLiteStore) -> None:
    """A reserved call is a call start and an in-use call before the INVITE leaves."""
    store.reserve("c1", "k1", A, T0)
    usage = store.card_usage("c1", T0 + 1)
    assert (T0,) == usage.call_starts
    assert 1 == usage.in_use
    assert frozenset({A}) == usage.callees_today
    assert () == usage.recent_outcomes


def test_release_stops_counting_and_records_failure(store: SQLiteStore) -> None:
    """A released reservation no longer counts, but a card failure feeds the streak."""
    store.reserve("c1", "k1", A, T0)
    assert "c1" == store.release("k1", T0 + 1)
    usage = store.card_usage("c1", T0 + 2)
    assert () == usage.call_starts
    assert 0 == usage.in_use
    assert [True] == [o.failed for o in usage.recent_outcomes]
    assert None is store.release("k1", T0 + 3)


def test_release_without_failure_leaves_no_outcome(store: SQLiteStore) -> None:
    """``release(failed=False)`` (e.g. caller cancelled before ringing) leaves no trace."""
    store.reserve("c1", "k1", A, T0)
    store.release("k1", T0 + 1, failed=False)
    usage = store.card_usage("c1", T0 + 2)
    assert () == usage.recent_outcomes


def test_finish_records_answer_talk_and_short(store: SQLiteStore) -> None:
    """finish() ends the in-use call and records answered, talk time and shortness."""
    store.reserve("c1", "k1", A, T0)
    store.finish("k1", T0 + 65, answered=True, talk_seconds=60)
    store.reserve("c1", "k2", B, T0 + 100)
    store.finish("k2", T0 + 105, answered=True, talk_seconds=3)
    store.reserve("c1", "k3", B, T0 + 200)
    store.finish("k3", T0 + 230, answered=False)
    usage = store.card_usage("c1", T0 + 300)
    assert 0 == usage.in_use
    assert 63.0 == usage.talk_seconds_today
    assert frozenset({A, B}) == usage.callees_today
    assert [True, True, False] == [o.answered for o in usage.recent_outcomes]
    facts = store.usage("c1", T0 + 300, day_start_at=T0 - 1)
    assert (3, 2, 1) == (facts.window_calls, facts.window_answered, facts.window_short)
    assert 2 / 3 == facts.answer_rate
    assert 0.5 == facts.short_share


def test_one_open_reservation_per_call(store: SQLiteStore) -> None:
    """A call holds at most one reservation, and never tries the same card twice."""
    store.reserve("c1", "k1", A, T0)
    with pytest.raises(ReservationError):
        store.reserve("c2", "k1", A, T0)
    store.release("k1", T0 + 1)
    with pytest.raises(ReservationError):
        store.reserve("c1", "k1", A, T0 + 2)
    store.reserve("c2", "k1", A, T0 + 2)  # failover to another card is fine
    assert [("k1", "c2")] == store.open_reservations()


def test_counters_by_window(store: SQLiteStore) -> None:
    """Minute, hour and day counts come from the start times of counted calls."""
    for i, t in enumerate((T0 - 7200, T0 - 1800, T0 - 30, T0 - 5)):
        store.reserve("c1", f"k{i}", A, t)
        store.finish(f"k{i}", t + 1, answered=False)
    facts = store.usage("c1", T0, day_start_at=T0 - 10_000)
    assert (2, 3, 4) == (facts.calls_last_minute, facts.calls_last_hour, facts.calls_today)
    assert T0 - 5 == facts.last_start_at


def test_carrier_day_follows_carrier_timezone(db_path: Path) -> None:
    """Daily counts restart at the carrier's midnight, not at UTC midnight."""
    s = SQLiteStore(db_path, carrier_timezones={"cn": "Asia/Shanghai"})
    s.upsert_card(StoredCard("c9", "cn", "+8613800000009", "main", since=T0))
    # T0 is 06:13 in Shanghai (UTC+8): 16:00 UTC the previous day is Shanghai midnight.
    shanghai_midnight = T0 - (6 * 3600 + 13 * 60 + 20)
    s.reserve("c9", "before", A, shanghai_midnight - 60)
    s.finish("before", shanghai_midnight - 30, answered=True, talk_seconds=30)
    s.reserve("c9", "after", B, shanghai_midnight + 60)
    s.finish("after", shanghai_midnight + 90, answered=True, talk_seconds=20)
    usage = s.card_usage("c9", T0)
    assert frozenset({B}) == usage.callees_today
    assert 20.0 == usage.talk_seconds_today
    s.close()


def test_consecutive_failures_stop_at_the_last_success(store: SQLiteStore) -> None:
    """The streak counts card-level failures after the last non-failed call."""
    store.reserve("c1", "ok", A, T0)
    store.finish("ok", T0 + 10, answered=True, talk_seconds=9)
    for i in range(3):
        store.reserve("c1", f"f{i}", B, T0 + 20 + i)
        store.release(f"f{i}", T0 + 21 + i)
    facts = store.usage("c1", T0 + 100, day_start_at=T0 - 1)
    assert 3 == facts.consecutive_failures


def test_reserve_with_profile_refuses_atomically(store: SQLiteStore) -> None:
    """reserve(profile=…) checks the quota inside the write and writes nothing on refusal."""
    profile = QuotaProfile(calls_per_minute=2, concurrent=None)
    store.reserve("c1", "k1", A, T0, profile=profile)
    store.reserve("c1", "k2", B, T0 + 1, profile=profile)
    with pytest.raises(QuotaExceeded) as info:
        store.reserve("c1", "k3", A, T0 + 2, profile=profile)
    assert QuotaLimit.CALLS_PER_MINUTE == info.value.exhausted.limit
    assert 2 == len(store.card_usage("c1", T0 + 3).call_starts)
    store.reserve("c1", "k3", A, T0 + 61, profile=profile)  # the first start aged out


def test_reserve_with_profile_enforces_concurrency(store: SQLiteStore) -> None:
    """A SIM carries one call: a second reservation while one is open is refused."""
    profile = QuotaProfile(concurrent=1)
    store.reserve("c1", "k1", A, T0, profile=profile)
    with pytest.raises(QuotaExceeded):
        store.reserve("c1", "k2", B, T0 + 1, profile=profile)
    store.finish("k1", T0 + 5, answered=False)
    store.reserve("c1", "k2", B, T0 + 6, profile=profile)


def test_admit_callback_can_refuse(store: SQLiteStore) -> None:
    """An ``admit`` callback that raises leaves no reservation behind."""

    class Nope(Exception):
        """Refusal raised by the test callback."""

    def admit(usage: object) -> None:
        raise Nope

    with pytest.raises(Nope):
        store.reserve("c1", "k1", A, T0, admit=admit)
    assert [] == store.open_reservations()


def test_counters_survive_reopening(db_path: Path) -> None:
    """Counters come from committed rows: a restart resets nothing."""
    s = SQLiteStore(db_path)
    s.upsert_card(StoredCard("c1", "carrier-a", "+8613800000001", "main", since=T0))
    for i in range(5):
        s.reserve("c1", f"k{i}", A, T0 + i)
        s.finish(f"k{i}", T0 + i + 0.5, answered=i % 2 == 0, talk_seconds=20)
    s.reserve("c1", "open", B, T0 + 10)
    before = s.card_usage("c1", T0 + 20)
    s.close()
    s = SQLiteStore(db_path)
    after = s.card_usage("c1", T0 + 20)
    assert before == after
    assert 1 == after.in_use
    s.close()


def test_recover_turns_open_reservations_into_orphans(store: SQLiteStore) -> None:
    """After a crash, open reservations still count as starts but not as in-use."""
    store.reserve("c1", "k1", A, T0)
    assert 1 == store.recover(T0 + 100)
    usage = store.card_usage("c1", T0 + 101)
    assert (T0,) == usage.call_starts
    assert 0 == usage.in_use
    assert [False] == [o.answered for o in usage.recent_outcomes]
    assert None is store.finish("k1", T0 + 102, answered=True)


_ops = st.lists(
    st.tuples(st.sampled_from(["reserve", "release", "finish"]), st.integers(0, 5)),
    max_size=40,
)


@settings(max_examples=40, deadline=None)
@given(ops=_ops)
def test_usage_matches_a_simple_model(ops: list[tuple[str, int]]) -> None:
    """Any sequence of reserve/release/finish gives the counts a plain model predicts."""
    s = SQLiteStore(":memory:")
    s.upsert_card(StoredCard("c1", "x", "+8613800000001", "main", since=T0))
    open_calls: set[int] = set()
    starts = 0
    tried: set[int] = set()
    for step, (op, call) in enumerate(ops):
        now = T0 + step
        if op == "reserve":
            if call in open_calls or call in tried:
                with pytest.raises(ReservationError):
                    s.reserve("c1", f"k{call}", A, now)
                continue
            s.reserve("c1", f"k{call}", A, now)
            open_calls.add(call)
            tried.add(call)
            starts += 1
        elif op == "release":
            expected = "c1" if call in open_calls else None
            assert expected == s.release(f"k{call}", now)
            if call in open_calls:
                open_calls.discard(call)
                starts -= 1
        else:
            expected = "c1" if call in open_calls else None
            assert expected == s.finish(f"k{call}", now, answered=True, talk_seconds=1)
            open_calls.discard(call)
    usage = s.card_usage("c1", T0 + len(ops))
    assert (len(open_calls), starts) == (usage.in_use, len(usage.call_starts))
    s.close()


def test_prune_keeps_open_reservations_and_recent_rows(store: SQLiteStore) -> None:
    """Pruning drops old closed rows only; an open reservation always survives."""
    store.reserve("c1", "old", A, T0 - 90 * 86400)
    store.finish("old", T0 - 90 * 86400 + 30, answered=True, talk_seconds=20)
    store.reserve("c2", "stuck", B, T0 - 80 * 86400)
    store.reserve("c1", "new", B, T0)
    store.finish("new", T0 + 30, answered=True, talk_seconds=20)
    assert 1 == store.prune_usage(T0 - 30 * 86400)
    assert [("stuck", "c2")] == store.open_reservations()
    assert [T0] == store.attempts(B, T0 - 1)
    assert [] == store.attempts(A, 0)

"""Differential: RedisStore and SQLiteStore answer the same operation sequences identically."""

from __future__ import annotations

import random
import uuid
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.store import QuotaExceeded, ReservationError, SQLiteStore, StoredCard, UsageLedger
from gateway.store.redis import RedisStore
from policies.quotas import Exhausted, QuotaProfile

from .conftest import CARDS, CARRIERS, T0, RedisServer, make_store

PROFILES = [
    None,
    QuotaProfile(calls_per_minute=3, calls_per_hour=8, calls_per_day=12, concurrent=2),
    QuotaProfile(concurrent=1, min_gap_seconds=20),
    QuotaProfile(calls_per_minute=2, calls_per_hour=5, calls_per_day=8, concurrent=None),
    QuotaProfile(talk_minutes_per_day=3, distinct_callees_per_day=3, concurrent=None),
    QuotaProfile(consecutive_failures=2, cooldown_seconds=300, concurrent=None),
    QuotaProfile(answer_rate_floor=0.5, short_call_ceiling=0.3, rate_min_sample=3,
                 rate_window_calls=5, rate_window_seconds=7200, short_call_seconds=10,
                 concurrent=None),
]  # fmt: skip
CALLEES = ["+8613800000001", "+8613800000002", "+8613800000003", "+8613800000004"]

reserve = st.tuples(
    st.just("reserve"),
    st.sampled_from(["c1", "c3"]),
    st.integers(0, 11),
    st.sampled_from(CALLEES),
    st.integers(0, len(PROFILES) - 1),
)
finish = st.tuples(
    st.just("finish"), st.integers(0, 11), st.booleans(), st.integers(0, 120), st.booleans()
)
release = st.tuples(st.just("release"), st.integers(0, 11), st.booleans())
ops = st.lists(
    st.tuples(
        st.sampled_from([0.0, 0.5, 5.0, 5.0, 30.0, 30.0, 61.0, 900.0, 3700.0, 30000.0]),
        st.one_of(
            reserve, reserve, reserve, finish, finish, release, st.tuples(st.just("recover"))
        ),
    ),
    min_size=1,
    max_size=80,
)


def step(store: UsageLedger, op: tuple[Any, ...], now: float) -> object:
    """Apply one operation; return its result or the refusal it raised."""
    try:
        match op:
            case ("reserve", card, call, callee, profile):
                store.reserve(card, f"k{call}", callee, now, profile=PROFILES[profile])
                return None
            case ("finish", call, answered, talk, failed):
                return store.finish(
                    f"k{call}", now, answered=answered, talk_seconds=float(talk), failed=failed
                )
            case ("release", call, failed):
                return store.release(f"k{call}", now, failed=failed)
            case _:
                return store.recover(now)
    except QuotaExceeded as exc:
        return exc.exhausted
    except ReservationError:
        return "duplicate"


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sequence=ops)
def test_same_answers_and_usage_as_sqlite(
    redis_server: RedisServer, sequence: list[tuple[float, tuple[Any, ...]]]
) -> None:
    """Every reserve/finish/release/recover gives the same answer, and the same CardUsage after."""
    sqlite = SQLiteStore(":memory:", carrier_timezones=CARRIERS)
    for card, carrier in CARDS.items():
        sqlite.upsert_card(StoredCard(card, carrier, "+8613800000000", "main", since=T0))
    ours: RedisStore = make_store(redis_server.url, f"d{uuid.uuid4().hex[:12]}")
    now = T0 - 7200.0
    try:
        for dt, op in sequence:
            now += dt
            expected = step(sqlite, op, now)
            assert expected == step(ours, op, now), (op, now)
            event(f"{op[0]} -> {getattr(expected, 'limit', type(expected).__name__)}")
            for card in ("c1", "c3"):
                assert sqlite.card_usage(card, now) == ours.card_usage(card, now), (card, now)
    finally:
        sqlite.close()
        ours.close()


def drive(seed: int, steps: int) -> list[tuple[float, tuple[Any, ...]]]:
    """A realistic pseudo-random workload: calls start, end, fail, fail over, pile up."""
    rnd = random.Random(seed)
    sequence: list[tuple[float, tuple[Any, ...]]] = []
    open_calls: list[int] = []
    next_call = 0
    for _ in range(steps):
        dt = rnd.choice([0.0, 1.0, 2.0, 5.0, 8.0, 15.0, 15.0, 40.0, 300.0, 3600.0, 40000.0])
        roll = rnd.random()
        if roll < 0.5 or not open_calls:
            call = next_call if rnd.random() < 0.9 else rnd.randrange(max(next_call, 1))
            next_call += 1
            card = rnd.choice(["c1", "c3"])
            profile = rnd.randrange(1, len(PROFILES))
            sequence.append((dt, ("reserve", card, call, rnd.choice(CALLEES), profile)))
            open_calls.append(call)
        elif roll < 0.85:
            call = open_calls.pop(rnd.randrange(len(open_calls)))
            answered = rnd.random() < 0.55
            talk = rnd.choice([2, 5, 30, 90]) if answered else 0
            sequence.append((dt, ("finish", call, answered, talk, rnd.random() < 0.1)))
        elif roll < 0.97:
            call = open_calls.pop(rnd.randrange(len(open_calls)))
            sequence.append((dt, ("release", call, rnd.random() < 0.7)))
        else:
            sequence.append((dt, ("recover",)))
            open_calls.clear()
    return sequence


def test_long_workloads_agree_and_hit_every_limit(redis_server: RedisServer) -> None:
    """Seeded workloads of 400 steps agree step by step; together they hit every limit kind."""
    seen: set[str] = set()
    for seed in range(6):
        sqlite = SQLiteStore(":memory:", carrier_timezones=CARRIERS)
        for card, carrier in CARDS.items():
            sqlite.upsert_card(StoredCard(card, carrier, "+8613800000000", "main", since=T0))
        ours = make_store(redis_server.url, f"w{uuid.uuid4().hex[:12]}")
        now = T0 - 7200.0
        for dt, op in drive(seed, 400):
            now += dt
            expected = step(sqlite, op, now)
            assert expected == step(ours, op, now), (seed, op, now)
            if isinstance(expected, Exhausted):
                seen.add(expected.limit.value)
            if op[0] == "reserve":
                assert sqlite.card_usage(op[1], now) == ours.card_usage(op[1], now), (seed, now)
        sqlite.close()
        ours.close()
    expected_limits = {
        "calls_per_minute", "calls_per_hour", "calls_per_day", "concurrent", "min_gap_seconds",
        "talk_minutes_per_day", "distinct_callees_per_day", "consecutive_failures",
        "answer_rate_floor", "short_call_ceiling",
    }  # fmt: skip
    assert expected_limits <= seen, expected_limits - seen

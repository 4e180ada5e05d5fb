"""RedisStore reservations: counting, each limit kind, release/finish, duplicates, recover."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.store import QuotaExceeded, ReservationError, SQLiteStore, UsageLedger
from gateway.store.redis import RedisStore
from policies.quotas import CallOutcome, CardUsage, CardUsageView, QuotaLimit, QuotaProfile

from .conftest import T0, RedisServer, make_store

A, B, C = "+8613811110001", "+8613811110002", "+8613811110003"
DAY_END = 1_700_006_400.0  # T0's UTC day ends 6400 s later

Op = tuple[Any, ...]


def apply(store: UsageLedger, ops: list[Op]) -> None:
    """Run ("r", card, call, callee, t) / ("f", call, t, answered, talk) / ("x", call, t, failed)."""
    for op in ops:
        if op[0] == "r":
            store.reserve(op[1], op[2], op[3], op[4])
        elif op[0] == "f":
            store.finish(op[1], op[2], answered=op[3], talk_seconds=op[4])
        else:
            store.release(op[1], op[2], failed=op[3])


def calls(n: int, *, start: float = T0, step: float = 10.0, talk: float = 0.0) -> list[Op]:
    """``n`` finished calls on c1 to distinct callees (answered when ``talk`` > 0)."""
    ops: list[Op] = []
    for i in range(n):
        t = start + i * step
        ops += [("r", "c1", f"k{i}", f"+86138000{i:05d}", t), ("f", f"k{i}", t + 5, talk > 0, talk)]
    return ops


LIMIT_CASES: list[tuple[str, QuotaProfile, list[Op], str, float, QuotaLimit, float | None]] = [
    ("per-minute", QuotaProfile(calls_per_minute=2), calls(2), C, T0 + 20,
     QuotaLimit.CALLS_PER_MINUTE, T0 + 60),
    ("per-hour", QuotaProfile(calls_per_hour=2), calls(2, step=100), C, T0 + 200,
     QuotaLimit.CALLS_PER_HOUR, T0 + 3600),
    ("per-day", QuotaProfile(calls_per_day=2), calls(2, step=4000), C, T0 + 5000,
     QuotaLimit.CALLS_PER_DAY, DAY_END),
    ("concurrent", QuotaProfile(concurrent=1), [("r", "c1", "open", A, T0)], C, T0 + 5,
     QuotaLimit.CONCURRENT, None),
    ("min-gap", QuotaProfile(min_gap_seconds=30), calls(1), C, T0 + 10,
     QuotaLimit.MIN_GAP, T0 + 30),
    ("talk-minutes", QuotaProfile(talk_minutes_per_day=1), calls(1, talk=61), C, T0 + 100,
     QuotaLimit.TALK_MINUTES_PER_DAY, DAY_END),
    ("distinct-callees", QuotaProfile(distinct_callees_per_day=2), calls(2), C, T0 + 100,
     QuotaLimit.DISTINCT_CALLEES_PER_DAY, DAY_END),
    ("consecutive-failures", QuotaProfile(consecutive_failures=2, cooldown_seconds=900),
     [("r", "c1", "k1", A, T0), ("x", "k1", T0 + 1, True),
      ("r", "c1", "k2", B, T0 + 10), ("x", "k2", T0 + 11, True)], C, T0 + 20,
     QuotaLimit.CONSECUTIVE_FAILURES, T0 + 11 + 900),
    ("answer-rate", QuotaProfile(answer_rate_floor=0.5, rate_min_sample=4), calls(4), C, T0 + 40,
     QuotaLimit.ANSWER_RATE_FLOOR, T0 + 86400),
    ("short-calls", QuotaProfile(short_call_ceiling=0.25, rate_min_sample=4), calls(4, talk=2),
     C, T0 + 40, QuotaLimit.SHORT_CALL_CEILING, T0 + 86400),
    ("night", QuotaProfile(night_window="21:00-08:00"), [], C, T0,
     QuotaLimit.NIGHT_WINDOW, DAY_END + 8 * 3600),
]  # fmt: skip


def test_implements_the_protocols(rstore: RedisStore) -> None:
    """RedisStore is a UsageLedger (structurally) and a policies CardUsageView."""
    ledger: UsageLedger = rstore
    assert isinstance(ledger, CardUsageView)


def test_reserve_within_limits_counts(rstore: RedisStore) -> None:
    """Reservations inside the profile commit and show up in the usage at once."""
    profile = QuotaProfile(calls_per_minute=5, concurrent=2)
    rstore.reserve("c1", "k1", A, T0, profile=profile)
    rstore.reserve("c1", "k2", B, T0 + 1, profile=profile)
    usage = rstore.card_usage("c1", T0 + 2)
    assert (T0, T0 + 1) == usage.call_starts
    assert frozenset({A, B}) == usage.callees_today
    assert 2 == usage.in_use
    assert CardUsage() == rstore.card_usage("c2", T0 + 2)


@pytest.mark.parametrize(
    ("profile", "ops", "callee", "at", "limit", "frees_at"),
    [case[1:] for case in LIMIT_CASES],
    ids=[case[0] for case in LIMIT_CASES],
)
def test_each_limit_refuses_like_sqlite(
    rstore: RedisStore,
    sqlite: SQLiteStore,
    profile: QuotaProfile,
    ops: list[Op],
    callee: str,
    at: float,
    limit: QuotaLimit,
    frees_at: float | None,
) -> None:
    """Each limit kind refuses with its name and when it frees, exactly as the SQLite store."""
    apply(rstore, ops)
    apply(sqlite, ops)
    before = rstore.card_usage("c1", at)
    with pytest.raises(QuotaExceeded) as ours:
        rstore.reserve("c1", "probe", callee, at, profile=profile)
    with pytest.raises(QuotaExceeded) as theirs:
        sqlite.reserve("c1", "probe", callee, at, profile=profile)
    assert (limit, frees_at) == (ours.value.exhausted.limit, ours.value.exhausted.frees_at)
    assert theirs.value.exhausted == ours.value.exhausted
    assert before == rstore.card_usage("c1", at), "a refused reservation writes nothing"


def test_repeat_callee_passes_the_distinct_limit(rstore: RedisStore) -> None:
    """A callee already called today does not count as a new distinct callee."""
    profile = QuotaProfile(distinct_callees_per_day=2, concurrent=None)
    apply(rstore, calls(2))
    rstore.reserve("c1", "again", "+8613800000000", T0 + 100, profile=profile)
    with pytest.raises(QuotaExceeded):
        rstore.reserve("c1", "new", C, T0 + 101, profile=profile)


def test_limit_frees_when_the_window_passes(rstore: RedisStore) -> None:
    """At the refused call's frees-at instant the same reservation succeeds."""
    profile = QuotaProfile(calls_per_minute=2, concurrent=None)
    apply(rstore, calls(2))
    with pytest.raises(QuotaExceeded) as exc:
        rstore.reserve("c1", "k9", C, T0 + 30, profile=profile)
    frees = exc.value.exhausted.frees_at
    assert frees is not None
    rstore.reserve("c1", "k9", C, frees, profile=profile)


def test_release_uncounts_and_feeds_the_failure_streak(rstore: RedisStore) -> None:
    """A released start stops counting; a failed release enters the outcome window."""
    rstore.reserve("c1", "k1", A, T0)
    assert "c1" == rstore.release("k1", T0 + 2)
    rstore.reserve("c1", "k2", B, T0 + 3)
    assert "c1" == rstore.release("k2", T0 + 4, failed=False)
    usage = rstore.card_usage("c1", T0 + 5)
    assert ((), frozenset(), 0) == (usage.call_starts, usage.callees_today, usage.in_use)
    assert (CallOutcome(T0, False, 0.0, True, T0 + 2),) == usage.recent_outcomes
    assert rstore.release("k1", T0 + 6) is None


def test_finish_records_outcome_talk_and_short_calls(rstore: RedisStore) -> None:
    """finish() closes the reservation: talk seconds today, outcome window, facts."""
    rstore.reserve("c1", "k1", A, T0)
    rstore.reserve("c2", "k2", B, T0)
    assert "c1" == rstore.finish("k1", T0 + 70, answered=True, talk_seconds=60)
    rstore.reserve("c1", "k3", B, T0 + 80)
    assert "c1" == rstore.finish("k3", T0 + 85, answered=True, talk_seconds=3)
    usage = rstore.card_usage("c1", T0 + 90)
    assert (63.0, 0) == (usage.talk_seconds_today, usage.in_use)
    assert [(T0, True, 60.0), (T0 + 80, True, 3.0)] == [
        (o.started_at, o.answered, o.talk_seconds) for o in usage.recent_outcomes
    ]
    facts = rstore.usage_facts("c1", T0 + 90)
    assert (2, 2, 1, 0) == (
        facts.window_calls,
        facts.window_answered,
        facts.window_short,
        facts.concurrent,
    )
    assert rstore.finish("k1", T0 + 95, answered=False) is None
    assert 1 == rstore.card_usage("c2", T0 + 90).in_use


def test_duplicate_reservations_are_refused(rstore: RedisStore) -> None:
    """One open reservation per call, and never the same card twice for a call."""
    rstore.reserve("c1", "k1", A, T0)
    with pytest.raises(ReservationError):
        rstore.reserve("c2", "k1", A, T0)
    rstore.release("k1", T0 + 1)
    with pytest.raises(ReservationError):
        rstore.reserve("c1", "k1", A, T0 + 2)
    rstore.reserve("c2", "k1", A, T0 + 2)


def test_admit_refuses_and_sees_the_usage(rstore: RedisStore) -> None:
    """An admit callable sees the card's usage and may refuse; nothing is written then."""
    rstore.reserve("c1", "k1", A, T0)
    seen: list[int] = []

    def admit(usage: CardUsage) -> None:
        seen.append(usage.in_use)
        if usage.in_use >= 1:
            raise RuntimeError("busy")

    with pytest.raises(RuntimeError):
        rstore.reserve("c1", "k2", B, T0 + 1, admit=admit)
    assert [1] == seen
    assert 1 == rstore.card_usage("c1", T0 + 1).in_use


def test_admit_retries_when_the_card_changed_meanwhile(
    rstore: RedisStore, redis_server: RedisServer, prefix: str
) -> None:
    """If another instance reserves between admit's read and the write, admit runs again."""
    other = make_store(redis_server.url, prefix, node="gw2")
    seen: list[int] = []

    def admit(usage: CardUsage) -> None:
        seen.append(len(usage.call_starts))
        if len(seen) == 1:
            other.reserve("c1", "theirs", B, T0)

    rstore.reserve("c1", "mine", A, T0 + 1, admit=admit)
    assert [0, 1] == seen
    assert 2 == rstore.card_usage("c1", T0 + 2).in_use


def test_recover_orphans_only_this_nodes_reservations(
    rstore: RedisStore, redis_server: RedisServer, prefix: str
) -> None:
    """A restarted node orphans its open reservations: still starts, no longer in use."""
    other = make_store(redis_server.url, prefix, node="gw2")
    rstore.reserve("c1", "mine", A, T0)
    other.reserve("c2", "theirs", B, T0)
    assert [("mine", "c1")] == rstore.open_reservations()
    assert 1 == rstore.recover(T0 + 100)
    assert 0 == rstore.recover(T0 + 101)
    usage = rstore.card_usage("c1", T0 + 101)
    assert ((T0,), 0) == (usage.call_starts, usage.in_use)
    assert (CallOutcome(T0, False, 0.0, False, T0 + 100),) == usage.recent_outcomes
    assert [("theirs", "c2")] == other.open_reservations()
    assert [("theirs", "c2")] == rstore.open_reservations(every_node=True)
    other.reserve("c1", "theirs-too", C, T0 + 102)
    assert [("theirs", "c2"), ("theirs-too", "c1")] == rstore.open_reservations(every_node=True)


def test_outcome_window_is_capped(redis_server: RedisServer, prefix: str) -> None:
    """Only the last ``outcome_window`` outcomes are kept (by start time)."""
    store = make_store(redis_server.url, prefix, outcome_window=3)
    apply(store, calls(5))
    usage = store.card_usage("c1", T0 + 100)
    assert [T0 + 20, T0 + 30, T0 + 40] == [o.started_at for o in usage.recent_outcomes]
    assert 3 == store.client.zcard(f"{prefix}:card:c1:outz")


def test_carrier_day_follows_the_carrier_timezone(rstore: RedisStore) -> None:
    """Daily counters of a Shanghai card reset at Shanghai midnight (16:00 UTC)."""
    midnight = 1_700_064_000.0  # 2023-11-15T16:00:00Z = 2023-11-16 00:00 Asia/Shanghai
    profile = QuotaProfile(calls_per_day=1, concurrent=None)
    rstore.reserve("c3", "k1", A, midnight - 10, profile=profile)
    with pytest.raises(QuotaExceeded) as exc:
        rstore.reserve("c3", "k2", B, midnight - 5, profile=profile)
    assert midnight == exc.value.exhausted.frees_at
    rstore.reserve("c3", "k2", B, midnight + 1, profile=profile)
    assert frozenset({B}) == rstore.card_usage("c3", midnight + 2).callees_today


def test_usage_facts_match_sqlite(rstore: RedisStore, sqlite: SQLiteStore) -> None:
    """Aggregated facts (wallboards, rehydration) equal the SQLite store's, explicit short too."""
    ops: list[Op] = [
        *calls(3, talk=30),
        ("r", "c1", "f1", A, T0 + 100),
        ("x", "f1", T0 + 101, True),
        ("r", "c1", "f2", B, T0 + 110),
    ]
    for store in (rstore, sqlite):
        apply(store, ops)
        store.reserve("c1", "s1", C, T0 + 50)
        store.finish("s1", T0 + 80, answered=True, talk_seconds=25, short=True)
    now = T0 + 120
    day_start = DAY_END - 86400
    expected = sqlite.usage("c1", now, day_start_at=day_start, window=50)
    assert expected == rstore.usage_facts("c1", now, window=50)
    assert (1, 1) == (expected.window_short, expected.consecutive_failures)

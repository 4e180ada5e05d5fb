"""Outages: a killed or frozen Redis fails closed, promptly; a restarted one works again."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from gateway.store import QuotaExceeded, SQLiteStore, StoreUnavailable, UsageLedger
from gateway.store.redis import UNCERTAIN_SECONDS, MirroredLedger, RedisStore, sqlite_facts
from policies.quotas import QuotaLimit, QuotaProfile

from .conftest import CARRIERS, T0, RedisServer, make_store

A, B, C = "+8613811110001", "+8613811110002", "+8613811110003"


def elapsed(fn: Callable[[], object]) -> float:
    """Seconds ``fn`` took to raise StoreUnavailable (fails the test if it did not)."""
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as exc:
        fn()
    assert 503 == exc.value.status_code
    assert "store-unavailable" == exc.value.reason_text
    return time.monotonic() - started


def test_killed_redis_fails_closed_at_once(private_redis: RedisServer, prefix: str) -> None:
    """SIGKILL the server: every operation raises StoreUnavailable within the timeout."""
    store = make_store(private_redis.url, prefix, timeout=0.25)
    profile = QuotaProfile(calls_per_minute=5)
    store.reserve("c1", "k1", A, T0, profile=profile)
    private_redis.kill()
    took = [
        elapsed(lambda: store.reserve("c1", "k2", B, T0 + 1, profile=profile)),
        elapsed(lambda: store.reserve("c2", "k3", B, T0 + 1)),
        elapsed(lambda: store.card_usage("c1", T0 + 1)),
        elapsed(lambda: store.finish("k1", T0 + 2, answered=True, talk_seconds=1)),
        elapsed(lambda: store.release("k1", T0 + 2)),
        elapsed(lambda: store.recover(T0 + 2)),
    ]
    assert max(took) < 1.0, took
    assert not store.ping()


def test_frozen_redis_times_out_and_fails_closed(private_redis: RedisServer, prefix: str) -> None:
    """A hung server (SIGSTOP) is bounded by the socket timeout, never waited on."""
    store = make_store(private_redis.url, prefix, timeout=0.2)
    store.reserve("c1", "k1", A, T0)
    private_redis.signal(signal.SIGSTOP)
    try:
        took = elapsed(lambda: store.reserve("c1", "k2", B, T0 + 1, profile=QuotaProfile()))
        took_read = elapsed(lambda: store.card_usage("c1", T0 + 1))
    finally:
        private_redis.signal(signal.SIGCONT)
    assert 0.15 < took < 1.0
    assert took_read < 1.0
    assert 1 == store.uncertain


def test_lost_reply_is_undone_when_redis_answers_again(
    private_redis: RedisServer, prefix: str
) -> None:
    """A reservation sent to a frozen server runs when it thaws; the store releases it."""
    store = make_store(private_redis.url, prefix, timeout=0.2)
    store.reserve("c2", "warm", B, T0)  # loads the script: EVALSHA will run on thaw
    private_redis.signal(signal.SIGSTOP)
    try:
        with pytest.raises(StoreUnavailable):
            store.reserve("c1", "lost", A, T0, profile=QuotaProfile(concurrent=1))
    finally:
        private_redis.signal(signal.SIGCONT)
    other = make_store(private_redis.url, prefix, node="gw2")
    deadline = time.monotonic() + 5
    while other.card_usage("c1", T0 + 1).in_use == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert 1 == other.card_usage("c1", T0 + 1).in_use, "the thawed server ran the script"
    usage = store.card_usage("c1", T0 + 2)
    assert (0, (), 0) == (usage.in_use, usage.call_starts, store.uncertain)
    store.reserve("c1", "next", B, T0 + 3, profile=QuotaProfile(concurrent=1))


def test_restarted_redis_works_again(private_redis: RedisServer, prefix: str) -> None:
    """After a kill and a restart on the same port the same client object works again."""
    store = make_store(private_redis.url, prefix, timeout=0.25)
    store.reserve("c1", "k1", A, T0)
    private_redis.kill()
    with pytest.raises(StoreUnavailable):
        store.reserve("c1", "k2", B, T0 + 1)
    assert "unavailable" == store.guard.status()["state"]  # what /health reports
    private_redis.start()
    store.reserve("c1", "k3", C, T0 + 2, profile=QuotaProfile(calls_per_minute=5))
    assert "c1" == store.finish("k3", T0 + 3, answered=False)
    assert store.ping()
    deadline = time.monotonic() + 3.0
    while not store.guard.healthy:  # the guard's PING probe closes it by itself
        assert time.monotonic() < deadline, store.guard.status()
        time.sleep(0.02)
    store.close()


def mirror(stores: list[UsageLedger], ops: Callable[[UsageLedger], None]) -> None:
    """Apply the same operations to every store (the gateway recording usage in both)."""
    for s in stores:
        ops(s)


def history(s: UsageLedger) -> None:
    """A card day on c1: answered, short, failed calls, one call still up."""
    for i in range(6):
        t = T0 - 3000 + i * 400
        s.reserve("c1", f"d{i}", f"+86138{i:08d}", t)
        s.finish(f"d{i}", t + 100, answered=i % 2 == 0, talk_seconds=90.0 if i % 2 == 0 else 0.0)
    s.reserve("c1", "m1", A, T0 - 20)
    s.finish("m1", T0 - 15, answered=True, talk_seconds=3)
    s.reserve("c1", "f1", B, T0 - 10)
    s.release("f1", T0 - 9)
    s.reserve("c1", "up", C, T0 - 5)


PROBES = [
    QuotaProfile(calls_per_minute=2, concurrent=None),
    QuotaProfile(calls_per_hour=8, concurrent=None),
    QuotaProfile(calls_per_day=8, concurrent=None),
    QuotaProfile(concurrent=1),
    QuotaProfile(min_gap_seconds=30, concurrent=None),
    QuotaProfile(talk_minutes_per_day=4.5, concurrent=None),
    QuotaProfile(distinct_callees_per_day=8, concurrent=None),
    QuotaProfile(consecutive_failures=1, concurrent=None),
    QuotaProfile(answer_rate_floor=0.7, rate_min_sample=5, concurrent=None),
    QuotaProfile(short_call_ceiling=0.1, rate_min_sample=5, concurrent=None),
]


PROBE_IDS = [
    "per-minute",
    "per-hour",
    "per-day",
    "concurrent",
    "min-gap",
    "talk",
    "distinct",
    "failures",
    "answer-rate",
    "short-calls",
]


@pytest.mark.parametrize("profile", PROBES, ids=PROBE_IDS)
def test_restart_without_persistence_rehydrates_from_sqlite_facts(
    private_redis: RedisServer, prefix: str, sqlite: SQLiteStore, profile: QuotaProfile
) -> None:
    """Redis restarted empty: the card's window is rebuilt from SQLite, never looser.

    Whatever SQLite refuses right after the restart, Redis refuses too.
    """
    store = make_store(private_redis.url, prefix)
    mirror([sqlite, store], history)
    store.facts = sqlite_facts(sqlite, store.timezone)
    with pytest.raises(QuotaExceeded) as before:
        sqlite.reserve("c1", "probe", "+8613899999999", T0, profile=profile)
    with pytest.raises(QuotaExceeded) as warm:
        store.reserve("c1", "probe", "+8613899999999", T0, profile=profile)
    assert before.value.exhausted == warm.value.exhausted

    private_redis.kill()
    private_redis.start()
    assert not store.is_hydrated("c1")
    with pytest.raises(QuotaExceeded) as cold:
        store.reserve("c1", "probe", "+8613899999999", T0, profile=profile)
    assert before.value.exhausted.limit == cold.value.exhausted.limit
    assert (cold.value.exhausted.frees_at or float("inf")) >= (
        before.value.exhausted.frees_at or float("inf")
    )
    assert store.is_hydrated("c1")


def test_rehydration_happens_once_and_is_conservative(
    private_redis: RedisServer, prefix: str, sqlite: SQLiteStore
) -> None:
    """The rebuilt usage over-counts (never under-counts) and is not applied twice."""
    store = make_store(private_redis.url, prefix, rehydrate_hold_seconds=600.0)
    mirror([sqlite, store], history)
    store.facts = sqlite_facts(sqlite, store.timezone)
    private_redis.kill()
    private_redis.start()
    now = T0 + 1
    real = sqlite.card_usage("c1", now)
    rebuilt = store.card_usage("c1", now)
    assert store.is_hydrated("c1")
    assert rebuilt == store.card_usage("c1", now), "a second read does not rehydrate again"
    assert not store.rehydrate("c1", store.facts("c1", now), now)
    assert len(real.call_starts) == len(rebuilt.call_starts)
    for limit in (60.0, 3600.0):
        assert sum(t > now - limit for t in rebuilt.call_starts) >= sum(
            t > now - limit for t in real.call_starts
        )
    assert (real.in_use, real.talk_seconds_today) == (rebuilt.in_use, rebuilt.talk_seconds_today)
    assert len(real.callees_today) == len(rebuilt.callees_today)
    assert len(real.recent_outcomes) == len(rebuilt.recent_outcomes)
    assert 0 == store.card_usage("c1", now + 601).in_use, "held slots expire"


def test_without_facts_a_cold_card_starts_from_redis(
    private_redis: RedisServer, prefix: str
) -> None:
    """No facts source: after a restart without persistence, counting restarts (documented)."""
    store = make_store(private_redis.url, prefix)
    profile = QuotaProfile(calls_per_minute=1, concurrent=None)
    store.reserve("c1", "k1", A, T0, profile=profile)
    with pytest.raises(QuotaExceeded) as exc:
        store.reserve("c1", "k2", B, T0 + 1, profile=profile)
    assert QuotaLimit.CALLS_PER_MINUTE == exc.value.exhausted.limit
    private_redis.kill()
    private_redis.start()
    store.reserve("c1", "k2", B, T0 + 2, profile=profile)


def test_failing_facts_source_fails_closed(private_redis: RedisServer, prefix: str) -> None:
    """If the durable facts cannot be read, a cold card is refused (StoreUnavailable)."""

    def broken(card: str, now: float) -> object:
        raise StoreUnavailable("sqlite gone")

    store: RedisStore = make_store(private_redis.url, prefix, facts=broken)
    with pytest.raises(StoreUnavailable):
        store.reserve("c1", "k1", A, T0, profile=QuotaProfile())
    assert 0 == store.client.exists(f"{prefix}:card:c1:starts")


def test_lost_reply_that_never_ran_is_forgotten_after_a_while(
    private_redis: RedisServer, prefix: str
) -> None:
    """A lost reservation that never ran (script unknown to the server) is retried, then dropped."""
    store = make_store(private_redis.url, prefix, timeout=0.2)
    private_redis.signal(signal.SIGSTOP)
    try:
        with pytest.raises(StoreUnavailable):
            store.reserve("c1", "lost", A, T0)
    finally:
        private_redis.signal(signal.SIGCONT)
    assert 0 == store.card_usage("c1", T0 + 1).in_use
    assert 1 == store.uncertain, "kept: a buffered command could still run"
    store.card_usage("c1", T0 + UNCERTAIN_SECONDS)
    assert 0 == store.uncertain


def test_finish_during_an_outage_is_replayed_and_aof_keeps_counters(tmp_path: Path) -> None:
    """Redis with AOF killed mid-call: finish fails closed, then is replayed after the restart.

    The counters survive the restart (append-only file), and the call does not
    stay "in use" although its finish first failed to reach Redis.
    """
    server = RedisServer(tmp_path / "aof", aof=True)
    server.start()
    try:
        store = make_store(server.url, "aof", timeout=0.25)
        profile = QuotaProfile(calls_per_minute=2, concurrent=1)
        store.reserve("c1", "k1", A, T0, profile=profile)
        server.kill()
        with pytest.raises(StoreUnavailable):
            store.finish("k1", T0 + 30, answered=True, talk_seconds=25)
        assert 1 == store.unclosed
        server.start()
        usage = store.card_usage("c1", T0 + 31)
        assert (0, (T0,), 25.0) == (usage.in_use, usage.call_starts, usage.talk_seconds_today)
        assert 0 == store.unclosed
        store.reserve("c1", "k2", B, T0 + 32, profile=profile)
        with pytest.raises(QuotaExceeded) as minute:
            store.reserve(
                "c1", "k4", C, T0 + 40, profile=QuotaProfile(calls_per_minute=2, concurrent=None)
            )
        assert QuotaLimit.CALLS_PER_MINUTE == minute.value.exhausted.limit
    finally:
        server.stop()


def test_a_replay_refused_by_redis_does_not_block_later_operations(
    private_redis: RedisServer, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kept close that Redis refuses (script error) is dropped, not retried forever."""
    store = make_store(private_redis.url, prefix, timeout=0.25)
    private_redis.kill()
    with pytest.raises(StoreUnavailable):
        store.finish("k1", T0, answered=False)
    private_redis.start()
    real = store._close

    def refusing(*args: object, **kwargs: object) -> object:
        monkeypatch.setattr(store, "_close", real)
        raise redis.exceptions.ResponseError("ERR simulated script error")

    monkeypatch.setattr(store, "_close", refusing)
    assert 0 == store.card_usage("c1", T0 + 1).in_use
    assert 0 == store.unclosed


def test_a_close_is_kept_even_while_earlier_ones_still_wait(
    private_redis: RedisServer, prefix: str
) -> None:
    """Redis down: every release/finish is kept, not only the first (none is lost)."""
    store = make_store(private_redis.url, prefix, timeout=0.25)
    store.reserve("c1", "k1", A, T0)
    store.reserve("c2", "k2", B, T0)
    private_redis.kill()
    with pytest.raises(StoreUnavailable):
        store.finish("k1", T0 + 30, answered=True, talk_seconds=25)
    with pytest.raises(StoreUnavailable):
        store.release("k2", T0 + 31)
    assert (True, True, 2) == (store.is_kept("k1"), store.is_kept("k2"), store.unclosed)
    assert not store.settle(T0 + 32), "still unreachable"
    assert 2 == store.pending


def mirrored_on(server: RedisServer, prefix: str, path: Path, node: str = "gw1") -> MirroredLedger:
    """The gateway's ledger: Redis (rehydrating from SQLite) mirrored to a SQLite file."""
    durable = SQLiteStore(path, carrier_timezones=CARRIERS)
    shared = make_store(server.url, prefix, node=node, timeout=0.25)
    shared.facts = sqlite_facts(durable, shared.timezone)
    return MirroredLedger(shared, durable)


def test_teardown_during_an_outage_never_raises_and_is_replayed(tmp_path: Path) -> None:
    """Redis (AOF) killed mid-call: finish/release succeed on SQLite, replay to Redis later.

    The call's teardown sees no error (logged only), SQLite is exact at once,
    and once Redis is back the kept closes reach it: no call stays in use,
    talk seconds and the failure streak are counted, the start still counts.
    """
    server = RedisServer(tmp_path / "aof", aof=True)
    server.start()
    try:
        ledger = mirrored_on(server, "mo", tmp_path / "gw.db")
        profile = QuotaProfile(calls_per_minute=3, concurrent=1)
        ledger.reserve("c1", "k1", A, T0, profile=profile)
        ledger.reserve("c2", "k2", B, T0 + 1, profile=profile)
        server.kill()
        assert "c1" == ledger.finish("k1", T0 + 30, answered=True, talk_seconds=25)
        assert "c2" == ledger.release("k2", T0 + 31)
        assert [] == ledger.store.open_reservations()
        assert 25.0 == ledger.store.card_usage("c1", T0 + 32).talk_seconds_today
        assert 2 == ledger.shared.unclosed
        with pytest.raises(StoreUnavailable) as refused:
            ledger.reserve("c1", "k3", C, T0 + 33, profile=profile)
        assert (503, "store-unavailable") == (refused.value.status_code, refused.value.reason_text)
        assert refused.value.retry_after > 0
        assert [] == ledger.store.open_reservations(), "nothing recorded for a refused call"
        server.start()
        assert ledger.settle(T0 + 40)
        assert 0 == ledger.shared.pending
        c1 = ledger.card_usage("c1", T0 + 40)
        assert (0, (T0,), 25.0) == (c1.in_use, c1.call_starts, c1.talk_seconds_today)
        c2 = ledger.card_usage("c2", T0 + 40)
        assert (0, (), True) == (c2.in_use, c2.call_starts, c2.recent_outcomes[-1].failed)
        ledger.reserve("c1", "k4", C, T0 + 41, profile=profile)
    finally:
        server.stop()


def test_recover_while_redis_is_down_runs_before_the_next_reservation(tmp_path: Path) -> None:
    """A restart during an outage: the gateway starts, refuses calls, recovers when Redis is back.

    The crashed run's reservation is orphaned (still counted as a start,
    no longer in use) before the first new reservation is taken.
    """
    server = RedisServer(tmp_path / "aof", aof=True)
    server.start()
    try:
        crashed = mirrored_on(server, "rc", tmp_path / "gw.db")
        crashed.reserve("c1", "k1", A, T0, profile=QuotaProfile(concurrent=1))
        crashed.shared.close()
        crashed.store.close()
        server.kill()
        restarted = mirrored_on(server, "rc", tmp_path / "gw.db")
        assert 1 == restarted.recover(T0 + 10), "SQLite side recovered at once"
        assert 1 == restarted.shared.pending
        with pytest.raises(StoreUnavailable):
            restarted.reserve("c1", "k2", B, T0 + 11, profile=QuotaProfile(concurrent=1))
        server.start()
        restarted.reserve("c1", "k3", C, T0 + 20, profile=QuotaProfile(concurrent=1))
        assert 0 == restarted.shared.pending
        usage = restarted.card_usage("c1", T0 + 21)
        assert (1, (T0, T0 + 20)) == (usage.in_use, usage.call_starts)
        with pytest.raises(QuotaExceeded):
            restarted.reserve("c1", "k4", C, T0 + 22, profile=QuotaProfile(calls_per_minute=2))
    finally:
        server.stop()


def test_recover_rehydrates_cold_cards_at_startup(
    tmp_path: Path, private_redis: RedisServer, prefix: str
) -> None:
    """Redis restarted empty while the gateway was down: recover rebuilds every card at once."""
    ledger = mirrored_on(private_redis, prefix, tmp_path / "gw.db")
    ledger.reserve("c1", "k1", A, T0)
    ledger.finish("k1", T0 + 20, answered=True, talk_seconds=15)
    ledger.reserve("c3", "k2", B, T0 + 30)
    private_redis.kill()
    private_redis.start()
    restarted = mirrored_on(private_redis, prefix, tmp_path / "gw.db")
    restarted.recover(T0 + 40)
    assert all(restarted.shared.is_hydrated(c) for c in ("c1", "c2", "c3"))
    assert 2 == len(restarted.card_usage("c1", T0 + 41).call_starts) + len(
        restarted.card_usage("c3", T0 + 41).call_starts
    )
    assert 15.0 == restarted.card_usage("c1", T0 + 41).talk_seconds_today

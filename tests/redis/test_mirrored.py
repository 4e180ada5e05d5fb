"""MirroredLedger: Redis decides atomically, SQLite keeps every start durably."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.store import QuotaExceeded, SQLiteStore, StoreUnavailable, UsageLedger
from gateway.store.redis import MirroredLedger, RedisStore, sqlite_facts
from policies.quotas import QuotaLimit, QuotaProfile

from .conftest import CARRIERS, T0, RedisServer, make_store

A, B, C = "+8613811110001", "+8613811110002", "+8613811110003"


def mirrored(url: str, prefix: str, path: Path) -> MirroredLedger:
    """A mirrored ledger whose Redis side rehydrates from its SQLite side."""
    durable = SQLiteStore(path, carrier_timezones=CARRIERS)
    shared: RedisStore = make_store(url, prefix)
    shared.facts = sqlite_facts(durable, shared.timezone)
    return MirroredLedger(shared, durable)


def test_both_stores_record_every_start(
    tmp_path: Path, redis_server: RedisServer, prefix: str
) -> None:
    """A start is in Redis and in SQLite: frequency caps and agent limits read the latter."""
    ledger: UsageLedger = mirrored(redis_server.url, prefix, tmp_path / "a.db")
    assert isinstance(ledger, MirroredLedger)
    ledger.reserve("c1", "k1", A, T0, profile=QuotaProfile(), agent="alice")
    assert 1 == ledger.shared.card_usage("c1", T0).in_use
    assert 1 == ledger.store.card_usage("c1", T0).in_use
    assert "c1" == ledger.finish("k1", T0 + 40, answered=True, talk_seconds=30)
    assert [T0] == ledger.store.attempts(A, T0 - 1)
    assert [T0 + 10] == ledger.store.answers(A, T0 - 1)
    assert (T0,) == ledger.store.agent_usage("alice", T0 + 41).call_starts
    assert ledger.store.card_usage("c1", T0 + 41) == ledger.card_usage("c1", T0 + 41)


def test_a_refusal_writes_nowhere(tmp_path: Path, redis_server: RedisServer, prefix: str) -> None:
    """Redis refuses (quota): SQLite records nothing either."""
    ledger = mirrored(redis_server.url, prefix, tmp_path / "a.db")
    ledger.reserve("c1", "k1", A, T0, profile=QuotaProfile(concurrent=1))
    with pytest.raises(QuotaExceeded):
        ledger.reserve("c1", "k2", B, T0 + 1, profile=QuotaProfile(concurrent=1))
    assert [("k1", "c1")] == ledger.store.open_reservations()


def test_sqlite_failure_undoes_the_redis_reservation(
    tmp_path: Path, redis_server: RedisServer, prefix: str
) -> None:
    """SQLite cannot record the start: the Redis reservation is released, 503 raised."""
    ledger = mirrored(redis_server.url, prefix, tmp_path / "a.db")
    ledger.reserve("c1", "k0", B, T0 - 10)  # the card is warm: no rehydration below
    ledger.release("k0", T0 - 9, failed=False)
    ledger.store.close()
    with pytest.raises(StoreUnavailable):
        ledger.reserve("c1", "k1", A, T0, profile=QuotaProfile(concurrent=1))
    usage = ledger.shared.card_usage("c1", T0 + 1)
    assert (0, ()) == (usage.in_use, usage.call_starts)


def test_redis_restart_resets_no_counter(
    tmp_path: Path, private_redis: RedisServer, prefix: str
) -> None:
    """Redis restarted without persistence: limits still hold, rebuilt from SQLite."""
    ledger = mirrored(private_redis.url, prefix, tmp_path / "a.db")
    profile = QuotaProfile(calls_per_minute=2, concurrent=1)
    ledger.reserve("c1", "k1", A, T0, profile=profile)
    ledger.finish("k1", T0 + 10, answered=True, talk_seconds=8)
    ledger.reserve("c1", "k2", B, T0 + 20, profile=profile)
    private_redis.kill()
    with pytest.raises(StoreUnavailable):
        ledger.reserve("c2", "k3", C, T0 + 25, profile=profile)
    assert [] == [r for r in ledger.store.open_reservations() if r[0] == "k3"]
    private_redis.start()
    with pytest.raises(QuotaExceeded) as exc:
        ledger.reserve(
            "c1", "k4", C, T0 + 30, profile=QuotaProfile(calls_per_minute=2, concurrent=None)
        )
    # The facts hold counts, not times: both starts of the minute are placed at the last
    # one (T0 + 20), so the card frees at T0 + 80 instead of T0 + 60 — later, never sooner.
    assert (QuotaLimit.CALLS_PER_MINUTE, T0 + 80) == (
        exc.value.exhausted.limit,
        exc.value.exhausted.frees_at,
    )
    with pytest.raises(QuotaExceeded) as busy:
        ledger.reserve("c1", "k5", C, T0 + 65, profile=profile)
    assert QuotaLimit.CONCURRENT == busy.value.exhausted.limit, "the open call is still held"

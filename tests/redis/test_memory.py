"""Memory stays bounded: every key has a TTL, old starts are trimmed, outcomes capped."""

from __future__ import annotations

from gateway.store import StoredCard
from gateway.store.redis import RedisStore
from policies.quotas import QuotaProfile

from .conftest import T0, RedisServer, make_store

A, B = "+8613811110001", "+8613811110002"


def test_every_key_carries_a_ttl(rstore: RedisStore, prefix: str) -> None:
    """After reserve/release/finish/recover/rehydrate/state, no key of the store lives forever."""
    rstore.reserve("c1", "k1", A, T0, profile=QuotaProfile(calls_per_minute=5))
    rstore.finish("k1", T0 + 30, answered=True, talk_seconds=25)
    rstore.reserve("c1", "k2", B, T0 + 40)
    rstore.release("k2", T0 + 41)
    rstore.reserve("c2", "k2", B, T0 + 41)
    rstore.reserve("c3", "k3", A, T0 + 50)
    rstore.recover(T0 + 60)
    rstore.rehydrate("c2", rstore.usage_facts("c1", T0 + 60), T0 + 60, force=True)
    rstore.put_card_state(StoredCard("c1", "carrier-a", "+1", "main", state="suspended", since=T0))
    keys = sorted(k.decode() for k in rstore.client.scan_iter(match=f"{prefix}:*"))
    assert len(keys) >= 15, keys
    ttls = {k: rstore.client.ttl(k) for k in keys}
    forever = [k for k, ttl in ttls.items() if ttl < 0]
    assert [] == forever
    state = f"{prefix}:card:c1:state"
    assert 0 < ttls.pop(state) <= rstore.state_ttl_seconds
    assert 0 < ttls.pop(f"{prefix}:states:ver") <= rstore.state_ttl_seconds
    assert all(0 < ttl <= rstore.history_seconds for ttl in ttls.values()), ttls


def test_day_hash_lives_until_the_carrier_day_is_over(rstore: RedisStore, prefix: str) -> None:
    """The per-day hash expires an hour after its carrier day ends (6400 s after T0 in UTC)."""
    rstore.reserve("c1", "k1", A, T0)
    day_key = f"{prefix}:card:c1:day:{int(T0 - 80000)}"
    assert 1 == rstore.client.exists(day_key)
    assert 6400 + 3600 - 5 <= rstore.client.ttl(day_key) <= 6400 + 3600 + 1


def test_old_starts_are_trimmed(redis_server: RedisServer, prefix: str) -> None:
    """Three simulated days of calls keep only the starts inside ``history_seconds``."""
    store = make_store(redis_server.url, prefix, history_seconds=26 * 3600.0)
    t = T0
    for n in range(300):
        t = T0 + n * 900.0  # every 15 minutes for 75 hours
        store.reserve("c1", f"k{n}", A, t)
        store.finish(f"k{n}", t + 60, answered=True, talk_seconds=50)
    kept = store.client.zcard(f"{prefix}:card:c1:starts")
    assert 105 == kept  # [t - 26 h, t]: 104 intervals of 15 minutes plus the last call
    assert store.outcome_window == store.client.zcard(f"{prefix}:card:c1:outz")
    assert 0 == store.client.hlen(f"{prefix}:card:c1:inuse")
    call_keys = [k.decode() for k in store.client.scan_iter(match=f"{prefix}:call:*")]
    assert all(k.endswith(":tried") for k in call_keys), "closed calls leave no call hash"
    assert all(0 < store.client.ttl(k) <= store.tried_ttl_seconds for k in call_keys)


def test_packed_starts_stay_bounded_and_agree_with_the_set(
    redis_server: RedisServer, prefix: str
) -> None:
    """The packed copy of the starts is compacted as starts age out, and reads stay exact."""
    store = make_store(redis_server.url, prefix, history_seconds=26 * 3600.0)
    for n in range(900):
        t = T0 + n * 300.0
        store.reserve("c1", f"k{n}", A, t)
        if n % 7 == 3:
            store.release(f"k{n}", t + 1)
        else:
            store.finish(f"k{n}", t + 30, answered=False)
    now = T0 + 899 * 300.0 + 40
    kept = store.client.zrangebyscore(f"{prefix}:card:c1:starts", "-inf", "+inf", withscores=True)
    blob_len = store.client.strlen(f"{prefix}:card:c1:starts:blob")
    assert 8 * len(kept) <= blob_len <= 8 * (len(kept) + 256)
    day_start = T0 + 6400 + 86400 * ((now - T0 - 6400) // 86400)
    lower = min(day_start, now - 3600)
    assert tuple(t for _, t in kept if t >= lower) == store.card_usage("c1", now).call_starts

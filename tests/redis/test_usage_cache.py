"""The usage cache: one EVALSHA to reserve, one to finish; another node's write is seen at once.

Two ``RedisStore`` instances (two nodes) on one redis-server. Round trips are
read from ``INFO commandstats``: ``cmdstat_evalsha`` counts the scripts a
client ran (the commands a script runs inside are counted under their own names).
"""

from __future__ import annotations

import time

from gateway.store.redis import RedisStore
from policies.quotas import QuotaProfile

from .conftest import T0, RedisServer, make_store

PROFILE = QuotaProfile(calls_per_minute=1000, calls_per_hour=10000, concurrent=5)


def evalsha_calls(store: RedisStore) -> int:
    """How many EVALSHA the server has run so far (every client), once ``store`` has read
    the answers of the finishes it sent without waiting (``pending`` reads them)."""
    assert 0 == store.pending
    stats = store.client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def settle_messages() -> None:
    """Long enough for a PUBLISH to reach the other node's subscription on loopback."""
    time.sleep(0.05)


def test_a_call_costs_one_script_to_reserve_and_one_to_finish(
    private_redis: RedisServer, prefix: str
) -> None:
    """After the first read, selection reads the cache: reserve + finish are the round trips."""
    store = make_store(private_redis.url, prefix)
    try:
        store.card_usage("c1", T0)  # the first read fills the cache
        store.reserve("c1", "warm", "+8613800000001", T0, profile=PROFILE)  # loads the scripts
        store.finish("warm", T0, answered=False)
        before = evalsha_calls(store)
        own_before = store.cache.stats()["own"]
        for i in range(20):
            now = T0 + 1 + i
            usage = store.card_usage("c1", now)  # what selection asks first
            assert 0 == usage.in_use
            store.reserve("c1", f"k{i}", "+8613800000001", now, profile=PROFILE)
            assert 1 == store.card_usage("c1", now).in_use  # from the reserve's reply
            store.finish(f"k{i}", now + 0.5, answered=True, talk_seconds=30.0)
        assert 40 == evalsha_calls(store) - before
        assert 21 == len(store.card_usage("c1", T0 + 21).call_starts)
        assert store.cache.stats()["hits"] >= 40
        # Each reply carried only the change: the node applied its own writes to its
        # copy (no snapshot of the card read back), and the copy is still exact.
        assert 40 == store.cache.stats()["own"] - own_before, store.cache.stats()
        fresh = make_store(private_redis.url, prefix, node="ref", usage_cache=False)
        try:
            assert fresh.card_usage("c1", T0 + 21) == store.card_usage("c1", T0 + 21)
        finally:
            fresh.close()
    finally:
        store.close()


def test_another_nodes_write_replaces_the_cached_usage(
    private_redis: RedisServer, prefix: str
) -> None:
    """gw2 reserves and finishes; gw1 follows both from the announcements, without a read."""
    gw1 = make_store(private_redis.url, prefix, node="gw1")
    gw2 = make_store(private_redis.url, prefix, node="gw2")
    try:
        assert 0 == gw1.card_usage("c1", T0).in_use
        gw2.reserve("c1", "k1", "+8613800000001", T0, profile=PROFILE)
        settle_messages()
        assert 1 == gw1.card_usage("c1", T0 + 1).in_use
        assert (T0,) == gw1.card_usage("c1", T0 + 1).call_starts
        gw2.finish("k1", T0 + 2, answered=True, talk_seconds=2.0)
        settle_messages()
        usage = gw1.card_usage("c1", T0 + 3)
        assert 0 == usage.in_use
        assert 1 == len(usage.recent_outcomes)
        assert 2 == gw1.cache.stats()["applied"]
        assert 0 == gw1.cache.stats()["invalidations"]
    finally:
        gw1.close()
        gw2.close()


def test_the_last_slot_goes_to_one_node_even_with_stale_copies(
    private_redis: RedisServer, prefix: str
) -> None:
    """Both nodes cached "free"; the script decides: one reservation, one refusal."""
    profile = QuotaProfile(calls_per_minute=1, concurrent=None)
    gw1 = make_store(private_redis.url, prefix, node="gw1")
    gw2 = make_store(private_redis.url, prefix, node="gw2")
    try:
        assert () == gw1.card_usage("c1", T0).call_starts
        assert () == gw2.card_usage("c1", T0).call_starts
        gw1.reserve("c1", "k1", "+8613800000001", T0, profile=profile)
        results = []
        try:
            gw2.reserve("c1", "k2", "+8613800000002", T0, profile=profile)
            results.append("placed")
        except Exception as exc:  # QuotaExceeded
            results.append(type(exc).__name__)
        assert ["QuotaExceeded"] == results
        # The refusal carried the card's usage: gw2's copy is current without a read.
        before = evalsha_calls(gw2)
        assert (T0,) == gw2.card_usage("c1", T0).call_starts
        assert before == evalsha_calls(gw2)
    finally:
        gw1.close()
        gw2.close()


def test_without_its_subscription_every_read_goes_to_redis(
    private_redis: RedisServer, prefix: str
) -> None:
    """A lost subscription drops the copies; reads are plain reads until it is back."""
    store = make_store(private_redis.url, prefix)
    other = make_store(private_redis.url, prefix, node="gw2")
    try:
        store.card_usage("c1", T0)
        assert store.cache.live
        store.cache._pubsub.connection.disconnect()  # the connection goes away under it
        other.reserve("c1", "k1", "+8613800000001", T0, profile=PROFILE)
        # The failure is noticed at the next lookup: nothing stale is served.
        assert 1 == store.card_usage("c1", T0 + 1).in_use
        assert 1 == store.cache.stats()["resets"]
        store.cache._retry_at = 0.0
        store.card_usage("c1", T0 + 2)
        assert store.cache.live
    finally:
        store.close()
        other.close()


def test_an_unanswered_ping_drops_the_copies(private_redis: RedisServer, prefix: str) -> None:
    """keepalive(): a PING still unanswered after a second resets the cache."""
    store = make_store(private_redis.url, prefix)
    try:
        store.card_usage("c1", T0)
        store.keepalive()  # sends a PING
        assert store.cache._ping_at is not None
        store.cache._ping_at -= 5.0  # as if its PONG never came
        store.cache._pubsub.get_message = lambda timeout=0: None  # nothing arrives
        store.keepalive()
        assert not store.cache.live
        assert 0 == store.cache.stats()["entries"]
    finally:
        store.close()


def test_disabled_cache_reads_every_time(private_redis: RedisServer, prefix: str) -> None:
    """``usage_cache=False``: the behaviour before the cache (a read per lookup)."""
    store = make_store(private_redis.url, prefix, usage_cache=False)
    try:
        store.card_usage("c1", T0)
        before = evalsha_calls(store)
        store.card_usage("c1", T0)
        store.card_usage("c1", T0)
        assert 2 == evalsha_calls(store) - before
    finally:
        store.close()


def test_card_states_travel_only_when_they_changed(private_redis: RedisServer, prefix: str) -> None:
    """The 2 s sync: one script; the states themselves only after a change."""
    from gateway.store import StoredCard

    gw1 = make_store(private_redis.url, prefix, node="gw1")
    gw2 = make_store(private_redis.url, prefix, node="gw2")
    try:
        assert {} == gw1.card_states(["c1", "c2"])
        assert {} == gw1.card_states(["c1", "c2"])
        before = redis_server_hmget(gw1)
        assert {} == gw1.card_states(["c1", "c2"])
        assert before == redis_server_hmget(gw1)  # only the version was read
        gw2.put_card_state(StoredCard("c1", "carrier-a", "+1", "main", state="suspended", since=T0))
        assert "suspended" == gw1.card_states(["c1", "c2"])["c1"].state
        assert "suspended" == gw1.card_states(["c1", "c2"])["c1"].state
    finally:
        gw1.close()
        gw2.close()


def redis_server_hmget(store: RedisStore) -> int:
    """HMGET calls so far (the states script reads each state with one)."""
    stats = store.client.info("commandstats")
    return int(stats.get("cmdstat_hmget", {}).get("calls", 0))


def _version(store: RedisStore, card: str) -> int:
    raw = store.client.hget(f"{store.prefix}:card:{card}:meta", "ver")
    return int(raw or 0)


def _caught_up(store: RedisStore, card: str, version: int) -> bool:
    """Whether ``store`` has read every announcement up to ``version`` of ``card``."""
    store.cache.ready()
    return store.cache._seen.get(card, 0) >= version


def test_the_other_nodes_writes_are_followed_exactly(
    private_redis: RedisServer, prefix: str
) -> None:
    """Reserve/finish/release/orphan on two nodes in turn: each node's copy, updated from the
    other's announcements without a read, equals a fresh read after every step."""
    import random

    from gateway.store import QuotaExceeded, ReservationError
    from simulator.testkit import wait_until

    rnd = random.Random(17)
    nodes = [
        make_store(private_redis.url, prefix, node="gw1"),
        make_store(private_redis.url, prefix, node="gw2"),
    ]
    fresh = make_store(private_redis.url, prefix, node="ref", usage_cache=False)
    profile = QuotaProfile(calls_per_minute=50, concurrent=6, distinct_callees_per_day=5)
    callees = [f"+861380000000{i}" for i in range(7)]
    open_calls: dict[str, int] = {}
    now = T0
    try:
        for card in ("c1", "c3"):
            for node in nodes:
                node.card_usage(card, now)  # both nodes hold a copy of both cards
        for step in range(160):
            now += rnd.choice([0.0, 0.5, 2.0, 7.0])
            card = rnd.choice(["c1", "c3"])
            i = rnd.randrange(2)
            node = nodes[i]
            roll = rnd.random()
            call = f"k{step}"
            try:
                if roll < 0.5 or not open_calls:
                    node.reserve(card, call, rnd.choice(callees), now, profile=profile)
                    open_calls[call] = i
                else:
                    call = rnd.choice(sorted(open_calls))
                    owner = nodes[open_calls.pop(call)]
                    if roll < 0.75:
                        owner.finish(
                            call,
                            now,
                            answered=rnd.random() < 0.6,
                            talk_seconds=float(rnd.randrange(0, 90)),
                        )
                    elif roll < 0.92:
                        owner.release(call, now, failed=rnd.random() < 0.5)
                    else:
                        owner._run_close(call, "orphan", now, only_node=owner.node)
            except (QuotaExceeded, ReservationError):
                pass
            assert 0 == node.pending  # a finish's answer read: the write is done
            for c in ("c1", "c3"):
                version = _version(fresh, c)
                for n in nodes:
                    wait_until(lambda n=n, c=c, v=version: _caught_up(n, c, v), 5, "announced")
                expected = fresh.card_usage(c, now)
                for n in nodes:
                    assert expected == n.card_usage(c, now), (step, c, n.node)
        applied = sum(n.cache.stats()["applied"] for n in nodes)
        assert applied > 100, [n.cache.stats() for n in nodes]
        # and each node's own writes were applied to its copy from the scripts' short
        # answers (the comparison above held after each of them)
        own = sum(n.cache.stats()["own"] for n in nodes)
        assert own > 50, [n.cache.stats() for n in nodes]
        # Nearly every lookup was served from the copy (misses: the first reads and the
        # orphans, which this test runs without asking for a snapshot).
        lookups = sum(n.cache.stats()["hits"] + n.cache.stats()["misses"] for n in nodes)
        assert sum(n.cache.stats()["misses"] for n in nodes) < lookups // 10
    finally:
        for n in (*nodes, fresh):
            n.close()

"""Node heartbeats: a live node's reservations are never touched; a dead node's are orphaned.

Two ``RedisStore`` nodes on one redis-server. A node is dead when its liveness
key (renewed by every heartbeat, short TTL) has expired; expiry is Redis's own.
"""

from __future__ import annotations

from gateway.store.redis import RedisStore
from policies.quotas import QuotaProfile
from simulator.testkit import wait_until

from .conftest import T0, RedisServer, make_store

PROFILE = QuotaProfile(calls_per_minute=100, concurrent=10)


def status(store: RedisStore) -> dict[str, dict[str, object]]:
    return {n["node"]: n for n in store.nodes()}


def test_nodes_describe_themselves_and_a_live_node_keeps_its_calls(
    redis_server: RedisServer, prefix: str
) -> None:
    gw1 = make_store(redis_server.url, prefix, node="gw1")
    gw2 = make_store(redis_server.url, prefix, node="gw2")
    gw1.address = "udp:127.0.0.2:5060"
    try:
        gw1.reserve("c1", "k1", "+8613800000001", T0, profile=PROFILE)
        gw1.reserve("c1", "k2", "+8613800000002", T0, profile=PROFILE)
        assert [] == gw1.heartbeat(T0)
        assert [] == gw2.heartbeat(T0 + 1)
        nodes = status(gw2)
        assert {"gw1", "gw2"} == set(nodes)
        assert nodes["gw1"]["alive"] and nodes["gw2"]["alive"]
        assert 2 == nodes["gw1"]["calls"]
        assert "udp:127.0.0.2:5060" == nodes["gw1"]["address"]
        assert T0 == nodes["gw1"]["started_at"]
        # gw2 may not orphan a live node's calls, even when asked to.
        assert 0 == gw2.reap("gw1", T0 + 2)
        assert 2 == gw2.card_usage("c1", T0 + 2).in_use
    finally:
        gw1.close()
        gw2.close()


def test_a_dead_nodes_reservations_are_orphaned_and_still_counted(
    redis_server: RedisServer, prefix: str
) -> None:
    gw1 = make_store(redis_server.url, prefix, node="gw1")
    gw2 = make_store(redis_server.url, prefix, node="gw2")
    try:
        gw1.reserve("c1", "k1", "+8613800000001", T0, profile=PROFILE)
        gw1.reserve("c1", "k2", "+8613800000002", T0, profile=PROFILE)
        gw2.reserve("c1", "k3", "+8613800000003", T0, profile=PROFILE)
        gw1.heartbeat(T0, ttl=1)  # gw1 then dies: no more heartbeats
        gw2.heartbeat(T0)
        before = gw2.card_usage("c1", T0)
        assert (3, 3) == (before.in_use, len(before.call_starts))
        wait_until(lambda: not status(gw2)["gw1"]["alive"], 10, "gw1's heartbeat expired")
        dead = gw2.heartbeat(T0 + 5)
        assert ["gw1"] == dead
        assert 2 == gw2.reap("gw1", T0 + 5)
        after = gw2.card_usage("c1", T0 + 5)
        assert 1 == after.in_use  # only gw2's own call is in use
        assert len(before.call_starts) == len(after.call_starts)  # no start uncounted
        nodes = status(gw2)
        assert not nodes["gw1"]["alive"] and 0 == nodes["gw1"]["open"]
        assert [] == gw2.heartbeat(T0 + 6)  # reaped once, out of the registry
        # A finish from the dead node's restart finds nothing to close twice.
        restarted = make_store(redis_server.url, prefix, node="gw1")
        try:
            assert restarted.finish("k1", T0 + 7, answered=True, talk_seconds=1.0) is None
        finally:
            restarted.close()
        # Nor does the late finish of the node that was reaped (sent without waiting).
        gw1.finish("k2", T0 + 7, answered=True, talk_seconds=1.0)
        assert 0 == gw1.pending
        late = gw2.card_usage("c1", T0 + 8)
        assert (1, len(before.call_starts)) == (late.in_use, len(late.call_starts))
    finally:
        gw1.close()
        gw2.close()


def test_the_periodic_sync_beats_and_reaps(redis_server: RedisServer, prefix: str) -> None:
    """SharedCardRepository.beat: what the 2 s sync does, never raising."""
    from gateway.store import SQLiteStore
    from gateway.store.redis import SharedCardRepository

    gw1 = make_store(redis_server.url, prefix, node="gw1")
    gw2 = make_store(redis_server.url, prefix, node="gw2")
    sqlite = SQLiteStore(":memory:")
    try:
        gw1.reserve("c1", "k1", "+8613800000001", T0, profile=PROFILE)
        gw1.heartbeat(T0, ttl=1)
        repo = SharedCardRepository(sqlite, gw2)
        repo.beat(T0)
        assert 1 == gw2.card_usage("c1", T0).in_use
        wait_until(lambda: not status(gw2)["gw1"]["alive"], 10, "gw1's heartbeat expired")
        repo.beat(T0 + 3)
        assert 0 == gw2.card_usage("c1", T0 + 3).in_use
    finally:
        sqlite.close()
        gw1.close()
        gw2.close()

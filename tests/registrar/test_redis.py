"""Registrations in Redis (``[store] redis``): this node's hash, and a gateway restarted on it.

Runs against a real redis-server (``tests/redis/conftest.py``): the store's
hash round-trips, replaces and expires; a real ``Gateway`` keeps alice's
binding in Redis *and* SQLite, finds it again after a restart from either,
and a Redis outage during a REGISTER costs neither the binding nor the 200.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.callpath.element import Gateway
from gateway.store import SQLiteStore
from gateway.store.redis import RedisStore
from gateway.store.sqlite import StoredRegistration
from tests.callpath.conftest import Agent, Carrier, gateway_settings
from tests.redis.conftest import RedisServer, make_store

T0 = 1_700_000_000.0


def row(contact: str, *, aor: str = "alice", expires_at: float = T0 + 600) -> StoredRegistration:
    """A stored UDP binding."""
    return StoredRegistration(aor, contact, expires_at, "r1", 1, "192.0.2.10", 40000, "udp")


def test_hash_round_trip_replace_and_delete(rstore: RedisStore) -> None:
    """One field per AOR in ``{p}:node:{node}:registrations``; a save replaces, [] deletes."""
    rstore.save_registrations("alice", [row("sip:alice@10.0.0.5")], T0)
    rstore.save_registrations("bob", [row("sip:bob@10.0.0.6", aor="bob")], T0)
    rstore.save_registrations("alice", [row("sip:alice@10.0.0.7")], T0)
    key = f"{rstore.prefix}:node:{rstore.node}:registrations"
    assert {b"alice", b"bob"} == set(rstore.client.hkeys(key))
    assert ["sip:alice@10.0.0.7", "sip:bob@10.0.0.6"] == [
        r.contact for r in rstore.load_registrations(T0)
    ]
    rstore.save_registrations("alice", [], T0)
    assert ["bob"] == [r.aor for r in rstore.load_registrations(T0)]


def test_expired_aors_are_dropped_and_ttl_covers_the_longest(rstore: RedisStore) -> None:
    """Load drops expired bindings (and their field); the key's TTL only grows."""
    key = f"{rstore.prefix}:node:{rstore.node}:registrations"
    rstore.save_registrations("alice", [row("sip:alice@10.0.0.5", expires_at=T0 + 3600)], T0)
    long_ttl = rstore.client.ttl(key)
    assert 3600 <= long_ttl <= 3660
    rstore.save_registrations("bob", [row("sip:bob@10.0.0.6", aor="bob", expires_at=T0 + 60)], T0)
    assert rstore.client.ttl(key) >= long_ttl - 2
    assert ["alice"] == [r.aor for r in rstore.load_registrations(T0 + 60)]
    assert [b"alice"] == rstore.client.hkeys(key)


def test_nodes_have_their_own_hash(redis_server: RedisServer, prefix: str) -> None:
    """gw1 never loads gw2's bindings (their flows go through gw2's sockets)."""
    gw1 = make_store(redis_server.url, prefix, node="gw1")
    gw2 = make_store(redis_server.url, prefix, node="gw2")
    try:
        gw2.save_registrations("alice", [row("sip:alice@10.0.0.5")], T0)
        assert [] == gw1.load_registrations(T0)
        assert 1 == len(gw2.load_registrations(T0))
    finally:
        gw1.close()
        gw2.close()


# --- a gateway on Redis ------------------------------------------------------------------


@pytest.fixture
async def carrier() -> AsyncIterator[Carrier]:
    """A carrier UAS (the gateway needs one configured; no call is placed)."""
    c = Carrier()
    await c.start()
    try:
        yield c
    finally:
        await c.close()


def settings_for(carrier: Carrier, db: Path, url: str, node: str):  # type: ignore[no-untyped-def]
    """gateway_settings on ``url`` with [mqtt] node = ``node`` (the Redis node name)."""
    return gateway_settings(
        carrier.address,
        db,
        extra={"store": {"path": str(db), "redis": url}, "mqtt": {"node": node}},
    )


async def registered_alice(gateway: Gateway) -> None:
    """alice REGISTERs through ``gateway`` (200 expected)."""
    alice = Agent("alice", "s3cret", gateway.address("udp"))
    await alice.start()
    try:
        assert 200 == (await alice.register()).status
    finally:
        await alice.close()


async def test_restart_finds_the_binding_in_redis_even_with_a_new_sqlite_file(
    carrier: Carrier, private_redis: RedisServer, tmp_path: Path
) -> None:
    """Redis is read first: a gateway restarted on another SQLite file still knows alice."""
    node = f"n{uuid.uuid4().hex[:8]}"
    gw = Gateway(settings_for(carrier, tmp_path / "a.db", private_redis.url, node))
    await gw.start()
    try:
        await registered_alice(gw)
    finally:
        await gw.close()
    gw2 = Gateway(settings_for(carrier, tmp_path / "b.db", private_redis.url, node))
    await gw2.start()
    try:
        assert gw2.registrar.is_registered("alice", gw2.sip_clock())
        # ... and the new SQLite file got its copy.
        with SQLiteStore(tmp_path / "b.db") as s:
            assert ["alice"] == [r.aor for r in s.load_registrations(gw2.sip_clock(), node=node)]
    finally:
        await gw2.close()


async def test_redis_down_costs_neither_binding_nor_200_and_sqlite_still_restores(
    carrier: Carrier, private_redis: RedisServer, tmp_path: Path
) -> None:
    """Redis gone during REGISTER: 200, counted; the restart (Redis still gone) loads SQLite."""
    node = f"n{uuid.uuid4().hex[:8]}"
    db = tmp_path / "gw.db"
    gw = Gateway(settings_for(carrier, db, private_redis.url, node))
    await gw.start()
    try:
        private_redis.kill()
        await registered_alice(gw)
        assert gw.registrar.is_registered("alice", gw.sip_clock())
        assert gw.registrations is not None
        assert gw.registrations.stats.store_failures >= 1
        assert gw.snapshot()["gateway"]["registration_store_failures"] >= 1
    finally:
        await gw.close()
    gw2 = Gateway(settings_for(carrier, db, private_redis.url, node))
    await gw2.start()
    try:
        assert gw2.registrar.is_registered("alice", gw2.sip_clock())
        # Redis comes back: the pending copy is written by the housekeeping retry.
        private_redis.start()
        assert gw2.registrations is not None
        gw2.registrations.flush(gw2.sip_clock(), force=True)
        assert 0 == gw2.registrations.pending()
        shared = make_store(private_redis.url, "dialgate", node=node)
        try:
            assert ["alice"] == [r.aor for r in shared.load_registrations(gw2.sip_clock())]
        finally:
            shared.close()
    finally:
        await gw2.close()

"""Registrations shared by the nodes of a cluster through Redis (real redis-server).

An agent registers through one node; when that node dies the balancer sends the
agent's next INVITE to another node, which must find the binding without waiting
for the phone's next REGISTER: each node writes the AOR's bindings to a
cluster-wide copy as well as to its own hash, and ``registrations_of`` reads it.
"""

from __future__ import annotations

from gateway.store.records import StoredRegistration

from .conftest import RedisServer, make_store

T0 = 1_760_000_000.0


def binding(contact: str, *, expires_in: float = 600.0, aor: str = "alice") -> StoredRegistration:
    return StoredRegistration(
        aor=aor,
        contact=contact,
        expires_at=T0 + expires_in,
        call_id="reg-1",
        cseq=1,
        source_host="127.0.0.9",
        source_port=5062,
        transport="udp",
    )


def test_a_binding_written_by_one_node_is_read_by_another(
    redis_server: RedisServer, prefix: str
) -> None:
    node1 = make_store(redis_server.url, prefix, node="gw1")
    node2 = make_store(redis_server.url, prefix, node="gw2")
    try:
        assert [] == node2.registrations_of("alice", T0)
        node1.save_registrations("alice", [binding("sip:alice@127.0.0.9:5062")], T0)
        seen = node2.registrations_of("alice", T0 + 1)
        assert ["sip:alice@127.0.0.9:5062"] == [r.contact for r in seen]
        assert ("127.0.0.9", 5062, "udp") == (
            seen[0].source_host,
            seen[0].source_port,
            seen[0].transport,
        )
        # The AOR's case does not matter (the registrar keys AORs in lower case).
        assert 1 == len(node2.registrations_of("Alice", T0 + 1))
        # Each node's own hash (what it restores at its restart) stays its own.
        assert [] == node2.load_registrations(T0 + 1)
        assert 1 == len(node1.load_registrations(T0 + 1))
    finally:
        node1.close()
        node2.close()


def test_the_last_writer_wins_and_an_unregister_removes_the_shared_copy(
    redis_server: RedisServer, prefix: str
) -> None:
    node1 = make_store(redis_server.url, prefix, node="gw1")
    node2 = make_store(redis_server.url, prefix, node="gw2")
    try:
        node1.save_registrations("alice", [binding("sip:alice@127.0.0.9:5062")], T0)
        # The agent re-registers through node 2 (node 1 died): node 2's copy wins.
        node2.save_registrations("alice", [binding("sip:alice@127.0.0.9:5070")], T0 + 5)
        assert ["sip:alice@127.0.0.9:5070"] == [
            r.contact for r in node1.registrations_of("alice", T0 + 6)
        ]
        node2.save_registrations("alice", [], T0 + 7)
        assert [] == node1.registrations_of("alice", T0 + 8)
    finally:
        node1.close()
        node2.close()


def test_an_expired_binding_is_not_returned_and_the_copy_expires_in_redis(
    redis_server: RedisServer, prefix: str
) -> None:
    node1 = make_store(redis_server.url, prefix, node="gw1")
    try:
        node1.save_registrations("alice", [binding("sip:a@127.0.0.9", expires_in=30)], T0)
        assert 1 == len(node1.registrations_of("alice", T0 + 29))
        assert [] == node1.registrations_of("alice", T0 + 31)
        ttl = node1.client.ttl(f"{prefix}:registration:alice")
        assert 0 < ttl <= 30 + 60  # the binding's lifetime plus the store's margin
    finally:
        node1.close()

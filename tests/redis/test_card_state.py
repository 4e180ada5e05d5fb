"""Card states shared through Redis: instances agree; SQLite keeps each instance's history."""

from __future__ import annotations

from pathlib import Path

from gateway.cards import CardDef, CardManager, SuspendReason
from gateway.store import SQLiteStore, StoredCard, TransitionRecord
from gateway.store.redis import CardStateRecord, RedisStore, SharedCardRepository
from policies.quotas import CardState

from .conftest import CARRIERS, T0, RedisServer, make_store

DEFS = [CardDef("c1", "carrier-a", "+8613800000001"), CardDef("c2", "carrier-a", "+8613800000002")]


def row(state: str, since: float, reason: str | None = None) -> StoredCard:
    """A c1 row in ``state`` since ``since``."""
    return StoredCard("c1", "carrier-a", "+8613800000001", "main", state=state, reason=reason,
                      since=since)  # fmt: skip


def test_put_and_read_state(rstore: RedisStore) -> None:
    """A published state reads back field by field; unknown cards are left out."""
    card = StoredCard(
        "c1", "carrier-a", "+1", "main", state="probation", since=T0,
        probation_until=T0 + 86400, profile_override="probation", resume_at=None,
    )  # fmt: skip
    assert rstore.put_card_state(card)
    expected = CardStateRecord("c1", "probation", None, T0, T0 + 86400, "probation", None)
    assert {"c1": expected} == rstore.card_states(["c1", "c2"])


def test_an_older_state_never_overwrites_a_newer_one(rstore: RedisStore) -> None:
    """Two instances publishing out of order converge on the latest transition."""
    assert rstore.put_card_state(row("suspended", T0 + 10, "violation"))
    assert not rstore.put_card_state(row("active", T0 + 5))
    assert "suspended" == rstore.card_states(["c1"])["c1"].state
    assert rstore.put_card_state(row("appealing", T0 + 20))
    assert "appealing" == rstore.card_states(["c1"])["c1"].state


def gateway(tmp_path: Path, name: str, shared: RedisStore) -> tuple[CardManager, SQLiteStore]:
    """One gateway instance: its own SQLite file, the shared Redis, a loaded CardManager."""
    store = SQLiteStore(tmp_path / f"{name}.db", carrier_timezones=CARRIERS)
    manager = CardManager(SharedCardRepository(store, shared))
    manager.load(DEFS, T0)
    return manager, store


def test_two_instances_agree_on_a_suspension(
    tmp_path: Path, redis_server: RedisServer, prefix: str
) -> None:
    """gw1 suspends c1: gw2 adopts it on sync; gw1's SQLite holds the transition."""
    gw1, db1 = gateway(tmp_path, "gw1", make_store(redis_server.url, prefix, node="gw1"))
    gw2, db2 = gateway(tmp_path, "gw2", make_store(redis_server.url, prefix, node="gw2"))
    gw1.suspend("c1", now=T0 + 10, reason=SuspendReason.VIOLATION)
    changes = gw2.sync_from_store(T0 + 11)
    assert [("c1", CardState.SUSPENDED)] == [(c.card, c.to_state) for c in changes]
    assert CardState.SUSPENDED == gw2.get("c1").state
    assert ["suspended"] == [t.to_state for t in db1.transitions("c1")]
    assert [] == db2.transitions("c1")
    gw3, _db3 = gateway(tmp_path, "gw3", make_store(redis_server.url, prefix, node="gw3"))
    assert CardState.SUSPENDED == gw3.get("c1").state, "a new instance starts from the shared state"


def test_transition_is_durable_and_shared_later_when_redis_is_down(
    tmp_path: Path, private_redis: RedisServer, prefix: str
) -> None:
    """Redis down: the transition is committed in SQLite once, and published when Redis is back."""
    shared = make_store(private_redis.url, prefix, timeout=0.25)
    store = SQLiteStore(tmp_path / "gw1.db", carrier_timezones=CARRIERS)
    repo = SharedCardRepository(store, shared)
    repo.upsert_card(row("active", T0))
    private_redis.kill()
    suspended = row("suspended", T0 + 10, "arrears")
    repo.save_transition(
        suspended, TransitionRecord("c1", T0 + 10, "active", "suspended", "arrears", "402")
    )
    assert 1 == repo.unpublished
    assert "suspended" == repo.load_cards()[0].state, "SQLite answers while Redis is down"
    private_redis.start()
    assert "suspended" == repo.load_cards()[0].state
    assert 0 == repo.unpublished
    assert "suspended" == shared.card_states(["c1"])["c1"].state
    assert 1 == len(store.transitions("c1"))


def test_an_instance_started_later_adopts_an_older_shared_suspension(
    tmp_path: Path, redis_server: RedisServer, prefix: str
) -> None:
    """A new instance inserts c1 "active since now"; the shared suspension from before wins."""
    gw1, _db1 = gateway(tmp_path, "gw1", make_store(redis_server.url, prefix, node="gw1"))
    gw1.suspend("c1", now=T0 + 10, reason=SuspendReason.VIOLATION)
    late = SQLiteStore(tmp_path / "late.db", carrier_timezones=CARRIERS)
    manager = CardManager(SharedCardRepository(late, make_store(redis_server.url, prefix)))
    manager.load(DEFS, T0 + 3600)
    assert CardState.SUSPENDED == manager.get("c1").state
    assert CardState.ACTIVE == manager.get("c2").state
    assert [] == manager.sync_from_store(T0 + 3601), "stable: nothing to adopt again"


def test_sync_while_redis_is_down_keeps_what_was_adopted(
    tmp_path: Path, private_redis: RedisServer, prefix: str
) -> None:
    """Redis down: sync adopts nothing (its own SQLite rows are older), then catches up."""
    gw1, _db1 = gateway(tmp_path, "gw1", make_store(private_redis.url, prefix, node="gw1"))
    shared2 = make_store(private_redis.url, prefix, node="gw2", timeout=0.25)
    repo2 = SharedCardRepository(SQLiteStore(tmp_path / "gw2.db", carrier_timezones=CARRIERS),
                                 shared2)  # fmt: skip
    gw2 = CardManager(repo2)
    gw2.load(DEFS, T0)
    gw1.suspend("c1", now=T0 + 10, reason=SuspendReason.ARREARS)
    assert [("c1", CardState.SUSPENDED)] == [(c.card, c.to_state) for c in repo2.sync(gw2, T0 + 11)]
    private_redis.kill()
    assert [] == repo2.sync(gw2, T0 + 12)
    assert CardState.SUSPENDED == gw2.get("c1").state, "not reverted to gw2's stored 'active'"
    private_redis.start()  # restarted empty: the shared states are gone
    gw3 = CardManager(SharedCardRepository(SQLiteStore(tmp_path / "gw3.db"), shared2))
    gw3.load(DEFS, T0 + 20)
    assert CardState.ACTIVE == gw3.get("c1").state, "nobody republished yet"
    gw1.sync_from_store(T0 + 21)  # gw1's timer: its stored transition is newer than Redis
    assert "suspended" == shared2.card_states(["c1"])["c1"].state
    assert [("c1", CardState.SUSPENDED)] == [
        (c.card, c.to_state)
        for c in gw3.repo.sync(gw3, T0 + 22)  # type: ignore[union-attr]
    ]


def test_states_read_on_sync_keep_their_ttl(
    tmp_path: Path, redis_server: RedisServer, prefix: str
) -> None:
    """A long suspension read by a running instance's sync never expires from Redis."""
    shared = make_store(redis_server.url, prefix, state_ttl_seconds=100.0)
    manager, _db = gateway(tmp_path, "gw1", shared)
    manager.suspend("c1", now=T0 + 10, reason=SuspendReason.VIOLATION)
    key = f"{prefix}:card:c1:state"
    shared.client.expire(key, 5)
    assert isinstance(manager.repo, SharedCardRepository)
    manager.repo.sync(manager, T0 + 11)
    assert shared.client.ttl(key) > 50

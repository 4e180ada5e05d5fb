"""An agent's call starts kept in memory (``agent_usage``) give what its rows give.

``agent_usage`` read every start of the agent in the window from the table on every
call (43 ms a call for a dialer with 30,000 calls in a day, ``bench/agent_usage.py``).
The store now keeps each agent's starts after a first read, updated by its own
reservations and releases and dropped when another connection commits. These tests
compare it with the query it replaces, after random reservations, failovers, releases
and ends, for windows that fall anywhere, and across another connection's writes and
a rolled-back batch.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.store import SQLiteStore, StoredCard
from gateway.store.records import UsageStatus
from policies.quotas import StartTimes

from .conftest import T0

AGENTS = ("alice", "bob")
CARDS = ("c1", "c2", "c3")


def from_rows(path: Path, agent: str, since: float) -> tuple[float, ...]:
    """The query agent_usage ran before: each call's first kept start in the window."""
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT MIN(started_at) AS t FROM call_starts WHERE agent=? AND started_at >= ? "
            "AND status != ? GROUP BY call_id ORDER BY t",
            (agent, since, UsageStatus.RELEASED.value),
        ).fetchall()
    return tuple(float(r[0]) for r in rows)


def three_cards(store: SQLiteStore) -> None:
    store.upsert_card(StoredCard("c3", "carrier-a", "+8613800000003", "main", 3, since=T0))


def random_calls(
    rng: random.Random, writers: list[SQLiteStore], steps: int
) -> Iterator[tuple[int, float]]:
    """Reservations, failovers, releases and ends of the agents' calls, each written by
    one of ``writers`` (picked at random when there are several); yields (step, now)
    after each."""
    now = T0
    open_calls: dict[str, tuple[str, str]] = {}  # call → (agent, card holding it)
    tried: dict[str, set[str]] = {}
    for i in range(steps):
        now += rng.choice((0.5, 1.0, 7.0, 60.0, 600.0))
        store = rng.choice(writers) if len(writers) > 1 else writers[0]
        action = rng.random()
        if open_calls and action < 0.35:
            call, (agent, card) = rng.choice(sorted(open_calls.items()))
            if rng.random() < 0.5:
                store.release(call, now, failed=rng.random() < 0.5)
                left = [c for c in CARDS if c not in tried[call]]
                if left and rng.random() < 0.6:  # failover: the same call on another card
                    store.reserve(left[0], call, "+8613912345678", now, agent=agent)
                    tried[call].add(left[0])
                    open_calls[call] = (agent, left[0])
                    yield i, now
                    continue
            else:
                store.finish(call, now, answered=rng.random() < 0.5, talk_seconds=3.0)
                left = [c for c in CARDS if c not in tried[call]]
                if left and rng.random() < 0.3:  # a call with two kept starts
                    store.reserve(left[0], call, "+8613912345678", now + 0.25, agent=agent)
                    tried[call].add(left[0])
                    open_calls[call] = (agent, left[0])
                    yield i, now
                    continue
            del open_calls[call]
        else:
            call, agent, card = f"k{i}", rng.choice(AGENTS), rng.choice(CARDS)
            store.reserve(card, call, "+8613912345678", now, agent=agent)
            open_calls[call] = (agent, card)
            tried[call] = {card}
        yield i, now


@pytest.mark.parametrize("seed", range(6))
def test_kept_starts_match_the_rows(store: SQLiteStore, db_path: Path, seed: int) -> None:
    """The starts handed out equal the rows' at every step, and those still held later
    hold what they held then (they are windows of a list the store goes on changing)."""
    three_cards(store)
    rng = random.Random(seed)
    taken: list[tuple[StartTimes, tuple[float, ...]]] = []
    for i, now in random_calls(rng, [store], 400):
        for agent in AGENTS:
            window = rng.choice((0.1, 30.0, 3600.0, 86400.0, 7 * 86400.0))
            got = store.agent_usage(agent, now, window=window).call_starts
            assert from_rows(db_path, agent, now - window) == got, (seed, i, agent, window)
            if rng.random() < 0.2:
                taken.append((got, tuple(got)))
    assert all(got == then for got, then in taken)


def test_another_connection_s_calls_are_seen(store: SQLiteStore, db_path: Path) -> None:
    """A start written by another process (a sibling worker) counts at the next read."""
    store.reserve("c1", "k1", "+8613912345678", T0, agent="alice")
    assert (T0,) == store.agent_usage("alice", T0 + 1, window=3600).call_starts
    with SQLiteStore(db_path) as sibling:
        sibling.reserve("c2", "k2", "+8613912345679", T0 + 2, agent="alice")
        sibling.release("k1", T0 + 3)
    assert (T0 + 2,) == store.agent_usage("alice", T0 + 4, window=3600).call_starts


def test_a_rolled_back_start_does_not_count(store: SQLiteStore) -> None:
    """A reservation undone with its batch leaves no start behind."""
    store.reserve("c1", "k1", "+8613912345678", T0, agent="alice")
    assert (T0,) == store.agent_usage("alice", T0 + 1, window=3600).call_starts
    with pytest.raises(RuntimeError), store.batch():
        store.reserve("c2", "k2", "+8613912345679", T0 + 2, agent="alice")
        raise RuntimeError("the call path failed before the commit")
    assert (T0,) == store.agent_usage("alice", T0 + 3, window=3600).call_starts


def test_what_is_kept_stays_one_window_long(store: SQLiteStore) -> None:
    """As the window moves on, the starts it left are forgotten (memory stays bounded)."""
    for i in range(48):
        store.reserve("c1", f"k{i}", "+8613912345678", T0 + i * 3600.0, agent="alice")
        store.finish(f"k{i}", T0 + i * 3600.0 + 1, answered=True, talk_seconds=1.0)
        now = T0 + i * 3600.0 + 2
        assert min(i + 1, 24) == len(store.agent_usage("alice", now, window=86400.0).call_starts)
    kept = store._agents_usage["alice"]
    assert len(kept.calls) <= 26 and len(kept.firsts.items) <= 26


def _worker(db_path: Path, i: int) -> SQLiteStore:
    s = SQLiteStore(db_path, carrier_timezones={"carrier-a": "UTC"})
    s.owner, s.siblings = f"w{i}", (f"w{1 - i}",)
    return s


@pytest.mark.parametrize("seed", range(6))
def test_beside_a_sibling_kept_starts_follow_its_writes(
    store: SQLiteStore, db_path: Path, seed: int
) -> None:
    """Two workers reserve, fail over, release and finish calls of the same agents: each
    keeps the agents' starts and applies the other's changes (``card_usage_changes``),
    and gives what the rows give after every step."""
    three_cards(store)
    workers = [_worker(db_path, 0), _worker(db_path, 1)]
    rng = random.Random(seed)
    try:
        for i, now in random_calls(rng, workers, 300):
            for agent in AGENTS:
                window = rng.choice((30.0, 3600.0, 86400.0))
                for reader in workers:
                    got = reader.agent_usage(agent, now, window=window).call_starts
                    assert from_rows(db_path, agent, now - window) == got, (seed, i, agent)
        # The starts were kept and followed, not re-read at every step.
        assert all(set(AGENTS) <= set(w._agents_usage) for w in workers)
    finally:
        for w in workers:
            w.close()


def test_beside_a_sibling_a_change_outside_the_log_drops_the_kept_starts(
    store: SQLiteStore, db_path: Path
) -> None:
    """A release by a process without siblings (not logged) is never missed: the kept
    starts are dropped and read again."""
    w0, w1 = _worker(db_path, 0), _worker(db_path, 1)
    try:
        w1.reserve("c1", "k1", "+8613912345678", T0, agent="alice")
        assert (T0,) == w0.agent_usage("alice", T0 + 1, window=3600).call_starts
        w1.reserve("c2", "k2", "+8613912345679", T0 + 2, agent="alice")
        assert (T0, T0 + 2) == w0.agent_usage("alice", T0 + 3, window=3600).call_starts
        kept = w0._agents_usage["alice"]
        store.release("k1", T0 + 4)  # `store` has no siblings: it logs nothing
        assert (T0 + 2,) == w0.agent_usage("alice", T0 + 5, window=3600).call_starts
        assert w0._agents_usage["alice"] is not kept  # read again
        w1.release("k2", T0 + 6)  # logged: applied to what is kept
        kept = w0._agents_usage["alice"]
        assert () == w0.agent_usage("alice", T0 + 7, window=3600).call_starts
        assert w0._agents_usage["alice"] is kept
    finally:
        w1.close()
        w0.close()

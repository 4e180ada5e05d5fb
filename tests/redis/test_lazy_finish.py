"""A finish is sent without waiting for its answer; everything after it still comes after it.

``RedisStore.finish`` writes the close script on a connection of its own and reads the
answer later (``_collect``): before this store sends anything else or reads its copy
of a card, at the 2 s sync, at ``pending``, at ``close``. These tests check that a
later call on the same card sees the finish, and that an answer that cannot be read
(the connection failed, the script was flushed) never loses or doubles the finish.
"""

from __future__ import annotations

import signal
import time

from gateway.store.redis import RedisStore
from policies.quotas import QuotaProfile

from .conftest import T0, RedisServer, make_store

ONE_AT_A_TIME = QuotaProfile(calls_per_minute=100, calls_per_hour=1000, concurrent=1)


def usage_in_redis(redis_url: str, prefix: str, card: str, now: float) -> tuple[int, int]:
    """(calls in use, outcomes recorded) of ``card`` as a fresh node reads it from Redis."""
    fresh = make_store(redis_url, prefix, node="ref", usage_cache=False)
    try:
        usage = fresh.card_usage(card, now)
        return usage.in_use, len(usage.recent_outcomes)
    finally:
        fresh.close()


def test_the_next_call_on_a_card_taken_one_at_a_time_follows_the_finish(
    private_redis: RedisServer, prefix: str
) -> None:
    """An agent hangs up and dials again at once on a card that carries one call: the
    finish was only sent, yet the copy the next selection reads and the reservation that
    follows both come after it (nothing refused as "in use")."""
    store = make_store(private_redis.url, prefix)
    try:
        store.reserve("c1", "k0", "+8613800000001", T0, profile=ONE_AT_A_TIME)
        for i in range(1, 30):
            now = T0 + i
            assert "c1" == store.finish(f"k{i - 1}", now, answered=True, talk_seconds=20.0)
            assert store._lazy  # sent, its answer not read yet
            assert 0 == store.card_usage("c1", now).in_use  # the copy selection reads
            store.reserve("c1", f"k{i}", "+8613800000001", now, profile=ONE_AT_A_TIME)
        assert 0 == store.pending
        assert (1, 29) == usage_in_redis(private_redis.url, prefix, "c1", T0 + 30)
        assert store.lazy_finish
    finally:
        store.close()


def test_a_finish_on_a_connection_the_server_closed_is_sent_again_at_once(
    private_redis: RedisServer, prefix: str
) -> None:
    """Redis closed the idle lazy connection (``timeout`` in redis.conf, ``CLIENT
    KILL``): the finish written to it never ran, and its answer cannot be read. It is
    sent again at once on a new connection: the call is closed in Redis, nothing is
    kept, and Redis is not reported down."""
    store = make_store(private_redis.url, prefix)
    try:
        store.reserve("c1", "k0", "+8613800000001", T0, profile=ONE_AT_A_TIME)
        store.finish("k0", T0 + 1, answered=False)  # the lazy connection is open
        assert 0 == store.pending
        host, port = store._lazy_conn._sock.getsockname()[:2]
        assert 1 == store.client.client_kill_filter(_type="normal", addr=f"{host}:{port}")
        time.sleep(0.05)  # the server's FIN arrives
        store.reserve("c1", "k1", "+8613800000001", T0 + 2, profile=ONE_AT_A_TIME)
        store.finish("k1", T0 + 5, answered=True, talk_seconds=4.0)
        assert 0 == store.pending
        assert store.guard.healthy
        assert (0, 2) == usage_in_redis(private_redis.url, prefix, "c1", T0 + 6)
    finally:
        store.close()


def test_a_finish_redis_does_not_answer_is_kept_and_replayed_once(
    private_redis: RedisServer, prefix: str
) -> None:
    """Redis freezes right after a finish was sent: its answer times out, so does the
    finish sent again; it is kept, like a finish during an outage, and replayed once
    Redis answers. However many times it reached Redis, it counts once."""
    store = make_store(private_redis.url, prefix, timeout=0.3)
    try:
        store.reserve("c1", "k0", "+8613800000001", T0, profile=ONE_AT_A_TIME)
        store.finish("k0", T0 + 1, answered=False)  # the lazy connection is open
        assert 0 == store.pending
        store.reserve("c1", "k1", "+8613800000001", T0 + 2, profile=ONE_AT_A_TIME)
        private_redis.signal(signal.SIGSTOP)
        try:
            assert "c1" == store.finish("k1", T0 + 5, answered=True, talk_seconds=4.0)
            assert store._lazy  # sent: Redis reads it when it wakes up
            assert 1 == store.pending  # no answer, nor to the second attempt: kept
            assert store.is_kept("k1") and not store.guard.healthy
        finally:
            private_redis.signal(signal.SIGCONT)
        assert store.settle(T0 + 6)
        assert 0 == store.pending
        assert (0, 2) == usage_in_redis(private_redis.url, prefix, "c1", T0 + 6)
    finally:
        store.close()


def test_a_finish_whose_script_redis_forgot_is_run_again(
    private_redis: RedisServer, prefix: str
) -> None:
    """SCRIPT FLUSH (or a restart) between two finishes: the answer is NOSCRIPT, and the
    finish is run again at once with the script loaded."""
    store = make_store(private_redis.url, prefix)
    try:
        for i, at in enumerate((T0, T0 + 10)):
            store.reserve("c1", f"k{i}", "+8613800000001", at, profile=ONE_AT_A_TIME)
            store.finish(f"k{i}", at + 2, answered=True, talk_seconds=1.0)
            if i == 0:
                assert 0 == store.pending
                store.client.script_flush()
        assert 0 == store.pending
        assert (0, 2) == usage_in_redis(private_redis.url, prefix, "c1", T0 + 20)
    finally:
        store.close()


def test_close_reads_the_last_answers(private_redis: RedisServer, prefix: str) -> None:
    """A node that stops right after a finish still closes it in Redis, once."""
    store: RedisStore = make_store(private_redis.url, prefix)
    store.reserve("c1", "k1", "+8613800000001", T0, profile=ONE_AT_A_TIME)
    store.finish("k1", T0 + 3, answered=True, talk_seconds=2.0)
    assert store._lazy
    store.close()
    assert not store._lazy and 0 == len(store._unclosed)
    assert (0, 1) == usage_in_redis(private_redis.url, prefix, "c1", T0 + 4)


def test_without_lazy_finishes_a_finish_waits_for_its_answer(
    private_redis: RedisServer, prefix: str
) -> None:
    store = make_store(private_redis.url, prefix, lazy_finish=False)
    try:
        store.reserve("c1", "k1", "+8613800000001", T0, profile=ONE_AT_A_TIME)
        assert "c1" == store.finish("k1", T0 + 3, answered=True, talk_seconds=2.0)
        assert not store._lazy and store._lazy_conn is None
    finally:
        store.close()


def test_an_answer_of_an_unexpected_shape_fails_no_other_operation(
    private_redis: RedisServer, prefix: str
) -> None:
    """The answer is read inside whatever this store does next (here a usage read for
    another call): an answer it cannot make sense of is logged and the card's copy
    dropped, and that next operation goes on with a fresh read."""
    store = make_store(private_redis.url, prefix)
    try:
        store.reserve("c1", "k1", "+8613800000001", T0, profile=ONE_AT_A_TIME)
        store.finish("k1", T0 + 5, answered=True, talk_seconds=4.0)
        real = store._lazy_conn.read_response

        def garbled() -> list[bytes]:
            real()  # the close ran; its answer arrives mangled
            return [b"OK"]

        store._lazy_conn.read_response = garbled
        usage = store.card_usage("c1", T0 + 6)
        assert (0, 1) == (usage.in_use, len(usage.recent_outcomes))
        assert 0 == store.pending
    finally:
        store.close()

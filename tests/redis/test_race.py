"""Atomic check-and-reserve: racers in several processes and threads never overshoot a limit."""

from __future__ import annotations

import multiprocessing as mp
import threading
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event

from gateway.store import QuotaExceeded
from policies.quotas import QuotaLimit, QuotaProfile

from .conftest import T0, RedisServer, make_store

PROFILE = QuotaProfile(calls_per_minute=5, concurrent=None)
ATTEMPTS = 40


def hammer(url: str, prefix: str, node: str, go: Event, out: Queue[tuple[int, list[str]]]) -> None:
    """Child process: wait for the start signal, then try ATTEMPTS reservations on c1."""
    store = make_store(url, prefix, node=node, timeout=5.0)
    wins = 0
    refused: list[str] = []
    go.wait(30)
    for n in range(ATTEMPTS):
        try:
            store.reserve("c1", f"{node}-{n}", f"+86138{n:08d}", T0 + n * 0.01, profile=PROFILE)
        except QuotaExceeded as exc:
            refused.append(exc.exhausted.limit.value)
        else:
            wins += 1
    out.put((wins, refused))
    store.close()


def test_two_processes_race_for_the_last_slots(redis_server: RedisServer, prefix: str) -> None:
    """Two gateway processes hammer one card with calls_per_minute=5: exactly 5 win in total.

    Each process walks its own clock from T0, so one often reserves "before" the
    other's starts: starts later than ``now`` must count too (clock skew).
    """
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    out: Queue[tuple[int, list[str]]] = ctx.Queue()
    procs = [
        ctx.Process(target=hammer, args=(redis_server.url, prefix, f"gw{i}", go, out))
        for i in range(2)
    ]
    for p in procs:
        p.start()
    go.set()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert 0 == p.exitcode
    assert 5 == sum(wins for wins, _ in results)
    refused = [limit for _, r in results for limit in r]
    assert [QuotaLimit.CALLS_PER_MINUTE.value] * (2 * ATTEMPTS - 5) == refused
    usage = make_store(redis_server.url, prefix).card_usage("c1", T0 + 1)
    assert 5 == len(usage.call_starts)


def test_threads_on_two_instances_race_for_one_concurrent_slot(
    redis_server: RedisServer, prefix: str
) -> None:
    """Sixteen threads on two instances race for a one-call card at the same instant: one wins."""
    stores = [make_store(redis_server.url, prefix, node=f"gw{i}") for i in range(2)]
    barrier = threading.Barrier(16)
    wins: list[str] = []
    refused: list[QuotaLimit] = []
    lock = threading.Lock()

    def racer(n: int) -> None:
        store = stores[n % 2]
        barrier.wait(10)
        try:
            store.reserve("c1", f"k{n}", f"+86138{n:08d}", T0, profile=QuotaProfile(concurrent=1))
        except QuotaExceeded as exc:
            with lock:
                refused.append(exc.exhausted.limit)
        else:
            with lock:
                wins.append(f"k{n}")

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert 1 == len(wins)
    assert [QuotaLimit.CONCURRENT] * 15 == refused
    assert 1 == stores[0].card_usage("c1", T0).in_use

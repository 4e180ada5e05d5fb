"""Cost of one ``card_usage`` read right after the card's usage changed, by calls on the card.

Every call reads its card's usage (decision, reservation) and changes it (start,
end), so the read after a change is the per-call cost. The read hands out the
day's distinct callees (issue 17: a ``frozenset`` of them per read cost 112 µs at
10,000 callees; a copy-on-write view costs nothing). Run:

    .venv/bin/python bench/card_usage.py --calls 1000,5000,10000

``--redis-delta`` times what a node of a Redis cluster pays per write on a card it keeps
a copy of (``gateway.store.redis._apply_delta``: its own reservations and every other
node's), by the card's calls and distinct callees of the day; no Redis is needed.

``--workers`` times what two workers of ``dialgate run --workers 2`` pay when both
place calls on one card (agents of a pool, a dialer's pool): the two stores take
turns, each a reservation, its quota check and its finish, so each turn starts
behind the other's last two changes. ``--unlogged`` runs them as processes without
siblings (no ``card_usage_changes``): the counters are re-read from the card's day.

Asserts nothing; a temporary SQLite file, removed at the end.
"""

from __future__ import annotations

import argparse
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.store import SQLiteStore, StoredCard
from policies.quotas import QuotaProfile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="1000,5000,10000", help="calls on the card, by step")
    parser.add_argument("--reads", type=int, default=300)
    parser.add_argument("--workers", action="store_true", help="two stores take turns on the card")
    parser.add_argument("--unlogged", action="store_true", help="with --workers: no change log")
    parser.add_argument(
        "--redis-delta", action="store_true", help="a Redis node's copy following writes"
    )
    ns = parser.parse_args()
    if ns.redis_delta:
        _redis_delta(ns)
        return
    workdir = Path(tempfile.mkdtemp(prefix="dialgate-usage-"))
    if ns.workers:
        try:
            _workers(workdir, ns)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return
    try:
        store = SQLiteStore(workdir / "u.db", carrier_timezones={"a": "UTC"})
        start = 1.7e9
        store.upsert_card(StoredCard("c1", "a", "+8613800000001", "main", since=start))
        t0 = start + 3600.0
        done = 0
        for target in (int(x) for x in ns.calls.split(",")):
            while done < target:
                at = t0 + done * 0.01
                store.reserve("c1", f"k{done}", f"+8613{done:09d}", at)
                store.finish(f"k{done}", at + 0.005, answered=True, talk_seconds=1.0)
                done += 1
            now = t0 + done * 0.01 + 1.0
            store.card_usage("c1", now)
            elapsed = 0.0
            for _ in range(ns.reads):
                store._cards_usage["c1"].memo = None  # as after a start or an end
                began = time.perf_counter()
                store.card_usage("c1", now)
                elapsed += time.perf_counter() - began
            per = elapsed / ns.reads * 1e6
            print(f"{done:6d} calls (distinct callees) on the card: {per:6.1f} µs per read")
        store.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _redis_delta(ns: argparse.Namespace) -> None:
    from gateway.store import redis as shared

    day = 1.8e9
    for calls in (int(x) for x in ns.calls.split(",")):
        # The node's copy after a full read: the card's starts and callees of the day.
        raw = (
            struct.pack(f">{calls}d", *(day + i * 0.01 for i in range(calls))),
            b"\0".join(f"c:+8613{i:09d}".encode() for i in range(calls)),
            b"0",
            b"0",
            [],
            b"1",
            b"1",
            b"0",
        )
        snap = shared._parse(raw, 0.0)
        began = time.perf_counter()
        for k in range(ns.reads):
            start = repr(day + calls * 0.01 + k).encode()
            fields = [b"R", f"d:{int(day)}".encode(), start, f"+8614{k:09d}".encode()]
            followed = shared._apply_delta(snap, day, k + 2, fields, 50)
            assert followed is not None
            snap = followed
        per = (time.perf_counter() - began) / ns.reads * 1e6
        print(f"{calls:6d} calls (distinct callees) on the card: {per:7.1f} µs per write followed")


def _workers(workdir: Path, ns: argparse.Namespace) -> None:
    profile = QuotaProfile(name="bench", calls_per_minute=100_000, calls_per_hour=1_000_000)
    stores = []
    for i in range(2):
        store = SQLiteStore(workdir / "u.db", carrier_timezones={"a": "UTC"})
        if not ns.unlogged:
            store.owner, store.siblings = f"w{i}", (f"w{1 - i}",)
        stores.append(store)
    start = 1.7e9
    stores[0].upsert_card(StoredCard("c1", "a", "+8613800000001", "main", since=start))
    t0 = start + 3600.0
    done = 0
    mode = "unlogged (re-read)" if ns.unlogged else "change log (applied)"
    for target in (int(x) for x in ns.calls.split(",")):
        # The card's day so far, written by the first store alone (not timed).
        while done < target:
            at = t0 + done * 0.01
            stores[0].reserve("c1", f"k{done}", f"+8613{done:09d}", at)
            stores[0].finish(f"k{done}", at + 0.005, answered=True, talk_seconds=1.0)
            done += 1
        elapsed = 0.0
        for turn in range(ns.reads):
            store = stores[turn % 2]
            at = t0 + done * 0.01
            began = time.perf_counter()
            store.reserve("c1", f"k{done}", f"+8613{done:09d}", at, profile=profile)
            store.finish(f"k{done}", at + 0.005, answered=True, talk_seconds=1.0)
            elapsed += time.perf_counter() - began
            done += 1
        per = elapsed / ns.reads * 1e6
        print(
            f"{done:6d} calls on the card, two workers taking turns, {mode}: {per:7.1f} µs per call"
        )
    for store in stores:
        store.close()


if __name__ == "__main__":
    main()

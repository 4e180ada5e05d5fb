"""Benchmark of the Redis shared state: reserve / finish / usage-read latency and throughput.

Starts its own redis-server (no persistence) on a free 127.0.0.1 port, stops
it by PID at the end, and measures :class:`gateway.store.redis.RedisStore`:

- ``reserve`` with a full quota profile (every limit kind checked in the Lua
  script) and ``finish``, one client, on cards that already carry a realistic
  day (``--warm`` calls each, default 300 — the default profile's daily cap);
- ``card_usage`` (the atomic snapshot selection reads for headroom);
- reserve+finish pairs per second with 1 client and with ``--threads`` clients
  (each its own connection, as separate gateway processes would be);
- the SQLite store's reserve+finish on the same workload, for reference.

Latencies are wall-clock round trips over loopback TCP, in microseconds.
Run: ``.venv/bin/python bench/bench_redis.py [--cards 50] [--pairs 20000]``.
The simulated call clock is advanced explicitly; no decision reads a clock.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.store import QuotaExceeded, SQLiteStore, StoredCard, UsageLedger
from gateway.store.redis import RedisStore, connect
from policies.quotas import QuotaProfile
from simulator.testkit import free_port

T0 = 1_700_000_000.0
PROFILE = QuotaProfile(
    calls_per_minute=5,
    calls_per_hour=300,
    calls_per_day=100_000,
    concurrent=1,
    min_gap_seconds=2,
    talk_minutes_per_day=100_000,
    distinct_callees_per_day=100_000,
    answer_rate_floor=0.05,
    short_call_ceiling=0.95,
    consecutive_failures=5,
)


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A redis-server without persistence on a free port, answering PING."""
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, port
        except OSError:
            time.sleep(0.01)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def percentiles(samples_ns: list[int]) -> tuple[float, float, float]:
    """p50, p99 and max in microseconds."""
    ordered = sorted(samples_ns)
    p50 = ordered[len(ordered) // 2] / 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1000
    return p50, p99, ordered[-1] / 1000


class Workload:
    """Calls spread over ``cards`` cards, 13 simulated seconds apart per card (within limits)."""

    def __init__(self, cards: int, tag: str) -> None:
        self.cards = [f"{tag}{i}" for i in range(cards)]
        self.n = 0

    def next(self) -> tuple[str, str, str, float]:
        """(card, call id, callee, now) of the next call."""
        card = self.cards[self.n % len(self.cards)]
        now = T0 + (self.n // len(self.cards)) * 13.0
        call = f"{card}-{self.n}"
        callee = f"+86138{self.n % 100_000:08d}"
        self.n += 1
        return card, call, callee, now


def run_pairs(
    ledger: UsageLedger, work: Workload, pairs: int
) -> tuple[list[int], list[int], float, int]:
    """``pairs`` reserve+finish pairs: reserve and finish latencies, elapsed seconds, refusals."""
    reserve_ns: list[int] = []
    finish_ns: list[int] = []
    refused = 0
    started = time.perf_counter()
    for _ in range(pairs):
        card, call, callee, now = work.next()
        t0 = time.perf_counter_ns()
        try:
            ledger.reserve(card, call, callee, now, profile=PROFILE)
        except QuotaExceeded:
            refused += 1
            continue
        t1 = time.perf_counter_ns()
        answered = work.n % 3 != 0
        ledger.finish(call, now + 10, answered=answered, talk_seconds=40.0 if answered else 0.0)
        t2 = time.perf_counter_ns()
        reserve_ns.append(t1 - t0)
        finish_ns.append(t2 - t1)
    return reserve_ns, finish_ns, time.perf_counter() - started, refused


def row(name: str, samples: list[int]) -> str:
    """One table row: name, count, p50, p99, max."""
    p50, p99, mx = percentiles(samples)
    return f"| {name:<34} | {len(samples):>7} | {p50:>8.0f} | {p99:>8.0f} | {mx:>8.0f} |"


def main() -> None:
    """Start redis-server, run the measurements, print a table, stop the server."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cards", type=int, default=50)
    parser.add_argument("--warm", type=int, default=300, help="calls per card before measuring")
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        sys.exit("redis-server not found")

    workdir = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    proc, port = start_redis(workdir)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        store = RedisStore(connect(url, timeout=1.0), node="bench", prefix="bench")
        work = Workload(args.cards, "c")
        run_pairs(store, work, args.cards * args.warm)  # a realistic card day first
        store.client.config_resetstat()
        reserve_ns, finish_ns, elapsed, refused = run_pairs(store, work, args.pairs)
        script_us = store.client.info("commandstats")["cmdstat_evalsha"]["usec_per_call"]
        read_ns: list[int] = []
        _card, _call, _callee, last = work.next()  # the busiest moment: end of the run
        for i in range(min(args.pairs, 5000)):
            t0 = time.perf_counter_ns()
            store.card_usage(work.cards[i % len(work.cards)], last)
            read_ns.append(time.perf_counter_ns() - t0)
        single = len(reserve_ns) / elapsed
        starts_per_card = len(store.card_usage(work.cards[0], last).call_starts)

        results: list[tuple[int, float]] = []
        lock = threading.Lock()

        def client(n: int) -> None:
            own = RedisStore(connect(url, timeout=1.0), node=f"bench{n}", prefix="bench")
            r, _f, took, _ = run_pairs(own, Workload(args.cards, f"t{n}-"), args.pairs // 2)
            with lock:
                results.append((len(r), took))
            own.close()

        threads = [threading.Thread(target=client, args=(n,)) for n in range(args.threads)]
        wall = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - wall
        multi = sum(n for n, _ in results) / wall
        info = store.client.info("memory")
        keys = store.client.dbsize()
        store.close()

        sqlite = SQLiteStore(workdir / "ref.db", carrier_timezones={})
        swork = Workload(args.cards, "c")
        for card in swork.cards:
            sqlite.upsert_card(StoredCard(card, "carrier", "+8613800000000", "main", since=T0))
        run_pairs(sqlite, swork, args.cards * args.warm)
        s_reserve, s_finish, s_elapsed, _ = run_pairs(sqlite, swork, args.pairs)
        sqlite.close()
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"redis-server on 127.0.0.1:{port}, {args.cards} cards warmed with {args.warm} calls each"
    )
    print("| operation (µs, wall)               |       n |      p50 |      p99 |      max |")
    print("|------------------------------------|---------|----------|----------|----------|")
    print(row("redis reserve (full profile, Lua)", reserve_ns))
    print(row("redis finish", finish_ns))
    print(row("redis reserve+finish", [a + b for a, b in zip(reserve_ns, finish_ns, strict=True)]))
    print(row(f"redis card_usage ({starts_per_card} starts/day)", read_ns))
    print(row("sqlite reserve (same profile)", s_reserve))
    print(row("sqlite finish", s_finish))
    print(f"refused during measurement: {refused}")
    print(f"server-side script time (reserve and finish averaged): {script_us:.0f} µs per call")
    print(f"reserve+finish pairs/s: redis 1 client {single:,.0f}; "
          f"redis {args.threads} clients {multi:,.0f}; sqlite {len(s_reserve) / s_elapsed:,.0f}")  # fmt: skip
    calls = args.cards * args.warm + args.pairs + args.threads * (args.pairs // 2)
    print(
        f"redis: {keys} keys, used_memory {int(info['used_memory']) / 1e6:.1f} MB "
        f"after {calls} calls ({int(info['used_memory']) / calls:.0f} B per call)"
    )


if __name__ == "__main__":
    main()

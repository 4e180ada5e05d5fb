"""Memory soak: N calls to distinct numbers through the gateway in one process.

Drives the real :class:`gateway.callpath.element.Gateway` the way ``bench/callflow_cpu.py``
does (memory transports, scripted SIPp-like agents and carrier, every policy
on, JSON logging to /dev/null), but every call goes to a *different* callee,
as a campaign does. At every ``--every`` calls it prints one point of the soak
curve: calls placed, RSS (``/proc/self/statm``) and, with ``--trace``,
tracemalloc's traced bytes; at the end the top growth by line between the
snapshot after the warm-up and the last one.

Growth per call is measured at steady state: from the end of the warm-up
(``--warmup`` calls, default a fifth of the run) to the end, after Timers
J/K/L/M have ended every transaction (T1 is short, ``--t1``), and after a
full ``gc.collect()``. tracemalloc adds its own bookkeeping to RSS, so RSS
growth is taken from a run without ``--trace`` (the default); traced bytes
per call come from ``--trace``.

    .venv/bin/python bench/memory_soak.py --calls 20000
    .venv/bin/python bench/memory_soak.py --calls 5000 --trace --top 25

Asserts nothing; exits non-zero when calls fail.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
from collections import Counter, OrderedDict, deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import e2e  # bench/ is not a package: found through sys.path above
from callflow_cpu import Agent, Carrier, PeerClock, in_process_gateway

from gateway.callpath.element import Gateway
from gateway.telemetry.alerts import AlertWatch
from gateway.telemetry.events import CallStats
from gateway.telemetry.metrics import GatewayMetrics
from gateway.transport.memory import MemoryNetwork

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """Resident set size of this process, from /proc/self/statm."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


def census(least: int, top: int) -> list[tuple[int, str]]:
    """The containers with at least ``least`` entries, each named by what holds it."""
    found: list[tuple[int, str]] = []
    kinds = (dict, list, set, deque, OrderedDict)
    for obj in gc.get_objects():
        if not isinstance(obj, kinds) or len(obj) < least:
            continue
        found.append((len(obj), owner_name(obj)))
    found.sort(reverse=True)
    return found[:top]


def owner_name(obj: object) -> str:
    """``Type.attribute`` (or ``module.name``) of an object holding ``obj``, best effort."""
    for ref in gc.get_referrers(obj):
        if isinstance(ref, dict):
            for key, value in ref.items():
                if value is obj and isinstance(key, str):
                    mod = ref.get("__name__") if "__name__" in ref else None
                    if mod is not None:
                        return f"{mod}.{key}"
                    for holder in gc.get_referrers(ref):
                        if getattr(holder, "__dict__", None) is ref:
                            return f"{type(holder).__qualname__}.{key}"
                    return f"dict[{key!r}]"
        slots = getattr(type(ref), "__slots__", ())
        for name in slots if isinstance(slots, (tuple, list)) else ():
            if getattr(ref, name, None) is obj:
                return f"{type(ref).__qualname__}.{name}"
        for name, value in getattr(ref, "__dict__", {}).items():
            if value is obj:
                return f"{type(ref).__qualname__}.{name}"
    refs = ", ".join(sorted({type(r).__qualname__ for r in gc.get_referrers(obj)}))
    sample = next(iter(obj), None)  # type: ignore[call-overload]
    return f"{type(obj).__qualname__} held by {refs or '?'}; e.g. {sample!r:.80}"


def forget_sent(net: MemoryNetwork) -> None:
    """Drop the memory transports' record of what they sent (a test aid, not the gateway's)."""
    for endpoint in net.endpoints.values():
        endpoint.sent.clear()


async def settle(net: MemoryNetwork, seconds: float) -> None:
    """Let the gateway's timers run for ``seconds`` while delivering messages."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        net.flush()
    forget_sent(net)


def subscribe_run(gw: Gateway) -> None:
    """What ``dialgate run`` subscribes to the bus (gateway.telemetry.hub.GatewayTelemetry),
    without MQTT: call stats, /metrics, quota alerts."""
    gw.events.subscribe(CallStats(time.time))
    gw.events.subscribe(GatewayMetrics())
    gw.events.subscribe(AlertWatch(gw.events.publish))


async def run(ns: argparse.Namespace) -> int:
    args = e2e.build_parser().parse_args(
        ["e2e", "--dnc", str(ns.dnc), "--consent", str(ns.calls), "--cards", str(ns.cards)]
    )
    template, _ = e2e.build_template(args)
    numbers = e2e.consent_numbers(ns.calls)  # distinct, all with consent
    workdir = Path(tempfile.mkdtemp(prefix="dialgate-soak-"))
    try:
        gw, net, sink = in_process_gateway(
            template, workdir, cards=ns.cards, t1=ns.t1, log_level="info", prepare=subscribe_run
        )
        peer_clock = PeerClock()
        _carrier = Carrier(net, peer_clock)
        agents = [Agent(net, i, peer_clock) for i in range(ns.callers)]
        for a in agents:
            a.register()
        await settle(net, 0.1)
        if ns.trace:
            tracemalloc.start(ns.frames)
        warmup = ns.warmup if ns.warmup is not None else ns.calls // 5
        drain = 80 * ns.t1 + 0.2  # Timers J/K/L/M are 64*T1
        curve: list[tuple[int, int, int]] = []
        base_snap = None
        last_snap = None
        print(f"{'calls':>8} {'RSS MB':>9} {'traced MB':>10} {'txns':>6}")

        async def point(calls: int) -> tuple[int, int, int]:
            # In flight first: what the calls still in Timers L/M/J hold (64*T1).
            gc.collect()
            live_txns = len(gw.endpoint.layer)
            live_traced = tracemalloc.get_traced_memory()[0] if ns.trace else 0
            live_rss = rss_bytes()
            await settle(net, drain)
            gc.collect()
            traced = tracemalloc.get_traced_memory()[0] if ns.trace else 0
            row = (calls, rss_bytes(), traced)
            curve.append(row)
            print(
                f"{calls:>8} {row[1] / 1e6:>9.2f} {traced / 1e6:>10.2f} "
                f"{len(gw.endpoint.layer):>6}   in flight: {live_txns:>6} txns, "
                f"RSS {live_rss / 1e6:.2f} MB, traced {live_traced / 1e6:.2f} MB",
                flush=True,
            )
            return row

        await point(0)
        placed = 0
        started = time.perf_counter()
        next_mark = ns.every
        while placed < ns.calls:
            batch = agents[: min(len(agents), ns.calls - placed)]
            for i, a in enumerate(batch):
                a.start_call(numbers[placed + i], placed + i)
            net.flush()
            await asyncio.sleep(0)
            net.flush()
            for a in batch:
                a.hang_up()
            net.flush()
            await asyncio.sleep(0)
            net.flush()
            forget_sent(net)
            placed += len(batch)
            if placed >= next_mark or placed >= ns.calls:
                next_mark += ns.every
                await point(placed)
                if ns.trace and base_snap is None and placed >= warmup:
                    base_snap = tracemalloc.take_snapshot()
                    base_row = curve[-1]
                if ns.trace and placed >= ns.calls:
                    last_snap = tracemalloc.take_snapshot()
        wall = time.perf_counter() - started
        outcomes: Counter[str] = Counter()
        for a in agents:
            outcomes.update(a.done)
        ok = outcomes.get("bye-200", 0)
        print(f"calls {ns.calls} to distinct numbers, outcomes {dict(outcomes)}, wall {wall:.1f} s")
        steady = [r for r in curve if r[0] >= warmup]
        if len(steady) >= 2 and steady[-1][0] > steady[0][0]:
            first, last = steady[0], steady[-1]
            n = last[0] - first[0]
            rss_per = (last[1] - first[1]) / n
            line = (
                f"steady-state growth per call (calls {first[0]}→{last[0]}): "
                f"RSS {rss_per:.0f} B/call"
            )
            if ns.trace:
                line += f", traced {(last[2] - first[2]) / n:.0f} B/call"
            print(line)
            total = curve[-1][0] - curve[0][0]
            if total:
                print(
                    f"whole-run growth per call (0→{curve[-1][0]}): "
                    f"RSS {(curve[-1][1] - curve[0][1]) / total:.0f} B/call"
                )
        if base_snap is not None and last_snap is not None:
            print(f"\ntop growth by line, calls {base_row[0]}→{ns.calls} (tracemalloc):")
            stats = last_snap.compare_to(base_snap, "lineno")
            for stat in stats[: ns.top]:
                print(f"  {stat}")
        if ns.census:
            print(f"\ncontainers with ≥ {ns.census} entries at the end (len, holder):")
            for size, name in census(ns.census, ns.top):
                print(f"  {size:>8}  {name}")
        await gw.close(log_stats=False)
        sink.close()
        return 0 if ok == ns.calls else 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--every", type=int, default=2000, help="calls between curve points")
    parser.add_argument("--warmup", type=int, help="calls before steady state (default calls/5)")
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--t1", type=float, default=0.01)
    parser.add_argument("--dnc", type=int, default=100_000)
    parser.add_argument("--cards", type=int, default=100)
    parser.add_argument("--trace", action="store_true", help="tracemalloc on: traced bytes + diff")
    parser.add_argument("--frames", type=int, default=1)
    parser.add_argument(
        "--census", type=int, default=0, help="list containers with at least this many entries"
    )
    parser.add_argument("--top", type=int, default=20)
    ns = parser.parse_args()
    sys.exit(asyncio.run(run(ns)))


if __name__ == "__main__":
    main()

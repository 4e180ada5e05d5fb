"""Memory per 1,000 calls in flight, in one process (issue 17 item 4).

Drives the real :class:`gateway.callpath.element.Gateway` on memory transports the way
``bench/callflow_cpu.py`` does (every policy on, JSON logs to /dev/null, the scripted
SIPp-like carrier), but holds ``--calls`` calls up at once: one agent per card, each
placing ``--calls / --cards`` calls in parallel (407, INVITE with digest, 180, 200, ACK).
Three moments are measured, each after a full ``gc.collect()``:

1. **talking**: every call answered and not hung up — what a call in progress costs
   (call object, both dialogs, reservation, write-ahead row, bindings);
2. **ended, in Timers**: every call hung up (BYE → 200 on both legs), before Timers
   J/K/L/M (64*T1) have fired — what RFC 3261/6026 make a finished call keep for
   retransmissions, the price of a call rate (kept for 32 s at T1 = 0.5 s);
3. **after the timers**: what stays once every transaction has ended (per-day callee
   sets per card, counters; the parser's bounded memos of URIs and name-addrs fill up to
   their fixed size on the first few thousand distinct values; CDRs are on disk).

Each figure is the growth over the baseline (agents registered, nothing called) per
1,000 calls, as RSS (``/proc/self/statm``; freed memory stays in the allocator's arenas
for reuse, so RSS does not go down after the timers) or, with ``--trace``, as tracemalloc's traced bytes of the
gateway's own allocations (traces with a frame under ``gateway/`` or ``policies/``
and none under ``bench/``: the scripted peers' messages are not counted). Also the
objects the garbage collector tracks, per call (``len(gc.get_objects())``): what a full
collection has to walk, i.e. the length of its pauses under load. The top
allocation lines of the "talking" and "in Timers" states are printed.

    .venv/bin/python bench/inflight_memory.py --calls 2000
    .venv/bin/python bench/inflight_memory.py --calls 1000 --top 15

Asserts nothing; exits non-zero when calls fail.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import e2e  # bench/ is not a package: found through sys.path above
from callflow_cpu import GW, Agent, Carrier, PeerClock, in_process_gateway
from memory_soak import forget_sent, rss_bytes, subscribe_run

from gateway.sip import Request, Response
from gateway.transport.memory import MemoryNetwork


class ParallelAgent(Agent):
    """``callflow_cpu``'s scripted agent holding several calls at once, keyed by Call-ID
    (each call its own state dict; the agent's steps run on the call a message is for)."""

    def __init__(self, net: MemoryNetwork, index: int, clock: PeerClock) -> None:
        super().__init__(net, index, clock)
        self.calls: dict[str, dict[str, object]] = {}

    def call_up(self, callee: str, n: int) -> None:
        """Place one more call; the others stay up."""
        call_id = f"{n}-{self.user}@inflight"
        self.calls[call_id] = {"callee": callee, "call_id": call_id, "tag": f"t{n}", "state": "1"}
        self.call = self.calls[call_id]
        with self.clock:
            self.tp.send(self._invite(None), GW)

    def answered(self) -> int:
        return sum(1 for c in self.calls.values() if c["state"] in ("up", "done"))

    def hang_up_all(self) -> None:
        for c in self.calls.values():
            self.call = c
            self.hang_up()

    def _on_message(self, msg: Request | Response) -> None:
        if isinstance(msg, Response) and msg.cseq.method != "REGISTER":
            c = self.calls.get(msg.call_id)
            if c is None:
                return
            self.call = c
        super()._on_message(msg)


def gateway_filter() -> list[tracemalloc.Filter]:
    """Traces caused by the gateway (a frame in gateway/ or policies/), not by the peers."""
    return [
        tracemalloc.Filter(False, "*/bench/*", all_frames=True),
        tracemalloc.Filter(False, tracemalloc.__file__),
    ]


def gateway_bytes(snap: tracemalloc.Snapshot) -> int:
    """Traced bytes whose stack has a frame in the gateway's own code."""
    total = 0
    for trace in snap.filter_traces(gateway_filter()).traces:
        if any(("/gateway/" in f.filename or "/policies/" in f.filename) for f in trace.traceback):
            total += trace.size
    return total


async def pump(net: MemoryNetwork, seconds: float) -> None:
    """Deliver messages and let the gateway's timers run for ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        moved = net.flush()
        await asyncio.sleep(0.01)
        moved += net.flush()
        if not moved and time.monotonic() >= deadline:
            break
    forget_sent(net)


async def run(ns: argparse.Namespace) -> int:
    args = e2e.build_parser().parse_args(
        ["e2e", "--dnc", str(ns.dnc), "--consent", str(ns.calls), "--cards", str(ns.cards)]
    )
    template, _ = e2e.build_template(args)
    numbers = e2e.consent_numbers(ns.calls)
    workdir = Path(tempfile.mkdtemp(prefix="dialgate-inflight-"))
    try:
        gw, net, sink = in_process_gateway(
            template, workdir, cards=ns.cards, t1=ns.t1, log_level="info", prepare=subscribe_run
        )
        clock = PeerClock()
        _carrier = Carrier(net, clock)
        agents = [ParallelAgent(net, i, clock) for i in range(ns.cards)]
        for a in agents:
            a.register()
        await pump(net, 0.2)
        registered = sum(a.done["register-200"] for a in agents)
        assert registered == len(agents), f"{registered} of {len(agents)} agents registered"
        if ns.trace:
            tracemalloc.start(ns.frames)

        objects: list[int] = []
        kinds: list[Counter[str]] = []

        def measure() -> tuple[int, int, tracemalloc.Snapshot | None]:
            gc.collect()
            tracked = gc.get_objects()
            objects.append(len(tracked))  # what a full collection walks
            if ns.types:
                kinds.append(Counter(type(o).__qualname__ for o in tracked))
            del tracked
            if not ns.trace:
                return rss_bytes(), 0, None
            snap = tracemalloc.take_snapshot()
            return rss_bytes(), gateway_bytes(snap), snap

        base_rss, base_traced, base_snap = measure()
        for n in range(ns.calls):
            agents[n % len(agents)].call_up(numbers[n], n)
            if n % 200 == 199:
                await pump(net, 0.0)
        await pump(net, 0.3)
        answered = sum(a.answered() for a in agents)
        talk_rss, talk_traced, talk_snap = measure()
        assert gw.b2bua is not None
        in_progress = len(gw.b2bua.calls)
        txns_talking = len(gw.endpoint.layer)
        for a in agents:
            a.hang_up_all()
        await pump(net, 0.2)  # BYE/200 on both legs, well inside 64*T1
        byes = sum(a.done["bye-200"] for a in agents)
        txns_ended = len(gw.endpoint.layer)
        end_rss, end_traced, end_snap = measure()
        await pump(net, 64 * ns.t1 + 1.0)
        txns_after = len(gw.endpoint.layer)
        after_rss, after_traced, _ = measure()
        if ns.trace:
            tracemalloc.stop()

        per = 1000 / max(ns.calls, 1)
        print(
            f"calls {ns.calls} in flight on {ns.cards} cards: answered {answered}, "
            f"BYE 200 {byes}; calls held {in_progress}; transactions: talking {txns_talking}, "
            f"just ended {txns_ended}, after timers {txns_after}"
        )
        what = "traced (tracemalloc)" if ns.trace else "RSS"
        for label, rss, traced in (
            ("talking", talk_rss, talk_traced),
            ("ended, in Timers J/K/L/M", end_rss, end_traced),
            ("after the timers", after_rss, after_traced),
        ):
            grown = (traced - base_traced) if ns.trace else (rss - base_rss)
            print(f"in flight {label}: {what} {grown * per / 1e6:.2f} MB per 1,000 calls")
        base_objects = objects[0]
        for label, count in zip(
            ("talking", "ended, in Timers J/K/L/M", "after the timers"), objects[1:], strict=True
        ):
            print(
                f"in flight {label}: {(count - base_objects) / ns.calls:.0f} objects tracked by "
                "the collector per call"
            )
        if ns.types and len(kinds) == 4:
            for label, after in (("talking", kinds[1]), ("ended, in Timers", kinds[2])):
                grown = after - kinds[0]
                print(f"\ntracked objects per call by type, {label}:")
                for name, count in grown.most_common(ns.types):
                    print(f"  {count / ns.calls:6.1f}  {name}")
        if not ns.trace:
            print("(run with --trace for the gateway's own allocations by line)")
        for label, snap in (("talking", talk_snap), ("ended, in Timers", end_snap)):
            if snap is None or base_snap is None:
                continue
            print(f"\ntop gateway allocations, {label} vs baseline (tracemalloc, by line):")
            stats = snap.filter_traces(gateway_filter()).compare_to(
                base_snap.filter_traces(gateway_filter()), "lineno"
            )
            for stat in stats[: ns.top]:
                print(f"  {stat}")
        await gw.close(log_stats=False)
        sink.close()
        return 0 if answered == ns.calls and byes == ns.calls else 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls held up at once")
    parser.add_argument("--cards", type=int, default=100, help="agents, one card each")
    parser.add_argument("--t1", type=float, default=0.5, help="SIP T1 (Timers are 64*T1)")
    parser.add_argument("--dnc", type=int, default=100_000)
    parser.add_argument("--trace", action="store_true", help="tracemalloc instead of RSS")
    parser.add_argument("--frames", type=int, default=12, help="tracemalloc frames per trace")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--types", type=int, default=0, help="top tracked object types per call")
    ns = parser.parse_args()
    sys.exit(asyncio.run(run(ns)))


if __name__ == "__main__":
    main()

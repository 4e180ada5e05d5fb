"""Benchmark of the policy layer: DNC load time and memory, lookups, decision latency.

Measures, on this machine:
- loading N synthetic DNC numbers (default 10 million) from a temp file:
  wall time, RSS growth and peak RSS, bytes held by the sorted array;
- DNC lookup latency p50/p99 (hits and misses);
- full pipeline decision latency p50/p99 with that DNC list, 100k consent
  records (require-consent) and 200 cards: the sticky path (agent keeps its
  last card) and the full-scan path (no bound or last card: all 200 cards
  evaluated), plus context building (normalization) separately.

Latencies are reported as wall time and as the thread's CPU time (the
latter is immune to other processes preempting the benchmark on a busy
machine). Run: `.venv/bin/python bench/bench_policies.py [--dnc 10000000]`. It writes
only a temp file (deleted afterwards), never reads a clock for decisions
(the simulated time is advanced explicitly) and opens no sockets.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from policies.agent import AgentLimits
from policies.allowlist import DestinationPolicy
from policies.consent import ConsentMode, ConsentRecord, ConsentRegistry
from policies.context import build_context
from policies.dnc import DncRegistry
from policies.emergency import EmergencyNumbers
from policies.hours import CallingHours
from policies.memory import CardRecord, InMemoryAgents, InMemoryCardStore, InMemoryHistory
from policies.pipeline import PolicyDeps, build_pipeline
from policies.quotas import CallOutcome, QuotaProfile
from tests.policies.helpers import utc


def rss_kb(field: str = "VmRSS") -> int:
    """A memory field of /proc/self/status in kB (VmRSS current, VmHWM peak)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def percentiles(samples_ns: list[int]) -> tuple[float, float, float]:
    """p50, p99 and max in microseconds."""
    ordered = sorted(samples_ns)
    p50 = ordered[len(ordered) // 2] / 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1000
    return p50, p99, ordered[-1] / 1000


MOBILE_PREFIXES = (
    130,
    131,
    132,
    133,
    135,
    136,
    137,
    138,
    139,
    150,
    151,
    152,
    158,
    159,
    186,
    187,
    188,
    189,
)


def mobile(rng: random.Random) -> int:
    """A random CN mobile number (11 digits, real mobile prefixes)."""
    return rng.choice(MOBILE_PREFIXES) * 100_000_000 + rng.randrange(100_000_000)


def write_numbers(path: Path, count: int, rng: random.Random) -> None:
    """`count` lines: mostly E.164 CN mobiles, 0.1% national format, 0.01% junk."""
    with open(path, "w", encoding="ascii") as fh:
        batch: list[str] = []
        for i in range(count):
            n = mobile(rng)
            if i % 10_000 == 7:
                batch.append("not-a-number\n")
            elif i % 1000 == 3:
                batch.append(f"{n}\n")
            else:
                batch.append(f"+86{n}\n")
            if len(batch) >= 100_000:
                fh.write("".join(batch))
                batch.clear()
        fh.write("".join(batch))


def timed(fn: Callable[[], object], repeat: int) -> list[int]:
    """Per-call durations in ns."""
    out: list[int] = []
    clock = time.perf_counter_ns
    for _ in range(repeat):
        t0 = clock()
        fn()
        out.append(clock() - t0)
    return out


def main() -> None:
    """Run the benchmark and print the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dnc", type=int, default=10_000_000)
    parser.add_argument("--consent", type=int, default=100_000)
    parser.add_argument("--cards", type=int, default=200)
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument(
        "--step", type=float, default=0.5, help="simulated seconds between attempts (50 agents)"
    )
    args = parser.parse_args()
    rng = random.Random(42)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dnc.txt"
        t0 = time.perf_counter()
        write_numbers(path, args.dnc, rng)
        print(
            f"wrote {args.dnc:,} lines ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f}s"
        )
        gc.collect()
        rss_before = rss_kb()
        registry = DncRegistry("CN")
        t0 = time.perf_counter()
        c0 = time.process_time()
        report = registry.load(path, "national")
        load_s = time.perf_counter() - t0
        load_cpu = time.process_time() - c0
        rss_after = rss_kb()
        peak = rss_kb("VmHWM")
    sizes = registry.list_sizes()
    nbytes = registry._lists["national"].nbytes
    print(
        f"DNC load: {load_s:.1f}s wall ({load_cpu:.1f}s CPU) for {args.dnc:,} lines; kept {sizes['national']:,} "
        f"(dups {report.duplicates:,}, bad {report.bad_lines:,}, first bad line {report.errors[0].line if report.errors else '-'})"
    )
    print(
        f"DNC memory: array {nbytes / 1e6:.0f} MB; RSS +{(rss_after - rss_before) / 1024:.0f} MB "
        f"(before {rss_before / 1024:.0f} MB, after {rss_after / 1024:.0f} MB, peak {peak / 1024:.0f} MB)"
    )

    probes = [f"+86{mobile(rng)}" for _ in range(100_000)]
    it = iter(probes)
    lookups = timed(lambda: registry.lookup(next(it)), len(probes))
    p50, p99, mx = percentiles(lookups)
    print(f"DNC lookup: p50 {p50:.2f} µs, p99 {p99:.2f} µs, max {mx:.0f} µs")

    now = utc(2026, 6, 1, 2, 0)  # 10:00 in Shanghai
    t_now = now.timestamp()
    consent = ConsentRegistry()
    callees: list[str] = []
    while len(callees) < args.consent:
        number = f"+86{mobile(rng)}"
        if registry.lookup(number) is None:
            callees.append(number)
            consent.grant(ConsentRecord(number, None, utc(2026, 1, 1), utc(2027, 1, 1), "web", "f"))
    cards = InMemoryCardStore()
    profile = QuotaProfile(
        calls_per_minute=5,
        calls_per_hour=60,
        calls_per_day=300,
        concurrent=1,
        min_gap_seconds=5,
        talk_minutes_per_day=240,
        distinct_callees_per_day=250,
        answer_rate_floor=0.1,
        short_call_ceiling=0.6,
        consecutive_failures=5,
        night_window="21:00-08:00",
    )
    for i in range(args.cards):
        record = CardRecord(f"c{i:03d}", profile, timezone="Asia/Shanghai", priority=i % 5)
        # Some history on every card so evaluations do real work.
        for k in range(30):
            start = t_now - 7200 + k * 200 + i
            record.starts.append(start)
            record.outcomes.append(CallOutcome(start, k % 3 == 0, 45.0 if k % 3 == 0 else 0.0))
        cards.add_card(record)
    deps = PolicyDeps(
        emergency=EmergencyNumbers.for_regions(["CN"]),
        destination=DestinationPolicy(),
        dnc=registry,
        consent=consent,
        consent_mode=ConsentMode.REQUIRE_CONSENT,
        hours=CallingHours(),
        history=InMemoryHistory(),
        agents=InMemoryAgents(),
        agent_limits=AgentLimits(calls_per_hour=500, complaint_rate_ceiling=0.05),
        cards=cards,
    )
    pipeline = build_pipeline(deps)
    history = deps.history
    assert isinstance(history, InMemoryHistory)

    def run(label: str, sticky: bool) -> None:
        nonlocal t_now
        last: dict[str, str | None] = {}
        build_ns: list[int] = []
        decide_ns: list[int] = []
        decide_cpu_ns: list[int] = []
        cpu = time.thread_time_ns
        kept_cpu_ns: list[int] = []
        other_cpu_ns: list[int] = []
        outcomes: dict[str, int] = {}
        clock = time.perf_counter_ns
        for i in range(args.decisions):
            t_now += args.step  # simulated time between attempts (50 agents)
            agent = f"agent{i % 50}"
            callee = callees[rng.randrange(len(callees))]
            moment = utc(2026, 1, 1).fromtimestamp(t_now, now.tzinfo)
            a = clock()
            ctx = build_context(
                callee,
                agent=agent,
                campaign="bench",
                default_region="CN",
                now=moment,
                emergency=deps.emergency,
                last_card=last.get(agent) if sticky else None,
            )
            b = clock()
            b_cpu = cpu()
            decision = pipeline.decide(ctx)
            c_cpu = cpu()
            c = clock()
            decide_cpu_ns.append(c_cpu - b_cpu)
            kept = decision.card_id is not None and decision.card_id == ctx.last_card
            (kept_cpu_ns if kept else other_cpu_ns).append(c_cpu - b_cpu)
            build_ns.append(b - a)
            decide_ns.append(c - b)
            key = "allow" if decision.allowed else str(decision.reason)
            outcomes[key] = outcomes.get(key, 0) + 1
            if decision.allowed and decision.card_id is not None:
                last[agent] = decision.card_id
                history.record_attempt(ctx.destination, t_now)
                answered = rng.random() < 0.4
                cards.finish(
                    decision.card_id, CallOutcome(t_now, answered, 60.0 if answered else 0.0)
                )
        bp50, bp99, _ = percentiles(build_ns)
        dp50, dp99, dmx = percentiles(decide_ns)
        cp50, cp99, cmx = percentiles(decide_cpu_ns)
        print(
            f"{label}: decide wall p50 {dp50:.0f} µs, p99 {dp99:.0f} µs, max {dmx:.0f} µs; "
            f"CPU p50 {cp50:.0f} µs, p99 {cp99:.0f} µs, max {cmx:.0f} µs; "
            f"build_context p50 {bp50:.0f} µs, p99 {bp99:.0f} µs; outcomes {outcomes}"
        )
        for name, samples in (("stayed on last card", kept_cpu_ns), ("other", other_cpu_ns)):
            if samples:
                p50, p99, _ = percentiles(samples)
                print(f"  {name}: {len(samples)} decisions, CPU p50 {p50:.0f} µs, p99 {p99:.0f} µs")

    gc.collect()
    gc.freeze()
    run(f"pipeline sticky ({args.cards} cards)", sticky=True)
    run(f"pipeline full-scan ({args.cards} cards)", sticky=False)


if __name__ == "__main__":
    main()

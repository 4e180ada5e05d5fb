"""Every benchmark of dialgate in one run, with one summary at the end (``make bench``).

Runs, each as a subprocess with its output shown as it comes:

1. ``bench/bench_sip.py`` — SIP parse and parse+serialize µs per INVITE and
   200 OK, with the ratio to sipmessage's parse (when installed);
1b. ``bench/callflow_cpu.py`` — the gateway's CPU per call in one process (every
   policy on, memory transports, scripted SIPp-like peers), and whether the SIP core
   ran compiled (mypyc) or as pure Python;
2. ``bench/bench_policies.py`` — DNC load time and RSS, DNC lookups, policy
   decisions and card selection (sticky card / switching over every card)
   p50/p99 (``--quick``: 1M DNC numbers, 10k consent records, 100 cards, 5k
   decisions instead of 10M/100k/200/20k — the summary says which);
3. ``bench/micro_callpath.py`` — digest challenge/verify and decisions over
   the real SQLite store;
3b. ``bench/leads.py`` — lead scrubbing: 100,000 numbers judged (numbers/s,
   in-process and through ``dialgate leads check``);
4. ``bench/e2e.py ceiling`` — SIPp → SIPp, the test bed's own ceiling;
5. ``bench/e2e.py e2e`` — SIPp → dialgate → SIPp (8 agents on 8 cards),
   ramped until calls fail, each rate beside a direct SIPp → SIPp step
   (INVITE→200 ratio), with the gateway's CPU%, CPU ms per call, RSS and the
   post-dial delay it added, timed on the wire (``--pdd``, ``bench/pdd.py``: needs
   root or CAP_NET_RAW, left out with a note otherwise);
6. ``bench/memory_soak.py`` — calls to distinct numbers through the gateway
   in one process: the soak curve (calls vs RSS) and the RSS growth per call
   at steady state, after the warm-up (target < 1 kB; ``--quick``: 8,000
   calls instead of 30,000);
7. ``bench/inflight_memory.py`` — memory per 1,000 calls in flight: talking, just
   ended (held in Timers J/K/L/M) and after the timers;
8. ``bench/e2e.py e2e --workers 2`` — the same ramp through ``dialgate run --workers 2``
   on one SIP port, 16 agents (each one SIPp socket, spread over the workers by the
   kernel's hash, as phones are).

Steps 4, 5 and 8 need SIPp (Debian sip-tester); a missing SIPp skips them with a
note. ``--quick`` (or ``DIALGATE_BENCH_QUICK=1``) shortens every step and
bounds the whole run by ``--budget`` seconds (default 300 in quick mode): a
step that would run past it is stopped and reported as cut short (the first
run also builds the 1M-number database cache once, outside that budget's
intent: about 20 s). ``--only NAME,...`` picks steps (sip, policies, micro,
leads, soak, ceiling, e2e, cpu, inflight, workers). Results are also written as JSON to ``--out`` (default
``var/bench``). Run:

    .venv/bin/python bench/run_all.py --quick

Speed is measured here, never asserted: the exit status is 0 unless a
benchmark itself crashed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PY = sys.executable
STEPS = (
    "sip",
    "cpu",
    "policies",
    "micro",
    "leads",
    "soak",
    "inflight",
    "ceiling",
    "e2e",
    "workers",
)


def run(name: str, cmd: list[str], log: Path, timeout: float) -> tuple[int, str, float]:
    """Run one benchmark, echo and keep its output; return (exit code, output, seconds).

    A watchdog stops it (SIGTERM by PID, then SIGKILL) after ``timeout`` seconds
    even when it prints nothing; the exit code is then -1.
    """
    print(f"\n=== {name} (at most {timeout:.0f}s): {' '.join(cmd)}", flush=True)
    started = time.monotonic()
    lines: list[str] = []
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    expired = threading.Event()

    def watchdog() -> None:
        if proc.poll() is None:
            expired.set()
            proc.terminate()

    timer = threading.Timer(max(timeout, 1.0), watchdog)
    timer.daemon = True
    timer.start()
    try:
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line)
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if expired.is_set():
        lines.append(f"[{name}: cut short after {timeout:.0f}s]\n")
        print(lines[-1], end="", flush=True)
        return -1, "".join(lines), time.monotonic() - started
    output = "".join(lines)
    log.write_text(output)
    return proc.returncode or 0, output, time.monotonic() - started


def grab(pattern: str, text: str) -> str | None:
    """The first group of ``pattern`` in ``text``, or None."""
    found = re.search(pattern, text, re.MULTILINE)
    return found.group(1) if found else None


def summary_lines(results: dict[str, dict[str, Any]]) -> list[str]:
    """The closing summary, one line per finding."""
    out: list[str] = []
    sip = results.get("sip", {}).get("output", "")
    if sip:
        for label, head in (("INVITE", "INVITE"), ("200 OK", "200 OK")):
            found = re.search(
                rf"^{head}\s+\d+\s+\d+\s+([\d.]+)\s+[\d.]+\s+[\d.]+\s+([\d.]+)\s+[\d.]+"
                r"(?:\s+([\d.]+)\s+([\d.]+)x)?",
                sip,
                re.MULTILINE,
            )
            if found is None:
                continue
            text = f"SIP {label}: parse {found.group(1)} µs, parse+serialize {found.group(2)} µs"
            if found.group(4):
                text += f"; sipmessage parse {found.group(3)} µs (ratio {found.group(4)}x)"
            out.append(text)
    cpu = results.get("cpu", {}).get("output", "")
    per_call = grab(r"^gateway CPU per call: ([\d.]+ ms)", cpu)
    if per_call:
        core = grab(r"^SIP core: (.*)$", cpu)
        out.append(
            f"gateway CPU per call (one process, every policy on): {per_call}"
            + (f"; SIP core {core}" if core else "")
        )
    pol = results.get("policies", {}).get("output", "")
    if pol:
        size = grab(r"for ([\d,]+) lines", pol)
        load = grab(r"^DNC load: ([^;]*)", pol)
        memory = grab(r"^DNC memory: [^;]*; (RSS \+\d+ MB)", pol)
        lookup = grab(r"^DNC lookup: (.*)$", pol)
        sticky = grab(r"^pipeline sticky[^:]*: decide wall (p50 [^,]*, p99 [^,]*)", pol)
        scan = grab(r"^pipeline full-scan[^:]*: decide wall (p50 [^,]*, p99 [^,]*)", pol)
        cards = grab(r"^pipeline sticky \((\d+) cards\)", pol)
        out.append(f"DNC load ({size} numbers): {load}, {memory}; lookup {lookup}")
        out.append(
            f"policy decision incl. card selection ({size} DNC, {cards} cards, in-memory):"
            f" sticky card {sticky}; switching over every card {scan}"
        )
    micro = results.get("micro", {}).get("output", "")
    if micro:
        for label in ("digest 407 challenge", "digest MD5 verify"):
            out.append(f"{label}: {grab(re.escape(label) + r'[^:]*: (.*)$', micro)}")
        for found in re.finditer(r"^decision, (\d+) agent[^:]*: (.*)$", micro, re.MULTILINE):
            out.append(f"decision over SQLite, {found.group(1)} agent(s): {found.group(2)}")
    leads = results.get("leads", {}).get("output", "")
    for label in ("in-process", "CLI"):
        found = grab(rf"^leads {label}: (.*)$", leads)
        if found:
            out.append(f"leads checked ({label}): {found}")
    for mode in ("ceiling", "e2e", "workers"):
        data = results.get(mode, {}).get("json")
        if not data:
            continue
        rows = data.get("rows", [])
        kinds = {"ceiling": ("direct",), "e2e": ("e2e", "e2e+uvloop"), "workers": ("e2e",)}[mode]
        clean = [
            r
            for r in rows
            if r["mode"] in kinds and r["failed"] == 0 and r["unfinished"] == 0 and r["ok"] > 0
        ]
        failing = [r for r in rows if r["mode"] in kinds and (r["failed"] or r["unfinished"])]
        # Sustained: no failed call and SIPp placed at least 90% of the offered rate
        # (a saturated gateway can lose no call yet fall far behind the offered rate).
        sustained = [r for r in clean if r["measured_cps"] >= 0.9 * r["offered_cps"]]
        best = max(sustained or clean, key=lambda r: r["offered_cps"]) if clean else None
        smooth = [r for r in clean if r["retransmissions"] == 0]
        best_smooth = max(smooth, key=lambda r: r["offered_cps"]) if smooth else None
        if best is None:
            out.append(f"{mode}: no step without failures")
            continue
        label = {"e2e": "e2e, one process", "workers": "e2e, --workers 2"}.get(mode, mode)
        text = (
            f"{label}: highest rate with zero failed calls"
            f"{' sustained (≥ 90% placed)' if sustained else ''} {best['offered_cps']:g} CPS "
            f"({best['ok']} calls, {best['measured_cps']:g} CPS placed), INVITE→200 p50 "
            f"{best['rt_p50_ms']} ms, p99 {best['rt_p99_ms']} ms"
        )
        top = max(clean, key=lambda r: r["offered_cps"])
        if top is not best:
            text += (
                f"; zero failed up to {top['offered_cps']:g} CPS offered but only "
                f"{top['measured_cps']:g} placed"
            )
        gw = best.get("gateway")
        if gw:
            direct = [
                r for r in rows if r["mode"] == "direct" and r["offered_cps"] == best["offered_cps"]
            ]
            if direct:
                d = direct[0]
                # SIPp times in whole milliseconds: a direct mean below 1 ms is "< 1 ms".
                floor = max(d["rt_mean_ms"] or 0.0, 1.0)
                text += (
                    f" (direct SIPp→SIPp p50 {d['rt_p50_ms']} ms, mean {d['rt_mean_ms']} ms;"
                    f" mean ratio ≥ {(best['rt_mean_ms'] or 0.0) / floor:.0f}x)"
                )
            text += (
                f"; gateway CPU {gw['cpu_pct']}% ({gw.get('cpu_ms_per_call')} ms per call,"
                f" busiest loop {gw.get('loop_pct')}%),"
                f" RSS {gw['rss_mb']} MB"
            )
            added = (gw.get("pdd") or {}).get("added") or {}
            if added.get("p99_ms") is not None:
                text += (
                    f"; post-dial delay the gateway added, on the wire: p50 {added['p50_ms']:.1f}"
                    f" ms, p99 {added['p99_ms']:.1f} ms"
                )
        if gw and gw.get("gc"):
            pauses = [
                (gw["gc"].get(gen) or {}).get("max_ms")
                for gen in ("gen0", "gen1", "gen2")
                if (gw["gc"].get(gen) or {}).get("max_ms") is not None
            ]
            if pauses:
                text += f", worst GC pause {max(pauses):g} ms"
        if best_smooth is not None and best_smooth is not best:
            text += f"; highest without SIPp retransmissions {best_smooth['offered_cps']:g} CPS"
        if failing:
            f = min(failing, key=lambda r: r["offered_cps"])
            text += f"; first failures at {f['offered_cps']:g} CPS ({f['failed']} failed)"
        elif best is max((r for r in rows if r["mode"] in kinds), key=lambda r: r["offered_cps"]):
            # Every rate tried was clean: the ceiling is above the last step, not at it.
            text += "; no failures at any rate tried (the ceiling is higher)"
        out.append(text)
    soak = results.get("soak", {}).get("output", "")
    if soak:
        steady = re.search(
            r"^steady-state growth per call \(calls (\d+)→(\d+)\): RSS (-?\d+) B/call", soak, re.M
        )
        if steady:
            out.append(
                f"memory soak (distinct callees): RSS growth {steady.group(3)} B/call at steady "
                f"state (calls {steady.group(1)}→{steady.group(2)}; target < 1024)"
            )
    inflight = results.get("inflight", {}).get("output", "")
    figures = re.findall(r"^in flight (.*?): RSS ([\d.]+) MB per 1,000 calls", inflight, re.M)
    if figures:
        out.append(
            "memory per 1,000 calls in flight (RSS): "
            + ", ".join(f"{label} +{mb} MB" for label, mb in figures)
        )
    for name, res in results.items():
        if res.get("skipped"):
            out.append(f"{name}: skipped ({res['skipped']})")
        elif res.get("code"):
            out.append(f"{name}: exited {res['code']}")
    return out


def main() -> int:
    """Run the chosen benchmarks and print the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        default=os.environ.get("DIALGATE_BENCH_QUICK", "") not in ("", "0"),
    )
    parser.add_argument("--only", default=",".join(STEPS))
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "bench")
    parser.add_argument(
        "--budget",
        type=float,
        help="stop every step past this many seconds in all (default: 300 with --quick)",
    )
    args = parser.parse_args()
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    have_sipp = shutil.which("sipp") is not None
    plan: dict[str, tuple[list[str], float]] = {
        "sip": (
            [PY, str(BENCH / "bench_sip.py")]
            + (["--number", "5000", "--repeat", "3"] if quick else []),
            600,
        ),
        "policies": (
            [PY, str(BENCH / "bench_policies.py")]
            + (
                ["--dnc", "1000000", "--consent", "10000", "--cards", "100", "--decisions", "5000"]
                if quick
                else []
            ),
            1800,
        ),
        "micro": (
            [PY, str(BENCH / "micro_callpath.py")]
            + (["--digest", "1000", "--decisions", "1000"] if quick else []),
            900,
        ),
        "leads": (
            [PY, str(BENCH / "leads.py"), "--numbers", "100000"],
            600,
        ),
        "ceiling": (
            [PY, str(BENCH / "e2e.py"), "ceiling", "--json", str(args.out / "ceiling.json")]
            + (["--rates", "1000,2000,4000", "--seconds", "2"] if quick else []),
            900,
        ),
        "e2e": (
            [
                PY,
                str(BENCH / "e2e.py"),
                "e2e",
                "--callers",
                "8",
                "--pdd",
                "--json",
                str(args.out / "e2e.json"),
            ]
            + (
                ["--rates", "100,200,300,400,500,600", "--seconds", "4"]
                if quick
                else ["--rates", "100,200,300,400,500,600,800,1000", "--seconds", "10"]
            ),
            2400,
        ),
        "cpu": (
            [
                PY,
                str(BENCH / "callflow_cpu.py"),
                "--gc",
                "run",
                "--calls",
                "1000" if quick else "3000",
            ],
            600,
        ),
        "inflight": (
            [PY, str(BENCH / "inflight_memory.py"), "--calls", "1000" if quick else "3000"],
            600,
        ),
        "workers": (
            [
                PY,
                str(BENCH / "e2e.py"),
                "e2e",
                "--workers",
                "2",
                "--callers",
                "16",
                "--no-direct",
                "--pdd",
                "--json",
                str(args.out / "workers.json"),
            ]
            + (
                ["--rates", "200,400,600,800", "--seconds", "4"]
                if quick
                else ["--rates", "400,600,800,1000,1200", "--seconds", "10"]
            ),
            2400,
        ),
        "soak": (
            [PY, str(BENCH / "memory_soak.py")]
            + (
                ["--calls", "8000", "--every", "2000", "--warmup", "4000"]
                if quick
                else ["--calls", "30000", "--every", "3000"]
            ),
            900,
        ),
    }
    budget = args.budget if args.budget is not None else (300.0 if quick else None)
    results: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for name in chosen:
        if name not in plan:
            print(f"unknown step {name!r} (known: {', '.join(STEPS)})")
            return 2
        if name in ("ceiling", "e2e", "workers") and not have_sipp:
            results[name] = {"skipped": "sipp not installed (Debian package sip-tester)"}
            continue
        cmd, timeout = plan[name]
        if budget is not None:
            left = budget - (time.monotonic() - started)
            if left < 5:
                results[name] = {"skipped": f"time budget of {budget:.0f}s spent"}
                continue
            timeout = min(timeout, left)
        code, output, seconds = run(name, cmd, args.out / f"{name}.log", timeout)
        results[name] = {"code": code, "output": output, "seconds": round(seconds, 1)}
        json_path = args.out / f"{name}.json"
        if name in ("ceiling", "e2e", "workers") and json_path.exists():
            results[name]["json"] = json.loads(json_path.read_text())
    lines = summary_lines(results)
    if quick:
        lines.insert(
            0,
            "quick mode: 1M DNC numbers and 100 cards instead of 10M/200, 5k decisions, "
            "4 s e2e steps, an 8,000-call memory soak (run without --quick for the full figures)",
        )
    print(f"\n=== summary ({time.monotonic() - started:.0f}s", end="")
    print(f", load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())})")
    for line in lines:
        print(f"  {line}")
    (args.out / "summary.txt").write_text("\n".join(lines) + "\n")
    return 1 if any(r.get("code") for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Calls per second through the whole gateway, side by side with the testbed ceiling.

Two modes, both SIPp on loopback, every step bounded in calls and wall time:

``ceiling``
    SIPp UAC (``bench/sipp/uac.xml``) → SIPp UAS (``bench/sipp/carrier.xml``)
    directly: INVITE/100/180/200/ACK, ``--pause-ms`` of talk, BYE/200. The
    offered rate is ramped (``--rates``); each step places
    ``min(--seconds × rate, --max-calls)`` calls. This is what the test bed
    itself can do on this machine (the SIPp processes share its cores).

``e2e``
    A SIPp caller (``bench/sipp/agent.xml``: digest 407 → authenticated INVITE)
    → ``dialgate run`` (a subprocess, through ``bench/gateway_runner.py`` for GC
    timing) → the same SIPp carrier UAS. The gateway runs with every policy on
    and realistic data: ``--dnc`` numbers imported with ``dialgate dnc import``,
    ``--consent`` records with ``dialgate consent import`` (require-consent mode),
    ``--cards`` cards each bound to one of as many agents, quotas far above the
    load, calling hours 00:00-24:00, carrier OPTIONS health pings on. The caller
    is ``--caller agent`` (agent000, REGISTERed first by
    ``bench/sipp/register.xml``, bound to card c000) or ``--caller dialer`` (the
    dialer peer: no bound card, so card selection looks at every card). SIPp
    3.6.1 cannot put ``[fieldN]`` inside ``[authentication]``, so one SIPp
    process authenticates as one identity (``-au``/``-ap``); ``--callers N``
    runs N SIPp callers side by side (agent000..N-1, each bound to its own
    card, the rate split between them) to spread the calls over cards the way
    a floor of agents does. The populated
    database is built once into ``--cache`` and copied for every step, so each
    step starts from the same state (no frequency-cap or history carry-over).
    At each rate a direct SIPp→SIPp step runs first (same machine, same
    minute) so the INVITE→200 times can be compared. The ramp stops after the
    first step with a failed or unfinished call (``--keep-going`` to go on).

``--workers N`` runs ``dialgate run --workers N`` on the same one SIP port (the
gateway's CPU% and RSS are then the workers' sum). Each SIPp caller is one UDP
socket, which the kernel hashes to one worker: use several ``--callers`` (or
``--sipp-transport un``, a socket per call) so the calls spread.

Per step it reports: calls OK/failed (of which "503": turned away by the gateway's
overload control)/unfinished, SIPp retransmissions, SIPp's
response times (rtd 1: INVITE→200, from ``-trace_rtt``, millisecond
resolution), the gateway's CPU% and RSS (from /proc), its busiest event loop's CPU%
(``loop%``: the main thread alone, which one process cannot spread over cores; near
100 the process takes no more), GC pauses (gc.callbacks
in the runner), the load average, and the SIPp processes' own CPU%. With ``--pdd``
also the post-dial delay the gateway itself added, timed on the wire
(``bench/pdd.py``: a capture on lo, root or CAP_NET_RAW): the 407, forwarding the
authenticated INVITE, relaying the carrier's 200, p50/p99 per step and by quarter of it.

Run (SIPp is Debian's sip-tester)::

    .venv/bin/python bench/e2e.py ceiling --rates 100,250,500,1000,1500,2000
    .venv/bin/python bench/e2e.py e2e --rates 50,100,150,200,300 --seconds 10
    .venv/bin/python bench/e2e.py e2e --workers 2 --callers 8 --rates 500,1000 --seconds 10

``--json FILE`` writes every step as JSON. Only 127.0.0.1 is used; every
process started is stopped by its PID. This script asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import csv
import json
import os
import platform
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from simulator.testkit import find_sipp, free_udp_port, sipp_command, start_sipp, stop_pid

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
SIPP_DIR = ROOT / "bench" / "sipp"
RUNNER = ROOT / "bench" / "gateway_runner.py"
PYTHON = sys.executable
HOST = "127.0.0.1"
CARRIER_TCP_HOST = "127.0.0.2"
"""The SIPp carrier's address on TCP: a carrier on a stream is known by its IP alone (its
source port is ephemeral), so it cannot share the agents' 127.0.0.1."""
CLK_TCK = os.sysconf("SC_CLK_TCK")

# CN mobile prefixes for the DNC list; consent numbers use 199, never on the list.
DNC_PREFIXES = (130, 131, 132, 133, 135, 136, 137, 138, 139, 150, 151, 152, 158, 159, 186, 187)
CONSENT_PREFIX = 199


# --- machine and processes -----------------------------------------------------------


def machine() -> dict[str, Any]:
    """Cores, CPU model, Python and SIPp versions."""
    model = platform.processor() or "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    sipp = shutil.which("sipp")
    version = "?"
    if sipp is not None:
        out = subprocess.run([sipp, "-v"], capture_output=True, text=True, check=False)
        for line in (out.stdout + out.stderr).splitlines():
            if "SIPp v" in line:
                version = line.strip().split(" ")[1].rstrip("-")
                break
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "sipp": version,
        "kernel": platform.release(),
    }


def loadavg() -> str:
    """The 1/5/15-minute load average as text."""
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def sipp_binary() -> str:
    """Path of ``sipp``; exits with a message when missing."""
    path = find_sipp()
    if path is None:
        sys.exit("sipp not found (Debian package sip-tester)")
    return path


@dataclass
class ProcSample:
    """CPU seconds and memory of one process at one moment (from /proc)."""

    wall: float
    cpu: float
    rss_kb: int
    hwm_kb: int
    #: CPU seconds of the main thread alone, the event loop's: what one process can
    #: not spread over cores (the rest is SQLite's checkpoints, the store's probe …).
    loop: float = 0.0


def _cpu_seconds(path: str) -> float:
    with open(path, encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def sample(pid: int) -> ProcSample | None:
    """utime+stime, that of its main thread, and VmRSS/VmHWM of ``pid``, or None if it
    is gone."""
    try:
        cpu = _cpu_seconds(f"/proc/{pid}/stat")
        loop = _cpu_seconds(f"/proc/{pid}/task/{pid}/stat")
        rss = hwm = 0
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return ProcSample(time.monotonic(), cpu, rss, hwm, loop)


def combined(samples: list[ProcSample | None]) -> ProcSample | None:
    """Several processes (the workers of ``dialgate run --workers N``) as one: CPU
    seconds and memory summed; None when any is missing."""
    if not samples or any(s is None for s in samples):
        return None
    present = [s for s in samples if s is not None]
    return ProcSample(
        wall=max(s.wall for s in present),
        cpu=sum(s.cpu for s in present),
        rss_kb=sum(s.rss_kb for s in present),
        hwm_kb=sum(s.hwm_kb for s in present),
        loop=sum(s.loop for s in present),
    )


def worker_pids(log_path: Path, count: int, timeout: float = 30.0) -> list[int]:
    """The PIDs of a ``dialgate run --workers count`` set, once every worker logged
    ``ready`` (JSON log lines of the supervisor and its workers in ``log_path``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, pids = 0, {}
        for line in log_path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") == "ready":
                ready += 1
            elif entry.get("event") == "worker.started":
                pids[int(entry["worker"])] = int(entry["pid"])
        if ready >= count and len(pids) == count:
            return [pids[i] for i in sorted(pids)]
        time.sleep(0.1)
    raise RuntimeError(f"{count} workers not ready within {timeout:g} s; see {log_path}")


def cpu_percent(a: ProcSample | None, b: ProcSample | None) -> float | None:
    """CPU% of one core between two samples."""
    if a is None or b is None or b.wall <= a.wall:
        return None
    return round(100.0 * (b.cpu - a.cpu) / (b.wall - a.wall), 1)


def loop_percent(pairs: list[tuple[ProcSample | None, ProcSample | None]]) -> float | None:
    """CPU% of the busiest event loop (main thread) among processes' sample pairs: one
    loop runs on one core at a time, so near 100 % that process can take no more."""
    shares = [
        100.0 * (b.loop - a.loop) / (b.wall - a.wall)
        for a, b in pairs
        if a is not None and b is not None and b.wall > a.wall
    ]
    return round(max(shares), 1) if shares else None


# --- SIPp ----------------------------------------------------------------------------


@dataclass
class SippResult:
    """What one SIPp caller run reported."""

    offered_cps: float
    calls: int
    ok: int = 0
    failed: int = 0
    #: Of the failed: turned away with 503 by the gateway's overload control.
    refused: int = 0
    unfinished: int = 0
    retransmissions: int = 0
    dead_msgs: int = 0
    wall_s: float = 0.0
    measured_cps: float = 0.0
    rt_p50_ms: float | None = None
    rt_p99_ms: float | None = None
    rt_mean_ms: float | None = None
    rt_max_ms: float | None = None
    challenge_p50_ms: float | None = None
    challenge_p99_ms: float | None = None
    uac_cpu_pct: float | None = None
    uas_cpu_pct: float | None = None
    load: str = ""
    errors: list[str] = field(default_factory=list)


def refused_calls(workdir: Path) -> int:
    """503s the caller received (``agent.xml``'s two 503 branches: one per refused call),
    from the last row of SIPp's ``-trace_counts`` CSV (:func:`last_stats`); 0 without one."""
    return sum(
        int(value)
        for path in workdir.glob("*_counts.csv")
        for name, value in last_stats(path).items()
        if name.endswith("_503_Recv") and value.isdigit()
    )


def last_stats(path: Path) -> dict[str, str]:
    """The last row of a SIPp ``-trace_stat`` (or ``-trace_counts``) CSV as a dict (empty if
    absent)."""
    if not path.exists():
        return {}
    rows = [r for r in path.read_text(errors="replace").splitlines() if r.strip()]
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0].split(";"), rows[-1].split(";"), strict=False))


def rtt_values(workdir: Path) -> dict[int, list[int]]:
    """Per-call response times (ms) by rtd number, from every ``*_rtt.csv`` in workdir."""
    out: dict[int, list[int]] = {}
    for path in workdir.glob("*_rtt.csv"):
        with open(path, newline="", errors="replace") as fh:
            reader = csv.reader(fh, delimiter=";")
            next(reader, None)
            for row in reader:
                if len(row) >= 3 and row[1].strip().isdigit():
                    out.setdefault(int(row[2]), []).append(int(row[1]))
    return out


def pct(values: list[int], q: float) -> float | None:
    """The q-quantile (nearest rank) of values."""
    if not values:
        return None
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(len(ordered) * q))])


def start_carrier(
    sipp: str, port: int, workdir: Path, wall_cap: float, *, tcp: bool = False
) -> subprocess.Popen[bytes]:
    """The SIPp carrier UAS on ``port`` (``tcp``: on TCP at :data:`CARRIER_TCP_HOST`);
    stopped by PID by the caller."""
    cmd = sipp_command(
        SIPP_DIR / "carrier.xml",
        port=port,
        timeout=wall_cap,
        trace=False,
        binary=sipp,
        extra=[
            "-trace_stat",
            "-stf",
            str(workdir / "stat.csv"),
            "-fd",
            "1",
            "-trace_err",
            "-error_file",
            str(workdir / "errors.log"),
            *(["-t", "t1", "-i", CARRIER_TCP_HOST] if tcp else []),
        ],
    )
    return start_sipp(cmd, workdir)


def run_caller(
    sipp: str,
    scenario: str,
    target: tuple[str, int],
    inf: Path,
    calls: int,
    rate: float,
    pause_ms: int,
    workdir: Path,
    *,
    watch: list[int] | None = None,
    on_start: Any = None,
    extra: list[str] | None = None,
) -> tuple[SippResult, dict[int, tuple[ProcSample | None, ProcSample | None]]]:
    """Run one bounded SIPp caller step; return its result and /proc samples of ``watch`` PIDs.

    The step places ``calls`` calls at ``rate``; SIPp's own ``-timeout`` and a
    wall-clock cap here (calls/rate + 30 s) both stop it. A call waiting more
    than 8 s for any message fails (``-recv_timeout``).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    wall_cap = calls / rate + 30.0
    port = free_udp_port()
    cmd = [
        sipp,
        f"{target[0]}:{target[1]}",
        "-sf",
        str(SIPP_DIR / scenario),
        "-inf",
        str(inf),
        "-m",
        str(calls),
        "-r",
        f"{rate:g}",
        "-rp",
        "1000",
        "-d",
        str(pause_ms),
        "-l",
        str(max(100, int(rate * 20))),
        "-i",
        HOST,
        "-p",
        str(port),
        "-buff_size",
        "1048576",
        "-recv_timeout",
        "8000",
        "-timeout",
        f"{int(wall_cap)}s",
        "-timeout_error",
        "-default_behaviors",
        "all,-abortunexp",
        "-nostdin",
        "-trace_counts",
        "-trace_stat",
        "-stf",
        str(workdir / "stat.csv"),
        "-fd",
        "1",
        "-trace_rtt",
        "-rtt_freq",
        "1",
        "-trace_err",
        "-error_file",
        str(workdir / "errors.log"),
        *(extra or []),
    ]
    result = SippResult(offered_cps=rate, calls=calls)
    load_before = loadavg()
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    watch = list(watch or [])
    first = {pid: sample(pid) for pid in [*watch, proc.pid]}
    if on_start is not None:
        on_start()
    last: dict[int, ProcSample | None] = dict(first)
    try:
        while proc.poll() is None and time.monotonic() - started < wall_cap:
            time.sleep(0.2)
            for pid in last:
                s = sample(pid)
                if s is not None:
                    last[pid] = s
    finally:
        stop_pid(proc)
    result.wall_s = round(time.monotonic() - started, 2)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.stderr and proc.stderr.close()
    result.load = f"{load_before} → {loadavg()}"
    stats = last_stats(workdir / "stat.csv")
    # agent.xml ends a call answered 503 as SIPp's success (ACKed, no retransmissions):
    # it is a failed call here, counted apart as refused.
    result.refused = refused_calls(workdir)
    result.ok = int(stats.get("SuccessfulCall(C)", 0) or 0) - result.refused
    result.failed = int(stats.get("FailedCall(C)", 0) or 0) + result.refused
    result.unfinished = max(0, calls - result.ok - result.failed)
    result.retransmissions = int(stats.get("Retransmissions(C)", 0) or 0)
    result.dead_msgs = int(stats.get("DeadCallMsgs(C)", 0) or 0)
    with contextlib.suppress(ValueError):
        result.measured_cps = round(float(stats.get("CallRate(C)", 0) or 0), 1)
    rtts = rtt_values(workdir)
    main_rt = rtts.get(1, [])
    result.rt_p50_ms = pct(main_rt, 0.5)
    result.rt_p99_ms = pct(main_rt, 0.99)
    result.rt_max_ms = float(max(main_rt)) if main_rt else None
    result.rt_mean_ms = round(sum(main_rt) / len(main_rt), 2) if main_rt else None
    challenge = rtts.get(2, [])
    result.challenge_p50_ms = pct(challenge, 0.5)
    result.challenge_p99_ms = pct(challenge, 0.99)
    result.uac_cpu_pct = cpu_percent(first[proc.pid], last[proc.pid])
    if result.failed or result.unfinished:
        errors_log = workdir / "errors.log"
        lines = errors_log.read_text(errors="replace").splitlines() if errors_log.exists() else []
        result.errors = [ln[:200] for ln in lines if ln.strip()][:5] + [
            ln[:200] for ln in err.splitlines() if "rror" in ln
        ][:3]
    samples = {pid: (first[pid], last[pid]) for pid in watch}
    return result, samples


def merge_callers(
    results: list[SippResult], workdirs: list[Path], rate: float
) -> tuple[SippResult, None]:
    """One result for several SIPp callers run side by side (sums, pooled percentiles)."""
    if len(results) == 1:
        return results[0], None
    merged = SippResult(offered_cps=rate, calls=sum(r.calls for r in results))
    for r in results:
        merged.ok += r.ok
        merged.failed += r.failed
        merged.refused += r.refused
        merged.unfinished += r.unfinished
        merged.retransmissions += r.retransmissions
        merged.dead_msgs += r.dead_msgs
        merged.measured_cps += r.measured_cps
        merged.errors += r.errors
    merged.measured_cps = round(merged.measured_cps, 1)
    merged.wall_s = max(r.wall_s for r in results)
    merged.load = results[0].load
    merged.uac_cpu_pct = round(sum(r.uac_cpu_pct or 0.0 for r in results), 1)
    pooled: dict[int, list[int]] = {}
    for workdir in workdirs:
        for rtd, values in rtt_values(workdir).items():
            pooled.setdefault(rtd, []).extend(values)
    main_rt = pooled.get(1, [])
    merged.rt_p50_ms = pct(main_rt, 0.5)
    merged.rt_p99_ms = pct(main_rt, 0.99)
    merged.rt_max_ms = float(max(main_rt)) if main_rt else None
    merged.rt_mean_ms = round(sum(main_rt) / len(main_rt), 2) if main_rt else None
    merged.challenge_p50_ms = pct(pooled.get(2, []), 0.5)
    merged.challenge_p99_ms = pct(pooled.get(2, []), 0.99)
    return merged, None


def write_numbers_csv(path: Path, numbers: list[str], caller: str) -> None:
    """A SIPp -inf file: callee;caller per line (SEQUENTIAL)."""
    with open(path, "w", encoding="ascii") as fh:
        fh.write("SEQUENTIAL\n")
        fh.write("".join(f"{number};{caller};\n" for number in numbers))


# --- ceiling -------------------------------------------------------------------------


def step_calls(rate: float, seconds: float, max_calls: int) -> int:
    """Calls of one step: ``seconds`` of traffic at ``rate``, at most ``max_calls``."""
    return max(1, min(int(rate * seconds), max_calls))


def direct_step(
    sipp: str, rate: float, calls: int, pause_ms: int, workdir: Path, numbers: list[str]
) -> SippResult:
    """One SIPp UAC → SIPp UAS step."""
    carrier_port = free_udp_port()
    carrier = start_carrier(sipp, carrier_port, workdir / "carrier", calls / rate + 60)
    try:
        time.sleep(0.3)
        inf = workdir / "numbers.csv"
        write_numbers_csv(inf, numbers[:calls], "bench")
        result, samples = run_caller(
            sipp,
            "uac.xml",
            (HOST, carrier_port),
            inf,
            calls,
            rate,
            pause_ms,
            workdir / "uac",
            watch=[carrier.pid],
        )
        result.uas_cpu_pct = cpu_percent(*samples[carrier.pid])
    finally:
        stop_pid(carrier)
    return result


def consent_numbers(count: int) -> list[str]:
    """``count`` distinct E.164 numbers with the consent prefix (deterministic)."""
    rng = random.Random(7)
    picked = rng.sample(range(100_000_000), count)
    return [f"+86{CONSENT_PREFIX}{n:08d}" for n in picked]


def cmd_ceiling(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Ramp the direct SIPp → SIPp rate."""
    sipp = sipp_binary()
    rows: list[dict[str, Any]] = []
    numbers = consent_numbers(args.max_calls)
    base = Path(tempfile.mkdtemp(prefix="dialgate-ceiling-"))
    try:
        print_header("direct SIPp UAC → SIPp UAS")
        for rate in args.rates:
            calls = step_calls(rate, args.seconds, args.max_calls)
            result = direct_step(sipp, rate, calls, args.pause_ms, base / f"r{rate:g}", numbers)
            row = {"mode": "direct", **asdict(result)}
            rows.append(row)
            print_row(row)
    finally:
        if not args.keep_files:
            shutil.rmtree(base, ignore_errors=True)
    return rows


# --- end to end ----------------------------------------------------------------------


def night_window(tz: str) -> str:
    """A one-minute night window 12 hours away in the carrier's zone (checked, never hit)."""
    t = datetime.now(ZoneInfo(tz)) + timedelta(hours=12)
    u = t + timedelta(minutes=1)
    return f"{t:%H:%M}-{u:%H:%M}"


def pin_bench() -> None:
    """``--pin``: this process and the SIPp peers it starts on core 0, the gateway on the
    others (:data:`GATEWAY_CORES`), so the two do not take turns on one core."""
    os.sched_setaffinity(0, {0})


GATEWAY_CORES = set(range(1, os.cpu_count() or 2)) or {0}


CARRIER_TZ = "Asia/Shanghai"
"""The bench carrier's zone: its day is the cards' day (daily quotas, ``--day-calls``)."""


def gateway_toml(
    *,
    sip_port: int,
    carrier_port: int,
    db: Path,
    cards: int,
    log_level: str = "info",
    gc: str = "paced",
    overload_kb: int | None = None,
    tcp: bool = False,
    carrier_tcp: bool = False,
) -> str:
    """The gateway configuration: every policy on, quotas far above the offered load.
    ``gc``: ``[server] gc`` (paced: gateway/collector.py; auto: Python's triggers);
    ``overload_kb``: ``[sip] overload_queue_kb`` (None: the default); ``tcp``: a TCP
    listener on the SIP port number too; ``carrier_tcp``: the carrier is reached over
    TCP at :data:`CARRIER_TCP_HOST`."""
    tz = CARRIER_TZ
    lines = [
        "[server]",
        f'gc = "{gc}"',
        "",
        "[sip]",
        f'listen = ["udp:{HOST}:{sip_port}"' + (f', "tcp:{HOST}:{sip_port}"]' if tcp else "]"),
        'realm = "dialgate"',
        *([] if overload_kb is None else [f"overload_queue_kb = {overload_kb}"]),
        "",
        "[store]",
        f'path = "{db}"',
        "",
        "[policy]",
        'default_region = "CN"',
        'consent = "require-consent"',
        'calling_hours = "00:00-24:00"',
        "",
        "[logging]",
        f'level = "{log_level}"',
        "json = true",
        "",
        # One SIPp on HOST is the whole call center here: hundreds of calls/s from
        # one address are the load, not a flood (issue 15's flood control).
        "[security]",
        f'exempt = ["{HOST}/32"]',
        "",
        "[[peers]]",
        'name = "dialer-1"',
        f'addresses = ["{HOST}/32"]',
        'password = "dialer-secret"',
        'campaign = "bench"',
        "",
        "[[carriers]]",
        'name = "carrier-a"',
        (
            f'address = "tcp:{CARRIER_TCP_HOST}:{carrier_port}"'
            if carrier_tcp
            else f'address = "udp:{HOST}:{carrier_port}"'
        ),
        f'timezone = "{tz}"',
        "options_interval = 30",
        "  [[carriers.rules]]",
        "  status = 403",
        '  match = "(?i)suspend|blocked"',
        '  reason = "violation"',
        "  [[carriers.rules]]",
        "  status = 402",
        '  reason = "arrears"',
        "",
        "[quota_profiles.bench]",
        "calls_per_minute = 1000000",
        "calls_per_hour = 10000000",
        "calls_per_day = 100000000",
        "concurrent = 100000",
        "min_gap_seconds = 0",
        "talk_minutes_per_day = 1000000",
        "distinct_callees_per_day = 100000000",
        "answer_rate_floor = 0.05",
        # Every call here is short (SIPp hangs up at once): a ceiling of 1.0 keeps the
        # check running on every call without refusing any. (Below 1.0 the agents'
        # bound cards would stop them: an agent waits for its own card, no spill.)
        "short_call_ceiling = 1.0",
        "short_call_seconds = 0.01",
        "rate_window_calls = 50",
        "min_sample = 20",
        "consecutive_failures = 1000",
        f'night_window = "{night_window(tz)}"',
        "",
    ]
    for i in range(cards):
        lines += [
            "[[users]]",
            f'name = "agent{i:03d}"',
            f'password = "pw{i:03d}"',
            f'card = "c{i:03d}"',
            "",
        ]
    for i in range(cards):
        lines += [
            "[[cards]]",
            f'id = "c{i:03d}"',
            'carrier = "carrier-a"',
            f'number = "+86138{i:08d}"',
            f'username = "c{i:03d}"',
            f'password = "card-{i:03d}"',
            'pool = "main"',
            f"priority = {i % 5}",
            'quota = "bench"',
            "",
        ]
    return "\n".join(lines)


def prefill_day(db: Path, cards: int, per_card: int) -> None:
    """``per_card`` finished calls on each card earlier today (the carrier's day, in
    :data:`CARRIER_TZ`), as the gateway meets its cards mid-shift rather than at
    midnight: a card's counters are read from its day's rows when a process first needs
    them, or after another process changed the card without a log it can apply."""

    now = time.time()
    local = datetime.now(ZoneInfo(CARRIER_TZ))
    day_start = local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    span = max(now - 60.0 - day_start, 1.0)
    rng = random.Random(7)
    rows = []
    for c in range(cards):
        for k in range(per_card):
            started = day_start + span * (k + rng.random()) / per_card
            rows.append(
                (
                    f"prefill-{c}-{k}",
                    f"c{c:03d}",
                    f"+8613{rng.randrange(10**9):09d}",
                    started,
                    "finished",
                    1,
                    30.0,
                    0,
                    0,
                    started + 35.0,
                    started + 5.0,
                    f"agent{c:03d}",
                )
            )
    con = sqlite3.connect(db)
    try:
        with con:
            con.executemany(
                "INSERT INTO call_starts (call_id, card, callee, started_at, status, answered, "
                "talk_seconds, short, failed, ended_at, answered_at, agent) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )
    finally:
        con.close()


def build_template(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """The populated database (DNC + consent) for every step, built once and cached."""
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    name = f"template-dnc{args.dnc}-consent{args.consent}-cards{args.cards}"
    db = cache / f"{name}.db"
    meta_path = cache / f"{name}.json"
    if db.exists() and meta_path.exists():
        return db, json.loads(meta_path.read_text())
    tmp = cache / f"{name}.building.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{tmp}{suffix}").unlink(missing_ok=True)
    cfg = cache / f"{name}.toml"
    cfg.write_text(
        gateway_toml(
            sip_port=5060, carrier_port=5070, db=tmp, cards=args.cards, log_level="warning"
        )
    )
    rng = random.Random(42)
    dnc_file = cache / "dnc.txt"
    t0 = time.perf_counter()
    with open(dnc_file, "w", encoding="ascii") as fh:
        for chunk in range(0, args.dnc, 100_000):
            n = min(100_000, args.dnc - chunk)
            fh.write(
                "".join(
                    f"+86{rng.choice(DNC_PREFIXES)}{rng.randrange(100_000_000):08d}\n"
                    for _ in range(n)
                )
            )
    consent_file = cache / "consent.csv"
    with open(consent_file, "w", encoding="ascii") as fh:
        fh.write("number,campaign,granted_at,expires_at,source,evidence\n")
        for number in consent_numbers(args.consent):
            fh.write(
                f"{number},bench,2026-01-01T00:00:00+00:00,2030-01-01T00:00:00+00:00,web,form-1\n"
            )
    meta: dict[str, Any] = {"generate_s": round(time.perf_counter() - t0, 1)}
    cli_tail = ["--config", str(cfg), "--actor", "bench"]
    for what, path in (("dnc", dnc_file), ("consent", consent_file)):
        t0 = time.perf_counter()
        out = subprocess.run(
            [PYTHON, str(RUNNER), "--operator-cli", "--", what, "import", str(path), *cli_tail],
            capture_output=True,
            text=True,
            check=False,
            timeout=3600,
        )
        meta[f"{what}_import_s"] = round(time.perf_counter() - t0, 1)
        meta[f"{what}_import_out"] = (out.stdout + out.stderr).strip()[:300]
        print(f"{what} import: {meta[f'{what}_import_s']}s — {meta[f'{what}_import_out']}")
        if out.returncode != 0:
            sys.exit(f"{what} import failed (exit {out.returncode})")
    dnc_file.unlink()
    consent_file.unlink()
    cfg.unlink()
    tmp.rename(db)
    for suffix in ("-wal", "-shm"):
        Path(f"{tmp}{suffix}").unlink(missing_ok=True)
    meta["db_mb"] = round(db.stat().st_size / 1e6, 1)
    meta_path.write_text(json.dumps(meta, indent=2))
    return db, meta


def wait_ready(port: int, timeout: float = 60.0) -> bool:
    """OPTIONS the gateway until it answers 200 (or give up after ``timeout``)."""
    deadline = time.monotonic() + timeout
    n = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        s.settimeout(0.3)
        me = s.getsockname()[1]
        while time.monotonic() < deadline:
            n += 1
            msg = (
                f"OPTIONS sip:{HOST}:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {HOST}:{me};branch=z9hG4bKbenchready{n}\r\n"
                f"From: <sip:bench@{HOST}>;tag=ready{n}\r\nTo: <sip:{HOST}:{port}>\r\n"
                f"Call-ID: ready{n}@bench\r\nCSeq: {n} OPTIONS\r\nMax-Forwards: 70\r\n"
                "Content-Length: 0\r\n\r\n"
            )
            s.sendto(msg.encode(), (HOST, port))
            try:
                data = s.recv(65535)
            except TimeoutError:
                continue
            if data.startswith(b"SIP/2.0 200"):
                return True
    return False


def register_agent(sipp: str, port: int, user: str, password: str, workdir: Path) -> int:
    """REGISTER one agent through SIPp (digest); return 1 when it got its 200."""
    workdir.mkdir(parents=True, exist_ok=True)
    inf = workdir / "agents.csv"
    inf.write_text(f"SEQUENTIAL\n{user};\n")
    proc = subprocess.run(
        [
            sipp,
            f"{HOST}:{port}",
            "-sf",
            str(SIPP_DIR / "register.xml"),
            "-inf",
            str(inf),
            "-m",
            "1",
            "-au",
            user,
            "-ap",
            password,
            "-i",
            HOST,
            "-p",
            str(free_udp_port()),
            "-timeout",
            "30s",
            "-timeout_error",
            "-nostdin",
            "-trace_stat",
            "-stf",
            str(workdir / "stat.csv"),
        ],
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    del proc
    return int(last_stats(workdir / "stat.csv").get("SuccessfulCall(C)", 0) or 0)


@dataclass
class GatewayRun:
    """Gateway-side numbers of one end-to-end step."""

    cpu_pct: float | None = None
    cpu_ms_per_call: float | None = None
    #: The busiest main thread's CPU% (one event loop: its ceiling is one core), and the
    #: main threads' CPU per completed call (summed over the workers).
    loop_pct: float | None = None
    loop_ms_per_call: float | None = None
    rss_mb: float | None = None
    peak_rss_mb: float | None = None
    start_rss_mb: float | None = None
    startup_s: float | None = None
    gc: dict[str, Any] = field(default_factory=dict)
    #: With --slow-ms: the event loop's callbacks longer than that in the traffic window.
    stalls: dict[str, Any] = field(default_factory=dict)
    #: With --pdd: the post-dial delay the gateway added, timed on the wire (bench/pdd.py).
    pdd: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    log_lines: int = 0
    log_errors: list[str] = field(default_factory=list)


def summarize_log(path: Path, run: GatewayRun) -> None:
    """Counters from the gateway's JSON log lines (gateway.stats, b2bua.stats) and errors."""
    if not path.exists():
        return
    for line in path.read_text(errors="replace").splitlines():
        run.log_lines += 1
        try:
            event = json.loads(line)
        except ValueError:
            if "Traceback" in line or "Error" in line:
                run.log_errors.append(line[:200])
            continue
        name = event.get("event")
        if name in ("gateway.stats", "b2bua.stats"):
            event.pop("timestamp", None)
            run.stats[name] = event
        elif event.get("level") in ("error", "critical") and len(run.log_errors) < 5:
            run.log_errors.append(line[:300])


def e2e_step(
    args: argparse.Namespace,
    sipp: str,
    template: Path,
    rate: float,
    calls: int,
    numbers: list[str],
    workdir: Path,
    *,
    profile: list[str] | None = None,
    runner_args: list[str] | None = None,
) -> tuple[SippResult, GatewayRun]:
    """One end-to-end step: fresh copy of the database, gateway, carrier, agents, calls.

    ``profile``: a command prefix (e.g. py-spy record … --pid) attached to the
    gateway for the duration of the calls; ``{pid}`` is replaced. ``runner_args``
    go to ``bench/gateway_runner.py`` (e.g. ``--cprofile FILE``).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "gw.db"
    shutil.copyfile(template, db)
    day_calls = getattr(args, "day_calls", 0)  # run_all/profile_e2e build their own args
    if day_calls:
        prefill_day(db, args.cards, day_calls)
    sip_port = free_udp_port()
    carrier_port = free_udp_port()
    cfg = workdir / "gw.toml"
    cfg.write_text(
        gateway_toml(
            sip_port=sip_port,
            carrier_port=carrier_port,
            db=db,
            cards=args.cards,
            log_level=args.log_level,
            gc=args.gc,
            overload_kb=args.overload_kb,
            tcp=args.sipp_transport == "t1",
            carrier_tcp=args.carrier_transport == "tcp",
        )
    )
    wall_cap = calls / rate + 60
    carrier = start_carrier(
        sipp, carrier_port, workdir / "carrier", wall_cap + 60, tcp=args.carrier_transport == "tcp"
    )
    gw_cmd = [PYTHON, str(RUNNER), "--gc-stats", str(workdir / "gc.json")]
    slow_ms = getattr(args, "slow_ms", None)  # run_all/profile_e2e build their own args
    if slow_ms is not None:
        gw_cmd += ["--slow-callbacks", str(workdir / "slow.json"), "--slow-ms", str(slow_ms)]
    if args.uvloop:
        gw_cmd.append("--uvloop")
    gw_cmd += runner_args or []
    if args.heap:
        gw_cmd += ["--heap-dump", str(workdir / "heap.txt")]
    if args.experiment_paused_only:
        gw_cmd.append("--experiment-paused-only")
    gw_cmd += ["--", "run", "--config", str(cfg)]
    if args.workers > 1:
        # A supervisor and N workers on the one SIP port (SO_REUSEPORT); the runner's
        # GC statistics and uvloop apply to the supervisor only.
        gw_cmd += ["--workers", str(args.workers)]
    env = dict(os.environ)
    if args.uvloop and args.extra_path:
        env["PYTHONPATH"] = args.extra_path
    log_path = workdir / "gateway.log"
    run = GatewayRun()
    window = (0.0, float("inf"))
    profiler: subprocess.Popen[bytes] | None = None
    with open(log_path, "wb") as log_fh:
        t0 = time.monotonic()
        gw = subprocess.Popen(
            gw_cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=log_fh, stderr=log_fh, env=env
        )
        try:
            if not wait_ready(sip_port):
                raise RuntimeError(f"gateway did not answer OPTIONS; see {log_path}")
            workers = worker_pids(log_path, args.workers) if args.workers > 1 else []
            gw_pids = workers or [gw.pid]
            if args.pin:
                for pid in gw_pids:
                    os.sched_setaffinity(pid, GATEWAY_CORES)
            run.startup_s = round(time.monotonic() - t0, 2)
            identities: list[tuple[str, str]] = []
            if args.caller == "agent":
                for i in range(args.callers):
                    user, password = f"agent{i:03d}", f"pw{i:03d}"
                    if register_agent(sipp, sip_port, user, password, workdir / "register") != 1:
                        raise RuntimeError(f"{user} did not register; see {log_path}")
                    identities.append((user, password))
            else:
                identities = [("dialer-1", "dialer-secret")] * args.callers
            start = combined([sample(p) for p in gw_pids])
            run.start_rss_mb = round(start.rss_kb / 1024, 1) if start else None

            # -t un: a UDP socket per call, so the kernel spreads the calls of one
            # caller over the workers (one socket per caller: one worker per caller).
            socket_args = {
                "un": ["-t", "un", "-max_socket", str(max(1000, int(rate * 40)))],
                "t1": ["-t", "t1"],  # one TCP connection per caller, to the TCP listener
            }.get(args.sipp_transport, [])

            def attach() -> None:
                nonlocal profiler
                if profile:
                    profiler = subprocess.Popen(
                        [p.replace("{pid}", str(gw.pid)) for p in profile],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=open(workdir / "profiler.err", "wb"),  # noqa: SIM115
                    )

            def one(i: int) -> tuple[SippResult, dict[int, Any]]:
                user, password = identities[i]
                share = calls // len(identities) + (1 if i < calls % len(identities) else 0)
                mine = numbers[i : calls : len(identities)][:share]
                inf = workdir / f"numbers-{i}.csv"
                write_numbers_csv(inf, mine, user)
                return run_caller(
                    sipp,
                    "agent.xml",
                    (HOST, sip_port),
                    inf,
                    share,
                    rate / len(identities),
                    args.pause_ms,
                    workdir / f"caller-{i}",
                    watch=[*gw_pids, carrier.pid] if i == 0 else [],
                    on_start=attach if i == 0 else None,
                    extra=["-au", user, "-ap", password, *socket_args],
                )

            pdd = getattr(args, "pdd", False)  # run_all/profile_e2e build their own args
            capture = start_pdd(workdir, sip_port, carrier_port) if pdd else None
            try:
                with concurrent.futures.ThreadPoolExecutor(len(identities)) as pool:
                    outcomes = list(pool.map(one, range(len(identities))))
            finally:
                if capture is not None:
                    run.pdd = stop_pdd(capture, workdir)
            result, samples = merge_callers(
                [o[0] for o in outcomes],
                [workdir / f"caller-{i}" for i in range(len(identities))],
                rate,
            )
            samples = outcomes[0][1]
            a = combined([samples[p][0] for p in gw_pids])
            b = combined([samples[p][1] for p in gw_pids])
            if a is not None and b is not None:
                window = (a.wall, b.wall)
            run.cpu_pct = cpu_percent(a, b)
            run.loop_pct = loop_percent([samples[p] for p in gw_pids])
            if a is not None and b is not None and result.ok:
                # CPU time per completed call: steadier than latency on a shared machine.
                run.cpu_ms_per_call = round(1000 * (b.cpu - a.cpu) / result.ok, 2)
                run.loop_ms_per_call = round(1000 * (b.loop - a.loop) / result.ok, 2)
            if b is not None:
                run.rss_mb = round(b.rss_kb / 1024, 1)
                run.peak_rss_mb = round(b.hwm_kb / 1024, 1)
            result.uas_cpu_pct = cpu_percent(*samples[carrier.pid])
            if args.heap and gw.poll() is None:
                # --heap-after 40: past Timers L/M/J (32 s), only what outlives them remains.
                time.sleep(max(0.0, args.heap_after))
                os.kill(gw.pid, signal.SIGUSR1)
                time.sleep(3)
                heap = workdir / "heap.txt"
                if heap.exists():
                    print(heap.read_text())
        finally:
            if profiler is not None:
                # py-spy writes its output on SIGINT.
                if profiler.poll() is None:
                    os.kill(profiler.pid, signal.SIGINT)
                try:
                    profiler.wait(60)
                except subprocess.TimeoutExpired:
                    stop_pid(profiler)
            stop_pid(gw, grace=20)
            stop_pid(carrier)
    summarize_log(log_path, run)
    gc_path = workdir / "gc.json"
    if gc_path.exists():
        from gateway_runner import summarize

        dump = json.loads(gc_path.read_text())
        # Only the collections while the calls ran (start-up's full collection excluded).
        run.gc = summarize(dump["pauses"], *window)
        run.gc["thresholds"] = dump["thresholds"]
        run.gc["frozen"] = dump["frozen"]
    slow_path = workdir / "slow.json"
    if slow_path.exists():
        run.stalls = stalls(json.loads(slow_path.read_text()), *window)
    return result, run


def start_pdd(workdir: Path, sip_port: int, carrier_port: int) -> subprocess.Popen[bytes] | None:
    """``bench/pdd.py capture`` on lo for the step's SIP and carrier ports, once it is
    ready (None, with a line on stderr, where packets cannot be captured)."""
    proc = subprocess.Popen(
        [
            PYTHON,
            str(Path(__file__).resolve().parent / "pdd.py"),
            "capture",
            "--gateway-port",
            str(sip_port),
            "--carrier-port",
            str(carrier_port),
            "--out",
            str(workdir / "pdd.json"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=open(workdir / "pdd.err", "wb"),  # noqa: SIM115 - closed with the process
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        proc.wait(10)
        print(f"--pdd: no capture ({(workdir / 'pdd.err').read_text().strip()})", file=sys.stderr)
        return None
    return proc


def stop_pdd(proc: subprocess.Popen[bytes], workdir: Path) -> dict[str, Any]:
    """End the capture (SIGTERM); its summary (bench/pdd.py) or {} when it wrote none."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        stop_pid(proc)
    out = workdir / "pdd.json"
    return json.loads(out.read_text()) if out.exists() else {}


def stalls(dump: dict[str, Any], start: float, end: float) -> dict[str, Any]:
    """The runner's slow callbacks that ended in the traffic window: how many, the
    longest, and which callbacks they were (count, total and worst milliseconds)."""
    chosen = [s for s in dump["slow"] if start <= s[0] <= end]
    by: dict[str, list[tuple[float, float]]] = {}
    for _at, ms, cpu, what in chosen:
        by.setdefault(what, []).append((ms, cpu))
    ranked = sorted(by.items(), key=lambda kv: -sum(ms for ms, _ in kv[1]))
    return {
        "threshold_ms": dump["threshold_ms"],
        "count": len(chosen),
        "max_ms": max((s[1] for s in chosen), default=0.0),
        "total_ms": round(sum(s[1] for s in chosen), 1),
        "cpu_ms": round(sum(s[2] for s in chosen), 1),
        "by_callback": [
            {
                "what": what,
                "count": len(times),
                "total_ms": round(sum(ms for ms, _ in times), 1),
                "cpu_ms": round(sum(cpu for _, cpu in times), 1),
                "max_ms": max(ms for ms, _ in times),
            }
            for what, times in ranked[:8]
        ],
    }


def cmd_e2e(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Ramp the rate through the gateway, each rate preceded by a direct step."""
    sipp = sipp_binary()
    template, meta = build_template(args)
    print(f"database: {template} ({meta})")
    if args.pin:
        pin_bench()
    numbers = consent_numbers(args.consent)
    rows: list[dict[str, Any]] = []
    base = Path(tempfile.mkdtemp(prefix="dialgate-e2e-"))
    try:
        print_header("SIPp agents → dialgate → SIPp carrier")
        for rate in args.rates:
            calls = step_calls(rate, args.seconds, min(args.max_calls, args.consent))
            if not args.no_direct:
                direct = direct_step(
                    sipp, rate, calls, args.pause_ms, base / f"direct-r{rate:g}", numbers
                )
                row = {"mode": "direct", **asdict(direct)}
                rows.append(row)
                print_row(row)
            result, gw = e2e_step(args, sipp, template, rate, calls, numbers, base / f"r{rate:g}")
            row = {"mode": "e2e" + ("+uvloop" if args.uvloop else ""), **asdict(result)}
            row["gateway"] = asdict(gw)
            rows.append(row)
            print_row(row)
            if gw.stalls:
                print_stalls(gw.stalls)
            if gw.pdd:
                print_pdd(gw.pdd)
            if (result.failed or result.unfinished) and not args.keep_going:
                break
    finally:
        if args.keep_files:
            print(f"files kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return rows


# --- output --------------------------------------------------------------------------


def print_pdd(pdd: dict[str, Any]) -> None:
    """The post-dial delay the gateway added (``--pdd``), under the step's row."""
    if not pdd.get("calls"):
        print(f"    added post-dial delay: no whole call captured ({pdd})")
        return
    parts = "; ".join(
        f"{name} p50 {pdd[name]['p50_ms']:.2f} / p99 {pdd[name]['p99_ms']:.2f} ms"
        for name in ("challenge", "forward", "relay")
    )
    added = pdd["added"]
    print(
        f"    added post-dial delay on the wire, {pdd['calls']} calls"
        f" ({pdd['incomplete']} refused or unanswered): p50 {added['p50_ms']:.2f}"
        f" / p99 {added['p99_ms']:.2f} / max {added['max_ms']:.2f} ms ({parts});"
        f" capture CPU {pdd['capture_cpu_s']} s"
    )
    windows = pdd.get("added_by_window") or []
    if windows:
        print(
            "      p50 / p99 by quarter of the run: "
            + ", ".join(f"{w['p50_ms']:.1f} / {w['p99_ms']:.1f}" for w in windows if w["calls"])
        )


def print_stalls(found: dict[str, Any]) -> None:
    """The step's event-loop stalls (``--slow-ms``), under its row."""
    print(
        f"    loop stalls over {found['threshold_ms']:g} ms in the traffic window: "
        f"{found['count']} (longest {found['max_ms']:g} ms, {found['total_ms']:g} ms in all,"
        f" of which the gateway's CPU {found['cpu_ms']:g} ms)"
    )
    for item in found["by_callback"]:
        print(
            f"      {item['count']:>5} × {item['what'][:60]}: {item['total_ms']:g} ms"
            f" (CPU {item['cpu_ms']:g}), longest {item['max_ms']:g}"
        )


def fmt(value: Any) -> str:
    """A table cell."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


COLUMNS = (
    ("mode", 12),
    ("offered_cps", 7),
    ("calls", 6),
    ("ok", 6),
    ("failed", 6),
    ("refused", 6),
    ("unfinished", 6),
    ("retransmissions", 7),
    ("measured_cps", 7),
    ("rt_p50_ms", 6),
    ("rt_p99_ms", 6),
    ("rt_max_ms", 6),
    ("rt_mean_ms", 7),
)
HEADS = (
    "mode",
    "cps",
    "calls",
    "ok",
    "fail",
    "503",
    "unfin",
    "retr",
    "meas",
    "p50",
    "p99",
    "max",
    "mean",
)


def print_header(title: str) -> None:
    """Table title and header."""
    print(f"\n{title}   (INVITE→200 in ms, SIPp rtd 1; load = 1/5/15-min load average)")
    cells = [f"{h:>{w}}" for h, (_, w) in zip(HEADS, COLUMNS, strict=True)]
    print(
        " ".join(cells)
        + f" {'407 p50':>7} {'gw CPU%':>7} {'loop%':>6} {'ms/call':>7} {'gw RSS':>7} {'gc max':>7}"
        + f" {'uac%':>5} {'uas%':>5}  load"
    )


def print_row(row: dict[str, Any]) -> None:
    """One step as a table line, errors below it."""
    cells = [f"{fmt(row.get(k)):>{w}}" for k, w in COLUMNS]
    gw = row.get("gateway") or {}
    gc_max = None
    for gen in ("gen0", "gen1", "gen2"):
        m = (gw.get("gc") or {}).get(gen, {}).get("max_ms")
        if m is not None:
            gc_max = m if gc_max is None else max(gc_max, m)
    rss = f"{gw['rss_mb']:g}M" if gw.get("rss_mb") else "-"
    print(
        " ".join(cells)
        + f" {fmt(row.get('challenge_p50_ms')):>7} {fmt(gw.get('cpu_pct')):>7}"
        + f" {fmt(gw.get('loop_pct')):>6} {fmt(gw.get('cpu_ms_per_call')):>7} {rss:>7}"
        f" {fmt(gc_max):>7} {fmt(row.get('uac_cpu_pct')):>5} {fmt(row.get('uas_cpu_pct')):>5}"
        f"  {row.get('load', '')}",
        flush=True,
    )
    for err in row.get("errors") or []:
        print(f"    sipp: {err}")
    for err in gw.get("log_errors") or []:
        print(f"    gateway: {err}")


def parse_rates(text: str) -> list[float]:
    """``"100,250,500"`` → [100.0, 250.0, 500.0]."""
    return [float(x) for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The command line of both modes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--seconds", type=float, default=5.0, help="traffic per step")
    common.add_argument("--max-calls", type=int, default=5000, help="calls per step at most")
    common.add_argument("--pause-ms", type=int, default=100, help="talk time of each call")
    common.add_argument("--json", type=Path, help="write every step here as JSON")
    common.add_argument("--keep-files", action="store_true", help="keep SIPp/gateway files")
    c = sub.add_parser("ceiling", parents=[common], help="direct SIPp → SIPp ramp")
    c.add_argument("--rates", type=parse_rates, default=parse_rates("100,250,500,1000,1500,2000"))
    e = sub.add_parser("e2e", parents=[common], help="SIPp → dialgate → SIPp ramp")
    e.add_argument("--rates", type=parse_rates, default=parse_rates("25,50,100,150,200,300"))
    e.add_argument("--dnc", type=int, default=1_000_000)
    e.add_argument("--consent", type=int, default=10_000)
    e.add_argument("--cards", type=int, default=100, help="cards, and as many bound agents")
    e.add_argument(
        "--day-calls",
        type=int,
        default=0,
        help="finished calls on each card earlier today, written before the gateway starts",
    )
    e.add_argument(
        "--caller",
        choices=("agent", "dialer"),
        default="agent",
        help="agent000 (REGISTERed, bound to c000) or the dialer peer (no binding: any card)",
    )
    e.add_argument(
        "--callers",
        type=int,
        default=1,
        help="SIPp callers side by side, each its own agent (agentNNN bound to cNNN), rate split",
    )
    e.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "dialgate-bench-cache"))
    e.add_argument("--log-level", default="info")
    e.add_argument("--no-direct", action="store_true", help="skip the direct step at each rate")
    e.add_argument("--keep-going", action="store_true", help="do not stop at the first failure")
    e.add_argument("--uvloop", action="store_true", help="run the gateway's loop on uvloop")
    e.add_argument(
        "--slow-ms",
        type=float,
        default=None,
        help="report the event loop's callbacks longer than this (bench/gateway_runner.py"
        " --slow-callbacks): what held the calls up",
    )
    e.add_argument(
        "--pdd",
        action="store_true",
        help="time the post-dial delay the gateway adds on the wire (bench/pdd.py: a"
        " capture on lo, needs root or CAP_NET_RAW)",
    )
    e.add_argument(
        "--pin",
        action="store_true",
        help="SIPp (and this script) on core 0, the gateway on the other cores",
    )
    e.add_argument(
        "--gc",
        choices=("paced", "auto"),
        default="paced",
        help="[server] gc of the gateway: paced (the default, gateway/collector.py) or "
        "auto (Python's own triggers, thresholds gateway.app.GC_THRESHOLD)",
    )
    e.add_argument(
        "--overload-kb",
        type=int,
        default=None,
        help="[sip] overload_queue_kb of the gateway (default: the gateway's; 0: off)",
    )
    e.add_argument("--heap", action="store_true", help="print the gateway's objects by type")
    e.add_argument(
        "--heap-after",
        type=float,
        default=0.0,
        help="with --heap: seconds to wait after the calls before the dump (40: past Timer M)",
    )
    e.add_argument(
        "--experiment-paused-only",
        action="store_true",
        help="what-if in the runner: agent_usage reads only the pause flag (no agent limits set)",
    )
    e.add_argument(
        "--workers",
        type=int,
        default=1,
        help="dialgate run --workers N on the one SIP port (gateway CPU%% and RSS: the"
        " workers' sum)",
    )
    e.add_argument(
        "--sipp-transport",
        choices=("u1", "un", "t1"),
        default="u1",
        help="SIPp callers' transport: u1 one UDP socket per caller, un one per call (spreads"
        " one caller's calls over the workers; SIPp spends more CPU), t1 one TCP connection"
        " per caller to a TCP listener on the same port number (registration stays UDP)",
    )
    e.add_argument(
        "--carrier-transport",
        choices=("udp", "tcp"),
        default="udp",
        help="how the gateway reaches the SIPp carrier (tcp: SIPp -t t1 on 127.0.0.2)",
    )
    e.add_argument(
        "--extra-path",
        default=os.environ.get("BENCH_EXTRA_PATH", ""),
        help="PYTHONPATH holding uvloop when it is not in the venv",
    )
    return parser


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run one mode; print the tables; return the rows."""
    args = build_parser().parse_args(argv)
    info = machine()
    print(
        f"machine: {info['cores']} cores, {info['cpu']}, Python {info['python']}, "
        f"SIPp {info['sipp']}, load {loadavg()}"
    )
    rows = cmd_ceiling(args) if args.mode == "ceiling" else cmd_e2e(args)
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()

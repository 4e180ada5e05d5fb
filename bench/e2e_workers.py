"""N ``dialgate run`` processes sharing state through Redis, end to end (issue 7).

Reuses ``bench/e2e.py`` (SIPp scenarios, cached bench database, gateway
configuration, /proc sampling). Per offered rate, a fresh set of:

* one private ``redis-server`` on a free 127.0.0.1 TCP port
  (``--save '' --appendonly no``), stopped by its PID after the step;
* ``--workers`` gateways (``bench/gateway_runner.py -- run``), each on its own
  UDP SIP port, each with its **own copy** of the cached SQLite database
  (SQLite is per instance) and ``[store] redis`` pointing at the shared server
  (Redis decides quotas and holds card states: docs/redis.md). ``[mqtt]`` is
  off; the node names differ because the listeners differ
  (``gateway.store.redis.node_name``: hostname + listeners). Every gateway's
  configuration has all users and cards;
* one SIPp carrier UAS shared by all gateways (``--carrier-per-gateway`` for
  one each);
* ``--callers`` SIPp agents (digest, ``-buff_size 1048576``), split round-robin
  over the gateways: caller i registers to and calls through gateway
  ``i % workers``; the offered rate is split evenly over the callers.

``--workers 1 --redis`` runs one gateway with Redis (isolates what Redis adds);
``--workers 1`` without ``--redis`` is e2e.py's own mode (no Redis).

Per step: OK/failed/unfinished calls, SIPp retransmissions, placed CPS (sum of
the callers' CallRate), INVITE→200 p50/p99 (pooled), CPU% and CPU ms per
completed call of **each** gateway (its own callers' completed calls), RSS,
Redis CPU%, SIPp CPU%, load average.

Run::

    .venv/bin/python bench/e2e_workers.py --workers 2 --callers 8 \\
        --rates 200,300,400,500,600 --seconds 10

Only 127.0.0.1 is used; every process is bounded in time and stopped by PID.
Asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import e2e
from e2e import (
    HOST,
    PYTHON,
    RUNNER,
    GatewayRun,
    cpu_percent,
    gateway_toml,
    loadavg,
    merge_callers,
    register_agent,
    run_caller,
    start_carrier,
    summarize_log,
    wait_ready,
    write_numbers_csv,
)

from simulator.testkit import free_port, free_udp_port, stop_pid


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A private redis-server (no persistence); waits for PING. Stopped by PID by the caller."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return proc, port
        except OSError:
            time.sleep(0.05)
    stop_pid(proc)
    raise RuntimeError("redis-server did not answer PING")


def redis_info(port: int) -> dict[str, int]:
    """DBSIZE and total_commands_processed of the private server (proof it was used)."""
    out: dict[str, int] = {}
    with socket.create_connection((HOST, port), timeout=2) as s:
        s.sendall(b"DBSIZE\r\n")
        out["keys"] = int(s.recv(64).strip().lstrip(b":"))
        s.sendall(b"INFO stats\r\n")
        data = b""
        while b"total_commands_processed" not in data or not data.endswith(b"\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            if len(data) > 1 << 20:
                break
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("total_commands_processed:"):
            out["commands"] = int(line.split(":", 1)[1])
    return out


class RedisMonitor:
    """Counts the commands Redis runs while it watches (``MONITOR``), by source.

    ``client``: what the gateways sent (one ``evalsha`` is one round trip);
    ``script``: what their Lua scripts ran inside (``[0 lua]`` lines). Redis's
    ``INFO commandstats`` / ``total_commands_processed`` count both together.
    A reader thread; ``stop()`` returns the two counters.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=2)
        self.sock.sendall(b"MONITOR\r\n")
        self.client: dict[str, int] = {}
        self.script: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buf = b""
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            *lines, buf = buf.split(b"\r\n")
            for line in lines:
                # +1700000000.123456 [0 127.0.0.1:40000] "evalsha" "..." ...
                _, _, rest = line.partition(b" [")
                source, _, command = rest.partition(b"] ")
                name = command.split(b" ", 1)[0].strip(b'"').decode(errors="replace").lower()
                if not name:
                    continue
                into = self.script if source.endswith(b" lua") else self.client
                into[name] = into.get(name, 0) + 1

    def stop(self) -> tuple[dict[str, int], dict[str, int]]:
        """Stop watching; (client commands, script commands) by name."""
        time.sleep(0.3)  # the last calls' finishes reach the monitor
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()
        return dict(self.client), dict(self.script)


def per_call(counts: dict[str, int], calls: int) -> dict[str, float]:
    """Counts divided by completed calls, busiest first, with the total under ``all``."""
    out = {k: round(v / calls, 2) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}
    return {"all": round(sum(counts.values()) / calls, 2), **out}


def with_redis(toml: str, url: str) -> str:
    """``gateway_toml`` output with ``redis = URL`` added to its ``[store]`` table."""
    head, sep, tail = toml.partition("[store]\n")
    assert sep, "no [store] table"
    path_line, nl, rest = tail.partition("\n")
    return f'{head}{sep}{path_line}{nl}redis = "{url}"\n{rest}'


def step(
    args: argparse.Namespace,
    sipp: str,
    template: Path,
    rate: float,
    calls: int,
    numbers: list[str],
    workdir: Path,
) -> dict[str, Any]:
    """One rate: Redis, N gateways, carrier(s), callers; every process stopped by PID."""
    workdir.mkdir(parents=True, exist_ok=True)
    n = args.workers
    wall_cap = calls / rate + 60
    procs: list[subprocess.Popen[bytes]] = []
    gws: list[subprocess.Popen[bytes]] = []
    carriers: list[subprocess.Popen[bytes]] = []
    redis_proc = None
    redis_url = None
    redis_port = 0
    logs: list[Any] = []
    row: dict[str, Any] = {"mode": f"e2e x{n}" + ("+redis" if args.redis or n > 1 else "")}
    runs = [GatewayRun() for _ in range(n)]
    try:
        if args.redis or n > 1:
            redis_proc, redis_port = start_redis(workdir / "redis")
            procs.append(redis_proc)
            redis_url = f"redis://{HOST}:{redis_port}/0"
        carrier_ports = [free_udp_port() for _ in range(n if args.carrier_per_gateway else 1)]
        for k, port in enumerate(carrier_ports):
            c = start_carrier(sipp, port, workdir / f"carrier-{k}", wall_cap + 60)
            carriers.append(c)
            procs.append(c)
        sip_ports = [free_udp_port() for _ in range(n)]
        for g in range(n):
            gdir = workdir / f"gw-{g}"
            gdir.mkdir(parents=True, exist_ok=True)
            db = gdir / "gw.db"
            shutil.copyfile(template, db)
            toml = gateway_toml(
                sip_port=sip_ports[g],
                carrier_port=carrier_ports[g % len(carrier_ports)],
                db=db,
                cards=args.cards,
                log_level=args.log_level,
            )
            if redis_url:
                toml = with_redis(toml, redis_url)
            # Each instance its own admin port (the default 127.0.0.1:8080 would clash).
            toml += f'\n[admin]\nlisten = "{HOST}:{free_port()}"\n'
            (gdir / "gw.toml").write_text(toml)
            log_fh = open(gdir / "gateway.log", "wb")  # noqa: SIM115
            logs.append(log_fh)
            gw = subprocess.Popen(
                [PYTHON, str(RUNNER), "--", "run", "--config", str(gdir / "gw.toml")],
                cwd=gdir,
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=log_fh,
            )
            gws.append(gw)
            procs.append(gw)
        t0 = time.monotonic()
        for g in range(n):
            if not wait_ready(sip_ports[g]):
                raise RuntimeError(f"gateway {g} did not answer OPTIONS; see {workdir}/gw-{g}")
            runs[g].startup_s = round(time.monotonic() - t0, 2)
        owner = [i % n for i in range(args.callers)]
        for i in range(args.callers):
            user, password = f"agent{i:03d}", f"pw{i:03d}"
            if register_agent(sipp, sip_ports[owner[i]], user, password, workdir / "register") != 1:
                raise RuntimeError(f"{user} did not register at gateway {owner[i]}")
        watch = [g.pid for g in gws] + [c.pid for c in carriers]
        if redis_proc is not None:
            watch.append(redis_proc.pid)

        def one(i: int) -> tuple[e2e.SippResult, dict[int, Any]]:
            user, password = f"agent{i:03d}", f"pw{i:03d}"
            share = calls // args.callers + (1 if i < calls % args.callers else 0)
            mine = numbers[i : calls : args.callers][:share]
            inf = workdir / f"numbers-{i}.csv"
            write_numbers_csv(inf, mine, user)
            return run_caller(
                sipp,
                "agent.xml",
                (HOST, sip_ports[owner[i]]),
                inf,
                share,
                rate / args.callers,
                args.pause_ms,
                workdir / f"caller-{i}",
                watch=watch if i == 0 else [],
                extra=["-au", user, "-ap", password],
            )

        monitor = RedisMonitor(redis_port) if redis_proc is not None and args.monitor else None
        load_before = loadavg()
        with concurrent.futures.ThreadPoolExecutor(args.callers) as pool:
            outcomes = list(pool.map(one, range(args.callers)))
        result, _ = merge_callers(
            [o[0] for o in outcomes],
            [workdir / f"caller-{i}" for i in range(args.callers)],
            rate,
        )
        result.load = f"{load_before} → {loadavg()}"
        samples = outcomes[0][1]
        row.update(asdict(result))
        gw_rows = []
        for g, gw in enumerate(gws):
            a, b = samples[gw.pid]
            ok = sum(outcomes[i][0].ok for i in range(args.callers) if owner[i] == g)
            failed = sum(outcomes[i][0].failed for i in range(args.callers) if owner[i] == g)
            run = runs[g]
            run.cpu_pct = cpu_percent(a, b)
            if a is not None and b is not None and ok:
                run.cpu_ms_per_call = round(1000 * (b.cpu - a.cpu) / ok, 2)
            if b is not None:
                run.rss_mb = round(b.rss_kb / 1024, 1)
                run.peak_rss_mb = round(b.hwm_kb / 1024, 1)
            gw_rows.append({"ok": ok, "failed": failed, **asdict(run)})
        row["gateways"] = gw_rows
        row["carrier_cpu_pct"] = [cpu_percent(*samples[c.pid]) for c in carriers]
        row["redis_cpu_pct"] = (
            cpu_percent(*samples[redis_proc.pid]) if redis_proc is not None else None
        )
        if redis_proc is not None:
            try:
                if monitor is not None:
                    client, script = monitor.stop()
                    row["redis_round_trips_per_call"] = per_call(client, max(1, result.ok))
                    row["redis_script_commands_per_call"] = per_call(script, max(1, result.ok))
                row["redis"] = redis_info(redis_port)
            except (OSError, ValueError) as exc:
                row["redis"] = {"error": str(exc)}
    finally:
        for gw in gws:
            stop_pid(gw, grace=20)
        for c in carriers:
            stop_pid(c)
        if redis_proc is not None:
            stop_pid(redis_proc)
        for fh in logs:
            fh.close()
    for g in range(len(gws)):
        summarize_log(workdir / f"gw-{g}" / "gateway.log", runs[g])
        if "gateways" in row:
            row["gateways"][g]["log_errors"] = runs[g].log_errors
            row["gateways"][g]["stats"] = runs[g].stats
    return row


def print_row(row: dict[str, Any]) -> None:
    """One step as text."""
    gws = row.get("gateways", [])
    per = " | ".join(
        f"gw{g}: {r['ok']}/{r['failed']} {r['cpu_pct']}% {r['cpu_ms_per_call']} ms/call "
        f"{r['rss_mb']}M"
        for g, r in enumerate(gws)
    )
    print(
        f"{row['mode']:>12} {row['offered_cps']:>6g} ok {row['ok']} failed {row['failed']} "
        f"unfin {row['unfinished']} retr {row['retransmissions']} placed {row['measured_cps']} "
        f"p50/p99 {row['rt_p50_ms']}/{row['rt_p99_ms']} ms | {per} | redis "
        f"{row.get('redis_cpu_pct')}% {row.get('redis')} | carrier {row.get('carrier_cpu_pct')}% "
        f"uac {row.get('uac_cpu_pct')}% | load {row.get('load')}",
        flush=True,
    )
    if "redis_round_trips_per_call" in row:
        print(f"    redis commands sent per completed call: {row['redis_round_trips_per_call']}")
        print(f"    run inside scripts per call: {row['redis_script_commands_per_call']}")
    for err in row.get("errors") or []:
        print(f"    sipp: {err}")
    for g, r in enumerate(gws):
        for err in r.get("log_errors") or []:
            print(f"    gw{g}: {err}")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Ramp the offered rate through N gateways sharing Redis."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="gateway processes")
    parser.add_argument("--redis", action="store_true", help="use Redis even with --workers 1")
    parser.add_argument("--callers", type=int, default=8, help="SIPp agents, split over gateways")
    parser.add_argument("--rates", type=e2e.parse_rates, default=e2e.parse_rates("200,300,400"))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-calls", type=int, default=10_000)
    parser.add_argument("--pause-ms", type=int, default=100)
    parser.add_argument("--dnc", type=int, default=1_000_000)
    parser.add_argument("--consent", type=int, default=10_000)
    parser.add_argument("--cards", type=int, default=100)
    parser.add_argument(
        "--cache", default=str(Path(tempfile.gettempdir()) / "dialgate-bench-cache")
    )
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--carrier-per-gateway", action="store_true")
    parser.add_argument(
        "--monitor",
        action="store_true",
        help="count Redis commands per call (MONITOR: slows Redis, use a low rate)",
    )
    parser.add_argument("--keep-going", action="store_true", help="do not stop at a failure")
    parser.add_argument("--keep-files", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.callers < args.workers:
        parser.error("--callers must be at least --workers")
    if shutil.which("redis-server") is None and (args.redis or args.workers > 1):
        sys.exit("redis-server not found")
    sipp = e2e.sipp_binary()
    info = e2e.machine()
    print(
        f"machine: {info['cores']} cores, {info['cpu']}, Python {info['python']}, "
        f"SIPp {info['sipp']}, load {loadavg()}"
    )
    template, meta = e2e.build_template(args)
    print(f"database: {template} ({meta})")
    numbers = e2e.consent_numbers(args.consent)
    base = Path(tempfile.mkdtemp(prefix="dialgate-e2e-workers-"))
    rows: list[dict[str, Any]] = []
    try:
        for rate in args.rates:
            calls = e2e.step_calls(rate, args.seconds, min(args.max_calls, args.consent))
            row = step(args, sipp, template, rate, calls, numbers, base / f"r{rate:g}")
            rows.append(row)
            print_row(row)
            if (row["failed"] or row["unfinished"]) and not args.keep_going:
                break
    finally:
        if args.keep_files:
            print(f"files kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=2, default=str))
    return rows


if __name__ == "__main__":
    main()

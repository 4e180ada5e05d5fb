"""``dialgate run --workers N``: a supervisor process and N worker processes.

The supervisor binds nothing for long: it checks that every ``[sip] listen``
address is free (a port 0 becomes a concrete free port, the same for every
worker), chooses each worker's private ports (``[server] worker_port_base``, or
free ports kept for the life of the set), starts the workers —
``dialgate run --worker-role JSON`` with the same configuration — and then only
watches them:

* a worker that exits (crash, ``kill -9``) is started again with the same index
  and ports after a bounded back-off (:data:`BACKOFF_FIRST` doubling to
  :data:`BACKOFF_MAX`); the new process ends the calls its predecessor left
  (:mod:`gateway.callpath.recovery`, only rows owned by that index);
* more than :data:`CRASH_LIMIT` exits within :data:`CRASH_WINDOW` seconds, or
  a worker exiting with the usage status (a configuration error), stops the set
  and the supervisor exits non-zero;
* SIGINT/SIGTERM: SIGTERM to every worker by PID, SIGKILL to those still alive
  after :data:`STOP_GRACE` seconds (a second signal: at once).

Each worker asks the kernel for SIGTERM when the supervisor dies
(``PR_SET_PDEATHSIG``), so a killed supervisor leaves no workers behind.

This module must never handle SIP or open the store: it starts, watches and
stops processes, by PID.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config import Settings
from gateway.workers import WorkerRole

__all__ = [
    "BACKOFF_FIRST",
    "BACKOFF_MAX",
    "CRASH_LIMIT",
    "CRASH_WINDOW",
    "STOP_GRACE",
    "PortsInUse",
    "choose_ports",
    "die_with_parent",
    "supervise",
]

BACKOFF_FIRST = 0.1
"""Seconds before the first restart of a worker that exited."""

BACKOFF_MAX = 5.0
"""The longest wait before a restart (the back-off doubles per recent exit)."""

CRASH_WINDOW = 60.0
"""Seconds over which a worker's exits are counted."""

CRASH_LIMIT = 5
"""Exits of one worker within CRASH_WINDOW after which the set is stopped."""

STOP_GRACE = 10.0
"""Seconds a worker gets to stop after SIGTERM before SIGKILL."""

POLL = 0.05
"""Seconds between looks at the workers."""

EXIT_USAGE = 2


class PortsInUse(OSError):
    """A configured listener's address is taken (another gateway runs?)."""


def _kind(transport: str) -> int:
    return socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM


def _probe(transport: str, host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` without SO_REUSEPORT (closed by the caller)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, _kind(transport))
    try:
        if transport != "udp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def choose_ports(settings: Settings, count: int) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
    """The shared port of each listener and each worker's private ports.

    A shared port must be free: bound without SO_REUSEPORT it would otherwise
    fail (so a second gateway on the same ports is refused, not silently
    joined). Private ports: ``[server] worker_port_base`` + i × (number of
    listeners) + j for worker i's listener j, else free ports of the OS.
    Raises :class:`PortsInUse` naming the listener.
    """
    listen = settings.sip.listen
    held: list[socket.socket] = []
    try:
        shared: list[int] = []
        for j, spec in enumerate(listen):
            try:
                sock = _probe(spec.transport.value, spec.ip, spec.port)
            except OSError as exc:
                raise PortsInUse(exc.errno, f"sip.listen[{j}] {spec}: {exc.strerror}") from exc
            held.append(sock)
            shared.append(int(sock.getsockname()[1]))
        base = settings.server.worker_port_base
        homes: list[tuple[int, ...]] = []
        for i in range(count):
            ports: list[int] = []
            for j, spec in enumerate(listen):
                port = 0 if base is None else base + i * len(listen) + j
                try:
                    sock = _probe(spec.transport.value, spec.ip, port)
                except OSError as exc:
                    raise PortsInUse(
                        exc.errno,
                        f"server.worker_port_base: worker {i} {spec.transport.value}:"
                        f"{spec.host}:{port}: {exc.strerror}",
                    ) from exc
                held.append(sock)
                ports.append(int(sock.getsockname()[1]))
            homes.append(tuple(ports))
        return tuple(shared), homes
    finally:
        for sock in held:
            sock.close()


def die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the parent (the supervisor) dies (Linux only);
    exit at once when it is already gone."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    if parent == 1:
        sys.exit(1)


@dataclass
class _Worker:
    role: WorkerRole
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    exits: deque[float] = field(default_factory=deque)
    restart_at: float | None = None


def _command(config: Path | None, role: WorkerRole) -> list[str]:
    cmd = [sys.executable, "-m", "gateway", "run", "--worker-role", role.to_json()]
    if config is not None:
        cmd += ["--config", str(config)]
    return cmd


def supervise(settings: Settings, config: Path | None, count: int, log: Any) -> int:
    """Run ``count`` workers until SIGINT/SIGTERM; the exit status of ``dialgate run``."""
    try:
        shared, homes = choose_ports(settings, count)
    except PortsInUse as exc:
        log.error("workers.ports_in_use", error=str(exc))
        print(f"dialgate run: {exc.strerror}", file=sys.stderr)
        return 1
    # Hand-over sockets of the workers (calls steered by Call-ID): a directory only
    # this user can enter, removed when the set stops.
    steer = ""
    if settings.server.worker_balance != "kernel" and count > 1:
        # A socket's path holds at most 107 bytes: under /tmp when TMPDIR is long.
        base = tempfile.gettempdir()
        steer = tempfile.mkdtemp(prefix="dialgate-workers-", dir=base if len(base) < 48 else "/tmp")
    workers = [
        _Worker(
            WorkerRole(index=i, count=count, ports=shared, home=homes[i], initial=True, steer=steer)
        )
        for i in range(count)
    ]
    signals: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        signals.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    log.info(
        "workers.starting",
        workers=count,
        ports=list(shared),
        private=[list(h) for h in homes],
        pid=os.getpid(),
        balance=settings.server.worker_balance,
        handover=steer or None,
    )
    status = 0
    try:
        for worker in workers:
            _start(worker, config, log)
        while not signals:
            now = time.monotonic()
            for worker in workers:
                proc = worker.proc
                if proc is not None and proc.poll() is not None:
                    verdict = _exited(worker, now, log)
                    if verdict is not None:
                        status = verdict
                        break
                due = worker.restart_at
                if worker.proc is None and due is not None and now >= due:
                    # The same index and ports; it ends its predecessor's calls.
                    worker.role = dataclasses.replace(worker.role, initial=False)
                    _start(worker, config, log)
            if status:
                break
            time.sleep(POLL)
    finally:
        _stop_all(workers, signals, log)
        if steer:
            shutil.rmtree(steer, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if signals:
        log.info("workers.stopped", signal=signal.Signals(signals[0]).name)
    return status


def _start(worker: _Worker, config: Path | None, log: Any) -> None:
    role = worker.role
    # Its own process group: a Ctrl-C in the terminal reaches the supervisor alone,
    # which stops the workers once (a second signal would cancel them outright).
    worker.proc = subprocess.Popen(
        _command(config, role), stdin=subprocess.DEVNULL, process_group=0
    )
    worker.started_at = time.monotonic()
    worker.restart_at = None
    log.info(
        "worker.started",
        worker=role.index,
        pid=worker.proc.pid,
        restart=not role.initial,
        private=list(role.home),
    )


def _exited(worker: _Worker, now: float, log: Any) -> int | None:
    """A worker exited: plan its restart; an exit status for the supervisor when the
    set must stop instead."""
    proc = worker.proc
    assert proc is not None
    code = proc.returncode
    worker.proc = None
    worker.exits.append(now)
    while worker.exits and now - worker.exits[0] > CRASH_WINDOW:
        worker.exits.popleft()
    how = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
    fields = {
        "worker": worker.role.index,
        "pid": proc.pid,
        "exit": how,
        "uptime": round(now - worker.started_at, 1),
    }
    if code == EXIT_USAGE:
        log.error("worker.refused_configuration", **fields)
        return EXIT_USAGE
    if len(worker.exits) > CRASH_LIMIT:
        log.error("workers.giving_up", exits=len(worker.exits), window=CRASH_WINDOW, **fields)
        return 1
    delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (len(worker.exits) - 1))
    worker.restart_at = now + delay
    log.warning("worker.exited", restart_in=round(delay, 2), **fields)
    return None


def _stop_all(workers: list[_Worker], signals: list[int], log: Any) -> None:
    """SIGTERM every live worker by PID, SIGKILL after STOP_GRACE (at once on a
    second signal)."""
    live = [w.proc for w in workers if w.proc is not None and w.proc.poll() is None]
    for proc in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    seen = len(signals)
    while any(p.poll() is None for p in live):
        if time.monotonic() >= deadline or len(signals) > max(seen, 1):
            for proc in live:
                if proc.poll() is None:
                    log.warning("worker.killed", pid=proc.pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)
            for proc in live:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(STOP_GRACE)
            break
        time.sleep(POLL)

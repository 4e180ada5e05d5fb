"""The test kit: the helpers every test folder and benchmark needs, in one place.

- ports: :func:`free_port`, :func:`free_udp_port`, :func:`free_ports` (loopback only);
- processes: :func:`stop_process` (by PID: SIGTERM, then SIGKILL), :class:`Mosquitto`
  (a real broker on a free port, restartable for outage tests), :func:`mosquitto_binary`;
- SIPp: :func:`sipp_binary`, :func:`sipp_command`, :func:`start_sipp`, :func:`stat_row`;
- polling: :func:`eventually` (async, raises), :func:`wait_for` (async, returns a bool),
  :func:`wait_until` (blocking);
- events: :func:`capture_events` (everything a bus publishes, as a list);
- config: :func:`gateway_toml` (a dialgate TOML on loopback ports from keyword
  arguments, the sections tests use again and again).

:mod:`simulator.pytest_plugin` exposes the process helpers as fixtures
(``mosquitto``, ``sipp``). Importable without pytest (benchmarks use it).

What it must never do: bind anything but 127.0.0.1, use a fixed port, stop a
process it did not start (processes are stopped by their own PID, never by
name), or import the gateway at module level (the simulator sits below it).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "LOOPBACK",
    "MOSQUITTO_PATHS",
    "SIPP_COMMON",
    "Mosquitto",
    "capture_events",
    "eventually",
    "free_port",
    "free_ports",
    "free_udp_port",
    "gateway_toml",
    "mosquitto_binary",
    "sipp_binary",
    "sipp_command",
    "start_sipp",
    "stat_row",
    "stop_process",
    "wait_for",
    "wait_until",
]

LOOPBACK = "127.0.0.1"
MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/bin/mosquitto")
#: Arguments every SIPp run here takes (TOOLS.md: the default 64 KB buffer drops datagrams).
SIPP_COMMON = ("-i", LOOPBACK, "-buff_size", "1048576", "-nostdin")


# --- ports ------------------------------------------------------------------------------


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 free right now for ``kind`` (TCP by default)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 free right now (for peers that need a number)."""
    return free_port(socket.SOCK_DGRAM)


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports on 127.0.0.1, each free for both TCP and UDP right now."""
    ports: set[int] = set()
    while len(ports) < n:
        port = free_port()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((LOOPBACK, port))
        except OSError:
            continue
        ports.add(port)
    return sorted(ports)


# --- processes --------------------------------------------------------------------------


def stop_process(proc: subprocess.Popen[Any], timeout: float = 5.0) -> int | None:
    """SIGTERM ``proc`` by its PID, SIGKILL if it lingers; reap it; its exit status."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
    return proc.returncode


def mosquitto_binary() -> str | None:
    """Path of the mosquitto binary (Debian ``mosquitto``), or None."""
    for path in MOSQUITTO_PATHS:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("mosquitto")


class Mosquitto:
    """One mosquitto process on a fixed (free) loopback port; restartable.

    ``extra`` is appended to the generated configuration (TLS, password file);
    with a ``password_file`` anonymous clients are refused.
    """

    def __init__(
        self,
        binary: str,
        workdir: Path,
        port: int | None = None,
        *,
        extra: str = "",
        scheme: str = "mqtt",
    ) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.host = LOOPBACK
        self.scheme = scheme
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        anonymous = "false" if "password_file" in extra else "true"
        self.config.write_text(
            f"listener {self.port} {LOOPBACK}\n"
            f"allow_anonymous {anonymous}\n"
            "persistence false\n"
            # Run as the test's own user: when started as root mosquitto would switch
            # to "mosquitto", which cannot read certificate files under the tmp dir.
            f"user {getpass.getuser()}\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\n" + extra
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT`` (``mqtts://`` for a TLS broker)."""
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """PID of the running broker, None when not started."""
        return None if self.proc is None else self.proc.pid

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until it accepts TCP connections."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port}")

    def pause(self) -> None:
        """SIGSTOP the broker: connections stay open but nothing is answered."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGSTOP)

    def kill(self) -> None:
        """SIGKILL the broker (an outage) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM the broker by PID, SIGKILL if it lingers."""
        if self.proc is not None:
            stop_process(self.proc)

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- SIPp -------------------------------------------------------------------------------


def sipp_binary() -> str | None:
    """Path of ``sipp`` (Debian ``sip-tester``), or None."""
    return shutil.which("sipp")


def sipp_command(
    scenario: Path | str,
    *,
    port: int,
    target: tuple[str, int] | None = None,
    workdir: Path | None = None,
    timeout: float | None = None,
    trace: bool = True,
    extra: Sequence[str] = (),
    binary: str | None = None,
) -> list[str]:
    """A SIPp command line on 127.0.0.1:``port``.

    ``scenario`` is an XML path or a built-in name (``uac``/``uas``, passed as
    ``-sn``). ``target`` makes it a client; ``timeout`` bounds the whole run
    (``-timeout``); ``trace`` writes ``messages.log``, ``stat.csv`` and
    ``errors.log`` in ``workdir``. ``extra`` is appended as is.
    """
    sipp = binary or sipp_binary()
    if sipp is None:
        raise RuntimeError("sipp (Debian package sip-tester) is not installed")
    cmd = [sipp]
    if target is not None:
        cmd.append(f"{target[0]}:{target[1]}")
    if str(scenario) in ("uac", "uas"):
        cmd += ["-sn", str(scenario)]
    else:
        cmd += ["-sf", str(scenario)]
    cmd += [*SIPP_COMMON, "-p", str(port)]
    if timeout is not None:
        cmd += ["-timeout", f"{int(timeout)}s"]
    if trace:
        assert workdir is not None, "trace files need a workdir"
        cmd += [
            "-trace_msg",
            "-message_file",
            str(workdir / "messages.log"),
            "-trace_stat",
            "-stf",
            str(workdir / "stat.csv"),
            "-trace_err",
            "-error_file",
            str(workdir / "errors.log"),
        ]
    return [*cmd, *extra]


def start_sipp(
    cmd: Sequence[str], workdir: Path, *, output: bool = False
) -> subprocess.Popen[bytes]:
    """Start a SIPp command in ``workdir`` (stdout/stderr piped when ``output``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    sink = subprocess.PIPE if output else subprocess.DEVNULL
    return subprocess.Popen(
        list(cmd), cwd=workdir, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink
    )


def stat_row(path: Path) -> dict[str, str]:
    """The last row of a SIPp ``-trace_stat`` CSV as a dict (e.g. ``SuccessfulCall(C)``)."""
    rows = [r for r in path.read_text().splitlines() if r.strip()]
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0].split(";"), rows[-1].split(";"), strict=False))


# --- polling ----------------------------------------------------------------------------


async def wait_for(
    predicate: Callable[[], object], timeout: float, *, interval: float = 0.02
) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds passed; whether it became true."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        await asyncio.sleep(interval)


async def eventually(
    predicate: Callable[[], object],
    timeout: float = 5.0,
    *,
    interval: float = 0.02,
    what: str = "condition",
) -> None:
    """Wait until ``predicate()`` is true (polling), or raise AssertionError after ``timeout``."""
    if not await wait_for(predicate, timeout, interval=interval):
        raise AssertionError(f"{what} not met within {timeout} s")


def wait_until(
    predicate: Callable[[], object],
    timeout: float,
    *,
    interval: float = 0.05,
    what: str = "condition",
) -> None:
    """Blocking :func:`eventually` for code outside an event loop."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(interval)


# --- events -----------------------------------------------------------------------------


@contextlib.contextmanager
def capture_events(bus: Any, kind: type | tuple[type, ...] | None = None) -> Iterator[list[Any]]:
    """Every event ``bus`` publishes while the block runs (only ``kind`` instances if given).

    ``bus`` is anything with ``subscribe(callback) -> unsubscribe`` (the gateway's
    :class:`~gateway.telemetry.events.EventBus`).
    """
    seen: list[Any] = []

    def record(event: Any) -> None:
        if kind is None or isinstance(event, kind):
            seen.append(event)

    unsubscribe = bus.subscribe(record)
    try:
        yield seen
    finally:
        unsubscribe()


# --- config -----------------------------------------------------------------------------


def gateway_toml(
    *,
    sip: int | str,
    carrier: int | None = None,
    mqtt: int | None = None,
    admin: int | None = None,
    store: Path | str | None = None,
    node: str = "gw1",
    users: Sequence[tuple[str, str, str | None]] = (("alice", "alice-secret-pw", "c1"),),
    cards: Sequence[str] = ("c1",),
    carrier_name: str = "carrier-a",
    carrier_timezone: str = "Asia/Shanghai",
    calling_hours: str = "00:00-24:00",
    consent: str = "dnc-only",
    default_region: str = "CN",
    stats_interval: float | None = 1.0,
    extra: str = "",
) -> str:
    """A dialgate TOML configuration on loopback ports.

    ``sip`` is a UDP port (or a full ``listen`` entry such as ``"tcp:127.0.0.1:N"``);
    the ``[mqtt]``, ``[admin]``, ``[store]`` and carrier/cards sections appear only
    when their port or path is given. Cards are numbered +86138000000NN in order,
    with username = card id and password ``card-secret-pw``. ``extra`` is appended.
    """
    listen = sip if isinstance(sip, str) else f"udp:{LOOPBACK}:{sip}"
    parts = [f'[sip]\nlisten = ["{listen}"]\nrealm = "dialgate"\n']
    if store is not None:
        parts.append(f'[store]\npath = "{store}"\n')
    if mqtt is not None:
        stats = f"stats_interval = {stats_interval}\n" if stats_interval is not None else ""
        parts.append(
            f'[mqtt]\nurl = "mqtt://{LOOPBACK}:{mqtt}"\nroot = "dialgate"\nnode = "{node}"\n'
            + stats
        )
    parts.append(
        f'[policy]\nconsent = "{consent}"\ndefault_region = "{default_region}"\n'
        f'calling_hours = "{calling_hours}"\n'
    )
    for name, password, card in users:
        line = f'[[users]]\nname = "{name}"\npassword = "{password}"\n'
        if card is not None:
            line += f'card = "{card}"\n'
        parts.append(line)
    if carrier is not None:
        parts.append(
            f'[[carriers]]\nname = "{carrier_name}"\naddress = "udp:{LOOPBACK}:{carrier}"\n'
            f'timezone = "{carrier_timezone}"\noptions_interval = 5\n'
            "  [[carriers.rules]]\n  status = 403\n"
            '  match = "(?i)suspend|blocked"\n  reason = "violation"\n'
        )
        for i, card_id in enumerate(cards, start=1):
            parts.append(
                f'[[cards]]\nid = "{card_id}"\ncarrier = "{carrier_name}"\n'
                f'number = "+86138000000{i:02d}"\nusername = "{card_id}"\n'
                'password = "card-secret-pw"\n'
            )
    if admin is not None:
        parts.append(f'[admin]\nlisten = "{LOOPBACK}:{admin}"\n')
    if extra:
        parts.append(extra)
    return "\n".join(parts)

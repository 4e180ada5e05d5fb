"""The test kit: the helpers every test folder and benchmark needs, in one place.

- ports: :func:`free_port`, :func:`free_udp_port`, :func:`free_ports` (loopback only);
- processes: :func:`stop_pid` (SIGTERM, then SIGKILL), :class:`Mosquitto` (a real
  broker on a free port, restartable for outage tests), :func:`mosquitto_binary`;
- SIPp: :func:`sipp_command`, :func:`start_sipp_carrier` (:class:`SippCarrier`),
  :func:`start_sipp_agent` + :func:`finish_sipp` or :func:`run_sipp_agent`
  (:class:`SippResult`), the
  trace and statistics readers :func:`parse_trace` (:class:`Message`), :func:`stat_row`;
- polling: :func:`eventually` (async, raises), :func:`wait_for` (async, returns a bool),
  :func:`wait_until` (blocking);
- events: :func:`capture_events` (everything a bus publishes, as a list);
- config: :func:`gateway_toml` (a whole dialgate TOML on loopback ports from
  keyword arguments) and :func:`calls_toml` (policy, agent, carriers, quota
  profiles and cards: what SIPp wire tests add below ``[sip]``).

:mod:`simulator.pytest_plugin` exposes the process helpers as fixtures
(``mosquitto``) and :func:`simulator.pytest_plugin.sipp_binary` fails a test
when SIPp is missing. Importable without pytest (benchmarks use it).

What it must never do: bind anything but 127.0.0.1, use a fixed port, stop a
process it did not start (processes are stopped by their own PID, never by
name), or import the gateway at module level (the simulator sits below it).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "LOOPBACK",
    "MOSQUITTO_PATHS",
    "SIPP_COMMON",
    "Message",
    "Mosquitto",
    "SippCarrier",
    "SippResult",
    "calls_toml",
    "capture_events",
    "eventually",
    "find_sipp",
    "finish_sipp",
    "free_port",
    "free_ports",
    "free_udp_port",
    "gateway_toml",
    "mosquitto_binary",
    "parse_trace",
    "run_sipp_agent",
    "sipp_command",
    "start_sipp",
    "start_sipp_agent",
    "start_sipp_carrier",
    "stat_row",
    "stop_pid",
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


def stop_pid(proc: subprocess.Popen[Any], grace: float = 5.0) -> int | None:
    """SIGTERM ``proc`` by its PID, SIGKILL after ``grace`` seconds; reap it; its status."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=grace)
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
            stop_pid(self.proc)

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- SIPp -------------------------------------------------------------------------------


def find_sipp() -> str | None:
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
    """A SIPp command line on 127.0.0.1:``port`` (with :data:`SIPP_COMMON`).

    ``scenario`` is an XML path; ``target`` makes it a client; ``timeout`` bounds
    the whole run (``-timeout``); ``trace`` writes ``messages.log``, ``stat.csv``
    and ``errors.log`` in ``workdir`` (what :class:`SippCarrier` and
    :class:`SippResult` read). ``extra`` is appended as is.
    """
    sipp = binary or find_sipp()
    if sipp is None:
        raise RuntimeError("sipp (Debian package sip-tester) is not installed")
    cmd = [sipp]
    if target is not None:
        cmd.append(f"{target[0]}:{target[1]}")
    cmd += ["-sf", str(scenario), *SIPP_COMMON, "-p", str(port)]
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


def start_sipp(cmd: Sequence[str], workdir: Path) -> subprocess.Popen[bytes]:
    """Start a SIPp command in ``workdir`` (no stdin, output discarded); stop it by PID."""
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        list(cmd),
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stat_row(path: Path) -> dict[str, str]:
    """The last row of a SIPp ``-trace_stat`` CSV as a dict (e.g. ``SuccessfulCall(C)``)."""
    rows = [r for r in path.read_text().splitlines() if r.strip()]
    return dict(zip(rows[0].split(";"), rows[-1].split(";"), strict=False))


_SEPARATOR = re.compile(r"^-{20,}.*$", re.MULTILINE)


@dataclass(frozen=True)
class Message:
    """One SIP message of a SIPp ``-trace_msg`` log."""

    direction: str  # "sent" or "received"
    first_line: str
    headers: dict[str, list[str]]

    def header(self, name: str) -> str | None:
        """First value of a header (case-insensitive name), None when absent."""
        values = self.headers.get(name.lower())
        return values[0] if values else None

    @property
    def status(self) -> int | None:
        """Status code of a response, None for a request."""
        if self.first_line.startswith("SIP/2.0 "):
            return int(self.first_line.split()[1])
        return None

    @property
    def method(self) -> str | None:
        """Method of a request, None for a response."""
        return None if self.first_line.startswith("SIP/2.0") else self.first_line.split()[0]


def parse_trace(path: Path) -> list[Message]:
    """Every message in a SIPp ``-message_file`` (sent and received)."""
    if not path.exists():
        return []
    out: list[Message] = []
    for block in _SEPARATOR.split(path.read_text(errors="replace")):
        lines = [ln.rstrip("\r") for ln in block.strip("\n").splitlines()]
        head = next(
            (i for i, ln in enumerate(lines) if "message sent" in ln or "message received" in ln),
            None,
        )
        if head is None:
            continue
        direction = "sent" if "message sent" in lines[head] else "received"
        body = list(lines[head + 1 :])
        while body and not body[0].strip():
            body.pop(0)
        if not body:
            continue
        headers: dict[str, list[str]] = {}
        for ln in body[1:]:
            if not ln.strip():
                break
            name, sep, value = ln.partition(":")
            if sep:
                headers.setdefault(name.strip().lower(), []).append(value.strip())
        out.append(Message(direction, body[0].strip(), headers))
    return out


@dataclass
class SippCarrier:
    """A SIPp UAS (a carrier) started with a message trace in ``workdir``.

    It runs until stopped by PID (or its ``-timeout``): ``-m`` cannot bound a
    carrier the gateway probes with OPTIONS, since SIPp counts each probe as a
    call. SIPp writes its trace as it goes, and its final statistics on SIGTERM.
    """

    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path

    def stop(self) -> int:
        """Stop it by PID; returns SIPp's exit code."""
        stop_pid(self.proc)
        return self.proc.returncode

    def messages(self) -> list[Message]:
        """Every SIP message the carrier sent or received so far."""
        return parse_trace(self.workdir / "messages.log")

    def invites(self) -> list[Message]:
        """Initial INVITEs the carrier received (no To tag)."""
        return [
            m
            for m in self.messages()
            if m.direction == "received"
            and m.method == "INVITE"
            and "tag=" not in (m.header("To") or "")
        ]

    def callees(self) -> list[str]:
        """Request-URI users of the INVITEs received, in order."""
        out = []
        for m in self.invites():
            uri = m.first_line.split()[1]
            out.append(uri.split(":", 1)[1].split("@", 1)[0])
        return out

    def stats(self) -> dict[str, str]:
        """The final ``-trace_stat`` row (written when SIPp exits)."""
        return stat_row(self.workdir / "stat.csv")


def start_sipp_carrier(
    scenario: Path, workdir: Path, *, timeout: float = 90, extra: Sequence[str] = ()
) -> SippCarrier:
    """A SIPp UAS running ``scenario`` on a free UDP port, tracing its messages; it exits
    by itself after ``timeout`` seconds."""
    port = free_udp_port()
    cmd = sipp_command(scenario, port=port, workdir=workdir, timeout=timeout, extra=extra)
    return SippCarrier(start_sipp(cmd, workdir), port, workdir)


@dataclass
class SippResult:
    """A finished SIPp client run: exit code, final stats and its message trace."""

    returncode: int
    stats: dict[str, str]
    messages: list[Message] = field(default_factory=list)

    @property
    def successful(self) -> int:
        """Calls that ended as the scenario expects."""
        return int(self.stats.get("SuccessfulCall(C)", "0"))

    @property
    def failed(self) -> int:
        """Calls that did not."""
        return int(self.stats.get("FailedCall(C)", "0"))

    def finals(self) -> list[Message]:
        """Final responses to INVITEs received from the gateway, other than 407."""
        return [
            m
            for m in self.messages
            if m.direction == "received"
            and m.status is not None
            and m.status >= 200
            and m.status != 407
            and (m.header("CSeq") or "").endswith("INVITE")
        ]


def start_sipp_agent(
    scenario: Path,
    target: tuple[str, int],
    workdir: Path,
    *,
    calls: int,
    rate: int,
    numbers: Sequence[str] | None = None,
    timeout: float = 20,
    hold_ms: int = 200,
    limit: int | None = None,
    port: int | None = None,
    extra: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """A SIPp client (an agent) placing ``calls`` calls at ``rate``/s to ``target``.

    ``limit`` calls at a time (default: all); ``hold_ms`` is the scenario's
    pause (``-d``). ``numbers`` become ``[field0]`` (one per call, in order); 180 after 200 is
    tolerated (``-default_behaviors all,-abortunexp``). Read it with
    :func:`finish_sipp`.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    args = [
        "-m",
        str(calls),
        "-r",
        str(rate),
        "-l",
        str(limit if limit is not None else max(calls, 1)),
        "-d",
        str(hold_ms),
        "-timeout_error",
        "-default_behaviors",
        "all,-abortunexp",
    ]
    if numbers is not None:
        csv = workdir / "numbers.csv"
        csv.write_text("SEQUENTIAL\n" + "".join(f"{n};\n" for n in numbers))
        args += ["-inf", str(csv)]
    cmd = sipp_command(
        scenario,
        port=port or free_udp_port(),
        target=target,
        workdir=workdir,
        timeout=timeout,
        extra=[*args, *extra],
    )
    return start_sipp(cmd, workdir)


def run_sipp_agent(
    scenario: Path,
    target: tuple[str, int],
    workdir: Path,
    numbers: Sequence[str],
    *,
    rate: int = 10,
    timeout: float = 20,
    **options: Any,
) -> SippResult:
    """:func:`start_sipp_agent` once per number (``[field0]``), then :func:`finish_sipp`
    (bounded: ``timeout`` + 10 s). ``options`` are the other arguments of
    :func:`start_sipp_agent` (``hold_ms``, ``limit``, ``extra``)."""
    proc = start_sipp_agent(
        scenario,
        target,
        workdir,
        calls=len(numbers),
        rate=rate,
        numbers=numbers,
        timeout=timeout,
        **options,
    )
    return finish_sipp(proc, workdir, timeout + 10)


def finish_sipp(proc: subprocess.Popen[bytes], workdir: Path, bound: float) -> SippResult:
    """Wait (at most ``bound`` s, then stop by PID) for a SIPp client; read its results."""
    try:
        proc.wait(bound)
    except subprocess.TimeoutExpired:
        stop_pid(proc)
    stats_path = workdir / "stat.csv"
    stats = stat_row(stats_path) if stats_path.exists() else {}
    return SippResult(proc.returncode, stats, parse_trace(workdir / "messages.log"))


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
    what: str = "condition",
    *,
    interval: float = 0.02,
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


def calls_toml(
    carriers: Mapping[str, int],
    *,
    cards: int = 2,
    card_carriers: Sequence[str] | None = None,
    profiles: Mapping[str, Mapping[str, int | float]] | None = None,
    card_profiles: Sequence[str] | None = None,
    bound_card: str | None = None,
    calling_hours: str = "00:00-24:00",
    carrier_timezone: str = "Asia/Shanghai",
    carrier_extra: str = "",
    carrier_rules: str = "",
    extra: str = "",
) -> str:
    """What a call on the wire needs below ``[sip]``: policy, agent, carriers, profiles, cards.

    The agent is alice (password ``s3cret``, as the SIPp agent scenarios), bound to
    ``bound_card`` if given. ``carriers`` maps a carrier name to its UDP port on
    127.0.0.1; each ``[[carriers]]`` table gets ``carrier_extra`` then
    ``carrier_rules``. Cards ``c1``… (``cards`` of them, or one per entry of
    ``card_carriers``; default: all on the first carrier) are numbered
    +86138000000NN, in pool ``main`` with priority N and quota profile
    ``card_profiles[N-1]`` (default: every card on ``q`` with no practical limit).
    ``extra`` is appended.
    """
    first = next(iter(carriers))
    card_carriers = list(card_carriers) if card_carriers is not None else [first] * cards
    profiles = profiles or {"q": {"calls_per_minute": 100000}}
    card_profiles = card_profiles or ["q"] * len(card_carriers)
    lines = [
        "\n[policy]",
        'default_region = "CN"',
        'consent = "dnc-only"',
        f'calling_hours = "{calling_hours}"',
        "\n[[users]]",
        'name = "alice"',
        'password = "s3cret"',
    ]
    if bound_card is not None:
        lines.append(f'card = "{bound_card}"')
    for name, port in carriers.items():
        lines += [
            "\n[[carriers]]",
            f'name = "{name}"',
            f'address = "udp:{LOOPBACK}:{port}"',
            f'timezone = "{carrier_timezone}"',
            "options_interval = 3600",
        ]
        if carrier_extra:
            lines.append(carrier_extra)
        if carrier_rules:
            lines.append(carrier_rules)
    for profile, limits in profiles.items():
        lines.append(f"\n[quota_profiles.{profile}]")
        lines += [f"{k} = {v}" for k, v in limits.items()]
    for i, (carrier, profile) in enumerate(zip(card_carriers, card_profiles, strict=True), 1):
        lines += [
            "\n[[cards]]",
            f'id = "c{i}"',
            f'carrier = "{carrier}"',
            f'number = "+86138000000{i:02d}"',
            f'username = "c{i}"',
            f'password = "card{i}-secret"',
            'pool = "main"',
            f"priority = {i}",
            f'quota = "{profile}"',
        ]
    return "\n".join(lines) + "\n" + extra

"""Policy outcomes on the wire: SIPp agent → ``dialgate run`` (subprocess) → SIPp carrier.

Reuses ``start_dialgate`` of tests/integration (a real ``dialgate run`` on free
ports, JSON logs on stderr, stopped by PID). The SIPp agent is alice (digest);
the SIPp carrier is a UAS bounded by ``-m`` and ``-timeout`` whose message
trace (``-trace_msg``) is what the tests read to know which INVITEs reached
the carrier. Every process started here is stopped by its PID.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import (
    DialgateProcess,
    dialgate_command,
    free_udp_port,
    sipp_binary,
    start_dialgate,
)

__all__ = [
    "DialgateProcess",
    "SippCarrier",
    "SippResult",
    "cli_json",
    "gateway_toml",
    "register_alice",
    "run_agent",
    "start_carrier",
    "start_dialgate",
]

SIPP_DIR = Path(__file__).resolve().parent / "sipp"
SIPP_COMMON = ["-i", "127.0.0.1", "-buff_size", "1048576", "-nostdin"]


def gateway_toml(
    carrier_port: int,
    *,
    calling_hours: str = "00:00-24:00",
    quota: dict[str, int] | None = None,
    carrier_timezone: str = "Asia/Shanghai",
    cards: int = 2,
) -> str:
    """The part of the config a policy test needs: alice, one carrier, ``cards`` cards.

    Every card uses the quota profile ``q`` (``quota``: limit name → value).
    """
    profile = quota or {"calls_per_minute": 100000}
    lines = [
        "\n[policy]",
        'default_region = "CN"',
        'consent = "dnc-only"',
        f'calling_hours = "{calling_hours}"',
        "\n[[users]]",
        'name = "alice"',
        'password = "s3cret"',
        "\n[[carriers]]",
        'name = "carrier-a"',
        f'address = "udp:127.0.0.1:{carrier_port}"',
        f'timezone = "{carrier_timezone}"',
        "options_interval = 3600",
        "\n[quota_profiles.q]",
        *(f"{k} = {v}" for k, v in profile.items()),
    ]
    for i in range(1, cards + 1):
        lines += [
            "\n[[cards]]",
            f'id = "c{i}"',
            'carrier = "carrier-a"',
            f'number = "+86138000000{i:02d}"',
            f'username = "c{i}"',
            f'password = "card{i}-secret"',
            'pool = "main"',
            f"priority = {i}",
            'quota = "q"',
        ]
    return "\n".join(lines) + "\n"


def stop_pid(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM by PID, then SIGKILL after ``grace`` seconds."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(grace)


# --- SIPp message traces -----------------------------------------------------------

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
        body = [ln for ln in lines[head + 1 :]]
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


def stat_row(path: Path) -> dict[str, str]:
    """The last row of a SIPp ``-trace_stat`` CSV as a dict."""
    rows = [r for r in path.read_text().splitlines() if r.strip()]
    return dict(zip(rows[0].split(";"), rows[-1].split(";"), strict=False))


# --- SIPp carrier (UAS) --------------------------------------------------------------


@dataclass
class SippCarrier:
    """A SIPp carrier UAS answering every INVITE (and the gateway's OPTIONS probes).

    It runs until stopped by PID (or its ``-timeout``): ``-m`` cannot bound it,
    since SIPp counts each OPTIONS probe as a call. SIPp writes its message
    trace as it goes, and its final statistics on SIGTERM.
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


def start_carrier(
    workdir: Path,
    timeout: int = 90,
    *,
    scenario: Path = SIPP_DIR / "carrier_uas.xml",
    extra: Sequence[str] = (),
) -> SippCarrier:
    """A SIPp carrier (``scenario``, more SIPp arguments in ``extra``) on a free UDP port,
    tracing its messages; it exits by itself after ``timeout`` seconds."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_udp_port()
    proc = subprocess.Popen(
        [
            sipp_binary(),
            "-sf",
            str(scenario),
            *SIPP_COMMON,
            *extra,
            "-p",
            str(port),
            "-timeout",
            f"{timeout}s",
            "-trace_msg",
            "-message_file",
            str(workdir / "messages.log"),
            "-trace_stat",
            "-stf",
            str(workdir / "stat.csv"),
            "-trace_err",
            "-error_file",
            str(workdir / "errors.log"),
        ],
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return SippCarrier(proc, port, workdir)


# --- SIPp agent (UAC) ----------------------------------------------------------------


@dataclass
class SippResult:
    """A finished SIPp agent run: exit code, final stats and its message trace."""

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


def _sipp_agent(
    scenario: str,
    target: tuple[str, int],
    workdir: Path,
    *,
    port: int,
    calls: int,
    rate: int,
    numbers: list[str] | None,
    timeout: int,
    hold_ms: int = 200,
) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sipp_binary(),
        f"{target[0]}:{target[1]}",
        "-sf",
        str(SIPP_DIR / scenario),
        *SIPP_COMMON,
        "-p",
        str(port),
        "-m",
        str(calls),
        "-r",
        str(rate),
        "-l",
        str(max(calls, 1)),
        "-d",
        str(hold_ms),
        "-timeout",
        f"{timeout}s",
        "-timeout_error",
        "-default_behaviors",
        "all,-abortunexp",
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
    if numbers is not None:
        csv = workdir / "numbers.csv"
        csv.write_text("SEQUENTIAL\n" + "".join(f"{n};\n" for n in numbers))
        cmd += ["-inf", str(csv)]
    return subprocess.Popen(
        cmd,
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _finish(proc: subprocess.Popen[bytes], workdir: Path, bound: float) -> SippResult:
    try:
        proc.wait(bound)
    except subprocess.TimeoutExpired:
        stop_pid(proc)
    stats_path = workdir / "stat.csv"
    stats = stat_row(stats_path) if stats_path.exists() else {}
    return SippResult(proc.returncode, stats, parse_trace(workdir / "messages.log"))


def run_agent(
    scenario: str,
    target: tuple[str, int],
    workdir: Path,
    numbers: list[str],
    *,
    rate: int = 10,
    timeout: int = 20,
    hold_ms: int = 200,
) -> SippResult:
    """Run the agent scenario once per number (``[field0]``) to completion, bounded in time."""
    proc = _sipp_agent(
        scenario,
        target,
        workdir,
        port=free_udp_port(),
        calls=len(numbers),
        rate=rate,
        numbers=numbers,
        timeout=timeout,
        hold_ms=hold_ms,
    )
    return _finish(proc, workdir, timeout + 10)


def start_agent(
    scenario: str,
    target: tuple[str, int],
    workdir: Path,
    numbers: list[str],
    *,
    rate: int = 10,
    timeout: int = 20,
    hold_ms: int = 200,
) -> subprocess.Popen[bytes]:
    """Start an agent run in the background (stop it by PID, or ``finish_agent``)."""
    return _sipp_agent(
        scenario,
        target,
        workdir,
        port=free_udp_port(),
        calls=len(numbers),
        rate=rate,
        numbers=numbers,
        timeout=timeout,
        hold_ms=hold_ms,
    )


def finish_agent(proc: subprocess.Popen[bytes], workdir: Path, bound: float) -> SippResult:
    """Wait (bounded) for a background agent run and read its results."""
    return _finish(proc, workdir, bound)


def register_alice(target: tuple[str, int], workdir: Path) -> None:
    """alice REGISTERs through SIPp (calls need a live registration)."""
    proc = _sipp_agent(
        "register.xml",
        target,
        workdir,
        port=free_udp_port(),
        calls=1,
        rate=1,
        numbers=None,
        timeout=10,
    )
    result = _finish(proc, workdir, 20)
    assert (0, 1) == (result.returncode, result.successful), result.stats


# --- reading the gateway's counters ----------------------------------------------------


def cli_json(config: Path, *args: str) -> Any:
    """Run ``dialgate <args> --config FILE --json`` and return its JSON output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALGATE_")}
    out = subprocess.run(
        [*dialgate_command(), *args, "--config", str(config), "--json"],
        env=env,
        cwd=config.parent,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert 0 == out.returncode, out.stderr.decode(errors="replace")
    return json.loads(out.stdout)


def admin_url(gw: DialgateProcess, timeout: float = 10.0) -> str:
    """The admin API base URL from the ``admin.listening`` log line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = gw.events("admin.listening")
        if lines:
            return str(lines[-1]["url"]).rstrip("/")
        time.sleep(0.05)
    raise AssertionError("no admin.listening log line")


def admin_get(url: str) -> Any:
    """GET a JSON document from the admin API (loopback, bounded)."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes] | DialgateProcess | SippCarrier]]:
    """Processes a test started; each is stopped by its PID at teardown."""
    started: list[subprocess.Popen[bytes] | DialgateProcess | SippCarrier] = []
    try:
        yield started
    finally:
        for p in reversed(started):
            if isinstance(p, subprocess.Popen):
                stop_pid(p)
            else:
                p.stop()

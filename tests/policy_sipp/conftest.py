"""Policy outcomes on the wire: SIPp agent → ``dialgate run`` (subprocess) → SIPp carrier.

Reuses ``start_dialgate`` of tests/integration (a real ``dialgate run`` on free
ports, JSON logs on stderr, stopped by PID). The SIPp agent is alice (digest);
the SIPp carrier is a UAS bounded by ``-m`` and ``-timeout`` whose message
trace (``-trace_msg``) is what the tests read to know which INVITEs reached
the carrier. The SIPp harness (command line, traces, statistics, stop by PID)
is the test kit's (:mod:`simulator.testkit`); this module adds the scenarios of
``sipp/`` and the gateway's configuration. Every process started here is
stopped by its PID.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simulator.pytest_plugin import (
    processes,  # noqa: F401  (a fixture of this folder)
    sipp_binary,
)
from simulator.testkit import (
    SippCarrier,
    SippResult,
    calls_toml,
    finish_sipp,
    run_sipp_agent,
    start_sipp_agent,
    start_sipp_carrier,
)
from tests.integration.conftest import DialgateProcess, dialgate_command, start_dialgate

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
    return calls_toml(
        {"carrier-a": carrier_port},
        cards=cards,
        profiles={"q": quota or {"calls_per_minute": 100000}},
        calling_hours=calling_hours,
        carrier_timezone=carrier_timezone,
    )


# --- SIPp message traces -----------------------------------------------------------


# --- SIPp carrier (UAS) --------------------------------------------------------------


def start_carrier(
    workdir: Path,
    timeout: int = 90,
    *,
    scenario: Path = SIPP_DIR / "carrier_uas.xml",
    extra: Sequence[str] = (),
) -> SippCarrier:
    """A SIPp carrier (``scenario``, more SIPp arguments in ``extra``) on a free UDP port,
    tracing its messages; it exits by itself after ``timeout`` seconds."""
    sipp_binary()  # fails when SIPp is missing
    return start_sipp_carrier(scenario, workdir, timeout=timeout, extra=extra)


# --- SIPp agent (UAC) ----------------------------------------------------------------


def _sipp_agent(
    scenario: str,
    target: tuple[str, int],
    workdir: Path,
    *,
    calls: int,
    rate: int,
    numbers: list[str] | None,
    timeout: int,
    hold_ms: int = 200,
) -> subprocess.Popen[bytes]:
    sipp_binary()  # fails when SIPp is missing
    return start_sipp_agent(
        SIPP_DIR / scenario,
        target,
        workdir,
        calls=calls,
        rate=rate,
        numbers=numbers,
        timeout=timeout,
        hold_ms=hold_ms,
    )


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
    sipp_binary()  # fails when SIPp is missing
    return run_sipp_agent(
        SIPP_DIR / scenario, target, workdir, numbers, rate=rate, timeout=timeout, hold_ms=hold_ms
    )


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
        calls=len(numbers),
        rate=rate,
        numbers=numbers,
        timeout=timeout,
        hold_ms=hold_ms,
    )


def finish_agent(proc: subprocess.Popen[bytes], workdir: Path, bound: float) -> SippResult:
    """Wait (bounded) for a background agent run and read its results."""
    return finish_sipp(proc, workdir, bound)


def register_alice(target: tuple[str, int], workdir: Path) -> None:
    """alice REGISTERs through SIPp (calls need a live registration)."""
    proc = _sipp_agent(
        "register.xml",
        target,
        workdir,
        calls=1,
        rate=1,
        numbers=None,
        timeout=10,
    )
    result = finish_sipp(proc, workdir, 20)
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

"""No stuck calls on the wire (issue 14 item 5): SIPp agent → ``dialgate run`` → SIPp carrier
that answers the CANCEL 200 and never sends the 487.

Built on the harness of tests/carrier_answers (a real ``dialgate run`` with
JSON logs, t1 = 0.05 s so 64*T1 = 3.2 s; processes stopped by PID). One card,
``concurrent = 1``, alice bound to it: before the fix the first cancelled call
kept the card in use and every later call got 503 ``no-card-available``.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from simulator.pytest_plugin import sipp_binary
from simulator.testkit import (
    SIPP_COMMON,
    SippCarrier,
    SippResult,
    free_udp_port,
    parse_trace,
    stat_row,
    stop_pid,
)
from tests.carrier_answers.conftest import (
    Started,
    card,
    final_statuses,
    gateway_toml,
    processes,
    run_calls,
    start_gateway,
)
from tests.policy_sipp.conftest import register_alice

__all__ = ["processes"]  # the fixture, imported from tests/carrier_answers

pytestmark = pytest.mark.integration

SIPP_DIR = Path(__file__).resolve().parent / "sipp"
T1 = 0.05
GIVE_UP = 64 * T1
STUCK = "13911110000"  # the carrier's scenario never sends 487 for this callee


def _carrier(workdir: Path) -> SippCarrier:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_udp_port()
    proc = subprocess.Popen(
        [
            sipp_binary(),
            "-sf",
            str(SIPP_DIR / "carrier_no487.xml"),
            *SIPP_COMMON,
            "-p",
            str(port),
            "-m",
            "10000",
            "-timeout",
            "60s",
            "-trace_msg",
            "-message_file",
            str(workdir / "messages.log"),
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


def _cancelling_agent(target: tuple[str, int], workdir: Path, number: str) -> SippResult:
    """alice calls ``number`` and CANCELs 300 ms after the 180 (``sipp/agent_cancel.xml``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "numbers.csv").write_text(f"SEQUENTIAL\n{number};\n")
    proc = subprocess.Popen(
        [
            sipp_binary(),
            f"{target[0]}:{target[1]}",
            "-sf",
            str(SIPP_DIR / "agent_cancel.xml"),
            *SIPP_COMMON,
            "-p",
            str(free_udp_port()),
            "-m",
            "1",
            "-timeout",
            "15s",
            "-timeout_error",
            "-inf",
            str(workdir / "numbers.csv"),
            "-trace_msg",
            "-message_file",
            str(workdir / "messages.log"),
            "-trace_stat",
            "-stf",
            str(workdir / "stat.csv"),
        ],
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        proc.wait(25)
    except subprocess.TimeoutExpired:
        stop_pid(proc)
    stats = workdir / "stat.csv"
    return SippResult(
        proc.returncode,
        stat_row(stats) if stats.exists() else {},
        parse_trace(workdir / "messages.log"),
    )


def test_cancel_without_487_frees_a_concurrent_1_card_within_64_t1(
    tmp_path: Path, processes: Started
) -> None:
    """487 to the agent at once; the card free 64*T1 later; the next call goes out on it."""
    carrier = _carrier(tmp_path / "carrier")
    processes.append(carrier)
    gw = start_gateway(
        tmp_path,
        gateway_toml(
            {"carrier-a": carrier.port},
            card_carriers=("carrier-a",),
            profiles={"one": {"calls_per_minute": 100000, "concurrent": 1}},
            card_profiles=["one"],
            bound_card="c1",
        ),
        sip_extra=f"t1 = {T1}\n",
    )
    processes.append(gw)
    target = gw.addresses["udp"]
    register_alice(target, tmp_path / "register")

    cancelled = _cancelling_agent(target, tmp_path / "agent_cancel", STUCK)
    assert (0, [487]) == (cancelled.returncode, final_statuses(cancelled)), cancelled.stats
    [a_invite] = [m for m in cancelled.messages if m.method == "INVITE"][-1:]
    a_call_id = a_invite.header("Call-ID")

    deadline = time.monotonic() + GIVE_UP + 5
    while not gw.events("call.ended") and time.monotonic() < deadline:
        time.sleep(0.05)
    [gave_up] = gw.events("call.cancel_unanswered")
    [ended] = gw.events("call.ended")
    assert (a_call_id, a_call_id) == (gave_up["call_id"], ended["call_id"])
    assert ("agent-cancel", "cancelled", 487) == (gave_up["why"], ended["outcome"], ended["code"])
    # The agent CANCELled 300 ms after the 180; the call ended 64*T1 after that CANCEL
    # (the summary's duration: from the attempt to the end).
    held = float(ended["duration"])
    assert GIVE_UP <= held <= GIVE_UP + 0.3 + 1.0, held
    assert 0 == card(gw.config, "c1")["in_use"]
    assert [] == [m for m in carrier.messages() if m.status == 487]

    # The card takes the next call (before the fix: 503 no-card-available).
    answered = run_calls(target, tmp_path / "agent_next", ["13911110001"])
    assert [200] == final_statuses(answered)

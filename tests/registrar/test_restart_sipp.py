"""kill -9 of a registered gateway, restart on the same database and ports: nobody re-registers.

Issue 14 acceptance: alice REGISTERs (SIPp, UDP), ``dialgate run`` is killed
with SIGKILL by PID and started again on the same store and ports; without
any new REGISTER

* alice's outbound INVITE is accepted and reaches the carrier (it used to get
  ``403 Not Registered``: the registrar lived in memory only), and
* a carrier's call back to the card's number rings alice at the contact and
  flow she registered from before the crash.

Every process is stopped by its PID (the ``processes`` fixture).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from simulator.pytest_plugin import sipp_binary
from simulator.testkit import (
    SippResult,
    finish_sipp,
    free_ports,
    free_udp_port,
    sipp_command,
    start_sipp,
)
from tests.integration.conftest import DialgateProcess, start_dialgate
from tests.policy_sipp.conftest import SIPP_DIR, gateway_toml, run_agent, start_carrier

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HERE = Path(__file__).resolve().parent / "sipp"
CARD_NUMBER = "+8613800000001"  # c1 of gateway_toml


def start_on(tmp: Path, port: int, extra_toml: str) -> DialgateProcess:
    """``dialgate run`` on udp/tcp 127.0.0.1:``port`` with the store in ``tmp`` (same every start),
    ready once its stored registrations are loaded."""
    return start_dialgate(tmp, extra_toml, port=port, ready_event="registrar.loaded")


def kill_9(gw: DialgateProcess) -> None:
    """SIGKILL ``dialgate run`` by its PID and reap it."""
    os.kill(gw.proc.pid, signal.SIGKILL)
    gw.proc.wait(10)
    assert -signal.SIGKILL == gw.proc.returncode


def sipp(
    scenario: Path,
    workdir: Path,
    *,
    port: int,
    target: tuple[str, int] | None = None,
    numbers: list[str] | None = None,
    timeout: int = 20,
) -> subprocess.Popen[bytes]:
    """Start SIPp on 127.0.0.1:``port`` (a client when ``target`` is given, else a server)."""
    extra = ["-m", "1", "-timeout_error"]
    if numbers is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        csv = workdir / "numbers.csv"
        csv.write_text("SEQUENTIAL\n" + "".join(f"{n};\n" for n in numbers))
        extra += ["-inf", str(csv)]
    cmd = sipp_command(
        scenario,
        port=port,
        target=target,
        workdir=workdir,
        timeout=timeout,
        binary=sipp_binary(),
        extra=extra,
    )
    return start_sipp(cmd, workdir)


def register_from(port: int, gw: DialgateProcess, workdir: Path) -> SippResult:
    """alice REGISTERs (401, then digest) from 127.0.0.1:``port``; returns the run."""
    proc = sipp(SIPP_DIR / "register.xml", workdir, port=port, target=gw.addresses["udp"])
    result = finish_sipp(proc, workdir, 20)
    assert (0, 1) == (result.returncode, result.successful), result.stats
    return result


def test_kill_9_restart_alice_calls_out_without_registering_again(
    tmp_path: Path, processes: list
) -> None:
    """Registered → SIGKILL → restart: alice's INVITE is answered, no 403 Not Registered."""
    carrier = start_carrier(tmp_path / "carrier")
    processes.append(carrier)
    port = free_ports(1)[0]
    config = gateway_toml(carrier.port)
    gw = start_on(tmp_path, port, config)
    processes.append(gw)
    reg = register_from(free_udp_port(), gw, tmp_path / "register")
    [ok] = [m for m in reg.messages if m.direction == "received" and m.status == 200]
    assert "tag=" in (ok.header("To") or "")  # RFC 3261 §8.2.6.2

    kill_9(gw)
    gw2 = start_on(tmp_path, port, config)
    processes.append(gw2)
    assert 1 == gw2.events("registrar.loaded")[-1]["bindings"]

    result = run_agent("agent_call.xml", gw2.addresses["udp"], tmp_path / "call", ["13912345678"])
    assert (0, 1, 0) == (result.returncode, result.successful, result.failed), result.stats
    assert [200] == [m.status for m in result.finals()]
    assert ["+8613912345678"] == carrier.callees()
    # No REGISTER reached the restarted gateway.
    assert [] == [e for e in gw2.events("sip.request.challenged") if e.get("method") == "REGISTER"]


def test_kill_9_restart_a_call_back_rings_alice_at_her_registered_flow(
    tmp_path: Path, processes: list
) -> None:
    """Registered from port P → SIGKILL → restart: the carrier's call back rings alice on P."""
    carrier_port = free_udp_port()
    alice_port = free_udp_port()
    port = free_ports(1)[0]
    config = gateway_toml(carrier_port) + '\n[inbound]\nfallback_user = "alice"\n'
    gw = start_on(tmp_path, port, config)
    processes.append(gw)
    register_from(alice_port, gw, tmp_path / "register")

    kill_9(gw)
    gw2 = start_on(tmp_path, port, config)
    processes.append(gw2)

    alice = sipp(HERE / "alice_uas.xml", tmp_path / "alice", port=alice_port, timeout=30)
    processes.append(alice)
    time.sleep(0.3)  # SIPp binds its socket
    call = sipp(
        HERE / "carrier_call.xml",
        tmp_path / "carrier",
        port=carrier_port,
        target=gw2.addresses["udp"],
        numbers=[CARD_NUMBER],
    )
    processes.append(call)
    callback = finish_sipp(call, tmp_path / "carrier", 30)
    assert (0, 1) == (callback.returncode, callback.successful), callback.stats
    answered = finish_sipp(alice, tmp_path / "alice", 10)
    [invite] = [m for m in answered.messages if m.direction == "received" and m.method == "INVITE"]
    assert f"sip:alice@127.0.0.1:{alice_port}" == invite.first_line.split()[1]
    assert 1 == answered.successful, answered.stats

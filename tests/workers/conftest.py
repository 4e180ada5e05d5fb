"""``dialgate run --workers N`` on the wire: SIPp agents → a set of workers → a SIPp carrier.

Reuses the policy tests' harness (``start_dialgate``: a real ``dialgate run`` on
free loopback ports, JSON logs of every worker on its stderr, stopped by PID;
the SIPp carrier and agents of :mod:`simulator.testkit`). The agents run with
``-t un`` (one UDP socket per call), so the kernel spreads their INVITEs over
the workers, and follow the Contact of the gateway's 200 for their ACK and BYE
(``sipp/agent_contact.xml.in``), as RFC 3261 §12.1.2 asks of a UA. Every
process started here is stopped by its PID.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from simulator.pytest_plugin import (
    processes,  # noqa: F401  (a fixture of this folder)
    sipp_binary,
)
from simulator.testkit import start_sipp_agent, wait_until
from tests.policy_sipp.conftest import DialgateProcess, start_dialgate

SIPP_DIR = Path(__file__).resolve().parent / "sipp"
SIP_EXTRA = "t1 = 0.1\n"  # 64*T1 = 6.4 s: a CANCEL nobody answers ends in time


@dataclass
class WorkerSet:
    """A running ``dialgate run --workers N`` and what its log lines say about it."""

    gw: DialgateProcess
    count: int

    def pids(self) -> dict[int, int]:
        """Worker index → PID of its newest process."""
        return {int(e["worker"]): int(e["pid"]) for e in self.gw.events("worker.started")}

    def private_udp(self) -> dict[int, int]:
        """Worker index → its private UDP port."""
        return {
            int(e["worker"]): int(e["port"])
            for e in self.gw.events("listening.private")
            if e["transport"] == "udp"
        }

    def b_legs(self) -> dict[str, tuple[int, str]]:
        """A-leg Call-ID → (worker index, B-leg Call-ID) of every B-leg INVITE sent."""
        return {
            str(e["call_id"]): (int(e["worker"]), str(e["b_call_id"]))
            for e in self.gw.events("call.b_leg")
        }

    def per_worker(self, event: str) -> Counter[int]:
        """How many ``event`` lines each worker logged."""
        return Counter(int(e["worker"]) for e in self.gw.events(event) if "worker" in e)

    def admin(self) -> str:
        """The admin API of the newest worker 0."""
        return str(self.gw.events("admin.listening")[-1]["url"]).rstrip("/")


def start_workers(
    tmp: Path, config: str, *, count: int = 2, sip_extra: str = SIP_EXTRA
) -> WorkerSet:
    """``dialgate run --workers count`` with ``config``; returns once every worker is ready."""
    # DEBUG: the tests follow each call's steps (``call.b_leg``: which worker sent it).
    gw = start_dialgate(tmp, config, sip_extra=sip_extra, workers=count, log_level="debug")
    wait_until(lambda: len(gw.events("ready")) >= count, 20, f"{count} workers ready")
    return WorkerSet(gw, count)


def agent_scenario(workdir: Path, hold_ms: int) -> Path:
    """The Contact-following agent scenario, holding answered calls ``hold_ms``."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "agent_contact.xml"
    path.write_text(
        (SIPP_DIR / "agent_contact.xml.in").read_text().replace("HOLD_MS", str(hold_ms))
    )
    return path


def start_agents(
    target: tuple[str, int],
    workdir: Path,
    numbers: list[str],
    *,
    rate: int,
    hold_ms: int,
    timeout: int = 60,
) -> subprocess.Popen[bytes]:
    """One SIPp agent (alice) with a UDP socket per call (``-t un``), logging the
    Contact each 200 named (``contacts``)."""
    sipp_binary()  # fails when SIPp is missing
    return start_sipp_agent(
        agent_scenario(workdir, hold_ms),
        target,
        workdir,
        calls=len(numbers),
        rate=rate,
        numbers=numbers,
        timeout=timeout,
        hold_ms=hold_ms,
        extra=[
            "-t",
            "un",
            "-max_socket",
            "1000",
            "-trace_logs",
            "-log_file",
            str(workdir / "contacts.log"),
        ],
    )


_CONTACT = re.compile(r"contact (\S+) ([0-9.]+):([0-9]+)")


def contacts(workdir: Path) -> dict[str, int]:
    """A-leg Call-ID → the port of the Contact in the gateway's 200 (where the agent's
    ACK and BYE went)."""
    path = workdir / "contacts.log"
    if not path.exists():
        return {}
    return {m.group(1): int(m.group(3)) for m in _CONTACT.finditer(path.read_text())}


def numbers(prefix: str, n: int) -> list[str]:
    """``n`` distinct Chinese mobile numbers (the policy tests' carrier region)."""
    return [f"139{prefix}{i:04d}" for i in range(n)]


__all__ = [
    "SIPP_DIR",
    "WorkerSet",
    "agent_scenario",
    "contacts",
    "numbers",
    "start_agents",
    "start_workers",
]

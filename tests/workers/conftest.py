"""``dialgate run --workers N`` on the wire: SIPp agents → a set of workers → a SIPp carrier.

Reuses the policy tests' harness (``start_dialgate``: a real ``dialgate run`` on
free loopback ports, JSON logs of every worker on its stderr, stopped by PID;
the SIPp carrier and agents of :mod:`simulator.testkit`). The agents run with
``-t un`` (one UDP socket per call), so the kernel spreads their INVITEs over
the workers, and follow the Contact of the gateway's 200 for their ACK and BYE
(``sipp/agent_contact.xml.in``), as RFC 3261 §12.1.2 asks of a UA. A test starts
them through the ``rig`` fixture (:class:`Rig`); every process started here is
stopped by its PID.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from simulator.pytest_plugin import (
    processes,  # noqa: F401  (a fixture of this folder)
    sipp_binary,
)
from simulator.testkit import start_sipp_agent, wait_until
from tests.policy_sipp.conftest import (
    DialgateProcess,
    SippCarrier,
    gateway_toml,
    register_alice,
    start_carrier,
    start_dialgate,
)

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


def agent_scenario(workdir: Path, hold_ms: int, *, follow_contact: bool = True) -> Path:
    """The Contact-following agent scenario, holding answered calls ``hold_ms``;
    ``follow_contact=False``: its ACK and BYE go where its INVITE went (the shared port),
    as SIPp's built-in scenarios and some phones do."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "agent_contact.xml"
    text = (SIPP_DIR / "agent_contact.xml.in").read_text().replace("HOLD_MS", str(hold_ms))
    if not follow_contact:
        text = "\n".join(line for line in text.splitlines() if "<setdest" not in line)
    path.write_text(text)
    return path


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


@dataclass
class Rig:
    """What a wire test starts under ``tmp``: every process goes into ``processes`` (the
    fixture that stops each by PID at teardown, the last started first)."""

    tmp: Path
    processes: list[Any]

    def workers(self, config: str, *, count: int = 2) -> WorkerSet:
        """``dialgate run --workers count`` with ``config``; returns once every worker is ready."""
        # DEBUG: the tests follow each call's steps (``call.b_leg``: which worker sent it).
        gw = start_dialgate(self.tmp, config, sip_extra=SIP_EXTRA, workers=count, log_level="debug")
        self.processes.append(gw)
        wait_until(lambda: len(gw.events("ready")) >= count, 20, f"{count} workers ready")
        return WorkerSet(gw, count)

    def carrier_and_workers(
        self,
        carrier_timeout: int,
        *,
        cards: int = 2,
        quota: dict[str, int] | None = None,
        balance: str | None = None,
        **carrier: Any,
    ) -> tuple[SippCarrier, WorkerSet]:
        """A SIPp carrier (``start_carrier``; ``scenario``, ``extra`` in ``carrier``), the
        workers in front of it (``gateway_toml`` with ``cards`` and ``quota``; ``balance``:
        ``[server] worker_balance``), and alice registered through their shared port."""
        carrier_uas = start_carrier(self.tmp / "carrier", carrier_timeout, **carrier)
        self.processes.append(carrier_uas)
        config = gateway_toml(carrier_uas.port, cards=cards, quota=quota)
        if balance is not None:
            config += f'\n[server]\nworker_balance = "{balance}"\n'
        ws = self.workers(config)
        register_alice(ws.gw.addresses["udp"], self.tmp / "register")
        return carrier_uas, ws

    def agents(
        self,
        ws: WorkerSet,
        workdir: Path,
        callees: list[str],
        *,
        rate: int,
        hold_ms: int,
        timeout: int = 60,
        sockets: str = "un",
        follow_contact: bool = True,
    ) -> subprocess.Popen[bytes]:
        """One SIPp agent (alice) calling ``callees`` at the workers' shared UDP port with a
        UDP socket per call (``-t un``; ``sockets="u1"``: one for every call, as a dialer
        or a PBX in front), logging the Contact each 200 named (``contacts``)."""
        sipp_binary()  # fails when SIPp is missing
        agent = start_sipp_agent(
            agent_scenario(workdir, hold_ms, follow_contact=follow_contact),
            ws.gw.addresses["udp"],
            workdir,
            calls=len(callees),
            rate=rate,
            numbers=callees,
            timeout=timeout,
            hold_ms=hold_ms,
            extra=[
                "-t",
                sockets,
                "-max_socket",
                "1000",
                "-trace_logs",
                "-log_file",
                str(workdir / "contacts.log"),
            ],
        )
        self.processes.append(agent)
        return agent


@pytest.fixture
def rig(tmp_path: Path, processes: list[Any]) -> Rig:  # noqa: F811  (the imported fixture)
    """A :class:`Rig` in the test's ``tmp_path``."""
    return Rig(tmp_path, processes)


__all__ = [
    "SIPP_DIR",
    "Rig",
    "WorkerSet",
    "agent_scenario",
    "contacts",
    "numbers",
]

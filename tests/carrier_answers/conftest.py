"""Carrier answers on the wire (issue 12): SIPp agent → ``dialgate run`` → scripted SIPp carrier.

Built on the test kit's SIPp harness (:mod:`simulator.testkit`) and
tests/policy_sipp, tests/integration: a real
``dialgate run`` subprocess on free loopback ports (JSON logs on stderr), the
agent alice with digest, and SIPp carriers bounded by ``-timeout`` whose
message trace (``-trace_msg``) tells which INVITEs reached them. The carrier
scenario (``sipp/carrier.xml``) gives a scripted answer, chosen with SIPp's
``-set``, to the INVITEs from card c1's number (or to all of them) and
answers every other INVITE with 180 + 200. The agent scenario
(``sipp/agent_any.xml``) accepts any final answer; the tests read the status
from its trace. Every process started here is stopped by its PID.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
    run_sipp_agent,
)
from tests.integration.conftest import DialgateProcess, start_dialgate
from tests.policy_sipp.conftest import cli_json
from tests.policy_sipp.conftest import start_carrier as policy_start_carrier

SIPP_DIR = Path(__file__).resolve().parent / "sipp"

NUMBERS = {"c1": "+8613800000001", "c2": "+8613800000002"}
"""Caller number of each card (``From`` of its INVITEs at the carrier)."""

SUSPEND_RULE = (
    '\n  [[carriers.rules]]\n  status = 403\n  match = "(?i)suspend"\n  reason = "violation"'
)
"""The carrier rule every test configures: a 403 whose text says "suspend" proves the card dead."""


# --- configuration ---------------------------------------------------------------------


def gateway_toml(
    carriers: Mapping[str, int],
    *,
    card_carriers: Sequence[str] = ("carrier-a", "carrier-a"),
    profiles: Mapping[str, Mapping[str, int]] | None = None,
    card_profiles: Sequence[str] | None = None,
    bound_card: str | None = None,
    carrier_extra: str = "",
    extra: str = "",
) -> str:
    """alice, the ``carriers`` (name → SIPp port, each with :data:`SUSPEND_RULE`), cards c1, c2….

    Card ``c<i>`` goes to ``card_carriers[i-1]`` with quota profile
    ``card_profiles[i-1]`` (default: every card on profile ``q`` with no
    practical limit). ``bound_card`` binds alice to a card; ``carrier_extra``
    lines go into every ``[[carriers]]`` table, ``extra`` at the end.
    """
    return calls_toml(
        carriers,
        card_carriers=card_carriers,
        profiles=profiles,
        card_profiles=card_profiles,
        bound_card=bound_card,
        carrier_extra=carrier_extra,
        carrier_rules=SUSPEND_RULE,
        extra=extra,
    )


def start_gateway(tmp: Path, extra_toml: str, *, sip_extra: str = "") -> DialgateProcess:
    """``start_dialgate`` of tests/integration, with extra ``[sip]`` keys (e.g. ``t1 = 0.05``)."""
    return start_dialgate(tmp, extra_toml, sip_extra=sip_extra)


# --- the scripted SIPp carrier ------------------------------------------------------------


def start_carrier(
    workdir: Path,
    *,
    answer: str = "none",
    target: str = "c1",
    ring: bool = False,
    timeout: int = 60,
) -> SippCarrier:
    """A SIPp carrier (``sipp/carrier.xml``) on a free UDP port.

    ``answer`` (402, 403, 403-suspended, 404, 408, 480, 500, 503, silent) goes to
    the INVITEs of ``target`` ("c1": From is c1's number; "all"; "none"), after
    a 180 when ``ring``; every other INVITE is answered 180 + 200. It exits by
    itself after ``timeout`` seconds; tests stop it by PID.
    """
    return policy_start_carrier(
        workdir,
        timeout,
        scenario=SIPP_DIR / "carrier.xml",
        extra=[
            "-set",
            "target",
            target,
            "-set",
            "ring",
            "yes" if ring else "no",
            "-set",
            "answer",
            answer,
            "-m",
            "10000",
        ],
    )


_USER = re.compile(r"sip:([^@;>]+)@")


@dataclass(frozen=True)
class Attempt:
    """One INVITE the carrier received (retransmissions folded: one per Call-ID)."""

    callee: str  # To user, E.164
    call_id: str
    caller: str  # From user: the card's number


def attempts(carrier: SippCarrier) -> list[Attempt]:
    """The distinct INVITEs (by Call-ID) the carrier received, in order of arrival."""
    seen: dict[str, Attempt] = {}
    for m in carrier.invites():
        call_id = m.header("Call-ID") or ""
        if call_id in seen:
            continue  # a retransmission: same Call-ID
        to = _USER.search(m.header("To") or "")
        frm = _USER.search(m.header("From") or "")
        seen[call_id] = Attempt(
            callee=to.group(1) if to else "",
            call_id=call_id,
            caller=frm.group(1) if frm else "",
        )
    return list(seen.values())


def attempts_to(carrier: SippCarrier, callee: str) -> list[Attempt]:
    """The distinct INVITEs to ``callee`` (E.164) the carrier received."""
    return [a for a in attempts(carrier) if a.callee == callee]


# --- the SIPp agent -------------------------------------------------------------------------


def run_calls(
    target: tuple[str, int],
    workdir: Path,
    numbers: Sequence[str],
    *,
    concurrent: int = 1,
    rate: int = 20,
    timeout: int = 20,
    hold_ms: int = 200,
) -> SippResult:
    """alice calls each of ``numbers`` (``sipp/agent_any.xml``), ``concurrent`` calls at a time.

    Bounded by ``-m``, SIPp's ``-timeout`` and our own wait (then stopped by PID).
    """
    sipp_binary()  # fails when SIPp is missing
    return run_sipp_agent(
        SIPP_DIR / "agent_any.xml",
        target,
        workdir,
        numbers,
        rate=rate,
        timeout=timeout,
        hold_ms=hold_ms,
        limit=concurrent,
    )


def final_statuses(result: SippResult) -> list[int]:
    """The agent's final INVITE answers (407 challenges left out), one per call, in order."""
    seen: dict[str, int] = {}
    for m in result.finals():
        call_id = m.header("Call-ID") or ""
        if call_id not in seen and m.status is not None:
            seen[call_id] = m.status
    return list(seen.values())


# --- card states ----------------------------------------------------------------------------


def card(config: Path, card_id: str) -> dict[str, Any]:
    """``dialgate cards show ID --json``: state, reason, usage and timeline."""
    shown: dict[str, Any] = cli_json(config, "cards", "show", card_id)
    return shown


def card_state(config: Path, card_id: str, expected: str, within: float = 3.0) -> str:
    """The card's state, polled until it is ``expected`` or ``within`` seconds passed."""
    deadline = time.monotonic() + within
    while True:
        state = str(card(config, card_id)["state"])
        if state == expected or time.monotonic() >= deadline:
            return state
        time.sleep(0.2)


Started = list[subprocess.Popen[bytes] | DialgateProcess | SippCarrier]
"""What the ``processes`` fixture holds."""

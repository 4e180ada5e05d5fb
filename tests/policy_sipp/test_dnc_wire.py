"""A DNC number gets 403 ``dnc`` and never reaches the carrier; emergency numbers pass.

SIPp agent (alice, digest) → ``dialgate run`` → SIPp carrier. The carrier is
bounded with ``-m 2``: only the two calls expected to leave (one ordinary
number, one emergency number that is also on the DNC list) may reach it, and
its message trace must show exactly those two INVITEs — none for the DNC
numbers that were dialled first.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.store.sqlite import SQLiteStore
from tests.policy_sipp.conftest import (
    cli_json,
    gateway_toml,
    register_alice,
    run_agent,
    start_carrier,
    start_dialgate,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DNC_IMPORTED = ["13910000001", "13910000002"]
DNC_ADDED = "13910000003"
ALLOWED = "13910000009"
EMERGENCY = "110"  # CN police: an emergency number of the configured region


def test_dnc_gets_403_dnc_carrier_sees_nothing_emergency_passes(
    tmp_path: Path, processes: list
) -> None:
    carrier = start_carrier(tmp_path / "carrier")
    processes.append(carrier)
    gw = start_dialgate(tmp_path, gateway_toml(carrier.port))
    processes.append(gw)
    # The DNC list as an operator fills it: an imported file and one number added by hand.
    dnc_file = tmp_path / "dnc.txt"
    dnc_file.write_text("".join(f"{n}\n" for n in DNC_IMPORTED))
    imported = cli_json(gw.config, "dnc", "import", str(dnc_file))
    added = cli_json(gw.config, "dnc", "add", DNC_ADDED)
    assert added["added"] is True, added
    # The CLI refuses "110" (not a subscriber number), so it goes on the list through the
    # store: the emergency context's destination is the raw digits.
    store = SQLiteStore(tmp_path / "dialgate.db")
    try:
        assert store.add_dnc(EMERGENCY, time.time(), source="test", note="emergency on DNC")
        assert all(store.is_dnc(f"+86{n}") for n in [*DNC_IMPORTED, DNC_ADDED])
    finally:
        store.close()
    target = gw.addresses["udp"]
    register_alice(target, tmp_path / "register")

    dnc = [*DNC_IMPORTED, DNC_ADDED]
    refused = run_agent("agent_reject_403.xml", target, tmp_path / "agent_dnc", dnc)
    finals = refused.finals()
    print(
        f"dnc import: {imported}; dnc calls: {refused.successful} refused as expected, {refused.failed} failed"
    )
    assert (0, len(dnc), 0) == (refused.returncode, refused.successful, refused.failed)
    assert [403] * len(dnc) == [m.status for m in finals]
    assert ['SIP;cause=403;text="dnc"'] * len(dnc) == [m.header("Reason") for m in finals]
    assert [None] * len(dnc) == [m.header("Retry-After") for m in finals]
    blocked = [e for e in gw.events("call.ended") if e["outcome"] == "blocked"]
    assert ["dnc"] * len(dnc) == [e["reason"] for e in blocked]
    assert [] == carrier.invites(), "a DNC call reached the carrier"

    # Then one ordinary number and the emergency number (on DNC): both must reach the carrier.
    passed = run_agent("agent_call.xml", target, tmp_path / "agent_ok", [ALLOWED, EMERGENCY])
    assert (0, 2, 0) == (passed.returncode, passed.successful, passed.failed)
    assert 0 == carrier.stop()
    callees = carrier.callees()
    print(f"carrier INVITEs: {callees}")
    assert 2 == len(callees)
    assert not any(n in c for c in callees for n in dnc), callees
    assert any(ALLOWED in c for c in callees[:1]), callees
    assert callees[1].endswith(EMERGENCY), callees

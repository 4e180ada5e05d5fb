"""Out of the callee's calling hours: 403 ``calling-hours`` with Retry-After = seconds to opening.

The window is chosen at test time so that it is closed now in the callee's
zone (Asia/Shanghai for +86 numbers; no DST there): it opens two hours after
the current local minute and lasts an hour. Retry-After must point at that
opening, within a few seconds for the time the calls take. An emergency
number still passes, and it is the only INVITE the SIPp carrier receives.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.policy_sipp.conftest import (
    gateway_toml,
    register_alice,
    run_agent,
    start_carrier,
    start_dialgate,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CALLEE_ZONE = ZoneInfo("Asia/Shanghai")
CALLEES = ["13910000021", "01062345678"]  # a mobile and a Beijing fixed line
EMERGENCY = "120"  # CN ambulance
MARGIN = 3  # seconds: call set-up time plus rounding


def closed_window(now: datetime) -> tuple[str, datetime]:
    """A one-hour daily window opening two hours after ``now``'s minute; and that opening."""
    opening = now.astimezone(CALLEE_ZONE).replace(second=0, microsecond=0) + timedelta(hours=2)
    closing = opening + timedelta(hours=1)
    return f"{opening:%H:%M}-{closing:%H:%M}", opening


def test_out_of_hours_gets_403_with_retry_after_to_opening(tmp_path: Path, processes: list) -> None:
    spec, opening = closed_window(datetime.now(CALLEE_ZONE))
    carrier = start_carrier(tmp_path / "carrier")
    processes.append(carrier)
    gw = start_dialgate(tmp_path, gateway_toml(carrier.port, calling_hours=spec))
    processes.append(gw)
    target = gw.addresses["udp"]
    register_alice(target, tmp_path / "register")

    before = time.time()
    refused = run_agent("agent_reject_403.xml", target, tmp_path / "agent_hours", CALLEES)
    after = time.time()
    finals = refused.finals()
    retry = [int(m.header("Retry-After") or -1) for m in finals]
    expected = (opening.timestamp() - after, opening.timestamp() - before)
    print(
        f"window {spec} (Asia/Shanghai); Retry-After {retry}; expected {expected[0]:.1f}..{expected[1]:.1f}"
    )
    assert (0, len(CALLEES), 0) == (refused.returncode, refused.successful, refused.failed)
    assert [403] * len(CALLEES) == [m.status for m in finals]
    assert ['SIP;cause=403;text="calling-hours"'] * len(CALLEES) == [
        m.header("Reason") for m in finals
    ]
    for seconds in retry:
        assert expected[0] - MARGIN <= seconds <= expected[1] + MARGIN
    blocked = [e for e in gw.events("call.ended") if e["outcome"] == "blocked"]
    assert ["calling-hours"] * len(CALLEES) == [e["reason"] for e in blocked]
    assert [] == carrier.invites(), "a call outside calling hours reached the carrier"

    passed = run_agent("agent_call.xml", target, tmp_path / "agent_emergency", [EMERGENCY])
    assert (0, 1, 0) == (passed.returncode, passed.successful, passed.failed)
    assert 0 == carrier.stop()
    assert [EMERGENCY] == carrier.callees()

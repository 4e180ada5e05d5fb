"""Two cards limited to 5 calls/minute: call 11 within the minute gets 503 ``no-card-available``.

The first 10 calls complete at the SIPp carrier (5 presented from each card's
number); the 11th is answered 503 with a Retry-After that points at the
moment the first card frees (60 s after the run's first call start, counted
from when the 11th was refused). An emergency call still passes with every
card over quota. Usage is read back through ``dialgate cards list``.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from tests.policy_sipp.conftest import (
    cli_json,
    gateway_toml,
    register_alice,
    run_agent,
    start_carrier,
    start_dialgate,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PER_MINUTE = 5
EMERGENCY = "119"  # CN fire


def test_call_11_gets_503_no_card_available_emergency_still_passes(
    tmp_path: Path, processes: list
) -> None:
    carrier = start_carrier(tmp_path / "carrier")
    processes.append(carrier)
    gw = start_dialgate(
        tmp_path, gateway_toml(carrier.port, quota={"calls_per_minute": PER_MINUTE}, cards=2)
    )
    processes.append(gw)
    target = gw.addresses["udp"]
    register_alice(target, tmp_path / "register")

    first = [f"139100001{i:02d}" for i in range(2 * PER_MINUTE)]
    started = time.time()
    ok = run_agent("agent_call.xml", target, tmp_path / "agent_ten", first, rate=10)
    assert (0, 10, 0) == (ok.returncode, ok.successful, ok.failed), ok.stats
    assert first == [c.removeprefix("+86") for c in carrier.callees()]
    presented = Counter(m.header("From").split(">")[0] for m in carrier.invites())
    assert {"<sip:+8613800000001@127.0.0.1": 5, "<sip:+8613800000002@127.0.0.1": 5} == presented

    refused = run_agent("agent_reject_503.xml", target, tmp_path / "agent_11th", ["13910000199"])
    refused_at = time.time()
    finals = refused.finals()
    assert (0, 1, 0) == (refused.returncode, refused.successful, refused.failed), refused.stats
    assert [503] == [m.status for m in finals]
    assert ['SIP;cause=503;text="no-card-available"'] == [m.header("Reason") for m in finals]
    retry = int(finals[0].header("Retry-After") or -1)
    lower = 60 - (refused_at - started) - 1
    print(f"11th call: 503 Retry-After {retry} (bounds {lower:.1f}..60); cards {dict(presented)}")
    assert lower <= retry <= 60
    assert 10 == len(carrier.invites()), "the 11th call reached the carrier"
    usage = {c["id"]: c["usage"]["calls_per_minute"] for c in cli_json(gw.config, "cards", "list")}
    assert {"c1": {"used": 5, "limit": 5}, "c2": {"used": 5, "limit": 5}} == {
        k: {"used": v["used"], "limit": v["limit"]} for k, v in usage.items()
    }

    passed = run_agent("agent_call.xml", target, tmp_path / "agent_emergency", [EMERGENCY])
    assert (0, 1, 0) == (passed.returncode, passed.successful, passed.failed)
    assert 0 == carrier.stop()
    assert 11 == len(carrier.callees())
    assert EMERGENCY == carrier.callees()[-1]


def test_unbound_agent_stays_on_one_card_while_it_has_headroom(
    tmp_path: Path, processes: list
) -> None:
    """4 calls, each card allows 5 a minute: all 4 leave from the same card's number."""
    carrier = start_carrier(tmp_path / "carrier")
    processes.append(carrier)
    gw = start_dialgate(
        tmp_path, gateway_toml(carrier.port, quota={"calls_per_minute": PER_MINUTE}, cards=2)
    )
    processes.append(gw)
    target = gw.addresses["udp"]
    register_alice(target, tmp_path / "register")
    numbers = [f"139100002{i:02d}" for i in range(PER_MINUTE - 1)]
    ok = run_agent("agent_call.xml", target, tmp_path / "agent", numbers, rate=10)
    assert (0, len(numbers), 0) == (ok.returncode, ok.successful, ok.failed), ok.stats
    presented = [m.header("From").split(">")[0] for m in carrier.invites()]
    print(f"caller numbers presented, in order: {presented}")
    assert len(numbers) == len(presented)
    assert 1 == len(set(presented)), presented

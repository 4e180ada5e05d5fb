"""Issue 13 / issue 19 item 8 on the wire: SIPp agent (alice) → ``dialgate run`` → SIPp carrier.

One gateway with ``[policy.frequency]`` (the agent's campaign ``policy-sipp`` gets its own
cap of 2 attempts a day) and ``[policy.agents] complaints_per_day = 1``:

- attempt 3 to one number → 403 ``frequency-cap`` with the seconds until attempt 1 is a
  day old; ``numbers show`` says the same; ``numbers reset --reason`` lets the next one go;
- a complaint without ``--card`` lands on the card and Call-ID of the last answered call
  (the CDR); the agent's 2nd complaint of the day pauses it: its next call is 403
  ``agent-limit`` with Retry-After; ``agents resume`` lifts it;
- removing the complaint's DNC entry without ``--force --reason`` is refused;
- invalid numbers (a 9-digit Chinese mobile, a 14-digit lead) are 484 ``address-incomplete``.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from simulator.testkit import SippResult
from tests.integration.conftest import dialgate_command
from tests.policy_sipp.conftest import (
    cli_json,
    gateway_toml,
    register_alice,
    run_agent,
    start_carrier,
    start_dialgate,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAY = 86400
POLICY = """
[policy.frequency]
attempts = 5
attempts_window = "1d"
answers = 10
answers_window = "1d"
  [policy.frequency.campaigns.policy-sipp]
  attempts = 2

[policy.agents]
complaints_per_day = 1
"""


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALGATE_")}
    return subprocess.run(
        [*dialgate_command(), *args, "--config", str(config)],
        env=env,
        cwd=config.parent,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _refused(result: SippResult, code: int, reason: str) -> int | None:
    finals = result.finals()
    assert (0, 1, 0) == (result.returncode, result.successful, result.failed), result.stats
    assert [code] == [m.status for m in finals]
    assert [f'SIP;cause={code};text="{reason}"'] == [m.header("Reason") for m in finals]
    retry = finals[0].header("Retry-After")
    return None if retry is None else int(retry)


def test_frequency_complaints_agent_pause_and_484_on_the_wire(
    tmp_path: Path, processes: list
) -> None:
    carrier = start_carrier(tmp_path / "carrier", timeout=120)
    processes.append(carrier)
    gw = start_dialgate(tmp_path, gateway_toml(carrier.port) + POLICY)
    processes.append(gw)
    target = gw.addresses["udp"]
    register_alice(target, tmp_path / "register")

    # --- frequency: the campaign's 2 attempts a day --------------------------------------
    number = "13910000201"
    first_at = time.time()
    ok = run_agent("agent_call.xml", target, tmp_path / "f_ok", [number, number], rate=2)
    assert (0, 2, 0) == (ok.returncode, ok.successful, ok.failed), ok.stats
    third = run_agent("agent_reject_403.xml", target, tmp_path / "f_third", [number])
    refused_at = time.time()
    retry = _refused(third, 403, "frequency-cap")
    assert retry is not None and DAY - (refused_at - first_at) - 2 <= retry <= DAY, retry
    assert 2 == len(carrier.invites()), "attempt 3 reached the carrier"
    shown = cli_json(gw.config, "numbers", "show", number, "--campaign", "policy-sipp")
    print(f"attempt 3: 403 Retry-After {retry}; numbers show: {shown['retry_after']}")
    assert (2, 2, ["frequency-cap"]) == (
        shown["attempts"]["count"],
        shown["attempts"]["max"],
        shown["blocked_by"],
    )
    assert abs(shown["retry_after"] - retry) <= 3
    plain = cli_json(gw.config, "numbers", "show", number)  # no campaign: 5 a day
    assert (2, 5, True) == (
        plain["attempts"]["count"],
        plain["attempts"]["max"],
        plain["callable_now"],
    )
    reset = cli_json(gw.config, "numbers", "reset", number, "--reason", "test lead re-imported")
    assert {"attempts": 2, "answers": 2} == reset["cleared"]
    again = run_agent("agent_call.xml", target, tmp_path / "f_after_reset", [number])
    assert (0, 1, 0) == (again.returncode, again.successful, again.failed), again.stats

    # --- complaints: card from the CDR, the 2nd of the day pauses alice ------------------
    a, b = "13910000202", "13910000203"
    calls = run_agent("agent_call.xml", target, tmp_path / "c_calls", [a, b], rate=2)
    assert (0, 2, 0) == (calls.returncode, calls.successful, calls.failed), calls.stats
    cdrs = {r["call_id"]: r for r in cli_json(gw.config, "cdrs", "export")}
    call_a = next(r for r in cdrs.values() if r["destination"].endswith(a[-4:]) and r["answer_at"])
    first = cli_json(gw.config, "complaint", "add", a)
    assert (call_a["cards"][-1], call_a["call_id"], "alice", "cdr", False) == (
        first["card"],
        first["call_id"],
        first["agent"],
        first["found"],
        first["agent_paused"],
    )
    first_complaint_at = time.time()
    second = cli_json(gw.config, "complaint", "add", b)
    assert second["agent_paused"] is True, second
    paused = run_agent("agent_reject_403.xml", target, tmp_path / "c_paused", ["13910000204"])
    paused_at = time.time()
    retry = _refused(paused, 403, "agent-limit")
    print(f"alice paused: 403 agent-limit Retry-After {retry}")
    assert retry is not None and DAY - (paused_at - first_complaint_at) - 2 <= retry <= DAY
    assert cli_json(gw.config, "agents", "show", "alice")["paused"] is True
    resumed = cli_json(gw.config, "agents", "resume", "alice")
    assert resumed["resumed"] is True
    back = run_agent("agent_call.xml", target, tmp_path / "c_resumed", ["13910000204"])
    assert (0, 1, 0) == (back.returncode, back.successful, back.failed), back.stats

    # --- a complaint's DNC entry stays without --force --reason --------------------------
    refused = _cli(gw.config, "dnc", "remove", a)
    assert 1 == refused.returncode
    assert "because of a complaint: removing it needs --force and --reason TEXT" in refused.stderr
    assert cli_json(gw.config, "dnc", "check", a)["dnc"]["source"] == "complaint"
    removed = cli_json(gw.config, "dnc", "remove", a, "--force", "--reason", "callee withdrew")
    assert removed["removed"] is True

    # --- invalid numbers: 484 before any policy ------------------------------------------
    invalid = ["131234567", "12345678901234"]
    bad = run_agent("agent_reject_484.xml", target, tmp_path / "invalid", invalid, rate=2)
    finals = bad.finals()
    assert (0, 2, 0) == (bad.returncode, bad.successful, bad.failed), bad.stats
    assert [484, 484] == [m.status for m in finals]
    assert ['SIP;cause=484;text="address-incomplete"'] * 2 == [m.header("Reason") for m in finals]

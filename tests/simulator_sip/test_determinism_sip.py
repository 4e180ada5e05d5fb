"""SIP runs and the seed; the suspension storm over SIP, checked from the run's own records.

An in-process SIP run is on the discrete-event business clock: SIP work takes
no business time, so the same seed gives the same report, also near a
time-based limit. The seed fixes which agent dials which lead and how each
callee answers; without limits in play a SIP run also agrees lead by lead
with the offline replay. On the scaled clock (``realtime_clock=True``,
``--gateway``) call timing is real and totals may differ between runs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

import gateway.cli.simulate  # noqa: F401  (registers the subcommand)
from gateway.cli.main import main
from simulator.carrier import Carrier
from simulator.models import EventKind
from simulator.offline import run_offline
from simulator.runner import run_scenario
from simulator.scenario import Scenario, load_scenario, loads_scenario

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "scenarios"

OPEN = """
name = "open"
seed = 21

[clock]
start = 2026-03-02T10:00:00+08:00
speed = 2000.0
duration = "2h"

[carrier]
timezone = "Asia/Shanghai"

[carrier.answer]
answer = 0.4
busy = 0.2
no_answer = 0.2
decline = 0.2
ring_min = 2.0
ring_max = 4.0
busy_ring = 0.5
no_answer_seconds = 6.0
talk_mean = 20.0
talk_sigma = 0.5
talk_min = 5.0
talk_max = 40.0

[[cards]]
id = "c1"
number = "+8613800000001"
username = "c1"
password = "card-secret-1"

[[cards]]
id = "c2"
number = "+8613800000002"
username = "c2"
password = "card-secret-2"

[gateway]
guarded = false
mask_callees = false

[[agents]]
name = "alice"
password = "alice-pw"
card = "c1"

[[agents]]
name = "bob"
password = "bob-pw"
card = "c2"

[leads.generate]
count = 10
prefix = "+86139"
consent_share = 1.0

[pacing]
calls_per_minute_per_agent = 6.0
think_seconds = 1.0
"""

#: Outcomes decided by the callee (not by the gateway's or carrier's refusals).
_CALLEE = {200, 486, 480, 487, 603}


async def _per_lead(scenario: Scenario) -> dict[str, tuple[str, int]]:
    """{callee: (source, final status)} of a SIP run, skipping 503 retries of the gateway."""
    result = await run_scenario(scenario)
    assert 0 == result.leads_left
    out: dict[str, tuple[str, int]] = {}
    for source, r in result.results:
        if r.status == 503 and r.reason_text == "no-card-available":
            continue  # the card was still in use; the lead was retried
        assert r.callee not in out, "a lead was dialled twice"
        out[r.callee] = (source, r.status or 0)
    return out


async def test_sip_runs_agree_with_each_other_and_with_offline_lead_by_lead() -> None:
    """No limit in play: each lead gets the same agent and the same answer in every run."""
    scenario = loads_scenario(OPEN, "open.toml")
    first = await _per_lead(scenario)
    second = await _per_lead(scenario)
    offline = {c.callee: (c.source, c.status) for c in run_offline(scenario).calls}
    assert 10 == len(first)
    assert first == second
    assert first == offline
    assert {s for _, s in first.values()} <= _CALLEE
    assert len({s for _, s in first.values()}) > 1  # several outcomes: the check has teeth


async def test_suspension_storm_over_sip() -> None:
    """Failover keeps every source working until the pool runs out; then 503 + Retry-After,
    and no callee is ever put through twice."""
    storm = load_scenario(EXAMPLES / "suspension-storm.toml")
    seen: list[Carrier] = []
    result = await run_scenario(storm, speed=1500.0, on_ready=lambda c, _gw: seen.append(c))
    [carrier] = seen
    start = storm.start_epoch
    suspended_at = {e.card: e.time for e in result.carrier.events if e.kind is EventKind.SUSPENDED}
    # Every card of the pool got its scheduled suspension.
    assert {"c1", "c2", "c3", "c4"} == set(suspended_at)
    pool_gone = max(suspended_at.values())

    # No callee dialled twice: the carrier put each callee through at most once.
    reached = carrier.callees_reached()
    assert reached and len(reached) == len(set(reached))

    # Before the pool ran out every source kept placing calls, also after its own
    # card (or the first card) was suspended: failover, not a stalled agent.
    first_gone = min(suspended_at.values())
    sources = {s for s, _ in result.results}
    assert {"alice", "bob", "dialer-1/1", "dialer-1/2"} == sources
    for source in sources:
        placed = [
            r.started
            for s, r in result.results
            if s == source and r.status in _CALLEE and first_gone < r.started < pool_gone
        ]
        assert placed, f"{source} stopped working after the first suspension"
    failovers = [c for c in result.calls if c.failovers > 0]
    assert failovers

    # Once the pool is gone: nothing is placed, every attempt is 503 with Retry-After.
    late = [r for _, r in result.results if r.started > pool_gone + 60]
    assert late
    assert {(503, "no-card-available")} == {(r.status, r.reason_text) for r in late}
    assert all(r.retry_after is not None and r.retry_after > 0 for r in late)
    assert not [e for e in carrier.invites if e.reached_callee and e.time > pool_gone]
    # Leads left over stay undialled (never burnt on a dead pool).
    assert result.leads_left > 0
    assert pool_gone - start < storm.clock.duration


async def test_the_report_says_which_mode_ran() -> None:
    """A SIP report names its mode and clock; on the event clock it is seed-determined."""
    scenario = loads_scenario(OPEN, "open.toml")
    result = await run_scenario(scenario, max_leads=2)
    report = result.report()
    run = report.to_dict()["run"]
    assert "sip/in-process" == run["mode"]
    assert "event" == run["business_clock"]
    assert run["seed_determined"] is result.clock_shared
    assert run["clock_speed"] is None
    assert ("business" if result.clock_shared else "real") == run["gateway_clock"]
    assert "SIP, in-process gateway" in report.to_text()
    assert "discrete-event business clock" in report.to_text()


async def test_the_realtime_clock_report_does_not_claim_determinism() -> None:
    """``realtime_clock=True``: the scaled clock, totals may move, the report says so."""
    scenario = loads_scenario(OPEN, "open.toml")
    result = await run_scenario(scenario, max_leads=2, realtime_clock=True)
    report = result.report()
    run = report.to_dict()["run"]
    assert "scaled" == run["business_clock"]
    assert run["seed_determined"] is False
    assert 2000.0 == run["clock_speed"]
    assert "--offline" in report.to_text()


def test_cli_offline_mode_repeats_its_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    """``dialgate simulate --offline`` twice with the same seed: identical JSON, mode offline."""
    outs = [tmp_path / "a.json", tmp_path / "b.json"]
    for out in outs:
        code = main(["simulate", str(EXAMPLES / "unguarded.toml"), "--offline", "--json", str(out)])
        assert 1 == code  # unguarded: cards get suspended
    assert outs[0].read_text() == outs[1].read_text()
    data = json.loads(outs[0].read_text())
    assert "offline" == data["run"]["mode"]
    assert data["suspensions"] and all(s["cause"] for s in data["suspensions"])
    assert "offline replay" in capsys.readouterr().out
    assert 2 == main(["simulate", str(EXAMPLES / "unguarded.toml"), "--offline", "--direct"])


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``dialgate simulate`` configures logging for the process: put it back afterwards."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)


def _shortened(name: str, duration: str, leads: int) -> Scenario:
    """An example scenario cut down to ``duration`` and ``leads`` (same rules and traffic)."""
    text = (EXAMPLES / f"{name}.toml").read_text(encoding="utf-8")
    text = text.replace('duration = "8h"', f'duration = "{duration}"', 1)
    text = text.replace("count = 3000", f"count = {leads}", 1)
    assert f'duration = "{duration}"' in text and f"count = {leads}" in text
    return loads_scenario(text, f"{name}.toml")


async def test_in_process_sip_runs_on_the_event_clock_repeat_their_report() -> None:
    """Same seed, same report, also with the carrier's hourly limit in play: the unguarded
    traffic suspends every card (calls per hour) and both runs agree byte for byte, call
    by call and INVITE by INVITE."""
    scenario = _shortened("unguarded", "2h", 400)
    first = await run_scenario(scenario)
    second = await run_scenario(scenario)
    assert "event" == first.business_clock == second.business_clock
    a, b = first.report(), second.report()
    assert a.to_json() == b.to_json()
    assert a.to_text() == b.to_text()
    assert first.calls == second.calls
    assert [{k: v for k, v in e.items() if k != "call_id"} for e in first.invites] == [
        {k: v for k, v in e.items() if k != "call_id"} for e in second.invites
    ]
    data = json.loads(a.to_json())
    assert data["run"]["seed_determined"] is True
    assert "sip/in-process" == data["run"]["mode"]
    # The check has teeth: limits were hit, and at instants SIP work used to move.
    assert data["suspensions"] and all(s["cause"] for s in data["suspensions"])
    assert data["totals"]["gateway_503"] > 0


async def test_guarded_traffic_repeats_with_no_suspension() -> None:
    """The guarded policies over SIP on the event clock: no suspension, the same report twice."""
    scenario = _shortened("guarded", "1h", 150)
    reports = [(await run_scenario(scenario)).report() for _ in range(2)]
    assert reports[0].to_json() == reports[1].to_json()
    data = json.loads(reports[0].to_json())
    assert [] == data["suspensions"]
    assert data["totals"]["placed"] > 0 and data["totals"]["blocked"] > 0

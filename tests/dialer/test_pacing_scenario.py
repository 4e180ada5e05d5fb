"""The dialer paced by capacity: fewer 503s than blind pacing, the same answered calls.

Both example scenarios (examples/scenarios/dialer-blind.toml and
dialer-capacity.toml: a 6-channel dialer on 2 one-line cards) run over SIP
against an in-process gateway on the event clock, so each run is decided by
its seed. Blind pacing learns "both lines busy" from 503 no-card-available;
capacity pacing reads the pool's capacity first.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator.runner import run_scenario
from simulator.scenario import load_scenario

pytestmark = [pytest.mark.integration]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "scenarios"


async def _totals(name: str) -> dict:
    scenario = load_scenario(EXAMPLES / name)
    result = await run_scenario(scenario)
    report = result.report().to_dict()
    return report["totals"] | {"blocks": report["blocks_by_reason"]}


async def test_capacity_pacing_avoids_the_503s_of_blind_pacing() -> None:
    blind = await _totals("dialer-blind.toml")
    paced = await _totals("dialer-capacity.toml")
    print(f"blind: {blind}\ncapacity: {paced}")
    # Blind pacing runs into busy lines over and over.
    assert blind["gateway_503"] >= 100, blind
    assert set(blind["blocks"]) == {"no-card-available"}, blind
    # Capacity pacing (almost) never does, and places and answers as many calls:
    # the cards' limits bound both runs, not the dialer.
    assert paced["gateway_503"] <= blind["gateway_503"] // 10, paced
    assert paced["placed"] >= blind["placed"] * 0.95, (paced, blind)
    assert abs(paced["answered"] - blind["answered"]) <= max(5, blind["answered"] // 10)
    assert 0 == paced["suspensions"] == blind["suspensions"]

"""The seed-cause scenarios through the in-process gateway on the event clock.

The same files and checks as tests/simulator/test_causes.py, but the gateway's own
policies (quotas, consent, calling hours, [policy.frequency]) and card states decide,
not the offline stand-in. Seed-determined, about a second per scenario.
"""

from __future__ import annotations

import pytest

from simulator.runner import run_scenario
from simulator.scenario import load_scenario, loads_scenario
from tests.simulator.causes import CAUSES, CAUSES_DIR, check_guarded, check_unguarded


@pytest.mark.parametrize("cause", sorted(CAUSES))
async def test_unguarded_gets_a_card_out_for_exactly_its_cause_over_sip(cause: str) -> None:
    """Unguarded over SIP: suspended for the cause's metric (arrears: 402, card held out)."""
    result = await run_scenario(load_scenario(CAUSES_DIR / f"{cause}-unguarded.toml"))
    check_unguarded(cause, result.report())


@pytest.mark.parametrize("cause", sorted(CAUSES))
async def test_guarded_twin_ends_with_no_suspension_over_sip(cause: str) -> None:
    """Guarded over SIP: the gateway's policies keep every card in service."""
    result = await run_scenario(load_scenario(CAUSES_DIR / f"{cause}-guarded.toml"))
    check_guarded(cause, result.report())


async def test_invalid_leads_are_reported_as_484_address_incomplete_over_sip() -> None:
    """14-digit leads through the gateway: answered 484, counted under ``address-incomplete``."""
    text = (CAUSES_DIR / "burst-guarded.toml").read_text(encoding="utf-8")
    assert "length = 13" in text
    scenario = loads_scenario(text.replace("length = 13", "length = 14"), "burst-14-digits")
    result = await run_scenario(scenario, max_leads=10)
    report = result.report()
    assert {"address-incomplete": 10} == report.blocks
    assert {484} == {c.status for c in result.calls}
    assert 0 == report.placed

"""The seed-cause scenarios replayed offline (examples/scenarios/causes/, issue 13 item 6).

Each cause has an unguarded scenario that gets a card out for exactly that cause
and a guarded twin — dialgate's policies with quotas, consent, calling hours or
the per-number frequency cap set to prevent it — that ends with 0 suspensions.
The same files run through the in-process gateway in tests/simulator_sip.
"""

from __future__ import annotations

import pytest

from simulator.offline import run_offline
from simulator.report import report_from_offline
from simulator.scenario import load_scenario, loads_scenario
from tests.simulator.causes import CAUSES, CAUSES_DIR, check_guarded, check_unguarded


def test_every_cause_has_both_twins_and_nothing_else() -> None:
    """The folder holds exactly one unguarded and one guarded scenario per seed cause."""
    expected = {f"{c}-{kind}" for c in CAUSES for kind in ("unguarded", "guarded")}
    assert expected == {p.stem for p in CAUSES_DIR.glob("*.toml")}


@pytest.mark.parametrize("cause", sorted(CAUSES))
def test_unguarded_gets_a_card_out_for_exactly_its_cause(cause: str) -> None:
    """Unguarded: suspended for the cause's metric (arrears: blocked by balance, 402)."""
    scenario = load_scenario(CAUSES_DIR / f"{cause}-unguarded.toml")
    assert not scenario.gateway.guarded
    check_unguarded(cause, report_from_offline(run_offline(scenario)))


@pytest.mark.parametrize("cause", sorted(CAUSES))
def test_guarded_twin_ends_with_no_suspension(cause: str) -> None:
    """Guarded: the same carrier and traffic through dialgate's policies, 0 suspensions."""
    scenario = load_scenario(CAUSES_DIR / f"{cause}-guarded.toml")
    assert scenario.gateway.guarded
    check_guarded(cause, report_from_offline(run_offline(scenario)))


def test_twins_differ_only_in_the_gateway_section() -> None:
    """A twin changes only what dialgate does: same seed, clock, carrier, cards, leads, pacing."""
    for cause in CAUSES:
        a = load_scenario(CAUSES_DIR / f"{cause}-unguarded.toml")
        b = load_scenario(CAUSES_DIR / f"{cause}-guarded.toml")
        for key in ("seed", "clock", "carrier", "cards", "agents", "leads", "pacing"):
            assert getattr(a, key) == getattr(b, key), (cause, key)


@pytest.mark.parametrize("twin", ["unguarded", "guarded"])
def test_invalid_leads_are_reported_as_484_address_incomplete(twin: str) -> None:
    """14-digit leads no number plan has: 484 ``address-incomplete``, never ``calling-hours``."""
    text = (CAUSES_DIR / f"burst-{twin}.toml").read_text(encoding="utf-8")
    assert "length = 13" in text
    scenario = loads_scenario(text.replace("length = 13", "length = 14"), "burst-14-digits")
    result = run_offline(scenario, max_leads=20)
    report = report_from_offline(result)
    assert {"address-incomplete": 20} == report.blocks
    assert {484} == {c.status for c in result.calls}
    assert 0 == report.placed

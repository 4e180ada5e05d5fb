"""The seed-cause scenarios of examples/scenarios/causes/ and what each must end with.

Shared by the offline test (tests/simulator/test_causes.py) and the in-process SIP
test (tests/simulator_sip/test_causes_sip.py): every unguarded scenario gets a card
out for exactly its cause, every guarded twin ends with nothing out.
"""

from __future__ import annotations

from pathlib import Path

from simulator.antifraud import Metric
from simulator.report import Report

CAUSES_DIR = Path(__file__).resolve().parents[2] / "examples" / "scenarios" / "causes"

#: Scenario stem → the carrier's metric its unguarded run must be suspended for
#: (None: arrears, which is a 402 balance block, not a suspension).
CAUSES: dict[str, Metric | None] = {
    "burst": Metric.CALLS_PER_HOUR,
    "dispersion": Metric.DISTINCT_CALLEES,
    "low-answer-rate": Metric.ANSWER_RATE,
    "short-calls": Metric.SHORT_CALLS,
    "night-calls": Metric.NIGHT_CALLS,
    "complaints": Metric.COMPLAINTS,
    "arrears": None,
    "card-switching": Metric.CARDS_PER_CALLEE,
    "repeated-callee": Metric.CALLS_PER_CALLEE,
}


def check_unguarded(cause: str, report: Report) -> None:
    """A card is out for exactly ``cause``: suspended for its metric only, or in arrears."""
    metric = CAUSES[cause]
    if metric is None:
        assert [] == report.suspensions
        assert ["c1"] == report.cards_in_arrears
        assert report.carrier_402 >= 1
        assert report.gateway_cards is not None
        assert ["suspended (arrears)"] == [str(g) for g in report.gateway_cards]
        assert report.cards[0].state.startswith("arrears (balance ")
        return
    assert report.suspensions, f"{cause}: no suspension"
    causes = {s.cause.rsplit(" ", 3)[0] for s in report.suspensions}
    assert {str(metric)} == causes, causes
    assert [] == report.cards_in_arrears
    assert 0 == report.carrier_402


def check_guarded(cause: str, report: Report) -> None:
    """The guarded twin: no suspension, no card in arrears, every card in service."""
    assert [] == report.suspensions, f"{cause}: {[s.cause for s in report.suspensions]}"
    assert [] == report.cards_in_arrears
    assert 0 == report.carrier_402
    assert report.gateway_cards is not None
    assert all(g.in_service for g in report.gateway_cards), report.gateway_cards
    assert report.placed > 0

"""Tests for the emergency bypass policy itself."""

from __future__ import annotations

from policies.emergency import EmergencyBypass, EmergencyNumbers
from tests.policies.helpers import ctx, utc

NOW = utc(2026, 6, 1, 4, 0)


def test_bypass_for_configured_emergency_number() -> None:
    """An emergency context of a configured region yields a bypass allow."""
    decision = EmergencyBypass(EmergencyNumbers.for_regions(["CN"]))(ctx("120"), NOW)
    assert decision is not None
    assert (True, True, "emergency number in CN") == (
        decision.allowed,
        decision.bypass,
        decision.detail,
    )


def test_no_opinion_for_normal_numbers() -> None:
    """Ordinary numbers get no opinion from the bypass."""
    assert EmergencyBypass(EmergencyNumbers.for_regions(["CN"]))(ctx("13812345678"), NOW) is None


def test_flag_rechecked_against_own_regions() -> None:
    """A context flagged emergency for a region the policy does not serve gets no bypass."""
    context = ctx("911", region="US", emergency_regions=("US",))
    assert context.emergency
    assert EmergencyBypass(EmergencyNumbers.for_regions(["CN"]))(context, NOW) is None

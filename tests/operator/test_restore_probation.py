"""A restore goes through the carrier's probation; a suspect card is cleared or confirmed."""

from __future__ import annotations

import pytest

from gateway.cards import CardState
from gateway.operator.service import BadRequest, IllegalAction, Operator, effective_profile_of
from gateway.store import QuotaExceeded

from .conftest import T0

DAY = 86400.0


def _suspend_by_carrier(operator: Operator) -> None:
    verdict = operator.manager.on_response("c1", 403, "Card Suspended", now=T0 + 60)
    assert "violation" == verdict.marked


def test_restore_enters_probation_whose_limits_apply_then_lapse(operator: Operator) -> None:
    """restore → probation on the profile's probation limits for probation_days (default 7)."""
    _suspend_by_carrier(operator)
    shown = operator.restore("c1", actor="dana", now=T0 + DAY)
    assert ("probation", "careful") == (shown["state"], shown["profile_in_force"])
    card = operator.card("c1")
    assert T0 + DAY + 7 * DAY == card.probation_until
    assert 1 == effective_profile_of(operator, "c1").calls_per_minute
    # The reduced limit is enforced by the store's atomic reservation.
    ledger = operator.store
    profile = effective_profile_of(operator, "c1")
    ledger.reserve("c1", "k1", "+8613912345678", T0 + DAY + 10, profile=profile)
    ledger.finish("k1", T0 + DAY + 11, answered=True, talk_seconds=1.0)
    with pytest.raises(QuotaExceeded):
        ledger.reserve("c1", "k2", "+8613912345679", T0 + DAY + 20, profile=profile)
    # The probation lapses by itself: normal limits again.
    operator.tick(T0 + 8 * DAY + 1)
    assert CardState.ACTIVE == operator.card("c1").state
    assert 5 == effective_profile_of(operator, "c1").calls_per_minute


def test_skip_probation_needs_a_reason_and_is_audited(operator: Operator) -> None:
    """--skip-probation without --reason is refused; with one the card is active at once."""
    _suspend_by_carrier(operator)
    with pytest.raises(BadRequest):
        operator.restore("c1", actor="dana", now=T0 + DAY, skip_probation=True)
    assert CardState.SUSPENDED == operator.card("c1").state
    shown = operator.restore(
        "c1", actor="dana", now=T0 + DAY, skip_probation=True, reason="carrier lifted it in full"
    )
    assert "active" == shown["state"]
    entries = operator.db.audit_entries()
    restore = [e for e in entries if e.action == "card.restore"][-1]
    assert {"skip_probation": True, "reason": "carrier lifted it in full"}.items() <= dict(
        restore.detail
    ).items()


def test_restore_of_an_active_card_is_refused(operator: Operator) -> None:
    """Nothing to restore: 409, the card stays as it is."""
    with pytest.raises(IllegalAction):
        operator.restore("c1", actor="dana", now=T0)
    assert CardState.ACTIVE == operator.card("c1").state


def _make_suspect(operator: Operator) -> None:
    for i in range(5):
        operator.manager.on_response(
            "c2", 403, "Forbidden", now=T0 + i, callee=f"+86139000000{i:02d}"
        )
    assert CardState.SUSPECT == operator.card("c2").state


def test_suspect_card_is_cleared_or_confirmed(operator: Operator) -> None:
    """clear → active; a second suspect confirmed with suspend → suspended."""
    _make_suspect(operator)
    shown = operator.show_card("c2", T0 + 10)
    assert (False, "suspect") == (shown["available"]["now"], shown["available"]["why"])
    assert "active" == operator.clear("c2", actor="dana", now=T0 + 60)["state"]
    with pytest.raises(IllegalAction):
        operator.clear("c2", actor="dana", now=T0 + 61)
    _make_suspect(operator)
    assert "suspended" == operator.suspend("c2", actor="dana", now=T0 + 120)["state"]


def test_restore_of_a_suspect_card_clears_it(operator: Operator) -> None:
    """A suspect card was never suspended: restore clears it (no probation)."""
    _make_suspect(operator)
    assert "active" == operator.restore("c2", actor="dana", now=T0 + 60)["state"]

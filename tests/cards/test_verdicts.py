"""Carrier final responses → verdicts: card-level failure vs callee-level outcome."""

from __future__ import annotations

import pytest

from gateway.cards import CardManager, CardState, CarrierRule, ResponseClass, SuspendReason
from gateway.store import SQLiteStore

from .conftest import T0


@pytest.mark.parametrize(
    ("status", "phrase", "warning", "reason"),
    [
        (403, "Forbidden - Card Suspended", None, SuspendReason.VIOLATION),
        (403, "Forbidden", '399 carrier-a "number blocked for abuse"', SuspendReason.VIOLATION),
        (403, "Forbidden", None, SuspendReason.UNKNOWN),
        (402, "Payment Required", None, SuspendReason.ARREARS),
        (480, "Abnormal use detected", None, SuspendReason.ABNORMAL_USE),
    ],
)
def test_card_level_failures_mark_and_fail_over(
    manager: CardManager,
    store: SQLiteStore,
    status: int,
    phrase: str,
    warning: str | None,
    reason: SuspendReason,
) -> None:
    """Carrier rules and defaults suspend the card with a reason and ask for failover."""
    verdict = manager.on_response("c1", status, phrase, warning=warning, now=T0)
    assert (ResponseClass.CARD_FAILURE, True, reason) == (
        verdict.kind,
        verdict.failover,
        verdict.marked,
    )
    card = manager.get("c1")
    assert (CardState.SUSPENDED, reason) == (card.state, card.reason)
    [stored] = store.transitions("c1")
    assert (reason.value, f"carrier:{status}", "gateway") == (
        stored.reason,
        stored.cause,
        stored.actor,
    )
    assert f"SIP/2.0 {status} {phrase}" == stored.evidence["response"]
    assert warning == stored.evidence.get("warning")


def test_evidence_keeps_reason_header(manager: CardManager, store: SQLiteStore) -> None:
    """The carrier's Reason header is part of the stored evidence."""
    manager.on_response(
        "c1", 403, "Forbidden", reason_header='Q.850;cause=21;text="suspended"', now=T0
    )
    assert 'Q.850;cause=21;text="suspended"' == store.transitions("c1")[0].evidence["reason"]


@pytest.mark.parametrize("status", [200, 202, 486, 480, 404, 603, 487, 600, 604, 410, 484])
def test_callee_outcomes_never_fail_over(manager: CardManager, status: int) -> None:
    """Answered, busy, no answer, not found, declined, cancelled: never another card."""
    verdict = manager.on_response("c1", status, "whatever", now=T0)
    assert verdict.kind in (ResponseClass.ANSWERED, ResponseClass.CALLEE)
    assert (False, None, None) == (verdict.failover, verdict.marked, verdict.event)
    assert CardState.ACTIVE == manager.get("c1").state


def test_rules_never_apply_to_487_or_2xx(manager: CardManager) -> None:
    """Even a rule-looking phrase on 487 or 200 is the callee's outcome."""
    manager.rules["carrier-a"].append(CarrierRule(487, SuspendReason.VIOLATION, None))
    manager.rules["carrier-a"].append(CarrierRule(200, SuspendReason.VIOLATION, None))
    verdict = manager.on_response("c1", 487, "Request Terminated", now=T0)
    assert (ResponseClass.CALLEE, False) == (verdict.kind, verdict.failover)
    verdict = manager.on_response("c1", 200, "OK", now=T0)
    assert (ResponseClass.ANSWERED, False) == (verdict.kind, verdict.failover)
    assert CardState.ACTIVE == manager.get("c1").state


def test_other_final_responses_are_relayed_without_marking(manager: CardManager) -> None:
    """A 500 or 488 neither marks the card nor retries the callee elsewhere."""
    for status in (500, 488, 502):
        verdict = manager.on_response("c1", status, "x", now=T0)
        assert (ResponseClass.OTHER, False, None) == (
            verdict.kind,
            verdict.failover,
            verdict.marked,
        )
    assert CardState.ACTIVE == manager.get("c1").state


def test_provisional_status_is_rejected(manager: CardManager) -> None:
    """Only final responses are classified."""
    with pytest.raises(ValueError):
        manager.on_response("c1", 180, "Ringing", now=T0)


def test_maintenance_recovers_after_retry_after(manager: CardManager, store: SQLiteStore) -> None:
    """503 + Retry-After: maintenance until then, skipped meanwhile, then active by itself."""
    verdict = manager.on_response("c1", 503, "Service Unavailable", retry_after=600, now=T0)
    assert (ResponseClass.CARD_FAILURE, True, SuspendReason.MAINTENANCE) == (
        verdict.kind,
        verdict.failover,
        verdict.marked,
    )
    assert T0 + 600 == manager.get("c1").resume_at
    assert T0 + 600 == manager.get_timer()
    during = manager.select("main", now=T0 + 599)
    assert "c2" == during.card.id  # type: ignore[union-attr]
    assert "state:suspended" == during.skipped["c1"]
    assert [] == manager.handle_timer(T0 + 599)
    [event] = manager.handle_timer(T0 + 600)
    assert (CardState.SUSPENDED, CardState.ACTIVE, "maintenance-over", "gateway") == (
        event.from_state,
        event.to_state,
        event.cause,
        event.actor,
    )
    assert "c1" == manager.select("main", now=T0 + 601).card.id  # type: ignore[union-attr]
    assert ["suspended", "active"] == [t.to_state for t in store.transitions("c1")]


def test_maintenance_without_retry_after_counts_as_fault(manager: CardManager) -> None:
    """503 without Retry-After is a fault (failover, counted), not a timed suspension."""
    verdict = manager.on_response("c1", 503, "Service Unavailable", now=T0)
    assert (ResponseClass.CARD_FAILURE, True, None, 1) == (
        verdict.kind,
        verdict.failover,
        verdict.marked,
        verdict.faults,
    )
    assert CardState.ACTIVE == manager.get("c1").state


@pytest.mark.parametrize("kind", ["timer-b", "transport-error", "408"])
def test_faults_suspend_after_threshold(
    manager: CardManager, store: SQLiteStore, kind: str
) -> None:
    """Timer B, transport errors and 408: fail over each time, suspend at the 3rd in a row."""
    for n in (1, 2):
        if kind == "408":
            verdict = manager.on_response("c1", 408, "Request Timeout", now=T0 + n)
        else:
            verdict = manager.on_fault("c1", kind, now=T0 + n)
        assert (ResponseClass.CARD_FAILURE, True, None, n) == (
            verdict.kind,
            verdict.failover,
            verdict.marked,
            verdict.faults,
        )
        assert CardState.ACTIVE == manager.get("c1").state
    if kind == "408":
        verdict = manager.on_response("c1", 408, "Request Timeout", now=T0 + 3)
    else:
        verdict = manager.on_fault("c1", kind, now=T0 + 3)
    assert (SuspendReason.FAULT, True, 3) == (verdict.marked, verdict.failover, verdict.faults)
    assert CardState.SUSPENDED == manager.get("c1").state
    assert 3 == store.transitions("c1")[0].evidence["consecutive_faults"]


def test_any_carrier_answer_resets_the_fault_streak(manager: CardManager) -> None:
    """Faults must be consecutive: a busy in between proves the line works."""
    manager.on_fault("c1", "timer-b", now=T0)
    manager.on_fault("c1", "timer-b", now=T0 + 1)
    manager.on_response("c1", 486, "Busy Here", now=T0 + 2)
    verdict = manager.on_fault("c1", "timer-b", now=T0 + 3)
    assert (1, None) == (verdict.faults, verdict.marked)


def test_unknown_fault_cause_is_rejected(manager: CardManager) -> None:
    """Fault causes are a closed set so typos do not silently count."""
    with pytest.raises(ValueError):
        manager.on_fault("c1", "timer-x", now=T0)


def test_failure_after_ringing_marks_but_never_fails_over(manager: CardManager) -> None:
    """Once the callee was alerted, even a card failure must not ring them again."""
    verdict = manager.on_response("c1", 403, "Suspended", ringing=True, now=T0)
    assert (ResponseClass.CARD_FAILURE, False, SuspendReason.VIOLATION) == (
        verdict.kind,
        verdict.failover,
        verdict.marked,
    )
    assert CardState.SUSPENDED == manager.get("c1").state


def test_repeated_suspension_is_recorded_once(manager: CardManager, store: SQLiteStore) -> None:
    """Two calls hitting the same suspension produce one transition, not two."""
    first = manager.on_response("c1", 402, "Payment Required", now=T0)
    second = manager.on_response("c1", 402, "Payment Required", now=T0 + 1)
    assert first.event is not None
    assert None is second.event
    assert True is second.failover
    assert 1 == len(store.transitions("c1"))


def test_reclassification_of_a_suspended_card(manager: CardManager) -> None:
    """A card in maintenance that then answers 403 suspend becomes a violation."""
    manager.on_response("c1", 503, "Maintenance", retry_after=60, now=T0)
    verdict = manager.on_response("c1", 403, "Suspended", now=T0 + 1)
    assert verdict.event is not None
    card = manager.get("c1")
    assert (CardState.SUSPENDED, SuspendReason.VIOLATION, None) == (
        card.state,
        card.reason,
        card.resume_at,
    )
    assert [] == manager.handle_timer(T0 + 61)  # no auto-recovery for a violation


def test_register_failure_marks_without_failover(manager: CardManager) -> None:
    """A REGISTER refused with 402 puts the card in arrears (nothing to fail over)."""
    verdict = manager.on_register_response("c2", 402, "Payment Required", now=T0)
    assert (False, SuspendReason.ARREARS) == (verdict.failover, verdict.marked)
    assert CardState.SUSPENDED == manager.get("c2").state
    assert ResponseClass.ANSWERED == manager.on_register_response("c1", 200, "OK", now=T0).kind


def test_rejected_credentials_count_as_card_faults(manager: CardManager) -> None:
    """A final 401/407 (credentials refused) is the card's fault: fail over, count it."""
    first = manager.on_response("c1", 401, "Unauthorized", now=T0)
    second = manager.on_response("c1", 407, "Proxy Authentication Required", now=T0 + 1)
    assert (ResponseClass.CARD_FAILURE, True, 1) == (first.kind, first.failover, first.faults)
    assert 2 == second.faults
    third = manager.on_response("c1", 401, "Unauthorized", now=T0 + 2)
    assert SuspendReason.FAULT == third.marked

"""Carrier final responses → verdicts applied to the card (classification in test_classify)."""

from __future__ import annotations

import re

import pytest

from gateway.cards import (
    BLegClass,
    CardManager,
    CardState,
    CarrierRule,
    StoreCardSource,
    SuspendReason,
)
from gateway.store.memory import MemoryStore
from policies.selection import CardSelection

from .conftest import T0, at, ctx


@pytest.fixture
def store() -> MemoryStore:
    """The in-memory backend: these tests are about the cards' logic, not SQLite's."""
    return MemoryStore()


MAINTENANCE = CarrierRule(503, SuspendReason.MAINTENANCE, re.compile("(?i)maintenance"))


@pytest.mark.parametrize(
    ("status", "phrase", "warning", "reason", "row"),
    [
        (403, "Forbidden - Card Suspended", None, SuspendReason.VIOLATION, "rule"),
        (
            403,
            "Forbidden",
            '399 carrier-a "number blocked for abuse"',
            SuspendReason.VIOLATION,
            "rule",
        ),
        (402, "Payment Required", None, SuspendReason.ARREARS, "402"),
        (480, "Abnormal use detected", None, SuspendReason.ABNORMAL_USE, "rule"),
        (401, "Unauthorized", None, SuspendReason.FAULT, "credentials"),
        (407, "Proxy Authentication Required", None, SuspendReason.FAULT, "credentials"),
    ],
)
def test_card_dead_answers_mark_and_fail_over(
    manager: CardManager,
    store: MemoryStore,
    status: int,
    phrase: str,
    warning: str | None,
    reason: SuspendReason,
    row: str,
) -> None:
    """Carrier rules, arrears and refused credentials suspend the card and ask for failover."""
    verdict = manager.on_response("c1", status, phrase, warning=warning, now=T0)
    assert (BLegClass.CARD_DEAD, True, reason, row) == (
        verdict.kind,
        verdict.failover,
        verdict.marked,
        verdict.row,
    )
    assert verdict.event is not None and CardState.SUSPENDED == verdict.event.to_state
    card = manager.get("c1")
    assert (CardState.SUSPENDED, reason) == (card.state, card.reason)
    [stored] = store.transitions("c1")
    assert (reason.value, f"carrier:{row}", "gateway") == (
        stored.reason,
        stored.cause,
        stored.actor,
    )
    assert f"SIP/2.0 {status} {phrase}" == stored.evidence["response"]
    assert warning == stored.evidence.get("warning")
    assert ("card-dead", row) == (stored.evidence["class"], stored.evidence["row"])


def test_plain_403_leaves_the_card_active_and_counts_one_suspicion(
    manager: CardManager, store: MemoryStore
) -> None:
    """A 403 no rule explains is ambiguous: relayed, no failover, one suspicion, no suspension."""
    verdict = manager.on_response("c1", 403, "Forbidden", now=T0, callee="+8613811110001")
    assert (BLegClass.CALLEE, False, None, None, "ambiguous", 1) == (
        verdict.kind,
        verdict.failover,
        verdict.marked,
        verdict.event,
        verdict.row,
        verdict.suspicion,
    )
    assert (CardState.ACTIVE, 1) == (manager.get("c1").state, manager.suspicion("c1"))
    assert [] == store.transitions("c1")


def test_reason_header_text_can_match_a_rule_and_is_kept(
    manager: CardManager, store: MemoryStore
) -> None:
    """A rule pattern found in the Reason header text decides; the header is evidence."""
    verdict = manager.on_response(
        "c1", 403, "Forbidden", reason_header='Q.850;cause=21;text="suspended"', now=T0
    )
    assert (SuspendReason.VIOLATION, "rule") == (verdict.marked, verdict.row)
    assert 'Q.850;cause=21;text="suspended"' == store.transitions("c1")[0].evidence["reason"]


@pytest.mark.parametrize("status", [200, 202, 486, 480, 404, 603, 487, 600, 604, 410, 484, 408])
def test_callee_outcomes_never_fail_over(manager: CardManager, status: int) -> None:
    """Answered, busy, no answer, not found, declined, cancelled: never another card."""
    verdict = manager.on_response("c1", status, "whatever", now=T0, callee="+8613811110001")
    assert (BLegClass.CALLEE, False, None, None) == (
        verdict.kind,
        verdict.failover,
        verdict.marked,
        verdict.event,
    )
    assert CardState.ACTIVE == manager.get("c1").state


def test_rules_never_apply_to_2xx(manager: CardManager) -> None:
    """Even a rule on 200 leaves an answered call the callee's outcome."""
    manager.rules["carrier-a"].append(CarrierRule(200, SuspendReason.VIOLATION, None))
    verdict = manager.on_response("c1", 200, "OK", now=T0)
    assert (BLegClass.CALLEE, False, "2xx") == (verdict.kind, verdict.failover, verdict.row)
    assert CardState.ACTIVE == manager.get("c1").state


def test_rules_never_apply_to_487(manager: CardManager) -> None:
    """487 answers our own CANCEL: it proves nothing about the card, whatever the rules say."""
    manager.rules["carrier-a"].append(CarrierRule(487, SuspendReason.VIOLATION, None))
    verdict = manager.on_response("c1", 487, "Request Terminated", now=T0)
    assert (BLegClass.CALLEE, False) == (verdict.kind, verdict.failover)
    assert CardState.ACTIVE == manager.get("c1").state


def test_other_final_responses_are_relayed_without_marking(manager: CardManager) -> None:
    """500, 488, 502: neither a mark nor a retry of the callee elsewhere."""
    for n, status in enumerate((500, 488, 502)):
        verdict = manager.on_response("c1", status, "x", now=T0 + n, callee=f"+861381111000{n}")
        assert (BLegClass.CALLEE, False, None) == (
            verdict.kind,
            verdict.failover,
            verdict.marked,
        )
    assert CardState.ACTIVE == manager.get("c1").state
    assert 2 == manager.suspicion("c1")  # 500 and 502 are ambiguous; 488 is the callee's


def test_provisional_status_is_rejected(manager: CardManager) -> None:
    """Only final responses are classified."""
    with pytest.raises(ValueError):
        manager.on_response("c1", 180, "Ringing", now=T0)
    with pytest.raises(ValueError):
        manager.on_register_response("c1", 100, "Trying", now=T0)


def test_maintenance_rule_recovers_after_retry_after(
    manager: CardManager, store: MemoryStore, source: StoreCardSource
) -> None:
    """A maintenance rule + Retry-After: suspended until then, skipped, then active by itself."""
    manager.rules["carrier-a"].insert(0, MAINTENANCE)
    verdict = manager.on_response("c1", 503, "Maintenance", retry_after=600, now=T0)
    assert (BLegClass.CARD_DEAD, True, SuspendReason.MAINTENANCE) == (
        verdict.kind,
        verdict.failover,
        verdict.marked,
    )
    assert T0 + 600 == manager.get("c1").resume_at
    assert T0 + 600 == manager.get_timer()
    during = CardSelection(source)(ctx("k1", now=T0 + 599), at(T0 + 599))
    assert "c2" == during.card_id
    store.release("k1", T0 + 599)
    assert [] == manager.handle_timer(T0 + 599)
    [event] = manager.handle_timer(T0 + 600)
    assert (CardState.SUSPENDED, CardState.ACTIVE, "maintenance-over", "gateway") == (
        event.from_state,
        event.to_state,
        event.cause,
        event.actor,
    )
    assert "c1" == CardSelection(source)(ctx("k2", now=T0 + 601), at(T0 + 601)).card_id
    assert ["suspended", "active"] == [t.to_state for t in store.transitions("c1")]


def test_selection_itself_recovers_a_card_whose_maintenance_ended(
    manager: CardManager, source: StoreCardSource
) -> None:
    """StoreCardSource runs the card timers first: no timer tick is needed before a pick."""
    manager.rules["carrier-a"].insert(0, MAINTENANCE)
    manager.on_response("c1", 503, "Maintenance", retry_after=60, now=T0)
    assert "c1" == CardSelection(source)(ctx("k1", now=T0 + 60), at(T0 + 60)).card_id
    assert CardState.ACTIVE == manager.get("c1").state


def test_503_with_retry_after_rests_the_card_without_suspending_it(
    manager: CardManager, store: MemoryStore
) -> None:
    """503 + Retry-After (no rule): trunk-unreachable, the card rests, stays active."""
    verdict = manager.on_response("c1", 503, "Service Unavailable", retry_after=600, now=T0)
    assert (BLegClass.TRUNK_UNREACHABLE, True, None, None, T0 + 600) == (
        verdict.kind,
        verdict.failover,
        verdict.marked,
        verdict.event,
        verdict.rest_until,
    )
    assert (CardState.ACTIVE, T0 + 600) == (
        manager.get("c1").state,
        manager.resting_until("c1", T0 + 1),
    )
    assert [] == store.transitions("c1")


def test_503_without_retry_after_is_an_ambiguous_callee_outcome(manager: CardManager) -> None:
    """503 without Retry-After or a cause: relayed, no failover, one suspicion."""
    verdict = manager.on_response("c1", 503, "Service Unavailable", now=T0, callee="+86138")
    assert (BLegClass.CALLEE, False, None, None, 1) == (
        verdict.kind,
        verdict.failover,
        verdict.marked,
        verdict.rest_until,
        verdict.suspicion,
    )
    assert CardState.ACTIVE == manager.get("c1").state


@pytest.mark.parametrize("kind", ["timer-b", "transport-error"])
def test_no_response_rests_and_fails_over_but_never_suspends(
    manager: CardManager, store: MemoryStore, kind: str
) -> None:
    """Timer B and transport errors: trunk-unreachable every time, a rest, never a suspension."""
    for n in range(1, 5):
        verdict = manager.on_fault("c1", kind, now=T0 + n, callee=f"+861381111000{n}")
        assert (BLegClass.TRUNK_UNREACHABLE, True, None, "no-response", T0 + n + 30, n) == (
            verdict.kind,
            verdict.failover,
            verdict.marked,
            verdict.row,
            verdict.rest_until,
            verdict.suspicion,
        )
        assert CardState.ACTIVE == manager.get("c1").state
    assert [] == store.transitions("c1")


def test_408_from_the_far_side_is_the_callees(manager: CardManager) -> None:
    """A 408 the carrier sent (not our Timer B) is no-answer: not counted, no failover."""
    for n in range(8):
        verdict = manager.on_response(
            "c1", 408, "Request Timeout", now=T0 + n, callee=f"+861381111000{n}"
        )
        assert (BLegClass.CALLEE, False, "callee", 0) == (
            verdict.kind,
            verdict.failover,
            verdict.row,
            verdict.suspicion,
        )
    assert CardState.ACTIVE == manager.get("c1").state


def test_timer_b_after_a_provisional_is_not_a_trunk_failure(manager: CardManager) -> None:
    """Something answered (a 100): the network took the call, no failover, no rest."""
    verdict = manager.on_fault("c1", "timer-b", now=T0, provisional=True, callee="+86138")
    assert (BLegClass.CALLEE, False, None, 0) == (
        verdict.kind,
        verdict.failover,
        verdict.rest_until,
        verdict.suspicion,
    )
    assert None is manager.resting_until("c1", T0)


def test_unknown_fault_cause_is_rejected(manager: CardManager) -> None:
    """Fault causes are a closed set so typos do not silently count."""
    with pytest.raises(ValueError):
        manager.on_fault("c1", "timer-x", now=T0)


def test_failure_after_ringing_marks_but_never_fails_over(manager: CardManager) -> None:
    """Once the callee was alerted, even a card failure must not ring them again."""
    verdict = manager.on_response("c1", 403, "Suspended", ringing=True, now=T0)
    assert (BLegClass.CARD_DEAD, False, SuspendReason.VIOLATION) == (
        verdict.kind,
        verdict.failover,
        verdict.marked,
    )
    assert CardState.SUSPENDED == manager.get("c1").state


def test_repeated_suspension_is_recorded_once(manager: CardManager, store: MemoryStore) -> None:
    """Two calls hitting the same suspension produce one transition, not two."""
    first = manager.on_response("c1", 402, "Payment Required", now=T0)
    second = manager.on_response("c1", 402, "Payment Required", now=T0 + 1)
    assert first.event is not None
    assert None is second.event
    assert True is second.failover
    assert 1 == len(store.transitions("c1"))


def test_reclassification_of_a_suspended_card(manager: CardManager) -> None:
    """A card in maintenance that then answers 403 suspend becomes a violation."""
    manager.rules["carrier-a"].insert(0, MAINTENANCE)
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


def test_register_refusal_marks_without_failover(manager: CardManager) -> None:
    """A REGISTER refused (402, 403) suspends the card; there is no call to fail over."""
    verdict = manager.on_register_response("c2", 402, "Payment Required", now=T0)
    assert (False, SuspendReason.ARREARS) == (verdict.failover, verdict.marked)
    assert CardState.SUSPENDED == manager.get("c2").state
    plain = manager.on_register_response("c1", 403, "Forbidden", now=T0)
    assert (BLegClass.CARD_DEAD, False, SuspendReason.UNKNOWN, "register") == (
        plain.kind,
        plain.failover,
        plain.marked,
        plain.row,
    )
    assert CardState.SUSPENDED == manager.get("c1").state


@pytest.mark.parametrize(("status", "phrase"), [(200, "OK"), (503, "Busy"), (408, "Timeout")])
def test_register_answers_that_prove_nothing(
    manager: CardManager, store: MemoryStore, status: int, phrase: str
) -> None:
    """REGISTER 2xx, 5xx or 408: the card stays as it is."""
    verdict = manager.on_register_response("c1", status, phrase, now=T0)
    assert (False, None, None) == (verdict.failover, verdict.marked, verdict.event)
    assert CardState.ACTIVE == manager.get("c1").state
    assert [] == store.transitions("c1")


def test_rejected_credentials_suspend_at_once(manager: CardManager, store: MemoryStore) -> None:
    """A final 401 (credentials refused) is the card's: suspended for fault, fail over."""
    first = manager.on_response("c1", 401, "Unauthorized", now=T0)
    assert (BLegClass.CARD_DEAD, True, SuspendReason.FAULT) == (
        first.kind,
        first.failover,
        first.marked,
    )
    second = manager.on_response("c1", 407, "Proxy Authentication Required", now=T0 + 1)
    assert (SuspendReason.FAULT, None) == (second.marked, second.event)
    assert 1 == len(store.transitions("c1"))

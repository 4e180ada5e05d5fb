"""Tests for CarrierModel: suspension lifetime, arrears, maintenance, schedules and the event log."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import pytest

from simulator.answer import AnswerProfile
from simulator.antifraud import AntiFraudThresholds
from simulator.models import (
    CardAccount,
    CarrierConfig,
    CarrierModel,
    EventKind,
    MaintenanceWindow,
    ScheduledSuspension,
)
from tests.simulator.support import ALWAYS_ANSWER, SHANGHAI, T0, build_carrier, callee


def test_suspension_persists_until_restore() -> None:
    """Once suspended a card gets 403 hours and days later, and calls again after restore()."""
    carrier = build_carrier(calls_per_hour=2, answer=ALWAYS_ANSWER)
    assert [200, 200, 403] == [
        carrier.decide_invite("c1", callee(i), T0 + i).status for i in range(3)
    ]
    for later in (3600 * 2, 86400 * 3):
        decision = carrier.decide_invite("c1", callee(9), T0 + later)
        assert 403 == decision.status
        assert "Card Suspended: abnormal-use (calls per hour 3 > 2)" == decision.reason_phrase
    carrier.restore("c1", T0 + 86400 * 3 + 1)
    assert carrier.suspension("c1") is None
    assert 200 == carrier.decide_invite("c1", callee(10), T0 + 86400 * 3 + 2).status


def test_restore_starts_counters_afresh() -> None:
    """After restore() the hourly count starts from zero, not from the calls that tripped it."""
    carrier = build_carrier(calls_per_hour=2, answer=ALWAYS_ANSWER)
    for i in range(3):
        carrier.decide_invite("c1", callee(i), T0 + i)
    carrier.restore("c1", T0 + 10)
    statuses = [carrier.decide_invite("c1", callee(20 + i), T0 + 11 + i).status for i in range(3)]
    assert [200, 200, 403] == statuses
    kinds = [e.kind for e in carrier.events]
    assert 2 == kinds.count(EventKind.SUSPENDED)
    assert 1 == kinds.count(EventKind.RESTORED)


def test_suspension_only_affects_its_card() -> None:
    """Another card's account is untouched by a neighbour's suspension."""
    carrier = build_carrier(cards=("c1", "c2"), calls_per_hour=1, answer=ALWAYS_ANSWER)
    carrier.decide_invite("c1", callee(1), T0)
    assert 403 == carrier.decide_invite("c1", callee(2), T0 + 1).status
    assert 200 == carrier.decide_invite("c2", callee(2), T0 + 2).status


def test_call_ending_after_suspension_does_not_resuspend() -> None:
    """A call still up when its card got suspended ends normally and does not change the cause."""
    carrier = build_carrier(
        calls_per_hour=1, complaint_probability=1.0, complaints_max=0, answer=ALWAYS_ANSWER
    )
    carrier.decide_invite("c1", callee(1), T0)
    carrier.decide_invite("c1", callee(2), T0 + 1)  # suspends (calls per hour)
    assert carrier.record_call_end("c1", callee(1), True, 60, T0 + 60) is None
    suspension = carrier.suspension("c1")
    assert suspension is not None
    assert "calls per hour 2 > 1" == suspension.cause


def test_arrears_402_after_balance_runs_out() -> None:
    """Charged per started minute: 2.5 min at 1.0/min with balance 5 leaves 2, then -1 → 402."""
    carrier = build_carrier(balance=5.0, rate_per_minute=1.0, answer=ALWAYS_ANSWER)
    assert 200 == carrier.decide_invite("c1", callee(1), T0).status
    carrier.record_call_end("c1", callee(1), True, 150, T0 + 160)
    assert 2.0 == carrier.balance("c1")
    assert 200 == carrier.decide_invite("c1", callee(2), T0 + 200).status
    carrier.record_call_end("c1", callee(2), True, 121, T0 + 330)
    assert -1.0 == carrier.balance("c1")
    decision = carrier.decide_invite("c1", callee(3), T0 + 400)
    assert (402, "Payment Required") == (decision.status, decision.reason_phrase)
    assert decision.plan is None
    assert "arrears" in (decision.header("warning") or "")


def test_unanswered_calls_are_free_and_top_up_restores_service() -> None:
    """No talk, no charge; a top-up above zero lets the card call again."""
    carrier = build_carrier(balance=1.0, rate_per_minute=1.0, answer=ALWAYS_ANSWER)
    carrier.record_call_end("c1", callee(1), False, 0, T0)
    assert 1.0 == carrier.balance("c1")
    carrier.record_call_end("c1", callee(1), True, 1, T0 + 10)
    assert 0.0 == carrier.balance("c1")
    assert 402 == carrier.decide_invite("c1", callee(2), T0 + 20).status
    assert 10.0 == carrier.top_up("c1", 10.0, T0 + 30)
    assert 200 == carrier.decide_invite("c1", callee(2), T0 + 40).status


def test_maintenance_503_with_retry_after_inside_window_only() -> None:
    """Inside the window: 503 + Retry-After = seconds to its end; before and after: normal."""
    start = datetime(2026, 3, 2, 12, 0, tzinfo=SHANGHAI).timestamp()
    window = MaintenanceWindow(start, start + 900)
    carrier = build_carrier(maintenance=(window,), answer=ALWAYS_ANSWER)
    assert 200 == carrier.decide_invite("c1", callee(1), start - 1).status
    decision = carrier.decide_invite("c1", callee(2), start + 300)
    assert (503, "Service Unavailable") == (decision.status, decision.reason_phrase)
    assert "600" == decision.header("Retry-After")
    # 120.5 s left rounds up: a client retrying on time must find the window over.
    assert "121" == carrier.decide_invite("c1", callee(3), start + 779.5).header("Retry-After")
    assert 200 == carrier.decide_invite("c1", callee(4), start + 900).status


def test_maintenance_window_limited_to_cards() -> None:
    """A window naming cards leaves the others alone."""
    window = MaintenanceWindow(T0, T0 + 60, frozenset({"c2"}))
    carrier = build_carrier(cards=("c1", "c2"), maintenance=(window,), answer=ALWAYS_ANSWER)
    assert 200 == carrier.decide_invite("c1", callee(1), T0 + 1).status
    assert 503 == carrier.decide_invite("c2", callee(1), T0 + 1).status


def test_maintenance_window_must_have_positive_length() -> None:
    """end <= start is refused."""
    with pytest.raises(ValueError, match="end after"):
        MaintenanceWindow(T0, T0)


def test_scheduled_suspension_fires_at_its_time() -> None:
    """Before 'at' the card works; from 'at' it is suspended with the scheduled reason and cause."""
    scheduled = ScheduledSuspension("c1", T0 + 600, "violation", "range swept")
    carrier = build_carrier(scheduled=(scheduled,), answer=ALWAYS_ANSWER)
    assert 200 == carrier.decide_invite("c1", callee(1), T0 + 599).status
    decision = carrier.decide_invite("c1", callee(2), T0 + 601)
    assert "Card Suspended: violation (range swept)" == decision.reason_phrase
    suspension = carrier.suspension("c1")
    assert suspension is not None
    assert T0 + 600 == suspension.since
    carrier.restore("c1", T0 + 700)
    assert 200 == carrier.decide_invite("c1", callee(3), T0 + 701).status  # fires only once


def test_unknown_card_is_forbidden() -> None:
    """An INVITE from an account the carrier does not know is refused."""
    carrier = build_carrier()
    decision = carrier.decide_invite("ghost", callee(1), T0)
    assert (403, "Forbidden") == (decision.status, decision.reason_phrase)
    assert EventKind.REJECTED_UNKNOWN == carrier.events[-1].kind


def test_accounts_and_credentials() -> None:
    """Accounts are found by card id or digest username; duplicates are refused."""
    carrier = CarrierModel(CarrierConfig(), [CardAccount("c1", "user-1", "pw", 3.0)])
    assert ("c1",) == carrier.cards
    assert "pw" == carrier.account("c1").password
    assert carrier.account_for_username("user-1") == carrier.account("c1")
    assert carrier.account_for_username("nobody") is None
    with pytest.raises(ValueError, match="duplicate"):
        CarrierModel(CarrierConfig(), [CardAccount("c1", "a", "b"), CardAccount("c1", "c", "d")])


def test_accepted_decision_carries_the_plan() -> None:
    """An accepted INVITE's status is the plan's final status, with its reason phrase."""
    carrier = build_carrier()
    phrases = {200: "OK", 486: "Busy Here", 480: "Temporarily Unavailable", 603: "Decline"}
    for i in range(50):
        decision = carrier.decide_invite("c1", callee(i), T0 + i * 100)
        assert decision.accepted
        assert decision.plan is not None
        assert decision.plan.sip_status == decision.status
        assert phrases[decision.status] == decision.reason_phrase


def test_same_seed_same_decisions() -> None:
    """Two carriers with the same seed and traffic decide identically."""

    def run(seed: int) -> list[tuple[int, float, float]]:
        carrier = build_carrier(seed=seed, calls_per_hour=30)
        out = []
        for i in range(60):
            d = carrier.decide_invite("c1", callee(i), T0 + i * 60)
            out.append(
                (
                    d.status,
                    d.plan.ring_seconds if d.plan else -1,
                    d.plan.talk_seconds if d.plan else -1,
                )
            )
        return out

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_events_mask_callees_and_carry_counters() -> None:
    """Events never hold the full callee number unless masking is off; they carry counters."""
    carrier = build_carrier(answer=ALWAYS_ANSWER)
    carrier.decide_invite("c1", "+8613812345678", T0)
    event = carrier.events[-1]
    assert ("+86138****5678", EventKind.ACCEPTED, 200) == (event.callee, event.kind, event.status)
    assert 1 == event.counters["calls_hour"]
    assert "+8613812345678" not in repr(carrier.events)
    assert {"time", "card", "kind", "status", "callee", "cause", "reason", "counters"} == set(
        event.as_dict()
    )

    unmasked = build_carrier(answer=ALWAYS_ANSWER, mask_callees=False)
    unmasked.decide_invite("c1", "+8613812345678", T0)
    assert "+8613812345678" == unmasked.events[-1].callee


def test_warning_header_is_quoted_rfc3261_form() -> None:
    """Warning: 399 carrier.sim "text" with inner quotes escaped (RFC 3261 §20.43)."""
    carrier = build_carrier()
    carrier.suspend("c1", "manual", 'operator said "stop"', T0)
    decision = carrier.decide_invite("c1", callee(1), T0 + 1)
    assert (
        '399 carrier.sim "card c1 suspended: manual (operator said \\"stop\\")"'
        == decision.header("Warning")
    )


def test_check_order_maintenance_before_suspension_before_arrears() -> None:
    """Maintenance answers first, then a suspension, then arrears."""
    window = MaintenanceWindow(T0, T0 + 60)
    carrier = build_carrier(maintenance=(window,), balance=0.0)
    carrier.suspend("c1", "violation", "test", T0)
    assert 503 == carrier.decide_invite("c1", callee(1), T0 + 1).status
    assert 403 == carrier.decide_invite("c1", callee(1), T0 + 61).status
    carrier.restore("c1", T0 + 62)
    assert 402 == carrier.decide_invite("c1", callee(1), T0 + 63).status


def test_every_event_of_a_known_card_carries_counters() -> None:
    """Rejections, charges and restores record the card's counters too (for the report)."""
    window = MaintenanceWindow(T0 + 100, T0 + 200)
    carrier = build_carrier(
        maintenance=(window,), balance=1.0, rate_per_minute=1.0, answer=ALWAYS_ANSWER
    )
    carrier.decide_invite("c1", callee(1), T0)
    carrier.record_call_end("c1", callee(1), True, 30, T0 + 40)
    carrier.decide_invite("c1", callee(2), T0 + 150)
    carrier.decide_invite("c1", callee(2), T0 + 250)
    kinds = [e.kind for e in carrier.events]
    assert [
        EventKind.ACCEPTED,
        EventKind.CHARGED,
        EventKind.CALL_ENDED,
        EventKind.REJECTED_MAINTENANCE,
        EventKind.REJECTED_ARREARS,
    ] == kinds
    assert all("calls_hour" in e.counters and "balance" in e.counters for e in carrier.events)
    assert 0.0 == carrier.events[-1].counters["balance"]


def test_late_report_does_not_rewind_the_day() -> None:
    """A call end stamped before midnight, reported after a new-day INVITE, keeps today's counts."""
    before = datetime(2026, 3, 2, 23, 59, tzinfo=SHANGHAI).timestamp()
    after = datetime(2026, 3, 3, 0, 5, tzinfo=SHANGHAI).timestamp()
    carrier = build_carrier(calls_per_day=1, answer=ALWAYS_ANSWER)
    assert 200 == carrier.decide_invite("c1", callee(1), after).status
    carrier.record_call_end("c1", callee(0), False, 0, before)
    assert 1 == carrier.counters("c1", after)["calls_day"]
    assert 403 == carrier.decide_invite("c1", callee(2), after + 1).status


def test_restore_puts_card_on_probation_thresholds() -> None:
    """With probation thresholds configured, a restored card lives under the tighter limits."""
    base = build_carrier(calls_per_hour=3, answer=ALWAYS_ANSWER)
    probation = AntiFraudThresholds(calls_per_hour=1)
    carrier = CarrierModel(
        replace(base.config, probation=probation), [CardAccount("c1", "c1", "pw")], seed=1
    )
    for i in range(4):
        carrier.decide_invite("c1", callee(i), T0 + i)
    assert carrier.suspension("c1") is not None
    carrier.restore("c1", T0 + 10)
    assert probation == carrier.thresholds("c1")
    assert [200, 403] == [
        carrier.decide_invite("c1", callee(10 + i), T0 + 11 + i).status for i in range(2)
    ]
    assert "calls per hour 2 > 1" in carrier.decide_invite("c1", callee(20), T0 + 20).reason_phrase


def test_restore_of_an_active_card_keeps_its_thresholds() -> None:
    """Restoring a card that was never suspended does not put it on probation."""
    base = build_carrier(calls_per_hour=3)
    carrier = CarrierModel(
        CarrierConfig(
            thresholds=base.config.thresholds, probation=AntiFraudThresholds(calls_per_hour=1)
        ),
        [CardAccount("c1", "c1", "pw")],
    )
    carrier.restore("c1", T0)
    assert 3 == carrier.thresholds("c1").calls_per_hour
    assert "not suspended" == carrier.events[-1].cause


def test_unknown_card_in_bookkeeping_names_the_card() -> None:
    """Bookkeeping calls for a card without an account fail with a clear KeyError."""
    carrier = build_carrier()
    with pytest.raises(KeyError, match="no carrier account for card 'ghost'"):
        carrier.record_call_end("ghost", callee(1), True, 10, T0)


# -- destination-level answers and the INVITEs the carrier saw -------------------------------

AMBIGUOUS = AnswerProfile(
    refuse_403_share=0.1, ring_then_408_share=0.2, ring_then_503_share=0.05, silent_share=0.02
)


def test_a_destination_answers_the_same_way_from_every_card_every_time() -> None:
    """Plain 403, ring then 408/503, silence are the callee's: same answer on any card, any call."""
    carrier = build_carrier(cards=("c1", "c2", "c3"), answer=AMBIGUOUS, seed=4)
    fixed = {}
    for i in range(400):
        outcome = carrier.destination_outcome(callee(i))
        if outcome is not None:
            fixed[callee(i)] = outcome
    assert {o.value for o in fixed.values()} == {
        "refuse_403",
        "ring_then_408",
        "ring_then_503",
        "silent",
    }
    t = T0
    for number, outcome in list(fixed.items())[:40]:
        for card in ("c1", "c2", "c3", "c1"):
            t += 1
            decision = carrier.decide_invite(card, number, t)
            assert decision.plan is not None and outcome == decision.plan.outcome
    # Another carrier with the same seed agrees; another seed does not.
    again = build_carrier(answer=AMBIGUOUS, seed=4)
    assert all(again.destination_outcome(n) == o for n, o in fixed.items())
    other = build_carrier(answer=AMBIGUOUS, seed=5)
    assert any(other.destination_outcome(n) != o for n, o in fixed.items())


def test_destination_shares_leave_the_other_callees_plans_alone() -> None:
    """Callees outside the shares get exactly the plans a carrier without shares draws."""
    plain = build_carrier(seed=8)
    ambiguous = build_carrier(answer=replace(AnswerProfile(), silent_share=0.3), seed=8)
    compared = 0
    for i in range(200):
        number = callee(i)
        for _ in range(2):
            expected = plain.plan_for(number)
            got = ambiguous.plan_for(number)
            if ambiguous.destination_outcome(number) is None:
                assert expected == got
                compared += 1
            else:
                assert "silent" == got.outcome
    assert compared > 200


def test_the_carrier_logs_each_invite_with_a_pseudonymous_callee() -> None:
    """callee_invites: time, card, the callee's first-seen index (never its number), put through."""
    carrier = build_carrier(cards=("c1", "c2"), calls_per_hour=1, answer=ALWAYS_ANSWER)
    carrier.decide_invite("c1", callee(7), T0)
    carrier.decide_invite("c1", callee(8), T0 + 10)  # suspends c1: not put through
    carrier.decide_invite("c2", callee(8), T0 + 20)
    carrier.decide_invite("nope", callee(9), T0 + 30)  # unknown account: not logged
    assert [(T0, "c1", 0, True), (T0 + 10, "c1", 1, False), (T0 + 20, "c2", 1, True)] == [
        (i.time, i.card, i.callee, i.put_through) for i in carrier.callee_invites
    ]

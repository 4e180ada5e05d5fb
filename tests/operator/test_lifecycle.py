"""Card lifecycle through the operator: detection, appeal, probation, lapse, audit, events."""

from __future__ import annotations

import pytest

from gateway.operator.service import (
    BadRequest,
    IllegalAction,
    NotFound,
    Operator,
    effective_profile_of,
)
from gateway.store import QuotaExceeded
from gateway.telemetry.events import Alert, AlertKind, CardStatus, EventBus

from .conftest import T0

DAY = 86400.0


def test_walk_active_suspended_appealing_probation_active(
    operator: Operator, bus: EventBus, published: list[object]
) -> None:
    """A carrier 403 suspends c1; an appeal, its update, probation and the lapse follow, all on record."""
    verdict = operator.manager.on_response(
        "c1", 403, "Suspended", now=T0 + 60, warning='399 carrier "line suspended for abuse"'
    )
    assert "violation" == verdict.marked
    bus.publish_card_events(operator.manager.drain_events())

    operator.appeal(
        "c1",
        actor="dana",
        now=T0 + 3600,
        reference="APL-2026-0042",
        channel="carrier portal",
        submitted_at=T0 + 3000,
        notes="consent records attached",
    )
    operator.appeal_update(
        "c1", actor="dana", now=T0 + DAY, kind="more-info-requested", notes="send recordings"
    )
    operator.appeal_update(
        "c1", actor="dana", now=T0 + 2 * DAY, kind="decision", decision="granted"
    )
    shown = operator.probation("c1", actor="dana", now=T0 + 2 * DAY + 60, duration=7 * DAY)
    assert "probation" == shown["state"]
    assert "careful" == shown["profile_in_force"]

    # Probation limits apply: one call per minute on the careful profile.
    profile = effective_profile_of(operator, "c1")
    assert 1 == profile.calls_per_minute
    t = T0 + 2 * DAY + 120
    operator.store.reserve("c1", "call-1", "+8613912345678", t, profile=profile)
    operator.store.finish("call-1", t + 5, answered=False)
    with pytest.raises(QuotaExceeded):
        operator.store.reserve("c1", "call-2", "+8613912345679", t + 10, profile=profile)

    # Not yet over: nothing lapses; then the end passes and the card returns by itself.
    assert [] == operator.tick(T0 + 5 * DAY)
    lapsed = operator.tick(T0 + 9 * DAY + 61)
    assert ["active"] == [e.to_state.value for e in lapsed]
    assert 5 == effective_profile_of(operator, "c1").calls_per_minute

    shown = operator.show_card("c1", T0 + 9 * DAY + 120)
    transitions = [item for item in shown["timeline"] if item["kind"] == "transition"]
    assert ["suspended", "appealing", "probation", "active"] == [t["to"] for t in transitions]
    assert ["gateway", "dana", "dana", "gateway"] == [t["actor"] for t in transitions]
    assert "SIP/2.0 403 Suspended" == transitions[0]["evidence"]["response"]
    assert "probation-over" == transitions[-1]["cause"]
    kinds = [item["kind"] for item in shown["timeline"]]
    assert "appeal.open" in kinds and "appeal.more-info-requested" in kinds
    appeal = shown["appeals"][0]
    assert ("APL-2026-0042", "carrier portal", "granted") == (
        appeal["reference"],
        appeal["channel"],
        appeal["status"],
    )
    assert ["more-info-requested", "decision"] == [u["kind"] for u in appeal["updates"]]

    # State changes on the bus, in order (the appeal updates republish the state with
    # their own cause, "appeal:…", which is not a change).
    changes = [
        e
        for e in published
        if isinstance(e, CardStatus) and e.cause and not e.cause.startswith("appeal:")
    ]
    assert ["suspended", "appealing", "probation", "active"] == [e.state for e in changes]
    alerts = [e for e in published if isinstance(e, Alert)]
    assert [AlertKind.CARD_SUSPENDED] == [a.kind for a in alerts]


def test_illegal_transitions_are_refused_and_change_nothing(operator: Operator) -> None:
    """Appealing an active card, restoring a retired one, updating a missing appeal: 409, no change."""
    with pytest.raises(IllegalAction):
        operator.appeal("c2", actor="dana", now=T0 + 10, reference="X")
    assert "active" == operator.show_card("c2", T0 + 11)["state"]
    with pytest.raises(IllegalAction):
        operator.appeal_update("c2", actor="dana", now=T0 + 12, kind="note", notes="x")
    operator.retire("c2", actor="dana", now=T0 + 20)
    for action in (operator.restore, operator.suspend, operator.retire):
        with pytest.raises(IllegalAction):
            action("c2", actor="dana", now=T0 + 30)
    with pytest.raises(IllegalAction):
        operator.probation("c2", actor="dana", now=T0 + 30, duration=DAY)
    assert "retired" == operator.show_card("c2", T0 + 40)["state"]
    assert 1 == len(operator.store.transitions("c2"))


def test_bad_input_and_unknown_cards(operator: Operator) -> None:
    """Unknown card → NotFound; unknown reason, profile or both/no end time → BadRequest."""
    with pytest.raises(NotFound):
        operator.suspend("nope", actor="dana", now=T0)
    with pytest.raises(BadRequest):
        operator.suspend("c1", actor="dana", now=T0, reason="bored")
    operator.suspend("c1", actor="dana", now=T0 + 1, reason="violation")
    with pytest.raises(BadRequest):
        operator.probation("c1", actor="dana", now=T0 + 2, duration=DAY, profile="nope")
    with pytest.raises(BadRequest):
        operator.probation("c1", actor="dana", now=T0 + 2)
    with pytest.raises(BadRequest):
        operator.probation("c1", actor="dana", now=T0 + 2, until=T0 + 9, duration=DAY)
    assert "suspended" == operator.show_card("c1", T0 + 3)["state"]


def test_card_record_is_stored_masked_and_audited(operator: Operator) -> None:
    """The registration number is normalized, stored, masked in views and absent from the audit."""
    view = operator.update_record(
        "c1",
        {"holder": "Li Wei", "employee_id": "E-1001", "registered_number": "13912345678"},
        actor="dana",
        now=T0 + 5,
    )
    assert "+86139****5678" == view["registered_number"]
    assert "+8613912345678" == operator.db.card_record("c1").registered_number
    operator.update_record("c1", {"notes": "bought at shop 3"}, actor="erin", now=T0 + 6)
    shown = operator.show_card("c1", T0 + 7)
    assert ("Li Wei", "E-1001", "bought at shop 3") == (
        shown["record"]["holder"],
        shown["record"]["employee_id"],
        shown["record"]["notes"],
    )
    edits = [i for i in shown["timeline"] if i["kind"] == "card.record"]
    assert [("dana", ["employee_id", "holder", "registered_number"]), ("erin", ["notes"])] == [
        (i["actor"], i["detail"]["fields"]) for i in edits
    ]
    assert "13912345678" not in str(operator.db.audit_entries())
    assert "Li Wei" == operator.list_cards(T0 + 8)[0]["holder"]
    with pytest.raises(BadRequest):
        operator.update_record("c1", {"colour": "red"}, actor="dana", now=T0 + 9)


def test_appeal_rejection_returns_the_card_to_suspended(operator: Operator) -> None:
    """A rejected appeal closes it and puts the card back to suspended with its old reason."""
    operator.suspend("c1", actor="dana", now=T0 + 1, reason="abnormal-use")
    operator.appeal("c1", actor="dana", now=T0 + 2, reference="R-1", channel="email")
    shown = operator.appeal_update(
        "c1", actor="dana", now=T0 + 3, kind="decision", decision="rejected", notes="no"
    )
    assert ("suspended", "abnormal-use") == (shown["state"], shown["reason"])
    assert "rejected" == shown["appeals"][0]["status"]
    with pytest.raises(IllegalAction):
        operator.appeal_update("c1", actor="dana", now=T0 + 4, kind="note")

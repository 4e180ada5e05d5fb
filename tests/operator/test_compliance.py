"""Issue 13: complaints that restrain agents, per-number limits an operator can see and clear.

- a complaint without ``--card`` is charged to the card of the last answered call to the
  number (CDRs, ``[policy] complaint_lookup_window``); several cards or agents → ambiguous,
  said so, the last one counts;
- ``[policy.agents]`` complaint ceilings pause the agent (until the window frees, or
  resume), with an ``agent-paused`` alert; resume is audited and alerted;
- a DNC entry from a complaint goes only with force and a reason;
- ``numbers show`` / ``numbers reset`` (audited) over the ``[policy.frequency]`` windows.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.callpath.cdr import CallRecord, Outcome
from gateway.config import load_settings
from gateway.operator.service import BadRequest, IllegalAction, Operator, operator_from_settings
from gateway.store import SQLiteStore
from gateway.telemetry.events import Alert, AlertKind, EventBus
from policies.agent import AgentLimitsPolicy
from policies.decision import RejectReason
from tests.policies.helpers import ctx

from .conftest import T0

NUMBER = "+8613900000001"

LIMITS = """
complaint_lookup_window = "30d"
  [policy.agents]
  complaints_per_day = 1
  complaints_per_week = 3
  [policy.frequency]
  attempts = 2
  attempts_window = "1d"
  answers = 1
  answers_window = "1d"
    [policy.frequency.campaigns.gentle]
    attempts = 1
"""


@pytest.fixture
def op(config_file: Path, published: list[object], bus: EventBus) -> Iterator[Operator]:
    """An operator whose configuration has agent ceilings and frequency limits."""
    text = config_file.read_text().replace(
        'consent = "dnc-only"\n', 'consent = "dnc-only"\n' + LIMITS
    )
    config_file.write_text(text)
    settings = load_settings(config_file)
    operator = operator_from_settings(settings, now=T0, bus=bus)
    yield operator
    operator.close()
    operator.store.close()


def _cdr(
    store: SQLiteStore, call_id: str, card: str, agent: str, at: float, answered: bool = True
) -> None:
    store.add_cdr(
        CallRecord(
            call_id=call_id,
            attempt_at=at,
            destination=NUMBER,
            outcome=Outcome.ANSWERED if answered else Outcome.NO_ANSWER,
            final_code=200 if answered else 480,
            origin=agent,
            cards=(card,),
            answer_at=at + 5 if answered else None,
            end_at=at + 65,
        )
    )


def test_complaint_without_card_lands_on_the_last_answered_call(op: Operator) -> None:
    """No --card/--call: the last answered call within 30 days names card, call and agent."""
    _cdr(op.store, "old-call", "c1", "alice", T0 - 40 * 86400)  # outside the window
    _cdr(op.store, "missed", "c1", "alice", T0 - 3600, answered=False)  # not answered
    _cdr(op.store, "the-call", "c2", "bob", T0 - 7200)
    result = op.complaint_add(NUMBER, actor="dana", now=T0)
    assert ("c2", "the-call", "bob", "cdr") == (
        result["card"],
        result["call_id"],
        result["agent"],
        result["found"],
    )
    assert "ambiguous" not in result
    [complaint] = op.store.complaints(card="c2")
    assert "the-call" == complaint.call_id


def test_complaint_with_several_cards_says_which_it_chose(op: Operator) -> None:
    """Two answered calls on two cards: the last counts, and the answer says so."""
    _cdr(op.store, "first", "c1", "alice", T0 - 5 * 86400)
    _cdr(op.store, "second", "c2", "alice", T0 - 86400)
    result = op.complaint_add(NUMBER, actor="dana", now=T0)
    assert ("c2", "second", True) == (result["card"], result["call_id"], result["ambiguous"])
    assert ["first", "second"] == [c["call_id"] for c in result["candidates"]]
    assert (
        "2 answered calls to this number in 30 days (cards c1, c2; agents alice): counted"
        " against the last (card c2, call second); give --card or --call to choose another"
    ) == result["message"]
    [entry] = [e for e in op.db.audit_entries() if e.action == "complaint.add"]
    assert entry.detail["ambiguous"] is True


def test_complaint_without_any_call_charges_no_card(op: Operator) -> None:
    """Nothing answered in the window: the number is DNC'd, no card is charged."""
    result = op.complaint_add(NUMBER, actor="dana", now=T0, agent="alice")
    assert (None, "none", True) == (result["card"], result["found"], result["dnc"])


def test_second_complaint_in_a_day_pauses_the_agent_until_the_window_frees(
    op: Operator, published: list[object]
) -> None:
    """complaints_per_day = 1: the 2nd pauses alice; her calls get 403 agent-limit with the
    seconds until the 1st complaint is a day old; resume lifts it, audited and alerted."""
    first = op.complaint_add("+8613900000002", actor="dana", now=T0, agent="alice")
    assert not first["agent_paused"]
    second = op.complaint_add("+8613900000003", actor="dana", now=T0 + 3600, agent="alice")
    assert second["agent_paused"]
    assert "over complaint ceiling: 2 complaints per day > 1" == second["pause"]["reason"]
    assert 86400 - 3600 == second["pause"]["retry_after"]
    alerts = [e for e in published if isinstance(e, Alert)]
    assert [(AlertKind.AGENT_PAUSED, "alice")] == [(a.kind, a.detail["agent"]) for a in alerts]

    decision = AgentLimitsPolicy(op.store)(ctx("13912345678", agent="alice"), _dt(T0 + 7200))
    assert decision is not None and RejectReason.AGENT_LIMIT == decision.reason
    assert 86400 - 7200 == decision.retry_after
    assert AgentLimitsPolicy(op.store)(ctx("13912345678", agent="alice"), _dt(T0 + 86401)) is None

    shown = op.agent_status("alice", T0 + 7200)
    assert (True, 2, 2) == (shown["paused"], shown["complaints_day"], shown["complaints_week"])
    resumed = op.agent_resume("alice", actor="dana", now=T0 + 7300, note="talked to her")
    assert resumed["resumed"] is True
    assert AgentLimitsPolicy(op.store)(ctx("13912345678", agent="alice"), _dt(T0 + 7301)) is None
    [entry] = [e for e in op.db.audit_entries() if e.action == "agent.resume"]
    assert ("dana", "alice", "talked to her") == (entry.actor, entry.target, entry.detail["note"])
    alerts = [e for e in published if isinstance(e, Alert)]
    assert AlertKind.AGENT_RESUMED == alerts[-1].kind


def test_pause_written_by_another_process_is_alerted_once(
    op: Operator, published: list[object]
) -> None:
    """The alert loop announces a pause the CLI wrote, once, and its end."""
    op.store.set_agent_paused("bob", True, T0, reason="cli", until=T0 + 100)
    op.check_alerts(T0 + 1)
    op.check_alerts(T0 + 2)
    op.check_alerts(T0 + 200)
    kinds = [(e.kind, e.detail["agent"]) for e in published if isinstance(e, Alert)]
    assert [(AlertKind.AGENT_PAUSED, "bob"), (AlertKind.AGENT_RESUMED, "bob")] == kinds


def test_complaint_dnc_entry_needs_force_and_reason(op: Operator) -> None:
    """Without --force: refused, saying why; --force without a reason: refused; with both:
    removed and audited. A manual entry goes as before."""
    op.complaint_add(NUMBER, actor="dana", now=T0, agent="alice")
    with pytest.raises(IllegalAction) as info:
        op.dnc_remove(NUMBER, actor="dana", now=T0 + 1)
    assert (
        "+86139****0001 is on the DNC list because of a complaint: removing it needs"
        " --force and --reason TEXT (audited)"
    ) == str(info.value)
    with pytest.raises(IllegalAction):
        op.dnc_remove(NUMBER, actor="dana", now=T0 + 1, force=True)
    assert op.store.is_dnc(NUMBER)
    done = op.dnc_remove(NUMBER, actor="dana", now=T0 + 2, force=True, reason="withdrawn by callee")
    assert (True, "withdrawn by callee") == (done["removed"], done["reason"])
    assert not op.store.is_dnc(NUMBER)
    entry = [e for e in op.db.audit_entries() if e.action == "dnc.remove"][-1]
    assert {
        "removed": True,
        "source": "complaint",
        "force": True,
        "reason": "withdrawn by callee",
    } == entry.detail
    op.dnc_add("+8613900000009", actor="dana", now=T0)
    assert op.dnc_remove("+8613900000009", actor="dana", now=T0)["removed"]
    with pytest.raises(BadRequest):
        op.dnc_remove("+8613900000009", actor="dana", now=T0, force=True)


def test_numbers_show_and_reset(op: Operator) -> None:
    """Two attempts in a day reach attempts = 2: show says when the next call may go;
    the campaign's own cap is 1; reset (audited) clears the count, not the cards' quota."""
    for i, at in enumerate((T0, T0 + 600)):
        op.store.reserve("c1", f"k{i}", NUMBER, at, agent="alice")
        op.store.finish(f"k{i}", at + 30, answered=False, talk_seconds=0)
    shown = op.number_show(NUMBER, now=T0 + 1200)
    assert ("+86139****0001", 2, 2, 0) == (
        shown["number"],
        shown["attempts"]["count"],
        shown["attempts"]["max"],
        shown["answers"]["count"],
    )
    assert (["frequency-cap"], 86400 - 1200, False) == (
        shown["blocked_by"],
        shown["retry_after"],
        shown["callable_now"],
    )
    gentle = op.number_show(NUMBER, now=T0 + 1200, campaign="gentle")
    assert 1 == gentle["attempts"]["max"]
    with pytest.raises(BadRequest):
        op.number_reset(NUMBER, actor="dana", now=T0 + 1300, reason=" ")
    cleared = op.number_reset(NUMBER, actor="dana", now=T0 + 1300, reason="wrong lead file")
    assert {"attempts": 2, "answers": 0} == cleared["cleared"]
    after = op.number_show(NUMBER, now=T0 + 1400)
    assert (0, True) == (after["attempts"]["count"], after["callable_now"])
    assert after["reset_at"] is not None
    [entry] = [e for e in op.db.audit_entries() if e.action == "number.reset"]
    assert ("dana", "wrong lead file", 2) == (
        entry.actor,
        entry.detail["reason"],
        entry.detail["attempts"],
    )
    # The card still counts both calls against its own limits.
    assert 2 == len(op.store.card_usage("c1", T0 + 1400).call_starts)


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)

"""The call state table: every legal edge is taken, every other one refused."""

from __future__ import annotations

from typing import Any, cast

import pytest

from gateway.callpath.calls import (
    LEGAL_TRANSITIONS,
    Call,
    CallState,
    IllegalCallTransition,
    Leg,
)

LEGAL = [(a, b) for a, targets in LEGAL_TRANSITIONS.items() for b in sorted(targets)]
ILLEGAL = [(a, b) for a in CallState for b in CallState if b not in LEGAL_TRANSITIONS[a]]


def _call(state: CallState) -> Call:
    leg = Leg(cast(Any, None), ("127.0.0.1", 5060), "a-call", "tag")
    call = Call("key", cast(Any, None), leg, cast(Any, None), "13912345678", 0.0)
    call.state = state
    return call


def test_every_state_has_a_row() -> None:
    """The table names every state (a new state without a row would refuse everything)."""
    assert set(CallState) == set(LEGAL_TRANSITIONS)


def test_a_new_call_is_deciding() -> None:
    """A call starts in DECIDING: nothing has left yet."""
    assert CallState.DECIDING == _call(CallState.DECIDING).state


@pytest.mark.parametrize(("start", "to"), LEGAL, ids=[f"{a}->{b}" for a, b in LEGAL])
def test_legal_edges_are_taken(start: CallState, to: CallState) -> None:
    """Every edge of the table moves the call."""
    call = _call(start)
    call.advance(to)
    assert to == call.state


@pytest.mark.parametrize(("start", "to"), ILLEGAL, ids=[f"{a}->{b}" for a, b in ILLEGAL])
def test_illegal_edges_are_refused(start: CallState, to: CallState) -> None:
    """Any edge outside the table raises and leaves the state as it was."""
    call = _call(start)
    with pytest.raises(IllegalCallTransition) as err:
        call.advance(to)
    assert (start, to) == (err.value.from_state, err.value.to_state)
    assert "a-call" in str(err.value)
    assert start == call.state


def test_ended_is_final_and_answered_survives_it() -> None:
    """ENDED has no way out; ``answered`` (the 2xx's time) still reads true after it."""
    call = _call(CallState.ANSWERED)
    call.answer_at = 1.0
    call.advance(CallState.CONFIRMED)
    call.advance(CallState.ENDED)
    assert call.ended and call.answered
    assert frozenset() == LEGAL_TRANSITIONS[CallState.ENDED]


def test_the_callee_is_never_dialled_again_after_it_rang() -> None:
    """EARLY cannot go back to DIALING: no failover after a 180/183 (DESIGN call flow 5)."""
    assert CallState.DIALING not in LEGAL_TRANSITIONS[CallState.EARLY]
    assert CallState.DIALING in LEGAL_TRANSITIONS[CallState.DIALING]


def test_ringing_is_the_current_b_legs_fact() -> None:
    """``ringing`` follows the B-leg that rang: a cancelled call still knows it rang."""
    call = _call(CallState.EARLY)
    assert not call.ringing
    call.b = Leg(cast(Any, None), ("127.0.0.1", 5070), "b-call", "btag", rang=True)
    assert call.ringing
    call.advance(CallState.CANCELLING)
    assert call.ringing and call.cancelled


def test_the_table_is_the_documented_one() -> None:
    """The edges, spelled out: a change to the table is a change to this test."""
    s = CallState
    expected = {
        (s.DECIDING, s.DIALING), (s.DECIDING, s.ENDED),
        (s.DIALING, s.DIALING), (s.DIALING, s.EARLY), (s.DIALING, s.ANSWERED),
        (s.DIALING, s.CANCELLING), (s.DIALING, s.ENDED),
        (s.EARLY, s.ANSWERED), (s.EARLY, s.CANCELLING), (s.EARLY, s.ENDED),
        (s.ANSWERED, s.CONFIRMED), (s.ANSWERED, s.ENDED),
        (s.CONFIRMED, s.ENDED),
        (s.CANCELLING, s.ENDED),
    }  # fmt: skip
    assert expected == set(LEGAL)

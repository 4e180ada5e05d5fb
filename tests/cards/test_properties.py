"""Properties of the card manager over arbitrary response sequences (Hypothesis)."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.cards import (
    CALLEE_STATUSES,
    LEGAL_TRANSITIONS,
    CardDef,
    CardManager,
    CardStateChanged,
    CarrierRule,
    ResponseClass,
    SuspendReason,
)

T0 = 1_700_000_000.0
DEFS = [CardDef(f"c{i}", "carrier-a", f"+861380000000{i}", "main", i) for i in range(3)]

_event = st.one_of(
    st.tuples(
        st.just("response"),
        st.sampled_from(["c0", "c1", "c2"]),
        st.integers(200, 699),
        st.sampled_from(["", "Suspended", "Busy Here", "Blocked"]),
        st.one_of(st.none(), st.integers(1, 3600)),
        st.booleans(),
    ),
    st.tuples(
        st.just("fault"),
        st.sampled_from(["c0", "c1", "c2"]),
        st.sampled_from(["timer-b", "transport-error"]),
        st.just(""),
        st.none(),
        st.booleans(),
    ),
    st.tuples(
        st.just("tick"), st.just(""), st.integers(0, 4000), st.just(""), st.none(), st.just(False)
    ),
)


@settings(max_examples=150, deadline=None)
@given(events=st.lists(_event, max_size=40))
def test_no_sequence_breaks_the_safety_rules(
    events: list[tuple[str, str, Any, str, int | None, bool]],
) -> None:
    """Callee outcomes never fail over, failover never follows ringing, every change is legal."""
    rule = CarrierRule(403, SuspendReason.VIOLATION, re.compile("(?i)suspend|blocked"))
    m = CardManager(None, rules={"carrier-a": [rule]}, fault_threshold=2)
    m.load(DEFS, T0)
    now = T0
    for kind, card, value, phrase, retry_after, ringing in events:
        now += 1
        if kind == "tick":
            now += value
            m.handle_timer(now)
            continue
        if kind == "fault":
            verdict = m.on_fault(card, value, now=now, ringing=ringing)
        else:
            verdict = m.on_response(
                card, value, phrase, retry_after=retry_after, ringing=ringing, now=now
            )
            if 200 <= value < 300 or value in CALLEE_STATUSES:
                assert verdict.kind in (ResponseClass.ANSWERED, ResponseClass.CALLEE)
        if verdict.failover:
            assert ResponseClass.CARD_FAILURE == verdict.kind
            assert not ringing
    for event in m.drain_events():
        assert isinstance(event, CardStateChanged)
        assert (event.from_state, event.to_state) in LEGAL_TRANSITIONS
    # Whatever happened, selection only ever returns a usable card.
    selection = m.select("main", now=now)
    assert selection.card is None or selection.card.usable

"""Properties of the card manager over arbitrary answer sequences (Hypothesis)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.cards import (
    LEGAL_TRANSITIONS,
    BLegClass,
    CardDef,
    CardManager,
    CardState,
    CardStateChanged,
    CarrierRule,
    CarrierTerms,
    StoreCardSource,
    SuspendReason,
)
from policies.context import CallContext
from policies.quotas import CardUsage, QuotaProfile
from policies.selection import CardSelection

T0 = 1_700_000_000.0
CARDS = ["c0", "c1", "c2"]
DEFS = [CardDef(c, "carrier-a", f"+861380000000{i}", "main", i) for i, c in enumerate(CARDS)]
TERMS = CarrierTerms(
    dead_causes=frozenset({55}), rest_seconds=20, suspect_after=2, suspect_window=100
)
CALLEES = [f"+86138111100{i:02d}" for i in range(4)]


class EmptyLedger:
    """A usage ledger that never counts anything: selection is judged on state alone."""

    def card_usage(self, card_id: str, now: float) -> CardUsage:
        """Nothing in use."""
        return CardUsage()

    def reserve(self, *args: object, **kwargs: object) -> None:
        """Always room."""


_card = st.sampled_from(CARDS)
_callee = st.sampled_from(CALLEES)
_reason_header = st.sampled_from(
    [None, "Q.850;cause=34", "Q.850;cause=55", 'Q.850;cause=21;text="suspended"', "SIP;cause=503"]
)
_event = st.one_of(
    st.tuples(
        st.just("response"),
        _card,
        st.integers(200, 699),
        st.sampled_from(["", "Suspended", "Busy Here", "Blocked", "Maintenance"]),
        st.one_of(st.none(), st.integers(1, 3600)),
        st.booleans(),
        _reason_header,
        _callee,
    ),
    st.tuples(
        st.just("fault"),
        _card,
        st.sampled_from(["timer-b", "transport-error"]),
        st.just(""),
        st.none(),
        st.booleans(),
        st.none(),
        _callee,
    ),
    st.tuples(
        st.just("register"),
        _card,
        st.sampled_from([200, 401, 403, 408, 503, 603]),
        st.just(""),
        st.none(),
        st.just(False),
        st.none(),
        st.just(""),
    ),
    st.tuples(
        st.just("operator"),
        _card,
        st.sampled_from(["clear", "suspend", "restore"]),
        st.just(""),
        st.none(),
        st.just(False),
        st.none(),
        st.just(""),
    ),
    st.tuples(
        st.just("tick"),
        st.just(""),
        st.integers(0, 400),
        st.just(""),
        st.none(),
        st.just(False),
        st.none(),
        st.just(""),
    ),
)


def _operator(m: CardManager, card: str, action: str, now: float) -> None:
    state = m.get(card).state
    if action == "clear" and state is CardState.SUSPECT:
        m.clear(card, now=now)
    elif action == "suspend" and state is not CardState.RETIRED:
        m.suspend(card, now=now)
    elif action == "restore" and state in (CardState.SUSPENDED, CardState.SUSPECT):
        m.restore(card, now=now)


@settings(max_examples=200, deadline=None)
@given(events=st.lists(_event, max_size=50))
def test_no_sequence_breaks_the_safety_rules(events: list[tuple[Any, ...]]) -> None:
    """Callee outcomes never fail over, nothing after ringing moves the call, changes are legal."""
    rules = [
        CarrierRule(403, SuspendReason.VIOLATION, re.compile("(?i)suspend|blocked")),
        CarrierRule(503, SuspendReason.MAINTENANCE, re.compile("(?i)maintenance")),
    ]
    m = CardManager(None, rules={"carrier-a": rules}, terms={"carrier-a": TERMS})
    m.load(DEFS, T0)
    now = T0
    for kind, card, value, phrase, retry_after, ringing, reason_header, callee in events:
        now += 1
        if kind == "tick":
            now += value
            m.handle_timer(now)
            continue
        if kind == "operator":
            _operator(m, card, value, now)
            continue
        before = m.get(card).state
        if kind == "register":
            verdict = m.on_register_response(card, value, phrase, now=now)
            assert not verdict.failover
        elif kind == "fault":
            verdict = m.on_fault(card, value, now=now, ringing=ringing, callee=callee)
        else:
            verdict = m.on_response(
                card,
                value,
                phrase,
                retry_after=retry_after,
                ringing=ringing,
                reason_header=reason_header,
                callee=callee,
                now=now,
            )
            if 200 <= value < 300:
                assert (BLegClass.CALLEE, False) == (verdict.kind, verdict.failover)
        state = m.get(card).state
        if verdict.failover:
            assert verdict.kind in (BLegClass.CARD_DEAD, BLegClass.TRUNK_UNREACHABLE)
            assert not ringing
        if ringing:
            assert BLegClass.TRUNK_UNREACHABLE != verdict.kind
            assert None is verdict.rest_until
        if verdict.kind is BLegClass.CARD_DEAD:
            assert verdict.marked is not None
            assert (CardState.SUSPENDED, verdict.marked) == (state, m.get(card).reason)
        else:
            assert None is verdict.marked
            # Only the suspicion rule changes a state without a card-dead answer.
            assert state in (before, CardState.SUSPECT)
        if state is not before and verdict.kind is not BLegClass.CARD_DEAD:
            assert verdict.event is not None and CardState.SUSPECT == verdict.event.to_state
        if verdict.kind is BLegClass.TRUNK_UNREACHABLE:
            assert verdict.rest_until is not None and verdict.rest_until > now
        for c in CARDS:
            if m.get(c).usable:
                assert m.suspicion(c) < TERMS.suspect_after
    for event in m.drain_events():
        assert isinstance(event, CardStateChanged)
        assert (event.from_state, event.to_state) in LEGAL_TRANSITIONS
    # Whatever happened, selection only ever returns a usable card that is not resting.
    ledger: Any = EmptyLedger()
    source = StoreCardSource(
        m, ledger, profiles={"default": QuotaProfile(name="default")}, timezones={}
    )
    moment = datetime.fromtimestamp(now, UTC)
    ctx = CallContext(
        dialled=CALLEES[0],
        agent="alice",
        campaign=None,
        default_region="CN",
        now=moment,
        destination=CALLEES[0],
        call_id="k",
    )
    decision = CardSelection(source)(ctx, moment)
    if decision.allowed:
        assert decision.card_id is not None
        assert m.get(decision.card_id).usable
        assert None is m.resting_until(decision.card_id, now)
    else:
        usable = [c for c in CARDS if m.get(c).usable and m.resting_until(c, now) is None]
        assert [] == usable

"""Suspicion (ambiguous refusals → suspect) and trunk rests, on a fake clock (plain floats).

carrier-a judges with suspect_after=3 distinct callees within suspect_window=600 s
and rests a card 45 s after trunk-unreachable. c1 and c2 sit in one GSM gateway.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.cards import (
    BLegClass,
    CardDef,
    CardManager,
    CardState,
    CardStateChanged,
    CarrierTerms,
    IllegalTransition,
    StoreCardSource,
    SuspendReason,
    Verdict,
)
from gateway.store import SQLiteStore
from policies.decision import Decision
from policies.selection import CardSelection

from .conftest import PROFILES, RULES, T0, TZ, at, ctx

N = 3
WINDOW = 600.0
REST = 45.0
TERMS = {"carrier-a": CarrierTerms(suspect_after=N, suspect_window=WINDOW, rest_seconds=REST)}
DEFS = [
    CardDef("c1", "carrier-a", "+8613800000001", "main", 1, device="goip-1"),
    CardDef("c2", "carrier-a", "+8613800000002", "main", 2, device="goip-1"),
    CardDef("c4", "carrier-a", "+8613800000004", "main", 3, device="goip-2"),
    CardDef("c3", "carrier-b", "+8613800000003", "backup", 1),
]


def callee(n: int) -> str:
    """A distinct destination per n."""
    return f"+86139000{n:05d}"


@pytest.fixture
def manager(store: SQLiteStore) -> CardManager:
    """A manager with the terms above, over the store."""
    m = CardManager(store, rules=RULES, terms=TERMS)
    m.load(DEFS, T0)
    return m


@pytest.fixture
def probed(manager: CardManager) -> Iterator[list[str]]:
    """Card ids the manager asked to probe."""
    calls: list[str] = []
    manager.probe = calls.append
    yield calls


def refuse(
    m: CardManager, card: str, n: int, now: float, status: int = 403, **kw: object
) -> Verdict:
    """An ambiguous refusal (403 no rule explains, before any 18x) of callee n on card."""
    phrase = {403: "Forbidden", 404: "Not Found", 500: "Server Error"}.get(status, "x")
    return m.on_response(card, status, phrase, now=now, callee=callee(n), **kw)  # type: ignore[arg-type]


def pick(source: StoreCardSource, call_id: str, now: float, **kw: object) -> Decision:
    """The one card picker, as the pipeline and failover call it."""
    return CardSelection(source)(ctx(call_id, now=now, **kw), at(now))  # type: ignore[arg-type]


def make_suspect(m: CardManager, card: str = "c1", now: float = T0) -> Verdict:
    """N ambiguous refusals of N distinct callees, one second apart; the last verdict."""
    verdict = None
    for n in range(N):
        verdict = refuse(m, card, 100 + n, now + n)
    assert verdict is not None
    return verdict


# --- the walk active → suspect ------------------------------------------------------


@pytest.mark.parametrize("statuses", [(403, 403, 403), (403, 404, 500), (503, 502, 404)])
def test_suspect_after_exactly_n_distinct_callees(
    manager: CardManager, store: SQLiteStore, statuses: tuple[int, ...]
) -> None:
    """N−1 ambiguous refusals leave the card active; the N-th makes it suspect."""
    for n, status in enumerate(statuses[:-1]):
        verdict = refuse(manager, "c1", n, T0 + n, status)
        assert (BLegClass.CALLEE, False, None, n + 1) == (
            verdict.kind,
            verdict.failover,
            verdict.event,
            verdict.suspicion,
        )
        assert CardState.ACTIVE == manager.get("c1").state
    verdict = refuse(manager, "c1", 9, T0 + 9, statuses[-1])
    assert verdict.event is not None
    assert (CardState.ACTIVE, CardState.SUSPECT, None, "gateway:suspicion", "gateway") == (
        verdict.event.from_state,
        verdict.event.to_state,
        verdict.event.reason,
        verdict.event.cause,
        verdict.event.actor,
    )
    assert (BLegClass.CALLEE, False, None) == (verdict.kind, verdict.failover, verdict.marked)
    card = manager.get("c1")
    assert (CardState.SUSPECT, None, T0 + 9) == (card.state, card.reason, card.since)
    evidence = verdict.event.evidence
    assert (N, N, WINDOW, sorted(set(statuses))) == (
        evidence["refusals"],
        evidence["distinct_callees"],
        evidence["window_seconds"],
        evidence["statuses"],
    )
    [stored] = store.transitions("c1")
    assert ("active", "suspect", "gateway:suspicion") == (
        stored.from_state,
        stored.to_state,
        stored.cause,
    )
    assert "suspect" == store.get_card("c1").state  # type: ignore[union-attr]


def test_the_change_to_suspect_is_an_event(manager: CardManager) -> None:
    """The CardStateChanged to suspect is in manager.events for the publisher to drain."""
    manager.drain_events()
    verdict = make_suspect(manager)
    events = manager.drain_events()
    assert [verdict.event] == events
    [event] = events
    assert isinstance(event, CardStateChanged)
    assert ("c1", "main", CardState.SUSPECT, T0 + N - 1) == (
        event.card,
        event.pool,
        event.to_state,
        event.at,
    )


def test_probe_is_called_once_when_the_card_turns_suspect(
    manager: CardManager, probed: list[str]
) -> None:
    """The probe hears the card id once; refusals of calls still in flight add nothing."""
    refuse(manager, "c1", 1, T0)
    refuse(manager, "c1", 2, T0 + 1)
    assert [] == probed
    make_suspect(manager, now=T0 + 2)
    assert ["c1"] == probed
    for n in range(10, 20):
        assert None is refuse(manager, "c1", n, T0 + n).event
    assert ["c1"] == probed
    assert CardState.SUSPECT == manager.get("c1").state


def test_the_same_callee_twice_counts_once(manager: CardManager) -> None:
    """Refusing one callee again (a redial) is not a second distinct callee."""
    for t in range(5):
        assert 1 == refuse(manager, "c1", 1, T0 + t).suspicion
    assert 1 == refuse(manager, "c1", 1, T0 + 6, 404).suspicion
    refuse(manager, "c1", 2, T0 + 7)
    assert CardState.ACTIVE == manager.get("c1").state
    assert refuse(manager, "c1", 3, T0 + 8).event is not None


def test_refusals_older_than_the_window_drop_out(manager: CardManager) -> None:
    """Only refusals within suspect_window count."""
    refuse(manager, "c1", 1, T0)
    refuse(manager, "c1", 2, T0 + 300)
    verdict = refuse(manager, "c1", 3, T0 + WINDOW + 1)  # callee 1 fell out
    assert (None, 2) == (verdict.event, verdict.suspicion)
    assert CardState.ACTIVE == manager.get("c1").state
    assert 2 == manager.suspicion("c1")
    verdict = refuse(manager, "c1", 4, T0 + WINDOW + 50)
    assert verdict.event is not None
    assert CardState.SUSPECT == manager.get("c1").state


def test_a_long_slow_trickle_never_makes_a_card_suspect(manager: CardManager) -> None:
    """One ambiguous refusal every window/2 never puts N of them in one window."""
    for n in range(20):
        verdict = refuse(manager, "c1", n, T0 + n * (WINDOW / 2 + 1))
        assert verdict.suspicion <= 2
    assert CardState.ACTIVE == manager.get("c1").state


@pytest.mark.parametrize(
    ("status", "ringing"),
    [(200, False), (200, True), (486, True), (487, True), (403, True), (408, True)],
)
def test_a_call_that_reached_a_callee_resets_the_count(
    manager: CardManager, status: int, ringing: bool
) -> None:
    """An answer or any outcome after ringing proves the card reaches callees."""
    refuse(manager, "c1", 1, T0)
    refuse(manager, "c1", 2, T0 + 1)
    verdict = manager.on_response("c1", status, "x", now=T0 + 2, ringing=ringing, callee=callee(50))
    assert 0 == verdict.suspicion == manager.suspicion("c1")
    refuse(manager, "c1", 3, T0 + 3)
    refuse(manager, "c1", 4, T0 + 4)
    assert CardState.ACTIVE == manager.get("c1").state
    assert refuse(manager, "c1", 5, T0 + 5).event is not None


def test_other_callee_outcomes_neither_count_nor_reset(manager: CardManager) -> None:
    """486 before ringing is the callee's: it does not count, and it proves nothing either."""
    refuse(manager, "c1", 1, T0)
    verdict = manager.on_response("c1", 486, "Busy Here", now=T0 + 1, callee=callee(2))
    assert 1 == verdict.suspicion


def test_the_same_refusal_for_the_same_callee_on_two_cards_is_the_destinations(
    manager: CardManager,
) -> None:
    """callee 1 refused 403 on c1 and on c4: it counts for neither card."""
    assert 1 == refuse(manager, "c1", 1, T0).suspicion
    assert 0 == refuse(manager, "c4", 1, T0 + 1).suspicion
    assert (0, 0) == (manager.suspicion("c1"), manager.suspicion("c4"))
    # The destination stays the destination's: refused again on c1, still not counted.
    assert 0 == refuse(manager, "c1", 1, T0 + 2).suspicion
    for n in (2, 3):
        refuse(manager, "c1", n, T0 + n)
    assert (CardState.ACTIVE, 2) == (manager.get("c1").state, manager.suspicion("c1"))


def test_different_refusals_for_one_callee_count_on_each_card(manager: CardManager) -> None:
    """403 on c1 and 404 on c4 for one callee are not 'the same refusal'."""
    refuse(manager, "c1", 1, T0, 403)
    refuse(manager, "c4", 1, T0 + 1, 404)
    assert (1, 1) == (manager.suspicion("c1"), manager.suspicion("c4"))


@pytest.mark.parametrize("status", [408, 480])
def test_no_answer_after_ringing_never_counts(manager: CardManager, status: int) -> None:
    """408/480 after ringing (or from the far side before it) count only in the answer rate."""
    for n in range(3 * N):
        ringing = n % 2 == 0
        verdict = manager.on_response(
            "c1", status, "x", now=T0 + n, ringing=ringing, callee=callee(n)
        )
        assert (BLegClass.CALLEE, False, 0) == (
            verdict.kind,
            verdict.failover,
            verdict.suspicion,
        )
    assert CardState.ACTIVE == manager.get("c1").state


def test_ringing_refusals_never_count(manager: CardManager) -> None:
    """403/503/500 after an 18x are the callee's: never ambiguous."""
    for n, status in enumerate([403, 503, 500, 404, 403, 503]):
        verdict = manager.on_response("c1", status, "x", now=T0 + n, ringing=True, callee=callee(n))
        assert 0 == verdict.suspicion
    assert CardState.ACTIVE == manager.get("c1").state


def test_trunk_failures_to_distinct_callees_make_the_card_suspect(manager: CardManager) -> None:
    """Timer B on N distinct callees within the window: suspect (the card also rests)."""
    verdict = None
    for n in range(N):
        verdict = manager.on_fault("c1", "timer-b", now=T0 + n, callee=callee(n))
        assert BLegClass.TRUNK_UNREACHABLE == verdict.kind
    assert verdict is not None and verdict.event is not None
    assert CardState.SUSPECT == manager.get("c1").state


def test_probation_card_turns_suspect_and_keeps_its_terms(manager: CardManager) -> None:
    """A card on probation can turn suspect; its end and profile are kept."""
    manager.probation("c1", now=T0, until=T0 + 86400, profile="careful")
    verdict = make_suspect(manager, now=T0 + 10)
    assert verdict.event is not None
    assert CardState.PROBATION == verdict.event.from_state
    card = manager.get("c1")
    assert (CardState.SUSPECT, T0 + 86400, "careful") == (
        card.state,
        card.probation_until,
        card.profile_override,
    )
    assert [] == manager.handle_timer(T0 + 86400)  # no probation-over while suspect


def test_a_dead_card_does_not_turn_suspect(manager: CardManager) -> None:
    """A suspended card stays suspended whatever refusals of calls in flight arrive."""
    manager.suspend("c1", now=T0)
    for n in range(2 * N):
        assert None is refuse(manager, "c1", n, T0 + n).event
    assert CardState.SUSPENDED == manager.get("c1").state


def test_the_suspicion_survives_a_store_outage_in_memory(store: SQLiteStore) -> None:
    """Store down: the card still turns suspect (fail safe), written when the store is back."""
    from .test_transitions import FlakyRepo

    repo = FlakyRepo(store)
    m = CardManager(repo, terms=TERMS)
    m.load(DEFS, T0)
    repo.down = True
    make_suspect(m)
    assert (CardState.SUSPECT, 1) == (m.get("c1").state, m.unsaved_transitions)
    repo.down = False
    m.handle_timer(T0 + 60)
    assert ["suspect"] == [t.to_state for t in store.transitions("c1")]


# --- suspect takes no calls ---------------------------------------------------------


@pytest.fixture
def source(manager: CardManager, store: SQLiteStore) -> StoreCardSource:
    """The card source over this module's manager."""
    return StoreCardSource(manager, store, profiles=PROFILES, timezones=TZ)


def test_a_suspect_card_takes_no_calls(
    manager: CardManager, store: SQLiteStore, source: StoreCardSource
) -> None:
    """CardSelection skips it (state suspect); a bound agent is re-bound; reserve refuses it."""
    make_suspect(manager)
    assert "c2" == pick(source, "k1", T0 + 10).card_id
    store.release("k1", T0 + 10)
    rebound = pick(source, "k2", T0 + 10, bound="c1")
    assert ("c2", "re-bound 1.00") == (rebound.card_id, rebound.detail)
    store.release("k2", T0 + 10)
    alone = pick(source, "k3", T0 + 10, exclude={"c2", "c4"})
    assert (False, "c1 suspect") == (alone.allowed, alone.detail)
    assert not source.reserve("c1", ctx("k4"), T0 + 10, emergency=True)
    emergency = pick(source, "k5", T0 + 10, emergency=True, exclude={"c2", "c4"})
    assert not emergency.allowed


def test_clear_brings_a_suspect_card_back_to_active(
    manager: CardManager, store: SQLiteStore, source: StoreCardSource
) -> None:
    """The operator clears it: active, counting from zero, chosen again."""
    make_suspect(manager)
    event = manager.clear("c1", now=T0 + 100, actor="bob", note="called the carrier")
    assert (CardState.SUSPECT, CardState.ACTIVE, "operator:clear", "bob") == (
        event.from_state,
        event.to_state,
        event.cause,
        event.actor,
    )
    assert (CardState.ACTIVE, 0) == (manager.get("c1").state, manager.suspicion("c1"))
    assert "c1" == pick(source, "k1", T0 + 101).card_id
    assert {"note": "called the carrier"} == store.transitions("c1")[-1].evidence
    # A fresh count: N−1 new refusals are not enough.
    for n in range(N - 1):
        refuse(manager, "c1", 200 + n, T0 + 102 + n)
    assert CardState.ACTIVE == manager.get("c1").state


def test_clear_returns_a_card_to_its_running_probation(manager: CardManager) -> None:
    """Cleared while its probation runs: probation with the same end and profile."""
    manager.probation("c1", now=T0, until=T0 + 86400, profile="careful")
    make_suspect(manager, now=T0 + 10)
    event = manager.clear("c1", now=T0 + 100)
    card = manager.get("c1")
    assert (CardState.PROBATION, CardState.PROBATION, T0 + 86400, "careful") == (
        event.to_state,
        card.state,
        card.probation_until,
        card.profile_override,
    )
    assert T0 + 86400 == manager.get_timer()


def test_clear_after_the_probation_ended_is_active(manager: CardManager) -> None:
    """Cleared after its probation's end: straight to active, no profile override."""
    manager.probation("c1", now=T0, until=T0 + 3600, profile="careful")
    make_suspect(manager, now=T0 + 10)
    manager.clear("c1", now=T0 + 3601)
    card = manager.get("c1")
    assert (CardState.ACTIVE, None, None) == (
        card.state,
        card.probation_until,
        card.profile_override,
    )


def test_clear_only_applies_to_suspect_cards(manager: CardManager) -> None:
    """Clearing an active or suspended card is an illegal transition and changes nothing."""
    with pytest.raises(IllegalTransition):
        manager.clear("c1", now=T0)
    manager.suspend("c2", now=T0)
    with pytest.raises(IllegalTransition):
        manager.clear("c2", now=T0 + 1)
    assert (CardState.ACTIVE, CardState.SUSPENDED) == (
        manager.get("c1").state,
        manager.get("c2").state,
    )


def test_the_operator_confirms_a_suspect_card_by_suspending_it(
    manager: CardManager, store: SQLiteStore
) -> None:
    """suspend from suspect works, with the operator's reason."""
    make_suspect(manager)
    event = manager.suspend("c1", now=T0 + 50, reason=SuspendReason.VIOLATION, note="letter")
    assert (CardState.SUSPECT, CardState.SUSPENDED, SuspendReason.VIOLATION) == (
        event.from_state,
        event.to_state,
        event.reason,
    )
    assert [("active", "suspect"), ("suspect", "suspended")] == [
        (t.from_state, t.to_state) for t in store.transitions("c1")
    ]


def test_a_register_refusal_while_suspect_suspends_it(
    manager: CardManager, store: SQLiteStore
) -> None:
    """The probe's REGISTER refused: the suspicion is confirmed, suspect → suspended."""
    make_suspect(manager)
    verdict = manager.on_register_response("c1", 403, "Forbidden", now=T0 + 30)
    assert verdict.event is not None
    assert (CardState.SUSPECT, CardState.SUSPENDED, SuspendReason.UNKNOWN, False) == (
        verdict.event.from_state,
        verdict.event.to_state,
        verdict.marked,
        verdict.failover,
    )
    assert "carrier:register" == store.transitions("c1")[-1].cause


@pytest.mark.parametrize("status", [200, 408, 503])
def test_a_register_answer_that_proves_nothing_leaves_it_suspect(
    manager: CardManager, status: int
) -> None:
    """The probe's REGISTER accepted or unanswered: still suspect, the operator decides."""
    make_suspect(manager)
    verdict = manager.on_register_response("c1", status, "x", now=T0 + 30)
    assert (None, None) == (verdict.event, verdict.marked)
    assert CardState.SUSPECT == manager.get("c1").state


def test_a_card_dead_answer_while_suspect_suspends_it(manager: CardManager) -> None:
    """A call still in flight meets a rule-matched refusal: suspect → suspended."""
    make_suspect(manager)
    verdict = manager.on_response("c1", 402, "Payment Required", now=T0 + 30)
    assert verdict.event is not None
    assert (CardState.SUSPECT, SuspendReason.ARREARS) == (
        verdict.event.from_state,
        manager.get("c1").reason,
    )


# --- trunk-unreachable: the card rests ----------------------------------------------


def test_trunk_unreachable_rests_the_card_and_selection_skips_it(
    manager: CardManager, store: SQLiteStore, source: StoreCardSource
) -> None:
    """Timer B: the card rests rest_seconds (skipped, cause named), stays active, comes back."""
    verdict = manager.on_fault("c1", "timer-b", now=T0, callee=callee(1))
    assert (BLegClass.TRUNK_UNREACHABLE, True, T0 + REST, None) == (
        verdict.kind,
        verdict.failover,
        verdict.rest_until,
        verdict.marked,
    )
    assert CardState.ACTIVE == manager.get("c1").state
    assert [] == store.transitions("c1")
    assert T0 + REST == manager.resting_until("c1", T0 + 10)

    assert "c2" == pick(source, "k1", T0 + 10).card_id
    store.release("k1", T0 + 10)
    [snap] = source.snapshots(["c1"], T0 + 10)
    assert ("resting after trunk-unreachable", T0 + REST) == (
        snap.unavailable,
        snap.unavailable_until,
    )
    alone = pick(source, "k2", T0 + 10, exclude={"c2", "c4"})
    assert (False, 35) == (alone.allowed, alone.retry_after)
    assert alone.detail == "c1 unavailable resting after trunk-unreachable until 22:14"
    bound = pick(source, "k3", T0 + 10, bound="c1")
    assert (False, 35) == (bound.allowed, bound.retry_after)
    assert bound.detail.startswith("bound card c1 unavailable resting after trunk-unreachable")

    assert None is manager.resting_until("c1", T0 + REST)
    assert "c1" == pick(source, "k4", T0 + REST).card_id


def test_a_bound_agent_may_spill_while_its_card_rests(
    manager: CardManager, source: StoreCardSource
) -> None:
    """With the pool's spill, a bound agent takes another card during the rest."""
    manager.on_fault("c1", "transport-error", now=T0, callee=callee(1))
    assert "c2" == pick(source, "k1", T0 + 1, bound="c1", spill=True).card_id


def test_retry_after_sets_the_rest_and_a_shorter_one_never_shortens_it(
    manager: CardManager,
) -> None:
    """503 + Retry-After rests the card that long; a later, shorter rest keeps the longer end."""
    first = manager.on_response("c1", 503, "Busy", retry_after=300, now=T0, callee=callee(1))
    assert (BLegClass.TRUNK_UNREACHABLE, T0 + 300) == (first.kind, first.rest_until)
    second = manager.on_fault("c1", "timer-b", now=T0 + 10, callee=callee(2))
    assert T0 + 300 == second.rest_until == manager.resting_until("c1", T0 + 11)
    capped = manager.on_response("c4", 503, "Busy", retry_after=10**6, now=T0, callee=callee(3))
    assert T0 + 3600 == capped.rest_until


def test_originating_cause_rests_the_card(manager: CardManager) -> None:
    """A refusal carrying Q.850 cause 34 (no circuit) rests the card like Timer B."""
    verdict = manager.on_response(
        "c4", 503, "Service Unavailable", reason_header="Q.850;cause=34", now=T0, callee="+86"
    )
    assert (BLegClass.TRUNK_UNREACHABLE, "originating-cause", T0 + REST) == (
        verdict.kind,
        verdict.row,
        verdict.rest_until,
    )


def test_restore_ends_a_rest(manager: CardManager) -> None:
    """An operator restore puts the card back in full service, rest included."""
    manager.on_fault("c1", "timer-b", now=T0, callee=callee(1))
    make_suspect(manager, now=T0 + 1)
    manager.restore("c1", now=T0 + 5)
    assert (CardState.ACTIVE, None, 0) == (
        manager.get("c1").state,
        manager.resting_until("c1", T0 + 6),
        manager.suspicion("c1"),
    )


def test_sharing_names_the_cards_of_one_device(manager: CardManager) -> None:
    """sharing(): the cards in the same device (itself included); alone without a device."""
    assert {"c1", "c2"} == manager.sharing("c1") == manager.sharing("c2")
    assert {"c4"} == manager.sharing("c4")
    assert ("goip-1", "card:c3") == (manager.device("c1"), manager.device("c3"))
    assert {"c3"} == manager.sharing("c3")


def test_devices_can_be_given_to_the_manager() -> None:
    """devices= maps card → device for cards whose definitions carry none."""
    m = CardManager(devices={"a": "trunk:x", "b": "trunk:x"})
    m.load(
        [CardDef("a", "x", "+8613800000011"), CardDef("b", "x", "+8613800000012")],
        T0,
    )
    assert {"a", "b"} == m.sharing("a")


def test_a_refused_restore_changes_nothing(manager: CardManager) -> None:
    """restore() of an active card raises IllegalTransition and leaves rest and count alone."""
    manager.on_fault("c1", "timer-b", now=T0, callee=callee(1))
    refuse(manager, "c1", 2, T0 + 1)
    with pytest.raises(IllegalTransition):
        manager.restore("c1", now=T0 + 2)
    assert (T0 + REST, 2) == (manager.resting_until("c1", T0 + 3), manager.suspicion("c1"))

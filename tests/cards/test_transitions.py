"""The card state transition table, operator actions and their persisted history."""

from __future__ import annotations

import itertools

import pytest

from gateway.cards import (
    LEGAL_TRANSITIONS,
    CardManager,
    CardState,
    CardStateChanged,
    IllegalTransition,
    StoreCardSource,
    SuspendReason,
)
from gateway.store import SQLiteStore, StoredCard, StoreUnavailable, TransitionRecord
from policies.selection import CardSelection

from .conftest import DEFS, PROFILES, RULES, T0, TZ, at, ctx

S = CardState
ALL_PAIRS = list(itertools.product(CardState, CardState))

# The design's diagram, spelled out: every pair not listed here must be refused.
EXPECTED_LEGAL = {
    (S.ACTIVE, S.SUSPENDED),
    (S.ACTIVE, S.PROBATION),
    (S.ACTIVE, S.RETIRED),
    (S.SUSPENDED, S.SUSPENDED),
    (S.SUSPENDED, S.APPEALING),
    (S.SUSPENDED, S.PROBATION),
    (S.SUSPENDED, S.ACTIVE),
    (S.SUSPENDED, S.RETIRED),
    (S.APPEALING, S.SUSPENDED),
    (S.APPEALING, S.PROBATION),
    (S.APPEALING, S.ACTIVE),
    (S.APPEALING, S.RETIRED),
    (S.PROBATION, S.ACTIVE),
    (S.PROBATION, S.SUSPENDED),
    (S.PROBATION, S.RETIRED),
    (S.ACTIVE, S.SUSPECT),
    (S.PROBATION, S.SUSPECT),
    (S.SUSPECT, S.SUSPENDED),
    (S.SUSPECT, S.ACTIVE),
    (S.SUSPECT, S.PROBATION),
    (S.SUSPECT, S.RETIRED),
}


def _put_in(manager: CardManager, card: str, state: CardState) -> None:
    """Drive ``card`` from active into ``state`` through legal operator actions."""
    if state is S.ACTIVE:
        return
    if state is S.RETIRED:
        manager.retire(card, now=T0)
        return
    if state is S.PROBATION:
        manager.probation(card, now=T0, until=T0 + 86400, profile="probation")
        return
    if state is S.SUSPECT:
        manager.mark(card, S.SUSPECT, now=T0, cause="test")
        return
    manager.suspend(card, now=T0, reason=SuspendReason.VIOLATION)
    if state is S.APPEALING:
        manager.appeal(card, now=T0)


def _mark(manager: CardManager, card: str, to: CardState) -> CardStateChanged:
    return manager.mark(
        card,
        to,
        now=T0 + 10,
        reason=SuspendReason.MANUAL if to in (S.SUSPENDED, S.APPEALING) else None,
        cause="test",
        probation_until=T0 + 1000 if to is S.PROBATION else None,
    )


def test_table_is_the_designed_one() -> None:
    """The transition table is exactly the design's diagram; retired is terminal."""
    assert EXPECTED_LEGAL == set(LEGAL_TRANSITIONS)
    assert not any(src is S.RETIRED for src, _ in LEGAL_TRANSITIONS)
    # suspect is left only by an operator or a probe, never straight to appealing.
    assert {dst for src, dst in LEGAL_TRANSITIONS if src is S.SUSPECT} == {
        S.SUSPENDED,
        S.ACTIVE,
        S.PROBATION,
        S.RETIRED,
    }


@pytest.mark.parametrize(("src", "dst"), sorted(EXPECTED_LEGAL))
def test_every_legal_transition_is_applied_and_stored(
    manager: CardManager, store: SQLiteStore, src: CardState, dst: CardState
) -> None:
    """A legal change updates the card, is stored with cause and actor, and is emitted."""
    _put_in(manager, "c1", src)
    manager.drain_events()
    event = _mark(manager, "c1", dst)
    assert (src, dst) == (event.from_state, event.to_state)
    assert dst == manager.get("c1").state
    assert T0 + 10 == manager.get("c1").since
    assert [event] == manager.drain_events()
    last = store.transitions("c1")[-1]
    assert (src.value, dst.value, "test", "operator") == (
        last.from_state,
        last.to_state,
        last.cause,
        last.actor,
    )
    assert dst.value == store.get_card("c1").state  # type: ignore[union-attr]


@pytest.mark.parametrize(("src", "dst"), [p for p in ALL_PAIRS if p not in EXPECTED_LEGAL])
def test_every_illegal_transition_raises_and_changes_nothing(
    manager: CardManager, store: SQLiteStore, src: CardState, dst: CardState
) -> None:
    """An illegal change raises IllegalTransition; state, history and events are untouched."""
    _put_in(manager, "c1", src)
    manager.drain_events()
    history = store.transitions("c1")
    with pytest.raises(IllegalTransition) as info:
        _mark(manager, "c1", dst)
    assert (src, dst) == (info.value.from_state, info.value.to_state)
    assert src == manager.get("c1").state
    assert history == store.transitions("c1")
    assert [] == manager.drain_events()


def test_suspension_needs_a_reason_and_probation_an_end(manager: CardManager) -> None:
    """Incomplete transitions are refused before anything changes."""
    with pytest.raises(ValueError):
        manager.mark("c1", S.SUSPENDED, now=T0, cause="x")
    with pytest.raises(ValueError):
        manager.mark("c1", S.PROBATION, now=T0, cause="x")
    with pytest.raises(ValueError):
        manager.probation("c1", now=T0, until=T0 - 1)
    assert S.ACTIVE == manager.get("c1").state


def test_appeal_probation_restore_cycle(manager: CardManager, store: SQLiteStore) -> None:
    """suspended → appealing → probation (reduced profile) → active, all recorded."""
    manager.suspend("c1", now=T0, reason=SuspendReason.VIOLATION, note="carrier letter")
    manager.appeal("c1", now=T0 + 1, actor="bob", note="consent records attached")
    assert SuspendReason.VIOLATION == manager.get("c1").reason
    manager.probation("c1", now=T0 + 2, until=T0 + 7 * 86400, profile="probation")
    card = manager.get("c1")
    assert (S.PROBATION, "probation", T0 + 7 * 86400) == (
        card.state,
        card.effective_profile,
        card.probation_until,
    )
    manager.restore("c1", now=T0 + 3)
    card = manager.get("c1")
    assert (S.ACTIVE, None, "default", None) == (
        card.state,
        card.reason,
        card.effective_profile,
        card.probation_until,
    )
    history = [(t.from_state, t.to_state, t.actor) for t in store.transitions("c1")]
    assert [
        ("active", "suspended", "operator"),
        ("suspended", "appealing", "bob"),
        ("appealing", "probation", "operator"),
        ("probation", "active", "operator"),
    ] == history
    assert {"note": "consent records attached"} == store.transitions("c1")[1].evidence


def test_probation_ends_by_itself(manager: CardManager) -> None:
    """When probation's end passes, the timer returns the card to active."""
    manager.probation("c2", now=T0, until=T0 + 3600, profile="probation")
    assert T0 + 3600 == manager.get_timer()
    assert [] == manager.handle_timer(T0 + 3599)
    [event] = manager.handle_timer(T0 + 3600)
    assert (S.PROBATION, S.ACTIVE, "probation-over", "gateway") == (
        event.from_state,
        event.to_state,
        event.cause,
        event.actor,
    )
    assert "default" == manager.get("c2").effective_profile
    assert None is manager.get_timer()


def test_restart_keeps_a_suspended_card_suspended(store: SQLiteStore) -> None:
    """A new manager over the same store sees the stored state, not the configured default."""
    first = CardManager(store, rules=RULES)
    first.load(DEFS, T0)
    first.on_response("c1", 403, "Forbidden - card suspended", now=T0 + 5)
    first.probation("c3", now=T0 + 6, until=T0 + 999, profile="probation")
    first.mark("c2", S.SUSPECT, now=T0 + 7, cause="test")

    second = CardManager(store)
    second.load(DEFS, T0 + 100)
    c1, c2, c3 = second.get("c1"), second.get("c2"), second.get("c3")
    assert (S.SUSPENDED, SuspendReason.VIOLATION, T0 + 5) == (c1.state, c1.reason, c1.since)
    assert (S.PROBATION, T0 + 999, "probation") == (
        c3.state,
        c3.probation_until,
        c3.profile_override,
    )
    assert (S.SUSPECT, None, T0 + 7) == (c2.state, c2.reason, c2.since)


def test_restart_keeps_a_suspect_cards_probation_terms(store: SQLiteStore) -> None:
    """A probation card that turned suspect keeps its end and profile across a restart."""
    first = CardManager(store)
    first.load(DEFS, T0)
    first.probation("c3", now=T0, until=T0 + 999, profile="probation")
    first.mark("c3", S.SUSPECT, now=T0 + 1, cause="test")
    second = CardManager(store)
    second.load(DEFS, T0 + 100)
    c3 = second.get("c3")
    assert (S.SUSPECT, T0 + 999, "probation") == (
        c3.state,
        c3.probation_until,
        c3.profile_override,
    )
    second.clear("c3", now=T0 + 200)
    assert (S.PROBATION, T0 + 999, "probation") == (
        c3.state,
        c3.probation_until,
        c3.profile_override,
    )


class FlakyRepo:
    """A CardRepository over a real store that can be switched off."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self.down = False

    def upsert_card(self, card: StoredCard) -> StoredCard:
        """Delegate unless down."""
        self._check()
        return self.store.upsert_card(card)

    def load_cards(self) -> list[StoredCard]:
        """Delegate unless down."""
        self._check()
        return self.store.load_cards()

    def save_transition(self, card: StoredCard, transition: TransitionRecord) -> None:
        """Delegate unless down."""
        self._check()
        self.store.save_transition(card, transition)

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("switched off")


def test_store_outage_keeps_automatic_marks_and_refuses_restores(store: SQLiteStore) -> None:
    """Store down: a carrier suspension still applies and is written later; a restore fails."""
    repo = FlakyRepo(store)
    manager = CardManager(repo)
    manager.load(DEFS, T0)
    repo.down = True
    verdict = manager.on_response("c1", 402, "Payment Required", now=T0)
    assert S.SUSPENDED == manager.get("c1").state
    assert verdict.event is not None
    assert 1 == manager.unsaved_transitions
    with pytest.raises(StoreUnavailable):
        manager.restore("c1", now=T0 + 1)
    assert S.SUSPENDED == manager.get("c1").state
    assert T0 + 1 + manager.store_retry_seconds == manager.get_timer()
    assert [] == store.transitions("c1")

    repo.down = False
    manager.handle_timer(T0 + 10)
    assert 0 == manager.unsaved_transitions
    assert [("active", "suspended", "arrears")] == [
        (t.from_state, t.to_state, t.reason) for t in store.transitions("c1")
    ]
    assert "suspended" == store.get_card("c1").state  # type: ignore[union-attr]
    assert None is manager.get_timer()


def test_sync_from_store_adopts_a_peer_instance_suspension(store: SQLiteStore) -> None:
    """Two instances share the file: gw2 learns gw1's suspension on its next sync."""
    gw1, gw2 = CardManager(store), CardManager(store)
    gw1.load(DEFS, T0)
    gw2.load(DEFS, T0)
    gw1.on_response("c1", 402, "Payment Required", now=T0 + 1)
    assert [] == gw1.sync_from_store(T0 + 2)  # nothing new for the writer itself
    [event] = gw2.sync_from_store(T0 + 2)
    assert (S.ACTIVE, S.SUSPENDED, "peer", SuspendReason.ARREARS) == (
        event.from_state,
        event.to_state,
        event.actor,
        event.reason,
    )
    source = StoreCardSource(gw2, store, profiles=PROFILES, timezones=TZ)
    assert "c2" == CardSelection(source)(ctx("k1", now=T0 + 3), at(T0 + 3)).card_id
    assert [] == gw2.sync_from_store(T0 + 4)
    assert 1 == len(store.transitions("c1"))  # the peer wrote nothing back

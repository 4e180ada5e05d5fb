"""Tests for card selection: bound card, stickiness, headroom order, states, Retry-After."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from policies.context import CallContext
from policies.decision import RejectReason
from policies.memory import CardRecord, InMemoryCardStore
from policies.quotas import CallOutcome, CardSnapshot, CardState, QuotaProfile
from policies.selection import CardSelection
from tests.policies.helpers import ctx, ts, utc

NOW = utc(2026, 6, 1, 4, 0)
T = NOW.timestamp()
PROFILE = QuotaProfile(calls_per_hour=10, concurrent=1)


def store_with(*cards: CardRecord) -> InMemoryCardStore:
    """An in-memory store holding the given cards."""
    store = InMemoryCardStore()
    for record in cards:
        store.add_card(record)
    return store


def used(record: CardRecord, calls: int) -> CardRecord:
    """Give a card `calls` finished calls in the last hour."""
    record.starts.extend(T - 3000 + i * 10 for i in range(calls))
    return record


def test_most_headroom_wins() -> None:
    """Without binding or history the card with the most headroom is chosen."""
    store = store_with(
        used(CardRecord("a", PROFILE), 5),
        used(CardRecord("b", PROFILE), 2),
        CardRecord("c", PROFILE),
    )
    decision = CardSelection(store)(ctx("13812345678", NOW), NOW)
    assert (True, "c") == (decision.allowed, decision.card_id)


def test_priority_breaks_headroom_ties() -> None:
    """Equal headroom: lower pool priority first, then card id."""
    store = store_with(CardRecord("b", PROFILE, priority=2), CardRecord("a", PROFILE, priority=1))
    assert "a" == CardSelection(store)(ctx("13812345678", NOW), NOW).card_id


def test_bound_card_first_even_with_less_headroom() -> None:
    """The agent's bound card is used while it has headroom."""
    store = store_with(used(CardRecord("bound", PROFILE), 8), CardRecord("free", PROFILE))
    decision = CardSelection(store)(ctx("13812345678", NOW, bound_card="bound"), NOW)
    assert "bound" == decision.card_id


def test_bound_card_exhausted_waits_with_its_cause() -> None:
    """A bound card at its limit: 503 with that card's cause and Retry-After, no other card."""
    store = store_with(used(CardRecord("bound", PROFILE), 10), CardRecord("free", PROFILE))
    decision = CardSelection(store)(ctx("13812345678", NOW, bound_card="bound"), NOW)
    assert (False, RejectReason.NO_CARD_AVAILABLE) == (decision.allowed, decision.reason)
    assert "bound calls_per_hour 10/10" in decision.detail
    # The oldest of the 10 calls (T - 3000) ages out of the hour at T + 600.
    assert 600 == decision.retry_after
    assert [] == store.card("free").starts


def test_bound_card_exhausted_spills_when_the_pool_allows() -> None:
    """With spill on (the pool's setting) the pool card with most headroom takes the call."""
    store = store_with(used(CardRecord("bound", PROFILE), 10), CardRecord("free", PROFILE))
    context = replace(ctx("13812345678", NOW, bound_card="bound"), spill=True)
    assert "free" == CardSelection(store)(context, NOW).card_id


def test_dead_bound_card_gives_way_to_the_pool() -> None:
    """A suspended bound card is no card to wait for: the pool's best card (re-binding)."""
    store = store_with(
        CardRecord("bound", PROFILE, state=CardState.SUSPENDED), CardRecord("free", PROFILE)
    )
    decision = CardSelection(store)(ctx("13812345678", NOW, bound_card="bound"), NOW)
    assert ("free", "re-bound 1.00") == (decision.card_id, decision.detail)


def test_excluded_cards_are_never_chosen() -> None:
    """Failover names the cards tried (or sharing a failed trunk): they are skipped."""
    store = store_with(CardRecord("a", PROFILE, priority=1), CardRecord("b", PROFILE, priority=2))
    context = replace(ctx("13812345678", NOW), exclude=frozenset({"a"}))
    assert "b" == CardSelection(store)(context, NOW).card_id
    context = replace(ctx("13812345678", NOW), exclude=frozenset({"a", "b"}))
    assert not CardSelection(store)(context, NOW).allowed


def test_sticky_last_card_preferred_over_more_headroom() -> None:
    """The card used last is kept (no rotation) while it has headroom."""
    store = store_with(used(CardRecord("last", PROFILE), 6), CardRecord("fresh", PROFILE))
    decision = CardSelection(store)(ctx("13812345678", NOW, last_card="last"), NOW)
    assert "last" == decision.card_id


def test_sticky_threshold_rotates_when_low() -> None:
    """Below sticky_min_headroom the last card is no longer preferred."""
    store = store_with(used(CardRecord("last", PROFILE), 9), CardRecord("fresh", PROFILE))
    selection = CardSelection(store, sticky_min_headroom=0.2)
    assert "fresh" == selection(ctx("13812345678", NOW, last_card="last"), NOW).card_id


def test_non_active_cards_skipped_probation_uses_its_profile() -> None:
    """Suspended/appealing/retired cards are skipped; a probation card obeys its profile."""
    probation = QuotaProfile(name="probation", calls_per_hour=1, concurrent=1)
    store = store_with(
        CardRecord("s", PROFILE, state=CardState.SUSPENDED),
        CardRecord("ap", PROFILE, state=CardState.APPEALING),
        CardRecord("r", PROFILE, state=CardState.RETIRED),
        used(CardRecord("p", PROFILE, state=CardState.PROBATION, probation_profile=probation), 1),
    )
    decision = CardSelection(store)(ctx("13812345678", NOW), NOW)
    assert (False, 503, RejectReason.NO_CARD_AVAILABLE) == (
        decision.allowed,
        decision.sip_code,
        decision.reason,
    )
    store.card("p").probation_profile = QuotaProfile(name="probation", calls_per_hour=2)
    assert "p" == CardSelection(store)(ctx("13812345678", NOW), NOW).card_id


def test_no_card_retry_after_is_earliest_free_time() -> None:
    """503 Retry-After is the seconds until the earliest card frees."""
    profile = QuotaProfile(calls_per_minute=1, concurrent=None)
    a, b = CardRecord("a", profile), CardRecord("b", profile)
    a.starts.append(T - 20)  # frees in 40 s
    b.starts.append(T - 50)  # frees in 10 s
    decision = CardSelection(store_with(a, b))(ctx("13812345678", NOW), NOW)
    assert (503, 10) == (decision.sip_code, decision.retry_after)
    assert 'SIP;cause=503;text="no-card-available"' == decision.reason_header
    assert "a calls_per_minute 1/1 in 60s until 04:00" in decision.detail
    assert "b calls_per_minute 1/1 in 60s until 04:00" in decision.detail


def test_no_card_unknown_free_time_uses_default() -> None:
    """When only busy or suspended cards exist, Retry-After falls back to the default."""
    busy = CardRecord("busy", PROFILE)
    busy.in_use = 1
    store = store_with(busy, CardRecord("s", PROFILE, state=CardState.SUSPENDED))
    decision = CardSelection(store, default_retry_after=45)(ctx("13812345678", NOW), NOW)
    assert 45 == decision.retry_after


def test_busy_card_caps_retry_after_at_the_default() -> None:
    """One card over its daily limit, the other only busy: wait for a call to end,
    not for the first card's day to reset (the caller would stop for the rest of the day)."""
    daily = QuotaProfile(calls_per_day=1, concurrent=1)
    over = CardRecord("over", daily)
    over.starts.append(T - 60)
    busy = CardRecord("busy", daily)
    busy.in_use = 1
    decision = CardSelection(store_with(over, busy), default_retry_after=45)(
        ctx("13812345678", NOW), NOW
    )
    assert (503, 45) == (decision.sip_code, decision.retry_after)
    alone = CardSelection(store_with(over), default_retry_after=45)(ctx("13812345678", NOW), NOW)
    assert alone.retry_after is not None and alone.retry_after > 3600  # the day's end


def test_empty_pool() -> None:
    """No card at all is a 503 with the default Retry-After."""
    decision = CardSelection(store_with())(ctx("13812345678", NOW), NOW)
    assert ("no cards in pool", 60) == (decision.detail, decision.retry_after)


def test_reservation_is_write_ahead() -> None:
    """Selecting reserves the call: the next attempt sees the card in use."""
    store = store_with(CardRecord("only", PROFILE))
    selection = CardSelection(store)
    assert "only" == selection(ctx("13812345678", NOW), NOW).card_id
    assert 1 == store.card("only").in_use
    second = selection(ctx("13912345678", NOW), NOW)
    assert (False, "only concurrent 1/1 in use") == (second.allowed, second.detail)
    store.finish("only", CallOutcome(T, True, 30.0, ended_at=T + 40))
    assert "only" == selection(ctx("13912345678", NOW), NOW).card_id


def test_lost_reservation_race_tries_next_card() -> None:
    """If the store refuses a reservation (race), the next ranked card is reserved."""

    class Racy(InMemoryCardStore):
        def reserve(self, card_id: str, ctx: CallContext, now: float, *, emergency: bool) -> bool:
            if card_id == "a":
                return False
            return super().reserve(card_id, ctx, now, emergency=emergency)

    store = Racy()
    store.add_card(CardRecord("a", PROFILE, priority=0))
    store.add_card(CardRecord("b", PROFILE, priority=1))
    assert "b" == CardSelection(store)(ctx("13812345678", NOW), NOW).card_id
    store.card("b").in_use = 1
    decision = CardSelection(store)(ctx("13812345678", NOW), NOW)
    assert (False, 1) == (decision.allowed, decision.retry_after)


def test_emergency_ignores_quotas_but_not_states() -> None:
    """An emergency call takes an exhausted card, never a suspended one."""
    store = store_with(
        used(CardRecord("full", QuotaProfile(calls_per_hour=1)), 5),
        CardRecord("s", PROFILE, state=CardState.SUSPENDED),
    )
    decision = CardSelection(store)(ctx("110", NOW), NOW)
    assert ("full", True) == (decision.card_id, decision.allowed)


def test_agent_pool_restricts_candidates() -> None:
    """An agent bound to a pool only gets cards of that pool."""
    store = store_with(CardRecord("x", PROFILE, pool="east"), CardRecord("y", PROFILE, pool="west"))
    store.bind_agent_pool("alice", "west")
    snapshots: Sequence[CardSnapshot] = store.candidates(ctx("13812345678", NOW), T)
    assert ["y"] == [s.card_id for s in snapshots]
    assert "y" == CardSelection(store)(ctx("13812345678", NOW), NOW).card_id


def test_store_release_and_daily_usage() -> None:
    """release undoes a reservation; usage reports today's callees and talk in the carrier day."""
    store = store_with(CardRecord("c", PROFILE, timezone="Asia/Shanghai"))
    context = ctx("13812345678", NOW)
    assert store.reserve("c", context, T, emergency=False)
    store.release("c", T, context.destination)
    usage = store.card_usage("c", T)
    assert ((), frozenset(), 0) == (usage.call_starts, usage.callees_today, usage.in_use)
    assert store.reserve("c", context, T, emergency=False)
    store.finish("c", CallOutcome(T, True, 120.0, ended_at=T + 130))
    today = store.card_usage("c", T + 200)
    assert (frozenset({"+8613812345678"}), 120.0) == (today.callees_today, today.talk_seconds_today)
    tomorrow = store.card_usage("c", ts(2026, 6, 1, 16, 0))  # Shanghai midnight
    assert (frozenset(), 0.0) == (tomorrow.callees_today, tomorrow.talk_seconds_today)

"""Property tests: lazy best-bound-first ranking equals the full ranking; the bound is an upper bound."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from policies.quotas import (
    CardSnapshot,
    CardState,
    CardUsage,
    Headroom,
    QuotaProfile,
    StartTimes,
    evaluate_card,
)
from policies.selection import headroom_bound, rank_cards, ranked_lazily
from tests.policies.helpers import ctx, utc

NOW = utc(2026, 6, 1, 4, 0)
T = NOW.timestamp()

limits = st.one_of(st.none(), st.integers(min_value=1, max_value=20))


@st.composite
def cards(draw: st.DrawFn) -> list[CardSnapshot]:
    """Random pools of cards with random limits, states and recent starts."""
    out: list[CardSnapshot] = []
    for i in range(draw(st.integers(min_value=0, max_value=12))):
        profile = QuotaProfile(
            calls_per_minute=draw(limits),
            calls_per_hour=draw(limits),
            calls_per_day=draw(limits),
            concurrent=draw(st.one_of(st.none(), st.integers(min_value=1, max_value=3))),
            talk_minutes_per_day=draw(st.one_of(st.none(), st.just(60.0))),
            distinct_callees_per_day=draw(st.one_of(st.none(), st.integers(0, 4))),
            min_gap_seconds=draw(st.one_of(st.none(), st.just(120.0))),
        )
        offsets = draw(st.lists(st.integers(min_value=1, max_value=20_000), max_size=25))
        usage = CardUsage(
            call_starts=StartTimes(tuple(sorted(T - o for o in offsets))),
            in_use=draw(st.integers(min_value=0, max_value=2)),
            talk_seconds_today=draw(st.sampled_from([0.0, 600.0, 1800.0, 3600.0])),
            callees_today=frozenset(
                draw(
                    st.sets(st.sampled_from(["+8613812345678", "+8613900000001", "+8613900000002"]))
                )
            ),
        )
        state = draw(
            st.sampled_from(
                [CardState.ACTIVE, CardState.ACTIVE, CardState.PROBATION, CardState.SUSPENDED]
            )
        )
        out.append(
            CardSnapshot(
                f"c{i}",
                state,
                profile,
                "Asia/Shanghai",
                usage,
                priority=draw(st.integers(min_value=0, max_value=2)),
            )
        )
    return out


@settings(max_examples=80, deadline=None)
@given(pool=cards())
def test_lazy_ranking_matches_full_ranking(pool: list[CardSnapshot]) -> None:
    """ranked_lazily yields the same order as ranking every card, and evaluates all when drained."""
    context = ctx("13812345678", NOW)
    full, full_eval = rank_cards(pool, context, T)
    evaluations: dict[str, object] = {}
    lazy = list(ranked_lazily(pool, context, T, evaluations))  # type: ignore[arg-type]
    assert [c.card_id for c in full] == [c.card_id for c in lazy]
    assert full_eval == evaluations


@settings(max_examples=80, deadline=None)
@given(pool=cards())
def test_bound_is_an_upper_bound(pool: list[CardSnapshot]) -> None:
    """No card scores above its cheap bound; a card with bound -1 is exhausted."""
    for card in pool:
        bound = headroom_bound(card, T)
        result = evaluate_card(card, T, "+8613812345678")
        if isinstance(result, Headroom):
            assert result.score <= bound
        else:
            assert bound <= 1.0
        if bound < 0:
            assert not isinstance(result, Headroom)

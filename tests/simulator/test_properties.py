"""Property tests: the carrier's hourly limit holds for any arrival pattern; plans stay sane."""

from __future__ import annotations

import bisect
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.answer import AnswerModel, AnswerProfile
from tests.simulator.support import ALWAYS_ANSWER, T0, build_carrier, callee

gaps = st.lists(
    st.floats(min_value=0.0, max_value=900.0, allow_nan=False), min_size=1, max_size=120
)


@settings(max_examples=60, deadline=None)
@given(gaps=gaps, limit=st.integers(min_value=1, max_value=20))
def test_no_rolling_hour_holds_more_accepted_calls_than_the_limit(
    gaps: list[float], limit: int
) -> None:
    """Whatever the arrival times, accepted INVITEs never exceed the limit in any 3600 s window,
    and the card is suspended exactly when some arrival would have made it limit + 1."""
    carrier = build_carrier(calls_per_hour=limit, answer=ALWAYS_ANSWER)
    now = T0
    accepted: list[float] = []
    first_refusal: float | None = None
    for i, gap in enumerate(gaps):
        now += gap
        decision = carrier.decide_invite("c1", callee(i), now)
        if decision.accepted:
            assert first_refusal is None
            accepted.append(now)
        elif first_refusal is None:
            first_refusal = now
            in_window = len(accepted) - bisect.bisect_right(accepted, now - 3600)
            assert limit == in_window
            assert f"calls per hour {limit + 1} > {limit}" in decision.reason_phrase
    for i, t in enumerate(accepted):
        in_window = i + 1 - bisect.bisect_right(accepted, t - 3600)
        assert in_window <= limit


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**32),
    weights=st.lists(st.integers(min_value=0, max_value=10), min_size=4, max_size=4).filter(
        lambda w: sum(w) > 0
    ),
    mean=st.floats(min_value=1.0, max_value=600.0),
    sigma=st.floats(min_value=0.0, max_value=2.0),
)
def test_plans_respect_the_profile(
    seed: int, weights: list[int], mean: float, sigma: float
) -> None:
    """Every plan has a non-negative ring, talk only when answered, and talk inside the clamp."""
    total = sum(weights)
    answer, busy, no_answer, decline = (w / total for w in weights)
    profile = AnswerProfile(
        answer=answer,
        busy=busy,
        no_answer=no_answer,
        decline=decline,
        talk_mean=mean,
        talk_sigma=sigma,
        talk_min=1.0,
        talk_max=1200.0,
    )
    model = AnswerModel(profile, random.Random(seed))
    for _ in range(50):
        plan = model.plan()
        assert plan.ring_seconds >= 0
        if plan.answered:
            assert 1.0 <= plan.talk_seconds <= 1200.0
        else:
            assert 0.0 == plan.talk_seconds

"""Tests for the answer model: validation, determinism and distribution with a fixed seed."""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter

import pytest

from simulator.answer import AnswerModel, AnswerProfile, CallPlan, Outcome


def draw(seed: int, n: int, profile: AnswerProfile | None = None) -> list[CallPlan]:
    """Draw ``n`` plans from a fresh model seeded with ``seed``."""
    model = AnswerModel(profile or AnswerProfile(), random.Random(seed))
    return [model.plan() for _ in range(n)]


def test_same_seed_same_plans() -> None:
    """A fixed seed gives the identical sequence of plans."""
    assert draw(42, 200) == draw(42, 200)


def test_different_seed_different_plans() -> None:
    """Another seed gives another sequence."""
    assert draw(1, 50) != draw(2, 50)


def test_outcome_shares_follow_probabilities() -> None:
    """Over 20 000 draws each outcome's share is within 1.5 points of its probability."""
    profile = AnswerProfile(answer=0.5, busy=0.2, no_answer=0.2, decline=0.1)
    counts = Counter(p.outcome for p in draw(7, 20_000, profile))
    expected = {
        Outcome.ANSWER: 0.5,
        Outcome.BUSY: 0.2,
        Outcome.NO_ANSWER: 0.2,
        Outcome.DECLINE: 0.1,
    }
    for outcome, share in expected.items():
        assert share == pytest.approx(counts[outcome] / 20_000, abs=0.015)


def test_status_and_timing_per_outcome() -> None:
    """Each outcome carries its SIP status; only answered calls talk; no-answer rings to timeout."""
    profile = AnswerProfile(no_answer_seconds=25.0, busy_ring=0.5, ring_min=2, ring_max=9)
    statuses = {
        Outcome.ANSWER: 200,
        Outcome.BUSY: 486,
        Outcome.NO_ANSWER: 480,
        Outcome.DECLINE: 603,
    }
    for plan in draw(3, 2000, profile):
        assert statuses[plan.outcome] == plan.sip_status
        assert plan.answered == (plan.talk_seconds > 0)
        if plan.outcome is Outcome.NO_ANSWER:
            assert 25.0 == plan.ring_seconds
        elif plan.outcome is Outcome.BUSY:
            assert 0.5 == plan.ring_seconds
        else:
            assert 2 <= plan.ring_seconds <= 9
        assert plan.ring_seconds + plan.talk_seconds == plan.duration_seconds


def test_talk_time_lognormal_mean_and_clamp() -> None:
    """Talk times average near talk_mean (unclamped) and always stay inside the clamp."""
    profile = AnswerProfile(
        answer=1,
        busy=0,
        no_answer=0,
        decline=0,
        talk_mean=60,
        talk_sigma=0.8,
        talk_min=1,
        talk_max=100_000,
    )
    talks = [p.talk_seconds for p in draw(11, 20_000, profile)]
    assert 60 == pytest.approx(statistics.fmean(talks), rel=0.05)
    clamped = AnswerProfile(
        answer=1,
        busy=0,
        no_answer=0,
        decline=0,
        talk_mean=60,
        talk_sigma=1.5,
        talk_min=10,
        talk_max=120,
    )
    talks = [p.talk_seconds for p in draw(11, 5000, clamped)]
    assert 10 == min(talks)
    assert 120 == max(talks)


def test_zero_sigma_talk_time_is_the_mean() -> None:
    """With sigma 0 the lognormal collapses to its mean."""
    profile = AnswerProfile(answer=1, busy=0, no_answer=0, decline=0, talk_mean=42, talk_sigma=0)
    assert {42.0} == {p.talk_seconds for p in draw(5, 20, profile)}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"answer": 0.9}, "sum to 1"),
        ({"answer": -0.1, "busy": 0.65}, ">= 0"),
        ({"ring_min": 10, "ring_max": 5}, "ring_min"),
        ({"talk_min": 0}, "talk_min"),
        ({"talk_mean": 0}, "talk_mean"),
    ],
)
def test_profile_validation(kwargs: dict[str, float], message: str) -> None:
    """Impossible profiles are refused with a message naming the field."""
    with pytest.raises(ValueError, match=message):
        AnswerProfile(**kwargs)


def test_plan_is_frozen() -> None:
    """Plans are values; the UAS cannot change them by accident."""
    plan = draw(1, 1)[0]
    with pytest.raises(AttributeError):
        plan.ring_seconds = 0  # type: ignore[misc]
    assert math.isfinite(plan.duration_seconds)


# -- destination-level answers -------------------------------------------------------------

AMBIGUOUS = AnswerProfile(
    refuse_403_share=0.1,
    ring_then_408_share=0.2,
    ring_then_503_share=0.05,
    silent_share=0.02,
    no_answer_seconds=25.0,
    ring_min=2.0,
    ring_max=9.0,
    silent_seconds=32.0,
)


def destinations(seed: int, n: int, profile: AnswerProfile = AMBIGUOUS) -> list[Outcome | None]:
    """The destination outcome of ``n`` callees, each from its own stream (as the carrier)."""
    return [
        AnswerModel.destination(profile, random.Random(f"{seed}:destination:{i}")) for i in range(n)
    ]


def test_destination_shares_are_roughly_honoured() -> None:
    """Over 20 000 callees each destination share is within 1 point; the rest answer per call."""
    counts = Counter(destinations(5, 20_000))
    expected = {
        Outcome.REFUSE_403: 0.1,
        Outcome.RING_THEN_408: 0.2,
        Outcome.RING_THEN_503: 0.05,
        Outcome.SILENT: 0.02,
        None: 0.63,
    }
    for outcome, share in expected.items():
        assert share == pytest.approx(counts[outcome] / 20_000, abs=0.01), outcome


def test_destination_draw_is_deterministic_per_seed() -> None:
    """The same seed gives every callee the same destination outcome; another seed does not."""
    assert destinations(9, 500) == destinations(9, 500)
    assert destinations(9, 500) != destinations(10, 500)


def test_no_destination_shares_draw_nothing() -> None:
    """With every share 0 (the default) nothing is drawn: the stream stays untouched."""
    rng = random.Random(3)
    state = rng.getstate()
    assert AnswerModel.destination(AnswerProfile(), rng) is None
    assert state == rng.getstate()
    assert not AnswerProfile().has_destination_outcomes
    assert AMBIGUOUS.has_destination_outcomes


def test_destination_plans_carry_their_status_and_timing() -> None:
    """Plain 403 at once without ringing; 408 after the no-answer time; 503 after a ring;
    silence: no ringing, the 408 a caller's Timer B reports after ``silent_seconds``."""
    model = AnswerModel(AMBIGUOUS, random.Random(1))
    refused = model.destination_plan(Outcome.REFUSE_403)
    assert (403, 0.0, False, False) == (
        refused.sip_status,
        refused.ring_seconds,
        refused.rings,
        refused.answered,
    )
    late = model.destination_plan(Outcome.RING_THEN_408)
    assert (408, 25.0, True) == (late.sip_status, late.ring_seconds, late.rings)
    for _ in range(50):
        failed = model.destination_plan(Outcome.RING_THEN_503)
        assert 503 == failed.sip_status and failed.rings
        assert 2.0 <= failed.ring_seconds <= 9.0
    silent = model.destination_plan(Outcome.SILENT)
    assert (408, 32.0, False) == (silent.sip_status, silent.ring_seconds, silent.rings)
    for plan in (refused, late, failed, silent):
        assert 0.0 == plan.talk_seconds
    with pytest.raises(ValueError, match="not a destination-level outcome"):
        model.destination_plan(Outcome.BUSY)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"refuse_403_share": -0.1}, "refuse_403_share"),
        ({"silent_share": 1.5}, "silent_share"),
        ({"ring_then_408_share": 0.6, "ring_then_503_share": 0.5}, "must be <= 1"),
        ({"silent_seconds": 0}, "silent_seconds"),
    ],
)
def test_destination_share_validation(kwargs: dict[str, float], message: str) -> None:
    """Shares outside [0, 1], shares adding up to more than 1 and a zero Timer B are refused."""
    with pytest.raises(ValueError, match=message):
        AnswerProfile(**kwargs)

"""The carrier's answer model: what the callee does with a call the carrier let through.

Given a seeded :class:`random.Random`, :class:`AnswerModel` draws one
:class:`CallPlan` per accepted INVITE: answer / busy / no-answer / decline,
how long the phone rings, and — for answered calls — how long the callee talks
before hanging up with BYE. The SIP carrier plays the plan out (180, then the
final status after ``ring_seconds``, then BYE after ``talk_seconds``).

Pure and deterministic: the same seed and the same sequence of calls give the
same plans. This module must never read a clock, sleep or do I/O.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["AnswerModel", "AnswerProfile", "CallPlan", "Outcome"]


class Outcome(StrEnum):
    """What the callee does."""

    ANSWER = "answer"
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    DECLINE = "decline"


#: Final SIP status the carrier sends for each outcome.
OUTCOME_STATUS: dict[Outcome, int] = {
    Outcome.ANSWER: 200,
    Outcome.BUSY: 486,
    Outcome.NO_ANSWER: 480,
    Outcome.DECLINE: 603,
}


@dataclass(frozen=True, slots=True)
class CallPlan:
    """How one accepted call will play out, in business seconds."""

    outcome: Outcome
    ring_seconds: float
    talk_seconds: float
    sip_status: int

    @property
    def answered(self) -> bool:
        """True when the callee picks up."""
        return self.outcome is Outcome.ANSWER

    @property
    def duration_seconds(self) -> float:
        """Ring plus talk time: when the call ends, relative to the INVITE."""
        return self.ring_seconds + self.talk_seconds


@dataclass(frozen=True, slots=True)
class AnswerProfile:
    """Probabilities and time distributions of the callee behaviour.

    Talk time is lognormal with arithmetic mean ``talk_mean`` and shape
    ``talk_sigma``, clamped to ``[talk_min, talk_max]``. Ring time of answered
    and declined calls is uniform in ``[ring_min, ring_max]``; a busy callee
    is reported after ``busy_ring`` seconds; an unanswered call rings for
    ``no_answer_seconds`` before the carrier gives up with 480.
    """

    answer: float = 0.45
    busy: float = 0.15
    no_answer: float = 0.3
    decline: float = 0.1
    ring_min: float = 2.0
    ring_max: float = 15.0
    busy_ring: float = 0.5
    no_answer_seconds: float = 30.0
    talk_mean: float = 60.0
    talk_sigma: float = 1.0
    talk_min: float = 1.0
    talk_max: float = 1800.0

    def __post_init__(self) -> None:
        probs = (self.answer, self.busy, self.no_answer, self.decline)
        if any(p < 0 for p in probs):
            raise ValueError("answer model probabilities must be >= 0")
        if not math.isclose(sum(probs), 1.0, abs_tol=1e-6):
            raise ValueError(f"answer model probabilities must sum to 1, got {sum(probs):.6f}")
        if not 0 <= self.ring_min <= self.ring_max:
            raise ValueError("ring_min must be >= 0 and <= ring_max")
        if not 0 < self.talk_min <= self.talk_max:
            raise ValueError("talk_min must be > 0 and <= talk_max")
        if self.talk_mean <= 0 or self.talk_sigma < 0:
            raise ValueError("talk_mean must be > 0 and talk_sigma >= 0")


class AnswerModel:
    """Draws :class:`CallPlan` values from an :class:`AnswerProfile` with its own RNG."""

    def __init__(self, profile: AnswerProfile, rng: random.Random) -> None:
        self.profile = profile
        self._rng = rng
        # Lognormal parameterised by its arithmetic mean: E[X] = exp(mu + sigma^2 / 2).
        self._mu = math.log(profile.talk_mean) - profile.talk_sigma**2 / 2

    def outcome(self) -> Outcome:
        """Draw only the callee's outcome."""
        p = self.profile
        x = self._rng.random()
        for outcome, weight in (
            (Outcome.ANSWER, p.answer),
            (Outcome.BUSY, p.busy),
            (Outcome.NO_ANSWER, p.no_answer),
        ):
            if x < weight:
                return outcome
            x -= weight
        return Outcome.DECLINE

    def talk_seconds(self) -> float:
        """Draw a clamped lognormal talk time."""
        p = self.profile
        raw = self._rng.lognormvariate(self._mu, p.talk_sigma)
        return round(min(p.talk_max, max(p.talk_min, raw)), 3)

    def plan(self) -> CallPlan:
        """Draw the full plan for one accepted call."""
        p = self.profile
        outcome = self.outcome()
        talk = 0.0
        if outcome is Outcome.BUSY:
            ring = p.busy_ring
        elif outcome is Outcome.NO_ANSWER:
            ring = p.no_answer_seconds
        else:
            ring = round(self._rng.uniform(p.ring_min, p.ring_max), 3)
        if outcome is Outcome.ANSWER:
            talk = self.talk_seconds()
        return CallPlan(outcome, ring, talk, OUTCOME_STATUS[outcome])

"""The carrier's answer model: what the callee does with a call the carrier let through.

Given a seeded :class:`random.Random`, :class:`AnswerModel` draws one
:class:`CallPlan` per accepted INVITE: answer / busy / no-answer / decline,
how long the phone rings, and — for answered calls — how long the callee talks
before hanging up with BYE. The SIP carrier plays the plan out (180, then the
final status after ``ring_seconds``, then BYE after ``talk_seconds``).

Besides the callee's own behaviour a share of *destinations* answers the same
way every time, whoever calls (the callee's operator, not the callee):
a plain ``403 Forbidden`` without ringing (``refuse_403_share``), 180 then
``408`` (``ring_then_408_share``), 180 then ``503`` (``ring_then_503_share``)
or no response at all (``silent_share``). :meth:`AnswerModel.destination`
draws which of these (if any) a callee gets, from a stream of its own, and
:meth:`AnswerModel.destination_plan` turns it into a plan; callees outside
those shares get the per-call answer / busy / no-answer / decline draw.

Pure and deterministic: the same seed and the same sequence of calls give the
same plans. This module must never read a clock, sleep or do I/O.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["DESTINATION_OUTCOMES", "AnswerModel", "AnswerProfile", "CallPlan", "Outcome"]


class Outcome(StrEnum):
    """What the callee does."""

    ANSWER = "answer"
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    DECLINE = "decline"
    #: The destination's network refuses the number: plain 403, no ringing, no Warning.
    REFUSE_403 = "refuse_403"
    #: 180 Ringing, then 408 after the ring time (no user responding).
    RING_THEN_408 = "ring_then_408"
    #: 180 Ringing, then 503 after the ring time.
    RING_THEN_503 = "ring_then_503"
    #: No response at all, not even 100 Trying: the caller's Timer B fires.
    SILENT = "silent"


#: Outcomes decided once per destination (the same for every call to that callee).
DESTINATION_OUTCOMES = frozenset(
    {Outcome.REFUSE_403, Outcome.RING_THEN_408, Outcome.RING_THEN_503, Outcome.SILENT}
)

#: Final SIP status the carrier sends for each outcome. A silent destination sends
#: nothing; 408 is what the caller's own Timer B reports.
OUTCOME_STATUS: dict[Outcome, int] = {
    Outcome.ANSWER: 200,
    Outcome.BUSY: 486,
    Outcome.NO_ANSWER: 480,
    Outcome.DECLINE: 603,
    Outcome.REFUSE_403: 403,
    Outcome.RING_THEN_408: 408,
    Outcome.RING_THEN_503: 503,
    Outcome.SILENT: 408,
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
    def rings(self) -> bool:
        """True when the carrier sends 180 Ringing before the final status."""
        return self.outcome not in (Outcome.BUSY, Outcome.REFUSE_403, Outcome.SILENT)

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

    The four ``*_share`` fields are shares of *destinations* (callees), drawn
    once per callee before any of the above: ``refuse_403_share`` answer a
    plain 403 at once, ``ring_then_408_share`` ring for ``no_answer_seconds``
    then answer 408, ``ring_then_503_share`` ring for a time uniform in
    ``[ring_min, ring_max]`` then answer 503, ``silent_share`` never answer
    (a caller gives up after its Timer B, ``silent_seconds`` business seconds
    in the offline replay). The other callees follow the answer / busy /
    no-answer / decline probabilities, which still sum to 1 among them.
    All shares default to 0: no destination answers that way.
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
    refuse_403_share: float = 0.0
    ring_then_408_share: float = 0.0
    ring_then_503_share: float = 0.0
    silent_share: float = 0.0
    silent_seconds: float = 32.0

    def __post_init__(self) -> None:
        probs = (self.answer, self.busy, self.no_answer, self.decline)
        if any(p < 0 for p in probs):
            raise ValueError("answer model probabilities must be >= 0")
        if not math.isclose(sum(probs), 1.0, abs_tol=1e-6):
            raise ValueError(f"answer model probabilities must sum to 1, got {sum(probs):.6f}")
        for name, share in self.destination_shares():
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {share!r}")
        total = sum(share for _, share in self.destination_shares())
        if total > 1.0 + 1e-9:
            raise ValueError(
                "refuse_403_share + ring_then_408_share + ring_then_503_share + silent_share"
                f" must be <= 1, got {total:g}"
            )
        if self.silent_seconds <= 0:
            raise ValueError("silent_seconds must be > 0")
        if not 0 <= self.ring_min <= self.ring_max:
            raise ValueError("ring_min must be >= 0 and <= ring_max")
        if not 0 < self.talk_min <= self.talk_max:
            raise ValueError("talk_min must be > 0 and <= talk_max")
        if self.talk_mean <= 0 or self.talk_sigma < 0:
            raise ValueError("talk_mean must be > 0 and talk_sigma >= 0")

    def destination_shares(self) -> tuple[tuple[str, float], ...]:
        """``(key, share)`` of each destination-level outcome, in drawing order."""
        return (
            ("refuse_403_share", self.refuse_403_share),
            ("ring_then_408_share", self.ring_then_408_share),
            ("ring_then_503_share", self.ring_then_503_share),
            ("silent_share", self.silent_share),
        )

    @property
    def has_destination_outcomes(self) -> bool:
        """True when some share of destinations answers the same way every time."""
        return any(share > 0 for _, share in self.destination_shares())


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

    @staticmethod
    def destination(profile: AnswerProfile, rng: random.Random) -> Outcome | None:
        """Which destination-level outcome a callee gets, or None (the per-call draw applies).

        ``rng`` must be the callee's own destination stream: one draw per callee,
        so the same callee always gets the same answer. Nothing is drawn when
        every share is 0 (the stream is then never touched).
        """
        if not profile.has_destination_outcomes:
            return None
        x = rng.random()
        for outcome, (_, share) in zip(
            (Outcome.REFUSE_403, Outcome.RING_THEN_408, Outcome.RING_THEN_503, Outcome.SILENT),
            profile.destination_shares(),
            strict=True,
        ):
            if x < share:
                return outcome
            x -= share
        return None

    def destination_plan(self, outcome: Outcome) -> CallPlan:
        """The plan of one call to a destination that answers ``outcome`` every time."""
        p = self.profile
        if outcome is Outcome.REFUSE_403:
            ring = 0.0
        elif outcome is Outcome.RING_THEN_408:
            ring = p.no_answer_seconds
        elif outcome is Outcome.RING_THEN_503:
            ring = round(self._rng.uniform(p.ring_min, p.ring_max), 3)
        elif outcome is Outcome.SILENT:
            ring = p.silent_seconds
        else:
            raise ValueError(f"{outcome} is not a destination-level outcome")
        return CallPlan(outcome, ring, 0.0, OUTCOME_STATUS[outcome])

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

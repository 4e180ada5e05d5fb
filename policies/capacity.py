"""Pool capacity for pacing: how many calls the cards of a pool can start now and in the next minute.

A predictive dialer that paces by this never dials a call that would only get
503 ``no-card-available``. Per card:

- ``now``: calls that may start at once = the smallest room left among the
  count limits (concurrent lines free, calls per minute / hour / day, talk
  minutes and distinct callees of the day are judged by ``evaluate_card``);
  0 when ``evaluate_card`` says the card cannot take a call now, with that
  cause in the same words as the 503's ``Warning`` (``policies.selection.
  explain``: ``c1 night_window until 08:00``).
- ``next_minute``: call starts the rate limits allow within the next 60 s:
  calls per minute (the rolling minute can be filled again), per hour (the
  room left plus the starts that leave the hour window within the minute),
  per day, one per ``min_gap_seconds``. Concurrency is not a rate: a card
  whose lines are busy still has next-minute capacity. A card out of service,
  in its night window, resting or below its answer-rate floor has 0 unless it
  frees within the minute.

Pure: never reads a clock, never reserves. ``now`` is epoch seconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from policies.quotas import (
    USABLE_STATES,
    CardSnapshot,
    Exhausted,
    QuotaLimit,
    evaluate_card,
)
from policies.selection import explain
from policies.timeutil import day_bounds

__all__ = ["CardCapacity", "PoolCapacity", "card_capacity", "pool_capacity"]

#: Limits that only hold the card back until a line frees or a rate window slides:
#: the next minute may still have room.
_RATE_ONLY = frozenset({QuotaLimit.CONCURRENT, QuotaLimit.CALLS_PER_MINUTE, QuotaLimit.MIN_GAP})


@dataclass(frozen=True, slots=True)
class CardCapacity:
    """One card's room: calls now, call starts in the next minute, and why not more."""

    card_id: str
    state: str
    now: int
    next_minute: int
    cause: str | None  # None when the card can take a call now
    frees_at: float | None = None

    def as_dict(self) -> dict[str, object]:
        """JSON form."""
        return {
            "card": self.card_id,
            "state": self.state,
            "now": self.now,
            "next_minute": self.next_minute,
            "cause": self.cause,
            "frees_at": self.frees_at,
        }


@dataclass(frozen=True, slots=True)
class PoolCapacity:
    """A pool's room: the sums over its cards, and each card's figures."""

    pool: str
    now: int
    next_minute: int
    cards: tuple[CardCapacity, ...]

    def as_dict(self) -> dict[str, object]:
        """JSON form (the MQTT payload and the HTTP answer add ``v`` and ``at``)."""
        return {
            "pool": self.pool,
            "now": self.now,
            "next_minute": self.next_minute,
            "cards": [c.as_dict() for c in self.cards],
        }


def card_capacity(card: CardSnapshot, now: float) -> CardCapacity:
    """The room of one card at ``now``."""
    result = evaluate_card(card, now)
    state = str(card.state)
    if card.state not in USABLE_STATES:
        cause = (
            explain(card.card_id, result, card.timezone, now)
            if isinstance(result, Exhausted)
            else f"{card.card_id} {state}"
        )
        return CardCapacity(card.card_id, state, 0, 0, cause)
    profile = card.effective_profile
    usage = card.usage
    starts = usage.call_starts
    rooms_now: list[int] = []
    rooms_next: list[int] = []
    if profile.concurrent is not None:
        rooms_now.append(max(0, profile.concurrent - usage.in_use))
    if profile.calls_per_minute is not None:
        rooms_now.append(max(0, profile.calls_per_minute - starts.between(now - 60.0, now)))
        rooms_next.append(profile.calls_per_minute)
    if profile.calls_per_hour is not None:
        room = max(0, profile.calls_per_hour - starts.between(now - 3600.0, now))
        rooms_now.append(room)
        # Starts that leave the hour window within the next minute give their room back.
        rooms_next.append(room + starts.between(now - 3600.0, now - 3540.0))
    if profile.calls_per_day is not None:
        day_start, _ = day_bounds(now, card.timezone)
        room = max(
            0, profile.calls_per_day - (starts.bisect_right(now) - starts.bisect_left(day_start))
        )
        rooms_now.append(room)
        rooms_next.append(room)
    if profile.min_gap_seconds:
        rooms_now.append(1)
        rooms_next.append(max(1, math.floor(60.0 / profile.min_gap_seconds)))
    now_room = min(rooms_now) if rooms_now else 1
    next_room = min(rooms_next) if rooms_next else max(now_room, 1)
    if isinstance(result, Exhausted):
        cause = explain(card.card_id, result, card.timezone, now)
        frees = result.frees_at
        if result.limit in _RATE_ONLY:
            return CardCapacity(card.card_id, state, 0, next_room, cause, frees)
        within = frees is not None and frees <= now + 60.0
        return CardCapacity(card.card_id, state, 0, next_room if within else 0, cause, frees)
    return CardCapacity(card.card_id, state, max(now_room, 1), max(next_room, 1), None)


def pool_capacity(pool: str, cards: Sequence[CardSnapshot], now: float) -> PoolCapacity:
    """The room of a pool: sums over its cards, each card's figures and cause."""
    each = tuple(card_capacity(c, now) for c in cards)
    return PoolCapacity(
        pool,
        sum(c.now for c in each),
        sum(c.next_minute for c in each),
        each,
    )

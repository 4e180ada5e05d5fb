"""The simulated carrier's anti-fraud model: per-card usage counters and its own thresholds.

Real carriers suspend telemarketing lines whose traffic looks abusive. This
module keeps, for one card, the counters a carrier watches and says which
threshold (if any) a new call or a finished call crosses:

* volume, checked when an INVITE arrives (the new call included): calls per
  rolling hour, calls per calendar day (carrier's timezone), distinct callees
  per day, calls inside the night window per rolling 24 hours;
* quality, checked when a call ends: answer rate over the last N calls (once
  ``min_calls`` exist), share of short answered calls over the last N answered
  calls, and complaints from callees who never consented;
* abnormal use around one callee, checked when an INVITE arrives, over every
  card of the carrier (:class:`CalleeHistory`): more than
  ``max_calls_per_callee`` calls to the same callee within ``callee_window``
  seconds (repeated calls), and more than ``max_cards_per_callee`` distinct
  cards calling the same callee within that window (card switching as a
  carrier can see it: it knows the caller number of each call, not the agent
  behind it, so an agent hopping cards shows as one callee reached from
  several cards).

The model only *reports* a :class:`Violation`; the carrier decides to suspend.
Pure and clock-free: every method takes ``now`` (epoch seconds). It must never
read a clock, draw random numbers or do I/O.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import date, datetime, time
from enum import StrEnum
from zoneinfo import ZoneInfo

__all__ = [
    "AntiFraudThresholds",
    "CalleeHistory",
    "CardUsage",
    "Metric",
    "TimeWindow",
    "Violation",
]

HOUR = 3600.0
DAY = 86400.0


class Metric(StrEnum):
    """The counters a carrier's anti-fraud watches."""

    CALLS_PER_HOUR = "calls per hour"
    CALLS_PER_DAY = "calls per day"
    DISTINCT_CALLEES = "distinct callees per day"
    NIGHT_CALLS = "night calls"
    ANSWER_RATE = "answer rate"
    SHORT_CALLS = "short call share"
    COMPLAINTS = "complaints"
    CALLS_PER_CALLEE = "calls to one callee"
    CARDS_PER_CALLEE = "cards calling one callee"


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """A daily local-time window ``HH:MM-HH:MM``; may wrap midnight (``22:00-08:00``)."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> TimeWindow:
        """Parse ``"22:00-08:00"``; ``"24:00"`` as an end means end of day."""
        try:
            a, b = (part.strip() for part in text.split("-"))
            start = time.fromisoformat(a)
            end = time.max if b == "24:00" else time.fromisoformat(b)
        except ValueError as exc:
            raise ValueError(f"time window must look like 'HH:MM-HH:MM', got {text!r}") from exc
        if start == end:
            raise ValueError(f"time window {text!r} is empty")
        return cls(start, end)

    def contains(self, local: time) -> bool:
        """True when the local time of day falls inside the window."""
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def __str__(self) -> str:
        end = "24:00" if self.end == time.max else self.end.strftime("%H:%M")
        return f"{self.start.strftime('%H:%M')}-{end}"


@dataclass(frozen=True, slots=True)
class AntiFraudThresholds:
    """The carrier's own limits for one card; ``None`` switches a check off.

    ``max_calls_per_callee`` and ``max_cards_per_callee`` count INVITEs to one
    callee from every card within the last ``callee_window`` seconds (the new
    call included); the card whose INVITE crosses the limit is suspended.
    """

    calls_per_hour: int | None = None
    calls_per_day: int | None = None
    distinct_callees_per_day: int | None = None
    answer_rate_floor: float | None = None
    answer_rate_window: int = 30
    answer_rate_min_calls: int = 20
    short_call_seconds: float = 10.0
    short_call_share_max: float | None = None
    short_call_window: int = 20
    short_call_min_calls: int = 10
    night: TimeWindow | None = None
    night_calls_max: int | None = None
    complaint_probability: float = 0.0
    complaints_max: int | None = None
    max_calls_per_callee: int | None = None
    max_cards_per_callee: int | None = None
    callee_window: float = HOUR

    @property
    def watches_callees(self) -> bool:
        """True when a per-callee threshold is on (the carrier keeps a callee history)."""
        return self.max_calls_per_callee is not None or self.max_cards_per_callee is not None

    def __post_init__(self) -> None:
        for name in ("answer_rate_floor", "short_call_share_max", "complaint_probability"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value!r}")
        if self.answer_rate_window < 1 or self.short_call_window < 1:
            raise ValueError("rolling windows must hold at least one call")
        if self.answer_rate_min_calls > self.answer_rate_window:
            raise ValueError("answer_rate_min_calls cannot exceed answer_rate_window")
        if self.short_call_min_calls > self.short_call_window:
            raise ValueError("short_call_min_calls cannot exceed short_call_window")
        for name in ("max_calls_per_callee", "max_cards_per_callee"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}")
        if self.callee_window <= 0:
            raise ValueError(f"callee_window must be > 0, got {self.callee_window!r}")


@dataclass(frozen=True, slots=True)
class Violation:
    """A threshold crossed: which metric, its value and the limit, in carrier words."""

    metric: Metric
    value: float
    limit: float
    reason: str = "abnormal-use"

    @property
    def cause(self) -> str:
        """Human text such as ``calls per hour 61 > 60``."""
        if self.metric is Metric.ANSWER_RATE:
            return f"{self.metric} {self.value:.2f} < {self.limit:.2f}"
        if self.metric is Metric.SHORT_CALLS:
            return f"{self.metric} {self.value:.2f} > {self.limit:.2f}"
        return f"{self.metric} {self.value:g} > {self.limit:g}"


@dataclass(slots=True)
class CardUsage:
    """What the carrier remembers about one card's traffic since its last restore."""

    thresholds: AntiFraudThresholds
    tz: ZoneInfo
    starts: deque[float] = field(default_factory=deque)
    night_starts: deque[float] = field(default_factory=deque)
    day: date | None = None
    calls_today: int = 0
    callees_today: set[str] = field(default_factory=set)
    answered_window: deque[bool] = field(init=False)
    short_window: deque[bool] = field(init=False)
    complaints: int = 0
    latest: float = float("-inf")

    def __post_init__(self) -> None:
        self.answered_window = deque(maxlen=self.thresholds.answer_rate_window)
        self.short_window = deque(maxlen=self.thresholds.short_call_window)

    # -- helpers -----------------------------------------------------------
    def _local(self, now: float) -> datetime:
        return datetime.fromtimestamp(now, tz=self.tz)

    def _roll(self, now: float) -> None:
        # Windows only move forward: a late report stamped earlier must not rewind the day.
        now = self.latest = max(now, self.latest)
        while self.starts and self.starts[0] <= now - HOUR:
            self.starts.popleft()
        while self.night_starts and self.night_starts[0] <= now - DAY:
            self.night_starts.popleft()
        today = self._local(now).date()
        if today != self.day:
            self.day = today
            self.calls_today = 0
            self.callees_today = set()

    def _is_night(self, now: float) -> bool:
        night = self.thresholds.night
        return night is not None and night.contains(self._local(now).time())

    # -- volume (on INVITE) -------------------------------------------------
    def check_invite(self, callee: str, now: float) -> Violation | None:
        """Would accepting a call to ``callee`` at ``now`` cross a volume threshold?"""
        self._roll(now)
        t = self.thresholds
        per_hour = len(self.starts) + 1
        if t.calls_per_hour is not None and per_hour > t.calls_per_hour:
            return Violation(Metric.CALLS_PER_HOUR, per_hour, t.calls_per_hour)
        per_day = self.calls_today + 1
        if t.calls_per_day is not None and per_day > t.calls_per_day:
            return Violation(Metric.CALLS_PER_DAY, per_day, t.calls_per_day)
        distinct = len(self.callees_today | {callee})
        if t.distinct_callees_per_day is not None and distinct > t.distinct_callees_per_day:
            return Violation(Metric.DISTINCT_CALLEES, distinct, t.distinct_callees_per_day)
        if t.night_calls_max is not None and self._is_night(now):
            night = len(self.night_starts) + 1
            if night > t.night_calls_max:
                return Violation(Metric.NIGHT_CALLS, night, t.night_calls_max)
        return None

    def record_invite(self, callee: str, now: float) -> None:
        """Count an INVITE the carrier let through."""
        self._roll(now)
        self.starts.append(now)
        self.calls_today += 1
        self.callees_today.add(callee)
        if self._is_night(now):
            self.night_starts.append(now)

    # -- quality (on call end) ------------------------------------------------
    def record_end(self, answered: bool, talk_seconds: float, complained: bool) -> Violation | None:
        """Count a finished call; return the quality threshold it makes the card cross."""
        t = self.thresholds
        self.answered_window.append(answered)
        if answered:
            self.short_window.append(talk_seconds < t.short_call_seconds)
        if complained:
            self.complaints += 1
            if t.complaints_max is not None and self.complaints > t.complaints_max:
                return Violation(Metric.COMPLAINTS, self.complaints, t.complaints_max, "violation")
        if t.answer_rate_floor is not None and len(self.answered_window) >= t.answer_rate_min_calls:
            rate = self.answer_rate()
            if rate is not None and rate < t.answer_rate_floor:
                return Violation(Metric.ANSWER_RATE, rate, t.answer_rate_floor)
        if t.short_call_share_max is not None and len(self.short_window) >= t.short_call_min_calls:
            share = self.short_share()
            if share is not None and share > t.short_call_share_max:
                return Violation(Metric.SHORT_CALLS, share, t.short_call_share_max)
        return None

    # -- read-outs -------------------------------------------------------------
    def answer_rate(self) -> float | None:
        """Answered share of the last ``answer_rate_window`` finished calls."""
        if not self.answered_window:
            return None
        return sum(self.answered_window) / len(self.answered_window)

    def short_share(self) -> float | None:
        """Short share of the last ``short_call_window`` answered calls."""
        if not self.short_window:
            return None
        return sum(self.short_window) / len(self.short_window)

    def counters(self, now: float) -> dict[str, float | int | None]:
        """A snapshot of every counter, for events and the report."""
        self._roll(now)
        rate = self.answer_rate()
        share = self.short_share()
        return {
            "calls_hour": len(self.starts),
            "calls_day": self.calls_today,
            "distinct_day": len(self.callees_today),
            "night_calls_24h": len(self.night_starts),
            "answer_rate": None if rate is None else round(rate, 4),
            "short_share": None if share is None else round(share, 4),
            "complaints": self.complaints,
        }

    def reset(self) -> None:
        """Forget all history (an operator restored the card)."""
        self.starts.clear()
        self.night_starts.clear()
        self.day = None
        self.calls_today = 0
        self.callees_today = set()
        self.answered_window.clear()
        self.short_window.clear()
        self.complaints = 0
        self.latest = float("-inf")


@dataclass(slots=True)
class CalleeHistory:
    """INVITEs the carrier let through to each callee, from any card, within a window.

    Kept by the carrier (not per card): repeated calls to one person and one
    person reached from several cards are only visible across cards. Entries
    older than ``window`` seconds are dropped when their callee is next looked
    at; the carrier sizes ``window`` to the longest ``callee_window`` in force.
    """

    window: float
    calls: dict[str, deque[tuple[float, str]]] = field(default_factory=dict)

    def _recent(self, callee: str, now: float) -> deque[tuple[float, str]]:
        history = self.calls.get(callee)
        if history is None:
            return deque()
        while history and history[0][0] <= now - self.window:
            history.popleft()
        if not history:
            del self.calls[callee]
        return history

    def check(
        self, callee: str, card: str, now: float, thresholds: AntiFraudThresholds
    ) -> Violation | None:
        """Would a call from ``card`` to ``callee`` at ``now`` cross a per-callee threshold?"""
        t = thresholds
        if not t.watches_callees:
            return None
        recent = [c for at, c in self._recent(callee, now) if at > now - t.callee_window]
        calls = len(recent) + 1
        if t.max_calls_per_callee is not None and calls > t.max_calls_per_callee:
            return Violation(Metric.CALLS_PER_CALLEE, calls, t.max_calls_per_callee)
        cards = len({*recent, card})
        if t.max_cards_per_callee is not None and cards > t.max_cards_per_callee:
            return Violation(Metric.CARDS_PER_CALLEE, cards, t.max_cards_per_callee)
        return None

    def record(self, callee: str, card: str, now: float) -> None:
        """Count a call from ``card`` to ``callee`` the carrier let through."""
        self._recent(callee, now)
        self.calls.setdefault(callee, deque()).append((now, card))

"""Card quotas: the limits of one carrier line and whether a call fits in them.

DESIGN.md "Quotas": per-card limits come from a named profile; a restored
card runs on its probation profile. This module defines the plain data the
gateway's store hands in (`CardSnapshot`, `CardUsage`, `CallOutcome`), the
`CardUsageView` protocol the store implements, and two pure functions:

- `evaluate_card(card, now, callee)` → `Headroom` (a comparable score: the
  minimum remaining fraction across count limits) or `Exhausted` (which limit,
  and the epoch second it frees, None when only an operator or a call ending
  can free it);
- `would_exceed(profile, usage, tz, callee, now)` → the first `Exhausted`
  limit or None, for the store to re-check atomically while it writes the
  write-ahead reservation.

Failure mode: fails closed — a card whose state is not active/probation, or
whose usage cannot be read (the store raises `StoreUnavailableError`), is
never chosen. This module must never read a clock, do I/O, or mutate usage.

Time: `now` is an aware datetime or float epoch seconds; usage timestamps
are float epoch seconds. Rolling limits (minute, hour, answer rate, short
calls) use call start times; daily limits use the carrier's calendar day
(`CardSnapshot.timezone`, e.g. Asia/Shanghai midnight, not UTC midnight).
"""

from __future__ import annotations

import weakref
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterator, Sequence, Set
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import lru_cache
from itertools import islice
from typing import Protocol, overload, runtime_checkable

from policies.timeutil import (
    DailyWindows,
    as_utc,
    boundary_instants,
    day_bounds,
    epoch,
    local_minute,
    parse_windows,
    zone,
)

__all__ = [
    "CallOutcome",
    "CardSnapshot",
    "CardState",
    "CardUsage",
    "CardUsageView",
    "Exhausted",
    "Headroom",
    "KeptStarts",
    "QuotaLimit",
    "QuotaProfile",
    "StartTimes",
    "SuspendReason",
    "evaluate_card",
    "would_exceed",
]


class CardState(StrEnum):
    """Lifecycle states of a card (DESIGN.md "Card states")."""

    ACTIVE = "active"
    SUSPENDED = "suspended"
    APPEALING = "appealing"
    PROBATION = "probation"
    RETIRED = "retired"
    SUSPECT = "suspect"  # repeated ambiguous refusals: no new calls until probed / cleared


class SuspendReason(StrEnum):
    """Why a card left the active state (DESIGN.md "Card states").

    The one definition: ``[[carriers.rules]] reason`` in the configuration,
    the card manager and the carrier-answer classification all use it.
    """

    ARREARS = "arrears"
    VIOLATION = "violation"
    ABNORMAL_USE = "abnormal-use"
    MAINTENANCE = "maintenance"
    FAULT = "fault"
    MANUAL = "manual"
    UNKNOWN = "unknown"


#: States in which a card may carry calls.
USABLE_STATES = frozenset({CardState.ACTIVE, CardState.PROBATION})


class QuotaLimit(StrEnum):
    """Names of the limits a card can run out of (used in events and details)."""

    STATE = "state"
    CALLS_PER_MINUTE = "calls_per_minute"
    CALLS_PER_HOUR = "calls_per_hour"
    CALLS_PER_DAY = "calls_per_day"
    CONCURRENT = "concurrent"
    MIN_GAP = "min_gap_seconds"
    TALK_MINUTES_PER_DAY = "talk_minutes_per_day"
    DISTINCT_CALLEES_PER_DAY = "distinct_callees_per_day"
    ANSWER_RATE_FLOOR = "answer_rate_floor"
    SHORT_CALL_CEILING = "short_call_ceiling"
    CONSECUTIVE_FAILURES = "consecutive_failures"
    NIGHT_WINDOW = "night_window"
    UNAVAILABLE = "unavailable"  # resting after a trunk failure, or its carrier is down


@dataclass(frozen=True, slots=True)
class QuotaProfile:
    """A named set of per-card limits; None disables a limit.

    `answer_rate_floor` / `short_call_ceiling` are fractions (0..1) computed
    over the last `rate_window_calls` finished calls that started within
    `rate_window_seconds`, and only once `rate_min_sample` such calls exist.
    A call is short when answered with talk time under `short_call_seconds`.
    `night_window` is `"HH:MM-HH:MM"` in the carrier's zone during which the
    card places no calls (e.g. `"21:00-08:00"`).
    """

    name: str = "default"
    calls_per_minute: int | None = None
    calls_per_hour: int | None = None
    calls_per_day: int | None = None
    concurrent: int | None = 1
    min_gap_seconds: float | None = None
    talk_minutes_per_day: float | None = None
    distinct_callees_per_day: int | None = None
    answer_rate_floor: float | None = None
    short_call_ceiling: float | None = None
    short_call_seconds: float = 10.0
    rate_window_calls: int = 50
    rate_window_seconds: float = 86400.0
    rate_min_sample: int = 20
    consecutive_failures: int | None = None
    cooldown_seconds: float = 900.0
    night_window: str | None = None
    _night: DailyWindows | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in (
            "calls_per_minute",
            "calls_per_hour",
            "calls_per_day",
            "concurrent",
            "distinct_callees_per_day",
            "consecutive_failures",
        ):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("answer_rate_floor", "short_call_ceiling"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.rate_window_calls < 1 or self.rate_min_sample < 1:
            raise ValueError("rate_window_calls and rate_min_sample must be >= 1")
        if self.night_window is not None:
            object.__setattr__(self, "_night", parse_windows(self.night_window))

    @property
    def night(self) -> DailyWindows | None:
        """Parsed night window, None when the profile has none."""
        return self._night


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """One finished call of a card, as the store recorded it (epoch seconds).

    `failed` marks a card-level failure (carrier error, no answer from the
    trunk) that counts toward `consecutive_failures`; callee outcomes
    (busy, no answer, decline) are not failures of the card.
    """

    started_at: float
    answered: bool
    talk_seconds: float = 0.0
    failed: bool = False
    ended_at: float | None = None


class StartTimes(Sequence[float]):
    """Call start times, ascending: a read-only window ``[lo, hi)`` of a list.

    The store keeps a card's starts of the day in one list and hands out windows
    of it, so taking one costs nothing however long the day has been (a tuple of
    them cost a copy per change: ~7 ns a start, 0.4 ms a call on a trunk account
    50,000 calls into its day). The list's owner may append to it while windows
    are out (a window never reaches past its ``hi``); any other change to the
    list must go to a new list while a window may still read the old one.

    ``StartTimes(seq)`` wraps a copy of any sequence (tests, stores that build
    their starts per read). ``bisect_left``/``bisect_right`` are the
    :mod:`bisect` functions over the window, run in C: counting the starts in
    a time range is two of them.
    """

    __slots__ = ("_hi", "_hold", "_items", "_lo")

    _items: list[float]
    _lo: int
    _hi: int
    _hold: object

    def __init__(self, starts: Sequence[float] = ()) -> None:
        self._items = list(starts)
        self._lo = 0
        self._hi = len(self._items)
        self._hold = None

    @classmethod
    def window(cls, items: list[float], lo: int, hi: int, hold: object = None) -> StartTimes:
        """``items[lo:hi]`` without copying; the owner of ``items`` keeps the rule above.
        ``hold``: kept alive as long as the window is (:class:`KeptStarts`' readers)."""
        view = cls.__new__(cls)
        view._items, view._lo, view._hi, view._hold = items, lo, hi, hold
        return view

    def with_start(self, t: float) -> StartTimes:
        """These starts and ``t``. A ``t`` at or after the last start, on a window that
        ends its list, is appended to the list in place (no window handed out reaches
        past its end, so none sees it); any other is a copy, and so is every one on a
        list a :class:`KeptStarts` owns (its owner alone changes it)."""
        items, lo, hi = self._items, self._lo, self._hi
        if self._hold is None and hi == len(items) and (hi == lo or t >= items[hi - 1]):
            items.append(t)
            return StartTimes.window(items, lo, hi + 1)
        copy = items[lo:hi]
        insort(copy, t)
        return StartTimes.window(copy, 0, len(copy))

    def without(self, t: float) -> StartTimes:
        """These starts less one equal to ``t`` (a copy; themselves when there is none)."""
        at = self.bisect_left(t)
        if at == len(self) or self[at] != t:
            return self
        copy = self._items[self._lo : self._hi]
        del copy[at]
        return StartTimes.window(copy, 0, len(copy))

    def bisect_left(self, t: float) -> int:
        """Index of the first start at or after ``t`` (``bisect.bisect_left``)."""
        return bisect_left(self._items, t, self._lo, self._hi) - self._lo

    def bisect_right(self, t: float) -> int:
        """Index of the first start after ``t`` (``bisect.bisect_right``)."""
        return bisect_right(self._items, t, self._lo, self._hi) - self._lo

    def between(self, since: float, upto: float) -> int:
        """How many starts are after ``since`` and at or before ``upto``."""
        items, lo, hi = self._items, self._lo, self._hi
        return bisect_right(items, upto, lo, hi) - bisect_right(items, since, lo, hi)

    def __len__(self) -> int:
        return self._hi - self._lo

    @overload
    def __getitem__(self, index: int) -> float: ...

    @overload
    def __getitem__(self, index: slice) -> StartTimes: ...

    def __getitem__(self, index: int | slice) -> float | StartTimes:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._hi - self._lo)
            if step == 1:
                lo = self._lo + start
                return StartTimes.window(self._items, lo, self._lo + max(start, stop), self._hold)
            return StartTimes(self._items[self._lo : self._hi][index])
        n = self._hi - self._lo
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError("start index out of range")
        return self._items[self._lo + index]

    def __iter__(self) -> Iterator[float]:
        return islice(self._items, self._lo, self._hi)

    def __reversed__(self) -> Iterator[float]:
        items, lo = self._items, self._lo
        return (items[i] for i in range(self._hi - 1, lo - 1, -1))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StartTimes | tuple | list):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"StartTimes({tuple(self)!r})"


class _Readers:
    """Alive while a window :class:`KeptStarts` handed out of its current list is."""

    __slots__ = ("__weakref__",)


class KeptStarts:
    """An ascending list of starts its owner (a store's running counters) changes and
    hands out as :class:`StartTimes` windows without copying it.

    Every window taken from the current list holds one :class:`_Readers` token, which
    the owner only references weakly: while the token lives a window may still read
    the list, so a change other than an append goes to a copy (the windows keep the
    old list); once every window is gone the list is changed in place.
    """

    __slots__ = ("_readers", "items")

    def __init__(self, items: list[float] | None = None) -> None:
        #: The starts, ascending: read them freely (bisect), change them only through
        #: the methods below.
        self.items: list[float] = [] if items is None else items
        self._readers: weakref.ref[_Readers] | None = None

    def window(self, lo: int = 0) -> StartTimes:
        """``items[lo:]`` as it is now (later appends stay out of it)."""
        readers = self._readers() if self._readers is not None else None
        if readers is None:
            readers = _Readers()
            self._readers = weakref.ref(readers)
        return StartTimes.window(self.items, lo, len(self.items), readers)

    def add(self, t: float) -> None:
        """``t`` joins, in order: appended in place when it is at or after the last."""
        items = self.items
        if not items or t >= items[-1]:
            items.append(t)  # past every window's end
        else:
            insort(self._own(), t)

    def remove(self, t: float) -> bool:
        """One start equal to ``t`` leaves; whether there was one."""
        at = bisect_left(self.items, t)
        if at < len(self.items) and self.items[at] == t:
            del self._own()[at]
            return True
        return False

    def drop_before(self, lo: int) -> None:
        """The first ``lo`` starts leave (a new list: windows keep reading the old one)."""
        self.items = self.items[lo:]
        self._readers = None

    def _own(self) -> list[float]:
        if self._readers is not None and self._readers() is not None:
            self.items = list(self.items)
        self._readers = None
        return self.items


_NO_STARTS = StartTimes()


@dataclass(frozen=True, slots=True)
class CardUsage:
    """Usage of one card at one instant, as the store sees it.

    - `call_starts`: epoch seconds of call starts, ascending, including
      write-ahead reservations not yet finished; must cover at least the
      last hour and the current carrier day (see `timeutil.day_bounds`). A
      `StartTimes`: a store hands out a window of its list, which costs
      nothing to take (`StartTimes(seq)` copies any sequence into one).
    - `callees_today`: distinct E.164 callees of the current carrier day (any
      read-only set: a store may hand out a view that costs nothing to take).
    - `talk_seconds_today`: talk time of the current carrier day.
    - `in_use`: calls currently up or reserved on the card.
    - `recent_outcomes`: finished calls, oldest first; the last
      `rate_window_calls` are enough.
    """

    call_starts: StartTimes = _NO_STARTS
    callees_today: Set[str] = frozenset()
    talk_seconds_today: float = 0.0
    in_use: int = 0
    recent_outcomes: tuple[CallOutcome, ...] = ()


@dataclass(frozen=True, slots=True)
class CardSnapshot:
    """Everything selection needs to know about one card at one instant.

    `timezone` is the carrier's zone (its "day"). `probation_profile` is used
    while `state` is probation; `profile_override` (an operator's or the
    store's per-card override) wins over both.
    """

    card_id: str
    state: CardState
    profile: QuotaProfile
    timezone: str = "UTC"
    usage: CardUsage = field(default_factory=CardUsage)
    probation_profile: QuotaProfile | None = None
    profile_override: QuotaProfile | None = None
    pool: str = ""
    priority: int = 0
    unavailable: str | None = None
    unavailable_until: float | None = None

    @property
    def effective_profile(self) -> QuotaProfile:
        """The profile the card's limits come from right now."""
        if self.profile_override is not None:
            return self.profile_override
        if self.state == CardState.PROBATION and self.probation_profile is not None:
            return self.probation_profile
        return self.profile


@runtime_checkable
class CardUsageView(Protocol):
    """What the gateway's store implements so policies can read card usage.

    Implementations raise `policies.errors.StoreUnavailableError` when they
    cannot answer; they must never return partial usage silently.
    """

    def card_usage(self, card_id: str, now: float) -> CardUsage:
        """Usage of `card_id` at `now` (epoch seconds), daily fields for the carrier day of `now`."""
        ...


@dataclass(frozen=True, slots=True)
class Headroom:
    """A card can take a call; `score` is the minimum remaining fraction (0..1]."""

    score: float
    limiting: QuotaLimit | None = None


@dataclass(frozen=True, slots=True)
class Exhausted:
    """A card cannot take a call now: which limit, and when it frees (epoch s).

    `frees_at` is None when no time is known: the card waits for an operator
    (suspended, retired) or for a call on it to end (concurrent).
    """

    limit: QuotaLimit
    frees_at: float | None
    detail: str = ""


def _rolling(
    items: list[float],
    first: int,
    upto: int,
    now: float,
    window: float,
    limit: int,
    name: QuotaLimit,
) -> tuple[float, Exhausted | None]:
    """Remaining fraction of a rolling count limit, or when it frees: ``items[first:upto]``
    are the card's starts up to ``now`` (a :class:`StartTimes`' list and bounds)."""
    lo = bisect_right(items, now - window, first, upto)
    used = upto - lo
    if used >= limit:
        # The call that must age out is the (used - limit + 1)-th oldest in the window.
        frees = items[lo + used - limit] + window if limit > 0 else None
        return 0.0, Exhausted(name, frees, f"{used}/{limit} in {int(window)}s")
    return (limit - used) / limit, None


def _rate_limit(
    profile: QuotaProfile, outcomes: Sequence[CallOutcome], now: float
) -> Exhausted | None:
    """Answer-rate floor and short-call ceiling over the rolling sample."""
    if profile.answer_rate_floor is None and profile.short_call_ceiling is None:
        return None
    if len(outcomes) < profile.rate_min_sample:
        return None
    horizon = now - profile.rate_window_seconds
    sample = [o for o in outcomes[-profile.rate_window_calls :] if o.started_at > horizon]

    floor, ceiling = profile.answer_rate_floor, profile.short_call_ceiling
    short_s = profile.short_call_seconds

    def failing(calls: Sequence[CallOutcome]) -> QuotaLimit | None:
        n = len(calls)
        if n < profile.rate_min_sample:
            return None
        answered = short = 0
        for o in calls:
            if o.answered:
                answered += 1
                if o.talk_seconds < short_s:
                    short += 1
        if floor is not None and answered / n < floor:
            return QuotaLimit.ANSWER_RATE_FLOOR
        if ceiling is not None and short / n > ceiling:
            return QuotaLimit.SHORT_CALL_CEILING
        return None

    limit = failing(sample)
    if limit is None:
        return None
    # The card frees when enough of the oldest sampled calls age out of the
    # time window that the rates pass (or the sample is too small to judge).
    frees: float | None = None
    for i in range(1, len(sample) + 1):
        if failing(sample[i:]) is None:
            frees = sample[i - 1].started_at + profile.rate_window_seconds
            break
    return Exhausted(limit, frees, f"{limit} over last {len(sample)} calls")


def _night_end(night: DailyWindows, now_dt: datetime, tz_name: str) -> float | None:
    """Epoch second at which the night window is over, None when it never ends."""
    tz = zone(tz_name)
    ends = [end for _, end in night.ranges]
    for instant in boundary_instants(tz, now_dt, ends, 2):
        _, minute = local_minute(instant, tz)
        if not night.contains(minute):
            return instant.timestamp()
    return None


@lru_cache(maxsize=4096)
def _local_minute_of_day(tz_name: str, minute: int) -> int:
    """Local minute of the day for a whole UTC minute (offsets are whole minutes)."""
    return local_minute(as_utc(minute * 60.0), zone(tz_name))[1]


def _evaluate(
    profile: QuotaProfile,
    usage: CardUsage,
    tz_name: str,
    callee: str | None,
    moment: datetime | float,
    *,
    stop_at_first: bool,
) -> Headroom | Exhausted:
    now = epoch(moment)
    starts = usage.call_starts
    best = 1.0
    best_name: QuotaLimit | None = None
    exhausted: list[Exhausted] = []

    night = profile.night
    if night is not None and night.contains(_local_minute_of_day(tz_name, int(now // 60))):
        exhausted.append(
            Exhausted(
                QuotaLimit.NIGHT_WINDOW,
                _night_end(night, as_utc(now), tz_name),
                f"night {profile.night_window} in {tz_name}",
            )
        )
        if stop_at_first:
            return exhausted[0]

    concurrent = profile.concurrent
    if concurrent is not None:
        if usage.in_use >= concurrent:
            exhausted.append(
                Exhausted(QuotaLimit.CONCURRENT, None, f"{usage.in_use}/{concurrent} in use")
            )
            if stop_at_first:
                return exhausted[0]
        else:
            best, best_name = (concurrent - usage.in_use) / concurrent, QuotaLimit.CONCURRENT

    # The starts' list and bounds, read with bisect's C functions (a dozen reads a call).
    items, first = starts._items, starts._lo
    upto = bisect_right(items, now, first, starts._hi)  # items[first:upto]: up to now
    gap = profile.min_gap_seconds
    if gap is not None and upto > first:
        last = items[upto - 1]
        if now - last < gap:
            exhausted.append(
                Exhausted(QuotaLimit.MIN_GAP, last + gap, f"last start {now - last:.1f}s ago")
            )
            if stop_at_first:
                return exhausted[0]

    max_failures = profile.consecutive_failures
    if max_failures and usage.recent_outcomes and usage.recent_outcomes[-1].failed:
        streak = 0
        for outcome in reversed(usage.recent_outcomes):
            if not outcome.failed:
                break
            streak += 1
        if streak >= max_failures:
            last_out = usage.recent_outcomes[-1]
            base = last_out.ended_at if last_out.ended_at is not None else last_out.started_at
            frees = base + profile.cooldown_seconds
            if frees > now:
                exhausted.append(
                    Exhausted(QuotaLimit.CONSECUTIVE_FAILURES, frees, f"{streak} failures in a row")
                )
                if stop_at_first:
                    return exhausted[0]

    for window, limit, name in (
        (60.0, profile.calls_per_minute, QuotaLimit.CALLS_PER_MINUTE),
        (3600.0, profile.calls_per_hour, QuotaLimit.CALLS_PER_HOUR),
    ):
        if limit is None:
            continue
        fraction, ex = _rolling(items, first, upto, now, window, limit, name)
        if ex is not None:
            exhausted.append(ex)
            if stop_at_first:
                return ex
        elif fraction < best:
            best, best_name = fraction, name

    day_start, day_end = day_bounds(now, tz_name)
    if profile.calls_per_day is not None:
        used = upto - bisect_left(items, day_start, first, upto)
        limit = profile.calls_per_day
        if used >= limit:
            exhausted.append(Exhausted(QuotaLimit.CALLS_PER_DAY, day_end, f"{used}/{limit} today"))
            if stop_at_first:
                return exhausted[0]
        elif (limit - used) / limit < best:
            best, best_name = (limit - used) / limit, QuotaLimit.CALLS_PER_DAY

    if profile.talk_minutes_per_day is not None:
        cap = profile.talk_minutes_per_day * 60.0
        talk = usage.talk_seconds_today
        if talk >= cap:
            exhausted.append(
                Exhausted(
                    QuotaLimit.TALK_MINUTES_PER_DAY,
                    day_end,
                    f"{talk / 60:.1f}/{profile.talk_minutes_per_day} min today",
                )
            )
            if stop_at_first:
                return exhausted[0]
        elif (cap - talk) / cap < best:
            best, best_name = (cap - talk) / cap, QuotaLimit.TALK_MINUTES_PER_DAY

    if profile.distinct_callees_per_day is not None:
        limit = profile.distinct_callees_per_day
        used = len(usage.callees_today)
        repeat = callee is not None and callee in usage.callees_today
        if used >= limit and not repeat:
            exhausted.append(
                Exhausted(QuotaLimit.DISTINCT_CALLEES_PER_DAY, day_end, f"{used}/{limit} today")
            )
            if stop_at_first:
                return exhausted[0]
        elif limit > 0 and max(0.0, (limit - used) / limit) < best:
            best, best_name = max(0.0, (limit - used) / limit), QuotaLimit.DISTINCT_CALLEES_PER_DAY

    rate = _rate_limit(profile, usage.recent_outcomes, now)
    if rate is not None:
        exhausted.append(rate)
        if stop_at_first:
            return rate

    if exhausted:
        # Report the limit that frees last: the card is usable only after all free.
        for e in exhausted:
            if e.frees_at is None:
                return e
        return max(exhausted, key=lambda e: e.frees_at or 0.0)
    return Headroom(best, best_name)


def would_exceed(
    profile: QuotaProfile,
    usage: CardUsage,
    tz_name: str,
    callee: str | None,
    now: datetime | float,
) -> Exhausted | None:
    """Would starting a call to `callee` at `now` break any limit? First broken limit, or None.

    The store calls this inside its atomic reservation (SQLite transaction or
    Redis script) with the usage it just read, before it records the start.
    """
    result = _evaluate(profile, usage, tz_name, callee, now, stop_at_first=True)
    return result if isinstance(result, Exhausted) else None


def evaluate_card(
    card: CardSnapshot, now: datetime | float, callee: str | None = None
) -> Headroom | Exhausted:
    """Headroom of one card for a call to `callee` at `now`, or why and until when it cannot.

    Non-usable states (suspended, appealing, retired) are `Exhausted` with
    `frees_at=None`. When several limits are exhausted the one that frees
    last is reported, so `frees_at` is when the card is really usable again.
    """
    if card.state not in USABLE_STATES:
        # `unavailable_until` of a card out of service: when it comes back by itself
        # (a maintenance window's end), None when only an operator can help.
        return Exhausted(QuotaLimit.STATE, card.unavailable_until, f"card is {card.state}")
    if card.unavailable is not None:
        until = card.unavailable_until
        if until is None or epoch(now) < until:
            return Exhausted(QuotaLimit.UNAVAILABLE, until, card.unavailable)
    return _evaluate(
        card.effective_profile, card.usage, card.timezone, callee, now, stop_at_first=False
    )

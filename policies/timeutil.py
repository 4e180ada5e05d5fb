"""Time helpers shared by policies: daily windows, carrier days, epoch conversion.

Every function takes the instant it works on as an argument; this module must
never read a clock. Local times are computed with `zoneinfo`, so DST change
days are handled by the time zone database, not by fixed offsets.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

__all__ = [
    "DailyWindows",
    "as_utc",
    "boundary_instants",
    "ceil_seconds",
    "day_bounds",
    "epoch",
    "iso_time",
    "next_midnight",
    "parse_windows",
    "transitions",
    "zone",
]

_WINDOW_RE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
MINUTES_PER_DAY = 24 * 60


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    """A cached `ZoneInfo` (raises `ZoneInfoNotFoundError` for unknown names)."""
    return ZoneInfo(name)


def as_utc(moment: datetime | float) -> datetime:
    """An aware UTC datetime from an aware datetime or epoch seconds; naive datetimes are refused."""
    if isinstance(moment, datetime):
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError("naive datetime: policies need aware datetimes")
        return moment.astimezone(UTC)
    return datetime.fromtimestamp(moment, UTC)


def epoch(moment: datetime | float) -> float:
    """Epoch seconds from an aware datetime or epoch seconds."""
    if isinstance(moment, datetime):
        return as_utc(moment).timestamp()
    return float(moment)


def ceil_seconds(seconds: float) -> int:
    """Whole seconds rounded up, never negative (Retry-After values)."""
    return max(0, math.ceil(seconds - 1e-9))


def _minutes(hours: str, minutes: str, text: str) -> int:
    h, m = int(hours), int(minutes)
    if m > 59 or h > 24 or (h == 24 and m != 0):
        raise ValueError(f"bad time in window {text!r}")
    return h * 60 + m


@dataclass(frozen=True, slots=True)
class DailyWindows:
    """Minute ranges `[start, end)` of a local day; `end` may be 1440 (24:00)."""

    ranges: tuple[tuple[int, int], ...]

    def contains(self, minute_of_day: int) -> bool:
        """Whether a local minute of the day (0..1439) lies in a window."""
        return any(start <= minute_of_day < end for start, end in self.ranges)

    def starts(self) -> tuple[int, ...]:
        """Minutes of the day at which a window opens."""
        return tuple(sorted({start for start, _ in self.ranges}))

    def intersect(self, other: DailyWindows) -> DailyWindows:
        """Minutes that lie in both sets of windows."""
        out: list[tuple[int, int]] = []
        for a0, a1 in self.ranges:
            for b0, b1 in other.ranges:
                lo, hi = max(a0, b0), min(a1, b1)
                if lo < hi:
                    out.append((lo, hi))
        return DailyWindows(tuple(sorted(out)))

    def __str__(self) -> str:
        def fmt(m: int) -> str:
            return f"{m // 60:02d}:{m % 60:02d}"

        return ",".join(f"{fmt(a)}-{fmt(b)}" for a, b in self.ranges)


def parse_windows(text: str | Iterable[str]) -> DailyWindows:
    """Parse `"HH:MM-HH:MM"` windows, comma-separated; `24:00` ends the day.

    A window whose end is before its start wraps past midnight
    (`"21:00-08:00"` is 21:00-24:00 plus 00:00-08:00). An empty window
    (`"08:00-08:00"`) is refused as ambiguous.
    """
    parts = [p for p in text.split(",")] if isinstance(text, str) else list(text)
    ranges: list[tuple[int, int]] = []
    for part in parts:
        if not part.strip():
            continue
        match = _WINDOW_RE.match(part)
        if match is None:
            raise ValueError(f"window {part.strip()!r} is not HH:MM-HH:MM")
        start = _minutes(match[1], match[2], part)
        end = _minutes(match[3], match[4], part)
        if start == MINUTES_PER_DAY:
            raise ValueError(f"window {part.strip()!r} starts at 24:00")
        if start == end:
            raise ValueError(f"window {part.strip()!r} is empty")
        if end > start:
            ranges.append((start, end))
        else:
            ranges.append((start, MINUTES_PER_DAY))
            if end > 0:
                ranges.append((0, end))
    if not ranges:
        raise ValueError("no window given")
    return DailyWindows(tuple(sorted(ranges)))


def local_minute(moment: datetime, tz: ZoneInfo) -> tuple[date, int]:
    """Local date and minute of the day of an aware instant in a zone."""
    local = moment.astimezone(tz)
    return local.date(), local.hour * 60 + local.minute


def local_instant(day: date, minute_of_day: int, tz: ZoneInfo) -> datetime:
    """The UTC instant of a local wall-clock minute; a minute skipped by DST maps forward.

    For a wall time that does not exist (spring forward), `zoneinfo` with
    fold=0 applies the offset from before the gap, which lands on the first
    real minute after it — the moment the window actually opens.
    Ambiguous wall times (fall back) take their first occurrence.
    """
    if minute_of_day >= MINUTES_PER_DAY:
        day = day + timedelta(days=1)
        minute_of_day -= MINUTES_PER_DAY
    wall = datetime.combine(day, time(minute_of_day // 60, minute_of_day % 60), tzinfo=tz)
    return wall.astimezone(UTC)


def _offset_minutes(instant: datetime, tz: ZoneInfo) -> float:
    offset = instant.astimezone(tz).utcoffset()
    return 0.0 if offset is None else offset.total_seconds()


def transitions(tz: ZoneInfo, start: datetime, end: datetime) -> list[datetime]:
    """UTC instants in `(start, end]` at which the zone's UTC offset changes, to the second.

    Found by comparing offsets 6 hours apart and bisecting where they
    differ; zones change offset at most a few times a year.
    """
    found: list[datetime] = []
    step = timedelta(hours=6)
    lo = as_utc(start)
    end = as_utc(end)
    while lo < end:
        hi = min(lo + step, end)
        if _offset_minutes(lo, tz) != _offset_minutes(hi, tz):
            a, b = lo, hi
            while (b - a) > timedelta(seconds=1):
                mid = a + (b - a) / 2
                if _offset_minutes(mid, tz) == _offset_minutes(a, tz):
                    a = mid
                else:
                    b = mid
            found.append(b.replace(microsecond=0))
        lo = hi
    return found


def boundary_instants(
    tz: ZoneInfo, moment: datetime, minutes: Iterable[int], days: int
) -> list[datetime]:
    """Instants after `moment`, within `days`, where a local-minute predicate can flip.

    Those are the wall-clock `minutes` of each local day (both readings of an
    ambiguous or skipped wall time) and the zone's offset transitions, where
    the local clock jumps. The earliest instant at which a local-window
    condition becomes true is always one of these (or `moment` itself).
    """
    moment = as_utc(moment)
    horizon = moment + timedelta(days=days)
    first_day, _ = local_minute(moment, tz)
    out: set[datetime] = set()
    marks = sorted(set(minutes))
    for offset in range(days + 2):
        day = first_day + timedelta(days=offset)
        for minute in marks:
            for fold in (0, 1):
                if minute >= MINUTES_PER_DAY:
                    d, m = day + timedelta(days=1), minute - MINUTES_PER_DAY
                else:
                    d, m = day, minute
                wall = datetime(d.year, d.month, d.day, m // 60, m % 60, tzinfo=tz, fold=fold)
                instant = wall.astimezone(UTC)
                if moment < instant <= horizon:
                    out.add(instant)
    out.update(t for t in transitions(tz, moment, horizon) if t > moment)
    return sorted(out)


def next_midnight(moment: datetime | float, tz_name: str) -> float:
    """Epoch seconds of the next local midnight in a zone (DST-correct)."""
    tz = zone(tz_name)
    local = as_utc(moment).astimezone(tz)
    return local_instant(local.date() + timedelta(days=1), 0, tz).timestamp()


def day_bounds(moment: datetime | float, tz_name: str) -> tuple[float, float]:
    """Epoch seconds `[start, end)` of the local calendar day containing `moment`.

    This is the carrier's "day" for daily quotas; stores use it to decide
    which calls count as "today". A DST day is 23 or 25 hours long.
    Results are cached per zone and minute: local midnights of today's
    zones fall on whole UTC minutes, so the day cannot change within one.
    """
    t = epoch(moment)
    minute = int(t // 60)
    start, end = _day_bounds_minute(tz_name, minute)
    if not start <= t < end:  # a zone with a sub-minute offset (historic LMT)
        return _day_bounds_exact(t, tz_name)
    return start, end


@lru_cache(maxsize=4096)
def _day_bounds_minute(tz_name: str, minute: int) -> tuple[float, float]:
    return _day_bounds_exact(minute * 60.0, tz_name)


def _day_bounds_exact(t: float, tz_name: str) -> tuple[float, float]:
    tz = zone(tz_name)
    local = datetime.fromtimestamp(t, UTC).astimezone(tz)
    start = local_instant(local.date(), 0, tz).timestamp()
    end = local_instant(local.date() + timedelta(days=1), 0, tz).timestamp()
    return start, end


def iso_time(epoch: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC with milliseconds (``2026-11-22T03:24:41.000Z``)."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"

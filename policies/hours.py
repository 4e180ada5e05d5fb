"""Calling hours in the callee's local time.

The callee's zones come from the number (`phonenumbers.timezone.
time_zones_for_number`). When a number maps to several zones (a US
toll-free number, an Australian or Russian mobile), the window must hold in
ALL of them. Windows come from the campaign (if configured) intersected
with the callee's country window (or the default); holidays (local dates
per country) close the whole day.

A rejection carries Retry-After = seconds until the window is open in all
zones at once. It is found analytically: the earliest open instant at or
after `now` is either `now` or the opening of some zone's window, so only
window openings and DST transitions over the next `search_days` days are
checked, each converted with `zoneinfo` (DST-correct: a window opening inside
a spring-forward gap opens at the first real minute after the gap). When no such instant exists (zones too
far apart for the window) the rejection has no Retry-After.

Failure mode: fails closed — a number without a known zone and without a
configured fallback zone for its region is rejected as outside calling
hours. This module must never read a clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberType, is_number_type_geographical
from phonenumbers import timezone as pn_timezone
from phonenumbers.tzdata import TIMEZONE_DATA, TIMEZONE_LONGEST_PREFIX

from policies.context import CallContext
from policies.decision import Decision, RejectReason
from policies.timeutil import (
    DailyWindows,
    as_utc,
    boundary_instants,
    ceil_seconds,
    local_minute,
    parse_windows,
    zone,
)

__all__ = ["CallingHours", "CallingHoursPolicy", "zones_for_context", "zones_for_number"]

_UNKNOWN_ZONE = "Etc/Unknown"


def _prefix_zones(digits: str) -> tuple[str, ...]:
    for length in range(min(TIMEZONE_LONGEST_PREFIX, len(digits)), 0, -1):
        zones = TIMEZONE_DATA.get(digits[:length])
        if zones is not None:
            return tuple(z for z in zones if z != _UNKNOWN_ZONE)
    return ()


def zones_for_context(e164: str, country_code: int, number_type: int) -> tuple[str, ...]:
    """Zones of an already classified number, without parsing it again.

    Same rule as `phonenumbers.timezone.time_zones_for_number`: unknown
    type → no zone; a non-geographic type (e.g. mobile in most countries)
    → the country's zones; otherwise the longest E.164 prefix's zones.
    """
    if number_type == PhoneNumberType.UNKNOWN or not country_code or not e164.startswith("+"):
        return ()
    if not is_number_type_geographical(number_type, country_code):
        return _prefix_zones(str(country_code))
    return _prefix_zones(e164[1:])


#: Entries of :func:`zones_for_number`'s memo. Keyed by callee: a campaign calls
#: each number a few times at most, so a large memo only holds dead numbers
#: (65,536 of them were ~13 MB); the call path classifies numbers itself
#: (:func:`zones_for_context`), this is the fallback for a bare E.164.
ZONES_MEMO_MAX = 4096


@lru_cache(maxsize=ZONES_MEMO_MAX)
def zones_for_number(e164: str) -> tuple[str, ...]:
    """IANA zones of a number per phonenumbers' metadata; empty when unknown."""
    try:
        parsed = phonenumbers.parse(e164, None)
    except NumberParseException:
        return ()
    zones = pn_timezone.time_zones_for_number(parsed)
    return tuple(z for z in zones if z != _UNKNOWN_ZONE)


@dataclass(frozen=True, slots=True)
class CallingHours:
    """Calling-hours configuration.

    - `default`: windows for countries without their own;
    - `by_country`: region code → windows;
    - `by_campaign`: campaign → windows, intersected with the country's;
    - `holidays`: region code → local dates with no calling at all;
    - `fallback_zones`: region code → zone used when the number has none.
    """

    default: DailyWindows = field(default_factory=lambda: parse_windows("08:00-21:00"))
    by_country: Mapping[str, DailyWindows] = field(default_factory=dict)
    by_campaign: Mapping[str, DailyWindows] = field(default_factory=dict)
    holidays: Mapping[str, frozenset[date]] = field(default_factory=dict)
    fallback_zones: Mapping[str, str] = field(default_factory=dict)
    search_days: int = 14
    _next_open_cache: dict[tuple[object, ...], datetime | None] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def from_config(
        cls,
        default: str = "08:00-21:00",
        by_country: Mapping[str, str] | None = None,
        by_campaign: Mapping[str, str] | None = None,
        holidays: Mapping[str, list[str]] | None = None,
        fallback_zones: Mapping[str, str] | None = None,
    ) -> CallingHours:
        """Build from config strings (`"HH:MM-HH:MM,…"`, ISO dates); raises `ValueError`."""
        return cls(
            default=parse_windows(default),
            by_country={k.upper(): parse_windows(v) for k, v in (by_country or {}).items()},
            by_campaign={k: parse_windows(v) for k, v in (by_campaign or {}).items()},
            holidays={
                k.upper(): frozenset(date.fromisoformat(d) for d in v)
                for k, v in (holidays or {}).items()
            },
            fallback_zones={k.upper(): v for k, v in (fallback_zones or {}).items()},
        )

    def windows_for(self, region: str | None, campaign: str | None) -> DailyWindows:
        """Windows for a callee region and a campaign."""
        base = self.by_country.get((region or "").upper(), self.default)
        if campaign is not None and campaign in self.by_campaign:
            return base.intersect(self.by_campaign[campaign])
        return base

    def zones_for(
        self,
        e164: str,
        region: str | None,
        country_code: int = 0,
        number_type: int | None = None,
    ) -> tuple[str, ...]:
        """Zones of the callee, or the region's fallback zone; empty when unknown.

        With the country code and number type of the context the number is
        not parsed again.
        """
        if country_code and number_type is not None:
            zones = zones_for_context(e164, country_code, number_type)
        else:
            zones = zones_for_number(e164)
        if zones:
            return zones
        fallback = self.fallback_zones.get((region or "").upper())
        return (fallback,) if fallback else ()

    def is_open(
        self, moment: datetime, zones: tuple[str, ...], windows: DailyWindows, region: str | None
    ) -> bool:
        """Whether `moment` is inside the windows in every zone (and no zone has a holiday)."""
        holidays = self.holidays.get((region or "").upper(), frozenset())
        for name in zones:
            day, minute = local_minute(moment, zone(name))
            if day in holidays or not windows.contains(minute):
                return False
        return True

    def next_open(
        self, moment: datetime, zones: tuple[str, ...], windows: DailyWindows, region: str | None
    ) -> datetime | None:
        """Earliest instant at or after `moment` open in all zones, None within `search_days`."""
        moment = as_utc(moment)
        if not zones or not windows.ranges:
            return None
        if self.is_open(moment, zones, windows, region):
            return moment
        # Openness is constant within a whole UTC minute (zone offsets are whole
        # minutes) and openings fall on whole minutes, so the answer is the same
        # for every closed instant of one minute: cache it per minute.
        key = (zones, windows, (region or "").upper(), int(moment.timestamp() // 60))
        cache = self._next_open_cache
        if key in cache:
            return cache[key]
        marks = windows.starts()
        candidates: set[datetime] = set()
        for name in zones:
            candidates.update(boundary_instants(zone(name), moment, marks, self.search_days))
        found: datetime | None = None
        for instant in sorted(candidates):
            if self.is_open(instant, zones, windows, region):
                found = instant
                break
        if len(cache) >= 4096:
            cache.clear()
        cache[key] = found
        return found


@dataclass(frozen=True, slots=True)
class CallingHoursPolicy:
    """Reject `calling-hours` (403 + Retry-After) outside the callee's local window."""

    hours: CallingHours
    name: str = "hours"
    bypassed_by_emergency: bool = True

    def __call__(self, ctx: CallContext, now: datetime) -> Decision | None:
        """No opinion inside the window; else 403 with seconds until it opens in all zones."""
        moment = as_utc(now)
        zones = self.hours.zones_for(ctx.destination, ctx.region, ctx.country_code, ctx.number_type)
        if not zones:
            return Decision.reject(
                RejectReason.CALLING_HOURS, self.name, "callee time zone unknown (fails closed)"
            )
        windows = self.hours.windows_for(ctx.region, ctx.campaign)
        if self.hours.is_open(moment, zones, windows, ctx.region):
            return None
        opens = self.hours.next_open(moment, zones, windows, ctx.region)
        zone_text = zones[0] if len(zones) == 1 else f"{len(zones)} zones"
        if opens is None:
            return Decision.reject(
                RejectReason.CALLING_HOURS,
                self.name,
                f"window {windows} never open in all of {zone_text} within "
                f"{self.hours.search_days} days",
            )
        return Decision.reject(
            RejectReason.CALLING_HOURS,
            self.name,
            f"outside {windows} in {zone_text}; opens {opens.isoformat()}",
            retry_after=ceil_seconds((opens - moment).total_seconds()),
        )

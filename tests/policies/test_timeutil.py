"""Tests for the time helpers: carrier days, DST transitions, boundary instants, masking of time."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from policies.timeutil import (
    as_utc,
    boundary_instants,
    ceil_seconds,
    day_bounds,
    next_midnight,
    transitions,
    zone,
)
from tests.policies.helpers import ts, utc


def test_day_bounds_shanghai_vs_utc() -> None:
    """Shanghai's day runs 16:00-16:00 UTC; UTC's runs midnight to midnight."""
    assert (ts(2026, 5, 31, 16), ts(2026, 6, 1, 16)) == day_bounds(
        ts(2026, 6, 1, 4), "Asia/Shanghai"
    )
    assert (ts(2026, 6, 1, 16), ts(2026, 6, 2, 16)) == day_bounds(
        ts(2026, 6, 1, 16), "Asia/Shanghai"
    )
    assert (ts(2026, 6, 1), ts(2026, 6, 2)) == day_bounds(utc(2026, 6, 1, 16), "UTC")


@pytest.mark.parametrize(
    ("zone_name", "moment", "hours"),
    [
        ("America/New_York", utc(2026, 3, 8, 12), 23),
        ("America/New_York", utc(2026, 11, 1, 12), 25),
        ("Europe/Berlin", utc(2026, 3, 29, 12), 23),
        ("Europe/Berlin", utc(2026, 10, 25, 12), 25),
        ("Europe/Berlin", utc(2026, 6, 1, 12), 24),
    ],
)
def test_day_length_on_dst_days(zone_name: str, moment: datetime, hours: int) -> None:
    """Carrier days are 23 or 25 hours long on DST change days."""
    start, end = day_bounds(moment, zone_name)
    assert hours * 3600 == end - start


def test_day_bounds_cache_matches_exact_at_edges() -> None:
    """The per-minute cache gives the same answer as a fresh computation at day edges."""
    edge = ts(2026, 6, 1, 16)
    assert day_bounds(edge - 0.001, "Asia/Shanghai")[1] == edge
    assert day_bounds(edge, "Asia/Shanghai")[0] == edge
    assert next_midnight(edge - 0.001, "Asia/Shanghai") == edge


def test_transitions_found_to_the_second() -> None:
    """The 2026 DST transitions of New York and Berlin are found exactly."""
    ny = transitions(zone("America/New_York"), utc(2026, 1, 1), utc(2027, 1, 1))
    berlin = transitions(zone("Europe/Berlin"), utc(2026, 1, 1), utc(2027, 1, 1))
    assert [utc(2026, 3, 8, 7), utc(2026, 11, 1, 6)] == ny
    assert [utc(2026, 3, 29, 1), utc(2026, 10, 25, 1)] == berlin
    assert [] == transitions(zone("Asia/Shanghai"), utc(2026, 1, 1), utc(2027, 1, 1))


def test_boundary_instants_include_gap_end() -> None:
    """Boundaries on a spring-forward day include the transition instant."""
    instants = boundary_instants(zone("America/New_York"), utc(2026, 3, 8, 5), [150], 1)
    assert utc(2026, 3, 8, 7) in instants
    assert all(i > utc(2026, 3, 8, 5) for i in instants)
    assert instants == sorted(instants)


def test_as_utc_and_ceil_seconds() -> None:
    """Naive datetimes are refused; Retry-After rounds up and never goes negative."""
    with pytest.raises(ValueError):
        as_utc(datetime(2026, 1, 1))
    assert utc(2026, 1, 1) == as_utc(ts(2026, 1, 1))
    assert utc(2026, 1, 1) == as_utc(
        utc(2026, 1, 1, 8).astimezone(zone("Asia/Shanghai")) - timedelta(hours=8)
    )
    assert (1, 0, 0, 2) == (ceil_seconds(0.2), ceil_seconds(-3), ceil_seconds(0), ceil_seconds(1.5))

"""Tests for the business clocks: scaled time from a monotonic source, and the fake clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from simulator.clock import FakeClock, ScaledClock
from tests.simulator.support import START, T0


class Ticker:
    """A hand-driven monotonic source."""

    def __init__(self, value: float = 1000.0) -> None:
        self.value = value

    def __call__(self) -> float:
        return self.value


def test_scaled_clock_starts_at_scenario_start() -> None:
    """Right after creation business time equals the scenario start."""
    clock = ScaledClock(START, speed=60.0, monotonic=Ticker())
    assert T0 == clock.now()
    assert START.astimezone(UTC) == clock.now_datetime()


def test_scaled_clock_runs_speed_times_faster() -> None:
    """One real second at speed 600 is ten business minutes."""
    ticker = Ticker()
    clock = ScaledClock(START, speed=600.0, monotonic=ticker)
    ticker.value += 1.0
    assert T0 + 600.0 == clock.now()
    assert 600.0 == clock.elapsed()
    assert START + timedelta(minutes=10) == clock.now_datetime()


def test_scaled_clock_datetime_is_aware_utc() -> None:
    """now_datetime() is timezone-aware so it compares with any zone."""
    clock = ScaledClock(START, speed=2.0, monotonic=Ticker())
    assert UTC == clock.now_datetime().tzinfo


def test_scaled_clock_real_delay_divides_by_speed() -> None:
    """A 120 s business talk time at speed 60 is a 2 s real wait; negatives clamp to 0."""
    clock = ScaledClock(START, speed=60.0, monotonic=Ticker())
    assert 2.0 == clock.real_delay(120.0)
    assert 0.0 == clock.real_delay(-5.0)


def test_scaled_clock_reset_restarts_at_start() -> None:
    """reset() takes the current monotonic reading as the new origin."""
    ticker = Ticker()
    clock = ScaledClock(START, speed=10.0, monotonic=ticker)
    ticker.value += 5.0
    clock.reset()
    assert T0 == clock.now()


@pytest.mark.parametrize("speed", [0.0, -1.0])
def test_scaled_clock_rejects_non_positive_speed(speed: float) -> None:
    """Speed must be positive."""
    with pytest.raises(ValueError, match="speed"):
        ScaledClock(START, speed=speed, monotonic=Ticker())


def test_clocks_reject_naive_start() -> None:
    """A naive start time would be ambiguous across the carrier's and callees' zones."""
    with pytest.raises(ValueError, match="timezone-aware"):
        ScaledClock(datetime(2026, 3, 2, 9, 0), monotonic=Ticker())
    with pytest.raises(ValueError, match="timezone-aware"):
        FakeClock(datetime(2026, 3, 2, 9, 0))


def test_fake_clock_advances_only_when_told() -> None:
    """FakeClock.advance moves business time and returns the new epoch seconds."""
    clock = FakeClock(START)
    assert T0 == clock.now()
    assert T0 + 90 == clock.advance(90)
    assert T0 + 90 == clock.now()
    assert 90 == clock.elapsed()
    assert START + timedelta(seconds=90) == clock.now_datetime()


def test_fake_clock_cannot_go_backwards() -> None:
    """Time only moves forward."""
    clock = FakeClock(START)
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)


def test_real_time_source_is_monotonic_by_default() -> None:
    """Without an injected source the scaled clock never goes backwards."""
    clock = ScaledClock(START, speed=1000.0)
    first = clock.now()
    assert clock.now() >= first

"""DailyWindows: the "HH:MM-HH:MM[,...]" format of calling_hours and night_window."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import DailyWindows, TimeWindow


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("08:00-21:00", (TimeWindow(480, 1260),)),
        ("00:00-24:00", (TimeWindow(0, 1440),)),
        ("13:00-21:00, 08:00-12:00", (TimeWindow(480, 720), TimeWindow(780, 1260))),
        ("21:00-08:00", (TimeWindow(0, 480), TimeWindow(1260, 1440))),
        ("22:30-24:00", (TimeWindow(1350, 1440),)),
        ("23:00-00:00", (TimeWindow(1380, 1440),)),
        ("8:05-9:10", (TimeWindow(485, 550),)),
    ],
)
def test_parse(text: str, expected: tuple[TimeWindow, ...]) -> None:
    """Windows parse to sorted minute ranges; over-midnight windows split in two."""
    assert expected == DailyWindows.parse(text).windows


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("25:00-08:00", "invalid time '25:00'"),
        ("08:60-09:00", "invalid time '08:60'"),
        ("24:30-08:00", "invalid time '24:30'"),
        ("24:00-08:00", "cannot start at 24:00"),
        ("08:00", "expected HH:MM-HH:MM"),
        ("8h-9h", "expected HH:MM"),
        ("09:00-09:00", "empty window"),
        ("08:00-12:00,11:59-13:00", "windows overlap"),
        ("", "empty time window list"),
    ],
)
def test_rejects(text: str, fragment: str) -> None:
    """Malformed windows raise ValueError naming the bad part."""
    with pytest.raises(ValueError) as info:
        DailyWindows.parse(text)
    assert fragment in str(info.value)


def test_contains_and_seconds_until_open() -> None:
    """Open inside a window; outside, the wait runs to the next start (over midnight too)."""
    hours = DailyWindows.parse("08:00-12:00,13:00-21:00")
    assert hours.contains(8 * 60)
    assert not hours.contains(12 * 60)
    assert 0.0 == hours.seconds_until_open(9 * 3600)
    assert 3600.0 == hours.seconds_until_open(12 * 3600)
    # 22:00 → next day 08:00 is ten hours away.
    assert 10 * 3600.0 == hours.seconds_until_open(22 * 3600)
    assert 30.0 == hours.seconds_until_open(8 * 3600 - 30)


def test_str_round_trips() -> None:
    """str() gives back a spec that parses to the same windows."""
    hours = DailyWindows.parse(" 21:00-08:00 ,12:00-13:00")
    assert hours.windows == DailyWindows.parse(str(hours)).windows


@given(
    st.lists(st.integers(min_value=0, max_value=1439), min_size=2, max_size=8, unique=True),
    st.integers(min_value=0, max_value=86399),
)
def test_seconds_until_open_lands_in_a_window(bounds: list[int], second: int) -> None:
    """For any window set, waiting seconds_until_open lands inside a window."""
    edges = sorted(bounds)
    pairs = list(zip(edges[::2], edges[1::2], strict=False))
    spec = ",".join(f"{a // 60:02d}:{a % 60:02d}-{b // 60:02d}:{b % 60:02d}" for a, b in pairs)
    hours = DailyWindows.parse(spec)
    wait = hours.seconds_until_open(second)
    assert 0 <= wait <= 86400
    assert (wait == 0) == hours.contains(second / 60)
    assert hours.contains(((second + wait) % 86400) / 60)

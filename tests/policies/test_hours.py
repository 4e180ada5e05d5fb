"""Tests for calling hours: window edges, DST days in two zones, multi-zone numbers, holidays."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.context import CallContext
from policies.decision import Decision, RejectReason
from policies.hours import CallingHours, CallingHoursPolicy
from policies.timeutil import parse_windows
from tests.policies.helpers import ctx, utc

NY = "+12125550123"
BERLIN = "+4930123456"
AU_MOBILE = "+61412345678"
RU_MOBILE = "+79123456789"
US_TOLL_FREE = "+18002345678"


def _decide(
    number: str, now: datetime, hours: CallingHours | None = None, campaign: str | None = None
) -> Decision | None:
    """The calling-hours policy's answer for a number dialled at `now`."""
    policy = CallingHoursPolicy(hours or CallingHours())
    return policy(ctx(number, now, region="US", campaign=campaign), now)


@pytest.mark.parametrize(
    ("now", "open_", "retry"),
    [
        (utc(2026, 6, 1, 11, 59, 30), False, 30),  # 07:59:30 EDT
        (utc(2026, 6, 1, 12, 0), True, None),  # 08:00 EDT opens
        (utc(2026, 6, 2, 0, 59), True, None),  # 20:59 EDT
        (utc(2026, 6, 2, 1, 0), False, 11 * 3600),  # 21:00 EDT closed until 08:00
    ],
)
def test_window_edges_new_york(now: datetime, open_: bool, retry: int | None) -> None:
    """08:00 is inside, 21:00 is outside; Retry-After counts to the next opening."""
    decision = _decide(NY, now)
    assert open_ == (decision is None)
    if decision is not None:
        assert (403, RejectReason.CALLING_HOURS, retry) == (
            decision.sip_code,
            decision.reason,
            decision.retry_after,
        )


@pytest.mark.parametrize(
    ("number", "now", "retry"),
    [
        # New York spring forward 2026-03-08: 01:00 EST → opens 08:00 EDT = 12:00 UTC (6 h, not 7).
        (NY, utc(2026, 3, 8, 6, 0), 6 * 3600),
        # New York fall back 2026-11-01: 01:00 EDT → opens 08:00 EST = 13:00 UTC (8 h, not 7).
        (NY, utc(2026, 11, 1, 5, 0), 8 * 3600),
        # Berlin spring forward 2026-03-29: 01:00 CET → opens 08:00 CEST = 06:00 UTC.
        (BERLIN, utc(2026, 3, 29, 0, 0), 6 * 3600),
        # Berlin fall back 2026-10-25: 02:00 CEST → opens 08:00 CET = 07:00 UTC.
        (BERLIN, utc(2026, 10, 25, 0, 0), 7 * 3600),
    ],
)
def test_retry_after_on_dst_change_days(number: str, now: datetime, retry: int) -> None:
    """Retry-After follows the zone's real offset on DST change days in two zones."""
    decision = _decide(number, now)
    assert decision is not None
    assert retry == decision.retry_after


def test_window_opening_inside_spring_forward_gap() -> None:
    """A window opening at 02:30 on the spring-forward day opens at 03:00 EDT (07:00 UTC)."""
    hours = CallingHours(default=parse_windows("02:30-05:00"))
    decision = _decide(NY, utc(2026, 3, 8, 6, 0), hours)  # 01:00 EST
    assert decision is not None
    assert 3600 == decision.retry_after


def test_window_reopens_after_fall_back() -> None:
    """A window 01:00-01:30 reopens when the clock falls back from 02:00 EDT to 01:00 EST."""
    hours = CallingHours(default=parse_windows("01:00-01:30"))
    # 01:45 EDT = 05:45 UTC: closed; the repeated 01:00 EST starts at 06:00 UTC.
    decision = _decide(NY, utc(2026, 11, 1, 5, 45), hours)
    assert decision is not None
    assert 15 * 60 == decision.retry_after


@pytest.mark.parametrize(
    ("now", "open_", "retry"),
    [
        (utc(2026, 6, 1, 1, 0), False, 1800),  # Cocos (UTC+6:30) still 07:30
        (utc(2026, 6, 1, 1, 30), True, None),  # Cocos opens at 08:00
        (utc(2026, 6, 1, 10, 29), True, None),  # Lord Howe (UTC+10:30) 20:59
        (utc(2026, 6, 1, 10, 30), False, 15 * 3600),  # Lord Howe 21:00 → next 01:30 UTC
    ],
)
def test_multi_zone_australian_mobile(now: datetime, open_: bool, retry: int | None) -> None:
    """An Australian mobile maps to several zones; the window must hold in all of them."""
    decision = _decide(AU_MOBILE, now)
    assert open_ == (decision is None)
    if decision is not None:
        assert retry == decision.retry_after
        assert "zones" in decision.detail


@pytest.mark.parametrize(
    ("now", "open_"),
    [
        (utc(2026, 6, 1, 4, 59), False),  # Moscow/Bucharest 07:59
        (utc(2026, 6, 1, 5, 0), True),
        (utc(2026, 6, 1, 8, 59), True),  # Anadyr (UTC+12) 20:59
        (utc(2026, 6, 1, 9, 0), False),
    ],
)
def test_multi_zone_russian_mobile(now: datetime, open_: bool) -> None:
    """A Russian mobile spans UTC+3..+12: only 05:00-09:00 UTC is open everywhere."""
    assert open_ == (_decide(RU_MOBILE, now) is None)


def test_toll_free_number_open_only_in_common_window() -> None:
    """A US toll-free number spans Guam to Newfoundland: 08-21 holds in all only 22:00-23:30 UTC."""
    assert _decide(US_TOLL_FREE, utc(2026, 6, 1, 22, 0)) is None
    assert _decide(US_TOLL_FREE, utc(2026, 6, 1, 23, 29)) is None
    late = _decide(US_TOLL_FREE, utc(2026, 6, 1, 23, 30))
    assert late is not None
    assert 22 * 3600 + 30 * 60 == late.retry_after


def test_window_never_common_has_no_retry_after() -> None:
    """When zones are too far apart for the window, the reject has no Retry-After."""
    hours = CallingHours(default=parse_windows("09:00-17:00"))
    decision = _decide(US_TOLL_FREE, utc(2026, 6, 1, 12, 0), hours)
    assert decision is not None
    assert decision.retry_after is None
    assert "never open" in decision.detail


def test_holiday_closes_whole_day() -> None:
    """A country holiday closes the day; Retry-After runs to the next day's opening."""
    hours = CallingHours.from_config(holidays={"DE": ["2026-12-25"]})
    decision = _decide(BERLIN, utc(2026, 12, 25, 10, 0), hours)
    assert decision is not None
    assert 21 * 3600 == decision.retry_after  # 08:00 CET on the 26th = 07:00 UTC
    assert _decide(BERLIN, utc(2026, 12, 26, 10, 0), hours) is None


def test_country_window_and_campaign_intersection() -> None:
    """A campaign window narrows the country window; several comma-separated windows work."""
    hours = CallingHours.from_config(
        by_country={"DE": "09:00-20:00"}, by_campaign={"lunchless": "08:00-12:00,14:00-18:00"}
    )
    now = utc(2026, 6, 1, 10, 30)  # 12:30 CEST
    assert _decide(BERLIN, now, hours) is None
    decision = _decide(BERLIN, now, hours, campaign="lunchless")
    assert decision is not None
    assert 90 * 60 == decision.retry_after
    early = _decide(BERLIN, utc(2026, 6, 1, 6, 30), hours, campaign="lunchless")  # 08:30 CEST
    assert early is not None
    assert 30 * 60 == early.retry_after


def test_24_00_ends_the_day() -> None:
    """'00:00-24:00' is open at 23:59 and 00:00; '21:00-24:00' closes at midnight."""
    always = CallingHours(default=parse_windows("00:00-24:00"))
    assert _decide(BERLIN, utc(2026, 6, 1, 21, 59), always) is None
    assert _decide(BERLIN, utc(2026, 6, 1, 22, 0), always) is None
    evening = CallingHours(default=parse_windows("21:00-24:00"))
    assert _decide(BERLIN, utc(2026, 6, 1, 21, 59), evening) is None
    assert _decide(BERLIN, utc(2026, 6, 1, 22, 0), evening) is not None


def test_unknown_zone_fails_closed_unless_fallback() -> None:
    """A number without zone data is refused; a configured fallback zone decides instead.

    `build_context` answers 484 for a number no plan knows (issue 19), so the
    zone-less context is built by hand: a DE number of unknown type.
    """
    now = utc(2026, 6, 1, 10, 0)
    zoneless = CallContext(
        dialled="+4990012345678",
        agent="alice",
        campaign=None,
        default_region="US",
        now=now,
        destination="+4990012345678",
        region="DE",
        country_code=49,
    )
    decision = CallingHoursPolicy(CallingHours())(zoneless, now)
    assert decision is not None
    assert "unknown" in decision.detail
    hours = CallingHours.from_config(fallback_zones={"DE": "Europe/Berlin"})
    assert CallingHoursPolicy(hours)(zoneless, now) is None


@pytest.mark.parametrize(
    "text", ["8-21", "08:00-25:00", "08:00-08:00", "24:00-01:00", "08:61-09:00", ""]
)
def test_bad_window_text_is_refused(text: str) -> None:
    """Malformed windows raise ValueError with the offending part."""
    with pytest.raises(ValueError):
        parse_windows(text)


def test_wrapping_window_splits_at_midnight() -> None:
    """'21:00-08:00' means 21:00-24:00 and 00:00-08:00."""
    assert "00:00-08:00,21:00-24:00" == str(parse_windows("21:00-08:00"))


@settings(max_examples=40, deadline=None)
@given(
    minutes=st.integers(min_value=0, max_value=366 * 24 * 60),
    zone_name=st.sampled_from(["America/New_York", "Europe/Berlin", "Asia/Shanghai"]),
    window=st.sampled_from(
        ["08:00-21:00", "02:30-03:30", "09:00-12:00,13:00-17:00", "01:00-01:30"]
    ),
)
def test_next_open_is_the_first_open_minute(minutes: int, zone_name: str, window: str) -> None:
    """next_open returns an open instant and no whole minute before it is open (brute force)."""
    hours = CallingHours(default=parse_windows(window))
    windows = hours.default
    start = utc(2026, 1, 1) + timedelta(minutes=minutes)
    found = hours.next_open(start, (zone_name,), windows, None)
    assert found is not None
    assert hours.is_open(found, (zone_name,), windows, None)
    probe = start
    while probe < found:
        assert not hours.is_open(probe, (zone_name,), windows, None)
        probe += timedelta(minutes=1)


def test_from_config_parses_dates() -> None:
    """Holiday strings become dates keyed by upper-case region."""
    hours = CallingHours.from_config(holidays={"cn": ["2026-10-01"]})
    assert frozenset({date(2026, 10, 1)}) == hours.holidays["CN"]


@pytest.mark.parametrize(
    "number",
    [
        NY,
        BERLIN,
        AU_MOBILE,
        RU_MOBILE,
        US_TOLL_FREE,
        "+8613812345678",
        "+861065529988",
        "+442079460000",
        "+447700900123",
        "+390612345678",
        "+33612345678",
        "+4990012345678",
        "+19005551234",
    ],
)
def test_context_zones_match_phonenumbers(number: str) -> None:
    """Zones computed from the context's type and country code equal phonenumbers' answer."""
    import phonenumbers
    from phonenumbers import timezone as pn_timezone

    from policies.hours import zones_for_context

    parsed = phonenumbers.parse(number, None)
    expected = tuple(z for z in pn_timezone.time_zones_for_number(parsed) if z != "Etc/Unknown")
    actual = zones_for_context(number, parsed.country_code or 0, phonenumbers.number_type(parsed))
    assert expected == actual

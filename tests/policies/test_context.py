"""Tests for number normalization, the emergency check before it, and masking."""

from __future__ import annotations

import random

import phonenumbers
import pytest
from phonenumbers import PhoneNumberType

from policies.context import build_context, dial_digits, normalize
from policies.emergency import EmergencyNumbers
from policies.errors import AddressIncompleteError
from tests.policies.helpers import ctx, utc


@pytest.mark.parametrize(
    ("dialled", "region", "expected"),
    [
        ("13812345678", "CN", "+8613812345678"),
        ("+86 138-1234-5678", "US", "+8613812345678"),
        ("008613812345678", "US", "+8613812345678"),
        ("sip:+12125551234@gw.example;user=phone", "CN", "+12125551234"),
        ("tel:030 123456", "DE", "+4930123456"),
        ("(212) 555-0123", "US", "+12125550123"),
    ],
)
def test_normalize_to_e164(dialled: str, region: str, expected: str) -> None:
    """Dialled strings in national, international and URI forms become E.164."""
    assert expected == normalize(dialled, region).e164


@pytest.mark.parametrize("dialled", ["", "abc", "12", "+", "12345678901234567890", "*#06#"])
def test_unparseable_is_484(dialled: str) -> None:
    """Garbage, too short and too long numbers raise 484 Address Incomplete."""
    with pytest.raises(AddressIncompleteError) as info:
        normalize(dialled, "CN")
    assert 484 == info.value.status_code


def test_emergency_checked_before_normalizing() -> None:
    """911 in the US stays an emergency number and never becomes +1911."""
    context = ctx("911", region="US")
    assert context.emergency
    assert "911" == context.destination
    assert "US" == context.region


@pytest.mark.parametrize(
    ("regions", "dialled", "expected"),
    [
        (["US"], "911", "US"),
        (["CN"], "110", "CN"),
        (["CN"], "120", "CN"),
        (["GB"], "999", "GB"),
        (["DE"], "911", None),
        (["US"], "999", None),
        (["CN"], "000", None),
        ([], "911", None),
    ],
)
def test_emergency_only_for_configured_regions(
    regions: list[str], dialled: str, expected: str | None
) -> None:
    """An emergency number counts only in the regions configured for it."""
    assert expected == EmergencyNumbers.for_regions(regions).region_of(dialled)


def test_non_emergency_short_number_is_normalized() -> None:
    """A short number that is not an emergency number goes through normalization (484 here)."""
    with pytest.raises(AddressIncompleteError):
        ctx("999", region="US", emergency_regions=("US",))


def test_emergency_extra_list_per_region() -> None:
    """A configured extra number counts as an emergency number of its region."""
    numbers = EmergencyNumbers.for_regions(["CN"], extra={"CN": ["12395"]})
    assert "CN" == numbers.region_of("12395")
    assert numbers.region_of("12396") is None


def test_emergency_prefix_is_not_emergency() -> None:
    """Only exact emergency numbers bypass; 9110 or 911123 do not."""
    numbers = EmergencyNumbers.for_regions(["US"])
    assert numbers.region_of("911123") is None
    assert numbers.region_of("+1911") is None


def test_context_fields() -> None:
    """The context carries the E.164 destination, region, type, agent and campaign."""
    context = build_context(
        "13812345678",
        agent="bob",
        campaign="promo",
        default_region="cn",
        now=utc(2026, 1, 2, 3, 4),
        bound_card="c1",
        last_card="c2",
    )
    assert ("+8613812345678", "CN", PhoneNumberType.MOBILE, 86) == (
        context.destination,
        context.region,
        context.number_type,
        context.country_code,
    )
    assert ("bob", "promo", "CN", "c1", "c2") == (
        context.agent,
        context.campaign,
        context.default_region,
        context.bound_card,
        context.last_card,
    )
    assert not context.emergency


def test_naive_now_is_refused() -> None:
    """A naive datetime is a caller bug: policies need aware instants."""
    from datetime import datetime

    with pytest.raises(ValueError, match="naive"):
        build_context(
            "13812345678", agent="a", campaign=None, default_region="CN", now=datetime(2026, 1, 1)
        )


def test_dial_digits_strips_separators_and_scheme() -> None:
    """Visual separators and URI parts are removed before any check."""
    assert "+8613812345678" == dial_digits("sip:+86 (138) 1234-5678@host;user=phone")


def test_error_messages_mask_the_number() -> None:
    """An AddressIncompleteError never carries the full dialled number."""
    with pytest.raises(AddressIncompleteError) as info:
        normalize("+86138123456789999", "CN")
    assert "86138123456789999" not in str(info.value)


@pytest.mark.parametrize(
    ("dialled", "region"),
    [
        ("131234567", "CN"),  # a Chinese mobile one digit short: possible length, no plan has it
        ("12345678901234", "CN"),  # a 14-digit lead
        ("+8613123456789012", "CN"),
        ("+15550100123", "US"),  # NANP area code 555 does not exist
    ],
)
def test_invalid_numbers_are_484_not_a_policy_question(dialled: str, region: str) -> None:
    """Issue 19: a number of a possible length that no numbering plan knows is 484
    before any policy needs its region or zone (it was refused `calling-hours`)."""
    with pytest.raises(AddressIncompleteError) as info:
        build_context(
            dialled, agent="alice", campaign=None, default_region=region, now=utc(2026, 6, 1)
        )
    assert 484 == info.value.status_code


def test_normalize_accepts_exactly_the_numbers_phonenumbers_calls_valid() -> None:
    """normalize asks phonenumbers for the number's type only: a number is taken when its
    type is known, which must be exactly is_valid_number (random numbers of every
    calling code, international and national, a fixed seed)."""
    rng = random.Random(17)
    codes = sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
    regions = sorted(phonenumbers.SUPPORTED_REGIONS)
    taken = 0
    for i in range(6000):
        body = "".join(rng.choice("0123456789") for _ in range(rng.randint(4, 12)))
        dialled, region = (
            (f"+{rng.choice(codes)}{body}", "CN") if i % 2 else (body, rng.choice(regions))
        )
        try:
            parsed = phonenumbers.parse(dialled, region)
        except phonenumbers.NumberParseException:
            continue
        expected = phonenumbers.is_possible_number(parsed) and phonenumbers.is_valid_number(parsed)
        try:
            normalize(dialled, region)
        except AddressIncompleteError:
            assert not expected, dialled
        else:
            assert expected, dialled
            taken += 1
    assert taken > 100  # the sample holds valid numbers, not only rejects

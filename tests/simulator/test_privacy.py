"""Tests for callee number masking."""

from __future__ import annotations

import pytest

from simulator.privacy import mask_number


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("+8613812345678", "+86138****5678"),
        ("+14155550123", "+1415***0123"),
        ("+447700900123", "+44770***0123"),
        ("12345", "*****"),
        ("not-a-number-1234", "not**********1234"),
    ],
)
def test_mask_keeps_country_code_three_digits_and_last_four(number: str, masked: str) -> None:
    """Country code + 3 digits, stars, last 4; unparseable input keeps only its ends."""
    assert masked == mask_number(number)


def test_mask_can_be_disabled() -> None:
    """Masking is on unless configured off."""
    assert "+8613812345678" == mask_number("+8613812345678", enabled=False)

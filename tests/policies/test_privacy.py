"""policies.privacy: the one rule for masking callee numbers in logs, events, CDRs and reports."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from policies.privacy import MASK, mask_number, mask_numbers_deep, mask_numbers_in


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        # country code + first 3 and last 4 national digits; always four stars
        ("+8613812345678", "+86138****5678"),
        ("+12025550123", "+1202****0123"),
        ("+14155550123", "+1415****0123"),
        ("+442079460958", "+44207****0958"),
        ("+33612345678", "+3361****5678"),
        ("+86138123456789999", "+86138****9999"),
        # short national parts: fewer digits kept, at least 3 hidden, tail never below 2
        ("+8525123456", "+852****3456"),
        ("+1234567", "+1****567"),
        ("+8612345", "+86****45"),
        # no "+": no country code is assumed
        ("13812345678", "138****5678"),
        ("12345678", "1****5678"),
        ("1234567", "****4567"),
        ("008613812345678", "008****5678"),
        # "+0…" is no country code
        ("+0123456789", "+012****6789"),
        # separators are dropped from a masked number
        ("+86 138 1234 5678", "+86138****5678"),
        ("+1 (202) 555-0123", "+1202****0123"),
        (" +8613812345678 ", "+86138****5678"),
        # numbers inside other text (a SIP URI) are masked in place
        (
            "sip:+8613812345678@carrier.example;user=phone",
            "sip:+86138****5678@carrier.example;user=phone",
        ),
        ("tel:13812345678", "tel:138****5678"),
    ],
)
def test_mask_number(number: str, masked: str) -> None:
    """Enough stays to tell calls apart; never the whole subscriber number."""
    assert masked == mask_number(number)


@pytest.mark.parametrize(
    "short",
    ["110", "112", "911", "999", "000", "10086", "95588", "123456", "+861234", "+1", "+"],
)
def test_short_codes_stay_readable(short: str) -> None:
    """Fewer than 7 digits: emergency and service codes, which identify no person."""
    assert short == mask_number(short)


@pytest.mark.parametrize("text", ["", "abc", "not-a-number-1234", "+86138****5678", "card c1"])
def test_text_without_a_long_number_is_unchanged(text: str) -> None:
    """No run of 7+ digits, nothing to hide; a masked number stays as it is (idempotent)."""
    assert text == mask_number(text)
    assert text == mask_numbers_in(text)


def test_none_passes_through() -> None:
    """An optional field that is None stays None rather than failing a log line."""
    assert mask_number(None) is None  # type: ignore[arg-type]


def test_masking_can_be_turned_off() -> None:
    """``[policy] mask_numbers = false``: the number is returned as it is."""
    assert "+8613812345678" == mask_number("+8613812345678", enabled=False)
    assert "sip:+8613812345678@h" == mask_number("sip:+8613812345678@h", enabled=False)


def test_mask_numbers_in_text_masks_each_number() -> None:
    """Every number inside free text is masked; short codes and other words are left alone."""
    text = "tried +8613812345678 then 13912345678, not 110; *13812345678#"
    assert "tried +86138****5678 then 139****5678, not 110; *138****5678#" == mask_numbers_in(text)


def test_mask_numbers_deep_walks_json_shapes() -> None:
    """Every string at any depth is masked; keys become strings, tuples lists, others stay."""
    value = {
        "note": "callee +8613812345678 complained",
        "calls": ({"to": "sip:13912345678@h", "n": 13912345678}, "110"),
        1: None,
    }
    assert {
        "note": "callee +86138****5678 complained",
        "calls": [{"to": "sip:139****5678@h", "n": 13912345678}, "110"],
        "1": None,
    } == mask_numbers_deep(value)


_SEPARATORS = st.sampled_from(["", "", "", " ", "-", ".", "(", ")"])


@st.composite
def _formatted_numbers(draw: st.DrawFn) -> tuple[str, str]:
    """(digit string of 7-18 digits, that number as written: optional +, separators)."""
    digits = draw(st.text(alphabet="0123456789", min_size=7, max_size=18))
    written = digits[0] + "".join(draw(_SEPARATORS) + d for d in digits[1:])
    return digits, draw(st.sampled_from(["", "+"])) + written


_WORDS = st.text(alphabet="abc:;@=*#/ ,", max_size=6)


@settings(max_examples=300, deadline=None)
@given(number=_formatted_numbers())
@example(number=("8613812345678", "+8613812345678"))
@example(number=("1234567", "+1234567"))
def test_masked_number_never_holds_the_full_digit_string(number: tuple[str, str]) -> None:
    """Property: a number of 7+ digits never survives masking, and the mask is visible."""
    digits, written = number
    masked = mask_number(written)
    assert digits not in re.sub(r"\D", "", masked)
    assert MASK in masked
    assert masked.startswith("+") == written.startswith("+")
    assert masked == mask_number(masked)


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(st.tuples(_WORDS, _formatted_numbers()), min_size=1, max_size=4),
    end=_WORDS,
)
def test_masked_text_never_holds_the_full_digit_string(
    parts: list[tuple[str, tuple[str, str]]], end: str
) -> None:
    """Property: in free text (URIs, messages) no number of 7+ digits survives either."""
    text = "".join(word + written for word, (_, written) in parts) + end
    masked = mask_numbers_in(text)
    for _, (digits, _) in parts:
        assert digits not in masked

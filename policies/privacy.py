"""Masking of callee numbers for anything that may reach logs, events, CDR exports or reports.

DESIGN.md: callee numbers are masked (``+86138****5678``) unless configured
otherwise (``[policy] mask_numbers``). This is the one place that says how; the
gateway (logging, events, CDRs, operator views) and the simulator import it.

The rule, on the digits of a number (separators such as spaces, dashes, dots
and parentheses are dropped from a masked number):

* fewer than 7 digits: a short code (``110``, ``911``, ``112``, ``10086``) that
  identifies no person, left as it is, so emergency and service calls stay
  readable;
* otherwise ``+<country code><up to 3 digits>****<up to 4 digits>``: the country
  code (only after a ``+``) and the first 3 and last 4 national digits stay, so
  an operator can tell calls apart; at least 3 national digits are always hidden
  (fewer are kept of a short national number, the tail never below 2), and the
  mask is always four ``*`` so it does not tell the length either;
* text that is more than a number (a SIP URI, a log message) has every
  number-looking run inside it masked the same way.

So a masked string never contains the full digit string of a number of 7 or
more digits. This module must never log or keep the numbers it masks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import phonenumbers

__all__ = ["MASK", "MIN_MASKED_DIGITS", "mask_number", "mask_numbers_deep", "mask_numbers_in"]

MASK = "****"
MIN_MASKED_DIGITS = 7  # shorter: service/emergency codes (110, 911, 10086), not people

_KEEP_HEAD = 3
_KEEP_TAIL = 4
_MIN_TAIL = 2
_MIN_HIDDEN = 3

# A run that may be a phone number: optional "+", at least 7 characters from a
# digit to a digit, with the usual visual separators inside. No upper bound: an
# over-long run is still masked rather than leaked.
_NUMBER_RE = re.compile(r"(?<!\d)\+?\d[\d\- ().]{5,}\d(?!\d)")


def mask_number(number: str, *, enabled: bool = True) -> str:
    """``number`` masked by the module's rule (``+8613812345678`` → ``+86138****5678``).

    ``enabled=False`` (``[policy] mask_numbers = false``) returns it unchanged,
    and so does an empty string (or ``None``, for callers with optional fields).
    """
    if not enabled or not number:
        return number
    if not _NUMBER_RE.fullmatch(number.strip()):
        return mask_numbers_in(number)
    digits = "".join(ch for ch in number if ch.isdigit())
    if len(digits) < MIN_MASKED_DIGITS:
        return number
    plus = number.lstrip().startswith("+")
    cc = _country_code(digits) if plus else ""
    national = digits[len(cc) :]
    head, tail = _KEEP_HEAD, _KEEP_TAIL
    while len(national) - head - tail < _MIN_HIDDEN and head > 0:
        head -= 1
    while len(national) - head - tail < _MIN_HIDDEN and tail > _MIN_TAIL:
        tail -= 1
    if len(national) - head - tail < _MIN_HIDDEN:
        head = tail = 0
    kept_tail = national[len(national) - tail :] if tail else ""
    return f"{'+' if plus else ''}{cc}{national[:head]}{MASK}{kept_tail}"


def mask_numbers_in(text: str) -> str:
    """``text`` with every number-looking run inside it masked (URIs, log messages)."""
    return _NUMBER_RE.sub(lambda m: mask_number(m.group(0)), text)


def mask_numbers_deep(value: Any) -> Any:
    """Every string in ``value`` (dicts, lists and tuples, at any depth) through
    :func:`mask_numbers_in`; dict keys become strings, tuples lists (JSON shapes)."""
    if isinstance(value, str):
        return mask_numbers_in(value)
    if isinstance(value, Mapping):
        return {str(k): mask_numbers_deep(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_numbers_deep(v) for v in value]
    return value


def _country_code(digits: str) -> str:
    """The ITU country calling code (1-3 digits) at the start of ``digits``, or ''."""
    if digits.startswith("0"):
        return ""
    for size in (1, 2, 3):
        code = digits[:size]
        if phonenumbers.region_code_for_country_code(int(code)) != "ZZ":
            return code
    return ""

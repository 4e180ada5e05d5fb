"""Masking of callee numbers for anything that may reach logs or events.

DESIGN.md: callee numbers are masked (`+86138****5678`) unless configured
otherwise. This module must never log or store the numbers it masks.
"""

from __future__ import annotations

__all__ = ["mask_number"]


def mask_number(number: str, *, reveal: bool = False) -> str:
    """Mask the middle of a number: keep up to 6 leading and 4 trailing characters.

    Short numbers (emergency, service codes) are left readable because they
    identify no person.
    """
    if reveal or len(number) <= 6:
        return number
    head = min(6, len(number) - 4)
    tail = 4 if len(number) >= 10 else max(0, len(number) - head - 2)
    hidden = len(number) - head - tail
    return number[:head] + "*" * hidden + number[len(number) - tail :]

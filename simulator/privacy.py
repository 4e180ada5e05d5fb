"""Masking of callee phone numbers in simulator events, call records and reports.

A callee number is personal data: everything the simulator records for a
report shows ``+86138****5678`` (country code, three digits, stars, last four)
unless the scenario explicitly turns masking off. This module must never log
or keep the unmasked number.
"""

from __future__ import annotations

import phonenumbers

__all__ = ["mask_number"]


def mask_number(number: str, *, enabled: bool = True) -> str:
    """Mask ``number`` as ``+<cc><3 digits><stars><last 4>``; identity when not ``enabled``.

    Numbers that do not parse as E.164 keep their first three and last four
    characters; anything shorter than eight characters is fully starred.
    """
    if not enabled:
        return number
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        parsed = None
    if parsed is not None and parsed.country_code:
        national = str(parsed.national_number)
        if len(national) >= 8:
            stars = "*" * (len(national) - 7)
            return f"+{parsed.country_code}{national[:3]}{stars}{national[-4:]}"
    if len(number) < 8:
        return "*" * len(number)
    return f"{number[:3]}{'*' * (len(number) - 7)}{number[-4:]}"

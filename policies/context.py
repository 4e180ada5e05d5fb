"""The call context the gateway fills for each attempt, and number normalization.

`build_context` turns the raw dialled string into an E.164 destination with
`phonenumbers` (default region from config), after checking the raw digits
for an emergency number first (DESIGN.md call flow step 2; `parse("911",
"US")` would otherwise become `+1911`). An unparseable, impossible or
invalid number (a 9-digit Chinese mobile, a 14-digit lead: no number plan
has it) raises `AddressIncompleteError` (484) before any policy that needs a
valid number (region, calling-hours zone, type) sees it.

This module must never read a clock (the gateway passes `now`), never import
from `gateway`, and never put an unmasked number into an error message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberType

from policies.errors import AddressIncompleteError
from policies.privacy import mask_number
from policies.timeutil import as_utc

if TYPE_CHECKING:
    from policies.emergency import EmergencyNumbers

__all__ = ["CallContext", "Destination", "build_context", "dial_digits", "normalize"]

_SEPARATORS = re.compile(r"[\s\-().]")


def dial_digits(raw: str) -> str:
    """The dialled string without visual separators and without a `sip:`/`tel:` scheme part."""
    text = raw.strip()
    for scheme in ("sip:", "sips:", "tel:"):
        if text.lower().startswith(scheme):
            text = text[len(scheme) :]
    text = text.split("@", 1)[0].split(";", 1)[0]
    return _SEPARATORS.sub("", text)


@dataclass(frozen=True, slots=True)
class Destination:
    """A normalized callee: E.164 string, its region and number type."""

    e164: str
    region: str | None
    number_type: int = PhoneNumberType.UNKNOWN
    country_code: int = 0


@dataclass(frozen=True, slots=True)
class CallContext:
    """One outbound call attempt, as the policies see it.

    - `dialled`: the raw string the agent/dialer dialled (Request-URI user part).
    - `agent`: the authenticated softphone user or dialer peer name.
    - `campaign`: from the campaign header or the agent's default; None if unknown.
    - `default_region`: region for numbers dialled without `+country`.
    - `now`: aware UTC datetime at which the INVITE arrived.
    - `destination`: the E.164 callee (for an emergency call: the raw digits).
    - `region`: the callee's region (ISO code), None if unknown.
    - `emergency`: the raw digits are an emergency number of a configured region.
    - `bound_card` / `last_card`: the agent's bound card and the card it used
      last (selection prefers them).
    - `spill`: a bound agent whose card cannot take the call now may use another
      card of its pool (the pool's ``spill`` setting); otherwise it waits.
    - `exclude`: cards this attempt must not use (tried already, or sharing the
      device/trunk that just failed: failover).
    - `call_id`: for correlation in events only.
    """

    dialled: str
    agent: str
    campaign: str | None
    default_region: str
    now: datetime
    destination: str
    region: str | None = None
    number_type: int = PhoneNumberType.UNKNOWN
    country_code: int = 0
    emergency: bool = False
    bound_card: str | None = None
    last_card: str | None = None
    call_id: str = ""
    flags: frozenset[str] = field(default_factory=frozenset)
    spill: bool = False
    exclude: frozenset[str] = field(default_factory=frozenset)


def normalize(dialled: str, default_region: str) -> Destination:
    """E.164 form of a dialled number; raises `AddressIncompleteError` when not routable.

    The number must be valid in its country's plan (`phonenumbers.
    is_valid_number`): a possible length alone is not enough, since a number
    no plan knows has no region, type or time zone to judge it by (a 9-digit
    Chinese mobile would otherwise be judged on calling hours instead of 484).
    The allow-list policy judges types and countries of valid numbers.
    """
    digits = dial_digits(dialled)
    if digits.startswith("00") and digits[2:].isdigit():
        digits = "+" + digits[2:]
    body = digits[1:] if digits.startswith("+") else digits
    if not body or not body.isdigit():
        raise AddressIncompleteError(f"not a phone number: {mask_number(digits)!r}")
    try:
        parsed = phonenumbers.parse(digits, default_region.upper())
    except NumberParseException as exc:
        raise AddressIncompleteError(
            f"unparseable number {mask_number(digits)!r}: {exc.error_type}"
        ) from None
    if not phonenumbers.is_possible_number(parsed):
        raise AddressIncompleteError(f"number {mask_number(digits)!r} has an impossible length")
    # Valid in its plan ⇔ a known type: phonenumbers.is_valid_number is that same test
    # after the same region lookup, so asking both matched the number twice (7-24 µs).
    kind = phonenumbers.number_type(parsed)
    if kind == PhoneNumberType.UNKNOWN:
        raise AddressIncompleteError(
            f"number {mask_number(digits)!r} is not a valid number of its country's plan"
        )
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return Destination(
        e164=e164,
        region=phonenumbers.region_code_for_number(parsed),
        number_type=kind,
        country_code=parsed.country_code or 0,
    )


def build_context(
    dialled: str,
    *,
    agent: str,
    campaign: str | None,
    default_region: str,
    now: datetime,
    emergency: EmergencyNumbers | None = None,
    bound_card: str | None = None,
    last_card: str | None = None,
    call_id: str = "",
    flags: frozenset[str] = frozenset(),
) -> CallContext:
    """The context of one attempt; emergency check on the raw digits, then normalization.

    Raises `AddressIncompleteError` (484) for an unparseable destination.
    """
    moment = as_utc(now)
    region = emergency.region_of(dialled) if emergency is not None else None
    if region is not None:
        return CallContext(
            dialled=dialled,
            agent=agent,
            campaign=campaign,
            default_region=default_region.upper(),
            now=moment,
            destination=dial_digits(dialled),
            region=region,
            emergency=True,
            bound_card=bound_card,
            last_card=last_card,
            call_id=call_id,
            flags=flags,
        )
    dest = normalize(dialled, default_region)
    return CallContext(
        dialled=dialled,
        agent=agent,
        campaign=campaign,
        default_region=default_region.upper(),
        now=moment,
        destination=dest.e164,
        region=dest.region,
        number_type=dest.number_type,
        country_code=dest.country_code,
        emergency=False,
        bound_card=bound_card,
        last_card=last_card,
        call_id=call_id,
        flags=flags,
    )

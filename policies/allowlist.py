"""Destination allow-list: which numbers a call center may dial at all.

Rules, in order: an explicitly blocked E.164 prefix rejects; when
`allowed_prefixes` is not empty the number must start with one of them;
premium-rate and shared-cost numbers are rejected unless `allow_premium`;
numbers outside the home regions (the carriers' countries plus the default
region) are rejected unless `allow_international`.

Failure mode: fails closed — a number whose region cannot be determined is
international, hence blocked unless international calls are allowed. This
module must never read a clock or log an unmasked number.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from phonenumbers import PhoneNumberType

from policies.context import CallContext
from policies.decision import Decision, RejectReason

__all__ = ["DestinationPolicy"]

_PREMIUM_TYPES = frozenset({PhoneNumberType.PREMIUM_RATE, PhoneNumberType.SHARED_COST})


@dataclass(frozen=True, slots=True)
class DestinationPolicy:
    """Allow-list by E.164 prefix, plus premium-rate and international blocks."""

    allowed_prefixes: tuple[str, ...] = ()
    blocked_prefixes: tuple[str, ...] = ()
    home_regions: frozenset[str] = frozenset()
    allow_premium: bool = False
    allow_international: bool = False
    name: str = "destination"
    bypassed_by_emergency: bool = True

    def __call__(self, ctx: CallContext, now: datetime) -> Decision | None:
        """Reject `destination-blocked` when the destination breaks a rule, else no opinion."""
        number = ctx.destination
        for prefix in self.blocked_prefixes:
            if number.startswith(prefix):
                return Decision.reject(
                    RejectReason.DESTINATION_BLOCKED, self.name, f"prefix {prefix} is blocked"
                )
        if self.allowed_prefixes and not any(number.startswith(p) for p in self.allowed_prefixes):
            return Decision.reject(
                RejectReason.DESTINATION_BLOCKED, self.name, "not in the allowed prefixes"
            )
        if not self.allow_premium and ctx.number_type in _PREMIUM_TYPES:
            kind = (
                "premium-rate" if ctx.number_type == PhoneNumberType.PREMIUM_RATE else "shared-cost"
            )
            return Decision.reject(RejectReason.DESTINATION_BLOCKED, self.name, f"{kind} number")
        if not self.allow_international:
            home = self.home_regions | {ctx.default_region.upper()}
            if ctx.region is None or ctx.region.upper() not in home:
                return Decision.reject(
                    RejectReason.DESTINATION_BLOCKED,
                    self.name,
                    f"international destination ({ctx.region or 'unknown region'})",
                )
        return None

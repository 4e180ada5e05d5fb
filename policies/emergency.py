"""Emergency numbers: detection on the raw dialled digits, and the bypass policy.

DESIGN.md: emergency numbers of the configured regions always pass consent
and quota checks. Detection must run on the raw digits *before*
normalization, because `phonenumbers.parse("911", "US")` yields `+1911`.
A number is an emergency number when it is in the configured per-region list
or `phonenumbers.shortnumberinfo.is_emergency_number` says so for one of the
configured regions.

Failure mode: fails open for emergency calls only — when the raw digits are
an emergency number of a configured region, every policy that
`bypassed_by_emergency` is skipped. This module must never make a normal
number look like an emergency number (only exact matches count, never
prefixes), and never reads a clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from phonenumbers import shortnumberinfo

from policies.context import CallContext, dial_digits
from policies.decision import Decision

__all__ = ["EmergencyBypass", "EmergencyNumbers", "dial_digits"]


@dataclass(frozen=True, slots=True)
class EmergencyNumbers:
    """Which raw dialled strings are emergency numbers, per configured region.

    `regions` are the ISO region codes whose emergency numbers are honoured;
    `extra` adds numbers per region (e.g. a site's internal emergency line);
    `use_library` turns the phonenumbers short-number metadata on or off.
    """

    regions: frozenset[str]
    extra: Mapping[str, frozenset[str]] = field(default_factory=dict)
    use_library: bool = True

    @classmethod
    def for_regions(
        cls, regions: Iterable[str], extra: Mapping[str, Iterable[str]] | None = None
    ) -> EmergencyNumbers:
        """Build from plain iterables (config values)."""
        return cls(
            regions=frozenset(r.upper() for r in regions),
            extra={k.upper(): frozenset(v) for k, v in (extra or {}).items()},
        )

    def region_of(self, raw: str) -> str | None:
        """The configured region in which `raw` is an emergency number, or None."""
        digits = dial_digits(raw)
        if not digits or not digits.isdigit():
            return None
        for region in sorted(self.regions):
            if digits in self.extra.get(region, frozenset()):
                return region
            if self.use_library and shortnumberinfo.is_emergency_number(digits, region):
                return region
        return None


@dataclass(frozen=True, slots=True)
class EmergencyBypass:
    """First step of the pipeline: an emergency call skips every bypassable check.

    The flag set by `build_context` is re-checked against this policy's own
    configured regions, so a context built with a different list cannot
    smuggle a bypass in.
    """

    numbers: EmergencyNumbers
    name: str = "emergency"
    bypassed_by_emergency: bool = False

    def __call__(self, ctx: CallContext, now: datetime) -> Decision | None:
        """Bypass for an emergency number of a configured region, else no opinion."""
        if not ctx.emergency:
            return None
        region = self.numbers.region_of(ctx.dialled)
        if region is None:
            return None
        return Decision.emergency_bypass(self.name, f"emergency number in {region}")

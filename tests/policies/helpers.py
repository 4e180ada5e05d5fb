"""Shared builders for policy tests: explicit UTC instants and contexts (no clock reads)."""

from __future__ import annotations

from datetime import UTC, datetime

from policies.context import CallContext, build_context
from policies.emergency import EmergencyNumbers


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    """An aware UTC datetime."""
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    """Epoch seconds of a UTC wall time."""
    return utc(year, month, day, hour, minute, second).timestamp()


def ctx(
    dialled: str,
    now: datetime | None = None,
    *,
    region: str = "CN",
    agent: str = "alice",
    campaign: str | None = "spring",
    bound_card: str | None = None,
    last_card: str | None = None,
    emergency_regions: tuple[str, ...] = ("CN", "US", "DE"),
) -> CallContext:
    """A context built the way the gateway builds it."""
    return build_context(
        dialled,
        agent=agent,
        campaign=campaign,
        default_region=region,
        now=now or utc(2026, 6, 1, 4, 0),
        emergency=EmergencyNumbers.for_regions(emergency_regions),
        bound_card=bound_card,
        last_card=last_card,
    )

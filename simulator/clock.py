"""Business-time clocks for the simulator: a scaled clock for rehearsals, a fake one for tests.

A rehearsal fast-forwards *business* time (the time the carrier's anti-fraud
counters, the gateway's quotas and calling hours see) so that a campaign day
runs in minutes. SIP timers (Timer A/B, retransmissions) are protocol time and
stay real: they must never be driven by these clocks.

The gateway's policies and the carrier models take ``now`` as an argument and
never read a clock themselves; the same clock object is handed to both sides so
they agree on what time it is.

This module must never sleep, never touch the event loop and never read the
wall clock except through the injected ``monotonic`` callable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

__all__ = ["BusinessClock", "FakeClock", "ScaledClock"]


class BusinessClock(Protocol):
    """What the carrier and the gateway need from a clock: business time now."""

    def now(self) -> float:
        """Business time as POSIX epoch seconds."""
        ...

    def now_datetime(self) -> datetime:
        """Business time as an aware UTC datetime."""
        ...

    def real_delay(self, business_seconds: float) -> float:
        """Real seconds to wait so that ``business_seconds`` of business time pass."""
        ...


def _require_aware(start: datetime) -> datetime:
    if start.tzinfo is None or start.utcoffset() is None:
        raise ValueError("clock start must be a timezone-aware datetime")
    return start


@dataclass(slots=True)
class ScaledClock:
    """Business time that runs ``speed`` times faster than real time.

    ``scaled_now = start + (monotonic() - t0) * speed`` where ``t0`` is the
    monotonic reading when the clock was created (or :meth:`reset`).
    """

    start: datetime
    speed: float = 1.0
    monotonic: Callable[[], float] = time.monotonic
    _t0: float = field(init=False)
    _start_epoch: float = field(init=False)

    def __post_init__(self) -> None:
        _require_aware(self.start)
        if not self.speed > 0:
            raise ValueError(f"clock speed must be > 0, got {self.speed!r}")
        self._start_epoch = self.start.timestamp()
        self._t0 = self.monotonic()

    def reset(self) -> None:
        """Restart business time at ``start`` from the current monotonic reading."""
        self._t0 = self.monotonic()

    def elapsed(self) -> float:
        """Business seconds elapsed since ``start``."""
        return (self.monotonic() - self._t0) * self.speed

    def now(self) -> float:
        """Business time as POSIX epoch seconds."""
        return self._start_epoch + self.elapsed()

    def now_datetime(self) -> datetime:
        """Business time as an aware UTC datetime."""
        return datetime.fromtimestamp(self.now(), tz=UTC)

    def real_delay(self, business_seconds: float) -> float:
        """Real seconds after which ``business_seconds`` of business time have passed."""
        return max(0.0, business_seconds) / self.speed


@dataclass(slots=True)
class FakeClock:
    """A clock for tests: business time only moves when :meth:`advance` is called."""

    start: datetime
    speed: float = 1.0
    _now: float = field(init=False)

    def __post_init__(self) -> None:
        _require_aware(self.start)
        if not self.speed > 0:
            raise ValueError(f"clock speed must be > 0, got {self.speed!r}")
        self._now = self.start.timestamp()

    def advance(self, business_seconds: float) -> float:
        """Move business time forward and return the new epoch seconds."""
        if business_seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._now += business_seconds
        return self._now

    def elapsed(self) -> float:
        """Business seconds elapsed since ``start``."""
        return self._now - self.start.timestamp()

    def now(self) -> float:
        """Business time as POSIX epoch seconds."""
        return self._now

    def now_datetime(self) -> datetime:
        """Business time as an aware UTC datetime."""
        return datetime.fromtimestamp(self._now, tz=UTC)

    def real_delay(self, business_seconds: float) -> float:
        """Real seconds after which ``business_seconds`` of business time have passed."""
        return max(0.0, business_seconds) / self.speed

"""Capacity pacing for the simulated dialer (``[pacing] pace = "capacity"``).

Blind pacing dials at its rate and learns that no card can take the call from
a 503 ``no-card-available``. Capacity pacing asks first: before each call a
dialer channel waits until the gateway's pool capacity (``gateway.cards.capacity``:
what ``GET /pools/{pool}/capacity`` and the retained MQTT topic
``dialgate/pools/{pool}/capacity`` carry) says a call can start now, less the
calls it already let go that the gateway has not seen yet. While the pool is
full it waits until the earliest card frees (its ``frees_at``), at most
``poll`` business seconds between looks.

The channels share one gate (one at a time, in the order they ask). This
module reads capacity through the callable it is given and never decides
policy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from simulator.clock import BusinessClock, business_sleep, business_wait

__all__ = ["CapacityGate", "CapacityReading"]


@dataclass(frozen=True, slots=True)
class CapacityReading:
    """What the gate needs: calls that may start now, when the earliest card frees,
    and how many calls the gateway has taken so far (to count calls in flight)."""

    now: int
    frees_at: float | None
    calls_seen: int


class CapacityGate:
    """Wait until the pool has room for one more call (see the module docstring)."""

    def __init__(
        self,
        read: Callable[[], CapacityReading],
        clock: BusinessClock,
        *,
        poll: float = 10.0,
        settle: float = 1.0,
    ) -> None:
        self.read = read
        self.clock = clock
        self.poll = poll
        self.settle = settle  # real seconds to wait for the last call let go to arrive
        self._lock = asyncio.Lock()
        self._expect: int | None = None
        self.waits = 0  # times a channel had to wait for room
        self.passed = 0

    async def _settled(self) -> CapacityReading:
        """The capacity once the gateway has taken the call let go last (bounded wait)."""
        reading = self.read()
        if self._expect is None:
            return reading
        deadline = asyncio.get_running_loop().time() + self.settle
        while reading.calls_seen < self._expect:
            if asyncio.get_running_loop().time() >= deadline:
                break  # refused before the call path (or lost): do not wait for it
            await asyncio.sleep(0.005)
            reading = self.read()
        self._expect = None
        return reading

    async def __call__(self, stop: asyncio.Event | None = None) -> bool:
        """True once a call may be placed; False when ``stop`` was set while waiting."""
        async with self._lock:
            while stop is None or not stop.is_set():
                reading = await self._settled()
                if reading.now > 0:
                    self.passed += 1
                    self._expect = reading.calls_seen + 1
                    return True
                self.waits += 1
                now = self.clock.now()
                delay = self.poll
                if reading.frees_at is not None and reading.frees_at > now:
                    delay = min(self.poll, max(1.0, reading.frees_at - now))
                if stop is None:
                    await business_sleep(self.clock, delay)
                else:
                    await business_wait(self.clock, stop.wait(), delay)
            return False

"""Paced garbage collection for ``dialgate run``: short young collections, full ones when quiet.

CPython starts a young collection when the tracked objects *allocated minus freed*
pass a threshold. A call's objects stay alive while it is up and for the 32 s of
Timers L/M/J after it, so under steady load allocations and frees balance and that
count grows slowly: collections are rare, and each one walks every object created
since the previous one that is still alive. Measured at 300 calls/s
(``bench/e2e.py e2e``, issue 17): young collections of 45,000-55,000 objects,
10-60 ms each, whatever the thresholds; and a full collection (every ~1,000 young
ones, when the objects promoted since the last one pass a quarter of the old
generation, which calls in Timers L/M always do) walks the ~1.3 million objects of
10,000 lingering calls: 300-450 ms, every few minutes. The collector frees nothing
here (finished calls are freed by reference counting), so every pause is latency
added to calls for nothing.

:class:`CollectorPacer` turns automatic collection off and collects on a clock
instead, from the event loop (between callbacks, never inside one):

* every :data:`YOUNG_INTERVAL` the young and middle generations together
  (``gc.collect(1)``): each round walks what the last 50 ms created and is still
  alive (a few thousand objects at 300 calls/s, ~1 ms), and what survives goes
  straight to the old generation, so it is walked once. Collecting the middle
  generation only every fourth round walked each survivor a second time, in
  pauses of 3-7 ms (``bench/e2e.py e2e --rates 300 --seconds 20``: young and
  middle collections freed 0 objects; 626 ms of collection per run, worst pause
  7.2 ms, against 382-427 ms and 3.6-4.1 ms this way);
* the full collection (the only one that frees a cycle that grew old) when the
  gateway is quiet — fewer than :data:`QUIET_TRANSACTIONS` SIP transactions alive,
  so there is little to walk — at most every :data:`FULL_QUIET_EVERY`, and
  unconditionally once :data:`FULL_LATEST` has passed without one, so a process
  that is never quiet still frees old cycles.

It never runs in a thread and holds no state beyond its own counters; ``stop()``
gives the interpreter its automatic collection back.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

__all__ = ["FULL_LATEST", "FULL_QUIET_EVERY", "QUIET_TRANSACTIONS", "CollectorPacer"]

log = structlog.get_logger("gateway.collector")

YOUNG_INTERVAL = 0.05
"""Seconds between two rounds (each collects the young and middle generations)."""

QUIET_TRANSACTIONS = 500
"""Below this many live SIP transactions the gateway is quiet enough for a full collection."""

FULL_QUIET_EVERY = 60.0
"""Seconds at least between two full collections taken because the gateway was quiet."""

FULL_LATEST = 1800.0
"""Seconds at most between two full collections, quiet or not."""


@dataclass
class CollectorPacer:
    """Collect on a clock: young generations often, the full heap when quiet (see module).

    ``live`` returns how many SIP transactions are alive (the measure of how much a
    full collection would walk). :meth:`step` does one round and is what tests drive;
    :meth:`run` calls it every :data:`YOUNG_INTERVAL` until cancelled.
    """

    live: Callable[[], int]
    clock: Callable[[], float] = time.monotonic
    rounds: int = 0
    #: Collections made, by generation.
    collections: list[int] = field(default_factory=lambda: [0, 0, 0])
    last_full: float = 0.0
    _was_enabled: bool = True
    _started: bool = False

    def start(self) -> None:
        """Turn the interpreter's automatic collection off (remembering whether it was on)."""
        if self._started:
            return
        self._was_enabled = gc.isenabled()
        gc.disable()
        self._started = True
        self.last_full = self.clock()

    def stop(self) -> None:
        """Give the interpreter back its automatic collection as it was before :meth:`start`."""
        if not self._started:
            return
        self._started = False
        if self._was_enabled:
            gc.enable()

    def generation(self, now: float) -> int:
        """The oldest generation this round collects (1, or 2: the whole heap); counts
        the round."""
        self.rounds += 1
        since_full = now - self.last_full
        if since_full >= FULL_LATEST:
            return 2
        if since_full >= FULL_QUIET_EVERY and self.live() < QUIET_TRANSACTIONS:
            return 2
        return 1

    def step(self) -> int:
        """One round: collect the generation :meth:`generation` picks; return it."""
        now = self.clock()
        gen = self.generation(now)
        began = time.perf_counter()
        found = gc.collect(gen)
        pause = time.perf_counter() - began
        self.collections[gen] += 1
        if gen == 2:
            self.last_full = now
            log.debug("gc.full", pause_ms=round(pause * 1000, 1), found=found, live=self.live())
        return gen

    async def run(self) -> None:
        """Collect every :data:`YOUNG_INTERVAL` until cancelled; automatic collection is
        off meanwhile and back on afterwards."""
        self.start()
        try:
            while True:
                await asyncio.sleep(YOUNG_INTERVAL)
                try:
                    self.step()
                except Exception:  # a finalizer that raises must not end the pacing
                    log.exception("gc.round.failed")
        finally:
            self.stop()

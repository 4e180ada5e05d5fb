"""Business-time clocks for the simulator: a scaled clock for rehearsals, a fake one for tests.

A rehearsal fast-forwards *business* time (the time the carrier's anti-fraud
counters, the gateway's quotas and calling hours see) so that a campaign day
runs in minutes. SIP timers (Timer A/B, retransmissions) are protocol time and
stay real: they must never be driven by these clocks.

The gateway's policies and the carrier models take ``now`` as an argument and
never read a clock themselves; the same clock object is handed to both sides so
they agree on what time it is.

:class:`EventClock` is the discrete-event clock of an in-process SIP run: business
time does not flow with real time at all; it jumps to the next scheduled
business event (a :meth:`EventClock.sleep`, a :meth:`EventClock.call_later`)
when a driver (``simulator.runner``) has seen the whole system quiescent and
calls :meth:`EventClock.advance`. Events fire one at a time, in (time,
registration order), so a run is a function of its seed.

This module must never read the wall clock except through the injected
``monotonic`` callable. :class:`ScaledClock` and :class:`FakeClock` never touch
the event loop; :class:`EventClock` and :func:`business_sleep` /
:func:`business_wait` only create and await futures, never a real-time sleep
on behalf of an event clock.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

__all__ = [
    "BusinessClock",
    "EventClock",
    "EventTimer",
    "FakeClock",
    "ScaledClock",
    "business_sleep",
    "business_wait",
    "is_event_clock",
]


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


class EventTimer:
    """One scheduled business event: a callback or a future, cancellable until it fires."""

    __slots__ = ("callback", "cancelled", "future", "seq", "when")

    def __init__(
        self,
        when: float,
        seq: int,
        callback: Callable[[], object] | None,
        future: asyncio.Future[None] | None,
    ) -> None:
        self.when = when
        self.seq = seq
        self.callback = callback
        self.future = future
        self.cancelled = False

    def cancel(self) -> None:
        """Drop the event: it will not fire and does not move business time."""
        self.cancelled = True
        if self.future is not None and not self.future.done():
            self.future.cancel()

    @property
    def live(self) -> bool:
        """True until the event is cancelled (or its future was cancelled by its waiter)."""
        if self.cancelled:
            return False
        return self.future is None or not self.future.done()

    def __lt__(self, other: EventTimer) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)


class EventClock:
    """Discrete-event business time for an in-process run (see the module docstring).

    ``now()`` only changes in :meth:`advance`, which a driver calls when the
    system is quiescent: it sets ``now`` to the earliest live event's time and
    fires exactly that one event (ties: the event registered first). The
    sequence numbers come from a counter, so the order is as deterministic as
    the order in which the simulator registers its waits.

    ``real_delay`` is 0: business time costs no real time here; code that
    must wait for business time uses :func:`business_sleep` /
    :func:`business_wait` (or :meth:`sleep` / :meth:`call_later`).
    """

    __slots__ = ("_events", "_heap", "_now", "_seq", "_start_epoch", "fired", "start")

    def __init__(self, start: datetime) -> None:
        _require_aware(start)
        self.start = start
        self._start_epoch = start.timestamp()
        self._now = self._start_epoch
        self._heap: list[EventTimer] = []
        self._seq = itertools.count()
        self._events: asyncio.Event | None = None
        #: Events fired so far (the driver's progress measure).
        self.fired = 0

    # -- reading -------------------------------------------------------------------------

    @property
    def speed(self) -> float:
        """Not a speed: business time is not tied to real time (``inf`` for display code)."""
        return float("inf")

    def now(self) -> float:
        """Business time as POSIX epoch seconds."""
        return self._now

    def now_datetime(self) -> datetime:
        """Business time as an aware UTC datetime."""
        return datetime.fromtimestamp(self._now, tz=UTC)

    def elapsed(self) -> float:
        """Business seconds elapsed since ``start``."""
        return self._now - self._start_epoch

    def real_delay(self, business_seconds: float) -> float:
        """0.0: business time does not pass with real time on an event clock."""
        return 0.0

    def reset(self) -> None:
        """Back to ``start`` (pending events keep their absolute times)."""
        self._now = self._start_epoch

    # -- scheduling ----------------------------------------------------------------------

    def _push(
        self,
        business_seconds: float,
        callback: Callable[[], object] | None,
        future: asyncio.Future[None] | None,
    ) -> EventTimer:
        timer = EventTimer(
            self._now + max(0.0, business_seconds), next(self._seq), callback, future
        )
        heapq.heappush(self._heap, timer)
        if self._events is not None:
            self._events.set()
        return timer

    def call_later(self, business_seconds: float, callback: Callable[[], object]) -> EventTimer:
        """Call ``callback`` once ``business_seconds`` of business time have passed."""
        return self._push(business_seconds, callback, None)

    def timer(self, business_seconds: float) -> asyncio.Future[None]:
        """A future resolved once ``business_seconds`` have passed; registered right now.

        Cancel the future to drop the event.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._push(business_seconds, None, future)
        return future

    async def sleep(self, business_seconds: float) -> None:
        """Wait ``business_seconds`` of business time (registered when called)."""
        future = self.timer(business_seconds)
        try:
            await future
        finally:
            future.cancel()

    # -- the driver's side ---------------------------------------------------------------

    def _prune(self) -> None:
        heap = self._heap
        while heap and not heap[0].live:
            heapq.heappop(heap)

    def next_time(self) -> float | None:
        """Business time of the earliest live event (None: nothing scheduled)."""
        self._prune()
        return self._heap[0].when if self._heap else None

    def pending(self) -> int:
        """Live events scheduled."""
        return sum(1 for t in self._heap if t.live)

    def advance(self) -> bool:
        """Jump to the earliest live event and fire it alone; False when none is scheduled.

        Business time never goes backwards (an event scheduled for a past
        instant fires at ``now``).
        """
        self._prune()
        if not self._heap:
            return False
        timer = heapq.heappop(self._heap)
        self._now = max(self._now, timer.when)
        self.fired += 1
        if timer.future is not None:
            timer.future.set_result(None)
        elif timer.callback is not None:
            timer.callback()
        return True

    async def scheduled(self) -> None:
        """Return once at least one live event is scheduled."""
        while self.next_time() is None:
            if self._events is None:
                self._events = asyncio.Event()
            self._events.clear()
            await self._events.wait()


def is_event_clock(clock: object) -> bool:
    """True for a discrete-event clock (waits go through it, not through real time)."""
    return isinstance(clock, EventClock)


async def business_sleep(clock: BusinessClock, business_seconds: float) -> None:
    """Wait ``business_seconds`` of business time on any clock."""
    if isinstance(clock, EventClock):
        await clock.sleep(business_seconds)
    else:
        await asyncio.sleep(clock.real_delay(business_seconds))


async def business_wait(
    clock: BusinessClock, awaitable: Awaitable[Any], business_seconds: float
) -> bool:
    """Wait for ``awaitable`` at most ``business_seconds`` of business time.

    True when it completed in time. A future given in is never cancelled (a
    coroutine is wrapped in a task that is cancelled on timeout).
    """
    given = asyncio.isfuture(awaitable)
    target: asyncio.Future[Any] = asyncio.ensure_future(awaitable)
    if target.done():
        return True
    timeout: asyncio.Future[None] | None = None
    try:
        if isinstance(clock, EventClock):
            timeout = clock.timer(business_seconds)
            await asyncio.wait({target, timeout}, return_when=asyncio.FIRST_COMPLETED)
        else:
            await asyncio.wait({target}, timeout=clock.real_delay(business_seconds))
        return target.done()
    finally:
        if timeout is not None:
            timeout.cancel()
        if not given and not target.done():
            target.cancel()

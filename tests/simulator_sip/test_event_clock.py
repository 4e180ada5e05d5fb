"""The discrete-event business clock and its driver.

:class:`EventClock` fires one event at a time in (time, registration order);
:class:`EventDriver` only lets it fire when no SIP datagram is in flight in
the process and nothing is ready to run. No assertion here depends on how
long anything takes: waits are for events, with generous timeouts only so a
bug fails instead of hanging.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from gateway.sip import Request
from simulator.clock import EventClock, business_sleep, business_wait
from simulator.runner import EventDriver
from simulator.sipkit import UserAgent, new_call_id, new_tag

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
T0 = START.timestamp()


# -- EventClock ------------------------------------------------------------------------


async def test_business_time_stands_still_until_advanced() -> None:
    clock = EventClock(START)
    sleeper = asyncio.ensure_future(clock.sleep(30.0))
    for _ in range(5):
        await asyncio.sleep(0)
    assert T0 == clock.now()
    assert not sleeper.done()
    assert T0 + 30.0 == clock.next_time()
    assert clock.advance()
    await sleeper
    assert T0 + 30.0 == clock.now()
    assert START.replace(minute=0, second=30) == clock.now_datetime()
    assert not clock.advance()  # nothing left
    assert 0.0 == clock.real_delay(60.0)


async def test_events_fire_in_time_order_one_at_a_time() -> None:
    clock = EventClock(START)
    fired: list[tuple[str, float]] = []
    for name, delay in (("c", 5.0), ("a", 1.0), ("b", 3.0)):
        clock.call_later(delay, lambda n=name: fired.append((n, clock.now())))
    assert clock.advance()
    assert [("a", T0 + 1.0)] == fired  # exactly one event per advance
    while clock.advance():
        pass
    assert [("a", T0 + 1.0), ("b", T0 + 3.0), ("c", T0 + 5.0)] == fired


async def test_ties_fire_in_registration_order() -> None:
    clock = EventClock(START)
    fired: list[str] = []

    async def sleeper(name: str) -> None:
        await clock.sleep(10.0)
        fired.append(name)

    first = clock.call_later(10.0, lambda: fired.append("callback-1"))
    tasks = [asyncio.ensure_future(sleeper(n)) for n in ("s1", "s2")]
    for _ in range(3):
        await asyncio.sleep(0)  # the sleepers register, in task order
    clock.call_later(10.0, lambda: fired.append("callback-2"))
    assert first.live
    while clock.advance():
        for _ in range(3):
            await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert ["callback-1", "s1", "s2", "callback-2"] == fired
    assert T0 + 10.0 == clock.now()


async def test_cancelled_events_neither_fire_nor_move_time() -> None:
    clock = EventClock(START)
    fired: list[str] = []
    late = clock.call_later(100.0, lambda: fired.append("late"))
    soon = clock.call_later(1.0, lambda: fired.append("soon"))
    timer = clock.timer(50.0)
    soon.cancel()
    timer.cancel()
    assert 1 == clock.pending()
    assert T0 + 100.0 == clock.next_time()
    late.cancel()
    assert not clock.advance()
    assert [] == fired
    assert T0 == clock.now()


async def test_a_cancelled_sleep_leaves_the_heap() -> None:
    clock = EventClock(START)
    task = asyncio.ensure_future(clock.sleep(5.0))
    await asyncio.sleep(0)
    assert 1 == clock.pending()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert 0 == clock.pending()
    assert not clock.advance()


async def test_business_wait_returns_early_or_times_out_in_business_time() -> None:
    clock = EventClock(START)
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiter = asyncio.ensure_future(business_wait(clock, done, 60.0))
    await asyncio.sleep(0)
    done.set_result(None)
    assert await waiter is True
    assert 0 == clock.pending()  # its timeout event was dropped
    assert T0 == clock.now()

    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiter = asyncio.ensure_future(business_wait(clock, never, 60.0))
    await asyncio.sleep(0)
    assert clock.advance()
    assert await waiter is False
    assert not never.done()  # a future given in is not cancelled
    assert T0 + 60.0 == clock.now()

    stop = asyncio.Event()
    waiter = asyncio.ensure_future(business_wait(clock, stop.wait(), 5.0))
    await asyncio.sleep(0)
    stop.set()
    assert await waiter is True
    assert 0 == clock.pending()


async def test_business_sleep_on_an_event_clock_is_an_event() -> None:
    clock = EventClock(START)
    task = asyncio.ensure_future(business_sleep(clock, 7.5))
    await asyncio.sleep(0)
    assert T0 + 7.5 == clock.next_time()
    clock.advance()
    await task
    assert T0 + 7.5 == clock.now()


# -- EventDriver -----------------------------------------------------------------------


@dataclass
class _Stats:
    sent: int = 0
    received: int = 0
    keepalives: int = 0


@dataclass
class _Peer:
    stats: _Stats = field(default_factory=_Stats)


async def _run_loop_turns(n: int = 200) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_driver_does_not_advance_while_a_datagram_is_in_flight() -> None:
    clock = EventClock(START)
    a, b = _Peer(), _Peer()
    driver = EventDriver(clock, lambda: [a, b], pause=0.0005)  # type: ignore[list-item, return-value]
    a.stats.sent = 1  # a request on its way to b
    woke = asyncio.ensure_future(clock.sleep(10.0))
    task = asyncio.ensure_future(driver.run())
    try:
        await _run_loop_turns()
        await asyncio.sleep(0.05)
        assert not woke.done()
        assert T0 == clock.now()
        b.stats.received = 1  # delivered
        await asyncio.wait_for(woke, 30)
        assert T0 + 10.0 == clock.now()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_driver_waits_for_ready_work_and_follows_chains_of_events() -> None:
    """A woken sleeper's follow-up work (and the sleeps it registers) come before later events."""
    clock = EventClock(START)
    driver = EventDriver(clock, lambda: [], pause=0.0005)
    order: list[tuple[str, float]] = []

    async def worker(name: str, gaps: list[float]) -> None:
        for gap in gaps:
            await clock.sleep(gap)
            for _ in range(10):
                await asyncio.sleep(0)  # work that takes a few loop turns
            order.append((name, clock.now() - T0))

    tasks = [
        asyncio.ensure_future(worker("x", [2.0, 2.0, 2.0])),
        asyncio.ensure_future(worker("y", [3.0, 3.0])),
    ]
    run = asyncio.ensure_future(driver.run())
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
    # Both are due at 6: y registered that sleep at 3, x at 4, so y's fires first.
    assert [("x", 2.0), ("y", 3.0), ("x", 4.0), ("y", 6.0), ("x", 6.0)] == order


async def test_driver_holds_business_time_during_a_real_sip_exchange() -> None:
    """Two simulated UAs on loopback: with the answer's socket paused, the request stays
    in flight and business time stands still; once it is read, the exchange completes
    and only then does the clock move."""
    clock = EventClock(START)
    a = UserAgent("a", clock=clock)
    b = UserAgent("b", clock=clock)
    await a.start()
    await b.start()
    driver = EventDriver(clock, lambda: [*a.endpoint.transports, *b.endpoint.transports])
    task = asyncio.ensure_future(driver.run())
    try:
        woke = asyncio.ensure_future(clock.sleep(10.0))
        udp = b.transport._transport  # type: ignore[attr-defined]
        udp.pause_reading()
        host, port = b.address
        uri = f"sip:b@{host}:{port}"
        request = Request(
            "OPTIONS",
            uri,
            [
                ("From", f"<sip:a@{a.address[0]}>;tag={new_tag()}"),
                ("To", f"<{uri}>"),
                ("Call-ID", new_call_id()),
                ("CSeq", "1 OPTIONS"),
            ],
        )
        answer = asyncio.ensure_future(a.endpoint.request(request, b.address))
        await _run_loop_turns()
        await asyncio.sleep(0.05)
        sent, received = driver.counts()
        assert sent > received
        assert not woke.done() and not answer.done()
        assert T0 == clock.now()
        udp.resume_reading()
        response = await asyncio.wait_for(answer, 30)
        assert 200 == response.status
        await asyncio.wait_for(woke, 30)
        assert T0 + 10.0 == clock.now()
        sent, received = driver.counts()
        assert sent == received
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await a.close()
        await b.close()

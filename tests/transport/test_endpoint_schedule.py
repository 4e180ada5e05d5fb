"""SipEndpoint.schedule: the TU's timers on the endpoint's one timer."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from gateway.transport.endpoint import SipEndpoint


def endpoint() -> SipEndpoint:
    return SipEndpoint(lambda sr: None)


async def test_callbacks_run_in_deadline_order_on_the_one_timer() -> None:
    """Three callbacks, scheduled out of order: they run by deadline, on the endpoint's
    single asyncio timer (armed for the earliest of them)."""
    ep = endpoint()
    ran: list[str] = []
    ep.schedule(0.06, lambda: ran.append("late"))
    ep.schedule(0.02, lambda: ran.append("early"))
    assert ep._timer is not None and ep._timer_at is not None
    armed = ep._timer_at
    ep.schedule(0.04, lambda: ran.append("middle"))
    assert armed == ep._timer_at  # a later callback does not move the timer
    await asyncio.sleep(0.1)
    assert ["early", "middle", "late"] == ran
    assert ep._timer is None and not ep._scheduled


async def test_cancelled_callback_never_runs_and_lets_go_of_what_it_holds() -> None:
    """cancel() before the deadline: nothing runs, the callback is dropped at once."""
    ep = endpoint()
    ran: list[str] = []
    handle = ep.schedule(0.02, lambda: ran.append("x"))
    handle.cancel()
    handle.cancel()  # twice is harmless
    assert handle.cancelled
    assert handle.callback() is None  # the original callback is gone
    await asyncio.sleep(0.05)
    assert [] == ran


async def test_a_failing_callback_is_logged_and_the_others_still_run() -> None:
    """An exception from one callback stops neither the timer nor the next callback."""
    ep = endpoint()
    ran: list[str] = []

    def boom() -> None:
        raise RuntimeError("boom")

    ep.schedule(0.01, boom)
    ep.schedule(0.01, lambda: ran.append("after"))
    with capture_logs() as logs:
        await asyncio.sleep(0.05)
    assert ["after"] == ran
    assert ["endpoint.scheduled.failed"] == [e["event"] for e in logs]


async def test_a_callback_may_schedule_and_cancel() -> None:
    """Re-arming from inside a callback (as the ACK-wait timer does) works."""
    ep = endpoint()
    ran: list[int] = []

    def tick() -> None:
        ran.append(len(ran))
        if len(ran) < 3:
            ep.schedule(0.005, tick)

    ep.schedule(0.005, tick)
    doomed = ep.schedule(0.01, lambda: ran.append(99))
    ep.schedule(0.006, doomed.cancel)
    await asyncio.sleep(0.08)
    assert [0, 1, 2] == ran


async def test_cancelled_entries_do_not_pile_up() -> None:
    """Many timers cancelled long before their deadline (every answered call's no-answer
    timer): the heap is rebuilt once they outnumber the live ones."""
    ep = endpoint()
    keep = [ep.schedule(100.0, lambda: None) for _ in range(10)]
    for _ in range(10_000):
        ep.schedule(180.0, lambda: None).cancel()
    assert len(ep._scheduled) < 200
    for handle in keep:
        handle.cancel()
    await ep.close()

"""The card-status rounds of a running gateway: retained card and pool states, alerts.

Each round adopts card states another process wrote to the store, publishes the
card manager's events, every card's status when it changed and each pool's
capacity, and asks the operator for alerts. The composition root
(:mod:`gateway.app`) runs it as a task until ``halt`` is set.

This module must never raise out of a round (a failing round is logged and the
next one tries again), never block the loop between rounds, and within one
read the cards' usage a slice at a time.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from gateway.cards.capacity import PoolCapacityRound
from gateway.telemetry.events import card_status

if TYPE_CHECKING:
    from gateway.telemetry.events import EventBus

__all__ = ["status_rounds"]

log = structlog.get_logger("gateway.cards.status")

SLICE = 16
"""Cards (then agents) a status round goes through before it lets the event loop run."""


async def status_rounds(
    operator: Any,
    bus: EventBus,
    clock: Callable[[], float],
    interval: float,
    halt: asyncio.Event,
    *,
    sync_store: bool = True,
    flush: Callable[[], object] | None = None,
    statuses: bool = True,
) -> None:
    """Publish each card's retained state (with usage) when it changes; raise alerts.

    The first round runs at once, so a subscriber that connects after start-up
    finds every card's state retained on the broker. With ``sync_store`` each
    round first adopts card states another process wrote to the store (an
    operator's ``dialgate cards restore`` while the gateway runs). A failing
    round (the store briefly unavailable) is logged and the next one tries again.
    ``statuses=False`` (a worker of ``dialgate run --workers N`` other than worker 0,
    which publishes them): only the flush, the adoption and the card events.
    """
    last: dict[str, Any] = {}
    manager = operator.manager
    pools = PoolCapacityRound()  # dialgate/pools/{pool}/capacity, retained, on change
    while not halt.is_set():
        try:
            now = clock()
            if flush is not None:
                flush()  # CDRs spooled during a store outage, once it is back
            if sync_store:
                changed = manager.sync_from_store(now)
                if changed:
                    log.info("cards.adopted", cards=",".join(c.card for c in changed))
            events = manager.drain_events()
            if events:
                bus.publish_card_events(events)
            if statuses:
                await _publish_statuses(operator, bus, now, last, pools)
        except Exception:
            log.exception("card status round failed")
        try:
            await asyncio.wait_for(halt.wait(), timeout=interval)
        except TimeoutError:
            continue


async def _publish_statuses(
    operator: Any, bus: EventBus, now: float, last: dict[str, Any], pools: PoolCapacityRound
) -> None:
    """Each card's retained status when it changed, the pools' capacity, the alerts.

    Each card's snapshot (its usage, read from the store) is read once, for its
    status, and handed to the pools' capacity; its usage against its limits is worked
    out once, for its status, and handed to the card alerts. The cards, then
    the agents' complaint checks, go :data:`SLICE` at a time with the event loop let
    through in between, and between the pools, the card alerts and the agents. In
    one piece a round held the loop 12-21 ms every
    ``stats_interval`` at 300 calls/s with 100 cards and 8 agents
    (``bench/e2e.py e2e --slow-ms 4``): the calls that arrived then waited.
    """
    snapshots: dict[str, Any] = {}
    usage: dict[str, Any] = {}
    for done, card in enumerate(operator.manager.cards(), 1):
        snapshot = snapshots[card.id] = operator.snapshot(card, now)
        status = card_status(card, now, snapshot)
        usage[card.id] = status.usage
        key = dataclasses.replace(status, at=0.0)
        if last.get(card.id) != key:
            last[card.id] = key
            bus.publish(status)
        if done % SLICE == 0:
            await asyncio.sleep(0)

    def read_once(card: Any, at: float) -> Any:
        # A card added while the loop ran (between slices) is read now.
        found = snapshots.get(card.id)
        return found if found is not None else operator.snapshot(card, at)

    await asyncio.sleep(0)
    pools.run(operator, bus, now, snapshot=read_once)
    await asyncio.sleep(0)
    operator.check_card_alerts(now, usage=usage)
    await asyncio.sleep(0)
    for done, agent in enumerate(operator.agents(), 1):
        operator.check_agent(agent, now)
        if done % SLICE == 0:
            await asyncio.sleep(0)
    operator.watch_pauses(now)

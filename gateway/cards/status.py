"""The card-status rounds of a running gateway: retained card and pool states, alerts.

Each round adopts card states another process wrote to the store, publishes the
card manager's events, every card's status when it changed and each pool's
capacity, and asks the operator for alerts. The composition root
(:mod:`gateway.app`) runs it as a task until ``halt`` is set.

This module must never raise out of a round (a failing round is logged and the
next one tries again) and never block the loop between rounds.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from gateway.cards.capacity import PoolCapacityRound

if TYPE_CHECKING:
    from gateway.telemetry.events import EventBus

__all__ = ["status_rounds"]

log = structlog.get_logger("gateway.cards.status")


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
                _publish_statuses(operator, bus, now, last, pools)
        except Exception:
            log.exception("card status round failed")
        try:
            await asyncio.wait_for(halt.wait(), timeout=interval)
        except TimeoutError:
            continue


def _publish_statuses(
    operator: Any, bus: EventBus, now: float, last: dict[str, Any], pools: PoolCapacityRound
) -> None:
    """Each card's retained status when it changed, the pools' capacity, the alerts."""
    for card in operator.manager.cards():
        status = operator.status(card.id, now)
        if status is None:
            continue
        key = dataclasses.replace(status, at=0.0)
        if last.get(card.id) != key:
            last[card.id] = key
            bus.publish(status)
    pools.run(operator, bus, now)
    operator.check_alerts(now)

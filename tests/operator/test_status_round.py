"""The gateway's card-status round: every card's usage read once, the loop let through.

A round publishes each card's status, each pool's capacity and the alerts. All three
need every card's snapshot (its usage, read from the store); the round reads each
once, a slice of cards at a time with the event loop let through in between, and
holds them for the rest. In one piece it held the loop 12-21 ms every round at 300
calls/s with 100 cards (BENCHMARKS.md, round 4): calls arriving then waited.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

import gateway.cards.status as status_module
import gateway.operator.service as service_module
from gateway.cards.status import status_rounds
from gateway.operator.service import Operator
from gateway.telemetry.events import CardStatus, EventBus
from simulator.testkit import eventually

from .conftest import T0


def counting_snapshots(monkeypatch: pytest.MonkeyPatch, log: list[str]) -> None:
    """Every snapshot read from the store is logged as ``snap <card>``."""
    real = service_module.card_snapshot

    def counted(card: Any, *args: Any, **kwargs: Any) -> Any:
        log.append(f"snap {card.id}")
        return real(card, *args, **kwargs)

    monkeypatch.setattr(service_module, "card_snapshot", counted)


async def one_round(operator: Operator, bus: EventBus, published: list[object]) -> None:
    """Run status_rounds until its first round published both cards, then stop it."""
    halt = asyncio.Event()
    task = asyncio.ensure_future(
        status_rounds(operator, bus, lambda: T0 + 5, 60.0, halt, sync_store=False)
    )
    try:
        await eventually(lambda: len([e for e in published if isinstance(e, CardStatus)]) == 2)
    finally:
        halt.set()
        await asyncio.wait_for(task, 5)


async def test_a_round_reads_each_card_once(
    operator: Operator, bus: EventBus, published: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Statuses, pool capacities and card alerts of one round share one read per card, and
    the alerts take each card's usage against its limits from its status."""
    operator.store.reserve("c1", "k1", "+8613900000001", T0 + 1, agent="alice")
    log: list[str] = []
    counting_snapshots(monkeypatch, log)
    real_usage = service_module.usage_vs_limits

    def usage_again(*args: Any) -> Any:
        log.append("usage")
        return real_usage(*args)

    monkeypatch.setattr(service_module, "usage_vs_limits", usage_again)
    await one_round(operator, bus, published)
    assert ["snap c1", "snap c2"] == log
    # Outside a round a snapshot is read from the store again.
    operator.status("c1", T0 + 5)
    operator.check_card_alerts(T0 + 5)
    assert ["snap c1", "snap c2", "snap c1", "snap c1", "usage", "snap c2", "usage"] == log


async def test_a_round_lets_the_loop_run_between_slices(
    operator: Operator, bus: EventBus, published: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a slice of one, other callbacks run between two cards and between two agents."""
    monkeypatch.setattr(status_module, "SLICE", 1)
    log: list[str] = []
    counting_snapshots(monkeypatch, log)
    real_check = operator.check_agent

    def check_agent(agent: str, now: float) -> Any:
        log.append(f"agent {agent}")
        return real_check(agent, now)

    monkeypatch.setattr(operator, "check_agent", check_agent)
    ticking = True

    async def ticks() -> None:
        while ticking:
            log.append("tick")
            await asyncio.sleep(0)

    ticker = asyncio.ensure_future(ticks())
    try:
        await one_round(operator, bus, published)
    finally:
        ticking = False
        await ticker
    work = [entry for entry in log if entry != "tick"]
    assert ["snap c1", "snap c2", "agent alice", "agent bob"] == work
    for first, second in itertools.pairwise(work):
        between = log[log.index(first) + 1 : log.index(second)]
        assert "tick" in between, f"no other callback ran between {first!r} and {second!r}"

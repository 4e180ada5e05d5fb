"""The composition root: build the gateway's parts from the settings and run them.

``serve(settings, ready=, stop=, on_ready=)`` brings up the telemetry, the SIP
element (:class:`gateway.callpath.element.Gateway`: listeners, call path), the
HTTP server and the card-status rounds (:mod:`gateway.cards.status`), and takes
them down in reverse order.

This module must never handle a SIP message, hold call state or keep
module-level mutable state: it wires parts together and runs them.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import time
from collections.abc import Callable
from typing import Any

import structlog

from gateway.callpath.element import Gateway
from gateway.callpath.security import metric_families
from gateway.cards.status import status_rounds
from gateway.collector import CollectorPacer
from gateway.config import Settings
from gateway.workers import WorkerRole

__all__ = ["serve"]

log = structlog.get_logger("gateway.app")


GC_THRESHOLD: tuple[int, int, int] = (10_000, 3, 1000)
"""Collector thresholds while serving with ``[server] gc = "auto"`` (with "paced", the
default, :mod:`gateway.collector` collects on a clock and these are not used). The
collector finds nothing to free here (finished calls are freed by reference
counting): its cost is walking the objects of calls in progress and of calls
lingering in Timers L/M/J. bench/e2e.py, 10,000 calls at 300 CPS (issue 17):
(50_000, 20, 1000) worst pause 363 ms, 1.06 s of collection in all; (20_000, 5, 1000)
86 ms, 1.05 s; (10_000, 3, 1000) 45 ms, 0.94 s. Python's default 700 collects young
objects hundreds of times a second (-20% CPU per call, issue 7)."""


WORKER_CARD_SYNC = 1.0
"""Seconds between a worker's adoptions of the card states its siblings stored."""


@functools.cache
def _freeze_start_up_objects() -> None:
    """Once per process: collect, then move every live object out of the collector's way.

    TOOLS.md: full collections of start-up objects caused 0.6-1 s pauses in a
    Python B2BUA under load. (``gc.get_freeze_count()`` would say whether this
    ran, but it walks every frozen object: ~9 ms at each start.)
    """
    gc.collect()
    gc.freeze()


def _tune_gc() -> tuple[int, int, int]:
    """Freeze start-up objects once per process and raise the thresholds; return the old ones."""
    _freeze_start_up_objects()
    old = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLD)
    return old


async def serve(
    settings: Settings,
    *,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    clock: Callable[[], float] = time.time,
    on_ready: Callable[[Gateway], object] | None = None,
    worker: WorkerRole | None = None,
) -> None:
    """Run the gateway until ``stop`` is set (or the task is cancelled).

    Brings up, in order: the telemetry (event bus, ``/metrics`` counters, the
    MQTT publisher when ``[mqtt]`` is set), the SIP listeners and call path,
    the one HTTP server on ``[admin] listen`` (``/metrics`` and ``/health``, and
    with a call path the admin API: cards, DNC, consent, complaints, CDRs,
    bans), then, in a task group, the card-status/alert loop, which publishes
    every card's retained state at start and whenever its usage changes.
    ``clock`` is business time for policies, quotas and cards (the simulator's
    fast-forward); SIP timers, registrations and nonces stay real.

    Once every listener is bound, ``on_ready`` is called with the running
    :class:`~gateway.callpath.element.Gateway` (its ``addresses``, ``admin_url``;
    also in the ``listening`` log lines), then ``ready`` is set. Shutdown is the
    reverse order; the MQTT publisher goes last so ``offline`` follows the final
    card states.

    ``worker``: one process of ``dialgate run --workers N`` (:mod:`gateway.workers`).
    Worker 0 serves the HTTP server and publishes the card and pool statuses;
    every worker adopts the card states its siblings wrote to the store every
    :data:`WORKER_CARD_SYNC` seconds.
    """
    from gateway.telemetry.hub import GatewayTelemetry

    call_path = bool(settings.users or settings.peers or settings.cards)
    # With a call path the operator's status round raises the quota alerts.
    telemetry = GatewayTelemetry(settings, clock=clock, alert_watch=not call_path)
    gateway = Gateway(settings, clock=clock, bus=telemetry.bus, worker=worker)
    primary = worker is None or worker.primary
    telemetry.metrics.watch_gateway(gateway.snapshot)
    telemetry.metrics.add_source(lambda: metric_families(gateway.security, time.time()))
    gateway.telemetry = telemetry
    await telemetry.start()
    old_gc: tuple[int, int, int] | None = None
    admin: Any = None
    try:
        await gateway.start()
        operator = gateway.operator()
        if operator is not None:
            from gateway.telemetry.agent_board import (
                wire_agent_board,  # dialgate/agents/{agent}/state
            )

            wire_agent_board(settings, operator.store, telemetry.bus, clock())
        if settings.admin.enabled and primary:
            admin = await _start_admin(settings, gateway, operator, telemetry, clock)
            gateway.admin_url = admin.url
            log.info("admin.listening", url=admin.url)
        old_gc = _tune_gc()
        halt = asyncio.Event()
        # Start-up errors above propagate as themselves; only the loops run in
        # the task group, which ends them (halt, then wait) before shutdown.
        async with asyncio.TaskGroup() as loops:
            pacing = None
            if settings.server.gc == "paced":
                pacer = CollectorPacer(live=lambda: len(gateway.endpoint.layer))
                pacing = loops.create_task(pacer.run())
            if operator is not None:
                interval = settings.mqtt.stats_interval if settings.mqtt is not None else 5.0
                # Without Redis nothing else adopts card changes written to the store
                # by another process (the CLI): the status loop does, every round.
                shared = gateway.health is not None and gateway.health.shared is not None
                if primary:
                    loops.create_task(
                        status_rounds(
                            operator,
                            telemetry.bus,
                            clock,
                            interval,
                            halt,
                            sync_store=not shared and worker is None,
                            flush=gateway.flush_spooled,
                        )
                    )
                if worker is not None and not shared:
                    # A suspension decided by a sibling is honoured here within a second.
                    loops.create_task(
                        status_rounds(
                            operator,
                            telemetry.bus,
                            clock,
                            WORKER_CARD_SYNC,
                            halt,
                            flush=gateway.flush_spooled,
                            statuses=False,
                        )
                    )
            try:
                if on_ready is not None:
                    on_ready(gateway)
                if ready is not None:
                    ready.set()
                if stop is None:
                    await asyncio.Event().wait()  # until cancelled
                else:
                    await stop.wait()
            finally:
                halt.set()
                if pacing is not None:
                    pacing.cancel()
    finally:
        if admin is not None:
            await admin.stop()
        await gateway.close()
        if old_gc is not None:
            gc.set_threshold(*old_gc)
        await telemetry.stop()


async def _start_admin(
    settings: Settings,
    gateway: Gateway,
    operator: Any,
    telemetry: Any,
    clock: Callable[[], float],
) -> Any:
    """The one HTTP server on ``[admin] listen``: the admin API over the gateway's own
    store, card manager and bus when it has a call path, ``/metrics`` and ``/health``."""
    from gateway.operator.api import build_admin_app, build_monitoring_app, start_admin
    from gateway.operator.api.security_routes import add_security_routes

    shared = getattr(gateway.b2bua.services.ledger, "shared", None) if gateway.b2bua else None
    store_guard = gateway.store.guard if gateway.store is not None else None
    guards = [g for g in (store_guard, getattr(shared, "guard", None)) if g]
    if operator is not None and gateway.store is not None:
        app = build_admin_app(
            settings,
            gateway.store,
            operator=operator,
            clock=clock,
            telemetry=telemetry,
            store_guards=guards,
        )
        add_security_routes(app, gateway)
    else:
        app = build_monitoring_app(settings, telemetry, store_guards=guards)
    try:
        return await start_admin(app, settings.admin.listen)
    except OSError as exc:
        raise OSError(exc.errno, f"admin.listen {settings.admin.listen}: {exc.strerror}") from exc

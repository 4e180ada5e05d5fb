"""The gateway's telemetry as one unit: the event bus and what listens to it.

:class:`GatewayTelemetry` is what ``gateway.app`` builds from the settings,
starts and stops: the :class:`~gateway.telemetry.events.EventBus` with its
subscribers — call stats, the bus alert watch, the Prometheus metrics
(:class:`~gateway.telemetry.metrics.GatewayMetrics`) and the MQTT publisher
when ``[mqtt]`` is set — plus :meth:`GatewayTelemetry.health_fields`, the
telemetry's part of ``/health``. ``/metrics`` and ``/health`` are served by
the admin application (``gateway.operator.api``).

What it must never do: open a port or serve HTTP, or fail a call because the
broker is away (the publisher queues and drops; it never blocks the bus).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from gateway import __version__
from gateway.telemetry.alerts import AlertWatch
from gateway.telemetry.events import CallStats, EventBus
from gateway.telemetry.metrics import GatewayMetrics

if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.telemetry.mqtt import MqttPublisher

__all__ = ["GatewayTelemetry"]


class GatewayTelemetry:
    """Bus, stats, alerts, metrics and the MQTT publisher.

    ``gateway.app`` hands ``telemetry.bus`` to the call path and cards
    (``bus.publish(event)``, ``bus.publish_card_events(manager.drain_events())``)
    and stops the telemetry last. ``gateway_snapshot`` (``Gateway.snapshot``) adds
    the transport and request counters to the metrics. Without ``[mqtt]`` nothing
    is published to a broker. ``alert_watch=False`` leaves ``quota-near``/
    ``card-at-risk`` to the operator's alert round so they are not raised twice.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        gateway_snapshot: Callable[[], Mapping[str, Any]] | None = None,
        version: str = __version__,
        alert_watch: bool = True,
    ) -> None:
        from gateway.telemetry.mqtt import MqttPublisher

        self.settings = settings
        self.version = version
        self.bus = EventBus()
        self.stats = CallStats(clock)
        self.metrics = GatewayMetrics(version=version)
        self.bus.subscribe(self.stats)
        self.bus.subscribe(self.metrics)
        if alert_watch:
            self.bus.subscribe(AlertWatch(self.bus.publish))
        self.publisher: MqttPublisher | None = None
        if settings.mqtt is not None:
            self.publisher = MqttPublisher.from_settings(
                settings, stats_source=self.stats.snapshot, clock=clock, version=version
            )
            self.publisher.attach(self.bus)
            self.metrics.watch_mqtt(self.publisher)
        if gateway_snapshot is not None:
            self.metrics.watch_gateway(gateway_snapshot)

    def health_fields(self) -> dict[str, Any]:
        """The telemetry's part of ``/health``: the broker link (``off`` without
        ``[mqtt]``; a broker outage never makes the gateway unhealthy), calls in
        progress and cards by state."""
        mqtt = "off"
        if self.publisher is not None:
            mqtt = "connected" if self.publisher.connected else "disconnected"
        return {
            "mqtt": mqtt,
            "active_calls": self.stats.active_calls,
            "cards": self.stats.cards_by_state(),
        }

    async def start(self) -> None:
        """Start publishing (MQTT connects in the background)."""
        if self.publisher is not None:
            await self.publisher.start()

    async def stop(self, timeout: float = 5.0) -> None:
        """Flush MQTT and publish ``offline`` (bounded by ``timeout``); a second call is a no-op."""
        if self.publisher is not None:
            await self.publisher.stop(timeout)

    async def __aenter__(self) -> GatewayTelemetry:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

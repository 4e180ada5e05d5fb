"""``GET /metrics`` and ``GET /health`` of the admin application.

``/metrics`` is the gateway's Prometheus exposition
(:meth:`gateway.telemetry.metrics.GatewayMetrics.render`); it needs the admin
token like every route (Prometheus scrapes with ``authorization: {credentials:
<token>}``), or a loopback client when no token is configured. ``/health``
needs no token: ``ok`` (200) while the gateway runs, ``degraded`` (503) while
a store does not answer; with the telemetry attached it also tells the broker
link, calls in progress and cards by state (a broker outage never fails it).

What it must never do: put a token, a number or a store error's SQL into an
answer, or take longer than reading in-memory counters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway import __version__
from gateway.operator.api.keys import OPERATOR_KEY, STORE_GUARDS_KEY, TELEMETRY_KEY
from gateway.telemetry.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from gateway.telemetry.hub import GatewayTelemetry

__all__ = ["health", "metrics", "mount_metrics"]


async def health(request: web.Request) -> web.Response:
    """Liveness (no token needed); 503 ``degraded`` while a store does not answer."""
    guards = request.app.get(STORE_GUARDS_KEY)
    if guards is None:
        guard = getattr(getattr(request.app.get(OPERATOR_KEY), "store", None), "guard", None)
        guards = [] if guard is None else [guard]
    stores = {g.name: g.status() for g in guards}
    down = [s for s in stores.values() if s["state"] == "unavailable"]
    store = down[0] if down else (next(iter(stores.values())) if stores else {"state": "off"})
    body: dict[str, Any] = {
        "status": "degraded" if down else "ok",
        "version": __version__,
        "store": store,
    }
    if len(stores) > 1:
        body["stores"] = stores
    telemetry = request.app.get(TELEMETRY_KEY)
    if telemetry is not None:
        body.update(telemetry.health_fields())
    return web.json_response(body, status=503 if down else 200)


async def metrics(request: web.Request) -> web.Response:
    """The Prometheus exposition of the gateway's metrics."""
    return web.Response(
        body=request.app[TELEMETRY_KEY].metrics.render().encode(),
        headers={"Content-Type": CONTENT_TYPE},
    )


def mount_metrics(app: web.Application, telemetry: GatewayTelemetry) -> None:
    """Serve ``telemetry``'s metrics at ``GET /metrics`` and its part of ``/health`` (before start)."""
    app[TELEMETRY_KEY] = telemetry
    app.router.add_get("/metrics", metrics)

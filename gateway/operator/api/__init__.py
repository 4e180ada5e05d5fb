"""The admin HTTP application of dialgate (aiohttp): the gateway's one HTTP server.

:func:`build_admin_app` returns the ``aiohttp.web.Application`` of the admin
API — cards, evidence, DNC, consent, complaints, CDRs, dialer routes — with
``/health`` and, given the gateway's telemetry, ``/metrics``;
:func:`build_monitoring_app` is the same ``/metrics`` and ``/health`` alone, for
a gateway without a call path (no store, no operator). :func:`start_admin`
binds an application on ``[admin] listen`` (port 0 picks a free port) and
returns the running :class:`AdminServer`. The API is described by the OpenAPI 3
document at ``/openapi.json``; every route but ``/health`` and ``/openapi.json``
needs ``Authorization: Bearer <[admin] token>`` (or a loopback client when no
token is configured).

All behaviour lives in :class:`gateway.operator.service.Operator` (shared with the CLI);
this package only adapts HTTP to it. It must never log a token, a request body
or an unmasked number, and never block the event loop for longer than one short
store transaction per request (evidence packs excepted: they read a period's CDRs).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.cards import CardManager
from gateway.config import Settings
from gateway.operator.api.auth import token_middleware
from gateway.operator.api.keys import CLOCK_KEY, OPERATOR_KEY, STORE_GUARDS_KEY
from gateway.operator.api.limits import body_limit_middleware, largest_limit
from gateway.operator.api.monitoring import health, mount_metrics
from gateway.operator.api.routes import add_routes, error_middleware
from gateway.operator.service import Operator, operator_from_settings
from gateway.operator.web import WebServer, parse_listen
from gateway.store import SQLiteStore
from gateway.telemetry.events import EventBus

if TYPE_CHECKING:
    from gateway.telemetry.hub import GatewayTelemetry

__all__ = [
    "OPERATOR_KEY",
    "AdminServer",
    "build_admin_app",
    "build_monitoring_app",
    "start_admin",
]


def _application(settings: Settings) -> web.Application:
    return web.Application(
        middlewares=[
            error_middleware,
            token_middleware(settings.admin.token),
            body_limit_middleware,
        ],
        client_max_size=largest_limit(),
    )


def build_admin_app(
    settings: Settings,
    store: SQLiteStore,
    *,
    manager: CardManager | None = None,
    bus: EventBus | None = None,
    operator: Operator | None = None,
    clock: Callable[[], float] = time.time,
    telemetry: GatewayTelemetry | None = None,
    store_guards: Sequence[Any] | None = None,
) -> web.Application:
    """The admin application over ``store``.

    Inside ``dialgate run`` pass the gateway's own ``operator`` (over its card
    manager and bus) so lifecycle actions change the cards the gateway routes
    with and are published, its ``telemetry`` for ``/metrics``, and the
    ``store_guards`` ``/health`` reports (default: the operator's store's).
    Without a manager one is loaded from the store (a stand-alone admin server).
    """
    if operator is None:
        if manager is None:
            operator = operator_from_settings(settings, now=clock(), store=store, bus=bus)
        else:
            operator = Operator(settings, store, manager, bus=bus)
    app = _application(settings)
    app[OPERATOR_KEY] = operator
    app[CLOCK_KEY] = clock
    if store_guards is not None:
        app[STORE_GUARDS_KEY] = list(store_guards)
    add_routes(app)
    if telemetry is not None:
        mount_metrics(app, telemetry)
    return app


def build_monitoring_app(
    settings: Settings, telemetry: GatewayTelemetry, *, store_guards: Sequence[Any] = ()
) -> web.Application:
    """``/metrics`` and ``/health`` alone (a gateway without a call path), same auth rules."""
    app = _application(settings)
    app[STORE_GUARDS_KEY] = list(store_guards)
    app.router.add_get("/health", health)
    mount_metrics(app, telemetry)
    return app


class AdminServer(WebServer):
    """A running admin application: its ``url``, and ``stop()``."""


async def start_admin(app: web.Application, listen: str) -> AdminServer:
    """Bind ``app`` on ``listen`` (``host:port``; port 0 picks a free one) and serve it."""
    host, port = parse_listen(listen)
    server = AdminServer(app, host, port)
    await server.start()
    return server

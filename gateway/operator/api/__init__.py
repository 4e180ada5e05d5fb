"""The admin HTTP API of dialgate (aiohttp): cards, evidence, DNC, consent, complaints, CDRs.

:func:`build_admin_app` returns the ``aiohttp.web.Application``; :func:`start_admin`
binds it on ``[admin] listen`` (port 0 picks a free port) and returns an
:class:`AdminServer` whose ``stop()`` shuts it down. The API is described by
the OpenAPI 3 document at ``/openapi.json``; every route but ``/health`` and
``/openapi.json`` needs ``Authorization: Bearer <[admin] token>``.

All behaviour lives in :class:`gateway.operator.service.Operator` (shared with the CLI);
this package only adapts HTTP to it. It must never log a token, a request body
or an unmasked number, and never block the event loop for longer than one short
store transaction per request (evidence packs excepted: they read a period's CDRs).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from gateway.cards import CardManager
from gateway.config import Settings
from gateway.operator.api.auth import token_middleware
from gateway.operator.api.keys import CLOCK_KEY, OPERATOR_KEY
from gateway.operator.api.limits import body_limit_middleware, largest_limit
from gateway.operator.api.routes import add_routes, error_middleware
from gateway.operator.service import Operator, operator_from_settings
from gateway.store import SQLiteStore
from gateway.telemetry.events import EventBus

__all__ = ["OPERATOR_KEY", "AdminServer", "build_admin_app", "start_admin"]


def build_admin_app(
    settings: Settings,
    store: SQLiteStore,
    *,
    manager: CardManager | None = None,
    bus: EventBus | None = None,
    operator: Operator | None = None,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """The admin application over ``store``.

    Inside ``dialgate run`` pass the gateway's own ``manager`` and ``bus`` so
    lifecycle actions change the cards the gateway routes with and are published.
    Without a manager one is loaded from the store (a stand-alone admin server).
    """
    if operator is None:
        if manager is None:
            operator = operator_from_settings(settings, now=clock(), store=store, bus=bus)
        else:
            operator = Operator(settings, store, manager, bus=bus)
    app = web.Application(
        middlewares=[
            error_middleware,
            token_middleware(settings.admin.token),
            body_limit_middleware,
        ],
        client_max_size=largest_limit(),
    )
    app[OPERATOR_KEY] = operator
    app[CLOCK_KEY] = clock
    add_routes(app)
    return app


@dataclass(slots=True)
class AdminServer:
    """A running admin API: the address it bound and how to stop it."""

    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        """Base URL of the API."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        """Stop accepting requests and close the app."""
        await self.runner.cleanup()


async def start_admin(app: web.Application, listen: str) -> AdminServer:
    """Bind ``app`` on ``listen`` (``host:port``; port 0 picks a free one) and serve it."""
    host, _, port_text = listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") else host
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, int(port_text))
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    port = int(port_text)
    for address in runner.addresses:  # the real port when 0 was asked for
        port = int(address[1])
        break
    return AdminServer(runner, host, port)

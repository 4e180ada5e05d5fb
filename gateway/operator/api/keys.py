"""The typed keys under which the admin application holds what its handlers share.

The operator (every card, DNC, consent and CDR action), the clock, the store
guards ``/health`` reports, the telemetry ``/metrics`` renders. Kept apart from the handlers so every route module
can import them without importing another route module.

What it must never do: hold a handler, or import a route module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.operator.service import Operator

if TYPE_CHECKING:
    from gateway.telemetry.hub import GatewayTelemetry

__all__ = ["CLOCK_KEY", "OPERATOR_KEY", "STORE_GUARDS_KEY", "TELEMETRY_KEY"]

OPERATOR_KEY: web.AppKey[Operator] = web.AppKey("operator", Operator)
CLOCK_KEY: web.AppKey[Callable[[], float]] = web.AppKey("clock")
# The gateway's store guards (gateway.store.guard: SQLite, and Redis when shared) for /health.
STORE_GUARDS_KEY: web.AppKey[list[Any]] = web.AppKey("store_guards")
# The gateway's telemetry (gateway.telemetry.hub): /metrics, and its part of /health.
TELEMETRY_KEY: web.AppKey[GatewayTelemetry] = web.AppKey("telemetry")

"""Admin API for the guessing/flood defence: ``GET /security/bans``, ``DELETE /security/bans/{addr}``.

Thin adapters over the running :class:`gateway.callpath.element.Gateway` (its
:class:`gateway.callpath.security.Guard` and ban file), mounted by ``dialgate run``
next to the operator routes; the OpenAPI entries are in
:mod:`gateway.operator.api.openapi`. ``DELETE /security/bans/all`` lifts every ban.

What it must never do: ban anything (bans come only from the SIP side), or
log a request header.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.callpath.security import Ban, normalize_address
from gateway.telemetry.events import iso_time

__all__ = ["GATEWAY_KEY", "add_security_routes", "ban_json"]

GATEWAY_KEY: web.AppKey[Any] = web.AppKey("security_gateway")


def ban_json(ban: Ban, now: float) -> dict[str, Any]:
    """One ban as the API and the CLI's ``--json`` show it (ISO 8601 UTC times)."""
    return {
        "address": ban.address,
        "reason": ban.reason,
        "count": ban.count,
        "offence": ban.offence,
        "since": iso_time(ban.since),
        "until": iso_time(ban.until),
        "remaining_seconds": max(0, round(ban.until - now)),
    }


async def list_bans(request: web.Request) -> web.Response:
    """Every ban in force, soonest to end first, with the guard's counters."""
    gateway = request.app[GATEWAY_KEY]
    now = gateway.sip_clock()
    bans = gateway.security.active(now)
    return web.json_response(
        {
            "bans": [ban_json(b, now) for b in bans],
            "stats": gateway.security.stats.as_dict(),
        }
    )


async def delete_ban(request: web.Request) -> web.Response:
    """Lift the ban of one address (``all``: every ban); 404 when it was not banned."""
    gateway = request.app[GATEWAY_KEY]
    text = request.match_info["address"]
    if text == "all":
        lifted = gateway.unban(None)
    else:
        try:
            address = normalize_address(text)
        except ValueError:
            return web.json_response({"error": "not an IP address"}, status=400)
        lifted = gateway.unban(address)
        if not lifted:
            return web.json_response({"error": "not banned"}, status=404)
    now = gateway.sip_clock()
    return web.json_response({"lifted": [ban_json(b, now) for b in lifted]})


def add_security_routes(app: web.Application, gateway: Any) -> None:
    """Mount the routes over ``gateway`` (a running :class:`gateway.callpath.element.Gateway`)."""
    app[GATEWAY_KEY] = gateway
    app.router.add_get("/security/bans", list_bans)
    app.router.add_delete("/security/bans/{address}", delete_ban)

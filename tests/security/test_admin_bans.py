"""Admin API of the guessing defence: GET /security/bans, DELETE /security/bans/{address}.

The routes are mounted over a gateway (memory transport) with a real aiohttp
server on a free loopback port; the ``source-banned`` alert renders as an MQTT
``dialgate/alerts`` payload.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from gateway.callpath.security import BanFile, ban_file_path
from gateway.operator.api import start_admin
from gateway.operator.api.openapi import openapi_document
from gateway.operator.api.security_routes import add_security_routes
from gateway.telemetry.events import Alert, render_payload
from tests.security.test_gateway_guard import ATTACKER, guess, make_gateway


async def test_list_and_lift_bans(tmp_path: Path) -> None:
    """GET lists the attacker's ban; DELETE lifts it (and the ban file); a second DELETE is 404."""
    gw, mem = make_gateway(tmp_path)
    alerts: list[Alert] = []
    gw.events.subscribe(lambda e: alerts.append(e) if isinstance(e, Alert) else None)
    for n in range(10):
        guess(gw, mem, ATTACKER, f"wrong{n}", n)
    app = web.Application()
    add_security_routes(app, gw)
    server = await start_admin(app, "127.0.0.1:0")
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.url}/security/bans") as resp:
                listed = (resp.status, await resp.json())
            async with http.delete(f"{server.url}/security/bans/{ATTACKER[0]}") as resp:
                lifted = (resp.status, await resp.json())
            async with http.delete(f"{server.url}/security/bans/{ATTACKER[0]}") as resp:
                again = resp.status
            async with http.delete(f"{server.url}/security/bans/not-an-ip") as resp:
                bad = resp.status
    finally:
        await server.stop()
    status, body = listed
    assert 200 == status
    assert [("127.0.0.3", "auth-failures", 10)] == [
        (b["address"], b["reason"], b["count"]) for b in body["bans"]
    ]
    assert 0 < body["bans"][0]["remaining_seconds"] <= 600
    assert (200, ["127.0.0.3"]) == (lifted[0], [b["address"] for b in lifted[1]["lifted"]])
    assert (404, 400) == (again, bad)
    assert gw.security.banned("127.0.0.3", time.time()) is None
    assert {} == BanFile(ban_file_path(gw.settings)).load()
    payload = render_payload(alerts[0])
    assert ("source-banned", "127.0.0.3") == (payload["alert"], payload["detail"]["address"])
    json.dumps(payload)


def test_openapi_documents_the_routes() -> None:
    """/openapi.json has GET /security/bans and DELETE /security/bans/{address}."""
    paths = openapi_document("test")["paths"]
    assert "get" in paths["/security/bans"]
    assert "delete" in paths["/security/bans/{address}"]

"""The admin API of issue 13: complaint DNC removal needs force+reason, agents show/resume,
numbers show/reset, and their OpenAPI entries."""

from __future__ import annotations

import aiohttp

from gateway.operator.api import AdminServer

from .conftest import T0
from .test_api import AUTH, Clock, clock, http, server  # noqa: F401  (fixtures)

NUMBER = "+8613900000001"


async def test_dnc_agents_numbers_over_http(
    server: AdminServer,  # noqa: F811
    http: aiohttp.ClientSession,  # noqa: F811
    clock: Clock,  # noqa: F811
) -> None:
    """409 without force, 200 with force+reason; resume audited; show and reset a number."""
    url = server.url
    async with http.post(
        f"{url}/complaints", json={"number": NUMBER, "agent": "alice"}, headers=AUTH
    ) as resp:
        assert 200 == resp.status, await resp.text()
    async with http.delete(f"{url}/dnc/{NUMBER}", headers=AUTH) as resp:
        body = await resp.json()
        assert 409 == resp.status, body
        assert "because of a complaint" in body["error"]
    async with http.delete(f"{url}/dnc/{NUMBER}?force=true", headers=AUTH) as resp:
        assert 409 == resp.status
    async with http.delete(
        f"{url}/dnc/{NUMBER}", params={"force": "true", "reason": "withdrawn"}, headers=AUTH
    ) as resp:
        assert (200, True) == (resp.status, (await resp.json())["removed"])

    async with http.get(f"{url}/agents/alice", headers=AUTH) as resp:
        shown = await resp.json()
        assert (200, False, 1) == (resp.status, shown["paused"], shown["complaints_day"])
    async with http.post(
        f"{url}/agents/alice/resume", json={"note": "checked"}, headers=AUTH
    ) as resp:
        assert (200, False) == (resp.status, (await resp.json())["resumed"])

    clock.now = T0 + 60
    async with http.get(f"{url}/numbers/{NUMBER}", headers=AUTH) as resp:
        shown = await resp.json()
        assert 200 == resp.status, shown
        assert ("+86139****0001", 0, 3, True) == (
            shown["number"],
            shown["attempts"]["count"],
            shown["attempts"]["max"],
            shown["callable_now"],
        )
        assert 1 == shown["complaints"]
    async with http.post(f"{url}/numbers/{NUMBER}/reset", json={}, headers=AUTH) as resp:
        assert 400 == resp.status
    async with http.post(
        f"{url}/numbers/{NUMBER}/reset", json={"reason": "bad import"}, headers=AUTH
    ) as resp:
        assert (200, True) == (resp.status, (await resp.json())["reset"])

    async with http.get(f"{url}/openapi.json", headers=AUTH) as resp:
        paths = (await resp.json())["paths"]
    assert {"get"} <= set(paths["/agents/{agent}"])
    assert {"post"} <= set(paths["/numbers/{number}/reset"])
    assert {"force", "reason"} <= {
        p["name"] for p in paths["/dnc/{number}"]["delete"]["parameters"]
    }

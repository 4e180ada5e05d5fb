"""Admin API body limits (issue 15 item 5): size per route as documented, JSON depth; never 5xx."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway.config import Settings
from gateway.operator.api import AdminServer, build_admin_app, start_admin
from gateway.operator.api.limits import (
    IMPORT_BODY_LIMIT,
    JSON_BODY_LIMIT,
    MAX_JSON_DEPTH,
    check_json_depth,
)
from gateway.operator.service import operator_from_settings
from gateway.store import SQLiteStore

from .conftest import T0, TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def server(settings: Settings, store: SQLiteStore) -> AsyncIterator[AdminServer]:
    """The admin API on a free loopback port."""
    op = operator_from_settings(settings, now=T0, store=store)
    app = build_admin_app(settings, store, operator=op, clock=lambda: T0 + 10)
    running = await start_admin(app, "127.0.0.1:0")
    yield running
    await running.stop()
    op.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session."""
    async with aiohttp.ClientSession() as session:
        yield session


async def test_30_mb_import_is_413(server: AdminServer, http: aiohttp.ClientSession) -> None:
    """A 30 MB DNC import (Content-Length or chunked) gets 413 with the limit; nothing imported."""
    line = b"+8613912345678\n"
    body = line * (30 * 1024 * 1024 // len(line))
    async with http.post(f"{server.url}/dnc/import", data=body, headers=AUTH) as resp:
        assert 413 == resp.status
        assert str(IMPORT_BODY_LIMIT) in (await resp.json())["error"]

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(30):
            yield line * (1024 * 1024 // len(line))

    async with http.post(f"{server.url}/consent/import", data=chunks(), headers=AUTH) as resp:
        assert 413 == resp.status
    async with http.get(f"{server.url}/numbers/+8613912345678", headers=AUTH) as resp:
        assert 200 == resp.status
        assert not (await resp.json()).get("dnc")
    # Within the limit the import works.
    async with http.post(f"{server.url}/dnc/import", data=line * 1000, headers=AUTH) as resp:
        assert 200 == resp.status


async def test_json_route_limit(server: AdminServer, http: aiohttp.ClientSession) -> None:
    """A JSON route takes at most JSON_BODY_LIMIT octets: more is 413, not parsed."""
    big = b'{"number": "+8613912345678", "note": "' + b"x" * JSON_BODY_LIMIT + b'"}'
    async with http.post(
        f"{server.url}/dnc",
        data=big,
        headers={**AUTH, "Content-Type": "application/json"},
    ) as resp:
        assert 413 == resp.status


async def test_deeply_nested_json_is_400(server: AdminServer, http: aiohttp.ClientSession) -> None:
    """30,000 nested arrays (a RecursionError for json.loads) and depth 33: 400, never 500."""
    for depth in (30_000, MAX_JSON_DEPTH + 1):
        body = b"[" * depth + b"]" * depth
        for url in ("/dnc", "/consent", "/cards/c1/suspend"):
            async with http.post(
                f"{server.url}{url}",
                data=body,
                headers={**AUTH, "Content-Type": "application/json"},
            ) as resp:
                assert (url, 400) == (url, resp.status)
                assert "error" in await resp.json()
    wrapped = b'{"number": ' + b"[" * 50 + b"]" * 50 + b"}"
    async with http.post(f"{server.url}/dnc", data=wrapped, headers=AUTH) as resp:
        assert 400 == resp.status


async def test_openapi_documents_the_limits(
    server: AdminServer, http: aiohttp.ClientSession
) -> None:
    """Every operation with a body names its limit (x-max-body-bytes) and a 413 answer."""
    async with http.get(f"{server.url}/openapi.json") as resp:
        doc = await resp.json()
    ops = [
        (path, op)
        for path, item in doc["paths"].items()
        for op in item.values()
        if isinstance(op, dict) and "requestBody" in op
    ]
    assert ops
    for path, op in ops:
        assert "413" in op["responses"], path
        # Imports, and the lead list of /leads/check, take big bodies; the rest JSON.
        big = path.endswith("/import") or path == "/leads/check"
        expected = IMPORT_BODY_LIMIT if big else JSON_BODY_LIMIT
        assert expected == op["x-max-body-bytes"], path
    imp = doc["paths"]["/dnc/import"]["post"]["requestBody"]["content"]["text/plain"]["schema"]
    assert IMPORT_BODY_LIMIT == imp["maxLength"]


def test_check_json_depth() -> None:
    """Brackets inside strings (and escaped quotes) do not count."""
    assert check_json_depth(b'{"a": [[1]]}', 3)
    assert not check_json_depth(b'{"a": [[[1]]]}', 3)
    assert check_json_depth(b'{"a": "[[[[[\\"[[[["}', 1)
    assert check_json_depth(b"", 1)

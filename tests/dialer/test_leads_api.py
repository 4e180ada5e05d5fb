"""``POST /leads/check`` on a real socket: token auth, formats, limits, nothing written.

The admin app over a SQLite store with one DNC number; calling hours open
all day; a settable clock.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.config import load_settings
from gateway.operator.api import AdminServer, build_admin_app, start_admin
from gateway.operator.leads import MAX_API_LEADS
from gateway.operator.service import Operator, operator_from_settings
from gateway.store import store_from_settings

T0 = 1_793_592_000.0
TOKEN = "leads-token-8c1f"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

CONFIG = """
[store]
path = "{db}"

[admin]
listen = "127.0.0.1:0"
token = "{token}"

[policy]
default_region = "CN"
consent = "dnc-only"
calling_hours = "00:00-24:00"
"""


@pytest.fixture
def op(tmp_path: Path) -> AsyncIterator[Operator]:
    config = tmp_path / "dialgate.toml"
    config.write_text(CONFIG.format(db=tmp_path / "d.db", token=TOKEN))
    settings = load_settings(config)
    store = store_from_settings(settings)
    store.add_dnc("+8613910000001", T0 - 10, source="test")
    operator = operator_from_settings(settings, now=T0, store=store)
    yield operator  # type: ignore[misc]
    operator.close()
    store.close()


@pytest.fixture
async def server(op: Operator) -> AsyncIterator[AdminServer]:
    app = build_admin_app(op.settings, op.store, operator=op, clock=lambda: T0)
    running = await start_admin(app, "127.0.0.1:0")
    yield running
    await running.stop()


async def _post(
    server: AdminServer, body: str, *, ctype: str = "text/csv", query: str = "", auth: bool = True
) -> tuple[int, str, str]:
    headers = {"Content-Type": ctype, **(AUTH if auth else {})}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{server.url}/leads/check{query}", data=body, headers=headers) as resp,
    ):
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def test_needs_the_admin_token(server: AdminServer) -> None:
    status, _, body = await _post(server, "number\n13910000002\n", auth=False)
    assert 401 == status and "13910000002" not in body


async def test_csv_in_ndjson_out_with_summary(server: AdminServer, op: Operator) -> None:
    status, ctype, body = await _post(
        server, "lead_id,phone\nA,13910000001\nB,13910000002\nC,12345\n"
    )
    assert 200 == status and ctype.startswith("application/x-ndjson")
    *rows, last = [json.loads(line) for line in body.splitlines()]
    assert [
        ("A", False, "dnc", 403),
        ("B", True, None, None),
        ("C", False, "address-incomplete", 484),
    ] == [(r["lead_id"], r["callable"], r["reason"], r["sip_code"]) for r in rows]
    assert {
        "rows": 3,
        "callable": 1,
        "refused": 2,
        "by_reason": {"address-incomplete": 1, "dnc": 1},
    } == last["summary"]
    # Nothing was written: no attempt counted for the callable number.
    assert [] == op.store.attempts("+8613910000002", 0.0)


async def test_ndjson_in_csv_out(server: AdminServer) -> None:
    body = '{"number": "+8613910000002", "id": 7}\n"13910000001"\n{"name": "x"}\n'
    status, ctype, text = await _post(
        server, body, ctype="application/x-ndjson", query="?format=csv"
    )
    assert 200 == status and ctype.startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [("7", "true", ""), ("", "false", "dnc"), ("", "false", "address-incomplete")] == [
        (r["lead_id"], r["callable"], r["reason"]) for r in rows
    ]


async def test_bad_input_is_400_and_too_many_is_413(server: AdminServer) -> None:
    status, _, body = await _post(server, "name,city\nx,y\n")
    assert 400 == status and "number column" in body
    status, _, _ = await _post(server, "number\n1\n", query="?format=xml")
    assert 400 == status
    many = "number\n" + "1\n" * (MAX_API_LEADS + 1)
    status, _, body = await _post(server, many)
    assert 413 == status and str(MAX_API_LEADS) in body

"""Pool capacity for pacing, on a fake clock: matches the quotas, drops to 0 with the cause.

Two cards of pool ``main`` (carrier in Asia/Shanghai, night 23:00-07:00 there)
with 3 calls per minute, 5 per hour, 2 lines each. Calls are reserved
through the real SQLite ledger (the call path's write-ahead counting); the
capacity is read through the admin API's ``GET /pools/main/capacity`` on a
real socket, the clock moved by hand.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.cards.capacity import manager_pool_capacities
from gateway.config import load_settings
from gateway.operator.api import AdminServer, build_admin_app, start_admin
from gateway.operator.service import Operator, operator_from_settings
from gateway.store import SQLiteStore, store_from_settings

#: 2026-11-02 04:00:00 UTC = 12:00 in Shanghai (day); 16:00 UTC = 00:00 there (night).
NOON_SHANGHAI = 1_793_592_000.0
MIDNIGHT_SHANGHAI = NOON_SHANGHAI + 12 * 3600

CONFIG = """
[store]
path = "{db}"

[policy]
default_region = "CN"
consent = "dnc-only"

[[carriers]]
name = "carrier-a"
address = "udp:127.0.0.1:5070"
timezone = "Asia/Shanghai"

[quota_profiles.q]
calls_per_minute = 3
calls_per_hour = 5
calls_per_day = 100
concurrent = 2
night_window = "23:00-07:00"

[[cards]]
id = "c1"
carrier = "carrier-a"
number = "+8613800000001"
username = "c1"
password = "card1-secret"
pool = "main"
priority = 1
quota = "q"

[[cards]]
id = "c2"
carrier = "carrier-a"
number = "+8613800000002"
username = "c2"
password = "card2-secret"
pool = "main"
priority = 2
quota = "q"
"""


class Clock:
    """A clock the test sets."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(NOON_SHANGHAI)


@pytest.fixture
def op(tmp_path: Path) -> AsyncIterator[Operator]:
    config = tmp_path / "dialgate.toml"
    config.write_text(CONFIG.format(db=tmp_path / "d.db"))
    settings = load_settings(config)
    store = store_from_settings(settings)
    operator = operator_from_settings(settings, now=NOON_SHANGHAI, store=store)
    yield operator  # type: ignore[misc]
    operator.close()
    store.close()


@pytest.fixture
async def server(op: Operator, clock: Clock) -> AsyncIterator[AdminServer]:
    app = build_admin_app(op.settings, op.store, operator=op, clock=clock)
    running = await start_admin(app, "127.0.0.1:0")
    yield running
    await running.stop()


async def capacity(server: AdminServer, pool: str = "main") -> tuple[int, dict]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{server.url}/pools/{pool}/capacity") as resp,
    ):
        return resp.status, await resp.json()


def reserve(store: SQLiteStore, card: str, n: int, at: float, tag: str) -> None:
    for i in range(n):
        store.reserve(card, f"{tag}-{i}", f"+861391000{i:04d}", at + i)


async def test_capacity_matches_the_quotas(server: AdminServer, op: Operator, clock: Clock) -> None:
    status, body = await capacity(server)
    assert 200 == status
    # Idle: each card 2 lines now (concurrent), 3 starts in the next minute (per minute).
    assert (1, "main", 4, 6) == (body["v"], body["pool"], body["now"], body["next_minute"])
    assert [None, None] == [c["cause"] for c in body["cards"]]

    # c1 starts 2 calls (both lines busy): nothing now, and its minute holds 1 more start.
    reserve(op.store, "c1", 2, NOON_SHANGHAI, "a")
    clock.now = NOON_SHANGHAI + 5
    _, body = await capacity(server)
    c1, c2 = body["cards"]
    assert (0, 3) == (c1["now"], c1["next_minute"])
    assert c1["cause"].startswith("c1 concurrent"), c1
    assert (2, 3) == (c2["now"], c2["next_minute"])
    assert (2, 6) == (body["now"], body["next_minute"])

    # The calls end; a minute later c1 has 5 - 2 = 3 left in the hour: lines (2) bound now.
    op.store.finish("a-0", NOON_SHANGHAI + 30, answered=True, talk_seconds=20)
    op.store.finish("a-1", NOON_SHANGHAI + 30, answered=True, talk_seconds=20)
    clock.now = NOON_SHANGHAI + 120
    _, body = await capacity(server)
    c1 = body["cards"][0]
    assert (2, 3, None) == (c1["now"], c1["next_minute"], c1["cause"])

    # Three more starts spread out: the hour (5) is spent, nothing before the hour slides.
    for i, t in enumerate((200, 300, 400)):
        op.store.reserve("c1", f"b-{i}", f"+86139200000{i}", NOON_SHANGHAI + t)
        op.store.finish(f"b-{i}", NOON_SHANGHAI + t + 10, answered=True, talk_seconds=5)
    clock.now = NOON_SHANGHAI + 500
    _, body = await capacity(server)
    c1 = body["cards"][0]
    assert (0, 0) == (c1["now"], c1["next_minute"])
    assert c1["cause"].startswith("c1 calls_per_hour"), c1
    assert c1["frees_at"] is not None
    assert (2, 3) == (body["now"], body["next_minute"])  # c2 alone

    # In the last minute of the hour window the first starts slide out: room next minute.
    clock.now = NOON_SHANGHAI + 3600 - 30
    _, body = await capacity(server)
    c1 = body["cards"][0]
    assert 0 == c1["now"] and 2 == c1["next_minute"], c1


async def test_capacity_drops_to_zero_when_every_card_is_suspended(
    server: AdminServer, op: Operator, clock: Clock
) -> None:
    for card in ("c1", "c2"):
        op.suspend(card, actor="test", now=NOON_SHANGHAI, reason="violation")
    status, body = await capacity(server)
    assert 200 == status
    assert (0, 0) == (body["now"], body["next_minute"])
    assert ["c1 suspended", "c2 suspended"] == [
        c["cause"].split(" (")[0].split(":")[0] for c in body["cards"]
    ], body["cards"]
    assert ["suspended", "suspended"] == [c["state"] for c in body["cards"]]


async def test_capacity_drops_to_zero_in_the_night_window(
    server: AdminServer, op: Operator, clock: Clock
) -> None:
    clock.now = MIDNIGHT_SHANGHAI
    _, body = await capacity(server)
    assert (0, 0) == (body["now"], body["next_minute"])
    assert ["c1 night_window until 07:00", "c2 night_window until 07:00"] == [
        c["cause"] for c in body["cards"]
    ]
    # One minute before the night ends the next minute has room again.
    clock.now = MIDNIGHT_SHANGHAI + 7 * 3600 - 30
    _, body = await capacity(server)
    assert (0, 6) == (body["now"], body["next_minute"])


async def test_unknown_pool_is_404_and_every_pool_is_computed(
    server: AdminServer, op: Operator
) -> None:
    status, body = await capacity(server, "nope")
    assert 404 == status and "nope" in body["error"]
    pools = manager_pool_capacities(op.manager, op.snapshot, NOON_SHANGHAI)
    assert ["main"] == list(pools)
    assert (4, 6) == (pools["main"].now, pools["main"].next_minute)

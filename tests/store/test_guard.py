"""The store guard (issue 19): a locked or full store is refused at once, not waited on.

Real SQLite files, a real second connection holding the lock; no mocks.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from gateway.store import SQLiteStore, StoreUnavailable

T0 = 1_790_000_000.0


def wait_recovered(store: SQLiteStore, timeout: float = 3.0) -> float:
    """Seconds until the store's guard closed by itself; fails past ``timeout``."""
    start = time.monotonic()
    while not store.guard.healthy:
        assert time.monotonic() - start < timeout, f"guard still open: {store.guard.status()}"
        time.sleep(0.01)
    return time.monotonic() - start


def test_after_one_locked_write_every_write_is_refused_at_once_and_reads_still_work(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "gw.db", busy_timeout_ms=200)
    store.add_dnc("+8613800000000", T0)
    other = sqlite3.connect(tmp_path / "gw.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        start = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.add_dnc("+8613800000001", T0)  # waits the busy timeout once
        first = time.monotonic() - start
        assert 0.15 < first < 1.0
        assert not store.guard.healthy
        assert "unavailable" == store.guard.status()["state"]
        start = time.monotonic()
        for n in range(50):
            with pytest.raises(StoreUnavailable) as info:
                store.reserve("c1", f"call-{n}", "+8613811112222", T0)
            assert 503 == info.value.status_code
            assert info.value.retry_after > 0
        assert time.monotonic() - start < 0.05  # 50 refusals, no waiting
        assert store.is_dnc("+8613800000000")  # WAL: reads are not blocked by the lock
        time.sleep(0.6)
        assert not store.guard.healthy  # the probe keeps failing while locked
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert wait_recovered(store) < 1.5
    store.reserve("c1", "call-x", "+8613811112222", T0)
    assert 1 == store.card_usage("c1", T0).in_use
    assert 1 == store.guard.trips
    store.close()


async def test_recovery_callbacks_run_on_the_event_loop(tmp_path: Path) -> None:
    import asyncio

    store = SQLiteStore(tmp_path / "gw.db", busy_timeout_ms=20)
    recovered = asyncio.Event()
    store.guard.on_recover(recovered.set)
    other = sqlite3.connect(tmp_path / "gw.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    with pytest.raises(StoreUnavailable):
        store.add_dnc("+8613800000001", T0)
    other.execute("ROLLBACK")
    other.close()
    await asyncio.wait_for(recovered.wait(), 3.0)
    assert store.guard.healthy
    store.close()


def test_integrity_errors_and_a_closed_store_do_not_trip_the_guard(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "gw.db")
    store.close()
    with pytest.raises(StoreUnavailable):
        store.add_dnc("+8613800000001", T0)
    assert store.guard.healthy


async def test_admin_health_answers_503_while_a_store_guard_is_open(tmp_path: Path) -> None:
    import asyncio

    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from gateway.operator.api.routes import STORE_GUARDS_KEY, add_routes

    store = SQLiteStore(tmp_path / "gw.db", busy_timeout_ms=20)
    app = web.Application()
    add_routes(app)
    app[STORE_GUARDS_KEY] = [store.guard]
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/health")
        assert 200 == resp.status
        assert "ok" == (await resp.json())["store"]["state"]
        other = sqlite3.connect(tmp_path / "gw.db", isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreUnavailable):
            store.add_dnc("+8613800000001", T0)
        resp = await client.get("/health")
        body = await resp.json()
        assert (503, "degraded", "unavailable") == (
            resp.status,
            body["status"],
            body["store"]["state"],
        )
        other.execute("ROLLBACK")
        other.close()
        deadline = time.monotonic() + 3.0
        while (await client.get("/health")).status != 200:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    store.close()

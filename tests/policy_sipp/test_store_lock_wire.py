"""A locked SQLite store never stalls the SIP layer (issue 19, item 2): real processes.

``dialgate run`` (subprocess) between the simulator's softphone (alice) and a
SIPp carrier. Another process holds SQLite's exclusive lock on the gateway's
database for 10 s. Meanwhile INVITEs and REGISTERs keep coming: every INVITE
gets its final answer within 2 s (``503 store-unavailable`` + Retry-After
while locked), REGISTER challenges and answers stay prompt, ``/health``
answers 503 during the lock and 200 again within ~2 s after. Calls succeed
again afterwards, and no answered call lacks its CDR (those that ended during
the lock were spooled and flushed on recovery).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from simulator.agents import Softphone
from simulator.sipkit import CallResult
from simulator.testkit import stop_pid
from tests.policy_sipp.conftest import (
    admin_get,
    admin_url,
    gateway_toml,
    start_carrier,
    start_dialgate,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LOCK_SECONDS = 10.0
ANSWER_BOUND = 2.0  # every INVITE's final answer
TALK = 0.2
BURST = 4
QUOTA = {"calls_per_minute": 1000, "calls_per_hour": 1000, "calls_per_day": 1000, "concurrent": 100}

_LOCKER = (
    "import sqlite3, sys, time\n"
    "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
    "db.execute('BEGIN EXCLUSIVE')\n"
    "print('locked', flush=True)\n"
    "time.sleep(float(sys.argv[2]))\n"
    "db.execute('ROLLBACK')\n"
)


def health_status(url: str) -> int:
    """HTTP status of ``GET /health`` (loopback, bounded)."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=3) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


async def timed_call(phone: Softphone, number: str, talk: float) -> tuple[CallResult, float]:
    """One call; seconds until its final answer (the talk time taken off an answered call)."""
    start = time.monotonic()
    result = await phone.call(number, talk_seconds=talk)
    elapsed = time.monotonic() - start
    return result, elapsed - (talk if result.answered else 0.0)


async def test_a_locked_store_refuses_at_once_and_recovers_by_itself(
    tmp_path: Path, processes: list
) -> None:
    carrier = start_carrier(tmp_path / "carrier")
    processes.append(carrier)
    gw = start_dialgate(tmp_path, gateway_toml(carrier.port, quota=QUOTA))
    processes.append(gw)
    url = admin_url(gw)
    db = tmp_path / "dialgate.db"
    phone = Softphone("alice", "s3cret", gw.addresses["udp"])
    await phone.start()
    try:
        assert 200 == (await phone.register()).status
        assert 200 == health_status(url)
        numbers = iter(f"1391000{i:04d}" for i in range(10_000))

        before = [await timed_call(phone, next(numbers), TALK) for _ in range(2)]
        assert [200, 200] == [r.status for r, _ in before]
        # Calls up when the lock starts end during it: their finishes and CDRs wait.
        spanning = [asyncio.ensure_future(timed_call(phone, next(numbers), 3.0)) for _ in range(2)]
        await asyncio.sleep(0.5)

        locker = subprocess.Popen(
            [sys.executable, "-c", _LOCKER, str(db), str(LOCK_SECONDS)],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        processes.append(locker)
        assert locker.stdout is not None
        assert b"locked" in await asyncio.to_thread(locker.stdout.readline)
        lock_start = time.monotonic()

        during: list[asyncio.Future[tuple[CallResult, float]]] = []
        registers: list[tuple[int, float]] = []
        health_during: list[int] = []
        while locker.poll() is None and time.monotonic() - lock_start < LOCK_SECONDS - 0.5:
            # A burst each round (~13 INVITEs/s): a store that made each one wait
            # its busy timeout on the event loop would fall seconds behind.
            for _ in range(BURST):
                during.append(asyncio.ensure_future(timed_call(phone, next(numbers), TALK)))
            started = time.monotonic()
            status = (await phone.register()).status
            registers.append((status, time.monotonic() - started))
            if time.monotonic() - lock_start > 1.0:
                health_during.append(await asyncio.to_thread(health_status, url))
            await asyncio.sleep(0.3)
        results = [await f for f in during]
        spanned = [await f for f in spanning]
        assert locker.wait(LOCK_SECONDS + 5) == 0
        lock_end = time.monotonic()

        recovered_after = None
        while time.monotonic() - lock_end < 5.0:
            if await asyncio.to_thread(health_status, url) == 200:
                recovered_after = time.monotonic() - lock_end
                break
            await asyncio.sleep(0.05)

        slowest = max(t for _, t in results)
        statuses = sorted({r.status for r, _ in results if r.status is not None})
        print(
            f"during the lock: {len(results)} INVITEs, statuses {statuses}, slowest final "
            f"{slowest:.3f}s, median {sorted(t for _, t in results)[len(results) // 2]:.3f}s; "
            f"{len(registers)} REGISTERs, slowest {max(t for _, t in registers):.3f}s; "
            f"/health {health_during}; /health 200 again {recovered_after}s after the lock"
        )
        assert len(results) >= 10 * BURST
        assert slowest < ANSWER_BOUND, [(r.status, round(t, 3)) for r, t in results]
        for result, _ in results:
            assert 503 == result.status, result
            assert "store-unavailable" == result.reason_text
            assert result.retry_after is not None and result.retry_after > 0
        assert all(s == 200 and t < 1.0 for s, t in registers), registers
        assert health_during and all(s == 503 for s in health_during), health_during
        assert recovered_after is not None and recovered_after < 2.5
        assert [True, True] == [r.answered for r, _ in spanned]

        after = [await timed_call(phone, next(numbers), TALK) for _ in range(2)]
        assert [200, 200] == [r.status for r, _ in after]

        # No answered call without its CDR (spooled ones flushed after recovery).
        answered = {r.call_id for r, _ in before + spanned + after if r.answered}
        deadline = time.monotonic() + 10.0
        stored: set[str] = set()
        while time.monotonic() < deadline:
            cdrs = admin_get(f"{url}/cdrs?limit=1000")["cdrs"]
            stored = {c["call_id"] for c in cdrs}
            if answered <= stored and len(stored) >= len(answered) + len(results):
                break
            await asyncio.sleep(0.1)
        assert answered <= stored, answered - stored
        assert len(stored) >= len(answered) + len(results)  # the refused calls' CDRs too
    finally:
        await phone.close()
        for p in processes:
            if isinstance(p, subprocess.Popen):
                stop_pid(p)

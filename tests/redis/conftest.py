"""Fixtures: a real redis-server on a free 127.0.0.1 port, started and stopped by PID.

``redis_server`` is shared by the session (each test gets its own key prefix,
so tests never see each other's keys); ``private_redis`` is a server of the
test's own, for tests that kill, freeze or restart it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.store import SQLiteStore, StoredCard
from gateway.store.redis import RedisStore, connect
from simulator.testkit import free_port

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z, a fixed "now"
CARRIERS = {"carrier-a": "UTC", "carrier-b": "Asia/Shanghai"}
CARDS = {"c1": "carrier-a", "c2": "carrier-a", "c3": "carrier-b"}

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")


class RedisServer:
    """One redis-server process (no persistence unless ``aof``); killed, frozen, restarted by PID."""

    def __init__(self, workdir: Path, port: int | None = None, *, aof: bool = False) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.aof = aof
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start on ``self.port`` and wait until it answers PING."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.aof else "no",
                "--appendfsync",
                "always",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer PING")
            time.sleep(0.01)

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the server's PID."""
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the server and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM (SIGCONT first, in case it is frozen) and wait; SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGCONT)
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server shared by the session's tests."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (to kill, freeze or restart)."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:12]}"


def make_store(
    url: str, prefix: str, *, node: str = "gw1", timeout: float = 1.0, **kwargs: Any
) -> RedisStore:
    """A RedisStore over ``url`` knowing the test cards and carriers."""
    return RedisStore(
        connect(url, timeout=timeout),
        node=node,
        prefix=prefix,
        card_carriers=CARDS,
        carrier_timezones=CARRIERS,
        **kwargs,
    )


@pytest.fixture
def rstore(redis_server: RedisServer, prefix: str) -> Iterator[RedisStore]:
    """A RedisStore on the shared server, under this test's prefix."""
    store = make_store(redis_server.url, prefix)
    yield store
    store.close()


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[SQLiteStore]:
    """A SQLite store with the same cards and carrier zones (the reference)."""
    s = SQLiteStore(tmp_path / "ref.db", carrier_timezones=CARRIERS)
    for i, (card, carrier) in enumerate(CARDS.items()):
        s.upsert_card(StoredCard(card, carrier, f"+861380000000{i}", "main", i, since=T0))
    yield s
    s.close()

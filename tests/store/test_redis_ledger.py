"""RedisLedger against a real redis-server: same meaning as SQLite, atomic across instances."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

redis = pytest.importorskip("redis")

from gateway.config import load_settings  # noqa: E402
from gateway.store import (  # noqa: E402
    QuotaExceeded,
    ReservationError,
    SQLiteStore,
    StoreUnavailable,
    UsageLedger,
    ledger_from_settings,
    store_from_settings,
)
from gateway.store.redis_ledger import RedisLedger, connect  # noqa: E402
from policies.quotas import CardUsageView, QuotaLimit, QuotaProfile  # noqa: E402

from .conftest import T0  # noqa: E402

A = "+8613811110001"
B = "+8613811110002"
pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")


@pytest.fixture
def redis_socket(tmp_path: Path) -> Iterator[Path]:
    """A throw-away redis-server listening on a unix socket only (no persistence)."""
    sock = tmp_path / "redis.sock"
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.01)
        yield sock
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _ledger(sock: Path, node: str = "gw1") -> RedisLedger:
    client = connect(f"unix://{sock}", timeout=2.0)
    return RedisLedger(
        client,
        node=node,
        card_carriers={"c1": "carrier-a", "c2": "carrier-a"},
        carrier_timezones={"carrier-a": "UTC"},
    )


def test_implements_the_protocols(redis_socket: Path) -> None:
    """RedisLedger is a UsageLedger and a policies CardUsageView."""
    ledger: UsageLedger = _ledger(redis_socket)
    assert isinstance(ledger, CardUsageView)


def test_same_usage_as_sqlite_for_the_same_calls(redis_socket: Path, store: SQLiteStore) -> None:
    """A mixed sequence of reserve/release/finish gives identical CardUsage in both stores."""
    ledger = _ledger(redis_socket)
    for target in (store, ledger):
        target.reserve("c1", "k1", A, T0)
        target.finish("k1", T0 + 65, answered=True, talk_seconds=60)
        target.reserve("c1", "k2", B, T0 + 100)
        target.release("k2", T0 + 101)
        target.reserve("c2", "k2", B, T0 + 101)
        target.finish("k2", T0 + 110, answered=True, talk_seconds=3)
        target.reserve("c1", "k3", B, T0 + 200)
    for card in ("c1", "c2"):
        assert store.card_usage(card, T0 + 300) == ledger.card_usage(card, T0 + 300)
    assert [("k3", "c1")] == ledger.open_reservations()


def test_duplicate_reservations_are_refused(redis_socket: Path) -> None:
    """One open reservation per call, and never the same card twice for a call."""
    ledger = _ledger(redis_socket)
    ledger.reserve("c1", "k1", A, T0)
    with pytest.raises(ReservationError):
        ledger.reserve("c2", "k1", A, T0)
    ledger.release("k1", T0 + 1)
    with pytest.raises(ReservationError):
        ledger.reserve("c1", "k1", A, T0 + 2)
    ledger.reserve("c2", "k1", A, T0 + 2)


def test_profile_check_is_atomic_across_instances(redis_socket: Path) -> None:
    """Eight threads on two gateway instances race for a one-call card: one wins."""
    profile = QuotaProfile(concurrent=1)
    wins: list[str] = []
    refused: list[QuotaLimit] = []
    lock = threading.Lock()

    def racer(n: int) -> None:
        ledger = _ledger(redis_socket, node=f"gw{n % 2}")
        try:
            ledger.reserve("c1", f"k{n}", A, T0 + n * 0.001, profile=profile)
        except QuotaExceeded as exc:
            with lock:
                refused.append(exc.exhausted.limit)
            return
        with lock:
            wins.append(f"k{n}")

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert 1 == len(wins)
    assert [QuotaLimit.CONCURRENT] * 7 == refused
    assert 1 == _ledger(redis_socket).card_usage("c1", T0 + 1).in_use


def test_recover_touches_only_its_own_node(redis_socket: Path) -> None:
    """A restarted node orphans its own open reservations, not another node's."""
    gw1, gw2 = _ledger(redis_socket, "gw1"), _ledger(redis_socket, "gw2")
    gw1.reserve("c1", "mine", A, T0)
    gw2.reserve("c2", "theirs", B, T0)
    assert 1 == gw1.recover(T0 + 100)
    assert [("theirs", "c2")] == gw1.open_reservations()
    usage = gw1.card_usage("c1", T0 + 101)
    assert ((T0,), 0) == (usage.call_starts, usage.in_use)


def test_prune_drops_old_closed_starts(redis_socket: Path) -> None:
    """Old finished starts go, open reservations stay."""
    ledger = _ledger(redis_socket)
    ledger.reserve("c1", "old", A, T0 - 90 * 86400)
    ledger.finish("old", T0 - 90 * 86400 + 10, answered=False)
    ledger.reserve("c2", "stuck", B, T0 - 90 * 86400)
    assert 1 == ledger.prune(T0 - 30 * 86400)
    assert [("stuck", "c2")] == ledger.open_reservations()


def test_unreachable_redis_fails_closed(tmp_path: Path) -> None:
    """No server behind the socket: StoreUnavailable (→ 503 store-unavailable), at once."""
    started = time.monotonic()
    ledger = RedisLedger(connect(f"unix://{tmp_path / 'none.sock'}"), node="gw1")
    with pytest.raises(StoreUnavailable):
        ledger.reserve("c1", "k1", A, T0)
    with pytest.raises(StoreUnavailable):
        ledger.card_usage("c1", T0)
    assert time.monotonic() - started < 2.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ledger_from_settings_picks_redis_when_configured(tmp_path: Path) -> None:
    """``[store] redis`` set: reservations go to Redis; unset: to the SQLite store."""
    port = _free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        cfg = tmp_path / "dialgate.toml"
        base = (
            '[[carriers]]\nname = "carrier-a"\naddress = "udp:127.0.0.1:5070"\n'
            '[[cards]]\nid = "c1"\ncarrier = "carrier-a"\nnumber = "+8613800000001"\n'
            'password = "x"\n'
        )
        cfg.write_text(f'[store]\npath = "a.db"\nredis = "redis://127.0.0.1:{port}/2"\n{base}')
        settings = load_settings(cfg)
        store = store_from_settings(settings, base_dir=tmp_path)
        ledger = ledger_from_settings(settings, store, node="gw1")
        assert isinstance(ledger, RedisLedger)
        deadline = time.monotonic() + 10
        while True:
            try:
                ledger.reserve("c1", "k1", A, T0)
                break
            except StoreUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert 1 == ledger.card_usage("c1", T0).in_use
        assert 0 == store.card_usage("c1", T0).in_use

        cfg.write_text(f'[store]\npath = "a.db"\n{base}')
        plain = load_settings(cfg)
        assert store is ledger_from_settings(plain, store, node="gw1")
        store.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)

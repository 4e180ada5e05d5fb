"""``[store] redis`` → RedisStore: URL, carrier days, rehydration source."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_settings
from gateway.store import SQLiteStore, StoreUnavailable, store_from_settings
from gateway.store.redis import MirroredLedger, RedisStore, from_settings, ledger_from_settings
from policies.quotas import QuotaProfile

from .conftest import T0, RedisServer, free_port

BASE = (
    '[policy]\nconsent = "dnc-only"\n'
    '[[carriers]]\nname = "carrier-b"\naddress = "udp:127.0.0.1:5070"\n'
    'timezone = "Asia/Shanghai"\n'
    '[[cards]]\nid = "c1"\ncarrier = "carrier-b"\nnumber = "+8613800000001"\npassword = "x"\n'
)


def test_store_redis_builds_a_redis_store(tmp_path: Path, redis_server: RedisServer) -> None:
    """The configured URL and db are used; card c1 gets its carrier's Shanghai day."""
    cfg = tmp_path / "dialgate.toml"
    cfg.write_text(
        f'[store]\npath = "a.db"\nredis = "redis://127.0.0.1:{redis_server.port}/3"\n{BASE}'
    )
    settings = load_settings(cfg)
    sqlite = store_from_settings(settings, base_dir=tmp_path)
    shared = from_settings(settings, node="gw1", store=sqlite, prefix="cfgtest")
    assert isinstance(shared, RedisStore)
    assert "Asia/Shanghai" == shared.timezone("c1")
    assert shared.facts is not None
    shared.reserve("c1", "k1", "+8613811110001", T0, profile=QuotaProfile())
    assert 3 == shared.client.connection_pool.connection_kwargs["db"]
    assert 1 == shared.card_usage("c1", T0).in_use
    sqlite.close()


def test_unset_redis_is_an_error_and_a_dead_one_fails_closed(tmp_path: Path) -> None:
    """No ``[store] redis``: ValueError; a URL nobody listens on: StoreUnavailable on use."""
    cfg = tmp_path / "dialgate.toml"
    cfg.write_text(f'[store]\npath = "a.db"\n{BASE}')
    with pytest.raises(ValueError):
        from_settings(load_settings(cfg), node="gw1")
    cfg.write_text(
        f'[store]\npath = "a.db"\nredis = "redis://u:s3cret@127.0.0.1:{free_port()}/0"\n{BASE}'
    )
    shared = from_settings(load_settings(cfg), node="gw1")
    with pytest.raises(StoreUnavailable) as exc:
        shared.reserve("c1", "k1", "+8613811110001", T0, profile=QuotaProfile())
    assert "s3cret" not in str(exc.value)


def test_sqlite_store_is_untouched_by_redis_reservations(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Reservations go to Redis only; the SQLite store is the rehydration source, not a mirror."""
    sqlite = SQLiteStore(tmp_path / "b.db")
    cfg = tmp_path / "dialgate.toml"
    cfg.write_text(f'[store]\nredis = "redis://127.0.0.1:{redis_server.port}/0"\n{BASE}')
    shared = from_settings(load_settings(cfg), node="gw1", store=sqlite, prefix="cfgtest2")
    shared.reserve("c1", "k1", "+8613811110001", T0)
    assert 0 == sqlite.card_usage("c1", T0).in_use
    sqlite.close()


def test_ledger_from_settings_mirrors_when_redis_is_set(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """``[store] redis`` set: a MirroredLedger over both stores; unset: the SQLite store."""
    cfg = tmp_path / "dialgate.toml"
    cfg.write_text(f'[store]\nredis = "redis://127.0.0.1:{redis_server.port}/0"\n{BASE}')
    sqlite = SQLiteStore(tmp_path / "c.db")
    ledger = ledger_from_settings(load_settings(cfg), sqlite, node="gw1")
    assert isinstance(ledger, MirroredLedger)
    assert sqlite is ledger.store
    cfg.write_text(BASE)
    assert sqlite is ledger_from_settings(load_settings(cfg), sqlite, node="gw1")
    sqlite.close()


def test_gateway_store_ledger_from_settings_is_the_mirrored_ledger(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """``gateway.store.ledger_from_settings`` (what the call path uses) wires redis_store.

    With ``[store] redis`` a reservation lands in Redis and in the SQLite file
    (the durable record the frequency and agent policies read); without it
    the SQLite store itself is the ledger.
    """
    from gateway.store import ledger_from_settings as store_ledger

    cfg = tmp_path / "dialgate.toml"
    cfg.write_text(
        f'[store]\npath = "a.db"\nredis = "redis://127.0.0.1:{redis_server.port}/2"\n{BASE}'
    )
    settings = load_settings(cfg)
    sqlite = store_from_settings(settings, base_dir=tmp_path)
    ledger = store_ledger(settings, sqlite, node="gw-settings")
    assert isinstance(ledger, MirroredLedger)
    assert (2, "gw-settings") == (
        ledger.shared.client.connection_pool.connection_kwargs["db"],
        ledger.shared.node,
    )
    ledger.shared.prefix = f"cfg{free_port()}"  # keys of this test only
    ledger.reserve("c1", "k1", "+8613811110001", T0, profile=QuotaProfile())
    assert 1 == ledger.card_usage("c1", T0).in_use
    assert [("k1", "c1")] == sqlite.open_reservations()
    assert [("k1", "c1")] == ledger.shared.open_reservations()
    ledger.close()
    cfg.write_text(f'[store]\npath = "a.db"\n{BASE}')
    assert sqlite is store_ledger(load_settings(cfg), sqlite, node="gw1")
    sqlite.close()


def test_node_name_is_the_mqtt_node_else_host_and_listeners(tmp_path: Path) -> None:
    """Two instances on one host differ by their SIP listeners when no MQTT node is set."""
    import socket

    from gateway.store.redis import node_name

    cfg = tmp_path / "dialgate.toml"
    cfg.write_text(f'[sip]\nlisten = ["udp:127.0.0.1:5060"]\n{BASE}')
    assert f"{socket.gethostname()}/udp:127.0.0.1:5060" == node_name(load_settings(cfg))
    cfg.write_text(f'[sip]\nlisten = ["udp:127.0.0.1:5062"]\n{BASE}')
    assert f"{socket.gethostname()}/udp:127.0.0.1:5062" == node_name(load_settings(cfg))
    cfg.write_text(f'[mqtt]\nnode = "gw7"\n{BASE}')
    assert "gw7" == node_name(load_settings(cfg))


def test_unix_socket_url_works_and_a_missing_socket_fails_closed_at_once(
    tmp_path: Path,
) -> None:
    """``unix:///path`` reaches a socket-only server; no server behind it: 503 quickly."""
    import subprocess
    import time

    from .conftest import make_store

    sock = tmp_path / "redis.sock"
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", str(sock), "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert time.monotonic() < deadline and proc.poll() is None, "redis-server did not start"
            time.sleep(0.01)
        store = make_store(f"unix://{sock}", "unix")
        store.reserve("c1", "k1", "+8613811110001", T0, profile=QuotaProfile())
        assert 1 == store.card_usage("c1", T0).in_use
        store.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    started = time.monotonic()
    dead = make_store(f"unix://{tmp_path / 'none.sock'}", "unix", timeout=0.25)
    with pytest.raises(StoreUnavailable):
        dead.reserve("c1", "k1", "+8613811110001", T0)
    with pytest.raises(StoreUnavailable):
        dead.card_usage("c1", T0)
    assert time.monotonic() - started < 2.0

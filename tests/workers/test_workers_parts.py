"""The parts of ``dialgate run --workers N`` without SIPp: which rows a restart takes, the
worker's role on its command line, the ``[server]`` keys, the private transports of the
endpoint, bindings read from the store, the supervisor's ports and its giving up."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.callpath.registrar import Registrar
from gateway.cli import workers as supervisor
from gateway.config import ConfigError, Settings, load_settings
from gateway.store import SQLiteStore, StoreUnavailable
from gateway.store.records import CallDialogs, StoredRegistration
from gateway.transport import UDPTransport
from gateway.transport.endpoint import SipEndpoint
from gateway.transport.tcp import TCPTransport
from gateway.workers import WorkerRole
from simulator.testkit import free_udp_port

NOW = 1_800_000_000.0


def _open(db: Path, owner: str, *, siblings: tuple[str, ...] = (), sweep: bool = True) -> Any:
    store = SQLiteStore(db)
    store.owner, store.siblings, store.sweep = owner, siblings, sweep
    return store


def _call(store: SQLiteStore, call_id: str) -> None:
    store.reserve("c1", call_id, "+8613900000000", NOW)
    store.save_call_dialogs(
        CallDialogs(
            key=call_id,
            call_id=call_id,
            card="c1",
            callee="+8613900000000",
            attempt_at=NOW,
            answer_at=None,
            a_leg=None,
            b_leg=None,
        )
    )


def _open_reservations(db: Path) -> set[str]:
    with SQLiteStore(db) as store:
        return {call_id for call_id, _ in store.open_reservations()}


@pytest.fixture
def rows(tmp_path: Path) -> Path:
    """One file with a call in progress of a single process (''), of w0, w1 and w2 (a
    worker of an earlier, larger set)."""
    db = tmp_path / "gw.db"
    for owner in ("", "w0", "w1", "w2"):
        with _open(db, owner) as store:
            _call(store, f"call-{owner or 'alone'}")
    return db


def test_a_restarted_worker_takes_only_its_own_rows(rows: Path) -> None:
    """Worker 1 restarted beside a live worker 0: its call only, nobody else's."""
    with _open(rows, "w1", siblings=("w0",), sweep=False) as store:
        assert ["call-w1"] == [r.call_id for r in store.call_dialogs()]
        assert 1 == store.recover(NOW + 1)
    assert {"call-alone", "call-w0", "call-w2"} == _open_reservations(rows)


def test_worker_0_at_the_first_start_sweeps_all_but_the_live_siblings(rows: Path) -> None:
    """A new set of two: worker 0 ends the single process's, its own and the departed
    w2's calls; worker 1's are left to worker 1."""
    with _open(rows, "w0", siblings=("w1",), sweep=True) as store:
        assert {"call-alone", "call-w0", "call-w2"} == {r.call_id for r in store.call_dialogs()}
        assert 3 == store.recover(NOW + 1)
    assert {"call-w1"} == _open_reservations(rows)


def test_a_single_process_takes_every_row(rows: Path) -> None:
    """One process (the default): every row is a dead process's, as before workers."""
    with SQLiteStore(rows) as store:
        assert 4 == len(store.call_dialogs())
        assert 4 == store.recover(NOW + 1)
    assert set() == _open_reservations(rows)


def test_rows_carry_their_owner(tmp_path: Path) -> None:
    """What a worker writes is marked with its owner (schema 12)."""
    db = tmp_path / "gw.db"
    with _open(db, "w3") as store:
        _call(store, "x")
        assert 12 <= store.schema_version()
    import sqlite3

    with sqlite3.connect(db) as con:
        assert [("w3",)] == con.execute("SELECT owner FROM call_starts").fetchall()
        assert [("w3",)] == con.execute("SELECT owner FROM call_dialogs").fetchall()


def test_worker_role_round_trip() -> None:
    """The role passed on a worker's command line comes back equal; a bad one is refused."""
    role = WorkerRole(
        index=1, count=3, ports=(5060, 5060), home=(40001, 40002), initial=False, steer="/run/x"
    )
    assert role == WorkerRole.from_json(role.to_json())
    assert ("w0", "w2") == role.siblings
    assert "w1" == role.owner
    assert not role.sweep
    assert WorkerRole(index=0, count=2, ports=(1,), home=(2,)).sweep
    with pytest.raises(ValueError, match="not a worker role"):
        WorkerRole.from_json('{"index": 2, "count": 2, "ports": [1], "home": [2]}')
    with pytest.raises(ValueError, match="not a worker role"):
        WorkerRole.from_json("{")


def test_server_workers_key(tmp_path: Path) -> None:
    """``[server] workers``: default 1, "auto" = the number of cores, errors name the key."""
    assert 1 == Settings().server.worker_count()
    path = tmp_path / "gw.toml"
    path.write_text('[policy]\nconsent = "dnc-only"\n[server]\nworkers = "auto"\n')
    assert max(1, os.cpu_count() or 1) == load_settings(path).server.worker_count()
    path.write_text('[policy]\nconsent = "dnc-only"\n[server]\nworkers = 0\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert ["server.workers: must be between 1 and 64, got 0"] == err.value.messages
    assert "load" == Settings().server.worker_balance
    path.write_text('[policy]\nconsent = "dnc-only"\n[server]\nworker_balance = "source"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert err.value.messages[0].startswith("server.worker_balance:"), err.value.messages


async def test_the_endpoint_writes_and_sends_from_its_private_transports() -> None:
    """With a private UDP transport, a request for the shared one leaves from the private
    socket and every Via/Contact names it; a TCP flow keeps its connection."""

    def ignore(*_: object) -> None:
        return None

    endpoint = SipEndpoint(ignore)
    shared = await UDPTransport.listen("127.0.0.1", 0, ignore, reuse_port=True)
    home = await UDPTransport.listen("127.0.0.1", 0, ignore)
    tcp = await TCPTransport.listen("127.0.0.1", 0, ignore)
    try:
        for t in (shared, home, tcp):
            endpoint.add_transport(t)
        assert f"127.0.0.1:{shared.local_address[1]}" == endpoint.sent_by(shared)
        endpoint.add_home(home)
        port = home.local_address[1]
        assert f"127.0.0.1:{port}" == endpoint.sent_by(shared)
        assert f"sip:dialgate@127.0.0.1:{port}" == endpoint.contact_uri(shared, "dialgate")
        assert home is endpoint.transport("udp")
        assert home is endpoint._sender(shared)
        assert tcp is endpoint._sender(tcp)
        assert tcp is endpoint.transport("tcp")
    finally:
        await endpoint.close()


def test_reuse_port_lets_two_sockets_share_a_udp_port() -> None:
    """What the workers rely on: two SO_REUSEPORT sockets bind one port; a plain one
    cannot (the supervisor's check that the port is free)."""
    port = free_udp_port()
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for s in (a, b):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(("127.0.0.1", port))
        with pytest.raises(OSError):
            c.bind(("127.0.0.1", port))
    finally:
        for s in (a, b, c):
            s.close()


def test_the_supervisor_refuses_a_taken_port(tmp_path: Path) -> None:
    """A listener already bound (another gateway): refused, the listener named."""
    held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    held.bind(("127.0.0.1", 0))
    try:
        port = held.getsockname()[1]
        settings = Settings(sip={"listen": [f"udp:127.0.0.1:{port}"]})  # type: ignore[arg-type]
        with pytest.raises(supervisor.PortsInUse, match=r"sip.listen\[0\] udp:127.0.0.1"):
            supervisor.choose_ports(settings, 2)
    finally:
        held.close()


def test_the_supervisor_chooses_distinct_ports() -> None:
    """Port 0 becomes one concrete port for all; each worker gets its own private ports."""
    settings = Settings(sip={"listen": ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]})  # type: ignore[arg-type]
    shared, homes = supervisor.choose_ports(settings, 3)
    assert 2 == len(shared) and all(shared)
    assert 3 == len(homes)
    udp_ports = [shared[0], *(h[0] for h in homes)]
    assert len(set(udp_ports)) == 4


class _Log:
    def __init__(self) -> None:
        self.events: list[str] = []

    def _record(self, event: str, **_: object) -> None:
        self.events.append(event)

    info = warning = error = _record


def test_the_supervisor_gives_up_on_a_worker_that_keeps_crashing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker that exits at once is restarted with a growing back-off; past the limit
    the supervisor stops and exits 1."""
    monkeypatch.setattr(
        supervisor, "_command", lambda *_: [sys.executable, "-c", "raise SystemExit(1)"]
    )
    settings = Settings(sip={"listen": ["udp:127.0.0.1:0"]})  # type: ignore[arg-type]
    log = _Log()
    assert 1 == supervisor.supervise(settings, None, 1, log)
    assert supervisor.CRASH_LIMIT == log.events.count("worker.exited")
    assert "workers.giving_up" == log.events[-1]


def test_a_worker_refusing_its_configuration_stops_the_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Status 2 (usage/configuration) is not retried: the supervisor exits 2."""
    monkeypatch.setattr(
        supervisor, "_command", lambda *_: [sys.executable, "-c", "raise SystemExit(2)"]
    )
    settings = Settings(sip={"listen": ["udp:127.0.0.1:0"]})  # type: ignore[arg-type]
    log = _Log()
    assert 2 == supervisor.supervise(settings, None, 2, log)
    assert "worker.refused_configuration" in log.events


def test_bindings_read_from_the_store_replace_the_remembered_ones() -> None:
    """``Registrar.replace``: the stored rows win; a binding of this process keeps its flow."""
    registrar = Registrar()

    def row(contact: str, transport: str, position: int, cseq: int = 1) -> StoredRegistration:
        return StoredRegistration(
            aor="alice",
            contact=contact,
            expires_at=NOW + 600,
            call_id="reg-1",
            cseq=cseq,
            source_host="127.0.0.1",
            source_port=40000 + position,
            transport=transport,
            q=None,
            position=position,
        )

    registrar.replace("alice", [row("sip:alice@127.0.0.1:5070", "udp", 0)], NOW)
    [udp] = registrar.lookup("alice", NOW)
    assert ("127.0.0.1", 40000) == udp.source
    # Another worker's TCP binding: its connection is not ours, reached at its Contact.
    registrar.replace(
        "alice",
        [
            row("sip:alice@127.0.0.1:5070", "udp", 0),
            row("sip:alice@127.0.0.1:5080;transport=tcp", "tcp", 1),
        ],
        NOW,
    )
    tcp, udp = registrar.lookup("alice", NOW)
    assert tcp.flow_lost and ("127.0.0.1", 5080) == tcp.source
    assert set() == registrar.take_changed()  # read, not to be written back
    registrar.replace("alice", [], NOW)
    assert [] == registrar.lookup("alice", NOW)


def test_a_sibling_write_rebuilds_only_the_cards_it_changed(tmp_path: Path) -> None:
    """Two workers on one file: a reservation by one makes the other rebuild that card's
    counters (and see it), while its other cards' counters are kept (schema 13)."""
    db = tmp_path / "gw.db"
    with _open(db, "w0") as mine, _open(db, "w1") as sibling:
        assert 0 == mine.card_usage("c1", NOW).in_use
        assert 0 == mine.card_usage("c2", NOW).in_use
        kept = mine._cards_usage["c1"]
        sibling.reserve("c2", "s-1", "+8613900000001", NOW)
        assert 1 == mine.card_usage("c2", NOW).in_use
        assert kept is mine._cards_usage["c1"]
        mine.reserve("c1", "m-1", "+8613900000002", NOW)
        sibling.finish("s-1", NOW + 5, answered=True, talk_seconds=5)
        usage = mine.card_usage("c2", NOW + 6)
        assert 0 == usage.in_use
        assert 1 == mine.card_usage("c1", NOW + 6).in_use
        assert 1 == sibling.card_usage("c1", NOW + 6).in_use


def test_a_worker_waits_for_a_siblings_write_lock_then_gives_up(tmp_path: Path) -> None:
    """Beside siblings, a write waits for the lock in short steps: a lock released within
    the busy timeout is taken; one held past it makes the write fail (the guard's case)."""
    import sqlite3
    import threading

    db = tmp_path / "gw.db"
    with _open(db, "w0", siblings=("w1",)) as store:
        holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        try:
            holder.execute("BEGIN IMMEDIATE")
            threading.Timer(0.05, lambda: holder.execute("COMMIT")).start()
            store.reserve("c1", "a", "+8613900000001", NOW)  # waits ~50 ms, then writes
            assert 1 == store.card_usage("c1", NOW).in_use
            holder.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreUnavailable):
                store.reserve("c1", "b", "+8613900000002", NOW)  # 200 ms, still held
            holder.execute("COMMIT")
        finally:
            holder.close()

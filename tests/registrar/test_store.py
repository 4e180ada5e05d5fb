"""The registrations table (schema 8) and the registrar's copy kept in it.

Unit tests on a SQLite file in tmp_path: save/load round trips, replace and
delete semantics, expiry on load, node scoping; the registrar's rows and
restore (a TCP binding comes back with its flow marked lost); and
:class:`RegistrationSync` over a store that fails (the binding and the
REGISTER never suffer, the write is retried with back-off).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from gateway.callpath.registrar import Registrar, RegistrationSync
from gateway.store import SCHEMA_VERSION, SQLiteStore, StoreUnavailable
from gateway.store.memory import MemoryStore
from gateway.store.sqlite import _MIGRATIONS, StoredRegistration
from tests.registrar.conftest import register

T0 = 1_700_000_000.0
SRC = ("192.0.2.10", 40000)


def row(
    contact: str, *, aor: str = "alice", expires_at: float = T0 + 600, **kw: object
) -> StoredRegistration:
    """A stored binding of ``aor`` (UDP from SRC unless told)."""
    data: dict[str, object] = {
        "aor": aor,
        "contact": contact,
        "expires_at": expires_at,
        "call_id": "r1",
        "cseq": 1,
        "source_host": SRC[0],
        "source_port": SRC[1],
        "transport": "udp",
    }
    data.update(kw)
    return StoredRegistration(**data)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    """A fresh SQLite store."""
    s = SQLiteStore(tmp_path / "gw.db")
    yield s
    s.close()


def test_migration_8_creates_the_registrations_table(tmp_path: Path) -> None:
    """Schema 8 adds ``registrations``; a schema-7 file is migrated keeping its rows."""
    path = tmp_path / "gw.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for version, statements in _MIGRATIONS:
            if version > 7:
                break
            for sql in statements:
                db.execute(sql)
            db.execute("INSERT INTO schema_version VALUES (?)", (version,))
        db.execute("INSERT INTO dnc (number, added_at) VALUES ('+8613811112222', 1.0)")
    with SQLiteStore(path) as s:
        # Migrated to the newest schema (8 added registrations; later ones follow it).
        assert SCHEMA_VERSION >= 8
        assert SCHEMA_VERSION == s.schema_version()
        assert s.is_dnc("+8613811112222")
        assert [] == s.load_registrations(T0)
    with sqlite3.connect(path) as db:
        columns = [r[1] for r in db.execute("PRAGMA table_info(registrations)")]
    assert [
        "node",
        "aor",
        "contact",
        "position",
        "expires_at",
        "call_id",
        "cseq",
        "source_host",
        "source_port",
        "transport",
        "q",
    ] == columns


def test_save_and_load_round_trip_in_registration_order(store: SQLiteStore) -> None:
    """Every field survives; an AOR's bindings come back in position order."""
    rows = [
        row("sip:alice@10.0.0.6", position=1, q="0.5", transport="tcp", cseq=7),
        row("sip:alice@10.0.0.5", position=0),
    ]
    store.save_registrations("alice", rows, T0)
    assert sorted(rows, key=lambda r: r.position) == store.load_registrations(T0)


def test_save_replaces_and_empty_list_deletes(store: SQLiteStore) -> None:
    """A save is the AOR's whole list: older rows go; an empty list unregisters."""
    store.save_registrations("alice", [row("sip:alice@10.0.0.5"), row("sip:alice@10.0.0.6")], T0)
    store.save_registrations("bob", [row("sip:bob@10.0.0.7", aor="bob")], T0)
    store.save_registrations("alice", [row("sip:alice@10.0.0.8")], T0)
    assert ["sip:alice@10.0.0.8", "sip:bob@10.0.0.7"] == [
        r.contact for r in store.load_registrations(T0)
    ]
    store.save_registrations("alice", [], T0)
    assert ["bob"] == [r.aor for r in store.load_registrations(T0)]


def test_load_drops_and_deletes_expired_rows(store: SQLiteStore, tmp_path: Path) -> None:
    """Rows expired at load time are not returned and are removed from the file."""
    store.save_registrations(
        "alice",
        [row("sip:alice@10.0.0.5", expires_at=T0 + 10), row("sip:alice@10.0.0.6", position=1)],
        T0,
    )
    assert ["sip:alice@10.0.0.6"] == [r.contact for r in store.load_registrations(T0 + 10)]
    with sqlite3.connect(tmp_path / "gw.db") as db:
        assert 1 == db.execute("SELECT COUNT(*) FROM registrations").fetchone()[0]


def test_nodes_do_not_see_each_other(store: SQLiteStore) -> None:
    """Instances sharing one file keep their own bindings (``node``)."""
    store.save_registrations("alice", [row("sip:alice@10.0.0.5")], T0, node="gw1")
    store.save_registrations("alice", [row("sip:alice@10.0.0.6")], T0, node="gw2")
    assert ["sip:alice@10.0.0.5"] == [r.contact for r in store.load_registrations(T0, node="gw1")]
    assert [] == store.load_registrations(T0)


def test_closed_store_raises_store_unavailable(store: SQLiteStore) -> None:
    """Failures surface as StoreUnavailable (what RegistrationSync catches and counts)."""
    store.close()
    with pytest.raises(StoreUnavailable):
        store.save_registrations("alice", [row("sip:alice@10.0.0.5")], T0)
    with pytest.raises(StoreUnavailable):
        store.load_registrations(T0)


def test_json_round_trip_and_damaged_entries() -> None:
    """The Redis copy's JSON form round-trips; a damaged entry becomes None, never an error."""
    r = row("sip:alice@10.0.0.5;transport=tcp", q="1.0", position=3)
    assert r == StoredRegistration.from_json(r.as_json())
    assert None is StoredRegistration.from_json({"aor": "alice"})
    assert None is StoredRegistration.from_json([1, 2])
    assert None is StoredRegistration.from_json({**r.as_json(), "cseq": "x"})


# --- the registrar's side -------------------------------------------------------------


def test_registrar_rows_and_restore_round_trip() -> None:
    """rows() of one registrar restored into another gives the same lookup."""
    reg = Registrar()
    reg.register(
        register(["<sip:alice@10.0.0.5>", "<sip:alice@10.0.0.6>;q=0.5"], expires=600),
        "alice",
        SRC,
        "udp",
        T0,
    )
    assert {"alice"} == reg.take_changed()
    assert set() == reg.take_changed()
    rows = reg.rows("alice", T0 + 1)
    other = Registrar()
    assert (2, 0) == other.restore(rows, T0 + 1)
    assert reg.lookup("alice", T0 + 1) == other.lookup("alice", T0 + 1)
    assert set() == other.take_changed()  # restoring is not a change to write back


def test_restore_skips_expired_unparseable_and_newer_in_memory() -> None:
    """Expired rows and bad Contacts are skipped; an AOR registered meanwhile keeps its binding."""
    reg = Registrar()
    reg.register(register(["<sip:bob@10.0.0.9>"], user="bob", expires=600), "bob", SRC, "udp", T0)
    rows = [
        row("sip:alice@10.0.0.5", expires_at=T0),
        row("not a uri", aor="carol"),
        row("sip:bob@10.0.0.1", aor="bob"),
        row("sip:dave@10.0.0.2", aor="dave"),
    ]
    assert (1, 3) == reg.restore(rows, T0)
    assert ["sip:bob@10.0.0.9"] == [str(b.contact) for b in reg.lookup("bob", T0)]
    assert reg.is_registered("dave", T0)


def test_restored_tcp_binding_is_reached_at_its_contact() -> None:
    """A TCP flow died with the old process: the binding is kept, aimed at its Contact."""
    reg = Registrar()
    rows = [
        row("sip:alice@192.0.2.10:5070;transport=tcp", transport="tcp", source_port=53211),
        row("sip:alice@192.0.2.11", aor="bob", transport="udp"),
    ]
    reg.restore(rows, T0)
    [tcp] = reg.lookup("alice", T0)
    assert (True, ("192.0.2.10", 5070), "tcp") == (tcp.flow_lost, tcp.source, tcp.transport)
    [udp] = reg.lookup("bob", T0)
    assert (False, SRC) == (udp.flow_lost, udp.source)
    assert reg.is_registered("alice", T0)


def test_unregister_and_expiry_are_changes_to_write() -> None:
    """Contact: * / Expires: 0 and a binding found expired are changes (their rows must go)."""
    reg = Registrar()
    reg.register(register(["<sip:alice@10.0.0.5>"], expires=600), "alice", SRC, "udp", T0)
    reg.take_changed()
    reg.register(register(["*"], expires=0, cseq=2), "alice", SRC, "udp", T0 + 1)
    assert ({"alice"}, []) == (reg.take_changed(), reg.rows("alice", T0 + 1))
    reg.register(register(["<sip:bob@10.0.0.5>"], user="bob", expires=60), "bob", SRC, "udp", T0)
    reg.take_changed()
    assert [] == reg.lookup("bob", T0 + 61)
    assert {"bob"} == reg.take_changed()


# --- RegistrationSync -------------------------------------------------------------------


class FlakyStore(MemoryStore):
    """The in-memory store (fails while ``down``), counting registration writes."""

    def __init__(self) -> None:
        super().__init__()
        self.saves = 0

    def save_registrations(
        self, aor: str, rows: Sequence[StoredRegistration], now: float, *, node: str = ""
    ) -> None:
        """Count, then replace (or fail while down)."""
        self.saves += 1
        super().save_registrations(aor, rows, now, node=node)

    def contacts(self, aor: str) -> list[str]:
        """The stored contacts of ``aor`` live at T0."""
        return [r.contact for r in self.load_registrations(T0) if r.aor == aor]


def test_a_failing_store_never_costs_the_binding_and_is_retried() -> None:
    """Store down: REGISTER still bound, failure counted, retried after back-off, then written."""
    reg = Registrar()
    flaky = FlakyStore()
    flaky.down = True
    sync = RegistrationSync(reg, [("flaky", flaky, "")], retry_interval=5.0)
    answer = reg.register(register(["<sip:alice@10.0.0.5>"], expires=600), "alice", SRC, "udp", T0)
    assert 1 == sync.flush(T0)  # never raises
    assert (200, True) == (answer.status, reg.is_registered("alice", T0))
    assert (1, 1) == (sync.stats.store_failures, sync.pending())
    flaky.down = False
    sync.flush(T0 + 1)  # before the retry time: not even tried
    assert (1, 1) == (flaky.saves, sync.pending())
    sync.flush(T0 + 5)
    assert (0, ["sip:alice@10.0.0.5"]) == (
        sync.pending(),
        flaky.contacts("alice"),
    )


def test_back_off_doubles_while_the_store_stays_down() -> None:
    """Retries at +5, +10 (doubled), +20 …; one attempt per retry, not one per AOR."""
    reg = Registrar()
    flaky = FlakyStore()
    flaky.down = True
    sync = RegistrationSync(reg, [("flaky", flaky, "")], retry_interval=5.0)
    for user in ("alice", "bob"):
        reg.register(
            register([f"<sip:{user}@10.0.0.5>"], user=user, expires=600), user, SRC, "udp", T0
        )
    for t in (0, 4, 5, 14, 15, 34, 35):
        sync.flush(T0 + t)
    assert 4 == flaky.saves  # at 0, 5, 15, 35
    assert 2 == sync.pending()


def test_load_prefers_the_first_store_and_repairs_the_others() -> None:
    """Redis-first: an AOR is taken from the first store that has it; copies lacking it get it."""
    first, second = FlakyStore(), FlakyStore()
    first.save_registrations("alice", [row("sip:alice@10.0.0.5")], T0)
    second.save_registrations("alice", [row("sip:alice@10.0.0.99")], T0)
    second.save_registrations("bob", [row("sip:bob@10.0.0.7", aor="bob")], T0)
    reg = Registrar()
    sync = RegistrationSync(reg, [("first", first, ""), ("second", second, "")])
    assert 2 == sync.load(T0)
    assert ["sip:alice@10.0.0.5"] == [str(b.contact) for b in reg.lookup("alice", T0)]
    sync.flush(T0)
    assert ["sip:bob@10.0.0.7"] == first.contacts("bob")


def test_load_survives_a_store_that_cannot_be_read() -> None:
    """An unreadable copy is counted; the other loads; the unreadable one is refilled later."""
    down, ok = FlakyStore(), FlakyStore()
    down.down = True
    ok.save_registrations("alice", [row("sip:alice@10.0.0.5")], T0)
    reg = Registrar()
    sync = RegistrationSync(reg, [("down", down, ""), ("ok", ok, "")])
    assert 1 == sync.load(T0)
    assert 2 == sync.stats.store_failures  # the read, then the repair write
    down.down = False
    sync.flush(T0 + 5)  # the retry
    assert ["sip:alice@10.0.0.5"] == down.contacts("alice")


def test_sync_over_sqlite_survives_a_restart(tmp_path: Path) -> None:
    """Register → flush → new store and registrar on the same file → still registered."""
    path = tmp_path / "gw.db"
    store = SQLiteStore(path)
    reg = Registrar()
    sync = RegistrationSync(reg, [("sqlite", store, "")])
    reg.register(register(["<sip:alice@10.0.0.5>"], expires=600), "alice", SRC, "udp", T0)
    sync.flush(T0)
    store.close()  # as if killed: nothing else is written

    store2 = SQLiteStore(path)
    reg2 = Registrar()
    RegistrationSync(reg2, [("sqlite", store2, "")]).load(T0 + 100)
    [binding] = reg2.lookup("alice", T0 + 100)
    assert (SRC, "udp", 500) == (binding.source, binding.transport, binding.remaining(T0 + 100))
    store2.close()

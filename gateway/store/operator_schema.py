"""The operator's records in the SQLite store: a part of :class:`SQLiteStore`, its tables here.

What this module is for: the records an operator keeps about cards that the
call path does not need — who holds each card (``card_records``), every
operator write with its actor (``audit_log``), appeals with their reference,
channel and later updates (``operator_appeals``, ``appeal_updates``), and who
a complaint was attributed to (``complaint_attribution``). The store creates
the tables when it opens (``CREATE TABLE IF NOT EXISTS``, beside its versioned
schema) and offers these operations as ``store.operator``
(:class:`OperatorRecords`): the same connection, transactions and guard as
every other store operation, so a locked or full file refuses them the same
way (``StoreUnavailable``).

What it must never do: open a connection of its own, alter or write the
tables the rest of the store owns, read a clock (every ``now``/``at`` is passed
in), or log a phone number.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.store.sqlite import SQLiteStore

__all__ = [
    "OPERATOR_TABLES",
    "AppealRecord",
    "AppealUpdate",
    "AuditEntry",
    "CardRecord",
    "ComplaintAttribution",
    "OperatorRecords",
    "migrate",
]

OPERATOR_TABLES: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS card_records (
        card TEXT PRIMARY KEY,
        holder TEXT NOT NULL DEFAULT '',
        employee_id TEXT NOT NULL DEFAULT '',
        registered_number TEXT NOT NULL DEFAULT '',
        carrier_account TEXT NOT NULL DEFAULT '',
        purchase_channel TEXT NOT NULL DEFAULT '',
        notes TEXT NOT NULL DEFAULT '',
        updated_at REAL NOT NULL,
        updated_by TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS audit_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL DEFAULT '',
        card TEXT,
        detail TEXT NOT NULL DEFAULT '{}'
    )""",
    "CREATE INDEX IF NOT EXISTS audit_log_card ON audit_log (card, at)",
    "CREATE INDEX IF NOT EXISTS audit_log_at ON audit_log (at)",
    """CREATE TABLE IF NOT EXISTS operator_appeals (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        card TEXT NOT NULL,
        reference TEXT NOT NULL DEFAULT '',
        channel TEXT NOT NULL DEFAULT '',
        submitted_at REAL NOT NULL,
        notes TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL DEFAULT 'open',
        opened_at REAL NOT NULL,
        opened_by TEXT NOT NULL,
        closed_at REAL
    )""",
    "CREATE INDEX IF NOT EXISTS operator_appeals_card ON operator_appeals (card, opened_at)",
    """CREATE TABLE IF NOT EXISTS appeal_updates (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        appeal INTEGER NOT NULL,
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        decision TEXT,
        notes TEXT NOT NULL DEFAULT '',
        actor TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS appeal_updates_appeal ON appeal_updates (appeal, at)",
    """CREATE TABLE IF NOT EXISTS complaint_attribution (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        number TEXT NOT NULL,
        at REAL NOT NULL,
        agent TEXT NOT NULL DEFAULT '',
        card TEXT,
        call_id TEXT,
        note TEXT NOT NULL DEFAULT '',
        actor TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS complaint_attr_agent ON complaint_attribution (agent, at)",
    "CREATE INDEX IF NOT EXISTS complaint_attr_card ON complaint_attribution (card, at)",
)

#: Card record fields an operator may edit.
RECORD_FIELDS: tuple[str, ...] = (
    "holder",
    "employee_id",
    "registered_number",
    "carrier_account",
    "purchase_channel",
    "notes",
)


@dataclass(frozen=True, slots=True)
class CardRecord:
    """Who holds a card and how it was bought (``registered_number`` masked on output)."""

    card: str
    holder: str = ""
    employee_id: str = ""
    registered_number: str = ""
    carrier_account: str = ""
    purchase_channel: str = ""
    notes: str = ""
    updated_at: float | None = None
    updated_by: str = ""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One operator write: who, when, what, on which target."""

    id: int
    at: float
    actor: str
    action: str
    target: str
    card: str | None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AppealUpdate:
    """A later step of an appeal: more material asked for, material sent, decision, note."""

    id: int
    appeal: int
    at: float
    kind: str
    decision: str | None
    notes: str
    actor: str


@dataclass(frozen=True, slots=True)
class AppealRecord:
    """An appeal filed with the carrier for one suspended card."""

    id: int
    card: str
    reference: str
    channel: str
    submitted_at: float
    notes: str
    status: str
    opened_at: float
    opened_by: str
    closed_at: float | None
    updates: tuple[AppealUpdate, ...] = ()


@dataclass(frozen=True, slots=True)
class ComplaintAttribution:
    """A complaint as the operator attributed it (agent and card it counts against)."""

    number: str
    at: float
    agent: str
    card: str | None
    call_id: str | None
    note: str
    actor: str


def migrate(db: sqlite3.Connection) -> None:
    """Create the operator tables if missing (idempotent; never drops or alters)."""
    for sql in OPERATOR_TABLES:
        db.execute(sql)


class OperatorRecords:
    """The operator tables of one :class:`SQLiteStore` (``store.operator``).

    Reads and writes go through the store's own transactions: one connection,
    one guard, one error type.
    """

    def __init__(self, store: SQLiteStore) -> None:
        self._write = store._write
        self._read = store._read

    # --- audit ----------------------------------------------------------------------

    def audit(
        self,
        db: sqlite3.Connection,
        *,
        at: float,
        actor: str,
        action: str,
        target: str = "",
        card: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Append an audit entry inside an open write transaction."""
        db.execute(
            "INSERT INTO audit_log (at, actor, action, target, card, detail) VALUES (?,?,?,?,?,?)",
            (at, actor, action, target, card, json.dumps(detail or {}, sort_keys=True)),
        )

    def record_audit(
        self,
        *,
        at: float,
        actor: str,
        action: str,
        target: str = "",
        card: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Append an audit entry in its own transaction."""
        with self._write() as db:
            self.audit(
                db, at=at, actor=actor, action=action, target=target, card=card, detail=detail
            )

    def audit_entries(
        self, *, card: str | None = None, since: float = 0.0, limit: int = 10_000
    ) -> list[AuditEntry]:
        """Audit entries (of one card, or all), oldest first."""
        if card is None:
            rows = self._read(
                "SELECT * FROM audit_log WHERE at >= ? ORDER BY at, id LIMIT ?", (since, limit)
            )
        else:
            rows = self._read(
                "SELECT * FROM audit_log WHERE card=? AND at >= ? ORDER BY at, id LIMIT ?",
                (card, since, limit),
            )
        return [
            AuditEntry(
                id=int(r["id"]),
                at=float(r["at"]),
                actor=r["actor"],
                action=r["action"],
                target=r["target"],
                card=r["card"],
                detail=json.loads(r["detail"]),
            )
            for r in rows
        ]

    # --- card records ---------------------------------------------------------------

    def card_record(self, card: str) -> CardRecord:
        """The card's record (empty fields when none was written yet)."""
        rows = self._read("SELECT * FROM card_records WHERE card=?", (card,))
        if not rows:
            return CardRecord(card=card)
        r = rows[0]
        return CardRecord(
            card=card,
            **{name: r[name] for name in RECORD_FIELDS},
            updated_at=float(r["updated_at"]),
            updated_by=r["updated_by"],
        )

    def update_card_record(
        self, card: str, changes: dict[str, str], *, at: float, actor: str
    ) -> CardRecord:
        """Set the given record fields (others kept) and audit the change (numbers masked)."""
        unknown = set(changes) - set(RECORD_FIELDS)
        if unknown:
            raise ValueError(f"unknown card record field(s): {', '.join(sorted(unknown))}")
        current = self.card_record(card)
        values = {name: getattr(current, name) for name in RECORD_FIELDS}
        values.update(changes)
        with self._write() as db:
            db.execute(
                "INSERT INTO card_records (card, holder, employee_id, registered_number, "
                "carrier_account, purchase_channel, notes, updated_at, updated_by) "
                "VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(card) DO UPDATE SET "
                "holder=excluded.holder, employee_id=excluded.employee_id, "
                "registered_number=excluded.registered_number, "
                "carrier_account=excluded.carrier_account, "
                "purchase_channel=excluded.purchase_channel, notes=excluded.notes, "
                "updated_at=excluded.updated_at, updated_by=excluded.updated_by",
                (card, *(values[n] for n in RECORD_FIELDS), at, actor),
            )
            # The audit names the fields changed, never the registered number itself.
            self.audit(
                db,
                at=at,
                actor=actor,
                action="card.record",
                target=card,
                card=card,
                detail={"fields": sorted(changes)},
            )
        return self.card_record(card)

    # --- appeals --------------------------------------------------------------------

    def open_appeal(
        self,
        card: str,
        *,
        reference: str,
        channel: str,
        submitted_at: float,
        notes: str,
        at: float,
        actor: str,
    ) -> int:
        """Store a new appeal for ``card``; return its id."""
        with self._write() as db:
            cur = db.execute(
                "INSERT INTO operator_appeals (card, reference, channel, submitted_at, notes, "
                "status, opened_at, opened_by) VALUES (?,?,?,?,?,'open',?,?)",
                (card, reference, channel, submitted_at, notes, at, actor),
            )
            appeal_id = int(cur.lastrowid or 0)
            self.audit(
                db,
                at=at,
                actor=actor,
                action="appeal.open",
                target=str(appeal_id),
                card=card,
                detail={"reference": reference, "channel": channel},
            )
        return appeal_id

    def add_appeal_update(
        self,
        appeal_id: int,
        *,
        kind: str,
        decision: str | None,
        notes: str,
        at: float,
        actor: str,
        close: bool = False,
        status: str | None = None,
    ) -> AppealUpdate:
        """Append an update to an appeal; ``close`` records a final decision."""
        appeal = self.appeal(appeal_id)
        if appeal is None:
            raise LookupError(f"unknown appeal {appeal_id}")
        with self._write() as db:
            cur = db.execute(
                "INSERT INTO appeal_updates (appeal, at, kind, decision, notes, actor) "
                "VALUES (?,?,?,?,?,?)",
                (appeal_id, at, kind, decision, notes, actor),
            )
            if status is not None or close:
                db.execute(
                    "UPDATE operator_appeals SET status=?, closed_at=? WHERE id=?",
                    (status or appeal.status, at if close else None, appeal_id),
                )
            self.audit(
                db,
                at=at,
                actor=actor,
                action=f"appeal.{kind}",
                target=str(appeal_id),
                card=appeal.card,
                detail={"decision": decision} if decision else {},
            )
            update_id = int(cur.lastrowid or 0)
        return AppealUpdate(update_id, appeal_id, at, kind, decision, notes, actor)

    def appeal(self, appeal_id: int) -> AppealRecord | None:
        """One appeal with its updates, or None."""
        rows = self._read("SELECT * FROM operator_appeals WHERE id=?", (appeal_id,))
        return self._appeal(rows[0]) if rows else None

    def appeals(self, card: str) -> list[AppealRecord]:
        """Appeals of a card, oldest first."""
        rows = self._read(
            "SELECT * FROM operator_appeals WHERE card=? ORDER BY opened_at, id", (card,)
        )
        return [self._appeal(r) for r in rows]

    def open_appeal_of(self, card: str) -> AppealRecord | None:
        """The card's latest appeal still open, or None."""
        for appeal in reversed(self.appeals(card)):
            if appeal.closed_at is None:
                return appeal
        return None

    def _appeal(self, r: sqlite3.Row) -> AppealRecord:
        updates = self._read(
            "SELECT * FROM appeal_updates WHERE appeal=? ORDER BY at, id", (int(r["id"]),)
        )
        return AppealRecord(
            id=int(r["id"]),
            card=r["card"],
            reference=r["reference"],
            channel=r["channel"],
            submitted_at=float(r["submitted_at"]),
            notes=r["notes"],
            status=r["status"],
            opened_at=float(r["opened_at"]),
            opened_by=r["opened_by"],
            closed_at=r["closed_at"],
            updates=tuple(
                AppealUpdate(
                    id=int(u["id"]),
                    appeal=int(u["appeal"]),
                    at=float(u["at"]),
                    kind=u["kind"],
                    decision=u["decision"],
                    notes=u["notes"],
                    actor=u["actor"],
                )
                for u in updates
            ),
        )

    # --- complaints -----------------------------------------------------------------

    def attribute_complaint(self, c: ComplaintAttribution) -> None:
        """Store who a complaint counts against."""
        with self._write() as db:
            db.execute(
                "INSERT INTO complaint_attribution (number, at, agent, card, call_id, note, actor) "
                "VALUES (?,?,?,?,?,?,?)",
                (c.number, c.at, c.agent, c.card, c.call_id, c.note, c.actor),
            )

    def attributed_complaints(
        self, *, agent: str | None = None, card: str | None = None, since: float = 0.0
    ) -> list[ComplaintAttribution]:
        """Attributed complaints of one agent and/or card since ``since``, oldest first."""
        clauses = ["at >= ?"]
        params: list[Any] = [since]
        if agent is not None:
            clauses.append("agent = ?")
            params.append(agent)
        if card is not None:
            clauses.append("card = ?")
            params.append(card)
        rows = self._read(
            f"SELECT * FROM complaint_attribution WHERE {' AND '.join(clauses)} ORDER BY at, id",
            tuple(params),
        )
        return [
            ComplaintAttribution(
                number=r["number"],
                at=float(r["at"]),
                agent=r["agent"],
                card=r["card"],
                call_id=r["call_id"],
                note=r["note"],
                actor=r["actor"],
            )
            for r in rows
        ]

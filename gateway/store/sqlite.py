"""The embedded store: one SQLite file (WAL) behind small, typed operations.

What this module is for: :class:`SQLiteStore`, the default backend and a
complete :class:`gateway.store.protocols.Store` — cards and their state
history (``card_transitions``), per-card usage (one ``call_starts`` row per
reserved call attempt), consent, the internal DNC list, complaints, number
resets, agent pauses and bindings, call detail records, calls in progress
(``call_dialogs``), registrar bindings (``registrations``), and the operator's
records (``store.operator``, tables in :mod:`gateway.store.operator_schema`).
The schema is versioned (``schema_version``) and migrated forward on open;
opening an up-to-date database is a no-op.

Write-ahead counting. ``reserve()`` commits a usage row *before* the INVITE
leaves the gateway (in one commit with the call's write-ahead row, see
Batches); ``release()`` undoes it only when the attempt failed before the
callee was alerted; ``finish()`` records the outcome. A crash between the
two leaves a ``reserved`` row that :meth:`SQLiteStore.recover` turns into an
``orphaned`` start on the next open: it still counts as a call start (so a
crash can only over-count), but no longer as a concurrent call.

Running counters. ``card_usage`` (and the quota check inside ``reserve``) is
served from per-card counters kept beside the rows (``_CardCounters``), rebuilt
from ``call_starts`` on first use and on a new carrier day. Whether another
connection committed to the file is noted on every usage read and write
(``PRAGMA data_version``, which also keeps reads failing closed when the file is
gone); a card's counters are then compared with its change counter when the card
is next used, and another worker's changes applied (or the counters rebuilt when
they cannot be: see ``_catch_up``). The rows remain the durable record; the
counters never hold anything the rows do not, and the cost of a reservation does
not grow with a card's day.

Durability. WAL mode with ``synchronous=NORMAL``: a commit is an append to the
``-wal`` file done with ``write(2)`` before ``COMMIT`` returns, so killing the
process (even ``kill -9``) loses nothing; only an operating-system crash or
power loss can drop the last few commits (never corrupt the file).
``synchronous="FULL"`` adds an fsync per commit for that case.

Failure mode: fail closed. Any SQLite error is raised as :class:`StoreUnavailable`
(SIP 503 + Retry-After, reason ``store-unavailable``); a failure of the file
itself (locked, busy, full, I/O) opens the store's :class:`StoreGuard`.

Batches. ``batch()`` makes several writes one transaction (the call path
stores a call's start — reservation and write-ahead B-leg row — and its end —
finish, CDR, row deleted — each as one commit): inside it each write is a
savepoint of one transaction begun by the first write, committed when the
batch is left or by ``commit()``. A write refused by its own check (a quota)
undoes only itself; a failure of the store rolls the whole batch back and ends
it (the running counters are rebuilt, as after any refused write).

This module must never read a clock (callers pass ``now``), never log a callee
number, never hold a transaction open across an ``await`` (every operation, and
every batch, is one short synchronous transaction), and never open a second
connection for regular work (only the guard's probe and checkpoints use their own).
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from bisect import bisect_left, insort
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.callpath.cdr import CallRecord, Origin, Outcome
from gateway.private_files import prepare_private_file
from gateway.store.guard import StoreGuard
from gateway.store.operator_schema import OperatorRecords
from gateway.store.operator_schema import migrate as create_operator_tables
from gateway.store.protocols import CardRepository, UsageLedger
from gateway.store.records import (
    CallDialogs,
    CalleesToday,
    CardUsageFacts,
    Complaint,
    QuotaExceeded,
    ReservationError,
    StoredCard,
    StoredRegistration,
    StoreUnavailable,
    TransitionRecord,
    UsageStatus,
    unavailable,
)
from policies.agent import AgentUsage
from policies.consent import ConsentRecord, ConsentStatus, resolve_status
from policies.dnc import DncEntry, DncSource
from policies.quotas import (
    CallOutcome,
    CardUsage,
    KeptStarts,
    QuotaProfile,
    StartTimes,
    would_exceed,
)
from policies.timeutil import day_bounds

if TYPE_CHECKING:
    from gateway.config import Settings

__all__ = [
    "SCHEMA_VERSION",
    "CallDialogs",
    "CardRepository",
    "CardUsageFacts",
    "Complaint",
    "QuotaExceeded",
    "ReservationError",
    "SQLiteStore",
    "StoreUnavailable",
    "StoredCard",
    "StoredRegistration",
    "TransitionRecord",
    "UsageLedger",
    "UsageStatus",
    "store_from_settings",
]


# --- schema -------------------------------------------------------------------------

_MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        1,
        (
            """CREATE TABLE cards (
                id TEXT PRIMARY KEY,
                carrier TEXT NOT NULL,
                number TEXT NOT NULL,
                pool TEXT NOT NULL,
                priority INTEGER NOT NULL DEFAULT 0,
                quota_profile TEXT NOT NULL DEFAULT 'default',
                state TEXT NOT NULL DEFAULT 'active',
                reason TEXT,
                since REAL NOT NULL,
                probation_until REAL,
                profile_override TEXT,
                resume_at REAL
            )""",
            """CREATE TABLE card_transitions (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                card TEXT NOT NULL,
                at REAL NOT NULL,
                from_state TEXT NOT NULL,
                to_state TEXT NOT NULL,
                reason TEXT,
                cause TEXT NOT NULL,
                evidence TEXT NOT NULL DEFAULT '{}',
                actor TEXT NOT NULL
            )""",
            "CREATE INDEX card_transitions_card ON card_transitions (card, at)",
            """CREATE TABLE cdrs (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                call_id TEXT NOT NULL,
                attempt_at REAL NOT NULL,
                ring_at REAL,
                answer_at REAL,
                end_at REAL,
                origin_kind TEXT NOT NULL,
                origin TEXT NOT NULL,
                campaign TEXT NOT NULL,
                cards TEXT NOT NULL,
                destination TEXT NOT NULL,
                outcome TEXT NOT NULL,
                final_code INTEGER NOT NULL,
                failovers INTEGER NOT NULL DEFAULT 0,
                policy_reason TEXT NOT NULL DEFAULT ''
            )""",
            "CREATE INDEX cdrs_attempt ON cdrs (attempt_at)",
            "CREATE INDEX cdrs_call ON cdrs (call_id)",
            """CREATE TABLE call_starts (
                call_id TEXT NOT NULL,
                card TEXT NOT NULL,
                callee TEXT NOT NULL,
                started_at REAL NOT NULL,
                status TEXT NOT NULL,
                answered INTEGER NOT NULL DEFAULT 0,
                talk_seconds REAL NOT NULL DEFAULT 0,
                short INTEGER NOT NULL DEFAULT 0,
                ended_at REAL,
                PRIMARY KEY (call_id, card)
            )""",
            "CREATE INDEX call_starts_card ON call_starts (card, started_at)",
            "CREATE INDEX call_starts_status ON call_starts (status)",
            """CREATE TABLE consent (
                number TEXT NOT NULL,
                campaign TEXT NOT NULL DEFAULT '',
                granted_at REAL NOT NULL,
                expires_at REAL,
                revoked_at REAL,
                source TEXT NOT NULL DEFAULT '',
                PRIMARY KEY (number, campaign)
            )""",
            """CREATE TABLE dnc (
                number TEXT PRIMARY KEY,
                added_at REAL NOT NULL,
                source TEXT NOT NULL DEFAULT '',
                note TEXT NOT NULL DEFAULT ''
            )""",
            """CREATE TABLE complaints (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                number TEXT NOT NULL,
                at REAL NOT NULL,
                card TEXT,
                call_id TEXT,
                note TEXT NOT NULL DEFAULT ''
            )""",
            "CREATE INDEX complaints_card ON complaints (card, at)",
            """CREATE TABLE appeals (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                card TEXT NOT NULL,
                opened_at REAL NOT NULL,
                closed_at REAL,
                status TEXT NOT NULL DEFAULT 'open',
                transition_id INTEGER,
                evidence TEXT NOT NULL DEFAULT '{}',
                note TEXT NOT NULL DEFAULT ''
            )""",
        ),
    ),
)

_MIGRATIONS += (
    (
        2,
        (
            # A card-level failure (carrier fault, Timer B) as opposed to a callee outcome;
            # feeds the consecutive-failures quota.
            "ALTER TABLE call_starts ADD COLUMN failed INTEGER NOT NULL DEFAULT 0",
        ),
    ),
)

_MIGRATIONS += (
    (
        3,
        (
            # Covering index for the per-card usage read on every call (no table lookups).
            "CREATE INDEX call_starts_usage ON call_starts "
            "(card, started_at, status, callee, talk_seconds, answered, failed, ended_at)",
            "DROP INDEX call_starts_card",
        ),
    ),
)

_MIGRATIONS += (
    (
        4,
        (
            # Who placed the call (agent limits) and when it was answered (frequency caps).
            "ALTER TABLE call_starts ADD COLUMN agent TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE call_starts ADD COLUMN answered_at REAL",
            "CREATE INDEX call_starts_callee ON call_starts (callee, started_at)",
            "CREATE INDEX call_starts_agent ON call_starts (agent, started_at)",
            "CREATE INDEX complaints_call ON complaints (call_id)",
            "ALTER TABLE consent ADD COLUMN evidence TEXT NOT NULL DEFAULT ''",
            """CREATE TABLE agent_pauses (
                agent TEXT PRIMARY KEY,
                paused_at REAL NOT NULL,
                reason TEXT NOT NULL DEFAULT ''
            )""",
        ),
    ),
)

_MIGRATIONS += (
    (
        5,
        (
            # Confirmed dialogs of calls in progress (one row per call, deleted when the
            # call ends): after a crash the next start sends the BYEs the dead process
            # never sent. Legs are JSON (dialog record, transport, address).
            """CREATE TABLE call_dialogs (
                call_key TEXT PRIMARY KEY,
                call_id TEXT NOT NULL,
                card TEXT,
                callee TEXT NOT NULL,
                attempt_at REAL NOT NULL,
                answer_at REAL,
                a_leg TEXT,
                b_leg TEXT
            )""",
        ),
    ),
)

_MIGRATIONS += (
    (
        6,
        (
            # The CDR a call cut by a crash gets at the next start (outcome
            # "interrupted"): who called, campaign, cards; JSON of gateway.store.spool.
            "ALTER TABLE call_dialogs ADD COLUMN cdr TEXT",
        ),
    ),
)

_MIGRATIONS += (
    (
        7,
        (
            # An agent re-bound to another card of its pool because its configured
            # card died (an agent stays on its card: re-bound once, not per call).
            # ``configured`` is the card of the configuration at that time: a changed
            # configuration wins over the stored binding.
            """CREATE TABLE agent_bindings (
                agent TEXT PRIMARY KEY,
                card TEXT NOT NULL,
                configured TEXT,
                since REAL NOT NULL,
                cause TEXT NOT NULL DEFAULT ''
            )""",
        ),
    ),
)

_MIGRATIONS += (
    (
        8,
        (
            # The registrar's bindings (gateway.callpath.registrar), so a restart loses no
            # registration: one row per contact of an AOR with its absolute expiry
            # and the flow it came through (source address, transport name).
            # ``node`` names the gateway instance ('' alone); ``position`` keeps
            # the registration order (the newest binding is tried first).
            """CREATE TABLE registrations (
                node TEXT NOT NULL DEFAULT '',
                aor TEXT NOT NULL,
                contact TEXT NOT NULL,
                position INTEGER NOT NULL,
                expires_at REAL NOT NULL,
                call_id TEXT NOT NULL,
                cseq INTEGER NOT NULL,
                source_host TEXT NOT NULL,
                source_port INTEGER NOT NULL,
                transport TEXT NOT NULL,
                q TEXT,
                PRIMARY KEY (node, aor, contact)
            )""",
        ),
    ),
)

_MIGRATIONS += (
    (
        9,
        (
            # A pause that ends by itself (a complaint ceiling's window); NULL: at resume.
            "ALTER TABLE agent_pauses ADD COLUMN until REAL",
            # `dialgate numbers reset`: the frequency cap counts a number's calls only
            # after its latest reset (call_starts stay: the cards' quotas count them).
            """CREATE TABLE number_resets (
                number TEXT PRIMARY KEY,
                at REAL NOT NULL,
                actor TEXT NOT NULL DEFAULT '',
                reason TEXT NOT NULL DEFAULT ''
            )""",
        ),
    ),
)

_MIGRATIONS += (
    (
        10,
        (
            # Write-ahead B-legs: a call's row is written before its B-leg
            # INVITE leaves, so a restart can CANCEL an unanswered INVITE (and ACK +
            # BYE a late 2xx) and answer the agent's INVITE. JSON with "v": 1.
            "ALTER TABLE call_dialogs ADD COLUMN b_invite TEXT",
            "ALTER TABLE call_dialogs ADD COLUMN a_invite TEXT",
        ),
    ),
)

_MIGRATIONS += (
    (
        11,
        (
            # The dialer's lead id of a call (X-Lead-Id), beside its campaign.
            "ALTER TABLE cdrs ADD COLUMN lead_id TEXT NOT NULL DEFAULT ''",
        ),
    ),
)

_MIGRATIONS += (
    (
        12,
        (
            # Which process of a `dialgate run --workers N` set holds a reservation or
            # a call in progress ('' for a single process): a restarted worker ends
            # its predecessor's calls, never a live sibling's (docs/workers.md).
            "ALTER TABLE call_starts ADD COLUMN owner TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE call_dialogs ADD COLUMN owner TEXT NOT NULL DEFAULT ''",
        ),
    ),
)

_MIGRATIONS += (
    (
        13,
        (
            # A counter per card, raised in the transaction of every change to its
            # call_starts rows: a process whose file another process wrote to
            # (PRAGMA data_version) rebuilds only the cards whose counter moved, not
            # every card (the workers of `dialgate run --workers N` write all the time).
            """CREATE TABLE card_usage_versions (
                card TEXT PRIMARY KEY,
                version INTEGER NOT NULL
            )""",
        ),
    ),
)

_MIGRATIONS += (
    (
        14,
        (
            # Which call_starts row each raise of a card's counter changed (written
            # beside sibling workers only): a process whose counters of a card, or whose
            # kept starts of an agent, are a few changes behind applies those rows
            # instead of re-reading the card's day or the agent's window.
            # ``seq`` orders every card's changes: the agents' kept starts follow them all.
            """CREATE TABLE card_usage_changes (
                seq INTEGER PRIMARY KEY,
                card TEXT NOT NULL,
                version INTEGER NOT NULL,
                row INTEGER NOT NULL,
                closed INTEGER NOT NULL
            )""",
            "CREATE UNIQUE INDEX card_usage_changes_card ON card_usage_changes (card, version)",
        ),
    ),
)

SCHEMA_VERSION = _MIGRATIONS[-1][0]

LOCK_STEP = 0.0002
"""Seconds between attempts at the write lock while sibling workers share the file."""

_BUMP = (
    "INSERT INTO card_usage_versions (card, version) VALUES (?, 1) "
    "ON CONFLICT(card) DO UPDATE SET version=version+1 RETURNING version"
)

CATCH_UP_MAX = 1024
"""Changes of a card by other processes applied to its running counters at most; more
(or any change not logged: a recovery, a prune, a process without siblings) and the
counters are rebuilt from the card's rows. A card is caught up when it is next used
here, so a card another worker dials is behind by what that worker did since this one
last used it (worker 0's status round reads every card every few seconds: 1,000
changes in 5 s is 100 calls a second on one card)."""

AGENT_CATCH_UP_MAX = 1024
"""Changes (of every card) applied to the agents' kept starts at most per look; more, or
any change not logged, and the kept starts are dropped (re-read on the next call)."""

CHANGES_KEPT = 4096
"""Entries of ``card_usage_changes`` kept per card (pruned every this many changes)."""

# A number's latest frequency-history reset (0 when never), as an SQL expression.
_RESET_AT = "COALESCE((SELECT at FROM number_resets WHERE number=?), 0)"

WAL_BACKSTOP_PAGES = 16_384
"""With ``autocheckpoint=False``: WAL pages (4 KiB) after which a commit checkpoints
anyway (64 MiB; ``dialgate run`` checkpoints every 0.2 s, ~1,800 pages at 300 calls/s)."""

AGENT_STARTS_KEPT = 4096
"""Agents whose call starts a store keeps at most (all are dropped when it is full)."""

AGENT_STARTS_TRIM = 3600.0
"""Seconds the longest window read may move on before an agent's kept starts older than
it are forgotten (so what is kept stays one window long, not the life of the process)."""

_COUNTED = (UsageStatus.RESERVED, UsageStatus.FINISHED, UsageStatus.ORPHANED)
_CARD_COLUMNS = (
    "id, carrier, number, pool, priority, quota_profile, state, reason, since, "
    "probation_until, profile_override, resume_at"
)


class _AgentStarts:
    """One agent's call starts from ``lower`` on, as :meth:`SQLiteStore.agent_usage` reads
    them: the start times of each call's rows that were not released.

    Built from the rows once, then kept by this connection's own writes (a reservation
    adds its start, a release takes it away); dropped when another connection commits
    (``PRAGMA data_version``), like the cards' running counters. ``firsts`` holds each
    call's earliest kept start, sorted, so the calls in a window are found by bisection
    instead of reading the agent's whole window from the table on every call.
    """

    __slots__ = ("calls", "firsts", "lower", "multi", "open", "rows", "span")

    def __init__(self, lower: float, rows: Iterable[tuple[int, str, float, str]]) -> None:
        self.lower = lower
        #: The longest window read so far: what is kept covers it.
        self.span = 0.0
        self.calls: dict[str, list[float]] = {}
        #: The ``call_starts`` rows kept (by rowid), and those still reserved (a release
        #: takes their start away): what another process's changes are matched against.
        self.rows: dict[int, float] = {}
        self.open: dict[int, tuple[str, float]] = {}
        for rowid, call_id, started, status in rows:
            self.calls.setdefault(call_id, []).append(float(started))
            self.rows[rowid] = float(started)
            if status == UsageStatus.RESERVED.value:
                self.open[rowid] = (call_id, float(started))
        #: Calls with more than one kept start (rare: each card's reservation of a call
        #: is closed before the next card is tried, and a released one is not kept).
        self.multi: set[str] = set()
        for call_id, times in self.calls.items():
            times.sort()
            if len(times) > 1:
                self.multi.add(call_id)
        self.firsts = KeptStarts(sorted(times[0] for times in self.calls.values()))

    def added(self, rowid: int, call_id: str, at: float) -> None:
        """Row ``rowid``, a reservation of the call written at ``at``, joins (once)."""
        if rowid in self.rows:
            return
        self.rows[rowid] = at
        self.open[rowid] = (call_id, at)
        self.started(call_id, at)

    def closed(self, rowid: int, *, released: bool) -> None:
        """Row ``rowid`` is reserved no more; a released start stops counting (once)."""
        entry = self.open.pop(rowid, None)
        if entry is not None and released:
            self.released(*entry)

    def started(self, call_id: str, at: float) -> None:
        """A reservation of the call was written at ``at``."""
        times = self.calls.get(call_id)
        if times is None:
            self.calls[call_id] = [at]
            self.firsts.add(at)
            return
        first = times[0]
        insort(times, at)
        self.multi.add(call_id)
        if times[0] != first:
            self._move(first, times[0])

    def released(self, call_id: str, at: float) -> None:
        """The call's reservation that started at ``at`` was released: it counts no more."""
        times = self.calls.get(call_id)
        if times is None or at not in times:
            return
        first = times[0]
        times.remove(at)
        if len(times) < 2:
            self.multi.discard(call_id)
        if not times:
            del self.calls[call_id]
            self.firsts.remove(first)
        elif times[0] != first:
            self._move(first, times[0])

    def _move(self, old: float, new: float) -> None:
        self.firsts.remove(old)
        self.firsts.add(new)

    def trim(self, since: float) -> None:
        """Forget the calls wholly before ``since`` (the window has moved on)."""
        self.firsts.drop_before(bisect_left(self.firsts.items, since))
        for call_id in [c for c, times in self.calls.items() if times[-1] < since]:
            del self.calls[call_id]
            self.multi.discard(call_id)
        self.lower = since
        self.rows = {r: at for r, at in self.rows.items() if at >= since or r in self.open}

    def since(self, since: float) -> StartTimes:
        """Each call's earliest kept start at or after ``since``, ascending (what the
        ``GROUP BY call_id`` query gives): a call whose earliest start is older counts
        from its first start inside the window, if any. A window of ``firsts`` (no copy
        of the agent's window, which a dialer fills with tens of thousands of calls a
        day) unless such a call is in it."""
        firsts = self.firsts.items
        lo = bisect_left(firsts, since)
        late = [
            times[bisect_left(times, since)]
            for times in (self.calls[call_id] for call_id in self.multi)
            if times[0] < since <= times[-1]
        ]
        if late:
            return StartTimes(sorted(firsts[lo:] + late))
        return self.firsts.window(lo)


@dataclass(slots=True, eq=False)
class _CardCounters:
    """Running usage of one card for one carrier day, kept beside the store's rows.

    Rebuilt from ``call_starts`` (one indexed read) the first time a card is
    read, after a restart, on a new carrier day, and whenever another
    connection committed to the file (``PRAGMA data_version``); updated by
    this store's own ``reserve``/``release``/``finish`` after their commits.
    The rows stay the durable record: these counters are a cache of them.

    Invariants (statuses counted as starts: reserved, finished, orphaned):

    - ``starts``: every counted start at or after ``lower``, ascending (older
      ones may linger until trimmed; reads slice by bisect). ``usage`` hands out
      a :class:`StartTimes` window of them (:class:`KeptStarts`: a start later
      than the last is appended in place, any other change goes to a copy while
      a window is still alive);
    - ``callees`` / ``talk``: counted rows started at or after ``day_start``;
      ``order`` ranks each callee of ``callees`` by its first start (``rank`` is
      the next), read by the :class:`CalleesToday` views ``usage`` hands out;
      ``shared``: a view may be out, so a removal copies ``order`` first;
    - ``in_use``: reserved rows, all time;
    - ``window``: the last ``outcome_window`` closed rows (finished, orphaned,
      released with a card failure) by ``(started_at, rowid)``, ascending;
      ``outcomes``: their outcomes as handed out, None once the window changed.
    """

    timezone: str
    day_start: float
    day_end: float
    lower: float
    starts: KeptStarts
    callees: dict[str, int]
    talk: float
    in_use: int
    window: list[tuple[float, int, CallOutcome]]
    order: dict[str, int] = field(default_factory=dict)
    rank: int = 0
    shared: bool = False
    memo: CardUsage | None = None
    memo_from: int = -1
    outcomes: tuple[CallOutcome, ...] | None = None
    #: The card's ``card_usage_versions`` counter these counters reflect.
    version: int = 0
    #: The store's ``_epoch`` when ``version`` was last compared with the file's (the
    #: counters are checked again, and caught up, only once another connection wrote).
    checked: int = -1

    def usage(self, now: float) -> CardUsage:
        """``CardUsage`` at ``now`` (same carrier day); memoized until the next change."""
        lower = min(self.day_start, now - 3600.0)
        starts = self.starts
        first = bisect_left(starts.items, lower)
        if first > 256 and first * 2 > len(starts.items):
            # Starts that left both the hour and the day: forget them.
            starts.drop_before(first)
            self.lower = lower
            first = 0
            self.memo = None
        if self.memo is not None and self.memo_from == first:
            return self.memo
        self.shared = True
        self.memo = CardUsage(
            call_starts=starts.window(first),
            callees_today=CalleesToday(self.order, self.rank),
            talk_seconds_today=float(self.talk),
            in_use=self.in_use,
            recent_outcomes=self._outcomes(),
        )
        self.memo_from = first
        return self.memo

    def started(self, started_at: float, callee: str) -> None:
        """A reservation was committed."""
        self.memo = None  # first: the memo's window is not a reader to copy for
        self.starts.add(started_at)
        if started_at >= self.day_start:
            count = self.callees.get(callee, 0)
            self.callees[callee] = count + 1
            if not count:
                self.order[callee] = self.rank
                self.rank += 1
        self.in_use += 1

    def _outcomes(self) -> tuple[CallOutcome, ...]:
        """The window's outcomes, built once per change of the window (not of the card)."""
        if self.outcomes is None:
            self.outcomes = tuple([entry[2] for entry in self.window])
        return self.outcomes

    def closed(
        self,
        rowid: int,
        started_at: float,
        callee: str,
        *,
        counted: bool,
        outcome: CallOutcome | None,
        window: int,
    ) -> None:
        """A reservation was released (``counted`` False) or finished; ``outcome`` joins the window."""
        self.memo = None  # first: the memo's window is not a reader to copy for
        self.in_use -= 1
        if not counted:
            self.starts.remove(started_at)
            if started_at >= self.day_start:
                left = self.callees.get(callee, 0) - 1
                if left > 0:
                    self.callees[callee] = left
                elif self.callees.pop(callee, None) is not None and callee in self.order:
                    if self.shared:  # a view reads this map: it keeps the old one
                        self.order = dict(self.order)
                        self.shared = False
                    del self.order[callee]
        elif outcome is not None and started_at >= self.day_start:
            self.talk += outcome.talk_seconds
        if outcome is not None and window > 0:
            insort(self.window, (started_at, rowid, outcome), key=lambda e: (e[0], e[1]))
            if len(self.window) > window:
                del self.window[: len(self.window) - window]
            self.outcomes = None


class SQLiteStore:
    """The embedded store. Implements :class:`UsageLedger` and :class:`CardRepository`.

    ``path`` is a file path or ``":memory:"`` (tests). ``busy_timeout_ms`` bounds
    how long a write waits for another process holding the file; past it the
    operation raises :class:`StoreUnavailable` rather than stalling the event loop.
    ``carrier_timezones`` maps carrier name → IANA zone: the carrier's calendar
    day for daily counters (UTC when absent). ``outcome_window`` bounds how many
    recent finished calls :meth:`card_usage` returns for rolling-rate quotas.
    ``autocheckpoint=False`` moves WAL checkpoints (the only fsync in WAL mode with
    ``synchronous=NORMAL``, a few ms) off the commit path: the caller then runs
    :meth:`checkpoint` periodically in a worker thread.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "NORMAL",
        busy_timeout_ms: int = 200,
        short_call_seconds: float = 10.0,
        carrier_timezones: dict[str, str] | None = None,
        outcome_window: int = 50,
        autocheckpoint: bool = True,
    ) -> None:
        if synchronous.upper() not in {"NORMAL", "FULL"}:
            raise ValueError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        self.path = str(path)
        self.short_call_seconds = short_call_seconds
        self.carrier_timezones: dict[str, str] = dict(carrier_timezones or {})
        self.outcome_window = outcome_window
        # Running per-card usage (a cache of call_starts, see _CardCounters), valid
        # while no other connection has committed: PRAGMA data_version tells.
        self._cards_usage: dict[str, _CardCounters] = {}
        # Each agent's call starts (see _AgentStarts), valid on the same terms.
        self._agents_usage: dict[str, _AgentStarts] = {}
        self._data_version: int | None = None
        #: Raised whenever ``PRAGMA data_version`` shows another connection committed: a
        #: kept card's counters (``_CardCounters.checked``) and the agents' kept starts
        #: (``_agents_checked``) are compared with the file again at their next use.
        self._epoch = 0
        self._agents_checked = 0
        #: Where the agents' kept starts stand in ``card_usage_changes`` (its ``seq``, and
        #: the sum of every card's counter then); None: not known, kept starts are
        #: dropped on change.
        self._log_seen: int | None = None
        self._versions_sum = 0
        #: Changes by other processes applied to the running counters (not rebuilt).
        self.counters_caught_up = 0
        #: Times a card's running counters were read from its rows.
        self.counters_rebuilt = 0
        # After a lock/busy/disk/I-O failure, writes are refused at once and
        # reads do not wait for locks, until a probe off the event loop writes again.
        self.guard = StoreGuard(self._probe, unavailable, name="sqlite")
        self._busy_timeout_ms = int(busy_timeout_ms)
        self._busy_applied = int(busy_timeout_ms)
        self._autocheckpoint = autocheckpoint
        # An open batch (see batch()): its token, and whether its transaction has begun.
        self._batch: object | None = None
        self._in_tx = False
        if self.path != ":memory:":
            # Callee numbers, DNC and complaints: 0600 whatever the umask;
            # SQLite gives the -wal/-shm it creates the database file's mode.
            try:
                prepare_private_file(Path(self.path), companions=("-wal", "-shm", "-journal"))
            except OSError as exc:
                raise StoreUnavailable(f"cannot create store {self.path}: {exc}") from exc
        try:
            self._db = sqlite3.connect(
                self.path,
                isolation_level=None,  # explicit BEGIN/COMMIT below
                timeout=busy_timeout_ms / 1000.0,
                check_same_thread=False,
            )
            self._db.row_factory = sqlite3.Row
            if self.path != ":memory:":
                mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreUnavailable(f"cannot enable WAL on {self.path} (got {mode})")
            self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            if not autocheckpoint:
                # The caller runs checkpoint() off the event loop instead: a checkpoint
                # fsyncs the database file, the one slow step of a commit in WAL mode.
                # SQLite's own stays as a backstop far above (a caller that falls behind
                # still bounds the WAL).
                self._db.execute(f"PRAGMA wal_autocheckpoint={WAL_BACKSTOP_PAGES}")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open store {self.path}: {exc}") from exc
        #: Written on the reservations and calls in progress this process creates
        #: (``w0``, ``w1`` … for the workers of ``dialgate run --workers N``; '' alone).
        self.owner = ""
        #: The owners of live sibling workers: their rows are never recovered here.
        self.siblings: tuple[str, ...] = ()
        #: True: :meth:`recover` and :meth:`call_dialogs` take every row but the live
        #: siblings' (a single process, or worker 0 at the first start of a set);
        #: False: only this process's ``owner`` (a worker restarted beside live ones).
        self.sweep = True
        self.migrate()
        #: The operator's records (card holders, audit log, appeals, complaint
        #: attribution): the same connection, transactions and guard.
        self.operator = OperatorRecords(self)

    # --- plumbing -------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (checkpointing the WAL when last)."""
        self.guard.stop()
        self._db.close()

    def _probe(self) -> None:
        """The guard's probe (a worker thread, its own connection): one real, tiny commit.

        Rewrites ``user_version`` unchanged: that commit needs the write lock and a
        WAL frame on disk, so it fails while another process holds the database or
        the disk is full, like the gateway's own writes would.
        """
        db = sqlite3.connect(self.path, timeout=0.05, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            db.execute(f"PRAGMA user_version={version}")
            db.execute("COMMIT")
            if not self._autocheckpoint:
                # That commit may land in WAL space already allocated; copying the WAL
                # into the database file is what fails first on a full disk.
                db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            db.close()

    def _unavailable(self, detail: str, exc: BaseException) -> StoreUnavailable:
        """``StoreUnavailable(detail)``; a failure of the store itself trips the guard."""
        if (
            isinstance(exc, sqlite3.DatabaseError)
            and not isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError)
            and self.path != ":memory:"
        ):
            self.guard.trip(f"{type(exc).__name__}: {exc}")
        return StoreUnavailable(detail, retry_after=self.guard.retry_after)

    def _guarded(self, *, write: bool) -> None:
        """Before touching the connection: refuse writes at once while the guard is open;
        reads then run without waiting for locks (busy timeout 0)."""
        if write:
            self.guard.check()
        busy = self._busy_timeout_ms if self.guard.healthy else 0
        if busy != self._busy_applied:
            self._db.execute(f"PRAGMA busy_timeout={busy}")
            self._busy_applied = busy

    def checkpoint(self) -> tuple[int, int]:
        """Copy committed WAL pages into the database file; return (WAL pages, copied).

        Uses its own short-lived connection and a PASSIVE checkpoint (never blocks
        writers), so it is safe to run in a worker thread (``asyncio.to_thread``)
        while the event loop keeps writing. Needed when ``autocheckpoint=False``.
        """
        if self.path == ":memory:":
            return (0, 0)
        try:
            db = sqlite3.connect(self.path, timeout=1.0)
            try:
                _busy, log, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            finally:
                db.close()
        except sqlite3.Error as exc:
            code = getattr(exc, "sqlite_errorcode", None)
            if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                # Another connection checkpointing at that moment: the next round copies.
                raise StoreUnavailable(f"checkpoint failed: {exc}") from exc
            # A full disk or an I/O error: commits may still land in WAL space allocated
            # earlier, but the store is failing: the guard refuses calls until its probe
            # (which checkpoints too) succeeds.
            raise self._unavailable(f"checkpoint failed: {exc}", exc) from exc
        return (int(log), int(copied))

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _begin(self) -> None:
        """``BEGIN IMMEDIATE``. Beside sibling workers (:attr:`siblings`) the write lock is
        waited for in steps of :data:`LOCK_STEP` seconds up to the busy timeout, not with
        SQLite's own sleeps (1, 2, 5, 10 … ms, each a stall of the event loop and unfair
        to a writer that keeps coming back). Two processes at 1,000 calls/s each (five
        writes a call): the worst wait 35-188 ms with SQLite's sleeps, close to the
        200 ms after which the guard refuses every call; 24-41 ms this way. The mean
        store time per call is about the same (0.6-1.6 ms, noisy on a shared box)."""
        db = self._db
        if not self.siblings or self._busy_applied == 0:
            db.execute("BEGIN IMMEDIATE")
            return
        attempts = max(1, int(self._busy_applied / 1000.0 / LOCK_STEP))
        db.execute("PRAGMA busy_timeout=0")
        try:
            for attempt in range(attempts):
                try:
                    db.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as exc:
                    busy = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY
                    if not busy or attempt == attempts - 1:
                        raise
                    time.sleep(LOCK_STEP)
        finally:
            db.execute(f"PRAGMA busy_timeout={self._busy_applied}")

    @contextmanager
    def _write(self, *, single: bool = False) -> Iterator[sqlite3.Connection]:
        """One short write transaction; SQLite errors become :class:`StoreUnavailable`.

        Inside :meth:`batch` the write joins the batch's one transaction instead
        (a savepoint, so a write that raises undoes only itself) and is committed
        with it. ``single``: the write is one statement, or refuses before its
        statement: SQLite's own statement rollback undoes it, no savepoint needed.
        """
        if self._batch is not None:
            with self._joined_write(single) as db:
                yield db
            return
        try:
            self._guarded(write=True)
            self._begin()
        except (sqlite3.Error, sqlite3.ProgrammingError) as exc:
            raise self._unavailable(f"store not writable: {exc}", exc) from exc
        try:
            yield self._db
        except sqlite3.IntegrityError:
            self._db.execute("ROLLBACK")
            raise
        except sqlite3.Error as exc:
            self._rollback_quietly()
            raise self._unavailable(f"store write failed: {exc}", exc) from exc
        except BaseException:
            self._rollback_quietly()
            raise
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback_quietly()
            raise self._unavailable(f"store commit failed: {exc}", exc) from exc

    @contextmanager
    def _joined_write(self, single: bool) -> Iterator[sqlite3.Connection]:
        """A write inside :meth:`batch`: the first one begins the transaction, later ones
        are savepoints in it (none for a ``single`` statement); nothing is committed here."""
        first = not self._in_tx
        savepoint = not first and not single
        try:
            self._guarded(write=True)
            if first:
                self._begin()
            elif savepoint:
                self._db.execute("SAVEPOINT joined")
        except StoreUnavailable:  # refused by the open guard: the batch is lost with it
            self._abort_batch()
            raise
        except (sqlite3.Error, sqlite3.ProgrammingError) as exc:
            self._abort_batch()
            raise self._unavailable(f"store not writable: {exc}", exc) from exc
        self._in_tx = True
        try:
            yield self._db
        except sqlite3.Error as exc:
            if isinstance(exc, sqlite3.IntegrityError):
                self._undo_joined(first, savepoint)
                raise
            # SQLite may have dropped the whole transaction: what joined it is gone,
            # and the rest of the batch writes (and fails or commits) on its own.
            self._abort_batch()
            raise self._unavailable(f"store write failed: {exc}", exc) from exc
        except BaseException:
            # Refused by the caller's own check (quota, admit): undo this write only.
            self._undo_joined(first, savepoint)
            raise
        if savepoint:
            self._db.execute("RELEASE joined")

    def _undo_joined(self, first: bool, savepoint: bool) -> None:
        """Undo one write of a batch (the whole transaction when it was the first; nothing
        for a single statement, which SQLite rolled back or which never ran)."""
        if first:
            self._in_tx = False
            self._rollback_quietly()
        elif savepoint:
            try:
                self._db.execute("ROLLBACK TO joined")
                self._db.execute("RELEASE joined")
            except sqlite3.Error:
                self._abort_batch()

    def _abort_batch(self) -> None:
        """Roll back the batch's transaction and end the batch (its writes are lost)."""
        self._batch = None
        self._in_tx = False
        self._rollback_quietly()
        self._cards_usage.clear()  # they counted what was rolled back
        self._agents_usage.clear()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Every write inside joins ONE transaction, committed at the end (or by :meth:`commit`).

        The store's writes otherwise commit one by one. A batch entered inside
        another batch joins it. Leaving the outermost batch commits (raising
        :class:`StoreUnavailable` when the commit fails: then nothing of the batch
        is stored); an exception leaving it rolls the batch back. Writes that
        raise inside it undo only themselves (a refused quota check), except a
        failure of the store itself, which rolls the whole batch back and ends it
        (the writes after it commit one by one, each with its own error).
        Synchronous only: a batch is never held across an ``await``.
        """
        if self._batch is not None:
            yield
            return
        token = object()
        self._batch = token
        try:
            yield
        except BaseException:
            if self._batch is token:
                self._abort_batch()
            raise
        if self._batch is token:
            self.commit()

    def commit(self) -> None:
        """Commit what joined the current batch now and end the batch (a no-op outside
        one); raises :class:`StoreUnavailable` when the commit fails (nothing stored)."""
        self._batch = None
        if not self._in_tx:
            return
        self._in_tx = False
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback_quietly()
            self._cards_usage.clear()
            self._agents_usage.clear()
            raise self._unavailable(f"store commit failed: {exc}", exc) from exc

    def _rollback_quietly(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            # The transaction is already gone (e.g. the error aborted it).
            return

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        try:
            self._guarded(write=False)
            return self._db.execute(sql, params).fetchall()
        except (sqlite3.Error, sqlite3.ProgrammingError) as exc:
            raise self._unavailable(f"store read failed: {exc}", exc) from exc

    def _sync(self, db: sqlite3.Connection) -> None:
        """Note whether another connection committed since the last look (``PRAGMA
        data_version``; also what makes a read fail closed once the file is gone). The
        kept counters and starts are then checked again where they are used
        (:meth:`_fresh`, :meth:`_fresh_agents`), not all of them here: beside sibling
        workers the file changes on nearly every call, mostly on cards this process is
        not about to use."""
        version = db.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version:
            return
        self._data_version = version
        self._epoch += 1

    def _card_version(self, db: sqlite3.Connection, card: str) -> int:
        row = db.execute("SELECT version FROM card_usage_versions WHERE card=?", (card,)).fetchone()
        return 0 if row is None else int(row[0])

    def _fresh(self, db: sqlite3.Connection, card: str) -> _CardCounters | None:
        """The card's kept counters, brought up to the file's state when another
        connection committed since they were last checked: its changes applied
        (:meth:`_catch_up`), or the counters forgotten (None: rebuilt on next use)."""
        counters = self._cards_usage.get(card)
        if counters is None or counters.checked == self._epoch:
            return counters
        epoch = self._epoch
        try:
            if self._card_version(db, card) != counters.version:
                # The counter, the change log and the rows read in one snapshot: a
                # commit landing between them would be applied twice, or half.
                with self._snapshot(db):
                    version = self._card_version(db, card)
                    if version != counters.version and not self._catch_up(
                        db, card, counters, version
                    ):
                        del self._cards_usage[card]
                        return None
        except BaseException:
            self._cards_usage.clear()
            raise
        counters.checked = epoch
        return counters

    def _fresh_agents(self, db: sqlite3.Connection) -> None:
        """Bring the agents' kept starts up to the file's state when another connection
        committed since they were last checked (:meth:`_catch_up_agents`), or drop them."""
        if self._agents_checked == self._epoch:
            return
        epoch = self._epoch
        if not self._agents_usage:
            self._log_seen = None
        else:
            try:
                with self._snapshot(db):
                    if not self._catch_up_agents(db):
                        self._agents_usage.clear()
                        self._log_seen = None
            except BaseException:
                self._agents_usage.clear()
                self._log_seen = None
                raise
        self._agents_checked = epoch

    @contextmanager
    def _snapshot(self, db: sqlite3.Connection) -> Iterator[None]:
        """Reads inside see one state of the file: a read transaction of their own, unless
        one (a write's, a batch's) is open already."""
        if db.in_transaction:
            yield
            return
        db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._rollback_quietly()
            raise
        db.execute("COMMIT")

    @staticmethod
    def _rows_by_id(
        cur: sqlite3.Cursor, columns: str, changes: list[Any]
    ) -> dict[int, tuple[Any, ...]]:
        """The ``call_starts`` rows that ``changes`` (``(…, row, closed)`` each) name, by
        rowid: ``rowid`` and ``columns`` of each."""
        ids = sorted({change[1] for change in changes})
        return {
            r[0]: r
            for r in cur.execute(
                f"SELECT rowid, {columns} FROM call_starts "
                f"WHERE rowid IN ({','.join('?' * len(ids))})",
                ids,
            ).fetchall()
        }

    def _log_position(self, db: sqlite3.Connection) -> None:
        """Remember where ``card_usage_changes`` and the cards' counters stand now (before
        an agent's starts are read: what commits after is applied at the next look, once)."""
        row = db.execute("SELECT MAX(seq) FROM card_usage_changes").fetchone()
        self._log_seen = int(row[0] or 0)
        self._versions_sum = self._versions_total(db)

    @staticmethod
    def _versions_total(db: sqlite3.Connection) -> int:
        """The sum of every card's change counter: how far it moved since a look is the
        number of changes made since, logged or not."""
        return int(
            db.execute("SELECT COALESCE(SUM(version), 0) FROM card_usage_versions").fetchone()[0]
        )

    def _catch_up_agents(self, db: sqlite3.Connection) -> bool:
        """Apply to the agents' kept starts the rows every card's changes since the last
        look started or closed (this process's own again: they are matched by rowid, so
        nothing counts twice); False when a change is not in the log (a process without
        siblings, a recovery, a prune) or there are too many: the kept starts are dropped."""
        seen = self._log_seen
        if seen is None:
            return False
        total = self._versions_total(db)
        moved = total - self._versions_sum
        cur = db.cursor()
        cur.row_factory = None
        changes = cur.execute(
            "SELECT seq, row, closed FROM card_usage_changes WHERE seq > ? ORDER BY seq LIMIT ?",
            (seen, AGENT_CATCH_UP_MAX + 1),
        ).fetchall()
        if len(changes) != moved or moved > AGENT_CATCH_UP_MAX:
            return False
        if changes:
            rows = self._rows_by_id(cur, "agent, call_id, started_at, status", changes)
            for _seq, rowid, closed in changes:
                row = rows.get(rowid)
                if row is None:
                    return False  # (changes applied so far are dropped with the rest)
                _rid, agent, call_id, started, status = row
                starts = self._agents_usage.get(str(agent))
                if starts is None:
                    continue
                if not closed:
                    if float(started) >= starts.lower:
                        starts.added(rowid, str(call_id), float(started))
                elif status == UsageStatus.RESERVED.value:
                    return False  # a close the row does not show: not this snapshot
                else:
                    starts.closed(rowid, released=status == UsageStatus.RELEASED.value)
            self._log_seen = int(changes[-1][0])
        self._versions_sum = total
        return True

    def _catch_up(
        self, db: sqlite3.Connection, card: str, counters: _CardCounters, version: int
    ) -> bool:
        """Apply to ``counters`` the changes of the card's rows from its version to
        ``version``, as the process that made them did to its own; False (nothing
        applied) when a change is not in ``card_usage_changes`` or its row does not
        read as that change left it: then the counters are rebuilt from the rows."""
        behind = version - counters.version
        if not 0 < behind <= CATCH_UP_MAX:
            return False
        cur = db.cursor()
        cur.row_factory = None
        changes = cur.execute(
            "SELECT version, row, closed FROM card_usage_changes "
            "WHERE card=? AND version > ? AND version <= ? ORDER BY version",
            (card, counters.version, version),
        ).fetchall()
        if len(changes) != behind:
            return False
        rows = self._rows_by_id(
            cur,
            "card, callee, started_at, status, answered, talk_seconds, failed, ended_at",
            changes,
        )
        steps: list[Callable[[], None]] = []
        for _version, rowid, closed in changes:
            row = rows.get(rowid)
            if row is None or row[1] != card:
                return False
            _rid, _card, callee, started, status, answered, talk, failed, ended = row
            started_at = float(started)
            if not closed:
                steps.append(functools.partial(counters.started, started_at, str(callee)))
                continue
            ended_at = None if ended is None else float(ended)
            if status == UsageStatus.FINISHED.value:
                counted = True
                outcome: CallOutcome | None = CallOutcome(
                    started_at, bool(answered), float(talk), failed=bool(failed), ended_at=ended_at
                )
            elif status == UsageStatus.RELEASED.value:
                counted = False
                outcome = (
                    CallOutcome(started_at, False, float(talk), failed=True, ended_at=ended_at)
                    if failed
                    else None
                )
            else:  # still reserved in this snapshot, or orphaned (recoveries log nothing)
                return False
            steps.append(
                functools.partial(
                    counters.closed,
                    rowid,
                    started_at,
                    str(callee),
                    counted=counted,
                    outcome=outcome,
                    window=self.outcome_window,
                )
            )
        for step in steps:
            step()
        counters.version = version
        self.counters_caught_up += behind
        return True

    @staticmethod
    def _bump(cur: sqlite3.Cursor, card: str) -> int:
        """Raise the card's change counter (inside the write); its new value."""
        return int(cur.execute(_BUMP, (card,)).fetchone()[0])

    def _changed(self, cur: sqlite3.Cursor, card: str, row: int, *, closed: bool) -> int:
        """A reservation of ``card`` started (its row written) or closed: raise the card's
        change counter and, beside sibling workers, log which row changed (they apply it
        to their counters instead of re-reading the card's day). The new counter."""
        version = self._bump(cur, card)
        if self.siblings:
            cur.execute(
                "INSERT OR REPLACE INTO card_usage_changes (card, version, row, closed) "
                "VALUES (?,?,?,?)",
                (card, version, row, int(closed)),
            )
            if version % CHANGES_KEPT == 0:
                cur.execute(
                    "DELETE FROM card_usage_changes WHERE card=? AND version <= ?",
                    (card, version - CHANGES_KEPT),
                )
        return version

    def _owned(self) -> tuple[str, tuple[str, ...]]:
        """The SQL condition (and its parameters) on ``owner`` of the rows a restart of
        this process recovers: see :attr:`sweep`."""
        if not self.sweep:
            return "owner=?", (self.owner,)
        if not self.siblings:
            return "1", ()
        return f"owner NOT IN ({','.join('?' * len(self.siblings))})", self.siblings

    def forget_counters(self) -> None:
        """Drop the running per-card counters; the next read rebuilds them from the rows."""
        self._cards_usage.clear()
        self._agents_usage.clear()

    def schema_version(self) -> int:
        """The schema version recorded in the database (0 when empty)."""
        rows = self._read(
            "SELECT name FROM sqlite_master WHERE type='table' AND name='schema_version'"
        )
        if not rows:
            return 0
        row = self._read("SELECT MAX(version) AS v FROM schema_version")
        return int(row[0]["v"] or 0)

    def migrate(self) -> int:
        """Apply missing migrations in order; return the number applied (0 when current)."""
        applied = 0
        with self._write() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            current = db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
            if current > SCHEMA_VERSION:
                raise StoreUnavailable(
                    f"store schema {current} is newer than this gateway ({SCHEMA_VERSION})"
                )
            for version, statements in _MIGRATIONS:
                if version <= current:
                    continue
                for sql in statements:
                    db.execute(sql)
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                applied += 1
            # The operator's tables: created when missing, outside the versioned schema.
            create_operator_tables(db)
        return applied

    # --- cards ----------------------------------------------------------------------

    @staticmethod
    def _card(row: sqlite3.Row) -> StoredCard:
        return StoredCard(
            id=row["id"],
            carrier=row["carrier"],
            number=row["number"],
            pool=row["pool"],
            priority=int(row["priority"]),
            quota_profile=row["quota_profile"],
            state=row["state"],
            reason=row["reason"],
            since=float(row["since"]),
            probation_until=row["probation_until"],
            profile_override=row["profile_override"],
            resume_at=row["resume_at"],
        )

    def upsert_card(self, card: StoredCard) -> StoredCard:
        """Insert a configured card, or update its static fields keeping its stored state.

        Returns the card as stored: a card suspended before a restart stays suspended.
        """
        with self._write() as db:
            db.execute(
                f"INSERT INTO cards ({_CARD_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(id) DO UPDATE SET carrier=excluded.carrier, "
                "number=excluded.number, pool=excluded.pool, priority=excluded.priority, "
                "quota_profile=excluded.quota_profile",
                (
                    card.id,
                    card.carrier,
                    card.number,
                    card.pool,
                    card.priority,
                    card.quota_profile,
                    card.state,
                    card.reason,
                    card.since,
                    card.probation_until,
                    card.profile_override,
                    card.resume_at,
                ),
            )
            row = db.execute(f"SELECT {_CARD_COLUMNS} FROM cards WHERE id=?", (card.id,)).fetchone()
        self._cards_usage.pop(card.id, None)  # its carrier (so its day) may have changed
        return self._card(row)

    def get_card(self, card_id: str) -> StoredCard | None:
        """The stored card, or None."""
        rows = self._read(f"SELECT {_CARD_COLUMNS} FROM cards WHERE id=?", (card_id,))
        return self._card(rows[0]) if rows else None

    def load_cards(self) -> list[StoredCard]:
        """Every stored card, ordered by pool, priority, id."""
        rows = self._read(f"SELECT {_CARD_COLUMNS} FROM cards ORDER BY pool, priority, id")
        return [self._card(r) for r in rows]

    def save_transition(self, card: StoredCard, transition: TransitionRecord) -> None:
        """Store the card's new state and the transition record in one transaction."""
        with self._write() as db:
            cur = db.execute(
                "UPDATE cards SET state=?, reason=?, since=?, probation_until=?, "
                "profile_override=?, resume_at=? WHERE id=?",
                (
                    card.state,
                    card.reason,
                    card.since,
                    card.probation_until,
                    card.profile_override,
                    card.resume_at,
                    card.id,
                ),
            )
            if cur.rowcount != 1:
                raise LookupError(f"unknown card {card.id!r}")
            db.execute(
                "INSERT INTO card_transitions (card, at, from_state, to_state, reason, cause, "
                "evidence, actor) VALUES (?,?,?,?,?,?,?,?)",
                (
                    transition.card,
                    transition.at,
                    transition.from_state,
                    transition.to_state,
                    transition.reason,
                    transition.cause,
                    json.dumps(transition.evidence, sort_keys=True),
                    transition.actor,
                ),
            )

    def transitions(self, card_id: str) -> list[TransitionRecord]:
        """The card's state history, oldest first."""
        rows = self._read(
            "SELECT card, at, from_state, to_state, reason, cause, evidence, actor "
            "FROM card_transitions WHERE card=? ORDER BY at, id",
            (card_id,),
        )
        return [
            TransitionRecord(
                card=r["card"],
                at=float(r["at"]),
                from_state=r["from_state"],
                to_state=r["to_state"],
                reason=r["reason"],
                cause=r["cause"],
                evidence=json.loads(r["evidence"]),
                actor=r["actor"],
            )
            for r in rows
        ]

    # --- usage (write-ahead reservations) -------------------------------------------

    def reserve(
        self,
        card: str,
        call_id: str,
        callee: str,
        now: float,
        *,
        profile: QuotaProfile | None = None,
        admit: Callable[[CardUsage], None] | None = None,
        agent: str = "",
    ) -> None:
        """Commit a call start on ``card`` before the INVITE leaves.

        ``agent`` (softphone user or dialer peer) feeds the agent-limit policy.

        The check and the write are one ``BEGIN IMMEDIATE`` transaction, so they
        are atomic even when several processes share the file:

        - with ``profile``, ``policies.quotas.would_exceed`` is evaluated on the
          usage read inside the transaction; a broken limit raises
          :class:`QuotaExceeded` and nothing is written;
        - ``admit`` (any callable over that usage) may raise to refuse likewise.
        """
        try:
            with self._write() as db:
                self._sync(db)
                counters = self._fresh(db, card)
                if profile is not None or admit is not None:
                    counters = self._counters(db, card, now)
                    usage = counters.usage(now)
                    if profile is not None:
                        exhausted = would_exceed(profile, usage, counters.timezone, callee, now)
                        if exhausted is not None:
                            raise QuotaExceeded(card, exhausted)
                    if admit is not None:
                        admit(usage)
                cur = db.cursor()
                cur.row_factory = None
                for tried, status in cur.execute(
                    "SELECT card, status FROM call_starts WHERE call_id=?", (call_id,)
                ).fetchall():
                    if status == UsageStatus.RESERVED.value:
                        raise ReservationError(
                            f"call {call_id!r} already holds a reservation on {tried!r}"
                        )
                    if tried == card:
                        raise ReservationError(f"call {call_id!r} already tried card {card!r}")
                cur.execute(
                    "INSERT INTO call_starts (call_id, card, callee, started_at, status, agent, "
                    "owner) VALUES (?,?,?,?,?,?,?)",
                    (call_id, card, callee, now, UsageStatus.RESERVED.value, agent, self.owner),
                )
                rowid = int(cur.lastrowid or 0)
                version = self._changed(cur, card, rowid, closed=False)
        except StoreUnavailable:
            self._cards_usage.clear()
            self._agents_usage.clear()
            raise
        if counters is not None and self._cards_usage.get(card) is counters:
            counters.started(float(now), callee)
            counters.version = version
        starts = self._agents_usage.get(agent)
        if starts is not None:
            starts.added(rowid, call_id, float(now))

    def release(self, call_id: str, now: float, *, failed: bool = True) -> str | None:
        """Undo the call's open reservation (failed before the callee was alerted).

        The start stops counting; with ``failed`` (the default: a card-level
        failure such as a 403 or Timer B) it still counts toward the card's
        consecutive-failures streak. Returns the card, or None if nothing was open.
        """
        rows = self._close(
            "UPDATE call_starts SET status=?, failed=?, ended_at=? WHERE call_id=? AND status=? "
            "RETURNING rowid, card, callee, started_at, talk_seconds, agent",
            (UsageStatus.RELEASED.value, int(failed), now, call_id, UsageStatus.RESERVED.value),
        )
        if not rows:
            return None
        for rowid, card, callee, started, talk, agent in rows:
            started_at = float(started)
            starts = self._agents_usage.get(agent)
            if starts is not None:
                starts.closed(rowid, released=True)
            counters = self._cards_usage.get(card)
            if counters is not None:
                outcome = (
                    CallOutcome(started_at, False, float(talk), failed=True, ended_at=float(now))
                    if failed
                    else None
                )
                counters.closed(
                    rowid,
                    started_at,
                    callee,
                    counted=False,
                    outcome=outcome,
                    window=self.outcome_window,
                )
        return str(rows[0][1])

    def _close(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        """Run one UPDATE … RETURNING that closes a reservation (its rows: rowid, card, …);
        keep the counters honest."""
        try:
            with self._write() as db:
                self._sync(db)
                cur = db.cursor()
                cur.row_factory = None
                rows = cur.execute(sql, params).fetchall()
                for card in {r[1] for r in rows}:
                    self._fresh(db, card)  # others' changes first: this one is applied after
                versions = {r[1]: self._changed(cur, r[1], r[0], closed=True) for r in rows}
        except StoreUnavailable:
            self._cards_usage.clear()
            self._agents_usage.clear()
            raise
        for card, version in versions.items():
            counters = self._cards_usage.get(card)
            if counters is not None:
                counters.version = version
        return rows

    def finish(
        self,
        call_id: str,
        now: float,
        *,
        answered: bool,
        talk_seconds: float = 0.0,
        short: bool | None = None,
        failed: bool = False,
        answered_at: float | None = None,
    ) -> str | None:
        """Record the outcome of the call's open reservation; return its card.

        ``short`` defaults to "answered and talked less than ``short_call_seconds``".
        ``failed`` marks a card-level failure after the callee was alerted.
        ``answered_at`` defaults to ``now - talk_seconds`` for answered calls.
        """
        if short is None:
            short = answered and talk_seconds < self.short_call_seconds
        if answered and answered_at is None:
            answered_at = now - talk_seconds
        if not answered:
            answered_at = None
        rows = self._close(
            "UPDATE call_starts SET status=?, answered=?, talk_seconds=?, short=?, "
            "failed=?, answered_at=?, ended_at=? WHERE call_id=? AND status=? "
            "RETURNING rowid, card, callee, started_at, agent",
            (
                UsageStatus.FINISHED.value,
                int(answered),
                float(talk_seconds),
                int(bool(short)),
                int(failed),
                answered_at,
                now,
                call_id,
                UsageStatus.RESERVED.value,
            ),
        )
        if not rows:
            return None
        for rowid, card, callee, started, agent in rows:
            started_at = float(started)
            starts = self._agents_usage.get(agent)
            if starts is not None:
                starts.closed(rowid, released=False)
            counters = self._cards_usage.get(card)
            if counters is not None:
                outcome = CallOutcome(
                    started_at,
                    bool(answered),
                    float(talk_seconds),
                    failed=bool(failed),
                    ended_at=float(now),
                )
                counters.closed(
                    rowid,
                    started_at,
                    callee,
                    counted=True,
                    outcome=outcome,
                    window=self.outcome_window,
                )
        return str(rows[0][1])

    def recover(self, now: float) -> int:
        """After a restart: turn reservations left open by a dead process into orphans.

        Orphans keep counting as call starts (over-count, never under-count) but no
        longer as concurrent calls. Call once at startup, before taking traffic.
        Only the rows of dead processes: see :attr:`owner`, :attr:`sweep`.
        """
        self._cards_usage.clear()
        self._agents_usage.clear()
        owned, params = self._owned()
        with self._write() as db:
            cards = db.execute(
                f"UPDATE call_starts SET status=?, ended_at=? WHERE status=? AND {owned} "
                "RETURNING card",
                (UsageStatus.ORPHANED.value, now, UsageStatus.RESERVED.value, *params),
            ).fetchall()
            cur = db.cursor()
            for card in {str(r[0]) for r in cards}:
                self._bump(cur, card)
            return len(cards)

    def _timezone(self, db: sqlite3.Connection, card: str) -> str:
        row = db.execute("SELECT carrier FROM cards WHERE id=?", (card,)).fetchone()
        if row is None:
            return "UTC"
        return self.carrier_timezones.get(row["carrier"], "UTC")

    def card_usage(self, card_id: str, now: float) -> CardUsage:
        """``policies.quotas.CardUsage`` of the card at ``now`` (the ``CardUsageView`` API).

        Daily fields cover the carrier's calendar day (``carrier_timezones``).
        Served from running counters (rebuilt from the rows when stale), so the
        cost does not grow with the card's history.
        """
        try:
            self._guarded(write=False)
            self._sync(self._db)
            return self._counters(self._db, card_id, now).usage(now)
        except (sqlite3.Error, sqlite3.ProgrammingError) as exc:
            raise self._unavailable(f"store read failed: {exc}", exc) from exc

    def recount_card_usage(self, card_id: str, now: float) -> CardUsage:
        """``card_usage`` computed from the rows alone, bypassing the running counters."""
        try:
            self._guarded(write=False)
            return self._load_counters(self._db, card_id, now).usage(now)
        except (sqlite3.Error, sqlite3.ProgrammingError) as exc:
            raise self._unavailable(f"store read failed: {exc}", exc) from exc

    def _counters(self, db: sqlite3.Connection, card: str, now: float) -> _CardCounters:
        """The card's running counters for the carrier day of ``now`` (loaded when missing)."""
        counters = self._fresh(db, card)
        if (
            counters is not None
            and counters.day_start <= now < counters.day_end
            and min(counters.day_start, now - 3600.0) >= counters.lower
        ):
            return counters
        counters = self._load_counters(db, card, now)
        counters.checked = self._epoch
        self._cards_usage[card] = counters
        self.counters_rebuilt += 1
        return counters

    def _load_counters(self, db: sqlite3.Connection, card: str, now: float) -> _CardCounters:
        """The card's counters read from its rows, with the change counter they reflect
        (one snapshot: :meth:`_catch_up` applies exactly the changes after it)."""
        with self._snapshot(db):
            return self._read_counters(db, card, now)

    def _read_counters(self, db: sqlite3.Connection, card: str, now: float) -> _CardCounters:
        version = self._card_version(db, card)
        tz = self._timezone(db, card)
        start, end = day_bounds(now, tz)
        lower = min(start, now - 3600.0)
        counted = ",".join("?" * len(_COUNTED))
        counted_values = tuple(s.value for s in _COUNTED)
        cur = db.cursor()
        cur.row_factory = None
        rows = cur.execute(
            "SELECT started_at, callee, talk_seconds FROM call_starts "
            f"WHERE card=? AND started_at >= ? AND status IN ({counted}) ORDER BY started_at",
            (card, lower, *counted_values),
        ).fetchall()
        in_use = cur.execute(
            "SELECT COUNT(*) FROM call_starts WHERE card=? AND status=?",
            (card, UsageStatus.RESERVED.value),
        ).fetchone()[0]
        recent = cur.execute(
            "SELECT started_at, rowid, answered, talk_seconds, failed, ended_at FROM call_starts "
            "WHERE card=? AND (status IN (?, ?) OR (status=? AND failed=1)) "
            "ORDER BY started_at DESC, rowid DESC LIMIT ?",
            (
                card,
                UsageStatus.FINISHED.value,
                UsageStatus.ORPHANED.value,
                UsageStatus.RELEASED.value,
                self.outcome_window,
            ),
        ).fetchall()
        callees: dict[str, int] = {}
        talk = 0.0
        for started, callee, seconds in rows:
            if started >= start:
                callees[callee] = callees.get(callee, 0) + 1
                talk += seconds
        return _CardCounters(
            timezone=tz,
            day_start=start,
            day_end=end,
            lower=lower,
            starts=KeptStarts([r[0] for r in rows]),
            callees=callees,
            order={callee: rank for rank, callee in enumerate(callees)},
            rank=len(callees),
            talk=float(talk),
            in_use=int(in_use),
            window=[
                (
                    started,
                    rowid,
                    CallOutcome(
                        started_at=started,
                        answered=bool(answered),
                        talk_seconds=seconds,
                        failed=bool(failed),
                        ended_at=ended,
                    ),
                )
                for started, rowid, answered, seconds, failed, ended in reversed(recent)
            ],
            version=version,
        )

    def usage(
        self, card: str, now: float, *, day_start_at: float, window: int = 50
    ) -> CardUsageFacts:
        """Aggregated usage facts (counts, not lists) for wallboards and reports."""
        try:
            self._guarded(write=False)
            return self._usage(self._db, card, now, day_start_at=day_start_at, window=window)
        except (sqlite3.Error, sqlite3.ProgrammingError) as exc:
            raise self._unavailable(f"store read failed: {exc}", exc) from exc

    @staticmethod
    def _usage(
        db: sqlite3.Connection, card: str, now: float, *, day_start_at: float, window: int
    ) -> CardUsageFacts:
        counted = ",".join("?" * len(_COUNTED))
        counted_values = tuple(s.value for s in _COUNTED)
        # Only rows of the current day (or the last hour, across midnight) are scanned,
        # through the (card, started_at) index: the cost does not grow with history.
        lower = min(day_start_at, now - 3600.0)
        row = db.execute(
            "SELECT "
            "COALESCE(SUM(started_at > ?), 0) AS minute, "
            "COALESCE(SUM(started_at > ?), 0) AS hour, "
            "COALESCE(SUM(started_at >= ?), 0) AS today, "
            "COALESCE(SUM(CASE WHEN started_at >= ? THEN talk_seconds ELSE 0 END), 0) AS talk, "
            "COUNT(DISTINCT CASE WHEN started_at >= ? THEN callee END) AS callees "
            f"FROM call_starts WHERE card=? AND started_at >= ? AND status IN ({counted})",
            (
                now - 60.0,
                now - 3600.0,
                day_start_at,
                day_start_at,
                day_start_at,
                card,
                lower,
                *counted_values,
            ),
        ).fetchone()
        last = db.execute(
            f"SELECT started_at FROM call_starts WHERE card=? AND status IN ({counted}) "
            "ORDER BY started_at DESC LIMIT 1",
            (card, *counted_values),
        ).fetchone()
        # A reservation left open by a crash before ``recover()`` ran is older than a day;
        # count open reservations over all time so concurrency is never under-counted.
        concurrent = db.execute(
            "SELECT COUNT(*) FROM call_starts WHERE card=? AND status=?",
            (card, UsageStatus.RESERVED.value),
        ).fetchone()[0]
        recent = db.execute(
            "SELECT answered, short, failed FROM call_starts "
            "WHERE card=? AND (status IN (?, ?) OR (status=? AND failed=1)) "
            "ORDER BY started_at DESC, rowid DESC LIMIT ?",
            (
                card,
                UsageStatus.FINISHED.value,
                UsageStatus.ORPHANED.value,
                UsageStatus.RELEASED.value,
                max(window, 0),
            ),
        ).fetchall()
        consecutive = 0
        for r in recent:
            if not r["failed"]:
                break
            consecutive += 1
        return CardUsageFacts(
            card=card,
            now=now,
            calls_last_minute=int(row["minute"]),
            calls_last_hour=int(row["hour"]),
            calls_today=int(row["today"]),
            concurrent=int(concurrent),
            last_start_at=None if last is None else float(last["started_at"]),
            talk_seconds_today=float(row["talk"]),
            distinct_callees_today=int(row["callees"]),
            window_size=window,
            window_calls=len(recent),
            window_answered=sum(1 for r in recent if r["answered"]),
            window_short=sum(1 for r in recent if r["answered"] and r["short"]),
            consecutive_failures=consecutive,
        )

    def prune_usage(self, before: float) -> int:
        """Delete closed usage rows that started before ``before``; return how many.

        Open reservations are never deleted. Keep at least the longest window any
        policy reads (a carrier day, rolling-rate windows, frequency caps: weeks);
        CDRs are separate and untouched.
        """
        self._cards_usage.clear()
        self._agents_usage.clear()
        with self._write() as db:
            cur = db.execute(
                "DELETE FROM call_starts WHERE started_at < ? AND status != ?",
                (before, UsageStatus.RESERVED.value),
            )
            db.execute("UPDATE card_usage_versions SET version=version+1")
            return int(cur.rowcount)

    def open_reservations(self) -> list[tuple[str, str]]:
        """``(call_id, card)`` of every reservation still open."""
        rows = self._read(
            "SELECT call_id, card FROM call_starts WHERE status=? ORDER BY started_at",
            (UsageStatus.RESERVED.value,),
        )
        return [(r["call_id"], r["card"]) for r in rows]

    # --- dialogs of calls in progress ------------------------------------------------

    def save_call_dialogs(self, record: CallDialogs) -> None:
        """Store (or replace) a call in progress; durable once this returns (one write)."""
        with self._write(single=True) as db:
            db.execute(
                "INSERT OR REPLACE INTO call_dialogs (call_key, call_id, card, callee, "
                "attempt_at, answer_at, a_leg, b_leg, cdr, b_invite, a_invite, owner) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    record.key,
                    record.call_id,
                    record.card,
                    record.callee,
                    record.attempt_at,
                    record.answer_at,
                    _json_or_none(record.a_leg),
                    _json_or_none(record.b_leg),
                    record.cdr,
                    _json_or_none(record.b_invite),
                    _json_or_none(record.a_invite),
                    self.owner,
                ),
            )

    def update_call_dialog_leg(self, key: str, side: str, leg: dict[str, Any]) -> bool:
        """Replace one leg (``"a"`` or ``"b"``) of a stored call; False when no row."""
        if side not in ("a", "b"):
            raise ValueError(f"side must be 'a' or 'b', not {side!r}")
        with self._write() as db:
            cur = db.execute(
                f"UPDATE call_dialogs SET {side}_leg=? WHERE call_key=?",
                (_json_or_none(leg), key),
            )
            return cur.rowcount > 0

    def answer_call_dialogs(
        self,
        key: str,
        *,
        answer_at: float,
        a_leg: dict[str, Any] | None,
        b_leg: dict[str, Any],
        cdr: str,
    ) -> bool:
        """The stored call was answered: its answer time, confirmed legs and CDR (one
        write); False when there is no row.

        An ``UPDATE`` of the columns the answer changes: the stored INVITEs stay as the
        write-ahead wrote them (rewriting the whole row cost 66 µs a call, this 37).
        """
        with self._write(single=True) as db:
            cur = db.execute(
                "UPDATE call_dialogs SET answer_at=?, a_leg=?, b_leg=?, cdr=? WHERE call_key=?",
                (answer_at, _json_or_none(a_leg), _json_or_none(b_leg), cdr, key),
            )
            return cur.rowcount > 0

    def delete_call_dialogs(self, key: str) -> bool:
        """Forget a call's dialogs (the call ended); False when there was no row."""
        with self._write(single=True) as db:
            cur = db.execute("DELETE FROM call_dialogs WHERE call_key=?", (key,))
            return cur.rowcount > 0

    def call_dialogs(self) -> list[CallDialogs]:
        """Every stored call (oldest first): after a crash, the calls a dead process left up.

        Only the rows a restart of this process recovers (:attr:`sweep`): never a
        live sibling worker's calls.
        """
        owned, params = self._owned()
        rows = self._read(
            f"SELECT * FROM call_dialogs WHERE {owned} ORDER BY attempt_at, call_key", params
        )
        return [
            CallDialogs(
                key=r["call_key"],
                call_id=r["call_id"],
                card=r["card"],
                callee=r["callee"],
                attempt_at=float(r["attempt_at"]),
                answer_at=None if r["answer_at"] is None else float(r["answer_at"]),
                a_leg=_leg_from_json(r["a_leg"]),
                b_leg=_leg_from_json(r["b_leg"]),
                cdr=r["cdr"],
                b_invite=_leg_from_json(r["b_invite"]),
                a_invite=_leg_from_json(r["a_invite"]),
            )
            for r in rows
        ]

    # --- CDRs -----------------------------------------------------------------------

    def add_cdr(self, record: CallRecord) -> None:
        """Commit one call detail record (durable once this returns)."""
        self.add_cdrs([record])

    def add_cdrs(self, records: list[CallRecord]) -> None:
        """Commit several records in one transaction (for a batching writer)."""
        with self._write(single=len(records) == 1) as db:
            db.executemany(
                "INSERT INTO cdrs (call_id, attempt_at, ring_at, answer_at, end_at, "
                "origin_kind, origin, campaign, cards, destination, outcome, final_code, "
                "failovers, policy_reason, lead_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        r.call_id,
                        r.attempt_at,
                        r.ring_at,
                        r.answer_at,
                        r.end_at,
                        r.origin_kind.value,
                        r.origin,
                        r.campaign,
                        json.dumps(list(r.cards)),
                        r.destination,
                        r.outcome.value,
                        r.final_code,
                        r.failovers,
                        r.policy_reason,
                        r.lead_id,
                    )
                    for r in records
                ],
            )

    def cdrs(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        call_id: str | None = None,
        destination: str | None = None,
        limit: int = 10_000,
    ) -> list[CallRecord]:
        """Stored records by attempt time (oldest first), optionally filtered."""
        clauses: list[str] = []
        params: list[Any] = []
        if destination is not None:
            clauses.append("destination = ?")
            params.append(destination)
        if since is not None:
            clauses.append("attempt_at >= ?")
            params.append(since)
        if until is not None:
            clauses.append("attempt_at < ?")
            params.append(until)
        if call_id is not None:
            clauses.append("call_id = ?")
            params.append(call_id)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._read(
            f"SELECT * FROM cdrs {where} ORDER BY attempt_at, id LIMIT ?", (*params, limit)
        )
        return [
            CallRecord(
                call_id=r["call_id"],
                attempt_at=float(r["attempt_at"]),
                destination=r["destination"],
                outcome=Outcome(r["outcome"]),
                final_code=int(r["final_code"]),
                origin_kind=Origin(r["origin_kind"]),
                origin=r["origin"],
                campaign=r["campaign"],
                cards=tuple(json.loads(r["cards"])),
                ring_at=r["ring_at"],
                answer_at=r["answer_at"],
                end_at=r["end_at"],
                failovers=int(r["failovers"]),
                policy_reason=r["policy_reason"],
                lead_id=r["lead_id"],
            )
            for r in rows
        ]

    # --- consent, DNC, complaints ---------------------------------------------------

    def add_consent(
        self,
        number: str,
        now: float,
        *,
        campaign: str = "",
        expires_at: float | None = None,
        source: str = "",
        evidence: str = "",
    ) -> None:
        """Record (or renew) the callee's consent, for one campaign or all (``""``).

        ``evidence`` is a reference an appeal can point to (recording id, form id).
        """
        with self._write() as db:
            db.execute(
                "INSERT INTO consent (number, campaign, granted_at, expires_at, revoked_at, "
                "source, evidence) VALUES (?,?,?,?,NULL,?,?) "
                "ON CONFLICT(number, campaign) DO UPDATE SET "
                "granted_at=excluded.granted_at, expires_at=excluded.expires_at, "
                "revoked_at=NULL, source=excluded.source, evidence=excluded.evidence",
                (number, campaign, now, expires_at, source, evidence),
            )

    def revoke_consent(
        self, number: str, now: float, *, campaign: str | None = None, source: str = ""
    ) -> int:
        """The callee said no: revoke one campaign, or every campaign when None.

        A revocation is recorded even when no consent was on file (``dnc-only``
        mode still refuses a callee who refused). Returns rows changed or added.
        """
        scope = "" if campaign is None else campaign
        with self._write() as db:
            if campaign is None:
                cur = db.execute(
                    "UPDATE consent SET revoked_at=? WHERE number=? AND revoked_at IS NULL",
                    (now, number),
                )
            else:
                cur = db.execute(
                    "UPDATE consent SET revoked_at=? WHERE number=? AND campaign=? "
                    "AND revoked_at IS NULL",
                    (now, number, campaign),
                )
            changed = int(cur.rowcount)
            added = db.execute(
                "INSERT OR IGNORE INTO consent (number, campaign, granted_at, expires_at, "
                "revoked_at, source) VALUES (?,?,?,NULL,?,?)",
                (number, scope, now, now, source or "revocation"),
            )
            return changed + int(added.rowcount)

    # --- the lookups the policies read (policies.* protocols) -----------------------

    def consent_status(
        self, e164: str, campaign: str | None, now: datetime
    ) -> tuple[ConsentStatus, ConsentRecord | None]:
        """``policies.consent.ConsentLookup``: the status for (number, campaign) at ``now``."""
        rows = self._read(
            "SELECT campaign, granted_at, expires_at, revoked_at, source, evidence "
            "FROM consent WHERE number=?",
            (e164,),
        )

        def dt(value: float | None) -> datetime | None:
            return None if value is None else datetime.fromtimestamp(value, UTC)

        records = [
            ConsentRecord(
                number=e164,
                campaign=r["campaign"] or None,
                granted_at=datetime.fromtimestamp(r["granted_at"], UTC),
                expires_at=dt(r["expires_at"]),
                source=r["source"],
                evidence=r["evidence"],
                revoked_at=dt(r["revoked_at"]),
            )
            for r in rows
        ]
        return resolve_status(records, campaign, now)

    def lookup(self, e164: str) -> DncEntry | None:
        """``policies.dnc.DncLookup``: the internal DNC entry for the number, or None."""
        rows = self._read("SELECT added_at, source, note FROM dnc WHERE number=?", (e164,))
        if not rows:
            return None
        row = rows[0]
        try:
            source = DncSource(row["source"])
        except ValueError:
            source = DncSource.MANUAL
        return DncEntry(
            number=e164,
            list_name="internal",
            source=source,
            added_at=datetime.fromtimestamp(row["added_at"], UTC),
            note=row["note"],
        )

    def attempts(self, e164: str, since: float) -> list[float]:
        """``policies.frequency.DestinationHistory``: attempt times to ``e164`` since ``since``.

        One attempt per call (a failover is the same attempt); attempts released
        before the callee was alerted do not count (the callee's phone never rang).
        """
        # One query per call: the number's latest reset (numbers reset) moves `since`.
        rows = self._read(
            "SELECT MIN(started_at) AS t FROM call_starts WHERE callee=? AND started_at >= "
            f"MAX(?, {_RESET_AT}) AND status != ? GROUP BY call_id ORDER BY t",
            (e164, since, e164, UsageStatus.RELEASED.value),
        )
        return [float(r["t"]) for r in rows]

    def answers(self, e164: str, since: float) -> list[float]:
        """``policies.frequency.DestinationHistory``: answer times of calls to ``e164``."""
        rows = self._read(
            "SELECT answered_at FROM call_starts WHERE callee=? AND answered=1 "
            f"AND answered_at IS NOT NULL AND answered_at >= MAX(?, {_RESET_AT}) "
            "ORDER BY answered_at",
            (e164, since, e164),
        )
        return [float(r["answered_at"]) for r in rows]

    def agent_usage(self, agent: str, now: float, *, window: float = 7 * 86400.0) -> AgentUsage:
        """``policies.agent.AgentUsageView``: the agent's calls, complaints and pause flag.

        Covers ``window`` seconds back (a week: the default complaint window);
        ``window <= 0`` reads only the pause flag (what the policy asks for when
        no agent limit is configured: one primary-key lookup per call).
        """
        pause = self._read("SELECT reason, until FROM agent_pauses WHERE agent=?", (agent,))
        paused, reason = bool(pause), pause[0]["reason"] if pause else ""
        until = None if not pause or pause[0]["until"] is None else float(pause[0]["until"])
        if window <= 0:
            return AgentUsage(paused=paused, pause_reason=reason, paused_until=until)
        since = now - window
        # Beside sibling workers the kept starts follow their writes (card_usage_changes).
        call_starts = self._agent_starts(agent, now, window).since(since)
        return AgentUsage(
            call_starts=call_starts,
            complaints=self.agent_complaints(agent, since),
            paused=paused,
            pause_reason=reason,
            paused_until=until,
        )

    def _agent_starts(self, agent: str, now: float, window: float) -> _AgentStarts:
        """The agent's call starts, covering ``since`` on: kept since an earlier read, or
        read from the rows (``agent_usage`` on every call read the agent's whole window:
        43 ms a call for a dialer with 30,000 calls in a day, ``bench/agent_usage.py``)."""
        since = now - window
        try:
            self._guarded(write=False)
            self._sync(self._db)
            self._fresh_agents(self._db)
            starts = self._agents_usage.get(agent)
            if starts is not None and starts.lower <= since:
                starts.span = max(starts.span, window)
                if now - starts.span - starts.lower > AGENT_STARTS_TRIM:
                    starts.trim(now - starts.span)
                return starts
            if self._log_seen is None and self.siblings:
                self._log_position(self._db)
            rows = self._db.execute(
                "SELECT rowid, call_id, started_at, status FROM call_starts "
                "WHERE agent=? AND started_at >= ? AND status != ?",
                (agent, since, UsageStatus.RELEASED.value),
            ).fetchall()
        except (sqlite3.Error, sqlite3.ProgrammingError) as exc:
            raise self._unavailable(f"store read failed: {exc}", exc) from exc
        starts = _AgentStarts(since, ((r[0], r[1], r[2], r[3]) for r in rows))
        starts.span = window
        if len(self._agents_usage) >= AGENT_STARTS_KEPT:
            self._agents_usage.clear()
        self._agents_usage[agent] = starts
        return starts

    def agent_complaints(self, agent: str, since: float) -> tuple[float, ...]:
        """When the complaints since ``since`` that one of the agent's calls drew were
        made (oldest first): :meth:`agent_usage`'s ``complaints``."""
        # Checked through the call_starts primary key: no scan of the agent's history.
        rows = self._read(
            "SELECT c.at AS at FROM complaints c WHERE c.at >= ? AND c.call_id IS NOT NULL "
            "AND EXISTS (SELECT 1 FROM call_starts s WHERE s.call_id = c.call_id "
            "AND s.agent = ?) ORDER BY c.at",
            (since, agent),
        )
        return tuple(float(r["at"]) for r in rows)

    def agent_calls(self, agent: str, since: float) -> int:
        """How many calls the agent started since ``since``: the length of
        :meth:`agent_usage`'s ``call_starts``, counted by SQLite (a week of an agent's
        calls is thousands of rows; the alert round needs only their number)."""
        rows = self._read(
            "SELECT COUNT(DISTINCT call_id) FROM call_starts WHERE agent=? AND started_at >= ? "
            "AND status != ?",
            (agent, since, UsageStatus.RELEASED.value),
        )
        return int(rows[0][0])

    def set_agent_paused(
        self,
        agent: str,
        paused: bool,
        now: float,
        *,
        reason: str = "",
        until: float | None = None,
    ) -> bool:
        """Pause an agent (the agent-limit policy refuses its calls) or resume it.

        ``until``: when the pause ends by itself (None: at resume). Returns whether a
        pause was lifted (resume) or set (pause).
        """
        with self._write() as db:
            if paused:
                cur = db.execute(
                    "INSERT INTO agent_pauses (agent, paused_at, reason, until) VALUES (?,?,?,?) "
                    "ON CONFLICT(agent) DO UPDATE SET paused_at=excluded.paused_at, "
                    "reason=excluded.reason, until=excluded.until",
                    (agent, now, reason, until),
                )
            else:
                cur = db.execute("DELETE FROM agent_pauses WHERE agent=?", (agent,))
            return bool(cur.rowcount)

    def agent_pauses(self) -> dict[str, tuple[float, str, float | None]]:
        """Every stored pause: agent → (paused_at, reason, until)."""
        rows = self._read("SELECT agent, paused_at, reason, until FROM agent_pauses")
        return {
            str(r["agent"]): (
                float(r["paused_at"]),
                str(r["reason"]),
                None if r["until"] is None else float(r["until"]),
            )
            for r in rows
        }

    def number_reset_at(self, e164: str) -> float | None:
        """When the frequency history of ``e164`` was last reset, None if never."""
        rows = self._read("SELECT at FROM number_resets WHERE number=?", (e164,))
        return float(rows[0]["at"]) if rows else None

    def reset_number(self, e164: str, now: float, *, actor: str, reason: str) -> None:
        """Start the number's frequency history afresh at ``now`` (audited by the caller)."""
        with self._write() as db:
            db.execute(
                "INSERT INTO number_resets (number, at, actor, reason) VALUES (?,?,?,?) "
                "ON CONFLICT(number) DO UPDATE SET at=excluded.at, actor=excluded.actor, "
                "reason=excluded.reason",
                (e164, now, actor, reason),
            )

    def agent_bindings(self) -> dict[str, tuple[str, str | None]]:
        """Stored re-bindings: agent → (card, the configured card it replaced)."""
        rows = self._read("SELECT agent, card, configured FROM agent_bindings")
        return {str(r["agent"]): (str(r["card"]), r["configured"]) for r in rows}

    def save_agent_binding(
        self, agent: str, card: str | None, *, configured: str | None, now: float, cause: str = ""
    ) -> None:
        """Re-bind an agent to ``card`` (None: back to its configured card)."""
        with self._write() as db:
            if card is None:
                db.execute("DELETE FROM agent_bindings WHERE agent=?", (agent,))
                return
            db.execute(
                "INSERT INTO agent_bindings (agent, card, configured, since, cause) "
                "VALUES (?,?,?,?,?) ON CONFLICT(agent) DO UPDATE SET card=excluded.card, "
                "configured=excluded.configured, since=excluded.since, cause=excluded.cause",
                (agent, card, configured, now, cause),
            )

    # --- registrations ----------------------------------------------------------------

    def save_registrations(
        self, aor: str, rows: Iterable[StoredRegistration], now: float, *, node: str = ""
    ) -> None:
        """Replace the stored bindings of ``aor`` by ``rows`` (none: the AOR is unregistered).

        One transaction, durable once this returns; ``now`` is unused here
        (the Redis copy derives its TTL from it).
        """
        del now
        with self._write() as db:
            db.execute("DELETE FROM registrations WHERE node=? AND aor=?", (node, aor))
            db.executemany(
                "INSERT OR REPLACE INTO registrations (node, aor, contact, position, expires_at, "
                "call_id, cseq, source_host, source_port, transport, q) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    (
                        node,
                        aor,
                        r.contact,
                        r.position,
                        r.expires_at,
                        r.call_id,
                        r.cseq,
                        r.source_host,
                        r.source_port,
                        r.transport,
                        r.q,
                    )
                    for r in rows
                ),
            )

    def load_registrations(self, now: float, *, node: str = "") -> list[StoredRegistration]:
        """Every binding of ``node`` still live at ``now``, by AOR in registration order.

        Expired rows are deleted on the way (best effort: a read-only file
        still loads).
        """
        rows = self._read(
            "SELECT * FROM registrations WHERE node=? AND expires_at > ? "
            "ORDER BY aor, position, contact",
            (node, now),
        )
        try:
            with self._write() as db:
                db.execute(
                    "DELETE FROM registrations WHERE node=? AND expires_at <= ?", (node, now)
                )
        except StoreUnavailable:
            pass
        return [_registration(r) for r in rows]

    def registrations_of(self, aor: str, now: float, *, node: str = "") -> list[StoredRegistration]:
        """The live bindings of one AOR of ``node`` (read only): what the other workers
        of a ``dialgate run --workers N`` set registered."""
        rows = self._read(
            "SELECT * FROM registrations WHERE node=? AND aor=? AND expires_at > ? "
            "ORDER BY position, contact",
            (node, aor, now),
        )
        return [_registration(r) for r in rows]

    def has_consent(self, number: str, now: float, *, campaign: str = "") -> bool:
        """Whether valid consent exists for the campaign (or a campaign-wide grant)."""
        rows = self._read(
            "SELECT 1 FROM consent WHERE number=? AND campaign IN ('', ?) AND "
            "revoked_at IS NULL AND granted_at <= ? AND (expires_at IS NULL OR expires_at > ?) "
            "LIMIT 1",
            (number, campaign, now, now),
        )
        return bool(rows)

    def add_dnc(self, number: str, now: float, *, source: str = "", note: str = "") -> bool:
        """Put a number on the internal DNC list; False if it was already there."""
        with self._write() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO dnc (number, added_at, source, note) VALUES (?,?,?,?)",
                (number, now, source, note),
            )
            return cur.rowcount == 1

    def add_dncs(
        self, numbers: Iterable[str], now: float, *, source: str = "", note: str = ""
    ) -> int:
        """Put many numbers on the internal DNC list in one transaction; return how many were new.

        One ``executemany`` (a bulk import commits once per batch instead of once
        per number); numbers already listed, or repeated, are left as they are.
        """
        with self._write() as db:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO dnc (number, added_at, source, note) VALUES (?,?,?,?)",
                ((number, now, source, note) for number in numbers),
            )
            return int(db.total_changes - before)

    def remove_dnc(self, number: str) -> bool:
        """Take a number off the internal DNC list; False if it was not there."""
        with self._write() as db:
            return db.execute("DELETE FROM dnc WHERE number=?", (number,)).rowcount == 1

    def is_dnc(self, number: str) -> bool:
        """Whether the number is on the internal DNC list."""
        return bool(self._read("SELECT 1 FROM dnc WHERE number=?", (number,)))

    def add_complaint(self, complaint: Complaint) -> None:
        """Store a complaint (evidence for appeals; feeds the anti-abuse picture)."""
        with self._write() as db:
            db.execute(
                "INSERT INTO complaints (number, at, card, call_id, note) VALUES (?,?,?,?,?)",
                (complaint.number, complaint.at, complaint.card, complaint.call_id, complaint.note),
            )

    def complaints(self, *, card: str | None = None, since: float = 0.0) -> list[Complaint]:
        """Complaints since ``since``, for one card or all, oldest first."""
        if card is None:
            rows = self._read("SELECT * FROM complaints WHERE at >= ? ORDER BY at, id", (since,))
        else:
            rows = self._read(
                "SELECT * FROM complaints WHERE card=? AND at >= ? ORDER BY at, id",
                (card, since),
            )
        return [
            Complaint(
                number=r["number"],
                at=float(r["at"]),
                card=r["card"],
                call_id=r["call_id"],
                note=r["note"],
            )
            for r in rows
        ]


def _registration(r: sqlite3.Row) -> StoredRegistration:
    return StoredRegistration(
        aor=str(r["aor"]),
        contact=str(r["contact"]),
        expires_at=float(r["expires_at"]),
        call_id=str(r["call_id"]),
        cseq=int(r["cseq"]),
        source_host=str(r["source_host"]),
        source_port=int(r["source_port"]),
        transport=str(r["transport"]),
        q=r["q"],
        position=int(r["position"]),
    )


def _json_or_none(value: dict[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _leg_from_json(text: str | None) -> dict[str, Any] | None:
    """A stored leg; None when absent or unreadable (a damaged row ends no call)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def store_from_settings(
    settings: Settings, *, base_dir: Path | None = None, autocheckpoint: bool = True
) -> SQLiteStore:
    """Open the ``[store] path`` database, knowing each carrier's timezone.

    A relative path is taken from ``base_dir`` (default: the working directory).
    Raises :class:`StoreUnavailable` when the file cannot be opened or migrated.
    Call ``store.recover(now)`` once before taking traffic (this module reads no clock).
    ``autocheckpoint=False``: the caller runs :meth:`SQLiteStore.checkpoint` in a thread
    (``dialgate run`` does, every ``CHECKPOINT_INTERVAL``).
    """
    path = settings.store.path
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    return SQLiteStore(
        path,
        carrier_timezones={c.name: c.timezone for c in settings.carriers},
        autocheckpoint=autocheckpoint,
    )


if TYPE_CHECKING:
    from gateway.store.protocols import Store

    def _is_a_store(store: SQLiteStore) -> Store:
        """mypy checks here that the SQLite backend satisfies the whole protocol."""
        return store

"""What the layers above ask of a store: one set of protocols every backend satisfies.

What this module is for: the typed seam between the call path, the card
manager, the operator and the storage behind them. Each protocol is one
concern, named after what its caller does with it; :class:`Store` is all of
them together, the contract of a complete backend.

Backends:

- :class:`gateway.store.sqlite.SQLiteStore` — the embedded default, a complete
  :class:`Store` (and the operator's own records, :class:`OperatorRecords`);
- :class:`gateway.store.memory.MemoryStore` — a complete :class:`Store` in
  plain dicts, for unit tests of the layers above;
- :mod:`gateway.store.redis` — the shared hot copy for several instances:
  ``RedisStore`` is a :class:`UsageLedger` and a :class:`RegistrationStore`,
  ``MirroredLedger`` a :class:`UsageLedger` (Redis decides, SQLite records),
  ``SharedCardRepository`` a :class:`CardRepository`; everything else stays in
  SQLite.

Every method is synchronous and short: the ledger runs inside the policy
pipeline, on the event loop. An asynchronous backend (``redis.asyncio``)
implements the same methods of :class:`UsageLedger`, :class:`CardRepository`
and :class:`RegistrationStore`; the callers are the seam to change.

Every method raises :class:`gateway.store.records.StoreUnavailable` when it
cannot answer (fail closed); none reads a clock (callers pass ``now``).

What this module must never do: import a backend, hold state, or grow a
method only one backend can offer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from gateway.store.records import (
    CallDialogs,
    Complaint,
    StoredCard,
    StoredRegistration,
    TransitionRecord,
)

if TYPE_CHECKING:
    from gateway.callpath.cdr import CallRecord
    from policies.agent import AgentUsage
    from policies.consent import ConsentRecord, ConsentStatus
    from policies.dnc import DncEntry
    from policies.quotas import CardUsage, QuotaProfile

__all__ = [
    "AgentStore",
    "Batches",
    "CallDialogStore",
    "CallPathStore",
    "CardRepository",
    "CdrStore",
    "ComplianceStore",
    "PolicyLookups",
    "RegistrationStore",
    "Store",
    "UsageLedger",
]


@runtime_checkable
class UsageLedger(Protocol):
    """Write-ahead usage counting per card: a start is committed before the INVITE leaves.

    ``reserve`` checks the quota (``profile``) and ``admit`` and records the start
    in one atomic step (raising ``QuotaExceeded`` / whatever ``admit`` raises,
    writing nothing); ``release`` undoes a start that failed before the callee
    was alerted; ``finish`` records the outcome; ``recover`` turns reservations a
    dead process left open into orphans (counted as starts, not in use).
    """

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
    ) -> None: ...

    def release(self, call_id: str, now: float, *, failed: bool = True) -> str | None: ...

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
    ) -> str | None: ...

    def card_usage(self, card_id: str, now: float) -> CardUsage: ...

    def recover(self, now: float) -> int: ...


@runtime_checkable
class CardRepository(Protocol):
    """Persistence the card manager needs: card rows and their transitions."""

    def upsert_card(self, card: StoredCard) -> StoredCard: ...

    def load_cards(self) -> list[StoredCard]: ...

    def save_transition(self, card: StoredCard, transition: TransitionRecord) -> None: ...


class PolicyLookups(Protocol):
    """What the policy pipeline reads (``policies`` declares each part).

    ``ConsentLookup.consent_status``, ``DncLookup.lookup``,
    ``DestinationHistory.attempts/answers`` and ``AgentUsageView.agent_usage``.
    """

    def consent_status(
        self, e164: str, campaign: str | None, now: datetime
    ) -> tuple[ConsentStatus, ConsentRecord | None]: ...

    def lookup(self, e164: str) -> DncEntry | None: ...

    def attempts(self, e164: str, since: float) -> Sequence[float]: ...

    def answers(self, e164: str, since: float) -> Sequence[float]: ...

    def agent_usage(self, agent: str, now: float, *, window: float = 7 * 86400.0) -> AgentUsage: ...


class CdrStore(Protocol):
    """Call detail records: written by the CDR writer, read back by id, time or callee."""

    def add_cdrs(self, records: list[CallRecord]) -> None: ...

    def cdrs(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        call_id: str | None = None,
        destination: str | None = None,
        limit: int = 10_000,
    ) -> list[CallRecord]: ...


class CallDialogStore(Protocol):
    """Calls in progress, written ahead of the B-leg INVITE, for ending them after a crash."""

    def save_call_dialogs(self, record: CallDialogs) -> None: ...

    def update_call_dialog_leg(self, key: str, side: str, leg: dict[str, Any]) -> bool: ...

    def answer_call_dialogs(
        self,
        key: str,
        *,
        answer_at: float,
        a_leg: dict[str, Any] | None,
        b_leg: dict[str, Any],
        cdr: str,
    ) -> bool: ...

    def delete_call_dialogs(self, key: str) -> bool: ...

    def call_dialogs(self) -> list[CallDialogs]: ...


class AgentStore(Protocol):
    """Agents' card re-bindings and pauses."""

    def agent_bindings(self) -> dict[str, tuple[str, str | None]]: ...

    def save_agent_binding(
        self, agent: str, card: str | None, *, configured: str | None, now: float, cause: str = ""
    ) -> None: ...

    def set_agent_paused(
        self,
        agent: str,
        paused: bool,
        now: float,
        *,
        reason: str = "",
        until: float | None = None,
    ) -> bool: ...

    def agent_pauses(self) -> dict[str, tuple[float, str, float | None]]: ...


@runtime_checkable
class RegistrationStore(Protocol):
    """The registrar's bindings across restarts, per node (``node`` names the instance)."""

    def save_registrations(
        self, aor: str, rows: Sequence[StoredRegistration], now: float, *, node: str
    ) -> None:
        """Replace the stored bindings of ``aor`` (an empty list removes them)."""
        ...

    def load_registrations(self, now: float, *, node: str) -> list[StoredRegistration]:
        """Every stored binding still live at ``now``."""
        ...


class ComplianceStore(Protocol):
    """What the operator writes and reads about callees: consent, DNC, complaints, resets,
    and card history for evidence."""

    def add_consent(
        self,
        number: str,
        now: float,
        *,
        campaign: str = "",
        expires_at: float | None = None,
        source: str = "",
        evidence: str = "",
    ) -> None: ...

    def revoke_consent(
        self, number: str, now: float, *, campaign: str | None = None, source: str = ""
    ) -> int: ...

    def add_dnc(self, number: str, now: float, *, source: str = "", note: str = "") -> bool: ...

    def add_dncs(
        self, numbers: Iterable[str], now: float, *, source: str = "", note: str = ""
    ) -> int: ...

    def remove_dnc(self, number: str) -> bool: ...

    def add_complaint(self, complaint: Complaint) -> None: ...

    def complaints(self, *, card: str | None = None, since: float = 0.0) -> list[Complaint]: ...

    def number_reset_at(self, e164: str) -> float | None: ...

    def reset_number(self, e164: str, now: float, *, actor: str, reason: str) -> None: ...

    def get_card(self, card_id: str) -> StoredCard | None: ...

    def transitions(self, card_id: str) -> list[TransitionRecord]: ...


class Batches(Protocol):
    """Several writes as one: the call path stores a call's start (reservation and
    write-ahead B-leg row) and its end (reservation finished, CDR, row deleted) each
    in one commit.

    ``batch()`` is a context: every write inside joins one transaction, committed
    when the outermost batch is left (raising ``StoreUnavailable`` when that fails:
    then nothing of the batch is stored) or earlier by ``commit()``, which also ends
    the batch (the writes after it commit one by one). A failure of the store
    inside a batch loses the whole batch; a write refused by its own check (a quota)
    undoes only itself. A ledger that is another object (Redis) is not part of it.
    """

    def batch(self) -> AbstractContextManager[None]: ...

    def commit(self) -> None: ...


class CallPathStore(CdrStore, CallDialogStore, AgentStore, Batches, Protocol):
    """What the B2BUA itself reads and writes (``CallServices.store``)."""


class Store(
    UsageLedger,
    CardRepository,
    PolicyLookups,
    CallPathStore,
    RegistrationStore,
    ComplianceStore,
    Protocol,
):
    """A complete backend: everything the call path, the cards and the operator use."""

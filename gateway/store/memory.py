"""A complete store in plain Python containers, for unit tests of the layers above.

What this module is for: :class:`MemoryStore` satisfies
:class:`gateway.store.protocols.Store` with the meaning of the SQLite backend
(write-ahead reservations, quota check and write as one step, orphans on
``recover``, carrier-day counters, consent/DNC/frequency/agent lookups, CDRs,
calls in progress, registrations), so card, policy and call-path tests can
run without a database. ``down = True`` makes every operation raise
:class:`StoreUnavailable`, as a failed store does.

What it must never do: serve the running gateway (nothing survives the
process), read a clock (callers pass ``now``), or decide anything the SQLite
backend would decide differently — a behaviour that differs is a bug here.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gateway.store.records import (
    CallDialogs,
    Complaint,
    QuotaExceeded,
    ReservationError,
    StoredCard,
    StoredRegistration,
    StoreUnavailable,
    TransitionRecord,
    UsageStatus,
)
from policies.agent import AgentUsage
from policies.consent import ConsentRecord, ConsentStatus, resolve_status
from policies.dnc import DncEntry, DncSource
from policies.quotas import CallOutcome, CardUsage, QuotaProfile, StartTimes, would_exceed
from policies.timeutil import day_bounds

if TYPE_CHECKING:
    from gateway.callpath.cdr import CallRecord

__all__ = ["MemoryStore"]

_COUNTED = (UsageStatus.RESERVED, UsageStatus.FINISHED, UsageStatus.ORPHANED)


@dataclass(slots=True)
class _Start:
    """One reserved call attempt on a card (a ``call_starts`` row)."""

    seq: int
    call_id: str
    card: str
    callee: str
    started_at: float
    agent: str
    status: UsageStatus = UsageStatus.RESERVED
    answered: bool = False
    talk_seconds: float = 0.0
    short: bool = False
    failed: bool = False
    answered_at: float | None = None
    ended_at: float | None = None


@dataclass(slots=True)
class _Consent:
    campaign: str
    granted_at: float
    expires_at: float | None
    revoked_at: float | None
    source: str
    evidence: str = ""


class MemoryStore:
    """Every store protocol over dicts and lists; see the module docstring.

    ``carrier_timezones`` (carrier → IANA zone) sets each card's day for the
    daily counters; ``short_call_seconds`` and ``outcome_window`` mean what they
    mean for :class:`gateway.store.sqlite.SQLiteStore`.
    """

    def __init__(
        self,
        *,
        short_call_seconds: float = 10.0,
        carrier_timezones: dict[str, str] | None = None,
        outcome_window: int = 50,
    ) -> None:
        self.short_call_seconds = short_call_seconds
        self.carrier_timezones: dict[str, str] = dict(carrier_timezones or {})
        self.outcome_window = outcome_window
        #: Set to make every operation fail closed (a store outage).
        self.down = False
        self._seq = itertools.count(1)
        self._starts: list[_Start] = []
        self._cards: dict[str, StoredCard] = {}
        self._transitions: list[TransitionRecord] = []
        self._consent: dict[str, dict[str, _Consent]] = {}
        self._dnc: dict[str, tuple[float, str, str]] = {}
        self._complaints: list[Complaint] = []
        self._resets: dict[str, float] = {}
        self._pauses: dict[str, tuple[float, str, float | None]] = {}
        self._bindings: dict[str, tuple[str, str | None]] = {}
        self._cdrs: list[CallRecord] = []
        self._dialogs: dict[str, CallDialogs] = {}
        self._registrations: dict[tuple[str, str], list[StoredRegistration]] = {}
        # An open batch: its token and the state it began with (restored when it fails).
        self._batch: tuple[object, dict[str, Any]] | None = None

    def _check(self) -> None:
        if self.down:
            if self._batch is not None:  # as in SQLite: the failure loses the whole batch
                self._restore()
            raise StoreUnavailable("memory store is down")

    # --- batches (the meaning of SQLiteStore.batch) ----------------------------------

    _STATE = (
        "_starts",
        "_cards",
        "_transitions",
        "_consent",
        "_dnc",
        "_complaints",
        "_resets",
        "_pauses",
        "_bindings",
        "_cdrs",
        "_dialogs",
        "_registrations",
    )

    def _restore(self) -> None:
        batch, self._batch = self._batch, None
        if batch is not None:
            for name, value in batch[1].items():
                setattr(self, name, value)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """All or nothing, as in SQLite: a store failure inside or at the end, or an
        exception leaving the batch, restores the state the batch began with."""
        if self._batch is not None:
            yield
            return
        token = object()
        self._batch = (token, copy.deepcopy({n: getattr(self, n) for n in self._STATE}))
        try:
            yield
        except BaseException:
            if self._batch is not None and self._batch[0] is token:
                self._restore()
            raise
        if self._batch is not None and self._batch[0] is token:
            self.commit()

    def commit(self) -> None:
        """End the current batch (its writes are already in place); a down store loses it."""
        if self._batch is None:
            return
        if self.down:
            self._restore()
            raise StoreUnavailable("memory store is down")
        self._batch = None

    def close(self) -> None:
        """Nothing to release (the protocol's owners call it)."""

    # --- usage ledger ---------------------------------------------------------------

    def _timezone(self, card: str) -> str:
        stored = self._cards.get(card)
        return "UTC" if stored is None else self.carrier_timezones.get(stored.carrier, "UTC")

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
        """Check ``profile``/``admit`` on the card's usage and record the start, as one step."""
        self._check()
        if profile is not None or admit is not None:
            usage = self.card_usage(card, now)
            if profile is not None:
                exhausted = would_exceed(profile, usage, self._timezone(card), callee, now)
                if exhausted is not None:
                    raise QuotaExceeded(card, exhausted)
            if admit is not None:
                admit(usage)
        for row in self._starts:
            if row.call_id != call_id:
                continue
            if row.status is UsageStatus.RESERVED:
                raise ReservationError(
                    f"call {call_id!r} already holds a reservation on {row.card!r}"
                )
            if row.card == card:
                raise ReservationError(f"call {call_id!r} already tried card {card!r}")
        self._starts.append(_Start(next(self._seq), call_id, card, callee, float(now), agent))

    def _open(self, call_id: str) -> _Start | None:
        for row in self._starts:
            if row.call_id == call_id and row.status is UsageStatus.RESERVED:
                return row
        return None

    def release(self, call_id: str, now: float, *, failed: bool = True) -> str | None:
        """Undo the call's open reservation; ``failed`` still feeds the failure streak."""
        self._check()
        row = self._open(call_id)
        if row is None:
            return None
        row.status, row.failed, row.ended_at = UsageStatus.RELEASED, failed, now
        return row.card

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
        """Record the outcome of the call's open reservation; return its card."""
        self._check()
        row = self._open(call_id)
        if row is None:
            return None
        if short is None:
            short = answered and talk_seconds < self.short_call_seconds
        if answered and answered_at is None:
            answered_at = now - talk_seconds
        row.status = UsageStatus.FINISHED
        row.answered, row.talk_seconds, row.short = answered, float(talk_seconds), bool(short)
        row.failed, row.ended_at = failed, now
        row.answered_at = answered_at if answered else None
        return row.card

    def recover(self, now: float) -> int:
        """Reservations left open become orphans (counted as starts, not in use)."""
        self._check()
        count = 0
        for row in self._starts:
            if row.status is UsageStatus.RESERVED:
                row.status, row.ended_at = UsageStatus.ORPHANED, now
                count += 1
        return count

    def card_usage(self, card_id: str, now: float) -> CardUsage:
        """``policies.quotas.CardUsage`` of the card at ``now`` (its carrier's day)."""
        self._check()
        start, _end = day_bounds(now, self._timezone(card_id))
        lower = min(start, now - 3600.0)
        rows = [r for r in self._starts if r.card == card_id]
        counted = sorted(
            (r for r in rows if r.status in _COUNTED and r.started_at >= lower),
            key=lambda r: r.started_at,
        )
        today = [r for r in counted if r.started_at >= start]
        closed = sorted(
            (
                r
                for r in rows
                if r.status in (UsageStatus.FINISHED, UsageStatus.ORPHANED)
                or (r.status is UsageStatus.RELEASED and r.failed)
            ),
            key=lambda r: (r.started_at, r.seq),
        )
        window = closed[-self.outcome_window :] if self.outcome_window > 0 else []
        return CardUsage(
            call_starts=StartTimes([r.started_at for r in counted]),
            callees_today=frozenset(r.callee for r in today),
            talk_seconds_today=float(sum(r.talk_seconds for r in today)),
            in_use=sum(1 for r in rows if r.status is UsageStatus.RESERVED),
            recent_outcomes=tuple(
                CallOutcome(r.started_at, r.answered, r.talk_seconds, r.failed, r.ended_at)
                for r in window
            ),
        )

    def open_reservations(self) -> list[tuple[str, str]]:
        """``(call_id, card)`` of every reservation still open."""
        self._check()
        rows = sorted(self._starts, key=lambda r: r.started_at)
        return [(r.call_id, r.card) for r in rows if r.status is UsageStatus.RESERVED]

    # --- cards ----------------------------------------------------------------------

    def upsert_card(self, card: StoredCard) -> StoredCard:
        """Insert a configured card, or update its static fields keeping its stored state."""
        self._check()
        known = self._cards.get(card.id)
        if known is not None:
            card = replace(
                known,
                carrier=card.carrier,
                number=card.number,
                pool=card.pool,
                priority=card.priority,
                quota_profile=card.quota_profile,
            )
        self._cards[card.id] = card
        return card

    def get_card(self, card_id: str) -> StoredCard | None:
        """The stored card, or None."""
        self._check()
        return self._cards.get(card_id)

    def load_cards(self) -> list[StoredCard]:
        """Every stored card, ordered by pool, priority, id."""
        self._check()
        return sorted(self._cards.values(), key=lambda c: (c.pool, c.priority, c.id))

    def save_transition(self, card: StoredCard, transition: TransitionRecord) -> None:
        """Store the card's new state and the transition record together."""
        self._check()
        known = self._cards.get(card.id)
        if known is None:
            raise LookupError(f"unknown card {card.id!r}")
        self._cards[card.id] = replace(
            known,
            state=card.state,
            reason=card.reason,
            since=card.since,
            probation_until=card.probation_until,
            profile_override=card.profile_override,
            resume_at=card.resume_at,
        )
        self._transitions.append(transition)

    def transitions(self, card_id: str) -> list[TransitionRecord]:
        """The card's state history, oldest first."""
        self._check()
        return sorted((t for t in self._transitions if t.card == card_id), key=lambda t: t.at)

    # --- policy lookups -------------------------------------------------------------

    def consent_status(
        self, e164: str, campaign: str | None, now: datetime
    ) -> tuple[ConsentStatus, ConsentRecord | None]:
        """``policies.consent.ConsentLookup``."""
        self._check()

        def dt(value: float | None) -> datetime | None:
            return None if value is None else datetime.fromtimestamp(value, UTC)

        records = [
            ConsentRecord(
                number=e164,
                campaign=c.campaign or None,
                granted_at=datetime.fromtimestamp(c.granted_at, UTC),
                expires_at=dt(c.expires_at),
                source=c.source,
                evidence=c.evidence,
                revoked_at=dt(c.revoked_at),
            )
            # In key order, as SQLite reads them through (number, campaign).
            for _, c in sorted(self._consent.get(e164, {}).items())
        ]
        return resolve_status(records, campaign, now)

    def lookup(self, e164: str) -> DncEntry | None:
        """``policies.dnc.DncLookup``: the internal DNC entry, or None."""
        self._check()
        entry = self._dnc.get(e164)
        if entry is None:
            return None
        added_at, source, note = entry
        try:
            kind = DncSource(source)
        except ValueError:
            kind = DncSource.MANUAL
        return DncEntry(
            number=e164,
            list_name="internal",
            source=kind,
            added_at=datetime.fromtimestamp(added_at, UTC),
            note=note,
        )

    @staticmethod
    def _first_starts(rows: Iterable[_Start], since: float) -> list[float]:
        """One time per call (its first start) since ``since``; released starts never rang."""
        first: dict[str, float] = {}
        for r in rows:
            if r.started_at >= since and r.status is not UsageStatus.RELEASED:
                first[r.call_id] = min(first.get(r.call_id, r.started_at), r.started_at)
        return sorted(first.values())

    def attempts(self, e164: str, since: float) -> list[float]:
        """Attempt times to ``e164`` (one per call; released attempts do not count)."""
        self._check()
        since = max(since, self._resets.get(e164, 0.0))
        return self._first_starts((r for r in self._starts if r.callee == e164), since)

    def answers(self, e164: str, since: float) -> list[float]:
        """Answer times of calls to ``e164``."""
        self._check()
        since = max(since, self._resets.get(e164, 0.0))
        return sorted(
            r.answered_at
            for r in self._starts
            if r.callee == e164
            and r.answered
            and r.answered_at is not None
            and r.answered_at >= since
        )

    def agent_usage(self, agent: str, now: float, *, window: float = 7 * 86400.0) -> AgentUsage:
        """``policies.agent.AgentUsageView``: the agent's calls, complaints and pause."""
        self._check()
        pause = self._pauses.get(agent)
        paused, reason = pause is not None, pause[1] if pause else ""
        until = pause[2] if pause else None
        if window <= 0:
            return AgentUsage(paused=paused, pause_reason=reason, paused_until=until)
        since = now - window
        starts = self._first_starts((r for r in self._starts if r.agent == agent), since)
        calls = {r.call_id for r in self._starts if r.agent == agent}
        complaints = sorted(c.at for c in self._complaints if c.at >= since and c.call_id in calls)
        return AgentUsage(
            call_starts=StartTimes(starts),
            complaints=tuple(complaints),
            paused=paused,
            pause_reason=reason,
            paused_until=until,
        )

    # --- consent, DNC, complaints, resets -------------------------------------------

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
        """Record (or renew) the callee's consent, for one campaign or all (``""``)."""
        self._check()
        self._consent.setdefault(number, {})[campaign] = _Consent(
            campaign, now, expires_at, None, source, evidence
        )

    def revoke_consent(
        self, number: str, now: float, *, campaign: str | None = None, source: str = ""
    ) -> int:
        """Revoke one campaign, or every one when None; recorded even without consent."""
        self._check()
        rows = self._consent.setdefault(number, {})
        changed = 0
        for c in rows.values():
            if c.revoked_at is None and (campaign is None or c.campaign == campaign):
                c.revoked_at = now
                changed += 1
        scope = "" if campaign is None else campaign
        if scope not in rows:
            rows[scope] = _Consent(scope, now, None, now, source or "revocation")
            changed += 1
        return changed

    def add_dnc(self, number: str, now: float, *, source: str = "", note: str = "") -> bool:
        """Put a number on the internal DNC list; False if it was already there."""
        self._check()
        if number in self._dnc:
            return False
        self._dnc[number] = (now, source, note)
        return True

    def add_dncs(
        self, numbers: Iterable[str], now: float, *, source: str = "", note: str = ""
    ) -> int:
        """Put many numbers on the internal DNC list; return how many were new."""
        return sum(self.add_dnc(n, now, source=source, note=note) for n in numbers)

    def remove_dnc(self, number: str) -> bool:
        """Take a number off the internal DNC list; False if it was not there."""
        self._check()
        return self._dnc.pop(number, None) is not None

    def is_dnc(self, number: str) -> bool:
        """Whether the number is on the internal DNC list."""
        self._check()
        return number in self._dnc

    def add_complaint(self, complaint: Complaint) -> None:
        """Store a complaint."""
        self._check()
        self._complaints.append(complaint)

    def complaints(self, *, card: str | None = None, since: float = 0.0) -> list[Complaint]:
        """Complaints since ``since``, for one card or all, oldest first."""
        self._check()
        found = [c for c in self._complaints if c.at >= since and (card is None or c.card == card)]
        return sorted(found, key=lambda c: c.at)

    def number_reset_at(self, e164: str) -> float | None:
        """When the number's frequency history was last reset, None if never."""
        self._check()
        return self._resets.get(e164)

    def reset_number(self, e164: str, now: float, *, actor: str, reason: str) -> None:
        """Start the number's frequency history afresh at ``now``."""
        self._check()
        self._resets[e164] = now

    # --- agents ---------------------------------------------------------------------

    def set_agent_paused(
        self,
        agent: str,
        paused: bool,
        now: float,
        *,
        reason: str = "",
        until: float | None = None,
    ) -> bool:
        """Pause an agent or resume it; whether a pause was set or lifted."""
        self._check()
        if paused:
            self._pauses[agent] = (now, reason, until)
            return True
        return self._pauses.pop(agent, None) is not None

    def agent_pauses(self) -> dict[str, tuple[float, str, float | None]]:
        """Every stored pause: agent → (paused_at, reason, until)."""
        self._check()
        return dict(self._pauses)

    def agent_bindings(self) -> dict[str, tuple[str, str | None]]:
        """Stored re-bindings: agent → (card, the configured card it replaced)."""
        self._check()
        return dict(self._bindings)

    def save_agent_binding(
        self, agent: str, card: str | None, *, configured: str | None, now: float, cause: str = ""
    ) -> None:
        """Re-bind an agent to ``card`` (None: back to its configured card)."""
        self._check()
        if card is None:
            self._bindings.pop(agent, None)
        else:
            self._bindings[agent] = (card, configured)

    # --- CDRs and calls in progress -------------------------------------------------

    def add_cdr(self, record: CallRecord) -> None:
        """Store one call detail record."""
        self.add_cdrs([record])

    def add_cdrs(self, records: list[CallRecord]) -> None:
        """Store several call detail records."""
        self._check()
        self._cdrs.extend(records)

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
        self._check()
        found = [
            r
            for r in self._cdrs
            if (since is None or r.attempt_at >= since)
            and (until is None or r.attempt_at < until)
            and (call_id is None or r.call_id == call_id)
            and (destination is None or r.destination == destination)
        ]
        return sorted(found, key=lambda r: r.attempt_at)[:limit]

    def save_call_dialogs(self, record: CallDialogs) -> None:
        """Store (or replace) a call in progress."""
        self._check()
        self._dialogs[record.key] = record

    def update_call_dialog_leg(self, key: str, side: str, leg: dict[str, Any]) -> bool:
        """Replace one leg (``"a"`` or ``"b"``) of a stored call; False when no row."""
        if side not in ("a", "b"):
            raise ValueError(f"side must be 'a' or 'b', not {side!r}")
        self._check()
        row = self._dialogs.get(key)
        if row is None:
            return False
        if side == "a":
            self._dialogs[key] = replace(row, a_leg=dict(leg))
        else:
            self._dialogs[key] = replace(row, b_leg=dict(leg))
        return True

    def answer_call_dialogs(
        self,
        key: str,
        *,
        answer_at: float,
        a_leg: dict[str, Any] | None,
        b_leg: dict[str, Any],
        cdr: str,
    ) -> bool:
        """The stored call was answered: its answer time, confirmed legs and CDR; False
        when no row."""
        self._check()
        row = self._dialogs.get(key)
        if row is None:
            return False
        self._dialogs[key] = replace(
            row,
            answer_at=answer_at,
            a_leg=None if a_leg is None else dict(a_leg),
            b_leg=dict(b_leg),
            cdr=cdr,
        )
        return True

    def delete_call_dialogs(self, key: str) -> bool:
        """Forget a call's dialogs; False when there was no row."""
        self._check()
        return self._dialogs.pop(key, None) is not None

    def call_dialogs(self) -> list[CallDialogs]:
        """Every stored call, oldest first."""
        self._check()
        return sorted(self._dialogs.values(), key=lambda r: (r.attempt_at, r.key))

    # --- registrations --------------------------------------------------------------

    def save_registrations(
        self, aor: str, rows: Sequence[StoredRegistration], now: float, *, node: str = ""
    ) -> None:
        """Replace the stored bindings of ``aor`` on ``node`` (none: unregistered)."""
        self._check()
        if rows:
            self._registrations[(node, aor)] = list(rows)
        else:
            self._registrations.pop((node, aor), None)

    def load_registrations(self, now: float, *, node: str = "") -> list[StoredRegistration]:
        """Every binding of ``node`` still live at ``now``, by AOR in registration order."""
        self._check()
        out: list[StoredRegistration] = []
        for (where, _aor), rows in sorted(self._registrations.items()):
            if where == node:
                out.extend(r for r in rows if r.expires_at > now)
        out.sort(key=lambda r: (r.aor, r.position, r.contact))
        return out


if TYPE_CHECKING:
    from gateway.store.protocols import Store

    def _is_a_store(store: MemoryStore) -> Store:
        """mypy checks here that the memory backend satisfies the whole protocol."""
        return store

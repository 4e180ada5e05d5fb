"""The values every store backend reads and writes, and the errors they raise.

What this module is for: the plain records of the store protocols
(:mod:`gateway.store.protocols`) — card rows and their transitions,
complaints, calls in progress, registrar bindings, usage facts — and the
store's errors (:class:`StoreUnavailable`, :class:`QuotaExceeded`,
:class:`ReservationError`). Every backend (SQLite, Redis, memory) and every
caller imports them from here, so no backend module needs another.

What it must never do: import a backend, touch storage, read a clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Set
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import islice
from typing import Any, TypeVar

from policies.errors import StoreUnavailableError
from policies.quotas import Exhausted

__all__ = [
    "CallDialogs",
    "CalleesToday",
    "CardUsageFacts",
    "Complaint",
    "QuotaExceeded",
    "ReservationError",
    "StoreUnavailable",
    "StoredCard",
    "StoredRegistration",
    "TransitionRecord",
    "UsageStatus",
    "unavailable",
]


class StoreUnavailable(StoreUnavailableError):
    """The store cannot be read or written; the gateway must refuse calls (fail closed).

    Carries the SIP answer the gateway gives: 503 with ``Retry-After`` and the
    ``store-unavailable`` Reason text. It is a ``policies`` ``StoreUnavailableError``,
    so policies reading usage through the store fail closed on it.
    """

    status_code = 503
    reason_phrase = "Service Unavailable"
    reason_text = "store-unavailable"

    def __init__(self, detail: str, *, retry_after: int = 30) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


def unavailable(detail: str, retry_after: int) -> StoreUnavailable:
    """A :class:`StoreUnavailable` (what a ``StoreGuard`` raises while open)."""
    return StoreUnavailable(detail, retry_after=retry_after)


class ReservationError(ValueError):
    """A reservation operation does not match the recorded state (caller bug)."""


class QuotaExceeded(Exception):
    """``reserve(profile=...)`` refused: starting the call would break ``exhausted.limit``."""

    def __init__(self, card: str, exhausted: Exhausted) -> None:
        super().__init__(f"card {card}: {exhausted.limit} ({exhausted.detail})")
        self.card = card
        self.exhausted = exhausted


class UsageStatus(StrEnum):
    """Life of one ``call_starts`` row."""

    RESERVED = "reserved"  # committed before the INVITE left; counts as concurrent
    RELEASED = "released"  # failed before the callee was alerted; counts as nothing
    FINISHED = "finished"  # outcome known
    ORPHANED = "orphaned"  # reserved when the process died; counts as a start only


@dataclass(frozen=True, slots=True)
class StoredCard:
    """A card row: static fields from configuration plus its persisted state."""

    id: str
    carrier: str
    number: str
    pool: str
    priority: int = 0
    quota_profile: str = "default"
    state: str = "active"
    reason: str | None = None
    since: float = 0.0
    probation_until: float | None = None
    profile_override: str | None = None
    resume_at: float | None = None  # when a maintenance suspension ends by itself


@dataclass(frozen=True, slots=True)
class TransitionRecord:
    """One stored card state change with the evidence an appeal needs."""

    card: str
    at: float
    from_state: str
    to_state: str
    reason: str | None
    cause: str
    evidence: dict[str, Any] = field(default_factory=dict)
    actor: str = "gateway"


@dataclass(frozen=True, slots=True)
class Complaint:
    """A complaint received about a call to ``number``."""

    number: str
    at: float
    card: str | None = None
    call_id: str | None = None
    note: str = ""


@dataclass(frozen=True, slots=True)
class CallDialogs:
    """One call in progress, as persisted (table ``call_dialogs``).

    ``key`` is the B2BUA's call key (the ``call_starts`` id), ``call_id`` the A-leg
    Call-ID (the CDR's id). ``a_leg``/``b_leg`` are what the B2BUA needs to end a
    confirmed leg from another process (its dialog record, transport name,
    address), stored as JSON once the call is answered; None before.

    Write-ahead: the row exists from the moment the B-leg
    INVITE leaves. ``b_invite`` is that INVITE as a CANCEL needs it (Request-URI,
    top Via with its branch, From with tag, To, Call-ID, CSeq, Contact, where it
    went); ``a_invite`` the A-leg INVITE as a final response to it needs it (every
    Via, From, To, Call-ID, CSeq, our To tag, where it came from). Both are JSON
    objects with ``"v": 1``; None in rows written before the store kept them.
    """

    key: str
    call_id: str
    card: str | None
    callee: str
    attempt_at: float
    answer_at: float | None = None
    a_leg: dict[str, Any] | None = None
    b_leg: dict[str, Any] | None = None
    cdr: str | None = None  # the call's CDR as gateway.store.spool JSON, for a restart
    b_invite: dict[str, Any] | None = None
    a_invite: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class StoredRegistration:
    """One registrar binding as stored: the AOR's user, the Contact and its flow.

    ``expires_at`` is absolute (seconds since the epoch, the registrar's
    clock); ``source_host``/``source_port``/``transport`` are the flow the
    REGISTER came through (where requests to the agent are sent);
    ``position`` orders an AOR's bindings (registration order).
    """

    aor: str
    contact: str
    expires_at: float
    call_id: str
    cseq: int
    source_host: str
    source_port: int
    transport: str
    q: str | None = None
    position: int = 0

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the Redis copy stores these)."""
        return {
            "aor": self.aor,
            "contact": self.contact,
            "expires_at": self.expires_at,
            "call_id": self.call_id,
            "cseq": self.cseq,
            "source_host": self.source_host,
            "source_port": self.source_port,
            "transport": self.transport,
            "q": self.q,
            "position": self.position,
        }

    @classmethod
    def from_json(cls, data: Any) -> StoredRegistration | None:
        """Back from :meth:`as_json`; None for anything malformed (a damaged entry is skipped)."""
        if not isinstance(data, dict):
            return None
        try:
            q = data.get("q")
            return cls(
                aor=str(data["aor"]),
                contact=str(data["contact"]),
                expires_at=float(data["expires_at"]),
                call_id=str(data["call_id"]),
                cseq=int(data["cseq"]),
                source_host=str(data["source_host"]),
                source_port=int(data["source_port"]),
                transport=str(data["transport"]),
                q=None if q is None else str(q),
                position=int(data.get("position", 0)),
            )
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True, slots=True)
class CardUsageFacts:
    """Raw usage facts of one card at ``now``, enough for every quota check.

    Counts include reserved and orphaned starts (write-ahead: over-count, never
    under-count) and exclude released ones. The rolling window covers the last
    ``window_size`` finished or orphaned calls and failed releases (card-level
    failures, which also make up ``consecutive_failures``), as in ``card_usage``.
    """

    card: str
    now: float
    calls_last_minute: int = 0
    calls_last_hour: int = 0
    calls_today: int = 0
    concurrent: int = 0
    last_start_at: float | None = None
    talk_seconds_today: float = 0.0
    distinct_callees_today: int = 0
    window_size: int = 0
    window_calls: int = 0
    window_answered: int = 0
    window_short: int = 0
    consecutive_failures: int = 0

    @property
    def answer_rate(self) -> float | None:
        """Answered share over the rolling window (None with no finished calls)."""
        return self.window_answered / self.window_calls if self.window_calls else None

    @property
    def short_share(self) -> float | None:
        """Short-call share among answered calls in the window (None if none answered)."""
        return self.window_short / self.window_answered if self.window_answered else None

    @property
    def talk_minutes_today(self) -> float:
        """Talk minutes since the start of the carrier's day."""
        return self.talk_seconds_today / 60.0


_S = TypeVar("_S")


class CalleesToday(Set[str]):
    """A card's distinct callees of the day as they were when taken; O(1) to take.

    Reads an insertion-ordered map callee → rank (of the callee's first counted start
    of the day): a callee belongs when its rank is below ``cutoff``. The map's owner
    only adds keys to it, ranked at or above every view's cutoff, while a view may
    read it; any other change goes to a new map, so a view never changes. The SQLite
    counters own their map (and copy it before removing a callee); a Redis node's
    cached snapshots share one, grown by :meth:`with_callee`. Taking a ``frozenset``
    of the callees instead cost 75 µs per call at 5,000 callees, and a ``frozenset``
    union per write a Redis node followed 0.9 ms at 50,000.
    """

    __slots__ = ("_cutoff", "_order", "_size")

    def __init__(self, order: dict[str, int], cutoff: int) -> None:
        self._order = order
        self._cutoff = cutoff
        self._size = len(order)  # every key's rank is below the cutoff when taken

    @classmethod
    def of(cls, callees: Iterable[str]) -> CalleesToday:
        """A view of its own map of ``callees`` (ranked in their order, repeats once)."""
        order = {c: i for i, c in enumerate(dict.fromkeys(callees))}
        return cls(order, len(order))

    def with_callee(self, callee: str) -> CalleesToday:
        """These callees and ``callee``: its key added to the map in place when this
        view ends it (no view reads a rank at or above ``cutoff``), else a new map."""
        if callee in self:
            return self
        if len(self._order) != self._size:  # another view grew this map: a map of ours
            grown = CalleesToday.of(self)
            return grown.with_callee(callee)
        self._order[callee] = self._cutoff  # above every rank of the map
        return CalleesToday(self._order, self._cutoff + 1)

    def without(self, callee: str) -> CalleesToday:
        """These callees less ``callee`` (a new map)."""
        if callee not in self:
            return self
        return CalleesToday.of(c for c in self if c != callee)

    def __contains__(self, item: object) -> bool:
        rank = self._order.get(item) if isinstance(item, str) else None
        return rank is not None and rank < self._cutoff

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[str]:
        # The map had exactly these keys when the view was taken, and keys are only
        # appended to it since: they are its first ``size`` keys.
        return islice(self._order, self._size)

    def __hash__(self) -> int:
        return self._hash()

    def __repr__(self) -> str:
        return f"CalleesToday({sorted(self)!r})"

    @classmethod
    def _from_iterable(cls, it: Iterable[_S]) -> frozenset[_S]:
        # Set operators (|, &, -) on a view give a plain frozenset.
        return frozenset(it)

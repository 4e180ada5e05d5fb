"""Cards and their states: synchronous bookkeeping that *returns* actions.

Carrier final responses are classified once by :func:`gateway.cards.classify.classify`
(``card-dead``, ``trunk-unreachable`` or ``callee-outcome``: the table a reader
checks against the carrier's documentation) and applied to the card by
:meth:`CardManager.on_response` / :meth:`CardManager.on_fault`, which return a
:class:`Verdict`: suspend a dead card with the evidence, rest a card whose trunk
did not answer (a cooldown, not a suspension), count ambiguous refusals toward
the card's suspicion (N of them to N distinct callees within the carrier's
window make it ``suspect``; the same refusal for the same callee on two cards is
the destination's), and say whether the call may move to another card (only
before any 18x, and for ``trunk-unreachable`` only to a card that does not share
the device or trunk). Cards are chosen by the one picker,
``policies.selection.CardSelection``, over :class:`StoreCardSource`.

Every state change goes through one transition table (:data:`LEGAL_TRANSITIONS`),
is persisted with its time, cause, evidence and actor through a
:class:`gateway.store.CardRepository`, and is appended to :attr:`CardManager.events`
as a :class:`CardStateChanged` for the event publisher to drain.

Failure mode: automatic marks fail *safe* — if the store cannot be written the
card is still taken out of service in memory and the write is retried on the next
timer; operator actions that would put a card back into service fail *closed*
(they raise :class:`gateway.store.StoreUnavailable` and change nothing).

This module must never do network I/O, read a clock (``now`` is passed in), or
import ``gateway.config`` at module level (the adapters at the bottom import it
lazily); it never logs callee numbers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from gateway.cards.classify import (
    DEFAULT_DEAD_CAUSES,
    Answer,
    BLegClass,
    CarrierRule,
    Classification,
    SuspendReason,
    classify,
)
from gateway.store import (
    CardRepository,
    QuotaExceeded,
    StoredCard,
    StoreUnavailable,
    TransitionRecord,
    UsageLedger,
)
from policies.context import CallContext
from policies.quotas import (
    USABLE_STATES,
    CardSnapshot,
    CardState,
    CardUsageView,
    QuotaProfile,
)

if TYPE_CHECKING:
    from gateway.config import Settings

__all__ = [
    "LEGAL_TRANSITIONS",
    "TIMER_SWEEP",
    "Answer",
    "BLegClass",
    "Card",
    "CardDef",
    "CardEvent",
    "CardManager",
    "CardState",
    "CardStateChanged",
    "CarrierRule",
    "CarrierTerms",
    "Classification",
    "IllegalTransition",
    "PoolExhausted",
    "StoreCardSource",
    "SuspendReason",
    "Verdict",
    "card_defs_from_settings",
    "card_snapshot",
    "effective_profile",
    "probation_profiles_from_settings",
    "quota_profiles_from_settings",
    "rules_from_settings",
    "terms_from_settings",
]


# Every legal state change lives in this one table. Anything else raises
# IllegalTransition. RETIRED is terminal. SUSPENDED → SUSPENDED reclassifies the
# reason (e.g. maintenance turned out to be a violation).
LEGAL_TRANSITIONS: frozenset[tuple[CardState, CardState]] = frozenset(
    {
        (CardState.ACTIVE, CardState.SUSPENDED),  # carrier rule, fault threshold, operator
        (CardState.ACTIVE, CardState.PROBATION),  # operator reduces the card's limits
        (CardState.ACTIVE, CardState.RETIRED),
        (CardState.SUSPENDED, CardState.SUSPENDED),  # reason reclassified
        (CardState.SUSPENDED, CardState.APPEALING),  # operator files an appeal
        (CardState.SUSPENDED, CardState.PROBATION),  # restored with reduced limits
        (CardState.SUSPENDED, CardState.ACTIVE),  # maintenance over, or operator restore
        (CardState.SUSPENDED, CardState.RETIRED),
        (CardState.APPEALING, CardState.SUSPENDED),  # appeal rejected
        (CardState.APPEALING, CardState.PROBATION),  # appeal granted, on probation
        (CardState.APPEALING, CardState.ACTIVE),  # appeal granted outright
        (CardState.APPEALING, CardState.RETIRED),
        (CardState.PROBATION, CardState.ACTIVE),  # probation period over
        (CardState.PROBATION, CardState.SUSPENDED),  # suspended again while on probation
        (CardState.PROBATION, CardState.RETIRED),
        (CardState.ACTIVE, CardState.SUSPECT),  # ambiguous refusals to distinct callees
        (CardState.PROBATION, CardState.SUSPECT),
        (CardState.SUSPECT, CardState.SUSPENDED),  # operator or probe confirms
        (CardState.SUSPECT, CardState.ACTIVE),  # operator clears
        (CardState.SUSPECT, CardState.PROBATION),  # cleared while its probation runs
        (CardState.SUSPECT, CardState.RETIRED),
    }
)


#: Local failures of a B-leg INVITE: no response at all (``trunk-unreachable``).
FAULT_CAUSES = frozenset({"timer-b", "transport-error"})


class IllegalTransition(ValueError):
    """A requested card state change is not in :data:`LEGAL_TRANSITIONS`."""

    def __init__(self, card: str, from_state: CardState, to_state: CardState) -> None:
        super().__init__(f"card {card}: illegal transition {from_state} → {to_state}")
        self.card = card
        self.from_state = from_state
        self.to_state = to_state


@dataclass(frozen=True, slots=True)
class CardDef:
    """The static, configured part of a card (no credentials: the B2BUA holds those)."""

    id: str
    carrier: str
    number: str
    pool: str = "main"
    priority: int = 100
    quota_profile: str = "default"
    device: str | None = None


@dataclass(slots=True)
class Card:
    """A card's configuration plus its live state (owned by :class:`CardManager`)."""

    id: str
    carrier: str
    number: str
    pool: str
    priority: int
    quota_profile: str
    state: CardState = CardState.ACTIVE
    reason: SuspendReason | None = None
    since: float = 0.0
    probation_until: float | None = None
    profile_override: str | None = None
    resume_at: float | None = None

    @property
    def usable(self) -> bool:
        """Whether the card's state lets it carry calls (quota aside)."""
        return self.state in USABLE_STATES

    @property
    def effective_profile(self) -> str:
        """The quota profile name in force: an override (probation) wins."""
        return self.profile_override or self.quota_profile

    def stored(self) -> StoredCard:
        """The row the store keeps for this card."""
        return StoredCard(
            id=self.id,
            carrier=self.carrier,
            number=self.number,
            pool=self.pool,
            priority=self.priority,
            quota_profile=self.quota_profile,
            state=self.state.value,
            reason=None if self.reason is None else self.reason.value,
            since=self.since,
            probation_until=self.probation_until,
            profile_override=self.profile_override,
            resume_at=self.resume_at,
        )

    @classmethod
    def from_stored(cls, row: StoredCard) -> Card:
        """Rebuild a card from its stored row."""
        return cls(
            id=row.id,
            carrier=row.carrier,
            number=row.number,
            pool=row.pool,
            priority=row.priority,
            quota_profile=row.quota_profile,
            state=CardState(row.state),
            reason=None if row.reason is None else SuspendReason(row.reason),
            since=row.since,
            probation_until=row.probation_until,
            profile_override=row.profile_override,
            resume_at=row.resume_at,
        )


# --- events ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CardStateChanged:
    """A card changed state (→ ``dialgate/cards/{card}/state``; suspensions also alert)."""

    card: str
    pool: str
    at: float
    from_state: CardState
    to_state: CardState
    reason: SuspendReason | None
    cause: str
    evidence: Mapping[str, Any]
    actor: str
    resume_at: float | None = None
    probation_until: float | None = None


@dataclass(frozen=True, slots=True)
class PoolExhausted:
    """No card of the pool could take a call (→ ``dialgate/alerts`` pool-exhausted)."""

    pool: str
    at: float
    call_id: str | None
    retry_after: float | None
    skipped: Mapping[str, str]


CardEvent = CardStateChanged | PoolExhausted


# --- verdicts -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CarrierTerms:
    """How a carrier's answers are judged (``[[carriers]]`` keys of the same names).

    ``dead_causes``: Q.850 causes that prove the card dead on this carrier.
    ``rest_seconds``: how long a card rests after ``trunk-unreachable``.
    ``suspect_after`` ambiguous refusals to that many distinct callees within
    ``suspect_window`` seconds make a card ``suspect``.
    """

    dead_causes: frozenset[int] = DEFAULT_DEAD_CAUSES
    rest_seconds: float = 30.0
    suspect_after: int = 5
    suspect_window: float = 600.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one carrier answer did to the card and what the call may do next.

    ``failover`` is True when the call may move to another card (the callee
    was never rung; for ``trunk-unreachable`` the caller excludes the cards of
    :meth:`CardManager.sharing`). ``marked`` is the reason the card was
    suspended (None when its state did not change that way); ``event`` the
    resulting transition (a suspension, or the move to ``suspect``);
    ``rest_until`` when the card rests; ``suspicion`` the card's count of
    ambiguous refusals after this answer.
    """

    kind: BLegClass
    failover: bool
    row: str = ""
    marked: SuspendReason | None = None
    event: CardStateChanged | None = None
    rest_until: float | None = None
    suspicion: int = 0
    detail: str = ""


# --- the manager ----------------------------------------------------------------------


class CardManager:
    """Card states and what carrier answers do to them, for one gateway.

    ``repo`` persists cards and transitions (``None`` keeps everything in memory,
    for tests). ``rules`` maps carrier name → its ordered rules; ``terms``
    carrier name → :class:`CarrierTerms`; ``devices`` card id → the device or
    trunk it goes out through (cards sharing one share a trunk failure; a card
    without an entry is its own). ``carrier_available`` says whether a carrier is
    up (the :class:`gateway.cards.health.CarrierHealth` answer). ``probe``,
    when set, is called with a card id when the card turns ``suspect`` (the
    health runner REGISTERs it).
    """

    def __init__(
        self,
        repo: CardRepository | None = None,
        *,
        rules: Mapping[str, Sequence[CarrierRule]] | None = None,
        terms: Mapping[str, CarrierTerms] | None = None,
        devices: Mapping[str, str] | None = None,
        carrier_available: Callable[[str], bool] | None = None,
        store_retry_seconds: float = 5.0,
    ) -> None:
        self.repo = repo
        self.rules: dict[str, list[CarrierRule]] = {k: list(v) for k, v in (rules or {}).items()}
        self.terms: dict[str, CarrierTerms] = dict(terms or {})
        self.devices: dict[str, str] = dict(devices or {})
        self.carrier_available = carrier_available or (lambda _carrier: True)
        self.store_retry_seconds = store_retry_seconds
        self.probe: Callable[[str], None] | None = None
        self.events: list[CardEvent] = []
        self._cards: dict[str, Card] = {}
        self._last_used: dict[str, str] = {}  # pool → card id (stickiness)
        self._unsaved: list[tuple[StoredCard, TransitionRecord]] = []
        self._retry_at: float | None = None
        # Rests (cooldowns after trunk-unreachable): card → until (epoch s).
        self._rest: dict[str, float] = {}
        # Ambiguous refusals per card: (at, callee, status), distinct callees, in order.
        self._suspicion: dict[str, deque[tuple[float, str, int]]] = {}
        # The same refusals per callee: callee → {card: (status, at)} (the destination's
        # when one callee is refused the same way on two cards).
        self._refused: dict[str, dict[str, tuple[int, float]]] = {}
        # Pool order (priority, id) per pool, computed once per load(): cards()
        # runs on every call and pool and priority only change when cards are loaded.
        self._order: dict[str | None, tuple[Card, ...]] = {}

    # --- loading --------------------------------------------------------------------

    def load(self, defs: Iterable[CardDef], now: float) -> None:
        """Register configured cards, keeping the state the store remembers.

        A card suspended before a restart is still suspended after it. Static
        fields (carrier, number, pool, priority, profile) come from ``defs``.
        """
        for d in defs:
            row = StoredCard(
                id=d.id,
                carrier=d.carrier,
                number=d.number,
                pool=d.pool,
                priority=d.priority,
                quota_profile=d.quota_profile,
                since=now,
            )
            stored = self.repo.upsert_card(row) if self.repo is not None else row
            self._cards[d.id] = Card.from_stored(stored)
            if d.device:
                self.devices[d.id] = d.device
        self._order.clear()

    def sync_from_store(self, now: float) -> list[CardStateChanged]:
        """Adopt state changes another gateway instance wrote to the shared store.

        Cards whose stored state differs from memory take the stored one; each
        change is emitted (actor ``peer``, nothing written back). Call it on a
        timer when several instances share the store. Skipped while this
        instance still has unsaved transitions (its own view is newer).
        """
        if self.repo is None or self._unsaved:
            return []
        changed: list[CardStateChanged] = []
        for row in self.repo.load_cards():
            card = self._cards.get(row.id)
            if card is None:
                continue
            stored = Card.from_stored(row)
            if (stored.state, stored.reason, stored.since) == (card.state, card.reason, card.since):
                continue
            from_state = card.state
            for name in (
                "state",
                "reason",
                "since",
                "probation_until",
                "profile_override",
                "resume_at",
            ):
                setattr(card, name, getattr(stored, name))
            if not card.usable:
                self._suspicion.pop(card.id, None)
            event = CardStateChanged(
                card=card.id,
                pool=card.pool,
                at=now,
                from_state=from_state,
                to_state=card.state,
                reason=card.reason,
                cause="peer-sync",
                evidence={"since": card.since},
                actor="peer",
                resume_at=card.resume_at,
                probation_until=card.probation_until,
            )
            self.events.append(event)
            changed.append(event)
        return changed

    def get(self, card_id: str) -> Card:
        """The card with this id (KeyError when unknown)."""
        return self._cards[card_id]

    def find(self, card_id: str) -> Card | None:
        """The card with this id, or None when unknown."""
        return self._cards.get(card_id)

    def cards(self, pool: str | None = None) -> list[Card]:
        """Cards (of one pool), in pool order: priority, then id."""
        order = self._order.get(pool)
        if order is None:
            chosen = [c for c in self._cards.values() if pool is None or c.pool == pool]
            order = tuple(sorted(chosen, key=lambda c: (c.pool, c.priority, c.id)))
            self._order[pool] = order
        return list(order)

    def pools(self) -> dict[str, list[Card]]:
        """Every pool with its cards in priority order."""
        out: dict[str, list[Card]] = {}
        for card in self.cards():
            out.setdefault(card.pool, []).append(card)
        return out

    def drain_events(self) -> list[CardEvent]:
        """Take the events accumulated since the last drain."""
        events, self.events = self.events, []
        return events

    # --- stickiness, rests and shared failures ---------------------------------------

    def last_used(self, pool: str) -> str | None:
        """The card most recently picked in ``pool`` (the sticky choice)."""
        return self._last_used.get(pool)

    def note_used(self, card_id: str) -> None:
        """Record that a call was placed on ``card_id`` (stickiness for its pool)."""
        card = self._cards[card_id]
        self._last_used[card.pool] = card.id

    def resting_until(self, card_id: str, now: float) -> float | None:
        """When the card's rest (after ``trunk-unreachable``) ends; None when not resting."""
        until = self._rest.get(card_id)
        if until is None:
            return None
        if now >= until:
            del self._rest[card_id]
            return None
        return until

    def device(self, card_id: str) -> str:
        """The device or trunk a card goes out through (its own id when unknown)."""
        return self.devices.get(card_id, f"card:{card_id}")

    def sharing(self, card_id: str) -> set[str]:
        """The cards that share ``card_id``'s device or trunk (itself included)."""
        device = self.device(card_id)
        return {cid for cid in self._cards if self.device(cid) == device} | {card_id}

    def terms_rest(self, card_id: str | None) -> float:
        """Seconds a card of this carrier rests after ``trunk-unreachable``."""
        card = self._cards.get(card_id or "")
        return (self._terms(card) if card else CarrierTerms()).rest_seconds

    def _terms(self, card: Card) -> CarrierTerms:
        return self.terms.get(card.carrier) or CarrierTerms()

    def _classify(self, card: Card, answer: Answer) -> Classification:
        """The one classification (``classify.classify``) under the card's carrier's terms."""
        terms = self._terms(card)
        return classify(
            answer,
            self.rules.get(card.carrier, ()),
            dead_causes=terms.dead_causes,
            rest_seconds=terms.rest_seconds,
        )

    def suspicion(self, card_id: str) -> int:
        """Ambiguous refusals to distinct callees counted against the card now."""
        return len(self._suspicion.get(card_id, ()))

    # --- carrier responses ----------------------------------------------------------

    def on_response(
        self,
        card_id: str,
        status: int,
        reason_phrase: str = "",
        *,
        now: float,
        warning: str | None = None,
        retry_after: float | None = None,
        reason_header: str | None = None,
        ringing: bool = False,
        provisional: bool = False,
        callee: str = "",
        local: bool = False,
    ) -> Verdict:
        """Classify a *final* answer to an INVITE from ``card_id`` and apply it to the card.

        ``ringing``: an 18x came from the far side (the callee was reached);
        ``provisional``: any 1xx came back (a 100 too); ``local``: the gateway
        made the answer itself (Timer B 408, transport error 503); ``callee``:
        the E.164 destination (kept in memory only, for the suspicion rule).
        """
        card = self._cards[card_id]
        answer = Answer(
            status=status,
            reason_phrase=reason_phrase,
            warning=warning,
            reason_header=reason_header,
            retry_after=retry_after,
            local=local,
            provisional=provisional or ringing,
            ringing=ringing,
        )
        result = self._classify(card, answer)
        evidence: dict[str, Any] = {"response": f"SIP/2.0 {status} {reason_phrase}".rstrip()}
        if local:
            evidence = {"fault": "timer-b" if status == 408 else "transport-error"}
        if warning:
            evidence["warning"] = warning
        if reason_header:
            evidence["reason"] = reason_header
        if retry_after is not None:
            evidence["retry_after"] = retry_after
        evidence["class"] = str(result.kind)
        evidence["row"] = result.row
        return self._apply(card, result, now, evidence, callee, status, retry_after, ringing)

    def on_fault(
        self,
        card_id: str,
        cause: str,
        *,
        now: float,
        ringing: bool = False,
        provisional: bool = False,
        callee: str = "",
    ) -> Verdict:
        """No usable response: ``cause`` is ``timer-b`` (408) or ``transport-error`` (503)."""
        if cause not in FAULT_CAUSES:
            raise ValueError(f"unknown fault cause {cause!r}; one of {sorted(FAULT_CAUSES)}")
        status = 408 if cause == "timer-b" else 503
        return self.on_response(
            card_id,
            status,
            "Request Timeout" if status == 408 else "Service Unavailable",
            now=now,
            ringing=ringing,
            provisional=provisional,
            callee=callee,
            local=True,
        )

    def on_register_response(
        self,
        card_id: str,
        status: int,
        reason_phrase: str = "",
        *,
        now: float,
        warning: str | None = None,
        retry_after: float | None = None,
        reason_header: str | None = None,
    ) -> Verdict:
        """A REGISTER of the card was answered: a refusal proves the card dead (no failover)."""
        card = self._cards[card_id]
        answer = Answer(
            status=status,
            reason_phrase=reason_phrase,
            warning=warning,
            reason_header=reason_header,
            retry_after=retry_after,
            register=True,
        )
        result = self._classify(card, answer)
        evidence: dict[str, Any] = {
            "register": f"SIP/2.0 {status} {reason_phrase}".rstrip(),
            "class": str(result.kind),
            "row": result.row,
        }
        if warning:
            evidence["warning"] = warning
        if 200 <= status < 300:
            return Verdict(BLegClass.CALLEE, False, "registered", detail="registered")
        if result.kind is not BLegClass.CARD_DEAD:
            return Verdict(result.kind, False, result.row, detail="register not answered")
        verdict = self._suspend(card, result, now, evidence, retry_after)
        return Verdict(
            verdict.kind, False, verdict.row, verdict.marked, verdict.event, detail=verdict.detail
        )

    def _apply(
        self,
        card: Card,
        result: Classification,
        now: float,
        evidence: dict[str, Any],
        callee: str,
        status: int,
        retry_after: float | None,
        ringing: bool = False,
    ) -> Verdict:
        if result.kind is BLegClass.CARD_DEAD:
            return self._suspend(card, result, now, evidence, retry_after)
        rest_until: float | None = None
        if result.kind is BLegClass.TRUNK_UNREACHABLE and result.rest:
            rest_until = max(self._rest.get(card.id, 0.0), now + result.rest)
            self._rest[card.id] = rest_until
        event: CardStateChanged | None = None
        if result.ambiguous:
            event = self._suspect(card, callee, status, now, evidence)
        elif ringing or result.row == "2xx":
            # The card reached a callee: earlier refusals were the destinations'.
            self._suspicion.pop(card.id, None)
        return Verdict(
            result.kind,
            failover=result.failover,
            row=result.row,
            event=event,
            rest_until=rest_until,
            suspicion=self.suspicion(card.id),
            detail=result.row,
        )

    def _suspect(
        self, card: Card, callee: str, status: int, now: float, evidence: dict[str, Any]
    ) -> CardStateChanged | None:
        """Count one ambiguous refusal; at the carrier's threshold the card turns suspect."""
        terms = self._terms(card)
        horizon = now - terms.suspect_window
        seen = self._suspicion.setdefault(card.id, deque())
        while seen and seen[0][0] < horizon:
            seen.popleft()
        key = callee or f"?{len(seen)}:{now}"
        refused = self._refused.setdefault(key, {})
        for other, (_other_status, at) in list(refused.items()):
            if at < horizon:
                del refused[other]
        same_elsewhere = [
            other for other, (st, _at) in refused.items() if other != card.id and st == status
        ]
        refused[card.id] = (status, now)
        self._prune_refused(horizon)
        if same_elsewhere:
            # The same refusal for the same callee on two cards: the destination's.
            for other in [card.id, *same_elsewhere]:
                kept = self._suspicion.get(other)
                if kept:
                    self._suspicion[other] = deque(e for e in kept if e[1] != key)
            return None
        if any(entry[1] == key for entry in seen):
            # The same callee refused again: one callee, counted once, at its latest time.
            kept = deque(entry for entry in seen if entry[1] != key)
            kept.append((now, key, status))
            self._suspicion[card.id] = kept
            return None
        seen.append((now, key, status))
        if len(seen) < terms.suspect_after or card.state not in USABLE_STATES:
            return None
        statuses = sorted({entry[2] for entry in seen})
        self._suspicion.pop(card.id, None)
        event = self._transition(
            card,
            CardState.SUSPECT,
            now=now,
            reason=None,
            cause="gateway:suspicion",
            evidence={
                **evidence,
                "refusals": terms.suspect_after,
                "distinct_callees": terms.suspect_after,
                "window_seconds": terms.suspect_window,
                "statuses": statuses,
            },
            actor="gateway",
            strict=False,
        )
        if self.probe is not None:
            self.probe(card.id)
        return event

    def _prune_refused(self, horizon: float) -> None:
        """Keep the per-callee memory bounded by the suspicion windows."""
        if len(self._refused) < 4096:
            return
        for callee in [c for c, cards in self._refused.items() if not cards]:
            del self._refused[callee]
        for callee, cards in list(self._refused.items()):
            if all(at < horizon for _st, at in cards.values()):
                del self._refused[callee]

    def _suspend(
        self,
        card: Card,
        result: Classification,
        now: float,
        evidence: dict[str, Any],
        retry_after: float | None,
    ) -> Verdict:
        reason = result.reason or SuspendReason.UNKNOWN
        resume_at = (
            now + retry_after if reason is SuspendReason.MAINTENANCE and retry_after else None
        )
        event: CardStateChanged | None = None
        already = card.state is CardState.SUSPENDED and card.reason is reason
        if card.state is not CardState.RETIRED and not already:
            event = self._transition(
                card,
                CardState.SUSPENDED,
                now=now,
                reason=reason,
                cause=f"carrier:{result.row}",
                evidence=evidence,
                actor="gateway",
                resume_at=resume_at,
                strict=False,
            )
        elif already and resume_at is not None and resume_at != card.resume_at:
            # A later Retry-After for a card already in maintenance moves its end.
            card.resume_at = resume_at
        return Verdict(
            BLegClass.CARD_DEAD,
            failover=result.failover,
            row=result.row,
            marked=reason,
            event=event,
            detail=f"{result.row}: {reason}",
        )

    # --- mark and operator actions --------------------------------------------------

    def mark(
        self,
        card_id: str,
        to_state: CardState,
        *,
        now: float,
        reason: SuspendReason | None = None,
        cause: str,
        evidence: Mapping[str, Any] | None = None,
        actor: str = "operator",
        probation_until: float | None = None,
        profile: str | None = None,
        resume_at: float | None = None,
    ) -> CardStateChanged:
        """Change a card's state through the transition table (the ``mark`` verb).

        Raises :class:`IllegalTransition` for a change not in the table and
        :class:`StoreUnavailable` (changing nothing) when it cannot be persisted.
        """
        return self._transition(
            self._cards[card_id],
            to_state,
            now=now,
            reason=reason,
            cause=cause,
            evidence=dict(evidence or {}),
            actor=actor,
            probation_until=probation_until,
            profile=profile,
            resume_at=resume_at,
            strict=True,
        )

    def suspend(
        self,
        card_id: str,
        *,
        now: float,
        reason: SuspendReason = SuspendReason.MANUAL,
        actor: str = "operator",
        note: str = "",
    ) -> CardStateChanged:
        """Operator: take a card out of service."""
        return self.mark(
            card_id,
            CardState.SUSPENDED,
            now=now,
            reason=reason,
            cause="operator:suspend",
            evidence={"note": note} if note else None,
            actor=actor,
        )

    def appeal(
        self, card_id: str, *, now: float, actor: str = "operator", note: str = ""
    ) -> CardStateChanged:
        """Operator: an appeal was filed with the carrier for a suspended card."""
        card = self._cards[card_id]
        return self.mark(
            card_id,
            CardState.APPEALING,
            now=now,
            reason=card.reason,
            cause="operator:appeal",
            evidence={"note": note} if note else None,
            actor=actor,
        )

    def probation(
        self,
        card_id: str,
        *,
        now: float,
        until: float,
        profile: str | None = None,
        actor: str = "operator",
        note: str = "",
    ) -> CardStateChanged:
        """Operator: restore a card on probation until ``until`` with a reduced ``profile``."""
        if until <= now:
            raise ValueError("probation must end in the future")
        return self.mark(
            card_id,
            CardState.PROBATION,
            now=now,
            cause="operator:probation",
            evidence={"note": note} if note else None,
            actor=actor,
            probation_until=until,
            profile=profile,
        )

    def restore(
        self, card_id: str, *, now: float, actor: str = "operator", note: str = ""
    ) -> CardStateChanged:
        """Operator: put a card straight back into full service (no probation)."""
        event = self.mark(
            card_id,
            CardState.ACTIVE,
            now=now,
            cause="operator:restore",
            evidence={"note": note} if note else None,
            actor=actor,
        )
        self._suspicion.pop(card_id, None)
        self._rest.pop(card_id, None)
        return event

    def clear(
        self, card_id: str, *, now: float, actor: str = "operator", note: str = ""
    ) -> CardStateChanged:
        """Operator: a ``suspect`` card is fine after all; back to probation or active."""
        card = self._cards[card_id]
        if card.state is not CardState.SUSPECT:
            raise IllegalTransition(card_id, card.state, CardState.ACTIVE)
        self._suspicion.pop(card_id, None)
        until = card.probation_until
        if until is not None and until > now:
            return self.mark(
                card_id,
                CardState.PROBATION,
                now=now,
                cause="operator:clear",
                evidence={"note": note} if note else None,
                actor=actor,
                probation_until=until,
                profile=card.profile_override,
            )
        return self.mark(
            card_id,
            CardState.ACTIVE,
            now=now,
            cause="operator:clear",
            evidence={"note": note} if note else None,
            actor=actor,
        )

    def retire(
        self, card_id: str, *, now: float, actor: str = "operator", note: str = ""
    ) -> CardStateChanged:
        """Operator: take a card out of service for good."""
        return self.mark(
            card_id,
            CardState.RETIRED,
            now=now,
            cause="operator:retire",
            evidence={"note": note} if note else None,
            actor=actor,
        )

    def _transition(
        self,
        card: Card,
        to_state: CardState,
        *,
        now: float,
        reason: SuspendReason | None,
        cause: str,
        evidence: dict[str, Any],
        actor: str,
        strict: bool,
        probation_until: float | None = None,
        profile: str | None = None,
        resume_at: float | None = None,
    ) -> CardStateChanged:
        from_state = card.state
        if (from_state, to_state) not in LEGAL_TRANSITIONS:
            raise IllegalTransition(card.id, from_state, to_state)
        if to_state is CardState.SUSPENDED and reason is None:
            raise ValueError("a suspension needs a reason")
        if to_state is CardState.PROBATION and probation_until is None:
            raise ValueError("probation needs an end time")
        new_reason = reason if to_state in (CardState.SUSPENDED, CardState.APPEALING) else None
        updated = Card(
            id=card.id,
            carrier=card.carrier,
            number=card.number,
            pool=card.pool,
            priority=card.priority,
            quota_profile=card.quota_profile,
            state=to_state,
            reason=new_reason,
            since=now,
            # A suspect card keeps its probation terms (cleared, it goes back to them).
            probation_until=(
                probation_until
                if to_state is CardState.PROBATION
                else card.probation_until
                if to_state is CardState.SUSPECT
                else None
            ),
            profile_override=(
                profile
                if to_state is CardState.PROBATION
                else card.profile_override
                if to_state is CardState.SUSPECT
                else None
            ),
            resume_at=resume_at if to_state is CardState.SUSPENDED else None,
        )
        record = TransitionRecord(
            card=card.id,
            at=now,
            from_state=from_state.value,
            to_state=to_state.value,
            reason=None if new_reason is None else new_reason.value,
            cause=cause,
            evidence=dict(evidence),
            actor=actor,
        )
        self._persist(updated.stored(), record, now=now, strict=strict)
        for name in Card.__slots__:
            setattr(card, name, getattr(updated, name))
        if to_state is not CardState.SUSPECT:
            self._suspicion.pop(card.id, None)
        event = CardStateChanged(
            card=card.id,
            pool=card.pool,
            at=now,
            from_state=from_state,
            to_state=to_state,
            reason=new_reason,
            cause=cause,
            evidence=dict(evidence),
            actor=actor,
            resume_at=card.resume_at,
            probation_until=card.probation_until,
        )
        self.events.append(event)
        return event

    def _persist(
        self, row: StoredCard, record: TransitionRecord, *, now: float, strict: bool
    ) -> None:
        if self.repo is None:
            return
        if self._unsaved:
            self._flush(now)
        try:
            if self._unsaved:
                raise StoreUnavailable("earlier card transitions still unsaved")
            self.repo.save_transition(row, record)
        except StoreUnavailable:
            if strict:
                raise
            # Automatic marks fail safe: keep the card out of service in memory
            # and write the transition when the store is back.
            self._unsaved.append((row, record))
            self._retry_at = now + self.store_retry_seconds

    def _flush(self, now: float) -> None:
        if self.repo is None:
            self._unsaved.clear()
        while self._unsaved and self.repo is not None:
            row, record = self._unsaved[0]
            try:
                self.repo.save_transition(row, record)
            except StoreUnavailable:
                self._retry_at = now + self.store_retry_seconds
                return
            self._unsaved.pop(0)
        self._retry_at = None

    @property
    def unsaved_transitions(self) -> int:
        """Transitions applied in memory but not yet written (store was down)."""
        return len(self._unsaved)

    # --- timers ---------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` next has work: maintenance ends, probation ends, retries."""
        times = [c.resume_at for c in self._cards.values() if c.resume_at is not None]
        times += [
            c.probation_until
            for c in self._cards.values()
            if c.state is CardState.PROBATION and c.probation_until is not None
        ]
        if self._retry_at is not None:
            times.append(self._retry_at)
        return min(times) if times else None

    def handle_timer(self, now: float) -> list[CardStateChanged]:
        """Run due work: maintenance over → active; probation over → active; retry writes."""
        if self._retry_at is not None and now >= self._retry_at:
            self._flush(now)
        changed: list[CardStateChanged] = []
        for card in self.cards():
            if (
                card.state is CardState.SUSPENDED
                and card.reason is SuspendReason.MAINTENANCE
                and card.resume_at is not None
                and now >= card.resume_at
            ):
                changed.append(
                    self._transition(
                        card,
                        CardState.ACTIVE,
                        now=now,
                        reason=None,
                        cause="maintenance-over",
                        evidence={"resume_at": card.resume_at},
                        actor="gateway",
                        strict=False,
                    )
                )
            elif (
                card.state is CardState.PROBATION
                and card.probation_until is not None
                and now >= card.probation_until
            ):
                changed.append(
                    self._transition(
                        card,
                        CardState.ACTIVE,
                        now=now,
                        reason=None,
                        cause="probation-over",
                        evidence={"probation_until": card.probation_until},
                        actor="gateway",
                        strict=False,
                    )
                )
        return changed


# --- adapters from configuration ------------------------------------------------------


def card_defs_from_settings(settings: Settings) -> list[CardDef]:
    """The ``[[cards]]`` of a loaded configuration as :class:`CardDef` values."""
    return [
        CardDef(
            id=c.id,
            carrier=c.carrier,
            number=c.number,
            pool=c.pool,
            priority=c.priority,
            quota_profile=c.quota,
            device=c.device or _trunk_of(settings, c.carrier),
        )
        for c in settings.cards
    ]


def _trunk_of(settings: Settings, carrier: str) -> str:
    """The trunk a card without a ``device`` goes out through: its carrier's address."""
    for conf in settings.carriers:
        if conf.name == carrier:
            return f"trunk:{conf.address}"
    return f"carrier:{carrier}"


def terms_from_settings(settings: Settings) -> dict[str, CarrierTerms]:
    """Each carrier's judging terms (``dead_causes``, ``rest_seconds``, ``suspect_*``)."""
    return {
        c.name: CarrierTerms(
            dead_causes=frozenset(c.dead_causes),
            rest_seconds=c.rest_seconds,
            suspect_after=c.suspect_after,
            suspect_window=c.suspect_window,
        )
        for c in settings.carriers
    }


def rules_from_settings(settings: Settings) -> dict[str, list[CarrierRule]]:
    """Each carrier's ``[[carriers.rules]]`` as :class:`CarrierRule` values, in file order."""
    return {
        carrier.name: [
            CarrierRule(status=r.status, reason=r.reason, match=r.match) for r in carrier.rules
        ]
        for carrier in settings.carriers
    }


_FALLBACK_PROFILE = QuotaProfile(name="builtin")  # one call at a time, nothing else


def effective_profile(
    card: Card,
    profiles: Mapping[str, QuotaProfile],
    probation_of: Mapping[str, str] | None = None,
) -> QuotaProfile:
    """The limits in force for ``card`` now: override, else probation profile, else its own.

    Matches ``policies.quotas.CardSnapshot.effective_profile``; this is what
    ``store.reserve(profile=...)`` must be given.
    """
    if card.profile_override:
        return profiles.get(card.profile_override, _FALLBACK_PROFILE)
    if card.state is CardState.PROBATION:
        name = (probation_of or {}).get(card.quota_profile)
        if name and name in profiles:
            return profiles[name]
    return profiles.get(card.quota_profile, _FALLBACK_PROFILE)


def card_snapshot(
    card: Card,
    usage: CardUsageView,
    now: float,
    *,
    profiles: Mapping[str, QuotaProfile],
    timezones: Mapping[str, str],
    probation_of: Mapping[str, str] | None = None,
) -> CardSnapshot:
    """The ``policies.quotas.CardSnapshot`` of a card: its state, profiles and usage.

    ``profiles`` maps profile name → limits; ``timezones`` carrier → IANA zone;
    ``probation_of`` profile name → the profile used while on probation. An
    unknown profile name falls back to a built-in allowing one call at a time.
    """
    fallback = _FALLBACK_PROFILE
    base = profiles.get(card.quota_profile, fallback)
    probation_name = (probation_of or {}).get(card.quota_profile)
    return CardSnapshot(
        card_id=card.id,
        state=card.state,
        profile=base,
        timezone=timezones.get(card.carrier, "UTC"),
        usage=usage.card_usage(card.id, now),
        probation_profile=profiles.get(probation_name) if probation_name else None,
        profile_override=(
            profiles.get(card.profile_override, fallback) if card.profile_override else None
        ),
        pool=card.pool,
        priority=card.priority,
    )


def quota_profiles_from_settings(settings: Settings) -> dict[str, QuotaProfile]:
    """``[quota_profiles.*]`` as ``policies.quotas.QuotaProfile`` values
    (:meth:`gateway.config.QuotaProfileSettings.to_profile`)."""
    return {name: p.to_profile(name) for name, p in settings.quota_profiles.items()}


def probation_profiles_from_settings(settings: Settings) -> dict[str, str]:
    """Profile name → the name of its ``probation`` profile, where one is configured."""
    return {
        name: p.probation for name, p in settings.quota_profiles.items() if p.probation is not None
    }


#: How often card selection runs the card manager's timers at most (seconds): a card's
#: maintenance or probation ends at most this late for the calls.
TIMER_SWEEP = 0.25


class StoreCardSource:
    """``policies.selection.CardSource`` over a :class:`CardManager` and a usage ledger.

    Lets the policy pipeline's ``CardSelection`` pick and reserve the first card
    of a call, and the next card after a failure. The pool is the agent's bound
    card's pool, else ``default_pool`` (or what ``pool_for(ctx)`` says). A card
    whose carrier is down or that rests after a trunk failure is a candidate
    marked ``unavailable`` (so a bound agent hears why it waits); cards in
    maintenance whose time is up are recovered first. Reservations re-check the
    card's effective profile atomically.
    """

    def __init__(
        self,
        manager: CardManager,
        ledger: UsageLedger,
        *,
        profiles: Mapping[str, QuotaProfile],
        timezones: Mapping[str, str],
        probation_of: Mapping[str, str] | None = None,
        default_pool: str = "main",
        pool_for: Callable[[CallContext], str] | None = None,
    ) -> None:
        self.manager = manager
        self.ledger = ledger
        self.profiles = profiles
        self.timezones = timezones
        self.probation_of = probation_of
        self.default_pool = default_pool
        self.pool_for = pool_for
        #: When :meth:`candidate_ids` last ran the manager's timers (its clock).
        self._timers_at: float | None = None

    def pool_of(self, ctx: CallContext) -> str:
        """The pool a call draws its cards from."""
        if self.pool_for is not None:
            return self.pool_for(ctx)
        bound = None if ctx.bound_card is None else self.manager.find(ctx.bound_card)
        return self.default_pool if bound is None else bound.pool

    def candidate_ids(self, ctx: CallContext, now: float) -> list[str]:
        """The bound card (if any) and the pool's cards.

        Cards whose maintenance or probation is over are recovered first: the
        manager's timers run here, at most every :data:`TIMER_SWEEP` seconds (a
        sweep looks at every card: 21 µs a call with 100 cards, 210 with 1,000).
        """
        last = self._timers_at
        if last is None or not last <= now < last + TIMER_SWEEP:
            self._timers_at = now
            self.manager.handle_timer(now)
        pool = self.manager.cards(self.pool_of(ctx))
        ids = [c.id for c in pool]
        bound = None if ctx.bound_card is None else self.manager.find(ctx.bound_card)
        if bound is not None and bound.id not in ids:
            ids = [bound.id, *ids]
        return ids

    def snapshots(self, card_ids: Sequence[str], now: float) -> list[CardSnapshot]:
        """Snapshots of the known cards among ``card_ids`` (usage read from the ledger)."""
        out: list[CardSnapshot] = []
        for card_id in card_ids:
            card = self.manager.find(card_id)
            if card is None:
                continue
            snapshot = card_snapshot(
                card,
                self.ledger,
                now,
                profiles=self.profiles,
                timezones=self.timezones,
                probation_of=self.probation_of,
            )
            if not card.usable and card.resume_at is not None:
                # Maintenance with Retry-After: the card is back by itself at resume_at.
                snapshot = replace(snapshot, unavailable_until=card.resume_at)
            elif card.usable:
                rest = self.manager.resting_until(card_id, now)
                if not self.manager.carrier_available(card.carrier):
                    snapshot = replace(snapshot, unavailable="carrier down")
                elif rest is not None:
                    snapshot = replace(
                        snapshot,
                        unavailable="resting after trunk-unreachable",
                        unavailable_until=rest,
                    )
            out.append(snapshot)
        return out

    def reserve(self, card_id: str, ctx: CallContext, now: float, *, emergency: bool) -> bool:
        """Write-ahead reservation; False (nothing written) if the card has no room left."""
        card = self.manager.get(card_id)
        if not card.usable:
            return False
        profile = None if emergency else effective_profile(card, self.profiles, self.probation_of)
        try:
            self.ledger.reserve(
                card_id, ctx.call_id, ctx.destination, now, profile=profile, agent=ctx.agent
            )
        except QuotaExceeded:
            return False
        self.manager.note_used(card_id)
        return True

"""Cards, pools and failover: synchronous bookkeeping that *returns* actions.

Kamailio dispatcher verbs: :meth:`CardManager.select` picks a card for a call,
:meth:`CardManager.next` picks the next one after a card-level failure (bounded
attempts per call), and :meth:`CardManager.mark` changes a card's state. Carrier
final responses are classified by :meth:`CardManager.on_response` into a
:class:`Verdict`: either a callee-level outcome (answered, busy, no answer,
declined, not found, cancelled — *never* retried on another card, because that
would ring the same person again) or a card-level failure (suspension, arrears,
maintenance, fault — mark the card, release its reservation, try the next).

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

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

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
    CardSnapshot,
    CardState,
    CardUsageView,
    Exhausted,
    Headroom,
    QuotaProfile,
    evaluate_card,
)

if TYPE_CHECKING:
    from gateway.config import Settings

__all__ = [
    "CALLEE_STATUSES",
    "LEGAL_TRANSITIONS",
    "Card",
    "CardDef",
    "CardEvent",
    "CardManager",
    "CardState",
    "CardStateChanged",
    "CarrierRule",
    "Failover",
    "HeadroomFn",
    "IllegalTransition",
    "PoolExhausted",
    "ResponseClass",
    "Selection",
    "StoreCardSource",
    "SuspendReason",
    "Verdict",
    "card_defs_from_settings",
    "card_snapshot",
    "effective_profile",
    "make_headroom",
    "probation_profiles_from_settings",
    "quota_profiles_from_settings",
    "rules_from_settings",
    "select_and_reserve",
]


class SuspendReason(StrEnum):
    """Why a card left the active state (DESIGN.md "Card states")."""

    ARREARS = "arrears"
    VIOLATION = "violation"
    ABNORMAL_USE = "abnormal-use"
    MAINTENANCE = "maintenance"
    FAULT = "fault"
    MANUAL = "manual"
    UNKNOWN = "unknown"


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
    }
)

#: States in which a card carries calls.
USABLE_STATES = frozenset({CardState.ACTIVE, CardState.PROBATION})

#: Final responses that describe the callee, never the card: no failover, ever.
CALLEE_STATUSES = frozenset({404, 410, 480, 484, 486, 487, 600, 603, 604, 606})

#: Causes counted as card faults (consecutive, until the threshold suspends the card).
FAULT_CAUSES = frozenset({"timer-b", "transport-error", "408", "503", "401", "407"})


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


# --- carrier response rules -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CarrierRule:
    """Carrier response → card reason: ``status`` plus an optional regex.

    The regex is searched in the reason phrase and in the Warning text; either
    matching is enough.
    """

    status: int
    reason: SuspendReason
    match: re.Pattern[str] | None = None

    def matches(self, status: int, reason_phrase: str, warning: str | None) -> bool:
        """Whether a response with this status and texts falls under the rule."""
        if status != self.status:
            return False
        if self.match is None:
            return True
        return bool(self.match.search(reason_phrase) or (warning and self.match.search(warning)))


class ResponseClass(StrEnum):
    """What a carrier final response means for failover."""

    ANSWERED = "answered"  # 2xx: relay; the call is up
    CALLEE = "callee"  # the callee's outcome: relay, never try another card
    CARD_FAILURE = "card-failure"  # the card failed: release, maybe mark, try the next card
    OTHER = "other"  # neither: relay as the call's final outcome


@dataclass(frozen=True, slots=True)
class Verdict:
    """The action for one carrier final response.

    ``failover`` is True only for a card-level failure before the callee was
    alerted (no 18x seen): then the caller releases the reservation and calls
    :meth:`CardManager.next`. ``marked`` is the reason the card was taken out of
    service (None when its state did not change); ``event`` the resulting
    transition. ``faults`` is the card's consecutive-fault count after this response.
    """

    kind: ResponseClass
    failover: bool
    marked: SuspendReason | None = None
    event: CardStateChanged | None = None
    faults: int = 0
    detail: str = ""


# --- selection ------------------------------------------------------------------------

#: Quota headroom of a card at ``now`` (``policies.quotas.evaluate_card``'s answer).
HeadroomFn = Callable[["Card", float], Headroom | Exhausted]


@dataclass(frozen=True, slots=True)
class Selection:
    """The answer of :meth:`CardManager.select` / :meth:`CardManager.next`.

    ``card`` is None when nothing could be picked; ``skipped`` says why each
    other card was passed over (``excluded``, ``state:suspended``,
    ``carrier-down``, ``quota:calls_per_minute``…); ``retry_after`` is the number
    of seconds until the earliest known time a skipped card frees (None when
    only an operator can help); ``attempts_exhausted`` is True when the call
    used up its bounded failover attempts.
    """

    card: Card | None
    skipped: Mapping[str, str] = field(default_factory=dict)
    retry_after: float | None = None
    attempts_exhausted: bool = False


@dataclass(slots=True)
class Failover:
    """Per-call failover state: which cards were tried, how many attempts remain."""

    call_id: str
    pool: str
    agent_card: str | None = None
    max_attempts: int = 3
    tried: list[str] = field(default_factory=list)

    @property
    def attempts(self) -> int:
        """Cards tried so far."""
        return len(self.tried)

    @property
    def current(self) -> str | None:
        """The card of the latest attempt."""
        return self.tried[-1] if self.tried else None


# --- the manager ----------------------------------------------------------------------


class CardManager:
    """Card states, pools, selection and failover for one gateway.

    ``repo`` persists cards and transitions (``None`` keeps everything in memory,
    for tests of pure selection). ``rules`` maps carrier name → its ordered
    rules, tried before the defaults. ``fault_threshold`` consecutive faults
    (Timer B, 408, transport error, 503 without Retry-After) suspend a card with
    reason ``fault``. ``carrier_available`` says whether a carrier is up (the
    :class:`gateway.carrier_health.CarrierHealth` answer); cards of a carrier
    that is down are skipped.
    """

    def __init__(
        self,
        repo: CardRepository | None = None,
        *,
        rules: Mapping[str, Sequence[CarrierRule]] | None = None,
        fault_threshold: int = 3,
        max_attempts: int = 3,
        carrier_available: Callable[[str], bool] | None = None,
        store_retry_seconds: float = 5.0,
    ) -> None:
        if fault_threshold < 1 or max_attempts < 1:
            raise ValueError("fault_threshold and max_attempts must be >= 1")
        self.repo = repo
        self.rules: dict[str, list[CarrierRule]] = {k: list(v) for k, v in (rules or {}).items()}
        self.fault_threshold = fault_threshold
        self.max_attempts = max_attempts
        self.carrier_available = carrier_available or (lambda _carrier: True)
        self.store_retry_seconds = store_retry_seconds
        self.events: list[CardEvent] = []
        self._cards: dict[str, Card] = {}
        self._faults: dict[str, int] = {}
        self._last_used: dict[str, str] = {}  # pool → card id (stickiness)
        self._unsaved: list[tuple[StoredCard, TransitionRecord]] = []
        self._retry_at: float | None = None
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
                self._faults[card.id] = 0
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

    # --- select / next --------------------------------------------------------------

    def select(
        self,
        pool: str,
        *,
        now: float,
        agent_card: str | None = None,
        exclude: Iterable[str] = (),
        headroom: HeadroomFn | None = None,
    ) -> Selection:
        """Pick a card for a call; no state changes (pure query after timers are run).

        Order: the agent's bound card when it can take the call; else the
        pool's cards by priority, preferring the card last used in the pool
        (carriers flag frequent switching), then the most quota headroom.
        """
        self.handle_timer(now)
        excluded = set(exclude)
        skipped: dict[str, str] = {}
        frees: list[float] = []
        scored: list[tuple[Card, float]] = []

        def consider(card: Card) -> float | None:
            if card.id in excluded:
                skipped[card.id] = "excluded"
                return None
            if not card.usable:
                skipped[card.id] = f"state:{card.state}"
                if card.resume_at is not None:
                    frees.append(card.resume_at)
                return None
            if not self.carrier_available(card.carrier):
                skipped[card.id] = "carrier-down"
                return None
            if headroom is None:
                return 1.0
            answer = headroom(card, now)
            if isinstance(answer, Exhausted):
                skipped[card.id] = f"quota:{answer.limit}"
                if answer.frees_at is not None:
                    frees.append(answer.frees_at)
                return None
            return answer.score

        if agent_card is not None and agent_card in self._cards:
            bound = self._cards[agent_card]
            score = consider(bound)
            if score is not None:
                return Selection(bound, skipped)
        for card in self.cards(pool):
            if card.id == agent_card:
                continue
            score = consider(card)
            if score is not None:
                scored.append((card, score))
        if scored:
            sticky = self._last_used.get(pool)
            scored.sort(key=lambda cs: (cs[0].priority, cs[0].id != sticky, -cs[1], cs[0].id))
            return Selection(scored[0][0], skipped)
        retry = max(min(frees) - now, 0.0) if frees else None
        return Selection(None, skipped, retry)

    def begin(
        self,
        call_id: str,
        pool: str,
        *,
        agent_card: str | None = None,
        max_attempts: int | None = None,
        tried: Iterable[str] = (),
    ) -> Failover:
        """Start the failover state of one call.

        With no ``tried`` card, call :meth:`next` for the first card. When the
        policy pipeline already picked and reserved the first card
        (``policies.selection.CardSelection``), pass it as ``tried=[card_id]``
        so :meth:`next` continues after it.
        """
        return Failover(
            call_id=call_id,
            pool=pool,
            agent_card=agent_card,
            max_attempts=max_attempts or self.max_attempts,
            tried=list(tried),
        )

    def last_used(self, pool: str) -> str | None:
        """The card most recently picked in ``pool`` (the sticky choice)."""
        return self._last_used.get(pool)

    def note_used(self, card_id: str) -> None:
        """Record that a call was placed on ``card_id`` (stickiness for its pool)."""
        card = self._cards[card_id]
        self._last_used[card.pool] = card.id

    def next(
        self, failover: Failover, *, now: float, headroom: HeadroomFn | None = None
    ) -> Selection:
        """Pick the call's next card (the first one on the first call), never one already tried.

        Bounded: after ``max_attempts`` cards the answer is ``attempts_exhausted``.
        An empty answer appends a :class:`PoolExhausted` event.
        """
        if failover.attempts >= failover.max_attempts:
            return Selection(None, {c: "tried" for c in failover.tried}, attempts_exhausted=True)
        selection = self.select(
            failover.pool,
            now=now,
            agent_card=failover.agent_card,
            exclude=failover.tried,
            headroom=headroom,
        )
        if selection.card is None:
            self.events.append(
                PoolExhausted(
                    pool=failover.pool,
                    at=now,
                    call_id=failover.call_id,
                    retry_after=selection.retry_after,
                    skipped=dict(selection.skipped),
                )
            )
            return selection
        failover.tried.append(selection.card.id)
        self._last_used[selection.card.pool] = selection.card.id
        return selection

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
    ) -> Verdict:
        """Classify a carrier *final* response to an INVITE from ``card_id``.

        ``ringing`` is True when an 18x was seen: the callee was alerted, so even
        a card-level failure then marks the card but never fails over.
        Order: 2xx and 487 are callee outcomes; then the carrier's rules; then
        callee statuses (486, 480, 404, 603…); then defaults (402 → arrears,
        403 → unknown, 503 + Retry-After → maintenance, 408 / 503 / credentials
        rejected with 401 / 407 → fault, counted toward ``fault_threshold``).
        """
        if status < 200 or status > 699:
            raise ValueError(f"not a final response status: {status}")
        card = self._cards[card_id]
        evidence: dict[str, Any] = {"response": f"SIP/2.0 {status} {reason_phrase}".rstrip()}
        if warning:
            evidence["warning"] = warning
        if reason_header:
            evidence["reason"] = reason_header
        if retry_after is not None:
            evidence["retry_after"] = retry_after
        cause = f"carrier:{status}"

        if 200 <= status < 300:
            self._faults[card_id] = 0
            return Verdict(ResponseClass.ANSWERED, failover=False, detail="answered")
        if status == 487:
            self._faults[card_id] = 0
            return Verdict(ResponseClass.CALLEE, failover=False, detail="cancelled")
        for rule in self.rules.get(card.carrier, ()):
            if rule.matches(status, reason_phrase, warning):
                return self._card_failure(
                    card, rule.reason, now, cause, evidence, retry_after, ringing, "rule"
                )
        if status in CALLEE_STATUSES:
            self._faults[card_id] = 0
            return Verdict(ResponseClass.CALLEE, failover=False, detail="callee outcome")
        if status == 402:
            return self._card_failure(
                card, SuspendReason.ARREARS, now, cause, evidence, None, ringing, "default"
            )
        if status == 403:
            return self._card_failure(
                card, SuspendReason.UNKNOWN, now, cause, evidence, None, ringing, "default"
            )
        if status == 503 and retry_after is not None:
            return self._card_failure(
                card,
                SuspendReason.MAINTENANCE,
                now,
                cause,
                evidence,
                retry_after,
                ringing,
                "default",
            )
        if status in (401, 407, 408, 503):
            # 401/407 reach here only when the carrier rejected the card's credentials
            # (the B2BUA answers the first challenge itself): the card, not the callee.
            return self._fault(card, str(status), now, evidence, ringing)
        self._faults[card_id] = 0
        return Verdict(ResponseClass.OTHER, failover=False, detail=f"relay {status}")

    def on_fault(
        self, card_id: str, cause: str, *, now: float, ringing: bool = False, detail: str = ""
    ) -> Verdict:
        """No usable response: ``cause`` is ``timer-b`` or ``transport-error``.

        Counts a consecutive fault; at ``fault_threshold`` the card is suspended
        with reason ``fault``. Fails over (the callee was never reached) unless ringing.
        """
        if cause not in FAULT_CAUSES:
            raise ValueError(f"unknown fault cause {cause!r}; one of {sorted(FAULT_CAUSES)}")
        evidence: dict[str, Any] = {"fault": cause}
        if detail:
            evidence["detail"] = detail
        return self._fault(self._cards[card_id], cause, now, evidence, ringing)

    def on_register_response(
        self,
        card_id: str,
        status: int,
        reason_phrase: str = "",
        *,
        now: float,
        warning: str | None = None,
        retry_after: float | None = None,
    ) -> Verdict:
        """A REGISTER of the card was answered: the same rules mark the card (no failover)."""
        if 200 <= status < 300:
            self._faults[card_id] = 0
            return Verdict(ResponseClass.ANSWERED, failover=False, detail="registered")
        verdict = self.on_response(
            card_id, status, reason_phrase, now=now, warning=warning, retry_after=retry_after
        )
        return Verdict(
            verdict.kind, False, verdict.marked, verdict.event, verdict.faults, verdict.detail
        )

    def _fault(
        self, card: Card, cause: str, now: float, evidence: dict[str, Any], ringing: bool
    ) -> Verdict:
        count = self._faults.get(card.id, 0) + 1
        self._faults[card.id] = count
        evidence = {**evidence, "consecutive_faults": count}
        if count >= self.fault_threshold:
            verdict = self._card_failure(
                card,
                SuspendReason.FAULT,
                now,
                f"fault:{cause}",
                evidence,
                None,
                ringing,
                "threshold",
            )
            return Verdict(
                verdict.kind, verdict.failover, verdict.marked, verdict.event, count, verdict.detail
            )
        return Verdict(
            ResponseClass.CARD_FAILURE,
            failover=not ringing,
            faults=count,
            detail=f"fault {count}/{self.fault_threshold}",
        )

    def _card_failure(
        self,
        card: Card,
        reason: SuspendReason,
        now: float,
        cause: str,
        evidence: dict[str, Any],
        retry_after: float | None,
        ringing: bool,
        source: str,
    ) -> Verdict:
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
                cause=cause,
                evidence=evidence,
                actor="gateway",
                resume_at=resume_at,
                strict=False,
            )
        elif already and resume_at is not None and resume_at != card.resume_at:
            # A later Retry-After for a card already in maintenance moves its end.
            card.resume_at = resume_at
        return Verdict(
            ResponseClass.CARD_FAILURE,
            failover=not ringing,
            marked=reason,
            event=event,
            faults=self._faults.get(card.id, 0),
            detail=f"{source}: {reason}",
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
        """Operator: put a card back into full service."""
        self._faults[card_id] = 0
        return self.mark(
            card_id,
            CardState.ACTIVE,
            now=now,
            cause="operator:restore",
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
            probation_until=probation_until if to_state is CardState.PROBATION else None,
            profile_override=profile if to_state is CardState.PROBATION else None,
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
        if to_state is not CardState.SUSPENDED:
            self._faults[card.id] = 0
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
        )
        for c in settings.cards
    ]


def rules_from_settings(settings: Settings) -> dict[str, list[CarrierRule]]:
    """Each carrier's ``[[carriers.rules]]`` as :class:`CarrierRule` values, in file order."""
    return {
        carrier.name: [
            CarrierRule(status=r.status, reason=SuspendReason(str(r.reason)), match=r.match)
            for r in carrier.rules
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


def make_headroom(
    usage: CardUsageView,
    *,
    profiles: Mapping[str, QuotaProfile],
    timezones: Mapping[str, str],
    probation_of: Mapping[str, str] | None = None,
    callee: str | None = None,
) -> HeadroomFn:
    """A :data:`HeadroomFn` for :meth:`CardManager.select` backed by the store's usage.

    Each candidate card is evaluated by ``policies.quotas.evaluate_card`` for a
    call to ``callee``. The store raises ``StoreUnavailable`` if usage cannot be
    read: selection then fails closed (the gateway answers 503).
    """

    def headroom(card: Card, now: float) -> Headroom | Exhausted:
        snapshot = card_snapshot(
            card,
            usage,
            now,
            profiles=profiles,
            timezones=timezones,
            probation_of=probation_of,
        )
        return evaluate_card(snapshot, now, callee)

    return headroom


def quota_profiles_from_settings(settings: Settings) -> dict[str, QuotaProfile]:
    """``[quota_profiles.*]`` as ``policies.quotas.QuotaProfile`` values.

    A missing key means "no limit"; tuning keys left out keep the policies'
    defaults (short call < 10 s, window of 50 calls, 20-call minimum sample).
    """
    out: dict[str, QuotaProfile] = {}
    for name, p in settings.quota_profiles.items():
        tuning: dict[str, Any] = {}
        if p.short_call_seconds is not None:
            tuning["short_call_seconds"] = p.short_call_seconds
        if p.rate_window_calls is not None:
            tuning["rate_window_calls"] = p.rate_window_calls
        if p.min_sample is not None:
            tuning["rate_min_sample"] = p.min_sample
        if p.cooldown_seconds is not None:
            tuning["cooldown_seconds"] = p.cooldown_seconds
        out[name] = QuotaProfile(
            name=name,
            calls_per_minute=p.calls_per_minute,
            calls_per_hour=p.calls_per_hour,
            calls_per_day=p.calls_per_day,
            concurrent=p.concurrent,
            min_gap_seconds=p.min_gap_seconds,
            talk_minutes_per_day=p.talk_minutes_per_day,
            distinct_callees_per_day=p.distinct_callees_per_day,
            answer_rate_floor=p.answer_rate_floor,
            short_call_ceiling=p.short_call_ceiling,
            consecutive_failures=p.consecutive_failures,
            night_window=None if p.night_window is None else p.night_window.spec,
            **tuning,
        )
    return out


def probation_profiles_from_settings(settings: Settings) -> dict[str, str]:
    """Profile name → the name of its ``probation`` profile, where one is configured."""
    return {
        name: p.probation for name, p in settings.quota_profiles.items() if p.probation is not None
    }


def select_and_reserve(
    manager: CardManager,
    failover: Failover,
    ledger: UsageLedger,
    *,
    callee: str,
    now: float,
    profiles: Mapping[str, QuotaProfile],
    timezones: Mapping[str, str],
    probation_of: Mapping[str, str] | None = None,
    agent: str = "",
) -> Selection:
    """Pick the call's next card and commit its write-ahead reservation (B2BUA entry point).

    Loops :meth:`CardManager.next` with quota headroom from ``ledger`` until a
    reservation commits. If another process took the last headroom between the
    read and the write (``QuotaExceeded`` inside the atomic reserve), that card
    counts as tried and the next one is picked. Returns the selection whose
    card now holds the reservation, or an empty selection (answer 503
    ``no-card-available`` with ``Retry-After: selection.retry_after``).
    ``StoreUnavailable`` propagates: the gateway answers 503 ``store-unavailable``.
    """
    headroom = make_headroom(
        ledger, profiles=profiles, timezones=timezones, probation_of=probation_of, callee=callee
    )
    while True:
        selection = manager.next(failover, now=now, headroom=headroom)
        card = selection.card
        if card is None:
            return selection
        try:
            ledger.reserve(
                card.id,
                failover.call_id,
                callee,
                now,
                profile=effective_profile(card, profiles, probation_of),
                agent=agent,
            )
        except QuotaExceeded:
            continue
        return selection


class StoreCardSource:
    """``policies.selection.CardSource`` over a :class:`CardManager` and a usage ledger.

    Lets the policy pipeline's ``CardSelection`` pick and reserve the first card
    of a call. The pool is the agent's bound card's pool, else ``default_pool``
    (or what ``pool_for(ctx)`` says). Cards of carriers that are down are left
    out of the candidates; cards in maintenance whose time is up are recovered
    first. Reservations re-check the card's effective profile atomically.
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

    def pool_of(self, ctx: CallContext) -> str:
        """The pool a call draws its cards from."""
        if self.pool_for is not None:
            return self.pool_for(ctx)
        bound = None if ctx.bound_card is None else self.manager.find(ctx.bound_card)
        return self.default_pool if bound is None else bound.pool

    def candidate_ids(self, ctx: CallContext, now: float) -> list[str]:
        """The bound card (if any) and the pool's cards, minus cards of down carriers."""
        self.manager.handle_timer(now)
        pool = self.manager.cards(self.pool_of(ctx))
        ids = [c.id for c in pool]
        bound = None if ctx.bound_card is None else self.manager.find(ctx.bound_card)
        if bound is not None and bound.id not in ids:
            pool = [bound, *pool]
        return [c.id for c in pool if self.manager.carrier_available(c.carrier)]

    def snapshots(self, card_ids: Sequence[str], now: float) -> list[CardSnapshot]:
        """Snapshots of the known cards among ``card_ids`` (usage read from the ledger)."""
        out: list[CardSnapshot] = []
        for card_id in card_ids:
            card = self.manager.find(card_id)
            if card is None:
                continue
            out.append(
                card_snapshot(
                    card,
                    self.ledger,
                    now,
                    profiles=self.profiles,
                    timezones=self.timezones,
                    probation_of=self.probation_of,
                )
            )
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

"""The simulated carrier's decisions: one call per INVITE, one per finished call.

:class:`CarrierModel` is what the SIP carrier UAS consults. For each INVITE it
returns a :class:`CarrierDecision` — the final SIP status, reason phrase and
extra headers to answer with, and for an accepted call the :class:`CallPlan`
to play out. When the call is over the UAS reports it with
:meth:`CarrierModel.record_call_end`, which charges the card's balance, may
raise a complaint and may suspend the card.

Order of checks on an INVITE (first match answers):

1. unknown card account → ``403 Forbidden`` (``unknown-account``)
2. inside a maintenance window → ``503 Service Unavailable`` + ``Retry-After``
   (seconds to the window end)
3. card suspended → ``403 Card Suspended: <reason> (<cause>)`` + ``Warning``;
   stays so until :meth:`CarrierModel.restore`
4. balance ≤ 0 → ``402 Payment Required``
5. a scheduled suspension is due, or the call would cross a volume threshold
   or a per-callee threshold (repeated calls to one callee, one callee called
   from too many cards) → the card is suspended and this INVITE gets the 403
6. otherwise accepted: the answer model draws the plan — the destination's
   fixed answer for a callee inside one of the destination shares (plain 403,
   ring then 408 or 503, silence), else the callee's answer for this call.

Every decision is appended to :attr:`CarrierModel.events` with the callee
masked; every INVITE from a known card to :attr:`CarrierModel.callee_invites`
with the callee as a pseudonym (the report's redial counts). Pure, seeded and
clock-free: ``now`` (business epoch seconds) is always passed in. This module
must never read a clock, sleep, or do I/O.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from policies.privacy import mask_number
from simulator.answer import AnswerModel, AnswerProfile, CallPlan, Outcome
from simulator.antifraud import AntiFraudThresholds, CalleeHistory, CardUsage, Violation

__all__ = [
    "CardAccount",
    "CarrierConfig",
    "CarrierDecision",
    "CarrierEvent",
    "CarrierModel",
    "EventKind",
    "InviteSeen",
    "MaintenanceWindow",
    "ScheduledSuspension",
    "Suspension",
]

WARN_AGENT = "carrier.sim"


class EventKind(StrEnum):
    """What the carrier decided."""

    ACCEPTED = "accepted"
    REJECTED_UNKNOWN = "rejected-unknown-account"
    REJECTED_MAINTENANCE = "rejected-maintenance"
    REJECTED_SUSPENDED = "rejected-suspended"
    REJECTED_ARREARS = "rejected-arrears"
    SUSPENDED = "suspended"
    CALL_ENDED = "call-ended"
    CHARGED = "charged"
    COMPLAINT = "complaint"
    RESTORED = "restored"
    TOPPED_UP = "topped-up"


@dataclass(frozen=True, slots=True)
class CarrierEvent:
    """One carrier decision, as the report sees it (callee already masked)."""

    time: float
    card: str
    kind: EventKind
    status: int | None = None
    callee: str | None = None
    cause: str | None = None
    reason: str | None = None
    counters: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "time": self.time,
            "card": self.card,
            "kind": str(self.kind),
            "status": self.status,
            "callee": self.callee,
            "cause": self.cause,
            "reason": self.reason,
            "counters": dict(self.counters),
        }


@dataclass(frozen=True, slots=True)
class InviteSeen:
    """One INVITE from a known card that reached the carrier model.

    ``callee`` is a pseudonym, never the number: the order in which the carrier
    first saw that callee (0, 1, 2, …), so the report can count callees dialled
    more than once without holding numbers (masked numbers can collide).
    ``put_through`` is True when the carrier let the call through towards the
    destination (a plan was drawn, whatever the destination then answered) and
    False when it refused it at card level (maintenance, suspended, arrears, a
    threshold crossed).
    """

    time: float
    card: str
    callee: int
    put_through: bool


@dataclass(frozen=True, slots=True)
class CarrierDecision:
    """How the carrier answers one INVITE.

    ``status`` is the *final* response: for an accepted call it is the plan's
    status (200, 486, 480, 603; 403, 408, 503 for destination-level answers),
    sent after ``plan.ring_seconds`` of ringing. A silent destination
    (``plan.outcome`` is ``silent``) sends nothing at all; its status is the
    408 the caller's Timer B will report.
    """

    status: int
    reason_phrase: str
    headers: tuple[tuple[str, str], ...] = ()
    plan: CallPlan | None = None

    @property
    def accepted(self) -> bool:
        """True when the call reaches the callee (a plan was drawn)."""
        return self.plan is not None

    def header(self, name: str) -> str | None:
        """First value of header ``name`` (case-insensitive), if any."""
        lname = name.lower()
        return next((v for k, v in self.headers if k.lower() == lname), None)


@dataclass(frozen=True, slots=True)
class MaintenanceWindow:
    """A carrier outage ``[start, end)`` in epoch seconds; ``cards`` empty means all."""

    start: float
    end: float
    cards: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ValueError("maintenance window must end after it starts")

    def applies(self, card: str, now: float) -> bool:
        """True when ``card`` is affected at ``now``."""
        return self.start <= now < self.end and (not self.cards or card in self.cards)


@dataclass(frozen=True, slots=True)
class ScheduledSuspension:
    """An operator-scripted suspension (``suspension-storm`` scenarios)."""

    card: str
    at: float
    reason: str = "violation"
    cause: str = "scheduled by scenario"


@dataclass(frozen=True, slots=True)
class CardAccount:
    """A card's account at the carrier: credentials and starting balance."""

    card: str
    username: str
    password: str
    balance: float = math.inf


@dataclass(frozen=True, slots=True)
class CarrierConfig:
    """Everything the carrier model needs, independent of the scenario file format."""

    timezone: str = "UTC"
    answer: AnswerProfile = field(default_factory=AnswerProfile)
    thresholds: AntiFraudThresholds = field(default_factory=AntiFraudThresholds)
    rate_per_minute: float = 0.0
    maintenance: tuple[MaintenanceWindow, ...] = ()
    scheduled_suspensions: tuple[ScheduledSuspension, ...] = ()
    probation: AntiFraudThresholds | None = None


@dataclass(frozen=True, slots=True)
class Suspension:
    """Why and when a card was suspended."""

    reason: str
    cause: str
    since: float

    @property
    def reason_phrase(self) -> str:
        """The SIP reason phrase the carrier answers with."""
        return f"Card Suspended: {self.reason} ({self.cause})"


@dataclass(slots=True)
class _CardState:
    account: CardAccount
    usage: CardUsage
    balance: float
    suspension: Suspension | None = None
    fired_schedules: set[int] = field(default_factory=set)


class CarrierModel:
    """Per-card carrier accounts with answer, arrears, maintenance and anti-fraud models."""

    def __init__(
        self,
        config: CarrierConfig,
        accounts: Iterable[CardAccount],
        *,
        seed: int | str = 0,
        consented: Iterable[str] = (),
        mask_callees: bool = True,
    ) -> None:
        self.config = config
        self.tz = ZoneInfo(config.timezone)
        self.mask_callees = mask_callees
        self.events: list[CarrierEvent] = []
        self._consented = frozenset(consented)
        # Each callee's answers and complaints come from its own streams, keyed by
        # (seed, callee, how often it was reached / ended before): a lead gets the
        # same plan whichever card, agent or moment dials it, so runs whose call
        # order depends on timing (SIP) still agree lead by lead with each other
        # and with the offline replay; complaint draws never shift answer plans.
        self._seed = seed
        self._plans_drawn: Counter[str] = Counter()
        self._ends_drawn: Counter[str] = Counter()
        #: Every INVITE from a known card, in arrival order (callees as pseudonyms).
        self.callee_invites: list[InviteSeen] = []
        self._pseudonyms: dict[str, int] = {}
        # Per-callee abnormal use is watched across cards, only when a threshold asks for it.
        watching = [t for t in (config.thresholds, config.probation) if t and t.watches_callees]
        self._callees: CalleeHistory | None = (
            CalleeHistory(max(t.callee_window for t in watching)) if watching else None
        )
        self._cards: dict[str, _CardState] = {}
        for account in accounts:
            if account.card in self._cards:
                raise ValueError(f"duplicate carrier account for card {account.card!r}")
            self._cards[account.card] = _CardState(
                account=account,
                usage=CardUsage(config.thresholds, self.tz),
                balance=account.balance,
            )

    # -- read-outs -----------------------------------------------------------
    @property
    def cards(self) -> tuple[str, ...]:
        """Card ids with an account, in creation order."""
        return tuple(self._cards)

    def account(self, card: str) -> CardAccount:
        """The card's carrier account (credentials for digest auth)."""
        return self._state(card).account

    def account_for_username(self, username: str) -> CardAccount | None:
        """Look an account up by its digest username."""
        return next(
            (s.account for s in self._cards.values() if s.account.username == username), None
        )

    def balance(self, card: str) -> float:
        """Remaining balance of the card's account."""
        return self._state(card).balance

    def suspension(self, card: str) -> Suspension | None:
        """The card's current suspension, or None when it may call."""
        return self._state(card).suspension

    def counters(self, card: str, now: float) -> dict[str, Any]:
        """Anti-fraud counters plus balance, for events and wall displays."""
        state = self._state(card)
        snapshot: dict[str, Any] = dict(state.usage.counters(now))
        snapshot["balance"] = None if math.isinf(state.balance) else round(state.balance, 4)
        return snapshot

    def destination_outcome(self, callee: str) -> Outcome | None:
        """The fixed answer of the callee's destination (plain 403, ring then 408/503, silence).

        Drawn from the callee's own destination stream, keyed by ``(seed,
        callee)`` only: the same callee gets the same answer on every call,
        from every card. None: the callee answers call by call.
        """
        profile = self.config.answer
        if not profile.has_destination_outcomes:
            return None
        return AnswerModel.destination(profile, random.Random(f"{self._seed}:destination:{callee}"))

    def plan_for(self, callee: str) -> CallPlan:
        """The callee's plan for the next accepted INVITE to it (its own seeded stream)."""
        nth = self._plans_drawn[callee]
        self._plans_drawn[callee] += 1
        rng = random.Random(f"{self._seed}:answer:{callee}:{nth}")
        model = AnswerModel(self.config.answer, rng)
        destination = self.destination_outcome(callee)
        if destination is not None:
            return model.destination_plan(destination)
        return model.plan()

    # -- INVITE -----------------------------------------------------------------
    def decide_invite(self, card: str, callee: str, now: float) -> CarrierDecision:
        """Decide how to answer an INVITE from ``card`` to ``callee`` at business time ``now``."""
        masked = mask_number(callee, enabled=self.mask_callees)
        state = self._cards.get(card)
        if state is None:
            self._emit(now, card, EventKind.REJECTED_UNKNOWN, 403, masked, "unknown-account")
            return CarrierDecision(403, "Forbidden", (("Warning", _warning("unknown account")),))

        seen = InviteSeen(now, card, self._pseudonym(callee), put_through=False)
        window = self._maintenance(card, now)
        if window is not None:
            self.callee_invites.append(seen)
            retry_after = max(1, math.ceil(window.end - now))
            self._emit(
                now,
                card,
                EventKind.REJECTED_MAINTENANCE,
                503,
                masked,
                f"maintenance until {window.end:.0f}",
                "maintenance",
            )
            return CarrierDecision(
                503,
                "Service Unavailable",
                (
                    ("Retry-After", str(retry_after)),
                    ("Warning", _warning("carrier maintenance")),
                ),
            )

        self._apply_schedules(state, now)
        if state.suspension is not None:
            self.callee_invites.append(seen)
            self._emit(
                now,
                card,
                EventKind.REJECTED_SUSPENDED,
                403,
                masked,
                state.suspension.cause,
                state.suspension.reason,
            )
            return _suspended_decision(card, state.suspension)

        if state.balance <= 0:
            self.callee_invites.append(seen)
            self._emit(now, card, EventKind.REJECTED_ARREARS, 402, masked, "balance exhausted")
            return CarrierDecision(
                402,
                "Payment Required",
                (("Warning", _warning(f"card {card} in arrears: balance {state.balance:.2f}")),),
            )

        violation = state.usage.check_invite(callee, now)
        if violation is None and self._callees is not None:
            violation = self._callees.check(callee, card, now, state.usage.thresholds)
        if violation is not None:
            self.callee_invites.append(seen)
            suspension = self._suspend(state, violation.reason, violation.cause, now, masked)
            return _suspended_decision(card, suspension)

        state.usage.record_invite(callee, now)
        if self._callees is not None:
            self._callees.record(callee, card, now)
        self.callee_invites.append(replace(seen, put_through=True))
        plan = self.plan_for(callee)
        self._emit(
            now,
            card,
            EventKind.ACCEPTED,
            plan.sip_status,
            masked,
            str(plan.outcome),
        )
        return CarrierDecision(plan.sip_status, _PHRASES[plan.sip_status], (), plan)

    # -- call end ---------------------------------------------------------------
    def record_call_end(
        self, card: str, callee: str, answered: bool, talk_seconds: float, now: float
    ) -> Suspension | None:
        """Account for a finished call; returns the suspension it caused, if any.

        Charges ``rate_per_minute`` per *started* minute of talk, may draw a
        complaint (answered, callee without consent) and checks the quality
        thresholds.
        """
        state = self._state(card)
        masked = mask_number(callee, enabled=self.mask_callees)
        minutes = math.ceil(talk_seconds / 60) if answered and talk_seconds > 0 else 0
        charge = minutes * self.config.rate_per_minute
        if charge:
            state.balance -= charge
            self._emit(
                now,
                card,
                EventKind.CHARGED,
                None,
                masked,
                f"{minutes} min x {self.config.rate_per_minute:g} = {charge:g}",
            )
        complained = False
        p = self.config.thresholds.complaint_probability
        nth_end = self._ends_drawn[callee]
        self._ends_drawn[callee] += 1
        if answered and callee not in self._consented and p > 0:
            rng = random.Random(f"{self._seed}:complaint:{callee}:{nth_end}")
            complained = rng.random() < p
        if state.suspension is not None:
            # A call that was up when the card got suspended still counts, but cannot re-suspend.
            state.usage.record_end(answered, talk_seconds, complained)
            violation: Violation | None = None
        else:
            violation = state.usage.record_end(answered, talk_seconds, complained)
        if complained:
            self._emit(
                now,
                card,
                EventKind.COMPLAINT,
                None,
                masked,
                "callee without consent complained",
            )
        self._emit(
            now,
            card,
            EventKind.CALL_ENDED,
            200 if answered else None,
            masked,
            f"talk {talk_seconds:g}s" if answered else "not answered",
        )
        if violation is None:
            return None
        return self._suspend(state, violation.reason, violation.cause, now, masked)

    # -- operator actions ---------------------------------------------------------
    def restore(self, card: str, now: float) -> None:
        """Operator restores a suspended card; its anti-fraud history starts afresh.

        Like real carriers, a restored card may come back on probation: when the
        config has ``probation`` thresholds they replace the card's thresholds
        from now on (a card never suspended keeps its own).
        """
        state = self._state(card)
        previous = state.suspension
        state.suspension = None
        if previous is not None and self.config.probation is not None:
            state.usage = CardUsage(self.config.probation, self.tz)
        else:
            state.usage.reset()
        self._emit(
            now,
            card,
            EventKind.RESTORED,
            None,
            None,
            previous.cause if previous else "not suspended",
            previous.reason if previous else None,
        )

    def suspend(self, card: str, reason: str, cause: str, now: float) -> Suspension:
        """Suspend a card by hand (the carrier's own operator)."""
        return self._suspend(self._state(card), reason, cause, now, None)

    def top_up(self, card: str, amount: float, now: float) -> float:
        """Add credit to the card's account; returns the new balance."""
        state = self._state(card)
        state.balance += amount
        self._emit(
            now,
            card,
            EventKind.TOPPED_UP,
            None,
            None,
            f"+{amount:g}",
        )
        return state.balance

    def thresholds(self, card: str) -> AntiFraudThresholds:
        """The thresholds currently applied to ``card`` (probation after a restore)."""
        return self._state(card).usage.thresholds

    # -- internals --------------------------------------------------------------
    def _state(self, card: str) -> _CardState:
        try:
            return self._cards[card]
        except KeyError:
            raise KeyError(f"no carrier account for card {card!r}") from None

    def _pseudonym(self, callee: str) -> int:
        return self._pseudonyms.setdefault(callee, len(self._pseudonyms))

    def _maintenance(self, card: str, now: float) -> MaintenanceWindow | None:
        return next((w for w in self.config.maintenance if w.applies(card, now)), None)

    def _apply_schedules(self, state: _CardState, now: float) -> None:
        card = state.account.card
        for index, scheduled in enumerate(self.config.scheduled_suspensions):
            if scheduled.card != card or index in state.fired_schedules or now < scheduled.at:
                continue
            state.fired_schedules.add(index)
            if state.suspension is None:
                self._suspend(state, scheduled.reason, scheduled.cause, scheduled.at, None)

    def _suspend(
        self, state: _CardState, reason: str, cause: str, now: float, masked: str | None
    ) -> Suspension:
        card = state.account.card
        state.suspension = Suspension(reason, cause, now)
        self._emit(
            now,
            card,
            EventKind.SUSPENDED,
            403,
            masked,
            cause,
            reason,
        )
        return state.suspension

    def _emit(
        self,
        now: float,
        card: str,
        kind: EventKind,
        status: int | None,
        callee: str | None,
        cause: str | None,
        reason: str | None = None,
        counters: Mapping[str, Any] | None = None,
    ) -> None:
        if counters is None:
            counters = self.counters(card, now) if card in self._cards else {}
        self.events.append(
            CarrierEvent(now, card, kind, status, callee, cause, reason, dict(counters))
        )


_PHRASES = {
    200: "OK",
    403: "Forbidden",
    408: "Request Timeout",
    480: "Temporarily Unavailable",
    486: "Busy Here",
    503: "Service Unavailable",
    603: "Decline",
}


def _warning(text: str) -> str:
    # RFC 3261 §20.43: warn-code SP warn-agent SP quoted warn-text; 399 is "miscellaneous".
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'399 {WARN_AGENT} "{escaped}"'


def _suspended_decision(card: str, suspension: Suspension) -> CarrierDecision:
    return CarrierDecision(
        403,
        suspension.reason_phrase,
        (
            (
                "Warning",
                _warning(f"card {card} suspended: {suspension.reason} ({suspension.cause})"),
            ),
        ),
    )

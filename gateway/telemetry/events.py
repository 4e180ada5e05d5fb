"""Status events of the gateway core and the in-process bus that fans them out.

What this module is for:

* one frozen dataclass per kind of thing DESIGN.md "MQTT events" publishes:
  :class:`GatewayStatus`, :class:`CardStatus` (state, reason, since, pool, usage
  against every limit, in-use), :class:`Stats`, :class:`CallEvent` (attempt,
  blocked, ringing, answered, ended, failover) and :class:`Alert`
  (card-suspended, pool-exhausted, trunk-down, quota-near, card-at-risk);
* :class:`EventBus`: the call path, cards and policies call ``publish(event)``,
  which returns at once after handing the event to every subscriber (the MQTT
  publisher's bounded queue, the metrics, the stats aggregator); subscribers
  are synchronous and must not block;
* :func:`render_payload`: the JSON body of an event (``"v": 1``, callee numbers
  masked unless configured otherwise) — the MQTT adapter (``gateway.telemetry.mqtt``) maps
  events to topics at the edge;
* :func:`from_card_event`: the adapter from ``gateway.cards``' own events
  (``CardStateChanged``, ``PoolExhausted``) to these;
* :class:`CallStats`: counts call events into the periodic :class:`Stats`
  (active calls, CPS, ASR, blocked by reason, cards by state);
* :func:`usage_vs_limits`: a card's usage against every limit of its profile,
  what :class:`CardStatus` carries and the alert engine
  (:mod:`gateway.telemetry.alerts`) judges.

What it must never do: await or touch the network, read a clock of its own (every
``now``/``at`` is passed in, except :class:`CallStats` which is given a clock), let
a subscriber's exception reach the publisher, or put an unmasked callee number into
a payload while masking is on.
"""

from __future__ import annotations

import collections
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import structlog

from policies.privacy import mask_number, mask_numbers_deep, mask_numbers_in
from policies.timeutil import iso_time  # re-exported: gateway modules import it from here

if TYPE_CHECKING:
    from gateway.cards import Card, CardEvent
    from gateway.cards.health import CarrierStateChanged
    from policies.quotas import CardSnapshot

__all__ = [
    "SCHEMA_VERSION",
    "AgentState",
    "Alert",
    "AlertKind",
    "CallEvent",
    "CallEventKind",
    "CallStats",
    "CardStatus",
    "Event",
    "EventBus",
    "GatewayStatus",
    "LimitUsage",
    "PoolCapacityStatus",
    "Severity",
    "Stats",
    "card_status",
    "from_card_event",
    "from_carrier_event",
    "iso_time",
    "render_json",
    "render_payload",
    "usage_vs_limits",
]

log = structlog.get_logger("gateway.telemetry.events")

SCHEMA_VERSION = 1


class CallEventKind(StrEnum):
    """The ``{event}`` of ``dialgate/calls/{event}``."""

    ATTEMPT = "attempt"
    BLOCKED = "blocked"
    RINGING = "ringing"
    ANSWERED = "answered"
    ENDED = "ended"
    FAILOVER = "failover"


class AlertKind(StrEnum):
    """What an alert on ``dialgate/alerts`` is about."""

    CARD_SUSPENDED = "card-suspended"
    POOL_EXHAUSTED = "pool-exhausted"
    TRUNK_DOWN = "trunk-down"
    TRUNK_UP = "trunk-up"  # not in DESIGN's list: tells a wallboard the trunk is back
    QUOTA_NEAR = "quota-near"
    CARD_AT_RISK = "card-at-risk"
    CARD_SUSPECT = "card-suspect"  # ambiguous refusals: no new calls until probed / cleared
    AGENT_REBOUND = "agent-rebound"  # an agent's card died: it moved to another card once
    AGENT_PAUSED = "agent-paused"  # over a complaint ceiling: its calls are refused (agent-limit)
    AGENT_RESUMED = "agent-resumed"  # an operator lifted the pause (or it ran out)
    SOURCE_BANNED = "source-banned"  # password guessing or a flood: gateway/callpath/security.py
    OVERLOAD = (
        "overload"  # behind its traffic: a share of new calls gets 503 (callpath/overload.py)
    )
    OVERLOAD_OVER = "overload-over"  # caught up: no new call turned away for OVERLOAD_QUIET s


class Severity(StrEnum):
    """How loudly a wallboard should show an alert."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


# --- the events -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    """The gateway node is online or going offline (retained; the will says ``offline``)."""

    node: str
    online: bool
    version: str
    started_at: float
    at: float


@dataclass(frozen=True, slots=True)
class LimitUsage:
    """One limit of a card's quota profile and how much of it is used.

    For count limits ``used``/``limit`` are counts (minutes for talk time). For the
    rate limits (``answer_rate_floor``, ``short_call_ceiling``) ``used`` is the
    current fraction over ``sample`` calls and the limit only applies from
    ``min_sample`` calls on.
    """

    limit_name: str
    used: float
    limit: float
    sample: int | None = None
    min_sample: int | None = None

    @property
    def fraction(self) -> float:
        """used / limit (0 when the limit is 0 and nothing is used)."""
        if self.limit <= 0:
            return 1.0 if self.used > 0 else 0.0
        return self.used / self.limit

    def as_dict(self) -> dict[str, Any]:
        """JSON form: ``{"used": 3, "limit": 5}`` (+ sample sizes for rates)."""
        out: dict[str, Any] = {"used": _num(self.used), "limit": _num(self.limit)}
        if self.sample is not None:
            out["sample"] = self.sample
            out["min_sample"] = self.min_sample
        return out


@dataclass(frozen=True, slots=True)
class CardStatus:
    """A card's retained state: ``dialgate/cards/{card}/state``."""

    card: str
    state: str
    reason: str | None
    since: float
    pool: str
    at: float
    carrier: str | None = None
    in_use: int = 0
    usage: tuple[LimitUsage, ...] = ()
    resume_at: float | None = None
    probation_until: float | None = None
    cause: str | None = None
    #: Whether the card could take a call now; when not, why (``night_window``,
    #: ``calls_per_hour 60/60 in 3600s``, ``suspect``…) and until when.
    available: bool | None = None
    unavailable_why: str | None = None
    available_at: float | None = None


@dataclass(frozen=True, slots=True)
class Stats:
    """The periodic summary: ``dialgate/stats`` (retained)."""

    at: float
    active_calls: int
    cps: float
    asr: float | None
    attempts: int
    answered: int
    ended: int
    failovers: int
    blocked_by_reason: Mapping[str, int]
    cards_by_state: Mapping[str, int]
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CallEvent:
    """One step of one call: ``dialgate/calls/{kind}`` (not retained).

    ``callee`` is the E.164 destination (masked in payloads). ``outcome`` on
    ``ended`` is the call's result (``answered``, ``busy``, ``no-answer``,
    ``declined``, ``cancelled``, ``failed``…); ``reason`` on ``blocked`` is the
    policy reason (``dnc``, ``no-consent``…). ``decision_seconds`` is how long the
    policy pipeline took (on ``attempt`` and ``blocked``).

    ``call_id`` is the SIP Call-ID of the A-leg (the agent's or dialer's INVITE;
    the carrier's for an inbound call) — the same id as the CDR, the admin API and
    the log lines' ``call_id``. ``b_call_id`` is the Call-ID of the B-leg the event
    is about (``ringing``, ``answered``: the leg that rang or answered; ``ended``:
    the last leg; ``failover``: the failed leg; absent before any B-leg).
    """

    kind: CallEventKind
    call_id: str
    at: float
    callee: str | None = None
    card: str | None = None
    pool: str | None = None
    agent: str | None = None
    campaign: str | None = None
    reason: str | None = None
    status: int | None = None
    outcome: str | None = None
    duration: float | None = None
    from_card: str | None = None
    to_card: str | None = None
    decision_seconds: float | None = None
    b_call_id: str | None = None


@dataclass(frozen=True, slots=True)
class Alert:
    """Something an operator must look at: ``dialgate/alerts`` (QoS 1, not retained)."""

    kind: AlertKind
    at: float
    severity: Severity
    message: str
    card: str | None = None
    pool: str | None = None
    carrier: str | None = None
    reason: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PoolCapacityStatus:
    """How many calls a pool's cards can start: ``dialgate/pools/{pool}/capacity`` (retained).

    ``cards`` holds one mapping per card (``card``, ``state``, ``now``,
    ``next_minute``, ``cause``, ``frees_at`` as ISO time): ``gateway.cards.capacity``.
    """

    pool: str
    at: float
    now: int
    next_minute: int
    cards: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class AgentState:
    """One agent's state for the wall: ``dialgate/agents/{agent}/state`` (retained).

    ``state``: idle, dialling, ringing, talking or paused (``reason`` says why);
    counts of the day, the card of its last call (``gateway.telemetry.agent_board``).
    """

    agent: str
    at: float
    state: str
    reason: str | None = None
    card: str | None = None
    calls_today: int = 0
    answered_today: int = 0
    complaints_today: int = 0
    active_calls: int = 0


Event = GatewayStatus | CardStatus | Stats | CallEvent | Alert | PoolCapacityStatus | AgentState


# --- payloads ---------------------------------------------------------------------------


def _num(value: float) -> float | int:
    """Integers stay integers in JSON; other floats keep 4 decimals."""
    if isinstance(value, int) or (math.isfinite(value) and float(value).is_integer()):
        return int(value)
    return round(value, 4)


def _plain(value: Any) -> Any:
    """JSON-safe copy of evidence values (unknown objects become strings)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return str(value)


def render_payload(event: Event, *, mask_numbers: bool = True) -> dict[str, Any]:
    """The JSON object published for ``event`` (``"v": 1`` first; None fields left out)."""
    body: dict[str, Any]
    if isinstance(event, GatewayStatus):
        body = {
            "node": event.node,
            "status": "online" if event.online else "offline",
            "version": event.version,
            "started_at": iso_time(event.started_at),
            "at": iso_time(event.at),
        }
    elif isinstance(event, CardStatus):
        body = {
            "card": event.card,
            "state": event.state,
            "reason": event.reason,
            "since": iso_time(event.since),
            "pool": event.pool,
            "carrier": event.carrier,
            "in_use": event.in_use,
            "usage": {u.limit_name: u.as_dict() for u in event.usage},
            "resume_at": iso_time(event.resume_at),
            "probation_until": iso_time(event.probation_until),
            "cause": event.cause,
            "available": None
            if event.available is None
            else {
                "now": event.available,
                "why": event.unavailable_why,
                "until": iso_time(event.available_at),
            },
            "at": iso_time(event.at),
        }
    elif isinstance(event, Stats):
        body = {
            "at": iso_time(event.at),
            "active_calls": event.active_calls,
            "cps": round(event.cps, 3),
            "asr": None if event.asr is None else round(event.asr, 4),
            "attempts": event.attempts,
            "answered": event.answered,
            "ended": event.ended,
            "failovers": event.failovers,
            "blocked": dict(sorted(event.blocked_by_reason.items())),
            "cards": dict(sorted(event.cards_by_state.items())),
            **{k: _plain(v) for k, v in event.extra.items()},
        }
    elif isinstance(event, CallEvent):
        callee = event.callee
        if callee is not None and mask_numbers:
            callee = mask_number(callee)
        body = {
            "event": event.kind.value,
            "call_id": event.call_id,
            "b_call_id": event.b_call_id,
            "at": iso_time(event.at),
            "callee": callee,
            "card": event.card,
            "pool": event.pool,
            "agent": event.agent,
            "campaign": event.campaign,
            "reason": event.reason,
            "status": event.status,
            "outcome": event.outcome,
            "duration": None if event.duration is None else round(event.duration, 3),
            "from_card": event.from_card,
            "to_card": event.to_card,
        }
    elif isinstance(event, Alert):
        detail = _plain(event.detail)
        body = {
            "alert": event.kind.value,
            "severity": event.severity.value,
            "at": iso_time(event.at),
            "card": event.card,
            "pool": event.pool,
            "carrier": event.carrier,
            "reason": event.reason,
            "message": mask_numbers_in(event.message) if mask_numbers else event.message,
            "detail": mask_numbers_deep(detail) if mask_numbers else detail,
        }
    elif isinstance(event, PoolCapacityStatus):
        body = {
            "pool": event.pool,
            "at": iso_time(event.at),
            "now": event.now,
            "next_minute": event.next_minute,
            "cards": [dict(c) for c in event.cards],
        }
    elif isinstance(event, AgentState):
        body = {
            "agent": event.agent,
            "at": iso_time(event.at),
            "state": event.state,
            "reason": event.reason,
            "card": event.card,
            "calls_today": event.calls_today,
            "answered_today": event.answered_today,
            "complaints_today": event.complaints_today,
            "active_calls": event.active_calls,
        }
    else:  # pragma: no cover - the union is closed
        raise TypeError(f"not an event: {type(event).__name__}")
    # null is meaningful for a card's reason (none) and for ASR (no call ended yet).
    keep_empty = {"reason"} if isinstance(event, CardStatus) else {"asr"}
    return {
        "v": SCHEMA_VERSION,
        **{k: v for k, v in body.items() if v is not None or k in keep_empty},
    }


def render_json(event: Event, *, mask_numbers: bool = True) -> bytes:
    """:func:`render_payload` as compact UTF-8 JSON."""
    return json.dumps(
        render_payload(event, mask_numbers=mask_numbers),
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    ).encode()


# --- card usage -------------------------------------------------------------------------


def usage_vs_limits(snapshot: CardSnapshot, now: float) -> tuple[LimitUsage, ...]:
    """Usage of every configured limit of the card's effective profile at ``now``."""
    from policies.timeutil import day_bounds

    profile = snapshot.effective_profile
    usage = snapshot.usage
    starts = usage.call_starts
    upto = starts.bisect_right(now)
    out: list[LimitUsage] = []

    def rolling(window: float) -> int:
        return upto - starts.bisect_right(now - window)

    if profile.calls_per_minute is not None:
        out.append(LimitUsage("calls_per_minute", rolling(60.0), profile.calls_per_minute))
    if profile.calls_per_hour is not None:
        out.append(LimitUsage("calls_per_hour", rolling(3600.0), profile.calls_per_hour))
    if profile.calls_per_day is not None:
        day_start, _ = day_bounds(now, snapshot.timezone)
        used = upto - starts.bisect_right(day_start - 1e-6)
        out.append(LimitUsage("calls_per_day", used, profile.calls_per_day))
    if profile.concurrent is not None:
        out.append(LimitUsage("concurrent", usage.in_use, profile.concurrent))
    if profile.talk_minutes_per_day is not None:
        out.append(
            LimitUsage(
                "talk_minutes_per_day",
                round(usage.talk_seconds_today / 60.0, 2),
                profile.talk_minutes_per_day,
            )
        )
    if profile.distinct_callees_per_day is not None:
        out.append(
            LimitUsage(
                "distinct_callees_per_day",
                len(usage.callees_today),
                profile.distinct_callees_per_day,
            )
        )
    if profile.answer_rate_floor is not None or profile.short_call_ceiling is not None:
        horizon = now - profile.rate_window_seconds
        sample = [
            o for o in usage.recent_outcomes[-profile.rate_window_calls :] if o.started_at > horizon
        ]
        n = len(sample)
        answered = sum(1 for o in sample if o.answered)
        short = sum(1 for o in sample if o.answered and o.talk_seconds < profile.short_call_seconds)
        if profile.answer_rate_floor is not None:
            out.append(
                LimitUsage(
                    "answer_rate_floor",
                    round(answered / n, 4) if n else 0.0,
                    profile.answer_rate_floor,
                    sample=n,
                    min_sample=profile.rate_min_sample,
                )
            )
        if profile.short_call_ceiling is not None:
            out.append(
                LimitUsage(
                    "short_call_ceiling",
                    round(short / n, 4) if n else 0.0,
                    profile.short_call_ceiling,
                    sample=n,
                    min_sample=profile.rate_min_sample,
                )
            )
    if profile.consecutive_failures is not None:
        streak = 0
        for outcome in reversed(usage.recent_outcomes):
            if not outcome.failed:
                break
            streak += 1
        out.append(LimitUsage("consecutive_failures", streak, profile.consecutive_failures))
    return tuple(out)


def card_status(
    card: Card, now: float, snapshot: CardSnapshot | None = None, *, cause: str | None = None
) -> CardStatus:
    """The retained state of ``card`` at ``now``; usage and in-use come from ``snapshot``."""
    usage = usage_vs_limits(snapshot, now) if snapshot is not None else ()
    available: bool | None = None
    why: str | None = None
    until: float | None = None
    if snapshot is not None:
        from policies.quotas import Exhausted, evaluate_card
        from policies.selection import explain

        result = evaluate_card(snapshot, now)
        available = not isinstance(result, Exhausted)
        if isinstance(result, Exhausted):
            why = explain(card.id, result, snapshot.timezone, now).removeprefix(f"{card.id} ")
            until = result.frees_at
    return CardStatus(
        card=card.id,
        state=str(card.state),
        reason=None if card.reason is None else str(card.reason),
        since=card.since,
        pool=card.pool,
        at=now,
        carrier=card.carrier,
        in_use=snapshot.usage.in_use if snapshot is not None else 0,
        usage=usage,
        resume_at=card.resume_at,
        probation_until=card.probation_until,
        cause=cause,
        available=available,
        unavailable_why=why,
        available_at=until,
    )


_SUSPEND_SEVERITY = {"maintenance": Severity.WARNING}


def from_card_event(
    event: CardEvent, *, lookup: Callable[[str], CardStatus | None] | None = None
) -> list[Event]:
    """``gateway.cards`` events as bus events.

    ``CardStateChanged`` → the card's new :class:`CardStatus` (usage and carrier
    taken from ``lookup(card_id)`` when given) and, for a suspension, a
    ``card-suspended`` alert carrying the cause and evidence. ``PoolExhausted`` →
    a ``pool-exhausted`` alert.
    """
    from gateway.cards import CardStateChanged, PoolExhausted

    if isinstance(event, CardStateChanged):
        known = lookup(event.card) if lookup is not None else None
        reason = None if event.reason is None else str(event.reason)
        status = CardStatus(
            card=event.card,
            state=str(event.to_state),
            reason=reason,
            since=event.at,
            pool=event.pool,
            at=event.at,
            carrier=known.carrier if known is not None else None,
            in_use=known.in_use if known is not None else 0,
            usage=known.usage if known is not None else (),
            resume_at=event.resume_at,
            probation_until=event.probation_until,
            cause=event.cause,
        )
        out: list[Event] = [status]
        if str(event.to_state) == "suspect":
            out.append(
                Alert(
                    kind=AlertKind.CARD_SUSPECT,
                    at=event.at,
                    severity=Severity.WARNING,
                    message=(
                        f"card {event.card} suspect: {event.cause}; no new calls until an "
                        "operator confirms (cards suspend) or clears it (cards clear)"
                    ),
                    card=event.card,
                    pool=event.pool,
                    carrier=status.carrier,
                    detail={
                        "from": str(event.from_state),
                        "cause": event.cause,
                        "actor": event.actor,
                        "evidence": dict(event.evidence),
                    },
                )
            )
        if str(event.to_state) == "suspended":
            out.append(
                Alert(
                    kind=AlertKind.CARD_SUSPENDED,
                    at=event.at,
                    severity=_SUSPEND_SEVERITY.get(reason or "", Severity.CRITICAL),
                    message=f"card {event.card} suspended ({reason}) by {event.actor}: {event.cause}",
                    card=event.card,
                    pool=event.pool,
                    carrier=status.carrier,
                    reason=reason,
                    detail={
                        "from": str(event.from_state),
                        "cause": event.cause,
                        "actor": event.actor,
                        "evidence": dict(event.evidence),
                        **({"resume_at": iso_time(event.resume_at)} if event.resume_at else {}),
                    },
                )
            )
        return out
    if isinstance(event, PoolExhausted):
        return [
            Alert(
                kind=AlertKind.POOL_EXHAUSTED,
                at=event.at,
                severity=Severity.CRITICAL,
                message=f"pool {event.pool}: no card can take a call",
                pool=event.pool,
                detail={
                    "call_id": event.call_id,
                    "retry_after": event.retry_after,
                    "skipped": dict(event.skipped),
                },
            )
        ]
    raise TypeError(f"not a card event: {type(event).__name__}")


def from_carrier_event(event: CarrierStateChanged) -> list[Event]:
    """``gateway.cards.health`` transitions as alerts.

    A carrier going ``inactive`` from a usable state → ``trunk-down`` (critical);
    back to ``active`` from ``inactive``/``probing`` → ``trunk-up`` (info). Other
    transitions (one lost ping, a probe failing again) raise nothing.
    """
    old, new = str(event.from_state), str(event.to_state)
    detail = {"from": old, "to": new, "cause": event.cause}
    if new == "inactive" and old in ("active", "trying"):
        return [
            Alert(
                kind=AlertKind.TRUNK_DOWN,
                at=event.at,
                severity=Severity.CRITICAL,
                message=f"trunk {event.carrier} down ({event.cause}): its cards are skipped",
                carrier=event.carrier,
                reason=event.cause,
                detail=detail,
            )
        ]
    if new == "active" and old in ("inactive", "probing"):
        return [
            Alert(
                kind=AlertKind.TRUNK_UP,
                at=event.at,
                severity=Severity.INFO,
                message=f"trunk {event.carrier} back up",
                carrier=event.carrier,
                reason=event.cause,
                detail=detail,
            )
        ]
    return []


# --- the bus ----------------------------------------------------------------------------

Subscriber = Callable[[Event], None]


class EventBus:
    """Synchronous fan-out of events to subscribers; ``publish`` never awaits.

    A subscriber is a plain callable that must return quickly (put the event in
    a bounded queue, bump a counter). An event published *by* a subscriber while
    the bus is delivering is queued and delivered after the current one, in
    order, so subscribers may derive events (alerts from usage) without
    recursion. A failing subscriber is logged and counted, never raised.

    The bus remembers the last :class:`CardStatus` of every card
    (:attr:`card_states`): :meth:`publish_card_events` uses it to keep a card's
    carrier, usage and in-use count when ``gateway.cards`` reports a transition.
    """

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self.card_states: dict[str, CardStatus] = {}
        self._pending: collections.deque[Event] = collections.deque()
        self._delivering = False
        self.published = 0
        self.subscriber_errors = 0

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Add ``subscriber``; return a function that removes it again."""
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe

    def publish(self, event: Event) -> None:
        """Hand ``event`` to every subscriber and return; never blocks, never raises."""
        self._pending.append(event)
        if self._delivering:
            return
        self._delivering = True
        try:
            while self._pending:
                current = self._pending.popleft()
                self.published += 1
                if isinstance(current, CardStatus):
                    self.card_states[current.card] = current
                for subscriber in tuple(self._subscribers):
                    try:
                        subscriber(current)
                    except Exception:
                        self.subscriber_errors += 1
                        log.exception(
                            "event subscriber failed",
                            subscriber=getattr(subscriber, "__qualname__", repr(subscriber)),
                            event_type=type(current).__name__,
                        )
        finally:
            self._delivering = False

    def publish_many(self, events: Iterable[Event]) -> None:
        """Publish each event in order."""
        for event in events:
            self.publish(event)

    def publish_card_events(
        self,
        events: Iterable[CardEvent],
        *,
        lookup: Callable[[str], CardStatus | None] | None = None,
    ) -> None:
        """Publish ``CardManager.drain_events()`` through :func:`from_card_event`.

        Without ``lookup`` the card's last published :class:`CardStatus` supplies
        carrier, usage and in-use.
        """
        for event in events:
            self.publish_many(from_card_event(event, lookup=lookup or self.card_states.get))

    def publish_carrier_events(self, events: Iterable[CarrierStateChanged]) -> None:
        """Publish ``CarrierHealth.drain_events()`` through :func:`from_carrier_event`."""
        for event in events:
            self.publish_many(from_carrier_event(event))


# --- stats aggregation ------------------------------------------------------------------


class CallStats:
    """Counts call and card events into :class:`Stats` (a bus subscriber).

    CPS is attempts over the last ``cps_window`` seconds; ASR is the share of
    the calls ended in the last ``asr_window`` seconds that were answered (None
    before any call ended). Active calls are attempts not yet ended or blocked.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        cps_window: float = 10.0,
        asr_window: float = 900.0,
        max_active: int = 100_000,
    ) -> None:
        self.clock = clock
        self.cps_window = cps_window
        self.asr_window = asr_window
        self.max_active = max_active
        self.attempts = 0
        self.answered = 0
        self.ended = 0
        self.failovers = 0
        self.blocked_by_reason: collections.Counter[str] = collections.Counter()
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.alerts: collections.Counter[str] = collections.Counter()
        self.card_states: dict[str, str] = {}
        self._active: dict[str, float] = {}
        self._attempt_times: collections.deque[float] = collections.deque()
        # Calls ended per whole second: [second, ended, answered], oldest first. A
        # per-call entry would hold asr_window x CPS of them (90,000 at 100 CPS).
        self._ends: collections.deque[list[int]] = collections.deque()

    def __call__(self, event: Event) -> None:
        """Observe one bus event."""
        if isinstance(event, CallEvent):
            self._call(event)
        elif isinstance(event, CardStatus):
            self.card_states[event.card] = event.state
        elif isinstance(event, Alert):
            self.alerts[event.kind.value] += 1

    def _call(self, event: CallEvent) -> None:
        kind = event.kind
        if kind is CallEventKind.ATTEMPT:
            self.attempts += 1
            self._attempt_times.append(event.at)
            if len(self._active) < self.max_active:
                self._active[event.call_id] = event.at
        elif kind is CallEventKind.BLOCKED:
            self.blocked_by_reason[event.reason or "unknown"] += 1
            self._active.pop(event.call_id, None)
        elif kind is CallEventKind.FAILOVER:
            self.failovers += 1
        elif kind is CallEventKind.ENDED:
            self.ended += 1
            outcome = event.outcome or "unknown"
            self.outcomes[outcome] += 1
            answered = outcome == "answered"
            if answered:
                self.answered += 1
            second = math.floor(event.at)
            ends = self._ends
            if ends and ends[-1][0] == second:
                ends[-1][1] += 1
                ends[-1][2] += answered
            else:
                ends.append([second, 1, int(answered)])
            self._active.pop(event.call_id, None)
        if kind is CallEventKind.ATTEMPT or kind is CallEventKind.ENDED:
            # Trimmed here too, not only by snapshot(): without a reader (no MQTT)
            # the windows would keep every call ever made.
            self._trim(event.at)

    @property
    def active_calls(self) -> int:
        """Calls attempted and not yet ended or blocked."""
        return len(self._active)

    def _trim(self, now: float) -> None:
        """Forget attempts and ends older than their windows (bounded by time)."""
        while self._attempt_times and self._attempt_times[0] <= now - self.cps_window:
            self._attempt_times.popleft()
        while self._ends and self._ends[0][0] <= now - self.asr_window:
            self._ends.popleft()

    def cards_by_state(self) -> dict[str, int]:
        """How many known cards are in each state."""
        return dict(collections.Counter(self.card_states.values()))

    def snapshot(self, extra: Mapping[str, Any] | None = None) -> Stats:
        """The :class:`Stats` now (trims the rolling windows)."""
        now = self.clock()
        self._trim(now)
        recent = sum(bucket[1] for bucket in self._ends)
        asr = sum(bucket[2] for bucket in self._ends) / recent if recent else None
        return Stats(
            at=now,
            active_calls=self.active_calls,
            cps=len(self._attempt_times) / self.cps_window,
            asr=asr,
            attempts=self.attempts,
            answered=self.answered,
            ended=self.ended,
            failovers=self.failovers,
            blocked_by_reason=dict(self.blocked_by_reason),
            cards_by_state=self.cards_by_state(),
            extra=dict(extra or {}),
        )

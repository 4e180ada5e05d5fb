"""Offline rehearsal: replay a scenario's pacing through the carrier models, without SIP.

Each agent (and each dialer channel) works its own share of the leads (lead i to
source i mod n, as in the SIP run) and takes the next one; the attempt passes a
*stand-in* for the gateway's policy pipeline (a number no plan has is refused
484 ``address-incomplete`` always; consent, calling hours, the per-number
frequency cap, card quotas and card selection only when the scenario is
``guarded``), then
:meth:`CarrierModel.decide_invite` answers it. On a card-level failure (403
suspension, 402 arrears, 503 maintenance) the attempt fails over to the next
card of the pool, never on a callee-level outcome (the destination-level
answers — plain 403, ring then 408 or 503, silence — are callee-level here: a
silent destination holds the call for ``silent_seconds``, the caller's Timer B,
and ends as 408). Accepted calls end after their plan's ring + talk time,
reported with
:meth:`CarrierModel.record_call_end` in business-time order.

The stand-in gateway here is deliberately small and lives only in the
simulator: it approximates the product's policies so that "unguarded" and
"guarded" traffic can be compared without sockets. It is not the gateway and
must never be imported by it. The run is a discrete-event simulation on
business time: it never reads a clock, never sleeps and is deterministic for a
scenario's seed.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import phonenumbers
from phonenumbers.timezone import time_zones_for_number

from policies.context import normalize
from policies.errors import AddressIncompleteError
from policies.privacy import mask_number
from simulator.answer import Outcome
from simulator.antifraud import TimeWindow
from simulator.models import CarrierModel
from simulator.records import CallOutcome, CallRecord, CardMark
from simulator.scenario import (
    CardSection,
    ConsentMode,
    FrequencySection,
    Lead,
    QuotaProfileSection,
    Scenario,
)

__all__ = ["CallOutcome", "CallRecord", "CardMark", "OfflineResult", "run_offline"]

#: How long a source waits before retrying when no card could take its call.
NO_CARD_RETRY_SECONDS = 60.0
#: An upper bound on simulation steps, so a malformed scenario cannot spin forever.
MAX_STEPS = 2_000_000


#: What the agent sees of each plan outcome. A silent destination ends with the 408
#: of the caller's Timer B; ring then 408 is a no-answer; a plain 403 is the
#: destination's refusal and ring then 503 a failure after the callee was reached —
#: all callee-level: the stand-in gateway never tries them on another card.
_PLAN_OUTCOME = {
    Outcome.ANSWER: CallOutcome.ANSWERED,
    Outcome.BUSY: CallOutcome.BUSY,
    Outcome.NO_ANSWER: CallOutcome.NO_ANSWER,
    Outcome.DECLINE: CallOutcome.DECLINED,
    Outcome.REFUSE_403: CallOutcome.REFUSED,
    Outcome.RING_THEN_408: CallOutcome.NO_ANSWER,
    Outcome.RING_THEN_503: CallOutcome.FAILED,
    Outcome.SILENT: CallOutcome.NO_ANSWER,
}


@dataclass(slots=True)
class OfflineResult:
    """Everything an offline run produced."""

    scenario: Scenario
    carrier: CarrierModel
    calls: list[CallRecord]
    marks: list[CardMark]
    leads_total: int
    leads_left: int


@dataclass(slots=True)
class _CardGuard:
    """The stand-in gateway's view of one card: reservations and availability."""

    card: CardSection
    profile: QuotaProfileSection
    tz: ZoneInfo
    guarded: bool
    starts: deque[float] = field(default_factory=deque)
    day: object = None
    calls_today: int = 0
    callees_today: set[str] = field(default_factory=set)
    talk_today: float = 0.0
    in_use_until: list[float] = field(default_factory=list)
    outcomes: deque[tuple[bool, bool]] = field(default_factory=deque)
    unavailable_until: float = -math.inf

    def _roll(self, now: float) -> None:
        while self.starts and self.starts[0] <= now - 3600:
            self.starts.popleft()
        today = datetime.fromtimestamp(now, tz=self.tz).date()
        if today != self.day:
            self.day, self.calls_today, self.talk_today = today, 0, 0.0
            self.callees_today = set()
        self.in_use_until = [t for t in self.in_use_until if t > now]

    def usable(self, callee: str, now: float) -> float | None:
        """Headroom (higher is better) when the card may take this call, else None."""
        self._roll(now)
        if now < self.unavailable_until:
            return None
        if len(self.in_use_until) >= self.profile.concurrent:
            return None
        if not self.guarded:
            return 0.0
        p = self.profile
        last_minute = sum(1 for t in self.starts if t > now - 60)
        if p.calls_per_minute is not None and last_minute >= p.calls_per_minute:
            return None
        if (
            p.min_gap_seconds is not None
            and self.starts
            and now - self.starts[-1] < p.min_gap_seconds
        ):
            return None
        if p.calls_per_hour is not None and len(self.starts) >= p.calls_per_hour:
            return None
        if p.calls_per_day is not None and self.calls_today >= p.calls_per_day:
            return None
        if (
            p.distinct_callees_per_day is not None
            and callee not in self.callees_today
            and len(self.callees_today) >= p.distinct_callees_per_day
        ):
            return None
        if p.talk_minutes_per_day is not None and self.talk_today / 60 >= p.talk_minutes_per_day:
            return None
        if p.night_window is not None:
            local = datetime.fromtimestamp(now, tz=self.tz).time()
            if any(TimeWindow.parse(w).contains(local) for w in p.night_window.split(",")):
                return None
        if len(self.outcomes) >= p.min_sample:
            answered = [a for a, _ in self.outcomes]
            rate = sum(answered) / len(answered)
            if p.answer_rate_floor is not None and rate < p.answer_rate_floor:
                return None
            # The gateway's short share is over *all* finished calls of its window
            # (policies.quotas), the carrier's over answered calls only.
            shorts = sum(s for _, s in self.outcomes)
            ceiling = p.short_call_ceiling
            if ceiling is not None and shorts / len(self.outcomes) > ceiling:
                return None
        if p.calls_per_hour is not None:
            return float(p.calls_per_hour - len(self.starts))
        return math.inf

    def reserve(self, callee: str, now: float, ends: float) -> None:
        """Write-ahead count of an INVITE sent on this card."""
        self._roll(now)
        self.starts.append(now)
        self.calls_today += 1
        self.callees_today.add(callee)
        self.in_use_until.append(ends)

    def finish(self, answered: bool, talk: float, short_seconds: float) -> None:
        """Usage after the call ended."""
        self.talk_today += talk
        self.outcomes.append((answered, answered and talk < short_seconds))
        while len(self.outcomes) > self.profile.rate_window_calls:
            self.outcomes.popleft()


@dataclass(slots=True)
class _NumberHistory:
    """The stand-in gateway's per-number history: ``[policy.frequency]`` across cards."""

    limits: FrequencySection | None
    attempts: dict[str, list[float]] = field(default_factory=dict)
    answers: dict[str, list[float]] = field(default_factory=dict)

    def allows(self, number: str, now: float) -> bool:
        """True when one more call to ``number`` fits the attempts and answers windows."""
        f = self.limits
        if f is None:
            return True
        tried = sum(1 for t in self.attempts.get(number, ()) if t > now - f.attempts_window)
        picked = sum(1 for t in self.answers.get(number, ()) if t > now - f.answers_window)
        return tried < f.attempts and picked < f.answers

    def attempt(self, number: str, now: float) -> None:
        """Count a call placed to ``number`` (write-ahead, as the gateway does)."""
        self.attempts.setdefault(number, []).append(now)

    def answered(self, number: str, at: float) -> None:
        """Count an answered call to ``number``."""
        self.answers.setdefault(number, []).append(at)


@dataclass(order=True, slots=True)
class _Step:
    time: float
    seq: int
    kind: str = field(compare=False)
    payload: tuple[Any, ...] = field(compare=False)


def _blocked(
    now: float,
    source: str,
    masked: str,
    reason: str,
    status: int,
    failovers: int = 0,
    card: str | None = None,
) -> CallRecord:
    return CallRecord(now, source, masked, card, CallOutcome.BLOCKED, status, reason, failovers)


def _callee_zones(lead: Lead, default_tz: ZoneInfo) -> tuple[ZoneInfo, ...]:
    """The callee's possible time zones: the lead's own, else the number's, else the carrier's."""
    if lead.timezone:
        return (ZoneInfo(lead.timezone),)
    try:
        names = time_zones_for_number(phonenumbers.parse(lead.number, None))
    except phonenumbers.NumberParseException:
        names = ()
    zones = tuple(ZoneInfo(n) for n in names if n != "Etc/Unknown")
    return zones or (default_tz,)


def _inside_hours(
    lead: Lead, hours: Sequence[TimeWindow], default_tz: ZoneInfo, now: float
) -> bool:
    # Conservative: a number spanning several zones must be inside the hours in all of them.
    return all(
        any(w.contains(datetime.fromtimestamp(now, tz=zone).time()) for w in hours)
        for zone in _callee_zones(lead, default_tz)
    )


def run_offline(scenario: Scenario, *, max_leads: int | None = None) -> OfflineResult:
    """Replay ``scenario`` through the carrier models; deterministic for its seed.

    ``max_leads`` dials only the first N leads (as the SIP runner's option).
    """
    leads = scenario.expand_leads()
    carrier = scenario.build_carrier(leads)
    if max_leads is not None:
        leads = leads[: max(0, max_leads)]
    carrier_tz = ZoneInfo(scenario.carrier.timezone)
    gw = scenario.gateway
    mask = gw.mask_callees
    guards = {
        card.id: _CardGuard(card, gw.quota_profiles[card.quota], carrier_tz, gw.guarded)
        for card in scenario.cards
    }
    ordered_cards = sorted(scenario.cards, key=lambda c: (c.priority, c.id))
    hours = scenario.calling_hours()
    history = _NumberHistory(gw.frequency_in_force())
    short_seconds = scenario.carrier.antifraud.short_call_seconds
    pace_gap = 60.0 / scenario.pacing.calls_per_minute_per_agent
    think = scenario.pacing.think_seconds

    sources: list[tuple[str, str | None]] = [(a.name, a.card) for a in scenario.agents]
    for dialer in scenario.dialers:
        sources += [(f"{dialer.name}/{ch}", None) for ch in range(1, dialer.channels + 1)]

    # Lead i goes to source i mod n, as in the SIP run (simulator.runner).
    queues: dict[str, deque[Lead]] = {
        name: deque(leads[i :: len(sources)]) for i, (name, _) in enumerate(sources)
    }
    heap: list[_Step] = []
    seq = 0

    def push(when: float, kind: str, payload: tuple[Any, ...]) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(heap, _Step(when, seq, kind, payload))

    start, end = scenario.start_epoch, scenario.end_epoch
    for index, (name, bound) in enumerate(sources):
        # Stagger sources by a second so that they do not all dial at the same instant.
        push(start + index, "dial", (name, bound))

    calls: list[CallRecord] = []
    marks: list[CardMark] = []

    def candidates(bound: str | None, callee: str, now: float) -> list[str]:
        if bound is not None:
            pool = next(c.pool for c in scenario.cards if c.id == bound)
            others = [c for c in ordered_cards if c.pool == pool and c.id != bound]
            order = [bound] + [c.id for c in others]
        else:
            order = [c.id for c in ordered_cards]
        usable = [(cid, guards[cid].usable(callee, now)) for cid in order]
        fit = [(cid, head) for cid, head in usable if head is not None]
        if bound is not None and fit and fit[0][0] == bound:
            # Affinity: stay on the bound card while it can take calls.
            return [cid for cid, _ in fit]
        # Otherwise the card with the most headroom first (stable on priority order).
        return [cid for cid, _ in sorted(fit, key=lambda item: -(item[1] or 0.0))]

    steps = 0
    while heap:
        steps += 1
        if steps > MAX_STEPS:
            raise RuntimeError(f"offline run exceeded {MAX_STEPS} steps")
        step = heapq.heappop(heap)
        now = step.time
        if step.kind == "end":
            card_id, number, answered, talk = step.payload
            guard = guards[card_id]
            guard.finish(answered, talk, guard.profile.short_seconds(short_seconds))
            carrier.record_call_end(card_id, number, answered, talk, now)
            continue
        if now >= end:
            continue
        name, bound = step.payload
        queue = queues[name]
        if not queue:
            continue
        lead = queue.popleft()
        masked = mask_number(lead.number, enabled=mask)

        try:
            # The gateway's call flow step 2, guarded or not: a number no plan has → 484.
            normalize(lead.number, gw.default_region)
        except AddressIncompleteError:
            calls.append(_blocked(now, name, masked, "address-incomplete", 484))
            push(now + max(think, 1.0), "dial", step.payload)
            continue
        if gw.guarded and gw.consent is ConsentMode.REQUIRE_CONSENT and not lead.consent:
            calls.append(_blocked(now, name, masked, "no-consent", 403))
            push(now + max(think, 1.0), "dial", step.payload)
            continue
        if gw.guarded and not _inside_hours(lead, hours, carrier_tz, now):
            calls.append(_blocked(now, name, masked, "calling-hours", 403))
            push(now + max(think, 1.0), "dial", step.payload)
            continue
        if not history.allows(lead.number, now):
            calls.append(_blocked(now, name, masked, "frequency-cap", 403))
            push(now + max(think, 1.0), "dial", step.payload)
            continue

        failovers = 0
        placed = False
        last_card: str | None = None
        for card_id in candidates(bound, lead.number, now):
            last_card = card_id
            decision = carrier.decide_invite(card_id, lead.number, now)
            plan = decision.plan
            if plan is None:
                retry = decision.header("Retry-After")
                until = now + float(retry) if retry is not None else math.inf
                guards[card_id].unavailable_until = until
                marks.append(
                    CardMark(
                        now,
                        card_id,
                        decision.status,
                        decision.reason_phrase,
                        None if math.isinf(until) else until,
                    )
                )
                failovers += 1
                continue
            ends = now + plan.duration_seconds
            guards[card_id].reserve(lead.number, now, ends)
            history.attempt(lead.number, now)
            if plan.answered:
                history.answered(lead.number, now + plan.ring_seconds)
            calls.append(
                CallRecord(
                    now,
                    name,
                    masked,
                    card_id,
                    _PLAN_OUTCOME[plan.outcome],
                    plan.sip_status,
                    None,
                    failovers,
                    plan.ring_seconds,
                    plan.talk_seconds,
                )
            )
            push(ends, "end", (card_id, lead.number, plan.answered, plan.talk_seconds))
            push(max(ends + think, now + pace_gap), "dial", step.payload)
            placed = True
            break
        if placed:
            continue
        # No card could take the call: the gateway answers 503 and never dialled the callee,
        # so the lead goes back to the front of the queue.
        queue.appendleft(lead)
        calls.append(
            _blocked(
                now,
                name,
                masked,
                "no-card-available",
                503,
                failovers,
                last_card if failovers else None,
            )
        )
        push(now + NO_CARD_RETRY_SECONDS, "dial", step.payload)

    left = sum(len(q) for q in queues.values())
    return OfflineResult(scenario, carrier, calls, marks, len(leads), left)

"""In-memory implementations of the storage protocols, for tests and the simulator.

`InMemoryCardStore` implements `CardSource` and `CardUsageView` with
write-ahead reservations re-checked by `quotas.would_exceed`;
`InMemoryHistory` implements `DestinationHistory`; `InMemoryAgents`
implements `AgentUsageView`. The gateway's SQLite/Redis store implements
the same protocols for production.

These classes hold state but never read a clock: every method takes the
instant it acts at. They are not persistent and must never be used as the
production store (a restart would reset every counter).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from threading import RLock

from policies.agent import AgentUsage
from policies.context import CallContext
from policies.quotas import (
    CallOutcome,
    CardSnapshot,
    CardState,
    CardUsage,
    QuotaProfile,
    StartTimes,
    would_exceed,
)
from policies.timeutil import day_bounds

__all__ = ["CardRecord", "InMemoryAgents", "InMemoryCardStore", "InMemoryHistory"]


@dataclass(slots=True)
class CardRecord:
    """Mutable bookkeeping of one card in the in-memory store."""

    card_id: str
    profile: QuotaProfile
    timezone: str = "UTC"
    state: CardState = CardState.ACTIVE
    pool: str = "main"
    priority: int = 0
    probation_profile: QuotaProfile | None = None
    profile_override: QuotaProfile | None = None
    starts: list[float] = field(default_factory=list)
    callees: dict[float, Counter[str]] = field(default_factory=dict)
    talk: dict[float, float] = field(default_factory=dict)
    in_use: int = 0
    _frozen: dict[float, frozenset[str]] = field(default_factory=dict)
    version: int = 0
    _usage_key: tuple[object, ...] | None = None
    _usage: CardUsage | None = None

    def callees_on(self, day_start: float) -> frozenset[str]:
        """Distinct callees of the carrier day starting at `day_start` (cached)."""
        cached = self._frozen.get(day_start)
        if cached is None:
            cached = frozenset(self.callees.get(day_start, ()))
            self._frozen[day_start] = cached
        return cached

    outcomes: list[CallOutcome] = field(default_factory=list)


class InMemoryCardStore:
    """Cards, their usage and write-ahead reservations, in memory."""

    def __init__(self, keep_outcomes: int = 100) -> None:
        self._cards: dict[str, CardRecord] = {}
        self._agent_pools: dict[str, str] = {}
        self._lock = RLock()
        self._keep_outcomes = keep_outcomes

    def add_card(self, record: CardRecord) -> None:
        """Register a card (replaces one with the same id)."""
        with self._lock:
            self._cards[record.card_id] = record

    def card(self, card_id: str) -> CardRecord:
        """The bookkeeping record of a card (KeyError if unknown)."""
        return self._cards[card_id]

    def set_state(self, card_id: str, state: CardState) -> None:
        """Change a card's state (suspension, restore to probation, …)."""
        with self._lock:
            self._cards[card_id].state = state

    def bind_agent_pool(self, agent: str, pool: str) -> None:
        """Restrict an agent's calls to the cards of one pool."""
        self._agent_pools[agent] = pool

    def card_usage(self, card_id: str, now: float) -> CardUsage:
        """Usage of a card as of `now`; daily fields for the carrier day containing `now`.

        `call_starts` covers the carrier day plus the hour before it (the
        protocol asks for at least the last hour and the current day), so
        the snapshot stays valid for the whole day until the card changes;
        it is cached on a fingerprint of the record.
        """
        with self._lock:
            rec = self._cards[card_id]
            day_start, _ = day_bounds(now, rec.timezone)
            starts = rec.starts
            key = (
                day_start,
                rec.version,
                len(starts),
                starts[-1] if starts else None,
                rec.in_use,
                len(rec.outcomes),
                id(rec.outcomes[-1]) if rec.outcomes else None,
            )
            if rec._usage is not None and rec._usage_key == key:
                return rec._usage
            usage = CardUsage(
                call_starts=StartTimes(starts[bisect_left(starts, day_start - 3600.0) :]),
                callees_today=rec.callees_on(day_start),
                talk_seconds_today=rec.talk.get(day_start, 0.0),
                in_use=rec.in_use,
                recent_outcomes=tuple(rec.outcomes[-self._keep_outcomes :]),
            )
            rec._usage_key, rec._usage = key, usage
            return usage

    def snapshot(self, card_id: str, now: float) -> CardSnapshot:
        """A `CardSnapshot` of one card as of `now`."""
        with self._lock:
            rec = self._cards[card_id]
            return CardSnapshot(
                card_id=rec.card_id,
                state=rec.state,
                profile=rec.profile,
                timezone=rec.timezone,
                usage=self.card_usage(card_id, now),
                probation_profile=rec.probation_profile,
                profile_override=rec.profile_override,
                pool=rec.pool,
                priority=rec.priority,
            )

    def candidate_ids(self, ctx: CallContext, now: float) -> Sequence[str]:
        """Ids of the agent's pool (all cards when the agent has no pool)."""
        with self._lock:
            pool = self._agent_pools.get(ctx.agent)
            return [cid for cid, rec in self._cards.items() if pool is None or rec.pool == pool]

    def snapshots(self, card_ids: Sequence[str], now: float) -> Sequence[CardSnapshot]:
        """Snapshots of the given cards as of `now` (unknown ids skipped)."""
        with self._lock:
            return [self.snapshot(cid, now) for cid in card_ids if cid in self._cards]

    def candidates(self, ctx: CallContext, now: float) -> Sequence[CardSnapshot]:
        """Snapshots of every card of the agent's pool."""
        return self.snapshots(self.candidate_ids(ctx, now), now)

    def reserve(self, card_id: str, ctx: CallContext, now: float, *, emergency: bool) -> bool:
        """Re-check limits and record a call start atomically; False when the card is full."""
        with self._lock:
            rec = self._cards[card_id]
            if rec.state not in (CardState.ACTIVE, CardState.PROBATION):
                return False
            snap = self.snapshot(card_id, now)
            if not emergency and (
                would_exceed(snap.effective_profile, snap.usage, rec.timezone, ctx.destination, now)
                is not None
            ):
                return False
            insort(rec.starts, now)
            day_start, _ = day_bounds(now, rec.timezone)
            rec.callees.setdefault(day_start, Counter())[ctx.destination] += 1
            rec._frozen.pop(day_start, None)
            rec.in_use += 1
            rec.version += 1
            return True

    def release(self, card_id: str, started_at: float, callee: str) -> None:
        """Undo a reservation whose INVITE never reached the callee (card-level failover)."""
        with self._lock:
            rec = self._cards[card_id]
            i = bisect_left(rec.starts, started_at)
            if i < len(rec.starts) and rec.starts[i] == started_at:
                del rec.starts[i]
            day_start, _ = day_bounds(started_at, rec.timezone)
            day = rec.callees.get(day_start)
            if day is not None and day[callee] > 0:
                day[callee] -= 1
                if day[callee] == 0:
                    del day[callee]
                rec._frozen.pop(day_start, None)
            rec.in_use = max(0, rec.in_use - 1)
            rec.version += 1

    def finish(self, card_id: str, outcome: CallOutcome) -> None:
        """A reserved call ended: free the line, record talk time and outcome."""
        with self._lock:
            rec = self._cards[card_id]
            rec.in_use = max(0, rec.in_use - 1)
            rec.version += 1
            if outcome.talk_seconds > 0:
                day_start, _ = day_bounds(outcome.started_at, rec.timezone)
                rec.talk[day_start] = rec.talk.get(day_start, 0.0) + outcome.talk_seconds
            rec.outcomes.append(outcome)
            if len(rec.outcomes) > 2 * self._keep_outcomes:
                del rec.outcomes[: -self._keep_outcomes]

    def override_profile(self, card_id: str, profile: QuotaProfile | None) -> None:
        """Set or clear a per-card profile override."""
        with self._lock:
            self._cards[card_id].profile_override = profile


class InMemoryHistory:
    """`DestinationHistory` in memory: attempts and answers per destination."""

    def __init__(self) -> None:
        self._attempts: dict[str, list[float]] = defaultdict(list)
        self._answers: dict[str, list[float]] = defaultdict(list)

    def record_attempt(self, e164: str, at: float) -> None:
        """Count an attempt (every call that left the gateway, any card or agent)."""
        insort(self._attempts[e164], at)

    def record_answer(self, e164: str, at: float) -> None:
        """Count an answered call."""
        insort(self._answers[e164], at)

    def attempts(self, e164: str, since: float) -> Sequence[float]:
        """Attempt times at or after `since`."""
        times = self._attempts.get(e164, [])
        return times[bisect_left(times, since) :]

    def answers(self, e164: str, since: float) -> Sequence[float]:
        """Answer times at or after `since`."""
        times = self._answers.get(e164, [])
        return times[bisect_left(times, since) :]


class InMemoryAgents:
    """`AgentUsageView` in memory: call starts, complaints and pauses per agent."""

    def __init__(self) -> None:
        self._calls: dict[str, list[float]] = defaultdict(list)
        self._complaints: dict[str, list[float]] = defaultdict(list)
        self._paused: dict[str, str] = {}

    def record_call(self, agent: str, at: float) -> None:
        """Count a call the agent placed."""
        insort(self._calls[agent], at)

    def record_complaint(self, agent: str, at: float) -> None:
        """Count a complaint against one of the agent's calls."""
        insort(self._complaints[agent], at)

    def pause(self, agent: str, reason: str = "") -> None:
        """Pause an agent (calls refused with agent-limit until resumed)."""
        self._paused[agent] = reason

    def resume(self, agent: str) -> None:
        """Lift a pause."""
        self._paused.pop(agent, None)

    def agent_usage(self, agent: str, now: float, *, window: float = 30 * 86400.0) -> AgentUsage:
        """Activity of the last `window` seconds (30 days by default) as of `now`."""
        since = now - window
        calls = self._calls.get(agent, [])
        complaints = self._complaints.get(agent, [])
        return AgentUsage(
            call_starts=StartTimes(calls[bisect_left(calls, since) :]),
            complaints=tuple(complaints[bisect_left(complaints, since) :]),
            paused=agent in self._paused,
            pause_reason=self._paused.get(agent, ""),
        )

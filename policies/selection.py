"""Card selection with quota reservation: the last step of the pipeline.

Order of preference (DESIGN.md "Quotas", "Selection"):
1. the agent's bound card, if it has headroom;
2. the card the agent/dialer used last, if it has headroom of at least
   `sticky_min_headroom` (carriers flag frequent card switching, so staying
   on one card beats rotating per call);
3. the other cards by most headroom, then pool priority, then id.

Suspended, appealing and retired cards are skipped; probation cards are
judged by their probation profile. The chosen card is reserved through
`CardSource.reserve` (write-ahead, re-checked atomically by the store with
`quotas.would_exceed`); if the reservation loses a race the next card is
tried. No card → 503 `no-card-available` with Retry-After = seconds until
the earliest card frees (or `default_retry_after` when no time is known).

Emergency calls skip quota limits: any usable card is taken, preferring one
with a free line. Failure mode: fails closed — a store error propagates as
`StoreUnavailableError` (503 store-unavailable). Never reads a clock.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from policies.context import CallContext
from policies.decision import Decision, RejectReason
from policies.quotas import (
    USABLE_STATES,
    CardSnapshot,
    Exhausted,
    Headroom,
    QuotaLimit,
    evaluate_card,
)
from policies.timeutil import as_utc, ceil_seconds, day_bounds, epoch, zone

__all__ = [
    "CardSelection",
    "CardSource",
    "explain",
    "headroom_bound",
    "rank_cards",
    "ranked_lazily",
]


@runtime_checkable
class CardSource(Protocol):
    """What selection needs from the gateway's card store."""

    def candidate_ids(self, ctx: CallContext, now: float) -> Sequence[str]:
        """Ids of the cards this call may use (the agent's pool), in pool order; cheap."""
        ...

    def snapshots(self, card_ids: Sequence[str], now: float) -> Sequence[CardSnapshot]:
        """Snapshots (state, profiles, usage as of `now`) of the given cards, unknown ids skipped.

        Selection first asks for the bound and last-used cards only, and
        for the rest of the pool only when those cannot take the call.
        """
        ...

    def reserve(self, card_id: str, ctx: CallContext, now: float, *, emergency: bool) -> bool:
        """Write-ahead reservation of one call start on `card_id`.

        Must re-check `quotas.would_exceed` atomically with the write (unless
        `emergency`) and return False, writing nothing, when the card no
        longer has room. Raises `StoreUnavailableError` when it cannot write.
        """
        ...


def rank_cards(
    cards: Sequence[CardSnapshot],
    ctx: CallContext,
    now: float,
    sticky_min_headroom: float = 0.0,
) -> tuple[list[CardSnapshot], dict[str, Headroom | Exhausted]]:
    """Cards with headroom in order of preference, and every card's evaluation."""
    evaluations = {c.card_id: evaluate_card(c, now, ctx.destination) for c in cards}
    usable = [c for c in cards if isinstance(evaluations[c.card_id], Headroom)]

    def score(card: CardSnapshot) -> float:
        result = evaluations[card.card_id]
        return result.score if isinstance(result, Headroom) else -1.0

    ordered = sorted(usable, key=lambda c: (-score(c), c.priority, c.card_id))
    preferred: list[CardSnapshot] = []
    for card in ordered:
        if card.card_id == ctx.bound_card:
            preferred.append(card)
    for card in ordered:
        if (
            card.card_id == ctx.last_card
            and card.card_id != ctx.bound_card
            and score(card) >= sticky_min_headroom
        ):
            preferred.append(card)
    chosen = {c.card_id for c in preferred}
    return preferred + [c for c in ordered if c.card_id not in chosen], evaluations


def headroom_bound(card: CardSnapshot, now: float) -> float:
    """A cheap upper bound of a card's headroom score; -1.0 when it surely cannot take a call.

    It is the minimum of the count fractions `evaluate_card` also takes the
    minimum of (concurrent, calls per minute/hour/day, talk minutes,
    distinct callees), without the gating checks (night, gap, failures,
    rates), so the real score is never above it and usually equals it.
    Selection evaluates cards fully in best-bound-first order and stops once
    no remaining card can win.
    """
    if card.state not in USABLE_STATES:
        return -1.0
    profile = card.effective_profile
    usage = card.usage
    bound = 1.0
    concurrent = profile.concurrent
    if concurrent is not None:
        if usage.in_use >= concurrent:
            return -1.0
        bound = (concurrent - usage.in_use) / concurrent
    talk_cap = profile.talk_minutes_per_day
    if talk_cap is not None:
        cap = talk_cap * 60.0
        if usage.talk_seconds_today >= cap:
            return -1.0
        bound = min(bound, (cap - usage.talk_seconds_today) / cap)
    distinct = profile.distinct_callees_per_day
    if distinct:
        bound = min(bound, max(0.0, (distinct - len(usage.callees_today)) / distinct))
    starts = usage.call_starts
    if not starts:
        return bound
    upto = starts.bisect_right(now)
    for window, limit in ((60.0, profile.calls_per_minute), (3600.0, profile.calls_per_hour)):
        if limit is not None:
            used = upto - starts.bisect_right(now - window)
            if used >= limit:
                return -1.0
            bound = min(bound, (limit - used) / limit)
    daily = profile.calls_per_day
    if daily is not None:
        day_start, _ = day_bounds(now, card.timezone)
        used = upto - starts.bisect_left(day_start)
        if used >= daily:
            return -1.0
        bound = min(bound, (daily - used) / daily)
    return bound


def ranked_lazily(
    cards: Sequence[CardSnapshot],
    ctx: CallContext,
    now: float,
    evaluations: dict[str, Headroom | Exhausted],
) -> Iterator[CardSnapshot]:
    """Cards with headroom in exact (-score, priority, id) order, evaluated only as needed.

    Cards are taken in best-bound-first order; a card is yielded once no
    card still unevaluated can outrank it (its bound key is not better).
    Every evaluation is recorded in `evaluations`; when the iterator is
    exhausted every card has been evaluated (for Retry-After).
    """
    pending = sorted(
        ((-headroom_bound(c, now), c.priority, c.card_id, c) for c in cards),
        key=lambda item: item[:3],
    )
    ready: list[tuple[float, int, str, CardSnapshot]] = []
    i = 0
    while True:
        while i < len(pending) and (not ready or pending[i][:3] < ready[0][:3]):
            _, priority, card_id, card = pending[i]
            i += 1
            result = evaluate_card(card, now, ctx.destination)
            evaluations[card_id] = result
            if isinstance(result, Headroom):
                heapq.heappush(ready, (-result.score, priority, card_id, card))
        if not ready:
            return
        yield heapq.heappop(ready)[3]


def _emergency_order(cards: Sequence[CardSnapshot], ctx: CallContext) -> list[CardSnapshot]:
    def key(card: CardSnapshot) -> tuple[int, int, int, int, str]:
        # A card that cannot reach its trunk (carrier down, resting) only as a last resort.
        unreachable = int(card.unavailable is not None)
        limit = card.effective_profile.concurrent
        busy = int(limit is not None and card.usage.in_use >= limit)
        pref = 0 if card.card_id == ctx.bound_card else 1 if card.card_id == ctx.last_card else 2
        return unreachable, busy, pref, card.priority, card.card_id

    return sorted((c for c in cards if c.state in USABLE_STATES), key=key)


@dataclass(frozen=True, slots=True)
class CardSelection:
    """Pick and reserve a card; allow with its id, or 503 no-card-available."""

    source: CardSource
    sticky_min_headroom: float = 0.0
    default_retry_after: int = 60
    name: str = "cards"
    bypassed_by_emergency: bool = False

    def __call__(self, ctx: CallContext, now: datetime) -> Decision:
        """Allow on the reserved card, or reject with when the earliest card frees.

        The one card picker, for the first card of a call and for failover
        (``ctx.exclude`` then names the cards tried or sharing the failure).
        A bound agent stays on its card: when the card is usable but cannot
        take the call now (a limit, a rest, its carrier down) the answer is
        503 with that card's cause and Retry-After, unless ``ctx.spill``; only
        when the bound card is out of service (suspended, suspect, appealing,
        retired) is another card of the pool chosen (the caller re-binds).
        """
        t = epoch(now)
        ids = [cid for cid in self.source.candidate_ids(ctx, t) if cid not in ctx.exclude]
        if ctx.emergency:
            return self._emergency(ctx, t, self.source.snapshots(ids, t))
        evaluations: dict[str, Headroom | Exhausted] = {}
        zones: dict[str, str] = {}
        members = set(ids)
        lost_race = False
        bound = ctx.bound_card if ctx.bound_card in members else None
        if bound is not None:
            for card in self.source.snapshots([bound], t):
                zones[card.card_id] = card.timezone
                result = evaluate_card(card, t, ctx.destination)
                evaluations[card.card_id] = result
                if isinstance(result, Headroom):
                    if self.source.reserve(card.card_id, ctx, t, emergency=False):
                        return Decision.allow(
                            self.name, card.card_id, f"bound card, headroom {result.score:.2f}"
                        )
                    lost_race = True
                if card.state in USABLE_STATES and not ctx.spill:
                    # The agent waits for its own card (carriers read switching as abuse).
                    return self._no_card(evaluations, zones, 1, t, lost_race, bound=bound)
        # Stickiness: the card used last, when it still has the headroom asked for.
        last = ctx.last_card if ctx.last_card in members and ctx.last_card != bound else None
        if last is not None:
            for card in self.source.snapshots([last], t):
                zones[card.card_id] = card.timezone
                result = evaluate_card(card, t, ctx.destination)
                evaluations[card.card_id] = result
                if not isinstance(result, Headroom) or result.score < self.sticky_min_headroom:
                    continue
                if self.source.reserve(card.card_id, ctx, t, emergency=False):
                    return Decision.allow(self.name, card.card_id, f"headroom {result.score:.2f}")
                lost_race = True
        rest = [cid for cid in ids if cid not in evaluations]
        cards = list(self.source.snapshots(rest, t)) if rest else []
        zones.update((c.card_id, c.timezone) for c in cards)
        for card in ranked_lazily(cards, ctx, t, evaluations):
            if self.source.reserve(card.card_id, ctx, t, emergency=False):
                result = evaluations[card.card_id]
                score = result.score if isinstance(result, Headroom) else 0.0
                why = "re-bound" if bound is not None else "headroom"
                return Decision.allow(self.name, card.card_id, f"{why} {score:.2f}")
            lost_race = True
        return self._no_card(evaluations, zones, len(ids), t, lost_race)

    def _emergency(self, ctx: CallContext, t: float, cards: Sequence[CardSnapshot]) -> Decision:
        for card in _emergency_order(cards, ctx):
            if self.source.reserve(card.card_id, ctx, t, emergency=True):
                return Decision.allow(self.name, card.card_id, "emergency: quotas bypassed")
        return Decision.reject(
            RejectReason.NO_CARD_AVAILABLE,
            self.name,
            "emergency call: no usable card",
            retry_after=self.default_retry_after,
        )

    def _no_card(
        self,
        evaluations: dict[str, Headroom | Exhausted],
        zones: dict[str, str],
        count: int,
        t: float,
        lost_race: bool,
        *,
        bound: str | None = None,
    ) -> Decision:
        """503 no-card-available: Retry-After and, per card, why it cannot take the call.

        ``detail`` reads like ``c1 night_window until 08:00; c2 calls_per_hour
        60/60 in 3600s until 14:05`` (times in each card's carrier zone): the
        gateway puts it in a ``Warning`` header, its log line and the CDR.
        """
        frees = [
            e.frees_at
            for e in evaluations.values()
            if isinstance(e, Exhausted) and e.frees_at is not None
        ]
        # A card that is only busy frees when its call ends, at a time nobody knows:
        # the default wait, not the hours until a daily limit on another card resets.
        busy = any(
            isinstance(e, Exhausted) and e.limit is QuotaLimit.CONCURRENT
            for e in evaluations.values()
        )
        if lost_race:
            retry = 1
        elif frees:
            retry = max(1, ceil_seconds(min(frees) - t))
            if busy:
                retry = min(retry, self.default_retry_after)
        else:
            retry = self.default_retry_after
        causes = [
            explain(card_id, e, zones.get(card_id, "UTC"), t)
            for card_id, e in evaluations.items()
            if isinstance(e, Exhausted)
        ]
        if causes:
            detail = "; ".join(causes)
        elif lost_race:
            detail = "cards taken by concurrent calls"
        else:
            detail = "no cards in pool" if count == 0 else "no card chosen"
        if bound is not None:
            detail = f"bound card {detail}"
        return Decision.reject(RejectReason.NO_CARD_AVAILABLE, self.name, detail, retry_after=retry)


def explain(card_id: str, result: Exhausted, tz_name: str, now: float) -> str:
    """One card's cause in words: ``c1 night_window until 08:00`` (local time of ``tz_name``)."""
    detail = result.detail
    if result.limit is QuotaLimit.STATE:
        text = f"{card_id} {detail.removeprefix('card is ')}"
    elif result.limit is QuotaLimit.NIGHT_WINDOW:
        text = f"{card_id} night_window"
    elif detail:
        text = f"{card_id} {result.limit} {detail}"
    else:
        text = f"{card_id} {result.limit}"
    if result.frees_at is not None:
        local = as_utc(result.frees_at).astimezone(zone(tz_name))
        here = as_utc(now).astimezone(zone(tz_name))
        stamp = (
            local.strftime("%H:%M")
            if local.date() == here.date()
            else local.strftime("%Y-%m-%d %H:%M")
        )
        text += f" until {stamp}"
    return text

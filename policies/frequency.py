"""Per-destination frequency cap, across all cards and agents.

Rules such as "at most 3 attempts in 7 days" and "at most 1 answered call
per day" are rolling windows over the destination's history (attempt and
answer timestamps, epoch seconds), read through the `DestinationHistory`
protocol that the gateway's store implements. A rejection carries
Retry-After = when the oldest counted event falls out of the window so that
the count drops below the cap (the latest such time over all broken rules).

Failure mode: fails closed — a history that raises `StoreUnavailableError`
makes the pipeline answer 503 store-unavailable. This module must never read
a clock or log an unmasked number.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol, runtime_checkable

from policies.context import CallContext
from policies.decision import Decision, RejectReason
from policies.timeutil import ceil_seconds, epoch

__all__ = ["DestinationHistory", "FrequencyCap", "FrequencyPolicy", "FrequencyRule", "HistoryKind"]


class HistoryKind(StrEnum):
    """Which events of a destination a rule counts."""

    ATTEMPTS = "attempts"
    ANSWERS = "answers"


@runtime_checkable
class DestinationHistory(Protocol):
    """Call history of one destination, all cards and agents; the store implements it."""

    def attempts(self, e164: str, since: float) -> Sequence[float]:
        """Start times (epoch s, ascending) of attempts to `e164` at or after `since`."""
        ...

    def answers(self, e164: str, since: float) -> Sequence[float]:
        """Answer times (epoch s, ascending) of answered calls to `e164` at or after `since`."""
        ...


@dataclass(frozen=True, slots=True)
class FrequencyRule:
    """At most `max_count` events of `kind` within `window_seconds` (rolling)."""

    kind: HistoryKind
    max_count: int
    window_seconds: float

    def __post_init__(self) -> None:
        if self.max_count < 0 or self.window_seconds <= 0:
            raise ValueError("max_count must be >= 0 and window_seconds > 0")

    def frees_at(self, events: Sequence[float], now: float) -> float | None:
        """None if one more event fits; else when enough old events leave the window."""
        lo = bisect_right(events, now - self.window_seconds)
        hi = bisect_right(events, now)
        used = hi - lo
        if used < self.max_count:
            return None
        if self.max_count == 0:
            return float("inf")
        return events[lo + used - self.max_count] + self.window_seconds


@dataclass(frozen=True, slots=True)
class FrequencyCap:
    """The set of rules in force (e.g. 3 attempts / 7 days and 1 answer / day)."""

    rules: tuple[FrequencyRule, ...] = (
        FrequencyRule(HistoryKind.ATTEMPTS, 3, 7 * 86400.0),
        FrequencyRule(HistoryKind.ANSWERS, 1, 86400.0),
    )

    @classmethod
    def of(
        cls, attempts: int, attempts_window: float, answers: int, answers_window: float
    ) -> FrequencyCap:
        """`attempts` per `attempts_window` s and `answers` per `answers_window` s."""
        return cls(
            (
                FrequencyRule(HistoryKind.ATTEMPTS, attempts, attempts_window),
                FrequencyRule(HistoryKind.ANSWERS, answers, answers_window),
            )
        )

    def next_allowed(self, history: DestinationHistory, e164: str, now: float) -> float | None:
        """When one more call to `e164` fits every rule: None = now, inf = never."""
        latest: float | None = None
        for rule in self.rules:
            since = now - rule.window_seconds
            if rule.kind == HistoryKind.ATTEMPTS:
                events = history.attempts(e164, since)
            else:
                events = history.answers(e164, since)
            frees = rule.frees_at(events, now)
            if frees is not None and (latest is None or frees > latest):
                latest = frees
        return latest


@dataclass(frozen=True, slots=True)
class FrequencyPolicy:
    """Reject `frequency-cap` (403 + Retry-After) when a rule would be broken."""

    history: DestinationHistory
    cap: FrequencyCap = FrequencyCap()
    name: str = "frequency"
    bypassed_by_emergency: bool = True
    #: A campaign's own rules instead of `cap` (the history counted is still every call's).
    per_campaign: Mapping[str, FrequencyCap] = field(default_factory=dict)

    def cap_for(self, campaign: str | None) -> FrequencyCap:
        """The rules in force for a campaign."""
        if campaign:
            return self.per_campaign.get(campaign, self.cap)
        return self.cap

    def __call__(self, ctx: CallContext, now: datetime) -> Decision | None:
        """No opinion while every rule has room; else 403 with when all rules have room again."""
        t = epoch(now)
        broken: list[tuple[float, FrequencyRule]] = []
        for rule in self.cap_for(ctx.campaign).rules:
            since = t - rule.window_seconds
            if rule.kind == HistoryKind.ATTEMPTS:
                events = self.history.attempts(ctx.destination, since)
            else:
                events = self.history.answers(ctx.destination, since)
            frees = rule.frees_at(events, t)
            if frees is not None:
                broken.append((frees, rule))
        if not broken:
            return None
        frees, rule = max(broken, key=lambda b: b[0])
        detail = f"max {rule.max_count} {rule.kind} in {int(rule.window_seconds)}s"
        if frees == float("inf"):
            return Decision.reject(RejectReason.FREQUENCY_CAP, self.name, detail)
        return Decision.reject(
            RejectReason.FREQUENCY_CAP, self.name, detail, retry_after=ceil_seconds(frees - t)
        )

"""Agent limits: paused agents, calls per hour/day, complaint-rate ceiling.

An agent (softphone user or dialer peer) over its limits is refused with
403 `agent-limit`. The complaint rate is complaints / calls over
`complaint_window_seconds`, judged only once `complaint_min_sample` calls
exist in that window. Usage comes in as an `AgentUsage` snapshot through the
`AgentUsageView` protocol the gateway's store implements.

Failure mode: fails closed — a view raising `StoreUnavailableError` makes
the pipeline answer 503 store-unavailable. This module must never read a
clock.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

from policies.context import CallContext
from policies.decision import Decision, RejectReason
from policies.quotas import StartTimes
from policies.timeutil import ceil_seconds, epoch

__all__ = ["AgentLimits", "AgentLimitsPolicy", "AgentUsage", "AgentUsageView"]


_NO_STARTS = StartTimes()


@dataclass(frozen=True, slots=True)
class AgentUsage:
    """One agent's recent activity (epoch seconds, ascending) and pause flag.

    `call_starts` must cover the longest window in force (a day by default): a
    `policies.quotas.StartTimes` (the store hands out a window of its list, which
    costs nothing to take); `complaints` are times of complaints against calls this
    agent made.
    """

    call_starts: StartTimes = _NO_STARTS
    complaints: tuple[float, ...] = ()
    paused: bool = False
    pause_reason: str = ""
    #: When a pause ends by itself (epoch s; a complaint ceiling's window), None: at resume.
    paused_until: float | None = None


@runtime_checkable
class AgentUsageView(Protocol):
    """What the agent policy reads; the gateway's store implements it."""

    def agent_usage(self, agent: str, now: float, *, window: float = 7 * 86400.0) -> AgentUsage:
        """Activity of `agent` over the `window` seconds before `now`, and its pause flag.

        `window` is the longest window the caller will judge (0: only the pause
        flag is needed, call starts and complaints may be left empty). Raises
        `StoreUnavailableError` when it cannot tell.
        """
        ...


@dataclass(frozen=True, slots=True)
class AgentLimits:
    """Per-agent ceilings; None disables a limit."""

    calls_per_hour: int | None = None
    calls_per_day: int | None = None
    complaint_rate_ceiling: float | None = None
    complaint_window_seconds: float = 7 * 86400.0
    complaint_min_sample: int = 50

    @property
    def window(self) -> float:
        """The longest window these limits judge, in seconds (0.0 when none is set)."""
        longest = 0.0
        if self.calls_per_hour is not None:
            longest = 3600.0
        if self.calls_per_day is not None:
            longest = 86400.0
        if self.complaint_rate_ceiling is not None:
            longest = max(longest, self.complaint_window_seconds)
        return longest


def _count(times: Sequence[float], since: float, now: float) -> int:
    return bisect_right(times, now) - bisect_right(times, since)


@dataclass(frozen=True, slots=True)
class AgentLimitsPolicy:
    """Reject `agent-limit` (403) for paused agents or agents over their limits.

    `per_agent` overrides `limits` for named agents.
    """

    usage: AgentUsageView
    limits: AgentLimits = AgentLimits()
    per_agent: Mapping[str, AgentLimits] = field(default_factory=dict)
    name: str = "agent"
    bypassed_by_emergency: bool = True

    def __call__(self, ctx: CallContext, now: datetime) -> Decision | None:
        """No opinion within limits; else 403 agent-limit with the limit in `detail`."""
        t = epoch(now)
        limits = self.per_agent.get(ctx.agent, self.limits)
        # Only the history the limits in force judge: none at all when only a
        # pause can refuse the agent (the store then reads one flag per call).
        usage = self.usage.agent_usage(ctx.agent, t, window=limits.window)
        if usage.paused and (usage.paused_until is None or usage.paused_until > t):
            # A pause with an end (a complaint ceiling's window) says when to come back;
            # one that waits for `dialgate agents resume` has no Retry-After.
            return Decision.reject(
                RejectReason.AGENT_LIMIT,
                self.name,
                f"agent paused {usage.pause_reason}".strip(),
                retry_after=None
                if usage.paused_until is None
                else ceil_seconds(usage.paused_until - t),
            )
        for limit, window, label in (
            (limits.calls_per_hour, 3600.0, "calls per hour"),
            (limits.calls_per_day, 86400.0, "calls per day"),
        ):
            if limit is not None:
                lo = usage.call_starts.bisect_right(t - window)
                used = usage.call_starts.bisect_right(t) - lo
                if used >= limit:
                    # Room again when the oldest call that keeps the count at the limit
                    # leaves the rolling window.
                    frees = usage.call_starts[lo + used - limit] + window if limit > 0 else None
                    return Decision.reject(
                        RejectReason.AGENT_LIMIT,
                        self.name,
                        f"{used}/{limit} {label}",
                        retry_after=None if frees is None else ceil_seconds(frees - t),
                    )
        if limits.complaint_rate_ceiling is not None:
            since = t - limits.complaint_window_seconds
            calls = usage.call_starts.between(since, t)
            complaints = _count(usage.complaints, since, t)
            if calls >= limits.complaint_min_sample and calls > 0:
                rate = complaints / calls
                if rate > limits.complaint_rate_ceiling:
                    return Decision.reject(
                        RejectReason.AGENT_LIMIT,
                        self.name,
                        f"complaint rate {rate:.3f} > {limits.complaint_rate_ceiling}",
                    )
        return None

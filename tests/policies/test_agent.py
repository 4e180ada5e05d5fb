"""Tests for agent limits: pause, hourly/daily calls, complaint-rate ceiling."""

from __future__ import annotations

from policies.agent import AgentLimits, AgentLimitsPolicy, AgentUsage
from policies.decision import RejectReason
from policies.memory import InMemoryAgents
from tests.policies.helpers import ctx, ts, utc

NOW = utc(2026, 6, 1, 12, 0)
T = NOW.timestamp()


def test_paused_agent_is_refused() -> None:
    """A paused agent gets 403 agent-limit until resumed."""
    agents = InMemoryAgents()
    agents.pause("alice", "coaching")
    policy = AgentLimitsPolicy(agents)
    decision = policy(ctx("13812345678", agent="alice"), NOW)
    assert decision is not None
    assert (403, RejectReason.AGENT_LIMIT, "agent paused coaching") == (
        decision.sip_code,
        decision.reason,
        decision.detail,
    )
    agents.resume("alice")
    assert policy(ctx("13812345678", agent="alice"), NOW) is None


def test_calls_per_hour_rolling() -> None:
    """The hourly limit counts calls of the last 3600 s only."""
    agents = InMemoryAgents()
    for i in range(3):
        agents.record_call("alice", T - 3000 + i * 60)
    agents.record_call("alice", T - 4000)
    policy = AgentLimitsPolicy(agents, AgentLimits(calls_per_hour=3))
    decision = policy(ctx("13812345678"), NOW)
    assert decision is not None
    assert "3/3 calls per hour" == decision.detail
    later = utc(2026, 6, 1, 12, 11)
    assert policy(ctx("13812345678"), later) is None


def test_calls_per_day() -> None:
    """The daily limit counts the last 24 h."""
    agents = InMemoryAgents()
    for hour in range(5):
        agents.record_call("alice", ts(2026, 6, 1, hour))
    policy = AgentLimitsPolicy(agents, AgentLimits(calls_per_day=5))
    assert policy(ctx("13812345678"), NOW) is not None
    assert policy(ctx("13812345678"), utc(2026, 6, 2, 0, 0, 1)) is None


def test_complaint_rate_after_min_sample() -> None:
    """The complaint rate is judged only once enough calls exist."""
    agents = InMemoryAgents()
    limits = AgentLimits(complaint_rate_ceiling=0.05, complaint_min_sample=20)
    policy = AgentLimitsPolicy(agents, limits)
    for i in range(10):
        agents.record_call("alice", T - 1000 + i)
    agents.record_complaint("alice", T - 500)
    assert policy(ctx("13812345678"), NOW) is None  # 10 calls < min sample
    for i in range(10):
        agents.record_call("alice", T - 900 + i)
    decision = policy(ctx("13812345678"), NOW)  # 1/20 = 0.05, not above
    assert decision is None
    agents.record_complaint("alice", T - 400)
    decision = policy(ctx("13812345678"), NOW)  # 2/20 = 0.10
    assert decision is not None
    assert decision.detail.startswith("complaint rate 0.100")


def test_per_agent_override_and_other_agents() -> None:
    """Per-agent limits replace the defaults; other agents' calls never count."""
    agents = InMemoryAgents()
    agents.record_call("bob", T - 10)
    policy = AgentLimitsPolicy(
        agents, AgentLimits(calls_per_hour=100), per_agent={"bob": AgentLimits(calls_per_hour=1)}
    )
    assert policy(ctx("13812345678", agent="alice"), NOW) is None
    assert policy(ctx("13812345678", agent="bob"), NOW) is not None


def test_daily_cap_and_timed_pause_carry_retry_after() -> None:
    """calls_per_day: Retry-After = when the oldest counted call is a day old; a pause with
    an end (a complaint ceiling's window) says when it ends and lapses by itself."""
    agents = InMemoryAgents()
    for i in range(2):
        agents.record_call("alice", T - 3600 * (5 - i))
    decision = AgentLimitsPolicy(agents, AgentLimits(calls_per_day=2))(ctx("13812345678"), NOW)
    assert decision is not None
    assert ("2/2 calls per day", 86400 - 5 * 3600) == (decision.detail, decision.retry_after)

    class Paused:
        def agent_usage(self, agent: str, now: float, *, window: float = 0.0) -> AgentUsage:
            return AgentUsage(paused=True, pause_reason="ceiling", paused_until=T + 600)

    policy = AgentLimitsPolicy(Paused())
    decision = policy(ctx("13812345678"), NOW)
    assert decision is not None
    assert (RejectReason.AGENT_LIMIT, 600) == (decision.reason, decision.retry_after)
    assert policy(ctx("13812345678"), utc(2026, 6, 1, 12, 10, 1)) is None

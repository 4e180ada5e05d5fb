"""``gateway.policy_config``: [policy] settings → the policies' values (issue 13 items 2, 4)."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.config import Settings
from gateway.policy_config import agent_limits, destination_policy, frequency_cap
from policies.decision import RejectReason
from policies.frequency import FrequencyRule, HistoryKind
from tests.policies.helpers import ctx

NOW = datetime(2026, 6, 1, 4, 0, tzinfo=UTC)


def test_allowed_regions_default_is_the_default_region() -> None:
    """Without allowed_regions only CN callees pass; with ["CN", "US"] a US number passes
    and a UK number stays destination-blocked."""
    policy = destination_policy(Settings(policy={"consent": "dnc-only"}).policy)
    decision = policy(ctx("+12125550123"), NOW)
    assert decision is not None and RejectReason.DESTINATION_BLOCKED == decision.reason
    assert policy(ctx("13812345678"), NOW) is None
    wide = destination_policy(
        Settings(policy={"consent": "dnc-only", "allowed_regions": ["cn", "US"]}).policy
    )
    assert wide(ctx("+12125550123"), NOW) is None
    blocked = wide(ctx("+442079460000"), NOW)
    assert blocked is not None and "international destination (GB)" == blocked.detail


def test_frequency_and_agent_settings() -> None:
    """Defaults stay 3 attempts / 7 days and 1 answer / day; durations read 7d/24h/seconds;
    a campaign overrides only what it sets."""
    default = Settings(policy={"consent": "dnc-only"}).policy
    assert (
        FrequencyRule(HistoryKind.ATTEMPTS, 3, 7 * 86400.0),
        FrequencyRule(HistoryKind.ANSWERS, 1, 86400.0),
    ) == frequency_cap(default).rules
    policy = Settings(
        policy={
            "consent": "dnc-only",
            "frequency": {
                "attempts": 4,
                "attempts_window": "2d",
                "answers_window": "12h",
                "campaigns": {"gentle": {"attempts": 1}},
            },
            "agents": {"calls_per_day": 300, "complaints_per_week": 2},
        }
    ).policy
    assert (
        FrequencyRule(HistoryKind.ATTEMPTS, 4, 2 * 86400.0),
        FrequencyRule(HistoryKind.ANSWERS, 1, 43200.0),
    ) == frequency_cap(policy).rules
    assert (
        FrequencyRule(HistoryKind.ATTEMPTS, 1, 2 * 86400.0),
        FrequencyRule(HistoryKind.ANSWERS, 1, 43200.0),
    ) == frequency_cap(policy, "gentle").rules
    assert 300 == agent_limits(policy).calls_per_day

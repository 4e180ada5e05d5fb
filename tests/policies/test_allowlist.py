"""Tests for the destination allow-list: prefixes, premium-rate, international."""

from __future__ import annotations

from policies.allowlist import DestinationPolicy
from policies.decision import RejectReason
from tests.policies.helpers import ctx, utc

NOW = utc(2026, 6, 1, 4, 0)


def test_domestic_mobile_passes_by_default() -> None:
    """A domestic mobile number has no objection."""
    assert DestinationPolicy()(ctx("13812345678"), NOW) is None


def test_international_blocked_unless_configured() -> None:
    """A number outside the home regions is destination-blocked unless allowed."""
    decision = DestinationPolicy()(ctx("+4930123456"), NOW)
    assert decision is not None
    assert (403, RejectReason.DESTINATION_BLOCKED) == (decision.sip_code, decision.reason)
    assert "international" in decision.detail
    assert DestinationPolicy(allow_international=True)(ctx("+4930123456"), NOW) is None


def test_home_regions_include_carrier_countries() -> None:
    """A carrier's country counts as home even when it is not the default region."""
    policy = DestinationPolicy(home_regions=frozenset({"DE"}))
    assert policy(ctx("+4930123456"), NOW) is None


def test_premium_rate_blocked_unless_configured() -> None:
    """A US 900 premium-rate number is blocked; allow_premium lets it through."""
    context = ctx("+19005551234", region="US")
    decision = DestinationPolicy()(context, NOW)
    assert decision is not None
    assert "premium-rate" == decision.detail.split(" ")[0]
    assert DestinationPolicy(allow_premium=True)(context, NOW) is None


def test_shared_cost_blocked() -> None:
    """A shared-cost number (China 400) is blocked like premium rate."""
    context = ctx("4001234567")
    decision = DestinationPolicy()(context, NOW)
    assert decision is not None
    assert decision.detail.startswith("shared-cost")


def test_allowed_prefixes_restrict() -> None:
    """With an allow-list, only numbers under its prefixes pass."""
    policy = DestinationPolicy(allowed_prefixes=("+86138",))
    assert policy(ctx("13812345678"), NOW) is None
    decision = policy(ctx("13912345678"), NOW)
    assert decision is not None
    assert RejectReason.DESTINATION_BLOCKED == decision.reason


def test_blocked_prefix_wins_over_allowed() -> None:
    """A blocked prefix rejects even inside an allowed prefix."""
    policy = DestinationPolicy(allowed_prefixes=("+86",), blocked_prefixes=("+86139",))
    decision = policy(ctx("13912345678"), NOW)
    assert decision is not None
    assert "prefix +86139 is blocked" == decision.detail

"""The ``[policy]`` settings turned into the policies' own values (one place for the gateway,
the operator's ``numbers show`` and the tests).

What it is for: ``[policy.frequency]`` → :class:`policies.frequency.FrequencyCap` (and one
per campaign), ``[policy.agents]`` → :class:`policies.agent.AgentLimits`, the emergency
numbers (official ones plus ``[[policy.extra_emergency]]``), the destination allow-list
(``allowed_regions``, default the default region alone) and the consent mode.

What it must never do: read a clock, touch the store, or invent a consent mode for a file
that did not choose one (``load_settings`` refuses such a file; only a ``Settings`` built in
code without ``[policy] consent`` gets ``dnc-only``, as before).
"""

from __future__ import annotations

from typing import Any

from gateway.config import PolicySettings
from policies.agent import AgentLimits
from policies.allowlist import DestinationPolicy
from policies.consent import ConsentMode
from policies.emergency import EmergencyNumbers
from policies.frequency import FrequencyCap
from policies.hours import CallingHours

__all__ = [
    "agent_limits",
    "campaign_frequency",
    "consent_mode",
    "destination_policy",
    "emergency_numbers",
    "frequency_cap",
    "policy_deps_kwargs",
]


def frequency_cap(policy: PolicySettings, campaign: str | None = None) -> FrequencyCap:
    """The per-number rules in force for ``campaign`` (None: the ``[policy.frequency]`` ones)."""
    return FrequencyCap.of(*policy.frequency.for_campaign(campaign))


def campaign_frequency(policy: PolicySettings) -> dict[str, FrequencyCap]:
    """``[policy.frequency.campaigns.NAME]`` → that campaign's rules."""
    return {name: frequency_cap(policy, name) for name in policy.frequency.campaigns}


def agent_limits(policy: PolicySettings) -> AgentLimits:
    """The call caps of ``[policy.agents]`` (complaint ceilings pause agents: the operator)."""
    return AgentLimits(
        calls_per_hour=policy.agents.calls_per_hour,
        calls_per_day=policy.agents.calls_per_day,
    )


def emergency_numbers(policy: PolicySettings) -> EmergencyNumbers:
    """Emergency numbers of the default region and every region named in the settings."""
    extra = policy.emergency_extra()
    return EmergencyNumbers.for_regions({policy.default_region, *extra}, extra)


def destination_policy(policy: PolicySettings) -> DestinationPolicy:
    """Callees only in ``allowed_regions`` (default: the default region)."""
    return DestinationPolicy(home_regions=policy.home_regions)


def consent_mode(policy: PolicySettings) -> ConsentMode:
    """The consent mode; ``dnc-only`` only for settings built in code without one."""
    return ConsentMode(str(policy.consent or "dnc-only"))


def policy_deps_kwargs(policy: PolicySettings) -> dict[str, Any]:
    """The settings-derived keyword arguments of :class:`policies.pipeline.PolicyDeps`."""
    return {
        "emergency": emergency_numbers(policy),
        "destination": destination_policy(policy),
        "consent_mode": consent_mode(policy),
        "hours": CallingHours.from_config(policy.calling_hours.spec),
        "frequency": frequency_cap(policy),
        "campaign_frequency": campaign_frequency(policy),
        "agent_limits": agent_limits(policy),
    }

"""The policy pipeline: a plain loop in DESIGN order, first reject wins.

Order (DESIGN.md call flow step 3): emergency bypass → destination
allow-list → DNC → consent → calling hours → per-destination frequency →
agent limits → card selection with quota reservation. An emergency bypass
decision makes the loop skip every later policy with
`bypassed_by_emergency`; card selection still runs (a call needs a line)
but ignores quotas.

Policies are picked by name from a registry (`POLICY_FACTORIES`), so the
config lists them as strings. A policy raising `StoreUnavailableError` makes
the pipeline fail closed with 503 `store-unavailable` + Retry-After.

This module must never read a clock: `decide(ctx)` uses `ctx.now`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, TypeVar, runtime_checkable

from policies.agent import AgentLimits, AgentLimitsPolicy, AgentUsageView
from policies.allowlist import DestinationPolicy
from policies.consent import ConsentLookup, ConsentMode, ConsentPolicy
from policies.context import CallContext
from policies.decision import Decision, RejectReason
from policies.dnc import DncLookup, DncPolicy
from policies.emergency import EmergencyBypass, EmergencyNumbers
from policies.errors import StoreUnavailableError
from policies.frequency import DestinationHistory, FrequencyCap, FrequencyPolicy
from policies.hours import CallingHours, CallingHoursPolicy
from policies.selection import CardSelection, CardSource

__all__ = [
    "CHECK_ORDER",
    "DEFAULT_ORDER",
    "POLICY_FACTORIES",
    "Pipeline",
    "Policy",
    "PolicyDeps",
    "build_pipeline",
    "register_policy",
]

_T = TypeVar("_T")

DEFAULT_ORDER: tuple[str, ...] = (
    "emergency",
    "destination",
    "dnc",
    "consent",
    "hours",
    "frequency",
    "agent",
    "cards",
)

#: The steps that only read (lead scrubbing, ``Pipeline.check``): they judge the
#: number, never reserve a quota or write anything. Agent limits and card selection
#: judge the call's agent and lines, not the number, and are left out.
CHECK_ORDER: tuple[str, ...] = ("emergency", "destination", "dnc", "consent", "hours", "frequency")


@runtime_checkable
class Policy(Protocol):
    """One step: `(ctx, now) -> Decision | None` (None = no objection)."""

    @property
    def name(self) -> str:
        """Name in the registry, events and `Decision.policy`."""
        ...

    @property
    def bypassed_by_emergency(self) -> bool:
        """Whether an emergency bypass skips this step."""
        ...

    def __call__(self, ctx: CallContext, now: datetime) -> Decision | None:
        """Decide for one attempt at `now`."""
        ...


@dataclass(frozen=True, slots=True)
class Pipeline:
    """Run policies in order; first reject wins; the card step's allow is the outcome."""

    policies: tuple[Policy, ...]
    store_retry_after: int = 30

    @property
    def names(self) -> tuple[str, ...]:
        """Policy names in evaluation order."""
        return tuple(p.name for p in self.policies)

    def decide(self, ctx: CallContext, now: datetime | None = None) -> Decision:
        """The decision for one attempt, at `now` (default `ctx.now`)."""
        moment = ctx.now if now is None else now
        bypass = False
        final: Decision | None = None
        for policy in self.policies:
            if bypass and policy.bypassed_by_emergency:
                continue
            try:
                result = policy(ctx, moment)
            except StoreUnavailableError as exc:
                return Decision.reject(
                    RejectReason.STORE_UNAVAILABLE,
                    policy.name,
                    f"store unavailable: {exc}",
                    retry_after=self.store_retry_after,
                )
            if result is None:
                continue
            if not result.allowed:
                return result
            if result.bypass:
                bypass = True
                continue
            final = result
        if final is not None:
            return final
        return Decision.allow("pipeline", None, "emergency bypass" if bypass else "")

    def checking(self) -> Pipeline:
        """This pipeline without the steps that reserve or judge the caller (`CHECK_ORDER` only)."""
        kept = tuple(p for p in self.policies if p.name in CHECK_ORDER)
        return Pipeline(kept, self.store_retry_after)

    def check(self, ctx: CallContext, now: datetime | None = None) -> Decision:
        """What `decide` would answer for the number, without reserving anything.

        Runs the same policy objects as `decide`, in the same order, minus the
        agent and card steps: an allow means "callable now as far as the number
        goes"; a reject carries the same reason, SIP code and Retry-After.
        """
        return self.checking().decide(ctx, now)


@dataclass(frozen=True, slots=True)
class PolicyDeps:
    """Configuration and stores the registered factories build policies from."""

    emergency: EmergencyNumbers = field(default_factory=lambda: EmergencyNumbers(frozenset()))
    destination: DestinationPolicy = field(default_factory=DestinationPolicy)
    dnc: DncLookup | None = None
    consent: ConsentLookup | None = None
    consent_mode: ConsentMode = ConsentMode.DNC_ONLY
    hours: CallingHours = field(default_factory=CallingHours)
    history: DestinationHistory | None = None
    frequency: FrequencyCap = field(default_factory=FrequencyCap)
    campaign_frequency: Mapping[str, FrequencyCap] = field(default_factory=dict)
    agents: AgentUsageView | None = None
    agent_limits: AgentLimits = field(default_factory=AgentLimits)
    cards: CardSource | None = None
    sticky_min_headroom: float = 0.0
    no_card_retry_after: int = 60


PolicyFactory = Callable[[PolicyDeps], Policy]
POLICY_FACTORIES: dict[str, PolicyFactory] = {}


def register_policy(name: str) -> Callable[[PolicyFactory], PolicyFactory]:
    """Decorator registering a factory under a config name (names are unique)."""

    def wrap(factory: PolicyFactory) -> PolicyFactory:
        if name in POLICY_FACTORIES:
            raise ValueError(f"policy {name!r} is already registered")
        POLICY_FACTORIES[name] = factory
        return factory

    return wrap


def _need(value: _T | None, what: str) -> _T:
    if value is None:
        raise ValueError(f"policy needs {what}")
    return value


@register_policy("emergency")
def _emergency(deps: PolicyDeps) -> Policy:
    return EmergencyBypass(deps.emergency)


@register_policy("destination")
def _destination(deps: PolicyDeps) -> Policy:
    return deps.destination


@register_policy("dnc")
def _dnc(deps: PolicyDeps) -> Policy:
    return DncPolicy(_need(deps.dnc, "a DNC lookup"))


@register_policy("consent")
def _consent(deps: PolicyDeps) -> Policy:
    return ConsentPolicy(_need(deps.consent, "a consent lookup"), deps.consent_mode)


@register_policy("hours")
def _hours(deps: PolicyDeps) -> Policy:
    return CallingHoursPolicy(deps.hours)


@register_policy("frequency")
def _frequency(deps: PolicyDeps) -> Policy:
    return FrequencyPolicy(
        _need(deps.history, "a destination history"),
        deps.frequency,
        per_campaign=deps.campaign_frequency,
    )


@register_policy("agent")
def _agent(deps: PolicyDeps) -> Policy:
    return AgentLimitsPolicy(_need(deps.agents, "an agent usage view"), deps.agent_limits)


@register_policy("cards")
def _cards(deps: PolicyDeps) -> Policy:
    return CardSelection(
        _need(deps.cards, "a card source"),
        deps.sticky_min_headroom,
        deps.no_card_retry_after,
    )


def _check_order(names: Sequence[str]) -> None:
    rank = {n: i for i, n in enumerate(DEFAULT_ORDER)}
    known = [n for n in names if n in rank]
    if known != sorted(known, key=rank.__getitem__):
        raise ValueError(f"policies must follow the order {', '.join(DEFAULT_ORDER)}")
    if "cards" in names and names[-1] != "cards":
        raise ValueError("'cards' (selection with reservation) must be the last policy")
    if "emergency" in names and names[0] != "emergency":
        raise ValueError("'emergency' must be the first policy")
    if len(set(names)) != len(names):
        raise ValueError("a policy is listed twice")


def build_pipeline(
    deps: PolicyDeps, names: Iterable[str] = DEFAULT_ORDER, store_retry_after: int = 30
) -> Pipeline:
    """A pipeline of the named policies (DESIGN order enforced); raises `ValueError`."""
    chosen = list(names)
    unknown = [n for n in chosen if n not in POLICY_FACTORIES]
    if unknown:
        raise ValueError(f"unknown policies: {', '.join(unknown)}")
    _check_order(chosen)
    return Pipeline(tuple(POLICY_FACTORIES[n](deps) for n in chosen), store_retry_after)

"""Tests for the pipeline: DESIGN order, first reject wins, emergency bypass, fail closed, registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import pytest

from policies.agent import AgentLimits
from policies.allowlist import DestinationPolicy
from policies.consent import ConsentMode, ConsentRecord, ConsentRegistry
from policies.context import CallContext
from policies.decision import Decision, RejectReason
from policies.dnc import DncRegistry, DncSource
from policies.emergency import EmergencyNumbers
from policies.errors import StoreUnavailableError
from policies.hours import CallingHours
from policies.memory import CardRecord, InMemoryAgents, InMemoryCardStore, InMemoryHistory
from policies.pipeline import (
    DEFAULT_ORDER,
    POLICY_FACTORIES,
    Pipeline,
    PolicyDeps,
    build_pipeline,
    register_policy,
)
from policies.quotas import QuotaProfile
from tests.policies.helpers import ctx, utc

NOW = utc(2026, 6, 1, 4, 0)  # 12:00 in Shanghai
T = NOW.timestamp()
NUMBER = "+8613812345678"


@dataclass
class Probe:
    """A policy that records calls and returns a fixed result."""

    name: str
    result: Decision | None = None
    bypassed_by_emergency: bool = True
    calls: list[str] = field(default_factory=list)

    def __call__(self, ctx: CallContext, now: datetime) -> Decision | None:
        self.calls.append(self.name)
        return self.result


def world(
    consent_mode: ConsentMode = ConsentMode.REQUIRE_CONSENT,
) -> tuple[
    PolicyDeps, DncRegistry, ConsentRegistry, InMemoryHistory, InMemoryAgents, InMemoryCardStore
]:
    """Dependencies for a full pipeline with in-memory stores and one card."""
    dnc = DncRegistry("CN")
    consent = ConsentRegistry()
    consent.grant(ConsentRecord(NUMBER, None, utc(2026, 1, 1)))
    history = InMemoryHistory()
    agents = InMemoryAgents()
    cards = InMemoryCardStore()
    cards.add_card(CardRecord("c1", QuotaProfile(calls_per_hour=10), timezone="Asia/Shanghai"))
    deps = PolicyDeps(
        emergency=EmergencyNumbers.for_regions(["CN"]),
        destination=DestinationPolicy(),
        dnc=dnc,
        consent=consent,
        consent_mode=consent_mode,
        hours=CallingHours(),
        history=history,
        agents=agents,
        agent_limits=AgentLimits(calls_per_hour=50),
        cards=cards,
    )
    return deps, dnc, consent, history, agents, cards


def test_first_reject_wins_and_stops_the_loop() -> None:
    """The loop stops at the first rejection; later policies never run."""
    a = Probe("a")
    b = Probe("b", Decision.reject(RejectReason.DNC, "b"))
    c = Probe("c", Decision.reject(RejectReason.NO_CONSENT, "c"))
    decision = Pipeline((a, b, c)).decide(ctx(NUMBER, NOW))
    assert (RejectReason.DNC, "b") == (decision.reason, decision.policy)
    assert (["a"], ["b"], []) == (a.calls, b.calls, c.calls)


def test_all_pass_without_selection_is_allow_without_card() -> None:
    """A pipeline without a card step allows with no card id."""
    decision = Pipeline((Probe("a"),)).decide(ctx(NUMBER, NOW))
    assert (True, None, "pipeline") == (decision.allowed, decision.card_id, decision.policy)


def test_store_unavailable_fails_closed() -> None:
    """A store error becomes 503 store-unavailable with Retry-After, naming the policy."""

    class Down(Probe):
        def __call__(self, ctx: CallContext, now: datetime) -> Decision | None:
            raise StoreUnavailableError("sqlite: database is locked")

    decision = Pipeline((Down("consent"),), store_retry_after=15).decide(ctx(NUMBER, NOW))
    assert (503, RejectReason.STORE_UNAVAILABLE, 15, "consent") == (
        decision.sip_code,
        decision.reason,
        decision.retry_after,
        decision.policy,
    )
    assert 'SIP;cause=503;text="store-unavailable"' == decision.reason_header


def test_full_pipeline_allows_on_card() -> None:
    """A consented, unlisted, in-hours call is allowed on the only card and reserved."""
    deps, *_, cards = world()
    decision = build_pipeline(deps).decide(ctx(NUMBER, NOW))
    assert (True, "c1") == (decision.allowed, decision.card_id)
    assert 1 == cards.card("c1").in_use


def test_dnc_beats_consent_and_hours() -> None:
    """DNC is checked before consent and hours: a listed number outside hours gets 'dnc'."""
    deps, dnc, *_ = world()
    dnc.add(NUMBER, DncSource.OPT_OUT)
    night = utc(2026, 6, 1, 15, 0)  # 23:00 in Shanghai
    decision = build_pipeline(deps).decide(ctx(NUMBER, night))
    assert RejectReason.DNC == decision.reason


def test_destination_beats_dnc() -> None:
    """The allow-list runs before DNC: an international listed number is destination-blocked."""
    deps, dnc, *_ = world()
    dnc.add("+4930123456", DncSource.OPT_OUT)
    decision = build_pipeline(deps).decide(ctx("+4930123456", NOW))
    assert RejectReason.DESTINATION_BLOCKED == decision.reason


def test_consent_beats_hours() -> None:
    """Without consent (require-consent) the answer is no-consent even at night."""
    deps, *_ = world()
    decision = build_pipeline(deps).decide(ctx("13912345678", utc(2026, 6, 1, 15, 0)))
    assert RejectReason.NO_CONSENT == decision.reason


def test_hours_beats_frequency() -> None:
    """Calling hours are checked before the frequency cap."""
    deps, _, _, history, *_ = world()
    for i in range(3):
        history.record_attempt(NUMBER, T - 3600 * (i + 1))
    night = utc(2026, 6, 1, 15, 0)
    assert RejectReason.CALLING_HOURS == build_pipeline(deps).decide(ctx(NUMBER, night)).reason
    frequency = build_pipeline(deps).decide(ctx(NUMBER, NOW))
    assert RejectReason.FREQUENCY_CAP == frequency.reason
    assert frequency.retry_after is not None


def test_frequency_beats_agent_and_agent_beats_cards() -> None:
    """Frequency runs before agent limits, agent limits before card selection."""
    deps, _, _, history, agents, cards = world()
    agents.pause("alice")
    cards.card("c1").in_use = 1
    assert RejectReason.AGENT_LIMIT == build_pipeline(deps).decide(ctx(NUMBER, NOW)).reason
    for i in range(3):
        history.record_attempt(NUMBER, T - 60 * (i + 1))
    assert RejectReason.FREQUENCY_CAP == build_pipeline(deps).decide(ctx(NUMBER, NOW)).reason
    agents.resume("alice")
    deps2, *_, cards2 = world()
    cards2.card("c1").in_use = 1
    assert RejectReason.NO_CARD_AVAILABLE == build_pipeline(deps2).decide(ctx(NUMBER, NOW)).reason


def test_emergency_bypasses_consent_dnc_hours_agent_and_quotas() -> None:
    """110 at night from a paused agent with an exhausted card still gets a card."""
    deps, _, _, _, agents, cards = world()
    agents.pause("alice")
    cards.card("c1").starts.extend(T - 100 + i for i in range(20))
    night = utc(2026, 6, 1, 15, 0)
    decision = build_pipeline(deps).decide(ctx("110", night))
    assert (True, "c1") == (decision.allowed, decision.card_id)
    assert "emergency" in decision.detail


def test_emergency_flag_not_honoured_for_unconfigured_region() -> None:
    """A context claiming an emergency the pipeline's regions do not know gets no bypass."""
    deps, *_ = world()
    context = ctx("911", NOW, region="US", emergency_regions=("US",))
    decision = build_pipeline(deps).decide(context)
    assert (False, RejectReason.NO_CONSENT) == (decision.allowed, decision.reason)


def test_default_order_is_design_order() -> None:
    """The default pipeline runs the DESIGN order."""
    deps, *_ = world()
    assert DEFAULT_ORDER == build_pipeline(deps).names
    assert (
        "emergency",
        "destination",
        "dnc",
        "consent",
        "hours",
        "frequency",
        "agent",
        "cards",
    ) == DEFAULT_ORDER


def test_registry_subset_and_errors() -> None:
    """Config picks policies by name; unknown names, wrong order and missing stores are errors."""
    deps, *_ = world()
    assert ("dnc", "hours") == build_pipeline(deps, ["dnc", "hours"]).names
    with pytest.raises(ValueError, match="unknown policies: nope"):
        build_pipeline(deps, ["dnc", "nope"])
    with pytest.raises(ValueError, match="order"):
        build_pipeline(deps, ["hours", "dnc"])
    with pytest.raises(ValueError, match="needs a DNC lookup"):
        build_pipeline(PolicyDeps(), ["dnc"])
    with pytest.raises(ValueError, match="twice"):
        build_pipeline(deps, ["dnc", "dnc"])


def test_register_custom_policy() -> None:
    """A registered factory is usable by name; names cannot be registered twice."""

    @register_policy("test-probe")
    def _probe(deps: PolicyDeps) -> Probe:
        return Probe("test-probe", Decision.reject(RejectReason.AGENT_LIMIT, "test-probe"))

    try:
        deps, *_ = world()
        decision = build_pipeline(deps, ["emergency", "test-probe", "cards"]).decide(
            ctx(NUMBER, NOW)
        )
        assert "test-probe" == decision.policy
        with pytest.raises(ValueError, match="already registered"):
            register_policy("test-probe")(_probe)
    finally:
        POLICY_FACTORIES.pop("test-probe", None)


def test_cards_must_be_last_and_emergency_first() -> None:
    """Selection reserves quota, so it must run last; the bypass must run first."""
    deps, *_ = world()
    with pytest.raises(ValueError):
        build_pipeline(deps, ["cards", "test-missing"])
    POLICY_FACTORIES["test-after"] = lambda d: Probe("test-after")
    try:
        with pytest.raises(ValueError, match="last"):
            build_pipeline(deps, ["cards", "test-after"])
        with pytest.raises(ValueError, match="first"):
            build_pipeline(deps, ["test-after", "emergency"])
    finally:
        POLICY_FACTORIES.pop("test-after", None)


def test_decision_details_never_carry_the_callee_number() -> None:
    """No rejection detail (they reach logs and MQTT) contains the callee's digits."""
    deps, dnc, _, history, _, _ = world()
    details: list[str] = []
    pipeline = build_pipeline(deps)
    details.append(pipeline.decide(ctx("13912345678", NOW)).detail)  # no consent
    details.append(pipeline.decide(ctx(NUMBER, utc(2026, 6, 1, 15, 0))).detail)  # hours
    for i in range(3):
        history.record_attempt(NUMBER, T - 60 * (i + 1))
    details.append(pipeline.decide(ctx(NUMBER, NOW)).detail)  # frequency
    dnc.add(NUMBER, DncSource.COMPLAINT)
    details.append(pipeline.decide(ctx(NUMBER, NOW)).detail)  # dnc
    assert 4 == len([d for d in details if d])
    assert [] == [d for d in details if "13812345678" in d or "13912345678" in d]

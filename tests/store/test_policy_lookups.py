"""The store behind the policies: consent, DNC, destination history, agent usage."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.store import Complaint, SQLiteStore
from policies.agent import AgentLimits, AgentLimitsPolicy, AgentUsageView
from policies.consent import ConsentLookup, ConsentMode, ConsentPolicy, ConsentStatus
from policies.context import CallContext
from policies.decision import RejectReason
from policies.dnc import DncLookup, DncPolicy, DncSource
from policies.frequency import (
    DestinationHistory,
    FrequencyCap,
    FrequencyPolicy,
    FrequencyRule,
    HistoryKind,
)

from .conftest import T0

N = "+8613811110001"


def _at(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _ctx(t: float, *, agent: str = "alice", campaign: str | None = "spring") -> CallContext:
    return CallContext(
        dialled=N,
        agent=agent,
        campaign=campaign,
        default_region="CN",
        now=_at(t),
        destination=N,
        call_id="x",
    )


def test_store_implements_the_policy_protocols(store: SQLiteStore) -> None:
    """One store object serves every lookup the policies declare."""
    for protocol in (ConsentLookup, DncLookup, DestinationHistory, AgentUsageView):
        assert isinstance(store, protocol)


def test_consent_status_through_the_policy(store: SQLiteStore) -> None:
    """require-consent: none → 403 no-consent; granted → pass; revoked → 403 again."""
    policy = ConsentPolicy(store, ConsentMode.REQUIRE_CONSENT)
    refused = policy(_ctx(T0), _at(T0))
    assert refused is not None and RejectReason.NO_CONSENT == refused.reason
    store.add_consent(N, T0, campaign="spring", source="web-form", evidence="form-42")
    assert None is policy(_ctx(T0 + 1), _at(T0 + 1))
    status, record = store.consent_status(N, "spring", _at(T0 + 1))
    assert ConsentStatus.GRANTED == status
    assert record is not None and ("spring", "form-42") == (record.campaign, record.evidence)
    store.revoke_consent(N, T0 + 2)
    again = policy(_ctx(T0 + 3), _at(T0 + 3))
    assert again is not None and RejectReason.NO_CONSENT == again.reason


def test_revocation_without_grant_counts_in_dnc_only_mode(store: SQLiteStore) -> None:
    """A callee who said no is refused even though consent was never required."""
    policy = ConsentPolicy(store, ConsentMode.DNC_ONLY)
    assert None is policy(_ctx(T0), _at(T0))
    assert 1 == store.revoke_consent(N, T0 + 1, source="callee said no")
    refused = policy(_ctx(T0 + 2, campaign="autumn"), _at(T0 + 2))
    assert refused is not None and RejectReason.NO_CONSENT == refused.reason


def test_campaign_revocation_keeps_other_campaigns(store: SQLiteStore) -> None:
    """Revoking one campaign leaves the others callable."""
    store.add_consent(N, T0)
    store.revoke_consent(N, T0 + 1, campaign="spring")
    assert ConsentStatus.REVOKED == store.consent_status(N, "spring", _at(T0 + 2))[0]
    assert ConsentStatus.GRANTED == store.consent_status(N, "autumn", _at(T0 + 2))[0]


def test_dnc_lookup_through_the_policy(store: SQLiteStore) -> None:
    """An internal DNC entry refuses the call with 403 dnc and keeps its source."""
    policy = DncPolicy(store)
    assert None is policy(_ctx(T0), _at(T0))
    store.add_dnc(N, T0, source="complaint", note="called twice")
    refused = policy(_ctx(T0 + 1), _at(T0 + 1))
    assert refused is not None and RejectReason.DNC == refused.reason
    entry = store.lookup(N)
    assert entry is not None
    assert ("internal", DncSource.COMPLAINT, _at(T0)) == (
        entry.list_name,
        entry.source,
        entry.added_at,
    )
    store.add_dnc("+8613811110002", T0, source="something-else")
    other = store.lookup("+8613811110002")
    assert other is not None and DncSource.MANUAL == other.source


def test_destination_history_counts_calls_not_cards(store: SQLiteStore) -> None:
    """A failover is one attempt; a call released before ringing is none; answers are kept."""
    store.reserve("c1", "k1", N, T0)
    store.release("k1", T0 + 1)
    store.reserve("c2", "k1", N, T0 + 1)
    store.finish("k1", T0 + 61, answered=True, talk_seconds=50)
    store.reserve("c1", "k2", N, T0 + 100)
    store.release("k2", T0 + 101)  # every card failed: the callee never rang
    store.reserve("c1", "k3", N, T0 + 200)
    assert [T0 + 1, T0 + 200] == store.attempts(N, T0 - 1)
    assert [T0 + 11] == store.answers(N, T0 - 1)
    assert [T0 + 200] == store.attempts(N, T0 + 150)

    cap = FrequencyCap((FrequencyRule(HistoryKind.ATTEMPTS, 2, 86400.0),))
    refused = FrequencyPolicy(store, cap)(_ctx(T0 + 300), _at(T0 + 300))
    assert refused is not None and RejectReason.FREQUENCY_CAP == refused.reason


def test_agent_calls_and_complaints_are_agent_usage_counted(store: SQLiteStore) -> None:
    """``agent_calls`` / ``agent_complaints`` (the alert round's reads) give what
    ``agent_usage`` lists: a failover is one call, a released reservation none, another
    agent's calls and complaints are not counted, nor what is older than the window."""
    store.reserve("c1", "k1", N, T0, agent="alice")
    store.release("k1", T0 + 1)
    store.reserve("c2", "k1", N, T0 + 1, agent="alice")  # failover: the same call
    store.finish("k1", T0 + 30, answered=True, talk_seconds=20)
    store.reserve("c1", "k2", N, T0 + 40, agent="alice")
    store.release("k2", T0 + 41)  # never rang: not a call
    store.reserve("c1", "k3", "+8613811110002", T0 + 50, agent="alice")
    store.reserve("c1", "k4", "+8613811110003", T0 + 55, agent="bob")
    store.add_complaint(Complaint(N, T0 + 60, card="c2", call_id="k1"))
    store.add_complaint(Complaint(N, T0 + 61, card="c1", call_id="k4"))
    for since in (T0 - 1, T0 + 0.5, T0 + 45, T0 + 60.5):
        usage = store.agent_usage("alice", T0 + 100, window=T0 + 100 - since)
        assert len(usage.call_starts) == store.agent_calls("alice", since)
        assert usage.complaints == store.agent_complaints("alice", since)
    assert (2, (T0 + 60,)) == (
        store.agent_calls("alice", T0 - 1),
        store.agent_complaints("alice", T0),
    )
    assert (1, (T0 + 61,)) == (store.agent_calls("bob", T0), store.agent_complaints("bob", T0))


def test_agent_usage_and_pause(store: SQLiteStore) -> None:
    """Agent calls, complaints on its calls, and a pause reach the agent-limit policy."""
    store.reserve("c1", "k1", N, T0, agent="alice")
    store.finish("k1", T0 + 30, answered=True, talk_seconds=20)
    store.reserve("c1", "k2", "+8613811110002", T0 + 40, agent="bob")
    store.add_complaint(Complaint(N, T0 + 50, card="c1", call_id="k1"))
    usage = store.agent_usage("alice", T0 + 60)
    assert ((T0,), (T0 + 50,), False) == (usage.call_starts, usage.complaints, usage.paused)
    assert (T0 + 40,) == store.agent_usage("bob", T0 + 60).call_starts

    policy = AgentLimitsPolicy(store, AgentLimits(calls_per_hour=5))
    assert None is policy(_ctx(T0 + 60), _at(T0 + 60))
    store.set_agent_paused("alice", True, T0 + 70, reason="complaints review")
    refused = policy(_ctx(T0 + 80), _at(T0 + 80))
    assert refused is not None and RejectReason.AGENT_LIMIT == refused.reason
    assert "complaints review" == store.agent_usage("alice", T0 + 80).pause_reason
    store.set_agent_paused("alice", False, T0 + 90)
    assert None is policy(_ctx(T0 + 100), _at(T0 + 100))
